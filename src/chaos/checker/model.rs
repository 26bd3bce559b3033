//! The register model and the per-key form of a history that the zone check and the
//! search both work on.
//!
//! Values are interned per key into small integers ([`StateId`], with [`ABSENT`] for a
//! missing key) so that a model state is one `u32`. Each op becomes a [`KeyOp`]: its
//! interval and an [`Action`] that says how it moves the register and what answer it
//! requires.
//!
//! Ops that cannot affect the verdict are left out here, each for a reason that holds
//! for every linearization:
//! - a failed op was not applied;
//! - a read with an unknown outcome observed nothing anyone can check;
//! - an unknown-outcome write of a value that no op observed (no read returned it, no
//!   compare-and-swap expected it), invoked after every "mismatch" answer that could
//!   depend on it: in any linearization that includes it, the ops between it and the
//!   next write would have to observe its value, so there are none but such mismatches,
//!   and removing it leaves a linearization. A mismatch depends on it unless its expected
//!   value is one the register never holds (never written, not absent) or it completed
//!   before the write was invoked. This keeps the search from guessing where such
//!   writes went.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::chaos::history::{History, OkResult, Op, OpKind, Outcome};

/// An interned register value of one key.
pub(super) type StateId = u32;

/// The register of a key that does not exist; every key starts so.
pub(super) const ABSENT: StateId = 0;

/// How an op moves the register, and the answer it requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    /// A put (of a value) or a delete (of [`ABSENT`]).
    Write(StateId),
    /// A get that returned this.
    Read(StateId),
    /// A compare-and-swap. `swapped` is its answer; an op with an unknown outcome has
    /// `swapped: true`, the only answer under which it changes anything.
    Cas {
        expect: StateId,
        value: StateId,
        swapped: bool,
    },
}

impl Action {
    /// The register after this action in `state`, or `None` if the op could not have
    /// given its answer in that state.
    pub(super) fn apply(self, state: StateId) -> Option<StateId> {
        match self {
            Action::Write(value) => Some(value),
            Action::Read(seen) => (seen == state).then_some(state),
            Action::Cas {
                expect,
                value,
                swapped: true,
            } => (expect == state).then_some(value),
            Action::Cas {
                expect,
                swapped: false,
                ..
            } => (expect != state).then_some(state),
        }
    }

    /// The value this action puts in the register, if it writes.
    pub(super) fn written(self) -> Option<StateId> {
        match self {
            Action::Write(value) => Some(value),
            Action::Cas {
                value,
                swapped: true,
                ..
            } => Some(value),
            Action::Read(_) | Action::Cas { swapped: false, .. } => None,
        }
    }

    /// A put or delete: it succeeds in every state and ignores what it replaces.
    pub(super) fn is_blind_write(self) -> bool {
        matches!(self, Action::Write(_))
    }

    /// A read or a comparison that left the register as it was, whatever it held.
    pub(super) fn never_changes_state(self) -> bool {
        match self {
            Action::Read(_) | Action::Cas { swapped: false, .. } => true,
            Action::Cas { expect, value, .. } => expect == value,
            Action::Write(_) => false,
        }
    }

    /// The exact value the register must hold when this action takes effect, if any.
    pub(super) fn observed(self) -> Option<StateId> {
        match self {
            Action::Read(seen) => Some(seen),
            Action::Cas {
                expect,
                swapped: true,
                ..
            } => Some(expect),
            Action::Write(_) | Action::Cas { swapped: false, .. } => None,
        }
    }
}

/// One op of one key, ready to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KeyOp {
    /// Index of the op in the history, for reports.
    pub(super) source: usize,
    pub(super) invoke: u64,
    /// `Some` for an op that took effect (it must be placed before this time); `None`
    /// for an unknown outcome (it may be placed any time after `invoke`, or never).
    pub(super) complete: Option<u64>,
    pub(super) action: Action,
}

impl KeyOp {
    /// Whether every linearization must include this op.
    pub(super) fn is_required(&self) -> bool {
        self.complete.is_some()
    }
}

/// The sub-history of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KeyHistory {
    pub(super) key: String,
    pub(super) ops: Vec<KeyOp>,
    /// The value of each [`StateId`]; index [`ABSENT`] holds `None`.
    pub(super) values: Vec<Option<String>>,
    /// Whether no two writes (puts and compare-and-swaps) of this key write one value.
    pub(super) unique_writes: bool,
    /// Ops of this key in the history that could matter (not failed, not unknown reads).
    pub(super) considered: usize,
}

impl KeyHistory {
    /// The text of an interned value.
    pub(super) fn value(&self, state: StateId) -> Option<&str> {
        self.values.get(state as usize).and_then(|v| v.as_deref())
    }
}

/// Splits a validated history into one [`KeyHistory`] per key, in key order.
pub(super) fn partition(history: &History) -> Vec<KeyHistory> {
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, op) in history.ops.iter().enumerate() {
        by_key.entry(op.key.as_str()).or_default().push(index);
    }
    by_key
        .into_iter()
        .map(|(key, indices)| key_history(key, &history.ops, &indices))
        .collect()
}

fn key_history(key: &str, ops: &[Op], indices: &[usize]) -> KeyHistory {
    let mut interner = Interner::default();
    let mut key_ops: Vec<KeyOp> = indices
        .iter()
        .filter_map(|&index| key_op(index, &ops[index], &mut interner))
        .collect();
    let considered = key_ops.len();
    drop_unobservable_writes(&mut key_ops);
    KeyHistory {
        key: key.to_string(),
        unique_writes: writes_are_unique(&key_ops),
        ops: key_ops,
        values: interner.values,
        considered,
    }
}

/// The op as the checker sees it, or `None` if it cannot matter.
fn key_op(source: usize, op: &Op, interner: &mut Interner) -> Option<KeyOp> {
    let (complete, result) = match &op.outcome {
        Outcome::Fail => return None,
        Outcome::Unknown => (None, None),
        Outcome::Ok(result) => (op.complete, Some(result)),
    };
    let action = match (&op.kind, result) {
        (OpKind::Get, Some(OkResult::Read(seen))) => Action::Read(interner.intern(seen)),
        (OpKind::Get, _) => return None,
        (OpKind::Put { value }, _) => Action::Write(interner.intern_str(value)),
        (OpKind::Delete, _) => Action::Write(ABSENT),
        (OpKind::Cas { expect, value }, result) => Action::Cas {
            expect: interner.intern(expect),
            value: interner.intern_str(value),
            swapped: !matches!(result, Some(OkResult::Swapped(false))),
        },
    };
    Some(KeyOp {
        source,
        invoke: op.invoke,
        complete,
        action,
    })
}

/// Removes unknown-outcome writes that no op could have observed (see the module doc).
fn drop_unobservable_writes(ops: &mut Vec<KeyOp>) {
    let last_mismatch = last_relevant_mismatch(ops);
    let observable: HashSet<StateId> = ops
        .iter()
        .filter_map(|op| match op.action {
            Action::Read(seen) => Some(seen),
            Action::Cas { expect, .. } => Some(expect),
            Action::Write(_) => None,
        })
        .collect();
    ops.retain(|op| {
        let unobservable = op
            .action
            .written()
            .is_some_and(|value| !observable.contains(&value));
        let after_mismatches = last_mismatch.is_none_or(|complete| complete < op.invoke);
        op.is_required() || !(unobservable && after_mismatches)
    });
}

/// When the last "mismatch" answer that a dropped write could have explained completed.
/// A mismatch against a value the register can never hold is explained by any state,
/// and one that completed before a write was invoked came before it in any order.
fn last_relevant_mismatch(ops: &[KeyOp]) -> Option<u64> {
    let mut possible: HashSet<StateId> = ops.iter().filter_map(|op| op.action.written()).collect();
    possible.insert(ABSENT);
    ops.iter()
        .filter_map(|op| match op.action {
            Action::Cas {
                expect,
                swapped: false,
                ..
            } if possible.contains(&expect) => op.complete,
            _ => None,
        })
        .max()
}

fn writes_are_unique(ops: &[KeyOp]) -> bool {
    let mut seen = HashSet::new();
    ops.iter()
        .filter_map(|op| op.action.written())
        .filter(|&value| value != ABSENT)
        .all(|value| seen.insert(value))
}

/// Maps the values of one key to [`StateId`]s.
#[derive(Debug)]
struct Interner {
    ids: HashMap<String, StateId>,
    values: Vec<Option<String>>,
}

impl Default for Interner {
    fn default() -> Self {
        Interner {
            ids: HashMap::new(),
            values: vec![None],
        }
    }
}

impl Interner {
    fn intern(&mut self, value: &Option<String>) -> StateId {
        match value {
            Some(value) => self.intern_str(value),
            None => ABSENT,
        }
    }

    fn intern_str(&mut self, value: &str) -> StateId {
        if let Some(&id) = self.ids.get(value) {
            return id;
        }
        // A key with more than u32::MAX distinct values does not fit in memory anyway.
        let id = StateId::try_from(self.values.len()).unwrap_or(StateId::MAX);
        self.ids.insert(value.to_string(), id);
        self.values.push(Some(value.to_string()));
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::checker::testkit::*;
    use crate::chaos::history::Op;

    #[test]
    fn apply_follows_the_register_semantics() {
        let (a, b) = (1, 2);
        assert_eq!(Action::Write(a).apply(b), Some(a));
        assert_eq!(Action::Write(ABSENT).apply(a), Some(ABSENT));
        assert_eq!(Action::Read(a).apply(a), Some(a));
        assert_eq!(Action::Read(a).apply(ABSENT), None);
        let cas = |swapped| Action::Cas {
            expect: a,
            value: b,
            swapped,
        };
        assert_eq!(cas(true).apply(a), Some(b));
        assert_eq!(cas(true).apply(b), None);
        assert_eq!(cas(false).apply(b), Some(b));
        assert_eq!(cas(false).apply(a), None);
    }

    #[test]
    fn partition_groups_by_key_and_drops_what_cannot_matter() {
        let history = History::new(vec![
            put(1, "b", "x", 0, 5),
            put(1, "a", "x", 0, 5),
            failed(put(2, "a", "y", 6, 9)),
            unknown(get(3, "a", None, 6, 9)),
            get(3, "a", Some("x"), 10, 12),
        ]);
        let keys = partition(&history);
        let names: Vec<&str> = keys.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        let a = &keys[0];
        assert_eq!(a.considered, 2);
        let sources: Vec<usize> = a.ops.iter().map(|op| op.source).collect();
        assert_eq!(sources, [1, 4]);
        assert_eq!(a.ops[1].action, Action::Read(1));
        assert_eq!(a.value(1), Some("x"));
        assert!(a.unique_writes);
    }

    #[test]
    fn unknown_writes_are_dropped_only_when_unobservable() {
        let history = History::new(vec![
            unknown(put(1, "k", "never-read", 0, 0)),
            unknown(put(1, "k", "read", 0, 0)),
            get(2, "k", Some("read"), 5, 6),
            unknown(del(3, "k", 0, 0)),
        ]);
        let key = &partition(&history)[0];
        let sources: Vec<usize> = key.ops.iter().map(|op| op.source).collect();
        assert_eq!(
            sources,
            [1, 2],
            "the delete is unobservable: nobody read absent"
        );

        let kept = |ops: Vec<Op>| partition(&History::new(ops))[0].ops.len();
        let mismatch = |expect, invoke| cas(2, "k", Some(expect), "w", false, invoke, invoke + 1);
        let may_explain_mismatch = vec![
            put(1, "k", "a", 0, 1),
            unknown(put(1, "k", "never-read", 2, 0)),
            mismatch("a", 5),
        ];
        assert_eq!(
            kept(may_explain_mismatch),
            3,
            "it may explain why a was not there"
        );
        let never_held = vec![
            put(1, "k", "a", 0, 1),
            unknown(put(1, "k", "never-read", 2, 0)),
            mismatch("z", 5),
        ];
        assert_eq!(kept(never_held), 2, "z never was there to mismatch");
        let mismatch_came_first = vec![
            put(1, "k", "a", 0, 1),
            mismatch("a", 2),
            unknown(put(1, "k", "never-read", 10, 0)),
        ];
        assert_eq!(kept(mismatch_came_first), 2);
    }

    #[test]
    fn unique_writes_ignores_deletes_but_not_repeated_values() {
        let deletes = History::new(vec![del(1, "k", 0, 1), del(1, "k", 2, 3)]);
        assert!(partition(&deletes)[0].unique_writes);
        let repeated = History::new(vec![
            put(1, "k", "v", 0, 1),
            cas(1, "k", Some("v"), "v", true, 2, 3),
        ]);
        assert!(!partition(&repeated)[0].unique_writes);
    }
}
