//! In-process 3-node clusters: elections, replication, failover, restart, snapshot
//! catch-up — the multi-raft foundation.

use crate::common::*;
use nacosd::consistency::ReadLevel;
use nacosd::groups::{CONFIG, EMBEDDED_DB, NAMING_PERSISTENT};

/// Groups whose state is the test key-value machine.
const ALL: [&str; 1] = [KV];
/// Every group the test nodes run.
const EVERY_GROUP: [&str; 4] = [CONFIG, NAMING_PERSISTENT, EMBEDDED_DB, KV];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_group_elects_and_replicates_identically() {
    let cluster = TestCluster::start(3, with_kv, |_| {}).await;
    for g in EVERY_GROUP {
        cluster.wait_for_leader(g).await;
    }
    // Write through each group's leader; every node ends with the same state.
    for g in ALL {
        let leader = cluster.wait_for_leader(g).await;
        let mut last = 0;
        for i in 0..20 {
            last = put(
                cluster.node(leader),
                g,
                &format!("k{i}"),
                &format!("{g}-v{i}"),
            )
            .await
            .unwrap();
        }
        cluster.wait_applied(g, last).await;
        let reference = dump(cluster.node(leader), g);
        assert_eq!(reference.len(), 20);
        for id in cluster.running() {
            assert_eq!(dump(cluster.node(id), g), reference, "node {id} group {g}");
        }
    }
    // Every node's KV group answers a linearizable read with the written value.
    for id in cluster.running() {
        assert_eq!(
            get(cluster.node(id), KV, "k0", ReadLevel::Linearizable)
                .await
                .unwrap()
                .as_deref(),
            Some("kv-v0")
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stopping_a_leader_elects_a_new_one_and_writes_continue() {
    let mut cluster = TestCluster::start(3, with_kv, |_| {}).await;
    let victim = cluster.wait_for_leader(KV).await;
    let led_before: Vec<&str> = EVERY_GROUP
        .into_iter()
        .filter(|g| cluster.agreed_leader(g) == Some(victim))
        .collect();
    put(cluster.node(victim), KV, "before", "1").await.unwrap();

    cluster.stop(victim).await;
    for g in EVERY_GROUP {
        let new_leader = cluster.wait_for_leader(g).await;
        assert_ne!(new_leader, victim, "group {g}");
    }
    assert!(led_before.contains(&KV));

    // Writes continue through any surviving node, and the old data is still there.
    let survivor = cluster.running()[0];
    let idx = put(cluster.node(survivor), KV, "after", "2").await.unwrap();
    cluster.wait_applied(KV, idx).await;
    for id in cluster.running() {
        let node = cluster.node(id);
        assert_eq!(
            get(node, KV, "before", ReadLevel::Linearizable)
                .await
                .unwrap()
                .as_deref(),
            Some("1")
        );
        assert_eq!(
            get(node, KV, "after", ReadLevel::Linearizable)
                .await
                .unwrap()
                .as_deref(),
            Some("2")
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_node_rejoins_and_catches_up() {
    let mut cluster = TestCluster::start(3, with_kv, |_| {}).await;
    let leader = cluster.wait_for_leader(KV).await;
    let follower = cluster.other_than(leader);
    put(cluster.node(leader), KV, "a", "1").await.unwrap();

    cluster.stop(follower).await;
    let mut last = 0;
    for i in 0..30 {
        let via = cluster.running()[i % 2];
        last = put(cluster.node(via), KV, &format!("while-down-{i}"), "x")
            .await
            .unwrap();
    }
    cluster.restart(follower).await;
    cluster.wait_applied(KV, last).await;
    let state = dump(cluster.node(follower), KV);
    assert_eq!(state.len(), 31, "the restarted node has every entry");
    assert_eq!(state, dump(cluster.node(leader), KV));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_behind_the_purge_point_catches_up_by_snapshot() {
    let mut cluster = TestCluster::start(3, with_kv, |c| {
        c.snapshot_logs = 20;
        c.snapshot_keep_logs = 5;
    })
    .await;
    let leader = cluster.wait_for_leader(KV).await;
    let lagging = cluster.other_than(leader);
    cluster.stop(lagging).await;

    let mut last = 0;
    for i in 0..120 {
        last = put(
            cluster.node(leader),
            KV,
            &format!("k{i:03}"),
            &"v".repeat(100),
        )
        .await
        .unwrap();
    }
    // The leader purges past everything the stopped node has.
    cluster.restart_behind_purge(KV, leader, lagging, 20).await;
    assert_eq!(
        dump(cluster.node(lagging), KV),
        dump(cluster.node(leader), KV)
    );
    assert_eq!(dump(cluster.node(lagging), KV).len(), 120);

    // And it survives its own restart with the installed snapshot.
    cluster.stop(lagging).await;
    cluster.restart(lagging).await;
    cluster.wait_applied(KV, last).await;
    assert_eq!(dump(cluster.node(lagging), KV).len(), 120);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_whole_cluster_restart_reelects_and_keeps_every_write() {
    let mut cluster = TestCluster::start(3, with_kv, |_| {}).await;
    let leader = cluster.wait_for_leader(KV).await;
    let mut last = 0;
    for i in 0..10 {
        last = put(cluster.node(leader), KV, &format!("k{i}"), "v")
            .await
            .unwrap();
    }
    cluster.wait_applied(KV, last).await;
    for id in [1, 2, 3] {
        cluster.stop(id).await;
    }
    // Restart in reverse order: any order must elect (Nacos issue #5776).
    for id in [3, 2, 1] {
        cluster.restart(id).await;
    }
    for g in EVERY_GROUP {
        cluster.wait_for_leader(g).await;
    }
    for id in cluster.running() {
        assert_eq!(
            get(cluster.node(id), KV, "k9", ReadLevel::Linearizable)
                .await
                .unwrap()
                .as_deref(),
            Some("v")
        );
        assert_eq!(dump(cluster.node(id), KV).len(), 10);
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_node_serves_immediately() {
    let cluster = TestCluster::start(1, with_kv, |_| {}).await;
    for g in EVERY_GROUP {
        assert_eq!(cluster.wait_for_leader(g).await, 1);
    }
    put(cluster.node(1), KV, "k", "v").await.unwrap();
    assert_eq!(
        get(cluster.node(1), KV, "k", ReadLevel::Linearizable)
            .await
            .unwrap()
            .as_deref(),
        Some("v")
    );
    cluster.shutdown().await;
}
