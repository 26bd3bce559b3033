//! Membership changes applied to every group: admission of a node (new, or back after
//! losing its data) as a learner, its promotion once it has caught up, and the leader
//! side of each group's change.
//!
//! Admission is the same path for a brand-new node and for a node whose disk was wiped:
//! the node asks any member ([`AdminOp::Join`](crate::cluster::admin::AdminOp::Join)),
//! that member makes it a learner of every group — demoting it first where its id is
//! still a voter — and only once every group has committed that does the node receive
//! the cluster id and take part in replication. It catches up (a snapshot if it is far
//! behind) and asks each group's leader to promote it; a leader does so only when the
//! node's log is within [`PROMOTE_MAX_LAG`] entries of its own. Until then the node has
//! no vote, and its acknowledgements count toward no commit.
//!
//! An id already used by a member at another address is refused: two machines must
//! never share an id.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::errors::{ClientWriteError, RaftError};
use openraft::rt::watch::WatchReceiver;
use openraft::{BasicNode, ChangeMembers};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::cluster::admin::{on_group_leader, AdminOp, GroupChange};
use crate::cluster::{bootstrap, Cluster};
use crate::codec;
use crate::config::{is_host_port, NodeId};
use crate::error::{Error, Result};
use crate::raft::identity::{self, ClusterId, Identity};
use crate::raft::node::Group;
use crate::raft::types::TypeConfig;

/// A learner is promoted once its log is at most this many entries behind the leader's.
pub const PROMOTE_MAX_LAG: u64 = 256;
/// Deadline of one admission request, covering a membership change in every group.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between admission attempts and between promotion checks.
const RETRY: Duration = Duration::from_secs(1);

/// How long a coordinator waits for the member at a recorded address to say who it is
/// before it takes that address for abandoned (`still_there`).
const WHO_IS_THERE_TIMEOUT: Duration = Duration::from_secs(2);

/// The answer to a successful [`AdminOp::Join`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Admitted {
    pub cluster_id: ClusterId,
}

/// Who asks for an admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asker {
    /// The node itself (`--join`, or a restart at a new address); `has_data`: it
    /// carries this cluster's id, so it is a member that kept its data.
    Node { has_data: bool },
    /// An operator (`nacosctl member add`): an id that is a member at another address
    /// is being replaced by a new, empty machine.
    Operator,
}

/// Coordinator side: make `id` at `addr` a learner of every group — or, for a member
/// that kept its data and moved, record its new address.
pub async fn admit(
    cluster: &Cluster,
    id: NodeId,
    addr: &str,
    asker: Asker,
    timeout: Duration,
) -> Result<Admitted> {
    if id == 0 {
        return Err(Error::invalid("node ids start at 1"));
    }
    if !is_host_port(addr) {
        return Err(Error::invalid(format!(
            "advertised address {addr:?} is not HOST:PORT"
        )));
    }
    let node = &cluster.node;
    let cluster_id = node
        .identity()
        .cluster_id()
        .ok_or_else(|| Error::unavailable("this node has no cluster identity yet"))?;
    if id == node.node_id {
        return Err(Error::FailedPrecondition(format!(
            "node {id} asked to join through itself"
        )));
    }
    let _one_change_at_a_time = cluster.changes.lock().await;
    let known: Vec<String> = node.groups().filter_map(|g| address_of(g, id)).collect();
    let moved = known.iter().find(|a| *a != addr).cloned();
    let change = match (moved.clone(), asker) {
        // The same member with its data, at a new address — or at the address already
        // recorded: a repeated announcement (its reply was lost, or the member's own
        // view of the membership lagged behind) changes nothing. Keep its role: only
        // an empty node is demoted to catch up.
        (_, Asker::Node { has_data: true }) if !known.is_empty() => GroupChange::SetAddress {
            id,
            addr: addr.to_string(),
        },
        (Some(existing), Asker::Node { has_data: false }) => {
            return Err(Error::AlreadyExists(format!(
                "node id {id} is already a member at {existing}; a second machine cannot take it at {addr}. To replace that member, run `nacosctl member add {id} {addr}` first"
            )));
        }
        // An empty node (new, or back without its disk), or an operator's
        // replacement of a member by a new machine: catch up as a learner first.
        (_, Asker::Node { .. }) | (Some(_), Asker::Operator) => GroupChange::AdmitLearner {
            id,
            addr: addr.to_string(),
            empty: true,
        },
        // An operator adding a node that may already be (partly) a member at this
        // address: finish what is missing, demote nobody.
        (None, Asker::Operator) => GroupChange::AdmitLearner {
            id,
            addr: addr.to_string(),
            empty: false,
        },
    };
    if let (Some(existing), GroupChange::SetAddress { .. }) = (&moved, &change) {
        if still_there(cluster, id, existing, addr).await {
            return Err(Error::AlreadyExists(format!(
                "node {id} of this cluster still answers at {existing}; the node at {addr} carries the same id (an old disk of a replaced machine, or a copied data directory) and is refused. If the node at {existing} is the one to drop, remove it first (`nacosctl member remove {id}`)"
            )));
        }
    }
    let deadline = tokio::time::Instant::now() + timeout;
    for g in node.groups() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        on_group_leader(cluster, &g.name, &change, left).await?;
    }
    match change {
        GroupChange::SetAddress { .. } => {
            tracing::info!(node = id, %addr, "recorded a member's new address in every group")
        }
        _ => tracing::info!(node = id, %addr, "admitted a node as a learner of every group"),
    }
    Ok(Admitted { cluster_id })
}

/// Whether node `id` of this cluster still runs at its recorded address `existing`,
/// advertising an address other than `addr`. A member that kept its data and moved
/// has left `existing` (nothing answers there, or another node does, or it is the
/// same process reached by its old name); a node that answers there as `id` is a
/// second machine with that id — typically the old disk of a machine an operator
/// replaced (`member add`), back online. Raft needs one disk per id: that disk's old
/// vote record could let the id vote twice in one term.
async fn still_there(cluster: &Cluster, id: NodeId, existing: &str, addr: &str) -> bool {
    let node = &cluster.node;
    let Some(mine) = node.identity().cluster_id() else {
        return false;
    };
    match node
        .peers
        .hello(existing, &node.advertise_peer, WHO_IS_THERE_TIMEOUT)
        .await
    {
        Ok(r) => {
            r.node_id == id
                && ClusterId::parse(&r.cluster_id) == Some(mine)
                && r.advertise_peer != addr
        }
        Err(_) => false,
    }
}

/// The address `id` has in `g`'s membership, if it is a member.
fn address_of(g: &Group, id: NodeId) -> Option<String> {
    let metrics = g.raft.metrics();
    let m = metrics.borrow_watched();
    m.membership_config
        .membership()
        .get_node(&id)
        .map(|n| n.addr.clone())
}

/// Map a failed membership change to a nacosd error: not the leader, or another change
/// in progress, is `Unavailable` (nothing changed, try again).
fn change_failed(group: &str, e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> Error {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Error::Unavailable {
            message: format!("not the leader of group {group}"),
            leader: f
                .leader_id
                .map(|id| (id, f.leader_node.map(|n| n.addr).unwrap_or_default())),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            Error::unavailable(format!("group {group}: {c}"))
        }
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)) => {
            Error::UnknownOutcome(format!(
                "group {group}: the leader changed during the membership change; check the status"
            ))
        }
        other => Error::internal(format!("group {group}: {other}")),
    }
}

/// Leader side: apply `change` to `group`, which this node must lead.
pub async fn apply_on_leader(
    cluster: &Cluster,
    group: &str,
    change: &GroupChange,
    timeout: Duration,
) -> Result<()> {
    let node = &cluster.node;
    let g = node.group(group)?;
    if !g.raft.is_leader() {
        return Err(Error::Unavailable {
            message: format!("node {} does not lead group {group}", node.node_id),
            leader: g.leader(),
        });
    }
    let run = async {
        match change {
            GroupChange::AdmitLearner { id, addr, empty } => {
                admit_learner(g, *id, addr, *empty).await
            }
            GroupChange::PromoteIfCaughtUp { id, max_lag } => promote(g, *id, *max_lag).await,
            GroupChange::SetAddress { id, addr } => set_address(g, *id, addr).await,
            GroupChange::Remove { id } => remove(g, *id).await,
            GroupChange::TransferLeader { to } => transfer_leader(g, *to).await,
        }
    };
    tokio::time::timeout(timeout, run).await.map_err(|_| {
        Error::UnknownOutcome(format!(
            "membership change of group {group} did not finish within {timeout:?}; check the status"
        ))
    })?
}

async fn admit_learner(g: &Group, id: NodeId, addr: &str, empty: bool) -> Result<()> {
    let (voters, current): (BTreeSet<NodeId>, Option<String>) = {
        let metrics = g.raft.metrics();
        let m = metrics.borrow_watched();
        let mem = m.membership_config.membership();
        (
            mem.voter_ids().collect(),
            mem.get_node(&id).map(|n| n.addr.clone()),
        )
    };
    let node = BasicNode::new(addr);
    if empty && voters.contains(&id) {
        if voters.len() == 1 {
            return Err(Error::FailedPrecondition(format!(
                "node {id} is the only voter of group {}: it cannot be demoted to catch up; recover from its data or with --force-new-cluster",
                g.name
            )));
        }
        tracing::warn!(group = %g.name, node = id, "demoting a voter that lost its data to a learner until it catches up");
        g.raft
            .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), true)
            .await
            .map_err(|e| change_failed(&g.name, e))?;
    }
    match current {
        Some(a) if a == addr => {}
        Some(_) => {
            g.raft
                .change_membership(
                    ChangeMembers::SetNodes([(id, node)].into_iter().collect()),
                    true,
                )
                .await
                .map_err(|e| change_failed(&g.name, e))?;
        }
        None => {
            g.raft
                .add_learner(id, node, false)
                .await
                .map_err(|e| change_failed(&g.name, e))?;
        }
    }
    // The admitted node starts from an empty log. If this leader replicated to the
    // same id before (a voter that lost its disk, a replaced machine), its progress
    // still says how far that log went, and openraft refuses a follower whose log
    // went backwards. Allow it once for this node: it is a learner now, so its empty
    // log can never count toward a commit or an election.
    if !empty {
        return Ok(());
    }
    match g.raft.trigger().allow_next_revert(&id, true).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(group = %g.name, node = id, error = %e, "allow_next_revert"),
        Err(fatal) => return Err(Error::internal(format!("group {}: {fatal}", g.name))),
    }
    Ok(())
}

async fn promote(g: &Group, id: NodeId, max_lag: u64) -> Result<()> {
    let (is_voter, is_member, lag) = {
        let metrics = g.raft.metrics();
        let m = metrics.borrow_watched();
        let mem = m.membership_config.membership();
        let matched = m
            .replication
            .as_ref()
            .and_then(|r| r.get(&id).cloned())
            .flatten()
            .map(|l| l.index);
        let last = m.last_log_index.unwrap_or(0);
        let is_voter = mem.voter_ids().any(|v| v == id);
        (
            is_voter,
            mem.get_node(&id).is_some(),
            matched.map(|mi| last.saturating_sub(mi)),
        )
    };
    if is_voter {
        return Ok(());
    }
    if !is_member {
        return Err(Error::NotFound(format!(
            "node {id} is not a member of group {}",
            g.name
        )));
    }
    match lag {
        Some(lag) if lag <= max_lag => {}
        Some(lag) => {
            return Err(Error::unavailable(format!(
            "node {id} is {lag} entries behind in group {}; it is promoted once within {max_lag}",
            g.name
        )))
        }
        None => {
            return Err(Error::unavailable(format!(
                "node {id} has not acknowledged any entry of group {} yet",
                g.name
            )))
        }
    }
    g.raft
        .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
        .await
        .map(|_| ())
        .map_err(|e| change_failed(&g.name, e))?;
    tracing::info!(group = %g.name, node = id, "promoted a caught-up learner to voter");
    Ok(())
}

async fn set_address(g: &Group, id: NodeId, addr: &str) -> Result<()> {
    match address_of(g, id) {
        None => Err(Error::NotFound(format!(
            "node {id} is not a member of group {}",
            g.name
        ))),
        Some(a) if a == addr => Ok(()),
        Some(_) => g
            .raft
            .change_membership(
                ChangeMembers::SetNodes([(id, BasicNode::new(addr))].into_iter().collect()),
                true,
            )
            .await
            .map(|_| ())
            .map_err(|e| change_failed(&g.name, e)),
    }
}

async fn remove(g: &Group, id: NodeId) -> Result<()> {
    let (voters, is_member) = {
        let metrics = g.raft.metrics();
        let m = metrics.borrow_watched();
        let mem = m.membership_config.membership();
        (
            mem.voter_ids().collect::<BTreeSet<NodeId>>(),
            mem.get_node(&id).is_some(),
        )
    };
    if !is_member {
        return Ok(());
    }
    let change = if voters.contains(&id) {
        let remaining: BTreeSet<NodeId> = voters.iter().copied().filter(|v| *v != id).collect();
        if remaining.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "node {id} is the last voter of group {}: removing it would leave the group without members",
                g.name
            )));
        }
        // The change commits only with a quorum of the old and of the new voters; and
        // after it the remaining voters must still elect and commit on their own.
        let heard = g.heard_from_within(g.timing().lease());
        let alive = remaining.intersection(&heard).count();
        let quorum = remaining.len() / 2 + 1;
        if alive < quorum {
            return Err(Error::FailedPrecondition(format!(
                "removing node {id} from group {} would leave {} voter(s) of which only {alive} are reachable, fewer than the {quorum} a quorum needs; bring members back or add new ones first",
                g.name,
                remaining.len()
            )));
        }
        ChangeMembers::RemoveVoters(BTreeSet::from([id]))
    } else {
        ChangeMembers::RemoveNodes(BTreeSet::from([id]))
    };
    g.raft
        .change_membership(change, false)
        .await
        .map_err(|e| change_failed(&g.name, e))?;
    tracing::info!(group = %g.name, node = id, "removed a member");
    Ok(())
}

async fn transfer_leader(g: &Group, to: Option<NodeId>) -> Result<()> {
    let to = match to {
        Some(to) if to == g.node_id() => return Ok(()),
        Some(to) => {
            if !g.voters().contains(&to) {
                return Err(Error::FailedPrecondition(format!(
                    "node {to} is not a voter of group {}: only a voter can lead",
                    g.name
                )));
            }
            to
        }
        None => g.transfer_target().ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "group {} has no other voter to hand its leadership to",
                g.name
            ))
        })?,
    };
    g.raft
        .trigger()
        .transfer_leader(to)
        .await
        .map_err(|e| Error::internal(format!("group {}: {e}", g.name)))?;
    if g.wait_leader_moved(g.timing().lease() * 2).await {
        Ok(())
    } else {
        Err(Error::unavailable(format!(
            "group {}: leadership did not move to node {to} in time; is it caught up?",
            g.name
        )))
    }
}

/// Receiving side of a removal: record it durably, then stop serving.
pub async fn removed(cluster: &Cluster, by: NodeId) -> Result<()> {
    let node = cluster.node.clone();
    tokio::task::spawn_blocking(move || {
        identity::store_removed(node.db(), &identity::RemovedRecord { by })
    })
    .await
    .map_err(Error::internal)??;
    let reason = format!(
        "node {} was removed from the cluster by node {by}; it stops serving (its data directory cannot be used again: empty it and start with --join to add the node back)",
        cluster.node.node_id
    );
    tracing::error!("{reason}");
    let _ = cluster.failure.send(Some(reason));
    Ok(())
}

/// A member that kept its data but now advertises another address (a new IP, a new
/// DNS name) asks the other members, at the addresses the membership holds for them,
/// to record its new address in every group; its role does not change. Returns once
/// every group's membership shows the new address (or on stop).
pub async fn announce_address(cluster: Arc<Cluster>, mut stop: watch::Receiver<bool>) {
    let node = cluster.node.clone();
    let mine = node.advertise_peer.clone();
    let op = codec::encode(&AdminOp::Join {
        node_id: node.node_id,
        addr: mine.clone(),
    });
    loop {
        let stale = node
            .groups()
            .any(|g| address_of(g, node.node_id).is_some_and(|a| a != mine));
        if !stale {
            return;
        }
        let others: BTreeSet<String> = node
            .groups()
            .flat_map(|g| {
                let metrics = g.raft.metrics();
                let m = metrics.borrow_watched();
                m.membership_config
                    .membership()
                    .nodes()
                    .filter(|(id, _)| **id != node.node_id)
                    .map(|(_, n)| n.addr.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        tracing::info!(new = %mine, "this node's advertised address changed; asking the members to record it");
        for addr in &others {
            match node.peers.admin(addr, op.clone(), JOIN_TIMEOUT).await {
                Ok(_) => break,
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "could not record the new address there")
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Joiner side: ask the members at `via` (peer addresses) to admit this node, until one
/// does; then take the identity and, unless this node stays a learner, get promoted
/// group by group once caught up.
pub async fn join_cluster(
    cluster: Arc<Cluster>,
    via: Vec<String>,
    mut stop: watch::Receiver<bool>,
) {
    let node = cluster.node.clone();
    let op = codec::encode(&AdminOp::Join {
        node_id: node.node_id,
        addr: node.advertise_peer.clone(),
    });
    let mut last_error = String::new();
    let admitted = 'asking: loop {
        for addr in &via {
            match node.peers.admin(addr, op.clone(), JOIN_TIMEOUT).await {
                Ok(bytes) => match codec::decode_message::<Admitted>(&bytes, "admission reply") {
                    Ok(a) => break 'asking a,
                    Err(e) => last_error = e.to_string(),
                },
                Err(e) => {
                    let msg = format!("asking {addr} to admit this node: {e}");
                    if msg != last_error {
                        tracing::warn!("{msg}");
                        last_error = msg;
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = stop.changed() => return,
        }
    };
    let identity = Identity {
        cluster_id: admitted.cluster_id,
        node_id: node.node_id,
    };
    if let Err(e) = bootstrap::adopt(&cluster, identity).await {
        tracing::error!(error = %e, "admitted, but could not store the cluster identity");
        return;
    }
    tracing::info!(cluster_id = %admitted.cluster_id, "admitted to the cluster as a learner; catching up");
    if !cluster.learner {
        promote_when_caught_up(cluster, stop).await;
    }
}

/// Ask each group's leader to promote this node until it is a voter everywhere (at
/// once if it is already).
pub async fn promote_when_caught_up(cluster: Arc<Cluster>, mut stop: watch::Receiver<bool>) {
    let node = &cluster.node;
    let mut waited = false;
    loop {
        let mut waiting = false;
        for g in node.groups() {
            if g.voters().contains(&node.node_id) {
                continue;
            }
            waiting = true;
            // Nothing replicated yet: this node does not know its own membership.
            if address_of(g, node.node_id).is_none() {
                continue;
            }
            let change = GroupChange::PromoteIfCaughtUp {
                id: node.node_id,
                max_lag: PROMOTE_MAX_LAG,
            };
            if let Err(e) = on_group_leader(&cluster, &g.name, &change, RETRY * 5).await {
                tracing::debug!(group = %g.name, error = %e, "not promoted yet");
            }
        }
        if !waiting {
            if waited {
                tracing::info!("a voter of every group");
            }
            return;
        }
        waited = true;
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = stop.changed() => return,
        }
    }
}
