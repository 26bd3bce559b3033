//! The two gRPC methods of the Nacos protocol on the client port, and the dispatch of
//! a request type to its handler.

use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::api::config::ConfigLimits;
use crate::auth::{Auth, Principal};
use crate::config::NacosSettings;
use crate::conns::ConnInfo;
use crate::distro::Distro;
use crate::error::{Error, Result};
use crate::groups::client::GroupClient;
use crate::groups::config::ConfigFeed;
use crate::groups::naming::NamingFeed;
use crate::nacos::connection::{connection_id, ClientMeta, Connection, Connections};
use crate::nacos::wire::{
    code, BiRequestStream, ConnectionSetupRequest, Incoming, Payload, Reply, RequestService,
    ServerCheckResponse, SetupAckRequest,
};
use crate::nacos::{config, naming};
use crate::raft::node::MultiRaft;

/// How long a request may wait for its connection's setup to be processed.
const SETUP_WAIT: Duration = Duration::from_secs(1);

/// How often a connection checks its idleness and renews its Distro session, at most
/// (a quarter of the idle probe time when that is shorter).
const TICK: Duration = Duration::from_secs(3);

/// The request types served, with the response type each is answered with.
const HANDLERS: &[(&str, &str)] = &[
    ("InstanceRequest", "InstanceResponse"),
    ("PersistentInstanceRequest", "InstanceResponse"),
    ("BatchInstanceRequest", "BatchInstanceResponse"),
    ("SubscribeServiceRequest", "SubscribeServiceResponse"),
    ("ServiceQueryRequest", "QueryServiceResponse"),
    ("ServiceListRequest", "ServiceListResponse"),
    ("ConfigQueryRequest", "ConfigQueryResponse"),
    ("ConfigPublishRequest", "ConfigPublishResponse"),
    ("ConfigRemoveRequest", "ConfigRemoveResponse"),
    (
        "ConfigBatchListenRequest",
        "ConfigChangeBatchListenResponse",
    ),
];

/// The response type of a served request type.
pub fn response_kind(request: &str) -> Option<&'static str> {
    HANDLERS
        .iter()
        .find(|(req, _)| *req == request)
        .map(|(_, resp)| *resp)
}

/// What the Nacos front end is built on.
pub struct Front {
    pub(crate) node_id: u64,
    pub(crate) client: GroupClient,
    pub(crate) distro: Arc<Distro>,
    pub(crate) auth: Arc<Auth>,
    pub(crate) naming_feed: Arc<NamingFeed>,
    pub(crate) config_feed: Arc<ConfigFeed>,
    pub(crate) limits: ConfigLimits,
    /// Idle-connection probing (Nacos's `RuntimeConnectionEjector`).
    settings: NacosSettings,
    pub(crate) conns: Connections,
    /// The last `lastRefTime` handed out (ServiceInfo's must grow).
    pub(crate) last_ref: AtomicU64,
    /// True once the node is shutting down: every bi-stream ends.
    closing: watch::Sender<bool>,
}

impl Front {
    pub fn new(
        node: Arc<MultiRaft>,
        distro: Arc<Distro>,
        auth: Arc<Auth>,
        naming_feed: Arc<NamingFeed>,
        config_feed: Arc<ConfigFeed>,
        limits: ConfigLimits,
        settings: NacosSettings,
    ) -> Arc<Self> {
        Arc::new(Front {
            node_id: node.node_id,
            client: GroupClient::new(node),
            distro,
            auth,
            naming_feed,
            config_feed,
            limits,
            settings,
            conns: Connections::default(),
            last_ref: AtomicU64::new(0),
            closing: watch::channel(false).0,
        })
    }

    /// At shutdown: ask every Nacos client to reconnect to another server
    /// (`ConnectResetRequest` without a server address, which the Java and Go SDKs
    /// answer by switching to the next server in their list), wait up to `wait` for
    /// their answers, then end every bi-stream. The Python SDK cannot parse the
    /// request; it reconnects when the connection closes. Returns how many clients
    /// acknowledged.
    pub async fn reset_all(&self, wait: Duration) -> usize {
        let conns = self.conns.all();
        let asked = conns.iter().map(|c| {
            let reset = Reply::push(
                "ConnectResetRequest",
                serde_json::json!({"serverIp": "", "serverPort": "", "connectionId": c.id}),
            );
            c.request(reset, &self.conns.push_ids, wait)
        });
        let acked = futures::future::join_all(asked)
            .await
            .into_iter()
            .filter(|ok| *ok)
            .count();
        if !conns.is_empty() {
            tracing::info!(
                connections = conns.len(),
                acked,
                "asked the Nacos clients to reconnect elsewhere"
            );
        }
        self.closing.send_replace(true);
        acked
    }

    /// Registered Nacos connections on this node.
    pub fn connections(&self) -> usize {
        self.conns.count()
    }

    /// The caller, from the `accessToken` header: a nacosd token (the same as the
    /// `authorization: Bearer` of `nacosd.v1`). With auth off, anyone.
    async fn caller(&self, inc: &Incoming) -> Result<Principal> {
        if !self.auth.enabled() {
            return Ok(Principal::Anyone);
        }
        let mut md = tonic::metadata::MetadataMap::new();
        if let Some(token) = inc.header("accesstoken").filter(|t| !t.is_empty()) {
            let v = format!("Bearer {token}")
                .parse()
                .map_err(|_| Error::Unauthenticated("accessToken is not a valid token".into()))?;
            md.insert("authorization", v);
        }
        let mut req = tonic::Request::new(());
        *req.metadata_mut() = md;
        self.auth.authenticate(&req).await
    }

    /// Answer one unary request.
    async fn handle(&self, info: &ConnInfo, inc: Incoming) -> Reply {
        if inc.kind == "ServerCheckRequest" {
            if !self.distro.ready() {
                return Reply::error(
                    code::INVALID_SERVER_STATUS,
                    "Server is starting,please try later.",
                );
            }
            return Reply::ok(
                "ServerCheckResponse",
                ServerCheckResponse {
                    connection_id: connection_id(info, self.node_id),
                    support_ability_negotiation: true,
                },
            );
        }
        let Some(conn) = self.conns.get_or_wait(info.id, SETUP_WAIT).await else {
            return Reply::error(code::UN_REGISTER, "Connection is unregistered.");
        };
        conn.touch();
        if inc.kind == "HealthCheckRequest" {
            return Reply::ok("HealthCheckResponse", serde_json::json!({}));
        }
        let Some(kind) = response_kind(&inc.kind) else {
            return Reply::error(
                code::NO_HANDLER,
                format!("RequestHandler Not Found: {} is not served", inc.kind),
            );
        };
        let answer = match self.caller(&inc).await {
            Ok(caller) => self.dispatch(&conn, &caller, kind, &inc).await,
            Err(e) => Err(e),
        };
        answer.unwrap_or_else(|e| Reply::from_error(kind, &e))
    }

    async fn dispatch(
        &self,
        conn: &Arc<Connection>,
        caller: &Principal,
        kind: &'static str,
        inc: &Incoming,
    ) -> Result<Reply> {
        match inc.kind.as_str() {
            "InstanceRequest" => naming::instance(self, conn, caller, inc.parse()?).await,
            "PersistentInstanceRequest" => naming::persistent(self, caller, inc.parse()?).await,
            "BatchInstanceRequest" => naming::batch(self, conn, caller, inc.parse()?).await,
            "SubscribeServiceRequest" => naming::subscribe(self, conn, caller, inc.parse()?).await,
            "ServiceQueryRequest" => naming::query(self, caller, inc.parse()?).await,
            "ServiceListRequest" => naming::list(self, caller, inc.parse()?).await,
            "ConfigQueryRequest" => config::query(self, caller, inc.parse()?).await,
            "ConfigPublishRequest" => config::publish(self, caller, inc.parse()?).await,
            "ConfigRemoveRequest" => config::remove(self, caller, inc.parse()?).await,
            "ConfigBatchListenRequest" => config::listen(self, conn, caller, inc.parse()?).await,
            _ => Ok(Reply::error(
                code::NO_HANDLER,
                format!("{kind}: no handler"),
            )),
        }
    }

    /// Serve one bi-stream: the setup, the acks of pushes, the connection's liveness.
    async fn serve_stream(
        self: Arc<Self>,
        info: ConnInfo,
        mut inbound: Streaming<Payload>,
        push_tx: mpsc::Sender<Payload>,
    ) {
        let mut conn: Option<Arc<Connection>> = None;
        let detect_after = self.settings.idle_probe_after;
        let mut tick = tokio::time::interval(TICK.min(detect_after / 4));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (eject_tx, mut eject_rx) = mpsc::channel::<()>(1);
        let mut probing = false;
        let closed = info.closed();
        tokio::pin!(closed);
        let mut closing = self.closing.subscribe();
        loop {
            tokio::select! {
                _ = &mut closed => break,
                _ = closing.wait_for(|c| *c) => break,
                _ = eject_rx.recv() => {
                    tracing::info!(connection = ?conn.as_ref().map(|c| &c.id), "Nacos connection ejected: no answer to a client detection");
                    break;
                }
                msg = inbound.next() => {
                    let Some(Ok(payload)) = msg else { break };
                    let inc = match Incoming::from_payload(payload) {
                        Ok(inc) => inc,
                        Err(_) => continue,
                    };
                    if inc.kind == "ConnectionSetupRequest" {
                        if conn.is_none() {
                            conn = Some(self.setup(&info, &inc, &push_tx));
                        }
                    } else if let Some(c) = &conn {
                        // Anything else a client sends on the stream answers a push.
                        c.ack(inc.request_id(), inc.ack_ok());
                    }
                }
                _ = tick.tick() => {
                    let Some(c) = &conn else { continue };
                    if let Err(e) = c.renew_session(&self.distro) {
                        tracing::info!(connection = %c.id, error = %e, "the session of a Nacos connection is lost; closing it");
                        break;
                    }
                    if !probing && c.idle() >= detect_after {
                        probing = true;
                        let (c, front, eject) = (c.clone(), self.clone(), eject_tx.clone());
                        tokio::spawn(async move {
                            let probe = Reply::push("ClientDetectionRequest", serde_json::json!({}));
                            let timeout = front.settings.probe_timeout;
                            if !c.request(probe, &front.conns.push_ids, timeout).await {
                                let _ = eject.send(()).await;
                            }
                        });
                    } else if probing && c.idle() < detect_after {
                        probing = false;
                    }
                }
            }
        }
        if conn.is_some() {
            self.conns.unregister(info.id, &self.distro);
        }
    }

    fn setup(
        &self,
        info: &ConnInfo,
        inc: &Incoming,
        push_tx: &mpsc::Sender<Payload>,
    ) -> Arc<Connection> {
        let req: ConnectionSetupRequest = inc.parse().unwrap_or_default();
        let meta = ClientMeta {
            client_ip: inc.client_ip.clone(),
            version: req.client_version,
            tenant: req.tenant,
            labels: req.labels,
        };
        let id = connection_id(info, self.node_id);
        tracing::debug!(connection = %id, version = %meta.version, module = ?meta.labels.get("module"), "Nacos connection set up");
        let conn = self.conns.register(info.id, id, meta, push_tx.clone());
        conn.touch();
        if req.ability_table.is_some() {
            let ack = SetupAckRequest {
                ability_table: [("supportPersistentInstanceByGrpc".to_string(), true)].into(),
            };
            conn.send(Reply::push("SetupAckRequest", ack));
        }
        conn
    }
}

/// The tonic side: `Request/request` and `BiRequestStream/requestBiStream`.
#[derive(Clone)]
pub struct NacosGrpc(pub Arc<Front>);

fn conn_info<T>(req: &Request<T>) -> std::result::Result<ConnInfo, Status> {
    req.extensions()
        .get::<ConnInfo>()
        .cloned()
        .ok_or_else(|| Status::internal("no connection information"))
}

#[tonic::async_trait]
impl RequestService for NacosGrpc {
    async fn request(
        &self,
        req: Request<Payload>,
    ) -> std::result::Result<Response<Payload>, Status> {
        let info = conn_info(&req)?;
        let reply = match Incoming::from_payload(req.into_inner()) {
            Ok(inc) => self.0.handle(&info, inc).await,
            Err(e) => e,
        };
        Ok(Response::new(reply.to_payload()))
    }
}

type PayloadStream = Pin<Box<dyn Stream<Item = std::result::Result<Payload, Status>> + Send>>;

#[tonic::async_trait]
impl BiRequestStream for NacosGrpc {
    #[allow(non_camel_case_types)]
    type requestBiStreamStream = PayloadStream;

    async fn request_bi_stream(
        &self,
        req: Request<Streaming<Payload>>,
    ) -> std::result::Result<Response<Self::requestBiStreamStream>, Status> {
        let info = conn_info(&req)?;
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(self.0.clone().serve_stream(info, req.into_inner(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(Ok))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_request_has_a_response_type_python_knows() {
        // nacos-sdk-python's GrpcUtils.remote_type (v3.2.0): any other type is refused.
        let python = [
            "InstanceResponse",
            "BatchInstanceResponse",
            "SubscribeServiceResponse",
            "QueryServiceResponse",
            "ServiceListResponse",
            "ConfigQueryResponse",
            "ConfigPublishResponse",
            "ConfigRemoveResponse",
            "ConfigChangeBatchListenResponse",
        ];
        for (req, resp) in HANDLERS {
            assert!(python.contains(resp), "{req} -> {resp}");
            assert_eq!(response_kind(req), Some(*resp));
        }
        assert_eq!(response_kind("ConnectResetRequest"), None);
        assert_eq!(response_kind("ServerLoaderInfoRequest"), None);
    }
}
