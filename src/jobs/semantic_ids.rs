//! Semantic IDs: residual k-means over the item embeddings (the paper's discretised embeddings, used in recall,
//! ranking and de-duplication). Level 1 clusters the vectors, level 2 clusters what level 1 left over, and so
//! on; an item's code path is its centroid index at every level, coarse to fine.
//!
//! Deterministic given the seed (k-means++ seeding from a splitmix64 stream, then Lloyd iterations). Codebooks
//! and codes are stored with the model name and version they were trained on; the embed stage gives new items
//! codes from the stored codebooks (`assign`) as it embeds them.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::store::{Codebooks, Store};

/// (model name, model version) of a set of embeddings.
type ModelKey = (String, String);

/// What a training run produced.
#[derive(Debug, Clone, PartialEq)]
pub struct SemanticIdReport {
    pub items: usize,
    pub levels: Vec<usize>,
    /// Mean squared residual left after each level (falls level by level).
    pub residual_mse: Vec<f64>,
}

/// Trains codebooks on every stored embedding of the most common model version, stores them and every item's
/// code path in one batch.
pub fn run(store: &Store, config: &Config) -> Result<SemanticIdReport> {
    let mut by_model: std::collections::BTreeMap<ModelKey, Vec<(String, Vec<f32>)>> =
        Default::default();
    store.for_each_item_embedding(|e| {
        by_model
            .entry((e.model, e.model_version))
            .or_default()
            .push((e.item_id, e.vector));
        Ok(true)
    })?;
    let Some(((model, model_version), items)) = by_model.into_iter().max_by_key(|(_, v)| v.len())
    else {
        return Err(Error::invalid(
            "semantic ids",
            "no item embeddings in the store yet: embed items first (`sailstream embed`)",
        ));
    };
    let vectors: Vec<Vec<f32>> = items.iter().map(|(_, v)| v.clone()).collect();
    let (levels, mse) = train(
        &vectors,
        &config.jobs.semantic_id_codebooks,
        config.jobs.semantic_id_iterations,
        config.jobs.semantic_id_seed,
    );
    let codebooks = Codebooks {
        model,
        model_version,
        levels,
    };
    let mut batch = store.batch();
    let mut codes = Vec::with_capacity(items.len());
    for (id, v) in &items {
        let path = assign(&codebooks, v);
        batch.put_semantic_ids(id, &codebooks.model_version, &path)?;
        codes.push(path);
    }
    batch.put_codebooks(&codebooks)?;
    batch.commit()?;
    export(config, &codebooks, &items, &codes)?;
    Ok(SemanticIdReport {
        items: items.len(),
        levels: codebooks.levels.iter().map(|l| l.len()).collect(),
        residual_mse: mse,
    })
}

/// Parquet copies of what the store now holds: `semantic_ids/` (item_id, model_version, codes coarse to fine)
/// and `semantic_id_codebooks/` (level, code, centroid).
fn export(
    config: &Config,
    codebooks: &Codebooks,
    items: &[(String, Vec<f32>)],
    codes: &[Vec<u32>],
) -> Result<()> {
    use std::sync::Arc;

    use arrow::array::{ListBuilder, RecordBatch, StringArray, UInt32Array, UInt32Builder};

    let mut lists = ListBuilder::new(UInt32Builder::new());
    for c in codes {
        lists.values().append_slice(c);
        lists.append(true);
    }
    let ids = RecordBatch::try_from_iter([
        (
            "item_id",
            Arc::new(StringArray::from_iter_values(
                items.iter().map(|(id, _)| id.as_str()),
            )) as arrow::array::ArrayRef,
        ),
        (
            "model_version",
            Arc::new(StringArray::from(vec![
                codebooks.model_version.as_str();
                items.len()
            ])),
        ),
        ("codes", Arc::new(lists.finish())),
    ])
    .map_err(|e| Error::Internal(format!("building the semantic ids batch: {e}")))?;
    let (mut level, mut code, mut centroids) = (Vec::new(), Vec::new(), Vec::new());
    for (l, cents) in codebooks.levels.iter().enumerate() {
        for (c, v) in cents.iter().enumerate() {
            level.push(l as u32);
            code.push(c as u32);
            centroids.push(v.as_slice());
        }
    }
    let books = RecordBatch::try_from_iter([
        (
            "level",
            Arc::new(UInt32Array::from(level)) as arrow::array::ArrayRef,
        ),
        ("code", Arc::new(UInt32Array::from(code))),
        (
            "centroid",
            Arc::new(super::f32_lists(centroids.into_iter())),
        ),
    ])
    .map_err(|e| Error::Internal(format!("building the codebooks batch: {e}")))?;
    super::write_rows(&config.jobs.output_dir, "semantic_ids", &ids)?;
    super::write_rows(&config.jobs.output_dir, "semantic_id_codebooks", &books)?;
    Ok(())
}

/// Residual k-means: per level, the centroids (k of them, or fewer when there are fewer distinct points).
pub fn train(
    vectors: &[Vec<f32>],
    sizes: &[usize],
    iterations: usize,
    seed: u64,
) -> (Vec<Vec<Vec<f32>>>, Vec<f64>) {
    let mut residual: Vec<Vec<f32>> = vectors.to_vec();
    let mut rng = SplitMix(seed);
    let mut levels = Vec::new();
    let mut mse = Vec::new();
    for &k in sizes {
        let centroids = kmeans(&residual, k, iterations, &mut rng);
        let mut total = 0f64;
        for r in residual.iter_mut() {
            let c = &centroids[nearest(&centroids, r)];
            for (x, y) in r.iter_mut().zip(c) {
                *x -= y;
            }
            total += r.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>();
        }
        mse.push(total / residual.len().max(1) as f64);
        levels.push(centroids);
    }
    (levels, mse)
}

/// The code path of one vector under stored codebooks.
pub fn assign(codebooks: &Codebooks, vector: &[f32]) -> Vec<u32> {
    let mut r = vector.to_vec();
    let mut codes = Vec::with_capacity(codebooks.levels.len());
    for centroids in &codebooks.levels {
        if centroids.is_empty() || centroids[0].len() != r.len() {
            break;
        }
        let i = nearest(centroids, &r);
        for (x, y) in r.iter_mut().zip(&centroids[i]) {
            *x -= y;
        }
        codes.push(i as u32);
    }
    codes
}

fn distance2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Index of the nearest centroid (the lowest index on ties, so results are deterministic).
pub fn nearest(centroids: &[Vec<f32>], v: &[f32]) -> usize {
    let mut best = (0, f32::INFINITY);
    for (i, c) in centroids.iter().enumerate() {
        let d = distance2(c, v);
        if d < best.1 {
            best = (i, d);
        }
    }
    best.0
}

pub(crate) fn kmeans(
    points: &[Vec<f32>],
    k: usize,
    iterations: usize,
    rng: &mut SplitMix,
) -> Vec<Vec<f32>> {
    if points.is_empty() || k == 0 {
        return Vec::new();
    }
    // k-means++ seeding: each next centroid drawn with probability proportional to its squared distance.
    let mut centroids = vec![points[rng.below(points.len())].clone()];
    let mut d2: Vec<f32> = points.iter().map(|p| distance2(p, &centroids[0])).collect();
    while centroids.len() < k {
        let total: f64 = d2.iter().map(|&d| f64::from(d)).sum();
        if total <= 0.0 {
            break; // fewer distinct points than k
        }
        let mut target = rng.unit() * total;
        let mut pick = points.len() - 1;
        for (i, &d) in d2.iter().enumerate() {
            target -= f64::from(d);
            if target <= 0.0 {
                pick = i;
                break;
            }
        }
        centroids.push(points[pick].clone());
        for (d, p) in d2.iter_mut().zip(points) {
            *d = d.min(distance2(p, centroids.last().expect("just pushed")));
        }
    }
    let dim = points[0].len();
    for _ in 0..iterations {
        let mut sums = vec![vec![0f64; dim]; centroids.len()];
        let mut counts = vec![0usize; centroids.len()];
        for p in points {
            let i = nearest(&centroids, p);
            counts[i] += 1;
            for (s, x) in sums[i].iter_mut().zip(p) {
                *s += f64::from(*x);
            }
        }
        let mut moved = false;
        for (i, c) in centroids.iter_mut().enumerate() {
            if counts[i] == 0 {
                continue; // an empty cluster keeps its centroid
            }
            for (x, s) in c.iter_mut().zip(&sums[i]) {
                let new = (*s / counts[i] as f64) as f32;
                moved |= new != *x;
                *x = new;
            }
        }
        if !moved {
            break;
        }
    }
    centroids
}

/// splitmix64: a small, well-mixed deterministic stream (no dependency, same codes on every machine).
pub(crate) struct SplitMix(pub(crate) u64);

impl SplitMix {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.unit() * n as f64) as usize % n.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn residual_levels_reduce_error_and_are_deterministic() {
        let mut rng = SplitMix(1);
        let points: Vec<Vec<f32>> = (0..300)
            .map(|i| {
                let centre = [[5.0, 0.0], [0.0, 5.0], [-5.0, -5.0]][i % 3];
                vec![
                    centre[0] + rng.unit() as f32 - 0.5,
                    centre[1] + rng.unit() as f32 - 0.5,
                ]
            })
            .collect();
        let (a, mse_a) = train(&points, &[3, 4], 30, 7);
        let (b, _) = train(&points, &[3, 4], 30, 7);
        assert_eq!(a, b);
        assert!(mse_a[1] < mse_a[0] && mse_a[0] < 0.2, "{mse_a:?}");
    }
}
