//! NBD: image artifacts served as read-only block devices, so a machine
//! can mount a root image far larger than its RAM and read only what it
//! touches (the kernel's own NBD client, or any other: `nbdinfo`,
//! `nbdcopy`, qemu).
//!
//! One export per artifact, named by its digest (`sha256:<hex>` or the 64
//! hex digits alone), from the same content-addressed store as HTTP and
//! TFTP serve: the bytes cannot change under a client. Fixed newstyle
//! handshake; `NBD_OPT_GO`, `NBD_OPT_INFO` and the old `NBD_OPT_EXPORT_NAME`;
//! reads with simple replies; writes and trims refused (`EPERM`), flush a
//! no-op. Listing is refused: names are digests, which the generation's
//! manifest and the rendered command line give.
//!
//! Bounded for an unauthenticated peer: connections capped
//! (`nbd.max_connections`, the rest closed at once), the option phase
//! limited in time, count and size, a read at most 32 MiB, any violation
//! of the protocol ends the connection. A connection then stays as long as
//! its client wants: a root device is read for the machine's whole life.

pub mod proto;

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::images::{Digest, ImageStore};
use crate::metrics::Metrics;
use proto::*;

/// The `[nbd]` section: off unless `listen` is set.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawNbd {
    /// e.g. `"0.0.0.0:10809"` (NBD's port).
    pub listen: Option<SocketAddr>,
    pub max_connections: usize,
}

impl Default for RawNbd {
    fn default() -> Self {
        Self {
            listen: None,
            max_connections: 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NbdSettings {
    pub listen: SocketAddr,
    pub max_connections: usize,
}

/// The section as settings (`None`: NBD is off); errors are `(key, message)`.
pub fn validate(raw: &RawNbd) -> Result<Option<NbdSettings>, (String, String)> {
    let Some(listen) = raw.listen else {
        return Ok(None);
    };
    if raw.max_connections == 0 {
        return Err(("nbd.max_connections".into(), "must be at least 1".into()));
    }
    Ok(Some(NbdSettings {
        listen,
        max_connections: raw.max_connections,
    }))
}

/// How long a client has for its flags and each option.
const OPTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Options a client may send before it picks an export.
const MAX_OPTIONS: usize = 32;
/// The largest option payload read (names are 71 bytes at most).
const MAX_OPTION_DATA: u32 = 4096;

/// Reads up to this size are done on the connection's task.
const INLINE_READ: usize = 128 << 10;

/// What the connections share.
pub struct Exports {
    pub images: Arc<ImageStore>,
    pub metrics: Arc<Metrics>,
    /// Who reads what: each connection's bytes are told to the tally its
    /// reader gets (`None`: counted in the metrics only).
    pub readers: Option<Arc<dyn Readers>>,
}

/// Accounting by reader: which machine's boot a connection reads for.
pub trait Readers: Send + Sync {
    /// A client at `peer` opened `export`: the tally its reads are added
    /// to, if the reader is known.
    fn opened(&self, peer: IpAddr, export: Digest) -> BoxFuture<Option<Box<dyn Tally>>>;
}

/// One connection's reads, as they happen; whatever is not passed on yet
/// is passed on when the tally is dropped (the connection ends).
pub trait Tally: Send {
    fn read(&mut self, bytes: u64);
}

pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// An export opened for a client.
struct Export {
    digest: Digest,
    file: Arc<std::fs::File>,
    size: u64,
}

impl Exports {
    /// The artifact an export name names, opened; `None` for any other
    /// name.
    fn open(&self, name: &[u8]) -> Option<Export> {
        let digest: Digest = std::str::from_utf8(name).ok()?.parse().ok()?;
        let file = std::fs::File::open(self.images.artifact_path(&digest)).ok()?;
        let meta = file.metadata().ok().filter(|m| m.is_file())?;
        Some(Export {
            digest,
            size: meta.len(),
            file: Arc::new(file),
        })
    }
}

/// Serves NBD on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    exports: Arc<Exports>,
    settings: NbdSettings,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    debug!(error = %e, "NBD accept failed");
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            Metrics::inc(&exports.metrics.nbd_refused);
            continue;
        };
        Metrics::inc(&exports.metrics.nbd_connections);
        let exports = exports.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                ended = connection(stream, peer.ip(), &exports) => {
                    if let Err(why) = ended {
                        Metrics::inc(&exports.metrics.nbd_refused);
                        debug!(%peer, why, "NBD connection ended");
                    }
                }
            }
            drop(slot);
        });
    }
}

type Reader = BufReader<tokio::net::tcp::OwnedReadHalf>;
type Writer = BufWriter<tokio::net::tcp::OwnedWriteHalf>;

/// One client: the handshake, then its export's transmission phase. `Err`
/// says which rule the client broke (a clean end is `Ok`).
async fn connection(
    stream: TcpStream,
    peer: IpAddr,
    exports: &Exports,
) -> Result<(), &'static str> {
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut w = BufWriter::new(w);
    w.write_all(&greeting()).await.map_err(|_| "gone")?;
    w.flush().await.map_err(|_| "gone")?;
    let flags = timed(r.read_u32()).await?;
    if flags & !u32::from(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES) != 0 {
        return Err("unknown client flags");
    }
    let no_zeroes = flags & u32::from(FLAG_NO_ZEROES) != 0;
    let Some(export) = options(&mut r, &mut w, exports, no_zeroes).await? else {
        return Ok(());
    };
    let tally = match &exports.readers {
        Some(readers) => readers.opened(peer, export.digest).await,
        None => None,
    };
    transmission(&mut r, &mut w, export, exports, tally).await
}

/// A read bounded by [`OPTION_TIMEOUT`].
async fn timed<T>(
    read: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T, &'static str> {
    match tokio::time::timeout(OPTION_TIMEOUT, read).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(_)) => Err("gone during the handshake"),
        Err(_) => Err("too slow during the handshake"),
    }
}

async fn reply(w: &mut Writer, option: u32, kind: u32, data: &[u8]) -> Result<(), &'static str> {
    w.write_all(&option_reply(option, kind, data))
        .await
        .map_err(|_| "gone")
}

/// The option haggling: the export the client goes on with, or `None`
/// when it aborted.
async fn options(
    r: &mut Reader,
    w: &mut Writer,
    exports: &Exports,
    no_zeroes: bool,
) -> Result<Option<Export>, &'static str> {
    for _ in 0..MAX_OPTIONS {
        let mut head = [0u8; 16];
        timed(r.read_exact(&mut head)).await?;
        let magic = u64::from_be_bytes(head[..8].try_into().expect("8 bytes"));
        let option = u32::from_be_bytes(head[8..12].try_into().expect("4 bytes"));
        let len = u32::from_be_bytes(head[12..].try_into().expect("4 bytes"));
        if magic != OPTS_MAGIC {
            return Err("bad option magic");
        }
        if len > MAX_OPTION_DATA {
            return Err("option payload too large");
        }
        let mut data = vec![0u8; len as usize];
        timed(r.read_exact(&mut data)).await?;
        match option {
            OPT_EXPORT_NAME => {
                // No error reply exists for this option: an unknown name
                // can only close the connection.
                let Some(export) = exports.open(&data) else {
                    Metrics::inc(&exports.metrics.nbd_exports_unknown);
                    return Err("unknown export (NBD_OPT_EXPORT_NAME)");
                };
                w.write_all(&export.size.to_be_bytes())
                    .await
                    .map_err(|_| "gone")?;
                w.write_all(&EXPORT_FLAGS.to_be_bytes())
                    .await
                    .map_err(|_| "gone")?;
                if !no_zeroes {
                    w.write_all(&[0u8; 124]).await.map_err(|_| "gone")?;
                }
                w.flush().await.map_err(|_| "gone")?;
                return Ok(Some(export));
            }
            OPT_ABORT => {
                reply(w, option, REP_ACK, &[]).await?;
                w.flush().await.map_err(|_| "gone")?;
                return Ok(None);
            }
            OPT_INFO | OPT_GO => {
                let Some(name) = go_name(&data) else {
                    reply(w, option, REP_ERR_INVALID, b"malformed request").await?;
                    w.flush().await.map_err(|_| "gone")?;
                    continue;
                };
                let Some(export) = exports.open(name) else {
                    Metrics::inc(&exports.metrics.nbd_exports_unknown);
                    let why = b"no such export: name an artifact by its sha256 digest";
                    reply(w, option, REP_ERR_UNKNOWN, why).await?;
                    w.flush().await.map_err(|_| "gone")?;
                    continue;
                };
                reply(w, option, REP_INFO, &info_export(export.size)).await?;
                reply(w, option, REP_INFO, &info_block_size()).await?;
                reply(w, option, REP_ACK, &[]).await?;
                w.flush().await.map_err(|_| "gone")?;
                if option == OPT_GO {
                    return Ok(Some(export));
                }
            }
            OPT_LIST => {
                let why = b"exports are not listed: name an artifact by its sha256 digest";
                reply(w, option, REP_ERR_POLICY, why).await?;
                w.flush().await.map_err(|_| "gone")?;
            }
            _ => {
                reply(w, option, REP_ERR_UNSUP, &[]).await?;
                w.flush().await.map_err(|_| "gone")?;
            }
        }
    }
    Err("too many options")
}

/// Requests until the client disconnects.
async fn transmission(
    r: &mut Reader,
    w: &mut Writer,
    export: Export,
    exports: &Exports,
    mut tally: Option<Box<dyn Tally>>,
) -> Result<(), &'static str> {
    let mut head = [0u8; 28];
    loop {
        if r.read_exact(&mut head).await.is_err() {
            return Ok(());
        }
        let req = Request::parse(&head).ok_or("bad request magic")?;
        match req.kind {
            CMD_READ => {
                if let Some(errno) = req.read_error(export.size) {
                    w.write_all(&simple_reply(errno, req.handle))
                        .await
                        .map_err(|_| "gone")?;
                } else {
                    let file = export.file.clone();
                    let (offset, len) = (req.offset, req.length as usize);
                    let read = move || {
                        let mut buf = vec![0u8; len];
                        file.read_exact_at(&mut buf, offset).map(|()| buf)
                    };
                    // A small read is a copy from the page cache: done here,
                    // as handing it to the blocking pool costs more than
                    // the read (4 KiB is what dm-verity asks). Large ones
                    // go to the pool.
                    let data = if len <= INLINE_READ {
                        read()
                    } else {
                        tokio::task::spawn_blocking(read)
                            .await
                            .map_err(|_| "read task failed")?
                    };
                    match data {
                        Ok(buf) => {
                            w.write_all(&simple_reply(0, req.handle))
                                .await
                                .map_err(|_| "gone")?;
                            w.write_all(&buf).await.map_err(|_| "gone")?;
                            Metrics::add(&exports.metrics.nbd_bytes, buf.len() as u64);
                            Metrics::inc(&exports.metrics.nbd_reads);
                            if let Some(t) = tally.as_mut() {
                                t.read(buf.len() as u64);
                            }
                        }
                        Err(e) => {
                            info!(error = %e, "NBD read failed");
                            w.write_all(&simple_reply(EIO, req.handle))
                                .await
                                .map_err(|_| "gone")?;
                        }
                    }
                }
            }
            CMD_WRITE => {
                // The payload follows the header: read past it, then refuse.
                if req.length > MAX_READ {
                    return Err("write payload too large");
                }
                let mut left = u64::from(req.length);
                let mut sink = tokio::io::sink();
                let copied = tokio::io::copy(&mut (&mut *r).take(left), &mut sink)
                    .await
                    .map_err(|_| "gone")?;
                left -= copied;
                if left != 0 {
                    return Ok(());
                }
                w.write_all(&simple_reply(EPERM, req.handle))
                    .await
                    .map_err(|_| "gone")?;
            }
            CMD_DISC => return Ok(()),
            CMD_FLUSH => {
                w.write_all(&simple_reply(0, req.handle))
                    .await
                    .map_err(|_| "gone")?;
            }
            CMD_TRIM => {
                w.write_all(&simple_reply(EPERM, req.handle))
                    .await
                    .map_err(|_| "gone")?;
            }
            _ => {
                w.write_all(&simple_reply(EINVAL, req.handle))
                    .await
                    .map_err(|_| "gone")?;
            }
        }
        // Replies go out when no further request is already waiting.
        if r.buffer().len() < 28 {
            w.flush().await.map_err(|_| "gone")?;
        }
    }
}
