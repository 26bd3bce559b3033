//! Cluster-level operations: how a node comes to belong to a cluster, and how the
//! cluster's membership changes.
//!
//! - `bootstrap`: an empty data directory either bootstraps a brand-new cluster (every
//!   initial member reachable and empty), takes the identity a bootstrapping member
//!   offers it, or asks an existing cluster to admit it (a new node, or one that lost
//!   its disk). Hello is the probe.
//! - `membership`: admission (join / rejoin as a learner, promotion once caught up),
//!   and the other membership changes, applied to every group.
//! - `admin`: the operations one node runs on behalf of another over the peer port's
//!   `Admin` call, and the routing of a group's change to that group's leader.
//! - `operations`: what `nacosd.v1.ClusterService` offers an operator (members, add,
//!   promote, remove, leader transfer, snapshot, digest), built on the above.
//!
//! One membership for all groups: every change is applied to each group in turn through
//! openraft's joint consensus. A change that fails half-way leaves some groups changed
//! and others not; `Status` shows the groups side by side and repeating the same request
//! finishes it (every step checks the current membership first and skips what is done).

pub(crate) mod admin;
pub(crate) mod bootstrap;
pub mod membership;
pub mod operations;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{Config, InitialClusterState, NodeId};
use crate::raft::identity::BootstrapRecord;
use crate::raft::node::MultiRaft;

/// A node's cluster-level state and settings.
pub struct Cluster {
    pub node: Arc<MultiRaft>,
    pub initial_members: BTreeMap<NodeId, String>,
    pub initial_cluster_state: InitialClusterState,
    pub join: Option<String>,
    pub learner: bool,
    /// The bootstrapping member's offer to the initial members that have not yet taken
    /// the identity (`None` once all have, and on every other node).
    pub(crate) bootstrap: tokio::sync::Mutex<Option<BootstrapRecord>>,
    /// Serializes the membership changes this node coordinates.
    pub(crate) changes: tokio::sync::Mutex<()>,
    /// Why the node must stop by itself (the cluster removed it; a group stopped), once
    /// that happens: the server watches it.
    pub(crate) failure: tokio::sync::watch::Sender<Option<String>>,
}

impl Cluster {
    pub fn new(
        node: Arc<MultiRaft>,
        config: &Config,
        failure: tokio::sync::watch::Sender<Option<String>>,
    ) -> std::io::Result<Arc<Self>> {
        let record = crate::raft::identity::load_bootstrap(node.db())?;
        Ok(Arc::new(Cluster {
            node,
            initial_members: config.initial_members.clone(),
            initial_cluster_state: config.initial_cluster_state,
            join: config.join.clone(),
            learner: config.learner,
            bootstrap: tokio::sync::Mutex::new(record),
            changes: tokio::sync::Mutex::new(()),
            failure,
        }))
    }
}
