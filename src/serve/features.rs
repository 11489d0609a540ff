//! Match features: how one user relates to a batch of candidate items, for a ranker.
//!
//! Everything here is arithmetic on vectors already read from the store (see `lookup.rs` for the reads), so it
//! can be checked against a plain re-implementation. All cosines are between L2-normalised vectors; the user's
//! side is one set of rows, the candidates another, and one tiled kernel (`embed::dot_products`) gives every
//! candidate-to-user cosine at once, reading the cached items' rows in place.

use std::collections::BTreeMap;
use std::sync::Arc;

use foldhash::HashMap;

use crate::embed::{dot, dot_products, mean_direction, normalize, normalized};

use super::api::MatchFeatures;

/// What the features use of one item (a candidate or one of the user's recent positives), decoded from the
/// store once and shared between requests (see `lookup.rs` for the cache). Every vector is scaled to unit
/// length when the item is built (a zero vector stays zero), so each cosine is one dot product.
#[derive(Debug, Clone, Default)]
pub struct MatchItem {
    /// The stored embedding.
    unit: Vec<f32>,
    /// Codes assigned for the embedding's model version; None when there are none for it.
    semantic_ids: Option<Vec<u32>>,
    /// The item's seq2item teacher vector.
    seq2item_teacher: Option<Vec<f32>>,
    /// ID-space name (`item2vec`, `gid`, ...) -> the item's ID2item teacher vector there.
    id_vectors: BTreeMap<String, Vec<f32>>,
}

impl MatchItem {
    /// An item with only an embedding (`vector`, any length, normalised here).
    pub fn new(vector: &[f32]) -> MatchItem {
        MatchItem {
            unit: normalized(vector),
            ..MatchItem::default()
        }
    }

    /// Adds the item's semantic-ID codes (coarse to fine).
    pub fn with_semantic_ids(mut self, codes: Option<Vec<u32>>) -> MatchItem {
        self.semantic_ids = codes;
        self
    }

    /// Adds the seq2item teacher vector (normalised here).
    pub fn with_seq2item_teacher(mut self, vector: &[f32]) -> MatchItem {
        self.seq2item_teacher = Some(normalized(vector));
        self
    }

    /// Adds the ID2item teacher vector of one ID space (normalised here).
    pub fn with_id_vector(mut self, space: &str, vector: &[f32]) -> MatchItem {
        self.id_vectors
            .insert(space.to_string(), normalized(vector));
        self
    }

    /// Heap bytes held, for the cache's budget.
    pub fn footprint(&self) -> usize {
        let floats = self.unit.len()
            + self.seq2item_teacher.as_ref().map_or(0, Vec::len)
            + self.id_vectors.values().map(Vec::len).sum::<usize>();
        let keys: usize = self.id_vectors.keys().map(|k| k.len() + 48).sum();
        floats * 4 + self.semantic_ids.as_ref().map_or(0, |c| c.len() * 4) + keys
    }
}

/// The user's side of every feature.
#[derive(Debug, Clone, Default)]
pub struct UserSide {
    pub interest_mean: Option<Vec<f32>>,
    /// (centroid, weight) per interest cluster.
    pub clusters: Vec<(Vec<f32>, f32)>,
    /// The user's recent distinct positives that have an embedding, newest first.
    pub recent: Vec<Arc<MatchItem>>,
    /// How many of the newest recent items make the seq2item query (as the seq2item job's query length).
    pub query_len: usize,
}

/// Features for every candidate, in order (None: a candidate without an embedding, which gets the defaults). `levels`: semantic-ID levels (length of `sid_prefix_overlap`);
/// `threshold`: the cosine `recent_count_above` counts from.
pub fn match_features(
    user: &UserSide,
    candidates: &[Option<Arc<MatchItem>>],
    levels: usize,
    threshold: f32,
) -> Vec<MatchFeatures> {
    // The user's rows share one dimension: the interest mean's, else the newest positive's. Rows of another
    // dimension (a different model version mid re-embed) are left out rather than compared across spaces.
    let dim = user
        .interest_mean
        .as_ref()
        .or(user.recent.first().map(|r| &r.unit))
        .map(Vec::len);
    let mean = user.interest_mean.as_ref().filter(|m| Some(m.len()) == dim);
    let clusters: Vec<&(Vec<f32>, f32)> = user
        .clusters
        .iter()
        .filter(|(c, _)| Some(c.len()) == dim)
        .collect();
    let recent: Vec<&MatchItem> = user
        .recent
        .iter()
        .map(Arc::as_ref)
        .filter(|r| Some(r.unit.len()) == dim)
        .collect();
    let query = mean_direction(
        recent
            .iter()
            .take(user.query_len.max(1))
            .map(|r| r.unit.as_slice()),
    );
    let id_means: BTreeMap<&str, Vec<f32>> = {
        let spaces: std::collections::BTreeSet<&str> = recent
            .iter()
            .flat_map(|r| r.id_vectors.keys().map(String::as_str))
            .collect();
        spaces
            .into_iter()
            .filter_map(|space| {
                let mean = mean_direction(
                    recent
                        .iter()
                        .filter_map(|r| r.id_vectors.get(space).map(Vec::as_slice)),
                )?;
                Some((space, mean))
            })
            .collect()
    };
    let with_codes: Vec<&[u32]> = recent
        .iter()
        .filter_map(|r| r.semantic_ids.as_deref())
        .collect();
    // Per level l, how many recent items share each code prefix of length l: one lookup per candidate and
    // level instead of comparing with every recent item.
    let prefix_counts: Vec<HashMap<&[u32], usize>> = (1..=levels)
        .map(|level| {
            let mut counts = HashMap::default();
            for codes in with_codes.iter().filter(|c| c.len() >= level) {
                *counts.entry(&codes[..level]).or_default() += 1;
            }
            counts
        })
        .collect();

    // Row layout of the user matrix: [mean?] [clusters] [recent].
    let user_rows: Vec<&[f32]> = mean
        .into_iter()
        .map(Vec::as_slice)
        .chain(clusters.iter().map(|(c, _)| c.as_slice()))
        .collect();
    let cluster_offset = usize::from(mean.is_some());
    let recent_offset = cluster_offset + clusters.len();
    let user_len = recent_offset + recent.len();

    let comparable: Vec<(usize, &MatchItem)> = candidates
        .iter()
        .enumerate()
        .filter_map(|(i, c)| Some((i, c.as_deref()?)))
        .filter(|(_, c)| Some(c.unit.len()) == dim)
        .collect();
    // Row-major, `user_len` cosines per comparable candidate.
    let sims = match (dim, user_len == 0 || comparable.is_empty()) {
        // A zero-length vector (never written by the embed stage, but a store is input) compares as nothing.
        (Some(dim), false) if dim > 0 => {
            // The mean and the centroids are normalised here; items are unit length already and are read
            // where they lie.
            let mut normalised = Vec::with_capacity(user_rows.len() * dim);
            for row in &user_rows {
                let start = normalised.len();
                normalised.extend_from_slice(row);
                normalize(&mut normalised[start..]);
            }
            let user_matrix: Vec<&[f32]> = normalised
                .chunks_exact(dim)
                .chain(recent.iter().map(|r| r.unit.as_slice()))
                .collect();
            let candidate_rows: Vec<&[f32]> =
                comparable.iter().map(|(_, c)| c.unit.as_slice()).collect();
            Some(dot_products(&candidate_rows, &user_matrix, dim))
        }
        _ => None,
    };

    let mut out = vec![MatchFeatures::default(); candidates.len()];
    for (features, candidate) in out.iter_mut().zip(candidates) {
        features.sid_prefix_overlap = vec![0.0; levels];
        let Some(candidate) = candidate else { continue };
        if let Some(codes) = &candidate.semantic_ids {
            features.has_semantic_ids = true;
            if !with_codes.is_empty() {
                for level in 1..=levels.min(codes.len()) {
                    let same = prefix_counts[level - 1]
                        .get(&codes[..level])
                        .copied()
                        .unwrap_or(0);
                    features.sid_prefix_overlap[level - 1] = same as f32 / with_codes.len() as f32;
                }
            }
        }
        if let Some(teacher) = &candidate.seq2item_teacher {
            features.has_seq2item_teacher = true;
            if let Some(q) = query.as_ref().filter(|q| q.len() == teacher.len()) {
                features.seq2item_teacher_cos = dot(teacher, q);
            }
        }
        for (space, vector) in &candidate.id_vectors {
            if let Some(user_mean) = id_means.get(space.as_str())
                && user_mean.len() == vector.len()
            {
                features
                    .id2item_teacher_cos
                    .insert(space.clone(), dot(vector, user_mean));
            }
        }
    }
    if let Some(sims) = sims {
        for (s, &(i, _)) in sims.chunks_exact(user_len).zip(&comparable) {
            let f = &mut out[i];
            if mean.is_some() {
                f.interest_mean_cos = s[0];
            }
            f.interest_cluster_weighted_max = clusters
                .iter()
                .enumerate()
                .map(|(k, (_, w))| w * s[cluster_offset + k])
                .fold(None, |best: Option<f32>, x| {
                    Some(best.map_or(x, |b| b.max(x)))
                })
                .unwrap_or(0.0);
            let recent_sims = &s[recent_offset..];
            if !recent_sims.is_empty() {
                let n = recent_sims.len() as f32;
                f.recent_mean_cos = recent_sims.iter().sum::<f32>() / n;
                f.recent_count_above =
                    recent_sims.iter().filter(|&&x| x >= threshold).count() as u32;
                let top = top3(recent_sims.iter().copied());
                f.recent_max_cos = top[0];
                let top = &top[..recent_sims.len().min(3)];
                f.recent_top3_mean_cos = top.iter().sum::<f32>() / top.len() as f32;
            }
        }
    }
    out
}

/// The three largest values, largest first (negative infinity where there are fewer than three): a selection,
/// not a sort, since it runs once per candidate.
fn top3(values: impl Iterator<Item = f32>) -> [f32; 3] {
    let mut top = [f32::NEG_INFINITY; 3];
    for x in values {
        if x > top[2] {
            if x > top[1] {
                top[2] = top[1];
                if x > top[0] {
                    top[1] = top[0];
                    top[0] = x;
                } else {
                    top[1] = x;
                }
            } else {
                top[2] = x;
            }
        }
    }
    top
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(v: &[f32]) -> MatchItem {
        MatchItem::new(v)
    }

    fn shared(items: Vec<MatchItem>) -> Vec<Arc<MatchItem>> {
        items.into_iter().map(Arc::new).collect()
    }

    fn only(item: MatchItem) -> [Option<Arc<MatchItem>>; 1] {
        [Some(Arc::new(item))]
    }

    #[test]
    fn hand_worked_two_dimensional_example() {
        // Recent positives at 0°, 90° and 180°; the candidate at 0°.
        let user = UserSide {
            interest_mean: Some(vec![1.0, 0.0]),
            clusters: vec![(vec![0.0, 1.0], 0.75), (vec![1.0, 0.0], 0.25)],
            recent: shared(vec![
                item(&[2.0, 0.0]),
                item(&[0.0, 1.0]),
                item(&[-1.0, 0.0]),
            ]),
            query_len: 2,
        };
        let candidate = item(&[3.0, 0.0])
            .with_semantic_ids(Some(vec![1, 2]))
            .with_seq2item_teacher(&[1.0, 1.0]);
        let f = &match_features(&user, &only(candidate), 2, 0.5)[0];
        assert!((f.interest_mean_cos - 1.0).abs() < 1e-6);
        // max(0.75 * 0, 0.25 * 1)
        assert!((f.interest_cluster_weighted_max - 0.25).abs() < 1e-6);
        assert!((f.recent_max_cos - 1.0).abs() < 1e-6);
        assert!(f.recent_mean_cos.abs() < 1e-6);
        // top 3 of {1, 0, -1}
        assert!(f.recent_top3_mean_cos.abs() < 1e-6);
        assert_eq!(f.recent_count_above, 1);
        // The query is the two newest positives: direction 45°; the teacher is at 45° too.
        assert!((f.seq2item_teacher_cos - 1.0).abs() < 1e-6);
        // No recent positive has codes: overlap 0 at every level, but the candidate has codes.
        assert_eq!(f.sid_prefix_overlap, vec![0.0, 0.0]);
        assert!(f.has_semantic_ids);
    }

    #[test]
    fn prefix_overlap_counts_shared_code_prefixes() {
        let a = item(&[1.0, 0.0]).with_semantic_ids(Some(vec![5, 1, 9]));
        let b = item(&[0.0, 1.0]).with_semantic_ids(Some(vec![5, 2, 9]));
        let c = item(&[1.0, 1.0]); // no codes: not in the denominator
        let user = UserSide {
            recent: shared(vec![a, b, c]),
            query_len: 10,
            ..UserSide::default()
        };
        let candidate = item(&[1.0, 0.0]).with_semantic_ids(Some(vec![5, 1, 3]));
        let f = &match_features(&user, &only(candidate), 3, 0.5)[0];
        assert_eq!(f.sid_prefix_overlap, vec![1.0, 0.5, 0.0]);
    }

    #[test]
    fn top3_selects_like_a_descending_sort() {
        let cases: [&[f32]; 5] = [
            &[0.1],
            &[0.3, -0.2],
            &[0.5, 0.5, 0.1, 0.9],
            &[-1.0, -0.5, -0.75, -0.9, -0.1],
            &[0.2, 0.4, 0.6, 0.8, 0.7, 0.5, 0.3],
        ];
        for values in cases {
            let mut sorted = values.to_vec();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let top = top3(values.iter().copied());
            let n = values.len().min(3);
            assert_eq!(top[..n], sorted[..n], "{values:?}");
        }
    }

    #[test]
    fn zero_length_vectors_give_defaults_not_a_panic() {
        let user = UserSide {
            interest_mean: Some(Vec::new()),
            recent: shared(vec![item(&[])]),
            query_len: 1,
            ..UserSide::default()
        };
        let f = &match_features(&user, &only(item(&[])), 1, 0.5)[0];
        assert_eq!(f.recent_count_above, 0);
        assert_eq!(f.interest_mean_cos, 0.0);
    }

    #[test]
    fn missing_user_and_missing_candidate_get_defaults() {
        let f = match_features(
            &UserSide::default(),
            &[None, Some(Arc::new(item(&[1.0])))],
            3,
            0.5,
        );
        for one in &f {
            assert_eq!(one.recent_count_above, 0);
            assert_eq!(one.interest_mean_cos, 0.0);
            assert_eq!(one.sid_prefix_overlap, vec![0.0; 3]);
            assert!(!one.has_seq2item_teacher);
        }
    }

    #[test]
    fn id_space_similarity_uses_the_mean_of_the_recent_items_vectors() {
        let a = item(&[1.0, 0.0]).with_id_vector("item2vec", &[2.0, 0.0]);
        let b = item(&[1.0, 0.0]).with_id_vector("item2vec", &[0.0, 1.0]);
        let user = UserSide {
            recent: shared(vec![a, b]),
            query_len: 10,
            ..UserSide::default()
        };
        let candidate = item(&[1.0, 0.0])
            .with_id_vector("item2vec", &[3.0, 0.0])
            .with_id_vector("gid", &[1.0, 0.0]);
        let f = &match_features(&user, &only(candidate), 0, 0.5)[0];
        // The user's item2vec mean points at 45°: cos = 1/sqrt(2). No recent item has a gid vector.
        assert_eq!(f.id2item_teacher_cos.len(), 1);
        assert!((f.id2item_teacher_cos["item2vec"] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
    }
}
