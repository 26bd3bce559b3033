//! What a processor group is: the state-machine trait every group implements (Nacos's
//! `RequestProcessor4CP`) and the registry the node builds its groups from.
//!
//! Two levels:
//! - [`StateMachine`] owns its persistence. It applies batches of committed entries,
//!   storing the data and the applied position atomically, answers queries, and
//!   produces/restores snapshots as byte streams. The embedded-DB group implements it
//!   over SQLite.
//! - [`crate::raft::kv::Processor`] is the easy path for groups whose state fits a
//!   sorted key-value map: implement `apply` and `query` against a transaction over the
//!   node's RocksDB, and [`crate::raft::kv::RocksStateMachine`] does persistence,
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

use rocksdb::DB;

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

    /// Answer a read against the current local state.
    fn query(&self, query: &[u8]) -> Result<Vec<u8>, Error>;

    /// Capture a consistent point-in-time view for a snapshot.
    fn begin_snapshot(&self) -> io::Result<Box<dyn SnapshotSource>>;

    /// Replace the whole state with a snapshot's data, atomically, recording `applied`.
    fn restore(&self, data: &mut dyn Read, applied: &AppliedState) -> io::Result<()>;
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
    pub db: Arc<DB>,
    /// A directory the group may use for its own files.
    pub dir: PathBuf,
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
