//! `--measure-failover`: how long writes stop when a group's leader dies (kill -9), is
//! cut off from the other nodes, or is stopped cleanly (SIGTERM, as in a rolling
//! restart), with clients writing through a surviving node. `--system etcd` measures an
//! etcd cluster the same way, for the side-by-side table in docs/BENCHMARKS.md.
//!
//! Each round picks a group (in turn), finds its leader, and starts `WRITERS`
//! closed-loop clients that write unique values through another node. After a
//! baseline, the fault hits the leader.
//! - kill -9 and isolation: `t0` is when the fault is complete (the process reaped,
//!   every partition rule in place). The round's gap is the time from the last write
//!   that completed before `t0` to the first completion of a write *sent* after `t0`:
//!   the stretch a client saw without a successful write.
//! - SIGTERM: the leader hands its groups over and exits while writes go on; the gap is
//!   the longest stretch between two successful writes from the signal until a second
//!   after the process exited.
//!
//! Then the fault is healed (restart, or the partition removed) and the cluster
//! settles before the next round.

use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::Channel;

use super::cluster::Cluster;
use super::nemesis::FaultKind;
use super::node::System;
use super::ops::{Group, Key, Target, Write};
use super::runner::{Options, Progress};

/// The fault kinds measured, in order.
pub const KINDS: [FaultKind; 3] = [
    FaultKind::KillLeader,
    FaultKind::IsolateLeader,
    FaultKind::Restart,
];

/// Concurrent writers through the surviving node; several, so that one stuck until
/// its deadline does not hide the moment writes resume.
const WRITERS: u32 = 8;
/// Time writes flow before the fault.
const BASELINE: Duration = Duration::from_secs(2);
/// Give up waiting for writes to resume after this long.
const GIVE_UP: Duration = Duration::from_secs(60);
/// How long a SIGTERM'd leader may take to hand over and exit.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// After a clean stop, writes are watched this long for a late stall.
const AFTER_STOP: Duration = Duration::from_secs(1);

/// One measured round.
#[derive(Debug, Clone)]
pub struct Round {
    pub kind: FaultKind,
    pub group: Group,
    pub leader: usize,
    pub through: usize,
    /// `None` when writes did not resume within [`GIVE_UP`].
    pub gap: Option<Duration>,
    /// What went wrong besides the gap (a clean stop that was not clean).
    pub problem: Option<String>,
}

/// One write of a round.
struct Attempt {
    writer: u32,
    invoked: Instant,
    completed: Instant,
    /// `None` for success, else the status code.
    error: Option<String>,
}

/// Every write of a round, as they complete.
type Completions = Arc<Mutex<Vec<Attempt>>>;

pub async fn measure(
    opts: &Options,
    cluster: &mut Cluster,
    run_id: &str,
    progress: &Progress,
    log: &Path,
) -> Result<Vec<Round>, String> {
    let mut rounds = Vec::new();
    for kind in KINDS {
        for i in 0..opts.failover_runs {
            let group = Group::ALL[i % Group::ALL.len()];
            let leader = settle(opts.system, cluster, group).await?;
            let through = leader % cluster.nodes.len() + 1;
            let writer = Writer {
                system: opts.system,
                run_id: run_id.to_string(),
                channel: cluster.node(through).channel(),
                timeout: Duration::from_millis(opts.op_timeout_ms),
                group,
                epoch: 1_000 + (rounds.len() as u32),
            };
            let (stop, done, tasks) = start_writers(writer);
            tokio::time::sleep(BASELINE).await;

            let mut problem = None;
            let (t0, gap) = match kind {
                FaultKind::KillLeader => {
                    cluster.node(leader).kill9().await;
                    let t0 = Instant::now();
                    (t0, wait_for_resumption(&done, t0).await)
                }
                FaultKind::IsolateLeader => {
                    for other in cluster.ids().into_iter().filter(|&o| o != leader) {
                        cluster.net.block(leader, other).await?;
                        cluster.net.block(other, leader).await?;
                    }
                    // Once the fault is complete: a write sent earlier may still have
                    // reached the old leader while the rules went in one by one.
                    let t0 = Instant::now();
                    (t0, wait_for_resumption(&done, t0).await)
                }
                _ => {
                    let t0 = Instant::now();
                    problem = cluster.node(leader).terminate(STOP_GRACE).await.err();
                    let end = Instant::now() + AFTER_STOP;
                    tokio::time::sleep_until(end).await;
                    (t0, longest_stall(&done, t0, end))
                }
            };
            stop.store(true, Ordering::SeqCst);
            match kind {
                FaultKind::IsolateLeader => cluster.net.heal().await?,
                _ => cluster.node(leader).start()?,
            }
            for task in tasks {
                let _ = task.await;
            }
            log_attempts(log, rounds.len() + 1, kind, &done, t0);
            progress.say(format!(
                "{kind} round {}: {} leader node {leader}, writes through node {through}: gap {}{}",
                i + 1,
                group.name(),
                gap.map_or("none (writes did not resume)".to_string(), |g| format!(
                    "{} ms",
                    g.as_millis()
                )),
                problem
                    .as_deref()
                    .map(|p| format!("; {p}"))
                    .unwrap_or_default()
            ));
            rounds.push(Round {
                kind,
                group,
                leader,
                through,
                gap,
                problem,
            });
        }
    }
    Ok(rounds)
}

/// Waits until the cluster is whole and agrees on its leaders; the leader of `group`.
async fn settle(system: System, cluster: &mut Cluster, group: Group) -> Result<usize, String> {
    match system {
        System::Etcd => super::etcd::wait_for_leader(cluster, Duration::from_secs(60)).await,
        System::Nacosd => {
            cluster.wait_for_leaders(Duration::from_secs(60)).await?;
            cluster.wait_converged(Duration::from_secs(60)).await?;
            cluster
                .leader_of(group.raft_group())
                .await
                .ok_or_else(|| format!("no leader of {}", group.raft_group()))
        }
    }
}

/// Where and how the writers of a round write.
#[derive(Clone)]
struct Writer {
    system: System,
    run_id: String,
    channel: Channel,
    timeout: Duration,
    group: Group,
    epoch: u32,
}

impl Writer {
    /// One write of writer `w`; `Err` is the status code.
    async fn put(&self, w: u32, value: String) -> Result<(), String> {
        match self.system {
            System::Nacosd => {
                let target = Target {
                    run_id: self.run_id.clone(),
                    channel: self.channel.clone(),
                    timeout: self.timeout,
                };
                let key = Key {
                    group: self.group,
                    epoch: self.epoch,
                    index: w,
                };
                target
                    .write(&key, &Write::Put(value))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.code)
            }
            System::Etcd => {
                let key = format!("{}/{}/{}/{w}", self.run_id, self.group.name(), self.epoch);
                super::etcd::put(self.channel.clone(), key, value, self.timeout).await
            }
        }
    }
}

fn start_writers(
    writer: Writer,
) -> (
    Arc<AtomicBool>,
    Completions,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let done: Completions = Arc::new(Mutex::new(Vec::new()));
    let tasks = (0..WRITERS)
        .map(|w| {
            let (stop, done, writer) = (stop.clone(), done.clone(), writer.clone());
            tokio::spawn(async move {
                let mut seq = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    seq += 1;
                    let value = format!("{}.f{w}.{seq}", writer.run_id);
                    let invoked = Instant::now();
                    let error = writer.put(w, value).await.err();
                    let pause = if error.is_some() { 20 } else { 10 };
                    if let Ok(mut d) = done.lock() {
                        d.push(Attempt {
                            writer: w,
                            invoked,
                            completed: Instant::now(),
                            error,
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            })
        })
        .collect();
    (stop, done, tasks)
}

/// Appends every write of a round to `log`, times in milliseconds from `t0`.
fn log_attempts(log: &Path, round: usize, kind: FaultKind, done: &Completions, t0: Instant) {
    let Ok(attempts) = done.lock() else {
        return;
    };
    let ms = |t: Instant| {
        if t >= t0 {
            (t - t0).as_millis() as i64
        } else {
            -((t0 - t).as_millis() as i64)
        }
    };
    let mut text = format!("round {round} ({kind}); ms from the fault\n");
    for a in attempts.iter().filter(|a| ms(a.completed) > -500) {
        text.push_str(&format!(
            "  writer {} sent {:>6} done {:>6} {}\n",
            a.writer,
            ms(a.invoked),
            ms(a.completed),
            a.error.as_deref().unwrap_or("ok")
        ));
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = f.write_all(text.as_bytes());
    }
}

/// Waits until a write sent after `t0` succeeds; the gap from the last completion
/// before `t0`.
async fn wait_for_resumption(done: &Completions, t0: Instant) -> Option<Duration> {
    let end = t0 + GIVE_UP;
    while Instant::now() < end {
        let (before, after) = {
            let d = done.lock().ok()?;
            let ok = || d.iter().filter(|a| a.error.is_none());
            let before = ok().map(|a| a.completed).filter(|&c| c <= t0).max();
            let after = ok().filter(|a| a.invoked >= t0).map(|a| a.completed).min();
            (before, after)
        };
        if let Some(after) = after {
            return Some(after - before.unwrap_or(t0));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// The longest stretch without a successful write between `from` and `to`, counted
/// from the last success before `from`; `None` when nothing succeeded in between.
fn longest_stall(done: &Completions, from: Instant, to: Instant) -> Option<Duration> {
    let d = done.lock().ok()?;
    let mut times: Vec<Instant> = d
        .iter()
        .filter(|a| a.error.is_none() && a.completed <= to)
        .map(|a| a.completed)
        .collect();
    times.sort_unstable();
    let start = times.iter().rposition(|&t| t <= from).unwrap_or(0);
    let window = &times[start..];
    if !window.iter().any(|&t| t > from) {
        return None;
    }
    window.windows(2).map(|w| w[1] - w[0]).max()
}

/// The table of a measurement: per fault kind, the median, min and max gap, and every
/// round.
pub fn render(rounds: &[Round], opts: &Options) -> String {
    let settings = match opts.system {
        System::Nacosd => format!(
            "nacosd, heartbeat {} ms, election timeout {}-{} ms",
            opts.heartbeat_ms, opts.election_min_ms, opts.election_max_ms
        ),
        System::Etcd => "etcd, its default settings".to_string(),
    };
    let mut out = format!(
        "Write gap after a leader fault, writes through a surviving node ({settings}; {} writers, request deadline {} ms)\n",
        WRITERS, opts.op_timeout_ms
    );
    out.push_str(&format!(
        "  {:<15} {:>6} {:>11} {:>8} {:>8}\n",
        "fault", "rounds", "median ms", "min ms", "max ms"
    ));
    for kind in KINDS {
        let mut gaps: Vec<u128> = rounds
            .iter()
            .filter(|r| r.kind == kind)
            .filter_map(|r| r.gap.map(|g| g.as_millis()))
            .collect();
        gaps.sort_unstable();
        let n = rounds.iter().filter(|r| r.kind == kind).count();
        let median = if gaps.is_empty() {
            "-".to_string()
        } else if gaps.len() % 2 == 1 {
            gaps[gaps.len() / 2].to_string()
        } else {
            ((gaps[gaps.len() / 2 - 1] + gaps[gaps.len() / 2]) / 2).to_string()
        };
        out.push_str(&format!(
            "  {:<15} {:>6} {:>11} {:>8} {:>8}{}\n",
            kind.name(),
            n,
            median,
            gaps.first().map_or("-".to_string(), |g| g.to_string()),
            gaps.last().map_or("-".to_string(), |g| g.to_string()),
            if gaps.len() < n {
                format!("  ({} rounds never resumed)", n - gaps.len())
            } else {
                String::new()
            }
        ));
    }
    out.push_str("  rounds:\n");
    for r in rounds {
        out.push_str(&format!(
            "    {:<15} {:<7} leader {} via {}: {}\n",
            r.kind.name(),
            r.group.name(),
            r.leader,
            r.through,
            r.gap.map_or("no resumption".to_string(), |g| format!(
                "{} ms",
                g.as_millis()
            ))
        ));
    }
    out
}
