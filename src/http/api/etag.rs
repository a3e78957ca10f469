//! Optimistic concurrency: every resource a client may update is served
//! with an `ETag` (a hash of its JSON), and an update that carries
//! `If-Match` is refused with 412 unless the tag still matches, so two
//! operators cannot silently overwrite each other. An update without
//! `If-Match` applies unconditionally (scripts that do not care).
//!
//! The check and the write must not interleave with another update: the
//! handler takes [`super::ApiState::edits`] around read, check and write.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::ApiError;

/// The strong entity tag of a resource: the first 128 bits of the sha256 of
/// its JSON representation, quoted as HTTP wants.
pub fn etag_of<T: Serialize>(value: &T) -> String {
    let json = serde_json::to_vec(value).expect("API resources serialize");
    format!("\"{}\"", hex::encode(&Sha256::digest(&json)[..16]))
}

/// The `If-Match` header of a request, if it has one (never rejects).
#[derive(Debug, Default)]
pub struct IfMatch(Option<String>);

impl IfMatch {
    pub fn new(value: Option<&str>) -> Self {
        Self(value.map(str::to_string))
    }

    /// Ok when there is no `If-Match`, when it is `*`, or when one of its
    /// tags is `current` (weak tags compare by their opaque part, as a
    /// proxy may have weakened them).
    pub fn check(&self, current: &str) -> Result<(), ApiError> {
        let Some(header) = &self.0 else { return Ok(()) };
        let strip = |t: &str| t.trim().trim_start_matches("W/").to_string();
        let current = strip(current);
        let ok = header
            .split(',')
            .map(str::trim)
            .any(|t| t == "*" || strip(t) == current);
        if ok {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "etag_mismatch",
                format!(
                    "the resource changed since it was read (If-Match {header}, now {current}); read it again"
                ),
            )
            .with_field("If-Match"))
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.headers.get(header::IF_MATCH).map(|v| {
            String::from_utf8_lossy(v.as_bytes()).into_owned()
        })))
    }
}

/// A JSON resource answered with its `ETag`.
pub struct Tagged<T> {
    tag: String,
    value: T,
}

impl<T: Serialize> Tagged<T> {
    /// Tagged with the hash of its whole JSON.
    pub fn new(value: T) -> Self {
        Self {
            tag: etag_of(&value),
            value,
        }
    }

    /// Tagged with a tag computed from part of it: what an update may
    /// change, so that other changes (a machine booting) do not fail the
    /// next update's `If-Match`.
    pub fn with_tag(tag: String, value: T) -> Self {
        Self { tag, value }
    }
}

impl<T: Serialize> IntoResponse for Tagged<T> {
    fn into_response(self) -> Response {
        let tag = self.tag;
        let mut resp = Json(self.value).into_response();
        if let Ok(v) = HeaderValue::from_str(&tag) {
            resp.headers_mut().insert(header::ETAG, v);
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_accepts_the_current_tag_star_or_nothing_and_refuses_the_rest() {
        let tag = etag_of(&serde_json::json!({ "hostname": "node7" }));
        assert!(tag.starts_with('"') && tag.ends_with('"') && tag.len() == 34);
        assert_ne!(tag, etag_of(&serde_json::json!({ "hostname": "node8" })));
        for ok in [
            None,
            Some("*"),
            Some(tag.as_str()),
            Some(&*format!("W/{tag}")),
            Some(&*format!("\"other\", {tag}")),
        ] {
            assert!(IfMatch::new(ok).check(&tag).is_ok(), "{ok:?}");
        }
        for bad in ["\"other\"", "", "W/\"x\""] {
            let err = IfMatch::new(Some(bad)).check(&tag).unwrap_err();
            assert_eq!(err.status(), StatusCode::PRECONDITION_FAILED, "{bad:?}");
        }
    }
}
