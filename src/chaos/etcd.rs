//! etcd beside nacosd for `--measure-failover --system etcd`: the same network, the
//! same faults and the same writers, against an etcd cluster with its default settings
//! (heartbeat 100 ms, election timeout 1000 ms). etcd has one Raft group; the rounds'
//! group only names the writers' keys.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::Channel;

use super::cluster::Cluster;
use crate::pb::etcd;
use crate::pb::etcd::kv_client::KvClient;
use crate::pb::etcd::maintenance_client::MaintenanceClient;

/// Maintenance/Status of one member: `(its member id, the leader it knows)`.
async fn status(channel: Channel) -> Option<(u64, u64)> {
    let mut req = tonic::Request::new(etcd::StatusRequest {});
    req.set_timeout(Duration::from_secs(1));
    let reply = MaintenanceClient::new(channel)
        .status(req)
        .await
        .ok()?
        .into_inner();
    Some((reply.header?.member_id, reply.leader))
}

/// The node every running member names as leader, once they all answer and agree.
pub async fn agreed_leader(cluster: &mut Cluster) -> Option<usize> {
    let mut ids = BTreeMap::new();
    let mut named = None;
    for node in &mut cluster.nodes {
        if !node.is_up() {
            continue;
        }
        let (me, leader) = status(node.channel()).await?;
        if leader == 0 || named.is_some_and(|l| l != leader) {
            return None;
        }
        named = Some(leader);
        ids.insert(me, node.id());
    }
    ids.get(&named?).copied()
}

/// Waits until the running members agree on a leader.
pub async fn wait_for_leader(cluster: &mut Cluster, within: Duration) -> Result<usize, String> {
    let end = Instant::now() + within;
    loop {
        cluster.check_processes()?;
        if let Some(leader) = agreed_leader(cluster).await {
            return Ok(leader);
        }
        if Instant::now() > end {
            return Err(format!("etcd: no agreed leader within {within:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A Put through `channel` with `timeout`; `Err` is the status code's name.
pub async fn put(
    channel: Channel,
    key: String,
    value: String,
    timeout: Duration,
) -> Result<(), String> {
    let mut req = tonic::Request::new(etcd::PutRequest {
        key: key.into_bytes(),
        value: value.into_bytes(),
        ..Default::default()
    });
    req.set_timeout(timeout);
    KvClient::new(channel)
        .put(req)
        .await
        .map(|_| ())
        .map_err(|s| format!("{:?}", s.code()))
}
