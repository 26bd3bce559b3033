//! Running a node: bind the three ports, start the groups, serve, shut down.
//!
//! [`start`] takes already-bound listeners so tests can bind port 0 and learn the
//! addresses before the cluster's member list is written; [`run`] is what the binary
//! calls. What runs, and each task's part in shutdown, is listed in [`RunningServer`].
//!
//! Shutdown order: a leader first hands each group it leads to its most up-to-date
//! follower (so a rolling restart costs a leader change, not an election timeout),
//! asks its Nacos clients to reconnect to another server (`ConnectResetRequest`, up
//! to 1 s for their answers) and ends their streams, deletes its sessions (ephemeral
//! data) on every peer, then the servers stop accepting
//! requests and let in-flight ones finish, then every
//! group's Raft is shut down (flushing its pending I/O), and finally the storage is
//! closed, with a real completion signal, so the data directory can be reopened at once.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use openraft::rt::watch::WatchReceiver;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::codegen::http;
use tonic::transport::Server;

use crate::api::auth::AuthApi;
use crate::api::cluster::ClusterApi;
use crate::api::config::{ConfigApi, ConfigLimits};
use crate::auth::Auth;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::conns::{self, Cutter};
use crate::distro::Distro;
use crate::error::{Error, Result};
use crate::metrics::GrpcMetricsLayer;
use crate::pb;
use crate::peer::server::PeerService;
use crate::raft::group::GroupRegistry;
use crate::raft::node::MultiRaft;
use crate::tls::{self, ServerConn};
use tokio_rustls::rustls::ServerConfig;

/// Services served on the client port, as advertised by reflection.
pub const CLIENT_SERVICES: &[&str] = &[
    "nacosd.v1.ConfigService",
    "nacosd.v1.NamingService",
    "nacosd.v1.SessionService",
    "nacosd.v1.DbService",
    "nacosd.v1.ClusterService",
    "nacosd.v1.AuthService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// How long a stopping server lets in-flight requests finish.
const DRAIN_GRACE: Duration = Duration::from_secs(3);

/// How long a stopping server waits for Nacos clients to answer its request to
/// reconnect elsewhere.
const NACOS_RESET_WAIT: Duration = Duration::from_secs(1);

/// How long a stopping leader waits for a group's leadership to move.
const HANDOVER_WAIT: Duration = Duration::from_secs(2);

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

/// A running node and its tasks.
pub struct RunningServer {
    pub node: Arc<MultiRaft>,
    pub cluster: Arc<Cluster>,
    /// The AP side: sessions and ephemeral instances (memory only).
    pub distro: Arc<Distro>,
    /// The Nacos 2.x front end on the client port (its connections).
    pub nacos: Arc<crate::nacos::Front>,
    pub client_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// Set to `true` to stop: every task below watches it.
    stop_tx: watch::Sender<bool>,
    /// The client, peer and HTTP servers: on stop they refuse new connections and
    /// finish the requests in flight; shutdown waits for them (bounded).
    servers: Vec<JoinHandle<()>>,
    /// The gRPC ports' accepted connections: those still open once the servers have
    /// stopped are cut, so no connection task keeps the node alive (`conns`).
    cutters: Vec<Cutter>,
    /// Health reporting, bootstrap, one watchdog per group and the Distro loops: they
    /// just end.
    background: Vec<JoinHandle<()>>,
    /// Why the node must stop by itself (a group's Raft stopped), once it happens.
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

    /// Graceful shutdown: hand leaderships over, stop serving, shut every group down,
    /// wait for the storage to close.
    pub async fn shutdown(self) {
        hand_over_leadership(&self.node).await;
        self.nacos.reset_all(NACOS_RESET_WAIT).await;
        self.distro.retire(DRAIN_GRACE).await;
        let _ = self.stop_tx.send(true);
        drop(self.failure);
        // In-flight requests get a grace period; connections still open after it
        // (idle keep-alive peers, clients that ignore GOAWAY, open streams) are cut.
        for mut t in self.servers {
            if tokio::time::timeout(DRAIN_GRACE, &mut t).await.is_err() {
                t.abort();
                let _ = t.await;
            }
        }
        let cut: usize = self.cutters.iter().map(Cutter::cut_all).sum();
        if cut > 0 {
            tracing::debug!(cut, "cut connections still open after the servers stopped");
        }
        for t in self.background {
            t.abort();
            let _ = t.await;
        }
        let node_id = self.node.node_id;
        let closing = self.node.shutdown().await;
        // Whatever still runs on the control runtime (a peer call in flight) holds
        // storage handles: end it before waiting for the storage to close.
        self.node.control.stop();
        drop(self.cluster);
        drop(self.nacos);
        drop(self.distro);
        drop(self.node);
        if !closing.wait(Duration::from_secs(10)).await {
            tracing::warn!(node_id, "storage still in use 10s after shutdown");
        }
        tracing::info!(node_id, "node stopped");
    }
}

/// For every group this node leads: transfer leadership to the most up-to-date voter
/// and wait (bounded) until it has moved.
async fn hand_over_leadership(node: &MultiRaft) {
    let mut moving = Vec::new();
    for g in node.groups() {
        // A node the cluster removed may still think it leads; nobody would take over
        // from a non-member, and the others elect a leader by themselves.
        if !g.raft.is_leader() || !g.voters().contains(&node.node_id) {
            continue;
        }
        let Some(to) = g.transfer_target() else {
            continue;
        };
        tracing::info!(group = %g.name, to, "handing leadership over before stopping");
        if g.raft.trigger().transfer_leader(to).await.is_ok() {
            moving.push(g.clone());
        }
    }
    for g in moving {
        if !g.wait_leader_moved(HANDOVER_WAIT).await {
            tracing::warn!(group = %g.name, "leadership did not move before shutdown");
        }
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
    let (client_tls, http_tls, peer_tls) = server_tls(config)?;
    let shared = crate::groups::Shared::default();
    let registry = extend(crate::groups::builtin_registry(&shared));
    let node = MultiRaft::start(config, registry).await?;
    let (failure_tx, failure) = watch::channel(None);
    let cluster = Cluster::new(node.clone(), config, failure_tx.clone())?;
    let (stop_tx, _) = watch::channel(false);
    let distro = Distro::new(node.clone(), config.distro);
    let auth = Auth::new(node.clone(), &config.auth);
    let nacos = crate::nacos::Front::new(
        node.clone(),
        distro.clone(),
        auth.clone(),
        shared.naming_feed.clone(),
        shared.config_feed.clone(),
        config_limits(config),
        config.nacos,
    );

    let (health_reporter, health_svc) = tonic_health::server::health_reporter();
    let peer_listener = move_to_runtime(listeners.peer, node.control.handle())?;
    let (peer_conns, peer_cutter) = conns::tracked(incoming(peer_listener));
    let (client_conns, client_cutter) = conns::tracked(incoming(listeners.client));
    let peer_conns = tls::tls_incoming(peer_conns, peer_tls, "peer");
    let client_conns = tls::tls_incoming(client_conns, client_tls, "client");
    let servers = vec![
        serve_peer(
            &cluster,
            &distro,
            config,
            peer_conns,
            &stop_tx,
            node.control.handle(),
        ),
        serve_client(
            ClientDeps {
                cluster: &cluster,
                distro: &distro,
                shared: &shared,
                auth: &auth,
                nacos: &nacos,
            },
            config,
            client_conns,
            health_svc,
            &stop_tx,
        )?,
        serve_http(&node, &distro, config, listeners.http, http_tls, &stop_tx)?,
    ];
    let cutters = vec![peer_cutter, client_cutter];
    let mut background = vec![
        report_health(&node, &distro, health_reporter, &stop_tx),
        tokio::spawn(crate::cluster::bootstrap::run(
            cluster.clone(),
            stop_tx.subscribe(),
        )),
    ];
    background.push(tokio::spawn(crate::idle::run(
        node.clone(),
        stop_tx.subscribe(),
    )));
    background.extend(watch_groups(&node, failure_tx, &stop_tx));
    background.extend(distro.start(&stop_tx));
    background.push(crate::nacos::start_pushes(&nacos, &stop_tx));
    if config.auth.enabled {
        let auth = auth.clone();
        let admin_password = config.auth.initial_admin_password.clone();
        let stop = stop_tx.subscribe();
        background.push(tokio::spawn(async move {
            auth.bootstrap(admin_password, stop).await
        }));
    }

    tracing::info!(
        node_id = config.node_id,
        %client_addr, %peer_addr, %http_addr,
        advertise_peer = %config.advertise_peer,
        cluster_id = ?node.identity().cluster_id(),
        client_tls = config.client_tls.is_some(),
        peer_mtls = config.peer_tls.is_some(),
        "nacosd started"
    );
    Ok(RunningServer {
        node,
        cluster,
        distro,
        nacos,
        client_addr,
        peer_addr,
        http_addr,
        stop_tx,
        servers,
        cutters,
        background,
        failure,
    })
}

/// The TLS configurations of the client port, the HTTP port (the client port's
/// certificate, never asking for a client certificate) and the peer port, loaded now
/// so that a node with unusable certificates does not start.
#[allow(clippy::type_complexity)]
fn server_tls(
    config: &Config,
) -> Result<(
    Option<Arc<tls::Reloading<ServerConfig>>>,
    Option<Arc<tls::Reloading<ServerConfig>>>,
    Option<Arc<tls::Reloading<ServerConfig>>>,
)> {
    let client = config
        .client_tls
        .clone()
        .map(tls::Reloading::client_port)
        .transpose()?;
    let http = match &config.client_tls {
        Some(files) if files.ca.is_some() => Some(tls::Reloading::server(tls::CertFiles {
            ca: None,
            ..files.clone()
        })?),
        _ => client.clone(),
    };
    let peer = config
        .peer_tls
        .clone()
        .map(tls::Reloading::server)
        .transpose()?;
    if peer.is_none() && config.is_multi_node() {
        tracing::warn!("--insecure-peer: the peer port is plaintext and unauthenticated; anyone who can reach it can vote, append entries, install snapshots and forward writes");
    }
    if let (Some(c), Some(p)) = (&config.client_tls, &config.peer_tls) {
        if c.shares_ca_with(p) {
            tracing::warn!("--client-ca and --peer-ca share a CA certificate: every node certificate can log in on the client port as the user its common name names");
        }
    }
    Ok((client, http, peer))
}

/// Resolves once `stop` says so.
fn stopped(stop: &watch::Sender<bool>) -> impl Future<Output = ()> + Send + 'static {
    let mut rx = stop.subscribe();
    async move {
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// Streams a peer may reset before this server has accepted them, on one connection,
/// before h2 closes it (GOAWAY `ENHANCE_YOUR_CALM`, "too_many_resets"). h2's default,
/// 20, guards against the rapid-reset attack; between peers it misfired: while this
/// node was stopped or cut off, every call a peer gave up on (a heartbeat, a vote, a
/// forwarded batch, a read index) was reset unread, and when the node resumed it read
/// them all at once and closed the whole connection, failing the calls that were
/// still good on it (docs/FAULTS.md, "Observations": 25 such GOAWAYs in a two-minute
/// run of pauses, none with this limit). It stays a bound against anyone else who
/// reaches the port; the client port keeps h2's default.
const PEER_PENDING_ACCEPT_RESETS: usize = 1024;

/// The peer port: Raft RPCs of every group, forwarding, Hello, cluster operations.
/// Served on the control runtime (`raft::control`), beside the groups it feeds.
fn serve_peer(
    cluster: &Arc<Cluster>,
    distro: &Arc<Distro>,
    config: &Config,
    connections: impl Stream<Item = std::io::Result<ServerConn>> + Send + 'static,
    stop: &watch::Sender<bool>,
    control: &tokio::runtime::Handle,
) -> JoinHandle<()> {
    let svc = pb::raft_peer_server::RaftPeerServer::new(PeerService::new(
        cluster.clone(),
        distro.clone(),
        stop.subscribe(),
    ))
    .max_decoding_message_size(config.peer_message_limit())
    .max_encoding_message_size(config.peer_message_limit());
    let stop = stopped(stop);
    control.spawn(async move {
        let res = Server::builder()
            .initial_connection_window_size(16 << 20)
            .initial_stream_window_size(8 << 20)
            .http2_keepalive_interval(Some(Duration::from_secs(5)))
            .http2_keepalive_timeout(Some(Duration::from_secs(5)))
            .http2_max_pending_accept_reset_streams(Some(PEER_PENDING_ACCEPT_RESETS))
            .add_service(svc)
            .serve_with_incoming_shutdown(connections, stop)
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "peer server failed");
        }
    })
}

/// What the client port's services are built on, beside the configuration.
struct ClientDeps<'a> {
    cluster: &'a Arc<Cluster>,
    distro: &'a Arc<Distro>,
    shared: &'a crate::groups::Shared,
    auth: &'a Arc<Auth>,
    nacos: &'a Arc<crate::nacos::Front>,
}

fn config_limits(config: &Config) -> ConfigLimits {
    ConfigLimits {
        max_content_bytes: config.max_config_bytes,
        history_limit: config.config_history_limit,
    }
}

/// The client port: API services, the Nacos 2.x front end, health, reflection.
fn serve_client(
    deps: ClientDeps<'_>,
    config: &Config,
    connections: impl Stream<Item = std::io::Result<ServerConn>> + Send + 'static,
    health_svc: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    stop: &watch::Sender<bool>,
) -> Result<JoinHandle<()>> {
    let ClientDeps {
        cluster,
        distro,
        shared,
        auth,
        nacos,
    } = deps;
    let node = &cluster.node;
    // Reflection advertises the client services only (the peer service's types share
    // the descriptor set but it is not served here), and can resolve every one of them:
    // the reflection and health protocols' own descriptors are registered too.
    let reflection = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .include_reflection_service(false)
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            );
        for svc in CLIENT_SERVICES {
            b = b.with_service_name(*svc);
        }
        b
    };
    let reflection_v1 = reflection().build_v1().map_err(Error::internal)?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(Error::internal)?;
    let max = config.max_request_bytes;
    let cluster_svc = pb::cluster_service_server::ClusterServiceServer::new(ClusterApi::new(
        cluster.clone(),
        auth.clone(),
    ))
    .max_decoding_message_size(max);
    let auth_svc = pb::auth_service_server::AuthServiceServer::new(AuthApi::new(auth.clone()))
        .max_decoding_message_size(max);
    let config_svc = pb::config_service_server::ConfigServiceServer::new(ConfigApi::new(
        node.clone(),
        auth.clone(),
        shared.config_feed.clone(),
        config_limits(config),
    ))
    .max_decoding_message_size(max);
    // Nacos's package-less services: `/Request/request`, `/BiRequestStream/requestBiStream`.
    let nacos_request =
        crate::nacos::wire::RequestServer::new(crate::nacos::NacosGrpc(nacos.clone()))
            .max_decoding_message_size(max);
    let nacos_stream =
        crate::nacos::wire::BiRequestStreamServer::new(crate::nacos::NacosGrpc(nacos.clone()))
            .max_decoding_message_size(max);
    let naming_svc =
        pb::naming_service_server::NamingServiceServer::new(crate::api::naming::NamingApi::new(
            node.clone(),
            auth.clone(),
            shared.naming_feed.clone(),
            distro.clone(),
        ))
        .max_decoding_message_size(max);
    let session_svc = pb::session_service_server::SessionServiceServer::new(
        crate::api::session::SessionApi::new(distro.clone(), auth.clone()),
    )
    .max_decoding_message_size(max);
    let db_svc = pb::db_service_server::DbServiceServer::new(crate::api::db::DbApi::new(
        node.clone(),
        auth.clone(),
        shared.db.clone(),
        config.db_limits,
    ))
    .max_decoding_message_size(max);
    let stop = stopped(stop);
    let metrics = node.metrics.clone();
    Ok(tokio::spawn(async move {
        let res = Server::builder()
            .concurrency_limit_per_connection(1024)
            .layer(tower::util::MapResponseLayer::new(oversized_request_status))
            .layer(GrpcMetricsLayer(metrics))
            .add_service(health_svc)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(cluster_svc)
            .add_service(auth_svc)
            .add_service(config_svc)
            .add_service(naming_svc)
            .add_service(session_svc)
            .add_service(db_svc)
            .add_service(nacos_request)
            .add_service(nacos_stream)
            .serve_with_incoming_shutdown(connections, stop)
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "client server failed");
        }
    }))
}

/// The HTTP port: /healthz, /readyz, /metrics; with `--http-tls`, over TLS with the
/// client port's certificate.
fn serve_http(
    node: &Arc<MultiRaft>,
    distro: &Arc<Distro>,
    config: &Config,
    listener: TcpListener,
    client_tls: Option<Arc<tls::Reloading<ServerConfig>>>,
    stop: &watch::Sender<bool>,
) -> Result<JoinHandle<()>> {
    let app = crate::http::router(
        node.clone(),
        distro.clone(),
        config.metrics_token.as_deref(),
    );
    let stop = stopped(stop);
    let tls = match (config.http_tls, client_tls) {
        (false, _) => None,
        (true, Some(tls)) => Some(tls),
        (true, None) => return Err(Error::invalid("http-tls needs tls-cert and tls-key")),
    };
    Ok(tokio::spawn(async move {
        let res = match tls {
            None => {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stop)
                    .await
            }
            Some(tls) => {
                let local = match listener.local_addr() {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::error!(error = %e, "http listener has no address");
                        return;
                    }
                };
                // Not cut at shutdown like the gRPC ports' connections: axum's
                // graceful shutdown closes idle HTTP/1 connections itself.
                let (conns, _cutter) = conns::tracked(incoming(listener));
                let listener = crate::http::TlsListener {
                    conns: Box::pin(tls::tls_incoming(conns, Some(tls), "http")),
                    local,
                };
                axum::serve(listener, app)
                    .with_graceful_shutdown(stop)
                    .await
            }
        };
        if let Err(e) = res {
            tracing::error!(error = %e, "http server failed");
        }
    }))
}

/// gRPC health: SERVING while the node is ready (`MultiRaft::ready`, and the ephemeral
/// data loaded: `Distro::ready`), NOT_SERVING otherwise, for the server as a whole ("")
/// and each API service by name.
fn report_health(
    node: &Arc<MultiRaft>,
    distro: &Arc<Distro>,
    reporter: tonic_health::server::HealthReporter,
    stop: &watch::Sender<bool>,
) -> JoinHandle<()> {
    let node = node.clone();
    let distro = distro.clone();
    let mut stop = stop.subscribe();
    tokio::spawn(async move {
        let mut last = None;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let ready = node.ready() && distro.ready();
            if last != Some(ready) {
                let status = if ready {
                    tonic_health::ServingStatus::Serving
                } else {
                    tonic_health::ServingStatus::NotServing
                };
                for name in std::iter::once("").chain(CLIENT_SERVICES.iter().copied()) {
                    reporter.set_service_status(name, status).await;
                }
                last = Some(ready);
            }
        }
    })
}

/// One watchdog per group. A group whose Raft stopped by itself (a storage error while
/// applying a committed entry) must not be papered over: the node fails, so an operator
/// or the orchestrator notices and replicas never silently diverge.
fn watch_groups(
    node: &Arc<MultiRaft>,
    failure_tx: watch::Sender<Option<String>>,
    stop: &watch::Sender<bool>,
) -> Vec<JoinHandle<()>> {
    node.groups()
        .map(|group| {
            let group = group.clone();
            let failure_tx = failure_tx.clone();
            let mut stop = stop.subscribe();
            tokio::spawn(async move {
                // Woken by the server metrics, which change rarely and whose sender is
                // dropped when the group's core task ends; the full metrics, which say why
                // it stopped, are sent at every turn of the core loop.
                let mut server = group.raft.server_metrics();
                loop {
                    let state = group.raft.metrics().borrow_watched().running_state.clone();
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
                        changed = server.changed() => if changed.is_err() {
                            // The core task ended: one last look at why.
                            let state = group.raft.metrics().borrow_watched().running_state.clone();
                            if let (Err(fatal), false) = (state, *stop.borrow()) {
                                let reason = format!("group {} stopped: {fatal}", group.name);
                                tracing::error!(%reason, "node failing");
                                let _ = failure_tx.send(Some(reason));
                            }
                            return;
                        },
                        _ = stop.changed() => return,
                    }
                }
            })
        })
        .collect()
}

/// tonic refuses a request over the decoding limit with OUT_OF_RANGE; clients are told
/// RESOURCE_EXHAUSTED (the status gRPC reserves for exceeded limits), naming the
/// setting. Decided on the status code alone: no handler of the client port ever
/// answers OUT_OF_RANGE (no [`Error`] variant maps to it, see `error.rs`), so on this
/// port OUT_OF_RANGE can only be tonic's size check.
fn oversized_request_status<B>(mut resp: http::Response<B>) -> http::Response<B> {
    let headers = resp.headers_mut();
    if headers.get("grpc-status").is_some_and(|v| v == "11") {
        // grpc-message is already percent-encoded; the prefix needs no encoding.
        let original = headers
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .unwrap_or_default();
        let message =
            format!("request too large for this server (limit: max-request-bytes): {original}");
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
        if let Ok(v) = http::HeaderValue::from_str(&message) {
            headers.insert("grpc-message", v);
        }
    }
    resp
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
/// `listener`, registered with `runtime`'s I/O driver instead of the current one.
fn move_to_runtime(
    listener: TcpListener,
    runtime: &tokio::runtime::Handle,
) -> std::io::Result<TcpListener> {
    let listener = listener.into_std()?;
    let _on = runtime.enter();
    TcpListener::from_std(listener)
}

fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)))
}
