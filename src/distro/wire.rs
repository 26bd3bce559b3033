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
//!
//! Every envelope names the Distro [`PROTOCOL`] version its payload is written in, and
//! so does Hello. bincode carries no field names: a message of another version would
//! decode as garbage or not at all, so a receiver refuses a call of another version
//! with `FAILED_PRECONDITION` before decoding it, and a caller refuses such a reply.
//! During a rolling upgrade that changes the protocol, ephemeral data then stops
//! flowing between the old and the new nodes (each side says so in its log and in
//! `nacosd_distro_protocol_refusals_total`) instead of being corrupted; it flows again
//! once every node runs the new version.

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

/// The version of the Distro messages in this file. Bump it with any change to how
/// [`SyncItem`], [`OwnedList`], [`SessionData`] or a reply encodes.
pub const PROTOCOL: u32 = 1;

/// The version an envelope's `protocol` field names: 0 is what a node sent before the
/// field existed, and those nodes spoke version 1.
pub fn protocol_of(field: u32) -> u32 {
    if field == 0 {
        1
    } else {
        field
    }
}

/// What every protocol refusal says (see [`is_protocol_refusal`]).
const REFUSAL: &str = "speaks Distro protocol version";

/// Status metadata a receiver adds to a protocol refusal, with its own version: the
/// caller tells it apart from the other `FAILED_PRECONDITION`s of the peer port (an
/// admission refusal while a node has no cluster identity yet, which passes).
const REFUSAL_HEADER: &str = "nacosd-distro-protocol";

/// `Ok` when `field` (an envelope's or a Hello's) names this node's [`PROTOCOL`];
/// otherwise the reason, naming `whom`.
pub fn check_protocol(field: u32, whom: &str) -> Result<()> {
    let theirs = protocol_of(field);
    if theirs == PROTOCOL {
        return Ok(());
    }
    Err(Error::FailedPrecondition(format!(
        "{whom} {REFUSAL} {theirs} and this node version {PROTOCOL}; \
         ephemeral data does not flow between them until both run the same nacosd release"
    )))
}

/// Whether `e` is a refusal for another protocol version, by the peer or by this node.
pub fn is_protocol_refusal(e: &Error) -> bool {
    matches!(e, Error::FailedPrecondition(m) if m.contains(REFUSAL))
}

/// Sessions per snapshot chunk.
const SNAPSHOT_CHUNK: usize = 1000;

fn request(payload: Vec<u8>) -> pb::DistroRequest {
    pb::DistroRequest {
        payload,
        protocol: PROTOCOL,
    }
}

fn reply<T: Serialize>(result: &Result<T>) -> pb::DistroReply {
    pb::DistroReply {
        result: codec::encode(result),
        protocol: PROTOCOL,
    }
}

/// The result in a reply from `addr`, refused when it is of another protocol version.
fn decode_reply<T: serde::de::DeserializeOwned>(
    addr: &str,
    reply: &pb::DistroReply,
    what: &str,
) -> Result<T> {
    check_protocol(reply.protocol, &format!("the peer at {addr}"))?;
    decode_result(&reply.result, what)
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
    let message = format!("{what} to {addr}: {}: {}", s.code(), s.message());
    if s.metadata().get(REFUSAL_HEADER).is_some() {
        // Refused for its protocol version: sending it again changes nothing until
        // one of the two nodes is upgraded, and callers tell this apart.
        return Error::FailedPrecondition(message);
    }
    Error::unavailable(message)
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
    decode_reply(addr, &r.into_inner(), "distro sync reply")
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
    decode_reply(addr, &r.into_inner(), "distro verify reply")
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
                    decode_reply(addr, &chunk, "distro snapshot chunk")?;
                total += sessions.len();
                apply(sessions);
            }
        }
    }
}

// ----- receiving side (called by `peer::server` after admission) -----

/// Refuse a request from node `sender` written in another protocol version.
pub fn admit_protocol(req: &pb::DistroRequest, sender: Option<NodeId>) -> Result<(), Status> {
    let whom = match sender {
        Some(id) => format!("node {id}"),
        None => "the calling node".to_string(),
    };
    check_protocol(req.protocol, &whom).map_err(|e| {
        tracing::debug!(error = %e, "refused a distro call");
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert(REFUSAL_HEADER, PROTOCOL.into());
        Status::with_metadata(tonic::Code::FailedPrecondition, e.to_string(), metadata)
    })
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protocol_check_takes_an_unset_field_for_version_1_and_refuses_others() {
        assert_eq!(
            PROTOCOL, 1,
            "a new version needs a new test of what it refuses"
        );
        assert!(check_protocol(0, "node 2").is_ok());
        assert!(check_protocol(1, "node 2").is_ok());
        match check_protocol(2, "node 2") {
            Err(e @ Error::FailedPrecondition(_)) => {
                assert!(is_protocol_refusal(&e));
                let m = e.to_string();
                assert!(m.contains("node 2 speaks Distro protocol version 2"), "{m}");
                assert!(m.contains("this node version 1"), "{m}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_reply_of_another_version_is_refused_before_decoding() {
        let ok = reply(&Ok(vec![7u64]));
        assert_eq!(ok.protocol, PROTOCOL);
        let ids: Vec<u64> = decode_reply("peer:1", &ok, "test reply").unwrap();
        assert_eq!(ids, vec![7]);
        let newer = pb::DistroReply {
            result: b"not bincode".to_vec(),
            protocol: PROTOCOL + 1,
        };
        let err = decode_reply::<Vec<u64>>("peer:1", &newer, "test reply").unwrap_err();
        assert!(
            matches!(&err, Error::FailedPrecondition(m) if m.contains("the peer at peer:1")),
            "{err:?}"
        );
    }

    #[test]
    fn a_protocol_refusal_is_told_apart_from_other_failures() {
        let req = pb::DistroRequest {
            payload: vec![],
            protocol: PROTOCOL + 1,
        };
        let status = admit_protocol(&req, Some(3)).unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        let refused = failed("p:1", "distro sync", status);
        assert!(is_protocol_refusal(&refused), "{refused:?}");
        assert!(admit_protocol(&request(vec![]), Some(3)).is_ok());
        // The peer port's admission refusal (no cluster identity yet) has the same
        // code, and is retried like an unreachable peer.
        let no_identity = Status::failed_precondition("node 2 has no cluster identity yet");
        let admission = failed("p:1", "distro sync", no_identity);
        assert!(!is_protocol_refusal(&admission), "{admission:?}");
        assert!(
            matches!(admission, Error::Unavailable { .. }),
            "{admission:?}"
        );
        let down = failed("p:1", "distro sync", Status::unavailable("conn refused"));
        assert!(!is_protocol_refusal(&down), "{down:?}");
    }
}
