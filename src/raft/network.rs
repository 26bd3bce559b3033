//! The Raft network: how a group's openraft node reaches the same group on a peer.
//!
//! [`PeerChannels`] keeps one tonic channel (one HTTP/2 connection) per peer address,
//! shared by every group and by write/read forwarding; groups multiplex over it by
//! naming themselves in each request. Channels are created lazily and reconnect by
//! themselves; the address is a `host:port` that may be a DNS name, resolved on each
//! (re)connect, so a peer that comes back with a new IP under the same name is reached
//! without any membership change (Nacos issues #10514, #12504).
//!
//! Raft payloads are bincode-encoded openraft messages inside the protobuf envelope
//! (see `proto/nacosd/v1/peer.proto` for why).

use std::collections::HashMap;
use std::future::Future;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use crate::pb;
use crate::pb::raft_peer_client::RaftPeerClient;
use crate::raft::snapshot::SnapshotFile;
use crate::raft::types::{NodeId, TypeConfig, Vote};

/// Bytes of snapshot data per streamed chunk.
pub const SNAPSHOT_CHUNK: usize = 1 << 20;

/// One lazily connected channel per peer address, shared by all groups.
#[derive(Clone)]
pub struct PeerChannels {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// Largest message sent or accepted (see `Config::peer_message_limit`); snapshots
    /// are streamed in chunks and never need one message.
    max_message: usize,
}

impl PeerChannels {
    pub fn new(max_message: usize) -> Self {
        PeerChannels {
            channels: Arc::default(),
            max_message,
        }
    }

    /// The channel to `addr` (`host:port`), created on first use.
    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ch) = map.get(addr) {
            return Ok(ch.clone());
        }
        let ch = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .initial_connection_window_size(Some(8 << 20))
            .initial_stream_window_size(Some(4 << 20))
            .connect_lazy();
        map.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    pub fn client(&self, addr: &str) -> Result<RaftPeerClient<Channel>, tonic::transport::Error> {
        Ok(RaftPeerClient::new(self.channel(addr)?)
            .max_decoding_message_size(self.max_message)
            .max_encoding_message_size(self.max_message))
    }
}

/// openraft's network factory for one group.
pub struct GroupNetworkFactory {
    group: Arc<str>,
    channels: PeerChannels,
}

impl GroupNetworkFactory {
    pub fn new(group: &str, channels: PeerChannels) -> Self {
        GroupNetworkFactory {
            group: group.into(),
            channels,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for GroupNetworkFactory {
    type Network = GroupNetwork;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        GroupNetwork {
            group: self.group.clone(),
            target,
            addr: node.addr.clone(),
            client: self.channels.client(&node.addr),
        }
    }
}

/// Connection from one group's leader/candidate to one peer.
pub struct GroupNetwork {
    group: Arc<str>,
    target: NodeId,
    addr: String,
    client: Result<RaftPeerClient<Channel>, tonic::transport::Error>,
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, RPCError<TypeConfig>> {
    bincode::serialize(v).map_err(|e| RPCError::Network(NetworkError::new(&e)))
}

fn status_to_rpc_error(s: tonic::Status) -> RPCError<TypeConfig> {
    match s.code() {
        // Peer down, refusing connections, or not started yet: back off.
        tonic::Code::Unavailable | tonic::Code::Unknown => {
            RPCError::Unreachable(Unreachable::new(&s))
        }
        _ => RPCError::Network(NetworkError::new(&s)),
    }
}

impl GroupNetwork {
    fn client(&self) -> Result<RaftPeerClient<Channel>, RPCError<TypeConfig>> {
        match &self.client {
            Ok(c) => Ok(c.clone()),
            Err(e) => Err(RPCError::Unreachable(Unreachable::from_string(format!(
                "bad peer address {}: {e}",
                self.addr
            )))),
        }
    }

    fn request(&self, payload: Vec<u8>, option: &RPCOption) -> tonic::Request<pb::RaftRequest> {
        let mut req = tonic::Request::new(pb::RaftRequest {
            group: self.group.to_string(),
            payload,
        });
        req.set_timeout(option.hard_ttl());
        req
    }
}

/// Decode a peer's reply into openraft's response type.
pub fn decode_reply<T: DeserializeOwned>(reply: pb::RaftReply) -> Result<T, RPCError<TypeConfig>> {
    match reply.result {
        Some(pb::raft_reply::Result::Ok(bytes)) => {
            bincode::deserialize(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))
        }
        Some(pb::raft_reply::Result::Error(msg)) => {
            Err(RPCError::Unreachable(Unreachable::from_string(msg)))
        }
        None => Err(RPCError::Network(NetworkError::from_string("empty reply"))),
    }
}

impl RaftNetworkV2<TypeConfig> for GroupNetwork {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let req = self.request(encode(&rpc)?, &option);
        let reply = self
            .client()?
            .append_entries(req)
            .await
            .map_err(status_to_rpc_error)?;
        decode_reply(reply.into_inner())
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let req = self.request(encode(&rpc)?, &option);
        let reply = self
            .client()?
            .vote(req)
            .await
            .map_err(status_to_rpc_error)?;
        decode_reply(reply.into_inner())
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let req = self.request(encode(&rpc)?, &option);
        let reply = self
            .client()?
            .pre_vote(req)
            .await
            .map_err(status_to_rpc_error)?;
        decode_reply(reply.into_inner())
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
        let header = pb::SnapshotHeader {
            group: self.group.to_string(),
            vote: encode(&vote).map_err(to_streaming)?,
            meta: encode(&snapshot.meta).map_err(to_streaming)?,
            size: snapshot
                .snapshot
                .size()
                .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?,
        };
        let path = snapshot.snapshot.path.clone();
        let chunk_size = option
            .snapshot_chunk_size()
            .unwrap_or(SNAPSHOT_CHUNK)
            .max(4096);
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::SnapshotChunk>(4);

        // Read the file on a blocking thread and feed the gRPC request stream.
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
                if tx.blocking_send(chunk).is_err() || done {
                    return Ok(());
                }
            }
        });

        let mut client = self.client().map_err(to_streaming)?;
        let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        req.set_timeout(option.hard_ttl().max(Duration::from_secs(60)));
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
            Ok(Err(e)) => return Err(StreamingError::Network(NetworkError::new(&e))),
            Err(e) => return Err(StreamingError::Network(NetworkError::new(&e))),
        }
        let reply = reply.map_err(|s| to_streaming(status_to_rpc_error(s)))?;
        tracing::debug!(target, "snapshot sent");
        decode_reply(reply.into_inner()).map_err(to_streaming)
    }
}
