//! Records sailstream produces: `sail.item_embeddings` and `sail.dlq`.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::DecodeError;

/// One item's embedding, keyed by item_id on a compacted topic: the latest record per item is its current vector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemEmbedding {
    pub item_id: String,
    /// Model name and version as in its manifest; vectors of different versions are not comparable.
    pub model: String,
    pub model_version: String,
    /// The item version the vector was computed from.
    pub item_version: u64,
    /// L2-normalised; Matryoshka prefixes (renormalised) are valid where the manifest says so.
    pub vector: Vec<f32>,
    /// Semantic-ID code path, coarse to fine, once codebooks exist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub semantic_ids: Vec<u32>,
    /// Milliseconds since the Unix epoch.
    pub ts: i64,
}

/// A record that could not be used, with everything needed to replay or inspect it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Original key and payload bytes, base64 (they need not be UTF-8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_base64: Option<String>,
    pub payload_base64: String,
    pub error: DecodeError,
    /// Short fixed label: malformed, oversized or invalid.
    pub category: String,
    /// When it was dead-lettered, milliseconds since the Unix epoch.
    pub ts: i64,
}

impl DeadLetter {
    pub fn new(
        topic: &str,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: &[u8],
        error: DecodeError,
        now_ms: i64,
    ) -> Self {
        let b64 = base64::engine::general_purpose::STANDARD;
        DeadLetter {
            topic: topic.to_string(),
            partition,
            offset,
            key_base64: key.map(|k| b64.encode(k)),
            payload_base64: b64.encode(payload),
            category: error.category().to_string(),
            error,
            ts: now_ms,
        }
    }

    pub fn payload(&self) -> Result<Vec<u8>, base64::DecodeError> {
        base64::engine::general_purpose::STANDARD.decode(&self.payload_base64)
    }
}
