//! A node's ephemeral data: every session it knows (its own and the replicas of other
//! nodes' sessions) with their instances, and the index by service that reads use.
//!
//! Pure logic under one lock, no I/O and no clock of its own (every method is given
//! `now`), so the rules are table-tested without a cluster:
//! - only the owner changes a session; a sync or snapshot entry about a session this
//!   node owns is ignored, and a sync never replaces a replica with an older revision;
//! - a full sync carries the session's whole state, so applying it twice is harmless;
//!   a delta sync (what changed between two revisions, see `journal`) only applies on
//!   top of exactly the revision it starts from, and otherwise asks for the whole;
//! - revisions come from the owner's revision clock, which never goes below the wall
//!   clock in microseconds: a restarted owner's revisions are above its old ones;
//! - a verify lists all sessions the owner holds: listed ones that are missing here or
//!   older are asked for, held ones that are not listed are dropped when they are known
//!   to be gone (another incarnation of the owner, or a revision the list covers).
//!
//! Every change returns the [`EphemeralChange`]s it made, one per service, for the
//! caller to publish after the lock is released.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::NodeId;
use crate::distro::journal::{InstanceKey, Journal};
use crate::error::{Error, Result};
use crate::groups::naming::{InstanceAddr, InstanceRecord, ServiceKey};

pub type SessionId = String;

/// What a sync or a snapshot carries for one session: its whole state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionData {
    pub id: SessionId,
    pub owner: NodeId,
    /// The owner process's random incarnation: sessions die with their owner process.
    pub incarnation: u64,
    pub revision: u64,
    /// False once the owner missed keep-alives for part of the TTL.
    pub healthy: bool,
    pub instances: Vec<(ServiceKey, InstanceRecord)>,
}

/// What changed in a session between two of its owner's revisions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionDelta {
    pub id: SessionId,
    pub owner: NodeId,
    pub incarnation: u64,
    /// The revision the receiver must hold for the delta to apply.
    pub base: u64,
    pub revision: u64,
    pub healthy: bool,
    /// Instances added or changed since `base`, in their current state.
    pub upserted: Vec<(ServiceKey, InstanceRecord)>,
    /// Instances removed since `base`.
    pub removed: Vec<InstanceKey>,
}

/// What the owner sends a peer about a session: the difference from what the peer
/// confirmed holding when the journal covers it, the whole session otherwise.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    Full(SessionData),
    Delta(SessionDelta),
}

impl Outgoing {
    pub fn revision(&self) -> u64 {
        match self {
            Outgoing::Full(d) => d.revision,
            Outgoing::Delta(d) => d.revision,
        }
    }
}

/// The outcome of a delta on a replica.
#[derive(Debug, PartialEq)]
pub enum DeltaOutcome {
    Applied(Vec<EphemeralChange>),
    /// The replica already holds this revision or a later one.
    Stale,
    /// The replica does not hold the delta's base: it needs the whole session.
    NeedFull,
}

/// An ephemeral instance as reads and pushes see it: `record.healthy` already includes
/// the session's health.
#[derive(Debug, Clone, PartialEq)]
pub struct EphemeralInstance {
    pub session: SessionId,
    pub record: InstanceRecord,
}

/// One service's ephemeral instances that changed together.
#[derive(Debug, Clone, PartialEq)]
pub struct EphemeralChange {
    pub service: ServiceKey,
    pub upserted: Vec<EphemeralInstance>,
    pub removed: Vec<EphemeralInstance>,
}

type InstanceMap = BTreeMap<InstanceKey, InstanceRecord>;

struct Session {
    owner: NodeId,
    incarnation: u64,
    revision: u64,
    healthy: bool,
    instances: InstanceMap,
    /// Owner side: the lease.
    ttl: Duration,
    last_renew: Instant,
    /// Replica side: when the owner last vouched for this revision (sync or verify).
    last_verified: Instant,
    /// Owner side: the keys changed since the oldest revision a peer may still need.
    journal: Journal,
    /// Owner side: the revision each peer confirmed holding.
    acked: HashMap<NodeId, u64>,
}

impl Session {
    fn data(&self, id: &str) -> SessionData {
        SessionData {
            id: id.to_string(),
            owner: self.owner,
            incarnation: self.incarnation,
            revision: self.revision,
            healthy: self.healthy,
            instances: self
                .instances
                .iter()
                .map(|((s, _), r)| (s.clone(), r.clone()))
                .collect(),
        }
    }

    fn shown(&self, id: &str, r: &InstanceRecord) -> EphemeralInstance {
        let mut record = r.clone();
        record.healthy = record.healthy && self.healthy;
        EphemeralInstance {
            session: id.to_string(),
            record,
        }
    }
}

/// What the owner asks a peer about in a verify: every session it owns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OwnedList {
    pub owner: NodeId,
    pub incarnation: u64,
    /// The owner's revision clock when the list was made: a held session of this owner
    /// with a revision at or below it that is not listed is gone.
    pub as_of: u64,
    pub sessions: Vec<(SessionId, u64)>,
}

/// The outcome of a verify on the receiver.
#[derive(Debug, Default, PartialEq)]
pub struct Verified {
    /// Listed sessions missing here or held at an older revision.
    pub wanted: Vec<SessionId>,
    /// Held sessions the list shows to be gone, now dropped.
    pub dropped: usize,
    pub changes: Vec<EphemeralChange>,
}

pub struct Store {
    node_id: NodeId,
    incarnation: u64,
    clock: u64,
    sessions: HashMap<SessionId, Session>,
    by_service: HashMap<ServiceKey, HashSet<SessionId>>,
    /// Services that had ephemeral instances on this node at some point (Subscribe
    /// resumes with a full state for them).
    touched: HashSet<ServiceKey>,
}

fn wall_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Collects per-service changes.
#[derive(Default)]
struct Changes(BTreeMap<ServiceKey, EphemeralChange>);

impl Changes {
    fn entry(&mut self, s: &ServiceKey) -> &mut EphemeralChange {
        self.0.entry(s.clone()).or_insert_with(|| EphemeralChange {
            service: s.clone(),
            upserted: vec![],
            removed: vec![],
        })
    }
    fn into_vec(self) -> Vec<EphemeralChange> {
        self.0.into_values().collect()
    }
}

impl Store {
    pub fn new(node_id: NodeId, incarnation: u64) -> Self {
        Store {
            node_id,
            incarnation,
            clock: 0,
            sessions: HashMap::new(),
            by_service: HashMap::new(),
            touched: HashSet::new(),
        }
    }

    fn next_revision(&mut self) -> u64 {
        self.clock = (self.clock + 1).max(wall_micros());
        self.clock
    }

    /// The revision clock as it stands (a deletion is stamped with it).
    pub fn clock(&self) -> u64 {
        self.clock
    }

    fn index_add(&mut self, id: &str, service: &ServiceKey) {
        self.touched.insert(service.clone());
        self.by_service
            .entry(service.clone())
            .or_default()
            .insert(id.to_string());
    }

    /// Drop `id` from the index of `service` unless the session still has instances
    /// of it.
    fn index_maybe_remove(&mut self, id: &str, service: &ServiceKey) {
        let still = self.sessions.get(id).is_some_and(|s| {
            s.instances
                .range((service.clone(), min_addr())..)
                .next()
                .is_some_and(|((k, _), _)| k == service)
        });
        if still {
            return;
        }
        if let Some(set) = self.by_service.get_mut(service) {
            set.remove(id);
            if set.is_empty() {
                self.by_service.remove(service);
            }
        }
    }

    /// Remove a whole session, reporting its instances as removed.
    fn remove_session(&mut self, id: &str, changes: &mut Changes) -> usize {
        let Some(s) = self.sessions.remove(id) else {
            return 0;
        };
        let n = s.instances.len();
        for ((svc, _), r) in &s.instances {
            changes.entry(svc).removed.push(s.shown(id, r));
        }
        for (svc, _) in s.instances.keys() {
            self.index_maybe_remove(id, svc);
        }
        n
    }

    /// The session, if this node owns it; the right error otherwise.
    fn owned_mut(&mut self, id: &str) -> Result<&mut Session> {
        let me = self.node_id;
        match self.sessions.get_mut(id) {
            None => Err(Error::NotFound(format!(
                "session {id} does not exist on node {me} (never opened, closed, or expired); open a new session"
            ))),
            Some(s) if s.owner != me => Err(Error::FailedPrecondition(format!(
                "session {id} is owned by node {}; send its keep-alives and ephemeral registrations to that node",
                s.owner
            ))),
            Some(s) => Ok(s),
        }
    }

    /// A new revision for owned session `id`, at which `keys` changed.
    fn bump(&mut self, id: &str, keys: impl IntoIterator<Item = InstanceKey>) {
        let rev = self.next_revision();
        if let Some(s) = self.sessions.get_mut(id) {
            s.revision = rev;
            s.journal.record(rev, keys);
        }
    }

    // ----- owner side -----

    pub fn open(&mut self, id: SessionId, ttl: Duration, now: Instant) -> Result<()> {
        if let Some(s) = self.sessions.get(&id) {
            return Err(Error::AlreadyExists(format!(
                "session {id} already exists (owned by node {})",
                s.owner
            )));
        }
        let revision = self.next_revision();
        self.sessions.insert(
            id,
            Session {
                owner: self.node_id,
                incarnation: self.incarnation,
                revision,
                healthy: true,
                instances: BTreeMap::new(),
                ttl,
                last_renew: now,
                last_verified: now,
                journal: Journal::new(revision),
                acked: HashMap::new(),
            },
        );
        Ok(())
    }

    /// Renew the lease. Returns the TTL and whether the session's data changed (it was
    /// unhealthy and is healthy again).
    pub fn renew(
        &mut self,
        id: &str,
        now: Instant,
    ) -> Result<(Duration, bool, Vec<EphemeralChange>)> {
        let s = self.owned_mut(id)?;
        s.last_renew = now;
        let ttl = s.ttl;
        if s.healthy {
            return Ok((ttl, false, vec![]));
        }
        s.healthy = true;
        let mut changes = Changes::default();
        for ((svc, _), r) in &s.instances {
            changes.entry(svc).upserted.push(s.shown(id, r));
        }
        self.bump(id, []);
        Ok((ttl, true, changes.into_vec()))
    }

    /// Close an owned session. Returns how many instances it held.
    pub fn close(&mut self, id: &str) -> Result<(usize, Vec<EphemeralChange>)> {
        self.owned_mut(id)?;
        let mut changes = Changes::default();
        let n = self.remove_session(id, &mut changes);
        Ok((n, changes.into_vec()))
    }

    /// Upsert instances of one service into an owned session. Per instance: whether it
    /// was new. `must_exist`: an update, NOT_FOUND if an instance is absent.
    pub fn register(
        &mut self,
        id: &str,
        service: &ServiceKey,
        records: Vec<InstanceRecord>,
        must_exist: bool,
    ) -> Result<(Vec<bool>, Vec<EphemeralChange>)> {
        let s = self.owned_mut(id)?;
        if must_exist {
            for r in &records {
                if !s.instances.contains_key(&(service.clone(), r.addr.clone())) {
                    return Err(Error::NotFound(format!(
                        "session {id} has no instance {} in service {service}",
                        r.addr
                    )));
                }
            }
        }
        let mut created = Vec::with_capacity(records.len());
        let mut changes = Changes::default();
        let mut changed = Vec::new();
        for r in records {
            let key = (service.clone(), r.addr.clone());
            let shown = s.shown(id, &r);
            match s.instances.insert(key.clone(), r.clone()) {
                Some(old) => {
                    created.push(false);
                    if old != r {
                        changed.push(key);
                        changes.entry(service).upserted.push(shown);
                    }
                }
                None => {
                    created.push(true);
                    changed.push(key);
                    changes.entry(service).upserted.push(shown);
                }
            }
        }
        if !changed.is_empty() {
            self.bump(id, changed);
            self.index_add(id, service);
        }
        Ok((created, changes.into_vec()))
    }

    /// Make `records` the session's whole publication for `service` (Nacos's
    /// semantics for a connection: a client holds one publication per service, and a
    /// register or batch register replaces it; an empty list removes it).
    pub fn replace(
        &mut self,
        id: &str,
        service: &ServiceKey,
        records: Vec<InstanceRecord>,
    ) -> Result<Vec<EphemeralChange>> {
        let s = self.owned_mut(id)?;
        let old: Vec<InstanceRecord> = s
            .instances
            .range((service.clone(), min_addr())..)
            .take_while(|((k, _), _)| k == service)
            .map(|(_, r)| r.clone())
            .collect();
        let mut changes = Changes::default();
        let mut changed = Vec::new();
        for r in &old {
            if !records.iter().any(|n| n.addr == r.addr) {
                let key = (service.clone(), r.addr.clone());
                s.instances.remove(&key);
                changed.push(key);
                changes.entry(service).removed.push(s.shown(id, r));
            }
        }
        for r in records {
            let shown = s.shown(id, &r);
            let key = (service.clone(), r.addr.clone());
            if s.instances.insert(key.clone(), r.clone()) != Some(r) {
                changed.push(key);
                changes.entry(service).upserted.push(shown);
            }
        }
        let changes = changes.into_vec();
        if !changed.is_empty() {
            self.bump(id, changed);
            self.index_add(id, service);
            self.index_maybe_remove(id, service);
        }
        Ok(changes)
    }

    /// Remove one instance from an owned session. Whether it existed.
    pub fn deregister(
        &mut self,
        id: &str,
        service: &ServiceKey,
        addr: &InstanceAddr,
    ) -> Result<(bool, Vec<EphemeralChange>)> {
        let s = self.owned_mut(id)?;
        let key = (service.clone(), addr.clone());
        let Some(old) = s.instances.remove(&key) else {
            return Ok((false, vec![]));
        };
        let mut changes = Changes::default();
        changes.entry(service).removed.push(s.shown(id, &old));
        self.bump(id, [key]);
        self.index_maybe_remove(id, service);
        Ok((true, changes.into_vec()))
    }

    /// Owner housekeeping: sessions silent for `unhealthy_after` of their TTL turn
    /// unhealthy, those silent for their whole TTL expire. Returns the expired ids,
    /// the ids whose data changed, and the changes.
    pub fn check_leases(
        &mut self,
        now: Instant,
        unhealthy_percent: u32,
    ) -> (Vec<SessionId>, Vec<SessionId>, Vec<EphemeralChange>) {
        let me = self.node_id;
        let mut expired = Vec::new();
        let mut sick = Vec::new();
        for (id, s) in &self.sessions {
            if s.owner != me {
                continue;
            }
            let silent = now.saturating_duration_since(s.last_renew);
            if silent >= s.ttl {
                expired.push(id.clone());
            } else if s.healthy && silent >= s.ttl * unhealthy_percent / 100 {
                sick.push(id.clone());
            }
        }
        let mut changes = Changes::default();
        for id in &expired {
            self.remove_session(id, &mut changes);
        }
        for id in &sick {
            if let Some(s) = self.sessions.get_mut(id) {
                s.healthy = false;
                for ((svc, _), r) in &s.instances {
                    changes.entry(svc).upserted.push(s.shown(id, r));
                }
            }
            self.bump(id, []);
        }
        (expired, sick, changes.into_vec())
    }

    /// The current data of a session this node owns.
    #[cfg(test)]
    pub fn owned_data(&self, id: &str) -> Option<SessionData> {
        self.sessions
            .get(id)
            .filter(|s| s.owner == self.node_id)
            .map(|s| s.data(id))
    }

    /// What to send `peer` about owned session `id`: a delta from the revision the
    /// peer confirmed when the journal covers it, the whole session otherwise.
    pub fn outgoing(&self, id: &str, peer: NodeId) -> Option<Outgoing> {
        let s = self.sessions.get(id).filter(|s| s.owner == self.node_id)?;
        let delta = s.acked.get(&peer).and_then(|&base| {
            let keys = s.journal.since(base)?;
            let mut upserted = Vec::new();
            let mut removed = Vec::new();
            for k in keys {
                match s.instances.get(k) {
                    Some(r) => upserted.push((k.0.clone(), r.clone())),
                    None => removed.push(k.clone()),
                }
            }
            Some(SessionDelta {
                id: id.to_string(),
                owner: s.owner,
                incarnation: s.incarnation,
                base,
                revision: s.revision,
                healthy: s.healthy,
                upserted,
                removed,
            })
        });
        Some(match delta {
            Some(d) => Outgoing::Delta(d),
            None => Outgoing::Full(s.data(id)),
        })
    }

    /// `peer` confirmed holding owned session `id` at `revision`. `peers`: every
    /// current peer; the journal forgets what all of them hold.
    pub fn acked(&mut self, id: &str, peer: NodeId, revision: u64, peers: &[NodeId]) {
        let Some(s) = self
            .sessions
            .get_mut(id)
            .filter(|s| s.owner == self.node_id)
        else {
            return;
        };
        let held = s.acked.entry(peer).or_insert(revision);
        *held = (*held).max(revision);
        s.acked.retain(|p, _| peers.contains(p));
        let all = peers
            .iter()
            .map(|p| s.acked.get(p).copied())
            .min()
            .flatten();
        if let Some(upto) = all {
            s.journal.trim(upto);
        }
    }

    /// What `peer` holds of owned session `id` is unknown (it refused a delta): the
    /// next sync sends it whole.
    pub fn forget_ack(&mut self, id: &str, peer: NodeId) {
        if let Some(s) = self.sessions.get_mut(id) {
            s.acked.remove(&peer);
        }
    }

    /// The ids of the sessions this node owns.
    pub fn owned_ids(&self) -> Vec<SessionId> {
        self.sessions
            .iter()
            .filter(|(_, s)| s.owner == self.node_id)
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub fn owned_list(&self) -> OwnedList {
        OwnedList {
            owner: self.node_id,
            incarnation: self.incarnation,
            as_of: self.clock,
            sessions: self
                .sessions
                .iter()
                .filter(|(_, s)| s.owner == self.node_id)
                .map(|(id, s)| (id.clone(), s.revision))
                .collect(),
        }
    }

    #[cfg(test)]
    pub fn owner_of(&self, id: &str) -> Option<NodeId> {
        self.sessions.get(id).map(|s| s.owner)
    }

    // ----- replica side -----

    /// Apply the owner's full state of a session. Whether anything was applied.
    pub fn apply_sync(&mut self, data: SessionData, now: Instant) -> (bool, Vec<EphemeralChange>) {
        if data.owner == self.node_id {
            return (false, vec![]);
        }
        let mut changes = Changes::default();
        let id = data.id.clone();
        let old = match self.sessions.get_mut(&id) {
            Some(s) if s.owner == self.node_id => return (false, vec![]),
            Some(s) if data.revision <= s.revision => {
                if data.revision == s.revision && data.owner == s.owner {
                    s.last_verified = now;
                }
                return (false, vec![]);
            }
            _ => self.sessions.remove(&id),
        };
        let new_instances: InstanceMap = data
            .instances
            .into_iter()
            .map(|(svc, r)| ((svc, r.addr.clone()), r))
            .collect();
        let new = Session {
            owner: data.owner,
            incarnation: data.incarnation,
            revision: data.revision,
            healthy: data.healthy,
            instances: new_instances,
            ttl: Duration::ZERO,
            last_renew: now,
            last_verified: now,
            journal: Journal::default(),
            acked: HashMap::new(),
        };
        let mut old_services = Vec::new();
        if let Some(old) = &old {
            for (k, r) in &old.instances {
                let before = old.shown(&id, r);
                match new.instances.get(k) {
                    None => changes.entry(&k.0).removed.push(before),
                    Some(n) => {
                        let after = new.shown(&id, n);
                        if after != before {
                            changes.entry(&k.0).upserted.push(after);
                        }
                    }
                }
                old_services.push(k.0.clone());
            }
        }
        for (k, r) in &new.instances {
            if old.as_ref().is_none_or(|o| !o.instances.contains_key(k)) {
                changes.entry(&k.0).upserted.push(new.shown(&id, r));
            }
        }
        let new_services: Vec<ServiceKey> = new.instances.keys().map(|k| k.0.clone()).collect();
        self.sessions.insert(id.clone(), new);
        for s in new_services {
            self.index_add(&id, &s);
        }
        for s in old_services {
            self.index_maybe_remove(&id, &s);
        }
        (true, changes.into_vec())
    }

    /// Apply the owner's delta of a session on top of the revision it starts from.
    pub fn apply_delta(&mut self, d: SessionDelta, now: Instant) -> DeltaOutcome {
        if d.owner == self.node_id {
            return DeltaOutcome::Stale;
        }
        let Some(s) = self.sessions.get_mut(&d.id) else {
            return DeltaOutcome::NeedFull;
        };
        if s.owner == self.node_id {
            return DeltaOutcome::Stale;
        }
        if s.owner == d.owner && s.incarnation == d.incarnation && s.revision >= d.revision {
            if s.revision == d.revision {
                s.last_verified = now;
            }
            return DeltaOutcome::Stale;
        }
        if s.owner != d.owner || s.incarnation != d.incarnation || s.revision != d.base {
            return DeltaOutcome::NeedFull;
        }
        let id = d.id;
        let mut changes = Changes::default();
        let mut emptied = Vec::new();
        // Removals first, shown as readers last saw them (the old health).
        for key in d.removed {
            if let Some(old) = s.instances.remove(&key) {
                changes.entry(&key.0).removed.push(s.shown(&id, &old));
                emptied.push(key.0);
            }
        }
        let health_changed = s.healthy != d.healthy;
        s.healthy = d.healthy;
        s.revision = d.revision;
        s.last_verified = now;
        let mut added = Vec::new();
        for (svc, r) in d.upserted {
            let key = (svc, r.addr.clone());
            let after = s.shown(&id, &r);
            let before = s.instances.insert(key.clone(), r);
            let before = before.map(|b| s.shown(&id, &b));
            if before.is_none() {
                added.push(key.0.clone());
            }
            // A health change re-shows every instance below.
            if !health_changed && before.as_ref() != Some(&after) {
                changes.entry(&key.0).upserted.push(after);
            }
        }
        if health_changed {
            for ((svc, _), r) in &s.instances {
                changes.entry(svc).upserted.push(s.shown(&id, r));
            }
        }
        added.dedup();
        emptied.dedup();
        for svc in added {
            self.index_add(&id, &svc);
        }
        for svc in emptied {
            self.index_maybe_remove(&id, &svc);
        }
        DeltaOutcome::Applied(changes.into_vec())
    }

    /// The owner deleted a session (its revision clock stood at `revision`).
    pub fn apply_delete(
        &mut self,
        id: &str,
        owner: NodeId,
        revision: u64,
    ) -> (bool, Vec<EphemeralChange>) {
        let gone = self
            .sessions
            .get(id)
            .is_some_and(|s| s.owner == owner && s.owner != self.node_id && s.revision <= revision);
        if !gone {
            return (false, vec![]);
        }
        let mut changes = Changes::default();
        self.remove_session(id, &mut changes);
        (true, changes.into_vec())
    }

    /// Check an owner's list of its sessions against what this node holds.
    pub fn verify(&mut self, list: &OwnedList, now: Instant) -> Verified {
        let mut out = Verified::default();
        if list.owner == self.node_id {
            return out;
        }
        let mut listed = HashSet::with_capacity(list.sessions.len());
        for (id, rev) in &list.sessions {
            listed.insert(id.as_str());
            match self.sessions.get_mut(id) {
                Some(s) if s.owner == list.owner && s.revision >= *rev => s.last_verified = now,
                // Ours (a conflicting id): the owner's data wins on each side.
                Some(s) if s.owner == self.node_id => {}
                _ => out.wanted.push(id.clone()),
            }
        }
        let stale: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(id, s)| {
                s.owner == list.owner
                    && !listed.contains(id.as_str())
                    && (s.incarnation != list.incarnation || s.revision <= list.as_of)
            })
            .map(|(id, _)| id.clone())
            .collect();
        let mut changes = Changes::default();
        for id in &stale {
            self.remove_session(id, &mut changes);
        }
        out.dropped = stale.len();
        out.changes = changes.into_vec();
        out
    }

    /// Drop replicas whose owner has not vouched for them within `expiry`.
    pub fn expire_replicas(
        &mut self,
        now: Instant,
        expiry: Duration,
    ) -> (Vec<SessionId>, Vec<EphemeralChange>) {
        let me = self.node_id;
        let expired: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.owner != me && now.saturating_duration_since(s.last_verified) > expiry
            })
            .map(|(id, _)| id.clone())
            .collect();
        let mut changes = Changes::default();
        for id in &expired {
            self.remove_session(id, &mut changes);
        }
        (expired, changes.into_vec())
    }

    /// Drop replicas whose owner is not in `members` (a node removed from the
    /// cluster never verifies again: no need to wait for the expiry).
    pub fn drop_non_members(
        &mut self,
        members: &HashSet<NodeId>,
    ) -> (Vec<SessionId>, Vec<EphemeralChange>) {
        let me = self.node_id;
        let gone: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.owner != me && !members.contains(&s.owner))
            .map(|(id, _)| id.clone())
            .collect();
        let mut changes = Changes::default();
        for id in &gone {
            self.remove_session(id, &mut changes);
        }
        (gone, changes.into_vec())
    }

    /// Every session this node holds (a snapshot for a starting peer).
    pub fn snapshot(&self) -> Vec<SessionData> {
        self.sessions.iter().map(|(id, s)| s.data(id)).collect()
    }

    // ----- reads -----

    pub fn instances_of(&self, service: &ServiceKey) -> Vec<EphemeralInstance> {
        let mut out = Vec::new();
        let Some(ids) = self.by_service.get(service) else {
            return out;
        };
        let mut ids: Vec<&SessionId> = ids.iter().collect();
        ids.sort();
        for id in ids {
            if let Some(s) = self.sessions.get(id) {
                for ((_, _), r) in s
                    .instances
                    .range((service.clone(), min_addr())..)
                    .take_while(|((k, _), _)| k == service)
                {
                    out.push(s.shown(id, r));
                }
            }
        }
        out
    }

    /// Ephemeral instance counts of the services of a namespace and group, by name.
    pub fn services_in(&self, namespace: &str, group: &str) -> BTreeMap<String, u32> {
        let mut out = BTreeMap::new();
        for svc in self.by_service.keys() {
            if svc.namespace == namespace && svc.group == group {
                out.insert(svc.name.clone(), self.instances_of(svc).len() as u32);
            }
        }
        out
    }

    pub fn touched(&self, service: &ServiceKey) -> bool {
        self.touched.contains(service)
    }

    /// (sessions owned, sessions replicated, instances held).
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut owned = 0;
        let mut instances = 0;
        for s in self.sessions.values() {
            if s.owner == self.node_id {
                owned += 1;
            }
            instances += s.instances.len();
        }
        (owned, self.sessions.len() - owned, instances)
    }
}

fn min_addr() -> InstanceAddr {
    InstanceAddr {
        ip: String::new(),
        port: 0,
        cluster: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str) -> ServiceKey {
        ServiceKey {
            namespace: "public".into(),
            group: "DEFAULT_GROUP".into(),
            name: name.into(),
        }
    }

    fn inst(ip: &str, port: u16) -> InstanceRecord {
        InstanceRecord {
            addr: InstanceAddr {
                ip: ip.into(),
                port,
                cluster: "DEFAULT".into(),
            },
            weight: 1.0,
            healthy: true,
            enabled: true,
            metadata: Default::default(),
        }
    }

    const TTL: Duration = Duration::from_secs(10);

    /// Node 1's store holding session `s` with, per service, the instances at `ips`
    /// (port 80), each service's registered in one call.
    fn owner_with(now: Instant, services: &[(&str, &[&str])]) -> Store {
        let mut a = Store::new(1, 11);
        a.open("s".into(), TTL, now).unwrap();
        for (service, ips) in services {
            let records = ips.iter().map(|ip| inst(ip, 80)).collect();
            a.register("s", &svc(service), records, false).unwrap();
        }
        a
    }

    #[test]
    fn only_the_owner_changes_a_session() {
        let now = Instant::now();
        let mut a = owner_with(now, &[("orders", &["10.0.0.1"])]);
        let mut b = Store::new(2, 22);
        let data = a.owned_data("s").unwrap();
        let (applied, changes) = b.apply_sync(data.clone(), now);
        assert!(applied);
        assert_eq!(changes.len(), 1);
        assert_eq!(b.instances_of(&svc("orders")).len(), 1);
        // b cannot change it, and says who owns it.
        let err = b
            .register("s", &svc("orders"), vec![inst("10.0.0.2", 80)], false)
            .unwrap_err();
        assert!(matches!(err, Error::FailedPrecondition(m) if m.contains("node 1")));
        assert!(matches!(
            b.renew("s", now),
            Err(Error::FailedPrecondition(_))
        ));
        assert!(matches!(b.renew("nope", now), Err(Error::NotFound(_))));
        // A sync about a session a node owns never overwrites it.
        let mut forged = data.clone();
        forged.owner = 2;
        forged.revision += 100;
        forged.instances.clear();
        assert!(!a.apply_sync(forged, now).0);
        assert_eq!(a.instances_of(&svc("orders")).len(), 1);
        // Opening an id that another node owns is refused.
        assert!(matches!(
            b.open("s".into(), TTL, now),
            Err(Error::AlreadyExists(_))
        ));
    }

    #[test]
    fn a_sync_is_full_state_idempotent_and_never_goes_back() {
        let now = Instant::now();
        let mut a = owner_with(now, &[("orders", &["10.0.0.1", "10.0.0.2"])]);
        let mut b = Store::new(2, 22);
        let v1 = a.owned_data("s").unwrap();
        a.deregister("s", &svc("orders"), &inst("10.0.0.1", 80).addr)
            .unwrap();
        a.register("s", &svc("users"), vec![inst("10.0.0.3", 80)], false)
            .unwrap();
        let v2 = a.owned_data("s").unwrap();
        assert!(v2.revision > v1.revision);
        assert!(b.apply_sync(v1.clone(), now).0);
        let (applied, changes) = b.apply_sync(v2.clone(), now);
        assert!(applied);
        // orders lost 10.0.0.1, users gained 10.0.0.3.
        let orders = changes.iter().find(|c| c.service == svc("orders")).unwrap();
        assert_eq!(orders.removed.len(), 1);
        assert!(orders.upserted.is_empty());
        let users = changes.iter().find(|c| c.service == svc("users")).unwrap();
        assert_eq!(users.upserted.len(), 1);
        // Again, and an older one: nothing.
        assert_eq!(b.apply_sync(v2.clone(), now), (false, vec![]));
        assert_eq!(b.apply_sync(v1, now), (false, vec![]));
        assert_eq!(b.instances_of(&svc("orders")).len(), 1);
        assert_eq!(b.instances_of(&svc("users")).len(), 1);
        // A delete removes everything, once.
        let (gone, changes) = b.apply_delete("s", 1, a.clock());
        assert!(gone);
        assert_eq!(changes.len(), 2);
        assert!(b.instances_of(&svc("orders")).is_empty());
        assert!(!b.apply_delete("s", 1, a.clock()).0);
        assert_eq!(b.counts(), (0, 0, 0));
    }

    #[test]
    fn leases_turn_unhealthy_then_expire_and_renewal_heals() {
        let t0 = Instant::now();
        let mut a = Store::new(1, 11);
        a.open("s".into(), TTL, t0).unwrap();
        a.register("s", &svc("orders"), vec![inst("10.0.0.1", 80)], false)
            .unwrap();
        let (expired, sick, _) = a.check_leases(t0 + Duration::from_secs(4), 50);
        assert!(expired.is_empty() && sick.is_empty());
        let (expired, sick, changes) = a.check_leases(t0 + Duration::from_secs(5), 50);
        assert!(expired.is_empty());
        assert_eq!(sick, vec!["s".to_string()]);
        assert!(!changes[0].upserted[0].record.healthy);
        assert!(!a.instances_of(&svc("orders"))[0].record.healthy);
        // Renewing makes it healthy again (a change to sync).
        let (_, changed, changes) = a.renew("s", t0 + Duration::from_secs(6)).unwrap();
        assert!(changed);
        assert!(changes[0].upserted[0].record.healthy);
        let (expired, _, changes) = a.check_leases(t0 + Duration::from_secs(16), 50);
        assert_eq!(expired, vec!["s".to_string()]);
        assert_eq!(changes[0].removed.len(), 1);
        assert!(a.instances_of(&svc("orders")).is_empty());
        assert!(matches!(a.renew("s", t0), Err(Error::NotFound(_))));
    }

    #[test]
    fn verify_asks_for_missing_and_older_and_drops_what_the_owner_no_longer_has() {
        let now = Instant::now();
        let mut a = Store::new(1, 11);
        let mut b = Store::new(2, 22);
        for id in ["s1", "s2", "s3"] {
            a.open(id.into(), TTL, now).unwrap();
            a.register(
                id,
                &svc("orders"),
                vec![inst(&format!("10.0.0.{}", id.len()), 80)],
                false,
            )
            .unwrap();
        }
        b.apply_sync(a.owned_data("s1").unwrap(), now);
        b.apply_sync(a.owned_data("s2").unwrap(), now);
        b.apply_sync(a.owned_data("s3").unwrap(), now);
        // s2 changes (b is behind), s3 is closed (b missed the delete), s4 is new.
        a.register("s2", &svc("orders"), vec![inst("10.0.0.9", 80)], false)
            .unwrap();
        a.close("s3").unwrap();
        a.open("s4".into(), TTL, now).unwrap();
        let later = now + Duration::from_secs(60);
        let v = b.verify(&a.owned_list(), later);
        let mut wanted = v.wanted.clone();
        wanted.sort();
        assert_eq!(wanted, vec!["s2".to_string(), "s4".to_string()]);
        assert_eq!(v.dropped, 1);
        assert_eq!(b.owner_of("s3"), None);
        // s1 was vouched for at `later`; s2 (older) was not.
        let (expired, _) =
            b.expire_replicas(later + Duration::from_secs(30), Duration::from_secs(45));
        assert_eq!(expired, vec!["s2".to_string()]);
        assert_eq!(b.owner_of("s1"), Some(1));
    }

    #[test]
    fn a_session_created_after_the_list_survives_and_a_restarted_owner_clears_its_past() {
        let now = Instant::now();
        let mut a = Store::new(1, 11);
        let mut b = Store::new(2, 22);
        let list = a.owned_list();
        a.open("late".into(), TTL, now).unwrap();
        b.apply_sync(a.owned_data("late").unwrap(), now);
        // The list was made before "late" existed: it must not be dropped.
        assert_eq!(b.verify(&list, now).dropped, 0);
        assert_eq!(b.owner_of("late"), Some(1));
        // Node 1 restarts (new incarnation, memory lost): its old sessions go.
        let a2 = Store::new(1, 12);
        let v = b.verify(&a2.owned_list(), now);
        assert_eq!(v.dropped, 1);
        assert_eq!(b.owner_of("late"), None);
    }

    #[test]
    fn a_replacement_publishes_exactly_the_new_list() {
        let now = Instant::now();
        let mut a = owner_with(
            now,
            &[
                ("orders", &["10.0.0.1", "10.0.0.2"]),
                ("users", &["10.0.0.9"]),
            ],
        );
        let before = a.owned_data("s").unwrap().revision;
        let changes = a
            .replace(
                "s",
                &svc("orders"),
                vec![inst("10.0.0.2", 80), inst("10.0.0.3", 80)],
            )
            .unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].removed[0].record.addr.ip, "10.0.0.1");
        assert_eq!(changes[0].upserted.len(), 1);
        assert!(a.owned_data("s").unwrap().revision > before);
        let ips: Vec<String> = a
            .instances_of(&svc("orders"))
            .into_iter()
            .map(|e| e.record.addr.ip)
            .collect();
        assert_eq!(ips, ["10.0.0.2", "10.0.0.3"]);
        // The same list again changes nothing; an empty one unpublishes the service.
        assert!(a
            .replace(
                "s",
                &svc("orders"),
                vec![inst("10.0.0.2", 80), inst("10.0.0.3", 80)]
            )
            .unwrap()
            .is_empty());
        a.replace("s", &svc("orders"), vec![]).unwrap();
        assert!(a.instances_of(&svc("orders")).is_empty());
        assert_eq!(a.instances_of(&svc("users")).len(), 1);
        assert!(a
            .services_in("public", "DEFAULT_GROUP")
            .contains_key("users"));
        assert!(!a
            .services_in("public", "DEFAULT_GROUP")
            .contains_key("orders"));
    }

    #[test]
    fn the_sessions_of_a_removed_member_go() {
        let now = Instant::now();
        let mut a = Store::new(1, 11);
        let mut b = Store::new(2, 22);
        a.open("s".into(), TTL, now).unwrap();
        b.open("mine".into(), TTL, now).unwrap();
        b.apply_sync(a.owned_data("s").unwrap(), now);
        let (gone, _) = b.drop_non_members(&HashSet::from([1, 2]));
        assert!(gone.is_empty());
        let (gone, _) = b.drop_non_members(&HashSet::from([2, 3]));
        assert_eq!(gone, vec!["s".to_string()]);
        assert_eq!(b.owner_of("mine"), Some(2));
    }

    #[test]
    fn expired_replicas_go_and_own_sessions_never_expire_that_way() {
        let now = Instant::now();
        let a = owner_with(now, &[("orders", &["10.0.0.1"])]);
        let mut b = Store::new(2, 22);
        b.open("mine".into(), TTL, now).unwrap();
        b.apply_sync(a.owned_data("s").unwrap(), now);
        let (expired, _) = b.expire_replicas(now + Duration::from_secs(2), Duration::from_secs(3));
        assert!(expired.is_empty());
        let (expired, changes) =
            b.expire_replicas(now + Duration::from_secs(4), Duration::from_secs(3));
        assert_eq!(expired, vec!["s".to_string()]);
        assert_eq!(changes[0].removed.len(), 1);
        assert_eq!(b.owner_of("mine"), Some(2));
        assert!(b.touched(&svc("orders")));
        assert!(!b.touched(&svc("users")));
    }

    /// Send `peer` what `owner` would send it, apply it, and acknowledge it as the
    /// engine does. Returns the outcome on the replica.
    fn sync_to(owner: &mut Store, replica: &mut Store, id: &str, now: Instant) -> DeltaOutcome {
        let peer = replica.node_id;
        let out = owner.outgoing(id, peer).unwrap();
        let rev = out.revision();
        let outcome = match out {
            Outgoing::Full(d) => DeltaOutcome::Applied(replica.apply_sync(d, now).1),
            Outgoing::Delta(d) => replica.apply_delta(d, now),
        };
        match outcome {
            DeltaOutcome::NeedFull => owner.forget_ack(id, peer),
            _ => owner.acked(id, peer, rev, &[2, 3]),
        }
        outcome
    }

    fn sorted(mut v: Vec<EphemeralInstance>) -> Vec<EphemeralInstance> {
        v.sort_by(|a, b| a.record.addr.cmp(&b.record.addr));
        v
    }

    #[test]
    fn deltas_carry_only_what_changed_and_end_where_a_full_sync_ends() {
        let now = Instant::now();
        let mut a = owner_with(
            now,
            &[
                ("orders", &["10.0.0.1", "10.0.0.2"]),
                ("users", &["10.0.0.9"]),
            ],
        );
        let mut b = Store::new(2, 22);
        // Never acknowledged: whole.
        assert!(matches!(a.outgoing("s", 2), Some(Outgoing::Full(_))));
        sync_to(&mut a, &mut b, "s", now);
        // One added, one changed, one removed (the last of its service).
        let mut changed = inst("10.0.0.1", 80);
        changed.weight = 5.0;
        a.register(
            "s",
            &svc("orders"),
            vec![changed, inst("10.0.0.3", 80)],
            false,
        )
        .unwrap();
        a.deregister("s", &svc("users"), &inst("10.0.0.9", 80).addr)
            .unwrap();
        let Some(Outgoing::Delta(d)) = a.outgoing("s", 2) else {
            panic!("expected a delta");
        };
        assert_eq!(d.upserted.len(), 2, "{d:?}");
        assert_eq!(d.removed.len(), 1, "{d:?}");
        let DeltaOutcome::Applied(changes) = sync_to(&mut a, &mut b, "s", now) else {
            panic!("the delta did not apply");
        };
        let orders = changes.iter().find(|c| c.service == svc("orders")).unwrap();
        assert_eq!(orders.upserted.len(), 2);
        let users = changes.iter().find(|c| c.service == svc("users")).unwrap();
        assert_eq!(users.removed.len(), 1);
        // The same view as a replica that only ever had full syncs.
        let mut c = Store::new(3, 33);
        c.apply_sync(a.owned_data("s").unwrap(), now);
        for service in ["orders", "users"] {
            assert_eq!(
                sorted(b.instances_of(&svc(service))),
                sorted(c.instances_of(&svc(service))),
                "{service}"
            );
        }
        assert!(!b
            .services_in("public", "DEFAULT_GROUP")
            .contains_key("users"));
        assert_eq!(b.sessions["s"].revision, a.sessions["s"].revision);
        // The same delta again changes nothing.
        assert_eq!(b.apply_delta(d, now), DeltaOutcome::Stale);
    }

    #[test]
    fn a_delta_only_applies_on_its_base_and_the_owner_then_sends_whole() {
        let now = Instant::now();
        let mut a = Store::new(1, 11);
        let mut b = Store::new(2, 22);
        a.open("s".into(), TTL, now).unwrap();
        sync_to(&mut a, &mut b, "s", now);
        a.register("s", &svc("orders"), vec![inst("10.0.0.1", 80)], false)
            .unwrap();
        let Some(Outgoing::Delta(first)) = a.outgoing("s", 2) else {
            panic!("expected a delta");
        };
        a.register("s", &svc("orders"), vec![inst("10.0.0.2", 80)], false)
            .unwrap();
        // Pretend the owner believed b held the first delta: a delta from a base b
        // does not hold is refused.
        a.acked("s", 2, first.revision, &[2, 3]);
        let Some(Outgoing::Delta(second)) = a.outgoing("s", 2) else {
            panic!("expected a delta");
        };
        assert_eq!(b.apply_delta(second.clone(), now), DeltaOutcome::NeedFull);
        // Another incarnation of the owner, or no replica at all: whole as well.
        let mut other = second.clone();
        other.incarnation += 1;
        other.base = b.sessions["s"].revision;
        assert_eq!(b.apply_delta(other, now), DeltaOutcome::NeedFull);
        let mut fresh = Store::new(3, 33);
        assert_eq!(fresh.apply_delta(second, now), DeltaOutcome::NeedFull);
        // After the refusal the owner sends it whole, and deltas resume.
        a.forget_ack("s", 2);
        assert!(matches!(a.outgoing("s", 2), Some(Outgoing::Full(_))));
        sync_to(&mut a, &mut b, "s", now);
        assert_eq!(b.instances_of(&svc("orders")).len(), 2);
        a.register("s", &svc("orders"), vec![inst("10.0.0.3", 80)], false)
            .unwrap();
        assert!(matches!(
            sync_to(&mut a, &mut b, "s", now),
            DeltaOutcome::Applied(_)
        ));
        assert_eq!(b.instances_of(&svc("orders")).len(), 3);
        // A node never takes a delta about a session it owns.
        assert!(b.outgoing("s", 1).is_none(), "b does not own s");
        let mut forged = SessionDelta {
            id: "s".into(),
            owner: 2,
            incarnation: 22,
            base: 0,
            revision: u64::MAX,
            healthy: true,
            upserted: vec![],
            removed: vec![(svc("orders"), inst("10.0.0.1", 80).addr)],
        };
        assert_eq!(a.apply_delta(forged.clone(), now), DeltaOutcome::Stale);
        forged.owner = 1;
        assert_eq!(a.apply_delta(forged, now), DeltaOutcome::Stale);
        assert_eq!(a.instances_of(&svc("orders")).len(), 3);
    }

    #[test]
    fn a_health_change_travels_as_a_delta_and_reshows_every_instance() {
        let now = Instant::now();
        let mut a = owner_with(now, &[("orders", &["10.0.0.1", "10.0.0.2"])]);
        let mut b = Store::new(2, 22);
        sync_to(&mut a, &mut b, "s", now);
        let (_, sick, _) = a.check_leases(now + TTL * 6 / 10, 50);
        assert_eq!(sick, vec!["s".to_string()]);
        let Some(Outgoing::Delta(d)) = a.outgoing("s", 2) else {
            panic!("expected a delta");
        };
        assert!(d.upserted.is_empty() && d.removed.is_empty() && !d.healthy);
        let DeltaOutcome::Applied(changes) = sync_to(&mut a, &mut b, "s", now) else {
            panic!("the delta did not apply");
        };
        assert_eq!(changes[0].upserted.len(), 2);
        assert!(b
            .instances_of(&svc("orders"))
            .iter()
            .all(|i| !i.record.healthy));
    }

    #[test]
    fn the_journal_forgets_what_every_peer_acknowledged() {
        let now = Instant::now();
        let mut a = owner_with(now, &[("orders", &["10.0.0.1"])]);
        let mut b = Store::new(2, 22);
        let mut c = Store::new(3, 33);
        sync_to(&mut a, &mut b, "s", now);
        assert_eq!(
            a.sessions["s"].journal.len(),
            1,
            "node 3 has not acknowledged"
        );
        sync_to(&mut a, &mut c, "s", now);
        assert_eq!(a.sessions["s"].journal.len(), 0);
        a.register("s", &svc("orders"), vec![inst("10.0.0.2", 80)], false)
            .unwrap();
        assert_eq!(a.sessions["s"].journal.len(), 1);
        assert!(matches!(a.outgoing("s", 3), Some(Outgoing::Delta(_))));
    }
}
