//! `nacosd.v1.SessionService`: open, keep alive (unary and streamed) and close client
//! sessions on this node, which owns them (see `distro`).
//!
//! A later Nacos-compatible front end maps one Nacos 2.x client connection to one
//! session: it opens a session when the connection is set up, renews it on every
//! request and health check of that connection, and closes it when the connection
//! goes; the same [`Distro`] calls serve it.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::Auth;
use crate::distro::Distro;
use crate::pb;

pub struct SessionApi {
    distro: Arc<Distro>,
    auth: Arc<Auth>,
}

impl SessionApi {
    pub fn new(distro: Arc<Distro>, auth: Arc<Auth>) -> Self {
        SessionApi { distro, auth }
    }
}

type KeepAliveStream =
    Pin<Box<dyn Stream<Item = std::result::Result<pb::KeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::session_service_server::SessionService for SessionApi {
    async fn open_session(
        &self,
        req: Request<pb::OpenSessionRequest>,
    ) -> std::result::Result<Response<pb::OpenSessionResponse>, Status> {
        // A session changes nothing by itself (registering needs naming write), but
        // with --auth on only a known caller may hold one.
        self.auth.authenticate(&req).await?;
        let r = req.into_inner();
        let (id, ttl) = self
            .distro
            .open_session(&r.id, Duration::from_millis(r.ttl_ms))?;
        Ok(Response::new(pb::OpenSessionResponse {
            id,
            ttl_ms: ttl.as_millis() as u64,
            owner: self.distro.node_id(),
        }))
    }

    async fn keep_alive(
        &self,
        req: Request<pb::KeepAliveRequest>,
    ) -> std::result::Result<Response<pb::KeepAliveResponse>, Status> {
        // A session changes nothing by itself (registering needs naming write), but
        // with --auth on only a known caller may hold one.
        self.auth.authenticate(&req).await?;
        let r = req.into_inner();
        let ttl = self.distro.keep_alive(&r.id)?;
        Ok(Response::new(pb::KeepAliveResponse {
            id: r.id,
            ttl_ms: ttl.as_millis() as u64,
        }))
    }

    type KeepAliveStreamStream = KeepAliveStream;

    async fn keep_alive_stream(
        &self,
        req: Request<Streaming<pb::KeepAliveRequest>>,
    ) -> std::result::Result<Response<Self::KeepAliveStreamStream>, Status> {
        self.auth.authenticate(&req).await?;
        let mut incoming = req.into_inner();
        let distro = self.distro.clone();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Some(msg) = incoming.next().await {
                let reply = match msg {
                    Ok(r) => match distro.keep_alive(&r.id) {
                        Ok(ttl) => Ok(pb::KeepAliveResponse {
                            id: r.id,
                            ttl_ms: ttl.as_millis() as u64,
                        }),
                        Err(e) => Err(Status::from(e)),
                    },
                    // The client went away or broke the stream: nothing to answer.
                    Err(_) => return,
                };
                let end = reply.is_err();
                if tx.send(reply).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn close_session(
        &self,
        req: Request<pb::CloseSessionRequest>,
    ) -> std::result::Result<Response<pb::CloseSessionResponse>, Status> {
        // A session changes nothing by itself (registering needs naming write), but
        // with --auth on only a known caller may hold one.
        self.auth.authenticate(&req).await?;
        let r = req.into_inner();
        let n = self.distro.close_session(&r.id)?;
        Ok(Response::new(pb::CloseSessionResponse {
            instances_removed: n as u32,
        }))
    }
}
