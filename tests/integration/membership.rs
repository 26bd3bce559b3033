//! Membership changes and cluster operations (issue #13), in-process: nodes join and
//! leave under writes, a dead machine is replaced under its id, a node moves to a new
//! address, leadership moves, a survivor of a lost majority restarts the cluster, and
//! refusals say why.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use nacosd::cluster::membership;
use nacosd::consistency::ReadLevel;
use nacosd::pb;
use nacosd::pb::cluster_service_client::ClusterServiceClient;
use nacosd::raft::node::MultiRaft;
use openraft::rt::watch::WatchReceiver;
use tokio::sync::watch;
use tonic::transport::Channel;
use tonic::Code;

use crate::common::*;

async fn admin(c: &TestCluster, id: u64) -> ClusterServiceClient<Channel> {
    ClusterServiceClient::connect(format!("http://{}", c.server(id).client_addr))
        .await
        .expect("connect")
}

/// The voters of every group, as node `on` sees them.
fn voters(c: &TestCluster, on: u64) -> Vec<BTreeSet<u64>> {
    c.node(on).groups().map(|g| g.voters()).collect()
}

fn all_voters_are(c: &TestCluster, on: &[u64], want: &[u64]) -> bool {
    let want: BTreeSet<u64> = want.iter().copied().collect();
    on.iter()
        .all(|id| voters(c, *id).iter().all(|v| *v == want))
}

/// Whether every group, as node `on` sees it, has member `id` at `addr`.
fn records_address(c: &TestCluster, on: u64, id: u64, addr: &str) -> bool {
    c.node(on).groups().all(|g| {
        let m = g.raft.metrics();
        let m = m.borrow_watched();
        m.membership_config
            .membership()
            .get_node(&id)
            .is_some_and(|n| n.addr == addr)
    })
}

/// Write distinct keys through `node` until told to stop; the keys acknowledged.
async fn write_until(node: Arc<MultiRaft>, mut stop: watch::Receiver<bool>) -> Vec<String> {
    let mut acked = Vec::new();
    for i in 0.. {
        if *stop.borrow() {
            break;
        }
        let key = format!("w{i}");
        let write = put(&node, KV, &key, "v");
        tokio::select! {
            r = write => if r.is_ok() { acked.push(key) },
            _ = stop.changed() => break,
        }
    }
    acked
}

/// Wait until `ids` have applied `index` in `group`.
async fn wait_applied_on(c: &TestCluster, ids: &[u64], group: &str, index: u64) {
    wait_until(&format!("{group} applied to {index} on {ids:?}"), || {
        ids.iter()
            .all(|id| c.applied(*id, group).is_some_and(|a| a >= index))
    })
    .await;
}

/// Every key is readable on every node of `ids`.
async fn all_present(c: &TestCluster, ids: &[u64], keys: &[String]) {
    for id in ids {
        for k in keys {
            assert!(
                get(c.node(*id), KV, k, ReadLevel::Stale)
                    .await
                    .unwrap()
                    .is_some(),
                "node {id} lacks acknowledged key {k}"
            );
        }
    }
}

/// The same digest per group on every node of `ids` once they applied the same.
async fn converged(c: &TestCluster, ids: &[u64]) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let mut seen = Vec::new();
        for id in ids {
            let d = nacosd::cluster::operations::digests(c.node(*id))
                .await
                .unwrap();
            seen.push(
                d.into_iter()
                    .map(|(g, d)| (g, d.applied_index, d.digest))
                    .collect::<Vec<_>>(),
            );
        }
        if seen.windows(2).all(|w| w[0] == w[1]) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nodes {ids:?} never converged: {seen:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_to_five_to_three_under_writes_loses_nothing() {
    let mut c = TestCluster::start(3, with_kv, |_| {}).await;
    c.wait_for_leader(KV).await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let writer = tokio::spawn(write_until(c.node(3).clone(), stop_rx));

    c.add_joining(4, 1, |_| {}).await;
    c.add_joining(5, 2, |_| {}).await;
    wait_until("five voters in every group", || {
        all_voters_are(&c, &[3, 4, 5], &[1, 2, 3, 4, 5])
    })
    .await;

    let mut a = admin(&c, 3).await;
    for id in [1, 2] {
        // A leader refuses a removal until it has heard from a quorum of the voters
        // that would remain within its lease; right after the first removal (a leader
        // may have moved) or on a loaded machine that can take a moment.
        let deadline = tokio::time::Instant::now() + crate::common::DEADLINE;
        loop {
            match a
                .remove_member(pb::RemoveMemberRequest { node_id: id })
                .await
            {
                Ok(_) => break,
                Err(e)
                    if e.code() == tonic::Code::FailedPrecondition
                        && e.message().contains("are reachable")
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("removing {id}: {e:?}"),
            }
        }
    }
    wait_until("the removed nodes stop, saying why", || {
        [1, 2].iter().all(|id| {
            c.server(*id)
                .failure()
                .is_some_and(|r| r.contains("was removed from the cluster"))
        })
    })
    .await;
    let list = a
        .list_members(pb::ListMembersRequest {})
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<u64> = list.members.iter().map(|m| m.node_id).collect();
    assert_eq!(ids, vec![3, 4, 5], "{list:?}");
    assert!(list.members.iter().all(|m| m.consistent), "{list:?}");
    assert!(list.changing.is_empty());

    let _ = stop_tx.send(true);
    let acked = writer.await.unwrap();
    assert!(
        acked.len() >= 10,
        "only {} writes acknowledged",
        acked.len()
    );
    let last = put(c.node(3), KV, "after", "v").await.unwrap();
    wait_applied_on(&c, &[3, 4, 5], KV, last).await;
    all_present(&c, &[3, 4, 5], &acked).await;
    converged(&c, &[3, 4, 5]).await;
    c.forget(1).await;
    c.forget(2).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_machine_is_replaced_and_a_moved_node_keeps_its_place() {
    let mut c = TestCluster::start(3, with_kv, |_| {}).await;
    c.wait_for_leader(KV).await;
    put(c.node(1), KV, "x1", "v").await.unwrap();

    // Node 3's machine is gone for good; a new, empty one takes id 3 at a new address.
    c.stop(3).await;
    c.wipe(3);
    let new_addr = c.move_to_new_ports(3).await;
    let join_via = c.nodes[&1].config.advertise_peer.clone();
    let mut a = admin(&c, 1).await;
    // Without the operator's word, an empty machine cannot take an id in use.
    let list = a
        .add_member(pb::AddMemberRequest {
            node_id: 3,
            addr: new_addr.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .members
        .unwrap();
    let three = list.members.iter().find(|m| m.node_id == 3).unwrap();
    assert_eq!(three.addr, new_addr);
    assert!(three
        .groups
        .iter()
        .all(|g| g.role == pb::MemberRole::Learner as i32));
    c.reconfigure(3, |cfg| {
        cfg.initial_members = Default::default();
        cfg.join = Some(join_via);
    });
    c.restart(3).await;
    wait_until("the new node 3 is a voter everywhere", || {
        all_voters_are(&c, &[1, 2, 3], &[1, 2, 3])
    })
    .await;
    let x2 = put(c.node(2), KV, "x2", "v").await.unwrap();
    wait_applied_on(&c, &[1, 2, 3], KV, x2).await;
    all_present(&c, &[3], &["x1".into(), "x2".into()]).await;
    // The replaced machine's old disk comes back somewhere and announces itself as
    // node 3 (it carries the cluster's id): the new node 3 still answers at its
    // address, so the claim is refused and the membership keeps the new machine.
    let old_disk_at = "127.0.0.1:1";
    let refused = membership::admit(
        &c.server(1).cluster,
        3,
        old_disk_at,
        membership::Asker::Node { has_data: true },
        Duration::from_secs(10),
    )
    .await
    .expect_err("a second machine claiming a live member's id is refused");
    assert!(
        matches!(refused, nacosd::error::Error::AlreadyExists(ref m) if m.contains("still answers")),
        "{refused:?}"
    );
    assert!(records_address(&c, 1, 3, &new_addr));

    // Node 2 keeps its data and comes back at another address: the others record it.
    c.stop(2).await;
    let moved = c.move_to_new_ports(2).await;
    c.restart(2).await;
    wait_until(
        "every group on every node holds node 2's new address",
        || {
            [1, 2, 3]
                .iter()
                .all(|on| records_address(&c, *on, 2, &moved))
        },
    )
    .await;
    assert!(
        all_voters_are(&c, &[1, 2, 3], &[1, 2, 3]),
        "moving kept its vote"
    );
    // Node 2 announces again (its reply was lost, or its own view of the membership
    // had not caught up yet): the address is recorded already, so nothing changes —
    // above all, a member that kept its data is not demoted as if it were empty.
    for via in [1, 3] {
        membership::admit(
            &c.server(via).cluster,
            2,
            &moved,
            membership::Asker::Node { has_data: true },
            Duration::from_secs(10),
        )
        .await
        .expect("a repeated announcement is accepted");
        // A demotion would show at least on each group's leader, which has appended
        // it before admit returns.
        assert!(
            all_voters_are(&c, &[1, 2, 3], &[1, 2, 3]),
            "a repeated announcement through node {via} kept node 2 a voter"
        );
    }
    let x3 = put(c.node(1), KV, "x3", "v").await.unwrap();
    wait_applied_on(&c, &[1, 2, 3], KV, x3).await;
    all_present(&c, &[2], &["x1".into(), "x2".into(), "x3".into()]).await;
    converged(&c, &[1, 2, 3]).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_joined_node_restarted_before_its_promotion_is_promoted() {
    let mut c = TestCluster::start(3, with_kv, |_| {}).await;
    c.wait_for_leader(KV).await;
    let x = put(c.node(1), KV, "x", "v").await.unwrap();
    // Admitted and caught up, but still a learner when it stops — here held back by
    // --learner, as a pod restarted during its catch-up would be.
    c.add_joining(4, 1, |cfg| cfg.learner = true).await;
    // On every node (node 4's own view too: it has taken the identity, then), every
    // group has node 4 as a member and still voters 1-3 only.
    wait_until(
        "node 4 is a learner of every group, as every node sees it",
        || {
            [1, 2, 3, 4].iter().all(|on| {
                c.node(*on).groups().all(|g| {
                    let m = g.raft.metrics();
                    let m = m.borrow_watched();
                    let mem = m.membership_config.membership();
                    mem.get_node(&4).is_some() && mem.voter_ids().eq([1, 2, 3])
                })
            })
        },
    )
    .await;
    wait_applied_on(&c, &[4], KV, x).await;
    c.stop(4).await;
    c.reconfigure(4, |cfg| cfg.learner = false);
    c.restart(4).await;
    wait_until(
        "node 4 is promoted in every group after its restart",
        || all_voters_are(&c, &[1, 2, 3, 4], &[1, 2, 3, 4]),
    )
    .await;
    let y = put(c.node(4), KV, "y", "v").await.unwrap();
    wait_applied_on(&c, &[1, 2, 3, 4], KV, y).await;
    all_present(&c, &[4], &["x".into(), "y".into()]).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leadership_moves_per_group_and_for_every_group() {
    let c = TestCluster::start(3, with_kv, |_| {}).await;
    let leader = c.wait_for_leader(KV).await;
    let to = c.other_than(leader);
    let mut a = admin(&c, leader).await;
    let r = a
        .transfer_leader(pb::TransferLeaderRequest {
            group: KV.into(),
            to,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.leaders.len(), 1);
    assert_eq!(
        (r.leaders[0].group.as_str(), r.leaders[0].leader_id),
        (KV, to)
    );
    wait_until("every node sees the new KV leader", || {
        c.agreed_leader(KV) == Some(to)
    })
    .await;

    // Every group, to whichever voter is most up to date.
    let groups: Vec<String> = c.node(1).groups().map(|g| g.name.to_string()).collect();
    let mut before = Vec::new();
    for g in &groups {
        before.push(c.wait_for_leader(g).await);
    }
    let r = a
        .transfer_leader(pb::TransferLeaderRequest {
            group: String::new(),
            to: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.leaders.len(), groups.len());
    for ((g, was), now) in groups.iter().zip(before).zip(&r.leaders) {
        assert_eq!(&now.group, g);
        assert_ne!(now.leader_id, was, "group {g} kept its leader");
        assert_ne!(now.leader_id, 0, "group {g} has a leader");
    }

    let err = a
        .transfer_leader(pb::TransferLeaderRequest {
            group: KV.into(),
            to: 9,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("not a voter"), "{}", err.message());
    let err = a
        .transfer_leader(pb::TransferLeaderRequest {
            group: "nope".into(),
            to: 0,
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("nope"), "{}", err.message());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_survivor_of_a_lost_majority_restarts_the_cluster_with_its_data() {
    let mut c = TestCluster::start(3, with_kv, |_| {}).await;
    c.wait_for_leader(KV).await;
    let mut keys = Vec::new();
    let mut last = 0;
    for i in 0..20 {
        let k = format!("k{i}");
        last = put(c.node(1), KV, &k, "v").await.unwrap();
        keys.push(k);
    }
    wait_applied_on(&c, &[1, 2, 3], KV, last).await;
    // Nodes 2 and 3 are lost for good; node 1 survives with its data.
    c.stop(2).await;
    c.stop(3).await;
    c.stop(1).await;
    c.forget(2).await;
    c.forget(3).await;
    c.reconfigure(1, |cfg| cfg.force_new_cluster = true);
    c.restart(1).await;
    c.wait_for_leader(KV).await;
    assert!(all_voters_are(&c, &[1], &[1]));
    for k in &keys {
        assert!(
            get(c.node(1), KV, k, ReadLevel::Linearizable)
                .await
                .unwrap()
                .is_some(),
            "{k} lost"
        );
    }
    // New machines join the recovered cluster.
    c.add_joining(4, 1, |_| {}).await;
    c.add_joining(5, 1, |_| {}).await;
    wait_until("three voters again", || {
        all_voters_are(&c, &[1, 4, 5], &[1, 4, 5])
    })
    .await;
    let after = put(c.node(4), KV, "after", "v").await.unwrap();
    wait_applied_on(&c, &[1, 4, 5], KV, after).await;
    all_present(&c, &[4, 5], &keys).await;

    // The flag left in place does not force again: the members that joined stay.
    c.stop(1).await;
    c.restart(1).await;
    c.wait_for_leader(KV).await;
    let again = put(c.node(1), KV, "again", "v").await.unwrap();
    wait_applied_on(&c, &[1, 4, 5], KV, again).await;
    assert!(all_voters_are(&c, &[1, 4, 5], &[1, 4, 5]));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refusals_say_why_and_concurrent_changes_are_serialized() {
    let single = TestCluster::start(1, with_kv, |_| {}).await;
    single.wait_for_leader(KV).await;
    let mut a = admin(&single, 1).await;
    let err = a
        .remove_member(pb::RemoveMemberRequest { node_id: 1 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("last voter"), "{}", err.message());
    let err = a
        .remove_member(pb::RemoveMemberRequest { node_id: 7 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    for (id, addr, why) in [
        (0, "127.0.0.1:1", "at least 1"),
        (4, "no-port", "HOST:PORT"),
    ] {
        let err = a
            .add_member(pb::AddMemberRequest {
                node_id: id,
                addr: addr.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(why), "{}", err.message());
    }
    single.shutdown().await;

    let mut c = TestCluster::start(3, with_kv, |_| {}).await;
    c.wait_for_leader(KV).await;
    // Two operators on two nodes at once: both changes happen, one after the other.
    let (mut a1, mut a2) = (admin(&c, 1).await, admin(&c, 2).await);
    let (r1, r2) = tokio::join!(
        a1.add_member(pb::AddMemberRequest {
            node_id: 4,
            addr: "127.0.0.1:9".into(),
        }),
        a2.add_member(pb::AddMemberRequest {
            node_id: 5,
            addr: "127.0.0.1:10".into(),
        }),
    );
    r1.unwrap();
    r2.unwrap();
    let list = a1
        .list_members(pb::ListMembersRequest {})
        .await
        .unwrap()
        .into_inner();
    for id in [4, 5] {
        let m = list.members.iter().find(|m| m.node_id == id).unwrap();
        assert!(m.consistent, "{m:?}");
        assert!(m
            .groups
            .iter()
            .all(|g| g.role == pb::MemberRole::Learner as i32));
    }
    // Adding a member that already is one, at its address, changes nothing (it is not
    // demoted): an operator can repeat a change safely.
    let addr2 = c.nodes[&2].config.advertise_peer.clone();
    a1.add_member(pb::AddMemberRequest {
        node_id: 2,
        addr: addr2,
    })
    .await
    .unwrap();
    assert!(all_voters_are(&c, &[1, 2, 3], &[1, 2, 3]));
    // Without node 3, removing node 2 would leave {1, 3} with one reachable voter.
    c.stop(3).await;
    wait_until("the group leaders notice node 3 is gone", || {
        [1, 2].iter().all(|id| {
            c.node(*id)
                .groups()
                .filter(|g| g.raft.is_leader())
                .all(|g| !g.heard_from_within(g.timing().lease()).contains(&3))
        })
    })
    .await;
    let err = a1
        .remove_member(pb::RemoveMemberRequest { node_id: 2 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("quorum"), "{}", err.message());
    // Learners that never started can be removed.
    a1.remove_member(pb::RemoveMemberRequest { node_id: 5 })
        .await
        .unwrap();
    c.shutdown().await;
}
