//! Cluster operations one node runs on behalf of another (the peer port's `Admin`
//! call), and the routing of a group's membership change to that group's leader.
//!
//! Only [`AdminOp::Join`] is accepted from a node without a cluster identity: it is how
//! such a node asks to be admitted. Everything else requires the caller to be of this
//! node's cluster (checked by the peer server before the operation is decoded).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::cluster::{membership, Cluster};
use crate::codec;
use crate::config::NodeId;
use crate::error::{Error, Result};
use crate::peer::wire::Sender;

/// An operation run on the node that receives it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminOp {
    /// Admit node `node_id` at `addr` as a learner of every group (a new node, or one
    /// that lost its data). Answered with the cluster id ([`membership::Admitted`]).
    Join { node_id: NodeId, addr: String },
    /// Apply `change` to `group`: run by that group's leader.
    Group { group: String, change: GroupChange },
    /// The cluster removed the receiving node (`by` carried it out): it stops serving.
    Removed { by: NodeId },
}

/// A membership change of one group, run by its leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupChange {
    /// Make `id` (at `addr`) a member: add it as a learner if absent and record its
    /// address. With `empty` (the machine behind the id has no data: a lost disk, a
    /// replacement) a voter is demoted to a learner, to catch up before it votes again;
    /// otherwise an existing member keeps its role.
    AdmitLearner {
        id: NodeId,
        addr: String,
        empty: bool,
    },
    /// Promote learner `id` to voter if its log is within `max_lag` entries of the
    /// leader's; otherwise `Unavailable` (try again later).
    PromoteIfCaughtUp { id: NodeId, max_lag: u64 },
    /// Record a member's new address, keeping its role (the same node, moved).
    SetAddress { id: NodeId, addr: String },
    /// Remove `id` (voter or learner), if the remaining voters still form a quorum
    /// the leader is in touch with.
    Remove { id: NodeId },
    /// Hand this group's leadership to `to` (`None`: the most up-to-date voter).
    TransferLeader { to: Option<NodeId> },
}

/// Run `op` here, for `sender`.
pub async fn run_here(
    cluster: &Cluster,
    sender: Sender,
    op: AdminOp,
    timeout: Duration,
) -> Result<Vec<u8>> {
    if sender.cluster.is_none() && !matches!(op, AdminOp::Join { .. }) {
        return Err(Error::FailedPrecondition(
            "only a request to join may come from a node without a cluster identity".into(),
        ));
    }
    match op {
        AdminOp::Join { node_id, addr } => {
            // A caller that carries this cluster's id has its data: the same member,
            // perhaps at a new address. One without is empty.
            let asker = membership::Asker::Node {
                has_data: sender.cluster.is_some(),
            };
            let admitted = membership::admit(cluster, node_id, &addr, asker, timeout).await?;
            Ok(codec::encode(&admitted))
        }
        AdminOp::Group { group, change } => {
            membership::apply_on_leader(cluster, &group, &change, timeout).await?;
            Ok(Vec::new())
        }
        AdminOp::Removed { by } => {
            membership::removed(cluster, by).await?;
            Ok(Vec::new())
        }
    }
}

/// Apply `change` to `group` on its leader, wherever that is: locally if this node
/// leads it, else through the leader's `Admin` call; retried across leader changes
/// while the failure says the change was not made (`Unavailable`), until `timeout`.
pub async fn on_group_leader(
    cluster: &Cluster,
    group: &str,
    change: &GroupChange,
    timeout: Duration,
) -> Result<()> {
    let node = &cluster.node;
    let g = node.group(group)?;
    let deadline = Instant::now() + timeout;
    let mut backoff = Duration::from_millis(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt = if g.raft.is_leader() {
            membership::apply_on_leader(cluster, group, change, left).await
        } else if let Some((_, addr)) = g.leader().filter(|(id, _)| *id != node.node_id) {
            let op = AdminOp::Group {
                group: group.to_string(),
                change: change.clone(),
            };
            node.peers
                .admin(&addr, codec::encode(&op), left)
                .await
                .map(|_| ())
        } else {
            Err(Error::unavailable(format!("group {group} has no leader")))
        };
        match attempt {
            Err(Error::Unavailable { message, .. }) if Instant::now() + backoff < deadline => {
                tracing::debug!(group, %message, "membership change not made yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
            other => return other,
        }
    }
}
