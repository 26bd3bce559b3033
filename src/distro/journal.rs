//! The owner's record of which instances of one session changed at which revision, so
//! that a peer known to hold an earlier revision is sent only the difference (a delta
//! sync) instead of the whole session.
//!
//! Why: a sync used to carry a session's whole state. With sessions of thousands of
//! instances (one `nacosd.v1` client registering a fleet), every registration made the
//! owner re-send, and each peer re-decode and re-diff, the whole session once per sync
//! delay: on a 20k registrations/s load that was hundreds of thousands of instances per
//! second per node, enough CPU on the shared runtime to delay Raft heartbeats into
//! elections. A delta costs what changed.
//!
//! The rule that keeps it safe: every change with a revision above `floor` is listed.
//! A delta from `base` is only made when `base >= floor`; otherwise (a peer that was
//! down while the journal was trimmed or capped) the session goes whole. Entries are
//! trimmed once every peer confirmed a revision at or above them, and capped so a peer
//! that never answers cannot make the journal grow without bound.

use std::collections::{BTreeSet, VecDeque};

use crate::groups::naming::{InstanceAddr, ServiceKey};

/// An instance's key within a session.
pub type InstanceKey = (ServiceKey, InstanceAddr);

/// Entries kept per session at most; older ones go (raising the floor).
pub const JOURNAL_CAP: usize = 8192;

#[derive(Debug, Default)]
pub struct Journal {
    /// Every change with a revision above this one is in `entries`.
    floor: u64,
    /// (revision, key), revisions ascending.
    entries: VecDeque<(u64, InstanceKey)>,
}

impl Journal {
    /// A journal for a session created at revision `created`.
    pub fn new(created: u64) -> Self {
        Journal {
            floor: created,
            entries: VecDeque::new(),
        }
    }

    /// `keys` changed (upserted or removed) at `revision`.
    pub fn record(&mut self, revision: u64, keys: impl IntoIterator<Item = InstanceKey>) {
        for k in keys {
            self.entries.push_back((revision, k));
        }
        while self.entries.len() > JOURNAL_CAP {
            if let Some((rev, _)) = self.entries.pop_front() {
                self.floor = self.floor.max(rev);
            }
        }
    }

    /// Every peer holds `revision` or later: forget what changed up to it.
    pub fn trim(&mut self, revision: u64) {
        while self
            .entries
            .front()
            .is_some_and(|(rev, _)| *rev <= revision)
        {
            self.entries.pop_front();
        }
        self.floor = self.floor.max(revision);
    }

    /// The keys that changed after `base`, or `None` when the journal no longer
    /// covers `base` (the session must go whole).
    pub fn since(&self, base: u64) -> Option<BTreeSet<&InstanceKey>> {
        if base < self.floor {
            return None;
        }
        let start = self.entries.partition_point(|(rev, _)| *rev <= base);
        Some(self.entries.range(start..).map(|(_, k)| k).collect())
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> InstanceKey {
        (
            ServiceKey {
                namespace: "public".into(),
                group: "DEFAULT_GROUP".into(),
                name: "svc".into(),
            },
            InstanceAddr {
                ip: "10.0.0.1".into(),
                port,
                cluster: "DEFAULT".into(),
            },
        )
    }

    fn ports(set: Option<BTreeSet<&InstanceKey>>) -> Option<Vec<u16>> {
        set.map(|s| s.into_iter().map(|k| k.1.port).collect())
    }

    #[test]
    fn lists_the_keys_changed_after_a_base_once_each() {
        let mut j = Journal::new(10);
        j.record(11, [key(1), key(2)]);
        j.record(12, [key(2)]);
        j.record(13, [key(3)]);
        assert_eq!(ports(j.since(10)), Some(vec![1, 2, 3]));
        assert_eq!(ports(j.since(11)), Some(vec![2, 3]));
        assert_eq!(ports(j.since(13)), Some(vec![]));
        // Before the session existed: not covered.
        assert_eq!(ports(j.since(9)), None);
    }

    #[test]
    fn trimming_forgets_what_every_peer_holds_and_refuses_older_bases() {
        let mut j = Journal::new(10);
        j.record(11, [key(1)]);
        j.record(12, [key(2)]);
        j.trim(11);
        assert_eq!(j.len(), 1);
        assert_eq!(ports(j.since(11)), Some(vec![2]));
        assert_eq!(ports(j.since(10)), None);
    }

    #[test]
    fn the_cap_raises_the_floor_so_a_lagging_peer_gets_the_whole_session() {
        let mut j = Journal::new(0);
        for i in 0..(JOURNAL_CAP as u64 + 10) {
            j.record(i + 1, [key((i % 1000) as u16)]);
        }
        assert_eq!(j.len(), JOURNAL_CAP);
        assert_eq!(ports(j.since(5)), None);
        // A peer at the newest floor still gets a delta.
        assert!(j.since(10).is_some());
        assert_eq!(ports(j.since(JOURNAL_CAP as u64 + 10)), Some(vec![]));
    }
}
