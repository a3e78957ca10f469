//! The TFTP side of a simulated machine: one read request with blksize,
//! tsize and (optionally) windowsize, acknowledged the way a PXE ROM or
//! tftp-hpa client does (RFC 1350, 2347–2349, 7440). Written apart from the
//! server's codec on purpose, so a bug shared by both cannot hide.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;

/// What the client asks for.
#[derive(Debug, Clone)]
pub struct TftpOptions {
    pub blksize: u16,
    /// 0 or 1: plain lock-step (no windowsize option sent).
    pub windowsize: u16,
    /// Wait before resending the last ACK (or the request).
    pub timeout: Duration,
    /// Resends of one packet before the transfer is abandoned.
    pub retries: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    #[error("timed out after {0} resends")]
    Timeout(u32),
    #[error("server error {0}: {1}")]
    Server(u16, String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("size {got} differs from tsize {want}")]
    Size { got: u64, want: u64 },
    #[error("network: {0}")]
    Io(#[from] std::io::Error),
}

/// The outcome of one transfer.
#[derive(Debug, Clone, Copy)]
pub struct Fetched {
    pub bytes: u64,
    pub resends: u32,
}

const DATA: u16 = 3;
const ACK: u16 = 4;
const ERROR: u16 = 5;
const OACK: u16 = 6;

/// Reads `file` from `server` (its listen port), from a socket bound to
/// `local` (the machine's leased address when it is local, so the server
/// can tell machines apart), discarding the bytes as it goes.
pub async fn fetch(
    server: SocketAddr,
    local: IpAddr,
    file: &str,
    opts: &TftpOptions,
) -> Result<Fetched, TftpError> {
    let sock = UdpSocket::bind((local, 0)).await?;
    let request = rrq(file, opts);
    let mut buf = vec![0u8; 65536 + 4];
    let mut peer: Option<SocketAddr> = None;
    let mut blksize = 512usize;
    let mut window = 1u16;
    let mut tsize: Option<u64> = None;
    let mut expected: u64 = 1; // unwrapped index of the next DATA block
    let mut in_window = 0u16;
    let mut gap_acked: Option<u64> = None;
    let mut bytes = 0u64;
    let mut resends = 0u32;
    let mut tries = 0u32;
    // What to send again on timeout: the request, then the last ACK.
    let mut last: Vec<u8> = request.clone();
    sock.send_to(&request, server).await?;
    loop {
        let deadline = Instant::now() + opts.timeout;
        let received = loop {
            match tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await {
                Err(_) => break None,
                Ok(r) => {
                    let (n, from) = r?;
                    // Packets from another TID are not ours (RFC 1350 §4).
                    if peer.is_some_and(|p| p != from) || n < 4 {
                        continue;
                    }
                    break Some((n, from));
                }
            }
        };
        let Some((n, from)) = received else {
            tries += 1;
            if tries > opts.retries {
                return Err(TftpError::Timeout(tries - 1));
            }
            resends += 1;
            in_window = 0;
            let to = peer.unwrap_or(server);
            sock.send_to(&last, to).await?;
            continue;
        };
        tries = 0;
        peer.get_or_insert(from);
        let op = u16::from_be_bytes([buf[0], buf[1]]);
        match op {
            OACK => {
                if expected != 1 {
                    continue;
                }
                for (k, v) in parse_oack(&buf[2..n]) {
                    match k.as_str() {
                        "blksize" => blksize = v.parse().map_err(|_| bad("blksize"))?,
                        "windowsize" => window = v.parse().map_err(|_| bad("windowsize"))?,
                        "tsize" => tsize = v.parse().ok(),
                        _ => {}
                    }
                }
                last = ack(0);
                sock.send_to(&last, from).await?;
            }
            DATA => {
                let block = u16::from_be_bytes([buf[2], buf[3]]);
                if block != expected as u16 {
                    // Out of order or a repeat: acknowledge what we have
                    // (RFC 7440 §4), once per gap, so the server resumes
                    // right after it.
                    if gap_acked != Some(expected) {
                        gap_acked = Some(expected);
                        in_window = 0;
                        last = ack((expected - 1) as u16);
                        sock.send_to(&last, from).await?;
                    }
                    continue;
                }
                let len = n - 4;
                bytes += len as u64;
                expected += 1;
                in_window += 1;
                let done = len < blksize;
                if done || in_window >= window.max(1) {
                    in_window = 0;
                    last = ack(block);
                    sock.send_to(&last, from).await?;
                }
                if done {
                    if let Some(want) = tsize.filter(|t| *t != bytes) {
                        return Err(TftpError::Size { got: bytes, want });
                    }
                    return Ok(Fetched { bytes, resends });
                }
            }
            ERROR => {
                let code = u16::from_be_bytes([buf[2], buf[3]]);
                let text = String::from_utf8_lossy(&buf[4..n])
                    .trim_end_matches('\0')
                    .to_string();
                return Err(TftpError::Server(code, text));
            }
            other => return Err(TftpError::Protocol(format!("unexpected opcode {other}"))),
        }
    }
}

fn bad(what: &str) -> TftpError {
    TftpError::Protocol(format!("bad {what} in OACK"))
}

fn rrq(file: &str, opts: &TftpOptions) -> Vec<u8> {
    let mut p = vec![0, 1];
    let mut field = |s: &str| {
        p.extend_from_slice(s.as_bytes());
        p.push(0);
    };
    field(file);
    field("octet");
    field("tsize");
    field("0");
    field("blksize");
    field(&opts.blksize.to_string());
    if opts.windowsize > 1 {
        field("windowsize");
        field(&opts.windowsize.to_string());
    }
    p
}

fn ack(block: u16) -> Vec<u8> {
    let mut p = ACK.to_be_bytes().to_vec();
    p.extend_from_slice(&block.to_be_bytes());
    p
}

fn parse_oack(body: &[u8]) -> Vec<(String, String)> {
    let fields: Vec<String> = body
        .split(|b| *b == 0)
        .filter(|f| !f.is_empty())
        .map(|f| String::from_utf8_lossy(f).to_ascii_lowercase())
        .collect();
    fields
        .chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| (c[0].clone(), c[1].clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_names_every_option_and_an_oack_parses_back() {
        let opts = TftpOptions {
            blksize: 1468,
            windowsize: 16,
            timeout: Duration::from_secs(1),
            retries: 5,
        };
        let p = rrq("undionly.kpxe", &opts);
        assert_eq!(
            p,
            b"\0\x01undionly.kpxe\0octet\0tsize\x000\0blksize\x001468\0windowsize\x0016\0"
        );
        let plain = rrq(
            "x",
            &TftpOptions {
                windowsize: 1,
                ..opts
            },
        );
        assert!(!String::from_utf8_lossy(&plain).contains("windowsize"));
        assert_eq!(
            parse_oack(b"BLKSIZE\x001468\0tsize\x0070000\0"),
            [
                ("blksize".to_string(), "1468".to_string()),
                ("tsize".to_string(), "70000".to_string())
            ]
        );
        assert_eq!(ack(258), [0, 4, 1, 2]);
    }
}
