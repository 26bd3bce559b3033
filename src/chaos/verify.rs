//! What is checked once the faults are healed and the clients have stopped:
//!
//! 1. **No acknowledged write lost.** Every key is read at LINEARIZABLE (through the
//!    nodes in turn) and these reads are appended to the history like any other op
//!    (client ids `9GN`: group `G`, node `N`), so the linearizability check proves the
//!    final state agrees with every acknowledged write.
//! 2. **Linearizability** of the whole history, key by key ([`super::checker`]).
//! 3. **Convergence.** Once every node reports the same applied index in every group
//!    (the caller waits for that), each node's ClusterService/Digest of every group
//!    must be equal (a digest of the whole state at its applied index), and every key
//!    read at STALE from every node — each node's own state, as clients see it — must
//!    equal the final linearizable value.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use tonic::transport::Channel;

use super::history::{OkResult, OpKind, Recorder};
use super::ops::{Group, Key, Target};
use crate::pb;

/// Reads in flight at once during the final checks.
const PARALLEL_READS: usize = 8;
/// Attempts per key before the final read gives up.
const FINAL_READ_ATTEMPTS: usize = 20;

/// A key whose nodes disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divergence {
    pub key: String,
    /// The final linearizable value.
    pub expected: Option<String>,
    /// Per node: its stale value, or the error reading it.
    pub nodes: Vec<(usize, Result<Option<String>, String>)>,
}

/// The keys one read covers: every key that is the first of its read set.
fn read_roots(keys: &[Key]) -> Vec<Key> {
    keys.iter()
        .filter(|k| k.read_set().first() == Some(k))
        .copied()
        .collect()
}

/// Reads every key at LINEARIZABLE, recording the reads. Returns the final values,
/// and the keys that could not be read at all.
pub async fn final_reads(
    run_id: &str,
    channels: &[Channel],
    recorder: &Recorder,
    keys: &[Key],
    timeout: Duration,
) -> (BTreeMap<Key, Option<String>>, Vec<String>) {
    let reads = read_roots(keys).into_iter().enumerate().map(|(i, root)| {
        let targets: Vec<(usize, Target)> = channels
            .iter()
            .enumerate()
            .map(|(n, channel)| {
                (
                    n + 1,
                    Target {
                        run_id: run_id.to_string(),
                        channel: channel.clone(),
                        timeout,
                    },
                )
            })
            .collect();
        let recorder = recorder.clone();
        async move {
            for attempt in 0..FINAL_READ_ATTEMPTS {
                let (node, target) = &targets[(i + attempt) % targets.len()];
                let client = final_client(root.group, *node);
                let pendings: Vec<_> = root
                    .read_set()
                    .iter()
                    .map(|k| recorder.invoke(client, k.name(), OpKind::Get))
                    .collect();
                match target.read(&root, pb::Consistency::Linearizable).await {
                    Ok(values) => {
                        for (pending, (_, value)) in pendings.into_iter().zip(&values) {
                            pending.ok(OkResult::Read(value.clone()));
                        }
                        return Ok(values);
                    }
                    Err(_) => {
                        // Dropped: a read that failed observed nothing.
                        drop(pendings);
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                }
            }
            Err(root.name())
        }
    });
    let results: Vec<_> = futures::stream::iter(reads)
        .buffer_unordered(PARALLEL_READS)
        .collect()
        .await;
    let mut values = BTreeMap::new();
    let mut unreadable = Vec::new();
    for result in results {
        match result {
            Ok(read) => values.extend(read),
            Err(name) => unreadable.push(name),
        }
    }
    unreadable.sort();
    (values, unreadable)
}

/// Client id of a final read through `node`.
fn final_client(group: Group, node: usize) -> u32 {
    let g = match group {
        Group::Config => 1,
        Group::Naming => 2,
        Group::Db => 3,
    };
    (900 + g * 10 + node) as u32
}

/// Attempts at finding every node at one applied index per group for the digests.
const DIGEST_ATTEMPTS: usize = 20;

/// Compares ClusterService/Digest across nodes, group by group. Digests are only
/// comparable at one applied index, so it retries until every node reports the same
/// index for a group. Returns one line per group that differs or could not be
/// compared.
pub async fn compare_digests(channels: &[Channel]) -> Vec<String> {
    let mut last = Vec::new();
    for _ in 0..DIGEST_ATTEMPTS {
        let asks = channels.iter().map(|c| digest_of(c.clone()));
        let answers: Vec<Option<pb::DigestResponse>> = futures::future::join_all(asks).await;
        let Some(all) = answers.into_iter().collect::<Option<Vec<_>>>() else {
            last = vec!["a node did not answer ClusterService/Digest".to_string()];
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        };
        let mut groups: BTreeMap<String, Vec<(u64, pb::GroupDigest)>> = BTreeMap::new();
        for node in &all {
            for g in &node.groups {
                groups
                    .entry(g.group.clone())
                    .or_default()
                    .push((node.node_id, g.clone()));
            }
        }
        let same_index = groups.values().all(|per_node| {
            per_node.len() == channels.len()
                && per_node
                    .windows(2)
                    .all(|w| w[0].1.applied_index == w[1].1.applied_index)
        });
        if !same_index {
            last = vec![format!(
                "digests never taken at one applied index per group: {}",
                show_digests(&groups)
            )];
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        }
        return groups
            .iter()
            .filter(|(_, per_node)| per_node.windows(2).any(|w| w[0].1.digest != w[1].1.digest))
            .map(|(group, per_node)| {
                format!(
                    "group {group}: state digests differ at one applied index: {}",
                    show_digests(&BTreeMap::from([(group.clone(), per_node.clone())]))
                )
            })
            .collect();
    }
    last
}

fn show_digests(groups: &BTreeMap<String, Vec<(u64, pb::GroupDigest)>>) -> String {
    groups
        .iter()
        .map(|(group, per_node)| {
            let nodes: Vec<String> = per_node
                .iter()
                .map(|(id, d)| {
                    format!(
                        "node {id} index {} digest {} ({} records)",
                        d.applied_index, d.digest, d.records
                    )
                })
                .collect();
            format!("{group}: {}", nodes.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

async fn digest_of(channel: Channel) -> Option<pb::DigestResponse> {
    let mut client = pb::cluster_service_client::ClusterServiceClient::new(channel);
    let mut req = tonic::Request::new(pb::DigestRequest {});
    req.set_timeout(Duration::from_secs(10));
    Some(client.digest(req).await.ok()?.into_inner())
}

/// Reads every key at STALE from every node and compares with `expected`.
pub async fn compare_nodes(
    run_id: &str,
    channels: &[Channel],
    keys: &[Key],
    expected: &BTreeMap<Key, Option<String>>,
    timeout: Duration,
) -> Vec<Divergence> {
    let mut per_node: Vec<BTreeMap<Key, Result<Option<String>, String>>> = Vec::new();
    for channel in channels {
        let target = Target {
            run_id: run_id.to_string(),
            channel: channel.clone(),
            timeout,
        };
        let reads = read_roots(keys).into_iter().map(|root| {
            let target = target.clone();
            async move {
                match target.read(&root, pb::Consistency::Stale).await {
                    Ok(values) => values.into_iter().map(|(k, v)| (k, Ok(v))).collect(),
                    Err(e) => root
                        .read_set()
                        .into_iter()
                        .map(|k| (k, Err(format!("{}: {}", e.code, e.message))))
                        .collect::<Vec<_>>(),
                }
            }
        });
        let values: Vec<Vec<_>> = futures::stream::iter(reads)
            .buffer_unordered(PARALLEL_READS)
            .collect()
            .await;
        per_node.push(values.into_iter().flatten().collect());
    }
    let mut divergences = Vec::new();
    for key in keys {
        let Some(want) = expected.get(key) else {
            continue;
        };
        let nodes: Vec<(usize, Result<Option<String>, String>)> = per_node
            .iter()
            .enumerate()
            .map(|(n, values)| {
                let got = values
                    .get(key)
                    .cloned()
                    .unwrap_or_else(|| Err("not read".to_string()));
                (n + 1, got)
            })
            .collect();
        if nodes.iter().any(|(_, got)| got.as_ref() != Ok(want)) {
            divergences.push(Divergence {
                key: key.name(),
                expected: want.clone(),
                nodes,
            });
        }
    }
    divergences
}
