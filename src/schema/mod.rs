//! Event contracts: the Rust side of the JSON Schemas in `schemas/`.
//!
//! Input topics (`sail.items`, `sail.behaviours`, `sail.id_embeddings`) carry one JSON object per record.
//! [`decode`] parses and validates a record; any failure is a [`DecodeError`] naming the field and the reason,
//! which is what goes to the dead-letter topic. The JSON Schemas state the same rules for other producers;
//! `integration/schemas.rs` checks both sides agree on valid and invalid samples.

mod events;
mod outputs;

pub use events::{Behaviour, IdEmbedding, Item, MediaRef};
pub use outputs::{DeadLetter, ItemEmbedding};

use serde::{Deserialize, Serialize};

use crate::config::Config;

/// Timestamps are milliseconds since the Unix epoch, within [1990-01-01, 2100-01-01).
pub const MIN_TIMESTAMP_MS: i64 = 631_152_000_000;
pub const MAX_TIMESTAMP_MS: i64 = 4_102_444_800_000;

/// What a user did with an item. Unknown actions are refused, so that a typo upstream cannot silently turn into
/// "not positive".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Impression,
    Click,
    Play,
    Finish,
    Like,
    Share,
    Comment,
    Follow,
    Favorite,
    Skip,
    Dislike,
    Rate,
}

impl Action {
    pub const ALL: [Action; 12] = [
        Action::Impression,
        Action::Click,
        Action::Play,
        Action::Finish,
        Action::Like,
        Action::Share,
        Action::Comment,
        Action::Follow,
        Action::Favorite,
        Action::Skip,
        Action::Dislike,
        Action::Rate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Impression => "impression",
            Action::Click => "click",
            Action::Play => "play",
            Action::Finish => "finish",
            Action::Like => "like",
            Action::Share => "share",
            Action::Comment => "comment",
            Action::Follow => "follow",
            Action::Favorite => "favorite",
            Action::Skip => "skip",
            Action::Dislike => "dislike",
            Action::Rate => "rate",
        }
    }

    /// Stable one-byte code for the binary store encoding. Never reorder.
    pub fn code(self) -> u8 {
        Action::ALL.iter().position(|a| *a == self).expect("in ALL") as u8
    }

    pub fn from_code(code: u8) -> Option<Action> {
        Action::ALL.get(code as usize).copied()
    }
}

/// Which contract a record must satisfy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InputKind {
    Items,
    Behaviours,
    IdEmbeddings,
}

impl InputKind {
    /// Maps a topic name to its contract using the configured topic names.
    pub fn for_topic(config: &Config, topic: &str) -> Option<InputKind> {
        let t = &config.kafka.topics;
        if topic == t.items {
            Some(InputKind::Items)
        } else if topic == t.behaviours {
            Some(InputKind::Behaviours)
        } else if topic == t.id_embeddings {
            Some(InputKind::IdEmbeddings)
        } else {
            None
        }
    }
}

/// A decoded, validated input event.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Item(Box<Item>),
    Behaviour(Behaviour),
    IdEmbedding(IdEmbedding),
}

/// Why a record was refused: `field` is a JSON path such as `tags[3]` (or `record` for the whole payload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct DecodeError {
    pub field: String,
    pub reason: String,
}

impl DecodeError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        DecodeError {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// A short, fixed label for metrics (the full reason is in the dead letter).
    pub fn category(&self) -> &'static str {
        let r = self.reason.as_str();
        if r.starts_with("too ") || r.contains("longer than") || r.contains("more than") {
            "oversized"
        } else if r.starts_with("not valid JSON") || r.starts_with("not UTF-8") {
            "malformed"
        } else {
            "invalid"
        }
    }
}

/// Parses and validates one record of the given contract.
pub fn decode(kind: InputKind, payload: &[u8], config: &Config) -> Result<Event, DecodeError> {
    let limits = &config.limits;
    if payload.len() > limits.max_record_bytes {
        return Err(DecodeError::new(
            "record",
            format!(
                "too large: {} bytes, more than limits.max_record_bytes = {}",
                payload.len(),
                limits.max_record_bytes
            ),
        ));
    }
    match kind {
        InputKind::Items => {
            let item: Item = parse_json(payload)?;
            item.validate(limits)?;
            Ok(Event::Item(Box::new(item)))
        }
        InputKind::Behaviours => {
            let b: Behaviour = parse_json(payload)?;
            b.validate(limits)?;
            Ok(Event::Behaviour(b))
        }
        InputKind::IdEmbeddings => {
            let e: IdEmbedding = parse_json(payload)?;
            e.validate(limits, &config.id_spaces)?;
            Ok(Event::IdEmbedding(e))
        }
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, DecodeError> {
    if std::str::from_utf8(payload).is_err() {
        return Err(DecodeError::new("record", "not UTF-8 text"));
    }
    // The fast path parses directly; only a record that fails is parsed again to find the failing field's path.
    if let Ok(value) = serde_json::from_slice(payload) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(payload);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() || inner.is_io() {
            return DecodeError::new("record", format!("not valid JSON: {inner}"));
        }
        let field = if matches!(path.as_str(), "." | "?" | "") {
            "record".to_string()
        } else {
            path
        };
        DecodeError::new(field, inner.to_string())
    })?;
    de.end()
        .map_err(|e| DecodeError::new("record", format!("not valid JSON: {e}")))?;
    Ok(value)
}

/// Shared field checks, used by every contract so the wording is the same everywhere.
pub(crate) mod check {
    use super::{DecodeError, MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS};

    pub fn id(field: &str, value: &str, max_bytes: usize) -> Result<(), DecodeError> {
        if value.is_empty() {
            return Err(DecodeError::new(field, "must not be empty"));
        }
        if value.len() > max_bytes {
            return Err(DecodeError::new(
                field,
                format!("too long: {} bytes, longer than {max_bytes}", value.len()),
            ));
        }
        if !value.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(DecodeError::new(
                field,
                "ids are printable ASCII without spaces",
            ));
        }
        Ok(())
    }

    pub fn text(field: &str, value: &str, max_chars: usize) -> Result<(), DecodeError> {
        let n = value.chars().count();
        if n > max_chars {
            return Err(DecodeError::new(
                field,
                format!("too long: {n} characters, longer than {max_chars}"),
            ));
        }
        Ok(())
    }

    pub fn timestamp(field: &str, ms: i64) -> Result<(), DecodeError> {
        if (MIN_TIMESTAMP_MS..MAX_TIMESTAMP_MS).contains(&ms) {
            return Ok(());
        }
        let hint = if (MIN_TIMESTAMP_MS / 1000..MAX_TIMESTAMP_MS / 1000).contains(&ms) {
            " (looks like seconds; send milliseconds since the Unix epoch)"
        } else {
            ""
        };
        Err(DecodeError::new(
            field,
            format!("timestamp {ms} outside 1990-01-01..2100-01-01 in milliseconds{hint}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::default()
    }

    #[test]
    fn action_codes_round_trip() {
        for a in Action::ALL {
            assert_eq!(Action::from_code(a.code()), Some(a));
            let json = serde_json::to_string(&a).unwrap();
            assert_eq!(json, format!("\"{}\"", a.as_str()));
        }
        assert_eq!(Action::from_code(200), None);
    }

    #[test]
    fn errors_name_the_field() {
        let c = cfg();
        let cases: &[(InputKind, &str, &str, &str)] = &[
            (
                InputKind::Behaviours,
                r#"{"user_id":"u","item_id":"i","action":"teleport","dwell_ms":0,"ts":1700000000000}"#,
                "action",
                "unknown variant",
            ),
            (
                InputKind::Behaviours,
                r#"{"user_id":"u","item_id":"i","action":"play","dwell_ms":0,"ts":1700000000}"#,
                "ts",
                "looks like seconds",
            ),
            (
                InputKind::Items,
                r#"{"item_id":"i","created_at":1700000000000,"version":1,"tags":["a",3]}"#,
                "tags[1]",
                "invalid type",
            ),
            (
                InputKind::Items,
                r#"{"item_id":"i","created_at":1700000000000,"version":1,"colour":"red"}"#,
                "colour",
                "unknown field",
            ),
            (
                InputKind::Items,
                r#"{"item_id":"i","#,
                "record",
                "not valid JSON",
            ),
            (
                InputKind::IdEmbeddings,
                r#"{"item_id":"i","space":"gid","vector":[1,2,3],"version":1,"ts":1700000000000}"#,
                "vector",
                "dimension",
            ),
            (
                InputKind::IdEmbeddings,
                r#"{"item_id":"i","space":"nope","vector":[1],"version":1,"ts":1700000000000}"#,
                "space",
                "unknown",
            ),
        ];
        for (kind, json, field, reason) in cases {
            let err = decode(*kind, json.as_bytes(), &c).unwrap_err();
            assert_eq!(err.field, *field, "{json}: {err}");
            assert!(err.reason.contains(reason), "{json}: {err}");
        }
    }

    #[test]
    fn not_utf8_is_malformed() {
        let err = decode(InputKind::Items, &[0xff, 0xfe, b'{'], &cfg()).unwrap_err();
        assert_eq!(err.category(), "malformed");
    }

    #[test]
    fn oversized_record_is_refused_before_parsing() {
        let mut c = cfg();
        c.limits.max_record_bytes = 1024;
        let big = format!(
            r#"{{"item_id":"i","created_at":1700000000000,"version":1,"title":"{}"}}"#,
            "x".repeat(2000)
        );
        let err = decode(InputKind::Items, big.as_bytes(), &c).unwrap_err();
        assert_eq!(err.field, "record");
        assert_eq!(err.category(), "oversized");
    }
}
