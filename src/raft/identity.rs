//! Cluster identity: which cluster a data directory belongs to, and as which node.
//!
//! A cluster id (a random UUID) is created once, when a brand-new cluster is
//! bootstrapped, and stored in every member's RocksDB next to its Raft logs and votes,
//! written with sync before the node takes part in any Raft exchange. Every peer RPC
//! carries the sender's cluster id; a node refuses calls from another cluster, and a
//! node without an identity (an empty data directory) takes part in no Raft exchange
//! at all until it has one. That is what keeps a node whose disk was wiped from voting
//! or acknowledging entries under its old id with an empty log: it must first be
//! admitted again (as a learner that catches up), see `cluster::bootstrap`.
//!
//! The identity lives in the same RocksDB as the log and the vote on purpose: a
//! directory that lost its Raft state lost its identity with it, so the two cannot
//! disagree.
//!
//! [`IdentityCell`] is the node's shared, in-memory view: empty until bootstrap or
//! admission sets it, then fixed for the life of the process.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::sync::{Arc, RwLock};

use rocksdb::{WriteOptions, DB};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::NodeId;
use crate::raft::keys;
use crate::raft::rocks::cf;

/// A cluster's id: created once at bootstrap, never changed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClusterId(pub u128);

impl ClusterId {
    pub fn random() -> Self {
        ClusterId(uuid::Uuid::new_v4().as_u128())
    }

    /// Parse the form [`fmt::Display`] writes (a UUID).
    pub fn parse(s: &str) -> Option<Self> {
        uuid::Uuid::parse_str(s)
            .ok()
            .map(|u| ClusterId(u.as_u128()))
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&uuid::Uuid::from_u128(self.0), f)
    }
}

impl fmt::Debug for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What a data directory records about its owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub cluster_id: ClusterId,
    pub node_id: NodeId,
}

/// The bootstrapping node's record of a new cluster's initial members that have not yet
/// taken its identity (see `cluster::bootstrap`). Durable, so a bootstrapper that
/// restarts keeps offering the identity to the members that have not confirmed it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapRecord {
    pub members: BTreeMap<NodeId, String>,
    pub pending: BTreeSet<NodeId>,
}

/// Written on a node the cluster removed (`nacosctl member remove`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedRecord {
    /// The member that carried the removal out.
    pub by: NodeId,
}

/// Written when `--force-new-cluster` made this node the only member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForcedRecord {
    /// Per group, the index of the membership entry that made it so.
    pub entries: BTreeMap<String, u64>,
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Plain data into a Vec: cannot fail.
    bincode::serialize(v).expect("identity record serializes")
}

fn decode<T: serde::de::DeserializeOwned>(b: &[u8], what: &str) -> io::Result<T> {
    bincode::deserialize(b).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("corrupt {what} in the data directory: {e}"),
        )
    })
}

fn get<T: serde::de::DeserializeOwned>(db: &DB, key: &[u8], what: &str) -> io::Result<Option<T>> {
    let meta = cf(db, keys::RAFT_META_CF)?;
    match db.get_cf(meta, key).map_err(io::Error::other)? {
        None => Ok(None),
        Some(b) => decode(&b, what).map(Some),
    }
}

fn put_synced(db: &DB, key: &[u8], value: Option<Vec<u8>>) -> io::Result<()> {
    let meta = cf(db, keys::RAFT_META_CF)?;
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    match value {
        Some(v) => db.put_cf_opt(meta, key, v, &opts),
        None => db.delete_cf_opt(meta, key, &opts),
    }
    .map_err(io::Error::other)
}

/// The identity stored in this data directory, if any.
pub fn load(db: &DB) -> io::Result<Option<Identity>> {
    get(db, keys::IDENTITY_KEY, "cluster identity")
}

/// Store the identity, durably (fsync'd before returning).
pub fn store(db: &DB, identity: &Identity) -> io::Result<()> {
    put_synced(db, keys::IDENTITY_KEY, Some(encode(identity)))
}

pub fn load_bootstrap(db: &DB) -> io::Result<Option<BootstrapRecord>> {
    get(db, keys::BOOTSTRAP_KEY, "bootstrap record")
}

/// Store (or, with `None`, delete) the bootstrap record, durably.
pub fn store_bootstrap(db: &DB, record: Option<&BootstrapRecord>) -> io::Result<()> {
    put_synced(db, keys::BOOTSTRAP_KEY, record.map(encode))
}

pub fn load_removed(db: &DB) -> io::Result<Option<RemovedRecord>> {
    get(db, keys::REMOVED_KEY, "removal record")
}

/// Record, durably, that the cluster removed this node.
pub fn store_removed(db: &DB, record: &RemovedRecord) -> io::Result<()> {
    put_synced(db, keys::REMOVED_KEY, Some(encode(record)))
}

pub fn load_forced(db: &DB) -> io::Result<Option<ForcedRecord>> {
    get(db, keys::FORCED_KEY, "force-new-cluster record")
}

/// Store (or, with `None`, delete) the force-new-cluster record, durably.
pub fn store_forced(db: &DB, record: Option<&ForcedRecord>) -> io::Result<()> {
    put_synced(db, keys::FORCED_KEY, record.map(encode))
}

/// The node's identity as the running process knows it: unset until the node has
/// bootstrapped or been admitted, then fixed. Cheap to read on every RPC.
#[derive(Clone)]
pub struct IdentityCell {
    inner: Arc<RwLock<Option<Identity>>>,
    changed: watch::Sender<Option<ClusterId>>,
}

impl IdentityCell {
    pub fn new(initial: Option<Identity>) -> Self {
        let (changed, _) = watch::channel(initial.as_ref().map(|i| i.cluster_id));
        IdentityCell {
            inner: Arc::new(RwLock::new(initial)),
            changed,
        }
    }

    pub fn get(&self) -> Option<Identity> {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn cluster_id(&self) -> Option<ClusterId> {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|i| i.cluster_id)
    }

    /// Set the identity once it is durable. Setting the same identity again is a no-op;
    /// a different one is refused (an identity never changes).
    pub fn set(&self, identity: Identity) -> Result<(), Identity> {
        let mut slot = self.inner.write().unwrap_or_else(|e| e.into_inner());
        match slot.as_ref() {
            Some(existing) if *existing != identity => return Err(existing.clone()),
            Some(_) => return Ok(()),
            None => *slot = Some(identity.clone()),
        }
        drop(slot);
        let _ = self.changed.send(Some(identity.cluster_id));
        Ok(())
    }

    /// Resolves once the node has an identity.
    pub async fn wait(&self) -> ClusterId {
        let mut rx = self.changed.subscribe();
        loop {
            if let Some(id) = *rx.borrow_and_update() {
                return id;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trips_through_the_database() {
        let td = tempfile::tempdir().unwrap();
        let db = crate::raft::rocks::open(td.path(), &["g"]).unwrap();
        assert_eq!(load(&db).unwrap(), None);
        let id = Identity {
            cluster_id: ClusterId::random(),
            node_id: 3,
        };
        store(&db, &id).unwrap();
        assert_eq!(load(&db).unwrap(), Some(id.clone()));
        let text = id.cluster_id.to_string();
        assert_eq!(ClusterId::parse(&text), Some(id.cluster_id));
        assert_eq!(ClusterId::parse("not-a-uuid"), None);

        let rec = BootstrapRecord {
            members: BTreeMap::from([(1, "a:1".into()), (2, "b:2".into())]),
            pending: BTreeSet::from([2]),
        };
        store_bootstrap(&db, Some(&rec)).unwrap();
        assert_eq!(load_bootstrap(&db).unwrap(), Some(rec));
        store_bootstrap(&db, None).unwrap();
        assert_eq!(load_bootstrap(&db).unwrap(), None);
    }

    #[test]
    fn an_identity_is_set_once() {
        let cell = IdentityCell::new(None);
        assert!(cell.get().is_none());
        let a = Identity {
            cluster_id: ClusterId(1),
            node_id: 1,
        };
        cell.set(a.clone()).unwrap();
        cell.set(a.clone()).unwrap();
        let b = Identity {
            cluster_id: ClusterId(2),
            node_id: 1,
        };
        assert_eq!(cell.set(b), Err(a.clone()));
        assert_eq!(cell.cluster_id(), Some(ClusterId(1)));
    }
}
