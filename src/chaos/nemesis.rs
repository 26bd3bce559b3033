//! The faults, one at a time: inject, hold, heal, then a quiet spell before the next.
//! Every choice (kind, target, durations, loss rate) comes from one seeded generator,
//! so a seed replays the same schedule of faults; the workload's timing, and so what
//! exactly the faults hit, still varies from run to run.
//!
//! With one fault at a time a majority always survives (three nodes lose one; five
//! lose at most two in a bridge), so the cluster is expected to keep accepting
//! writes throughout, which is what the write-gap table measures.
//!
//! A "leader" fault picks one group at random and targets its current leader (found
//! with ClusterService/Status); with no leader in sight it falls back to a random node
//! and says so in the fault's description.

use std::fmt;
use std::time::Duration;

use clap::ValueEnum;

use super::cluster::{Cluster, GROUPS};
use super::disk::DiskFault;
use crate::bench::client::Rng;

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
pub enum FaultKind {
    /// kill -9 of a random node; restarted (same data, same flags) when healed.
    KillNode,
    /// kill -9 of a group's leader.
    KillLeader,
    /// SIGSTOP of a random node for longer than an election timeout, then SIGCONT.
    PauseNode,
    /// SIGSTOP of a group's leader.
    PauseLeader,
    /// A random node cut off from every other node (clients still reach it).
    IsolateNode,
    /// A group's leader cut off from every other node.
    IsolateLeader,
    /// One node sees everyone, the others are split in two halves that do not see
    /// each other.
    Bridge,
    /// A random share of one node's packets to one peer are dropped; the other
    /// direction is untouched.
    OneWayLoss,
    /// SIGTERM (a clean shutdown with leadership handover), then start again.
    Restart,
    /// The node with a small tmpfs data directory finds its disk full.
    DiskFull,
}

impl FaultKind {
    /// Every kind but [`FaultKind::DiskFull`], which needs `--disk-full`.
    pub const DEFAULT: [FaultKind; 9] = [
        FaultKind::KillNode,
        FaultKind::KillLeader,
        FaultKind::PauseNode,
        FaultKind::PauseLeader,
        FaultKind::IsolateNode,
        FaultKind::IsolateLeader,
        FaultKind::Bridge,
        FaultKind::OneWayLoss,
        FaultKind::Restart,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillNode => "kill-node",
            FaultKind::KillLeader => "kill-leader",
            FaultKind::PauseNode => "pause-node",
            FaultKind::PauseLeader => "pause-leader",
            FaultKind::IsolateNode => "isolate-node",
            FaultKind::IsolateLeader => "isolate-leader",
            FaultKind::Bridge => "bridge",
            FaultKind::OneWayLoss => "one-way-loss",
            FaultKind::Restart => "restart",
            FaultKind::DiskFull => "disk-full",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What has to be undone.
#[derive(Debug)]
enum Undo {
    Start(usize),
    Resume(usize),
    HealNetwork,
    FreeDisk(usize),
}

/// A fault in place, until [`Nemesis::heal`].
#[derive(Debug)]
pub struct Active {
    pub kind: FaultKind,
    pub description: String,
    /// How long to leave it in place.
    pub hold: Duration,
    /// Something that went wrong with nacosd while injecting it (a clean shutdown
    /// that was not clean).
    pub problem: Option<String>,
    undo: Undo,
}

/// Chooses and applies faults.
pub struct Nemesis {
    rng: Rng,
    kinds: Vec<FaultKind>,
    /// The nodes' maximum election timeout: pauses and partitions outlast it.
    election_max: Duration,
    disk: Option<DiskFault>,
}

impl Nemesis {
    pub fn new(
        seed: u64,
        kinds: Vec<FaultKind>,
        election_max: Duration,
        disk: Option<DiskFault>,
    ) -> Nemesis {
        Nemesis {
            rng: Rng::new(seed),
            kinds,
            election_max,
            disk,
        }
    }

    /// A duration in `lo..=hi` milliseconds.
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.rng.below(hi.saturating_sub(lo) + 1))
    }

    /// How long to wait before the next fault.
    pub fn quiet(&mut self) -> Duration {
        self.millis(2_000, 5_000)
    }

    fn node(&mut self, cluster: &Cluster) -> usize {
        1 + self.rng.below(cluster.nodes.len() as u64) as usize
    }

    /// The leader of a random group, or a random node when none is known.
    async fn leader(&mut self, cluster: &Cluster) -> (usize, String) {
        let group = GROUPS[self.rng.below(GROUPS.len() as u64) as usize];
        let fallback = self.node(cluster);
        match cluster.leader_of(group).await {
            Some(id) => (id, format!("node {id}, leader of {group}")),
            None => (
                fallback,
                format!("node {fallback} (no leader of {group} found)"),
            ),
        }
    }

    pub fn pick(&mut self) -> FaultKind {
        self.kinds[self.rng.below(self.kinds.len() as u64) as usize]
    }

    /// Applies a fault of `kind`.
    pub async fn inject(
        &mut self,
        cluster: &mut Cluster,
        kind: FaultKind,
    ) -> Result<Active, String> {
        let long = self.election_max.as_millis() as u64;
        let mut problem = None;
        let (description, hold, undo) = match kind {
            FaultKind::KillNode | FaultKind::KillLeader => {
                let (id, who) = if kind == FaultKind::KillNode {
                    let id = self.node(cluster);
                    (id, describe_node(cluster, id).await)
                } else {
                    self.leader(cluster).await
                };
                cluster.node(id).kill9().await;
                (
                    format!("kill -9 {who}"),
                    self.millis(1_000, 8_000),
                    Undo::Start(id),
                )
            }
            FaultKind::PauseNode | FaultKind::PauseLeader => {
                let (id, who) = if kind == FaultKind::PauseNode {
                    let id = self.node(cluster);
                    (id, describe_node(cluster, id).await)
                } else {
                    self.leader(cluster).await
                };
                cluster.node(id).pause().await?;
                let hold = self.millis(long + 500, long + 5_000);
                (format!("SIGSTOP {who}"), hold, Undo::Resume(id))
            }
            FaultKind::IsolateNode | FaultKind::IsolateLeader => {
                let (id, who) = if kind == FaultKind::IsolateNode {
                    let id = self.node(cluster);
                    (id, describe_node(cluster, id).await)
                } else {
                    self.leader(cluster).await
                };
                for other in cluster.ids().into_iter().filter(|&o| o != id) {
                    cluster.net.block(id, other).await?;
                    cluster.net.block(other, id).await?;
                }
                let hold = self.millis(long + 500, long + 7_000);
                (format!("isolate {who}"), hold, Undo::HealNetwork)
            }
            FaultKind::Bridge => {
                let mut ids = cluster.ids();
                let bridge = ids.remove(self.rng.below(ids.len() as u64) as usize);
                // Shuffle the rest, then split them in two halves.
                for i in (1..ids.len()).rev() {
                    ids.swap(i, self.rng.below(i as u64 + 1) as usize);
                }
                let (left, right) = ids.split_at(ids.len() / 2);
                for &a in left {
                    for &b in right {
                        cluster.net.block(a, b).await?;
                        cluster.net.block(b, a).await?;
                    }
                }
                let hold = self.millis(long + 500, long + 7_000);
                (
                    format!("bridge: node {bridge} sees all, {left:?} and {right:?} do not see each other"),
                    hold,
                    Undo::HealNetwork,
                )
            }
            FaultKind::OneWayLoss => {
                let from = self.node(cluster);
                let others: Vec<usize> = cluster.ids().into_iter().filter(|&o| o != from).collect();
                let to = others[self.rng.below(others.len() as u64) as usize];
                let percent = 30 + self.rng.below(66);
                cluster.net.lossy(from, to, percent as f64 / 100.0).await?;
                let hold = self.millis(3_000, 10_000);
                (
                    format!("drop {percent}% of packets from node {from} to node {to}"),
                    hold,
                    Undo::HealNetwork,
                )
            }
            FaultKind::Restart => {
                let id = self.node(cluster);
                problem = cluster
                    .node(id)
                    .terminate(Duration::from_secs(20))
                    .await
                    .err();
                (
                    format!("SIGTERM node {id}, then start it again"),
                    self.millis(200, 2_000),
                    Undo::Start(id),
                )
            }
            FaultKind::DiskFull => {
                let disk = self
                    .disk
                    .clone()
                    .ok_or("disk-full needs --disk-full (a node on a small tmpfs)")?;
                disk.fill().await?;
                let hold = self.millis(3_000, 10_000);
                (
                    format!("fill the disk of node {}", disk.node),
                    hold,
                    Undo::FreeDisk(disk.node),
                )
            }
        };
        Ok(Active {
            kind,
            description,
            hold,
            problem,
            undo,
        })
    }

    /// Undoes `active`. Returns a note when healing needed more than the undo (a node
    /// restarted after a full disk).
    pub async fn heal(
        &mut self,
        cluster: &mut Cluster,
        active: Active,
    ) -> Result<Option<String>, String> {
        match active.undo {
            Undo::Start(id) => {
                cluster.node(id).start()?;
            }
            Undo::Resume(id) => cluster.node(id).resume().await,
            Undo::HealNetwork => cluster.net.heal().await?,
            Undo::FreeDisk(id) => {
                if let Some(disk) = &self.disk {
                    disk.free().await?;
                }
                return super::disk::recover(cluster, id).await;
            }
        }
        Ok(None)
    }
}

/// `node {id}`, with the groups it leads as the fault begins: a fault drawn for any
/// node may still hit a leader, and a violation's story often turns on that.
async fn describe_node(cluster: &Cluster, id: usize) -> String {
    let mut led = Vec::new();
    for group in GROUPS {
        if cluster.leader_of(group).await == Some(id) {
            led.push(group);
        }
    }
    if led.is_empty() {
        format!("node {id}")
    } else {
        format!("node {id}, leader of {}", led.join(" and "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(seed: u64) -> Vec<(FaultKind, Duration)> {
        let mut n = Nemesis::new(
            seed,
            FaultKind::DEFAULT.to_vec(),
            Duration::from_secs(3),
            None,
        );
        (0..50).map(|_| (n.pick(), n.quiet())).collect()
    }

    #[test]
    fn a_seed_replays_the_same_schedule() {
        assert_eq!(schedule(42), schedule(42));
        assert_ne!(schedule(42), schedule(43));
        let kinds: std::collections::BTreeSet<FaultKind> =
            schedule(7).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            kinds.len(),
            FaultKind::DEFAULT.len(),
            "50 draws cover every kind"
        );
    }
}
