//! nacosctl: the operator's command-line client.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use nacosd::pb;
use nacosd::pb::cluster_service_client::ClusterServiceClient;

#[derive(Parser)]
#[command(name = "nacosctl", version, about = "Command-line client for nacosd")]
struct Cli {
    /// Client port of any node, host:port.
    #[arg(
        long,
        global = true,
        env = "NACOSCTL_ENDPOINT",
        default_value = "127.0.0.1:9848"
    )]
    endpoint: String,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Request timeout in milliseconds.
    #[arg(long, global = true, default_value_t = 5000)]
    timeout_ms: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Cluster administration.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Load generator: closed-loop clients against nacosd (or etcd), then a table of
    /// throughput, latency percentiles and errors by code.
    Bench(Box<nacosd::bench::Options>),
    /// Side-by-side table of `bench --json` reports (files of one JSON object per
    /// line), nacosd beside etcd with ratios.
    BenchCompare {
        /// Files of JSON reports; `-` reads stdin.
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Every group's role, leader, term, log positions and membership, as the
    /// contacted node sees them.
    Status,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nacosctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("nacosctl: {msg}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Bench(mut opts) => {
            if opts.endpoints.is_empty() {
                opts.endpoints = vec![cli.endpoint.clone()];
            }
            let (json, quiet) = (opts.json || cli.output == Output::Json, opts.quiet);
            let report = nacosd::bench::run(*opts, !quiet).await?;
            // Printed either way; a run in which nothing succeeded is a failure, so
            // scripts (and bench/compare.sh's readiness wait) can tell.
            let failed = report.ok == 0;
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&report).map_err(|e| e.to_string())?
                );
            } else {
                print!(
                    "{}",
                    nacosd::bench::report::table(std::slice::from_ref(&report))
                );
            }
            if failed {
                return Err(format!(
                    "no operation succeeded (errors: {:?})",
                    report.errors
                ));
            }
            Ok(())
        }
        Command::BenchCompare { files } => {
            let mut reports = Vec::new();
            for f in &files {
                let text = if f.as_os_str() == "-" {
                    std::io::read_to_string(std::io::stdin())
                } else {
                    std::fs::read_to_string(f)
                }
                .map_err(|e| format!("reading {}: {e}", f.display()))?;
                for (n, line) in text
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| !l.trim().is_empty())
                {
                    reports.push(serde_json::from_str(line).map_err(|e| {
                        format!("{} line {}: not a bench report: {e}", f.display(), n + 1)
                    })?);
                }
            }
            print!("{}", nacosd::bench::report::compare(&reports));
            Ok(())
        }
        Command::Cluster {
            command: ClusterCommand::Status,
        } => cluster_status(&cli).await,
    }
}

async fn cluster_status(cli: &Cli) -> Result<(), String> {
    let timeout = Duration::from_millis(cli.timeout_ms);
    let endpoint = if cli.endpoint.contains("://") {
        cli.endpoint.clone()
    } else {
        format!("http://{}", cli.endpoint)
    };
    let channel = tonic::transport::Endpoint::from_shared(endpoint)
        .map_err(|e| format!("bad endpoint {}: {e}", cli.endpoint))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", cli.endpoint))?;
    let status = ClusterServiceClient::new(channel)
        .status(pb::StatusRequest {})
        .await
        .map_err(|s| format!("{}: {}", s.code(), s.message()))?
        .into_inner();
    match cli.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&status_json(&status)).map_err(|e| e.to_string())?
        ),
        Output::Table => print!("{}", status_table(&status)),
    }
    Ok(())
}

fn role_name(role: i32) -> &'static str {
    match pb::Role::try_from(role) {
        Ok(pb::Role::Leader) => "leader",
        Ok(pb::Role::Follower) => "follower",
        Ok(pb::Role::Candidate) => "candidate",
        Ok(pb::Role::Learner) => "learner",
        Ok(pb::Role::Shutdown) => "shutdown",
        _ => "unknown",
    }
}

fn members(m: &[pb::Member]) -> Vec<serde_json::Value> {
    m.iter()
        .map(|m| serde_json::json!({"node_id": m.node_id, "addr": m.addr}))
        .collect()
}

fn status_json(s: &pb::StatusResponse) -> serde_json::Value {
    serde_json::json!({
        "node_id": s.node_id,
        "advertise_peer": s.advertise_peer,
        "version": s.version,
        "groups": s.groups.iter().map(|g| serde_json::json!({
            "group": g.group,
            "role": role_name(g.role),
            "leader_id": g.leader_id,
            "leader_addr": g.leader_addr,
            "term": g.term,
            "last_log_index": g.last_log_index,
            "applied_index": g.applied_index,
            "snapshot_index": g.snapshot_index,
            "purged_index": g.purged_index,
            "voters": members(&g.voters),
            "learners": members(&g.learners),
        })).collect::<Vec<_>>(),
    })
}

fn status_table(s: &pb::StatusResponse) -> String {
    let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
    let mut rows = vec![[
        "GROUP", "ROLE", "LEADER", "TERM", "LAST LOG", "APPLIED", "SNAPSHOT", "VOTERS", "LEARNERS",
    ]
    .map(String::from)];
    for g in &s.groups {
        let ids = |m: &[pb::Member]| {
            if m.is_empty() {
                "-".to_string()
            } else {
                m.iter()
                    .map(|m| m.node_id.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            }
        };
        let leader = match g.leader_id {
            Some(id) if !g.leader_addr.is_empty() => format!("{id} ({})", g.leader_addr),
            Some(id) => id.to_string(),
            None => "none".into(),
        };
        rows.push([
            g.group.clone(),
            role_name(g.role).into(),
            leader,
            g.term.to_string(),
            opt(g.last_log_index),
            opt(g.applied_index),
            opt(g.snapshot_index),
            ids(&g.voters),
            ids(&g.learners),
        ]);
    }
    let mut widths = [0usize; 9];
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let mut out = format!(
        "node {} ({}), nacosd {}\n",
        s.node_id, s.advertise_peer, s.version
    );
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
