//! The node's RocksDB instance and the group-commit WAL syncer.
//!
//! Every group's log, vote and (for RocksDB-backed groups) state machine live in one
//! database, so they share one write-ahead log. Appends are written without sync and
//! handed to [`WalSyncer`], a dedicated thread that fsyncs the WAL once for everything
//! written so far and then completes every waiting append. Under load, one fsync
//! covers many entries of many groups; no append is acknowledged before its fsync.
//!
//! RocksDB's own info log (`LOG` files) is bounded in size and count (Nacos issue
//! #11145: it grew without limit there).
//!
//! Memory is bounded for the whole node, not per column family: with RocksDB's
//! defaults every column family (two per group) gets 64 MiB memtables and its own
//! 32 MiB block cache, and a node measured 190 MiB RSS after a short benchmark. One
//! block cache is shared by all of them, and the memtables of all column families
//! together are capped ([`StorageBudget`], `--storage-memory-mib`); reaching the cap
//! flushes the largest.
//! The working set of a registry (configuration items, instances) is small, and the
//! Raft log is read back only by lagging followers.

/// One column family's memtable before it is flushed, at most.
const MEMTABLE_SIZE: usize = 4 << 20;

/// L0 files of a state machine's column family that start a compaction (see `open_with`).
const L0_COMPACTION_TRIGGER: i32 = 16;

/// How RocksDB's memory is split: memtables of all column families together, and the
/// block cache they share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StorageBudget {
    pub memtables: usize,
    pub block_cache: usize,
}

impl StorageBudget {
    /// Three quarters of `mib` for memtables, one quarter for the block cache.
    pub fn from_mib(mib: usize) -> Self {
        let total = mib << 20;
        StorageBudget {
            memtables: total / 4 * 3,
            block_cache: total / 4,
        }
    }
}

impl Default for StorageBudget {
    fn default() -> Self {
        StorageBudget::from_mib(16)
    }
}

use std::io;
use std::ops::Deref;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;

use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, Options, DB};
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::raft::keys;

/// The node's RocksDB, which says when it is closed.
///
/// RocksDB closes (and releases its directory lock) when the last handle is dropped,
/// on whichever thread drops it: possibly a blocking-pool thread still finishing an
/// apply after the node was shut down. A new node in the same process (a test's
/// restart) must wait for that, not merely for the reference count to reach zero;
/// [`Db::closed`] resolves after the close has completed.
pub struct Db {
    db: Option<DB>,
    /// The block cache every column family shares, kept for [`Db::memory`].
    cache: Cache,
    /// Every column family, for [`Db::flush_if_holding`].
    families: Vec<String>,
    budget: StorageBudget,
    closed: watch::Sender<bool>,
}

/// What RocksDB holds in memory now ([`Db::memory`]), in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StorageMemory {
    /// Memtables of every column family, flushed or not yet (within the budget's share).
    pub memtables: u64,
    /// The shared block cache (within the budget's share).
    pub block_cache: u64,
    /// Index and filter blocks of open tables, outside the budget: they grow with the
    /// data (see `open_with`).
    pub table_readers: u64,
}

impl Deref for Db {
    type Target = DB;
    fn deref(&self) -> &DB {
        self.db.as_ref().expect("open until dropped")
    }
}

impl Db {
    /// A receiver that sees `true` once the database is closed.
    pub fn closed(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }

    /// RocksDB's memory by part (RocksDB's own approximation).
    pub fn memory(&self) -> io::Result<StorageMemory> {
        let stats = rocksdb::perf::get_memory_usage_stats(Some(&[&**self]), Some(&[&self.cache]))
            .map_err(io::Error::other)?;
        Ok(StorageMemory {
            memtables: stats.mem_table_total,
            block_cache: stats.cache_total,
            table_readers: stats.mem_table_readers_total,
        })
    }

    /// The memory all memtables together may hold (`--storage-memory-mib`'s share).
    pub fn memtable_budget(&self) -> u64 {
        self.budget.memtables as u64
    }

    /// Flushes every column family's memtables to tables if together they hold at
    /// least `min` bytes; returns the memtable bytes there were (`None`: below `min`,
    /// nothing flushed). Blocks until the flush is done: run it off the async
    /// workers. Used when the node falls idle (`crate::idle`): memtables are write
    /// buffers, which an idle node need not hold, and a flushed memtable also shortens
    /// the WAL a restart replays.
    pub fn flush_if_holding(&self, min: u64) -> io::Result<Option<u64>> {
        let held = self.memory()?.memtables;
        self.flush_families_if(&self.families, held, min)
    }

    /// The memtable bytes of one group's column families (its log and its state
    /// machine): mutable, immutable and not yet released ones.
    pub fn group_memtables(&self, group: &str) -> io::Result<u64> {
        Self::group_families(group).iter().try_fold(0, |sum, name| {
            let held = self
                .property_int_value_cf(cf(self, name)?, rocksdb::properties::SIZE_ALL_MEM_TABLES)
                .map_err(io::Error::other)?;
            Ok(sum + held.unwrap_or(0))
        })
    }

    /// [`Db::flush_if_holding`] for one group's column families: for a group that fell
    /// quiet while others still write (`crate::idle`), whose memtables would otherwise
    /// stay until the whole node is quiet.
    pub fn flush_group_if_holding(&self, group: &str, min: u64) -> io::Result<Option<u64>> {
        let held = self.group_memtables(group)?;
        self.flush_families_if(&Self::group_families(group), held, min)
    }

    fn group_families(group: &str) -> [String; 2] {
        [keys::log_cf(group), keys::sm_cf(group)]
    }

    /// Flushes `names` (waiting for it) if `held`, their memtable bytes, is `min` or
    /// more; returns `held` if it did.
    fn flush_families_if(&self, names: &[String], held: u64, min: u64) -> io::Result<Option<u64>> {
        if held < min {
            return Ok(None);
        }
        let families = names
            .iter()
            .map(|n| cf(self, n))
            .collect::<io::Result<Vec<_>>>()?;
        let mut opts = rocksdb::FlushOptions::default();
        opts.set_wait(true);
        self.flush_cfs_opt(&families, &opts)
            .map_err(io::Error::other)?;
        Ok(Some(held))
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        drop(self.db.take());
        let _ = self.closed.send(true);
    }
}

/// Open (creating if needed) the node's database with the column families of `groups`,
/// with the default memory budget.
pub fn open(path: &Path, groups: &[&str]) -> io::Result<Arc<Db>> {
    open_with(path, groups, StorageBudget::default())
}

/// [`open`] within `budget`.
pub fn open_with(path: &Path, groups: &[&str], budget: StorageBudget) -> io::Result<Arc<Db>> {
    std::fs::create_dir_all(path)?;
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // Bounded info log: at most 5 files of 8 MiB.
    opts.set_max_log_file_size(8 << 20);
    opts.set_keep_log_file_num(5);
    opts.set_log_level(rocksdb::LogLevel::Warn);
    // With several column families a WAL file lives until every family has flushed;
    // cap the total so a quiet group cannot pin gigabytes of WAL.
    opts.set_max_total_wal_size(256 << 20);
    opts.set_max_background_jobs(2);
    opts.set_bytes_per_sync(1 << 20);
    opts.set_db_write_buffer_size(budget.memtables);
    let cache = Cache::new_lru_cache(budget.block_cache);
    // A small budget gets smaller memtables, so that it still holds several.
    let memtable_size = MEMTABLE_SIZE.min(budget.memtables / 6);

    let mut names = vec![keys::RAFT_META_CF.to_string()];
    for g in groups {
        names.push(keys::log_cf(g));
        names.push(keys::sm_cf(g));
    }
    // Keep column families that exist on disk (e.g. a group no longer registered),
    // otherwise RocksDB refuses to open.
    if let Ok(existing) = DB::list_cf(&opts, path) {
        for name in existing {
            if name != "default" && !names.contains(&name) {
                names.push(name);
            }
        }
    }
    let cfs = names.iter().map(|n| {
        let mut cf_opts = Options::default();
        use rocksdb::DBCompressionType::{Lz4, None as Plain};
        if n.starts_with("log.") {
            // Log entries are read back by replication soon after they are written
            // and deleted at the next purge: compressing them is CPU for nothing.
            cf_opts.set_compression_type(Plain);
        } else {
            // The newest levels are rewritten soon by compaction: compress from L2 on.
            cf_opts.set_compression_type(Lz4);
            cf_opts.set_compression_per_level(&[Plain, Plain, Lz4, Lz4, Lz4, Lz4, Lz4]);
        }
        cf_opts.set_write_buffer_size(memtable_size);
        // Room for a burst of large entries (an 8 MiB append batch fills a memtable on
        // its own) while earlier memtables flush, before RocksDB stalls writes. The
        // node-wide budget still bounds the total.
        cf_opts.set_max_write_buffer_number(4);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        // Index blocks stay with their table, outside the block cache. In the cache,
        // a publish load's data blocks evicted them, and every point read then read
        // and decompressed a whole index block again: a third of all CPU, and publish
        // throughput fell from 4,200/s to 1,700/s as the data grew. They take memory
        // in proportion to the data (tens of bytes per 4 KiB block), not the budget.
        table.set_cache_index_and_filter_blocks(false);
        if !n.starts_with("log.") {
            // The apply path reads keys one at a time (a configuration item, its
            // history index, a service): a Bloom filter per table (10 bits a key, about
            // 1 % false positives) and one per memtable let a read skip the tables and
            // memtables that do not hold the key, instead of searching each. The log
            // is only scanned in order, where filters do not help.
            table.set_bloom_filter(10.0, false);
            cf_opts.set_memtable_prefix_bloom_ratio(0.05);
            cf_opts.set_memtable_whole_key_filtering(true);
            // Writes land all over the key space (items, history), so every L0 file
            // overlaps the whole next level, and an L0 compaction rewrites that level
            // entirely: with RocksDB's trigger of 4 small L0 files, the state machine's
            // data was rewritten every few seconds under a publish load (compaction was
            // 13 % of the machine's CPU). Waiting for 16 files rewrites it a quarter as
            // often; the Bloom filters keep point reads from paying for the extra files.
            cf_opts.set_level_zero_file_num_compaction_trigger(L0_COMPACTION_TRIGGER);
            cf_opts.set_level_zero_slowdown_writes_trigger(L0_COMPACTION_TRIGGER * 3);
            cf_opts.set_level_zero_stop_writes_trigger(L0_COMPACTION_TRIGGER * 4);
        }
        cf_opts.set_block_based_table_factory(&table);
        ColumnFamilyDescriptor::new(n, cf_opts)
    });
    let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(io::Error::other)?;
    let (closed, _) = watch::channel(false);
    Ok(Arc::new(Db {
        db: Some(db),
        cache,
        families: names,
        budget,
        closed,
    }))
}

/// Write `batch` on the calling thread unless RocksDB would make the write wait for a
/// stall (`no_slowdown`): then it refuses the whole batch, nothing is written, and the
/// answer is `false`, for the caller to write it where waiting is harmless. For writes
/// made on an async worker (`raft::log_store`, `raft::rocks_sm`).
pub fn write_unless_stalled(db: &DB, batch: rocksdb::WriteBatch) -> io::Result<bool> {
    let mut opts = rocksdb::WriteOptions::default();
    opts.set_no_slowdown(true);
    match db.write_opt(batch, &opts) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == rocksdb::ErrorKind::Incomplete => Ok(false),
        Err(e) => Err(io::Error::other(e)),
    }
}

/// Look up a column family that [`open`] created.
pub fn cf<'a>(db: &'a DB, name: &str) -> io::Result<&'a rocksdb::ColumnFamily> {
    db.cf_handle(name)
        .ok_or_else(|| io::Error::other(format!("column family {name} missing")))
}

type SyncCallback = Box<dyn FnOnce(io::Result<()>) + Send>;

/// Group commit: one thread fsyncs the WAL for every append waiting on it.
#[derive(Clone)]
pub struct WalSyncer {
    tx: mpsc::Sender<SyncCallback>,
}

impl WalSyncer {
    pub fn start(db: Arc<Db>) -> io::Result<Self> {
        Self::start_observed(db, Arc::default())
    }

    /// [`WalSyncer::start`], recording each fsync's latency and size in `metrics`.
    pub fn start_observed(db: Arc<Db>, metrics: Arc<Metrics>) -> io::Result<Self> {
        // Weak: the syncer must not keep the database open. RocksDB has to be closed
        // before the process exits, or its background threads can abort the process.
        let db = Arc::downgrade(&db);
        let (tx, rx) = mpsc::channel::<SyncCallback>();
        std::thread::Builder::new()
            .name("wal-sync".into())
            .spawn(move || {
                // Ends when every sender (every log store) is dropped.
                while let Ok(first) = rx.recv() {
                    let mut waiting = vec![first];
                    waiting.extend(rx.try_iter());
                    // One fsync for everything written before these callbacks were sent.
                    let started = std::time::Instant::now();
                    let res = match db.upgrade() {
                        Some(db) => db.flush_wal(true).map_err(io::Error::other),
                        None => Err(io::Error::other("database closed")),
                    };
                    metrics.observe_wal_sync(started.elapsed(), waiting.len());
                    for cb in waiting {
                        cb(match &res {
                            Ok(()) => Ok(()),
                            Err(e) => Err(io::Error::other(e.to_string())),
                        });
                    }
                }
            })?;
        Ok(WalSyncer { tx })
    }

    /// Run `done` once everything written to the database so far is durable.
    pub fn after_sync(&self, done: impl FnOnce(io::Result<()>) + Send + 'static) {
        if let Err(mpsc::SendError(cb)) = self.tx.send(Box::new(done)) {
            cb(Err(io::Error::other("WAL syncer stopped")));
        }
    }

    /// Wait until everything written so far is durable.
    pub async fn sync(&self) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.after_sync(move |r| {
            let _ = tx.send(r);
        });
        rx.await
            .map_err(|_| io::Error::other("WAL syncer stopped"))?
    }
}

/// Write stalls on demand, for tests of the paths that must not wait for one.
#[cfg(test)]
pub mod stall {
    use super::*;

    /// Stops every write to `db` (RocksDB's level-0 file limit, reached on the meta
    /// column family with compaction held back) until [`end`].
    pub fn begin(db: &Db) {
        let meta = cf(db, keys::RAFT_META_CF).unwrap();
        db.set_options_cf(
            meta,
            &[
                ("level0_file_num_compaction_trigger", "64"),
                ("level0_slowdown_writes_trigger", "64"),
                ("level0_stop_writes_trigger", "2"),
            ],
        )
        .unwrap();
        for i in 0..2u8 {
            db.put_cf(meta, b"filler", [i]).unwrap();
            db.flush_cf(meta).unwrap();
        }
    }

    /// Ends the stall [`begin`] started.
    pub fn end(db: &Db) {
        let meta = cf(db, keys::RAFT_META_CF).unwrap();
        db.set_options_cf(meta, &[("level0_stop_writes_trigger", "64")])
            .unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_reports_memtables_and_block_cache() {
        let td = tempfile::tempdir().unwrap();
        let db = open_with(td.path(), &["g"], StorageBudget::from_mib(8)).unwrap();
        let before = db.memory().unwrap();
        let sm = cf(&db, &keys::sm_cf("g")).unwrap();
        for i in 0..1000u32 {
            db.put_cf(sm, format!("key-{i:05}"), [7u8; 512]).unwrap();
        }
        let written = db.memory().unwrap();
        assert!(
            written.memtables >= before.memtables + 1000 * 512,
            "512 KB written, memtables {before:?} -> {written:?}"
        );

        // Flushed to a table and read back: the blocks read are in the block cache,
        // the table's index and filter in its reader.
        db.flush_cf(sm).unwrap();
        for i in (0..1000u32).step_by(10) {
            assert!(db.get_cf(sm, format!("key-{i:05}")).unwrap().is_some());
        }
        let read = db.memory().unwrap();
        assert!(read.block_cache > 0, "{read:?}");
        assert!(
            read.block_cache <= 2 << 20,
            "within the budget's quarter: {read:?}"
        );
        assert!(read.table_readers > 0, "{read:?}");
    }

    #[test]
    fn flushes_memtables_only_when_they_hold_enough() {
        let td = tempfile::tempdir().unwrap();
        // 16 MiB: 2 MiB memtables, which the writes below stay well within.
        let db = open_with(td.path(), &["g"], StorageBudget::from_mib(16)).unwrap();
        assert_eq!(db.memtable_budget(), 12 << 20);
        let sm = cf(&db, &keys::sm_cf("g")).unwrap();
        let log = cf(&db, &keys::log_cf("g")).unwrap();
        let write = |cf, from: u32, n: u32| {
            for i in from..from + n {
                db.put_cf(cf, format!("key-{i:06}"), [7u8; 512]).unwrap();
            }
        };
        let tables = |cf| {
            db.property_int_value_cf(cf, "rocksdb.num-files-at-level0")
                .unwrap()
                .unwrap()
        };
        write(sm, 0, 100);
        assert_eq!(
            db.flush_if_holding(1 << 20).unwrap(),
            None,
            "50 KB: left alone"
        );
        assert_eq!(tables(sm), 0);

        write(sm, 100, 900);
        write(log, 0, 1000);
        let held = db
            .flush_if_holding(1 << 20)
            .unwrap()
            .expect("1 MB: flushed");
        assert!(held >= 1 << 20, "{held}");
        assert_eq!((tables(sm), tables(log)), (1, 1), "every family flushed");
        let after = db.memory().unwrap().memtables;
        assert!(after < held / 2, "memtables {held} -> {after}");
        // Everything is still there.
        for i in (0..1000u32).step_by(37) {
            assert!(db.get_cf(sm, format!("key-{i:06}")).unwrap().is_some());
            assert!(db.get_cf(log, format!("key-{i:06}")).unwrap().is_some());
        }
    }

    #[test]
    fn flushes_one_group_and_leaves_the_others() {
        let td = tempfile::tempdir().unwrap();
        let db = open_with(td.path(), &["quiet", "busy"], StorageBudget::from_mib(16)).unwrap();
        let put = |g, n: u32| {
            for name in [keys::log_cf(g), keys::sm_cf(g)] {
                let family = cf(&db, &name).unwrap();
                for i in 0..n {
                    db.put_cf(family, format!("key-{i:06}"), [7u8; 512])
                        .unwrap();
                }
            }
        };
        let tables = |name: String| {
            db.property_int_value_cf(cf(&db, &name).unwrap(), "rocksdb.num-files-at-level0")
                .unwrap()
                .unwrap()
        };
        put("quiet", 100);
        put("busy", 1200);
        assert_eq!(
            db.flush_group_if_holding("quiet", 1 << 20).unwrap(),
            None,
            "100 KB: left alone"
        );
        put("quiet", 1200);
        let quiet_before = db.group_memtables("quiet").unwrap();
        let busy_before = db.group_memtables("busy").unwrap();
        assert!(quiet_before >= 1 << 20, "{quiet_before}");
        let held = db
            .flush_group_if_holding("quiet", 1 << 20)
            .unwrap()
            .expect("1.2 MB: flushed");
        assert_eq!(held, quiet_before);
        assert_eq!(tables(keys::log_cf("quiet")), 1);
        assert_eq!(tables(keys::sm_cf("quiet")), 1);
        assert_eq!(
            tables(keys::log_cf("busy")),
            0,
            "the other group is left alone"
        );
        assert_eq!(tables(keys::sm_cf("busy")), 0);
        assert!(db.group_memtables("quiet").unwrap() < quiet_before / 2);
        assert_eq!(db.group_memtables("busy").unwrap(), busy_before);
        let sm = cf(&db, &keys::sm_cf("quiet")).unwrap();
        assert!(db.get_cf(sm, "key-001000").unwrap().is_some());
    }
}
