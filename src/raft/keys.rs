//! The whole on-disk key layout of the node's RocksDB, in one place.
//!
//! One RocksDB instance per node holds every group. Sharing it means one write-ahead
//! log, so a single fsync makes the appends of all groups durable at once.
//!
//! | column family     | key                         | value                         |
//! |-------------------|-----------------------------|-------------------------------|
//! | `raft_meta`       | `<group>/vote`              | bincode `Vote`                |
//! | `raft_meta`       | `<group>/purged`            | bincode `LogId` (last purged) |
//! | `raft_meta`       | `<group>/committed`         | bincode `LogId`               |
//! | `raft_meta`       | `@node/identity`            | bincode `Identity`            |
//! | `raft_meta`       | `@node/bootstrap`           | bincode `BootstrapRecord`     |
//! | `log.<group>`     | `u64 big-endian index`      | bincode `Entry`               |
//! | `sm.<group>`      | `m` + name (`m/applied`, `m/restoring`) | state-machine metadata |
//! | `sm.<group>`      | `d` + group-defined key     | state-machine data            |
//!
//! Big-endian indexes sort numerically, so a forward iterator walks the log in order
//! and `delete_range` removes a contiguous span. The `m`/`d` prefixes keep metadata
//! out of any scan over data.

/// Column family with every group's vote, purge point and committed id.
pub const RAFT_META_CF: &str = "raft_meta";

/// Column family holding one group's log entries.
pub fn log_cf(group: &str) -> String {
    format!("log.{group}")
}

/// Column family holding one group's state-machine data (RocksDB-backed groups).
pub fn sm_cf(group: &str) -> String {
    format!("sm.{group}")
}

/// This node's cluster identity (`raft::identity::Identity`). Group names are
/// `[a-z0-9_]+`, so a key starting with `@` never collides with a group's keys.
pub const IDENTITY_KEY: &[u8] = b"@node/identity";

/// The bootstrapping node's record of initial members yet to take the identity.
pub const BOOTSTRAP_KEY: &[u8] = b"@node/bootstrap";

/// Set when the cluster removed this node: it never serves on this data again.
pub const REMOVED_KEY: &[u8] = b"@node/removed";

/// Set when `--force-new-cluster` rewrote the membership; cleared by a start without
/// the flag, so a flag left in place does not force again on every restart.
pub const FORCED_KEY: &[u8] = b"@node/forced";

pub fn vote_key(group: &str) -> Vec<u8> {
    format!("{group}/vote").into_bytes()
}

pub fn purged_key(group: &str) -> Vec<u8> {
    format!("{group}/purged").into_bytes()
}

pub fn committed_key(group: &str) -> Vec<u8> {
    format!("{group}/committed").into_bytes()
}

/// Key of a log entry.
pub fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// Index of a log entry key; `None` if the key is not one.
pub fn parse_log_key(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// The state machine's applied position (`AppliedState`).
pub const SM_APPLIED_KEY: &[u8] = b"m/applied";

/// Present while a snapshot restore is replacing the state machine's data
/// (`raft::rocks_sm`).
pub const SM_RESTORING_KEY: &[u8] = b"m/restoring";

/// Prefix of every state-machine data key.
pub const SM_DATA_PREFIX: u8 = b'd';

/// State-machine data key for a group-defined key.
pub fn sm_data_key(user_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(user_key.len() + 1);
    k.push(SM_DATA_PREFIX);
    k.extend_from_slice(user_key);
    k
}

/// The group-defined key inside a state-machine data key.
pub fn sm_user_key(data_key: &[u8]) -> Option<&[u8]> {
    match data_key.split_first() {
        Some((&SM_DATA_PREFIX, rest)) => Some(rest),
        _ => None,
    }
}

/// Smallest key strictly greater than every key that starts with `prefix`, or `None`
/// when no such key exists (the prefix is all 0xff).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_numerically_and_round_trip() {
        let indexes = [0u64, 1, 9, 10, 255, 256, 65_535, 1 << 40, u64::MAX];
        let mut keys: Vec<_> = indexes.iter().map(|i| log_key(*i)).collect();
        keys.sort();
        let parsed: Vec<u64> = keys.iter().map(|k| parse_log_key(k).unwrap()).collect();
        assert_eq!(parsed, indexes);
        assert_eq!(parse_log_key(b"short"), None);
    }

    #[test]
    fn group_keys_do_not_collide() {
        assert_ne!(vote_key("config"), purged_key("config"));
        assert_ne!(vote_key("config"), vote_key("configx"));
        assert_ne!(log_cf("config"), sm_cf("config"));
    }

    #[test]
    fn data_keys_round_trip_and_never_look_like_metadata() {
        for user in [&b""[..], b"a", b"m/applied", b"\xff\x00"] {
            let k = sm_data_key(user);
            assert_eq!(sm_user_key(&k), Some(user));
            assert_ne!(k.as_slice(), SM_APPLIED_KEY);
        }
        assert_eq!(sm_user_key(SM_APPLIED_KEY), None);
        // Every data key sorts after the metadata keys' prefix range ends ('d' > 'm' is
        // false, so check the ranges are disjoint instead).
        assert!(prefix_end(&[SM_DATA_PREFIX]).unwrap() <= b"m".to_vec());
    }

    #[test]
    fn prefix_end_bounds_the_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        let end = prefix_end(b"d/x").unwrap();
        assert!(b"d/x\xff\xff".to_vec() < end);
        assert!(b"d/y".to_vec() >= end);
    }
}
