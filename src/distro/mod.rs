//! The AP side of the registry: client sessions (leases) and their ephemeral instances,
//! replicated between nodes with a Distro-style protocol (Nacos 2.x), beside the CP
//! side that Raft keeps (persistent instances, config, embedded DB).
//!
//! - A session is **owned** by the node where it was opened; only that node changes it
//!   (keep-alives, registrations, close, expiry). Each node holds a full copy of every
//!   other node's sessions and answers reads from it; there is no leader and no quorum,
//!   so both sides of a partition keep accepting their own sessions' registrations.
//! - **Sync.** Each change of an owned session schedules one task per (session, other
//!   node) (`tasks`); a task waits the sync delay, merging later changes, then sends the
//!   session's current state (or its deletion): as a delta from the revision the
//!   target last confirmed when the owner's journal still covers it (`journal`), whole
//!   otherwise. A target that does not hold the delta's base says so and gets the
//!   session whole. Due tasks are batched per target, one
//!   call in flight per target, so a slow peer does not hold others back. Failed sends
//!   retry with a growing backoff while the target is a member.
//! - **Verify.** Every verify interval each node sends every other node the list of
//!   sessions it owns with their revisions. The receiver vouches for the ones it holds
//!   at that revision, asks for those it misses or holds older (sent at once), and drops
//!   the ones the owner no longer lists. Replicas nobody vouched for within the replica
//!   expiry are dropped: that is how a dead node's sessions disappear.
//! - **Startup.** A node loads a snapshot of the ephemeral data from one peer before it
//!   reports its ephemeral data ready (readiness includes it), retrying after the load
//!   retry delay; alone in its cluster it is ready at once. It sends no verify before.
//! - **Health.** A session without keep-alive for part of its TTL makes its instances
//!   unhealthy; at the TTL it expires on its owner, which replicates the deletion.
//!
//! What it does not do: persist anything. Ephemeral data is memory-only by design: a
//! restarted node's own sessions are gone (its clients open new sessions and register
//! again, as Nacos clients redo theirs), and the changes an owner acknowledged but had
//! not yet synced when it crashed are lost with it.
//!
//! Modules: `store` (the data and its rules, no I/O), `tasks` (the delayed, merged sync
//! tasks), `engine` (the node's [`Distro`]: API for the client services and the loops),
//! `wire` (the peer messages, both sides), `metrics`.

pub mod engine;
pub(crate) mod journal;
pub(crate) mod metrics;
pub(crate) mod store;
pub(crate) mod tasks;
pub(crate) mod wire;

pub use engine::Distro;
pub use store::{EphemeralChange, EphemeralInstance, SessionData, SessionId};
