//! Unified kernel images: one EFI binary (systemd's stub) holding the
//! kernel (`.linux`), the initrd (`.initrd`) and the command line
//! (`.cmdline`), so that one Authenticode signature over the whole file
//! lets the firmware verify all three.
//!
//! Pure: the PE layout of an image in, what ironboot needs to know out
//! ([`Uki::parse`]); and where the sections of a new image go in a stub
//! ([`Layout::after`]), for `ironboot image build-uki`, which leaves the
//! copying to binutils' `objcopy` and the signing to `sbsign`.

use std::ops::Range;

use object::read::pe::PeFile64;
use object::{pe, LittleEndian as LE, Object, ObjectSection};

/// The sections a unified kernel image is made of, in the order the stub
/// lays them out.
pub const SECTIONS: [&str; 4] = [".osrel", ".cmdline", ".linux", ".initrd"];

/// Why a file is not a unified kernel image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UkiError {
    #[error("not a 64-bit PE (EFI) binary: {0}")]
    NotPe(String),
    #[error("a PE binary without a {0} section: not a unified kernel image")]
    Missing(&'static str),
    #[error("the {0} section is not UTF-8 text")]
    NotText(&'static str),
}

/// A section's place in the file and in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    /// Its bytes in the file.
    pub file: Range<u64>,
    /// Where the loader maps it (relative to the image base).
    pub memory: Range<u64>,
}

/// What ironboot reads from a unified kernel image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uki {
    pub sections: Vec<Section>,
    /// The sealed command line (`.cmdline`), without trailing NULs or
    /// newlines; empty when the image has none.
    pub cmdline: String,
    /// Whether it carries an Authenticode signature (the certificate
    /// table is not empty). Whether that signature is good is for the
    /// firmware (or `sbverify`) to say: ironboot does not hold the keys.
    pub signed: bool,
}

impl Uki {
    /// Reads a unified kernel image: a 64-bit PE with at least `.linux`.
    pub fn parse(bytes: &[u8]) -> Result<Self, UkiError> {
        let pe = PeFile64::parse(bytes).map_err(|e| UkiError::NotPe(e.to_string()))?;
        let mut sections = Vec::new();
        for s in pe.sections() {
            let name = s.name().unwrap_or("?").to_string();
            let file = s
                .file_range()
                .map_or(0..0, |(start, len)| start..start + len);
            if file.end > bytes.len() as u64 {
                return Err(UkiError::NotPe(format!(
                    "section {name} runs past the end of the file (truncated?)"
                )));
            }
            let start = s.address() - pe.relative_address_base();
            sections.push(Section {
                name,
                file,
                memory: start..start + s.size(),
            });
        }
        let linux = sections.iter().any(|s| s.name == ".linux");
        if !linux {
            return Err(UkiError::Missing(".linux"));
        }
        let cmdline = match pe.section_by_name(".cmdline") {
            Some(s) => {
                let data = s.data().map_err(|e| UkiError::NotPe(e.to_string()))?;
                std::str::from_utf8(data)
                    .map_err(|_| UkiError::NotText(".cmdline"))?
                    .trim_end_matches(['\0', '\n', ' '])
                    .to_string()
            }
            None => String::new(),
        };
        let signed = pe
            .data_directory(pe::IMAGE_DIRECTORY_ENTRY_SECURITY)
            .is_some_and(|d| d.size.get(LE) > 0);
        Ok(Uki {
            sections,
            cmdline,
            signed,
        })
    }

    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }
}

/// Where a new image's sections go in the stub's address space: each
/// after the one before, on a 4 KiB boundary, the first after everything
/// the stub maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// `(section, virtual address)` in [`SECTIONS`] order.
    pub addresses: Vec<(&'static str, u64)>,
}

const PAGE: u64 = 4096;

fn page_up(n: u64) -> u64 {
    n.div_ceil(PAGE) * PAGE
}

impl Layout {
    /// The layout for `sizes` (of `.osrel`, `.cmdline`, `.linux`, `.initrd`,
    /// in that order) in the systemd stub `stub`.
    pub fn after(stub: &[u8], sizes: [u64; 4]) -> Result<Self, UkiError> {
        let pe = PeFile64::parse(stub).map_err(|e| UkiError::NotPe(e.to_string()))?;
        let mut end = pe
            .sections()
            .map(|s| s.address() - pe.relative_address_base() + s.size())
            .max()
            .unwrap_or(0);
        if let Some(s) = SECTIONS.iter().find(|n| pe.section_by_name(n).is_some()) {
            return Err(UkiError::NotPe(format!(
                "the stub already has a {s} section (an image, not a stub?)"
            )));
        }
        let mut addresses = Vec::new();
        for (name, size) in SECTIONS.into_iter().zip(sizes) {
            let at = page_up(end);
            addresses.push((name, at));
            end = at + size;
        }
        Ok(Layout { addresses })
    }
}

/// A minimal PE32+ image for tests: DOS header, NT headers, the given
/// sections (name, virtual address, bytes), file alignment 0x200, and with
/// `signed` an (empty) certificate table. Not bootable: it has no code.
pub fn sample(sections: &[(&str, u32, &[u8])], signed: bool) -> Vec<u8> {
    let n = sections.len();
    let headers_end = 0x80 + 4 + 20 + 240 + 40 * n;
    let align = |x: usize| x.div_ceil(0x200) * 0x200;
    let mut raw_at = align(headers_end);
    let mut out = vec![0u8; raw_at];
    out[0..2].copy_from_slice(b"MZ");
    out[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
    let nt = 0x80;
    out[nt..nt + 4].copy_from_slice(b"PE\0\0");
    let coff = nt + 4;
    out[coff..coff + 2].copy_from_slice(&0x8664u16.to_le_bytes());
    out[coff + 2..coff + 4].copy_from_slice(&(n as u16).to_le_bytes());
    out[coff + 16..coff + 18].copy_from_slice(&240u16.to_le_bytes());
    out[coff + 18..coff + 20].copy_from_slice(&0x22u16.to_le_bytes());
    let opt = coff + 20;
    out[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes());
    out[opt + 32..opt + 36].copy_from_slice(&0x1000u32.to_le_bytes()); // section alignment
    out[opt + 36..opt + 40].copy_from_slice(&0x200u32.to_le_bytes()); // file alignment
    let end = sections
        .iter()
        .map(|(_, va, b)| *va as usize + b.len())
        .max()
        .unwrap_or(0x1000);
    out[opt + 56..opt + 60].copy_from_slice(&(end.div_ceil(0x1000) as u32 * 0x1000).to_le_bytes());
    out[opt + 60..opt + 64].copy_from_slice(&(raw_at as u32).to_le_bytes()); // size of headers
    out[opt + 68..opt + 70].copy_from_slice(&10u16.to_le_bytes()); // EFI application
    out[opt + 108..opt + 112].copy_from_slice(&16u32.to_le_bytes()); // data directories
    let mut bodies = Vec::new();
    for (i, (name, va, bytes)) in sections.iter().enumerate() {
        let h = opt + 240 + 40 * i;
        out[h..h + name.len()].copy_from_slice(name.as_bytes());
        out[h + 8..h + 12].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
        out[h + 12..h + 16].copy_from_slice(&va.to_le_bytes());
        let raw = align(bytes.len());
        out[h + 16..h + 20].copy_from_slice(&(raw as u32).to_le_bytes());
        out[h + 20..h + 24].copy_from_slice(&(raw_at as u32).to_le_bytes());
        out[h + 36..h + 40].copy_from_slice(&0x4000_0040u32.to_le_bytes());
        let mut body = bytes.to_vec();
        body.resize(raw, 0);
        bodies.push(body);
        raw_at += raw;
    }
    for b in bodies {
        out.extend(b);
    }
    if signed {
        // The certificate table: a WIN_CERTIFICATE header, at the end.
        let at = out.len() as u32;
        out.extend([16u8, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let dir = opt + 112 + 8 * 4;
        out[dir..dir + 4].copy_from_slice(&at.to_le_bytes());
        out[dir + 4..dir + 8].copy_from_slice(&16u32.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_sections_the_sealed_cmdline_and_whether_it_is_signed() {
        let image = sample(
            &[
                (".text", 0x1000, b"stub code"),
                (
                    ".cmdline",
                    0x3000,
                    b"console=ttyS0 ds=nocloud-net;s=http://s/config/self/\n\0",
                ),
                (".linux", 0x4000, b"kernel bytes"),
                (".initrd", 0x5000, b"initrd bytes"),
            ],
            true,
        );
        let uki = Uki::parse(&image).unwrap();
        assert_eq!(
            uki.cmdline,
            "console=ttyS0 ds=nocloud-net;s=http://s/config/self/"
        );
        assert!(uki.signed);
        let linux = uki.section(".linux").unwrap();
        assert_eq!(&image[linux.file.start as usize..][..12], b"kernel bytes");
        assert_eq!(linux.memory.start, 0x4000);
        assert!(
            !Uki::parse(&sample(&[(".linux", 0x1000, b"k")], false))
                .unwrap()
                .signed
        );
    }

    #[test]
    fn refuses_what_is_not_a_unified_kernel_image() {
        assert!(matches!(
            Uki::parse(b"MZ not really"),
            Err(UkiError::NotPe(_))
        ));
        assert!(matches!(Uki::parse(&[0u8; 4096]), Err(UkiError::NotPe(_))));
        let stub = sample(&[(".text", 0x1000, b"stub")], false);
        assert_eq!(Uki::parse(&stub), Err(UkiError::Missing(".linux")));
        let bad = sample(
            &[
                (".linux", 0x1000, b"k"),
                (".cmdline", 0x2000, &[0xff, 0xfe]),
            ],
            false,
        );
        assert_eq!(Uki::parse(&bad), Err(UkiError::NotText(".cmdline")));
        // Truncated: headers that point past the end.
        let full = sample(&[(".linux", 0x1000, &[7u8; 5000])], false);
        assert!(Uki::parse(&full[..0x300]).is_err());
    }

    #[test]
    fn lays_new_sections_out_after_the_stub_on_page_boundaries() {
        let stub = sample(
            &[
                (".text", 0x1000, &[1u8; 0x1800]),
                (".sdmagic", 0x3000, b"x"),
            ],
            false,
        );
        let layout = Layout::after(&stub, [10, 0x41, 0x2001, 5]).unwrap();
        assert_eq!(
            layout.addresses,
            vec![
                (".osrel", 0x4000),
                (".cmdline", 0x5000),
                (".linux", 0x6000),
                (".initrd", 0x9000)
            ]
        );
        let image = sample(&[(".linux", 0x1000, b"k")], false);
        assert!(
            Layout::after(&image, [1, 1, 1, 1]).is_err(),
            "an image is not a stub"
        );
    }
}
