//! The write path: propose on the leader, forward from followers.

use std::time::Duration;

use openraft::errors::{ClientWriteError, RaftError};
use tokio::time::Instant;

use super::Route;
use crate::error::{Error, Result};
use crate::raft::node::{Group, GroupCounters, MultiRaft};
use crate::raft::types::{Command, NodeId};

/// Apply `cmd` to `group` through its leader, wherever that is, within `timeout`
/// (default: the node's configured default).
pub async fn write(
    node: &MultiRaft,
    group_name: &str,
    cmd: Command,
    timeout: Option<Duration>,
) -> Result<Vec<u8>> {
    let group = node.group(group_name)?;
    let started = Instant::now();
    let deadline = started + timeout.unwrap_or(node.default_timeout);
    let retries = Some(&group.counters.write_retries);
    super::until_a_leader_answers(node, group, deadline, "", retries, |route, remaining| {
        let cmd = &cmd;
        async move {
            let (forwarded, result) = match route {
                Route::Here => {
                    GroupCounters::inc(&group.counters.writes_local);
                    (false, propose(group, cmd.clone(), remaining).await)
                }
                Route::Leader(leader_id, addr) => {
                    GroupCounters::inc(&group.counters.writes_forwarded);
                    let result = forward(node, group, leader_id, &addr, cmd, remaining).await;
                    (true, result)
                }
            };
            if result.is_ok() {
                node.metrics
                    .observe_write(&group.name, forwarded, started.elapsed());
            }
            result
        }
    })
    .await
}

/// Propose on this node, which must lead the group. Used for local writes and for
/// writes forwarded here by a follower.
pub async fn write_on_leader(
    node: &MultiRaft,
    group_name: &str,
    cmd: Command,
    timeout: Duration,
) -> Result<Vec<u8>> {
    let group = super::led_here(node, group_name)?;
    GroupCounters::inc(&group.counters.writes_local);
    propose(group, cmd, timeout).await
}

async fn propose(group: &Group, cmd: Command, timeout: Duration) -> Result<Vec<u8>> {
    match tokio::time::timeout(timeout, group.raft.client_write(cmd)).await {
        Ok(Ok(resp)) => resp.data.0,
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
            Err(Error::Unavailable {
                message: format!("not the leader of group {}", group.name),
                leader: f
                    .leader_id
                    .map(|id| (id, f.leader_node.map(|n| n.addr).unwrap_or_default())),
            })
        }
        Ok(Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)))) => {
            Err(Error::UnknownOutcome(format!(
                "leader of group {} changed while the write was in flight; it may or may not have been applied",
                group.name
            )))
        }
        Ok(Err(RaftError::APIError(e))) => Err(Error::internal(e)),
        // The entry may have been appended (and replicated) before the group stopped:
        // never report this as "not proposed", which would invite a retry.
        Ok(Err(RaftError::Fatal(f))) => Err(Error::UnknownOutcome(format!(
            "group {} stopped on this node while handling the write ({f}); it may or may not have been applied",
            group.name
        ))),
        Err(_) => Err(Error::UnknownOutcome(format!(
            "write to group {} was proposed but not applied within {timeout:?}; it may still be applied",
            group.name
        ))),
    }
}

/// Forward `cmd` to the leader `leader_id` at `addr`; abandoned (unknown outcome) when
/// this node learns of a change of leader first.
async fn forward(
    node: &MultiRaft,
    group: &Group,
    leader_id: NodeId,
    addr: &str,
    cmd: &Command,
    timeout: Duration,
) -> Result<Vec<u8>> {
    let call = node.peers.forward_write(addr, &group.name, cmd, timeout);
    match super::while_leader_is(group, leader_id, call).await {
        Ok(result) => result,
        Err(now) => {
            GroupCounters::inc(&group.counters.forwards_abandoned);
            Err(Error::UnknownOutcome(format!(
                "the write was forwarded to node {leader_id}, the leader of group {}, and leadership moved to {} before it answered; it may or may not have been applied",
                group.name,
                super::describe_leader(now)
            )))
        }
    }
}
