//! Followers' read indexes, coalesced per leader, group and policy.
//!
//! A linearizable read on a follower needs the leader's read index (its commit
//! position, with its leadership confirmed) as of some moment after the read arrived.
//! One `ReadIndex` call made after several reads arrived serves them all, so a
//! follower no longer makes a peer call per read: reads queue per (leader, group,
//! policy) in a [`Coalescer`], and every call carries the reads that queued before it
//! left (the coalescer's guarantee). Under light load a read's call leaves at once; the
//! leader coalesces the heartbeat rounds that confirm its leadership in the same way.

use std::time::Duration;

use tokio::time::Instant;

use super::client::PeerClient;
use super::coalesce::{still_waiting, CallCounts, Coalescer, Limits, Queued, Waiting};
use crate::error::{Error, Result};
use crate::raft::types::LogId;

/// One call in flight per leader, group and policy, as etcd's read loop does: reads that
/// arrive while it is out wait for it and leave together in the next. A call costs the
/// leader and this node a peer exchange each, whatever the number of reads it serves;
/// with four in flight a call served 3.4 reads at 64 clients, and one in flight gave
/// 7 % more linearizable reads at 64 and at 256 clients with 10 % less CPU per read
/// (`bench/ab.sh`), at no cost at one client (nothing to wait for).
const LIMITS: Limits = Limits {
    items: 4096,
    bytes: usize::MAX,
    in_flight: 1,
    idle: Duration::from_secs(60),
    queue: 8192,
};

/// One read waiting for a read index (the call carries nothing for it).
type Waiter = Waiting<(), LogId>;

impl Queued for Waiter {
    fn size(&self) -> usize {
        0
    }
}

/// The queues, and what went through them.
pub(crate) struct ReadIndexes {
    queues: Coalescer<Waiter>,
    /// `ReadIndex` calls sent, and the reads they served.
    counts: CallCounts,
}

impl Default for ReadIndexes {
    fn default() -> Self {
        ReadIndexes {
            queues: Coalescer::new(LIMITS),
            counts: CallCounts::default(),
        }
    }
}

impl ReadIndexes {
    /// `(calls, reads)` so far.
    pub(crate) fn counts(&self) -> (u64, u64) {
        self.counts.get()
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
        let (waiter, answer) = Waiter::new((), timeout);
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
    let expired = || {
        Error::unavailable(format!(
            "the read's deadline passed before a read index could be asked of leader {addr} (group {group})"
        ))
    };
    let Some((live, longest)) = still_waiting(batch, Instant::now(), expired) else {
        return;
    };
    client.read_indexes().counts.record(live.len());
    let result = client.read_index_once(addr, group, lease, longest).await;
    for w in live {
        let _ = w.reply.send(result.clone());
    }
}
