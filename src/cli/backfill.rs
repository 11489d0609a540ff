//! `sailstream backfill --events DIR`: history in, features out. Replays the folder's dumps through the same
//! ingest path the worker uses (validation, dead letters, offline log), embeds every new item, then runs every
//! job in dependency order.
//!
//! Resumable at two levels: replay and embed continue from the stored positions and the pending queue, and
//! every finished step is recorded in `job_state` under a fingerprint of the input files (paths, sizes,
//! modification times), so a rerun over the same files skips what is done. `--restart` redoes every step.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressStyle};
use sailstream::config::Config;
use sailstream::store::Store;
use sailstream::{Error, Result};

/// The input files of a backfill, as `PATH:TOPIC` replay arguments, items first.
pub fn discover(dir: &Path, config: &Config) -> Result<Vec<(PathBuf, String)>> {
    let topics = &config.kafka.topics;
    let kinds = [
        ("items", topics.items.as_str()),
        ("behaviours", topics.behaviours.as_str()),
        ("id_embeddings", topics.id_embeddings.as_str()),
    ];
    let read = |d: &Path| -> Result<Vec<PathBuf>> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(d)
            .map_err(|e| Error::io(format!("reading {}", d.display()), e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && is_data_file(p))
            .collect();
        v.sort();
        Ok(v)
    };
    if !dir.is_dir() {
        return Err(Error::invalid(
            "--events",
            format!("{} is not a folder", dir.display()),
        ));
    }
    let top = read(dir)?;
    let mut out = Vec::new();
    for (kind, topic) in kinds {
        for f in &top {
            let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.starts_with(kind) {
                out.push((f.clone(), topic.to_string()));
            }
        }
        let sub = dir.join(kind);
        if sub.is_dir() {
            out.extend(read(&sub)?.into_iter().map(|f| (f, topic.to_string())));
        }
    }
    if !out.iter().any(|(_, t)| *t == topics.behaviours) {
        return Err(Error::invalid(
            "--events",
            format!(
                "no behaviour dumps in {}: expected behaviours*.jsonl|.parquet or a behaviours/ folder \
                 (and items*, optionally id_embeddings*)",
                dir.display()
            ),
        ));
    }
    Ok(out)
}

fn is_data_file(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("jsonl" | "ndjson" | "json" | "parquet")
    )
}

/// FNV-1a over each file's path, size and modification time: the identity of one backfill's input.
fn fingerprint(files: &[(PathBuf, String)]) -> Result<String> {
    let mut identity = String::new();
    for (path, topic) in files {
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
        identity += &format!("{}|{topic}|{}|{mtime}\n", canonical.display(), meta.len());
    }
    Ok(format!(
        "{:016x}",
        sailstream::jobs::fnv1a(identity.as_bytes())
    ))
}

pub async fn run(config: &Config, dir: &Path, restart: bool, dlq: Option<PathBuf>) -> Result<()> {
    let files = discover(dir, config)?;
    let fp = fingerprint(&files)?;
    let started = Instant::now();
    let steps: Vec<&str> = std::iter::once("ingest")
        .chain(sailstream::jobs::ALL)
        .collect();
    eprintln!(
        "backfill {} ({} files, fingerprint {fp}): {}",
        dir.display(),
        files.len(),
        steps.join(" -> ")
    );
    let step_key = |step: &str| format!("backfill.{fp}.{step}");
    let done = |step: &str| -> Result<bool> {
        if restart {
            return Ok(false);
        }
        let store = Store::open(&config.store.path)?;
        Ok(store.job_u64(&step_key(step))?.is_some())
    };
    let mark = |store: &Store, step: &str| -> Result<()> {
        let mut batch = store.batch();
        batch.set_job_u64(&step_key(step), sailstream::ingest::now_ms().max(0) as u64)?;
        batch.commit()
    };
    for (i, step) in steps.iter().enumerate() {
        let label = format!("[{}/{}] {step}", i + 1, steps.len());
        if done(step)? {
            eprintln!("==> {label}: done in an earlier run, skipped (--restart redoes it)");
            continue;
        }
        eprintln!("==> {label}");
        let t = Instant::now();
        if *step == "ingest" {
            if restart {
                // Offsets make a replay resume; a restart of the whole backfill still replays nothing twice.
                eprintln!("    (records already applied are skipped by their stored positions)");
            }
            let args: Vec<String> = files
                .iter()
                .map(|(p, topic)| format!("{}:{topic}", p.display()))
                .collect();
            super::replay(config, &args, dlq.clone()).await?;
            if !config.embed.enabled {
                eprintln!(
                    "    embed.enabled = false: items are not embedded, embedding-based jobs will fail"
                );
            }
            let store = Store::open(&config.store.path)?;
            mark(&store, step)?;
        } else {
            let store = Arc::new(Store::open(&config.store.path)?);
            let spinner = ProgressBar::new_spinner();
            spinner.set_style(
                ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("static template"),
            );
            spinner.set_message(step.to_string());
            spinner.enable_steady_tick(Duration::from_millis(200));
            let result = sailstream::jobs::run(step, config, &store).await;
            spinner.finish_and_clear();
            eprintln!("    {}", result?);
            mark(&store, step)?;
        }
        eprintln!("    {step} took {:.1}s", t.elapsed().as_secs_f64());
    }
    eprintln!(
        "backfill finished in {:.1}s; exports in {}",
        started.elapsed().as_secs_f64(),
        config.jobs.output_dir.display()
    );
    Ok(())
}
