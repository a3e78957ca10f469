//! What a machine says about itself is a claim: firmware variables in a
//! script request (`${buildarch}`, `${platform}`, `${serial}`, `${uuid}`),
//! ONIE's headers, a DHCP host name or vendor class. Each is checked here,
//! once, at the edge, before anything stores or renders it: against a
//! fixed vocabulary where one exists, else capped to [`MAX_CLAIM`] bytes of
//! text without control characters. A claim that fails is dropped (`None`),
//! never repaired into something the machine did not say.
//!
//! Claims are kept apart from what the operator owns (host name, labels,
//! group, kind set through the API): see `inventory`.

use crate::domain::Cpu;

/// The longest claim kept, in bytes.
pub const MAX_CLAIM: usize = 128;

/// iPXE's `${buildarch}` vocabulary (the CPUs it is built for: [`Cpu`]).
pub fn buildarch(claim: &str) -> Option<Cpu> {
    claim.trim().parse().ok()
}

/// iPXE's `${platform}` vocabulary.
pub fn platform(claim: &str) -> Option<&'static str> {
    const KNOWN: [&str; 4] = ["pcbios", "efi", "linux", "sbi"];
    KNOWN.into_iter().find(|k| *k == claim.trim())
}

/// SMBIOS UUID text: 32 hex digits, with or without the four hyphens.
pub fn uuid(claim: &str) -> Option<String> {
    let claim = claim.trim();
    let digits = claim.chars().filter(|c| *c != '-').count();
    let shape = claim.len() <= 36
        && digits == 32
        && claim.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    shape.then(|| claim.to_ascii_lowercase())
}

/// Whether Secure Boot was on, as the booted OS reports it in its
/// confirmation (`secureboot`): `1`/`0`, as `mokutil --sb-state` words it
/// (`SecureBoot enabled`/`disabled`), or `true`/`false`.
pub fn secure_boot(claim: &str) -> Option<bool> {
    let claim = claim.trim().to_ascii_lowercase();
    let claim = claim.strip_prefix("secureboot ").unwrap_or(&claim);
    match claim {
        "1" | "true" | "on" | "enabled" => Some(true),
        "0" | "false" | "off" | "disabled" => Some(false),
        _ => None,
    }
}

/// Free text (serial, asset tag, host name, vendor class): no control
/// characters, at most [`MAX_CLAIM`] bytes (cut at a character boundary),
/// not blank.
pub fn text(claim: &str) -> Option<String> {
    let claim = claim.trim();
    if claim.is_empty() || claim.chars().any(char::is_control) {
        return None;
    }
    let mut end = claim.len().min(MAX_CLAIM);
    while !claim.is_char_boundary(end) {
        end -= 1;
    }
    Some(claim[..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_checked_against_vocabularies_or_capped() {
        assert_eq!(buildarch("x86_64"), Some(Cpu::X86_64));
        assert_eq!(buildarch("i386"), Some(Cpu::I386));
        assert_eq!(buildarch("x\ntouch /tmp/P\n#"), None);
        assert_eq!(buildarch("aarch64"), None, "iPXE says arm64");
        assert_eq!(platform("efi"), Some("efi"));
        assert_eq!(platform("efi; chain http://x"), None);
        assert_eq!(
            uuid("4C4C4544-0042-3510-8051-B2C04F565931").as_deref(),
            Some("4c4c4544-0042-3510-8051-b2c04f565931")
        );
        assert_eq!(uuid("not a uuid"), None);
        assert_eq!(secure_boot("1"), Some(true));
        assert_eq!(secure_boot("SecureBoot enabled"), Some(true));
        assert_eq!(secure_boot(" 0\n"), Some(false));
        assert_eq!(secure_boot("maybe"), None);
        assert_eq!(secure_boot("1; DROP TABLE"), None);
        assert_eq!(uuid(&"a".repeat(64)), None);
        assert_eq!(text("VMware-56 4d 2a").as_deref(), Some("VMware-56 4d 2a"));
        assert_eq!(text("x\ntouch /tmp/P"), None);
        assert_eq!(text("  "), None);
        assert_eq!(text(&"s".repeat(60_000)).map(|t| t.len()), Some(MAX_CLAIM));
        let snow = "☃".repeat(100);
        let cut = text(&snow).unwrap();
        assert!(cut.len() <= MAX_CLAIM && cut.chars().all(|c| c == '☃'));
    }
}
