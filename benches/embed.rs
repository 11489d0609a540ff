//! Embed-stage throughput, each number next to its peers measured in the same run on the same items:
//!
//! 1. sailstream: `Embedder::embed` end to end (media fetch + decode, tokenisation, audio features on the
//!    preprocessing pool, length-sorted batches, ONNX Runtime).
//! 2. raw ONNX Runtime: the same session fed input tensors built beforehand (inference only): the ceiling.
//!    Overhead = raw items/s / sailstream items/s - 1 (goal <= 10%).
//! 3. Python: benches/embed_peer.py, the same work with tokenizers + PIL + numpy + onnxruntime, using the
//!    reference preprocessing of models/sail-lite/build.py (goal: sailstream >= 1.5x).
//!
//! Item kinds: "text" (title + tags + nickname) and "omni" (text + a real photo from the model's fixtures + a
//! 6 s WAV). Run: `cargo bench --bench embed` (release; needs scripts/setup.sh for the model and the export venv).
//! Sizes: BENCH_EMBED_TEXT (default 512 items), BENCH_EMBED_OMNI (default 96 items), BENCH_EMBED_BATCHES
//! (default "1,8,32").

use std::io::Write;
use std::process::Command;
use std::time::Instant;

use sailstream::Config;
use sailstream::embed::{Embedder, Prepared, model_dir};
use sailstream::schema::Item;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const WORDS: [&str; 16] = [
    "cooking", "street", "noodles", "cat", "piano", "morning", "stretch", "battle", "grandma",
    "recipe", "travel", "sunset", "guitar", "kitchen", "dance", "tutorial",
];

fn text_item(i: usize) -> serde_json::Value {
    let n = 3 + i % 12;
    let title: Vec<&str> = (0..n)
        .map(|k| WORDS[(i * 7 + k * 3) % WORDS.len()])
        .collect();
    serde_json::json!({"item_id": format!("t{i}"), "title": title.join(" "), "nickname": format!("creator_{}", i % 50),
        "tags": [WORDS[i % 16], WORDS[(i + 5) % 16]], "created_at": 1_750_000_000_000i64, "version": 1})
}

fn omni_item(i: usize, fixtures: &std::path::Path) -> serde_json::Value {
    let photos = [
        "chelsea.png",
        "coffee.png",
        "rocket.jpg",
        "astronaut.png",
        "horse.png",
        "coffee.webp",
    ];
    let mut v = text_item(i);
    v["item_id"] = format!("o{i}").into();
    v["cover"] = serde_json::json!({"uri": format!("file://{}", fixtures.join(photos[i % photos.len()]).display())});
    v["audio"] = serde_json::json!({"uri": format!("file://{}", fixtures.join("chirp-float.wav").display())});
    v
}

struct Row {
    kind: &'static str,
    batch: usize,
    sailstream: f64,
    raw: f64,
    python: Option<f64>,
}

fn measure(embedder: &mut Embedder, items: &[Item], batch: usize) -> (f64, f64) {
    embedder.set_batch_size(batch);
    embedder.embed(&items[..batch.min(items.len())]).unwrap(); // warm-up
    let started = Instant::now();
    let out = embedder.embed(items).unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert!(out.iter().all(|r| r.is_ok()));
    let sailstream = items.len() as f64 / secs;

    // Raw: the same batches (same sort, same sizes), tensors built before the clock starts.
    let mut prepared: Vec<Prepared> = items
        .iter()
        .map(|it| embedder.prepare(it).unwrap())
        .collect();
    prepared.sort_by_key(|p| p.tokens.len());
    let batches: Vec<(sailstream::embed::Inputs, usize)> = prepared
        .chunks(batch)
        .map(|c| {
            let refs: Vec<&Prepared> = c.iter().collect();
            (embedder.tensors(&refs).unwrap(), c.len())
        })
        .collect();
    let started = Instant::now();
    for (inputs, n) in batches {
        embedder.infer(inputs, n).unwrap();
    }
    let raw = items.len() as f64 / started.elapsed().as_secs_f64();
    (sailstream, raw)
}

fn python(
    model: &std::path::Path,
    items: &[serde_json::Value],
    batches: &[usize],
) -> Vec<Option<f64>> {
    let venv = sailstream::runtime::install_root().join("export-venv/bin/python");
    if !venv.exists() {
        eprintln!(
            "python peer skipped: {} missing (run scripts/setup.sh)",
            venv.display()
        );
        return vec![None; batches.len()];
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("items.jsonl");
    let mut f = std::fs::File::create(&path).unwrap();
    for it in items {
        writeln!(f, "{it}").unwrap();
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/embed_peer.py");
    let out = Command::new(&venv)
        .arg(script)
        .arg(model)
        .arg(&path)
        .args(batches.iter().map(|b| b.to_string()))
        .env("PYTHONWARNINGS", "ignore")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python peer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["items_per_s"].as_f64())
        .collect()
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n_text = env_usize("BENCH_EMBED_TEXT", if full { 512 } else { 16 });
    let n_omni = env_usize("BENCH_EMBED_OMNI", if full { 96 } else { 4 });
    let batches: Vec<usize> = std::env::var("BENCH_EMBED_BATCHES")
        .unwrap_or_else(|_| if full { "1,8,32".into() } else { "4".into() })
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("BENCH_EMBED_BATCHES: comma-separated sizes")
        })
        .collect();
    if !full {
        println!("smoke run of the embed benchmark (use `cargo bench --bench embed` for numbers)");
    }
    // Environment overrides apply (SAILSTREAM__EMBED__DEVICE=cuda, SAILSTREAM__EMBED__MODEL_DIR=...), so the same
    // binary measures a GPU machine (scripts/gpu-check.sh).
    let config = Config::load(None).expect("config");
    let model = model_dir(&config);
    let fixtures = model.join("fixtures");
    let mut embedder =
        Embedder::load_from(&model, &config).expect("sail-lite model (run scripts/setup.sh)");
    println!(
        "model {} {} on {}, {} cores",
        embedder.manifest().model.name,
        embedder.manifest().model.version,
        embedder.device(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let mut rows = Vec::new();
    for (kind, json) in [
        ("text", (0..n_text).map(text_item).collect::<Vec<_>>()),
        (
            "omni",
            (0..n_omni)
                .map(|i| omni_item(i, &fixtures))
                .collect::<Vec<_>>(),
        ),
    ] {
        let items: Vec<Item> = json
            .iter()
            .map(|v| serde_json::from_value(v.clone()).unwrap())
            .collect();
        let py = if full {
            python(&model, &json, &batches)
        } else {
            vec![None; batches.len()]
        };
        for (&batch, python) in batches.iter().zip(py) {
            let (sailstream, raw) = measure(&mut embedder, &items, batch);
            rows.push(Row {
                kind,
                batch,
                sailstream,
                raw,
                python,
            });
        }
    }
    println!(
        "| items | batch | sailstream items/s | raw ORT items/s | overhead vs raw | Python items/s | sailstream / Python |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} ({}) | {} | {:.1} | {:.1} | {:+.1}% | {} | {} |",
            r.kind,
            if r.kind == "text" { n_text } else { n_omni },
            r.batch,
            r.sailstream,
            r.raw,
            (r.raw / r.sailstream - 1.0) * 100.0,
            r.python.map_or("-".into(), |p| format!("{p:.1}")),
            r.python
                .map_or("-".into(), |p| format!("{:.2}x", r.sailstream / p)),
        );
    }
}
