//! The Subscribe engine: one service's changes, in log order, resumable.
//!
//! The engine subscribes to the node's naming feed before it reads the service, so no
//! change falls between the read and the feed. The first answer is a full state when
//! the client has missed anything: its `last_index` is behind the service's revision,
//! or it starts from scratch. After that every change of the service is one event,
//! carrying the log index that made it; each command makes at most one change per
//! service (a batch registration is one event with all its instances), so a client
//! that has seen index `i` has seen everything of the service up to `i` and can resume
//! from it.
//!
//! The full state's index is taken from the same point-in-time view as the state
//! itself (the service's revision, or the view's applied index when the service does
//! not exist): a change applied after the view always has a higher index and arrives
//! through the feed. After a snapshot restore or when the stream lagged behind the feed,
//! a fresh full state is sent if anything moved.
//!
//! Ephemeral instances (the AP side, [`crate::distro`]) come from this node's memory and
//! its own change feed, subscribed to before the first read as well. They have no log
//! index: their events repeat the last index sent, and because nothing records which
//! ephemeral changes a client has seen, a subscription that resumes on a node where
//! the service has (or had) ephemeral instances always starts with a full state.

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};

use crate::consistency::ReadLevel;
use crate::distro::{Distro, EphemeralChange, EphemeralInstance};
use crate::error::Result;
use crate::groups::client::GroupClient;
use crate::groups::feed::FeedEvent;
use crate::groups::naming::model::{
    ChangeKind, GetService, InstanceRecord, NamingChange, ServiceKey, ServiceRecord,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    FullState,
    InstancesUpserted,
    InstancesRemoved,
    ServiceUpdated,
    ServiceDeleted,
}

/// What a subscriber is told.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceEvent {
    pub kind: EventKind,
    /// The log index of the change (for a full state: the index it reflects).
    pub index: u64,
    /// The service's settings after the change (`None`: it does not exist).
    pub service: Option<ServiceRecord>,
    /// A full state: every persistent instance; a change: the instances it touched.
    pub instances: Vec<InstanceRecord>,
    /// The same for ephemeral instances.
    pub ephemeral: Vec<EphemeralInstance>,
}

fn change_event(c: NamingChange) -> ServiceEvent {
    let (kind, instances) = match c.kind {
        ChangeKind::InstancesUpserted(i) => (EventKind::InstancesUpserted, i),
        ChangeKind::InstancesRemoved(i) => (EventKind::InstancesRemoved, i),
        ChangeKind::ServiceUpdated => (EventKind::ServiceUpdated, vec![]),
        ChangeKind::ServiceDeleted => (EventKind::ServiceDeleted, vec![]),
    };
    ServiceEvent {
        kind,
        index: c.index,
        service: c.record,
        instances,
        ephemeral: vec![],
    }
}

/// The events of one ephemeral change (upserts, then removals), at index `seen`.
fn ephemeral_events(c: EphemeralChange, seen: u64) -> Vec<ServiceEvent> {
    let mut out = Vec::new();
    for (kind, list) in [
        (EventKind::InstancesUpserted, c.upserted),
        (EventKind::InstancesRemoved, c.removed),
    ] {
        if !list.is_empty() {
            out.push(ServiceEvent {
                kind,
                index: seen,
                service: None,
                instances: vec![],
                ephemeral: list,
            });
        }
    }
    out
}

/// The full current state, if the client (who has seen everything up to `seen`)
/// missed anything.
async fn full_state_if_missed(
    client: &GroupClient,
    distro: &Distro,
    service: &ServiceKey,
    seen: u64,
    level: ReadLevel,
) -> Result<Option<ServiceEvent>> {
    let q = GetService {
        service: service.clone(),
        clusters: vec![],
        healthy_only: false,
    };
    let detail = client.query(q, level, None).await?;
    let index = match &detail.record {
        Some(r) => r.revision,
        // An absent service: the index the view reflects, so the client never keeps a
        // stale view and nothing applied after the view is skipped.
        None => detail.as_of,
    };
    if seen != 0 && index <= seen && !distro.touched(service) {
        return Ok(None);
    }
    Ok(Some(ServiceEvent {
        kind: EventKind::FullState,
        index: index.max(seen),
        service: detail.record,
        instances: detail.instances,
        ephemeral: distro.instances_of(service),
    }))
}

/// The streams a subscription listens to, subscribed before the first read.
pub struct Feeds {
    pub naming: broadcast::Receiver<FeedEvent<NamingChange>>,
    pub ephemeral: broadcast::Receiver<FeedEvent<EphemeralChange>>,
}

/// A subscription whose first answer is settled: what follows comes from the feeds.
pub struct Subscription {
    client: GroupClient,
    distro: Arc<Distro>,
    service: ServiceKey,
    feeds: Feeds,
    /// Everything up to `seen` has reached the client.
    seen: u64,
}

impl Subscription {
    /// Subscribe: a linearizable read of the service, so the first answer reflects every
    /// change acknowledged before the call, and the full state in `tx` if the client
    /// missed anything. The read is done when this returns (the API returns the stream
    /// only then): a change acknowledged after that carries a higher index and arrives
    /// as its own event, never folded into the first full state.
    pub async fn open(
        client: GroupClient,
        distro: Arc<Distro>,
        service: ServiceKey,
        last_index: u64,
        feeds: Feeds,
        tx: &mpsc::Sender<Result<ServiceEvent>>,
    ) -> Result<Subscription> {
        let mut seen = last_index;
        if let Some(ev) =
            full_state_if_missed(&client, &distro, &service, seen, ReadLevel::Linearizable).await?
        {
            seen = seen.max(ev.index);
            // The channel is new and empty: this never waits.
            let _ = tx.send(Ok(ev)).await;
        }
        Ok(Subscription {
            client,
            distro,
            service,
            feeds,
            seen,
        })
    }

    /// Serve the subscription until the client goes away.
    pub async fn serve(self, tx: mpsc::Sender<Result<ServiceEvent>>) {
        let Subscription {
            client,
            distro,
            service,
            feeds,
            mut seen,
        } = self;
        let Feeds {
            naming: mut feed,
            ephemeral: mut eph,
        } = feeds;
        loop {
            tokio::select! {
                ev = eph.recv() => {
                    match ev {
                        Ok(FeedEvent::Changed(c)) => {
                            if c.service == service {
                                for e in ephemeral_events(c, seen) {
                                    if tx.send(Ok(e)).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                        Ok(FeedEvent::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => {
                            // Missed ephemeral changes: a full state (sent even though the
                            // persistent index did not move, as the service is touched).
                            if !send_full_state(&client, &distro, &service, &mut seen, ReadLevel::Stale, &tx).await {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
                ev = feed.recv() => {
                    let resync = match ev {
                        Ok(FeedEvent::Changed(c)) => {
                            if c.service == service && c.index > seen {
                                seen = c.index;
                                if tx.send(Ok(change_event(c))).await.is_err() {
                                    return;
                                }
                            }
                            false
                        }
                        Ok(FeedEvent::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => true,
                        Err(broadcast::error::RecvError::Closed) => return,
                    };
                    if resync
                        && !send_full_state(&client, &distro, &service, &mut seen, ReadLevel::Stale, &tx).await
                    {
                        return;
                    }
                }
                _ = tx.closed() => return,
            }
        }
    }
}

/// Send a full state if the client missed anything. False when the stream ends.
async fn send_full_state(
    client: &GroupClient,
    distro: &Distro,
    service: &ServiceKey,
    seen: &mut u64,
    level: ReadLevel,
    tx: &mpsc::Sender<Result<ServiceEvent>>,
) -> bool {
    match full_state_if_missed(client, distro, service, *seen, level).await {
        Ok(Some(ev)) => {
            *seen = (*seen).max(ev.index);
            tx.send(Ok(ev)).await.is_ok()
        }
        Ok(None) => true,
        Err(e) => {
            let _ = tx.send(Err(e)).await;
            false
        }
    }
}
