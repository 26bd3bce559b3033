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
//! `synchronous=NORMAL` (WAL journal): a commit survives the process's crash, and a
//! power cut can only take the commits since the last checkpoint, leaving an earlier,
//! whole state. That is enough because nothing depends on the file being newer than
//! the group's last snapshot: the log is purged only up to a snapshot, a snapshot file
//! is synced before it counts, and at start openraft restores the snapshot when it is
//! newer than the file's applied position and re-applies the committed log after it
//! (tested: `a_database_that_lost_its_recent_commits_catches_up_when_it_starts`). One
//! fsync less per apply batch on every node, in the apply that each write waits for:
//! 9–15 % more db-insert throughput at 64 clients on a disk whose fsync takes 0.25 ms
//! (docs/BENCHMARKS.md, "The embedded DB's fsync").

pub mod client;
pub mod determinism;
pub mod model;
pub mod rules;
pub mod sqlite;

pub use model::*;
pub use sqlite::SqliteStateMachine;

/// Bytes of heap SQLite holds in this process, by its own count (all connections:
/// page caches, prepared statements, schemas).
pub fn sqlite_memory_bytes() -> u64 {
    // SAFETY: `sqlite3_memory_used` takes no arguments and reads SQLite's own counter,
    // which it guards with its memory mutex (the bundled build is thread-safe).
    let used = unsafe { rusqlite::ffi::sqlite3_memory_used() };
    u64::try_from(used).unwrap_or(0)
}
