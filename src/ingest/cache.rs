//! Decoded state kept between batches: the heads of per-user lists, the per-item counters and the (item, user)
//! pairs already in the store, which almost every event reads back. Without it each batch fetches and decodes
//! them from RocksDB again (memtable skiplist walks, then block lookups), which was most of the replay time in a
//! profile. It also knows which users' "interests pending" marks are in the store, so that a backfill does not
//! rewrite a mark for every positive event.
//!
//! A batch copies entries from the cache into its overlay and writes its changes back only after it committed,
//! so the cache never holds state the store does not: a failed batch leaves the committed values in place.
//! (An (item, user) pair read from the store goes in at once: it is committed.) The ingest fold is the only
//! writer of these families, so nothing else can make an entry stale. Marks are the exception: the worker's
//! interest update deletes them, and the ingestor hears of each delete from the store before its next batch.

use std::hash::{BuildHasher, Hasher};

use siphasher::sip128::{Hasher128, SipHasher13};

use crate::cache::GenerationalCache;
use crate::store::{ItemStats, UserHeads};

/// What a cache entry is about, as a 128-bit SipHash-1-3 of its kind and ids under a key drawn at random for each
/// cache. Entries are found by this fingerprint alone, not by the ids: a key made of strings meant building owned
/// strings for every lookup and, on every probe, following a pointer to them in memory that had long left the
/// CPU caches (a fifth of file replay in a profile). Two of n entries share a fingerprint with probability about
/// n²/2^129 (about 10^-25 for 10^7 entries), and since the hash key is secret, chosen ids cannot aim at a
/// collision either.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Key(u128);

/// The fold's cache, one map per kind of entry so that each slot is only as large as its value (a pair is just
/// its fingerprint): fewer bytes per entry keep more of them in the CPU caches. Each map gets a third of the
/// budget; see [`GenerationalCache`] for how a map stays within its share.
pub(super) struct StateCache {
    users: GenerationalCache<Key, CachedUser>,
    stats: GenerationalCache<Key, ItemStats>,
    /// (item, user) pairs the store holds: the user is already counted among the item's distinct users.
    pairs: GenerationalCache<Key, ()>,
    hash_key: (u64, u64),
    /// A user's mark is known to be in the store while their entry's `marked_in` equals this; bumped to forget
    /// every mark at once. Starts at 1: an entry whose `marked_in` is 0 has no known mark.
    mark_epoch: u64,
}

#[derive(Debug, Clone, Copy)]
struct CachedUser {
    heads: UserHeads,
    marked_in: u64,
}

/// What an entry is about, as part of its fingerprint, so that equal ids of different kinds never meet.
const USER: u8 = 1;
const STATS: u8 = 2;
const ITEM_USER: u8 = 3;

impl StateCache {
    /// A cache holding about `budget_bytes` (0: caches nothing).
    pub fn new(budget_bytes: usize) -> StateCache {
        // The standard library's RandomState is seeded from the OS; two of its hashers give the two key halves.
        let random = || {
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        };
        let share = budget_bytes / 3;
        StateCache {
            users: GenerationalCache::new(share),
            stats: GenerationalCache::new(share),
            pairs: GenerationalCache::new(share),
            hash_key: (random(), random()),
            mark_epoch: 1,
        }
    }

    pub fn user_key(&self, user_id: &str) -> Key {
        self.key(USER, &[user_id.as_bytes()])
    }

    /// Counters of `item_id` from one source partition.
    pub fn stats_key(&self, item_id: &str, stream: &str, partition: i32) -> Key {
        self.key(
            STATS,
            &[
                item_id.as_bytes(),
                stream.as_bytes(),
                &partition.to_be_bytes(),
            ],
        )
    }

    pub fn item_user_key(&self, item_id: &str, user_id: &str) -> Key {
        self.key(ITEM_USER, &[item_id.as_bytes(), user_id.as_bytes()])
    }

    fn key(&self, kind: u8, parts: &[&[u8]]) -> Key {
        let mut h = SipHasher13::new_with_keys(self.hash_key.0, self.hash_key.1);
        h.write_u8(kind);
        for part in parts {
            // Each part's length first, so that ("ab", "c") and ("a", "bc") differ.
            h.write_usize(part.len());
            h.write(part);
        }
        Key(h.finish128().as_u128())
    }

    /// The user's heads, and whether their interests mark is known to be in the store. Reads count as uses (see
    /// [`GenerationalCache::get`]); writes of entries just read overwrite them in place.
    pub fn user(&mut self, key: Key) -> Option<(UserHeads, bool)> {
        self.users
            .get(&key)
            .map(|u| (u.heads, u.marked_in == self.mark_epoch))
    }

    /// Call only with state the store holds: committed heads, and `marked` only if the mark is committed.
    pub fn set_user(&mut self, key: Key, heads: UserHeads, marked: bool) {
        let marked_in = if marked { self.mark_epoch } else { 0 };
        self.users.replace(key, CachedUser { heads, marked_in }, 0);
    }

    /// The user's interests mark was deleted (the interest update consumed it).
    pub fn forget_mark(&mut self, user_id: &str) {
        let key = self.user_key(user_id);
        if let Some(mut user) = self.users.get(&key) {
            user.marked_in = 0;
            self.users.replace(key, user, 0);
        }
    }

    /// Marks may have been deleted without the cache hearing which: none is known to be there any more.
    pub fn forget_all_marks(&mut self) {
        self.mark_epoch += 1;
    }

    pub fn stats(&mut self, key: Key) -> Option<ItemStats> {
        self.stats.get(&key)
    }

    pub fn set_stats(&mut self, key: Key, stats: ItemStats) {
        self.stats.replace(key, stats, 0);
    }

    pub fn has_pair(&mut self, key: Key) -> bool {
        self.pairs.get(&key).is_some()
    }

    pub fn add_pair(&mut self, key: Key) {
        self.pairs.put(key, (), 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_separate_kinds_and_part_boundaries() {
        let c = StateCache::new(1 << 20);
        assert_eq!(c.user_key("u1"), c.user_key("u1"));
        assert_ne!(c.user_key("u1"), c.user_key("u2"));
        assert_ne!(c.item_user_key("i", "u"), c.stats_key("i", "u", 0));
        assert_ne!(c.item_user_key("ab", "c"), c.item_user_key("a", "bc"));
        assert_ne!(c.stats_key("ab", "c", 0), c.stats_key("a", "bc", 0));
        assert_ne!(c.stats_key("i", "s", 0), c.stats_key("i", "s", 1));
        let other = StateCache::new(1 << 20);
        assert_ne!(
            c.user_key("u1"),
            other.user_key("u1"),
            "each cache draws its own hash key"
        );
    }
}
