//! File replay: JSONL (one record per line) and Parquet, the embedded default source and the backfill input.
//!
//! The position of a file is (`file:<absolute path>`, partition 0, offset = line or row number), stored with the
//! state like a Kafka offset, so an interrupted replay resumes where it stopped and a finished one is not
//! applied twice. Files are expected to be append-only.
//!
//! Parquet files come in two layouts: an event-log layout with a `payload` column (binary or string) holding the
//! original JSON bytes, or a typed layout whose columns are the contract's fields, converted row by row to JSON.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use super::{DEFAULT_BATCH_BYTES, Source, SourceRecord};
use crate::config::{FileFormat, FileInput};
use crate::error::{Error, Result};

pub struct FileSource {
    inputs: Vec<Input>,
    current: usize,
    bytes_total: u64,
    bytes_done: Arc<AtomicU64>,
    batch_bytes: usize,
}

struct Input {
    path: PathBuf,
    stream: String,
    topic: String,
    format: FileFormat,
    /// First offset not yet applied, from the store.
    resume_at: i64,
    size: u64,
    cursor: Option<Cursor>,
    done: bool,
}

enum Cursor {
    Jsonl {
        reader: BufReader<File>,
        /// The line being read, reused: reading into a fresh Vec regrows it several times per line.
        line: Vec<u8>,
        next: i64,
        bytes: u64,
    },
    Parquet {
        reader: ParquetRecordBatchReader,
        rows: VecDeque<Vec<u8>>,
        next: i64,
        total_rows: i64,
    },
}

/// The offset namespace of a replayed file.
pub fn stream_name(path: &Path) -> Result<String> {
    let abs = std::fs::canonicalize(path).map_err(|e| {
        Error::io(
            format!(
                "input file {} (paths are relative to the working directory)",
                path.display()
            ),
            e,
        )
    })?;
    Ok(format!("file:{}", abs.display()))
}

impl FileSource {
    /// `positions` are the store's next offsets; files already fully applied yield nothing.
    pub fn open(
        inputs: &[FileInput],
        positions: &HashMap<(String, i32), i64>,
    ) -> Result<FileSource> {
        let mut out = Vec::new();
        let mut bytes_total = 0;
        for input in inputs {
            let stream = stream_name(&input.path)?;
            let size = std::fs::metadata(&input.path)
                .map_err(|e| Error::io(format!("input file {}", input.path.display()), e))?
                .len();
            bytes_total += size;
            out.push(Input {
                path: input.path.clone(),
                resume_at: positions.get(&(stream.clone(), 0)).copied().unwrap_or(0),
                stream,
                topic: input.topic.clone(),
                format: input.format,
                size,
                cursor: None,
                done: false,
            });
        }
        Ok(FileSource {
            inputs: out,
            current: 0,
            bytes_total,
            bytes_done: Arc::new(AtomicU64::new(0)),
            batch_bytes: DEFAULT_BATCH_BYTES,
        })
    }

    /// Ends each batch once its records' payloads reach `bytes` (at least one record per batch); the default is
    /// [`DEFAULT_BATCH_BYTES`].
    pub fn with_batch_bytes(mut self, bytes: usize) -> FileSource {
        self.batch_bytes = bytes;
        self
    }

    /// (bytes done, bytes total) across all files, for progress bars (Parquet progress is estimated from rows).
    pub fn progress(&self) -> (u64, u64) {
        let done = self
            .inputs
            .iter()
            .map(|i| match (&i.cursor, i.done) {
                (_, true) => i.size,
                (Some(Cursor::Jsonl { bytes, .. }), _) => *bytes,
                (
                    Some(Cursor::Parquet {
                        next, total_rows, ..
                    }),
                    _,
                ) if *total_rows > 0 => {
                    (i.size as f64 * (*next as f64 / *total_rows as f64)) as u64
                }
                _ => 0,
            })
            .sum();
        (done, self.bytes_total)
    }

    /// Bytes done, updated after every batch; readable while the source is borrowed by an ingest loop.
    pub fn progress_counter(&self) -> Arc<AtomicU64> {
        self.bytes_done.clone()
    }

    fn next_record(&mut self) -> Result<Option<SourceRecord>> {
        while self.current < self.inputs.len() {
            let input = &mut self.inputs[self.current];
            if input.cursor.is_none() && !input.done {
                input.cursor = Some(open_cursor(&input.path, input.format)?);
            }
            if let Some((offset, payload)) = next_in(input)? {
                if offset < input.resume_at {
                    continue;
                }
                return Ok(Some(SourceRecord {
                    stream: input.stream.clone(),
                    partition: 0,
                    offset,
                    topic: input.topic.clone(),
                    key: None,
                    payload,
                }));
            }
            input.done = true;
            self.current += 1;
        }
        Ok(None)
    }
}

fn open_cursor(path: &Path, format: FileFormat) -> Result<Cursor> {
    let file = File::open(path)
        .map_err(|e| Error::io(format!("opening input file {}", path.display()), e))?;
    match format {
        FileFormat::Jsonl => Ok(Cursor::Jsonl {
            reader: BufReader::with_capacity(1 << 20, file),
            line: Vec::new(),
            next: 0,
            bytes: 0,
        }),
        FileFormat::Parquet => {
            let ctx = || format!("reading Parquet file {}", path.display());
            let builder = ParquetRecordBatchReaderBuilder::try_new(file)
                .map_err(|e| Error::columnar(ctx(), e))?;
            let total_rows = builder.metadata().file_metadata().num_rows();
            let reader = builder
                .with_batch_size(4096)
                .build()
                .map_err(|e| Error::columnar(ctx(), e))?;
            Ok(Cursor::Parquet {
                reader,
                rows: VecDeque::new(),
                next: 0,
                total_rows,
            })
        }
    }
}

/// Next (offset, payload) of one input, skipping blank JSONL lines (they keep their line number).
fn next_in(input: &mut Input) -> Result<Option<(i64, Vec<u8>)>> {
    let path = &input.path;
    match input.cursor.as_mut() {
        None => Ok(None),
        Some(Cursor::Jsonl {
            reader,
            line,
            next,
            bytes,
        }) => loop {
            line.clear();
            let n = reader
                .read_until(b'\n', line)
                .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            if n == 0 {
                return Ok(None);
            }
            *bytes += n as u64;
            let offset = *next;
            *next += 1;
            while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                line.pop();
            }
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            return Ok(Some((offset, line.clone())));
        },
        Some(Cursor::Parquet {
            reader, rows, next, ..
        }) => {
            while rows.is_empty() {
                match reader.next() {
                    None => return Ok(None),
                    Some(batch) => {
                        let batch = batch.map_err(|e| {
                            Error::columnar(format!("reading Parquet file {}", path.display()), e)
                        })?;
                        rows.extend(rows_as_payloads(&batch, path)?);
                    }
                }
            }
            let offset = *next;
            *next += 1;
            Ok(rows.pop_front().map(|p| (offset, p)))
        }
    }
}

fn rows_as_payloads(batch: &RecordBatch, path: &Path) -> Result<Vec<Vec<u8>>> {
    let ctx = || format!("Parquet file {}", path.display());
    if let Some(col) = batch.column_by_name("payload") {
        let mut out = Vec::with_capacity(batch.num_rows());
        for i in 0..batch.num_rows() {
            if col.is_null(i) {
                out.push(Vec::new());
                continue;
            }
            let bytes: &[u8] = match col.data_type() {
                DataType::Binary => col.as_binary::<i32>().value(i),
                DataType::LargeBinary => col.as_binary::<i64>().value(i),
                DataType::Utf8 => col.as_string::<i32>().value(i).as_bytes(),
                DataType::LargeUtf8 => col.as_string::<i64>().value(i).as_bytes(),
                DataType::BinaryView => col.as_binary_view().value(i),
                DataType::Utf8View => col.as_string_view().value(i).as_bytes(),
                other => {
                    return Err(Error::columnar(
                        ctx(),
                        format!("column 'payload' must be binary or string, found {other}"),
                    ));
                }
            };
            out.push(bytes.to_vec());
        }
        return Ok(out);
    }
    // Typed layout: one JSON object per row, nulls left out (absent optional fields).
    let mut buf = Vec::new();
    {
        let mut writer = arrow::json::LineDelimitedWriter::new(&mut buf);
        writer.write(batch).map_err(|e| Error::columnar(ctx(), e))?;
        writer.finish().map_err(|e| Error::columnar(ctx(), e))?;
    }
    Ok(buf
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

impl Source for FileSource {
    async fn poll_batch(
        &mut self,
        max: usize,
        _linger: Duration,
    ) -> Result<Option<Vec<SourceRecord>>> {
        let mut out = Vec::with_capacity(max.min(65_536));
        let mut bytes = 0;
        while out.len() < max && bytes < self.batch_bytes {
            match self.next_record()? {
                Some(r) => {
                    bytes += r.payload.len();
                    out.push(r);
                }
                None => break,
            }
        }
        self.bytes_done.store(self.progress().0, Ordering::Relaxed);
        Ok(if out.is_empty() { None } else { Some(out) })
    }

    fn committed(&mut self, _positions: &[(String, i32, i64)]) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_ends_at_its_byte_budget_as_well_as_its_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("items.jsonl");
        let line = format!(
            "{{\"item_id\":\"i\",\"title\":\"{}\"}}\n",
            "x".repeat(1_000)
        );
        std::fs::write(&path, line.repeat(10)).unwrap();
        let inputs = [FileInput {
            path,
            topic: "sail.items".into(),
            format: FileFormat::Jsonl,
        }];
        let open = || FileSource::open(&inputs, &HashMap::new()).unwrap();
        let mut source = open().with_batch_bytes(2_500);
        let mut sizes = Vec::new();
        while let Some(batch) = source.poll_batch(100, Duration::ZERO).await.unwrap() {
            sizes.push(batch.len());
        }
        assert_eq!(sizes, [3, 3, 3, 1], "three ~1 KB records reach 2,500 bytes");

        // A record larger than the budget still makes a batch of its own; the count still applies.
        let first_batch = |mut source: FileSource, max| async move {
            source
                .poll_batch(max, Duration::ZERO)
                .await
                .unwrap()
                .unwrap()
                .len()
        };
        assert_eq!(first_batch(open().with_batch_bytes(10), 100).await, 1);
        assert_eq!(first_batch(open(), 4).await, 4);
    }
}
