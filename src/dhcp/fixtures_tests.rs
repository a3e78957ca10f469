//! Real packets from real clients (`tests/fixtures/dhcp/`, recorded by
//! `tests/fixtures/capture.sh` from QEMU's iPXE ROM, OVMF, chained iPXE and
//! busybox udhcpc) decoded and classified: one row per capture.

use std::net::Ipv4Addr;

use dhcproto::v4::MessageType;

use super::classify::{bootfile, BootTargets, Bootfile, ClientFacts, ClientKind, NoBoot};
use super::handler::{Dhcp, Incoming, Port};
use super::packet::parse;
use crate::config::RawBootfiles;
use crate::domain::Arch;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/dhcp/{name}.bin",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn targets() -> BootTargets {
    BootTargets {
        files: RawBootfiles::default(),
        server_ip: Ipv4Addr::new(10, 77, 0, 1).into(),
        http_port: 8080,
    }
}

/// (capture, kind, architecture, what it is told to load)
type Row = (
    &'static str,
    ClientKind,
    Option<Arch>,
    Result<Bootfile, NoBoot>,
);

#[test]
fn every_capture_decodes_and_classifies() {
    use Bootfile::*;
    let script = || Ok(Http("http://10.77.0.1:8080/boot.ipxe".into()));
    #[rustfmt::skip]
    let table: Vec<Row> = vec![
        ("qemu-bios-ipxe-rom",          ClientKind::Ipxe,     Some(Arch::BiosX86), script()),
        ("ipxe-chained-undionly-rom",   ClientKind::Ipxe,     Some(Arch::BiosX86), script()),
        ("ipxe-chained-undionly",       ClientKind::Ipxe,     Some(Arch::BiosX86), script()),
        ("ovmf-pxe",                    ClientKind::Pxe,      Some(Arch::EfiX64),  Ok(Tftp("ipxe.efi".into()))),
        ("ovmf-ipxe-rom",               ClientKind::Ipxe,     Some(Arch::EfiX64),  script()),
        ("ipxe-chained-snponly",        ClientKind::Ipxe,     Some(Arch::EfiX64),  script()),
        ("ovmf-httpboot",               ClientKind::HttpBoot, Some(Arch::HttpX64), Ok(Http("http://10.77.0.1:8080/ipxe/ipxe.efi".into()))),
        ("udhcpc-onie",                 ClientKind::Onie,     None,                Ok(OnieInstaller("http://10.77.0.1:8080/onie/52-54-00-99-00-06/onie-installer".into()))),
    ];
    for (name, kind, arch, boot) in table {
        for (stage, msg_type) in [
            ("discover", MessageType::Discover),
            ("request", MessageType::Request),
        ] {
            let bytes = fixture(&format!("{name}-{stage}"));
            let req = parse(&bytes).unwrap_or_else(|e| panic!("{name}-{stage}: {e}"));
            assert_eq!(req.msg_type, msg_type, "{name}-{stage}");
            let facts = ClientFacts::from_request(&req);
            assert_eq!(facts.kind(), kind, "{name}-{stage}");
            assert_eq!(facts.arch, arch, "{name}-{stage}");
            assert_eq!(bootfile(&facts, &targets()), boot, "{name}-{stage}");
            if stage == "request" {
                assert!(
                    req.requested_ip().is_some() && req.server_id().is_some(),
                    "{name}: SELECTING carries 50 and 54"
                );
            }
        }
    }
}

#[test]
fn captured_identity_fields() {
    let rom = parse(&fixture("qemu-bios-ipxe-rom-discover")).unwrap();
    assert_eq!(
        rom.user_classes(),
        ["iPXE"],
        "raw user class, no RFC 3004 length byte"
    );
    assert!(rom.options.contains(175));
    let ovmf = parse(&fixture("ovmf-pxe-discover")).unwrap();
    assert_eq!(
        ovmf.vendor_class().as_deref(),
        Some("PXEClient:Arch:00007:UNDI:003000")
    );
    assert!(
        ovmf.uuid().is_some(),
        "OVMF sends its SMBIOS UUID in option 97"
    );
    let onie = parse(&fixture("udhcpc-onie-discover")).unwrap();
    assert_eq!(
        onie.vendor_class().as_deref(),
        Some("onie_vendor:x86_64-acme_widget-r0")
    );
    let http = parse(&fixture("ovmf-httpboot-discover")).unwrap();
    assert!(!http.requested_options().contains(&66) && http.requested_options().contains(&67));
}

/// Every captured DISCOVER gets an answer a client of its kind can use, in
/// proxy mode (the default): here through the whole handler.
#[test]
fn the_handler_answers_every_captured_boot_client_in_proxy_mode() {
    let settings = crate::config::load_str("server_ip = \"10.77.0.1\"")
        .unwrap()
        .dhcp;
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::default());
    let (ledger, _rx) = crate::ledger::Ledger::new(1024, metrics.clone());
    let dhcp = Dhcp::new(
        settings,
        targets(),
        crate::clients::Clients::empty(),
        ledger,
        metrics,
    );
    for name in [
        "qemu-bios-ipxe-rom",
        "ovmf-pxe",
        "ovmf-ipxe-rom",
        "ovmf-httpboot",
        "ipxe-chained-undionly",
        "udhcpc-onie",
    ] {
        let bytes = fixture(&format!("{name}-discover"));
        let inc = Incoming {
            bytes: &bytes,
            src: "0.0.0.0:68".parse().unwrap(),
            port: Port::Dhcp,
            local: Ipv4Addr::new(10, 77, 0, 1),
            interface_net: None,
        };
        let out = dhcp.handle(&inc, 0);
        if name == "udhcpc-onie" {
            assert!(
                out.is_none(),
                "switches need an address with their URL: full mode only"
            );
            continue;
        }
        let out = out.unwrap_or_else(|| panic!("{name} answered"));
        assert!(out.bytes.len() >= 300);
        assert_eq!(
            out.dest.ip(),
            &Ipv4Addr::BROADCAST,
            "{name}: no giaddr, no ciaddr: broadcast"
        );
        let reply = parse_reply(&out.bytes);
        assert_eq!(
            reply.get(&60).map(Vec::as_slice),
            Some(if name == "ovmf-httpboot" {
                &b"HTTPClient"[..]
            } else {
                &b"PXEClient"[..]
            }),
            "{name}"
        );
        assert!(
            reply.contains_key(&97) == parse(&bytes).unwrap().options.contains(97),
            "{name}: opt 97 echoed"
        );
    }
}

fn parse_reply(bytes: &[u8]) -> std::collections::HashMap<u8, Vec<u8>> {
    let mut out = std::collections::HashMap::new();
    let mut i = 240;
    while i + 1 < bytes.len() {
        match bytes[i] {
            0 => i += 1,
            255 => break,
            c => {
                let len = bytes[i + 1] as usize;
                out.insert(c, bytes[i + 2..i + 2 + len].to_vec());
                i += 2 + len;
            }
        }
    }
    out
}

/// The captured ONIE DISCOVER (busybox udhcpc run as ONIE runs it), through
/// the whole handler in full mode: an address, opt 114 and opt 125 with the
/// installer URL, opt 66, and no loader file.
#[test]
fn the_captured_onie_client_gets_its_installer_url_in_full_mode() {
    let settings = crate::config::load_str(
        r#"
server_ip = "10.77.0.1"
[dhcp]
mode = "full"
[[dhcp.subnet]]
network = "10.77.0.0/24"
range = ["10.77.0.100", "10.77.0.110"]
"#,
    )
    .unwrap()
    .dhcp;
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::default());
    let (ledger, _rx) = crate::ledger::Ledger::new(1024, metrics.clone());
    let dhcp = Dhcp::new(
        settings,
        targets(),
        crate::clients::Clients::empty(),
        ledger,
        metrics,
    );
    let bytes = fixture("udhcpc-onie-discover");
    let inc = Incoming {
        bytes: &bytes,
        src: "0.0.0.0:68".parse().unwrap(),
        port: Port::Dhcp,
        local: Ipv4Addr::new(10, 77, 0, 1),
        interface_net: Some("10.77.0.1/24".parse().unwrap()),
    };
    let out = dhcp.handle(&inc, 0).expect("ONIE is answered");
    let reply = parse_reply(&out.bytes);
    let url = "http://10.77.0.1:8080/onie/52-54-00-99-00-06/onie-installer";
    assert_eq!(reply[&114], url.as_bytes());
    assert_eq!(reply.get(&125).cloned(), crate::boot::onie::option_125(url));
    assert_eq!(reply[&66], b"10.77.0.1");
    assert!(!reply.contains_key(&67), "no loader for a switch");
    assert!(!reply.contains_key(&239), "239 was not asked for");
    assert_eq!(&out.bytes[16..19], &[10, 77, 0], "an address in the subnet");
    assert_eq!(
        dhcp.clients().seen("52:54:00:99:00:06".parse().unwrap()),
        None,
        "a new MAC is remembered once it is bound, not at its DISCOVER"
    );
}
