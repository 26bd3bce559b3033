//! The server side: a TLS handshake on every accepted connection.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use crate::conns::{ConnInfo, TrackedStream};
use crate::tls::{ClientCert, Reloading};

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once per port: one slow client cannot hold up the others.
const CONCURRENT_HANDSHAKES: usize = 256;

/// An accepted connection, with TLS or without (a port without certificates). A TLS
/// connection keeps what its client certificate says, read once at the handshake.
pub enum ServerConn {
    Plain(TrackedStream),
    Tls(Box<TlsStream<TrackedStream>>, Option<ClientCert>),
}

impl ServerConn {
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.connect_info().remote_addr()
    }

    fn tls(stream: TlsStream<TrackedStream>) -> ServerConn {
        // rustls keeps the chain only when it verified it against the client CA.
        let cert = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(ClientCert::from_der);
        ServerConn::Tls(Box::new(stream), cert)
    }
}

/// The port's connections after a TLS handshake; with `tls` = `None`, as they are.
/// Failed handshakes are logged (`port` names the port) and dropped here: tonic and
/// axum only ever see connections that completed one.
pub fn tls_incoming(
    accepted: impl Stream<Item = io::Result<TrackedStream>> + Send + 'static,
    tls: Option<Arc<Reloading<ServerConfig>>>,
    port: &'static str,
) -> impl Stream<Item = io::Result<ServerConn>> + Send + 'static {
    let refusals = Arc::new(RefusalLog::default());
    accepted
        .map(move |conn| {
            let tls = tls.clone();
            let refusals = refusals.clone();
            async move {
                let conn = match conn {
                    Ok(conn) => conn,
                    Err(e) => return Some(Err(e)),
                };
                let Some(tls) = tls else {
                    return Some(Ok(ServerConn::Plain(conn)));
                };
                let remote = conn.connect_info().remote_addr();
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(conn)).await {
                    Ok(Ok(stream)) => Some(Ok(ServerConn::tls(stream))),
                    Ok(Err(e)) => {
                        if refusals.due(remote.map(|a| a.ip())) {
                            tracing::warn!(port, remote = ?remote, error = %e, "TLS handshake refused (repeats from this address are logged at debug level for 30 s)");
                        } else {
                            tracing::debug!(port, remote = ?remote, error = %e, "TLS handshake refused");
                        }
                        None
                    }
                    Err(_) => {
                        tracing::debug!(port, remote = ?remote, "TLS handshake timed out");
                        None
                    }
                }
            }
        })
        .buffer_unordered(CONCURRENT_HANDSHAKES)
        .filter_map(futures::future::ready)
}

/// When a refused handshake was last logged at warn level, per remote address: a
/// peer with a bad certificate retries every second, the log should say it once in a
/// while.
#[derive(Default)]
struct RefusalLog(std::sync::Mutex<std::collections::HashMap<Option<IpAddr>, Instant>>);

impl RefusalLog {
    fn due(&self, from: Option<IpAddr>) -> bool {
        let mut log = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        // Bounded: forget everything rather than grow without limit under a scan.
        if log.len() > 1024 {
            log.clear();
        }
        let due = log
            .get(&from)
            .is_none_or(|t| now.duration_since(*t) > Duration::from_secs(30));
        if due {
            log.insert(from, now);
        }
        due
    }
}

impl Connected for ServerConn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match self {
            ServerConn::Plain(s) => s.connect_info(),
            ServerConn::Tls(s, cert) => {
                let mut info = s.get_ref().0.connect_info();
                info.client_cert = cert.clone();
                info
            }
        }
    }
}

impl AsyncRead for ServerConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerConn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ServerConn::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerConn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ServerConn::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    /// Not vectored, whatever the socket can do, so that HTTP/2 sends the replies of
    /// many streams in one write: see [`crate::unvectored`].
    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerConn::Plain(s) => Pin::new(s).poll_flush(cx),
            ServerConn::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerConn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ServerConn::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
