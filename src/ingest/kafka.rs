//! Kafka source whose positions live in the store, not in Kafka.
//!
//! Two ways to get partitions, chosen by `kafka.assignment`:
//! - `manual` (default, what Flink and Arroyo do): the source reads every partition of its topics, found from
//!   metadata (re-checked every 30 s for new partitions), each positioned at the offset stored with the state,
//!   else the earliest. Nothing waits for a group rebalance after a crash, so a restarted worker resumes at once.
//! - `group`: consumer-group subscription; on every assignment the partitions are positioned at the stored
//!   offsets. Needed to split partitions across workers, and it relies on the broker expiring dead members.
//!
//! Either way a group id is used to commit offsets after each store commit, only as a hint for lag tools, and a
//! record below the stored offset is skipped by the ingestor.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;

use super::{DEFAULT_BATCH_BYTES, Source, SourceRecord};
use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::metrics as m;

/// Looks up the next offset to read for (topic, partition) from wherever state is kept.
pub type PositionLookup = Arc<dyn Fn(&str, i32) -> Option<i64> + Send + Sync>;

/// Consumer context that seeks newly assigned partitions to the stored positions.
pub struct ResumeContext {
    lookup: PositionLookup,
}

impl ClientContext for ResumeContext {
    /// librdkafka statistics (every `worker.stats_interval_ms`): export per-partition consumer lag.
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                // -1 is librdkafka's "unknown" (internal partition -1, or not yet fetched).
                if *partition >= 0 && p.consumer_lag >= 0 {
                    metrics::gauge!(m::CONSUMER_LAG, "topic" => topic.clone(), "partition" => partition.to_string())
                        .set(p.consumer_lag as f64);
                }
            }
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        // Broker down, connection refused, ...: librdkafka keeps retrying; say so.
        tracing::warn!(%error, reason, "kafka client error (retrying)");
        metrics::counter!(m::KAFKA_ERRORS).increment(1);
    }
}

impl ConsumerContext for ResumeContext {
    fn rebalance(
        &self,
        base_consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            base_consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                metrics::counter!(m::KAFKA_REBALANCES, "kind" => "assign").increment(1);
                let assigned: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                for (topic, partition) in &assigned {
                    if let Some(next) = (self.lookup)(topic, *partition)
                        && let Err(e) =
                            tpl.set_partition_offset(topic, *partition, Offset::Offset(next))
                    {
                        tracing::error!(%topic, partition, error = %e, "cannot set resume offset");
                    }
                }
                tracing::info!(partitions = ?tpl_summary(tpl), "partitions assigned; resuming from stored offsets");
                if cooperative {
                    base_consumer.incremental_assign(tpl)
                } else {
                    base_consumer.assign(tpl)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                metrics::counter!(m::KAFKA_REBALANCES, "kind" => "revoke").increment(1);
                // Nothing to flush here: the ingest loop commits each batch before it polls again, so the only
                // records not yet stored are re-read (and de-duplicated by offset) after the next assignment.
                tracing::info!(partitions = ?tpl_summary(tpl), "partitions revoked");
                if cooperative {
                    base_consumer.incremental_unassign(tpl)
                } else {
                    base_consumer.unassign()
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance error; dropping assignment");
                base_consumer.unassign()
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "applying rebalance failed");
        }
    }
}

fn tpl_summary(tpl: &TopicPartitionList) -> Vec<String> {
    tpl.elements()
        .iter()
        .map(|e| format!("{}[{}]@{:?}", e.topic(), e.partition(), e.offset()))
        .collect()
}

/// How often a manually assigned source looks for new partitions.
const METADATA_REFRESH: Duration = Duration::from_secs(30);

pub struct KafkaSource {
    consumer: StreamConsumer<ResumeContext>,
    /// Manual assignment only: the topics, the partitions assigned so far, and when metadata was last read.
    manual: Option<ManualAssignment>,
    batch_bytes: usize,
}

struct ManualAssignment {
    topics: Vec<String>,
    lookup: PositionLookup,
    assigned: Vec<(String, i32)>,
    next_refresh: Instant,
    backoff: Duration,
}

impl KafkaSource {
    /// Reads every partition of `topics` itself (no group rebalancing), from the stored positions.
    pub fn assign(
        config: &KafkaConfig,
        topics: &[&str],
        lookup: PositionLookup,
        stats_interval_ms: u64,
    ) -> Result<KafkaSource> {
        let consumer = Self::new_consumer(config, lookup.clone(), stats_interval_ms)?;
        Ok(KafkaSource {
            consumer,
            manual: Some(ManualAssignment {
                topics: topics.iter().map(|t| t.to_string()).collect(),
                lookup,
                assigned: Vec::new(),
                next_refresh: Instant::now(),
                backoff: Duration::from_millis(100),
            }),
            batch_bytes: DEFAULT_BATCH_BYTES,
        })
    }

    /// Joins the consumer group and subscribes to `topics`.
    pub fn subscribe(
        config: &KafkaConfig,
        topics: &[&str],
        lookup: PositionLookup,
        stats_interval_ms: u64,
    ) -> Result<KafkaSource> {
        let consumer = Self::new_consumer(config, lookup, stats_interval_ms)?;
        consumer
            .subscribe(topics)
            .map_err(|e| Error::kafka(format!("subscribing to {topics:?}"), e))?;
        Ok(KafkaSource {
            consumer,
            manual: None,
            batch_bytes: DEFAULT_BATCH_BYTES,
        })
    }

    /// Ends each batch once its records' payloads reach `bytes` (at least one record per batch); the default is
    /// [`DEFAULT_BATCH_BYTES`].
    pub fn with_batch_bytes(mut self, bytes: usize) -> KafkaSource {
        self.batch_bytes = bytes;
        self
    }

    fn new_consumer(
        config: &KafkaConfig,
        lookup: PositionLookup,
        stats_interval_ms: u64,
    ) -> Result<StreamConsumer<ResumeContext>> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", "10000")
            .set("statistics.interval.ms", stats_interval_ms.to_string());
        for (k, v) in &config.client {
            client.set(k, v);
        }
        client
            .create_with_context(ResumeContext { lookup })
            .map_err(|e| Error::kafka("creating consumer", e))
    }

    /// Manual mode: (re)reads metadata when due and assigns every partition found, at its stored position.
    /// Broker trouble is logged and retried with a doubling backoff; it never ends the source.
    fn refresh_assignment(&mut self) -> Result<()> {
        let Some(manual) = self.manual.as_mut() else {
            return Ok(());
        };
        if Instant::now() < manual.next_refresh {
            return Ok(());
        }
        let metadata = match self.consumer.fetch_metadata(None, Duration::from_secs(5)) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = manual.backoff.as_millis() as u64,
                    "cannot read topic metadata (broker unavailable?); retrying");
                metrics::counter!(m::KAFKA_ERRORS).increment(1);
                manual.next_refresh = Instant::now() + manual.backoff;
                manual.backoff = (manual.backoff * 2).min(Duration::from_secs(10));
                return Ok(());
            }
        };
        manual.backoff = Duration::from_millis(100);
        manual.next_refresh = Instant::now() + METADATA_REFRESH;
        let mut found = Vec::new();
        for topic in &manual.topics {
            match metadata.topics().iter().find(|t| t.name() == topic) {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                    found.extend(t.partitions().iter().map(|p| (topic.clone(), p.id())));
                }
                _ => {
                    tracing::warn!(%topic, "topic not found (yet); will look again");
                    manual.next_refresh = Instant::now() + Duration::from_secs(2);
                }
            }
        }
        found.sort();
        if found == manual.assigned {
            return Ok(());
        }
        // Every poll starts after the previous batch was committed, so the stored offsets are the positions.
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in &found {
            let offset =
                (manual.lookup)(topic, *partition).map_or(Offset::Beginning, Offset::Offset);
            tpl.add_partition_offset(topic, *partition, offset)
                .map_err(|e| Error::kafka("building assignment", e))?;
        }
        self.consumer
            .assign(&tpl)
            .map_err(|e| Error::kafka("assigning partitions", e))?;
        metrics::counter!(m::KAFKA_REBALANCES, "kind" => "assign").increment(1);
        tracing::info!(partitions = ?tpl_summary(&tpl), "partitions assigned; resuming from stored offsets");
        manual.assigned = found;
        Ok(())
    }

    pub fn consumer(&self) -> &StreamConsumer<ResumeContext> {
        &self.consumer
    }
}

impl Source for KafkaSource {
    async fn poll_batch(
        &mut self,
        max: usize,
        linger: Duration,
    ) -> Result<Option<Vec<SourceRecord>>> {
        self.refresh_assignment()?;
        let mut out = Vec::new();
        // Wait up to `linger` for the first record, then until the batch is full or `linger` has passed.
        let deadline = tokio::time::Instant::now() + linger;
        let mut bytes = 0;
        while out.len() < max && bytes < self.batch_bytes {
            let msg = match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Err(_) => break,
                Ok(Err(e)) => {
                    // Broker trouble is logged and retried by librdkafka; the batch so far is still good.
                    tracing::warn!(error = %e, "kafka consumer error");
                    if out.is_empty() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    break;
                }
                Ok(Ok(msg)) => msg,
            };
            bytes += msg.payload_len();
            out.push(SourceRecord {
                stream: msg.topic().to_string(),
                partition: msg.partition(),
                offset: msg.offset(),
                topic: msg.topic().to_string(),
                key: msg.key().map(<[u8]>::to_vec),
                payload: msg.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            });
        }
        Ok(Some(out))
    }

    fn committed(&mut self, positions: &[(String, i32, i64)]) -> Result<()> {
        if positions.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        let mut seen = HashMap::new();
        for (topic, partition, next) in positions {
            seen.insert((topic.as_str(), *partition), *next);
        }
        for ((topic, partition), next) in seen {
            tpl.add_partition_offset(topic, partition, Offset::Offset(next))
                .map_err(|e| Error::kafka("building commit list", e))?;
        }
        // A failed hint is harmless (the store holds the truth); log it and go on.
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            tracing::debug!(error = %e, "kafka commit hint failed");
        }
        Ok(())
    }
}
