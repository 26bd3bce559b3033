//! How an empty data directory gets its cluster identity.
//!
//! A node whose data directory holds an identity simply runs: its groups have their
//! logs, votes and membership (it only asks the members to record a new address, and
//! to promote it where a restart interrupted its promotion). A node without one
//! decides, in this order:
//!
//! 1. **Standalone** (no initial members, no `--join`): it creates a new cluster of one
//!    at once, so `nacosd` with no flags serves immediately.
//! 2. **Join** (`--join` given, or `--initial-cluster-state existing`, or the probe
//!    below finds that the cluster already exists): it asks a member to admit it
//!    (`membership::join_cluster`): as a learner that catches up first, even when its id
//!    is a voter of the cluster (a node that lost its disk), so it never votes or counts
//!    toward a commit with an empty log.
//! 3. **New cluster** (`--initial-members`, state `new`): it asks every other initial
//!    member who it is (Hello). Only when **every** initial member answers and none has
//!    an identity does the member with the lowest id create the cluster id, store it
//!    (with a durable record of the members that have yet to take it), initialize its
//!    groups with the initial member list and offer the identity in its Hello replies.
//!    The other members take the offer (store the identity, initialize with the same
//!    list) and confirm it with their next Hello, which removes them from the record.
//!    A member that is unreachable holds the bootstrap back; a member that already has
//!    an identity turns the new cluster into case 2.
//!
//! Why an offer that only the bootstrapper makes, only to members it saw empty, and
//! only until they confirm: a node that took part in the cluster (voted, acknowledged an
//! entry) has confirmed long before, so a later wipe of its disk can never make it an
//! empty voter again through this path. A member wiped before it ever confirmed never
//! took part in anything, so admitting it as a voter loses nothing.
//!
//! While undecided the node serves its ports but is not ready, and its peer port refuses
//! every Raft call (`peer::server`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::cluster::{membership, Cluster};
use crate::config::{InitialClusterState, NodeId};
use crate::distro::wire as distro_wire;
use crate::error::{Error, Result};
use crate::pb;
use crate::raft::identity::{self, BootstrapRecord, ClusterId, Identity};
use crate::raft::node::GroupCounters;

/// How often an undecided node probes the initial members.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Deadline of one Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(2);

/// The answer to a Hello: who this node is and, on the bootstrapper, the offer to the
/// initial members that have not yet taken the identity. A Hello that shows the asker
/// took the identity confirms it.
pub async fn hello(cluster: &Cluster, req: &pb::HelloRequest) -> pb::HelloReply {
    if let Err(e) = distro_wire::check_protocol(
        req.distro_protocol,
        &format!("node {} at {}", req.node_id, req.advertise_peer),
    ) {
        tracing::warn!(error = %e, "a peer said hello");
    }
    let mine = cluster.node.identity().cluster_id();
    let theirs = ClusterId::parse(&req.cluster_id);
    let mut offer = cluster.bootstrap.lock().await;
    if let (Some(record), Some(mine), Some(theirs)) = (offer.as_mut(), mine, theirs) {
        if mine == theirs && record.pending.remove(&req.node_id) {
            tracing::info!(
                node = req.node_id,
                "initial member took the cluster identity"
            );
            let remaining = (!record.pending.is_empty()).then(|| record.clone());
            let db_record = remaining.clone();
            let node = cluster.node.clone();
            let stored = tokio::task::spawn_blocking(move || {
                identity::store_bootstrap(node.db(), db_record.as_ref())
            })
            .await;
            if !matches!(stored, Ok(Ok(()))) {
                tracing::warn!(?stored, "could not record a confirmed initial member");
            }
            *offer = remaining;
        }
    }
    pb::HelloReply {
        node_id: cluster.node.node_id,
        cluster_id: mine.map(|c| c.to_string()).unwrap_or_default(),
        advertise_peer: cluster.node.advertise_peer.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        distro_protocol: distro_wire::PROTOCOL,
        bootstrap: offer.as_ref().and_then(|r| {
            Some(pb::BootstrapOffer {
                cluster_id: mine?.to_string(),
                members: r.members.clone().into_iter().collect(),
                pending: r.pending.iter().copied().collect(),
            })
        }),
    }
}

/// What an undecided node learned from one round of probes.
enum Probe {
    /// Every initial member answered and none has an identity.
    AllEmpty,
    /// The bootstrapper offers this identity to this node.
    Offered(ClusterId),
    /// The cluster exists: ask these members for admission.
    Exists(Vec<String>),
    /// Not everyone answered yet.
    Waiting(Vec<NodeId>),
}

/// Settle this node's identity (see the module docs), then return. Runs in the
/// background: the node serves (unready) meanwhile.
pub async fn run(cluster: Arc<Cluster>, mut stop: watch::Receiver<bool>) {
    if cluster.node.identity().get().is_some() {
        // Decided long ago; only the address this node advertises may have changed.
        membership::announce_address(cluster.clone(), stop.clone()).await;
        // A node that stopped after its admission but before every group promoted it
        // (a pod restarted while catching up) would otherwise stay a learner there.
        if !cluster.learner {
            membership::promote_when_caught_up(cluster, stop).await;
        }
        return;
    }
    let node = &cluster.node;
    let standalone = cluster.initial_members.is_empty() && cluster.join.is_none();
    if standalone {
        let members = BTreeMap::from([(node.node_id, node.advertise_peer.clone())]);
        if let Err(e) = found_cluster(&cluster, members, None).await {
            tracing::error!(error = %e, "could not create a standalone cluster");
        }
        return;
    }
    let mut join_via: Option<Vec<String>> = match (&cluster.join, cluster.initial_cluster_state) {
        (Some(addr), _) => Some(vec![addr.clone()]),
        (None, InitialClusterState::Existing) => Some(others(&cluster).into_values().collect()),
        (None, InitialClusterState::New) => None,
    };
    let mut last_report = None::<Vec<NodeId>>;
    while join_via.is_none() {
        match probe(&cluster).await {
            Probe::AllEmpty => {
                let lowest = cluster.initial_members.keys().next().copied();
                if lowest == Some(node.node_id) {
                    let members = cluster.initial_members.clone();
                    let pending = others(&cluster).into_keys().collect();
                    match found_cluster(&cluster, members, Some(pending)).await {
                        Ok(()) => return,
                        Err(e) => {
                            tracing::error!(error = %e, "bootstrapping the cluster failed; retrying")
                        }
                    }
                }
            }
            Probe::Offered(cluster_id) => match take_offer(&cluster, cluster_id).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::error!(error = %e, "taking the cluster identity failed; retrying")
                }
            },
            Probe::Exists(members) => {
                tracing::warn!(
                    node_id = node.node_id,
                    "this node's data directory is empty but its cluster already exists: it was lost or wiped, or this node is new; asking the cluster to admit it as a learner (it will not vote until it has caught up)"
                );
                join_via = Some(members);
            }
            Probe::Waiting(missing) => {
                if last_report.as_ref() != Some(&missing) {
                    tracing::info!(?missing, "waiting for every initial member to be reachable before forming a new cluster");
                    last_report = Some(missing);
                }
            }
        }
        if cluster.node.identity().get().is_some() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(PROBE_INTERVAL) => {}
            _ = stop.changed() => return,
        }
    }
    if let Some(via) = join_via {
        membership::join_cluster(cluster.clone(), via, stop).await;
    }
}

/// The initial members other than this node.
fn others(cluster: &Cluster) -> BTreeMap<NodeId, String> {
    cluster
        .initial_members
        .iter()
        .filter(|(id, _)| **id != cluster.node.node_id)
        .map(|(id, addr)| (*id, addr.clone()))
        .collect()
}

async fn probe(cluster: &Cluster) -> Probe {
    let node = &cluster.node;
    GroupCounters::inc(&node.counters.bootstrap_probes);
    let asks = others(cluster).into_iter().map(|(id, addr)| async move {
        let reply = node
            .peers
            .hello(&addr, &node.advertise_peer, HELLO_TIMEOUT)
            .await;
        (id, addr, reply)
    });
    let replies = futures::future::join_all(asks).await;
    let mut missing = Vec::new();
    let mut existing = Vec::new();
    for (id, addr, reply) in replies {
        let Ok(reply) = reply else {
            missing.push(id);
            continue;
        };
        if reply.node_id != id {
            tracing::warn!(expected = id, answered = reply.node_id, %addr, "an initial member's address answers with another node id");
            missing.push(id);
            continue;
        }
        if let Some(offer) = &reply.bootstrap {
            let same_members: BTreeMap<NodeId, String> =
                offer.members.clone().into_iter().collect();
            if offer.pending.contains(&node.node_id) && same_members == cluster.initial_members {
                if let Some(c) = ClusterId::parse(&offer.cluster_id) {
                    return Probe::Offered(c);
                }
            }
        }
        if !reply.cluster_id.is_empty() {
            existing.push(addr);
        }
    }
    if !existing.is_empty() {
        Probe::Exists(existing)
    } else if missing.is_empty() {
        Probe::AllEmpty
    } else {
        Probe::Waiting(missing)
    }
}

/// Create a new cluster with this node as (one of) its first members.
async fn found_cluster(
    cluster: &Cluster,
    members: BTreeMap<NodeId, String>,
    pending: Option<BTreeSet<NodeId>>,
) -> Result<()> {
    let node = &cluster.node;
    let id = Identity {
        cluster_id: ClusterId::random(),
        node_id: node.node_id,
    };
    let record = pending
        .filter(|p| !p.is_empty())
        .map(|pending| BootstrapRecord {
            members: members.clone(),
            pending,
        });
    // The offer is recorded before the identity becomes visible, so no Hello can see
    // the identity without the offer.
    if let Some(r) = &record {
        let (n, r2) = (node.clone(), r.clone());
        tokio::task::spawn_blocking(move || identity::store_bootstrap(n.db(), Some(&r2)))
            .await
            .map_err(Error::internal)??;
        *cluster.bootstrap.lock().await = Some(r.clone());
    }
    adopt(cluster, id.clone()).await?;
    node.initialize(&members).await?;
    tracing::info!(cluster_id = %id.cluster_id, members = ?members.keys().collect::<Vec<_>>(), "created a new cluster");
    Ok(())
}

/// Take the identity the bootstrapper offered, and the same first membership.
async fn take_offer(cluster: &Cluster, cluster_id: ClusterId) -> Result<()> {
    let node = &cluster.node;
    adopt(
        cluster,
        Identity {
            cluster_id,
            node_id: node.node_id,
        },
    )
    .await?;
    node.initialize(&cluster.initial_members).await?;
    tracing::info!(%cluster_id, "joined the new cluster as an initial member");
    // Confirm at once (the bootstrapper would otherwise learn it from a later Hello).
    let lowest = cluster.initial_members.iter().next();
    if let Some((_, addr)) = lowest {
        let _ = node
            .peers
            .hello(addr, &node.advertise_peer, HELLO_TIMEOUT)
            .await;
    }
    Ok(())
}

/// Store the identity durably, then make it visible.
pub(crate) async fn adopt(cluster: &Cluster, id: Identity) -> Result<()> {
    let node = cluster.node.clone();
    tokio::task::spawn_blocking(move || node.adopt_identity(id))
        .await
        .map_err(Error::internal)?
}
