//! A switch's first boot under ONIE, as pure functions: what its DHCP vendor
//! class says, which file names its installer waterfall asks for, what its
//! HTTP headers say, and the option 125 bytes that point it at an installer.
//!
//! ONIE identifies its platform as `<arch>-<vendor>_<machine>-r<rev>` (opt 60
//! `onie_vendor:<platform>`), asks for `onie-installer-<platform>` and
//! shorter names down to `onie-installer` when no exact URL is given (over
//! TFTP also under a `<MAC>/` or hex-IP prefix), and sends `ONIE-*` headers
//! with every HTTP request. Every name of the waterfall resolves to the same
//! answer: the installer of the switch's target generation, because the
//! choice is made per machine, not per file name.

use std::net::Ipv4Addr;

use serde::Serialize;

use crate::domain::MacAddr;

/// IANA enterprise number of the ONIE project (RFC 3925 option 125).
pub const ONIE_ENTERPRISE: u32 = 42623;
/// Option 125 sub-option: the installer URL.
pub const SUBOPT_INSTALLER_URL: u8 = 1;
/// Every installer file name starts with this.
pub const INSTALLER: &str = "onie-installer";

/// `onie_vendor:x86_64-acme_widget-r0`, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OnieVendor {
    /// CPU architecture (`x86_64`, `arm64`, `armhf`, `powerpc`).
    pub arch: String,
    pub vendor: String,
    pub machine: String,
    /// Machine revision (the digits after `-r`), when sent.
    pub rev: Option<String>,
}

impl OnieVendor {
    /// Parses opt 60. `None` for anything that is not ONIE's vendor class.
    pub fn parse(vendor_class: &str) -> Option<Self> {
        let platform = vendor_class.strip_prefix("onie_vendor:")?;
        // The arch comes first and never holds '-' (x86_64 holds '_').
        let (arch, rest) = platform.split_once('-')?;
        let (rest, rev) = match rest.rsplit_once("-r") {
            Some((head, rev)) if !rev.is_empty() && rev.bytes().all(|b| b.is_ascii_digit()) => {
                (head, Some(rev.to_string()))
            }
            _ => (rest, None),
        };
        // The vendor never holds '_'; the machine may.
        let (vendor, machine) = rest.split_once('_')?;
        let ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.+-".contains(&b))
        };
        (ok(arch) && ok(vendor) && ok(machine)).then(|| Self {
            arch: arch.to_string(),
            vendor: vendor.to_string(),
            machine: machine.to_string(),
            rev,
        })
    }

    /// The installer names ONIE tries, most specific first.
    pub fn waterfall(&self) -> Vec<String> {
        let Self {
            arch,
            vendor,
            machine,
            rev,
        } = self;
        let mut names = Vec::new();
        if let Some(rev) = rev {
            names.push(format!("{INSTALLER}-{arch}-{vendor}_{machine}-r{rev}"));
        }
        names.extend([
            format!("{INSTALLER}-{arch}-{vendor}_{machine}"),
            format!("{INSTALLER}-{vendor}_{machine}"),
            format!("{INSTALLER}-{arch}-{vendor}"),
            format!("{INSTALLER}-{arch}"),
            INSTALLER.to_string(),
        ]);
        names
    }
}

/// A request path that names an ONIE installer, with its prefix if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallerPath {
    /// `<MAC>/` (`52-54-00-…` or `52:54:00:…`) before the name.
    pub mac: Option<MacAddr>,
    /// A hex-IP prefix (`0A4D0064/`), as ONIE's TFTP waterfall sends.
    pub ip: Option<Ipv4Addr>,
    /// The file name (`onie-installer-x86_64-acme_widget-r0`).
    pub name: String,
}

/// Recognises a waterfall request (leading `/` stripped by the caller or
/// not): `onie-installer…`, `<MAC>/onie-installer…`, `<HEXIP>/onie-installer…`.
pub fn installer_path(path: &str) -> Option<InstallerPath> {
    let path = path.trim_start_matches('/');
    let (prefix, name) = match path.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, path),
    };
    let named = name == INSTALLER
        || name
            .strip_prefix(INSTALLER)
            .is_some_and(|rest| rest.starts_with('-') && rest.len() > 1);
    if !named || name.contains(['\\', '\0']) {
        return None;
    }
    let mut out = InstallerPath {
        mac: None,
        ip: None,
        name: name.to_string(),
    };
    match prefix {
        None => {}
        Some(p) => {
            if let Ok(mac) = p.parse::<MacAddr>() {
                out.mac = Some(mac);
            } else if let Some(ip) = hex_ip(p) {
                out.ip = Some(ip);
            } else {
                return None;
            }
        }
    }
    Some(out)
}

fn hex_ip(s: &str) -> Option<Ipv4Addr> {
    if s.len() != 8 {
        return None;
    }
    u32::from_str_radix(s, 16).ok().map(Ipv4Addr::from)
}

/// The `ONIE-*` request headers, as sent (names case-insensitive).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OnieHeaders {
    pub serial: Option<String>,
    pub eth_addr: Option<MacAddr>,
    pub vendor_id: Option<String>,
    pub machine: Option<String>,
    pub machine_rev: Option<String>,
    pub arch: Option<String>,
    pub security_key: Option<String>,
    pub operation: Option<String>,
    pub version: Option<String>,
}

impl OnieHeaders {
    /// From header (name, value) pairs; values are trimmed, empty ones and
    /// ones with control characters dropped, at most 128 bytes kept.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut h = Self::default();
        for (name, value) in pairs {
            let value = value.trim();
            if value.is_empty() || value.len() > 128 || value.chars().any(char::is_control) {
                continue;
            }
            let v = Some(value.to_string());
            match name.to_ascii_uppercase().as_str() {
                "ONIE-SERIAL-NUMBER" => h.serial = v,
                "ONIE-ETH-ADDR" => h.eth_addr = value.parse().ok(),
                "ONIE-VENDOR-ID" => h.vendor_id = v,
                "ONIE-MACHINE" => h.machine = v,
                "ONIE-MACHINE-REV" => h.machine_rev = v,
                "ONIE-ARCH" => h.arch = v,
                "ONIE-SECURITY-KEY" => h.security_key = v,
                "ONIE-OPERATION" => h.operation = v,
                "ONIE-VERSION" => h.version = v,
                _ => {}
            }
        }
        h
    }

    /// Whether the request came from ONIE at all.
    pub fn is_onie(&self) -> bool {
        self.eth_addr.is_some() || self.serial.is_some() || self.operation.is_some()
    }
}

/// Option 125 (RFC 3925) for ONIE: enterprise 42623, sub-option 1 = the
/// installer URL. `None` when the URL does not fit one option (249 bytes).
pub fn option_125(installer_url: &str) -> Option<Vec<u8>> {
    let url = installer_url.as_bytes();
    let data_len = 2 + url.len();
    if 4 + 1 + data_len > 255 {
        return None;
    }
    let mut out = Vec::with_capacity(5 + data_len);
    out.extend_from_slice(&ONIE_ENTERPRISE.to_be_bytes());
    out.push(data_len as u8);
    out.push(SUBOPT_INSTALLER_URL);
    out.push(url.len() as u8);
    out.extend_from_slice(url);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_classes() {
        let v = |arch: &str, vendor: &str, machine: &str, rev: Option<&str>| {
            Some(OnieVendor {
                arch: arch.into(),
                vendor: vendor.into(),
                machine: machine.into(),
                rev: rev.map(str::to_string),
            })
        };
        #[rustfmt::skip]
        let table = [
            ("onie_vendor:x86_64-acme_widget-r0",          v("x86_64", "acme", "widget", Some("0"))),
            ("onie_vendor:x86_64-accton_as7712_32x-r0",    v("x86_64", "accton", "as7712_32x", Some("0"))),
            ("onie_vendor:arm64-marvell_armada-r12",       v("arm64", "marvell", "armada", Some("12"))),
            ("onie_vendor:x86_64-dell_s6000",              v("x86_64", "dell", "s6000", None)),
            ("onie_vendor:x86_64-cel_e1031-rev",           v("x86_64", "cel", "e1031-rev", None)),
            ("onie_vendor:x86_64",                         None),
            ("onie_vendor:x86_64-nounderscore-r0",         None),
            ("onie_vendor:x86 64-acme_widget-r0",          None),
            ("PXEClient:Arch:00000:UNDI:002001",           None),
        ];
        for (text, want) in table {
            assert_eq!(OnieVendor::parse(text), want, "{text}");
        }
    }

    #[test]
    fn waterfall_names_all_resolve_with_their_prefixes() {
        let v = OnieVendor::parse("onie_vendor:x86_64-acme_widget-r0").unwrap();
        let names = v.waterfall();
        assert_eq!(
            names,
            [
                "onie-installer-x86_64-acme_widget-r0",
                "onie-installer-x86_64-acme_widget",
                "onie-installer-acme_widget",
                "onie-installer-x86_64-acme",
                "onie-installer-x86_64",
                "onie-installer",
            ]
        );
        let mac: MacAddr = "52:54:00:0e:00:01".parse().unwrap();
        for name in &names {
            let plain = installer_path(name).unwrap();
            assert_eq!(
                (plain.mac, plain.ip, plain.name.as_str()),
                (None, None, name.as_str())
            );
            let by_mac = installer_path(&format!("/52-54-00-0E-00-01/{name}")).unwrap();
            assert_eq!(by_mac.mac, Some(mac), "{name}");
            let by_ip = installer_path(&format!("0A4D0064/{name}")).unwrap();
            assert_eq!(by_ip.ip, Some(Ipv4Addr::new(10, 77, 0, 100)), "{name}");
        }
        for other in [
            "onie-installer-",
            "onie-installerx",
            "grub/grub.cfg",
            "undionly.kpxe",
            "nothex00/onie-installer",
            "a/b/onie-installer",
        ] {
            assert_eq!(installer_path(other), None, "{other}");
        }
    }

    #[test]
    fn headers_are_read_case_insensitively_and_safely() {
        let h = OnieHeaders::from_pairs([
            ("onie-serial-number", "SN-0042 "),
            ("ONIE-ETH-ADDR", "52:54:00:0E:00:01"),
            ("ONIE-VENDOR-ID", "99999"),
            ("ONIE-MACHINE", "acme_widget"),
            ("ONIE-MACHINE-REV", "0"),
            ("ONIE-ARCH", "x86_64"),
            ("ONIE-OPERATION", "os-install"),
            ("ONIE-VERSION", "2023.05"),
            ("ONIE-SECURITY-KEY", "bad\nvalue"),
            ("User-Agent", "onie/2023.05"),
        ]);
        assert_eq!(h.serial.as_deref(), Some("SN-0042"));
        assert_eq!(h.eth_addr, "52:54:00:0e:00:01".parse().ok());
        assert_eq!(h.machine.as_deref(), Some("acme_widget"));
        assert_eq!(h.operation.as_deref(), Some("os-install"));
        assert_eq!(h.security_key, None, "control characters refused");
        assert!(h.is_onie());
        assert!(!OnieHeaders::from_pairs([("Accept", "*/*")]).is_onie());
    }

    #[test]
    fn option_125_bytes() {
        let url = "http://10.77.0.1:8080/onie/52-54-00-0e-00-01/onie-installer";
        let bytes = option_125(url).unwrap();
        assert_eq!(&bytes[..4], &[0, 0, 0xa6, 0x7f], "enterprise 42623");
        assert_eq!(bytes[4] as usize, 2 + url.len(), "data-len");
        assert_eq!(bytes[5], 1, "sub-option 1: installer URL");
        assert_eq!(bytes[6] as usize, url.len());
        assert_eq!(&bytes[7..], url.as_bytes());
        assert_eq!(option_125(&"x".repeat(250)), None, "does not fit");
        assert!(option_125(&"x".repeat(248)).is_some());
    }
}
