//! Copying artifacts from a peer server: the standby of an HA pair must hold
//! every artifact the active server holds before it can take over, so it
//! fetches the ones it lacks from the peer's `GET /artifacts/sha256/<hex>`
//! (see `http/artifacts.rs`) into its own [`ImageStore`].
//!
//! Invariants: every byte is verified by digest before it is visible in the
//! store: bodies go through [`ImageStore::put_artifact`] with the expected
//! digest, which hashes while writing and publishes nothing that differs,
//! and with the reference's size as the limit, so a longer body is cut off.
//! The peer is trusted for availability, never for content: wrong bytes, a
//! short body, a 5xx or a dropped connection are retried (at most
//! [`ATTEMPTS`] attempts), then reported; a 404 is reported at once. At most
//! [`CONCURRENCY`] downloads run at a time.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{stream, StreamExt};
use reqwest::{StatusCode, Url};
use serde::Serialize;

use super::{ArtifactRef, Digest, ImageError, ImageStore};

/// Downloads in flight at once.
pub const CONCURRENCY: usize = 2;
/// Waits between the attempts at one artifact; one more attempt than waits.
const BACKOFF: [Duration; 2] = [Duration::from_millis(200), Duration::from_millis(400)];
/// Attempts at one artifact before it is reported failed.
pub const ATTEMPTS: usize = BACKOFF.len() + 1;
/// How long connecting to the peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("upstream {url:?} is not an http(s)://host[:port] URL: {reason}")]
    BadUpstream { url: String, reason: String },
    #[error("HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// What one [`Mirror::fill`] did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct MirrorReport {
    /// Artifacts the store already held, with the right size.
    pub present: usize,
    /// Artifacts fetched and stored.
    pub fetched: usize,
    /// Bytes fetched and stored.
    pub bytes: u64,
    /// Artifacts not stored, with why (after the retries).
    pub failed: Vec<(Digest, String)>,
}

/// Why one attempt at one artifact failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("request to the peer: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("the peer answered {0}")]
    Status(StatusCode),
    #[error("{0}")]
    Store(#[from] ImageError),
    #[error("the store holds {stored:?} bytes, the reference says {expected}")]
    Size { stored: Option<u64>, expected: u64 },
}

impl FetchError {
    /// Whether another attempt may succeed: the peer or the network
    /// misbehaved, rather than the reference or the local store.
    fn is_transient(&self) -> bool {
        match self {
            Self::Transport(_) => true,
            Self::Status(status) => status.is_server_error(),
            Self::Store(ImageError::DigestMismatch { .. } | ImageError::Body(_)) => true,
            Self::Store(_) | Self::Size { .. } => false,
        }
    }
}

/// Fetches artifacts from one peer into the local store.
pub struct Mirror {
    client: reqwest::Client,
    /// `scheme://host[:port]`, no trailing slash.
    upstream: String,
    images: Arc<ImageStore>,
}

impl Mirror {
    /// `upstream` is the peer's HTTP base, `http(s)://host[:port]`;
    /// `timeout` bounds each artifact's request, body included.
    pub fn new(
        upstream: &str,
        images: Arc<ImageStore>,
        timeout: Duration,
    ) -> Result<Self, MirrorError> {
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(timeout)
            // A peer serves its own artifacts: anything but 200 is an error.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            client,
            upstream: base_url(upstream)?,
            images,
        })
    }

    /// Fetches every artifact of `wanted` that the store lacks (or holds at
    /// another size). Those present are claimed (see
    /// [`ImageStore::claim_if_present`]), and so are those fetched, so no
    /// garbage collection takes them before the manifests naming them are
    /// recorded (within [`super::GC_GRACE`]).
    pub async fn fill(&self, wanted: &[ArtifactRef]) -> MirrorReport {
        let mut report = MirrorReport::default();
        let mut missing = Vec::new();
        for want in unique(wanted) {
            if self.images.claim_if_present(&want.digest).await == Some(want.size) {
                report.present += 1;
            } else {
                missing.push(want);
            }
        }
        // Owned items and a named async fn (not a closure over references):
        // the future stays `Send` for every lifetime, so a caller may spawn
        // it or box it as `Send`.
        let missing: Vec<ArtifactRef> = missing.into_iter().cloned().collect();
        let outcomes: Vec<_> = stream::iter(missing)
            .map(|want| self.fetch_owned(want))
            .buffered(CONCURRENCY)
            .collect()
            .await;
        for (digest, outcome) in outcomes {
            match outcome {
                Ok(bytes) => {
                    report.fetched += 1;
                    report.bytes += bytes;
                }
                Err(e) => report.failed.push((digest, e.to_string())),
            }
        }
        report
    }

    async fn fetch_owned(&self, want: ArtifactRef) -> (Digest, Result<u64, FetchError>) {
        (want.digest, self.fetch(&want).await)
    }

    /// One artifact, with the retries; logs the outcome.
    async fn fetch(&self, want: &ArtifactRef) -> Result<u64, FetchError> {
        let mut waits = BACKOFF.iter();
        let mut attempt = 1;
        loop {
            let error = match self.fetch_once(want).await {
                Ok(bytes) => {
                    tracing::info!(digest = %want.digest, name = %want.name, bytes, "artifact mirrored");
                    return Ok(bytes);
                }
                Err(e) => e,
            };
            match waits.next().filter(|_| error.is_transient()) {
                Some(wait) => {
                    tracing::debug!(digest = %want.digest, attempt, %error, "mirroring an artifact failed, retrying");
                    tokio::time::sleep(*wait).await;
                    attempt += 1;
                }
                None => {
                    tracing::warn!(digest = %want.digest, name = %want.name, attempt, %error, "artifact not mirrored");
                    return Err(error);
                }
            }
        }
    }

    /// One attempt: the bytes stored.
    async fn fetch_once(&self, want: &ArtifactRef) -> Result<u64, FetchError> {
        let url = format!("{}/artifacts/sha256/{}", self.upstream, want.digest);
        let response = self.client.get(url).send().await?;
        if response.status() != StatusCode::OK {
            return Err(FetchError::Status(response.status()));
        }
        let body = response.bytes_stream();
        let stored = self
            .images
            .put_artifact(Some(want.digest), want.size, body)
            .await?;
        // Right digest, wrong size: the reference is wrong (a shorter body
        // hashing to the digest), or the store's copy is (it is kept).
        let size = self.images.claim_if_present(&want.digest).await;
        if size != Some(want.size) {
            return Err(FetchError::Size {
                stored: size,
                expected: want.size,
            });
        }
        Ok(stored.size)
    }

    /// One artifact known by its digest alone (a cache's miss): one
    /// attempt, no retry (the caller decides), verified like every fill.
    /// The size is not known beforehand, so `limit` bounds the body: a
    /// `Content-Length` over it is refused before any byte is read, and a
    /// longer body is cut off.
    pub async fn fetch_digest(
        &self,
        digest: Digest,
        limit: u64,
    ) -> Result<super::ArtifactInfo, FetchError> {
        let url = format!("{}/artifacts/sha256/{digest}", self.upstream);
        let response = self.client.get(url).send().await?;
        if response.status() != StatusCode::OK {
            return Err(FetchError::Status(response.status()));
        }
        if response.content_length().is_some_and(|len| len > limit) {
            return Err(ImageError::TooLarge { limit }.into());
        }
        let body = response.bytes_stream();
        Ok(self.images.put_artifact(Some(digest), limit, body).await?)
    }
}

/// `http(s)://host[:port]` without a trailing slash, or why not.
fn base_url(upstream: &str) -> Result<String, MirrorError> {
    let bad = |reason: &str| MirrorError::BadUpstream {
        url: upstream.to_string(),
        reason: reason.to_string(),
    };
    let url = Url::parse(upstream).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the scheme is not http or https"));
    }
    if url.host().is_none() {
        return Err(bad("there is no host"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(bad("it has a path, query or fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("it has credentials"));
    }
    Ok(url.origin().ascii_serialization())
}

/// `wanted` without repeated digests, first occurrence kept.
fn unique(wanted: &[ArtifactRef]) -> Vec<&ArtifactRef> {
    let mut seen = HashSet::new();
    wanted.iter().filter(|a| seen.insert(a.digest)).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::extract::{Path, State};
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use sha2::{Digest as _, Sha256};

    use super::*;

    /// A peer serving fixed bodies by hex digest, which answers 500 to its
    /// first `fail_first` requests and counts every request.
    #[derive(Clone, Default)]
    struct Peer {
        bodies: Arc<HashMap<String, Vec<u8>>>,
        fail_first: Arc<AtomicUsize>,
        requests: Arc<AtomicUsize>,
    }

    impl Peer {
        fn serving(bodies: &[(&ArtifactRef, &[u8])]) -> Self {
            let bodies = bodies
                .iter()
                .map(|(a, body)| (a.digest.to_string(), body.to_vec()))
                .collect();
            Self {
                bodies: Arc::new(bodies),
                ..Self::default()
            }
        }

        fn requests(&self) -> usize {
            self.requests.load(Ordering::SeqCst)
        }

        /// Serves on loopback; the base URL.
        async fn start(&self) -> String {
            let app = axum::Router::new()
                .route("/artifacts/sha256/{hex}", axum::routing::get(serve))
                .with_state(self.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await });
            format!("http://{addr}")
        }
    }

    async fn serve(State(peer): State<Peer>, Path(hex): Path<String>) -> Response {
        peer.requests.fetch_add(1, Ordering::SeqCst);
        let failing = peer
            .fail_first
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        match peer.bodies.get(&hex) {
            _ if failing => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            Some(body) => body.clone().into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        }
    }

    fn artifact(name: &str, bytes: &[u8]) -> ArtifactRef {
        ArtifactRef {
            name: name.into(),
            digest: Digest(Sha256::digest(bytes).into()),
            size: bytes.len() as u64,
        }
    }

    fn store() -> (tempfile::TempDir, Arc<ImageStore>) {
        let dir = tempfile::TempDir::new().unwrap();
        let images = ImageStore::open(&dir.path().join("images")).unwrap();
        (dir, Arc::new(images))
    }

    fn mirror(base: &str, images: &Arc<ImageStore>) -> Mirror {
        Mirror::new(base, images.clone(), Duration::from_secs(10)).unwrap()
    }

    fn stored(images: &ImageStore, a: &ArtifactRef) -> Option<Vec<u8>> {
        std::fs::read(images.artifact_path(&a.digest)).ok()
    }

    fn failed_digests(report: &MirrorReport) -> Vec<Digest> {
        report.failed.iter().map(|(d, _)| *d).collect()
    }

    #[tokio::test]
    async fn fetches_what_is_missing_and_skips_what_is_present() {
        let (kernel, initrd, rootfs) = (b"kernel".as_slice(), b"initrd".as_slice(), b"rootfs");
        let refs = [
            artifact("vmlinuz", kernel),
            artifact("initrd.img", initrd),
            artifact("rootfs", rootfs),
        ];
        let peer = Peer::serving(&[(&refs[0], kernel), (&refs[1], initrd), (&refs[2], rootfs)]);
        let (_dir, images) = store();
        let body = futures_util::stream::iter([Ok::<_, std::io::Error>(rootfs.to_vec().into())]);
        images.put_artifact(None, 100, body).await.unwrap();

        let wanted = [refs.as_slice(), &refs[..1]].concat();
        let report = mirror(&peer.start().await, &images).fill(&wanted).await;

        assert_eq!((report.present, report.fetched), (1, 2), "{report:?}");
        assert_eq!(report.bytes, (kernel.len() + initrd.len()) as u64);
        assert!(report.failed.is_empty(), "{report:?}");
        assert_eq!(stored(&images, &refs[0]).as_deref(), Some(kernel));
        assert_eq!(stored(&images, &refs[1]).as_deref(), Some(initrd));
        assert_eq!(peer.requests(), 2);
    }

    #[tokio::test]
    async fn wrong_bytes_are_retried_then_reported_and_never_stored() {
        let a = artifact("vmlinuz", b"the real kernel");
        let peer = Peer::serving(&[(&a, b"an evil  kernel")]);
        let (_dir, images) = store();

        let report = mirror(&peer.start().await, &images)
            .fill(std::slice::from_ref(&a))
            .await;

        assert_eq!(failed_digests(&report), [a.digest]);
        assert!(report.failed[0].1.contains("expected"), "{report:?}");
        assert_eq!(report.fetched, 0);
        assert_eq!(peer.requests(), ATTEMPTS);
        assert_eq!(stored(&images, &a), None);
    }

    #[tokio::test]
    async fn a_404_is_reported_after_one_request() {
        let a = artifact("vmlinuz", b"kernel");
        let peer = Peer::default();
        let (_dir, images) = store();

        let report = mirror(&peer.start().await, &images)
            .fill(std::slice::from_ref(&a))
            .await;

        assert_eq!(failed_digests(&report), [a.digest]);
        assert!(report.failed[0].1.contains("404"), "{report:?}");
        assert_eq!(peer.requests(), 1);
        assert_eq!(stored(&images, &a), None);
    }

    #[tokio::test]
    async fn a_body_longer_than_the_reference_is_cut_off() {
        let a = artifact("vmlinuz", b"kernel");
        let peer = Peer::serving(&[(&a, b"kernel and then some")]);
        let (_dir, images) = store();

        let report = mirror(&peer.start().await, &images)
            .fill(std::slice::from_ref(&a))
            .await;

        assert_eq!(failed_digests(&report), [a.digest]);
        assert!(report.failed[0].1.contains("limit"), "{report:?}");
        assert_eq!(stored(&images, &a), None);
    }

    #[tokio::test]
    async fn a_5xx_is_retried() {
        let a = artifact("vmlinuz", b"kernel");
        let peer = Peer::serving(&[(&a, b"kernel")]);
        peer.fail_first.store(1, Ordering::SeqCst);
        let (_dir, images) = store();

        let report = mirror(&peer.start().await, &images)
            .fill(std::slice::from_ref(&a))
            .await;

        assert_eq!((report.fetched, report.bytes), (1, 6), "{report:?}");
        assert!(report.failed.is_empty(), "{report:?}");
        assert_eq!(peer.requests(), 2);
        assert_eq!(stored(&images, &a).as_deref(), Some(b"kernel".as_slice()));
    }

    /// The standby spawns its fill: the future must be `Send`.
    #[tokio::test]
    async fn a_fill_runs_in_a_spawned_task() {
        let a = artifact("vmlinuz", b"kernel");
        let peer = Peer::serving(&[(&a, b"kernel")]);
        let (_dir, images) = store();
        let mirror = mirror(&peer.start().await, &images);

        let report = tokio::spawn(async move { mirror.fill(&[a]).await })
            .await
            .unwrap();

        assert_eq!(report.fetched, 1, "{report:?}");
    }

    #[test]
    fn upstream_must_be_an_http_origin() {
        let (_dir, images) = store();
        let new = |url: &str| Mirror::new(url, images.clone(), Duration::from_secs(1));
        for bad in [
            "ftp://peer",
            "file:///srv",
            "peer:8080",
            "not a url",
            "http://peer/ironboot",
            "http://peer/?x=1",
            "http://user:pw@peer",
        ] {
            assert!(
                matches!(new(bad), Err(MirrorError::BadUpstream { .. })),
                "{bad}"
            );
        }
        assert_eq!(
            new("http://peer:8080/").unwrap().upstream,
            "http://peer:8080"
        );
        assert_eq!(
            new("https://10.0.0.2").unwrap().upstream,
            "https://10.0.0.2"
        );
    }
}
