//! Streams that tell HTTP/2 they take no vectored writes, so that it coalesces small
//! frames.
//!
//! h2 (under hyper and tonic) buffers outgoing frames in a 16 KiB write buffer and
//! decides how to treat a DATA frame's payload by the stream's `is_write_vectored`:
//! - vectored: a payload of 256 bytes or more is kept aside and passed to `writev` as
//!   a slice of its own, and the buffer is written out before the next frame can be
//!   taken. A unary reply carrying a 256-byte config item cost one `writev`, two with
//!   its trailers, however many replies of other streams were ready at the same time;
//! - not vectored: payloads up to 1 KiB are copied into the buffer, so the frames of
//!   every stream that is ready leave in one `write` (larger payloads still go on
//!   their own, without a copy).
//!
//! Under load the second is what a server wants: on three nodes serving 64 clients'
//! stale reads it made 23,000 writes where it had made 519,000, and the three servers
//! spent 17 % less CPU per read (docs/BENCHMARKS.md, "Replies coalesced"). The copy
//! it costs is of at most 1 KiB per frame. Every HTTP/2 connection nacosd opens or
//! accepts uses it: the client and peer ports' accepted connections
//! ([`ServerConn`](crate::tls::ServerConn)) and the peer channels' connections
//! ([`plain_connector`], [`crate::tls::connector`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::codegen::http::Uri;

use crate::config::DEFAULT_PEER_PORT;

/// `T`, reporting that it takes no vectored writes (see the module docs).
pub struct Unvectored<T>(pub T);

impl<T: AsyncRead + Unpin> AsyncRead for Unvectored<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Unvectored<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The host (without an IPv6 literal's brackets) and port of a peer URI; the port is
/// the peer port's default when the URI names none.
pub fn host_port(uri: &Uri) -> io::Result<(String, u16)> {
    let host = uri
        .host()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "peer URI has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok((host, uri.port_u16().unwrap_or(DEFAULT_PEER_PORT)))
}

/// TCP to `host` and `port` (resolved on each connect), without delay.
pub async fn connect_tcp(host: &str, port: u16) -> io::Result<TcpStream> {
    let tcp = TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// A connector for tonic's `Endpoint::connect_with_connector_lazy` without TLS: what
/// tonic's own connector does for an `http://` peer (TCP, no delay), on an
/// [`Unvectored`] stream.
#[allow(clippy::type_complexity)]
pub fn plain_connector() -> impl tower::Service<
    Uri,
    Response = TokioIo<Unvectored<TcpStream>>,
    Error = io::Error,
    Future = futures::future::BoxFuture<'static, io::Result<TokioIo<Unvectored<TcpStream>>>>,
> + Clone
       + Send
       + 'static {
    tower::service_fn(move |uri: Uri| {
        let fut: futures::future::BoxFuture<'static, _> = Box::pin(async move {
            let (host, port) = host_port(&uri)?;
            Ok(TokioIo::new(Unvectored(connect_tcp(&host, port).await?)))
        });
        fut
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn host_and_port_of_peer_uris() {
        let hp = |s: &str| host_port(&s.parse::<Uri>().expect("uri")).expect("host");
        assert_eq!(hp("http://10.0.0.1:7000"), ("10.0.0.1".to_string(), 7000));
        assert_eq!(hp("http://[::1]:7001"), ("::1".to_string(), 7001));
        assert_eq!(
            hp("http://nacosd-0.nacosd"),
            ("nacosd-0.nacosd".to_string(), 7848)
        );
        assert!(host_port(&Uri::from_static("/no/host")).is_err());
    }

    #[tokio::test]
    async fn says_it_is_not_vectored_and_carries_bytes_both_ways() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let host = addr.ip().to_string();
        let (connected, accepted) =
            tokio::join!(connect_tcp(&host, addr.port()), listener.accept());
        let mut client = Unvectored(connected.expect("connect"));
        let mut server = Unvectored(accepted.expect("accept").0);
        assert!(client.0.is_write_vectored());
        assert!(!client.is_write_vectored());
        client.write_all(b"ping").await.expect("write");
        let mut got = [0u8; 4];
        server.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"ping");
        server.write_all(b"pong").await.expect("write");
        client.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"pong");
    }
}
