//! Training-set export for distillation: one folder of Parquet shards per dataset, and `datasets.json` with a
//! sampling weight per dataset, so a trainer can draw each batch from ONE dataset chosen by weight (the paper's
//! stochastic specialization).
//!
//! Datasets, read from the other jobs' outputs (a job that has not run yet is simply absent):
//! `copairs` (Copair-i2i pairs), `seq2item_<strategy>` (one per query-selection strategy), `id2item` (item, ID
//! space, vector) and `id2item_i2i` (the auxiliary i2i pairs from the ID spaces).
//!
//! Weight of a dataset: `training_weights[name]` when given, else rows^`training_temperature`; then all are
//! normalised to sum to 1 (an empty dataset gets 0). The folder is replaced atomically.

use std::path::PathBuf;

use datafusion::prelude::{ParquetReadOptions, col, lit};
use futures::StreamExt;
use serde::Serialize;

use super::JobContext;
use super::output::{OutputSwap, ShardWriter, has_parquet};
use super::seq2item::Strategy;
use crate::config::Config;
use crate::error::{Error, Result};

/// One dataset in `datasets.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dataset {
    pub name: String,
    /// Rows, over all shards.
    pub rows: u64,
    /// Probability that a batch is drawn from this dataset.
    pub weight: f64,
    /// Shard files, relative to the manifest's folder.
    pub shards: Vec<String>,
    /// Where the rows came from (the job's output folder, relative to `jobs.output_dir`, and the filter).
    pub source: String,
}

/// `datasets.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Manifest {
    pub created_ms: i64,
    pub temperature: f64,
    pub datasets: Vec<Dataset>,
}

/// Where the export goes: `<output_dir>/training/`.
pub fn training_dir(config: &Config) -> PathBuf {
    config.jobs.output_dir.join("training")
}

/// (dataset name, source folder under output_dir, strategy filter).
fn sources() -> Vec<(String, &'static str, Option<&'static str>)> {
    let mut v = vec![("copairs".to_string(), "copairs", None)];
    for s in Strategy::ALL {
        v.push((format!("seq2item_{}", s.name()), "seq2item", Some(s.name())));
    }
    v.push(("id2item".to_string(), "id2item/pairs", None));
    v.push(("id2item_i2i".to_string(), "id2item/i2i", None));
    v
}

/// Writes every available dataset's shards and the manifest.
pub async fn run(ctx: &JobContext, config: &Config) -> Result<Manifest> {
    let out = config.jobs.output_dir.clone();
    let swap = OutputSwap::begin(&out, "training")?;
    let mut datasets = Vec::new();
    for (name, folder, strategy) in sources() {
        let src = out.join(folder);
        if !has_parquet(&src) {
            continue;
        }
        let mut df = ctx
            .session()
            .read_parquet(
                super::path_str(&src)?,
                ParquetReadOptions::default().file_extension(".parquet"),
            )
            .await
            .map_err(|e| Error::columnar(format!("reading {}", src.display()), e))?;
        if let Some(s) = strategy {
            df = df
                .filter(col("strategy").eq(lit(s)))
                .map_err(|e| Error::columnar("filtering seq2item by strategy", e))?;
        }
        let dir = swap.tmp().join(&name);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let mut stream = super::plain_strings(df)?
            .execute_stream()
            .await
            .map_err(|e| Error::columnar(format!("reading {name}"), e))?;
        let mut shards = ShardWriter::new(&dir, config.jobs.training_shard_rows);
        let holdout = config.jobs.copairs_holdout_percent;
        while let Some(batch) = stream.next().await {
            let mut batch = batch.map_err(|e| Error::columnar(format!("reading {name}"), e))?;
            if name == "copairs" && holdout > 0 {
                batch = without_held_out(&batch, holdout)?;
            }
            shards.write(&batch)?;
        }
        let (rows, files) = shards.finish()?;
        datasets.push(Dataset {
            shards: files.iter().map(|f| format!("{name}/{f}")).collect(),
            name,
            rows,
            weight: 0.0,
            source: match strategy {
                Some(s) => format!("{folder} where strategy = '{s}'"),
                None => folder.to_string(),
            },
        });
    }
    if datasets.is_empty() {
        return Err(Error::invalid(
            "training export",
            format!(
                "no job outputs under {} yet: run copairs, id2item and seq2item first",
                out.display()
            ),
        ));
    }
    assign_weights(&mut datasets, config);
    let manifest = Manifest {
        created_ms: crate::ingest::now_ms(),
        temperature: config.jobs.training_temperature,
        datasets,
    };
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| Error::Internal(format!("encoding datasets.json: {e}")))?;
    std::fs::write(swap.tmp().join("datasets.json"), json)
        .map_err(|e| Error::io("writing datasets.json", e))?;
    swap.commit()?;
    Ok(manifest)
}

/// rows^temperature (or the configured override), normalised; empty datasets get 0.
pub fn assign_weights(datasets: &mut [Dataset], config: &Config) {
    for d in datasets.iter_mut() {
        d.weight = if d.rows == 0 {
            0.0
        } else {
            config
                .jobs
                .training_weights
                .get(&d.name)
                .copied()
                .unwrap_or_else(|| (d.rows as f64).powf(config.jobs.training_temperature))
        };
    }
    let total: f64 = datasets.iter().map(|d| d.weight).sum();
    if total > 0.0 {
        for d in datasets.iter_mut() {
            d.weight /= total;
        }
    }
}

/// The co-consumption pairs minus those held out for evaluation (see [`super::copairs::held_out`]).
fn without_held_out(
    batch: &arrow::array::RecordBatch,
    percent: u64,
) -> Result<arrow::array::RecordBatch> {
    use arrow::array::{Array, AsArray, BooleanArray};
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or_else(|| Error::columnar("training copairs", format!("no string column {name}")))
    };
    let (a, b) = (column("item_a")?, column("item_b")?);
    let keep: BooleanArray = (0..a.len())
        .map(|i| Some(!super::copairs::held_out(a.value(i), b.value(i), percent)))
        .collect();
    arrow::compute::filter_record_batch(batch, &keep)
        .map_err(|e| Error::columnar("filtering held-out copairs", e))
}
