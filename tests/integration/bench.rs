//! The load generator (`nacosd::bench`, `nacosctl bench`): short runs against an
//! in-process 3-node cluster and a single etcd member produce well-formed reports with
//! zero errors, and the work they report is really in the database. No timing is
//! asserted: the numbers are for people, the counts for tests.

use std::process::Command;
use std::time::Duration;

use crate::common::*;
use nacosd::bench::client::{key_name, CONFIG_GROUP, DB_TABLE};
use nacosd::bench::report::{compare, table, Report};
use nacosd::bench::{self, Level, Options, Target, Workload};
use nacosd::groups::{CONFIG, EMBEDDED_DB, NAMING_PERSISTENT};
use nacosd::pb;
use nacosd::pb::config_service_client::ConfigServiceClient;
use nacosd::pb::db_service_client::DbServiceClient;

const OPS: u64 = 120;

fn options(workload: Workload, endpoints: &[String]) -> Options {
    Options {
        clients: 6,
        connections: Some(3),
        ops: Some(OPS),
        warmup_secs: 0.2,
        keys: 40,
        quiet: true,
        ..Options::new(workload, endpoints.to_vec())
    }
}

/// A report of a finished run with no failures: every measured operation succeeded,
/// percentiles are ordered, and the JSON form reads back the same.
fn assert_well_formed(r: &Report, what: &str) {
    assert!(r.errors.is_empty(), "{what}: errors {:?}", r.errors);
    assert_eq!(r.ok, OPS, "{what}: measured operations");
    assert!(r.elapsed_secs > 0.0 && r.throughput > 0.0, "{what}: {r:?}");
    let l = &r.latency_ms;
    assert!(
        0.0 < l.p50 && l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max,
        "{what}: percentiles out of order: {l:?}"
    );
    assert!(l.mean > 0.0 && l.mean <= l.max, "{what}: {l:?}");
    let json = serde_json::to_string(r).unwrap();
    let back: Report = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, r, "{what}: JSON round trip");
    let text = table(std::slice::from_ref(r));
    assert_eq!(text.lines().count(), 2, "{what}: {text}");
    assert!(text.contains(&r.workload), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_workload_runs_against_a_three_node_cluster() {
    let cluster = TestCluster::start(3, |r| r, |_| {}).await;
    for group in [CONFIG, NAMING_PERSISTENT, EMBEDDED_DB] {
        cluster.wait_for_leader(group).await;
    }
    let endpoints: Vec<String> = cluster
        .running()
        .iter()
        .map(|id| cluster.server(*id).client_addr.to_string())
        .collect();

    let runs: Vec<(Workload, Level)> = vec![
        (Workload::ConfigPublish, Level::Linearizable),
        (Workload::ConfigGet, Level::Linearizable),
        (Workload::ConfigGet, Level::Lease),
        (Workload::ConfigGet, Level::Stale),
        (Workload::NamingRegister, Level::Linearizable),
        (Workload::DbInsert, Level::Linearizable),
        (Workload::NamingRegisterEphemeral, Level::Linearizable),
        (Workload::Mixed, Level::Linearizable),
    ];
    let mut reports = Vec::new();
    for (workload, level) in runs {
        let what = format!("{workload:?} at {level:?}");
        let r = bench::run(
            Options {
                level,
                ..options(workload, &endpoints)
            },
            false,
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_well_formed(&r, &what);
        assert_eq!(r.target, "nacosd");
        assert_eq!(r.connections, 3);
        reports.push(r);
    }
    eprintln!("{}", table(&reports));
    // The ephemeral run opened a session per client, spread over the nodes, and every
    // node ends up with the same ephemeral instances.
    let clients = options(Workload::NamingRegisterEphemeral, &endpoints).clients;
    let owned: Vec<usize> = cluster
        .running()
        .iter()
        .map(|id| cluster.server(*id).distro.counts().0)
        .collect();
    assert!(owned.iter().all(|n| *n > 0), "sessions per node: {owned:?}");
    assert_eq!(
        owned.iter().sum::<usize>(),
        clients,
        "sessions per node: {owned:?}"
    );
    wait_until("every node holds the same ephemeral instances", || {
        let counts: Vec<usize> = cluster
            .running()
            .iter()
            .map(|id| cluster.server(*id).distro.counts().2)
            .collect();
        counts[0] > 0 && counts.windows(2).all(|w| w[0] == w[1])
    })
    .await;
    assert_eq!(reports[1].level.as_deref(), Some("linearizable"));
    assert_eq!(reports[2].level.as_deref(), Some("lease"));
    assert_eq!(reports[0].level, None, "a write workload has no read level");

    // The work is in the database: every key was preloaded for the reads, and every
    // measured insert (plus the warm-up's) is one row.
    let mut config = ConfigServiceClient::connect(format!("http://{}", endpoints[1]))
        .await
        .unwrap();
    for k in 0..40 {
        let item = config
            .get_config(pb::GetConfigRequest {
                key: Some(pb::ConfigKey {
                    namespace: String::new(),
                    group: CONFIG_GROUP.into(),
                    data_id: key_name(k),
                }),
                consistency: pb::Consistency::Linearizable as i32,
            })
            .await
            .unwrap_or_else(|s| panic!("key {k}: {s}"))
            .into_inner();
        assert_eq!(item.content.len(), 256, "key {k}");
    }
    let mut db = DbServiceClient::connect(format!("http://{}", endpoints[2]))
        .await
        .unwrap();
    let rows = db
        .query(pb::QueryRequest {
            statements: vec![pb::Statement {
                sql: format!("SELECT count(*), min(length(v)) FROM {DB_TABLE}"),
                ..Default::default()
            }],
            consistency: pb::Consistency::Linearizable as i32,
        })
        .await
        .unwrap()
        .into_inner();
    let values = &rows.results[0].rows[0].values;
    let int = |v: &pb::Value| match v.value {
        Some(pb::value::Value::Integer(i)) => i,
        ref other => panic!("not an integer: {other:?}"),
    };
    assert!(int(&values[0]) >= OPS as i64, "{values:?}");
    assert_eq!(int(&values[1]), 256);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nacosctl_bench_prints_json_and_compares_reports() {
    let cluster = TestCluster::start(1, |r| r, |_| {}).await;
    cluster.wait_for_leader(CONFIG).await;
    let addr = cluster.server(1).client_addr.to_string();
    let exe = env!("CARGO_BIN_EXE_nacosctl");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(exe)
            .args(["--endpoint", &addr, "bench", "--workload", "config-publish"])
            .args(["--ops", "50", "--clients", "3", "--warmup-secs", "0"])
            .args(["--json", "--quiet"])
            .output()
            .expect("run nacosctl")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Report = serde_json::from_str(stdout.trim()).expect("one JSON report");
    assert_eq!(report.ok, 50);
    assert!(report.errors.is_empty(), "{:?}", report.errors);

    // bench-compare reads a file of reports; a bad line is named.
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("runs.jsonl");
    std::fs::write(&good, &stdout).unwrap();
    let out = Command::new(exe)
        .arg("bench-compare")
        .arg(&good)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("config-publish"),
        "{text}"
    );
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, format!("{stdout}\nnot json\n")).unwrap();
    let out = Command::new(exe)
        .arg("bench-compare")
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("line 3"), "{err}");

    // Options that make no sense are refused before anything runs.
    let out = Command::new(exe)
        .args([
            "--endpoint",
            "127.0.0.1:1",
            "bench",
            "--workload",
            "db-insert",
        ])
        .args(["--target", "etcd"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("etcd runs only"),
        "{err}"
    );
    cluster.shutdown().await;
}

/// etcd, when it is installed (`scripts/test.sh` installs Debian's etcd-server and
/// sets NACOSD_REQUIRE_ETCD=1, so CI always runs this).
fn etcd_binary() -> Option<String> {
    let found = Command::new("etcd")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some("etcd".into());
    }
    assert!(
        std::env::var("NACOSD_REQUIRE_ETCD").is_err(),
        "NACOSD_REQUIRE_ETCD is set but etcd is not installed"
    );
    eprintln!("etcd is not installed: skipping the etcd side of the benchmark test");
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_workloads_run_against_etcd() {
    let Some(etcd) = etcd_binary() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (
        crate::common::process::free_port(),
        crate::common::process::free_port(),
    );
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut child = Command::new(etcd)
        .args(["--name", "bench", "--data-dir"])
        .arg(dir.path().join("etcd"))
        .args(["--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("bench={peer_url}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("etcd.log")).unwrap())
        .spawn()
        .expect("start etcd");
    let endpoints = vec![format!("127.0.0.1:{client}")];

    let mut reports = Vec::new();
    let runs = [
        (Workload::ConfigPublish, Level::Linearizable),
        (Workload::ConfigGet, Level::Linearizable),
        (Workload::ConfigGet, Level::Stale),
        (Workload::Mixed, Level::Linearizable),
    ];
    for (i, (workload, level)) in runs.into_iter().enumerate() {
        let opts = Options {
            target: Target::Etcd,
            level,
            connections: Some(1),
            ..options(workload, &endpoints)
        };
        // The first run waits for etcd to come up: retry until the deadline.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let r = loop {
            match bench::run(opts.clone(), false).await {
                Ok(r) if i > 0 || r.errors.is_empty() => break r,
                result if tokio::time::Instant::now() > deadline => {
                    let log = std::fs::read_to_string(dir.path().join("etcd.log"));
                    panic!("etcd never answered: {result:?}\n{log:?}");
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        assert_well_formed(&r, &format!("etcd {workload:?} {level:?}"));
        assert_eq!(r.target, "etcd");
        reports.push(r);
    }
    let _ = child.kill();
    let _ = child.wait();

    // Beside a nacosd run of the same workload, compare pairs them up with a ratio.
    let mut nacosd_run = reports[0].clone();
    nacosd_run.target = "nacosd".into();
    nacosd_run.throughput = reports[0].throughput * 2.0;
    reports.push(nacosd_run);
    let text = compare(&reports);
    let publish = text
        .lines()
        .find(|l| l.starts_with("config-publish"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(publish.contains("2.00x"), "{publish}");
}

/// `bench/ab.sh` (two server variants on fresh clusters, in rounds) runs end to end on
/// the debug binaries and reports both variants with no errors, and the summary.
#[test]
fn the_ab_script_reports_both_variants() {
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_nacosd"))
        .parent()
        .expect("binary directory")
        .to_path_buf();
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/bench/ab.sh"))
        .args(["", "--state-cache-mib 0"])
        .env("ROUNDS", "1")
        .env("DURATION", "1")
        .env("WARMUP", "0")
        .env("CLIENTS", "4")
        .env("KEYS", "100")
        .env("BIN_A", &bin_dir)
        .env("BIN_B", &bin_dir)
        .output()
        .expect("run bench/ab.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for variant in ["A ", "B "] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(variant))
            .unwrap_or_else(|| panic!("no line for variant {variant:?}: {stdout}"));
        assert!(
            line.contains("ops/s") && line.contains("errors 0") && line.contains("cpu/op"),
            "{line}"
        );
    }
    // The summary pairs the variants round by round.
    assert!(
        stdout.contains("summary over 1 rounds")
            && stdout
                .lines()
                .any(|l| l.starts_with("B/A throughput per round: ") && l.contains("of 1")),
        "{stdout}"
    );
}
