//! The config group through its gRPC API on in-process 3-node clusters.

use std::time::Duration;

use crate::common::*;
use nacosd::groups::CONFIG;
use nacosd::pb;
use nacosd::pb::config_service_client::ConfigServiceClient;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

async fn client(cluster: &TestCluster, id: u64) -> ConfigServiceClient<Channel> {
    ConfigServiceClient::connect(format!("http://{}", cluster.server(id).client_addr))
        .await
        .expect("connect")
}

fn key(data_id: &str) -> Option<pb::ConfigKey> {
    Some(pb::ConfigKey {
        namespace: String::new(),
        group: String::new(),
        data_id: data_id.into(),
    })
}

fn publish(data_id: &str, content: &str) -> pb::PublishConfigRequest {
    pb::PublishConfigRequest {
        key: key(data_id),
        content: content.into(),
        r#type: "yaml".into(),
        app_name: "shop".into(),
        tags: vec!["prod".into()],
        description: "test item".into(),
        cas_md5: None,
    }
}

fn get(data_id: &str, consistency: pb::Consistency) -> pb::GetConfigRequest {
    pb::GetConfigRequest {
        key: key(data_id),
        consistency: consistency as i32,
    }
}

fn md5(s: &str) -> String {
    nacosd::groups::config::md5_hex(s.as_bytes())
}

async fn total(c: &mut ConfigServiceClient<Channel>) -> u64 {
    c.list_configs(pb::ListConfigsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_operation_through_followers_and_leader() {
    let cluster = TestCluster::start(3, |r| r, |_| {}).await;
    let leader = cluster.wait_for_leader(CONFIG).await;
    let mut clients = Vec::new();
    for id in cluster.running() {
        clients.push((id, client(&cluster, id).await));
    }
    // Publish through every node; read back linearizably on every node at once.
    for (i, (via, c)) in clients.clone().into_iter().enumerate() {
        let mut c = c;
        let content = format!("server.port: {}", 8080 + i);
        let data_id = format!("app-{i}.yaml");
        let resp = c
            .publish_config(publish(&data_id, &content))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.md5, md5(&content), "via node {via} (leader {leader})");
        for (id, reader) in &mut clients {
            let item = reader
                .get_config(get(&data_id, pb::Consistency::Unspecified))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(item.content, content, "node {id}");
            assert_eq!(item.md5, resp.md5);
            assert_eq!(item.revision, resp.revision);
            assert_eq!(item.r#type, "yaml");
            assert_eq!(item.tags, vec!["prod".to_string()]);
            let k = item.key.unwrap();
            assert_eq!(
                (k.namespace.as_str(), k.group.as_str()),
                ("public", "DEFAULT_GROUP")
            );
        }
    }
    let (_, c) = &mut clients[0];
    // Republish keeps the creation time and moves the revision.
    let first = c
        .get_config(get("app-0.yaml", pb::Consistency::Linearizable))
        .await
        .unwrap()
        .into_inner();
    let second = c
        .publish_config(publish("app-0.yaml", "server.port: 9000"))
        .await
        .unwrap()
        .into_inner();
    assert!(second.revision > first.revision);
    let again = c
        .get_config(get("app-0.yaml", pb::Consistency::Lease))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.created_time_ms, first.created_time_ms);
    assert_eq!(again.content, "server.port: 9000");

    // List and search, paged, with the total.
    let page = c
        .list_configs(pb::ListConfigsRequest {
            data_id_pattern: "app-*.yaml".into(),
            page_no: 1,
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.total, 3);
    assert_eq!(page.items.len(), 2);
    assert!(
        page.items.iter().all(|i| i.content.is_empty()),
        "listings omit content"
    );
    let page2 = c
        .list_configs(pb::ListConfigsRequest {
            data_id_pattern: "app-*.yaml".into(),
            page_no: 2,
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page2.items.len(), 1);
    assert_eq!(page2.items[0].key.as_ref().unwrap().data_id, "app-2.yaml");
    let none = c
        .list_configs(pb::ListConfigsRequest {
            group_pattern: "OTHER*".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(none.total, 0);

    // Remove, through a follower; absent afterwards everywhere; removing again says so.
    let follower = clients.iter().position(|(id, _)| *id != leader).unwrap();
    let (_, fc) = &mut clients[follower];
    let removed = fc
        .remove_config(pb::RemoveConfigRequest {
            key: key("app-1.yaml"),
            cas_md5: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(removed.existed);
    for (id, reader) in &mut clients {
        let err = reader
            .get_config(get("app-1.yaml", pb::Consistency::Linearizable))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "node {id}");
    }
    let (_, c) = &mut clients[0];
    let again = c
        .remove_config(pb::RemoveConfigRequest {
            key: key("app-1.yaml"),
            cas_md5: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.existed);
    assert_eq!(total(c).await, 2);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_compare_and_swap_has_exactly_one_winner() {
    let cluster = TestCluster::start(3, |r| r, |_| {}).await;
    cluster.wait_for_leader(CONFIG).await;
    let mut c1 = client(&cluster, 1).await;
    let base = c1
        .publish_config(publish("cas.yaml", "v0"))
        .await
        .unwrap()
        .into_inner();
    for round in 0..5 {
        let current = c1
            .get_config(get("cas.yaml", pb::Consistency::Linearizable))
            .await
            .unwrap()
            .into_inner();
        let mut tasks = Vec::new();
        for id in [2, 3] {
            let mut c = client(&cluster, id).await;
            let mut req = publish("cas.yaml", &format!("round {round} by node {id}"));
            req.cas_md5 = Some(current.md5.clone());
            tasks.push(tokio::spawn(
                async move { (id, c.publish_config(req).await) },
            ));
        }
        let mut winners = Vec::new();
        for t in tasks {
            let (id, r) = t.await.unwrap();
            match r {
                Ok(_) => winners.push(id),
                Err(s) => assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        let after = c1
            .get_config(get("cas.yaml", pb::Consistency::Linearizable))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            after.content,
            format!("round {round} by node {}", winners[0])
        );
    }
    // cas_md5 "" means "only if absent".
    let mut req = publish("cas.yaml", "x");
    req.cas_md5 = Some(String::new());
    assert_eq!(
        c1.publish_config(req).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    let mut req = publish("fresh.yaml", "x");
    req.cas_md5 = Some(String::new());
    c1.publish_config(req).await.unwrap();
    assert!(base.revision > 0);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_is_ordered_and_retention_is_applied() {
    let cluster = TestCluster::start(3, |r| r, |c| c.config_history_limit = 5).await;
    cluster.wait_for_leader(CONFIG).await;
    let mut c = client(&cluster, 2).await;
    let mut revisions = Vec::new();
    for i in 0..8 {
        revisions.push(
            c.publish_config(publish("h.yaml", &format!("v{i}")))
                .await
                .unwrap()
                .into_inner()
                .revision,
        );
    }
    let removed = c
        .remove_config(pb::RemoveConfigRequest {
            key: key("h.yaml"),
            cas_md5: None,
        })
        .await
        .unwrap()
        .into_inner();
    let list = c
        .list_config_history(pb::ListConfigHistoryRequest {
            key: key("h.yaml"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.total, 5, "retention keeps the newest 5");
    let got: Vec<u64> = list.entries.iter().map(|e| e.revision).collect();
    let mut want = vec![removed.revision];
    want.extend(revisions.iter().rev().take(4));
    assert_eq!(got, want, "newest first");
    assert_eq!(
        list.entries[0].operation,
        pb::ConfigOperation::Remove as i32
    );
    assert_eq!(
        list.entries[1].operation,
        pb::ConfigOperation::Publish as i32
    );
    let one = c
        .get_config_history(pb::GetConfigHistoryRequest {
            key: key("h.yaml"),
            revision: revisions[6],
            consistency: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one.content, "v6");
    assert_eq!(one.md5, md5("v6"));
    let gone = c
        .get_config_history(pb::GetConfigHistoryRequest {
            key: key("h.yaml"),
            revision: revisions[0],
            consistency: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_rejected_and_nothing_is_written() {
    let cluster = TestCluster::start(1, |r| r, |c| c.max_config_bytes = 1024).await;
    cluster.wait_for_leader(CONFIG).await;
    let mut c = client(&cluster, 1).await;
    let ok = publish("ok.yaml", "x");
    let with = |f: &dyn Fn(&mut pb::PublishConfigRequest)| {
        let mut r = ok.clone();
        f(&mut r);
        r
    };
    let cases: Vec<(&str, pb::PublishConfigRequest)> = vec![
        ("key is required", with(&|r| r.key = None)),
        ("data_id must not be empty", with(&|r| r.key = key(""))),
        ("data_id contains ' '", with(&|r| r.key = key("has space"))),
        ("data_id is 257", with(&|r| r.key = key(&"a".repeat(257)))),
        (
            "group contains '/'",
            with(&|r| r.key.as_mut().unwrap().group = "a/b".into()),
        ),
        (
            "namespace contains '.'",
            with(&|r| r.key.as_mut().unwrap().namespace = "dev.ns".into()),
        ),
        (
            "content is 1025 bytes",
            with(&|r| r.content = "x".repeat(1025)),
        ),
        ("type \"exe\"", with(&|r| r.r#type = "exe".into())),
        ("tag contains ','", with(&|r| r.tags = vec!["a,b".into()])),
        (
            "11 tags",
            with(&|r| r.tags = (0..11).map(|i| format!("t{i}")).collect()),
        ),
        (
            "description is 1025",
            with(&|r| r.description = "d".repeat(1025)),
        ),
        (
            "cas_md5 must be",
            with(&|r| r.cas_md5 = Some("nothex".into())),
        ),
        (
            "app_name contains '!'",
            with(&|r| r.app_name = "shop!".into()),
        ),
    ];
    for (want, req) in cases {
        let err = c.publish_config(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{want}: {err:?}");
        assert!(
            err.message().contains(want),
            "message {:?} should mention {want:?}",
            err.message()
        );
    }
    let err = c
        .get_config(pb::GetConfigRequest {
            key: key("ok.yaml"),
            consistency: 99,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .list_configs(pb::ListConfigsRequest {
            page_size: 501,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // A request over the transport limit (max-request-bytes, 4 MiB by default).
    let err = c
        .publish_config(with(&|r| r.content = "x".repeat(5 << 20)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("max-request-bytes"),
        "{}",
        err.message()
    );
    assert_eq!(total(&mut c).await, 0, "nothing was written");
    // The same request with valid fields goes through.
    c.publish_config(ok).await.unwrap();
    assert_eq!(total(&mut c).await, 1);
    cluster.shutdown().await;
}

async fn next_event(stream: &mut tonic::Streaming<pb::WatchEvent>) -> pb::WatchEvent {
    tokio::time::timeout(DEADLINE, stream.next())
        .await
        .expect("watch event within the deadline")
        .expect("stream open")
        .expect("event, not error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_follows_changes_made_anywhere_and_survives_a_leader_change() {
    let mut cluster = TestCluster::start(3, |r| r, |_| {}).await;
    let leader = cluster.wait_for_leader(CONFIG).await;
    let watcher_node = cluster.other_than(leader);
    let writer_node = cluster
        .running()
        .into_iter()
        .find(|i| *i != leader && *i != watcher_node)
        .unwrap();
    let mut writer = client(&cluster, writer_node).await;
    let held = writer
        .publish_config(publish("w1.yaml", "one"))
        .await
        .unwrap()
        .into_inner();
    writer
        .publish_config(publish("w2.yaml", "two"))
        .await
        .unwrap();

    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let mut watcher = client(&cluster, watcher_node).await;
    // w1: the client holds the current md5 (no answer); w2: a stale md5 (answer now).
    tx.send(pb::WatchRequest {
        add: vec![
            pb::WatchKey {
                key: key("w1.yaml"),
                md5: held.md5.clone(),
            },
            pb::WatchKey {
                key: key("w2.yaml"),
                md5: md5("old"),
            },
        ],
        remove: vec![],
    })
    .await
    .unwrap();
    let mut stream = watcher
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = next_event(&mut stream).await;
    assert_eq!(first.key.as_ref().unwrap().data_id, "w2.yaml");
    assert_eq!(first.md5, md5("two"));

    // A publish through another node is pushed, with its log index.
    let p = writer
        .publish_config(publish("w1.yaml", "one-b"))
        .await
        .unwrap()
        .into_inner();
    let ev = next_event(&mut stream).await;
    assert_eq!(ev.key.as_ref().unwrap().data_id, "w1.yaml");
    assert_eq!(
        (ev.md5.as_str(), ev.log_index, ev.deleted),
        (p.md5.as_str(), p.revision, false)
    );

    // Keys added mid-stream are watched; a never-published key is "deleted" at first.
    tx.send(pb::WatchRequest {
        add: vec![pb::WatchKey {
            key: key("w3.yaml"),
            md5: md5("something"),
        }],
        remove: vec![pb::ConfigKey {
            namespace: String::new(),
            group: String::new(),
            data_id: "w2.yaml".into(),
        }],
    })
    .await
    .unwrap();
    let ev = next_event(&mut stream).await;
    assert_eq!(ev.key.as_ref().unwrap().data_id, "w3.yaml");
    assert!(ev.deleted);
    writer
        .publish_config(publish("w2.yaml", "unwatched now"))
        .await
        .unwrap();
    let p3 = writer
        .publish_config(publish("w3.yaml", "three"))
        .await
        .unwrap()
        .into_inner();
    let ev = next_event(&mut stream).await;
    assert_eq!(
        ev.key.as_ref().unwrap().data_id,
        "w3.yaml",
        "w2 was unwatched"
    );
    assert_eq!(ev.log_index, p3.revision);

    // The leader goes away; the stream on the follower keeps delivering.
    cluster.stop(leader).await;
    cluster.wait_for_leader(CONFIG).await;
    let removed = writer
        .remove_config(pb::RemoveConfigRequest {
            key: key("w1.yaml"),
            cas_md5: None,
        })
        .await
        .unwrap()
        .into_inner();
    let ev = next_event(&mut stream).await;
    assert_eq!(ev.key.as_ref().unwrap().data_id, "w1.yaml");
    assert!(ev.deleted);
    assert_eq!(ev.log_index, removed.revision);
    drop(tx);
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
            c.config_history_limit = 3;
        },
    )
    .await;
    let leader = cluster.wait_for_leader(CONFIG).await;
    let lagging = cluster.other_than(leader);
    cluster.stop(lagging).await;
    let mut c = client(&cluster, leader).await;
    for i in 0..60 {
        c.publish_config(publish(&format!("s{}.yaml", i % 20), &format!("v{i}")))
            .await
            .unwrap();
    }
    c.remove_config(pb::RemoveConfigRequest {
        key: key("s3.yaml"),
        cas_md5: None,
    })
    .await
    .unwrap();
    cluster
        .restart_behind_purge(CONFIG, leader, lagging, 10)
        .await;

    let mut restored = client(&cluster, lagging).await;
    let stale = |r: &mut pb::ListConfigsRequest| r.consistency = pb::Consistency::Stale as i32;
    let mut req = pb::ListConfigsRequest {
        page_size: 100,
        ..Default::default()
    };
    stale(&mut req);
    let a = restored
        .list_configs(req.clone())
        .await
        .unwrap()
        .into_inner();
    let b = c.list_configs(req).await.unwrap().into_inner();
    assert_eq!(a, b);
    assert_eq!(a.total, 19);
    for i in 0..20 {
        let data_id = format!("s{i}.yaml");
        let ga = restored
            .get_config(get(&data_id, pb::Consistency::Stale))
            .await
            .map(|r| r.into_inner());
        let gb = c
            .get_config(get(&data_id, pb::Consistency::Stale))
            .await
            .map(|r| r.into_inner());
        match (ga, gb) {
            (Ok(x), Ok(y)) => assert_eq!(x, y),
            (Err(x), Err(y)) => assert_eq!((x.code(), i), (y.code(), 3)),
            other => panic!("{data_id}: {other:?}"),
        }
        let h = |c: &mut ConfigServiceClient<Channel>| {
            let mut c = c.clone();
            let data_id = data_id.clone();
            async move {
                c.list_config_history(pb::ListConfigHistoryRequest {
                    key: key(&data_id),
                    consistency: pb::Consistency::Stale as i32,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
            }
        };
        assert_eq!(h(&mut restored).await, h(&mut c).await);
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_deadline_bounds_a_write_without_leader() {
    let mut cluster = TestCluster::start(3, |r| r, |_| {}).await;
    cluster.wait_for_leader(CONFIG).await;
    let survivor = 1;
    cluster.stop(2).await;
    cluster.stop(3).await;
    let mut c = client(&cluster, survivor).await;
    let mut req = tonic::Request::new(publish("x.yaml", "x"));
    req.set_timeout(Duration::from_millis(1500));
    let started = std::time::Instant::now();
    let err = c.publish_config(req).await.unwrap_err();
    assert!(
        matches!(
            err.code(),
            Code::Unavailable | Code::Unknown | Code::DeadlineExceeded
        ),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the client's deadline is honoured"
    );
    cluster.shutdown().await;
}
