//! In-process test clusters on ephemeral loopback ports, and condition waits.
//!
//! Every node runs the real server code (`nacosd::server::start`) on its own data
//! directory; tests stop, restart and inspect nodes through it. Waits poll a condition
//! until a deadline: no test depends on a fixed sleep.

#![allow(dead_code)]

pub mod process;

use openraft::rt::watch::WatchReceiver;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use nacosd::config::Config;
use nacosd::consistency::{self, ReadLevel};
use nacosd::groups::test_kv::{self, KvCommand, KvQuery, KvResponse};
use nacosd::raft::group::GroupRegistry;
use nacosd::raft::node::MultiRaft;
use nacosd::server::{Listeners, RunningServer};
use tokio::net::TcpListener;

/// Generous: CI runs on 2 busy cores.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The value of one series (its full name with labels, e.g.
/// `nacosd_x_total{group="config"}`) in a /metrics text.
pub fn series_value(metrics: &str, series: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Poll `cond` until it holds or `DEADLINE` passes (then panic with `what`).
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !cond() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Poll `progress` until it reaches `target`; panic only if it stops advancing for
/// `DEADLINE` (a long catch-up on busy cores is slow, not stuck).
pub async fn wait_progress(what: &str, target: u64, mut progress: impl FnMut() -> u64) {
    let mut best = progress();
    let mut since = tokio::time::Instant::now();
    while best < target {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = progress();
        if now > best {
            best = now;
            since = tokio::time::Instant::now();
        } else if since.elapsed() > DEADLINE {
            panic!("{what}: no progress past {best} (target {target}) for {DEADLINE:?}");
        }
    }
}

/// The test key-value group.
pub const KV: &str = "kv";

/// Built-in groups plus the test key-value group.
pub fn with_kv(reg: GroupRegistry) -> GroupRegistry {
    reg.register(KV, |ctx| {
        Ok(std::sync::Arc::new(
            nacosd::raft::rocks_sm::RocksStateMachine::new(
                &ctx.name,
                ctx.db.clone(),
                test_kv::KvProcessor,
            )?,
        ))
    })
}

pub struct NodeSlot {
    pub config: Config,
    pub server: Option<RunningServer>,
    /// The ports of a node that was never started, kept bound so nothing else takes
    /// them (see [`TestCluster::start_only`]).
    pub reserved: Option<Listeners>,
}

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub nodes: BTreeMap<u64, NodeSlot>,
    registry: fn(GroupRegistry) -> GroupRegistry,
}

pub fn test_config(id: u64, dir: PathBuf) -> Config {
    Config {
        node_id: id,
        data_dir: dir,
        heartbeat: Duration::from_millis(100),
        election_timeout: (Duration::from_millis(800), Duration::from_millis(1600)),
        default_timeout: Duration::from_secs(10),
        // In-process clusters speak plaintext between nodes unless a test sets
        // `peer_tls` (tests/integration/security.rs).
        insecure_peer: true,
        ..Config::default()
    }
}

async fn bind_local() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback")
}

impl TestCluster {
    /// Start `n` nodes running the groups of `registry`, configured by `tweak`.
    pub async fn start(
        n: u64,
        registry: fn(GroupRegistry) -> GroupRegistry,
        tweak: impl Fn(&mut Config),
    ) -> Self {
        let all: Vec<u64> = (1..=n).collect();
        Self::start_only(n, registry, tweak, &all).await
    }

    /// Configure `n` nodes as one cluster but start only those in `running`; the others
    /// keep their ports reserved and start with [`TestCluster::restart`].
    pub async fn start_only(
        n: u64,
        registry: fn(GroupRegistry) -> GroupRegistry,
        tweak: impl Fn(&mut Config),
        running: &[u64],
    ) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut listeners = BTreeMap::new();
        let mut members = BTreeMap::new();
        for id in 1..=n {
            let l = Listeners {
                client: bind_local().await,
                peer: bind_local().await,
                http: bind_local().await,
            };
            members.insert(id, l.peer.local_addr().unwrap().to_string());
            listeners.insert(id, l);
        }
        let mut nodes = BTreeMap::new();
        for (id, l) in listeners {
            let mut config = test_config(id, dir.path().join(format!("node{id}")));
            config.client_addr = l.client.local_addr().unwrap();
            config.peer_addr = l.peer.local_addr().unwrap();
            config.http_addr = l.http.local_addr().unwrap();
            if n > 1 {
                config.initial_members = members.clone();
            }
            config.advertise_peer = members[&id].clone();
            tweak(&mut config);
            config.validate().expect("valid test config");
            let slot = if running.contains(&id) {
                let server = nacosd::server::start(&config, registry, l)
                    .await
                    .expect("node starts");
                NodeSlot {
                    config,
                    server: Some(server),
                    reserved: None,
                }
            } else {
                NodeSlot {
                    config,
                    server: None,
                    reserved: Some(l),
                }
            };
            nodes.insert(id, slot);
        }
        TestCluster {
            dir,
            nodes,
            registry,
        }
    }

    pub fn node(&self, id: u64) -> &std::sync::Arc<MultiRaft> {
        &self.nodes[&id]
            .server
            .as_ref()
            .expect("node is running")
            .node
    }

    pub fn server(&self, id: u64) -> &RunningServer {
        self.nodes[&id].server.as_ref().expect("node is running")
    }

    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, s)| s.server.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// The leader of `group` that every running node agrees on, if any.
    pub fn agreed_leader(&self, group: &str) -> Option<u64> {
        let mut leader = None;
        for id in self.running() {
            let g = self.node(id).group(group).ok()?;
            let l = g.raft.metrics().borrow_watched().current_leader?;
            if leader.is_some_and(|x| x != l) {
                return None;
            }
            leader = Some(l);
        }
        let l = leader?;
        // The agreed leader must itself be running and think it leads.
        if self.running().contains(&l) && self.node(l).group(group).ok()?.raft.is_leader() {
            Some(l)
        } else {
            None
        }
    }

    pub async fn wait_for_leader(&self, group: &str) -> u64 {
        wait_until(&format!("a leader for {group}"), || {
            self.agreed_leader(group).is_some()
        })
        .await;
        self.agreed_leader(group).unwrap()
    }

    /// A snapshot of node `id`'s Raft metrics for `group`.
    pub fn metrics(&self, id: u64, group: &str) -> nacosd::raft::types::RaftMetrics {
        let g = self.node(id).group(group).expect("group exists");
        let m = g.raft.metrics().borrow_watched().clone();
        m
    }

    pub fn applied(&self, id: u64, group: &str) -> Option<u64> {
        self.metrics(id, group).last_applied.map(|l| l.index)
    }

    /// A running node other than `leader`.
    pub fn other_than(&self, leader: u64) -> u64 {
        self.running()
            .into_iter()
            .find(|id| *id != leader)
            .expect("another running node")
    }

    /// Restart the stopped node `lagging` once `leader` has purged its `group` log past
    /// `purged_past`, wait until it has applied as far as the leader, and check that it
    /// got there by installing a snapshot.
    pub async fn restart_behind_purge(
        &mut self,
        group: &str,
        leader: u64,
        lagging: u64,
        purged_past: u64,
    ) {
        wait_until("leader purges its log", || {
            self.metrics(leader, group)
                .purged
                .map(|l| l.index)
                .unwrap_or(0)
                > purged_past
        })
        .await;
        self.restart(lagging).await;
        let last = self.applied(leader, group).expect("leader applied");
        self.wait_applied(group, last).await;
        assert!(
            self.metrics(lagging, group).snapshot.is_some(),
            "node {lagging} caught up through a snapshot"
        );
    }

    /// Wait until every running node has applied at least `index` in `group`.
    pub async fn wait_applied(&self, group: &str, index: u64) {
        let ids = self.running();
        wait_until(&format!("{group} applied to {index} on {ids:?}"), || {
            ids.iter()
                .all(|id| self.applied(*id, group).is_some_and(|a| a >= index))
        })
        .await;
    }

    /// Wait until every running node has loaded its ephemeral data (Distro ready).
    pub async fn wait_distro_ready(&self) {
        wait_until("ephemeral data ready everywhere", || {
            self.running()
                .iter()
                .all(|id| self.server(*id).distro.ready())
        })
        .await;
    }

    /// Stop a node gracefully; its data directory stays.
    pub async fn stop(&mut self, id: u64) {
        let slot = self.nodes.get_mut(&id).unwrap();
        if let Some(server) = slot.server.take() {
            server.shutdown().await;
        }
    }

    /// Restart a stopped node from its data directory on its old ports.
    pub async fn restart(&mut self, id: u64) {
        let registry = self.registry;
        let slot = self.nodes.get_mut(&id).unwrap();
        assert!(slot.server.is_none(), "node {id} is running");
        let reserved = slot.reserved.take();
        let c = &slot.config;
        tracing::info!(id, "restarting node");
        // The old sockets may need a moment to be released; the old storage is closed
        // (shutdown waits for RocksDB's own close to complete).
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let listeners = if let Some(l) = reserved {
            l
        } else {
            loop {
                let bound = async {
                    Ok::<_, std::io::Error>(Listeners {
                        client: TcpListener::bind(c.client_addr).await?,
                        peer: TcpListener::bind(c.peer_addr).await?,
                        http: TcpListener::bind(c.http_addr).await?,
                    })
                }
                .await;
                match bound {
                    Ok(l) => break l,
                    Err(e) if tokio::time::Instant::now() < deadline => {
                        tracing::debug!(id, error = %e, "rebinding");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("rebinding node {id}: {e}"),
                }
            }
        };
        let server = nacosd::server::start(c, registry, listeners)
            .await
            .unwrap_or_else(|e| panic!("node {id} restarts: {e:?}"));
        slot.server = Some(server);
    }

    /// Start a new node `id` with an empty data directory that joins the cluster
    /// through `via`'s peer address (as `--join` does), configured by `tweak`.
    pub async fn add_joining(&mut self, id: u64, via: u64, tweak: impl FnOnce(&mut Config)) {
        assert!(!self.nodes.contains_key(&id), "node {id} exists");
        let l = Listeners {
            client: bind_local().await,
            peer: bind_local().await,
            http: bind_local().await,
        };
        let mut config = test_config(id, self.dir.path().join(format!("node{id}")));
        config.client_addr = l.client.local_addr().unwrap();
        config.peer_addr = l.peer.local_addr().unwrap();
        config.http_addr = l.http.local_addr().unwrap();
        config.advertise_peer = config.peer_addr.to_string();
        config.join = Some(self.nodes[&via].config.advertise_peer.clone());
        tweak(&mut config);
        config.validate().expect("valid test config");
        let server = nacosd::server::start(&config, self.registry, l)
            .await
            .expect("node starts");
        self.nodes.insert(
            id,
            NodeSlot {
                config,
                server: Some(server),
                reserved: None,
            },
        );
    }

    /// Give a stopped node new ports (and advertise the new peer address): the same
    /// machine at a new address. Returns the new peer address.
    pub async fn move_to_new_ports(&mut self, id: u64) -> String {
        let l = Listeners {
            client: bind_local().await,
            peer: bind_local().await,
            http: bind_local().await,
        };
        let slot = self.nodes.get_mut(&id).unwrap();
        assert!(slot.server.is_none(), "node {id} is running");
        slot.config.client_addr = l.client.local_addr().unwrap();
        slot.config.peer_addr = l.peer.local_addr().unwrap();
        slot.config.http_addr = l.http.local_addr().unwrap();
        slot.config.advertise_peer = slot.config.peer_addr.to_string();
        slot.reserved = Some(l);
        slot.config.advertise_peer.clone()
    }

    /// Forget a node that left the cluster (its server is dropped without a graceful
    /// shutdown if it still runs).
    pub async fn forget(&mut self, id: u64) {
        self.stop(id).await;
        self.nodes.remove(&id);
    }

    /// Delete a stopped node's data directory: its disk was lost.
    pub fn wipe(&mut self, id: u64) {
        let slot = &self.nodes[&id];
        assert!(slot.server.is_none(), "node {id} is running");
        std::fs::remove_dir_all(&slot.config.data_dir).expect("wipe data dir");
    }

    /// Change a stopped node's configuration before its next start.
    pub fn reconfigure(&mut self, id: u64, f: impl FnOnce(&mut Config)) {
        let slot = self.nodes.get_mut(&id).unwrap();
        assert!(slot.server.is_none(), "node {id} is running");
        f(&mut slot.config);
    }

    pub async fn shutdown(mut self) {
        for id in self.running() {
            self.stop(id).await;
        }
    }
}

/// Put through node `via` with the consistency layer (forwarded if needed).
pub async fn put(node: &MultiRaft, group: &str, key: &str, value: &str) -> nacosd::Result<u64> {
    let cmd = KvCommand::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    }
    .into_command();
    let resp = consistency::write(node, group, cmd, None).await?;
    match nacosd::codec::decode_message::<KvResponse>(&resp, "kv reply")? {
        KvResponse::Written { index, .. } => Ok(index),
        other => panic!("unexpected write response {other:?}"),
    }
}

pub async fn get(
    node: &MultiRaft,
    group: &str,
    key: &str,
    level: ReadLevel,
) -> nacosd::Result<Option<String>> {
    let q = nacosd::codec::encode(&KvQuery::Get {
        key: key.as_bytes().to_vec(),
    });
    let resp = consistency::read(node, group, q, level, Some(Duration::from_secs(10))).await?;
    match nacosd::codec::decode_message::<KvResponse>(&resp, "kv reply")? {
        KvResponse::Value(v) => Ok(v.map(|v| String::from_utf8(v).unwrap())),
        other => panic!("unexpected read response {other:?}"),
    }
}

/// Everything in a group's state machine on one node, read locally.
pub fn dump(node: &MultiRaft, group: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let q = nacosd::codec::encode(&KvQuery::Scan {
        prefix: vec![],
        start_after: None,
        limit: 10_000,
    });
    let resp = node.group(group).unwrap().sm.query(&q).unwrap();
    match nacosd::codec::decode_message::<KvResponse>(&resp, "kv reply").unwrap() {
        KvResponse::Pairs(p) => p,
        other => panic!("unexpected scan response {other:?}"),
    }
}
