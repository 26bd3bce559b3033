//! The control runtime: a tokio runtime of its own for the Raft control path of a
//! node — every group's openraft tasks (core, replication streams, heartbeats, the
//! state-machine worker), the peer port's server and the peers' control-lane
//! connections.
//!
//! Why: tokio schedules tasks, not priorities. On the client runtime, a heartbeat
//! (received, handed to the group's core, answered) queues behind every client request
//! that is ready to run; at 20,000 registrations per second on two shared cores that
//! queue held heartbeats past their timeout and followers started elections, although
//! the Raft groups had nothing to do with the load. On its own threads the control
//! path waits only for the operating system's scheduler, which shares the CPU between
//! threads fairly whatever the client runtime's backlog.
//!
//! The runtime lives as long as the node: [`ControlRuntime::stop`] (or dropping it)
//! ends whatever still runs on it without blocking, so it is safe from async code.

use std::future::Future;
use std::io;
use std::sync::Mutex;

use tokio::runtime::{Handle, Runtime};

pub struct ControlRuntime {
    handle: Handle,
    runtime: Mutex<Option<Runtime>>,
}

impl ControlRuntime {
    /// A runtime of `threads` workers (`--raft-threads`), never more than the CPU
    /// cores: more would only add switches between threads that cannot all run.
    pub fn start(node_id: u64, threads: usize) -> io::Result<Self> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let runtime = crate::runtime_builder()
            .worker_threads(threads.clamp(1, cores))
            .thread_name(format!("raft-n{node_id}"))
            .enable_all()
            .build()?;
        Ok(ControlRuntime {
            handle: runtime.handle().clone(),
            runtime: Mutex::new(Some(runtime)),
        })
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Run `fut` on the control runtime and wait for it. Tasks it spawns stay there.
    pub async fn run<F>(&self, fut: F) -> io::Result<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle
            .spawn(fut)
            .await
            .map_err(|e| io::Error::other(format!("task on the control runtime failed: {e}")))
    }

    /// End every task still on the runtime, without waiting for them (they are dropped
    /// at their next await; blocking calls in flight finish on their own threads).
    pub fn stop(&self) {
        if let Some(rt) = crate::lock(&self.runtime).take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for ControlRuntime {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn runs_futures_on_its_own_threads_and_stops_from_async_code() {
        let control = ControlRuntime::start(7, 2).unwrap();
        let name = control
            .run(async { std::thread::current().name().map(str::to_string) })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("raft-n7"));
        // A task left running is ended by stop(), which must not block or panic here.
        let left = control.handle().spawn(std::future::pending::<()>());
        control.stop();
        assert!(left.await.unwrap_err().is_cancelled());
        drop(control);
    }
}
