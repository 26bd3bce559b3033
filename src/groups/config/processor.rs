//! Deterministic apply and query of the config group.

use std::sync::Arc;

use crate::error::Error;
use crate::groups::config::model::*;
use crate::groups::config::watch::{ConfigChange, ConfigFeed};
use crate::raft::kv::{ApplyError, KvTxn, KvView, Processor};
use crate::raft::types::Command;

pub struct ConfigProcessor {
    feed: Arc<ConfigFeed>,
}

impl ConfigProcessor {
    pub fn new(feed: Arc<ConfigFeed>) -> Self {
        ConfigProcessor { feed }
    }
}

use crate::groups::codec::{dec, dec_message, enc};

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

/// Record a history entry and drop the oldest beyond `limit`.
///
/// The item's history index lists its retained revisions, so pruning is a point
/// read, a point delete and a point write. Scanning the history instead cost a tenth
/// of a leader's CPU under a publish load: a hot item's deleted history keys pile up
/// as tombstones that every scan steps over until a compaction.
fn add_history(
    txn: &mut KvTxn<'_, ConfigChange>,
    key: &ConfigKey,
    rec: HistoryRecord,
    limit: u32,
    current_revision: Option<u64>,
) -> Result<(), ApplyError> {
    let index_key = key.history_index_key();
    let index: Option<Vec<u64>> = txn
        .get(&index_key)?
        .and_then(|b| dec::<Vec<u64>>(&b, "config history index").ok());
    let mut revisions = match index {
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
    txn.put(&key.history_key(rec.revision), enc(&rec));
    revisions.push(rec.revision);
    let excess = revisions.len().saturating_sub(limit.max(1) as usize);
    for old in revisions.drain(..excess) {
        txn.delete(&key.history_key(old));
    }
    txn.put(&index_key, enc(&revisions));
    Ok(())
}

impl Processor for ConfigProcessor {
    type Event = ConfigChange;

    fn apply(
        &self,
        txn: &mut KvTxn<'_, ConfigChange>,
        index: u64,
        cmd: &Command,
    ) -> Result<Vec<u8>, ApplyError> {
        let command: ConfigCommand = dec_message(&cmd.payload, "config command")?;
        let now = cmd.timestamp_ms;
        let reply = match command {
            ConfigCommand::Publish {
                key,
                content,
                md5,
                r#type,
                app_name,
                tags,
                description,
                cas_md5,
                history_limit,
            } => {
                let current: Option<ConfigRecord> = match txn.get(&key.item_key())? {
                    Some(b) => Some(dec(&b, "config record")?),
                    None => None,
                };
                check_cas(&key, current.as_ref(), &cas_md5)?;
                let rec = ConfigRecord {
                    created_ms: current.as_ref().map(|c| c.created_ms).unwrap_or(now),
                    modified_ms: now,
                    revision: index,
                    content,
                    md5,
                    r#type,
                    app_name,
                    tags,
                    description,
                };
                add_history(
                    txn,
                    &key,
                    HistoryRecord {
                        revision: index,
                        op: HistoryOp::Publish,
                        md5: rec.md5.clone(),
                        time_ms: now,
                        content: rec.content.clone(),
                        r#type: rec.r#type.clone(),
                    },
                    history_limit,
                    current.as_ref().map(|c| c.revision),
                )?;
                txn.put(&key.item_key(), enc(&rec));
                txn.emit(ConfigChange {
                    key,
                    md5: Some(rec.md5.clone()),
                    log_index: index,
                });
                ConfigReply::Published {
                    md5: rec.md5,
                    revision: index,
                    modified_ms: now,
                }
            }
            ConfigCommand::Remove {
                key,
                cas_md5,
                history_limit,
            } => {
                let current: Option<ConfigRecord> = match txn.get(&key.item_key())? {
                    Some(b) => Some(dec(&b, "config record")?),
                    None => None,
                };
                check_cas(&key, current.as_ref(), &cas_md5)?;
                match current {
                    None => ConfigReply::Removed {
                        existed: false,
                        revision: 0,
                    },
                    Some(old) => {
                        add_history(
                            txn,
                            &key,
                            HistoryRecord {
                                revision: index,
                                op: HistoryOp::Remove,
                                md5: old.md5,
                                time_ms: now,
                                content: String::new(),
                                r#type: old.r#type,
                            },
                            history_limit,
                            Some(old.revision),
                        )?;
                        txn.delete(&key.item_key());
                        txn.emit(ConfigChange {
                            key,
                            md5: None,
                            log_index: index,
                        });
                        ConfigReply::Removed {
                            existed: true,
                            revision: index,
                        }
                    }
                }
            }
        };
        Ok(enc(&reply))
    }

    fn query(&self, view: &KvView<'_>, query: &[u8]) -> Result<Vec<u8>, Error> {
        let query: ConfigQuery = dec_message(query, "config query")?;
        let reply = match query {
            ConfigQuery::Get { key } => ConfigReply::Item(match view.get(&key.item_key())? {
                Some(b) => Some(dec(&b, "config record")?),
                None => None,
            }),
            ConfigQuery::List {
                namespace,
                group_pattern,
                data_id_pattern,
                offset,
                limit,
            } => {
                let prefix = ConfigKey::namespace_prefix(&namespace);
                let mut items = Vec::new();
                let mut total = 0u64;
                view.for_each(&prefix, |k, v| {
                    let Some(key) = ConfigKey::from_item_key(&k) else {
                        return Ok(());
                    };
                    if !glob_match(&group_pattern, &key.group)
                        || !glob_match(&data_id_pattern, &key.data_id)
                    {
                        return Ok(());
                    }
                    if total >= offset && items.len() < limit as usize {
                        let mut rec: ConfigRecord = dec(&v, "config record")?;
                        rec.content.clear();
                        items.push((key, rec));
                    }
                    total += 1;
                    Ok(())
                })?;
                ConfigReply::Page { items, total }
            }
            ConfigQuery::History { key, offset, limit } => {
                let mut all = view.scan(&key.history_prefix(), None, usize::MAX)?;
                all.reverse();
                let total = all.len() as u64;
                let entries = all
                    .into_iter()
                    .skip(offset as usize)
                    .take(limit as usize)
                    .map(|(_, v)| {
                        let mut h: HistoryRecord = dec(&v, "history record")?;
                        h.content.clear();
                        Ok(h)
                    })
                    .collect::<Result<_, Error>>()?;
                ConfigReply::History { entries, total }
            }
            ConfigQuery::HistoryAt { key, revision } => {
                ConfigReply::HistoryEntry(match view.get(&key.history_key(revision))? {
                    Some(b) => Some(dec(&b, "history record")?),
                    None => None,
                })
            }
            ConfigQuery::States { keys } => {
                let mut out = Vec::with_capacity(keys.len());
                for key in keys {
                    match view.get(&key.item_key())? {
                        Some(b) => {
                            let rec: ConfigRecord = dec(&b, "config record")?;
                            out.push((Some(rec.md5), rec.revision));
                        }
                        None => {
                            // The revision of the removal, if history still has it.
                            let last = view
                                .scan(&key.history_prefix(), None, usize::MAX)?
                                .pop()
                                .map(|(_, v)| dec::<HistoryRecord>(&v, "history record"))
                                .transpose()?
                                .map(|h| h.revision)
                                .unwrap_or(0);
                            out.push((None, last));
                        }
                    }
                }
                ConfigReply::States(out)
            }
        };
        Ok(enc(&reply))
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
    use super::glob_match;

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
