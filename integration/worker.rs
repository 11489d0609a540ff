//! The streaming worker as a real process against a real broker: SIGKILL at several points and restarts end with
//! state and offline log identical to an independently computed reference; bad records land in the DLQ with the
//! right reason; the broker going away and coming back loses nothing.

mod harness;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::Broker;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use sailstream::schema::DeadLetter;
use sailstream::store::Store;

const T0: i64 = 1_750_000_000_000;

#[derive(Clone)]
struct Ev {
    user: String,
    item: String,
    action: &'static str,
    dwell: u64,
    ts: i64,
    rating: Option<f64>,
}

impl Ev {
    fn json(&self) -> Vec<u8> {
        let mut v = serde_json::json!({"user_id": self.user, "item_id": self.item, "action": self.action,
            "dwell_ms": self.dwell, "ts": self.ts});
        if let Some(r) = self.rating {
            v["rating"] = serde_json::json!(r);
        }
        serde_json::to_vec(&v).unwrap()
    }
    /// The default positives, written out independently of sailstream's code.
    fn positive(&self) -> bool {
        matches!(
            self.action,
            "like" | "share" | "comment" | "favorite" | "follow" | "finish"
        ) || (self.action == "play" && self.dwell >= 10_000)
            || self.rating.is_some_and(|r| r >= 4.0)
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn behaviours(n: usize, users: u64, items: u64, seed: u64) -> Vec<Ev> {
    const ACTIONS: [&str; 8] = [
        "impression",
        "play",
        "play",
        "like",
        "skip",
        "share",
        "finish",
        "rate",
    ];
    let mut rng = Rng(seed);
    let mut user_clock: HashMap<u64, i64> = HashMap::new();
    (0..n)
        .map(|_| {
            let u = rng.below(users);
            // Strictly increasing time per user, so the reference's order is unambiguous.
            let clock = user_clock.entry(u).or_insert(T0);
            *clock += 1 + rng.below(60_000) as i64;
            let action = ACTIONS[rng.below(ACTIONS.len() as u64) as usize];
            Ev {
                user: format!("u{u}"),
                item: format!("i{}", rng.below(items)),
                action,
                dwell: rng.below(30_000),
                ts: *clock,
                rating: (action == "rate").then(|| (1 + rng.below(5)) as f64),
            }
        })
        .collect()
}

fn free_port() -> u16 {
    harness::free_port()
}

struct Worker {
    child: Child,
    log: PathBuf,
}

impl Worker {
    /// A worker that only ingests (the embed stage has its own test below).
    fn start(broker: &Broker, dir: &Path, metrics_port: u16) -> Worker {
        Worker::start_with(
            broker,
            dir,
            metrics_port,
            &[("SAILSTREAM__EMBED__ENABLED", "false")],
        )
    }

    fn start_with(broker: &Broker, dir: &Path, metrics_port: u16, env: &[(&str, &str)]) -> Worker {
        let log = dir.join("worker.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sailstream"))
            .arg("worker")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", std::env::var_os("HOME").unwrap_or_default())
            .env("SAILSTREAM__KAFKA__BROKERS", broker.bootstrap())
            .env("SAILSTREAM__KAFKA__GROUP_ID", "worker-test")
            .env("SAILSTREAM__STORE__PATH", dir.join("store"))
            .env("SAILSTREAM__OFFLINE_LOG__PATH", dir.join("log"))
            .env("SAILSTREAM__JOBS__OUTPUT_DIR", dir.join("exports"))
            .env("SAILSTREAM__OFFLINE_LOG__SEGMENT_MAX_ROWS", "15000")
            .env("SAILSTREAM__INGEST__BATCH_SIZE", "1000")
            .env("SAILSTREAM__INGEST__LINGER_MS", "50")
            .env("SAILSTREAM__WORKER__MAX_BACKOFF_MS", "1000")
            .env(
                "SAILSTREAM__METRICS__LISTEN",
                format!("127.0.0.1:{metrics_port}"),
            )
            .env("SAILSTREAM__LOG__LEVEL", "info,librdkafka=off,rdkafka=warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start worker");
        Worker { child, log }
    }

    fn signal(&mut self, sig: &str) {
        Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
    }

    fn kill9(mut self) {
        self.signal("-KILL");
        self.child.wait().unwrap();
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        self.signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "worker did not stop on SIGTERM:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `done` until it holds, failing with `what` and the worker's log after `timeout` or if the worker
    /// dies.
    fn wait_until(&mut self, what: &str, timeout: Duration, mut done: impl FnMut(&Worker) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_alive();
            if done(self) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not reached after {timeout:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("worker exited early ({status}):\n{}", self.logs());
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sum of stored next-offsets over all partitions (read-only, beside the running worker).
fn stored_progress(store: &Path) -> i64 {
    for _ in 0..20 {
        if let Ok(s) = Store::open_read_only(store)
            && let Ok(offsets) = s.offsets()
        {
            return offsets.values().sum();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    0
}

fn wait_for_progress(worker: &mut Worker, store: &Path, at_least: i64, timeout: Duration) {
    worker.wait_until(&format!("stored progress >= {at_least}"), timeout, |_| {
        stored_progress(store) >= at_least
    });
}

/// (topic, partition, offset) of every row in the offline log, with duplicates kept.
fn log_positions(dir: &Path) -> Vec<(String, i32, i64)> {
    let mut out = Vec::new();
    let Ok(topics) = std::fs::read_dir(dir) else {
        return out;
    };
    for topic in topics {
        for batch in harness::read_parquet_dir(&topic.unwrap().path(), true) {
            let topic = harness::strings(&batch, "topic");
            let part = harness::primitives::<arrow::datatypes::Int32Type>(&batch, "partition");
            let off = harness::primitives::<arrow::datatypes::Int64Type>(&batch, "offset");
            for i in 0..batch.num_rows() {
                out.push((topic.value(i).to_string(), part.value(i), off.value(i)));
            }
        }
    }
    out
}

async fn read_dlq(broker: &Broker, at_least: usize) -> Vec<DeadLetter> {
    read_topic(broker, "sail.dlq", at_least)
        .await
        .into_iter()
        .map(|(_, payload)| serde_json::from_slice(&payload).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_end_identical_to_the_reference() {
    let broker = Broker::start();
    broker
        .create_topics(&[
            ("sail.items", 2),
            ("sail.behaviours", 4),
            ("sail.id_embeddings", 1),
            ("sail.dlq", 1),
        ])
        .await;
    let producer = broker.producer();

    // 100k events: 96k behaviours, 3k item records (with updates and stale copies), 1k ID embeddings,
    // plus bad records of every kind.
    let evs = behaviours(96_000, 700, 1_500, 0x5eed);
    let mut rng = Rng(42);
    let mut items: Vec<(String, u64, String)> = Vec::new();
    for i in 0..1_500u64 {
        items.push((format!("i{i}"), 1, format!("title {i} v1")));
    }
    for _ in 0..1_500 {
        let i = rng.below(1_500);
        let v = 1 + rng.below(4);
        items.push((format!("i{i}"), v, format!("title {i} v{v}")));
    }
    let item_json = |(id, v, title): &(String, u64, String)| {
        serde_json::to_vec(&serde_json::json!({"item_id": id, "title": title, "tags": ["t"], "created_at": T0, "version": v})).unwrap()
    };
    let embeddings: Vec<(String, u64, Vec<f32>)> = (0..1_000)
        .map(|k| {
            let i = rng.below(300);
            (
                format!("i{i}"),
                k as u64 % 3,
                (0..64).map(|d| ((i + d) % 7) as f32 / 7.0).collect(),
            )
        })
        .collect();

    let bad: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        ("sail.behaviours", b"{\"user_id\": \"u1\", ".to_vec(), "record", "malformed"),
        ("sail.behaviours", vec![0xff, 0xfe, 0x00], "record", "malformed"),
        ("sail.behaviours", br#"{"user_id":"u1","item_id":"i1","action":"teleport","dwell_ms":0,"ts":1750000000000}"#.to_vec(), "action", "invalid"),
        ("sail.behaviours", br#"{"user_id":"u1","item_id":"i1","action":"play","dwell_ms":0,"ts":1750000000}"#.to_vec(), "ts", "invalid"),
        ("sail.behaviours", br#"{"user_id":"u1","item_id":"i1","action":"rate","dwell_ms":0,"ts":1750000000000}"#.to_vec(), "rating", "invalid"),
        ("sail.items", format!(r#"{{"item_id":"big","title":"{}","created_at":1750000000000,"version":1}}"#, "x".repeat(9000)).into_bytes(), "title", "oversized"),
        ("sail.items", br#"{"item_id":"i1","created_at":1750000000000,"version":1,"colour":"red"}"#.to_vec(), "colour", "invalid"),
        ("sail.id_embeddings", br#"{"item_id":"i1","space":"gid","vector":[0.1,0.2],"version":9,"ts":1750000000000}"#.to_vec(), "vector", "invalid"),
    ];

    // Produce in rounds, so the worker is consuming while records keep arriving.
    let b_records: Vec<(String, Vec<u8>)> =
        evs.iter().map(|e| (e.user.clone(), e.json())).collect();
    let i_records: Vec<(String, Vec<u8>)> = items
        .iter()
        .map(|it| (it.0.clone(), item_json(it)))
        .collect();
    let e_records: Vec<(String, Vec<u8>)> = embeddings
        .iter()
        .map(|(id, v, vec)| {
            (id.clone(), serde_json::to_vec(&serde_json::json!({"item_id": id, "space": "gid", "vector": vec, "version": v, "ts": T0})).unwrap())
        })
        .collect();
    broker
        .produce(&producer, "sail.items", None, &i_records[..1_500])
        .await;
    broker
        .produce(&producer, "sail.behaviours", None, &b_records[..40_000])
        .await;
    for (topic, payload, _, _) in &bad {
        broker
            .produce(
                &producer,
                topic,
                None,
                &[("bad".to_string(), payload.clone())],
            )
            .await;
    }

    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let port = free_port();

    let mut w = Worker::start(&broker, dir.path(), port);
    wait_for_progress(&mut w, &store, 15_000, Duration::from_secs(300));
    w.kill9();
    broker
        .produce(&producer, "sail.items", None, &i_records[1_500..])
        .await;
    broker
        .produce(&producer, "sail.id_embeddings", None, &e_records)
        .await;

    let mut w = Worker::start(&broker, dir.path(), port);
    wait_for_progress(&mut w, &store, 35_000, Duration::from_secs(300));
    w.kill9();
    broker
        .produce(&producer, "sail.behaviours", None, &b_records[40_000..])
        .await;

    let mut w = Worker::start(&broker, dir.path(), port);
    wait_for_progress(&mut w, &store, 70_000, Duration::from_secs(300));
    w.kill9();

    let total = (evs.len() + items.len() + embeddings.len() + bad.len()) as i64;
    assert_eq!(total, 100_008);
    let mut w = Worker::start(&broker, dir.path(), port);
    wait_for_progress(&mut w, &store, total, Duration::from_secs(400));
    let status = w.terminate();
    assert!(status.success(), "SIGTERM exits 0, got {status}");

    // ---- state against the reference ----
    let s = Store::open_read_only(&store).unwrap();
    let mut stats: BTreeMap<&str, (u64, u64, i64, i64)> = BTreeMap::new();
    let mut users: HashMap<&str, HashSet<&str>> = HashMap::new();
    let mut hist: HashMap<&str, Vec<&Ev>> = HashMap::new();
    for e in &evs {
        users.entry(&e.item).or_default().insert(&e.user);
        let st = stats.entry(&e.item).or_insert((0, 0, i64::MAX, i64::MIN));
        st.0 += 1;
        st.1 += e.positive() as u64;
        st.2 = st.2.min(e.ts);
        st.3 = st.3.max(e.ts);
        hist.entry(&e.user).or_default().push(e);
    }
    for (item, (events, positives, first, last)) in &stats {
        let got = s
            .item_stats(item)
            .unwrap()
            .unwrap_or_else(|| panic!("no stats for {item}"));
        assert_eq!(
            (got.events, got.positives, got.first_ts, got.last_ts),
            (*events, *positives, *first, *last),
            "{item}"
        );
        assert_eq!(
            got.distinct_users,
            users[item].len() as u64,
            "distinct users of {item}"
        );
    }
    assert_eq!(s.all_item_stats(usize::MAX).unwrap().len(), stats.len());
    for (user, list) in &hist {
        let got: Vec<(String, i64)> = s
            .user_history(user)
            .unwrap()
            .into_iter()
            .map(|h| (h.item_id, h.ts))
            .collect();
        let want: Vec<(String, i64)> = list
            .iter()
            .rev()
            .take(200)
            .rev()
            .map(|e| (e.item.clone(), e.ts))
            .collect();
        assert_eq!(got, want, "history of {user}");
        let got: Vec<(String, i64)> = s
            .user_positives(user)
            .unwrap()
            .into_iter()
            .map(|h| (h.item_id, h.ts))
            .collect();
        let pos: Vec<&&Ev> = list.iter().filter(|e| e.positive()).collect();
        let want: Vec<(String, i64)> = pos
            .iter()
            .rev()
            .take(1000)
            .rev()
            .map(|e| (e.item.clone(), e.ts))
            .collect();
        assert_eq!(got, want, "positives of {user}");
    }
    let mut latest: HashMap<&str, (u64, &str)> = HashMap::new();
    for (id, v, title) in &items {
        let e = latest.entry(id).or_insert((*v, title));
        if *v > e.0 {
            *e = (*v, title);
        }
    }
    for (id, (v, title)) in &latest {
        let item = s.item(id).unwrap().unwrap();
        assert_eq!(
            (item.version, item.title.as_deref()),
            (*v, Some(*title)),
            "{id}"
        );
    }
    let mut emb_latest: HashMap<&str, u64> = HashMap::new();
    for (id, v, _) in &embeddings {
        let e = emb_latest.entry(id).or_insert(*v);
        *e = (*e).max(*v);
    }
    for (id, v) in &emb_latest {
        assert_eq!(s.id_embedding(id, "gid").unwrap().unwrap().0, *v, "{id}");
    }

    // ---- offline log: every valid event exactly once ----
    let positions = log_positions(&dir.path().join("log"));
    let unique: HashSet<_> = positions.iter().cloned().collect();
    assert_eq!(positions.len(), unique.len(), "no event logged twice");
    assert_eq!(
        positions.len(),
        evs.len() + items.len() + embeddings.len(),
        "every valid event logged"
    );

    // ---- dead letters: each bad record with its reason (at least once) ----
    let letters = read_dlq(&broker, bad.len()).await;
    let mut by_payload: HashMap<Vec<u8>, &DeadLetter> = HashMap::new();
    for l in &letters {
        by_payload.insert(l.payload().unwrap(), l);
    }
    assert_eq!(by_payload.len(), bad.len(), "{letters:?}");
    for (topic, payload, field, category) in &bad {
        let l = by_payload
            .get(payload)
            .unwrap_or_else(|| panic!("missing dead letter for {topic}"));
        assert_eq!(
            (
                l.topic.as_str(),
                l.error.field.as_str(),
                l.category.as_str()
            ),
            (*topic, *field, *category),
            "{l:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stopped_and_restarted_mid_stream_loses_nothing() {
    let mut broker = Broker::start();
    broker
        .create_topics(&[
            ("sail.items", 1),
            ("sail.behaviours", 2),
            ("sail.id_embeddings", 1),
            ("sail.dlq", 1),
        ])
        .await;
    let evs = behaviours(30_000, 100, 200, 7);
    let records: Vec<(String, Vec<u8>)> = evs.iter().map(|e| (e.user.clone(), e.json())).collect();
    let producer = broker.producer();
    broker
        .produce(&producer, "sail.behaviours", None, &records[..20_000])
        .await;

    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mut w = Worker::start(&broker, dir.path(), free_port());
    wait_for_progress(&mut w, &store, 5_000, Duration::from_secs(300));
    broker.stop();
    std::thread::sleep(Duration::from_secs(3));
    w.assert_alive();
    broker.restart();
    let producer = broker.producer();
    broker
        .produce(&producer, "sail.behaviours", None, &records[20_000..])
        .await;
    wait_for_progress(&mut w, &store, 30_000, Duration::from_secs(300));
    let logs = w.logs();
    assert!(w.terminate().success());
    assert!(
        logs.contains("kafka client error") || logs.contains("kafka consumer error"),
        "the outage is logged:\n{logs}"
    );

    let s = Store::open_read_only(&store).unwrap();
    let mut per_item: BTreeMap<&str, u64> = BTreeMap::new();
    for e in &evs {
        *per_item.entry(&e.item).or_default() += 1;
    }
    for (item, n) in per_item {
        assert_eq!(s.item_stats(item).unwrap().unwrap().events, n, "{item}");
    }
    let positions = log_positions(&dir.path().join("log"));
    assert_eq!(positions.len(), 30_000);
    assert_eq!(positions.iter().collect::<HashSet<_>>().len(), 30_000);
}

/// Reads a topic from the start until `at_least` messages arrived and it stays quiet for 3 s: (key, payload),
/// the key empty when the record has none.
async fn read_topic(broker: &Broker, topic: &str, at_least: usize) -> Vec<(String, Vec<u8>)> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", format!("read-{topic}-{}", free_port()))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    loop {
        let timeout = if out.len() >= at_least {
            Duration::from_secs(3)
        } else {
            Duration::from_secs(60)
        };
        match tokio::time::timeout(timeout, consumer.recv()).await {
            Ok(Ok(msg)) => out.push((
                String::from_utf8(msg.key().unwrap_or_default().to_vec()).unwrap(),
                msg.payload().unwrap().to_vec(),
            )),
            Ok(Err(e)) => panic!("reading {topic}: {e}"),
            Err(_) => break,
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_embeds_stores_and_publishes_items_even_across_a_sigkill() {
    use sailstream::embed::{Embedder, cosine, model_dir};
    let broker = Broker::start();
    broker
        .create_topics(&[
            ("sail.items", 2),
            ("sail.behaviours", 1),
            ("sail.id_embeddings", 1),
            ("sail.dlq", 1),
            ("sail.item_embeddings", 1),
        ])
        .await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    // The model's fixtures (text, photos, WAVs, a broken picture) plus plain text items, and a second version
    // of some of them: every item must end up embedded at its latest version.
    let model = model_dir(&sailstream::Config::default());
    let fixtures: Vec<serde_json::Value> =
        std::fs::read_to_string(model.join("fixtures/items.jsonl"))
            .expect("sail-lite fixtures (run scripts/setup.sh)")
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    let mut items: Vec<serde_json::Value> = fixtures.clone();
    for i in 0..150 {
        items.push(serde_json::json!({"item_id": format!("t{i}"), "title": format!("video number {i} about topic {}", i % 7),
            "tags": [format!("topic{}", i % 7)], "created_at": T0, "version": 1}));
    }
    for i in 0..20 {
        items.push(serde_json::json!({"item_id": format!("t{i}"), "title": format!("video number {i}, recut"),
            "created_at": T0, "version": 2}));
    }
    let records: Vec<(String, Vec<u8>)> = items
        .iter()
        .map(|v| {
            (
                v["item_id"].as_str().unwrap().to_string(),
                serde_json::to_vec(v).unwrap(),
            )
        })
        .collect();
    let producer = broker.producer();
    broker
        .produce(&producer, "sail.items", None, &records)
        .await;
    let env = [
        ("SAILSTREAM__EMBED__BATCH_SIZE", "16"),
        ("SAILSTREAM__EMBED__MAX_WAIT_MS", "100"),
    ];

    // Kill the worker while it is embedding, then let a second one finish.
    let mut w = Worker::start_with(&broker, dir.path(), free_port(), &env);
    wait_for_progress(
        &mut w,
        &store,
        records.len() as i64,
        Duration::from_secs(300),
    );
    w.wait_until("40 embeddings", Duration::from_secs(300), |_| {
        embedded_count(&store) >= 40
    });
    w.kill9();
    let mut w = Worker::start_with(&broker, dir.path(), free_port(), &env);
    let latest: HashMap<String, &serde_json::Value> = items
        .iter()
        .map(|v| (v["item_id"].as_str().unwrap().to_string(), v))
        .collect();
    w.wait_until("nothing left to embed", Duration::from_secs(300), |_| {
        Store::open_read_only(&store)
            .map(|s| s.embed_pending(1).map(|p| p.is_empty()).unwrap_or(false))
            .unwrap_or(false)
    });
    let status = w.terminate();
    assert!(status.success(), "SIGTERM exits 0, got {status}");

    // Every item is stored at its latest version, with the vector the model gives when called directly.
    let s = Store::open_read_only(&store).unwrap();
    let mut direct = Embedder::load_from(&model, &sailstream::Config::default()).unwrap();
    let check: Vec<sailstream::schema::Item> =
        ["fx-omni", "fx-frames", "fx-audio-tone", "t3", "t100"]
            .iter()
            .map(|id| s.item(id).unwrap().unwrap())
            .collect();
    let want = direct.embed(&check).unwrap();
    for (item, want) in check.iter().zip(want) {
        let got = s.item_embedding(&item.item_id).unwrap().unwrap();
        assert!(
            cosine(&got.vector, &want.unwrap().vector) > 0.9999,
            "{}",
            item.item_id
        );
    }
    for (id, v) in &latest {
        let e = s
            .item_embedding(id)
            .unwrap()
            .unwrap_or_else(|| panic!("{id} not embedded"));
        assert_eq!(e.item_version, v["version"].as_u64().unwrap(), "{id}");
        assert_eq!((e.model.as_str(), e.vector.len()), ("sail-lite", 896));
    }
    // Published at least once per item, the last message per key carrying the stored vector.
    let published = read_topic(&broker, "sail.item_embeddings", latest.len()).await;
    let mut last: HashMap<String, sailstream::schema::ItemEmbedding> = HashMap::new();
    for (key, payload) in published {
        let e: sailstream::schema::ItemEmbedding = serde_json::from_slice(&payload).unwrap();
        assert_eq!(key, e.item_id);
        let newer = last
            .get(&key)
            .is_none_or(|old| e.item_version >= old.item_version);
        if newer {
            last.insert(key, e);
        }
    }
    assert_eq!(last.len(), latest.len(), "one published vector per item");
    for (id, e) in &last {
        assert_eq!(
            e.vector,
            s.item_embedding(id).unwrap().unwrap().vector,
            "{id}"
        );
    }
    drop(s);

    // A new model version: the restarted worker re-embeds the catalogue in the background, with nothing new
    // arriving, and publishes the new vectors.
    let upgraded = harness::edited_model(&dir.path().join("sail-lite-0.2.0"), |m| {
        m.replace("version = \"0.1.0\"", "version = \"0.2.0\"")
    });
    let upgraded_dir = upgraded.to_str().unwrap();
    let mut env2 = env.to_vec();
    env2.push(("SAILSTREAM__EMBED__MODEL_DIR", upgraded_dir));
    let done_marker = "every stored item has a current embedding";
    let earlier = std::fs::read_to_string(dir.path().join("worker.log"))
        .map_or(0, |l| l.matches(done_marker).count());
    let mut w = Worker::start_with(&broker, dir.path(), free_port(), &env2);
    w.wait_until("background re-embedding", Duration::from_secs(300), |w| {
        w.logs().matches(done_marker).count() > earlier
    });
    assert!(w.terminate().success());
    let s = Store::open_read_only(&store).unwrap();
    for id in latest.keys() {
        assert_eq!(
            s.item_embedding(id).unwrap().unwrap().model_version,
            "0.2.0",
            "{id}"
        );
    }
    let published = read_topic(&broker, "sail.item_embeddings", 2 * latest.len()).await;
    let upgraded_ids: HashSet<String> = published
        .iter()
        .map(|(_, p)| serde_json::from_slice::<sailstream::schema::ItemEmbedding>(p).unwrap())
        .filter(|e| e.model_version == "0.2.0")
        .map(|e| e.item_id)
        .collect();
    assert_eq!(
        upgraded_ids.len(),
        latest.len(),
        "every re-embedded vector published"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_keeps_interests_current_and_runs_the_job_schedule() {
    let broker = Broker::start();
    broker
        .create_topics(&[
            ("sail.items", 1),
            ("sail.behaviours", 1),
            ("sail.id_embeddings", 1),
            ("sail.dlq", 1),
            ("sail.item_embeddings", 1),
        ])
        .await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let items: Vec<(String, Vec<u8>)> = (0..24)
        .map(|i| {
            let v = serde_json::json!({"item_id": format!("t{i}"),
                "title": format!("{} clip number {i}", ["cooking", "football", "jazz"][i % 3]),
                "created_at": T0, "version": 1});
            (format!("t{i}"), serde_json::to_vec(&v).unwrap())
        })
        .collect();
    let producer = broker.producer();
    broker.produce(&producer, "sail.items", None, &items).await;
    let env = [
        ("SAILSTREAM__EMBED__MAX_WAIT_MS", "100"),
        ("SAILSTREAM__EMBED__PUBLISH", "false"),
        ("SAILSTREAM__OFFLINE_LOG__SEGMENT_MAX_AGE_S", "1"),
        ("SAILSTREAM__JOBS__SEMANTIC_ID_CODEBOOKS", "[4, 2]"),
    ];
    // First without the job schedule, so the interests can only come from the stream.
    let mut w = Worker::start_with(&broker, dir.path(), free_port(), &env);
    let stored = |done: &dyn Fn(&Store) -> bool| {
        Store::open_read_only(&store)
            .map(|s| done(&s))
            .unwrap_or(false)
    };
    w.wait_until("every item embedded", Duration::from_secs(300), |_| {
        stored(&|s| s.key_count(sailstream::store::cf::ITEM_EMBEDDINGS).unwrap() == 24)
    });
    // u1 likes six items, u2 three; each user's interests must follow without any job run in between.
    let likes: Vec<(&str, usize)> = vec![
        ("u1", 0),
        ("u1", 3),
        ("u1", 6),
        ("u1", 1),
        ("u1", 4),
        ("u1", 9),
        ("u2", 2),
        ("u2", 5),
        ("u2", 8),
    ];
    let records: Vec<(String, Vec<u8>)> = likes
        .iter()
        .enumerate()
        .map(|(k, (u, i))| {
            let v = serde_json::json!({"user_id": u, "item_id": format!("t{i}"), "action": "like",
                "dwell_ms": 0, "ts": T0 + k as i64});
            (u.to_string(), serde_json::to_vec(&v).unwrap())
        })
        .collect();
    broker
        .produce(&producer, "sail.behaviours", None, &records)
        .await;
    w.wait_until("interests of u1 and u2", Duration::from_secs(300), |_| {
        stored(&|s| {
            let used = |u: &str| s.user_interests(u).unwrap().map(|i| i.positives_used);
            used("u1") == Some(6) && used("u2") == Some(3)
        })
    });
    assert!(w.terminate().success());
    assert!(!dir.path().join("exports").exists(), "no job ran yet");

    // Then with the schedule: every job, ending with the training export; and the lookup API in the worker.
    let serve_addr = format!("127.0.0.1:{}", free_port());
    let mut env2 = env.to_vec();
    env2.push(("SAILSTREAM__JOBS__SCHEDULE_INTERVAL_S", "1"));
    env2.push(("SAILSTREAM__SERVE__IN_WORKER", "true"));
    env2.push(("SAILSTREAM__SERVE__LISTEN", &serve_addr));
    let mut w = Worker::start_with(&broker, dir.path(), free_port(), &env2);
    let manifest = dir.path().join("exports/training/datasets.json");
    w.wait_until("a scheduled job run", Duration::from_secs(300), |_| {
        manifest.exists()
    });
    tokio::task::block_in_place(|| {
        let mut client = sailstream::serve::client::Client::new(serve_addr.parse().unwrap());
        let ready = client.get("/readyz").unwrap().json().unwrap();
        assert_eq!(ready["store_access"], "primary", "{ready}");
        let body = client
            .post_json(
                "/v1/match",
                r#"{"user_id": "u2", "candidates": ["t2", "t0", "nope"]}"#,
            )
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(body["user_found"], true, "{body}");
        assert_eq!(body["recent_positives_used"], 3, "{body}");
        // t2 is one of u2's three positives: it is the nearest of them to itself.
        let t2 = &body["candidates"][0]["features"];
        assert!(
            (t2["recent_max_cos"].as_f64().unwrap() - 1.0).abs() < 1e-5,
            "{body}"
        );
        assert_eq!(body["candidates"][2]["found"], false);
        // The worker's own metrics (its scheduled job runs), on the lookup port too.
        let metrics = client.get("/metrics").unwrap().text();
        assert!(
            metrics.contains("sailstream_job_runs_total{job=\"training\",outcome=\"ok\"}"),
            "{metrics}"
        );
    });
    assert!(w.terminate().success());

    // Independent check of u2's mean interest: three likes 1 ms apart weigh the same, so it is the normalised
    // mean of the three stored vectors.
    let s = Store::open_read_only(&store).unwrap();
    let mut mean = vec![0f32; 896];
    for i in [2, 5, 8] {
        let v = s.item_embedding(&format!("t{i}")).unwrap().unwrap().vector;
        mean.iter_mut().zip(&v).for_each(|(m, x)| *m += x);
    }
    let norm = mean.iter().map(|x| x * x).sum::<f32>().sqrt();
    mean.iter_mut().for_each(|m| *m /= norm);
    let got = s.user_interests("u2").unwrap().unwrap();
    assert!(sailstream::embed::cosine(&got.mean, &mean) > 0.9999);
    assert_eq!(
        s.key_count(sailstream::store::cf::INTERESTS_PENDING)
            .unwrap(),
        0
    );
    assert!(s.teacher_target("t0", "id:item2vec").unwrap().is_some());
    assert_eq!(s.semantic_ids("t0").unwrap().unwrap().1.len(), 2);
    let logs = std::fs::read_to_string(dir.path().join("worker.log")).unwrap();
    assert!(logs.contains("seq2item:"), "{logs}");
    for name in [
        "seq2item",
        "seq2item_teachers",
        "interests",
        "semantic_ids",
        "id2item/pairs",
    ] {
        assert!(dir.path().join("exports").join(name).is_dir(), "{name}");
    }
}

fn embedded_count(store: &Path) -> u64 {
    Store::open_read_only(store)
        .and_then(|s| s.key_count(sailstream::store::cf::ITEM_EMBEDDINGS))
        .unwrap_or(0)
}
