//! The read path: read-index on the leader or through it, with leader fallback.

use openraft::rt::watch::WatchReceiver;
use std::time::Duration;

use openraft::raft::linearizable_read::{Linearizer, ReadLogId};
use openraft::ReadPolicy;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::Route;
use crate::error::{Error, Result};
use crate::raft::node::{Group, GroupCounters, MultiRaft};
use crate::raft::types::LogId;

/// How fresh a read must be. See the module docs for what each level costs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadLevel {
    #[default]
    Linearizable,
    Lease,
    Stale,
}

/// Upper bound on how long a follower waits for its state machine to reach the read
/// index before asking the leader to run the read instead (Nacos issue #6583).
const FOLLOWER_APPLY_WAIT: Duration = Duration::from_secs(1);

pub async fn read(
    node: &MultiRaft,
    group_name: &str,
    query: Vec<u8>,
    level: ReadLevel,
    timeout: Option<Duration>,
) -> Result<Vec<u8>> {
    let group = node.group(group_name)?;
    if level == ReadLevel::Stale {
        return group.query(query).await;
    }
    if let Some(cut_off) = group.cut_off_for() {
        return Err(super::cut_off(node, group, cut_off));
    }
    let deadline = Instant::now() + timeout.unwrap_or(node.default_timeout);
    let lease = level == ReadLevel::Lease;
    let remaining = || deadline.saturating_duration_since(Instant::now());

    match read_index(node, group, lease, remaining()).await {
        Ok(read_log_id) => {
            let wait = FOLLOWER_APPLY_WAIT.min(remaining());
            let linearizer = Linearizer::new(
                node.node_id,
                ReadLogId::from_log_id(read_log_id),
                group.raft.metrics().borrow_watched().last_applied,
            );
            match linearizer.try_await_ready(&group.raft, Some(wait)).await {
                Ok(Ok(_)) => return group.query(query).await,
                Ok(Err(state)) => tracing::debug!(
                    group = %group.name,
                    read_index = %state.read_log_id(),
                    "local state machine behind the read index; falling back to the leader"
                ),
                Err(fatal) => {
                    tracing::warn!(group = %group.name, error = %fatal, "read-index wait failed")
                }
            }
        }
        Err(e) => {
            GroupCounters::inc(&group.counters.read_index_failures);
            tracing::debug!(group = %group.name, error = %e, "read-index failed; falling back to the leader")
        }
    }
    GroupCounters::inc(&group.counters.leader_fallbacks);
    read_via_leader(node, group, query, deadline).await
}

/// The read index: obtained locally if this node leads, otherwise from the leader.
async fn read_index(
    node: &MultiRaft,
    group: &Group,
    lease: bool,
    timeout: Duration,
) -> Result<LogId> {
    let started = Instant::now();
    let index = read_index_from_leader(node, group, lease, timeout).await;
    if index.is_ok() {
        node.metrics
            .observe_read_index(&group.name, started.elapsed());
    }
    index
}

async fn read_index_from_leader(
    node: &MultiRaft,
    group: &Group,
    lease: bool,
    timeout: Duration,
) -> Result<LogId> {
    if group.raft.is_leader() {
        return local_read_index(group, lease, timeout).await;
    }
    let (leader_id, addr) = group
        .leader()
        .ok_or_else(|| Error::unavailable(format!("group {} has no leader", group.name)))?;
    if leader_id == node.node_id {
        return Err(Error::unavailable("leadership in transition"));
    }
    let call = node.peers.read_index(&addr, &group.name, lease, timeout);
    super::while_leader_is(group, leader_id, call)
        .await
        .unwrap_or_else(|now| {
            GroupCounters::inc(&group.counters.forwards_abandoned);
            Err(Error::unavailable(format!(
                "leadership of group {} moved from node {leader_id} to {} during the read index",
                group.name,
                super::describe_leader(now)
            )))
        })
}

async fn local_read_index(group: &Group, lease: bool, timeout: Duration) -> Result<LogId> {
    let policy = if lease {
        ReadPolicy::LeaseRead
    } else {
        ReadPolicy::ReadIndex
    };
    match tokio::time::timeout(timeout, group.raft.get_read_linearizer(policy)).await {
        Ok(Ok(l)) => Ok(*l.read_log_id().log_id()),
        Ok(Err(e)) => Err(Error::Unavailable {
            message: format!("group {}: cannot confirm leadership: {e}", group.name),
            leader: group.leader(),
        }),
        Err(_) => Err(Error::DeadlineExceeded(format!(
            "group {}: leadership not confirmed within {timeout:?}",
            group.name
        ))),
    }
}

/// Serve a read-index request from a follower (this node must lead).
pub async fn read_index_on_leader(
    node: &MultiRaft,
    group_name: &str,
    lease: bool,
    timeout: Duration,
) -> Result<LogId> {
    let group = super::led_here(node, group_name)?;
    local_read_index(group, lease, timeout).await
}

/// Run a read on this node as leader: confirm leadership, wait until applied, read.
pub async fn read_on_leader(
    node: &MultiRaft,
    group_name: &str,
    query: Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>> {
    let group = node.group(group_name)?;
    let index = read_index_on_leader(node, group_name, false, timeout).await?;
    let linearizer = Linearizer::new(
        node.node_id,
        ReadLogId::from_log_id(index),
        group.raft.metrics().borrow_watched().last_applied,
    );
    match linearizer.try_await_ready(&group.raft, Some(timeout)).await {
        Ok(Ok(_)) => group.query(query).await,
        Ok(Err(_)) => Err(Error::DeadlineExceeded(format!(
            "group {}: leader did not apply up to the read index in time",
            group.name
        ))),
        Err(f) => Err(Error::unavailable(format!(
            "group {} stopped: {f}",
            group.name
        ))),
    }
}

/// Run the read on the leader, following leadership as it moves: a read has no side
/// effect, so one abandoned because the leader changed (or refused because the target
/// no longer leads) is sent again to the new leader, until the deadline.
async fn read_via_leader(
    node: &MultiRaft,
    group: &Group,
    query: Vec<u8>,
    deadline: Instant,
) -> Result<Vec<u8>> {
    super::until_a_leader_answers(
        node,
        group,
        deadline,
        "to read from ",
        None,
        |route, timeout| {
            let query = &query;
            async move {
                let (leader_id, addr) = match route {
                    Route::Here => {
                        return read_on_leader(node, &group.name, query.clone(), timeout).await
                    }
                    Route::Leader(id, addr) => (id, addr),
                };
                let call = node.peers.forward_read(&addr, &group.name, query, timeout);
                match super::while_leader_is(group, leader_id, call).await {
                    Ok(result) => result,
                    Err(now) => {
                        GroupCounters::inc(&group.counters.forwards_abandoned);
                        Err(Error::unavailable(format!(
                            "leadership moved from node {leader_id} to {} during the read",
                            super::describe_leader(now)
                        )))
                    }
                }
            }
        },
    )
    .await
}
