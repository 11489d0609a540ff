//! Input event types (`sail.items`, `sail.behaviours`, `sail.id_embeddings`) and their validation.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::check;
use super::{Action, DecodeError};
use crate::config::Limits;

/// A new or updated item. Text fields are the paper's title / OCR / ASR / author nickname / tags; any may be
/// missing. The highest `version` of an item wins; older versions are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    pub item_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author_id: Option<String>,
    /// Where the item comes from (app, surface or dataset name); picks the embedding model's text template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nickname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ocr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asr: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cover: Option<MediaRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub frames: Vec<MediaRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<MediaRef>,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    pub version: u64,
}

/// A picture or sound: exactly one of an inline base64 payload or a `file://`, `http://` or `https://` URI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
    /// Optional hint such as "image/jpeg" or "audio/wav"; decoders sniff the bytes anyway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime: Option<String>,
}

/// One user action on one item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Behaviour {
    pub user_id: String,
    pub item_id: String,
    pub action: Action,
    /// Time spent on the item, 0 when not applicable; at most 24 h.
    pub dwell_ms: u64,
    /// Milliseconds since the Unix epoch.
    pub ts: i64,
    /// Explicit rating, 0..=10 (MovieLens uses 1..=5). Required when `action` is "rate".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rating: Option<f64>,
    /// Small free-form string map (surface, request id, ...), kept with the event in the offline log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<BTreeMap<String, String>>,
}

/// A recommender-side ID embedding of an item in one named space (the paper's ID2item teacher input).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdEmbedding {
    pub item_id: String,
    pub space: String,
    pub vector: Vec<f32>,
    pub version: u64,
    pub ts: i64,
}

/// Standard alphabet with padding, as the JSON Schema's pattern says; non-zero trailing bits are tolerated
/// because a pattern cannot see them.
pub const INLINE_MEDIA: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

pub const MAX_DWELL_MS: u64 = 86_400_000;
pub const MAX_RATING: f64 = 10.0;
pub const MAX_CONTEXT_VALUE_CHARS: usize = 256;
pub const MAX_SPACE_BYTES: usize = 64;
pub const MAX_MIME_CHARS: usize = 128;
pub const MAX_URI_CHARS: usize = 2048;

impl Item {
    pub fn validate(&self, limits: &Limits) -> Result<(), DecodeError> {
        check::id("item_id", &self.item_id, limits.max_id_bytes)?;
        if let Some(author) = &self.author_id {
            check::id("author_id", author, limits.max_id_bytes)?;
        }
        if let Some(source) = &self.source {
            check::id("source", source, limits.max_id_bytes)?;
        }
        for (field, value) in [
            ("nickname", &self.nickname),
            ("title", &self.title),
            ("ocr", &self.ocr),
            ("asr", &self.asr),
        ] {
            if let Some(text) = value {
                check::text(field, text, limits.max_text_chars)?;
            }
        }
        if self.tags.len() > limits.max_tags {
            return Err(DecodeError::new(
                "tags",
                format!(
                    "too many: {} tags, more than {}",
                    self.tags.len(),
                    limits.max_tags
                ),
            ));
        }
        for (i, tag) in self.tags.iter().enumerate() {
            let field = format!("tags[{i}]");
            if tag.is_empty() {
                return Err(DecodeError::new(field, "must not be empty"));
            }
            check::text(&field, tag, limits.max_tag_chars)?;
        }
        if let Some(cover) = &self.cover {
            cover.validate("cover", limits)?;
        }
        if self.frames.len() > limits.max_frames {
            return Err(DecodeError::new(
                "frames",
                format!(
                    "too many: {} frames, more than {}",
                    self.frames.len(),
                    limits.max_frames
                ),
            ));
        }
        for (i, frame) in self.frames.iter().enumerate() {
            frame.validate(&format!("frames[{i}]"), limits)?;
        }
        if let Some(audio) = &self.audio {
            audio.validate("audio", limits)?;
        }
        if self.text_fields().next().is_none()
            && self.tags.is_empty()
            && self.cover.is_none()
            && self.frames.is_empty()
            && self.audio.is_none()
        {
            return Err(DecodeError::new(
                "item",
                "has nothing to embed: give at least one of title, ocr, asr, nickname (not blank), tags, cover, \
                 frames, audio",
            ));
        }
        check::timestamp("created_at", self.created_at)
    }

    /// The text fields that are present, in the paper's order.
    pub fn text_fields(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("title", self.title.as_deref()),
            ("ocr", self.ocr.as_deref()),
            ("asr", self.asr.as_deref()),
            ("nickname", self.nickname.as_deref()),
        ]
        .into_iter()
        .filter_map(|(name, v)| v.filter(|s| !s.trim().is_empty()).map(|s| (name, s)))
    }
}

impl MediaRef {
    pub fn validate(&self, field: &str, limits: &Limits) -> Result<(), DecodeError> {
        match (&self.uri, &self.base64) {
            (Some(_), Some(_)) | (None, None) => Err(DecodeError::new(
                field,
                "exactly one of 'uri' or 'base64' must be given",
            )),
            (Some(uri), None) => {
                let ok_scheme = ["file://", "http://", "https://"]
                    .iter()
                    .any(|s| uri.starts_with(s) && uri.len() > s.len());
                if !ok_scheme {
                    return Err(DecodeError::new(
                        format!("{field}.uri"),
                        "must be a file://, http:// or https:// URI",
                    ));
                }
                check::text(&format!("{field}.uri"), uri, MAX_URI_CHARS)
            }
            (None, Some(data)) => {
                let max_encoded = limits.max_inline_media_bytes.div_ceil(3) * 4;
                if data.len() > max_encoded {
                    return Err(DecodeError::new(
                        format!("{field}.base64"),
                        format!(
                            "too large: {} base64 characters, more than {max_encoded} ({} bytes decoded)",
                            data.len(),
                            limits.max_inline_media_bytes
                        ),
                    ));
                }
                if data.is_empty() {
                    return Err(DecodeError::new(
                        format!("{field}.base64"),
                        "must not be empty",
                    ));
                }
                INLINE_MEDIA.decode(data).map_err(|e| {
                    DecodeError::new(format!("{field}.base64"), format!("not base64: {e}"))
                })?;
                Ok(())
            }
        }?;
        if let Some(mime) = &self.mime {
            check::text(&format!("{field}.mime"), mime, MAX_MIME_CHARS)?;
        }
        Ok(())
    }
}

impl Behaviour {
    pub fn validate(&self, limits: &Limits) -> Result<(), DecodeError> {
        check::id("user_id", &self.user_id, limits.max_id_bytes)?;
        check::id("item_id", &self.item_id, limits.max_id_bytes)?;
        if self.dwell_ms > MAX_DWELL_MS {
            return Err(DecodeError::new(
                "dwell_ms",
                format!(
                    "too long: {} ms, longer than 24 h ({MAX_DWELL_MS})",
                    self.dwell_ms
                ),
            ));
        }
        check::timestamp("ts", self.ts)?;
        match self.rating {
            Some(r) if !(0.0..=MAX_RATING).contains(&r) => {
                return Err(DecodeError::new(
                    "rating",
                    format!("{r} outside 0..={MAX_RATING}"),
                ));
            }
            None if self.action == Action::Rate => {
                return Err(DecodeError::new(
                    "rating",
                    "required when action is \"rate\"",
                ));
            }
            _ => {}
        }
        if let Some(ctx) = &self.context {
            if ctx.len() > limits.max_context_entries {
                return Err(DecodeError::new(
                    "context",
                    format!(
                        "too many: {} entries, more than {}",
                        ctx.len(),
                        limits.max_context_entries
                    ),
                ));
            }
            for (k, v) in ctx {
                check::text(&format!("context.{k}"), k, MAX_SPACE_BYTES)?;
                check::text(&format!("context.{k}"), v, MAX_CONTEXT_VALUE_CHARS)?;
            }
        }
        Ok(())
    }
}

impl IdEmbedding {
    pub fn validate(
        &self,
        limits: &Limits,
        spaces: &BTreeMap<String, usize>,
    ) -> Result<(), DecodeError> {
        check::id("item_id", &self.item_id, limits.max_id_bytes)?;
        let Some(&expected) = spaces.get(&self.space) else {
            return Err(DecodeError::new(
                "space",
                format!(
                    "unknown space '{}' (configured: {})",
                    self.space,
                    spaces.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        };
        if self.vector.len() > limits.max_vector_dim {
            return Err(DecodeError::new(
                "vector",
                format!(
                    "too long: {} values, more than {}",
                    self.vector.len(),
                    limits.max_vector_dim
                ),
            ));
        }
        if self.vector.len() != expected {
            return Err(DecodeError::new(
                "vector",
                format!(
                    "wrong dimension: expected {expected} for space '{}', received {}",
                    self.space,
                    self.vector.len()
                ),
            ));
        }
        if let Some(i) = self.vector.iter().position(|v| !v.is_finite()) {
            return Err(DecodeError::new(
                format!("vector[{i}]"),
                "not a finite 32-bit float",
            ));
        }
        check::timestamp("ts", self.ts)
    }
}
