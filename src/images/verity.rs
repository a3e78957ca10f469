//! dm-verity hash trees for read-only block images, byte for byte what
//! `veritysetup format` (cryptsetup 2.6) writes with its defaults: format
//! (hash type) 1, sha256, 4096-byte data and hash blocks, a salt, and the
//! tree in a separate hash file that opens with the verity superblock.
//!
//! Pure: an image's bytes in (read in large chunks, never held whole), the
//! root hash and the hash file's bytes out ([`build`]). Writing the file,
//! choosing the salt and UUID, and giving the root hash to the kernel
//! (`roothash=`, `veritysetup open`) are the caller's.
//!
//! The layout (checked against cryptsetup's `lib/verity/verity.c` and
//! `lib/verity/verity_hash.c`, and against `veritysetup` itself in the
//! tests):
//! - each block is hashed as `sha256(salt || block)` (format 1; format 0,
//!   Chrome OS's, puts the salt after the block and is not supported);
//! - level 0 holds the digests of the data blocks, 32 bytes each, 128 to a
//!   hash block; each level above holds the digests of the hash blocks of
//!   the level below; levels are added until one holds a single hash block,
//!   whose digest is the root hash. An image of one block has no levels at
//!   all: its root hash is that block's digest;
//! - every hash block is zero-padded after its last digest;
//! - the hash file is the 512-byte superblock, zero-padded to 4096 bytes,
//!   then the levels, the top one first and level 0 last.
//!
//! Invariant: the image is a whole number of 4096-byte blocks. dm-verity
//! cannot cover a partial block, so other sizes are refused
//! ([`VerityError::NotBlockAligned`]); the caller pads the image with
//! [`padding_for`] zero bytes first (and the padded image is the one served).

use std::io::{ErrorKind, Read};

use sha2::{Digest as _, Sha256};

/// The data and hash block size, in bytes.
pub const BLOCK_SIZE: u64 = 4096;
/// The size of a sha256 digest.
pub const DIGEST_SIZE: usize = 32;
/// Digests in one hash block.
pub const HASHES_PER_BLOCK: usize = BLOCK_SIZE as usize / DIGEST_SIZE;
/// The size of the verity superblock at the start of the hash file; the
/// tree starts at the next block boundary, [`BLOCK_SIZE`].
pub const SUPERBLOCK_SIZE: usize = 512;
/// The largest salt the superblock has room for.
pub const MAX_SALT_SIZE: usize = 256;

/// How much of the image is read at a time.
const CHUNK: usize = 1 << 20;

/// Why a hash tree was not built.
#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    #[error(
        "an image of {size} bytes is not a whole number of {BLOCK_SIZE}-byte blocks: \
         append {} zero bytes first",
        padding_for(*size)
    )]
    NotBlockAligned { size: u64 },
    #[error("an empty image has no verity hash tree")]
    Empty,
    #[error("a salt of {len} bytes is longer than the superblock's {MAX_SALT_SIZE}")]
    SaltTooLong { len: usize },
    #[error("the image ended after {read} bytes, {expected} were expected")]
    Truncated { read: u64, expected: u64 },
    #[error("reading the image: {0}")]
    Io(#[from] std::io::Error),
}

/// What varies between hash trees (the rest is fixed: format 1, sha256,
/// 4096-byte blocks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityParams {
    /// Hashed before every block (`veritysetup` draws 32 random bytes by
    /// default); at most [`MAX_SALT_SIZE`] bytes, may be empty.
    pub salt: Vec<u8>,
    /// The hash device's UUID, recorded in the superblock, in the byte order
    /// of its text form (`uuid_parse`).
    pub uuid: [u8; 16],
}

/// An image's hash tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityTree {
    /// What the kernel checks the tree against (`roothash=`).
    pub root_hash: [u8; 32],
    /// The image's size in [`BLOCK_SIZE`] blocks.
    pub data_blocks: u64,
    /// The hash file: superblock (padded to [`BLOCK_SIZE`]) then the tree,
    /// as `veritysetup format` writes it.
    pub hash_file: Vec<u8>,
    pub salt: Vec<u8>,
}

impl VerityTree {
    /// The root hash as `veritysetup` prints it (lowercase hex).
    pub fn root_hex(&self) -> String {
        hex::encode(self.root_hash)
    }
}

/// The zero bytes to append to an image of `size` bytes to make it a whole
/// number of blocks (0 when it already is).
pub fn padding_for(size: u64) -> u64 {
    (BLOCK_SIZE - size % BLOCK_SIZE) % BLOCK_SIZE
}

/// Reads exactly `data_size` bytes of image from `reader` (anything after is
/// left unread) and builds its hash tree.
pub fn build(
    mut reader: impl Read,
    data_size: u64,
    params: &VerityParams,
) -> Result<VerityTree, VerityError> {
    if data_size == 0 {
        return Err(VerityError::Empty);
    }
    if data_size % BLOCK_SIZE != 0 {
        return Err(VerityError::NotBlockAligned { size: data_size });
    }
    if params.salt.len() > MAX_SALT_SIZE {
        return Err(VerityError::SaltTooLong {
            len: params.salt.len(),
        });
    }
    let data_blocks = data_size / BLOCK_SIZE;
    let salted = Sha256::new_with_prefix(&params.salt);

    // The digests of the data blocks: level 0 before its padding.
    let mut digests = Vec::with_capacity(usize::try_from(data_blocks).unwrap_or(0) * DIGEST_SIZE);
    let mut buf = vec![0u8; CHUNK];
    let mut read = 0u64;
    while read < data_size {
        let want = usize::try_from(data_size - read).map_or(CHUNK, |left| left.min(CHUNK));
        let got = fill(&mut reader, &mut buf[..want])?;
        if got < want {
            return Err(VerityError::Truncated {
                read: read + got as u64,
                expected: data_size,
            });
        }
        hash_blocks(&salted, &buf[..want], &mut digests);
        read += want as u64;
    }

    // Each level is the previous digests, padded; its blocks' digests are
    // the next level's content, until a single digest is left.
    let mut levels = Vec::new();
    while digests.len() > DIGEST_SIZE {
        let mut level = digests;
        level.resize(level.len().next_multiple_of(BLOCK_SIZE as usize), 0);
        digests = Vec::with_capacity(level.len() / HASHES_PER_BLOCK);
        hash_blocks(&salted, &level, &mut digests);
        levels.push(level);
    }
    let root_hash: [u8; 32] = digests.try_into().expect("one digest is left");

    let tree_len: usize = levels.iter().map(Vec::len).sum();
    let mut hash_file = Vec::with_capacity(BLOCK_SIZE as usize + tree_len);
    hash_file.extend_from_slice(&superblock(data_blocks, params));
    hash_file.resize(BLOCK_SIZE as usize, 0);
    for level in levels.iter().rev() {
        hash_file.extend_from_slice(level);
    }
    Ok(VerityTree {
        root_hash,
        data_blocks,
        hash_file,
        salt: params.salt.clone(),
    })
}

/// Appends the digest of each [`BLOCK_SIZE`] block of `bytes` (a whole
/// number of blocks), salted first.
fn hash_blocks(salted: &Sha256, bytes: &[u8], out: &mut Vec<u8>) {
    for block in bytes.chunks_exact(BLOCK_SIZE as usize) {
        out.extend_from_slice(&salted.clone().chain_update(block).finalize());
    }
}

/// Reads until `buf` is full or the reader ends; how many bytes were read.
fn fill(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// cryptsetup's `struct verity_sb` (packed, little-endian): signature
/// `verity\0\0` at 0, version (1) at 8, hash type (1) at 12, UUID at 16,
/// algorithm name (NUL-padded) at 32, data and hash block sizes (u32) at 64
/// and 68, data blocks (u64) at 72, salt size (u16) at 80, six bytes of
/// padding, the salt (256 bytes, zero-padded) at 88, zeros to 512.
fn superblock(data_blocks: u64, params: &VerityParams) -> [u8; SUPERBLOCK_SIZE] {
    let mut sb = [0u8; SUPERBLOCK_SIZE];
    sb[0..8].copy_from_slice(b"verity\0\0");
    sb[8..12].copy_from_slice(&1u32.to_le_bytes());
    sb[12..16].copy_from_slice(&1u32.to_le_bytes());
    sb[16..32].copy_from_slice(&params.uuid);
    sb[32..38].copy_from_slice(b"sha256");
    sb[64..68].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
    sb[68..72].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
    sb[72..80].copy_from_slice(&data_blocks.to_le_bytes());
    sb[80..82].copy_from_slice(&(params.salt.len() as u16).to_le_bytes());
    sb[88..88 + params.salt.len()].copy_from_slice(&params.salt);
    sb
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    const B: usize = BLOCK_SIZE as usize;

    fn params() -> VerityParams {
        VerityParams {
            salt: (1..=32).collect(),
            uuid: *b"\x01\x23\x45\x67\x89\xab\xcd\xef\xfe\xdc\xba\x98\x76\x54\x32\x10",
        }
    }

    /// An image of `blocks` blocks, each different.
    fn image(blocks: usize) -> Vec<u8> {
        (0..blocks * B)
            .map(|i| (i / B * 7 + i % 251) as u8)
            .collect()
    }

    fn digest(salt: &[u8], block: &[u8]) -> [u8; 32] {
        Sha256::new()
            .chain_update(salt)
            .chain_update(block)
            .finalize()
            .into()
    }

    fn uuid_text(u: &[u8; 16]) -> String {
        let h = hex::encode(u);
        format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    }

    /// Hands out at most 1000 bytes per read, interrupted now and then.
    struct Dribble<'a>(&'a [u8], u32);

    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.1 += 1;
            if self.1 % 5 == 0 {
                return Err(ErrorKind::Interrupted.into());
            }
            let n = buf.len().min(1000).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn writes_the_superblock_cryptsetup_reads() {
        let p = params();
        let tree = build(&image(1)[..], BLOCK_SIZE, &p).unwrap();
        let sb = &tree.hash_file[..SUPERBLOCK_SIZE];
        let mut expected = Vec::new();
        expected.extend_from_slice(b"verity\0\0");
        expected.extend_from_slice(&[1, 0, 0, 0, 1, 0, 0, 0]);
        expected.extend_from_slice(&p.uuid);
        expected.extend_from_slice(b"sha256");
        expected.extend_from_slice(&[0; 26]);
        expected.extend_from_slice(&[0, 0x10, 0, 0, 0, 0x10, 0, 0]);
        expected.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
        expected.extend_from_slice(&[32, 0, 0, 0, 0, 0, 0, 0]);
        expected.extend_from_slice(&p.salt);
        expected.resize(SUPERBLOCK_SIZE, 0);
        assert_eq!(sb, &expected[..]);
        assert!(tree.hash_file[SUPERBLOCK_SIZE..].iter().all(|&b| b == 0));
    }

    #[test]
    fn one_block_has_no_levels_and_its_digest_is_the_root() {
        let p = params();
        let data = image(1);
        let tree = build(&data[..], BLOCK_SIZE, &p).unwrap();
        assert_eq!(tree.data_blocks, 1);
        assert_eq!(tree.hash_file.len(), B, "the superblock alone");
        assert_eq!(tree.root_hash, digest(&p.salt, &data));
        assert_eq!(tree.root_hex(), hex::encode(digest(&p.salt, &data)));
        assert_eq!(tree.salt, p.salt);
    }

    #[test]
    fn a_full_hash_block_is_one_level() {
        let p = params();
        let data = image(128);
        let tree = build(&data[..], 128 * BLOCK_SIZE, &p).unwrap();
        assert_eq!(tree.hash_file.len(), 2 * B);
        let level0 = &tree.hash_file[B..];
        for (i, block) in data.chunks(B).enumerate() {
            assert_eq!(level0[i * 32..][..32], digest(&p.salt, block));
        }
        assert_eq!(tree.root_hash, digest(&p.salt, level0));
    }

    #[test]
    fn crossing_a_hash_block_adds_a_level_stored_first() {
        let p = params();
        let data = image(129);
        let tree = build(&data[..], 129 * BLOCK_SIZE, &p).unwrap();
        // Superblock, level 1 (one block), level 0 (two blocks).
        assert_eq!(tree.hash_file.len(), 4 * B);
        let (top, level0) = tree.hash_file[B..].split_at(B);
        assert_eq!(level0[128 * 32..][..32], digest(&p.salt, &data[128 * B..]));
        assert!(
            level0[129 * 32..].iter().all(|&b| b == 0),
            "zero-padded after the last digest"
        );
        assert_eq!(top[..32], digest(&p.salt, &level0[..B]));
        assert_eq!(top[32..64], digest(&p.salt, &level0[B..]));
        assert!(top[64..].iter().all(|&b| b == 0));
        assert_eq!(tree.root_hash, digest(&p.salt, top));
        // Three levels from 128 * 128 + 1 blocks on.
        let big = vec![0u8; (128 * 128 + 1) * B];
        let tree = build(&big[..], big.len() as u64, &p).unwrap();
        assert_eq!(tree.hash_file.len(), (1 + 1 + 2 + 129) * B);
    }

    #[test]
    fn reads_short_and_interrupted_reads_to_the_same_tree() {
        let p = params();
        let data = image(300);
        let whole = build(&data[..], data.len() as u64, &p).unwrap();
        let dribbled = build(Dribble(&data, 0), data.len() as u64, &p).unwrap();
        assert_eq!(whole, dribbled);
        // Only data_size bytes are read.
        let more = build(&data[..], 129 * BLOCK_SIZE, &p).unwrap();
        assert_eq!(more, build(&data[..129 * B], 129 * BLOCK_SIZE, &p).unwrap());
    }

    #[test]
    fn refuses_partial_blocks_short_images_and_long_salts() {
        let p = params();
        let err = build(&[0u8; 5000][..], 5000, &p).unwrap_err();
        assert!(matches!(err, VerityError::NotBlockAligned { size: 5000 }));
        assert!(err.to_string().contains("append 3192 zero bytes"), "{err}");
        assert_eq!(padding_for(5000), 3192);
        assert_eq!(padding_for(8192), 0);
        assert_eq!(padding_for(1), 4095);
        assert!(matches!(build(&[][..], 0, &p), Err(VerityError::Empty)));
        assert!(matches!(
            build(&image(1)[..], 2 * BLOCK_SIZE, &p),
            Err(VerityError::Truncated {
                read: 4096,
                expected: 8192
            })
        ));
        let salty = VerityParams {
            salt: vec![1; 257],
            ..p
        };
        assert!(matches!(
            build(&image(1)[..], BLOCK_SIZE, &salty),
            Err(VerityError::SaltTooLong { len: 257 })
        ));
    }

    fn veritysetup(args: &[&str]) -> std::process::Output {
        Command::new(VERITYSETUP)
            .args(args)
            .output()
            .expect("veritysetup runs")
    }

    const VERITYSETUP: &str = "/usr/sbin/veritysetup";

    /// `veritysetup format` on a random image of `blocks` blocks and our
    /// [`build`] agree on the root hash and on every byte of the hash file;
    /// returns the image's bytes, the path of our hash file, and our tree.
    fn compare(dir: &Path, blocks: usize) -> (Vec<u8>, std::path::PathBuf, VerityTree) {
        use rand::RngCore;
        let data_path = dir.join(format!("{blocks}.img"));
        let theirs = dir.join(format!("{blocks}.theirs"));
        let ours = dir.join(format!("{blocks}.ours"));
        let mut data = vec![0u8; blocks * B];
        rand::thread_rng().fill_bytes(&mut data);
        std::fs::write(&data_path, &data).unwrap();
        let mut p = VerityParams {
            salt: vec![0; 32],
            uuid: [0; 16],
        };
        rand::thread_rng().fill_bytes(&mut p.salt);
        rand::thread_rng().fill_bytes(&mut p.uuid);

        let tree = build(&data[..], data.len() as u64, &p).unwrap();

        let out = veritysetup(&[
            "format",
            "--format=1",
            "--hash=sha256",
            "--data-block-size=4096",
            "--hash-block-size=4096",
            &format!("--salt={}", hex::encode(&p.salt)),
            &format!("--uuid={}", uuid_text(&p.uuid)),
            data_path.to_str().unwrap(),
            theirs.to_str().unwrap(),
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let root = stdout
            .lines()
            .find_map(|l| l.strip_prefix("Root hash:"))
            .expect("a Root hash: line")
            .trim();
        println!(
            "{blocks} blocks: veritysetup {root}, ours {}",
            tree.root_hex()
        );
        assert_eq!(root, tree.root_hex(), "{blocks} blocks");
        let their_file = std::fs::read(&theirs).unwrap();
        assert_eq!(their_file.len(), tree.hash_file.len(), "{blocks} blocks");
        assert!(
            their_file == tree.hash_file,
            "{blocks} blocks: hash files differ"
        );
        std::fs::write(&ours, &tree.hash_file).unwrap();
        (data, ours, tree)
    }

    #[test]
    fn matches_veritysetup_byte_for_byte() {
        if !Path::new(VERITYSETUP).exists() {
            eprintln!(
                "skipped: {VERITYSETUP} is not installed (Debian: apt install cryptsetup-bin)"
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        for blocks in [1, 2, 128, 129] {
            compare(dir.path(), blocks);
        }
        // 1 MiB + 129 blocks: veritysetup accepts our hash file, and
        // notices a changed byte.
        let blocks = 256 + 129;
        let (mut data, ours, tree) = compare(dir.path(), blocks);
        let data_path = dir.path().join(format!("{blocks}.img"));
        let verify = || {
            veritysetup(&[
                "verify",
                data_path.to_str().unwrap(),
                ours.to_str().unwrap(),
                &tree.root_hex(),
            ])
        };
        let ok = verify();
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        data[700_000] ^= 1;
        std::fs::write(&data_path, &data).unwrap();
        let bad = verify();
        assert!(!bad.status.success(), "a flipped byte was not noticed");
        println!(
            "after a flipped byte: {}",
            String::from_utf8_lossy(&bad.stderr).trim()
        );
    }

    /// How long 64 MiB takes: `cargo test --lib verity_speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn verity_speed() {
        let size = 64u64 << 20;
        let start = std::time::Instant::now();
        let tree = build(std::io::repeat(7).take(size), size, &params()).unwrap();
        println!(
            "64 MiB: {:?}, hash file {} bytes",
            start.elapsed(),
            tree.hash_file.len()
        );
    }
}
