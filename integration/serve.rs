//! The lookup API (`sailstream serve`) against a store filled by the real pipeline: the bundled sample replayed
//! and embedded with the real ONNX model, then every DataFusion job. Responses are compared with the store read
//! directly, match features with a plain re-implementation of their documented definitions, and every body
//! with `schemas/openapi.json`.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sailstream::serve::client::{Client, Reply};
use sailstream::store::{HistoryEntry, Store, cf};
use serde_json::{Value, json};

mod harness;

const SAMPLE_ITEMS: &str = "pipelines/sample/items.jsonl";
const SAMPLE_BEHAVIOURS: &str = "pipelines/sample/behaviours.jsonl";

fn bin(state: &Path) -> Command {
    let mut c = harness::sailstream();
    c.env("SAILSTREAM__STORE__PATH", state.join("store"))
        .env("SAILSTREAM__OFFLINE_LOG__PATH", state.join("log"))
        .env("SAILSTREAM__JOBS__OUTPUT_DIR", state.join("exports"))
        .env("SAILSTREAM__METRICS__ENABLED", "false");
    c
}

fn run(c: &mut Command) -> String {
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    stderr
}

/// The sample through ingest, embed and every job, built once for the tests of this file.
fn pipeline_state() -> &'static Path {
    static STATE: OnceLock<PathBuf> = OnceLock::new();
    STATE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-pipeline");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        run(bin(&dir).args([
            "replay",
            "--file",
            &format!("{SAMPLE_ITEMS}:sail.items"),
            "--file",
            &format!("{SAMPLE_BEHAVIOURS}:sail.behaviours"),
        ]));
        run(bin(&dir).args(["job", "all"]));
        dir
    })
}

/// A `sailstream serve` process, killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(state: &Path, extra_env: &[(&str, &str)]) -> Server {
        let addr: SocketAddr = format!("127.0.0.1:{}", harness::free_port())
            .parse()
            .unwrap();
        let mut c = bin(state);
        c.env("SAILSTREAM__SERVE__LISTEN", addr.to_string())
            .env("SAILSTREAM__METRICS__ENABLED", "true")
            .env("SAILSTREAM__SERVE__CATCH_UP_INTERVAL_MS", "200")
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in extra_env {
            c.env(k, v);
        }
        let mut child = c.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read;
                child.stderr.take().unwrap().read_to_string(&mut err).ok();
                panic!("serve exited early ({status}): {err}");
            }
            if let Ok(r) = Client::new(addr).get("/readyz")
                && r.status == 200
            {
                break;
            }
            assert!(Instant::now() < deadline, "serve not ready within 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        Server { child, addr }
    }

    fn client(&self) -> Client {
        Client::new(self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Validates bodies against `schemas/openapi.json`: the (path, method, status) must be documented there, and
/// the body must match the schema it names.
struct OpenApi {
    doc: Value,
}

impl OpenApi {
    fn load() -> OpenApi {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/openapi.json");
        OpenApi {
            doc: serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap(),
        }
    }

    fn check(&self, template: &str, method: &str, reply: &Reply) -> Value {
        let response = &self.doc["paths"][template][method]["responses"][reply.status.to_string()];
        assert!(
            response.is_object(),
            "{method} {template} answered {} which schemas/openapi.json does not document: {}",
            reply.status,
            reply.text()
        );
        let content = response["content"].as_object().unwrap();
        let Some(json_body) = content.get("application/json") else {
            return Value::Null;
        };
        let mut schema = json_body["schema"].clone();
        schema["components"] = self.doc["components"].clone();
        let validator = jsonschema::draft202012::options()
            .build(&schema)
            .unwrap_or_else(|e| panic!("openapi schema for {method} {template}: {e}"));
        let body = reply.json().unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&body)
            .map(|e| e.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {template} {}: body does not match schemas/openapi.json: {errors:?}\n{body}",
            reply.status
        );
        body
    }
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn assert_close(what: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() < 1e-4,
        "{what}: served {got}, independent computation {want}"
    );
}

fn unit(v: &[f32]) -> Vec<f64> {
    let norm = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    v.iter().map(|x| *x as f64 / norm).collect()
}

fn cos(a: &[f32], b: &[f32]) -> f64 {
    unit(a).iter().zip(unit(b)).map(|(x, y)| x * y).sum()
}

fn mean_unit<'a>(vs: impl Iterator<Item = &'a Vec<f32>>) -> Option<Vec<f32>> {
    let mut sum: Option<Vec<f64>> = None;
    for v in vs {
        let u = unit(v);
        match &mut sum {
            None => sum = Some(u),
            Some(s) => s.iter_mut().zip(u).for_each(|(a, b)| *a += b),
        }
    }
    sum.map(|s| s.iter().map(|x| *x as f32).collect())
}

/// The features of one candidate, from the definitions in schemas/openapi.json, reading the store directly.
fn expected_features(
    store: &Store,
    user: &str,
    candidate: &str,
    recent_n: usize,
    query_len: usize,
    threshold: f64,
    levels: usize,
) -> Option<Value> {
    let c = store.item_embedding(candidate).unwrap()?;
    let version = c.model_version.clone();
    let codes_of = |item: &str| {
        store
            .semantic_ids(item)
            .unwrap()
            .filter(|(v, _)| *v == version)
            .map(|(_, c)| c)
    };
    let positives: Vec<HistoryEntry> = store.user_positives(user).unwrap();
    let mut seen = HashSet::new();
    let recent: Vec<String> = positives
        .iter()
        .rev()
        .filter(|p| seen.insert(p.item_id.clone()))
        .take(recent_n)
        .map(|p| p.item_id.clone())
        .filter(|id| store.item_embedding(id).unwrap().is_some())
        .collect();
    let r_vecs: Vec<Vec<f32>> = recent
        .iter()
        .map(|id| store.item_embedding(id).unwrap().unwrap().vector)
        .collect();
    let sims: Vec<f64> = r_vecs.iter().map(|r| cos(&c.vector, r)).collect();
    let mut sorted = sims.clone();
    sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
    let top: Vec<f64> = sorted.iter().take(3).copied().collect();
    let avg = |xs: &[f64]| {
        if xs.is_empty() {
            0.0
        } else {
            xs.iter().sum::<f64>() / xs.len() as f64
        }
    };
    let interests = store.user_interests(user).unwrap();
    let cand_codes = codes_of(candidate);
    let r_codes: Vec<Vec<u32>> = recent.iter().filter_map(|id| codes_of(id)).collect();
    let overlap: Vec<f64> = (1..=levels)
        .map(|l| match &cand_codes {
            Some(cc) if !r_codes.is_empty() && cc.len() >= l => {
                r_codes
                    .iter()
                    .filter(|rc| rc.len() >= l && rc[..l] == cc[..l])
                    .count() as f64
                    / r_codes.len() as f64
            }
            _ => 0.0,
        })
        .collect();
    let teacher = store.teacher_target(candidate, "seq2item").unwrap();
    let query = mean_unit(r_vecs.iter().take(query_len));
    let seq2item_cos = match (&teacher, &query) {
        (Some(t), Some(q)) => cos(&t.vector, q),
        _ => 0.0,
    };
    let mut id_cos = BTreeMap::new();
    for t in store.teacher_targets(candidate).unwrap() {
        let Some(space) = t.kind.strip_prefix("id:") else {
            continue;
        };
        let user_vectors: Vec<Vec<f32>> = recent
            .iter()
            .filter_map(|id| store.teacher_target(id, &t.kind).unwrap())
            .map(|t| t.vector)
            .collect();
        if let Some(m) = mean_unit(user_vectors.iter()) {
            id_cos.insert(space.to_string(), cos(&t.vector, &m));
        }
    }
    Some(json!({
        "interest_mean_cos": interests.as_ref().map_or(0.0, |u| cos(&c.vector, &u.mean)),
        "interest_cluster_weighted_max": interests
            .as_ref()
            .filter(|u| !u.clusters.is_empty())
            .map_or(0.0, |u| u
                .clusters
                .iter()
                .map(|k| k.weight as f64 * cos(&c.vector, &k.centroid))
                .fold(f64::NEG_INFINITY, f64::max)),
        "recent_max_cos": sorted.first().copied().unwrap_or(0.0),
        "recent_mean_cos": avg(&sims),
        "recent_top3_mean_cos": avg(&top),
        "recent_count_above": sims.iter().filter(|s| **s >= threshold).count(),
        "sid_prefix_overlap": overlap,
        "has_semantic_ids": cand_codes.is_some(),
        "seq2item_teacher_cos": seq2item_cos,
        "has_seq2item_teacher": teacher.is_some(),
        "id2item_teacher_cos": id_cos,
    }))
}

fn compare_features(what: &str, got: &Value, want: &Value) {
    for (name, w) in want.as_object().unwrap() {
        let g = &got[name];
        match w {
            Value::Number(n) => assert_close(
                &format!("{what} {name}"),
                g.as_f64().unwrap(),
                n.as_f64().unwrap(),
            ),
            Value::Array(ws) => {
                let gs = g.as_array().unwrap();
                assert_eq!(gs.len(), ws.len(), "{what} {name}");
                for (i, (g, w)) in gs.iter().zip(ws).enumerate() {
                    assert_close(
                        &format!("{what} {name}[{i}]"),
                        g.as_f64().unwrap(),
                        w.as_f64().unwrap(),
                    );
                }
            }
            Value::Object(ws) => {
                let gs = g.as_object().unwrap();
                assert_eq!(
                    gs.keys().collect::<Vec<_>>(),
                    ws.keys().collect::<Vec<_>>(),
                    "{what} {name}"
                );
                for (k, w) in ws {
                    assert_close(
                        &format!("{what} {name}.{k}"),
                        gs[k].as_f64().unwrap(),
                        w.as_f64().unwrap(),
                    );
                }
            }
            other => assert_eq!(g, other, "{what} {name}"),
        }
    }
}

#[test]
fn every_endpoint_answers_from_the_pipeline_store_as_documented() {
    let state = pipeline_state();
    let server = Server::start(state, &[]);
    let api = OpenApi::load();
    let store = Store::open_read_only(state.join("store")).unwrap();
    let config = sailstream::Config::load(None).unwrap();
    let mut client = server.client();

    // Item embeddings: exactly the stored vector, its model and its codes.
    let items = store.ids(cf::ITEM_EMBEDDINGS, 1000).unwrap();
    assert_eq!(
        items.len() as u64,
        store.key_count(cf::ITEMS).unwrap(),
        "every stored sample item is embedded"
    );
    let item = &items[3];
    let stored = store.item_embedding(item).unwrap().unwrap();
    let r = client.get(&format!("/v1/items/{item}/embedding")).unwrap();
    let body = api.check("/v1/items/{item_id}/embedding", "get", &r);
    assert_eq!(r.status, 200);
    assert_eq!(body["found"], true);
    assert_eq!(f32s(&body["vector"]), stored.vector);
    assert_eq!(body["model_version"], stored.model_version.as_str());
    let (_, codes) = store.semantic_ids(item).unwrap().unwrap();
    assert_eq!(body["semantic_ids"], json!(codes));

    // A declared Matryoshka prefix comes back renormalised; an undeclared one is the caller's mistake.
    let r = client
        .get(&format!("/v1/items/{item}/embedding?dim=384"))
        .unwrap();
    let body = api.check("/v1/items/{item_id}/embedding", "get", &r);
    let prefix = f32s(&body["vector"]);
    assert_eq!(prefix.len(), 384);
    for (got, want) in prefix.iter().zip(unit(&stored.vector[..384])) {
        assert!((*got as f64 - want).abs() < 1e-6);
    }
    let r = client
        .get(&format!("/v1/items/{item}/embedding?dim=100"))
        .unwrap();
    let body = api.check("/v1/items/{item_id}/embedding", "get", &r);
    assert_eq!(r.status, 400);
    assert!(body["error"].as_str().unwrap().contains("384"), "{body}");

    // A batch keeps the request order and flags what is missing.
    let ids = json!([items[0], "no-such-item", items[1]]);
    let r = client
        .post_json(
            "/v1/items/embeddings",
            &json!({"item_ids": ids}).to_string(),
        )
        .unwrap();
    let body = api.check("/v1/items/embeddings", "post", &r);
    let got = body["items"].as_array().unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0]["item_id"], items[0].as_str());
    assert_eq!(got[1], json!({"item_id": "no-such-item", "found": false}));
    assert_eq!(got[2]["found"], true);

    // User interests: the stored mean and clusters, the positives newest first.
    let users = store.ids(cf::USER_INTERESTS, 1000).unwrap();
    assert!(users.len() >= 10, "{users:?}");
    let user = &users[0];
    let interests = store.user_interests(user).unwrap().unwrap();
    let r = client
        .get(&format!("/v1/users/{user}/interests?recent=5"))
        .unwrap();
    let body = api.check("/v1/users/{user_id}/interests", "get", &r);
    assert_eq!(body["has_interests"], true);
    assert_eq!(f32s(&body["mean"]), interests.mean);
    let clusters = body["clusters"].as_array().unwrap();
    assert_eq!(clusters.len(), interests.clusters.len());
    for (got, want) in clusters.iter().zip(&interests.clusters) {
        assert_eq!(got["medoid_item_id"], want.medoid.as_str());
        assert_eq!(f32s(&got["centroid"]), want.centroid);
    }
    let positives = store.user_positives(user).unwrap();
    let recent: Vec<&str> = body["recent_positives"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["item_id"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = positives
        .iter()
        .rev()
        .take(5)
        .map(|p| p.item_id.as_str())
        .collect();
    assert_eq!(recent, want);
    let r = client.get("/v1/users/nobody/interests").unwrap();
    let body = api.check("/v1/users/{user_id}/interests", "get", &r);
    assert_eq!(
        (body["found"].clone(), body["has_interests"].clone()),
        (json!(false), json!(false))
    );

    // Match features for several users, every candidate and feature against the independent computation.
    let levels = config.jobs.semantic_id_codebooks.len();
    let mut candidates: Vec<String> = items.iter().step_by(2).cloned().collect();
    candidates.push("no-such-item".into());
    let (mut with_teacher, mut with_ids) = (0, 0);
    for user in users.iter().take(5) {
        let r = client
            .post_json(
                "/v1/match",
                &json!({"user_id": user, "candidates": candidates}).to_string(),
            )
            .unwrap();
        let body = api.check("/v1/match", "post", &r);
        assert_eq!(body["user_found"], true);
        assert_eq!(body["semantic_id_levels"], levels);
        let served = body["candidates"].as_array().unwrap();
        assert_eq!(served.len(), candidates.len());
        for (got, id) in served.iter().zip(&candidates) {
            assert_eq!(got["item_id"], id.as_str());
            match expected_features(
                &store,
                user,
                id,
                config.serve.recent_positives,
                config.jobs.seq2item_query_len,
                config.serve.match_threshold as f64,
                levels,
            ) {
                Some(want) => {
                    assert_eq!(got["found"], true);
                    compare_features(&format!("{user} x {id}"), &got["features"], &want);
                    with_teacher += usize::from(want["has_seq2item_teacher"] == true);
                    with_ids +=
                        usize::from(!want["id2item_teacher_cos"].as_object().unwrap().is_empty());
                }
                None => {
                    assert_eq!(got["found"], false);
                    assert_eq!(got["features"]["recent_count_above"], 0);
                    assert_eq!(got["features"]["interest_mean_cos"], 0.0);
                }
            }
        }
    }
    // The comparison covered the teacher features, not only their defaults.
    assert!(
        with_teacher > 0 && with_ids > 0,
        "{with_teacher} {with_ids}"
    );

    // An unknown user: every candidate still answered, user-relative features at their defaults.
    let r = client
        .post_json(
            "/v1/match",
            &json!({"user_id": "nobody", "candidates": [items[0]]}).to_string(),
        )
        .unwrap();
    let body = api.check("/v1/match", "post", &r);
    assert_eq!(body["user_found"], false);
    assert_eq!(body["candidates"][0]["found"], true);
    assert_eq!(body["candidates"][0]["features"]["recent_max_cos"], 0.0);

    // Probes and metrics.
    let r = client.get("/healthz").unwrap();
    api.check("/healthz", "get", &r);
    let r = client.get("/readyz").unwrap();
    let body = api.check("/readyz", "get", &r);
    assert_eq!(body["store_access"], "secondary");
    assert_eq!(
        body["models"],
        json!([format!("{} {}", stored.model, stored.model_version)])
    );
    let r = client.get("/metrics").unwrap();
    api.check("/metrics", "get", &r);
    assert!(
        r.text()
            .contains("sailstream_serve_requests_total{route=\"/v1/match\",status=\"200\"}"),
        "{}",
        r.text()
    );
    // The match requests above shared their candidates: the later ones found them decoded in the item cache.
    let text = r.text();
    let counted = |outcome: &str| -> f64 {
        let prefix = format!("sailstream_serve_item_cache_total{{outcome=\"{outcome}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no {prefix} in {text}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert!(
        counted("hit") >= 4.0 * (candidates.len() - 1) as f64,
        "{text}"
    );
    assert!(counted("miss") >= (candidates.len() - 1) as f64, "{text}");

    // Every documented path was exercised above; nothing else is routed.
    let documented: Vec<&String> = api.doc["paths"].as_object().unwrap().keys().collect();
    assert_eq!(documented.len(), 7, "{documented:?}");
}

#[test]
fn bad_input_gets_a_4xx_with_a_reason_and_never_a_5xx() {
    let state = pipeline_state();
    let server = Server::start(state, &[]);
    let api = OpenApi::load();
    let mut client = server.client();
    let many: Vec<String> = (0..1001).map(|i| format!("i{i}")).collect();
    let long_id = "x".repeat(200);
    let big_body = format!(
        "{{\"user_id\": \"u\", \"candidates\": [\"{}\"]}}",
        "y".repeat(2 << 20)
    );
    // (method, path, template, content type, body, expected status, words the reason must contain)
    type Case<'a> = (
        &'a str,
        String,
        &'a str,
        Option<&'a str>,
        String,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/v1/match".into(),
            "/v1/match",
            Some("application/json"),
            r#"{"user_id": 5, "candidates": []}"#.into(),
            422,
            "user_id",
        ),
        (
            "POST",
            "/v1/match".into(),
            "/v1/match",
            Some("application/json"),
            r#"{"user_id": "u", "candidates": [], "extra": 1}"#.into(),
            422,
            "unknown field",
        ),
        (
            "POST",
            "/v1/match".into(),
            "/v1/match",
            Some("application/json"),
            r#"{"user_id": "u", "candidates": "#.into(),
            400,
            "EOF",
        ),
        (
            "POST",
            "/v1/match".into(),
            "/v1/match",
            None,
            r#"{"user_id": "u", "candidates": []}"#.into(),
            415,
            "Content-Type",
        ),
        (
            "POST",
            "/v1/match".into(),
            "/v1/match",
            Some("application/json"),
            json!({"user_id": "u", "candidates": many}).to_string(),
            400,
            "max_batch",
        ),
        (
            "POST",
            "/v1/match".into(),
            "/v1/match",
            Some("application/json"),
            big_body,
            413,
            "length limit",
        ),
        (
            "POST",
            "/v1/match".into(),
            "/v1/match",
            Some("application/json"),
            json!({"user_id": long_id, "candidates": []}).to_string(),
            400,
            "too long",
        ),
        (
            "POST",
            "/v1/match".into(),
            "/v1/match",
            Some("application/json"),
            json!({"user_id": "u", "candidates": ["has space"]}).to_string(),
            400,
            "printable ASCII",
        ),
        (
            "POST",
            "/v1/items/embeddings".into(),
            "/v1/items/embeddings",
            Some("application/json"),
            json!({"item_ids": many}).to_string(),
            400,
            "max_batch",
        ),
        (
            "POST",
            "/v1/items/embeddings".into(),
            "/v1/items/embeddings",
            Some("application/json"),
            json!({"item_ids": ["a"], "dim": -3}).to_string(),
            422,
            "dim",
        ),
        (
            "GET",
            format!("/v1/items/{long_id}/embedding"),
            "/v1/items/{item_id}/embedding",
            None,
            String::new(),
            400,
            "too long",
        ),
        (
            "GET",
            "/v1/items/caf%C3%A9/embedding".into(),
            "/v1/items/{item_id}/embedding",
            None,
            String::new(),
            400,
            "printable ASCII",
        ),
        (
            "GET",
            "/v1/items/a/embedding?dim=abc".into(),
            "/v1/items/{item_id}/embedding",
            None,
            String::new(),
            400,
            "dim",
        ),
        (
            "GET",
            "/v1/items/a/embedding?colour=red".into(),
            "/v1/items/{item_id}/embedding",
            None,
            String::new(),
            400,
            "unknown field",
        ),
        (
            "GET",
            "/v1/users/u/interests?recent=100000".into(),
            "/v1/users/{user_id}/interests",
            None,
            String::new(),
            400,
            "positives_cap",
        ),
    ];
    for (method, path, template, content_type, body, status, reason) in &cases {
        let headers: Vec<(&str, &str)> =
            content_type.iter().map(|c| ("Content-Type", *c)).collect();
        let body_bytes = (!body.is_empty()).then_some(body.as_bytes());
        let r = client.request(method, path, &headers, body_bytes).unwrap();
        assert_eq!(
            r.status,
            *status,
            "{method} {path}: expected {status}, got {}: {}",
            r.status,
            r.text()
        );
        let parsed = api.check(template, &method.to_lowercase(), &r);
        let error = parsed["error"].as_str().unwrap();
        assert!(
            error.contains(reason),
            "{method} {path}: reason '{error}' lacks '{reason}'"
        );
    }

    // Outside the API's routes: JSON 404 and 405, a huge request line refused by the HTTP layer.
    let r = client.get("/v1/nothing-here").unwrap();
    assert_eq!(
        (r.status, r.json().unwrap()["code"].clone()),
        (404, json!("not_found"))
    );
    let r = client.get("/v1/match").unwrap();
    assert_eq!(
        (r.status, r.json().unwrap()["code"].clone()),
        (405, json!("method_not_allowed"))
    );
    let r = Client::new(server.addr)
        .get(&format!("/v1/items/{}/embedding", "z".repeat(200_000)))
        .unwrap();
    assert!((400..500).contains(&r.status), "{}", r.status);

    // Still serving.
    assert_eq!(client.get("/healthz").unwrap().status, 200);
}

#[test]
fn serve_follows_the_live_store_and_checks_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let items = std::fs::read_to_string(SAMPLE_ITEMS).unwrap();
    let lines: Vec<&str> = items.lines().collect();
    // Items v0001..v0039 first; v0040 (line 40) and the rest of the file later.
    let (first, rest) = lines.split_at(39);
    let write = |name: &str, lines: &[&str]| {
        let p = state.join(name);
        std::fs::write(&p, lines.join("\n") + "\n").unwrap();
        p
    };
    let first = write("first.jsonl", first);
    let rest = write("rest.jsonl", rest);
    run(bin(state).args([
        "replay",
        "--file",
        &format!("{}:sail.items", first.display()),
    ]));

    let token = "a-token-of-sixteen-chars";
    let server = Server::start(state, &[("SAILSTREAM__SERVE__BEARER_TOKEN", token)]);
    let late: Value = serde_json::from_str(lines[39]).unwrap();
    let late_id = late["item_id"].as_str().unwrap();
    let path = format!("/v1/items/{late_id}/embedding");

    // The token guards /v1/ only.
    let r = server.client().get(&path).unwrap();
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json().unwrap()["code"], "unauthorized");
    let r = server
        .client()
        .with_token("a-wrong-token-of-the-same")
        .get(&path)
        .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(server.client().get("/healthz").unwrap().status, 200);
    let mut client = server.client().with_token(token);
    assert_eq!(client.get(&path).unwrap().json().unwrap()["found"], false);

    // A writer (here a replay) adds items to the live store while the server runs; the server catches up.
    run(bin(state).args([
        "replay",
        "--file",
        &format!("{}:sail.items", rest.display()),
    ]));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = client.get(&path).unwrap().json().unwrap();
        if body["found"] == true {
            let stored = Store::open_read_only(state.join("store"))
                .unwrap()
                .item_embedding(late_id)
                .unwrap()
                .unwrap();
            assert_eq!(f32s(&body["vector"]), stored.vector);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server never saw the new item"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ready = client.get("/readyz").unwrap().json().unwrap();
    assert!(ready["staleness_ms"].as_u64().unwrap() < 5_000, "{ready}");
}

/// The registry entry of the 4-dimension model "m" 1 the in-process tests write embeddings for.
fn model_m(matryoshka_prefixes: Vec<usize>) -> sailstream::store::ModelInfo {
    sailstream::store::ModelInfo {
        name: "m".into(),
        version: "1".into(),
        dim: 4,
        matryoshka_prefixes,
        normalized: true,
    }
}

/// A lookup server inside this process over `store` (as in the worker with `serve.in_worker`); stops when the
/// returned sender is used or dropped.
struct InProcess {
    runtime: tokio::runtime::Runtime,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<sailstream::Result<()>>,
    addr: SocketAddr,
}

impl InProcess {
    fn start(store: Arc<Store>) -> InProcess {
        let mut config = sailstream::Config::load(None).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", harness::free_port())
            .parse()
            .unwrap();
        config.serve.listen = addr.to_string();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = runtime.spawn(sailstream::serve::run(
            config,
            sailstream::serve::Source::Shared(store),
            None,
            async move {
                let _ = stopped.await;
            },
        ));
        let mut client = Client::new(addr);
        let deadline = Instant::now() + Duration::from_secs(10);
        while client.get("/healthz").is_err() {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(50));
        }
        InProcess {
            runtime,
            stop,
            server,
            addr,
        }
    }

    fn client(&self) -> Client {
        Client::new(self.addr)
    }

    fn stop(self) {
        self.stop.send(()).unwrap();
        self.runtime.block_on(self.server).unwrap().unwrap();
    }
}

/// Inside the worker the server shares the writer's store: a write is visible to the next request.
#[test]
fn in_process_server_over_the_primary_sees_each_commit() {
    use sailstream::schema::ItemEmbedding;

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path().join("store")).unwrap());
    let server = InProcess::start(store.clone());
    let mut client = server.client();
    assert_eq!(
        client
            .get("/v1/items/i1/embedding")
            .unwrap()
            .json()
            .unwrap()["found"],
        false
    );
    let mut batch = store.batch();
    batch.put_model_info(&model_m(vec![2, 4])).unwrap();
    batch
        .put_item_embedding(&ItemEmbedding {
            item_id: "i1".into(),
            model: "m".into(),
            model_version: "1".into(),
            item_version: 1,
            vector: vec![0.5, 0.5, 0.5, 0.5],
            semantic_ids: vec![],
            ts: 1_764_000_000_000,
        })
        .unwrap();
    batch.commit().unwrap();
    let body = client
        .get("/v1/items/i1/embedding")
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(body["vector"], json!([0.5, 0.5, 0.5, 0.5]));
    // The model registry arrives with the catch-up interval (also on the primary).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = client.get("/v1/items/i1/embedding?dim=2").unwrap();
        if r.status == 200 {
            let v = f32s(&r.json().unwrap()["vector"]);
            assert!((v[0] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
            break;
        }
        assert!(Instant::now() < deadline, "{}", r.text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let ready = client.get("/readyz").unwrap().json().unwrap();
    assert_eq!(ready["store_access"], "primary");
    server.stop();
}

/// Match features keep decoded items between requests; every write to an item (embedding, semantic IDs, teacher
/// targets, also of a user's recent positive) is seen by the very next request.
/// Writes `vector` as the stored embedding of `item` under the 4-dimension model "m" 1.
fn embed_m(store: &Store, item: &str, vector: [f32; 4]) {
    let mut batch = store.batch();
    batch
        .put_item_embedding(&sailstream::schema::ItemEmbedding {
            item_id: item.into(),
            model: "m".into(),
            model_version: "1".into(),
            item_version: 1,
            vector: vector.to_vec(),
            semantic_ids: vec![],
            ts: 1_764_000_000_000,
        })
        .unwrap();
    batch.commit().unwrap();
}

/// A store with model "m", user u1 whose one positive is p1, and p1 and the candidate c1 both embedded along
/// the first axis.
fn one_user_one_candidate(path: &Path) -> Arc<Store> {
    let store = Arc::new(Store::open(path).unwrap());
    let mut batch = store.batch();
    batch.put_model_info(&model_m(vec![4])).unwrap();
    let positives = [HistoryEntry {
        item_id: "p1".into(),
        action: sailstream::schema::Action::Like,
        ts: 1_764_000_000_000,
        dwell_ms: 0,
        rating: None,
    }];
    batch.put_user_lists("u1", &positives, &positives).unwrap();
    batch.commit().unwrap();
    embed_m(&store, "p1", [1.0, 0.0, 0.0, 0.0]);
    embed_m(&store, "c1", [1.0, 0.0, 0.0, 0.0]);
    store
}

/// c1's features for u1.
fn features_of_c1(client: &mut Client) -> Value {
    let r = client
        .post_json(
            "/v1/match",
            &json!({"user_id": "u1", "candidates": ["c1"]}).to_string(),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json().unwrap()["candidates"][0]["features"].clone()
}

#[test]
fn match_features_see_each_item_write_despite_the_item_cache() {
    use sailstream::store::TeacherTarget;

    let dir = tempfile::tempdir().unwrap();
    let store = one_user_one_candidate(&dir.path().join("store"));
    let embed = |item: &str, vector: [f32; 4]| embed_m(&store, item, vector);
    let server = InProcess::start(store.clone());
    let mut client = server.client();
    let mut features = || features_of_c1(&mut client);
    let cos = |f: &Value| f["recent_max_cos"].as_f64().unwrap();
    assert!((cos(&features()) - 1.0).abs() < 1e-6);
    // Asked again (now from the cache): the same answer.
    assert!((cos(&features()) - 1.0).abs() < 1e-6);

    embed("c1", [0.0, 1.0, 0.0, 0.0]);
    assert!(
        cos(&features()).abs() < 1e-6,
        "the candidate's new embedding"
    );
    embed("p1", [0.0, 1.0, 0.0, 0.0]);
    assert!(
        (cos(&features()) - 1.0).abs() < 1e-6,
        "the recent positive's new embedding"
    );

    let f = features();
    assert_eq!(f["has_semantic_ids"], false);
    assert_eq!(f["has_seq2item_teacher"], false);
    let mut batch = store.batch();
    batch.put_semantic_ids("c1", "1", &[3, 1]).unwrap();
    batch
        .put_teacher_target(
            "c1",
            &TeacherTarget {
                kind: "seq2item".into(),
                source: "test".into(),
                samples: 1,
                ts: 1_764_000_000_000,
                vector: vec![0.0, 1.0, 0.0, 0.0],
            },
        )
        .unwrap();
    batch.commit().unwrap();
    let f = features();
    assert_eq!(f["has_semantic_ids"], true);
    assert_eq!(f["has_seq2item_teacher"], true);
    assert!((f["seq2item_teacher_cos"].as_f64().unwrap() - 1.0).abs() < 1e-6);

    let mut batch = store.batch();
    batch.delete_teacher_target("c1", "seq2item").unwrap();
    batch.commit().unwrap();
    assert_eq!(features()["has_seq2item_teacher"], false);

    server.stop();
}

/// A `serve` process over the live store (a secondary that catches up) answers a repeated request from its item
/// cache without re-reading the item while nothing is written, and still sees each later write to the
/// candidate and to the recent positive once it has caught up.
#[test]
fn match_features_on_a_secondary_see_item_writes_after_a_catch_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = one_user_one_candidate(&dir.path().join("store"));
    let server = Server::start(dir.path(), &[]);
    let mut client = server.client();
    let cos = |f: &Value| f["recent_max_cos"].as_f64().unwrap();
    for _ in 0..3 {
        assert!((cos(&features_of_c1(&mut client)) - 1.0).abs() < 1e-6);
    }
    let until = |client: &mut Client, want: f64, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while (cos(&features_of_c1(client)) - want).abs() > 1e-6 {
            assert!(Instant::now() < deadline, "the server never saw {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    embed_m(&store, "c1", [0.0, 1.0, 0.0, 0.0]);
    until(&mut client, 0.0, "the candidate's new embedding");
    embed_m(&store, "p1", [0.0, 1.0, 0.0, 0.0]);
    until(&mut client, 1.0, "the recent positive's new embedding");
}
