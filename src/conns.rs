//! Accepted connections that a server's shutdown can cut.
//!
//! tonic serves each connection on a task of its own, holding a clone of the services
//! and, through them, the node. A graceful shutdown asks connections to drain, but a
//! peer that keeps sending on its connection, or a client holding a stream open, keeps
//! that task (and the node's RocksDB, with its directory lock) alive after the server
//! has stopped. A process that exits does not care; a node restarted in the same
//! process (the tests, an embedding application) does. So a server remembers its
//! accepted sockets and, once it has stopped serving, shuts every one that is still
//! open down: each connection task sees the end of its stream, ends, and drops the
//! services.
//!
//! Each accepted connection also carries a [`ConnInfo`] that tonic hands to every
//! request on it (request extensions): an id unique in this process, the accept time,
//! the peer address, and a signal that fires when the connection is gone. The Nacos
//! front end (`nacos`) keys its connections, and so its Distro sessions, on it.
//!
//! The registry keeps a duplicate of each socket's descriptor (`try_clone`), not the
//! raw number: shutting a socket down through the duplicate affects the connection,
//! and a number that was closed and reused can never be hit by mistake.

use std::collections::HashMap;
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// What every request on an accepted connection knows about the connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Unique among the connections this process accepted on any port.
    pub id: u64,
    /// When the connection was accepted (ms since the Unix epoch).
    pub accepted_ms: u64,
    pub tcp: TcpConnectInfo,
    /// The client's verified certificate, on a TLS port with a client CA when the
    /// client presented one (set by `tls::accept`).
    pub client_cert: Option<crate::tls::ClientCert>,
    /// Changes (closes) when the connection is dropped.
    closed: watch::Receiver<()>,
}

impl ConnInfo {
    /// The connection information of a tonic request, if it came through a server
    /// that records it (tests calling a service directly have none).
    pub fn of<T>(req: &tonic::Request<T>) -> Option<&ConnInfo> {
        req.extensions().get::<ConnInfo>()
    }

    pub fn remote_addr(&self) -> Option<std::net::SocketAddr> {
        self.tcp.remote_addr()
    }

    /// Resolves once the connection is gone (its socket dropped by the server).
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.closed.clone();
        async move { while rx.changed().await.is_ok() {} }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.has_changed().is_err()
    }
}

/// Connection ids, shared by every port so that an id names one connection.
static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

#[derive(Default)]
struct Registry {
    open: Mutex<HashMap<u64, std::net::TcpStream>>,
    next: AtomicU64,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, std::net::TcpStream>> {
        crate::lock(&self.open)
    }
}

/// Cuts the connections of one server.
#[derive(Clone, Default)]
pub struct Cutter(Arc<Registry>);

impl Cutter {
    /// Shut down every connection still open (both directions).
    pub fn cut_all(&self) -> usize {
        let open = self.0.lock();
        for s in open.values() {
            let _ = s.shutdown(Shutdown::Both);
        }
        open.len()
    }
}

/// An accepted connection, registered until it is dropped.
pub struct TrackedStream {
    inner: TcpStream,
    id: u64,
    registry: Arc<Registry>,
    info: ConnInfo,
    /// Dropped with the stream: that is the [`ConnInfo::closed`] signal.
    _closed: watch::Sender<()>,
}

impl Drop for TrackedStream {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

fn track(stream: TcpStream, registry: &Arc<Registry>) -> io::Result<TrackedStream> {
    let std_stream = stream.into_std()?;
    let duplicate = std_stream.try_clone()?;
    let inner = TcpStream::from_std(std_stream)?;
    let id = registry.next.fetch_add(1, Ordering::Relaxed);
    registry.lock().insert(id, duplicate);
    let (closed_tx, closed) = watch::channel(());
    let info = ConnInfo {
        id: NEXT_CONN.fetch_add(1, Ordering::Relaxed),
        accepted_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        tcp: inner.connect_info(),
        client_cert: None,
        closed,
    };
    Ok(TrackedStream {
        inner,
        id,
        registry: registry.clone(),
        info,
        _closed: closed_tx,
    })
}

/// Wrap a listener's accepted connections; the [`Cutter`] cuts those still open.
pub fn tracked<S>(
    incoming: S,
) -> (
    impl Stream<Item = io::Result<TrackedStream>> + Send + 'static,
    Cutter,
)
where
    S: Stream<Item = io::Result<TcpStream>> + Send + 'static,
{
    let cutter = Cutter::default();
    let registry = cutter.0.clone();
    let stream = incoming.map(move |accepted| accepted.and_then(|s| track(s, &registry)));
    (stream, cutter)
}

impl Connected for TrackedStream {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_cut_connection_sees_the_end_of_its_stream() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted =
            futures::stream::once(async move { listener.accept().await.map(|(s, _)| s) });
        let (incoming, cutter) = tracked(accepted);
        let mut incoming = Box::pin(incoming);
        let mut client = TcpStream::connect(addr).await.unwrap();
        let mut server_side = incoming.next().await.unwrap().unwrap();
        client.write_all(b"x").await.unwrap();
        let mut byte = [0u8; 1];
        server_side.read_exact(&mut byte).await.unwrap();
        assert_eq!(cutter.cut_all(), 1);
        // The server's pending read ends (EOF), as does the client's.
        assert_eq!(server_side.read(&mut byte).await.unwrap(), 0);
        assert_eq!(client.read(&mut byte).await.unwrap(), 0);
        let info = server_side.connect_info();
        assert!(!info.is_closed());
        drop(server_side);
        assert_eq!(cutter.cut_all(), 0, "a dropped connection is forgotten");
        assert!(
            info.is_closed(),
            "dropping the stream fires its closed signal"
        );
        info.closed().await;
    }
}
