//! The endpoints switches call: ONIE's installer and network-OS zero-touch
//! provisioning. Open, like every boot endpoint (firmware cannot
//! authenticate); what a switch gets is decided per machine by
//! [`crate::netboot::Netboot`], the same as over TFTP.
//!
//! - `GET /onie/{mac}/{name}`: the URL ironboot offers in opt 114 and 125.
//! - `GET /{name}` and `GET /{prefix}/{name}` for ONIE's waterfall names
//!   (`onie-installer-<arch>-<vendor>_<machine>-r<rev>` … `onie-installer`,
//!   prefix `<MAC>` or hex IP); the machine is the `ONIE-ETH-ADDR` header's,
//!   else the prefix's.
//! - `GET /ztp/{mac}/{file}`: a provisioning file rendered from
//!   `boot-templates/ztp/` (`cumulus.sh`, `ztp.json`).
//!
//! `HEAD` answers like `GET` without the body. A 404 tells ONIE to try its
//! next name; the ledger says why. A request from an address not bound to
//! the switch it names (see [`crate::binding`]) gets 403 and changes
//! nothing.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio_util::io::ReaderStream;
use tracing::error;

use crate::boot::onie::{self, OnieHeaders};
use crate::domain::MacAddr;
use crate::http::api::ApiError;
use crate::netboot::Netboot;

pub fn router(netboot: Arc<Netboot>) -> Router {
    Router::new()
        .route("/onie/{mac}/{name}", get(onie_by_url))
        .route("/ztp/{mac}/{file}", get(ztp))
        .route("/{name}", get(waterfall))
        .route("/{prefix}/{name}", get(waterfall_prefixed))
        .with_state(netboot)
}

fn onie_headers(headers: &HeaderMap) -> OnieHeaders {
    OnieHeaders::from_pairs(
        headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?))),
    )
}

fn not_found(text: &'static str) -> Response {
    (StatusCode::NOT_FOUND, text).into_response()
}

/// The binding rule refused the request: it changes and learns nothing.
fn forbidden() -> Response {
    (
        StatusCode::FORBIDDEN,
        "this address is not bound to that switch\n",
    )
        .into_response()
}

async fn onie_by_url(
    State(nb): State<Arc<Netboot>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((mac, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let Ok(mac) = mac.parse::<MacAddr>() else {
        return not_found("expected /onie/<mac>/onie-installer\n");
    };
    if onie::installer_path(&name).is_none() {
        return not_found("expected /onie/<mac>/onie-installer\n");
    }
    installer(&nb, mac, &onie_headers(&headers), peer, &name).await
}

async fn waterfall(
    State(nb): State<Arc<Netboot>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    waterfall_for(&nb, &name, &headers, peer).await
}

async fn waterfall_prefixed(
    State(nb): State<Arc<Netboot>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((prefix, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    waterfall_for(&nb, &format!("{prefix}/{name}"), &headers, peer).await
}

async fn waterfall_for(
    nb: &Netboot,
    path: &str,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Response {
    let Some(wanted) = onie::installer_path(path) else {
        // Not ONIE's: answer as the app's fallback does for any unknown path.
        return ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such API endpoint")
            .into_response();
    };
    let onie = onie_headers(headers);
    let Some(mac) = onie.eth_addr.or(wanted.mac) else {
        return not_found("no ONIE-ETH-ADDR header and no <MAC>/ prefix: which switch?\n");
    };
    installer(nb, mac, &onie, peer, path).await
}

async fn installer(
    nb: &Netboot,
    mac: MacAddr,
    onie: &OnieHeaders,
    peer: SocketAddr,
    asked: &str,
) -> Response {
    if !nb.acts_for(peer.ip(), mac) {
        return forbidden();
    }
    let chosen = nb.onie_installer(mac, onie, peer.ip(), asked);
    let installer = match chosen {
        Ok(i) => i,
        Err(_) => return not_found("no installer for this switch; see the server's events\n"),
    };
    let file = match tokio::fs::File::open(&installer.path).await {
        Ok(f) => f,
        Err(e) => {
            error!(%mac, path = %installer.path.display(), error = %e, "installer artifact missing from the store");
            return (StatusCode::INTERNAL_SERVER_ERROR, "installer unavailable\n").into_response();
        }
    };
    let body = Body::from_stream(ReaderStream::with_capacity(file, 256 * 1024));
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, installer.size.to_string()),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
        body,
    )
        .into_response()
}

async fn ztp(
    State(nb): State<Arc<Netboot>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((mac, file)): Path<(String, String)>,
) -> Response {
    let Ok(mac) = mac.parse::<MacAddr>() else {
        return not_found("expected /ztp/<mac>/<file>\n");
    };
    if file.contains(['/', '\\']) || file.starts_with('.') {
        return not_found("no such provisioning file\n");
    }
    if !nb.acts_for(peer.ip(), mac) {
        return forbidden();
    }
    match nb.ztp_file(mac, &file, peer.ip()) {
        None => not_found("no such provisioning file\n"),
        Some(Ok(text)) => {
            let ctype = if file.ends_with(".json") {
                "application/json"
            } else {
                "text/plain; charset=utf-8"
            };
            (
                [
                    (header::CONTENT_TYPE, ctype),
                    (header::CACHE_CONTROL, "no-store"),
                ],
                text,
            )
                .into_response()
        }
        Some(Err(e)) => {
            error!(%mac, file, error = %e, "provisioning file failed to render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "provisioning file failed to render; see the server log\n",
            )
                .into_response()
        }
    }
}
