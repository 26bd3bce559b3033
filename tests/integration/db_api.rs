//! The embedded SQLite database through its gRPC API on in-process 3-node clusters.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::*;
use nacosd::groups::EMBEDDED_DB;
use nacosd::pb;
use nacosd::pb::db_service_client::DbServiceClient;
use nacosd::pb::value::Value as V;
use tonic::transport::Channel;
use tonic::Code;

async fn client(cluster: &TestCluster, id: u64) -> DbServiceClient<Channel> {
    DbServiceClient::connect(format!("http://{}", cluster.server(id).client_addr))
        .await
        .expect("connect")
}

fn int(i: i64) -> pb::Value {
    pb::Value {
        value: Some(V::Integer(i)),
    }
}

fn text(s: &str) -> pb::Value {
    pb::Value {
        value: Some(V::Text(s.into())),
    }
}

fn stmt(sql: &str, params: Vec<pb::Value>) -> pb::Statement {
    pb::Statement {
        sql: sql.into(),
        params,
        named_params: HashMap::new(),
    }
}

async fn exec(
    c: &mut DbServiceClient<Channel>,
    stmts: Vec<pb::Statement>,
) -> Result<pb::ExecuteResponse, tonic::Status> {
    c.execute(pb::ExecuteRequest { statements: stmts })
        .await
        .map(|r| r.into_inner())
}

async fn query(
    c: &mut DbServiceClient<Channel>,
    sql: &str,
    consistency: pb::Consistency,
) -> Result<pb::QueryResult, tonic::Status> {
    let r = c
        .query(pb::QueryRequest {
            statements: vec![stmt(sql, vec![])],
            consistency: consistency as i32,
        })
        .await?
        .into_inner();
    Ok(r.results.into_iter().next().unwrap())
}

/// A table of integer keys and text values, as the snapshot tests use it.
const CREATE_KV: &str = "CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT)";

/// `n` nodes that snapshot every 20 entries and keep 5 behind, so a few dozen writes
/// purge the log.
async fn snapshotting_cluster(n: u64) -> TestCluster {
    TestCluster::start(
        n,
        |r| r,
        |c| {
            c.snapshot_logs = 20;
            c.snapshot_keep_logs = 5;
        },
    )
    .await
}

fn as_int(v: &pb::Value) -> i64 {
    match v.value {
        Some(V::Integer(i)) => i,
        ref other => panic!("not an integer: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_insert_update_query_through_followers_and_leader() {
    let cluster = TestCluster::start(3, |r| r, |_| {}).await;
    let leader = cluster.wait_for_leader(EMBEDDED_DB).await;
    let mut clients = Vec::new();
    for id in cluster.running() {
        clients.push((id, client(&cluster, id).await));
    }
    let follower = clients.iter().position(|(id, _)| *id != leader).unwrap();
    let (_, c) = &mut clients[follower];
    exec(c, vec![stmt("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, score REAL, avatar BLOB)", vec![])])
        .await
        .unwrap();
    for i in 0..clients.len() {
        let (_, c) = &mut clients[i];
        let mut named = stmt(
            "INSERT INTO users (name, score, avatar) VALUES (:name, :score, :avatar)",
            vec![],
        );
        named.named_params = HashMap::from([
            (":name".to_string(), text(&format!("user{i}"))),
            (
                ":score".to_string(),
                pb::Value {
                    value: Some(V::Real(1.5 * i as f64)),
                },
            ),
            (
                ":avatar".to_string(),
                pb::Value {
                    value: Some(V::Blob(vec![i as u8, 0xff])),
                },
            ),
        ]);
        let r = exec(
            c,
            vec![
                named,
                stmt(
                    "UPDATE users SET score = score + ?1 WHERE name = ?2",
                    vec![int(10), text(&format!("user{i}"))],
                ),
            ],
        )
        .await
        .unwrap();
        assert_eq!(r.results.len(), 2);
        assert_eq!(r.results[0].last_insert_id, i as i64 + 1);
        assert_eq!(r.results[1].rows_affected, 1);
        assert!(r.index > 0);
        // Read-your-writes on every node.
        for (id, reader) in &mut clients {
            let q = query(
                reader,
                "SELECT count(*) AS n FROM users",
                pb::Consistency::Linearizable,
            )
            .await
            .unwrap();
            assert_eq!(as_int(&q.rows[0].values[0]), i as i64 + 1, "node {id}");
        }
    }
    let (_, c) = &mut clients[0];
    let q = query(
        c,
        "SELECT id, name, score, avatar, NULL AS empty FROM users ORDER BY id",
        pb::Consistency::Lease,
    )
    .await
    .unwrap();
    assert_eq!(q.columns, vec!["id", "name", "score", "avatar", "empty"]);
    assert_eq!(q.types, vec!["INTEGER", "TEXT", "REAL", "BLOB", ""]);
    assert_eq!(q.rows.len(), 3);
    assert_eq!(q.rows[2].values[1].value, Some(V::Text("user2".into())));
    assert_eq!(q.rows[2].values[2].value, Some(V::Real(13.0)));
    assert_eq!(q.rows[2].values[3].value, Some(V::Blob(vec![2, 0xff])));
    assert_eq!(q.rows[2].values[4].value, Some(V::Null(true)));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_statement_rolls_back_its_whole_batch_everywhere() {
    let cluster = TestCluster::start(3, |r| r, |_| {}).await;
    cluster.wait_for_leader(EMBEDDED_DB).await;
    let mut c = client(&cluster, 1).await;
    exec(
        &mut c,
        vec![
            stmt(
                "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)",
                vec![],
            ),
            stmt("INSERT INTO t (v) VALUES ('a')", vec![]),
        ],
    )
    .await
    .unwrap();
    let err = exec(
        &mut c,
        vec![
            stmt("INSERT INTO t (v) VALUES ('b')", vec![]),
            stmt("UPDATE t SET v = 'c' WHERE v = 'a'", vec![]),
            stmt("INSERT INTO t (v) VALUES ('b')", vec![]),
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("statement 2") && err.message().contains("UNIQUE"),
        "{}",
        err.message()
    );
    let err = exec(
        &mut c,
        vec![
            stmt("INSERT INTO t (v) VALUES ('d')", vec![]),
            stmt("INSERT INTO missing VALUES (1)", vec![]),
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("statement 1") && err.message().contains("no such table"),
        "{}",
        err.message()
    );
    // A later write succeeds; no node has a trace of the failed batches.
    exec(&mut c, vec![stmt("INSERT INTO t (v) VALUES ('e')", vec![])])
        .await
        .unwrap();
    for id in cluster.running() {
        let mut r = client(&cluster, id).await;
        let q = query(
            &mut r,
            "SELECT v FROM t ORDER BY id",
            pb::Consistency::Linearizable,
        )
        .await
        .unwrap();
        let vals: Vec<_> = q.rows.iter().map(|r| r.values[0].value.clone()).collect();
        assert_eq!(
            vals,
            vec![Some(V::Text("a".into())), Some(V::Text("e".into()))],
            "node {id}"
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_statements_are_refused_before_proposing() {
    let cluster = TestCluster::start(1, |r| r, |_| {}).await;
    cluster.wait_for_leader(EMBEDDED_DB).await;
    let mut c = client(&cluster, 1).await;
    let created = exec(
        &mut c,
        vec![stmt("CREATE TABLE t (id INTEGER PRIMARY KEY, v)", vec![])],
    )
    .await
    .unwrap();
    cluster.wait_applied(EMBEDDED_DB, created.index).await;
    let applied = cluster.applied(1, EMBEDDED_DB);
    let refused: Vec<(&str, pb::Statement)> = vec![
        (
            "connection's history",
            stmt("INSERT INTO t (v) VALUES (last_insert_rowid())", vec![]),
        ),
        ("connection's history", stmt("SELECT changes()", vec![])),
        ("managed by the server", stmt("BEGIN", vec![])),
        ("PRAGMA", stmt("PRAGMA journal_mode=DELETE", vec![])),
        (
            "internal to nacosd",
            stmt("DELETE FROM _nacosd_meta", vec![]),
        ),
        ("ATTACH", stmt("ATTACH DATABASE '/tmp/x.db' AS x", vec![])),
        (
            "must start with",
            pb::Statement {
                sql: "INSERT INTO t (v) VALUES (:v)".into(),
                params: vec![],
                named_params: HashMap::from([("v".to_string(), int(1))]),
            },
        ),
        ("sql must not be empty", stmt("  ", vec![])),
    ];
    for (want, s) in refused {
        let err = exec(&mut c, vec![s]).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{want}: {err:?}");
        assert!(
            err.message().contains(want),
            "{:?} should mention {want:?}",
            err.message()
        );
    }
    assert_eq!(
        cluster.applied(1, EMBEDDED_DB),
        applied,
        "refused before proposing: nothing reached the log"
    );
    // Deterministic date arithmetic is fine.
    exec(
        &mut c,
        vec![stmt(
            "INSERT INTO t (v) VALUES (date('2024-01-31', '+1 day'))",
            vec![],
        )],
    )
    .await
    .unwrap();
    // Query refuses writes (SQLite's read-only test) and limits.
    let err = query(&mut c, "DELETE FROM t", pb::Consistency::Linearizable)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("would modify"), "{}", err.message());
    let err = c
        .execute(pb::ExecuteRequest {
            statements: (0..101).map(|_| stmt("SELECT 1", vec![])).collect(),
        })
        .await
        .unwrap_err();
    assert!(
        err.message().contains("the limit is 100"),
        "{}",
        err.message()
    );
    let q = query(&mut c, "SELECT v FROM t", pb::Consistency::Stale)
        .await
        .unwrap();
    assert_eq!(q.rows.len(), 1);
    assert_eq!(
        q.rows[0].values[0].value,
        Some(V::Text("2024-02-01".into()))
    );
    cluster.shutdown().await;
}

/// Issue #11.11: randomness and the clock, reached in every way SQL allows, give
/// every replica the same rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_and_time_functions_give_every_replica_the_same_rows() {
    let cluster = TestCluster::start(3, |r| r, |_| {}).await;
    let leader = cluster.wait_for_leader(EMBEDDED_DB).await;
    let mut c = client(&cluster, leader).await;
    let batches = [
        vec![
            stmt(
                "CREATE TABLE d (id INTEGER PRIMARY KEY, x, r DEFAULT (random()), \
                 t DEFAULT CURRENT_TIMESTAMP, c)",
                vec![],
            ),
            stmt("CREATE TABLE log (id INTEGER PRIMARY KEY, b)", vec![]),
            stmt(
                "CREATE TRIGGER d_log AFTER INSERT ON d BEGIN \
                 INSERT INTO log (b) VALUES (hex(randomblob(16))); END",
                vec![],
            ),
            stmt(
                "CREATE VIEW v AS SELECT id, datetime('now', 'localtime') AS lt FROM d",
                vec![],
            ),
        ],
        vec![stmt("INSERT INTO d (x) VALUES (1)", vec![])],
        vec![stmt(
            "INSERT INTO d (x, c) VALUES (datetime('no'||'w'), 'now')",
            vec![],
        )],
        vec![stmt(
            "INSERT INTO d (x, c) VALUES (strftime('%s', ?1), datetime('now', 'localtime'))",
            vec![text("now")],
        )],
        vec![stmt(
            "INSERT INTO d (x, c) SELECT random(), lt FROM v WHERE id = 1",
            vec![],
        )],
        vec![stmt("UPDATE d SET c = datetime(c) WHERE c = 'now'", vec![])],
    ];
    let mut index = 0;
    for batch in batches {
        index = exec(&mut c, batch).await.unwrap().index;
    }
    let sql = "SELECT d.id, x, r, t, c, b FROM d JOIN log ON log.id = d.id ORDER BY d.id";
    let mut seen = Vec::new();
    cluster.wait_applied(EMBEDDED_DB, index).await;
    for id in cluster.running() {
        let mut r = client(&cluster, id).await;
        let q = query(&mut r, sql, pb::Consistency::Stale).await.unwrap();
        assert_eq!(q.rows.len(), 4, "node {id}");
        seen.push(format!("{:?}", q.rows));
    }
    assert!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "replicas differ: {seen:#?}"
    );
    // The values are real ones: a random integer, a timestamp of this century.
    let mut r = client(&cluster, leader).await;
    let q = query(
        &mut r,
        "SELECT count(DISTINCT r), min(t) >= '2024' FROM d",
        pb::Consistency::Linearizable,
    )
    .await
    .unwrap();
    assert_eq!(q.rows[0].values[0].value, Some(V::Integer(4)), "{q:?}");
    assert_eq!(q.rows[0].values[1].value, Some(V::Integer(1)), "{q:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_limits_come_from_the_configuration() {
    let cluster = TestCluster::start(
        1,
        |r| r,
        |c| {
            c.db_limits.max_statements = 3;
            c.db_limits.max_sql_bytes = 100;
            c.db_limits.max_rows = 5;
        },
    )
    .await;
    cluster.wait_for_leader(EMBEDDED_DB).await;
    let mut c = client(&cluster, 1).await;
    let created = exec(
        &mut c,
        vec![
            stmt("CREATE TABLE t (id INTEGER PRIMARY KEY)", vec![]),
            stmt("INSERT INTO t (id) VALUES (1), (2), (3), (4), (5)", vec![]),
        ],
    )
    .await
    .unwrap();
    cluster.wait_applied(EMBEDDED_DB, created.index).await;
    let applied = cluster.applied(1, EMBEDDED_DB);

    let four: Vec<_> = (6..10)
        .map(|i| stmt("INSERT INTO t (id) VALUES (?1)", vec![int(i)]))
        .collect();
    let err = exec(&mut c, four).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("4 statements")
            && err.message().contains("the limit is 3 (db-max-statements)"),
        "{}",
        err.message()
    );

    let long = format!("INSERT INTO t (id) VALUES (6) -- {}", "x".repeat(80));
    let err = exec(&mut c, vec![stmt(&long, vec![])]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("statement 0")
            && err
                .message()
                .contains("the limit is 100 (db-max-sql-bytes)"),
        "{}",
        err.message()
    );
    let err = c
        .query(pb::QueryRequest {
            statements: vec![stmt(&long.replace("INSERT", "SELECT"), vec![])],
            consistency: pb::Consistency::Linearizable as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(
        cluster.applied(1, EMBEDDED_DB),
        applied,
        "refused before proposing: nothing reached the log"
    );

    // Five rows is the limit, a sixth is refused whole.
    let q = query(&mut c, "SELECT id FROM t", pb::Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(q.rows.len(), 5);
    exec(&mut c, vec![stmt("INSERT INTO t (id) VALUES (6)", vec![])])
        .await
        .unwrap();
    let err = query(&mut c, "SELECT id FROM t", pb::Consistency::Linearizable)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message().contains("more than 5 rows (db-max-rows)"),
        "{}",
        err.message()
    );
    let q = query(
        &mut c,
        "SELECT id FROM t ORDER BY id DESC LIMIT 5",
        pb::Consistency::Linearizable,
    )
    .await
    .unwrap();
    assert_eq!(as_int(&q.rows[0].values[0]), 6);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_restored_from_a_snapshot_answers_like_the_leader() {
    let mut cluster = snapshotting_cluster(3).await;
    let leader = cluster.wait_for_leader(EMBEDDED_DB).await;
    let lagging = cluster.other_than(leader);
    let mut c = client(&cluster, leader).await;
    exec(&mut c, vec![stmt(CREATE_KV, vec![])]).await.unwrap();
    cluster.stop(lagging).await;
    for i in 0..60 {
        exec(
            &mut c,
            vec![stmt(
                "INSERT OR REPLACE INTO kv VALUES (?1, ?2)",
                vec![int(i % 25), text(&format!("v{i}"))],
            )],
        )
        .await
        .unwrap();
    }
    cluster
        .restart_behind_purge(EMBEDDED_DB, leader, lagging, 10)
        .await;
    let mut restored = client(&cluster, lagging).await;
    let sql = "SELECT k, v FROM kv ORDER BY k";
    let a = query(&mut restored, sql, pb::Consistency::Stale)
        .await
        .unwrap();
    assert_eq!(a, query(&mut c, sql, pb::Consistency::Stale).await.unwrap());
    assert_eq!(a.rows.len(), 25);
    // The restored node keeps applying new writes.
    exec(
        &mut c,
        vec![stmt("INSERT INTO kv VALUES (100, 'after')", vec![])],
    )
    .await
    .unwrap();
    let q = query(
        &mut restored,
        "SELECT v FROM kv WHERE k = 100",
        pb::Consistency::Linearizable,
    )
    .await
    .unwrap();
    assert_eq!(q.rows[0].values[0].value, Some(V::Text("after".into())));
    cluster.shutdown().await;
}

/// The SQLite file commits with `synchronous=NORMAL` (WAL): a power cut can take the
/// commits made since its last checkpoint, leaving an older but whole database. A node
/// whose database fell back that far, behind its snapshot and the log's purge point,
/// restores the snapshot and re-applies the log when it starts, and answers every
/// acknowledged write. (Here the fall-back is a copy of the file taken earlier: what
/// the cut leaves is one of the database's earlier committed states.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_lost_its_recent_commits_catches_up_when_it_starts() {
    let mut cluster = snapshotting_cluster(1).await;
    cluster.wait_for_leader(EMBEDDED_DB).await;
    let mut c = client(&cluster, 1).await;
    let insert = |i: i64| {
        vec![stmt(
            "INSERT INTO kv VALUES (?1, ?2)",
            vec![int(i), text(&format!("v{i}"))],
        )]
    };
    exec(&mut c, vec![stmt(CREATE_KV, vec![])]).await.unwrap();
    for i in 0..5 {
        exec(&mut c, insert(i)).await.unwrap();
    }
    let early_index = cluster.applied(1, EMBEDDED_DB).expect("applied");
    cluster.stop(1).await;
    let dir = cluster.nodes[&1]
        .config
        .data_dir
        .join("groups")
        .join(EMBEDDED_DB);
    let files = ["db.sqlite", "db.sqlite-wal"];
    let early: Vec<Option<Vec<u8>>> = files
        .iter()
        .map(|f| std::fs::read(dir.join(f)).ok())
        .collect();
    assert!(
        early[0].is_some(),
        "the database file is where the test looks"
    );
    // Write the early files (those that existed) into `to`.
    let put_early = |to: &std::path::Path| {
        for (f, bytes) in files.iter().zip(&early) {
            if let Some(bytes) = bytes {
                std::fs::write(to.join(f), bytes).unwrap();
            }
        }
    };
    {
        // The early state really lacks the later writes: 5 rows.
        let copy = tempfile::tempdir().unwrap();
        put_early(copy.path());
        let conn = rusqlite::Connection::open(copy.path().join(files[0])).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM kv", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 5);
    }

    cluster.restart(1).await;
    cluster.wait_for_leader(EMBEDDED_DB).await;
    let mut c = client(&cluster, 1).await;
    for i in 5..65 {
        exec(&mut c, insert(i)).await.unwrap();
    }
    wait_until("the log is purged past the early state", || {
        cluster
            .metrics(1, EMBEDDED_DB)
            .purged
            .is_some_and(|p| p.index > early_index)
    })
    .await;
    let last = cluster.applied(1, EMBEDDED_DB).expect("applied");
    cluster.stop(1).await;

    // The cut: the database is back at its early state.
    for ext in ["db.sqlite-wal", "db.sqlite-shm"] {
        let _ = std::fs::remove_file(dir.join(ext));
    }
    put_early(&dir);

    cluster.restart(1).await;
    cluster.wait_for_leader(EMBEDDED_DB).await;
    cluster.wait_applied(EMBEDDED_DB, last).await;
    let mut c = client(&cluster, 1).await;
    let rows = query(
        &mut c,
        "SELECT count(*), sum(k) FROM kv",
        pb::Consistency::Linearizable,
    )
    .await
    .unwrap();
    let values: Vec<i64> = rows.rows[0].values.iter().map(as_int).collect();
    assert_eq!(
        values,
        vec![65, (0..65).sum::<i64>()],
        "every acknowledged insert is back"
    );
    cluster.shutdown().await;
}

/// Issue #17.1: a long query runs on the blocking pool, not on the runtime workers
/// that carry every group's heartbeats: while it runs, no group on any node sees an
/// election and the leaders keep their quorum contact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_query_does_not_delay_heartbeats() {
    let cluster = TestCluster::start(3, |r| r, |_| {}).await;
    let leader = cluster.wait_for_leader(EMBEDDED_DB).await;
    for g in ["config", "naming_persistent"] {
        cluster.wait_for_leader(g).await;
    }
    // Every node must know every group's leader and term before the snapshot below: a
    // node still learning of the first election would look like an election later.
    wait_until("every node agrees on every group's leader and term", || {
        cluster.node(leader).groups().all(|g| {
            let views: Vec<_> = cluster
                .running()
                .into_iter()
                .map(|id| {
                    let m = cluster.metrics(id, &g.name);
                    (m.current_term, m.current_leader)
                })
                .collect();
            views[0].1.is_some() && views.iter().all(|v| *v == views[0])
        })
    })
    .await;
    let terms = |c: &TestCluster| -> Vec<(u64, String, u64)> {
        let mut out = Vec::new();
        for id in c.running() {
            for g in c.node(id).groups() {
                out.push((id, g.name.to_string(), c.metrics(id, &g.name).current_term));
            }
        }
        out
    };
    let before = terms(&cluster);
    let mut c = client(&cluster, leader).await;
    let started = std::time::Instant::now();
    let q = query(
        &mut c,
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 20000000) \
         SELECT count(*) FROM n",
        pb::Consistency::Stale,
    )
    .await
    .unwrap();
    let took = started.elapsed();
    assert_eq!(q.rows[0].values[0].value, Some(V::Integer(20_000_000)));
    // Long enough to matter: more than the longest election timeout of the tests.
    assert!(
        took > Duration::from_millis(1600),
        "the query took only {took:?}"
    );
    assert_eq!(
        terms(&cluster),
        before,
        "an election happened during the query"
    );
    for g in cluster.node(leader).groups() {
        if g.raft.is_leader() {
            assert!(g.has_quorum_contact(), "group {} lost its lease", g.name);
        }
    }
    cluster.shutdown().await;
}
