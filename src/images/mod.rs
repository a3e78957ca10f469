//! The content-addressed image store on disk: files only (the database holds
//! the rows that say which generation is which image).
//!
//! Layout under `data_dir/images/`:
//! - `artifacts/sha256/<hex>`: each artifact (kernel, initrd, rootfs) once,
//!   named by the sha256 of its bytes, mode 0444;
//! - `manifests/<hex>.json`: each image's manifest, named by the sha256 of
//!   its canonical JSON, mode 0444;
//! - `tmp/`: uploads in progress.
//!
//! Invariants: nothing becomes visible under `artifacts/` or `manifests/`
//! until it is complete, fsynced and verified: writes go to `tmp/`, are
//! hashed while written, fsynced, checked against the expected digest, then
//! renamed (and the directory fsynced). A crash at any point leaves at most a
//! file in `tmp/`, which `open` removes. Identical content is stored once.
//! Bodies are streamed, never held whole in memory.

pub mod fetch;
pub mod manifest;
pub mod mirror;
pub mod uki;
pub mod verity;

pub use manifest::{ArtifactRef, Digest, Manifest, VerityRef};

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("content has sha256 {actual}, expected {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("upload exceeds the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("{0}")]
    InvalidManifest(String),
    #[error("{0}")]
    BadDigest(#[from] manifest::BadDigest),
    #[error("{0} not found")]
    NotFound(String),
    #[error("upload interrupted: {0}")]
    Body(String),
    #[error("image store I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// How old an unreferenced file must be before garbage collection takes it
/// without being told it was released.
pub const GC_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

/// What garbage collection removed.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GcReport {
    pub manifests_removed: usize,
    pub artifacts_removed: usize,
    pub bytes_freed: u64,
}

pub struct ImageStore {
    root: PathBuf,
    /// Unique temporary names within this process.
    seq: AtomicU64,
    /// Imports and garbage collection exclude each other: an import holds
    /// it shared from checking its artifacts to recording its generation
    /// ([`ImageStore::importing`]); a collection holds it exclusively from
    /// deciding what to keep to its last deletion
    /// ([`ImageStore::collecting`]).
    collect: tokio::sync::RwLock<()>,
    /// Artifacts an import was told are present (or just uploaded), with
    /// when: between that answer and the manifest that names them, no
    /// collection deletes them (for [`GC_GRACE`]).
    claims: std::sync::Mutex<HashMap<Digest, std::time::Instant>>,
}

/// Claims kept before old ones are pruned.
const MAX_CLAIMS: usize = 65_536;

impl ImageStore {
    /// Opens (creating) the store and removes what a crash left in `tmp/`.
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        for dir in ["artifacts/sha256", "manifests", "tmp"] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        for entry in std::fs::read_dir(root.join("tmp"))? {
            let path = entry?.path();
            tracing::info!(path = %path.display(), "removing an incomplete upload left by a crash");
            let _ = std::fs::remove_file(path);
        }
        Ok(Self {
            root: root.to_path_buf(),
            seq: AtomicU64::new(0),
            collect: tokio::sync::RwLock::new(()),
            claims: Default::default(),
        })
    }

    /// Held by an import from checking its artifacts to recording its
    /// generation: no garbage collection runs meanwhile.
    pub async fn importing(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.collect.read().await
    }

    /// Held by garbage collection from deciding what to keep to its last
    /// deletion: no import records a generation meanwhile.
    pub async fn collecting(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.collect.write().await
    }

    /// The artifact's size, if it is in the store; an import is being told
    /// so and will not upload it again, so no collection takes it for
    /// [`GC_GRACE`] even while nothing refers to it yet.
    pub async fn claim_if_present(&self, d: &Digest) -> Option<u64> {
        let _importing = self.importing().await;
        let size = self.artifact_size(d).await?;
        self.claim(*d);
        Some(size)
    }

    fn claim(&self, d: Digest) {
        let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        if claims.len() >= MAX_CLAIMS {
            claims.retain(|_, at| at.elapsed() < GC_GRACE);
        }
        claims.insert(d, std::time::Instant::now());
    }

    fn claimed(&self, d: &Digest) -> bool {
        let claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        claims.get(d).is_some_and(|at| at.elapsed() < GC_GRACE)
    }

    pub fn artifact_path(&self, d: &Digest) -> PathBuf {
        self.root.join("artifacts/sha256").join(d.to_string())
    }

    /// Whether `verity` is the hash tree of the stored `rootfs`: the tree is
    /// computed again from the store's bytes (with the salt of the manifest
    /// and the UUID of the uploaded hash file's superblock) and must give
    /// the same root hash and the same hash file. `Ok(false)` when an
    /// artifact is not in the store (the import reports that itself).
    pub async fn check_verity(
        &self,
        rootfs: &ArtifactRef,
        verity: &VerityRef,
    ) -> Result<bool, String> {
        let salt = hex::decode(&verity.salt).map_err(|_| "salt is not hex".to_string())?;
        let (data, tree) = (
            self.artifact_path(&rootfs.digest),
            self.artifact_path(&verity.hash_tree.digest),
        );
        let size = rootfs.size;
        let expected = (
            verity.root_hash.to_ascii_lowercase(),
            verity.hash_tree.digest,
        );
        tokio::task::spawn_blocking(move || {
            let (Ok(file), Ok(mut head)) = (std::fs::File::open(&data), std::fs::File::open(&tree))
            else {
                return Ok(false);
            };
            let mut superblock = [0u8; 32];
            std::io::Read::read_exact(&mut head, &mut superblock)
                .map_err(|_| "the hash tree is too short for a verity superblock")?;
            let uuid: [u8; 16] = superblock[16..].try_into().expect("16 bytes");
            let params = verity::VerityParams { salt, uuid };
            let built = verity::build(std::io::BufReader::new(file), size, &params)
                .map_err(|e| e.to_string())?;
            if built.root_hex() != expected.0 {
                return Err(format!(
                    "root hash {} does not match the rootfs (its tree gives {})",
                    expected.0,
                    built.root_hex()
                ));
            }
            if Digest::of(&built.hash_file) != expected.1 {
                return Err("the hash tree is not the rootfs's tree with this salt".into());
            }
            Ok(true)
        })
        .await
        .map_err(|e| e.to_string())?
    }

    fn manifest_path(&self, d: &Digest) -> PathBuf {
        self.root.join("manifests").join(format!("{d}.json"))
    }

    fn tmp_path(&self) -> PathBuf {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{}-{n}", std::process::id()))
    }

    pub async fn artifact_size(&self, d: &Digest) -> Option<u64> {
        tokio::fs::metadata(self.artifact_path(d))
            .await
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    /// Streams a body into the store (see the module invariants). If the
    /// future is dropped (the client hung up), the temporary file goes too.
    pub async fn put_artifact<S, E>(
        &self,
        expected: Option<Digest>,
        max_size: u64,
        body: S,
    ) -> Result<ArtifactInfo, ImageError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let tmp = TmpFile(self.tmp_path());
        let (digest, size) = self.write_tmp(&tmp.0, max_size, body).await?;
        if let Some(expected) = expected.filter(|e| *e != digest) {
            return Err(ImageError::DigestMismatch {
                expected,
                actual: digest,
            });
        }
        let dest = self.artifact_path(&digest);
        // The same bytes may be there already, kept by nothing: claim them
        // under the guard, so a collection either ran before (and this
        // upload puts them back) or runs after the claim (and spares them).
        let _importing = self.importing().await;
        let existed = tokio::fs::metadata(&dest).await.is_ok();
        self.publish(&tmp.0, &dest).await?;
        if existed {
            self.claim(digest);
        }
        Ok(ArtifactInfo { digest, size })
    }

    async fn write_tmp<S, E>(
        &self,
        tmp: &Path,
        max_size: u64,
        mut body: S,
    ) -> Result<(Digest, u64), ImageError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut file = tokio::fs::File::create(tmp).await?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| ImageError::Body(e.to_string()))?;
            size += chunk.len() as u64;
            if size > max_size {
                return Err(ImageError::TooLarge { limit: max_size });
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await?;
        }
        file.sync_all().await?;
        Ok((Digest(hasher.finalize().into()), size))
    }

    /// Makes a complete, fsynced temporary file visible under its final
    /// name, read-only; if the name exists (same content), drops the copy.
    async fn publish(&self, tmp: &Path, dest: &Path) -> Result<(), ImageError> {
        if tokio::fs::metadata(dest).await.is_ok() {
            tokio::fs::remove_file(tmp).await?;
            return Ok(());
        }
        tokio::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o444)).await?;
        tokio::fs::rename(tmp, dest).await?;
        let dir = dest
            .parent()
            .expect("store paths have parents")
            .to_path_buf();
        tokio::task::spawn_blocking(move || std::fs::File::open(dir).and_then(|d| d.sync_all()))
            .await
            .map_err(|e| ImageError::Io(std::io::Error::other(e)))??;
        Ok(())
    }

    /// Stores a manifest after checking every artifact it names is present
    /// with the stated size; returns its digest.
    pub async fn put_manifest(&self, m: &Manifest) -> Result<Digest, ImageError> {
        for a in m.artifacts() {
            match self.artifact_size(&a.digest).await {
                Some(size) if size == a.size => {}
                Some(size) => {
                    return Err(ImageError::InvalidManifest(format!(
                        "{} ({}) is {size} bytes, the manifest says {}",
                        a.name, a.digest, a.size
                    )))
                }
                None => {
                    return Err(ImageError::InvalidManifest(format!(
                        "{} ({}) has not been uploaded",
                        a.name, a.digest
                    )))
                }
            }
        }
        let bytes = m.canonical_json();
        let digest = Digest::of(&bytes);
        // Stored already (a re-import, a standby's copy round): the same
        // bytes, nothing to write.
        if tokio::fs::metadata(self.manifest_path(&digest))
            .await
            .is_ok()
        {
            return Ok(digest);
        }
        let tmp = TmpFile(self.tmp_path());
        let mut file = tokio::fs::File::create(&tmp.0).await?;
        file.write_all(&bytes).await?;
        file.sync_all().await?;
        drop(file);
        self.publish(&tmp.0, &self.manifest_path(&digest)).await?;
        Ok(digest)
    }

    /// Reads a manifest and checks it still hashes to its name.
    pub async fn read_manifest(&self, d: &Digest) -> Result<Manifest, ImageError> {
        let bytes = tokio::fs::read(self.manifest_path(d))
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => ImageError::NotFound(format!("image {d}")),
                _ => ImageError::Io(e),
            })?;
        let actual = Digest::of(&bytes);
        if actual != *d {
            return Err(ImageError::DigestMismatch {
                expected: *d,
                actual,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ImageError::InvalidManifest(e.to_string()))
    }

    /// Garbage collection (call it holding [`ImageStore::collecting`]).
    /// `keep`: every image the database still refers to. `released`: images whose last generation was just deleted. A
    /// manifest or artifact that nothing kept refers to is deleted if it
    /// belonged to a released image, or if it is older than [`GC_GRACE`]:
    /// a younger orphan may be an import in progress (artifacts are
    /// uploaded before the manifest that names them is recorded), and so
    /// is an artifact an import was recently told is present.
    pub async fn gc(
        &self,
        keep: &HashSet<Digest>,
        released: &HashSet<Digest>,
    ) -> Result<GcReport, ImageError> {
        let mut report = GcReport::default();
        let mut referenced = HashSet::new();
        for d in keep {
            if let Ok(m) = self.read_manifest(d).await {
                referenced.extend(m.artifacts().map(|a| a.digest));
            }
        }
        let mut freed = HashSet::new();
        for d in released.difference(keep) {
            if let Ok(m) = self.read_manifest(d).await {
                freed.extend(m.artifacts().map(|a| a.digest));
            }
        }
        for (dir, is_manifest) in [("manifests", true), ("artifacts/sha256", false)] {
            let mut entries = tokio::fs::read_dir(self.root.join(dir)).await?;
            while let Some(entry) = entries.next_entry().await? {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Ok(d) = name.trim_end_matches(".json").parse::<Digest>() else {
                    continue;
                };
                let (live, let_go) = if is_manifest {
                    (keep.contains(&d), released.contains(&d))
                } else {
                    (referenced.contains(&d), freed.contains(&d))
                };
                let meta = entry.metadata().await?;
                let old = meta
                    .modified()
                    .ok()
                    .and_then(|m| m.elapsed().ok())
                    .is_some_and(|age| age > GC_GRACE);
                let claimed = !is_manifest && self.claimed(&d);
                if live || claimed || !(let_go || old) {
                    continue;
                }
                tokio::fs::remove_file(entry.path()).await?;
                report.bytes_freed += meta.len();
                if is_manifest {
                    report.manifests_removed += 1;
                } else {
                    report.artifacts_removed += 1;
                }
            }
        }
        Ok(report)
    }
}

/// A temporary upload file, removed when dropped (after a successful
/// publish it no longer exists, and the removal is a no-op).
struct TmpFile(PathBuf);

impl Drop for TmpFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A stored artifact.
#[derive(Debug, Clone, Copy)]
pub struct ArtifactInfo {
    pub digest: Digest,
    pub size: u64,
}

#[cfg(test)]
mod tests;
