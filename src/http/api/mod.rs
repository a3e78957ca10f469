//! The REST API under `/api/v1/` (the part live boot needs; the rest of the
//! inventory API builds on it). Bearer tokens: `read` to look, `admin` to
//! change. Errors are JSON: `{"error": {"code", "message", "field"}}` with
//! a 4xx that says what is wrong; a 500 is logged and says nothing more.
//!
//! One module per resource, each with its `routes()`: [`machines`] (machines,
//! boots, pins), [`images`] (artifacts, streams, generations, gc),
//! [`groups`] (groups and their generation pointers). This file holds what
//! they share: state, errors, authentication, parsing of path parameters.

mod groups;
mod images;
mod machines;
mod rollouts;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
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

/// The whole API: one router per resource, a JSON 404 for the rest.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .merge(machines::routes())
        .merge(images::routes())
        .merge(groups::routes())
        .merge(rollouts::routes())
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such API endpoint")
        })
        .with_state(state)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GenerationRef {
    pub stream: String,
    pub generation: i64,
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
