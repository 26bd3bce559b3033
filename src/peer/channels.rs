//! Connections to peers: two lazily connected HTTP/2 channels per peer address, shared
//! by every group and by forwarding.
//!
//! - The **control** lane carries votes, heartbeats and small appends, forwarded
//!   writes and reads, read-index requests and cluster operations.
//! - The **bulk** lane carries snapshot streams and append batches above
//!   [`BULK_APPEND_BYTES`].
//!
//! Control-lane connections run on the node's control runtime (`raft::control`) when
//! one is given ([`PeerChannels::on_control_runtime`]), beside the Raft groups they
//! serve; bulk ones on the runtime of their first caller.
//!
//! HTTP/2 multiplexes streams, but all of a connection's streams share one TCP send
//! buffer and one connection-level flow-control window: a heartbeat queued behind
//! megabytes of snapshot data arrives late, a follower's election timer fires and the
//! leader's lease lapses. Two TCP connections keep the small, latency-critical traffic
//! clear of the bulk transfers.
//!
//! Addresses are `host:port` and may be DNS names, resolved on each (re)connect, so a
//! peer that comes back with a new IP under the same name is reached without any
//! membership change (Nacos issues #10514, #12504).
//!
//! With mutual TLS configured (`Config::peer_tls`) every new connection presents this
//! node's certificate and checks the peer's against the cluster CA, with the
//! certificate files as they are at that moment (`tls::Reloading`). Either way the
//! connection is [`unvectored`]: small frames (forwarded writes, acknowledgements)
//! leave together.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_rustls::rustls::ClientConfig;
use tonic::transport::{Channel, Endpoint};

use crate::tls::{self, Reloading};
use crate::unvectored;

/// Append batches larger than this (encoded) travel on the bulk lane.
pub const BULK_APPEND_BYTES: usize = 256 << 10;

/// Which connection to a peer a call uses (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    Control,
    Bulk,
}

/// One lazily connected channel per peer address and lane.
#[derive(Clone, Default)]
pub struct PeerChannels {
    channels: Arc<Mutex<HashMap<(String, Lane), Channel>>>,
    /// Mutual TLS to peers; `None`: plaintext.
    tls: Option<Arc<Reloading<ClientConfig>>>,
    /// Where control-lane connections run; `None`: where they are first used.
    control: Option<tokio::runtime::Handle>,
}

impl PeerChannels {
    /// Channels that speak mutual TLS with `tls`, or plaintext without it.
    pub fn new(tls: Option<Arc<Reloading<ClientConfig>>>) -> Self {
        PeerChannels {
            channels: Arc::default(),
            tls,
            control: None,
        }
    }

    /// Run the control-lane connections on `runtime` (the node's control runtime).
    pub fn on_control_runtime(mut self, runtime: tokio::runtime::Handle) -> Self {
        self.control = Some(runtime);
        self
    }

    /// The channel to `addr` (`host:port`) on `lane`, created on first use.
    pub fn channel(&self, addr: &str, lane: Lane) -> Result<Channel, tonic::transport::Error> {
        let mut map = crate::lock(&self.channels);
        if let Some(ch) = map.get(&(addr.to_string(), lane)) {
            return Ok(ch.clone());
        }
        let (conn_window, stream_window) = match lane {
            // Small messages: default-sized windows are plenty.
            Lane::Control => (2 << 20, 1 << 20),
            Lane::Bulk => (16 << 20, 8 << 20),
        };
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(2))
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .initial_connection_window_size(Some(conn_window))
            .initial_stream_window_size(Some(stream_window));
        // The channel's worker (and so its connection) is spawned where it is made.
        let _on_control = match (lane, &self.control) {
            (Lane::Control, Some(rt)) => Some(rt.enter()),
            _ => None,
        };
        let ch = match &self.tls {
            Some(tls) => endpoint.connect_with_connector_lazy(tls::connector(tls.clone())),
            None => endpoint.connect_with_connector_lazy(unvectored::plain_connector()),
        };
        map.insert((addr.to_string(), lane), ch.clone());
        Ok(ch)
    }
}
