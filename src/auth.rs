//! API tokens: bearer tokens with a role (`admin` may change things, `read`
//! may only look), stored as their sha256 so the database never holds one.
//!
//! If no token exists at start, an admin token is generated and written to
//! `data_dir/admin.token` with mode 0600; the path is printed, and the CLI
//! reads that file when it runs on the same machine.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::Serialize;

use crate::inventory::token_hash;
use crate::ledger::now_ms;
use crate::store::Store;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Read,
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
    Sqlx(#[from] sqlx::Error),
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
        let rows: Vec<(String, String, String)> =
            sqlx::query_as("SELECT name, hash, role FROM api_tokens WHERE revoked_ms IS NULL")
                .fetch_all(store.pool())
                .await?;
        let mut by_hash = HashMap::new();
        for (name, hash, role) in rows {
            let role = if role == "admin" {
                Role::Admin
            } else {
                Role::Read
            };
            by_hash.insert(hash, Principal { name, role });
        }
        let mut written = None;
        if by_hash.is_empty() {
            let token = crate::inventory::new_secret();
            let path = admin_token_path(data_dir);
            write_secret(&path, &token).map_err(|source| AuthError::TokenFile {
                path: path.display().to_string(),
                source,
            })?;
            sqlx::query("INSERT INTO api_tokens (name, hash, role, created_ms) VALUES ('admin', ?, 'admin', ?)")
                .bind(token_hash(&token))
                .bind(now_ms())
                .execute(store.pool())
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

    pub fn check(&self, token: &str) -> Option<Principal> {
        self.by_hash
            .read()
            .expect("tokens lock")
            .get(&token_hash(token))
            .cloned()
    }
}

/// Writes a secret to a new file readable by its owner only.
fn write_secret(path: &Path, secret: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(secret.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
