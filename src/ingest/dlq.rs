//! Dead-letter sinks: the `sail.dlq` topic when running on Kafka, a JSONL file for file replays.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::error::{Error, Result};
use crate::schema::DeadLetter;

pub enum DeadLetterSink {
    /// Produces each dead letter to `topic`, keyed by "<topic>/<partition>/<offset>" of the original record.
    Kafka {
        producer: FutureProducer,
        topic: String,
    },
    /// Appends one JSON object per line and syncs the file before the batch's offsets are committed.
    File { path: PathBuf },
}

impl DeadLetterSink {
    pub fn file(path: impl Into<PathBuf>) -> DeadLetterSink {
        DeadLetterSink::File { path: path.into() }
    }

    pub async fn send_all(&self, letters: &[DeadLetter]) -> Result<()> {
        if letters.is_empty() {
            return Ok(());
        }
        match self {
            DeadLetterSink::File { path } => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        Error::io(
                            format!("creating dead-letter directory {}", dir.display()),
                            e,
                        )
                    })?;
                }
                let mut buf = Vec::new();
                for letter in letters {
                    serde_json::to_writer(&mut buf, letter)
                        .map_err(|e| Error::Internal(format!("encoding dead letter: {e}")))?;
                    buf.push(b'\n');
                }
                let ctx = || format!("appending to dead-letter file {}", path.display());
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| Error::io(ctx(), e))?;
                f.write_all(&buf).map_err(|e| Error::io(ctx(), e))?;
                f.sync_data().map_err(|e| Error::io(ctx(), e))
            }
            DeadLetterSink::Kafka { producer, topic } => {
                let mut pending = Vec::with_capacity(letters.len());
                for letter in letters {
                    let payload = serde_json::to_vec(letter)
                        .map_err(|e| Error::Internal(format!("encoding dead letter: {e}")))?;
                    let key = format!("{}/{}/{}", letter.topic, letter.partition, letter.offset);
                    pending.push((key, payload));
                }
                // Enqueue everything first (send_result does not wait), then wait for every acknowledgement.
                let mut deliveries = std::collections::VecDeque::new();
                for (key, payload) in &pending {
                    loop {
                        match producer
                            .send_result(FutureRecord::to(topic).key(key).payload(payload))
                        {
                            Ok(delivery) => {
                                deliveries.push_back(delivery);
                                break;
                            }
                            Err((
                                rdkafka::error::KafkaError::MessageProduction(
                                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                                ),
                                _,
                            )) => {
                                // Local queue full: wait for the oldest delivery to make room.
                                match deliveries.pop_front() {
                                    Some(d) => ack(d, topic).await?,
                                    None => tokio::time::sleep(Duration::from_millis(10)).await,
                                }
                            }
                            Err((e, _)) => {
                                return Err(Error::kafka(format!("producing to {topic}"), e));
                            }
                        }
                    }
                }
                for delivery in deliveries {
                    ack(delivery, topic).await?;
                }
                Ok(())
            }
        }
    }
}

async fn ack(delivery: rdkafka::producer::DeliveryFuture, topic: &str) -> Result<()> {
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(Error::kafka(format!("producing to {topic}"), e)),
        Err(_) => Err(Error::Internal(format!(
            "producer dropped a delivery to {topic}"
        ))),
    }
}
