//! Batch jobs on DataFusion over the offline event log: what the recommender's behaviour teaches the content
//! model (co-consumption pairs first; seq2item, ID2item, interests and semantic IDs follow).
//!
//! Jobs read the log's Parquet segments (`<offline_log.path>/<topic>/segment-*.parquet`) as SQL tables, with the
//! SQL kept in `pipelines/jobs/` (compiled in) and the positives predicate generated from `[positives]`, the
//! definition the stream uses. Results are written as Parquet under `jobs.output_dir`, each job's folder
//! replaced atomically (written beside it, then renamed).

pub mod copairs;
pub mod interests;
pub mod semantic_ids;

use std::path::{Path, PathBuf};

use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::prelude::{DataFrame, ParquetReadOptions, SessionConfig, SessionContext};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::ingest::Positives;

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

/// `behaviours`: the behaviour events of the log, typed.
const BEHAVIOURS_VIEW: &str = "SELECT user_id, item_id, action, dwell_ms, ts, rating, topic, \"partition\", \"offset\" \
     FROM log_behaviours";

impl JobContext {
    /// Registers the log's behaviour segments. Fails with a clear message when there are none yet.
    pub async fn over_log(config: &Config) -> Result<JobContext> {
        let dir = config
            .offline_log
            .path
            .join(&config.kafka.topics.behaviours);
        let has_segments = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .any(|e| e.path().extension().is_some_and(|x| x == "parquet"))
            })
            .unwrap_or(false);
        if !has_segments {
            return Err(Error::invalid(
                "offline log",
                format!(
                    "no behaviour segments in {} yet: replay events or run the worker first (offline_log.enabled)",
                    dir.display()
                ),
            ));
        }
        // Plain Utf8 strings rather than Utf8View: the exports are a contract for trainers and other readers.
        let session = SessionConfig::new().set_bool(
            "datafusion.execution.parquet.schema_force_view_types",
            false,
        );
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

    /// Runs one of the `pipelines/jobs/` templates with `{name}` parameters filled in (`{positive}` always).
    pub async fn sql(&self, template: &str, params: &[(&str, String)]) -> Result<DataFrame> {
        let mut text = template.replace("{positive}", &self.positives.sql_predicate());
        for (name, value) in params {
            text = text.replace(&format!("{{{name}}}"), value);
        }
        self.ctx
            .sql(&text)
            .await
            .map_err(|e| Error::columnar("planning job SQL", e))
    }

    /// Writes a result as Parquet into `<output_dir>/<job>/`, replacing the previous run's folder atomically.
    pub async fn write(&self, job: &'static str, df: DataFrame) -> Result<JobReport> {
        let dest = self.output_dir.join(job);
        let tmp = self.output_dir.join(format!(".{job}.tmp"));
        std::fs::create_dir_all(&self.output_dir)
            .map_err(|e| Error::io(format!("creating {}", self.output_dir.display()), e))?;
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)
                .map_err(|e| Error::io(format!("removing {}", tmp.display()), e))?;
        }
        std::fs::create_dir_all(&tmp)
            .map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
        let batches = df
            .write_parquet(&path_str(&tmp)?, DataFrameWriteOptions::new(), None)
            .await
            .map_err(|e| Error::columnar(format!("writing {job} to {}", tmp.display()), e))?;
        let rows = batches
            .iter()
            .filter_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<arrow::array::UInt64Array>()
                    .map(|a| a.iter().flatten().sum::<u64>())
            })
            .sum();
        if dest.exists() {
            std::fs::remove_dir_all(&dest)
                .map_err(|e| Error::io(format!("removing {}", dest.display()), e))?;
        }
        std::fs::rename(&tmp, &dest)
            .map_err(|e| Error::io(format!("moving {} into place", dest.display()), e))?;
        Ok(JobReport {
            job,
            rows,
            output: dest,
        })
    }
}

fn path_str(p: &Path) -> Result<String> {
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
