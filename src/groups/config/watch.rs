//! The config change feed and the Watch engine (Nacos listen semantics).
//!
//! The engine keeps, per watched key, what the client is known to hold: an md5 (`None`:
//! absent) and the revision of the state that md5 describes.
//!
//! - **Adding keys**: the keys' current states are read LINEARIZABLE (reflecting every
//!   write acknowledged before the request) and every key whose md5 differs from the
//!   one the client sent is answered at once.
//! - **Feed events** for watched keys: an event with a log index at or below the known
//!   revision is already covered; otherwise the revision advances and an event is sent
//!   if the md5 changed.
//! - **Resync**: after a snapshot restore, or when the stream lagged behind the feed,
//!   the watched keys' states are read again from the local state and the differences
//!   sent. Intermediate changes may be coalesced; the final md5 is never missed.
//!
//! The engine subscribes to the feed before its first state read, so no change can
//! fall in between. A client that half-closes (sends no more requests) still receives
//! events until it cancels the call.

use std::collections::HashMap;

use futures::{Stream, StreamExt};
use tokio::sync::{broadcast, mpsc};

use crate::consistency::ReadLevel;
use crate::error::{Error, Result};
use crate::groups::client::GroupClient;
use crate::groups::config::model::{ConfigKey, States};
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

/// What the client asks: keys to watch (with the md5 it holds, `None` for absent) and
/// keys to stop watching.
#[derive(Debug, Clone, Default)]
pub struct WatchRequest {
    pub add: Vec<(ConfigKey, Option<String>)>,
    pub remove: Vec<ConfigKey>,
}

/// One message from the client, as the API layer decoded it.
pub enum WatchInput {
    Request(WatchRequest),
    /// The message broke the input rules: the stream ends with this error.
    Invalid(Error),
    /// The client's side of the stream failed.
    Broken,
}

/// What the client is told: the key's md5 now (`None`: removed) as of `log_index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub key: ConfigKey,
    pub md5: Option<String>,
    pub log_index: u64,
}

/// What the client is known to hold per key: (md5, revision).
type Known = HashMap<ConfigKey, (Option<String>, u64)>;

async fn states(
    client: &GroupClient,
    keys: Vec<ConfigKey>,
    level: ReadLevel,
) -> Result<Vec<(Option<String>, u64)>> {
    client.query(States { keys }, level, None).await
}

/// Serve one Watch stream until the client goes away.
pub async fn serve(
    client: GroupClient,
    mut input: impl Stream<Item = WatchInput> + Unpin,
    mut feed: broadcast::Receiver<FeedEvent<ConfigChange>>,
    tx: mpsc::Sender<Result<WatchEvent>>,
) {
    let mut known = Known::new();
    let mut input_open = true;
    loop {
        tokio::select! {
            msg = input.next(), if input_open => match msg {
                Some(WatchInput::Request(req)) => {
                    if let Err(e) = add_and_remove(&client, req, &mut known, &tx).await {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
                Some(WatchInput::Invalid(e)) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
                Some(WatchInput::Broken) => return,
                None => input_open = false,
            },
            ev = feed.recv() => {
                let resync = match ev {
                    Ok(FeedEvent::Changed(c)) => {
                        if !apply_change(&mut known, c, &tx).await {
                            return;
                        }
                        false
                    }
                    Ok(FeedEvent::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => true,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if resync && !resync_all(&client, &mut known, &tx).await {
                    return;
                }
            }
            _ = tx.closed() => return,
        }
    }
}

/// Deliver a feed event if it is news for a watched key. False when the client is gone.
async fn apply_change(
    known: &mut Known,
    c: ConfigChange,
    tx: &mpsc::Sender<Result<WatchEvent>>,
) -> bool {
    let Some((md5, rev)) = known.get_mut(&c.key) else {
        return true;
    };
    if c.log_index <= *rev {
        return true;
    }
    *rev = c.log_index;
    if *md5 == c.md5 {
        return true;
    }
    *md5 = c.md5.clone();
    tx.send(Ok(WatchEvent {
        key: c.key,
        md5: c.md5,
        log_index: c.log_index,
    }))
    .await
    .is_ok()
}

/// Re-read every watched key locally and send what differs. False when the stream ends.
async fn resync_all(
    client: &GroupClient,
    known: &mut Known,
    tx: &mpsc::Sender<Result<WatchEvent>>,
) -> bool {
    if known.is_empty() {
        return true;
    }
    let keys: Vec<ConfigKey> = known.keys().cloned().collect();
    let current = match states(client, keys.clone(), ReadLevel::Stale).await {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(Err(e)).await;
            return false;
        }
    };
    for (key, local) in keys.into_iter().zip(current) {
        let Some(entry) = known.get_mut(&key) else {
            continue;
        };
        if let Some((md5, log_index)) = resync_one(entry, local) {
            let event = WatchEvent {
                key,
                md5,
                log_index,
            };
            if tx.send(Ok(event)).await.is_err() {
                return false;
            }
        }
    }
    true
}

/// What a resync tells the client about one key, given what it is known to hold and
/// the key's local state `(md5, revision)`; updates what it is known to hold.
///
/// The client may already hold a newer state than this node has applied: an added
/// key's first answer is read LINEARIZABLE, possibly on the leader. Such a key is left
/// alone — sending the older local state would move the client back in the log (the
/// fault suite's Watch check caught exactly that); the newer changes reach this node
/// through the feed.
fn resync_one(
    known: &mut (Option<String>, u64),
    local: (Option<String>, u64),
) -> Option<(Option<String>, u64)> {
    let (md5, rev) = local;
    if rev < known.1 {
        return None;
    }
    let changed = known.0 != md5;
    *known = (md5.clone(), rev);
    changed.then_some((md5, rev))
}

async fn add_and_remove(
    client: &GroupClient,
    req: WatchRequest,
    known: &mut Known,
    tx: &mpsc::Sender<Result<WatchEvent>>,
) -> Result<()> {
    for k in req.remove {
        known.remove(&k);
    }
    if req.add.is_empty() {
        return Ok(());
    }
    let keys: Vec<ConfigKey> = req.add.iter().map(|(k, _)| k.clone()).collect();
    // Linearizable: the answer reflects every change acknowledged before the request.
    let current = states(client, keys, ReadLevel::Linearizable).await?;
    for ((key, held), (md5, rev)) in req.add.into_iter().zip(current) {
        // A key added again keeps what the client was told, if that is newer.
        if known
            .get(&key)
            .is_some_and(|(_, known_rev)| *known_rev > rev)
        {
            continue;
        }
        if held != md5 {
            let event = WatchEvent {
                key: key.clone(),
                md5: md5.clone(),
                log_index: rev,
            };
            if tx.send(Ok(event)).await.is_err() {
                return Ok(());
            }
        }
        known.insert(key, (md5, rev));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md5(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    #[test]
    fn a_resync_never_moves_a_key_back_in_the_log() {
        // The client was told 39701 (read on the leader); this node is at 39684.
        let mut known = (md5("new"), 39_701);
        assert_eq!(resync_one(&mut known, (md5("old"), 39_684)), None);
        assert_eq!(known, (md5("new"), 39_701));
        // Once the node has caught up, a newer state is sent.
        assert_eq!(
            resync_one(&mut known, (md5("newer"), 39_800)),
            Some((md5("newer"), 39_800))
        );
        assert_eq!(known, (md5("newer"), 39_800));
    }

    #[test]
    fn a_resync_sends_only_differences() {
        let mut known = (md5("a"), 10);
        assert_eq!(resync_one(&mut known, (md5("a"), 12)), None);
        assert_eq!(known, (md5("a"), 12));
        assert_eq!(resync_one(&mut known, (None, 15)), Some((None, 15)));
        assert_eq!(known, (None, 15));
    }
}
