//! The Nacos 2.x client protocol, beside `nacosd.v1` on the client port, so that an
//! unmodified Nacos SDK (Java, Go, Python, Rust) registers, discovers, subscribes,
//! publishes, reads and listens against nacosd. The protocol as the SDKs use it is
//! described in `NACOS-WIRE.md` (kept beside the repository, in `shared/`).
//!
//! **Transport.** The two gRPC methods of Nacos's package-less proto,
//! `/Request/request` (unary) and `/BiRequestStream/requestBiStream`, are served by the
//! client port's tonic server (default 9848: exactly the port a Nacos SDK computes from
//! `server_addresses="host:8848"` by adding 1000). Each carries a `Payload`: a type
//! name in `metadata.type` and a JSON body (`wire`). The SDKs need nothing on the main
//! port 8848 (our HTTP port) unless they log in with a username and password.
//!
//! **Connections.** One TCP connection is one Nacos connection (`connection`): the
//! client port's accepted sockets carry a [`crate::conns::ConnInfo`] (id, accept time,
//! peer address, a closed signal) into every request. `ServerCheckRequest` answers the
//! connection id (`<acceptMillis>_<ip>_<port>_n<node>`); the bi-stream's
//! `ConnectionSetupRequest` registers the connection (and, when the client sent an
//! ability table, is acknowledged with `SetupAckRequest`); requests on an unregistered
//! connection get errorCode 301 after waiting up to 1 s for a setup on its way. The
//! connection goes when its socket closes, its bi-stream ends, or, idle for 20 s
//! (`--nacos-idle-probe-ms`), it does not answer a `ClientDetectionRequest` within
//! 5 s (`--nacos-probe-timeout-ms`); its Distro session is then closed, so its
//! ephemeral instances disappear on every node through Distro.
//!
//! **Requests** (`service` dispatches on the type; anything else is an
//! `ErrorResponse` 302, never a dropped connection or a gRPC error):
//! - naming (`naming`): `InstanceRequest`, `BatchInstanceRequest` (ephemeral, the
//!   connection's Distro session, one publication per service),
//!   `PersistentInstanceRequest` (the `naming_persistent` Raft group),
//!   `SubscribeServiceRequest` with `NotifySubscriberRequest` pushes,
//!   `ServiceQueryRequest`, `ServiceListRequest`;
//! - config (`config`): `ConfigQueryRequest`, `ConfigPublishRequest` (`casMd5`),
//!   `ConfigRemoveRequest`, `ConfigBatchListenRequest` with `ConfigChangeNotifyRequest`
//!   pushes (the Watch engine underneath);
//! - `ServerCheckRequest`, `HealthCheckRequest`.
//!
//! **Reads** are local, as in Nacos: naming and config queries read this node's state
//! (`STALE` for the Raft groups, this node's Distro copy for ephemeral instances), so
//! a write through another node may take a replication delay to show.
//!
//! **Auth.** With `--auth`, every request other than ServerCheck, HealthCheck and the
//! setup must carry a nacosd token (from `nacosctl login` or `AuthService/Login`) in
//! the Nacos `accessToken` header, and the token's permissions apply exactly as on
//! `nacosd.v1`; a missing or bad token is errorCode 403. nacosd does not serve Nacos's
//! HTTP login (`/nacos/v1/auth/users/login`), so an SDK configured with a username and
//! password cannot log in by itself.
//!
//! **Shutdown.** A stopping node sends every connection a `ConnectResetRequest`
//! without a server address (Java and Go then switch to their next server; Python
//! cannot parse it and reconnects when the stream ends), waits up to 1 s for the
//! answers, and ends every bi-stream (`Front::reset_all`).
//!
//! **Not served:** gray (beta/tag) config, AK/SK signatures, load rebalancing with
//! `ConnectResetRequest` (only shutdown sends it), fuzzy watch, locks, the AI
//! requests, and Nacos's HTTP API.

pub(crate) mod config;
pub(crate) mod connection;
pub(crate) mod naming;
pub(crate) mod service;
pub mod wire;

pub(crate) use naming::start_pushes;
pub use service::{Front, NacosGrpc};
