//! TFTP server (read-only, octet mode) for iPXE binaries and generated files.
//!
//! What it owns: answering read requests on the socket `app` binds, with RFC
//! 2347 options (blksize 2348, tsize and timeout 2349, windowsize 7440), from
//! two sources: files the server generates ([`GeneratedFiles`], looked up
//! first) and regular files under [`TftpConfig::root`].
//!
//! Code map:
//! - [`codec`]: packets to and from bytes; pure.
//! - [`options`]: option negotiation; pure.
//! - `path`: name sanitising (pure) and confinement under the root.
//! - `transfer`: one transfer's state machine (windows, retransmission,
//!   block-number rollover) on its own socket.
//! - `server`: the listen loop, refusals, the transfer cap, ledger and
//!   metrics.
//! - `net`: IP_PKTINFO and path-MTU details.
//!
//! Architecture invariants: no writes (WRQ is refused) and no listing; no
//! path outside the canonical root is ever opened, symlinks included; error
//! packets never contain a server path; no packet path waits on SQLite
//! (completion and failure go through [`Ledger`]). Deliberately absent:
//! netascii (refused: every boot file is binary), multicast (RFC 2090).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::clients::Clients;
use crate::ledger::Ledger;
use crate::metrics::Metrics;

pub mod codec;
mod net;
pub mod options;
mod path;
mod server;
mod transfer;

pub use server::run;

/// Validated TFTP settings (built by `config`).
#[derive(Debug, Clone)]
pub struct TftpConfig {
    /// Directory served; every path is confined to it after resolving symlinks.
    pub root: PathBuf,
    /// Upper bound on negotiated blksize (further capped by the path MTU
    /// minus 32 when the kernel knows it; 1468 suits a 1500-byte Ethernet).
    pub max_blksize: u16,
    /// Upper bound on negotiated windowsize (RFC 7440). tftp-hpa clients
    /// fail above 64; gains level off around 16–64.
    pub max_windowsize: u16,
    /// Transfers running at once; requests beyond it get ERROR 0 "server busy".
    pub max_transfers: usize,
    /// Initial retransmission timeout (clients may negotiate their own);
    /// doubled per retry, up to 8×.
    pub timeout: Duration,
    /// Retransmissions of one block/window before a transfer is abandoned
    /// (before the client's first ACK, at most [`FIRST_FLIGHT_RETRIES`]:
    /// an address that never answers is probably not the one that asked).
    pub retries: u32,
    /// The longest `timeout` a client may negotiate; a longer one is not
    /// acknowledged (the default applies).
    pub max_timeout: Duration,
    /// A transfer still running after this is ended.
    pub max_transfer_time: Duration,
    /// Transfers at once for one client address ("server busy" beyond).
    pub max_transfers_per_client: usize,
}

/// Retransmissions of the first packet to a client that has not answered
/// yet: a forged 16-byte request makes the server send at most this many
/// more packets to the victim of the forgery.
pub const FIRST_FLIGHT_RETRIES: u32 = 1;
/// Longest file name served; a longer request is refused, and its name is
/// not recorded.
pub const MAX_FILENAME: usize = 255;

impl Default for TftpConfig {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/usr/lib/ipxe"),
            max_blksize: 1468,
            max_windowsize: 64,
            max_transfers: 512,
            timeout: Duration::from_secs(1),
            retries: 6,
            max_timeout: Duration::from_secs(10),
            max_transfer_time: Duration::from_secs(600),
            max_transfers_per_client: 8,
        }
    }
}

/// Files produced by the server itself (per-machine GRUB configs, …) that
/// TFTP serves next to the files in `root`. Looked up before the disk.
///
/// `path` is the sanitised request: relative, `/`-separated, no leading `/`,
/// no `.` or `..` components (`/grub\grub.cfg` arrives as `grub/grub.cfg`).
pub trait GeneratedFiles: Send + Sync {
    fn get(&self, path: &str, client: SocketAddr) -> Option<Arc<[u8]>>;

    /// A file the server chose by name outside the root (an image artifact,
    /// a switch's installer): opened as it is, streamed from disk. Asked
    /// after [`GeneratedFiles::get`] and before the root.
    fn file(&self, _path: &str, _client: SocketAddr) -> Option<PathBuf> {
        None
    }
}

/// Everything a TFTP server task needs, shared by all transfers.
pub struct TftpState {
    pub config: TftpConfig,
    pub generated: Option<Arc<dyn GeneratedFiles>>,
    /// Receives `tftp.complete`, `tftp.failed` (with a reason) and
    /// `tftp.aborted` (the client ended the transfer right after the OACK,
    /// as PXE ROMs do to learn `tsize`).
    pub ledger: Ledger,
    pub metrics: Arc<Metrics>,
    /// Who holds each address (DHCP's leases), so TFTP events land on the
    /// right machine in the ledger.
    pub clients: Clients,
}
