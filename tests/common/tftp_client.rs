//! A small TFTP read client for tests, built on the crate's own codec, with
//! hooks to misbehave on purpose (drop an ACK, repeat an ACK) and a log of
//! every DATA block it saw so tests can count retransmissions.
//!
//! Every wait has a timeout and the whole transfer a deadline.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use ironboot::tftp::codec::{ErrorCode, Mode, Packet, Request};
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// How a `get` should behave.
#[derive(Debug, Clone)]
pub struct GetOpts {
    pub mode: Mode,
    pub options: Vec<(String, String)>,
    /// Don't send the ACK for this (unwrapped) block the first time.
    pub drop_ack_once: Option<u64>,
    /// Send the ACK for this (unwrapped) block twice.
    pub duplicate_ack: Option<u64>,
    /// Wait for a repeated DATA before giving up and re-sending an ACK.
    pub recv_timeout: Duration,
    pub deadline: Duration,
}

impl Default for GetOpts {
    fn default() -> Self {
        Self {
            mode: Mode::Octet,
            options: Vec::new(),
            drop_ack_once: None,
            duplicate_ack: None,
            recv_timeout: Duration::from_secs(3),
            deadline: Duration::from_secs(60),
        }
    }
}

impl GetOpts {
    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.options.push((name.to_string(), value.to_string()));
        self
    }
}

/// What a successful or refused `get` observed.
#[derive(Debug, Default)]
pub struct GetOutcome {
    pub data: Vec<u8>,
    pub oack: Option<Vec<(String, String)>>,
    /// Wire block numbers of every DATA packet received, in order.
    pub blocks_seen: Vec<u16>,
    /// The server's transfer port (its TID).
    pub server_tid: Option<SocketAddr>,
}

#[derive(Debug)]
pub enum GetError {
    /// The server answered with an ERROR packet.
    Refused {
        code: ErrorCode,
        message: String,
    },
    Timeout,
    Protocol(String),
    Io(std::io::Error),
}

impl From<std::io::Error> for GetError {
    fn from(e: std::io::Error) -> Self {
        GetError::Io(e)
    }
}

pub async fn socket() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind client socket")
}

pub fn rrq(file: &str, mode: Mode, options: &[(String, String)]) -> Vec<u8> {
    Packet::Rrq(Request {
        filename: file.to_string(),
        mode,
        options: options.to_vec(),
    })
    .to_bytes()
}

/// Receives one datagram within `wait`; `None` on timeout.
pub async fn recv(sock: &UdpSocket, wait: Duration) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = vec![0u8; 70_000];
    match tokio::time::timeout(wait, sock.recv_from(&mut buf)).await {
        Ok(Ok((n, from))) => {
            buf.truncate(n);
            Some((buf, from))
        }
        _ => None,
    }
}

/// Sends an RRQ and expects an ERROR back; returns it.
pub async fn expect_error(server: SocketAddr, file: &str, mode: Mode) -> (ErrorCode, String) {
    let sock = socket().await;
    sock.send_to(&rrq(file, mode, &[]), server).await.unwrap();
    let (bytes, _) = recv(&sock, Duration::from_secs(5))
        .await
        .expect("an answer");
    match Packet::decode(&bytes) {
        Ok(Packet::Error { code, message }) => (code, message),
        other => panic!("expected an ERROR for {file:?}, got {other:?}"),
    }
}

/// Downloads `file`, acknowledging as RFC 1350/7440 describe.
/// A client socket of `server`'s address family.
pub async fn socket_for(server: SocketAddr) -> UdpSocket {
    match server {
        SocketAddr::V4(_) => socket().await,
        SocketAddr::V6(_) => UdpSocket::bind("[::1]:0")
            .await
            .expect("bind client socket"),
    }
}

pub async fn get(server: SocketAddr, file: &str, opts: GetOpts) -> Result<GetOutcome, GetError> {
    let sock = socket_for(server).await;
    let request = rrq(file, opts.mode, &opts.options);
    sock.send_to(&request, server).await?;
    let mut rx = Receiver::new(&opts);
    let deadline = Instant::now() + opts.deadline;
    let mut silent_rounds = 0;
    while Instant::now() < deadline {
        let Some((bytes, from)) = recv(&sock, opts.recv_timeout).await else {
            silent_rounds += 1;
            if silent_rounds > 5 {
                return Err(GetError::Timeout);
            }
            match rx.out.server_tid {
                // Nothing yet: the request itself may have been lost.
                None => sock.send_to(&request, server).await?,
                Some(tid) => {
                    sock.send_to(&Packet::Ack(rx.acked as u16).to_bytes(), tid)
                        .await?
                }
            };
            continue;
        };
        silent_rounds = 0;
        let tid = *rx.out.server_tid.get_or_insert(from);
        if from != tid {
            continue;
        }
        let packet = Packet::decode(&bytes).map_err(|e| GetError::Protocol(e.to_string()))?;
        for ack in rx.on_packet(packet)? {
            sock.send_to(&Packet::Ack(ack as u16).to_bytes(), tid)
                .await?;
        }
        if rx.done {
            return Ok(rx.out);
        }
    }
    Err(GetError::Timeout)
}

/// The receiving side's state, separate from I/O.
struct Receiver {
    blksize: usize,
    windowsize: u64,
    /// Last in-order block received (unwrapped).
    acked: u64,
    in_window: u64,
    drop_ack_once: Option<u64>,
    duplicate_ack: Option<u64>,
    done: bool,
    out: GetOutcome,
}

impl Receiver {
    fn new(opts: &GetOpts) -> Self {
        Self {
            blksize: 512,
            windowsize: 1,
            acked: 0,
            in_window: 0,
            drop_ack_once: opts.drop_ack_once,
            duplicate_ack: opts.duplicate_ack,
            done: false,
            out: GetOutcome::default(),
        }
    }

    /// Returns the ACKs to send (unwrapped block numbers).
    fn on_packet(&mut self, packet: Packet<'_>) -> Result<Vec<u64>, GetError> {
        match packet {
            Packet::Oack(options) => {
                for (name, value) in &options {
                    match name.as_str() {
                        "blksize" => self.blksize = value.parse().unwrap(),
                        "windowsize" => self.windowsize = value.parse().unwrap(),
                        _ => {}
                    }
                }
                self.out.oack = Some(options);
                Ok(self.ack(0))
            }
            Packet::Data { block, payload } => Ok(self.on_data(block, payload)),
            Packet::Error { code, message } => Err(GetError::Refused { code, message }),
            other => Err(GetError::Protocol(format!("unexpected {other:?}"))),
        }
    }

    fn on_data(&mut self, block: u16, payload: &[u8]) -> Vec<u64> {
        self.out.blocks_seen.push(block);
        let expected = self.acked + 1;
        if block != expected as u16 {
            // Out of order or a repeat: acknowledge what we have (RFC 7440).
            self.in_window = 0;
            return self.ack(self.acked);
        }
        self.out.data.extend_from_slice(payload);
        self.acked = expected;
        self.in_window += 1;
        let last = payload.len() < self.blksize;
        if last {
            self.done = true;
        }
        if last || self.in_window == self.windowsize {
            self.in_window = 0;
            return self.ack(expected);
        }
        Vec::new()
    }

    fn ack(&mut self, block: u64) -> Vec<u64> {
        if self.drop_ack_once == Some(block) {
            self.drop_ack_once = None;
            return Vec::new();
        }
        if self.duplicate_ack == Some(block) {
            self.duplicate_ack = None;
            return vec![block, block];
        }
        vec![block]
    }
}
