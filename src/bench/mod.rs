//! The load generator behind `nacosctl bench`.
//!
//! Closed loop: each of `clients` tasks sends one request, waits for the answer,
//! records its latency and sends the next, so the offered load is whatever the
//! server sustains at that concurrency. Clients share `connections` HTTP/2
//! connections, spread round-robin over the endpoints. A warm-up phase runs the same
//! workload unrecorded, then the measured phase runs for a duration or an operation
//! count. Read workloads first write every key once, so that reads find something.
//!
//! The same put/get workloads run against etcd (`--target etcd`) through etcd's own
//! KV API, so the two systems are measured by the same client code.

pub mod client;
pub mod histogram;
pub mod report;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use crate::bench::client::{Client, Op, Rng};
use crate::bench::histogram::Histogram;
use crate::bench::report::{Latency, Report};
use crate::pb;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Publish configuration items with random data ids over the key space (a put).
    ConfigPublish,
    /// Read configuration items at `--level`.
    ConfigGet,
    /// Register persistent instances, spread over `--services` services.
    NamingRegister,
    /// Register ephemeral instances, spread over `--services` services: each client
    /// first opens a session (TTL 300 s, or the node's default if that is too long; no
    /// keep-alive, so keep runs shorter than half the TTL) on the node its connection
    /// reaches, so sessions are spread over every endpoint, like application instances
    /// each holding one connection.
    NamingRegisterEphemeral,
    /// One-row `Execute` into the embedded database.
    DbInsert,
    /// Reads (at `--level`) and publishes, `--read-ratio` of them reads.
    Mixed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Target {
    Nacosd,
    /// etcd's v3 KV API: config-publish is a Put, config-get a Range.
    Etcd,
    /// nacosd's Nacos 2.x front end (`src/nacos/`) on the same port: each connection is
    /// a Nacos connection (a bi-stream set up first), naming-register-ephemeral is an
    /// `InstanceRequest`, config-publish a `ConfigPublishRequest`, config-get a
    /// `ConfigQueryRequest` (local read, so `--level` does not apply).
    Nacos,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Level {
    Linearizable,
    /// nacosd only: leader lease instead of a quorum round.
    Lease,
    /// Local state of the contacted node (etcd: a serializable read).
    Stale,
}

impl Level {
    pub fn pb(self) -> pb::Consistency {
        match self {
            Level::Linearizable => pb::Consistency::Linearizable,
            Level::Lease => pb::Consistency::Lease,
            Level::Stale => pb::Consistency::Stale,
        }
    }
}

fn value_name<T: ValueEnum>(v: T) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

/// What to run; also the flags of `nacosctl bench`.
#[derive(Clone, Debug, clap::Args)]
pub struct Options {
    /// Workload to run.
    #[arg(long, value_enum)]
    pub workload: Workload,
    /// System under test.
    #[arg(long, value_enum, default_value_t = Target::Nacosd)]
    pub target: Target,
    /// Client endpoints (host:port), comma separated [default: --endpoint].
    #[arg(long, value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// Concurrent closed-loop clients.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// HTTP/2 connections, spread over the endpoints [default: one per endpoint].
    #[arg(long)]
    pub connections: Option<usize>,
    /// Length of the measured phase, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Run this many measured operations instead of a fixed duration.
    #[arg(long)]
    pub ops: Option<u64>,
    /// Unrecorded warm-up before measuring, in seconds.
    #[arg(long, default_value_t = 2.0)]
    pub warmup_secs: f64,
    /// Size of the key space (data ids, instances).
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Bytes of content per write.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Consistency level of reads.
    #[arg(long, value_enum, default_value_t = Level::Linearizable)]
    pub level: Level,
    /// Fraction of reads in the mixed workload.
    #[arg(long, default_value_t = 0.9)]
    pub read_ratio: f64,
    /// Services the naming workload spreads instances over.
    #[arg(long, default_value_t = 100)]
    pub services: u64,
    /// Skip writing every key before a read workload.
    #[arg(long)]
    pub no_preload: bool,
    /// Per-request deadline, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub request_timeout_ms: u64,
    /// Print the report as JSON (one object) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

impl Options {
    /// Options for `workload` against `endpoints`, with the flags' defaults.
    pub fn new(workload: Workload, endpoints: Vec<String>) -> Options {
        Options {
            workload,
            target: Target::Nacosd,
            endpoints,
            clients: 16,
            connections: None,
            duration_secs: 10.0,
            ops: None,
            warmup_secs: 2.0,
            keys: 10_000,
            value_size: 256,
            level: Level::Linearizable,
            read_ratio: 0.9,
            services: 100,
            no_preload: false,
            request_timeout_ms: 5000,
            json: false,
            quiet: false,
        }
    }

    pub fn connection_count(&self) -> usize {
        self.connections.unwrap_or(self.endpoints.len()).max(1)
    }

    fn reads(&self) -> bool {
        matches!(self.workload, Workload::ConfigGet | Workload::Mixed)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.endpoints.is_empty() {
            return Err("at least one endpoint is needed".into());
        }
        if self.clients == 0 || self.clients > 100_000 {
            return Err("--clients must be between 1 and 100000".into());
        }
        if self.connections == Some(0) {
            return Err("--connections must be at least 1".into());
        }
        if self.ops.is_none() && !(self.duration_secs > 0.0 && self.duration_secs <= 86_400.0) {
            return Err("--duration-secs must be above 0 and at most 86400 (or give --ops)".into());
        }
        if self.ops == Some(0) {
            return Err("--ops must be at least 1".into());
        }
        if !(self.warmup_secs >= 0.0 && self.warmup_secs <= 3_600.0) {
            return Err("--warmup-secs must be between 0 and 3600".into());
        }
        if self.value_size > 16 << 20 {
            return Err("--value-size must be at most 16777216".into());
        }
        if self.connections.is_some_and(|c| c > 1024) {
            return Err("--connections must be at most 1024".into());
        }
        if self.keys == 0 {
            return Err("--keys must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.read_ratio) {
            return Err("--read-ratio must be between 0 and 1".into());
        }
        if self.target == Target::Etcd {
            if matches!(
                self.workload,
                Workload::NamingRegister | Workload::NamingRegisterEphemeral | Workload::DbInsert
            ) {
                return Err(format!(
                    "etcd runs only config-publish, config-get and mixed, not {}",
                    value_name(self.workload)
                ));
            }
            if self.reads() && self.level == Level::Lease {
                return Err(
                    "etcd's API has no lease read; use --level linearizable or stale".into(),
                );
            }
        }
        if self.target == Target::Nacos
            && !matches!(
                self.workload,
                Workload::NamingRegisterEphemeral | Workload::ConfigPublish | Workload::ConfigGet
            )
        {
            return Err(format!(
                "the Nacos front end runs naming-register-ephemeral, config-publish and config-get, not {}",
                value_name(self.workload)
            ));
        }
        Ok(())
    }
}

/// Printable random content of `len` bytes.
fn content(rng: &mut Rng, len: usize) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    (0..len)
        .map(|_| CHARS[rng.below(CHARS.len() as u64) as usize] as char)
        .collect()
}

/// gRPC's name of a status code: `UNAVAILABLE`, `DEADLINE_EXCEEDED`.
pub fn code_name(code: Code) -> String {
    let mut out = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

async fn connect(opts: &Options) -> Result<Vec<Channel>, String> {
    let mut channels = Vec::new();
    for i in 0..opts.connection_count() {
        let addr = &opts.endpoints[i % opts.endpoints.len()];
        let url = if addr.contains("://") {
            addr.clone()
        } else {
            format!("http://{addr}")
        };
        let channel = Endpoint::from_shared(url)
            .map_err(|e| format!("bad endpoint {addr}: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_millis(opts.request_timeout_ms))
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        channels.push(channel);
    }
    Ok(channels)
}

/// What one client task measured.
struct Measured {
    latency: Histogram,
    errors: BTreeMap<String, u64>,
    finished: Instant,
}

/// Counters the progress line reads.
#[derive(Default)]
struct Progress {
    ok: AtomicU64,
    errors: AtomicU64,
    done: AtomicBool,
}

/// Write every key once, `clients` at a time, so that reads find data.
async fn preload(opts: &Arc<Options>, clients: &[Client]) -> Result<(), String> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks: Vec<tokio::task::JoinHandle<Result<(), String>>> = Vec::new();
    for i in 0..opts.clients.min(opts.keys as usize) {
        let mut client = clients[i % clients.len()].clone();
        let (opts, next) = (opts.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let value = content(&mut Rng::new(i as u64), opts.value_size);
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= opts.keys {
                    return Ok(());
                }
                client
                    .run(Op::Put(k), &opts, &value)
                    .await
                    .map_err(|c| format!("preloading key {k}: {}", code_name(c)))?;
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// When a run starts measuring and stops.
#[derive(Clone, Copy)]
struct Schedule {
    start: Instant,
    measure_from: Instant,
    /// `None` for a run bounded by an operation count.
    until: Option<Instant>,
}

impl Schedule {
    fn of(opts: &Options) -> Self {
        let start = Instant::now();
        let measure_from = start + Duration::from_secs_f64(opts.warmup_secs);
        let until = opts
            .ops
            .is_none()
            .then(|| measure_from + Duration::from_secs_f64(opts.duration_secs));
        Schedule {
            start,
            measure_from,
            until,
        }
    }
}

/// One closed-loop client: run operations until the schedule or the shared operation
/// budget ends; what it measured.
async fn client_loop(
    i: usize,
    mut client: Client,
    opts: Arc<Options>,
    schedule: Schedule,
    remaining: Arc<AtomicI64>,
    counters: Arc<Progress>,
) -> Measured {
    let mut rng = Rng::new(0x6e61_636f_7364 ^ (i as u64).wrapping_mul(0x1000_0000_01b3));
    let value = content(&mut rng, opts.value_size);
    let mut m = Measured {
        latency: Histogram::default(),
        errors: BTreeMap::new(),
        finished: Instant::now(),
    };
    loop {
        let t0 = Instant::now();
        let measuring = t0 >= schedule.measure_from;
        if measuring {
            if schedule.until.is_some_and(|u| t0 >= u) {
                break;
            }
            if remaining.fetch_sub(1, Ordering::Relaxed) <= 0 {
                break;
            }
        }
        let op = Op::next(opts.workload, &opts, &mut rng);
        let result = client.run(op, &opts, &value).await;
        if !measuring {
            continue;
        }
        m.finished = Instant::now();
        match result {
            Ok(()) => {
                m.latency.record((m.finished - t0).as_nanos() as u64);
                counters.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(code) => {
                *m.errors.entry(code_name(code)).or_default() += 1;
                counters.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    m
}

/// A progress line per second on stderr until the run is done.
fn spawn_ticker(counters: Arc<Progress>, schedule: Schedule) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = 0;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        while !counters.done.load(Ordering::Relaxed) {
            tick.tick().await;
            let now = Instant::now();
            let ok = counters.ok.load(Ordering::Relaxed);
            let phase = if now < schedule.measure_from {
                "warm-up"
            } else {
                "measuring"
            };
            eprintln!(
                "[{:>4.0}s] {phase:<9} ok={ok} ({}/s) errors={}",
                (now - schedule.start).as_secs_f64(),
                ok - last,
                counters.errors.load(Ordering::Relaxed)
            );
            last = ok;
        }
    })
}

/// The report of a finished run from what its clients measured.
fn report(opts: &Options, measure_from: Instant, measured: Vec<Measured>) -> Report {
    let mut latency = Histogram::default();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut finished = measure_from;
    for m in measured {
        latency.merge(&m.latency);
        for (code, n) in m.errors {
            *errors.entry(code).or_default() += n;
        }
        finished = finished.max(m.finished);
    }
    let elapsed = finished
        .saturating_duration_since(measure_from)
        .as_secs_f64();
    Report {
        target: value_name(opts.target),
        workload: value_name(opts.workload),
        level: opts.reads().then(|| value_name(opts.level)),
        endpoints: opts.endpoints.clone(),
        clients: opts.clients,
        connections: opts.connection_count(),
        keys: opts.keys,
        value_size: opts.value_size,
        elapsed_secs: elapsed,
        ok: latency.count(),
        errors,
        throughput: if elapsed > 0.0 {
            latency.count() as f64 / elapsed
        } else {
            0.0
        },
        latency_ms: Latency::of(&latency),
        elections: None,
    }
}

/// Each group's term, the highest any endpoint reports; `None` for etcd or when no
/// endpoint answers.
async fn terms(opts: &Options, channels: &[Channel]) -> Option<BTreeMap<String, u64>> {
    if opts.target == Target::Etcd {
        return None;
    }
    let mut terms: Option<BTreeMap<String, u64>> = None;
    for channel in channels.iter().take(opts.endpoints.len()) {
        let mut client = pb::cluster_service_client::ClusterServiceClient::new(channel.clone());
        let mut req = tonic::Request::new(pb::StatusRequest {});
        req.set_timeout(Duration::from_secs(2));
        let Ok(status) = client.status(req).await else {
            continue;
        };
        let seen = terms.get_or_insert_with(BTreeMap::new);
        for g in status.into_inner().groups {
            let t = seen.entry(g.group).or_default();
            *t = (*t).max(g.term);
        }
    }
    terms
}

/// How far the terms advanced between `before` and `after`, summed over the groups.
fn elections(
    before: Option<BTreeMap<String, u64>>,
    after: Option<BTreeMap<String, u64>>,
) -> Option<u64> {
    let (before, after) = (before?, after?);
    Some(
        after
            .iter()
            .map(|(g, t)| t.saturating_sub(before.get(g).copied().unwrap_or(*t)))
            .sum(),
    )
}

/// Run a benchmark. With `progress`, a line per second goes to stderr.
pub async fn run(opts: Options, progress: bool) -> Result<Report, String> {
    opts.validate()?;
    let opts = Arc::new(opts);
    let channels = connect(&opts).await?;
    let terms_before = terms(&opts, &channels).await;
    let clients: Vec<Client> = channels
        .iter()
        .map(|c| Client::new(opts.target, c.clone()))
        .collect();
    // One client per task; with the ephemeral workload each has its own session.
    let mut task_clients: Vec<Client> = (0..opts.clients)
        .map(|i| clients[i % clients.len()].clone())
        .collect();
    // The Nacos front end needs every connection set up first.
    if opts.workload == Workload::NamingRegisterEphemeral || opts.target == Target::Nacos {
        for c in &mut task_clients {
            c.open_session()
                .await
                .map_err(|s| format!("opening a session: {}: {}", s.code(), s.message()))?;
        }
    }
    clients[0]
        .clone()
        .prepare(opts.workload)
        .await
        .map_err(|s| format!("preparing the workload: {}: {}", s.code(), s.message()))?;
    if opts.reads() && !opts.no_preload {
        if progress {
            eprintln!("preloading {} keys", opts.keys);
        }
        preload(&opts, &clients).await?;
    }

    let schedule = Schedule::of(&opts);
    let remaining = Arc::new(AtomicI64::new(
        opts.ops.map_or(i64::MAX, |n| n.min(i64::MAX as u64) as i64),
    ));
    let counters = Arc::new(Progress::default());
    let tasks: Vec<_> = task_clients
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            tokio::spawn(client_loop(
                i,
                client,
                opts.clone(),
                schedule,
                remaining.clone(),
                counters.clone(),
            ))
        })
        .collect();
    let ticker = progress.then(|| spawn_ticker(counters.clone(), schedule));
    let mut measured = Vec::with_capacity(tasks.len());
    for t in tasks {
        measured.push(t.await.map_err(|e| format!("client task failed: {e}"))?);
    }
    counters.done.store(true, Ordering::Relaxed);
    if let Some(t) = ticker {
        t.abort();
    }
    let mut report = report(&opts, schedule.measure_from, measured);
    report.elections = elections(terms_before, terms(&opts, &channels).await);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elections_are_term_advances_summed_over_groups() {
        let terms = |pairs: &[(&str, u64)]| {
            Some(
                pairs
                    .iter()
                    .map(|(g, t)| (g.to_string(), *t))
                    .collect::<BTreeMap<_, _>>(),
            )
        };
        let before = terms(&[("config", 2), ("naming", 3)]);
        let after = terms(&[("config", 4), ("naming", 3), ("db", 7)]);
        // A group not seen before counts nothing: its start is unknown.
        assert_eq!(elections(before.clone(), after), Some(2));
        assert_eq!(elections(before.clone(), before.clone()), Some(0));
        assert_eq!(elections(None, before), None);
    }

    #[test]
    fn code_names_are_grpc_names() {
        assert_eq!(code_name(Code::Unavailable), "UNAVAILABLE");
        assert_eq!(code_name(Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
        assert_eq!(code_name(Code::Ok), "OK");
    }

    #[test]
    fn options_are_validated() {
        let ok = Options::new(Workload::ConfigGet, vec!["127.0.0.1:1".into()]);
        assert!(ok.validate().is_ok());
        let mut etcd_lease = ok.clone();
        etcd_lease.target = Target::Etcd;
        etcd_lease.level = Level::Lease;
        assert!(etcd_lease.validate().unwrap_err().contains("lease"));
        let mut etcd_db = ok.clone();
        etcd_db.target = Target::Etcd;
        etcd_db.workload = Workload::DbInsert;
        assert!(etcd_db.validate().unwrap_err().contains("db-insert"));
        let mut no_clients = ok.clone();
        no_clients.clients = 0;
        assert!(no_clients.validate().is_err());
        let mut huge = ok.clone();
        huge.warmup_secs = 1e20;
        assert!(huge.validate().unwrap_err().contains("warmup"));
        huge.warmup_secs = 0.0;
        huge.duration_secs = 1e19;
        assert!(huge.validate().unwrap_err().contains("duration"));
        let mut ratio = ok;
        ratio.read_ratio = 1.5;
        assert!(ratio.validate().unwrap_err().contains("read-ratio"));
    }
}
