//! Artifacts (upload, server-side fetch), streams and generations (import,
//! show, delete unless in use), and garbage collection.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::*;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
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
        .route("/api/v1/gc", post(gc))
}

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
    if let Err((field, message)) = manifest.check_shape() {
        return Err(ApiError::bad(field, message));
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
