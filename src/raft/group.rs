//! What a processor group is: the state-machine trait every group implements (Nacos's
//! `RequestProcessor4CP`) and the registry the node builds its groups from.
//!
//! Two levels:
//! - [`StateMachine`] owns its persistence. It applies batches of committed entries,
//!   storing the data and the applied position atomically, answers queries, and
//!   produces/restores snapshots as byte streams. The embedded-DB group implements it
//!   over SQLite.
//! - [`crate::raft::rocks_sm::Processor`] is the easy path for groups whose state fits a
//!   sorted key-value map: implement `apply` and `query` against a transaction over the
//!   node's RocksDB, and [`crate::raft::rocks_sm::RocksStateMachine`] does persistence,
//!   atomicity and snapshots.
//!
//! Rules for implementors: `apply` must be deterministic (same entries, same state and
//! results on every replica: use `Command::timestamp_ms`, never the clock). A result
//! that depends only on the input and the state, including a rejection, is returned as
//! the command's `CommandResult`; an I/O failure is returned as `Err(io::Error)` and
//! stops the group, because continuing would let replicas diverge.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use crate::raft::rocks::Db;

use crate::error::Error;
use crate::raft::types::{AppliedState, Command, CommandResult};

/// One committed entry handed to [`StateMachine::apply`]. `command` is `None` for
/// entries with no application payload (blank and membership entries), which only
/// advance the applied position.
pub struct ApplyItem<'a> {
    pub index: u64,
    pub command: Option<&'a Command>,
}

/// A replicated state machine of one group.
pub trait StateMachine: Send + Sync + 'static {
    /// The durable applied position, as last stored by `apply` or `restore`.
    fn applied_state(&self) -> io::Result<AppliedState>;

    /// Apply `items` in order and persist the result together with `applied`, in one
    /// atomic step. Returns one result per item that has a command, in order.
    fn apply(
        &self,
        items: &[ApplyItem<'_>],
        applied: &AppliedState,
    ) -> io::Result<Vec<CommandResult>>;

    /// Apply a small batch as [`StateMachine::apply`] does, but from memory alone and
    /// with a small bound on the work, or give up with `None` having changed nothing
    /// (a read would need the disk, the batch is large, a write would wait for a
    /// stall): the caller then runs `apply` where it may block. Called on an async
    /// worker, so it must never wait for the disk or a lock held for long. The default
    /// never tries.
    fn apply_in_memory(
        &self,
        items: &[ApplyItem<'_>],
        applied: &AppliedState,
    ) -> Option<io::Result<Vec<CommandResult>>> {
        let _ = (items, applied);
        None
    }

    /// Answer a read against the current local state.
    fn query(&self, query: &[u8]) -> Result<Vec<u8>, Error>;

    /// Answer a read from memory alone, with a small bound on the work, or `None` when
    /// that is not possible (the data is not all in memory, the query is large, the
    /// state is being replaced): the caller then runs [`StateMachine::query`] where it
    /// may block. Called on an async worker, so it must never wait for the disk or a
    /// lock held for long. The default never tries.
    fn query_in_memory(&self, query: &[u8]) -> Option<Result<Vec<u8>, Error>> {
        let _ = query;
        None
    }

    /// Capture a consistent point-in-time view for a snapshot. The view is written out
    /// on the same (blocking) thread right away, so it may borrow the state machine.
    fn begin_snapshot(&self) -> io::Result<Box<dyn SnapshotSource + '_>>;

    /// Replace the whole state with a snapshot's data, atomically, recording `applied`.
    fn restore(&self, data: &mut dyn Read, applied: &AppliedState) -> io::Result<()>;

    /// A digest of the whole state (data only, in a deterministic order) and the log
    /// index it reflects, read from one point in time. Replicas at the same index have
    /// the same digest; the fault suite and `nacosctl` compare them.
    fn digest(&self) -> io::Result<StateDigest>;
}

/// What [`StateMachine::digest`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDigest {
    pub applied_index: u64,
    /// Lowercase hex of an MD5 over the state's canonical encoding.
    pub digest: String,
    /// Records (key/value pairs, rows) covered.
    pub records: u64,
}

/// Builds a [`StateDigest`]: feed it the state's records in a deterministic order.
pub struct DigestBuilder {
    md5: md5::Md5,
    records: u64,
}

impl Default for DigestBuilder {
    fn default() -> Self {
        use md5::Digest;
        DigestBuilder {
            md5: md5::Md5::new(),
            records: 0,
        }
    }
}

impl DigestBuilder {
    /// Add one record made of `parts` (each length-prefixed, so part boundaries count).
    pub fn record(&mut self, parts: &[&[u8]]) {
        use md5::Digest;
        for p in parts {
            self.md5.update((p.len() as u64).to_le_bytes());
            self.md5.update(p);
        }
        self.records += 1;
    }

    pub fn finish(self, applied_index: u64) -> StateDigest {
        use md5::Digest;
        StateDigest {
            applied_index,
            digest: hex::encode(self.md5.finalize()),
            records: self.records,
        }
    }
}

/// A point-in-time view of a state machine being written out as a snapshot.
pub trait SnapshotSource: Send {
    /// The applied position this view corresponds to.
    fn applied(&self) -> &AppliedState;
    /// Write the state as bytes that `StateMachine::restore` understands.
    fn write_to(&mut self, out: &mut dyn Write) -> io::Result<()>;
}

/// What a group's constructor gets from the node.
pub struct GroupContext {
    pub name: String,
    /// The node's shared RocksDB (column family `sm.<name>` exists for the group).
    pub db: Arc<Db>,
    /// A directory the group may use for its own files.
    pub dir: PathBuf,
    /// Memory a RocksDB-backed state machine may keep for recently written values
    /// (`--state-cache-mib`, see `RocksStateMachine::with_key_cache`).
    pub state_cache_bytes: usize,
    /// Page cache per SQLite connection, in KiB, for a group kept in SQLite
    /// (`--db-page-cache-kib`).
    pub sqlite_page_cache_kib: usize,
}

type Constructor = Box<dyn Fn(&GroupContext) -> io::Result<Arc<dyn StateMachine>> + Send + Sync>;

/// One registered group: a name and how to build its state machine.
pub struct GroupSpec {
    pub name: String,
    pub build: Constructor,
}

/// The set of groups every node of a cluster runs. All nodes must register the same
/// groups under the same names.
#[derive(Default)]
pub struct GroupRegistry {
    specs: Vec<GroupSpec>,
}

impl GroupRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Register a group. Names are `[a-z0-9_]+` and unique.
    pub fn register(
        mut self,
        name: &str,
        build: impl Fn(&GroupContext) -> io::Result<Arc<dyn StateMachine>> + Send + Sync + 'static,
    ) -> Self {
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "group name {name:?} must match [a-z0-9_]+"
        );
        assert!(
            self.specs.iter().all(|s| s.name != name),
            "group {name} registered twice"
        );
        self.specs.push(GroupSpec {
            name: name.to_string(),
            build: Box::new(build),
        });
        self
    }

    pub fn names(&self) -> Vec<&str> {
        self.specs.iter().map(|s| s.name.as_str()).collect()
    }

    pub fn specs(&self) -> &[GroupSpec] {
        &self.specs
    }
}
