//! Consistent multi-key reads for the lookup path.
//!
//! A lookup reads an item's embedding, its semantic IDs and its teacher targets, and a user's interests and
//! positives: all of it must come from one state of the store, or a feature could mix a new interest vector with
//! an old embedding. [`StoreView`] pins that state for its lifetime (see [`Store::view`]).

use std::sync::RwLockReadGuard;

use rocksdb::{DB, IteratorMode, ReadOptions, SnapshotWithThreadMode};

use super::{Access, Store, cf, codec};
use crate::error::{Error, Result};
use crate::schema::ItemEmbedding;

use super::{HistoryEntry, TeacherTarget, UserInterests};

/// (model_version, code path coarse to fine) of an item.
pub type SemanticIds = (String, Vec<u32>);

pub struct StoreView<'a> {
    store: &'a Store,
    snapshot: Option<SnapshotWithThreadMode<'a, DB>>,
    _no_catch_up: Option<RwLockReadGuard<'a, ()>>,
}

impl<'a> StoreView<'a> {
    pub(super) fn new(store: &'a Store) -> StoreView<'a> {
        let (snapshot, guard) = match store.access {
            Access::Primary => (Some(store.db.snapshot()), None),
            Access::Secondary => (
                None,
                Some(
                    store
                        .catch_up
                        .read()
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                ),
            ),
            Access::ReadOnly => (None, None),
        };
        StoreView {
            store,
            snapshot,
            _no_catch_up: guard,
        }
    }

    /// The sequence number of the state this view reads: the last write it sees. Two views with the same
    /// sequence number (of one store, in one process) read the same data, whichever instance they come from:
    /// a secondary holds no write past its sequence number and every write up to it.
    pub fn sequence(&self) -> u64 {
        match &self.snapshot {
            Some(snapshot) => snapshot.sequence_number(),
            // A secondary cannot catch up while this view holds its lock; a read-only store never changes.
            None => self.store.db.latest_sequence_number(),
        }
    }

    fn read_options(&self) -> ReadOptions {
        let mut opts = ReadOptions::default();
        if let Some(snapshot) = &self.snapshot {
            opts.set_snapshot(snapshot);
        }
        opts
    }

    /// Point reads of many keys of one family in one RocksDB MultiGet; `decode` runs on each value found.
    fn multi_get<T>(
        &self,
        family: &str,
        keys: &[Vec<u8>],
        mut decode: impl FnMut(usize, &[u8]) -> Result<T>,
    ) -> Result<Vec<Option<T>>> {
        let handle = self.store.cf(family)?;
        let opts = self.read_options();
        self.store
            .db
            .batched_multi_get_cf_opt(handle, keys, false, &opts)
            .into_iter()
            .enumerate()
            .map(|(i, found)| {
                match found.map_err(|e| Error::rocks(format!("multi-get from {family}"), e))? {
                    Some(value) => decode(i, &value).map(Some),
                    None => Ok(None),
                }
            })
            .collect()
    }

    fn get<T>(
        &self,
        family: &str,
        key: &[u8],
        decode: impl FnOnce(&[u8]) -> Result<T>,
    ) -> Result<Option<T>> {
        let handle = self.store.cf(family)?;
        let found = self
            .store
            .db
            .get_pinned_cf_opt(handle, key, &self.read_options())
            .map_err(|e| Error::rocks(format!("get from {family}"), e))?;
        found.map(|v| decode(&v)).transpose()
    }

    pub fn item_embeddings(&self, item_ids: &[&str]) -> Result<Vec<Option<ItemEmbedding>>> {
        let keys = id_keys(item_ids);
        self.multi_get(cf::ITEM_EMBEDDINGS, &keys, |i, v| {
            codec::decode_item_embedding(item_ids[i], v)
        })
    }

    /// Each item's stamp ([`cf::ITEM_STAMPS`]): equal stamps mean the item's embedding, semantic IDs and teacher
    /// targets are as they were when the stamp was read before. None for an item never written.
    pub fn item_stamps(&self, item_ids: &[&str]) -> Result<Vec<Option<u64>>> {
        let keys = id_keys(item_ids);
        self.multi_get(cf::ITEM_STAMPS, &keys, |_, v| codec::decode_u64(v))
    }

    pub fn semantic_ids(&self, item_ids: &[&str]) -> Result<Vec<Option<SemanticIds>>> {
        let keys = id_keys(item_ids);
        self.multi_get(cf::SEMANTIC_IDS, &keys, |_, v| codec::decode_codes(v))
    }

    /// Every teacher target of one item (one seek: they share the item's key prefix).
    pub fn teacher_targets(&self, item_id: &str) -> Result<Vec<TeacherTarget>> {
        let prefix = codec::id_scope_prefix(item_id);
        let mut opts = self.read_options();
        let mut upper = prefix.clone();
        // The prefix ends with the 0x00 separator; 0x01 in its place bounds the scan to this item.
        if let Some(last) = upper.last_mut() {
            *last = 1;
        }
        opts.set_iterate_upper_bound(upper);
        let iter = self.store.db.iterator_cf_opt(
            self.store.cf(cf::TEACHER_TARGETS)?,
            opts,
            IteratorMode::From(&prefix, rocksdb::Direction::Forward),
        );
        let mut out = Vec::new();
        for entry in iter {
            let (k, v) = entry.map_err(|e| Error::rocks("reading teacher targets", e))?;
            if !k.starts_with(&prefix) {
                break;
            }
            let (_, kind) = codec::decode_id_pair_key(&k)?;
            out.push(codec::decode_teacher(kind, &v)?);
        }
        Ok(out)
    }

    /// The teacher targets of the given kinds for many items, in one MultiGet: per item, one slot per kind.
    pub fn teacher_targets_of(
        &self,
        item_ids: &[&str],
        kinds: &[String],
    ) -> Result<Vec<Vec<Option<TeacherTarget>>>> {
        let keys: Vec<Vec<u8>> = item_ids
            .iter()
            .flat_map(|id| kinds.iter().map(move |k| codec::teacher_key(id, k)))
            .collect();
        let flat = self.multi_get(cf::TEACHER_TARGETS, &keys, |i, v| {
            codec::decode_teacher(&kinds[i % kinds.len()], v)
        })?;
        Ok(flat
            .chunks(kinds.len().max(1))
            .map(<[Option<TeacherTarget>]>::to_vec)
            .collect())
    }

    pub fn user_interests(&self, user_id: &str) -> Result<Option<UserInterests>> {
        self.get(
            cf::USER_INTERESTS,
            &codec::id_key(user_id),
            codec::decode_interests,
        )
    }

    /// The user's positive interactions, oldest first (empty for an unknown user).
    pub fn user_positives(&self, user_id: &str) -> Result<Vec<HistoryEntry>> {
        self.store
            .user_list(cf::USER_POSITIVES, user_id, || self.read_options())
    }

    /// The user's positive interactions newest first, read while `keep` says so: `keep` sees each entry and
    /// returns whether to read on. Cheaper than [`StoreView::user_positives`] when only the newest few matter.
    pub fn newest_positives(
        &self,
        user_id: &str,
        mut keep: impl FnMut(&HistoryEntry) -> bool,
    ) -> Result<Vec<HistoryEntry>> {
        let mut out = Vec::new();
        self.store
            .scan_list_newest(cf::USER_POSITIVES, user_id, self.read_options(), |entry| {
                let more = keep(&entry);
                out.push(entry);
                more
            })?;
        Ok(out)
    }
}

/// The keys of families keyed by one item id (embeddings, semantic IDs, stamps).
fn id_keys(item_ids: &[&str]) -> Vec<Vec<u8>> {
    item_ids.iter().map(|id| codec::id_key(id)).collect()
}
