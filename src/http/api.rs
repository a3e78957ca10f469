//! The REST API under `/api/v1/` (the part live boot needs; the rest of the
//! inventory API builds on it). Bearer tokens: `read` to look, `admin` to
//! change. Errors are JSON: `{"error": {"code", "message", "field"}}` with
//! a 4xx that says what is wrong; a 500 is logged and says nothing more.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::error;

use crate::auth::{Principal, Role, Tokens};
use crate::boot::GenerationId;
use crate::domain::MacAddr;
use crate::images::{Digest, ImageError, ImageStore, Manifest};
use crate::inventory::{Inventory, InventoryError};
use crate::store::Store;

/// Largest artifact an upload may carry (64 GiB: squashfs root images).
pub const MAX_ARTIFACT: u64 = 64 << 30;

#[derive(Clone)]
pub struct ApiState {
    pub inventory: Arc<Inventory>,
    pub images: Arc<ImageStore>,
    pub tokens: Arc<Tokens>,
    pub store: Store,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/machines", get(list_machines))
        .route("/api/v1/machines/{mac}", get(get_machine))
        .route("/api/v1/machines/{mac}/boots", get(machine_boots))
        .route(
            "/api/v1/machines/{mac}/pin",
            put(pin_machine).delete(unpin_machine),
        )
        .route(
            "/api/v1/artifacts/sha256/{hex}",
            put(put_artifact).head(head_artifact),
        )
        .route("/api/v1/artifacts/fetch", post(fetch_artifact))
        .route("/api/v1/streams", get(list_streams))
        .route(
            "/api/v1/streams/{stream}/generations",
            get(list_generations).post(create_generation),
        )
        .route(
            "/api/v1/streams/{stream}/generations/{number}",
            get(get_generation).delete(delete_generation),
        )
        .route("/api/v1/groups", get(list_groups))
        .route(
            "/api/v1/groups/{group}/generation",
            put(set_group_generation),
        )
        .route("/api/v1/gc", post(gc))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such API endpoint")
        })
        .with_state(state)
}

// ---------------------------------------------------------------------------
// Errors and auth
// ---------------------------------------------------------------------------

/// A JSON error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    fn bad(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "invalid",
            message: message.into(),
            field: Some(field),
        }
    }

    fn internal(e: impl std::fmt::Display) -> Self {
        error!(error = %e, "API request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({ "error": { "code": self.code, "message": self.message, "field": self.field } });
        (self.status, Json(body)).into_response()
    }
}

impl From<InventoryError> for ApiError {
    fn from(e: InventoryError) -> Self {
        match e {
            InventoryError::NoSuchGeneration(_) => {
                Self::new(StatusCode::NOT_FOUND, "no_such_generation", e.to_string())
            }
            InventoryError::NoSuchMachine(_) => {
                Self::new(StatusCode::NOT_FOUND, "no_such_machine", e.to_string())
            }
            other => Self::internal(other),
        }
    }
}

impl From<ImageError> for ApiError {
    fn from(e: ImageError) -> Self {
        match &e {
            ImageError::DigestMismatch { .. } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "digest_mismatch",
                e.to_string(),
            ),
            ImageError::TooLarge { .. } => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
            }
            ImageError::InvalidManifest(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_manifest",
                e.to_string(),
            ),
            ImageError::NotFound(_) => Self::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
            _ => Self::internal(e),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        Self::internal(e)
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// `Json<T>` whose rejection is an [`ApiError`] (axum's own is plain text).
pub struct ApiJson<T>(pub T);

impl<T: serde::de::DeserializeOwned + Send, S: Send + Sync> axum::extract::FromRequest<S>
    for ApiJson<T>
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> ApiResult<Self> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(ApiError::new(
                rejection.status(),
                "invalid_json",
                rejection.body_text(),
            )),
        }
    }
}

fn parse_number(text: &str) -> ApiResult<i64> {
    text.parse()
        .map_err(|_| ApiError::bad("generation", format!("{text:?} is not a generation number")))
}

/// Any valid token (read or admin).
pub struct Reader(#[allow(dead_code)] pub Principal);
/// An admin token.
pub struct Admin(pub Principal);

fn authenticate(parts: &Parts, tokens: &Tokens) -> ApiResult<Principal> {
    let header = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = header
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "send Authorization: Bearer <token>",
            )
        })?;
    tokens.check(token).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "bad_token",
            "unknown or revoked token",
        )
    })
}

impl FromRequestParts<ApiState> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> ApiResult<Self> {
        authenticate(parts, &state.tokens).map(Reader)
    }
}

impl FromRequestParts<ApiState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> ApiResult<Self> {
        let p = authenticate(parts, &state.tokens)?;
        if p.role != Role::Admin {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("token {} is read-only", p.name),
            ));
        }
        Ok(Admin(p))
    }
}

fn parse_mac(text: &str) -> ApiResult<MacAddr> {
    text.parse()
        .map_err(|e: crate::domain::MacParseError| ApiError::bad("mac", e.to_string()))
}

fn parse_digest(text: &str) -> ApiResult<Digest> {
    text.parse().map_err(|_| {
        ApiError::bad(
            "sha256",
            format!("{text:?} is not a sha256 digest (64 hex digits)"),
        )
    })
}

fn valid_name(field: &'static str, name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad(
            field,
            format!("{name:?} must be 1-63 letters, digits, '-', '_' or '.'"),
        ))
    }
}

// ---------------------------------------------------------------------------
// Machines
// ---------------------------------------------------------------------------

#[derive(Debug, Serialize, sqlx::FromRow)]
struct MachineRow {
    mac: String,
    group_name: String,
    labels: String,
    hostname: Option<String>,
    uuid: Option<String>,
    serial: Option<String>,
    arch: Option<String>,
    firmware: Option<String>,
    vendor_class: Option<String>,
    ip: Option<String>,
    circuit_id: Option<String>,
    remote_id: Option<String>,
    pin_stream: Option<String>,
    pin_generation: Option<i64>,
    current_stream: Option<String>,
    current_generation: Option<i64>,
    last_good_stream: Option<String>,
    last_good_generation: Option<i64>,
    first_seen_ms: i64,
    last_seen_ms: i64,
}

fn gen_json(stream: &Option<String>, number: Option<i64>) -> Value {
    match (stream, number) {
        (Some(s), Some(n)) => json!({ "stream": s, "generation": n }),
        _ => Value::Null,
    }
}

impl MachineRow {
    fn to_json(&self) -> Value {
        json!({
            "mac": self.mac,
            "group": self.group_name,
            "labels": serde_json::from_str::<Value>(&self.labels).unwrap_or(json!({})),
            "hostname": self.hostname,
            "uuid": self.uuid,
            "serial": self.serial,
            "arch": self.arch,
            "firmware": self.firmware,
            "vendor_class": self.vendor_class,
            "ip": self.ip,
            "relay": { "circuit_id": self.circuit_id, "remote_id": self.remote_id },
            "pin": gen_json(&self.pin_stream, self.pin_generation),
            "current": gen_json(&self.current_stream, self.current_generation),
            "last_good": gen_json(&self.last_good_stream, self.last_good_generation),
            "first_seen_ms": self.first_seen_ms,
            "last_seen_ms": self.last_seen_ms,
        })
    }
}

const MACHINE_COLUMNS: &str =
    "mac, group_name, labels, hostname, uuid, serial, arch, firmware, vendor_class, ip,
     circuit_id, remote_id, pin_stream, pin_generation, current_stream, current_generation,
     last_good_stream, last_good_generation, first_seen_ms, last_seen_ms";

#[derive(Debug, Serialize, sqlx::FromRow)]
struct BootRow {
    id: i64,
    stream: Option<String>,
    generation: Option<i64>,
    image: Option<String>,
    state: String,
    reason: Option<String>,
    started_ms: i64,
    confirmed_ms: Option<i64>,
}

async fn list_machines(_: Reader, State(s): State<ApiState>) -> ApiResult<Json<Value>> {
    s.inventory.settle().await;
    let rows: Vec<MachineRow> = sqlx::query_as(&format!(
        "SELECT {MACHINE_COLUMNS} FROM machines ORDER BY mac"
    ))
    .fetch_all(s.store.pool())
    .await?;
    Ok(Json(
        json!({ "machines": rows.iter().map(MachineRow::to_json).collect::<Vec<_>>() }),
    ))
}

async fn boots_of(store: &Store, mac: MacAddr, limit: i64) -> ApiResult<Vec<Value>> {
    let boots: Vec<BootRow> = sqlx::query_as(
        "SELECT id, stream, generation, image, state, reason, started_ms, confirmed_ms
         FROM boots WHERE mac = ? ORDER BY id DESC LIMIT ?",
    )
    .bind(mac.to_string())
    .bind(limit)
    .fetch_all(store.pool())
    .await?;
    let mut out = Vec::new();
    for b in boots {
        let steps: Vec<(i64, String, String, Option<i64>)> = sqlx::query_as(
            "SELECT at_ms, step, detail, bytes FROM events WHERE boot_id = ? ORDER BY id",
        )
        .bind(b.id)
        .fetch_all(store.pool())
        .await?;
        let steps: Vec<Value> = steps
            .into_iter()
            .map(|(at, step, detail, bytes)| {
                json!({ "at_ms": at, "step": step, "bytes": bytes, "detail": serde_json::from_str::<Value>(&detail).unwrap_or(Value::Null) })
            })
            .collect();
        let mut v = serde_json::to_value(&b).expect("plain struct");
        v["steps"] = Value::Array(steps);
        out.push(v);
    }
    Ok(out)
}

async fn get_machine(
    _: Reader,
    State(s): State<ApiState>,
    Path(mac): Path<String>,
) -> ApiResult<Json<Value>> {
    let mac = parse_mac(&mac)?;
    s.inventory.settle().await;
    let row: Option<MachineRow> = sqlx::query_as(&format!(
        "SELECT {MACHINE_COLUMNS} FROM machines WHERE mac = ?"
    ))
    .bind(mac.to_string())
    .fetch_optional(s.store.pool())
    .await?;
    let row = row.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_such_machine",
            format!("machine {mac} is not known"),
        )
    })?;
    let mut v = row.to_json();
    v["recent_boots"] = Value::Array(boots_of(&s.store, mac, 10).await?);
    Ok(Json(v))
}

#[derive(Deserialize)]
struct Paging {
    limit: Option<i64>,
}

async fn machine_boots(
    _: Reader,
    State(s): State<ApiState>,
    Path(mac): Path<String>,
    Query(p): Query<Paging>,
) -> ApiResult<Json<Value>> {
    let mac = parse_mac(&mac)?;
    s.inventory.settle().await;
    let limit = p.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(
        json!({ "mac": mac.to_string(), "boots": boots_of(&s.store, mac, limit).await? }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerationRef {
    stream: String,
    generation: i64,
}

async fn pin_machine(
    _: Admin,
    State(s): State<ApiState>,
    Path(mac): Path<String>,
    ApiJson(body): ApiJson<GenerationRef>,
) -> ApiResult<Json<Value>> {
    let mac = parse_mac(&mac)?;
    let id = GenerationId::new(body.stream, body.generation);
    s.inventory.set_pin(mac, Some(id.clone())).await?;
    Ok(Json(
        json!({ "mac": mac.to_string(), "pin": { "stream": id.stream, "generation": id.number } }),
    ))
}

async fn unpin_machine(
    _: Admin,
    State(s): State<ApiState>,
    Path(mac): Path<String>,
) -> ApiResult<Json<Value>> {
    let mac = parse_mac(&mac)?;
    s.inventory.set_pin(mac, None).await?;
    Ok(Json(json!({ "mac": mac.to_string(), "pin": null })))
}

// ---------------------------------------------------------------------------
// Artifacts and generations
// ---------------------------------------------------------------------------

async fn head_artifact(_: Reader, State(s): State<ApiState>, Path(hex): Path<String>) -> Response {
    let Ok(digest) = parse_digest(&hex) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    match s.images.artifact_size(&digest).await {
        Some(size) => ([(header::CONTENT_LENGTH, size.to_string())], ()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Streams an upload into the store; the body must hash to the URL's digest.
async fn put_artifact(
    _: Admin,
    State(s): State<ApiState>,
    Path(hex): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    let digest = parse_digest(&hex)?;
    let info = s
        .images
        .put_artifact(Some(digest), MAX_ARTIFACT, body.into_data_stream())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "sha256": info.digest.to_string(), "size": info.size })),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FetchRequest {
    url: String,
    sha256: String,
}

/// Downloads a remote artifact into the store, verifying its digest.
async fn fetch_artifact(
    _: Admin,
    State(s): State<ApiState>,
    ApiJson(req): ApiJson<FetchRequest>,
) -> ApiResult<Response> {
    let digest = parse_digest(&req.sha256)?;
    if !(req.url.starts_with("http://") || req.url.starts_with("https://")) {
        return Err(ApiError::bad("url", "must be an http:// or https:// URL"));
    }
    if let Some(size) = s.images.artifact_size(&digest).await {
        return Ok(
            Json(json!({ "sha256": digest.to_string(), "size": size, "fetched": false }))
                .into_response(),
        );
    }
    let resp = reqwest::get(&req.url)
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "fetch_failed",
                format!("{}: {e}", req.url),
            )
        })?;
    let info = s
        .images
        .put_artifact(Some(digest), MAX_ARTIFACT, resp.bytes_stream())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "sha256": info.digest.to_string(), "size": info.size, "fetched": true })),
    )
        .into_response())
}

fn generation_json(g: &crate::inventory::Generation, in_use: Option<&Vec<String>>) -> Value {
    json!({
        "stream": g.id.stream,
        "generation": g.id.number,
        "digest": g.digest.to_string(),
        "manifest": g.manifest,
        "imported_ms": g.imported_ms,
        "imported_by": g.imported_by,
        "in_use_by": in_use.cloned().unwrap_or_default(),
    })
}

async fn list_streams(_: Reader, State(s): State<ApiState>) -> Json<Value> {
    let mut streams: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for g in s.inventory.generations() {
        streams
            .entry(g.id.stream.clone())
            .or_default()
            .push(g.id.number);
    }
    let list: Vec<Value> = streams
        .into_iter()
        .map(|(name, gens)| json!({ "stream": name, "generations": gens.len(), "latest": gens.iter().max() }))
        .collect();
    Json(json!({ "streams": list }))
}

async fn list_generations(
    _: Reader,
    State(s): State<ApiState>,
    Path(stream): Path<String>,
) -> Json<Value> {
    let used = s.inventory.in_use();
    let list: Vec<Value> = s
        .inventory
        .generations()
        .iter()
        .filter(|g| g.id.stream == stream)
        .map(|g| generation_json(g, used.get(&g.id)))
        .collect();
    Json(json!({ "stream": stream, "generations": list }))
}

async fn get_generation(
    _: Reader,
    State(s): State<ApiState>,
    Path((stream, number)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let id = GenerationId::new(stream, parse_number(&number)?);
    let g = s
        .inventory
        .generation(&id)
        .ok_or(InventoryError::NoSuchGeneration(id.clone()))?;
    Ok(Json(generation_json(&g, s.inventory.in_use().get(&id))))
}

/// Imports a generation: every artifact must already be in the store.
async fn create_generation(
    Admin(who): Admin,
    State(s): State<ApiState>,
    Path(stream): Path<String>,
    body: String,
) -> ApiResult<Response> {
    valid_name("stream", &stream)?;
    let manifest: Manifest = serde_json::from_str(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid", format!("manifest: {e}")))?;
    if manifest.initrds.is_empty() {
        return Err(ApiError::bad(
            "initrds",
            "an image needs at least one initrd",
        ));
    }
    if !matches!(manifest.arch.as_str(), "x86_64" | "arm64") {
        return Err(ApiError::bad("arch", "must be x86_64 or arm64"));
    }
    for a in manifest.artifacts() {
        let ok = !a.name.is_empty()
            && a.name.len() <= 128
            && !a.name.starts_with('.')
            && a.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c));
        if !ok {
            return Err(ApiError::bad(
                "name",
                format!("artifact name {:?} must be 1-128 of A-Z a-z 0-9 . _ + -, not starting with '.'", a.name),
            ));
        }
    }
    if manifest.cmdline.chars().any(|c| c.is_control()) {
        return Err(ApiError::bad(
            "cmdline",
            "must be one line without control characters",
        ));
    }
    let digest = s.images.put_manifest(&manifest).await?;
    let g = s
        .inventory
        .add_generation(&stream, digest, manifest, Some(who.name))
        .await?;
    Ok((StatusCode::CREATED, Json(generation_json(&g, None))).into_response())
}

async fn delete_generation(
    _: Admin,
    State(s): State<ApiState>,
    Path((stream, number)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let id = GenerationId::new(stream, parse_number(&number)?);
    s.inventory
        .generation(&id)
        .ok_or(InventoryError::NoSuchGeneration(id.clone()))?;
    if let Some(users) = s.inventory.in_use().get(&id) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "in_use",
            format!("{id} is in use: {}", users.join(", ")),
        ));
    }
    let report = delete_and_collect(&s, std::slice::from_ref(&id)).await?;
    Ok(Json(
        json!({ "deleted": [{ "stream": id.stream, "generation": id.number }], "files": report }),
    ))
}

/// Deletes generations, then the files only their images used.
async fn delete_and_collect(
    s: &ApiState,
    ids: &[GenerationId],
) -> ApiResult<crate::images::GcReport> {
    let images: HashSet<Digest> = ids
        .iter()
        .filter_map(|id| s.inventory.generation(id))
        .map(|g| g.digest)
        .collect();
    let keep: HashSet<Digest> = s
        .inventory
        .delete_generations(ids)
        .await?
        .into_iter()
        .collect();
    let released: HashSet<Digest> = images.difference(&keep).copied().collect();
    Ok(s.images.gc(&keep, &released).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GcRequest {
    /// Keep at least this many newest generations of each stream.
    retain: usize,
    #[serde(default)]
    dry_run: bool,
}

/// Deletes old generations beyond `retain` per stream, never one in use.
async fn gc(
    _: Admin,
    State(s): State<ApiState>,
    ApiJson(req): ApiJson<GcRequest>,
) -> ApiResult<Json<Value>> {
    if req.retain == 0 {
        return Err(ApiError::bad("retain", "must be at least 1"));
    }
    let used = s.inventory.in_use();
    let mut by_stream: BTreeMap<String, Vec<GenerationId>> = BTreeMap::new();
    for g in s.inventory.generations() {
        by_stream
            .entry(g.id.stream.clone())
            .or_default()
            .push(g.id.clone());
    }
    let (mut delete, mut kept_in_use) = (Vec::new(), Vec::new());
    for (_, mut ids) in by_stream {
        ids.sort_by_key(|id| std::cmp::Reverse(id.number));
        for id in ids.into_iter().skip(req.retain) {
            match used.get(&id) {
                Some(users) => kept_in_use.push(
                    json!({ "stream": id.stream, "generation": id.number, "in_use_by": users }),
                ),
                None => delete.push(id),
            }
        }
    }
    let deleted: Vec<Value> = delete
        .iter()
        .map(|id| json!({ "stream": id.stream, "generation": id.number }))
        .collect();
    if req.dry_run || delete.is_empty() {
        return Ok(Json(
            json!({ "dry_run": req.dry_run, "deleted": deleted, "kept_in_use": kept_in_use }),
        ));
    }
    let files = delete_and_collect(&s, &delete).await?;
    Ok(Json(
        json!({ "dry_run": false, "deleted": deleted, "kept_in_use": kept_in_use, "files": files }),
    ))
}

// ---------------------------------------------------------------------------
// Groups
// ---------------------------------------------------------------------------

async fn list_groups(_: Reader, State(s): State<ApiState>) -> Json<Value> {
    Json(json!({ "groups": s.inventory.groups() }))
}

async fn set_group_generation(
    _: Admin,
    State(s): State<ApiState>,
    Path(group): Path<String>,
    ApiJson(body): ApiJson<GenerationRef>,
) -> ApiResult<Json<Value>> {
    valid_name("group", &group)?;
    let g = s
        .inventory
        .set_group_generation(&group, &GenerationId::new(body.stream, body.generation))
        .await?;
    Ok(Json(json!(g)))
}
