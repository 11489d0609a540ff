//! A bounded in-memory cache shared by the stages that keep decoded store values between uses: the ingest fold
//! (list heads and item counters between batches) and the lookup API (items as match features need them).
//!
//! It is an approximate LRU in two generations, bounded by the bytes the caller says each entry holds: new and
//! refreshed entries go to the young map; when that holds half the budget it becomes the old map and the
//! previous old map is dropped. An entry used at least once per generation therefore stays; one not used for a
//! whole generation goes. Cheaper than an exact LRU (no list to maintain per hit) and good enough for both uses.

use std::borrow::Borrow;
use std::hash::Hash;
use std::mem::size_of;

use foldhash::HashMap;

pub struct GenerationalCache<K, V> {
    half_budget: usize,
    young: HashMap<K, (V, usize)>,
    young_bytes: usize,
    old: HashMap<K, (V, usize)>,
}

impl<K: Hash + Eq, V> GenerationalCache<K, V> {
    /// A cache holding about `budget_bytes` (0: caches nothing).
    pub fn new(budget_bytes: usize) -> Self {
        GenerationalCache {
            half_budget: budget_bytes / 2,
            young: HashMap::default(),
            young_bytes: 0,
            old: HashMap::default(),
        }
    }

    /// A copy of the entry, counted as a use: an entry of the old generation moves to the young one.
    pub fn get<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
        V: Clone,
    {
        if let Some((v, _)) = self.young.get(key) {
            return Some(v.clone());
        }
        let (v, bytes) = self.old.remove(key)?;
        self.insert_young(key.to_owned(), v.clone(), bytes);
        Some(v)
    }

    /// Adds or replaces an entry; `bytes` is its heap footprint beyond the map slot (keys, vectors).
    pub fn put(&mut self, key: K, value: V, bytes: usize) {
        if self.half_budget == 0 {
            return;
        }
        self.old.remove(&key);
        if let Some((_, replaced)) = self.young.remove(&key) {
            self.young_bytes = self.young_bytes.saturating_sub(replaced);
        }
        self.insert_young(key, value, size_of::<(K, V, usize)>() + 16 + bytes);
    }

    /// Like [`GenerationalCache::put`], for a key that is likely in the young generation already (it was just
    /// read with `get`): the value is overwritten where it lies, one lookup instead of two removes and an insert.
    pub fn replace(&mut self, key: K, value: V, bytes: usize) {
        if self.half_budget == 0 {
            return;
        }
        let bytes = size_of::<(K, V, usize)>() + 16 + bytes;
        if let Some(slot) = self.young.get_mut(&key) {
            self.young_bytes = self.young_bytes.saturating_sub(slot.1) + bytes;
            *slot = (value, bytes);
            self.rotate_when_full();
            return;
        }
        self.old.remove(&key);
        self.insert_young(key, value, bytes);
    }

    fn insert_young(&mut self, key: K, value: V, bytes: usize) {
        self.young_bytes += bytes;
        self.young.insert(key, (value, bytes));
        self.rotate_when_full();
    }

    fn rotate_when_full(&mut self) {
        if self.young_bytes >= self.half_budget {
            self.old = std::mem::take(&mut self.young);
            self.young_bytes = 0;
        }
    }

    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_budget_and_keeps_recently_used_entries() {
        let entry = size_of::<(String, u64, usize)>() + 16 + 6;
        let mut c = GenerationalCache::new(entry * 100);
        c.put("hot000".to_string(), 1u64, 6);
        for i in 0..1_000 {
            c.put(format!("i{i:05}"), 0, 6);
            if i % 20 == 0 {
                // Used once per generation (50 entries): survives every rotation.
                assert_eq!(c.get("hot000"), Some(1));
            }
            assert!(c.len() <= 101, "{} entries", c.len());
        }
        assert_eq!(c.get("hot000"), Some(1));
        assert_eq!(c.get("i00000"), None, "cold entries are dropped");
    }

    #[test]
    fn get_of_an_entry_that_triggers_a_rotation_still_finds_it() {
        let mut c = GenerationalCache::new(2 * (size_of::<(u32, u32, usize)>() + 16));
        c.put(1u32, 10u32, 0);
        // The put above filled the young half, so it rotated into the old map; get moves it back (rotating again).
        assert_eq!(c.get(&1), Some(10));
        assert_eq!(c.get(&1), Some(10));
    }

    #[test]
    fn replace_overwrites_in_either_generation_and_counts_bytes_once() {
        let entry = size_of::<(u32, u32, usize)>() + 16;
        let mut c = GenerationalCache::new(entry * 10);
        c.put(1u32, 10u32, 0);
        c.replace(1, 11, 0);
        assert_eq!(c.len(), 1);
        assert_eq!(
            c.young_bytes, entry,
            "an overwrite does not add the entry's bytes again"
        );
        for k in 2..6 {
            c.put(k, 0, 0);
        }
        // Five entries filled the young half: 1 is in the old generation now.
        assert!(c.young.is_empty() && c.old.contains_key(&1));
        c.replace(1, 12, 0);
        assert_eq!(c.len(), 5, "moved to the young generation, not copied");
        assert_eq!(c.get(&1), Some(12));
        assert!(c.young.contains_key(&1) && !c.old.contains_key(&1));
    }

    #[test]
    fn zero_budget_caches_nothing() {
        let mut c = GenerationalCache::new(0);
        c.put("k", 1, 0);
        assert_eq!(c.get(&"k"), None);
        assert!(c.is_empty());
    }
}
