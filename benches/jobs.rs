//! The jobs' SQL on DataFusion (sailstream) vs DuckDB, in the same run, on the same Parquet log segments:
//!
//! - `copairs`: pipelines/jobs/copairs.sql (self-join within the window, grouped pairs with support);
//! - `positive_histories`: pipelines/jobs/positive_histories.sql (per user-item aggregation, window ranking),
//!   the SQL part of seq2item and id2item.
//!
//! Both engines run the same rendered SQL text over the same `behaviours` view, materialise the whole result
//! (DataFusion: collected record batches; DuckDB: a temporary table, benches/jobs_peer.py) on every core, and
//! must return the same row count. Ratio = DataFusion seconds / DuckDB seconds (goal <= 1.0). Then the total
//! time of `sailstream backfill` over MovieLens-100k (ingest, embed, every job).
//!
//! Data: a synthetic log (BENCH_JOBS_EVENTS events, default 1,000,000: 50k users, 20k items with a skewed
//! popularity, each user active over about two days) and MovieLens-100k from scripts/setup.sh.
//! Run: `cargo bench --bench jobs` (release; needs scripts/setup.sh for DuckDB, MovieLens and the model).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use sailstream::Config;
use sailstream::jobs::{JobContext, copairs, seq2item};

const T0: i64 = 1_750_000_000_000;
const DAY: i64 = 86_400_000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A behaviour log with sessions: each user is active around one day of a 30-day span.
fn synthetic(path: &Path, n: usize) {
    let users = (n / 20).max(10) as u64;
    let items = (n / 50).max(10) as u64;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let actions = [
        ("impression", 40),
        ("play", 25),
        ("like", 10),
        ("finish", 10),
        ("skip", 10),
        ("share", 5),
    ];
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut lines: Vec<(i64, String)> = Vec::with_capacity(n);
    for _ in 0..n {
        let user = next() % users;
        // Skewed popularity: u^3 puts most events on the first items.
        let u = (next() % 1_000_000) as f64 / 1_000_000.0;
        let item = ((u * u * u) * items as f64) as u64;
        let mut pick = next() % 100;
        let action = actions
            .iter()
            .find(|(_, w)| {
                if pick < *w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .map_or("impression", |(a, _)| a);
        let base_day = (user.wrapping_mul(2_654_435_761) % 30) as i64;
        let ts = T0 + base_day * DAY + (next() % (2 * DAY as u64)) as i64;
        let dwell = if action == "play" { next() % 60_000 } else { 0 };
        lines.push((
            ts,
            format!(
                r#"{{"user_id":"u{user}","item_id":"i{item}","action":"{action}","dwell_ms":{dwell},"ts":{ts}}}"#
            ),
        ));
    }
    lines.sort();
    for (_, l) in lines {
        writeln!(out, "{l}").unwrap();
    }
}

fn bin(state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sailstream"));
    for (k, _) in std::env::vars() {
        if k.starts_with("SAILSTREAM__") {
            c.env_remove(k);
        }
    }
    c.env("SAILSTREAM__STORE__PATH", state.join("store"))
        .env("SAILSTREAM__OFFLINE_LOG__PATH", state.join("log"))
        .env("SAILSTREAM__JOBS__OUTPUT_DIR", state.join("exports"))
        .env("SAILSTREAM__METRICS__ENABLED", "false")
        .env("SAILSTREAM__LOG__LEVEL", "warn");
    c
}

fn run(c: &mut Command) {
    let out = c.output().expect("start sailstream");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// (name, SQL template, template parameters).
type Query = (&'static str, &'static str, Vec<(&'static str, String)>);

struct Row {
    dataset: String,
    query: &'static str,
    rows: usize,
    datafusion: f64,
    duckdb: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn compare(dataset: &str, behaviours: &Path, repeats: usize, rows: &mut Vec<Row>) {
    let state = tempfile::tempdir().unwrap();
    let started = Instant::now();
    run(bin(state.path())
        .env("SAILSTREAM__EMBED__ENABLED", "false")
        .arg("replay")
        .arg("--file")
        .arg(format!("{}:sail.behaviours", behaviours.display())));
    println!(
        "{dataset}: replayed into the offline log in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let mut config = Config::default();
    config.store.path = state.path().join("store");
    config.offline_log.path = state.path().join("log");
    let ctx = JobContext::over_log(&config).await.unwrap();
    let queries: [Query; 2] = [
        (
            "copairs",
            copairs::SQL,
            vec![
                ("window_ms", config.jobs.copairs_window_ms.to_string()),
                ("min_support", config.jobs.copairs_min_support.to_string()),
            ],
        ),
        (
            "positive_histories",
            seq2item::HISTORIES_SQL,
            vec![("history", config.jobs.seq2item_history.to_string())],
        ),
    ];
    let view = state.path().join("view.sql");
    std::fs::write(&view, sailstream::jobs::BEHAVIOURS_VIEW).unwrap();
    let mut peer_args: Vec<String> = Vec::new();
    let mut ours: Vec<(&'static str, usize, f64)> = Vec::new();
    for (name, template, params) in &queries {
        let sql = ctx.render(template, params);
        let file = state.path().join(format!("{name}.sql"));
        std::fs::write(&file, &sql).unwrap();
        peer_args.push(format!("{name}={}", file.display()));
        let mut times = Vec::new();
        let mut n = 0;
        for _ in 0..repeats {
            let t = Instant::now();
            let batches = ctx
                .sql(template, params)
                .await
                .unwrap()
                .collect()
                .await
                .unwrap();
            times.push(t.elapsed().as_secs_f64());
            n = batches.iter().map(|b| b.num_rows()).sum();
        }
        ours.push((name, n, median(times)));
    }
    let peer = duckdb(
        &config.offline_log.path.join("sail.behaviours"),
        &view,
        repeats,
        &peer_args,
    );
    for (name, n, secs) in ours {
        let theirs = peer.as_ref().and_then(|p| p.get(name));
        if let Some((their_rows, _)) = theirs {
            assert_eq!(
                *their_rows, n,
                "{dataset} {name}: DuckDB returned {their_rows} rows, DataFusion {n}"
            );
        }
        rows.push(Row {
            dataset: dataset.to_string(),
            query: name,
            rows: n,
            datafusion: secs,
            duckdb: theirs.map(|(_, s)| *s),
        });
    }
}

/// (rows, median seconds) per query from benches/jobs_peer.py, or None when the venv is missing.
fn duckdb(
    segments: &Path,
    view: &Path,
    repeats: usize,
    queries: &[String],
) -> Option<BTreeMap<String, (usize, f64)>> {
    let python = sailstream::runtime::install_root().join("bench-venv/bin/python");
    if !python.exists() {
        println!(
            "DuckDB peer skipped: {} missing (run scripts/setup.sh)",
            python.display()
        );
        return None;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/jobs_peer.py");
    let out = Command::new(&python)
        .arg(script)
        .arg(segments)
        .arg(view)
        .arg(repeats.to_string())
        .args(queries)
        .output()
        .expect("start python");
    assert!(
        out.status.success(),
        "DuckDB peer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    Some(
        v.as_object()
            .unwrap()
            .iter()
            .map(|(k, r)| {
                let secs = r["seconds"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_f64().unwrap())
                    .collect();
                (
                    k.clone(),
                    (r["rows"].as_u64().unwrap() as usize, median(secs)),
                )
            })
            .collect(),
    )
}

/// Seconds of a whole `sailstream backfill` (ingest, embed, every job) over a folder of dumps.
fn backfill(events: &Path) -> f64 {
    let state = tempfile::tempdir().unwrap();
    let t = Instant::now();
    run(bin(state.path())
        .arg("backfill")
        .arg("--events")
        .arg(events));
    t.elapsed().as_secs_f64()
}

fn main() {
    // `cargo bench` passes --bench; under `cargo test --all-targets` this runs on a smoke size, so the code
    // cannot rot, and its numbers mean nothing.
    let full = std::env::args().any(|a| a == "--bench");
    let n = env_usize("BENCH_JOBS_EVENTS", if full { 1_000_000 } else { 20_000 });
    let repeats = if full { 3 } else { 1 };
    if !full {
        println!("smoke run of the jobs benchmark (use `cargo bench --bench jobs` for numbers)");
    }
    let data = tempfile::tempdir().unwrap();
    let synthetic_path = data.path().join("behaviours.jsonl");
    synthetic(&synthetic_path, n);
    let ml: PathBuf = sailstream::runtime::install_root().join("data/ml-100k");
    let mut rows = Vec::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        compare(
            &format!("synthetic {n}"),
            &synthetic_path,
            repeats,
            &mut rows,
        )
        .await;
        if !full {
            // MovieLens copairs takes ~45 s unoptimised: the smoke run stays on the small synthetic log.
        } else if ml.join("behaviours.jsonl").exists() {
            compare(
                "MovieLens-100k",
                &ml.join("behaviours.jsonl"),
                repeats,
                &mut rows,
            )
            .await;
        } else {
            println!(
                "MovieLens-100k skipped: {} missing (run scripts/setup.sh)",
                ml.display()
            );
        }
    });
    println!("\n| dataset | query | rows | DataFusion s | DuckDB s | DataFusion / DuckDB |");
    println!("|---|---|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.3} | {} | {} |",
            r.dataset,
            r.query,
            r.rows,
            r.datafusion,
            r.duckdb.map_or("-".into(), |d| format!("{d:.3}")),
            r.duckdb
                .map_or("-".into(), |d| format!("{:.2}x", r.datafusion / d))
        );
    }
    // The DataFusion sessions' memory goes back before the backfill runs beside this process.
    drop(rt);
    if full && ml.join("items.jsonl").exists() {
        let secs = backfill(&ml);
        println!(
            "\nsailstream backfill over MovieLens-100k (ingest 101,682 records, embed 1,682 items, every job): {secs:.1}s"
        );
    }
}
