//! Node configuration: one typed [`Config`], filled from command-line flags, `NACOSD_*`
//! environment variables and an optional TOML file, in that order of precedence, with
//! every default in [`Config::default`]. `deploy/nacosd.sample.toml` documents each key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::tls::CertFiles;

/// A node's stable identity within the cluster.
pub type NodeId = u64;

/// Limits of one embedded-DB request, set by the node that accepts it (`--db-max-*`).
/// They are checked at the API edge only, never while applying: a node's limits may
/// differ from another's, and an apply must not depend on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbLimits {
    /// Statements in one `Execute` or `Query`.
    pub max_statements: usize,
    /// SQL text of one statement, in bytes.
    pub max_sql_bytes: usize,
    /// Rows one statement of a `Query` returns; more is `RESOURCE_EXHAUSTED`.
    pub max_rows: u32,
}

impl Default for DbLimits {
    fn default() -> Self {
        DbLimits {
            max_statements: 100,
            max_sql_bytes: 64 * 1024,
            max_rows: 10_000,
        }
    }
}

/// Sessions and the AP side (Distro, `src/distro/`). Every interval is configurable so
/// that tests run in milliseconds; the defaults are Nacos's, except where noted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DistroSettings {
    /// A session's time to live without a keep-alive when the client asks for none
    /// (Nacos: a silent connection is ejected after about 20 s).
    pub session_ttl: Duration,
    /// Longest TTL a client may ask for.
    pub session_max_ttl: Duration,
    /// After this share of its TTL without a keep-alive (percent), a session's
    /// instances are reported unhealthy (Nacos 1.x beats: unhealthy at 15 s, deleted at
    /// 30 s, i.e. 50 %).
    pub session_unhealthy_percent: u32,
    /// How long a change waits before it is sent to the other nodes; changes of one
    /// session within it are merged into one sync.
    pub sync_delay: Duration,
    /// First retry delay of a failed sync; it doubles per failure up to 10 times this.
    pub sync_retry: Duration,
    /// Deadline of one sync, verify or snapshot-chunk call to a peer.
    pub sync_timeout: Duration,
    /// How often a node tells every other node which sessions it owns (and their
    /// revisions); receivers ask for what they miss.
    pub verify_interval: Duration,
    /// A replica whose owner has not vouched for it (by sync or verify) for this long
    /// is dropped: how long a dead node's sessions stay visible elsewhere.
    pub replica_expiry: Duration,
    /// Longest delay before asking the peers again for a snapshot when none answered
    /// (the first retries come after 0.5 s, 1 s, 2 s, ...: a forming cluster's peers
    /// refuse calls until they have the cluster identity).
    pub load_retry: Duration,
}

/// The Nacos 2.x front end (`src/nacos/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NacosSettings {
    /// A Nacos connection silent this long is sent a `ClientDetectionRequest`
    /// (Nacos's `RuntimeConnectionEjector`: 20 s).
    pub idle_probe_after: Duration,
    /// A probed connection that does not answer within this is closed, and its
    /// ephemeral instances go everywhere (Nacos: 5 s).
    pub probe_timeout: Duration,
}

impl Default for NacosSettings {
    fn default() -> Self {
        NacosSettings {
            idle_probe_after: Duration::from_secs(20),
            probe_timeout: Duration::from_secs(5),
        }
    }
}

impl Default for DistroSettings {
    fn default() -> Self {
        DistroSettings {
            session_ttl: Duration::from_secs(15),
            session_max_ttl: Duration::from_secs(300),
            session_unhealthy_percent: 50,
            sync_delay: Duration::from_millis(1000),
            sync_retry: Duration::from_millis(3000),
            sync_timeout: Duration::from_millis(3000),
            verify_interval: Duration::from_millis(5000),
            replica_expiry: Duration::from_secs(180),
            load_retry: Duration::from_secs(30),
        }
    }
}

/// Shortest session TTL a client may ask for.
pub const MIN_SESSION_TTL: Duration = Duration::from_millis(200);

/// Entries per append-entries message (with [`Config::peer_message_limit`], this bounds
/// a message's size whatever the entries hold).
pub const MAX_ENTRIES_PER_APPEND: u64 = 64;

// Default Raft timing. How long a group is without a leader after its leader dies,
// term by term (openraft 0.10):
// - a follower's election timer runs from the last message of the leader and fires
//   after the leader lease (openraft fixes it at `election_timeout_max`) *plus* a
//   random election timeout in [min, max): 350 + 250..350 = 600..700 ms;
// - the timer is checked on openraft's tick (13/64 of a heartbeat: 20 ms);
// - pre-vote and vote: two round trips and one fsync of the vote (~10-30 ms here);
// - the new leader commits its blank entry (one round trip and fsync), and followers
//   learn of it from that append; a write then takes a forward and a commit.
// A node whose vote request lost to a longer log waits a further 2 × max (openraft's
// `smaller_log_timeout`), so the most up-to-date follower wins first.
// Measured after kill -9 of a leader (docs/FAULTS.md): median under 1 s. Nothing
// shorter than 600 ms of silence from a live leader starts an election; at 256 bench
// clients no election happened (docs/BENCHMARKS.md). etcd's defaults are 100 ms and
// 1000 ms (randomised up to 2000 ms).

/// The peer port when none is configured (Nacos's Raft port), and of a peer address
/// that names none.
pub const DEFAULT_PEER_PORT: u16 = 7848;
/// The embedded DB's page cache per SQLite connection, in KiB. SQLite's own default
/// (2000) kept 2.2 MiB per node after an insert load; with 512 a node held 0.7 MiB, and
/// `bench/ab.sh` db-insert at 64 clients ran the same (B/A 0.92 1.02 1.02, CPU per
/// insert 201.8 against 200.6 µs). A page not in it is read from the kernel's page
/// cache, which holds the file anyway.
pub const DEFAULT_DB_PAGE_CACHE_KIB: usize = 512;

/// Default leader heartbeat interval.
pub const DEFAULT_HEARTBEAT_MS: u64 = 100;
/// Default lower bound of the random election timeout.
pub const DEFAULT_ELECTION_MIN_MS: u64 = 250;
/// Default upper bound of the random election timeout, and the leader lease.
pub const DEFAULT_ELECTION_MAX_MS: u64 = 350;

/// The resolved configuration of one node.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's stable id; must be unique in the cluster and never reused.
    pub node_id: NodeId,
    /// Where logs, state machines and snapshots live.
    pub data_dir: PathBuf,
    /// Client gRPC API (naming, config, DB, cluster admin, health, reflection).
    pub client_addr: SocketAddr,
    /// Peer gRPC (Raft RPCs of every group, forwarding).
    pub peer_addr: SocketAddr,
    /// HTTP: /metrics, /healthz, /readyz.
    pub http_addr: SocketAddr,
    /// `host:port` other nodes use to reach this node's peer port. A DNS name is fine
    /// and preferred: identity is the node id plus this name, never an IP.
    pub advertise_peer: String,
    /// Initial cluster membership (`id -> host:port`). Empty: standalone. Only used
    /// when the data directory is empty.
    pub initial_members: BTreeMap<NodeId, String>,
    /// Whether an empty data directory may bootstrap a new cluster from
    /// `initial_members` (`New`), or must only join an existing one (`Existing`).
    pub initial_cluster_state: InitialClusterState,
    /// A member's peer address to ask for admission when the data directory
    /// is empty: the node joins the existing cluster as a learner, catches up, and is
    /// promoted to voter unless `learner` is set.
    pub join: Option<String>,
    /// Stay a learner after joining (no automatic promotion).
    pub learner: bool,
    /// Disaster recovery: restart this node as the only member of every group, keeping
    /// its data. Only for when a majority is permanently lost.
    pub force_new_cluster: bool,
    /// Leader heartbeat interval.
    pub heartbeat: Duration,
    /// Election timeout range: a follower that hears nothing from a leader for a random
    /// time in this range starts an election.
    pub election_timeout: (Duration, Duration),
    /// Build a snapshot after this many entries since the last one.
    pub snapshot_logs: u64,
    /// Also build a snapshot at this interval if anything was applied since.
    pub snapshot_interval: Duration,
    /// Log entries kept before the snapshot point when purging, so slightly lagging
    /// followers catch up from the log instead of a snapshot.
    pub snapshot_keep_logs: u64,
    /// Deadline for a write (including forwarding and leader changes) when the client
    /// sets none.
    pub default_timeout: Duration,
    /// Largest client request accepted, in bytes.
    pub max_request_bytes: usize,
    /// Memory for RocksDB, in MiB: three quarters for memtables (all column families
    /// together), one quarter for the shared block cache.
    pub storage_memory_mib: usize,
    /// Newest log entries kept in memory per group, in MiB, for apply and replication
    /// to read without going to RocksDB (0: none).
    pub log_cache_mib: usize,
    /// Recently written state-machine values the apply path reads back, kept in memory
    /// per group, in MiB (0: none).
    pub state_cache_mib: usize,
    /// Page cache of each of the embedded DB's SQLite connections (the applying writer
    /// and the reader), in KiB.
    pub db_page_cache_kib: usize,
    /// Worker threads of the client runtime (client and HTTP ports, Distro, forwarding);
    /// 0: one per CPU core.
    pub client_threads: usize,
    /// Worker threads of the control runtime (every group's Raft tasks and the peer
    /// port, `raft::control`); at most the number of CPU cores.
    pub raft_threads: usize,
    /// Largest configuration content accepted, in bytes (Nacos default: 100 KiB).
    pub max_config_bytes: usize,
    /// Revisions of history kept per configuration item.
    pub config_history_limit: u32,
    /// Embedded DB request limits.
    pub db_limits: DbLimits,
    /// Sessions and ephemeral instances (the AP side).
    pub distro: DistroSettings,
    /// The Nacos 2.x front end's connection liveness.
    pub nacos: NacosSettings,
    /// TLS on the client and HTTP ports: certificate and key, and optionally the
    /// client CA (`--client-ca`): a client may then present a certificate signed by
    /// it instead of a token, and is the user its subject's common name names (with
    /// `--auth`). The HTTP port never asks for client certificates. `None`: plaintext.
    pub client_tls: Option<CertFiles>,
    /// Mutual TLS on the peer port: this node's certificate (used both to serve and to
    /// call peers, so it must allow server and client authentication) and the cluster
    /// CA that must have signed every peer's. `None`: plaintext.
    pub peer_tls: Option<CertFiles>,
    /// Allow a multi-node cluster with a plaintext peer port (anyone who can reach it
    /// can then take part in Raft). Refused without it.
    pub insecure_peer: bool,
    /// Client authentication and authorization.
    pub auth: AuthConfig,
    /// Serve the HTTP port over TLS too, with the client port's certificate.
    pub http_tls: bool,
    /// Bearer token `/metrics` requires (read from `--metrics-token-file`); the probes
    /// stay open. `None`: open.
    pub metrics_token: Option<String>,
}

/// Client authentication (see `auth`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// Require a token on every client call but health and reflection.
    pub enabled: bool,
    /// How long a token from `Login` is valid.
    pub token_ttl: Duration,
    /// Password of the `admin` user, created if the cluster has no users yet. Read from
    /// a file (`--initial-admin-password-file`), never a flag, so it shows in no
    /// process list. There is no default password.
    pub initial_admin_password: Option<String>,
    /// Brute-force protection of `Login` on each node.
    pub login_limits: LoginLimits,
}

/// Failed logins allowed on one node, per user name and per client address: each is
/// a budget of that many failures, refilled at that many per minute. A login is
/// refused (RESOURCE_EXHAUSTED) while either budget is empty; 0 turns a limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    pub per_user: u32,
    pub per_address: u32,
}

impl Default for LoginLimits {
    fn default() -> Self {
        LoginLimits {
            per_user: 5,
            per_address: 20,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            enabled: false,
            token_ttl: Duration::from_secs(30 * 60),
            initial_admin_password: None,
            login_limits: LoginLimits::default(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: 1,
            data_dir: PathBuf::from("nacosd-data"),
            client_addr: ([0, 0, 0, 0], 9848).into(),
            peer_addr: ([0, 0, 0, 0], DEFAULT_PEER_PORT).into(),
            http_addr: ([0, 0, 0, 0], 8848).into(),
            advertise_peer: String::new(),
            initial_members: BTreeMap::new(),
            initial_cluster_state: InitialClusterState::New,
            join: None,
            learner: false,
            force_new_cluster: false,
            heartbeat: Duration::from_millis(DEFAULT_HEARTBEAT_MS),
            election_timeout: (
                Duration::from_millis(DEFAULT_ELECTION_MIN_MS),
                Duration::from_millis(DEFAULT_ELECTION_MAX_MS),
            ),
            snapshot_logs: 100_000,
            snapshot_interval: Duration::from_secs(30 * 60),
            snapshot_keep_logs: 1_000,
            default_timeout: Duration::from_secs(10),
            max_request_bytes: 4 << 20,
            storage_memory_mib: 16,
            log_cache_mib: 2,
            state_cache_mib: 16,
            db_page_cache_kib: DEFAULT_DB_PAGE_CACHE_KIB,
            client_threads: 0,
            raft_threads: 2,
            max_config_bytes: 100 * 1024,
            config_history_limit: 30,
            db_limits: DbLimits::default(),
            distro: DistroSettings::default(),
            nacos: NacosSettings::default(),
            client_tls: None,
            peer_tls: None,
            insecure_peer: false,
            auth: AuthConfig::default(),
            http_tls: false,
            metrics_token: None,
        }
    }
}

/// How an empty data directory gets its cluster (see `cluster::bootstrap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitialClusterState {
    /// Bootstrap a brand-new cluster, but only once every initial member is reachable
    /// and empty; if any of them already belongs to a cluster, join it instead.
    #[default]
    New,
    /// Never bootstrap: an empty node only joins the existing cluster.
    Existing,
}

/// Flags, environment variables and file keys. Every field is optional so that the
/// three sources can be layered; see [`Config`] for what each one means.
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConfigArgs {
    /// TOML configuration file (keys are the long flag names).
    #[arg(long, env = "NACOSD_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// This node's id (unique, stable).
    #[arg(long, env = "NACOSD_NODE_ID")]
    pub node_id: Option<NodeId>,
    /// Data directory [default: ./nacosd-data].
    #[arg(long, env = "NACOSD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Client gRPC listen address [default: 0.0.0.0:9848].
    #[arg(long, env = "NACOSD_CLIENT_ADDR")]
    pub client_addr: Option<SocketAddr>,
    /// Peer gRPC listen address [default: 0.0.0.0:7848].
    #[arg(long, env = "NACOSD_PEER_ADDR")]
    pub peer_addr: Option<SocketAddr>,
    /// HTTP (metrics, health) listen address [default: 0.0.0.0:8848].
    #[arg(long, env = "NACOSD_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// host:port other nodes use to reach this node's peer port (a DNS name is fine)
    /// [default: this node's entry in --initial-members, else 127.0.0.1:<peer port>].
    #[arg(long, env = "NACOSD_ADVERTISE_PEER")]
    pub advertise_peer: Option<String>,
    /// Initial members, "1=host:7848,2=host:7848,3=host:7848"; absent: standalone.
    #[arg(long, env = "NACOSD_INITIAL_MEMBERS")]
    pub initial_members: Option<String>,
    /// With an empty data directory: `new` bootstraps a new cluster once every initial
    /// member is reachable and empty (or joins the cluster they already form);
    /// `existing` only joins [default: new].
    #[arg(long, env = "NACOSD_INITIAL_CLUSTER_STATE", value_enum)]
    pub initial_cluster_state: Option<InitialClusterState>,
    /// Peer address (host:port) of any member to ask for admission when the data
    /// directory is empty.
    #[arg(long, env = "NACOSD_JOIN")]
    pub join: Option<String>,
    /// After joining, stay a learner (no automatic promotion to voter).
    #[arg(long, env = "NACOSD_LEARNER", num_args = 0..=1, default_missing_value = "true")]
    pub learner: Option<bool>,
    /// DISASTER RECOVERY ONLY: restart as the sole member of every group, keeping this
    /// node's data, after a majority of the cluster is permanently lost.
    #[arg(
        long,
        env = "NACOSD_FORCE_NEW_CLUSTER",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    #[serde(skip)]
    pub force_new_cluster: Option<bool>,
    /// Leader heartbeat interval in milliseconds [default: 100].
    #[arg(long, env = "NACOSD_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Minimum election timeout in milliseconds [default: 250].
    #[arg(long, env = "NACOSD_ELECTION_TIMEOUT_MIN_MS")]
    pub election_timeout_min_ms: Option<u64>,
    /// Maximum election timeout in milliseconds [default: 350]; also the leader lease.
    #[arg(long, env = "NACOSD_ELECTION_TIMEOUT_MAX_MS")]
    pub election_timeout_max_ms: Option<u64>,
    /// Snapshot after this many log entries [default: 100000].
    #[arg(long, env = "NACOSD_SNAPSHOT_LOGS")]
    pub snapshot_logs: Option<u64>,
    /// Snapshot interval in seconds [default: 1800].
    #[arg(long, env = "NACOSD_SNAPSHOT_INTERVAL_SECS")]
    pub snapshot_interval_secs: Option<u64>,
    /// Log entries kept behind a snapshot when purging [default: 1000].
    #[arg(long, env = "NACOSD_SNAPSHOT_KEEP_LOGS")]
    pub snapshot_keep_logs: Option<u64>,
    /// Default request deadline in milliseconds [default: 10000].
    #[arg(long, env = "NACOSD_DEFAULT_TIMEOUT_MS")]
    pub default_timeout_ms: Option<u64>,
    /// Largest client request in bytes [default: 4194304].
    #[arg(long, env = "NACOSD_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<usize>,
    /// RocksDB memory in MiB, memtables and block cache together [default: 16].
    #[arg(long, env = "NACOSD_STORAGE_MEMORY_MIB")]
    pub storage_memory_mib: Option<usize>,
    /// Newest log entries kept in memory per group, in MiB; 0 turns it off [default: 2].
    #[arg(long, env = "NACOSD_LOG_CACHE_MIB")]
    pub log_cache_mib: Option<usize>,
    /// Recently written values the apply path reads back, kept in memory per group, in
    /// MiB; 0 turns it off [default: 16].
    #[arg(long, env = "NACOSD_STATE_CACHE_MIB")]
    pub state_cache_mib: Option<usize>,
    /// Page cache of each of the embedded DB's two SQLite connections, in KiB, 64 to
    /// 1048576 [default: 512]; raise it for queries over more data than that.
    #[arg(long, env = "NACOSD_DB_PAGE_CACHE_KIB")]
    pub db_page_cache_kib: Option<usize>,
    /// Worker threads for client requests (client and HTTP ports, Distro, forwarding);
    /// 0 means one per CPU core [default: 0].
    #[arg(long, env = "NACOSD_CLIENT_THREADS")]
    pub client_threads: Option<usize>,
    /// Worker threads for the Raft groups and the peer port, at most one per CPU core
    /// [default: 2].
    #[arg(long, env = "NACOSD_RAFT_THREADS")]
    pub raft_threads: Option<usize>,
    /// Largest configuration content in bytes [default: 102400].
    #[arg(long, env = "NACOSD_MAX_CONFIG_BYTES")]
    pub max_config_bytes: Option<usize>,
    /// Revisions of history kept per configuration item [default: 30].
    #[arg(long, env = "NACOSD_CONFIG_HISTORY_LIMIT")]
    pub config_history_limit: Option<u32>,
    /// Embedded DB: statements in one request [default: 100].
    #[arg(long, env = "NACOSD_DB_MAX_STATEMENTS")]
    pub db_max_statements: Option<usize>,
    /// Embedded DB: SQL text of one statement, in bytes [default: 65536].
    #[arg(long, env = "NACOSD_DB_MAX_SQL_BYTES")]
    pub db_max_sql_bytes: Option<usize>,
    /// Embedded DB: rows one query statement returns [default: 10000].
    #[arg(long, env = "NACOSD_DB_MAX_ROWS")]
    pub db_max_rows: Option<u32>,
    /// Session TTL when the client asks for none, in milliseconds [default: 15000].
    #[arg(long, env = "NACOSD_SESSION_TTL_MS")]
    pub session_ttl_ms: Option<u64>,
    /// Longest session TTL a client may ask for, in milliseconds [default: 300000].
    #[arg(long, env = "NACOSD_SESSION_MAX_TTL_MS")]
    pub session_max_ttl_ms: Option<u64>,
    /// Share of the TTL without keep-alive after which a session's instances are
    /// unhealthy, in percent [default: 50].
    #[arg(long, env = "NACOSD_SESSION_UNHEALTHY_PERCENT")]
    pub session_unhealthy_percent: Option<u32>,
    /// Distro: delay (merge window) of a sync to the other nodes, in ms [default: 1000].
    #[arg(long, env = "NACOSD_DISTRO_SYNC_DELAY_MS")]
    pub distro_sync_delay_ms: Option<u64>,
    /// Distro: first retry delay of a failed sync, in ms; doubles up to 10x [default: 3000].
    #[arg(long, env = "NACOSD_DISTRO_SYNC_RETRY_MS")]
    pub distro_sync_retry_ms: Option<u64>,
    /// Distro: deadline of one call to a peer, in ms [default: 3000].
    #[arg(long, env = "NACOSD_DISTRO_SYNC_TIMEOUT_MS")]
    pub distro_sync_timeout_ms: Option<u64>,
    /// Distro: verify interval, in ms [default: 5000].
    #[arg(long, env = "NACOSD_DISTRO_VERIFY_INTERVAL_MS")]
    pub distro_verify_interval_ms: Option<u64>,
    /// Distro: drop another node's sessions it has not verified for this long, in ms
    /// [default: 180000].
    #[arg(long, env = "NACOSD_DISTRO_REPLICA_EXPIRY_MS")]
    pub distro_replica_expiry_ms: Option<u64>,
    /// Distro: retry delay of the startup snapshot load, in ms [default: 30000].
    #[arg(long, env = "NACOSD_DISTRO_LOAD_RETRY_MS")]
    pub distro_load_retry_ms: Option<u64>,
    /// Nacos front end: probe a connection silent this long, in ms [default: 20000].
    #[arg(long, env = "NACOSD_NACOS_IDLE_PROBE_MS")]
    pub nacos_idle_probe_ms: Option<u64>,
    /// Nacos front end: close a probed connection that does not answer within this,
    /// in ms [default: 5000].
    #[arg(long, env = "NACOSD_NACOS_PROBE_TIMEOUT_MS")]
    pub nacos_probe_timeout_ms: Option<u64>,
    /// TLS certificate (PEM chain) of the client and HTTP ports; with --tls-key.
    #[arg(long, env = "NACOSD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) of the client and HTTP ports.
    #[arg(long, env = "NACOSD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Peer-port certificate (PEM chain, server and client authentication); with
    /// --peer-key and --peer-ca it turns on mutual TLS between nodes.
    #[arg(long, env = "NACOSD_PEER_CERT")]
    pub peer_cert: Option<PathBuf>,
    /// Peer-port private key (PEM).
    #[arg(long, env = "NACOSD_PEER_KEY")]
    pub peer_key: Option<PathBuf>,
    /// Cluster CA (PEM): every peer's certificate must be signed by it.
    #[arg(long, env = "NACOSD_PEER_CA")]
    pub peer_ca: Option<PathBuf>,
    /// Client CA (PEM), with --tls-cert and --auth: a client presenting a certificate
    /// signed by it logs in as the user its subject common name names. Keep it apart
    /// from --peer-ca.
    #[arg(long, env = "NACOSD_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// Allow a multi-node cluster with a plaintext peer port (development only).
    #[arg(long, env = "NACOSD_INSECURE_PEER", num_args = 0..=1, default_missing_value = "true")]
    pub insecure_peer: Option<bool>,
    /// Require authentication (a token from Login) for client calls.
    #[arg(long, env = "NACOSD_AUTH", num_args = 0..=1, default_missing_value = "true")]
    pub auth: Option<bool>,
    /// Lifetime of a login token in seconds [default: 1800].
    #[arg(long, env = "NACOSD_AUTH_TOKEN_TTL_SECS")]
    pub auth_token_ttl_secs: Option<u64>,
    /// Failed logins per user name per minute on each node before Login refuses that
    /// user for a while; 0: no limit [default: 5].
    #[arg(long, env = "NACOSD_LOGIN_FAILURES_PER_USER")]
    pub login_failures_per_user: Option<u32>,
    /// Failed logins per client address per minute on each node before Login
    /// refuses that address for a while; 0: no limit [default: 20].
    #[arg(long, env = "NACOSD_LOGIN_FAILURES_PER_ADDRESS")]
    pub login_failures_per_address: Option<u32>,
    /// File holding the password of the first `admin` user, created when the cluster
    /// has no users (no default password exists).
    #[arg(long, env = "NACOSD_INITIAL_ADMIN_PASSWORD_FILE")]
    pub initial_admin_password_file: Option<PathBuf>,
    /// Serve the HTTP port (metrics, probes) over TLS with --tls-cert/--tls-key
    /// (Kubernetes probes then use scheme HTTPS).
    #[arg(long, env = "NACOSD_HTTP_TLS", num_args = 0..=1, default_missing_value = "true")]
    pub http_tls: Option<bool>,
    /// File holding a bearer token that /metrics requires (the probes stay open).
    #[arg(long, env = "NACOSD_METRICS_TOKEN_FILE")]
    pub metrics_token_file: Option<PathBuf>,
}

impl ConfigArgs {
    /// Fill unset fields from `other`.
    fn or(self, other: ConfigArgs) -> ConfigArgs {
        ConfigArgs {
            config: self.config.or(other.config),
            node_id: self.node_id.or(other.node_id),
            data_dir: self.data_dir.or(other.data_dir),
            client_addr: self.client_addr.or(other.client_addr),
            peer_addr: self.peer_addr.or(other.peer_addr),
            http_addr: self.http_addr.or(other.http_addr),
            advertise_peer: self.advertise_peer.or(other.advertise_peer),
            initial_members: self.initial_members.or(other.initial_members),
            initial_cluster_state: self.initial_cluster_state.or(other.initial_cluster_state),
            join: self.join.or(other.join),
            learner: self.learner.or(other.learner),
            force_new_cluster: self.force_new_cluster.or(other.force_new_cluster),
            heartbeat_ms: self.heartbeat_ms.or(other.heartbeat_ms),
            election_timeout_min_ms: self
                .election_timeout_min_ms
                .or(other.election_timeout_min_ms),
            election_timeout_max_ms: self
                .election_timeout_max_ms
                .or(other.election_timeout_max_ms),
            snapshot_logs: self.snapshot_logs.or(other.snapshot_logs),
            snapshot_interval_secs: self.snapshot_interval_secs.or(other.snapshot_interval_secs),
            snapshot_keep_logs: self.snapshot_keep_logs.or(other.snapshot_keep_logs),
            default_timeout_ms: self.default_timeout_ms.or(other.default_timeout_ms),
            max_request_bytes: self.max_request_bytes.or(other.max_request_bytes),
            storage_memory_mib: self.storage_memory_mib.or(other.storage_memory_mib),
            log_cache_mib: self.log_cache_mib.or(other.log_cache_mib),
            state_cache_mib: self.state_cache_mib.or(other.state_cache_mib),
            db_page_cache_kib: self.db_page_cache_kib.or(other.db_page_cache_kib),
            client_threads: self.client_threads.or(other.client_threads),
            raft_threads: self.raft_threads.or(other.raft_threads),
            max_config_bytes: self.max_config_bytes.or(other.max_config_bytes),
            config_history_limit: self.config_history_limit.or(other.config_history_limit),
            db_max_statements: self.db_max_statements.or(other.db_max_statements),
            db_max_sql_bytes: self.db_max_sql_bytes.or(other.db_max_sql_bytes),
            db_max_rows: self.db_max_rows.or(other.db_max_rows),
            session_ttl_ms: self.session_ttl_ms.or(other.session_ttl_ms),
            session_max_ttl_ms: self.session_max_ttl_ms.or(other.session_max_ttl_ms),
            session_unhealthy_percent: self
                .session_unhealthy_percent
                .or(other.session_unhealthy_percent),
            distro_sync_delay_ms: self.distro_sync_delay_ms.or(other.distro_sync_delay_ms),
            distro_sync_retry_ms: self.distro_sync_retry_ms.or(other.distro_sync_retry_ms),
            distro_sync_timeout_ms: self.distro_sync_timeout_ms.or(other.distro_sync_timeout_ms),
            distro_verify_interval_ms: self
                .distro_verify_interval_ms
                .or(other.distro_verify_interval_ms),
            distro_replica_expiry_ms: self
                .distro_replica_expiry_ms
                .or(other.distro_replica_expiry_ms),
            distro_load_retry_ms: self.distro_load_retry_ms.or(other.distro_load_retry_ms),
            nacos_idle_probe_ms: self.nacos_idle_probe_ms.or(other.nacos_idle_probe_ms),
            nacos_probe_timeout_ms: self.nacos_probe_timeout_ms.or(other.nacos_probe_timeout_ms),
            tls_cert: self.tls_cert.or(other.tls_cert),
            tls_key: self.tls_key.or(other.tls_key),
            peer_cert: self.peer_cert.or(other.peer_cert),
            peer_key: self.peer_key.or(other.peer_key),
            peer_ca: self.peer_ca.or(other.peer_ca),
            client_ca: self.client_ca.or(other.client_ca),
            insecure_peer: self.insecure_peer.or(other.insecure_peer),
            auth: self.auth.or(other.auth),
            auth_token_ttl_secs: self.auth_token_ttl_secs.or(other.auth_token_ttl_secs),
            login_failures_per_user: self
                .login_failures_per_user
                .or(other.login_failures_per_user),
            login_failures_per_address: self
                .login_failures_per_address
                .or(other.login_failures_per_address),
            initial_admin_password_file: self
                .initial_admin_password_file
                .or(other.initial_admin_password_file),
            http_tls: self.http_tls.or(other.http_tls),
            metrics_token_file: self.metrics_token_file.or(other.metrics_token_file),
        }
    }

    /// Layer flags/env over the config file (if any) over the defaults, and validate.
    pub fn resolve(self) -> Result<Config> {
        let args = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Error::invalid(format!("reading config file {}: {e}", path.display()))
                })?;
                let file: ConfigArgs = toml::from_str(&text)
                    .map_err(|e| Error::invalid(format!("config file {}: {e}", path.display())))?;
                self.or(file)
            }
            None => self,
        };
        let d = Config::default();
        let ms = Duration::from_millis;
        let mut c = Config {
            node_id: args.node_id.unwrap_or(d.node_id),
            data_dir: args.data_dir.unwrap_or(d.data_dir),
            client_addr: args.client_addr.unwrap_or(d.client_addr),
            peer_addr: args.peer_addr.unwrap_or(d.peer_addr),
            http_addr: args.http_addr.unwrap_or(d.http_addr),
            advertise_peer: args.advertise_peer.unwrap_or_default(),
            initial_members: match &args.initial_members {
                Some(s) => parse_members(s)?,
                None => BTreeMap::new(),
            },
            initial_cluster_state: args.initial_cluster_state.unwrap_or_default(),
            join: args.join.clone().filter(|j| !j.is_empty()),
            learner: args.learner.unwrap_or(false),
            force_new_cluster: args.force_new_cluster.unwrap_or(false),
            heartbeat: args.heartbeat_ms.map(ms).unwrap_or(d.heartbeat),
            election_timeout: (
                args.election_timeout_min_ms
                    .map(ms)
                    .unwrap_or(d.election_timeout.0),
                args.election_timeout_max_ms
                    .map(ms)
                    .unwrap_or(d.election_timeout.1),
            ),
            snapshot_logs: args.snapshot_logs.unwrap_or(d.snapshot_logs),
            snapshot_interval: args
                .snapshot_interval_secs
                .map(Duration::from_secs)
                .unwrap_or(d.snapshot_interval),
            snapshot_keep_logs: args.snapshot_keep_logs.unwrap_or(d.snapshot_keep_logs),
            default_timeout: args.default_timeout_ms.map(ms).unwrap_or(d.default_timeout),
            max_request_bytes: args.max_request_bytes.unwrap_or(d.max_request_bytes),
            storage_memory_mib: args.storage_memory_mib.unwrap_or(d.storage_memory_mib),
            log_cache_mib: args.log_cache_mib.unwrap_or(d.log_cache_mib),
            state_cache_mib: args.state_cache_mib.unwrap_or(d.state_cache_mib),
            db_page_cache_kib: args.db_page_cache_kib.unwrap_or(d.db_page_cache_kib),
            client_threads: args.client_threads.unwrap_or(d.client_threads),
            raft_threads: args.raft_threads.unwrap_or(d.raft_threads),
            max_config_bytes: args.max_config_bytes.unwrap_or(d.max_config_bytes),
            config_history_limit: args.config_history_limit.unwrap_or(d.config_history_limit),
            db_limits: DbLimits {
                max_statements: args.db_max_statements.unwrap_or(d.db_limits.max_statements),
                max_sql_bytes: args.db_max_sql_bytes.unwrap_or(d.db_limits.max_sql_bytes),
                max_rows: args.db_max_rows.unwrap_or(d.db_limits.max_rows),
            },
            distro: {
                let dd = d.distro;
                DistroSettings {
                    session_ttl: args.session_ttl_ms.map(ms).unwrap_or(dd.session_ttl),
                    session_max_ttl: args
                        .session_max_ttl_ms
                        .map(ms)
                        .unwrap_or(dd.session_max_ttl),
                    session_unhealthy_percent: args
                        .session_unhealthy_percent
                        .unwrap_or(dd.session_unhealthy_percent),
                    sync_delay: args.distro_sync_delay_ms.map(ms).unwrap_or(dd.sync_delay),
                    sync_retry: args.distro_sync_retry_ms.map(ms).unwrap_or(dd.sync_retry),
                    sync_timeout: args
                        .distro_sync_timeout_ms
                        .map(ms)
                        .unwrap_or(dd.sync_timeout),
                    verify_interval: args
                        .distro_verify_interval_ms
                        .map(ms)
                        .unwrap_or(dd.verify_interval),
                    replica_expiry: args
                        .distro_replica_expiry_ms
                        .map(ms)
                        .unwrap_or(dd.replica_expiry),
                    load_retry: args.distro_load_retry_ms.map(ms).unwrap_or(dd.load_retry),
                }
            },
            nacos: NacosSettings {
                idle_probe_after: args
                    .nacos_idle_probe_ms
                    .map(ms)
                    .unwrap_or(d.nacos.idle_probe_after),
                probe_timeout: args
                    .nacos_probe_timeout_ms
                    .map(ms)
                    .unwrap_or(d.nacos.probe_timeout),
            },
            client_tls: match (args.tls_cert, args.tls_key, args.client_ca) {
                (Some(cert), Some(key), ca) => Some(CertFiles { cert, key, ca }),
                (None, None, None) => None,
                (None, None, Some(_)) => return Err(Error::invalid(
                    "client-ca needs tls-cert and tls-key (client certificates are part of TLS)",
                )),
                _ => return Err(Error::invalid("tls-cert and tls-key go together")),
            },
            peer_tls: match (args.peer_cert, args.peer_key, args.peer_ca) {
                (Some(cert), Some(key), Some(ca)) => Some(CertFiles {
                    cert,
                    key,
                    ca: Some(ca),
                }),
                (None, None, None) => None,
                _ => {
                    return Err(Error::invalid(
                        "mutual TLS between peers needs all of peer-cert, peer-key and peer-ca",
                    ))
                }
            },
            insecure_peer: args.insecure_peer.unwrap_or(false),
            auth: AuthConfig {
                enabled: args.auth.unwrap_or(false),
                token_ttl: args
                    .auth_token_ttl_secs
                    .map(Duration::from_secs)
                    .unwrap_or(d.auth.token_ttl),
                initial_admin_password: match &args.initial_admin_password_file {
                    Some(path) => Some(read_secret_file(path)?),
                    None => None,
                },
                login_limits: LoginLimits {
                    per_user: args
                        .login_failures_per_user
                        .unwrap_or(d.auth.login_limits.per_user),
                    per_address: args
                        .login_failures_per_address
                        .unwrap_or(d.auth.login_limits.per_address),
                },
            },
            http_tls: args.http_tls.unwrap_or(false),
            metrics_token: match &args.metrics_token_file {
                Some(path) => Some(read_secret_file(path)?),
                None => None,
            },
        };
        c.fill_advertise_peer();
        c.validate()?;
        Ok(c)
    }
}

/// `flag`'s `value` must lie in `range`: an error naming both otherwise.
fn within(flag: &str, value: usize, range: std::ops::RangeInclusive<usize>) -> Result<()> {
    if range.contains(&value) {
        return Ok(());
    }
    Err(Error::invalid(format!(
        "{flag} {value} is outside {}..={}",
        range.start(),
        range.end()
    )))
}

impl Config {
    /// Default the advertised address from the member list or the peer port.
    pub fn fill_advertise_peer(&mut self) {
        if self.advertise_peer.is_empty() {
            self.advertise_peer = match self.initial_members.get(&self.node_id) {
                Some(addr) => addr.clone(),
                None => format!("127.0.0.1:{}", self.peer_addr.port()),
            };
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.node_id == 0 {
            return Err(Error::invalid("node-id must be at least 1"));
        }
        if !self.initial_members.is_empty() && !self.initial_members.contains_key(&self.node_id) {
            return Err(Error::invalid(format!(
                "initial-members does not include this node (id {})",
                self.node_id
            )));
        }
        if let Some(addr) = self.initial_members.get(&self.node_id) {
            if addr != &self.advertise_peer {
                return Err(Error::invalid(format!(
                    "advertise-peer {} differs from this node's initial-members entry {addr}",
                    self.advertise_peer
                )));
            }
        }
        if let Some(j) = &self.join {
            if !is_host_port(j) {
                return Err(Error::invalid(format!("join {j:?} is not HOST:PORT")));
            }
        }
        if self.learner && self.join.is_none() && self.initial_members.is_empty() {
            return Err(Error::invalid(
                "learner only applies to a node that joins a cluster (--join or --initial-members)",
            ));
        }
        let (min, max) = self.election_timeout;
        if self.heartbeat.is_zero() || min <= self.heartbeat * 2 || max <= min {
            return Err(Error::invalid(format!(
                "need 0 < 2 * heartbeat ({:?}) < election-timeout-min ({min:?}) < election-timeout-max ({max:?})",
                self.heartbeat
            )));
        }
        if self.snapshot_interval < Duration::from_secs(1) {
            return Err(Error::invalid("snapshot-interval-secs must be at least 1"));
        }
        if self.snapshot_logs == 0 {
            return Err(Error::invalid("snapshot-logs must be at least 1"));
        }
        within("storage-memory-mib", self.storage_memory_mib, 8..=65536)?;
        for (flag, mib) in [
            ("log-cache-mib", self.log_cache_mib),
            ("state-cache-mib", self.state_cache_mib),
        ] {
            if mib > 4096 {
                return Err(Error::invalid(format!("{flag} {mib} is above 4096")));
            }
        }
        within("db-page-cache-kib", self.db_page_cache_kib, 64..=1 << 20)?;
        if self.client_threads > 1024 {
            return Err(Error::invalid(format!(
                "client-threads {} is above 1024 (0 means one per CPU core)",
                self.client_threads
            )));
        }
        within("raft-threads", self.raft_threads, 1..=64)?;
        if self.max_request_bytes < 1024 || self.max_request_bytes > 64 << 20 {
            return Err(Error::invalid(
                "max-request-bytes must be between 1024 and 67108864 (64 MiB)",
            ));
        }
        if self.max_config_bytes == 0 || self.max_config_bytes + 64 * 1024 > self.max_request_bytes
        {
            return Err(Error::invalid(format!(
                "max-config-bytes must be positive and at least 64 KiB below max-request-bytes ({})",
                self.max_request_bytes
            )));
        }
        if self.config_history_limit == 0 {
            return Err(Error::invalid("config-history-limit must be at least 1"));
        }
        let db = &self.db_limits;
        if db.max_statements == 0 || db.max_statements > 10_000 {
            return Err(Error::invalid(
                "db-max-statements must be between 1 and 10000",
            ));
        }
        if db.max_sql_bytes < 64 || db.max_sql_bytes > self.max_request_bytes {
            return Err(Error::invalid(format!(
                "db-max-sql-bytes must be between 64 and max-request-bytes ({})",
                self.max_request_bytes
            )));
        }
        if db.max_rows == 0 || db.max_rows > 1_000_000 {
            return Err(Error::invalid("db-max-rows must be between 1 and 1000000"));
        }
        if self.http_tls && self.client_tls.is_none() {
            return Err(Error::invalid("http-tls needs tls-cert and tls-key"));
        }
        if self.client_tls.as_ref().is_some_and(|t| t.ca.is_some()) && !self.auth.enabled {
            return Err(Error::invalid(
                "client-ca needs --auth: without it every caller may do everything, and a client certificate would mean nothing",
            ));
        }
        if self.is_multi_node() && self.peer_tls.is_none() && !self.insecure_peer {
            return Err(Error::invalid(
                "a multi-node cluster needs mutual TLS on the peer port (peer-cert, peer-key, peer-ca; see docs/SECURITY.md); \
                 to run one in plaintext anyway pass --insecure-peer (anyone who can reach the peer port can then vote, append and forward writes)",
            ));
        }
        if self.auth.token_ttl < Duration::from_secs(1)
            || self.auth.token_ttl > Duration::from_secs(24 * 3600)
        {
            return Err(Error::invalid(
                "auth-token-ttl-secs must be between 1 and 86400",
            ));
        }
        self.validate_distro()?;
        self.validate_nacos()
    }

    /// The Nacos front end's connection probes.
    fn validate_nacos(&self) -> Result<()> {
        at_least_10ms(&[
            ("nacos-idle-probe-ms", self.nacos.idle_probe_after),
            ("nacos-probe-timeout-ms", self.nacos.probe_timeout),
        ])
    }

    fn validate_distro(&self) -> Result<()> {
        let d = &self.distro;
        if d.session_max_ttl < MIN_SESSION_TTL
            || d.session_ttl < MIN_SESSION_TTL
            || d.session_ttl > d.session_max_ttl
        {
            return Err(Error::invalid(format!(
                "need {} ms <= session-ttl-ms ({}) <= session-max-ttl-ms ({})",
                MIN_SESSION_TTL.as_millis(),
                d.session_ttl.as_millis(),
                d.session_max_ttl.as_millis()
            )));
        }
        if d.session_unhealthy_percent == 0 || d.session_unhealthy_percent > 100 {
            return Err(Error::invalid(
                "session-unhealthy-percent must be between 1 and 100 (100: never unhealthy before expiry)",
            ));
        }
        at_least_10ms(&[
            ("distro-sync-retry-ms", d.sync_retry),
            ("distro-sync-timeout-ms", d.sync_timeout),
            ("distro-verify-interval-ms", d.verify_interval),
            ("distro-load-retry-ms", d.load_retry),
        ])?;
        if d.replica_expiry <= d.verify_interval {
            return Err(Error::invalid(format!(
                "distro-replica-expiry-ms ({}) must be longer than distro-verify-interval-ms ({}), or live replicas would expire between verifies",
                d.replica_expiry.as_millis(),
                d.verify_interval.as_millis()
            )));
        }
        Ok(())
    }

    /// Whether this node is (or joins) a cluster of more than one node.
    pub fn is_multi_node(&self) -> bool {
        self.initial_members.len() > 1 || self.join.is_some()
    }

    /// Largest peer message: an append-entries batch holds up to
    /// [`MAX_ENTRIES_PER_APPEND`] entries, each at most one client request.
    pub fn peer_message_limit(&self) -> usize {
        (64 << 20)
            .max(MAX_ENTRIES_PER_APPEND as usize * (self.max_request_bytes + 4096) + (1 << 20))
    }

    pub fn is_standalone(&self) -> bool {
        self.initial_members.len() <= 1
    }
}

/// Each named interval must be at least 10 ms (shorter ones would spin).
fn at_least_10ms(intervals: &[(&str, Duration)]) -> Result<()> {
    match intervals
        .iter()
        .find(|(_, v)| *v < Duration::from_millis(10))
    {
        Some((name, _)) => Err(Error::invalid(format!("{name} must be at least 10"))),
        None => Ok(()),
    }
}

/// A secret file's first line (a password, a token), which must not be empty.
fn read_secret_file(path: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::invalid(format!("secret file {}: {e}", path.display())))?;
    let password = text.lines().next().unwrap_or_default().to_string();
    if password.is_empty() {
        return Err(Error::invalid(format!(
            "secret file {} is empty",
            path.display()
        )));
    }
    Ok(password)
}

/// `host:port` with a non-empty host and a port in 1..=65535.
pub fn is_host_port(addr: &str) -> bool {
    addr.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
}

/// Parse `"1=host:7848,2=host:7848"`.
pub fn parse_members(s: &str) -> Result<BTreeMap<NodeId, String>> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part.split_once('=').ok_or_else(|| {
            Error::invalid(format!(
                "initial-members entry {part:?} is not ID=HOST:PORT"
            ))
        })?;
        let id: NodeId = id.trim().parse().map_err(|_| {
            Error::invalid(format!(
                "initial-members entry {part:?}: {id:?} is not a node id"
            ))
        })?;
        let addr = addr.trim();
        if !is_host_port(addr) {
            return Err(Error::invalid(format!(
                "initial-members entry {part:?}: {addr:?} is not HOST:PORT"
            )));
        }
        if id == 0 {
            return Err(Error::invalid("initial-members: node ids start at 1"));
        }
        if out.insert(id, addr.to_string()).is_some() {
            return Err(Error::invalid(format!(
                "initial-members: node id {id} listed twice"
            )));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_parse_and_reject_bad_entries() {
        let m = parse_members("1=a:7848, 2=node-2.nacosd.svc:7848,3=[::1]:9").unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[&2], "node-2.nacosd.svc:7848");
        for bad in [
            "1",
            "x=a:1",
            "1=a",
            "1=a:0",
            "1=:80",
            "0=a:1",
            "1=a:1,1=b:2",
        ] {
            assert!(parse_members(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn flags_override_file_override_defaults() {
        let td = tempfile::tempdir().unwrap();
        let file = td.path().join("n.toml");
        std::fs::write(
            &file,
            "node-id = 2\nheartbeat-ms = 100\nsnapshot-logs = 5\n",
        )
        .unwrap();
        let args = ConfigArgs {
            config: Some(file),
            snapshot_logs: Some(7),
            initial_members: Some("1=a:1,2=b:2".into()),
            insecure_peer: Some(true),
            ..Default::default()
        };
        let c = args.resolve().unwrap();
        assert_eq!(c.node_id, 2);
        assert_eq!(c.heartbeat, Duration::from_millis(100));
        assert_eq!(c.snapshot_logs, 7);
        assert_eq!(c.advertise_peer, "b:2");
        assert_eq!(c.snapshot_keep_logs, Config::default().snapshot_keep_logs);
    }

    #[test]
    fn unknown_file_keys_and_bad_timing_are_errors() {
        let td = tempfile::tempdir().unwrap();
        let file = td.path().join("n.toml");
        std::fs::write(&file, "nodeid = 2\n").unwrap();
        let err = ConfigArgs {
            config: Some(file),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("nodeid"), "{err}");

        let err = ConfigArgs {
            heartbeat_ms: Some(1000),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("heartbeat"), "{err}");

        let err = ConfigArgs {
            node_id: Some(4),
            initial_members: Some("1=a:1,2=b:2".into()),
            insecure_peer: Some(true),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("does not include"), "{err}");
    }

    #[test]
    fn storage_memory_is_split_and_bounded() {
        let c = ConfigArgs {
            storage_memory_mib: Some(16),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        let budget = crate::raft::rocks::StorageBudget::from_mib(c.storage_memory_mib);
        assert_eq!(budget.memtables, 12 << 20);
        assert_eq!(budget.block_cache, 4 << 20);
        for bad in [4, 100_000] {
            let err = ConfigArgs {
                storage_memory_mib: Some(bad),
                ..Default::default()
            }
            .resolve()
            .unwrap_err();
            assert!(err.to_string().contains("storage-memory-mib"), "{err}");
        }
    }

    #[test]
    fn db_page_cache_defaults_and_is_bounded() {
        let d = ConfigArgs::default().resolve().unwrap();
        assert_eq!(d.db_page_cache_kib, DEFAULT_DB_PAGE_CACHE_KIB);
        let c = ConfigArgs {
            db_page_cache_kib: Some(512),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(c.db_page_cache_kib, 512);
        for bad in [0, 63, (1 << 20) + 1] {
            let err = ConfigArgs {
                db_page_cache_kib: Some(bad),
                ..Default::default()
            }
            .resolve()
            .unwrap_err();
            assert!(err.to_string().contains("db-page-cache-kib"), "{err}");
        }
    }

    #[test]
    fn thread_counts_default_layer_and_are_bounded() {
        let d = ConfigArgs::default().resolve().unwrap();
        assert_eq!((d.client_threads, d.raft_threads), (0, 2));
        let td = tempfile::tempdir().unwrap();
        let file = td.path().join("n.toml");
        std::fs::write(&file, "client-threads = 3\nraft-threads = 1\n").unwrap();
        let c = ConfigArgs {
            config: Some(file),
            raft_threads: Some(4),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(
            (c.client_threads, c.raft_threads),
            (3, 4),
            "the file sets both, the flag wins for raft-threads"
        );
        for (args, flag) in [
            (
                ConfigArgs {
                    client_threads: Some(5000),
                    ..Default::default()
                },
                "client-threads 5000",
            ),
            (
                ConfigArgs {
                    raft_threads: Some(0),
                    ..Default::default()
                },
                "raft-threads 0",
            ),
        ] {
            let err = args.resolve().unwrap_err();
            assert!(err.to_string().contains(flag), "{err}");
        }
    }

    #[test]
    fn distro_settings_layer_and_are_validated() {
        let td = tempfile::tempdir().unwrap();
        let file = td.path().join("n.toml");
        std::fs::write(&file, "distro-sync-delay-ms = 50\nsession-ttl-ms = 2000\n").unwrap();
        let c = ConfigArgs {
            config: Some(file),
            session_ttl_ms: Some(3000),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(c.distro.sync_delay, Duration::from_millis(50));
        assert_eq!(c.distro.session_ttl, Duration::from_millis(3000));
        assert_eq!(c.distro.verify_interval, Duration::from_secs(5));
        for bad in [
            ConfigArgs {
                session_ttl_ms: Some(100),
                ..Default::default()
            },
            ConfigArgs {
                session_unhealthy_percent: Some(0),
                ..Default::default()
            },
            ConfigArgs {
                distro_replica_expiry_ms: Some(1000),
                distro_verify_interval_ms: Some(1000),
                ..Default::default()
            },
        ] {
            assert!(bad.resolve().is_err());
        }
    }

    #[test]
    fn security_flags_go_together() {
        let err = ConfigArgs {
            peer_cert: Some("n1.pem".into()),
            peer_key: Some("n1-key.pem".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("peer-ca"), "{err}");
        let err = ConfigArgs {
            tls_cert: Some("n1.pem".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("tls-key"), "{err}");
        let err = ConfigArgs {
            http_tls: Some(true),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("http-tls"), "{err}");
        let err = ConfigArgs {
            join: Some("a:1".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("--insecure-peer"), "{err}");
        let td = tempfile::tempdir().unwrap();
        let file = td.path().join("pw");
        std::fs::write(&file, "\n").unwrap();
        let err = ConfigArgs {
            initial_admin_password_file: Some(file),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        let err = ConfigArgs {
            client_ca: Some("clients.pem".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("tls-cert"), "{err}");
        let tls = || ConfigArgs {
            tls_cert: Some("n1.pem".into()),
            tls_key: Some("n1-key.pem".into()),
            client_ca: Some("clients.pem".into()),
            ..Default::default()
        };
        let err = tls().resolve().unwrap_err();
        assert!(err.to_string().contains("--auth"), "{err}");
        let c = ConfigArgs {
            auth: Some(true),
            ..tls()
        }
        .resolve()
        .unwrap();
        assert_eq!(
            c.client_tls.and_then(|t| t.ca),
            Some(PathBuf::from("clients.pem"))
        );
    }

    #[test]
    fn intervals_under_10_ms_are_refused_by_name() {
        for (args, name) in [
            (
                ConfigArgs {
                    distro_sync_retry_ms: Some(5),
                    ..Default::default()
                },
                "distro-sync-retry-ms",
            ),
            (
                ConfigArgs {
                    nacos_idle_probe_ms: Some(9),
                    ..Default::default()
                },
                "nacos-idle-probe-ms",
            ),
            (
                ConfigArgs {
                    nacos_probe_timeout_ms: Some(0),
                    ..Default::default()
                },
                "nacos-probe-timeout-ms",
            ),
        ] {
            let err = args.resolve().unwrap_err().to_string();
            assert!(
                err.contains(&format!("{name} must be at least 10")),
                "{err}"
            );
        }
        let ok = ConfigArgs {
            nacos_idle_probe_ms: Some(10),
            distro_sync_retry_ms: Some(10),
            ..Default::default()
        };
        assert!(ok.resolve().is_ok());
    }

    #[test]
    fn login_limits_default_and_layer() {
        let td = tempfile::tempdir().unwrap();
        let file = td.path().join("n.toml");
        std::fs::write(&file, "login-failures-per-user = 3\n").unwrap();
        let c = ConfigArgs {
            config: Some(file),
            login_failures_per_address: Some(0),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(
            c.auth.login_limits,
            LoginLimits {
                per_user: 3,
                per_address: 0
            }
        );
        assert_eq!(Config::default().auth.login_limits, LoginLimits::default());
    }

    #[test]
    fn db_limits_layer_and_are_validated() {
        let td = tempfile::tempdir().unwrap();
        let file = td.path().join("n.toml");
        std::fs::write(&file, "db-max-statements = 7\ndb-max-rows = 50\n").unwrap();
        let c = ConfigArgs {
            config: Some(file),
            db_max_rows: Some(20),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(
            c.db_limits,
            DbLimits {
                max_statements: 7,
                max_sql_bytes: DbLimits::default().max_sql_bytes,
                max_rows: 20,
            }
        );
        for (args, want) in [
            (
                ConfigArgs {
                    db_max_statements: Some(0),
                    ..Default::default()
                },
                "db-max-statements",
            ),
            (
                ConfigArgs {
                    db_max_sql_bytes: Some(8 << 20),
                    ..Default::default()
                },
                "db-max-sql-bytes",
            ),
            (
                ConfigArgs {
                    db_max_rows: Some(0),
                    ..Default::default()
                },
                "db-max-rows",
            ),
        ] {
            let err = args.resolve().unwrap_err();
            assert!(err.to_string().contains(want), "{err}");
        }
    }
}
