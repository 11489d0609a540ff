//! The offline event log: every valid ingested event, appended to Parquet segments that DataFusion jobs and
//! backfills read.
//!
//! Exactly once, across crashes, without a reader-side dedupe: each event is first written to the store's
//! `log_pending` family in the same `WriteBatch` as its state and offsets. A roll writes all pending rows (read
//! under one snapshot, converted a chunk at a time) to segment N (one file per topic,
//! `<dir>/<topic>/segment-<N>.parquet`, each written to a temp file, synced and renamed), then deletes those
//! pending rows and sets the next segment number to N+1 in one batch. A crash before that batch leaves the rows
//! pending, and the next roll writes segment N again from a superset of the same rows, replacing any file the
//! crashed roll had renamed. So every event lands in exactly one segment.
//!
//! Besides the original bytes (`payload`, so a segment replays like any event-log Parquet file) each segment has
//! typed columns for the jobs: see [`segment_schema`].

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, BinaryBuilder, Float64Builder, Int32Builder, Int64Builder, RecordBatch, StringBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::schema::{Behaviour, IdEmbedding, InputKind, Item};
use crate::store::{LogRow, Store, cf};

/// `job_state` counters of the log.
pub const NEXT_SEQ_KEY: &str = "offline_log.next_seq";
pub const NEXT_SEGMENT_KEY: &str = "offline_log.next_segment";

/// Sequence numbers for pending rows; lives in the ingestor, persisted with each batch.
#[derive(Debug)]
pub struct LogSequence {
    pub next_seq: u64,
    /// Rows pending since the last roll (known at start by counting, then tracked).
    pub pending: u64,
    pub oldest_pending: Option<Instant>,
}

impl LogSequence {
    pub fn load(store: &Store) -> Result<LogSequence> {
        let pending = store.key_count(cf::LOG_PENDING)?;
        Ok(LogSequence {
            next_seq: store.job_u64(NEXT_SEQ_KEY)?.unwrap_or(0),
            pending,
            oldest_pending: (pending > 0).then(Instant::now),
        })
    }

    /// Every pending row was handed to a roll.
    pub fn clear_pending(&mut self) {
        self.pending = 0;
        self.oldest_pending = None;
    }
}

/// What a roll wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub number: u64,
    pub rows: usize,
    pub files: Vec<PathBuf>,
}

pub struct OfflineLog {
    dir: PathBuf,
    max_rows: u64,
    max_age: Duration,
    config: Arc<Config>,
}

impl OfflineLog {
    pub fn new(config: Arc<Config>) -> OfflineLog {
        OfflineLog {
            dir: config.offline_log.path.clone(),
            max_rows: config.offline_log.segment_max_rows,
            max_age: Duration::from_secs(config.offline_log.segment_max_age_s),
            config,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A log directory belongs to one store: a store that has never written a segment must not adopt a directory
    /// that already holds some, or its segment numbers would overwrite them.
    pub fn check_owner(&self, store: &Store, seq: &LogSequence) -> Result<()> {
        if seq.pending > 0 || store.job_u64(NEXT_SEGMENT_KEY)?.unwrap_or(0) > 0 {
            return Ok(());
        }
        let Ok(topics) = std::fs::read_dir(&self.dir) else {
            return Ok(());
        };
        for topic in topics.flatten() {
            let Ok(files) = std::fs::read_dir(topic.path()) else {
                continue;
            };
            if let Some(file) = files.flatten().find(|f| {
                f.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with("segment-") && n.ends_with(".parquet"))
            }) {
                return Err(Error::config(
                    "offline_log.path",
                    format!(
                        "{} already holds segments ({}) that this store did not write; point offline_log.path \
                         elsewhere, or remove them if the store was reset on purpose",
                        self.dir.display(),
                        file.path().display()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// True when the pending rows are enough, or old enough, for a segment.
    pub fn due(&self, seq: &LogSequence) -> bool {
        seq.pending >= self.max_rows
            || (seq.pending > 0
                && seq
                    .oldest_pending
                    .is_some_and(|t| t.elapsed() >= self.max_age))
    }

    /// Writes every pending row into the next segment. Returns None when nothing was pending. Safe beside
    /// batches being committed: it reads the pending rows as of one moment (an implicit snapshot) and deletes
    /// only those. Rolls must not overlap one another (they would both take the same segment number).
    pub fn roll(&self, store: &Store) -> Result<Option<Segment>> {
        let number = store.job_u64(NEXT_SEGMENT_KEY)?.unwrap_or(0);
        let mut writers: BTreeMap<String, SegmentFile> = BTreeMap::new();
        let mut rows_written = 0;
        let last_seq = store.log_pending_chunks(ROLL_CHUNK_ROWS, |rows| {
            let mut by_topic: BTreeMap<&str, Vec<&LogRow>> = BTreeMap::new();
            for (_, row) in rows {
                by_topic.entry(row.topic.as_str()).or_default().push(row);
            }
            for (topic, rows) in by_topic {
                let batch = segment_batch(InputKind::for_topic(&self.config, topic), &rows)?;
                let file = match writers.entry(topic.to_string()) {
                    std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::btree_map::Entry::Vacant(v) => {
                        let dir = self.dir.join(topic);
                        let path = dir.join(format!("segment-{number:010}.parquet"));
                        v.insert(SegmentFile::create(dir, path)?)
                    }
                };
                file.write(&batch)?;
            }
            rows_written += rows.len();
            Ok(())
        })?;
        let Some(last_seq) = last_seq else {
            return Ok(None);
        };
        let files = writers
            .into_values()
            .map(SegmentFile::finish)
            .collect::<Result<Vec<_>>>()?;
        store.finish_log_segment(last_seq, number + 1, NEXT_SEGMENT_KEY)?;
        Ok(Some(Segment {
            number,
            rows: rows_written,
            files,
        }))
    }
}

/// Pending rows a roll reads, converts and writes at a time: its memory stays at a chunk's rows and arrays (plus
/// the Parquet writer's compressed pages) however many rows the segment gets.
const ROLL_CHUNK_ROWS: usize = 16_384;

/// Columns of a segment: the position and original bytes of every event, then typed fields by contract.
/// Typed fields (nullable; only the event's own contract fills them):
/// - behaviours: user_id, item_id, action, dwell_ms, ts, rating
/// - items: item_id, version, created_at (ts)
/// - id_embeddings: item_id, space, version, ts
pub fn segment_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("key", DataType::Binary, true),
        Field::new("payload", DataType::Binary, false),
        Field::new("ingest_ts", DataType::Int64, false),
        Field::new("user_id", DataType::Utf8, true),
        Field::new("item_id", DataType::Utf8, true),
        Field::new("action", DataType::Utf8, true),
        Field::new("dwell_ms", DataType::Int64, true),
        Field::new("ts", DataType::Int64, true),
        Field::new("rating", DataType::Float64, true),
        Field::new("version", DataType::Int64, true),
        Field::new("space", DataType::Utf8, true),
    ]))
}

fn segment_batch(kind: Option<InputKind>, rows: &[&LogRow]) -> Result<RecordBatch> {
    let n = rows.len();
    let mut topic = StringBuilder::new();
    let mut partition = Int32Builder::with_capacity(n);
    let mut offset = Int64Builder::with_capacity(n);
    let mut key = BinaryBuilder::new();
    let mut payload = BinaryBuilder::new();
    let mut ingest_ts = Int64Builder::with_capacity(n);
    let mut user_id = StringBuilder::new();
    let mut item_id = StringBuilder::new();
    let mut action = StringBuilder::new();
    let mut dwell_ms = Int64Builder::with_capacity(n);
    let mut ts = Int64Builder::with_capacity(n);
    let mut rating = Float64Builder::with_capacity(n);
    let mut version = Int64Builder::with_capacity(n);
    let mut space = StringBuilder::new();
    let bad = |row: &LogRow, e: serde_json::Error| {
        Error::Internal(format!(
            "pending log row {}/{}/{} no longer decodes: {e}",
            row.topic, row.partition, row.offset
        ))
    };
    for row in rows {
        topic.append_value(&row.topic);
        partition.append_value(row.partition);
        offset.append_value(row.offset);
        key.append_option(row.key.as_deref());
        payload.append_value(&row.payload);
        ingest_ts.append_value(row.ingest_ts);
        // Only valid events are logged, so re-parsing cannot fail short of corruption.
        let (u, i, a, d, t, r, v, s) = match kind {
            Some(InputKind::Behaviours) => {
                let b: Behaviour = serde_json::from_slice(&row.payload).map_err(|e| bad(row, e))?;
                (
                    Some(b.user_id),
                    Some(b.item_id),
                    Some(b.action.as_str().to_string()),
                    Some(b.dwell_ms as i64),
                    Some(b.ts),
                    b.rating,
                    None,
                    None,
                )
            }
            Some(InputKind::Items) => {
                let it: Item = serde_json::from_slice(&row.payload).map_err(|e| bad(row, e))?;
                (
                    None,
                    Some(it.item_id),
                    None,
                    None,
                    Some(it.created_at),
                    None,
                    Some(it.version as i64),
                    None,
                )
            }
            Some(InputKind::IdEmbeddings) => {
                let e: IdEmbedding =
                    serde_json::from_slice(&row.payload).map_err(|e| bad(row, e))?;
                (
                    None,
                    Some(e.item_id),
                    None,
                    None,
                    Some(e.ts),
                    None,
                    Some(e.version as i64),
                    Some(e.space),
                )
            }
            None => (None, None, None, None, None, None, None, None),
        };
        user_id.append_option(u);
        item_id.append_option(i);
        action.append_option(a);
        dwell_ms.append_option(d);
        ts.append_option(t);
        rating.append_option(r);
        version.append_option(v);
        space.append_option(s);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(topic.finish()),
        Arc::new(partition.finish()),
        Arc::new(offset.finish()),
        Arc::new(key.finish()),
        Arc::new(payload.finish()),
        Arc::new(ingest_ts.finish()),
        Arc::new(user_id.finish()),
        Arc::new(item_id.finish()),
        Arc::new(action.finish()),
        Arc::new(dwell_ms.finish()),
        Arc::new(ts.finish()),
        Arc::new(rating.finish()),
        Arc::new(version.finish()),
        Arc::new(space.finish()),
    ];
    RecordBatch::try_new(segment_schema(), columns)
        .map_err(|e| Error::columnar("building log segment", e))
}

/// One topic's segment while a roll writes it: a temp file, then (on finish) fsync, rename over the final name
/// and fsync of the directory, so a reader sees the whole file or none.
struct SegmentFile {
    dir: PathBuf,
    tmp: PathBuf,
    path: PathBuf,
    handle: File,
    writer: ArrowWriter<File>,
}

impl SegmentFile {
    fn create(dir: PathBuf, path: PathBuf) -> Result<SegmentFile> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let tmp = path.with_extension("parquet.tmp");
        let ctx = || format!("writing log segment {}", tmp.display());
        let file = File::create(&tmp).map_err(|e| Error::io(ctx(), e))?;
        let handle = file.try_clone().map_err(|e| Error::io(ctx(), e))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .build();
        let writer = ArrowWriter::try_new(file, segment_schema(), Some(props))
            .map_err(|e| Error::columnar(ctx(), e))?;
        Ok(SegmentFile {
            dir,
            tmp,
            path,
            handle,
            writer,
        })
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.writer
            .write(batch)
            .map_err(|e| Error::columnar(format!("writing log segment {}", self.tmp.display()), e))
    }

    fn finish(self) -> Result<PathBuf> {
        let ctx = || format!("writing log segment {}", self.tmp.display());
        self.writer.close().map_err(|e| Error::columnar(ctx(), e))?;
        self.handle.sync_all().map_err(|e| Error::io(ctx(), e))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| {
            Error::io(
                format!("renaming {} to {}", self.tmp.display(), self.path.display()),
                e,
            )
        })?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(format!("syncing {}", self.dir.display()), e))?;
        Ok(self.path)
    }
}
