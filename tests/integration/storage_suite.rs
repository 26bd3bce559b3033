//! openraft's storage conformance suite against the RocksDB log store with each kind
//! of state machine: the RocksDB-backed adapter and the embedded DB's SQLite file.

use std::sync::Arc;

use nacosd::groups::db::SqliteStateMachine;
use nacosd::groups::test_kv::KvProcessor;
use nacosd::raft::log_store::RocksLogStore;
use nacosd::raft::rocks::{self, WalSyncer};
use nacosd::raft::rocks_sm::RocksStateMachine;
use nacosd::raft::snapshot::SnapshotDir;
use nacosd::raft::stages::StageClock;
use nacosd::raft::state_machine::GroupStateMachine;
use nacosd::raft::types::TypeConfig;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::StorageError;

/// Which state machine the suite runs against.
enum Builder {
    Rocks,
    Sqlite,
}

impl StoreBuilder<TypeConfig, RocksLogStore, GroupStateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, RocksLogStore, GroupStateMachine), StorageError<TypeConfig>>
    {
        let to_err = |e: std::io::Error| StorageError::read(TypeConfig::err_from_error(&e));
        let td = tempfile::tempdir().map_err(to_err)?;
        let db = rocks::open(&td.path().join("raft"), &["g"]).map_err(to_err)?;
        let syncer = WalSyncer::start(db.clone()).map_err(to_err)?;
        let clock = StageClock::new("g", Arc::default());
        // The RocksDB-backed run keeps a small in-memory log tail (some reads served
        // from it, some past it) and a key cache; the SQLite run neither, so the suite
        // covers the log store both ways.
        let cache = match self {
            Builder::Rocks => 4 << 10,
            Builder::Sqlite => 0,
        };
        let log =
            RocksLogStore::new("g", db.clone(), syncer, clock.clone(), cache).map_err(to_err)?;
        let snapshots = SnapshotDir::open(td.path().join("snapshots")).map_err(to_err)?;
        let gsm = match self {
            Builder::Rocks => {
                let sm = RocksStateMachine::new("g", db, KvProcessor)
                    .map_err(to_err)?
                    .with_key_cache(cache);
                GroupStateMachine::new("g", Arc::new(sm), snapshots, clock)
            }
            Builder::Sqlite => {
                let sm = SqliteStateMachine::open(&td.path().join("sqlite")).map_err(to_err)?;
                GroupStateMachine::new("g", Arc::new(sm), snapshots, clock)
            }
        };
        Ok((td, log, gsm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rocks_storage_passes_the_openraft_suite() {
    Suite::test_all(Builder::Rocks).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_storage_passes_the_openraft_suite() {
    Suite::test_all(Builder::Sqlite).await.unwrap();
}
