//! One `nacosd` process in its namespace (or an etcd member, for the failover
//! comparison): start it (with the same flags every time), kill -9 it, stop it cleanly,
//! pause and resume it, and ask it for its status.
//!
//! The process is started with `ip netns exec`, which enters the namespace and execs
//! nacosd in place, so the child's pid is nacosd's own and signals reach it directly.
//! Its stdout and stderr are appended to `node<i>.log` in the run's output directory,
//! with a marker line before every start so a restart is easy to find.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint};

use crate::pb;
use crate::pb::cluster_service_client::ClusterServiceClient;

/// The client port every node listens on inside its namespace.
pub const CLIENT_PORT: u16 = 9848;
const PEER_PORT: u16 = 7848;
const HTTP_PORT: u16 = 8848;
/// etcd's client and peer ports, for the failover comparison.
pub const ETCD_CLIENT_PORT: u16 = 2379;
pub const ETCD_PEER_PORT: u16 = 2380;

/// The system a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum System {
    Nacosd,
    /// etcd with its default settings; only for `--measure-failover`.
    Etcd,
}

impl System {
    pub fn client_port(self) -> u16 {
        match self {
            System::Nacosd => CLIENT_PORT,
            System::Etcd => ETCD_CLIENT_PORT,
        }
    }

    /// Whether `status` is a clean exit after SIGTERM: 0 for nacosd; etcd re-raises
    /// the signal once it has shut down.
    fn clean_exit(self, status: std::process::ExitStatus) -> bool {
        use std::os::unix::process::ExitStatusExt;
        status.success() || (self == System::Etcd && status.signal() == Some(15))
    }

    /// The members flag's value for a cluster whose node `i` has address `ip(i)`.
    pub fn members(self, nodes: usize, ip: impl Fn(usize) -> std::net::Ipv4Addr) -> String {
        (1..=nodes)
            .map(|i| match self {
                System::Nacosd => format!("{i}={}:{PEER_PORT}", ip(i)),
                System::Etcd => format!("e{i}=http://{}:{ETCD_PEER_PORT}", ip(i)),
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Everything needed to start a node, the same way every time.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub system: System,
    /// 1-based; also the nacosd node id.
    pub id: usize,
    pub namespace: String,
    pub ip: std::net::Ipv4Addr,
    pub binary: PathBuf,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// `--initial-members` of the whole cluster (etcd: `--initial-cluster`).
    pub members: String,
    /// Extra nacosd flags (timeouts, snapshot thresholds).
    pub extra_args: Vec<String>,
    /// `NACOSD_LOG` filter.
    pub log_filter: String,
}

/// A node and its process, if running.
pub struct Node {
    pub spec: NodeSpec,
    child: Option<Child>,
    paused: bool,
    starts: u32,
    /// A channel to the client port; connects lazily and reconnects by itself.
    channel: Channel,
}

/// How a node's process is doing, as far as the harness can tell without asking it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessState {
    Running,
    Paused,
    /// Killed or stopped by the harness.
    Down,
    /// It exited without being told to: a crash.
    Exited(String),
}

impl NodeSpec {
    /// The program's arguments, the same at every start.
    fn args(&self) -> Vec<String> {
        let ip = self.ip;
        let data = self.data_dir.display().to_string();
        let mut args: Vec<String> = match self.system {
            System::Nacosd => vec![
                "--node-id".into(),
                self.id.to_string(),
                "--data-dir".into(),
                data,
                "--client-addr".into(),
                format!("{ip}:{CLIENT_PORT}"),
                "--peer-addr".into(),
                format!("{ip}:{PEER_PORT}"),
                "--http-addr".into(),
                format!("{ip}:{HTTP_PORT}"),
                "--initial-members".into(),
                self.members.clone(),
                // The fault suite's nodes talk plaintext on a private network; TLS
                // would only add handshakes to every reconnect after a partition.
                "--insecure-peer".into(),
            ],
            // etcd's defaults otherwise (heartbeat 100 ms, election timeout 1000 ms);
            // the initial-cluster flags are ignored once the data directory exists.
            System::Etcd => vec![
                "--name".into(),
                format!("e{}", self.id),
                "--data-dir".into(),
                data,
                "--listen-client-urls".into(),
                format!("http://{ip}:{ETCD_CLIENT_PORT}"),
                "--advertise-client-urls".into(),
                format!("http://{ip}:{ETCD_CLIENT_PORT}"),
                "--listen-peer-urls".into(),
                format!("http://{ip}:{ETCD_PEER_PORT}"),
                "--initial-advertise-peer-urls".into(),
                format!("http://{ip}:{ETCD_PEER_PORT}"),
                "--initial-cluster".into(),
                self.members.clone(),
                "--initial-cluster-state".into(),
                "new".into(),
            ],
        };
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

impl Node {
    pub fn new(spec: NodeSpec) -> Result<Node, String> {
        let channel = channel_to(&format!("http://{}:{}", spec.ip, spec.system.client_port()))?;
        Ok(Node {
            spec,
            child: None,
            paused: false,
            starts: 0,
            channel,
        })
    }

    pub fn id(&self) -> usize {
        self.spec.id
    }

    /// A channel to this node's client port.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn start(&mut self) -> Result<(), String> {
        if self.child.is_some() {
            return Err(format!("node {} is already running", self.spec.id));
        }
        std::fs::create_dir_all(&self.spec.data_dir)
            .map_err(|e| format!("{}: {e}", self.spec.data_dir.display()))?;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.spec.log)
            .map_err(|e| format!("{}: {e}", self.spec.log.display()))?;
        self.starts += 1;
        let _ = writeln!(
            log,
            "===== nacosd-chaos: start #{} of node {} at {} =====",
            self.starts,
            self.spec.id,
            wall_clock()
        );
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.spec.namespace])
            .arg(&self.spec.binary)
            .args(self.spec.args())
            .env("NACOSD_LOG", &self.spec.log_filter)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting node {}: {e}", self.spec.id))?;
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    /// SIGKILL: no shutdown, no flush. Works on a paused process too.
    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
        self.paused = false;
    }

    /// SIGTERM, then wait for a clean exit; SIGKILL after `grace`. `Err` says what
    /// was wrong with the shutdown: it needed SIGKILL, or the exit status was not 0.
    pub async fn terminate(&mut self, grace: Duration) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if self.paused {
            self.signal_pid(&child, "-CONT").await;
            self.paused = false;
        }
        self.signal_pid(&child, "-TERM").await;
        match tokio::time::timeout(grace, child.wait()).await {
            Ok(Ok(status)) if self.spec.system.clean_exit(status) => Ok(()),
            Ok(Ok(status)) => Err(format!(
                "node {} exited with {status} after SIGTERM",
                self.spec.id
            )),
            Ok(Err(e)) => Err(format!("waiting for node {}: {e}", self.spec.id)),
            Err(_) => {
                let _ = child.kill().await;
                Err(format!(
                    "node {} did not stop within {grace:?} of SIGTERM; killed",
                    self.spec.id
                ))
            }
        }
    }

    pub async fn pause(&mut self) -> Result<(), String> {
        let child = self.child.as_ref().ok_or("node is not running")?;
        self.signal_pid(child, "-STOP").await;
        self.paused = true;
        Ok(())
    }

    pub async fn resume(&mut self) {
        if let (Some(child), true) = (self.child.as_ref(), self.paused) {
            self.signal_pid(child, "-CONT").await;
        }
        self.paused = false;
    }

    async fn signal_pid(&self, child: &Child, signal: &str) {
        if let Some(pid) = child.id() {
            let _ = Command::new("kill")
                .args([signal, &pid.to_string()])
                .status()
                .await;
        }
    }

    /// Whether the process runs, and if it exited by itself, how.
    pub fn state(&mut self) -> ProcessState {
        let Some(child) = self.child.as_mut() else {
            return ProcessState::Down;
        };
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                ProcessState::Exited(status.to_string())
            }
            Ok(None) if self.paused => ProcessState::Paused,
            Ok(None) => ProcessState::Running,
            Err(e) => ProcessState::Exited(format!("cannot wait for it: {e}")),
        }
    }

    pub fn is_up(&mut self) -> bool {
        self.state() == ProcessState::Running
    }

    /// ClusterService/Status on the client port, `None` on any failure.
    pub async fn status(&self) -> Option<pb::StatusResponse> {
        status_of(self.channel.clone()).await
    }
}

/// ClusterService/Status through `channel`, with a short deadline.
pub async fn status_of(channel: Channel) -> Option<pb::StatusResponse> {
    let mut client = ClusterServiceClient::new(channel);
    let mut req = tonic::Request::new(pb::StatusRequest {});
    req.set_timeout(Duration::from_secs(1));
    Some(client.status(req).await.ok()?.into_inner())
}

/// A lazily connecting channel with bounded connect time and keepalive, so a dead or
/// unreachable node costs a client one deadline, not a hang.
pub fn channel_to(uri: &str) -> Result<Channel, String> {
    Ok(Endpoint::from_shared(uri.to_string())
        .map_err(|e| format!("{uri}: {e}"))?
        .connect_timeout(Duration::from_millis(500))
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

/// Seconds since the epoch, for log markers.
pub fn wall_clock() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:03}", now.as_secs(), now.subsec_millis())
}
