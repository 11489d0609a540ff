//! Request and response bodies of the lookup API. `schemas/openapi.json` describes the same shapes; the
//! integration tests validate every response against it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::schema::Action;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingQuery {
    /// A Matryoshka prefix the item's model declares (renormalised), or the full dimension.
    pub dim: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsRequest {
    pub item_ids: Vec<String>,
    #[serde(default)]
    pub dim: Option<usize>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct ItemEmbeddingBody {
    pub item_id: String,
    /// False: no embedding is stored for this id (unknown item, or not embedded yet); nothing else is set.
    pub found: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item_version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dim: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vector: Option<Vec<f32>>,
    /// Coarse to fine; only when they were assigned for the same model version as the vector.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub semantic_ids: Option<Vec<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_ms: Option<i64>,
    /// Set when the item is found but the vector cannot be served as asked (its model does not declare the
    /// requested prefix); `vector` is then absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl ItemEmbeddingBody {
    pub fn missing(item_id: &str) -> ItemEmbeddingBody {
        ItemEmbeddingBody {
            item_id: item_id.to_string(),
            found: false,
            model: None,
            model_version: None,
            item_version: None,
            dim: None,
            vector: None,
            semantic_ids: None,
            updated_ms: None,
            problem: None,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct EmbeddingsResponse {
    pub items: Vec<ItemEmbeddingBody>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterestsQuery {
    /// How many recent positives to list (default `serve.recent_positives`).
    pub recent: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct InterestClusterBody {
    pub centroid: Vec<f32>,
    pub medoid_item_id: String,
    pub weight: f32,
    pub size: u32,
}

#[derive(Debug, Serialize)]
pub struct RecentPositive {
    pub item_id: String,
    pub action: Action,
    pub ts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dwell_ms: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rating: Option<f32>,
}

#[derive(Debug, Serialize)]
pub struct InterestsResponse {
    pub user_id: String,
    /// False: neither interests nor positives are stored for this user.
    pub found: bool,
    /// False: no interests computed yet (the job or the stream has not reached the user); mean and clusters are
    /// then empty.
    pub has_interests: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    /// Time of the newest positive the interests account for (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_ms: Option<i64>,
    pub positives_used: u32,
    pub mean: Vec<f32>,
    pub clusters: Vec<InterestClusterBody>,
    /// Newest first, one entry per positive event.
    pub recent_positives: Vec<RecentPositive>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchRequest {
    pub user_id: String,
    pub candidates: Vec<String>,
}

/// Per candidate; every feature is defined in the README ("Lookup API") and in `schemas/openapi.json`.
#[derive(Debug, Serialize, Clone, PartialEq, Default)]
pub struct MatchFeatures {
    pub interest_mean_cos: f32,
    pub interest_cluster_weighted_max: f32,
    pub recent_max_cos: f32,
    pub recent_mean_cos: f32,
    pub recent_top3_mean_cos: f32,
    pub recent_count_above: u32,
    pub sid_prefix_overlap: Vec<f32>,
    pub has_semantic_ids: bool,
    pub seq2item_teacher_cos: f32,
    pub has_seq2item_teacher: bool,
    /// Per ID space that both the candidate and some recent positive have a vector in.
    pub id2item_teacher_cos: BTreeMap<String, f32>,
}

#[derive(Debug, Serialize)]
pub struct CandidateBody {
    pub item_id: String,
    /// False: the candidate has no stored embedding; its features are the defaults (zeros, false, empty).
    pub found: bool,
    pub features: MatchFeatures,
}

#[derive(Debug, Serialize)]
pub struct MatchResponse {
    pub user_id: String,
    /// False: nothing is stored for the user; every user-relative feature is its default.
    pub user_found: bool,
    pub has_interests: bool,
    /// Distinct recent positive items with an embedding that the features compared against.
    pub recent_positives_used: usize,
    pub semantic_id_levels: usize,
    pub candidates: Vec<CandidateBody>,
}

#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub error: String,
    pub code: &'static str,
}

#[derive(Debug, Serialize)]
pub struct HealthBody {
    pub status: &'static str,
}

#[derive(Debug, Serialize)]
pub struct ReadyBody {
    pub ready: bool,
    /// primary (inside the worker), secondary (following a live store) or read_only (a checkpoint).
    pub store_access: &'static str,
    /// Milliseconds since the store view last caught up with the writer (0 when it reads the writer's own store).
    pub staleness_ms: u64,
    pub models: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}
