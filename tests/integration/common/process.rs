//! Real `nacosd` processes for multi-process tests: spawn with flags, kill -9,
//! restart on the same ports and data directory, ask for status over gRPC.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nacosd::pb;
use nacosd::pb::cluster_service_client::ClusterServiceClient;

/// Multi-process tests run one at a time: fewer processes competing for 2 cores, and
/// no two clusters picking ports at once.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A free loopback port for a child process to listen on.
///
/// Taken from 20000–31999, below Linux's ephemeral range (32768–60999 by default), and
/// checked by binding it: a port from the ephemeral range (`bind(0)`) could be taken,
/// between the check and the child's own bind, as the local port of an outgoing
/// connection of another test running in parallel (it happened: "Address already in
/// use"). Ports are handed out in order from a start chosen by the process id, so two
/// test processes rarely meet and one process never hands a port out twice.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(97) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (start + n) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{}", LOW + SPAN);
}

pub struct Proc {
    pub id: u64,
    pub client: String,
    pub peer: String,
    pub http: String,
    pub data_dir: PathBuf,
    pub members: String,
    /// More flags for every start (TLS, auth).
    pub extra_args: Vec<String>,
    pub child: Option<Child>,
}

impl Proc {
    pub fn new(id: u64, base: &Path) -> Self {
        Proc {
            id,
            client: format!("127.0.0.1:{}", free_port()),
            peer: format!("127.0.0.1:{}", free_port()),
            http: format!("127.0.0.1:{}", free_port()),
            data_dir: base.join(format!("node{id}")),
            members: String::new(),
            extra_args: Vec::new(),
            child: None,
        }
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "node {} already running", self.id);
        std::fs::create_dir_all(&self.data_dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.join("nacosd.log"))
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nacosd"));
        cmd.arg("--node-id")
            .arg(self.id.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--client-addr")
            .arg(&self.client)
            .arg("--peer-addr")
            .arg(&self.peer)
            .arg("--http-addr")
            .arg(&self.http)
            .args(["--heartbeat-ms", "100"])
            .args(["--election-timeout-min-ms", "800"])
            .args(["--election-timeout-max-ms", "1600"])
            .env("NACOSD_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if !self.members.is_empty() {
            // Test clusters on loopback speak plaintext between nodes.
            cmd.arg("--initial-members")
                .arg(&self.members)
                .arg("--insecure-peer");
        }
        cmd.args(&self.extra_args);
        self.child = Some(cmd.spawn().expect("spawn nacosd"));
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGSTOP: the process keeps its sockets but answers nothing (a hung node, or
    /// one behind a partition that drops its packets).
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`Proc::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let pid = c.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..600 {
            if let Some(st) = c.try_wait().unwrap() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        c.kill().unwrap();
        c.wait().ok()
    }

    /// Panic with the node's log if its process exited on its own.
    pub fn assert_alive(&mut self) {
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                panic!(
                    "node {} exited unexpectedly ({status}):\n{}",
                    self.id,
                    self.log()
                );
            }
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("nacosd.log")).unwrap_or_default()
    }

    pub async fn status(&self) -> Option<pb::StatusResponse> {
        let mut c = ClusterServiceClient::connect(format!("http://{}", self.client))
            .await
            .ok()?;
        let mut req = tonic::Request::new(pb::StatusRequest {});
        req.set_timeout(Duration::from_secs(2));
        Some(c.status(req).await.ok()?.into_inner())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Start `n` nodes that form one cluster.
pub fn cluster(n: u64, base: &Path) -> Vec<Proc> {
    cluster_with(n, base, &[])
}

/// Start `n` nodes that form one cluster, each with the flags `extra`.
pub fn cluster_with(n: u64, base: &Path, extra: &[&str]) -> Vec<Proc> {
    let mut procs: Vec<Proc> = (1..=n).map(|id| Proc::new(id, base)).collect();
    let members = procs
        .iter()
        .map(|p| format!("{}={}", p.id, p.peer))
        .collect::<Vec<_>>()
        .join(",");
    for p in &mut procs {
        p.members = members.clone();
        p.extra_args = extra.iter().map(|s| s.to_string()).collect();
        p.start();
    }
    procs
}

/// Wait until every group has a leader all running nodes agree on, failing fast (with
/// the node's log) if a node died.
pub async fn wait_for_leaders(procs: &mut [Proc], deadline: Duration) {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        for p in procs.iter_mut() {
            p.assert_alive();
        }
        if agreed_leaders(procs).await.is_some() {
            return;
        }
        if tokio::time::Instant::now() > end {
            let logs: Vec<String> = procs
                .iter()
                .map(|p| format!("--- node {}:\n{}", p.id, p.log()))
                .collect();
            panic!(
                "timed out waiting for leaders in every group\n{}",
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Each group's leader if every running node agrees on it.
pub async fn agreed_leaders(procs: &[Proc]) -> Option<BTreeMap<String, u64>> {
    let mut agreed: Option<BTreeMap<String, u64>> = None;
    for p in procs.iter().filter(|p| p.child.is_some()) {
        let s = p.status().await?;
        let mut leaders = BTreeMap::new();
        for g in s.groups {
            leaders.insert(g.group, g.leader_id?);
        }
        match &agreed {
            None => agreed = Some(leaders),
            Some(a) if *a == leaders => {}
            Some(_) => return None,
        }
    }
    let a = agreed?;
    // Leaders must be running nodes.
    let running: Vec<u64> = procs
        .iter()
        .filter(|p| p.child.is_some())
        .map(|p| p.id)
        .collect();
    a.values().all(|l| running.contains(l)).then_some(a)
}

/// Applied index per group on one node.
pub async fn applied(p: &Proc) -> Option<BTreeMap<String, u64>> {
    let s = p.status().await?;
    Some(
        s.groups
            .into_iter()
            .map(|g| (g.group, g.applied_index.unwrap_or(0)))
            .collect(),
    )
}

/// Wait until every node reports the same applied index in every group.
pub async fn wait_converged(procs: &[Proc], deadline: Duration) {
    wait_async(
        "all nodes at the same applied index in every group",
        deadline,
        || async {
            let mut seen = Vec::new();
            for p in procs {
                match applied(p).await {
                    Some(a) => seen.push(a),
                    None => return false,
                }
            }
            seen.windows(2).all(|w| w[0] == w[1])
        },
    )
    .await;
}

/// Poll an async condition until it holds or `deadline` passes.
pub async fn wait_async<F, Fut>(what: &str, deadline: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    while !f().await {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
