//! Which boot loader a machine runs, and so in which form its boot is
//! rendered: an iPXE script (fetched over HTTP) or a GRUB config (fetched
//! over TFTP by Debian's netboot GRUB, which has no HTTP).
//!
//! Pure: the client's architecture (DHCP option 93) and the operator's
//! settings in, a [`LoaderChoice`] out, with where the choice came from so
//! `explain` can say it. Precedence: the machine's setting (label `loader`),
//! then its group's (variable `loader`), then the architecture's default:
//! arm64 gets GRUB (Debian ships no arm64 iPXE), everything else iPXE.
//! A setting the client cannot run is not honoured: a BIOS client has no
//! GRUB EFI, so it gets iPXE and the choice says why.
//!
//! `shim` is the Secure Boot chain for x64 UEFI: the firmware verifies
//! Debian's Microsoft-signed shim, shim verifies Debian's signed netboot
//! GRUB, GRUB hands the kernel to shim to verify. It renders the same GRUB
//! config as `grub`; only the files the firmware loads differ.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::domain::{Arch, MacAddr};

/// A boot loader ironboot renders boots for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Loader {
    /// iPXE: `boot.ipxe`, then `/boot/<mac>.ipxe` over HTTP.
    Ipxe,
    /// GRUB netboot: `/grub/grub.cfg`, then a per-machine config over TFTP.
    Grub,
    /// Secure Boot: signed shim, then signed netboot GRUB (`grubx64.efi`,
    /// the name shim loads), then the same per-machine GRUB config.
    Shim,
    /// An operator-signed unified kernel image, loaded and verified by the
    /// firmware itself (`uki/<mac>.efi`); no loader of ironboot's between.
    Uki,
}

impl Loader {
    pub fn as_str(self) -> &'static str {
        match self {
            Loader::Ipxe => "ipxe",
            Loader::Grub => "grub",
            Loader::Shim => "shim",
            Loader::Uki => "uki",
        }
    }

    /// Whether the machine boots through GRUB (and so asks for a GRUB
    /// config rather than an iPXE script).
    pub fn renders_grub(self) -> bool {
        matches!(self, Loader::Grub | Loader::Shim)
    }
}

impl fmt::Display for Loader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Loader {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ipxe" => Ok(Loader::Ipxe),
            "grub" => Ok(Loader::Grub),
            "shim" | "secureboot" => Ok(Loader::Shim),
            "uki" => Ok(Loader::Uki),
            other => Err(format!("unknown loader {other:?} (ipxe, grub, shim, uki)")),
        }
    }
}

/// Where the choice came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoaderSource {
    /// The machine's label `loader`.
    Machine,
    /// The group's variable `loader`.
    Group,
    /// The architecture's default (no setting, or a setting the client
    /// cannot run).
    Arch,
}

/// The answer, with its reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoaderChoice {
    pub loader: Loader,
    pub source: LoaderSource,
    /// Set when a setting was overridden because the client cannot run it.
    pub note: Option<String>,
}

/// The operator's settings, already parsed (`None`: not set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoaderSettings {
    pub machine: Option<Loader>,
    pub group: Option<Loader>,
}

/// Where the operator's loader settings for a MAC are kept (the
/// inventory: a machine's label and its group's variable `loader`). DHCP
/// asks it per boot client, to pick the bootfile.
pub trait SettingsSource: Send + Sync {
    fn loader_settings(&self, mac: MacAddr) -> LoaderSettings;
}

/// The architecture's own loader.
pub fn default_for(arch: Option<Arch>) -> Loader {
    match arch {
        Some(Arch::EfiArm64 | Arch::HttpArm64) => Loader::Grub,
        _ => Loader::Ipxe,
    }
}

/// Whether a client of this architecture can run `loader` as ironboot
/// serves it: GRUB only as an EFI binary (x64 or arm64), the signed shim
/// chain only on x64 UEFI PXE (what Debian signs, and where its GRUB finds
/// its config), iPXE on anything but arm
/// (Debian builds no arm iPXE; an operator with their own can still set
/// `loader = ipxe` on an arm64 machine: that is honoured).
fn can_run(arch: Option<Arch>, loader: Loader) -> bool {
    match loader {
        Loader::Ipxe => true,
        Loader::Grub => matches!(
            arch,
            Some(Arch::EfiX64 | Arch::HttpX64 | Arch::EfiArm64 | Arch::HttpArm64)
        ),
        // PXE only: Debian 12's signed GRUB, started by UEFI HTTP boot, takes
        // no root from the HTTP device path, asks for no config and stops at
        // its prompt (seen with OVMF; tests/e2e/secureboot.rs boots by PXE).
        Loader::Shim => matches!(arch, Some(Arch::EfiX64)),
        Loader::Uki => matches!(
            arch,
            Some(Arch::EfiX64 | Arch::HttpX64 | Arch::EfiArm64 | Arch::HttpArm64)
        ),
    }
}

/// Picks the loader for a client of `arch` with these settings.
pub fn choose(arch: Option<Arch>, settings: LoaderSettings) -> LoaderChoice {
    let wanted = [
        (settings.machine, LoaderSource::Machine),
        (settings.group, LoaderSource::Group),
    ];
    let mut note = None;
    for (setting, source) in wanted {
        let Some(loader) = setting else { continue };
        if can_run(arch, loader) {
            return LoaderChoice {
                loader,
                source,
                note: None,
            };
        }
        note.get_or_insert_with(|| {
            let arch = arch.map_or("an unknown architecture".to_string(), |a| a.name());
            format!("{source:?} setting {loader} ignored: no {loader} for {arch}").to_lowercase()
        });
    }
    LoaderChoice {
        loader: default_for(arch),
        source: LoaderSource::Arch,
        note,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_choice_table() {
        use Loader::*;
        use LoaderSource as S;
        let set = |machine, group| LoaderSettings { machine, group };
        let a = |code| Some(Arch::from_code(code));
        #[rustfmt::skip]
        let table: Vec<(&str, Option<Arch>, LoaderSettings, Loader, LoaderSource)> = vec![
            ("BIOS, nothing set",          a(0),  set(None, None),             Ipxe, S::Arch),
            ("x64 UEFI, nothing set",      a(7),  set(None, None),             Ipxe, S::Arch),
            ("x64 HTTP boot",              a(16), set(None, None),             Ipxe, S::Arch),
            ("arm64 UEFI",                 a(11), set(None, None),             Grub, S::Arch),
            ("arm64 HTTP boot",            a(19), set(None, None),             Grub, S::Arch),
            ("unknown arch (iPXE asks)",   None,  set(None, None),             Ipxe, S::Arch),
            ("group prefers GRUB, x64",    a(7),  set(None, Some(Grub)),       Grub, S::Group),
            ("machine beats group",        a(7),  set(Some(Ipxe), Some(Grub)), Ipxe, S::Machine),
            ("machine GRUB, group iPXE",   a(9),  set(Some(Grub), Some(Ipxe)), Grub, S::Machine),
            ("arm64 with own iPXE",        a(11), set(Some(Ipxe), None),       Ipxe, S::Machine),
            ("BIOS cannot run GRUB EFI",   a(0),  set(None, Some(Grub)),       Ipxe, S::Arch),
            ("BIOS: machine GRUB, group iPXE", a(0), set(Some(Grub), Some(Ipxe)), Ipxe, S::Group),
            ("x64 UEFI, Secure Boot group", a(7), set(None, Some(Shim)),       Shim, S::Group),
            ("x64 HTTP boot: shim by PXE only", a(16), set(Some(Shim), None),  Ipxe, S::Arch),
            ("arm64: no signed shim here", a(11), set(Some(Shim), None),       Grub, S::Arch),
            ("BIOS has no Secure Boot",    a(0),  set(None, Some(Shim)),       Ipxe, S::Arch),
            ("x64 HTTP boot, own UKI",     a(16), set(None, Some(Uki)),        Uki,  S::Group),
            ("BIOS cannot load a UKI",     a(0),  set(Some(Uki), None),        Ipxe, S::Arch),
        ];
        for (name, arch, settings, loader, source) in table {
            let got = choose(arch, settings);
            assert_eq!((got.loader, got.source), (loader, source), "{name}");
        }
        let overridden = choose(a(0), set(None, Some(Grub)));
        assert_eq!(
            overridden.note.as_deref(),
            Some("group setting grub ignored: no grub for bios")
        );
    }

    #[test]
    fn settings_parse_leniently_and_refuse_the_unknown() {
        assert_eq!(" GRUB ".parse::<Loader>(), Ok(Loader::Grub));
        assert_eq!("ipxe".parse::<Loader>(), Ok(Loader::Ipxe));
        assert_eq!("shim".parse::<Loader>(), Ok(Loader::Shim));
        assert_eq!("SecureBoot".parse::<Loader>(), Ok(Loader::Shim));
        assert!("syslinux".parse::<Loader>().is_err());
    }
}
