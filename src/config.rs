//! Layered configuration: built-in defaults (`pipelines/defaults.toml`, compiled in), then a TOML file, then
//! `SAILSTREAM__SECTION__KEY` environment variables. The result is validated once at start; every error names
//! the key and what is wrong with it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::schema::Action;

/// The first layer, compiled into the binary so that it always matches the code.
pub const DEFAULTS_TOML: &str = include_str!("../pipelines/defaults.toml");

/// Prefix of environment overrides; `__` separates the path segments.
pub const ENV_PREFIX: &str = "SAILSTREAM__";

/// Tables whose keys are free-form (passed through to a client), so overrides may add new keys there.
const OPEN_TABLES: &[&str] = &["kafka.client", "id_spaces", "jobs.training_weights"];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub store: StoreConfig,
    pub ingest: IngestConfig,
    pub offline_log: OfflineLogConfig,
    pub worker: WorkerConfig,
    pub kafka: KafkaConfig,
    pub positives: PositivesConfig,
    pub limits: Limits,
    pub id_spaces: BTreeMap<String, usize>,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub runtime: RuntimeConfig,
    pub embed: EmbedConfig,
    pub jobs: JobsConfig,
    pub serve: ServeConfig,
    pub eval: EvalConfig,
}

/// `sailstream eval`: the paper's offline metrics (see `eval`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    pub max_queries: usize,
    pub seed: u64,
    pub vanilla_history: usize,
    pub vanilla_query: usize,
    pub filtered_strategy: String,
}

/// The lookup API (`sailstream serve`, or the worker with `serve.in_worker`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    pub listen: String,
    pub in_worker: bool,
    pub bearer_token: String,
    pub catch_up_interval_ms: u64,
    pub secondary_path: PathBuf,
    pub max_batch: usize,
    pub max_body_bytes: usize,
    pub recent_positives: usize,
    pub match_threshold: f32,
    pub item_cache_mb: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {
    pub output_dir: PathBuf,
    pub copairs_window_ms: u64,
    pub copairs_min_support: u64,
    pub copairs_holdout_percent: u64,
    pub semantic_id_codebooks: Vec<usize>,
    pub semantic_id_iterations: usize,
    pub semantic_id_seed: u64,
    pub interests_max_clusters: usize,
    pub interests_half_life_days: f64,
    pub seq2item_history: usize,
    pub seq2item_query_len: usize,
    pub seq2item_min_query: usize,
    pub seq2item_sliding_targets: bool,
    pub seq2item_strong_positives: u32,
    pub seq2item_min_cosine: f32,
    pub seq2item_label_jaccard: f32,
    pub seq2item_min_behaviour_jaccard: f32,
    pub seq2item_collab_space: String,
    pub seq2item_collab_clusters: usize,
    pub seq2item_seed: u64,
    pub id2item_dim: usize,
    pub id2item_window: usize,
    pub id2item_negatives: usize,
    pub id2item_epochs: usize,
    pub id2item_learning_rate: f32,
    pub id2item_min_count: u32,
    pub id2item_seed: u64,
    pub id2item_neighbours: usize,
    pub training_temperature: f64,
    pub training_shard_rows: usize,
    #[serde(default)]
    pub training_weights: std::collections::BTreeMap<String, f64>,
    pub schedule_interval_s: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub history_cap: usize,
    pub positives_cap: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OfflineLogConfig {
    pub enabled: bool,
    pub path: PathBuf,
    pub segment_max_rows: u64,
    pub segment_max_age_s: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    pub max_backoff_ms: u64,
    pub stats_interval_ms: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    Jsonl,
    Parquet,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileInput {
    pub path: PathBuf,
    pub topic: String,
    pub format: FileFormat,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    pub batch_size: usize,
    pub linger_ms: u64,
    pub replay_batch_size: usize,
    pub state_cache_mb: usize,
    #[serde(default)]
    pub files: Vec<FileInput>,
}

/// How a worker gets its partitions (see `ingest::kafka`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Assignment {
    Manual,
    Group,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    pub group_id: String,
    pub assignment: Assignment,
    pub compression: String,
    #[serde(default)]
    pub client: BTreeMap<String, String>,
    pub topics: TopicNames,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TopicNames {
    pub items: String,
    pub behaviours: String,
    pub id_embeddings: String,
    pub item_embeddings: String,
    pub dlq: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PositivesConfig {
    pub actions: Vec<Action>,
    pub dwell_actions: Vec<Action>,
    pub min_dwell_ms: u64,
    pub min_rating: f64,
}

/// Decoding limits; the JSON Schemas in `schemas/` state the same numbers for the defaults.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_id_bytes: usize,
    pub max_text_chars: usize,
    pub max_tags: usize,
    pub max_tag_chars: usize,
    pub max_frames: usize,
    pub max_inline_media_bytes: usize,
    pub max_record_bytes: usize,
    pub max_context_entries: usize,
    pub max_vector_dim: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub enabled: bool,
    pub listen: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub level: String,
    pub format: String,
}

/// Where inference runs. `Auto` takes CUDA when the provider loads and says which it got.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Auto,
    Cuda,
    Cpu,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EmbedConfig {
    pub enabled: bool,
    pub model_dir: String,
    pub device: Device,
    pub batch_size: usize,
    pub max_wait_ms: u64,
    pub preprocess_threads: usize,
    pub inference_threads: usize,
    pub fetch_timeout_ms: u64,
    pub publish: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    pub onnxruntime_lib: String,
}

impl Default for Config {
    fn default() -> Self {
        Config::from_layers(None, std::iter::empty()).expect("built-in defaults are valid")
    }
}

impl Config {
    /// Loads the effective config from the defaults, an optional file and the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config> {
        Config::from_layers(file, std::env::vars())
    }

    /// Same as [`Config::load`], with the environment given explicitly (tests, tools).
    pub fn from_layers(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config> {
        let mut merged: toml::Table = toml::from_str(DEFAULTS_TOML)
            .map_err(|e| Error::Internal(format!("built-in defaults do not parse: {e}")))?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::io(format!("reading config file {}", path.display()), e))?;
            let layer: toml::Table = toml::from_str(&text)
                .map_err(|e| Error::config(path.display().to_string(), e.to_string()))?;
            merge_tables(&mut merged, layer, "");
        }
        let mut overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        overrides.sort();
        for (name, value) in overrides {
            apply_env_override(&mut merged, &name, &value)?;
        }
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(merged)).map_err(|e| {
                let key = e.path().to_string();
                Error::config(key, e.into_inner().message().to_string())
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every bound the types cannot express. Called by the loaders; public for configs built in code.
    pub fn validate(&self) -> Result<()> {
        fn range(key: &str, value: impl Into<u64>, min: u64, max: u64) -> Result<()> {
            let value = value.into();
            if value < min || value > max {
                return Err(Error::config(
                    key,
                    format!("must be between {min} and {max}, got {value}"),
                ));
            }
            Ok(())
        }
        let size = |n: usize| n as u64;
        fn non_empty(key: &str, value: &str) -> Result<()> {
            if value.trim().is_empty() {
                return Err(Error::config(key, "must not be empty"));
            }
            Ok(())
        }
        if self.store.path.as_os_str().is_empty() {
            return Err(Error::config("store.path", "must not be empty"));
        }
        range(
            "store.history_cap",
            size(self.store.history_cap),
            1,
            100_000,
        )?;
        range(
            "store.positives_cap",
            size(self.store.positives_cap),
            1,
            100_000,
        )?;
        range(
            "ingest.batch_size",
            size(self.ingest.batch_size),
            1,
            1_000_000,
        )?;
        range("ingest.linger_ms", self.ingest.linger_ms, 0, 60_000)?;
        range(
            "ingest.replay_batch_size",
            size(self.ingest.replay_batch_size),
            1,
            1_000_000,
        )?;
        range(
            "ingest.state_cache_mb",
            size(self.ingest.state_cache_mb),
            0,
            1 << 20,
        )?;
        if self.offline_log.path.as_os_str().is_empty() {
            return Err(Error::config("offline_log.path", "must not be empty"));
        }
        range(
            "offline_log.segment_max_rows",
            self.offline_log.segment_max_rows,
            1,
            10_000_000,
        )?;
        range(
            "offline_log.segment_max_age_s",
            self.offline_log.segment_max_age_s,
            1,
            86_400,
        )?;
        range(
            "worker.max_backoff_ms",
            self.worker.max_backoff_ms,
            100,
            600_000,
        )?;
        range(
            "worker.stats_interval_ms",
            self.worker.stats_interval_ms,
            100,
            3_600_000,
        )?;
        let inputs = [
            &self.kafka.topics.items,
            &self.kafka.topics.behaviours,
            &self.kafka.topics.id_embeddings,
        ];
        for (i, file) in self.ingest.files.iter().enumerate() {
            if file.path.as_os_str().is_empty() {
                return Err(Error::config(
                    format!("ingest.files[{i}].path"),
                    "must not be empty",
                ));
            }
            if !inputs.contains(&&file.topic) {
                return Err(Error::config(
                    format!("ingest.files[{i}].topic"),
                    format!(
                        "'{}' is not an input topic (expected one of {})",
                        file.topic,
                        inputs
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        range(
            "jobs.copairs_window_ms",
            self.jobs.copairs_window_ms,
            1,
            365 * 86_400_000,
        )?;
        range(
            "jobs.copairs_min_support",
            self.jobs.copairs_min_support,
            1,
            1_000_000,
        )?;
        if self.jobs.semantic_id_codebooks.is_empty() || self.jobs.semantic_id_codebooks.len() > 8 {
            return Err(Error::config(
                "jobs.semantic_id_codebooks",
                "give 1 to 8 levels, e.g. [256, 256, 256]",
            ));
        }
        for (i, &k) in self.jobs.semantic_id_codebooks.iter().enumerate() {
            range(
                &format!("jobs.semantic_id_codebooks[{i}]"),
                size(k),
                1,
                65_536,
            )?;
        }
        range(
            "jobs.semantic_id_iterations",
            size(self.jobs.semantic_id_iterations),
            1,
            1_000,
        )?;
        range(
            "jobs.interests_max_clusters",
            size(self.jobs.interests_max_clusters),
            1,
            64,
        )?;
        if !(self.jobs.interests_half_life_days > 0.0
            && self.jobs.interests_half_life_days <= 3650.0)
        {
            return Err(Error::config(
                "jobs.interests_half_life_days",
                "must be in (0, 3650]",
            ));
        }
        let j = &self.jobs;
        range(
            "jobs.seq2item_history",
            size(j.seq2item_history),
            1,
            100_000,
        )?;
        range(
            "jobs.seq2item_query_len",
            size(j.seq2item_query_len),
            1,
            1_000,
        )?;
        range(
            "jobs.seq2item_min_query",
            size(j.seq2item_min_query),
            1,
            size(j.seq2item_query_len),
        )?;
        range(
            "jobs.seq2item_strong_positives",
            u64::from(j.seq2item_strong_positives),
            1,
            1_000,
        )?;
        for (key, v, lo) in [
            ("jobs.seq2item_min_cosine", j.seq2item_min_cosine, -1.0),
            ("jobs.seq2item_label_jaccard", j.seq2item_label_jaccard, 0.0),
            (
                "jobs.seq2item_min_behaviour_jaccard",
                j.seq2item_min_behaviour_jaccard,
                0.0,
            ),
        ] {
            if !(lo..=1.0).contains(&v) {
                return Err(Error::config(key, format!("must be in [{lo}, 1], got {v}")));
            }
        }
        range(
            "jobs.seq2item_collab_clusters",
            size(j.seq2item_collab_clusters),
            1,
            65_536,
        )?;
        range("jobs.id2item_dim", size(j.id2item_dim), 2, 1_024)?;
        range("jobs.id2item_window", size(j.id2item_window), 1, 100)?;
        range("jobs.id2item_negatives", size(j.id2item_negatives), 1, 100)?;
        range("jobs.id2item_epochs", size(j.id2item_epochs), 1, 1_000)?;
        if !(j.id2item_learning_rate > 0.0 && j.id2item_learning_rate <= 1.0) {
            return Err(Error::config(
                "jobs.id2item_learning_rate",
                "must be in (0, 1]",
            ));
        }
        range(
            "jobs.id2item_min_count",
            u64::from(j.id2item_min_count),
            1,
            1_000_000,
        )?;
        range(
            "jobs.id2item_neighbours",
            size(j.id2item_neighbours),
            0,
            1_000,
        )?;
        if !(0.0..=1.0).contains(&j.training_temperature) {
            return Err(Error::config(
                "jobs.training_temperature",
                "must be in [0, 1] (0: equal weights, 1: proportional to rows)",
            ));
        }
        range(
            "jobs.training_shard_rows",
            size(j.training_shard_rows),
            1_000,
            100_000_000,
        )?;
        for (name, w) in &j.training_weights {
            if !(w.is_finite() && *w >= 0.0) {
                return Err(Error::config(
                    format!("jobs.training_weights.{name}"),
                    format!("must be a finite weight >= 0, got {w}"),
                ));
            }
        }
        range(
            "jobs.schedule_interval_s",
            j.schedule_interval_s,
            0,
            30 * 86_400,
        )?;
        range("embed.batch_size", size(self.embed.batch_size), 1, 4096)?;
        range("embed.max_wait_ms", self.embed.max_wait_ms, 0, 600_000)?;
        range(
            "embed.preprocess_threads",
            size(self.embed.preprocess_threads),
            0,
            256,
        )?;
        range(
            "embed.inference_threads",
            size(self.embed.inference_threads),
            0,
            256,
        )?;
        range(
            "embed.fetch_timeout_ms",
            self.embed.fetch_timeout_ms,
            1,
            600_000,
        )?;
        non_empty("kafka.brokers", &self.kafka.brokers)?;
        non_empty("kafka.group_id", &self.kafka.group_id)?;
        if !["none", "lz4", "zstd"].contains(&self.kafka.compression.as_str()) {
            return Err(Error::config(
                "kafka.compression",
                format!(
                    "must be none, lz4 or zstd, got '{}' (snappy batches cannot be fetched back from Tansu)",
                    self.kafka.compression
                ),
            ));
        }
        let t = &self.kafka.topics;
        let topics = [
            ("kafka.topics.items", &t.items),
            ("kafka.topics.behaviours", &t.behaviours),
            ("kafka.topics.id_embeddings", &t.id_embeddings),
            ("kafka.topics.item_embeddings", &t.item_embeddings),
            ("kafka.topics.dlq", &t.dlq),
        ];
        for (i, (key, name)) in topics.iter().enumerate() {
            non_empty(key, name)?;
            if let Some((other, _)) = topics[..i].iter().find(|(_, n)| n == name) {
                return Err(Error::config(
                    *key,
                    format!("'{name}' is already used by {other}"),
                ));
            }
        }
        if !self.positives.min_rating.is_finite() {
            return Err(Error::config(
                "positives.min_rating",
                "must be a finite number",
            ));
        }
        let l = &self.limits;
        range("limits.max_id_bytes", size(l.max_id_bytes), 1, 4096)?;
        range("limits.max_text_chars", size(l.max_text_chars), 1, 1 << 20)?;
        range("limits.max_tags", size(l.max_tags), 0, 4096)?;
        range("limits.max_tag_chars", size(l.max_tag_chars), 1, 4096)?;
        range("limits.max_frames", size(l.max_frames), 0, 1024)?;
        range(
            "limits.max_inline_media_bytes",
            size(l.max_inline_media_bytes),
            1,
            64 << 20,
        )?;
        range(
            "limits.max_record_bytes",
            size(l.max_record_bytes),
            1024,
            256 << 20,
        )?;
        range(
            "limits.max_context_entries",
            size(l.max_context_entries),
            0,
            1024,
        )?;
        range("limits.max_vector_dim", size(l.max_vector_dim), 1, 65_536)?;
        for (space, dim) in &self.id_spaces {
            let key = format!("id_spaces.{space}");
            if space.is_empty()
                || space.len() > 64
                || !space
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(Error::config(
                    key,
                    "space names are 1-64 characters of a-z, 0-9 and _",
                ));
            }
            range(&key, size(*dim), 1, size(l.max_vector_dim))?;
        }
        self.metrics
            .listen
            .parse::<SocketAddr>()
            .map_err(|e| Error::config("metrics.listen", format!("not an ip:port address: {e}")))?;
        range(
            "eval.max_queries",
            size(self.eval.max_queries),
            1,
            10_000_000,
        )?;
        // Histories hold at most store.history_cap items; a larger value just takes all of them.
        range(
            "eval.vanilla_history",
            size(self.eval.vanilla_history),
            2,
            100_000,
        )?;
        range(
            "eval.vanilla_query",
            size(self.eval.vanilla_query),
            1,
            size(self.eval.vanilla_history) - 1,
        )?;
        let strategies: Vec<&str> = crate::jobs::seq2item::Strategy::ALL
            .iter()
            .map(|s| s.name())
            .collect();
        if !strategies.contains(&self.eval.filtered_strategy.as_str()) {
            return Err(Error::config(
                "eval.filtered_strategy",
                format!(
                    "'{}' is not a seq2item strategy; one of {}",
                    self.eval.filtered_strategy,
                    strategies.join(", ")
                ),
            ));
        }
        let serve = &self.serve;
        serve
            .listen
            .parse::<SocketAddr>()
            .map_err(|e| Error::config("serve.listen", format!("not an ip:port address: {e}")))?;
        if serve.in_worker && serve.listen == self.metrics.listen {
            return Err(Error::config(
                "serve.listen",
                "must differ from metrics.listen (the lookup API serves /metrics itself)",
            ));
        }
        if !serve.bearer_token.is_empty()
            && (serve.bearer_token.len() < 16 || !serve.bearer_token.is_ascii())
        {
            return Err(Error::config(
                "serve.bearer_token",
                "must be empty (no authentication) or at least 16 ASCII characters",
            ));
        }
        range(
            "serve.catch_up_interval_ms",
            serve.catch_up_interval_ms,
            10,
            3_600_000,
        )?;
        range("serve.max_batch", size(serve.max_batch), 1, 100_000)?;
        range(
            "serve.max_body_bytes",
            size(serve.max_body_bytes),
            1024,
            256 << 20,
        )?;
        range(
            "serve.recent_positives",
            size(serve.recent_positives),
            1,
            size(self.store.positives_cap),
        )?;
        range("serve.item_cache_mb", size(serve.item_cache_mb), 0, 1 << 20)?;
        if !(-1.0..=1.0).contains(&serve.match_threshold) {
            return Err(Error::config(
                "serve.match_threshold",
                format!("a cosine, in [-1, 1]; got {}", serve.match_threshold),
            ));
        }
        if !["text", "json"].contains(&self.log.format.as_str()) {
            return Err(Error::config(
                "log.format",
                format!("must be text or json, got '{}'", self.log.format),
            ));
        }
        non_empty("log.level", &self.log.level)?;
        Ok(())
    }

    /// The effective config as TOML, for `sailstream config show`.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| Error::Internal(format!("config to toml: {e}")))
    }

    pub fn serve_addr(&self) -> SocketAddr {
        // validate() has checked it parses.
        self.serve.listen.parse().expect("serve.listen validated")
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        // validate() has checked it parses.
        self.metrics
            .listen
            .parse()
            .expect("metrics.listen validated")
    }
}

/// Deep merge: tables merge key by key, everything else (arrays included) is replaced by the upper layer.
fn merge_tables(base: &mut toml::Table, upper: toml::Table, prefix: &str) {
    for (key, value) in upper {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(u)) => merge_tables(b, u, &path),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Applies `SAILSTREAM__A__B=value` to `a.b`. The value is read as the type the key already has, so
/// `SAILSTREAM__KAFKA__GROUP_ID=123` stays a string and `SAILSTREAM__INGEST__BATCH_SIZE=abc` is an error.
fn apply_env_override(root: &mut toml::Table, name: &str, raw: &str) -> Result<()> {
    let segments: Vec<String> = name[ENV_PREFIX.len()..]
        .split("__")
        .map(|s| s.to_ascii_lowercase())
        .collect();
    let key = segments.join(".");
    if segments.iter().any(|s| s.is_empty()) {
        return Err(Error::config(
            name,
            "malformed override name (use SAILSTREAM__SECTION__KEY)",
        ));
    }
    let (last, parents) = segments.split_last().expect("at least one segment");
    let mut table = root;
    let mut walked = String::new();
    for seg in parents {
        walked = if walked.is_empty() {
            seg.clone()
        } else {
            format!("{walked}.{seg}")
        };
        table = match table.get_mut(seg) {
            Some(toml::Value::Table(t)) => t,
            Some(_) => {
                return Err(Error::config(
                    &key,
                    format!("{name}: '{walked}' is not a section"),
                ));
            }
            None => return Err(Error::config(&key, format!("{name}: unknown key"))),
        };
    }
    let value = match table.get(last) {
        Some(existing) => parse_like(existing, raw)
            .map_err(|problem| Error::config(&key, format!("{name}={raw:?}: {problem}")))?,
        None if OPEN_TABLES.contains(&walked.as_str()) => {
            if walked == "id_spaces" {
                let dim: i64 = raw.trim().parse().map_err(|_| {
                    Error::config(&key, format!("{name}={raw:?}: expected an integer"))
                })?;
                toml::Value::Integer(dim)
            } else if walked == "jobs.training_weights" {
                let weight: f64 = raw.trim().parse().map_err(|_| {
                    Error::config(&key, format!("{name}={raw:?}: expected a number"))
                })?;
                toml::Value::Float(weight)
            } else {
                toml::Value::String(raw.to_string())
            }
        }
        None => return Err(Error::config(&key, format!("{name}: unknown key"))),
    };
    table.insert(last.clone(), value);
    Ok(())
}

fn parse_like(existing: &toml::Value, raw: &str) -> std::result::Result<toml::Value, String> {
    use toml::Value;
    match existing {
        Value::String(_) => Ok(Value::String(raw.to_string())),
        Value::Integer(_) => raw
            .trim()
            .parse::<i64>()
            .map(Value::Integer)
            .map_err(|_| "expected an integer".into()),
        Value::Float(_) => raw
            .trim()
            .parse::<f64>()
            .map(Value::Float)
            .map_err(|_| "expected a number".into()),
        Value::Boolean(_) => match raw.trim() {
            "true" | "1" => Ok(Value::Boolean(true)),
            "false" | "0" => Ok(Value::Boolean(false)),
            _ => Err("expected true or false".into()),
        },
        Value::Array(items) => {
            let trimmed = raw.trim();
            if trimmed.starts_with('[') {
                let doc: toml::Table = toml::from_str(&format!("v = {trimmed}"))
                    .map_err(|e| format!("not a TOML array: {e}"))?;
                Ok(doc["v"].clone())
            } else if items.iter().all(|v| v.is_str()) {
                // Comma-separated shorthand for string lists: "like,share".
                Ok(Value::Array(
                    trimmed
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| Value::String(s.to_string()))
                        .collect(),
                ))
            } else {
                Err("expected a TOML array, e.g. [1, 2]".into())
            }
        }
        Value::Table(_) => Err("is a section; set its keys one by one".into()),
        Value::Datetime(_) => Err("datetimes are not configurable".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::from_layers(None, env(&[])).unwrap();
        assert_eq!(c.store.positives_cap, 1000);
        assert_eq!(c.kafka.topics.dlq, "sail.dlq");
        assert_eq!(c.id_spaces.get("gid"), Some(&64));
    }

    #[test]
    fn file_then_env_layering() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.toml");
        std::fs::write(
            &file,
            "[store]\npath = \"/tmp/x\"\nhistory_cap = 50\n[kafka]\ngroup_id = \"from-file\"\n",
        )
        .unwrap();
        let c = Config::from_layers(
            Some(&file),
            env(&[
                ("SAILSTREAM__STORE__HISTORY_CAP", "75"),
                ("SAILSTREAM__KAFKA__GROUP_ID", "123"),
                ("SAILSTREAM__POSITIVES__ACTIONS", "like, share"),
                ("SAILSTREAM__KAFKA__CLIENT__SECURITY.PROTOCOL", "ssl"),
                ("SAILSTREAM__ID_SPACES__CLUSTER", "32"),
                ("SAILSTREAM__JOBS__TRAINING_WEIGHTS__COPAIRS", "2.5"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.store.path, PathBuf::from("/tmp/x"));
        assert_eq!(c.store.history_cap, 75, "env beats file");
        assert_eq!(c.store.positives_cap, 1000, "untouched keys keep defaults");
        assert_eq!(c.kafka.group_id, "123", "string keys stay strings");
        assert_eq!(c.positives.actions, vec![Action::Like, Action::Share]);
        assert_eq!(c.kafka.client.get("security.protocol").unwrap(), "ssl");
        assert_eq!(c.id_spaces.get("cluster"), Some(&32));
        assert_eq!(c.jobs.training_weights.get("copairs"), Some(&2.5));
    }

    #[test]
    fn errors_name_the_key() {
        let cases: Vec<(Vec<(String, String)>, &str)> = vec![
            (
                env(&[("SAILSTREAM__INGEST__BATCH_SIZE", "0")]),
                "ingest.batch_size",
            ),
            (
                env(&[("SAILSTREAM__INGEST__BATCH_SIZE", "lots")]),
                "ingest.batch_size",
            ),
            (env(&[("SAILSTREAM__STORE__NOPE", "1")]), "store.nope"),
            (
                env(&[("SAILSTREAM__KAFKA__COMPRESSION", "snappy")]),
                "kafka.compression",
            ),
            (
                env(&[("SAILSTREAM__METRICS__LISTEN", "localhost")]),
                "metrics.listen",
            ),
            (
                env(&[("SAILSTREAM__POSITIVES__ACTIONS", "like,teleport")]),
                "positives.actions",
            ),
            (
                env(&[("SAILSTREAM__KAFKA__TOPICS__DLQ", "sail.items")]),
                "kafka.topics.dlq",
            ),
            (env(&[("SAILSTREAM__ID_SPACES__GID", "0")]), "id_spaces.gid"),
        ];
        for (vars, key) in cases {
            let err = Config::from_layers(None, vars.clone()).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(key), "{vars:?}: '{text}' should name {key}");
            assert_eq!(err.fault(), crate::error::Fault::User);
        }
    }

    #[test]
    fn unknown_key_in_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.toml");
        std::fs::write(&file, "[ingest]\nbatch_sise = 10\n").unwrap();
        let text = Config::from_layers(Some(&file), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(text.contains("ingest"), "{text}");
        assert!(text.contains("batch_sise"), "{text}");
    }

    #[test]
    fn show_round_trips() {
        let c = Config::default();
        let text = c.to_toml().unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, c);
    }
}
