//! A node's set of Raft groups: builds one openraft node per registered group over the
//! shared RocksDB and peer client, runs the snapshot timer, and shuts everything down in
//! order.
//!
//! Bootstrapping (whether and how the groups get their first membership) is not decided
//! here: see `cluster::bootstrap`. This module only offers [`MultiRaft::initialize`]
//! for it, and records the node's [`IdentityCell`]. Startup never waits for a leader
//! (Nacos issue #10698); readiness reports it instead.
//!
//! Two timing rules live here because openraft leaves them to the application:
//! - **Vote hold after a restart.** openraft forgets, across a restart, the leader lease
//!   its heartbeats granted: a node that restarts could vote for a new leader while the
//!   old one still serves LEASE reads on the strength of acknowledgements this node gave
//!   before going down. A node that restarts with data therefore grants no vote and
//!   starts no election for one lease (`election_timeout_max`) plus a heartbeat interval
//!   ([`MultiRaft::vote_hold_remaining`]). A group in which this node is the only voter
//!   is exempt (no other node can have granted it a lease), and so is a brand-new node.
//! - **Quorum contact.** A leader knows when a quorum last acknowledged it; a follower
//!   notes every accepted AppendEntries ([`Group::note_leader_contact`]). A node out of
//!   contact with its group's quorum for longer than a lease is reported as such
//!   (readiness, `Status`) and fails requests fast instead of holding them until their
//!   deadline ([`Group::cut_off_for`]).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::rt::watch::WatchReceiver;
use openraft::{BasicNode, ServerState, SnapshotPolicy};
use rocksdb::DB;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::peer::raft_network::{AddressBook, GroupNetworkFactory};
use crate::peer::PeerClient;
use crate::raft::control::ControlRuntime;
use crate::raft::group::{GroupContext, GroupRegistry, GroupSpec, StateMachine};
use crate::raft::identity::{self, Identity, IdentityCell};
use crate::raft::log_cache::LogCache;
use crate::raft::log_store::RocksLogStore;
use crate::raft::rocks::{self, Db, WalSyncer};
use crate::raft::snapshot::SnapshotDir;
use crate::raft::stages::StageClock;
use crate::raft::state_machine::GroupStateMachine;
use crate::raft::types::{NodeId, Raft};

/// Counters of one group's consistency layer, exported on /metrics.
#[derive(Debug, Default)]
pub struct GroupCounters {
    /// Writes proposed on this node as leader.
    pub writes_local: AtomicU64,
    /// Batches of writes this node handed to the group's Raft core as leader (its own
    /// clients' writes and forwarded ones, `consistency::write`), each one message.
    pub proposal_batches: AtomicU64,
    /// Writes this node forwarded to the leader.
    pub writes_forwarded: AtomicU64,
    /// Write attempts retried because no leader took them.
    pub write_retries: AtomicU64,
    /// Requests to the leader (forwarded writes, read indexes, reads) abandoned because
    /// this node learned of a new leader before the old one answered.
    pub forwards_abandoned: AtomicU64,
    /// Linearizable/lease reads whose read-index step failed.
    pub read_index_failures: AtomicU64,
    /// Reads executed on the leader instead of locally (after a failed read index, or
    /// when this node could not catch up with the read index in time).
    pub leader_fallbacks: AtomicU64,
    /// Local queries answered from memory on the async worker that received them.
    pub queries_in_memory: AtomicU64,
    /// Local queries run on the blocking pool.
    pub queries_blocking: AtomicU64,
    /// Pipelined replication streams (`AppendStream`) this node served as a follower,
    /// one per leader's replication session.
    pub append_streams_served: AtomicU64,
    /// Flushes of this group's memtables because it fell quiet while other groups
    /// still wrote (`crate::idle`).
    pub idle_flushes: AtomicU64,
}

impl GroupCounters {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counters of the node as a whole, exported on /metrics.
#[derive(Debug, Default)]
pub struct NodeCounters {
    /// Peer calls refused by admission (another cluster, or no identity here yet).
    pub peer_calls_refused: AtomicU64,
    /// Rounds of Hello probes an empty node made while deciding how to get its
    /// cluster identity.
    pub bootstrap_probes: AtomicU64,
    /// Memtable flushes done because the node fell idle (`crate::idle`).
    pub idle_flushes: AtomicU64,
}

/// Memtables holding less than this are left alone when the node falls idle: not worth
/// a table of their own (tables that small only make work for compaction).
pub const IDLE_FLUSH_MIN: u64 = 1 << 20;

/// Timing shared by every group of the node.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub heartbeat: Duration,
    pub election_timeout_max: Duration,
}

impl Timing {
    /// openraft's leader lease.
    pub fn lease(&self) -> Duration {
        self.election_timeout_max
    }
}

/// One group on this node.
pub struct Group {
    pub name: Arc<str>,
    pub raft: Raft,
    pub sm: Arc<dyn StateMachine>,
    pub snapshots: SnapshotDir,
    pub counters: GroupCounters,
    /// The client writes this node proposes while it leads the group, batched
    /// (`consistency::Proposals`).
    pub proposals: crate::consistency::Proposals,
    /// The newest entries of the group's log, kept in memory (`log_cache`).
    pub log_cache: Arc<std::sync::Mutex<LogCache>>,
    node_id: NodeId,
    timing: Timing,
    epoch: Instant,
    /// Milliseconds since `epoch` of the last AppendEntries accepted from the leader
    /// (0: never).
    leader_contact_ms: AtomicU64,
}

impl Group {
    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// The current leader as this node knows it: (id, peer address). `None` also while
    /// the leader's address is not known yet (a new member that has the leader's vote
    /// but not yet the membership it was sent).
    pub fn leader(&self) -> Option<(NodeId, String)> {
        // The server metrics: the waits on a leader change watch them, and openraft
        // sends them before the full metrics, so they are never the older of the two.
        let metrics = self.raft.server_metrics();
        let m = metrics.borrow_watched();
        let id = m.current_leader?;
        let addr = m.membership_config.membership().get_node(&id)?.addr.clone();
        Some((id, addr))
    }

    /// Record that the current leader reached this node.
    pub fn note_leader_contact(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.leader_contact_ms.store(now.max(1), Ordering::Relaxed);
    }

    /// How long ago this node was last in touch with its group's quorum: as leader, the
    /// last quorum acknowledgement; otherwise the last AppendEntries from a leader.
    /// `None` when it never was. A group in which this node is the only voter is always
    /// in touch.
    pub fn quorum_contact_age(&self) -> Option<Duration> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let membership = m.membership_config.membership();
        let alone = membership.voter_ids().eq([self.node_id]);
        let acked = m
            .last_quorum_acked
            .as_ref()
            .map(|t| openraft::Instant::elapsed(&**t));
        let heard = || self.leader_contact_age();
        match m.state {
            ServerState::Leader if alone => Some(Duration::ZERO),
            // A leader without an acknowledgement yet has just won an election: a
            // quorum granted it its vote a moment ago.
            ServerState::Leader => acked.or(Some(Duration::ZERO)),
            ServerState::Follower | ServerState::Learner | ServerState::Candidate => heard(),
            ServerState::Shutdown => None,
        }
    }

    /// Time since the last AppendEntries accepted from a leader (`None`: never).
    fn leader_contact_age(&self) -> Option<Duration> {
        let at = self.leader_contact_ms.load(Ordering::Relaxed);
        if at == 0 {
            return None;
        }
        let now = self.epoch.elapsed().as_millis() as u64;
        Some(Duration::from_millis(now.saturating_sub(at)))
    }

    /// True while this node is in touch with its group's quorum (within a lease) and
    /// knows the leader.
    pub fn has_quorum_contact(&self) -> bool {
        self.raft
            .metrics()
            .borrow_watched()
            .current_leader
            .is_some()
            && self
                .quorum_contact_age()
                .is_some_and(|age| age <= self.timing.lease())
    }

    /// How long this node has been cut off from its group's quorum, if it has been for
    /// more than two leases — long enough that no election in progress explains it: the
    /// node is partitioned away (or the group has lost its majority) and requests should
    /// go to another node rather than wait here for their deadline.
    pub fn cut_off_for(&self) -> Option<Duration> {
        let limit = self.timing.lease() * 2;
        match self.quorum_contact_age() {
            Some(age) if age > limit => Some(age),
            Some(_) => None,
            // Never in contact: count from the start of the process.
            None => {
                let up = self.epoch.elapsed();
                (up > limit).then_some(up)
            }
        }
    }

    /// Answer a read from the local state machine: from memory right here when the
    /// state machine can (a point read whose data is cached: no thread hop), otherwise
    /// on the blocking pool, since a query may be arbitrary SQL that runs for seconds
    /// or wait for the disk, and tokio's workers carry the Raft heartbeats.
    pub async fn query(&self, query: Vec<u8>) -> Result<Vec<u8>> {
        if let Some(answer) = self.sm.query_in_memory(&query) {
            GroupCounters::inc(&self.counters.queries_in_memory);
            return answer;
        }
        GroupCounters::inc(&self.counters.queries_blocking);
        let sm = self.sm.clone();
        tokio::task::spawn_blocking(move || sm.query(&query))
            .await
            .map_err(|e| Error::internal(format!("query task failed: {e}")))?
    }

    /// This group's voters, as this node knows them.
    /// The voter other than this node with the most of the log (leader only): where
    /// leadership goes when it is handed over.
    pub fn transfer_target(&self) -> Option<NodeId> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        m.replication.as_ref().and_then(|r| {
            r.iter()
                .filter(|(id, _)| **id != self.node_id && voters.contains(id))
                .max_by_key(|(_, matched)| matched.as_ref().map(|l| l.index))
                .map(|(id, _)| *id)
        })
    }

    /// Wait (at most `timeout`) until a node other than this one leads the group.
    pub async fn wait_leader_moved(&self, timeout: Duration) -> bool {
        let mut rx = self.raft.server_metrics();
        tokio::time::timeout(timeout, async {
            loop {
                let leader = rx.borrow_watched().current_leader;
                if leader.is_some() && leader != Some(self.node_id) {
                    return true;
                }
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await
        .unwrap_or(false)
    }

    /// Members this leader heard from within `within` (itself included).
    pub fn heard_from_within(&self, within: Duration) -> BTreeSet<NodeId> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let mut heard: BTreeSet<NodeId> = m
            .heartbeat
            .iter()
            .flatten()
            .filter(|(_, at)| {
                at.as_ref()
                    .is_some_and(|t| openraft::Instant::elapsed(&**t) <= within)
            })
            .map(|(id, _)| *id)
            .collect();
        heard.insert(self.node_id);
        heard
    }

    pub fn voters(&self) -> BTreeSet<NodeId> {
        self.raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }
}

/// Every group of this node.
pub struct MultiRaft {
    pub node_id: NodeId,
    pub advertise_peer: String,
    pub default_timeout: Duration,
    pub timing: Timing,
    pub peers: PeerClient,
    pub counters: NodeCounters,
    /// Histograms and counters recorded as the node runs (`crate::metrics`).
    pub metrics: Arc<Metrics>,
    /// Where the groups' openraft tasks, the peer server and the control-lane
    /// connections run (`raft::control`).
    pub control: Arc<ControlRuntime>,
    identity: IdentityCell,
    groups: BTreeMap<String, Arc<Group>>,
    db: Arc<Db>,
    /// While set: no vote granted, no election started (see the module docs).
    vote_hold_until: Option<Instant>,
    shutdown_tx: watch::Sender<bool>,
    _syncer: WalSyncer,
}

/// What [`MultiRaft::shutdown`] hands back so the caller can wait for the storage to
/// be closed once it has dropped its own handles.
pub struct Closing(watch::Receiver<bool>);

impl Closing {
    /// Wait until RocksDB is closed (its lock released), up to `timeout`.
    pub async fn wait(mut self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.0.wait_for(|closed| *closed))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

fn raft_config(config: &Config, name: &str) -> io::Result<openraft::Config> {
    let lease = config.election_timeout.1.as_millis() as u64;
    openraft::Config {
        cluster_name: format!("nacosd-{name}"),
        heartbeat_interval: config.heartbeat.as_millis() as u64,
        election_timeout_min: config.election_timeout.0.as_millis() as u64,
        election_timeout_max: lease,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_logs),
        max_in_snapshot_log_to_keep: config.snapshot_keep_logs,
        install_snapshot_timeout: 30_000,
        max_payload_entries: crate::config::MAX_ENTRIES_PER_APPEND,
        enable_pre_vote: Some(true),
        // The committed index and the state machines are not fsync'd on every write;
        // a leader restored without an election could serve reads below the true
        // commit index after a power loss. An election (with its blank entry) is cheap.
        enable_leader_restore: Some(false),
        // A leader without quorum contact stops heartbeating in alternate periods, so a
        // majority it cannot hear from (one-way loss) can elect a new leader.
        quorum_loss_probe_interval: Some(lease * 2),
        ..Default::default()
    }
    .validate()
    .map_err(|e| io::Error::other(format!("group {name}: bad raft config: {e}")))
}

/// The stored identity, if any, after checking that this data directory may serve as
/// this node: it belongs to the same node id, and the cluster did not remove it.
fn check_data_dir(db: &DB, config: &Config) -> io::Result<Option<Identity>> {
    let stored = identity::load(db)?;
    let Some(id) = &stored else {
        return Ok(None);
    };
    if id.node_id != config.node_id {
        return Err(io::Error::other(format!(
            "data directory {} belongs to node {} of cluster {}, but this node was started with --node-id {}",
            config.data_dir.display(),
            id.node_id,
            id.cluster_id,
            config.node_id
        )));
    }
    if let Some(removed) = identity::load_removed(db)? {
        return Err(io::Error::other(format!(
            "node {} was removed from cluster {} (by node {}): this data directory cannot serve again; to add the node back, empty {} and start it with --join",
            id.node_id,
            id.cluster_id,
            removed.by,
            config.data_dir.display()
        )));
    }
    Ok(stored)
}

/// What every group of a node is built from.
struct GroupBuilder<'a> {
    config: &'a Config,
    db: Arc<Db>,
    peers: PeerClient,
    control: Arc<ControlRuntime>,
    timing: Timing,
    epoch: Instant,
    shutdown: watch::Sender<bool>,
}

impl GroupBuilder<'_> {
    /// One group's state machine, snapshot directory and openraft node over `log`,
    /// with its address book and snapshot timer running.
    async fn build(
        &self,
        spec: &GroupSpec,
        log: RocksLogStore,
        clock: StageClock,
    ) -> io::Result<Arc<Group>> {
        let config = self.config;
        let name = spec.name.as_str();
        let ctx = GroupContext {
            name: name.to_string(),
            db: self.db.clone(),
            dir: config.data_dir.join("groups").join(name),
            state_cache_bytes: config.state_cache_mib << 20,
            sqlite_page_cache_kib: config.db_page_cache_kib,
        };
        std::fs::create_dir_all(&ctx.dir)?;
        let sm = (spec.build)(&ctx)?;
        let snapshots = SnapshotDir::open(config.data_dir.join("snapshots").join(name))?;
        let gsm = GroupStateMachine::new(name, sm.clone(), snapshots.clone(), clock);
        let book = AddressBook::default();
        let log_cache = log.cache_handle();
        // On the control runtime: every task openraft spawns for the group stays there.
        let raft = self
            .control
            .run(Raft::new(
                config.node_id,
                Arc::new(raft_config(config, name)?),
                GroupNetworkFactory::new(name, self.peers.clone(), book.clone()),
                log,
                gsm,
            ))
            .await?
            .map_err(|e| io::Error::other(format!("group {name}: {e}")))?;
        let group = Arc::new(Group {
            name: name.into(),
            raft,
            sm,
            snapshots,
            counters: GroupCounters::default(),
            proposals: Default::default(),
            log_cache: log_cache.clone(),
            node_id: config.node_id,
            timing: self.timing,
            epoch: self.epoch,
            leader_contact_ms: AtomicU64::new(0),
        });
        spawn_address_watch(group.clone(), book, self.shutdown.subscribe());
        spawn_snapshot_timer(
            group.clone(),
            config.snapshot_interval,
            self.shutdown.subscribe(),
        );
        spawn_log_cache_expiry(log_cache, self.shutdown.subscribe());
        Ok(group)
    }
}

/// Whether to apply `--force-new-cluster` now: only to a node that belongs to a cluster,
/// and only once (a flag left in place after the recovery must not drop the members
/// that joined since at the next restart). A start without the flag forgets that it
/// was applied, so a later disaster can use it again.
fn force_new_cluster(db: &DB, config: &Config, stored: Option<&Identity>) -> io::Result<bool> {
    let applied = identity::load_forced(db)?;
    if !config.force_new_cluster {
        if applied.is_some() {
            identity::store_forced(db, None)?;
        }
        return Ok(false);
    }
    let Some(id) = stored else {
        return Err(io::Error::other(format!(
            "--force-new-cluster recovers a cluster from a surviving member's data, but {} holds no cluster data",
            config.data_dir.display()
        )));
    };
    if let Some(applied) = applied {
        tracing::warn!(cluster_id = %id.cluster_id, entries = ?applied.entries, "--force-new-cluster was already applied to this data directory; ignoring it (remove the flag)");
        return Ok(false);
    }
    tracing::warn!(cluster_id = %id.cluster_id, "--force-new-cluster: making this node the only member of every group");
    Ok(true)
}

impl MultiRaft {
    /// What the node's RocksDB holds in memory now (`nacosd_storage_memory_bytes`).
    pub fn storage_memory(&self) -> io::Result<crate::raft::rocks::StorageMemory> {
        self.db.memory()
    }

    /// Flushes RocksDB's memtables to tables if they hold [`IDLE_FLUSH_MIN`] or more
    /// (a quarter of their budget, if that is less); the bytes they held, or `None` if
    /// they were left alone. Blocking: for the node's idle housekeeping
    /// (`crate::idle`), on the blocking pool.
    pub fn flush_memtables_if_large(&self) -> io::Result<Option<u64>> {
        self.db.flush_if_holding(self.idle_flush_min())
    }

    /// [`MultiRaft::flush_memtables_if_large`] for the column families of one group,
    /// which fell quiet while other groups still write (`crate::idle`), with the same
    /// threshold.
    pub fn flush_group_memtables_if_large(&self, group: &str) -> io::Result<Option<u64>> {
        self.db.flush_group_if_holding(group, self.idle_flush_min())
    }

    /// The idle flushes' threshold: [`IDLE_FLUSH_MIN`], or a quarter of the memtable
    /// budget if that is less.
    fn idle_flush_min(&self) -> u64 {
        IDLE_FLUSH_MIN.min(self.db.memtable_budget() / 4)
    }

    /// The memtable bytes of one group's column families (`nacosd_group_memtable_bytes`).
    pub fn group_memtables(&self, group: &str) -> io::Result<u64> {
        self.db.group_memtables(group)
    }

    /// Open the data directory and build every group's Raft node. Groups of a node
    /// with no identity yet are left uninitialized: `cluster::bootstrap` decides.
    pub async fn start(config: &Config, registry: GroupRegistry) -> io::Result<Arc<Self>> {
        let names = registry.names();
        let db = rocks::open_with(
            &config.data_dir.join("raft"),
            &names,
            rocks::StorageBudget::from_mib(config.storage_memory_mib),
        )?;
        let stored = check_data_dir(&db, config)?;
        let force = force_new_cluster(&db, config, stored.as_ref())?;
        let metrics = Arc::new(Metrics::default());
        let syncer = WalSyncer::start_observed(db.clone(), metrics.clone())?;
        let identity = IdentityCell::new(stored.clone());
        let peer_tls = match &config.peer_tls {
            Some(files) => Some(
                crate::tls::Reloading::client(files.clone())
                    .map_err(|e| io::Error::other(e.to_string()))?,
            ),
            None => None,
        };
        let control = Arc::new(ControlRuntime::start(config.node_id, config.raft_threads)?);
        let builder = GroupBuilder {
            config,
            db: db.clone(),
            peers: PeerClient::new(
                config.node_id,
                identity.clone(),
                config.peer_message_limit(),
                crate::peer::channels::PeerChannels::new(peer_tls)
                    .on_control_runtime(control.handle().clone()),
            ),
            control: control.clone(),
            timing: Timing {
                heartbeat: config.heartbeat,
                election_timeout_max: config.election_timeout.1,
            },
            epoch: Instant::now(),
            shutdown: watch::channel(false).0,
        };
        let mut forced = identity::ForcedRecord {
            entries: BTreeMap::new(),
        };
        let mut groups = BTreeMap::new();
        for spec in registry.specs() {
            let name = spec.name.as_str();
            let clock = StageClock::new(name, metrics.clone());
            let log = RocksLogStore::new(
                name,
                db.clone(),
                syncer.clone(),
                clock.clone(),
                config.log_cache_mib << 20,
            )?;
            if force {
                let index = log.force_single_member(config.node_id, &config.advertise_peer)?;
                tracing::warn!(group = name, index, "--force-new-cluster: this node is now the only member of the group, with all of its data");
                forced.entries.insert(name.to_string(), index);
            }
            groups.insert(name.to_string(), builder.build(spec, log, clock).await?);
        }
        if force {
            identity::store_forced(&db, Some(&forced))?;
        }
        // A restart with data: hold votes and elections for one lease (module docs).
        let GroupBuilder {
            timing,
            epoch,
            peers,
            shutdown,
            ..
        } = builder;
        let vote_hold_until = stored
            .is_some()
            .then(|| epoch + timing.lease() + timing.heartbeat);
        let node = Arc::new(MultiRaft {
            node_id: config.node_id,
            advertise_peer: config.advertise_peer.clone(),
            default_timeout: config.default_timeout,
            timing,
            peers,
            counters: NodeCounters::default(),
            metrics,
            control,
            identity,
            groups,
            db,
            vote_hold_until,
            shutdown_tx: shutdown,
            _syncer: syncer,
        });
        if let Some(until) = vote_hold_until {
            node.hold_elections_until(until);
        }
        Ok(node)
    }

    /// Disable elections in every group with other voters until `until`.
    fn hold_elections_until(&self, until: Instant) {
        let held: Vec<Arc<Group>> = self
            .groups
            .values()
            .filter(|g| self.vote_hold_remaining(g).is_some())
            .cloned()
            .collect();
        for g in &held {
            g.raft.runtime_config().elect(false);
        }
        let mut stop = self.shutdown_tx.subscribe();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => {}
                _ = stop.changed() => return,
            }
            for g in held {
                g.raft.runtime_config().elect(true);
            }
        });
    }

    /// How much longer this node grants no vote in `group` after its restart (`None`:
    /// it may vote).
    pub fn vote_hold_remaining(&self, group: &Group) -> Option<Duration> {
        let until = self.vote_hold_until?;
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let voters = group.voters();
        let alone = voters.len() == 1 && voters.contains(&self.node_id);
        (!alone).then_some(left)
    }

    pub fn identity(&self) -> &IdentityCell {
        &self.identity
    }

    /// The node's RocksDB (identity and bootstrap records live there).
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Take `identity` for this node: stored durably first, then visible to peers.
    pub fn adopt_identity(&self, id: Identity) -> Result<()> {
        if let Some(existing) = self.identity.get() {
            if existing == id {
                return Ok(());
            }
            return Err(Error::FailedPrecondition(format!(
                "node {} already belongs to cluster {}",
                self.node_id, existing.cluster_id
            )));
        }
        identity::store(&self.db, &id)?;
        self.identity
            .set(id)
            .map_err(|e| Error::internal(format!("identity changed to {}", e.cluster_id)))
    }

    /// Give every uninitialized group its first membership.
    pub async fn initialize(&self, members: &BTreeMap<NodeId, String>) -> Result<()> {
        let members: BTreeMap<NodeId, BasicNode> = members
            .iter()
            .map(|(id, addr)| (*id, BasicNode::new(addr.clone())))
            .collect();
        for g in self.groups.values() {
            let initialized = g
                .raft
                .is_initialized()
                .await
                .map_err(|e| Error::internal(format!("group {}: {e}", g.name)))?;
            if initialized {
                continue;
            }
            tracing::info!(group = %g.name, members = ?members.keys().collect::<Vec<_>>(), "initializing group");
            if let Err(e) = g.raft.initialize(members.clone()).await {
                // Another node's initialization may already have reached us: fine.
                tracing::warn!(group = %g.name, error = %e, "initialize");
            }
        }
        Ok(())
    }

    pub fn group(&self, name: &str) -> Result<&Arc<Group>> {
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

    /// Readiness: the node has an identity and every group has a leader this node is in
    /// touch with.
    pub fn ready(&self) -> bool {
        self.identity.cluster_id().is_some()
            && self.groups.values().all(|g| {
                g.raft.metrics().borrow_watched().current_leader.is_some() && g.has_quorum_contact()
            })
    }

    /// Stop timers, then shut each group's Raft down (flushing its pending I/O). The
    /// returned [`Closing`] resolves once the storage is closed, after the caller has
    /// dropped its own handles to this node.
    pub async fn shutdown(&self) -> Closing {
        let _ = self.shutdown_tx.send(true);
        let closing = Closing(self.db.closed());
        for g in self.groups.values() {
            if let Err(e) = g.raft.shutdown().await {
                tracing::warn!(group = %g.name, error = %e, "raft shutdown");
            }
        }
        closing
    }
}

/// Keep `book` equal to the peer addresses of the group's latest membership. It
/// watches openraft's server metrics (role, leader, vote, membership), which change
/// only when those do, not the full metrics, which are sent again at every turn of
/// the group's core loop, several times per write.
fn spawn_address_watch(group: Arc<Group>, book: AddressBook, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut metrics = group.raft.server_metrics();
        let mut seen = None;
        loop {
            let update = {
                let m = metrics.borrow_watched();
                let at = *m.membership_config.log_id();
                (seen != Some(at)).then(|| {
                    seen = Some(at);
                    m.membership_config
                        .membership()
                        .nodes()
                        .map(|(id, n)| (*id, n.addr.clone()))
                        .collect::<Vec<_>>()
                })
            };
            if let Some(members) = update {
                book.update(members);
            }
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() { return },
                _ = stop.changed() => return,
            }
        }
    });
}

/// Drops the log cache's entries as they age (`LogCache::expire`), every
/// `log_cache::EXPIRY_TICK`, until the node shuts down.
fn spawn_log_cache_expiry(cache: Arc<std::sync::Mutex<LogCache>>, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(crate::raft::log_cache::EXPIRY_TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => return,
            }
            crate::lock(&cache).expire(std::time::Instant::now());
        }
    });
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
