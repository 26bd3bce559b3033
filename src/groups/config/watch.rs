//! The config change feed of one node.
//!
//! Every node applies the same log, so every node can tell its own watchers about a
//! change when it applies it: `Watch` streams are served by whichever node the client
//! is connected to, and keep working across leader changes. A watcher that falls too
//! far behind the feed (or a node that installs a snapshot) gets a `Resync`, after
//! which it compares the md5s it has told its client about with the current state;
//! no change is silently lost.

use tokio::sync::broadcast;

use crate::groups::config::model::ConfigKey;

/// A change of one item, as applied at `log_index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigChange {
    pub key: ConfigKey,
    /// `None`: removed.
    pub md5: Option<String>,
    pub log_index: u64,
}

#[derive(Debug, Clone)]
pub enum FeedEvent {
    Changed(ConfigChange),
    /// The state may have changed in ways not announced (snapshot restore).
    Resync,
}

pub struct ConfigFeed {
    tx: broadcast::Sender<FeedEvent>,
}

impl Default for ConfigFeed {
    fn default() -> Self {
        Self::new(4096)
    }
}

impl ConfigFeed {
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity);
        ConfigFeed { tx }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<FeedEvent> {
        self.tx.subscribe()
    }

    pub fn publish(&self, changes: Vec<ConfigChange>) {
        for c in changes {
            // No receivers is fine.
            let _ = self.tx.send(FeedEvent::Changed(c));
        }
    }

    pub fn resync(&self) {
        let _ = self.tx.send(FeedEvent::Resync);
    }
}
