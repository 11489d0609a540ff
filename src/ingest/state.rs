//! Folding decoded events into store state, with an in-memory overlay so that several events on the same key
//! in one batch see each other before the batch is written.

use foldhash::HashMap;

use super::cache::{Key, StateCache};
use crate::config::{Config, PositivesConfig};
use crate::error::Result;
use crate::schema::{Action, Behaviour, Event, IdEmbedding, Item};
use crate::store::{
    HistoryEntry, ItemStats, ListHead, ListPosition, StateBatch, Store, UserHeads, cf, codec,
};

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
    /// Each item the batch has events for: its latest version (stored or new) and whether the batch changed it.
    items: HashMap<String, (Option<Item>, bool)>,
    /// Partial counters per item, one per source (stream, partition) that has events on it in this batch.
    stats: HashMap<String, Vec<SourceStats>>,
    /// The streams of this batch's events (usually one), which [`SourceStats`] name by index.
    streams: Vec<String>,
    /// (item, user) pairs first seen in this batch: their `item_users` store keys by cache key.
    new_item_users: HashMap<Key, Vec<u8>>,
    /// Each user's two lists, as this batch changes them.
    users: HashMap<String, UserUpdate>,
    /// Each (item, space) the batch has ID embeddings for: the latest version, and the embedding to write if the
    /// batch brought a newer one. Maps, not lists, so that a replay batch of 100,000 items is not quadratic.
    id_embeddings: HashMap<(String, String), (Option<u64>, Option<IdEmbedding>)>,
}

/// How many users and items a batch's fold held, to size the next one's maps.
#[derive(Debug, Clone, Copy)]
pub(super) struct FoldSizes {
    users: usize,
    items: usize,
}

impl<'a> Fold<'a> {
    /// A fold for a batch of up to `events` events. The per-user and per-item maps are sized at once, instead of
    /// doubling and rehashing several times in every batch, on fresh pages each time (replay +7-10% in paired
    /// runs, BENCHMARKS.md): for as many users and items as the previous batch held (`last`) and a quarter more,
    /// or else (first batch) for `events`, never for more than `events`. A replay batch of 100,000 events over 20,000 users would otherwise allocate a 35 MB
    /// map for users that fill a fifth of it (the bench's peak memory: 418 -> 389 MB).
    pub fn new(
        store: &'a Store,
        cache: &'a mut StateCache,
        config: &Config,
        positives: &'a Positives,
        events: usize,
        last: Option<FoldSizes>,
    ) -> Fold<'a> {
        let size = |held: fn(FoldSizes) -> usize| match last {
            // At least 1,024: after a quiet spell's small batch a worker's next one may be full again.
            Some(last) => (held(last) + held(last) / 4).max(1_024).min(events),
            None => events,
        };
        Fold {
            store,
            cache,
            history_cap: config.store.history_cap,
            positives_cap: config.store.positives_cap,
            positives,
            items: HashMap::default(),
            stats: HashMap::with_capacity_and_hasher(size(|s| s.items), Default::default()),
            streams: Vec::new(),
            new_item_users: HashMap::default(),
            users: HashMap::with_capacity_and_hasher(size(|s| s.users), Default::default()),
            id_embeddings: HashMap::default(),
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
            self.items.insert(item.item_id.clone(), (stored, false));
        }
        let (latest, changed) = self.items.get_mut(&item.item_id).expect("inserted above");
        if latest
            .as_ref()
            .is_some_and(|cur| cur.version >= item.version)
        {
            return Ok(false);
        }
        *latest = Some(item);
        *changed = true;
        Ok(true)
    }

    fn apply_behaviour(&mut self, b: Behaviour, stream: &str, partition: i32) -> Result<()> {
        let positive = self.positives.is_positive(&b);
        let store = self.store;
        let stream_index = match self.streams.iter().position(|s| s == stream) {
            Some(at) => at,
            None => {
                self.streams.push(stream.to_string());
                self.streams.len() - 1
            }
        };
        let per_source = match self.stats.get_mut(b.item_id.as_str()) {
            Some(per_source) => per_source,
            None => self.stats.entry(b.item_id.clone()).or_default(),
        };
        let stats = match per_source
            .iter()
            .position(|s| s.stream == stream_index && s.partition == partition)
        {
            Some(at) => &mut per_source[at].stats,
            None => {
                let key = self.cache.stats_key(&b.item_id, stream, partition);
                let stats = match self.cache.stats(key) {
                    Some(s) => s,
                    None => store
                        .item_stats_partial(&b.item_id, stream, partition)?
                        .unwrap_or_default(),
                };
                per_source.push(SourceStats {
                    stream: stream_index,
                    partition,
                    key,
                    stats,
                });
                &mut per_source.last_mut().expect("pushed above").stats
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
        let pair = self.cache.item_user_key(&b.item_id, &b.user_id);
        if !self.new_item_users.contains_key(&pair) && !self.cache.has_pair(pair) {
            let store_key = codec::item_user_key(&b.item_id, &b.user_id);
            if store.item_user_key_exists(&store_key)? {
                // Already in the store, so it may go into the cache before this batch commits.
                self.cache.add_pair(pair);
            } else {
                stats.distinct_users += 1;
                self.new_item_users.insert(pair, store_key);
            }
        }

        let lists = user_update(&mut self.users, self.cache, store, &b.user_id)?;
        let entry = HistoryEntry {
            item_id: b.item_id,
            action: b.action,
            ts: b.ts,
            dwell_ms: b.dwell_ms.min(u32::MAX as u64) as u32,
            rating: b.rating.map(|r| r as f32),
        };
        if positive {
            lists.positives.append(entry.clone());
        }
        lists.history.append(entry);
        Ok(())
    }

    fn apply_id_embedding(&mut self, e: IdEmbedding) -> Result<bool> {
        let key = (e.item_id.clone(), e.space.clone());
        if !self.id_embeddings.contains_key(&key) {
            let stored = self
                .store
                .id_embedding(&e.item_id, &e.space)?
                .map(|(v, _, _)| v);
            self.id_embeddings.insert(key.clone(), (stored, None));
        }
        let (latest, write) = self.id_embeddings.get_mut(&key).expect("inserted above");
        if latest.is_some_and(|v| v >= e.version) {
            return Ok(false);
        }
        *latest = Some(e.version);
        *write = Some(e);
        Ok(true)
    }

    /// Writes the batch's state in key order per family: RocksDB's memtable insert starts its search where the
    /// previous insert ended, so sorted keys land near each other instead of each walking the skiplist from the top.
    pub fn write_into(&mut self, batch: &mut StateBatch<'_>) -> Result<()> {
        let mut changed_items: Vec<&Item> = self
            .items
            .values()
            .filter_map(|(item, changed)| item.as_ref().filter(|_| *changed))
            .collect();
        changed_items.sort_unstable_by(|a, b| a.item_id.cmp(&b.item_id));
        for item in &changed_items {
            batch.put_item(item)?;
        }
        for item in &changed_items {
            batch.put_embed_pending(&item.item_id, item.version)?;
        }
        let streams = &self.streams;
        for (id, per_source) in sorted_mut(&mut self.stats) {
            // Key order within an item: its keys end in (stream, partition).
            per_source.sort_unstable_by(|a, b| {
                (&streams[a.stream], a.partition).cmp(&(&streams[b.stream], b.partition))
            });
            for s in per_source.iter() {
                batch.put_item_stats(id, &streams[s.stream], s.partition, &s.stats)?;
            }
        }
        let mut new_item_users: Vec<_> = self.new_item_users.values().collect();
        new_item_users.sort_unstable();
        for pair in new_item_users {
            batch.put_item_user(pair)?;
        }
        let (store, history_cap, positives_cap) =
            (self.store, self.history_cap, self.positives_cap);
        // Family by family, each in key order (by user). Positives first: their heads are written with the
        // history's, in front of its entries.
        let mut users = sorted_mut(&mut self.users);
        for (user, lists) in &mut users {
            let positives = &mut lists.positives;
            if positives.has_appended() {
                let dropped =
                    positives.apply_cap(store, cf::USER_POSITIVES, user, positives_cap)?;
                positives.write_entries(batch, cf::USER_POSITIVES, user, &dropped)?;
            }
        }
        for (user, lists) in &mut users {
            let dropped = lists
                .history
                .apply_cap(store, cf::USER_HISTORIES, user, history_cap)?;
            batch.put_user_heads(user, &lists.heads())?;
            lists
                .history
                .write_entries(batch, cf::USER_HISTORIES, user, &dropped)?;
        }
        // A user whose mark the cache knows to be in the store needs no second one.
        users.retain(|(_, lists)| lists.positives.has_appended() && !lists.marked);
        for (user, _) in &users {
            batch.put_interests_pending(user)?;
        }
        let mut id_embeddings: Vec<&IdEmbedding> = self
            .id_embeddings
            .values()
            .filter_map(|(_, write)| write.as_ref())
            .collect();
        id_embeddings.sort_unstable_by(|a, b| (&a.item_id, &a.space).cmp(&(&b.item_id, &b.space)));
        for e in id_embeddings {
            batch.put_id_embedding(e)?;
        }
        Ok(())
    }

    pub fn sizes(&self) -> FoldSizes {
        FoldSizes {
            users: self.users.len(),
            items: self.stats.len(),
        }
    }

    /// Hands the batch's lists and counters to the cache for the next batches. Call only once the batch is
    /// committed: the cache must never hold state the store does not.
    pub fn committed(self) {
        for per_source in self.stats.into_values() {
            for s in per_source {
                self.cache.set_stats(s.key, s.stats);
            }
        }
        for pair in self.new_item_users.into_keys() {
            self.cache.add_pair(pair);
        }
        for lists in self.users.into_values() {
            let marked = lists.marked || lists.positives.has_appended();
            self.cache.set_user(lists.cache_key, lists.heads(), marked);
        }
    }
}

/// One item's counters from one source partition, as this batch changes them.
struct SourceStats {
    /// Index into [`Fold::streams`].
    stream: usize,
    partition: i32,
    key: Key,
    stats: ItemStats,
}

/// Both lists of one user, as a batch changes them.
struct UserUpdate {
    cache_key: Key,
    /// The user's interests mark is in the store already (as far as the cache knows).
    marked: bool,
    history: ListUpdate,
    positives: ListUpdate,
}

impl UserUpdate {
    /// Both heads as of this batch's commit.
    fn heads(&self) -> UserHeads {
        UserHeads {
            history: self.history.committed_head(),
            positives: self.positives.committed_head(),
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
    /// How many of `appended` (oldest first once sorted) fall under the cap at once and are never written.
    dropped_new: usize,
    /// The head after this batch, once [`ListUpdate::apply_cap`] has worked it out.
    written: Option<ListHead>,
}

impl ListUpdate {
    fn new(stored: ListHead) -> ListUpdate {
        ListUpdate {
            stored,
            next_seq: stored.next_seq,
            appended: Vec::new(),
            dropped_new: 0,
            written: None,
        }
    }

    fn has_appended(&self) -> bool {
        !self.appended.is_empty()
    }

    /// The head as of this batch's commit: the one it worked out, or else the one it found.
    fn committed_head(&self) -> ListHead {
        self.written.unwrap_or(self.stored)
    }

    fn append(&mut self, entry: HistoryEntry) {
        self.appended.push(((entry.ts, self.next_seq), entry));
        self.next_seq += 1;
    }

    /// Works out which entries stay under `cap` and the head that describes them; returns the positions of the
    /// stored entries that go.
    fn apply_cap(
        &mut self,
        store: &Store,
        family: &str,
        user: &str,
        cap: usize,
    ) -> Result<Vec<ListPosition>> {
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
        self.written = Some(ListHead {
            count: (total - from_stored - from_new) as u32,
            next_seq: self.next_seq,
            oldest,
        });
        self.dropped_new = from_new;
        let mut dropped = stored_front;
        dropped.truncate(from_stored);
        Ok(dropped)
    }

    /// Deletes the stored entries that go (`dropped`, from [`ListUpdate::apply_cap`]) and writes the new ones
    /// that stay, in key order (the dropped are the oldest), like every family's writes.
    fn write_entries(
        &self,
        batch: &mut StateBatch<'_>,
        family: &str,
        user: &str,
        dropped: &[ListPosition],
    ) -> Result<()> {
        for old in dropped {
            batch.delete_list_entry(family, user, *old)?;
        }
        for (at, entry) in &self.appended[self.dropped_new..] {
            batch.put_list_entry(family, user, *at, entry)?;
        }
        Ok(())
    }
}

/// The batch's update of `user`'s lists, started from the heads in the cache, or else in the store, the first
/// time the batch touches the user.
fn user_update<'m>(
    users: &'m mut HashMap<String, UserUpdate>,
    cache: &mut StateCache,
    store: &Store,
    user: &str,
) -> Result<&'m mut UserUpdate> {
    // Looked up by `&str` first: a user's first event in the batch is the only one that needs an owned key.
    if users.contains_key(user) {
        return Ok(users.get_mut(user).expect("checked above"));
    }
    let cache_key = cache.user_key(user);
    let (heads, marked) = match cache.user(cache_key) {
        Some(cached) => cached,
        None => (store.user_heads(user)?.unwrap_or_default(), false),
    };
    Ok(users.entry(user.to_string()).or_insert(UserUpdate {
        cache_key,
        marked,
        history: ListUpdate::new(heads.history),
        positives: ListUpdate::new(heads.positives),
    }))
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
