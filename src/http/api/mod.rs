//! The REST API under `/api/v1/`. Bearer tokens: `read` to look, `admin` to
//! change. Errors are JSON: `{"error": {"code", "message", "field"}}` with
//! a 4xx that says what is wrong; a 500 is logged and says nothing more.
//! The OpenAPI 3.1 document at `/api/v1/openapi.json` is generated from the
//! handlers below ([`openapi`]), so it says what the server does.
//!
//! One module per resource, each with its `routes()`: [`machines`] (machines,
//! pins), [`history`] (boots and events, the live event stream), [`images`]
//! (artifacts, streams, generations, gc), [`groups`] (groups and their
//! generation pointers), [`leases`], [`tokens`], [`apply`] (desired state),
//! [`servers`] (the servers using this database). This file holds what
//! they share: state, errors, authentication, extractors whose rejections
//! are JSON errors, and [`etag`] (ETag / If-Match).
//!
//! # Adding a resource
//!
//! 1. A module `src/http/api/NAME.rs` with `use super::*;` and
//!    `pub(super) fn routes() -> OpenApiRouter<ApiState>` built with
//!    `OpenApiRouter::new().routes(routes!(list_x, create_x))` — handlers
//!    on the same path go in one `routes!`, one method each.
//! 2. Each handler carries `#[utoipa::path(get, path = "/api/v1/…",
//!    tag = "NAME", params(…), responses((status = 200, body = X)))]`;
//!    request and response types derive `utoipa::ToSchema` (and
//!    `IntoParams` for query structs). Error responses (`4XX`, the
//!    [`ErrorBody`] schema) and the bearer scheme are added to every
//!    operation by [`openapi::finish`]: do not repeat them.
//! 3. Take [`Reader`] or [`Admin`] first (authentication), then
//!    [`ApiPath`], [`ApiQuery`], [`ApiJson`] rather than axum's own (their
//!    rejections are JSON errors). Return `ApiResult<Json<T>>`, or
//!    `ApiResult<Tagged<T>>` for a resource that can be updated (adds its
//!    `ETag`); an update takes [`IfMatch`], holds `s.edits.lock()` across
//!    read, `if_match.check(&etag_of(&current))?` and write, and changes
//!    SQLite in one transaction before memory (nothing half-applied).
//! 4. Add `mod NAME;` and `.merge(NAME::routes())` in [`api_routes`].
//!    New shared state goes in [`ApiState`] as a new field (set in `app.rs`).

mod apply;
mod bmc;
mod etag;
mod explain;
mod forward;
mod groups;
mod history;
mod images;
mod leases;
mod machines;
mod openapi;
mod paging;
mod rollouts;
mod servers;
mod templates;
mod tokens;

/// The API's response types: what the handlers serialize and what the CLI
/// reads back (the same types, so the two cannot drift apart).
pub mod views {
    pub use super::apply::{ApplyResult, ChangeView, FieldView};
    pub use super::bmc::{BmcFields, GroupBmc, MachineBmc, PowerList};
    pub use super::groups::{Deleted, GroupList, GroupView, MemberList, MemberView};
    pub use super::history::{BootList, BootView, EventList, EventView, StepView};
    pub use super::images::{
        ArtifactInfo, GcResult, GenerationList, GenerationView, StreamList, StreamView,
    };
    pub use super::leases::{LeaseList, LeaseView};
    pub use super::machines::{MachineDeleted, MachineDetail, MachineList, MachineView, PinView};
    pub use super::rollouts::{HealthView, RolloutList, RolloutView, WatchdogView, WaveView};
    pub use super::servers::{ServerList, ServerView};
    pub use super::templates::{Rendered, TemplateList, TemplateView};
    pub use super::tokens::{CreatedToken, TokenList, TokenView};
    pub use super::GenerationRef;
    pub use crate::bmc::service::Outcome as PowerOutcome;
    pub use crate::explain::{Explanation, ScriptView};
}

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tracing::error;
pub use utoipa_axum::router::OpenApiRouter;
pub use utoipa_axum::routes;

use crate::auth::{Principal, Role, Tokens};
use crate::domain::GenerationId;
use crate::domain::MacAddr;
use crate::images::{Digest, ImageError, ImageStore, Manifest};
use crate::inventory::{Inventory, InventoryError};
use crate::store::Store;
pub use etag::{etag_of, IfMatch, Tagged};

/// Largest artifact an upload may carry (64 GiB: squashfs root images).
pub const MAX_ARTIFACT: u64 = 64 << 30;

#[derive(Clone)]
pub struct ApiState {
    pub inventory: Arc<Inventory>,
    pub images: Arc<ImageStore>,
    pub tokens: Arc<Tokens>,
    pub store: Store,
    /// Held by an API update across its If-Match check and its write, so
    /// two updates of one resource cannot both pass the check.
    pub edits: Arc<tokio::sync::Mutex<()>>,
    /// Ledger events as they are recorded (`Ledger::live`), for the
    /// Server-Sent Events stream.
    pub live: tokio::sync::broadcast::Sender<crate::ledger::Event>,
    /// Cancelled at shutdown: ends long-lived answers (event streams), so
    /// the HTTP server's graceful shutdown does not wait on them.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// What `explain` and template previews need: the renderer, the URL
    /// machines reach, the DHCP settings answers depend on.
    pub explainer: Arc<crate::explain::Explainer>,
    /// The DHCP service, for its leases (`None` where there is none, as in
    /// unit tests).
    pub dhcp: Option<Arc<crate::dhcp::Dhcp>>,
    /// Server-side downloads (`artifacts/fetch`), within `[images]`'s
    /// policy: see [`crate::images::fetch`].
    pub fetcher: Arc<crate::images::fetch::Fetcher>,
    /// Power and boot control (`None` in unit tests without one).
    pub bmcs: Option<crate::bmc::service::Bmcs>,
    /// This server's id in `servers`, so `/api/v1/servers` marks the row
    /// of the server that answers (`None` in unit tests).
    pub server_id: Option<String>,
}

/// Every resource router, with the OpenAPI paths each contributes.
fn api_routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(openapi::base())
        .merge(machines::routes())
        .merge(history::routes())
        .merge(leases::routes())
        .merge(tokens::routes())
        .merge(images::routes())
        .merge(groups::routes())
        .merge(explain::routes())
        .merge(templates::routes())
        .merge(rollouts::routes())
        .merge(apply::routes())
        .merge(bmc::routes())
        .merge(servers::routes())
}

/// The OpenAPI document of the whole API (what `/api/v1/openapi.json`
/// serves).
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    openapi::finish(api_routes().into_openapi())
}

/// The whole API: one router per resource, the OpenAPI document (readable
/// without a token: it is the guide to getting one), a JSON 404 for the rest.
pub fn router(state: ApiState) -> Router {
    let (routes, doc) = api_routes().split_for_parts();
    let doc = Arc::new(
        serde_json::to_value(openapi::finish(doc)).expect("the OpenAPI document serializes"),
    );
    routes
        .route(
            "/api/v1/openapi.json",
            get(move || async move { Json(doc.as_ref().clone()) }),
        )
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such API endpoint")
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            forward::to_leader,
        ))
        .with_state(state)
}

/// A generation of a stream, as the API writes it: `{"stream", "generation"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerationRef {
    pub stream: String,
    pub generation: i64,
}

impl From<&GenerationId> for GenerationRef {
    fn from(id: &GenerationId) -> Self {
        Self {
            stream: id.stream.clone(),
            generation: id.number,
        }
    }
}

impl GenerationRef {
    /// Both halves present in a row, or none.
    pub fn pair(stream: Option<String>, generation: Option<i64>) -> Option<Self> {
        Some(Self {
            stream: stream?,
            generation: generation?,
        })
    }

    pub fn id(&self) -> GenerationId {
        GenerationId::new(self.stream.clone(), self.generation)
    }
}

// ---------------------------------------------------------------------------
// Errors and auth
// ---------------------------------------------------------------------------

/// The body of every error answer.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `invalid`, `unauthenticated`, `forbidden`,
    /// `not_found`, `no_such_machine`, `conflict`, `etag_mismatch`, …
    pub code: String,
    /// For people.
    pub message: String,
    /// The request field (body key, query or path parameter, header) at
    /// fault, when there is one.
    pub field: Option<String>,
}

/// A JSON error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
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

    /// The request field at fault (a body key, or a path in the body such
    /// as `groups.web.stream`).
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    fn bad(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "invalid",
            message: message.into(),
            field: Some(field.into()),
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
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.into(),
                message: self.message,
                field: self.field,
            },
        };
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
            InventoryError::NoSuchGroup(_) => {
                Self::new(StatusCode::NOT_FOUND, "no_such_group", e.to_string()).with_field("group")
            }
            InventoryError::GroupExists(_) => {
                Self::new(StatusCode::CONFLICT, "group_exists", e.to_string())
            }
            InventoryError::GroupInUse { .. } => {
                Self::new(StatusCode::CONFLICT, "group_in_use", e.to_string())
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
            ImageError::InvalidManifest(_) | ImageError::BadDigest(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_manifest",
                e.to_string(),
            ),
            ImageError::NotFound(_) => Self::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
            _ => Self::internal(e),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
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

/// `Path<T>` whose rejection is an [`ApiError`].
pub struct ApiPath<T>(pub T);

impl<T: serde::de::DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> ApiResult<Self> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(rejection) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid",
                rejection.body_text(),
            )),
        }
    }
}

/// `Query<T>` whose rejection is an [`ApiError`].
pub struct ApiQuery<T>(pub T);

impl<T: serde::de::DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> ApiResult<Self> {
        let query = parts.uri.query().unwrap_or_default();
        serde_urlencoded::from_str(query)
            .map(ApiQuery)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid", format!("query: {e}")))
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
    crate::domain::check_group_name(name).map_err(|e| ApiError::bad(field, e))
}

#[cfg(test)]
pub(crate) mod tests;
