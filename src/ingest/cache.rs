//! Decoded state kept between batches: the heads of per-user lists and the per-item counters that almost every
//! event reads back. Without it each batch fetches and decodes them from RocksDB again (memtable skiplist walks, then block
//! lookups), which was most of the replay time in a profile.
//!
//! Entries move out of the cache into a batch's overlay while the batch is built and come back only after the
//! batch committed, so the cache never holds state the store does not: a failed batch just leaves them to be
//! read from the store again. The ingest fold is the only writer of these families, so nothing else can make an
//! entry stale.

use std::mem::size_of;

use foldhash::HashMap;

use crate::store::{ItemStats, ListHead};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Key {
    History(String),
    Positives(String),
    /// (item, stream, partition): counters are kept per source partition.
    Stats(String, String, i32),
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    Head(ListHead),
    Stats(ItemStats),
}

/// An approximate LRU in two generations, bounded by an estimate of its heap bytes: new and returned entries go
/// to the young map; when that holds half the budget it becomes the old map and the previous old map is dropped.
/// An entry used at least once per generation therefore stays; one not used for a whole generation goes.
pub(super) struct StateCache {
    half_budget: usize,
    young: HashMap<Key, Value>,
    young_bytes: usize,
    old: HashMap<Key, Value>,
}

impl StateCache {
    pub fn new(budget_bytes: usize) -> StateCache {
        StateCache {
            half_budget: budget_bytes / 2,
            young: HashMap::default(),
            young_bytes: 0,
            old: HashMap::default(),
        }
    }

    pub fn take(&mut self, key: &Key) -> Option<Value> {
        if let Some(v) = self.young.remove(key) {
            self.young_bytes = self.young_bytes.saturating_sub(footprint(key, &v));
            return Some(v);
        }
        self.old.remove(key)
    }

    pub fn put(&mut self, key: Key, value: Value) {
        if self.half_budget == 0 {
            return;
        }
        self.old.remove(&key);
        self.young_bytes += footprint(&key, &value);
        if let Some(replaced) = self.young.remove(&key) {
            self.young_bytes = self.young_bytes.saturating_sub(footprint(&key, &replaced));
        }
        self.young.insert(key, value);
        if self.young_bytes >= self.half_budget {
            self.old = std::mem::take(&mut self.young);
            self.young_bytes = 0;
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

/// Heap bytes an entry holds, roughly: the map slot and the strings.
fn footprint(key: &Key, _value: &Value) -> usize {
    let key_bytes = match key {
        Key::History(u) | Key::Positives(u) => u.len(),
        Key::Stats(item, stream, _) => item.len() + stream.len(),
    };
    size_of::<(Key, Value)>() + 16 + key_bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(events: u64) -> Value {
        Value::Stats(ItemStats {
            events,
            ..Default::default()
        })
    }

    #[test]
    fn take_moves_the_entry_out() {
        let mut c = StateCache::new(1 << 20);
        let k = Key::Stats("i".into(), "s".into(), 0);
        c.put(k.clone(), stats(3));
        assert_eq!(c.take(&k), Some(stats(3)));
        assert_eq!(c.take(&k), None, "taken entries are gone until put back");
    }

    #[test]
    fn stays_within_budget_and_keeps_recently_used_entries() {
        let entry = footprint(&Key::Stats("i00000".into(), "s".into(), 0), &stats(0));
        let mut c = StateCache::new(entry * 100);
        let hot = Key::Stats("hot000".into(), "s".into(), 0);
        c.put(hot.clone(), stats(1));
        for i in 0..1_000 {
            c.put(Key::Stats(format!("i{i:05}"), "s".into(), 0), stats(0));
            if i % 20 == 0 {
                // Used once per generation (50 entries): survives every rotation.
                let v = c.take(&hot).expect("hot entry kept");
                c.put(hot.clone(), v);
            }
            assert!(c.len() <= 101, "{} entries", c.len());
        }
        assert_eq!(c.take(&hot), Some(stats(1)));
        assert_eq!(
            c.take(&Key::Stats("i00000".into(), "s".into(), 0)),
            None,
            "cold entries are dropped"
        );
    }

    #[test]
    fn zero_budget_caches_nothing() {
        let mut c = StateCache::new(0);
        let k = Key::History("u".into());
        c.put(k.clone(), Value::Head(ListHead::default()));
        assert_eq!(c.take(&k), None);
    }
}
