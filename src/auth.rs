//! API tokens: bearer tokens with a role (`admin` may change things, `read`
//! may only look), stored as their sha256 so the database never holds one.
//!
//! If no token exists at start, an admin token is generated and written to
//! `data_dir/admin.token` with mode 0600; the path is printed, and the CLI
//! reads that file when it runs on the same machine. A token already in that
//! file (put there by provisioning, e.g. the Vagrant lab's server VM) is
//! adopted instead, so the first admin token can be known before start.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::Serialize;

use crate::ledger::now_ms;
use crate::secret::token_hash;
use crate::store::tokens::{Revoked, TokenRow};
use crate::store::{Store, StoreError};

pub use crate::domain::Role;

/// A token as listed (never its secret).
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    pub id: i64,
    pub name: String,
    pub role: Role,
    pub created_ms: i64,
    pub revoked_ms: Option<i64>,
}

impl From<TokenRow> for TokenInfo {
    fn from(row: TokenRow) -> Self {
        Self {
            role: row.role(),
            id: row.id,
            name: row.name,
            created_ms: row.created_ms,
            revoked_ms: row.revoked_ms,
        }
    }
}

/// Who is calling.
#[derive(Debug, Clone, Serialize)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error("it is the last admin token; create another admin token first")]
    LastAdmin,
    #[error("{path}: {reason}")]
    PreseededToken { path: String, reason: &'static str },
    #[error("cannot write {path}: {source}")]
    TokenFile {
        path: String,
        source: std::io::Error,
    },
}

/// The tokens, by hash, in memory (checked on every API request).
pub struct Tokens {
    by_hash: RwLock<HashMap<String, Principal>>,
}

/// The file the bootstrap admin token is written to.
pub fn admin_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.token")
}

impl Tokens {
    /// Loads live tokens; creates the first admin token if there is none.
    /// Returns the path of a newly written token file.
    pub async fn load_or_bootstrap(
        store: &Store,
        data_dir: &Path,
    ) -> Result<(Self, Option<PathBuf>), AuthError> {
        let mut by_hash = HashMap::new();
        for row in store.live_tokens().await? {
            let role = row.role();
            by_hash.insert(
                row.hash,
                Principal {
                    name: row.name,
                    role,
                },
            );
        }
        let mut written = None;
        if by_hash.is_empty() {
            let path = admin_token_path(data_dir);
            let token = match preseeded_token(&path)? {
                Some(token) => token,
                None => {
                    let token = crate::secret::new_secret();
                    write_secret(&path, &token).map_err(|source| AuthError::TokenFile {
                        path: path.display().to_string(),
                        source,
                    })?;
                    token
                }
            };
            store
                .insert_token("admin", &token_hash(&token), Role::Admin, now_ms())
                .await?;
            by_hash.insert(
                token_hash(&token),
                Principal {
                    name: "admin".into(),
                    role: Role::Admin,
                },
            );
            written = Some(path);
        }
        Ok((
            Self {
                by_hash: RwLock::new(by_hash),
            },
            written,
        ))
    }

    /// Creates a token; returns its row and the secret, which is shown once
    /// and never stored (the database and memory keep its sha256).
    pub async fn create(
        &self,
        store: &Store,
        name: &str,
        role: Role,
    ) -> Result<(TokenInfo, String), AuthError> {
        let secret = crate::secret::new_secret();
        let hash = token_hash(&secret);
        let now = now_ms();
        let id = store.insert_token(name, &hash, role, now).await?;
        self.by_hash.write().expect("tokens lock").insert(
            hash,
            Principal {
                name: name.to_string(),
                role,
            },
        );
        let info = TokenInfo {
            id,
            name: name.to_string(),
            role,
            created_ms: now,
            revoked_ms: None,
        };
        Ok((info, secret))
    }

    /// Every token ever made (revoked ones too, with when), oldest first.
    pub async fn list(store: &Store) -> Result<Vec<TokenInfo>, AuthError> {
        Ok(store
            .tokens()
            .await?
            .into_iter()
            .map(TokenInfo::from)
            .collect())
    }

    /// Revokes live token `id`, unless it is the last admin token. `None`: no
    /// live token has this id.
    pub async fn revoke(&self, store: &Store, id: i64) -> Result<Option<TokenInfo>, AuthError> {
        match store.revoke_token(id, now_ms()).await? {
            Revoked::Now(row) => {
                self.by_hash.write().expect("tokens lock").remove(&row.hash);
                Ok(Some(TokenInfo::from(row)))
            }
            Revoked::NoSuchToken => Ok(None),
            Revoked::LastAdmin => Err(AuthError::LastAdmin),
        }
    }

    pub fn check(&self, token: &str) -> Option<Principal> {
        self.by_hash
            .read()
            .expect("tokens lock")
            .get(&token_hash(token))
            .cloned()
    }
}

/// A token an operator put in `admin.token` before the first start: at least
/// 32 characters of `[A-Za-z0-9_-]` (a guessable one is refused, not used),
/// in a regular file (not a symlink) that only its owner can read, and
/// that owner is this process's user: a token others could read, or a file
/// someone else planted, is refused rather than adopted.
fn preseeded_token(path: &Path) -> Result<Option<String>, AuthError> {
    use std::os::unix::fs::MetadataExt;
    let refuse = |reason| AuthError::PreseededToken {
        path: path.display().to_string(),
        reason,
    };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(AuthError::TokenFile {
                path: path.display().to_string(),
                source,
            })
        }
    };
    if !meta.file_type().is_file() {
        return Err(refuse(
            "a preseeded admin token must be a regular file, not a symlink",
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(refuse(
            "a preseeded admin token must be readable by its owner only (chmod 600)",
        ));
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(refuse(
            "a preseeded admin token must belong to the server's user",
        ));
    }
    let text = read_nofollow(path).map_err(|source| AuthError::TokenFile {
        path: path.display().to_string(),
        source,
    })?;
    let token = text.trim();
    if token.len() < 32 {
        return Err(refuse(
            "a preseeded admin token must be at least 32 characters",
        ));
    }
    if !token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(refuse(
            "a preseeded admin token may hold only A-Z a-z 0-9 - _",
        ));
    }
    Ok(Some(token.to_string()))
}

/// Reads a small file without following a symlink in its last component
/// (the check above and this open see the same file).
fn read_nofollow(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)?
        .take(4096)
        .read_to_string(&mut text)?;
    Ok(text)
}

/// Writes a secret to a new file readable by its owner only, atomically:
/// a temporary file with a fresh random name, created with `O_EXCL` and
/// `O_NOFOLLOW` (so a file or symlink planted under that name is never
/// written through), synced, renamed over `path` (a rename replaces a
/// symlink at `path` instead of following it), and the directory synced so
/// the name survives a crash.
fn write_secret(path: &Path, secret: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("secret"),
        &crate::secret::new_secret()[..16]
    ));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(secret.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn bootstrap(dir: &Path) -> Result<(Tokens, Option<PathBuf>), AuthError> {
        let store = Store::open(dir).await.expect("store");
        Tokens::load_or_bootstrap(&store, dir).await
    }

    #[tokio::test]
    async fn the_first_start_writes_an_admin_token_or_adopts_a_preseeded_one() {
        let fresh = tempfile::tempdir().unwrap();
        let (tokens, written) = bootstrap(fresh.path()).await.unwrap();
        let token = std::fs::read_to_string(written.unwrap()).unwrap();
        assert_eq!(tokens.check(token.trim()).unwrap().role, Role::Admin);

        let seeded = tempfile::tempdir().unwrap();
        let secret = "lab-0123456789abcdef0123456789abcdef";
        write_private(&admin_token_path(seeded.path()), &format!("{secret}\n"));
        let (tokens, _) = bootstrap(seeded.path()).await.unwrap();
        assert_eq!(tokens.check(secret).unwrap().role, Role::Admin);
        // Adopted once: the next start finds it in the database.
        let (tokens, written) = bootstrap(seeded.path()).await.unwrap();
        assert!(written.is_none());
        assert!(tokens.check(secret).is_some());

        for bad in ["short", "has spaces in it but is long enough to pass"] {
            let dir = tempfile::tempdir().unwrap();
            write_private(&admin_token_path(dir.path()), bad);
            let err = bootstrap(dir.path()).await.err().expect("refused");
            assert!(err.to_string().contains("admin.token"), "{err}");
        }
    }

    fn write_private(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
    }

    #[tokio::test]
    async fn the_token_file_is_never_written_through_a_planted_name() {
        use std::os::unix::fs::PermissionsExt;
        // The old fixed temporary name, and the token's own name, as
        // symlinks to a file the attacker wants overwritten or read.
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("admin.tmp")).unwrap();
        let (_, written) = bootstrap(dir.path()).await.unwrap();
        let written = written.unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        let meta = std::fs::symlink_metadata(&written).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);

        let dir = tempfile::tempdir().unwrap();
        let secret = "lab-0123456789abcdef0123456789abcdef";
        std::fs::write(&victim, secret).unwrap();
        std::os::unix::fs::symlink(&victim, admin_token_path(dir.path())).unwrap();
        let err = bootstrap(dir.path())
            .await
            .err()
            .expect("a symlink is refused");
        assert!(err.to_string().contains("symlink"), "{err}");

        // A token file others can read is refused, not adopted.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(admin_token_path(dir.path()), secret).unwrap();
        std::fs::set_permissions(
            admin_token_path(dir.path()),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let err = bootstrap(dir.path()).await.err().expect("0644 is refused");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
