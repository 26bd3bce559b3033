//! The processor groups a nacosd node runs.
//!
//! `config` runs the configuration center ([`config`]) and `naming_persistent` the
//! persistent service registry ([`naming`]). `embedded_db` still runs the generic
//! replicated key-value state machine in [`kv`] until its SQLite processor lands; the
//! raft layer, storage, snapshots, forwarding and reads it runs on are the real ones.

pub mod codec;
pub mod config;
pub mod feed;
pub mod kv;
pub mod naming;

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
    pub naming_feed: Arc<naming::NamingFeed>,
}

/// The groups of a production node.
pub fn builtin_registry(shared: &Shared) -> GroupRegistry {
    let config_feed = shared.config_feed.clone();
    let naming_feed = shared.naming_feed.clone();
    GroupRegistry::new()
        .register(CONFIG, move |ctx| {
            let processor = config::ConfigProcessor::new(config_feed.clone());
            Ok(Arc::new(RocksStateMachine::new(
                &ctx.name,
                ctx.db.clone(),
                processor,
            )?))
        })
        .register(NAMING_PERSISTENT, move |ctx| {
            let processor = naming::NamingProcessor::new(naming_feed.clone());
            Ok(Arc::new(RocksStateMachine::new(
                &ctx.name,
                ctx.db.clone(),
                processor,
            )?))
        })
        .register(EMBEDDED_DB, |ctx| {
            Ok(Arc::new(RocksStateMachine::new(
                &ctx.name,
                ctx.db.clone(),
                kv::KvProcessor,
            )?))
        })
}
