//! Kafka source against a real broker (Tansu): produce with rdkafka, read back through the source into RocksDB,
//! resume from the stored offsets, dead letters to sail.dlq.

mod harness;

use std::sync::Arc;
use std::time::Duration;

use harness::{Broker, config_for};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use sailstream::ingest::kafka::{KafkaSource, PositionLookup};
use sailstream::ingest::{DeadLetterSink, Ingestor};
use sailstream::schema::DeadLetter;
use sailstream::store::Store;

fn behaviour(user: usize, item: usize, i: usize) -> (String, Vec<u8>) {
    let json = format!(
        r#"{{"user_id":"u{user}","item_id":"i{item}","action":"{}","dwell_ms":{},"ts":{}}}"#,
        if i.is_multiple_of(3) { "like" } else { "play" },
        i * 100,
        1_700_000_000_000u64 + i as u64
    );
    (format!("u{user}"), json.into_bytes())
}

fn lookup(store: &Arc<Store>) -> PositionLookup {
    let store = store.clone();
    Arc::new(move |topic: &str, partition: i32| store.offset(topic, partition).ok().flatten())
}

/// Runs the ingestor until `expect` records have been seen in total or the timeout passes.
async fn ingest_until(
    ingestor: &mut Ingestor,
    source: &mut KafkaSource,
    expect: usize,
    timeout: Duration,
) -> usize {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen = 0;
    let mut stop = Box::pin(tokio::time::sleep_until(deadline));
    loop {
        let batch = tokio::select! {
            _ = &mut stop => break,
            b = sailstream::ingest::Source::poll_batch(source, 200, Duration::from_millis(100)) => b.unwrap().unwrap(),
        };
        if batch.is_empty() {
            continue;
        }
        let (report, positions) = ingestor.apply(&batch).await.unwrap();
        sailstream::ingest::Source::committed(source, &positions).unwrap();
        seen += report.records;
        if seen >= expect {
            break;
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_then_consume_through_the_source_and_resume() {
    let broker = Broker::start();
    broker
        .create_topics(&[
            ("sail.items", 1),
            ("sail.behaviours", 2),
            ("sail.id_embeddings", 1),
            ("sail.dlq", 1),
        ])
        .await;
    let producer = broker.producer();

    // 600 behaviours over two partitions, two of them invalid, plus 3 items.
    let mut p0: Vec<_> = (0..300).map(|i| behaviour(i % 7, i % 11, i)).collect();
    let p1: Vec<_> = (300..600).map(|i| behaviour(i % 7, i % 11, i)).collect();
    p0[42] = ("u1".into(), b"{not json".to_vec());
    p0[43] = (
        "u1".into(),
        br#"{"user_id":"u1","item_id":"i1","action":"teleport","dwell_ms":0,"ts":1700000000000}"#
            .to_vec(),
    );
    broker
        .produce(&producer, "sail.behaviours", Some(0), &p0)
        .await;
    broker
        .produce(&producer, "sail.behaviours", Some(1), &p1)
        .await;
    let items: Vec<_> = (0..3)
        .map(|i| {
            (
                format!("i{i}"),
                format!(
                    r#"{{"item_id":"i{i}","title":"t{i}","created_at":1700000000000,"version":1}}"#
                )
                .into_bytes(),
            )
        })
        .collect();
    broker
        .produce(&producer, "sail.items", Some(0), &items)
        .await;

    let dir = tempfile::tempdir().unwrap();
    let config = Arc::new(config_for(&broker, "it-group", &dir.path().join("store")));
    let store = Arc::new(Store::open(&config.store.path).unwrap());
    let dlq = DeadLetterSink::Kafka {
        producer: producer.clone(),
        topic: "sail.dlq".into(),
    };
    let mut ingestor = Ingestor::new(store.clone(), config.clone(), dlq).unwrap();
    let topics = ["sail.items", "sail.behaviours", "sail.id_embeddings"];
    let mut source = KafkaSource::subscribe(&config.kafka, &topics, lookup(&store), 1000).unwrap();
    let seen = ingest_until(&mut ingestor, &mut source, 603, Duration::from_secs(60)).await;
    assert_eq!(
        seen,
        603,
        "every produced record read exactly once; broker log:\n{}",
        broker.log()
    );
    drop(source);

    assert_eq!(store.offset("sail.behaviours", 0).unwrap(), Some(300));
    assert_eq!(store.offset("sail.behaviours", 1).unwrap(), Some(300));
    assert_eq!(store.offset("sail.items", 0).unwrap(), Some(3));
    assert_eq!(
        store.item("i2").unwrap().unwrap().title.as_deref(),
        Some("t2")
    );

    // Reference computed independently: events per item over the 598 valid behaviours.
    let mut expected = std::collections::BTreeMap::<String, u64>::new();
    for i in (0..600).filter(|i| *i != 42 && *i != 43) {
        *expected.entry(format!("i{}", i % 11)).or_default() += 1;
    }
    for (item, n) in &expected {
        assert_eq!(
            store.item_stats(item).unwrap().unwrap().events,
            *n,
            "{item}"
        );
    }

    // The dead letters are on sail.dlq with the original bytes and the reason.
    let dlq_consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", "dlq-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    dlq_consumer.subscribe(&["sail.dlq"]).unwrap();
    let mut letters = Vec::new();
    while letters.len() < 2 {
        let msg = tokio::time::timeout(Duration::from_secs(30), dlq_consumer.recv())
            .await
            .expect("dead letters arrive")
            .unwrap();
        letters.push(serde_json::from_slice::<DeadLetter>(msg.payload().unwrap()).unwrap());
    }
    letters.sort_by_key(|l| l.offset);
    assert_eq!((letters[0].partition, letters[0].offset), (0, 42));
    assert_eq!(letters[0].payload().unwrap(), b"{not json");
    assert_eq!(letters[0].category, "malformed");
    assert_eq!(letters[1].error.field, "action");

    // More records arrive; a new consumer in the same group resumes from the store's offsets, not from 0.
    let more: Vec<_> = (600..650).map(|i| behaviour(1, 99, i)).collect();
    broker
        .produce(&producer, "sail.behaviours", Some(0), &more)
        .await;
    let mut source = KafkaSource::subscribe(&config.kafka, &topics, lookup(&store), 1000).unwrap();
    let seen = ingest_until(&mut ingestor, &mut source, 50, Duration::from_secs(60)).await;
    assert_eq!(seen, 50, "only the new records are read");
    assert_eq!(store.offset("sail.behaviours", 0).unwrap(), Some(350));
    assert_eq!(store.item_stats("i99").unwrap().unwrap().events, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_from_store_even_when_the_group_never_committed() {
    // The store, not Kafka, is the source of truth: a brand-new group id still starts after the stored offsets.
    let broker = Broker::start();
    broker.create_topics(&[("sail.behaviours", 1)]).await;
    let producer = broker.producer();
    let records: Vec<_> = (0..100).map(|i| behaviour(1, 1, i)).collect();
    broker
        .produce(&producer, "sail.behaviours", Some(0), &records)
        .await;

    let dir = tempfile::tempdir().unwrap();
    let config = Arc::new(config_for(&broker, "group-a", &dir.path().join("store")));
    let store = Arc::new(Store::open(&config.store.path).unwrap());
    // Pretend the first 60 were applied earlier (offsets are part of the state).
    let mut batch = store.batch();
    batch.set_offset("sail.behaviours", 0, 60).unwrap();
    batch.commit().unwrap();

    let mut ingestor = Ingestor::new(
        store.clone(),
        config.clone(),
        DeadLetterSink::file(dir.path().join("dlq.jsonl")),
    )
    .unwrap();
    let mut source =
        KafkaSource::subscribe(&config.kafka, &["sail.behaviours"], lookup(&store), 1000).unwrap();
    let seen = ingest_until(&mut ingestor, &mut source, 40, Duration::from_secs(60)).await;
    assert_eq!(seen, 40);
    assert_eq!(store.item_stats("i1").unwrap().unwrap().events, 40);
    assert_eq!(store.offset("sail.behaviours", 0).unwrap(), Some(100));
}

/// A worker batch ends at `max` records or once its payloads reach the source's byte budget, whichever comes
/// first: records may be up to `limits.max_record_bytes`, so a count alone does not bound a batch's memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_batch_ends_at_its_byte_budget() {
    let broker = Broker::start();
    broker.create_topics(&[("sail.behaviours", 1)]).await;
    let producer = broker.producer();
    let records: Vec<_> = (0..10)
        .map(|i| (format!("u{i}"), vec![b'x'; 1_000]))
        .collect();
    broker
        .produce(&producer, "sail.behaviours", Some(0), &records)
        .await;

    let dir = tempfile::tempdir().unwrap();
    let config = config_for(&broker, "budget", &dir.path().join("store"));
    let store = Arc::new(Store::open(&config.store.path).unwrap());
    let mut source =
        KafkaSource::subscribe(&config.kafka, &["sail.behaviours"], lookup(&store), 1000)
            .unwrap()
            .with_batch_bytes(2_500);
    let (mut sizes, deadline) = (
        Vec::new(),
        tokio::time::Instant::now() + Duration::from_secs(60),
    );
    while sizes.iter().sum::<usize>() < 10 && tokio::time::Instant::now() < deadline {
        let batch =
            sailstream::ingest::Source::poll_batch(&mut source, 100, Duration::from_secs(2))
                .await
                .unwrap()
                .unwrap();
        if !batch.is_empty() {
            sizes.push(batch.len());
        }
    }
    assert_eq!(sizes.iter().sum::<usize>(), 10, "{sizes:?}");
    assert!(
        sizes.iter().all(|n| *n <= 3) && sizes.contains(&3),
        "three 1,000-byte records reach 2,500 bytes: {sizes:?}"
    );
}

/// `demo --events DIR --kafka BROKERS`: the dumps go through a real broker and the streaming worker, and a rerun
/// does not produce them twice.
#[test]
fn demo_through_the_broker_produces_once_and_streams_into_the_store() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let run = || {
        let out = harness::demo_in(state)
            .arg("--kafka")
            .arg(broker.bootstrap())
            .env("SAILSTREAM__LOG__LEVEL", "warn,librdkafka=off,rdkafka=off")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
        stdout
    };
    let first = run();
    // 43 item lines and 1,709 behaviour lines; 5 fail validation (dead letters), 1 item version is stale.
    assert!(first.contains("produced 1752 records"), "{first}");
    assert!(
        first.contains("1746 applied, 5 dead-lettered to sail.dlq"),
        "{first}"
    );
    for want in [
        "Running every job",
        "Quality of the embeddings",
        "Lookup API at",
        "candidate      mean_cos",
    ] {
        assert!(first.contains(want), "{want}:\n{first}");
    }
    let second = run();
    assert!(
        second.contains("already hold 1752 records: not producing them again"),
        "{second}"
    );
    assert!(second.contains("worker consumed 0 records"), "{second}");
    let store = Store::open_read_only(state.join("store")).unwrap();
    assert_eq!(store.key_count(sailstream::store::cf::ITEMS).unwrap(), 40);
    assert_eq!(store.offset("sail.behaviours", 0).unwrap(), Some(1709));
}
