//! Concurrent clients: for each group and each node, `clients_per_node` tasks in a
//! closed loop, each bound to one node's client port, recording every operation in
//! the shared [`Recorder`] — invoked before the request leaves, completed when the
//! answer (or its absence) is known.
//!
//! Client ids read `GNK`: group `G` (1 config, 2 naming, 3 db), node `N`, and `K`, the
//! client's number on that node, which reads at `read_levels[K % len]` (by default an
//! even `K` at LINEARIZABLE, an odd one at LEASE). So a violation's ops say by
//! themselves which node served them and at which level. (Final reads after the run
//! use `9GN`, see `verify`.)
//!
//! Keys are fresh per run (the run id is in every name) and rotate every
//! `epoch` so each key's history stays small for the checker; values are unique per
//! write (`<run>.<client>.<seq>`), which the checker's fast path relies on.
//!
//! A compare-and-swap expects the value this client last saw on the key, so that it
//! succeeds often enough to matter.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::history::{OkResult, OpKind, Recorder};
use super::ops::{CallError, Failure, Group, Key, Target, Write, Written};
use crate::bench::client::Rng;
use crate::pb;

/// How the clients behave.
#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    pub run_id: String,
    pub seed: u64,
    pub clients_per_node: usize,
    /// Keys per group and epoch (naming: a multiple of its slots is used).
    pub keys: u32,
    pub epoch: Duration,
    pub op_timeout: Duration,
    /// Mean pause between a client's operations.
    pub think: Duration,
    /// Read levels, assigned to a node's clients in turn.
    pub read_levels: Vec<pb::Consistency>,
}

/// Error codes seen, by group: `code -> count`.
pub type CodeCounts = BTreeMap<Group, BTreeMap<String, u64>>;

/// The failed calls of a run: counted by code, and one line each for `errors.log`.
#[derive(Debug, Clone, Default)]
pub struct Errors {
    pub counts: CodeCounts,
    /// `<seconds on the history's clock> client <id> <op> <key>: <code> <message>`.
    pub log: Vec<String>,
}

/// Pause after a failed call: this much plus a random share of it, in milliseconds.
const ERROR_BACKOFF_MS: u64 = 50;

/// The running clients.
pub struct Workload {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    started: Instant,
    spec: WorkloadSpec,
    errors: Arc<Mutex<Errors>>,
}

/// The read level of client `k` on a node: `levels[k % levels.len()]`.
pub fn level_of(levels: &[pb::Consistency], k: usize) -> pb::Consistency {
    levels
        .get(k % levels.len().max(1))
        .copied()
        .unwrap_or(pb::Consistency::Linearizable)
}

pub fn client_id(group: Group, node: usize, k: usize) -> u32 {
    let g = match group {
        Group::Config => 1,
        Group::Naming => 2,
        Group::Db => 3,
    };
    (g * 100 + node * 10 + k) as u32
}

impl Workload {
    /// Starts the clients against `channels` (one per node, node `i` at index `i - 1`).
    pub fn start(
        spec: WorkloadSpec,
        channels: Vec<tonic::transport::Channel>,
        recorder: Recorder,
    ) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(Mutex::new(Errors::default()));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for group in Group::ALL {
            for (n, channel) in channels.iter().enumerate() {
                for k in 0..spec.clients_per_node {
                    let id = client_id(group, n + 1, k);
                    let client = Client {
                        id,
                        group,
                        level: level_of(&spec.read_levels, k),
                        target: Target {
                            run_id: spec.run_id.clone(),
                            channel: channel.clone(),
                            timeout: spec.op_timeout,
                        },
                        rng: Rng::new(spec.seed ^ (u64::from(id) << 32)),
                        recorder: recorder.clone(),
                        seen: HashMap::new(),
                        seq: 0,
                        errors: errors.clone(),
                    };
                    let stop = stop.clone();
                    let spec = spec.clone();
                    tasks.push(tokio::spawn(client.run(spec, started, stop)));
                }
            }
        }
        Workload {
            stop,
            tasks,
            started,
            spec,
            errors,
        }
    }

    /// Stops the clients and waits for their last operations to finish.
    pub async fn stop(self) -> (Vec<Key>, Errors) {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            let _ = task.await;
        }
        let epochs = epoch_at(self.started.elapsed(), self.spec.epoch);
        let errors = self
            .errors
            .lock()
            .map(|mut e| std::mem::take(&mut *e))
            .unwrap_or_default();
        (all_keys(&self.spec, epochs), errors)
    }
}

/// Every key of epochs `0..=last`, in every group.
pub fn all_keys(spec: &WorkloadSpec, last: u32) -> Vec<Key> {
    let mut keys = Vec::new();
    for group in Group::ALL {
        for epoch in 0..=last {
            for index in 0..keys_per_epoch(spec, group) {
                keys.push(Key {
                    group,
                    epoch,
                    index,
                });
            }
        }
    }
    keys
}

fn keys_per_epoch(spec: &WorkloadSpec, group: Group) -> u32 {
    match group {
        Group::Naming => {
            let slots = super::ops::NAMING_SLOTS;
            spec.keys.div_ceil(slots).max(1) * slots
        }
        _ => spec.keys.max(1),
    }
}

fn epoch_at(elapsed: Duration, epoch: Duration) -> u32 {
    (elapsed.as_millis() / epoch.as_millis().max(1)) as u32
}

struct Client {
    id: u32,
    group: Group,
    level: pb::Consistency,
    target: Target,
    rng: Rng,
    recorder: Recorder,
    /// The last value this client knows each key held.
    seen: HashMap<Key, Option<String>>,
    seq: u64,
    errors: Arc<Mutex<Errors>>,
}

impl Client {
    async fn run(mut self, spec: WorkloadSpec, started: Instant, stop: Arc<AtomicBool>) {
        let keys = keys_per_epoch(&spec, self.group);
        while !stop.load(Ordering::SeqCst) {
            let key = Key {
                group: self.group,
                epoch: epoch_at(started.elapsed(), spec.epoch),
                index: self.rng.below(u64::from(keys)) as u32,
            };
            let roll = self.rng.below(100);
            let answered = if roll < 40 {
                self.read(&key).await
            } else {
                let write = self.next_write(&key, roll);
                self.write(&key, write).await
            };
            let think = spec.think.as_millis() as u64;
            // After an error, back off like a real client would, rather than spin
            // against a dead node's closed port.
            let pause = if answered {
                self.rng.below(2 * think + 1)
            } else {
                ERROR_BACKOFF_MS + self.rng.below(ERROR_BACKOFF_MS)
            };
            if pause > 0 {
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }
    }

    /// Writes: 60% of operations; puts, deletes and (where supported) swaps.
    fn next_write(&mut self, key: &Key, roll: u64) -> Write {
        self.seq += 1;
        let value = format!("{}.{}.{}", self.target.run_id, self.id, self.seq);
        let cas = self.group.supports_cas();
        match roll {
            40..=69 => Write::Put(value),
            70..=79 => Write::Delete,
            _ if cas => Write::Cas {
                expect: self.seen.get(key).cloned().flatten(),
                value,
            },
            _ => Write::Put(value),
        }
    }

    /// Whether the server answered (an answer that the write was refused counts).
    async fn write(&mut self, key: &Key, write: Write) -> bool {
        let kind = match &write {
            Write::Put(value) => OpKind::Put {
                value: value.clone(),
            },
            Write::Delete => OpKind::Delete,
            Write::Cas { expect, value } => OpKind::Cas {
                expect: expect.clone(),
                value: value.clone(),
            },
        };
        let pending = self.recorder.invoke(self.id, key.name(), kind);
        match self.target.write(key, &write).await {
            Ok(Written::Done) => {
                pending.ok(OkResult::Written);
                let after = match write {
                    Write::Put(v) => Some(v),
                    _ => None,
                };
                self.seen.insert(*key, after);
                true
            }
            Ok(Written::Swapped(swapped)) => {
                pending.ok(OkResult::Swapped(swapped));
                if let (true, Write::Cas { value, .. }) = (swapped, write) {
                    self.seen.insert(*key, Some(value));
                } else {
                    // A mismatch: what we knew is stale.
                    self.seen.remove(key);
                }
                true
            }
            Err(e) => {
                self.note(&e, "write", key);
                match e.failure {
                    Failure::NotApplied => pending.fail(),
                    Failure::Unknown => pending.unknown(),
                }
                self.seen.remove(key);
                false
            }
        }
    }

    /// Whether the read succeeded.
    async fn read(&mut self, key: &Key) -> bool {
        let set = key.read_set();
        let pendings: Vec<_> = set
            .iter()
            .map(|k| self.recorder.invoke(self.id, k.name(), OpKind::Get))
            .collect();
        match self.target.read(key, self.level).await {
            Ok(values) => {
                for (pending, (k, value)) in pendings.into_iter().zip(values) {
                    self.seen.insert(k, value.clone());
                    pending.ok(OkResult::Read(value));
                }
                true
            }
            Err(e) => {
                self.note(&e, "read", key);
                // A read that failed observed nothing; either outcome is ignored.
                for pending in pendings {
                    match e.failure {
                        Failure::NotApplied => pending.fail(),
                        Failure::Unknown => pending.unknown(),
                    }
                }
                false
            }
        }
    }

    fn note(&self, e: &CallError, op: &str, key: &Key) {
        let at = self.recorder.now() as f64 / 1e9;
        if let Ok(mut errors) = self.errors.lock() {
            *errors
                .counts
                .entry(self.group)
                .or_default()
                .entry(e.code.clone())
                .or_default() += 1;
            errors.log.push(format!(
                "{at:.3} client {} {op} {}: {} {}",
                self.id,
                key.name(),
                e.code,
                e.message
            ));
        }
    }
}
