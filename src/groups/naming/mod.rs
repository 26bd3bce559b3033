//! The `naming_persistent` group: services and their persistent instances (Nacos's
//! `PersistentClientOperationServiceImpl` plus service metadata), and the change feed
//! behind `Subscribe`.
//!
//! - `model`: records, commands, queries and their replies, the key layout inside the
//!   group.
//! - `client`: the operations as typed requests for [`crate::groups::client`].
//! - `validate`: the documented input rules, applied before proposing.
//! - `processor`: deterministic apply and query.
//! - `subscribe`: the Subscribe engine over the node's change feed.
//!
//! Every change to a service or its instances sets the service's `revision` to the Raft
//! log index of the change. A subscriber that reconnects with the last index it saw
//! gets a fresh full state whenever the service's revision moved past it; per-change
//! history is not kept, so the full state is how missed changes are delivered.

pub mod client;
pub mod model;
pub mod processor;
pub mod subscribe;
pub mod validate;

pub use model::*;
pub use processor::NamingProcessor;

pub type NamingFeed = crate::groups::feed::Feed<NamingChange>;
