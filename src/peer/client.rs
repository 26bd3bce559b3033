//! The calling side of the peer protocol: typed calls that stamp the sender's identity
//! on every request and turn every reply and every failure into a nacosd result.
//!
//! The one rule that matters for writes: a failure is reported as
//! [`Error::Unavailable`] (the write was provably not applied, safe to retry) only when
//! the request never reached the peer ([`wire::never_sent`]) or the peer refused it
//! before running it (the status codes in [`refused_before_handling`]). Every other
//! failure after the request may have left is [`Error::UnknownOutcome`].

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use tonic::transport::Channel;

use crate::codec;
use crate::config::NodeId;
use crate::error::{Error, Result};
use crate::pb;
use crate::pb::raft_peer_client::RaftPeerClient;
use crate::peer::channels::{Lane, PeerChannels};
use crate::peer::forward::Batches;
use crate::peer::read_index::ReadIndexes;
use crate::peer::wire::{self, Sender};
use crate::raft::identity::IdentityCell;
use crate::raft::types::{Command, LogId};

/// Extra time a forwarded call gets over the deadline it carries, so that the remote
/// node's own timeout answers first.
pub(crate) const FORWARD_HEADROOM: Duration = Duration::from_millis(200);

/// This node's handle for calling peers.
#[derive(Clone)]
pub struct PeerClient {
    channels: PeerChannels,
    node_id: NodeId,
    identity: IdentityCell,
    /// Largest message sent or accepted (see `Config::peer_message_limit`).
    max_message: usize,
    /// Forwarded writes waiting to go, per leader and group (`peer::forward`).
    batches: Arc<Batches>,
    /// Reads waiting for a leader's read index (`peer::read_index`).
    read_indexes: Arc<ReadIndexes>,
}

/// Status codes with which the peer server refuses a call before its handler runs
/// (unknown group, another cluster, no identity yet, undecodable, too large, unknown
/// method): nothing was applied.
fn refused_before_handling(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        FailedPrecondition | NotFound | InvalidArgument | ResourceExhausted | Unimplemented
    )
}

impl PeerClient {
    pub fn new(
        node_id: NodeId,
        identity: IdentityCell,
        max_message: usize,
        channels: PeerChannels,
    ) -> Self {
        PeerClient {
            channels,
            node_id,
            identity,
            max_message,
            batches: Arc::default(),
            read_indexes: Arc::default(),
        }
    }

    pub(crate) fn batches(&self) -> &Batches {
        &self.batches
    }

    pub(crate) fn read_indexes(&self) -> &ReadIndexes {
        &self.read_indexes
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub fn identity(&self) -> &IdentityCell {
        &self.identity
    }

    /// The generated client for `addr` on `lane`.
    pub fn raft(
        &self,
        addr: &str,
        lane: Lane,
    ) -> std::result::Result<RaftPeerClient<Channel>, tonic::transport::Error> {
        Ok(RaftPeerClient::new(self.channels.channel(addr, lane)?)
            .max_decoding_message_size(self.max_message)
            .max_encoding_message_size(self.max_message))
    }

    fn client(&self, addr: &str) -> Result<RaftPeerClient<Channel>> {
        self.raft(addr, Lane::Control)
            .map_err(|e| Error::unavailable(format!("bad peer address {addr}: {e}")))
    }

    /// A request stamped with this node's identity, bounded by `timeout`.
    pub fn request<T>(&self, message: T, timeout: Option<Duration>) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        Sender::stamp(req.metadata_mut(), self.identity.cluster_id(), self.node_id);
        if let Some(t) = timeout {
            req.set_timeout(t);
        }
        req
    }

    /// Propose `cmd` on the leader at `addr`, batched with the other writes this node
    /// forwards there (`peer::forward`).
    pub async fn forward_write(
        &self,
        addr: &str,
        group: &str,
        cmd: &Command,
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        self.forward_encoded(addr, group, codec::encode(cmd), timeout)
            .await
    }

    /// One write, one call: for leaders that do not know `ForwardWrites`.
    pub(crate) async fn forward_one(
        &self,
        addr: &str,
        group: &str,
        command: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        let req = self.request(
            pb::ForwardWriteRequest {
                group: group.to_string(),
                command,
                timeout_ms: timeout.as_millis() as u64,
            },
            Some(timeout + FORWARD_HEADROOM),
        );
        match self.client(addr)?.forward_write(req).await {
            Ok(reply) => decode_result(&reply.into_inner().result, "forwarded write reply"),
            Err(status) => Err(write_failed(addr, group, &status)),
        }
    }

    /// Run a read on the leader at `addr` (the read-index fallback).
    pub async fn forward_read(
        &self,
        addr: &str,
        group: &str,
        query: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        let req = self.request(
            pb::ForwardReadRequest {
                group: group.to_string(),
                query: query.to_vec(),
                timeout_ms: timeout.as_millis() as u64,
            },
            Some(timeout + FORWARD_HEADROOM),
        );
        let reply = self
            .client(addr)?
            .forward_read(req)
            .await
            .map_err(|s| read_failed(addr, group, "reading from leader", s))?;
        decode_result(&reply.into_inner().result, "forwarded read reply")
    }

    /// Ask the leader at `addr` for a read index, in a call of its own (reads use the
    /// coalesced [`PeerClient::read_index`]).
    pub(crate) async fn read_index_once(
        &self,
        addr: &str,
        group: &str,
        lease: bool,
        timeout: Duration,
    ) -> Result<LogId> {
        let req = self.request(
            pb::ReadIndexRequest {
                group: group.to_string(),
                lease,
                timeout_ms: timeout.as_millis() as u64,
            },
            Some(timeout),
        );
        let reply = self
            .client(addr)?
            .read_index(req)
            .await
            .map_err(|s| read_failed(addr, group, "read-index from", s))?;
        decode_result(&reply.into_inner().result, "read-index reply")
    }

    /// Who is at `addr`.
    pub async fn hello(
        &self,
        addr: &str,
        advertise: &str,
        timeout: Duration,
    ) -> Result<pb::HelloReply> {
        let req = self.request(
            pb::HelloRequest {
                node_id: self.node_id,
                cluster_id: self
                    .identity
                    .cluster_id()
                    .map(|c| c.to_string())
                    .unwrap_or_default(),
                advertise_peer: advertise.to_string(),
                distro_protocol: crate::distro::wire::PROTOCOL,
            },
            Some(timeout),
        );
        let reply = self
            .client(addr)?
            .hello(req)
            .await
            .map(|r| r.into_inner())
            .map_err(|s| Error::unavailable(format!("peer {addr}: {}", s.message())))?;
        let whom = format!("node {} at {addr}", reply.node_id);
        if let Err(e) = crate::distro::wire::check_protocol(reply.distro_protocol, &whom) {
            tracing::warn!(error = %e, "a peer answered hello");
        }
        Ok(reply)
    }

    /// Run a cluster operation on the node at `addr` (encoded by the caller).
    pub async fn admin(&self, addr: &str, op: Vec<u8>, timeout: Duration) -> Result<Vec<u8>> {
        let req = self.request(
            pb::AdminRequest {
                op,
                timeout_ms: timeout.as_millis() as u64,
            },
            Some(timeout + FORWARD_HEADROOM),
        );
        match self.client(addr)?.admin(req).await {
            Ok(reply) => decode_result(&reply.into_inner().result, "cluster operation reply"),
            Err(status) if wire::never_sent(&status) || refused_before_handling(status.code()) => {
                Err(Error::unavailable(format!(
                    "node {addr} did not take the operation: {}",
                    status.message()
                )))
            }
            Err(status) => Err(Error::UnknownOutcome(format!(
                "lost contact with node {addr} during the operation ({}: {}); check the cluster status",
                status.code(),
                status.message()
            ))),
        }
    }
}

/// What a failed forwarding call means for its writes: `Unavailable` (not applied, safe
/// to retry) when the call never reached the leader at `addr` or was refused before it
/// ran, otherwise an unknown outcome.
pub(crate) fn write_failed(addr: &str, group: &str, status: &tonic::Status) -> Error {
    if wire::never_sent(status) || refused_before_handling(status.code()) {
        Error::unavailable(format!(
            "leader {addr} of group {group} did not take the write: {}",
            status.message()
        ))
    } else {
        Error::UnknownOutcome(format!(
            "lost contact with leader {addr} of group {group} during the write ({}: {}); it may or may not have been applied",
            status.code(),
            status.message()
        ))
    }
}

/// A read-path failure: never harmful to retry.
fn read_failed(addr: &str, group: &str, what: &str, s: tonic::Status) -> Error {
    Error::unavailable(format!("{what} {addr} (group {group}): {}", s.message()))
}

/// Decode a peer's `Result<T, Error>` reply.
pub fn decode_result<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    codec::decode_message::<Result<T>>(bytes, what)
        .map_err(|e| Error::internal(format!("peer sent an {e}")))?
}
