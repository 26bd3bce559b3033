//! The consistency layer on in-process clusters: forwarding, read levels, fallback,
//! and exactly-once application under leader changes.
//!
//! These tests use their own group, `counter`: each command increments a per-key
//! counter, so a write applied twice would be visible as a count of 2. Its apply can
//! be paused per node to make a follower lag on purpose.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use crate::common::*;
use nacosd::consistency::{self, ReadLevel};
use nacosd::Error;

use nacosd::raft::group::GroupRegistry;
use nacosd::raft::rocks_sm::{ApplyError, KvTxn, KvView, Processor, RocksStateMachine};
use nacosd::raft::types::Command;

const COUNTER: &str = "counter";

/// Per-node apply gate, keyed by the group's directory (unique per node).
#[derive(Default)]
struct Gate {
    closed: Mutex<bool>,
    cv: Condvar,
}

fn gates() -> &'static Mutex<HashMap<PathBuf, Arc<Gate>>> {
    static GATES: OnceLock<Mutex<HashMap<PathBuf, Arc<Gate>>>> = OnceLock::new();
    GATES.get_or_init(Default::default)
}

fn gate_of(node: &TestCluster, id: u64) -> Arc<Gate> {
    let dir = node.nodes[&id].config.data_dir.join("groups").join(COUNTER);
    gates().lock().unwrap().entry(dir).or_default().clone()
}

fn set_gate(gate: &Gate, closed: bool) {
    *gate.closed.lock().unwrap() = closed;
    gate.cv.notify_all();
}

struct CounterProcessor {
    gate: Arc<Gate>,
}

impl Processor for CounterProcessor {
    type Event = ();

    fn apply(
        &self,
        txn: &mut KvTxn<'_>,
        _index: u64,
        cmd: &Command,
    ) -> Result<Vec<u8>, ApplyError> {
        let mut closed = self.gate.closed.lock().unwrap();
        while *closed {
            closed = self.gate.cv.wait(closed).unwrap();
        }
        drop(closed);
        let key = cmd.payload.clone();
        if key == b"io-error" {
            // Stands for a disk failure while applying a committed entry.
            return Err(ApplyError::Fatal(std::io::Error::other(
                "injected disk failure",
            )));
        }
        let n = txn
            .get(&key)?
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
            .unwrap_or(0);
        txn.put(&key, (n + 1).to_le_bytes().to_vec());
        Ok((n + 1).to_le_bytes().to_vec())
    }

    fn query(&self, view: &KvView<'_>, query: &[u8]) -> Result<Vec<u8>, Error> {
        Ok(view
            .get(query)?
            .unwrap_or_else(|| 0u64.to_le_bytes().to_vec()))
    }
}

fn counter_registry(reg: GroupRegistry) -> GroupRegistry {
    reg.register(COUNTER, |ctx| {
        let gate = gates()
            .lock()
            .unwrap()
            .entry(ctx.dir.clone())
            .or_default()
            .clone();
        Ok(Arc::new(RocksStateMachine::new(
            &ctx.name,
            ctx.db.clone(),
            CounterProcessor { gate },
        )?))
    })
}

async fn incr(cluster: &TestCluster, via: u64, key: &str) -> nacosd::Result<u64> {
    let cmd = Command::new("incr", key, key.as_bytes().to_vec());
    let r = consistency::write(
        cluster.node(via),
        COUNTER,
        cmd,
        Some(Duration::from_secs(5)),
    )
    .await?;
    Ok(u64::from_le_bytes(r.try_into().unwrap()))
}

async fn count(
    cluster: &TestCluster,
    via: u64,
    key: &str,
    level: ReadLevel,
) -> nacosd::Result<u64> {
    let r = consistency::read(
        cluster.node(via),
        COUNTER,
        key.as_bytes().to_vec(),
        level,
        Some(Duration::from_secs(3)),
    )
    .await?;
    Ok(u64::from_le_bytes(r.try_into().unwrap()))
}

/// One counter of a node's /metrics text.
fn metric(node: &nacosd::raft::node::MultiRaft, name: &str) -> u64 {
    let text = nacosd::http::render_metrics(node);
    series_value(&text, name).unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
}

/// Every metric the Grafana dashboard (deploy/grafana/nacosd.json) queries exists on
/// a cluster that has done a little of everything: a dashboard panel on a misspelt or
/// removed metric would stay empty without anyone noticing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_metric_of_the_dashboard_exists() {
    let cluster = TestCluster::start(3, with_kv, |_| {}).await;
    let leader = cluster.wait_for_leader(KV).await;
    let via = cluster.other_than(leader);
    put(cluster.node(via), KV, "k", "v").await.unwrap();
    get(cluster.node(via), KV, "k", ReadLevel::Linearizable)
        .await
        .unwrap();
    let rendered: String = [leader, via]
        .iter()
        .map(|id| nacosd::http::render_metrics(cluster.node(*id)))
        .collect();
    let dashboard = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/nacosd.json"),
    )
    .unwrap();
    let json: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut names = std::collections::BTreeSet::new();
    for panel in json["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                // The client port's gRPC metrics need the gRPC server, which these
                // in-process nodes do not run: multiprocess::standalone_node_... checks
                // them on a real process.
                let grpc = word.starts_with("nacosd_grpc_");
                if (word.starts_with("nacosd_") || word.starts_with("process_")) && !grpc {
                    names.insert(word.to_string());
                }
            }
        }
    }
    assert!(names.len() > 10, "{names:?}");
    for name in names {
        assert!(
            rendered
                .lines()
                .any(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{"))),
            "the dashboard queries {name}, which /metrics does not have"
        );
    }
    cluster.shutdown().await;
}

/// The log cache holds a group's newest entries while it is written to, and lets them
/// go once it falls quiet (src/idle.rs; `log_cache::MAX_AGE` after their append at the
/// latest): a quiet group keeps no copy of its last writes in memory. Seen on the
/// leader and on a follower, in the group's state and in /metrics (with the reads the
/// cache answered).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quiet_groups_log_cache_empties() {
    let cluster = TestCluster::start(3, with_kv, |_| {}).await;
    let leader = cluster.wait_for_leader(KV).await;
    let follower = cluster.other_than(leader);
    let cached = |id: u64| cached_entries(&cluster, id);
    assert!(
        write_until_cached(&cluster, leader, "k").await,
        "no write's entry was ever in the leader's cache"
    );
    let gauge_name = format!("nacosd_log_cache_entries{{group=\"{KV}\"}}");
    let gauge = |id: u64| metric(cluster.node(id), &gauge_name);
    wait_until("the leader's and a follower's caches to empty", || {
        cached(leader) == (0, 0) && cached(follower) == (0, 0)
    })
    .await;
    assert_eq!(gauge(leader), 0);
    assert_eq!(gauge(follower), 0);
    // The writes' entries were read back (applied on both, replicated by the leader)
    // from the cache, and /metrics counts those reads.
    let from_cache = format!("nacosd_log_reads_total{{group=\"{KV}\",from=\"cache\"}}");
    assert!(metric(cluster.node(leader), &from_cache) > 0);
    assert!(metric(cluster.node(follower), &from_cache) > 0);
    // Writes resume: the cache fills again from the new entries.
    assert!(
        write_until_cached(&cluster, leader, "again").await,
        "no write after the quiet spell had its entry cached"
    );
    cluster.shutdown().await;
}

/// Entries and encoded bytes in node `id`'s log cache of the KV group.
fn cached_entries(cluster: &TestCluster, id: u64) -> (usize, usize) {
    let group = cluster.node(id).group(KV).unwrap();
    let cache = group.log_cache.lock().unwrap();
    (cache.len(), cache.bytes())
}

/// Writes through `leader` until, right after one, the leader's cache holds entries
/// (one check in time is enough: a stall of a second between a write and the check is
/// not a failure); false if none of 100 writes got there.
async fn write_until_cached(cluster: &TestCluster, leader: u64, prefix: &str) -> bool {
    for i in 0..100 {
        put(cluster.node(leader), KV, &format!("{prefix}{i}"), "v")
            .await
            .unwrap();
        let (entries, bytes) = cached_entries(cluster, leader);
        if entries > 0 {
            assert!(bytes > 0, "{entries} entries of 0 bytes");
            return true;
        }
    }
    false
}

/// Writes a follower forwards at the same time share `ForwardWrites` calls (one call
/// per write was what collapsed throughput at 256 clients), and every one of them gets
/// its own result.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_through_a_follower_share_forwarding_calls() {
    let cluster = TestCluster::start(3, with_kv, |_| {}).await;
    let leader = cluster.wait_for_leader(KV).await;
    let via = cluster.other_than(leader);
    let node = cluster.node(via).clone();
    let writes: Vec<_> = (0..300)
        .map(|i| {
            let node = node.clone();
            tokio::spawn(async move { put(&node, KV, &format!("k{i}"), &format!("v{i}")).await })
        })
        .collect();
    for w in writes {
        w.await
            .unwrap()
            .expect("every forwarded write is acknowledged");
    }
    for i in [0, 149, 299] {
        let got = get(
            cluster.node(leader),
            KV,
            &format!("k{i}"),
            ReadLevel::Linearizable,
        )
        .await
        .unwrap();
        assert_eq!(got, Some(format!("v{i}")));
    }
    let calls = metric(&node, "nacosd_forward_calls_total");
    let forwarded = metric(&node, "nacosd_forwarded_writes_total");
    assert_eq!(forwarded, 300, "each write forwarded once");
    assert!(
        calls < forwarded,
        "concurrent writes are batched: {calls} calls for {forwarded} writes"
    );
    cluster.shutdown().await;
}

/// Concurrent client writes on the leader share proposal batches (one message to the
/// group's core for many writes), and each still gets its own result: its own log
/// index, its value readable afterwards.
///
/// On a current-thread runtime, and with the writes polled together (`join_all`), every
/// write is queued before the queue's task (spawned on this runtime by the first one)
/// can run: the batching does not depend on how fast that task is scheduled, which on
/// a multi-threaded runtime made it a race (a fast task took the writes one by one).
#[tokio::test]
async fn concurrent_writes_on_the_leader_share_proposal_batches() {
    let cluster = TestCluster::start(3, with_kv, |_| {}).await;
    let leader = cluster.wait_for_leader(KV).await;
    let node = cluster.node(leader).clone();
    let before = (
        metric(&node, "nacosd_writes_local_total{group=\"kv\"}"),
        metric(&node, "nacosd_proposal_batches_total{group=\"kv\"}"),
    );
    let keys: Vec<(String, String)> = (0..300)
        .map(|i| (format!("p{i}"), format!("v{i}")))
        .collect();
    let writes = futures::future::join_all(keys.iter().map(|(k, v)| put(&node, KV, k, v))).await;
    let mut indexes = std::collections::BTreeSet::new();
    for w in writes {
        let index = w.expect("every write is acknowledged");
        assert!(indexes.insert(index), "index {index} answered twice");
    }
    for i in [0, 150, 299] {
        let got = get(&node, KV, &format!("p{i}"), ReadLevel::Linearizable)
            .await
            .unwrap();
        assert_eq!(got, Some(format!("v{i}")));
    }
    let writes = metric(&node, "nacosd_writes_local_total{group=\"kv\"}") - before.0;
    let batches = metric(&node, "nacosd_proposal_batches_total{group=\"kv\"}") - before.1;
    assert!(writes >= 300, "{writes} local writes");
    assert!(
        batches >= 1 && batches < writes,
        "concurrent writes share batches: {batches} batches for {writes} writes"
    );
    cluster.shutdown().await;
}

/// A batch of writes forwarded in one call is proposed on the leader in one hand-off
/// and answered write by write, in its order: a write refused by the state machine
/// (a failed compare-and-set) gets its own error between two that succeed; a node that
/// does not lead refuses the whole batch with the leader's address; without a quorum
/// each write ends at its own deadline with an unknown outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_proposed_on_the_leader_is_answered_write_by_write() {
    use nacosd::groups::test_kv::{KvCommand, KvResponse};
    let mut cluster = TestCluster::start(3, with_kv, |_| {}).await;
    let leader = cluster.wait_for_leader(KV).await;
    let put = |k: &str, v: &str| KvCommand::Put {
        key: k.into(),
        value: v.into(),
    };
    let bad_cas = KvCommand::Cas {
        key: b"a".to_vec(),
        expected: Some(b"not what is there".to_vec()),
        value: None,
    };
    let t = Duration::from_secs(10);
    let batch = vec![
        (put("a", "1").into_command(), t),
        (bad_cas.into_command(), t),
        (put("b", "2").into_command(), t),
    ];
    let results =
        nacosd::consistency::write_many_on_leader(cluster.node(leader), KV, batch.clone()).await;
    assert_eq!(results.len(), 3);
    let index = |r: &nacosd::Result<Vec<u8>>| match nacosd::codec::decode_message::<KvResponse>(
        r.as_ref().expect("applied"),
        "kv reply",
    )
    .unwrap()
    {
        KvResponse::Written { index, .. } => index,
        other => panic!("unexpected {other:?}"),
    };
    let (first, last) = (index(&results[0]), index(&results[2]));
    assert!(first < last, "in log order: {first} then {last}");
    match &results[1] {
        Err(nacosd::Error::FailedPrecondition(_)) => {}
        other => panic!("the failed compare-and-set has its own answer: {other:?}"),
    }
    assert_eq!(
        get(cluster.node(leader), KV, "b", ReadLevel::Linearizable)
            .await
            .unwrap()
            .as_deref(),
        Some("2")
    );

    let follower = cluster.other_than(leader);
    // The refusal names the leader as the follower knows it (`Group::leader`); on busy
    // cores a late heartbeat can leave it without one for a moment (CI: `leader: None`).
    wait_until("the follower knows the leader", || {
        cluster
            .node(follower)
            .group(KV)
            .ok()
            .and_then(|g| g.leader())
            .is_some_and(|(id, _)| id == leader)
    })
    .await;
    let refused =
        nacosd::consistency::write_many_on_leader(cluster.node(follower), KV, batch).await;
    assert_eq!(refused.len(), 3);
    for r in &refused {
        match r {
            Err(nacosd::Error::Unavailable {
                leader: Some((id, _)),
                ..
            }) => assert_eq!(*id, leader),
            other => panic!("a follower refuses and names the leader: {other:?}"),
        }
    }

    for id in cluster.running() {
        if id != leader {
            cluster.stop(id).await;
        }
    }
    let started = tokio::time::Instant::now();
    let stranded = vec![
        (put("c", "3").into_command(), Duration::from_millis(300)),
        (put("d", "4").into_command(), Duration::from_millis(900)),
    ];
    let results =
        nacosd::consistency::write_many_on_leader(cluster.node(leader), KV, stranded).await;
    assert_eq!(results.len(), 2);
    for r in &results {
        match r {
            Err(nacosd::Error::UnknownOutcome(m)) => assert!(
                m.contains("not applied within"),
                "timed out at its own deadline: {m}"
            ),
            other => panic!("without a quorum nothing is applied: {other:?}"),
        }
    }
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the batch is answered once its longest deadline passed"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_through_a_follower_are_read_back_linearizably_everywhere() {
    let cluster = TestCluster::start(3, with_kv, |_| {}).await;
    let leader = cluster.wait_for_leader(KV).await;
    let followers: Vec<u64> = cluster
        .running()
        .into_iter()
        .filter(|i| *i != leader)
        .collect();
    for i in 0..15 {
        let via = followers[i % 2];
        let value = format!("v{i}");
        put(cluster.node(via), KV, "k", &value).await.unwrap();
        // Read-your-writes on every node, immediately after the acknowledgement.
        for id in cluster.running() {
            for level in [ReadLevel::Linearizable, ReadLevel::Lease] {
                let got = get(cluster.node(id), KV, "k", level).await.unwrap();
                assert_eq!(
                    got.as_deref(),
                    Some(value.as_str()),
                    "node {id} at {level:?}"
                );
            }
        }
    }
    let forwarded: u64 = followers
        .iter()
        .map(|f| {
            cluster
                .node(*f)
                .group(KV)
                .unwrap()
                .counters
                .writes_forwarded
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    assert!(forwarded >= 15, "writes were forwarded ({forwarded})");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_quorum_linearizable_reads_fail_and_stale_reads_are_served() {
    let mut cluster = TestCluster::start(3, with_kv, |_| {}).await;
    let leader = cluster.wait_for_leader(KV).await;
    put(cluster.node(leader), KV, "k", "acknowledged")
        .await
        .unwrap();
    let idx = put(cluster.node(leader), KV, "k2", "x").await.unwrap();
    cluster.wait_applied(KV, idx).await;

    // Stop the leader and one more node: the survivor can never get a quorum.
    let survivor = cluster.other_than(leader);
    for id in cluster.running() {
        if id != survivor {
            cluster.stop(id).await;
        }
    }
    let node = cluster.node(survivor);
    for level in [ReadLevel::Linearizable, ReadLevel::Lease] {
        let err = get(node, KV, "k", level).await.unwrap_err();
        assert!(
            matches!(err, Error::Unavailable { .. } | Error::DeadlineExceeded(_)),
            "{level:?} read without quorum must fail, got {err:?}"
        );
    }
    assert_eq!(
        get(node, KV, "k", ReadLevel::Stale)
            .await
            .unwrap()
            .as_deref(),
        Some("acknowledged")
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_the_leader_stops_linearizable_reads_see_the_last_acknowledged_write() {
    let mut cluster = TestCluster::start(3, with_kv, |_| {}).await;
    let leader = cluster.wait_for_leader(KV).await;
    for i in 0..10 {
        put(cluster.node(leader), KV, "k", &format!("v{i}"))
            .await
            .unwrap();
    }
    cluster.stop(leader).await;
    // Reads on the remaining nodes either fail or return the last acknowledged value
    // (never an older one), and succeed once a new leader exists.
    for id in cluster.running() {
        match get(cluster.node(id), KV, "k", ReadLevel::Linearizable).await {
            Ok(v) => assert_eq!(v.as_deref(), Some("v9"), "node {id}"),
            Err(e) => assert!(
                matches!(e, Error::Unavailable { .. } | Error::DeadlineExceeded(_)),
                "{e:?}"
            ),
        }
    }
    cluster.wait_for_leader(KV).await;
    for id in cluster.running() {
        assert_eq!(
            get(cluster.node(id), KV, "k", ReadLevel::Linearizable)
                .await
                .unwrap()
                .as_deref(),
            Some("v9")
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwarded_writes_across_a_leader_change_apply_exactly_once() {
    let mut cluster = TestCluster::start(3, counter_registry, |_| {}).await;
    let leader = cluster.wait_for_leader(COUNTER).await;
    let via = cluster.other_than(leader);
    let node = cluster.node(via).clone();

    // Four concurrent streams of forwarded writes; the leader stops while writes are
    // in flight.
    let acked_before_stop = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..4 {
        let node = node.clone();
        let acked = acked_before_stop.clone();
        writers.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for i in 0..30 {
                let key = format!("w{w}-{i:03}");
                let cmd = Command::new("incr", key.clone(), key.as_bytes().to_vec());
                let r = consistency::write(&node, COUNTER, cmd, Some(Duration::from_secs(5))).await;
                let outcome = match r {
                    Ok(b) if b == 1u64.to_le_bytes() => {
                        acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        "acknowledged"
                    }
                    Ok(b) => panic!("write {key} applied {b:?} times"),
                    Err(Error::UnknownOutcome(_)) => "unknown",
                    Err(Error::Unavailable { .. }) | Err(Error::DeadlineExceeded(_)) => {
                        "not-applied"
                    }
                    Err(e) => panic!("unexpected error for {key}: {e:?}"),
                };
                outcomes.push((key, outcome));
            }
            outcomes
        }));
    }
    let acked = acked_before_stop.clone();
    wait_until("some writes acknowledged", || {
        acked.load(std::sync::atomic::Ordering::Relaxed) >= 20
    })
    .await;
    cluster.stop(leader).await;
    let mut outcomes: BTreeMap<String, &'static str> = BTreeMap::new();
    for w in writers {
        outcomes.extend(w.await.unwrap());
    }
    let new_leader = cluster.wait_for_leader(COUNTER).await;
    assert_ne!(new_leader, leader);
    assert!(outcomes.values().filter(|o| **o == "acknowledged").count() >= 60);

    for (key, outcome) in &outcomes {
        let n = count(&cluster, via, key, ReadLevel::Linearizable)
            .await
            .unwrap();
        match *outcome {
            "acknowledged" => assert_eq!(n, 1, "{key} acknowledged, applied {n} times"),
            "unknown" => assert!(n <= 1, "{key} applied {n} times"),
            _ => assert_eq!(n, 0, "{key} reported not applied but applied {n} times"),
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lagging_follower_falls_back_to_the_leader() {
    let cluster = TestCluster::start(3, counter_registry, |_| {}).await;
    let leader = cluster.wait_for_leader(COUNTER).await;
    let lagging = cluster.other_than(leader);
    incr(&cluster, leader, "warmup").await.unwrap();
    cluster
        .wait_applied(COUNTER, cluster.applied(leader, COUNTER).unwrap())
        .await;

    let gate = gate_of(&cluster, lagging);
    set_gate(&gate, true);
    let g = cluster.node(lagging).group(COUNTER).unwrap().clone();
    let before = g
        .counters
        .leader_fallbacks
        .load(std::sync::atomic::Ordering::Relaxed);

    // Acknowledged by the leader and the other follower while `lagging` cannot apply.
    incr(&cluster, leader, "k").await.unwrap();
    assert_eq!(
        count(&cluster, lagging, "k", ReadLevel::Stale)
            .await
            .unwrap(),
        0,
        "lagging node has not applied"
    );
    // A linearizable read on the lagging node still sees the write: via the leader.
    assert_eq!(
        count(&cluster, lagging, "k", ReadLevel::Linearizable)
            .await
            .unwrap(),
        1
    );
    let after = g
        .counters
        .leader_fallbacks
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(after, before + 1, "the fallback is counted");
    let metrics = nacosd::http::render_metrics(cluster.node(lagging));
    assert!(
        metrics.contains(&format!(
            "nacosd_read_leader_fallbacks_total{{group=\"{COUNTER}\"}} {after}"
        )),
        "{metrics}"
    );

    set_gate(&gate, false);
    let idx = cluster.applied(leader, COUNTER).unwrap();
    cluster.wait_applied(COUNTER, idx).await;
    assert_eq!(
        count(&cluster, lagging, "k", ReadLevel::Stale)
            .await
            .unwrap(),
        1
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_io_error_while_applying_stops_the_node_instead_of_diverging() {
    let cluster = TestCluster::start(3, counter_registry, |_| {}).await;
    let leader = cluster.wait_for_leader(COUNTER).await;
    incr(&cluster, leader, "fine").await.unwrap();
    let err = incr(&cluster, leader, "io-error").await.unwrap_err();
    assert!(
        !matches!(
            err,
            Error::InvalidArgument(_) | Error::FailedPrecondition(_)
        ),
        "not reported as a normal answer: {err:?}"
    );
    // The leader fails rather than skipping the entry; followers that apply it later
    // fail the same way. No replica ever records the entry as applied.
    wait_until("the leader reports the failure", || {
        cluster
            .server(leader)
            .failure()
            .is_some_and(|r| r.contains("group counter stopped"))
    })
    .await;
    for id in cluster.running() {
        assert_eq!(
            count(&cluster, id, "io-error", ReadLevel::Stale)
                .await
                .unwrap(),
            0,
            "node {id}"
        );
    }
    assert_eq!(
        count(&cluster, leader, "fine", ReadLevel::Stale)
            .await
            .unwrap(),
        1
    );
    cluster.shutdown().await;
}

/// A leader replicates to each follower over a long-lived pipelined stream per group
/// (`AppendStream`), and heartbeats over another kept-open one, not one call per batch
/// or heartbeat: a few streams served for hundreds of writes and tens of heartbeats. A batch larger than the stream takes (256 KiB) still arrives, sent alone,
/// and replication goes on over a new stream after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn followers_are_replicated_over_append_streams() {
    let cluster = TestCluster::start(3, with_kv, |_| {}).await;
    let leader = cluster.wait_for_leader(KV).await;
    let node = cluster.node(leader).clone();
    let followers: Vec<u64> = cluster
        .running()
        .into_iter()
        .filter(|id| *id != leader)
        .collect();
    let served = |id: u64| {
        metric(
            cluster.node(id),
            "nacosd_append_streams_served_total{group=\"kv\"}",
        )
    };
    let before: Vec<u64> = followers.iter().map(|id| served(*id)).collect();
    for i in 0..200 {
        put(&node, KV, &format!("s{i}"), &format!("v{i}"))
            .await
            .expect("acknowledged");
    }
    let big = "x".repeat(300 << 10);
    put(&node, KV, "big", &big).await.expect("acknowledged");
    let last = put(&node, KV, "after", "1").await.expect("acknowledged");
    cluster.wait_applied(KV, last).await;
    for (id, before) in followers.iter().zip(before) {
        let follower = cluster.node(*id);
        for (key, value) in [
            ("s0", "v0"),
            ("s199", "v199"),
            ("big", big.as_str()),
            ("after", "1"),
        ] {
            let got = get(follower, KV, key, ReadLevel::Stale).await.unwrap();
            assert_eq!(got.as_deref(), Some(value), "{key} on node {id}");
        }
        let streams = served(*id) - before;
        assert!(
            (1..=20).contains(&streams),
            "node {id} served {streams} append streams for 202 writes"
        );
    }
    cluster.shutdown().await;
}
