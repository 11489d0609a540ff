//! `sailstream demo --events DIR --kafka BROKERS`: the demo through a real broker. The dumps are produced to
//! their topics (keyed as the contracts say), then the streaming worker consumes them into the store until it has
//! caught up with everything produced, exactly as in production; embed and jobs follow as in the file demo.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sailstream::config::{Config, FileFormat, FileInput};
use sailstream::ingest::Source;
use sailstream::ingest::files::FileSource;
use sailstream::store::Store;
use sailstream::{Error, Result};

fn client(config: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.kafka.brokers);
    for (k, v) in &config.kafka.client {
        c.set(k, v);
    }
    c
}

/// The contracts' keys: behaviours by user, everything else by item.
fn record_key(topic: &str, config: &Config, payload: &[u8]) -> Option<String> {
    let field = if topic == config.kafka.topics.behaviours {
        "user_id"
    } else {
        "item_id"
    };
    serde_json::from_slice::<serde_json::Value>(payload)
        .ok()?
        .get(field)?
        .as_str()
        .map(str::to_string)
}

/// (topic, partition) -> high watermark of the input topics.
fn watermarks(config: &Config, topics: &[String]) -> Result<BTreeMap<(String, i32), i64>> {
    let consumer: BaseConsumer = client(config)
        .create()
        .map_err(|e| Error::kafka("creating a metadata client", e))?;
    let mut out = BTreeMap::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_err(|e| Error::kafka(format!("reading metadata of {topic}"), e))?;
        for t in metadata.topics() {
            for p in t.partitions() {
                let (_, high) = consumer
                    .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                    .map_err(|e| Error::kafka(format!("reading watermarks of {topic}"), e))?;
                out.insert((topic.clone(), p.id()), high);
            }
        }
    }
    Ok(out)
}

/// Produces the folder's dumps (unless the topics already hold records: a rerun must not double them), runs the
/// worker until the store holds every produced record, and returns how many records that was.
pub async fn ingest_through_kafka(config: &Config, dir: &Path) -> Result<i64> {
    let files = super::backfill::discover(dir, config)?;
    let t = &config.kafka.topics;
    let inputs = [
        &t.items,
        &t.behaviours,
        &t.id_embeddings,
        &t.dlq,
        &t.item_embeddings,
    ];
    let admin: AdminClient<DefaultClientContext> = client(config)
        .create()
        .map_err(|e| Error::kafka("creating an admin client", e))?;
    let new: Vec<NewTopic> = inputs
        .iter()
        .map(|name| NewTopic::new(name, 1, TopicReplication::Fixed(1)))
        .collect();
    // Topics that exist already are left as they are (the result says so per topic; nothing to do then).
    admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .map_err(|e| Error::kafka("creating the topics", e))?;

    let consumed: Vec<String> = vec![
        t.items.clone(),
        t.behaviours.clone(),
        t.id_embeddings.clone(),
    ];
    let before = watermarks(config, &consumed)?;
    if before.values().sum::<i64>() > 0 {
        println!(
            "  the topics already hold {} records: not producing them again (a second copy would count twice)",
            before.values().sum::<i64>()
        );
    } else {
        let producer: FutureProducer = client(config)
            .set("compression.type", &config.kafka.compression)
            .set("message.timeout.ms", "60000")
            .set("linger.ms", "20")
            .create()
            .map_err(|e| Error::kafka("creating the demo producer", e))?;
        let inputs: Vec<FileInput> = files
            .iter()
            .map(|(path, topic)| FileInput {
                path: path.clone(),
                topic: topic.clone(),
                format: if path.extension().is_some_and(|x| x == "parquet") {
                    FileFormat::Parquet
                } else {
                    FileFormat::Jsonl
                },
            })
            .collect();
        let mut source = FileSource::open(&inputs, &Default::default())?;
        let bar = ProgressBar::new(source.progress().1);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} produce [{bar:30}] {bytes}/{total_bytes} {msg}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        let mut produced = 0u64;
        while let Some(batch) = source.poll_batch(5_000, Duration::ZERO).await? {
            let keys: Vec<String> = batch
                .iter()
                .map(|r| record_key(&r.topic, config, &r.payload).unwrap_or_default())
                .collect();
            let sends: Vec<_> = batch
                .iter()
                .zip(&keys)
                .map(|(r, key)| {
                    producer.send(
                        FutureRecord::to(&r.topic).key(key).payload(&r.payload),
                        Duration::from_secs(60),
                    )
                })
                .collect();
            for sent in futures::future::join_all(sends).await {
                sent.map_err(|(e, _)| Error::kafka("producing a demo record", e))?;
            }
            produced += batch.len() as u64;
            bar.set_position(source.progress().0);
            bar.set_message(format!("{produced} records"));
        }
        bar.finish_and_clear();
        println!("  produced {produced} records to {}", consumed.join(", "));
    }
    let targets = watermarks(config, &consumed)?;
    let total: i64 = targets.values().sum();

    // The worker, until the store's stored offsets reach what the topics hold.
    let store = Arc::new(Store::open(&config.store.path)?);
    let watcher = store.clone();
    let bar = ProgressBar::new(total.max(0) as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} worker [{bar:30}] {pos}/{len} records in the store",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    let progress = bar.clone();
    let caught_up = async move {
        loop {
            let stored = watcher.offsets().unwrap_or_default();
            let done: i64 = targets
                .iter()
                .map(|(tp, high)| stored.get(tp).copied().unwrap_or(0).min(*high))
                .sum();
            progress.set_position(done.max(0) as u64);
            if done >= total {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let report =
        sailstream::ingest::worker::run_on(Arc::new(config.clone()), store, caught_up).await?;
    bar.finish_and_clear();
    println!(
        "  worker consumed {} records this run ({} applied, {} dead-lettered to {}), the store now holds all {total}",
        report.records, report.applied, report.dead_lettered, t.dlq
    );
    Ok(total)
}
