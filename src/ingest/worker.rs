//! The long-running streaming worker: Kafka in, store and offline log out, until SIGTERM/SIGINT.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::producer::FutureProducer;

use super::kafka::{KafkaSource, PositionLookup};
use super::{BatchReport, DeadLetterSink, Ingestor, Source};
use crate::config::{Assignment, Config};
use crate::error::{Error, Fault, Result};
use crate::metrics as m;
use crate::store::Store;

/// Runs until `shutdown` resolves. On shutdown the batch in hand is committed (or left for the next start, if
/// it cannot be), pending offline-log rows are written out, and the function returns the totals.
pub async fn run(
    config: Arc<Config>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<BatchReport> {
    let store = Arc::new(Store::open(&config.store.path)?);
    let producer = dlq_producer(&config)?;
    let dlq = DeadLetterSink::Kafka {
        producer,
        topic: config.kafka.topics.dlq.clone(),
    };
    let mut ingestor = Ingestor::new(store.clone(), config.clone(), dlq)?;
    // A previous run may have stopped with rows pending: write them out first.
    ingestor.roll_log(true)?;

    let lookup: PositionLookup = {
        let store = store.clone();
        Arc::new(
            move |topic: &str, partition: i32| match store.offset(topic, partition) {
                Ok(next) => next,
                Err(e) => {
                    // Without the stored offset the consumer would start from the group's commit, which is never
                    // ahead of the store; the ingestor then skips what it already applied.
                    tracing::error!(%topic, partition, error = %e, "reading stored offset");
                    None
                }
            },
        )
    };
    let t = &config.kafka.topics;
    let topics = [
        t.items.as_str(),
        t.behaviours.as_str(),
        t.id_embeddings.as_str(),
    ];
    let mut source = match config.kafka.assignment {
        Assignment::Manual => KafkaSource::assign(
            &config.kafka,
            &topics,
            lookup,
            config.worker.stats_interval_ms,
        )?,
        Assignment::Group => KafkaSource::subscribe(
            &config.kafka,
            &topics,
            lookup,
            config.worker.stats_interval_ms,
        )?,
    };
    tracing::info!(brokers = %config.kafka.brokers, group = %config.kafka.group_id, ?topics,
        store = %config.store.path.display(), "worker started");

    let max = config.ingest.batch_size;
    let linger = Duration::from_millis(config.ingest.linger_ms);
    let max_backoff = Duration::from_millis(config.worker.max_backoff_ms);
    let mut total = BatchReport::default();
    let mut shutdown = std::pin::pin!(shutdown);
    'outer: loop {
        let records = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            polled = source.poll_batch(max, linger) => polled?.unwrap_or_default(),
        };
        if !records.is_empty() {
            let mut backoff = Duration::from_millis(100);
            loop {
                match ingestor.apply(&records).await {
                    Ok((report, positions)) => {
                        source.committed(&positions)?;
                        total += report;
                        break;
                    }
                    Err(e) if e.fault() == Fault::External => {
                        // Nothing was committed: the batch is retried as a whole, so nothing is lost or doubled.
                        metrics::counter!(m::RETRIES, "stage" => "apply").increment(1);
                        tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64,
                            "batch failed; retrying");
                        tokio::select! {
                            biased;
                            _ = &mut shutdown => {
                                tracing::warn!("shutdown while retrying: the uncommitted batch is read again at next start");
                                break 'outer;
                            }
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(max_backoff);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        ingestor.roll_log(false)?;
    }
    ingestor.roll_log(true)?;
    tracing::info!(
        records = total.records,
        applied = total.applied,
        dead_lettered = total.dead_lettered,
        duplicates = total.duplicates,
        "worker stopped"
    );
    Ok(total)
}

fn dlq_producer(config: &Config) -> Result<FutureProducer> {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("compression.type", &config.kafka.compression)
        .set("message.timeout.ms", "30000");
    for (k, v) in &config.kafka.client {
        client.set(k, v);
    }
    client
        .create()
        .map_err(|e| Error::kafka("creating dead-letter producer", e))
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn termination_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the worker");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
    }
}
