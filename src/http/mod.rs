//! HTTP: health, metrics, and the iPXE binaries for UEFI HTTP boot.
//!
//! Each resource has its own `router()`; this module merges them. Boot
//! endpoints for machines (`/boot.ipxe`, scripts, images) arrive with the
//! live-boot work; the REST API under `/api/v1/` after it.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::services::ServeDir;

use crate::metrics::Metrics;

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    /// Names of the services that are bound and running (for `/healthz`).
    pub services: Arc<Vec<String>>,
}

/// The whole HTTP surface. `ipxe_dir` is served under `/ipxe/` so UEFI HTTP
/// boot clients can load the iPXE EFI binary by URL.
pub fn router(state: HttpState, ipxe_dir: Option<PathBuf>) -> Router {
    let mut app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state);
    if let Some(dir) = ipxe_dir {
        app = app.nest_service(
            "/ipxe",
            ServeDir::new(dir).append_index_html_on_directories(false),
        );
    }
    app
}

/// Liveness: answers once every service is bound (the server binds all
/// sockets before it starts answering HTTP).
async fn healthz(State(state): State<HttpState>) -> impl IntoResponse {
    Json(json!({ "status": "ok", "services": *state.services }))
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// Serves until `shutdown`, then finishes in-flight requests.
pub async fn run(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
