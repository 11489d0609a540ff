//! The lookup API for rankers: item embeddings, user interests and match features over HTTP/JSON (axum).
//!
//! It answers from RocksDB in one of three ways (see [`crate::store::Access`]): inside the worker over its own
//! store (a snapshot per request), as `sailstream serve` following the worker's live store with two secondary
//! instances that take turns (one catches up every `serve.catch_up_interval_ms` while requests read the other),
//! or over a checkpoint. Every request reads one consistent state of the store. Routes, bodies and errors are
//! described in `schemas/openapi.json`.
//!
//! Bad input is always the caller's: a 4xx with a JSON `{error, code}` body, never a 5xx.

pub mod api;
pub mod client;
pub mod features;
mod lookup;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::cache::GenerationalCache;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::ingest::now_ms;
use crate::metrics::{self as m, PrometheusHandle};
use crate::store::{Access, ModelInfo, Store};
use api::ErrorBody;

/// What the handlers share.
pub struct ServeState {
    /// The store, or when following a live one, two secondary instances taking turns: requests read the
    /// current one while the other catches up, then they swap, so a request never waits for a catch-up.
    stores: Vec<Arc<Store>>,
    /// Index in `stores` of the instance new requests read.
    current: AtomicUsize,
    config: Config,
    prometheus: Option<PrometheusHandle>,
    catalog: RwLock<Catalog>,
    /// The teacher-target kinds match features read (fixed by the config).
    teacher_kinds: Vec<String>,
    /// Items decoded for match features, each with the stamp it was read under (see `lookup::match_items`).
    items: Mutex<GenerationalCache<String, Arc<lookup::CachedItem>>>,
    /// Items of match requests found in `items` with their stamp unchanged, and the others.
    item_cache_hits: metrics::Counter,
    item_cache_misses: metrics::Counter,
    /// When the store view last caught up (ms since the epoch).
    caught_up_ms: AtomicI64,
    problem: Mutex<Option<String>>,
}

/// Store-wide facts the handlers need on every request, refreshed with each catch-up.
#[derive(Debug, Default, Clone)]
struct Catalog {
    models: Vec<ModelInfo>,
    semantic_id_levels: usize,
}

impl ServeState {
    /// `stores`: one store, or two secondary instances of the same live store that take turns.
    pub fn new(
        stores: Vec<Arc<Store>>,
        config: Config,
        prometheus: Option<PrometheusHandle>,
    ) -> Result<Arc<ServeState>> {
        if stores.is_empty() || stores.len() > 2 {
            return Err(Error::Internal(format!(
                "a lookup server reads one store or two instances of it, not {}",
                stores.len()
            )));
        }
        let state = Arc::new(ServeState {
            stores,
            current: AtomicUsize::new(0),
            teacher_kinds: lookup::teacher_kinds(&config),
            items: Mutex::new(GenerationalCache::new(config.serve.item_cache_mb << 20)),
            item_cache_hits: metrics::counter!(m::SERVE_ITEM_CACHE, "outcome" => "hit"),
            item_cache_misses: metrics::counter!(m::SERVE_ITEM_CACHE, "outcome" => "miss"),
            config,
            prometheus,
            catalog: RwLock::new(Catalog::default()),
            caught_up_ms: AtomicI64::new(now_ms()),
            problem: Mutex::new(None),
        });
        state.refresh_catalog()?;
        Ok(state)
    }

    /// The store (instance) a request reads now.
    fn store(&self) -> Arc<Store> {
        self.stores[self.current.load(Ordering::Acquire)].clone()
    }

    fn refresh_catalog(&self) -> Result<()> {
        let store = self.store();
        let catalog = Catalog {
            models: store.models()?,
            semantic_id_levels: store.codebooks()?.map(|c| c.levels.len()).unwrap_or(0),
        };
        *self.catalog.write().unwrap_or_else(|p| p.into_inner()) = catalog;
        Ok(())
    }

    fn catalog(&self) -> Catalog {
        self.catalog
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// One catch-up with the writer (a no-op unless secondary), then the catalog. With two instances, the one
    /// requests are not reading catches up (requests that began on it before the last swap finish first), then
    /// it becomes the current one. Failures are kept for /readyz and the metrics; lookups go on serving the
    /// last good state.
    pub fn catch_up(&self) {
        let next = (self.current.load(Ordering::Acquire) + 1) % self.stores.len();
        let outcome = self.stores[next].catch_up().and_then(|changed| {
            // Skipped (nothing changed since this instance last caught up) also means it is up to date.
            self.current.store(next, Ordering::Release);
            if changed {
                self.refresh_catalog()
            } else {
                Ok(())
            }
        });
        let mut problem = self.problem.lock().unwrap_or_else(|p| p.into_inner());
        match outcome {
            Ok(()) => {
                self.caught_up_ms.store(now_ms(), Ordering::Relaxed);
                *problem = None;
                metrics::counter!(m::SERVE_CATCH_UPS, "outcome" => "ok").increment(1);
            }
            Err(e) => {
                tracing::warn!(error = %e, "lookup server could not catch up with the store; serving the last good state");
                *problem = Some(e.to_string());
                metrics::counter!(m::SERVE_CATCH_UPS, "outcome" => "error").increment(1);
            }
        }
        metrics::gauge!(m::SERVE_STALENESS).set(self.staleness_ms() as f64 / 1000.0);
    }

    fn staleness_ms(&self) -> u64 {
        match self.store().access() {
            // The worker's own store, or a static checkpoint: nothing to catch up with.
            Access::Primary | Access::ReadOnly => 0,
            Access::Secondary => {
                (now_ms() - self.caught_up_ms.load(Ordering::Relaxed)).max(0) as u64
            }
        }
    }
}

/// A 4xx (the caller's fault) or 5xx (ours) with a JSON body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_request",
            message: message.into(),
        }
    }

    fn from_rejection(status: StatusCode, text: String) -> ApiError {
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            _ => "invalid_request",
        };
        // Extractor rejections are all about the request; anything else would be a bug worth a 500.
        let status = if status.is_client_error() {
            status
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError {
            status,
            code,
            message: text,
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        match e {
            Error::InvalidInput { .. } => ApiError::bad_request(e.to_string()),
            other => {
                tracing::error!(error = %other, "lookup failed");
                ApiError {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    code: "internal",
                    message: other.to_string(),
                }
            }
        }
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(r: axum::extract::rejection::JsonRejection) -> ApiError {
        ApiError::from_rejection(r.status(), r.body_text())
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(r: axum::extract::rejection::QueryRejection) -> ApiError {
        ApiError::from_rejection(r.status(), r.body_text())
    }
}

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(r: axum::extract::rejection::PathRejection) -> ApiError {
        ApiError::from_rejection(r.status(), r.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = axum::Json(ErrorBody {
            error: self.message,
            code: self.code,
        });
        (self.status, body).into_response()
    }
}

/// Every route. `/v1/*` needs the bearer token when one is configured; probes and `/metrics` do not.
pub fn router(state: Arc<ServeState>) -> Router {
    let body_limit = state.config.serve.max_body_bytes;
    let v1 = Router::new()
        .route("/v1/items/{item_id}/embedding", get(lookup::item_embedding))
        .route("/v1/items/embeddings", post(lookup::item_embeddings))
        .route("/v1/users/{user_id}/interests", get(lookup::user_interests))
        .route("/v1/match", post(lookup::match_features))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .merge(v1)
        .route("/healthz", get(health))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(record_request))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: "not_found",
        message: "no such route; see schemas/openapi.json".into(),
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: "method_not_allowed",
        message: "this route does not take that method; see schemas/openapi.json".into(),
    }
}

async fn health() -> axum::Json<api::HealthBody> {
    axum::Json(api::HealthBody { status: "ok" })
}

/// Ready once the store is open and the last catch-up (if any) succeeded within ten intervals.
async fn ready(State(state): State<Arc<ServeState>>) -> Response {
    let staleness = state.staleness_ms();
    let mut problem = state
        .problem
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let limit = state.config.serve.catch_up_interval_ms.saturating_mul(10);
    if problem.is_none() && staleness > limit {
        problem = Some(format!(
            "store view is {staleness} ms behind the writer (more than {limit})"
        ));
    }
    let body = api::ReadyBody {
        ready: problem.is_none(),
        store_access: match state.store().access() {
            Access::Primary => "primary",
            Access::Secondary => "secondary",
            Access::ReadOnly => "read_only",
        },
        staleness_ms: staleness,
        models: state
            .catalog()
            .models
            .iter()
            .map(|m| format!("{} {}", m.name, m.version))
            .collect(),
        problem,
    };
    let status = if body.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics_text(State(state): State<Arc<ServeState>>) -> Response {
    match &state.prometheus {
        Some(handle) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            )],
            handle.render(),
        )
            .into_response(),
        None => ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: "metrics are disabled (metrics.enabled = false)".into(),
        }
        .into_response(),
    }
}

async fn require_token(
    State(state): State<Arc<ServeState>>,
    request: Request,
    next: Next,
) -> Response {
    let token = &state.config.serve.bearer_token;
    if !token.is_empty() {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        if !presented.is_some_and(|p| constant_time_eq(p, token.as_bytes())) {
            let mut response = ApiError {
                status: StatusCode::UNAUTHORIZED,
                code: "unauthorized",
                message: "this server needs 'Authorization: Bearer <serve.bearer_token>'".into(),
            }
            .into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    }
    next.run(request).await
}

/// Compares without an early exit, so response time does not tell how much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn record_request(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    metrics::histogram!(m::SERVE_SECONDS, "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!(m::SERVE_REQUESTS, "route" => route, "status" => response.status().as_u16().to_string())
        .increment(1);
    response
}

/// Where the lookup server reads from.
pub enum Source {
    /// The worker's own store, shared.
    Shared(Arc<Store>),
    /// Follow a live store at `store.path` as a secondary instance.
    Follow,
    /// A checkpoint or other static copy.
    Checkpoint(std::path::PathBuf),
}

/// Opens the store as `source` says, binds `serve.listen` and serves until `shutdown` resolves.
pub async fn run(
    config: Config,
    source: Source,
    prometheus: Option<PrometheusHandle>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let mut scratch: Option<ScratchDir> = None;
    let stores = match source {
        Source::Shared(store) => vec![store],
        Source::Checkpoint(path) => vec![Arc::new(Store::open_read_only(path)?)],
        Source::Follow => {
            let dir = if config.serve.secondary_path.as_os_str().is_empty() {
                let dir = ScratchDir(std::env::temp_dir().join(format!(
                    "sailstream-serve-{}-{}",
                    std::process::id(),
                    now_ms()
                )));
                let path = dir.0.clone();
                scratch = Some(dir);
                path
            } else {
                config.serve.secondary_path.clone()
            };
            // Two instances taking turns (see `ServeState`).
            let (a, b) = Store::open_secondary_pair(&config.store.path, dir)?;
            vec![Arc::new(a), Arc::new(b)]
        }
    };
    let addr: SocketAddr = config.serve_addr();
    let interval = Duration::from_millis(config.serve.catch_up_interval_ms);
    let state = ServeState::new(stores, config, prometheus)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io(format!("binding the lookup API to {addr}"), e))?;
    tracing::info!(%addr, access = ?state.store().access(), "lookup API listening");

    // Catch-ups run on a thread of their own at a lower CPU priority: beside a busy writer one takes tens of
    // milliseconds of CPU, which requests should not have to wait for on a small machine. Dropping
    // `stop_catching_up` ends the thread.
    let (stop_catching_up, stopped) = std::sync::mpsc::channel::<()>();
    let refresher = {
        let state = state.clone();
        std::thread::Builder::new()
            .name("serve-catch-up".into())
            .spawn(move || {
                lower_this_threads_priority();
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(interval)
                {
                    state.catch_up();
                }
            })
            .map_err(|e| Error::io("starting the catch-up thread", e))?
    };
    let served = axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| Error::io("serving the lookup API", e));
    drop(stop_catching_up);
    // A catch-up in progress finishes before the instances and their directory go.
    let _ = tokio::task::spawn_blocking(move || refresher.join()).await;
    drop(scratch);
    served
}

/// Nice 10 for the calling thread (Linux schedules threads individually), so that it yields to request threads
/// when the cores are busy. Best effort: on failure the thread keeps its priority.
fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on the calling thread, with no pointers involved.
    unsafe {
        let tid = libc::gettid();
        if libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10) != 0 {
            tracing::debug!("could not lower the catch-up thread's priority");
        }
    }
}

/// The secondary instances' own directory, removed when the server stops.
struct ScratchDir(std::path::PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
