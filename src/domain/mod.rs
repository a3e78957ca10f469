//! Plain domain types parsed once at the edge: MAC addresses and client
//! architectures. No I/O lives here.

pub mod lease;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a machine is: a server boots a live OS; a switch runs ONIE or a
/// network OS's zero-touch provisioning. Stored as `server` / `switch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineKind {
    #[default]
    Server,
    Switch,
}

impl MachineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::Switch => "switch",
        }
    }
}

impl fmt::Display for MachineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MachineKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "server" => Ok(Self::Server),
            "switch" => Ok(Self::Switch),
            other => Err(format!("unknown machine kind {other:?} (server, switch)")),
        }
    }
}

/// An Ethernet hardware address. The canonical text form is lower-case,
/// colon-separated (`52:54:00:12:34:56`); parsing also accepts `-` separators
/// and upper case, because iPXE's `${mac:hexhyp}` and operators write both.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Takes the first six bytes of a `chaddr`; `None` if there are fewer.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let six: [u8; 6] = bytes.get(..6)?.try_into().ok()?;
        Some(Self(six))
    }

    /// `52-54-00-12-34-56`, the form iPXE's `${mac:hexhyp}` produces.
    pub fn hyphenated(&self) -> String {
        self.to_string().replace(':', "-")
    }
}

impl MacAddr {
    /// The canonical text as bytes, without the formatting machinery: the
    /// ledger writes a MAC per lease and per event, and `{:02x}` six times
    /// cost about 2,600 instructions a MAC (callgrind, benches/notes).
    fn text(&self) -> [u8; 17] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [b':'; 17];
        for (i, b) in self.0.iter().enumerate() {
            out[i * 3] = HEX[usize::from(b >> 4)];
            out[i * 3 + 1] = HEX[usize::from(b & 0x0f)];
        }
        out
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.text();
        // Only ASCII hex digits and colons were written.
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

/// `ip`'s dotted-quad text, built directly: `Ipv4Addr`'s `Display` goes
/// through the formatting machinery (about 1,400 instructions an address),
/// and the DHCP path turns several addresses into text per exchange for the
/// ledger.
pub fn ipv4_text(ip: std::net::Ipv4Addr) -> String {
    let mut out = String::with_capacity(15);
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
    out
}

/// [`ipv4_text`] for IPv4, the standard text for IPv6.
pub fn ip_text(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => ipv4_text(v4),
        std::net::IpAddr::V6(v6) => v6.to_string(),
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid MAC address {0:?}: expected six hex octets like 52:54:00:12:34:56")]
pub struct MacParseError(pub String);

impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in out.iter_mut() {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(Self(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Client system architecture, DHCP option 93 (RFC 4578 and the IANA
/// "Processor Architecture Types" registry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// 0: x86 BIOS (legacy PXE).
    BiosX86,
    /// 6: IA32 UEFI.
    EfiIa32,
    /// 7 and 9: x64 UEFI (9 is "EFI BC", seen on older firmware).
    EfiX64,
    /// 10: ARM32 UEFI.
    EfiArm32,
    /// 11: ARM64 UEFI.
    EfiArm64,
    /// 15: x86 UEFI HTTP boot.
    HttpIa32,
    /// 16: x64 UEFI HTTP boot.
    HttpX64,
    /// 19: ARM64 UEFI HTTP boot.
    HttpArm64,
    /// Anything else, kept so it can be logged and recorded.
    Other(u16),
}

impl Arch {
    pub fn from_code(code: u16) -> Self {
        match code {
            0 => Arch::BiosX86,
            6 => Arch::EfiIa32,
            7 | 9 => Arch::EfiX64,
            10 => Arch::EfiArm32,
            11 => Arch::EfiArm64,
            15 => Arch::HttpIa32,
            16 => Arch::HttpX64,
            19 => Arch::HttpArm64,
            other => Arch::Other(other),
        }
    }

    /// iPXE's `${buildarch}` for this firmware: the CPU architecture
    /// images are matched against when a request does not say its own.
    pub fn buildarch(self) -> Option<&'static str> {
        match self {
            Arch::EfiArm64 | Arch::HttpArm64 => Some("arm64"),
            Arch::EfiX64 | Arch::HttpX64 => Some("x86_64"),
            Arch::BiosX86 | Arch::EfiIa32 | Arch::HttpIa32 => Some("i386"),
            Arch::EfiArm32 | Arch::Other(_) => None,
        }
    }

    /// Short stable name, as stored in the database and shown to operators.
    pub fn name(&self) -> String {
        match self {
            Arch::BiosX86 => "bios".into(),
            Arch::EfiIa32 => "efi-ia32".into(),
            Arch::EfiX64 => "efi-x64".into(),
            Arch::EfiArm32 => "efi-arm32".into(),
            Arch::EfiArm64 => "efi-arm64".into(),
            Arch::HttpIa32 => "http-ia32".into(),
            Arch::HttpX64 => "http-x64".into(),
            Arch::HttpArm64 => "http-arm64".into(),
            Arch::Other(code) => format!("arch-{code}"),
        }
    }
}

// Names and labels as the API and fleet files take them (one check each,
// so both say the same thing).

/// A group or stream name: 1-63 letters, digits, `-`, `_`, `.`.
pub fn check_group_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} must be 1-63 letters, digits, '-', '_' or '.'"
        ))
    }
}

/// A label key or value: what selectors can name.
pub fn check_label_part(text: &str) -> Result<(), String> {
    let ok = !text.is_empty()
        && text.len() <= 63
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "label {text:?}: 1-63 letters, digits, '-', '_', '.', '/' or ':'"
        ))
    }
}

/// A DNS host name: dot-separated labels of letters, digits and inner
/// hyphens.
pub fn check_hostname(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a host name (letters, digits, '-', dot-separated)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_and_address_text_match_the_standard_formatting() {
        let macs = [
            [0u8; 6],
            [0xff; 6],
            [0x52, 0x54, 0x00, 0xab, 0x0c, 0x01],
            [0x00, 0x0c, 0x01, 0x02, 0x03, 0x04],
        ];
        for m in macs {
            let expected = format!(
                "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                m[0], m[1], m[2], m[3], m[4], m[5]
            );
            assert_eq!(MacAddr(m).to_string(), expected);
            assert_eq!(format!("{:?}", MacAddr(m)), expected);
        }
        for octet in 0..=255u8 {
            for ip in [
                std::net::Ipv4Addr::new(octet, 0, 9, 255),
                std::net::Ipv4Addr::new(10, octet, 100, octet),
                std::net::Ipv4Addr::new(1, 99, octet, 0),
            ] {
                assert_eq!(ipv4_text(ip), ip.to_string());
                assert_eq!(ip_text(ip.into()), ip.to_string());
            }
        }
        let v6: std::net::IpAddr = "fe80::1".parse().unwrap();
        assert_eq!(ip_text(v6), "fe80::1");
    }

    #[test]
    fn mac_parses_both_separators_and_prints_canonical() {
        let a: MacAddr = "52:54:00:AB:cd:01".parse().unwrap();
        let b: MacAddr = "52-54-00-ab-cd-01".parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "52:54:00:ab:cd:01");
        assert_eq!(a.hyphenated(), "52-54-00-ab-cd-01");
    }

    #[test]
    fn mac_rejects_malformed() {
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:01:02",
            "5:54:00:ab:cd:01",
            "zz:54:00:ab:cd:01",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn arch_codes_follow_the_registry() {
        let table = [
            (0, Arch::BiosX86),
            (6, Arch::EfiIa32),
            (7, Arch::EfiX64),
            (9, Arch::EfiX64),
            (10, Arch::EfiArm32),
            (11, Arch::EfiArm64),
            (15, Arch::HttpIa32),
            (16, Arch::HttpX64),
            (19, Arch::HttpArm64),
            (42, Arch::Other(42)),
        ];
        for (code, arch) in table {
            assert_eq!(Arch::from_code(code), arch, "code {code}");
        }
    }
}
