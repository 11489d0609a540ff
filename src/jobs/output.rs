//! Where job results land: every output folder is written beside its place and swapped in whole, so a reader
//! never sees half a run, and rows computed in Rust are written as zstd Parquet shards.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::JobReport;
use crate::error::{Error, Result};

/// An output folder `<output_dir>/<name>` being rebuilt in `<output_dir>/.<name>.tmp`.
pub(crate) struct OutputSwap {
    tmp: PathBuf,
    dest: PathBuf,
}

impl OutputSwap {
    /// Starts an empty temporary folder (a leftover from a crashed run is removed). `name` may hold a `/`.
    pub(crate) fn begin(output_dir: &Path, name: &str) -> Result<OutputSwap> {
        let tmp = output_dir.join(format!(".{}.tmp", name.replace('/', "-")));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)
                .map_err(|e| Error::io(format!("removing {}", tmp.display()), e))?;
        }
        std::fs::create_dir_all(&tmp)
            .map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
        Ok(OutputSwap {
            tmp,
            dest: output_dir.join(name),
        })
    }

    pub(crate) fn tmp(&self) -> &Path {
        &self.tmp
    }

    /// Replaces the previous folder with the temporary one; returns the final path.
    pub(crate) fn commit(self) -> Result<PathBuf> {
        if let Some(parent) = self.dest.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
        }
        if self.dest.exists() {
            std::fs::remove_dir_all(&self.dest)
                .map_err(|e| Error::io(format!("removing {}", self.dest.display()), e))?;
        }
        std::fs::rename(&self.tmp, &self.dest)
            .map_err(|e| Error::io(format!("moving {} into place", self.dest.display()), e))?;
        Ok(self.dest)
    }
}

/// Writes rows computed in Rust as `<output_dir>/<name>/part-00000.parquet`, replacing the previous folder.
pub fn write_rows(output_dir: &Path, name: &'static str, batch: &RecordBatch) -> Result<JobReport> {
    let swap = OutputSwap::begin(output_dir, name)?;
    let mut shards = ShardWriter::new(swap.tmp(), usize::MAX);
    shards.write(batch)?;
    let (rows, _) = shards.finish()?;
    Ok(JobReport {
        job: name,
        rows,
        output: swap.commit()?,
    })
}

/// Whether a folder holds at least one `.parquet` file (a missing folder holds none).
pub(crate) fn has_parquet(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .any(|e| e.path().extension().is_some_and(|x| x == "parquet"))
        })
        .unwrap_or(false)
}

/// Writes batches into `part-00000.parquet`, `part-00001.parquet`, ... of at most `max_rows` rows each.
pub(crate) struct ShardWriter<'a> {
    dir: &'a Path,
    max_rows: usize,
    current: Option<(ArrowWriter<File>, usize)>,
    files: Vec<String>,
    rows: u64,
}

impl<'a> ShardWriter<'a> {
    pub(crate) fn new(dir: &'a Path, max_rows: usize) -> Self {
        ShardWriter {
            dir,
            max_rows,
            current: None,
            files: Vec::new(),
            rows: 0,
        }
    }

    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let mut offset = 0;
        while offset < batch.num_rows() {
            if self.current.is_none() {
                let name = format!("part-{:05}.parquet", self.files.len());
                let path = self.dir.join(&name);
                let file = File::create(&path)
                    .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
                let props = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(ZstdLevel::default()))
                    .build();
                let writer = ArrowWriter::try_new(file, batch.schema(), Some(props))
                    .map_err(|e| Error::columnar(format!("starting {}", path.display()), e))?;
                self.files.push(name);
                self.current = Some((writer, 0));
            }
            let (writer, written) = self.current.as_mut().expect("opened above");
            let take = (self.max_rows - *written).min(batch.num_rows() - offset);
            writer
                .write(&batch.slice(offset, take))
                .map_err(|e| Error::columnar("writing a Parquet shard", e))?;
            *written += take;
            offset += take;
            self.rows += take as u64;
            if *written == self.max_rows {
                self.close()?;
            }
        }
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        if let Some((writer, _)) = self.current.take() {
            writer
                .close()
                .map_err(|e| Error::columnar("closing a Parquet shard", e))?;
        }
        Ok(())
    }

    pub(crate) fn finish(mut self) -> Result<(u64, Vec<String>)> {
        self.close()?;
        Ok((self.rows, self.files))
    }
}
