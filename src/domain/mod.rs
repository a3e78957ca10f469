//! Plain domain types parsed once at the edge: MAC addresses and client
//! architectures. No I/O lives here.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A stream and a generation number: "worker gen 41".
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GenerationId {
    pub stream: String,
    pub number: i64,
}

impl GenerationId {
    pub fn new(stream: impl Into<String>, number: i64) -> Self {
        Self {
            stream: stream.into(),
            number,
        }
    }
}

impl std::fmt::Display for GenerationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} gen {}", self.stream, self.number)
    }
}

/// Declares an enum whose every variant has one spelling: `as_str`,
/// `Display`, `FromStr`, serde and the OpenAPI schema all use it, and
/// `ALL` lists the variants (CLI choices, error messages). One mapping to
/// text per type, written once.
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[derive(serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $text)] $variant ),+
        }

        // Written out: utoipa's derive does not see the serde renames a
        // macro passes through, and would document the Rust names.
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some([$($text),+]))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text ),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::domain::UnknownText;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $( $text => Ok($name::$variant), )+
                    other => Err($crate::domain::UnknownText {
                        what: $what,
                        got: other.chars().take(64).collect(),
                        expected: &[$($text),+],
                    }),
                }
            }
        }
    };
}

/// A text that names none of a type's variants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {got:?} ({})", expected.join(", "))]
pub struct UnknownText {
    pub what: &'static str,
    pub got: String,
    pub expected: &'static [&'static str],
}

text_enum! {
    /// What a machine is: a server boots a live OS; a switch runs ONIE or a
    /// network OS's zero-touch provisioning.
    #[derive(Default)]
    pub enum MachineKind ("machine kind") {
        #[default]
        Server = "server",
        Switch = "switch",
    }
}

text_enum! {
    /// What an API token may do: read everything, or also change it.
    pub enum Role ("token role") {
        Admin = "admin",
        Read = "read",
    }
}

text_enum! {
    /// A CPU architecture, as images and iPXE's `${buildarch}` name it.
    /// `i386` is what a BIOS iPXE reports; it boots x86_64 kernels (see
    /// [`Cpu::runs`]).
    pub enum Cpu ("CPU architecture") {
        I386 = "i386",
        X86_64 = "x86_64",
        Arm32 = "arm32",
        Arm64 = "arm64",
        Riscv32 = "riscv32",
        Riscv64 = "riscv64",
        Loong64 = "loong64",
    }
}

impl Cpu {
    /// The CPU a firmware architecture (DHCP option 93) implies.
    pub fn of_firmware(arch: Arch) -> Option<Cpu> {
        match arch {
            Arch::EfiArm64 | Arch::HttpArm64 => Some(Cpu::Arm64),
            Arch::EfiX64 | Arch::HttpX64 => Some(Cpu::X86_64),
            Arch::BiosX86 | Arch::EfiIa32 | Arch::HttpIa32 => Some(Cpu::I386),
            Arch::EfiArm32 => Some(Cpu::Arm32),
            Arch::Other(_) => None,
        }
    }

    /// Whether a loader of this CPU boots an image built for `image`: the
    /// same family (a BIOS iPXE is an i386 build and boots x86_64 kernels).
    pub fn runs(self, image: Cpu) -> bool {
        self.family() == image.family()
    }

    fn family(self) -> Cpu {
        match self {
            Cpu::I386 => Cpu::X86_64,
            Cpu::Arm32 => Cpu::Arm64,
            Cpu::Riscv32 => Cpu::Riscv64,
            other => other,
        }
    }

    /// What images may be built for (`image import --arch`).
    pub const IMAGES: [Cpu; 2] = [Cpu::X86_64, Cpu::Arm64];

    /// The firmware architecture a script request of this CPU stands for,
    /// as option 93 would say it (for `explain`).
    pub fn firmware(self) -> Option<Arch> {
        match self {
            Cpu::Arm64 => Some(Arch::EfiArm64),
            Cpu::X86_64 => Some(Arch::EfiX64),
            Cpu::I386 => Some(Arch::BiosX86),
            Cpu::Arm32 => Some(Arch::EfiArm32),
            _ => None,
        }
    }
}

/// Where a group holds a generation: one per image CPU for servers, and one
/// per CPU for switch installers. Text form `x86_64`, `x86_64/installer`
/// (the stored and shown spelling). Ordered by that text, as the stored
/// rows are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Slot {
    pub cpu: Cpu,
    /// Holds a switch installer (ONIE) rather than a live OS.
    pub installer: bool,
}

impl Slot {
    pub fn new(cpu: Cpu, installer: bool) -> Self {
        Self { cpu, installer }
    }
}

impl Ord for Slot {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.cpu.as_str(), self.installer).cmp(&(other.cpu.as_str(), other.installer))
    }
}

impl PartialOrd for Slot {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.cpu.as_str())?;
        if self.installer {
            f.write_str("/installer")?;
        }
        Ok(())
    }
}

impl FromStr for Slot {
    type Err = UnknownText;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (cpu, installer) = match s.strip_suffix("/installer") {
            Some(cpu) => (cpu, true),
            None => (s, false),
        };
        Ok(Slot::new(cpu.parse()?, installer))
    }
}

impl Serialize for Slot {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Slot {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

text_enum! {
    /// Where one boot stands (the `boots` table's `state`): its script or
    /// config was served, the OS confirmed it, it failed (the machine
    /// netbooted again, or the watchdog's silence timeout), or there was
    /// nothing to boot.
    pub enum BootState ("boot state") {
        Served = "served",
        Confirmed = "confirmed",
        Failed = "failed",
        Nothing = "nothing",
    }
}

pub mod fleet_rows;
pub mod lease;

pub use lease::State as LeaseState;

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
    /// The MAC inside an EUI-64 interface identifier (RFC 4291 appendix
    /// A: `ff:fe` in the middle, the universal/local bit flipped), as in a
    /// SLAAC or link-local address; `None` for any other identifier.
    pub fn from_eui64(addr: std::net::Ipv6Addr) -> Option<Self> {
        match addr.octets()[8..] {
            [a, b, c, 0xff, 0xfe, d, e, f] => Some(Self([a ^ 0x02, b, c, d, e, f])),
            _ => None,
        }
    }

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

impl FromStr for Arch {
    type Err = UnknownText;
    /// The inverse of [`Arch::name`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let known = [
            Arch::BiosX86,
            Arch::EfiIa32,
            Arch::EfiX64,
            Arch::EfiArm32,
            Arch::EfiArm64,
            Arch::HttpIa32,
            Arch::HttpX64,
            Arch::HttpArm64,
        ];
        if let Some(arch) = known.into_iter().find(|a| a.name() == s) {
            return Ok(arch);
        }
        s.strip_prefix("arch-")
            .and_then(|code| code.parse().ok())
            .map(Arch::from_code)
            .ok_or_else(|| UnknownText {
                what: "firmware architecture",
                got: s.chars().take(64).collect(),
                expected: &[
                    "bios",
                    "efi-ia32",
                    "efi-x64",
                    "efi-arm32",
                    "efi-arm64",
                    "http-ia32",
                    "http-x64",
                    "http-arm64",
                    "arch-N",
                ],
            })
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
    fn every_text_enum_spells_each_variant_once_and_parses_it_back() {
        fn round_trip<T>(all: &[T])
        where
            T: Copy + PartialEq + fmt::Debug + fmt::Display + FromStr + Serialize,
        {
            for v in all {
                let text = v.to_string();
                assert_eq!(text.parse::<T>().ok(), Some(*v), "{text}");
                assert_eq!(serde_json::to_value(v).unwrap(), text.as_str());
            }
        }
        round_trip(MachineKind::ALL);
        round_trip(Role::ALL);
        round_trip(Cpu::ALL);
        round_trip(BootState::ALL);
        round_trip(LeaseState::ALL);
        let err = "aarch64".parse::<Cpu>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown CPU architecture \"aarch64\" (i386, x86_64, arm32, arm64, riscv32, riscv64, loong64)"
        );
        for slot in ["x86_64", "arm64/installer"] {
            assert_eq!(slot.parse::<Slot>().unwrap().to_string(), slot);
        }
        assert!("x86_64/other".parse::<Slot>().is_err());
    }

    /// The OpenAPI document names each variant as the JSON does (the API
    /// fuzzer found `X86_64` there once).
    #[test]
    fn text_enums_document_their_spellings() {
        let schema = serde_json::to_value(<Cpu as utoipa::PartialSchema>::schema()).unwrap();
        assert_eq!(schema["type"], "string");
        let listed: Vec<&str> = schema["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let spelled: Vec<&str> = Cpu::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(listed, spelled);
    }

    #[test]
    fn cpus_of_one_family_run_each_other_s_images() {
        let table = [
            (Arch::BiosX86, Some(Cpu::I386), Cpu::X86_64, true),
            (Arch::EfiX64, Some(Cpu::X86_64), Cpu::X86_64, true),
            (Arch::HttpX64, Some(Cpu::X86_64), Cpu::Arm64, false),
            (Arch::EfiArm64, Some(Cpu::Arm64), Cpu::Arm64, true),
            (Arch::EfiArm64, Some(Cpu::Arm64), Cpu::X86_64, false),
            (Arch::EfiArm32, Some(Cpu::Arm32), Cpu::Arm64, true),
        ];
        for (arch, cpu, image, runs) in table {
            assert_eq!(Cpu::of_firmware(arch), cpu, "{arch:?}");
            assert_eq!(cpu.unwrap().runs(image), runs, "{arch:?} on {image}");
        }
        assert_eq!(Cpu::of_firmware(Arch::Other(42)), None);
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
            assert_eq!(arch.name().parse::<Arch>(), Ok(arch), "{}", arch.name());
        }
        assert!("efi-x65".parse::<Arch>().is_err());
    }
}
