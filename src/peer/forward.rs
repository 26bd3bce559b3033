//! Forwarded writes, batched per leader and group.
//!
//! A follower used to forward each client write to the leader as a unary call of its
//! own: at 256 clients spread over three nodes, two thirds of the writes were a peer
//! HTTP/2 stream each, on the connection that also carries the heartbeats, and
//! throughput fell to a third of what the same load reached sent to the leader alone.
//! Now every (leader address, group) has a queue ([`super::coalesce`]) whose task sends
//! what has queued up as one `ForwardWrites` call, with at most [`IN_FLIGHT`] calls
//! outstanding: under light load a write leaves at once, alone; under heavy load the
//! calls fill up while the previous ones are in flight. No write ever waits for a timer.
//!
//! Each write keeps its own deadline and its own result, and the rule of
//! `peer::client` holds per write: `Unavailable` only when the call provably did not
//! reach the leader or was refused before it ran, otherwise the leader's own answer or
//! "unknown outcome". A write whose caller gave up while it was queued (its deadline
//! passed, or the caller stopped waiting) is not sent. A leader that does not know
//! `ForwardWrites` (an older build during a rolling upgrade) gets the writes one by one.

use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;
use tokio::time::Instant;

use super::client::{decode_result, write_failed, PeerClient, FORWARD_HEADROOM};
use super::coalesce::{still_waiting, CallCounts, Coalescer, Limits, Queued, Waiting};
use crate::error::{Error, Result};
use crate::pb;

/// Calls outstanding per leader and group. Two, not more: every call is a peer HTTP/2
/// exchange whose cost does not depend on how many writes it carries, and fewer calls
/// in flight make each one carry more. Against four, `bench/ab.sh` of publish gave
/// 2 % more throughput at 64 clients and 5 % at 256, with 5 % less CPU per write; one
/// gained 3 % more at 64 clients but nothing at 256, with a worse p99 there (a write
/// that just missed a call waits for that call's whole commit).
const IN_FLIGHT: usize = 2;
const LIMITS: Limits = Limits {
    // Most writes in one call.
    items: 512,
    // Most command bytes in one call (well under the peer message limit).
    bytes: 2 << 20,
    in_flight: IN_FLIGHT,
    idle: Duration::from_secs(60),
    // Writes waiting per leader and group before callers wait to enqueue.
    queue: 8192,
};

/// One write waiting to be forwarded: its encoded command, answered with the encoded
/// reply.
type Pending = Waiting<Vec<u8>, Vec<u8>>;

impl Queued for Pending {
    fn size(&self) -> usize {
        self.payload.len()
    }
}

/// The queues, by (leader address, group), and what went through them.
pub(crate) struct Batches {
    queues: Coalescer<Pending>,
    /// `ForwardWrites` calls sent, and the writes they carried.
    counts: CallCounts,
    /// Writes per call.
    sizes: Histogram,
}

impl Default for Batches {
    fn default() -> Self {
        Batches {
            queues: Coalescer::new(LIMITS),
            counts: CallCounts::default(),
            sizes: Histogram::new(crate::metrics::count_buckets()),
        }
    }
}

impl Batches {
    /// `(calls, writes)` sent so far.
    pub(crate) fn counts(&self) -> (u64, u64) {
        self.counts.get()
    }

    /// Writes per `ForwardWrites` call (shared: observations made later show up).
    pub(crate) fn sizes(&self) -> Histogram {
        self.sizes.clone()
    }
}

impl PeerClient {
    /// Propose `command` (already encoded) on the leader at `addr`, batched with the
    /// other writes forwarded there for `group`.
    pub(crate) async fn forward_encoded(
        &self,
        addr: &str,
        group: &str,
        command: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        let (pending, answer) = Pending::new(command, timeout);
        self.enqueue(
            &self.batches().queues,
            addr,
            group,
            "",
            pending,
            |client, to, g, batch| async move { send(&client, &to, &g, batch).await },
        )
        .await?;
        answer.await.unwrap_or_else(|_| {
            Err(Error::UnknownOutcome(format!(
                "the forwarding of a write to leader {addr} (group {group}) stopped before it answered; it may or may not have been applied"
            )))
        })
    }
}

/// Send one batch and hand every write its result.
async fn send(client: &PeerClient, addr: &str, group: &str, batch: Vec<Pending>) {
    let now = Instant::now();
    let expired = || {
        Error::unavailable(format!(
            "the write's deadline passed before it could be forwarded to leader {addr} (group {group})"
        ))
    };
    let Some((live, longest)) = still_waiting(batch, now, expired) else {
        return;
    };
    let message = pb::ForwardWritesRequest {
        group: group.to_string(),
        writes: live
            .iter()
            .map(|p| pb::ForwardedWrite {
                command: p.payload.clone(),
                timeout_ms: (p.deadline - now).as_millis() as u64,
            })
            .collect(),
    };
    let batches = client.batches();
    batches.counts.record(live.len());
    batches.sizes.observe(live.len() as f64);
    let req = client.request(message, Some(longest + FORWARD_HEADROOM));
    let call = match client.raft(addr, super::channels::Lane::Control) {
        Ok(mut c) => c.forward_writes(req).await,
        Err(e) => {
            let error = Error::unavailable(format!("bad peer address {addr}: {e}"));
            return answer_all(live, error);
        }
    };
    match call {
        Ok(reply) => {
            let results = reply.into_inner().results;
            if results.len() != live.len() {
                let message = format!(
                    "leader {addr} answered {} results for {} forwarded writes",
                    results.len(),
                    live.len()
                );
                return answer_all(live, Error::UnknownOutcome(message));
            }
            for (p, result) in live.into_iter().zip(results) {
                let _ = p
                    .reply
                    .send(decode_result(&result, "forwarded write reply"));
            }
        }
        // An older leader: one call per write, as before.
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            for p in live {
                let timeout = p.deadline.saturating_duration_since(Instant::now());
                let result = client.forward_one(addr, group, p.payload, timeout).await;
                let _ = p.reply.send(result);
            }
        }
        Err(status) => answer_all(live, write_failed(addr, group, &status)),
    }
}

/// Every write of `batch` fails with `error`.
fn answer_all(batch: Vec<Pending>, error: Error) {
    for p in batch {
        let _ = p.reply.send(Err(error.clone()));
    }
}
