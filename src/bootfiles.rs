//! The boot loaders ironboot names in its DHCP replies (`undionly.kpxe`,
//! `ipxe.efi`, …), served over TFTP and under `/ipxe/` over HTTP.
//!
//! They are the operator's files, named by the operator's configuration
//! (`dhcp.bootfile.*`), and distributions install them as symlinks: Debian's
//! `/usr/lib/ipxe/ipxe.efi` points to `/boot/ipxe.efi`. TFTP confines every
//! client-supplied path to its root after resolving symlinks, which would
//! refuse the very file the DHCP reply told the client to load. So exactly
//! these names are resolved here (symlinks followed: the operator chose the
//! directory and the names) and served from memory; every other path still
//! goes through TFTP's strict confinement. TFTP and HTTP serve the same
//! bytes for the same name. A file is re-read when its size or modification
//! time changes, so upgrading the `ipxe` package needs no restart.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::tftp::GeneratedFiles;

pub struct Bootfiles {
    /// Each served name and the file it is read from.
    names: BTreeMap<String, PathBuf>,
    cache: Mutex<HashMap<String, Cached>>,
}

struct Cached {
    modified: Option<SystemTime>,
    len: u64,
    bytes: Arc<[u8]>,
}

impl Bootfiles {
    pub fn new(dir: PathBuf, names: impl IntoIterator<Item = String>) -> Self {
        let mut files = Self {
            names: BTreeMap::new(),
            cache: Mutex::new(HashMap::new()),
        };
        files.add(dir, names);
        files
    }

    /// Serves more names from another directory (the GRUB loaders from
    /// `dhcp.bootfile.grub_dir`). A name already served keeps its directory.
    pub fn add(&mut self, dir: PathBuf, names: impl IntoIterator<Item = String>) {
        for n in names {
            let n = n.trim_start_matches('/').to_string();
            let path = dir.join(&n);
            self.names.entry(n).or_insert(path);
        }
    }

    /// Serves one file under a name of its own (the signed shim as
    /// `shimx64.efi`, Debian's `grubnetx64.efi.signed` as `grubx64.efi`).
    /// A name already served keeps its file.
    pub fn add_as(&mut self, name: &str, path: PathBuf) {
        self.names
            .entry(name.trim_start_matches('/').to_string())
            .or_insert(path);
    }

    /// The names served.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.keys().map(String::as_str)
    }

    /// The bytes of a configured boot file; `None` for any other name or a
    /// file that is missing or unreadable.
    pub fn get(&self, name: &str) -> Option<Arc<[u8]>> {
        let name = name.trim_start_matches('/');
        let path = self.names.get(name)?;
        let meta = std::fs::metadata(path).ok().filter(|m| m.is_file())?;
        let modified = meta.modified().ok();
        let mut cache = self.cache.lock().expect("bootfile cache lock");
        if let Some(c) = cache.get(name) {
            if c.modified == modified && c.len == meta.len() {
                return Some(c.bytes.clone());
            }
        }
        let bytes: Arc<[u8]> = std::fs::read(path).ok()?.into();
        cache.insert(
            name.to_string(),
            Cached {
                modified,
                len: bytes.len() as u64,
                bytes: bytes.clone(),
            },
        );
        Some(bytes)
    }
}

impl GeneratedFiles for Bootfiles {
    fn get(&self, path: &str, _client: SocketAddr) -> Option<Arc<[u8]>> {
        Bootfiles::get(self, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_configured_names_through_symlinks_and_nothing_else() {
        let root = tempfile::TempDir::new().unwrap();
        let outside = tempfile::TempDir::new().unwrap();
        std::fs::write(outside.path().join("ipxe.efi"), b"efi").unwrap();
        std::fs::write(outside.path().join("secret"), b"no").unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("ipxe.efi"),
            root.path().join("ipxe.efi"),
        )
        .unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("other"))
            .unwrap();
        std::fs::write(root.path().join("undionly.kpxe"), b"bios").unwrap();
        let b = Bootfiles::new(
            root.path().into(),
            [
                "ipxe.efi".to_string(),
                "undionly.kpxe".into(),
                "snponly.efi".into(),
            ],
        );
        assert_eq!(
            b.get("ipxe.efi").as_deref(),
            Some(&b"efi"[..]),
            "Debian-style symlink followed"
        );
        assert_eq!(b.get("/undionly.kpxe").as_deref(), Some(&b"bios"[..]));
        assert_eq!(b.get("other"), None, "not a configured name");
        let mut b = b;
        b.add_as("grubx64.efi", outside.path().join("secret"));
        b.add_as("ipxe.efi", outside.path().join("secret"));
        assert_eq!(
            b.get("grubx64.efi").as_deref(),
            Some(&b"no"[..]),
            "served under its own name"
        );
        assert_eq!(
            b.get("ipxe.efi").as_deref(),
            Some(&b"efi"[..]),
            "a served name keeps its file"
        );
        assert_eq!(b.get("snponly.efi"), None, "configured but absent");
        // A changed file is re-read.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(root.path().join("undionly.kpxe"), b"bios v2").unwrap();
        assert_eq!(b.get("undionly.kpxe").as_deref(), Some(&b"bios v2"[..]));
    }
}
