//! The Nacos 2.x front end (`src/nacos/`) against the real nacos-sdk-python from PyPI
//! (pinned in `scripts/nacos-sdk-venv.sh`, installed into `target/nacos-sdk-venv` by
//! `scripts/setup.sh` with `NACOSD_SETUP_NACOS_SDK=1`, or by the first test that needs it), on in-process 3-node clusters. The SDK runs in a Python
//! process (`nacos_sdk_driver.py`) that takes one JSON command per line; each SDK client
//! is pointed at one node with `server_addresses = "127.0.0.1:<client port - 1000>"`,
//! since the SDK adds Nacos's gRPC offset of 1000 itself. Cross-checks go through
//! `nacosd.v1`. Every wait is on a condition with a deadline.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tonic::transport::Channel;
use tonic::Code;

use crate::common::*;
use nacosd::config::Config;
use nacosd::nacos::wire::client::{open_bi_stream, RequestClient};
use nacosd::nacos::wire::{parse_reply, request_payload, Payload};
use nacosd::pb;
use nacosd::pb::config_service_client::ConfigServiceClient;
use nacosd::pb::naming_service_client::NamingServiceClient;

fn fast(c: &mut Config) {
    c.distro.sync_delay = Duration::from_millis(100);
    c.distro.sync_retry = Duration::from_millis(100);
    c.distro.verify_interval = Duration::from_millis(500);
    c.distro.load_retry = Duration::from_millis(200);
}

/// The venv's python, installed once per test process.
fn sdk_python() -> PathBuf {
    static PY: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    let py = PY.get_or_init(|| {
        let root = env!("CARGO_MANIFEST_DIR");
        // target/nacos-sdk-venv: where scripts/setup.sh (NACOSD_SETUP_NACOS_SDK=1) puts it.
        let target = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("the target directory");
        let dir = target.join("nacos-sdk-venv");
        let out = std::process::Command::new("bash")
            .arg(format!("{root}/scripts/nacos-sdk-venv.sh"))
            .arg(&dir)
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("running scripts/nacos-sdk-venv.sh: {e}"))?;
        if !out.status.success() {
            return Err("scripts/nacos-sdk-venv.sh failed (python3 with venv and PyPI access are needed; scripts/setup.sh with NACOSD_SETUP_NACOS_SDK=1 installs them)".into());
        }
        Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    });
    py.clone().unwrap_or_else(|e| panic!("{e}"))
}

/// One Python process running the SDK.
struct Sdk {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    _logs: tempfile::TempDir,
}

impl Sdk {
    async fn start() -> Sdk {
        let py = tokio::task::spawn_blocking(sdk_python).await.unwrap();
        let logs = tempfile::tempdir().unwrap();
        let mut child = Command::new(py)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/integration/nacos_sdk_driver.py"
            ))
            .env("NACOS_SDK_LOG_DIR", logs.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start the SDK driver");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        Sdk {
            child,
            stdin,
            stdout,
            _logs: logs,
        }
    }

    /// Run one command; the SDK's answer, `ok` or not.
    async fn try_call(&mut self, cmd: Value) -> Value {
        let line = format!("{cmd}\n");
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(60), self.stdout.next_line())
            .await
            .unwrap_or_else(|_| panic!("the SDK did not answer {cmd} within 60 s"))
            .unwrap()
            .unwrap_or_else(|| panic!("the SDK driver exited on {cmd}"));
        serde_json::from_str(&answer).unwrap()
    }

    async fn call(&mut self, cmd: Value) -> Value {
        let a = self.try_call(cmd.clone()).await;
        assert_eq!(a["ok"], true, "{cmd} failed: {a}");
        a
    }

    /// Connect SDK client `name` (naming and config) to node `id`.
    async fn connect(&mut self, name: &str, cluster: &TestCluster, id: u64) {
        let port = cluster.server(id).client_addr.port() - 1000;
        self.call(json!({"op": "connect", "client": name, "addr": format!("127.0.0.1:{port}")}))
            .await;
    }

    /// Repeat `cmd` until `cond` holds for its answer.
    async fn wait(&mut self, what: &str, cmd: Value, cond: impl Fn(&Value) -> bool) -> Value {
        let end = tokio::time::Instant::now() + DEADLINE;
        loop {
            let a = self.try_call(cmd.clone()).await;
            if a["ok"] == true && cond(&a) {
                return a;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "timed out waiting for: {what} (last answer {a})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

async fn naming(cluster: &TestCluster, id: u64) -> NamingServiceClient<Channel> {
    NamingServiceClient::connect(format!("http://{}", cluster.server(id).client_addr))
        .await
        .unwrap()
}

async fn configs(cluster: &TestCluster, id: u64) -> ConfigServiceClient<Channel> {
    ConfigServiceClient::connect(format!("http://{}", cluster.server(id).client_addr))
        .await
        .unwrap()
}

fn svc(name: &str) -> Option<pb::ServiceKey> {
    Some(pb::ServiceKey {
        namespace: String::new(),
        group: String::new(),
        service_name: name.into(),
    })
}

/// `ip:port` of `service`'s instances (ephemeral flag) as node `id` answers through
/// `nacosd.v1`, at STALE (this node's view).
async fn v1_instances(cluster: &TestCluster, id: u64, service: &str) -> Vec<(String, bool)> {
    let mut c = naming(cluster, id).await;
    let mut out: Vec<(String, bool)> = match c
        .get_service(pb::GetServiceRequest {
            key: svc(service),
            consistency: pb::Consistency::Stale as i32,
            ..Default::default()
        })
        .await
    {
        Ok(d) => d
            .into_inner()
            .instances
            .into_iter()
            .map(|i| (format!("{}:{}", i.ip, i.port), i.ephemeral))
            .collect(),
        Err(s) if s.code() == Code::NotFound => vec![],
        Err(s) => panic!("get_service on node {id}: {s}"),
    };
    out.sort();
    out
}

async fn wait_v1(cluster: &TestCluster, service: &str, want: &[(&str, bool)]) {
    let want: Vec<(String, bool)> = want.iter().map(|(a, e)| (a.to_string(), *e)).collect();
    for id in cluster.running() {
        let end = tokio::time::Instant::now() + DEADLINE;
        loop {
            let got = v1_instances(cluster, id, service).await;
            if got == want {
                break;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "node {id}: {service} has {got:?}, want {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn ready_cluster() -> TestCluster {
    let cluster = TestCluster::start(3, |r| r, fast).await;
    cluster
        .wait_for_leader(nacosd::groups::NAMING_PERSISTENT)
        .await;
    cluster.wait_for_leader(nacosd::groups::CONFIG).await;
    cluster.wait_distro_ready().await;
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_sdk_registers_lists_subscribes_and_deregisters_through_every_node() {
    let cluster = ready_cluster().await;
    let mut sdk = Sdk::start().await;
    for id in [1, 2, 3] {
        sdk.connect(&format!("c{id}"), &cluster, id).await;
    }
    sdk.call(json!({"op": "subscribe", "client": "c1", "service": "orders"}))
        .await;
    // One ephemeral instance through each node.
    for id in [1u64, 2, 3] {
        let a = sdk
            .call(
                json!({"op": "register", "client": format!("c{id}"), "service": "orders",
                         "ip": format!("10.0.0.{id}"), "port": 8080}),
            )
            .await;
        assert_eq!(a["result"], true);
    }
    let all = [
        ("10.0.0.1:8080", true),
        ("10.0.0.2:8080", true),
        ("10.0.0.3:8080", true),
    ];
    wait_v1(&cluster, "orders", &all).await;
    let hosts = ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"];
    for id in [1, 2, 3] {
        sdk.wait(
            &format!("node {id} lists the three instances"),
            json!({"op": "list", "client": format!("c{id}"), "service": "orders"}),
            |a| strings(&a["hosts"]) == hosts,
        )
        .await;
    }
    // The subscriber on node 1 hears of the instances registered through the others.
    sdk.wait(
        "a push with all three instances",
        json!({"op": "pushed", "client": "c1", "service": "orders"}),
        |a| {
            a["pushes"]
                .as_array()
                .and_then(|p| p.last())
                .is_some_and(|last| strings(last) == hosts)
        },
    )
    .await;
    // A connection holds one instance per service: registering again replaces it.
    sdk.call(
        json!({"op": "register", "client": "c3", "service": "orders",
                    "ip": "10.0.0.3", "port": 9090}),
    )
    .await;
    wait_v1(
        &cluster,
        "orders",
        &[
            ("10.0.0.1:8080", true),
            ("10.0.0.2:8080", true),
            ("10.0.0.3:9090", true),
        ],
    )
    .await;
    // Deregister through node 2: gone everywhere, and pushed.
    sdk.call(
        json!({"op": "deregister", "client": "c2", "service": "orders",
                    "ip": "10.0.0.2", "port": 8080}),
    )
    .await;
    wait_v1(
        &cluster,
        "orders",
        &[("10.0.0.1:8080", true), ("10.0.0.3:9090", true)],
    )
    .await;
    sdk.wait(
        "a push without the deregistered instance",
        json!({"op": "pushed", "client": "c1", "service": "orders"}),
        |a| {
            a["pushes"]
                .as_array()
                .and_then(|p| p.last())
                .is_some_and(|last| strings(last) == ["10.0.0.1:8080", "10.0.0.3:9090"])
        },
    )
    .await;
    // A batch replaces the connection's publication of a service.
    sdk.call(json!({"op": "batch", "client": "c2", "service": "batched",
                    "instances": [["10.0.1.1", 1], ["10.0.1.2", 2]]}))
        .await;
    wait_v1(
        &cluster,
        "batched",
        &[("10.0.1.1:1", true), ("10.0.1.2:2", true)],
    )
    .await;
    sdk.call(json!({"op": "batch", "client": "c2", "service": "batched",
                    "instances": [["10.0.1.2", 2]]}))
        .await;
    wait_v1(&cluster, "batched", &[("10.0.1.2:2", true)]).await;
    // Persistent instances go to the naming_persistent group (Raft).
    sdk.call(
        json!({"op": "register", "client": "c3", "service": "durable",
                    "ip": "10.0.2.1", "port": 7000, "ephemeral": false}),
    )
    .await;
    wait_v1(&cluster, "durable", &[("10.0.2.1:7000", false)]).await;
    // The reverse direction: registered through nacosd.v1, listed through the SDK.
    naming(&cluster, 2)
        .await
        .register_instance(pb::RegisterInstanceRequest {
            service: svc("durable"),
            instance: Some(pb::Instance {
                ip: "10.0.2.2".into(),
                port: 7000,
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    sdk.wait(
        "the SDK lists an instance registered through nacosd.v1",
        json!({"op": "list", "client": "c1", "service": "durable"}),
        |a| strings(&a["hosts"]) == ["10.0.2.1:7000", "10.0.2.2:7000"],
    )
    .await;
    sdk.call(
        json!({"op": "deregister", "client": "c1", "service": "durable",
                    "ip": "10.0.2.1", "port": 7000, "ephemeral": false}),
    )
    .await;
    wait_v1(&cluster, "durable", &[("10.0.2.2:7000", false)]).await;
    let page = sdk
        .wait(
            "the service list",
            json!({"op": "services", "client": "c3"}),
            |a| a["count"] == 3,
        )
        .await;
    assert_eq!(strings(&page["names"]), ["batched", "durable", "orders"]);

    // A client whose connection drops (its process killed) loses its ephemeral
    // instances on every node.
    let before = cluster.server(3).nacos.connections();
    let mut doomed = Sdk::start().await;
    doomed.connect("d", &cluster, 3).await;
    assert!(cluster.server(3).nacos.connections() > before);
    doomed
        .call(json!({"op": "register", "client": "d", "service": "orders",
                     "ip": "10.9.9.9", "port": 1}))
        .await;
    let with_doomed = [
        ("10.0.0.1:8080", true),
        ("10.0.0.3:9090", true),
        ("10.9.9.9:1", true),
    ];
    wait_v1(&cluster, "orders", &with_doomed).await;
    doomed.child.kill().await.unwrap();
    wait_v1(
        &cluster,
        "orders",
        &[("10.0.0.1:8080", true), ("10.0.0.3:9090", true)],
    )
    .await;
    wait_until("node 3 forgets the killed client's connections", || {
        cluster.server(3).nacos.connections() == before
    })
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_sdk_publishes_reads_listens_and_removes_through_every_node() {
    let cluster = ready_cluster().await;
    let mut sdk = Sdk::start().await;
    for id in [1, 2, 3] {
        sdk.connect(&format!("c{id}"), &cluster, id).await;
    }
    let key = |client: &str| json!({"client": client, "data_id": "app.yaml", "group": "g"});
    let with = |client: &str, extra: Value| {
        let mut v = key(client);
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    };
    // Not there yet: the SDK reads "".
    let a = sdk.call(with("c1", json!({"op": "get"}))).await;
    assert_eq!(a["content"], "");
    sdk.call(with("c3", json!({"op": "listen"}))).await;
    let a = sdk
        .call(with("c1", json!({"op": "publish", "content": "v: 1"})))
        .await;
    assert_eq!(a["result"], true);
    for id in [1, 2, 3] {
        sdk.wait(
            &format!("node {id} reads v1"),
            with(&format!("c{id}"), json!({"op": "get"})),
            |a| a["content"] == "v: 1",
        )
        .await;
    }
    sdk.wait(
        "the listener on node 3 hears v1",
        with("c3", json!({"op": "heard"})),
        |a| strings(&a["heard"]).contains(&"v: 1".to_string()),
    )
    .await;
    // Visible through nacosd.v1, with Nacos's md5.
    let item = configs(&cluster, 2)
        .await
        .get_config(pb::GetConfigRequest {
            key: Some(pb::ConfigKey {
                namespace: String::new(),
                group: "g".into(),
                data_id: "app.yaml".into(),
            }),
            consistency: pb::Consistency::Linearizable as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(item.content, "v: 1");
    assert_eq!(item.md5, nacosd::groups::config::md5_hex(b"v: 1"));
    // A compare-and-swap on a stale md5 fails (the SDK raises Nacos's error 500); on
    // the current one it succeeds.
    let a = sdk
        .try_call(with(
            "c2",
            json!({"op": "publish", "content": "v: x", "cas_md5": nacosd::groups::config::md5_hex(b"old")}),
        ))
        .await;
    assert_eq!(a["ok"], false);
    assert!(a["error"].as_str().unwrap().contains("Error [500]"), "{a}");
    let a = sdk
        .call(with(
            "c2",
            json!({"op": "publish", "content": "v: 2", "cas_md5": item.md5}),
        ))
        .await;
    assert_eq!(a["result"], true);
    sdk.wait(
        "the listener hears v2",
        with("c3", json!({"op": "heard"})),
        |a| strings(&a["heard"]).contains(&"v: 2".to_string()),
    )
    .await;
    // Published through nacosd.v1: read and heard through the SDK.
    configs(&cluster, 1)
        .await
        .publish_config(pb::PublishConfigRequest {
            key: Some(pb::ConfigKey {
                namespace: "public".into(),
                group: "g".into(),
                data_id: "app.yaml".into(),
            }),
            content: "v: 3".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    sdk.wait(
        "node 2 reads what nacosd.v1 published",
        with("c2", json!({"op": "get"})),
        |a| a["content"] == "v: 3",
    )
    .await;
    sdk.wait(
        "the listener hears v3",
        with("c3", json!({"op": "heard"})),
        |a| strings(&a["heard"]).contains(&"v: 3".to_string()),
    )
    .await;
    // Removed through node 1: gone everywhere.
    let a = sdk.call(with("c1", json!({"op": "remove"}))).await;
    assert_eq!(a["result"], true);
    for id in [1, 2, 3] {
        sdk.wait(
            &format!("node {id} no longer has it"),
            with(&format!("c{id}"), json!({"op": "get"})),
            |a| a["content"] == "",
        )
        .await;
    }
    let gone = configs(&cluster, 3)
        .await
        .get_config(pb::GetConfigRequest {
            key: Some(pb::ConfigKey {
                namespace: String::new(),
                group: "g".into(),
                data_id: "app.yaml".into(),
            }),
            consistency: pb::Consistency::Linearizable as i32,
        })
        .await;
    assert_eq!(gone.unwrap_err().code(), Code::NotFound);
    cluster.shutdown().await;
}

fn payload(kind: &str, body: Value) -> Payload {
    request_payload(kind, body)
}

async fn unary(c: &mut RequestClient<Channel>, kind: &str, body: Value) -> (String, Value) {
    parse_reply(c.request(payload(kind, body)).await.unwrap().into_inner())
}

/// The protocol's edges, without an SDK: the handshake, what a client gets before its
/// setup, for an unknown request type and for a body that is not JSON (always a Nacos
/// answer, never a gRPC error), and the end of the bi-stream unregistering the
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_and_nacos_errors_on_the_raw_protocol() {
    let cluster = TestCluster::start(1, |r| r, fast).await;
    wait_until("ready", || cluster.server(1).distro.ready()).await;
    // One channel is one TCP connection: unary calls and the bi-stream share it.
    let channel = Channel::from_shared(format!("http://{}", cluster.server(1).client_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = RequestClient::new(channel.clone());
    let (kind, body) = unary(&mut c, "ServerCheckRequest", json!({})).await;
    assert_eq!(kind, "ServerCheckResponse");
    assert_eq!(body["resultCode"], 200);
    assert_eq!(body["errorCode"], 0);
    assert_eq!(body["success"], true);
    assert_eq!(body["supportAbilityNegotiation"], true);
    let id = body["connectionId"].as_str().unwrap();
    assert!(id.contains("_127.0.0.1_"), "{id}");
    // No setup yet: the connection is not registered.
    let (kind, body) = unary(&mut c, "HealthCheckRequest", json!({})).await;
    assert_eq!(
        (kind.as_str(), &body["errorCode"]),
        ("ErrorResponse", &json!(301))
    );

    // The setup, with an ability table: acknowledged by SetupAckRequest.
    let (tx, mut pushed) = open_bi_stream(
        channel,
        json!({"clientVersion": "test", "tenant": "", "labels": {"module": "naming"},
               "abilityTable": {}}),
    )
    .await
    .unwrap();
    let ack = pushed.message().await.unwrap().unwrap();
    assert_eq!(ack.metadata.unwrap().r#type, "SetupAckRequest");
    let ack: Value = serde_json::from_slice(&ack.body.unwrap().value).unwrap();
    assert_eq!(ack["abilityTable"]["supportPersistentInstanceByGrpc"], true);
    let (kind, body) = unary(&mut c, "HealthCheckRequest", json!({})).await;
    assert_eq!(
        (kind.as_str(), &body["success"]),
        ("HealthCheckResponse", &json!(true))
    );
    let (kind, body) = unary(&mut c, "NoSuchRequest", json!({})).await;
    assert_eq!(kind, "ErrorResponse");
    assert_eq!(
        (&body["resultCode"], &body["errorCode"]),
        (&json!(302), &json!(302))
    );
    let mut bad = payload("InstanceRequest", json!({}));
    bad.body.as_mut().unwrap().value = b"{oops".to_vec();
    let p = c.request(bad).await.unwrap().into_inner();
    let body: Value = serde_json::from_slice(&p.body.unwrap().value).unwrap();
    assert_eq!(body["errorCode"], 502);
    let (kind, body) = unary(
        &mut c,
        "InstanceRequest",
        json!({"serviceName": "s", "type": "registerInstance",
               "instance": {"ip": "not an ip", "port": 1}}),
    )
    .await;
    assert_eq!(
        (kind.as_str(), &body["errorCode"]),
        ("InstanceResponse", &json!(400))
    );
    assert_eq!(cluster.server(1).nacos.connections(), 1);
    // The client ends the bi-stream: the connection is unregistered.
    drop(tx);
    wait_until("the connection is unregistered", || {
        cluster.server(1).nacos.connections() == 0
    })
    .await;
    cluster.shutdown().await;
}

/// With `--auth`, the Nacos front end is no way around it: data requests need a nacosd
/// token in the Nacos `accessToken` header, and without one (or with a bad one) are
/// answered with errorCode 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_requests_need_a_nacosd_token_in_access_token() {
    let cluster = TestCluster::start(
        1,
        |r| r,
        |c| {
            fast(c);
            c.auth.enabled = true;
            c.auth.initial_admin_password = Some("nacos-admin-secret".into());
        },
    )
    .await;
    wait_until("ready", || cluster.server(1).distro.ready()).await;
    let channel = Channel::from_shared(format!("http://{}", cluster.server(1).client_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let token = loop {
        let login = pb::auth_service_client::AuthServiceClient::new(channel.clone())
            .login(pb::LoginRequest {
                username: "admin".into(),
                password: "nacos-admin-secret".into(),
            })
            .await;
        match login {
            Ok(r) => break r.into_inner().token,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "admin never could log in: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (_stream, mut pushed) = open_bi_stream(
        channel.clone(),
        json!({"clientVersion": "test", "labels": {"module": "config"}, "abilityTable": {}}),
    )
    .await
    .unwrap();
    pushed.message().await.unwrap().unwrap();
    let mut c = RequestClient::new(channel);
    let publish = json!({"dataId": "d", "group": "g", "tenant": "", "content": "x",
                         "casMd5": "", "additionMap": {}});
    let with_token = |token: &str| {
        let mut p = payload("ConfigPublishRequest", publish.clone());
        p.metadata
            .as_mut()
            .unwrap()
            .headers
            .insert("accessToken".into(), token.into());
        p
    };
    let answer = |p: Payload| {
        let body = p.body.unwrap().value;
        serde_json::from_slice::<Value>(&body).unwrap()
    };
    let (kind, body) = unary(&mut c, "ConfigPublishRequest", publish.clone()).await;
    assert_eq!(kind, "ConfigPublishResponse");
    assert_eq!(
        (&body["resultCode"], &body["errorCode"]),
        (&json!(500), &json!(403))
    );
    let bad = c
        .request(with_token("not-a-token"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer(bad)["errorCode"], 403);
    let ok = c.request(with_token(&token)).await.unwrap().into_inner();
    let ok = answer(ok);
    assert_eq!(
        (&ok["resultCode"], &ok["success"]),
        (&json!(200), &json!(true)),
        "{ok}"
    );
    cluster.shutdown().await;
}

/// A Nacos client on the raw protocol: one TCP connection, set up, with a task that
/// records every server push and, when `answers`, acknowledges it as the SDKs do.
struct RawClient {
    id: String,
    rpc: RequestClient<Channel>,
    /// Keeps the client's side of the bi-stream open.
    _stream: tokio::sync::mpsc::Sender<Payload>,
    pushes: std::sync::Arc<std::sync::Mutex<Vec<(String, Value)>>>,
    /// The server ended the bi-stream.
    ended: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl RawClient {
    async fn connect(cluster: &TestCluster, node: u64, answers: bool) -> RawClient {
        let channel = Channel::from_shared(format!("http://{}", cluster.server(node).client_addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut rpc = RequestClient::new(channel.clone());
        let (_, body) = unary(&mut rpc, "ServerCheckRequest", json!({})).await;
        let id = body["connectionId"].as_str().unwrap().to_string();
        let (tx, mut inbound) = open_bi_stream(
            channel,
            json!({"clientVersion": "test", "tenant": "", "labels": {"module": "naming"}}),
        )
        .await
        .unwrap();
        let pushes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let ended = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (seen, done, acks) = (pushes.clone(), ended.clone(), tx.clone());
        tokio::spawn(async move {
            while let Ok(Some(p)) = inbound.message().await {
                let (kind, body) = parse_reply(p);
                let response = kind.replace("Request", "Response");
                let request_id = body["requestId"].clone();
                // Recorded before the answer, which the server may be waiting for.
                seen.lock().unwrap().push((kind, body));
                if answers {
                    let ack = json!({"resultCode": 200, "errorCode": 0, "success": true,
                                     "requestId": request_id});
                    let _ = acks.send(payload(&response, ack)).await;
                }
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let end = tokio::time::Instant::now() + DEADLINE;
        while unary(&mut rpc, "HealthCheckRequest", json!({})).await.0 != "HealthCheckResponse" {
            assert!(
                tokio::time::Instant::now() < end,
                "the setup was never registered"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        RawClient {
            id,
            rpc,
            _stream: tx,
            pushes,
            ended,
        }
    }

    /// Register an ephemeral instance `ip:80` of `service` on this connection.
    async fn register(&mut self, service: &str, ip: &str) {
        let (kind, body) = unary(
            &mut self.rpc,
            "InstanceRequest",
            json!({"namespace": "public", "groupName": "DEFAULT_GROUP", "serviceName": service,
                   "type": "registerInstance",
                   "instance": {"ip": ip, "port": 80, "ephemeral": true, "weight": 1.0,
                                "healthy": true, "enabled": true}}),
        )
        .await;
        assert_eq!(
            (kind.as_str(), &body["resultCode"]),
            ("InstanceResponse", &json!(200)),
            "{body}"
        );
    }

    fn pushes_of(&self, kind: &str) -> Vec<Value> {
        self.pushes
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k == kind)
            .map(|(_, b)| b.clone())
            .collect()
    }

    fn ended(&self) -> bool {
        self.ended.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Nacos's idle-connection ejector: a connection silent for the probe time gets a
/// `ClientDetectionRequest`; one that answers stays, one that does not is closed and
/// its ephemeral instances disappear on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_client_that_ignores_the_detection_probe_is_ejected_everywhere() {
    let cluster = TestCluster::start(
        3,
        |r| r,
        |c| {
            fast(c);
            c.nacos.idle_probe_after = Duration::from_millis(400);
            c.nacos.probe_timeout = Duration::from_millis(400);
        },
    )
    .await;
    cluster.wait_distro_ready().await;
    let mut live = RawClient::connect(&cluster, 1, true).await;
    let mut hung = RawClient::connect(&cluster, 1, false).await;
    live.register("probe-live", "10.9.0.1").await;
    hung.register("probe-hung", "10.9.0.2").await;
    wait_v1(&cluster, "probe-live", &[("10.9.0.1:80", true)]).await;
    wait_v1(&cluster, "probe-hung", &[("10.9.0.2:80", true)]).await;
    // Both fall silent; the one that does not answer its probe goes, everywhere.
    wait_v1(&cluster, "probe-hung", &[]).await;
    wait_until("the hung client's stream is ended", || hung.ended()).await;
    assert!(!hung.pushes_of("ClientDetectionRequest").is_empty());
    // The live one answered its probes and is still there, with its instance.
    let probes = live.pushes_of("ClientDetectionRequest");
    assert!(!probes.is_empty(), "the idle live client was probed too");
    assert!(probes
        .iter()
        .all(|p| p["requestId"].as_str().is_some_and(|id| !id.is_empty())));
    assert!(!live.ended());
    assert_eq!(cluster.server(1).nacos.connections(), 1);
    wait_v1(&cluster, "probe-live", &[("10.9.0.1:80", true)]).await;
    cluster.shutdown().await;
}

/// A stopping node asks its Nacos clients to reconnect elsewhere
/// (`ConnectResetRequest` without a server address: the SDK picks its next server)
/// and ends their streams; the others keep serving the client's instances until it
/// re-registers, as after any lost connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopping_node_asks_its_nacos_clients_to_reconnect_elsewhere() {
    let mut cluster = ready_cluster().await;
    let mut answering = RawClient::connect(&cluster, 2, true).await;
    let silent = RawClient::connect(&cluster, 2, false).await;
    answering.register("reset", "10.9.1.1").await;
    wait_v1(&cluster, "reset", &[("10.9.1.1:80", true)]).await;
    cluster.stop(2).await;
    for c in [&answering, &silent] {
        wait_until("the reset arrived", || {
            !c.pushes_of("ConnectResetRequest").is_empty()
        })
        .await;
        let resets = c.pushes_of("ConnectResetRequest");
        assert_eq!(resets.len(), 1, "{:?}", c.pushes.lock().unwrap());
        assert_eq!(resets[0]["connectionId"], json!(c.id));
        assert_eq!(resets[0]["serverIp"], json!(""));
        wait_until("the stream is ended", || c.ended()).await;
    }
    // The connection's session closed with it: its instance is gone on the others.
    wait_v1(&cluster, "reset", &[]).await;
    cluster.shutdown().await;
}
