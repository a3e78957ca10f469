//! The listen loop and the life of one request.
//!
//! [`run`] owns the listen socket and every transfer task (a `JoinSet`); on
//! shutdown it stops reading requests, lets each transfer notice the token
//! and send a final ERROR, and returns once all of them have ended.
//!
//! Invariants:
//! - The listen loop never awaits disk or a peer: it decodes, refuses what it
//!   can refuse at once (WRQ, non-octet modes, busy) with a non-blocking send,
//!   and hands a read request to a new task. Undecodable datagrams are
//!   counted (`tftp_malformed`) and dropped without a reply.
//! - Each transfer runs on a fresh socket bound to the local address the
//!   request arrived on, port chosen by the kernel (its TID).
//! - At most `max_transfers` transfers run at once (a semaphore permit lives
//!   as long as the task); beyond that a request gets ERROR 0 "server busy".
//! - Error packets carry fixed texts only, never a server path.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use serde_json::json;
use tokio::net::UdpSocket;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::codec::{ErrorCode, Mode, Packet, Request};
use super::net::{path_mtu, Listener, Received};
use super::options::{negotiate, Limits};
use super::path::{open_under_root, sanitize, PathError};
use super::transfer::{Params, Source, Transfer, TransferError};
use super::TftpState;
use crate::domain::MacAddr;
use crate::metrics::Metrics;

/// Bytes of IPv4 + UDP + TFTP headers: blksize is capped to MTU minus this.
const HEADER_OVERHEAD: usize = 32;

/// Serves read requests arriving on `socket` until `shutdown` is cancelled.
/// The caller binds the socket (and fails fast if it cannot).
pub async fn run(
    socket: UdpSocket,
    state: Arc<TftpState>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let listener = Listener::new(&socket)?;
    let server = Server {
        socket: &socket,
        permits: Arc::new(Semaphore::new(state.config.max_transfers.max(1))),
        per_client: Default::default(),
        state,
        shutdown: shutdown.clone(),
    };
    tracing::info!(addr = %socket.local_addr()?, "TFTP server listening");
    let mut transfers = JoinSet::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(joined) = transfers.join_next(), if !transfers.is_empty() => Event::Joined(joined),
            received = listener.recv(&mut buf) => Event::Datagram(received),
        };
        match event {
            Event::Joined(joined) => log_join(joined),
            Event::Datagram(Ok(rx)) => server.handle(&buf[..rx.len], rx, &mut transfers),
            Event::Datagram(Err(err)) => {
                tracing::warn!(%err, "TFTP receive failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
    while let Some(joined) = transfers.join_next().await {
        log_join(joined);
    }
    tracing::info!("TFTP server stopped");
    Ok(())
}

enum Event {
    Joined(Result<(), tokio::task::JoinError>),
    Datagram(io::Result<Received>),
}

fn log_join(joined: Result<(), tokio::task::JoinError>) {
    if let Err(err) = joined {
        tracing::error!(%err, "TFTP transfer task panicked");
    }
}

/// What the listen loop shares with the request handler.
struct Server<'a> {
    socket: &'a UdpSocket,
    state: Arc<TftpState>,
    permits: Arc<Semaphore>,
    per_client: crate::per_address::PerAddress,
    shutdown: CancellationToken,
}

impl Server<'_> {
    fn handle(&self, datagram: &[u8], rx: Received, transfers: &mut JoinSet<()>) {
        let metrics = &self.state.metrics;
        let request = match Packet::decode(datagram) {
            Ok(Packet::Rrq(request)) => request,
            Ok(Packet::Wrq(request)) => {
                return self.refuse(
                    rx.from,
                    &request,
                    ErrorCode::AccessViolation,
                    "writes not supported",
                );
            }
            Ok(other) => {
                Metrics::inc(&metrics.tftp_malformed);
                return tracing::debug!(from = %rx.from, ?other, "not a request; dropped");
            }
            Err(err) => {
                Metrics::inc(&metrics.tftp_malformed);
                return tracing::debug!(from = %rx.from, %err, "malformed datagram dropped");
            }
        };
        Metrics::inc(&metrics.tftp_requests);
        if request.mode != Mode::Octet {
            let message = "only octet (binary) mode is supported";
            return self.refuse(rx.from, &request, ErrorCode::IllegalOperation, message);
        }
        if request.filename.len() > super::MAX_FILENAME {
            return self.refuse(
                rx.from,
                &request,
                ErrorCode::AccessViolation,
                "file name too long",
            );
        }
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            return self.refuse(rx.from, &request, ErrorCode::NotDefined, "server busy");
        };
        let Some(client_slot) = self
            .per_client
            .take(rx.from.ip(), self.state.config.max_transfers_per_client)
        else {
            return self.refuse(
                rx.from,
                &request,
                ErrorCode::NotDefined,
                "server busy for this client",
            );
        };
        let local = rx.local.unwrap_or(match rx.from {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        });
        let mac = self.state.clients.mac_of(rx.from.ip());
        let span = tracing::info_span!(
            "tftp",
            client = %rx.from,
            mac = mac.map(tracing::field::display),
            file = %request.filename,
        );
        let job = Job {
            state: Arc::clone(&self.state),
            request,
            client: rx.from,
            mac,
            local,
            shutdown: self.shutdown.clone(),
            _permit: permit,
            _client_slot: client_slot,
        };
        transfers.spawn(job.serve().instrument(span));
    }

    /// Answers from the listen socket without waiting, and records why.
    fn refuse(&self, to: SocketAddr, request: &Request, code: ErrorCode, message: &str) {
        Metrics::inc(&self.state.metrics.tftp_refused);
        tracing::info!(client = %to, file = %request.filename, reason = message, "TFTP request refused");
        let mac = self.state.clients.mac_of(to.ip());
        record_failure(&self.state, mac, to, &request.filename, message);
        let packet = Packet::Error {
            code,
            message: message.to_string(),
        }
        .to_bytes();
        if let Err(err) = self.socket.try_send_to(&packet, to) {
            tracing::debug!(%err, "could not send refusal");
        }
    }
}

fn record_failure(
    state: &TftpState,
    mac: Option<MacAddr>,
    client: SocketAddr,
    file: &str,
    reason: &str,
) {
    // The name is the client's: recorded capped.
    let file: String = file.chars().take(crate::boot::claims::MAX_CLAIM).collect();
    let detail = json!({ "file": file, "reason": reason });
    state
        .ledger
        .event(mac, Some(client.ip()), "tftp.failed", detail, None);
}

/// One accepted read request, owned by its task.
struct Job {
    state: Arc<TftpState>,
    request: Request,
    client: SocketAddr,
    /// From `state.clients`, once, when the request arrived.
    mac: Option<MacAddr>,
    local: IpAddr,
    shutdown: CancellationToken,
    /// Held for the life of the transfer: frees a slot when dropped.
    _permit: OwnedSemaphorePermit,
    /// The same, counted against the client's address.
    _client_slot: crate::per_address::AddressSlot,
}

impl Job {
    async fn serve(self) {
        let socket = match UdpSocket::bind(SocketAddr::new(self.local, 0)).await {
            Ok(socket) => socket,
            Err(err) => {
                tracing::warn!(%err, "cannot bind a transfer socket");
                Metrics::inc(&self.state.metrics.tftp_failed);
                return record_failure(
                    &self.state,
                    self.mac,
                    self.client,
                    &self.request.filename,
                    "no socket",
                );
            }
        };
        let (path, source, size) = match self.open().await {
            Ok(opened) => opened,
            Err(err) => return self.refuse_on(&socket, err).await,
        };
        let params = self.negotiate(size);
        let (blksize, windowsize) = (params.blksize, params.windowsize);
        tracing::debug!(blksize, windowsize, size, "transfer starting");
        let transfer = Transfer::new(
            socket,
            self.client,
            source,
            size,
            params,
            self.shutdown.clone(),
        );
        let result = tokio::time::timeout(self.state.config.max_transfer_time, transfer.run())
            .await
            .unwrap_or(Err(TransferError::TooLong));
        self.finish(&path, blksize, windowsize, result);
    }

    /// Resolves the request: generated files first, then the disk under root.
    async fn open(&self) -> Result<(String, Source, u64), PathError> {
        let path = sanitize(&self.request.filename)?;
        if let Some(generated) = self.state.generated.clone() {
            let (name, client) = (path.clone(), self.client);
            // Generating may render templates and read disk: off the runtime.
            let found = tokio::task::spawn_blocking(move || {
                if let Some(bytes) = generated.get(&name, client) {
                    return Some(Ok(bytes));
                }
                let chosen = generated.file(&name, client)?;
                let file = std::fs::File::open(chosen).ok()?;
                Some(Err(file))
            })
            .await
            .map_err(|_| PathError::NotFound)?;
            match found {
                Some(Ok(bytes)) => {
                    let size = bytes.len() as u64;
                    return Ok((path, Source::Memory(bytes), size));
                }
                Some(Err(file)) => {
                    let size = file.metadata().map_err(|_| PathError::NotFound)?.len();
                    return Ok((path, Source::Disk(Arc::new(file)), size));
                }
                None => {}
            }
        }
        let root = self.state.config.root.clone();
        let relative = path.clone();
        let opened = tokio::task::spawn_blocking(move || open_under_root(&root, &relative))
            .await
            .map_err(|_| PathError::NotFound)?;
        let (file, size) = opened?;
        Ok((path, Source::Disk(Arc::new(file)), size))
    }

    fn negotiate(&self, size: u64) -> Params {
        let config = &self.state.config;
        let mut max_blksize = usize::from(config.max_blksize);
        if let Some(mtu) = path_mtu(self.local, self.client) {
            max_blksize = max_blksize.min(mtu.saturating_sub(HEADER_OVERHEAD));
        }
        let limits = Limits {
            max_blksize,
            max_windowsize: config.max_windowsize,
            default_timeout: config.timeout,
            max_timeout: config.max_timeout,
        };
        let negotiated = negotiate(&self.request.options, limits, size);
        Params {
            blksize: negotiated.blksize,
            windowsize: negotiated.windowsize,
            timeout: negotiated.timeout,
            backoff: !negotiated.timeout_negotiated,
            retries: config.retries,
            oack: negotiated.oack,
        }
    }

    async fn refuse_on(&self, socket: &UdpSocket, err: PathError) {
        Metrics::inc(&self.state.metrics.tftp_refused);
        tracing::info!(reason = %err, "TFTP request refused");
        record_failure(
            &self.state,
            self.mac,
            self.client,
            &self.request.filename,
            &err.to_string(),
        );
        let packet = Packet::Error {
            code: err.code(),
            message: err.to_string(),
        }
        .to_bytes();
        if let Err(err) = socket.send_to(&packet, self.client).await {
            tracing::debug!(%err, "could not send refusal");
        }
    }

    fn finish(
        &self,
        path: &str,
        blksize: usize,
        windowsize: u16,
        result: Result<u64, TransferError>,
    ) {
        let (metrics, ip, mac) = (&self.state.metrics, self.client.ip(), self.mac);
        match result {
            Ok(bytes) => {
                Metrics::inc(&metrics.tftp_completed);
                Metrics::add(&metrics.tftp_bytes, bytes);
                tracing::info!(bytes, blksize, windowsize, "TFTP transfer complete");
                let detail = json!({ "file": path, "blksize": blksize, "windowsize": windowsize });
                self.state
                    .ledger
                    .event(mac, Some(ip), "tftp.complete", detail, Some(bytes));
            }
            Err(TransferError::AbortedAfterOack(message)) => {
                // The PXE "tsize probe": not a failure, the client asks again.
                tracing::debug!(%message, "client ended the transfer after the OACK");
                let detail = json!({ "file": path, "reason": "aborted after option negotiation" });
                self.state
                    .ledger
                    .event(mac, Some(ip), "tftp.aborted", detail, None);
            }
            Err(err) => {
                Metrics::inc(&metrics.tftp_failed);
                tracing::info!(reason = %err, "TFTP transfer failed");
                let detail = json!({ "file": path, "reason": err.to_string() });
                self.state
                    .ledger
                    .event(mac, Some(ip), "tftp.failed", detail, None);
            }
        }
    }
}
