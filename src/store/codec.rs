//! Key and value encodings of the online store.
//!
//! Every key starts with a one-byte key-encoding version and every value with a one-byte value-encoding
//! version, so that a later release can change a layout and still read (or refuse clearly) what an older one
//! wrote. Current layouts, all integers big-endian in keys (so they sort) and little-endian in values:
//!
//! | column family    | key (v1)                                   | value (v1)                                    |
//! |------------------|--------------------------------------------|-----------------------------------------------|
//! | `meta`           | ascii name                                 | raw (format_version: u32 BE)                  |
//! | `meta`           | "model" · 00 · name · 00 · version         | 01 · JSON of [`ModelInfo`]                    |
//! | `offsets`        | 01 · topic · 00 · partition i32 BE         | 01 · next offset i64 LE                       |
//! | `items`          | 01 · item_id                               | 01 · JSON of [`Item`]                         |
//! | `item_stats`     | 01 · item_id · 00 · stream · 00 · part i32 BE | 02 · [`ItemStats`] as varints: events · positives · distinct_users · first_ts (zigzag) · last_ts − first_ts (zigzag), one partial per source partition (01 · 5 × 8 bytes LE: format 3, still read) |
//! | `item_users`     | 01 · item_id · 00 · user_id                | 01 (presence: the user has an event on it)    |
//! | `user_histories` | 02 · user_id · 00                          | 02 · [`UserHeads`]: the history's [`ListHead`], then the positives' (each as varints: count · next_seq · oldest ts (zigzag) · oldest seq); 01 · the history's head alone (format 3: no positives) |
//! | `user_histories` | 02 · user_id · 00 · ts (sign-flipped) u64 BE · seq u64 BE | 02 · one [`HistoryEntry`] without its ts (the key has it): action code u8 (+ 0x80 when rated) · dwell_ms varint · [rating f32] · item id (the rest); 01 · ts i64 · dwell u32 · rating f32 (NaN: none) · action u8 · item id u16-len str (format 3, still read) |
//! | `user_positives` | as `user_histories`' entries (no head: it is in `user_histories`) | as `user_histories`' entries |
//! | `id_embeddings`  | 01 · item_id · 00 · space                  | 01 · version u64 · ts i64 · dim u32 · f32 × dim |
//! | `item_embeddings`| 01 · item_id                               | 01 · model str · model_version str · item_version u64 · ts i64 · dim u32 · f32 × dim (str = u32 len · bytes) |
//! | `semantic_ids`   | 01 · item_id                               | 01 · model_version str · n u32 · code u32 × n (coarse to fine) |
//! | `semantic_ids`   | 00 · "codebooks" (one key)                 | 01 · model str · model_version str · levels u32 · per level: k u32 · dim u32 · f32 × k·dim |
//! | `user_interests` | 01 · user_id                               | 01 · model_version str · ts i64 · used u32 · dim u32 · mean f32 × dim · k u32 · k × (weight f32 · size u32 · medoid str · centroid f32 × dim) |
//! | `embed_pending`  | 01 · item_id · 00 · item_version u64 BE     | 01 (an item version waiting for the embed stage) |
//! | `log_pending`    | 01 · sequence u64 BE                       | 01 · [`LogRow`]                               |
//! | `teacher_targets`| 01 · item_id · 00 · kind (`seq2item`, `id:<space>`) | 01 · source str · samples u32 · ts i64 · dim u32 · f32 × dim |
//! | `interests_pending` | 01 · user_id                            | 01 (the user's positives changed since their interests were computed) |
//! | `job_state`      | ascii name                                 | 01 · u64 LE (counters)                        |
//! | `item_stamps`    | 01 · item_id                               | 01 · u64 LE (changes with every write to the item's embedding, semantic IDs or teacher targets) |
//!
//! Ids are printable ASCII (no 0x00), so 0x00 is a safe separator. Varints are LEB128 (7 bits a byte, low
//! first); zigzag maps signed to unsigned (0, -1, 1, -2, ... to 0, 1, 2, 3, ...). The values ingest rewrites
//! with every event (list heads, item counters) use them: a third of the bytes of fixed-width fields, and those
//! bytes go through the WAL, the memtables, every flush and every compaction.

use crate::error::{Error, Result};
use crate::schema::{Action, IdEmbedding, Item, ItemEmbedding};

pub const KEY_V1: u8 = 1;
/// Keys of the per-entry user lists (store format 2).
pub const KEY_V2: u8 = 2;
pub const VALUE_V1: u8 = 1;
/// Values that hold more than their v1 layout (a user's two list heads in one value, store format 4).
pub const VALUE_V2: u8 = 2;

pub fn id_key(id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + id.len());
    k.push(KEY_V1);
    k.extend_from_slice(id.as_bytes());
    k
}

pub fn decode_id_key(key: &[u8]) -> Result<&str> {
    match key.split_first() {
        Some((&KEY_V1, rest)) => std::str::from_utf8(rest).map_err(|_| corrupt("id key not UTF-8")),
        _ => Err(corrupt("unknown key version")),
    }
}

pub fn offset_key(topic: &str, partition: i32) -> Vec<u8> {
    let mut k = Vec::with_capacity(6 + topic.len());
    k.push(KEY_V1);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

pub fn decode_offset_key(key: &[u8]) -> Result<(String, i32)> {
    let rest = match key.split_first() {
        Some((&KEY_V1, rest)) if rest.len() >= 5 => rest,
        _ => return Err(corrupt("offset key")),
    };
    let (topic, part) = rest.split_at(rest.len() - 5);
    if part[0] != 0 {
        return Err(corrupt("offset key separator"));
    }
    let partition = i32::from_be_bytes(part[1..5].try_into().expect("4 bytes"));
    let topic = std::str::from_utf8(topic).map_err(|_| corrupt("offset key topic"))?;
    Ok((topic.to_string(), partition))
}

pub fn encode_offset(next: i64) -> Vec<u8> {
    let mut v = vec![VALUE_V1];
    v.extend_from_slice(&next.to_le_bytes());
    v
}

pub fn decode_offset(value: &[u8]) -> Result<i64> {
    let body = versioned(value, "offset")?;
    let bytes: [u8; 8] = body.try_into().map_err(|_| corrupt("offset length"))?;
    Ok(i64::from_le_bytes(bytes))
}

/// `01 · id · 00 · second`: the shape of every key scoped under one id.
fn id_pair_key(id: &str, second: &str) -> Vec<u8> {
    id_pair_key_with_room(id, second, 0)
}

/// [`id_pair_key`] with `extra` more bytes of capacity for what the caller appends (no regrowth on the hot path).
fn id_pair_key_with_room(id: &str, second: &str, extra: usize) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + id.len() + second.len() + extra);
    k.push(KEY_V1);
    k.extend_from_slice(id.as_bytes());
    k.push(0);
    k.extend_from_slice(second.as_bytes());
    k
}

pub fn id_embedding_key(item_id: &str, space: &str) -> Vec<u8> {
    id_pair_key(item_id, space)
}

/// Splits `01 · id · 00 · second` back into its two parts.
pub fn decode_id_pair_key(key: &[u8]) -> Result<(&str, &str)> {
    let rest = match key.split_first() {
        Some((&KEY_V1, rest)) => rest,
        _ => return Err(corrupt("unknown key version")),
    };
    let sep = rest
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| corrupt("pair key separator"))?;
    let first = std::str::from_utf8(&rest[..sep]).map_err(|_| corrupt("pair key id"))?;
    let second = std::str::from_utf8(&rest[sep + 1..]).map_err(|_| corrupt("pair key name"))?;
    Ok((first, second))
}

pub fn teacher_key(item_id: &str, kind: &str) -> Vec<u8> {
    id_pair_key(item_id, kind)
}

/// Every key of one item in a family keyed `01 · id · 00 · ...` starts with this.
pub fn id_scope_prefix(item_id: &str) -> Vec<u8> {
    let mut k = id_key(item_id);
    k.push(0);
    k
}

/// Item counters are kept as one partial per source partition (summed on read), so that a partition's share can
/// later move between workers without touching the others.
pub fn item_stats_key(item_id: &str, stream: &str, partition: i32) -> Vec<u8> {
    let mut k = id_pair_key_with_room(item_id, stream, 5);
    k.push(0);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// All partials of one item start with this.
pub fn item_stats_prefix(item_id: &str) -> Vec<u8> {
    id_pair_key(item_id, "")
}

/// The item id of an `item_stats` key.
pub fn decode_item_stats_key(key: &[u8]) -> Result<&str> {
    let body = match key.split_first() {
        Some((&KEY_V1, rest)) => rest,
        _ => return Err(corrupt("item stats key version")),
    };
    let end = body
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| corrupt("item stats key separator"))?;
    std::str::from_utf8(&body[..end]).map_err(|_| corrupt("item stats key id"))
}

impl ItemStats {
    /// Combines two partials of the same item. Distinct users add up exactly because behaviours are keyed by
    /// user_id, so a user's events all come through one partition.
    pub fn merge(&mut self, other: &ItemStats) {
        if other.events == 0 {
            return;
        }
        if self.events == 0 {
            *self = *other;
            return;
        }
        self.events += other.events;
        self.positives += other.positives;
        self.distinct_users += other.distinct_users;
        self.first_ts = self.first_ts.min(other.first_ts);
        self.last_ts = self.last_ts.max(other.last_ts);
    }
}

pub fn item_user_key(item_id: &str, user_id: &str) -> Vec<u8> {
    id_pair_key(item_id, user_id)
}

pub fn encode_item(item: &Item) -> Result<Vec<u8>> {
    let mut v = vec![VALUE_V1];
    serde_json::to_writer(&mut v, item)
        .map_err(|e| Error::Internal(format!("encode item: {e}")))?;
    Ok(v)
}

pub fn decode_item(value: &[u8]) -> Result<Item> {
    serde_json::from_slice(versioned(value, "item")?).map_err(|e| corrupt(&format!("item: {e}")))
}

/// Running counters per item, kept current by ingest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ItemStats {
    pub events: u64,
    pub positives: u64,
    /// Users with at least one event on the item (exact, kept with `item_users`).
    pub distinct_users: u64,
    pub first_ts: i64,
    pub last_ts: i64,
}

pub fn encode_stats(s: &ItemStats) -> Vec<u8> {
    let mut v = Vec::with_capacity(24);
    v.push(VALUE_V2);
    put_varint(&mut v, s.events);
    put_varint(&mut v, s.positives);
    put_varint(&mut v, s.distinct_users);
    put_varint(&mut v, zigzag(s.first_ts));
    put_varint(&mut v, zigzag(s.last_ts.wrapping_sub(s.first_ts)));
    v
}

/// Item stats as varints (v2), or as format 3 wrote them (v1, fixed width).
pub fn decode_stats(value: &[u8]) -> Result<ItemStats> {
    if let Some((&VALUE_V2, rest)) = value.split_first() {
        let mut r = Reader(rest);
        let (events, positives, distinct_users) = (r.varint()?, r.varint()?, r.varint()?);
        let first_ts = unzigzag(r.varint()?);
        let last_ts = first_ts.wrapping_add(unzigzag(r.varint()?));
        r.end("item stats")?;
        return Ok(ItemStats {
            events,
            positives,
            distinct_users,
            first_ts,
            last_ts,
        });
    }
    let b = versioned(value, "item stats")?;
    if b.len() != 40 {
        return Err(corrupt("item stats length"));
    }
    let word = |i: usize| <[u8; 8]>::try_from(&b[i * 8..i * 8 + 8]).expect("8 bytes");
    Ok(ItemStats {
        events: u64::from_le_bytes(word(0)),
        positives: u64::from_le_bytes(word(1)),
        distinct_users: u64::from_le_bytes(word(2)),
        first_ts: i64::from_le_bytes(word(3)),
        last_ts: i64::from_le_bytes(word(4)),
    })
}

/// One behaviour kept in a user's history.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    pub item_id: String,
    pub action: Action,
    pub ts: i64,
    pub dwell_ms: u32,
    pub rating: Option<f32>,
}

/// Store format 1's value for a whole user list (one key per user). Format 2 keeps one key per entry; this
/// layout is still read to upgrade a format-1 store in place (`Store::open`).
pub fn encode_history(entries: &[HistoryEntry]) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + entries.len() * 32);
    v.push(VALUE_V1);
    v.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        put_history_entry(&mut v, e);
    }
    v
}

pub fn decode_history(value: &[u8]) -> Result<Vec<HistoryEntry>> {
    let mut r = Reader(versioned(value, "history")?);
    let n = r.u32()? as usize;
    let mut out = Vec::with_capacity(n.min(100_000));
    for _ in 0..n {
        out.push(read_history_entry(&mut r)?);
    }
    Ok(out)
}

fn put_history_entry(v: &mut Vec<u8>, e: &HistoryEntry) {
    v.extend_from_slice(&e.ts.to_le_bytes());
    v.extend_from_slice(&e.dwell_ms.to_le_bytes());
    v.extend_from_slice(&e.rating.unwrap_or(f32::NAN).to_le_bytes());
    v.push(e.action.code());
    v.extend_from_slice(&(e.item_id.len() as u16).to_le_bytes());
    v.extend_from_slice(e.item_id.as_bytes());
}

fn read_history_entry(r: &mut Reader<'_>) -> Result<HistoryEntry> {
    let ts = i64::from_le_bytes(r.take()?);
    let dwell_ms = u32::from_le_bytes(r.take()?);
    let rating = f32::from_le_bytes(r.take()?);
    let [code] = r.take()?;
    let action = Action::from_code(code).ok_or_else(|| corrupt("history action code"))?;
    let len = u16::from_le_bytes(r.take()?) as usize;
    let item_id = std::str::from_utf8(r.bytes(len)?)
        .map_err(|_| corrupt("history item id"))?
        .to_string();
    Ok(HistoryEntry {
        item_id,
        action,
        ts,
        dwell_ms,
        rating: (!rating.is_nan()).then_some(rating),
    })
}

/// Where an entry sits in a user's list: time order, then arrival order (a per-user sequence number).
pub type ListPosition = (i64, u64);

/// The head record of a user's list (history or positives): how many entries there are, the next sequence
/// number, and the oldest entry's position. Readers seek straight to the oldest entry, past the tombstones that
/// trimming leaves in front of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListHead {
    pub count: u32,
    pub next_seq: u64,
    pub oldest: ListPosition,
}

/// The heads of one user's two lists, stored together under the history's head key (store format 4): ingest
/// changes both in the same batch whenever an event is positive, and a user it has not cached costs one read
/// instead of two. A list the user does not have is all zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserHeads {
    pub history: ListHead,
    pub positives: ListHead,
}

/// 02 · user_id · 00: the heads (in `user_histories` only); entries follow under the same prefix.
pub fn list_head_key(user_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + user_id.len() + 16);
    k.push(KEY_V2);
    k.extend_from_slice(user_id.as_bytes());
    k.push(0);
    k
}

/// 02 · user_id · 00 · ts (sign-flipped, BE) · seq BE: sorts by time, then arrival.
pub fn list_entry_key(user_id: &str, at: ListPosition) -> Vec<u8> {
    let mut k = list_head_key(user_id);
    k.extend_from_slice(&((at.0 as u64) ^ (1 << 63)).to_be_bytes());
    k.extend_from_slice(&at.1.to_be_bytes());
    k
}

/// The first key after every key of `user_id`'s list.
pub fn list_end_key(user_id: &str) -> Vec<u8> {
    let mut k = list_head_key(user_id);
    *k.last_mut().expect("non-empty") = 1;
    k
}

/// (user, position) of a list key; position is None for the head.
pub fn decode_list_key(key: &[u8]) -> Result<(&str, Option<ListPosition>)> {
    let rest = match key.split_first() {
        Some((&KEY_V2, rest)) => rest,
        _ => return Err(corrupt("user list key: not a v2 key")),
    };
    let sep = rest
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| corrupt("user list key: no separator"))?;
    let user = std::str::from_utf8(&rest[..sep]).map_err(|_| corrupt("user list key: user id"))?;
    match &rest[sep + 1..] {
        [] => Ok((user, None)),
        at if at.len() == 16 => {
            let ts = u64::from_be_bytes(at[..8].try_into().expect("8 bytes")) ^ (1 << 63);
            let seq = u64::from_be_bytes(at[8..].try_into().expect("8 bytes"));
            Ok((user, Some((ts as i64, seq))))
        }
        _ => Err(corrupt("user list key: bad position")),
    }
}

pub fn encode_user_heads(h: &UserHeads) -> Vec<u8> {
    let mut v = Vec::with_capacity(32);
    v.push(VALUE_V2);
    for head in [&h.history, &h.positives] {
        put_varint(&mut v, head.count.into());
        put_varint(&mut v, head.next_seq);
        put_varint(&mut v, zigzag(head.oldest.0));
        put_varint(&mut v, head.oldest.1);
    }
    v
}

/// Both heads (v2), or a format-3 head value (v1: one list's head alone, see [`decode_format3_list_head`]) read
/// as a history without positives: the format-4 upgrade moves only the heads of users that have positives.
pub fn decode_user_heads(value: &[u8]) -> Result<UserHeads> {
    match value.split_first() {
        Some((&VALUE_V2, rest)) => {
            let mut r = Reader(rest);
            let mut head = || -> Result<ListHead> {
                Ok(ListHead {
                    count: u32::try_from(r.varint()?)
                        .map_err(|_| corrupt("user list head: count"))?,
                    next_seq: r.varint()?,
                    oldest: (unzigzag(r.varint()?), r.varint()?),
                })
            };
            let heads = UserHeads {
                history: head()?,
                positives: head()?,
            };
            r.end("user list heads")?;
            Ok(heads)
        }
        _ => Ok(UserHeads {
            history: decode_format3_list_head(value)?,
            positives: ListHead::default(),
        }),
    }
}

/// A list head as store formats 2 and 3 wrote it, in each list's own family.
pub fn decode_format3_list_head(value: &[u8]) -> Result<ListHead> {
    let mut r = Reader(versioned(value, "user list head")?);
    Ok(ListHead {
        count: r.u32()?,
        next_seq: u64::from_le_bytes(r.take()?),
        oldest: (i64::from_le_bytes(r.take()?), u64::from_le_bytes(r.take()?)),
    })
}

/// A list head as store formats 2 and 3 wrote it, for the upgrade path and its tests.
pub fn encode_format3_list_head(h: &ListHead) -> Vec<u8> {
    let mut v = Vec::with_capacity(29);
    v.push(VALUE_V1);
    v.extend_from_slice(&h.count.to_le_bytes());
    v.extend_from_slice(&h.next_seq.to_le_bytes());
    v.extend_from_slice(&h.oldest.0.to_le_bytes());
    v.extend_from_slice(&h.oldest.1.to_le_bytes());
    v
}

/// Set on a v2 list entry's action byte when a rating follows.
const RATED: u8 = 0x80;

/// One list entry (v2): its ts is in its key ([`list_entry_key`]), so the value does not repeat it.
pub fn encode_list_entry(e: &HistoryEntry) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + e.item_id.len());
    v.push(VALUE_V2);
    v.push(e.action.code() | if e.rating.is_some() { RATED } else { 0 });
    put_varint(&mut v, e.dwell_ms.into());
    if let Some(rating) = e.rating {
        v.extend_from_slice(&rating.to_le_bytes());
    }
    v.extend_from_slice(e.item_id.as_bytes());
    v
}

/// The entry at position `at` of a list (from its key, [`decode_list_key`]), v2 or as format 3 wrote it (v1).
pub fn decode_list_entry(at: ListPosition, value: &[u8]) -> Result<HistoryEntry> {
    let Some((&VALUE_V2, rest)) = value.split_first() else {
        return read_history_entry(&mut Reader(versioned(value, "user list entry")?));
    };
    let mut r = Reader(rest);
    let [flags] = r.take()?;
    let action =
        Action::from_code(flags & !RATED).ok_or_else(|| corrupt("list entry action code"))?;
    let dwell_ms = u32::try_from(r.varint()?).map_err(|_| corrupt("list entry dwell"))?;
    let rating = if flags & RATED != 0 {
        Some(f32::from_le_bytes(r.take()?))
    } else {
        None
    };
    let item_id = std::str::from_utf8(r.0)
        .map_err(|_| corrupt("list entry item id"))?
        .to_string();
    Ok(HistoryEntry {
        item_id,
        action,
        ts: at.0,
        dwell_ms,
        rating,
    })
}

/// A list entry as store format 3 wrote it, for tests of reading such stores.
pub fn encode_format3_list_entry(e: &HistoryEntry) -> Vec<u8> {
    let mut v = Vec::with_capacity(20 + e.item_id.len());
    v.push(VALUE_V1);
    put_history_entry(&mut v, e);
    v
}

pub fn encode_id_embedding(e: &IdEmbedding) -> Vec<u8> {
    let mut v = Vec::with_capacity(21 + e.vector.len() * 4);
    v.push(VALUE_V1);
    v.extend_from_slice(&e.version.to_le_bytes());
    v.extend_from_slice(&e.ts.to_le_bytes());
    v.extend_from_slice(&(e.vector.len() as u32).to_le_bytes());
    put_f32s(&mut v, &e.vector);
    v
}

/// Stored ID embedding: (version, ts, vector).
pub fn decode_id_embedding(value: &[u8]) -> Result<(u64, i64, Vec<f32>)> {
    let mut r = Reader(versioned(value, "id embedding")?);
    let version = u64::from_le_bytes(r.take()?);
    let ts = i64::from_le_bytes(r.take()?);
    let dim = r.u32()? as usize;
    let vector = r.f32s(dim)?;
    Ok((version, ts, vector))
}

pub fn embed_pending_key(item_id: &str, item_version: u64) -> Vec<u8> {
    let mut k = id_key(item_id);
    k.push(0);
    k.extend_from_slice(&item_version.to_be_bytes());
    k
}

/// (item_id, item_version) of an `embed_pending` key.
pub fn decode_embed_pending_key(key: &[u8]) -> Result<(&str, u64)> {
    let body = match key.split_first() {
        Some((&KEY_V1, rest)) if rest.len() >= 9 => rest,
        _ => return Err(corrupt("embed pending key")),
    };
    let (id, tail) = body.split_at(body.len() - 9);
    if tail[0] != 0 {
        return Err(corrupt("embed pending key separator"));
    }
    let version = u64::from_be_bytes(tail[1..].try_into().expect("8 bytes"));
    let id = std::str::from_utf8(id).map_err(|_| corrupt("embed pending key id"))?;
    Ok((id, version))
}

/// One interest cluster of a user: normalised centroid, the history item nearest to it, its share of the
/// user's recency weight, and how many distinct items it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct InterestCluster {
    pub centroid: Vec<f32>,
    pub medoid: String,
    pub weight: f32,
    pub size: u32,
}

/// A user's interests: recency-weighted mean of the positive items' vectors and the interest clusters.
#[derive(Debug, Clone, PartialEq)]
pub struct UserInterests {
    pub model_version: String,
    /// The newest positive the interests account for (ms).
    pub ts: i64,
    pub positives_used: u32,
    pub mean: Vec<f32>,
    pub clusters: Vec<InterestCluster>,
}

/// What the behaviour side teaches the content model about one item: a vector in some space plus where it
/// came from. `kind` is `seq2item` (mean-pooled query sequences that led to the item) or `id:<space>` (the
/// item's recommender ID embedding in that space).
#[derive(Debug, Clone, PartialEq)]
pub struct TeacherTarget {
    pub kind: String,
    /// What produced it: the content model version (seq2item) or the ID space's origin (e.g. `item2vec seed=42`).
    pub source: String,
    /// How many samples were pooled (seq2item) or 1.
    pub samples: u32,
    /// When the job computed it (ms).
    pub ts: i64,
    pub vector: Vec<f32>,
}

pub fn encode_teacher(t: &TeacherTarget) -> Vec<u8> {
    let mut v = Vec::with_capacity(24 + t.source.len() + 4 * t.vector.len());
    v.push(VALUE_V1);
    put_str(&mut v, &t.source);
    v.extend_from_slice(&t.samples.to_le_bytes());
    v.extend_from_slice(&t.ts.to_le_bytes());
    v.extend_from_slice(&(t.vector.len() as u32).to_le_bytes());
    put_f32s(&mut v, &t.vector);
    v
}

pub fn decode_teacher(kind: &str, value: &[u8]) -> Result<TeacherTarget> {
    let mut r = Reader(versioned(value, "teacher target")?);
    let source = r.string()?;
    let samples = r.u32()?;
    let ts = i64::from_le_bytes(r.take()?);
    let dim = r.u32()? as usize;
    let vector = r.f32s(dim)?;
    Ok(TeacherTarget {
        kind: kind.to_string(),
        source,
        samples,
        ts,
        vector,
    })
}

fn put_f32s(v: &mut Vec<u8>, xs: &[f32]) {
    for x in xs {
        v.extend_from_slice(&x.to_le_bytes());
    }
}

pub fn encode_interests(u: &UserInterests) -> Vec<u8> {
    let mut v = vec![VALUE_V1];
    put_str(&mut v, &u.model_version);
    v.extend_from_slice(&u.ts.to_le_bytes());
    v.extend_from_slice(&u.positives_used.to_le_bytes());
    v.extend_from_slice(&(u.mean.len() as u32).to_le_bytes());
    put_f32s(&mut v, &u.mean);
    v.extend_from_slice(&(u.clusters.len() as u32).to_le_bytes());
    for c in &u.clusters {
        v.extend_from_slice(&c.weight.to_le_bytes());
        v.extend_from_slice(&c.size.to_le_bytes());
        put_str(&mut v, &c.medoid);
        put_f32s(&mut v, &c.centroid);
    }
    v
}

pub fn decode_interests(value: &[u8]) -> Result<UserInterests> {
    let mut r = Reader(versioned(value, "user interests")?);
    let model_version = r.string()?;
    let ts = i64::from_le_bytes(r.take()?);
    let positives_used = r.u32()?;
    let dim = r.u32()? as usize;
    let mean = r.f32s(dim)?;
    let k = r.u32()? as usize;
    let mut clusters = Vec::with_capacity(k.min(1024));
    for _ in 0..k {
        let weight = f32::from_le_bytes(r.take()?);
        let size = r.u32()?;
        let medoid = r.string()?;
        let centroid = r.f32s(dim)?;
        clusters.push(InterestCluster {
            centroid,
            medoid,
            weight,
            size,
        });
    }
    Ok(UserInterests {
        model_version,
        ts,
        positives_used,
        mean,
        clusters,
    })
}

/// What a model's vectors are, recorded in `meta` by the embed stage so that readers without the model files
/// (the lookup server on a replica host) know the dimension and the valid Matryoshka prefixes.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    pub dim: usize,
    pub matryoshka_prefixes: Vec<usize>,
    pub normalized: bool,
}

pub const MODEL_INFO_PREFIX: &[u8] = b"model\x00";

pub fn model_info_key(name: &str, version: &str) -> Vec<u8> {
    let mut k = MODEL_INFO_PREFIX.to_vec();
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k.extend_from_slice(version.as_bytes());
    k
}

pub fn encode_model_info(info: &ModelInfo) -> Vec<u8> {
    let mut v = vec![VALUE_V1];
    v.extend_from_slice(&serde_json::to_vec(info).expect("plain struct serialises"));
    v
}

pub fn decode_model_info(value: &[u8]) -> Result<ModelInfo> {
    serde_json::from_slice(versioned(value, "model info")?)
        .map_err(|e| corrupt(&format!("model info: {e}")))
}

/// The one `semantic_ids` key that is not an item: 0x00 cannot start an id key (those start with 0x01).
pub const CODEBOOKS_KEY: &[u8] = b"\x00codebooks";

/// Residual k-means codebooks: per level, k centroids of one dimension.
#[derive(Debug, Clone, PartialEq)]
pub struct Codebooks {
    pub model: String,
    pub model_version: String,
    pub levels: Vec<Vec<Vec<f32>>>,
}

pub fn encode_codes(model_version: &str, codes: &[u32]) -> Vec<u8> {
    let mut v = vec![VALUE_V1];
    put_str(&mut v, model_version);
    v.extend_from_slice(&(codes.len() as u32).to_le_bytes());
    for c in codes {
        v.extend_from_slice(&c.to_le_bytes());
    }
    v
}

/// (model_version, codes) of one item.
pub fn decode_codes(value: &[u8]) -> Result<(String, Vec<u32>)> {
    let mut r = Reader(versioned(value, "semantic ids")?);
    let version = r.string()?;
    let n = r.u32()? as usize;
    let codes = (0..n).map(|_| r.u32()).collect::<Result<_>>()?;
    Ok((version, codes))
}

pub fn encode_codebooks(c: &Codebooks) -> Vec<u8> {
    let mut v = vec![VALUE_V1];
    put_str(&mut v, &c.model);
    put_str(&mut v, &c.model_version);
    v.extend_from_slice(&(c.levels.len() as u32).to_le_bytes());
    for level in &c.levels {
        let dim = level.first().map_or(0, Vec::len);
        v.extend_from_slice(&(level.len() as u32).to_le_bytes());
        v.extend_from_slice(&(dim as u32).to_le_bytes());
        for centroid in level {
            put_f32s(&mut v, centroid);
        }
    }
    v
}

pub fn decode_codebooks(value: &[u8]) -> Result<Codebooks> {
    let mut r = Reader(versioned(value, "codebooks")?);
    let model = r.string()?;
    let model_version = r.string()?;
    let n = r.u32()? as usize;
    let mut levels = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let k = r.u32()? as usize;
        let dim = r.u32()? as usize;
        let flat = r.f32s(k * dim)?;
        levels.push(flat.chunks(dim.max(1)).map(<[f32]>::to_vec).collect());
    }
    Ok(Codebooks {
        model,
        model_version,
        levels,
    })
}

fn put_str(v: &mut Vec<u8>, s: &str) {
    v.extend_from_slice(&(s.len() as u32).to_le_bytes());
    v.extend_from_slice(s.as_bytes());
}

/// Semantic ids are not part of this value: they live in their own family once codebooks exist.
pub fn encode_item_embedding(e: &ItemEmbedding) -> Vec<u8> {
    let mut v = Vec::with_capacity(40 + e.model.len() + e.model_version.len() + e.vector.len() * 4);
    v.push(VALUE_V1);
    put_str(&mut v, &e.model);
    put_str(&mut v, &e.model_version);
    v.extend_from_slice(&e.item_version.to_le_bytes());
    v.extend_from_slice(&e.ts.to_le_bytes());
    v.extend_from_slice(&(e.vector.len() as u32).to_le_bytes());
    put_f32s(&mut v, &e.vector);
    v
}

pub fn decode_item_embedding(item_id: &str, value: &[u8]) -> Result<ItemEmbedding> {
    let mut r = Reader(versioned(value, "item embedding")?);
    let model = r.string()?;
    let model_version = r.string()?;
    let item_version = u64::from_le_bytes(r.take()?);
    let ts = i64::from_le_bytes(r.take()?);
    let dim = r.u32()? as usize;
    let vector = r.f32s(dim)?;
    Ok(ItemEmbedding {
        item_id: item_id.to_string(),
        model,
        model_version,
        item_version,
        vector,
        semantic_ids: Vec::new(),
        ts,
    })
}

pub fn encode_u64(v: u64) -> Vec<u8> {
    let mut out = vec![VALUE_V1];
    out.extend_from_slice(&v.to_le_bytes());
    out
}

pub fn decode_u64(value: &[u8]) -> Result<u64> {
    let b: [u8; 8] = versioned(value, "counter")?
        .try_into()
        .map_err(|_| corrupt("counter length"))?;
    Ok(u64::from_le_bytes(b))
}

pub fn seq_key(seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(KEY_V1);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub fn decode_seq_key(key: &[u8]) -> Result<u64> {
    match key.split_first() {
        Some((&KEY_V1, rest)) if rest.len() == 8 => {
            Ok(u64::from_be_bytes(rest.try_into().expect("8 bytes")))
        }
        _ => Err(corrupt("log sequence key")),
    }
}

/// One event waiting for the offline log: where it came from and its original bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRow {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// When sailstream ingested it, milliseconds since the Unix epoch.
    pub ingest_ts: i64,
}

pub fn encode_log_row(r: &LogRow) -> Vec<u8> {
    let key_len = r.key.as_ref().map_or(0, Vec::len);
    let mut v = Vec::with_capacity(32 + r.topic.len() + key_len + r.payload.len());
    v.push(VALUE_V1);
    v.extend_from_slice(&r.partition.to_le_bytes());
    v.extend_from_slice(&r.offset.to_le_bytes());
    v.extend_from_slice(&r.ingest_ts.to_le_bytes());
    v.extend_from_slice(&(r.topic.len() as u32).to_le_bytes());
    v.extend_from_slice(r.topic.as_bytes());
    match &r.key {
        Some(k) => {
            v.push(1);
            v.extend_from_slice(&(k.len() as u32).to_le_bytes());
            v.extend_from_slice(k);
        }
        None => v.push(0),
    }
    v.extend_from_slice(&(r.payload.len() as u32).to_le_bytes());
    v.extend_from_slice(&r.payload);
    v
}

pub fn decode_log_row(value: &[u8]) -> Result<LogRow> {
    let mut r = Reader(versioned(value, "log row")?);
    let partition = i32::from_le_bytes(r.take()?);
    let offset = i64::from_le_bytes(r.take()?);
    let ingest_ts = i64::from_le_bytes(r.take()?);
    let topic_len = r.u32()? as usize;
    let topic = std::str::from_utf8(r.bytes(topic_len)?)
        .map_err(|_| corrupt("log row topic"))?
        .to_string();
    let [has_key] = r.take()?;
    let key = if has_key == 1 {
        let n = r.u32()? as usize;
        Some(r.bytes(n)?.to_vec())
    } else {
        None
    };
    let n = r.u32()? as usize;
    let payload = r.bytes(n)?.to_vec();
    Ok(LogRow {
        topic,
        partition,
        offset,
        key,
        payload,
        ingest_ts,
    })
}

fn versioned<'a>(value: &'a [u8], what: &str) -> Result<&'a [u8]> {
    match value.split_first() {
        Some((&VALUE_V1, rest)) => Ok(rest),
        Some((v, _)) => Err(corrupt(&format!(
            "{what}: value encoding v{v} is unknown to this build"
        ))),
        None => Err(corrupt(&format!("{what}: empty value"))),
    }
}

fn put_varint(v: &mut Vec<u8>, mut x: u64) {
    while x >= 0x80 {
        v.push(x as u8 | 0x80);
        x >>= 7;
    }
    v.push(x as u8);
}

fn zigzag(x: i64) -> u64 {
    ((x << 1) ^ (x >> 63)) as u64
}

fn unzigzag(x: u64) -> i64 {
    (x >> 1) as i64 ^ -((x & 1) as i64)
}

fn corrupt(context: &str) -> Error {
    Error::StoreCorrupt {
        context: context.to_string(),
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(corrupt("value truncated"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn take<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.bytes(N)?.try_into().expect("N bytes"))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    /// A LEB128 varint of at most 10 bytes whose value fits in 64 bits.
    fn varint(&mut self) -> Result<u64> {
        let mut x = 0u64;
        for i in 0..10 {
            let [b] = self.take::<1>()?;
            let bits = u64::from(b & 0x7f);
            if i == 9 && bits > 1 {
                return Err(corrupt("varint overflows 64 bits"));
            }
            x |= bits << (7 * i);
            if b & 0x80 == 0 {
                return Ok(x);
            }
        }
        Err(corrupt("varint longer than 10 bytes"))
    }
    /// Fails when bytes are left over: a value longer than its layout is not the value this build expects.
    fn end(&self, what: &str) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(corrupt(&format!("{what}: {} trailing bytes", self.0.len())))
        }
    }
    /// `n` little-endian f32s (the layout [`put_f32s`] writes).
    fn f32s(&mut self, n: usize) -> Result<Vec<f32>> {
        let raw = self.bytes(n.checked_mul(4).ok_or_else(|| corrupt("vector length"))?)?;
        Ok(raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect())
    }
    fn string(&mut self) -> Result<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.bytes(n)?.to_vec()).map_err(|_| corrupt("string not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codebooks_and_codes_round_trip() {
        let c = Codebooks {
            model: "m".into(),
            model_version: "1".into(),
            levels: vec![vec![vec![1.0, 2.0], vec![3.0, 4.0]], vec![vec![0.5, 0.5]]],
        };
        assert_eq!(decode_codebooks(&encode_codebooks(&c)).unwrap(), c);
        assert_eq!(
            decode_codes(&encode_codes("1", &[3, 0, 7])).unwrap(),
            ("1".to_string(), vec![3, 0, 7])
        );
    }

    #[test]
    fn item_embedding_and_pending_keys_round_trip() {
        let e = ItemEmbedding {
            item_id: "i1".into(),
            model: "sail-lite".into(),
            model_version: "0.1.0".into(),
            item_version: 3,
            vector: vec![0.5, -0.25],
            semantic_ids: vec![],
            ts: 1_700_000_000_000,
        };
        assert_eq!(
            decode_item_embedding("i1", &encode_item_embedding(&e)).unwrap(),
            e
        );
        let k = embed_pending_key("item-9", 42);
        assert_eq!(decode_embed_pending_key(&k).unwrap(), ("item-9", 42));
        assert!(embed_pending_key("a", 2) < embed_pending_key("a", 10));
    }

    #[test]
    fn offset_key_round_trip_and_order() {
        let k = offset_key("sail.items", 7);
        assert_eq!(decode_offset_key(&k).unwrap(), ("sail.items".into(), 7));
        assert!(offset_key("sail.items", 1) < offset_key("sail.items", 2));
        assert_eq!(decode_offset(&encode_offset(42)).unwrap(), 42);
    }

    #[test]
    fn teacher_round_trip() {
        let t = TeacherTarget {
            kind: "id:item2vec".into(),
            source: "item2vec seed=7".into(),
            samples: 3,
            ts: -5,
            vector: vec![0.5, -0.25],
        };
        assert_eq!(
            decode_teacher("id:item2vec", &encode_teacher(&t)).unwrap(),
            t
        );
        let key = teacher_key("v1", "seq2item");
        assert_eq!(decode_id_pair_key(&key).unwrap(), ("v1", "seq2item"));
        assert!(key.starts_with(&id_scope_prefix("v1")));
        assert!(!teacher_key("v10", "seq2item").starts_with(&id_scope_prefix("v1")));
    }

    #[test]
    fn history_round_trip() {
        let h = vec![
            HistoryEntry {
                item_id: "a".into(),
                action: Action::Like,
                ts: 1_700_000_000_000,
                dwell_ms: 12,
                rating: None,
            },
            HistoryEntry {
                item_id: "item-42".into(),
                action: Action::Rate,
                ts: 1_700_000_000_001,
                dwell_ms: 0,
                rating: Some(4.5),
            },
        ];
        assert_eq!(decode_history(&encode_history(&h)).unwrap(), h);
        for e in &h {
            let at = (e.ts, 7);
            let v2 = encode_list_entry(e);
            assert_eq!(&decode_list_entry(at, &v2).unwrap(), e);
            assert!(v2.len() <= 3 + e.item_id.len() + 4 * e.rating.is_some() as usize);
            // Format 3's entries (v1) still read.
            assert_eq!(
                &decode_list_entry(at, &encode_format3_list_entry(e)).unwrap(),
                e
            );
        }
        let long_dwell = HistoryEntry {
            dwell_ms: u32::MAX,
            ..h[0].clone()
        };
        let at = (long_dwell.ts, 0);
        assert_eq!(
            decode_list_entry(at, &encode_list_entry(&long_dwell)).unwrap(),
            long_dwell
        );
        assert!(
            decode_list_entry(at, &[VALUE_V2, 0x7f, 0]).is_err(),
            "unknown action"
        );
        assert!(
            decode_list_entry(at, &[VALUE_V2, RATED, 0, 1]).is_err(),
            "truncated rating"
        );
        assert!(
            decode_list_entry(at, &[VALUE_V2, 0, 0, 0xff]).is_err(),
            "item id not UTF-8"
        );
    }

    #[test]
    fn list_keys_sort_by_time_then_arrival_and_round_trip() {
        let positions = [
            (-5, 9),
            (0, 3),
            (0, 4),
            (1_700_000_000_000, 0),
            (1_700_000_000_000, 1),
        ];
        let keys: Vec<_> = positions.iter().map(|p| list_entry_key("u1", *p)).collect();
        assert!(
            keys.windows(2).all(|w| w[0] < w[1]),
            "key order is (ts, seq)"
        );
        let head = list_head_key("u1");
        let end = list_end_key("u1");
        assert!(keys.iter().all(|k| head < *k && *k < end));
        // Another user whose id extends this one sorts outside the range.
        assert!(list_head_key("u10") > end || list_head_key("u10") < head);
        for (k, p) in keys.iter().zip(positions) {
            assert_eq!(decode_list_key(k).unwrap(), ("u1", Some(p)));
        }
        assert_eq!(decode_list_key(&head).unwrap(), ("u1", None));
        let h = ListHead {
            count: 3,
            next_seq: 17,
            oldest: (-5, 9),
        };
        let heads = UserHeads {
            history: h,
            positives: ListHead {
                count: 1,
                next_seq: 2,
                oldest: (4, 1),
            },
        };
        assert_eq!(
            decode_user_heads(&encode_user_heads(&heads)).unwrap(),
            heads
        );
        // A format-3 head (one list's, v1) reads as a history without positives.
        let old = encode_format3_list_head(&h);
        assert_eq!(decode_format3_list_head(&old).unwrap(), h);
        assert_eq!(
            decode_user_heads(&old).unwrap(),
            UserHeads {
                history: h,
                positives: ListHead::default()
            }
        );
        assert!(decode_user_heads(&[3, 0]).is_err(), "unknown value version");
        let extreme = UserHeads {
            history: ListHead {
                count: u32::MAX,
                next_seq: u64::MAX,
                oldest: (i64::MIN, u64::MAX),
            },
            positives: ListHead::default(),
        };
        assert_eq!(
            decode_user_heads(&encode_user_heads(&extreme)).unwrap(),
            extreme
        );
        let mut trailing = encode_user_heads(&heads);
        trailing.push(1);
        assert!(decode_user_heads(&trailing).is_err(), "trailing bytes");
        assert!(
            decode_user_heads(&encode_user_heads(&heads)[..8]).is_err(),
            "truncated"
        );
    }

    #[test]
    fn varints_round_trip_at_the_extremes_and_refuse_bad_bytes() {
        for x in [0, 1, 127, 128, 300, u32::MAX as u64, u64::MAX - 1, u64::MAX] {
            let mut v = Vec::new();
            put_varint(&mut v, x);
            assert!(v.len() <= 10);
            let mut r = Reader(&v);
            assert_eq!(r.varint().unwrap(), x);
            r.end("varint").unwrap();
        }
        for x in [
            0,
            1,
            -1,
            1_750_000_000_000,
            -1_750_000_000_000,
            i64::MIN,
            i64::MAX,
        ] {
            assert_eq!(unzigzag(zigzag(x)), x);
        }
        assert_eq!(zigzag(-1), 1, "small negatives stay small");
        assert!(Reader(&[0x80]).varint().is_err(), "truncated");
        assert!(Reader(&[0xff; 11]).varint().is_err(), "too long");
        let mut over = vec![0xff; 9];
        over.push(0x02);
        assert!(Reader(&over).varint().is_err(), "more than 64 bits");
    }

    #[test]
    fn item_stats_round_trip_compactly_and_format_3_values_still_read() {
        let typical = ItemStats {
            events: 1_234,
            positives: 56,
            distinct_users: 789,
            first_ts: 1_750_000_000_000,
            last_ts: 1_750_000_600_000,
        };
        let extreme = ItemStats {
            events: u64::MAX,
            positives: 0,
            distinct_users: u64::MAX,
            first_ts: i64::MAX,
            last_ts: i64::MIN,
        };
        for s in [typical, extreme, ItemStats::default()] {
            assert_eq!(decode_stats(&encode_stats(&s)).unwrap(), s);
        }
        assert!(
            encode_stats(&typical).len() <= 16,
            "{:?}",
            encode_stats(&typical)
        );
        let mut v1 = vec![VALUE_V1];
        for word in [3u64, 1, 2, 5, 9] {
            v1.extend_from_slice(&word.to_le_bytes());
        }
        assert_eq!(
            decode_stats(&v1).unwrap(),
            ItemStats {
                events: 3,
                positives: 1,
                distinct_users: 2,
                first_ts: 5,
                last_ts: 9
            }
        );
        let mut trailing = encode_stats(&typical);
        trailing.push(0);
        assert!(decode_stats(&trailing).is_err());
        assert!(decode_stats(&encode_stats(&typical)[..4]).is_err());
    }

    #[test]
    fn log_row_round_trip() {
        for key in [None, Some(b"k".to_vec())] {
            let row = LogRow {
                topic: "sail.items".into(),
                partition: 3,
                offset: 77,
                key,
                payload: b"{}".to_vec(),
                ingest_ts: 5,
            };
            assert_eq!(decode_log_row(&encode_log_row(&row)).unwrap(), row);
        }
        assert_eq!(decode_seq_key(&seq_key(9)).unwrap(), 9);
        assert!(seq_key(255) < seq_key(256));
    }

    #[test]
    fn unknown_value_version_is_refused() {
        let mut v = encode_offset(1);
        v[0] = 9;
        let err = decode_offset(&v).unwrap_err().to_string();
        assert!(err.contains("v9"), "{err}");
        assert!(
            decode_history(&[VALUE_V1, 5, 0, 0, 0]).is_err(),
            "truncated"
        );
    }
}
