//! nacosctl: the operator's command-line client.
//!
//! `auth`: credentials and TLS for every command, and the login, user and role
//! commands.

mod auth;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use nacosd::pb;
use nacosd::pb::auth_service_client::AuthServiceClient;
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
    #[command(flatten)]
    creds: auth::Credentials,
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
    /// Cluster members: list, add, promote, remove.
    Member {
        #[command(subcommand)]
        command: MemberCommand,
    },
    /// Leadership of the groups.
    Leader {
        #[command(subcommand)]
        command: LeaderCommand,
    },
    /// Build a snapshot now on the contacted node.
    Snapshot {
        /// Only this group (default: every group).
        #[arg(long)]
        group: Option<String>,
    },
    /// Each group's state digest on the contacted node (equal on nodes at the same
    /// applied index).
    Digest,
    /// Client sessions (leases) of ephemeral instances, on the contacted node.
    Session {
        #[command(subcommand)]
        command: SessionCommand,
    },
    /// Log in (--user, password from --password, NACOSCTL_PASSWORD or stdin) and keep
    /// the token for later commands in the user's config directory.
    Login,
    /// Forget the kept token.
    Logout,
    /// Users (admin).
    User {
        #[command(subcommand)]
        command: auth::UserCommand,
    },
    /// Roles: read/write per namespace and kind (admin).
    Role {
        #[command(subcommand)]
        command: auth::RoleCommand,
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

/// Membership changes wait for the cluster (a learner catching up, an election):
/// they use at least this deadline whatever `--timeout-ms` says.
const OPERATION_TIMEOUT_MS: u64 = 30_000;

#[derive(Subcommand)]
enum MemberCommand {
    /// Every member with its role in each group.
    List,
    /// Add a node as a learner of every group (then start it with --join). An id that
    /// is a member at another address is replaced by the new machine.
    Add {
        /// Node id (1 or more).
        id: u64,
        /// Its peer address, host:port.
        addr: String,
    },
    /// Promote a caught-up learner to voter in every group.
    Promote { id: u64 },
    /// Remove a node (dead or alive) from every group.
    Remove { id: u64 },
}

#[derive(Subcommand)]
enum SessionCommand {
    /// Open a session owned by the contacted node; prints its id.
    Open {
        /// Time to live without a keep-alive (default: the node's session-ttl-ms).
        #[arg(long, default_value_t = 0)]
        ttl_ms: u64,
        /// An id of your choosing (default: the node picks one).
        #[arg(long, default_value = "")]
        id: String,
    },
    /// Renew a session's lease once.
    KeepAlive { id: String },
    /// Close a session: its ephemeral instances are removed everywhere.
    Close { id: String },
}

#[derive(Subcommand)]
enum LeaderCommand {
    /// Move the leadership of a group (default: every group) to another voter.
    Transfer {
        /// Only this group.
        #[arg(long)]
        group: Option<String>,
        /// The new leader (default: the most up-to-date other voter).
        #[arg(long)]
        to: Option<u64>,
    },
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
        Command::Member { ref command } => member(&cli, command).await,
        Command::Session { ref command } => session(&cli, command).await,
        Command::Leader {
            command: LeaderCommand::Transfer { ref group, to },
        } => {
            let mut c = connect(&cli, OPERATION_TIMEOUT_MS).await?;
            let r = c
                .transfer_leader(pb::TransferLeaderRequest {
                    group: group.clone().unwrap_or_default(),
                    to: to.unwrap_or(0),
                })
                .await
                .map_err(status_text)?
                .into_inner();
            let rows: Vec<(String, String)> = r
                .leaders
                .iter()
                .map(|l| (l.group.clone(), l.leader_id.to_string()))
                .collect();
            print_pairs(&cli, ("group", "leader_id"), &rows)
        }
        Command::Snapshot { ref group } => {
            let mut c = connect(&cli, OPERATION_TIMEOUT_MS).await?;
            let r = c
                .snapshot(pb::SnapshotRequest {
                    group: group.clone().unwrap_or_default(),
                })
                .await
                .map_err(status_text)?
                .into_inner();
            let rows: Vec<(String, String)> = r
                .snapshots
                .iter()
                .map(|s| (s.group.clone(), s.snapshot_index.to_string()))
                .collect();
            print_pairs(&cli, ("group", "snapshot_index"), &rows)
        }
        Command::Digest => {
            let mut c = connect(&cli, cli.timeout_ms).await?;
            let r = c
                .digest(pb::DigestRequest {})
                .await
                .map_err(status_text)?
                .into_inner();
            let rows: Vec<(String, String)> = r
                .groups
                .iter()
                .map(|g| {
                    (
                        g.group.clone(),
                        format!("{} @{} ({} records)", g.digest, g.applied_index, g.records),
                    )
                })
                .collect();
            print_pairs(&cli, ("group", "digest"), &rows)
        }
        Command::Login => {
            let channel = open(&cli, cli.timeout_ms).await?;
            auth::login_command(&channel, &cli.endpoint, &cli.creds).await
        }
        Command::Logout => auth::logout_command(),
        Command::User { ref command } => {
            let c = authed(&cli, cli.timeout_ms).await?;
            auth::user_command(
                AuthServiceClient::with_interceptor(c.0, c.1),
                command,
                cli.output == Output::Json,
            )
            .await
        }
        Command::Role { ref command } => {
            let c = authed(&cli, cli.timeout_ms).await?;
            auth::role_command(
                AuthServiceClient::with_interceptor(c.0, c.1),
                command,
                cli.output == Output::Json,
            )
            .await
        }
    }
}

fn status_text(s: tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// A channel to the contacted node with a deadline of at least `min_timeout_ms`.
async fn open(cli: &Cli, min_timeout_ms: u64) -> Result<tonic::transport::Channel, String> {
    let timeout = Duration::from_millis(cli.timeout_ms.max(min_timeout_ms));
    auth::channel(
        &cli.endpoint,
        &cli.creds,
        Duration::from_millis(cli.timeout_ms),
        timeout,
    )
    .await
}

/// A channel and the credentials its calls carry.
async fn authed(
    cli: &Cli,
    min_timeout_ms: u64,
) -> Result<(tonic::transport::Channel, auth::Bearer), String> {
    let channel = open(cli, min_timeout_ms).await?;
    let bearer = auth::bearer(auth::token(&channel, &cli.creds).await?)?;
    Ok((channel, bearer))
}

/// A client of the contacted node's ClusterService with a deadline of at least
/// `min_timeout_ms`.
async fn connect(
    cli: &Cli,
    min_timeout_ms: u64,
) -> Result<ClusterServiceClient<auth::Authed>, String> {
    let (channel, bearer) = authed(cli, min_timeout_ms).await?;
    Ok(ClusterServiceClient::with_interceptor(channel, bearer))
}

async fn session(cli: &Cli, command: &SessionCommand) -> Result<(), String> {
    let (channel, bearer) = authed(cli, cli.timeout_ms).await?;
    let mut c = pb::session_service_client::SessionServiceClient::with_interceptor(channel, bearer);
    let rows = match command {
        SessionCommand::Open { ttl_ms, id } => {
            let r = c
                .open_session(pb::OpenSessionRequest {
                    ttl_ms: *ttl_ms,
                    id: id.clone(),
                })
                .await
                .map_err(status_text)?
                .into_inner();
            vec![
                ("id".to_string(), r.id),
                ("ttl_ms".to_string(), r.ttl_ms.to_string()),
                ("owner".to_string(), r.owner.to_string()),
            ]
        }
        SessionCommand::KeepAlive { id } => {
            let r = c
                .keep_alive(pb::KeepAliveRequest { id: id.clone() })
                .await
                .map_err(status_text)?
                .into_inner();
            vec![
                ("id".to_string(), r.id),
                ("ttl_ms".to_string(), r.ttl_ms.to_string()),
            ]
        }
        SessionCommand::Close { id } => {
            let r = c
                .close_session(pb::CloseSessionRequest { id: id.clone() })
                .await
                .map_err(status_text)?
                .into_inner();
            vec![
                ("id".to_string(), id.clone()),
                (
                    "instances_removed".to_string(),
                    r.instances_removed.to_string(),
                ),
            ]
        }
    };
    print_pairs(cli, ("field", "value"), &rows)
}

/// Two-column output (or a JSON array of objects).
fn print_pairs(cli: &Cli, names: (&str, &str), rows: &[(String, String)]) -> Result<(), String> {
    match cli.output {
        Output::Json => {
            let v: Vec<serde_json::Value> = rows
                .iter()
                .map(|(a, b)| serde_json::json!({ names.0: a, names.1: b }))
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
            );
        }
        Output::Table => {
            let w = rows
                .iter()
                .map(|(a, _)| a.len())
                .max()
                .unwrap_or(0)
                .max(names.0.len());
            println!("{:<w$}  {}", names.0.to_uppercase(), names.1.to_uppercase());
            for (a, b) in rows {
                println!("{a:<w$}  {b}");
            }
        }
    }
    Ok(())
}

async fn member(cli: &Cli, command: &MemberCommand) -> Result<(), String> {
    let mut c = connect(cli, OPERATION_TIMEOUT_MS).await?;
    let list = match command {
        MemberCommand::List => c
            .list_members(pb::ListMembersRequest {})
            .await
            .map_err(status_text)?
            .into_inner(),
        MemberCommand::Add { id, addr } => c
            .add_member(pb::AddMemberRequest {
                node_id: *id,
                addr: addr.clone(),
            })
            .await
            .map_err(status_text)?
            .into_inner()
            .members
            .unwrap_or_default(),
        MemberCommand::Promote { id } => c
            .promote_member(pb::PromoteMemberRequest { node_id: *id })
            .await
            .map_err(status_text)?
            .into_inner()
            .members
            .unwrap_or_default(),
        MemberCommand::Remove { id } => c
            .remove_member(pb::RemoveMemberRequest { node_id: *id })
            .await
            .map_err(status_text)?
            .into_inner()
            .members
            .unwrap_or_default(),
    };
    match cli.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&members_json(&list)).map_err(|e| e.to_string())?
        ),
        Output::Table => print!("{}", members_table(&list)),
    }
    Ok(())
}

fn member_role_name(role: i32) -> &'static str {
    match pb::MemberRole::try_from(role) {
        Ok(pb::MemberRole::Voter) => "voter",
        Ok(pb::MemberRole::Learner) => "learner",
        Ok(pb::MemberRole::Absent) => "absent",
        _ => "unknown",
    }
}

fn members_json(l: &pb::ListMembersResponse) -> serde_json::Value {
    serde_json::json!({
        "members": l.members.iter().map(|m| serde_json::json!({
            "node_id": m.node_id,
            "addr": m.addr,
            "consistent": m.consistent,
            "groups": m.groups.iter().map(|g| serde_json::json!({
                "group": g.group,
                "role": member_role_name(g.role),
                "addr": g.addr,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "changing": l.changing,
    })
}

fn members_table(l: &pb::ListMembersResponse) -> String {
    let mut out = String::from("ID  ADDR  ROLES\n");
    for m in &l.members {
        let roles: Vec<String> = m
            .groups
            .iter()
            .map(|g| format!("{}={}", g.group, member_role_name(g.role)))
            .collect();
        let note = if m.consistent {
            ""
        } else {
            "  (differs between groups: repeat the change to finish it)"
        };
        out.push_str(&format!(
            "{}  {}  {}{note}\n",
            m.node_id,
            m.addr,
            roles.join(",")
        ));
    }
    if !l.changing.is_empty() {
        out.push_str(&format!("changing now: {}\n", l.changing.join(", ")));
    }
    out
}

async fn cluster_status(cli: &Cli) -> Result<(), String> {
    let status = connect(cli, 0)
        .await?
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
