//! Who is at this address: the evidence that lets a boot-path request act
//! for a machine.
//!
//! Firmware cannot authenticate, so the boot path (scripts, GRUB configs,
//! configs, confirmations, ONIE installers, ZTP scripts) is open. What keeps
//! one host from acting for another is this rule: a request acts for MAC M
//! only when its source address is bound to M by evidence the server holds
//! itself, in this order:
//!
//! 1. [`Evidence::Lease`]: this server's own DHCP or DHCPv6 lease for M,
//!    bound and unexpired (full mode, direct or relayed);
//! 2. [`Evidence::Declared`]: an address the operator declared for M (a DHCP
//!    reservation);
//! 3. [`Evidence::Neighbour`]: the kernel's complete neighbour (ARP, or NDP
//!    for IPv6) entry for the address on a boot interface, naming M (proxy
//!    mode on the same segment, or a SLAAC address on an IPv6 boot link: the
//!    server holds no lease for the address, but the kernel has just talked
//!    to M at that address to answer the request);
//! 4. [`Evidence::Slaac`]: on a link behind a DHCPv6 relay (where the
//!    server sees no neighbour entry), a SLAAC address whose interface
//!    identifier is the EUI-64 of M while M holds a DHCPv6 lease in that
//!    link's prefix (the live OS takes one after its firmware's DHCPv6).
//!
//! Invariants: an address is bound to at most one MAC (the first evidence in
//! that order wins); nothing a client sends (a MAC in a URL, a header, a
//! query) is evidence. What the rule cannot see below it is said in the
//! README's security model: a host that forges its Ethernet source on the
//! boot segment (and so gets a lease or a neighbour entry as M) is stopped
//! only by the switch (port security, DHCP snooping); on a relayed IPv6
//! link, a host there that takes M's SLAAC address while M is booted is
//! stopped by the same (RA guard, source guard), as a host taking M's
//! leased address is.
//!
//! `[boot] binding = "off"` turns the rule off, for labs where no evidence
//! can exist (proxy mode behind a relay, loopback tests standing in for many
//! machines); the server warns at start.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::clients::Clients;
use crate::domain::MacAddr;
use crate::metrics::Metrics;

/// Whether boot-path requests must come from a bound address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The binding rule holds (the default).
    #[default]
    Required,
    /// Every request acts for the MAC it names (labs only).
    Off,
}

/// Why an address is bound to a MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Evidence {
    Lease,
    Declared,
    Neighbour,
    /// A SLAAC address behind a DHCPv6 relay, made from the MAC of a
    /// machine that holds a DHCPv6 lease on that link.
    Slaac,
}

/// The answer for one request: may it act for the MAC it names?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Yes, by this evidence.
    Bound(Evidence),
    /// Yes: binding is off.
    Unchecked,
    /// No: the address is bound to another MAC, or to none.
    Unbound,
}

impl Verdict {
    pub fn allows(self) -> bool {
        !matches!(self, Verdict::Unbound)
    }
}

/// How long a read of the kernel's neighbour table is reused.
const NEIGHBOUR_TTL: Duration = Duration::from_millis(500);

/// The evidence the server holds, asked per request.
pub struct Bindings {
    mode: Mode,
    /// This server's leases (full mode); `None` without DHCP.
    leases: Option<Clients>,
    /// Reservations: address → MAC, as the operator declared them.
    declared: HashMap<IpAddr, MacAddr>,
    neighbours: Neighbours,
    /// Counts refusals (`boot_unbound`): a refused request leaves a
    /// counter, nothing else.
    metrics: Arc<Metrics>,
}

impl Bindings {
    /// `boot_interfaces`: the interfaces whose neighbour entries count (the
    /// DHCP interfaces; empty: every interface, as DHCP then serves all).
    pub fn new(
        mode: Mode,
        leases: Option<Clients>,
        declared: impl IntoIterator<Item = (IpAddr, MacAddr)>,
        boot_interfaces: Vec<String>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            mode,
            leases,
            declared: declared.into_iter().collect(),
            neighbours: Neighbours::new(boot_interfaces),
            metrics,
        }
    }

    /// Binding off, for tests of other things.
    pub fn off() -> Self {
        Self::new(Mode::Off, None, [], Vec::new(), Arc::default())
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// May a request from `ip` act for `mac`? A refusal is counted.
    pub fn check(&self, ip: IpAddr, mac: MacAddr) -> Verdict {
        if self.mode == Mode::Off {
            return Verdict::Unchecked;
        }
        match self.who(ip) {
            Some((bound, evidence)) if bound == mac => Verdict::Bound(evidence),
            _ => {
                Metrics::inc(&self.metrics.boot_unbound);
                tracing::debug!(%mac, %ip, "request from an address not bound to the machine it names");
                Verdict::Unbound
            }
        }
    }

    /// The MAC `ip` is bound to, and why. Binding off changes nothing here:
    /// this is evidence, for requests that name no MAC (GRUB's fixed
    /// `/grub/grub.cfg`, ONIE's waterfall without its headers).
    pub fn who(&self, ip: IpAddr) -> Option<(MacAddr, Evidence)> {
        let ip = canonical(ip);
        if let Some(clients) = &self.leases {
            let now = crate::ledger::now_ms();
            let leased = match ip {
                IpAddr::V4(v4) => clients.bound_mac(v4, now),
                IpAddr::V6(v6) => clients.bound_mac6(v6, now),
            };
            if let Some(mac) = leased {
                return Some((mac, Evidence::Lease));
            }
        }
        if let Some(mac) = self.declared.get(&ip) {
            return Some((*mac, Evidence::Declared));
        }
        if let Some(mac) = self.neighbours.mac_of(ip) {
            return Some((mac, Evidence::Neighbour));
        }
        match (ip, &self.leases) {
            (IpAddr::V6(v6), Some(clients)) => clients
                .relayed_slaac(v6, crate::ledger::now_ms())
                .map(|mac| (mac, Evidence::Slaac)),
            _ => None,
        }
    }
}

/// An IPv4-mapped IPv6 peer (a dual-stack socket) is its IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The kernel's IPv4 neighbour table (`/proc/net/arp`), read on demand and
/// reused for [`NEIGHBOUR_TTL`].
struct Neighbours {
    interfaces: Vec<String>,
    cache: Mutex<Option<(Instant, HashMap<Ipv4Addr, MacAddr>)>>,
    /// The IPv6 table (NDP), read through rtnetlink ([`crate::neigh6`]).
    cache6: Mutex<Option<(Instant, HashMap<std::net::Ipv6Addr, MacAddr>)>>,
}

impl Neighbours {
    fn new(interfaces: Vec<String>) -> Self {
        Self {
            interfaces,
            cache: Mutex::new(None),
            cache6: Mutex::new(None),
        }
    }

    fn mac_of(&self, ip: IpAddr) -> Option<MacAddr> {
        let v4 = match ip {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(v6) => return self.mac_of6(v6),
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = cache
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < NEIGHBOUR_TTL);
        // A miss rereads at once: the kernel resolved the address just
        // now, to answer this very request.
        let hit = fresh
            .then(|| cache.as_ref().and_then(|(_, t)| t.get(&v4).copied()))
            .flatten();
        if hit.is_some() {
            return hit;
        }
        let text = std::fs::read_to_string("/proc/net/arp").unwrap_or_default();
        let table = parse_arp(&text, &self.interfaces);
        let found = table.get(&v4).copied();
        *cache = Some((Instant::now(), table));
        found
    }
}

impl Neighbours {
    /// The IPv6 neighbour entry for `ip` on a boot interface, read again
    /// on a miss (the kernel has just resolved it to answer this request).
    fn mac_of6(&self, ip: std::net::Ipv6Addr) -> Option<MacAddr> {
        let mut cache = self.cache6.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = cache
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < NEIGHBOUR_TTL);
        let hit = fresh
            .then(|| cache.as_ref().and_then(|(_, t)| t.get(&ip).copied()))
            .flatten();
        if hit.is_some() {
            return hit;
        }
        let table = match crate::neigh6::ipv6_neighbours(&self.interfaces) {
            Ok(table) => table,
            Err(e) => {
                tracing::debug!(error = %e, "IPv6 neighbour table unreadable");
                HashMap::new()
            }
        };
        let found = table.get(&ip).copied();
        *cache = Some((Instant::now(), table));
        found
    }
}

/// `/proc/net/arp`: complete entries (flag ATF_COM) on `interfaces` (all
/// when empty), address → MAC.
fn parse_arp(text: &str, interfaces: &[String]) -> HashMap<Ipv4Addr, MacAddr> {
    const ATF_COM: u32 = 0x2;
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [ip, _hw_type, flags, mac, _mask, device] = f[..] else {
                return None;
            };
            let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16).ok()?;
            let on_boot_interface = interfaces.is_empty() || interfaces.iter().any(|i| i == device);
            (flags & ATF_COM != 0 && on_boot_interface)
                .then(|| Some((ip.parse().ok()?, mac.parse().ok()?)))
                .flatten()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARP: &str = "\
IP address       HW type     Flags       HW address            Mask     Device
10.77.0.127      0x1         0x2         52:54:00:00:d0:01     *        br0
10.77.0.128      0x1         0x0         00:00:00:00:00:00     *        br0
10.77.0.129      0x1         0x6         52:54:00:00:d0:03     *        br0
192.168.5.9      0x1         0x2         52:54:00:00:d0:04     *        eth0
garbage line
10.77.0.130      0x1         0x2         not-a-mac             *        br0
";

    #[test]
    fn neighbour_entries_count_when_complete_and_on_a_boot_interface() {
        let mac = |s: &str| s.parse::<MacAddr>().unwrap();
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let boot = parse_arp(ARP, &["br0".to_string()]);
        assert_eq!(
            boot.get(&ip("10.77.0.127")),
            Some(&mac("52:54:00:00:d0:01"))
        );
        assert_eq!(boot.get(&ip("10.77.0.128")), None, "incomplete");
        assert_eq!(
            boot.get(&ip("10.77.0.129")),
            Some(&mac("52:54:00:00:d0:03")),
            "complete and permanent"
        );
        assert_eq!(boot.get(&ip("192.168.5.9")), None, "not a boot interface");
        assert_eq!(boot.len(), 2);
        let all = parse_arp(ARP, &[]);
        assert_eq!(
            all.len(),
            3,
            "no boot interfaces configured: every interface"
        );
    }

    #[test]
    fn declared_addresses_bind_and_everything_else_does_not() {
        let m1: MacAddr = "52:54:00:00:00:01".parse().unwrap();
        let m2: MacAddr = "52:54:00:00:00:02".parse().unwrap();
        let declared: IpAddr = "10.0.0.50".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.50".parse().unwrap();
        let metrics = Arc::new(Metrics::default());
        let b = Bindings::new(
            Mode::Required,
            None,
            [(declared, m1)],
            vec!["no-such-interface".into()],
            metrics.clone(),
        );
        assert_eq!(b.check(declared, m1), Verdict::Bound(Evidence::Declared));
        assert_eq!(b.check(mapped, m1), Verdict::Bound(Evidence::Declared));
        assert_eq!(
            b.check(declared, m2),
            Verdict::Unbound,
            "another MAC's address"
        );
        let stranger: IpAddr = "10.0.0.66".parse().unwrap();
        assert_eq!(b.check(stranger, m1), Verdict::Unbound);
        assert!(!b.check(stranger, m1).allows());
        assert_eq!(
            metrics
                .boot_unbound
                .load(std::sync::atomic::Ordering::Relaxed),
            3
        );
        let off = Bindings::off();
        assert_eq!(off.check(stranger, m1), Verdict::Unchecked);
        assert!(off.check(stranger, m1).allows());
    }
}
