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

use std::fs::File;
use std::path::{Path, PathBuf};

use datafusion::prelude::{ParquetReadOptions, col, lit};
use futures::StreamExt;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::Serialize;

use super::JobContext;
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
    let dest = training_dir(config);
    let tmp = out.join(".training.tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .map_err(|e| Error::io(format!("removing {}", tmp.display()), e))?;
    }
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
        let dir = tmp.join(&name);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let mut stream = super::plain_strings(df)?
            .execute_stream()
            .await
            .map_err(|e| Error::columnar(format!("reading {name}"), e))?;
        let mut shards = ShardWriter::new(&dir, config.jobs.training_shard_rows);
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| Error::columnar(format!("reading {name}"), e))?;
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
    std::fs::create_dir_all(&tmp)
        .map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| Error::Internal(format!("encoding datasets.json: {e}")))?;
    std::fs::write(tmp.join("datasets.json"), json)
        .map_err(|e| Error::io("writing datasets.json", e))?;
    if dest.exists() {
        std::fs::remove_dir_all(&dest)
            .map_err(|e| Error::io(format!("removing {}", dest.display()), e))?;
    }
    std::fs::rename(&tmp, &dest)
        .map_err(|e| Error::io(format!("moving {} into place", dest.display()), e))?;
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

fn has_parquet(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .any(|e| e.path().extension().is_some_and(|x| x == "parquet"))
        })
        .unwrap_or(false)
}

/// Writes batches into `part-00000.parquet`, `part-00001.parquet`, ... of at most `max_rows` rows each.
struct ShardWriter<'a> {
    dir: &'a Path,
    max_rows: usize,
    current: Option<(ArrowWriter<File>, usize)>,
    files: Vec<String>,
    rows: u64,
}

impl<'a> ShardWriter<'a> {
    fn new(dir: &'a Path, max_rows: usize) -> Self {
        ShardWriter {
            dir,
            max_rows,
            current: None,
            files: Vec::new(),
            rows: 0,
        }
    }

    fn write(&mut self, batch: &arrow::array::RecordBatch) -> Result<()> {
        let mut offset = 0;
        while offset < batch.num_rows() {
            if self.current.is_none() {
                let name = format!("part-{:05}.parquet", self.files.len());
                let path = self.dir.join(&name);
                let file = File::create(&path)
                    .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
                let props = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(ZstdLevel::default()))
                    .build();
                let writer = ArrowWriter::try_new(file, batch.schema(), Some(props))
                    .map_err(|e| Error::columnar(format!("starting {}", path.display()), e))?;
                self.files.push(name);
                self.current = Some((writer, 0));
            }
            let (writer, written) = self.current.as_mut().expect("opened above");
            let take = (self.max_rows - *written).min(batch.num_rows() - offset);
            writer
                .write(&batch.slice(offset, take))
                .map_err(|e| Error::columnar("writing a training shard", e))?;
            *written += take;
            offset += take;
            self.rows += take as u64;
            if *written == self.max_rows {
                self.close()?;
            }
        }
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        if let Some((writer, _)) = self.current.take() {
            writer
                .close()
                .map_err(|e| Error::columnar("closing a training shard", e))?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(u64, Vec<String>)> {
        self.close()?;
        Ok((self.rows, self.files))
    }
}
