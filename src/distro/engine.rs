//! A node's [`Distro`]: the session API the client services call, the receiving side
//! of the peer messages, and the loops that sync, verify, expire and load.
//!
//! Locks: the store and the task queue each sit behind a std `Mutex` held only for
//! in-memory work (never across an await); changes are published to the feed and
//! tasks scheduled after the store's lock is released.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::config::{DistroSettings, NodeId, MIN_SESSION_TTL};
use crate::distro::metrics::{inc, DistroMetrics};
use crate::distro::store::{
    DeltaOutcome, EphemeralChange, EphemeralInstance, Outgoing, OwnedList, SessionData, SessionId,
    Store,
};
use crate::distro::tasks::{Due, SyncOp, TaskQueue};
use crate::distro::wire::{self, SyncItem};
use crate::error::{Error, Result};
use crate::groups::feed::{Feed, FeedEvent};
use crate::groups::naming::{InstanceAddr, InstanceRecord, ServiceKey};
use crate::lock;
use crate::raft::node::MultiRaft;

/// Sessions in one sync call.
const MAX_BATCH: usize = 500;

/// How often leases and replica expiry are checked.
const HOUSEKEEPING: Duration = Duration::from_millis(100);

pub struct Distro {
    node_id: NodeId,
    node: Arc<MultiRaft>,
    settings: DistroSettings,
    store: Mutex<Store>,
    tasks: Mutex<TaskQueue>,
    /// Targets with a sync call in flight.
    in_flight: Mutex<HashSet<NodeId>>,
    /// The other members (id, peer address), refreshed by the sync loop.
    peers: Mutex<Vec<(NodeId, String)>>,
    feed: Feed<EphemeralChange>,
    ready: AtomicBool,
    /// The node is shutting down: its sessions are being deleted on the peers, and
    /// nothing may change them any more.
    retiring: AtomicBool,
    pub metrics: DistroMetrics,
}

/// Session ids: 1..=128 chars of `[A-Za-z0-9._:-]`.
fn check_session_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 128 {
        return Err(Error::invalid(format!(
            "session id must be 1..=128 characters, got {}",
            id.len()
        )));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(Error::invalid(format!(
            "session id {id:?} contains {c:?}; allowed: A-Z a-z 0-9 . _ : -"
        )));
    }
    Ok(())
}

impl Distro {
    pub fn new(node: Arc<MultiRaft>, settings: DistroSettings) -> Arc<Self> {
        let incarnation = uuid::Uuid::new_v4().as_u64_pair().0;
        Arc::new(Distro {
            node_id: node.node_id,
            store: Mutex::new(Store::new(node.node_id, incarnation)),
            node,
            settings,
            tasks: Mutex::default(),
            in_flight: Mutex::default(),
            peers: Mutex::default(),
            feed: Feed::default(),
            ready: AtomicBool::new(false),
            retiring: AtomicBool::new(false),
            metrics: DistroMetrics::default(),
        })
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// True once the startup snapshot is loaded (or the node is alone).
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn publish_changes(&self, changes: Vec<EphemeralChange>) {
        if !changes.is_empty() {
            self.feed.publish(changes);
        }
    }

    /// Schedule a sync of `id` to every other member.
    fn schedule(&self, id: &str, op: SyncOp, delay: Duration) {
        let peers = lock(&self.peers).clone();
        if peers.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut tasks = lock(&self.tasks);
        for (peer, _) in peers {
            tasks.add(id, peer, op, now, delay);
        }
    }

    /// Refuse session changes once the node is shutting down.
    fn check_not_retiring(&self) -> Result<()> {
        if self.retiring.load(Ordering::Acquire) {
            return Err(Error::Unavailable {
                message: format!(
                    "node {} is shutting down; open a session on another node and register there",
                    self.node_id
                ),
                leader: None,
            });
        }
        Ok(())
    }

    /// At a graceful shutdown: delete this node's sessions on every peer. They die
    /// with the process (ephemeral data is memory-only), and without this the peers
    /// would show them until the replica expiry, beside the registrations their
    /// clients make on other nodes. From now on every session change is refused and
    /// every sync this node sends is a deletion. Best effort within `wait`; returns
    /// the peers that confirmed.
    pub async fn retire(&self, wait: Duration) -> usize {
        self.retiring.store(true, Ordering::Release);
        let (mut ids, revision) = {
            let store = lock(&self.store);
            (store.owned_ids(), store.clock())
        };
        ids.extend(lock(&self.tasks).deletions());
        let items: Vec<SyncItem> = ids
            .into_iter()
            .map(|id| SyncItem::Delete {
                id,
                owner: self.node_id,
                revision,
            })
            .collect();
        let peers = lock(&self.peers).clone();
        if items.is_empty() || peers.is_empty() {
            return 0;
        }
        let sends = peers.iter().map(|(peer, addr)| {
            let items = &items;
            async move {
                let r = wire::send_sync(&self.node.peers, addr, items, wait).await;
                if let Err(e) = &r {
                    tracing::warn!(peer, error = %e, "could not delete this node's sessions on a peer at shutdown; they expire there after the replica expiry");
                }
                r.is_ok()
            }
        });
        let confirmed = futures::future::join_all(sends)
            .await
            .into_iter()
            .filter(|ok| *ok)
            .count();
        tracing::info!(
            sessions = items.len(),
            peers = confirmed,
            "deleted this node's sessions on its peers"
        );
        confirmed
    }

    // ----- the session API (client services) -----

    /// Open a session owned by this node; `ttl` zero means the default.
    pub fn open_session(&self, id: &str, ttl: Duration) -> Result<(SessionId, Duration)> {
        self.check_not_retiring()?;
        let s = &self.settings;
        let ttl = if ttl.is_zero() { s.session_ttl } else { ttl };
        if ttl < MIN_SESSION_TTL || ttl > s.session_max_ttl {
            return Err(Error::invalid(format!(
                "ttl_ms {} is outside {}..={} (session-max-ttl-ms)",
                ttl.as_millis(),
                MIN_SESSION_TTL.as_millis(),
                s.session_max_ttl.as_millis()
            )));
        }
        let id = if id.is_empty() {
            format!("{}-{}", self.node_id, uuid::Uuid::new_v4().simple())
        } else {
            check_session_id(id)?;
            id.to_string()
        };
        lock(&self.store).open(id.clone(), ttl, Instant::now())?;
        self.schedule(&id, SyncOp::Change, self.settings.sync_delay);
        Ok((id, ttl))
    }

    pub fn keep_alive(&self, id: &str) -> Result<Duration> {
        self.check_not_retiring()?;
        check_session_id(id)?;
        let (ttl, changed, changes) = lock(&self.store).renew(id, Instant::now())?;
        if changed {
            self.publish_changes(changes);
            self.schedule(id, SyncOp::Change, self.settings.sync_delay);
        }
        Ok(ttl)
    }

    /// Close an owned session; the number of instances it held.
    pub fn close_session(&self, id: &str) -> Result<usize> {
        check_session_id(id)?;
        let (n, changes) = lock(&self.store).close(id)?;
        self.publish_changes(changes);
        self.schedule(id, SyncOp::Delete, self.settings.sync_delay);
        Ok(n)
    }

    /// Register (or, with `must_exist`, update) instances of `service` in session `id`.
    pub fn register(
        &self,
        id: &str,
        service: &ServiceKey,
        records: Vec<InstanceRecord>,
        must_exist: bool,
    ) -> Result<Vec<bool>> {
        self.check_not_retiring()?;
        check_session_id(id)?;
        let (created, changes) = lock(&self.store).register(id, service, records, must_exist)?;
        if !changes.is_empty() {
            self.publish_changes(changes);
            self.schedule(id, SyncOp::Change, self.settings.sync_delay);
        }
        Ok(created)
    }

    /// Replace session `id`'s whole publication for `service` with `records` (what a
    /// Nacos front end needs: a Nacos client holds one publication per service, and
    /// its register and batch register replace it).
    pub fn publish(
        &self,
        id: &str,
        service: &ServiceKey,
        records: Vec<InstanceRecord>,
    ) -> Result<()> {
        self.check_not_retiring()?;
        check_session_id(id)?;
        let changes = lock(&self.store).replace(id, service, records)?;
        if !changes.is_empty() {
            self.publish_changes(changes);
            self.schedule(id, SyncOp::Change, self.settings.sync_delay);
        }
        Ok(())
    }

    pub fn deregister(&self, id: &str, service: &ServiceKey, addr: &InstanceAddr) -> Result<bool> {
        self.check_not_retiring()?;
        check_session_id(id)?;
        let (existed, changes) = lock(&self.store).deregister(id, service, addr)?;
        if existed {
            self.publish_changes(changes);
            self.schedule(id, SyncOp::Change, self.settings.sync_delay);
        }
        Ok(existed)
    }

    // ----- reads -----

    pub fn instances_of(&self, service: &ServiceKey) -> Vec<EphemeralInstance> {
        lock(&self.store).instances_of(service)
    }

    pub fn services_in(
        &self,
        namespace: &str,
        group: &str,
    ) -> std::collections::BTreeMap<String, u32> {
        lock(&self.store).services_in(namespace, group)
    }

    pub fn touched(&self, service: &ServiceKey) -> bool {
        lock(&self.store).touched(service)
    }

    /// Changes of ephemeral instances on this node, as they happen (local or synced).
    pub fn subscribe(&self) -> broadcast::Receiver<FeedEvent<EphemeralChange>> {
        self.feed.subscribe()
    }

    /// (sessions owned, sessions replicated, ephemeral instances).
    pub fn counts(&self) -> (usize, usize, usize) {
        lock(&self.store).counts()
    }

    pub fn queue_depth(&self) -> std::collections::BTreeMap<NodeId, usize> {
        lock(&self.tasks).depth()
    }

    // ----- receiving side (peer messages) -----

    /// Apply a peer's sync batch. Returns the sessions whose delta did not apply
    /// (this node does not hold the revision it starts from): the owner sends them
    /// whole. The store's lock is taken per session, so a large batch never holds
    /// readers and the node's own registrations back for its whole length.
    pub fn receive_sync(&self, items: Vec<SyncItem>) -> Vec<SessionId> {
        let now = Instant::now();
        let mut all = Vec::new();
        let mut need_full = Vec::new();
        for item in items {
            let mut store = lock(&self.store);
            let (applied, changes) = match item {
                SyncItem::Change(data) => store.apply_sync(data, now),
                SyncItem::Delta(delta) => {
                    let id = delta.id.clone();
                    match store.apply_delta(delta, now) {
                        DeltaOutcome::Applied(changes) => (true, changes),
                        DeltaOutcome::Stale => (false, vec![]),
                        DeltaOutcome::NeedFull => {
                            need_full.push(id);
                            (false, vec![])
                        }
                    }
                }
                SyncItem::Delete {
                    id,
                    owner,
                    revision,
                } => store.apply_delete(&id, owner, revision),
            };
            drop(store);
            if applied {
                inc(&self.metrics.syncs_applied, 1);
            }
            all.extend(changes);
        }
        self.publish_changes(all);
        need_full
    }

    pub fn receive_verify(&self, list: &OwnedList) -> Vec<SessionId> {
        let v = lock(&self.store).verify(list, Instant::now());
        inc(&self.metrics.replicas_dropped, v.dropped as u64);
        self.publish_changes(v.changes);
        v.wanted
    }

    pub fn snapshot(&self) -> Vec<SessionData> {
        lock(&self.store).snapshot()
    }

    fn apply_snapshot(&self, sessions: Vec<SessionData>) {
        let now = Instant::now();
        let mut all = Vec::new();
        {
            let mut store = lock(&self.store);
            for s in sessions {
                all.extend(store.apply_sync(s, now).1);
            }
        }
        self.publish_changes(all);
    }

    // ----- loops -----

    /// Start the loops; they end when `stop` turns true.
    pub fn start(self: &Arc<Self>, stop: &watch::Sender<bool>) -> Vec<JoinHandle<()>> {
        vec![
            tokio::spawn(self.clone().sync_loop(stop.subscribe())),
            tokio::spawn(self.clone().housekeeping_loop(stop.subscribe())),
            tokio::spawn(self.clone().verify_loop(stop.subscribe())),
            tokio::spawn(self.clone().load_snapshot(stop.subscribe())),
        ]
    }

    /// The other members of the cluster (learners included), with their addresses;
    /// `None` while the membership this node knows does not include itself yet (no
    /// identity, or the groups have not loaded their membership).
    fn refresh_peers(&self) -> Option<Vec<(NodeId, String)>> {
        let (members, _) = crate::cluster::operations::members(&self.node);
        if self.node.identity().cluster_id().is_none()
            || !members.iter().any(|m| m.id == self.node_id)
        {
            return None;
        }
        let peers: Vec<(NodeId, String)> = members
            .into_iter()
            .filter(|m| m.id != self.node_id && !m.addr.is_empty())
            .map(|m| (m.id, m.addr))
            .collect();
        *lock(&self.peers) = peers.clone();
        Some(peers)
    }

    async fn sync_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let tick = (self.settings.sync_delay / 4)
            .clamp(Duration::from_millis(5), Duration::from_millis(100));
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stop.changed() => return,
            }
            let Some(peers) = self.refresh_peers() else {
                continue;
            };
            self.drop_non_members(&peers);
            let due = {
                let mut tasks = lock(&self.tasks);
                for t in tasks.targets() {
                    if !peers.iter().any(|(id, _)| *id == t) {
                        tasks.drop_target(t);
                    }
                }
                let busy = lock(&self.in_flight).clone();
                tasks.take_due(Instant::now(), |t| !busy.contains(&t), MAX_BATCH)
            };
            for (target, batch) in due {
                let Some((_, addr)) = peers.iter().find(|(id, _)| *id == target).cloned() else {
                    continue;
                };
                lock(&self.in_flight).insert(target);
                tokio::spawn(self.clone().send_batch(target, addr, batch));
            }
        }
    }

    /// Replicas of nodes that left the cluster go at once.
    fn drop_non_members(&self, peers: &[(NodeId, String)]) {
        let mut members: HashSet<NodeId> = peers.iter().map(|(id, _)| *id).collect();
        members.insert(self.node_id);
        let (gone, changes) = lock(&self.store).drop_non_members(&members);
        if !gone.is_empty() {
            tracing::info!(
                count = gone.len(),
                "dropped the sessions of nodes that left the cluster"
            );
            inc(&self.metrics.replicas_dropped, gone.len() as u64);
            self.publish_changes(changes);
        }
    }

    async fn send_batch(self: Arc<Self>, target: NodeId, addr: String, batch: Vec<Due>) {
        // (session, revision sent) of the changes, for the acknowledgements.
        let mut sent = Vec::new();
        let items: Vec<SyncItem> = {
            let store = lock(&self.store);
            batch
                .iter()
                .map(|d| match store.outgoing(&d.session, target) {
                    // Retiring: every session of this node is gone for the peers.
                    Some(out) if !self.retiring.load(Ordering::Acquire) => {
                        sent.push((d.session.clone(), out.revision()));
                        match out {
                            Outgoing::Full(data) => SyncItem::Change(data),
                            Outgoing::Delta(delta) => SyncItem::Delta(delta),
                        }
                    }
                    _ => SyncItem::Delete {
                        id: d.session.clone(),
                        owner: self.node_id,
                        revision: store.clock(),
                    },
                })
                .collect()
        };
        let counters = self.metrics.peer(target);
        let retried = batch.iter().filter(|d| d.attempts > 0).count() as u64;
        inc(&counters.syncs_retried, retried);
        let full = items
            .iter()
            .filter(|i| matches!(i, SyncItem::Change(_)))
            .count();
        let n = items.len() as u64;
        match wire::send_sync(&self.node.peers, &addr, &items, self.settings.sync_timeout).await {
            Ok(need_full) => {
                counters.call_succeeded();
                inc(&counters.syncs_sent, n);
                inc(&counters.full_syncs_sent, full as u64);
                inc(&counters.sync_calls, 1);
                inc(&counters.deltas_refused, need_full.len() as u64);
                let peers: Vec<NodeId> = lock(&self.peers).iter().map(|(id, _)| *id).collect();
                {
                    let mut store = lock(&self.store);
                    for (id, revision) in &sent {
                        if need_full.contains(id) {
                            store.forget_ack(id, target);
                        } else {
                            store.acked(id, target, *revision, &peers);
                        }
                    }
                }
                if !need_full.is_empty() {
                    let now = Instant::now();
                    let mut tasks = lock(&self.tasks);
                    for id in &need_full {
                        tasks.add(id, target, SyncOp::Change, now, Duration::ZERO);
                    }
                }
            }
            Err(e) => {
                inc(&counters.syncs_failed, n);
                counters.call_failed(target, "distro sync", &e);
                let now = Instant::now();
                let mut tasks = lock(&self.tasks);
                for d in batch {
                    tasks.retry(d, target, now, self.settings.sync_retry);
                }
            }
        }
        lock(&self.in_flight).remove(&target);
    }

    async fn housekeeping_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut interval = tokio::time::interval(HOUSEKEEPING);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stop.changed() => return,
            }
            let now = Instant::now();
            let (expired, sick, mut changes, gone) = {
                let mut store = lock(&self.store);
                let (expired, sick, changes) =
                    store.check_leases(now, self.settings.session_unhealthy_percent);
                let (gone, more) = store.expire_replicas(now, self.settings.replica_expiry);
                let mut changes = changes;
                changes.extend(more);
                (expired, sick, changes, gone)
            };
            inc(&self.metrics.sessions_expired, expired.len() as u64);
            inc(&self.metrics.replicas_expired, gone.len() as u64);
            for id in &expired {
                tracing::info!(session = %id, "session expired: no keep-alive within its TTL");
                self.schedule(id, SyncOp::Delete, self.settings.sync_delay);
            }
            for id in &sick {
                self.schedule(id, SyncOp::Change, self.settings.sync_delay);
            }
            if !gone.is_empty() {
                tracing::info!(
                    count = gone.len(),
                    "replicated sessions expired: their owner stopped verifying them"
                );
            }
            self.publish_changes(std::mem::take(&mut changes));
        }
    }

    async fn verify_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut interval = tokio::time::interval(self.settings.verify_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stop.changed() => return,
            }
            // Nacos: no verify before the initial load (a node that has not loaded
            // would otherwise look like an owner of nothing).
            if !self.ready() {
                continue;
            }
            let list = Arc::new(lock(&self.store).owned_list());
            let peers = lock(&self.peers).clone();
            for (peer, addr) in peers {
                let this = self.clone();
                let list = list.clone();
                tokio::spawn(async move {
                    let counters = this.metrics.peer(peer);
                    match wire::send_verify(
                        &this.node.peers,
                        &addr,
                        &list,
                        this.settings.sync_timeout,
                    )
                    .await
                    {
                        Ok(wanted) => {
                            counters.call_succeeded();
                            inc(&counters.verify_mismatches, wanted.len() as u64);
                            // Sent at once, as a delta when the owner knows what the
                            // peer holds: under a steady load every verify finds the
                            // peers a sync delay behind, and sending those sessions
                            // whole each time was most of a node's CPU. A peer that
                            // lost the session refuses the delta and gets it whole.
                            if !wanted.is_empty() {
                                let now = Instant::now();
                                let mut tasks = lock(&this.tasks);
                                for id in &wanted {
                                    tasks.add(id, peer, SyncOp::Change, now, Duration::ZERO);
                                }
                            }
                        }
                        Err(e) => {
                            inc(&counters.verify_failures, 1);
                            counters.call_failed(peer, "distro verify", &e);
                        }
                    }
                });
            }
        }
    }

    /// Load a snapshot of the ephemeral data from a peer, then report ready.
    async fn load_snapshot(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        // Peers refuse calls from a node without the cluster identity, and the member
        // list is only known once the groups are initialized.
        let mut peers = loop {
            if let Some(p) = self.refresh_peers() {
                break p;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = stop.changed() => return,
            }
        };
        // The first retries come sooner than `load_retry`: when a new cluster forms,
        // the peers take the cluster identity one by one and refuse calls until then.
        let mut retry = Duration::from_millis(500).min(self.settings.load_retry);
        loop {
            if peers.is_empty() {
                tracing::info!("ephemeral data ready: no other member to load from");
                self.ready.store(true, Ordering::Release);
                return;
            }
            let mut refused_by_all = true;
            for (peer, addr) in &peers {
                let this = self.clone();
                let result = wire::fetch_snapshot(
                    &self.node.peers,
                    addr,
                    self.settings.sync_timeout.max(Duration::from_secs(5)),
                    move |chunk| this.apply_snapshot(chunk),
                )
                .await;
                match result {
                    Ok(n) => {
                        tracing::info!(peer, sessions = n, "ephemeral data ready: snapshot loaded");
                        self.ready.store(true, Ordering::Release);
                        return;
                    }
                    Err(e) => {
                        inc(&self.metrics.snapshot_load_failures, 1);
                        if wire::is_protocol_refusal(&e) {
                            inc(&self.metrics.peer(*peer).protocol_refusals, 1);
                        } else {
                            refused_by_all = false;
                        }
                        tracing::warn!(peer, error = %e, "loading the ephemeral snapshot failed");
                    }
                }
            }
            if refused_by_all {
                // Every peer runs another Distro protocol version (a rolling upgrade
                // that changes it): none of them will ever serve this node a snapshot,
                // and waiting would hold the rollout on this node's readiness forever.
                // The data arrives instead through the owners' verify rounds once the
                // peers run this version too.
                tracing::warn!(
                    peers = peers.len(),
                    "ephemeral data ready without a snapshot: every peer speaks another Distro protocol version"
                );
                self.ready.store(true, Ordering::Release);
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(retry) => {}
                _ = stop.changed() => return,
            }
            retry = (retry * 2).min(self.settings.load_retry);
            if let Some(p) = self.refresh_peers() {
                peers = p;
            }
        }
    }
}
