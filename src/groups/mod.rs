//! The processor groups a nacosd node runs.
//!
//! `config` runs the configuration center ([`config`]), `naming_persistent` the
//! persistent service registry ([`naming`]) and `embedded_db` a replicated SQLite
//! database ([`db`]). [`test_kv`] is a small replicated key-value machine the tests
//! drive the raft layer with.

pub mod client;
pub mod config;
pub mod db;
pub(crate) mod feed;
pub(crate) mod names;
pub mod naming;
pub mod test_kv;

use std::sync::Arc;

use crate::raft::group::GroupRegistry;
use crate::raft::rocks_sm::RocksStateMachine;

pub const NAMING_PERSISTENT: &str = "naming_persistent";
pub const CONFIG: &str = "config";
pub const EMBEDDED_DB: &str = "embedded_db";

/// Per-node objects that the built-in groups share with the API layer.
#[derive(Clone, Default)]
pub struct Shared {
    pub config_feed: Arc<config::ConfigFeed>,
    pub naming_feed: Arc<naming::NamingFeed>,
    /// The embedded DB's state machine, once the group has opened it (the API checks
    /// statements against its schema before proposing).
    pub db: Arc<std::sync::OnceLock<Arc<db::SqliteStateMachine>>>,
}

/// The groups of a production node.
pub fn builtin_registry(shared: &Shared) -> GroupRegistry {
    let config_feed = shared.config_feed.clone();
    let naming_feed = shared.naming_feed.clone();
    let db_slot = shared.db.clone();
    GroupRegistry::new()
        .register(CONFIG, move |ctx| {
            let processor = config::ConfigProcessor::new(config_feed.clone());
            Ok(Arc::new(
                RocksStateMachine::new(&ctx.name, ctx.db.clone(), processor)?
                    .with_key_cache(ctx.state_cache_bytes),
            ))
        })
        .register(NAMING_PERSISTENT, move |ctx| {
            let processor = naming::NamingProcessor::new(naming_feed.clone());
            Ok(Arc::new(
                RocksStateMachine::new(&ctx.name, ctx.db.clone(), processor)?
                    .with_key_cache(ctx.state_cache_bytes),
            ))
        })
        .register(EMBEDDED_DB, move |ctx| {
            let sm = Arc::new(
                db::SqliteStateMachine::open(&ctx.dir)?
                    .with_page_cache(ctx.sqlite_page_cache_kib)?,
            );
            let _ = db_slot.set(sm.clone());
            Ok(sm)
        })
}
