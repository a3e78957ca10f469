//! The endpoints of loader `uki`: the firmware loads the machine's unified
//! kernel image itself (UEFI HTTP boot, or PXE over TFTP by the same path),
//! and the image's sealed command line points its seed at one fixed URL.
//!
//! - `GET|HEAD /uki/{mac}.efi`: the unified kernel image of the machine's
//!   target generation; opens a boot (reused for the GET that follows the
//!   firmware's HEAD). 404 with the reason in the ledger when the target is
//!   not such an image or there is nothing to boot.
//! - `GET /config/self/{file}`: the seed of the boot whose image the
//!   machine at the requesting address was last served, with that boot's
//!   token in it (a sealed command line cannot carry one). A server that
//!   restarted since it served the image gives that open boot a new token,
//!   committed before it is sent (the old one was never sent).
//!
//! The binding rule holds: the machine is the one bound to the requesting
//! address ([`crate::binding`]); any other address gets 403 and learns
//! nothing.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio_util::io::ReaderStream;
use tracing::error;

use crate::http::boot::{serve_config, BootState};
use crate::metrics::Metrics;
use crate::netboot::{uki_mac, Netboot};

#[derive(Clone)]
pub struct UkiState {
    pub boot: BootState,
    pub netboot: Arc<Netboot>,
}

pub fn router(state: UkiState) -> Router {
    Router::new()
        .route("/uki/{file}", get(image))
        .route("/config/self/{file}", get(seed))
        .with_state(state)
}

fn text(status: StatusCode, text: &'static str) -> Response {
    (status, text).into_response()
}

async fn image(
    State(s): State<UkiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(file): Path<String>,
) -> Response {
    let Some(mac) = uki_mac(&format!("uki/{file}")) else {
        return text(StatusCode::NOT_FOUND, "expected /uki/<mac>.efi\n");
    };
    if !s.netboot.acts_for(peer.ip(), mac) {
        return text(
            StatusCode::FORBIDDEN,
            "this address is not bound to that machine\n",
        );
    }
    let chosen = match s.netboot.uki_image(mac, peer.ip()) {
        Ok(u) => u,
        Err(_) => {
            return text(
                StatusCode::NOT_FOUND,
                "no unified kernel image for this machine; see the server's events\n",
            )
        }
    };
    // The boot row is committed before the image goes out, so a restart
    // of this server finds the boot open (and `/config/self/` answers it).
    s.netboot.ledger.flush().await;
    let file = match tokio::fs::File::open(&chosen.path).await {
        Ok(f) => f,
        Err(e) => {
            error!(%mac, path = %chosen.path.display(), error = %e, "unified kernel image missing from the store");
            return text(StatusCode::INTERNAL_SERVER_ERROR, "image unavailable\n");
        }
    };
    let body = Body::from_stream(ReaderStream::with_capacity(file, 256 * 1024));
    (
        [
            (header::CONTENT_TYPE, "application/efi".to_string()),
            (header::CONTENT_LENGTH, chosen.size.to_string()),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
        body,
    )
        .into_response()
}

async fn seed(
    State(s): State<UkiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(file): Path<String>,
) -> Response {
    let Some((mac, _)) = s.boot.bindings.who(peer.ip()) else {
        Metrics::inc(&s.boot.metrics.boot_token_refused);
        return text(
            StatusCode::FORBIDDEN,
            "this address is bound to no machine\n",
        );
    };
    let plan = s
        .netboot
        .uki_token(mac)
        .await
        .and_then(|token| s.boot.inventory.plan_for_token(&token));
    match plan {
        Some(plan) => serve_config(&s.boot, &plan, &file, peer),
        None => text(
            StatusCode::NOT_FOUND,
            "no open boot of a unified kernel image for this machine\n",
        ),
    }
}
