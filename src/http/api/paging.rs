//! What every list of the API shares: the largest page and how a point in
//! time is written in a filter.

use super::{ApiError, ApiResult};

/// Largest page of any list.
pub const MAX_PAGE: i64 = 1000;

/// A point in time as the API takes it: milliseconds since the epoch, or
/// an RFC 3339 timestamp.
pub fn parse_time(field: &'static str, text: &str) -> ApiResult<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    humantime::parse_rfc3339_weak(text)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .ok_or_else(|| {
            ApiError::bad(
                field,
                format!("{text:?}: expected milliseconds since the epoch or RFC 3339 (2026-11-28T10:00:00Z)"),
            )
        })
}
