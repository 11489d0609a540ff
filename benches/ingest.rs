//! Ingest throughput, each number next to a peer measured in the same run:
//!
//! 1. Kafka: events/s through sailstream's ingest path (KafkaSource -> decode -> fold -> RocksDB batch with
//!    offsets -> offline log) vs a bare rdkafka consumer that only counts, on the same Tansu broker and data.
//! 2. Files: events/s replayed from JSONL into RocksDB on one ingest thread (current-thread runtime; with the
//!    offline log on, its segment rolls run on a thread of their own), vs the raw cost of
//!    reading and JSON-parsing the same lines (the floor any replay pays). Events per CPU-second are counted
//!    twice: while the replay runs, and once the flushes and compactions it left pending are done as well.
//!
//! Run: `cargo bench --bench ingest` (release build; needs scripts/setup.sh for the broker).
//! Sizes: BENCH_KAFKA_EVENTS (default 300000), BENCH_FILE_EVENTS (default 1000000), BENCH_USERS (default 20000).
//! BENCH_FILE_LOG=off|on replays with the offline log off or on only (default: both, one after the other).
//! The Kafka path runs batches of 5,000 events; the file replay runs `ingest.replay_batch_size` (the configured
//! default, or BENCH_REPLAY_BATCH).
//! BENCH_STATE_CACHE_MB sets `ingest.state_cache_mb` (default: the configured default); 0 makes every batch read
//! its users' list heads, item counters and pairs from RocksDB, as a worker does for state it has not seen
//! recently.

#[path = "../integration/harness/mod.rs"]
mod harness;

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureRecord, Producer};
use sailstream::Config;
use sailstream::config::{FileFormat, FileInput};
use sailstream::ingest::files::FileSource;
use sailstream::ingest::kafka::KafkaSource;
use sailstream::ingest::{DeadLetterSink, Ingestor, Source};
use sailstream::store::Store;

/// The `sailstream` binary's allocator (src/main.rs), so that the replay runs as a worker does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// CPU seconds (user + system) the whole process has used: every thread, RocksDB's flushes and compactions and
/// the offline-log roll included.
fn process_cpu_s() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) }, 0);
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Users the events are spread over (BENCH_USERS, default 20,000: ~50 events each in the 1M-event replay; fewer
/// users means longer histories, which then hit `store.history_cap` and get trimmed).
fn users() -> usize {
    env_usize("BENCH_USERS", 20_000)
}

fn event(i: usize) -> (String, Vec<u8>) {
    let user = format!("u{}", (i * 7919) % users());
    let json = format!(
        r#"{{"user_id":"{user}","item_id":"i{}","action":"{}","dwell_ms":{},"ts":{}}}"#,
        (i * 104_729) % 50_000,
        ["play", "like", "impression", "skip"][i % 4],
        (i * 31) % 40_000,
        1_750_000_000_000u64 + i as u64
    );
    (user, json.into_bytes())
}

fn bench_config(dir: &std::path::Path, log: bool) -> Config {
    let mut c = Config::default();
    c.store.path = dir.join("store");
    c.offline_log.enabled = log;
    c.offline_log.path = dir.join("log");
    c.ingest.batch_size = 5_000;
    c.ingest.replay_batch_size = env_usize("BENCH_REPLAY_BATCH", c.ingest.replay_batch_size);
    c.ingest.linger_ms = 20;
    c.ingest.state_cache_mb = env_usize("BENCH_STATE_CACHE_MB", c.ingest.state_cache_mb);
    c
}

async fn kafka(n: usize) {
    let broker = harness::Broker::start();
    broker
        .create_topics(&[("sail.behaviours", 2), ("sail.dlq", 1)])
        .await;
    let producer = broker.producer();
    let t = Instant::now();
    for i in 0..n {
        let (k, p) = event(i);
        loop {
            match producer.send_result(FutureRecord::to("sail.behaviours").key(&k).payload(&p)) {
                Ok(_) => break,
                Err(_) => producer.poll(Duration::from_millis(5)),
            }
        }
    }
    producer.flush(Duration::from_secs(120)).unwrap();
    let produce_s = t.elapsed().as_secs_f64();
    println!(
        "kafka: produced {n} events in {produce_s:.2}s ({:.0}/s)",
        n as f64 / produce_s
    );

    for log in [false, true] {
        // Peer: a bare consumer that only counts, run right before each ingest run, so that both see the broker
        // in about the same state: its fetch rate drifts between runs (18-24k events/s within one session).
        let bare: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap())
            .set("group.id", format!("bench-bare-{log}"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        bare.subscribe(&["sail.behaviours"]).unwrap();
        let t = Instant::now();
        let mut count = 0;
        while count < n {
            bare.recv().await.unwrap();
            count += 1;
        }
        let bare_s = t.elapsed().as_secs_f64();
        drop(bare);

        let dir = tempfile::tempdir().unwrap();
        let mut config = bench_config(dir.path(), log);
        config.kafka.brokers = broker.bootstrap();
        config.kafka.group_id = format!("bench-ingest-{log}");
        let config = Arc::new(config);
        let store = Arc::new(Store::open(&config.store.path).unwrap());
        let lookup = {
            let store = store.clone();
            Arc::new(move |t: &str, p: i32| store.offset(t, p).ok().flatten())
        };
        let mut source =
            KafkaSource::subscribe(&config.kafka, &["sail.behaviours"], lookup, 60_000).unwrap();
        let mut ingestor = Ingestor::new(
            store,
            config.clone(),
            DeadLetterSink::file(dir.path().join("dlq")),
        )
        .unwrap();
        let t = Instant::now();
        let mut done = 0;
        while done < n {
            let batch = source
                .poll_batch(config.ingest.batch_size, Duration::from_millis(20))
                .await
                .unwrap()
                .unwrap();
            if batch.is_empty() {
                continue;
            }
            let (report, positions) = ingestor.apply(&batch).await.unwrap();
            source.committed(&positions).unwrap();
            ingestor.roll_log(false).unwrap();
            done += report.records;
        }
        ingestor.roll_log(true).unwrap();
        let ingest_s = t.elapsed().as_secs_f64();
        println!(
            "kafka: bare rdkafka consumer {:.0} events/s; sailstream ingest (offline log {}) {:.0} events/s; ratio {:.2}",
            n as f64 / bare_s,
            if log { "on" } else { "off" },
            n as f64 / ingest_s,
            bare_s / ingest_s
        );
    }
}

async fn files(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        for i in 0..n {
            f.write_all(&event(i).1).unwrap();
            f.write_all(b"\n").unwrap();
        }
    }
    // Floor: read the lines and parse them as JSON values, nothing else.
    let t = Instant::now();
    let text = std::fs::read(&path).unwrap();
    let mut parsed = 0usize;
    for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let v: serde_json::Value = serde_json::from_slice(line).unwrap();
        parsed += v.is_object() as usize;
    }
    let floor_s = t.elapsed().as_secs_f64();
    assert_eq!(parsed, n);

    let logs: &[bool] = match std::env::var("BENCH_FILE_LOG").as_deref() {
        Ok("off") => &[false],
        Ok("on") => &[true],
        _ => &[false, true],
    };
    for &log in logs {
        let run_dir = tempfile::tempdir().unwrap();
        let config = Arc::new(bench_config(run_dir.path(), log));
        let store = Arc::new(Store::open(&config.store.path).unwrap());
        let inputs = [FileInput {
            path: path.clone(),
            topic: "sail.behaviours".into(),
            format: FileFormat::Jsonl,
        }];
        let mut source = FileSource::open(&inputs, &HashMap::new()).unwrap();
        let mut ingestor = Ingestor::new(
            store.clone(),
            config.clone(),
            DeadLetterSink::file(run_dir.path().join("dlq")),
        )
        .unwrap();
        let (t, cpu_at_start) = (Instant::now(), process_cpu_s());
        let report = ingestor
            .run(&mut source, std::future::pending::<()>(), |_| {})
            .await
            .unwrap();
        let (s, cpu_s) = (t.elapsed().as_secs_f64(), process_cpu_s() - cpu_at_start);
        assert_eq!(report.applied, n);
        // The flushes and compactions the replay left pending are part of its cost too.
        store.wait_for_compactions().unwrap();
        let settled_cpu_s = process_cpu_s() - cpu_at_start;
        println!(
            "files: read+parse floor {:.0} events/s; sailstream replay into RocksDB (offline log {}, batches of {}) {:.0} events/s on one ingest thread{}; ratio {:.2}; {:.0} events per CPU-second of the whole process ({:.2} cores busy); {:.0} per CPU-second once the flushes and compactions it left are done",
            n as f64 / floor_s,
            if log { "on" } else { "off" },
            config.ingest.replay_batch_size,
            n as f64 / s,
            if log {
                " (segment rolls on a second)"
            } else {
                ""
            },
            floor_s / s,
            n as f64 / cpu_s,
            cpu_s / s,
            n as f64 / settled_cpu_s
        );
    }
}

fn main() {
    // `cargo bench` passes --bench. Without it (`cargo test --all-targets` runs this binary too) the same code
    // runs on a small smoke size, so the benchmark cannot rot; its numbers then mean nothing.
    let full = std::env::args().any(|a| a == "--bench");
    let kafka_n = env_usize("BENCH_KAFKA_EVENTS", if full { 300_000 } else { 2_000 });
    let file_n = env_usize("BENCH_FILE_EVENTS", if full { 1_000_000 } else { 5_000 });
    if !full {
        println!(
            "smoke run of the ingest benchmark (use `cargo bench --bench ingest` for numbers)"
        );
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            if file_n > 0 {
                files(file_n).await;
            }
            if kafka_n > 0 {
                kafka(kafka_n).await;
            }
        });
}
