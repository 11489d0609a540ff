//! Text: the manifest's templates turn an item's fields into one string, the tokenizer turns it into ids.

use std::path::Path;

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use super::manifest::{TextSection, placeholders};
use crate::error::{Error, Result};
use crate::schema::Item;

pub struct TextPreprocessor {
    section: TextSection,
    tokenizer: Tokenizer,
}

impl TextPreprocessor {
    pub fn load(section: &TextSection, model_dir: &Path) -> Result<TextPreprocessor> {
        let path = model_dir.join(&section.tokenizer);
        let mut tokenizer = Tokenizer::from_file(&path)
            .map_err(|e| Error::manifest(&path, "text.tokenizer", e.to_string()))?;
        // Tokenizer files often carry a fixed padding (MiniLM's: 128). Batches pad to their own longest member
        // instead (see `embed::batch`), and truncation follows the manifest.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: section.max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| Error::manifest(&path, "text.max_tokens", e.to_string()))?;
        Ok(TextPreprocessor {
            section: section.clone(),
            tokenizer,
        })
    }

    /// The first matching template's name and the rendered text, or `None` when the item has no text.
    pub fn render(&self, item: &Item) -> Option<(&str, String)> {
        render(&self.section, item)
    }

    /// Token ids (special tokens included, truncated to `max_tokens`), unpadded.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| Error::Internal(format!("tokenizer failed: {e}")))?;
        Ok(encoding.get_ids().iter().map(|&id| i64::from(id)).collect())
    }
}

fn field<'a>(item: &'a Item, name: &str, tags: &'a str) -> &'a str {
    let value = match name {
        "title" => item.title.as_deref(),
        "ocr" => item.ocr.as_deref(),
        "asr" => item.asr.as_deref(),
        "nickname" => item.nickname.as_deref(),
        "tags" => Some(tags),
        _ => None,
    };
    value.map(str::trim).unwrap_or("")
}

fn source_matches(pattern: &str, source: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => source.starts_with(prefix),
        None => pattern == source,
    }
}

/// Template rendering, shared by the stage and its tests; `models/sail-lite/build.py` mirrors it in Python.
pub fn render<'a>(section: &'a TextSection, item: &Item) -> Option<(&'a str, String)> {
    let tags = item
        .tags
        .iter()
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join(", ");
    let source = item.source.as_deref().unwrap_or("");
    for template in &section.templates {
        if !source_matches(&template.source, source) {
            continue;
        }
        if template
            .requires
            .iter()
            .any(|f| field(item, f, &tags).is_empty())
        {
            continue;
        }
        let mut parts = Vec::new();
        for part in &template.parts {
            let names: Vec<&str> = placeholders(part).collect();
            if !names.iter().any(|n| !field(item, n, &tags).is_empty()) {
                continue;
            }
            let mut rendered = part.clone();
            for n in names {
                rendered = rendered.replace(&format!("{{{n}}}"), field(item, n, &tags));
            }
            parts.push(rendered);
        }
        if parts.is_empty() {
            continue;
        }
        return Some((
            template.name.as_str(),
            format!("{}{}", template.instruction, parts.join(&section.separator)),
        ));
    }
    None
}
