//! Typed access to a group through the consistency layer (the role of toydb's
//! `sql/engine/raft.rs`): a group's writes and reads are Rust types, each naming the
//! type of its answer, and this is the one place where they become bytes and come back.
//!
//! A group defines one enum for its log entries ([`GroupCommand`]) and one for its
//! reads ([`GroupQuery`]); each operation is a struct that converts into one of them and
//! implements [`Mutation`] or [`Read`] with its reply type. The state machine answers an
//! operation with exactly that reply type ([`encode_reply`]), so a handler never has to
//! match on a reply enum it did not ask for.

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec;
use crate::consistency::{self, ReadLevel};
use crate::error::Result;
use crate::raft::node::MultiRaft;
use crate::raft::types::Command;

/// A group's log-entry type.
pub trait GroupCommand: Serialize {
    /// The group the entries belong to.
    const GROUP: &'static str;
}

/// A group's read type.
pub trait GroupQuery: Serialize {
    const GROUP: &'static str;
}

/// One kind of write, and what applying it answers.
pub trait Mutation: Sized {
    type Command: GroupCommand + From<Self>;
    type Reply: DeserializeOwned;
    /// A short operation name and the key it touches, for logs and metrics.
    fn describe(&self) -> (&'static str, String);
}

/// One kind of read, and its answer.
pub trait Read: Sized {
    type Query: GroupQuery + From<Self>;
    type Reply: DeserializeOwned;
}

/// Encode a state machine's typed answer (the counterpart of the decoding in
/// [`GroupClient`]).
pub fn encode_reply<T: Serialize, E>(
    reply: std::result::Result<T, E>,
) -> std::result::Result<Vec<u8>, E> {
    reply.map(|r| codec::encode(&r))
}

/// Writes and reads of any group, routed by the consistency layer.
#[derive(Clone)]
pub struct GroupClient {
    node: Arc<MultiRaft>,
}

impl GroupClient {
    pub fn new(node: Arc<MultiRaft>) -> Self {
        GroupClient { node }
    }

    pub fn node(&self) -> &Arc<MultiRaft> {
        &self.node
    }

    /// Apply `m` through the group's leader, within `timeout` (default: the node's).
    pub async fn mutate<M: Mutation>(&self, m: M, timeout: Option<Duration>) -> Result<M::Reply> {
        let (op, key) = m.describe();
        let payload = codec::encode(&M::Command::from(m));
        let cmd = Command::new(op, key, payload);
        let bytes = consistency::write(&self.node, M::Command::GROUP, cmd, timeout).await?;
        codec::decode_message(&bytes, "group reply")
    }

    /// Read `q` at `level`.
    pub async fn query<Q: Read>(
        &self,
        q: Q,
        level: ReadLevel,
        timeout: Option<Duration>,
    ) -> Result<Q::Reply> {
        let bytes = codec::encode(&Q::Query::from(q));
        let reply = consistency::read(&self.node, Q::Query::GROUP, bytes, level, timeout).await?;
        codec::decode_message(&reply, "group reply")
    }
}

/// Declare a group's writes: each `Variant => Reply, "op", |m| key` makes the struct
/// `Variant` the `Enum::Variant` log entry, answered by `Reply`, logged as `op` on the
/// key `key` computed from `m: &Variant`.
macro_rules! group_writes {
    ($enum:ident { $($variant:ident => $reply:ty, $op:literal, |$m:ident| $key:expr;)* }) => {
        $(
            impl From<$variant> for $enum {
                fn from(v: $variant) -> Self {
                    $enum::$variant(v)
                }
            }
            impl $crate::groups::client::Mutation for $variant {
                type Command = $enum;
                type Reply = $reply;
                fn describe(&self) -> (&'static str, String) {
                    let $m = self;
                    ($op, $key)
                }
            }
        )*
    };
}

/// Declare a group's reads: each `Variant => Reply` makes the struct `Variant` the
/// `Enum::Variant` query, answered by `Reply`.
macro_rules! group_reads {
    ($enum:ident { $($variant:ident => $reply:ty;)* }) => {
        $(
            impl From<$variant> for $enum {
                fn from(v: $variant) -> Self {
                    $enum::$variant(v)
                }
            }
            impl $crate::groups::client::Read for $variant {
                type Query = $enum;
                type Reply = $reply;
            }
        )*
    };
}

pub(crate) use {group_reads, group_writes};
