//! TFTP server (read-only, octet mode) for iPXE binaries and generated files.
//!
//! Being written; see the module contract in `server.rs` once it lands.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::domain::MacAddr;
use crate::ledger::Ledger;
use crate::metrics::Metrics;

/// Validated TFTP settings (built by `config`).
#[derive(Debug, Clone)]
pub struct TftpConfig {
    /// Directory served; every path is confined to it after resolving symlinks.
    pub root: PathBuf,
    /// Upper bound on negotiated blksize (further capped by the interface MTU).
    pub max_blksize: u16,
    /// Upper bound on negotiated windowsize (RFC 7440).
    pub max_windowsize: u16,
    /// Transfers running at once; requests beyond it get an error packet.
    pub max_transfers: usize,
    /// Initial retransmission timeout (clients may negotiate their own).
    pub timeout: Duration,
    /// Retransmissions of one block/window before a transfer is abandoned.
    pub retries: u32,
}

/// Files produced by the server itself (per-machine GRUB configs, …) that
/// TFTP serves next to the files in `root`. Looked up before the disk.
pub trait GeneratedFiles: Send + Sync {
    fn get(&self, path: &str, client: SocketAddr) -> Option<Arc<[u8]>>;
}

/// Maps a client's IP to its MAC (from the lease table) so TFTP events land
/// on the right machine in the ledger.
pub type ClientLookup = Arc<dyn Fn(IpAddr) -> Option<MacAddr> + Send + Sync>;

/// Everything a TFTP server task needs, shared by all transfers.
pub struct TftpState {
    pub config: TftpConfig,
    pub generated: Option<Arc<dyn GeneratedFiles>>,
    pub ledger: Ledger,
    pub metrics: Arc<Metrics>,
    pub lookup: ClientLookup,
}
