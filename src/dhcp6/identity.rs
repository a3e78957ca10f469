//! Which MAC a DHCPv6 client is, and from what evidence.
//!
//! A machine is keyed by its MAC across IPv4 and IPv6, but DHCPv6 carries
//! no hardware address: it has to be learnt. The evidence, strongest first
//! (the first found wins):
//!
//! 1. option 79 (RFC 6939) of the relay nearest the client: the relay saw
//!    the frame;
//! 2. the client's DUID, when it is DUID-LLT or DUID-LL of an Ethernet
//!    address;
//! 3. the Ethernet source of the datagram, when the socket knows it;
//! 4. not relayed: the EUI-64 interface identifier of the client's
//!    link-local source address;
//! 5. relayed: the EUI-64 interface identifier of the innermost relay's
//!    peer address (the client's address as the relay saw it).
//!
//! Invariants: a DUID-UUID or DUID-EN alone is never an identity (iPXE's
//! DUID-UUID is all zeros under QEMU, so every such machine would be one);
//! a multicast or all-zero MAC is never an identity; a later source naming
//! another MAC is recorded in [`Identity::disagrees`], not refused (a
//! machine may send a DUID made from another of its NICs). Locally
//! administered MACs work like any other. Pure.

use std::net::Ipv6Addr;

use serde::Serialize;

use crate::domain::MacAddr;

use super::packet::Request6;

/// DUID-LLT: type, hardware type, time, link-layer address.
const DUID_LLT: u16 = 1;
/// DUID-LL: type, hardware type, link-layer address.
const DUID_LL: u16 = 3;
/// IANA hardware type 1: Ethernet.
const HW_ETHERNET: u16 = 1;

/// Where a client's MAC was learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MacSource {
    /// Option 79 of the innermost relay hop.
    RelayOption79,
    /// The client's DUID-LLT or DUID-LL.
    Duid,
    /// The datagram's Ethernet source address.
    Ethernet,
    /// The EUI-64 of the client's link-local source address.
    LinkLocal,
    /// The EUI-64 of the innermost relay's peer address.
    RelayPeer,
}

impl MacSource {
    pub fn name(self) -> &'static str {
        match self {
            MacSource::RelayOption79 => "relay_option79",
            MacSource::Duid => "duid",
            MacSource::Ethernet => "ethernet",
            MacSource::LinkLocal => "link_local",
            MacSource::RelayPeer => "relay_peer",
        }
    }
}

/// A DHCPv6 client's MAC and the evidence for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub mac: MacAddr,
    pub source: MacSource,
    /// Another source that names a different MAC (recorded, not refused: a
    /// machine may send a DUID made from another NIC).
    pub disagrees: Option<(MacSource, MacAddr)>,
}

/// The client's MAC, from the strongest evidence in `req`; `src` is the
/// datagram's source address, `ethernet` its Ethernet source when known.
pub fn identify(req: &Request6, src: Ipv6Addr, ethernet: Option<MacAddr>) -> Option<Identity> {
    let mut found = evidence(req, src, ethernet)
        .into_iter()
        .filter_map(|(source, mac)| Some((source, mac.filter(|m| usable(*m))?)));
    let (source, mac) = found.next()?;
    let disagrees = found.find(|(_, other)| *other != mac);
    Some(Identity {
        mac,
        source,
        disagrees,
    })
}

/// Every source, strongest first; `None` where it says nothing.
fn evidence(
    req: &Request6,
    src: Ipv6Addr,
    ethernet: Option<MacAddr>,
) -> [(MacSource, Option<MacAddr>); 5] {
    let hop = req.innermost_hop();
    let link_local = match hop {
        None if is_link_local(src) => eui64_mac(src),
        _ => None,
    };
    [
        (
            MacSource::RelayOption79,
            hop.and_then(|h| h.client_link_layer),
        ),
        (MacSource::Duid, req.client_id().and_then(duid_mac)),
        (MacSource::Ethernet, ethernet),
        (MacSource::LinkLocal, link_local),
        (
            MacSource::RelayPeer,
            hop.and_then(|h| eui64_mac(h.peer_addr)),
        ),
    ]
}

/// A MAC that can name one machine: not multicast, not all zeros.
fn usable(mac: MacAddr) -> bool {
    mac.0[0] & 0x01 == 0 && mac.0 != [0; 6]
}

/// fe80::/10.
fn is_link_local(addr: Ipv6Addr) -> bool {
    addr.segments()[0] & 0xffc0 == 0xfe80
}

/// The MAC inside an address's modified EUI-64 interface identifier
/// (`ff:fe` in its middle, the universal/local bit flipped), if it has one.
/// Random and stable-privacy identifiers (RFC 4941, RFC 7217) have none.
pub fn eui64_mac(addr: Ipv6Addr) -> Option<MacAddr> {
    MacAddr::from_eui64(addr)
}

/// The Ethernet address inside a DUID-LLT or DUID-LL; `None` for every
/// other DUID type, hardware type or address length.
pub fn duid_mac(duid: &[u8]) -> Option<MacAddr> {
    let [t0, t1, h0, h1, rest @ ..] = duid else {
        return None;
    };
    if u16::from_be_bytes([*h0, *h1]) != HW_ETHERNET {
        return None;
    }
    let addr = match u16::from_be_bytes([*t0, *t1]) {
        DUID_LLT => rest.get(4..)?,
        DUID_LL => rest,
        _ => return None,
    };
    (addr.len() == 6).then(|| MacAddr::from_slice(addr))?
}

/// The EUI-64 link-local address a MAC's interface forms (RFC 4291 §2.5.1).
pub fn link_local(mac: MacAddr) -> Ipv6Addr {
    let [a, b, c, d, e, f] = mac.0;
    let mut octets = [0u8; 16];
    octets[..2].copy_from_slice(&[0xfe, 0x80]);
    octets[8..].copy_from_slice(&[a ^ 0x02, b, c, 0xff, 0xfe, d, e, f]);
    Ipv6Addr::from(octets)
}

#[cfg(test)]
mod tests {
    use dhcproto::v6::{DhcpOption, MessageType};

    use super::super::packet::tests::{hop, message, request, DUID_LL};
    use super::super::packet::Hop;
    use super::*;

    fn mac(s: &str) -> MacAddr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn solicit(duid: &[u8]) -> dhcproto::v6::Message {
        message(
            MessageType::Solicit,
            vec![DhcpOption::ClientId(duid.to_vec())],
        )
    }

    /// DUID-UUID (type 4) of all zeros: what iPXE sends under QEMU.
    const DUID_UUID_ZERO: [u8; 18] = [0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    /// DUID-EN (type 2): enterprise 343, an opaque identifier.
    const DUID_EN: [u8; 10] = [0, 2, 0, 0, 1, 0x57, 1, 2, 3, 4];
    /// DUID-LLT, Ethernet, time, 52:54:00:0e:00:02.
    const DUID_LLT: [u8; 14] = [0, 1, 0, 1, 0x2a, 0, 0, 1, 0x52, 0x54, 0, 0x0e, 0, 2];

    type Found = Option<(MacSource, MacAddr)>;
    /// (case, DUID, hops, Ethernet source, source address, identity, disagreement)
    type Row<'a> = (
        &'a str,
        &'a [u8],
        &'a [Hop],
        Option<MacAddr>,
        Ipv6Addr,
        Found,
        Found,
    );

    #[test]
    fn every_source_in_order() {
        let m1 = mac("52:54:00:0e:00:01");
        let m3 = mac("52:54:00:0e:00:03");
        let m4 = mac("52:54:00:0e:00:04");
        let m5 = mac("52:54:00:0e:00:05");
        let ll5 = link_local(m5).to_string();
        let relay79 = [hop("2001:db8:1::1", &ll5, None, Some(m4))];
        let relay = [hop("2001:db8:1::1", &ll5, Some(b"ge-0/0/1"), None)];
        let far_near = [
            hop("::", "2001:db8:1::1", None, Some(m3)),
            hop("2001:db8:1::1", &ll5, None, None),
        ];
        use MacSource::*;
        #[rustfmt::skip]
        let table: Vec<Row> = vec![
            ("option 79 beats the DUID",        &DUID_LL,        &relay79,  None,     ip("2001:db8:1::1"), Some((RelayOption79, m4)), Some((Duid, m1))),
            ("DUID-LL",                         &DUID_LL,        &[],       Some(m1), link_local(m1),      Some((Duid, m1)),          None),
            ("DUID-LLT",                        &DUID_LLT,       &[],       None,     link_local(mac("52:54:00:0e:00:02")), Some((Duid, mac("52:54:00:0e:00:02"))), None),
            ("Ethernet beats the link-local",   &DUID_UUID_ZERO, &[],       Some(m3), link_local(m5),      Some((Ethernet, m3)),      Some((LinkLocal, m5))),
            ("link-local, DUID-UUID ignored",   &DUID_UUID_ZERO, &[],       None,     link_local(m5),      Some((LinkLocal, m5)),     None),
            ("link-local, DUID-EN ignored",     &DUID_EN,        &[],       None,     link_local(m5),      Some((LinkLocal, m5)),     None),
            ("relayed: the peer's EUI-64",      &DUID_UUID_ZERO, &relay,    None,     ip("2001:db8:1::1"), Some((RelayPeer, m5)),     None),
            ("relayed: src is the relay's",     &DUID_UUID_ZERO, &relay,    None,     link_local(m1),      Some((RelayPeer, m5)),     None),
            ("79 of an outer hop is not used",  &DUID_UUID_ZERO, &far_near, None,     ip("2001:db8::9"),   Some((RelayPeer, m5)),     None),
            ("global source, not link-local",   &DUID_UUID_ZERO, &[],       None,     ip("2001:db8::5054:ff:fe0e:5"), None,           None),
            ("stable-privacy link-local",       &DUID_UUID_ZERO, &[],       None,     ip("fe80::8c3a:91d2:4b7e:1f06"), None,          None),
            ("multicast MAC refused",           &DUID_UUID_ZERO, &[],       Some(mac("01:00:5e:00:00:01")), ip("fe80::1"), None,      None),
        ];
        for (name, duid, hops, ethernet, src, want, disagrees) in table {
            let req = request(&solicit(duid), hops);
            let got = identify(&req, src, ethernet);
            assert_eq!(got.map(|i| (i.source, i.mac)), want, "{name}");
            assert_eq!(got.and_then(|i| i.disagrees), disagrees, "{name}");
        }
    }

    #[test]
    fn two_ipxe_machines_with_the_same_zero_duid_are_two_machines() {
        let a = mac("52:54:00:0e:00:0a");
        let b = mac("52:54:00:0e:00:0b");
        let req = request(&solicit(&DUID_UUID_ZERO), &[]);
        let who = |m| identify(&req, link_local(m), None).map(|i| i.mac);
        assert_eq!(who(a), Some(a));
        assert_eq!(who(b), Some(b));
        assert_eq!(duid_mac(&DUID_UUID_ZERO), None);
    }

    #[test]
    fn locally_administered_macs() {
        let local = mac("02:00:00:00:00:01");
        let ll = link_local(local);
        assert_eq!(ll, ip("fe80::ff:fe00:1"), "the u/l bit is cleared");
        assert_eq!(eui64_mac(ll), Some(local));
        let req = request(&solicit(&DUID_UUID_ZERO), &[]);
        assert_eq!(
            identify(&req, ll, None).map(|i| (i.source, i.mac)),
            Some((MacSource::LinkLocal, local))
        );
    }

    #[test]
    fn eui64_and_duid_decoding() {
        let m = mac("52:54:00:12:34:56");
        assert_eq!(link_local(m), ip("fe80::5054:ff:fe12:3456"));
        assert_eq!(eui64_mac(ip("2001:db8::5054:ff:fe12:3456")), Some(m));
        assert_eq!(eui64_mac(ip("fe80::5054:ff:fd12:3456")), None);
        #[rustfmt::skip]
        let duids: [(&str, &[u8], Option<MacAddr>); 7] = [
            ("DUID-LL Ethernet",   &DUID_LL,                                Some(mac("52:54:00:0e:00:01"))),
            ("DUID-LLT Ethernet",  &DUID_LLT,                               Some(mac("52:54:00:0e:00:02"))),
            ("DUID-LL, not Ethernet (6)", &[0, 3, 0, 6, 1, 2, 3, 4, 5, 6], None),
            ("DUID-LL, 8 bytes",   &[0, 3, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8],  None),
            ("DUID-LLT, no time",  &[0, 1, 0, 1, 1, 2],                     None),
            ("DUID-EN",            &DUID_EN,                                None),
            ("DUID-UUID",          &DUID_UUID_ZERO,                         None),
        ];
        for (name, duid, want) in duids {
            assert_eq!(duid_mac(duid), want, "{name}");
        }
    }

    #[test]
    fn source_names_match_serde() {
        for s in [
            MacSource::RelayOption79,
            MacSource::Duid,
            MacSource::Ethernet,
            MacSource::LinkLocal,
            MacSource::RelayPeer,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.name());
        }
    }
}
