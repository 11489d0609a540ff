//! Co-consumption pairs (Copair-i2i): item pairs positively consumed by the same user within a window.

use super::{JobContext, JobReport, fnv1a};
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

/// Whether the pair (item_a, item_b) is held out of the training export and kept for evaluation
/// (`jobs.copairs_holdout_percent`): a fixed hash of the pair, so the split is the same in every run and both
/// the training export and `sailstream eval` agree on it without storing it.
pub fn held_out(item_a: &str, item_b: &str, percent: u64) -> bool {
    let mut key = Vec::with_capacity(item_a.len() + item_b.len() + 1);
    key.extend_from_slice(item_a.as_bytes());
    key.push(0);
    key.extend_from_slice(item_b.as_bytes());
    percent > 0 && fnv1a(&key) % 100 < percent
}

#[cfg(test)]
mod tests {
    #[test]
    fn holdout_split_is_stable_and_near_its_share() {
        let pairs: Vec<(String, String)> = (0..10_000)
            .map(|i| (format!("i{i}"), format!("j{}", i * 7)))
            .collect();
        let held = pairs
            .iter()
            .filter(|(a, b)| super::held_out(a, b, 10))
            .count();
        assert!((800..1200).contains(&held), "{held}");
        assert!(pairs.iter().all(|(a, b)| !super::held_out(a, b, 0)));
        assert_eq!(super::held_out("a", "b", 10), super::held_out("a", "b", 10));
    }
}
