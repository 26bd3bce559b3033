//! The fault-injection suite (`nacosd-chaos`, `scripts/chaos.sh`, `docs/FAULTS.md`):
//! real nacosd processes on real addresses, concurrent clients on every node and every
//! group, faults drawn from a seed, and a linearizability checker over what the
//! clients saw.
//!
//! - [`net`]: a network namespace per node on a bridge the harness creates; iptables
//!   partitions; cleanup, also of a crashed run's leftovers.
//! - [`node`], [`cluster`]: the nacosd processes (kill -9, SIGSTOP, restart with the
//!   same data and flags) and their ClusterService/Status.
//! - [`ops`]: each group as registers through the real gRPC API, and which errors
//!   mean "not applied" versus "outcome unknown".
//! - [`workload`]: the clients, recording every op in a [`history::Recorder`].
//! - [`nemesis`], [`disk`]: the faults.
//! - [`verify`]: final linearizable reads into the history, convergence of the nodes.
//! - [`history`], [`checker`]: the history and the linearizability checker; plain data
//!   and algorithms, tested without a cluster.
//! - [`summary`]: the tables; [`runner`]: one run end to end; [`failover`]: the
//!   write-gap measurement.
//!
//! What it does not do: faults on more than one thing at a time, clock skew (every
//! node shares the host's clock, so LEASE reads are checked under the assumption they
//! make), membership changes, or faults inside the storage engine (the full disk is the
//! only I/O fault). A clean run shows these faults did not break linearizability
//! in this run; it proves nothing beyond.

pub mod checker;
pub mod cluster;
pub(crate) mod disk;
pub(crate) mod etcd;
pub(crate) mod failover;
pub mod history;
pub mod nemesis;
pub mod net;
pub mod node;
pub(crate) mod ops;
pub mod runner;
pub(crate) mod streams;
pub(crate) mod summary;
pub(crate) mod verify;
pub(crate) mod workload;

pub use node::System;
