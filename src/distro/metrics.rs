//! Distro counters, and their part of `/metrics` (`http::render_all_metrics`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use crate::config::NodeId;
use crate::distro::Distro;
use crate::error::Error;
use crate::http::{counter_name, gauge_value, help_text};

/// Counters about one peer.
#[derive(Default)]
pub struct PeerCounters {
    /// Sessions sent in successful sync calls (changes and deletions).
    pub syncs_sent: AtomicU64,
    /// Sessions sent whole in successful sync calls (the rest went as deltas or
    /// deletions).
    pub full_syncs_sent: AtomicU64,
    /// Deltas the peer could not apply (it did not hold their base revision); each
    /// session is then sent whole.
    pub deltas_refused: AtomicU64,
    /// Successful sync calls.
    pub sync_calls: AtomicU64,
    /// Sessions whose sync failed (each is retried).
    pub syncs_failed: AtomicU64,
    /// Sessions sent again after a failure.
    pub syncs_retried: AtomicU64,
    /// Sessions the peer was missing or held older, as its verify replies said.
    pub verify_mismatches: AtomicU64,
    /// Verify calls that failed.
    pub verify_failures: AtomicU64,
    /// Calls the peer refused, or whose reply this node refused, because the two speak
    /// different Distro protocol versions (`distro::wire::PROTOCOL`).
    pub protocol_refusals: AtomicU64,
    /// A refusal was logged since the last call to the peer that went through (so a
    /// mismatch is logged once, not on every retry).
    pub refusal_logged: AtomicBool,
}

impl PeerCounters {
    /// Count a failed call `what` to `peer`. A refusal for another protocol version
    /// (`distro::wire::is_protocol_refusal`) is logged as a warning once until a call
    /// goes through again; other failures are retried and logged at debug.
    pub fn call_failed(&self, peer: NodeId, what: &str, e: &Error) {
        if !crate::distro::wire::is_protocol_refusal(e) {
            tracing::debug!(peer, error = %e, "{what} failed; will retry");
            return;
        }
        inc(&self.protocol_refusals, 1);
        if !self.refusal_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(peer, error = %e, "{what} refused; ephemeral data does not flow to this peer until the versions match (logged once)");
        }
    }

    /// A call to the peer went through.
    pub fn call_succeeded(&self) {
        self.refusal_logged.store(false, Ordering::Relaxed);
    }
}

#[derive(Default)]
pub struct DistroMetrics {
    peers: Mutex<BTreeMap<NodeId, Arc<PeerCounters>>>,
    /// Owned sessions that expired (no keep-alive within their TTL).
    pub sessions_expired: AtomicU64,
    /// Replicas dropped because their owner had not verified them in time.
    pub replicas_expired: AtomicU64,
    /// Replicas dropped because their owner's verify no longer listed them.
    pub replicas_dropped: AtomicU64,
    /// Sessions applied from peers' syncs.
    pub syncs_applied: AtomicU64,
    /// Snapshot loads that failed (each peer tried counts once).
    pub snapshot_load_failures: AtomicU64,
}

impl DistroMetrics {
    pub fn peer(&self, id: NodeId) -> Arc<PeerCounters> {
        crate::lock(&self.peers).entry(id).or_default().clone()
    }

    fn peers(&self) -> Vec<(NodeId, Arc<PeerCounters>)> {
        crate::lock(&self.peers)
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }
}

pub fn inc(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

type PeerCounter = (&'static str, &'static str, fn(&PeerCounters) -> &AtomicU64);

const PEER_COUNTERS: [PeerCounter; 9] = [
    (
        "nacosd_distro_syncs_sent_total",
        "Sessions sent to the peer in successful syncs (changes and deletions).",
        |c| &c.syncs_sent,
    ),
    (
        "nacosd_distro_full_syncs_sent_total",
        "Sessions sent to the peer whole (new to it, or no delta possible); the rest of the syncs sent went as deltas or deletions.",
        |c| &c.full_syncs_sent,
    ),
    (
        "nacosd_distro_deltas_refused_total",
        "Delta syncs the peer could not apply (it did not hold their base revision); each was then sent whole.",
        |c| &c.deltas_refused,
    ),
    (
        "nacosd_distro_sync_calls_total",
        "Successful sync calls to the peer (each carries one or more sessions).",
        |c| &c.sync_calls,
    ),
    (
        "nacosd_distro_syncs_failed_total",
        "Sessions whose sync to the peer failed.",
        |c| &c.syncs_failed,
    ),
    (
        "nacosd_distro_syncs_retried_total",
        "Sessions sent to the peer again after a failed sync.",
        |c| &c.syncs_retried,
    ),
    (
        "nacosd_distro_verify_mismatches_total",
        "Owned sessions the peer was missing or held at an older revision.",
        |c| &c.verify_mismatches,
    ),
    (
        "nacosd_distro_verify_failures_total",
        "Verify calls to the peer that failed.",
        |c| &c.verify_failures,
    ),
    (
        "nacosd_distro_protocol_refusals_total",
        "Distro calls to the peer refused because the two nodes speak different Distro protocol versions (a rolling upgrade in progress).",
        |c| &c.protocol_refusals,
    ),
];

/// Adds the Distro metrics, read now, to `registry`.
pub fn register(distro: &Distro, registry: &mut Registry) {
    let (owned, replicated, instances) = distro.counts();
    let gauges = [
        (
            "nacosd_distro_sessions_owned",
            "Sessions this node owns",
            owned as u64,
        ),
        (
            "nacosd_distro_sessions_replicated",
            "Other nodes' sessions this node holds",
            replicated as u64,
        ),
        (
            "nacosd_distro_ephemeral_instances",
            "Ephemeral instances this node holds (own and replicated)",
            instances as u64,
        ),
        (
            "nacosd_distro_ready",
            "1 once the startup snapshot of ephemeral data is loaded",
            distro.ready() as u64,
        ),
    ];
    for (name, help, v) in gauges {
        registry.register(name, help, ConstGauge::new(gauge_value(v)));
    }
    let m = &distro.metrics;
    let counters = [
        (
            "nacosd_distro_sessions_expired_total",
            "Owned sessions that expired without a keep-alive",
            &m.sessions_expired,
        ),
        (
            "nacosd_distro_replicas_expired_total",
            "Replicated sessions dropped because their owner stopped verifying them",
            &m.replicas_expired,
        ),
        (
            "nacosd_distro_replicas_dropped_total",
            "Replicated sessions dropped because their owner's verify no longer listed them",
            &m.replicas_dropped,
        ),
        (
            "nacosd_distro_syncs_applied_total",
            "Sessions applied from other nodes' syncs",
            &m.syncs_applied,
        ),
        (
            "nacosd_distro_snapshot_load_failures_total",
            "Failed attempts to load the startup snapshot from a peer",
            &m.snapshot_load_failures,
        ),
    ];
    for (name, help, c) in counters {
        registry.register(
            counter_name(name),
            help,
            ConstCounter::new(c.load(Ordering::Relaxed)),
        );
    }
    let depth = Family::<PeerLabels, Gauge>::default();
    for (peer, d) in distro.queue_depth() {
        depth
            .get_or_create(&PeerLabels {
                peer: peer.to_string(),
            })
            .set(gauge_value(d as u64));
    }
    registry.register(
        "nacosd_distro_sync_queue_depth",
        "Sync tasks waiting per target peer",
        depth,
    );
    let peers = m.peers();
    for (name, help, f) in PEER_COUNTERS {
        let family = Family::<PeerLabels, Counter>::default();
        for (id, c) in &peers {
            family
                .get_or_create(&PeerLabels {
                    peer: id.to_string(),
                })
                .inc_by(f(c).load(Ordering::Relaxed));
        }
        registry.register(counter_name(name), help_text(help), family);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_every_time_and_logged_once_until_a_call_succeeds() {
        let c = PeerCounters::default();
        c.call_failed(2, "distro sync", &Error::unavailable("down"));
        assert_eq!(c.protocol_refusals.load(Ordering::Relaxed), 0);
        assert!(!c.refusal_logged.load(Ordering::Relaxed));
        let refusal = crate::distro::wire::check_protocol(2, "node 2").unwrap_err();
        c.call_failed(
            2,
            "distro sync",
            &Error::FailedPrecondition("no identity".into()),
        );
        assert_eq!(
            c.protocol_refusals.load(Ordering::Relaxed),
            0,
            "not a refusal"
        );
        c.call_failed(2, "distro sync", &refusal);
        c.call_failed(2, "distro verify", &refusal);
        assert_eq!(c.protocol_refusals.load(Ordering::Relaxed), 2);
        assert!(c.refusal_logged.load(Ordering::Relaxed));
        c.call_succeeded();
        assert!(
            !c.refusal_logged.load(Ordering::Relaxed),
            "logged again next time"
        );
    }
}
