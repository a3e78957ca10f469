//! What an image is, apart from where its bytes live: the sha256
//! [`Digest`] that names every file, and the [`Manifest`] that lists an
//! image's artifacts. Pure: the boot path's decisions use these types.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::domain::{Cpu, Slot};

/// A sha256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{self}")
    }
}

/// Text that is not a sha256 digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a sha256 digest")]
pub struct BadDigest(pub String);

impl FromStr for Digest {
    type Err = BadDigest;

    /// 64 hex digits, optionally prefixed `sha256:`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex_part = s.strip_prefix("sha256:").unwrap_or(s);
        let mut out = [0u8; 32];
        if hex_part.len() != 64
            || hex::decode_to_slice(hex_part.to_ascii_lowercase(), &mut out).is_err()
        {
            return Err(BadDigest(s.to_string()));
        }
        Ok(Self(out))
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// One artifact of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ArtifactRef {
    /// A file name for people and loaders (`vmlinuz`, `initrd.img`).
    pub name: String,
    /// sha256 of the bytes, 64 hex digits.
    #[schema(value_type = String, pattern = "^[0-9a-f]{64}$")]
    pub digest: Digest,
    pub size: u64,
}

/// A root image's dm-verity hash tree (computed by `verity.rs`): the hash
/// file (superblock and tree) as an artifact, and what `veritysetup` and
/// the kernel need beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerityRef {
    pub hash_tree: ArtifactRef,
    /// 64 hex digits.
    pub root_hash: String,
    /// Hex; the same salt is in the hash file's superblock.
    pub salt: String,
}

/// An image: what a generation boots. Its identity is the sha256 of
/// [`Manifest::canonical_json`].
///
/// Two shapes: a live OS (kernel and at least one initrd) for servers, or
/// an ONIE installer (one `installer` file, nothing else) for switches. The
/// fields the second shape added are left out of the JSON when empty, so a
/// live-OS manifest has the same bytes, and digest, as before they existed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// `x86_64` or `arm64` (see [`Cpu::IMAGES`]).
    pub arch: Cpu,
    /// Present in a live-OS image, absent in an installer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<ArtifactRef>,
    /// At least one in a live-OS image, in load order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub initrds: Vec<ArtifactRef>,
    /// An optional root filesystem the booted OS fetches (squashfs, …).
    #[serde(default)]
    pub rootfs: Option<ArtifactRef>,
    /// The dm-verity hash tree of `rootfs` and its root hash, so the booted
    /// OS can verify every block it reads (over NBD) against the manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs_verity: Option<VerityRef>,
    /// The kernel command line, a minijinja template.
    #[serde(default)]
    pub cmdline: String,
    /// An ONIE installer (a self-extracting NOS image a switch runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installer: Option<ArtifactRef>,
    /// A unified kernel image (kernel, initrd and command line in one EFI
    /// binary, signed as one): the firmware loads and verifies it itself
    /// (loader `uki`). Nothing else is in such an image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uki: Option<ArtifactRef>,
}

impl Manifest {
    /// serde_json of the struct: fields in declaration order, no whitespace.
    /// The digest is the sha256 of exactly these bytes.
    pub fn canonical_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("manifests serialize")
    }

    pub fn digest(&self) -> Digest {
        Digest::of(&self.canonical_json())
    }

    pub fn artifacts(&self) -> impl Iterator<Item = &ArtifactRef> {
        self.kernel
            .iter()
            .chain(&self.initrds)
            .chain(&self.rootfs)
            .chain(&self.installer)
            .chain(&self.uki)
            .chain(self.rootfs_verity.as_ref().map(|v| &v.hash_tree))
    }

    /// Where a group holds it: its CPU, as a live OS or an installer.
    pub fn slot(&self) -> Slot {
        Slot::new(self.arch, self.is_installer())
    }

    /// Whether this is an ONIE installer image rather than a live OS.
    pub fn is_installer(&self) -> bool {
        self.installer.is_some()
    }

    /// The image's shape is one of the two: a live OS (kernel, at least one
    /// initrd, no installer) or an installer alone. Says which field is wrong.
    pub fn check_shape(&self) -> Result<(), (&'static str, &'static str)> {
        if self.rootfs_verity.is_some() && self.rootfs.is_none() {
            return Err(("rootfs_verity", "a hash tree needs the rootfs it covers"));
        }
        if self.uki.is_some() {
            let alone = self.installer.is_none()
                && self.kernel.is_none()
                && self.initrds.is_empty()
                && self.rootfs.is_none()
                && self.cmdline.is_empty();
            return match alone {
                true => Ok(()),
                false => Err((
                    "uki",
                    "a unified kernel image holds kernel, initrd and command line itself (nothing else beside it)",
                )),
            };
        }
        match (&self.installer, &self.kernel) {
            (Some(_), None) if self.initrds.is_empty() && self.rootfs.is_none() => Ok(()),
            (Some(_), _) => Err((
                "installer",
                "an installer image holds the installer only (no kernel, initrds or rootfs)",
            )),
            (None, None) => Err((
                "kernel",
                "an image needs a kernel (or an installer, or a unified kernel image)",
            )),
            (None, Some(_)) if self.initrds.is_empty() => {
                Err(("initrds", "an image needs at least one initrd"))
            }
            (None, Some(_)) => Ok(()),
        }
    }
}
