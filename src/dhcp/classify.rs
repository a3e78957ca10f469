//! Which kind of boot client sent a request, and what it should load next.
//!
//! Pure functions of parsed facts, tested as one case table. The order of the
//! rules is the point: a client that is already iPXE gets the HTTP script URL
//! before anything else, or it would download iPXE again forever. Which
//! loader a firmware client gets (iPXE or GRUB) is [`crate::boot::loader`]'s
//! choice; switches get an installer URL (ONIE) or a provisioning script URL
//! (network OS zero-touch provisioning) instead of a loader.

use std::net::{IpAddr, Ipv4Addr};

use serde::Serialize;

use crate::boot::loader::{self, Loader, LoaderSettings};
use crate::config::RawBootfiles;
use crate::domain::{Arch, MacAddr};

use super::packet::Request;

/// The facts classification needs, pulled out of a request once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClientFacts {
    pub mac: Option<MacAddr>,
    pub arch: Option<Arch>,
    pub vendor_class: Option<String>,
    pub user_classes: Vec<String>,
    /// Option 175 present (iPXE feature flags).
    pub ipxe_options: bool,
    /// Option 239 in the parameter request list: a network OS's zero-touch
    /// provisioning client asking for its script URL (Cumulus, SONiC).
    pub wants_ztp_script: bool,
}

/// Opt 239: the provisioning script URL (a private-use code that Cumulus
/// and SONiC read). Sent only to clients that ask for it.
pub const OPT_ZTP_SCRIPT: u8 = 239;

impl ClientFacts {
    pub fn from_request(req: &Request) -> Self {
        Self {
            mac: Some(req.mac),
            arch: req.arch(),
            vendor_class: req.vendor_class(),
            user_classes: req.user_classes(),
            ipxe_options: req.options.contains(175),
            wants_ztp_script: req.requested_options().contains(&OPT_ZTP_SCRIPT),
        }
    }

    /// Which provisioning file a [`ClientKind::Ztp`] client gets.
    pub fn ztp_flavour(&self) -> ZtpFlavour {
        ztp_flavour(self.vendor_class.as_deref().unwrap_or("")).unwrap_or(ZtpFlavour::Cumulus)
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
        } else if self.wants_ztp_script || ztp_flavour(vendor).is_some() {
            ClientKind::Ztp
        } else {
            ClientKind::Other
        }
    }
}

/// Which provisioning file a network OS's DHCP client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ZtpFlavour {
    /// A shell script with the `CUMULUS-AUTOPROVISIONING` marker, by opt 239.
    Cumulus,
    /// SONiC's `ztp.json`, by opt 67 (its vendor class is `SONiC…`).
    Sonic,
}

impl ZtpFlavour {
    /// The file name under `/ztp/<mac>/` and its template under `ztp/`.
    pub fn file(self) -> &'static str {
        match self {
            ZtpFlavour::Cumulus => "cumulus.sh",
            ZtpFlavour::Sonic => "ztp.json",
        }
    }
}

/// Network OSes known by their vendor class (opt 60).
fn ztp_flavour(vendor_class: &str) -> Option<ZtpFlavour> {
    let v = vendor_class.to_ascii_lowercase();
    if v.starts_with("sonic") {
        Some(ZtpFlavour::Sonic)
    } else if v.starts_with("cumulus") {
        Some(ZtpFlavour::Cumulus)
    } else {
        None
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
    /// A switch's ONIE: opt 60 `onie_vendor:…`.
    Onie,
    /// A switch's network OS asking for its provisioning script (opt 239
    /// requested, or a known network-OS vendor class).
    Ztp,
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
            ClientKind::Ztp => "ztp",
            ClientKind::Other => "other",
        }
    }

    /// Whether the client is network-booting (and so worth recording).
    pub fn is_boot_client(self) -> bool {
        !matches!(self, ClientKind::Other)
    }

    /// Whether the client is a switch (ONIE or a network OS).
    pub fn is_switch(self) -> bool {
        matches!(self, ClientKind::Onie | ClientKind::Ztp)
    }
}

/// What a boot client is told to load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "via", content = "file", rename_all = "snake_case")]
pub enum Bootfile {
    /// A file name on the TFTP server (`siaddr`/opt 66 say where).
    Tftp(String),
    /// A full URL (UEFI HTTP boot, iPXE).
    Http(String),
    /// ONIE's installer URL: opt 114 and opt 125 (enterprise 42623,
    /// sub-option 1), no loader.
    OnieInstaller(String),
    /// A provisioning script URL: opt 239 for clients that requested it,
    /// else opt 67.
    Ztp(String),
}

impl Bootfile {
    pub fn name(&self) -> &str {
        match self {
            Bootfile::Tftp(f)
            | Bootfile::Http(f)
            | Bootfile::OnieInstaller(f)
            | Bootfile::Ztp(f) => f,
        }
    }
}

/// Where files are served from, as clients must be told.
#[derive(Debug, Clone)]
pub struct BootTargets {
    pub files: RawBootfiles,
    /// The server as clients reach it: IPv4 for DHCP, IPv6 for DHCPv6
    /// (URLs then carry it bracketed).
    pub server_ip: IpAddr,
    pub http_port: u16,
}

impl BootTargets {
    fn http(&self, path: &str) -> String {
        let path = path.trim_start_matches('/');
        let authority = std::net::SocketAddr::new(self.server_ip, self.http_port);
        format!("http://{authority}/{path}")
    }

    /// The same files, told from another address (DHCPv6's).
    pub fn at(&self, server_ip: IpAddr) -> Self {
        Self {
            server_ip,
            ..self.clone()
        }
    }

    /// The IPv4 server address (next-server, server identifier); the
    /// unspecified address for targets made for DHCPv6.
    pub fn server_ipv4(&self) -> Ipv4Addr {
        match self.server_ip {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
        }
    }
}

/// Why a boot client gets no bootfile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoBoot {
    NotABootClient,
    /// An architecture with no loader configured (ARM32, unknown codes).
    UnsupportedArch,
    /// A switch request without the MAC its URL is made of.
    NoMac,
}

/// The loader binary for a firmware client, by architecture and loader.
fn loader_file(files: &RawBootfiles, arch: Option<Arch>, loader: Loader) -> Result<&str, NoBoot> {
    use Arch::*;
    match (arch, loader) {
        // Old PXE ROMs omit option 93; they are BIOS.
        (Some(BiosX86) | None, _) => Ok(&files.bios),
        (Some(EfiX64 | HttpX64), Loader::Ipxe) => Ok(&files.efi_x64),
        (Some(EfiX64 | HttpX64), Loader::Grub) => Ok(&files.grub_x64),
        (Some(EfiX64 | HttpX64), Loader::Shim) => Ok(crate::config::SHIM_X64),
        // Per machine, not a file: see `bootfile_with`.
        (Some(EfiX64 | HttpX64), Loader::Uki) => Err(NoBoot::NoMac),
        (Some(EfiIa32 | HttpIa32), _) => Ok(&files.efi_ia32),
        // The arm64 file is GRUB by default; an operator with an arm64 iPXE
        // names it here too.
        (Some(EfiArm64 | HttpArm64), _) => Ok(&files.efi_arm64),
        (Some(EfiArm32 | Other(_)), _) => Err(NoBoot::UnsupportedArch),
    }
}

/// Where a machine's unified kernel image is served (TFTP and HTTP).
fn uki_path(mac: String) -> String {
    format!("uki/{mac}.efi")
}

/// The bootfile for a client, or why there is none, with no loader settings
/// (each architecture's default loader).
pub fn bootfile(facts: &ClientFacts, targets: &BootTargets) -> Result<Bootfile, NoBoot> {
    bootfile_with(facts, targets, LoaderSettings::default())
}

/// The bootfile for a client whose machine or group may choose its loader.
pub fn bootfile_with(
    facts: &ClientFacts,
    targets: &BootTargets,
    settings: LoaderSettings,
) -> Result<Bootfile, NoBoot> {
    let files = &targets.files;
    let mac_path = || facts.mac.map(|m| m.hyphenated()).ok_or(NoBoot::NoMac);
    match facts.kind() {
        ClientKind::Ipxe => Ok(Bootfile::Http(targets.http(&files.ipxe_script))),
        ClientKind::HttpBoot => {
            let arch = facts.arch.or(Some(Arch::HttpX64));
            match loader::choose(arch, settings).loader {
                // The firmware loads the machine's unified kernel image.
                Loader::Uki => Ok(Bootfile::Http(targets.http(&uki_path(mac_path()?)))),
                loader => {
                    let file = loader_file(files, arch, loader)?;
                    Ok(Bootfile::Http(targets.http(&format!("ipxe/{file}"))))
                }
            }
        }
        ClientKind::Pxe => match loader::choose(facts.arch, settings).loader {
            Loader::Uki => Ok(Bootfile::Tftp(uki_path(mac_path()?))),
            loader => Ok(Bootfile::Tftp(
                loader_file(files, facts.arch, loader)?.to_string(),
            )),
        },
        ClientKind::Onie => Ok(Bootfile::OnieInstaller(
            targets.http(&format!("onie/{}/onie-installer", mac_path()?)),
        )),
        ClientKind::Ztp => Ok(Bootfile::Ztp(targets.http(&format!(
            "ztp/{}/{}",
            mac_path()?,
            facts.ztp_flavour().file()
        )))),
        ClientKind::Other => Err(NoBoot::NotABootClient),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets() -> BootTargets {
        BootTargets {
            files: RawBootfiles::default(),
            server_ip: Ipv4Addr::new(10, 77, 0, 1).into(),
            http_port: 8080,
        }
    }

    fn facts(arch: Option<u16>, vendor: &str, user: &[&str], opt175: bool) -> ClientFacts {
        ClientFacts {
            mac: "52:54:00:0e:00:01".parse().ok(),
            arch: arch.map(Arch::from_code),
            vendor_class: (!vendor.is_empty()).then(|| vendor.to_string()),
            user_classes: user.iter().map(|s| s.to_string()).collect(),
            ipxe_options: opt175,
            wants_ztp_script: false,
        }
    }

    fn ztp(vendor: &str, wants_239: bool) -> ClientFacts {
        ClientFacts {
            wants_ztp_script: wants_239,
            ..facts(None, vendor, &[], false)
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
            ("ONIE switch",            facts(None, "onie_vendor:x86_64-acme_widget-r0", &[], false),    Ok(OnieInstaller("http://10.77.0.1:8080/onie/52-54-00-0e-00-01/onie-installer".into()))),
            ("Cumulus ZTP (asks 239)", ztp("", true),                                                    Ok(Ztp("http://10.77.0.1:8080/ztp/52-54-00-0e-00-01/cumulus.sh".into()))),
            ("SONiC ZTP (opt 60)",     ztp("SONiC", false),                                              Ok(Ztp("http://10.77.0.1:8080/ztp/52-54-00-0e-00-01/ztp.json".into()))),
            ("Linux dhclient",         facts(None, "", &[], false),                                      Err(NoBoot::NotABootClient)),
            ("Windows",                facts(None, "MSFT 5.0", &[], false),                              Err(NoBoot::NotABootClient)),
        ];
        for (name, f, want) in table {
            assert_eq!(bootfile(&f, &targets()), want, "{name}");
        }
    }

    #[test]
    fn loader_settings_pick_the_file() {
        use Bootfile::*;
        let grub = LoaderSettings {
            machine: None,
            group: Some(Loader::Grub),
        };
        let pxe = |code| facts(Some(code), "PXEClient", &[], false);
        #[rustfmt::skip]
        let table = [
            ("x64 UEFI, group GRUB",     pxe(7),  grub, Ok(Tftp("grubnetx64.efi".into()))),
            ("BIOS, group GRUB: iPXE",   pxe(0),  grub, Ok(Tftp("undionly.kpxe".into()))),
            ("arm64, group GRUB",        pxe(11), grub, Ok(Tftp("grubnetaa64.efi".into()))),
            ("x64 HTTP boot, GRUB",      facts(Some(16), "HTTPClient", &[], false), grub, Ok(Http("http://10.77.0.1:8080/ipxe/grubnetx64.efi".into()))),
            ("iPXE already: script",     facts(Some(7), "PXEClient", &["iPXE"], false), grub, Ok(Http("http://10.77.0.1:8080/boot.ipxe".into()))),
        ];
        for (name, f, settings, want) in table {
            assert_eq!(bootfile_with(&f, &targets(), settings), want, "{name}");
        }
    }
}
