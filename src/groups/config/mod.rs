//! The `config` group: the configuration center's items, their history, and the
//! change feed behind `Watch` (Nacos config semantics, strongly consistent).
//!
//! - `model`: commands, queries and their replies, stored records, the key layout
//!   inside the group.
//! - `client`: the operations as typed requests for [`crate::groups::client`].
//! - `validate`: the documented input rules, applied at the edge before proposing.
//! - `processor`: deterministic apply and query over the group's RocksDB data.
//! - `watch`: the per-node change feed and the Watch engine that serves it.
//!
//! Revisions are Raft log indexes: globally ordered, identical on every replica and
//! free to generate. History keeps the newest `history_limit` revisions per item; the
//! limit travels inside each publish command, so every replica prunes identically even
//! if nodes are configured differently.

pub mod client;
pub mod model;
pub mod processor;
pub mod validate;
pub mod watch;

pub use model::*;
pub use processor::ConfigProcessor;
pub use watch::{ConfigChange, ConfigFeed};

/// Lowercase hex MD5 of the content bytes, as Nacos computes it.
pub fn md5_hex(content: &[u8]) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(content))
}

#[cfg(test)]
mod tests {
    #[test]
    fn md5_matches_nacos() {
        assert_eq!(super::md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(super::md5_hex(b"hello"), "5d41402abc4b2a76b9719d911017c592");
    }
}
