//! The nodes of a run and what the harness asks of them as a whole: start them, find a
//! group's leader, wait for leaders and for convergence, bring everything back.
//!
//! Leaders are found through ClusterService/Status on the client port: the node that
//! reports itself leader of the group with the highest term among the answers. A node
//! that does not answer (down, paused, partitioned from the runner) is skipped.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use super::net::Network;
use super::node::{Node, NodeSpec, ProcessState, System};
use crate::pb;

/// The nacosd groups, by the names ClusterService/Status reports.
pub const GROUPS: [&str; 3] = ["config", "naming_persistent", "embedded_db"];

/// How a run starts its nodes.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub system: System,
    pub nodes: usize,
    pub binary: std::path::PathBuf,
    pub extra_args: Vec<String>,
    pub log_filter: String,
    /// `(node, MiB)`: that node's data directory is a tmpfs of that size.
    pub tmpfs: Option<(usize, u64)>,
}

/// The network and the nodes of one run. Dropping it kills every node (the children
/// are `kill_on_drop`) and then removes the network.
pub struct Cluster {
    /// Declared before `net` so that the processes go before their namespaces.
    pub nodes: Vec<Node>,
    pub net: Network,
}

impl Cluster {
    /// Creates the network, lays out the nodes under `out` and starts them.
    pub fn start(run_id: &str, spec: &ClusterSpec, out: &Path) -> Result<Cluster, String> {
        let net = Network::create(run_id, spec.nodes)?;
        let members = spec.system.members(spec.nodes, |i| net.node_ip(i));
        let mut nodes = Vec::new();
        for i in 1..=spec.nodes {
            nodes.push(Node::new(NodeSpec {
                system: spec.system,
                id: i,
                namespace: net.namespace(i),
                ip: net.node_ip(i),
                binary: spec.binary.clone(),
                data_dir: out.join(format!("data/node{i}")),
                log: out.join(format!("node{i}.log")),
                members: members.clone(),
                extra_args: spec.extra_args.clone(),
                log_filter: spec.log_filter.clone(),
            })?);
        }
        if let Some((node, mb)) = spec.tmpfs {
            net.mount_tmpfs(&nodes[node - 1].spec.data_dir, mb)?;
        }
        let mut cluster = Cluster { nodes, net };
        for node in &mut cluster.nodes {
            node.start()?;
        }
        Ok(cluster)
    }

    pub fn node(&mut self, id: usize) -> &mut Node {
        &mut self.nodes[id - 1]
    }

    pub fn ids(&self) -> Vec<usize> {
        (1..=self.nodes.len()).collect()
    }

    /// Every node's status, `None` for those that did not answer.
    pub async fn statuses(&self) -> Vec<Option<pb::StatusResponse>> {
        let asks = self.nodes.iter().map(|n| n.status());
        futures::future::join_all(asks).await
    }

    /// The current leader of `group`: the self-declared leader with the highest term.
    pub async fn leader_of(&self, group: &str) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for status in self.statuses().await.into_iter().flatten() {
            for g in status.groups.iter().filter(|g| g.group == group) {
                if g.role == pb::Role::Leader as i32 && best.is_none_or(|(t, _)| g.term > t) {
                    best = Some((g.term, status.node_id as usize));
                }
            }
        }
        best.map(|(_, id)| id)
    }

    /// Waits until every group has a leader that every answering node agrees on, and
    /// every running node answers.
    pub async fn wait_for_leaders(&mut self, within: Duration) -> Result<(), String> {
        let end = Instant::now() + within;
        loop {
            self.check_processes()?;
            if let Some(leaders) = self.agreed_leaders().await {
                if leaders.len() == GROUPS.len() {
                    return Ok(());
                }
            }
            if Instant::now() > end {
                return Err(format!(
                    "no agreed leader in every group within {within:?}: {}",
                    self.describe().await
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Each group's leader if every running node answers and agrees on it.
    async fn agreed_leaders(&mut self) -> Option<BTreeMap<String, u64>> {
        let running: Vec<bool> = self.nodes.iter_mut().map(|n| n.is_up()).collect();
        let mut agreed: Option<BTreeMap<String, u64>> = None;
        for (status, up) in self.statuses().await.into_iter().zip(running) {
            if !up {
                continue;
            }
            let status = status?;
            let mut leaders = BTreeMap::new();
            for g in status.groups {
                leaders.insert(g.group, g.leader_id?);
            }
            match &agreed {
                None => agreed = Some(leaders),
                Some(a) if *a == leaders => {}
                Some(_) => return None,
            }
        }
        agreed
    }

    /// Applied index per group on each node (`None`: the node did not answer).
    pub async fn applied(&self) -> Vec<Option<BTreeMap<String, u64>>> {
        self.statuses()
            .await
            .into_iter()
            .map(|s| {
                s.map(|s| {
                    s.groups
                        .into_iter()
                        .map(|g| (g.group, g.applied_index.unwrap_or(0)))
                        .collect()
                })
            })
            .collect()
    }

    /// Waits until every node answers and reports the same applied index in every
    /// group, twice in a row a moment apart (so nothing was still in flight).
    pub async fn wait_converged(&mut self, within: Duration) -> Result<(), String> {
        let end = Instant::now() + within;
        let mut previous = None;
        loop {
            self.check_processes()?;
            let applied = self.applied().await;
            let all: Option<Vec<_>> = applied.into_iter().collect();
            let same = all
                .as_ref()
                .filter(|a| a.windows(2).all(|w| w[0] == w[1]))
                .map(|a| a[0].clone());
            if same.is_some() && same == previous {
                return Ok(());
            }
            previous = same;
            if Instant::now() > end {
                return Err(format!(
                    "nodes did not reach the same applied index in every group within {within:?}: {}",
                    self.describe().await
                ));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// A node that exited without being told to is an error (with its exit status).
    pub fn check_processes(&mut self) -> Result<(), String> {
        for node in &mut self.nodes {
            if let ProcessState::Exited(how) = node.state() {
                return Err(format!(
                    "node {} exited unexpectedly ({how}); see {}",
                    node.id(),
                    node.spec.log.display()
                ));
            }
        }
        Ok(())
    }

    /// One line per node: its groups' role, term, leader and applied index.
    pub async fn describe(&self) -> String {
        let mut out = Vec::new();
        for (i, status) in self.statuses().await.into_iter().enumerate() {
            let Some(s) = status else {
                out.push(format!("node {}: no answer", i + 1));
                continue;
            };
            let groups: Vec<String> = s
                .groups
                .iter()
                .map(|g| {
                    format!(
                        "{} {} term {} leader {} applied {}",
                        g.group,
                        pb::Role::try_from(g.role)
                            .map(|r| r.as_str_name())
                            .unwrap_or("?"),
                        g.term,
                        g.leader_id.map_or("-".to_string(), |l| l.to_string()),
                        g.applied_index.map_or("-".to_string(), |a| a.to_string()),
                    )
                })
                .collect();
            out.push(format!("node {}: {}", s.node_id, groups.join("; ")));
        }
        out.join(" | ")
    }
}
