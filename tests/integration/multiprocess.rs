//! Real `nacosd` processes: a 3-node cluster that survives kill -9 of a leader while
//! clients write through every node, and a standalone node driven with `nacosctl`
//! (cluster status, members, snapshots, digests, leader transfer, sessions).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::process::*;
use nacosd::pb;
use nacosd::pb::config_service_client::ConfigServiceClient;

const DEADLINE: Duration = Duration::from_secs(60);

fn publish(data_id: &str, content: &str) -> pb::PublishConfigRequest {
    pb::PublishConfigRequest {
        key: Some(pb::ConfigKey {
            namespace: String::new(),
            group: String::new(),
            data_id: data_id.into(),
        }),
        content: content.into(),
        ..Default::default()
    }
}

/// Write `count` items through `addr`, one at a time; record the acknowledged ones.
async fn writer(
    addr: String,
    prefix: String,
    count: usize,
    acked: Arc<Mutex<BTreeMap<String, String>>>,
) {
    let mut client: Option<ConfigServiceClient<tonic::transport::Channel>> = None;
    for i in 0..count {
        let data_id = format!("{prefix}-{i:04}");
        let content = format!("value of {data_id}");
        if client.is_none() {
            client = ConfigServiceClient::connect(format!("http://{addr}"))
                .await
                .ok();
        }
        let Some(c) = client.as_mut() else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut req = tonic::Request::new(publish(&data_id, &content));
        req.set_timeout(Duration::from_secs(5));
        match c.publish_config(req).await {
            Ok(_) => {
                acked.lock().unwrap().insert(data_id, content);
            }
            Err(_) => {
                // Unavailable / unknown outcome while a node is down: not acknowledged.
                client = None;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_survives_kill_9_of_a_leader_under_concurrent_writes() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut procs = cluster(3, dir.path());
    wait_for_leaders(&mut procs, DEADLINE).await;
    let leaders = agreed_leaders(&procs).await.unwrap();
    let victim = leaders["config"];

    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let mut writers = Vec::new();
    for p in &procs {
        writers.push(tokio::spawn(writer(
            p.client.clone(),
            format!("w{}", p.id),
            120,
            acked.clone(),
        )));
    }
    // Let some writes land, then kill the config leader without warning.
    let a = acked.clone();
    wait_async("first acknowledged writes", DEADLINE, || {
        let n = a.lock().unwrap().len();
        async move { n >= 30 }
    })
    .await;
    let v = procs.iter_mut().find(|p| p.id == victim).unwrap();
    v.kill9();
    wait_async("new leaders without the killed node", DEADLINE, || async {
        agreed_leaders(&procs)
            .await
            .is_some_and(|l| l.values().all(|id| *id != victim))
    })
    .await;
    let v = procs.iter_mut().find(|p| p.id == victim).unwrap();
    v.start();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 200,
        "most writes were acknowledged ({})",
        acked.len()
    );

    // Every node converges to the same applied index in every group.
    wait_converged(&procs, DEADLINE).await;

    // Every acknowledged write is on every node, including the one killed with -9.
    for p in &procs {
        let mut c = ConfigServiceClient::connect(format!("http://{}", p.client))
            .await
            .unwrap();
        for (data_id, content) in &acked {
            let item = c
                .get_config(pb::GetConfigRequest {
                    key: publish(data_id, "").key,
                    consistency: pb::Consistency::Stale as i32,
                })
                .await
                .unwrap_or_else(|e| panic!("node {}: {data_id} lost: {e}\n{}", p.id, p.log()))
                .into_inner();
            assert_eq!(&item.content, content, "node {}", p.id);
        }
    }
    for p in &mut procs {
        let st = p.terminate().expect("was running");
        assert!(
            st.success(),
            "node {} exits cleanly on SIGTERM: {st:?}\n{}",
            p.id,
            p.log()
        );
    }
}

/// The fault suite's isolation rounds: a follower that forwarded a write to a leader
/// that then fell silent (paused here, partitioned there) held it until the client's
/// deadline, long after a new leader took over. It now gives up on it as soon as it
/// learns that leadership moved (the outcome is unknown: the old leader may have
/// appended it), and a read through it follows the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_forwarded_to_a_silent_leader_is_abandoned_when_leadership_moves() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut procs = cluster(3, dir.path());
    wait_for_leaders(&mut procs, DEADLINE).await;
    let leader = agreed_leaders(&procs).await.unwrap()["config"];
    let via = procs
        .iter()
        .find(|p| p.id != leader)
        .unwrap()
        .client
        .clone();
    let mut client = ConfigServiceClient::connect(format!("http://{via}"))
        .await
        .unwrap();
    // A first write through the follower: the forwarding path is up.
    let mut req = tonic::Request::new(publish("before", "1"));
    req.set_timeout(DEADLINE);
    client.publish_config(req).await.unwrap();

    let old = procs.iter().find(|p| p.id == leader).unwrap();
    old.pause();
    // Far longer than the election the survivors hold: only the abandonment can end
    // this call before its deadline.
    let mut req = tonic::Request::new(publish("during", "2"));
    req.set_timeout(Duration::from_secs(600));
    let status = client
        .publish_config(req)
        .await
        .expect_err("the silent leader cannot have answered");
    assert_eq!(status.code(), tonic::Code::Unknown, "{status:?}");
    assert!(
        status.message().contains("leadership moved"),
        "abandoned because the leader changed: {status:?}"
    );

    // A read through the same node, with the old leader still silent, is served once
    // the survivors have their leader. The call above may have been abandoned as soon
    // as the election started; until it ends, the node answers `Unavailable` (cut off
    // from the group's majority, try another node), which a busy machine can stretch
    // past the first read.
    let until = tokio::time::Instant::now() + DEADLINE;
    let item = loop {
        let mut req = tonic::Request::new(pb::GetConfigRequest {
            key: publish("before", "").key,
            consistency: pb::Consistency::Linearizable as i32,
        });
        req.set_timeout(DEADLINE);
        match client.get_config(req).await {
            Ok(item) => break item.into_inner(),
            Err(s)
                if s.code() == tonic::Code::Unavailable && tokio::time::Instant::now() < until =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(s) => panic!("the read through the follower was not served: {s:?}"),
        }
    };
    assert_eq!(item.content, "1");

    procs.iter().find(|p| p.id == leader).unwrap().resume();
    wait_for_leaders(&mut procs, DEADLINE).await;
    wait_converged(&procs, DEADLINE).await;
}

fn nacosctl(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_nacosctl"))
        .args(args)
        .output()
        .expect("run nacosctl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_node_and_nacosctl_status() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut p = Proc::new(1, dir.path());
    p.start();
    let endpoint = p.client.clone();
    wait_async("standalone node leads every group", DEADLINE, || async {
        let out = nacosctl(&["--endpoint", &endpoint, "cluster", "status"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        out.status.success() && text.lines().filter(|l| l.contains(" leader ")).count() == 3
    })
    .await;
    let out = nacosctl(&["--endpoint", &endpoint, "cluster", "status"]);
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.starts_with("node 1 ("), "{table}");
    for g in ["config", "embedded_db", "naming_persistent"] {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(g) && l.contains("leader")),
            "{table}"
        );
    }

    let out = nacosctl(&["--endpoint", &endpoint, "cluster", "status", "-o", "json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["node_id"], 1);
    let groups = v["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 3);
    for g in groups {
        assert_eq!(g["role"], "leader");
        assert_eq!(g["leader_id"], 1);
        assert_eq!(g["voters"].as_array().unwrap().len(), 1);
    }

    // Cluster operations through nacosctl.
    let out = nacosctl(&["--endpoint", &endpoint, "member", "list", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let members = v["members"].as_array().unwrap();
    assert_eq!(members.len(), 1, "{v}");
    assert_eq!(members[0]["node_id"], 1);
    assert_eq!(members[0]["consistent"], true);
    assert!(members[0]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .all(|g| g["role"] == "voter"));
    let out = nacosctl(&["--endpoint", &endpoint, "member", "remove", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("FailedPrecondition") && err.contains("last voter"),
        "{err}"
    );
    let out = nacosctl(&[
        "--endpoint",
        &endpoint,
        "snapshot",
        "--group",
        "config",
        "-o",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["group"], "config", "{v}");
    let out = nacosctl(&["--endpoint", &endpoint, "digest"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.lines().count() == 4, "{text}");
    let out = nacosctl(&["--endpoint", &endpoint, "leader", "transfer"]);
    assert!(
        !out.status.success(),
        "a single node has nobody to hand over to"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("no other voter"));

    // Sessions through nacosctl.
    let out = nacosctl(&[
        "--endpoint",
        &endpoint,
        "session",
        "open",
        "--id",
        "ctl-demo",
        "--ttl-ms",
        "20000",
        "-o",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["value"], "ctl-demo", "{v}");
    assert_eq!(v[1]["value"], "20000", "{v}");
    let out = nacosctl(&["--endpoint", &endpoint, "session", "keep-alive", "ctl-demo"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("20000"));
    let out = nacosctl(&["--endpoint", &endpoint, "session", "close", "ctl-demo"]);
    assert!(out.status.success());
    let out = nacosctl(&["--endpoint", &endpoint, "session", "keep-alive", "ctl-demo"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"));

    // A bad endpoint is a clear error, not a panic.
    let out = nacosctl(&[
        "--endpoint",
        "127.0.0.1:1",
        "--timeout-ms",
        "500",
        "cluster",
        "status",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));

    // /readyz and /metrics on the HTTP port.
    let body = http_get(&p.http, "/readyz").await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    let metrics = http_get(&p.http, "/metrics").await;
    assert!(
        metrics.contains("nacosd_raft_is_leader{group=\"config\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("nacosd_peer_calls_refused_total 0"),
        "{metrics}"
    );
    // Recorded as the node ran: the nacosctl calls above, the log's fsyncs.
    for expected in [
        "nacosd_grpc_calls_total{method=\"/nacosd.v1.",
        "nacosd_grpc_seconds_bucket{",
        "nacosd_wal_sync_seconds_count ",
        "nacosd_storage_memory_bytes{part=\"memtables\"} ",
        "nacosd_storage_memory_bytes{part=\"block_cache\"} ",
        "nacosd_allocator_bytes{kind=\"allocated\"} ",
        "nacosd_allocator_bytes{kind=\"resident\"} ",
        "nacosd_log_reads_total{group=\"config\",from=\"cache\"} ",
        "nacosd_allocator_purged_bytes_total ",
        "nacosd_sqlite_memory_bytes ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "# EOF",
    ] {
        assert!(
            metrics.contains(expected),
            "{expected} missing from {metrics}"
        );
    }
    // Where appends and applies ran: the config group's entries so far (its first
    // blank entry at least) were small, on a node with no write stall.
    for series in [
        "nacosd_log_appends_total{group=\"config\",path=\"inline\"}",
        "nacosd_raft_applies_total{group=\"config\",path=\"memory\"}",
    ] {
        let n = crate::common::series_value(&metrics, series);
        assert!(n.is_some_and(|n| n >= 1), "{series}: {n:?} in {metrics}");
    }
    assert_eq!(
        crate::common::series_value(
            &metrics,
            "nacosd_log_appends_total{group=\"config\",path=\"stalled\"}"
        ),
        Some(0)
    );
    // A node gives the allocator's freed pages back once it falls quiet after writes
    // (src/idle.rs); its start-up counts as such a spell.
    wait_async("the idle node purges the allocator", DEADLINE, || async {
        crate::common::series_value(
            &http_get(&p.http, "/metrics").await,
            "nacosd_allocator_idle_purges_total",
        )
        .is_some_and(|n| n >= 1)
    })
    .await;

    let st = p.terminate().unwrap();
    assert!(st.success(), "{}", p.log());
    // Restart from the same data dir: the data dir is reused, no re-initialization.
    p.start();
    wait_async(
        "restarted standalone node leads again",
        DEADLINE,
        || async {
            p.status()
                .await
                .is_some_and(|s| s.groups.iter().all(|g| g.leader_id == Some(1)))
        },
    )
    .await;
    assert_eq!(
        p.log().matches("created a new cluster").count(),
        1,
        "the cluster is created on the first start only"
    );
}

/// An idle node gives back the write buffers a load left (src/idle.rs): after 1.5 MB
/// of configuration published to a standalone node, it flushes its memtables once it
/// falls quiet, and they shrink below the flush threshold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_node_flushes_its_write_buffers() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut p = standalone_leading(dir.path()).await;
    let metric = |text: &str, series: &str| crate::common::series_value(text, series);
    let flushes_before = metric(
        &http_get(&p.http, "/metrics").await,
        "nacosd_idle_flushes_total",
    )
    .unwrap();

    let mut client = ConfigServiceClient::connect(format!("http://{}", p.client))
        .await
        .unwrap();
    publish_incompressible(&mut client, "big").await;

    wait_async("the idle node flushes its memtables", DEADLINE, || async {
        let text = http_get(&p.http, "/metrics").await;
        let flushed =
            metric(&text, "nacosd_idle_flushes_total").is_some_and(|n| n > flushes_before);
        let memtables = metric(&text, "nacosd_storage_memory_bytes{part=\"memtables\"}");
        flushed && memtables.is_some_and(|m| m < nacosd::raft::node::IDLE_FLUSH_MIN)
    })
    .await;
    // Nothing was lost on the way to the tables.
    let mut req = tonic::Request::new(pb::GetConfigRequest {
        key: publish("big-0", "").key,
        consistency: pb::Consistency::Linearizable as i32,
    });
    req.set_timeout(DEADLINE);
    let item = client.get_config(req).await.unwrap().into_inner();
    assert_eq!(item.content.len(), 16 << 10);
    let st = p.terminate().unwrap();
    assert!(st.success(), "{}", p.log());
}

/// A standalone node started in `dir`, once it leads every group.
async fn standalone_leading(dir: &std::path::Path) -> Proc {
    let mut p = Proc::new(1, dir);
    p.start();
    wait_async("standalone node leads every group", DEADLINE, || async {
        p.status()
            .await
            .is_some_and(|s| s.groups.iter().all(|g| g.leader_id == Some(1)))
    })
    .await;
    p
}

/// Publishes 96 items of 16 KiB, incompressible, named `<prefix>-<i>`: each log entry
/// carries one, so the config log's memtable alone takes 1.5 MiB (below a memtable's
/// own flush size, 2 MiB, and above the idle flush's threshold, 1 MiB).
async fn publish_incompressible(
    client: &mut ConfigServiceClient<tonic::transport::Channel>,
    prefix: &str,
) {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..96 {
        let content: String = (0..16 << 10)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                char::from(b'a' + (seed >> 59) as u8 % 26)
            })
            .collect();
        let mut req = tonic::Request::new(publish(&format!("{prefix}-{i}"), &content));
        req.set_timeout(DEADLINE);
        client.publish_config(req).await.unwrap();
    }
}

/// A group that falls quiet while another keeps writing flushes its own memtables
/// (src/idle.rs): 1.5 MB of configuration published while four clients register
/// persistent instances without a pause; once the publishes stop, the config group's
/// memtables go below the flush threshold while the registrations go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_group_flushes_while_another_writes() {
    use nacosd::pb::naming_service_client::NamingServiceClient;
    use std::sync::atomic::{AtomicBool, Ordering};
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut p = standalone_leading(dir.path()).await;
    let metric = |text: &str, series: &str| crate::common::series_value(text, series);
    let config_flushes = r#"nacosd_group_idle_flushes_total{group="config"}"#;
    let config_memtables = r#"nacosd_group_memtable_bytes{group="config"}"#;

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4u32)
        .map(|w| {
            let (addr, stop) = (p.client.clone(), stop.clone());
            tokio::spawn(async move {
                let mut c = NamingServiceClient::connect(format!("http://{addr}"))
                    .await
                    .unwrap();
                let mut registered = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let mut req = tonic::Request::new(pb::RegisterInstanceRequest {
                        service: Some(pb::ServiceKey {
                            namespace: String::new(),
                            group: String::new(),
                            service_name: format!("busy-{w}"),
                        }),
                        instance: Some(pb::Instance {
                            ip: "10.0.0.1".into(),
                            port: 1 + registered % 60_000,
                            ..Default::default()
                        }),
                    });
                    req.set_timeout(DEADLINE);
                    c.register_instance(req).await.unwrap();
                    registered += 1;
                }
                registered
            })
        })
        .collect();

    let mut client = ConfigServiceClient::connect(format!("http://{}", p.client))
        .await
        .unwrap();
    // The registrations keep the node busy, so the whole node's housekeeping (which
    // would flush the config group too) should not run; should they all stall for a
    // whole window on a busy machine, it does, and the round is tried again.
    let mut group_flushed = false;
    for round in 0..3 {
        let text = http_get(&p.http, "/metrics").await;
        let group_before = metric(&text, config_flushes).unwrap();
        let node_before = metric(&text, "nacosd_idle_flushes_total").unwrap();
        publish_incompressible(&mut client, &format!("big{round}")).await;
        wait_async("the quiet config group is flushed", DEADLINE, || async {
            let text = http_get(&p.http, "/metrics").await;
            let held = metric(&text, config_memtables);
            let group = metric(&text, config_flushes).is_some_and(|n| n > group_before);
            let node = metric(&text, "nacosd_idle_flushes_total").is_some_and(|n| n > node_before);
            (group || node) && held.is_some_and(|m| m < nacosd::raft::node::IDLE_FLUSH_MIN)
        })
        .await;
        let text = http_get(&p.http, "/metrics").await;
        if metric(&text, config_flushes).is_some_and(|n| n > group_before) {
            group_flushed = true;
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        assert!(w.await.unwrap() > 0, "every writer registered instances");
    }
    assert!(
        group_flushed,
        "in three rounds the config group was never flushed on its own, only with the whole node"
    );
    let st = p.terminate().unwrap();
    assert!(st.success(), "{}", p.log());
}

/// Minimal HTTP/1.1 GET (keeps the test free of an HTTP client dependency).
async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn db_node_killed_mid_load_has_exactly_the_acknowledged_rows() {
    let _serial = SERIAL.lock().await;
    use nacosd::pb::db_service_client::DbServiceClient;
    use nacosd::pb::value::Value as V;
    let stmt = |sql: &str, params: Vec<pb::Value>| pb::Statement {
        sql: sql.into(),
        params,
        named_params: Default::default(),
    };
    let dir = tempfile::tempdir().unwrap();
    let mut procs = cluster(3, dir.path());
    wait_for_leaders(&mut procs, DEADLINE).await;
    let victim = agreed_leaders(&procs).await.unwrap()["embedded_db"];
    let via = procs
        .iter()
        .find(|p| p.id != victim)
        .unwrap()
        .client
        .clone();
    let mut c = DbServiceClient::connect(format!("http://{via}"))
        .await
        .unwrap();
    c.execute(pb::ExecuteRequest {
        statements: vec![stmt(
            "CREATE TABLE rows (id INTEGER PRIMARY KEY, body TEXT NOT NULL)",
            vec![],
        )],
    })
    .await
    .unwrap();

    let mut acked = Vec::new();
    let mut attempted = Vec::new();
    for id in 0..150i64 {
        if id == 40 {
            procs.iter_mut().find(|p| p.id == victim).unwrap().kill9();
        }
        if id == 100 {
            procs.iter_mut().find(|p| p.id == victim).unwrap().start();
        }
        attempted.push(id);
        let mut req = tonic::Request::new(pb::ExecuteRequest {
            statements: vec![stmt(
                "INSERT INTO rows (id, body) VALUES (?1, ?2)",
                vec![
                    pb::Value {
                        value: Some(V::Integer(id)),
                    },
                    pb::Value {
                        value: Some(V::Text(format!("row {id}"))),
                    },
                ],
            )],
        });
        req.set_timeout(Duration::from_secs(10));
        if c.execute(req).await.is_ok() {
            acked.push(id);
        }
    }
    assert!(
        acked.len() >= 100,
        "most inserts acknowledged ({})",
        acked.len()
    );
    wait_converged(&procs, DEADLINE).await;
    for p in &procs {
        let mut c = DbServiceClient::connect(format!("http://{}", p.client))
            .await
            .unwrap();
        let r = c
            .query(pb::QueryRequest {
                statements: vec![stmt("SELECT id FROM rows ORDER BY id", vec![])],
                consistency: pb::Consistency::Stale as i32,
            })
            .await
            .unwrap()
            .into_inner();
        let ids: Vec<i64> = r.results[0]
            .rows
            .iter()
            .map(|row| match row.values[0].value {
                Some(V::Integer(i)) => i,
                ref other => panic!("{other:?}"),
            })
            .collect();
        for a in &acked {
            assert!(
                ids.contains(a),
                "node {}: acknowledged row {a} missing\n{}",
                p.id,
                p.log()
            );
        }
        assert!(
            ids.iter().all(|i| attempted.contains(i)),
            "node {} has rows never written",
            p.id
        );
    }
}
