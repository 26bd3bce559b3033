//! nacosd: the consistency core of a Nacos-style service registry and configuration
//! center.
//!
//! Layers, outside in:
//! - [`api`]: thin gRPC services on the client port.
//! - [`consistency`]: where a write or read goes (leader, forwarding, read-index).
//! - [`cluster`]: bootstrap, membership changes and cluster operations, for every
//!   group at once.
//! - [`peer`]: the peer protocol between nodes, both sides.
//! - [`raft`]: one openraft node per processor group over RocksDB.
//! - [`groups`]: the state machines of the processor groups.
//! - [`distro`]: the AP side: client sessions and their ephemeral instances, kept in
//!   memory and replicated between nodes without Raft.
//! - [`nacos`]: the Nacos 2.x client protocol beside `nacosd.v1` on the client port.
//!
//! [`server`] wires them to sockets ([`conns`]: connections a shutdown can cut; [`tls`]:
//! TLS on every port; [`unvectored`]: HTTP/2 writes that coalesce small frames; [`idle`]:
//! giving memory back when the node falls idle);
//! [`config`] is the typed configuration; [`codec`] the one binary encoding; [`error`]
//! the one error type. `docs/ARCHITECTURE.md` follows a write and a read through them.

/// The builder of nacosd's multi-threaded tokio runtimes (the client runtime, each
/// node's control runtime).
///
/// The LIFO slot is off (with `--cfg tokio_unstable`, which `.cargo/config.toml` sets):
/// with it, a task woken by a running task runs next on the same worker, so when one
/// task answers a batch of waiters (a committed batch of writes, a read index shared by
/// many reads) each waiter's handler ran and woke its connection's task, which ran
/// next and flushed that one reply: a system call, and on loopback a wake-up of the
/// peer, per reply. Without it the woken tasks queue in order, and a connection's task
/// finds the replies of every handler that ran before it. `bench/ab.sh` against the
/// build with the slot (docs/BENCHMARKS.md): publish at 64 clients 1.15-1.21× in four
/// rounds of four, CPU per publish 260 -> 227 µs; linearizable get 1.02-1.05×; one
/// client not slower.
pub fn runtime_builder() -> tokio::runtime::Builder {
    #[allow(unused_mut)] // mutated only with tokio_unstable
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder
}

pub(crate) mod api;
pub mod auth;
pub mod bench;
pub mod chaos;
pub mod cluster;
pub mod codec;
pub mod config;
pub(crate) mod conns;
pub mod consistency;
pub mod distro;
pub mod error;
pub mod groups;
pub mod http;
pub mod idle;
pub mod metrics;
pub mod nacos;
pub mod pb;
pub mod peer;
pub mod raft;
pub mod server;
pub mod tls;
pub mod unvectored;

pub use error::{Error, Result};

/// Locks `m`, also after a thread panicked while holding it. nacosd's mutexes guard
/// data that is consistent between statements (no invariant spans a point that can
/// panic), so a poisoned lock is used as it is rather than spreading the panic.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    /// Tasks a running task wakes run in the order it woke them: with tokio's LIFO
    /// slot the last one would jump ahead of the others (see `runtime_builder`).
    #[test]
    fn runtime_tasks_woken_by_a_task_run_in_order() {
        let runtime = super::runtime_builder()
            .worker_threads(1)
            .build()
            .expect("runtime");
        let order = Arc::new(Mutex::new(Vec::new()));
        let seen = order.clone();
        runtime.block_on(async move {
            // Spawned from a task on the worker, so that the spawns are its wake-ups.
            tokio::spawn(async move {
                let tasks: Vec<_> = (0..3)
                    .map(|i| {
                        let seen = seen.clone();
                        tokio::spawn(async move { super::lock(&seen).push(i) })
                    })
                    .collect();
                for task in tasks {
                    task.await.expect("task");
                }
            })
            .await
            .expect("spawner");
        });
        assert_eq!(
            *super::lock(&order),
            vec![0, 1, 2],
            "woken tasks ran out of order: the runtime keeps tokio's LIFO slot (built without --cfg tokio_unstable, e.g. a RUSTFLAGS replacing .cargo/config.toml's?)"
        );
    }
}
