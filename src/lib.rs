//! nacosd: the consistency core of a Nacos-style service registry and configuration
//! center.
//!
//! Layers, outside in:
//! - [`api`]: thin gRPC services on the client port.
//! - [`consistency`]: where a write or read goes (leader, forwarding, read-index).
//! - [`raft`]: one openraft node per processor group over RocksDB, one peer server.
//! - [`groups`]: the state machines of the processor groups.
//!
//! [`server`] wires them to sockets; [`config`] is the typed configuration; [`error`]
//! the one error type. `docs/ARCHITECTURE.md` follows a write and a read through them.

pub mod api;
pub mod bench;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod consistency;
pub mod error;
pub mod groups;
pub mod http;
pub mod pb;
pub mod peer;
pub mod raft;
pub mod server;

pub use error::{Error, Result};
