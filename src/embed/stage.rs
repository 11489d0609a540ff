//! The embed stage over the store: pending item versions (queued by ingest with the item itself), backfills,
//! and model upgrades.
//!
//! Each embedded batch is committed in one RocksDB batch: the vectors plus the removal of exactly the pending
//! entries they answer, so a crash re-embeds at most one batch and a newer item version queued meanwhile keeps
//! its own entry. A stored vector stays readable until its replacement is committed: lookups never see a gap
//! while a new model version re-embeds the catalogue.

use std::sync::Arc;

use super::Embedder;
use crate::error::{Error, Result};
use crate::ingest::now_ms;
use crate::metrics as m;
use crate::schema::{Item, ItemEmbedding};
use crate::store::{ModelInfo, Store};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EmbedReport {
    pub embedded: usize,
    pub not_embeddable: usize,
    /// Pictures or sounds left out (fetch or decode failures); their items were still embedded.
    pub media_dropped: usize,
}

impl std::ops::AddAssign for EmbedReport {
    fn add_assign(&mut self, o: Self) {
        self.embedded += o.embedded;
        self.not_embeddable += o.not_embeddable;
        self.media_dropped += o.media_dropped;
    }
}

/// Vectors computed for a set of pending entries, not yet stored.
#[derive(Debug, Clone)]
pub struct ComputedBatch {
    pub report: EmbedReport,
    pub embeddings: Vec<ItemEmbedding>,
    /// The (item, version) pending entries these vectors answer.
    pub answered: Vec<(String, u64)>,
}

pub struct EmbedStage {
    embedder: Embedder,
    store: Arc<Store>,
    upgrade_cursor: Option<String>,
    upgrade_done: bool,
}

impl EmbedStage {
    pub fn new(embedder: Embedder, store: Arc<Store>) -> EmbedStage {
        EmbedStage {
            embedder,
            store,
            upgrade_cursor: None,
            upgrade_done: false,
        }
    }

    pub fn embedder(&self) -> &Embedder {
        &self.embedder
    }

    /// Item versions waiting, up to `limit`.
    pub fn pending(&self, limit: usize) -> Result<usize> {
        Ok(self.store.embed_pending(limit)?.len())
    }

    /// Embeds up to `limit` pending item versions and commits them. Returns what was written.
    pub fn run_pending(&mut self, limit: usize) -> Result<(EmbedReport, Vec<ItemEmbedding>)> {
        let batch = self.compute_pending(limit)?;
        let report = batch.report;
        let written = batch.embeddings.clone();
        self.commit(batch)?;
        Ok((report, written))
    }

    /// Embeds up to `limit` pending item versions without storing them yet: the worker publishes the vectors
    /// first and then [`commit`](Self::commit)s, so a crash in between re-embeds and republishes (at least once
    /// on a compacted topic) instead of losing the publication.
    pub fn compute_pending(&mut self, limit: usize) -> Result<ComputedBatch> {
        let pending = self.store.embed_pending(limit)?;
        let mut items: Vec<Item> = Vec::new();
        for (id, _) in &pending {
            if items.last().is_some_and(|it: &Item| &it.item_id == id) {
                continue;
            }
            // The stored item is the latest version: older pending versions of it are answered by it too.
            if let Some(item) = self.store.item(id)? {
                items.push(item);
            }
        }
        let (report, embeddings) = self.compute(&items)?;
        Ok(ComputedBatch {
            report,
            embeddings,
            answered: pending,
        })
    }

    /// Stores the vectors and clears exactly the pending entries they answer, in one atomic batch.
    pub fn commit(&self, computed: ComputedBatch) -> Result<()> {
        let mut batch = self.store.batch();
        if !computed.embeddings.is_empty() {
            // With the vectors, atomically: a reader never finds a vector whose model it cannot describe.
            let manifest = self.embedder.manifest();
            batch.put_model_info(&ModelInfo {
                name: manifest.model.name.clone(),
                version: manifest.model.version.clone(),
                dim: manifest.output.dim,
                matryoshka_prefixes: manifest.output.matryoshka_prefixes.clone(),
                normalized: manifest.output.normalized,
            })?;
        }
        for e in &computed.embeddings {
            batch.put_item_embedding(e)?;
            if !e.semantic_ids.is_empty() {
                batch.put_semantic_ids(&e.item_id, &e.model_version, &e.semantic_ids)?;
            }
        }
        for (id, version) in &computed.answered {
            batch.delete_embed_pending(id, *version)?;
        }
        batch.commit()?;
        metrics::counter!(m::ITEMS_EMBEDDED, "model" => self.embedder.manifest().model.name.clone())
            .increment(computed.embeddings.len() as u64);
        Ok(())
    }

    /// Whether an item's stored vector is missing, from another model, or from an older item version.
    pub fn needs_embedding(&self, item: &Item) -> Result<bool> {
        let model = &self.embedder.manifest().model;
        Ok(match self.store.item_embedding(&item.item_id)? {
            None => true,
            Some(e) => {
                e.model != model.name
                    || e.model_version != model.version
                    || e.item_version < item.version
            }
        })
    }

    /// Scans stored items after `after` (at most `max_scan` of them) and returns up to `want` that need
    /// embedding, the id to continue after, and whether the scan reached the end.
    fn scan(
        &self,
        after: Option<&str>,
        want: usize,
        max_scan: usize,
    ) -> Result<(Vec<Item>, Option<String>, bool, usize)> {
        let mut todo = Vec::new();
        let mut last: Option<String> = None;
        let mut scanned = 0usize;
        let mut exhausted = true;
        let mut failure: Option<Error> = None;
        self.store.for_each_item_from(after, |item| {
            scanned += 1;
            last = Some(item.item_id.clone());
            match self.needs_embedding(&item) {
                Ok(true) => todo.push(item),
                Ok(false) => {}
                Err(e) => {
                    failure = Some(e);
                    return Ok(false);
                }
            }
            if todo.len() >= want || scanned >= max_scan {
                exhausted = false;
                return Ok(false);
            }
            Ok(true)
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        Ok((
            todo,
            last.or_else(|| after.map(str::to_string)),
            exhausted,
            scanned,
        ))
    }

    fn compute_items(&mut self, items: Vec<Item>) -> Result<ComputedBatch> {
        let answered = items
            .iter()
            .map(|i| (i.item_id.clone(), i.version))
            .collect();
        let (report, embeddings) = self.compute(&items)?;
        Ok(ComputedBatch {
            report,
            embeddings,
            answered,
        })
    }

    /// Embeds every stored item that [`needs_embedding`](Self::needs_embedding), in chunks, calling `progress`
    /// with (items scanned, report so far). Resumable: a second run only does what the first did not finish.
    pub fn backfill(
        &mut self,
        mut progress: impl FnMut(usize, &EmbedReport),
    ) -> Result<EmbedReport> {
        let chunk = self.embedder.batch_size() * 4;
        let mut total = EmbedReport::default();
        let mut scanned = 0usize;
        let mut cursor: Option<String> = None;
        loop {
            let (items, next, exhausted, n) = self.scan(cursor.as_deref(), chunk, usize::MAX)?;
            scanned += n;
            cursor = next;
            let computed = self.compute_items(items)?;
            total += computed.report;
            self.commit(computed)?;
            progress(scanned, &total);
            if exhausted {
                return Ok(total);
            }
        }
    }

    /// One step of a background re-embedding (the worker calls it when nothing is pending): scans at most
    /// `max_scan` items from where the previous step stopped and computes up to `want` of those that need a
    /// vector (a new model version, or a version the queue missed). `Ok(None)` once the whole catalogue is
    /// current. The caller publishes and [`commit`](Self::commit)s the batch.
    pub fn upgrade_step(&mut self, want: usize, max_scan: usize) -> Result<Option<ComputedBatch>> {
        if self.upgrade_done {
            return Ok(None);
        }
        let (items, next, exhausted, _) =
            self.scan(self.upgrade_cursor.as_deref(), want, max_scan)?;
        self.upgrade_cursor = next;
        if exhausted {
            self.upgrade_done = true;
            let model = &self.embedder.manifest().model;
            tracing::info!(model = %model.name, version = %model.version,
                "every stored item has a current embedding");
        }
        if items.is_empty() {
            return Ok(Some(ComputedBatch {
                report: EmbedReport::default(),
                embeddings: Vec::new(),
                answered: Vec::new(),
            }));
        }
        self.compute_items(items).map(Some)
    }

    fn compute(&mut self, items: &[Item]) -> Result<(EmbedReport, Vec<ItemEmbedding>)> {
        let mut report = EmbedReport::default();
        let results = self.embedder.embed(items)?;
        let model = self.embedder.manifest().model.clone();
        // New items get semantic IDs from the trained codebooks, when those belong to this model version.
        let codebooks = self
            .store
            .codebooks()?
            .filter(|c| c.model == model.name && c.model_version == model.version);
        let now = now_ms();
        let mut written = Vec::new();
        for (item, result) in items.iter().zip(results) {
            match result {
                Ok(e) => {
                    report.media_dropped += e.dropped.len();
                    written.push(ItemEmbedding {
                        item_id: item.item_id.clone(),
                        model: model.name.clone(),
                        model_version: model.version.clone(),
                        item_version: item.version,
                        semantic_ids: codebooks
                            .as_ref()
                            .map(|c| crate::jobs::semantic_ids::assign(c, &e.vector))
                            .unwrap_or_default(),
                        vector: e.vector,
                        ts: now,
                    });
                    report.embedded += 1;
                }
                Err(e) => {
                    // A per-item failure (nothing to embed, a tokenizer error) is not retried: the item stays
                    // without a vector until a new version arrives, and never holds back the others.
                    tracing::warn!(item_id = %item.item_id, error = %e, "item not embedded");
                    report.not_embeddable += 1;
                }
            }
        }
        Ok((report, written))
    }
}
