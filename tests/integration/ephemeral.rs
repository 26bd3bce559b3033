//! Sessions and ephemeral instances (the AP side, `src/distro/`) on in-process 3-node
//! clusters: replication by sync, close and expiry everywhere, health, merged syncs
//! counted by the metrics, the startup snapshot, Subscribe, and the input rules.
//! Intervals are shortened through the config; every wait is on a condition.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::*;
use nacosd::config::Config;
use nacosd::pb;
use nacosd::pb::naming_service_client::NamingServiceClient;
use nacosd::pb::session_service_client::SessionServiceClient;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

fn fast(c: &mut Config) {
    c.distro.sync_delay = Duration::from_millis(100);
    c.distro.sync_retry = Duration::from_millis(100);
    c.distro.verify_interval = Duration::from_millis(500);
    c.distro.replica_expiry = Duration::from_secs(20);
    c.distro.load_retry = Duration::from_millis(200);
}

async fn naming(cluster: &TestCluster, id: u64) -> NamingServiceClient<Channel> {
    NamingServiceClient::connect(format!("http://{}", cluster.server(id).client_addr))
        .await
        .expect("connect")
}

async fn sessions(cluster: &TestCluster, id: u64) -> SessionServiceClient<Channel> {
    SessionServiceClient::connect(format!("http://{}", cluster.server(id).client_addr))
        .await
        .expect("connect")
}

fn svc(name: &str) -> Option<pb::ServiceKey> {
    Some(pb::ServiceKey {
        namespace: String::new(),
        group: String::new(),
        service_name: name.into(),
    })
}

fn eph(ip: &str, port: u32, session: &str) -> pb::Instance {
    pb::Instance {
        ip: ip.into(),
        port,
        ephemeral: true,
        session_id: session.into(),
        metadata: HashMap::from([("zone".to_string(), "a".to_string())]),
        ..Default::default()
    }
}

fn register(service: &str, i: pb::Instance) -> pb::RegisterInstanceRequest {
    pb::RegisterInstanceRequest {
        service: svc(service),
        instance: Some(i),
    }
}

async fn open(c: &mut SessionServiceClient<Channel>, ttl_ms: u64) -> String {
    c.open_session(pb::OpenSessionRequest {
        ttl_ms,
        id: String::new(),
    })
    .await
    .expect("open session")
    .into_inner()
    .id
}

/// The instances of `service` as node `id` answers, or none if it does not exist. Read
/// at STALE: the ephemeral part is always this node's view, and the persistent part
/// then needs no leader (a busy test machine may be between two).
async fn instances(cluster: &TestCluster, id: u64, service: &str) -> Vec<pb::Instance> {
    let mut c = naming(cluster, id).await;
    match c
        .get_service(pb::GetServiceRequest {
            key: svc(service),
            consistency: pb::Consistency::Stale as i32,
            ..Default::default()
        })
        .await
    {
        Ok(d) => d.into_inner().instances,
        Err(s) if s.code() == Code::NotFound => vec![],
        Err(s) => panic!("get_service on node {id}: {s}"),
    }
}

/// Poll an async condition until it holds, or panic after `DEADLINE`.
async fn wait_for<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + DEADLINE;
    while !f().await {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn wait_count(cluster: &TestCluster, nodes: &[u64], service: &str, n: usize) {
    for id in nodes {
        wait_for(
            &format!("{n} instances of {service} on node {id}"),
            || async { instances(cluster, *id, service).await.len() == n },
        )
        .await;
    }
}

/// A counter or gauge of node `id`'s /metrics, by its full series name.
fn metric(cluster: &TestCluster, id: u64, series: &str) -> u64 {
    let s = cluster.server(id);
    let text = nacosd::http::render_all_metrics(&s.node, &s.distro);
    series_value(&text, series).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registered_on_one_node_read_on_all_then_closed_everywhere() {
    let cluster = TestCluster::start(3, |r| r, fast).await;
    cluster
        .wait_for_leader(nacosd::groups::NAMING_PERSISTENT)
        .await;
    cluster.wait_distro_ready().await;
    let mut s1 = sessions(&cluster, 1).await;
    let mut n1 = naming(&cluster, 1).await;
    let sid = open(&mut s1, 30_000).await;
    let r = n1
        .register_instance(register("orders", eph("10.0.0.1", 80, &sid)))
        .await
        .unwrap()
        .into_inner();
    assert!(r.created);
    assert_eq!(r.instance_id, "10.0.0.1#80#DEFAULT#DEFAULT_GROUP@@orders");
    // A persistent instance of the same service, through another node (Raft).
    let mut n2 = naming(&cluster, 2).await;
    n2.register_instance(register(
        "orders",
        pb::Instance {
            ip: "10.0.0.2".into(),
            port: 80,
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    wait_count(&cluster, &[1, 2, 3], "orders", 2).await;
    for id in [1, 2, 3] {
        let all = instances(&cluster, id, "orders").await;
        let e = all.iter().find(|i| i.ephemeral).expect("the ephemeral one");
        assert_eq!(
            (e.ip.as_str(), e.session_id.as_str()),
            ("10.0.0.1", sid.as_str())
        );
        assert_eq!(e.healthy, Some(true));
        let p = all
            .iter()
            .find(|i| !i.ephemeral)
            .expect("the persistent one");
        assert_eq!((p.ip.as_str(), p.session_id.as_str()), ("10.0.0.2", ""));
        // ListServices counts both kinds.
        let mut c = naming(&cluster, id).await;
        let page = c
            .list_services(pb::ListServicesRequest {
                consistency: pb::Consistency::Stale as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.total, 1, "node {id}");
        assert_eq!(page.services[0].instance_count, 2, "node {id}");
    }
    // A service with ephemeral instances only exists for reads.
    n1.register_instance(register("only-ephemeral", eph("10.0.1.1", 81, &sid)))
        .await
        .unwrap();
    wait_count(&cluster, &[2, 3], "only-ephemeral", 1).await;
    let page = n2
        .list_services(pb::ListServicesRequest {
            consistency: pb::Consistency::Stale as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.total, 2);

    // Input rules and ownership.
    let err = n2
        .register_instance(register("orders", eph("10.0.0.3", 80, &sid)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("owned by node 1"), "{err:?}");
    let err = n1
        .register_instance(register("orders", eph("10.0.0.3", 80, "1-no-such-session")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = n1
        .register_instance(register("orders", eph("10.0.0.3", 80, "")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("session_id"), "{err:?}");
    let err = n1
        .register_instance(register("orders", eph("10.0.0.3", 80, "bad id!")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = s1
        .keep_alive(pb::KeepAliveRequest { id: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let mut s2 = sessions(&cluster, 2).await;
    let err = s2
        .keep_alive(pb::KeepAliveRequest { id: sid.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let err = s1
        .open_session(pb::OpenSessionRequest {
            ttl_ms: 10,
            id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = s2
        .open_session(pb::OpenSessionRequest {
            ttl_ms: 0,
            id: sid.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");

    // Deregister one, then close the session: gone everywhere, the persistent one stays.
    let d = n1
        .deregister_instance(pb::DeregisterInstanceRequest {
            service: svc("only-ephemeral"),
            ip: "10.0.1.1".into(),
            port: 81,
            cluster_name: String::new(),
            session_id: sid.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(d.existed);
    wait_count(&cluster, &[1, 2, 3], "only-ephemeral", 0).await;
    let closed = s1
        .close_session(pb::CloseSessionRequest { id: sid.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(closed.instances_removed, 1);
    wait_count(&cluster, &[1, 2, 3], "orders", 1).await;
    assert!(!instances(&cluster, 3, "orders").await[0].ephemeral);
    for id in [1, 2, 3] {
        wait_until("no session left", || {
            cluster.server(id).distro.counts() == (0, 0, 0)
        })
        .await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_session_turns_unhealthy_then_expires_everywhere() {
    let cluster = TestCluster::start(3, |r| r, fast).await;
    cluster.wait_distro_ready().await;
    let mut s1 = sessions(&cluster, 1).await;
    let mut n1 = naming(&cluster, 1).await;
    // One session kept alive over the stream, one left silent.
    let kept = open(&mut s1, 1_000).await;
    let silent = open(&mut s1, 1_000).await;
    n1.register_instance(register("pay", eph("10.1.0.1", 80, &kept)))
        .await
        .unwrap();
    n1.register_instance(register("pay", eph("10.1.0.2", 80, &silent)))
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut acks = s1
        .keep_alive_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let keeper = tokio::spawn(async move {
        loop {
            if tx
                .send(pb::KeepAliveRequest { id: kept.clone() })
                .await
                .is_err()
            {
                return;
            }
            match acks.next().await {
                Some(Ok(a)) => assert_eq!(a.ttl_ms, 1_000),
                other => panic!("keep-alive stream ended: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    // The silent session's instance is reported unhealthy on another node first ...
    wait_for(
        "the silent session's instance unhealthy on node 3",
        || async {
            instances(&cluster, 3, "pay")
                .await
                .iter()
                .any(|i| i.ip == "10.1.0.2" && i.healthy == Some(false))
        },
    )
    .await;
    // ... then removed everywhere, while the kept one stays healthy.
    wait_count(&cluster, &[1, 2, 3], "pay", 1).await;
    for id in [1, 2, 3] {
        let left = instances(&cluster, id, "pay").await;
        assert_eq!(left[0].ip, "10.1.0.1");
        assert_eq!(left[0].healthy, Some(true));
    }
    assert_eq!(
        metric(&cluster, 1, "nacosd_distro_sessions_expired_total"),
        1
    );
    let err = s1
        .keep_alive(pb::KeepAliveRequest { id: silent })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    keeper.abort();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_changes_costs_a_handful_of_syncs() {
    // The default sync delay (1 s): the burst of 100 registrations is the merge window's
    // business, not the test's.
    let cluster = TestCluster::start(
        3,
        |r| r,
        |c| {
            fast(c);
            c.distro.sync_delay = Duration::from_millis(1000);
            c.distro.verify_interval = Duration::from_secs(30);
            c.distro.replica_expiry = Duration::from_secs(60);
        },
    )
    .await;
    cluster.wait_distro_ready().await;
    let mut s1 = sessions(&cluster, 1).await;
    let mut n1 = naming(&cluster, 1).await;
    let sid = open(&mut s1, 30_000).await;
    let started = std::time::Instant::now();
    for i in 0..100u32 {
        n1.register_instance(register(
            "burst",
            eph(&format!("10.2.0.{}", i % 250), 1000 + i, &sid),
        ))
        .await
        .unwrap();
    }
    let burst = started.elapsed();
    wait_count(&cluster, &[2, 3], "burst", 100).await;
    for peer in [2, 3] {
        let sent = metric(
            &cluster,
            1,
            &format!("nacosd_distro_syncs_sent_total{{peer=\"{peer}\"}}"),
        );
        // One sync per merge window the burst spanned (plus one for the open).
        let windows = burst.as_millis() as u64 / 1000 + 2;
        assert!(
            (1..=windows.max(3)).contains(&sent),
            "{sent} syncs of one session to node {peer} for 100 changes in {burst:?}"
        );
        assert_eq!(
            metric(
                &cluster,
                1,
                &format!("nacosd_distro_syncs_failed_total{{peer=\"{peer}\"}}")
            ),
            0
        );
    }
    // Once a peer holds the session, later changes travel as deltas: the session went
    // whole once (its first sync), and an instance registered after the peers hold it
    // goes as a delta (a send waits for the previous one's acknowledgement).
    n1.register_instance(register("burst", eph("10.2.1.1", 999, &sid)))
        .await
        .unwrap();
    wait_count(&cluster, &[2, 3], "burst", 101).await;
    for peer in [2, 3] {
        let m = |name: &str| metric(&cluster, 1, &format!("{name}{{peer=\"{peer}\"}}"));
        // The counters move when the reply is back, which may trail the peer's read.
        wait_until("the delta's reply counted", || {
            m("nacosd_distro_syncs_sent_total") >= 2
        })
        .await;
        assert_eq!(m("nacosd_distro_full_syncs_sent_total"), 1, "node {peer}");
        assert_eq!(m("nacosd_distro_deltas_refused_total"), 0, "node {peer}");
    }
    assert_eq!(metric(&cluster, 1, "nacosd_distro_sessions_owned"), 1);
    assert_eq!(metric(&cluster, 2, "nacosd_distro_sessions_replicated"), 1);
    assert_eq!(
        metric(&cluster, 3, "nacosd_distro_ephemeral_instances"),
        101
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_node_loads_the_snapshot_before_it_is_ready() {
    // Sync retries and verifies are far away: only the snapshot can bring the data.
    let slow = |c: &mut Config| {
        fast(c);
        c.distro.sync_retry = Duration::from_secs(120);
        c.distro.verify_interval = Duration::from_secs(120);
        c.distro.replica_expiry = Duration::from_secs(600);
    };
    let mut cluster = TestCluster::start(3, |r| r, slow).await;
    cluster.wait_distro_ready().await;
    cluster.stop(3).await;
    let mut s1 = sessions(&cluster, 1).await;
    let mut n1 = naming(&cluster, 1).await;
    let sid = open(&mut s1, 60_000).await;
    for i in 0..10u32 {
        n1.register_instance(register("snap", eph("10.3.0.1", 2000 + i, &sid)))
            .await
            .unwrap();
    }
    wait_count(&cluster, &[2], "snap", 10).await;
    wait_until("the sync to node 3 failed", || {
        metric(&cluster, 1, "nacosd_distro_syncs_failed_total{peer=\"3\"}") > 0
    })
    .await;
    cluster.restart(3).await;
    let distro = cluster.server(3).distro.clone();
    wait_until("node 3's ephemeral data ready", || distro.ready()).await;
    let service = nacosd::groups::naming::ServiceKey {
        namespace: "public".into(),
        group: "DEFAULT_GROUP".into(),
        name: "snap".into(),
    };
    // Checked at once: readiness implies the data is there.
    assert_eq!(distro.instances_of(&service).len(), 10);
    assert_eq!(
        metric(&cluster, 1, "nacosd_distro_syncs_sent_total{peer=\"3\"}"),
        0,
        "no sync reached node 3"
    );
    cluster.shutdown().await;
}

/// A graceful stop deletes the node's sessions on the others at once (they die with
/// the process) instead of leaving them visible until the replica expiry, including a
/// session closed just before whose deletion had not been sent yet; and a stopping
/// node refuses new registrations.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gracefully_stopped_owner_deletes_its_sessions_everywhere() {
    let mut cluster = TestCluster::start(
        3,
        |r| r,
        |c| {
            fast(c);
            c.distro.sync_delay = Duration::from_millis(500);
            c.distro.replica_expiry = Duration::from_secs(600);
        },
    )
    .await;
    cluster.wait_distro_ready().await;
    let mut s3 = sessions(&cluster, 3).await;
    let mut n3 = naming(&cluster, 3).await;
    let kept = open(&mut s3, 60_000).await;
    let closed = open(&mut s3, 60_000).await;
    n3.register_instance(register("retired", eph("10.6.0.1", 80, &kept)))
        .await
        .unwrap();
    n3.register_instance(register("retired", eph("10.6.0.2", 80, &closed)))
        .await
        .unwrap();
    wait_count(&cluster, &[1, 2], "retired", 2).await;
    // Closed, then the node stops within the sync delay: the deletion is still queued.
    s3.close_session(pb::CloseSessionRequest { id: closed })
        .await
        .unwrap();
    let distro = cluster.server(3).distro.clone();
    cluster.stop(3).await;
    wait_count(&cluster, &[1, 2], "retired", 0).await;
    for id in [1, 2] {
        assert_eq!(
            metric(&cluster, id, "nacosd_distro_replicas_expired_total"),
            0
        );
        assert_eq!(metric(&cluster, id, "nacosd_distro_sessions_replicated"), 0);
    }
    let refused = distro.open_session("", Duration::ZERO).unwrap_err();
    assert!(
        matches!(&refused, nacosd::Error::Unavailable { message, .. } if message.contains("shutting down")),
        "{refused:?}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribe_pushes_ephemeral_changes_from_other_nodes() {
    let cluster = TestCluster::start(3, |r| r, fast).await;
    cluster
        .wait_for_leader(nacosd::groups::NAMING_PERSISTENT)
        .await;
    cluster.wait_distro_ready().await;
    let mut n3 = naming(&cluster, 3).await;
    let mut events = n3
        .subscribe(pb::SubscribeRequest {
            service: svc("feed"),
            last_index: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let first = events.next().await.unwrap().unwrap();
    assert_eq!(first.kind, pb::ServiceEventKind::FullState as i32);
    assert!(first.instances.is_empty());
    let mut s1 = sessions(&cluster, 1).await;
    let mut n1 = naming(&cluster, 1).await;
    let sid = open(&mut s1, 30_000).await;
    n1.register_instance(register("feed", eph("10.4.0.1", 80, &sid)))
        .await
        .unwrap();
    let next = tokio::time::timeout(DEADLINE, events.next())
        .await
        .expect("an event")
        .unwrap()
        .unwrap();
    assert_eq!(next.kind, pb::ServiceEventKind::InstanceUpserted as i32);
    assert_eq!(next.instances.len(), 1);
    assert!(next.instances[0].ephemeral);
    assert_eq!(next.instances[0].session_id, sid);
    s1.close_session(pb::CloseSessionRequest { id: sid })
        .await
        .unwrap();
    let gone = tokio::time::timeout(DEADLINE, events.next())
        .await
        .expect("an event")
        .unwrap()
        .unwrap();
    assert_eq!(gone.kind, pb::ServiceEventKind::InstanceRemoved as i32);
    assert_eq!(gone.instances[0].ip, "10.4.0.1");
    // A resumed subscription on a node that holds ephemeral data of the service starts
    // with a full state even though no log index moved.
    let resumed = n3
        .subscribe(pb::SubscribeRequest {
            service: svc("feed"),
            last_index: first.index.max(1),
        })
        .await
        .unwrap()
        .into_inner()
        .next()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resumed.kind, pb::ServiceEventKind::FullState as i32);
    cluster.shutdown().await;
}

/// Real processes: kill -9 of the owner. Its instances stay visible on the others until
/// the replica expiry (counted from the owner's last verify), then disappear; its
/// client opens a session on another node and registers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_owners_instances_expire_elsewhere_and_its_clients_re_register() {
    use crate::common::process::*;
    let _serial = SERIAL.lock().await;
    const VERIFY_MS: u64 = 300;
    const EXPIRY_MS: u64 = 3000;
    let dir = tempfile::tempdir().unwrap();
    let verify = VERIFY_MS.to_string();
    let expiry = EXPIRY_MS.to_string();
    let mut procs = cluster_with(
        3,
        dir.path(),
        &[
            "--distro-sync-delay-ms",
            "100",
            "--distro-verify-interval-ms",
            &verify,
            "--distro-replica-expiry-ms",
            &expiry,
        ],
    );
    wait_for_leaders(&mut procs, Duration::from_secs(60)).await;
    let connect = |p: &Proc| {
        let addr = format!("http://{}", p.client);
        async move {
            (
                SessionServiceClient::connect(addr.clone()).await.unwrap(),
                NamingServiceClient::connect(addr).await.unwrap(),
            )
        }
    };
    let count = |p: &Proc| {
        let addr = format!("http://{}", p.client);
        async move {
            let Ok(mut c) = NamingServiceClient::connect(addr).await else {
                return None;
            };
            match c
                .get_service(pb::GetServiceRequest {
                    key: svc("killed"),
                    consistency: pb::Consistency::Stale as i32,
                    ..Default::default()
                })
                .await
            {
                Ok(d) => Some(d.into_inner().instances.len()),
                Err(s) if s.code() == Code::NotFound => Some(0),
                Err(_) => None,
            }
        }
    };
    let (mut s1, mut n1) = connect(&procs[0]).await;
    let sid = open(&mut s1, 60_000).await;
    n1.register_instance(register("killed", eph("10.5.0.1", 80, &sid)))
        .await
        .unwrap();
    for p in &procs[1..] {
        wait_async("the instance on the other nodes", DEADLINE, || async {
            count(p).await == Some(1)
        })
        .await;
    }
    procs[0].kill9();
    let killed = std::time::Instant::now();
    for p in &procs[1..] {
        wait_async(
            "the dead owner's instance gone",
            Duration::from_secs(60),
            || async { count(p).await == Some(0) },
        )
        .await;
    }
    let gone_after = killed.elapsed();
    // Not before the expiry (less the verify interval: the clock runs from the owner's
    // last verify, which came at most one interval before the kill).
    assert!(
        gone_after >= Duration::from_millis(EXPIRY_MS - VERIFY_MS - 100),
        "replicas dropped {gone_after:?} after the kill; expiry is {EXPIRY_MS} ms"
    );
    // The client comes back through node 2.
    let (mut s2, mut n2) = connect(&procs[1]).await;
    let sid2 = open(&mut s2, 60_000).await;
    n2.register_instance(register("killed", eph("10.5.0.1", 80, &sid2)))
        .await
        .unwrap();
    wait_async("the re-registered instance on node 3", DEADLINE, || async {
        count(&procs[2]).await == Some(1)
    })
    .await;
    for p in &mut procs[1..] {
        assert!(p.terminate().unwrap().success());
    }
}

/// Real processes in network namespaces (the fault suite's harness, `src/chaos/`):
/// node 3 is cut off from nodes 1 and 2; both sides keep opening sessions, registering
/// ephemeral instances and serving reads; after healing every node sees both sides'
/// instances. Skipped (loudly) where network namespaces cannot be created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_of_a_partition_accept_registrations_and_converge_after_healing() {
    use crate::common::process::{wait_async, SERIAL};
    use nacosd::chaos::cluster::{Cluster, ClusterSpec};
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let spec = ClusterSpec {
        system: nacosd::chaos::System::Nacosd,
        nodes: 3,
        binary: env!("CARGO_BIN_EXE_nacosd").into(),
        extra_args: [
            "--heartbeat-ms",
            "100",
            "--election-timeout-min-ms",
            "800",
            "--election-timeout-max-ms",
            "1600",
            "--distro-sync-delay-ms",
            "200",
            "--distro-sync-retry-ms",
            "200",
            "--distro-verify-interval-ms",
            "1000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        log_filter: "info,openraft=warn".into(),
        tmpfs: None,
    };
    let run_id = nacosd::chaos::runner::run_id(std::process::id() as u64);
    let mut cluster = match Cluster::start(&run_id, &spec, dir.path()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("SKIPPED: cannot create network namespaces here: {e}");
            return;
        }
    };
    cluster
        .wait_for_leaders(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let channels: Vec<Channel> = (1..=3).map(|i| cluster.node(i).channel()).collect();
    let count = |i: usize, ip: &'static str| {
        let ch = channels[i - 1].clone();
        async move {
            let mut c = NamingServiceClient::new(ch);
            let mut req = tonic::Request::new(pb::GetServiceRequest {
                key: svc("split"),
                consistency: pb::Consistency::Stale as i32,
                ..Default::default()
            });
            req.set_timeout(Duration::from_secs(2));
            match c.get_service(req).await {
                Ok(d) => d.into_inner().instances.iter().any(|x| x.ip == ip),
                Err(_) => false,
            }
        }
    };
    // Every node has loaded its (empty) snapshot: sessions can be opened everywhere.
    let open_on = |i: usize| {
        let ch = channels[i - 1].clone();
        async move {
            let mut s = SessionServiceClient::new(ch);
            s.open_session(pb::OpenSessionRequest {
                ttl_ms: 120_000,
                id: String::new(),
            })
            .await
            .map(|r| r.into_inner().id)
        }
    };

    // Ready everywhere (Raft and the ephemeral snapshot) before the cut.
    for ch in &channels {
        wait_async("the node reports SERVING", DEADLINE, || {
            let mut h = tonic_health::pb::health_client::HealthClient::new(ch.clone());
            async move {
                h.check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .is_ok_and(|r| {
                    r.into_inner().status
                        == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
                })
            }
        })
        .await;
    }
    for (a, b) in [(3, 1), (3, 2), (1, 3), (2, 3)] {
        cluster.net.block(a, b).await.unwrap();
    }
    // Both sides accept their own sessions' registrations.
    let sid1 = open_on(1).await.expect("open on the majority side");
    let sid3 = open_on(3).await.expect("open on the cut-off node");
    NamingServiceClient::new(channels[0].clone())
        .register_instance(register("split", eph("10.6.0.1", 80, &sid1)))
        .await
        .expect("register on the majority side");
    NamingServiceClient::new(channels[2].clone())
        .register_instance(register("split", eph("10.6.0.3", 80, &sid3)))
        .await
        .expect("register on the cut-off node");
    // Both sides serve reads: node 2 gets node 1's instance, node 3 has its own only.
    wait_async("node 2 sees node 1's instance", DEADLINE, || {
        count(2, "10.6.0.1")
    })
    .await;
    assert!(
        count(3, "10.6.0.3").await,
        "the cut-off node serves its own instance"
    );
    assert!(
        !count(3, "10.6.0.1").await,
        "the partition let a sync through"
    );
    assert!(
        !count(1, "10.6.0.3").await,
        "the partition let a sync through"
    );

    cluster.net.heal().await.unwrap();
    for i in 1..=3 {
        for ip in ["10.6.0.1", "10.6.0.3"] {
            wait_async(
                &format!("node {i} sees {ip} after healing"),
                DEADLINE,
                || count(i, ip),
            )
            .await;
        }
    }
}

/// A Distro call written in another protocol version (a node of another release during
/// a rolling upgrade) is refused with FAILED_PRECONDITION before its payload is looked
/// at, on every Distro method; a call without the field (a node from before it existed,
/// which spoke version 1) is served, and the reply names this node's version.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_distro_call_of_another_protocol_version_is_refused_before_decoding() {
    let cluster = TestCluster::start(3, |r| r, fast).await;
    cluster.wait_distro_ready().await;
    let caller = cluster.node(1);
    let target = cluster.node(2).advertise_peer.clone();
    let mut client = caller
        .peers
        .raft(&target, nacosd::peer::channels::Lane::Bulk)
        .unwrap();
    let newer = |payload: Vec<u8>| {
        caller.peers.request(
            pb::DistroRequest {
                payload,
                protocol: 99,
            },
            Some(Duration::from_secs(5)),
        )
    };
    let refused = |status: tonic::Status| {
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(
            status.message().contains("version 99") && status.message().contains("node 1"),
            "the refusal names the versions and the caller: {}",
            status.message()
        );
    };
    // Not even bincode: a receiver that decoded before checking would fail otherwise.
    refused(
        client
            .distro_sync(newer(b"garbage".to_vec()))
            .await
            .unwrap_err(),
    );
    refused(
        client
            .distro_verify(newer(b"garbage".to_vec()))
            .await
            .unwrap_err(),
    );
    refused(client.distro_snapshot(newer(vec![])).await.unwrap_err());

    let legacy = caller.peers.request(
        pb::DistroRequest {
            payload: vec![],
            protocol: 0,
        },
        Some(Duration::from_secs(5)),
    );
    let mut chunks = client.distro_snapshot(legacy).await.unwrap().into_inner();
    while let Some(chunk) = chunks.next().await {
        assert_eq!(chunk.unwrap().protocol, 1, "replies name version 1");
    }
    // Syncs between the nodes themselves still go through.
    let mut s1 = sessions(&cluster, 1).await;
    let mut n1 = naming(&cluster, 1).await;
    let sid = open(&mut s1, 60_000).await;
    n1.register_instance(register("proto", eph("10.9.0.1", 2000, &sid)))
        .await
        .unwrap();
    wait_count(&cluster, &[2, 3], "proto", 1).await;
    let s = cluster.server(1);
    let text = nacosd::http::render_all_metrics(&s.node, &s.distro);
    assert!(
        text.lines()
            .any(|l| l == "nacosd_distro_protocol_refusals_total{peer=\"2\"} 0"),
        "the refusal counter is exported, and nothing was refused between the nodes:\n{}",
        text.lines()
            .filter(|l| l.contains("nacosd_distro_"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    cluster.shutdown().await;
}
