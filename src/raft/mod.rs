//! The multi-raft layer: one openraft node per processor group, all sharing one
//! RocksDB (one WAL), one peer gRPC server and one channel per peer.
//!
//! This layer moves opaque bytes. It never knows what a group stores: groups plug in
//! through [`group::StateMachine`] (or the simpler [`rocks_sm::Processor`]) and the
//! [`group::GroupRegistry`].
//!
//! Map:
//! - `types`: openraft type config, the log entry payload ([`types::Command`]).
//! - `keys`: the whole RocksDB key layout.
//! - `rocks`: opening RocksDB; the group-commit WAL syncer; the close signal.
//! - `identity`: the cluster id and this node's identity, stored with the log.
//! - `log_store`: openraft log + vote storage (durable before acknowledged).
//! - `group`, `rocks_sm`: the state-machine traits and the RocksDB-backed
//!   implementation.
//! - `state_machine`: the adapter from a group's state machine to openraft.
//! - `snapshot`: atomic, checksummed snapshot files.
//! - `stages`: per-group commit and apply timing (where a write's time goes).
//! - `node`: building, initializing and shutting down a node's groups.
//!
//! The peer protocol (both sides, and openraft's network) is in [`crate::peer`];
//! bootstrap and membership changes, which span every group, in [`crate::cluster`].

pub mod control;
pub mod group;
pub mod hot_keys;
pub mod identity;
pub mod keys;
pub mod log_cache;
pub mod log_store;
pub mod node;
pub mod rocks;
pub mod rocks_sm;
pub mod snapshot;
pub mod stages;
pub mod state_machine;
pub mod types;
