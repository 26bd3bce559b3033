//! The consistency layer: how a write or a read reaches the right replica (Nacos's
//! `JRaftProtocol` `write` / `invokeToLeader` / `readIndex` / `readFromLeader`).
//!
//! Writes: propose on this node if it leads the group, otherwise forward to the
//! leader over the peer port. A write is retried against a new leader only when the
//! failure proves it was never proposed (the target was not leader, or the
//! connection could not be made); when it might have been proposed (timeout, lost
//! connection, entry discarded by a leader change) the caller gets
//! [`Error::UnknownOutcome`](crate::error::Error::UnknownOutcome) and nothing is
//! retried, so no write is ever applied twice by this layer.
//!
//! Reads take a [`ReadLevel`]:
//! - `Linearizable` (default): read-index. The leader confirms its leadership with a
//!   heartbeat quorum and returns its commit position; a follower asks the leader for
//!   it, waits (bounded) until it has applied that far, and reads locally. Any failure
//!   falls back to running the read on the leader.
//! - `Lease`: as above, but the leader answers from its lease (no quorum round trip;
//!   assumes bounded clock drift).
//! - `Stale`: the local state as it is, even with no leader.
//!
//! This layer knows nothing about what a group stores: commands and queries are bytes.

mod read;
mod write;

pub use read::{read, read_index_on_leader, read_on_leader, ReadLevel};
pub use write::{write, write_on_leader};

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::raft::node::{Group, MultiRaft};

/// The group, if this node leads it; otherwise `Unavailable` (not proposed, safe to
/// retry elsewhere) naming the leader when known. Requests forwarded here by a
/// follower stop at this check: they are never forwarded again.
fn led_here<'a>(node: &'a MultiRaft, group_name: &str) -> Result<&'a Arc<Group>> {
    let group = node.group(group_name)?;
    if !group.raft.is_leader() {
        return Err(Error::Unavailable {
            message: format!(
                "node {} is not the leader of group {}",
                node.node_id, group.name
            ),
            leader: group.leader(),
        });
    }
    Ok(group)
}
