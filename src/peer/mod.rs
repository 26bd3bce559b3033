//! The peer protocol: everything nodes say to each other on the peer port (default
//! 7848), both sides of it, in one place.
//!
//! - `wire`: the metadata every call carries (the sender's cluster id and node id) and
//!   the typed classification of call failures ("never sent" versus "may have been
//!   taken").
//! - `channels`: two lazily connected HTTP/2 channels per peer, a control lane and a
//!   bulk lane, shared by every group.
//! - `client`: the calling side, typed: forwarded writes and reads, read-index,
//!   Hello, cluster operations; every reply decoded the same way.
//! - `coalesce`: requests to a peer queued per key and sent together, several calls
//!   in flight, no timer; used by:
//! - `forward`: forwarded writes batched per leader and group;
//! - `read_index`: followers' read indexes, one call for the reads that queued
//!   before it.
//! - `raft_network`: openraft's network for one group over that client (append
//!   batches capped by bytes, size-aware deadlines, progress-bounded snapshots);
//! - `append_stream`: its replication sessions, pipelined on one bidirectional stream
//!   each, both sides.
//! - `server`: the receiving side, with admission by cluster identity first.
//!
//! Payloads are bincode through [`crate::codec`] inside the protobuf envelopes of
//! `proto/nacosd/v1/peer.proto` (the protocol is internal; both ends run the same
//! build). What a forwarded write or read *means* is decided by `consistency`; what a
//! cluster operation does, by `cluster`. This module only carries them.

mod append_stream;
pub mod channels;
pub mod client;
mod coalesce;
mod forward;
pub mod raft_network;
mod read_index;
pub(crate) mod server;
pub(crate) mod wire;

pub use client::PeerClient;
