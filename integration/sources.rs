//! File replay (JSONL and both Parquet layouts) through ingest into a real RocksDB store, with resume.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{BinaryArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use sailstream::Config;
use sailstream::config::{FileFormat, FileInput};
use sailstream::ingest::files::FileSource;
use sailstream::ingest::{DeadLetterSink, Ingestor, Source};
use sailstream::store::Store;

/// (user, item, action, dwell, ts, rating)
type Ev = (String, String, &'static str, i64, i64, Option<f64>);

const ACTIONS: [&str; 4] = ["play", "like", "skip", "share"];

/// Deterministic behaviours: (user, item, action, dwell, ts, rating).
fn events(n: usize) -> Vec<Ev> {
    let mut x: u64 = 12345;
    (0..n)
        .map(|i| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let user = format!("u{}", (x >> 33) % 17);
            let item = format!("i{}", (x >> 40) % 23);
            let action = ACTIONS[((x >> 50) % 4) as usize];
            let dwell = ((x >> 20) % 30_000) as i64;
            let rating = (i % 5 == 0).then_some(((x >> 10) % 5 + 1) as f64);
            (
                user,
                item,
                action,
                dwell,
                1_700_000_000_000 + i as i64 * 1000,
                rating,
            )
        })
        .collect()
}

fn json_line(e: &Ev) -> String {
    let mut v = serde_json::json!({"user_id": e.0, "item_id": e.1, "action": e.2, "dwell_ms": e.3, "ts": e.4});
    if let Some(r) = e.5 {
        v["rating"] = serde_json::json!(r);
    }
    v.to_string()
}

/// Reference computed independently of sailstream: events and positives per item under the default
/// positives (like/share/..., play >= 10 s, rating >= 4).
fn reference(evs: &[Ev]) -> BTreeMap<String, (u64, u64, u64)> {
    let mut out = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    for (user, item, action, dwell, _, rating) in evs {
        let positive = matches!(*action, "like" | "share")
            || (*action == "play" && *dwell >= 10_000)
            || rating.is_some_and(|r| r >= 4.0);
        let e = out.entry(item.clone()).or_insert((0u64, 0u64, 0u64));
        e.0 += 1;
        e.1 += u64::from(positive);
        e.2 += u64::from(seen.insert((user.clone(), item.clone())));
    }
    out
}

fn config(store: &Path, batch: usize) -> Config {
    let mut c = Config::default();
    c.store.path = store.to_path_buf();
    c.offline_log.path = store.with_extension("log");
    c.ingest.batch_size = batch;
    c
}

async fn replay(
    config: &Config,
    inputs: &[FileInput],
    max_batches: Option<usize>,
) -> sailstream::ingest::BatchReport {
    let store = Arc::new(Store::open(&config.store.path).unwrap());
    let positions: HashMap<_, _> = store.offsets().unwrap().into_iter().collect();
    let mut source = FileSource::open(inputs, &positions).unwrap();
    let dlq = DeadLetterSink::file(config.store.path.with_extension("dlq.jsonl"));
    let mut ingestor = Ingestor::new(store, Arc::new(config.clone()), dlq).unwrap();
    let mut total = sailstream::ingest::BatchReport::default();
    let mut batches = 0;
    while let Some(batch) = source
        .poll_batch(config.ingest.batch_size, Duration::ZERO)
        .await
        .unwrap()
    {
        if max_batches.is_some_and(|m| batches >= m) {
            break;
        }
        total += ingestor.apply(&batch).await.unwrap().0;
        batches += 1;
    }
    total
}

fn stats(store_path: &Path) -> BTreeMap<String, (u64, u64, u64)> {
    let store = Store::open_read_only(store_path).unwrap();
    store
        .all_item_stats(usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(id, s)| (id, (s.events, s.positives, s.distinct_users)))
        .collect()
}

#[tokio::test]
async fn jsonl_replay_matches_reference_and_resumes_without_double_counting() {
    let dir = tempfile::tempdir().unwrap();
    let evs = events(5000);
    let file = dir.path().join("behaviours.jsonl");
    let mut text: String = evs.iter().map(|e| json_line(e) + "\n").collect();
    text.push_str("{\"broken\n\n"); // one malformed line and one blank line at the end
    std::fs::write(&file, text).unwrap();
    let inputs = vec![FileInput {
        path: file.clone(),
        topic: "sail.behaviours".into(),
        format: FileFormat::Jsonl,
    }];

    // Interrupted twice ("crash" after 3 batches, then after 2 more), then run to the end.
    let cfg = config(&dir.path().join("store"), 400);
    let a = replay(&cfg, &inputs, Some(3)).await;
    let b = replay(&cfg, &inputs, Some(2)).await;
    let c = replay(&cfg, &inputs, None).await;
    assert_eq!((a.records, b.records), (1200, 800));
    assert_eq!(a.applied + b.applied + c.applied, 5000);
    assert_eq!(c.dead_lettered, 1);
    assert_eq!(stats(&cfg.store.path), reference(&evs));

    // A full second replay applies nothing.
    let again = replay(&cfg, &inputs, None).await;
    assert_eq!(again.records, 0);
    assert_eq!(stats(&cfg.store.path), reference(&evs));

    // Compared with one uninterrupted replay into a fresh store: identical.
    let fresh = config(&dir.path().join("fresh"), 5000);
    replay(&fresh, &inputs, None).await;
    assert_eq!(stats(&fresh.store.path), stats(&cfg.store.path));
    let (s1, s2) = (
        Store::open_read_only(&cfg.store.path).unwrap(),
        Store::open_read_only(&fresh.store.path).unwrap(),
    );
    for u in 0..17 {
        let user = format!("u{u}");
        assert_eq!(
            s1.user_history(&user).unwrap(),
            s2.user_history(&user).unwrap(),
            "{user}"
        );
        assert_eq!(
            s1.user_positives(&user).unwrap(),
            s2.user_positives(&user).unwrap(),
            "{user}"
        );
    }

    let dlq = std::fs::read_to_string(cfg.store.path.with_extension("dlq.jsonl")).unwrap();
    let letter: sailstream::schema::DeadLetter =
        serde_json::from_str(dlq.lines().next().unwrap()).unwrap();
    assert_eq!(letter.offset, 5000, "line number of the broken line");
    assert_eq!(letter.category, "malformed");
}

#[tokio::test]
async fn history_caps_keep_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("b.jsonl");
    let lines: String = (0..50)
        .map(|i| format!("{{\"user_id\":\"u\",\"item_id\":\"i{i}\",\"action\":\"like\",\"dwell_ms\":0,\"ts\":{}}}\n", 1_700_000_000_000i64 + i))
        .collect();
    std::fs::write(&file, lines).unwrap();
    let mut cfg = config(&dir.path().join("store"), 7);
    cfg.store.history_cap = 10;
    cfg.store.positives_cap = 5;
    replay(
        &cfg,
        &[FileInput {
            path: file,
            topic: "sail.behaviours".into(),
            format: FileFormat::Jsonl,
        }],
        None,
    )
    .await;
    let store = Store::open_read_only(&cfg.store.path).unwrap();
    let h: Vec<_> = store
        .user_history("u")
        .unwrap()
        .into_iter()
        .map(|e| e.item_id)
        .collect();
    let p: Vec<_> = store
        .user_positives("u")
        .unwrap()
        .into_iter()
        .map(|e| e.item_id)
        .collect();
    assert_eq!(h, (40..50).map(|i| format!("i{i}")).collect::<Vec<_>>());
    assert_eq!(p, (45..50).map(|i| format!("i{i}")).collect::<Vec<_>>());
}

/// Late events, equal timestamps, several users per batch and interrupted replays: each stored list must be the
/// newest `cap` events in (time, arrival) order, worked out here by a stable sort of everything the user sent.
#[tokio::test]
async fn history_caps_hold_for_late_and_tied_events_across_batches() {
    late_and_tied_events(None).await;
}

/// The same with ingest's state cache off, so that every batch reads each user's list heads from the store (what
/// a restarted worker does, or one whose cache has evicted the user) instead of carrying them over.
#[tokio::test]
async fn history_caps_hold_without_the_state_cache() {
    late_and_tied_events(Some(0)).await;
}

/// `state_cache_mb`: None keeps the configured default.
async fn late_and_tied_events(state_cache_mb: Option<usize>) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("b.jsonl");
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    // (user, item, action, ts): ts mostly rising per user, one in four up to a minute late, many ties.
    let mut evs = Vec::new();
    let mut clock = [1_700_000_000_000i64; 4];
    for i in 0..2_000 {
        let u = next(4) as usize;
        clock[u] += next(3) as i64 * 1_000;
        let ts = if next(4) == 0 {
            clock[u] - next(60) as i64 * 1_000
        } else {
            clock[u]
        };
        let action = ["like", "impression", "play", "share"][next(4) as usize];
        evs.push((format!("u{u}"), format!("i{i}"), action, ts));
    }
    let lines: String = evs
        .iter()
        .map(|(u, i, a, ts)| format!("{{\"user_id\":\"{u}\",\"item_id\":\"{i}\",\"action\":\"{a}\",\"dwell_ms\":0,\"ts\":{ts}}}\n"))
        .collect();
    std::fs::write(&file, lines).unwrap();
    let inputs = [FileInput {
        path: file,
        topic: "sail.behaviours".into(),
        format: FileFormat::Jsonl,
    }];
    let mut cfg = config(&dir.path().join("store"), 37);
    cfg.store.history_cap = 25;
    cfg.store.positives_cap = 10;
    if let Some(mb) = state_cache_mb {
        cfg.ingest.state_cache_mb = mb;
    }
    replay(&cfg, &inputs, Some(9)).await;
    replay(&cfg, &inputs, Some(20)).await;
    replay(&cfg, &inputs, None).await;

    let store = Store::open_read_only(&cfg.store.path).unwrap();
    for u in 0..4 {
        let user = format!("u{u}");
        let newest = |positive_only: bool, cap: usize| {
            let mut mine: Vec<_> = evs
                .iter()
                .filter(|e| e.0 == user && (!positive_only || matches!(e.2, "like" | "share")))
                .collect();
            mine.sort_by_key(|e| e.3); // stable: arrival order among equal timestamps
            let keep = mine.len().saturating_sub(cap);
            mine[keep..]
                .iter()
                .map(|e| (e.1.clone(), e.3))
                .collect::<Vec<_>>()
        };
        let got = |list: Vec<sailstream::store::HistoryEntry>| {
            list.into_iter()
                .map(|e| (e.item_id, e.ts))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            got(store.user_history(&user).unwrap()),
            newest(false, 25),
            "history of {user}"
        );
        assert_eq!(
            got(store.user_positives(&user).unwrap()),
            newest(true, 10),
            "positives of {user}"
        );
    }
    assert_eq!(
        store
            .list_users(sailstream::store::cf::USER_HISTORIES, 10)
            .unwrap(),
        ["u0", "u1", "u2", "u3"]
    );
}

#[tokio::test]
async fn parquet_typed_and_event_log_layouts_replay_like_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let evs = events(3000);
    let (first, second) = evs.split_at(1500);

    // Typed layout: the contract's fields as columns.
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Utf8, false),
        Field::new("item_id", DataType::Utf8, false),
        Field::new("action", DataType::Utf8, false),
        Field::new("dwell_ms", DataType::Int64, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("rating", DataType::Float64, true),
    ]));
    let typed = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(
                first.iter().map(|e| e.0.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                first.iter().map(|e| e.1.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(first.iter().map(|e| e.2))),
            Arc::new(Int64Array::from_iter_values(first.iter().map(|e| e.3))),
            Arc::new(Int64Array::from_iter_values(first.iter().map(|e| e.4))),
            Arc::new(first.iter().map(|e| e.5).collect::<Float64Array>()),
        ],
    )
    .unwrap();
    let typed_path = dir.path().join("typed.parquet");
    let mut w =
        ArrowWriter::try_new(std::fs::File::create(&typed_path).unwrap(), schema, None).unwrap();
    w.write(&typed).unwrap();
    w.close().unwrap();

    // Event-log layout: original JSON bytes in a `payload` column.
    let log_schema = Arc::new(Schema::new(vec![Field::new(
        "payload",
        DataType::Binary,
        false,
    )]));
    let payloads: Vec<Vec<u8>> = second.iter().map(|e| json_line(e).into_bytes()).collect();
    let log = RecordBatch::try_new(
        log_schema.clone(),
        vec![Arc::new(BinaryArray::from_iter_values(
            payloads.iter().map(|p| p.as_slice()),
        ))],
    )
    .unwrap();
    let log_path = dir.path().join("log.parquet");
    let mut w =
        ArrowWriter::try_new(std::fs::File::create(&log_path).unwrap(), log_schema, None).unwrap();
    w.write(&log).unwrap();
    w.close().unwrap();

    let inputs = vec![
        FileInput {
            path: typed_path,
            topic: "sail.behaviours".into(),
            format: FileFormat::Parquet,
        },
        FileInput {
            path: log_path,
            topic: "sail.behaviours".into(),
            format: FileFormat::Parquet,
        },
    ];
    let cfg = config(&dir.path().join("store"), 700);
    let first_run = replay(&cfg, &inputs, Some(2)).await;
    let rest = replay(&cfg, &inputs, None).await;
    assert_eq!(
        first_run.applied + rest.applied,
        3000,
        "{first_run:?} {rest:?}"
    );
    assert_eq!(rest.dead_lettered, 0);
    assert_eq!(stats(&cfg.store.path), reference(&evs));
}

#[tokio::test]
async fn missing_input_file_is_a_clear_error() {
    let inputs = vec![FileInput {
        path: "/nonexistent/x.jsonl".into(),
        topic: "sail.items".into(),
        format: FileFormat::Jsonl,
    }];
    let err = FileSource::open(&inputs, &HashMap::new())
        .err()
        .expect("must fail");
    assert!(err.to_string().contains("/nonexistent/x.jsonl"), "{err}");
}

#[tokio::test]
async fn a_new_store_refuses_a_log_directory_holding_another_stores_segments() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("b.jsonl");
    std::fs::write(&file, json_line(&events(1)[0]) + "\n").unwrap();
    let inputs = [FileInput {
        path: file,
        topic: "sail.behaviours".into(),
        format: FileFormat::Jsonl,
    }];
    let first = config(&dir.path().join("first"), 10);
    let mut ingestor = Ingestor::new(
        Arc::new(Store::open(&first.store.path).unwrap()),
        Arc::new(first.clone()),
        DeadLetterSink::file(dir.path().join("dlq")),
    )
    .unwrap();
    let mut source = FileSource::open(&inputs, &HashMap::new()).unwrap();
    ingestor
        .run(&mut source, std::future::pending::<()>(), |_| {})
        .await
        .unwrap();
    drop(ingestor);

    // A second, empty store pointed at the same log directory would number its segments from 0 again.
    let mut second = config(&dir.path().join("second"), 10);
    second.offline_log.path = first.offline_log.path.clone();
    let err = Ingestor::new(
        Arc::new(Store::open(&second.store.path).unwrap()),
        Arc::new(second),
        DeadLetterSink::file(dir.path().join("dlq")),
    )
    .err()
    .expect("must refuse");
    assert!(err.to_string().contains("offline_log.path"), "{err}");
    assert!(err.to_string().contains("already holds segments"), "{err}");

    // The store that wrote them reopens fine.
    Ingestor::new(
        Arc::new(Store::open(&first.store.path).unwrap()),
        Arc::new(first),
        DeadLetterSink::file(dir.path().join("dlq")),
    )
    .unwrap();
}

/// Ingest writes a user's interests mark with their first positive event and then skips it while it knows the
/// mark is in the store. Once the stream's interest update consumes a mark, the user's next positive event must
/// mark them again, or their interests would never follow those positives.
#[tokio::test]
async fn interests_marks_come_back_once_the_interest_update_consumes_them() {
    use sailstream::ingest::SourceRecord;
    use sailstream::jobs::interests::update_pending;
    use sailstream::store::cf;

    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir.path().join("store"), 100);
    let store = Arc::new(Store::open(&cfg.store.path).unwrap());
    let dlq = DeadLetterSink::file(dir.path().join("dlq.jsonl"));
    let mut ingestor = Ingestor::new(store.clone(), Arc::new(cfg.clone()), dlq).unwrap();
    let mut offset = 0;
    let mut batch = |events: &[(&str, &str)]| -> Vec<SourceRecord> {
        events
            .iter()
            .map(|(user, action)| {
                offset += 1;
                let line = format!(
                    "{{\"user_id\":\"{user}\",\"item_id\":\"i{offset}\",\"action\":\"{action}\",\"dwell_ms\":0,\"ts\":{}}}",
                    1_700_000_000_000i64 + offset
                );
                SourceRecord {
                    stream: "sail.behaviours".into(),
                    partition: 0,
                    offset,
                    topic: "sail.behaviours".into(),
                    key: None,
                    payload: line.into_bytes(),
                }
            })
            .collect()
    };
    let pending = |store: &Store| store.ids(cf::INTERESTS_PENDING, usize::MAX).unwrap();

    let first = batch(&[("u1", "like"), ("u2", "like"), ("u3", "skip")]);
    ingestor.apply(&first).await.unwrap();
    assert_eq!(pending(&store), ["u1", "u2"]);
    // Consumes u1's mark only (the update takes users in key order).
    assert_eq!(update_pending(&store, &cfg, 1).unwrap(), 1);
    assert_eq!(pending(&store), ["u2"]);

    let second = batch(&[("u1", "like"), ("u2", "share"), ("u3", "like")]);
    ingestor.apply(&second).await.unwrap();
    assert_eq!(pending(&store), ["u1", "u2", "u3"], "u1 is marked again");

    assert_eq!(update_pending(&store, &cfg, 10).unwrap(), 3);
    let third = batch(&[("u2", "like"), ("u3", "skip"), ("u2", "like")]);
    ingestor.apply(&third).await.unwrap();
    assert_eq!(
        pending(&store),
        ["u2"],
        "only a positive event marks a user"
    );

    // Marks consumed in two different generations (u2's before the fourth batch, u1's after it) both count.
    assert_eq!(update_pending(&store, &cfg, 10).unwrap(), 1);
    let fourth = batch(&[("u1", "like")]);
    ingestor.apply(&fourth).await.unwrap();
    assert_eq!(update_pending(&store, &cfg, 10).unwrap(), 1);
    let fifth = batch(&[("u1", "like"), ("u2", "like")]);
    ingestor.apply(&fifth).await.unwrap();
    assert_eq!(pending(&store), ["u1", "u2"]);

    // More deletes at once than the store keeps a record of: ingest must assume every mark may be gone.
    let mut bulk = store.batch();
    for i in 0..70_000 {
        bulk.delete_interests_pending(&format!("bulk{i}")).unwrap();
    }
    bulk.delete_interests_pending("u1").unwrap();
    bulk.commit().unwrap();
    assert_eq!(pending(&store), ["u2"]);
    let sixth = batch(&[("u1", "like")]);
    ingestor.apply(&sixth).await.unwrap();
    assert_eq!(pending(&store), ["u1", "u2"], "u1 is marked again");
}

/// `Ingestor::run` (what `sailstream replay` calls) commits batches of `ingest.replay_batch_size`, not the
/// worker's `ingest.batch_size`; inside one large batch the newest item and ID-embedding versions win whatever
/// their order, and stale ones are counted as such.
#[tokio::test]
async fn replay_commits_batches_of_the_replay_size_and_newest_versions_win_within_one() {
    let dir = tempfile::tempdir().unwrap();
    let behaviours = dir.path().join("b.jsonl");
    let evs = events(25);
    std::fs::write(
        &behaviours,
        evs.iter().map(|e| json_line(e) + "\n").collect::<String>(),
    )
    .unwrap();
    // 2,000 items, each in versions 2, 3, 1 (in that order); and an ID embedding per item in versions 5, 4.
    let (items, ids) = (dir.path().join("items.jsonl"), dir.path().join("ids.jsonl"));
    let (mut item_lines, mut id_lines) = (String::new(), String::new());
    for version in [2, 3, 1] {
        for i in 0..2_000 {
            let v = serde_json::json!({"item_id": format!("i{i}"), "title": format!("v{version}"),
                "created_at": 1_700_000_000_000i64, "version": version});
            item_lines += &(v.to_string() + "\n");
        }
    }
    for version in [5, 4] {
        for i in 0..2_000 {
            let v = serde_json::json!({"item_id": format!("i{i}"), "space": "gid",
                "vector": vec![version as f32; 64], "version": version, "ts": 1_700_000_000_000i64});
            id_lines += &(v.to_string() + "\n");
        }
    }
    std::fs::write(&items, item_lines).unwrap();
    std::fs::write(&ids, id_lines).unwrap();

    let mut cfg = config(&dir.path().join("store"), 1_000);
    cfg.ingest.replay_batch_size = 10;
    let input = |path: &Path, topic: &str| FileInput {
        path: path.to_path_buf(),
        topic: topic.into(),
        format: FileFormat::Jsonl,
    };
    let run = |cfg: Config, inputs: Vec<FileInput>| async move {
        let mut ingestor = Ingestor::new(
            Arc::new(Store::open(&cfg.store.path).unwrap()),
            Arc::new(cfg.clone()),
            DeadLetterSink::file(cfg.store.path.with_extension("dlq.jsonl")),
        )
        .unwrap();
        let mut source = FileSource::open(&inputs, &HashMap::new()).unwrap();
        let mut sizes = Vec::new();
        let total = ingestor
            .run(&mut source, std::future::pending::<()>(), |r| {
                sizes.push(r.records)
            })
            .await
            .unwrap();
        (sizes, total)
    };
    let (sizes, total) = run(cfg.clone(), vec![input(&behaviours, "sail.behaviours")]).await;
    assert_eq!(sizes, [10, 10, 5], "batches of ingest.replay_batch_size");
    assert_eq!(total.applied, 25);
    assert_eq!(stats(&cfg.store.path), reference(&evs));

    // All 10,000 item and ID-embedding records in one batch.
    cfg.ingest.replay_batch_size = 100_000;
    let (sizes, total) = run(
        cfg.clone(),
        vec![
            input(&items, "sail.items"),
            input(&ids, "sail.id_embeddings"),
        ],
    )
    .await;
    assert_eq!(sizes, [10_000]);
    assert_eq!((total.applied, total.stale_items), (6_000, 4_000));
    let store = Store::open_read_only(&cfg.store.path).unwrap();
    // One embedding job per item, for its newest version only.
    let pending = store.embed_pending(usize::MAX).unwrap();
    assert_eq!(pending.len(), 2_000);
    assert!(pending.iter().all(|(_, version)| *version == 3));
    for i in 0..2_000 {
        let item = store.item(&format!("i{i}")).unwrap().unwrap();
        assert_eq!((item.version, item.title.as_deref()), (3, Some("v3")));
        let (version, _, vector) = store
            .id_embedding(&format!("i{i}"), "gid")
            .unwrap()
            .unwrap();
        assert_eq!((version, vector[0]), (5, 5.0));
    }
}
