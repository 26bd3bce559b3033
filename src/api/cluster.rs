//! `nacosd.v1.ClusterService`: this node's view of every group.

use openraft::rt::watch::WatchReceiver;
use std::sync::Arc;

use openraft::ServerState;
use tonic::{Request, Response, Status};

use crate::pb;
use crate::raft::node::{Group, MultiRaft};

pub struct ClusterApi {
    node: Arc<MultiRaft>,
}

impl ClusterApi {
    pub fn new(node: Arc<MultiRaft>) -> Self {
        ClusterApi { node }
    }
}

/// The status of one group as this node sees it (also used by /metrics).
pub fn group_status(g: &Group) -> pb::GroupStatus {
    let metrics = g.raft.metrics();
    let m = metrics.borrow_watched();
    let membership = m.membership_config.membership();
    let addr_of = |id: &u64| {
        membership
            .get_node(id)
            .map(|n| n.addr.clone())
            .unwrap_or_default()
    };
    let role = match m.state {
        ServerState::Leader => pb::Role::Leader,
        ServerState::Follower => pb::Role::Follower,
        ServerState::Candidate => pb::Role::Candidate,
        ServerState::Learner => pb::Role::Learner,
        ServerState::Shutdown => pb::Role::Shutdown,
    };
    pb::GroupStatus {
        group: g.name.to_string(),
        role: role as i32,
        leader_id: m.current_leader,
        leader_addr: m.current_leader.as_ref().map(addr_of).unwrap_or_default(),
        term: m.current_term,
        last_log_index: m.last_log_index,
        applied_index: m.last_applied.as_ref().map(|l| l.index),
        snapshot_index: m.snapshot.as_ref().map(|l| l.index),
        purged_index: m.purged.as_ref().map(|l| l.index),
        voters: membership
            .voter_ids()
            .map(|id| pb::Member {
                node_id: id,
                addr: addr_of(&id),
            })
            .collect(),
        learners: membership
            .learner_ids()
            .map(|id| pb::Member {
                node_id: id,
                addr: addr_of(&id),
            })
            .collect(),
        millis_since_quorum_ack: m
            .last_quorum_acked
            .as_ref()
            .map(|t| openraft::Instant::elapsed(&**t).as_millis() as u64),
    }
}

#[tonic::async_trait]
impl pb::cluster_service_server::ClusterService for ClusterApi {
    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(pb::StatusResponse {
            node_id: self.node.node_id,
            advertise_peer: self.node.advertise_peer.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            groups: self.node.groups().map(|g| group_status(g)).collect(),
        }))
    }
}
