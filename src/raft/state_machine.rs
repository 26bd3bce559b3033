//! openraft's `RaftStateMachine` for every group: adapts a [`StateMachine`] and the
//! group's [`SnapshotDir`] to openraft.
//!
//! Blocking work (RocksDB/SQLite writes, snapshot files) runs on tokio's blocking pool
//! so the Raft core's tasks are never stalled by disk I/O. A failed apply returns the
//! I/O error to openraft, which stops the group: a committed entry that cannot be
//! applied must never be skipped.

use std::io;
use std::sync::Arc;

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};

use crate::raft::group::{ApplyItem, StateMachine};
use crate::raft::snapshot::{self, SnapshotDir, SnapshotFile};
use crate::raft::types::{
    AppliedState, CommandResult, LogId, SnapshotMeta, StoredMembership, TypeConfig,
};

type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotFile>;

/// Called after every applied batch with the last applied index (change streams and
/// metrics hang off this).
pub type ApplyHook = Arc<dyn Fn(u64) + Send + Sync>;

#[derive(Clone)]
pub struct GroupStateMachine {
    group: Arc<str>,
    sm: Arc<dyn StateMachine>,
    snapshots: SnapshotDir,
    on_applied: Option<ApplyHook>,
}

impl GroupStateMachine {
    pub fn new(group: &str, sm: Arc<dyn StateMachine>, snapshots: SnapshotDir) -> Self {
        GroupStateMachine {
            group: group.into(),
            sm,
            snapshots,
            on_applied: None,
        }
    }

    pub fn with_apply_hook(mut self, hook: ApplyHook) -> Self {
        self.on_applied = Some(hook);
        self
    }

    pub fn state_machine(&self) -> &Arc<dyn StateMachine> {
        &self.sm
    }

    pub fn snapshot_dir(&self) -> &SnapshotDir {
        &self.snapshots
    }
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

impl RaftStateMachine<TypeConfig> for GroupStateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let sm = self.sm.clone();
        let state = blocking(move || sm.applied_state()).await?;
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
        let mut applied = {
            let sm = sm.clone();
            blocking(move || sm.applied_state()).await?
        };
        for (entry, _) in &batch {
            applied.last_applied = Some(entry.log_id);
            if let EntryPayload::Membership(m) = &entry.payload {
                applied.membership = StoredMembership::new(Some(entry.log_id), m.clone());
            }
        }
        let last_index = applied.last_applied.as_ref().map(|l| l.index).unwrap_or(0);
        let (batch, results) = blocking(move || {
            let items: Vec<ApplyItem<'_>> = batch
                .iter()
                .map(|(entry, _)| ApplyItem {
                    index: entry.log_id.index,
                    command: match &entry.payload {
                        EntryPayload::Normal(cmd) => Some(cmd),
                        _ => None,
                    },
                })
                .collect();
            let results = sm.apply(&items, &applied)?;
            drop(items);
            Ok((batch, results))
        })
        .await
        .inspect_err(|e| {
            tracing::error!(group = %self.group, error = %e, "applying committed entries failed; stopping the group");
        })?;

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
        if let Some(hook) = &self.on_applied {
            hook(last_index);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> Result<(), io::Error> {
        let sm = self.sm.clone();
        let dir = self.snapshots.clone();
        let meta = meta.clone();
        let group = self.group.clone();
        let last_index = meta.last_log_id.as_ref().map(|l| l.index).unwrap_or(0);
        blocking(move || {
            let file_meta = snapshot::verify(&snapshot.path)?;
            if file_meta != meta {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "snapshot file does not match the snapshot it was sent as",
                ));
            }
            let (_, mut data) = snapshot::open_data(&snapshot.path)?;
            let applied = AppliedState {
                last_applied: meta.last_log_id,
                membership: meta.last_membership.clone(),
            };
            sm.restore(&mut data, &applied)?;
            // The installed file becomes this node's current snapshot.
            dir.keep(&snapshot.path, &meta)?;
            tracing::info!(group = %group, index = last_index, "installed snapshot");
            Ok(())
        })
        .await?;
        if let Some(hook) = &self.on_applied {
            hook(last_index);
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
