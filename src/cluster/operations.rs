//! What `nacosd.v1.ClusterService` offers an operator: the member list, adding,
//! promoting and removing members, leader transfer, snapshots and state digests.
//!
//! A membership operation runs on the node the operator contacted, which applies it to
//! every group through that group's leader (`admin::on_group_leader`), one group after
//! the other, under this node's change lock; each step checks the group's current
//! membership first and skips what is already done, so repeating an operation that
//! stopped half-way finishes it. Two operators on two nodes are serialized by openraft
//! itself: a group refuses a change while another is in progress (joint consensus), and
//! the refusal says so.

use std::collections::BTreeMap;
use std::time::Duration;

use openraft::rt::watch::WatchReceiver;

use crate::cluster::admin::{on_group_leader, AdminOp, GroupChange};
use crate::cluster::membership::{self, Asker, PROMOTE_MAX_LAG};
use crate::cluster::Cluster;
use crate::codec;
use crate::config::{is_host_port, NodeId};
use crate::error::{Error, Result};
use crate::raft::group::StateDigest;
use crate::raft::node::{Group, MultiRaft};

/// A member's role in one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Voter,
    Learner,
    Absent,
}

/// One member as the groups' memberships on this node describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    /// The address most groups hold for it.
    pub addr: String,
    /// Per group: role and the address that group holds.
    pub groups: Vec<(String, Role, String)>,
}

impl Member {
    /// Same role and address in every group.
    pub fn consistent(&self) -> bool {
        self.groups
            .windows(2)
            .all(|w| w[0].1 == w[1].1 && w[0].2 == w[1].2)
    }

    pub fn is_voter_everywhere(&self) -> bool {
        self.groups.iter().all(|(_, r, _)| *r == Role::Voter)
    }
}

/// Every member of any group, and the groups whose membership is changing right now.
pub fn members(node: &MultiRaft) -> (Vec<Member>, Vec<String>) {
    let mut by_id: BTreeMap<NodeId, Vec<(String, Role, String)>> = BTreeMap::new();
    let mut changing = Vec::new();
    let groups: Vec<&std::sync::Arc<Group>> = node.groups().collect();
    for g in &groups {
        let metrics = g.raft.metrics();
        let m = metrics.borrow_watched();
        let mem = m.membership_config.membership();
        if mem.get_joint_config().len() > 1 {
            changing.push(g.name.to_string());
        }
        for (id, n) in mem.nodes() {
            let role = if mem.voter_ids().any(|v| v == *id) {
                Role::Voter
            } else {
                Role::Learner
            };
            by_id
                .entry(*id)
                .or_default()
                .push((g.name.to_string(), role, n.addr.clone()));
        }
    }
    let members = by_id
        .into_iter()
        .map(|(id, mut seen)| {
            for g in &groups {
                if !seen.iter().any(|(name, _, _)| **name == *g.name) {
                    seen.push((g.name.to_string(), Role::Absent, String::new()));
                }
            }
            seen.sort_by(|a, b| a.0.cmp(&b.0));
            let addr = most_common(seen.iter().map(|(_, _, a)| a.as_str()));
            Member {
                id,
                addr,
                groups: seen,
            }
        })
        .collect();
    (members, changing)
}

fn most_common<'a>(addrs: impl Iterator<Item = &'a str>) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for a in addrs.filter(|a| !a.is_empty()) {
        *counts.entry(a).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(a, _)| a.to_string())
        .unwrap_or_default()
}

fn check_id(id: NodeId) -> Result<()> {
    if id == 0 {
        return Err(Error::invalid("node_id must be at least 1"));
    }
    Ok(())
}

/// Add `id` at `addr` as a learner of every group, or replace the member `id` by a
/// new machine at `addr` (it becomes a learner there and catches up).
pub async fn add_member(
    cluster: &Cluster,
    id: NodeId,
    addr: &str,
    timeout: Duration,
) -> Result<()> {
    check_id(id)?;
    if !is_host_port(addr) {
        return Err(Error::invalid(format!(
            "addr {addr:?} is not HOST:PORT (the new member's peer address)"
        )));
    }
    if id == cluster.node.node_id {
        return Err(Error::FailedPrecondition(format!(
            "node {id} is the node you are talking to; to move it, restart it with its new --advertise-peer"
        )));
    }
    membership::admit(cluster, id, addr, Asker::Operator, timeout)
        .await
        .map(|_| ())
}

/// Promote learner `id` in every group where it is one.
pub async fn promote_member(cluster: &Cluster, id: NodeId, timeout: Duration) -> Result<()> {
    check_id(id)?;
    let _one_change_at_a_time = cluster.changes.lock().await;
    let change = GroupChange::PromoteIfCaughtUp {
        id,
        max_lag: PROMOTE_MAX_LAG,
    };
    for_each_group(cluster, None, &change, timeout).await
}

/// Remove `id` from every group; tell it, if it is alive, so it stops serving.
pub async fn remove_member(cluster: &Cluster, id: NodeId, timeout: Duration) -> Result<()> {
    check_id(id)?;
    let node = &cluster.node;
    let (members, _) = members(node);
    let Some(member) = members.iter().find(|m| m.id == id) else {
        return Err(Error::NotFound(format!("node {id} is not a member")));
    };
    let addr = member.addr.clone();
    {
        let _one_change_at_a_time = cluster.changes.lock().await;
        for_each_group(cluster, None, &GroupChange::Remove { id }, timeout).await?;
    }
    tracing::info!(node = id, "removed from every group");
    if id == node.node_id {
        // This node removed itself: it stops like any removed node.
        membership::removed(cluster, node.node_id).await?;
    } else {
        // Best effort: a dead node learns it when it comes back (the others refuse it).
        let op = codec::encode(&AdminOp::Removed { by: node.node_id });
        if let Err(e) = node.peers.admin(&addr, op, Duration::from_secs(2)).await {
            tracing::info!(node = id, error = %e, "the removed node was not told (it may be down)");
        }
    }
    Ok(())
}

/// Move the leadership of `group` (every group for `None`) to `to` (the most
/// up-to-date voter for `None`). Answers each group's leader afterwards.
pub async fn transfer_leader(
    cluster: &Cluster,
    group: Option<&str>,
    to: Option<NodeId>,
    timeout: Duration,
) -> Result<Vec<(String, Option<NodeId>)>> {
    if let Some(to) = to {
        check_id(to)?;
    }
    for_each_group(cluster, group, &GroupChange::TransferLeader { to }, timeout).await?;
    Ok(selected(&cluster.node, group)?
        .into_iter()
        .map(|g| {
            (
                g.name.to_string(),
                // What `wait_leader_moved` saw: the server metrics (sent before the
                // full metrics, which may not show the new leader yet).
                g.raft.server_metrics().borrow_watched().current_leader,
            )
        })
        .collect())
}

/// Build a snapshot of `group` (every group for `None`) on this node now and wait for
/// it (bounded by `timeout`). Answers the index each newest snapshot covers.
pub async fn snapshot(
    node: &MultiRaft,
    group: Option<&str>,
    timeout: Duration,
) -> Result<Vec<(String, u64)>> {
    let groups = selected(node, group)?;
    let mut out = Vec::new();
    for g in groups {
        let applied = g
            .raft
            .metrics()
            .borrow_watched()
            .last_applied
            .map(|l| l.index)
            .unwrap_or(0);
        g.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| Error::internal(format!("group {}: {e}", g.name)))?;
        let mut rx = g.raft.metrics();
        let built = tokio::time::timeout(timeout, async {
            loop {
                let index = rx.borrow_watched().snapshot.map(|l| l.index).unwrap_or(0);
                if index >= applied {
                    return Some(index);
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        match built {
            Ok(Some(index)) => out.push((g.name.to_string(), index)),
            _ => {
                return Err(Error::unavailable(format!(
                    "group {}: the snapshot was not built within {timeout:?}",
                    g.name
                )))
            }
        }
    }
    Ok(out)
}

/// Each group's state digest on this node.
pub async fn digests(node: &MultiRaft) -> Result<Vec<(String, StateDigest)>> {
    let mut out = Vec::new();
    for g in node.groups() {
        let sm = g.sm.clone();
        let digest = tokio::task::spawn_blocking(move || sm.digest())
            .await
            .map_err(Error::internal)?
            .map_err(Error::internal)?;
        out.push((g.name.to_string(), digest));
    }
    Ok(out)
}

fn selected<'a>(
    node: &'a MultiRaft,
    group: Option<&str>,
) -> Result<Vec<&'a std::sync::Arc<Group>>> {
    match group {
        Some(name) => Ok(vec![node.group(name)?]),
        None => Ok(node.groups().collect()),
    }
}

/// Apply `change` to `group` (every group for `None`) on its leader.
async fn for_each_group(
    cluster: &Cluster,
    group: Option<&str>,
    change: &GroupChange,
    timeout: Duration,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    for g in selected(&cluster.node, group)? {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        on_group_leader(cluster, &g.name, change, left).await?;
    }
    Ok(())
}
