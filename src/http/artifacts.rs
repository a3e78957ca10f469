//! `GET`/`HEAD /artifacts/sha256/{hex}`: boot artifacts at permanent,
//! content-addressed URLs.
//!
//! Because the URL is the digest of the bytes, every response may be cached
//! forever by anyone: strong `ETag` (the digest), `Cache-Control: public,
//! max-age=31536000, immutable`, `If-None-Match` → 304, single byte ranges
//! (`bytes=a-b`, `a-`, `-n`) → 206, unsatisfiable → 416, `If-Range`. A
//! request for several ranges gets the whole file (allowed by RFC 9110).
//! Bodies are slices of one shared read-only mapping of the file (see
//! [`Mapped`]): every client of an artifact shares the same pages, the
//! kernel copies them straight into the socket, and no read buffer is held
//! per connection (a 1,000-machine storm held 256 KiB each before). Where
//! mapping fails the file streams in 256 KiB reads. A client that hangs up early
//! (UEFI HTTP boot sends HEAD, then GET, and may close) is normal: it is
//! reported to the hook as incomplete, never logged as an error.

use std::io::SeekFrom;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use futures_util::Stream;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use crate::images::{Digest, ImageStore};

/// One artifact response that finished (or was cut short).
#[derive(Debug, Clone)]
pub struct ServedArtifact {
    pub digest: Digest,
    pub client: Option<SocketAddr>,
    pub bytes: u64,
    /// The whole requested range was sent.
    pub completed: bool,
}

/// Called once per GET body, when it ends.
pub type Hook = Arc<dyn Fn(ServedArtifact) + Send + Sync>;

#[derive(Clone)]
struct ArtifactState {
    store: Arc<ImageStore>,
    hook: Option<Hook>,
    maps: Arc<Maps>,
}

pub fn router(store: Arc<ImageStore>, hook: Option<Hook>) -> Router {
    Router::new()
        .route("/artifacts/sha256/{hex}", get(serve))
        .with_state(ArtifactState {
            store,
            hook,
            maps: Arc::default(),
        })
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        Json(json!({ "error": { "code": code, "message": message } })),
    )
        .into_response()
}

const IMMUTABLE: &str = "public, max-age=31536000, immutable";

async fn serve(
    State(state): State<ArtifactState>,
    method: Method,
    headers: HeaderMap,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    Path(hex): Path<String>,
) -> Response {
    let (digest, file, size) = match open(&state, &hex).await {
        Ok(found) => found,
        Err(refused) => return refused,
    };
    let etag = format!("\"{digest}\"");
    let common = [
        (header::ETAG, etag.clone()),
        (header::CACHE_CONTROL, IMMUTABLE.to_string()),
        (header::ACCEPT_RANGES, "bytes".to_string()),
        (header::CONTENT_TYPE, "application/octet-stream".to_string()),
    ];
    let (status, start, len) = match wanted(&headers, &etag, size) {
        Wanted::Bytes { status, start, len } => (status, start, len),
        Wanted::NotModified => return (StatusCode::NOT_MODIFIED, common).into_response(),
        Wanted::Unsatisfiable => {
            let range = (header::CONTENT_RANGE, format!("bytes */{size}"));
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [range, (header::ETAG, etag)],
            )
                .into_response();
        }
    };
    let mut response = (status, common).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_LENGTH, len.into());
    if status == StatusCode::PARTIAL_CONTENT {
        let value = format!("bytes {start}-{}/{size}", start + len - 1);
        h.insert(header::CONTENT_RANGE, value.parse().expect("ASCII header"));
    }
    if method == Method::HEAD {
        return response;
    }
    let report = Some((state.hook.clone(), digest, Some(client)));
    match body(&state, digest, file, size, start, len, report).await {
        Ok(body) => {
            *response.body_mut() = body;
            response
        }
        Err(refused) => refused,
    }
}

/// The artifact `hex` names: its digest, the open file and its size, or
/// the answer when there is none.
async fn open(
    state: &ArtifactState,
    hex: &str,
) -> Result<(Digest, tokio::fs::File, u64), Response> {
    let Ok(digest) = hex.parse::<Digest>() else {
        let why = format!("{hex:?} is not a sha256 digest");
        return Err(error(StatusCode::BAD_REQUEST, "bad_digest", why));
    };
    let missing = || {
        error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no artifact {digest}"),
        )
    };
    let file = tokio::fs::File::open(state.store.artifact_path(&digest))
        .await
        .map_err(|_| missing())?;
    let size = file.metadata().await.map_err(|_| missing())?.len();
    Ok((digest, file, size))
}

/// What a request's conditional and range headers ask of an artifact.
enum Wanted {
    /// `len` bytes from `start`, answered with `status` (200 or 206).
    Bytes {
        status: StatusCode,
        start: u64,
        len: u64,
    },
    /// `If-None-Match` names this artifact: it has not changed (it never does).
    NotModified,
    Unsatisfiable,
}

fn wanted(headers: &HeaderMap, etag: &str, size: u64) -> Wanted {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(inm) = text(header::IF_NONE_MATCH) {
        if inm.split(',').any(|t| t.trim() == etag || t.trim() == "*") {
            return Wanted::NotModified;
        }
    }
    // A range whose `If-Range` names another version asks for the whole.
    let if_range_ok = text(header::IF_RANGE).is_none_or(|v| v.trim() == etag);
    let range = text(header::RANGE).filter(|_| if_range_ok);
    match range.map(|r| parse_range(r, size)) {
        None | Some(RangeSpec::Whole) => Wanted::Bytes {
            status: StatusCode::OK,
            start: 0,
            len: size,
        },
        Some(RangeSpec::Part(start, end)) => Wanted::Bytes {
            status: StatusCode::PARTIAL_CONTENT,
            start,
            len: end - start + 1,
        },
        Some(RangeSpec::Unsatisfiable) => Wanted::Unsatisfiable,
    }
}

/// The body: slices of the artifact's shared mapping, else reads of the
/// file; either way counted, so the ledger learns how much was sent.
async fn body(
    state: &ArtifactState,
    digest: Digest,
    mut file: tokio::fs::File,
    size: u64,
    start: u64,
    len: u64,
    report: Report,
) -> Result<Body, Response> {
    if let Some(bytes) = state.maps.get(&digest, &file, size) {
        let (start, end) = (start as usize, (start + len) as usize);
        let chunks = (start..end)
            .step_by(CHUNK)
            .map(move |at| Ok(bytes.slice(at..(at + CHUNK).min(end))));
        let counted = Counted {
            inner: futures_util::stream::iter(chunks),
            sent: 0,
            expected: len,
            report,
        };
        return Ok(Body::from_stream(counted));
    }
    if start > 0 && file.seek(SeekFrom::Start(start)).await.is_err() {
        let why = "cannot read the artifact".into();
        return Err(error(StatusCode::INTERNAL_SERVER_ERROR, "internal", why));
    }
    let counted = Counted {
        inner: ReaderStream::with_capacity(file.take(len), CHUNK),
        sent: 0,
        expected: len,
        report,
    };
    Ok(Body::from_stream(counted))
}

/// Body chunk: a slice of the mapping, or one read when streaming.
const CHUNK: usize = 256 * 1024;

/// Read-only shared mappings of artifact files, one per artifact while any
/// response holds it, unmapped when the last one ends.
///
/// Safe because artifacts are immutable: the store writes a temporary file
/// and renames it into place, never truncating or rewriting a published
/// file (truncation under a mapping would fault the reader). Garbage
/// collection unlinks; a mapping keeps an unlinked file's pages alive.
#[derive(Default)]
struct Maps {
    live: std::sync::Mutex<std::collections::HashMap<Digest, std::sync::Weak<Mapped>>>,
}

impl Maps {
    fn get(&self, digest: &Digest, file: &tokio::fs::File, size: u64) -> Option<Bytes> {
        if size == 0 {
            return Some(Bytes::new());
        }
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mapped) = live.get(digest).and_then(std::sync::Weak::upgrade) {
            if mapped.len as u64 == size {
                return Some(Bytes::from_owner(Shared(mapped)));
            }
        }
        let mapped = std::sync::Arc::new(Mapped::new(file, size)?);
        live.retain(|_, w| w.strong_count() > 0);
        live.insert(*digest, std::sync::Arc::downgrade(&mapped));
        Some(Bytes::from_owner(Shared(mapped)))
    }
}

/// One `mmap(PROT_READ, MAP_SHARED)` of a whole file.
struct Mapped {
    ptr: std::ptr::NonNull<std::ffi::c_void>,
    len: usize,
}

// SAFETY: the mapping is read-only and never mutated; the pointer is only
// read through `as_ref` and unmapped once, in `drop`.
unsafe impl Send for Mapped {}
unsafe impl Sync for Mapped {}

impl Mapped {
    fn new(file: &tokio::fs::File, size: u64) -> Option<Self> {
        use nix::sys::mman::{mmap, MapFlags, ProtFlags};
        let len = usize::try_from(size).ok()?;
        let length = std::num::NonZeroUsize::new(len)?;
        // SAFETY: a fresh read-only mapping of an immutable file (see
        // `Maps`); nothing aliases it mutably.
        let ptr = unsafe {
            mmap(
                None,
                length,
                ProtFlags::PROT_READ,
                MapFlags::MAP_SHARED,
                file,
                0,
            )
        }
        .ok()?;
        Some(Self { ptr, len })
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` came from `mmap` and are unmapped only here.
        let _ = unsafe { nix::sys::mman::munmap(self.ptr, self.len) };
    }
}

/// The owner handed to `Bytes`: keeps the mapping alive while any slice is.
struct Shared(std::sync::Arc<Mapped>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes, alive as long as `self`.
        unsafe { std::slice::from_raw_parts(self.0.ptr.as_ptr() as *const u8, self.0.len) }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum RangeSpec {
    Whole,
    /// Inclusive byte positions.
    Part(u64, u64),
    Unsatisfiable,
}

/// One `bytes=` range against a file of `size` bytes. Anything that is not a
/// single well-formed byte range is answered with the whole file.
fn parse_range(header: &str, size: u64) -> RangeSpec {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeSpec::Whole;
    };
    if spec.contains(',') {
        return RangeSpec::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeSpec::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    let parsed = match (a.is_empty(), b.is_empty()) {
        (true, true) => return RangeSpec::Whole,
        // Suffix: the last n bytes.
        (true, false) => match b.parse::<u64>() {
            Ok(0) => return RangeSpec::Unsatisfiable,
            Ok(n) => (size.saturating_sub(n), size.saturating_sub(1)),
            Err(_) => return RangeSpec::Whole,
        },
        (false, _) => {
            let Ok(start) = a.parse::<u64>() else {
                return RangeSpec::Whole;
            };
            let end = if b.is_empty() {
                size.saturating_sub(1)
            } else {
                match b.parse::<u64>() {
                    Ok(e) if e >= start => e.min(size.saturating_sub(1)),
                    _ => return RangeSpec::Whole,
                }
            };
            (start, end)
        }
    };
    if size == 0 || parsed.0 >= size {
        return RangeSpec::Unsatisfiable;
    }
    RangeSpec::Part(parsed.0, parsed.1)
}

/// A body stream that counts what it sent and tells the hook when it ends,
/// whether by finishing or by being dropped (client gone).
struct Counted<S> {
    inner: S,
    sent: u64,
    expected: u64,
    report: Report,
}

/// Whom to tell how a download ended: the hook, the artifact, the client.
type Report = Option<(Option<Hook>, Digest, Option<SocketAddr>)>;

impl<S> Counted<S> {
    fn finish(&mut self) {
        if let Some((Some(hook), digest, client)) = self.report.take() {
            let completed = self.sent == self.expected;
            if !completed {
                tracing::debug!(%digest, sent = self.sent, expected = self.expected, "artifact download ended early");
            }
            hook(ServedArtifact {
                digest,
                client,
                bytes: self.sent,
                completed,
            });
        }
    }
}

impl<S: Stream<Item = std::io::Result<Bytes>> + Unpin> Stream for Counted<S> {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = Pin::new(&mut self.inner).poll_next(cx);
        match &polled {
            Poll::Ready(Some(Ok(chunk))) => self.sent += chunk.len() as u64,
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.finish(),
            Poll::Pending => {}
        }
        polled
    }
}

impl<S> Drop for Counted<S> {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_range, RangeSpec::*};

    #[test]
    fn range_forms() {
        let size = 1000;
        let table = [
            ("bytes=0-99", Part(0, 99)),
            ("bytes=900-", Part(900, 999)),
            ("bytes=-100", Part(900, 999)),
            ("bytes=-5000", Part(0, 999)),
            ("bytes=990-2000", Part(990, 999)),
            ("bytes=1000-", Unsatisfiable),
            ("bytes=-0", Unsatisfiable),
            ("bytes=0-1,5-6", Whole),
            ("bytes=9-3", Whole),
            ("items=0-1", Whole),
            ("bytes=x-y", Whole),
        ];
        for (h, want) in table {
            assert_eq!(parse_range(h, size), want, "{h}");
        }
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
    }
}
