//! Ingest: sources of records, decoding, dead letters, and folding events into the online store.
//!
//! A [`Source`] yields raw records with their position (stream, partition, offset). The [`Ingestor`] decodes
//! each one, folds valid events into state, sends invalid ones to the dead-letter sink, and commits the state
//! together with the next offset of every partition it touched in one RocksDB batch. A record whose offset is
//! below the stored position was already applied and is skipped, so redelivery after a crash counts nothing twice.

mod cache;
pub mod dlq;
pub mod files;
pub mod kafka;
pub mod log;
mod state;
pub mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use dlq::DeadLetterSink;
pub use state::Positives;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::metrics as m;
use crate::schema::{self, DeadLetter, InputKind};
use crate::store::{LogRow, Store, Unmarked};

/// One raw record and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceRecord {
    /// Namespace of the position: the Kafka topic, or `file:<absolute path>` for file replay.
    pub stream: String,
    pub partition: i32,
    pub offset: i64,
    /// Contract the payload must satisfy (the input topic it belongs to).
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// Payload bytes at which a source ends a batch even if it holds fewer than `max` records (at least one record per
/// batch). Records may be up to `limits.max_record_bytes` (items with inline media), so a count alone does not
/// bound a batch's memory: 2,000 such records in a worker batch, or 100,000 in a replay batch, could be gigabytes.
pub const DEFAULT_BATCH_BYTES: usize = 64 << 20;

/// Where records come from. Implementations resume from the positions stored with the state.
pub trait Source {
    /// Up to `max` records, fewer once their payloads reach the source's byte budget ([`DEFAULT_BATCH_BYTES`]
    /// unless set otherwise). Waits at most `linger` for the batch to fill once it has started. `Ok(None)` means
    /// the source is exhausted (file replay); `Ok(Some(empty))` means nothing arrived in time.
    fn poll_batch(
        &mut self,
        max: usize,
        linger: Duration,
    ) -> impl std::future::Future<Output = Result<Option<Vec<SourceRecord>>>> + Send;

    /// Tells the source that everything below these next-offsets is durably stored (Kafka: a commit hint for
    /// lag tools; the store stays the source of truth).
    fn committed(&mut self, positions: &[(String, i32, i64)]) -> Result<()>;
}

/// What one applied batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchReport {
    pub records: usize,
    pub applied: usize,
    pub duplicates: usize,
    pub dead_lettered: usize,
    pub stale_items: usize,
}

impl std::ops::AddAssign for BatchReport {
    fn add_assign(&mut self, o: Self) {
        self.records += o.records;
        self.applied += o.applied;
        self.duplicates += o.duplicates;
        self.dead_lettered += o.dead_lettered;
        self.stale_items += o.stale_items;
    }
}

/// The offline log of an ingestor: where its rows stand, and the roll running in the background, if any.
struct LogState {
    log: Arc<log::OfflineLog>,
    seq: log::LogSequence,
    rolling: Option<Rolling>,
}

/// A roll on its own thread, and how many rows were pending when it started (it also takes rows committed
/// after that, up to the moment it reads them).
struct Rolling {
    handle: std::thread::JoinHandle<Result<Option<log::Segment>>>,
    pending_at_start: u64,
}

impl LogState {
    /// Waits for the roll and accounts for what it wrote. On failure its rows stay pending (in the store too).
    fn collect(&mut self, rolling: Rolling) -> Result<Option<log::Segment>> {
        let outcome = rolling.handle.join().unwrap_or_else(|_| {
            Err(Error::Internal(
                "the offline-log roll thread panicked".into(),
            ))
        });
        match outcome {
            Ok(segment) => {
                if let Some(s) = &segment {
                    // Rows committed after the roll started and written by it are no longer pending.
                    let extra = (s.rows as u64).saturating_sub(rolling.pending_at_start);
                    self.seq.pending = self.seq.pending.saturating_sub(extra);
                    if self.seq.pending == 0 {
                        self.seq.oldest_pending = None;
                    }
                    record_segment(s);
                }
                Ok(segment)
            }
            Err(e) => {
                self.seq.pending += rolling.pending_at_start;
                self.seq.oldest_pending.get_or_insert_with(Instant::now);
                Err(e)
            }
        }
    }
}

impl Drop for Ingestor {
    /// A roll still running finishes before the store is let go (were it cut short, its rows would just stay
    /// pending for the next start, as after a crash).
    fn drop(&mut self) {
        if let Some(rolling) = self.log.as_mut().and_then(|s| s.rolling.take()) {
            let _ = rolling.handle.join();
        }
    }
}

fn record_segment(s: &log::Segment) {
    metrics::counter!(m::LOG_SEGMENTS).increment(1);
    metrics::counter!(m::LOG_ROWS).increment(s.rows as u64);
    tracing::info!(
        segment = s.number,
        rows = s.rows,
        "offline log segment written"
    );
}

pub struct Ingestor {
    store: Arc<Store>,
    config: Arc<Config>,
    positives: Positives,
    dlq: DeadLetterSink,
    /// Next offset to apply per (stream, partition); mirrors the store's offsets family.
    next: HashMap<(String, i32), i64>,
    /// The offline event log, when enabled: rows are queued in the store with each batch, rolled into segments.
    log: Option<LogState>,
    /// Per-user lists and per-item counters from earlier batches (see `cache`).
    cache: cache::StateCache,
    /// The store's generation of interests-mark deletes that `cache` has heard of.
    unmarked_seen: u64,
    /// What the last batch's fold held, to size the next one's maps.
    fold_sizes: Option<state::FoldSizes>,
}

impl Ingestor {
    pub fn new(store: Arc<Store>, config: Arc<Config>, dlq: DeadLetterSink) -> Result<Ingestor> {
        let next = store.offsets()?.into_iter().collect();
        let log = if config.offline_log.enabled {
            let log = log::OfflineLog::new(config.clone());
            let seq = log::LogSequence::load(&store)?;
            log.check_owner(&store, &seq)?;
            Some(LogState {
                log: Arc::new(log),
                seq,
                rolling: None,
            })
        } else {
            None
        };
        Ok(Ingestor {
            cache: cache::StateCache::new(config.ingest.state_cache_mb << 20),
            // The cache starts empty, so deletes before now do not concern it.
            unmarked_seen: store.interests_unmarked_generation(),
            fold_sizes: None,
            positives: Positives::new(&config.positives),
            store,
            config,
            dlq,
            next,
            log,
        })
    }

    /// Writes pending offline-log rows into a segment when enough are pending (or they are old enough): in the
    /// background, so that ingest goes on meanwhile (a roll of 200,000 rows re-reads, encodes, compresses and
    /// syncs them: it used to stall the stream for its whole duration). With `force` (shutdown, end of a replay)
    /// it waits for a running roll and then writes every row still pending before it returns. Returns the
    /// segment this call saw finished, if any.
    pub fn roll_log(&mut self, force: bool) -> Result<Option<log::Segment>> {
        let Some(state) = self.log.as_mut() else {
            return Ok(None);
        };
        let mut finished = None;
        if let Some(rolling) = state.rolling.take() {
            if !force && !rolling.handle.is_finished() {
                state.rolling = Some(rolling);
                return Ok(None);
            }
            finished = state.collect(rolling)?;
        }
        if force {
            let segment = state.log.roll(&self.store)?;
            state.seq.clear_pending();
            if let Some(s) = &segment {
                record_segment(s);
            }
            return Ok(segment.or(finished));
        }
        if state.log.due(&state.seq) {
            let (log, store) = (state.log.clone(), self.store.clone());
            let handle = std::thread::Builder::new()
                .name("offline-log-roll".into())
                .spawn(move || log.roll(&store))
                .map_err(|e| Error::io("starting the offline-log roll thread", e))?;
            state.rolling = Some(Rolling {
                handle,
                pending_at_start: state.seq.pending,
            });
            state.seq.clear_pending();
        }
        Ok(finished)
    }

    /// Replays the source until it is exhausted or `stop` resolves, committing batch by batch, in batches of
    /// `ingest.replay_batch_size` (the Kafka worker has a loop of its own, with `ingest.batch_size`).
    pub async fn run<S: Source>(
        &mut self,
        source: &mut S,
        mut stop: impl std::future::Future<Output = ()> + Unpin,
        mut on_batch: impl FnMut(&BatchReport),
    ) -> Result<BatchReport> {
        let max = self.config.ingest.replay_batch_size;
        let linger = Duration::from_millis(self.config.ingest.linger_ms);
        let mut total = BatchReport::default();
        loop {
            let polled = tokio::select! {
                biased;
                _ = &mut stop => break,
                polled = source.poll_batch(max, linger) => polled?,
            };
            let Some(records) = polled else { break };
            if records.is_empty() {
                continue;
            }
            let (report, positions) = self.apply(&records).await?;
            source.committed(&positions)?;
            self.roll_log(false)?;
            on_batch(&report);
            total += report;
        }
        self.roll_log(true)?;
        Ok(total)
    }

    /// Decodes and folds one batch, dead-letters what fails, and commits state plus offsets atomically.
    /// Returns the report and the (stream, partition, next offset) positions now stored.
    pub async fn apply(
        &mut self,
        records: &[SourceRecord],
    ) -> Result<(BatchReport, Vec<(String, i32, i64)>)> {
        let started = Instant::now();
        let mut report = BatchReport {
            records: records.len(),
            ..Default::default()
        };
        self.forget_deleted_marks();
        let mut fold = state::Fold::new(
            &self.store,
            &mut self.cache,
            &self.config,
            &self.positives,
            records.len(),
            self.fold_sizes,
        );
        let mut dead = Vec::new();
        // (stream, partition, next offset) of every partition in the batch: a handful, so a list beats a map
        // whose key would be cloned per record.
        let mut moved: Vec<(String, i32, i64)> = Vec::new();
        let mut applied_by_topic: HashMap<&str, u64> = HashMap::new();
        let mut log_rows = Vec::new();
        let ingest_ts = now_ms();
        // Counters per topic, added to the metrics once per batch (a labelled counter per record costs a
        // registry lookup and a label allocation each).
        let mut consumed_by_topic: HashMap<&str, u64> = HashMap::new();
        let mut duplicates_by_topic: HashMap<&str, u64> = HashMap::new();
        for rec in records {
            *consumed_by_topic.entry(rec.topic.as_str()).or_default() += 1;
            let at = match moved
                .iter()
                .position(|(s, p, _)| *s == rec.stream && *p == rec.partition)
            {
                Some(at) => at,
                None => {
                    let pos = (rec.stream.clone(), rec.partition);
                    let stored = self.next.get(&pos).copied().unwrap_or(i64::MIN);
                    moved.push((pos.0, pos.1, stored));
                    moved.len() - 1
                }
            };
            let next = &mut moved[at].2;
            if rec.offset < *next {
                report.duplicates += 1;
                *duplicates_by_topic.entry(rec.topic.as_str()).or_default() += 1;
                continue;
            }
            *next = rec.offset + 1;
            let decoded = match InputKind::for_topic(&self.config, &rec.topic) {
                Some(kind) => schema::decode(kind, &rec.payload, &self.config),
                None => Err(schema::DecodeError::new(
                    "record",
                    format!("topic '{}' has no input contract", rec.topic),
                )),
            };
            match decoded {
                Ok(event) => {
                    if self.log.is_some() {
                        log_rows.push(LogRow {
                            topic: rec.topic.clone(),
                            partition: rec.partition,
                            offset: rec.offset,
                            key: rec.key.clone(),
                            payload: rec.payload.clone(),
                            ingest_ts,
                        });
                    }
                    if fold.apply(event, &rec.stream, rec.partition)? {
                        report.applied += 1;
                        *applied_by_topic.entry(rec.topic.as_str()).or_default() += 1;
                    } else {
                        report.stale_items += 1;
                    }
                }
                Err(err) => {
                    tracing::debug!(topic = %rec.topic, partition = rec.partition, offset = rec.offset,
                        error = %err, "dead-lettering record");
                    dead.push(DeadLetter::new(
                        &rec.topic,
                        rec.partition,
                        rec.offset,
                        rec.key.as_deref(),
                        &rec.payload,
                        err,
                        now_ms(),
                    ));
                }
            }
        }
        report.dead_lettered = dead.len();
        // Dead letters are delivered before the offsets move past them: a crash in between re-sends them
        // (at-least-once in the DLQ) but never loses one.
        self.dlq.send_all(&dead).await?;
        let mut batch = self.store.batch();
        fold.write_into(&mut batch)?;
        let mut positions = moved;
        positions.sort();
        for (stream, partition, next) in &positions {
            batch.set_offset(stream, *partition, *next)?;
        }
        let logged = log_rows.len() as u64;
        if let Some(LogState { seq, .. }) = &self.log {
            let mut next_seq = seq.next_seq;
            for row in &log_rows {
                batch.append_log(next_seq, row)?;
                next_seq += 1;
            }
            batch.set_job_u64(log::NEXT_SEQ_KEY, next_seq)?;
        }
        batch.add_events(report.records);
        batch.commit()?;
        let sizes = fold.sizes();
        fold.committed();
        self.fold_sizes = Some(sizes);
        self.next.extend(
            positions
                .iter()
                .map(|(stream, partition, next)| ((stream.clone(), *partition), *next)),
        );
        if let Some(LogState { seq, .. }) = &mut self.log {
            seq.next_seq += logged;
            seq.pending += logged;
            if logged > 0 && seq.oldest_pending.is_none() {
                seq.oldest_pending = Some(Instant::now());
            }
        }
        for (topic, n) in consumed_by_topic {
            metrics::counter!(m::RECORDS_CONSUMED, "topic" => topic.to_string()).increment(n);
        }
        for (topic, n) in duplicates_by_topic {
            metrics::counter!(m::RECORDS_DUPLICATE, "topic" => topic.to_string()).increment(n);
        }
        // Counted once committed, so a retried batch is not counted twice.
        for (topic, n) in applied_by_topic {
            metrics::counter!(m::RECORDS_APPLIED, "topic" => topic.to_string()).increment(n);
        }
        if report.stale_items > 0 {
            metrics::counter!(m::ITEMS_STALE).increment(report.stale_items as u64);
        }
        for letter in &dead {
            metrics::counter!(m::RECORDS_DEAD_LETTERED,
                "topic" => letter.topic.clone(), "category" => letter.category.clone())
            .increment(1);
        }
        metrics::histogram!(m::STORE_BATCH_RECORDS).record(report.records as f64);
        metrics::histogram!(m::STORE_COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
        Ok((report, positions))
    }

    /// Tells the cache which interests marks the interest update deleted since the last batch, so that ingest
    /// writes those users' marks again.
    fn forget_deleted_marks(&mut self) {
        let (unmarked, generation) = self.store.interests_unmarked_since(self.unmarked_seen);
        match unmarked {
            Unmarked::Nothing => {}
            Unmarked::Users(users) => {
                for user in users {
                    self.cache.forget_mark(&user);
                }
            }
            Unmarked::TooMany => self.cache.forget_all_marks(),
        }
        self.unmarked_seen = generation;
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
