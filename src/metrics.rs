//! The node's metrics, on `prometheus-client` (the Prometheus project's own Rust
//! client: OpenMetrics text, typed families, histograms): chosen over hand-written
//! text so that names, types, label escaping and histogram buckets are right by
//! construction.
//!
//! Two kinds:
//! - **Recorded as things happen** ([`Metrics`], one per node, shared by `Arc`):
//!   histograms of gRPC calls by method (and calls by method and status code), WAL
//!   fsync latency and how many appends each fsync covered, write latency by group and
//!   path (proposed here or forwarded), read-index latency by group; the forwarding
//!   batches are in `peer::forward`.
//! - **Read at scrape time** (`http::render_metrics`): Raft state per group, the
//!   consistency-layer counters, replication lag per follower, RocksDB's memory by
//!   part, process memory and open files.
//!
//! prometheus-client ends every help text with a period of its own: ours have none.
//! Every metric is listed, with what to watch, in docs/OPERATIONS.md; the Grafana
//! dashboard `deploy/grafana/nacosd.json` shows them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tonic::codegen::http;

/// Latency buckets: 100 µs to about 26 s, doubling.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0001, 2.0, 19)
}

/// Count buckets (entries in a batch): 1 to 4096, doubling.
pub fn count_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(1.0, 2.0, 13)
}

fn latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

fn count_histogram() -> Histogram {
    Histogram::new(count_buckets())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodCodeLabels {
    pub method: String,
    /// The status code's name, as tonic's `Code` spells it (`Ok`, `NotFound`, ...).
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    pub group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    /// `user` (the user name's failures) or `address` (the client address's).
    pub limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabels {
    pub group: String,
    /// Which way it went; each metric's help text names its paths.
    pub path: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// What a node records as it runs.
#[derive(Debug)]
pub struct Metrics {
    grpc_calls: Family<MethodCodeLabels, Counter>,
    grpc_seconds: HistogramFamily<MethodLabels>,
    wal_sync_seconds: Histogram,
    wal_sync_appends: Histogram,
    write_seconds: HistogramFamily<PathLabels>,
    read_index_seconds: HistogramFamily<GroupLabels>,
    commit_seconds: HistogramFamily<GroupLabels>,
    apply_seconds: HistogramFamily<GroupLabels>,
    apply_entries: HistogramFamily<GroupLabels>,
    login_refused: Family<LimitLabels, Counter>,
    log_appends: Family<PathLabels, Counter>,
    raft_applies: Family<PathLabels, Counter>,
}

/// One group's counters of log appends by where their RocksDB write ran (see
/// `raft::log_store`), looked up once rather than per append.
#[derive(Clone, Debug, Default)]
pub struct AppendCounters {
    pub inline: Counter,
    pub large: Counter,
    pub stalled: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            grpc_calls: Family::default(),
            grpc_seconds: Family::new_with_constructor(latency_histogram),
            wal_sync_seconds: latency_histogram(),
            wal_sync_appends: Histogram::new(count_buckets()),
            write_seconds: Family::new_with_constructor(latency_histogram),
            read_index_seconds: Family::new_with_constructor(latency_histogram),
            commit_seconds: Family::new_with_constructor(latency_histogram),
            apply_seconds: Family::new_with_constructor(latency_histogram),
            apply_entries: Family::new_with_constructor(count_histogram),
            login_refused: Family::default(),
            log_appends: Family::default(),
            raft_applies: Family::default(),
        }
    }
}

impl Metrics {
    /// Adds every recorded metric to `registry` (the families are shared, not copied).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "nacosd_grpc_calls",
            "Client-port gRPC calls by method and status code",
            self.grpc_calls.clone(),
        );
        registry.register(
            "nacosd_grpc_seconds",
            "Client-port gRPC call latency by method, to the response headers (for streams: to the stream's start)",
            self.grpc_seconds.clone(),
        );
        registry.register(
            "nacosd_wal_sync_seconds",
            "Latency of one fsync of the RocksDB WAL (group commit for every group's log appends)",
            self.wal_sync_seconds.clone(),
        );
        registry.register(
            "nacosd_wal_sync_appends",
            "Log appends (and other durable writes) covered by one WAL fsync",
            self.wal_sync_appends.clone(),
        );
        registry.register(
            "nacosd_write_seconds",
            "Write latency in the consistency layer, by group and path (proposed here as leader, or forwarded to the leader), from arrival to the applied result",
            self.write_seconds.clone(),
        );
        registry.register(
            "nacosd_read_index_seconds",
            "Latency of obtaining a read index (LINEARIZABLE and LEASE reads), by group",
            self.read_index_seconds.clone(),
        );
        registry.register(
            "nacosd_raft_commit_seconds",
            "Per entry, by group: from its append to this node's log to its hand-off to the state machine (on the leader: log fsync, replication to a quorum, commit; on a follower: until the leader's commit index reached it)",
            self.commit_seconds.clone(),
        );
        registry.register(
            "nacosd_raft_apply_seconds",
            "Time to apply one batch of committed entries to the state machine, by group",
            self.apply_seconds.clone(),
        );
        registry.register(
            "nacosd_raft_apply_entries",
            "Entries in one applied batch, by group",
            self.apply_entries.clone(),
        );
        registry.register(
            "nacosd_login_refused",
            "Logins refused unchecked because too many failed recently, by the limit that refused them (user name or client address)",
            self.login_refused.clone(),
        );
        registry.register(
            "nacosd_log_appends",
            "Raft log appends by group and where their RocksDB write ran: inline on the Raft task's thread, or on the blocking pool because the batch was large or RocksDB reported a write stall",
            self.log_appends.clone(),
        );
        registry.register(
            "nacosd_raft_applies",
            "Batches of committed entries applied, by group and path: memory (on the Raft task's thread, every read answered from memory) or pool (on the blocking pool: a large batch, a read that needed the disk, a write stall, or a state machine that never tries memory)",
            self.raft_applies.clone(),
        );
    }

    /// The log-append counters of `group`.
    pub fn append_counters(&self, group: &str) -> AppendCounters {
        let counter = |path| {
            self.log_appends
                .get_or_create(&PathLabels {
                    group: group.to_string(),
                    path,
                })
                .clone()
        };
        AppendCounters {
            inline: counter("inline"),
            large: counter("large"),
            stalled: counter("stalled"),
        }
    }

    pub fn login_refused(&self, limit: &'static str) {
        self.login_refused
            .get_or_create(&LimitLabels { limit })
            .inc();
    }

    pub fn observe_wal_sync(&self, took: Duration, appends: usize) {
        self.wal_sync_seconds.observe(took.as_secs_f64());
        self.wal_sync_appends.observe(appends as f64);
    }

    pub fn observe_write(&self, group: &str, forwarded: bool, took: Duration) {
        let labels = PathLabels {
            group: group.to_string(),
            path: if forwarded { "forwarded" } else { "local" },
        };
        self.write_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// `entries` entries waited `waited` between their append and their commit.
    pub fn observe_commit(&self, group: &str, entries: u64, waited: Duration) {
        let h = self.commit_seconds.get_or_create(&GroupLabels {
            group: group.to_string(),
        });
        for _ in 0..entries {
            h.observe(waited.as_secs_f64());
        }
    }

    pub fn observe_apply(&self, group: &str, entries: usize, path: &'static str, took: Duration) {
        let labels = GroupLabels {
            group: group.to_string(),
        };
        self.apply_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        self.apply_entries
            .get_or_create(&labels)
            .observe(entries as f64);
        self.raft_applies
            .get_or_create(&PathLabels {
                group: labels.group,
                path,
            })
            .inc();
    }

    /// How many entries' commit waits were recorded for `group` (for tests).
    #[cfg(test)]
    pub fn commit_entries_observed(&self, group: &str) -> u64 {
        let mut registry = Registry::default();
        self.register(&mut registry);
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
            return 0;
        }
        let prefix = format!("nacosd_raft_commit_seconds_count{{group=\"{group}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn observe_read_index(&self, group: &str, took: Duration) {
        let labels = GroupLabels {
            group: group.to_string(),
        };
        self.read_index_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    fn observe_grpc(&self, method: String, code: tonic::Code, took: Duration) {
        self.grpc_calls
            .get_or_create(&MethodCodeLabels {
                method: method.clone(),
                code: code_label(code),
            })
            .inc();
        self.grpc_seconds
            .get_or_create(&MethodLabels { method })
            .observe(took.as_secs_f64());
    }
}

/// A status code's label: its name, without formatting one on every call.
fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "Ok",
        Cancelled => "Cancelled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// The method label of a request path: our services' and the standard ones' paths as
/// they are, anything else (unknown paths, which a client can make up at will) as
/// `other`, so that the label set stays bounded.
fn method_label(path: &str) -> String {
    const KNOWN: [&str; 3] = ["/nacosd.v1.", "/grpc.health.", "/grpc.reflection."];
    if KNOWN.iter().any(|p| path.starts_with(p)) && path.len() <= 128 {
        path.to_string()
    } else {
        "other".to_string()
    }
}

/// A tower layer for the client port: counts every call by method and status code and
/// records its latency.
#[derive(Clone)]
pub struct GrpcMetricsLayer(pub Arc<Metrics>);

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcMetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = method_label(req.uri().path());
        let started = Instant::now();
        let metrics = self.metrics.clone();
        let call = self.inner.call(req);
        Box::pin(async move {
            let result = call.await;
            // An error status travels in the headers of a trailers-only response; a
            // successful unary call's status is in the trailers, not seen here: OK.
            let code = match &result {
                Ok(resp) => resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from_i32),
                Err(_) => tonic::Code::Unknown,
            };
            metrics.observe_grpc(method, code, started.elapsed());
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn code_labels_are_the_codes_names() {
        for n in 0..=16 {
            let code = tonic::Code::from_i32(n);
            assert_eq!(code_label(code), format!("{code:?}"), "code {n}");
        }
    }

    #[test]
    fn unknown_paths_share_one_label() {
        assert_eq!(
            method_label("/nacosd.v1.ConfigService/GetConfig"),
            "/nacosd.v1.ConfigService/GetConfig"
        );
        assert_eq!(method_label("/made.up/Path"), "other");
        assert_eq!(
            method_label(&format!("/nacosd.v1.{}", "x".repeat(200))),
            "other"
        );
    }

    #[test]
    fn recorded_values_are_encoded() {
        let m = Metrics::default();
        m.observe_write("config", true, Duration::from_millis(3));
        m.observe_wal_sync(Duration::from_micros(300), 7);
        m.observe_grpc(
            "/nacosd.v1.ConfigService/GetConfig".into(),
            tonic::Code::NotFound,
            Duration::from_millis(1),
        );
        let mut registry = Registry::default();
        m.register(&mut registry);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("nacosd_write_seconds_count{group=\"config\",path=\"forwarded\"} 1"),
            "{text}"
        );
        assert!(text.contains("nacosd_wal_sync_appends_sum 7.0"), "{text}");
        assert!(
            text.contains(
                "nacosd_grpc_calls_total{method=\"/nacosd.v1.ConfigService/GetConfig\",code=\"NotFound\"} 1"
            ),
            "{text}"
        );
    }
}
