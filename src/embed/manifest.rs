//! The model contract (`models/<name>/manifest.toml`) and its check against the ONNX graph.

use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::value::TensorElementType;
use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub model: ModelSection,
    pub output: OutputSection,
    pub text: TextSection,
    pub image: ImageSection,
    pub audio: AudioSection,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub name: String,
    pub version: String,
    pub file: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    pub name: String,
    pub dim: usize,
    pub matryoshka_prefixes: Vec<usize>,
    pub normalized: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TextSection {
    pub tokenizer: String,
    pub input_ids: String,
    pub attention_mask: String,
    pub max_tokens: usize,
    pub separator: String,
    pub templates: Vec<TextTemplate>,
}

/// One "dataset-driven pattern": which items it applies to and how their fields become one text.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TextTemplate {
    pub name: String,
    pub source: String,
    pub requires: Vec<String>,
    pub instruction: String,
    pub parts: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImageSection {
    pub pixels: String,
    pub weights: String,
    pub resize_shorter: u32,
    pub crop: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub max_frames: usize,
    pub max_bytes: u64,
    pub max_pixels: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AudioSection {
    pub blocks: String,
    pub weights: String,
    pub sample_rate: u32,
    pub n_fft: usize,
    pub hop: usize,
    pub n_mels: usize,
    pub f_min: f64,
    pub f_max: f64,
    pub log_scale: f64,
    pub log_divisor: f64,
    pub block_frames: usize,
    pub block_hop: usize,
    pub max_blocks: usize,
    pub max_bytes: u64,
    pub max_seconds: f64,
}

/// The fields a template may name.
pub const TEXT_FIELDS: [&str; 5] = ["title", "ocr", "asr", "nickname", "tags"];

impl Manifest {
    /// Reads `<dir>/manifest.toml` and checks what can be checked without the graph.
    pub fn load(dir: &Path) -> Result<Manifest> {
        let path = dir.join("manifest.toml");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Error::io(
                format!(
                    "reading model manifest {} (run scripts/setup.sh to build the default model, or set embed.model_dir)",
                    path.display()
                ),
                e,
            )
        })?;
        let manifest: Manifest = serde_path_to_error::deserialize(
            toml::Deserializer::parse(&text)
                .map_err(|e| Error::manifest(&path, "", e.to_string()))?,
        )
        .map_err(|e| Error::manifest(&path, e.path().to_string(), e.inner().to_string()))?;
        manifest.validate(&path)?;
        Ok(manifest)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |key: &str, why: String| Err(Error::manifest(path, key, why));
        if self.output.dim == 0 {
            return bad("output.dim", "must be positive".into());
        }
        for &p in &self.output.matryoshka_prefixes {
            if p == 0 || p > self.output.dim {
                return bad(
                    "output.matryoshka_prefixes",
                    format!("{p} is not in 1..={}", self.output.dim),
                );
            }
        }
        if self.text.max_tokens < 2 {
            return bad("text.max_tokens", "must be at least 2".into());
        }
        if self.text.templates.is_empty() {
            return bad("text.templates", "at least one template is needed".into());
        }
        for (i, t) in self.text.templates.iter().enumerate() {
            for field in t
                .requires
                .iter()
                .map(String::as_str)
                .chain(t.parts.iter().flat_map(|p| placeholders(p)))
            {
                if !TEXT_FIELDS.contains(&field) {
                    return bad(
                        &format!("text.templates[{i}]"),
                        format!(
                            "unknown field '{field}' (expected one of {})",
                            TEXT_FIELDS.join(", ")
                        ),
                    );
                }
            }
        }
        if self.image.crop == 0 || self.image.resize_shorter < self.image.crop {
            return bad(
                "image.resize_shorter",
                "must be at least image.crop (> 0)".into(),
            );
        }
        if self.image.std.contains(&0.0) {
            return bad("image.std", "must not contain 0".into());
        }
        let a = &self.audio;
        if a.n_fft < 2 || a.hop == 0 || a.n_mels == 0 || a.block_frames == 0 || a.block_hop == 0 {
            return bad(
                "audio",
                "n_fft >= 2 and hop, n_mels, block_frames, block_hop > 0".into(),
            );
        }
        if !(a.f_min >= 0.0 && a.f_max > a.f_min && a.f_max <= a.sample_rate as f64 / 2.0) {
            return bad(
                "audio.f_max",
                "need 0 <= f_min < f_max <= sample_rate / 2".into(),
            );
        }
        if a.log_divisor == 0.0 || a.sample_rate == 0 {
            return bad(
                "audio",
                "sample_rate and log_divisor must be non-zero".into(),
            );
        }
        Ok(())
    }

    pub fn model_path(&self, dir: &Path) -> PathBuf {
        dir.join(&self.model.file)
    }

    /// Checks the graph's inputs and output against the manifest: names, element types, ranks and the output
    /// dimension. Anything else (a renamed input, a float where int64 is expected) would fail at the first batch.
    pub fn check_session(&self, session: &Session, path: &Path) -> Result<()> {
        use TensorElementType::{Float32, Int64};
        let expected_inputs: [(&str, TensorElementType, usize); 6] = [
            (&self.text.input_ids, Int64, 2),
            (&self.text.attention_mask, Int64, 2),
            (&self.image.pixels, Float32, 4),
            (&self.image.weights, Float32, 2),
            (&self.audio.blocks, Float32, 3),
            (&self.audio.weights, Float32, 2),
        ];
        let mismatch = |what: String| Err(Error::manifest(path, "model", what));
        for (name, ty, rank) in expected_inputs {
            let Some(input) = session.inputs().iter().find(|i| i.name() == name) else {
                let have: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
                return mismatch(format!(
                    "the manifest names input '{name}', the ONNX graph has [{}]",
                    have.join(", ")
                ));
            };
            let (Some(got_ty), Some(shape)) =
                (input.dtype().tensor_type(), input.dtype().tensor_shape())
            else {
                return mismatch(format!("input '{name}' is not a tensor"));
            };
            if got_ty != ty || shape.len() != rank {
                return mismatch(format!(
                    "input '{name}': manifest expects {ty:?} of rank {rank}, the graph has {got_ty:?} of rank {}",
                    shape.len()
                ));
            }
        }
        for input in session.inputs() {
            if !expected_inputs.iter().any(|(n, _, _)| *n == input.name()) {
                return mismatch(format!(
                    "the ONNX graph has input '{}', which the manifest does not name",
                    input.name()
                ));
            }
        }
        let image_shape = session
            .inputs()
            .iter()
            .find(|i| i.name() == self.image.pixels)
            .and_then(|i| i.dtype().tensor_shape())
            .map(|s| s.to_vec())
            .unwrap_or_default();
        let crop = i64::from(self.image.crop);
        if image_shape.len() == 4
            && (image_shape[2] > 0 && image_shape[2] != crop
                || image_shape[3] > 0 && image_shape[3] != crop)
        {
            return mismatch(format!(
                "input '{}' is {image_shape:?}, the manifest crops to {crop}x{crop}",
                self.image.pixels
            ));
        }
        let Some(output) = session
            .outputs()
            .iter()
            .find(|o| o.name() == self.output.name)
        else {
            let have: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
            return mismatch(format!(
                "the manifest names output '{}', the ONNX graph has [{}]",
                self.output.name,
                have.join(", ")
            ));
        };
        match output.dtype().tensor_shape().map(|s| s.to_vec()) {
            Some(shape) if shape.len() == 2 && shape[1] == self.output.dim as i64 => Ok(()),
            Some(shape) => mismatch(format!(
                "output '{}' has shape {shape:?}, the manifest says [batch, {}]",
                self.output.name, self.output.dim
            )),
            None => mismatch(format!("output '{}' is not a tensor", self.output.name)),
        }
    }
}

/// The `{field}` names in a template part.
pub fn placeholders(part: &str) -> impl Iterator<Item = &str> {
    part.split('{')
        .skip(1)
        .filter_map(|rest| rest.split_once('}').map(|(name, _)| name))
}
