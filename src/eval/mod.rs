//! `sailstream eval`: the paper's offline metrics for the item embeddings in a store, from the store and the
//! jobs' Parquet exports (sail-paper.md, "Evaluation metrics the paper uses").
//!
//! Every nearest-neighbour search is exact: queries are scored against the whole catalogue with one matrix
//! product per block of queries, and a target's rank is the number of items scoring above it. That is what a
//! catalogue of up to a few hundred thousand items allows on a CPU; for larger ones the number of queries is
//! capped (`eval.max_queries`, drawn with a fixed seed), never the catalogue, so Recall stays exact per query.
//!
//! | metric | queries | hit |
//! |---|---|---|
//! | Copair-i2i Recall@{1,10,25,50,100} | both items of each held-out co-consumption pair (`copairs/`, `jobs.copairs_holdout_percent`) | the partner ranks within k (the query item left out) |
//! | Gid-i2i Recall@k | each item's ID-space neighbours (`id2item/i2i/`, per space) | the ID neighbour ranks within k by content |
//! | seq2item vanilla Recall@{1,10,25} | per user: the newest of the last `eval.vanilla_history` viewed items is the target, `eval.vanilla_query` random others (seeded) the query | the target ranks within k against the mean-pooled query (query items left out) |
//! | seq2item filtered Recall@{1,10,25} | the seq2item job's samples of strategy `eval.filtered_strategy` (behaviour-consistent with the target, chosen without the model under test) | as vanilla |
//! | separability | co-consumption pairs vs random pairs | mean cosines, their gap, AUC with the cosine as the probability |
//! | NMI | filtered samples | level-1 semantic-ID cluster of the query representation vs of the target |
//! | mutual top-1 | items with a seq2item teacher vector | item i's nearest teacher is i's and teacher i's nearest item is i |
//! | Kendall tau, top-10 overlap (`--compare`) | sampled items in both stores | tau of the two models' cosines to a fixed sample of items; overlap of the two top-10 lists |

pub mod metrics;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use ndarray::{Array2, s};
use serde::Serialize;

use crate::config::Config;
use crate::embed::{mean_direction, unit_rows};
use crate::error::{Error, Result};
use crate::jobs::fnv1a;
use crate::store::{Store, cf};

pub const I2I_KS: [usize; 5] = [1, 10, 25, 50, 100];
pub const SEQ_KS: [usize; 3] = [1, 10, 25];

#[derive(Debug, Clone, Serialize)]
pub struct Recall {
    pub queries: usize,
    /// k -> Recall@k
    pub recall: BTreeMap<usize, f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Separability {
    pub pairs: usize,
    pub positive_mean: f64,
    pub negative_mean: f64,
    pub gap: f64,
    pub auc: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub other_store: PathBuf,
    pub other_model: String,
    pub queries: usize,
    pub kendall_tau: f64,
    pub top10_overlap: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub store: PathBuf,
    pub model: String,
    pub items: usize,
    pub search: String,
    pub copair_i2i: Option<Recall>,
    /// Which co-consumption pairs Copair-i2i and separability use.
    pub copair_pairs: String,
    /// Per ID space.
    pub gid_i2i: BTreeMap<String, Recall>,
    pub seq2item_vanilla: Option<Recall>,
    pub seq2item_filtered: Option<Recall>,
    pub separability: Option<Separability>,
    pub nmi: Option<f64>,
    pub mutual_top1: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compare: Option<Comparison>,
}

/// The catalogue: every embedded item of one store, normalised, in id order.
struct Catalogue {
    ids: Vec<String>,
    index: HashMap<String, usize>,
    vectors: Array2<f32>,
    model: String,
}

impl Catalogue {
    fn load(store: &Store) -> Result<Catalogue> {
        let mut ids = Vec::new();
        let mut raw: Vec<Vec<f32>> = Vec::new();
        let mut models: BTreeMap<String, usize> = BTreeMap::new();
        store.for_each_item_embedding(|e| {
            *models
                .entry(format!("{} {}", e.model, e.model_version))
                .or_default() += 1;
            ids.push(e.item_id);
            raw.push(e.vector);
            Ok(true)
        })?;
        if ids.is_empty() {
            return Err(Error::invalid(
                "store",
                format!(
                    "{} holds no item embeddings: run a replay, backfill or the worker first",
                    store.path().display()
                ),
            ));
        }
        let dim = raw[0].len();
        if let Some(bad) = raw.iter().position(|v| v.len() != dim) {
            return Err(Error::invalid(
                "store",
                format!(
                    "item {} has a {}-d vector, others {dim}-d: finish the re-embed (`sailstream embed --backfill`) before evaluating",
                    ids[bad],
                    raw[bad].len()
                ),
            ));
        }
        let refs: Vec<&[f32]> = raw.iter().map(Vec::as_slice).collect();
        let vectors = unit_rows(&refs);
        let index = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i))
            .collect();
        let model = models
            .iter()
            .map(|(m, n)| format!("{m} ({n} items)"))
            .collect::<Vec<_>>()
            .join(", ");
        Ok(Catalogue {
            ids,
            index,
            vectors,
            model,
        })
    }

    /// Ranks of each (query vector, target, excluded) against the whole catalogue, in blocks of queries.
    fn ranks(&self, queries: &[(Vec<f32>, usize, Vec<usize>)]) -> Vec<usize> {
        let dim = self.vectors.ncols();
        let mut out = Vec::with_capacity(queries.len());
        for block in queries.chunks(256) {
            let q = Array2::from_shape_fn((block.len(), dim), |(r, c)| block[r].0[c]);
            let scores = metrics::scores(q.view(), self.vectors.view());
            for (row, (_, target, excluded)) in block.iter().enumerate() {
                let s = scores.row(row);
                out.push(metrics::rank_of(
                    s.as_slice().expect("row-major"),
                    *target,
                    excluded,
                ));
            }
        }
        out
    }

    fn row(&self, i: usize) -> Vec<f32> {
        self.vectors.row(i).to_vec()
    }

    /// Normalised mean of the normalised vectors of `items`.
    fn pooled(&self, items: &[usize]) -> Vec<f32> {
        mean_direction(
            items
                .iter()
                .map(|&i| self.vectors.row(i).to_slice().expect("rows are contiguous")),
        )
        .unwrap_or_else(|| vec![0.0; self.vectors.ncols()])
    }
}

/// A deterministic sample of at most `max` of `items`, keyed by a stable hash so reruns agree.
fn sample<T: Clone>(items: Vec<T>, max: usize, key: impl Fn(&T) -> u64) -> Vec<T> {
    if items.len() <= max {
        return items;
    }
    let mut keyed: Vec<(u64, T)> = items.into_iter().map(|t| (key(&t), t)).collect();
    keyed.sort_by_key(|(k, _)| *k);
    keyed.truncate(max);
    keyed.into_iter().map(|(_, t)| t).collect()
}

fn recall(ranks: &[usize], ks: &[usize]) -> Option<Recall> {
    (!ranks.is_empty()).then(|| Recall {
        queries: ranks.len(),
        recall: metrics::recall_at(ranks, ks).into_iter().collect(),
    })
}

/// Every record batch of every Parquet file in `dir` (none when the folder is missing).
fn read_parquet(dir: &Path) -> Result<Vec<RecordBatch>> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let file = std::fs::File::open(&path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.build())
            .map_err(|e| Error::columnar(format!("reading {}", path.display()), e))?;
        for batch in reader {
            out.push(batch.map_err(|e| Error::columnar(format!("reading {}", path.display()), e))?);
        }
    }
    Ok(out)
}

fn strings(batch: &RecordBatch, name: &str) -> Result<Vec<String>> {
    let column = batch
        .column_by_name(name)
        .ok_or_else(|| Error::columnar("reading an export", format!("no column {name}")))?;
    let utf8 = arrow::compute::cast(column, &DataType::Utf8)
        .map_err(|e| Error::columnar(format!("column {name}"), e))?;
    Ok(utf8
        .as_string::<i32>()
        .iter()
        .map(|s| s.unwrap_or_default().to_string())
        .collect())
}

fn string_lists(batch: &RecordBatch, name: &str) -> Result<Vec<Vec<String>>> {
    let column = batch
        .column_by_name(name)
        .ok_or_else(|| Error::columnar("reading an export", format!("no column {name}")))?;
    let list = column
        .as_list_opt::<i32>()
        .ok_or_else(|| Error::columnar("reading an export", format!("{name} is not a list")))?;
    (0..list.len())
        .map(|i| {
            let values = arrow::compute::cast(&list.value(i), &DataType::Utf8)
                .map_err(|e| Error::columnar(format!("column {name}"), e))?;
            Ok(values
                .as_string::<i32>()
                .iter()
                .map(|s| s.unwrap_or_default().to_string())
                .collect())
        })
        .collect()
}

/// A stable hash of some strings under the eval seed: it orders the seeded samples.
fn seeded_hash(seed: u64, parts: &[&str]) -> u64 {
    let mut bytes = seed.to_le_bytes().to_vec();
    for p in parts {
        bytes.extend_from_slice(p.as_bytes());
        bytes.push(0);
    }
    fnv1a(&bytes)
}

/// Evaluates the store's embeddings. With `other`, evaluates that store the same way (against this store's
/// exports, so both use the same pairs and samples) and adds the comparison of the two models to the first
/// report; each store and its catalogue are read once.
pub fn run(
    config: &Config,
    store: &Store,
    other: Option<&Path>,
) -> Result<(Report, Option<Report>)> {
    let cat = Catalogue::load(store)?;
    let mut report = evaluate(config, store, &cat)?;
    let Some(path) = other else {
        return Ok((report, None));
    };
    let other_store = Store::open_read_only(path)?;
    let other_cat = Catalogue::load(&other_store)?;
    let other_report = evaluate(config, &other_store, &other_cat)?;
    report.compare = Some(compare(&cat, &other_cat, path, config)?);
    Ok((report, Some(other_report)))
}

/// Every metric of one store's catalogue (no comparison).
fn evaluate(config: &Config, store: &Store, cat: &Catalogue) -> Result<Report> {
    let e = &config.eval;
    let exports = &config.jobs.output_dir;
    let hash = |parts: &[&str]| seeded_hash(e.seed, parts);

    // Held-out co-consumption pairs (all of them when nothing is held out), both directions.
    let holdout = config.jobs.copairs_holdout_percent;
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    for batch in read_parquet(&exports.join("copairs"))? {
        for (a, b) in strings(&batch, "item_a")?
            .into_iter()
            .zip(strings(&batch, "item_b")?)
        {
            if holdout > 0 && !crate::jobs::copairs::held_out(&a, &b, holdout) {
                continue;
            }
            if let (Some(&a), Some(&b)) = (cat.index.get(&a), cat.index.get(&b)) {
                pairs.push((a, b));
                pairs.push((b, a));
            }
        }
    }
    let pairs = sample(pairs, e.max_queries, |(a, b)| {
        hash(&[&cat.ids[*a], &cat.ids[*b]])
    });
    let copair_queries: Vec<_> = pairs
        .iter()
        .map(|&(a, b)| (cat.row(a), b, vec![a]))
        .collect();
    let copair_i2i = recall(&cat.ranks(&copair_queries), &I2I_KS);

    // Gid-i2i per ID space.
    let mut by_space: BTreeMap<String, Vec<(usize, usize)>> = BTreeMap::new();
    for batch in read_parquet(&exports.join("id2item/i2i"))? {
        let spaces = strings(&batch, "space")?;
        let items = strings(&batch, "item_id")?;
        let neighbours = strings(&batch, "neighbour")?;
        for ((space, a), b) in spaces.into_iter().zip(items).zip(neighbours) {
            if let (Some(&a), Some(&b)) = (cat.index.get(&a), cat.index.get(&b)) {
                by_space.entry(space).or_default().push((a, b));
            }
        }
    }
    let mut gid_i2i = BTreeMap::new();
    for (space, pairs) in by_space {
        let pairs = sample(pairs, e.max_queries, |(a, b)| {
            hash(&[&space, &cat.ids[*a], &cat.ids[*b]])
        });
        let queries: Vec<_> = pairs
            .iter()
            .map(|&(a, b)| (cat.row(a), b, vec![a]))
            .collect();
        if let Some(r) = recall(&cat.ranks(&queries), &I2I_KS) {
            gid_i2i.insert(space, r);
        }
    }

    // seq2item vanilla: the stored viewing histories.
    let users = store.list_users(cf::USER_HISTORIES, usize::MAX)?;
    let users = sample(users, e.max_queries, |u| hash(&[u]));
    let mut vanilla = Vec::new();
    for user in &users {
        let mut seen = HashSet::new();
        let viewed: Vec<usize> = store
            .user_history(user)?
            .iter()
            .rev()
            .filter_map(|h| cat.index.get(&h.item_id).copied())
            .filter(|i| seen.insert(*i))
            .take(e.vanilla_history)
            .collect();
        if viewed.len() <= e.vanilla_query {
            continue;
        }
        let target = viewed[0];
        let query = sample(viewed[1..].to_vec(), e.vanilla_query, |i| {
            hash(&[user, &cat.ids[*i]])
        });
        vanilla.push((cat.pooled(&query), target, query));
    }
    let seq2item_vanilla = recall(&cat.ranks(&vanilla), &SEQ_KS);

    // seq2item filtered: the job's samples of one behaviour-based strategy.
    let mut filtered = Vec::new();
    for batch in read_parquet(&exports.join("seq2item"))? {
        let strategy = strings(&batch, "strategy")?;
        let user = strings(&batch, "user_id")?;
        let target = strings(&batch, "target_item")?;
        let query = string_lists(&batch, "query_items")?;
        for (((s, u), t), q) in strategy.into_iter().zip(user).zip(target).zip(query) {
            if s != e.filtered_strategy {
                continue;
            }
            let Some(&t) = cat.index.get(&t) else {
                continue;
            };
            let q: Vec<usize> = q.iter().filter_map(|i| cat.index.get(i).copied()).collect();
            if !q.is_empty() {
                filtered.push((u, t, q));
            }
        }
    }
    let filtered = sample(filtered, e.max_queries, |(u, t, _)| {
        hash(&[u, &cat.ids[*t]])
    });
    let filtered_queries: Vec<_> = filtered
        .iter()
        .map(|(_, t, q)| (cat.pooled(q), *t, q.clone()))
        .collect();
    let seq2item_filtered = recall(&cat.ranks(&filtered_queries), &SEQ_KS);

    // Separability: co-consumed pairs vs random pairs (not co-consumed).
    let known: HashSet<(usize, usize)> = pairs.iter().copied().collect();
    let n = cat.ids.len();
    let cosine = |a: usize, b: usize| cat.vectors.row(a).dot(&cat.vectors.row(b));
    let positives: Vec<f32> = pairs.iter().map(|&(a, b)| cosine(a, b)).collect();
    let mut negatives = Vec::new();
    let mut k = 0u64;
    while negatives.len() < positives.len() && n > 1 && k < 20 * positives.len() as u64 + 100 {
        let a = (hash(&["neg-a", &k.to_string()]) % n as u64) as usize;
        let b = (hash(&["neg-b", &k.to_string()]) % n as u64) as usize;
        k += 1;
        if a != b && !known.contains(&(a, b)) {
            negatives.push(cosine(a, b));
        }
    }
    let mean = |xs: &[f32]| xs.iter().map(|&x| x as f64).sum::<f64>() / xs.len().max(1) as f64;
    let separability = (!positives.is_empty() && !negatives.is_empty()).then(|| Separability {
        pairs: positives.len(),
        positive_mean: mean(&positives),
        negative_mean: mean(&negatives),
        gap: mean(&positives) - mean(&negatives),
        auc: metrics::auc(&positives, &negatives),
    });

    // NMI of level-1 semantic-ID clusters: query representation vs target.
    let nmi = match store.codebooks()? {
        Some(books) if !filtered_queries.is_empty() && !books.levels.is_empty() => {
            let centroids: Vec<&[f32]> = books.levels[0].iter().map(Vec::as_slice).collect();
            if centroids.first().map(|c| c.len()) == Some(cat.vectors.ncols()) {
                let c = unit_rows(&centroids);
                let nearest = |v: &[f32]| {
                    let s = c.dot(&ndarray::ArrayView1::from(v));
                    metrics::top_k(s.as_slice().expect("contiguous"), 1, None)[0] as u32
                };
                let (q, t): (Vec<u32>, Vec<u32>) = filtered_queries
                    .iter()
                    .map(|(qv, t, _)| (nearest(qv), nearest(&cat.row(*t))))
                    .unzip();
                Some(metrics::nmi(&q, &t))
            } else {
                None
            }
        }
        _ => None,
    };

    // Mutual top-1 between items and their seq2item teacher vectors.
    let mut with_teacher: Vec<(usize, Vec<f32>)> = Vec::new();
    store.for_each_teacher_target(|item, t| {
        if t.kind == crate::jobs::seq2item::TEACHER_KIND
            && let Some(&i) = cat.index.get(item)
            && t.vector.len() == cat.vectors.ncols()
        {
            with_teacher.push((i, t.vector));
        }
        Ok(true)
    })?;
    let with_teacher = sample(with_teacher, e.max_queries, |(i, _)| hash(&[&cat.ids[*i]]));
    let mutual_top1 = (!with_teacher.is_empty()).then(|| {
        let items: Vec<Vec<f32>> = with_teacher.iter().map(|(i, _)| cat.row(*i)).collect();
        let a = unit_rows(&items.iter().map(Vec::as_slice).collect::<Vec<_>>());
        let b = unit_rows(
            &with_teacher
                .iter()
                .map(|(_, v)| v.as_slice())
                .collect::<Vec<_>>(),
        );
        metrics::mutual_top1(a.view(), b.view())
    });

    Ok(Report {
        store: store.path().to_path_buf(),
        model: cat.model.clone(),
        items: cat.ids.len(),
        search: format!(
            "exact (every query scored against all {} items)",
            cat.ids.len()
        ),
        copair_i2i,
        copair_pairs: if holdout > 0 {
            format!("the {holdout}% held out of the training export (jobs.copairs_holdout_percent)")
        } else {
            "all (jobs.copairs_holdout_percent = 0: nothing is held out of the training export)"
                .to_string()
        },
        gid_i2i,
        seq2item_vanilla,
        seq2item_filtered,
        separability,
        nmi,
        mutual_top1,
        compare: None,
    })
}

/// Kendall tau and top-10 overlap between this store's model and another store's, over shared items.
fn compare(
    cat: &Catalogue,
    other: &Catalogue,
    other_path: &Path,
    config: &Config,
) -> Result<Comparison> {
    let max_queries = config.eval.max_queries.min(1000);
    let hash = |parts: &[&str]| seeded_hash(config.eval.seed, parts);
    // Shared items, in this catalogue's order, mapped to rows of both.
    let shared: Vec<(usize, usize)> = cat
        .ids
        .iter()
        .enumerate()
        .filter_map(|(i, id)| other.index.get(id).map(|&j| (i, j)))
        .collect();
    // Kendall tau needs two reference items besides the query.
    if shared.len() < 3 {
        return Err(Error::invalid(
            "--compare",
            format!(
                "{} shares {} embedded items with this store; at least 3 are needed",
                other_path.display(),
                shared.len()
            ),
        ));
    }
    let mine = cat.vectors.select(
        ndarray::Axis(0),
        &shared.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
    );
    let theirs = other.vectors.select(
        ndarray::Axis(0),
        &shared.iter().map(|(_, j)| *j).collect::<Vec<_>>(),
    );
    let queries = sample((0..shared.len()).collect(), max_queries, |q| {
        hash(&["compare", &cat.ids[shared[*q].0]])
    });
    // A fixed sample of up to 200 reference items for the rank correlation.
    let reference = sample((0..shared.len()).collect(), 200, |r| {
        hash(&["reference", &cat.ids[shared[*r].0]])
    });
    let (mut tau, mut overlap) = (0.0, 0.0);
    for block in queries.chunks(256) {
        let qa = mine.select(ndarray::Axis(0), block);
        let qb = theirs.select(ndarray::Axis(0), block);
        let sa = qa.dot(&mine.t());
        let sb = qb.dot(&theirs.t());
        for (row, &q) in block.iter().enumerate() {
            let (ra, rb) = (sa.slice(s![row, ..]), sb.slice(s![row, ..]));
            let (ra, rb) = (ra.as_slice().expect("row"), rb.as_slice().expect("row"));
            let xs: Vec<f32> = reference
                .iter()
                .filter(|&&r| r != q)
                .map(|&r| ra[r])
                .collect();
            let ys: Vec<f32> = reference
                .iter()
                .filter(|&&r| r != q)
                .map(|&r| rb[r])
                .collect();
            tau += metrics::kendall_tau(&xs, &ys);
            overlap += metrics::overlap(
                &metrics::top_k(ra, 10, Some(q)),
                &metrics::top_k(rb, 10, Some(q)),
            );
        }
    }
    let n = queries.len() as f64;
    Ok(Comparison {
        other_store: other_path.to_path_buf(),
        other_model: other.model.clone(),
        queries: queries.len(),
        kendall_tau: tau / n,
        top10_overlap: overlap / n,
    })
}

/// The report as a table (one metric per line; `other` adds a column and the difference).
pub fn table(report: &Report, other: Option<&Report>) -> String {
    let flatten = |report: &Report| -> Vec<(String, Option<f64>)> {
        let mut rows: Vec<(String, Option<f64>)> = Vec::new();
        let mut add_recall = |name: String, r: Option<&Recall>, ks: &[usize]| {
            rows.push((format!("{name} queries"), r.map(|r| r.queries as f64)));
            for &k in ks {
                rows.push((
                    format!("{name} Recall@{k}"),
                    r.and_then(|r| r.recall.get(&k).copied()),
                ));
            }
        };
        add_recall("Copair-i2i".into(), report.copair_i2i.as_ref(), &I2I_KS);
        for (space, r) in &report.gid_i2i {
            add_recall(format!("Gid-i2i ({space})"), Some(r), &I2I_KS);
        }
        add_recall(
            "seq2item vanilla".into(),
            report.seq2item_vanilla.as_ref(),
            &SEQ_KS,
        );
        add_recall(
            "seq2item filtered".into(),
            report.seq2item_filtered.as_ref(),
            &SEQ_KS,
        );
        let sep = report.separability.as_ref();
        rows.push(("positive pair cosine".into(), sep.map(|s| s.positive_mean)));
        rows.push(("random pair cosine".into(), sep.map(|s| s.negative_mean)));
        rows.push(("separability gap".into(), sep.map(|s| s.gap)));
        rows.push(("separability AUC".into(), sep.map(|s| s.auc)));
        rows.push(("NMI query vs target cluster".into(), report.nmi));
        rows.push(("mutual top-1 item vs teacher".into(), report.mutual_top1));
        rows
    };
    let mine = flatten(report);
    let theirs = other.map(flatten);
    // Counts print as integers, metrics with four decimals.
    let fmt = |name: &str, v: Option<f64>| match v {
        None => "-".to_string(),
        Some(v) if name.ends_with("queries") => format!("{v:.0}"),
        Some(v) => format!("{v:.4}"),
    };
    let mut out = format!(
        "store {} · model {}\n",
        report.store.display(),
        report.model
    );
    if let Some(o) = other {
        out.push_str(&format!(
            "vs    {} · model {}\n",
            o.store.display(),
            o.model
        ));
    }
    out.push_str(&format!("search: {}\n", report.search));
    out.push_str(&format!("co-consumption pairs: {}\n", report.copair_pairs));
    let width = mine.iter().map(|(n, _)| n.len()).max().unwrap_or(10);
    for (name, value) in &mine {
        match &theirs {
            None => out.push_str(&format!("  {name:<width$}  {:>10}\n", fmt(name, *value))),
            Some(theirs) => {
                let other_value = theirs.iter().find(|(n, _)| n == name).and_then(|(_, v)| *v);
                let delta = value.zip(other_value).map(|(a, b)| a - b);
                out.push_str(&format!(
                    "  {name:<width$}  {:>10}  {:>10}  {:>10}\n",
                    fmt(name, *value),
                    fmt(name, other_value),
                    delta.map_or("-".into(), |d| format!("{d:+.4}"))
                ));
            }
        }
    }
    if let Some(c) = &report.compare {
        out.push_str(&format!(
            "  {:<width$}  {:>10}\n  {:<width$}  {:>10}\n",
            format!("Kendall tau vs other model ({} queries)", c.queries),
            format!("{:.4}", c.kendall_tau),
            "top-10 overlap vs other model",
            format!("{:.4}", c.top10_overlap),
        ));
    }
    out
}
