//! Deterministic apply and query of the config group: one method per operation.

use std::sync::Arc;

use crate::codec::{decode_message, decode_stored, encode};
use crate::error::Error;
use crate::groups::client::encode_reply;
use crate::groups::config::model::*;
use crate::groups::config::watch::{ConfigChange, ConfigFeed};
use crate::raft::rocks_sm::{ApplyError, KvTxn, KvView, Processor};
use crate::raft::types::Command;

type Txn<'a> = KvTxn<'a, ConfigChange>;

pub struct ConfigProcessor {
    feed: Arc<ConfigFeed>,
}

/// Where and when a command is applied: its log index (the new revision) and the time
/// the proposing node chose for it.
#[derive(Clone, Copy)]
struct At {
    index: u64,
    time_ms: u64,
}

fn check_cas(
    key: &ConfigKey,
    current: Option<&ConfigRecord>,
    cas: &Option<String>,
) -> Result<(), Error> {
    let Some(expected) = cas else { return Ok(()) };
    let actual = current.map(|r| r.md5.as_str()).unwrap_or("");
    if actual != expected {
        return Err(Error::FailedPrecondition(format!(
            "config {key}: md5 is {:?}, cas_md5 expected {expected:?}",
            if actual.is_empty() {
                "<absent>"
            } else {
                actual
            }
        )));
    }
    Ok(())
}

fn load(txn: &Txn<'_>, key: &ConfigKey) -> Result<Option<ConfigRecord>, ApplyError> {
    Ok(match txn.get(&key.item_key())? {
        Some(b) => Some(decode_stored(&b, "config record")?),
        None => None,
    })
}

/// The item's history index: its retained revisions, oldest first (see [`add_history`]).
fn history_index(get: Option<Vec<u8>>) -> Option<Vec<u64>> {
    get.and_then(|b| decode_stored::<Vec<u64>>(&b, "config history index").ok())
}

/// Record a history entry and drop the oldest beyond `limit`.
///
/// The item's history index lists its retained revisions, so pruning is a point
/// read, a point delete and a point write. Scanning the history instead cost a tenth
/// of a leader's CPU under a publish load: a hot item's deleted history keys pile up
/// as tombstones that every scan steps over until a compaction.
fn add_history(
    txn: &mut Txn<'_>,
    key: &ConfigKey,
    rec: HistoryRecord,
    limit: u32,
    current_revision: Option<u64>,
) -> Result<(), ApplyError> {
    let index_key = key.history_index_key();
    let mut revisions = match history_index(txn.get(&index_key)?) {
        // Every change of the item is in its history, so an index that does not
        // reach the item's current revision was left behind (written by a version
        // without the index); like a missing or unreadable one, it is rebuilt.
        Some(r) if current_revision.is_none_or(|c| r.last().is_some_and(|l| *l >= c)) => r,
        // Rebuilt from the keys, deterministically: the same on every replica.
        _ => txn
            .scan_keys(&key.history_prefix())?
            .iter()
            .filter_map(|k| ConfigKey::history_revision(k))
            .collect(),
    };
    txn.put(&key.history_key(rec.revision), encode(&rec));
    revisions.push(rec.revision);
    let excess = revisions.len().saturating_sub(limit.max(1) as usize);
    for old in revisions.drain(..excess) {
        txn.delete(&key.history_key(old));
    }
    txn.put(&index_key, encode(&revisions));
    Ok(())
}

impl ConfigProcessor {
    pub fn new(feed: Arc<ConfigFeed>) -> Self {
        ConfigProcessor { feed }
    }

    fn publish(&self, txn: &mut Txn<'_>, at: At, p: Publish) -> Result<Published, ApplyError> {
        let current = load(txn, &p.key)?;
        check_cas(&p.key, current.as_ref(), &p.cas_md5)?;
        // The proposing node's clock may be behind the one that wrote the current
        // revision: an item's modification time never goes backwards.
        let modified_ms = current
            .as_ref()
            .map_or(at.time_ms, |c| at.time_ms.max(c.modified_ms));
        let rec = ConfigRecord {
            created_ms: current.as_ref().map_or(modified_ms, |c| c.created_ms),
            modified_ms,
            revision: at.index,
            content: p.content,
            md5: p.md5,
            r#type: p.r#type,
            app_name: p.app_name,
            tags: p.tags,
            description: p.description,
        };
        let history = HistoryRecord {
            revision: at.index,
            op: HistoryOp::Publish,
            md5: rec.md5.clone(),
            time_ms: modified_ms,
            content: rec.content.clone(),
            r#type: rec.r#type.clone(),
        };
        add_history(
            txn,
            &p.key,
            history,
            p.history_limit,
            current.map(|c| c.revision),
        )?;
        txn.put(&p.key.item_key(), encode(&rec));
        txn.emit(ConfigChange {
            key: p.key,
            md5: Some(rec.md5.clone()),
            log_index: at.index,
        });
        Ok(Published {
            md5: rec.md5,
            revision: at.index,
            modified_ms,
        })
    }

    fn remove(&self, txn: &mut Txn<'_>, at: At, r: Remove) -> Result<Removed, ApplyError> {
        let current = load(txn, &r.key)?;
        check_cas(&r.key, current.as_ref(), &r.cas_md5)?;
        let Some(old) = current else {
            return Ok(Removed {
                existed: false,
                revision: 0,
            });
        };
        let history = HistoryRecord {
            revision: at.index,
            op: HistoryOp::Remove,
            md5: old.md5,
            time_ms: at.time_ms.max(old.modified_ms),
            content: String::new(),
            r#type: old.r#type,
        };
        add_history(txn, &r.key, history, r.history_limit, Some(old.revision))?;
        txn.delete(&r.key.item_key());
        txn.emit(ConfigChange {
            key: r.key,
            md5: None,
            log_index: at.index,
        });
        Ok(Removed {
            existed: true,
            revision: at.index,
        })
    }

    fn get(&self, view: &KvView<'_>, q: Get) -> Result<Option<ConfigRecord>, Error> {
        Ok(match view.get(&q.key.item_key())? {
            Some(b) => Some(decode_stored(&b, "config record")?),
            None => None,
        })
    }

    fn list(&self, view: &KvView<'_>, q: List) -> Result<Page, Error> {
        let prefix = ConfigKey::namespace_prefix(&q.namespace);
        let mut items = Vec::new();
        let mut total = 0u64;
        view.for_each(&prefix, |k, v| {
            let Some(key) = ConfigKey::from_item_key(&k) else {
                return Ok(());
            };
            if !glob_match(&q.group_pattern, &key.group)
                || !glob_match(&q.data_id_pattern, &key.data_id)
            {
                return Ok(());
            }
            if total >= q.offset && items.len() < q.limit as usize {
                let mut rec: ConfigRecord = decode_stored(&v, "config record")?;
                rec.content.clear();
                items.push((key, rec));
            }
            total += 1;
            Ok(())
        })?;
        Ok(Page { items, total })
    }

    fn history(&self, view: &KvView<'_>, q: History) -> Result<HistoryPage, Error> {
        let mut all = view.scan(&q.key.history_prefix(), None, usize::MAX)?;
        all.reverse();
        let total = all.len() as u64;
        let entries = all
            .into_iter()
            .skip(q.offset as usize)
            .take(q.limit as usize)
            .map(|(_, v)| {
                let mut h: HistoryRecord = decode_stored(&v, "history record")?;
                h.content.clear();
                Ok(h)
            })
            .collect::<Result<_, Error>>()?;
        Ok(HistoryPage { entries, total })
    }

    fn history_at(&self, view: &KvView<'_>, q: HistoryAt) -> Result<Option<HistoryRecord>, Error> {
        Ok(match view.get(&q.key.history_key(q.revision))? {
            Some(b) => Some(decode_stored(&b, "history record")?),
            None => None,
        })
    }

    fn states(&self, view: &KvView<'_>, q: States) -> Result<Vec<(Option<String>, u64)>, Error> {
        let mut out = Vec::with_capacity(q.keys.len());
        for key in q.keys {
            match view.get(&key.item_key())? {
                Some(b) => {
                    let rec: ConfigRecord = decode_stored(&b, "config record")?;
                    out.push((Some(rec.md5), rec.revision));
                }
                // The revision of the removal, if the history still has it.
                None => {
                    let last = history_index(view.get(&key.history_index_key())?)
                        .and_then(|r| r.last().copied())
                        .unwrap_or(0);
                    out.push((None, last));
                }
            }
        }
        Ok(out)
    }
}

impl Processor for ConfigProcessor {
    type Event = ConfigChange;

    fn apply(&self, txn: &mut Txn<'_>, index: u64, cmd: &Command) -> Result<Vec<u8>, ApplyError> {
        let at = At {
            index,
            time_ms: cmd.timestamp_ms,
        };
        match decode_message(&cmd.payload, "config command")? {
            ConfigCommand::Publish(p) => encode_reply(self.publish(txn, at, p)),
            ConfigCommand::Remove(r) => encode_reply(self.remove(txn, at, r)),
            ConfigCommand::Auth(a) => crate::auth::apply::apply(txn, index, a),
        }
    }

    fn query(&self, view: &KvView<'_>, query: &[u8]) -> Result<Vec<u8>, Error> {
        match decode_message(query, "config query")? {
            ConfigQuery::Get(q) => encode_reply(self.get(view, q)),
            ConfigQuery::List(q) => encode_reply(self.list(view, q)),
            ConfigQuery::History(q) => encode_reply(self.history(view, q)),
            ConfigQuery::HistoryAt(q) => encode_reply(self.history_at(view, q)),
            ConfigQuery::States(q) => encode_reply(self.states(view, q)),
            ConfigQuery::Auth(q) => crate::auth::apply::query(view, q),
        }
    }

    fn on_applied(&self, events: Vec<ConfigChange>) {
        self.feed.publish(events);
    }

    fn on_restored(&self) {
        self.feed.resync();
    }
}

/// `*` matches any run of characters (including none); everything else literally.
/// An empty pattern matches everything.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    if pattern.is_empty() || pattern == "*" {
        return true;
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(pos) => rest = &rest[pos + mid.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::rocks_sm::ProcessorHarness;

    type Harness = ProcessorHarness<ConfigProcessor>;

    fn harness() -> Harness {
        ProcessorHarness::new(ConfigProcessor::new(Arc::new(ConfigFeed::new(16))))
    }

    fn key(d: &str) -> ConfigKey {
        ConfigKey {
            namespace: "public".into(),
            group: "DEFAULT_GROUP".into(),
            data_id: d.into(),
        }
    }

    fn publish(d: &str, content: &str, cas: Option<&str>) -> ConfigCommand {
        ConfigCommand::Publish(Publish {
            key: key(d),
            content: content.into(),
            md5: format!("md5-{content}"),
            r#type: "text".into(),
            app_name: String::new(),
            tags: vec![],
            description: String::new(),
            cas_md5: cas.map(str::to_string),
            history_limit: 3,
        })
    }

    fn remove(d: &str, cas: Option<&str>) -> ConfigCommand {
        ConfigCommand::Remove(Remove {
            key: key(d),
            cas_md5: cas.map(str::to_string),
            history_limit: 3,
        })
    }

    /// Each row: a command, and whether it is applied (`Ok`) or refused with a
    /// message containing the text.
    #[test]
    fn publish_and_remove_table() {
        let mut h = harness();
        let rows: Vec<(ConfigCommand, Result<(), &str>)> = vec![
            (publish("a", "v1", Some("")), Ok(())),
            (publish("a", "v2", Some("")), Err("md5 is \"md5-v1\"")),
            (publish("a", "v2", Some("md5-wrong")), Err("md5")),
            (publish("a", "v2", Some("md5-v1")), Ok(())),
            (publish("a", "v3", None), Ok(())),
            (remove("a", Some("md5-v1")), Err("md5")),
            (remove("a", Some("md5-v3")), Ok(())),
            (remove("a", None), Ok(())),
            (publish("b", "x", Some("md5-x")), Err("<absent>")),
        ];
        for (i, (cmd, want)) in rows.into_iter().enumerate() {
            match (h.apply(1_000, &cmd), want) {
                (Ok(_), Ok(())) => {}
                (Err(e), Err(text)) => {
                    assert!(e.to_string().contains(text), "row {i}: {e} lacks {text:?}")
                }
                (got, want) => panic!("row {i}: got {got:?}, want {want:?}"),
            }
        }
        let got: Option<ConfigRecord> = h.query(&ConfigQuery::Get(Get { key: key("a") }));
        assert_eq!(got, None);
        // History keeps the last three revisions (publish v2, v3, remove), newest first.
        let page: HistoryPage = h.query(&ConfigQuery::History(History {
            key: key("a"),
            offset: 0,
            limit: 10,
        }));
        let ops: Vec<(u64, HistoryOp)> = page.entries.iter().map(|e| (e.revision, e.op)).collect();
        assert_eq!(
            ops,
            vec![
                (7, HistoryOp::Remove),
                (5, HistoryOp::Publish),
                (4, HistoryOp::Publish)
            ]
        );
    }

    /// Issue #11: a revision proposed by a node whose clock is behind keeps the
    /// item's modification time from going backwards.
    #[test]
    fn modification_time_never_goes_backwards() {
        let mut h = harness();
        h.apply(5_000, &publish("a", "v1", None)).unwrap();
        let published: Published = h.reply(2_000, &publish("a", "v2", None)).unwrap();
        assert_eq!(published.modified_ms, 5_000);
        let got: Option<ConfigRecord> = h.query(&ConfigQuery::Get(Get { key: key("a") }));
        let got = got.unwrap();
        assert_eq!((got.created_ms, got.modified_ms), (5_000, 5_000));
        assert_eq!(got.content, "v2");
        h.apply(9_000, &publish("a", "v3", None)).unwrap();
        let got: Option<ConfigRecord> = h.query(&ConfigQuery::Get(Get { key: key("a") }));
        assert_eq!(got.unwrap().modified_ms, 9_000);
    }

    #[test]
    fn glob_table() {
        let cases = [
            ("", "anything", true),
            ("*", "x", true),
            ("app", "app", true),
            ("app", "apps", false),
            ("app*", "app.yaml", true),
            ("*.yaml", "app.yaml", true),
            ("*.yaml", "app.yml", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "acb", false),
            ("ab*ba", "aba", false),
            ("*mid*", "has-mid-here", true),
        ];
        for (p, t, want) in cases {
            assert_eq!(glob_match(p, t), want, "{p} vs {t}");
        }
    }
}
