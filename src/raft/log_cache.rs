//! The newest entries of a group's log, kept in memory.
//!
//! Every entry is read back soon after it is appended: by the state-machine worker on
//! every node (openraft applies committed entries it reads from the log) and, on the
//! leader, by each follower's replication stream. Reading them from RocksDB (an
//! iterator over the log column family, a decode per entry, a hop to the blocking
//! pool) was 6 % of the busiest node's CPU under a publish load. etcd and TiKV serve
//! fresh entries from an in-memory log for the same reason.
//!
//! The cache is always a contiguous run of entries that ends at the log's last entry
//! (appends extend it, a truncation cuts it, a purge or the size bound drops its
//! front), so a read whose range starts inside the run is answered in full from memory;
//! any other read goes to RocksDB. It holds no state of its own that matters for
//! correctness: dropping it at any time only makes reads slower.
//!
//! Entries also leave it with age ([`MAX_AGE`], [`LogCache::expire`], called by a
//! timer of the group), and all at once when the group falls quiet after writes
//! ([`LogCache::release`], from `crate::idle`): without that, a group that falls quiet
//! would keep its last budget's worth of entries, which no reader wants any more, for
//! as long as it stays quiet (each group's 2 MiB, 6 MiB of a node's memory after a
//! benchmark that wrote to all three).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::raft::types::Entry;

/// How long an entry stays cached after its append. Its readers want it within
/// milliseconds (the apply on every node, the leader's replication streams); later
/// only a follower that fell behind reads it, and that read can go to RocksDB. Ten
/// seconds, not one: with one second, publish at 256 clients lost 16 % of its
/// throughput (four rounds of `bench/ab.sh`, CPU per write +12 %; which reader wanted
/// the older entries was not found), with ten the same as without an age limit
/// (docs/BENCHMARKS.md, "The log cache's age limit").
pub const MAX_AGE: Duration = Duration::from_secs(10);

/// How often a group's timer calls [`LogCache::expire`].
pub const EXPIRY_TICK: Duration = Duration::from_secs(1);

/// The recent tail of one group's log, within a byte budget and [`MAX_AGE`].
#[derive(Debug)]
pub struct LogCache {
    /// Contiguous by index, oldest first.
    entries: VecDeque<Cached>,
    bytes: usize,
    budget: usize,
    /// Reads answered from memory, and reads it could not answer (they go to the log
    /// in RocksDB), since the start.
    hits: u64,
    misses: u64,
}

#[derive(Debug)]
struct Cached {
    entry: Entry,
    /// Its encoded size, what the budget counts.
    len: usize,
    appended_at: Instant,
}

impl LogCache {
    /// An empty cache that holds at most `budget` bytes of encoded entries (0: none).
    pub fn new(budget: usize) -> Self {
        LogCache {
            entries: VecDeque::new(),
            bytes: 0,
            budget,
            hits: 0,
            misses: 0,
        }
    }

    /// Reads answered from memory and reads sent to RocksDB, since the start.
    pub fn reads(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }

    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|c| c.entry.log_id.index)
    }

    fn last_index(&self) -> Option<u64> {
        self.entries.back().map(|c| c.entry.log_id.index)
    }

    /// Encoded bytes of the entries held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Number of entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Record entries just written to the log (at `now`), in order. An entry that does
    /// not follow the cached run (the log was reset under it, e.g. by a snapshot
    /// install) starts a new run.
    pub fn appended(&mut self, entry: Entry, encoded_len: usize, now: Instant) {
        if self.budget == 0 {
            return;
        }
        let index = entry.log_id.index;
        if self.last_index().is_some_and(|last| last + 1 != index) {
            self.clear();
        }
        self.bytes += encoded_len;
        self.entries.push_back(Cached {
            entry,
            len: encoded_len,
            appended_at: now,
        });
        while self.bytes > self.budget && self.pop_front() {}
    }

    fn pop_front(&mut self) -> bool {
        match self.entries.pop_front() {
            Some(c) => {
                self.bytes -= c.len;
                true
            }
            None => false,
        }
    }

    /// The log lost every entry from `from` on.
    pub fn truncated(&mut self, from: u64) {
        while self.last_index().is_some_and(|last| last >= from) {
            if let Some(c) = self.entries.pop_back() {
                self.bytes -= c.len;
            }
        }
    }

    /// The log lost every entry up to and including `upto`.
    pub fn purged(&mut self, upto: u64) {
        while self.first_index().is_some_and(|first| first <= upto) && self.pop_front() {}
    }

    /// Drop the entries appended [`MAX_AGE`] or longer before `now`, and give back the
    /// queue's memory when most of it is no longer used (a queue that held a busy
    /// second's entries keeps its size otherwise).
    pub fn expire(&mut self, now: Instant) {
        while self
            .entries
            .front()
            .is_some_and(|c| now.saturating_duration_since(c.appended_at) >= MAX_AGE)
            && self.pop_front()
        {}
        if self.entries.capacity() > 64 && self.entries.len() * 4 < self.entries.capacity() {
            self.entries.shrink_to(self.entries.len() * 2);
        }
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Drop every entry and the queue's memory: for a group that fell quiet
    /// (`crate::idle`), whose readers have had its entries; a follower still behind
    /// reads them from RocksDB.
    pub fn release(&mut self) {
        self.entries = VecDeque::new();
        self.bytes = 0;
    }

    /// The entries with `start <= index < end` (`end` None: to the last), if the
    /// cache holds all of them the log holds: `start` must be within the cached run or
    /// just past it (then there is nothing to return). Counted in [`Self::reads`].
    pub fn get(&mut self, start: u64, end: Option<u64>) -> Option<Vec<Entry>> {
        let found = self.lookup(start, end);
        match found {
            Some(_) => self.hits += 1,
            None => self.misses += 1,
        }
        found
    }

    fn lookup(&self, start: u64, end: Option<u64>) -> Option<Vec<Entry>> {
        let first = self.first_index()?;
        let last = self.last_index()?;
        if start < first || start > last + 1 {
            return None;
        }
        let from = (start - first) as usize;
        let to = match end {
            Some(end) if end <= start => from,
            Some(end) => ((end.min(last + 1)) - first) as usize,
            None => self.entries.len(),
        };
        Some(
            self.entries
                .range(from..to)
                .map(|c| c.entry.clone())
                .collect(),
        )
    }

    #[cfg(test)]
    fn indexes(&self) -> Vec<u64> {
        self.entries.iter().map(|c| c.entry.log_id.index).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::{Command, TypeConfig};

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: openraft::testing::log_id::<TypeConfig>(1, 1, index),
            payload: openraft::EntryPayload::Normal(Command::new("put", "k", vec![])),
        }
    }

    fn cache_of(budget: usize, range: std::ops::RangeInclusive<u64>) -> LogCache {
        let mut c = LogCache::new(budget);
        let now = Instant::now();
        for i in range {
            c.appended(entry(i), 10, now);
        }
        c
    }

    fn indexes(v: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        v.map(|v| v.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn reads_inside_the_run_are_served_and_others_are_not() {
        let mut c = cache_of(1000, 5..=9);
        assert_eq!(indexes(c.get(5, Some(8))), Some(vec![5, 6, 7]));
        assert_eq!(indexes(c.get(7, None)), Some(vec![7, 8, 9]));
        assert_eq!(
            indexes(c.get(8, Some(100))),
            Some(vec![8, 9]),
            "end past the log"
        );
        assert_eq!(indexes(c.get(10, None)), Some(vec![]), "just past the last");
        assert_eq!(indexes(c.get(6, Some(6))), Some(vec![]), "empty range");
        assert_eq!(indexes(c.get(4, Some(6))), None, "starts before the run");
        assert_eq!(indexes(c.get(11, None)), None, "beyond the log");
        assert_eq!(c.reads(), (5, 2), "five answered, two sent to the log");
        let mut empty = LogCache::new(1000);
        assert_eq!(indexes(empty.get(1, None)), None, "empty cache");
        assert_eq!(empty.reads(), (0, 1));
    }

    #[test]
    fn the_budget_drops_the_oldest() {
        let c = cache_of(35, 1..=10);
        assert_eq!(c.indexes(), vec![8, 9, 10]);
        assert_eq!(c.bytes, 30);
        let none = cache_of(0, 1..=10);
        assert_eq!(none.indexes(), Vec::<u64>::new(), "budget 0 disables it");
    }

    #[test]
    fn truncation_purge_and_gaps_keep_it_a_suffix_of_the_log() {
        let mut c = cache_of(1000, 1..=10);
        c.truncated(8);
        assert_eq!(c.indexes(), (1..=7).collect::<Vec<_>>());
        c.appended(entry(8), 10, Instant::now());
        c.purged(3);
        assert_eq!(c.indexes(), (4..=8).collect::<Vec<_>>());
        assert_eq!(c.bytes, 50);
        // A snapshot install resets the log: the next append does not follow.
        c.appended(entry(100), 10, Instant::now());
        assert_eq!(c.indexes(), vec![100]);
        assert_eq!(c.bytes, 10);
        c.truncated(0);
        assert!(c.indexes().is_empty());
        assert_eq!(c.bytes, 0);
    }

    #[test]
    fn entries_leave_with_age_and_the_queue_gives_its_memory_back() {
        let t0 = Instant::now();
        let mut c = LogCache::new(1 << 20);
        for i in 1..=1000 {
            c.appended(entry(i), 10, t0);
        }
        let half = MAX_AGE / 2;
        for i in 1001..=1010 {
            c.appended(entry(i), 10, t0 + half);
        }
        let big = c.entries.capacity();
        assert!(big >= 1010);

        c.expire(t0 + half);
        assert_eq!(c.len(), 1010, "nothing old enough yet");
        c.expire(t0 + MAX_AGE);
        assert_eq!(c.indexes(), (1001..=1010).collect::<Vec<_>>());
        assert_eq!(c.bytes(), 100);
        assert!(
            c.entries.capacity() < big / 4,
            "shrunk: {}",
            c.entries.capacity()
        );
        assert_eq!(
            indexes(c.get(1005, None)),
            Some((1005..=1010).collect::<Vec<_>>()),
            "what is left still answers"
        );
        assert_eq!(
            indexes(c.get(1000, None)),
            None,
            "expired: read from the log"
        );

        c.expire(t0 + half + MAX_AGE);
        assert!(c.is_empty());
        assert_eq!(c.bytes(), 0);
        // The next append starts a new run wherever the log is.
        c.appended(entry(1011), 10, t0 + 2 * MAX_AGE);
        assert_eq!(c.indexes(), vec![1011]);
    }

    #[test]
    fn a_released_cache_holds_nothing_and_starts_again_at_the_next_append() {
        let mut c = cache_of(1 << 20, 1..=1000);
        c.release();
        assert!(c.is_empty());
        assert_eq!((c.bytes(), c.entries.capacity()), (0, 0));
        assert_eq!(indexes(c.get(999, None)), None, "read from the log");
        c.appended(entry(1001), 10, Instant::now());
        assert_eq!(indexes(c.get(1001, None)), Some(vec![1001]));
    }
}
