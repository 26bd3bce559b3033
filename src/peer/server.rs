//! The receiving side of the peer protocol: Raft RPCs of every group, snapshot streams,
//! forwarded writes and reads, read-index requests, Hello and cluster operations, and
//! the Distro messages of the AP side (handled by `distro::wire`).
//!
//! Admission comes first. Every call but Hello must carry this node's cluster id
//! ([`PeerService::admit`]): a call from another cluster, or any call while this node
//! has no identity yet (an empty data directory that is waiting to bootstrap or to be
//! added back), is refused with FAILED_PRECONDITION before it reaches openraft. That is
//! what keeps a wiped node from voting or acknowledging entries under its old id.
//!
//! Then two safety rules of the Raft layer that openraft leaves to the application:
//! - after a restart this node grants no vote for one leader lease
//!   ([`MultiRaft::vote_hold_remaining`]): it may have acknowledged the old leader's
//!   heartbeats just before going down, and that leader may still be serving LEASE
//!   reads on the strength of them;
//! - every accepted AppendEntries from the current leader is noted
//!   ([`Group::note_leader_contact`]), which is how a follower knows it is in touch with
//!   a quorum (readiness, `Status`).
//!
//! Handlers are thin otherwise: find the group, decode, hand to openraft or to the
//! consistency layer, encode. A forwarded write is only ever proposed here if this node
//! leads the group; it is never forwarded again, so requests cannot loop between nodes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::cluster::Cluster;
use crate::codec;
use crate::consistency;
use crate::distro::{wire as distro_wire, Distro};
use crate::error::Error;
use crate::pb;
use crate::pb::raft_peer_server::RaftPeer;
use crate::peer::append_stream;
use crate::peer::raft_network::SNAPSHOT_STALL;
use crate::peer::wire::Sender;
use crate::raft::node::{Group, GroupCounters, MultiRaft};
use crate::raft::snapshot::SnapshotFile;
use crate::raft::types::{SnapshotMeta, TypeConfig, Vote};

pub struct PeerService {
    cluster: Arc<Cluster>,
    distro: Arc<Distro>,
    node: Arc<MultiRaft>,
    /// True once the server is stopping: long-lived streams (a leader's append
    /// stream) end then, or the graceful stop would wait for them to its deadline
    /// while this node, cut off from new calls, runs for election.
    stop: watch::Receiver<bool>,
    /// When each kind of refusal was last logged, per sender: refusals repeat with every
    /// heartbeat, the log should say it once in a while.
    refusal_log: Mutex<HashMap<(Option<u64>, &'static str), Instant>>,
}

fn ok_reply<T: Serialize>(v: &T) -> Result<Response<pb::RaftReply>, Status> {
    Ok(Response::new(pb::RaftReply {
        result: Some(pb::raft_reply::Result::Ok(codec::encode(v))),
    }))
}

fn err_reply(e: impl std::fmt::Display) -> Result<Response<pb::RaftReply>, Status> {
    Ok(Response::new(pb::RaftReply {
        result: Some(pb::raft_reply::Result::Error(e.to_string())),
    }))
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, Status> {
    codec::decode_message(bytes, what).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn timeout_of(ms: u64) -> Duration {
    // Bounded so a bogus value cannot pin a task forever.
    Duration::from_millis(ms.clamp(1, 120_000))
}

impl PeerService {
    pub fn new(cluster: Arc<Cluster>, distro: Arc<Distro>, stop: watch::Receiver<bool>) -> Self {
        PeerService {
            node: cluster.node.clone(),
            cluster,
            distro,
            stop,
            refusal_log: Mutex::default(),
        }
    }

    fn group(&self, name: &str) -> Result<&Arc<Group>, Status> {
        self.node
            .group(name)
            .map_err(|e| Status::not_found(e.to_string()))
    }

    /// Admit a call only from a node of this node's cluster, and only once this node
    /// has an identity itself.
    fn admit<T>(&self, req: &Request<T>, what: &'static str) -> Result<Sender, Status> {
        let sender = Sender::of(req.metadata());
        let refusal = match (self.node.identity().cluster_id(), sender.cluster) {
            (Some(mine), Some(theirs)) if mine == theirs => return Ok(sender),
            (None, _) => format!(
                "node {} has no cluster identity yet (its data directory is new or was lost; it is waiting to bootstrap or to be added back) and takes no part in {what}",
                self.node.node_id
            ),
            (Some(mine), Some(theirs)) => format!(
                "node {} belongs to cluster {mine}; refusing {what} from node {} of cluster {theirs}",
                self.node.node_id,
                sender.node.map(|n| n.to_string()).unwrap_or_else(|| "?".into()),
            ),
            (Some(mine), None) => format!(
                "node {} belongs to cluster {mine}; refusing {what} from node {} which has no cluster identity",
                self.node.node_id,
                sender.node.map(|n| n.to_string()).unwrap_or_else(|| "?".into()),
            ),
        };
        GroupCounters::inc(&self.node.counters.peer_calls_refused);
        self.log_refusal(sender.node, what, &refusal);
        Err(Status::failed_precondition(refusal))
    }

    fn log_refusal(&self, from: Option<u64>, what: &'static str, message: &str) {
        let mut log = crate::lock(&self.refusal_log);
        let now = Instant::now();
        let due = log
            .get(&(from, what))
            .is_none_or(|t| now.duration_since(*t) > Duration::from_secs(30));
        if due {
            log.insert((from, what), now);
            tracing::warn!(from = ?from, "{message}");
        }
    }

    /// Refuse votes while the post-restart hold lasts.
    fn vote_allowed(&self, group: &Group) -> Result<(), String> {
        match self.node.vote_hold_remaining(group) {
            None => Ok(()),
            Some(left) => Err(format!(
                "node {} restarted recently and grants no vote in group {} for another {} ms (a leader may still hold a lease it granted before the restart)",
                self.node.node_id,
                group.name,
                left.as_millis()
            )),
        }
    }
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(
        &self,
        req: Request<pb::RaftRequest>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        self.admit(&req, "replication")?;
        let req = req.into_inner();
        let group = self.group(&req.group)?;
        let rpc: openraft::raft::AppendEntriesRequest<TypeConfig> =
            decode(&req.payload, "append-entries request")?;
        match group.raft.append_entries(rpc).await {
            Ok(resp) => {
                if !matches!(resp, openraft::raft::AppendEntriesResponse::HigherVote(_)) {
                    group.note_leader_contact();
                }
                ok_reply(&resp)
            }
            Err(e) => err_reply(e),
        }
    }

    type AppendStreamStream = append_stream::Replies;

    async fn append_stream(
        &self,
        req: Request<Streaming<pb::RaftRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        self.admit(&req, "replication")?;
        let mut incoming = req.into_inner();
        // The first request names the group of the whole stream.
        let Some(first) = incoming.message().await? else {
            return Ok(Response::new(Box::pin(futures::stream::empty())));
        };
        let group = self.group(&first.group)?.clone();
        Ok(Response::new(append_stream::serve(
            group,
            first,
            incoming,
            self.stop.clone(),
        )))
    }

    async fn vote(&self, req: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        self.admit(&req, "elections")?;
        let req = req.into_inner();
        let group = self.group(&req.group)?;
        if let Err(why) = self.vote_allowed(group) {
            return err_reply(why);
        }
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
        self.admit(&req, "elections")?;
        let req = req.into_inner();
        let group = self.group(&req.group)?;
        if let Err(why) = self.vote_allowed(group) {
            return err_reply(why);
        }
        let rpc = decode(&req.payload, "pre-vote request")?;
        match group.raft.pre_vote(rpc).await {
            Ok(resp) => ok_reply(&resp),
            Err(e) => err_reply(e),
        }
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::RaftRequest>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        self.admit(&req, "leader transfer")?;
        let req = req.into_inner();
        let group = self.group(&req.group)?;
        let rpc = decode(&req.payload, "transfer-leader request")?;
        match group.raft.handle_transfer_leader(rpc).await {
            Ok(resp) => ok_reply(&resp),
            Err(e) => err_reply(e),
        }
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        self.admit(&req, "snapshot installation")?;
        let mut stream = req.into_inner();
        let first = next_chunk(&mut stream)
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
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
        let snapshot = openraft::type_config::alias::SnapshotOf::<TypeConfig, SnapshotFile> {
            meta,
            snapshot: SnapshotFile { path: tmp.clone() },
        };
        let result = group.raft.install_full_snapshot(vote, snapshot).await;
        // Installed snapshots are renamed into place; anything left is unused.
        let _ = tokio::fs::remove_file(&tmp).await;
        match result {
            Ok(resp) => {
                group.note_leader_contact();
                ok_reply(&resp)
            }
            Err(e) => err_reply(e),
        }
    }

    async fn forward_write(
        &self,
        req: Request<pb::ForwardWriteRequest>,
    ) -> Result<Response<pb::ForwardWriteReply>, Status> {
        self.admit(&req, "forwarded writes")?;
        let req = req.into_inner();
        let command = decode(&req.command, "forwarded command")?;
        let result = consistency::write_on_leader(
            &self.node,
            &req.group,
            command,
            timeout_of(req.timeout_ms),
        )
        .await;
        Ok(Response::new(pb::ForwardWriteReply {
            result: codec::encode(&result),
        }))
    }

    async fn forward_writes(
        &self,
        req: Request<pb::ForwardWritesRequest>,
    ) -> Result<Response<pb::ForwardWritesReply>, Status> {
        self.admit(&req, "forwarded writes")?;
        let req = req.into_inner();
        // Proposed in one hand-off to the group's core (`write_many_on_leader`), in the
        // order they came; a command that does not decode is answered on its own.
        let mut results: Vec<Option<Vec<u8>>> = Vec::with_capacity(req.writes.len());
        let mut proposed = Vec::with_capacity(req.writes.len());
        for w in req.writes {
            match codec::decode_message(&w.command, "forwarded command") {
                Ok(command) => {
                    proposed.push((command, timeout_of(w.timeout_ms)));
                    results.push(None);
                }
                Err(e) => {
                    let refused: Result<Vec<u8>, Error> = Err(Error::invalid(e.to_string()));
                    results.push(Some(codec::encode(&refused)));
                }
            }
        }
        let mut answers = consistency::write_many_on_leader(&self.node, &req.group, proposed)
            .await
            .into_iter();
        let results = results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    codec::encode(&answers.next().unwrap_or_else(|| {
                        Err(Error::internal("fewer answers than forwarded writes"))
                    }))
                })
            })
            .collect();
        Ok(Response::new(pb::ForwardWritesReply { results }))
    }

    async fn forward_read(
        &self,
        req: Request<pb::ForwardReadRequest>,
    ) -> Result<Response<pb::ForwardReadReply>, Status> {
        self.admit(&req, "forwarded reads")?;
        let req = req.into_inner();
        let result = consistency::read_on_leader(
            &self.node,
            &req.group,
            req.query,
            timeout_of(req.timeout_ms),
        )
        .await;
        Ok(Response::new(pb::ForwardReadReply {
            result: codec::encode(&result),
        }))
    }

    async fn read_index(
        &self,
        req: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexReply>, Status> {
        self.admit(&req, "read-index requests")?;
        let req = req.into_inner();
        let result = consistency::read_index_on_leader(
            &self.node,
            &req.group,
            req.lease,
            timeout_of(req.timeout_ms),
        )
        .await;
        Ok(Response::new(pb::ReadIndexReply {
            result: codec::encode(&result),
        }))
    }

    async fn hello(
        &self,
        req: Request<pb::HelloRequest>,
    ) -> Result<Response<pb::HelloReply>, Status> {
        let req = req.into_inner();
        Ok(Response::new(
            crate::cluster::bootstrap::hello(&self.cluster, &req).await,
        ))
    }

    async fn admin(
        &self,
        req: Request<pb::AdminRequest>,
    ) -> Result<Response<pb::AdminReply>, Status> {
        // A node asking to be admitted has no identity yet: the operation itself
        // decides what such a caller may do.
        let sender = Sender::of(req.metadata());
        let mine = self.node.identity().cluster_id();
        if let (Some(theirs), Some(mine)) = (sender.cluster, mine) {
            if theirs != mine {
                return Err(self.admit(&req, "cluster operations").unwrap_err());
            }
        }
        let req = req.into_inner();
        let result: Result<Vec<u8>, Error> =
            match codec::decode_message(&req.op, "cluster operation") {
                Ok(op) => {
                    crate::cluster::admin::run_here(
                        &self.cluster,
                        sender,
                        op,
                        timeout_of(req.timeout_ms),
                    )
                    .await
                }
                Err(e) => Err(e),
            };
        Ok(Response::new(pb::AdminReply {
            result: codec::encode(&result),
        }))
    }

    async fn distro_sync(
        &self,
        req: Request<pb::DistroRequest>,
    ) -> Result<Response<pb::DistroReply>, Status> {
        let sender = self.admit(&req, "distro sync")?;
        let req = req.into_inner();
        distro_wire::admit_protocol(&req, sender.node)?;
        Ok(Response::new(distro_wire::serve_sync(
            &self.distro,
            sender.node,
            &req.payload,
        )))
    }

    async fn distro_verify(
        &self,
        req: Request<pb::DistroRequest>,
    ) -> Result<Response<pb::DistroReply>, Status> {
        let sender = self.admit(&req, "distro verify")?;
        let req = req.into_inner();
        distro_wire::admit_protocol(&req, sender.node)?;
        Ok(Response::new(distro_wire::serve_verify(
            &self.distro,
            sender.node,
            &req.payload,
        )))
    }

    type DistroSnapshotStream = distro_wire::SnapshotStream;

    async fn distro_snapshot(
        &self,
        req: Request<pb::DistroRequest>,
    ) -> Result<Response<Self::DistroSnapshotStream>, Status> {
        let sender = self.admit(&req, "distro snapshot")?;
        distro_wire::admit_protocol(req.get_ref(), sender.node)?;
        Ok(Response::new(distro_wire::serve_snapshot(&self.distro)))
    }
}

/// The next chunk of a snapshot stream, or a failure when none comes within
/// [`SNAPSHOT_STALL`].
async fn next_chunk(
    stream: &mut Streaming<pb::SnapshotChunk>,
) -> Result<Option<pb::SnapshotChunk>, Status> {
    match tokio::time::timeout(SNAPSHOT_STALL, stream.next()).await {
        Ok(Some(chunk)) => chunk.map(Some),
        Ok(None) => Ok(None),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "snapshot stream stalled: no data for {SNAPSHOT_STALL:?}"
        ))),
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
        chunk = next_chunk(stream)
            .await?
            .ok_or_else(|| Status::invalid_argument("snapshot stream ended without done"))?;
    }
    file.flush().await.map_err(io_err)?;
    file.into_inner().sync_all().await.map_err(io_err)?;
    Ok(())
}
