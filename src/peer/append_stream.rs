//! Pipelined replication: a leader's AppendEntries to one follower of one group over
//! one bidirectional gRPC stream (`AppendStream`), both sides of it.
//!
//! Unary `AppendEntries` costs a new HTTP/2 stream per request (headers both ways, a
//! stream slot, a hop through the channel's buffer task), and openraft's default
//! replication sends a follower its next request only once the previous one is
//! answered. On a stream each request is one DATA frame, and the next one leaves while
//! the follower is still writing the one before: its fsync overlaps the next batch's
//! transfer instead of preceding it.
//!
//! Calling side ([`pipeline`]), one stream per openraft replication session:
//! - the stream opens with the session's first request and ends (half-closed) when
//!   openraft's request stream does; answers come in request order; when the peer ends
//!   the stream (it does when it stops), so does the session, at once, even with
//!   nothing owed: the peer's graceful stop waits until this side lets go;
//! - at most [`WINDOW`] requests are unanswered at a time;
//! - an answer that acknowledges more than its own request (a request without
//!   entries, sent while the one before it was unanswered, ends where that one does)
//!   is not handed to openraft: the answer to the later request is. openraft would
//!   otherwise credit the leader's lease and read-index confirmations with the later
//!   request's sending time, a contact the follower has not confirmed yet
//!   ([`Owed::credited_by`]);
//! - each request must be answered by its deadline ([`append_timeout`], counted from
//!   when it was sent, and never earlier than the one before it, since answers come in
//!   order); a missed deadline ends the session with a network error, as a unary call
//!   would;
//! - a batch whose encoding passes [`BULK_APPEND_BYTES`] does not go on the stream
//!   (which runs on the control lane, beside heartbeats): the session stops reading
//!   requests, waits for the answers it is owed, sends that batch alone as a unary
//!   `AppendEntries` on the bulk lane (cut by bytes as before) and ends; openraft opens
//!   the next session where that one got to;
//! - a peer that answers `UNIMPLEMENTED` (a build from before this method) ends the
//!   session with an error and is sent unary appends for [`RETRY_STREAM_AFTER`].
//!
//! Heartbeats go on a stream of their own (`GroupNetworkFactory::new_heartbeat_client`,
//! [`Line`]): openraft sends them, and the leadership confirmations of linearizable
//! reads, on their own client so that replication never holds them up, one request at
//! a time; the line stays open between them.
//!
//! Receiving side ([`serve`]): the requests are handed to openraft's own pipelined
//! `Raft::stream_append`, which submits each to the group's core as it arrives and
//! yields the results in order; leader contact is noted as for a unary append.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{NetworkError, RPCError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkV2};
use openraft::raft::{AppendEntriesRequest, StreamAppendError, StreamAppendResult};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use crate::codec;
use crate::pb;
use crate::peer::channels::{Lane, BULK_APPEND_BYTES};
use crate::peer::raft_network::{append_timeout, decode_reply, status_to_rpc_error, GroupNetwork};
use crate::raft::node::{Group, GroupCounters};
use crate::raft::types::{LogId, TypeConfig};

/// Requests a leader may have unanswered on one stream.
pub const WINDOW: usize = 32;
/// How long a peer that did not know `AppendStream` gets unary appends before the
/// stream is tried again (it may have been upgraded meanwhile).
pub const RETRY_STREAM_AFTER: Duration = Duration::from_secs(300);

/// What the stream yields to openraft for each request.
type Answer = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

type Opening = BoxFuture<'static, Result<tonic::Response<Streaming<pb::RaftReply>>, Status>>;

/// Peer addresses that answered `AppendStream` with `UNIMPLEMENTED`, and when.
#[derive(Clone, Default)]
pub struct StreamSupport(Arc<Mutex<HashMap<String, Instant>>>);

impl StreamSupport {
    /// Whether appends to `addr` may go on a stream now.
    pub fn usable(&self, addr: &str) -> bool {
        crate::lock(&self.0)
            .get(addr)
            .is_none_or(|since| since.elapsed() >= RETRY_STREAM_AFTER)
    }

    /// What a failed `AppendStream` call to `addr` means for openraft; a peer that does
    /// not know the method (an older build) is noted, so that it gets unary appends
    /// and heartbeats for [`RETRY_STREAM_AFTER`].
    fn opening_failed(&self, addr: &str, status: Status) -> RPCError<TypeConfig> {
        if status.code() == tonic::Code::Unimplemented {
            tracing::info!(
                peer = %addr,
                "peer does not know AppendStream (an older build); replicating to it with unary calls for {RETRY_STREAM_AFTER:?}"
            );
            crate::lock(&self.0).insert(addr.to_string(), Instant::now());
        }
        status_to_rpc_error(status)
    }
}

/// Start an `AppendStream` call to `addr` on the control lane: the sender of its
/// requests (room for `room`) and the call, which resolves once the peer answers with
/// its headers, after it has the first request. No deadline on the call: it lasts as
/// long as its user keeps it; each request has its own.
fn open_call(
    network: &GroupNetwork,
    addr: &str,
    room: usize,
) -> Result<(mpsc::Sender<pb::RaftRequest>, Opening), RPCError<TypeConfig>> {
    let peer = network.peer();
    let mut client = peer.raft(addr, Lane::Control).map_err(|e| {
        RPCError::Unreachable(Unreachable::from_string(format!(
            "bad peer address {addr}: {e}"
        )))
    })?;
    let (tx, rx) = mpsc::channel(room);
    let request = peer.request(ReceiverStream::new(rx), None);
    Ok((
        tx,
        Box::pin(async move { client.append_stream(request).await }),
    ))
}

/// Replicate `input` to `network`'s target over one `AppendStream` call (see the module
/// docs). The answers come in request order; the stream ends after the first refusal
/// or error, or once `input` has ended and every request is answered.
pub(crate) fn pipeline<S>(
    network: GroupNetwork,
    support: StreamSupport,
    input: S,
    option: RPCOption,
) -> BoxStream<'static, Answer>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
{
    let pipe = Pipe {
        addr: network.addr(),
        network,
        support,
        option,
        input: Some(input),
        requests: None,
        opening: None,
        replies: None,
        owed: VecDeque::new(),
        large: None,
        finished: false,
    };
    Box::pin(futures::stream::unfold(pipe, |mut pipe| async move {
        let answer = pipe.next().await?;
        Some((answer, pipe))
    }))
}

/// One replication session's stream.
struct Pipe<S> {
    network: GroupNetwork,
    support: StreamSupport,
    /// The target's address when the session began; the whole session uses it.
    addr: String,
    option: RPCOption,
    /// openraft's requests; `None` once they ended or are no longer read.
    input: Option<S>,
    /// The gRPC request stream; dropped (half-close) when no more requests will follow.
    requests: Option<mpsc::Sender<pb::RaftRequest>>,
    /// The call, until the peer answered with its headers.
    opening: Option<Opening>,
    replies: Option<Streaming<pb::RaftReply>>,
    /// The unanswered requests, oldest first.
    owed: VecDeque<Owed>,
    /// A batch too large for the stream, sent alone once the stream is drained.
    large: Option<AppendEntriesRequest<TypeConfig>>,
    finished: bool,
}

/// A request on the stream, not answered yet.
struct Owed {
    /// Its deadline: [`append_timeout`] from when it was sent, never before the
    /// deadline of the request before it (the answers come in order).
    deadline: tokio::time::Instant,
    /// The log id before its entries, and its last one (`prev` when it has none).
    prev: Option<LogId>,
    last: Option<LogId>,
}

impl Owed {
    /// Whether openraft, handed an acknowledgement up to `matching` while this request
    /// is unanswered, would credit the leader with this request's sending time.
    ///
    /// openraft keeps the sending time of each request of a session and, on an
    /// acknowledgement, takes the latest among the requests the acknowledged log id
    /// reaches: every one whose last log id it reaches, and one it reaches into. That
    /// time is the leader's proof of a quorum's contact (its lease, and the
    /// confirmation a read-index waits for). With one request at a time it is the
    /// acknowledged request's own; on a stream, a request without entries (the
    /// commit-only append that follows a commit) sent while the one before it is
    /// unanswered ends at the same log id as that one, and the earlier answer would
    /// credit the later sending time: a contact the follower has not confirmed.
    fn credited_by(&self, matching: &Option<LogId>) -> bool {
        *matching >= self.last || *matching > self.prev
    }
}

impl<S> Pipe<S>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
{
    async fn next(&mut self) -> Option<Answer> {
        loop {
            if self.finished {
                return None;
            }
            if self.input.is_none() && self.owed.is_empty() {
                self.finished = true;
                let large = self.large.take()?;
                return Some(self.send_alone(large).await);
            }
            let deadline = self.owed.front().map(|o| o.deadline);
            let may_send = self.owed.len() < WINDOW;
            tokio::select! {
                biased;
                reply = next_reply(&mut self.replies) => {
                    if self.owed.is_empty() {
                        // Nothing is owed: the peer ended the stream (it is stopping; its
                        // graceful stop waits for this side to let go) or broke it.
                        self.finished = true;
                        return match reply {
                            Ok(None) => None,
                            Ok(Some(_)) => Some(Err(RPCError::Network(NetworkError::from_string(
                                format!("peer {} sent an answer to no request", self.addr),
                            )))),
                            Err(status) => Some(Err(status_to_rpc_error(status))),
                        };
                    }
                    self.owed.pop_front();
                    let answer = self.answer(reply);
                    match &answer {
                        Ok(Ok(matching)) if self.owed.front().is_some_and(|next| next.credited_by(matching)) => {
                            // Not for openraft yet: the answer to that next request, which
                            // covers at least as much, goes instead (module docs).
                            continue;
                        }
                        Ok(Ok(_)) => {}
                        _ => self.finished = true,
                    }
                    return Some(answer);
                }
                opened = opened(&mut self.opening) => {
                    self.opening = None;
                    match opened {
                        Ok(response) => self.replies = Some(response.into_inner()),
                        Err(status) => {
                            self.finished = true;
                            return Some(Err(self.support.opening_failed(&self.addr, status)));
                        }
                    }
                }
                _ = sleep_until(deadline) => {
                    self.finished = true;
                    return Some(Err(RPCError::Network(NetworkError::from_string(format!(
                        "peer {} did not answer an append of group {} in time ({} unanswered)",
                        self.addr,
                        self.network.group(),
                        self.owed.len()
                    )))));
                }
                request = next_request(&mut self.input), if may_send => match request {
                    Some(rpc) => {
                        if let Err(e) = self.send(rpc) {
                            self.finished = true;
                            return Some(Err(e));
                        }
                    }
                    None => self.stop_reading(),
                },
            }
        }
    }

    /// No more requests go on the stream: half-close it; the answers still come.
    fn stop_reading(&mut self) {
        self.input = None;
        self.requests = None;
    }

    /// Put `rpc` on the stream (opening it first), or keep it aside when it is too
    /// large for the stream.
    fn send(&mut self, rpc: AppendEntriesRequest<TypeConfig>) -> Result<(), RPCError<TypeConfig>> {
        let payload = codec::encode(&rpc);
        if payload.len() > BULK_APPEND_BYTES {
            self.large = Some(rpc);
            self.stop_reading();
            return Ok(());
        }
        if self.requests.is_none() {
            self.open()?;
        }
        let timeout = append_timeout(&self.option, payload.len(), !rpc.entries.is_empty());
        let mut deadline = tokio::time::Instant::now() + timeout;
        if let Some(before) = self.owed.back() {
            deadline = deadline.max(before.deadline);
        }
        let owed = Owed {
            deadline,
            prev: rpc.prev_log_id,
            last: last_log_id(&rpc),
        };
        let request = pb::RaftRequest {
            group: self.network.group().to_string(),
            payload,
        };
        // The channel holds more than WINDOW and at most WINDOW requests are
        // unanswered, so it is never full; it is closed only with the connection.
        let sent = self
            .requests
            .as_ref()
            .map(|tx| tx.try_send(request).is_ok());
        if sent != Some(true) {
            return Err(RPCError::Unreachable(Unreachable::from_string(format!(
                "the append stream to {} closed",
                self.addr
            ))));
        }
        self.owed.push_back(owed);
        Ok(())
    }

    fn open(&mut self) -> Result<(), RPCError<TypeConfig>> {
        let (requests, opening) = open_call(&self.network, &self.addr, WINDOW + 1)?;
        self.opening = Some(opening);
        self.requests = Some(requests);
        Ok(())
    }

    fn answer(&self, reply: Result<Option<pb::RaftReply>, Status>) -> Answer {
        match reply {
            Ok(Some(reply)) => decode_reply(reply),
            Ok(None) => Err(RPCError::Network(NetworkError::from_string(format!(
                "peer {} ended the append stream of group {} with {} answers owed",
                self.addr,
                self.network.group(),
                self.owed.len() + 1
            )))),
            Err(status) => Err(status_to_rpc_error(status)),
        }
    }

    /// A batch too large for the stream, as a unary append on the bulk lane.
    async fn send_alone(&mut self, rpc: AppendEntriesRequest<TypeConfig>) -> Answer {
        let (prev, last) = (rpc.prev_log_id, last_log_id(&rpc));
        let response = self
            .network
            .append_entries(rpc, self.option.clone())
            .await?;
        Ok(response.into_stream_result(prev, last))
    }
}

/// The last log id a request covers: its last entry's, or `prev_log_id` when it has
/// none (as openraft counts it).
fn last_log_id(rpc: &AppendEntriesRequest<TypeConfig>) -> Option<LogId> {
    rpc.entries.last().map(|e| e.log_id).or(rpc.prev_log_id)
}

async fn next_reply(
    replies: &mut Option<Streaming<pb::RaftReply>>,
) -> Result<Option<pb::RaftReply>, Status> {
    match replies {
        Some(replies) => replies.message().await,
        None => std::future::pending().await,
    }
}

async fn opened(
    opening: &mut Option<Opening>,
) -> Result<tonic::Response<Streaming<pb::RaftReply>>, Status> {
    match opening {
        Some(call) => call.await,
        None => std::future::pending().await,
    }
}

async fn next_request<S>(input: &mut Option<S>) -> Option<AppendEntriesRequest<TypeConfig>>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Unpin,
{
    match input {
        Some(input) => input.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A heartbeat client's `AppendStream` to one peer, kept open between heartbeats:
/// openraft's heartbeat worker (the periodic heartbeat and the leadership
/// confirmations of linearizable reads) sends one request per call and the next only
/// after the answer, so a line carries one request at a time, without a new HTTP/2
/// stream for each. Any failure drops the line; the next heartbeat opens another.
#[derive(Clone, Default)]
pub struct Line(Arc<tokio::sync::Mutex<Option<OpenLine>>>);

struct OpenLine {
    requests: mpsc::Sender<pb::RaftRequest>,
    replies: Streaming<pb::RaftReply>,
}

impl Line {
    /// Send each request of `input` on the line, one after the other, each answered
    /// (or failed) before the next; the answers end after the first failure.
    pub(crate) fn send_all<S>(
        &self,
        network: GroupNetwork,
        support: StreamSupport,
        input: S,
        option: RPCOption,
    ) -> BoxStream<'static, Answer>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        let line = self.clone();
        Box::pin(futures::stream::unfold(Some(input), move |input| {
            let (line, network, support, option) = (
                line.clone(),
                network.clone(),
                support.clone(),
                option.clone(),
            );
            async move {
                let mut input = input?;
                let rpc = input.next().await?;
                let answer = line.send(&network, &support, rpc, option).await;
                let more = matches!(answer, Ok(Ok(_))).then_some(input);
                Some((answer, more))
            }
        }))
    }

    async fn send(
        &self,
        network: &GroupNetwork,
        support: &StreamSupport,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Answer {
        let addr = network.addr();
        let payload = codec::encode(&rpc);
        let timeout = append_timeout(&option, payload.len(), !rpc.entries.is_empty());
        let request = pb::RaftRequest {
            group: network.group().to_string(),
            payload,
        };
        let mut open = self.0.lock().await;
        // The line is out of the cell while a request is unanswered on it, and goes back
        // only with its answer: if this call is given up (openraft bounds each
        // heartbeat), the line is dropped with it, so a late answer can never be taken
        // for the answer to the next heartbeat.
        let line = open.take();
        let exchanged =
            tokio::time::timeout(timeout, exchange(line, network, support, &addr, request)).await;
        match exchanged {
            Ok(Ok((reply, line))) => {
                let answer = decode_reply(reply);
                // After a refusal the peer ends the stream: only a success keeps it.
                if matches!(answer, Ok(Ok(_))) {
                    *open = Some(line);
                }
                answer
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(RPCError::Network(NetworkError::from_string(format!(
                "peer {addr} did not answer a heartbeat of group {} within {timeout:?}",
                network.group()
            )))),
        }
    }
}

/// One request and its answer on `open`, or on a new line when there is none or the
/// open one broke (the peer ended it, as it does when stopping); the line it was
/// answered on comes back with the answer. Sending a heartbeat twice is harmless: it
/// carries no entries.
async fn exchange(
    open: Option<OpenLine>,
    network: &GroupNetwork,
    support: &StreamSupport,
    addr: &str,
    request: pb::RaftRequest,
) -> Result<(pb::RaftReply, OpenLine), RPCError<TypeConfig>> {
    if let Some(mut line) = open {
        if line.requests.try_send(request.clone()).is_ok() {
            if let Ok(Some(reply)) = line.replies.message().await {
                return Ok((reply, line));
            }
        }
    }
    let (tx, opening) = open_call(network, addr, 2)?;
    // A new channel with room for two: this cannot fail.
    let _ = tx.try_send(request);
    let response = opening
        .await
        .map_err(|status| support.opening_failed(addr, status))?;
    let mut replies = response.into_inner();
    match replies.message().await {
        Ok(Some(reply)) => Ok((
            reply,
            OpenLine {
                requests: tx,
                replies,
            },
        )),
        Ok(None) => Err(RPCError::Network(NetworkError::from_string(format!(
            "peer {addr} ended the heartbeat stream of group {} without an answer",
            network.group()
        )))),
        Err(status) => Err(status_to_rpc_error(status)),
    }
}

/// The reply stream of an `AppendStream` call.
pub type Replies = std::pin::Pin<Box<dyn Stream<Item = Result<pb::RaftReply, Status>> + Send>>;

/// Serve one leader's pipelined replication of `group` (see the module docs). A
/// request that does not decode, or names another group, ends the input; the reply
/// stream then ends with that error after the answers to the requests before it. The
/// reply stream also ends once `stop` turns true (the server is stopping): the leader
/// sees its session end and retries elsewhere or later.
pub(crate) fn serve(
    group: Arc<Group>,
    first: pb::RaftRequest,
    rest: Streaming<pb::RaftRequest>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Replies {
    GroupCounters::inc(&group.counters.append_streams_served);
    let failure: Arc<Mutex<Option<Status>>> = Arc::default();
    let failed = failure.clone();
    let name = first.group.clone();
    let requests = futures::stream::once(futures::future::ready(Ok(first)))
        .chain(rest)
        .scan((), move |_, message| {
            let request = message.and_then(|m| decode_request(&name, m));
            futures::future::ready(match request {
                Ok(rpc) => Some(rpc),
                Err(status) => {
                    *crate::lock(&failed) = Some(status);
                    None
                }
            })
        });
    let replies = group.raft.stream_append(requests).map(move |item| {
        let result = match item {
            Ok(result) => {
                if !matches!(result, Err(StreamAppendError::HigherVote(_))) {
                    group.note_leader_contact();
                }
                pb::raft_reply::Result::Ok(codec::encode(&result))
            }
            Err(fatal) => pb::raft_reply::Result::Error(fatal.to_string()),
        };
        Ok(pb::RaftReply {
            result: Some(result),
        })
    });
    let failure = futures::stream::once(async move { crate::lock(&failure).take() })
        .filter_map(|status| futures::future::ready(status.map(Err)));
    let stopping = async move {
        let _ = stop.wait_for(|stopping| *stopping).await;
    };
    Box::pin(replies.chain(failure).take_until(stopping))
}

fn decode_request(
    group: &str,
    message: pb::RaftRequest,
) -> Result<AppendEntriesRequest<TypeConfig>, Status> {
    if message.group != group {
        return Err(Status::invalid_argument(format!(
            "an append stream of group {group} carried a request of group {}",
            message.group
        )));
    }
    codec::decode_message(&message.payload, "append-entries request")
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::channels::PeerChannels;
    use crate::peer::raft_network::{AddressBook, GroupNetworkFactory};
    use crate::peer::PeerClient;
    use crate::raft::identity::IdentityCell;
    use crate::raft::types::Vote;
    use openraft::network::RaftNetworkFactory;
    use openraft::BasicNode;

    fn heartbeat() -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new(1, 1),
            prev_log_id: None,
            leader_commit: None,
            entries: vec![],
        }
    }

    /// A server that knows gRPC health only: every `RaftPeer` method is unimplemented
    /// there, as `AppendStream` is on a build from before it. Returns its address and
    /// the methods called on it.
    async fn old_peer() -> (String, Arc<Mutex<Vec<String>>>) {
        use tonic::codegen::http;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let called: Arc<Mutex<Vec<String>>> = Arc::default();
        let record = called.clone();
        let log =
            tower::util::MapRequestLayer::new(move |req: http::Request<tonic::body::Body>| {
                crate::lock(&record).push(req.uri().path().to_string());
                req
            });
        tokio::spawn(
            tonic::transport::Server::builder()
                .layer(log)
                .add_service(health)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (addr, called)
    }

    fn log_id(term: u64, index: u64) -> Option<LogId> {
        use openraft::vote::RaftLeaderIdExt;
        Some(LogId::new(
            <TypeConfig as openraft::RaftTypeConfig>::LeaderId::new_committed(term, 1),
            index,
        ))
    }

    fn owed(prev: Option<LogId>, last: Option<LogId>) -> Owed {
        Owed {
            deadline: tokio::time::Instant::now(),
            prev,
            last,
        }
    }

    /// An answer is held back exactly when openraft would take it for the next
    /// unanswered request's too: the commit-only append after a batch ends where the
    /// batch does, so the batch's answer must not stand for it.
    #[tokio::test]
    async fn an_answer_is_held_back_while_it_would_stand_for_a_later_request() {
        let batch_end = log_id(2, 20);
        // A commit-only append after the batch 11..=20, and two of them in a row.
        assert!(owed(batch_end, batch_end).credited_by(&batch_end));
        // The next batch (21..=30): the answer up to 20 says nothing of it.
        assert!(!owed(batch_end, log_id(2, 30)).credited_by(&batch_end));
        // An acknowledgement reaching into a request (openraft takes its sending time
        // too) or past it.
        assert!(owed(batch_end, log_id(2, 30)).credited_by(&log_id(2, 25)));
        assert!(owed(batch_end, log_id(2, 30)).credited_by(&log_id(3, 31)));
        // A first probe (nothing matched yet) and the empty log.
        assert!(owed(None, None).credited_by(&None));
        assert!(!owed(None, log_id(1, 1)).credited_by(&None));
    }

    /// A follower that reads a session's first two requests and only then answers:
    /// the first only (then ends the stream), or both.
    struct TwoRequestFollower {
        answer_both: bool,
    }

    /// `RaftPeer` for `$peer`: the items given, and every other method refused. (The
    /// whole impl comes from the macro so that `async_trait` sees every method.)
    macro_rules! peer_refusing_the_rest {
        ($peer:ty; { $($given:tt)* } $($method:ident($request:ty) -> $reply:ty;)*) => {
            #[tonic::async_trait]
            impl pb::raft_peer_server::RaftPeer for $peer {
                $($given)*
                $(
                    async fn $method(
                        &self,
                        _: tonic::Request<$request>,
                    ) -> Result<tonic::Response<$reply>, Status> {
                        Err(Status::unimplemented(stringify!($method)))
                    }
                )*
            }
        };
    }

    peer_refusing_the_rest! { TwoRequestFollower; {
        type AppendStreamStream = Replies;
        type DistroSnapshotStream = futures::stream::Empty<Result<pb::DistroReply, Status>>;

        async fn append_stream(
            &self,
            request: tonic::Request<Streaming<pb::RaftRequest>>,
        ) -> Result<tonic::Response<Replies>, Status> {
            let mut requests = request.into_inner();
            let answers = if self.answer_both { 2 } else { 1 };
            let (tx, rx) = mpsc::channel(2);
            tokio::spawn(async move {
                let mut lasts = Vec::new();
                while lasts.len() < 2 {
                    let Ok(Some(message)) = requests.message().await else {
                        return;
                    };
                    let rpc: AppendEntriesRequest<TypeConfig> =
                        codec::decode_message(&message.payload, "append").expect("a request");
                    lasts.push(last_log_id(&rpc));
                }
                for last in lasts.into_iter().take(answers) {
                    let result: StreamAppendResult<TypeConfig> = Ok(last);
                    let reply = pb::RaftReply {
                        result: Some(pb::raft_reply::Result::Ok(codec::encode(&result))),
                    };
                    if tx.send(Ok(reply)).await.is_err() {
                        return;
                    }
                }
                // Dropping `tx` ends the reply stream.
            });
            Ok(tonic::Response::new(Box::pin(ReceiverStream::new(rx))))
        }

        async fn distro_snapshot(
            &self,
            _: tonic::Request<pb::DistroRequest>,
        ) -> Result<tonic::Response<Self::DistroSnapshotStream>, Status> {
            Err(Status::unimplemented("distro_snapshot"))
        }

        async fn install_snapshot(
            &self,
            _: tonic::Request<Streaming<pb::SnapshotChunk>>,
        ) -> Result<tonic::Response<pb::RaftReply>, Status> {
            Err(Status::unimplemented("install_snapshot"))
        }
    }
        append_entries(pb::RaftRequest) -> pb::RaftReply;
        vote(pb::RaftRequest) -> pb::RaftReply;
        pre_vote(pb::RaftRequest) -> pb::RaftReply;
        transfer_leader(pb::RaftRequest) -> pb::RaftReply;
        forward_write(pb::ForwardWriteRequest) -> pb::ForwardWriteReply;
        forward_writes(pb::ForwardWritesRequest) -> pb::ForwardWritesReply;
        forward_read(pb::ForwardReadRequest) -> pb::ForwardReadReply;
        read_index(pb::ReadIndexRequest) -> pb::ReadIndexReply;
        hello(pb::HelloRequest) -> pb::HelloReply;
        admin(pb::AdminRequest) -> pb::AdminReply;
        distro_sync(pb::DistroRequest) -> pb::DistroReply;
        distro_verify(pb::DistroRequest) -> pb::DistroReply;
    }

    /// A batch (entries 11..=20) and the commit-only append after it, both on the
    /// stream before the follower answers either; the answers the replication session
    /// yields to openraft.
    async fn batch_then_commit_only(answer_both: bool) -> Vec<Answer> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(pb::raft_peer_server::RaftPeerServer::new(
                    TwoRequestFollower { answer_both },
                ))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let client = PeerClient::new(1, IdentityCell::new(None), 4 << 20, PeerChannels::new(None));
        let mut factory = GroupNetworkFactory::new("config", client, AddressBook::default());
        let mut network = factory.new_client(2, &BasicNode { addr }).await;
        let batch = AppendEntriesRequest {
            entries: (11..=20)
                .map(|i| crate::raft::types::Entry {
                    log_id: log_id(2, i).unwrap(),
                    payload: openraft::EntryPayload::Blank,
                })
                .collect(),
            prev_log_id: log_id(2, 10),
            ..heartbeat()
        };
        let commit_only = AppendEntriesRequest {
            prev_log_id: log_id(2, 20),
            leader_commit: log_id(2, 20),
            ..heartbeat()
        };
        let requests = futures::stream::iter(vec![batch, commit_only]);
        // With one answer the session must not end for want of requests first.
        let input: BoxStream<'static, _> = if answer_both {
            Box::pin(requests)
        } else {
            Box::pin(requests.chain(futures::stream::pending()))
        };
        let option = RPCOption::new(Duration::from_secs(30));
        let answers = network.stream_append(input, option).await.unwrap();
        tokio::time::timeout(Duration::from_secs(60), answers.collect::<Vec<_>>())
            .await
            .expect("the session ends")
    }

    /// The regression behind a stale LEASE read (docs/FAULTS.md): the batch's answer
    /// must not reach openraft while the commit-only append, which ends at the same log
    /// id, is unanswered.
    #[tokio::test]
    async fn the_batch_answer_does_not_stand_for_the_commit_only_append_after_it() {
        let answers = batch_then_commit_only(false).await;
        assert_eq!(answers.len(), 1, "{answers:?}");
        let error = answers[0]
            .as_ref()
            .expect_err("no acknowledgement")
            .to_string();
        assert!(error.contains("1 answers owed"), "{error}");

        // Answered both: openraft gets one acknowledgement up to 20, the second answer.
        let answers = batch_then_commit_only(true).await;
        assert_eq!(answers.len(), 1, "{answers:?}");
        match &answers[0] {
            Ok(Ok(matching)) => assert_eq!(*matching, log_id(2, 20)),
            other => panic!("expected an acknowledgement, got {other:?}"),
        }
    }

    /// A peer that takes connections and never says a word: the session's requests
    /// must end at their deadlines, not hang replication to it.
    #[tokio::test]
    async fn an_unanswered_append_ends_the_session_at_its_deadline() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let client = PeerClient::new(1, IdentityCell::new(None), 4 << 20, PeerChannels::new(None));
        let mut factory = GroupNetworkFactory::new("config", client, AddressBook::default());
        let mut network = factory.new_client(2, &BasicNode { addr }).await;
        let option = RPCOption::new(Duration::from_millis(300));
        let input = futures::stream::iter(vec![heartbeat()]).chain(futures::stream::pending());
        let mut answers = network.stream_append(input, option).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(30), answers.next())
            .await
            .expect("the deadline ends the wait")
            .expect("an answer");
        let error = answer.expect_err("no answer came").to_string();
        assert!(error.contains("did not answer"), "{error}");
        assert!(answers.next().await.is_none(), "the session ends there");
    }

    #[tokio::test]
    async fn a_peer_without_the_stream_gets_unary_appends_for_a_while() {
        let (addr, called) = old_peer().await;
        let client = PeerClient::new(1, IdentityCell::new(None), 4 << 20, PeerChannels::new(None));
        let mut factory = GroupNetworkFactory::new("config", client, AddressBook::default());
        let node = BasicNode { addr: addr.clone() };
        let mut network = factory.new_client(2, &node).await;
        let option = RPCOption::new(Duration::from_millis(500));

        let input = futures::stream::iter(vec![heartbeat()]);
        let mut answers = network.stream_append(input, option.clone()).await.unwrap();
        let first = answers.next().await.expect("an answer");
        let refused = first.expect_err("the stream is refused").to_string();
        assert!(refused.contains("not implemented"), "{refused}");
        assert!(answers.next().await.is_none(), "the session ends there");
        drop(answers);
        assert!(!network.stream_support().usable(&addr));

        // The next session goes unary (which this peer does not know either).
        let input = futures::stream::iter(vec![heartbeat()]);
        let mut answers = network.stream_append(input, option).await.unwrap();
        let unary = answers.next().await.expect("an answer");
        assert!(unary.is_err(), "{unary:?}");
        drop(answers);
        assert_eq!(
            *crate::lock(&called),
            [
                "/nacosd.v1.RaftPeer/AppendStream",
                "/nacosd.v1.RaftPeer/AppendEntries"
            ]
        );
        // Another address is unaffected.
        assert!(network.stream_support().usable("127.0.0.1:1"));

        // A heartbeat client of another group tries its line, is refused the same way,
        // and then goes unary too.
        let mut factory = GroupNetworkFactory::new(
            "naming",
            PeerClient::new(1, IdentityCell::new(None), 4 << 20, PeerChannels::new(None)),
            AddressBook::default(),
        );
        let mut heartbeats = factory.new_heartbeat_client(2, &node).await;
        let option = RPCOption::new(Duration::from_millis(500));
        for _ in 0..2 {
            let input = futures::stream::iter(vec![heartbeat()]);
            let mut answers = heartbeats
                .stream_append(input, option.clone())
                .await
                .unwrap();
            assert!(answers.next().await.expect("an answer").is_err());
            assert!(answers.next().await.is_none());
        }
        assert!(!heartbeats.stream_support().usable(&addr));
        assert_eq!(
            crate::lock(&called)[2..],
            [
                "/nacosd.v1.RaftPeer/AppendStream",
                "/nacosd.v1.RaftPeer/AppendEntries"
            ]
        );
    }
}
