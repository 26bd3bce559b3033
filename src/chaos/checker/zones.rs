//! A fast check that can only find violations: Gibbons & Korach's zones, extended to
//! deletes, compare-and-swap and unknown outcomes. It applies to a key whose writes all
//! have distinct values.
//!
//! With distinct values, each value `v` is in the register during one contiguous stretch
//! of any linearization: from its write to the next write. Every op of v's *cluster*
//! (its write, the reads that returned v, the swaps that expected v) takes effect inside
//! that stretch. Let `f` be the earliest completion and `s` the latest invocation in the
//! cluster:
//! - if `f < s` (a *forward zone*), v is in the register throughout `(f, s)`;
//! - otherwise (a *backward zone*), v is in the register at some instant of `[s, f]`.
//!
//! Stretches of different values share at most an endpoint. So these are violations:
//! two forward zones that overlap; a backward zone strictly inside another value's
//! forward zone; an op that must see something other than v (a delete, a read of
//! absent, a swap that expected absent, a mismatch against v) whose whole interval lies
//! strictly inside v's forward zone; a read of a value no write could have written; a
//! read that completed before the write of its value was invoked. Strict comparisons
//! keep ops whose intervals only touch from ever counting as ordered.
//!
//! An unknown-outcome write has no completion time; it joins its cluster's zone only
//! through its invocation, and only when some op observed its value (which proves it
//! took effect). Passing every rule proves nothing; the search decides.

use std::collections::HashMap;

use super::model::{Action, KeyHistory, KeyOp, StateId, ABSENT};
use crate::chaos::history::DisplayValue;

/// A violation proved by the zone rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ZoneViolation {
    /// Indices into the key's ops: the smallest set of ops that shows the problem.
    pub(super) ops: Vec<usize>,
    pub(super) explanation: String,
}

/// Up to `limit` violations of the zone rules in `key`, which must have unique writes.
pub(super) fn find_violations(key: &KeyHistory, limit: usize) -> Vec<ZoneViolation> {
    debug_assert!(key.unique_writes, "zones need distinct written values");
    let clusters = Clusters::build(&key.ops);
    let mut found = Vec::new();
    let zones = clusters.zones(key, &mut found);
    let forward = forward_zones(&zones);
    overlapping_forward_zones(key, &forward, &mut found);
    for obstacle in obstacles(&key.ops, &zones) {
        if let Some(violation) = obstacle_inside_zone(key, &forward, &obstacle) {
            found.push(violation);
        }
    }
    found.truncate(limit);
    found
}

/// For each written or observed value: its writer and its observers.
struct Clusters {
    writer: HashMap<StateId, usize>,
    observers: HashMap<StateId, Vec<usize>>,
}

impl Clusters {
    fn build(ops: &[KeyOp]) -> Clusters {
        let mut writer = HashMap::new();
        let mut observers: HashMap<StateId, Vec<usize>> = HashMap::new();
        for (index, op) in ops.iter().enumerate() {
            if let Some(value) = op.action.written().filter(|&v| v != ABSENT) {
                writer.insert(value, index);
            }
            let observed = op.action.observed().filter(|&v| v != ABSENT);
            if let (Some(value), true) = (observed, op.is_required()) {
                observers.entry(value).or_default().push(index);
            }
        }
        Clusters { writer, observers }
    }

    /// The zone of every value whose stretch certainly exists; a value whose reads
    /// cannot be explained at all is reported to `found` instead.
    fn zones(&self, key: &KeyHistory, found: &mut Vec<ZoneViolation>) -> Vec<Zone> {
        let mut values: Vec<StateId> = self.writer.keys().copied().collect();
        values.extend(
            self.observers
                .keys()
                .filter(|v| !self.writer.contains_key(v)),
        );
        values.sort_unstable();
        let mut zones = Vec::new();
        for value in values {
            let observers = self.observers.get(&value).map_or(&[][..], Vec::as_slice);
            let Some(&writer) = self.writer.get(&value) else {
                found.push(never_written(key, value, observers));
                continue;
            };
            let early = early_observers(&key.ops, writer, observers);
            if !early.is_empty() {
                found.extend(
                    early
                        .iter()
                        .map(|&op| read_before_write(key, value, writer, op)),
                );
                continue;
            }
            let writer_took_effect = key.ops[writer].is_required() || !observers.is_empty();
            if writer_took_effect {
                zones.push(Zone::of_cluster(&key.ops, value, writer, observers));
            }
        }
        zones
    }
}

/// Observers that completed before the write of their value was invoked.
fn early_observers(ops: &[KeyOp], writer: usize, observers: &[usize]) -> Vec<usize> {
    let invoked = ops[writer].invoke;
    observers
        .iter()
        .copied()
        .filter(|&op| ops[op].complete.is_some_and(|complete| complete < invoked))
        .collect()
}

/// The time span a value's cluster pins down.
#[derive(Debug, Clone)]
struct Zone {
    value: StateId,
    writer: usize,
    /// Earliest completion in the cluster, and the op with it.
    first_complete: (u64, usize),
    /// Latest invocation in the cluster, and the op with it.
    last_invoke: (u64, usize),
}

impl Zone {
    fn of_cluster(ops: &[KeyOp], value: StateId, writer: usize, observers: &[usize]) -> Zone {
        let members = || std::iter::once(writer).chain(observers.iter().copied());
        let first_complete = members()
            .filter_map(|op| ops[op].complete.map(|complete| (complete, op)))
            .min()
            .unwrap_or((u64::MAX, writer));
        let last_invoke = members()
            .map(|op| (ops[op].invoke, op))
            .max()
            .unwrap_or((ops[writer].invoke, writer));
        Zone {
            value,
            writer,
            first_complete,
            last_invoke,
        }
    }

    fn is_forward(&self) -> bool {
        self.first_complete.0 < self.last_invoke.0
    }

    /// The ops that define the zone, without repeats.
    fn defining_ops(&self) -> Vec<usize> {
        let mut ops = vec![self.writer, self.first_complete.1, self.last_invoke.1];
        ops.sort_unstable();
        ops.dedup();
        ops
    }
}

/// Forward zones sorted by start.
fn forward_zones(zones: &[Zone]) -> Vec<&Zone> {
    let mut forward: Vec<&Zone> = zones.iter().filter(|z| z.is_forward()).collect();
    forward.sort_by_key(|z| z.first_complete);
    forward
}

/// Sorted by start, any two overlapping forward zones imply an overlapping adjacent pair.
fn overlapping_forward_zones(key: &KeyHistory, forward: &[&Zone], found: &mut Vec<ZoneViolation>) {
    for pair in forward.windows(2) {
        let (earlier, later) = (pair[0], pair[1]);
        if later.first_complete.0 < earlier.last_invoke.0 {
            let mut ops = earlier.defining_ops();
            ops.extend(later.defining_ops());
            found.push(ZoneViolation {
                ops,
                explanation: format!(
                    "{} and {} must each be the value throughout an interval ({} and {}), \
                     and these overlap; a register holds one value at a time",
                    show(key, earlier.value),
                    show(key, later.value),
                    span(earlier),
                    span(later),
                ),
            });
        }
    }
}

/// Something that must take effect at an instant of `[start, end]` where the register
/// does not hold `excludes` (or, when `excludes` is `None`, holds no value other than
/// `own_value`).
struct Obstacle {
    start: u64,
    end: u64,
    ops: Vec<usize>,
    /// The value whose stretch this is (its own zone is no obstacle to it).
    own_value: Option<StateId>,
    /// `Some(v)`: this is only an obstacle to v's zone.
    only_against: Option<StateId>,
    what: String,
}

fn obstacles(ops: &[KeyOp], zones: &[Zone]) -> Vec<Obstacle> {
    let backward = zones.iter().filter(|z| !z.is_forward()).map(|z| Obstacle {
        start: z.last_invoke.0,
        end: z.first_complete.0,
        ops: z.defining_ops(),
        own_value: Some(z.value),
        only_against: None,
        what: String::new(),
    });
    let single_ops = ops.iter().enumerate().filter_map(|(index, op)| {
        let complete = op.complete?;
        let (only_against, what) = match op.action {
            Action::Write(ABSENT) => (None, "a delete"),
            Action::Read(ABSENT) => (None, "a read of absent"),
            Action::Cas {
                expect: ABSENT,
                swapped: true,
                ..
            } => (None, "a swap that expected absent"),
            Action::Cas {
                expect,
                swapped: false,
                ..
            } if expect != ABSENT => (Some(expect), "a mismatching swap"),
            _ => return None,
        };
        Some(Obstacle {
            start: op.invoke,
            end: complete,
            ops: vec![index],
            own_value: None,
            only_against,
            what: what.to_string(),
        })
    });
    backward.chain(single_ops).collect()
}

/// The forward zone that strictly contains the obstacle, as a violation. Forward zones
/// that do not overlap each other can contain it only if the last one starting before
/// it does.
fn obstacle_inside_zone(
    key: &KeyHistory,
    forward: &[&Zone],
    obstacle: &Obstacle,
) -> Option<ZoneViolation> {
    let candidates = forward.partition_point(|z| z.first_complete.0 < obstacle.start);
    let zone = forward[..candidates].last()?;
    let inside = obstacle.end < zone.last_invoke.0;
    let applies = obstacle.own_value != Some(zone.value)
        && obstacle.only_against.is_none_or(|v| v == zone.value);
    if !(inside && applies) {
        return None;
    }
    let mut ops = zone.defining_ops();
    ops.extend(&obstacle.ops);
    let subject = match obstacle.own_value {
        Some(value) => format!("{} must be the value at some instant", show(key, value)),
        None => format!("{} must take effect", obstacle.what),
    };
    Some(ZoneViolation {
        ops,
        explanation: format!(
            "{subject} in [{}, {}], but {} must be the value throughout {}, which contains it",
            obstacle.start,
            obstacle.end,
            show(key, zone.value),
            span(zone),
        ),
    })
}

fn never_written(key: &KeyHistory, value: StateId, observers: &[usize]) -> ZoneViolation {
    ZoneViolation {
        ops: observers.iter().copied().take(3).collect(),
        explanation: format!(
            "{} was observed but no write of it can have taken effect",
            show(key, value)
        ),
    }
}

fn read_before_write(key: &KeyHistory, value: StateId, writer: usize, op: usize) -> ZoneViolation {
    ZoneViolation {
        ops: vec![writer, op],
        explanation: format!(
            "{} was observed by an op that completed before its write was invoked",
            show(key, value)
        ),
    }
}

fn show(key: &KeyHistory, value: StateId) -> String {
    DisplayValue(key.value(value)).to_string()
}

fn span(zone: &Zone) -> String {
    format!("({}, {})", zone.first_complete.0, zone.last_invoke.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::checker::model::partition;
    use crate::chaos::checker::testkit::*;
    use crate::chaos::history::History;

    fn violations(ops: Vec<crate::chaos::history::Op>) -> Vec<ZoneViolation> {
        let keys = partition(&History::new(ops));
        find_violations(&keys[0], 10)
    }

    #[test]
    fn stale_read_is_a_backward_zone_inside_a_forward_zone() {
        let found = violations(vec![
            put(1, "k", "a", 0, 10),
            put(1, "k", "b", 20, 30),
            get(2, "k", Some("a"), 40, 50),
        ]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].explanation.contains("\"b\" must be the value"));
        assert_eq!(found[0].ops, vec![0, 2, 1]);
    }

    #[test]
    fn touching_intervals_are_concurrent() {
        let found = violations(vec![
            put(1, "k", "a", 0, 10),
            put(1, "k", "b", 10, 20),
            get(2, "k", Some("a"), 20, 30),
        ]);
        assert_eq!(found, vec![]);
    }

    #[test]
    fn forward_zones_that_only_touch_do_not_overlap() {
        // a must hold over (10, 20) and b over (20, 30): b's write at 20 fits between.
        let found = violations(vec![
            put(1, "k", "a", 0, 10),
            get(2, "k", Some("a"), 20, 25),
            put(3, "k", "b", 15, 20),
            get(4, "k", Some("b"), 30, 40),
        ]);
        assert_eq!(found, vec![]);
    }

    #[test]
    fn mismatch_is_an_obstacle_only_to_its_expected_value() {
        let against_a = violations(vec![
            put(1, "k", "a", 0, 10),
            cas(2, "k", Some("a"), "c", false, 20, 30),
            get(3, "k", Some("a"), 40, 50),
        ]);
        assert_eq!(against_a.len(), 1);
        let against_z = violations(vec![
            put(1, "k", "a", 0, 10),
            cas(2, "k", Some("z"), "c", false, 20, 30),
            get(3, "k", Some("a"), 40, 50),
        ]);
        assert_eq!(against_z, vec![]);
    }

    #[test]
    fn unknown_writer_counts_only_once_observed() {
        let found = violations(vec![
            unknown(put(1, "k", "a", 0, 0)),
            get(2, "k", Some("a"), 10, 20),
            put(3, "k", "b", 30, 40),
            get(2, "k", Some("a"), 50, 60),
        ]);
        assert_eq!(found.len(), 1, "{found:?}");
    }
}
