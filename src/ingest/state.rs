//! Folding decoded events into store state, with an in-memory overlay so that several events on the same key
//! in one batch see each other before the batch is written.

use std::collections::hash_map::Entry;

use foldhash::{HashMap, HashSet};

use super::cache::{Key, StateCache, Value, footprint};
use crate::config::{Config, PositivesConfig};
use crate::error::Result;
use crate::schema::{Action, Behaviour, Event, IdEmbedding, Item};
use crate::store::{HistoryEntry, ItemStats, ListHead, ListPosition, StateBatch, Store, cf, codec};

/// The one definition of a positive interaction, shared by the stream and (later) the batch jobs.
#[derive(Debug, Clone)]
pub struct Positives {
    actions: Vec<Action>,
    dwell_actions: Vec<Action>,
    min_dwell_ms: u64,
    min_rating: f64,
}

impl Positives {
    pub fn new(c: &PositivesConfig) -> Positives {
        Positives {
            actions: c.actions.clone(),
            dwell_actions: c.dwell_actions.clone(),
            min_dwell_ms: c.min_dwell_ms,
            min_rating: c.min_rating,
        }
    }

    /// The same definition as a SQL predicate over the offline log's behaviour columns (`action`, `dwell_ms`,
    /// `rating`), for the DataFusion jobs. Action names come from a closed enum, so they need no escaping.
    pub fn sql_predicate(&self) -> String {
        let list = |actions: &[Action]| {
            actions
                .iter()
                .map(|a| format!("'{}'", a.as_str()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut terms = Vec::new();
        if !self.actions.is_empty() {
            terms.push(format!("action IN ({})", list(&self.actions)));
        }
        if !self.dwell_actions.is_empty() {
            terms.push(format!(
                "(action IN ({}) AND dwell_ms >= {})",
                list(&self.dwell_actions),
                self.min_dwell_ms
            ));
        }
        terms.push(format!(
            "(rating IS NOT NULL AND rating >= {:?})",
            self.min_rating
        ));
        format!("({})", terms.join(" OR "))
    }

    pub fn is_positive(&self, b: &Behaviour) -> bool {
        self.actions.contains(&b.action)
            || (self.dwell_actions.contains(&b.action) && b.dwell_ms >= self.min_dwell_ms)
            || b.rating.is_some_and(|r| r >= self.min_rating)
    }
}

pub(super) struct Fold<'a> {
    store: &'a Store,
    cache: &'a mut StateCache,
    history_cap: usize,
    positives_cap: usize,
    positives: &'a Positives,
    items: HashMap<String, Option<Item>>,
    /// Partial counters per item, one per source (stream, partition) that has events on it in this batch.
    stats: HashMap<String, Vec<(String, i32, ItemStats)>>,
    /// (item, user) pairs first seen in this batch, by their `item_users` key.
    new_item_users: HashSet<Vec<u8>>,
    histories: HashMap<String, ListUpdate>,
    user_positives: HashMap<String, ListUpdate>,
    id_embeddings: HashMap<(String, String), Option<u64>>,
    id_embedding_writes: Vec<IdEmbedding>,
    dirty_items: Vec<String>,
}

impl<'a> Fold<'a> {
    pub fn new(
        store: &'a Store,
        cache: &'a mut StateCache,
        config: &Config,
        positives: &'a Positives,
    ) -> Fold<'a> {
        Fold {
            store,
            cache,
            history_cap: config.store.history_cap,
            positives_cap: config.store.positives_cap,
            positives,
            items: HashMap::default(),
            stats: HashMap::default(),
            new_item_users: HashSet::default(),
            histories: HashMap::default(),
            user_positives: HashMap::default(),
            id_embeddings: HashMap::default(),
            id_embedding_writes: Vec::new(),
            dirty_items: Vec::new(),
        }
    }

    /// Applies one event read from (stream, partition). Returns false when it was a stale item or ID-embedding
    /// version (ignored).
    pub fn apply(&mut self, event: Event, stream: &str, partition: i32) -> Result<bool> {
        match event {
            Event::Item(item) => self.apply_item(*item),
            Event::Behaviour(b) => self.apply_behaviour(b, stream, partition).map(|_| true),
            Event::IdEmbedding(e) => self.apply_id_embedding(e),
        }
    }

    fn apply_item(&mut self, item: Item) -> Result<bool> {
        if !self.items.contains_key(&item.item_id) {
            let stored = self.store.item(&item.item_id)?;
            self.items.insert(item.item_id.clone(), stored);
        }
        let slot = self.items.get_mut(&item.item_id).expect("inserted above");
        if slot.as_ref().is_some_and(|cur| cur.version >= item.version) {
            return Ok(false);
        }
        if !self.dirty_items.contains(&item.item_id) {
            self.dirty_items.push(item.item_id.clone());
        }
        *slot = Some(item);
        Ok(true)
    }

    fn apply_behaviour(&mut self, b: Behaviour, stream: &str, partition: i32) -> Result<()> {
        let positive = self.positives.is_positive(&b);
        let store = self.store;
        let stats = match self.stats.get_mut(b.item_id.as_str()) {
            Some(per_source) => per_source,
            None => self.stats.entry(b.item_id.clone()).or_default(),
        };
        let stats = match stats
            .iter()
            .position(|(s, p, _)| s == stream && *p == partition)
        {
            Some(at) => &mut stats[at].2,
            None => {
                let key = Key::Stats(b.item_id.clone(), stream.to_string(), partition);
                let stored = match self.cache.get(&key) {
                    Some(Value::Stats(s)) => s,
                    _ => store
                        .item_stats_partial(&b.item_id, stream, partition)?
                        .unwrap_or_default(),
                };
                let Key::Stats(_, stream, partition) = key else {
                    unreachable!("built as Stats above")
                };
                stats.push((stream, partition, stored));
                &mut stats.last_mut().expect("pushed above").2
            }
        };
        if stats.events == 0 {
            stats.first_ts = b.ts;
            stats.last_ts = b.ts;
        }
        stats.events += 1;
        stats.positives += positive as u64;
        stats.first_ts = stats.first_ts.min(b.ts);
        stats.last_ts = stats.last_ts.max(b.ts);
        let pair = codec::item_user_key(&b.item_id, &b.user_id);
        if !self.new_item_users.contains(&pair) {
            let known = Key::ItemUser(pair.into_boxed_slice());
            if self.cache.get(&known).is_none() {
                let Key::ItemUser(pair) = known else {
                    unreachable!("built as ItemUser above")
                };
                if store.item_user_key_exists(&pair)? {
                    // Already in the store, so it may go into the cache before this batch commits.
                    let known = Key::ItemUser(pair);
                    let bytes = footprint(&known);
                    self.cache.put(known, Value::Present, bytes);
                } else {
                    stats.distinct_users += 1;
                    self.new_item_users.insert(pair.into_vec());
                }
            }
        }

        let (cache, user) = (&mut *self.cache, b.user_id.as_str());
        let entry = HistoryEntry {
            item_id: b.item_id,
            action: b.action,
            ts: b.ts,
            dwell_ms: b.dwell_ms.min(u32::MAX as u64) as u32,
            rating: b.rating.map(|r| r as f32),
        };
        if positive {
            let positives = list_update(
                &mut self.user_positives,
                cache,
                store,
                ListKind::Positives,
                user,
            )?;
            positives.append(entry.clone());
        }
        let history = list_update(&mut self.histories, cache, store, ListKind::History, user)?;
        history.append(entry);
        Ok(())
    }

    fn apply_id_embedding(&mut self, e: IdEmbedding) -> Result<bool> {
        let key = (e.item_id.clone(), e.space.clone());
        if !self.id_embeddings.contains_key(&key) {
            let stored = self
                .store
                .id_embedding(&e.item_id, &e.space)?
                .map(|(v, _, _)| v);
            self.id_embeddings.insert(key.clone(), stored);
        }
        let slot = self.id_embeddings.get_mut(&key).expect("inserted above");
        if slot.is_some_and(|v| v >= e.version) {
            return Ok(false);
        }
        *slot = Some(e.version);
        self.id_embedding_writes
            .retain(|w| !(w.item_id == e.item_id && w.space == e.space));
        self.id_embedding_writes.push(e);
        Ok(true)
    }

    /// Writes the batch's state in key order per family: RocksDB's memtable insert starts its search where the
    /// previous insert ended, so sorted keys land near each other instead of each walking the skiplist from the top.
    pub fn write_into(&mut self, batch: &mut StateBatch<'_>) -> Result<()> {
        self.dirty_items.sort_unstable();
        for id in &self.dirty_items {
            if let Some(Some(item)) = self.items.get(id) {
                batch.put_item(item)?;
            }
        }
        for id in &self.dirty_items {
            if let Some(Some(item)) = self.items.get(id) {
                batch.put_embed_pending(&item.item_id, item.version)?;
            }
        }
        for (id, per_source) in sorted_mut(&mut self.stats) {
            // Key order within an item: its keys end in (stream, partition).
            per_source.sort_unstable_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
            for (stream, partition, stats) in per_source.iter() {
                batch.put_item_stats(id, stream, *partition, stats)?;
            }
        }
        let mut new_item_users: Vec<_> = self.new_item_users.iter().collect();
        new_item_users.sort_unstable();
        for pair in new_item_users {
            batch.put_item_user(pair)?;
        }
        let (store, history_cap, positives_cap) =
            (self.store, self.history_cap, self.positives_cap);
        for (user, list) in sorted_mut(&mut self.histories) {
            list.write(batch, store, ListKind::History.family(), user, history_cap)?;
        }
        let mut positives = sorted_mut(&mut self.user_positives);
        for (user, list) in &mut positives {
            list.write(
                batch,
                store,
                ListKind::Positives.family(),
                user,
                positives_cap,
            )?;
        }
        for (user, _) in &positives {
            batch.put_interests_pending(user)?;
        }
        for e in &self.id_embedding_writes {
            batch.put_id_embedding(e)?;
        }
        Ok(())
    }

    /// Hands the batch's lists and counters to the cache for the next batches. Call only once the batch is
    /// committed: the cache must never hold state the store does not.
    pub fn committed(self) {
        for (item, per_source) in self.stats {
            for (stream, partition, stats) in per_source {
                let key = Key::Stats(item.clone(), stream, partition);
                let bytes = footprint(&key);
                self.cache.replace(key, Value::Stats(stats), bytes);
            }
        }
        for pair in self.new_item_users {
            let key = Key::ItemUser(pair.into_boxed_slice());
            let bytes = footprint(&key);
            self.cache.put(key, Value::Present, bytes);
        }
        let lists = [
            (ListKind::History, self.histories),
            (ListKind::Positives, self.user_positives),
        ];
        for (kind, updates) in lists {
            for (user, list) in updates {
                if let Some(head) = list.written {
                    let key = kind.cache_key(user);
                    let bytes = footprint(&key);
                    self.cache.replace(key, Value::Head(head), bytes);
                }
            }
        }
    }
}

/// One user's list (history or positives) as a batch changes it: new entries are appended as keys of their own
/// (one small write per event, instead of rewriting a list of up to `positives_cap` entries), and the oldest go
/// when the list is over its cap, so the list is the newest `cap` events in (time, arrival) order.
struct ListUpdate {
    /// As stored before this batch (all zero for a new user).
    stored: ListHead,
    next_seq: u64,
    appended: Vec<(ListPosition, HistoryEntry)>,
    /// The head this batch wrote, for the cache once the batch is committed.
    written: Option<ListHead>,
}

impl ListUpdate {
    fn new(stored: Option<ListHead>) -> ListUpdate {
        let stored = stored.unwrap_or_default();
        ListUpdate {
            stored,
            next_seq: stored.next_seq,
            appended: Vec::new(),
            written: None,
        }
    }

    fn append(&mut self, entry: HistoryEntry) {
        self.appended.push(((entry.ts, self.next_seq), entry));
        self.next_seq += 1;
    }

    fn write(
        &mut self,
        batch: &mut StateBatch<'_>,
        store: &Store,
        family: &str,
        user: &str,
        cap: usize,
    ) -> Result<()> {
        self.appended.sort_unstable_by_key(|(at, _)| *at);
        let stored_count = self.stored.count as usize;
        let total = stored_count + self.appended.len();
        let excess = total.saturating_sub(cap);
        // The oldest `excess` of stored and new entries go. Events mostly arrive in time order, so these are
        // mostly stored ones; one more stored position says which entry is the oldest afterwards.
        let stored_front = if excess > 0 {
            store.list_oldest(family, user, &self.stored, (excess + 1).min(stored_count))?
        } else {
            Vec::new()
        };
        let (mut from_stored, mut from_new) = (0, 0);
        for _ in 0..excess {
            match (stored_front.get(from_stored), self.appended.get(from_new)) {
                (Some(old), Some((new, _))) if new < old => from_new += 1,
                (Some(_), _) => from_stored += 1,
                (None, Some(_)) => from_new += 1,
                (None, None) => break,
            }
        }
        let oldest_stored = if excess > 0 {
            stored_front.get(from_stored).copied()
        } else {
            (stored_count > 0).then_some(self.stored.oldest)
        };
        let oldest_new = self.appended.get(from_new).map(|(at, _)| *at);
        let oldest = match (oldest_stored, oldest_new) {
            (Some(s), Some(n)) => s.min(n),
            (s, n) => s.or(n).unwrap_or_default(),
        };
        let head = ListHead {
            count: (total - from_stored - from_new) as u32,
            next_seq: self.next_seq,
            oldest,
        };
        // In key order (head, then the dropped oldest entries, then the new ones), like every family's writes.
        batch.put_list_head(family, user, &head)?;
        for old in &stored_front[..from_stored] {
            batch.delete_list_entry(family, user, *old)?;
        }
        for (at, entry) in &self.appended[from_new..] {
            batch.put_list_entry(family, user, *at, entry)?;
        }
        self.written = Some(head);
        Ok(())
    }
}

/// The two per-user lists: where each is stored and how the cache names its head.
#[derive(Clone, Copy)]
enum ListKind {
    History,
    Positives,
}

impl ListKind {
    fn family(self) -> &'static str {
        match self {
            ListKind::History => cf::USER_HISTORIES,
            ListKind::Positives => cf::USER_POSITIVES,
        }
    }

    fn cache_key(self, user: String) -> Key {
        match self {
            ListKind::History => Key::History(user),
            ListKind::Positives => Key::Positives(user),
        }
    }
}

/// The batch's update of one of `user`'s lists, started from the list's head in the cache, or else in the
/// store, the first time the batch touches it.
fn list_update<'m>(
    lists: &'m mut HashMap<String, ListUpdate>,
    cache: &mut StateCache,
    store: &Store,
    kind: ListKind,
    user: &str,
) -> Result<&'m mut ListUpdate> {
    match lists.entry(user.to_string()) {
        Entry::Occupied(o) => Ok(o.into_mut()),
        Entry::Vacant(v) => {
            let head = match cache.get(&kind.cache_key(user.to_string())) {
                Some(Value::Head(head)) => Some(head),
                _ => store.list_head(kind.family(), user)?,
            };
            Ok(v.insert(ListUpdate::new(head)))
        }
    }
}

fn sorted_mut<K: Ord, V>(map: &mut HashMap<K, V>) -> Vec<(&K, &mut V)> {
    let mut entries: Vec<_> = map.iter_mut().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positives_follow_config() {
        let p = Positives::new(&Config::default().positives);
        let mut b = Behaviour {
            user_id: "u".into(),
            item_id: "i".into(),
            action: Action::Play,
            dwell_ms: 9_999,
            ts: 1_700_000_000_000,
            rating: None,
            context: None,
        };
        assert!(!p.is_positive(&b));
        b.dwell_ms = 10_000;
        assert!(p.is_positive(&b), "long play");
        b.action = Action::Click;
        assert!(!p.is_positive(&b), "dwell only counts for dwell_actions");
        b.action = Action::Rate;
        b.rating = Some(4.0);
        assert!(p.is_positive(&b), "rating at threshold");
        b.action = Action::Like;
        b.rating = None;
        assert!(p.is_positive(&b));
    }
}
