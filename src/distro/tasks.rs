//! The delayed sync tasks of the owner: one per (session, target node), merged while
//! they wait.
//!
//! A change schedules a task due after the sync delay; a later change of the same
//! session for the same target merges into the waiting task and keeps its due time, so
//! a burst costs one transfer at most one delay after its first change (Nacos's merge
//! rule: not a sliding debounce). A deletion is a task of its own kind, and the newer
//! kind wins a merge. Whatever the kind, the sender reads the session's *current* state
//! when it sends: a change of a session that is gone by then is sent as its deletion.
//! A failed send comes back with its attempt count and waits a growing backoff, unless
//! a newer task for the key is already waiting (which will send the current state
//! anyway). Pure logic with explicit times, tested below.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::config::NodeId;
use crate::distro::store::SessionId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncOp {
    Change,
    Delete,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Task {
    op: SyncOp,
    due: Instant,
    /// Failed sends so far.
    attempts: u32,
}

/// A task taken for sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub session: SessionId,
    pub op: SyncOp,
    pub attempts: u32,
}

#[derive(Default)]
pub struct TaskQueue {
    tasks: HashMap<(SessionId, NodeId), Task>,
}

/// Retry delay after `attempts` failures: `base`, doubling, at most 10 × `base`.
pub fn backoff(base: Duration, attempts: u32) -> Duration {
    (base * 2u32.saturating_pow(attempts.saturating_sub(1).min(4))).min(base * 10)
}

impl TaskQueue {
    /// Sessions with a deletion waiting to be sent (to any target).
    pub fn deletions(&self) -> Vec<SessionId> {
        let mut ids: Vec<SessionId> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.op == SyncOp::Delete)
            .map(|((id, _), _)| id.clone())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// Schedule (or merge into) the task of `session` for `target`. True if merged.
    pub fn add(
        &mut self,
        session: &str,
        target: NodeId,
        op: SyncOp,
        now: Instant,
        delay: Duration,
    ) -> bool {
        let due = now + delay;
        match self.tasks.get_mut(&(session.to_string(), target)) {
            Some(t) => {
                t.op = op;
                t.due = t.due.min(due);
                true
            }
            None => {
                self.tasks.insert(
                    (session.to_string(), target),
                    Task {
                        op,
                        due,
                        attempts: 0,
                    },
                );
                false
            }
        }
    }

    /// Take the due tasks of the targets `take` accepts, at most `max` per target.
    pub fn take_due(
        &mut self,
        now: Instant,
        take: impl Fn(NodeId) -> bool,
        max: usize,
    ) -> BTreeMap<NodeId, Vec<Due>> {
        let mut out: BTreeMap<NodeId, Vec<Due>> = BTreeMap::new();
        let keys: Vec<(SessionId, NodeId)> = self
            .tasks
            .iter()
            .filter(|((_, target), t)| t.due <= now && take(*target))
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            let batch = out.entry(key.1).or_default();
            if batch.len() >= max {
                continue;
            }
            if let Some(t) = self.tasks.remove(&key) {
                batch.push(Due {
                    session: key.0,
                    op: t.op,
                    attempts: t.attempts,
                });
            }
        }
        out
    }

    /// A send of `task` to `target` failed: wait the backoff and try again, unless a
    /// newer task for the key is waiting already.
    pub fn retry(&mut self, task: Due, target: NodeId, now: Instant, base: Duration) {
        let attempts = task.attempts + 1;
        match self.tasks.get_mut(&(task.session.clone(), target)) {
            Some(t) => t.attempts = t.attempts.max(attempts),
            None => {
                self.tasks.insert(
                    (task.session, target),
                    Task {
                        op: task.op,
                        due: now + backoff(base, attempts),
                        attempts,
                    },
                );
            }
        }
    }

    /// Forget every task for a node that is no longer a member.
    pub fn drop_target(&mut self, target: NodeId) {
        self.tasks.retain(|(_, t), _| *t != target);
    }

    pub fn targets(&self) -> Vec<NodeId> {
        let mut t: Vec<NodeId> = self.tasks.keys().map(|(_, t)| *t).collect();
        t.sort_unstable();
        t.dedup();
        t
    }

    /// Waiting tasks per target.
    pub fn depth(&self) -> BTreeMap<NodeId, usize> {
        let mut out = BTreeMap::new();
        for (_, t) in self.tasks.keys() {
            *out.entry(*t).or_default() += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAY: Duration = Duration::from_millis(1000);

    #[test]
    fn a_burst_merges_into_one_task_due_one_delay_after_the_first_change() {
        let t0 = Instant::now();
        let mut q = TaskQueue::default();
        assert!(!q.add("s", 2, SyncOp::Change, t0, DELAY));
        for i in 1..100 {
            assert!(q.add(
                "s",
                2,
                SyncOp::Change,
                t0 + Duration::from_millis(i * 5),
                DELAY
            ));
        }
        // Another target and another session are tasks of their own.
        assert!(!q.add("s", 3, SyncOp::Change, t0, DELAY));
        assert!(!q.add("other", 2, SyncOp::Change, t0, DELAY));
        assert_eq!(q.depth(), BTreeMap::from([(2, 2), (3, 1)]));
        assert!(q
            .take_due(t0 + Duration::from_millis(999), |_| true, 100)
            .is_empty());
        let due = q.take_due(t0 + DELAY, |t| t == 2, 100);
        assert_eq!(due[&2].len(), 2);
        assert_eq!(q.depth(), BTreeMap::from([(3, 1)]));
    }

    #[test]
    fn the_newer_kind_wins_a_merge() {
        let t0 = Instant::now();
        let mut q = TaskQueue::default();
        q.add("s", 2, SyncOp::Change, t0, DELAY);
        q.add("s", 2, SyncOp::Delete, t0, DELAY);
        let due = q.take_due(t0 + DELAY, |_| true, 10);
        assert_eq!(due[&2][0].op, SyncOp::Delete);
        // An immediate task (verify asked for it) is not held back by a waiting one.
        q.add("s", 2, SyncOp::Change, t0, DELAY);
        q.add("s", 2, SyncOp::Change, t0, Duration::ZERO);
        assert_eq!(q.take_due(t0, |_| true, 10)[&2].len(), 1);
    }

    #[test]
    fn failed_sends_back_off_and_yield_to_newer_tasks() {
        let t0 = Instant::now();
        let base = Duration::from_millis(100);
        assert_eq!(backoff(base, 1), base);
        assert_eq!(backoff(base, 2), base * 2);
        assert_eq!(backoff(base, 4), base * 8);
        assert_eq!(backoff(base, 9), base * 10);
        let mut q = TaskQueue::default();
        q.add("s", 2, SyncOp::Change, t0, Duration::ZERO);
        let task = q.take_due(t0, |_| true, 10).remove(&2).unwrap().remove(0);
        q.retry(task.clone(), 2, t0, base);
        assert!(q
            .take_due(t0 + Duration::from_millis(99), |_| true, 10)
            .is_empty());
        let again = q
            .take_due(t0 + base, |_| true, 10)
            .remove(&2)
            .unwrap()
            .remove(0);
        assert_eq!(again.attempts, 1);
        // A newer change arrived while the send was in flight: it stays as it is.
        q.add("s", 2, SyncOp::Change, t0, DELAY);
        q.retry(again, 2, t0, base);
        let due = q.take_due(t0 + DELAY, |_| true, 10).remove(&2).unwrap();
        assert_eq!(due[0].attempts, 2);
        // Limits per target, and forgetting a removed member.
        for i in 0..5 {
            q.add(&format!("s{i}"), 3, SyncOp::Change, t0, Duration::ZERO);
        }
        assert_eq!(q.take_due(t0, |_| true, 2)[&3].len(), 2);
        q.drop_target(3);
        assert!(q.targets().is_empty());
    }
}
