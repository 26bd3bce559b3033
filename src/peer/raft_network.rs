//! openraft's network for one group: how a group's leader or candidate reaches the same
//! group on a peer, over [`PeerClient`].
//!
//! Append batches are capped by bytes, not only by count: a batch whose encoded size
//! passes [`APPEND_BATCH_BYTES`] is cut to its longest prefix under the cap (always at
//! least one entry) and reported to openraft as a partial success, so a follower behind
//! a run of large embedded-DB entries receives them in pieces instead of the same
//! oversized batch timing out forever. An append's deadline grows with its size
//! ([`append_timeout`]); heartbeats and small appends keep openraft's short one and
//! travel on the control lane, bulk batches and snapshots on the bulk lane
//! (`peer::channels`).
//!
//! Replication itself goes over a pipelined stream per session (`peer::append_stream`);
//! heartbeats, large batches and peers of an older build use the unary append below.
//!
//! A snapshot transfer has no overall deadline: it lasts as long as it makes progress.
//! Each chunk must be taken by the transport within [`SNAPSHOT_STALL`], the receiver
//! applies the same bound between chunks, and HTTP/2 keep-alive pings detect a dead
//! connection while the receiver restores.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Read;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{stream_append_sequential, RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec;
use crate::pb;
use crate::peer::append_stream::{self, Line, StreamSupport};
use crate::peer::channels::{Lane, BULK_APPEND_BYTES};
use crate::peer::client::PeerClient;
use crate::raft::snapshot::SnapshotFile;
use crate::raft::types::{NodeId, TypeConfig, Vote};

/// Bytes of snapshot data per streamed chunk.
pub const SNAPSHOT_CHUNK: usize = 1 << 20;
/// Longest pause allowed in a snapshot transfer before it is abandoned (and retried).
pub const SNAPSHOT_STALL: Duration = Duration::from_secs(30);
/// Encoded bytes of log entries in one append request (at least one entry is always sent).
pub const APPEND_BATCH_BYTES: usize = 8 << 20;
/// Throughput an append's deadline assumes at worst, beyond its base allowance.
const APPEND_FLOOR_BYTES_PER_SEC: u64 = 8 << 20;

/// The deadline of an append carrying `bytes` of entries: openraft's own (about a
/// heartbeat interval) for heartbeats, else at least a second (a follower's fsync may
/// be slow) plus the time the bytes take at a pessimistic throughput.
pub fn append_timeout(option: &RPCOption, bytes: usize, has_entries: bool) -> Duration {
    if !has_entries {
        return option.soft_ttl();
    }
    let transfer = Duration::from_millis(bytes as u64 * 1000 / APPEND_FLOOR_BYTES_PER_SEC);
    option.soft_ttl().max(Duration::from_secs(1)) + transfer
}

/// The current peer address of each member of one group, as its latest membership
/// says. openraft keeps a replication stream (and the address it was created with)
/// across membership changes, so a member whose address changed (`SetNodes`: a moved
/// node, a replaced machine) would be sent to at its old address forever; every RPC
/// looks the address up here instead. Kept current by `raft::node` from the group's
/// metrics.
#[derive(Clone, Default)]
pub struct AddressBook(Arc<RwLock<BTreeMap<NodeId, String>>>);

impl AddressBook {
    /// Replace the book with the membership's addresses.
    pub fn update(&self, members: impl IntoIterator<Item = (NodeId, String)>) {
        let fresh: BTreeMap<NodeId, String> = members.into_iter().collect();
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = fresh;
    }

    fn get(&self, id: NodeId) -> Option<String> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }
}

/// openraft's network factory for one group.
pub struct GroupNetworkFactory {
    group: String,
    client: PeerClient,
    book: AddressBook,
    /// Peers that do not know the append stream (shared by this group's networks).
    support: StreamSupport,
}

impl GroupNetworkFactory {
    pub fn new(group: &str, client: PeerClient, book: AddressBook) -> Self {
        GroupNetworkFactory {
            group: group.to_string(),
            client,
            book,
            support: StreamSupport::default(),
        }
    }

    fn network(&self, target: NodeId, node: &BasicNode, streaming: bool) -> GroupNetwork {
        GroupNetwork {
            group: self.group.clone(),
            target,
            initial_addr: node.addr.clone(),
            book: self.book.clone(),
            client: self.client.clone(),
            streaming,
            support: self.support.clone(),
            line: Line::default(),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for GroupNetworkFactory {
    type Network = GroupNetwork;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        self.network(target, node, true)
    }

    /// Heartbeats are single requests, one at a time: they go on a line of their own
    /// (`append_stream::Line`), never behind a replication batch.
    async fn new_heartbeat_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        self.network(target, node, false)
    }
}

/// Connection from one group's leader/candidate to one peer.
#[derive(Clone)]
pub struct GroupNetwork {
    group: String,
    target: NodeId,
    /// The address the stream was created with; the book's, when it has one, wins.
    initial_addr: String,
    book: AddressBook,
    client: PeerClient,
    /// Replication sessions (pipelined on a stream each), or heartbeats (one request
    /// at a time on a kept-open `line`).
    streaming: bool,
    support: StreamSupport,
    line: Line,
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    codec::encode(v)
}

/// How a failed call looks to openraft: a peer that is down, refusing, of another
/// cluster or not yet admitted is `Unreachable` (openraft backs off); anything else a
/// network error.
pub(crate) fn status_to_rpc_error(s: tonic::Status) -> RPCError<TypeConfig> {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::FailedPrecondition | tonic::Code::Unknown => {
            RPCError::Unreachable(Unreachable::new(&s))
        }
        _ => RPCError::Network(NetworkError::new(&s)),
    }
}

/// Decode a peer's reply into openraft's response type.
pub(crate) fn decode_reply<T: DeserializeOwned>(
    reply: pb::RaftReply,
) -> Result<T, RPCError<TypeConfig>> {
    match reply.result {
        Some(pb::raft_reply::Result::Ok(bytes)) => codec::decode_message(&bytes, "raft reply")
            .map_err(|e| RPCError::Network(NetworkError::new(&e))),
        Some(pb::raft_reply::Result::Error(msg)) => {
            Err(RPCError::Unreachable(Unreachable::from_string(msg)))
        }
        None => Err(RPCError::Network(NetworkError::from_string("empty reply"))),
    }
}

/// Which RPC of the peer service a [`GroupNetwork::call`] makes.
#[derive(Clone, Copy)]
enum RaftCall {
    Append,
    Vote,
    PreVote,
    TransferLeader,
}

impl GroupNetwork {
    /// The group this network replicates.
    pub(crate) fn group(&self) -> &str {
        &self.group
    }

    /// This node's peer client.
    pub(crate) fn peer(&self) -> &PeerClient {
        &self.client
    }

    #[cfg(test)]
    pub(crate) fn stream_support(&self) -> &StreamSupport {
        &self.support
    }

    /// The target's address now.
    pub(crate) fn addr(&self) -> String {
        self.book
            .get(self.target)
            .unwrap_or_else(|| self.initial_addr.clone())
    }

    async fn call<T: DeserializeOwned>(
        &self,
        call: RaftCall,
        payload: Vec<u8>,
        lane: Lane,
        timeout: Duration,
    ) -> Result<T, RPCError<TypeConfig>> {
        let addr = self.addr();
        let mut client = self.client.raft(&addr, lane).map_err(|e| {
            RPCError::Unreachable(Unreachable::from_string(format!(
                "bad peer address {addr}: {e}"
            )))
        })?;
        let req = self.client.request(
            pb::RaftRequest {
                group: self.group.clone(),
                payload,
            },
            Some(timeout),
        );
        let reply = match call {
            RaftCall::Append => client.append_entries(req).await,
            RaftCall::Vote => client.vote(req).await,
            RaftCall::PreVote => client.pre_vote(req).await,
            RaftCall::TransferLeader => client.transfer_leader(req).await,
        }
        .map_err(status_to_rpc_error)?;
        decode_reply(reply.into_inner())
    }
}

/// The longest prefix of `rpc`'s entries whose encoded size stays under
/// [`APPEND_BATCH_BYTES`] (at least one entry); `None` when all of them fit.
fn cut_batch(rpc: &mut AppendEntriesRequest<TypeConfig>) -> Option<usize> {
    let mut total = 0usize;
    for (i, e) in rpc.entries.iter().enumerate() {
        total = total.saturating_add(codec::encoded_len(e));
        if total > APPEND_BATCH_BYTES && i > 0 {
            rpc.entries.truncate(i);
            return Some(i);
        }
    }
    None
}

impl RaftNetworkV2<TypeConfig> for GroupNetwork {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let cut = cut_batch(&mut rpc);
        let last_sent = rpc.entries.last().map(|e| e.log_id);
        let payload = encode(&rpc);
        let lane = if payload.len() > BULK_APPEND_BYTES {
            Lane::Bulk
        } else {
            Lane::Control
        };
        let timeout = append_timeout(&option, payload.len(), !rpc.entries.is_empty());
        let resp: AppendEntriesResponse<TypeConfig> =
            self.call(RaftCall::Append, payload, lane, timeout).await?;
        Ok(match (cut, resp) {
            // Only a prefix was sent: tell openraft how far it got, so it sends the rest.
            (Some(_), AppendEntriesResponse::Success) => {
                AppendEntriesResponse::PartialSuccess(last_sent)
            }
            (_, other) => other,
        })
    }

    /// A replication session on one `AppendStream` call (`peer::append_stream`), a
    /// heartbeat on the client's kept-open line, or openraft's one-request-at-a-time
    /// unary appends for a peer that does not know the stream.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<
            BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>,
            RPCError<TypeConfig>,
        >,
    >
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        if !self.support.usable(&self.addr()) {
            return stream_append_sequential(self, input, option);
        }
        let answers = if self.streaming {
            append_stream::pipeline(self.clone(), self.support.clone(), input, option)
        } else {
            self.line
                .send_all(self.clone(), self.support.clone(), input, option)
        };
        Box::pin(std::future::ready(Ok(answers)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(
            RaftCall::Vote,
            encode(&rpc),
            Lane::Control,
            option.soft_ttl(),
        )
        .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(
            RaftCall::PreVote,
            encode(&rpc),
            Lane::Control,
            option.soft_ttl(),
        )
        .await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(
            RaftCall::TransferLeader,
            encode(&req),
            Lane::Control,
            option.soft_ttl(),
        )
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotFile>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let to_streaming = |e: RPCError<TypeConfig>| match e {
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            RPCError::Network(n) => StreamingError::Network(n),
            other => StreamingError::Network(NetworkError::new(&other)),
        };
        let network_err = |e: &dyn std::fmt::Display| {
            StreamingError::Network(NetworkError::from_string(e.to_string()))
        };
        let header = pb::SnapshotHeader {
            group: self.group.clone(),
            vote: encode(&vote),
            meta: encode(&snapshot.meta),
            size: snapshot.snapshot.size().map_err(|e| network_err(&e))?,
        };
        let path = snapshot.snapshot.path.clone();
        let chunk_size = option
            .snapshot_chunk_size()
            .unwrap_or(SNAPSHOT_CHUNK)
            .clamp(4096, SNAPSHOT_CHUNK);
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::SnapshotChunk>(4);

        // Read the file on a blocking thread and feed the gRPC request stream. A chunk the
        // transport does not take within SNAPSHOT_STALL ends the transfer.
        let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut file = std::io::BufReader::new(std::fs::File::open(&path)?);
            let mut crc = crc32fast::Hasher::new();
            let mut header = Some(header);
            loop {
                let mut buf = vec![0u8; chunk_size];
                let mut filled = 0;
                while filled < chunk_size {
                    let n = file.read(&mut buf[filled..])?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                buf.truncate(filled);
                crc.update(&buf);
                let done = filled < chunk_size;
                let chunk = pb::SnapshotChunk {
                    header: header.take(),
                    data: buf,
                    done,
                    crc32: if done { crc.clone().finalize() } else { 0 },
                };
                let sent = tokio::runtime::Handle::current()
                    .block_on(async { tokio::time::timeout(SNAPSHOT_STALL, tx.send(chunk)).await });
                match sent {
                    Ok(Ok(())) if !done => {}
                    Ok(Ok(())) | Ok(Err(_)) => return Ok(()),
                    Err(_) => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("snapshot transfer stalled for {SNAPSHOT_STALL:?}"),
                        ))
                    }
                }
            }
        });

        let mut client = self
            .client
            .raft(&self.addr(), Lane::Bulk)
            .map_err(|e| network_err(&e))?;
        // No deadline: the transfer lasts while it makes progress (see the module docs).
        let req = self
            .client
            .request(tokio_stream::wrappers::ReceiverStream::new(rx), None);
        let target = self.target;
        let call = client.install_snapshot(req);
        let reply = tokio::select! {
            closed = cancel => {
                reader.abort();
                return Err(StreamingError::Closed(closed));
            }
            r = call => r,
        };
        match reader.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(network_err(&e)),
            Err(e) => return Err(network_err(&e)),
        }
        let reply = reply.map_err(|s| to_streaming(status_to_rpc_error(s)))?;
        tracing::debug!(target, group = %self.group, "snapshot sent");
        decode_reply(reply.into_inner()).map_err(to_streaming)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::{Command, Entry};

    fn entry(index: u64, bytes: usize) -> Entry {
        let cmd = Command {
            timestamp_ms: 0,
            op: "put".into(),
            key: String::new(),
            payload: vec![0u8; bytes],
        };
        Entry {
            log_id: openraft::testing::log_id::<TypeConfig>(1, 1, index),
            payload: openraft::EntryPayload::Normal(cmd),
        }
    }

    fn request(sizes: &[usize]) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new(1, 1),
            prev_log_id: None,
            leader_commit: None,
            entries: sizes
                .iter()
                .enumerate()
                .map(|(i, s)| entry(i as u64 + 1, *s))
                .collect(),
        }
    }

    #[test]
    fn batches_are_cut_by_bytes_but_never_below_one_entry() {
        let mb = 1 << 20;
        let mut small = request(&[100, 200, 300]);
        assert_eq!(cut_batch(&mut small), None);
        assert_eq!(small.entries.len(), 3);

        // 64 entries of 1 MiB: only the first ones that fit in APPEND_BATCH_BYTES go.
        let mut big = request(&[mb; 64]);
        let kept = cut_batch(&mut big).expect("cut");
        assert_eq!(kept, APPEND_BATCH_BYTES / mb - 1);
        assert_eq!(big.entries.len(), kept);

        // One entry larger than the cap still goes, alone.
        let mut huge = request(&[APPEND_BATCH_BYTES + 1, 10]);
        assert_eq!(cut_batch(&mut huge), Some(1));
        assert_eq!(huge.entries.len(), 1);
    }

    #[test]
    fn an_append_deadline_grows_with_its_size() {
        let opt = RPCOption::new(Duration::from_millis(200));
        assert_eq!(append_timeout(&opt, 0, false), opt.soft_ttl());
        let small = append_timeout(&opt, 1000, true);
        assert!(small >= Duration::from_secs(1));
        let big = append_timeout(&opt, 64 << 20, true);
        assert!(big >= small + Duration::from_secs(7), "{big:?}");
    }
}
