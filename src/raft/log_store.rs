//! RocksDB-backed Raft log and vote storage for one group.
//!
//! Durability rules (never relaxed):
//! - `append` writes the entries, then returns; openraft is told the entries are
//!   flushed only from the [`WalSyncer`] callback, after the WAL fsync.
//! - `save_vote` writes with `sync = true` before returning.
//! - `purge` first syncs the WAL: state machines write without sync (their entries are
//!   in the durable log, so a lost tail is re-applied), and purging removes that
//!   safety net, so everything applied so far must be on disk first.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::raft::db::{cf, WalSyncer};
use crate::raft::keys;
use crate::raft::types::{Entry, LogId, TypeConfig, Vote};

#[derive(Clone)]
pub struct RocksLogStore {
    group: Arc<str>,
    log_cf: Arc<str>,
    db: Arc<DB>,
    syncer: WalSyncer,
}

impl RocksLogStore {
    pub fn new(group: &str, db: Arc<DB>, syncer: WalSyncer) -> io::Result<Self> {
        let log_cf = keys::log_cf(group);
        cf(&db, &log_cf)?;
        cf(&db, keys::RAFT_META_CF)?;
        Ok(RocksLogStore {
            group: group.into(),
            log_cf: log_cf.into(),
            db,
            syncer,
        })
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        let meta = cf(&self.db, keys::RAFT_META_CF)?;
        match self.db.get_cf(meta, key).map_err(io::Error::other)? {
            None => Ok(None),
            Some(bytes) => decode(&bytes).map(Some),
        }
    }

    fn put_meta<T: Serialize>(&self, key: &[u8], value: &T, sync: bool) -> io::Result<()> {
        let meta = cf(&self.db, keys::RAFT_META_CF)?;
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        self.db
            .put_cf_opt(meta, key, encode(value)?, &opts)
            .map_err(io::Error::other)
    }

    fn last_entry(&self) -> io::Result<Option<Entry>> {
        let log = cf(&self.db, &self.log_cf)?;
        match self.db.iterator_cf(log, IteratorMode::End).next() {
            None => Ok(None),
            Some(item) => {
                let (_, v) = item.map_err(io::Error::other)?;
                decode(&v).map(Some)
            }
        }
    }
}

fn encode<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    bincode::serialize(v).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> io::Result<T> {
    bincode::deserialize(b).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
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
            if !range.contains(&index) {
                break;
            }
            out.push(decode(&v)?);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.get_meta(&keys::vote_key(&self.group))
    }
}

impl RaftLogStorage<TypeConfig> for RocksLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged: Option<LogId> = self.get_meta(&keys::purged_key(&self.group))?;
        let last = self.last_entry()?.map(|e| e.log_id);
        Ok(LogState {
            last_log_id: last.or(last_purged),
            last_purged_log_id: last_purged,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.put_meta(&keys::vote_key(&self.group), vote, true)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not synced: the committed id only speeds up recovery; losing it is harmless.
        match committed {
            Some(c) => self.put_meta(&keys::committed_key(&self.group), &c, false),
            None => Ok(()),
        }
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        self.get_meta(&keys::committed_key(&self.group))
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
        let log = cf(&self.db, &self.log_cf)?;
        let mut batch = WriteBatch::default();
        for entry in entries {
            batch.put_cf(log, keys::log_key(entry.log_id.index), encode(&entry)?);
        }
        // Written (readable) now; durable once the syncer has fsync'd the WAL.
        self.db.write(batch).map_err(io::Error::other)?;
        self.syncer
            .after_sync(move |res| callback.io_completed(res));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map(|l| l.index + 1).unwrap_or(0);
        let log = cf(&self.db, &self.log_cf)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(log, keys::log_key(from), keys::log_key(u64::MAX));
        batch.delete_cf(log, keys::log_key(u64::MAX));
        // Synced: a truncated conflicting suffix must not reappear after a crash, where
        // it could be mistaken for entries of the current leader.
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts).map_err(io::Error::other)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // Make every applied state-machine write durable before dropping the log that
        // could replay it.
        self.syncer.sync().await?;
        self.put_meta(&keys::purged_key(&self.group), &log_id, true)?;
        let log = cf(&self.db, &self.log_cf)?;
        self.db
            .delete_range_cf(log, keys::log_key(0), keys::log_key(log_id.index + 1))
            .map_err(io::Error::other)
    }
}
