//! Watch and Subscribe under faults: one config watcher per node over every config key
//! of the run, and one naming subscriber per node and service. Each keeps its stream
//! open through the run, reconnecting (to the same node) whenever the stream breaks —
//! a config watcher re-adds its keys with the md5s it holds, a subscriber resumes from
//! the last index it saw — and records every event: which item, at which log index,
//! and the state it leaves the item in (config: the md5; naming: the instances, each
//! port with its value, built up from the events since the last full state).
//!
//! What [`check`] requires:
//! - **Log order**: within one connection, an item's indexes only go up (a naming
//!   change event strictly; a full state or a config resync may repeat an index).
//! - **Agreement, hence no gap**: every observer that reports an item at one log index
//!   reports the same state there. A subscriber that missed a change event builds a
//!   wrong instance set and disagrees with the others from that index on.
//! - **Nothing invented**: every md5 and instance value was written by some operation
//!   of the history.
//! - **Final state**: once the cluster has healed and the clients stopped, every
//!   observer reaches the final state of every item it watches (the LINEARIZABLE final
//!   reads). Config Watch coalesces by design (Nacos listen semantics: the latest md5,
//!   not every intermediate one), so for config this and agreement are the checks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use super::history::{History, OpKind};
use super::ops::{Group, Key, Target, INSTANCE_IP, NAMING_SLOTS};
use crate::groups::config::md5_hex;
use crate::pb;
use crate::pb::config_service_client::ConfigServiceClient;
use crate::pb::naming_service_client::NamingServiceClient;

/// The state an event leaves an item in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// A config item's md5; `None` when absent.
    Config(Option<String>),
    /// A naming service's instances of the run: port → value.
    Naming(BTreeMap<u32, String>),
}

/// One event as an observer saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The node the observer is connected to.
    pub node: usize,
    /// The item: a config key's or a naming service's name (`config/e1/k2`,
    /// `naming/e1/s0`).
    pub item: String,
    /// Which connection of this observer (0, 1, … as it reconnects).
    pub connection: u32,
    pub index: u64,
    /// A full state (naming) or an answer to adding a key (config), rather than one
    /// change.
    pub full: bool,
    pub state: State,
}

/// Which items exist, epoch by epoch.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    pub run_id: String,
    pub epoch: Duration,
    /// Config keys per epoch.
    pub config_keys: u32,
    /// Naming instance slots per epoch (services × [`NAMING_SLOTS`]).
    pub naming_keys: u32,
    pub timeout: Duration,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// The running observers.
pub struct Observers {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    log: Log,
}

/// Pause before reconnecting a broken stream.
const RECONNECT: Duration = Duration::from_millis(200);

impl Observers {
    /// Starts the observers. Items of an epoch are watched from the start of the epoch
    /// before (epoch 0 and 1 at once), so they are watched before the clients use them.
    pub fn start(spec: StreamSpec, channels: &[Channel]) -> Observers {
        let stop = Arc::new(AtomicBool::new(false));
        let log: Log = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for (i, channel) in channels.iter().enumerate() {
            let watcher = Watcher {
                node: i + 1,
                spec: spec.clone(),
                channel: channel.clone(),
                log: log.clone(),
                stop: stop.clone(),
                started,
            };
            tasks.push(tokio::spawn(watcher.run()));
            let spawner = SubscriberSpawner {
                node: i + 1,
                spec: spec.clone(),
                channel: channel.clone(),
                log: log.clone(),
                stop: stop.clone(),
                started,
            };
            tasks.push(tokio::spawn(spawner.run()));
        }
        Observers { stop, tasks, log }
    }

    /// Waits until every observer's latest state of every item in `expected` is the
    /// expected one, or `within` passes; then stops the observers. Returns every event
    /// seen and, per observer and item, the final state it is missing.
    pub async fn finish(
        self,
        expected: &BTreeMap<String, State>,
        nodes: usize,
        within: Duration,
    ) -> (Vec<Seen>, Vec<String>) {
        let end = Instant::now() + within;
        let mut missing;
        loop {
            missing = self.missing_final(expected, nodes);
            if missing.is_empty() || Instant::now() > end {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.stop.store(true, Ordering::SeqCst);
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
        let seen = self.log.lock().map(|l| l.clone()).unwrap_or_default();
        (seen, missing)
    }

    fn missing_final(&self, expected: &BTreeMap<String, State>, nodes: usize) -> Vec<String> {
        let Ok(log) = self.log.lock() else {
            return vec!["observer log poisoned".to_string()];
        };
        let mut latest: HashMap<(usize, &str), (u64, &State)> = HashMap::new();
        for s in log.iter() {
            let slot = latest
                .entry((s.node, &s.item))
                .or_insert((s.index, &s.state));
            if s.index >= slot.0 {
                *slot = (s.index, &s.state);
            }
        }
        let mut missing = Vec::new();
        for (item, want) in expected {
            for node in 1..=nodes {
                match latest.get(&(node, item.as_str())) {
                    Some((_, have)) if *have == want => {}
                    // A watched config key that never existed gets no event: the
                    // watcher said it holds nothing, and that is right.
                    None if *want == State::Config(None) => {}
                    have => missing.push(format!(
                        "observer on node {node} never reached the final state of {item}: expected {want:?}, last saw {}",
                        have.map_or("nothing".to_string(), |(i, s)| format!("{s:?} at index {i}"))
                    )),
                }
            }
        }
        missing
    }
}

/// The final state of every item from the final reads: `None` values are absent.
pub fn expected_states(final_values: &BTreeMap<Key, Option<String>>) -> BTreeMap<String, State> {
    let mut out = BTreeMap::new();
    for (key, value) in final_values {
        match key.group {
            Group::Config => {
                let md5 = value.as_ref().map(|v| md5_hex(v.as_bytes()));
                out.insert(key.name(), State::Config(md5));
            }
            Group::Naming => {
                let entry = out
                    .entry(service_item(key.epoch, key.index / NAMING_SLOTS))
                    .or_insert_with(|| State::Naming(BTreeMap::new()));
                if let (State::Naming(instances), Some(v)) = (entry, value) {
                    instances.insert(key.index % NAMING_SLOTS + 1, v.clone());
                }
            }
            Group::Db => {}
        }
    }
    out
}

fn service_item(epoch: u32, service: u32) -> String {
    format!("naming/e{epoch}/s{service}")
}

fn epoch_now(started: Instant, epoch: Duration) -> u32 {
    (started.elapsed().as_millis() / epoch.as_millis().max(1)) as u32
}

fn record(log: &Log, seen: Seen) {
    if let Ok(mut l) = log.lock() {
        l.push(seen);
    }
}

/// One node's config watcher.
struct Watcher {
    node: usize,
    spec: StreamSpec,
    channel: Channel,
    log: Log,
    stop: Arc<AtomicBool>,
    started: Instant,
}

impl Watcher {
    fn target(&self) -> Target {
        Target {
            run_id: self.spec.run_id.clone(),
            channel: self.channel.clone(),
            timeout: self.spec.timeout,
        }
    }

    fn keys_of(&self, epoch: u32) -> Vec<Key> {
        (0..self.spec.config_keys)
            .map(|index| Key {
                group: Group::Config,
                epoch,
                index,
            })
            .collect()
    }

    async fn run(self) {
        let target = self.target();
        // The md5 held per key (`""`: absent), sent again on every reconnection.
        let mut held: BTreeMap<Key, String> = BTreeMap::new();
        let mut connection = 0u32;
        while !self.stop.load(Ordering::SeqCst) {
            let _ = self.connection(&target, &mut held, connection).await;
            connection += 1;
            tokio::time::sleep(RECONNECT).await;
        }
    }

    /// One Watch call, until it breaks.
    async fn connection(
        &self,
        target: &Target,
        held: &mut BTreeMap<Key, String>,
        connection: u32,
    ) -> Result<(), tonic::Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut client = ConfigServiceClient::new(self.channel.clone());
        let mut watched = epoch_now(self.started, self.spec.epoch) + 1;
        let mut keys: Vec<Key> = (0..=watched).flat_map(|e| self.keys_of(e)).collect();
        keys.extend(held.keys().copied());
        keys.sort();
        keys.dedup();
        let add = |keys: &[Key], held: &BTreeMap<Key, String>| pb::WatchRequest {
            add: keys
                .iter()
                .map(|k| pb::WatchKey {
                    key: Some(target.config_key(k)),
                    md5: held.get(k).cloned().unwrap_or_default(),
                })
                .collect(),
            remove: Vec::new(),
        };
        let mut by_name: HashMap<(String, String), Key> = HashMap::new();
        let remember = |by_name: &mut HashMap<(String, String), Key>, keys: &[Key]| {
            for k in keys {
                let c = target.config_key(k);
                by_name.insert((c.group, c.data_id), *k);
            }
        };
        remember(&mut by_name, &keys);
        tx.send(add(&keys, held))
            .await
            .map_err(|_| tonic::Status::cancelled("request stream closed"))?;
        let mut stream = client.watch(ReceiverStream::new(rx)).await?.into_inner();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                event = stream.next() => {
                    let Some(event) = event else { return Ok(()) };
                    let event = event?;
                    let Some(k) = event.key.as_ref().and_then(|c| by_name.get(&(c.group.clone(), c.data_id.clone()))) else {
                        continue;
                    };
                    let md5 = (!event.deleted && !event.md5.is_empty()).then(|| event.md5.clone());
                    held.insert(*k, md5.clone().unwrap_or_default());
                    record(&self.log, Seen {
                        node: self.node,
                        item: k.name(),
                        connection,
                        index: event.log_index,
                        full: false,
                        state: State::Config(md5),
                    });
                }
                _ = tick.tick() => {
                    if self.stop.load(Ordering::SeqCst) {
                        return Ok(());
                    }
                    let next = epoch_now(self.started, self.spec.epoch) + 1;
                    if next > watched {
                        let fresh: Vec<Key> = (watched + 1..=next).flat_map(|e| self.keys_of(e)).collect();
                        watched = next;
                        remember(&mut by_name, &fresh);
                        if tx.send(add(&fresh, held)).await.is_err() {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
}

/// Starts a subscriber per service of each epoch, one epoch ahead.
struct SubscriberSpawner {
    node: usize,
    spec: StreamSpec,
    channel: Channel,
    log: Log,
    stop: Arc<AtomicBool>,
    started: Instant,
}

impl SubscriberSpawner {
    async fn run(self) {
        let services = self.spec.naming_keys.div_ceil(NAMING_SLOTS).max(1);
        let mut subscribers = Vec::new();
        let mut next_epoch = 0u32;
        while !self.stop.load(Ordering::SeqCst) {
            let ahead = epoch_now(self.started, self.spec.epoch) + 1;
            while next_epoch <= ahead {
                for service in 0..services {
                    let sub = Subscriber {
                        node: self.node,
                        epoch: next_epoch,
                        service,
                        target: Target {
                            run_id: self.spec.run_id.clone(),
                            channel: self.channel.clone(),
                            timeout: self.spec.timeout,
                        },
                        log: self.log.clone(),
                        stop: self.stop.clone(),
                    };
                    subscribers.push(AbortOnDrop(tokio::spawn(sub.run())));
                }
                next_epoch += 1;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Aborts the task when dropped, so an aborted spawner takes its subscribers along.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One node's subscriber of one service.
struct Subscriber {
    node: usize,
    epoch: u32,
    service: u32,
    target: Target,
    log: Log,
    stop: Arc<AtomicBool>,
}

impl Subscriber {
    async fn run(self) {
        let item = service_item(self.epoch, self.service);
        let mut last_index = 0u64;
        let mut model: BTreeMap<u32, String> = BTreeMap::new();
        let mut connection = 0u32;
        while !self.stop.load(Ordering::SeqCst) {
            let _ = self
                .connection(&item, connection, &mut last_index, &mut model)
                .await;
            connection += 1;
            tokio::time::sleep(RECONNECT).await;
        }
    }

    async fn connection(
        &self,
        item: &str,
        connection: u32,
        last_index: &mut u64,
        model: &mut BTreeMap<u32, String>,
    ) -> Result<(), tonic::Status> {
        let key = Key {
            group: Group::Naming,
            epoch: self.epoch,
            index: self.service * NAMING_SLOTS,
        };
        let mut client = NamingServiceClient::new(self.target.channel.clone());
        let mut stream = client
            .subscribe(pb::SubscribeRequest {
                service: Some(self.target.service_key(&key)),
                last_index: *last_index,
            })
            .await?
            .into_inner();
        while let Some(event) = stream.next().await {
            let event = event?;
            let kind = pb::ServiceEventKind::try_from(event.kind)
                .unwrap_or(pb::ServiceEventKind::Unspecified);
            let ours = event.instances.iter().filter(|i| i.ip == INSTANCE_IP);
            let value = |i: &pb::Instance| i.metadata.get("v").cloned().unwrap_or_default();
            match kind {
                pb::ServiceEventKind::FullState => {
                    *model = ours.map(|i| (i.port, value(i))).collect();
                }
                pb::ServiceEventKind::InstanceUpserted => {
                    model.extend(ours.map(|i| (i.port, value(i))));
                }
                pb::ServiceEventKind::InstanceRemoved => {
                    for i in ours {
                        model.remove(&i.port);
                    }
                }
                pb::ServiceEventKind::ServiceDeleted => model.clear(),
                _ => {}
            }
            *last_index = (*last_index).max(event.index);
            record(
                &self.log,
                Seen {
                    node: self.node,
                    item: item.to_string(),
                    connection,
                    index: event.index,
                    full: kind == pb::ServiceEventKind::FullState,
                    state: State::Naming(model.clone()),
                },
            );
        }
        Ok(())
    }
}

/// What the events break, one line per problem (empty when nothing does).
pub fn check(seen: &[Seen], history: &History) -> Vec<String> {
    let mut problems = Vec::new();
    check_order(seen, &mut problems);
    check_agreement(seen, &mut problems);
    check_values(seen, history, &mut problems);
    problems
}

/// Within one connection an item's indexes never go down; change events move them up.
fn check_order(seen: &[Seen], problems: &mut Vec<String>) {
    let mut last: HashMap<(usize, &str, u32), u64> = HashMap::new();
    for s in seen {
        if let Some(&before) = last.get(&(s.node, s.item.as_str(), s.connection)) {
            let naming_change = matches!(s.state, State::Naming(_)) && !s.full;
            if s.index < before || (naming_change && s.index == before) {
                problems.push(format!(
                    "stream order: observer on node {} saw {} at index {} after index {before} on one connection",
                    s.node, s.item, s.index
                ));
            }
        }
        last.insert((s.node, &s.item, s.connection), s.index);
    }
}

/// Every observer reporting an item at an index reports the same state there. Index 0
/// (an item that never existed) is skipped.
fn check_agreement(seen: &[Seen], problems: &mut Vec<String>) {
    let mut at: HashMap<(&str, u64), &Seen> = HashMap::new();
    let mut reported: HashSet<(&str, u64)> = HashSet::new();
    for s in seen.iter().filter(|s| s.index > 0) {
        match at.get(&(s.item.as_str(), s.index)) {
            None => {
                at.insert((&s.item, s.index), s);
            }
            Some(first) if first.state != s.state => {
                if reported.insert((&s.item, s.index)) {
                    problems.push(format!(
                        "streams disagree on {} at index {}: node {} saw {:?}, node {} saw {:?} (an event missed or misapplied)",
                        s.item, s.index, first.node, first.state, s.node, s.state
                    ));
                }
            }
            Some(_) => {}
        }
    }
}

/// Every md5 and instance value seen was written by an operation of the history.
fn check_values(seen: &[Seen], history: &History, problems: &mut Vec<String>) {
    let mut written: HashSet<(String, String)> = HashSet::new();
    for op in &history.ops {
        let value = match &op.kind {
            OpKind::Put { value } | OpKind::Cas { value, .. } => value,
            _ => continue,
        };
        if op.key.starts_with("config/") {
            written.insert((op.key.clone(), md5_hex(value.as_bytes())));
        } else {
            written.insert((op.key.clone(), value.clone()));
        }
    }
    let mut reported = HashSet::new();
    for s in seen {
        let unknown: Vec<(String, &String)> = match &s.state {
            State::Config(Some(md5)) => vec![(s.item.clone(), md5)],
            State::Config(None) => Vec::new(),
            State::Naming(instances) => instances
                .iter()
                .map(|(port, v)| (format!("{}/p{port}", s.item), v))
                .collect(),
        }
        .into_iter()
        .filter(|(key, v)| !written.contains(&(key.clone(), (*v).clone())))
        .collect();
        for (key, v) in unknown {
            if reported.insert((key.clone(), v.clone())) {
                problems.push(format!(
                    "observer on node {} saw {key} = {v} at index {}, which no operation wrote",
                    s.node, s.index
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::history::{Op, Outcome};

    fn naming(node: usize, connection: u32, index: u64, full: bool, state: &[(u32, &str)]) -> Seen {
        Seen {
            node,
            item: "naming/e0/s0".to_string(),
            connection,
            index,
            full,
            state: State::Naming(state.iter().map(|(p, v)| (*p, v.to_string())).collect()),
        }
    }

    fn put(key: &str, value: &str) -> Op {
        Op {
            client: 1,
            key: key.to_string(),
            kind: OpKind::Put {
                value: value.to_string(),
            },
            invoke: 0,
            complete: None,
            outcome: Outcome::Unknown,
        }
    }

    fn history() -> History {
        History::new(vec![
            put("naming/e0/s0/p1", "a"),
            put("naming/e0/s0/p2", "b"),
            put("naming/e0/s0/p1", "c"),
        ])
    }

    #[test]
    fn streams_that_saw_every_change_pass() {
        let seen = vec![
            naming(1, 0, 5, true, &[]),
            naming(1, 0, 6, false, &[(1, "a")]),
            naming(1, 0, 7, false, &[(1, "a"), (2, "b")]),
            naming(2, 0, 6, true, &[(1, "a")]),
            naming(2, 0, 7, false, &[(1, "a"), (2, "b")]),
            naming(2, 0, 9, false, &[(1, "c"), (2, "b")]),
        ];
        assert_eq!(check(&seen, &history()), Vec::<String>::new());
    }

    #[test]
    fn a_missed_event_shows_as_disagreement() {
        // Node 2 missed index 7 (p2 = b): its state at index 9 lacks port 2.
        let seen = vec![
            naming(1, 0, 6, false, &[(1, "a")]),
            naming(1, 0, 7, false, &[(1, "a"), (2, "b")]),
            naming(1, 0, 9, false, &[(1, "c"), (2, "b")]),
            naming(2, 0, 6, false, &[(1, "a")]),
            naming(2, 0, 9, false, &[(1, "c")]),
        ];
        let problems = check(&seen, &history());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("disagree") && problems[0].contains("index 9"));
    }

    #[test]
    fn indexes_going_back_on_one_connection_are_reported() {
        let seen = vec![
            naming(1, 0, 7, false, &[(1, "a")]),
            naming(1, 0, 6, false, &[(1, "a")]),
            // A new connection may start anywhere.
            naming(1, 1, 5, true, &[(1, "a")]),
        ];
        let problems = check(&seen, &history());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("stream order"));
    }

    #[test]
    fn a_value_nobody_wrote_is_reported() {
        let mut seen = vec![naming(1, 0, 6, false, &[(1, "zzz")])];
        seen.push(Seen {
            node: 1,
            item: "config/e0/k0".to_string(),
            connection: 0,
            index: 3,
            full: false,
            state: State::Config(Some(md5_hex(b"nope"))),
        });
        let problems = check(&seen, &history());
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().all(|p| p.contains("no operation wrote")));
    }

    #[test]
    fn expected_states_group_naming_slots_by_service() {
        let k = |group, index| Key {
            group,
            epoch: 2,
            index,
        };
        let finals = BTreeMap::from([
            (k(Group::Config, 0), Some("x".to_string())),
            (k(Group::Config, 1), None),
            (k(Group::Naming, 0), Some("a".to_string())),
            (k(Group::Naming, 1), None),
            (k(Group::Naming, 2), Some("c".to_string())),
            (k(Group::Naming, 3), None),
        ]);
        let want = expected_states(&finals);
        assert_eq!(
            want.get("config/e2/k0"),
            Some(&State::Config(Some(md5_hex(b"x"))))
        );
        assert_eq!(want.get("config/e2/k1"), Some(&State::Config(None)));
        assert_eq!(
            want.get("naming/e2/s0"),
            Some(&State::Naming(BTreeMap::from([
                (1, "a".to_string()),
                (3, "c".to_string())
            ])))
        );
        assert_eq!(
            want.get("naming/e2/s1"),
            Some(&State::Naming(BTreeMap::new()))
        );
    }
}
