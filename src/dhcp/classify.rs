//! Which kind of boot client sent a request, and what it should load next.
//!
//! Pure functions of parsed facts, tested as one case table. The order of the
//! rules is the point: a client that is already iPXE gets the HTTP script URL
//! before anything else, or it would download iPXE again forever.

use std::net::Ipv4Addr;

use serde::Serialize;

use crate::config::RawBootfiles;
use crate::domain::Arch;

use super::packet::Request;

/// The facts classification needs, pulled out of a request once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClientFacts {
    pub arch: Option<Arch>,
    pub vendor_class: Option<String>,
    pub user_classes: Vec<String>,
    /// Option 175 present (iPXE feature flags).
    pub ipxe_options: bool,
}

impl ClientFacts {
    pub fn from_request(req: &Request) -> Self {
        Self {
            arch: req.arch(),
            vendor_class: req.vendor_class(),
            user_classes: req.user_classes(),
            ipxe_options: req.options.contains(175),
        }
    }

    pub fn kind(&self) -> ClientKind {
        let vendor = self.vendor_class.as_deref().unwrap_or("");
        if self.user_classes.iter().any(|c| c == "iPXE") || self.ipxe_options {
            ClientKind::Ipxe
        } else if vendor.starts_with("HTTPClient") {
            ClientKind::HttpBoot
        } else if vendor.starts_with("PXEClient") {
            ClientKind::Pxe
        } else if vendor.starts_with("onie_vendor:") {
            ClientKind::Onie
        } else {
            ClientKind::Other
        }
    }
}

/// Coarse client kind; also the `firmware` recorded on the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientKind {
    /// Firmware PXE (BIOS ROM or UEFI): opt 60 `PXEClient…`.
    Pxe,
    /// UEFI HTTP boot: opt 60 `HTTPClient…`.
    HttpBoot,
    /// Already running iPXE: user class `iPXE` or opt 175.
    Ipxe,
    /// A switch's ONIE: opt 60 `onie_vendor:…` (served by a later issue).
    Onie,
    /// Anything else: an OS's DHCP client, a phone, a printer.
    Other,
}

impl ClientKind {
    pub fn name(self) -> &'static str {
        match self {
            ClientKind::Pxe => "pxe",
            ClientKind::HttpBoot => "http_boot",
            ClientKind::Ipxe => "ipxe",
            ClientKind::Onie => "onie",
            ClientKind::Other => "other",
        }
    }

    /// Whether the client is network-booting (and so worth recording).
    pub fn is_boot_client(self) -> bool {
        !matches!(self, ClientKind::Other)
    }
}

/// What a boot client is told to load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "via", content = "file", rename_all = "snake_case")]
pub enum Bootfile {
    /// A file name on the TFTP server (`siaddr`/opt 66 say where).
    Tftp(String),
    /// A full URL (UEFI HTTP boot, iPXE).
    Http(String),
}

impl Bootfile {
    pub fn name(&self) -> &str {
        match self {
            Bootfile::Tftp(f) | Bootfile::Http(f) => f,
        }
    }
}

/// Where files are served from, as clients must be told.
#[derive(Debug, Clone)]
pub struct BootTargets {
    pub files: RawBootfiles,
    pub server_ip: Ipv4Addr,
    pub http_port: u16,
}

impl BootTargets {
    fn http(&self, path: &str) -> String {
        let path = path.trim_start_matches('/');
        format!("http://{}:{}/{path}", self.server_ip, self.http_port)
    }
}

/// Why a boot client gets no bootfile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoBoot {
    NotABootClient,
    /// ONIE is answered by the switch support, not yet here.
    Onie,
    /// An architecture with no loader configured (ARM32, unknown codes).
    UnsupportedArch,
}

/// The bootfile for a client, or why there is none.
pub fn bootfile(facts: &ClientFacts, targets: &BootTargets) -> Result<Bootfile, NoBoot> {
    let files = &targets.files;
    match facts.kind() {
        ClientKind::Ipxe => Ok(Bootfile::Http(targets.http(&files.ipxe_script))),
        ClientKind::HttpBoot => match facts.arch {
            Some(Arch::HttpX64) | Some(Arch::EfiX64) | None => Ok(Bootfile::Http(
                targets.http(&format!("ipxe/{}", files.efi_x64)),
            )),
            Some(Arch::HttpIa32) | Some(Arch::EfiIa32) => Ok(Bootfile::Http(
                targets.http(&format!("ipxe/{}", files.efi_ia32)),
            )),
            Some(Arch::HttpArm64) | Some(Arch::EfiArm64) => Ok(Bootfile::Http(
                targets.http(&format!("ipxe/{}", files.efi_arm64)),
            )),
            Some(_) => Err(NoBoot::UnsupportedArch),
        },
        ClientKind::Pxe => match facts.arch {
            // Old PXE ROMs omit option 93; they are BIOS.
            Some(Arch::BiosX86) | None => Ok(Bootfile::Tftp(files.bios.clone())),
            Some(Arch::EfiX64) => Ok(Bootfile::Tftp(files.efi_x64.clone())),
            Some(Arch::EfiIa32) => Ok(Bootfile::Tftp(files.efi_ia32.clone())),
            Some(Arch::EfiArm64) => Ok(Bootfile::Tftp(files.efi_arm64.clone())),
            Some(_) => Err(NoBoot::UnsupportedArch),
        },
        ClientKind::Onie => Err(NoBoot::Onie),
        ClientKind::Other => Err(NoBoot::NotABootClient),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets() -> BootTargets {
        BootTargets {
            files: RawBootfiles::default(),
            server_ip: Ipv4Addr::new(10, 77, 0, 1),
            http_port: 8080,
        }
    }

    fn facts(arch: Option<u16>, vendor: &str, user: &[&str], opt175: bool) -> ClientFacts {
        ClientFacts {
            arch: arch.map(Arch::from_code),
            vendor_class: (!vendor.is_empty()).then(|| vendor.to_string()),
            user_classes: user.iter().map(|s| s.to_string()).collect(),
            ipxe_options: opt175,
        }
    }

    #[test]
    fn every_client_kind_side_by_side() {
        use Bootfile::*;
        let script = Ok(Http("http://10.77.0.1:8080/boot.ipxe".into()));
        #[rustfmt::skip]
        let table: Vec<(&str, ClientFacts, Result<Bootfile, NoBoot>)> = vec![
            ("BIOS PXE ROM",           facts(Some(0), "PXEClient:Arch:00000:UNDI:002001", &[], false), Ok(Tftp("undionly.kpxe".into()))),
            ("old PXE ROM, no opt 93", facts(None, "PXEClient", &[], false),                            Ok(Tftp("undionly.kpxe".into()))),
            ("OVMF PXE x64 (7)",       facts(Some(7), "PXEClient:Arch:00007:UNDI:003010", &[], false),  Ok(Tftp("ipxe.efi".into()))),
            ("EFI BC x64 (9)",         facts(Some(9), "PXEClient:Arch:00009:UNDI:003010", &[], false),  Ok(Tftp("ipxe.efi".into()))),
            ("IA32 UEFI (6)",          facts(Some(6), "PXEClient:Arch:00006:UNDI:003010", &[], false),  Ok(Tftp("ipxe.efi".into()))),
            ("AAVMF arm64 (11)",       facts(Some(11), "PXEClient:Arch:00011:UNDI:003000", &[], false), Ok(Tftp("grubnetaa64.efi".into()))),
            ("ARM32 UEFI (10)",        facts(Some(10), "PXEClient:Arch:00010:UNDI:003000", &[], false), Err(NoBoot::UnsupportedArch)),
            ("UEFI HTTP x64 (16)",     facts(Some(16), "HTTPClient:Arch:00016:UNDI:003000", &[], false), Ok(Http("http://10.77.0.1:8080/ipxe/ipxe.efi".into()))),
            ("UEFI HTTP arm64 (19)",   facts(Some(19), "HTTPClient:Arch:00019:UNDI:003000", &[], false), Ok(Http("http://10.77.0.1:8080/ipxe/grubnetaa64.efi".into()))),
            ("iPXE ROM, BIOS",         facts(Some(0), "PXEClient:Arch:00000:UNDI:002001", &["iPXE"], true), script.clone()),
            ("iPXE EFI",               facts(Some(7), "PXEClient:Arch:00007:UNDI:003010", &["iPXE"], true), script.clone()),
            ("iPXE, opt 175 only",     facts(Some(0), "PXEClient", &[], true),                          script.clone()),
            ("ONIE switch",            facts(None, "onie_vendor:x86_64-acme_widget-r0", &[], false),    Err(NoBoot::Onie)),
            ("Linux dhclient",         facts(None, "", &[], false),                                      Err(NoBoot::NotABootClient)),
            ("Windows",                facts(None, "MSFT 5.0", &[], false),                              Err(NoBoot::NotABootClient)),
        ];
        for (name, f, want) in table {
            assert_eq!(bootfile(&f, &targets()), want, "{name}");
        }
    }
}
