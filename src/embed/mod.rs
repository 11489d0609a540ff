//! Embed: items -> one omni-modal vector each, through the model a manifest describes.
//!
//! [`Embedder`] owns the model: the manifest (checked against the graph at load), the text, image and audio
//! preprocessing, and one ONNX Runtime session on the chosen device. [`Embedder::embed`] prepares items on a CPU
//! pool, sorts them by token count, cuts batches of `embed.batch_size` and runs each as one inference call with
//! the batch padded only to its longest text. [`stage::EmbedStage`] connects it to the store (pending item
//! versions, backfills, model upgrades) and to the `sail.item_embeddings` topic.

pub mod audio;
pub mod image;
pub mod manifest;
pub mod media;
pub mod stage;
pub mod text;
mod vector;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::Tensor;
use rayon::prelude::*;

pub use manifest::Manifest;
pub use vector::{cosine, dot, dot_products, mean_direction, normalize, normalized, unit_rows};

use crate::config::{Config, Device};
use crate::error::{Error, Result};
use crate::metrics as m;
use crate::schema::Item;

/// Named input tensors of one inference call.
pub type Inputs = Vec<(String, ort::session::SessionInputValue<'static>)>;

/// What preprocessing made of one item, ready to be batched.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    pub item_id: String,
    pub template: Option<String>,
    pub tokens: Vec<i64>,
    /// `[3, crop, crop]` each, cover first.
    pub frames: Vec<Vec<f32>>,
    /// `[block_frames, n_mels]` each.
    pub audio_blocks: Vec<Vec<f32>>,
    /// (modality, reason) of every picture or sound that had to be left out.
    pub dropped: Vec<(&'static str, &'static str)>,
}

impl Prepared {
    pub fn has_content(&self) -> bool {
        !self.tokens.is_empty() || !self.frames.is_empty() || !self.audio_blocks.is_empty()
    }
}

/// One item's vector and how it was made.
#[derive(Debug, Clone)]
pub struct Embedded {
    pub item_id: String,
    pub vector: Vec<f32>,
    pub template: Option<String>,
    pub frames: usize,
    pub audio_blocks: usize,
    pub dropped: Vec<(&'static str, &'static str)>,
}

pub struct Embedder {
    manifest: Manifest,
    dir: PathBuf,
    text: text::TextPreprocessor,
    audio: audio::AudioPreprocessor,
    media: media::MediaFetcher,
    session: Session,
    device: &'static str,
    pool: rayon::ThreadPool,
    batch_size: usize,
}

/// `embed.model_dir`, or the default model the set-up script builds.
pub fn model_dir(config: &Config) -> PathBuf {
    if !config.embed.model_dir.is_empty() {
        return PathBuf::from(&config.embed.model_dir);
    }
    crate::runtime::install_root()
        .join("models")
        .join(format!("sail-lite-{DEFAULT_MODEL_VERSION}"))
}

/// The version of `models/sail-lite/manifest.toml` this build's defaults point at.
pub const DEFAULT_MODEL_VERSION: &str = "0.1.0";

impl Embedder {
    /// Loads the model `config.embed` names on the device it asks for.
    pub fn load(config: &Config) -> Result<Embedder> {
        Embedder::load_from(&model_dir(config), config)
    }

    pub fn load_from(dir: &Path, config: &Config) -> Result<Embedder> {
        let manifest = Manifest::load(dir)?;
        let model_path = manifest.model_path(dir);
        if !model_path.exists() {
            return Err(Error::manifest(
                &dir.join("manifest.toml"),
                "model.file",
                format!("{} does not exist", model_path.display()),
            ));
        }
        let (session, device) = open_session(&model_path, config)?;
        manifest.check_session(&session, &dir.join("manifest.toml"))?;
        metrics::gauge!(m::EMBED_DEVICE, "device" => device).set(1.0);
        let threads = match config.embed.preprocess_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("embed-prep-{i}"))
            .build()
            .map_err(|e| Error::Internal(format!("preprocessing pool: {e}")))?;
        tracing::info!(model = %manifest.model.name, version = %manifest.model.version, device,
            dir = %dir.display(), preprocess_threads = threads, "embedding model loaded");
        Ok(Embedder {
            text: text::TextPreprocessor::load(&manifest.text, dir)?,
            audio: audio::AudioPreprocessor::new(&manifest.audio),
            media: media::MediaFetcher::new(Duration::from_millis(config.embed.fetch_timeout_ms)),
            manifest,
            dir: dir.to_path_buf(),
            session,
            device,
            pool,
            batch_size: config.embed.batch_size,
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// "cuda" or "cpu": where inference actually runs.
    pub fn device(&self) -> &'static str {
        self.device
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    pub fn set_batch_size(&mut self, n: usize) {
        self.batch_size = n.max(1);
    }

    /// Text, pictures and sound of one item, preprocessed. Media that cannot be fetched or decoded is left out
    /// and listed in `dropped`; the item is embeddable as long as something is left.
    pub fn prepare(&self, item: &Item) -> Result<Prepared> {
        let mut out = Prepared {
            item_id: item.item_id.clone(),
            ..Default::default()
        };
        if let Some((template, text)) = self.text.render(item) {
            out.template = Some(template.to_string());
            out.tokens = self.text.encode(&text)?;
        }
        let img = &self.manifest.image;
        for media in item.cover.iter().chain(&item.frames).take(img.max_frames) {
            let picture = self
                .media
                .fetch(media, img.max_bytes)
                .map_err(|p| p.reason())
                .and_then(|bytes| {
                    image::preprocess(&bytes, img).map_err(|p| match p {
                        image::ImageProblem::TooLarge(_) => "too_large",
                        image::ImageProblem::Undecodable(_) => "undecodable",
                    })
                });
            match picture {
                Ok(t) => out.frames.push(t),
                Err(reason) => out.dropped.push(("image", reason)),
            }
        }
        if let Some(media) = &item.audio {
            let blocks = self
                .media
                .fetch(media, self.manifest.audio.max_bytes)
                .map_err(|p| p.reason())
                .and_then(|bytes| self.audio.blocks(&bytes).map_err(|_| "undecodable"));
            match blocks {
                Ok(b) => out.audio_blocks = b,
                Err(reason) => out.dropped.push(("audio", reason)),
            }
        }
        for (modality, reason) in &out.dropped {
            metrics::counter!(m::MEDIA_DROPPED, "modality" => *modality, "reason" => *reason)
                .increment(1);
        }
        Ok(out)
    }

    /// Embeds items (any number): preprocessing in parallel, then inference in length-sorted batches. The result
    /// is in input order; an item with nothing to embed gets [`Error::NotEmbeddable`].
    pub fn embed(&mut self, items: &[Item]) -> Result<Vec<Result<Embedded>>> {
        let started = Instant::now();
        let prepared: Vec<Result<Prepared>> = self
            .pool
            .install(|| items.par_iter().map(|it| self.prepare(it)).collect());
        metrics::histogram!(m::EMBED_PREPROCESS_SECONDS).record(started.elapsed().as_secs_f64());
        let mut results: Vec<Option<Result<Embedded>>> = Vec::with_capacity(items.len());
        let mut ready: Vec<(usize, Prepared)> = Vec::new();
        for (i, p) in prepared.into_iter().enumerate() {
            match p {
                Ok(p) if p.has_content() => {
                    results.push(None);
                    ready.push((i, p));
                }
                Ok(p) => {
                    metrics::counter!(m::ITEMS_NOT_EMBEDDABLE, "reason" => "no_modality")
                        .increment(1);
                    let problem = if p.dropped.is_empty() {
                        "it has no text, picture or audio".to_string()
                    } else {
                        let what: Vec<String> =
                            p.dropped.iter().map(|(m, r)| format!("{m}: {r}")).collect();
                        format!(
                            "no text, and its media could not be used ({})",
                            what.join(", ")
                        )
                    };
                    results.push(Some(Err(Error::NotEmbeddable {
                        item_id: p.item_id,
                        problem,
                    })));
                }
                Err(e) => {
                    metrics::counter!(m::ITEMS_NOT_EMBEDDABLE, "reason" => "preprocess_error")
                        .increment(1);
                    results.push(Some(Err(e)));
                }
            }
        }
        // Similar lengths together: padding to the longest in a batch then costs little.
        ready.sort_by_key(|(_, p)| p.tokens.len());
        for chunk in ready.chunks(self.batch_size) {
            let batch: Vec<&Prepared> = chunk.iter().map(|(_, p)| p).collect();
            let vectors = self.run(&batch)?;
            for ((i, p), vector) in chunk.iter().zip(vectors) {
                results[*i] = Some(Ok(Embedded {
                    item_id: p.item_id.clone(),
                    vector,
                    template: p.template.clone(),
                    frames: p.frames.len(),
                    audio_blocks: p.audio_blocks.len(),
                    dropped: p.dropped.clone(),
                }));
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.expect("every item has a result"))
            .collect())
    }

    /// One inference call over prepared items; returns one vector per item.
    pub fn run(&mut self, batch: &[&Prepared]) -> Result<Vec<Vec<f32>>> {
        let inputs = self.tensors(batch)?;
        self.infer(inputs, batch.len())
    }

    /// One inference call on ready-made inputs (from [`tensors`](Self::tensors)) for `items` items.
    pub fn infer(&mut self, inputs: Inputs, items: usize) -> Result<Vec<Vec<f32>>> {
        let started = Instant::now();
        let outputs = self
            .session
            .run(inputs)
            .map_err(|e| Error::ort("running the embedding model", e))?;
        metrics::histogram!(m::EMBED_INFERENCE_SECONDS).record(started.elapsed().as_secs_f64());
        metrics::histogram!(m::EMBED_BATCH_ITEMS).record(items as f64);
        let (shape, data) = outputs[self.manifest.output.name.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(|e| Error::ort("reading the embedding output", e))?;
        let dim = self.manifest.output.dim;
        if shape.len() != 2 || shape[0] as usize != items || shape[1] as usize != dim {
            return Err(Error::ort(
                "reading the embedding output",
                format!("shape {:?}, expected [{items}, {dim}]", &shape[..]),
            ));
        }
        Ok(data
            .chunks_exact(dim)
            .map(|v| {
                let mut v = v.to_vec();
                if !self.manifest.output.normalized {
                    normalize(&mut v);
                }
                v
            })
            .collect())
    }

    /// The graph's six inputs for a batch: token ids and mask padded to the longest text, all frames and audio
    /// blocks of the batch stacked, and per-item weight rows that average an item's own frames / blocks.
    pub fn tensors(&self, batch: &[&Prepared]) -> Result<Inputs> {
        let b = batch.len();
        let len = batch
            .iter()
            .map(|p| p.tokens.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let mut ids = vec![0i64; b * len];
        let mut mask = vec![0i64; b * len];
        for (i, p) in batch.iter().enumerate() {
            ids[i * len..i * len + p.tokens.len()].copy_from_slice(&p.tokens);
            mask[i * len..i * len + p.tokens.len()].fill(1);
        }
        let (frames, frame_weights) = stack(batch, |p| &p.frames);
        let (blocks, block_weights) = stack(batch, |p| &p.audio_blocks);
        let c = self.manifest.image.crop as usize;
        let a = &self.manifest.audio;
        let n_frames = frame_weights.len() / b.max(1);
        let n_blocks = block_weights.len() / b.max(1);
        let t = |e: ort::Error| Error::ort("building input tensors", e);
        let ids_name = &self.manifest.text.input_ids;
        Ok(vec![
            (
                ids_name.clone(),
                Tensor::from_array((vec![b, len], ids)).map_err(t)?.into(),
            ),
            (
                self.manifest.text.attention_mask.clone(),
                Tensor::from_array((vec![b, len], mask)).map_err(t)?.into(),
            ),
            (
                self.manifest.image.pixels.clone(),
                Tensor::from_array((vec![n_frames, 3, c, c], frames))
                    .map_err(t)?
                    .into(),
            ),
            (
                self.manifest.image.weights.clone(),
                Tensor::from_array((vec![b, n_frames], frame_weights))
                    .map_err(t)?
                    .into(),
            ),
            (
                a.blocks.clone(),
                Tensor::from_array((vec![n_blocks, a.block_frames, a.n_mels], blocks))
                    .map_err(t)?
                    .into(),
            ),
            (
                a.weights.clone(),
                Tensor::from_array((vec![b, n_blocks], block_weights))
                    .map_err(t)?
                    .into(),
            ),
        ])
    }
}

/// Concatenates every item's pieces and builds the `[items, pieces]` averaging matrix.
fn stack<'a>(
    batch: &[&'a Prepared],
    pieces: impl Fn(&'a Prepared) -> &'a Vec<Vec<f32>>,
) -> (Vec<f32>, Vec<f32>) {
    let total: usize = batch.iter().map(|p| pieces(p).len()).sum();
    let mut data = Vec::new();
    let mut weights = vec![0f32; batch.len() * total];
    let mut j = 0;
    for (i, p) in batch.iter().enumerate() {
        let own = pieces(p);
        for piece in own {
            data.extend_from_slice(piece);
            weights[i * total + j] = 1.0 / own.len() as f32;
            j += 1;
        }
    }
    (data, weights)
}

/// Builds the session on the configured device. `cuda` fails loudly when the provider cannot load; `auto`
/// falls back to CPU and says so.
fn open_session(model: &Path, config: &Config) -> Result<(Session, &'static str)> {
    let env = crate::runtime::environment(config)?;
    let builder = || -> Result<ort::session::builder::SessionBuilder> {
        let mut b = Session::builder(env)
            .map_err(|e| Error::ort("creating a session builder", e))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| Error::ort("setting the optimisation level", e))?;
        if config.embed.inference_threads > 0 {
            b = b
                .with_intra_threads(config.embed.inference_threads)
                .map_err(|e| Error::ort("setting intra-op threads", e))?;
        }
        Ok(b)
    };
    let commit = |mut b: ort::session::builder::SessionBuilder| {
        b.commit_from_file(model)
            .map_err(|e| Error::ort(format!("loading {}", model.display()), e))
    };
    match config.embed.device {
        Device::Cpu => Ok((commit(builder()?)?, "cpu")),
        Device::Cuda => Ok((commit(with_cuda(builder()?)?)?, "cuda")),
        Device::Auto => match with_cuda(builder()?).and_then(commit) {
            Ok(session) => {
                tracing::info!("embed.device = auto: running on CUDA");
                Ok((session, "cuda"))
            }
            Err(e) => {
                tracing::warn!(reason = %e, "embed.device = auto: CUDA unavailable, running on CPU");
                Ok((commit(builder()?)?, "cpu"))
            }
        },
    }
}

#[cfg(feature = "cuda")]
fn with_cuda(
    b: ort::session::builder::SessionBuilder,
) -> Result<ort::session::builder::SessionBuilder> {
    use ort::ep::ExecutionProvider as _;
    b.with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])
        .map_err(|e| Error::ort("registering the CUDA execution provider (is libonnxruntime_providers_cuda.so beside libonnxruntime.so, and are the CUDA libraries on LD_LIBRARY_PATH?)", e))
}

#[cfg(not(feature = "cuda"))]
fn with_cuda(
    _: ort::session::builder::SessionBuilder,
) -> Result<ort::session::builder::SessionBuilder> {
    Err(Error::config(
        "embed.device",
        "this build has no CUDA support: rebuild with `cargo build --release --features cuda`, or use \"cpu\"/\"auto\"",
    ))
}
