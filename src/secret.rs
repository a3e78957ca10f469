//! Secrets the server hands out: per-boot tokens and API tokens are 256
//! random bits in hex, and only their SHA-256 is ever stored or compared.

use sha2::{Digest, Sha256};

/// sha256 of a token, hex: what the database keeps instead of the token.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// 256 random bits, hex: per-boot tokens and API tokens.
pub fn new_secret() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}
