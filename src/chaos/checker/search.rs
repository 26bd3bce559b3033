//! The exhaustive search for a linearization of one key: Wing & Gong's algorithm with
//! Lowe's just-in-time refinement and a cache of visited states.
//!
//! Ops that took effect (*required*) become two events in time order, invocation and
//! completion; invocations sort before completions at the same time, so touching
//! intervals count as concurrent. Ops with an unknown outcome (*optional*) have no
//! completion: nothing forces them in, and they may be placed any time after their
//! invocation. They live in a list of their own.
//!
//! The search walks the required events from the front. At an invocation it tries to
//! place that op next: if the register model accepts it and the resulting state was
//! not reached before, it lifts the op's events out of the list and starts again from
//! the front. At a completion the op there cannot wait any longer, so before giving up
//! on the current state it tries the optional ops invoked by then; when those are
//! exhausted too, it undoes the last placement and goes on with the next candidate after
//! it. An empty stack at that point means every order has been tried: not linearizable.
//! No completion left means it is.
//!
//! In each new state, a required op that may go next and never changes the register
//! (a read, a mismatch) is placed at once without trying alternatives: any way to
//! finish from here could do it first (see [`Search::place_forced`]).
//!
//! Optional ops are tried last because usually they are not needed. An optional op is
//! only placed where it changes the register (placing it where it does nothing is the
//! same as leaving it out), and never directly under a blind write (put or delete),
//! which would hide it from everyone.
//!
//! A state is (required ops placed, optional ops placed, register value). The cache
//! prunes a state when one with the same required ops and value and a *subset* of its
//! optional ops was reached: leaving an optional op out never removes a possibility, so
//! that state can do all this one can. This keeps a linearizable history close to linear
//! time and stops unknown outcomes from multiplying the states; a violation still has to
//! exhaust them, so the search stops after a step budget or a deadline.

use std::collections::HashMap;
use std::time::Instant;

use super::model::{KeyOp, StateId, ABSENT};

/// When to give up.
#[derive(Debug, Clone, Copy)]
pub(super) struct Budget {
    pub(super) max_steps: u64,
    pub(super) deadline: Option<Instant>,
}

/// How often, in steps, the clock is read.
const DEADLINE_CHECK_INTERVAL: u64 = 1024;

/// How many placed ops, and how many concurrent unplaced ones, a [`Stuck`] keeps.
const RECENT_KEPT: usize = 3;
const PENDING_KEPT: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SearchResult {
    Linearizable,
    /// No linearization exists; where the deepest attempt got stuck.
    Violation(Stuck),
    OutOfBudget,
}

/// The deepest point the search reached before it had to back up: `op` had to take
/// effect and could not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Stuck {
    /// Index into the key's ops.
    pub(super) op: usize,
    /// How many ops were placed at that point.
    pub(super) placed: usize,
    /// The register at that point.
    pub(super) state: StateId,
    /// The last few ops placed, oldest first.
    pub(super) recent: Vec<usize>,
    /// Unplaced required ops invoked before `op` completed (`op` excluded).
    pub(super) pending: Vec<usize>,
}

/// Searches for a linearization of `ops`, starting from an absent key.
pub(super) fn search(ops: &[KeyOp], budget: Budget) -> SearchResult {
    Search::new(ops).run(budget)
}

/// Index of a node in an [`Events`] list.
type Node = usize;
const HEAD: Node = 0;

/// Events in time order as a doubly linked list over arrays, so that an op's events can
/// be lifted out and put back in O(1) (undoing lifts in reverse order restores the list
/// exactly).
struct Events {
    next: Vec<Node>,
    prev: Vec<Node>,
    /// For each node: its op and whether it is the completion. Unused for sentinels.
    op_of: Vec<usize>,
    is_completion: Vec<bool>,
    /// For each op of the key: its invocation node (`HEAD` if not in this list).
    invocation_of: Vec<Node>,
    completion_of: Vec<Option<Node>>,
}

impl Events {
    /// The events of the ops chosen by `include`; an op with a completion time gets a
    /// completion event.
    fn new(ops: &[KeyOp], include: impl Fn(&KeyOp) -> bool) -> Events {
        let mut order: Vec<(u64, bool, usize)> = Vec::new();
        for (index, op) in ops.iter().enumerate().filter(|(_, op)| include(op)) {
            order.push((op.invoke, false, index));
            if let Some(complete) = op.complete {
                order.push((complete, true, index));
            }
        }
        order.sort_unstable();
        let tail = order.len() + 1;
        let mut events = Events {
            next: (1..=tail).chain([tail]).collect(),
            prev: [HEAD].into_iter().chain(0..tail).collect(),
            op_of: vec![0; tail + 1],
            is_completion: vec![false; tail + 1],
            invocation_of: vec![HEAD; ops.len()],
            completion_of: vec![None; ops.len()],
        };
        for (position, &(_, is_completion, op)) in order.iter().enumerate() {
            let node = position + 1;
            events.op_of[node] = op;
            events.is_completion[node] = is_completion;
            if is_completion {
                events.completion_of[op] = Some(node);
            } else {
                events.invocation_of[op] = node;
            }
        }
        events
    }

    fn first(&self) -> Node {
        self.next[HEAD]
    }

    fn is_tail(&self, node: Node) -> bool {
        node + 1 == self.next.len()
    }

    fn lift(&mut self, op: usize) {
        self.unlink(self.invocation_of[op]);
        if let Some(node) = self.completion_of[op] {
            self.unlink(node);
        }
    }

    fn unlift(&mut self, op: usize) {
        if let Some(node) = self.completion_of[op] {
            self.relink(node);
        }
        self.relink(self.invocation_of[op]);
    }

    fn unlink(&mut self, node: Node) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = next;
        self.prev[next] = prev;
    }

    fn relink(&mut self, node: Node) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = node;
        self.prev[next] = node;
    }
}

/// A set of ops of one class (required or optional) as a bitset over their slots, with
/// an incremental (Zobrist) hash: XOR of a fixed random word per member, so adding or
/// removing an op updates it in O(1).
///
/// Slots follow invocation order, so a placed set is nearly a prefix: everything up to
/// the oldest op still unplaced, then a few words around the ops in flight. The cache
/// stores only that [`OpSet::compact`] form.
struct OpSet {
    words: Vec<u64>,
    hash: u64,
    /// Every word before this one is full.
    full_words: usize,
    /// Every word from this one on is empty.
    used_words: usize,
}

impl OpSet {
    fn new(len: usize) -> OpSet {
        OpSet {
            words: vec![0; len.div_ceil(64)],
            hash: 0,
            full_words: 0,
            used_words: 0,
        }
    }

    /// Adds the slot if absent, removes it if present.
    fn toggle(&mut self, slot: usize) {
        let word = slot / 64;
        self.words[word] ^= 1 << (slot % 64);
        self.hash ^= mix(slot as u64);
        if self.words[word] == 0 {
            while self.used_words > 0 && self.words[self.used_words - 1] == 0 {
                self.used_words -= 1;
            }
        } else {
            self.used_words = self.used_words.max(word + 1);
        }
        if self.words[word] != u64::MAX {
            self.full_words = self.full_words.min(word);
        }
        while self.full_words < self.used_words && self.words[self.full_words] == u64::MAX {
            self.full_words += 1;
        }
    }

    /// The set without its full leading words and empty trailing words: equal sets
    /// have equal forms. A set of only full words keeps none.
    fn compact(&self) -> Compact<'_> {
        Compact {
            full_words: self.full_words,
            rest: &self.words[self.full_words..self.used_words],
        }
    }

    /// The words up to the last non-empty one.
    fn used(&self) -> &[u64] {
        &self.words[..self.used_words]
    }
}

#[derive(PartialEq, Eq)]
struct Compact<'a> {
    full_words: usize,
    rest: &'a [u64],
}

/// SplitMix64's finalizer: a fixed, well-spread word per slot.
fn mix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Every state reached so far: by (required set, value), the optional sets seen with it.
/// Looked up by hash and compared exactly, so a collision can never prune wrongly.
#[derive(Default)]
struct Visited {
    by_hash: HashMap<(u64, StateId), Vec<Seen>>,
}

struct Seen {
    full_words: usize,
    required: Box<[u64]>,
    optional: Vec<Box<[u64]>>,
}

impl Seen {
    fn required(&self) -> Compact<'_> {
        Compact {
            full_words: self.full_words,
            rest: &self.required,
        }
    }
}

impl Visited {
    /// Records the state; `false` if it, or a state that dominates it, was there.
    fn insert(&mut self, required: &OpSet, optional: &OpSet, state: StateId) -> bool {
        let seen = self.by_hash.entry((required.hash, state)).or_default();
        let compact = required.compact();
        let Some(same) = seen.iter_mut().find(|s| s.required() == compact) else {
            seen.push(Seen {
                full_words: compact.full_words,
                required: compact.rest.into(),
                optional: vec![optional.used().into()],
            });
            return true;
        };
        if same.optional.iter().any(|o| is_subset(o, optional.used())) {
            return false;
        }
        same.optional.push(optional.used().into());
        true
    }
}

/// Whether every bit of `small` is in `big` (missing words are empty).
fn is_subset(small: &[u64], big: &[u64]) -> bool {
    small.len() <= big.len() && small.iter().zip(big).all(|(s, b)| s & !b == 0)
}

/// Where the walk is: just arrived in a new state, at a required event, or, stuck at
/// the completion `stuck_at`, trying the optional ops.
#[derive(Debug, Clone, Copy)]
enum Cursor {
    Fresh,
    Required(Node),
    Optional { node: Node, stuck_at: Node },
}

/// A placement that can be undone: the op, the register before it, and where the walk
/// was when it was placed. A `Fresh` placement was forced (see [`Search::place_forced`]):
/// when it fails, so did the state before it.
struct Frame {
    op: usize,
    state_before: StateId,
    placed_at: Cursor,
}

struct Search<'a> {
    ops: &'a [KeyOp],
    required_events: Events,
    optional_events: Events,
    /// Each op's bit in `placed_required` or `placed_optional`.
    slot: Vec<usize>,
    placed_required: OpSet,
    placed_optional: OpSet,
    visited: Visited,
    stack: Vec<Frame>,
    state: StateId,
    /// Required ops not placed yet; zero means success.
    required_left: usize,
    deepest: Option<Stuck>,
}

impl<'a> Search<'a> {
    fn new(ops: &'a [KeyOp]) -> Search<'a> {
        let mut by_invocation: Vec<usize> = (0..ops.len()).collect();
        by_invocation.sort_by_key(|&op| ops[op].invoke);
        let mut slot = vec![0; ops.len()];
        let (mut required, mut optional) = (0, 0);
        for op in by_invocation {
            let counter = if ops[op].is_required() {
                &mut required
            } else {
                &mut optional
            };
            slot[op] = *counter;
            *counter += 1;
        }
        Search {
            ops,
            required_events: Events::new(ops, KeyOp::is_required),
            optional_events: Events::new(ops, |op| !op.is_required()),
            slot,
            placed_required: OpSet::new(required),
            placed_optional: OpSet::new(optional),
            visited: Visited::default(),
            stack: Vec::new(),
            state: ABSENT,
            required_left: required,
            deepest: None,
        }
    }

    fn run(mut self, budget: Budget) -> SearchResult {
        let mut cursor = Cursor::Fresh;
        let mut steps: u64 = 0;
        while self.required_left > 0 {
            steps += 1;
            if out_of_budget(steps, budget) {
                return SearchResult::OutOfBudget;
            }
            let next = match cursor {
                Cursor::Fresh => self.place_forced(),
                Cursor::Required(node) => Some(self.at_required(node)),
                Cursor::Optional { node, stuck_at } => self.at_optional(node, stuck_at),
            };
            match next {
                Some(next) => cursor = next,
                None => return self.violation(),
            }
        }
        SearchResult::Linearizable
    }

    /// In a new state, first looks for a required op that may go next, is valid now and
    /// never changes the register (a read, a mismatch). Placing it now loses nothing: in
    /// any way to finish from here it could be moved to the front, as it changes no state
    /// wherever it goes and no unplaced op must precede it. (A delete of an absent key
    /// does not qualify: later, after a put, it would change the register.) So it is placed without
    /// trying alternatives, and if the state after it is known to fail, so does this one.
    fn place_forced(&mut self) -> Option<Cursor> {
        let events = &self.required_events;
        let mut node = events.first();
        while !events.is_tail(node) && !events.is_completion[node] {
            let op = events.op_of[node];
            let action = self.ops[op].action;
            if action.never_changes_state() && action.apply(self.state).is_some() {
                if self.try_place(op, Cursor::Fresh) {
                    return Some(Cursor::Fresh);
                }
                return self.back_up(self.first_completion());
            }
            node = events.next[node];
        }
        Some(Cursor::Required(events.first()))
    }

    fn first_completion(&self) -> Node {
        let events = &self.required_events;
        let mut node = events.first();
        while !events.is_tail(node) && !events.is_completion[node] {
            node = events.next[node];
        }
        node
    }

    /// At an invocation, try to place its op; at a completion, turn to optional ops.
    fn at_required(&mut self, node: Node) -> Cursor {
        let events = &self.required_events;
        // Every node before `node` is an invocation, and a completion remains while
        // `required_left > 0`, so the tail is not reached; if it were, it ends the walk
        // like a completion would.
        if events.is_tail(node) || events.is_completion[node] {
            let first_optional = self.optional_events.first();
            return Cursor::Optional {
                node: first_optional,
                stuck_at: node,
            };
        }
        let cursor = Cursor::Required(node);
        if self.try_place(events.op_of[node], cursor) {
            Cursor::Fresh
        } else {
            Cursor::Required(self.required_events.next[node])
        }
    }

    /// Try the optional op at `node` if it was invoked before `stuck_at` completed;
    /// back up once there is none left. `None` when there is nothing to undo.
    fn at_optional(&mut self, node: Node, stuck_at: Node) -> Option<Cursor> {
        let deadline = self.completion_time(stuck_at);
        let events = &self.optional_events;
        let op = events.op_of[node];
        if events.is_tail(node) || self.ops[op].invoke > deadline {
            return self.back_up(stuck_at);
        }
        let cursor = Cursor::Optional { node, stuck_at };
        if self.try_place(op, cursor) {
            Some(Cursor::Fresh)
        } else {
            Some(Cursor::Optional {
                node: self.optional_events.next[node],
                stuck_at,
            })
        }
    }

    fn completion_time(&self, node: Node) -> u64 {
        if self.required_events.is_tail(node) {
            return u64::MAX;
        }
        let op = self.required_events.op_of[node];
        self.ops[op].complete.unwrap_or(u64::MAX)
    }

    /// Places `op` if the model accepts it and the state is new; whether it did.
    fn try_place(&mut self, op: usize, placed_at: Cursor) -> bool {
        let key_op = &self.ops[op];
        if key_op.action.is_blind_write() && self.top_is_optional_blind_write() {
            return false;
        }
        let after = key_op.action.apply(self.state);
        let useful = after.filter(|&after| key_op.is_required() || after != self.state);
        let Some(after) = useful else {
            return false;
        };
        self.toggle_placed(op);
        if !self
            .visited
            .insert(&self.placed_required, &self.placed_optional, after)
        {
            self.toggle_placed(op);
            return false;
        }
        self.stack.push(Frame {
            op,
            state_before: self.state,
            placed_at,
        });
        self.state = after;
        if key_op.is_required() {
            self.required_events.lift(op);
            self.required_left -= 1;
        } else {
            self.optional_events.lift(op);
        }
        true
    }

    /// An optional blind write that is overwritten before anything observes it changes
    /// nothing: the same state without it is reached from the state before it. So a
    /// blind write never goes directly on top of an optional one.
    fn top_is_optional_blind_write(&self) -> bool {
        self.stack.last().is_some_and(|frame| {
            let top = &self.ops[frame.op];
            !top.is_required() && top.action.is_blind_write()
        })
    }

    fn toggle_placed(&mut self, op: usize) {
        if self.ops[op].is_required() {
            self.placed_required.toggle(self.slot[op]);
        } else {
            self.placed_optional.toggle(self.slot[op]);
        }
    }

    /// Nothing more to try here: undo the last placement and go on with the candidate
    /// after it (undoing forced placements too, whose states have failed as well).
    /// `None` when there is nothing left to undo.
    fn back_up(&mut self, stuck_at: Node) -> Option<Cursor> {
        self.note_stuck(stuck_at);
        loop {
            let frame = self.stack.pop()?;
            self.state = frame.state_before;
            self.toggle_placed(frame.op);
            if self.ops[frame.op].is_required() {
                self.required_events.unlift(frame.op);
                self.required_left += 1;
            } else {
                self.optional_events.unlift(frame.op);
            }
            match frame.placed_at {
                Cursor::Fresh => continue,
                Cursor::Required(node) => {
                    return Some(Cursor::Required(self.required_events.next[node]))
                }
                Cursor::Optional { node, stuck_at } => {
                    return Some(Cursor::Optional {
                        node: self.optional_events.next[node],
                        stuck_at,
                    })
                }
            }
        }
    }

    /// Remembers the deepest dead end, for the report.
    fn note_stuck(&mut self, stuck_at: Node) {
        let events = &self.required_events;
        if events.is_tail(stuck_at) {
            return;
        }
        if self
            .deepest
            .as_ref()
            .is_some_and(|d| d.placed >= self.stack.len())
        {
            return;
        }
        let op = events.op_of[stuck_at];
        let mut pending = Vec::new();
        let mut walk = events.first();
        while walk != stuck_at && pending.len() < PENDING_KEPT {
            if events.op_of[walk] != op {
                pending.push(events.op_of[walk]);
            }
            walk = events.next[walk];
        }
        let recent_from = self.stack.len().saturating_sub(RECENT_KEPT);
        self.deepest = Some(Stuck {
            op,
            placed: self.stack.len(),
            state: self.state,
            recent: self.stack[recent_from..].iter().map(|f| f.op).collect(),
            pending,
        });
    }

    fn violation(self) -> SearchResult {
        match self.deepest {
            Some(stuck) => SearchResult::Violation(stuck),
            // Unreachable: backing up notes where it got stuck before it can fail.
            None => SearchResult::OutOfBudget,
        }
    }
}

fn out_of_budget(steps: u64, budget: Budget) -> bool {
    if steps > budget.max_steps {
        return true;
    }
    steps.is_multiple_of(DEADLINE_CHECK_INTERVAL)
        && budget.deadline.is_some_and(|d| Instant::now() >= d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::checker::model::partition;
    use crate::chaos::checker::testkit::*;
    use crate::chaos::history::{History, Op};

    fn run(ops: Vec<Op>, max_steps: u64) -> SearchResult {
        let keys = partition(&History::new(ops));
        let budget = Budget {
            max_steps,
            deadline: None,
        };
        search(&keys[0].ops, budget)
    }

    #[test]
    fn op_set_compact_form_is_canonical() {
        let mut rng = Rng::new(3);
        let mut set = OpSet::new(300);
        let mut members = std::collections::BTreeSet::new();
        let mut reached_full_words = false;
        let mut toggle = |set: &mut OpSet, slot: usize| {
            set.toggle(slot);
            if !members.insert(slot) {
                members.remove(&slot);
            }
            let mut fresh = OpSet::new(300);
            members.iter().for_each(|&m| fresh.toggle(m));
            let form = |s: &OpSet| (s.full_words, s.compact().rest.to_vec(), s.hash);
            assert_eq!(form(set), form(&fresh));
            assert!(set.words[..set.full_words].iter().all(|&w| w == u64::MAX));
            assert!(set.words[set.used_words..].iter().all(|&w| w == 0));
            reached_full_words |= set.full_words > 0;
        };
        // Sweeps from the front with random toggles behind, as placing and undoing do;
        // then fill every hole and empty the set from the back.
        for _ in 0..3 {
            for slot in 0..300 {
                toggle(&mut set, slot);
                if rng.percent(40) {
                    toggle(&mut set, slot.saturating_sub(rng.below(70) as usize));
                }
            }
        }
        for slot in 0..300 {
            if set.words[slot / 64] & (1 << (slot % 64)) == 0 {
                toggle(&mut set, slot);
            }
        }
        for slot in (0..300).rev() {
            toggle(&mut set, slot);
        }
        assert!(reached_full_words);
        assert_eq!((set.full_words, set.used_words), (0, 0));
    }

    #[test]
    fn finds_the_only_order_of_two_concurrent_writes() {
        let result = run(
            vec![
                put(1, "k", "a", 0, 100),
                put(2, "k", "b", 0, 10),
                get(3, "k", Some("b"), 20, 30),
                get(3, "k", Some("a"), 110, 120),
            ],
            1000,
        );
        assert_eq!(result, SearchResult::Linearizable);
    }

    #[test]
    fn reports_where_the_deepest_attempt_got_stuck() {
        let result = run(
            vec![
                put(1, "k", "a", 0, 10),
                put(1, "k", "b", 20, 30),
                get(2, "k", Some("a"), 40, 50),
            ],
            1000,
        );
        let SearchResult::Violation(stuck) = result else {
            panic!("expected a violation, got {result:?}");
        };
        assert_eq!((stuck.op, stuck.placed), (2, 2));
        assert_eq!(stuck.recent, vec![0, 1]);
        assert_eq!(stuck.state, 2, "the register held b");
    }

    #[test]
    fn stops_when_the_budget_is_spent() {
        let mut ops: Vec<Op> = (0..12)
            .map(|i| put(i, "k", &format!("v{i}"), 0, 1000))
            .collect();
        ops.push(get(99, "k", Some("never"), 0, 1000));
        assert_eq!(run(ops, 50), SearchResult::OutOfBudget);
    }

    #[test]
    fn unknown_ops_are_placed_only_when_needed() {
        let needed_then_contradicted = vec![
            unknown(put(1, "k", "a", 0, 0)),
            get(2, "k", Some("a"), 10, 20),
            get(2, "k", None, 30, 40),
        ];
        let result = run(needed_then_contradicted, 1000);
        assert!(matches!(result, SearchResult::Violation(_)), "{result:?}");
        let needed_late = vec![
            unknown(put(1, "k", "a", 50, 0)),
            get(2, "k", None, 10, 20),
            get(2, "k", Some("a"), 60, 70),
        ];
        assert_eq!(run(needed_late, 1000), SearchResult::Linearizable);
    }

    #[test]
    fn which_unknown_write_was_used_matters() {
        // Both unknown writes can explain the first read of x, but only the put can
        // explain the second one (after y the swap from absent is impossible). The state
        // after using the put first fails; the same register value reached with the
        // swap instead must still be explored.
        let ops = vec![
            unknown(put(1, "k", "x", 0, 0)),
            unknown(cas(2, "k", None, "x", true, 1, 0)),
            get(3, "k", Some("x"), 10, 20),
            put(3, "k", "y", 30, 40),
            get(3, "k", Some("x"), 50, 60),
        ];
        assert_eq!(run(ops, 1000), SearchResult::Linearizable);
    }

    #[test]
    fn many_unknown_writes_do_not_multiply_the_states() {
        // Twenty unknown writes are in flight for the whole history, and a mismatch keeps
        // the model from dropping them. The read of absent at the end is a violation
        // (the last acknowledged write was "w"); proving it must not try every subset.
        let mut ops: Vec<Op> = (0..20)
            .map(|i| unknown(put(i, "k", &format!("u{i}"), 0, 0)))
            .collect();
        ops.push(cas(30, "k", None, "x", false, 1, 2));
        for i in 0..20 {
            let t = 10 + 10 * i;
            ops.push(put(31, "k", &format!("w{i}"), t, t + 5));
        }
        ops.push(get(32, "k", None, 300, 310));
        let result = run(ops, 200_000);
        assert!(matches!(result, SearchResult::Violation(_)), "{result:?}");
    }
}
