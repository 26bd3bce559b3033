//! Safety and recovery: the defects of issue "Safety and recovery defects", each with
//! the scenario that showed it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::rt::watch::WatchReceiver;

use crate::common::*;
use nacosd::codec;
use nacosd::consistency::ReadLevel;
use nacosd::error::Error;
use nacosd::pb;
use nacosd::peer::channels::Lane;
use nacosd::peer::PeerClient;
use nacosd::raft::identity::{ClusterId, Identity, IdentityCell};
use nacosd::raft::types::{TypeConfig, Vote};

/// A read that must never claim the key is absent: the value, or an error.
async fn x_is_never_lost(node: &nacosd::raft::node::MultiRaft) {
    match get(node, KV, "x", ReadLevel::Linearizable).await {
        Ok(Some(v)) => assert_eq!(v, "committed"),
        Ok(None) => panic!("an acknowledged write was lost (NOT_FOUND)"),
        Err(Error::Unavailable { .. } | Error::DeadlineExceeded(_)) => {}
        Err(e) => panic!("unexpected error: {e:?}"),
    }
}

/// Issue item 1: entry X is on A and B only (C paused); B loses its disk and restarts;
/// A dies; C must not win an election with the vote of the empty B.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_node_never_helps_elect_a_leader_that_lacks_committed_entries() {
    let mut c = TestCluster::start(3, with_kv, |_| {}).await;
    let a = c.wait_for_leader(KV).await;
    let b = c.other_than(a);
    let paused = c
        .running()
        .into_iter()
        .find(|id| *id != a && *id != b)
        .unwrap();
    c.stop(paused).await;
    let index = put(c.node(a), KV, "x", "committed").await.unwrap();
    // Acknowledged with A and B only.
    wait_until("B applied X", || {
        c.applied(b, KV).is_some_and(|i| i >= index)
    })
    .await;

    // B loses its disk and comes back with its usual flags.
    c.stop(b).await;
    c.wipe(b);
    c.restart(b).await;
    // A dies; C comes back.
    c.stop(a).await;
    c.restart(paused).await;

    // C campaigns; B, with no identity, refuses every Raft call instead of voting.
    let refusals = || {
        c.node(b)
            .counters
            .peer_calls_refused
            .load(Ordering::Relaxed)
    };
    wait_until("the empty node refuses C's election requests", || {
        refusals() >= 5
    })
    .await;
    assert!(c.node(b).identity().cluster_id().is_none());
    assert_eq!(c.agreed_leader(KV), None, "no leader without A");
    x_is_never_lost(c.node(paused)).await;

    // A returns: B is admitted back as a learner, catches up and votes again.
    c.restart(a).await;
    wait_until("B admitted again", || {
        c.node(b).identity().cluster_id().is_some()
    })
    .await;
    let all: Vec<u64> = c.running();
    wait_until("B a voter of every group again", || {
        c.node(a)
            .groups()
            .all(|g| g.voters().len() == 3 && g.voters().contains(&b))
    })
    .await;
    c.wait_applied(KV, index).await;
    for id in all {
        assert_eq!(
            get(c.node(id), KV, "x", ReadLevel::Stale)
                .await
                .unwrap()
                .as_deref(),
            Some("committed"),
            "node {id}"
        );
    }
    c.shutdown().await;
}

/// Issue item 1: a node of another cluster (here: one restarted with an empty data
/// directory and no member list, which makes a new one-node cluster) is refused, and
/// never counts toward a commit of the old cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_of_another_cluster_is_refused() {
    let mut c = TestCluster::start(3, with_kv, |_| {}).await;
    let leader = c.wait_for_leader(KV).await;
    put(c.node(leader), KV, "x", "committed").await.unwrap();
    let ours = c.node(leader).identity().cluster_id().unwrap();
    let stranger = c.other_than(leader);
    let third = c
        .running()
        .into_iter()
        .find(|id| *id != leader && *id != stranger)
        .unwrap();
    c.stop(stranger).await;
    c.wipe(stranger);
    c.reconfigure(stranger, |cfg| cfg.initial_members.clear());
    c.restart(stranger).await;
    wait_until("the stranger founds its own cluster", || {
        c.node(stranger).identity().cluster_id().is_some()
    })
    .await;
    assert_ne!(c.node(stranger).identity().cluster_id(), Some(ours));

    // Without the third node, the old cluster has no majority: the stranger's "yes"
    // must not count.
    c.stop(third).await;
    let refused_before = c
        .node(stranger)
        .counters
        .peer_calls_refused
        .load(Ordering::Relaxed);
    let survivor = c.running().into_iter().find(|id| *id != stranger).unwrap();
    let r = put(c.node(survivor), KV, "y", "must-not-commit").await;
    assert!(
        matches!(
            r,
            Err(Error::Unavailable { .. } | Error::UnknownOutcome(_) | Error::DeadlineExceeded(_))
        ),
        "a write without a majority of the real cluster: {r:?}"
    );
    assert!(
        c.node(stranger)
            .counters
            .peer_calls_refused
            .load(Ordering::Relaxed)
            > refused_before,
        "the stranger refused the old cluster's calls"
    );
    c.shutdown().await;
}

/// Issue item 1: a brand-new cluster forms only when every initial member is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_cluster_waits_for_every_initial_member() {
    let mut c = TestCluster::start_only(3, with_kv, |_| {}, &[1, 2]).await;
    // Two of three could elect a leader, but node 3 has not been seen empty yet.
    let checks = || c.node(1).counters.bootstrap_probes.load(Ordering::Relaxed);
    wait_until("node 1 probed the members several times", || checks() >= 3).await;
    assert!(c.node(1).identity().cluster_id().is_none());
    assert!(c.node(2).identity().cluster_id().is_none());
    c.restart(3).await;
    let leader = c.wait_for_leader(KV).await;
    let id = c.node(leader).identity().cluster_id().unwrap();
    for n in 1..=3 {
        assert_eq!(c.node(n).identity().cluster_id(), Some(id), "node {n}");
    }
    c.shutdown().await;
}

/// A data directory records its node id: starting it under another id is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_belongs_to_one_node_id() {
    let mut c = TestCluster::start(1, with_kv, |_| {}).await;
    c.wait_for_leader(KV).await;
    c.stop(1).await;
    let mut config = c.nodes[&1].config.clone();
    config.node_id = 2;
    let registry = nacosd::groups::builtin_registry(&Default::default());
    let err = nacosd::raft::node::MultiRaft::start(&config, with_kv(registry))
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("belongs to node 1"), "{err}");
}

/// Issue item 2: a node that restarts grants no vote for one leader lease (a leader may
/// still be serving LEASE reads on acknowledgements it gave before the restart), then
/// votes normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_node_grants_no_vote_for_a_lease() {
    let mut c = TestCluster::start(3, with_kv, |_| {}).await;
    let leader = c.wait_for_leader(KV).await;
    let follower = c.other_than(leader);
    let cluster_id: ClusterId = c.node(leader).identity().cluster_id().unwrap();
    c.stop(follower).await;
    c.restart(follower).await;

    let caller = PeerClient::new(
        leader,
        IdentityCell::new(Some(Identity {
            cluster_id,
            node_id: leader,
        })),
        64 << 20,
        nacosd::peer::channels::PeerChannels::default(),
    );
    let addr = c.nodes[&follower].config.advertise_peer.clone();
    let ask = |term: u64| {
        let caller = caller.clone();
        let addr = addr.clone();
        async move {
            let rpc = openraft::raft::VoteRequest::<TypeConfig>::new(Vote::new(term, leader), None);
            let req = caller.request(
                pb::RaftRequest {
                    group: KV.to_string(),
                    payload: codec::encode(&rpc),
                },
                Some(Duration::from_secs(2)),
            );
            caller
                .raft(&addr, Lane::Control)
                .unwrap()
                .pre_vote(req)
                .await
                .unwrap()
                .into_inner()
                .result
        }
    };
    let node = c.node(follower).clone();
    let group = node.group(KV).unwrap().clone();
    assert!(
        node.vote_hold_remaining(&group).is_some(),
        "hold right after the restart"
    );
    match ask(1_000).await {
        Some(pb::raft_reply::Result::Error(why)) => {
            assert!(why.contains("grants no vote"), "{why}")
        }
        other => panic!("a vote request was handled during the hold: {other:?}"),
    }
    wait_until("the hold ends", || {
        node.vote_hold_remaining(&group).is_none()
    })
    .await;
    match ask(1_000).await {
        Some(pb::raft_reply::Result::Ok(_)) => {}
        other => panic!("after the hold the request is answered: {other:?}"),
    }
    c.shutdown().await;
}

/// Issue item 3: after a power loss the state machine and the committed index may be
/// behind the log. A restarted leader must not serve a linearizable read from that
/// stale state (leader restore without an election would).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_after_power_loss_reads_every_acknowledged_write() {
    use nacosd::raft::keys;
    use nacosd::raft::rocks;

    let mut c = TestCluster::start(1, with_kv, |_| {}).await;
    c.wait_for_leader(KV).await;
    let first = put(c.node(1), KV, "x", "1").await.unwrap();
    c.wait_applied(KV, first).await;
    let state_after_first = c.node(1).group(KV).unwrap().sm.applied_state().unwrap();
    let second = put(c.node(1), KV, "x", "2").await.unwrap();
    c.wait_applied(KV, second).await;
    c.stop(1).await;

    // What a power cut leaves: the log (synced) has both entries; the state machine's
    // unsynced writes and the unsynced committed index are lost.
    {
        let db = rocks::open(&c.nodes[&1].config.data_dir.join("raft"), &[KV]).unwrap();
        let sm = rocks::cf(&db, &keys::sm_cf(KV)).unwrap();
        db.put_cf(sm, keys::sm_data_key(b"x"), b"1").unwrap();
        db.put_cf(sm, keys::SM_APPLIED_KEY, state_after_first.encode())
            .unwrap();
        let meta = rocks::cf(&db, keys::RAFT_META_CF).unwrap();
        db.delete_cf(meta, keys::committed_key(KV)).unwrap();
        db.flush_wal(true).unwrap();
    }
    c.restart(1).await;
    c.wait_for_leader(KV).await;
    assert_eq!(
        get(c.node(1), KV, "x", ReadLevel::Linearizable)
            .await
            .unwrap()
            .as_deref(),
        Some("2")
    );
    c.shutdown().await;
}

/// Issue item 5: a follower that is behind 64 entries of 1 MiB catches up from the log
/// (each append request is cut to a bounded size instead of timing out forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_catches_up_over_large_entries() {
    let mut c = TestCluster::start(3, with_kv, |cfg| cfg.snapshot_logs = 100_000).await;
    let leader = c.wait_for_leader(KV).await;
    let lagging = c.other_than(leader);
    c.stop(lagging).await;
    let big = "v".repeat(1 << 20);
    let mut last = 0;
    for i in 0..64 {
        last = put(c.node(leader), KV, &format!("big{i}"), &big)
            .await
            .unwrap();
    }
    c.restart(lagging).await;
    wait_progress(
        "the lagging follower applies the large entries",
        last,
        || c.applied(lagging, KV).unwrap_or(0),
    )
    .await;
    assert!(
        c.metrics(lagging, KV).snapshot.is_none(),
        "caught up from the log, not a snapshot"
    );
    assert_eq!(dump(c.node(lagging), KV), dump(c.node(leader), KV));
    c.shutdown().await;
}

/// Issue item 8: a node cut off from its group's majority says so (readiness, Status)
/// and fails requests at once instead of holding them until their deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_without_its_quorum_reports_it_and_fails_fast() {
    let mut c = TestCluster::start(3, with_kv, |_| {}).await;
    let leader = c.wait_for_leader(KV).await;
    put(c.node(leader), KV, "x", "1").await.unwrap();
    // Ready once every group (not only this one) has a leader in touch with a quorum.
    let node = c.node(leader).clone();
    wait_until("the leader's node is ready", || node.ready()).await;
    for id in c.running() {
        if id != leader {
            c.stop(id).await;
        }
    }
    let node = c.node(leader).clone();
    wait_until("the isolated leader reports lost contact", || {
        !node.ready() && !node.group(KV).unwrap().has_quorum_contact()
    })
    .await;
    let group = node.group(KV).unwrap().clone();
    wait_until("cut off for two leases", || group.cut_off_for().is_some()).await;
    let cmd = nacosd::groups::test_kv::KvCommand::Put {
        key: b"y".to_vec(),
        value: b"2".to_vec(),
    }
    .into_command();
    // The write's own deadline is an hour: it must come back long before (DEADLINE),
    // not wait for it.
    let r = tokio::time::timeout(
        DEADLINE,
        nacosd::consistency::write(&node, KV, cmd, Some(Duration::from_secs(3600))),
    )
    .await
    .expect("the write fails fast instead of waiting for its deadline");
    match r {
        Err(Error::Unavailable { message, .. }) => {
            assert!(message.contains("out of contact"), "{message}")
        }
        other => panic!("expected a fast Unavailable, got {other:?}"),
    }
    let leader_view = node
        .group(KV)
        .unwrap()
        .raft
        .metrics()
        .borrow_watched()
        .clone();
    assert!(leader_view.current_leader.is_some());
    c.shutdown().await;
}

/// While set, the `flaky` group's snapshot builds fail (a full disk, a closed file).
static FAIL_SNAPSHOTS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Snapshot builds that failed on purpose.
static FAILED_BUILDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The test KV state machine, except that building a snapshot fails on demand.
struct FlakySnapshots(
    nacosd::raft::rocks_sm::RocksStateMachine<nacosd::groups::test_kv::KvProcessor>,
);

impl nacosd::raft::group::StateMachine for FlakySnapshots {
    fn applied_state(&self) -> std::io::Result<nacosd::raft::types::AppliedState> {
        self.0.applied_state()
    }
    fn apply(
        &self,
        items: &[nacosd::raft::group::ApplyItem<'_>],
        applied: &nacosd::raft::types::AppliedState,
    ) -> std::io::Result<Vec<nacosd::raft::types::CommandResult>> {
        self.0.apply(items, applied)
    }
    fn query(&self, query: &[u8]) -> Result<Vec<u8>, Error> {
        self.0.query(query)
    }
    fn begin_snapshot(&self) -> std::io::Result<Box<dyn nacosd::raft::group::SnapshotSource + '_>> {
        if FAIL_SNAPSHOTS.load(Ordering::Relaxed) {
            FAILED_BUILDS.fetch_add(1, Ordering::Relaxed);
            return Err(std::io::Error::other("No space left on device (injected)"));
        }
        self.0.begin_snapshot()
    }
    fn restore(
        &self,
        data: &mut dyn std::io::Read,
        applied: &nacosd::raft::types::AppliedState,
    ) -> std::io::Result<()> {
        self.0.restore(data, applied)
    }
    fn digest(&self) -> std::io::Result<nacosd::raft::group::StateDigest> {
        self.0.digest()
    }
}

fn with_flaky(reg: nacosd::raft::group::GroupRegistry) -> nacosd::raft::group::GroupRegistry {
    reg.register("flaky", |ctx| {
        Ok(std::sync::Arc::new(FlakySnapshots(
            nacosd::raft::rocks_sm::RocksStateMachine::new(
                &ctx.name,
                ctx.db.clone(),
                nacosd::groups::test_kv::KvProcessor,
            )?,
        )))
    })
}

/// Issue item 6: a failed snapshot build is logged and retried; the node keeps
/// serving (openraft would otherwise treat the error as fatal and stop the group).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_snapshot_build_does_not_stop_the_node() {
    let c = TestCluster::start(1, with_flaky, |_| {}).await;
    c.wait_for_leader("flaky").await;
    let node = c.node(1).clone();
    let group = node.group("flaky").unwrap().clone();
    put(&node, "flaky", "a", "1").await.unwrap();
    FAIL_SNAPSHOTS.store(true, Ordering::Relaxed);
    group.raft.trigger().snapshot().await.unwrap();
    wait_until("the snapshot build fails", || {
        FAILED_BUILDS.load(Ordering::Relaxed) >= 1
    })
    .await;
    // Nothing stopped: the group still takes writes.
    let applied = put(&node, "flaky", "b", "2").await.unwrap();
    assert!(c.server(1).failure().is_none());
    assert!(group.raft.metrics().borrow_watched().running_state.is_ok());
    assert_eq!(
        group
            .raft
            .metrics()
            .borrow_watched()
            .snapshot
            .map(|l| l.index),
        None,
        "no snapshot was built while builds fail"
    );
    FAIL_SNAPSHOTS.store(false, Ordering::Relaxed);
    // Builds pause for BUILD_RETRY after a failure; an operator retrying gets one once
    // the pause is over.
    let built = || {
        group
            .raft
            .metrics()
            .borrow_watched()
            .snapshot
            .is_some_and(|l| l.index >= applied)
    };
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !built() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no snapshot built after the disk recovered"
        );
        group.raft.trigger().snapshot().await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(group.raft.metrics().borrow_watched().running_state.is_ok());
    put(&node, "flaky", "c", "3").await.unwrap();
    c.shutdown().await;
}
