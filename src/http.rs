//! The HTTP port (8848): `/healthz` (the process is up), `/readyz` (the node has a
//! cluster identity, every group has a leader it is in contact with, and the ephemeral
//! data is loaded) and `/metrics` (OpenMetrics text, Distro's included).
//!
//! Nothing on this port changes data. The probes are always open (Kubernetes calls
//! them without credentials); `/metrics` can require `Authorization: Bearer <token>`
//! (`--metrics-token-file`). With `--http-tls` the port speaks TLS with the client
//! port's certificate ([`TlsListener`]).

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use openraft::rt::watch::WatchReceiver;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use crate::api::cluster::group_status;
use crate::distro::Distro;
use crate::metrics::GroupLabels;
use crate::pb;
use crate::raft::node::{GroupCounters, MultiRaft, NodeCounters};

#[derive(Clone)]
struct HttpState {
    node: Arc<MultiRaft>,
    distro: Arc<Distro>,
    /// SHA-256 of the bearer token `/metrics` requires, if any: comparing digests
    /// does not leak how much of a guessed token is right.
    metrics_token: Option<[u8; 32]>,
}

fn digest(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

pub fn router(node: Arc<MultiRaft>, distro: Arc<Distro>, metrics_token: Option<&str>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(HttpState {
            node,
            distro,
            metrics_token: metrics_token.map(digest),
        })
}

/// The HTTP port's connections after a TLS handshake (see `tls::tls_incoming`).
pub struct TlsListener<S> {
    pub conns: std::pin::Pin<Box<S>>,
    pub local: std::net::SocketAddr,
}

impl<S> axum::serve::Listener for TlsListener<S>
where
    S: futures::Stream<Item = std::io::Result<crate::tls::ServerConn>> + Send + 'static,
{
    type Io = crate::tls::ServerConn;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        use futures::StreamExt;
        loop {
            match self.conns.next().await {
                Some(Ok(conn)) => {
                    let addr = conn.remote_addr().unwrap_or(self.local);
                    return (conn, addr);
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "http accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

async fn readyz(State(HttpState { node, distro, .. }): State<HttpState>) -> impl IntoResponse {
    let mut body = String::new();
    match node.identity().cluster_id() {
        Some(c) => {
            let _ = writeln!(body, "cluster {c}");
        }
        None => {
            let _ = writeln!(
                body,
                "no cluster identity yet (bootstrapping or waiting to be admitted)"
            );
        }
    }
    for g in node.groups() {
        let leader = g.raft.metrics().borrow_watched().current_leader;
        let contact = match g.quorum_contact_age() {
            Some(age) if g.has_quorum_contact() => {
                format!("quorum contact {} ms ago", age.as_millis())
            }
            Some(age) => format!("NO quorum contact for {} ms", age.as_millis()),
            None => "NO quorum contact".to_string(),
        };
        let _ = match leader {
            Some(id) => writeln!(body, "{}: leader {id}, {contact}", g.name),
            None => writeln!(body, "{}: no leader, {contact}", g.name),
        };
    }
    let _ = writeln!(
        body,
        "ephemeral: {}",
        if distro.ready() {
            "ready"
        } else {
            "NOT ready (loading the snapshot from a peer)"
        }
    );
    if node.ready() && distro.ready() {
        (StatusCode::OK, body)
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body)
    }
}

type GaugeSpec = (
    &'static str,
    &'static str,
    fn(&pb::GroupStatus) -> Option<u64>,
);
type CounterSpec = (&'static str, &'static str, fn(&GroupCounters) -> u64);
type NodeCounterSpec = (&'static str, &'static str, fn(&NodeCounters) -> u64);

/// Per-group gauges, from the Raft metrics (`Status`).
const GAUGES: [GaugeSpec; 8] = [
    ("nacosd_raft_term", "Current Raft term.", |s| Some(s.term)),
    (
        "nacosd_raft_is_leader",
        "1 if this node leads the group.",
        |s| Some((s.role == pb::Role::Leader as i32) as u64),
    ),
    (
        "nacosd_raft_role",
        "Raft role: 1 leader, 2 follower, 3 candidate, 4 learner, 5 shutdown.",
        |s| Some(s.role as u64),
    ),
    (
        "nacosd_raft_leader_id",
        "Node id of the known leader (0: none).",
        |s| Some(s.leader_id.unwrap_or(0)),
    ),
    ("nacosd_raft_has_leader", "1 if a leader is known.", |s| {
        Some(s.leader_id.is_some() as u64)
    }),
    (
        "nacosd_raft_last_log_index",
        "Index of the last log entry.",
        |s| s.last_log_index,
    ),
    (
        "nacosd_raft_applied_index",
        "Index of the last applied entry.",
        |s| s.applied_index,
    ),
    (
        "nacosd_raft_snapshot_index",
        "Last index covered by the newest snapshot.",
        |s| s.snapshot_index,
    ),
];

/// Per-group counters of the consistency layer.
const COUNTERS: [CounterSpec; 11] = [
    (
        "nacosd_writes_local_total",
        "Writes proposed on this node as leader.",
        |c| c.writes_local.load(Ordering::Relaxed),
    ),
    (
        "nacosd_proposal_batches_total",
        "Batches of writes this node handed to the group's Raft core as leader, one message each; nacosd_writes_local_total divided by it is the writes per batch.",
        |c| c.proposal_batches.load(Ordering::Relaxed),
    ),
    (
        "nacosd_writes_forwarded_total",
        "Writes forwarded from this node to the leader.",
        |c| c.writes_forwarded.load(Ordering::Relaxed),
    ),
    (
        "nacosd_write_retries_total",
        "Write attempts retried because no leader took them.",
        |c| c.write_retries.load(Ordering::Relaxed),
    ),
    (
        "nacosd_leader_requests_abandoned_total",
        "Requests to the leader (forwarded writes, read indexes, reads) abandoned when leadership moved on first.",
        |c| c.forwards_abandoned.load(Ordering::Relaxed),
    ),
    (
        "nacosd_read_index_failures_total",
        "LINEARIZABLE and LEASE reads whose read-index step failed or timed out.",
        |c| c.read_index_failures.load(Ordering::Relaxed),
    ),
    (
        "nacosd_read_leader_fallbacks_total",
        "Reads executed on the leader after the local read-index path failed.",
        |c| c.leader_fallbacks.load(Ordering::Relaxed),
    ),
    (
        "nacosd_queries_in_memory_total",
        "Local queries answered from memory on the thread that received them.",
        |c| c.queries_in_memory.load(Ordering::Relaxed),
    ),
    (
        "nacosd_queries_blocking_total",
        "Local queries run on the blocking pool (data not all in memory, large queries, SQL).",
        |c| c.queries_blocking.load(Ordering::Relaxed),
    ),
    (
        "nacosd_append_streams_served_total",
        "Pipelined replication streams (AppendStream) this node served as a follower, one per replication session of a leader; a count that keeps rising means sessions keep breaking.",
        |c| c.append_streams_served.load(Ordering::Relaxed),
    ),
    (
        "nacosd_group_idle_flushes_total",
        "Flushes of this group's RocksDB memtables because it fell quiet while other groups still wrote (memtables holding 1 MiB or more); a quiet node flushes every group at once (nacosd_idle_flushes_total).",
        |c| c.idle_flushes.load(Ordering::Relaxed),
    ),
];

/// Node-wide counters.
const NODE_COUNTERS: [NodeCounterSpec; 3] = [
    (
        "nacosd_peer_calls_refused_total",
        "Peer calls refused: another cluster, or this node has no cluster identity yet.",
        |c| c.peer_calls_refused.load(Ordering::Relaxed),
    ),
    (
        "nacosd_bootstrap_probes_total",
        "Rounds of Hello probes of the initial members while bootstrapping.",
        |c| c.bootstrap_probes.load(Ordering::Relaxed),
    ),
    (
        "nacosd_idle_flushes_total",
        "RocksDB memtable flushes done because the node fell quiet after writes (memtables holding 1 MiB or more).",
        |c| c.idle_flushes.load(Ordering::Relaxed),
    ),
];

/// The Raft side of /metrics (OpenMetrics text): what [`MultiRaft::metrics`] recorded,
/// plus the values read now — Raft state and counters per group, replication lag per
/// follower, the forwarding batches, the process's memory and open files.
pub fn render_metrics(node: &MultiRaft) -> String {
    encode_registry(&raft_registry(node))
}

/// The whole /metrics page: the Raft side and the AP side (Distro).
pub fn render_all_metrics(node: &MultiRaft, distro: &Distro) -> String {
    let mut registry = raft_registry(node);
    crate::distro::metrics::register(distro, &mut registry);
    encode_registry(&registry)
}

fn encode_registry(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = encode(&mut out, registry) {
        tracing::warn!(error = %e, "encoding /metrics");
    }
    out
}

fn raft_registry(node: &MultiRaft) -> Registry {
    let mut registry = Registry::default();
    node.metrics.register(&mut registry);
    let statuses: Vec<_> = node
        .groups()
        .map(|g| (g.clone(), group_status(g)))
        .collect();
    let label = |group: &str| GroupLabels {
        group: group.to_string(),
    };
    for (name, help, f) in GAUGES {
        let family = Family::<GroupLabels, Gauge>::default();
        for (_, s) in &statuses {
            if let Some(v) = f(s) {
                family.get_or_create(&label(&s.group)).set(gauge_value(v));
            }
        }
        registry.register(name, help_text(help), family);
    }
    let memtables = Family::<GroupLabels, Gauge>::default();
    for (g, _) in &statuses {
        match node.group_memtables(&g.name) {
            Ok(bytes) => {
                memtables
                    .get_or_create(&label(&g.name))
                    .set(gauge_value(bytes));
            }
            Err(e) => tracing::debug!(error = %e, group = %g.name, "reading a group's memtables"),
        }
    }
    registry.register(
        "nacosd_group_memtable_bytes",
        "RocksDB memtable bytes of the group's column families (its log and state machine), within the memtables of nacosd_storage_memory_bytes",
        memtables,
    );
    let cache_bytes = Family::<GroupLabels, Gauge>::default();
    let cache_entries = Family::<GroupLabels, Gauge>::default();
    let log_reads = Family::<LogReadLabels, Counter>::default();
    for (g, _) in &statuses {
        let cache = crate::lock(&g.log_cache);
        cache_bytes
            .get_or_create(&label(&g.name))
            .set(gauge_value(cache.bytes() as u64));
        cache_entries
            .get_or_create(&label(&g.name))
            .set(gauge_value(cache.len() as u64));
        let (hits, misses) = cache.reads();
        for (from, n) in [("cache", hits), ("storage", misses)] {
            log_reads
                .get_or_create(&LogReadLabels {
                    group: g.name.to_string(),
                    from,
                })
                .inc_by(n);
        }
    }
    registry.register(
        "nacosd_log_cache_bytes",
        "Encoded bytes of the newest log entries kept in memory (within --log-cache-mib, for at most ten seconds after their append)",
        cache_bytes,
    );
    registry.register(
        "nacosd_log_cache_entries",
        "Newest log entries kept in memory",
        cache_entries,
    );
    registry.register(
        "nacosd_log_reads",
        "Reads of log entries (by the apply and the replication streams), answered from the log cache or from RocksDB",
        log_reads,
    );
    for (name, help, f) in COUNTERS {
        let family = Family::<GroupLabels, Counter>::default();
        for (g, _) in &statuses {
            family.get_or_create(&label(&g.name)).inc_by(f(&g.counters));
        }
        registry.register(counter_name(name), help_text(help), family);
    }
    for (name, help, f) in NODE_COUNTERS {
        registry.register(
            counter_name(name),
            help_text(help),
            ConstCounter::new(f(&node.counters)),
        );
    }
    let lag = Family::<ReplicaLabels, Gauge>::default();
    for (g, _) in &statuses {
        let m = g.raft.metrics().borrow_watched().clone();
        let last = m.last_log_index.unwrap_or(0);
        for (follower, matched) in m.replication.iter().flatten() {
            if *follower == node.node_id {
                continue;
            }
            let matched = matched.as_ref().map_or(0, |l| l.index);
            lag.get_or_create(&ReplicaLabels {
                group: g.name.to_string(),
                follower: follower.to_string(),
            })
            .set(gauge_value(last.saturating_sub(matched)));
        }
    }
    registry.register(
        "nacosd_raft_replication_lag_entries",
        "On the leader: entries of its log a follower has not acknowledged yet",
        lag,
    );
    let (calls, writes) = node.peers.batches().counts();
    registry.register(
        "nacosd_forward_calls",
        "ForwardWrites calls this node sent to leaders (each carries a batch of writes)",
        ConstCounter::new(calls),
    );
    registry.register(
        "nacosd_forwarded_writes",
        "Writes this node forwarded to leaders in ForwardWrites calls",
        ConstCounter::new(writes),
    );
    registry.register(
        "nacosd_forward_call_writes",
        "Writes per ForwardWrites call",
        node.peers.batches().sizes(),
    );
    let (calls, reads) = node.peers.read_indexes().counts();
    registry.register(
        "nacosd_read_index_calls",
        "ReadIndex calls this node sent to leaders as a follower (each serves the reads that queued before it)",
        ConstCounter::new(calls),
    );
    registry.register(
        "nacosd_read_index_call_reads",
        "Reads served by the ReadIndex calls this node sent to leaders",
        ConstCounter::new(reads),
    );
    match node.storage_memory() {
        Ok(m) => register_gauges(
            &mut registry,
            "nacosd_storage_memory_bytes",
            "RocksDB's memory by part: memtables and block cache (within --storage-memory-mib), table readers (index and filter blocks, outside it)",
            [
                ("memtables", m.memtables),
                ("block_cache", m.block_cache),
                ("table_readers", m.table_readers),
            ]
            .map(|(part, bytes)| (PartLabels { part }, bytes)),
        ),
        Err(e) => tracing::debug!(error = %e, "reading RocksDB's memory usage"),
    }
    if let Some(rss) = resident_bytes() {
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory of the nacosd process",
            ConstGauge::new(gauge_value(rss)),
        );
    }
    if let Some(stats) = allocator_bytes() {
        register_gauges(
            &mut registry,
            "nacosd_allocator_bytes",
            "The memory allocator's (jemalloc's) view of the heap: allocated (live objects), active (their pages), resident (pages it holds, including freed ones it has not yet returned), metadata, retained (address space kept for reuse, not resident)",
            stats.map(|(kind, bytes)| (AllocatorLabels { kind }, bytes)),
        );
    }
    registry.register(
        "nacosd_sqlite_memory_bytes",
        "Heap memory SQLite holds (the embedded DB's page caches, statements and schema), within nacosd_allocator_bytes",
        ConstGauge::new(gauge_value(crate::groups::db::sqlite_memory_bytes())),
    );
    let (purges, purged) = crate::idle::purge_counts();
    registry.register(
        "nacosd_allocator_idle_purges",
        "Times the allocator's freed pages were returned to the system because a node fell quiet after writes",
        ConstCounter::new(purges),
    );
    registry.register(
        "nacosd_allocator_purged_bytes",
        "Resident bytes the idle purges returned to the system",
        ConstCounter::new(purged),
    );
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        registry.register(
            "process_open_fds",
            "Open file descriptors of the nacosd process",
            ConstGauge::new(gauge_value(fds.count() as u64)),
        );
    }
    registry
}

/// Register `name` as a gauge with one series per `(labels, value)`.
fn register_gauges<L>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, u64)>,
) where
    L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
{
    let family = Family::<L, Gauge>::default();
    for (labels, value) in series {
        family.get_or_create(&labels).set(gauge_value(value));
    }
    registry.register(name, help, family);
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartLabels {
    part: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AllocatorLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LogReadLabels {
    group: String,
    from: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabels {
    group: String,
    follower: String,
}

/// prometheus-client ends a help text with a period of its own.
pub(crate) fn help_text(help: &str) -> &str {
    help.strip_suffix('.').unwrap_or(help)
}

/// prometheus-client adds `_total` to a counter's name itself.
pub(crate) fn counter_name(name: &str) -> &str {
    name.strip_suffix("_total").unwrap_or(name)
}

pub(crate) fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// jemalloc's statistics, refreshed for this read (`None` where nacosd does not use
/// jemalloc, or if it refuses).
#[cfg(target_os = "linux")]
fn allocator_bytes() -> Option<[(&'static str, u64); 5]> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().ok()?;
    let read = |r: tikv_jemalloc_ctl::Result<usize>| r.ok().map(|v| v as u64);
    Some([
        ("allocated", read(stats::allocated::read())?),
        ("active", read(stats::active::read())?),
        ("resident", read(stats::resident::read())?),
        ("metadata", read(stats::metadata::read())?),
        ("retained", read(stats::retained::read())?),
    ])
}

#[cfg(not(target_os = "linux"))]
fn allocator_bytes() -> Option<[(&'static str, u64); 5]> {
    None
}

/// The process's resident set size, from /proc (Linux only; `None` elsewhere).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

async fn metrics(State(state): State<HttpState>, headers: header::HeaderMap) -> impl IntoResponse {
    if let Some(want) = &state.metrics_token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given.map(digest).as_ref() != Some(want) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::CONTENT_TYPE, "text/plain")],
                "/metrics needs Authorization: Bearer <the token of --metrics-token-file>\n"
                    .to_string(),
            );
        }
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        render_all_metrics(&state.node, &state.distro),
    )
}
