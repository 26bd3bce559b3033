//! The config change feed (see [`crate::groups::feed`]).

use crate::groups::config::model::ConfigKey;
use crate::groups::feed::Feed;

pub use crate::groups::feed::FeedEvent;

/// A change of one item, as applied at `log_index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigChange {
    pub key: ConfigKey,
    /// `None`: removed.
    pub md5: Option<String>,
    pub log_index: u64,
}

pub type ConfigFeed = Feed<ConfigChange>;
