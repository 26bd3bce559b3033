//! The Distro part of the peer protocol, both sides: messages, the calls a node makes,
//! and what a node does when it receives them.
//!
//! Messages are bincode (through [`crate::codec`]) inside the `DistroRequest` /
//! `DistroReply` envelopes of `proto/nacosd/v1/peer.proto`, served by the peer port's
//! `RaftPeer` service after the same cluster-identity admission as every other peer call.
//! They travel on the bulk lane: a verify or a snapshot of a large registry is
//! megabytes, and Raft heartbeats on the control lane must never queue behind it.
//!
//! A sync may only carry sessions its sender owns: a receiver refuses a batch in which
//! a session names another owner than the calling node.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio_stream::StreamExt;
use tonic::Status;

use crate::codec;
use crate::config::NodeId;
use crate::distro::store::{OwnedList, SessionData, SessionDelta, SessionId};
use crate::distro::Distro;
use crate::error::{Error, Result};
use crate::pb;
use crate::peer::channels::Lane;
use crate::peer::client::decode_result;
use crate::peer::PeerClient;

/// One session's whole state, what changed in it since a revision the receiver
/// confirmed, or its deletion by its owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SyncItem {
    Change(SessionData),
    Delta(SessionDelta),
    Delete {
        id: SessionId,
        owner: NodeId,
        /// The owner's revision clock when it sent the deletion.
        revision: u64,
    },
}

impl SyncItem {
    fn owner(&self) -> NodeId {
        match self {
            SyncItem::Change(d) => d.owner,
            SyncItem::Delta(d) => d.owner,
            SyncItem::Delete { owner, .. } => *owner,
        }
    }
}

/// Sessions per snapshot chunk.
const SNAPSHOT_CHUNK: usize = 1000;

fn request(payload: Vec<u8>) -> pb::DistroRequest {
    pb::DistroRequest { payload }
}

fn reply<T: Serialize>(result: &Result<T>) -> pb::DistroReply {
    pb::DistroReply {
        result: codec::encode(result),
    }
}

fn client(
    peers: &PeerClient,
    addr: &str,
) -> Result<pb::raft_peer_client::RaftPeerClient<tonic::transport::Channel>> {
    peers
        .raft(addr, Lane::Bulk)
        .map_err(|e| Error::unavailable(format!("bad peer address {addr}: {e}")))
}

fn failed(addr: &str, what: &str, s: Status) -> Error {
    Error::unavailable(format!("{what} to {addr}: {}: {}", s.code(), s.message()))
}

// ----- calling side -----

/// Send sessions (owned by this node) to the peer at `addr`. Returns the sessions
/// whose delta the peer could not apply (it needs them whole).
pub async fn send_sync(
    peers: &PeerClient,
    addr: &str,
    items: &[SyncItem],
    timeout: Duration,
) -> Result<Vec<SessionId>> {
    let req = peers.request(request(codec::encode(items)), Some(timeout));
    let r = client(peers, addr)?
        .distro_sync(req)
        .await
        .map_err(|s| failed(addr, "distro sync", s))?;
    decode_result(&r.into_inner().result, "distro sync reply")
}

/// Tell the peer at `addr` which sessions this node owns; returns those it asks for.
pub async fn send_verify(
    peers: &PeerClient,
    addr: &str,
    list: &OwnedList,
    timeout: Duration,
) -> Result<Vec<SessionId>> {
    let req = peers.request(request(codec::encode(list)), Some(timeout));
    let r = client(peers, addr)?
        .distro_verify(req)
        .await
        .map_err(|s| failed(addr, "distro verify", s))?;
    decode_result(&r.into_inner().result, "distro verify reply")
}

/// Fetch the peer's whole ephemeral data, chunk by chunk, handing each to `apply`.
/// `stall`: the longest wait for one chunk. Returns the number of sessions received.
pub async fn fetch_snapshot(
    peers: &PeerClient,
    addr: &str,
    stall: Duration,
    mut apply: impl FnMut(Vec<SessionData>),
) -> Result<usize> {
    let req = peers.request(request(vec![]), None);
    let mut stream = tokio::time::timeout(stall, client(peers, addr)?.distro_snapshot(req))
        .await
        .map_err(|_| Error::unavailable(format!("distro snapshot from {addr}: no answer")))?
        .map_err(|s| failed(addr, "distro snapshot", s))?
        .into_inner();
    let mut total = 0;
    loop {
        let next = tokio::time::timeout(stall, stream.next())
            .await
            .map_err(|_| Error::unavailable(format!("distro snapshot from {addr} stalled")))?;
        match next {
            None => return Ok(total),
            Some(Err(s)) => return Err(failed(addr, "distro snapshot", s)),
            Some(Ok(chunk)) => {
                let sessions: Vec<SessionData> =
                    decode_result(&chunk.result, "distro snapshot chunk")?;
                total += sessions.len();
                apply(sessions);
            }
        }
    }
}

// ----- receiving side (called by `peer::server` after admission) -----

/// Apply a sync batch from node `sender`.
pub fn serve_sync(distro: &Distro, sender: Option<NodeId>, payload: &[u8]) -> pb::DistroReply {
    let result = codec::decode_message::<Vec<SyncItem>>(payload, "distro sync").and_then(|items| {
        if let Some(bad) = items.iter().find(|i| Some(i.owner()) != sender) {
            return Err(Error::invalid(format!(
                "a sync from node {sender:?} carries a session owned by node {}; a node only syncs its own sessions",
                bad.owner()
            )));
        }
        Ok(distro.receive_sync(items))
    });
    reply(&result)
}

/// Check an owner's list of sessions from node `sender`.
pub fn serve_verify(distro: &Distro, sender: Option<NodeId>, payload: &[u8]) -> pb::DistroReply {
    let result = codec::decode_message::<OwnedList>(payload, "distro verify").and_then(|list| {
        if Some(list.owner) != sender {
            return Err(Error::invalid(format!(
                "a verify from node {sender:?} lists the sessions of node {}",
                list.owner
            )));
        }
        Ok(distro.receive_verify(&list))
    });
    reply(&result)
}

pub type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::DistroReply, Status>> + Send>>;

/// Every session this node holds, in chunks.
pub fn serve_snapshot(distro: &Arc<Distro>) -> SnapshotStream {
    let all = distro.snapshot();
    let chunks: Vec<pb::DistroReply> = all
        .chunks(SNAPSHOT_CHUNK)
        .map(|c| reply(&Ok(c.to_vec())))
        .collect();
    Box::pin(tokio_stream::iter(chunks.into_iter().map(Ok)))
}
