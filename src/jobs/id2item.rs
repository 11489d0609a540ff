//! ID2item teacher targets: the recommender's ID embeddings of each item, which the content model learns to
//! predict through a projection (distillation), plus auxiliary i2i pairs from those spaces so the student keeps
//! its retrieval ability.
//!
//! Spaces come from `sail.id_embeddings` (every `[id_spaces]` space, as ingested; a Parquet dump replays into
//! the same topic's state). When none were supplied, one space, `item2vec`, is learned from the positive
//! histories: skip-gram with negative sampling over each user's positive items in time order. Training is
//! single-threaded with a splitmix64 stream, so the same log, settings and seed give the same vectors.
//!
//! Outputs: per item and space a teacher target (kind `id:<space>`; supplied vectors as given, learned ones
//! normalised) in the store; Parquet `id2item/pairs` (item, space, vector) and `id2item/i2i` (each item's
//! `id2item_neighbours` nearest items per space by cosine, exact search).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array, RecordBatch, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};
use rayon::prelude::*;

use super::semantic_ids::SplitMix;
use super::seq2item::positive_histories;
use super::{JobContext, JobReport};
use crate::config::Config;
use crate::embed::normalize;
use crate::error::{Error, Result};
use crate::store::{Store, TeacherTarget};

/// The space learned from the log when no ID embeddings were supplied.
pub const LEARNED_SPACE: &str = "item2vec";

/// Skip-gram settings, from `[jobs] id2item_*`.
#[derive(Debug, Clone, PartialEq)]
pub struct Item2VecParams {
    pub dim: usize,
    pub window: usize,
    pub negatives: usize,
    pub epochs: usize,
    pub learning_rate: f32,
    pub min_count: u32,
    pub seed: u64,
}

impl Item2VecParams {
    pub fn from_config(config: &Config) -> Item2VecParams {
        let j = &config.jobs;
        Item2VecParams {
            dim: j.id2item_dim,
            window: j.id2item_window,
            negatives: j.id2item_negatives,
            epochs: j.id2item_epochs,
            learning_rate: j.id2item_learning_rate,
            min_count: j.id2item_min_count,
            seed: j.id2item_seed,
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "item2vec dim={} window={} negatives={} epochs={} lr={} min_count={} seed={}",
            self.dim,
            self.window,
            self.negatives,
            self.epochs,
            self.learning_rate,
            self.min_count,
            self.seed
        )
    }
}

/// Learns one normalised vector per item seen at least `min_count` times, sorted by item id.
pub fn item2vec(sequences: &[Vec<String>], p: &Item2VecParams) -> Vec<(String, Vec<f32>)> {
    let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
    for seq in sequences {
        for id in seq {
            *counts.entry(id.as_str()).or_default() += 1;
        }
    }
    counts.retain(|_, c| *c >= p.min_count);
    let vocab: Vec<&str> = counts.keys().copied().collect();
    if vocab.is_empty() {
        return Vec::new();
    }
    let index: HashMap<&str, usize> = vocab.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let sequences: Vec<Vec<usize>> = sequences
        .iter()
        .map(|s| {
            s.iter()
                .filter_map(|id| index.get(id.as_str()).copied())
                .collect()
        })
        .collect();
    // Negatives come from the unigram distribution raised to 3/4 (word2vec's choice).
    let mut cumulative = Vec::with_capacity(vocab.len());
    let mut acc = 0f64;
    for id in &vocab {
        acc += f64::from(counts[id]).powf(0.75);
        cumulative.push(acc);
    }
    let dim = p.dim;
    let mut rng = SplitMix(p.seed);
    let mut w_in: Vec<f32> = (0..vocab.len() * dim)
        .map(|_| ((rng.unit() - 0.5) / dim as f64) as f32)
        .collect();
    let mut w_out = vec![0f32; vocab.len() * dim];
    let tokens: usize = sequences.iter().map(Vec::len).sum();
    let total_steps = (p.epochs * tokens).max(1) as f32;
    let mut step = 0usize;
    let mut grad = vec![0f32; dim];
    for _ in 0..p.epochs {
        for seq in &sequences {
            for (i, &center) in seq.iter().enumerate() {
                let lr = p.learning_rate * (1.0 - step as f32 / total_steps).max(1e-4);
                step += 1;
                let lo = i.saturating_sub(p.window);
                let hi = (i + p.window + 1).min(seq.len());
                for (j, &context) in seq.iter().enumerate().take(hi).skip(lo) {
                    if j == i || context == center {
                        continue;
                    }
                    grad.iter_mut().for_each(|g| *g = 0.0);
                    let input = center * dim..(center + 1) * dim;
                    for n in 0..=p.negatives {
                        let (target, label) = if n == 0 {
                            (context, 1.0)
                        } else {
                            let r = rng.unit() * acc;
                            let t = cumulative.partition_point(|&c| c <= r).min(vocab.len() - 1);
                            if t == context {
                                continue;
                            }
                            (t, 0.0)
                        };
                        let out = target * dim..(target + 1) * dim;
                        let dot: f32 = w_in[input.clone()]
                            .iter()
                            .zip(&w_out[out.clone()])
                            .map(|(a, b)| a * b)
                            .sum();
                        let g = (label - sigmoid(dot)) * lr;
                        for ((gr, o), x) in grad
                            .iter_mut()
                            .zip(&mut w_out[out])
                            .zip(&w_in[input.clone()])
                        {
                            *gr += g * *o;
                            *o += g * x;
                        }
                    }
                    for (x, gr) in w_in[input].iter_mut().zip(&grad) {
                        *x += gr;
                    }
                }
            }
        }
    }
    vocab
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let mut v = w_in[i * dim..(i + 1) * dim].to_vec();
            normalize(&mut v);
            (id.to_string(), v)
        })
        .collect()
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x.clamp(-30.0, 30.0)).exp())
}

/// Each item's `k` nearest other items by cosine: (item, neighbour, rank from 1, cosine).
pub fn neighbours(items: &[(String, Vec<f32>)], k: usize) -> Vec<(usize, usize, u32, f32)> {
    let unit: Vec<Vec<f32>> = items
        .iter()
        .map(|(_, v)| {
            let mut u = v.clone();
            normalize(&mut u);
            u
        })
        .collect();
    (0..items.len())
        .into_par_iter()
        .flat_map_iter(|i| {
            let mut scored: Vec<(usize, f32)> = (0..unit.len())
                .filter(|&j| j != i)
                .map(|j| (j, unit[i].iter().zip(&unit[j]).map(|(a, b)| a * b).sum()))
                .collect();
            let k = k.min(scored.len());
            if k == 0 {
                return Vec::new();
            }
            let by_score =
                |a: &(usize, f32), b: &(usize, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
            scored.select_nth_unstable_by(k - 1, by_score);
            scored.truncate(k);
            scored.sort_by(by_score);
            scored
                .into_iter()
                .enumerate()
                .map(|(r, (j, c))| (i, j, r as u32 + 1, c))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Per ID space: (where the vectors came from, (item, vector) rows).
type Spaces = BTreeMap<String, (String, Vec<(String, Vec<f32>)>)>;

/// What a run produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Id2ItemReport {
    /// (space, items, where the vectors came from).
    pub spaces: Vec<(String, usize, String)>,
    pub pairs: JobReport,
    pub i2i: JobReport,
}

/// Runs id2item: teacher vectors to the store, training pairs and i2i pairs to Parquet.
pub async fn run(ctx: &JobContext, store: &Store, config: &Config) -> Result<Id2ItemReport> {
    let mut spaces = Spaces::new();
    store.for_each_id_embedding(|item, space, vector| {
        spaces
            .entry(space.to_string())
            .or_insert_with(|| ("sail.id_embeddings".to_string(), Vec::new()))
            .1
            .push((item.to_string(), vector));
        Ok(true)
    })?;
    if spaces.is_empty() {
        let params = Item2VecParams::from_config(config);
        let sequences: Vec<Vec<String>> = positive_histories(ctx, config)
            .await?
            .into_iter()
            .map(|(_, h)| h.into_iter().map(|p| p.item_id).collect())
            .collect();
        let learned = item2vec(&sequences, &params);
        if learned.is_empty() {
            return Err(Error::invalid(
                "id2item",
                "no ID embeddings were supplied and the log has no positive histories to learn item2vec from",
            ));
        }
        spaces.insert(LEARNED_SPACE.to_string(), (params.describe(), learned));
    }
    let now = crate::ingest::now_ms();
    let mut batch = store.batch();
    // Every ID-space target this run does not produce again goes (a vanished space, an item no longer in it).
    let produced: std::collections::HashSet<(String, &str)> = spaces
        .iter()
        .flat_map(|(space, (_, items))| {
            items
                .iter()
                .map(move |(item, _)| (format!("id:{space}"), item.as_str()))
        })
        .collect();
    super::drop_stale_teachers(
        store,
        &mut batch,
        |kind| kind.starts_with("id:"),
        |kind, item| produced.contains(&(kind.to_string(), item)),
    )?;
    for (space, (source, items)) in &spaces {
        let kind = format!("id:{space}");
        for (item, vector) in items {
            batch.put_teacher_target(
                item,
                &TeacherTarget {
                    kind: kind.clone(),
                    source: source.clone(),
                    samples: 1,
                    ts: now,
                    vector: vector.clone(),
                },
            )?;
        }
    }
    batch.commit()?;

    let out = &config.jobs.output_dir;
    let pairs = super::write_rows(out, "id2item/pairs", &pairs_batch(&spaces)?)?;
    let neighbours = i2i_batch(&spaces, config.jobs.id2item_neighbours)?;
    let i2i = super::write_rows(out, "id2item/i2i", &neighbours)?;
    Ok(Id2ItemReport {
        spaces: spaces
            .iter()
            .map(|(s, (source, items))| (s.clone(), items.len(), source.clone()))
            .collect(),
        pairs,
        i2i,
    })
}

fn pairs_batch(spaces: &Spaces) -> Result<RecordBatch> {
    let rows = || {
        spaces
            .iter()
            .flat_map(|(space, (_, rows))| rows.iter().map(move |r| (space, r)))
    };
    let items: Vec<&str> = rows().map(|(_, (item, _))| item.as_str()).collect();
    let names: Vec<&str> = rows().map(|(space, _)| space.as_str()).collect();
    let vectors = super::f32_lists(rows().map(|(_, (_, v))| v.as_slice()));
    let schema = Schema::new(vec![
        Field::new("item_id", DataType::Utf8, false),
        Field::new("space", DataType::Utf8, false),
        Field::new(
            "vector",
            DataType::List(Arc::new(Field::new("item", DataType::Float32, true))),
            false,
        ),
    ]);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(items)),
        Arc::new(StringArray::from(names)),
        Arc::new(vectors),
    ];
    RecordBatch::try_new(Arc::new(schema), columns)
        .map_err(|e| Error::Internal(format!("building the id2item pairs batch: {e}")))
}

fn i2i_batch(spaces: &Spaces, k: usize) -> Result<RecordBatch> {
    let (mut space_col, mut a, mut b, mut rank, mut cos) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (space, (_, rows)) in spaces {
        for (i, j, r, c) in neighbours(rows, k) {
            space_col.push(space.as_str());
            a.push(rows[i].0.as_str());
            b.push(rows[j].0.as_str());
            rank.push(r);
            cos.push(c);
        }
    }
    let schema = Schema::new(vec![
        Field::new("space", DataType::Utf8, false),
        Field::new("item_id", DataType::Utf8, false),
        Field::new("neighbour", DataType::Utf8, false),
        Field::new("rank", DataType::UInt32, false),
        Field::new("cosine", DataType::Float32, false),
    ]);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(space_col)),
        Arc::new(StringArray::from(a)),
        Arc::new(StringArray::from(b)),
        Arc::new(UInt32Array::from(rank)),
        Arc::new(Float32Array::from(cos)),
    ];
    RecordBatch::try_new(Arc::new(schema), columns)
        .map_err(|e| Error::Internal(format!("building the id2item i2i batch: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Item2VecParams {
        Item2VecParams {
            dim: 16,
            window: 2,
            negatives: 3,
            epochs: 30,
            learning_rate: 0.05,
            min_count: 1,
            seed: 7,
        }
    }

    #[test]
    fn item2vec_is_deterministic_and_separates_communities() {
        // Two communities that never meet: items a* are consumed together, items b* together.
        let mut seqs = Vec::new();
        for u in 0..40 {
            let group = if u % 2 == 0 { "a" } else { "b" };
            let seq: Vec<String> = (0..6).map(|i| format!("{group}{}", (u + i) % 6)).collect();
            seqs.push(seq);
        }
        let v1 = item2vec(&seqs, &params());
        assert_eq!(v1, item2vec(&seqs, &params()), "same seed, same vectors");
        assert_ne!(
            v1,
            item2vec(
                &seqs,
                &Item2VecParams {
                    seed: 8,
                    ..params()
                }
            )
        );
        let get = |id: &str| &v1.iter().find(|(i, _)| i == id).unwrap().1;
        let cos = |a: &str, b: &str| crate::embed::cosine(get(a), get(b));
        let within = (cos("a0", "a1") + cos("b2", "b3")) / 2.0;
        let across = (cos("a0", "b1") + cos("a2", "b3")) / 2.0;
        assert!(within > across + 0.3, "within {within} vs across {across}");
    }

    #[test]
    fn neighbours_are_exact() {
        let items = vec![
            ("x".to_string(), vec![1.0, 0.0]),
            ("y".to_string(), vec![0.9, 0.1]),
            ("z".to_string(), vec![0.0, 1.0]),
        ];
        let n = neighbours(&items, 1);
        assert_eq!(n.len(), 3);
        assert_eq!((n[0].0, n[0].1, n[0].2), (0, 1, 1));
        assert_eq!((n[2].0, n[2].1), (2, 1));
    }
}
