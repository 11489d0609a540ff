//! Match features: how one user relates to a batch of candidate items, for a ranker.
//!
//! Everything here is arithmetic on vectors already read from the store (see `lookup.rs` for the reads), so it
//! can be checked against a plain re-implementation. All cosines are between L2-normalised vectors; the user's
//! side is one matrix, the candidates another, and one matrix product (ndarray's blocked GEMM) gives every
//! candidate-to-user cosine at once.

use std::collections::{BTreeMap, HashMap};

use ndarray::ArrayView1;

use crate::embed::{cosine, mean_direction, unit_rows};

use super::api::MatchFeatures;

/// One of the user's recent distinct positive items, as the features see it.
#[derive(Debug, Clone, Default)]
pub struct RecentItem {
    pub vector: Vec<f32>,
    pub semantic_ids: Option<Vec<u32>>,
    /// ID-space name (`item2vec`, `gid`, ...) -> the item's ID2item teacher vector there.
    pub id_vectors: BTreeMap<String, Vec<f32>>,
}

/// The user's side of every feature.
#[derive(Debug, Clone, Default)]
pub struct UserSide {
    pub interest_mean: Option<Vec<f32>>,
    /// (centroid, weight) per interest cluster.
    pub clusters: Vec<(Vec<f32>, f32)>,
    /// Newest first.
    pub recent: Vec<RecentItem>,
    /// How many of the newest recent items make the seq2item query (as the seq2item job's query length).
    pub query_len: usize,
}

/// One candidate as read from the store.
#[derive(Debug, Clone, Default)]
pub struct CandidateSide {
    pub vector: Option<Vec<f32>>,
    pub semantic_ids: Option<Vec<u32>>,
    pub seq2item_teacher: Option<Vec<f32>>,
    pub id_vectors: BTreeMap<String, Vec<f32>>,
}

/// Features for every candidate, in order. `levels`: semantic-ID levels (length of `sid_prefix_overlap`);
/// `threshold`: the cosine `recent_count_above` counts from.
pub fn match_features(
    user: &UserSide,
    candidates: &[CandidateSide],
    levels: usize,
    threshold: f32,
) -> Vec<MatchFeatures> {
    // The user's rows share one dimension: the interest mean's, else the newest positive's. Rows of another
    // dimension (a different model version mid re-embed) are left out rather than compared across spaces.
    let dim = user
        .interest_mean
        .as_ref()
        .or(user.recent.first().map(|r| &r.vector))
        .map(Vec::len);
    let mean = user.interest_mean.as_ref().filter(|m| Some(m.len()) == dim);
    let clusters: Vec<&(Vec<f32>, f32)> = user
        .clusters
        .iter()
        .filter(|(c, _)| Some(c.len()) == dim)
        .collect();
    let recent: Vec<&RecentItem> = user
        .recent
        .iter()
        .filter(|r| Some(r.vector.len()) == dim)
        .collect();
    let query = mean_direction(
        recent
            .iter()
            .take(user.query_len.max(1))
            .map(|r| r.vector.as_slice()),
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
            let mut counts = HashMap::new();
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
        .chain(recent.iter().map(|r| r.vector.as_slice()))
        .collect();
    let cluster_offset = usize::from(mean.is_some());
    let recent_offset = cluster_offset + clusters.len();
    let user_len = user_rows.len();

    let comparable: Vec<usize> = candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.vector.as_ref().map(Vec::len) == dim && dim.is_some())
        .map(|(i, _)| i)
        .collect();
    let sims = match (dim, user_rows.is_empty() || comparable.is_empty()) {
        (Some(_), false) => {
            let user_matrix = unit_rows(&user_rows);
            let cand_rows: Vec<&[f32]> = comparable
                .iter()
                .map(|&i| candidates[i].vector.as_deref().unwrap_or_default())
                .collect();
            let cand_matrix = unit_rows(&cand_rows);
            Some(cand_matrix.dot(&user_matrix.t()))
        }
        _ => None,
    };

    let mut out = vec![MatchFeatures::default(); candidates.len()];
    for (features, candidate) in out.iter_mut().zip(candidates) {
        features.sid_prefix_overlap = vec![0.0; levels];
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
                features.seq2item_teacher_cos = cosine(teacher, q);
            }
        }
        for (space, vector) in &candidate.id_vectors {
            if let Some(user_mean) = id_means.get(space.as_str())
                && user_mean.len() == vector.len()
            {
                features
                    .id2item_teacher_cos
                    .insert(space.clone(), cosine(vector, user_mean));
            }
        }
    }
    if let Some(sims) = sims {
        for (row, &i) in comparable.iter().enumerate() {
            let s: ArrayView1<f32> = sims.row(row);
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
            let mut recent_sims: Vec<f32> = (recent_offset..user_len).map(|j| s[j]).collect();
            if !recent_sims.is_empty() {
                let n = recent_sims.len() as f32;
                f.recent_mean_cos = recent_sims.iter().sum::<f32>() / n;
                f.recent_count_above =
                    recent_sims.iter().filter(|&&x| x >= threshold).count() as u32;
                recent_sims.sort_by(|a, b| b.total_cmp(a));
                f.recent_max_cos = recent_sims[0];
                let top = &recent_sims[..recent_sims.len().min(3)];
                f.recent_top3_mean_cos = top.iter().sum::<f32>() / top.len() as f32;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(v: &[f32]) -> RecentItem {
        RecentItem {
            vector: v.to_vec(),
            ..RecentItem::default()
        }
    }

    #[test]
    fn hand_worked_two_dimensional_example() {
        // Recent positives at 0°, 90° and 180°; the candidate at 0°.
        let user = UserSide {
            interest_mean: Some(vec![1.0, 0.0]),
            clusters: vec![(vec![0.0, 1.0], 0.75), (vec![1.0, 0.0], 0.25)],
            recent: vec![item(&[2.0, 0.0]), item(&[0.0, 1.0]), item(&[-1.0, 0.0])],
            query_len: 2,
        };
        let candidate = CandidateSide {
            vector: Some(vec![3.0, 0.0]),
            semantic_ids: Some(vec![1, 2]),
            seq2item_teacher: Some(vec![1.0, 1.0]),
            id_vectors: BTreeMap::new(),
        };
        let f = &match_features(&user, &[candidate], 2, 0.5)[0];
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
        let mut a = item(&[1.0, 0.0]);
        a.semantic_ids = Some(vec![5, 1, 9]);
        let mut b = item(&[0.0, 1.0]);
        b.semantic_ids = Some(vec![5, 2, 9]);
        let c = item(&[1.0, 1.0]); // no codes: not in the denominator
        let user = UserSide {
            recent: vec![a, b, c],
            query_len: 10,
            ..UserSide::default()
        };
        let candidate = CandidateSide {
            vector: Some(vec![1.0, 0.0]),
            semantic_ids: Some(vec![5, 1, 3]),
            ..CandidateSide::default()
        };
        let f = &match_features(&user, &[candidate], 3, 0.5)[0];
        assert_eq!(f.sid_prefix_overlap, vec![1.0, 0.5, 0.0]);
    }

    #[test]
    fn missing_user_and_missing_candidate_get_defaults() {
        let f = match_features(
            &UserSide::default(),
            &[
                CandidateSide::default(),
                CandidateSide {
                    vector: Some(vec![1.0]),
                    ..CandidateSide::default()
                },
            ],
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
        let mut a = item(&[1.0, 0.0]);
        a.id_vectors.insert("item2vec".into(), vec![1.0, 0.0]);
        let mut b = item(&[1.0, 0.0]);
        b.id_vectors.insert("item2vec".into(), vec![0.0, 1.0]);
        let user = UserSide {
            recent: vec![a, b],
            query_len: 10,
            ..UserSide::default()
        };
        let mut ids = BTreeMap::new();
        ids.insert("item2vec".to_string(), vec![1.0, 0.0]);
        ids.insert("gid".to_string(), vec![1.0, 0.0]);
        let candidate = CandidateSide {
            vector: Some(vec![1.0, 0.0]),
            id_vectors: ids,
            ..CandidateSide::default()
        };
        let f = &match_features(&user, &[candidate], 0, 0.5)[0];
        // The user's item2vec mean points at 45°: cos = 1/sqrt(2). No recent item has a gid vector.
        assert_eq!(f.id2item_teacher_cos.len(), 1);
        assert!((f.id2item_teacher_cos["item2vec"] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
    }
}
