//! `--measure-failover`: how long writes stop when a group's leader dies (kill -9) or
//! is cut off from the other nodes, with clients writing through a surviving node.
//!
//! Each round picks a group (in turn), finds its leader, and starts `WRITERS`
//! closed-loop clients that publish unique values through another node. After a
//! baseline, the fault hits the leader; `t0` is when it is complete (the process
//! reaped, every partition rule in place). The round's gap is the time from the last
//! write that completed before `t0` to the first completion of a write *sent* after
//! `t0` — the stretch a client saw without a successful write. Then the fault is
//! healed (restart, or the partition removed) and the cluster settles before the next
//! round.

use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::cluster::Cluster;
use super::nemesis::FaultKind;
use super::ops::{Group, Key, Target, Write};
use super::runner::{Options, Progress};

/// Concurrent writers through the surviving node; several, so that one stuck until
/// its deadline does not hide the moment writes resume.
const WRITERS: u32 = 8;
/// Time writes flow before the fault.
const BASELINE: Duration = Duration::from_secs(2);
/// Give up waiting for writes to resume after this long.
const GIVE_UP: Duration = Duration::from_secs(60);

/// One measured round.
#[derive(Debug, Clone)]
pub struct Round {
    pub kind: FaultKind,
    pub group: Group,
    pub leader: usize,
    pub through: usize,
    /// `None` when writes did not resume within [`GIVE_UP`].
    pub gap: Option<Duration>,
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
    let timeout = Duration::from_millis(opts.op_timeout_ms);
    for kind in [FaultKind::KillLeader, FaultKind::IsolateLeader] {
        for i in 0..opts.failover_runs {
            let group = Group::ALL[i % Group::ALL.len()];
            cluster.wait_for_leaders(Duration::from_secs(60)).await?;
            cluster.wait_converged(Duration::from_secs(60)).await?;
            let leader = cluster
                .leader_of(group.raft_group())
                .await
                .ok_or_else(|| format!("no leader of {}", group.raft_group()))?;
            let through = leader % cluster.nodes.len() + 1;
            let target = Target {
                run_id: run_id.to_string(),
                channel: cluster.node(through).channel(),
                timeout,
            };
            let epoch = 1_000 + (rounds.len() as u32);
            let (stop, done, tasks) = start_writers(target, group, epoch);
            tokio::time::sleep(BASELINE).await;

            match kind {
                FaultKind::KillLeader => cluster.node(leader).kill9().await,
                _ => {
                    for other in cluster.ids().into_iter().filter(|&o| o != leader) {
                        cluster.net.block(leader, other).await?;
                        cluster.net.block(other, leader).await?;
                    }
                }
            }
            // Once the fault is complete: a write sent earlier may still have reached
            // the old leader while the rules went in one by one.
            let t0 = Instant::now();
            let gap = wait_for_resumption(&done, t0).await;
            stop.store(true, Ordering::SeqCst);
            match kind {
                FaultKind::KillLeader => cluster.node(leader).start()?,
                _ => cluster.net.heal().await?,
            }
            for task in tasks {
                let _ = task.await;
            }
            log_attempts(log, rounds.len() + 1, kind, &done, t0);
            progress.say(format!(
                "{kind} round {}: {} leader node {leader}, writes through node {through}: gap {}",
                i + 1,
                group.name(),
                gap.map_or("none (writes did not resume)".to_string(), |g| format!(
                    "{} ms",
                    g.as_millis()
                ))
            ));
            rounds.push(Round {
                kind,
                group,
                leader,
                through,
                gap,
            });
        }
    }
    Ok(rounds)
}

fn start_writers(
    target: Target,
    group: Group,
    epoch: u32,
) -> (
    Arc<AtomicBool>,
    Completions,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let done: Completions = Arc::new(Mutex::new(Vec::new()));
    let tasks = (0..WRITERS)
        .map(|w| {
            let (stop, done, target) = (stop.clone(), done.clone(), target.clone());
            tokio::spawn(async move {
                let key = Key {
                    group,
                    epoch,
                    index: w,
                };
                let mut seq = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    seq += 1;
                    let value = format!("{}.f{w}.{seq}", target.run_id);
                    let invoked = Instant::now();
                    let result = target.write(&key, &Write::Put(value)).await;
                    let error = result.as_ref().err().map(|e| e.code.clone());
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

/// The table of a measurement: per fault kind, the median, min and max gap, and every
/// round.
pub fn render(rounds: &[Round], opts: &Options) -> String {
    let mut out = format!(
        "Write gap after a leader fault, writes through a surviving node ({} writers, request deadline {} ms, heartbeat {} ms, election timeout {}-{} ms)\n",
        WRITERS, opts.op_timeout_ms, opts.heartbeat_ms, opts.election_min_ms, opts.election_max_ms
    );
    out.push_str(&format!(
        "  {:<15} {:>6} {:>11} {:>8} {:>8}\n",
        "fault", "rounds", "median ms", "min ms", "max ms"
    ));
    for kind in [FaultKind::KillLeader, FaultKind::IsolateLeader] {
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
