//! The consistency layer: how a write or a read reaches the right replica (Nacos's
//! `JRaftProtocol` `write` / `invokeToLeader` / `readIndex` / `readFromLeader`).
//!
//! Writes: propose on this node if it leads the group, otherwise forward to the
//! leader over the peer port. A write is retried against a new leader only when the
//! failure proves it was never proposed (the target was not leader, or the
//! connection could not be made); when it might have been proposed (timeout, lost
//! connection, entry discarded by a leader change) the caller gets
//! [`Error::UnknownOutcome`](crate::error::Error::UnknownOutcome) and nothing is
//! retried, so no write is ever applied twice by this layer.
//!
//! Reads take a [`ReadLevel`]:
//! - `Linearizable` (default): read-index. The leader confirms its leadership with a
//!   heartbeat quorum and returns its commit position; a follower asks the leader for
//!   it, waits (bounded) until it has applied that far, and reads locally. Any failure
//!   falls back to running the read on the leader.
//! - `Lease`: as above, but the leader answers from its lease (no quorum round trip;
//!   assumes bounded clock drift).
//! - `Stale`: the local state as it is, even with no leader.
//!
//! A request this node sends to the leader it knows (a forwarded write, a read index,
//! a read run on the leader) is abandoned as soon as this node learns that leadership
//! moved on (`while_leader_is`): an old leader that was cut off would otherwise hold it
//! until its deadline, long after a new leader took over. An abandoned read is retried
//! against the new leader; an abandoned write is reported as an unknown outcome (the
//! old leader may have appended it, and a new leader may yet commit it).
//!
//! A node that has been out of contact with a group's quorum for more than two leader
//! leases (`Group::cut_off_for`: partitioned away, or the majority is down) answers
//! `Unavailable` at once instead of retrying until the client's deadline, so clients
//! move on to another node.
//!
//! This layer knows nothing about what a group stores: commands and queries are bytes.

mod read;
mod write;

pub use read::{read, read_index_on_leader, read_on_leader, ReadLevel};
pub use write::{write, write_many_on_leader, write_on_leader, Proposals};

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use openraft::rt::watch::WatchReceiver;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::raft::node::{Group, GroupCounters, MultiRaft};
use crate::raft::types::NodeId;

/// The group, if this node leads it; otherwise `Unavailable` (not proposed, safe to
/// retry elsewhere) naming the leader when known. Requests forwarded here by a
/// follower stop at this check: they are never forwarded again.
fn led_here<'a>(node: &'a MultiRaft, group_name: &str) -> Result<&'a Arc<Group>> {
    let group = node.group(group_name)?;
    if !group.raft.is_leader() {
        return Err(Error::Unavailable {
            message: format!(
                "node {} is not the leader of group {}",
                node.node_id, group.name
            ),
            leader: group.leader(),
        });
    }
    Ok(group)
}

/// The node is cut off from the group's quorum (partitioned away, or the group lost
/// its majority): fail now with `Unavailable`, so the client tries another node, rather
/// than hold the request here until its deadline.
fn cut_off(node: &MultiRaft, group: &Group, for_: Duration) -> Error {
    if node.identity().cluster_id().is_none() {
        return Error::unavailable(format!(
            "node {} is not part of a cluster yet (its data directory is new: it is waiting to bootstrap or to be admitted); send the request to another node",
            node.node_id
        ));
    }
    Error::Unavailable {
        message: format!(
            "node {} has been out of contact with the majority of group {} for {} ms; send the request to another node",
            node.node_id,
            group.name,
            for_.as_millis()
        ),
        leader: None,
    }
}

/// Runs `call`, a request to `leader` (this node's view of the group's leader when the
/// request was sent), until it completes or this node's view of the leader changes,
/// whichever comes first. `Err` with the new view (`None`: no leader known, an
/// election is under way) when the call was abandoned.
async fn while_leader_is<T>(
    group: &Group,
    leader: NodeId,
    call: impl Future<Output = T>,
) -> std::result::Result<T, Option<NodeId>> {
    // Server metrics: they change with the leader, not at every turn of the core loop.
    let mut rx = group.raft.server_metrics();
    let moved_on = async move {
        loop {
            let current = rx.borrow_watched().current_leader;
            if current != Some(leader) {
                return current;
            }
            if rx.changed().await.is_err() {
                // The group stopped: the call itself will fail soon enough.
                return std::future::pending().await;
            }
        }
    };
    tokio::select! {
        done = call => Ok(done),
        now = moved_on => Err(now),
    }
}

/// How a change of leader reads in an error message.
fn describe_leader(leader: Option<NodeId>) -> String {
    leader.map_or("no leader (an election is under way)".to_string(), |id| {
        format!("node {id}")
    })
}

/// Wait up to `wait` for this node to learn of a leader other than the one it knows.
async fn wait_for_leader_change(group: &Group, wait: Duration) {
    let mut rx = group.raft.server_metrics();
    let before = rx.borrow_watched().current_leader;
    let _ = tokio::time::timeout(wait, async {
        while rx.changed().await.is_ok() {
            let now = rx.borrow_watched().current_leader;
            if now.is_some() && now != before {
                return;
            }
        }
    })
    .await;
}

/// Where a request goes: the group's leader as this node sees it now.
enum Route {
    /// This node leads the group.
    Here,
    /// Another node does (id, peer address).
    Leader(NodeId, String),
}

/// Runs `attempt` against the group's leader, again after every `Unavailable` (the
/// request reached no leader, or the leader moved on before answering: safe to
/// repeat), waiting a growing while for news of a leader in between, until it answers
/// anything else or `deadline` passes, or this node is cut off from the group's
/// quorum (then `Unavailable` at once). Each retry counts in `retries`, when given.
/// `purpose` completes the final error ("group config has no reachable leader
/// {purpose}before the deadline").
async fn until_a_leader_answers<T, F, Fut>(
    node: &MultiRaft,
    group: &Group,
    deadline: Instant,
    purpose: &str,
    retries: Option<&AtomicU64>,
    mut attempt: F,
) -> Result<T>
where
    F: FnMut(Route, Duration) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut backoff = Duration::from_millis(5);
    let mut last_error: Option<Error> = None;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            let detail = last_error
                .map(|e| format!(" (last attempt: {e})"))
                .unwrap_or_default();
            return Err(Error::Unavailable {
                message: format!(
                    "group {} has no reachable leader {purpose}before the deadline{detail}",
                    group.name
                ),
                leader: group.leader(),
            });
        }
        if let Some(cut_off) = group.cut_off_for() {
            return Err(self::cut_off(node, group, cut_off));
        }
        let result = if group.raft.is_leader() {
            attempt(Route::Here, remaining).await
        } else {
            match group.leader() {
                // Metrics say we lead but the state says otherwise: in transition.
                Some((id, _)) if id == node.node_id => {
                    Err(Error::unavailable("leadership in transition"))
                }
                Some((id, addr)) => attempt(Route::Leader(id, addr), remaining).await,
                None => Err(Error::unavailable("no leader known")),
            }
        };
        match result {
            Err(e @ Error::Unavailable { .. }) => {
                if let Some(counter) = retries {
                    GroupCounters::inc(counter);
                }
                last_error = Some(e);
                let wait = backoff.min(deadline.saturating_duration_since(Instant::now()));
                wait_for_leader_change(group, wait).await;
                backoff = (backoff * 2).min(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}
