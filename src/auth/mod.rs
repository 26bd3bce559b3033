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
//!   whether they may: the user of a token, or of a client certificate.
//! - `limit`: failed logins limited per user name and per client address.
//!
//! Why the config group: users, roles and the signing key must be the same on every
//! node, so they are replicated; they are small, rarely written configuration, and
//! the config group's state machine snapshots its whole column family, so they travel
//! in its snapshots with no new Raft group (and no extra elections or heartbeats).
//! They live under their own key prefix (`A`), which no config API can name.
//!
//! Client certificates (`--client-ca`): a certificate signed by the client CA is the
//! user its subject common name names, as in etcd; the CN, not a SAN, because a
//! certificate for a person or a service account has no host name, and cert-manager
//! and openssl set the CN directly. The user must exist (its roles apply; its password
//! is not involved). The peer port's CA is a separate trust root (see `tls`).
//!
//! What it does not do: no token revocation list (tokens are short-lived; deleting
//! the user or changing the password revokes them); no certificate revocation list
//! (deleting the user is how to shut a certificate out before it expires); the
//! gRPC health and reflection services stay open (they reveal no data).

pub(crate) mod apply;
pub mod client;
pub mod guard;
pub mod limit;
pub mod model;
pub mod password;
pub mod token;

pub use guard::{Auth, Principal};
pub use model::{Access, Resource};
