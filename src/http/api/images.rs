//! Artifacts (upload, server-side fetch), streams and generations (import,
//! show, delete unless in use), and garbage collection.

use axum::http::header;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::*;
use crate::images::fetch::FetchError;

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(put_artifact, head_artifact))
        .routes(routes!(fetch_artifact))
        .routes(routes!(list_streams))
        .routes(routes!(list_generations, create_generation))
        .routes(routes!(get_generation, delete_generation))
        .routes(routes!(gc))
}

/// An artifact in the store.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ArtifactInfo {
    pub sha256: String,
    pub size: u64,
    /// `fetch` only: whether it was downloaded (false: it was there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetched: Option<bool>,
}

/// Whether the store has an artifact (`Content-Length`: its size).
#[utoipa::path(head, path = "/api/v1/artifacts/sha256/{hex}", tag = "images",
    params(("hex" = String, Path, description = "sha256, 64 hex digits")),
    responses((status = 200, description = "present"), (status = 404, description = "absent"),
        (status = 400, description = "not a digest")))]
async fn head_artifact(
    _: Reader,
    State(s): State<ApiState>,
    ApiPath(hex): ApiPath<String>,
) -> Response {
    let Ok(digest) = parse_digest(&hex) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    // An import that sees it present will not upload it again: claimed.
    match s.images.claim_if_present(&digest).await {
        Some(size) => ([(header::CONTENT_LENGTH, size.to_string())], ()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Streams an upload into the store; the body must hash to the URL's digest.
#[utoipa::path(put, path = "/api/v1/artifacts/sha256/{hex}", tag = "images",
    params(("hex" = String, Path, description = "sha256 of the body, 64 hex digits")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = ArtifactInfo)))]
async fn put_artifact(
    _: Admin,
    State(s): State<ApiState>,
    ApiPath(hex): ApiPath<String>,
    body: Body,
) -> ApiResult<Response> {
    let digest = parse_digest(&hex)?;
    let info = s
        .images
        .put_artifact(Some(digest), MAX_ARTIFACT, body.into_data_stream())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(ArtifactInfo {
            sha256: info.digest.to_string(),
            size: info.size,
            fetched: None,
        }),
    )
        .into_response())
}

/// An artifact the server downloads itself.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct FetchRequest {
    url: String,
    sha256: String,
}

/// Downloads a remote artifact into the store, verifying its digest.
#[utoipa::path(post, path = "/api/v1/artifacts/fetch", tag = "images",
    request_body = FetchRequest,
    responses((status = 200, body = ArtifactInfo, description = "already present"),
        (status = 201, body = ArtifactInfo, description = "downloaded"),
        (status = 502, body = ErrorBody, description = "the download failed")))]
async fn fetch_artifact(
    _: Admin,
    State(s): State<ApiState>,
    ApiJson(req): ApiJson<FetchRequest>,
) -> ApiResult<Response> {
    let digest = parse_digest(&req.sha256)?;
    if !(req.url.starts_with("http://") || req.url.starts_with("https://")) {
        return Err(ApiError::bad("url", "must be an http:// or https:// URL"));
    }
    if let Some(size) = s.images.claim_if_present(&digest).await {
        return Ok(Json(ArtifactInfo {
            sha256: digest.to_string(),
            size,
            fetched: Some(false),
        })
        .into_response());
    }
    let resp = s.fetcher.get(&req.url).await.map_err(|e| match e {
        FetchError::Refused(why) => ApiError::new(
            StatusCode::FORBIDDEN,
            "fetch_refused",
            format!("{}: {why}", req.url),
        ),
        FetchError::Failed(why) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "fetch_failed",
            format!("{}: {why}", req.url),
        ),
    })?;
    // What the server downloaded is not shown to the caller: a mismatch
    // names the digest that was expected, never the one that came.
    let info = s
        .images
        .put_artifact(Some(digest), MAX_ARTIFACT, resp.bytes_stream())
        .await
        .map_err(|e| match e {
            ImageError::DigestMismatch { expected, .. } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "digest_mismatch",
                format!("{}: content does not match; expected {expected}", req.url),
            ),
            ImageError::Body(_) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "fetch_failed",
                format!("{}: the download was interrupted", req.url),
            ),
            other => other.into(),
        })?;
    Ok((
        StatusCode::CREATED,
        Json(ArtifactInfo {
            sha256: info.digest.to_string(),
            size: info.size,
            fetched: Some(true),
        }),
    )
        .into_response())
}

/// A generation of a stream: its image and who uses it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GenerationView {
    pub stream: String,
    pub generation: i64,
    /// The image: sha256 of its canonical manifest.
    pub digest: String,
    pub manifest: Manifest,
    pub imported_ms: i64,
    /// The API token that imported it.
    pub imported_by: Option<String>,
    /// Group pointers, pins, machines running it (it cannot be deleted
    /// while this is not empty).
    pub in_use_by: Vec<String>,
    /// Machines whose current (confirmed) generation it is.
    #[serde(default)]
    pub running: usize,
}

fn generation_json(
    g: &crate::inventory::Generation,
    in_use: Option<&Vec<String>>,
    running: usize,
) -> GenerationView {
    GenerationView {
        stream: g.id.stream.clone(),
        generation: g.id.number,
        digest: g.digest.to_string(),
        manifest: g.manifest.clone(),
        imported_ms: g.imported_ms,
        imported_by: g.imported_by.clone(),
        in_use_by: in_use.cloned().unwrap_or_default(),
        running,
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StreamView {
    pub stream: String,
    /// How many generations it holds.
    pub generations: usize,
    pub latest: Option<i64>,
    /// How many machines run each of its generations (their current one),
    /// by generation number; generations nobody runs are absent.
    #[serde(default)]
    pub running: BTreeMap<i64, usize>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StreamList {
    pub streams: Vec<StreamView>,
}

/// Every stream with its generation count, latest number, and how many
/// machines run each generation.
#[utoipa::path(get, path = "/api/v1/streams", tag = "images",
    responses((status = 200, body = StreamList)))]
async fn list_streams(_: Reader, State(s): State<ApiState>) -> Json<StreamList> {
    let mut running: BTreeMap<String, BTreeMap<i64, usize>> = BTreeMap::new();
    for (id, n) in s.inventory.running() {
        running.entry(id.stream).or_default().insert(id.number, n);
    }
    let mut streams: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for g in s.inventory.generations() {
        streams
            .entry(g.id.stream.clone())
            .or_default()
            .push(g.id.number);
    }
    let streams = streams
        .into_iter()
        .map(|(name, gens)| StreamView {
            running: running.remove(&name).unwrap_or_default(),
            stream: name,
            generations: gens.len(),
            latest: gens.iter().max().copied(),
        })
        .collect();
    Json(StreamList { streams })
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GenerationList {
    pub stream: String,
    pub generations: Vec<GenerationView>,
}

/// A stream's generations, oldest first.
#[utoipa::path(get, path = "/api/v1/streams/{stream}/generations", tag = "images",
    params(("stream" = String, Path, description = "Stream name")),
    responses((status = 200, body = GenerationList)))]
async fn list_generations(
    _: Reader,
    State(s): State<ApiState>,
    ApiPath(stream): ApiPath<String>,
) -> Json<GenerationList> {
    let used = s.inventory.in_use();
    let running = s.inventory.running();
    let list: Vec<GenerationView> = s
        .inventory
        .generations()
        .iter()
        .filter(|g| g.id.stream == stream)
        .map(|g| generation_json(g, used.get(&g.id), running.get(&g.id).copied().unwrap_or(0)))
        .collect();
    Json(GenerationList {
        stream,
        generations: list,
    })
}

/// One generation: its manifest (artifacts, sizes, digests, cmdline), import
/// time, who imported it, who uses it.
#[utoipa::path(get, path = "/api/v1/streams/{stream}/generations/{number}", tag = "images",
    params(("stream" = String, Path, description = "Stream name"),
        ("number" = i64, Path, description = "Generation number")),
    responses((status = 200, body = GenerationView)))]
async fn get_generation(
    _: Reader,
    State(s): State<ApiState>,
    ApiPath((stream, number)): ApiPath<(String, String)>,
) -> ApiResult<Json<GenerationView>> {
    let id = GenerationId::new(stream, parse_number(&number)?);
    let g = s
        .inventory
        .generation(&id)
        .ok_or(InventoryError::NoSuchGeneration(id.clone()))?;
    let running = s.inventory.running().get(&id).copied().unwrap_or(0);
    Ok(Json(generation_json(
        &g,
        s.inventory.in_use().get(&id),
        running,
    )))
}

/// Imports a generation: every artifact must already be in the store.
#[utoipa::path(post, path = "/api/v1/streams/{stream}/generations", tag = "images",
    params(("stream" = String, Path, description = "Stream name")),
    request_body = Manifest,
    responses((status = 201, body = GenerationView)))]
async fn create_generation(
    Admin(who): Admin,
    State(s): State<ApiState>,
    ApiPath(stream): ApiPath<String>,
    body: bytes::Bytes,
) -> ApiResult<Response> {
    valid_name("stream", &stream)?;
    // Bytes, not String: a body that is not UTF-8 is a JSON error too.
    let manifest: Manifest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid", format!("manifest: {e}")))?;
    if let Err((field, message)) = manifest.check_shape() {
        return Err(ApiError::bad(field, message));
    }
    if !crate::domain::Cpu::IMAGES.contains(&manifest.arch) {
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
    let _importing = s.images.importing().await;
    if let Some(uki) = &manifest.uki {
        // A missing artifact is put_manifest's to report.
        if let Ok(bytes) = tokio::fs::read(s.images.artifact_path(&uki.digest)).await {
            crate::images::uki::Uki::parse(&bytes)
                .map_err(|e| ApiError::bad("uki", e.to_string()))?;
        }
    }
    if let (Some(rootfs), Some(verity)) = (&manifest.rootfs, &manifest.rootfs_verity) {
        s.images
            .check_verity(rootfs, verity)
            .await
            .map_err(|e| ApiError::bad("rootfs_verity", e))?;
    }
    let digest = s.images.put_manifest(&manifest).await?;
    let g = s
        .inventory
        .add_generation(&stream, digest, manifest, Some(who.name))
        .await?;
    Ok((StatusCode::CREATED, Json(generation_json(&g, None, 0))).into_response())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeleteReport {
    pub deleted: Vec<GenerationRef>,
    pub files: crate::images::GcReport,
}

/// Deletes a generation (refused with 409 while it is in use) and the files
/// only it used.
#[utoipa::path(delete, path = "/api/v1/streams/{stream}/generations/{number}", tag = "images",
    params(("stream" = String, Path, description = "Stream name"),
        ("number" = i64, Path, description = "Generation number")),
    responses((status = 200, body = DeleteReport)))]
async fn delete_generation(
    _: Admin,
    State(s): State<ApiState>,
    ApiPath((stream, number)): ApiPath<(String, String)>,
) -> ApiResult<Json<DeleteReport>> {
    let id = GenerationId::new(stream, parse_number(&number)?);
    let _collecting = s.images.collecting().await;
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
    let files = delete_and_collect(&s, std::slice::from_ref(&id)).await?;
    Ok(Json(DeleteReport {
        deleted: vec![GenerationRef::from(&id)],
        files,
    }))
}

/// Deletes generations, then the files only their images used (the caller
/// holds [`crate::images::ImageStore::collecting`] from its in-use check
/// on).
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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct GcRequest {
    /// Keep at least this many newest generations of each stream.
    retain: usize,
    #[serde(default)]
    dry_run: bool,
}

/// A generation garbage collection kept because something uses it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeptInUse {
    pub stream: String,
    pub generation: i64,
    pub in_use_by: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GcResult {
    pub dry_run: bool,
    pub deleted: Vec<GenerationRef>,
    pub kept_in_use: Vec<KeptInUse>,
    /// Absent on a dry run or when nothing was deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<crate::images::GcReport>,
}

/// Deletes old generations beyond `retain` per stream, never one in use.
#[utoipa::path(post, path = "/api/v1/gc", tag = "images",
    request_body = GcRequest,
    responses((status = 200, body = GcResult)))]
async fn gc(
    _: Admin,
    State(s): State<ApiState>,
    ApiJson(req): ApiJson<GcRequest>,
) -> ApiResult<Json<GcResult>> {
    if req.retain == 0 {
        return Err(ApiError::bad("retain", "must be at least 1"));
    }
    let _collecting = s.images.collecting().await;
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
                Some(users) => kept_in_use.push(KeptInUse {
                    stream: id.stream.clone(),
                    generation: id.number,
                    in_use_by: users.clone(),
                }),
                None => delete.push(id),
            }
        }
    }
    let deleted: Vec<GenerationRef> = delete.iter().map(GenerationRef::from).collect();
    let files = if req.dry_run || delete.is_empty() {
        None
    } else {
        Some(delete_and_collect(&s, &delete).await?)
    };
    Ok(Json(GcResult {
        dry_run: req.dry_run,
        deleted,
        kept_in_use,
        files,
    }))
}
