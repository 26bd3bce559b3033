//! A node's set of Raft groups: builds one openraft node per registered group over the
//! shared RocksDB and peer channels, bootstraps empty groups, runs the snapshot timer,
//! and shuts everything down in order.
//!
//! Bootstrap: a group whose storage is empty is initialized with the configured
//! initial members (or with this node alone when there are none), identically on every
//! node, so nodes may start in any order. A group with data ignores the list. Startup
//! never waits for a leader (Nacos issue #10698); readiness reports it instead.

use openraft::rt::watch::WatchReceiver;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, SnapshotPolicy};
use tokio::sync::watch;

use crate::config::Config;
use crate::error::Error;
use crate::raft::db::{self, WalSyncer};
use crate::raft::group::{GroupContext, GroupRegistry, StateMachine};
use crate::raft::log_store::RocksLogStore;
use crate::raft::network::{GroupNetworkFactory, PeerChannels};
use crate::raft::snapshot::SnapshotDir;
use crate::raft::state_machine::GroupStateMachine;
use crate::raft::types::{NodeId, Raft};

/// Counters of one group's consistency layer, exported on /metrics.
#[derive(Debug, Default)]
pub struct GroupCounters {
    pub writes_local: AtomicU64,
    pub writes_forwarded: AtomicU64,
    pub write_retries: AtomicU64,
    pub read_index_failures: AtomicU64,
    pub leader_fallbacks: AtomicU64,
}

impl GroupCounters {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// One group on this node.
pub struct Group {
    pub name: Arc<str>,
    pub raft: Raft,
    pub sm: Arc<dyn StateMachine>,
    pub snapshots: SnapshotDir,
    pub counters: GroupCounters,
}

impl Group {
    /// The current leader as this node knows it: (id, peer address).
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let id = m.current_leader?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
            .unwrap_or_default();
        Some((id, addr))
    }
}

/// Every group of this node.
pub struct MultiRaft {
    pub node_id: NodeId,
    pub advertise_peer: String,
    pub default_timeout: Duration,
    pub channels: PeerChannels,
    groups: BTreeMap<String, Arc<Group>>,
    shutdown_tx: watch::Sender<bool>,
    _syncer: WalSyncer,
    db: std::sync::Weak<rocksdb::DB>,
}

impl MultiRaft {
    pub async fn start(config: &Config, registry: GroupRegistry) -> io::Result<Arc<Self>> {
        let names = registry.names();
        let db = db::open(&config.data_dir.join("raft"), &names)?;
        let syncer = WalSyncer::start(db.clone())?;
        let channels = PeerChannels::new(config.peer_message_limit());
        let (shutdown_tx, _) = watch::channel(false);
        let mut groups = BTreeMap::new();

        let members: BTreeMap<NodeId, BasicNode> = if config.initial_members.is_empty() {
            BTreeMap::from([(
                config.node_id,
                BasicNode::new(config.advertise_peer.clone()),
            )])
        } else {
            config
                .initial_members
                .iter()
                .map(|(id, addr)| (*id, BasicNode::new(addr.clone())))
                .collect()
        };

        for spec in registry.specs() {
            let name = spec.name.as_str();
            let ctx = GroupContext {
                name: name.to_string(),
                db: db.clone(),
                dir: config.data_dir.join("groups").join(name),
            };
            std::fs::create_dir_all(&ctx.dir)?;
            let sm = (spec.build)(&ctx)?;
            let snapshots = SnapshotDir::open(config.data_dir.join("snapshots").join(name))?;
            let gsm = GroupStateMachine::new(name, sm.clone(), snapshots.clone());
            let log = RocksLogStore::new(name, db.clone(), syncer.clone())?;
            let raft_config = openraft::Config {
                cluster_name: format!("nacosd-{name}"),
                heartbeat_interval: config.heartbeat.as_millis() as u64,
                election_timeout_min: config.election_timeout.0.as_millis() as u64,
                election_timeout_max: config.election_timeout.1.as_millis() as u64,
                snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_logs),
                max_in_snapshot_log_to_keep: config.snapshot_keep_logs,
                install_snapshot_timeout: 30_000,
                max_payload_entries: crate::config::MAX_ENTRIES_PER_APPEND,
                enable_pre_vote: Some(true),
                ..Default::default()
            }
            .validate()
            .map_err(|e| io::Error::other(format!("group {name}: bad raft config: {e}")))?;
            let raft = Raft::new(
                config.node_id,
                Arc::new(raft_config),
                GroupNetworkFactory::new(name, channels.clone()),
                log,
                gsm,
            )
            .await
            .map_err(|e| io::Error::other(format!("group {name}: {e}")))?;

            let initialized = raft
                .is_initialized()
                .await
                .map_err(|e| io::Error::other(format!("group {name}: {e}")))?;
            if !initialized {
                tracing::info!(group = name, members = ?members.keys().collect::<Vec<_>>(), "initializing empty group");
                if let Err(e) = raft.initialize(members.clone()).await {
                    // Another node's initialization may already have reached us: fine.
                    tracing::warn!(group = name, error = %e, "initialize");
                }
            }

            let group = Arc::new(Group {
                name: name.into(),
                raft,
                sm,
                snapshots,
                counters: GroupCounters::default(),
            });
            spawn_snapshot_timer(
                group.clone(),
                config.snapshot_interval,
                shutdown_tx.subscribe(),
            );
            groups.insert(name.to_string(), group);
        }

        Ok(Arc::new(MultiRaft {
            node_id: config.node_id,
            advertise_peer: config.advertise_peer.clone(),
            default_timeout: config.default_timeout,
            channels,
            groups,
            shutdown_tx,
            _syncer: syncer,
            db: Arc::downgrade(&db),
        }))
    }

    pub fn group(&self, name: &str) -> Result<&Arc<Group>, Error> {
        self.groups.get(name).ok_or_else(|| {
            Error::NotFound(format!(
                "no group named {name:?} (groups: {})",
                self.groups.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    pub fn groups(&self) -> impl Iterator<Item = &Arc<Group>> {
        self.groups.values()
    }

    /// True when every group knows a leader (the readiness condition).
    pub fn all_groups_have_leader(&self) -> bool {
        self.groups
            .values()
            .all(|g| g.raft.metrics().borrow_watched().current_leader.is_some())
    }

    /// Node ids that lead at least one group here, by group.
    pub fn leaders(&self) -> BTreeMap<String, Option<NodeId>> {
        self.groups
            .iter()
            .map(|(n, g)| (n.clone(), g.raft.metrics().borrow_watched().current_leader))
            .collect()
    }

    /// Every voter id of every group, as this node knows them.
    pub fn known_members(&self) -> BTreeSet<NodeId> {
        self.groups
            .values()
            .flat_map(|g| g.raft.voter_ids().collect::<Vec<_>>())
            .collect()
    }

    /// Stop timers, then shut each group's Raft down (flushing its pending I/O).
    pub async fn shutdown(&self) {
        let _ = self.shutdown_tx.send(true);
        for g in self.groups.values() {
            if let Err(e) = g.raft.shutdown().await {
                tracing::warn!(group = %g.name, error = %e, "raft shutdown");
            }
            tracing::debug!(group = %g.name, holders = Arc::strong_count(g), "group shut down");
        }
    }

    /// After [`MultiRaft::shutdown`] and once the caller dropped its own handles: wait
    /// until the database is closed (its lock released), so the data directory can be
    /// reopened by a new node in the same process or the process can exit cleanly.
    pub async fn wait_closed(db: std::sync::Weak<rocksdb::DB>, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while db.strong_count() > 0 {
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    pub fn db_handle(&self) -> std::sync::Weak<rocksdb::DB> {
        self.db.clone()
    }
}

/// Build a snapshot every `interval` if anything was applied since the last one
/// (the count-based policy is openraft's `SnapshotPolicy`).
fn spawn_snapshot_timer(group: Arc<Group>, interval: Duration, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => return,
            }
            let (applied, snap) = {
                let m = group.raft.metrics();
                let m = m.borrow_watched();
                (
                    m.last_applied.as_ref().map(|l| l.index),
                    m.snapshot.as_ref().map(|l| l.index),
                )
            };
            if applied > snap {
                tracing::info!(group = %group.name, "interval snapshot");
                if group.raft.trigger().snapshot().await.is_err() {
                    return;
                }
            }
        }
    });
}
