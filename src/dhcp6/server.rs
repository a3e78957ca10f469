//! The DHCPv6 socket: receive, hand to [`Dhcp6::handle`], send. A Reply
//! that binds addresses is a promise: it leaves only once every lease in it
//! is committed (the same group commit as DHCPv4's ACKs); the loop never
//! waits for that.
//!
//! One IPv6-only UDP socket on `dhcp6.listen` (port 547), joined to
//! All_DHCP_Relay_Agents_and_Servers (ff02::1:2) on each boot interface.
//! Clients on the link send from their link-local address, whose scope id
//! names the interface: replies go back the same way, and a link-local
//! sender on an interface outside `dhcp6.interfaces` is dropped. Relays send
//! from a routable address and are answered on port 547.
//!
//! The Ethernet source of a link-local sender (evidence of its MAC, ahead
//! of the EUI-64 of its address) comes from the kernel's neighbour table
//! when the kernel already has an entry (from an earlier exchange): read at
//! most every [`NEIGHBOURS_EVERY`], and only on a miss.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::domain::MacAddr;
use crate::ledger::now_ms;
use crate::metrics::Metrics;

use super::handler::{Dhcp6, Incoming6, Outgoing6};
use super::packet::ALL_SERVERS_AND_RELAYS;

/// Replies waiting for their leases' commit at once; beyond this the
/// writer is far behind and the client is left to retransmit.
const MAX_PROMISED: usize = 4096;
/// How often advertised addresses nobody requested are forgotten.
const EXPIRY: Duration = Duration::from_secs(10);
/// The neighbour table is read again at most this often (a flood of
/// strangers costs one netlink dump per interval, not one per datagram).
pub const NEIGHBOURS_EVERY: Duration = Duration::from_millis(500);
/// How long an entry read from the table is believed without a new read.
const HIT_FOR: Duration = Duration::from_secs(5);

/// The kernel's IPv6 neighbour entries on the served interfaces, cached.
struct EthernetSources {
    interfaces: Vec<String>,
    table: HashMap<Ipv6Addr, MacAddr>,
    read_at: Option<Instant>,
}

impl EthernetSources {
    fn new(served: &HashSet<u32>) -> Self {
        let interfaces = served
            .iter()
            .filter_map(|i| nix::net::if_::if_indextoname(*i).ok())
            .map(|name| name.to_string_lossy().into_owned())
            .collect();
        Self {
            interfaces,
            table: HashMap::new(),
            read_at: None,
        }
    }

    /// The MAC the kernel has for a link-local sender, if it has one.
    fn of(&mut self, src: &SocketAddrV6) -> Option<MacAddr> {
        let ip = *src.ip();
        if !ip.is_unicast_link_local() {
            return None;
        }
        let age = self.read_at.map(|at| at.elapsed());
        if let Some(mac) = self.table.get(&ip) {
            // A hit is trusted while the read is recent (an address can
            // change hands).
            if age.is_some_and(|a| a < HIT_FOR) {
                return Some(*mac);
            }
        }
        if age.is_some_and(|a| a < NEIGHBOURS_EVERY) {
            return None;
        }
        self.read_at = Some(Instant::now());
        match crate::neigh6::ipv6_neighbours(&self.interfaces) {
            Ok(table) => self.table = table,
            Err(e) => debug!(error = %e, "IPv6 neighbour table unreadable"),
        }
        self.table.get(&ip).copied()
    }
}

/// Binds `listen` (IPv6 only) and joins ff02::1:2 on each interface;
/// returns the socket and the served interface indexes (empty: any).
pub fn bind(listen: SocketAddr, interfaces: &[String]) -> io::Result<(UdpSocket, HashSet<u32>)> {
    let sock = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    sock.set_only_v6(true)?;
    sock.set_reuse_address(true)?;
    crate::dhcp::server::storm_sized(&sock);
    sock.set_nonblocking(true)?;
    sock.bind(&listen.into())?;
    let mut served = HashSet::new();
    for name in interfaces {
        let index = crate::netif::index(name)
            .map_err(|e| io::Error::new(e.kind(), format!("interface {name}: {e}")))?;
        sock.join_multicast_v6(&ALL_SERVERS_AND_RELAYS, index)
            .map_err(|e| io::Error::new(e.kind(), format!("joining ff02::1:2 on {name}: {e}")))?;
        served.insert(index);
    }
    Ok((UdpSocket::from_std(sock.into())?, served))
}

pub async fn run(
    socket: UdpSocket,
    served: HashSet<u32>,
    dhcp6: Arc<Dhcp6>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    info!(addr = %socket.local_addr()?, "DHCPv6 listening");
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 4096];
    let mut promised: tokio::task::JoinSet<()> = tokio::task::JoinSet::new();
    let mut expiry = tokio::time::interval(EXPIRY);
    let mut ethernet = EthernetSources::new(&served);
    loop {
        while promised.try_join_next().is_some() {}
        let received = tokio::select! {
            _ = shutdown.cancelled() => {
                // Promises already made are kept before the socket closes.
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    while promised.join_next().await.is_some() {}
                })
                .await;
                return Ok(());
            }
            _ = expiry.tick() => {
                dhcp6.expire(now_ms());
                continue;
            }
            r = socket.recv_from(&mut buf) => r,
        };
        let (len, src) = match received {
            Ok((len, SocketAddr::V6(src))) => (len, src),
            Ok(_) => continue,
            Err(e) => {
                warn!(error = %e, "DHCPv6 receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if !serves(&served, &src) {
            debug!(%src, "DHCPv6 datagram from an interface not served");
            continue;
        }
        let inc = Incoming6 {
            bytes: &buf[..len],
            src,
            ethernet: ethernet.of(&src),
        };
        let Some(out) = dhcp6.handle(&inc, now_ms()) else {
            continue;
        };
        let Outgoing6 {
            bytes,
            dest,
            durable,
        } = out;
        if durable.is_empty() {
            send(&socket, &bytes, dest, &metrics).await;
            continue;
        }
        if promised.len() >= MAX_PROMISED {
            Metrics::inc(&metrics.dhcp6_send_errors);
            debug!(%dest, "Reply dropped: too many waiting for the ledger");
            continue;
        }
        let (socket, metrics) = (socket.clone(), metrics.clone());
        promised.spawn(async move {
            let mut committed = true;
            for d in durable {
                committed &= d.committed().await;
            }
            if committed {
                send(&socket, &bytes, dest, &metrics).await;
            } else {
                Metrics::inc(&metrics.dhcp6_send_errors);
                warn!(%dest, "lease not committed: Reply not sent");
            }
        });
    }
}

/// A link-local sender must be on a served interface; a relay (routable
/// source) is served wherever it comes from.
fn serves(served: &HashSet<u32>, src: &SocketAddrV6) -> bool {
    served.is_empty() || !src.ip().is_unicast_link_local() || served.contains(&src.scope_id())
}

async fn send(socket: &UdpSocket, bytes: &[u8], dest: SocketAddrV6, metrics: &Metrics) {
    if let Err(e) = socket.send_to(bytes, dest).await {
        Metrics::inc(&metrics.dhcp6_send_errors);
        warn!(%dest, error = %e, "DHCPv6 reply not sent");
    }
}
