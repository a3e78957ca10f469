//! The endpoints machines call while they boot. Open (firmware cannot
//! authenticate), except that a confirmation needs its per-boot token.
//!
//! - `GET /boot.ipxe`: the static first script (rendered once at start).
//! - `GET /boot/{mac}.ipxe?uuid=…&serial=…&buildarch=…&platform=…`: the
//!   per-machine script; opens a boot with its own token.
//! - `GET /config/{token}/{file}`: a file from `boot-templates/config/`,
//!   rendered at request time for that boot (the NoCloud seed directory).
//! - `POST /phone-home/{token}`: the booted OS confirms (cloud-init's
//!   `phone_home` module posts a form; the body is not needed, but a
//!   rollout's health gate can require one of its fields, e.g.
//!   `checks=passed`).
//! - `POST /boot-failure/{token}`: the initrd says the boot failed
//!   (`reason=verity|root`, `detail=…`): counted by the watchdog at once.
//!
//! The binding rule ([`crate::binding`]) holds on every one of them: a
//! request acts for MAC M only from an address bound to M. An unbound script
//! request gets a script that says so and nothing else (no token, no
//! registration, no ledger row about M); a config or a confirmation from an
//! address not bound to the token's machine is refused. Refusals are
//! counted in `/metrics`, never stored with their bodies.
//!
//! Every step lands in the ledger. A script is sent only once its boot row
//! (and so its token) is committed: a token the machine holds always
//! confirms, even across a crash of the server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tracing::{error, info, warn};

use crate::binding::Bindings;
use crate::boot::claims;
use crate::boot::loader::Loader;
use crate::domain::MacAddr;
use crate::inventory::{Boot, BootPlan, Inventory, InventoryError, ScriptRequest};
use crate::ledger::{Ledger, Record, RootRead};
use crate::metrics::Metrics;
use crate::netboot::render_boot;
use crate::render::context::{self, Bases};
use crate::render::{Renderer, ServerContext, ServerUrls, BOOT_IPXE};

#[derive(Clone)]
pub struct BootState {
    pub inventory: Arc<Inventory>,
    pub renderer: Arc<Renderer>,
    pub ledger: Ledger,
    /// `http://SERVER:PORT`, as machines reach it over IPv4.
    pub server: String,
    /// `http://[SERVER]:PORT`, as machines reach it over IPv6 (DHCPv6 on):
    /// a request from an IPv6 address is answered with URLs it can reach.
    pub server6: Option<String>,
    /// Who is at a source address: a request acts for a machine only from
    /// an address bound to it.
    pub bindings: Arc<Bindings>,
    pub metrics: Arc<Metrics>,
    /// Artifact caches by the machines' network: a machine there fetches
    /// its artifacts from the cache, everything else from this server.
    artifact_caches: Arc<Vec<(ipnet::Ipv4Net, String)>>,
    boot_ipxe: Arc<String>,
    boot_ipxe6: Option<Arc<String>>,
}

impl BootState {
    pub fn new(
        inventory: Arc<Inventory>,
        renderer: Arc<Renderer>,
        ledger: Ledger,
        server: String,
        bindings: Arc<Bindings>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, crate::render::RenderError> {
        let boot_ipxe = render_boot_ipxe(&renderer, &server)?;
        Ok(Self {
            inventory,
            renderer,
            ledger,
            server,
            server6: None,
            bindings,
            metrics,
            artifact_caches: Arc::default(),
            boot_ipxe: Arc::new(boot_ipxe),
            boot_ipxe6: None,
        })
    }

    /// Also answers IPv6 clients, with URLs over `server6`.
    pub fn with_ipv6(mut self, server6: String) -> Result<Self, crate::render::RenderError> {
        self.boot_ipxe6 = Some(Arc::new(render_boot_ipxe(&self.renderer, &server6)?));
        self.server6 = Some(server6);
        Ok(self)
    }

    /// Machines in these networks fetch artifacts from their cache.
    pub fn with_artifact_caches(mut self, caches: Vec<(ipnet::Ipv4Net, String)>) -> Self {
        self.artifact_caches = Arc::new(caches);
        self
    }

    /// Where a machine at `peer` reaches this server, and its artifacts.
    pub fn bases_for(&self, peer: std::net::IpAddr) -> Bases<'_> {
        let server = self.server_for(peer);
        let cache = match peer.to_canonical() {
            std::net::IpAddr::V4(v4) => self
                .artifact_caches
                .iter()
                .find(|(net, _)| net.contains(&v4))
                .map(|(_, base)| base.as_str()),
            std::net::IpAddr::V6(_) => None,
        };
        Bases {
            server,
            artifacts: cache.unwrap_or(server),
        }
    }

    /// The base URL a machine at `peer` reaches this server by.
    pub fn server_for(&self, peer: std::net::IpAddr) -> &str {
        match (peer.to_canonical(), &self.server6) {
            (std::net::IpAddr::V6(_), Some(v6)) => v6,
            _ => &self.server,
        }
    }
}

fn render_boot_ipxe(
    renderer: &Renderer,
    server: &str,
) -> Result<String, crate::render::RenderError> {
    renderer.render(
        BOOT_IPXE,
        &ServerContext {
            urls: ServerUrls {
                server: server.to_string(),
            },
        },
    )
}

/// The largest confirmation body read (cloud-init's form with three public
/// keys is about 2 KiB); a larger one is refused with 413 unread.
pub const MAX_PHONE_HOME: usize = 64 * 1024;

pub fn router(state: BootState) -> Router {
    Router::new()
        .route("/boot.ipxe", get(boot_ipxe))
        .route("/boot/{file}", get(machine_script))
        .route("/config/{token}/{file}", get(config_file))
        .route(
            "/phone-home/{token}",
            post(phone_home).layer(axum::extract::DefaultBodyLimit::max(MAX_PHONE_HOME)),
        )
        .route(
            "/boot-failure/{token}",
            post(boot_failure).layer(axum::extract::DefaultBodyLimit::max(MAX_PHONE_HOME)),
        )
        .with_state(state)
}

/// What an address not bound to `mac` is told instead of its script: why,
/// and to try the next boot device. Names only the MAC it asked for and
/// the address it asked from.
fn unbound_script(mac: MacAddr, peer: std::net::IpAddr) -> String {
    format!(
        "#!ipxe\necho ironboot: {peer} is not bound to {mac} (no lease, reservation or neighbour entry); nothing to boot\nsleep 10\nexit 1\n"
    )
}

fn forbidden(text: &'static str) -> Response {
    (StatusCode::FORBIDDEN, text).into_response()
}

fn script(text: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        text,
    )
        .into_response()
}

async fn boot_ipxe(
    State(state): State<BootState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    let text = match (&state.boot_ipxe6, peer.ip().to_canonical()) {
        (Some(v6), std::net::IpAddr::V6(_)) => v6,
        _ => &state.boot_ipxe,
    };
    script(text.as_ref().clone())
}

async fn machine_script(
    State(state): State<BootState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(file): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    // Whatever the firmware sent, a booting machine gets a script: the query
    // is read leniently (iPXE can percent-encode raw bytes).
    let q = lenient_query(query.as_deref().unwrap_or(""));
    let Some(mac) = file
        .strip_suffix(".ipxe")
        .and_then(|m| m.parse::<MacAddr>().ok())
    else {
        return (StatusCode::NOT_FOUND, "expected /boot/<mac>.ipxe\n").into_response();
    };
    if !state.bindings.check(peer.ip(), mac).allows() {
        return script(unbound_script(mac, peer.ip()));
    }
    // What the firmware says of itself is a claim: checked, capped.
    let claim = |k: &str| q.get(k).and_then(|v| claims::text(v));
    let req = ScriptRequest {
        mac: Some(mac),
        // iPXE prints the all-zero UUID when the firmware has none.
        uuid: q
            .get("uuid")
            .and_then(|u| claims::uuid(u))
            .filter(|u| u.chars().any(|c| c != '0' && c != '-')),
        serial: claim("serial"),
        buildarch: q.get("buildarch").and_then(|a| claims::buildarch(a)),
        platform: q
            .get("platform")
            .and_then(|p| claims::platform(p))
            .map(str::to_string),
        ip: Some(peer.ip()),
    };
    let plan = state.inventory.begin_boot(mac, &req);
    // The token in this script is usable once the boot row is committed.
    state.ledger.flush().await;
    let rendered = render_boot(
        &plan,
        state.bases_for(peer.ip()),
        &state.renderer,
        Loader::Ipxe,
    );
    let detail = json!({ "target": plan.target, "identity": plan.identity, "group": plan.machine.group, "membership": plan.machine.membership.reason(), "chip": claim("chip"), "platform": req.platform, "buildarch": req.buildarch });
    match rendered {
        Ok(text) => {
            info!(%mac, boot = plan.boot_id, target = ?plan.target, "boot script served");
            state.ledger.boot_event(
                plan.boot_id,
                mac,
                Some(peer.ip()),
                "boot.script",
                detail,
                Some(text.len() as u64),
            );
            script(text)
        }
        Err(e) => {
            // The operator's template is at fault: say so on the console too.
            error!(%mac, error = %e, "boot script failed to render");
            state.ledger.boot_event(
                plan.boot_id,
                mac,
                Some(peer.ip()),
                "boot.render_failed",
                json!({ "error": e.to_string() }),
                None,
            );
            script(format!(
                "#!ipxe\necho ironboot: the boot script for {mac} failed to render; see the server log\nsleep 10\nexit 1\n"
            ))
        }
    }
}

async fn config_file(
    State(state): State<BootState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((token, file)): Path<(String, String)>,
) -> Response {
    let Some(plan) = state.inventory.plan_for_token(&token) else {
        Metrics::inc(&state.metrics.boot_token_refused);
        return (StatusCode::NOT_FOUND, "unknown boot\n").into_response();
    };
    if !state.bindings.check(peer.ip(), plan.machine.mac).allows() {
        Metrics::inc(&state.metrics.boot_token_refused);
        return forbidden("this address is not bound to the boot's machine\n");
    }
    serve_config(&state, &plan, &file, peer)
}

/// A seed file of `plan`'s boot, rendered for it; the caller has checked
/// that `peer` acts for the machine.
pub(crate) fn serve_config(
    state: &BootState,
    plan: &BootPlan,
    file: &str,
    peer: SocketAddr,
) -> Response {
    let rendered = context::build(plan, state.bases_for(peer.ip()), &state.renderer)
        .map(|ctx| state.renderer.render_config(file, &ctx));
    match rendered {
        Ok(Some(Ok(text))) => {
            state.ledger.boot_event(
                plan.boot_id,
                plan.machine.mac,
                Some(peer.ip()),
                "boot.config",
                json!({ "file": file }),
                Some(text.len() as u64),
            );
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
        // Optional NoCloud files (network-config, …) are simply absent.
        Ok(None) => (StatusCode::NOT_FOUND, "no such config file\n").into_response(),
        Ok(Some(Err(e))) | Err(e) => {
            error!(mac = %plan.machine.mac, file, error = %e, "config failed to render");
            state.ledger.boot_event(
                plan.boot_id,
                plan.machine.mac,
                Some(peer.ip()),
                "boot.render_failed",
                json!({ "file": file, "error": e.to_string() }),
                None,
            );
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "config failed to render; see the server log\n",
            )
                .into_response()
        }
    }
}

async fn phone_home(
    State(state): State<BootState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(token): Path<String>,
    body: String,
) -> Response {
    let refuse =
        |status, code, message| refusal(&state, peer, "confirmation", status, code, message);
    if let Err((code, message)) = token_boot(&state, peer, &token) {
        return refuse(StatusCode::FORBIDDEN, code, message.into());
    }
    // cloud-init posts instance_id, hostname, fqdn and public keys; keep
    // the non-key fields as the confirmation's detail, each a capped claim.
    let fields: HashMap<String, String> = form_fields(&body)
        .into_iter()
        .filter(|(k, _)| k.len() <= claims::MAX_CLAIM && !k.starts_with("pub_key"))
        .filter_map(|(k, v)| claims::text(&v).map(|v| (k, v)))
        .take(32)
        .collect();
    let detail = json!({
        "instance_id": fields.get("instance_id"),
        "hostname": fields.get("hostname"),
        "secure_boot": fields.get("secureboot").and_then(|v| claims::secure_boot(v)),
    });
    let payload: std::collections::BTreeMap<String, String> = fields.into_iter().collect();
    match state.inventory.confirm_with(&token, &payload).await {
        Ok((boot, generation)) => {
            info!(mac = %boot.mac, boot = boot.id, %generation, "boot confirmed");
            state.ledger.boot_event(
                boot.id,
                boot.mac,
                Some(peer.ip()),
                "boot.confirm",
                detail,
                None,
            );
            Json(json!({ "status": "confirmed", "boot": boot.id, "stream": generation.stream, "generation": generation.number }))
                .into_response()
        }
        Err(e) => {
            let (status, code) = match &e {
                InventoryError::UnknownToken | InventoryError::ExpiredToken(_) => {
                    (StatusCode::FORBIDDEN, "unknown_token")
                }
                InventoryError::AlreadyConfirmed(_) => (StatusCode::CONFLICT, "replayed"),
                InventoryError::NothingToConfirm(_) => (StatusCode::CONFLICT, "nothing_served"),
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            };
            if status.is_server_error() {
                error!(error = %e, "confirmation failed");
                return (
                    status,
                    Json(json!({ "error": { "code": code, "message": "internal error" } })),
                )
                    .into_response();
            }
            refuse(status, code, e.to_string())
        }
    }
}

/// A request from a machine refused: counted, not stored (a refused
/// request leaves no row behind), and said as a JSON error.
fn refusal(
    state: &BootState,
    peer: SocketAddr,
    what: &'static str,
    status: StatusCode,
    code: &'static str,
    message: String,
) -> Response {
    Metrics::inc(&state.metrics.boot_token_refused);
    warn!(peer = %peer.ip(), reason = code, "{what} refused");
    (
        status,
        Json(json!({ "error": { "code": code, "message": message } })),
    )
        .into_response()
}

/// The open boot `token` names, if the request comes from an address bound
/// to its machine; else the refusal's code and message (403).
fn token_boot(
    state: &BootState,
    peer: SocketAddr,
    token: &str,
) -> Result<Boot, (&'static str, &'static str)> {
    let boot = state
        .inventory
        .boot_for_token(token)
        .ok_or(("unknown_token", "unknown or expired boot token"))?;
    if !state.bindings.check(peer.ip(), boot.mac).allows() {
        return Err(("unbound", "this address is not bound to the boot's machine"));
    }
    Ok(boot)
}

/// What a machine may say went wrong with its boot (`reason`).
const FAILURE_REASONS: &[&str] = &["verity", "root"];

/// The booting machine reports its boot failed (its initrd could not
/// verify or attach the root image): recorded, counted by the watchdog at
/// once, and with `reason=verity` added to the boot's verification
/// failures. The machine then reboots itself. From a machine whose boot
/// confirmed (a bad block read later), the report is recorded only.
async fn boot_failure(
    State(state): State<BootState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(token): Path<String>,
    body: String,
) -> Response {
    let refuse =
        |status, code, message| refusal(&state, peer, "failure report", status, code, message);
    let boot = match token_boot(&state, peer, &token) {
        Ok(boot) => boot,
        Err((code, message)) => return refuse(StatusCode::FORBIDDEN, code, message.into()),
    };
    let fields = form_fields(&body);
    let reason = fields.get("reason").map(String::as_str).unwrap_or_default();
    let Some(reason) = FAILURE_REASONS.iter().find(|r| **r == reason) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "bad_reason",
            format!("reason must be one of {}", FAILURE_REASONS.join(", ")),
        );
    };
    let detail = fields.get("detail").and_then(|d| claims::text(d));
    let why = format!(
        "the machine reported a {reason} failure{}",
        detail
            .as_deref()
            .map(|d| format!(": {d}"))
            .unwrap_or_default()
    );
    if *reason == "verity" {
        state.ledger.record(Record::RootRead(RootRead {
            boot_id: boot.id,
            export: None,
            bytes: 0,
            verify_failures: 1,
        }));
    }
    state.ledger.boot_event(
        boot.id,
        boot.mac,
        Some(peer.ip()),
        "boot.failure",
        json!({ "reason": reason, "detail": detail }),
        None,
    );
    warn!(mac = %boot.mac, boot = boot.id, reason, "{why}");
    if boot.confirmed {
        // The machine runs, and found a bad block later: recorded only.
        return Json(json!({ "status": "recorded", "boot": boot.id })).into_response();
    }
    match state.inventory.report_failure(&token, why) {
        Ok(_) => Json(json!({ "status": "failed", "boot": boot.id })).into_response(),
        Err(e) => refuse(StatusCode::CONFLICT, "gone", e.to_string()),
    }
}

/// The urlencoded form cloud-init posts; anything unparsable is ignored
/// (the token in the URL is what confirms, not the body).
fn form_fields(body: &str) -> HashMap<String, String> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(body)
        .map(|v| v.into_iter().collect())
        .unwrap_or_default()
}

/// `a=1&b=%41` → map, never failing: invalid percent escapes stay as
/// they are, invalid UTF-8 becomes U+FFFD.
fn lenient_query(query: &str) -> HashMap<String, String> {
    let decode = |s: &str| {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
                (b'%', Some(b)) => {
                    out.push(b);
                    i += 3;
                }
                (b'+', _) => {
                    out.push(b' ');
                    i += 1;
                }
                (b, _) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn form_decoding() {
        let f = super::form_fields("instance_id=iid-1&hostname=node%2D7&fqdn=a+b&pub_key_rsa=");
        assert_eq!(f["instance_id"], "iid-1");
        assert_eq!(f["hostname"], "node-7");
        assert_eq!(f["fqdn"], "a b");
        let _ = super::form_fields("%%%&=&&"); // malformed: no panic, whatever it yields
    }

    #[test]
    fn script_queries_are_read_leniently() {
        // What iPXE 2019 sends for ${uuid:uristring}: raw bytes, not UTF-8.
        let q = super::lenient_query("uuid=%18%5B%FF%C3&serial=SN%2077&buildarch=i386&bad=%zz&%");
        assert_eq!(q["serial"], "SN 77");
        assert_eq!(q["buildarch"], "i386");
        assert_eq!(q["bad"], "%zz");
        assert!(q["uuid"].contains('\u{fffd}'));
    }
}
