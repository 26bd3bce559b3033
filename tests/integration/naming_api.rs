//! The naming group through its gRPC API on in-process 3-node clusters.

use std::collections::HashMap;

use crate::common::*;
use nacosd::groups::NAMING_PERSISTENT;
use nacosd::pb;
use nacosd::pb::naming_service_client::NamingServiceClient;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

async fn client(cluster: &TestCluster, id: u64) -> NamingServiceClient<Channel> {
    NamingServiceClient::connect(format!("http://{}", cluster.server(id).client_addr))
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

fn inst(ip: &str, port: u32) -> pb::Instance {
    pb::Instance {
        ip: ip.into(),
        port,
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

fn get(service: &str) -> pb::GetServiceRequest {
    pb::GetServiceRequest {
        key: svc(service),
        ..Default::default()
    }
}

async fn list_total(c: &mut NamingServiceClient<Channel>) -> u64 {
    c.list_services(pb::ListServicesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_operation_through_followers_and_leader() {
    let cluster = TestCluster::start(3, |r| r, |_| {}).await;
    cluster.wait_for_leader(NAMING_PERSISTENT).await;
    let mut clients = Vec::new();
    for id in cluster.running() {
        clients.push((id, client(&cluster, id).await));
    }
    // Register through each node (creating the service); read back on every node.
    for (i, (via, c)) in clients.clone().into_iter().enumerate() {
        let mut c = c;
        let resp = c
            .register_instance(register("orders", inst(&format!("10.0.0.{i}"), 8080)))
            .await
            .unwrap()
            .into_inner();
        assert!(resp.created, "via {via}");
        assert_eq!(
            resp.instance_id,
            format!("10.0.0.{i}#8080#DEFAULT#DEFAULT_GROUP@@orders")
        );
        for (id, reader) in &mut clients {
            let d = reader
                .get_service(get("orders"))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(d.instances.len(), i + 1, "node {id}");
            assert_eq!(d.service.unwrap().revision, resp.revision);
        }
    }
    // Service operations, instance updates and batches through every node (leader and
    // followers alike), each read back linearizably on every node.
    for i in 0..clients.len() {
        let name = format!("per-node-{i}");
        let (via, c) = &mut clients[i];
        let via = *via;
        c.create_service(pb::CreateServiceRequest {
            key: svc(&name),
            protect_threshold: 0.1,
            ..Default::default()
        })
        .await
        .unwrap();
        c.update_service(pb::UpdateServiceRequest {
            key: svc(&name),
            protect_threshold: 0.2,
            ..Default::default()
        })
        .await
        .unwrap();
        c.batch_register_instances(pb::BatchRegisterInstancesRequest {
            service: svc(&name),
            instances: vec![inst("10.2.0.1", 80), inst("10.2.0.2", 80)],
        })
        .await
        .unwrap();
        let mut upd = inst("10.2.0.1", 80);
        upd.enabled = Some(false);
        c.update_instance(pb::UpdateInstanceRequest {
            service: svc(&name),
            instance: Some(upd),
        })
        .await
        .unwrap();
        for (id, reader) in &mut clients {
            let d = reader.get_service(get(&name)).await.unwrap().into_inner();
            assert_eq!(
                d.service.unwrap().protect_threshold,
                0.2,
                "node {id}, written via {via}"
            );
            assert_eq!(d.instances.len(), 2);
            assert!(d.instances.iter().any(|i| i.enabled == Some(false)));
        }
        let (_, c) = &mut clients[i];
        for ip in ["10.2.0.1", "10.2.0.2"] {
            c.deregister_instance(pb::DeregisterInstanceRequest {
                service: svc(&name),
                ip: ip.into(),
                port: 80,
                cluster_name: String::new(),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        c.delete_service(pb::DeleteServiceRequest { key: svc(&name) })
            .await
            .unwrap();
        for (id, reader) in &mut clients {
            assert_eq!(
                reader.get_service(get(&name)).await.unwrap_err().code(),
                Code::NotFound,
                "node {id}"
            );
        }
    }

    let (_, c) = &mut clients[1];
    // Registering again updates (idempotent).
    let mut again = inst("10.0.0.0", 8080);
    again.weight = Some(5.0);
    let r = c
        .register_instance(register("orders", again))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.created);
    // Update only if present.
    let mut upd = inst("10.0.0.1", 8080);
    upd.healthy = Some(false);
    c.update_instance(pb::UpdateInstanceRequest {
        service: svc("orders"),
        instance: Some(upd),
    })
    .await
    .unwrap();
    let err = c
        .update_instance(pb::UpdateInstanceRequest {
            service: svc("orders"),
            instance: Some(inst("10.9.9.9", 1)),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // Filters: healthy only, by cluster.
    let healthy = c
        .get_service(pb::GetServiceRequest {
            key: svc("orders"),
            healthy_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(healthy.instances.len(), 2);
    let weights: Vec<f64> = c
        .get_service(get("orders"))
        .await
        .unwrap()
        .into_inner()
        .instances
        .iter()
        .map(|i| i.weight.unwrap())
        .collect();
    assert!(weights.contains(&5.0));
    let other_cluster = c
        .get_service(pb::GetServiceRequest {
            key: svc("orders"),
            clusters: vec!["EU".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(other_cluster.instances.is_empty());

    // Batch: all or nothing.
    let mut bad = inst("10.1.0.2", 70000);
    bad.weight = Some(1.0);
    let err = c
        .batch_register_instances(pb::BatchRegisterInstancesRequest {
            service: svc("payments"),
            instances: vec![inst("10.1.0.1", 80), bad],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("instances[1]"), "{}", err.message());
    assert_eq!(
        c.get_service(get("payments")).await.unwrap_err().code(),
        Code::NotFound
    );
    let batch = c
        .batch_register_instances(pb::BatchRegisterInstancesRequest {
            service: svc("payments"),
            instances: vec![inst("10.1.0.1", 80), inst("10.1.0.2", 80)],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.instance_ids.len(), 2);

    // Services: create (conflict if present), update, list, delete.
    let created = c
        .create_service(pb::CreateServiceRequest {
            key: svc("inventory"),
            protect_threshold: 0.5,
            metadata: HashMap::from([("owner".into(), "team-a".into())]),
            selector: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.protect_threshold, 0.5);
    let dup = c
        .create_service(pb::CreateServiceRequest {
            key: svc("inventory"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    let updated = c
        .update_service(pb::UpdateServiceRequest {
            key: svc("inventory"),
            protect_threshold: 0.8,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.protect_threshold, 0.8);
    let page = c
        .list_services(pb::ListServicesRequest {
            page_no: 1,
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.total, 3);
    let names: Vec<_> = page
        .services
        .iter()
        .map(|s| s.service_name.as_str())
        .collect();
    assert_eq!(names, vec!["inventory", "orders"]);
    assert_eq!(page.services[1].instance_count, 3);

    let refused = c
        .delete_service(pb::DeleteServiceRequest { key: svc("orders") })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    for i in 0..3 {
        let d = c
            .deregister_instance(pb::DeregisterInstanceRequest {
                service: svc("orders"),
                ip: format!("10.0.0.{i}"),
                port: 8080,
                cluster_name: String::new(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(d.existed);
    }
    let absent = c
        .deregister_instance(pb::DeregisterInstanceRequest {
            service: svc("orders"),
            ip: "10.0.0.0".into(),
            port: 8080,
            cluster_name: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!absent.existed, "deregistering an absent instance says so");
    c.delete_service(pb::DeleteServiceRequest { key: svc("orders") })
        .await
        .unwrap();
    for (id, reader) in &mut clients {
        assert_eq!(
            reader.get_service(get("orders")).await.unwrap_err().code(),
            Code::NotFound,
            "node {id}"
        );
        assert_eq!(list_total(reader).await, 2, "node {id}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_rejected_and_nothing_is_written() {
    let cluster = TestCluster::start(1, |r| r, |_| {}).await;
    cluster.wait_for_leader(NAMING_PERSISTENT).await;
    let mut c = client(&cluster, 1).await;
    let with = |f: &dyn Fn(&mut pb::Instance)| {
        let mut i = inst("10.0.0.1", 80);
        f(&mut i);
        register("svc", i)
    };
    let cases: Vec<(&str, pb::RegisterInstanceRequest)> = vec![
        (
            "service is required",
            pb::RegisterInstanceRequest {
                service: None,
                instance: Some(inst("10.0.0.1", 80)),
            },
        ),
        (
            "instance is required",
            pb::RegisterInstanceRequest {
                service: svc("svc"),
                instance: None,
            },
        ),
        (
            "service_name contains '/'",
            register("a/b", inst("10.0.0.1", 80)),
        ),
        (
            "service_name must not be empty",
            register("", inst("10.0.0.1", 80)),
        ),
        ("port 0", with(&|i| i.port = 0)),
        ("port 70000", with(&|i| i.port = 70000)),
        ("ip must not be empty", with(&|i| i.ip = String::new())),
        (
            "is neither an IPv4/IPv6",
            with(&|i| i.ip = "bad_host!".into()),
        ),
        ("weight 10001", with(&|i| i.weight = Some(10001.0))),
        ("weight -1", with(&|i| i.weight = Some(-1.0))),
        (
            "cluster_name contains '.'",
            with(&|i| i.cluster_name = "eu.west".into()),
        ),
        ("ephemeral", with(&|i| i.ephemeral = true)),
        (
            "metadata has 65 entries",
            with(&|i| i.metadata = (0..65).map(|n| (format!("k{n}"), "v".into())).collect()),
        ),
        (
            "metadata value of \"k\" is 1025",
            with(&|i| i.metadata = HashMap::from([("k".into(), "v".repeat(1025))])),
        ),
    ];
    for (want, req) in cases {
        let err = c.register_instance(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{want}: {err:?}");
        assert!(
            err.message().contains(want),
            "{:?} should mention {want:?}",
            err.message()
        );
    }
    let err = c
        .create_service(pb::CreateServiceRequest {
            key: svc("svc"),
            protect_threshold: 1.5,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("protect_threshold"));
    let err = c
        .create_service(pb::CreateServiceRequest {
            key: svc("svc"),
            selector: Some(pb::Selector {
                r#type: "regex".into(),
                expression: String::new(),
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("selector type"));
    assert_eq!(list_total(&mut c).await, 0, "nothing was written");
    cluster.shutdown().await;
}

async fn next(stream: &mut tonic::Streaming<pb::ServiceEvent>) -> pb::ServiceEvent {
    tokio::time::timeout(DEADLINE, stream.next())
        .await
        .expect("event within the deadline")
        .expect("stream open")
        .expect("event, not error")
}

async fn subscribe(
    c: &mut NamingServiceClient<Channel>,
    service: &str,
    last_index: u64,
) -> tonic::Streaming<pb::ServiceEvent> {
    c.subscribe(pb::SubscribeRequest {
        service: svc(service),
        last_index,
    })
    .await
    .unwrap()
    .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribe_sees_changes_in_order_resumes_without_gaps_and_survives_leader_change() {
    let mut cluster = TestCluster::start(3, |r| r, |_| {}).await;
    let leader = cluster.wait_for_leader(NAMING_PERSISTENT).await;
    let a = cluster.other_than(leader);
    let b = cluster
        .running()
        .into_iter()
        .find(|i| *i != leader && *i != a)
        .unwrap();
    let mut writer = client(&cluster, b).await;
    let first = writer
        .register_instance(register("web", inst("10.0.0.1", 80)))
        .await
        .unwrap()
        .into_inner();

    let mut sub_client = client(&cluster, a).await;
    let mut stream = subscribe(&mut sub_client, "web", 0).await;
    let full = next(&mut stream).await;
    assert_eq!(full.kind, pb::ServiceEventKind::FullState as i32);
    assert_eq!(full.index, first.revision);
    assert_eq!(full.instances.len(), 1);

    // Changes through node B arrive on node A in order, with their indices.
    let mut last = full.index;
    for port in [81, 82, 83] {
        let r = writer
            .register_instance(register("web", inst("10.0.0.1", port)))
            .await
            .unwrap()
            .into_inner();
        let ev = next(&mut stream).await;
        assert_eq!(ev.kind, pb::ServiceEventKind::InstanceUpserted as i32);
        assert_eq!(ev.index, r.revision);
        assert!(ev.index > last, "indices increase");
        assert_eq!(ev.instances[0].port, port);
        last = ev.index;
    }
    // Issue #11.9: every instance of a batch reaches the subscriber.
    let batch = writer
        .batch_register_instances(pb::BatchRegisterInstancesRequest {
            service: svc("web"),
            instances: (90..94).map(|p| inst("10.0.0.9", p)).collect(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut ports = Vec::new();
    while ports.len() < 4 {
        let ev = next(&mut stream).await;
        assert_eq!(ev.kind, pb::ServiceEventKind::InstanceUpserted as i32);
        assert_eq!(ev.index, batch.revision);
        ports.extend(ev.instances.iter().map(|i| i.port));
    }
    ports.sort_unstable();
    assert_eq!(ports, vec![90, 91, 92, 93]);
    let d = writer
        .deregister_instance(pb::DeregisterInstanceRequest {
            service: svc("web"),
            ip: "10.0.0.1".into(),
            port: 81,
            cluster_name: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ev = next(&mut stream).await;
    assert_eq!(
        (ev.kind, ev.index),
        (pb::ServiceEventKind::InstanceRemoved as i32, d.revision)
    );
    last = ev.index;
    drop(stream);

    // Reconnect with the last index: nothing missed, nothing replayed; then live events.
    let mut resumed = subscribe(&mut sub_client, "web", last).await;
    let r = writer
        .register_instance(register("web", inst("10.0.0.2", 80)))
        .await
        .unwrap()
        .into_inner();
    let ev = next(&mut resumed).await;
    assert_eq!(
        (ev.kind, ev.index),
        (pb::ServiceEventKind::InstanceUpserted as i32, r.revision)
    );
    drop(resumed);

    // Changes while disconnected: the reconnect gets a fresh full state, not a gap.
    let missed = writer
        .register_instance(register("web", inst("10.0.0.3", 80)))
        .await
        .unwrap()
        .into_inner();
    let mut resumed = subscribe(&mut sub_client, "web", r.revision).await;
    let ev = next(&mut resumed).await;
    assert_eq!(ev.kind, pb::ServiceEventKind::FullState as i32);
    assert_eq!(ev.index, missed.revision);
    assert_eq!(ev.instances.len(), 9);

    // Leader change: the subscription on node A keeps delivering.
    cluster.stop(leader).await;
    cluster.wait_for_leader(NAMING_PERSISTENT).await;
    let after = writer
        .register_instance(register("web", inst("10.0.0.4", 80)))
        .await
        .unwrap()
        .into_inner();
    let ev = next(&mut resumed).await;
    assert_eq!(
        (ev.kind, ev.index),
        (
            pb::ServiceEventKind::InstanceUpserted as i32,
            after.revision
        )
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_restored_from_a_snapshot_answers_like_the_leader() {
    let mut cluster = TestCluster::start(
        3,
        |r| r,
        |c| {
            c.snapshot_logs = 25;
            c.snapshot_keep_logs = 5;
        },
    )
    .await;
    let leader = cluster.wait_for_leader(NAMING_PERSISTENT).await;
    let lagging = cluster.other_than(leader);
    cluster.stop(lagging).await;
    let mut c = client(&cluster, leader).await;
    for i in 0..60u32 {
        c.register_instance(register(
            &format!("svc{}", i % 7),
            inst(&format!("10.0.{}.{}", i / 7, i % 7), 8000 + i),
        ))
        .await
        .unwrap();
    }
    cluster
        .restart_behind_purge(NAMING_PERSISTENT, leader, lagging, 10)
        .await;

    let mut restored = client(&cluster, lagging).await;
    let stale = pb::Consistency::Stale as i32;
    let list = pb::ListServicesRequest {
        page_size: 100,
        consistency: stale,
        ..Default::default()
    };
    let a = restored
        .list_services(list.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a, c.list_services(list).await.unwrap().into_inner());
    assert_eq!(a.total, 7);
    for i in 0..7 {
        let req = pb::GetServiceRequest {
            key: svc(&format!("svc{i}")),
            consistency: stale,
            ..Default::default()
        };
        assert_eq!(
            restored
                .get_service(req.clone())
                .await
                .unwrap()
                .into_inner(),
            c.get_service(req).await.unwrap().into_inner()
        );
    }
    cluster.shutdown().await;
}
