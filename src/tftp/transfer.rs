//! One read transfer, from OACK to the last ACK, on its own socket.
//!
//! Invariants:
//! - Block numbers are tracked as unwrapped `u64` indices (block 1 is the
//!   first DATA); only the wire form is `idx as u16`, so files of more than
//!   65535 blocks roll over cleanly.
//! - Only a timeout causes a retransmission. An ACK that moves nothing
//!   forward (a duplicate, or one from before the current window) is ignored:
//!   answering it would double every later block (the "sorcerer's
//!   apprentice" bug). An ACK inside the window acknowledges up to that
//!   block, and the next window starts right after it (RFC 7440).
//! - Every wait has a deadline that ignored packets do not extend, and the
//!   retries per wait are bounded, so a dead or babbling client ends the
//!   transfer in bounded time.
//! - Disk files are read on the blocking pool into one buffer per transfer
//!   (a window, at least 64 KiB); nothing holds a whole disk file in memory.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::codec::{encode_data_header, ErrorCode, Packet};

/// Where the bytes come from.
pub enum Source {
    /// A generated file, already in memory.
    Memory(Arc<[u8]>),
    /// An open disk file and its size when opened.
    Disk(Arc<File>),
}

/// The negotiated shape of one transfer.
#[derive(Debug, Clone)]
pub struct Params {
    pub blksize: usize,
    pub windowsize: u16,
    pub timeout: Duration,
    /// Double the timeout per retry (up to 8×). Off when the client chose
    /// the timeout: it asked for that interval, and 255 s with backoff would
    /// hold a transfer slot for hours.
    pub backoff: bool,
    pub retries: u32,
    /// Options to acknowledge first; empty: start with DATA 1 directly.
    pub oack: Vec<(String, String)>,
}

/// Why a transfer ended early. The `Display` text is what the ledger gets.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("timed out waiting for an acknowledgement")]
    Timeout,
    #[error("took longer than tftp.max_transfer_time")]
    TooLong,
    #[error("client sent error {code:?}: {message}")]
    ClientError { code: ErrorCode, message: String },
    /// The client answered the OACK with an error: PXE ROMs do this on
    /// purpose to learn `tsize`, then ask again.
    #[error("client aborted after option negotiation: {0}")]
    AbortedAfterOack(String),
    #[error("file changed size during the transfer")]
    FileChanged,
    #[error("server shutting down")]
    Shutdown,
    #[error("network error: {0}")]
    Io(#[from] io::Error),
}

/// Read-ahead when windows are small: one blocking read per this many bytes.
const READ_AHEAD: usize = 64 * 1024;
/// Retransmission timeouts double per retry up to this multiple.
const MAX_BACKOFF_SHIFT: u32 = 3;

/// The state of one transfer. Built by the server, consumed by [`Transfer::run`].
pub struct Transfer {
    socket: UdpSocket,
    peer: SocketAddr,
    source: Source,
    size: u64,
    params: Params,
    shutdown: CancellationToken,
    /// Disk read-ahead: `cache` holds the file bytes from `cache_start`.
    cache: Vec<u8>,
    cache_start: u64,
    packet: Vec<u8>,
    recv_buf: Vec<u8>,
    /// The client has acknowledged something: it is who asked, and gets
    /// the full retries from now on.
    answered: bool,
}

/// What is in flight and must be resent on timeout.
#[derive(Clone, Copy)]
enum Flight {
    Oack,
    /// Blocks `first..=last` (unwrapped indices).
    Window {
        first: u64,
        last: u64,
    },
}

impl Transfer {
    pub fn new(
        socket: UdpSocket,
        peer: SocketAddr,
        source: Source,
        size: u64,
        params: Params,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            socket,
            peer,
            source,
            size,
            params,
            shutdown,
            cache: Vec::new(),
            cache_start: 0,
            packet: Vec::new(),
            recv_buf: vec![0; 2048],
            answered: false,
        }
    }

    /// Sends the whole file; returns the payload bytes sent.
    pub async fn run(mut self) -> Result<u64, TransferError> {
        let result = self.send_all().await;
        if let Err(TransferError::Shutdown | TransferError::FileChanged | TransferError::Timeout) =
            &result
        {
            let message = result
                .as_ref()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            self.send_error(self.peer, ErrorCode::NotDefined, &message)
                .await;
        }
        result
    }

    async fn send_all(&mut self) -> Result<u64, TransferError> {
        let blksize = self.params.blksize as u64;
        let total_blocks = self.size / blksize + 1;
        let window = u64::from(self.params.windowsize.max(1));
        if !self.params.oack.is_empty() {
            self.send_flight(Flight::Oack).await?;
            self.wait_ack(Flight::Oack).await?;
        }
        let mut first = 1u64;
        loop {
            let last = (first + window - 1).min(total_blocks);
            let flight = Flight::Window { first, last };
            self.send_flight(flight).await?;
            let acked = self.wait_ack(flight).await?;
            if acked == total_blocks {
                return Ok(self.size);
            }
            first = acked + 1;
        }
    }

    /// Waits for an ACK that moves `flight` forward and returns the unwrapped
    /// block it acknowledges. Retransmits the flight on each timeout.
    async fn wait_ack(&mut self, flight: Flight) -> Result<u64, TransferError> {
        let retries = if self.answered {
            self.params.retries
        } else {
            self.params.retries.min(super::FIRST_FLIGHT_RETRIES)
        };
        for attempt in 0..=retries {
            if attempt > 0 {
                tracing::debug!(attempt, "retransmitting after timeout");
                self.send_flight(flight).await?;
            }
            let shift = if self.params.backoff {
                attempt.min(MAX_BACKOFF_SHIFT)
            } else {
                0
            };
            let wait = self.params.timeout * (1 << shift);
            if let Some(acked) = self.recv_ack_until(flight, Instant::now() + wait).await? {
                self.answered = true;
                return Ok(acked);
            }
        }
        Err(TransferError::Timeout)
    }

    /// Reads packets until a useful ACK or `deadline` (`None`).
    async fn recv_ack_until(
        &mut self,
        flight: Flight,
        deadline: Instant,
    ) -> Result<Option<u64>, TransferError> {
        loop {
            let received = tokio::select! {
                _ = self.shutdown.cancelled() => return Err(TransferError::Shutdown),
                r = tokio::time::timeout_at(deadline, self.socket.recv_from(&mut self.recv_buf)) => r,
            };
            let Ok(received) = received else {
                return Ok(None);
            };
            let (len, from) = received?;
            if from != self.peer {
                tracing::debug!(%from, "packet from an unknown transfer ID");
                self.send_error(from, ErrorCode::UnknownTid, "unknown transfer ID")
                    .await;
                continue;
            }
            match Packet::decode(&self.recv_buf[..len]) {
                Ok(Packet::Ack(block)) => {
                    if let Some(acked) = ack_moves(flight, block) {
                        return Ok(Some(acked));
                    }
                    tracing::trace!(block, "ignoring duplicate or stale ACK");
                }
                Ok(Packet::Error { message, .. }) if matches!(flight, Flight::Oack) => {
                    return Err(TransferError::AbortedAfterOack(message));
                }
                Ok(Packet::Error { code, message }) => {
                    return Err(TransferError::ClientError { code, message });
                }
                Ok(other) => tracing::debug!(?other, "ignoring unexpected packet"),
                Err(err) => tracing::debug!(%err, "ignoring malformed packet from client"),
            }
        }
    }

    async fn send_flight(&mut self, flight: Flight) -> Result<(), TransferError> {
        match flight {
            Flight::Oack => {
                self.packet.clear();
                Packet::Oack(self.params.oack.clone()).encode(&mut self.packet);
                self.socket.send_to(&self.packet, self.peer).await?;
            }
            Flight::Window { first, last } => {
                for idx in first..=last {
                    self.send_block(idx).await?;
                }
            }
        }
        Ok(())
    }

    async fn send_block(&mut self, idx: u64) -> Result<(), TransferError> {
        let blksize = self.params.blksize as u64;
        let start = (idx - 1) * blksize;
        let end = (start + blksize).min(self.size);
        let window_end = (start + blksize * u64::from(self.params.windowsize)).min(self.size);
        self.packet.clear();
        encode_data_header(idx as u16, &mut self.packet);
        match &self.source {
            Source::Memory(bytes) => {
                self.packet
                    .extend_from_slice(&bytes[start as usize..end as usize]);
            }
            Source::Disk(_) => {
                self.fill_cache(start, end, window_end).await?;
                let from = (start - self.cache_start) as usize;
                let to = (end - self.cache_start) as usize;
                self.packet.extend_from_slice(&self.cache[from..to]);
            }
        }
        self.socket.send_to(&self.packet, self.peer).await?;
        Ok(())
    }

    /// Makes `cache` cover `start..end`, reading at least up to `want_end`
    /// (the end of the window) and at least [`READ_AHEAD`] bytes.
    async fn fill_cache(
        &mut self,
        start: u64,
        end: u64,
        want_end: u64,
    ) -> Result<(), TransferError> {
        let cached_end = self.cache_start + self.cache.len() as u64;
        if start >= self.cache_start && end <= cached_end {
            return Ok(());
        }
        let Source::Disk(file) = &self.source else {
            return Ok(());
        };
        let read_end = want_end.max(start + READ_AHEAD as u64).min(self.size);
        let file = Arc::clone(file);
        let mut buf = std::mem::take(&mut self.cache);
        buf.resize((read_end - start) as usize, 0);
        let (buf, result) = tokio::task::spawn_blocking(move || {
            let result = file.read_exact_at(&mut buf, start);
            (buf, result)
        })
        .await
        .map_err(|join| io::Error::other(join.to_string()))?;
        self.cache = buf;
        self.cache_start = start;
        match result {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => {
                self.cache.clear();
                Err(TransferError::FileChanged)
            }
            Err(err) => Err(err.into()),
        }
    }

    async fn send_error(&mut self, to: SocketAddr, code: ErrorCode, message: &str) {
        let packet = Packet::Error {
            code,
            message: message.to_string(),
        }
        .to_bytes();
        if let Err(err) = self.socket.send_to(&packet, to).await {
            tracing::debug!(%err, "could not send error packet");
        }
    }
}

/// Maps a wire ACK number to the unwrapped block it acknowledges, if it
/// moves `flight` forward: for a window `first..=last`, an ACK of any block
/// in it (an ACK of `first - 1` is the duplicate of one already handled);
/// for an OACK, ACK 0.
fn ack_moves(flight: Flight, wire: u16) -> Option<u64> {
    match flight {
        Flight::Oack => (wire == 0).then_some(0),
        Flight::Window { first, last } => {
            let offset = u64::from(wire.wrapping_sub(first as u16));
            (first + offset <= last).then_some(first + offset)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_mapping_handles_rollover_and_duplicates() {
        let w = |first, last| Flight::Window { first, last };
        // (flight, wire ack, expected)
        let table = [
            (w(1, 1), 1, Some(1)),
            (w(1, 1), 0, None),
            (w(2, 2), 1, None),
            (w(1, 8), 5, Some(5)),
            (w(1, 8), 8, Some(8)),
            (w(1, 8), 9, None),
            (w(1, 8), 0, None),
            // Window straddling 65535 → 0.
            (w(65_530, 65_545), 65_535, Some(65_535)),
            (w(65_530, 65_545), 0, Some(65_536)),
            (w(65_530, 65_545), 9, Some(65_545)),
            (w(65_530, 65_545), 10, None),
            (w(65_530, 65_545), 65_529, None),
            // Second rollover.
            (w(131_072, 131_072), 0, Some(131_072)),
            (w(131_072, 131_072), 65_535, None),
        ];
        for (flight, wire, expected) in table {
            assert_eq!(ack_moves(flight, wire), expected, "wire {wire}");
        }
        assert_eq!(ack_moves(Flight::Oack, 0), Some(0));
        assert_eq!(ack_moves(Flight::Oack, 1), None);
    }
}
