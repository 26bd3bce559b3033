//! Running a node: bind the three ports, start the groups, serve, shut down.
//!
//! [`start`] takes already-bound listeners so tests can bind port 0 and learn the
//! addresses before the cluster's member list is written; [`run`] is what the binary
//! calls. Shutdown order: stop accepting client and peer requests (letting in-flight
//! ones finish), then shut each Raft group down, which flushes its pending I/O.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::rt::watch::WatchReceiver;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::codegen::http;
use tonic::transport::Server;

use crate::api::cluster::ClusterApi;
use crate::api::config::{ConfigApi, ConfigLimits};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::pb;
use crate::raft::group::GroupRegistry;
use crate::raft::node::MultiRaft;
use crate::raft::peer_service::PeerService;

/// Services served on the client port, as advertised by reflection.
pub const CLIENT_SERVICES: &[&str] = &[
    "nacosd.v1.ConfigService",
    "nacosd.v1.NamingService",
    "nacosd.v1.DbService",
    "nacosd.v1.ClusterService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// The three listening sockets of a node.
pub struct Listeners {
    pub client: TcpListener,
    pub peer: TcpListener,
    pub http: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> Result<Self> {
        let bind = |addr: SocketAddr, what: &'static str| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|e| Error::internal(format!("binding {what} address {addr}: {e}")))
        };
        Ok(Listeners {
            client: bind(config.client_addr, "client").await?,
            peer: bind(config.peer_addr, "peer").await?,
            http: bind(config.http_addr, "http").await?,
        })
    }
}

/// A running node.
pub struct RunningServer {
    pub node: Arc<MultiRaft>,
    pub client_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    pub http_addr: SocketAddr,
    stop_tx: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    failure: watch::Receiver<Option<String>>,
}

impl RunningServer {
    /// Why the node has to stop on its own (a group hit an unrecoverable storage error
    /// while applying committed entries), once that happens.
    pub fn failure(&self) -> Option<String> {
        self.failure.borrow().clone()
    }

    /// Resolves when the node fails (see [`RunningServer::failure`]).
    pub async fn failed(&self) -> String {
        let mut rx = self.failure.clone();
        loop {
            if let Some(reason) = rx.borrow_and_update().clone() {
                return reason;
            }
            if rx.changed().await.is_err() {
                // The watchdog is gone: wait forever rather than report a failure.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Graceful shutdown: stop serving, then shut every group down.
    pub async fn shutdown(self) {
        let _ = self.stop_tx.send(true);
        drop(self.failure);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        self.node.shutdown().await;
        let node_id = self.node.node_id;
        let db = self.node.db_handle();
        let holders = Arc::strong_count(&self.node);
        drop(self.node);
        tracing::debug!(
            node_id,
            node_holders = holders,
            db_holders = db.strong_count(),
            "released node"
        );
        if !MultiRaft::wait_closed(db, Duration::from_secs(10)).await {
            tracing::warn!(node_id, "storage still in use 10s after shutdown");
        }
        tracing::info!(node_id, "node stopped");
    }
}

/// Start a node on pre-bound listeners with the built-in groups, plus whatever
/// `extend` registers (tests add groups of their own).
pub async fn start(
    config: &Config,
    extend: impl FnOnce(GroupRegistry) -> GroupRegistry,
    listeners: Listeners,
) -> Result<RunningServer> {
    let client_addr = listeners.client.local_addr()?;
    let peer_addr = listeners.peer.local_addr()?;
    let http_addr = listeners.http.local_addr()?;
    let shared = crate::groups::Shared::default();
    let registry = extend(crate::groups::builtin_registry(&shared));
    let node = MultiRaft::start(config, registry).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut tasks = Vec::new();

    // Peer port.
    let peer_svc = pb::raft_peer_server::RaftPeerServer::new(PeerService::new(node.clone()))
        .max_decoding_message_size(config.peer_message_limit())
        .max_encoding_message_size(config.peer_message_limit());
    let peer_incoming = incoming(listeners.peer);
    let stop = stopped();
    tasks.push(tokio::spawn(async move {
        let res = Server::builder()
            .initial_connection_window_size(8 << 20)
            .initial_stream_window_size(4 << 20)
            .add_service(peer_svc)
            .serve_with_incoming_shutdown(peer_incoming, stop)
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "peer server failed");
        }
    }));

    // Client port: API services, health, reflection.
    let (health_reporter, health_svc) = tonic_health::server::health_reporter();
    // Reflection advertises the client services only: the peer service's types share
    // the descriptor set but it is not served on this port.
    let reflection = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        for svc in CLIENT_SERVICES {
            b = b.with_service_name(*svc);
        }
        b
    };
    let reflection_v1 = reflection().build_v1().map_err(Error::internal)?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(Error::internal)?;
    let max = config.max_request_bytes;
    let cluster_svc =
        pb::cluster_service_server::ClusterServiceServer::new(ClusterApi::new(node.clone()))
            .max_decoding_message_size(max);
    let config_svc = pb::config_service_server::ConfigServiceServer::new(ConfigApi::new(
        node.clone(),
        shared.config_feed.clone(),
        ConfigLimits {
            max_content_bytes: config.max_config_bytes,
            history_limit: config.config_history_limit,
        },
    ))
    .max_decoding_message_size(max);
    let naming_svc = pb::naming_service_server::NamingServiceServer::new(
        crate::api::naming::NamingApi::new(node.clone(), shared.naming_feed.clone()),
    )
    .max_decoding_message_size(max);
    let db_svc = pb::db_service_server::DbServiceServer::new(crate::api::db::DbApi::new(
        node.clone(),
        shared.db.clone(),
        config.db_limits,
    ))
    .max_decoding_message_size(max);
    let client_incoming = incoming(listeners.client);
    let stop = stopped();
    tasks.push(tokio::spawn(async move {
        let res = Server::builder()
            .concurrency_limit_per_connection(1024)
            .layer(tower::util::MapResponseLayer::new(oversized_request_status))
            .add_service(health_svc)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(cluster_svc)
            .add_service(config_svc)
            .add_service(naming_svc)
            .add_service(db_svc)
            .serve_with_incoming_shutdown(client_incoming, stop)
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "client server failed");
        }
    }));

    // Health: SERVING once every group has a leader, NOT_SERVING while one has none.
    let health_node = node.clone();
    let mut stop_health = stopped_rx(&stop_tx);
    tasks.push(tokio::spawn(async move {
        let mut last = None;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop_health.changed() => return,
            }
            let ready = health_node.all_groups_have_leader();
            if last != Some(ready) {
                let status = if ready {
                    tonic_health::ServingStatus::Serving
                } else {
                    tonic_health::ServingStatus::NotServing
                };
                // The server as a whole ("") and each API service by name.
                for name in std::iter::once("").chain(CLIENT_SERVICES.iter().copied()) {
                    health_reporter.set_service_status(name, status).await;
                }
                last = Some(ready);
            }
        }
    }));

    // HTTP port.
    let app = crate::http::router(node.clone());
    let stop = stopped();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = axum::serve(listeners.http, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(error = %e, "http server failed");
        }
    }));

    // A group whose Raft stopped by itself (storage error while applying a committed
    // entry) must not be papered over: the node fails, so an operator or the
    // orchestrator notices and replicas never silently diverge.
    let (failure_tx, failure) = watch::channel(None);
    for group in node.groups() {
        let group = group.clone();
        let failure_tx = failure_tx.clone();
        let mut stop = stopped_rx(&stop_tx);
        tasks.push(tokio::spawn(async move {
            let mut metrics = group.raft.metrics();
            loop {
                let state = metrics.borrow_watched().running_state.clone();
                if let Err(fatal) = state {
                    if *stop.borrow() {
                        return;
                    }
                    let reason = format!("group {} stopped: {fatal}", group.name);
                    tracing::error!(%reason, "node failing");
                    let _ = failure_tx.send(Some(reason));
                    return;
                }
                tokio::select! {
                    changed = metrics.changed() => if changed.is_err() { return },
                    _ = stop.changed() => return,
                }
            }
        }));
    }

    tracing::info!(
        node_id = config.node_id,
        %client_addr, %peer_addr, %http_addr,
        advertise_peer = %config.advertise_peer,
        "nacosd started"
    );
    Ok(RunningServer {
        node,
        client_addr,
        peer_addr,
        http_addr,
        stop_tx,
        tasks,
        failure,
    })
}

/// tonic rejects a request over the decoding limit with OUT_OF_RANGE; clients are
/// told RESOURCE_EXHAUSTED (the status gRPC reserves for exceeded limits), with a
/// message naming the setting.
fn oversized_request_status<B>(mut resp: http::Response<B>) -> http::Response<B> {
    let headers = resp.headers_mut();
    let out_of_range = headers.get("grpc-status").is_some_and(|v| v == "11");
    let too_large = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .is_some_and(|m| m.contains("length%20too%20large") || m.contains("length too large"));
    if out_of_range && too_large {
        let original = headers
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .map(|m| {
                m.replace("%20", " ")
                    .replace("%3A", ":")
                    .replace("%2C", ",")
            })
            .unwrap_or_default();
        let message = format!(
            "request too large for this server (max-request-bytes): {}",
            original.trim_start_matches("Error, ")
        );
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
        if let Ok(v) = http::HeaderValue::from_str(&percent_encode(&message)) {
            headers.insert("grpc-message", v);
        }
    }
    resp
}

/// Percent-encoding of a grpc-message value (everything outside printable ASCII,
/// and '%' itself).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn stopped_rx(tx: &watch::Sender<bool>) -> watch::Receiver<bool> {
    tx.subscribe()
}

/// Run a node until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    let listeners = Listeners::bind(&config).await?;
    let server = start(&config, |r| r, listeners).await?;
    let failure = tokio::select! {
        _ = shutdown => None,
        reason = server.failed() => Some(reason),
    };
    tracing::info!("shutting down");
    server.shutdown().await;
    match failure {
        None => Ok(()),
        Some(reason) => Err(Error::internal(reason)),
    }
}

/// Accepted connections with TCP_NODELAY and keepalive. tonic ignores its builder's
/// `tcp_nodelay` for a caller-supplied listener, and without it Nagle's algorithm
/// holds small responses back for a delayed ACK: about 40 ms per request.
fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)))
}
