//! Sealing BMC passwords: ChaCha20-Poly1305 under a 256-bit key kept in a
//! file of its own (`bmc.key` in the data directory, mode 0600, made on
//! first start). The database holds only `v1:` + hex(nonce ‖ ciphertext),
//! with the row's owner as associated data: a copy of the database without
//! the key file reveals no password, and a sealed value pasted into another
//! machine's row does not open.
//!
//! With several servers on one PostgreSQL database every server needs the
//! same key file (copy it as you would a TLS key).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;

/// The key file's name under the data directory.
pub const KEY_FILE: &str = "bmc.key";

const PREFIX: &str = "v1:";

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("BMC key file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("BMC key file {path} is open to group or others (mode {mode:o}); chmod 600 it")]
    Open { path: PathBuf, mode: u32 },
    #[error("BMC key file {path} must hold exactly 32 bytes, not {len}")]
    Length { path: PathBuf, len: usize },
    #[error("a stored BMC password does not open under this server's key file (another server's key, or the row was altered)")]
    Unseal,
}

/// The key passwords are sealed under.
#[derive(Clone)]
pub struct Sealer {
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// Reads `dir/bmc.key`, making it (0600, 32 random bytes) when absent.
    /// A key file others can read is refused, as ssh refuses such a key.
    pub fn open_or_create(dir: &Path) -> Result<Self, SealError> {
        let path = dir.join(KEY_FILE);
        let io = |source| SealError::Io {
            path: path.clone(),
            source,
        };
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(mut file) => {
                let mut key = [0u8; 32];
                rand::thread_rng().fill_bytes(&mut key);
                file.write_all(&key).map_err(io)?;
                file.sync_all().map_err(io)?;
                return Ok(Self::from_key(&key));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(e)),
        }
        let mode = std::fs::metadata(&path).map_err(io)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SealError::Open { path, mode });
        }
        let key = std::fs::read(&path).map_err(io)?;
        let key: [u8; 32] = key.as_slice().try_into().map_err(|_| SealError::Length {
            path: path.clone(),
            len: key.len(),
        })?;
        Ok(Self::from_key(&key))
    }

    pub fn from_key(key: &[u8; 32]) -> Self {
        Self {
            cipher: ChaCha20Poly1305::new(Key::from_slice(key)),
        }
    }

    /// Seals `password` for the row of `owner` (e.g. `machine:52:54:…`).
    pub fn seal(&self, owner: &str, password: &str) -> String {
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: password.as_bytes(),
                    aad: &aad(owner),
                },
            )
            .expect("ChaCha20-Poly1305 seals any message under 256 GiB");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        format!("{PREFIX}{}", hex::encode(out))
    }

    /// Opens what [`Sealer::seal`] made for the same owner.
    pub fn open(&self, owner: &str, sealed: &str) -> Result<String, SealError> {
        let bytes = sealed
            .strip_prefix(PREFIX)
            .and_then(|h| hex::decode(h).ok())
            .filter(|b| b.len() >= 12 + 16)
            .ok_or(SealError::Unseal)?;
        let (nonce, body) = bytes.split_at(12);
        let clear = self
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: &aad(owner),
                },
            )
            .map_err(|_| SealError::Unseal)?;
        String::from_utf8(clear).map_err(|_| SealError::Unseal)
    }
}

fn aad(owner: &str) -> Vec<u8> {
    let mut v = b"ironboot bmc password\0".to_vec();
    v.extend_from_slice(owner.as_bytes());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_opens_only_for_its_owner_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let sealer = Sealer::open_or_create(dir.path()).unwrap();
        let sealed = sealer.seal("machine:52:54:00:00:00:01", "hunter2");
        assert!(!sealed.contains("hunter2"));
        assert_eq!(
            sealer.open("machine:52:54:00:00:00:01", &sealed).unwrap(),
            "hunter2"
        );
        // Another row, a tampered value, another key: refused.
        assert!(sealer.open("machine:52:54:00:00:00:02", &sealed).is_err());
        let mut tampered = sealed.clone();
        let last = tampered.pop().unwrap();
        tampered.push(if last == '0' { '1' } else { '0' });
        assert!(sealer.open("machine:52:54:00:00:00:01", &tampered).is_err());
        assert!(sealer.open("machine:52:54:00:00:00:01", "v1:00").is_err());
        let other = Sealer::from_key(&[7; 32]);
        assert!(other.open("machine:52:54:00:00:00:01", &sealed).is_err());
        // Two seals of one password differ (fresh nonce).
        assert_ne!(sealed, sealer.seal("machine:52:54:00:00:00:01", "hunter2"));
    }

    #[test]
    fn the_key_file_is_made_private_kept_and_refused_when_open() {
        let dir = tempfile::tempdir().unwrap();
        let first = Sealer::open_or_create(dir.path()).unwrap();
        let path = dir.path().join(KEY_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let sealed = first.seal("group:web", "pw");
        // The next start reads the same key.
        let again = Sealer::open_or_create(dir.path()).unwrap();
        assert_eq!(again.open("group:web", &sealed).unwrap(), "pw");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Sealer::open_or_create(dir.path()).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, b"short").unwrap();
        let err = Sealer::open_or_create(dir.path()).unwrap_err();
        assert!(err.to_string().contains("32 bytes"), "{err}");
    }
}
