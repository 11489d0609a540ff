//! The `sailstream` command line.

mod cli;

/// See Cargo.toml: large per-request buffers are reused from the allocator's pages instead of mmap'd each time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sailstream",
    version,
    about = "Real-time content and behaviour features for recommenders"
)]
struct Cli {
    /// Pipeline config file (TOML) layered over the built-in defaults; SAILSTREAM__SECTION__KEY variables
    /// override both.
    #[arg(short, long, global = true, env = "SAILSTREAM_CONFIG")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay the bundled sample (the configured ingest.files) into the store, embed it, run every job, start
    /// the lookup API and print what was stored, produced and served.
    Demo {
        /// A folder of item and behaviour dumps to backfill instead of the bundled sample (scripts/demo.sh passes
        /// MovieLens-100k, converted by scripts/setup.sh).
        #[arg(long, value_name = "DIR")]
        events: Option<PathBuf>,
        /// Go through a running Kafka-compatible broker at BROKERS instead of replaying files: produce the
        /// --events dumps to their topics (once), then run the streaming worker until it has consumed them all.
        #[arg(long, value_name = "BROKERS", requires = "events")]
        kafka: Option<String>,
        /// Keep the lookup API running on serve.listen after the demo, until Ctrl-C.
        #[arg(long)]
        keep_serving: bool,
    },
    /// Consume sail.items, sail.behaviours and sail.id_embeddings from Kafka into the store and the offline
    /// log until SIGTERM/SIGINT (then drain, flush and exit 0). Serves /metrics.
    Worker,
    /// Serve the lookup API (item embeddings, user interests, match features; schemas/openapi.json) on
    /// serve.listen, following the live store as a RocksDB secondary instance, until SIGTERM/SIGINT.
    Serve {
        /// Serve a checkpoint (`sailstream store checkpoint`) or other static copy instead of the live store.
        #[arg(long, value_name = "DIR")]
        checkpoint: Option<PathBuf>,
    },
    /// Replay files into the store; with no --file, the configured ingest.files. Resumes where it stopped.
    Replay {
        /// A file to replay, as PATH:TOPIC (format from the extension: .jsonl or .parquet). Repeatable.
        #[arg(long = "file", value_name = "PATH:TOPIC")]
        files: Vec<String>,
        /// Where dead letters go (JSONL); default: dlq.jsonl beside the store.
        #[arg(long)]
        dlq: Option<PathBuf>,
    },
    /// Embed items waiting in the store (new item versions); with --backfill, every item whose vector is
    /// missing, stale, or from another model version (lookups keep the old vector until it is replaced).
    Embed {
        #[arg(long)]
        backfill: bool,
    },
    /// The items nearest to one item by embedding cosine (exact scan of the store).
    Nearest {
        item_id: String,
        #[arg(short, default_value_t = 5)]
        k: usize,
    },
    /// Backfill from history: replay a folder of item and behaviour dumps (JSONL or Parquet), embed every
    /// item, then run every job in order. Resumable: a rerun over the same files skips finished steps.
    Backfill {
        /// Folder with items*.jsonl|parquet, behaviours*.jsonl|parquet and optionally
        /// id_embeddings*.jsonl|parquet (or sub-folders named items/, behaviours/, id_embeddings/).
        #[arg(long)]
        events: PathBuf,
        /// Redo every step even when a previous run over the same files finished it.
        #[arg(long)]
        restart: bool,
        /// Where dead letters go (JSONL); default: dlq.jsonl beside the store.
        #[arg(long)]
        dlq: Option<PathBuf>,
    },
    /// The paper's offline metrics for the stored item embeddings (Recall@k on co-consumption pairs, ID-space
    /// neighbours and seq2item samples, separability, NMI, mutual top-1), from the store and the job exports.
    Eval {
        /// Also evaluate another store (e.g. one embedded by another model version) and compare: both columns,
        /// the difference, Kendall tau and top-10 overlap between the two models.
        #[arg(long, value_name = "STORE")]
        compare: Option<PathBuf>,
        /// Also write the report(s) as JSON to this file ("-" for stdout instead of the table).
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// Batch jobs on DataFusion over the offline log.
    Job {
        #[command(subcommand)]
        command: JobCommand,
    },
    /// Inspect or change configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Inspect or back up the online store.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Check that the real parts are installed and usable: store, ONNX Runtime, broker binary.
    Doctor,
}

#[derive(Subcommand)]
enum JobCommand {
    /// Run one job now: copairs, semantic_ids, id2item, seq2item, interests or training (in dependency order).
    Run { name: String },
    /// Run every job, in dependency order.
    All,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration (defaults, then file, then environment).
    Show,
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Keys per column family and stored source positions.
    Stats,
    /// Write a consistent copy of the store to DEST (a new directory), usable as a backup or read-only replica.
    Checkpoint { dest: PathBuf },
    /// Print one item as stored.
    Item { item_id: String },
    /// Print one user's history and positives.
    User { user_id: String },
}

fn main() -> ExitCode {
    let args = Cli::parse();
    let config = match sailstream::Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    cli::init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        match args.command {
            Command::Demo {
                events,
                kafka,
                keep_serving,
            } => cli::demo(&config, events, kafka, keep_serving).await,
            Command::Worker => cli::worker(&config).await,
            Command::Serve { checkpoint } => cli::serve(&config, checkpoint).await,
            Command::Replay { files, dlq } => cli::replay(&config, &files, dlq).await.map(|_| ()),
            Command::Embed { backfill } => cli::embed(&config, backfill).map(|_| ()),
            Command::Nearest { item_id, k } => cli::nearest(&config, &item_id, k),
            Command::Backfill {
                events,
                restart,
                dlq,
            } => cli::backfill::run(&config, &events, restart, dlq).await,
            Command::Eval { compare, json } => cli::eval(&config, compare, json),
            Command::Job {
                command: JobCommand::Run { name },
            } => cli::job_run(&config, &name).await,
            Command::Job {
                command: JobCommand::All,
            } => cli::job_all(&config).await,
            Command::Config {
                command: ConfigCommand::Show,
            } => cli::config_show(&config),
            Command::Store { command } => match command {
                StoreCommand::Stats => cli::store_stats(&config),
                StoreCommand::Checkpoint { dest } => cli::store_checkpoint(&config, &dest),
                StoreCommand::Item { item_id } => cli::store_item(&config, &item_id),
                StoreCommand::User { user_id } => cli::store_user(&config, &user_id),
            },
            Command::Doctor => cli::doctor(&config),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let fault = match e.fault() {
                sailstream::Fault::User => "fix the input or config",
                sailstream::Fault::External => {
                    if e.is_retryable() {
                        "external, retryable"
                    } else {
                        "external"
                    }
                }
                sailstream::Fault::Internal => "internal: please report",
            };
            eprintln!("error: {e} ({fault})");
            ExitCode::from(match e.fault() {
                sailstream::Fault::User => 2,
                _ => 1,
            })
        }
    }
}
