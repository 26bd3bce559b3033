//! A node's change feed for one group: what `Watch`/`Subscribe` streams listen to.
//!
//! Every node applies the same log, so every node can tell its own watchers about a
//! change when it applies it: streams are served by whichever node the client is
//! connected to and keep working across leader changes. A listener that falls too far
//! behind (or a node that installs a snapshot) gets a `Resync`, after which it must
//! recompute what its client needs from the current state; no change is silently lost.

use tokio::sync::broadcast;

#[derive(Debug, Clone)]
pub enum FeedEvent<E> {
    Changed(E),
    /// The state may have changed in ways not announced (snapshot restore).
    Resync,
}

pub struct Feed<E> {
    tx: broadcast::Sender<FeedEvent<E>>,
}

impl<E: Clone> Default for Feed<E> {
    fn default() -> Self {
        Self::new(4096)
    }
}

impl<E: Clone> Feed<E> {
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity);
        Feed { tx }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<FeedEvent<E>> {
        self.tx.subscribe()
    }

    pub fn publish(&self, changes: Vec<E>) {
        for c in changes {
            // No receivers is fine.
            let _ = self.tx.send(FeedEvent::Changed(c));
        }
    }

    pub fn resync(&self) {
        let _ = self.tx.send(FeedEvent::Resync);
    }
}
