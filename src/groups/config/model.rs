//! Data of the config group: what is proposed, stored and asked.

use serde::{Deserialize, Serialize};

/// namespace + group + data id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ConfigKey {
    pub namespace: String,
    pub group: String,
    pub data_id: String,
}

impl std::fmt::Display for ConfigKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.group, self.data_id)
    }
}

/// Names never contain NUL (validated), so NUL separates them in keys.
const SEP: u8 = 0;
const ITEM: u8 = b'i';
const HISTORY: u8 = b'h';
const HISTORY_INDEX: u8 = b'r';

impl ConfigKey {
    fn push_parts(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.namespace.as_bytes());
        out.push(SEP);
        out.extend_from_slice(self.group.as_bytes());
        out.push(SEP);
        out.extend_from_slice(self.data_id.as_bytes());
    }

    /// `i ns \0 group \0 data_id`
    pub fn item_key(&self) -> Vec<u8> {
        let mut k = vec![ITEM];
        self.push_parts(&mut k);
        k
    }

    /// `h ns \0 group \0 data_id \0` — prefix of the item's history.
    pub fn history_prefix(&self) -> Vec<u8> {
        let mut k = vec![HISTORY];
        self.push_parts(&mut k);
        k.push(SEP);
        k
    }

    pub fn history_key(&self, revision: u64) -> Vec<u8> {
        let mut k = self.history_prefix();
        k.extend_from_slice(&revision.to_be_bytes());
        k
    }

    /// The revision of one of this item's history keys.
    pub fn history_revision(history_key: &[u8]) -> Option<u64> {
        let tail = history_key.get(history_key.len().checked_sub(8)?..)?;
        Some(u64::from_be_bytes(tail.try_into().ok()?))
    }

    /// `r ns \0 group \0 data_id` — the revisions of the item's retained history,
    /// oldest first (`Vec<u64>`), so that dropping the oldest is a point delete and
    /// not a scan over the item's history and its tombstones.
    pub fn history_index_key(&self) -> Vec<u8> {
        let mut k = vec![HISTORY_INDEX];
        self.push_parts(&mut k);
        k
    }

    /// Prefix of every item key of a namespace.
    pub fn namespace_prefix(namespace: &str) -> Vec<u8> {
        let mut k = vec![ITEM];
        k.extend_from_slice(namespace.as_bytes());
        k.push(SEP);
        k
    }

    /// Inverse of [`ConfigKey::item_key`].
    pub fn from_item_key(key: &[u8]) -> Option<ConfigKey> {
        let rest = key.strip_prefix(&[ITEM])?;
        let mut parts = rest.split(|b| *b == SEP);
        let ns = std::str::from_utf8(parts.next()?).ok()?;
        let group = std::str::from_utf8(parts.next()?).ok()?;
        let data_id = std::str::from_utf8(parts.next()?).ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some(ConfigKey {
            namespace: ns.into(),
            group: group.into(),
            data_id: data_id.into(),
        })
    }
}

/// A stored configuration item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRecord {
    pub content: String,
    pub md5: String,
    pub r#type: String,
    pub app_name: String,
    pub tags: Vec<String>,
    pub description: String,
    pub created_ms: u64,
    pub modified_ms: u64,
    pub revision: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HistoryOp {
    Publish,
    Remove,
}

/// One past change of an item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRecord {
    pub revision: u64,
    pub op: HistoryOp,
    pub md5: String,
    pub time_ms: u64,
    /// Content of the published version (empty for removals).
    pub content: String,
    pub r#type: String,
}

/// Publish (create or replace) an item. Everything apply needs is inside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    pub key: ConfigKey,
    pub content: String,
    pub md5: String,
    pub r#type: String,
    pub app_name: String,
    pub tags: Vec<String>,
    pub description: String,
    /// `Some("")`: only if absent; `Some(md5)`: only if the current md5 equals it.
    pub cas_md5: Option<String>,
    /// History revisions to keep (the proposing node's setting, so every replica
    /// prunes identically).
    pub history_limit: u32,
}

/// Remove an item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remove {
    pub key: ConfigKey,
    pub cas_md5: Option<String>,
    pub history_limit: u32,
}

/// The config group's log entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfigCommand {
    Publish(Publish),
    Remove(Remove),
    /// Users, roles and the signing key (`auth`): replicated with the configuration.
    Auth(crate::auth::model::AuthCommand),
}

/// What a publish answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub md5: String,
    pub revision: u64,
    pub modified_ms: u64,
}

/// What a remove answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    pub existed: bool,
    /// The removal's log index (0 when nothing was removed).
    pub revision: u64,
}

/// Read one item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Get {
    pub key: ConfigKey,
}

/// Search a namespace's items (content left out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct List {
    pub namespace: String,
    pub group_pattern: String,
    pub data_id_pattern: String,
    pub offset: u64,
    pub limit: u32,
}

/// A page of [`List`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    pub items: Vec<(ConfigKey, ConfigRecord)>,
    pub total: u64,
}

/// An item's history, newest first (content left out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    pub key: ConfigKey,
    pub offset: u64,
    pub limit: u32,
}

/// A page of [`History`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPage {
    pub entries: Vec<HistoryRecord>,
    pub total: u64,
}

/// One revision of an item's history, with its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryAt {
    pub key: ConfigKey,
    pub revision: u64,
}

/// For each key: the current md5 (`None`: absent) and the revision of that state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct States {
    pub keys: Vec<ConfigKey>,
}

/// The config group's reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfigQuery {
    Get(Get),
    List(List),
    History(History),
    HistoryAt(HistoryAt),
    States(States),
    Auth(crate::auth::model::AuthQuery),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ns: &str, g: &str, d: &str) -> ConfigKey {
        ConfigKey {
            namespace: ns.into(),
            group: g.into(),
            data_id: d.into(),
        }
    }

    #[test]
    fn item_keys_round_trip_and_stay_inside_their_namespace() {
        let k = key("public", "DEFAULT_GROUP", "app.yaml");
        assert_eq!(ConfigKey::from_item_key(&k.item_key()), Some(k.clone()));
        assert!(k
            .item_key()
            .starts_with(&ConfigKey::namespace_prefix("public")));
        // "pub" is a prefix of "public" as a string but not as a namespace.
        assert!(!k
            .item_key()
            .starts_with(&ConfigKey::namespace_prefix("pub")));
    }

    #[test]
    fn history_keys_sort_by_revision() {
        let k = key("n", "g", "d");
        assert!(k.history_key(9) < k.history_key(10));
        assert!(k.history_key(u64::MAX).starts_with(&k.history_prefix()));
        assert_eq!(ConfigKey::history_revision(&k.history_key(77)), Some(77));
        assert!(!k.history_index_key().starts_with(&k.history_prefix()));
        assert!(!k
            .history_index_key()
            .starts_with(&ConfigKey::namespace_prefix("n")));
        // Another item whose data id extends this one's does not share the prefix.
        let longer = key("n", "g", "d2");
        assert!(!longer.history_key(1).starts_with(&k.history_prefix()));
    }
}
