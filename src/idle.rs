//! The node's housekeeping when it falls idle: give back the memory a load left behind.
//!
//! Under load a node fills its write buffers (RocksDB's memtables, up to three quarters
//! of `--storage-memory-mib`) and the allocator holds pages freed moments ago for
//! reuse. Neither is needed by a node with nothing to do: the memtables are write
//! buffers, not a cache (reads are served by the state cache and the block cache), and
//! freed pages are only worth keeping while allocations keep coming. So [`run`] watches
//! how far the groups' logs have grown, and after a spell of writes, once a whole
//! [`WINDOW`] passed in which no group appended an entry, it does, once, on the
//! blocking pool:
//!
//! 1. drop every group's log cache (`raft::log_cache`): its readers, the apply and
//!    the replication streams, have had the entries; a follower still behind reads
//!    them from RocksDB;
//! 2. flush every column family's memtables to tables if together they hold 1 MiB or
//!    more (`raft::node::IDLE_FLUSH_MIN`; a quarter of their budget if that is less),
//!    so that a light load does not write tiny tables; a flushed memtable also
//!    shortens the WAL a restart replays;
//! 3. purge every jemalloc arena's freed pages (`arena.<all>.purge`): what the flush
//!    freed, and whatever else the load left, returned now instead of over jemalloc's
//!    decay time (src/bin/nacosd.rs).
//!
//! A group that falls quiet while others still write gets steps 1 and 2 alone, for its
//! own cache and column families: otherwise its cache (2 MiB by default) and last
//! memtables (up to two of a few MiB each) would stay for as long as any other group
//! keeps writing (the cache's entries for ten seconds, `log_cache::MAX_AGE`). The purge
//! waits for the whole node: under load, freed pages are reused at once.
//!
//! A node that stays busy keeps its buffers; one that stops gives them back within
//! about a window. Writes, not the process's CPU time, say "busy": a share of a core
//! below which a node counts as idle did not hold across builds and machines (an idle
//! debug build uses 6-8 % of a core, a release build 2 %). Loads without writes (reads,
//! ephemeral registrations) grow no memtable, and the allocator's decay returns what
//! they free within a quarter second. A light write load runs the housekeeping after
//! each write followed by a quiet window: the purge then finds a few pages
//! (microseconds), and the flush waits for 1 MiB. `nacosd_idle_flushes_total`,
//! `nacosd_group_idle_flushes_total`, `nacosd_allocator_idle_purges_total` and
//! `nacosd_allocator_purged_bytes_total` count them (docs/OPERATIONS.md).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::rt::watch::WatchReceiver;
use tokio::sync::watch;

use crate::raft::node::MultiRaft;

/// How often the groups' logs are looked at; the housekeeping follows the first such
/// window without writes after one with writes.
pub const WINDOW: Duration = Duration::from_millis(500);

static PURGES: AtomicU64 = AtomicU64::new(0);
static PURGED_BYTES: AtomicU64 = AtomicU64::new(0);

/// Allocator purges done by this process (by every node in it), and the resident bytes
/// they returned (jemalloc's `stats.resident` before minus after).
pub fn purge_counts() -> (u64, u64) {
    (
        PURGES.load(Ordering::Relaxed),
        PURGED_BYTES.load(Ordering::Relaxed),
    )
}

/// Whether it is time for the housekeeping; fed one window at a time.
#[derive(Debug)]
pub struct IdleDetector {
    /// A window with writes was seen since the last housekeeping.
    armed: bool,
}

impl Default for IdleDetector {
    /// Armed from the start: a node's start-up (opening RocksDB, replaying the log)
    /// leaves freed pages behind as well.
    fn default() -> Self {
        IdleDetector { armed: true }
    }
}

impl IdleDetector {
    /// One window: whether any group appended to its log in it. True when this window
    /// is the first quiet one after windows with writes.
    pub fn window(&mut self, written: bool) -> bool {
        if written {
            self.armed = true;
            return false;
        }
        std::mem::take(&mut self.armed)
    }
}

/// What is due after a window ([`Watcher::window`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Housekeeping {
    /// Nothing: writes go on, or nothing was written since the last housekeeping.
    Nothing,
    /// The node fell quiet: drop every log cache, flush every group's memtables,
    /// purge the allocator.
    Node,
    /// These groups fell quiet while others still write: drop their log caches and
    /// flush their memtables.
    Groups(Vec<Arc<str>>),
}

/// Each group's log position and [`IdleDetector`], and the node's.
#[derive(Debug)]
pub struct Watcher {
    node: IdleDetector,
    groups: BTreeMap<Arc<str>, (u64, IdleDetector)>,
}

impl Watcher {
    /// Starts from the groups' current log positions (`(group, last log index)`).
    pub fn new(positions: impl IntoIterator<Item = (Arc<str>, u64)>) -> Self {
        Watcher {
            node: IdleDetector::default(),
            groups: positions
                .into_iter()
                .map(|(g, at)| (g, (at, IdleDetector::default())))
                .collect(),
        }
    }

    /// One window, given the groups' log positions at its end.
    pub fn window(&mut self, positions: impl IntoIterator<Item = (Arc<str>, u64)>) -> Housekeeping {
        let mut written = false;
        let mut quiet = Vec::new();
        for (group, at) in positions {
            let (last, detector) = self
                .groups
                .entry(group.clone())
                .or_insert((at, IdleDetector { armed: false }));
            let wrote = at != *last;
            *last = at;
            written |= wrote;
            if detector.window(wrote) {
                quiet.push(group);
            }
        }
        if self.node.window(written) {
            Housekeeping::Node
        } else if quiet.is_empty() {
            Housekeeping::Nothing
        } else {
            Housekeeping::Groups(quiet)
        }
    }
}

/// Every group's last log index on this node: it grows with every entry appended, as
/// leader or follower.
fn log_positions(node: &MultiRaft) -> Vec<(Arc<str>, u64)> {
    node.groups()
        .map(|g| {
            let at = g.raft.metrics().borrow_watched().last_log_index;
            (g.name.clone(), at.unwrap_or(0))
        })
        .collect()
}

/// Watches the groups' logs and does the housekeeping of the module docs whenever
/// the node, or one of its groups, falls quiet after writes, until `stop`.
pub async fn run(node: Arc<MultiRaft>, mut stop: watch::Receiver<bool>) {
    let mut watcher = Watcher::new(log_positions(&node));
    let mut ticker = tokio::time::interval(WINDOW);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let due = watcher.window(log_positions(&node));
        if due == Housekeeping::Nothing {
            continue;
        }
        let node = node.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || housekeep(&node, due)).await {
            tracing::warn!(error = %e, "the idle housekeeping task failed");
        }
    }
}

/// What `due` asks for: the cache drops, the flush and the purge of a quiet node; the
/// cache drops and flushes of quiet groups (module docs). Failures are logged: both
/// only give memory back, nothing depends on them.
fn housekeep(node: &MultiRaft, due: Housekeeping) {
    match due {
        Housekeeping::Nothing => {}
        Housekeeping::Node => {
            for g in node.groups() {
                crate::lock(&g.log_cache).release();
            }
            flushed(node.flush_memtables_if_large(), "every group", || {
                node.counters.idle_flushes.fetch_add(1, Ordering::Relaxed);
            });
            purge_now();
        }
        Housekeeping::Groups(groups) => {
            for name in groups {
                let Ok(g) = node.group(&name) else { continue };
                crate::lock(&g.log_cache).release();
                flushed(node.flush_group_memtables_if_large(&name), &name, || {
                    g.counters.idle_flushes.fetch_add(1, Ordering::Relaxed);
                });
            }
        }
    }
}

/// Logs a flush's outcome; `count` when it flushed.
fn flushed(outcome: std::io::Result<Option<u64>>, what: &str, count: impl FnOnce()) {
    match outcome {
        Ok(Some(held)) => {
            count();
            tracing::debug!(
                memtable_bytes = held,
                groups = what,
                "flushed the memtables: idle"
            );
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e, groups = what, "flushing the memtables of idle groups")
        }
    }
}

fn purge_now() {
    match purge() {
        Ok(returned) => {
            PURGES.fetch_add(1, Ordering::Relaxed);
            PURGED_BYTES.fetch_add(returned, Ordering::Relaxed);
            tracing::debug!(
                returned,
                "purged the allocator's freed pages: the node is idle"
            );
        }
        Err(e) => tracing::debug!(error = %e, "the allocator did not purge"),
    }
}

/// Purges every arena's dirty and muzzy pages; returns the resident bytes that gave
/// back (0 if jemalloc's statistics cannot be read).
#[cfg(target_os = "linux")]
fn purge() -> Result<u64, String> {
    let before = resident();
    // `MALLCTL_ARENAS_ALL` (4096) names every arena at once.
    let name = b"arena.4096.purge\0";
    // SAFETY: `name` is a NUL-terminated mallctl name; a purge is a "void" control,
    // which jemalloc requires to be called with no old and no new value (null
    // pointers and zero length), exactly as here. It reads and writes no memory of ours.
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr().cast(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    if rc != 0 {
        return Err(format!("mallctl arena.4096.purge: error {rc}"));
    }
    Ok(match (before, resident()) {
        (Some(b), Some(a)) => b.saturating_sub(a),
        _ => 0,
    })
}

#[cfg(target_os = "linux")]
fn resident() -> Option<u64> {
    tikv_jemalloc_ctl::epoch::advance().ok()?;
    tikv_jemalloc_ctl::stats::resident::read()
        .ok()
        .map(|v| v as u64)
}

#[cfg(not(target_os = "linux"))]
fn purge() -> Result<u64, String> {
    Err("not built with jemalloc".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn housekeeps_once_per_spell_of_writes() {
        let mut d = IdleDetector::default();
        assert!(d.window(false), "start-up counts as a spell of writes");
        assert!(!d.window(false), "still quiet: nothing new to give back");
        assert!(!d.window(true));
        assert!(!d.window(true));
        assert!(d.window(false), "first quiet window after the writes");
        assert!(!d.window(false));
        assert!(!d.window(true));
        assert!(d.window(false));
    }

    fn at(positions: &[(&str, u64)]) -> Vec<(Arc<str>, u64)> {
        positions.iter().map(|&(g, i)| (Arc::from(g), i)).collect()
    }

    #[test]
    fn flushes_a_group_that_falls_quiet_while_others_write() {
        use Housekeeping::*;
        let mut w = Watcher::new(at(&[("config", 5), ("naming", 7)]));
        assert_eq!(
            w.window(at(&[("config", 5), ("naming", 7)])),
            Node,
            "start-up"
        );
        assert_eq!(w.window(at(&[("config", 5), ("naming", 7)])), Nothing);
        assert_eq!(w.window(at(&[("config", 9), ("naming", 9)])), Nothing);
        assert_eq!(
            w.window(at(&[("config", 9), ("naming", 30)])),
            Groups(vec![Arc::from("config")]),
            "config stopped, naming goes on"
        );
        assert_eq!(
            w.window(at(&[("config", 9), ("naming", 40)])),
            Nothing,
            "once"
        );
        assert_eq!(
            w.window(at(&[("config", 9), ("naming", 40)])),
            Node,
            "all quiet"
        );
        assert_eq!(w.window(at(&[("config", 9), ("naming", 40)])), Nothing);
        // Both stop in the same window: the node's housekeeping covers them.
        assert_eq!(w.window(at(&[("config", 10), ("naming", 41)])), Nothing);
        assert_eq!(w.window(at(&[("config", 10), ("naming", 41)])), Node);
        // A group seen for the first time starts from where it is, with nothing to
        // give back yet.
        assert_eq!(
            w.window(at(&[("config", 11), ("naming", 41), ("db", 3)])),
            Nothing
        );
        assert_eq!(
            w.window(at(&[("config", 12), ("naming", 42), ("db", 4)])),
            Nothing
        );
        assert_eq!(
            w.window(at(&[("config", 13), ("naming", 42), ("db", 4)])),
            Groups(vec![Arc::from("naming"), Arc::from("db")]),
            "armed since the node's housekeeping, or since they were first seen"
        );
    }
}
