//! `ironboot artifact-cache`: a read-through cache of boot artifacts near a
//! rack. It serves `GET`/`HEAD /artifacts/sha256/{hex}` exactly as the
//! primary server does (the same handler, [`crate::http::artifacts`], over
//! an [`ImageStore`](crate::images::ImageStore) in `--dir`), fetches a miss
//! from `--upstream`, and keeps at most `--max-size` bytes, evicting the
//! least recently used. Also `GET /healthz` and `GET /metrics`; nothing else.
//!
//! Code map: [`cache`] decides per request (hit, verify, fetch, evict);
//! [`index`] is what it knows of its files (pure: LRU order, sizes, the
//! file as last verified); [`counters`] the Prometheus counters; [`size`]
//! parses `--max-size`.
//!
//! Architecture invariants:
//! - Every byte served was verified against its sha256. A fill is hashed
//!   while written and published only if it matches
//!   ([`crate::images::mirror::Mirror::fetch_digest`]). A file already on
//!   disk is hashed again before it is served unless its size, times and
//!   inode are those recorded when it was last hashed: a file a previous run
//!   left is hashed at its first request; one that does not match is
//!   deleted, counted (`corrupt`) and fetched again, never served. A change
//!   that alters none of those (bit rot below the filesystem) is not seen
//!   until the next start's first request for the file.
//! - One upstream fetch per digest at a time: concurrent misses wait for
//!   the first and are served its file.
//! - The cache connects to nothing but `--upstream`, and trusts it for
//!   availability, never for content: wrong bytes are a 502, its 404 is a
//!   404, and nothing is stored from either.
//! - After every fill the cache holds at most `--max-size` bytes; during a
//!   fill it may hold that plus the artifact being fetched. An artifact
//!   larger than `--max-size` is refused with 507 (and counted), not
//!   streamed through: a cache that cannot hold it cannot verify it.
//!
//! Deliberately absent, and what follows: no streaming of a miss (the first
//! byte waits for the whole artifact, stored and verified; a client that
//! hangs up mid-fill aborts that fill, and the next request starts again);
//! no persistence of last use (after a restart, files are ordered by when
//! they were stored: touching a file's time would change what verification
//! compares); no retry of the upstream within a request (the client's retry
//! is the retry).

mod cache;
mod counters;
mod index;
mod size;

pub use size::{parse_size, BadSize};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::http::artifacts::{Hook, ServedArtifact};
use crate::images::{Digest, ImageError};
use crate::metrics::Metrics;
use cache::{Cache, Refusal};
use counters::Counters;

/// What `ironboot artifact-cache` is told on its command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The primary server's HTTP base, `http(s)://host[:port]`: the only
    /// address the cache ever connects to.
    pub upstream: String,
    /// Where clients reach the cache.
    pub listen: SocketAddr,
    /// The cache's files (an image store's layout, created if absent).
    pub dir: PathBuf,
    /// Bytes the cache holds at most after each fill.
    pub max_size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cache directory {}: {source}", dir.display())]
    Dir { dir: PathBuf, source: ImageError },
    #[error("{0}")]
    Upstream(#[from] crate::images::mirror::MirrorError),
    #[error("reading the cache directory: {0}")]
    Scan(#[from] std::io::Error),
    #[error("serving HTTP: {0}")]
    Serve(std::io::Error),
}

/// Binds `settings.listen` first (failing fast, naming the address), then
/// [`serve`]s until `shutdown`.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> Result<(), CacheError> {
    let listener = TcpListener::bind(settings.listen)
        .await
        .map_err(|source| CacheError::Bind {
            addr: settings.listen,
            source,
        })?;
    serve(listener, &settings, shutdown).await
}

/// Opens the cache directory and serves on `listener` (`settings.listen`
/// is not read: the socket is bound already) until `shutdown`, finishing
/// requests in flight.
pub async fn serve(
    listener: TcpListener,
    settings: &Settings,
    shutdown: CancellationToken,
) -> Result<(), CacheError> {
    let cache = Arc::new(Cache::open(settings).await?);
    // The HTTP server's own counters: connections refused over its limits.
    let http = Arc::new(Metrics::default());
    tracing::info!(
        addr = %listener.local_addr().map_err(CacheError::Serve)?,
        upstream = %settings.upstream,
        dir = %settings.dir.display(),
        max_size = settings.max_size,
        artifacts = cache.artifacts(),
        bytes = cache.bytes(),
        "artifact cache serving"
    );
    let app = router(cache, http.clone());
    let limits = crate::http::HttpLimits::default();
    crate::http::run(listener, app, limits, http, shutdown)
        .await
        .map_err(CacheError::Serve)
}

#[derive(Clone)]
struct CacheState {
    cache: Arc<Cache>,
    http: Arc<Metrics>,
}

/// The artifacts route (the primary's, behind [`ensure_cached`]), health
/// and metrics.
fn router(cache: Arc<Cache>, http: Arc<Metrics>) -> Router {
    let counters = cache.counters.clone();
    let served: Hook = Arc::new(move |s: ServedArtifact| {
        Counters::add(&counters.bytes_served, s.bytes);
    });
    let artifacts = crate::http::artifacts::router(cache.images(), Some(served)).route_layer(
        axum::middleware::from_fn_with_state(cache.clone(), ensure_cached),
    );
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(CacheState { cache, http })
        .merge(artifacts)
}

/// Before the artifact handler opens the file: make sure it is there and
/// verified. A malformed digest goes straight on (the handler answers 400).
async fn ensure_cached(State(cache): State<Arc<Cache>>, request: Request, next: Next) -> Response {
    let hex = request.uri().path().rsplit('/').next().unwrap_or_default();
    let Ok(digest) = hex.parse::<Digest>() else {
        return next.run(request).await;
    };
    match cache.ensure(digest).await {
        Ok(()) => next.run(request).await,
        Err(refusal) => refused(refusal),
    }
}

/// A short text answer; local I/O errors are logged with their cause and
/// not shown to the client.
fn refused(refusal: Refusal) -> Response {
    let status = match &refusal {
        Refusal::NotFound(_) => StatusCode::NOT_FOUND,
        Refusal::TooLarge { .. } => StatusCode::INSUFFICIENT_STORAGE,
        Refusal::Upstream { .. } => StatusCode::BAD_GATEWAY,
        Refusal::Io { digest, .. } => {
            tracing::error!(error = %refusal, "artifact cache I/O");
            let body = format!("cache I/O error on artifact {digest}\n");
            return (StatusCode::INTERNAL_SERVER_ERROR, body).into_response();
        }
    };
    (status, format!("{refusal}\n")).into_response()
}

async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

async fn metrics(State(state): State<CacheState>) -> impl IntoResponse {
    use std::fmt::Write;
    let mut text = state.cache.counters.render(state.cache.bytes());
    let name = "ironboot_http_connections_refused_total";
    let refused = Metrics::get(&state.http.http_connections_refused);
    let _ = writeln!(
        text,
        "# HELP {name} HTTP connections closed at once, over the connection limits"
    );
    let _ = writeln!(text, "# TYPE {name} counter\n{name} {refused}");
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
