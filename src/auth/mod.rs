//! Client authentication and authorization on the client port (issue #18).
//!
//! - `model`: users, roles, permissions and the signing key as the config group stores
//!   them, the auth commands and reads, and the input rules.
//! - `apply`: their deterministic apply and query, called by the config group's
//!   processor.
//! - `client`: the operations as typed requests of the config group.
//! - `password`: argon2id hashing, on the blocking pool.
//! - `token`: HMAC-SHA256 signed login tokens.
//! - `guard`: [`Auth`], which every handler asks who is calling ([`Principal`]) and
//!   whether they may.
//!
//! Why the config group: users, roles and the signing key must be the same on every
//! node, so they are replicated; they are small, rarely written configuration, and
//! the config group's state machine snapshots its whole column family, so they travel
//! in its snapshots with no new Raft group (and no extra elections or heartbeats).
//! They live under their own key prefix (`A`), which no config API can name.
//!
//! What it does not do: no client-certificate authentication on the client port (the
//! peer port's mutual TLS is for nodes only); no token revocation list (tokens are
//! short-lived; deleting the user or changing the password revokes them); the
//! gRPC health and reflection services stay open (they reveal no data).

pub(crate) mod apply;
pub mod client;
pub mod guard;
pub mod model;
pub mod password;
pub mod token;

pub use guard::{Auth, Principal};
pub use model::{Access, Resource};
