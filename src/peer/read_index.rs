//! Followers' read indexes, coalesced per leader, group and policy.
//!
//! A linearizable read on a follower needs the leader's read index (its commit
//! position, with its leadership confirmed) as of some moment after the read arrived.
//! One `ReadIndex` call made after several reads arrived serves them all, so a
//! follower no longer makes a peer call per read: reads queue per (leader, group,
//! policy) in a [`Coalescer`], and every call carries the reads that queued before it
//! left (the coalescer's guarantee). Under light load a read's call leaves at once; the
//! leader coalesces the heartbeat rounds that confirm its leadership in the same way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::client::PeerClient;
use super::coalesce::{Coalescer, Limits, Queued};
use crate::error::{Error, Result};
use crate::raft::types::LogId;

const LIMITS: Limits = Limits {
    items: 4096,
    bytes: usize::MAX,
    in_flight: 4,
    idle: Duration::from_secs(60),
    queue: 8192,
};

/// One read waiting for a read index.
struct Waiter {
    deadline: Instant,
    reply: oneshot::Sender<Result<LogId>>,
}

impl Queued for Waiter {
    fn size(&self) -> usize {
        0
    }
}

/// The queues, and what went through them.
pub(crate) struct ReadIndexes {
    queues: Coalescer<Waiter>,
    /// `ReadIndex` calls sent.
    calls: AtomicU64,
    /// Reads those calls served.
    reads: AtomicU64,
}

impl Default for ReadIndexes {
    fn default() -> Self {
        ReadIndexes {
            queues: Coalescer::new(LIMITS),
            calls: AtomicU64::default(),
            reads: AtomicU64::default(),
        }
    }
}

impl ReadIndexes {
    /// `(calls, reads)` so far.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.calls.load(Ordering::Relaxed),
            self.reads.load(Ordering::Relaxed),
        )
    }
}

impl PeerClient {
    /// The read index of the leader at `addr` for `group`, asked for after this call
    /// began (shared with the other reads waiting for the same leader and group).
    pub async fn read_index(
        &self,
        addr: &str,
        group: &str,
        lease: bool,
        timeout: Duration,
    ) -> Result<LogId> {
        let (reply, answer) = oneshot::channel();
        let waiter = Waiter {
            deadline: Instant::now() + timeout,
            reply,
        };
        let policy = if lease { "lease" } else { "read-index" };
        self.enqueue(
            &self.read_indexes().queues,
            addr,
            group,
            policy,
            waiter,
            move |client, to, g, batch| async move { call(&client, &to, &g, lease, batch).await },
        )
        .await?;
        answer.await.unwrap_or_else(|_| {
            Err(Error::unavailable(format!(
                "the read-index call to leader {addr} (group {group}) stopped before it answered"
            )))
        })
    }
}

/// One `ReadIndex` call for every read of `batch` still waiting.
async fn call(client: &PeerClient, addr: &str, group: &str, lease: bool, batch: Vec<Waiter>) {
    let now = Instant::now();
    let mut live = Vec::with_capacity(batch.len());
    for w in batch {
        if w.reply.is_closed() {
            continue;
        }
        if w.deadline <= now {
            // Waited in the queue past its deadline (every call slot was busy).
            let _ = w.reply.send(Err(Error::unavailable(format!(
                "the read's deadline passed before a read index could be asked of leader {addr} (group {group})"
            ))));
            continue;
        }
        live.push(w);
    }
    let Some(longest) = live.iter().map(|w| w.deadline - now).max() else {
        return;
    };
    let counts = client.read_indexes();
    counts.calls.fetch_add(1, Ordering::Relaxed);
    counts.reads.fetch_add(live.len() as u64, Ordering::Relaxed);
    let result = client.read_index_once(addr, group, lease, longest).await;
    for w in live {
        let _ = w.reply.send(result.clone());
    }
}
