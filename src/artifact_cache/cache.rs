//! The cache's one question per request: does the directory hold this
//! digest's bytes, verified? If not, make it so (fetch, or delete a bad copy
//! and fetch), once per digest however many requests ask at the same time.
//! The files live in an [`ImageStore`]; the [`Index`] says which were
//! verified as they are now, and which to evict.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use super::counters::Counters;
use super::index::{Index, Stamp};
use super::{CacheError, Settings};
use crate::images::mirror::{FetchError, Mirror};
use crate::images::{Digest, ImageError, ImageStore};

/// How long one fill may take, body included (a root image of several GiB
/// over a slow uplink still fits).
const FILL_TIMEOUT: Duration = Duration::from_secs(3600);
/// Bytes read at a time when a file is hashed again.
const HASH_CHUNK: usize = 1 << 20;

/// Why an artifact cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("the upstream has no artifact {0}")]
    NotFound(Digest),
    #[error("artifact {digest} is larger than the whole cache (--max-size {max} bytes)")]
    TooLarge { digest: Digest, max: u64 },
    #[error("the upstream could not supply artifact {digest}: {cause}")]
    Upstream { digest: Digest, cause: FetchError },
    #[error("cache I/O on artifact {digest}: {cause}")]
    Io {
        digest: Digest,
        cause: std::io::Error,
    },
}

/// What a look at a cached file found.
enum Check {
    /// Its bytes hash to its name (now, or as it was when last hashed).
    Good,
    Absent,
    /// Its bytes hash to something else.
    Corrupt,
}

pub struct Cache {
    images: Arc<ImageStore>,
    /// The only peer the cache talks to.
    upstream: Mirror,
    index: Mutex<Index>,
    flights: Flights,
    pub counters: Arc<Counters>,
}

impl Cache {
    /// Opens the directory (creating its layout), indexes the files a
    /// previous run left (unverified, oldest first), and evicts down to the
    /// bound if it shrank.
    pub async fn open(settings: &Settings) -> Result<Self, CacheError> {
        let images = ImageStore::open(&settings.dir).map_err(|source| CacheError::Dir {
            dir: settings.dir.clone(),
            source,
        })?;
        let images = Arc::new(images);
        let upstream = Mirror::new(&settings.upstream, images.clone(), FILL_TIMEOUT)?;
        // The store names no directory: its artifacts' is any one's parent.
        let any = images.artifact_path(&Digest([0; 32]));
        let dir = any.parent().map(PathBuf::from).unwrap_or_default();
        let found = tokio::task::spawn_blocking(move || scan(&dir))
            .await
            .map_err(std::io::Error::other)??;
        let mut index = Index::new(settings.max_size);
        for (digest, len) in found {
            index.seed(digest, len);
        }
        let cache = Self {
            images,
            upstream,
            index: Mutex::new(index),
            flights: Flights::default(),
            counters: Arc::default(),
        };
        cache.settle(None).await;
        Ok(cache)
    }

    pub fn images(&self) -> Arc<ImageStore> {
        self.images.clone()
    }

    /// Bytes of the artifacts held.
    pub fn bytes(&self) -> u64 {
        self.index().total()
    }

    pub fn artifacts(&self) -> usize {
        self.index().len()
    }

    /// Makes the directory hold `digest`'s bytes, verified, unless refused.
    /// A hit whose file is as it was when last hashed takes no lock but the
    /// index's; anything else waits its turn for the digest, so one request
    /// fetches and the others find its file.
    pub async fn ensure(&self, digest: Digest) -> Result<(), Refusal> {
        if let Some(stamp) = self.stat(&digest).await? {
            if self.index().is_verified(&digest, &stamp) {
                self.hit(&digest);
                return Ok(());
            }
        }
        let flight = self.flights.join(digest);
        let _turn = flight.lock().await;
        match self.check(&digest).await? {
            Check::Good => {
                self.hit(&digest);
                Ok(())
            }
            Check::Absent => self.fill(digest).await,
            Check::Corrupt => {
                self.discard(&digest).await?;
                self.fill(digest).await
            }
        }
    }

    fn hit(&self, digest: &Digest) {
        Counters::inc(&self.counters.hits);
        self.index().touch(digest);
    }

    /// The file as it is now; `None` if there is none.
    async fn stat(&self, digest: &Digest) -> Result<Option<Stamp>, Refusal> {
        match tokio::fs::metadata(self.images.artifact_path(digest)).await {
            Ok(meta) => Ok(Some(Stamp::of(&meta))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(cause) => Err(Refusal::Io {
                digest: *digest,
                cause,
            }),
        }
    }

    /// Whether the file holds the right bytes, hashing it unless it is as
    /// it was when last hashed. The stamp is taken before hashing, so a
    /// change made while hashing is seen by the next request.
    async fn check(&self, digest: &Digest) -> Result<Check, Refusal> {
        let Some(stamp) = self.stat(digest).await? else {
            self.index().remove(digest);
            return Ok(Check::Absent);
        };
        if self.index().is_verified(digest, &stamp) {
            return Ok(Check::Good);
        }
        let path = self.images.artifact_path(digest);
        let hashed = tokio::task::spawn_blocking(move || hash_file(&path)).await;
        let io = |cause| Refusal::Io {
            digest: *digest,
            cause,
        };
        match hashed.map_err(|e| io(std::io::Error::other(e)))? {
            Ok(actual) if actual == *digest => {
                self.index().verified(*digest, stamp);
                self.settle(Some(digest)).await;
                Ok(Check::Good)
            }
            Ok(_) => Ok(Check::Corrupt),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Check::Absent),
            Err(e) => Err(io(e)),
        }
    }

    /// Deletes a file whose bytes are not its name's; they are never served.
    async fn discard(&self, digest: &Digest) -> Result<(), Refusal> {
        Counters::inc(&self.counters.corrupt);
        tracing::warn!(%digest, "cached artifact corrupt: deleted, fetching it again");
        self.index().remove(digest);
        match tokio::fs::remove_file(self.images.artifact_path(digest)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Refusal::Io {
                digest: *digest,
                cause: e,
            }),
            _ => Ok(()),
        }
    }

    /// Fetches `digest` from the upstream into the directory (verified
    /// while written, see [`ImageStore::put_artifact`]), then evicts.
    async fn fill(&self, digest: Digest) -> Result<(), Refusal> {
        Counters::inc(&self.counters.misses);
        let started = Instant::now();
        let max = self.index().max();
        let info = match self.upstream.fetch_digest(digest, max).await {
            Ok(info) => info,
            Err(cause) => return Err(self.refused(digest, max, cause)),
        };
        let Some(stamp) = self.stat(&digest).await? else {
            let cause = std::io::Error::other("stored, then gone before it was indexed");
            return Err(Refusal::Io { digest, cause });
        };
        Counters::add(&self.counters.bytes_from_upstream, info.size);
        self.index().verified(digest, stamp);
        let ms = started.elapsed().as_millis() as u64;
        tracing::info!(%digest, bytes = info.size, ms, "artifact cached from the upstream");
        self.settle(Some(&digest)).await;
        Ok(())
    }

    /// A failed fill, counted, logged and classified.
    fn refused(&self, digest: Digest, max: u64, cause: FetchError) -> Refusal {
        let refusal = match cause {
            FetchError::Status(status) if status == reqwest::StatusCode::NOT_FOUND => {
                Refusal::NotFound(digest)
            }
            FetchError::Store(ImageError::TooLarge { .. }) => {
                Counters::inc(&self.counters.too_large);
                tracing::warn!(%digest, max, "artifact larger than the cache: refused");
                return Refusal::TooLarge { digest, max };
            }
            FetchError::Store(ImageError::Io(cause)) => return Refusal::Io { digest, cause },
            cause => Refusal::Upstream { digest, cause },
        };
        Counters::inc(&self.counters.upstream_errors);
        tracing::warn!(%digest, error = %refusal, "artifact not cached");
        refusal
    }

    /// Evicts least recently used files (never `keep`) until the cache is
    /// within its bound. A file being served stays readable after its
    /// unlink (the response holds it open).
    async fn settle(&self, keep: Option<&Digest>) {
        let victims = self.index().evict(keep);
        for (digest, bytes) in victims {
            Counters::inc(&self.counters.evictions);
            // Routine for a cache: the evictions counter shows thrashing.
            tracing::info!(%digest, bytes, "artifact evicted (least recently used)");
            let path = self.images.artifact_path(&digest);
            if let Err(e) = tokio::fs::remove_file(&path).await {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(%digest, error = %e, "evicted artifact not deleted");
                }
            }
        }
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One lock per digest being looked at or fetched, held by whoever's turn
/// it is; gone when the last holder is (the map keeps weak references).
#[derive(Default)]
struct Flights(Mutex<HashMap<Digest, Weak<tokio::sync::Mutex<()>>>>);

impl Flights {
    fn join(&self, digest: Digest) -> Arc<tokio::sync::Mutex<()>> {
        let mut flights = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(flight) = flights.get(&digest).and_then(Weak::upgrade) {
            return flight;
        }
        flights.retain(|_, w| w.strong_count() > 0);
        let flight = Arc::default();
        flights.insert(digest, Arc::downgrade(&flight));
        flight
    }
}

/// The artifacts a previous run left: digest and size, oldest first (by
/// modification time, which is when each was stored).
fn scan(dir: &std::path::Path) -> std::io::Result<Vec<(Digest, u64)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(digest) = entry.file_name().to_string_lossy().parse::<Digest>() else {
            continue;
        };
        let meta = entry.metadata()?;
        if meta.is_file() {
            found.push((meta.modified()?, digest, meta.len()));
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, d, len)| (d, len)).collect())
}

/// The sha256 of a whole file, read in large chunks (a blocking call).
fn hash_file(path: &std::path::Path) -> std::io::Result<Digest> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_CHUNK];
    loop {
        match file.read(&mut buf)? {
            0 => return Ok(Digest(hasher.finalize().into())),
            n => hasher.update(&buf[..n]),
        }
    }
}
