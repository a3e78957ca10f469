//! IPv6 router advertisements on the boot interfaces.
//!
//! iPXE runs IPv6 autoconfiguration during every `Configuring (net0 …)` and
//! waits about 13 s for a router advertisement when none comes. This module
//! answers each router solicitation (and repeats every 10 s) with an RA that
//! never makes ironboot a default router (lifetime 0) and says one of two
//! things ([`Advert`]):
//! - beside IPv4 boot ([`Advert::QUIET`]): nothing else, no prefix, no M/O
//!   flags; iPXE then ends autoconfiguration at once;
//! - on an IPv6-only boot link (`[dhcp6] router_advertisement = "managed"`):
//!   M and O set, so firmware and iPXE ask DHCPv6 for an address and a boot
//!   file, and the boot prefix on-link and autonomous, so the live OS takes
//!   a SLAAC address without a DHCPv6 client.
//!
//! Raw ICMPv6 socket per interface; the kernel fills in the checksum. An
//! interface without IPv6 (libvirt disables it on its bridges) is logged once
//! and skipped.

use std::io;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;

const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
const ROUTER_SOLICITATION: u8 = 133;
const ROUTER_ADVERTISEMENT: u8 = 134;
const REPEAT: Duration = Duration::from_secs(10);
/// Solicitations from several clients at once get one answer.
const MIN_GAP: Duration = Duration::from_millis(200);

/// What an RA says besides "not a default router".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advert {
    /// M and O: addresses and other configuration from DHCPv6.
    pub managed: bool,
    /// A prefix to announce on-link and autonomous (SLAAC).
    pub prefix: Option<ipnet::Ipv6Net>,
}

impl Advert {
    /// Beside IPv4 boot: no flags, no prefix.
    pub const QUIET: Advert = Advert {
        managed: false,
        prefix: None,
    };
}

/// Lifetimes of an announced prefix: long enough to outlive any boot,
/// short enough that a retired ironboot's prefix fades within a day.
const PREFIX_VALID_SECS: u32 = 86_400;
const PREFIX_PREFERRED_SECS: u32 = 14_400;

/// The RA body: type, code, checksum (kernel), hop limit, flags, lifetime 0,
/// reachable time 0, retrans timer 0; then a Prefix Information option
/// (RFC 4861 §4.6.2) when one is announced.
pub fn advertisement(advert: &Advert) -> Vec<u8> {
    let mut ra = vec![0u8; 16];
    ra[0] = ROUTER_ADVERTISEMENT;
    ra[4] = 64; // current hop limit hint; 0 would mean "unspecified"
    if advert.managed {
        ra[5] = 0x80 | 0x40; // M (managed address) and O (other configuration)
    }
    // ra[6..8] router lifetime = 0: not a default router.
    if let Some(prefix) = advert.prefix {
        ra.extend_from_slice(&[3, 4, prefix.prefix_len(), 0x80 | 0x40]); // on-link, autonomous
        ra.extend_from_slice(&PREFIX_VALID_SECS.to_be_bytes());
        ra.extend_from_slice(&PREFIX_PREFERRED_SECS.to_be_bytes());
        ra.extend_from_slice(&[0; 4]);
        ra.extend_from_slice(&prefix.trunc().addr().octets());
    }
    ra
}

/// Opens the socket for one interface.
pub fn bind(name: &str) -> io::Result<(Socket, u32)> {
    let wrap =
        |e: io::Error| io::Error::new(e.kind(), format!("router advertisement on {name}: {e}"));
    let index = crate::netif::index(name).map_err(wrap)?;
    let sock = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6)).map_err(wrap)?;
    sock.bind_device(Some(name.as_bytes())).map_err(wrap)?;
    sock.set_multicast_hops_v6(255).map_err(wrap)?;
    sock.set_unicast_hops_v6(255).map_err(wrap)?;
    sock.set_multicast_if_v6(index).map_err(wrap)?;
    sock.set_multicast_loop_v6(false).map_err(wrap)?;
    // Receiving solicitations needs the all-routers group; without IPv6 on
    // the interface this fails, and the periodic RA still goes out if it can.
    if let Err(e) = sock.join_multicast_v6(&ALL_ROUTERS, index) {
        debug!(interface = name, error = %e, "cannot join ff02::2; sending periodic RAs only");
    }
    sock.set_nonblocking(true).map_err(wrap)?;
    Ok((sock, index))
}

/// Runs the advertiser for one interface until `shutdown`.
pub async fn run(
    name: String,
    sock: Socket,
    index: u32,
    advert: Advert,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    // tokio drives any datagram descriptor; a raw ICMPv6 socket reads and
    // writes through recvfrom/sendto exactly like UDP, without `unsafe`.
    let sock = UdpSocket::from_std(std::net::UdpSocket::from(sock))?;
    let dest = SocketAddrV6::new(ALL_NODES, 0, 0, index);
    let ra = advertisement(&advert);
    match advert.prefix {
        Some(prefix) => {
            info!(interface = %name, %prefix, managed = advert.managed, "sending IPv6 router advertisements (lifetime 0)")
        }
        None => {
            info!(interface = %name, "sending IPv6 router advertisements (lifetime 0, no prefix)")
        }
    }
    let mut last = tokio::time::Instant::now() - REPEAT;
    let mut warned = false;
    let mut buf = [0u8; 1500];
    loop {
        let due = last + REPEAT;
        let solicited = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep_until(due) => false,
            r = sock.recv_from(&mut buf) => matches!(r, Ok((n, _)) if n > 0 && buf[0] == ROUTER_SOLICITATION),
        };
        let now = tokio::time::Instant::now();
        if !solicited && now < due {
            continue;
        }
        if now.duration_since(last) < MIN_GAP {
            continue;
        }
        last = now;
        match sock.send_to(&ra, dest).await {
            Ok(_) => {
                if warned {
                    info!(interface = %name, "router advertisements are going out now");
                    warned = false;
                }
                Metrics::inc(&metrics.ra_sent);
            }
            Err(e) if !warned => {
                warned = true;
                warn!(interface = %name, error = %e, "cannot send router advertisement yet (no carrier, or IPv6 off on this interface?); will keep trying");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertisement_claims_nothing() {
        let ra = advertisement(&Advert::QUIET);
        assert_eq!(ra[0], 134);
        assert_eq!(ra[5], 0, "no M/O flags");
        assert_eq!(&ra[6..8], &[0, 0], "router lifetime 0");
        assert_eq!(ra.len(), 16, "no options, no prefix");
    }

    #[test]
    fn a_managed_advertisement_announces_the_boot_prefix() {
        let ra = advertisement(&Advert {
            managed: true,
            prefix: Some("fd00:77::5/64".parse().unwrap()),
        });
        assert_eq!(ra[5], 0xc0, "M and O");
        assert_eq!(&ra[6..8], &[0, 0], "still not a default router");
        assert_eq!(ra.len(), 16 + 32);
        let option = &ra[16..];
        assert_eq!(
            &option[..4],
            &[3, 4, 64, 0xc0],
            "prefix information, on-link, autonomous"
        );
        assert_eq!(u32::from_be_bytes(option[4..8].try_into().unwrap()), 86_400);
        let prefix: std::net::Ipv6Addr = <[u8; 16]>::try_from(&option[16..32]).unwrap().into();
        assert_eq!(prefix, "fd00:77::".parse::<std::net::Ipv6Addr>().unwrap());
    }
}
