//! What each subcommand does; `main.rs` only parses arguments and maps errors to exit codes.

pub mod backfill;
mod kafka_demo;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use sailstream::config::{Config, FileFormat, FileInput};
use sailstream::embed::Embedder;
use sailstream::embed::stage::{EmbedReport, EmbedStage};
use sailstream::ingest::files::FileSource;
use sailstream::ingest::{BatchReport, DeadLetterSink, Ingestor};
use sailstream::store::{Store, cf};
use sailstream::{Error, Result, runtime};

pub fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

pub fn config_show(config: &Config) -> Result<()> {
    let mut shown = config.clone();
    // A secret does not belong in terminal scrollback or support tickets: say that it is set, not what it is.
    if !shown.serve.bearer_token.is_empty() {
        shown.serve.bearer_token = "<set, not shown>".to_string();
    }
    print!("{}", shown.to_toml()?);
    Ok(())
}

fn default_dlq_path(config: &Config) -> PathBuf {
    let store = &config.store.path;
    store
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join("dlq.jsonl")
}

/// Parses `PATH:TOPIC` (format from the extension).
fn parse_file_arg(arg: &str) -> Result<FileInput> {
    let (path, topic) = arg.rsplit_once(':').ok_or_else(|| {
        Error::invalid(
            "--file",
            format!("'{arg}' is not PATH:TOPIC (e.g. events.jsonl:sail.behaviours)"),
        )
    })?;
    let format = match Path::new(path).extension().and_then(|e| e.to_str()) {
        Some("jsonl") | Some("ndjson") | Some("json") => FileFormat::Jsonl,
        Some("parquet") => FileFormat::Parquet,
        _ => {
            return Err(Error::invalid(
                "--file",
                format!("'{path}': extension must be .jsonl, .ndjson or .parquet"),
            ));
        }
    };
    Ok(FileInput {
        path: PathBuf::from(path),
        topic: topic.to_string(),
        format,
    })
}

/// Replays files into the store and returns what happened.
pub async fn replay(
    config: &Config,
    files: &[String],
    dlq: Option<PathBuf>,
) -> Result<BatchReport> {
    let mut config = config.clone();
    if !files.is_empty() {
        config.ingest.files = files
            .iter()
            .map(|f| parse_file_arg(f))
            .collect::<Result<_>>()?;
        config.validate()?;
    }
    if config.ingest.files.is_empty() {
        return Err(Error::config("ingest.files", "no files to replay"));
    }
    let dlq_path = dlq.unwrap_or_else(|| default_dlq_path(&config));
    let store = Arc::new(Store::open(&config.store.path)?);
    let positions: HashMap<(String, i32), i64> = store.offsets()?.into_iter().collect();
    let mut source = FileSource::open(&config.ingest.files, &positions)?;
    let config = Arc::new(config);
    let mut ingestor = Ingestor::new(
        store.clone(),
        config.clone(),
        DeadLetterSink::file(&dlq_path),
    )?;

    for f in &config.ingest.files {
        eprintln!("  {} -> {}", f.path.display(), f.topic);
    }
    let (_, total_bytes) = source.progress();
    let bar = ProgressBar::new(total_bytes);
    bar.set_style(
        ProgressStyle::with_template("{spinner} replay [{bar:30}] {bytes}/{total_bytes} {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    let started = Instant::now();
    let mut records = 0usize;
    // Files end on their own; Ctrl-C stops between batches with everything before it committed.
    let stop = Box::pin(async {
        let _ = tokio::signal::ctrl_c().await;
    });
    let done = source.progress_counter();
    let report = ingestor
        .run(&mut source, stop, |r| {
            records += r.records;
            bar.set_position(done.load(std::sync::atomic::Ordering::Relaxed));
            bar.set_message(format!("{records} records"));
        })
        .await?;
    bar.set_position(source.progress().0);
    bar.finish_and_clear();
    drop(ingestor);
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "replayed {} records in {:.2}s ({:.0} records/s): {} applied, {} already applied (skipped), {} stale versions ignored, {} dead-lettered{}",
        report.records,
        secs,
        report.records as f64 / secs.max(1e-9),
        report.applied,
        report.duplicates,
        report.stale_items,
        report.dead_lettered,
        if report.dead_lettered > 0 {
            format!(" (see {})", dlq_path.display())
        } else {
            String::new()
        }
    );
    if config.embed.enabled {
        embed_with(&config, store, false)?;
    }
    Ok(report)
}

/// Embeds what is pending (or, with `backfill`, everything not embedded by the current model) with a progress bar.
pub fn embed(config: &Config, backfill: bool) -> Result<EmbedReport> {
    let store = Arc::new(Store::open(&config.store.path)?);
    embed_with(config, store, backfill)
}

pub(crate) fn embed_with(
    config: &Config,
    store: Arc<Store>,
    backfill: bool,
) -> Result<EmbedReport> {
    let embedder = Embedder::load(config)?;
    let model = embedder.manifest().model.clone();
    let device = embedder.device();
    let mut stage = EmbedStage::new(embedder, store.clone());
    // Only the items family is counted: the others (item_users, log_pending, ...) can be far larger.
    let total_items = store.key_count(cf::ITEMS)?;
    let started = Instant::now();
    let bar = ProgressBar::new(total_items);
    bar.set_style(
        ProgressStyle::with_template("{spinner} embed [{bar:30}] {pos}/{len} items {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    let report = if backfill {
        stage.backfill(|scanned, r| {
            bar.set_position(scanned as u64);
            bar.set_message(format!("{} embedded", r.embedded));
        })?
    } else {
        let mut total = EmbedReport::default();
        let batch = config.embed.batch_size * 4;
        loop {
            let (r, _) = stage.run_pending(batch)?;
            total += r;
            bar.set_position((total.embedded + total.not_embeddable) as u64);
            if r.embedded + r.not_embeddable == 0 && stage.pending(1)? == 0 {
                break total;
            }
        }
    };
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "embedded {} items with {} {} on {device} in {secs:.2}s ({:.1} items/s); {} not embeddable, {} pictures/sounds left out",
        report.embedded,
        model.name,
        model.version,
        report.embedded as f64 / secs.max(1e-9),
        report.not_embeddable,
        report.media_dropped
    );
    Ok(report)
}

/// Exact nearest neighbours of one item among all stored embeddings of the same model version.
pub fn nearest(config: &Config, item_id: &str, k: usize) -> Result<()> {
    let store = Store::open_read_only(&config.store.path)?;
    for (id, score, title) in nearest_items(&store, item_id, k)? {
        println!("  {score:>6.3}  {id:<12} {}", truncate(&title, 60));
    }
    Ok(())
}

fn nearest_items(store: &Store, item_id: &str, k: usize) -> Result<Vec<(String, f32, String)>> {
    let query = store.item_embedding(item_id)?.ok_or_else(|| {
        Error::invalid(
            "item_id",
            format!("'{item_id}' has no embedding (run `sailstream embed`)"),
        )
    })?;
    let mut scored = Vec::new();
    store.for_each_item_embedding(|e| {
        if e.item_id != item_id && e.model == query.model && e.model_version == query.model_version
        {
            scored.push((
                e.item_id,
                sailstream::embed::cosine(&query.vector, &e.vector),
            ));
        }
        Ok(true)
    })?;
    scored.sort_by(|a, b| b.1.total_cmp(&a.1));
    scored.truncate(k);
    scored
        .into_iter()
        .map(|(id, score)| {
            let title = store
                .item(&id)?
                .and_then(|i| i.title.or(i.tags.first().cloned()))
                .unwrap_or_default();
            Ok((id, score, title))
        })
        .collect()
}

/// Runs one job (see `sailstream::jobs::ALL`) and prints what it wrote.
pub async fn job_run(config: &Config, name: &str) -> Result<()> {
    let store = Store::open(&config.store.path)?;
    let summary = sailstream::jobs::run(name, config, &store).await?;
    eprintln!("job {summary}");
    Ok(())
}

/// Runs every job in dependency order, stopping at the first failure.
pub async fn job_all(config: &Config) -> Result<()> {
    let store = Store::open(&config.store.path)?;
    for name in sailstream::jobs::ALL {
        let summary = sailstream::jobs::run(name, config, &store).await?;
        eprintln!("job {summary}");
    }
    Ok(())
}

pub async fn worker(config: &Config) -> Result<()> {
    let prometheus = if config.metrics.enabled {
        Some(sailstream::metrics::install_prometheus(
            config.metrics_addr(),
        )?)
    } else {
        None
    };
    let store = Arc::new(Store::open(&config.store.path)?);
    // With serve.in_worker the lookup API shares the store (snapshot reads) and stops with the worker.
    let (stop_serving, serving) = if config.serve.in_worker {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let served = sailstream::serve::run(
            config.clone(),
            sailstream::serve::Source::Shared(store.clone()),
            prometheus,
            async move {
                let _ = rx.await;
            },
        );
        // Said at once (a taken port, say), not when the worker stops; ingest goes on either way.
        let task = tokio::spawn(async move {
            let result = served.await;
            if let Err(e) = &result {
                tracing::error!(error = %e, "lookup API stopped; the worker goes on without it");
            }
            result
        });
        (Some(tx), Some(task))
    } else {
        (None, None)
    };
    let report = sailstream::ingest::worker::run_on(
        Arc::new(config.clone()),
        store,
        sailstream::ingest::worker::termination_signal(),
    )
    .await;
    if let (Some(tx), Some(task)) = (stop_serving, serving) {
        let _ = tx.send(());
        if let Err(e) = task.await {
            tracing::error!(error = %e, "lookup API task failed");
        }
    }
    let report = report?;
    eprintln!(
        "worker stopped: {} records, {} applied, {} dead-lettered, {} already applied",
        report.records, report.applied, report.dead_lettered, report.duplicates
    );
    Ok(())
}

/// `sailstream eval [--compare STORE] [--json FILE]`.
pub fn eval(config: &Config, compare: Option<PathBuf>, json: Option<PathBuf>) -> Result<()> {
    let store = Store::open_read_only(&config.store.path)?;
    let started = Instant::now();
    // With --compare, the other store is judged against this store's exports: the same pairs and samples.
    let (report, other) = sailstream::eval::run(config, &store, compare.as_deref())?;
    let as_json = || -> Result<String> {
        let value = match &other {
            None => serde_json::to_value(&report),
            Some(o) => serde_json::to_value(serde_json::json!({"this": &report, "other": o})),
        }
        .map_err(|e| Error::Internal(format!("eval report to JSON: {e}")))?;
        Ok(serde_json::to_string_pretty(&value).expect("a JSON value prints"))
    };
    match json.as_deref() {
        Some(p) if p == Path::new("-") => println!("{}", as_json()?),
        Some(p) => {
            std::fs::write(p, as_json()? + "\n")
                .map_err(|e| Error::io(format!("writing {}", p.display()), e))?;
            print!("{}", sailstream::eval::table(&report, other.as_ref()));
            eprintln!("JSON report written to {}", p.display());
        }
        None => print!("{}", sailstream::eval::table(&report, other.as_ref())),
    }
    eprintln!("evaluated in {:.2}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// `sailstream serve`: the lookup API on its own, following the live store (or over a checkpoint).
pub async fn serve(config: &Config, checkpoint: Option<PathBuf>) -> Result<()> {
    let prometheus = if config.metrics.enabled {
        Some(sailstream::metrics::install_recorder()?)
    } else {
        None
    };
    let source = match checkpoint {
        Some(path) => sailstream::serve::Source::Checkpoint(path),
        None => sailstream::serve::Source::Follow,
    };
    sailstream::serve::run(
        config.clone(),
        source,
        prometheus,
        sailstream::ingest::worker::termination_signal(),
    )
    .await?;
    eprintln!("lookup API stopped");
    Ok(())
}

/// The whole story: events in (the bundled sample, or a folder of dumps such as MovieLens-100k), items embedded,
/// every job, the quality table, then the lookup API answering a ranker's calls.
pub async fn demo(
    config: &Config,
    events: Option<PathBuf>,
    kafka: Option<String>,
    keep_serving: bool,
) -> Result<()> {
    if config.metrics.enabled
        && let Err(e) = sailstream::metrics::install_prometheus(config.metrics_addr())
    {
        eprintln!("warning: {e}; continuing without the metrics endpoint");
    }
    match (&events, kafka) {
        (None, Some(_)) => {
            return Err(Error::invalid(
                "--kafka",
                "needs --events DIR: the dumps to produce to the broker",
            ));
        }
        (Some(dir), Some(brokers)) => {
            let mut config = config.clone();
            config.kafka.brokers = brokers;
            println!(
                "sailstream demo: {} through the broker at {} (produce, then the streaming worker) into {}",
                dir.display(),
                config.kafka.brokers,
                config.store.path.display()
            );
            kafka_demo::ingest_through_kafka(&config, dir).await?;
            let store = Arc::new(Store::open(&config.store.path)?);
            if config.embed.enabled {
                // The worker embeds as it goes; whatever was still waiting when it stopped is embedded here.
                embed_with(&config, store.clone(), false)?;
                println!(
                    "\nRunning every job ({}):",
                    sailstream::jobs::ALL.join(" -> ")
                );
                for name in sailstream::jobs::ALL {
                    println!("  {}", sailstream::jobs::run(name, &config, &store).await?);
                }
            }
            drop(store);
            let store = Store::open_read_only(&config.store.path)?;
            print_store(&store, &config)?;
            if config.embed.enabled {
                print_nearest(&store)?;
            }
        }
        (Some(dir), None) => {
            println!(
                "sailstream demo: backfilling {} (ingest, embed, every job) into {}",
                dir.display(),
                config.store.path.display()
            );
            backfill::run(config, dir, false, None).await?;
            let store = Store::open_read_only(&config.store.path)?;
            print_store(&store, config)?;
            print_dead_letters(&default_dlq_path(config))?;
            if config.embed.enabled {
                print_nearest(&store)?;
            }
        }
        (None, None) => {
            println!(
                "sailstream demo: replaying the bundled sample through ingest into {}",
                config.store.path.display()
            );
            let report = replay(config, &[], None).await?;
            if report.records == 0 {
                println!(
                    "(nothing new: every record's position is already stored with the state, so nothing is applied twice)"
                );
            }
            let store = Store::open_read_only(&config.store.path)?;
            print_store(&store, config)?;
            print_dead_letters(&default_dlq_path(config))?;
            if config.embed.enabled {
                print_nearest(&store)?;
                drop(store);
                println!(
                    "\nRunning every job ({}):",
                    sailstream::jobs::ALL.join(" -> ")
                );
                let store = Store::open(&config.store.path)?;
                for name in sailstream::jobs::ALL {
                    println!("  {}", sailstream::jobs::run(name, config, &store).await?);
                }
            }
        }
    }
    if config.embed.enabled {
        print_features(&Store::open_read_only(&config.store.path)?, config)?;
        let (report, _) =
            sailstream::eval::run(config, &Store::open_read_only(&config.store.path)?, None)?;
        println!("\nQuality of the embeddings (`sailstream eval`, the paper's offline metrics):");
        print!("{}", sailstream::eval::table(&report, None));
        demo_lookups(config, keep_serving).await?;
    }
    if config.metrics.enabled {
        print_metrics(config);
    }
    Ok(())
}

/// Starts the lookup API over the demo's store and prints what a ranker would get from it.
async fn demo_lookups(config: &Config, keep_serving: bool) -> Result<()> {
    use sailstream::serve::Source;

    let store = Arc::new(Store::open(&config.store.path)?);
    let (user, candidates) = {
        let user = store.ids(cf::USER_INTERESTS, 1)?.into_iter().next();
        let mut items = store.ids(cf::ITEM_EMBEDDINGS, 1000)?;
        // A spread of the catalogue, plus one id nobody knows (to show the flag instead of an error).
        let step = (items.len() / 5).max(1);
        items = items.into_iter().step_by(step).take(5).collect();
        items.push("no-such-item".into());
        (user, items)
    };
    let Some(user) = user else {
        return Ok(());
    };
    let addr = config.serve_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(sailstream::serve::run(
        config.clone(),
        Source::Shared(store),
        None,
        async move {
            let _ = stopped.await;
        },
    ));
    println!(
        "
Lookup API at http://{addr} (schemas/openapi.json):"
    );
    let printed = tokio::task::spawn_blocking(move || print_lookups(addr, &user, &candidates))
        .await
        .map_err(|e| Error::Internal(format!("demo lookups: {e}")))?;
    if let Err(e) = printed {
        // The server may not have started (port taken): say so, stop it, and go on with the demo.
        eprintln!("warning: lookups failed: {e}");
    } else if keep_serving {
        println!("  serving until Ctrl-C (try the curl commands above)");
        let _ = tokio::signal::ctrl_c().await;
    }
    let _ = stop.send(());
    match server.await {
        Ok(Err(e)) => eprintln!("warning: lookup API: {e}"),
        Err(e) => eprintln!("warning: lookup API task: {e}"),
        Ok(Ok(())) => {}
    }
    Ok(())
}

fn print_lookups(addr: std::net::SocketAddr, user: &str, candidates: &[String]) -> Result<()> {
    use sailstream::serve::client::Client;

    let mut client = Client::new(addr);
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.get("/healthz").is_err() {
        if Instant::now() > deadline {
            return Err(Error::invalid(
                "serve.listen",
                format!("the lookup API did not start on {addr} (port in use?)"),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let item = &candidates[0];
    let path = format!("/v1/items/{item}/embedding?dim=384");
    let body = client.get(&path)?.json()?;
    let head: Vec<String> = body["vector"]
        .as_array()
        .map(|v| {
            v.iter()
                .take(4)
                .map(|x| format!("{:.3}", x.as_f64().unwrap_or(0.0)))
                .collect()
        })
        .unwrap_or_default();
    println!("  curl -s http://{addr}{path}");
    println!(
        "    {item}: {} {}, dim {}, vector [{}, ...], semantic IDs {}",
        body["model"].as_str().unwrap_or("?"),
        body["model_version"].as_str().unwrap_or("?"),
        body["dim"],
        head.join(", "),
        body["semantic_ids"]
    );
    let path = format!("/v1/users/{user}/interests?recent=3");
    let body = client.get(&path)?.json()?;
    println!("  curl -s http://{addr}{path}");
    let recent: Vec<&str> = body["recent_positives"]
        .as_array()
        .map(|r| r.iter().filter_map(|p| p["item_id"].as_str()).collect())
        .unwrap_or_default();
    let clusters: Vec<String> = body["clusters"]
        .as_array()
        .map(|c| {
            c.iter()
                .map(|c| {
                    format!(
                        "{} ({:.2})",
                        c["medoid_item_id"].as_str().unwrap_or("?"),
                        c["weight"].as_f64().unwrap_or(0.0)
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    println!(
        "    {user}: {} positives used, clusters by medoid (weight): {}; recent positives: {}",
        body["positives_used"],
        clusters.join(", "),
        recent.join(", ")
    );
    let request = serde_json::json!({"user_id": user, "candidates": candidates}).to_string();
    println!("  curl -s http://{addr}/v1/match -H 'content-type: application/json' -d '{request}'");
    let body = client.post_json("/v1/match", &request)?.json()?;
    println!(
        "    {:<13} {:>9} {:>9} {:>8} {:>8} {:>6} {:>11} {:>9} {:>9}",
        "candidate",
        "mean_cos",
        "clust_max",
        "rec_max",
        "rec_top3",
        "above",
        "sid_overlap",
        "seq2item",
        "item2vec"
    );
    for c in body["candidates"].as_array().into_iter().flatten() {
        let f = &c["features"];
        let num = |name: &str| f[name].as_f64().unwrap_or(0.0);
        if c["found"] != true {
            println!(
                "    {:<13} (found: false: no embedding stored; features are the defaults)",
                c["item_id"].as_str().unwrap_or("?")
            );
            continue;
        }
        let overlap: Vec<String> = f["sid_prefix_overlap"]
            .as_array()
            .map(|o| {
                o.iter()
                    .map(|x| format!("{:.2}", x.as_f64().unwrap_or(0.0)))
                    .collect()
            })
            .unwrap_or_default();
        let teacher = if f["has_seq2item_teacher"] == true {
            format!("{:.3}", num("seq2item_teacher_cos"))
        } else {
            "-".to_string()
        };
        let item2vec = f["id2item_teacher_cos"]["item2vec"]
            .as_f64()
            .map_or("-".to_string(), |v| format!("{v:.3}"));
        println!(
            "    {:<13} {:>9.3} {:>9.3} {:>8.3} {:>8.3} {:>6} {:>11} {:>9} {:>9}",
            c["item_id"].as_str().unwrap_or("?"),
            num("interest_mean_cos"),
            num("interest_cluster_weighted_max"),
            num("recent_max_cos"),
            num("recent_top3_mean_cos"),
            f["recent_count_above"].as_u64().unwrap_or(0),
            overlap.join("/"),
            teacher,
            item2vec
        );
    }
    Ok(())
}

fn teacher_line(t: &sailstream::store::TeacherTarget) -> String {
    let head: Vec<String> = t.vector.iter().take(3).map(|v| format!("{v:.3}")).collect();
    format!(
        "{:<14} {} dims [{}, ...] from {} sample(s), source {}",
        t.kind,
        t.vector.len(),
        head.join(", "),
        t.samples,
        t.source
    )
}

/// A few of each feature the jobs produced: seq2item samples and teacher vectors, ID2item vectors, semantic
/// IDs and user interests.
fn print_features(store: &Store, config: &Config) -> Result<()> {
    let title = |id: &str| -> Result<String> {
        Ok(store.item(id)?.and_then(|i| i.title).unwrap_or_default())
    };
    let mut targets: Vec<String> = Vec::new();
    store.for_each_teacher_target(|item, t| {
        if t.kind == sailstream::jobs::seq2item::TEACHER_KIND {
            targets.push(item.to_string());
        }
        Ok(targets.len() < 3)
    })?;
    println!("\nTeacher targets (what behaviour teaches the content model):");
    for item in &targets {
        println!("  {item} {}", truncate(&title(item)?, 50));
        for t in store.teacher_targets(item)? {
            println!("      {}", teacher_line(&t));
        }
    }
    println!("\nSemantic IDs (coarse to fine):");
    // Not `ids(SEMANTIC_IDS)`: that family also holds the codebooks under a non-item key.
    for id in store.ids(cf::ITEMS, 6)? {
        if let Some((_, codes)) = store.semantic_ids(&id)? {
            println!(
                "  {id:<10} {:<14} {}",
                format!("{codes:?}"),
                truncate(&title(&id)?, 50)
            );
        }
    }
    if let Some(user) = store.ids(cf::USER_INTERESTS, 1)?.into_iter().next()
        && let Some(i) = store.user_interests(&user)?
    {
        println!(
            "\nInterests of {user} ({} positives, half-life {} days): {} clusters",
            i.positives_used,
            config.jobs.interests_half_life_days,
            i.clusters.len()
        );
        for c in &i.clusters {
            println!(
                "  weight {:.3}  {:>2} items  medoid {:<8} {}",
                c.weight,
                c.size,
                c.medoid,
                truncate(&title(&c.medoid)?, 44)
            );
        }
    }
    println!(
        "\nTraining sets for distillation: {}/datasets.json",
        sailstream::jobs::training::training_dir(config).display()
    );
    Ok(())
}

fn print_store(store: &Store, config: &Config) -> Result<()> {
    println!(
        "\nOnline store {} (keys per column family):",
        store.path().display()
    );
    for (name, n) in store.key_counts()? {
        if n > 0 {
            println!("  {name:<16} {n:>8}");
        }
    }
    let ids = store.ids(cf::ITEMS, 5)?;
    let total_items = store.key_count(cf::ITEMS)?;
    println!("\nItems (first {} of {total_items}):", ids.len());
    for id in ids {
        if let Some(item) = store.item(&id)? {
            println!(
                "  {:<10} v{:<3} {:<48} [{}]",
                item.item_id,
                item.version,
                truncate(item.title.as_deref().unwrap_or("(no title)"), 48),
                item.tags.join(", ")
            );
        }
    }
    let mut stats = store.all_item_stats(100_000)?;
    stats.sort_by(|a, b| b.1.positives.cmp(&a.1.positives).then(a.0.cmp(&b.0)));
    println!("\nMost positively consumed items (positives / events / distinct users):");
    for (id, s) in stats.iter().take(5) {
        let title = store.item(id)?.and_then(|i| i.title).unwrap_or_default();
        println!(
            "  {id:<10} {:>4} / {:<4} / {:<3} {}",
            s.positives,
            s.events,
            s.distinct_users,
            truncate(&title, 48)
        );
    }
    if let Some(user) = store.list_users(cf::USER_HISTORIES, 1)?.into_iter().next() {
        let history = store.user_history(&user)?;
        let positives = store.user_positives(&user)?;
        println!(
            "\nUser {user}: {} events kept (cap {}), {} positives (cap {}); newest 5:",
            history.len(),
            config.store.history_cap,
            positives.len(),
            config.store.positives_cap
        );
        for e in history.iter().rev().take(5) {
            println!("  {}", history_line(e));
        }
    }
    println!("\nStored source positions (next offset to read):");
    for ((stream, partition), next) in store.offsets()? {
        println!("  {stream} [{partition}] -> {next}");
    }
    Ok(())
}

fn print_nearest(store: &Store) -> Result<()> {
    let mut shown = 0;
    for id in store.ids(cf::ITEM_EMBEDDINGS, 3)? {
        let Some(e) = store.item_embedding(&id)? else {
            continue;
        };
        if shown == 0 {
            println!(
                "\nNearest items by embedding ({} {}, {} dims; exact cosine over the store):",
                e.model,
                e.model_version,
                e.vector.len()
            );
        }
        let title = store.item(&id)?.and_then(|i| i.title).unwrap_or_default();
        println!("  {id} {}", truncate(&title, 60));
        for (nid, score, ntitle) in nearest_items(store, &id, 3)? {
            println!("      {score:>6.3}  {nid:<12} {}", truncate(&ntitle, 50));
        }
        shown += 1;
    }
    Ok(())
}

fn print_dead_letters(path: &Path) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let lines: Vec<&str> = text.lines().collect();
    println!("\nDead letters ({} in {}):", lines.len(), path.display());
    for line in lines.iter().take(5) {
        match serde_json::from_str::<sailstream::schema::DeadLetter>(line) {
            Ok(d) => println!(
                "  {} offset {}: {} [{}]",
                d.topic, d.offset, d.error, d.category
            ),
            Err(e) => println!("  (unreadable line: {e})"),
        }
    }
    Ok(())
}

/// Scrapes our own endpoint, so the demo shows what Prometheus would see.
fn print_metrics(config: &Config) {
    let addr = config.metrics_addr();
    let body = (|| -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })();
    match body {
        Ok(text) => {
            println!("\nMetrics at http://{addr}/metrics (sailstream_records_*):");
            for line in text
                .lines()
                .filter(|l| l.starts_with("sailstream_records_"))
            {
                println!("  {line}");
            }
        }
        Err(e) => println!("\nMetrics endpoint http://{addr}/metrics not reachable: {e}"),
    }
}

fn history_line(e: &sailstream::store::HistoryEntry) -> String {
    format!(
        "ts={} {:<10} {:<12} dwell={}ms{}",
        e.ts,
        e.action.as_str(),
        e.item_id,
        e.dwell_ms,
        e.rating.map(|r| format!(" rating={r}")).unwrap_or_default()
    )
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

pub fn store_stats(config: &Config) -> Result<()> {
    let store = Store::open_read_only(&config.store.path)?;
    println!("store {}", store.path().display());
    for (name, n) in store.key_counts()? {
        println!("  {name:<16} {n:>10}");
    }
    println!("positions:");
    for ((stream, partition), next) in store.offsets()? {
        println!("  {stream} [{partition}] -> {next}");
    }
    Ok(())
}

pub fn store_checkpoint(config: &Config, dest: &Path) -> Result<()> {
    // Opening read-write would fail while a worker runs; a checkpoint needs the writer's handle, so this
    // command is for a stopped store (the worker exposes checkpoints itself once it exists).
    let store = Store::open(&config.store.path)?;
    store.checkpoint(dest)?;
    println!(
        "checkpoint of {} written to {}",
        store.path().display(),
        dest.display()
    );
    Ok(())
}

pub fn store_item(config: &Config, item_id: &str) -> Result<()> {
    let store = Store::open_read_only(&config.store.path)?;
    let item = store
        .item(item_id)?
        .ok_or_else(|| Error::invalid("item_id", format!("'{item_id}' is not in the store")))?;
    println!(
        "{}",
        serde_json::to_string_pretty(&item).map_err(|e| Error::Internal(e.to_string()))?
    );
    if let Some(e) = store.item_embedding(item_id)? {
        let head: Vec<String> = e.vector.iter().take(4).map(|v| format!("{v:.4}")).collect();
        println!(
            "embedding: {} {} (item v{}), {} dims [{}, ...]",
            e.model,
            e.model_version,
            e.item_version,
            e.vector.len(),
            head.join(", ")
        );
    }
    if let Some((version, codes)) = store.semantic_ids(item_id)? {
        println!("semantic ids: {codes:?} (model version {version})");
    }
    for t in store.teacher_targets(item_id)? {
        println!("teacher target {}", teacher_line(&t));
    }
    if let Some(s) = store.item_stats(item_id)? {
        println!(
            "stats: {} events, {} positives, {} distinct users, first ts {}, last ts {}",
            s.events, s.positives, s.distinct_users, s.first_ts, s.last_ts
        );
    }
    Ok(())
}

pub fn store_user(config: &Config, user_id: &str) -> Result<()> {
    let store = Store::open_read_only(&config.store.path)?;
    let history = store.user_history(user_id)?;
    if history.is_empty() {
        return Err(Error::invalid(
            "user_id",
            format!("'{user_id}' has no stored history"),
        ));
    }
    let positives = store.user_positives(user_id)?;
    println!(
        "user {user_id}: {} events, {} positives",
        history.len(),
        positives.len()
    );
    for e in &history {
        let mark = if positives
            .iter()
            .any(|p| p.ts == e.ts && p.item_id == e.item_id)
        {
            "+"
        } else {
            " "
        };
        println!(" {mark} {}", history_line(e));
    }
    if let Some(i) = store.user_interests(user_id)? {
        println!(
            "interests (model version {}, {} positives up to ts {}): {} clusters",
            i.model_version,
            i.positives_used,
            i.ts,
            i.clusters.len()
        );
        for c in &i.clusters {
            println!(
                "  weight {:.3}  {} items  medoid {}",
                c.weight, c.size, c.medoid
            );
        }
    }
    Ok(())
}

pub fn doctor(config: &Config) -> Result<()> {
    let mut failures = 0;
    let mut check = |name: &str, outcome: std::result::Result<String, String>| match outcome {
        Ok(detail) => println!("ok    {name}: {detail}"),
        Err(problem) => {
            failures += 1;
            println!("FAIL  {name}: {problem}");
        }
    };
    check(
        "onnx runtime",
        runtime::init(config)
            .map(|info| {
                format!(
                    "{} ({})",
                    runtime::library_path(config).display(),
                    info.lines().next().unwrap_or("")
                )
            })
            .map_err(|e| e.to_string()),
    );
    check(
        "embedding model",
        Embedder::load(config)
            .map(|e| {
                let m = e.manifest();
                format!(
                    "{} {} ({} dims) on {}, manifest matches {}",
                    m.model.name,
                    m.model.version,
                    m.output.dim,
                    e.device(),
                    e.dir().join(&m.model.file).display()
                )
            })
            .map_err(|e| e.to_string()),
    );
    let tansu = std::env::var_os("SAILSTREAM_TANSU")
        .map(PathBuf::from)
        .unwrap_or_else(sailstream_default_tansu);
    check(
        "tansu broker (tests, demo --kafka)",
        if tansu.exists() {
            Ok(tansu.display().to_string())
        } else {
            Err(format!("{} missing; run scripts/setup.sh", tansu.display()))
        },
    );
    let probe = std::env::temp_dir().join(format!("sailstream-doctor-{}", std::process::id()));
    check(
        "rocksdb",
        Store::open(&probe)
            .and_then(|s| {
                s.key_counts()
                    .map(|c| format!("opened a scratch store with {} column families", c.len()))
            })
            .map_err(|e| e.to_string()),
    );
    let _ = std::fs::remove_dir_all(&probe);
    if failures > 0 {
        return Err(Error::invalid(
            "installation",
            format!("{failures} check(s) failed"),
        ));
    }
    Ok(())
}

fn sailstream_default_tansu() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/tansu/bin/tansu")
}
