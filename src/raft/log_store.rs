//! RocksDB-backed Raft log and vote storage for one group.
//!
//! Durability rules (never relaxed):
//! - `append` writes the entries, then returns; openraft is told the entries are
//!   flushed only from the [`WalSyncer`] callback, after the WAL fsync.
//! - `save_vote` writes with `sync = true` before returning.
//! - `purge` first syncs the WAL: state machines write without sync (their entries are
//!   in the durable log, so a lost tail is re-applied), and purging removes that
//!   safety net, so everything applied so far must be on disk first. The purge itself
//!   (new purge point and deletion of the entries) is one synced batch: a power cut
//!   leaves either both or neither.
//! - `save_committed` writes nothing itself: the committed id rides along with the next
//!   `append` (never synced on its own; it only saves re-applying entries at startup,
//!   so a value that lags, or is lost, is harmless).
//! - `get_log_state` never reports a last log id below the purge point: entries at or
//!   below it (left by an older version that purged in two steps) are deleted there.
//!
//! Where an append's RocksDB write runs: on the Raft task's own thread when the batch
//! is small (at most [`INLINE_WRITE_MAX`]) and RocksDB can take it at once — the
//! write is a WAL buffer write and memtable inserts, tens of microseconds, and a hop
//! to the blocking pool and back costs two thread wake-ups per batch per node. The
//! inline write asks RocksDB not to wait for a write stall (`no_slowdown`): where it
//! would have waited it refuses the whole batch (`Incomplete`, nothing written), and
//! the batch goes to the blocking pool to wait there, so a stall never holds up the
//! runtime that carries every group's heartbeats. A large batch goes to the pool
//! directly. `nacosd_log_appends_total{path}` counts each kind. What an inline write can
//! still wait for is RocksDB's write queue: behind another thread's synced write (a
//! vote, a truncation, a purge) it waits for that one fsync, as the pool's thread
//! would; those are rare and bounded.
//!
//! The newest entries are also kept in memory ([`LogCache`]) for the readers that
//! want them right after the append (apply, replication); the cache follows every
//! append, truncation and purge, and a read it cannot answer in full goes to RocksDB.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::vote::RaftLeaderIdExt;
use openraft::{LogState, OptionalSend, RaftLogReader};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec;
use crate::metrics::AppendCounters;
use crate::raft::keys;
use crate::raft::log_cache::LogCache;
use crate::raft::rocks::{cf, write_unless_stalled, Db, WalSyncer};
use crate::raft::stages::StageClock;
use crate::raft::types::{Entry, LogId, NodeId, TypeConfig, Vote};

#[derive(Clone)]
pub struct RocksLogStore {
    group: Arc<str>,
    log_cf: Arc<str>,
    db: Arc<Db>,
    syncer: WalSyncer,
    clock: StageClock,
    /// The latest committed id openraft reported, not yet written: it goes into the
    /// next append's batch (module docs).
    committed: Arc<std::sync::Mutex<Option<LogId>>>,
    /// The newest entries, shared with every log reader (module docs).
    cache: Arc<std::sync::Mutex<LogCache>>,
    appends: AppendCounters,
}

/// The largest append batch written on the Raft task's thread (module docs); a
/// larger one (a follower catching up, a burst of big values) goes to the blocking
/// pool, where a write of a few milliseconds holds up nothing else.
pub const INLINE_WRITE_MAX: usize = 256 << 10;

impl RocksLogStore {
    /// The log of `group`, keeping up to `cache_bytes` of its newest entries in memory.
    pub fn new(
        group: &str,
        db: Arc<Db>,
        syncer: WalSyncer,
        clock: StageClock,
        cache_bytes: usize,
    ) -> io::Result<Self> {
        let log_cf = keys::log_cf(group);
        cf(&db, &log_cf)?;
        cf(&db, keys::RAFT_META_CF)?;
        Ok(RocksLogStore {
            group: group.into(),
            log_cf: log_cf.into(),
            db,
            syncer,
            appends: clock.append_counters(),
            clock,
            committed: Arc::default(),
            cache: Arc::new(std::sync::Mutex::new(LogCache::new(cache_bytes))),
        })
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        let meta = cf(&self.db, keys::RAFT_META_CF)?;
        match self.db.get_cf(meta, key).map_err(io::Error::other)? {
            None => Ok(None),
            Some(bytes) => decode(&bytes).map(Some),
        }
    }

    /// Write a metadata record, synced (a vote, a purge point).
    fn put_meta<T: Serialize>(&self, key: &[u8], value: &T) -> io::Result<()> {
        let meta = cf(&self.db, keys::RAFT_META_CF)?;
        self.db
            .put_cf_opt(meta, key, encode(value)?, &synced())
            .map_err(io::Error::other)
    }

    fn pending_committed(&self) -> std::sync::MutexGuard<'_, Option<LogId>> {
        crate::lock(&self.committed)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, LogCache> {
        crate::lock(&self.cache)
    }

    /// The cache of the newest entries, for its expiry timer and the metrics.
    pub fn cache_handle(&self) -> Arc<std::sync::Mutex<LogCache>> {
        self.cache.clone()
    }

    fn edge_entry(&self, mode: IteratorMode<'_>) -> io::Result<Option<Entry>> {
        let log = cf(&self.db, &self.log_cf)?;
        match self.db.iterator_cf(log, mode).next() {
            None => Ok(None),
            Some(item) => {
                let (_, v) = item.map_err(io::Error::other)?;
                decode(&v).map(Some)
            }
        }
    }
}

fn synced() -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    opts
}

fn encode<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    Ok(codec::encode(v))
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> io::Result<T> {
    codec::decode_stored(b, "raft log record")
}

impl RocksLogStore {
    /// The batch of one append: its entries, already encoded, and the committed id
    /// that rides along with it (module docs).
    fn log_batch(
        &self,
        committed: Option<&LogId>,
        records: &[(Vec<u8>, Entry)],
    ) -> io::Result<WriteBatch> {
        let log = cf(&self.db, &self.log_cf)?;
        let mut batch = WriteBatch::default();
        if let Some(c) = committed {
            batch.put_cf(
                cf(&self.db, keys::RAFT_META_CF)?,
                keys::committed_key(&self.group),
                encode(c)?,
            );
        }
        for (bytes, entry) in records {
            batch.put_cf(log, keys::log_key(entry.log_id.index), bytes);
        }
        Ok(batch)
    }

    /// Run `f` on the blocking pool: every RocksDB call may wait for the disk (a write
    /// can stall while memtables flush, a vote is fsync'd), and tokio's workers carry
    /// every group's heartbeats.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&RocksLogStore) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(&me))
            .await
            .map_err(|e| io::Error::other(format!("log storage task failed: {e}")))?
    }

    fn entries_sync(&self, start: u64, end: Option<u64>) -> io::Result<Vec<Entry>> {
        let log = cf(&self.db, &self.log_cf)?;
        let start_key = keys::log_key(start);
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(log, IteratorMode::From(&start_key, Direction::Forward))
        {
            let (k, v) = item.map_err(io::Error::other)?;
            let index = keys::parse_log_key(&k)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad log key"))?;
            if end.is_some_and(|e| index >= e) {
                break;
            }
            out.push(decode(&v)?);
        }
        Ok(out)
    }

    fn log_state_sync(&self) -> io::Result<LogState<TypeConfig>> {
        let last_purged: Option<LogId> = self.get_meta(&keys::purged_key(&self.group))?;
        if let (Some(purged), Some(first)) = (last_purged, self.edge_entry(IteratorMode::Start)?) {
            if first.log_id.index <= purged.index {
                // Left by a purge that was cut short (older versions purged in two
                // steps): those entries are gone as far as openraft is concerned.
                tracing::warn!(group = %self.group, purged = purged.index, first = first.log_id.index, "removing log entries left below the purge point");
                let log = cf(&self.db, &self.log_cf)?;
                let mut batch = WriteBatch::default();
                batch.delete_range_cf(log, keys::log_key(0), keys::log_key(purged.index + 1));
                self.db
                    .write_opt(batch, &synced())
                    .map_err(io::Error::other)?;
            }
        }
        let last = self.edge_entry(IteratorMode::End)?.map(|e| e.log_id);
        Ok(LogState {
            last_log_id: last.max(last_purged),
            last_purged_log_id: last_purged,
        })
    }
}

impl RocksLogStore {
    /// Disaster recovery (`--force-new-cluster`): make `node_id` at `addr` the only
    /// voter of this group, keeping every entry. Appends one membership entry after the
    /// last one, under a term above every term this log and vote have seen, and saves
    /// the matching vote; both synced in one batch. On start openraft takes the newest
    /// membership in the log as the effective one, so the node elects itself with a
    /// quorum of one and commits the entry (and everything before it) as its leader.
    /// Returns the new entry's index.
    pub fn force_single_member(&self, node_id: NodeId, addr: &str) -> io::Result<u64> {
        let state = self.log_state_sync()?;
        let vote: Option<Vote> = self.get_meta(&keys::vote_key(&self.group))?;
        let last_term = state.last_log_id.map(|l| l.leader_id.term).unwrap_or(0);
        let vote_term = vote.map(|v| v.leader_id.term).unwrap_or(0);
        let term = last_term.max(vote_term) + 1;
        let index = state.last_log_id.map(|l| l.index + 1).unwrap_or(1);
        let membership = openraft::Membership::new(
            vec![BTreeSet::from([node_id])],
            BTreeMap::from([(node_id, openraft::BasicNode::new(addr))]),
        )
        .map_err(|e| io::Error::other(format!("single-member membership: {e}")))?;
        let entry = Entry {
            log_id: LogId::new(
                <TypeConfig as openraft::RaftTypeConfig>::LeaderId::new_committed(term, node_id),
                index,
            ),
            payload: openraft::EntryPayload::Membership(membership),
        };
        let vote = Vote::new_committed(term, node_id);
        let meta = cf(&self.db, keys::RAFT_META_CF)?;
        let log = cf(&self.db, &self.log_cf)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(log, keys::log_key(index), encode(&entry)?);
        batch.put_cf(meta, keys::vote_key(&self.group), encode(&vote)?);
        self.db
            .write_opt(batch, &synced())
            .map_err(io::Error::other)?;
        Ok(index)
    }
}

impl RaftLogReader<TypeConfig> for RocksLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(x) => Some(x.saturating_add(1)),
            Bound::Excluded(x) => Some(*x),
            Bound::Unbounded => None,
        };
        if let Some(entries) = self.cache().get(start, end) {
            return Ok(entries);
        }
        self.blocking(move |s| s.entries_sync(start, end)).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.blocking(|s| s.get_meta(&keys::vote_key(&s.group)))
            .await
    }
}

impl RaftLogStorage<TypeConfig> for RocksLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        self.blocking(|s| s.log_state_sync()).await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let vote = *vote;
        self.blocking(move |s| s.put_meta(&keys::vote_key(&s.group), &vote))
            .await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Kept until the next append writes it (module docs): the committed id only
        // speeds up recovery, so a stored value that lags is harmless (leader restore
        // is off, see `raft::node`), and writing it on its own cost a WAL write and a
        // hop to the blocking pool on every commit.
        if committed.is_some() {
            *self.pending_committed() = committed;
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        if let Some(c) = *self.pending_committed() {
            return Ok(Some(c));
        }
        self.blocking(|s| s.get_meta(&keys::committed_key(&s.group)))
            .await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let committed = self.pending_committed().take();
        let records = entries
            .into_iter()
            .map(|entry| Ok((encode(&entry)?, entry)))
            .collect::<io::Result<Vec<_>>>()?;
        // Written (readable) when this returns; durable once the syncer has fsync'd the
        // WAL, which is when openraft is told.
        let batch = self.log_batch(committed.as_ref(), &records)?;
        let to_pool = if batch.size_in_bytes() > INLINE_WRITE_MAX {
            self.appends.large.inc();
            Some(batch)
        } else if write_unless_stalled(&self.db, batch)? {
            self.appends.inline.inc();
            None
        } else {
            // Refused whole, nothing written: built again, it waits out the stall on
            // the pool.
            self.appends.stalled.inc();
            Some(self.log_batch(committed.as_ref(), &records)?)
        };
        if let Some(batch) = to_pool {
            self.blocking(move |s| s.db.write(batch).map_err(io::Error::other))
                .await?;
        }
        if let (Some((_, first)), Some((_, last))) = (records.first(), records.last()) {
            self.clock.appended(first.log_id.index, last.log_id.index);
        }
        let now = std::time::Instant::now();
        let mut cache = self.cache();
        for (bytes, entry) in records {
            cache.appended(entry, bytes.len(), now);
        }
        drop(cache);
        self.syncer
            .after_sync(move |res| callback.io_completed(res));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map(|l| l.index + 1).unwrap_or(0);
        // Out of the cache first: a reader must not get an entry the log is losing.
        self.cache().truncated(from);
        self.blocking(move |s| {
            let log = cf(&s.db, &s.log_cf)?;
            let mut batch = WriteBatch::default();
            batch.delete_range_cf(log, keys::log_key(from), keys::log_key(u64::MAX));
            batch.delete_cf(log, keys::log_key(u64::MAX));
            // Synced: a truncated conflicting suffix must not reappear after a crash,
            // where it could be mistaken for entries of the current leader.
            s.db.write_opt(batch, &synced()).map_err(io::Error::other)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // Make every applied state-machine write durable before dropping the log that
        // could replay it.
        self.syncer.sync().await?;
        self.cache().purged(log_id.index);
        self.blocking(move |s| {
            let meta = cf(&s.db, keys::RAFT_META_CF)?;
            let log = cf(&s.db, &s.log_cf)?;
            let mut batch = WriteBatch::default();
            batch.put_cf(meta, keys::purged_key(&s.group), encode(&log_id)?);
            batch.delete_range_cf(log, keys::log_key(0), keys::log_key(log_id.index + 1));
            s.db.write_opt(batch, &synced()).map_err(io::Error::other)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::Command;
    use openraft::type_config::TypeConfigExt;

    /// A log store of group `g` on a new RocksDB in `dir`.
    fn open_store(dir: &std::path::Path) -> (Arc<Db>, RocksLogStore) {
        let db = crate::raft::rocks::open(dir, &["g"]).unwrap();
        let syncer = WalSyncer::start(db.clone()).unwrap();
        let clock = StageClock::new("g", Arc::default());
        let store = RocksLogStore::new("g", db.clone(), syncer, clock, 1 << 20).unwrap();
        (db, store)
    }

    fn entry(index: u64) -> Entry {
        entry_of_term(1, index)
    }

    fn entry_of_term(term: u64, index: u64) -> Entry {
        Entry {
            log_id: openraft::testing::log_id::<TypeConfig>(term, 1, index),
            payload: openraft::EntryPayload::Normal(Command::new("put", "k", vec![])),
        }
    }

    /// What a power cut during an older version's two-step purge could leave: the new
    /// purge point on disk, the deletion of the entries lost. Here the purge point is
    /// beyond the last entry (a follower that installed a snapshot far ahead of its log).
    #[tokio::test]
    async fn a_store_cut_off_mid_purge_reports_a_consistent_state() {
        let td = tempfile::tempdir().unwrap();
        let (db, mut store) = open_store(td.path());
        let log = cf(&db, &keys::log_cf("g")).unwrap();
        for i in 1..=50 {
            db.put_cf(log, keys::log_key(i), encode(&entry(i)).unwrap())
                .unwrap();
        }
        let purged = openraft::testing::log_id::<TypeConfig>(2, 1, 1000);
        store.put_meta(&keys::purged_key("g"), &purged).unwrap();

        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(purged));
        assert_eq!(
            state.last_log_id,
            Some(purged),
            "never below the purge point"
        );
        assert!(
            store.try_get_log_entries(0..2000).await.unwrap().is_empty(),
            "entries below the purge point are removed"
        );

        // Entries above the purge point stay, and the last one is reported.
        for i in 1001..=1003 {
            db.put_cf(log, keys::log_key(i), encode(&entry_of_term(2, i)).unwrap())
                .unwrap();
        }
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.map(|l| l.index), Some(1003));
    }

    /// Polls `done` every 10 ms until it holds, failing after 20 s.
    async fn wait_for(what: &str, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_small_append_is_written_inline_and_a_large_one_on_the_pool() {
        let td = tempfile::tempdir().unwrap();
        let (_db, mut store) = open_store(td.path());
        let (tx, rx) = TypeConfig::oneshot();
        store
            .append([entry(1), entry(2)], IOFlushed::signal(tx))
            .await
            .unwrap();
        rx.await.unwrap().unwrap();
        assert_eq!(store.appends.inline.get(), 1);

        let big = Entry {
            log_id: openraft::testing::log_id::<TypeConfig>(1, 1, 3),
            payload: openraft::EntryPayload::Normal(Command::new(
                "put",
                "k",
                vec![7; INLINE_WRITE_MAX + 1],
            )),
        };
        let (tx, rx) = TypeConfig::oneshot();
        store.append([big], IOFlushed::signal(tx)).await.unwrap();
        rx.await.unwrap().unwrap();
        assert_eq!(store.appends.large.get(), 1);
        assert_eq!(store.appends.stalled.get(), 0);
        let read = store.try_get_log_entries(1..4).await.unwrap();
        assert_eq!(
            read.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            [1, 2, 3]
        );
    }

    /// During a write stall (here: too many level-0 files in another column family)
    /// RocksDB refuses the inline write; the append waits the stall out on the blocking
    /// pool, writes nothing meanwhile, and completes once the stall ends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_append_during_a_write_stall_waits_on_the_pool_and_completes() {
        let td = tempfile::tempdir().unwrap();
        let (db, store) = open_store(td.path());
        crate::raft::rocks::stall::begin(&db);

        let probe = store.clone();
        let (tx, rx) = TypeConfig::oneshot();
        let appending = tokio::spawn(async move {
            let mut store = store;
            store
                .append([entry(1), entry(2)], IOFlushed::signal(tx))
                .await
        });
        wait_for("the inline write to be refused", || {
            probe.appends.stalled.get() == 1
        })
        .await;
        assert_eq!(probe.appends.inline.get(), 0);
        assert!(
            !appending.is_finished(),
            "the append waits for the stall to end"
        );
        let log = cf(&db, &keys::log_cf("g")).unwrap();
        assert!(
            db.get_cf(log, keys::log_key(1)).unwrap().is_none(),
            "nothing is written while the stall lasts"
        );

        crate::raft::rocks::stall::end(&db);
        appending.await.unwrap().unwrap();
        rx.await.unwrap().unwrap();
        let mut reader = probe.clone();
        let read = reader.try_get_log_entries(1..3).await.unwrap();
        assert_eq!(
            read.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(probe.appends.stalled.get(), 1);
    }

    #[tokio::test]
    async fn purge_moves_the_purge_point_and_deletes_in_one_step() {
        let td = tempfile::tempdir().unwrap();
        let (db, mut store) = open_store(td.path());
        let log = cf(&db, &keys::log_cf("g")).unwrap();
        for i in 1..=10 {
            db.put_cf(log, keys::log_key(i), encode(&entry(i)).unwrap())
                .unwrap();
        }
        store.purge(entry(6).log_id).await.unwrap();
        let left: Vec<u64> = store
            .try_get_log_entries(0..100)
            .await
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect();
        assert_eq!(left, vec![7, 8, 9, 10]);
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(entry(6).log_id));
        assert_eq!(state.last_log_id, Some(entry(10).log_id));
    }
}
