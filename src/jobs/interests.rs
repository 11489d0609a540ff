//! User interests from the positive history and the item embeddings: a recency-weighted mean vector and up to
//! K interest clusters (PinnerSage-style: cluster the history, keep each cluster's centroid, its medoid item and
//! an importance weight that decays with time).
//!
//! Recency weight of a positive event: 0.5^(age / half_life), the age measured from the user's newest positive
//! (so a rerun on the same data gives the same result). Clusters: k-means (deterministic seed) over the distinct
//! positive items' vectors, k = min(K, items); a cluster's centroid is the weight-averaged, normalised vector
//! of its items, its medoid the member nearest to that centroid, its weight its share of the recency weight.

use std::collections::HashMap;

use super::semantic_ids::{SplitMix, kmeans};
use crate::config::Config;
use crate::embed::normalize;
use crate::error::{Error, Result};
use crate::store::{HistoryEntry, InterestCluster, Store, UserInterests, cf};

/// Interests of one user, or `None` when none of the positive items has an embedding of `model_version`.
pub fn compute(
    positives: &[HistoryEntry],
    vector_of: &dyn Fn(&str) -> Option<Vec<f32>>,
    max_clusters: usize,
    half_life_ms: f64,
    seed: u64,
) -> Option<UserInterests> {
    let newest = positives.iter().map(|e| e.ts).max()?;
    // Per distinct item: its vector and the summed recency weight of its positive events.
    let mut order: Vec<String> = Vec::new();
    let mut items: HashMap<String, (Vec<f32>, f64)> = HashMap::new();
    let mut used = 0u32;
    for e in positives {
        let w = 0.5f64.powf((newest - e.ts) as f64 / half_life_ms);
        if let Some(slot) = items.get_mut(&e.item_id) {
            slot.1 += w;
            used += 1;
        } else if let Some(v) = vector_of(&e.item_id) {
            order.push(e.item_id.clone());
            items.insert(e.item_id.clone(), (v, w));
            used += 1;
        }
    }
    if order.is_empty() {
        return None;
    }
    let dim = items[&order[0]].0.len();
    let weighted_mean = |ids: &[&String]| {
        let mut m = vec![0f32; dim];
        for id in ids {
            let (v, w) = &items[*id];
            for (x, y) in m.iter_mut().zip(v) {
                *x += (*w as f32) * y;
            }
        }
        normalize(&mut m);
        m
    };
    let all: Vec<&String> = order.iter().collect();
    let mean = weighted_mean(&all);
    let total: f64 = items.values().map(|(_, w)| w).sum();
    let vectors: Vec<Vec<f32>> = order.iter().map(|id| items[id].0.clone()).collect();
    let centroids = kmeans(
        &vectors,
        max_clusters.min(order.len()),
        25,
        &mut SplitMix(seed),
    );
    let mut clusters = Vec::new();
    for c in 0..centroids.len() {
        let members: Vec<&String> = order
            .iter()
            .zip(&vectors)
            .filter(|(_, v)| super::semantic_ids::nearest(&centroids, v) == c)
            .map(|(id, _)| id)
            .collect();
        if members.is_empty() {
            continue;
        }
        let centre = weighted_mean(&members);
        let medoid = members
            .iter()
            .max_by(|a, b| {
                crate::embed::cosine(&items[**a].0, &centre)
                    .total_cmp(&crate::embed::cosine(&items[**b].0, &centre))
                    .then_with(|| b.cmp(a))
            })
            .expect("non-empty");
        let weight: f64 = members.iter().map(|id| items[*id].1).sum();
        clusters.push(InterestCluster {
            centroid: centre,
            medoid: (*medoid).clone(),
            weight: (weight / total) as f32,
            size: members.len() as u32,
        });
    }
    clusters.sort_by(|a, b| b.weight.total_cmp(&a.weight).then(a.medoid.cmp(&b.medoid)));
    Some(UserInterests {
        model_version: String::new(),
        ts: newest,
        positives_used: used,
        mean,
        clusters,
    })
}

/// Item vectors read so far: (model version, vector), `None` for items without one.
type VectorCache = HashMap<String, Option<(String, Vec<f32>)>>;

/// One user's interests from their positives and the stored item embeddings (`None`: nothing embedded).
fn recompute(
    store: &Store,
    config: &Config,
    positives: &[HistoryEntry],
    cache: &mut VectorCache,
) -> Result<Option<UserInterests>> {
    for e in positives {
        if !cache.contains_key(&e.item_id) {
            let v = store
                .item_embedding(&e.item_id)?
                .map(|emb| (emb.model_version, emb.vector));
            cache.insert(e.item_id.clone(), v);
        }
    }
    let lookup = |id: &str| cache.get(id).cloned().flatten().map(|(_, v)| v);
    let Some(mut interests) = compute(
        positives,
        &lookup,
        config.jobs.interests_max_clusters,
        config.jobs.interests_half_life_days * 86_400_000.0,
        config.jobs.semantic_id_seed,
    ) else {
        return Ok(None);
    };
    interests.model_version = positives
        .iter()
        .find_map(|e| cache.get(&e.item_id).cloned().flatten().map(|(m, _)| m))
        .unwrap_or_default();
    Ok(Some(interests))
}

/// Recomputes every user's interests from their stored positives and the stored item embeddings. The stream's
/// pending marks are left alone: a mark set while this job runs must survive its commit (the worker clears
/// marks itself, recomputing a user once more at worst).
pub fn run(store: &Store, config: &Config) -> Result<(usize, usize)> {
    let users = store.list_users(cf::USER_POSITIVES, usize::MAX)?;
    let mut cache = VectorCache::new();
    let mut batch = store.batch();
    let mut computed = Vec::new();
    let mut seen = Vec::with_capacity(users.len());
    for user in &users {
        let positives = store.user_positives(user)?;
        seen.push(positives_version(&positives));
        if let Some(interests) = recompute(store, config, &positives, &mut cache)? {
            batch.put_user_interests(user, &interests)?;
            computed.push((user.as_str(), interests));
        }
    }
    batch.commit()?;
    // Positives that arrived while the job ran (the worker runs it beside ingest) may have been overwritten
    // by this commit: such users are marked for the stream to recompute.
    let mut recheck = store.batch();
    for (user, before) in users.iter().zip(&seen) {
        if positives_version(&store.user_positives(user)?) != *before {
            recheck.put_interests_pending(user)?;
        }
    }
    recheck.commit()?;
    export(config, &computed)?;
    Ok((users.len(), computed.len()))
}

/// What identifies a user's positives list: its length and newest entry (the list is capped, oldest dropped).
fn positives_version(list: &[HistoryEntry]) -> (usize, Option<(i64, String)>) {
    (list.len(), list.last().map(|e| (e.ts, e.item_id.clone())))
}

/// Parquet copies: `interests/` (user_id, model_version, ts, positives_used, mean) and `interest_clusters/`
/// (user_id, rank by weight, weight, size, medoid, centroid).
fn export(config: &Config, computed: &[(&str, UserInterests)]) -> Result<()> {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Float32Array, Int64Array, RecordBatch, StringArray, UInt32Array};

    let users = RecordBatch::try_from_iter([
        (
            "user_id",
            Arc::new(StringArray::from_iter_values(
                computed.iter().map(|(u, _)| *u),
            )) as ArrayRef,
        ),
        (
            "model_version",
            Arc::new(StringArray::from_iter_values(
                computed.iter().map(|(_, i)| i.model_version.as_str()),
            )),
        ),
        (
            "ts",
            Arc::new(Int64Array::from_iter_values(
                computed.iter().map(|(_, i)| i.ts),
            )),
        ),
        (
            "positives_used",
            Arc::new(UInt32Array::from_iter_values(
                computed.iter().map(|(_, i)| i.positives_used),
            )),
        ),
        (
            "mean",
            Arc::new(super::f32_lists(
                computed.iter().map(|(_, i)| i.mean.as_slice()),
            )),
        ),
    ])
    .map_err(|e| Error::Internal(format!("building the interests batch: {e}")))?;
    let rows: Vec<(&str, u32, &InterestCluster)> = computed
        .iter()
        .flat_map(|(u, i)| {
            i.clusters
                .iter()
                .enumerate()
                .map(move |(r, c)| (*u, r as u32, c))
        })
        .collect();
    let clusters = RecordBatch::try_from_iter([
        (
            "user_id",
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))) as ArrayRef,
        ),
        (
            "rank",
            Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.1))),
        ),
        (
            "weight",
            Arc::new(Float32Array::from_iter_values(
                rows.iter().map(|r| r.2.weight),
            )),
        ),
        (
            "size",
            Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.2.size))),
        ),
        (
            "medoid",
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.2.medoid.as_str()),
            )),
        ),
        (
            "centroid",
            Arc::new(super::f32_lists(
                rows.iter().map(|r| r.2.centroid.as_slice()),
            )),
        ),
    ])
    .map_err(|e| Error::Internal(format!("building the interest clusters batch: {e}")))?;
    super::write_rows(&config.jobs.output_dir, "interests", &users)?;
    super::write_rows(&config.jobs.output_dir, "interest_clusters", &clusters)?;
    Ok(())
}

/// The stream's share: recomputes up to `limit` users whose positives changed since their interests were
/// computed (ingest marks them in the same batch as the positives), so interests stay current between job
/// runs. Returns how many users were updated.
pub fn update_pending(store: &Store, config: &Config, limit: usize) -> Result<usize> {
    let users = store.ids(cf::INTERESTS_PENDING, limit)?;
    if users.is_empty() {
        return Ok(0);
    }
    let mut cache = VectorCache::new();
    let mut batch = store.batch();
    for user in &users {
        let positives = store.user_positives(user)?;
        if let Some(interests) = recompute(store, config, &positives, &mut cache)? {
            batch.put_user_interests(user, &interests)?;
        }
        batch.delete_interests_pending(user)?;
    }
    batch.commit()?;
    Ok(users.len())
}
