//! openraft's `RaftStateMachine` for every group: adapts a [`StateMachine`] and the
//! group's [`SnapshotDir`] to openraft.
//!
//! Blocking work (RocksDB/SQLite writes, snapshot files) runs on tokio's blocking pool
//! so the Raft core's tasks are never stalled by disk I/O. A failed apply returns the
//! I/O error to openraft, which stops the group: a committed entry that cannot be
//! applied must never be skipped.
//!
//! Snapshots are different: a failed *build* (a full disk, say) is not a reason to stop
//! a node whose log and state are intact. openraft treats a builder's error as fatal, so
//! the builder never returns one: it logs the failure, answers with the current
//! snapshot (which openraft then ignores as not newer), and further builds wait
//! [`BUILD_RETRY`] before they are tried again. Builds and installs of a group are
//! serialized: a build never copies a state machine that an install is replacing.
//!
//! An installed snapshot is made the group's current snapshot file *before* the state
//! machine is restored from it: if the restore is cut short by a crash, the file that
//! openraft restores from at the next start is the one that was being installed, never
//! an older one below the log's purge point.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};

use crate::raft::group::{ApplyItem, StateMachine};
use crate::raft::snapshot::{self, SnapshotDir, SnapshotFile};
use crate::raft::stages::StageClock;
use crate::raft::types::{
    AppliedState, CommandResult, LogId, SnapshotMeta, StoredMembership, TypeConfig,
};

type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotFile>;

/// How long snapshot builds pause after one failed. openraft asks the state machine
/// for a builder the same way for a policy-triggered build and for an operator's
/// `nacosctl snapshot`, so this pause applies to both: long enough that a full disk
/// does not turn into a build loop after every applied batch, short enough that an
/// operator's retry soon gets through.
pub const BUILD_RETRY: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct GroupStateMachine {
    group: Arc<str>,
    sm: Arc<dyn StateMachine>,
    snapshots: SnapshotDir,
    /// Serializes snapshot builds and installs of this group.
    snapshot_lock: Arc<tokio::sync::Mutex<()>>,
    /// When the last build failed.
    last_build_failure: Arc<Mutex<Option<Instant>>>,
    /// The state machine's applied state as of its last batch or restore, so that a
    /// batch need not read it back from storage (known after the first read).
    applied: Arc<Mutex<Option<AppliedState>>>,
    clock: StageClock,
}

impl GroupStateMachine {
    pub fn new(
        group: &str,
        sm: Arc<dyn StateMachine>,
        snapshots: SnapshotDir,
        clock: StageClock,
    ) -> Self {
        GroupStateMachine {
            group: group.into(),
            sm,
            snapshots,
            snapshot_lock: Arc::default(),
            last_build_failure: Arc::default(),
            applied: Arc::default(),
            clock,
        }
    }

    fn cached_applied(&self) -> std::sync::MutexGuard<'_, Option<AppliedState>> {
        crate::lock(&self.applied)
    }

    /// The applied state, from the cache or (the first time) from storage.
    async fn applied(&self) -> io::Result<AppliedState> {
        if let Some(state) = self.cached_applied().clone() {
            return Ok(state);
        }
        let sm = self.sm.clone();
        let state = blocking(move || sm.applied_state()).await?;
        *self.cached_applied() = Some(state.clone());
        Ok(state)
    }

    fn build_backing_off(&self) -> bool {
        crate::lock(&self.last_build_failure).is_some_and(|t| t.elapsed() < BUILD_RETRY)
    }

    /// Build a snapshot file now (on the blocking pool).
    async fn try_build(&self) -> io::Result<Snapshot> {
        let sm = self.sm.clone();
        let dir = self.snapshots.clone();
        let group = self.group.clone();
        blocking(move || {
            let mut source = sm.begin_snapshot()?;
            let applied = source.applied().clone();
            let meta = SnapshotMeta {
                last_log_id: applied.last_applied,
                last_membership: applied.membership.clone(),
            };
            let started = std::time::Instant::now();
            let file = dir.write(&meta, |w| source.write_to(w))?;
            tracing::info!(
                group = %group,
                index = ?meta.last_log_id.as_ref().map(|l| l.index),
                bytes = file.size().unwrap_or(0),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "built snapshot"
            );
            Ok(Snapshot {
                meta,
                snapshot: file,
            })
        })
        .await
    }
}

/// What the state machine is handed for one batch of committed entries.
fn apply_items(batch: &[EntryResponder<TypeConfig>]) -> Vec<ApplyItem<'_>> {
    batch
        .iter()
        .map(|(entry, _)| ApplyItem {
            index: entry.log_id.index,
            command: match &entry.payload {
                EntryPayload::Normal(cmd) => Some(cmd),
                _ => None,
            },
        })
        .collect()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("blocking task failed: {e}")))?
}

impl RaftSnapshotBuilder<TypeConfig> for GroupStateMachine {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let _serialized = self.snapshot_lock.lock().await;
        match self.try_build().await {
            Ok(snapshot) => {
                *crate::lock(&self.last_build_failure) = None;
                Ok(snapshot)
            }
            Err(e) => {
                tracing::error!(
                    group = %self.group,
                    error = %e,
                    retry_in_secs = BUILD_RETRY.as_secs(),
                    "building a snapshot failed; the node keeps running on its log and will try again"
                );
                *crate::lock(&self.last_build_failure) = Some(Instant::now());
                // Not newer than what openraft has: it changes nothing.
                let dir = self.snapshots.clone();
                let current = blocking(move || dir.latest()).await.ok().flatten();
                Ok(match current {
                    Some((meta, snapshot)) => Snapshot { meta, snapshot },
                    None => Snapshot {
                        meta: SnapshotMeta::default(),
                        snapshot: SnapshotFile {
                            path: std::path::PathBuf::new(),
                        },
                    },
                })
            }
        }
    }
}

impl RaftStateMachine<TypeConfig> for GroupStateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let state = self.applied().await?;
        Ok((state.last_applied, state.membership))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut batch = Vec::new();
        while let Some(item) = entries.try_next().await? {
            batch.push(item);
        }
        if batch.is_empty() {
            return Ok(());
        }
        let sm = self.sm.clone();
        let mut applied = self.applied().await?;
        for (entry, _) in &batch {
            applied.last_applied = Some(entry.log_id);
            if let EntryPayload::Membership(m) = &entry.payload {
                applied.membership = StoredMembership::new(Some(entry.log_id), m.clone());
            }
        }
        let entries = batch.len();
        if let Some(last) = &applied.last_applied {
            self.clock.committed_through(last.index);
        }
        let started = Instant::now();
        let after = applied.clone();
        // Tried on this thread first (small batches whose reads memory answers); on
        // the blocking pool otherwise (`raft::rocks_sm` module docs).
        let items = apply_items(&batch);
        let in_memory = sm.apply_in_memory(&items, &applied);
        drop(items);
        let path = if in_memory.is_some() {
            "memory"
        } else {
            "pool"
        };
        let outcome = match in_memory {
            Some(results) => results.map(|r| (batch, r)),
            None => {
                blocking(move || {
                    let items = apply_items(&batch);
                    let results = sm.apply(&items, &applied)?;
                    drop(items);
                    Ok((batch, results))
                })
                .await
            }
        };
        let (batch, results) = outcome.inspect_err(|e| {
            *self.cached_applied() = None;
            tracing::error!(group = %self.group, error = %e, "applying committed entries failed; stopping the group");
        })?;
        self.clock.applied(entries, path, started.elapsed());
        *self.cached_applied() = Some(after);

        let mut results = results.into_iter();
        for (entry, responder) in batch {
            let result = match entry.payload {
                EntryPayload::Normal(_) => results.next().ok_or_else(|| {
                    io::Error::other("state machine returned fewer results than commands")
                })?,
                _ => CommandResult(Ok(Vec::new())),
            };
            if let Some(r) = responder {
                r.send(result);
            }
        }
        Ok(())
    }

    async fn try_create_snapshot_builder(&mut self, force: bool) -> Option<Self::SnapshotBuilder> {
        if !force && self.build_backing_off() {
            return None;
        }
        Some(self.clone())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> Result<(), io::Error> {
        let _serialized = self.snapshot_lock.lock().await;
        let sm = self.sm.clone();
        let dir = self.snapshots.clone();
        let meta = meta.clone();
        let group = self.group.clone();
        let installed = meta.last_log_id;
        *self.cached_applied() = None;
        blocking(move || {
            let file_meta = snapshot::verify(&snapshot.path)?;
            if file_meta != meta {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "snapshot file does not match the snapshot it was sent as",
                ));
            }
            // First the file becomes this group's current snapshot (module docs), then
            // the state machine is restored from it.
            let kept = dir.keep(&snapshot.path, &meta)?;
            let (_, mut data) = snapshot::open_data(&kept.path)?;
            let applied = AppliedState {
                last_applied: meta.last_log_id,
                membership: meta.last_membership.clone(),
            };
            sm.restore(&mut data, &applied)?;
            tracing::info!(
                group = %group,
                index = meta.last_log_id.as_ref().map(|l| l.index).unwrap_or(0),
                "installed snapshot"
            );
            Ok(())
        })
        .await?;
        if let Some(last) = installed {
            self.clock.skipped_through(last.index);
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let dir = self.snapshots.clone();
        let latest = blocking(move || dir.latest()).await?;
        Ok(latest.map(|(meta, file)| Snapshot {
            meta,
            snapshot: file,
        }))
    }
}
