//! A lease as the address pool holds it and the store keeps it: one
//! address, who holds it, in which state, until when; and the address plan
//! it is given from (subnets, reservations). Plain data shared by
//! `clients::leases` (which decides), `config` (which reads the plan) and
//! `store` (which keeps), so none depends on another.

use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;

use super::MacAddr;

/// Milliseconds since the epoch (the store's time unit).
pub type Millis = i64;

text_enum! {
    /// A lease's state: an offer (held in memory only, until it expires),
    /// a binding, or an address a client declined (quarantined).
    pub enum State ("lease state") {
        Offered = "offered",
        Bound = "bound",
        Declined = "declined",
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub ip: Ipv4Addr,
    pub mac: Option<MacAddr>,
    pub state: State,
    pub expires_at: Millis,
    pub hostname: Option<String>,
}

impl Entry {
    /// Not expired at `now`.
    pub fn live(&self, now: Millis) -> bool {
        self.expires_at > now
    }
}

/// A subnet DHCP gives addresses in (`[[dhcp.subnet]]`, validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    pub network: Ipv4Net,
    pub range_start: Ipv4Addr,
    pub range_end: Ipv4Addr,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub lease_time: Duration,
}

/// An address the operator declared for one MAC (`[[dhcp.reservation]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    pub hostname: Option<String>,
}

/// A DHCPv6 lease: one address of one IA_NA of one machine. A machine may
/// hold several at once (OVMF takes one each for its IPv6 driver, PXE and
/// HTTP boot), told apart by the IA's identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry6 {
    pub ip: std::net::Ipv6Addr,
    /// `None` while quarantined after a Decline.
    pub mac: Option<MacAddr>,
    pub iaid: u32,
    pub state: State,
    pub expires_at: Millis,
}

impl Entry6 {
    /// Not expired at `now`.
    pub fn live(&self, now: Millis) -> bool {
        self.expires_at > now
    }
}

/// The addresses DHCPv6 gives out on one link (`[dhcp6]`, validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool6 {
    /// The on-link prefix (also the RA's prefix, when ironboot sends it).
    pub prefix: ipnet::Ipv6Net,
    pub range_start: std::net::Ipv6Addr,
    pub range_end: std::net::Ipv6Addr,
    pub lease_time: Duration,
}

/// An IPv6 address the operator declared for one MAC
/// (`[[dhcp6.reservation]]`): given to the machine's first IA_NA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation6 {
    pub mac: MacAddr,
    pub ip: std::net::Ipv6Addr,
}

/// Which half of an HA pair's clients `mac` is in (0 or 1): FNV-1a over
/// the six bytes, so both servers of a pair (and every version of them)
/// agree. The half also decides the addresses a new client of it may get
/// (`clients::leases`): offsets from the range start of its parity.
pub fn half_of(mac: MacAddr) -> u8 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in mac.0 {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    // The top bit: FNV's low bits mix little (the last one is the parity
    // of the bytes' low bits).
    (hash >> 31) as u8
}
