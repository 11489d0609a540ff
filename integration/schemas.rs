//! The Rust contracts and the JSON Schemas in `schemas/` accept and refuse the same records.

use base64::Engine as _;
use sailstream::Config;
use sailstream::schema::{self, DeadLetter, DecodeError, InputKind, ItemEmbedding};
use serde_json::{Value, json};

fn schema(name: &str) -> jsonschema::Validator {
    let path = format!("{}/schemas/{name}.schema.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let value: Value = serde_json::from_str(&text).unwrap();
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&value)
        .unwrap_or_else(|e| panic!("{path} is not a valid schema: {e}"))
}

/// For every sample: (schema says valid) == (Rust decodes it). Returns how many samples were checked.
fn agree(kind: InputKind, schema_name: &str, valid: &[Value], invalid: &[Value]) -> usize {
    let validator = schema(schema_name);
    let config = Config::default();
    for (expect_ok, samples) in [(true, valid), (false, invalid)] {
        for sample in samples {
            let bytes = serde_json::to_vec(sample).unwrap();
            let rust = schema::decode(kind, &bytes, &config);
            let schema_ok = validator.is_valid(sample);
            assert_eq!(
                schema_ok,
                expect_ok,
                "JSON Schema {schema_name} on {sample}: {:?}",
                errors(&validator, sample)
            );
            assert_eq!(
                rust.is_ok(),
                expect_ok,
                "Rust decode on {sample}: {:?}",
                rust.err()
            );
        }
    }
    valid.len() + invalid.len()
}

const TS: i64 = 1_700_000_000_000;

/// `base` with the fields of `patch` set.
fn patched(base: &Value, patch: Value) -> Value {
    let mut v = base.clone();
    for (k, val) in patch.as_object().unwrap() {
        v[k] = val.clone();
    }
    v
}

fn errors(v: &jsonschema::Validator, value: &Value) -> Vec<String> {
    v.iter_errors(value).map(|e| e.to_string()).collect()
}

#[test]
fn items_agree() {
    let b64 = base64::engine::general_purpose::STANDARD.encode(b"\x89PNG fake but valid base64");
    let base = json!({"item_id": "v1", "title": "Noodles", "created_at": TS, "version": 3});
    let with = |patch: Value| patched(&base, patch);
    let without = |key: &str| {
        let mut v = base.clone();
        v.as_object_mut().unwrap().remove(key);
        v
    };
    // Only media, only tags, only one text field: each is something to embed.
    let content_only = |content: Value| {
        let mut v = without("title");
        v.as_object_mut()
            .unwrap()
            .extend(content.as_object().unwrap().clone());
        v
    };
    let valid = vec![
        base.clone(),
        with(json!({"source": "douyin.feed"})),
        content_only(json!({"tags": ["t"]})),
        content_only(json!({"asr": " spoken "})),
        content_only(json!({"frames": [{"uri": "file:///f.jpg"}]})),
        content_only(json!({"audio": {"uri": "file:///a.wav"}})),
        with(
            json!({"author_id": "a1", "nickname": "chef", "title": "Noodles", "ocr": "o", "asr": "a", "tags": ["food", "recipe"]}),
        ),
        with(
            json!({"cover": {"uri": "file:///tmp/a.jpg"}, "frames": [{"uri": "https://cdn.example/f1.jpg"}, {"base64": b64, "mime": "image/png"}]}),
        ),
        with(json!({"audio": {"uri": "http://cdn.example/a.wav", "mime": "audio/wav"}})),
        with(json!({"title": "é".repeat(8192)})),
        with(json!({"tags": vec!["t"; 64]})),
        with(json!({"version": 0})),
        with(json!({"created_at": 631_152_000_000i64})),
    ];
    let invalid = vec![
        without("item_id"),
        without("created_at"),
        without("version"),
        with(json!({"item_id": ""})),
        with(json!({"item_id": "has space"})),
        with(json!({"item_id": "x".repeat(129)})),
        with(json!({"title": "é".repeat(8193)})),
        with(json!({"title": 5})),
        with(json!({"tags": vec!["t"; 65]})),
        with(json!({"tags": [""]})),
        with(json!({"tags": ["x".repeat(65)]})),
        with(json!({"cover": {}})),
        with(json!({"cover": {"uri": "ftp://x/a.jpg"}})),
        with(json!({"cover": {"uri": "file:///a", "base64": b64}})),
        with(json!({"cover": {"base64": "not base64!"}})),
        with(json!({"cover": {"base64": "YWJj", "colour": "red"}})),
        with(json!({"frames": vec![json!({"uri": "file:///f.jpg"}); 33]})),
        with(json!({"created_at": 1_700_000_000})),
        with(json!({"created_at": -1})),
        with(json!({"created_at": 4_102_444_800_000i64})),
        with(json!({"version": -1})),
        with(json!({"unknown_field": 1})),
        with(json!({"source": "has space"})),
        without("title"),
        content_only(json!({"title": "   ", "ocr": "\t"})),
        content_only(json!({"tags": [], "frames": []})),
    ];
    assert_eq!(agree(InputKind::Items, "sail.items", &valid, &invalid), 39);
}

#[test]
fn behaviours_agree() {
    let base =
        json!({"user_id": "u1", "item_id": "v1", "action": "play", "dwell_ms": 1200, "ts": TS});
    let with = |patch: Value| patched(&base, patch);
    let mut valid = vec![
        base.clone(),
        with(json!({"action": "rate", "rating": 4.5})),
        with(json!({"rating": 0})),
        with(json!({"context": {"surface": "feed", "request_id": "r-1"}})),
        with(json!({"dwell_ms": 86_400_000})),
    ];
    for action in sailstream::schema::Action::ALL {
        if action != sailstream::schema::Action::Rate {
            valid.push(with(json!({"action": action.as_str()})));
        }
    }
    let many: serde_json::Map<String, Value> =
        (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
    let invalid = vec![
        with(json!({"action": "teleport"})),
        with(json!({"action": "Like"})),
        with(json!({"action": "rate"})),
        with(json!({"ts": 1_700_000_000})),
        with(json!({"ts": "2025-01-01"})),
        with(json!({"dwell_ms": -5})),
        with(json!({"dwell_ms": 86_400_001})),
        with(json!({"rating": 11})),
        with(json!({"rating": -0.5})),
        with(json!({"context": {"k": 1}})),
        with(json!({"context": {"k": "v".repeat(257)}})),
        with(json!({"context": many})),
        with(json!({"user_id": "ü"})),
        with(json!({"extra": true})),
        json!({"user_id": "u1", "item_id": "v1", "action": "play", "ts": TS}),
    ];
    let n = agree(InputKind::Behaviours, "sail.behaviours", &valid, &invalid);
    assert_eq!(n, valid.len() + 15);
}

#[test]
fn id_embeddings_agree() {
    let v64: Vec<f32> = (0..64).map(|i| i as f32 / 64.0).collect();
    let base = json!({"item_id": "v1", "space": "gid", "vector": v64, "version": 1, "ts": TS});
    let with = |patch: Value| patched(&base, patch);
    let valid = vec![base.clone(), with(json!({"version": 9}))];
    let invalid = vec![
        with(json!({"space": "GID"})),
        with(json!({"vector": []})),
        with(json!({"vector": vec![0.5; 4097]})),
        with(json!({"vector": ["a"]})),
        with(json!({"vector": vec![1e39; 64]})),
        with(json!({"ts": 0})),
        with(json!({"dim": 64})),
    ];
    agree(
        InputKind::IdEmbeddings,
        "sail.id_embeddings",
        &valid,
        &invalid,
    );
}

#[test]
fn wrong_dimension_is_refused_with_expected_and_received() {
    // A schema cannot know the configured dimension of a space; Rust checks it against [id_spaces].
    let config = Config::default();
    let sample =
        json!({"item_id": "v1", "space": "gid", "vector": [0.1, 0.2, 0.3], "version": 1, "ts": TS});
    assert!(schema("sail.id_embeddings").is_valid(&sample));
    let err = schema::decode(
        InputKind::IdEmbeddings,
        &serde_json::to_vec(&sample).unwrap(),
        &config,
    )
    .unwrap_err();
    assert_eq!(err.field, "vector");
    assert!(
        err.reason.contains("expected 64") && err.reason.contains("received 3"),
        "{err}"
    );
    let unknown =
        json!({"item_id": "v1", "space": "other", "vector": [0.1], "version": 1, "ts": TS});
    let err = schema::decode(
        InputKind::IdEmbeddings,
        &serde_json::to_vec(&unknown).unwrap(),
        &config,
    )
    .unwrap_err();
    assert_eq!(err.field, "space");
}

#[test]
fn outputs_match_their_schemas() {
    let emb = ItemEmbedding {
        item_id: "v1".into(),
        model: "sail-lite".into(),
        model_version: "1".into(),
        item_version: 3,
        vector: vec![0.6, 0.8],
        semantic_ids: vec![12, 7],
        ts: TS,
    };
    let value = serde_json::to_value(&emb).unwrap();
    let v = schema("sail.item_embeddings");
    assert!(v.is_valid(&value), "{:?}", errors(&v, &value));
    let mut broken = value.clone();
    broken.as_object_mut().unwrap().remove("model");
    assert!(!v.is_valid(&broken));

    let letter = DeadLetter::new(
        "sail.items",
        2,
        99,
        Some(b"k"),
        b"\xff\x00raw",
        DecodeError::new("record", "not UTF-8 text"),
        TS,
    );
    let value = serde_json::to_value(&letter).unwrap();
    let v = schema("sail.dlq");
    assert!(v.is_valid(&value), "{:?}", errors(&v, &value));
    assert_eq!(letter.payload().unwrap(), b"\xff\x00raw");
    let mut broken = value;
    broken["category"] = json!("weird");
    assert!(!v.is_valid(&broken));
}

#[test]
fn bundled_sample_agrees_line_by_line() {
    let config = Config::default();
    let root = env!("CARGO_MANIFEST_DIR");
    let mut checked = 0;
    let mut refused = 0;
    for (file, kind, name) in [
        (
            "pipelines/sample/items.jsonl",
            InputKind::Items,
            "sail.items",
        ),
        (
            "pipelines/sample/behaviours.jsonl",
            InputKind::Behaviours,
            "sail.behaviours",
        ),
    ] {
        let v = schema(name);
        for line in std::fs::read_to_string(format!("{root}/{file}"))
            .unwrap()
            .lines()
        {
            let rust = schema::decode(kind, line.as_bytes(), &config);
            let schema_ok = serde_json::from_str::<Value>(line)
                .map(|j| v.is_valid(&j))
                .unwrap_or(false);
            assert_eq!(rust.is_ok(), schema_ok, "{file}: {line}: {:?}", rust.err());
            checked += 1;
            refused += usize::from(!schema_ok);
        }
    }
    assert!(checked > 1700, "{checked}");
    assert_eq!(
        refused, 5,
        "the sample has exactly 5 invalid records on purpose"
    );
}
