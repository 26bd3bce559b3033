//! `nacosd.v1.ClusterService`: this node's view of every group, and the cluster
//! operations of [`crate::cluster::operations`].

use std::sync::Arc;
use std::time::Duration;

use openraft::rt::watch::WatchReceiver;
use openraft::ServerState;
use tonic::{Request, Response, Status};

use crate::api::deadline;
use crate::auth::Auth;
use crate::cluster::operations::{self, Role};
use crate::cluster::Cluster;
use crate::pb;
use crate::raft::node::Group;

/// Deadline of a membership change or transfer when the client sets none: it may wait
/// for a learner to catch up or for an election.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

pub struct ClusterApi {
    cluster: Arc<Cluster>,
    auth: Arc<Auth>,
}

impl ClusterApi {
    pub fn new(cluster: Arc<Cluster>, auth: Arc<Auth>) -> Self {
        ClusterApi { cluster, auth }
    }

    fn timeout<T>(req: &Request<T>) -> Duration {
        deadline(req).unwrap_or(OPERATION_TIMEOUT)
    }

    fn members(&self) -> pb::ListMembersResponse {
        let (members, changing) = operations::members(&self.cluster.node);
        pb::ListMembersResponse {
            members: members
                .into_iter()
                .map(|m| pb::MemberInfo {
                    node_id: m.id,
                    consistent: m.consistent(),
                    groups: m
                        .groups
                        .iter()
                        .map(|(group, role, addr)| pb::GroupRole {
                            group: group.clone(),
                            role: match role {
                                Role::Voter => pb::MemberRole::Voter,
                                Role::Learner => pb::MemberRole::Learner,
                                Role::Absent => pb::MemberRole::Absent,
                            } as i32,
                            addr: addr.clone(),
                        })
                        .collect(),
                    addr: m.addr,
                })
                .collect(),
            changing,
        }
    }

    fn changed(&self) -> Response<pb::MemberChangeResponse> {
        Response::new(pb::MemberChangeResponse {
            members: Some(self.members()),
        })
    }
}

/// An optional group name: empty means every group.
fn group_of(name: &str) -> Option<&str> {
    (!name.is_empty()).then_some(name)
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
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.auth.authenticate(&req).await?;
        Ok(Response::new(pb::StatusResponse {
            node_id: self.cluster.node.node_id,
            advertise_peer: self.cluster.node.advertise_peer.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            groups: self
                .cluster
                .node
                .groups()
                .map(|g| group_status(g))
                .collect(),
        }))
    }

    async fn list_members(
        &self,
        req: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        self.auth.authenticate(&req).await?;
        Ok(Response::new(self.members()))
    }

    async fn add_member(
        &self,
        req: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::MemberChangeResponse>, Status> {
        self.auth
            .authenticate(&req)
            .await?
            .require_admin("adding a member")?;
        let timeout = Self::timeout(&req);
        let r = req.into_inner();
        operations::add_member(&self.cluster, r.node_id, &r.addr, timeout).await?;
        Ok(self.changed())
    }

    async fn promote_member(
        &self,
        req: Request<pb::PromoteMemberRequest>,
    ) -> Result<Response<pb::MemberChangeResponse>, Status> {
        self.auth
            .authenticate(&req)
            .await?
            .require_admin("promoting a member")?;
        let timeout = Self::timeout(&req);
        operations::promote_member(&self.cluster, req.into_inner().node_id, timeout).await?;
        Ok(self.changed())
    }

    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::MemberChangeResponse>, Status> {
        self.auth
            .authenticate(&req)
            .await?
            .require_admin("removing a member")?;
        let timeout = Self::timeout(&req);
        operations::remove_member(&self.cluster, req.into_inner().node_id, timeout).await?;
        Ok(self.changed())
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        self.auth
            .authenticate(&req)
            .await?
            .require_admin("transferring leadership")?;
        let timeout = Self::timeout(&req);
        let r = req.into_inner();
        let to = (r.to != 0).then_some(r.to);
        let leaders =
            operations::transfer_leader(&self.cluster, group_of(&r.group), to, timeout).await?;
        Ok(Response::new(pb::TransferLeaderResponse {
            leaders: leaders
                .into_iter()
                .map(|(group, leader)| pb::GroupLeader {
                    group,
                    leader_id: leader.unwrap_or(0),
                })
                .collect(),
        }))
    }

    async fn snapshot(
        &self,
        req: Request<pb::SnapshotRequest>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        self.auth
            .authenticate(&req)
            .await?
            .require_admin("building a snapshot")?;
        let timeout = Self::timeout(&req);
        let r = req.into_inner();
        let built = operations::snapshot(&self.cluster.node, group_of(&r.group), timeout).await?;
        Ok(Response::new(pb::SnapshotResponse {
            snapshots: built
                .into_iter()
                .map(|(group, snapshot_index)| pb::GroupSnapshot {
                    group,
                    snapshot_index,
                })
                .collect(),
        }))
    }

    async fn digest(
        &self,
        req: Request<pb::DigestRequest>,
    ) -> Result<Response<pb::DigestResponse>, Status> {
        self.auth.authenticate(&req).await?;
        let digests = operations::digests(&self.cluster.node).await?;
        Ok(Response::new(pb::DigestResponse {
            node_id: self.cluster.node.node_id,
            groups: digests
                .into_iter()
                .map(|(group, d)| pb::GroupDigest {
                    group,
                    applied_index: d.applied_index,
                    digest: d.digest,
                    records: d.records,
                })
                .collect(),
        }))
    }
}
