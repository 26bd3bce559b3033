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
use tonic::transport::server::{Connected, TcpConnectInfo};

#[derive(Default)]
struct Registry {
    open: Mutex<HashMap<u64, std::net::TcpStream>>,
    next: AtomicU64,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, std::net::TcpStream>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
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
    Ok(TrackedStream {
        inner,
        id,
        registry: registry.clone(),
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
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
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
        drop(server_side);
        assert_eq!(cutter.cut_all(), 0, "a dropped connection is forgotten");
    }
}
