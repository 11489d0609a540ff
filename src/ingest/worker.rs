//! The long-running streaming worker: Kafka in, store and offline log out, until SIGTERM/SIGINT.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::kafka::{KafkaSource, PositionLookup};
use super::{BatchReport, DeadLetterSink, Ingestor, Source};
use crate::config::{Assignment, Config};
use crate::embed::Embedder;
use crate::embed::stage::{ComputedBatch, EmbedStage};
use crate::error::{Error, Fault, Result};
use crate::metrics as m;
use crate::schema::ItemEmbedding;
use crate::store::Store;

/// Users whose interests are recomputed after each ingest batch (bounds the time one tick takes).
const INTEREST_UPDATES_PER_TICK: usize = 256;

/// Runs until `shutdown` resolves. On shutdown the batch in hand is committed (or left for the next start, if
/// it cannot be), pending offline-log rows are written out, and the function returns the totals.
pub async fn run(
    config: Arc<Config>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<BatchReport> {
    let store = Arc::new(Store::open(&config.store.path)?);
    run_on(config, store, shutdown).await
}

/// [`run`] over a store the caller opened (the worker's lookup API shares it).
pub async fn run_on(
    config: Arc<Config>,
    store: Arc<Store>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<BatchReport> {
    let producer = dlq_producer(&config)?;
    // The model is loaded before consuming anything: a missing or mismatched model stops the start, loudly.
    let mut embed = if config.embed.enabled {
        let stage = EmbedStage::new(Embedder::load(&config)?, store.clone());
        Some(EmbedLoop::new(stage, &config, producer.clone()))
    } else {
        None
    };
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

    let mut schedule = JobSchedule::new(&config);
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
        if let Some(embed) = embed.as_mut() {
            embed.tick().await;
            // Interests follow the stream: users whose positives changed get them recomputed here.
            match crate::jobs::interests::update_pending(&store, &config, INTEREST_UPDATES_PER_TICK)
            {
                Ok(n) => metrics::counter!(m::INTERESTS_UPDATED).increment(n as u64),
                Err(e) => {
                    metrics::counter!(m::RETRIES, "stage" => "interests").increment(1);
                    tracing::warn!(error = %e, "updating user interests failed; the users stay pending");
                }
            }
        }
        schedule.tick(&store, &config);
    }
    ingestor.roll_log(true)?;
    schedule.finish().await;
    tracing::info!(
        records = total.records,
        applied = total.applied,
        dead_lettered = total.dead_lettered,
        duplicates = total.duplicates,
        "worker stopped"
    );
    Ok(total)
}

/// Runs every job in the background every `jobs.schedule_interval_s` (the first run one interval after start),
/// never two runs at once. Jobs read the offline log's segments and write the store beside ingest.
struct JobSchedule {
    interval: Option<Duration>,
    next: Instant,
    running: Option<tokio::task::JoinHandle<()>>,
}

impl JobSchedule {
    fn new(config: &Config) -> JobSchedule {
        let interval = (config.jobs.schedule_interval_s > 0)
            .then(|| Duration::from_secs(config.jobs.schedule_interval_s));
        JobSchedule {
            interval,
            next: Instant::now() + interval.unwrap_or_default(),
            running: None,
        }
    }

    fn tick(&mut self, store: &Arc<Store>, config: &Arc<Config>) {
        let Some(interval) = self.interval else {
            return;
        };
        if Instant::now() < self.next || self.running.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        self.next = Instant::now() + interval;
        let (store, config) = (store.clone(), config.clone());
        let handle = tokio::runtime::Handle::current();
        // The jobs' k-means and item2vec loops are CPU-bound: a blocking thread keeps them off the ingest loop.
        self.running = Some(tokio::task::spawn_blocking(move || {
            for name in crate::jobs::ALL {
                let started = Instant::now();
                let result = handle.block_on(crate::jobs::run(name, &config, &store));
                metrics::histogram!(m::JOB_SECONDS, "job" => name)
                    .record(started.elapsed().as_secs_f64());
                match result {
                    Ok(summary) => {
                        metrics::counter!(m::JOB_RUNS, "job" => name, "outcome" => "ok")
                            .increment(1);
                        tracing::info!(job = name, "{summary}");
                    }
                    Err(e) => {
                        metrics::counter!(m::JOB_RUNS, "job" => name, "outcome" => "error")
                            .increment(1);
                        tracing::warn!(job = name, error = %e, "scheduled job failed; the later ones wait for the next run");
                        break;
                    }
                }
            }
        }));
    }

    /// Waits for a run in progress (its writes are atomic, but a clean stop should not cut it short).
    async fn finish(&mut self) {
        if let Some(h) = self.running.take()
            && !h.is_finished()
        {
            tracing::info!("waiting for the scheduled jobs to finish");
            let _ = h.await;
        }
    }
}

/// Embeds the item versions ingest queued, by batch size or deadline, between ingest batches; publishes each
/// batch's vectors before storing them (at least once on the compacted topic; a crash in between re-embeds).
struct EmbedLoop {
    stage: EmbedStage,
    producer: Option<(FutureProducer, String)>,
    batch_size: usize,
    max_wait: Duration,
    waiting_since: Option<Instant>,
}

impl EmbedLoop {
    fn new(stage: EmbedStage, config: &Config, producer: FutureProducer) -> EmbedLoop {
        EmbedLoop {
            stage,
            producer: config
                .embed
                .publish
                .then(|| (producer, config.kafka.topics.item_embeddings.clone())),
            batch_size: config.embed.batch_size,
            max_wait: Duration::from_millis(config.embed.max_wait_ms),
            waiting_since: None,
        }
    }

    /// One step: embeds a batch when a full one is waiting or the oldest waited `max_wait`. Failures are logged
    /// and counted; the pending entries stay, so the next tick retries them.
    async fn tick(&mut self) {
        if let Err(e) = self.try_tick().await {
            metrics::counter!(m::RETRIES, "stage" => "embed").increment(1);
            tracing::warn!(error = %e, "embedding batch failed; it stays pending and is retried");
        }
    }

    async fn try_tick(&mut self) -> Result<()> {
        let waiting = self.stage.pending(self.batch_size)?;
        if waiting == 0 {
            self.waiting_since = None;
            // Idle: re-embed in the background what another model version (or nothing) embedded; lookups keep
            // reading each old vector until its replacement is committed.
            if let Some(computed) = self
                .stage
                .upgrade_step(self.batch_size, 50 * self.batch_size)?
            {
                self.publish_and_commit(computed).await?;
            }
            return Ok(());
        }
        let since = *self.waiting_since.get_or_insert_with(Instant::now);
        if waiting < self.batch_size && since.elapsed() < self.max_wait {
            return Ok(());
        }
        let computed = self.stage.compute_pending(self.batch_size)?;
        self.publish_and_commit(computed).await?;
        self.waiting_since = None;
        Ok(())
    }

    async fn publish_and_commit(&mut self, computed: ComputedBatch) -> Result<()> {
        if computed.embeddings.is_empty() && computed.answered.is_empty() {
            return Ok(());
        }
        if let Some((producer, topic)) = &self.producer {
            publish(producer, topic, &computed.embeddings).await?;
        }
        self.stage.commit(computed)
    }
}

async fn publish(
    producer: &FutureProducer,
    topic: &str,
    embeddings: &[ItemEmbedding],
) -> Result<()> {
    // Enqueue everything first (librdkafka batches it), then wait for every acknowledgement.
    let mut deliveries = Vec::with_capacity(embeddings.len());
    for e in embeddings {
        let payload = serde_json::to_vec(e)
            .map_err(|err| Error::Internal(format!("encoding embedding: {err}")))?;
        let record = FutureRecord::to(topic).key(&e.item_id).payload(&payload);
        let delivery = producer
            .send_result(record)
            .map_err(|(err, _)| Error::kafka(format!("queueing for {topic}"), err))?;
        deliveries.push(delivery);
    }
    for delivery in deliveries {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((err, _))) => return Err(Error::kafka(format!("publishing to {topic}"), err)),
            Err(_) => {
                return Err(Error::Internal(format!(
                    "producer dropped a delivery to {topic}"
                )));
            }
        }
    }
    metrics::counter!(m::EMBEDDINGS_PUBLISHED, "topic" => topic.to_string())
        .increment(embeddings.len() as u64);
    Ok(())
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
/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called (not when first polled), so a
/// signal that arrives while the worker is still starting (loading the model) is not lost: the worker then
/// starts, drains nothing, and exits 0. Must be called inside a Tokio runtime.
pub fn termination_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: draining"),
                _ = int.recv() => tracing::info!("SIGINT: draining"),
            },
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM/SIGINT; only Ctrl-C stops the worker");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
