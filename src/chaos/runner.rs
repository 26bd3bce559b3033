//! One chaos run, start to end: network and nodes up, clients on, faults for the
//! requested time, everything healed, final reads, convergence, the checker, the
//! tables. See the module docs of [`super`] for the whole picture.
//!
//! The output directory keeps what a failing run needs for a post-mortem: each
//! node's log (`node<i>.log`, all starts appended), the history (`history.jsonl`,
//! re-checkable with `--check`), the fault timeline (`faults.log`), every failed
//! call with its status (`errors.log`), the tables (`summary.txt`) and, when
//! something was found, `violations.txt`. The nodes' data
//! directories are removed after a clean run unless `--keep-data`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use tokio::time::Instant;

use super::checker::{check, CheckOptions};
use super::cluster::{Cluster, ClusterSpec};
use super::disk::DiskFault;
use super::history::{History, Recorder};
use super::nemesis::{FaultKind, Nemesis};
use super::node::System;
use super::ops::Target;
use super::streams::{self, Observers, StreamSpec};
use super::summary::{self, FaultRecord, Findings};
use super::verify;
use super::workload::{Workload, WorkloadSpec};
use crate::pb;

/// Lines of `violations.txt` a run's result carries for the console.
const VIOLATION_LINES: usize = 150;

/// Options of a run (and of `--measure-failover`).
#[derive(Debug, Clone, Args)]
pub struct Options {
    /// Minutes of faults (the run takes about a minute more: start, recovery, checks).
    #[arg(long, default_value_t = 2.0)]
    pub minutes: f64,
    /// Seed of every random choice; printed at the start. Default: from the clock.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Cluster size (odd, 3 to 9).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// The nacosd binary [default: `nacosd` next to this program].
    #[arg(long)]
    pub nacosd: Option<PathBuf>,
    /// Output directory [default: $CARGO_TARGET_DIR/chaos/<run id>, else target/chaos/<run id>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Fault kinds to draw from, comma-separated [default: all but disk-full].
    #[arg(long, value_delimiter = ',')]
    pub faults: Vec<FaultKind>,
    /// Put the last node's data directory on a small tmpfs and add disk-full faults.
    #[arg(long)]
    pub disk_full: bool,
    /// Size of that tmpfs, in MiB.
    #[arg(long, default_value_t = 256)]
    pub disk_mb: u64,
    /// Client tasks per group and node (even ones read at LINEARIZABLE, odd at LEASE).
    #[arg(long, default_value_t = 2)]
    pub clients_per_node: usize,
    /// Keys per group, renewed every --key-epoch-secs.
    #[arg(long, default_value_t = 6)]
    pub keys: u32,
    #[arg(long, default_value_t = 20)]
    pub key_epoch_secs: u64,
    /// Read levels of the clients, assigned to each node's clients in turn. STALE is
    /// not linearizable: a run with it and partitions should report violations, which
    /// is how to see that the suite can find them.
    #[arg(long, value_delimiter = ',', default_value = "linearizable,lease")]
    pub read_levels: Vec<ReadLevel>,
    /// Deadline of each client request, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub op_timeout_ms: u64,
    /// Mean pause between one client's requests, in milliseconds.
    #[arg(long, default_value_t = 10)]
    pub think_ms: u64,
    /// nacosd's --heartbeat-ms (default: nacosd's).
    #[arg(long, default_value_t = crate::config::DEFAULT_HEARTBEAT_MS)]
    pub heartbeat_ms: u64,
    /// nacosd's --election-timeout-min-ms (default: nacosd's).
    #[arg(long, default_value_t = crate::config::DEFAULT_ELECTION_MIN_MS)]
    pub election_min_ms: u64,
    /// nacosd's --election-timeout-max-ms (default: nacosd's; pauses and partitions
    /// outlast it).
    #[arg(long, default_value_t = crate::config::DEFAULT_ELECTION_MAX_MS)]
    pub election_max_ms: u64,
    /// nacosd's --snapshot-logs: low, so that snapshots are built and installed.
    #[arg(long, default_value_t = 500)]
    pub snapshot_logs: u64,
    /// nacosd's --snapshot-keep-logs.
    #[arg(long, default_value_t = 100)]
    pub snapshot_keep_logs: u64,
    /// More nacosd flags, passed as they are (repeat for each).
    #[arg(long = "nacosd-arg", allow_hyphen_values = true)]
    pub nacosd_args: Vec<String>,
    /// NACOSD_LOG of the nodes.
    #[arg(long, default_value = "info,openraft=warn")]
    pub node_log: String,
    /// Keep the nodes' data directories after a clean run.
    #[arg(long)]
    pub keep_data: bool,
    /// Instead of a chaos run: measure the write gap after kill -9, isolation and a
    /// clean stop (SIGTERM) of a group's leader, --failover-runs times each.
    #[arg(long)]
    pub measure_failover: bool,
    #[arg(long, default_value_t = 10)]
    pub failover_runs: usize,
    /// With --measure-failover: the system to measure. `etcd` runs an etcd cluster
    /// (its default settings) on the same network, for the side-by-side table.
    #[arg(long, value_enum, default_value_t = System::Nacosd)]
    pub system: System,
    /// The etcd binary for `--system etcd`.
    #[arg(long, default_value = "etcd")]
    pub etcd: PathBuf,
    /// Instead of a run: check a saved history.jsonl and exit.
    #[arg(long)]
    pub check: Option<PathBuf>,
}

/// A read level on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReadLevel {
    Linearizable,
    Lease,
    Stale,
}

impl From<ReadLevel> for pb::Consistency {
    fn from(level: ReadLevel) -> Self {
        match level {
            ReadLevel::Linearizable => pb::Consistency::Linearizable,
            ReadLevel::Lease => pb::Consistency::Lease,
            ReadLevel::Stale => pb::Consistency::Stale,
        }
    }
}

/// How a run ended, when the harness itself did not fail.
#[derive(Debug)]
pub struct RunResult {
    pub summary: String,
    /// Problems found (violations, divergences, crashes); empty for a clean run.
    pub problems: Vec<String>,
    pub out: PathBuf,
    /// The beginning of `violations.txt` when the run found problems: a console (a CI
    /// log) keeps it after the output directory is gone.
    pub violations: Option<String>,
}

impl Options {
    pub fn validate(&self) -> Result<(), String> {
        if !(3..=9).contains(&self.nodes) || self.nodes.is_multiple_of(2) {
            return Err(format!(
                "--nodes {}: use an odd size from 3 to 9",
                self.nodes
            ));
        }
        if !(self.minutes > 0.0 && self.minutes.is_finite()) {
            return Err("--minutes must be positive".to_string());
        }
        if self.clients_per_node == 0 || self.clients_per_node > 9 {
            return Err("--clients-per-node: 1 to 9".to_string());
        }
        if self.election_min_ms == 0 || self.election_min_ms > self.election_max_ms {
            return Err("election timeouts: 0 < min <= max".to_string());
        }
        if self.read_levels.is_empty() {
            return Err("--read-levels: at least one level".to_string());
        }
        if self.system == System::Etcd && !self.measure_failover {
            return Err("--system etcd is only for --measure-failover".to_string());
        }
        if self.faults.contains(&FaultKind::DiskFull) && !self.disk_full {
            return Err("the disk-full fault needs --disk-full".to_string());
        }
        Ok(())
    }

    pub fn fault_kinds(&self) -> Vec<FaultKind> {
        let mut kinds = if self.faults.is_empty() {
            FaultKind::DEFAULT.to_vec()
        } else {
            self.faults.clone()
        };
        if self.disk_full && !kinds.contains(&FaultKind::DiskFull) {
            kinds.push(FaultKind::DiskFull);
        }
        kinds
    }

    pub fn binary(&self) -> Result<PathBuf, String> {
        let path = match &self.nacosd {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .map_err(|e| format!("locating this program: {e}"))?
                .with_file_name("nacosd"),
        };
        if !path.is_file() {
            return Err(format!(
                "nacosd binary not found at {} (build it, or pass --nacosd)",
                path.display()
            ));
        }
        Ok(path)
    }

    /// nacosd flags beyond addresses, ids and members.
    pub fn node_args(&self) -> Vec<String> {
        let mut args: Vec<String> = [
            ("--heartbeat-ms", self.heartbeat_ms),
            ("--election-timeout-min-ms", self.election_min_ms),
            ("--election-timeout-max-ms", self.election_max_ms),
            ("--snapshot-logs", self.snapshot_logs),
            ("--snapshot-keep-logs", self.snapshot_keep_logs),
        ]
        .iter()
        .flat_map(|(flag, value)| [flag.to_string(), value.to_string()])
        .collect();
        args.extend(self.nacosd_args.iter().cloned());
        args
    }

    pub fn out_dir(&self, run_id: &str) -> PathBuf {
        self.out.clone().unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("target"));
            target.join("chaos").join(run_id)
        })
    }

    pub fn cluster_spec(&self) -> Result<ClusterSpec, String> {
        if self.system == System::Etcd {
            return Ok(ClusterSpec {
                system: System::Etcd,
                nodes: self.nodes,
                binary: find_program(&self.etcd)?,
                extra_args: Vec::new(),
                log_filter: String::new(),
                tmpfs: None,
            });
        }
        Ok(ClusterSpec {
            system: System::Nacosd,
            nodes: self.nodes,
            binary: self.binary()?,
            extra_args: self.node_args(),
            log_filter: self.node_log.clone(),
            tmpfs: self.disk_full.then_some((self.nodes, self.disk_mb)),
        })
    }
}

/// `program` as given if it is a path, else found on PATH.
fn find_program(program: &std::path::Path) -> Result<PathBuf, String> {
    if program.components().count() > 1 {
        return if program.is_file() {
            Ok(program.to_path_buf())
        } else {
            Err(format!("{} not found", program.display()))
        };
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("{} not found on PATH", program.display()))
}

/// A run id: six hex digits from the seed and the clock, so that names are fresh even
/// when a seed is replayed.
pub fn run_id(seed: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let mut rng = crate::bench::client::Rng::new(seed ^ now ^ u64::from(std::process::id()));
    format!("{:06x}", rng.next_u64() & 0xff_ffff)
}

/// Prints a line of the run's progress, with the time since the start.
pub struct Progress {
    started: Instant,
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            started: Instant::now(),
        }
    }

    pub fn say(&self, what: impl std::fmt::Display) {
        println!("[{:>7.1}s] {what}", self.started.elapsed().as_secs_f64());
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

fn write_file(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// How long Watch and Subscribe observers get, after the final reads, to reach the
/// final state of every item.
const STREAMS_SETTLE: Duration = Duration::from_secs(30);

/// A chaos run. `Err` is a harness failure; problems the run found are in the result.
pub async fn run(opts: Options, seed: u64, run_id: String) -> Result<RunResult, String> {
    let progress = Progress::new();
    let out = opts.out_dir(&run_id);
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let spec = opts.cluster_spec()?;
    let kinds = opts.fault_kinds();
    progress.say(format!(
        "{} nodes, faults: {}; output in {}",
        opts.nodes,
        kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(","),
        out.display()
    ));

    let mut cluster = Cluster::start(&run_id, &spec, &out)?;
    progress.say(format!(
        "network 10.77.{}.0/24 up (bridge {}), nodes started",
        cluster.net.subnet,
        cluster.net.bridge()
    ));
    cluster.wait_for_leaders(Duration::from_secs(60)).await?;
    progress.say("every group has a leader");
    let channels: Vec<_> = cluster.nodes.iter().map(|n| n.channel()).collect();
    create_table(&run_id, &channels).await?;

    let recorder = Recorder::new();
    let op_timeout = Duration::from_millis(opts.op_timeout_ms);
    let workload_spec = WorkloadSpec {
        run_id: run_id.clone(),
        seed,
        clients_per_node: opts.clients_per_node,
        keys: opts.keys,
        epoch: Duration::from_secs(opts.key_epoch_secs.max(1)),
        op_timeout,
        think: Duration::from_millis(opts.think_ms),
        read_levels: opts.read_levels.iter().map(|&l| l.into()).collect(),
    };
    let observers = Observers::start(
        StreamSpec {
            run_id: run_id.clone(),
            epoch: workload_spec.epoch,
            config_keys: workload_spec.keys,
            naming_keys: workload_spec.keys,
            timeout: op_timeout,
        },
        &channels,
    );
    let workload = Workload::start(workload_spec, channels.clone(), recorder.clone());
    progress.say("clients started; 3 s without faults");
    tokio::time::sleep(Duration::from_secs(3)).await;

    let disk = spec.tmpfs.map(|(node, _)| DiskFault {
        node,
        mount: out.join(format!("data/node{node}")),
    });
    let nemesis = Nemesis::new(
        seed,
        kinds,
        Duration::from_millis(opts.election_max_ms),
        disk,
    );
    let mut run = Phases {
        cluster: &mut cluster,
        recorder: &recorder,
        progress: &progress,
        problems: Vec::new(),
    };
    let duration = Duration::from_secs_f64(opts.minutes * 60.0);
    let faults = run.inject_faults(nemesis, duration, &out).await?;
    progress.say("faults over; healed; 5 s of recovery under load");
    tokio::time::sleep(Duration::from_secs(5)).await;
    run.note_crashes()?;
    let (keys, errors) = workload.stop().await;
    write_file(&out.join("errors.log"), &(errors.log.join("\n") + "\n"))?;
    let workload_end = recorder.now();
    progress.say(format!(
        "clients stopped; {} ops recorded",
        recorder.history().len()
    ));
    let final_values = run
        .final_checks(&run_id, &channels, &keys, op_timeout)
        .await;
    let expected = streams::expected_states(&final_values);
    let (seen, missing) = observers
        .finish(&expected, channels.len(), STREAMS_SETTLE)
        .await;
    progress.say(format!(
        "Watch and Subscribe: {} events on {} streams; {} observers short of a final state",
        seen.len(),
        seen.iter()
            .map(|s| (s.node, s.item.as_str(), s.connection))
            .collect::<std::collections::HashSet<_>>()
            .len(),
        missing.len()
    ));
    let mut problems = run.problems;
    problems.extend(missing);

    let history = recorder.history();
    history
        .save(&out.join("history.jsonl"))
        .map_err(|e| format!("saving the history: {e}"))?;
    let stream_problems = streams::check(&seen, &history);
    if !stream_problems.is_empty() {
        // Every event, to see what led up to the problem.
        let text: String = seen
            .iter()
            .map(|e| {
                format!(
                    "node {} conn {} {} index {}{} {:?}\n",
                    e.node,
                    e.connection,
                    e.item,
                    e.index,
                    if e.full { " full" } else { "" },
                    e.state
                )
            })
            .collect();
        write_file(&out.join("streams.log"), &text)?;
    }
    problems.extend(stream_problems);
    progress.say(format!("checking {} ops", history.len()));
    let report = check_history(&history)?;
    for key in &report.inconclusive {
        problems.push(format!(
            "key {key}: the checker ran out of budget (inconclusive)"
        ));
    }
    let found = !problems.is_empty() || !report.violations.is_empty();
    let (violations_file, violations) = if found {
        let path = out.join("violations.txt");
        let text = summary::violations_report(seed, &run_id, &report, &problems, &faults);
        write_file(&path, &text)?;
        let head = format!(
            "{} (first {VIOLATION_LINES} lines):\n{}",
            path.display(),
            summary::head(&text, VIOLATION_LINES)
        );
        (Some(path.display().to_string()), Some(head))
    } else {
        (None, None)
    };
    let summary = summary::render(&Findings {
        history: &history,
        faults: &faults,
        workload_end,
        codes: &errors.counts,
        report: &report,
        problems: &problems,
        violations_file,
    });
    write_file(&out.join("summary.txt"), &summary)?;
    for v in &report.violations {
        problems.push(format!(
            "linearizability violation on key {}: {}",
            v.key, v.explanation
        ));
    }

    drop(cluster);
    if problems.is_empty() && !opts.keep_data {
        let _ = std::fs::remove_dir_all(out.join("data"));
    }
    Ok(RunResult {
        summary,
        problems,
        out,
        violations,
    })
}

/// The parts of a run that happen while its cluster is up, and the problems they
/// find.
struct Phases<'a> {
    cluster: &'a mut Cluster,
    recorder: &'a Recorder,
    progress: &'a Progress,
    problems: Vec<String>,
}

impl Phases<'_> {
    /// Faults one after another for `duration`, each healed before the next; the
    /// timeline is rewritten to `out/faults.log` after each.
    async fn inject_faults(
        &mut self,
        mut nemesis: Nemesis,
        duration: Duration,
        out: &Path,
    ) -> Result<Vec<FaultRecord>, String> {
        let mut faults: Vec<FaultRecord> = Vec::new();
        let end = Instant::now() + duration;
        while Instant::now() < end {
            tokio::time::sleep(nemesis.quiet()).await;
            self.note_crashes()?;
            if Instant::now() >= end {
                break;
            }
            let kind = nemesis.pick();
            let start = self.recorder.now();
            let active = nemesis.inject(self.cluster, kind).await?;
            self.progress.say(format!(
                "fault #{}: {} for {:?}",
                faults.len() + 1,
                active.description,
                active.hold
            ));
            if let Some(p) = &active.problem {
                self.progress.say(p);
                self.problems.push(p.clone());
            }
            tokio::time::sleep(active.hold).await;
            let description = active.description.clone();
            let note = nemesis.heal(self.cluster, active).await?;
            if let Some(n) = &note {
                self.progress.say(n);
            }
            faults.push(FaultRecord {
                kind,
                description,
                start,
                healed: self.recorder.now(),
                note,
            });
            write_file(&out.join("faults.log"), &summary::timeline(&faults))?;
        }
        Ok(faults)
    }

    /// Restarts any node that exited on its own and records it as a problem.
    fn note_crashes(&mut self) -> Result<(), String> {
        for node in &mut self.cluster.nodes {
            if let super::node::ProcessState::Exited(how) = node.state() {
                let msg = format!(
                    "node {} exited on its own ({how}); see {}",
                    node.id(),
                    node.spec.log.display()
                );
                self.progress.say(&msg);
                self.problems.push(msg);
                node.start()?;
            }
        }
        Ok(())
    }

    /// With the clients stopped: leaders, final reads (recorded), convergence
    /// (applied index, digests, stale reads). See [`super::verify`].
    async fn final_checks(
        &mut self,
        run_id: &str,
        channels: &[tonic::transport::Channel],
        keys: &[super::ops::Key],
        op_timeout: Duration,
    ) -> BTreeMap<super::ops::Key, Option<String>> {
        if let Err(e) = self.cluster.wait_for_leaders(Duration::from_secs(60)).await {
            self.problems.push(format!("after healing: {e}"));
        }
        let (final_values, unreadable) =
            verify::final_reads(run_id, channels, self.recorder, keys, op_timeout).await;
        for key in &unreadable {
            self.problems.push(format!(
                "key {key}: no LINEARIZABLE read succeeded after healing"
            ));
        }
        self.progress
            .say(format!("final reads of {} keys done", final_values.len()));
        if let Err(e) = self.cluster.wait_converged(Duration::from_secs(120)).await {
            self.problems.push(format!("convergence: {e}"));
            return final_values;
        }
        let digests = verify::compare_digests(channels).await;
        let divergences =
            verify::compare_nodes(run_id, channels, keys, &final_values, op_timeout).await;
        self.progress.say(format!(
            "nodes converged; state digests: {}; stale reads compared: {} divergent keys",
            if digests.is_empty() {
                "equal"
            } else {
                "DIFFER"
            },
            divergences.len()
        ));
        self.problems
            .extend(digests.into_iter().map(|d| format!("divergence: {d}")));
        for d in &divergences {
            self.problems.push(format!(
                "divergence on {}: expected {:?}, nodes {:?}",
                d.key, d.expected, d.nodes
            ));
        }
        final_values
    }
}

/// Checks a history with the run's budget (generous: a long run has many keys).
pub fn check_history(history: &History) -> Result<super::checker::Report, String> {
    let options = CheckOptions {
        time_limit: Some(Duration::from_secs(600)),
        ..CheckOptions::default()
    };
    check(history, &options).map_err(|e| format!("the history is malformed: {e}"))
}

/// Creates the db group's table, through whichever node takes it.
async fn create_table(run_id: &str, channels: &[tonic::transport::Channel]) -> Result<(), String> {
    let end = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    for attempt in 0.. {
        let target = Target {
            run_id: run_id.to_string(),
            channel: channels[attempt % channels.len()].clone(),
            timeout: Duration::from_secs(5),
        };
        match target.create_table().await {
            Ok(()) => return Ok(()),
            Err(e) => last = format!("{}: {}", e.code, e.message),
        }
        if Instant::now() > end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(format!("could not create the db table: {last}"))
}

/// `--measure-failover`: a cluster without a workload or a nemesis, and the rounds of
/// [`super::failover`].
pub async fn measure_failover(opts: Options, run_id: String) -> Result<RunResult, String> {
    let progress = Progress::new();
    let out = opts.out_dir(&run_id);
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let spec = opts.cluster_spec()?;
    let mut cluster = Cluster::start(&run_id, &spec, &out)?;
    if opts.system == System::Nacosd {
        cluster.wait_for_leaders(Duration::from_secs(60)).await?;
        let channels: Vec<_> = cluster.nodes.iter().map(|n| n.channel()).collect();
        create_table(&run_id, &channels).await?;
    }
    progress.say(format!(
        "{} nodes up; {} rounds per fault kind",
        opts.nodes, opts.failover_runs
    ));
    let rounds = super::failover::measure(
        &opts,
        &mut cluster,
        &run_id,
        &progress,
        &out.join("failover-writes.log"),
    )
    .await?;
    let summary = super::failover::render(&rounds, &opts);
    write_file(&out.join("failover.txt"), &summary)?;
    let problems: Vec<String> = rounds
        .iter()
        .flat_map(|r| {
            let stalled = r.gap.is_none().then(|| {
                format!(
                    "{}: writes to {} through node {} did not resume",
                    r.kind,
                    r.group.name(),
                    r.through
                )
            });
            stalled.into_iter().chain(r.problem.clone())
        })
        .collect();
    drop(cluster);
    if problems.is_empty() && !opts.keep_data {
        let _ = std::fs::remove_dir_all(out.join("data"));
    }
    Ok(RunResult {
        summary,
        problems,
        out,
        violations: None,
    })
}
