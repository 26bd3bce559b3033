//! The multi-raft layer: one openraft node per processor group, all sharing one
//! RocksDB (one WAL), one peer gRPC server and one channel per peer.
//!
//! This layer moves opaque bytes. It never knows what a group stores: groups plug in
//! through [`group::StateMachine`] (or the simpler [`kv::Processor`]) and the
//! [`group::GroupRegistry`].
//!
//! Map:
//! - `types`: openraft type config, the log entry payload ([`types::Command`]).
//! - `keys`: the whole RocksDB key layout.
//! - `db`: opening RocksDB; the group-commit WAL syncer.
//! - `log_store`: openraft log + vote storage (durable before acknowledged).
//! - `group`, `kv`: the state-machine traits and the RocksDB-backed implementation.
//! - `state_machine`: the adapter from a group's state machine to openraft.
//! - `snapshot`: atomic, checksummed snapshot files.
//! - `network`, `peer_service`: the peer protocol, client and server side.
//! - `node`: building, bootstrapping and shutting down a node's groups.
//!
//! Not here (yet): membership changes (learner → voter) and `--join`.

pub mod db;
pub mod group;
pub mod keys;
pub mod kv;
pub mod log_store;
pub mod network;
pub mod node;
pub mod peer_service;
pub mod snapshot;
pub mod state_machine;
pub mod types;
