//! The peer gRPC service: the receiving end of the Raft RPCs of every group, of
//! snapshot streams, and of forwarded writes, reads and read-index requests.
//!
//! Handlers are thin: find the group, decode, hand to openraft or to the consistency
//! layer, encode. A forwarded write is only ever proposed here if this node leads the
//! group; it is never forwarded again, so requests cannot loop between nodes.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::consistency;
use crate::error::Error;
use crate::pb;
use crate::pb::raft_peer_server::RaftPeer;
use crate::raft::node::{Group, MultiRaft};
use crate::raft::snapshot::SnapshotFile;
use crate::raft::types::{Command, SnapshotMeta, Vote};

pub struct PeerService {
    node: Arc<MultiRaft>,
}

impl PeerService {
    pub fn new(node: Arc<MultiRaft>) -> Self {
        PeerService { node }
    }

    fn group(&self, name: &str) -> Result<&Arc<Group>, Status> {
        self.node
            .group(name)
            .map_err(|e| Status::not_found(e.to_string()))
    }
}

fn ok_reply<T: Serialize>(v: &T) -> Result<Response<pb::RaftReply>, Status> {
    let bytes = bincode::serialize(v).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(pb::RaftReply {
        result: Some(pb::raft_reply::Result::Ok(bytes)),
    }))
}

fn err_reply(e: impl std::fmt::Display) -> Result<Response<pb::RaftReply>, Status> {
    Ok(Response::new(pb::RaftReply {
        result: Some(pb::raft_reply::Result::Error(e.to_string())),
    }))
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, Status> {
    bincode::deserialize(bytes)
        .map_err(|e| Status::invalid_argument(format!("undecodable {what}: {e}")))
}

fn encode_result<T: Serialize>(r: &Result<T, Error>) -> Result<Vec<u8>, Status> {
    bincode::serialize(r).map_err(|e| Status::internal(e.to_string()))
}

fn timeout_of(ms: u64) -> Duration {
    // Bounded so a bogus value cannot pin a task forever.
    Duration::from_millis(ms.clamp(1, 120_000))
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(
        &self,
        req: Request<pb::RaftRequest>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        let req = req.into_inner();
        let group = self.group(&req.group)?;
        let rpc = decode(&req.payload, "append-entries request")?;
        match group.raft.append_entries(rpc).await {
            Ok(resp) => ok_reply(&resp),
            Err(e) => err_reply(e),
        }
    }

    async fn vote(&self, req: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        let req = req.into_inner();
        let group = self.group(&req.group)?;
        let rpc = decode(&req.payload, "vote request")?;
        match group.raft.vote(rpc).await {
            Ok(resp) => ok_reply(&resp),
            Err(e) => err_reply(e),
        }
    }

    async fn pre_vote(
        &self,
        req: Request<pb::RaftRequest>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        let req = req.into_inner();
        let group = self.group(&req.group)?;
        let rpc = decode(&req.payload, "pre-vote request")?;
        match group.raft.pre_vote(rpc).await {
            Ok(resp) => ok_reply(&resp),
            Err(e) => err_reply(e),
        }
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        let mut stream = req.into_inner();
        let first = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let header = first
            .header
            .clone()
            .ok_or_else(|| Status::invalid_argument("first snapshot chunk has no header"))?;
        let group = self.group(&header.group)?.clone();
        let vote: Vote = decode(&header.vote, "snapshot vote")?;
        let meta: SnapshotMeta = decode(&header.meta, "snapshot meta")?;

        let tmp = group.snapshots.temp_path("incoming");
        let received = receive_snapshot(&tmp, first, &mut stream, header.size).await;
        if let Err(status) = received {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(status);
        }
        let snapshot = openraft::type_config::alias::SnapshotOf::<
            crate::raft::types::TypeConfig,
            SnapshotFile,
        > {
            meta,
            snapshot: SnapshotFile { path: tmp.clone() },
        };
        let result = group.raft.install_full_snapshot(vote, snapshot).await;
        // Installed snapshots are renamed into place; anything left is unused.
        let _ = tokio::fs::remove_file(&tmp).await;
        match result {
            Ok(resp) => ok_reply(&resp),
            Err(e) => err_reply(e),
        }
    }

    async fn forward_write(
        &self,
        req: Request<pb::ForwardWriteRequest>,
    ) -> Result<Response<pb::ForwardWriteReply>, Status> {
        let req = req.into_inner();
        let command: Command = decode(&req.command, "forwarded command")?;
        let result = consistency::write_on_leader(
            &self.node,
            &req.group,
            command,
            timeout_of(req.timeout_ms),
        )
        .await;
        Ok(Response::new(pb::ForwardWriteReply {
            result: encode_result(&result)?,
        }))
    }

    async fn forward_read(
        &self,
        req: Request<pb::ForwardReadRequest>,
    ) -> Result<Response<pb::ForwardReadReply>, Status> {
        let req = req.into_inner();
        let result = consistency::read_on_leader(
            &self.node,
            &req.group,
            &req.query,
            timeout_of(req.timeout_ms),
        )
        .await;
        Ok(Response::new(pb::ForwardReadReply {
            result: encode_result(&result)?,
        }))
    }

    async fn read_index(
        &self,
        req: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexReply>, Status> {
        let req = req.into_inner();
        let result = consistency::read_index_on_leader(
            &self.node,
            &req.group,
            req.lease,
            timeout_of(req.timeout_ms),
        )
        .await;
        Ok(Response::new(pb::ReadIndexReply {
            result: encode_result(&result)?,
        }))
    }
}

/// Write the streamed snapshot to `tmp`, checking size and checksum.
async fn receive_snapshot(
    tmp: &std::path::Path,
    first: pb::SnapshotChunk,
    stream: &mut Streaming<pb::SnapshotChunk>,
    expected_size: u64,
) -> Result<(), Status> {
    use tokio::io::AsyncWriteExt;
    let io_err = |e: std::io::Error| Status::internal(format!("writing snapshot: {e}"));
    // tokio's file runs each write on the blocking pool: a large snapshot never stalls
    // a runtime worker that also serves Raft and client traffic.
    let mut file = tokio::io::BufWriter::with_capacity(
        1 << 20,
        tokio::fs::File::create(tmp).await.map_err(io_err)?,
    );
    let mut crc = crc32fast::Hasher::new();
    let mut size = 0u64;
    let mut chunk = first;
    loop {
        crc.update(&chunk.data);
        size += chunk.data.len() as u64;
        if size > expected_size {
            return Err(Status::invalid_argument(
                "snapshot stream longer than announced",
            ));
        }
        file.write_all(&chunk.data).await.map_err(io_err)?;
        if chunk.done {
            if size != expected_size {
                return Err(Status::invalid_argument(format!(
                    "snapshot stream ended after {size} of {expected_size} bytes"
                )));
            }
            if crc.finalize() != chunk.crc32 {
                return Err(Status::data_loss("snapshot stream checksum mismatch"));
            }
            break;
        }
        chunk = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("snapshot stream ended without done"))??;
    }
    file.flush().await.map_err(io_err)?;
    file.into_inner().sync_all().await.map_err(io_err)?;
    Ok(())
}
