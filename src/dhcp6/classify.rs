//! What kind of boot client sent a DHCPv6 request: pure facts pulled out of
//! options 61, 16, 15 and 6, and the same kinds as DHCPv4's.
//!
//! What real firmware sends (the project's captures):
//!
//! - OVMF PXEv6: option 61 = 7, option 16 (enterprise 343)
//!   `PXEClient:Arch:00007:UNDI:003000`, ORO 59, 60, 23, 16;
//! - OVMF HTTPv6: option 61 = 16, option 16 `HTTPClient:Arch:00016:UNDI:003000`;
//! - iPXE: option 15 `iPXE`, option 16 `PXEClient:Arch:00007:UNDI:003010`
//!   (EFI) or `…:00000:UNDI:002001` (BIOS), option 61 sometimes absent.
//!
//! Invariants: the kind is a function of these facts alone, in v4's order
//! (iPXE before anything else, or a chained iPXE would load iPXE again
//! forever); the boot file is chosen by DHCPv4's rules
//! ([`crate::dhcp::classify::bootfile_with`]) through [`Facts6::to_v4_facts`],
//! so both families boot a machine the same way. The enterprise number of
//! option 16 is not checked: the text says what the client is.

use serde::Serialize;

use crate::dhcp::classify::{ClientFacts, ClientKind};
use crate::domain::{Arch, MacAddr};

use super::packet::Request6;

/// Option 59: the boot file URL (RFC 5970).
const OPT_BOOTFILE_URL: u16 = 59;

/// The facts classification needs, pulled out of a request once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Facts6 {
    /// Option 61's first type, else the `Arch:NNNNN` of option 16's text.
    pub arch: Option<Arch>,
    /// Option 16's first item as text.
    pub vendor_class: Option<String>,
    /// Option 15's items as text.
    pub user_classes: Vec<String>,
    /// The Option Request option names 59 (a boot file URL).
    pub wants_boot_url: bool,
}

impl Facts6 {
    pub fn from_request(req: &Request6) -> Self {
        let vendor_class = req
            .vendor_class()
            .map(|(_, text)| text)
            .filter(|text| !text.is_empty());
        let arch = match req.arch_types().first() {
            Some(code) => Some(Arch::from_code(*code)),
            None => vendor_class.as_deref().and_then(arch_in_text),
        };
        Self {
            arch,
            vendor_class,
            user_classes: req.user_classes(),
            wants_boot_url: req.requested().contains(&OPT_BOOTFILE_URL),
        }
    }

    /// iPXE (user class `iPXE`) first, then `HTTPClient…`, then `PXEClient…`.
    pub fn kind(&self) -> ClientKind {
        let vendor = self.vendor_class.as_deref().unwrap_or("");
        if self.user_classes.iter().any(|c| c == "iPXE") {
            ClientKind::Ipxe
        } else if vendor.starts_with("HTTPClient") {
            ClientKind::HttpBoot
        } else if vendor.starts_with("PXEClient") {
            ClientKind::Pxe
        } else {
            ClientKind::Other
        }
    }

    /// The same facts as DHCPv4 states them, for its loader choice.
    pub fn to_v4_facts(&self, mac: Option<MacAddr>) -> ClientFacts {
        ClientFacts {
            mac,
            arch: self.arch,
            vendor_class: self.vendor_class.clone(),
            user_classes: self.user_classes.clone(),
            ipxe_options: false,
            wants_ztp_script: false,
        }
    }
}

/// The architecture in a PXE/HTTP class text: `Arch:` and five decimal
/// digits (`PXEClient:Arch:00007:UNDI:003010`).
fn arch_in_text(text: &str) -> Option<Arch> {
    let (_, after) = text.split_once("Arch:")?;
    let digits = after.get(..5)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Arch::from_code)
}

/// The option 16 text a reply carries back (enterprise 343), if any.
///
/// Only HTTP boot gets one: OVMF's HTTPv6 boot ignores an offer without
/// `HTTPClient`. PXE gets none: OVMF's PXEv6 reads `PXEClient` echoed as
/// "this is a proxy; ask a boot server on port 4011" and fails with PXE-E16
/// when none answers.
pub fn echoes_vendor_class(kind: ClientKind) -> Option<&'static str> {
    match kind {
        ClientKind::HttpBoot => Some("HTTPClient"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv6Addr};

    use dhcproto::v6::{Architecture, DhcpOption, Message, MessageType, ORO};

    use super::super::packet::tests::{message, request, user_class, vendor_class, DUID_LL};
    use super::*;
    use crate::config::RawBootfiles;
    use crate::dhcp::classify::{bootfile, BootTargets, Bootfile, NoBoot};

    fn solicit(
        arch: Option<u16>,
        vendor: Option<&str>,
        user: Option<&str>,
        oro: &[u16],
    ) -> Message {
        let mut opts = vec![DhcpOption::ClientId(DUID_LL.to_vec())];
        opts.extend(arch.map(|a| DhcpOption::ClientArchType(vec![Architecture(a)])));
        opts.extend(vendor.map(vendor_class));
        opts.extend(user.map(user_class));
        opts.push(DhcpOption::ORO(ORO {
            opts: oro.iter().map(|c| (*c).into()).collect(),
        }));
        message(MessageType::Solicit, opts)
    }

    fn targets() -> BootTargets {
        BootTargets {
            files: RawBootfiles::default(),
            server_ip: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
            http_port: 8080,
        }
    }

    /// (client, its Solicit, kind, arch, asks for 59, option 16 echoed, boot file)
    type Row = (
        &'static str,
        Message,
        ClientKind,
        Option<Arch>,
        bool,
        Option<&'static str>,
        Result<Bootfile, NoBoot>,
    );

    #[test]
    fn every_client_kind_side_by_side() {
        use Bootfile::*;
        let script = || Ok(Http("http://[2001:db8::1]:8080/boot.ipxe".into()));
        #[rustfmt::skip]
        let table: Vec<Row> = vec![
            ("OVMF PXEv6",  solicit(Some(7), Some("PXEClient:Arch:00007:UNDI:003000"), None, &[59, 60, 23, 16]),
                ClientKind::Pxe, Some(Arch::EfiX64), true, None, Ok(Tftp("ipxe.efi".into()))),
            ("OVMF HTTPv6", solicit(Some(16), Some("HTTPClient:Arch:00016:UNDI:003000"), None, &[59, 23]),
                ClientKind::HttpBoot, Some(Arch::HttpX64), true, Some("HTTPClient"), Ok(Http("http://[2001:db8::1]:8080/ipxe/ipxe.efi".into()))),
            ("iPXE EFI, no 61", solicit(None, Some("PXEClient:Arch:00007:UNDI:003010"), Some("iPXE"), &[59, 23]),
                ClientKind::Ipxe, Some(Arch::EfiX64), true, None, script()),
            ("iPXE BIOS, no 61", solicit(None, Some("PXEClient:Arch:00000:UNDI:002001"), Some("iPXE"), &[59]),
                ClientKind::Ipxe, Some(Arch::BiosX86), true, None, script()),
            ("an OS's client", solicit(None, None, None, &[23, 24]),
                ClientKind::Other, None, false, None, Err(NoBoot::NotABootClient)),
            ("unknown arch 42", solicit(Some(42), Some("PXEClient:Arch:00042:UNDI:003000"), None, &[59]),
                ClientKind::Pxe, Some(Arch::Other(42)), true, None, Err(NoBoot::UnsupportedArch)),
            ("arch only in the text, garbled", solicit(None, Some("PXEClient:Arch:7"), None, &[]),
                ClientKind::Pxe, None, false, None, Ok(Tftp("undionly.kpxe".into()))),
        ];
        let mac = "52:54:00:0e:00:01".parse().ok();
        for (name, msg, kind, arch, wants_url, echo, boot) in table {
            let facts = Facts6::from_request(&request(&msg, &[]));
            assert_eq!(facts.kind(), kind, "{name}");
            assert_eq!(facts.arch, arch, "{name}");
            assert_eq!(facts.wants_boot_url, wants_url, "{name}");
            assert_eq!(echoes_vendor_class(kind), echo, "{name}");
            let v4 = facts.to_v4_facts(mac);
            assert_eq!(v4.kind(), kind, "{name}: DHCPv4 agrees");
            assert_eq!(bootfile(&v4, &targets()), boot, "{name}");
        }
    }
}
