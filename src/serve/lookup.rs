//! The handlers: validate the request, read one consistent view of the store, shape the answer.

use foldhash::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};

use super::api::{
    CandidateBody, EmbeddingQuery, EmbeddingsRequest, EmbeddingsResponse, InterestClusterBody,
    InterestsQuery, InterestsResponse, ItemEmbeddingBody, MatchRequest, MatchResponse,
    RecentPositive,
};
use super::features::{self, MatchItem, UserSide};
use super::{ApiError, Catalog, ServeState};
use crate::schema::ItemEmbedding;
use crate::store::{HistoryEntry, SemanticIds, StoreView, TeacherTarget};

type Answer<T> = Result<Json<T>, ApiError>;

/// Teacher-target kinds: `seq2item`, and `id:<space>` per ID space.
const SEQ2ITEM_KIND: &str = "seq2item";
const ID_KIND_PREFIX: &str = "id:";

fn check_id(state: &ServeState, field: &str, id: &str) -> Result<(), ApiError> {
    crate::schema::check::id(field, id, state.config.limits.max_id_bytes)
        .map_err(|e| ApiError::bad_request(format!("{}: {}", e.field, e.reason)))
}

fn check_batch(state: &ServeState, field: &str, n: usize) -> Result<(), ApiError> {
    let max = state.config.serve.max_batch;
    if n > max {
        return Err(ApiError {
            status: axum::http::StatusCode::BAD_REQUEST,
            code: "batch_too_large",
            message: format!("{field}: {n} ids, more than serve.max_batch = {max}"),
        });
    }
    Ok(())
}

/// A requested prefix must be the full dimension or a Matryoshka prefix of some stored model.
fn check_dim(catalog: &Catalog, dim: Option<usize>) -> Result<(), ApiError> {
    let Some(dim) = dim else { return Ok(()) };
    if catalog
        .models
        .iter()
        .any(|m| m.dim == dim || m.matryoshka_prefixes.contains(&dim))
    {
        return Ok(());
    }
    let valid: Vec<String> = catalog
        .models
        .iter()
        .map(|m| {
            format!(
                "{} {}: {:?} (full: {})",
                m.name, m.version, m.matryoshka_prefixes, m.dim
            )
        })
        .collect();
    Err(ApiError::bad_request(format!(
        "dim: {dim} is not a dimension any stored model declares; valid: {}",
        if valid.is_empty() {
            "none yet (no embeddings stored)".to_string()
        } else {
            valid.join("; ")
        }
    )))
}

/// An item's codes, when they were assigned for the model version of its stored vector (during a re-embed the
/// codes of the old version are meaningless next to the new vector).
fn codes_of(e: &ItemEmbedding, codes: Option<SemanticIds>) -> Option<Vec<u32>> {
    codes
        .filter(|(version, _)| *version == e.model_version)
        .map(|(_, c)| c)
}

/// The stored vector, or the requested prefix of it renormalised (when the item's model declares it).
fn embedding_body(
    catalog: &Catalog,
    e: ItemEmbedding,
    codes: Option<(String, Vec<u32>)>,
    dim: Option<usize>,
) -> ItemEmbeddingBody {
    let semantic_ids = codes_of(&e, codes);
    let full = e.vector.len();
    let (vector, problem) = match dim {
        None => (Some(e.vector), None),
        Some(d) if d == full => (Some(e.vector), None),
        Some(d) => {
            let declared = catalog.models.iter().any(|m| {
                m.name == e.model
                    && m.version == e.model_version
                    && m.matryoshka_prefixes.contains(&d)
            });
            if declared && d < full {
                (Some(crate::embed::normalized(&e.vector[..d])), None)
            } else {
                (
                    None,
                    Some(format!(
                        "model {} {} does not declare a {d}-dimension prefix",
                        e.model, e.model_version
                    )),
                )
            }
        }
    };
    ItemEmbeddingBody {
        item_id: e.item_id,
        found: true,
        dim: vector.as_ref().map(Vec::len),
        vector,
        model: Some(e.model),
        model_version: Some(e.model_version),
        item_version: Some(e.item_version),
        semantic_ids,
        updated_ms: Some(e.ts),
        problem,
    }
}

fn embeddings(
    state: &ServeState,
    ids: &[&str],
    dim: Option<usize>,
) -> Result<Vec<ItemEmbeddingBody>, ApiError> {
    let catalog = state.catalog();
    check_dim(&catalog, dim)?;
    let store = state.store();
    let view = store.view();
    let vectors = view.item_embeddings(ids)?;
    let codes = view.semantic_ids(ids)?;
    Ok(ids
        .iter()
        .zip(vectors.into_iter().zip(codes))
        .map(|(id, (vector, codes))| match vector {
            Some(e) => embedding_body(&catalog, e, codes, dim),
            None => ItemEmbeddingBody::missing(id),
        })
        .collect())
}

pub(super) async fn item_embedding(
    State(state): State<Arc<ServeState>>,
    item_id: Result<Path<String>, PathRejection>,
    query: Result<Query<EmbeddingQuery>, QueryRejection>,
) -> Answer<ItemEmbeddingBody> {
    let Path(item_id) = item_id?;
    let Query(query) = query?;
    check_id(&state, "item_id", &item_id)?;
    let mut out = embeddings(&state, &[item_id.as_str()], query.dim)?;
    Ok(Json(out.remove(0)))
}

pub(super) async fn item_embeddings(
    State(state): State<Arc<ServeState>>,
    body: Result<Json<EmbeddingsRequest>, JsonRejection>,
) -> Answer<EmbeddingsResponse> {
    let Json(request) = body?;
    check_batch(&state, "item_ids", request.item_ids.len())?;
    for id in &request.item_ids {
        check_id(&state, "item_ids[]", id)?;
    }
    let ids: Vec<&str> = request.item_ids.iter().map(String::as_str).collect();
    Ok(Json(EmbeddingsResponse {
        items: embeddings(&state, &ids, request.dim)?,
    }))
}

pub(super) async fn user_interests(
    State(state): State<Arc<ServeState>>,
    user_id: Result<Path<String>, PathRejection>,
    query: Result<Query<InterestsQuery>, QueryRejection>,
) -> Answer<InterestsResponse> {
    let Path(user_id) = user_id?;
    let Query(query) = query?;
    check_id(&state, "user_id", &user_id)?;
    let cap = state.config.store.positives_cap;
    let recent = query.recent.unwrap_or(state.config.serve.recent_positives);
    if recent > cap {
        return Err(ApiError::bad_request(format!(
            "recent: {recent} is more than the {cap} positives a user keeps (store.positives_cap)"
        )));
    }
    let store = state.store();
    let view = store.view();
    let interests = view.user_interests(&user_id)?;
    let mut left = recent;
    let positives = if recent == 0 {
        Vec::new()
    } else {
        view.newest_positives(&user_id, |_| {
            left -= 1;
            left > 0
        })?
    };
    let recent_positives = positives
        .iter()
        .map(|p| RecentPositive {
            item_id: p.item_id.clone(),
            action: p.action,
            ts: p.ts,
            dwell_ms: (p.dwell_ms > 0).then_some(p.dwell_ms),
            rating: p.rating,
        })
        .collect();
    let found = interests.is_some() || !positives.is_empty();
    Ok(Json(match interests {
        Some(u) => InterestsResponse {
            user_id,
            found,
            has_interests: true,
            model_version: Some(u.model_version),
            updated_ms: Some(u.ts),
            positives_used: u.positives_used,
            mean: u.mean,
            clusters: u
                .clusters
                .into_iter()
                .map(|c| InterestClusterBody {
                    centroid: c.centroid,
                    medoid_item_id: c.medoid,
                    weight: c.weight,
                    size: c.size,
                })
                .collect(),
            recent_positives,
        },
        None => InterestsResponse {
            user_id,
            found,
            has_interests: false,
            model_version: None,
            updated_ms: None,
            positives_used: 0,
            mean: Vec::new(),
            clusters: Vec::new(),
            recent_positives,
        },
    }))
}

/// The newest `n` distinct items among a user's positives (stored oldest first).
/// The first `n` distinct items of `newest_first`.
fn recent_distinct(newest_first: &[HistoryEntry], n: usize) -> Vec<&str> {
    let mut seen = HashSet::default();
    newest_first
        .iter()
        .map(|p| p.item_id.as_str())
        .filter(|id| seen.insert(*id))
        .take(n)
        .collect()
}

/// The teacher kinds match features read: `seq2item` and `id:<space>` for every configured ID space plus the
/// learned one. Read by key (one MultiGet) rather than by scanning each item's targets.
pub(super) fn teacher_kinds(config: &crate::config::Config) -> Vec<String> {
    let mut kinds = vec![SEQ2ITEM_KIND.to_string()];
    let spaces = config
        .id_spaces
        .keys()
        .map(String::as_str)
        .chain([crate::jobs::id2item::LEARNED_SPACE]);
    for space in spaces {
        let kind = format!("{ID_KIND_PREFIX}{space}");
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    kinds
}

/// An item as match features see it, from its stored embedding, codes and teacher targets (one slot per kind).
fn match_item(
    e: ItemEmbedding,
    codes: Option<SemanticIds>,
    targets: Vec<Option<TeacherTarget>>,
) -> MatchItem {
    let mut item = MatchItem::new(&e.vector).with_semantic_ids(codes_of(&e, codes));
    for t in targets.into_iter().flatten() {
        if t.kind == SEQ2ITEM_KIND {
            item = item.with_seq2item_teacher(&t.vector);
        } else if let Some(space) = t.kind.strip_prefix(ID_KIND_PREFIX) {
            item = item.with_id_vector(space, &t.vector);
        }
    }
    item
}

/// An item in the server's cache, with what says whether it is still current.
pub(super) struct CachedItem {
    /// The item's stamp when it was read: equal stamps, equal item.
    stamp: u64,
    /// The sequence number of a store view in which the stamp was last found unchanged (any such one: they
    /// are all true). A view at that same sequence number can use the item without reading the stamp.
    checked_at: AtomicU64,
    item: Arc<MatchItem>,
}

/// The items as match features see them (None: no embedding stored). An item is decoded from the store once
/// and then kept in the server's cache with its stamp; a request uses the cached copy only while the stamp it
/// reads in its own view is the same, so cached items are exactly as current as the rest of the request's reads.
/// Reading ~250 small stamps replaces reading each item's embedding (3.5 KB), codes and teacher vectors, and a
/// request whose view is at the sequence number an item's stamp was last checked at (no write since, as
/// between two catch-ups of a secondary) does not read the stamp either.
fn match_items(
    state: &ServeState,
    view: &StoreView<'_>,
    ids: &[&str],
) -> crate::error::Result<Vec<Option<Arc<MatchItem>>>> {
    let sequence = view.sequence();
    let mut out: Vec<Option<Arc<MatchItem>>> = vec![None; ids.len()];
    // Cached items that need their stamp read, and the others (not cached).
    let mut unchecked: Vec<(usize, Arc<CachedItem>)> = Vec::new();
    let mut misses = Vec::new();
    {
        let mut cache = state.items.lock().unwrap_or_else(|p| p.into_inner());
        for (i, id) in ids.iter().enumerate() {
            match cache.get(*id) {
                Some(c) if c.checked_at.load(Ordering::Relaxed) == sequence => {
                    out[i] = Some(c.item.clone())
                }
                Some(c) => unchecked.push((i, c)),
                None => misses.push(i),
            }
        }
    }
    let mut stamps: Vec<Option<u64>> = vec![None; ids.len()];
    if !unchecked.is_empty() || !misses.is_empty() {
        let to_read: Vec<usize> = unchecked
            .iter()
            .map(|(i, _)| *i)
            .chain(misses.iter().copied())
            .collect();
        let read = view.item_stamps(&to_read.iter().map(|&i| ids[i]).collect::<Vec<_>>())?;
        for (i, stamp) in to_read.into_iter().zip(read) {
            stamps[i] = stamp;
        }
    }
    for (i, cached) in unchecked {
        if stamps[i] == Some(cached.stamp) {
            cached.checked_at.store(sequence, Ordering::Relaxed);
            out[i] = Some(cached.item.clone());
        } else {
            misses.push(i);
        }
    }
    let hits = ids.len() - misses.len();
    state.item_cache_hits.increment(hits as u64);
    state.item_cache_misses.increment(misses.len() as u64);
    if misses.is_empty() {
        return Ok(out);
    }

    let missed: Vec<&str> = misses.iter().map(|&i| ids[i]).collect();
    let embeddings = view.item_embeddings(&missed)?;
    let codes = view.semantic_ids(&missed)?;
    let targets = view.teacher_targets_of(&missed, &state.teacher_kinds)?;
    let mut fresh = Vec::new();
    for (((i, e), c), t) in misses.into_iter().zip(embeddings).zip(codes).zip(targets) {
        // Not embedded yet: nothing to compare, and nothing to keep (the stamp changes when it is embedded).
        let Some(e) = e else { continue };
        let item = Arc::new(match_item(e, c, t));
        if let Some(stamp) = stamps[i] {
            let cached = CachedItem {
                stamp,
                checked_at: AtomicU64::new(sequence),
                item: item.clone(),
            };
            fresh.push((ids[i].to_string(), Arc::new(cached)));
        }
        out[i] = Some(item);
    }
    let mut cache = state.items.lock().unwrap_or_else(|p| p.into_inner());
    for (id, cached) in fresh {
        let bytes = id.len() + cached.item.footprint();
        cache.put(id, cached, bytes);
    }
    Ok(out)
}

pub(super) async fn match_features(
    State(state): State<Arc<ServeState>>,
    body: Result<Json<MatchRequest>, JsonRejection>,
) -> Answer<MatchResponse> {
    let Json(request) = body?;
    check_id(&state, "user_id", &request.user_id)?;
    check_batch(&state, "candidates", request.candidates.len())?;
    for id in &request.candidates {
        check_id(&state, "candidates[]", id)?;
    }
    let levels = state.catalog().semantic_id_levels;
    let store = state.store();
    let view = store.view();

    let interests = view.user_interests(&request.user_id)?;
    let wanted = state.config.serve.recent_positives;
    let mut distinct = HashSet::default();
    let positives = view.newest_positives(&request.user_id, |p| {
        distinct.insert(p.item_id.clone());
        distinct.len() < wanted
    })?;
    let recent_ids = recent_distinct(&positives, wanted);
    let recent: Vec<Arc<MatchItem>> = match_items(&state, &view, &recent_ids)?
        .into_iter()
        // A positive without an embedding (not embedded yet) has nothing to compare.
        .flatten()
        .collect();
    let ids: Vec<&str> = request.candidates.iter().map(String::as_str).collect();
    let candidates = match_items(&state, &view, &ids)?;
    drop(view);

    let user_found = interests.is_some() || !positives.is_empty();
    let has_interests = interests.is_some();
    let (interest_mean, clusters) = match interests {
        Some(u) => (
            Some(u.mean),
            u.clusters
                .into_iter()
                .map(|c| (c.centroid, c.weight))
                .collect(),
        ),
        None => (None, Vec::new()),
    };
    let user = UserSide {
        interest_mean,
        clusters,
        recent,
        query_len: state.config.jobs.seq2item_query_len,
    };
    let computed = features::match_features(
        &user,
        &candidates,
        levels,
        state.config.serve.match_threshold,
    );
    Ok(Json(MatchResponse {
        user_found,
        has_interests,
        recent_positives_used: user.recent.len(),
        semantic_id_levels: levels,
        candidates: request
            .candidates
            .into_iter()
            .zip(candidates.iter().zip(computed))
            .map(|(item_id, (c, features))| CandidateBody {
                item_id,
                found: c.is_some(),
                features,
            })
            .collect(),
        user_id: request.user_id,
    }))
}
