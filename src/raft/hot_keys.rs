//! The values of keys the apply path reads back, kept in memory.
//!
//! Applying a write usually reads what the previous write of the same key left (a
//! configuration publish reads the item and its history index, then rewrites both).
//! From RocksDB such a read searches every memtable and the Bloom filter of every L0
//! table: 13 % of the busiest node's CPU under a publish load. [`HotKeys`] remembers
//! the last value written for keys that the apply path read (and keeps a known key
//! current whatever writes it, read or not), so the next write of the same key finds
//! it in a hash map.
//!
//! It must never disagree with the column family: only the state machine's apply
//! writes the group's data, and it records here what it wrote, after the write
//! succeeded; a snapshot restore clears it. A key it does not know is read from
//! RocksDB. Memory is bounded by two generations: when the newer one holds half the
//! budget it becomes the older one and the previous older one is dropped, so keys
//! that keep being written stay and the others age out.

/// The maps are keyed by the client's keys: foldhash, seeded at random per process and
/// per map, at a fraction of SipHash's cost (Cargo.toml). It resists chosen colliding
/// keys less than SipHash does; here such keys could only slow a bounded cache, and
/// only for an authenticated client whose every key is a Raft write.
type Hasher = foldhash::fast::RandomState;

/// A set of client keys, hashed as [`HotKeys`] hashes them (the keys an apply batch
/// read).
pub type KeySet = std::collections::HashSet<Vec<u8>, Hasher>;

/// Per-entry bookkeeping counted against the budget besides key and value bytes.
const ENTRY_OVERHEAD: usize = 64;

type Generation = std::collections::HashMap<Vec<u8>, Option<Vec<u8>>, Hasher>;

/// What one entry counts against the budget.
fn cost(key: &[u8], value: &Option<Vec<u8>>) -> usize {
    key.len() + value.as_ref().map_or(0, Vec::len) + ENTRY_OVERHEAD
}

/// Recently written values of read keys, within a byte budget.
#[derive(Debug, Default)]
pub struct HotKeys {
    newer: Generation,
    older: Generation,
    newer_bytes: usize,
    budget: usize,
}

impl HotKeys {
    /// An empty cache of at most `budget` bytes (0: it keeps nothing).
    pub fn new(budget: usize) -> Self {
        HotKeys {
            budget,
            ..Default::default()
        }
    }

    /// What the column family holds for `key`, if known: `Some(None)` means the key is
    /// known to be absent.
    pub fn get(&self, key: &[u8]) -> Option<Option<&[u8]>> {
        self.newer
            .get(key)
            .or_else(|| self.older.get(key))
            .map(|v| v.as_deref())
    }

    /// The apply path wrote `value` (None: deleted) for `key`, and the write is in the
    /// column family; `read`: the apply path read the key first. A key read is
    /// remembered; one already known is kept current whether it was read or not, so
    /// the cache never holds an older value than the column family.
    pub fn written(&mut self, key: Vec<u8>, value: Option<Vec<u8>>, read: bool) {
        if read || self.get(&key).is_some() {
            self.record(key, value);
        }
    }

    fn record(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        let size = cost(&key, &value);
        self.forget(&key);
        if size > self.budget / 2 {
            // Too big to keep (or caching is off): no older value stays either.
            return;
        }
        if self.newer_bytes + size > self.budget / 2 {
            self.older = std::mem::take(&mut self.newer);
            self.newer_bytes = 0;
        }
        self.newer_bytes += size;
        self.newer.insert(key, value);
    }

    fn forget(&mut self, key: &[u8]) {
        if let Some(old) = self.newer.remove(key) {
            self.newer_bytes -= cost(key, &old);
        }
        self.older.remove(key);
    }

    /// Forget everything (the data was replaced).
    pub fn clear(&mut self) {
        self.newer.clear();
        self.older.clear();
        self.newer_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(i: u32) -> Vec<u8> {
        format!("key-{i:04}").into_bytes()
    }

    #[test]
    fn remembers_values_and_deletions() {
        let mut h = HotKeys::new(1 << 20);
        assert_eq!(h.get(b"a"), None, "unknown");
        h.written(b"a".to_vec(), Some(b"1".to_vec()), true);
        h.written(b"b".to_vec(), None, true);
        assert_eq!(h.get(b"a"), Some(Some(&b"1"[..])));
        assert_eq!(h.get(b"b"), Some(None), "known absent");
        h.written(b"a".to_vec(), Some(b"22".to_vec()), true);
        assert_eq!(h.get(b"a"), Some(Some(&b"22"[..])));
        assert_eq!(h.newer_bytes, 1 + 2 + ENTRY_OVERHEAD + 1 + ENTRY_OVERHEAD);
        h.clear();
        assert_eq!(h.get(b"a"), None);
        assert_eq!(h.newer_bytes, 0);
    }

    #[test]
    fn memory_stays_within_the_budget_and_rewritten_keys_stay() {
        let entry = 8 + 100 + ENTRY_OVERHEAD;
        let mut h = HotKeys::new(entry * 20);
        for i in 0..1000 {
            h.written(k(i), Some(vec![0; 100]), true);
            // Key 0 is rewritten all along: it never ages out.
            h.written(k(0), Some(vec![1; 100]), true);
            assert!(h.newer_bytes <= entry * 10);
            assert!(h.newer.len() + h.older.len() <= 20);
        }
        assert_eq!(h.get(&k(0)), Some(Some(&[1u8; 100][..])));
        assert_eq!(h.get(&k(1)), None, "aged out");
        assert!(h.get(&k(999)).is_some(), "the newest stay");
    }

    #[test]
    fn a_known_key_stays_current_and_an_unread_one_is_not_taken_in() {
        let mut h = HotKeys::new(1 << 20);
        h.written(b"a".to_vec(), Some(b"1".to_vec()), false);
        assert_eq!(h.get(b"a"), None, "neither read nor known");
        h.written(b"a".to_vec(), Some(b"1".to_vec()), true);
        h.written(b"a".to_vec(), Some(b"2".to_vec()), false);
        assert_eq!(h.get(b"a"), Some(Some(&b"2"[..])), "known: kept current");
        h.written(b"a".to_vec(), None, false);
        assert_eq!(h.get(b"a"), Some(None));
    }

    #[test]
    fn a_value_too_big_replaces_a_cached_one_by_nothing() {
        let mut h = HotKeys::new(1000);
        h.written(b"a".to_vec(), Some(b"small".to_vec()), true);
        h.written(b"a".to_vec(), Some(vec![0; 600]), true);
        assert_eq!(h.get(b"a"), None, "never the stale small value");
        assert_eq!(h.newer_bytes, 0);
        let mut off = HotKeys::new(0);
        off.written(b"a".to_vec(), Some(b"1".to_vec()), true);
        assert_eq!(off.get(b"a"), None, "budget 0 keeps nothing");
    }
}
