//! Co-consumption pairs (Copair-i2i): item pairs positively consumed by the same user within a window.

use super::{JobContext, JobReport};
use crate::config::Config;
use crate::error::Result;

pub const SQL: &str = include_str!("../../pipelines/jobs/copairs.sql");

pub async fn run(ctx: &JobContext, config: &Config) -> Result<JobReport> {
    let df = ctx
        .sql(
            SQL,
            &[
                ("window_ms", config.jobs.copairs_window_ms.to_string()),
                ("min_support", config.jobs.copairs_min_support.to_string()),
            ],
        )
        .await?;
    ctx.write("copairs", df).await
}
