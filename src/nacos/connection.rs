//! Nacos connections: one per TCP connection of the client port, registered when its
//! bi-stream's `ConnectionSetupRequest` arrives and gone when the socket closes, the
//! bi-stream ends, or the client fails a detection probe.
//!
//! A connection is a Distro session (same id), opened at its first ephemeral
//! registration and renewed by the connection itself while it lives, so its ephemeral
//! instances last exactly as long as the connection (Nacos's connection-based client).
//! Pushes go out on the bi-stream with a `requestId` from a per-node counter and wait
//! for the client's ack on the same stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::conns::ConnInfo;
use crate::distro::Distro;
use crate::error::{Error, Result};
use crate::groups::config::watch::WatchInput;
use crate::groups::config::ConfigKey;
use crate::groups::naming::ServiceKey;
use crate::lock;
use crate::nacos::wire::{ConfigContext, Payload, Reply};

/// The Nacos connection id of a TCP connection: Nacos's
/// `<acceptMillis>_<remoteIp>_<remotePort>`, plus the node id so that it is unique in
/// the cluster (it is also the Distro session id).
pub fn connection_id(info: &ConnInfo, node_id: u64) -> String {
    let (ip, port) = match info.remote_addr() {
        Some(a) => (a.ip().to_string(), a.port()),
        None => ("unknown".to_string(), 0),
    };
    format!("{}_{}_{}_n{}", info.accepted_ms, ip, port, node_id)
}

/// What the client said about itself in `ConnectionSetupRequest`.
#[derive(Debug, Clone, Default)]
pub struct ClientMeta {
    pub client_ip: String,
    pub version: String,
    pub tenant: String,
    pub labels: HashMap<String, String>,
}

/// This connection's config listening: the Watch engine's input, and the keys listened
/// to with the names the client used (echoed in pushes).
pub(crate) struct ConfigListen {
    pub input: mpsc::UnboundedSender<WatchInput>,
    pub keys: HashMap<ConfigKey, ConfigContext>,
    pub tasks: Vec<JoinHandle<()>>,
}

pub struct Connection {
    pub id: String,
    pub meta: ClientMeta,
    push_tx: mpsc::Sender<Payload>,
    pending: Mutex<HashMap<String, oneshot::Sender<bool>>>,
    born: Instant,
    /// ms after `born` of the last request or ack.
    last_active: AtomicU64,
    /// The Distro session is open.
    session: Mutex<bool>,
    /// Subscribed services with the subscriber's `clusters` string.
    pub(crate) subscriptions: Mutex<HashMap<ServiceKey, String>>,
    pub(crate) config: Mutex<Option<ConfigListen>>,
    closed: AtomicBool,
}

impl Connection {
    fn new(id: String, meta: ClientMeta, push_tx: mpsc::Sender<Payload>) -> Self {
        Connection {
            id,
            meta,
            push_tx,
            pending: Mutex::default(),
            born: Instant::now(),
            last_active: AtomicU64::new(0),
            session: Mutex::new(false),
            subscriptions: Mutex::default(),
            config: Mutex::default(),
            closed: AtomicBool::new(false),
        }
    }

    pub fn touch(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        self.last_active.fetch_max(ms, Ordering::Relaxed);
    }

    pub fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last_active.load(Ordering::Relaxed));
        self.born.elapsed().saturating_sub(last)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Open this connection's Distro session unless it is open.
    pub fn ensure_session(&self, distro: &Distro) -> Result<()> {
        let mut open = lock(&self.session);
        if self.is_closed() {
            return Err(Error::Unavailable {
                message: "the connection is closed".into(),
                leader: None,
            });
        }
        if !*open {
            distro.open_session(&self.id, Duration::ZERO)?;
            *open = true;
        }
        Ok(())
    }

    /// Renew the session if it is open; an error means it is lost (expired).
    pub fn renew_session(&self, distro: &Distro) -> Result<()> {
        if *lock(&self.session) {
            distro.keep_alive(&self.id)?;
        }
        Ok(())
    }

    /// Send a server request without waiting for an answer (`SetupAckRequest`).
    pub fn send(&self, reply: Reply) -> bool {
        self.push_tx.try_send(reply.to_payload()).is_ok()
    }

    /// Push a server request and wait up to `timeout` for the client's ack.
    pub async fn request(&self, reply: Reply, ids: &AtomicU64, timeout: Duration) -> bool {
        let id = ids.fetch_add(1, Ordering::Relaxed).to_string();
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id.clone(), tx);
        let sent = self
            .push_tx
            .send(reply.with_request_id(&id).to_payload())
            .await
            .is_ok();
        let ok = sent && matches!(tokio::time::timeout(timeout, rx).await, Ok(Ok(true)));
        lock(&self.pending).remove(&id);
        ok
    }

    /// The client answered push `id`.
    pub fn ack(&self, id: &str, ok: bool) {
        if let Some(tx) = lock(&self.pending).remove(id) {
            let _ = tx.send(ok);
        }
        self.touch();
    }
}

/// Every registered Nacos connection of this node, by the id of its TCP connection.
pub struct Connections {
    by_conn: Mutex<HashMap<u64, Arc<Connection>>>,
    /// Bumped on every registration, so a request racing its connection's setup can
    /// wait for it.
    registered: watch::Sender<u64>,
    /// Push request ids (Nacos's `PushAckIdGenerator`).
    pub push_ids: Arc<AtomicU64>,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            by_conn: Mutex::default(),
            registered: watch::channel(0).0,
            push_ids: Arc::default(),
        }
    }
}

impl Connections {
    pub fn register(
        &self,
        conn: u64,
        id: String,
        meta: ClientMeta,
        push_tx: mpsc::Sender<Payload>,
    ) -> Arc<Connection> {
        let c = Arc::new(Connection::new(id, meta, push_tx));
        lock(&self.by_conn).insert(conn, c.clone());
        self.registered.send_modify(|g| *g += 1);
        c
    }

    pub fn get(&self, conn: u64) -> Option<Arc<Connection>> {
        lock(&self.by_conn).get(&conn).cloned()
    }

    /// The connection, waiting up to `wait` for a setup that is on its way (an SDK that
    /// does not wait for `SetupAckRequest` sleeps only 100 ms after sending its setup).
    pub async fn get_or_wait(&self, conn: u64, wait: Duration) -> Option<Arc<Connection>> {
        let mut rx = self.registered.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(c) = self.get(conn) {
                return Some(c);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return self.get(conn),
            }
        }
    }

    /// Forget the connection and release what it held: its Distro session (so its
    /// ephemeral instances go everywhere), subscriptions and config listens.
    pub fn unregister(&self, conn: u64, distro: &Distro) -> Option<Arc<Connection>> {
        let c = lock(&self.by_conn).remove(&conn)?;
        tracing::debug!(connection = %c.id, client_ip = %c.meta.client_ip, version = %c.meta.version, tenant = %c.meta.tenant, "Nacos connection closed");
        {
            let mut open = lock(&c.session);
            c.closed.store(true, Ordering::Release);
            if *open {
                if let Err(e) = distro.close_session(&c.id) {
                    tracing::debug!(connection = %c.id, error = %e, "closing the session of a Nacos connection");
                }
                *open = false;
            }
        }
        lock(&c.subscriptions).clear();
        if let Some(listen) = lock(&c.config).take() {
            for t in listen.tasks {
                t.abort();
            }
        }
        lock(&c.pending).clear();
        Some(c)
    }

    pub fn all(&self) -> Vec<Arc<Connection>> {
        lock(&self.by_conn).values().cloned().collect()
    }

    pub fn count(&self) -> usize {
        lock(&self.by_conn).len()
    }
}
