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
//! Keys the apply path reads are remembered with the value it then wrote
//! ([`HotKeys`], `--state-cache-mib`), so the next command on the same key does not
//! search RocksDB for it.
//!
//! A small batch is first tried in memory on the Raft task's own thread
//! ([`StateMachine::apply_in_memory`]): reads that only memtables, the block cache and
//! [`HotKeys`] can answer, at most [`IN_MEMORY_APPLY_KEYS`] of them, and a write that
//! RocksDB must take without waiting for a stall. Anything else (a read that would go
//! to the disk, a long scan, a stall) abandons the attempt before anything is written
//! or announced, and the batch is applied again on the blocking pool. The same
//! commands on the same state give the same result either way; only the thread
//! differs.
//!
//! State-machine writes are not fsync'd: the entries they come from are already
//! durable in the log, and the log store syncs the WAL before it purges anything (see
//! `raft::log_store`).
//!
//! A restore from a snapshot streams the snapshot into the column family in bounded
//! batches ([`RESTORE_BATCH_BYTES`]), so memory stays flat whatever the state's size.
//! It is made crash-safe by a marker: `m/restoring` is written (synced) before the old
//! data is deleted and removed in the final synced batch that also records the new
//! applied position. A node that finds the marker when it opens the group knows the
//! data is half old, half new: it clears the data and reports nothing applied, so
//! openraft restores the snapshot again (it is already the group's current snapshot
//! file, see `raft::state_machine`) or, failing that, refuses to start; it never serves
//! the mixture. Queries and snapshot builds wait while a restore runs.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::ops::Bound;
use std::sync::{Arc, RwLock};

use rocksdb::{Direction, IteratorMode, ReadOptions, ReadTier, WriteBatch, WriteOptions, DB};

use crate::error::Error;
use crate::raft::group::{ApplyItem, DigestBuilder, SnapshotSource, StateDigest, StateMachine};
use crate::raft::hot_keys::{HotKeys, KeySet};
use crate::raft::keys;
use crate::raft::rocks::{cf, write_unless_stalled, Db};
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

    /// Apply one command. Must be deterministic, and do nothing but through `txn`: a
    /// batch tried in memory may be abandoned and applied again (module docs).
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

/// Most entries in a batch [`StateMachine::apply_in_memory`] tries: it runs on the
/// Raft task's thread, so its work is kept to well under a millisecond.
const IN_MEMORY_APPLY_ITEMS: usize = 64;
/// Most bytes of command payload in a batch tried in memory.
const IN_MEMORY_APPLY_BYTES: usize = 256 << 10;
/// Most keys a batch tried in memory may read (a point read or one step of a scan is
/// one; a publish reads its item and its history index).
const IN_MEMORY_APPLY_KEYS: usize = 1024;

/// Most keys a query tried in memory on an async worker may read (a point read is one
/// or two; a listing page of up to this many services or items still qualifies).
const IN_MEMORY_QUERY_KEYS: usize = 256;

type Overlay = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Read-only access to a group's applied data, as of one point in time: every read
/// through a view sees the same RocksDB snapshot, so a query that reads several keys
/// (a service and its instances, a listing in chunks) never sees half of a batch that
/// was applied while it ran.
pub struct KvView<'a> {
    db: &'a DB,
    cf: &'a rocksdb::ColumnFamily,
    snapshot: rocksdb::Snapshot<'a>,
    /// Set for a view that may only read memory (see [`KvView::in_memory`]).
    in_memory: Option<InMemory>,
}

/// The bounds of an in-memory view: what it may still read, and whether it has had to
/// refuse a read.
struct InMemory {
    /// Keys it may still read (a point read or one step of a scan is one).
    left: Cell<usize>,
    /// A read needed the disk, or the budget ran out: the query's answer is void.
    missed: Cell<bool>,
}

impl InMemory {
    fn new(keys: usize) -> Self {
        InMemory {
            left: Cell::new(keys),
            missed: Cell::new(false),
        }
    }

    /// Refuse a read: the attempt's answer is void.
    fn refuse(&self) -> io::Error {
        self.missed.set(true);
        io::Error::new(io::ErrorKind::WouldBlock, "not in memory")
    }
}

/// Account for reading one key; fails when an in-memory budget is spent.
fn step(in_memory: Option<&InMemory>) -> io::Result<()> {
    match in_memory {
        Some(m) if m.left.get() == 0 => Err(m.refuse()),
        Some(m) => {
            m.left.set(m.left.get() - 1);
            Ok(())
        }
        None => Ok(()),
    }
}

/// Read options that, in memory, forbid the disk.
fn read_options(in_memory: Option<&InMemory>) -> ReadOptions {
    let mut opts = ReadOptions::default();
    if in_memory.is_some() {
        opts.set_read_tier(ReadTier::BlockCache);
    }
    opts
}

/// A RocksDB result, with "incomplete" (the data is not in memory) marked as missed.
fn checked<T>(in_memory: Option<&InMemory>, r: Result<T, rocksdb::Error>) -> io::Result<T> {
    r.map_err(|e| match (e.kind(), in_memory) {
        (rocksdb::ErrorKind::Incomplete, Some(m)) => m.refuse(),
        _ => io::Error::other(e),
    })
}

impl<'a> KvView<'a> {
    pub fn new(db: &'a DB, cf: &'a rocksdb::ColumnFamily) -> Self {
        KvView {
            db,
            cf,
            snapshot: db.snapshot(),
            in_memory: None,
        }
    }

    /// A view that reads only memtables and the block cache, and at most `keys` keys.
    /// A read that would need more fails, and [`KvView::missed`] says so: the query is
    /// then run again on a view that may read the disk. This lets a small query whose
    /// data is in memory (nearly every point read) run on the thread that received it,
    /// without a trip through the blocking pool, while a query that would wait for the
    /// disk or run long still never holds an async worker.
    pub fn in_memory(db: &'a DB, cf: &'a rocksdb::ColumnFamily, keys: usize) -> Self {
        KvView {
            in_memory: Some(InMemory::new(keys)),
            ..KvView::new(db, cf)
        }
    }

    /// Whether an in-memory view had to refuse a read (the query's answer is void).
    pub fn missed(&self) -> bool {
        self.in_memory.as_ref().is_some_and(|m| m.missed.get())
    }

    fn get_raw(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        step(self.in_memory.as_ref())?;
        let r = self
            .snapshot
            .get_cf_opt(self.cf, key, read_options(self.in_memory.as_ref()));
        checked(self.in_memory.as_ref(), r)
    }

    pub fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        self.get_raw(&keys::sm_data_key(key))
    }

    /// The log index this view's data reflects (0: nothing applied).
    pub fn applied_index(&self) -> io::Result<u64> {
        Ok(match self.get_raw(keys::SM_APPLIED_KEY)? {
            None => 0,
            Some(b) => AppliedState::decode(&b)?
                .last_applied
                .map(|l| l.index)
                .unwrap_or(0),
        })
    }

    /// Keys starting with `prefix`, in order, strictly after `start_after` if given,
    /// at most `limit` of them.
    pub fn scan(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let start = keys::sm_data_key(prefix);
        let mut opts = read_options(self.in_memory.as_ref());
        opts.set_snapshot(&self.snapshot);
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
        let mut items =
            self.db
                .iterator_cf_opt(self.cf, opts, IteratorMode::From(&from, Direction::Forward));
        while out.len() < limit {
            step(self.in_memory.as_ref())?;
            let Some(item) = items.next() else { break };
            let (k, v) = checked(self.in_memory.as_ref(), item)?;
            if let Some(user) = keys::sm_user_key(&k) {
                out.push((user.to_vec(), v.to_vec()));
            }
        }
        Ok(out)
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

/// A command's view of the group's data: the applied state, plus the writes of earlier
/// commands in the same batch, plus its own staged writes.
pub struct KvTxn<'a, E = ()> {
    db: &'a DB,
    cf: &'a rocksdb::ColumnFamily,
    batch: &'a Overlay,
    hot: &'a HotKeys,
    /// Keys read past the batch's own writes: what is written to them is remembered.
    read: &'a RefCell<KeySet>,
    /// Set when the batch is tried in memory (module docs).
    in_memory: Option<&'a InMemory>,
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
        self.read.borrow_mut().insert(key.to_vec());
        if let Some(v) = self.hot.get(key) {
            return Ok(v.map(<[u8]>::to_vec));
        }
        step(self.in_memory)?;
        let r = self.db.get_cf_opt(
            self.cf,
            keys::sm_data_key(key),
            &read_options(self.in_memory),
        );
        checked(self.in_memory, r)
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
        let mut opts = read_options(self.in_memory);
        if let Some(end) = keys::prefix_end(&start) {
            opts.set_iterate_upper_bound(end);
        }
        let mut it = self.db.raw_iterator_cf_opt(self.cf, opts);
        step(self.in_memory)?;
        it.seek(&start);
        let mut live: BTreeMap<Vec<u8>, bool> = BTreeMap::new();
        while let Some(k) = it.key() {
            if let Some(user) = keys::sm_user_key(k) {
                live.insert(user.to_vec(), true);
            }
            step(self.in_memory)?;
            it.next();
        }
        checked(self.in_memory, it.status())?;
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

/// Bytes of snapshot data written per batch while restoring.
pub const RESTORE_BATCH_BYTES: usize = 4 << 20;

/// A [`StateMachine`] that stores a [`Processor`]'s data in the group's column family.
pub struct RocksStateMachine<P> {
    db: Arc<Db>,
    cf_name: String,
    processor: P,
    /// Held for writing while a restore replaces the data; queries take it for
    /// reading, so they never see a half-restored state.
    restoring: RwLock<()>,
    /// Written values of keys the apply path reads (module docs). Locked by apply
    /// (one at a time per group anyway) and by restore, which clears it.
    hot: std::sync::Mutex<HotKeys>,
}

impl<P: Processor> RocksStateMachine<P> {
    pub fn new(group: &str, db: Arc<Db>, processor: P) -> io::Result<Self> {
        let cf_name = keys::sm_cf(group);
        let sm = RocksStateMachine {
            db,
            cf_name,
            processor,
            restoring: RwLock::new(()),
            hot: std::sync::Mutex::new(HotKeys::new(0)),
        };
        sm.recover_interrupted_restore()?;
        Ok(sm)
    }

    /// Keep up to `bytes` of recently written values for the apply path's reads
    /// (module docs); none without this.
    pub fn with_key_cache(self, bytes: usize) -> Self {
        *crate::lock(&self.hot) = HotKeys::new(bytes);
        self
    }

    fn cf(&self) -> io::Result<&rocksdb::ColumnFamily> {
        cf(&self.db, &self.cf_name)
    }

    /// Apply `items` and write the result with `applied`. With `in_memory`, gives up
    /// (`Ok(None)`) as soon as a read would need the disk or the budget is spent, or
    /// RocksDB would make the write wait for a stall: then nothing has been written,
    /// cached or announced, and the batch can be applied again (module docs).
    fn apply_batch(
        &self,
        items: &[ApplyItem<'_>],
        applied: &AppliedState,
        in_memory: Option<&InMemory>,
    ) -> io::Result<Option<Vec<CommandResult>>> {
        let gave_up = || in_memory.is_some_and(|m| m.missed.get());
        let cf = self.cf()?;
        let mut hot = crate::lock(&self.hot);
        let read = RefCell::new(KeySet::default());
        let mut batch_overlay = Overlay::new();
        let mut events = Vec::new();
        let mut results = Vec::with_capacity(items.len());
        for item in items {
            let Some(cmd) = item.command else { continue };
            let mut txn = KvTxn {
                db: &self.db,
                cf,
                batch: &batch_overlay,
                hot: &hot,
                read: &read,
                in_memory,
                staged: Overlay::new(),
                events: Vec::new(),
            };
            let outcome = self.processor.apply(&mut txn, item.index, cmd);
            // Whatever the processor made of a refused read, the attempt is void.
            if gave_up() {
                return Ok(None);
            }
            match outcome {
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
        for (k, v) in &batch_overlay {
            let key = keys::sm_data_key(k);
            match v {
                Some(v) => wb.put_cf(cf, key, v),
                None => wb.delete_cf(cf, key),
            }
        }
        wb.put_cf(cf, keys::SM_APPLIED_KEY, applied.encode());
        if in_memory.is_none() {
            self.db.write(wb).map_err(io::Error::other)?;
        } else if !write_unless_stalled(&self.db, wb)? {
            return Ok(None);
        }
        // Only after the write: the cache never holds what the column family does not.
        let read = read.into_inner();
        for (k, v) in batch_overlay {
            let was_read = read.contains(&k);
            hot.written(k, v, was_read);
        }
        drop(hot);
        if !events.is_empty() {
            self.processor.on_applied(events);
        }
        Ok(Some(results))
    }

    /// A restore that a crash interrupted left half old, half new data: drop it all
    /// and report nothing applied (see the module docs).
    fn recover_interrupted_restore(&self) -> io::Result<()> {
        let cf = self.cf()?;
        if self
            .db
            .get_cf(cf, keys::SM_RESTORING_KEY)
            .map_err(io::Error::other)?
            .is_none()
        {
            return Ok(());
        }
        tracing::warn!(
            cf = %self.cf_name,
            "a snapshot restore was interrupted; discarding the partial state (it will be restored again)"
        );
        let mut wb = WriteBatch::default();
        let (start, end) = data_range();
        wb.delete_range_cf(cf, start.as_slice(), end.as_slice());
        wb.delete_cf(cf, keys::SM_APPLIED_KEY);
        wb.delete_cf(cf, keys::SM_RESTORING_KEY);
        write_synced(&self.db, wb)
    }

    fn read_guard(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.restoring.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// The key range of all data keys.
fn data_range() -> ([u8; 1], Vec<u8>) {
    let start = [keys::SM_DATA_PREFIX];
    let end = keys::prefix_end(&start).expect("prefix below 0xff");
    (start, end)
}

fn write_synced(db: &DB, wb: WriteBatch) -> io::Result<()> {
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    db.write_opt(wb, &opts).map_err(io::Error::other)
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
        self.apply_batch(items, applied, None)?
            .ok_or_else(|| io::Error::other("an apply allowed the disk gave up on memory"))
    }

    fn apply_in_memory(
        &self,
        items: &[ApplyItem<'_>],
        applied: &AppliedState,
    ) -> Option<io::Result<Vec<CommandResult>>> {
        let commands = items.iter().filter_map(|i| i.command);
        let payload: usize = commands.map(|c| c.payload.len()).sum();
        if items.len() > IN_MEMORY_APPLY_ITEMS || payload > IN_MEMORY_APPLY_BYTES {
            return None;
        }
        let budget = InMemory::new(IN_MEMORY_APPLY_KEYS);
        self.apply_batch(items, applied, Some(&budget)).transpose()
    }

    fn query(&self, query: &[u8]) -> Result<Vec<u8>, Error> {
        let _guard = self.read_guard();
        let view = KvView::new(&self.db, self.cf()?);
        self.processor.query(&view, query)
    }

    fn query_in_memory(&self, query: &[u8]) -> Option<Result<Vec<u8>, Error>> {
        // A restore holds the lock for as long as it takes: do not wait for it here.
        let _guard = self.restoring.try_read().ok()?;
        let view = KvView::in_memory(&self.db, self.cf().ok()?, IN_MEMORY_QUERY_KEYS);
        let answer = self.processor.query(&view, query);
        // Whatever the processor made of a refused read, the answer is void.
        (!view.missed()).then_some(answer)
    }

    fn begin_snapshot(&self) -> io::Result<Box<dyn SnapshotSource + '_>> {
        Ok(Box::new(RocksSnapshotSource::capture(self)?))
    }

    fn digest(&self) -> io::Result<StateDigest> {
        let _guard = self.read_guard();
        let source = RocksSnapshotSource::capture(self)?;
        let applied = source.applied().last_applied.map(|l| l.index).unwrap_or(0);
        let mut digest = DigestBuilder::default();
        source.for_each_pair(|k, v| {
            digest.record(&[k, v]);
            Ok(())
        })?;
        Ok(digest.finish(applied))
    }

    fn restore(&self, data: &mut dyn Read, applied: &AppliedState) -> io::Result<()> {
        let _guard = self.restoring.write().unwrap_or_else(|e| e.into_inner());
        // Whatever happens below, the data no longer is what the cache remembers.
        crate::lock(&self.hot).clear();
        let cf = self.cf()?;
        let (start, end) = data_range();
        // 1. Mark the state as being replaced, durably, before touching it.
        let mut wb = WriteBatch::default();
        wb.put_cf(cf, keys::SM_RESTORING_KEY, applied.encode());
        wb.delete_range_cf(cf, start.as_slice(), end.as_slice());
        write_synced(&self.db, wb)?;
        // 2. Stream the pairs in bounded batches.
        let mut wb = WriteBatch::default();
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
            if wb.size_in_bytes() >= RESTORE_BATCH_BYTES {
                self.db
                    .write(std::mem::take(&mut wb))
                    .map_err(io::Error::other)?;
            }
        }
        // 3. The new position and the end of the marker, with everything before them
        //    made durable by the same synced write.
        wb.put_cf(cf, keys::SM_APPLIED_KEY, applied.encode());
        wb.delete_cf(cf, keys::SM_RESTORING_KEY);
        write_synced(&self.db, wb)?;
        self.processor.on_restored();
        Ok(())
    }
}

/// Snapshot data format of RocksDB-backed groups: a sequence of `u32-le length | bytes`
/// frames, alternating key and value, keys in order. Reads go through one RocksDB
/// snapshot taken when the source is created, so applies may continue meanwhile.
struct RocksSnapshotSource<'a> {
    db: &'a DB,
    cf: &'a rocksdb::ColumnFamily,
    applied: AppliedState,
    snapshot: rocksdb::Snapshot<'a>,
}

impl<'a> RocksSnapshotSource<'a> {
    /// Builds and restores of a group never overlap (`raft::state_machine` serializes
    /// them), so the view cannot see a restore in progress.
    fn capture<P: Processor>(sm: &'a RocksStateMachine<P>) -> io::Result<Self> {
        let cf = sm.cf()?;
        let snapshot = sm.db.snapshot();
        let applied = match snapshot
            .get_cf(cf, keys::SM_APPLIED_KEY)
            .map_err(io::Error::other)?
        {
            None => AppliedState::default(),
            Some(b) => AppliedState::decode(&b)?,
        };
        Ok(RocksSnapshotSource {
            db: &sm.db,
            cf,
            applied,
            snapshot,
        })
    }
}

impl SnapshotSource for RocksSnapshotSource<'_> {
    fn applied(&self) -> &AppliedState {
        &self.applied
    }

    fn write_to(&mut self, out: &mut dyn Write) -> io::Result<()> {
        self.for_each_pair(|k, v| {
            write_frame(out, k)?;
            write_frame(out, v)
        })
    }
}

impl RocksSnapshotSource<'_> {
    /// Visit every data pair of the view, in key order.
    fn for_each_pair(
        &self,
        mut visit: impl FnMut(&[u8], &[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        let (start, end) = data_range();
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(end);
        opts.fill_cache(false);
        opts.set_snapshot(&self.snapshot);
        for item in self.db.iterator_cf_opt(
            self.cf,
            opts,
            IteratorMode::From(&start, Direction::Forward),
        ) {
            let (k, v) = item.map_err(io::Error::other)?;
            visit(&k, &v)?;
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

/// A processor over a temporary RocksDB, fed commands one at a time: the table tests
/// of the groups' apply logic run on it without a cluster.
#[cfg(test)]
pub(crate) struct ProcessorHarness<P: Processor> {
    sm: RocksStateMachine<P>,
    index: u64,
    _dir: tempfile::TempDir,
}

#[cfg(test)]
impl<P: Processor> ProcessorHarness<P> {
    pub(crate) fn new(processor: P) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = crate::raft::rocks::open(dir.path(), &["g"]).expect("open RocksDB");
        // With the key cache, so that the groups' table tests also run through it.
        let sm = RocksStateMachine::new("g", db, processor)
            .expect("state machine")
            .with_key_cache(1 << 20);
        ProcessorHarness {
            sm,
            index: 0,
            _dir: dir,
        }
    }

    /// Apply one command proposed at `time_ms`: its reply or its rejection.
    pub(crate) fn apply<C: serde::Serialize>(
        &mut self,
        time_ms: u64,
        cmd: &C,
    ) -> Result<Vec<u8>, Error> {
        self.index += 1;
        let command = Command {
            timestamp_ms: time_ms,
            op: "test".into(),
            key: String::new(),
            payload: crate::codec::encode(cmd),
        };
        let items = [ApplyItem {
            index: self.index,
            command: Some(&command),
        }];
        let mut results = self
            .sm
            .apply(&items, &AppliedState::default())
            .expect("apply without local failure");
        results.remove(0).0
    }

    /// Apply and decode the reply.
    pub(crate) fn reply<C: serde::Serialize, R: serde::de::DeserializeOwned>(
        &mut self,
        time_ms: u64,
        cmd: &C,
    ) -> Result<R, Error> {
        let bytes = self.apply(time_ms, cmd)?;
        Ok(crate::codec::decode_stored(&bytes, "reply").expect("decodable reply"))
    }

    /// Run a query and decode its answer.
    pub(crate) fn query<Q: serde::Serialize, R: serde::de::DeserializeOwned>(&self, q: &Q) -> R {
        let bytes = self
            .sm
            .query(&crate::codec::encode(q))
            .expect("query succeeds");
        crate::codec::decode_stored(&bytes, "answer").expect("decodable answer")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(pairs: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in pairs {
            write_frame(&mut out, &keys::sm_data_key(k.as_bytes())).unwrap();
            write_frame(&mut out, v).unwrap();
        }
        out
    }

    /// `commands` as apply items with the log indexes after `index`, which moves on.
    fn numbered<'c>(commands: &'c [Command], index: &mut u64) -> Vec<ApplyItem<'c>> {
        commands
            .iter()
            .map(|c| {
                *index += 1;
                ApplyItem {
                    index: *index,
                    command: Some(c),
                }
            })
            .collect()
    }

    fn open_kv(db: &Arc<Db>) -> RocksStateMachine<crate::groups::test_kv::KvProcessor> {
        RocksStateMachine::new("g", db.clone(), crate::groups::test_kv::KvProcessor).unwrap()
    }

    /// Issue #11.7: a state larger than one restore batch arrives whole, and a restore
    /// cut short (a crash, a broken stream) leaves a marker that the next open turns
    /// into an empty state that reports nothing applied, never a mixture.
    #[test]
    fn restores_stream_in_batches_and_an_interrupted_one_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::raft::rocks::open(dir.path(), &["g"]).unwrap();
        let sm = open_kv(&db);
        let big = vec![7u8; 1 << 20];
        let names: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
        let pairs: Vec<(&str, Vec<u8>)> = names.iter().map(|n| (n.as_str(), big.clone())).collect();
        let data = frames(&pairs);
        assert!(data.len() > 2 * RESTORE_BATCH_BYTES);
        sm.restore(&mut &data[..], &AppliedState::default())
            .unwrap();
        let view_count = |sm: &RocksStateMachine<_>| {
            let cf = sm.cf().unwrap();
            KvView::new(&sm.db, cf).scan(b"", None, 100).unwrap().len()
        };
        assert_eq!(view_count(&sm), 10);

        // Cut inside the last pair: the restore fails and leaves its marker.
        let cut = &data[..data.len() - 10];
        assert!(sm.restore(&mut &cut[..], &AppliedState::default()).is_err());
        let cf = sm.cf().unwrap();
        assert!(db.get_cf(cf, keys::SM_RESTORING_KEY).unwrap().is_some());
        drop(sm);
        let sm = open_kv(&db);
        let cf = sm.cf().unwrap();
        assert!(db.get_cf(cf, keys::SM_RESTORING_KEY).unwrap().is_none());
        assert_eq!(view_count(&sm), 0, "the partial state is gone");
        assert_eq!(sm.applied_state().unwrap(), AppliedState::default());
    }

    /// The hot-key cache changes nothing anyone can see: the same commands in the same
    /// batches give the same replies and the same data with a cache small enough to
    /// evict all the time as with none, across deletions, rejected commands, reads of
    /// a key written earlier in the same batch, and a restore that replaces the data.
    #[test]
    fn the_key_cache_never_changes_a_reply_or_the_data() {
        use crate::groups::test_kv::KvCommand;
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let open = |dir: &tempfile::TempDir, cache: usize| {
            let db = crate::raft::rocks::open(dir.path(), &["g"]).unwrap();
            open_kv(&db).with_key_cache(cache)
        };
        let plain = open(&dirs[0], 0);
        let cached = open(&dirs[1], 2048);
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut next = move |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        let mut index = 0;
        let state = |sm: &RocksStateMachine<_>| {
            KvView::new(&sm.db, sm.cf().unwrap())
                .scan(b"", None, 1000)
                .unwrap()
        };
        let mut cas_failures = 0;
        for round in 0..400 {
            if round == 200 {
                // Both replaced by the same snapshot: what either cached is gone.
                let data = frames(&[("k1", b"restored".to_vec()), ("k2", b"x".to_vec())]);
                for sm in [&plain, &cached] {
                    sm.restore(&mut &data[..], &AppliedState::default())
                        .unwrap();
                }
            }
            let commands: Vec<Command> = (0..1 + next(6))
                .map(|_| {
                    let key = format!("k{}", next(12)).into_bytes();
                    let value = vec![b'a' + next(26) as u8; 1 + next(300) as usize];
                    match next(4) {
                        0 => KvCommand::Delete { key },
                        1 => KvCommand::Cas {
                            key,
                            expected: Some(b"restored".to_vec()),
                            value: Some(value),
                        },
                        _ => KvCommand::Put { key, value },
                    }
                    .into_command()
                })
                .collect();
            let items = numbered(&commands, &mut index);
            let replies = |sm: &RocksStateMachine<_>| {
                sm.apply(&items, &AppliedState::default())
                    .unwrap()
                    .into_iter()
                    .map(|r| r.0.map_err(|e| e.to_string()))
                    .collect::<Vec<_>>()
            };
            let (a, b) = (replies(&plain), replies(&cached));
            assert_eq!(a, b, "round {round}");
            cas_failures += a.iter().filter(|r| r.is_err()).count();
            assert_eq!(state(&plain), state(&cached), "round {round}");
        }
        assert!(cas_failures > 0, "the sequence has rejected commands");
        // And it is used: a key read and written is remembered with its new value.
        let put = KvCommand::Put {
            key: b"k3".to_vec(),
            value: b"v".to_vec(),
        }
        .into_command();
        let item = ApplyItem {
            index: index + 1,
            command: Some(&put),
        };
        let reply = cached.apply(&[item], &AppliedState::default()).unwrap();
        assert!(reply[0].0.is_ok());
        assert_eq!(crate::lock(&cached.hot).get(b"k3"), Some(Some(&b"v"[..])));
    }

    /// What `apply_in_memory` does with a batch, as the pool path would: its replies
    /// or, when it gave up, `None`.
    fn replies_of(results: io::Result<Vec<CommandResult>>) -> Vec<Result<Vec<u8>, String>> {
        results
            .unwrap()
            .into_iter()
            .map(|r| r.0.map_err(|e| e.to_string()))
            .collect()
    }

    fn kv_put(key: &str, value: &[u8]) -> Command {
        crate::groups::test_kv::KvCommand::Put {
            key: key.as_bytes().to_vec(),
            value: value.to_vec(),
        }
        .into_command()
    }

    fn applied_at(index: u64) -> AppliedState {
        AppliedState {
            last_applied: Some(openraft::testing::log_id::<crate::raft::types::TypeConfig>(
                1, 1, index,
            )),
            ..AppliedState::default()
        }
    }

    /// A batch applied in memory gives the replies and data the pool path gives, for
    /// puts, deletes and rejected compare-and-swaps on keys in the memtable.
    #[test]
    fn applying_in_memory_matches_the_pool_path() {
        use crate::groups::test_kv::KvCommand;
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let pool = open_kv(&crate::raft::rocks::open(dirs[0].path(), &["g"]).unwrap());
        let memory = open_kv(&crate::raft::rocks::open(dirs[1].path(), &["g"]).unwrap());
        let mut seed = 0x2545f4914f6cdd1du64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let (mut index, mut in_memory, mut rejected) = (0, 0, 0);
        for round in 0..200 {
            let commands: Vec<Command> = (0..1 + next(5))
                .map(|_| {
                    let key = format!("k{}", next(10)).into_bytes();
                    match next(4) {
                        0 => KvCommand::Delete { key },
                        1 => KvCommand::Cas {
                            key,
                            expected: None,
                            value: Some(b"fresh".to_vec()),
                        },
                        _ => KvCommand::Put {
                            key,
                            value: vec![b'a' + next(26) as u8; 1 + next(100) as usize],
                        },
                    }
                    .into_command()
                })
                .collect();
            let items = numbered(&commands, &mut index);
            let applied = applied_at(index);
            let expected = replies_of(pool.apply(&items, &applied));
            let got = match memory.apply_in_memory(&items, &applied) {
                Some(results) => {
                    in_memory += 1;
                    replies_of(results)
                }
                None => replies_of(memory.apply(&items, &applied)),
            };
            assert_eq!(got, expected, "round {round}");
            rejected += got.iter().filter(|r| r.is_err()).count();
        }
        let state = |sm: &RocksStateMachine<_>| {
            KvView::new(&sm.db, sm.cf().unwrap())
                .scan(b"", None, 1000)
                .unwrap()
        };
        assert_eq!(state(&memory), state(&pool));
        assert_eq!(
            memory.applied_state().unwrap(),
            pool.applied_state().unwrap()
        );
        assert_eq!(in_memory, 200, "keys in the memtable are always in memory");
        assert!(rejected > 0, "the sequence has rejected commands");
    }

    /// Where a read would need the disk, the batch is too large, or a write would wait
    /// for a stall, `apply_in_memory` gives up having written, cached and announced
    /// nothing; `apply` then does the work.
    #[test]
    fn applying_in_memory_gives_up_without_a_trace() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = crate::raft::rocks::open(dir.path(), &["g"]).unwrap();
            let sm = open_kv(&db);
            let put = kv_put("cold", b"v1");
            let item = ApplyItem {
                index: 1,
                command: Some(&put),
            };
            sm.apply(&[item], &applied_at(1)).unwrap();
            db.flush_cf(sm.cf().unwrap()).unwrap();
        }
        // Reopened: "cold" is only in a table file, not in the block cache.
        let db = crate::raft::rocks::open(dir.path(), &["g"]).unwrap();
        let sm = open_kv(&db).with_key_cache(1 << 20);
        let put = kv_put("cold", b"v2");
        let item = |index| ApplyItem {
            index,
            command: Some(&put),
        };
        assert!(sm.apply_in_memory(&[item(2)], &applied_at(2)).is_none());
        assert_eq!(
            sm.applied_state().unwrap(),
            applied_at(1),
            "nothing written"
        );
        assert_eq!(crate::lock(&sm.hot).get(b"cold"), None, "nothing cached");
        let replies = replies_of(sm.apply(&[item(2)], &applied_at(2)));
        assert!(replies[0].is_ok());
        assert_eq!(sm.applied_state().unwrap(), applied_at(2));
        // Now the key is in memory (the cache): the next one stays on this thread.
        let again = sm.apply_in_memory(&[item(3)], &applied_at(3));
        assert!(again.is_some_and(|r| r.is_ok()));

        // Too many entries: not tried at all.
        let many: Vec<ApplyItem<'_>> = (4..4 + IN_MEMORY_APPLY_ITEMS as u64 + 1)
            .map(item)
            .collect();
        let last = 3 + many.len() as u64;
        assert!(sm.apply_in_memory(&many, &applied_at(last)).is_none());
        assert_eq!(sm.applied_state().unwrap(), applied_at(3));

        // A write stall (too many level-0 files in another column family).
        crate::raft::rocks::stall::begin(&db);
        assert!(sm.apply_in_memory(&[item(4)], &applied_at(4)).is_none());
        assert_eq!(
            sm.applied_state().unwrap(),
            applied_at(3),
            "nothing written"
        );
        crate::raft::rocks::stall::end(&db);
        let after = sm.apply_in_memory(&[item(4)], &applied_at(4));
        assert!(after.is_some_and(|r| r.is_ok()));
        assert_eq!(sm.applied_state().unwrap(), applied_at(4));
    }

    /// A key the cache knows, then written by a command that does not read it first
    /// (a blind write), must not keep its old value in the cache.
    #[test]
    fn a_blind_write_updates_a_cached_key() {
        struct Blind;
        impl Processor for Blind {
            type Event = ();
            fn apply(
                &self,
                txn: &mut KvTxn<'_>,
                _: u64,
                cmd: &Command,
            ) -> Result<Vec<u8>, ApplyError> {
                // "read": return the current value and write the payload;
                // "blind": only write it.
                let previous = if cmd.op == "read" {
                    txn.get(b"k")?
                } else {
                    None
                };
                txn.put(b"k", cmd.payload.clone());
                Ok(previous.unwrap_or_default())
            }
            fn query(&self, _: &KvView<'_>, _: &[u8]) -> Result<Vec<u8>, Error> {
                Ok(Vec::new())
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let db = crate::raft::rocks::open(dir.path(), &["g"]).unwrap();
        let sm = RocksStateMachine::new("g", db, Blind)
            .unwrap()
            .with_key_cache(1 << 20);
        let mut index = 0;
        let mut run = |op: &str, value: &str| {
            index += 1;
            let cmd = Command::new(op, "k", value.as_bytes().to_vec());
            let item = ApplyItem {
                index,
                command: Some(&cmd),
            };
            let mut r = sm.apply(&[item], &AppliedState::default()).unwrap();
            String::from_utf8(r.remove(0).0.unwrap()).unwrap()
        };
        assert_eq!(run("read", "v1"), "");
        assert_eq!(run("read", "v2"), "v1", "cached now");
        assert_eq!(run("blind", "v3"), "");
        assert_eq!(run("read", "v4"), "v3", "never the stale v2");
    }

    #[test]
    fn a_view_reads_one_point_in_time() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::raft::rocks::open(dir.path(), &["g"]).unwrap();
        let cf = crate::raft::rocks::cf(&db, &keys::sm_cf("g")).unwrap();
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

    #[test]
    fn an_in_memory_view_refuses_disk_reads_and_long_queries() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = crate::raft::rocks::open(dir.path(), &["g"]).unwrap();
            let cf = crate::raft::rocks::cf(&db, &keys::sm_cf("g")).unwrap();
            for k in ["a", "b", "c", "d"] {
                db.put_cf(cf, keys::sm_data_key(k.as_bytes()), k.as_bytes())
                    .unwrap();
            }
            // In the memtable: read from memory.
            let view = KvView::in_memory(&db, cf, 8);
            assert_eq!(view.get(b"a").unwrap().as_deref(), Some(&b"a"[..]));
            assert_eq!(view.get(b"zz").unwrap(), None);
            assert_eq!(view.scan(b"", None, 10).unwrap().len(), 4);
            assert!(!view.missed());
            // Over the budget: refused, and the view says so.
            let small = KvView::in_memory(&db, cf, 3);
            let err = small.scan(b"", None, 10).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
            assert!(small.missed());
            // An ordinary view has no budget.
            assert_eq!(KvView::new(&db, cf).scan(b"", None, 10).unwrap().len(), 4);
            db.flush_cf(cf).unwrap();
        }
        // Reopened: the data is only in a table file, not in the block cache.
        let db = crate::raft::rocks::open(dir.path(), &["g"]).unwrap();
        let cf = crate::raft::rocks::cf(&db, &keys::sm_cf("g")).unwrap();
        let view = KvView::in_memory(&db, cf, 8);
        let err = view.get(b"a").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert!(view.missed());
        // The same read may go to the disk in an ordinary view, and then it is cached.
        assert_eq!(
            KvView::new(&db, cf).get(b"a").unwrap().as_deref(),
            Some(&b"a"[..])
        );
        let again = KvView::in_memory(&db, cf, 8);
        assert_eq!(again.get(b"a").unwrap().as_deref(), Some(&b"a"[..]));
        assert!(!again.missed());
    }
}
