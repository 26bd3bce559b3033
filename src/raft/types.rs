//! The openraft type configuration shared by every group, and the log entry payload.

use std::fmt;

use openraft::type_config::alias::{LogIdOf, StoredMembershipOf};
use serde::{Deserialize, Serialize};

use crate::error::Error;

pub use crate::config::NodeId;

openraft::declare_raft_types!(
    /// openraft types for every nacosd group. Groups differ only in their state machine,
    /// so one type configuration serves them all.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = openraft::BasicNode,
);

pub type LogId = LogIdOf<TypeConfig>;
pub type StoredMembership = StoredMembershipOf<TypeConfig>;
pub type Raft = openraft::Raft<TypeConfig, crate::raft::state_machine::GroupStateMachine>;
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
pub type RaftMetrics = openraft::RaftMetrics<TypeConfig>;

/// The payload of one Raft log entry: a write for a group's state machine (the role of
/// Nacos's `WriteRequest`).
///
/// Everything `apply` needs is inside, including the wall-clock time chosen by the node
/// that accepted the write, so that applying it gives the same result on every replica.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Milliseconds since the Unix epoch, chosen before proposing.
    pub timestamp_ms: u64,
    /// A short operation name for logs and metrics (e.g. `put`, `register`).
    pub op: String,
    /// The key the operation touches, for logs (may be empty).
    pub key: String,
    /// The group-defined, encoded operation. As bytes, not as a sequence of `u8`:
    /// the same bincode layout (length, then the bytes), written and read with one
    /// copy instead of one serde call per byte (a few percent of a leader's CPU
    /// under a publish load: every entry is encoded for the log and each follower).
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

impl Command {
    pub fn new(op: impl Into<String>, key: impl Into<String>, payload: Vec<u8>) -> Self {
        Command {
            timestamp_ms: now_ms(),
            op: op.into(),
            key: key.into(),
            payload,
        }
    }
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Command({} {:?} at {}, {} bytes)",
            self.op,
            self.key,
            self.timestamp_ms,
            self.payload.len()
        )
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What applying a [`Command`] produced: the group's encoded response, or a
/// deterministic error that every replica computed identically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult(pub Result<Vec<u8>, Error>);

/// The durable position of a state machine: what it has applied and the membership it
/// has seen. Persisted atomically with the data it describes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedState {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

impl AppliedState {
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain data into a Vec cannot fail.
        bincode::serialize(self).expect("AppliedState serializes")
    }

    pub fn decode(bytes: &[u8]) -> std::io::Result<Self> {
        bincode::deserialize(bytes).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("corrupt applied state: {e}"),
            )
        })
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `Command` was before its payload was serialized as bytes.
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct CommandAsSequence {
        timestamp_ms: u64,
        op: String,
        key: String,
        payload: Vec<u8>,
    }

    #[test]
    fn a_command_keeps_its_encoding_with_the_payload_as_bytes() {
        let cmd = Command {
            timestamp_ms: 42,
            op: "publish".into(),
            key: "k".into(),
            payload: vec![0, 1, 2, 255, 7],
        };
        let old = CommandAsSequence {
            timestamp_ms: 42,
            op: "publish".into(),
            key: "k".into(),
            payload: vec![0, 1, 2, 255, 7],
        };
        // Logs and snapshots written before read back, and the other way round.
        assert_eq!(crate::codec::encode(&cmd), crate::codec::encode(&old));
        let back: Command =
            crate::codec::decode_stored(&crate::codec::encode(&old), "command").unwrap();
        assert_eq!(back, cmd);
        let back: CommandAsSequence =
            crate::codec::decode_stored(&crate::codec::encode(&cmd), "command").unwrap();
        assert_eq!(back, old);
    }
}
