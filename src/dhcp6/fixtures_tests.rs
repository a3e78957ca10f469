//! Real DHCPv6 captures (tests/fixtures/dhcp6, recorded from QEMU's OVMF,
//! its iPXE ROMs and dnsmasq's relay by tests/fixtures/capture6.sh) through
//! the whole pure chain: parse, identity, classification. One row per
//! capture kind, side by side.

use std::net::Ipv6Addr;

use dhcproto::v6::MessageType;

use super::classify::Facts6;
use super::identity::{identify, MacSource};
use super::packet::parse;
use crate::dhcp::classify::ClientKind;
use crate::domain::{Arch, MacAddr};

macro_rules! fixture {
    ($name:literal) => {
        (
            $name,
            &include_bytes!(concat!("../../tests/fixtures/dhcp6/", $name, ".bin"))[..],
        )
    };
}

struct Row {
    file: (&'static str, &'static [u8]),
    /// The datagram's IPv6 source, as captured.
    src: &'static str,
    msg: MessageType,
    kind: ClientKind,
    arch: Option<Arch>,
    mac: &'static str,
    from: MacSource,
    /// IA_NAs in the message.
    ias: usize,
}

#[test]
fn every_captured_client_is_parsed_identified_and_classified() {
    use ClientKind::*;
    use MessageType::*;
    let rows = [
        // OVMF PXEv6, DUID-UUID (SMBIOS UUID set): the MAC from the
        // link-local address.
        Row {
            file: fixture!("ovmf-pxe6-solicit"),
            src: "fe80::5054:ff:fe77:1",
            msg: Solicit,
            kind: Pxe,
            arch: Some(Arch::EfiX64),
            mac: "52:54:00:77:00:01",
            from: MacSource::LinkLocal,
            ias: 1,
        },
        Row {
            file: fixture!("ovmf-pxe6-request"),
            src: "fe80::5054:ff:fe77:1",
            msg: Request,
            kind: Pxe,
            arch: Some(Arch::EfiX64),
            mac: "52:54:00:77:00:01",
            from: MacSource::LinkLocal,
            ias: 1,
        },
        Row {
            file: fixture!("ovmf-pxe6-release"),
            src: "fe80::5054:ff:fe77:1",
            msg: Release,
            kind: Other,
            arch: None,
            mac: "52:54:00:77:00:01",
            from: MacSource::LinkLocal,
            ias: 1,
        },
        // OVMF's own IPv6 set-up before PXE: nothing about booting.
        Row {
            file: fixture!("ovmf-pxe6-ip6config-solicit"),
            src: "fe80::5054:ff:fe77:1",
            msg: Solicit,
            kind: Other,
            arch: None,
            mac: "52:54:00:77:00:01",
            from: MacSource::LinkLocal,
            ias: 1,
        },
        // No SMBIOS UUID: DUID-LLT carries the MAC.
        Row {
            file: fixture!("ovmf-pxe6-nouuid-solicit"),
            src: "fe80::5054:ff:fe77:9",
            msg: Solicit,
            kind: Pxe,
            arch: Some(Arch::EfiX64),
            mac: "52:54:00:77:00:09",
            from: MacSource::Duid,
            ias: 1,
        },
        // OVMF HTTPv6.
        Row {
            file: fixture!("ovmf-http6-solicit"),
            src: "fe80::5054:ff:fe77:6",
            msg: Solicit,
            kind: HttpBoot,
            arch: Some(Arch::HttpX64),
            mac: "52:54:00:77:00:06",
            from: MacSource::LinkLocal,
            ias: 1,
        },
        // iPXE: the BIOS ROM, its stateless variant, the EFI binary
        // chained by OVMF; all-zero DUID-UUID without -uuid.
        Row {
            file: fixture!("bios-ipxe-rom6-solicit"),
            src: "fe80::5054:ff:fe77:3",
            msg: Solicit,
            kind: Ipxe,
            arch: Some(Arch::BiosX86),
            mac: "52:54:00:77:00:03",
            from: MacSource::LinkLocal,
            ias: 1,
        },
        Row {
            file: fixture!("bios-ipxe-rom6-nouuid-solicit"),
            src: "fe80::5054:ff:fe77:8",
            msg: Solicit,
            kind: Ipxe,
            arch: Some(Arch::BiosX86),
            mac: "52:54:00:77:00:08",
            from: MacSource::LinkLocal,
            ias: 1,
        },
        Row {
            file: fixture!("bios-ipxe-rom6-stateless-information-request"),
            src: "fe80::5054:ff:fe77:7",
            msg: InformationRequest,
            kind: Ipxe,
            arch: Some(Arch::BiosX86),
            mac: "52:54:00:77:00:07",
            from: MacSource::LinkLocal,
            ias: 0,
        },
        Row {
            file: fixture!("ipxe-efi-chained6-nouuid-request"),
            src: "fe80::5054:ff:fe77:9",
            msg: Request,
            kind: Ipxe,
            arch: Some(Arch::EfiX64),
            mac: "52:54:00:77:00:09",
            from: MacSource::LinkLocal,
            ias: 1,
        },
        // Through dnsmasq's relay: option 79 names the MAC; the datagram's
        // source is the relay's.
        Row {
            file: fixture!("ovmf-pxe6-relayed-relay-forw-solicit"),
            src: "fd00:77::2",
            msg: Solicit,
            kind: Pxe,
            arch: Some(Arch::EfiX64),
            mac: "52:54:00:77:00:05",
            from: MacSource::RelayOption79,
            ias: 1,
        },
    ];
    for row in rows {
        let (name, bytes) = row.file;
        let req = parse(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(req.msg_type(), row.msg, "{name}");
        assert_eq!(req.ia_nas().len(), row.ias, "{name}");
        let src: Ipv6Addr = row.src.parse().unwrap();
        let who = identify(&req, src, None).unwrap_or_else(|| panic!("{name}: no MAC"));
        assert_eq!(who.mac, row.mac.parse::<MacAddr>().unwrap(), "{name}");
        assert_eq!(who.source, row.from, "{name}");
        let facts = Facts6::from_request(&req);
        assert_eq!(facts.kind(), row.kind, "{name}");
        if row.kind != Other {
            assert_eq!(facts.arch, row.arch, "{name}");
        }
    }
}
