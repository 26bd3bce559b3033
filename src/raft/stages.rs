//! Where a write's time goes between the log and the state machine, per group.
//!
//! The log store notes when each batch of entries was written to this node's log; the
//! state machine, when it is handed committed entries, looks their append time up.
//! The difference is the **commit** stage: on the leader, the WAL fsync, replication
//! to a quorum of followers and their acknowledgements; on a follower, until the
//! leader's commit index reached it (normally the next append or heartbeat). The
//! state machine also times each applied batch (the **apply** stage) and counts its
//! entries. With `nacosd_write_seconds` (arrival to reply) and `nacosd_wal_sync_seconds`
//! these give the per-stage breakdown of a write that `bench/compare.sh` prints.
//!
//! The clock keeps one record per appended batch, not per entry, and at most
//! [`MAX_BATCHES`] of them: a follower far behind (or a group whose state machine is
//! stopped) loses its oldest records, which then go unmeasured rather than grow memory.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::Metrics;

/// Appended batches remembered; older ones are dropped unmeasured.
const MAX_BATCHES: usize = 4096;

/// Entries `first..=last` reached this node's log at `at`.
#[derive(Clone, Copy, Debug)]
struct Appended {
    first: u64,
    last: u64,
    at: Instant,
}

/// One group's append times, shared by its log store and its state machine.
#[derive(Clone)]
pub struct StageClock {
    group: Arc<str>,
    metrics: Arc<Metrics>,
    appended: Arc<Mutex<VecDeque<Appended>>>,
}

impl StageClock {
    pub fn new(group: &str, metrics: Arc<Metrics>) -> Self {
        StageClock {
            group: group.into(),
            metrics,
            appended: Arc::default(),
        }
    }

    /// The group's counters of where log appends were written.
    pub fn append_counters(&self) -> crate::metrics::AppendCounters {
        self.metrics.append_counters(&self.group)
    }

    fn records(&self) -> std::sync::MutexGuard<'_, VecDeque<Appended>> {
        crate::lock(&self.appended)
    }

    /// Entries `first..=last` were written to the log now.
    pub fn appended(&self, first: u64, last: u64) {
        let mut records = self.records();
        // A rewritten suffix (a new leader's entries replacing ours) restarts the clock
        // of the indexes it covers.
        while records.back().is_some_and(|r| r.last >= first) {
            let Some(back) = records.back_mut() else {
                break;
            };
            if back.first >= first {
                records.pop_back();
            } else {
                back.last = first - 1;
            }
        }
        if records.len() == MAX_BATCHES {
            records.pop_front();
        }
        records.push_back(Appended {
            first,
            last,
            at: Instant::now(),
        });
    }

    /// Entries up to `last` are being applied now: their commit stage ends.
    pub fn committed_through(&self, last: u64) {
        let now = Instant::now();
        let mut waits = Vec::new();
        {
            let mut records = self.records();
            while let Some(front) = records.front_mut() {
                if front.first > last {
                    break;
                }
                let through = front.last.min(last);
                waits.push((
                    through - front.first + 1,
                    now.saturating_duration_since(front.at),
                ));
                if through == front.last {
                    records.pop_front();
                } else {
                    front.first = through + 1;
                }
            }
        }
        for (entries, waited) in waits {
            self.metrics.observe_commit(&self.group, entries, waited);
        }
    }

    /// The state machine was replaced by a snapshot: entries it covered were never
    /// applied one by one, so their records are dropped unmeasured.
    pub fn skipped_through(&self, last: u64) {
        let mut records = self.records();
        while records.front().is_some_and(|r| r.first <= last) {
            let Some(front) = records.front_mut() else {
                break;
            };
            if front.last <= last {
                records.pop_front();
            } else {
                front.first = last + 1;
            }
        }
    }

    /// A batch of `entries` was applied in `took`, in memory on the Raft task's thread
    /// (`path` "memory") or on the blocking pool ("pool").
    pub fn applied(&self, entries: usize, path: &'static str, took: Duration) {
        self.metrics.observe_apply(&self.group, entries, path, took);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock() -> (StageClock, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        (StageClock::new("g", metrics.clone()), metrics)
    }

    fn pending(c: &StageClock) -> Vec<(u64, u64)> {
        c.records().iter().map(|r| (r.first, r.last)).collect()
    }

    #[test]
    fn commit_consumes_whole_and_partial_batches() {
        let (c, m) = clock();
        c.appended(1, 3);
        c.appended(4, 4);
        c.appended(5, 9);
        c.committed_through(6);
        assert_eq!(pending(&c), vec![(7, 9)]);
        assert_eq!(m.commit_entries_observed("g"), 6);
        c.committed_through(9);
        assert!(pending(&c).is_empty());
        assert_eq!(m.commit_entries_observed("g"), 9);
        // Entries never appended here (a snapshot, or already measured): nothing.
        c.committed_through(12);
        assert_eq!(m.commit_entries_observed("g"), 9);
    }

    #[test]
    fn a_rewritten_suffix_restarts_its_clock() {
        let (c, _) = clock();
        c.appended(1, 5);
        c.appended(6, 8);
        c.appended(4, 10);
        assert_eq!(pending(&c), vec![(1, 3), (4, 10)]);
    }

    #[test]
    fn a_snapshot_drops_what_it_covered_unmeasured() {
        let (c, m) = clock();
        c.appended(1, 5);
        c.appended(6, 8);
        c.skipped_through(6);
        assert_eq!(pending(&c), vec![(7, 8)]);
        c.committed_through(8);
        assert_eq!(m.commit_entries_observed("g"), 2);
    }

    #[test]
    fn memory_is_bounded() {
        let (c, _) = clock();
        for i in 0..(MAX_BATCHES as u64 + 10) {
            c.appended(i + 1, i + 1);
        }
        assert_eq!(c.records().len(), MAX_BATCHES);
        assert_eq!(pending(&c)[0], (11, 11));
    }
}
