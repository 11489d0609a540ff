//! Fetching an item's pictures and sounds: inline base64, `file://` or `http(s)://`, with size limits and a
//! timeout. A fetch that fails makes that modality missing (counted by reason); it never fails the item.

use std::io::Read;
use std::time::Duration;

use base64::Engine as _;

use crate::schema::MediaRef;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchProblem {
    TooLarge { limit: u64 },
    Unreadable(String),
}

impl FetchProblem {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            FetchProblem::TooLarge { .. } => "too_large",
            FetchProblem::Unreadable(_) => "unreadable",
        }
    }
}

pub struct MediaFetcher {
    http: ureq::Agent,
}

impl MediaFetcher {
    pub fn new(timeout: Duration) -> MediaFetcher {
        let http = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(true)
            .build()
            .into();
        MediaFetcher { http }
    }

    pub fn fetch(&self, media: &MediaRef, max_bytes: u64) -> Result<Vec<u8>, FetchProblem> {
        if let Some(b64) = &media.base64 {
            // base64 is 4 characters per 3 bytes: refuse before decoding what would be too large anyway.
            if (b64.len() as u64) / 4 * 3 > max_bytes + 3 {
                return Err(FetchProblem::TooLarge { limit: max_bytes });
            }
            return base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| FetchProblem::Unreadable(format!("base64: {e}")));
        }
        let uri = media.uri.as_deref().unwrap_or_default();
        if let Some(path) = uri.strip_prefix("file://") {
            let file = std::fs::File::open(path)
                .map_err(|e| FetchProblem::Unreadable(format!("{path}: {e}")))?;
            return read_limited(file, max_bytes);
        }
        if uri.starts_with("http://") || uri.starts_with("https://") {
            let mut response = self
                .http
                .get(uri)
                .call()
                .map_err(|e| FetchProblem::Unreadable(format!("{uri}: {e}")))?;
            return read_limited(response.body_mut().as_reader(), max_bytes);
        }
        Err(FetchProblem::Unreadable(format!("unsupported uri '{uri}'")))
    }
}

fn read_limited(reader: impl Read, max_bytes: u64) -> Result<Vec<u8>, FetchProblem> {
    let mut buf = Vec::new();
    reader
        .take(max_bytes + 1)
        .read_to_end(&mut buf)
        .map_err(|e| FetchProblem::Unreadable(e.to_string()))?;
    if buf.len() as u64 > max_bytes {
        return Err(FetchProblem::TooLarge { limit: max_bytes });
    }
    Ok(buf)
}
