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

/// A write to the config group. Everything apply needs is inside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfigCommand {
    Publish {
        key: ConfigKey,
        content: String,
        md5: String,
        r#type: String,
        app_name: String,
        tags: Vec<String>,
        description: String,
        /// `Some("")`: only if absent; `Some(md5)`: only if current md5 equals it.
        cas_md5: Option<String>,
        history_limit: u32,
    },
    Remove {
        key: ConfigKey,
        cas_md5: Option<String>,
        history_limit: u32,
    },
}

/// A read of the config group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfigQuery {
    Get {
        key: ConfigKey,
    },
    List {
        namespace: String,
        group_pattern: String,
        data_id_pattern: String,
        offset: u64,
        limit: u32,
    },
    History {
        key: ConfigKey,
        offset: u64,
        limit: u32,
    },
    HistoryAt {
        key: ConfigKey,
        revision: u64,
    },
    /// Current md5 (None if absent) and the revision that produced that state.
    States {
        keys: Vec<ConfigKey>,
    },
}

/// Answers of the config group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfigReply {
    Published {
        md5: String,
        revision: u64,
        modified_ms: u64,
    },
    Removed {
        existed: bool,
        revision: u64,
    },
    Item(Option<ConfigRecord>),
    Page {
        items: Vec<(ConfigKey, ConfigRecord)>,
        total: u64,
    },
    History {
        entries: Vec<HistoryRecord>,
        total: u64,
    },
    HistoryEntry(Option<HistoryRecord>),
    States(Vec<(Option<String>, u64)>),
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
