//! The calling side of mutual TLS on the peer port.

use std::io;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;
use tonic::codegen::http::Uri;

use crate::tls::Reloading;
use crate::unvectored::{connect_tcp, host_port, Unvectored};

/// A connector for tonic's `Endpoint::connect_with_connector_lazy`: TCP to the URI's
/// host and port, then a TLS handshake with the configuration current at that moment
/// (so a rotated certificate is used from the next connection on). The peer's
/// certificate must name the host of its advertised address (a DNS name or an IP).
/// The stream is [`Unvectored`]: HTTP/2 coalesces small frames.
#[allow(clippy::type_complexity)]
pub fn connector(
    tls: Arc<Reloading<ClientConfig>>,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<Unvectored<TlsStream<TcpStream>>>,
    Error = io::Error,
    Future = futures::future::BoxFuture<
        'static,
        io::Result<TokioIo<Unvectored<TlsStream<TcpStream>>>>,
    >,
> + Clone
       + Send
       + 'static {
    tower::service_fn(move |uri: Uri| {
        let tls = tls.clone();
        let fut: futures::future::BoxFuture<'static, _> = Box::pin(async move {
            let (host, port) = host_port(&uri)?;
            let name = ServerName::try_from(host.clone()).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("peer host {host:?}: {e}"),
                )
            })?;
            let tcp = connect_tcp(&host, port).await?;
            let stream = tokio_rustls::TlsConnector::from(tls.current())
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(Unvectored(stream)))
        });
        fut
    })
}
