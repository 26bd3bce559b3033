//! The write path: propose on the leader, forward from followers.

use std::time::Duration;

use futures::StreamExt;
use openraft::errors::{ClientWriteError, RaftError};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::Route;
use crate::error::{Error, Result};
use crate::raft::node::{Group, GroupCounters, MultiRaft};
use crate::raft::types::{Command, CommandResult, NodeId, TypeConfig};

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

/// Propose `cmds` (each with its own timeout) on this node, which must lead the group,
/// in one hand-off to its Raft core: the writes a follower forwarded in one call. One
/// message to the core instead of one per write, and one task on this side awaiting
/// them in log order; each write is still answered on its own, within its own timeout.
pub async fn write_many_on_leader(
    node: &MultiRaft,
    group_name: &str,
    cmds: Vec<(Command, Duration)>,
) -> Vec<Result<Vec<u8>>> {
    let n = cmds.len();
    let group = match super::led_here(node, group_name) {
        Ok(g) => g,
        Err(e) => return vec![Err(e); n],
    };
    group
        .counters
        .writes_local
        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    let (cmds, timeouts): (Vec<Command>, Vec<Duration>) = cmds.into_iter().unzip();
    let mut stream = match group.raft.client_write_many(cmds).await {
        Ok(s) => s,
        Err(fatal) => {
            let e = outcome(group, Some(Err(RaftError::Fatal(fatal))), Duration::ZERO);
            return vec![e; n];
        }
    };
    let (senders, answers): (Vec<_>, Vec<_>) = (0..n).map(|_| oneshot::channel()).unzip();
    // The results come in log order; `drive` hands each to its write, whose wait ends
    // at its own deadline. It never finishes by itself: the waits decide when to stop.
    let drive = async move {
        for tx in senders {
            match stream.next().await {
                Some(result) => {
                    let _ = tx.send(result);
                }
                None => break,
            }
        }
        std::future::pending::<Vec<Result<Vec<u8>>>>().await
    };
    let waits = futures::future::join_all(answers.into_iter().zip(timeouts).map(
        |(answer, timeout)| async move {
            let result = match tokio::time::timeout_at(started + timeout, answer).await {
                Ok(Ok(Ok(Ok(resp)))) => Some(Ok(resp.response)),
                Ok(Ok(Ok(Err(e)))) => Some(Err(RaftError::APIError(e))),
                Ok(Ok(Err(fatal))) => Some(Err(RaftError::Fatal(fatal))),
                // The stream ended before this write's result: the core stopped.
                Ok(Err(_)) => Some(Err(RaftError::Fatal(openraft::errors::Fatal::Stopped))),
                Err(_) => None,
            };
            outcome(group, result, timeout)
        },
    ));
    tokio::select! {
        results = waits => results,
        never = drive => never,
    }
}

async fn propose(group: &Group, cmd: Command, timeout: Duration) -> Result<Vec<u8>> {
    let result = tokio::time::timeout(timeout, group.raft.client_write(cmd))
        .await
        .ok()
        .map(|r| r.map(|resp| resp.data));
    outcome(group, result, timeout)
}

/// What the client is told about a write proposed on this node: its result, or
/// (`None`) that it was not applied within `timeout`.
fn outcome(
    group: &Group,
    result: Option<
        std::result::Result<CommandResult, RaftError<TypeConfig, ClientWriteError<TypeConfig>>>,
    >,
    timeout: Duration,
) -> Result<Vec<u8>> {
    match result {
        Some(Ok(applied)) => applied.0,
        Some(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
            Err(Error::Unavailable {
                message: format!("not the leader of group {}", group.name),
                leader: f
                    .leader_id
                    .map(|id| (id, f.leader_node.map(|n| n.addr).unwrap_or_default())),
            })
        }
        Some(Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)))) => {
            Err(Error::UnknownOutcome(format!(
                "leader of group {} changed while the write was in flight; it may or may not have been applied",
                group.name
            )))
        }
        Some(Err(RaftError::APIError(e))) => Err(Error::internal(e)),
        // The entry may have been appended (and replicated) before the group stopped:
        // never report this as "not proposed", which would invite a retry.
        Some(Err(RaftError::Fatal(f))) => Err(Error::UnknownOutcome(format!(
            "group {} stopped on this node while handling the write ({f}); it may or may not have been applied",
            group.name
        ))),
        None => Err(Error::UnknownOutcome(format!(
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
