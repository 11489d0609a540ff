//! Batch jobs on DataFusion over the offline event log: what the recommender's behaviour teaches the content
//! model. [`ALL`] lists them in the order a backfill runs them (each may read what the earlier ones wrote):
//! co-consumption pairs, semantic IDs, ID2item, seq2item, user interests, then the training-set export.
//!
//! Jobs read the log's Parquet segments (`<offline_log.path>/<topic>/segment-*.parquet`) as SQL tables, with the
//! SQL kept in `pipelines/jobs/` (compiled in) and the positives predicate generated from `[positives]`, the
//! definition the stream uses. Results are written as Parquet under `jobs.output_dir`, each job's folder
//! replaced atomically (written beside it, then renamed).

pub mod copairs;
pub mod id2item;
pub mod interests;
mod output;
pub mod semantic_ids;
pub mod seq2item;
pub mod training;

use std::path::{Path, PathBuf};

use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::prelude::{DataFrame, ParquetReadOptions, SessionConfig, SessionContext};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::ingest::Positives;
use crate::store::Store;

pub use output::write_rows;

/// Every job, in dependency order.
pub const ALL: [&str; 6] = [
    "copairs",
    "semantic_ids",
    "id2item",
    "seq2item",
    "interests",
    "training",
];

/// Runs one job by name over the offline log and the store; returns a one-line summary of what it wrote.
pub async fn run(name: &str, config: &Config, store: &Store) -> Result<String> {
    let started = std::time::Instant::now();
    let secs = || started.elapsed().as_secs_f64();
    match name {
        "semantic_ids" => {
            let r = semantic_ids::run(store, config)?;
            let mse: Vec<String> = r.residual_mse.iter().map(|m| format!("{m:.4}")).collect();
            Ok(format!(
                "semantic_ids: codebooks {:?} trained on {} items in {:.2}s; residual MSE per level [{}]",
                r.levels,
                r.items,
                secs(),
                mse.join(", ")
            ))
        }
        "interests" => {
            let (users, written) = interests::run(store, config)?;
            Ok(format!(
                "interests: {written} of {users} users have interests (the others have no embedded positives) in {:.2}s",
                secs()
            ))
        }
        "copairs" | "id2item" | "seq2item" | "training" => {
            let ctx = JobContext::over_log(config).await?;
            Ok(match name {
                "copairs" => {
                    let r = copairs::run(&ctx, config).await?;
                    format!(
                        "copairs: {} pairs to {} in {:.2}s",
                        r.rows,
                        r.output.display(),
                        secs()
                    )
                }
                "id2item" => {
                    let r = id2item::run(&ctx, store, config).await?;
                    let spaces: Vec<String> = r
                        .spaces
                        .iter()
                        .map(|(s, n, src)| format!("{s} ({n} items, {src})"))
                        .collect();
                    format!(
                        "id2item: teacher vectors for {}; {} i2i pairs; Parquet in {} in {:.2}s",
                        spaces.join(", "),
                        r.i2i.rows,
                        r.pairs.output.parent().unwrap_or(&r.pairs.output).display(),
                        secs()
                    )
                }
                "seq2item" => {
                    let r = seq2item::run(&ctx, store, config).await?;
                    let per: Vec<String> = r
                        .samples_per_strategy
                        .iter()
                        .map(|(s, n)| format!("{s} {n}"))
                        .collect();
                    format!(
                        "seq2item: {} samples from {} users ({}); {} teacher vectors; Parquet in {} in {:.2}s",
                        r.samples.rows,
                        r.users,
                        per.join(", "),
                        r.teacher_vectors,
                        r.samples.output.display(),
                        secs()
                    )
                }
                _ => {
                    let m = training::run(&ctx, config).await?;
                    let per: Vec<String> = m
                        .datasets
                        .iter()
                        .map(|d| format!("{} {} rows w={:.3}", d.name, d.rows, d.weight))
                        .collect();
                    format!(
                        "training: {} datasets ({}) in {} in {:.2}s",
                        m.datasets.len(),
                        per.join(", "),
                        training::training_dir(config).display(),
                        secs()
                    )
                }
            })
        }
        other => Err(Error::invalid(
            "job",
            format!("unknown job '{other}' (known: {})", ALL.join(", ")),
        )),
    }
}

/// What a job wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobReport {
    pub job: &'static str,
    pub rows: u64,
    pub output: PathBuf,
}

/// A DataFusion session with the offline log registered as tables.
pub struct JobContext {
    ctx: SessionContext,
    positives: Positives,
    output_dir: PathBuf,
}

/// `behaviours`: the behaviour events of the log, typed (over the `log_behaviours` Parquet table).
pub const BEHAVIOURS_VIEW: &str = "SELECT user_id, item_id, action, dwell_ms, ts, rating, topic, \"partition\", \"offset\" \
     FROM log_behaviours";

impl JobContext {
    /// Registers the log's behaviour segments. Fails with a clear message when there are none yet.
    pub async fn over_log(config: &Config) -> Result<JobContext> {
        let dir = config
            .offline_log
            .path
            .join(&config.kafka.topics.behaviours);
        if !output::has_parquet(&dir) {
            return Err(Error::invalid(
                "offline log",
                format!(
                    "no behaviour segments in {} yet: replay events or run the worker first (offline_log.enabled)",
                    dir.display()
                ),
            ));
        }
        // Scans read strings as Utf8View (faster joins and grouping on ids); what is written out is cast back
        // to plain Utf8 (`plain_strings`), since the exports are a contract for trainers and other readers.
        let session = SessionConfig::new()
            .set_bool("datafusion.execution.parquet.schema_force_view_types", true);
        let ctx = SessionContext::new_with_config(session);
        ctx.register_parquet(
            "log_behaviours",
            &path_str(&dir)?,
            ParquetReadOptions::default().file_extension(".parquet"),
        )
        .await
        .map_err(|e| Error::columnar(format!("registering {}", dir.display()), e))?;
        let view = ctx
            .sql(BEHAVIOURS_VIEW)
            .await
            .map_err(|e| Error::columnar("defining the behaviours view", e))?;
        ctx.register_table("behaviours", view.into_view())
            .map_err(|e| Error::columnar("registering the behaviours view", e))?;
        Ok(JobContext {
            ctx,
            positives: Positives::new(&config.positives),
            output_dir: config.jobs.output_dir.clone(),
        })
    }

    pub fn session(&self) -> &SessionContext {
        &self.ctx
    }

    /// One of the `pipelines/jobs/` templates with `{name}` parameters filled in (`{positive}` always).
    pub fn render(&self, template: &str, params: &[(&str, String)]) -> String {
        let mut text = template.replace("{positive}", &self.positives.sql_predicate());
        for (name, value) in params {
            text = text.replace(&format!("{{{name}}}"), value);
        }
        text
    }

    /// Plans a rendered template (see [`JobContext::render`]).
    pub async fn sql(&self, template: &str, params: &[(&str, String)]) -> Result<DataFrame> {
        let text = self.render(template, params);
        self.ctx
            .sql(&text)
            .await
            .map_err(|e| Error::columnar("planning job SQL", e))
    }

    /// Writes a result as Parquet into `<output_dir>/<job>/`, replacing the previous run's folder atomically.
    /// `job` may name a sub-folder (`id2item/pairs`).
    pub async fn write(&self, job: &'static str, df: DataFrame) -> Result<JobReport> {
        let df = plain_strings(df)?;
        let swap = output::OutputSwap::begin(&self.output_dir, job)?;
        let batches = df
            .write_parquet(&path_str(swap.tmp())?, DataFrameWriteOptions::new(), None)
            .await
            .map_err(|e| {
                Error::columnar(format!("writing {job} to {}", swap.tmp().display()), e)
            })?;
        let rows = batches
            .iter()
            .filter_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<arrow::array::UInt64Array>()
                    .map(|a| a.iter().flatten().sum::<u64>())
            })
            .sum();
        Ok(JobReport {
            job,
            rows,
            output: swap.commit()?,
        })
    }
}

/// FNV-1a, 64 bit: a hash that stays the same across processes and releases (std's hasher is randomised), for
/// per-item seeds and input fingerprints.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Deletes, in `batch`, the teacher targets of the given kinds whose item is not in `keep(kind, item)`: a rerun
/// replaces a job's targets instead of leaving those of items it no longer produces.
pub(crate) fn drop_stale_teachers(
    store: &Store,
    batch: &mut crate::store::StateBatch<'_>,
    is_ours: impl Fn(&str) -> bool,
    keep: impl Fn(&str, &str) -> bool,
) -> Result<usize> {
    let mut stale = Vec::new();
    store.for_each_teacher_target(|item, t| {
        if is_ours(&t.kind) && !keep(&t.kind, item) {
            stale.push((item.to_string(), t.kind));
        }
        Ok(true)
    })?;
    for (item, kind) in &stale {
        batch.delete_teacher_target(item, kind)?;
    }
    Ok(stale.len())
}

/// A `List<Float32>` column from vectors.
pub(crate) fn f32_lists<'a>(vectors: impl Iterator<Item = &'a [f32]>) -> arrow::array::ListArray {
    let mut b = arrow::array::ListBuilder::new(arrow::array::Float32Builder::new());
    for v in vectors {
        b.values().append_slice(v);
        b.append(true);
    }
    b.finish()
}

/// The same rows with every Utf8View column cast to plain Utf8 (the exports' string type).
pub(crate) fn plain_strings(df: DataFrame) -> Result<DataFrame> {
    use arrow::datatypes::DataType;
    use datafusion::common::Column;
    use datafusion::prelude::{Expr, cast};
    let fields = df.schema().fields().clone();
    if !fields.iter().any(|f| f.data_type() == &DataType::Utf8View) {
        return Ok(df);
    }
    let exprs: Vec<Expr> = fields
        .iter()
        .map(|f| {
            let c = Expr::Column(Column::from_name(f.name()));
            if f.data_type() == &DataType::Utf8View {
                cast(c, DataType::Utf8).alias(f.name())
            } else {
                c
            }
        })
        .collect();
    df.select(exprs)
        .map_err(|e| Error::columnar("casting strings to Utf8", e))
}

pub(crate) fn path_str(p: &Path) -> Result<String> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| Error::io("reading the working directory", e))?
            .join(p)
    };
    let mut s = abs
        .to_str()
        .ok_or_else(|| Error::invalid("path", format!("{} is not UTF-8", abs.display())))?
        .to_string();
    // A trailing slash makes DataFusion treat the path as a folder (a listing table / an output directory).
    if !s.ends_with('/') {
        s.push('/');
    }
    Ok(s)
}
