//! The DHCP sockets: receive, hand to [`Dhcp::handle`], send. An ACK is a
//! promise: it is sent only once the lease it gives is committed (the
//! writer commits at once when a promise waits, so every ACK queued
//! meanwhile shares one transaction); the loop never waits for that.
//!
//! One socket per port (67 and, in proxy mode, 4011), with `IP_PKTINFO` on
//! both directions: each datagram's receiving interface and local address are
//! known, requests from interfaces outside `dhcp.interfaces` are dropped, and
//! every reply leaves by the interface and from the address the request came
//! in on. A limited broadcast is therefore pinned to the boot interface and
//! never wanders out of the default route's.

use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use nix::libc;
use nix::sys::socket::{
    recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags, SockaddrIn,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::ledger::now_ms;
use crate::metrics::Metrics;

use super::handler::{Dhcp, Incoming, Port};

/// The boot interfaces a socket serves: ifindex → the interface's IPv4
/// network. `None` serves every interface (addresses from `IP_PKTINFO`).
#[derive(Debug, Clone, Default)]
pub struct Paths {
    pub interfaces: Option<HashMap<u32, (String, Ipv4Net)>>,
}

impl Paths {
    /// Resolves configured names; fails (naming the interface) if one is
    /// missing or has no IPv4 address.
    pub fn resolve(names: &[String]) -> io::Result<Self> {
        if names.is_empty() {
            return Ok(Self { interfaces: None });
        }
        let mut map = HashMap::new();
        for name in names {
            let index = crate::netif::index(name)
                .map_err(|e| io::Error::new(e.kind(), format!("dhcp.interfaces: {name}: {e}")))?;
            let net = crate::netif::interface_ipv4(name)?.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("dhcp.interfaces: {name} has no IPv4 address"),
                )
            })?;
            map.insert(index, (name.clone(), net));
        }
        Ok(Self {
            interfaces: Some(map),
        })
    }

    /// This server's address and network on the path a datagram came in on.
    fn local(
        &self,
        ifindex: u32,
        spec_dst: Ipv4Addr,
        bound: Ipv4Addr,
    ) -> Option<(Ipv4Addr, Option<Ipv4Net>)> {
        match &self.interfaces {
            Some(map) => map.get(&ifindex).map(|(_, net)| (net.addr(), Some(*net))),
            None if !bound.is_unspecified() => Some((bound, None)),
            None => Some((spec_dst, None)),
        }
    }
}

/// A received datagram with its path.
struct Received {
    len: usize,
    src: SocketAddrV4,
    ifindex: u32,
    spec_dst: Ipv4Addr,
}

/// Serves one bound socket until `shutdown`.
pub async fn run(
    socket: UdpSocket,
    port: Port,
    dhcp: Arc<Dhcp>,
    paths: Arc<Paths>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let bound = match socket.local_addr()? {
        std::net::SocketAddr::V4(a) => *a.ip(),
        std::net::SocketAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
    };
    info!(addr = %socket.local_addr()?, ?port, "DHCP listening");
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 4096];
    // ACKs waiting for their lease's commit (group commit), each sent by
    // its own task when the batch it joined is in SQLite; the loop goes on
    // receiving meanwhile.
    let mut promised: tokio::task::JoinSet<()> = tokio::task::JoinSet::new();
    loop {
        while promised.try_join_next().is_some() {}
        let received = tokio::select! {
            _ = shutdown.cancelled() => {
                // Promises already made are kept (or not, if their commit
                // fails) before the socket closes; bounded by the writer.
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    while promised.join_next().await.is_some() {}
                })
                .await;
                return Ok(());
            }
            r = receive(&socket, &mut buf) => r,
        };
        let rx = match received {
            Ok(rx) => rx,
            Err(e) => {
                warn!(error = %e, "DHCP receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some((local, interface_net)) = paths.local(rx.ifindex, rx.spec_dst, bound) else {
            debug!(ifindex = rx.ifindex, src = %rx.src, "datagram from an interface not served");
            continue;
        };
        let inc = Incoming {
            bytes: &buf[..rx.len],
            src: rx.src,
            port,
            local,
            interface_net,
        };
        let Some(out) = dhcp.handle(&inc, now_ms()) else {
            continue;
        };
        // Broadcasts and client unicasts leave by the receiving interface;
        // replies to relays follow the routing table, from our address.
        let ifindex = if out.dest.ip() == &Ipv4Addr::BROADCAST || inc.src.ip().is_unspecified() {
            rx.ifindex
        } else {
            0
        };
        let Some(durable) = out.durable else {
            send_reply(&socket, &out.bytes, out.dest, ifindex, local, &metrics).await;
            continue;
        };
        if promised.len() >= MAX_PROMISED {
            // The writer is far behind: answer nothing rather than promise
            // what is not written; the client asks again.
            Metrics::inc(&metrics.dhcp_ignored);
            debug!(dest = %out.dest, "ACK dropped: too many waiting for the ledger");
            continue;
        }
        let (socket, metrics) = (socket.clone(), metrics.clone());
        promised.spawn(async move {
            if durable.committed().await {
                send_reply(&socket, &out.bytes, out.dest, ifindex, local, &metrics).await;
            } else {
                Metrics::inc(&metrics.dhcp_send_errors);
                warn!(dest = %out.dest, "ACK not sent: its lease could not be committed");
            }
        });
    }
}

/// ACKs waiting for their commit at once, per socket.
const MAX_PROMISED: usize = 16_384;

async fn send_reply(
    socket: &UdpSocket,
    bytes: &[u8],
    dest: SocketAddrV4,
    ifindex: u32,
    local: Ipv4Addr,
    metrics: &Metrics,
) {
    if let Err(e) = send(socket, bytes, dest, ifindex, local).await {
        Metrics::inc(&metrics.dhcp_send_errors);
        warn!(%dest, error = %e, "DHCP reply not sent");
    }
}

async fn receive(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<Received> {
    socket
        .async_io(Interest::READABLE, || {
            let mut cmsg = nix::cmsg_space!(libc::in_pktinfo);
            let mut iov = [IoSliceMut::new(buf)];
            let msg = recvmsg::<SockaddrIn>(
                socket.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_DONTWAIT,
            )
            .map_err(io::Error::from)?;
            let src = msg.address.map(|a| SocketAddrV4::new(a.ip(), a.port()));
            let (mut ifindex, mut spec_dst) = (0, Ipv4Addr::UNSPECIFIED);
            for c in msg.cmsgs().map_err(io::Error::from)? {
                if let ControlMessageOwned::Ipv4PacketInfo(pi) = c {
                    ifindex = pi.ipi_ifindex as u32;
                    spec_dst = Ipv4Addr::from(u32::from_be(pi.ipi_spec_dst.s_addr));
                }
            }
            let src = src.unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
            Ok(Received {
                len: msg.bytes,
                src,
                ifindex,
                spec_dst,
            })
        })
        .await
}

async fn send(
    socket: &UdpSocket,
    bytes: &[u8],
    dest: SocketAddrV4,
    ifindex: u32,
    from: Ipv4Addr,
) -> io::Result<()> {
    let pktinfo = libc::in_pktinfo {
        ipi_ifindex: ifindex as libc::c_int,
        ipi_spec_dst: libc::in_addr {
            s_addr: u32::from(from).to_be(),
        },
        ipi_addr: libc::in_addr { s_addr: 0 },
    };
    let addr = SockaddrIn::from(dest);
    socket
        .async_io(Interest::WRITABLE, || {
            let iov = [IoSlice::new(bytes)];
            let cmsgs = [ControlMessage::Ipv4PacketInfo(&pktinfo)];
            sendmsg(
                socket.as_raw_fd(),
                &iov,
                &cmsgs,
                MsgFlags::MSG_DONTWAIT,
                Some(&addr),
            )
            .map_err(io::Error::from)
        })
        .await
        .map(|_| ())
}

/// Receive buffer asked for on DHCP sockets (8 MiB: ~20,000 requests).
const RECEIVE_BUFFER: usize = 8 << 20;

/// Asks for [`RECEIVE_BUFFER`] on a DHCP or DHCPv6 socket. A boot storm
/// arrives as a burst: with the default buffer (~200 KiB) the kernel drops
/// requests while a core is busy elsewhere, and each drop costs the client
/// a retransmission timeout (4 s for PXE). The kernel caps the size at
/// net.core.rmem_max unless the process may exceed it (CAP_NET_ADMIN, which
/// a DHCP server usually has); a smaller buffer is not an error.
pub fn storm_sized(sock: &socket2::Socket) {
    if nix::sys::socket::setsockopt(
        sock,
        nix::sys::socket::sockopt::RcvBufForce,
        &RECEIVE_BUFFER,
    )
    .is_err()
    {
        let _ = sock.set_recv_buffer_size(RECEIVE_BUFFER);
    }
}

/// Binds a DHCP socket: broadcast allowed, `IP_PKTINFO` on, address reuse so
/// a restart does not wait. Errors name the address.
pub fn bind(addr: std::net::SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let wrap = |e: io::Error| io::Error::new(e.kind(), format!("DHCP {addr}: {e}"));
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(wrap)?;
    sock.set_reuse_address(true).map_err(wrap)?;
    sock.set_broadcast(true).map_err(wrap)?;
    nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::Ipv4PacketInfo, &true)
        .map_err(|e| wrap(e.into()))?;
    storm_sized(&sock);
    sock.set_nonblocking(true).map_err(wrap)?;
    sock.bind(&addr.into()).map_err(wrap)?;
    UdpSocket::from_std(sock.into()).map_err(wrap)
}
