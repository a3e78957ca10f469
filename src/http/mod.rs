//! HTTP: what machines fetch while they boot, the REST API, health and
//! metrics.
//!
//! Each resource has its own module and `router()`; this module merges them:
//! [`boot`] (scripts, configs, phone home), `artifacts` (content-addressed
//! boot images), [`api`] (`/api/v1/`), and here `/healthz`, `/metrics` and
//! `/ipxe/` (the iPXE binaries, for UEFI HTTP boot).

pub mod api;
pub mod artifacts;
pub mod boot;
pub mod switch;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::bootfiles::Bootfiles;
use crate::metrics::Metrics;

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    /// Names of the services that are bound and running (for `/healthz`).
    pub services: Arc<Vec<String>>,
}

/// Health, metrics, and `/ipxe/<name>`: the configured boot loaders, so
/// UEFI HTTP boot clients can load the iPXE EFI binary by URL (the same
/// bytes TFTP serves for that name; nothing else from the directory).
pub fn router(state: HttpState, bootfiles: Arc<Bootfiles>) -> Router {
    let files = Router::new()
        .route("/ipxe/{*name}", get(bootfile))
        .with_state(bootfiles);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state)
        .merge(files)
}

async fn bootfile(State(files): State<Arc<Bootfiles>>, Path(name): Path<String>) -> Response {
    match files.get(&name) {
        Some(bytes) => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            Body::from(bytes::Bytes::from_owner(bytes)),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such boot file\n").into_response(),
    }
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

/// Serves until `shutdown`, then finishes in-flight requests. Handlers see
/// the peer address (`ConnectInfo`): machines are known by where they call
/// from as well as by what they say.
pub async fn run(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
}
