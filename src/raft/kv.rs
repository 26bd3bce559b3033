//! RocksDB-backed state machines: the easy way to write a group.
//!
//! A [`Processor`] decides what a command does, against a [`KvTxn`] over the group's
//! column family; [`RocksStateMachine`] does the rest: it applies a whole batch of
//! committed entries into one RocksDB `WriteBatch` together with the new applied
//! position (so data and position can never disagree after a crash), and streams the
//! column family out and back in for snapshots.
//!
//! Each command runs against its own staging layer: if the processor rejects it
//! (a deterministic error), the staged writes are discarded, so a rejected command
//! leaves no trace, identically on every replica. Reads inside a command see the
//! writes of earlier commands of the same batch.
//!
//! State-machine writes are not fsync'd: the entries they come from are already
//! durable in the log, and the log store syncs the WAL before it purges anything (see
//! `raft::log_store`). Restores are synced.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::ops::Bound;
use std::sync::Arc;

use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch, WriteOptions, DB};

use crate::error::Error;
use crate::raft::db::cf;
use crate::raft::group::{ApplyItem, SnapshotSource, StateMachine};
use crate::raft::keys;
use crate::raft::types::{AppliedState, Command, CommandResult};

/// Why a command was not applied.
#[derive(Debug)]
pub enum ApplyError {
    /// A deterministic rejection: returned to the client, nothing written.
    Rejected(Error),
    /// A local I/O failure: the group stops.
    Fatal(io::Error),
}

impl From<Error> for ApplyError {
    fn from(e: Error) -> Self {
        ApplyError::Rejected(e)
    }
}

impl From<io::Error> for ApplyError {
    fn from(e: io::Error) -> Self {
        ApplyError::Fatal(e)
    }
}

/// The group logic of a RocksDB-backed group.
pub trait Processor: Send + Sync + 'static {
    /// What a command announces to watchers once it is durable in the state machine
    /// (see [`KvTxn::emit`]); `()` for groups without change streams.
    type Event: Send + 'static;

    /// Apply one command. Must be deterministic.
    fn apply(
        &self,
        txn: &mut KvTxn<'_, Self::Event>,
        index: u64,
        cmd: &Command,
    ) -> Result<Vec<u8>, ApplyError>;

    /// Answer a read from the applied state.
    fn query(&self, view: &KvView<'_>, query: &[u8]) -> Result<Vec<u8>, Error>;

    /// Called after a batch is written, with the events its accepted commands emitted,
    /// in log order. Rejected commands emit nothing.
    fn on_applied(&self, events: Vec<Self::Event>) {
        let _ = events;
    }

    /// Called after the whole state was replaced from a snapshot: anything derived from
    /// earlier events (watchers' views) must be recomputed.
    fn on_restored(&self) {}
}

type Overlay = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Read-only access to a group's applied data, as of one point in time: every read
/// through a view sees the same RocksDB snapshot, so a query that reads several keys
/// (a service and its instances, a listing in chunks) never sees half of a batch that
/// was applied while it ran.
pub struct KvView<'a> {
    db: &'a DB,
    cf: &'a rocksdb::ColumnFamily,
    snapshot: rocksdb::Snapshot<'a>,
}

impl<'a> KvView<'a> {
    pub fn new(db: &'a DB, cf: &'a rocksdb::ColumnFamily) -> Self {
        KvView {
            db,
            cf,
            snapshot: db.snapshot(),
        }
    }

    pub fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        self.snapshot
            .get_cf(self.cf, keys::sm_data_key(key))
            .map_err(io::Error::other)
    }

    /// Keys starting with `prefix`, in order, strictly after `start_after` if given,
    /// at most `limit` of them.
    pub fn scan(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        scan_db(self.db, self.cf, &self.snapshot, prefix, start_after, limit)
    }

    /// Visit every key starting with `prefix`, in order, reading in bounded chunks so a
    /// large prefix never sits in memory at once.
    pub fn for_each(
        &self,
        prefix: &[u8],
        mut visit: impl FnMut(Vec<u8>, Vec<u8>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let chunk = self.scan(prefix, after.as_deref(), 1024)?;
            let Some((last, _)) = chunk.last() else {
                return Ok(());
            };
            after = Some(last.clone());
            for (k, v) in chunk {
                visit(k, v)?;
            }
        }
    }
}

fn scan_db(
    db: &DB,
    cf: &rocksdb::ColumnFamily,
    snapshot: &rocksdb::Snapshot<'_>,
    prefix: &[u8],
    start_after: Option<&[u8]>,
    limit: usize,
) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let start = keys::sm_data_key(prefix);
    let mut opts = ReadOptions::default();
    opts.set_snapshot(snapshot);
    if let Some(end) = keys::prefix_end(&start) {
        opts.set_iterate_upper_bound(end);
    }
    let from = match start_after {
        Some(after) => {
            let mut k = keys::sm_data_key(after);
            k.push(0);
            k.max(start.clone())
        }
        None => start.clone(),
    };
    let mut out = Vec::new();
    for item in db.iterator_cf_opt(cf, opts, IteratorMode::From(&from, Direction::Forward)) {
        if out.len() >= limit {
            break;
        }
        let (k, v) = item.map_err(io::Error::other)?;
        if let Some(user) = keys::sm_user_key(&k) {
            out.push((user.to_vec(), v.to_vec()));
        }
    }
    Ok(out)
}

/// A command's view of the group's data: the applied state, plus the writes of earlier
/// commands in the same batch, plus its own staged writes.
pub struct KvTxn<'a, E = ()> {
    db: &'a DB,
    cf: &'a rocksdb::ColumnFamily,
    batch: &'a Overlay,
    staged: Overlay,
    events: Vec<E>,
}

impl<E> KvTxn<'_, E> {
    /// Announce a change; delivered by [`Processor::on_applied`] only if this command
    /// is accepted.
    pub fn emit(&mut self, event: E) {
        self.events.push(event);
    }

    pub fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        if let Some(v) = self.staged.get(key) {
            return Ok(v.clone());
        }
        if let Some(v) = self.batch.get(key) {
            return Ok(v.clone());
        }
        self.db
            .get_cf(self.cf, keys::sm_data_key(key))
            .map_err(io::Error::other)
    }

    pub fn put(&mut self, key: &[u8], value: Vec<u8>) {
        self.staged.insert(key.to_vec(), Some(value));
    }

    pub fn delete(&mut self, key: &[u8]) {
        self.staged.insert(key.to_vec(), None);
    }

    /// All live keys starting with `prefix`, in order, with pending writes applied.
    /// Only keys are read: on the apply path of every write (history pruning), copying
    /// each value out of RocksDB was a tenth of a leader's CPU under load.
    pub fn scan_keys(&self, prefix: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        let start = keys::sm_data_key(prefix);
        let mut opts = ReadOptions::default();
        if let Some(end) = keys::prefix_end(&start) {
            opts.set_iterate_upper_bound(end);
        }
        let mut it = self.db.raw_iterator_cf_opt(self.cf, opts);
        it.seek(&start);
        let mut live: BTreeMap<Vec<u8>, bool> = BTreeMap::new();
        while let Some(k) = it.key() {
            if let Some(user) = keys::sm_user_key(k) {
                live.insert(user.to_vec(), true);
            }
            it.next();
        }
        it.status().map_err(io::Error::other)?;
        let end = keys::prefix_end(prefix);
        for layer in [self.batch, &self.staged] {
            let upper = match &end {
                Some(e) => Bound::Excluded(e.clone()),
                None => Bound::Unbounded,
            };
            for (k, v) in layer.range((Bound::Included(prefix.to_vec()), upper)) {
                live.insert(k.clone(), v.is_some());
            }
        }
        Ok(live
            .into_iter()
            .filter_map(|(k, alive)| alive.then_some(k))
            .collect())
    }
}

/// A [`StateMachine`] that stores a [`Processor`]'s data in the group's column family.
pub struct RocksStateMachine<P> {
    db: Arc<DB>,
    cf_name: String,
    processor: P,
}

impl<P: Processor> RocksStateMachine<P> {
    pub fn new(group: &str, db: Arc<DB>, processor: P) -> io::Result<Self> {
        let cf_name = keys::sm_cf(group);
        cf(&db, &cf_name)?;
        Ok(RocksStateMachine {
            db,
            cf_name,
            processor,
        })
    }

    fn cf(&self) -> io::Result<&rocksdb::ColumnFamily> {
        cf(&self.db, &self.cf_name)
    }
}

impl<P: Processor> StateMachine for RocksStateMachine<P> {
    fn applied_state(&self) -> io::Result<AppliedState> {
        match self
            .db
            .get_cf(self.cf()?, keys::SM_APPLIED_KEY)
            .map_err(io::Error::other)?
        {
            None => Ok(AppliedState::default()),
            Some(b) => AppliedState::decode(&b),
        }
    }

    fn apply(
        &self,
        items: &[ApplyItem<'_>],
        applied: &AppliedState,
    ) -> io::Result<Vec<CommandResult>> {
        let cf = self.cf()?;
        let mut batch_overlay = Overlay::new();
        let mut events = Vec::new();
        let mut results = Vec::with_capacity(items.len());
        for item in items {
            let Some(cmd) = item.command else { continue };
            let mut txn = KvTxn {
                db: &self.db,
                cf,
                batch: &batch_overlay,
                staged: Overlay::new(),
                events: Vec::new(),
            };
            match self.processor.apply(&mut txn, item.index, cmd) {
                Ok(resp) => {
                    let KvTxn {
                        staged,
                        events: emitted,
                        ..
                    } = txn;
                    batch_overlay.extend(staged);
                    events.extend(emitted);
                    results.push(CommandResult(Ok(resp)));
                }
                Err(ApplyError::Rejected(e)) => results.push(CommandResult(Err(e))),
                Err(ApplyError::Fatal(e)) => return Err(e),
            }
        }
        let mut wb = WriteBatch::default();
        for (k, v) in batch_overlay {
            let key = keys::sm_data_key(&k);
            match v {
                Some(v) => wb.put_cf(cf, key, v),
                None => wb.delete_cf(cf, key),
            }
        }
        wb.put_cf(cf, keys::SM_APPLIED_KEY, applied.encode());
        self.db.write(wb).map_err(io::Error::other)?;
        if !events.is_empty() {
            self.processor.on_applied(events);
        }
        Ok(results)
    }

    fn query(&self, query: &[u8]) -> Result<Vec<u8>, Error> {
        let view = KvView::new(&self.db, self.cf()?);
        self.processor.query(&view, query)
    }

    fn begin_snapshot(&self) -> io::Result<Box<dyn SnapshotSource>> {
        Ok(Box::new(RocksSnapshotSource::capture(
            self.db.clone(),
            self.cf_name.clone(),
        )?))
    }

    fn restore(&self, data: &mut dyn Read, applied: &AppliedState) -> io::Result<()> {
        let cf = self.cf()?;
        // One batch: the old state is replaced entirely or not at all.
        let mut wb = WriteBatch::default();
        let start = [keys::SM_DATA_PREFIX];
        let end = keys::prefix_end(&start).expect("prefix below 0xff");
        wb.delete_range_cf(cf, start.as_slice(), end.as_slice());
        while let Some(key) = read_frame(data)? {
            let value = read_frame(data)?.ok_or_else(|| {
                io::Error::new(io::ErrorKind::UnexpectedEof, "snapshot ends inside a pair")
            })?;
            if key.first() != Some(&keys::SM_DATA_PREFIX) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "snapshot contains a non-data key",
                ));
            }
            wb.put_cf(cf, key, value);
        }
        wb.put_cf(cf, keys::SM_APPLIED_KEY, applied.encode());
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(wb, &opts).map_err(io::Error::other)?;
        self.processor.on_restored();
        Ok(())
    }
}

/// Snapshot data format of RocksDB-backed groups: a sequence of `u32-le length | bytes`
/// frames, alternating key and value, keys in order.
struct RocksSnapshotSource {
    db: Arc<DB>,
    cf_name: String,
    applied: AppliedState,
    // A RocksDB snapshot borrows the DB; keep the sequence-pinned view by storing the
    // raw snapshot through an owned handle.
    snapshot: OwnedSnapshot,
}

/// A RocksDB snapshot that owns its `Arc<DB>`.
struct OwnedSnapshot {
    // Safety: `snap` borrows from `*db`, which lives in the same struct behind an Arc
    // that is dropped after `snap` (fields drop in declaration order).
    snap: Option<rocksdb::Snapshot<'static>>,
    _db: Arc<DB>,
}

impl OwnedSnapshot {
    fn new(db: Arc<DB>) -> Self {
        let snap = db.snapshot();
        // SAFETY: the DB outlives the snapshot: `_db` keeps it alive and is dropped
        // after `snap` (see Drop below).
        let snap: rocksdb::Snapshot<'static> = unsafe { std::mem::transmute(snap) };
        OwnedSnapshot {
            snap: Some(snap),
            _db: db,
        }
    }
}

impl Drop for OwnedSnapshot {
    fn drop(&mut self) {
        self.snap.take();
    }
}

// SAFETY: a RocksDB snapshot is an immutable sequence number; reading through it from
// another thread is allowed by RocksDB.
unsafe impl Send for OwnedSnapshot {}

impl RocksSnapshotSource {
    fn capture(db: Arc<DB>, cf_name: String) -> io::Result<Self> {
        let snapshot = OwnedSnapshot::new(db.clone());
        let snap = snapshot.snap.as_ref().expect("present until drop");
        let applied = match snap
            .get_cf(cf(&db, &cf_name)?, keys::SM_APPLIED_KEY)
            .map_err(io::Error::other)?
        {
            None => AppliedState::default(),
            Some(b) => AppliedState::decode(&b)?,
        };
        Ok(RocksSnapshotSource {
            db,
            cf_name,
            applied,
            snapshot,
        })
    }
}

impl SnapshotSource for RocksSnapshotSource {
    fn applied(&self) -> &AppliedState {
        &self.applied
    }

    fn write_to(&mut self, out: &mut dyn Write) -> io::Result<()> {
        let cf = cf(&self.db, &self.cf_name)?;
        let snap = self.snapshot.snap.as_ref().expect("present until drop");
        let start = [keys::SM_DATA_PREFIX];
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(keys::prefix_end(&start).expect("prefix below 0xff"));
        opts.fill_cache(false);
        for item in snap.iterator_cf_opt(cf, opts, IteratorMode::From(&start, Direction::Forward)) {
            let (k, v) = item.map_err(io::Error::other)?;
            write_frame(out, &k)?;
            write_frame(out, &v)?;
        }
        Ok(())
    }
}

fn write_frame(out: &mut dyn Write, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "value over 4 GiB"))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(bytes)
}

/// `Ok(None)` at a clean end of input.
fn read_frame(r: &mut dyn Read) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len[got..])?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "truncated frame length",
                ))
            };
        }
        got += n;
    }
    let mut buf = vec![0u8; u32::from_le_bytes(len) as usize];
    r.read_exact(&mut buf)?;
    Ok(Some(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_reads_one_point_in_time() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::raft::db::open(dir.path(), &["g"]).unwrap();
        let cf = crate::raft::db::cf(&db, &keys::sm_cf("g")).unwrap();
        let put = |k: &str, v: &str| {
            db.put_cf(cf, keys::sm_data_key(k.as_bytes()), v.as_bytes())
                .unwrap()
        };
        put("svc", "v1");
        put("svc/a", "1");
        let view = KvView::new(&db, cf);
        // A batch applied while the view is in use: invisible to it.
        put("svc", "v2");
        put("svc/b", "2");
        db.delete_cf(cf, keys::sm_data_key(b"svc/a")).unwrap();
        assert_eq!(view.get(b"svc").unwrap().as_deref(), Some(&b"v1"[..]));
        let seen: Vec<Vec<u8>> = view
            .scan(b"svc/", None, 10)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(seen, vec![b"svc/a".to_vec()]);
        // A new view sees the batch.
        let now = KvView::new(&db, cf);
        assert_eq!(now.get(b"svc").unwrap().as_deref(), Some(&b"v2"[..]));
        assert_eq!(now.scan(b"svc/", None, 10).unwrap().len(), 1);
    }
}
