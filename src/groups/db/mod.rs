//! The `embedded_db` group: a replicated SQLite database.
//!
//! - `model`: values, statements, commands, queries and replies.
//! - `client`: the write and the read as typed requests for [`crate::groups::client`].
//! - `rules`: what may run (server-managed transactions, internal tables, functions
//!   of the connection's history, limits), checked before proposing and again while
//!   applying.
//! - `determinism`: the apply connection's random and date/time functions, fed by the
//!   log entry so every replica computes the same values.
//! - `sqlite`: the [`StateMachine`](crate::raft::group::StateMachine) over a SQLite
//!   file in the group's directory.
//!
//! Every node runs the bundled SQLite, so the same log gives the same database. A
//! batch of statements is one transaction; each command runs inside a savepoint so a
//! failing statement rolls back its whole batch and nothing else. The applied position
//! is stored in the same SQLite transaction as the data. SQLite commits with
//! `synchronous=FULL` because this state is not covered by the RocksDB WAL sync that
//! guards log purging.

pub mod client;
pub mod determinism;
pub mod model;
pub mod rules;
pub mod sqlite;

pub use model::*;
pub use sqlite::SqliteStateMachine;
