//! openraft's storage conformance suite against the RocksDB log store and the
//! RocksDB-backed state machine adapter.

use std::sync::Arc;

use nacosd::groups::kv::KvProcessor;
use nacosd::raft::db::{self, WalSyncer};
use nacosd::raft::kv::RocksStateMachine;
use nacosd::raft::log_store::RocksLogStore;
use nacosd::raft::snapshot::SnapshotDir;
use nacosd::raft::state_machine::GroupStateMachine;
use nacosd::raft::types::TypeConfig;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::StorageError;

struct Builder;

impl StoreBuilder<TypeConfig, RocksLogStore, GroupStateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, RocksLogStore, GroupStateMachine), StorageError<TypeConfig>>
    {
        let to_err = |e: std::io::Error| StorageError::read(TypeConfig::err_from_error(&e));
        let td = tempfile::tempdir().map_err(to_err)?;
        let db = db::open(&td.path().join("raft"), &["g"]).map_err(to_err)?;
        let syncer = WalSyncer::start(db.clone()).map_err(to_err)?;
        let log = RocksLogStore::new("g", db.clone(), syncer).map_err(to_err)?;
        let sm = RocksStateMachine::new("g", db, KvProcessor).map_err(to_err)?;
        let snapshots = SnapshotDir::open(td.path().join("snapshots")).map_err(to_err)?;
        let gsm = GroupStateMachine::new("g", Arc::new(sm), snapshots);
        Ok((td, log, gsm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rocks_storage_passes_the_openraft_suite() {
    Suite::test_all(Builder).await.unwrap();
}
