//! The write path: propose on the leader, forward from followers.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use openraft::errors::{ClientWriteError, Fatal, RaftError};
use openraft::raft::WriteResult;
use tokio::sync::{mpsc, oneshot};
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
                    let proposed = group.proposals.propose(group, cmd.clone(), remaining);
                    (false, proposed.await)
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
    GroupCounters::inc(&group.counters.proposal_batches);
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
                Ok(item) => Some(as_raft_result(item.ok())),
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

/// Most writes in one batch of a group's proposal queue.
const PROPOSAL_BATCH: usize = 1024;
/// Writes waiting in a group's proposal queue before callers wait to enqueue.
const PROPOSAL_QUEUE: usize = 8192;

/// The client writes this node proposes as the leader of one group, handed to the
/// group's Raft core in batches.
///
/// Every write that reached the leader used to be one `client_write`: one message from
/// the client runtime to the group's core on the control runtime, which woke a control
/// thread for each write, and one wake-up back for each result. Now a write goes into
/// its group's queue; the queue's task takes everything waiting, proposes it with one
/// `client_write_many`, and hands the batch's results, which come in log order, to a
/// task that answers each write. Under light load a write leaves at once, alone; under
/// load writes pile up while the task submits the previous batch, and the next batch
/// takes them all. Nothing waits for a timer. Each write keeps its own deadline; one
/// whose caller stopped waiting while it was queued is dropped, never proposed (the
/// caller was told the outcome is unknown, which allows that).
#[derive(Default)]
pub struct Proposals {
    queue: std::sync::OnceLock<mpsc::Sender<Proposal>>,
}

struct Proposal {
    cmd: Command,
    deadline: Instant,
    reply: oneshot::Sender<Result<Vec<u8>>>,
}

impl Proposals {
    /// Propose `cmd` on this node, the leader of `group`, within `timeout`.
    pub async fn propose(
        &self,
        group: &Arc<Group>,
        cmd: Command,
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        let (reply, answer) = oneshot::channel();
        let deadline = Instant::now() + timeout;
        let queue = self
            .queue
            .get_or_init(|| start_proposals(Arc::downgrade(group)));
        let proposal = Proposal {
            cmd,
            deadline,
            reply,
        };
        if queue.send(proposal).await.is_err() {
            return Err(Error::unavailable(format!(
                "group {} stopped on this node; the write was not proposed",
                group.name
            )));
        }
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::UnknownOutcome(format!(
                "group {} stopped on this node while handling the write; it may or may not have been applied",
                group.name
            ))),
            Err(_) => outcome(group, None, timeout),
        }
    }
}

/// The task of a group's proposal queue (see [`Proposals`]). It holds the group weakly:
/// the group owns the queue, and the task ends with it.
fn start_proposals(group: std::sync::Weak<Group>) -> mpsc::Sender<Proposal> {
    let (tx, mut rx) = mpsc::channel::<Proposal>(PROPOSAL_QUEUE);
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < PROPOSAL_BATCH {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            let Some(group) = group.upgrade() else {
                return;
            };
            let now = Instant::now();
            let mut cmds = Vec::with_capacity(batch.len());
            let mut replies = Vec::with_capacity(batch.len());
            for p in batch {
                if p.reply.is_closed() {
                    continue;
                }
                if p.deadline <= now {
                    let _ = p.reply.send(Err(Error::DeadlineExceeded(format!(
                        "the write to group {} waited in the proposal queue past its deadline; it was not proposed",
                        group.name
                    ))));
                    continue;
                }
                cmds.push(p.cmd);
                replies.push(p.reply);
            }
            if cmds.is_empty() {
                continue;
            }
            GroupCounters::inc(&group.counters.proposal_batches);
            let mut results = match group.raft.client_write_many(cmds).await {
                Ok(stream) => stream,
                Err(fatal) => {
                    let e = outcome(&group, Some(Err(RaftError::Fatal(fatal))), Duration::ZERO);
                    for reply in replies {
                        let _ = reply.send(e.clone());
                    }
                    continue;
                }
            };
            tokio::spawn(async move {
                for reply in replies {
                    let result = as_raft_result(results.next().await);
                    let _ = reply.send(outcome(&group, Some(result), Duration::ZERO));
                }
            });
        }
    });
    tx
}

async fn propose(group: &Group, cmd: Command, timeout: Duration) -> Result<Vec<u8>> {
    let result = tokio::time::timeout(timeout, group.raft.client_write(cmd))
        .await
        .ok()
        .map(|r| r.map(|resp| resp.data));
    outcome(group, result, timeout)
}

/// One item of a `client_write_many` stream as `client_write` would have answered it;
/// `None` (the stream ended, or its item was lost, before this write's result) means
/// the group's core stopped.
fn as_raft_result(
    item: Option<std::result::Result<WriteResult<TypeConfig>, Fatal<TypeConfig>>>,
) -> std::result::Result<CommandResult, RaftError<TypeConfig, ClientWriteError<TypeConfig>>> {
    match item {
        Some(Ok(Ok(resp))) => Ok(resp.response),
        Some(Ok(Err(e))) => Err(RaftError::APIError(e)),
        Some(Err(fatal)) => Err(RaftError::Fatal(fatal)),
        None => Err(RaftError::Fatal(Fatal::Stopped)),
    }
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
