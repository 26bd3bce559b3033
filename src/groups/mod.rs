//! The processor groups a nacosd node runs.
//!
//! `config` runs the configuration center ([`config`]). `naming_persistent` and
//! `embedded_db` still run the generic replicated key-value state machine in [`kv`]
//! until their own processors (naming, SQLite) land; the raft layer, storage,
//! snapshots, forwarding and reads they run on are already the real ones.

pub mod config;
pub mod kv;

use std::sync::Arc;

use crate::raft::group::GroupRegistry;
use crate::raft::kv::RocksStateMachine;

pub const NAMING_PERSISTENT: &str = "naming_persistent";
pub const CONFIG: &str = "config";
pub const EMBEDDED_DB: &str = "embedded_db";

/// Per-node objects that the built-in groups share with the API layer.
#[derive(Clone, Default)]
pub struct Shared {
    pub config_feed: Arc<config::ConfigFeed>,
}

/// The groups of a production node.
pub fn builtin_registry(shared: &Shared) -> GroupRegistry {
    let feed = shared.config_feed.clone();
    let mut reg = GroupRegistry::new().register(CONFIG, move |ctx| {
        let processor = config::ConfigProcessor::new(feed.clone());
        Ok(Arc::new(RocksStateMachine::new(
            &ctx.name,
            ctx.db.clone(),
            processor,
        )?))
    });
    for name in [NAMING_PERSISTENT, EMBEDDED_DB] {
        reg = reg.register(name, |ctx| {
            Ok(Arc::new(RocksStateMachine::new(
                &ctx.name,
                ctx.db.clone(),
                kv::KvProcessor,
            )?))
        });
    }
    reg
}
