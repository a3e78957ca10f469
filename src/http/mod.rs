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
pub mod ui;
pub mod uki;

pub use crate::config::HttpLimits;

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
    /// For gauges read at scrape time: leases in use per subnet.
    pub dhcp: Option<Arc<crate::dhcp::Dhcp>>,
    /// For boot counts by stream, generation and result (SQLite is their
    /// source of truth: they survive restarts).
    pub store: Option<crate::store::Store>,
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
    let mut text = state.metrics.render();
    if let Some(dhcp) = &state.dhcp {
        crate::metrics::write_gauge(
            &mut text,
            "ironboot_dhcp_leases_in_use",
            "Addresses bound to a client and not expired, per configured subnet",
            &leases_in_use(dhcp, crate::ledger::now_ms()),
        );
    }
    if let Some(store) = &state.store {
        match boot_counts(store).await {
            Ok(samples) => crate::metrics::write_counter(
                &mut text,
                "ironboot_boots_total",
                "Boots by stream, generation and result: started (a script served it), confirmed, failed",
                &samples,
            ),
            Err(e) => tracing::error!(error = %e, "boot counts for /metrics"),
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

type Samples = Vec<(Vec<(&'static str, String)>, u64)>;

fn leases_in_use(dhcp: &crate::dhcp::Dhcp, now: i64) -> Samples {
    let leases = dhcp.clients().leases();
    dhcp.settings()
        .subnets
        .iter()
        .map(|s| {
            let n = leases
                .iter()
                .filter(|l| {
                    l.state == crate::domain::lease::State::Bound
                        && l.expires_at > now
                        && s.network.contains(&l.ip)
                })
                .count();
            (vec![("subnet", s.network.to_string())], n as u64)
        })
        .collect()
}

async fn boot_counts(store: &crate::store::Store) -> Result<Samples, crate::store::StoreError> {
    let counts = store.boot_counts().await?;
    let mut samples = Vec::new();
    for ((stream, generation), c) in counts {
        let by_result = [
            ("started", c.started),
            ("confirmed", c.confirmed),
            ("failed", c.failed),
        ];
        for (result, n) in by_result {
            samples.push((
                vec![
                    ("stream", stream.clone()),
                    ("generation", generation.to_string()),
                    ("result", result.to_string()),
                ],
                n,
            ));
        }
    }
    Ok(samples)
}

/// Serves until `shutdown`, then finishes in-flight requests (up to 10 s).
/// Handlers see the peer address (`ConnectInfo`): machines are known by
/// where they call from as well as by what they say.
///
/// Its own accept loop rather than `axum::serve`, for the limits: a
/// connection over `max_connections` in all or `max_connections_per_address`
/// from its address is closed at once (and counted), and hyper reads each
/// request's headers under `header_read_timeout`, so half-sent requests
/// cannot hold every descriptor.
pub async fn run(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    metrics: Arc<crate::metrics::Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use axum::extract::ConnectInfo;
    let per_address = crate::per_address::PerAddress::default();
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it
                    // was accepted: wait a moment, never spin.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let slot = (connections.len() < limits.max_connections)
            .then(|| per_address.take(peer.ip(), limits.max_connections_per_address))
            .flatten();
        let Some(slot) = slot else {
            crate::metrics::Metrics::inc(&metrics.http_connections_refused);
            tracing::debug!(%peer, "HTTP connection over the limits: closed");
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(
            app.clone().layer(axum::Extension(ConnectInfo(peer))),
        );
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            let connection = builder
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}
