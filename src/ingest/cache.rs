//! Decoded state kept between batches: the heads of per-user lists, the per-item counters and the (item, user)
//! pairs already in the store, which almost every event reads back. Without it each batch fetches and decodes them from RocksDB again (memtable skiplist walks, then block
//! lookups), which was most of the replay time in a profile.
//!
//! A batch copies entries from the cache into its overlay and writes its changes back only after it committed,
//! so the cache never holds state the store does not: a failed batch leaves the committed values in place.
//! (An (item, user) pair read from the store goes in at once: it is committed.) The ingest fold is the only writer of these families, so nothing else can make an
//! entry stale.

use crate::store::{ItemStats, ListHead};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Key {
    History(String),
    Positives(String),
    /// (item, stream, partition): counters are kept per source partition.
    Stats(String, String, i32),
    /// An (item, user) pair the store holds, by its `item_users` key: the user is already counted among the
    /// item's distinct users.
    ItemUser(Box<[u8]>),
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    Head(ListHead),
    Stats(ItemStats),
    Present,
}

/// The fold's cache: see [`crate::cache::GenerationalCache`] for how it stays within its budget.
pub(super) type StateCache = crate::cache::GenerationalCache<Key, Value>;

/// Heap bytes an entry holds beyond its map slot: the strings of its key.
pub(super) fn footprint(key: &Key) -> usize {
    match key {
        Key::History(u) | Key::Positives(u) => u.len(),
        Key::Stats(item, stream, _) => item.len() + stream.len(),
        Key::ItemUser(key) => key.len(),
    }
}
