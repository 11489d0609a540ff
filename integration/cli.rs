//! The `sailstream` binary as a user runs it: config layering, the demo, store commands, clear errors.

use std::path::Path;
use std::process::{Command, Output};

mod harness;

use harness::{free_port, sailstream as bin};

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn config_show_layers_file_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    std::fs::write(
        &file,
        "[store]\nhistory_cap = 33\n[kafka]\ngroup_id = \"from-file\"\n",
    )
    .unwrap();
    let out = bin()
        .args(["--config", file.to_str().unwrap(), "config", "show"])
        .env("SAILSTREAM__KAFKA__GROUP_ID", "from-env")
        .env(
            "SAILSTREAM__SERVE__BEARER_TOKEN",
            "a-secret-token-of-some-length",
        )
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let shown: toml::Table = toml::from_str(&stdout).unwrap();
    assert_eq!(shown["store"]["history_cap"].as_integer(), Some(33));
    assert_eq!(shown["kafka"]["group_id"].as_str(), Some("from-env"));
    assert_eq!(shown["store"]["positives_cap"].as_integer(), Some(1000));
    assert!(
        !stdout.contains("a-secret-token"),
        "the bearer token is printed"
    );
    assert_eq!(
        shown["serve"]["bearer_token"].as_str(),
        Some("<set, not shown>")
    );
}

#[test]
fn bad_config_names_the_key_and_exits_2() {
    let out = bin()
        .args(["config", "show"])
        .env("SAILSTREAM__INGEST__BATCH_SIZE", "0")
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("ingest.batch_size") && stderr.contains("between 1 and"),
        "{stderr}"
    );
}

#[test]
fn demo_replays_the_sample_prints_the_store_and_serves_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("state/store");
    let port = free_port();
    let serve_port = free_port();
    let run = || {
        bin()
            .arg("demo")
            .env("SAILSTREAM__STORE__PATH", &store)
            .env(
                "SAILSTREAM__OFFLINE_LOG__PATH",
                dir.path().join("state/log"),
            )
            .env(
                "SAILSTREAM__JOBS__OUTPUT_DIR",
                dir.path().join("state/exports"),
            )
            .env("SAILSTREAM__METRICS__LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "SAILSTREAM__SERVE__LISTEN",
                format!("127.0.0.1:{serve_port}"),
            )
            .output()
            .unwrap()
    };
    let out = run();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    // The sample has 43 item lines (1 stale version, 1 invalid) and 1709 behaviour lines (4 invalid).
    assert!(stderr.contains("replayed 1752 records"), "{stderr}");
    assert!(stderr.contains("5 dead-lettered"), "{stderr}");
    assert!(stderr.contains("1 stale versions ignored"), "{stderr}");
    assert!(stdout.contains("items                  40"), "{stdout}");
    assert!(
        stdout.contains("(extended cut)"),
        "latest item version wins:\n{stdout}"
    );
    assert!(stdout.contains("Dead letters (5 in"), "{stdout}");
    // Every job ran and the demo prints a few of each feature.
    for want in [
        "Running every job",
        "seq2item: ",
        "Teacher targets",
        "seq2item       896 dims",
        "id:item2vec    64 dims",
        "Semantic IDs (coarse to fine):",
        "Interests of u",
        "datasets.json",
        // The quality table, then the lookup API over the demo's store: an embedding, interests, match features.
        "Copair-i2i Recall@10",
        "seq2item filtered Recall@25",
        "Lookup API at http://127.0.0.1:",
        "/v1/items/",
        "semantic IDs [",
        "positives used, clusters by medoid",
        "candidate      mean_cos",
        "no-such-item  (found: false",
    ] {
        assert!(stdout.contains(want), "{want}:\n{stdout}");
    }
    assert!(
        stdout.contains("action: unknown variant `teleport`"),
        "{stdout}"
    );
    assert!(stdout.contains("looks like seconds"), "{stdout}");
    assert!(
        stdout.contains("sailstream_records_applied_total{topic=\"sail.behaviours\"} 1705"),
        "metrics endpoint scraped:\n{stdout}"
    );
    // Every valid item is embedded, and the demo shows neighbours by embedding.
    assert!(
        stderr.contains("embedded 40 items with sail-lite 0.1.0"),
        "{stderr}"
    );
    assert!(stdout.contains("item_embeddings        40"), "{stdout}");
    assert!(
        stdout.contains("Nearest items by embedding (sail-lite 0.1.0, 896 dims"),
        "{stdout}"
    );

    // Running it again applies nothing: positions are stored with the state.
    let out = run();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("nothing new"), "{stdout}");
    assert!(stdout.contains("items                  40"), "{stdout}");
    assert!(
        stderr.contains("embedded 0 items"),
        "nothing re-embedded:\n{stderr}"
    );

    // A backfill with the same model has nothing to do; `nearest` and `store item` read the vectors.
    let with_store = |args: &[&str]| {
        bin()
            .args(args)
            .env("SAILSTREAM__STORE__PATH", &store)
            .output()
            .unwrap()
    };
    let out = with_store(&["embed", "--backfill"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("embedded 0 items"), "{stderr}");
    let out = with_store(&["nearest", "v0001", "-k", "3"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    let out = with_store(&["store", "item", "v0001"]);
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("embedding: sail-lite 0.1.0 (item v2), 896 dims"),
        "{stdout}"
    );
    let out = with_store(&["nearest", "no-such-item"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out).1);
}

#[test]
fn store_commands_and_the_lock_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let env = |c: &mut Command| {
        c.env("SAILSTREAM__STORE__PATH", &store)
            .env("SAILSTREAM__OFFLINE_LOG__PATH", dir.path().join("log"))
            .env("SAILSTREAM__METRICS__ENABLED", "false");
    };
    let mut c = bin();
    env(&mut c);
    let out = c
        .args([
            "replay",
            "--file",
            "pipelines/sample/items.jsonl:sail.items",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));

    let mut c = bin();
    env(&mut c);
    let out = c.args(["store", "item", "v0001"]).output().unwrap();
    let (stdout, _) = text(&out);
    assert!(stdout.contains("\"version\": 2"), "{stdout}");

    let cp = dir.path().join("cp");
    let mut c = bin();
    env(&mut c);
    let out = c
        .args(["store", "checkpoint", cp.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(Path::new(&cp).join("CURRENT").exists());

    // While another process holds the store, a writer command fails with a clear message and exit code 2.
    let held = sailstream::store::Store::open(&store).unwrap();
    let mut c = bin();
    env(&mut c);
    let out = c
        .args([
            "store",
            "checkpoint",
            dir.path().join("cp2").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("locked by another process"), "{stderr}");
    // Readers still work beside the writer.
    let mut c = bin();
    env(&mut c);
    let out = c.args(["store", "stats"]).output().unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    drop(held);
}

#[test]
fn doctor_finds_the_installed_parts() {
    let out = bin().arg("doctor").output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "run scripts/setup.sh first\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("ok    onnx runtime") && stdout.contains("1.31.1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ok    embedding model: sail-lite 0.1.0 (896 dims) on cpu"),
        "{stdout}"
    );
}

/// docker-compose.yml as YAML (PyYAML, which scripts/setup.sh makes sure of), as JSON.
fn compose(file: &str) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(&path)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{} is not valid YAML (or PyYAML is missing: scripts/setup.sh): {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// No Docker engine runs here: the deployment files are checked for what can be checked without one.
#[test]
fn deployment_files_are_consistent_with_the_config_and_the_setup_script() {
    let doc = compose("docker-compose.yml");
    let services = doc["services"].as_object().unwrap();
    for name in ["kafka", "topics", "worker", "lookup"] {
        assert!(services.contains_key(name), "service {name} missing");
    }
    assert!(
        doc["services"]["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
            .as_str()
            .unwrap()
            .contains("controller"),
        "Kafka runs in KRaft mode"
    );
    // The topic-creation script creates every topic the worker uses.
    let script = doc["services"]["topics"]["command"][0].as_str().unwrap();
    let config = sailstream::Config::load(None).unwrap();
    let t = &config.kafka.topics;
    for topic in [
        &t.items,
        &t.behaviours,
        &t.id_embeddings,
        &t.item_embeddings,
        &t.dlq,
    ] {
        assert!(
            script.contains(topic.as_str()),
            "topics service lacks {topic}"
        );
    }
    // Each sailstream service's overrides pass sailstream's own validation, on top of the image's defaults.
    let dockerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile")).unwrap();
    for name in ["worker", "lookup"] {
        let service = &doc["services"][name];
        assert_eq!(
            service["volumes"][0].as_str().unwrap().split(':').nth(1),
            Some("/var/lib/sailstream"),
            "{name} keeps its state on the shared volume"
        );
        let mut c = bin();
        c.args(["config", "show"]);
        for line in dockerfile.lines() {
            let line = line
                .trim()
                .trim_start_matches("ENV ")
                .trim_end_matches('\\')
                .trim();
            if let Some((k, v)) = line.split_once('=')
                && k.starts_with("SAILSTREAM__")
            {
                c.env(k, v);
            }
        }
        for (k, v) in service["environment"].as_object().unwrap() {
            // ${VAR:-default} takes its default here.
            let v = v.as_str().unwrap();
            let v = match v.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
                Some(expr) => expr.split_once(":-").map_or("", |(_, d)| d).to_string(),
                None => v.to_string(),
            };
            c.env(k, v);
        }
        let out = c.output().unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{name}: {stderr}");
        let shown: toml::Table = toml::from_str(&stdout).unwrap();
        assert_eq!(
            shown["store"]["path"].as_str(),
            Some("/var/lib/sailstream/store")
        );
    }
    assert_eq!(doc["services"]["lookup"]["command"][0], "serve");
    assert_eq!(doc["services"]["worker"]["command"][0], "worker");

    // The image is built by the same set-up script, and copies the ONNX Runtime version that script installs.
    let setup =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/setup.sh"))
            .unwrap();
    let ort = setup
        .lines()
        .find_map(|l| l.strip_prefix("ORT_VERSION="))
        .unwrap();
    assert!(dockerfile.contains("SAILSTREAM_RUNTIME_ONLY=1 scripts/setup.sh"));
    assert!(dockerfile.contains(&format!("/opt/sailstream/onnxruntime-{ort}")));

    // The GPU option reserves a GPU for the worker and builds the CUDA provider in.
    let gpu = compose("docker-compose.gpu.yml");
    let worker = &gpu["services"]["worker"];
    assert_eq!(worker["build"]["args"]["FEATURES"], "cuda");
    assert_eq!(
        worker["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"][0],
        "gpu"
    );
}

/// The operations docs describe the code as it is: every config key the code reads is in the README's
/// reference (and the reference is fresh), every metric constant is in the README's table and on the dashboard.
#[test]
fn operations_docs_cover_every_config_key_and_metric() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let check = Command::new("python3")
        .arg(root.join("scripts/config_reference.py"))
        .arg("--check")
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );

    let out = bin().args(["config", "show"]).output().unwrap();
    let shown: toml::Table = toml::from_str(&text(&out).0).unwrap();
    fn leaves(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
        for (k, v) in table {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                // Free-form tables are one key; so is the ingest.files array.
                toml::Value::Table(t)
                    if !["kafka.client", "jobs.training_weights"].contains(&key.as_str()) =>
                {
                    leaves(&key, t, out)
                }
                _ => out.push(key),
            }
        }
    }
    let mut keys = Vec::new();
    leaves("", &shown, &mut keys);
    assert!(keys.len() > 80, "{keys:?}");
    for key in &keys {
        assert!(
            readme.contains(&format!("| `{key}` |")),
            "README's configuration reference lacks {key}"
        );
    }

    let metrics_rs = std::fs::read_to_string(root.join("src/metrics.rs")).unwrap();
    let dashboard = std::fs::read_to_string(root.join("deploy/grafana-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["targets"][0]["expr"].as_str().map(str::to_string))
        .collect();
    let names: Vec<&str> = metrics_rs
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub const "))
        .filter_map(|l| l.split('"').nth(1))
        .collect();
    assert!(names.len() >= 28, "{names:?}");
    for name in names {
        assert!(
            readme.contains(&format!("| `{name}` |")),
            "README's metrics table lacks {name}"
        );
        assert!(
            exprs.iter().any(|e| e.contains(name)),
            "the Grafana dashboard lacks {name}"
        );
    }
}

/// The README's main command runs the demo over a folder of dumps (MovieLens-100k there; the bundled sample's
/// folder here, to stay quick): backfill, quality table, lookups from the running server.
#[test]
fn demo_over_a_folder_of_dumps_tells_the_whole_story() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let out = harness::demo_in(state).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("backfill finished"), "{stderr}");
    for want in [
        "backfilling pipelines/sample",
        "Nearest items by embedding",
        "Teacher targets",
        "Quality of the embeddings",
        "Copair-i2i Recall@1 ",
        "Lookup API at http://127.0.0.1:",
        "candidate      mean_cos",
    ] {
        assert!(stdout.contains(want), "{want}:\n{stdout}");
    }
}
