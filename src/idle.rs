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
//! 1. flush every column family's memtables to tables if together they hold 1 MiB or
//!    more (`raft::node::IDLE_FLUSH_MIN`; a quarter of their budget if that is less),
//!    so that a light load does not write tiny tables; a flushed memtable also
//!    shortens the WAL a restart replays;
//! 2. purge every jemalloc arena's freed pages (`arena.<all>.purge`): what the flush
//!    freed, and whatever else the load left, returned now instead of over jemalloc's
//!    decay time (src/bin/nacosd.rs).
//!
//! A node that stays busy keeps its buffers; one that stops gives them back within
//! about a window. Writes, not the process's CPU time, say "busy": a share of a core
//! below which a node counts as idle did not hold across builds and machines (an idle
//! debug build uses 6-8 % of a core, a release build 2 %). Loads without writes (reads,
//! ephemeral registrations) grow no memtable, and the allocator's decay returns what
//! they free within a quarter second. A light write load runs the housekeeping after
//! each write followed by a quiet window: the purge then finds a few pages
//! (microseconds), and the flush waits for 1 MiB. `nacosd_idle_flushes_total`, `nacosd_allocator_idle_purges_total`
//! and `nacosd_allocator_purged_bytes_total` count them (docs/OPERATIONS.md).

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

/// The sum of every group's last log index on this node: it grows with every entry
/// appended, as leader or follower.
fn log_position(node: &MultiRaft) -> u64 {
    node.groups()
        .map(|g| {
            g.raft
                .metrics()
                .borrow_watched()
                .last_log_index
                .unwrap_or(0)
        })
        .sum()
}

/// Watches the groups' logs and does the housekeeping of the module docs whenever
/// the node falls quiet after writes, until `stop`.
pub async fn run(node: Arc<MultiRaft>, mut stop: watch::Receiver<bool>) {
    let mut detector = IdleDetector::default();
    let mut last = log_position(&node);
    let mut ticker = tokio::time::interval(WINDOW);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let now = log_position(&node);
        let written = now != last;
        last = now;
        if !detector.window(written) {
            continue;
        }
        let node = node.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || housekeep(&node)).await {
            tracing::warn!(error = %e, "the idle housekeeping task failed");
        }
    }
}

/// The flush, then the purge (module docs). Failures are logged: both only give
/// memory back, nothing depends on them.
fn housekeep(node: &MultiRaft) {
    match node.flush_memtables_if_large() {
        Ok(Some(held)) => {
            node.counters.idle_flushes.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                memtable_bytes = held,
                "flushed the memtables: the node is idle"
            );
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "flushing the memtables of an idle node"),
    }
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
}
