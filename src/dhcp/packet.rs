//! Safe decoding of DHCPv4 requests: a thin wrapper over dhcproto.
//!
//! dhcproto panics on `hlen > 16`, ignores the magic cookie and option
//! overload, and stops decoding silently at the first option it cannot read.
//! Worse, its option decoders assert on lengths (`debug_assert!(len == 3)`
//! for option 94) and unwrap an `Ipv4Net::new` for option 121, so a crafted
//! option panics it (found by this crate's flood test). So dhcproto only ever
//! sees the fixed header: the bytes are checked here (length, op, hlen,
//! cookie, every option's length), the options are walked by this module into
//! a raw map (RFC 3396 concatenation, RFC 2132 overload into `file`/`sname`),
//! and dhcproto decodes the 240-byte header followed by a bare END. Everything
//! option-related is read from the raw map, so a bad hostname cannot hide the
//! options after it.
//!
//! Pure: bytes in, values out.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use dhcproto::v4::{Message, MessageType};
use dhcproto::{Decodable, Decoder};

use crate::domain::{Arch, MacAddr};

/// BOOTP fixed header (236 bytes) plus the magic cookie.
pub const HEADER_LEN: usize = 240;
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
const SNAME: std::ops::Range<usize> = 44..108;
const FILE: std::ops::Range<usize> = 108..236;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("datagram of {0} bytes is shorter than a DHCP header")]
    TooShort(usize),
    #[error("op {0} is not BOOTREQUEST")]
    NotRequest(u8),
    #[error("hlen {0} is not a hardware address length (6..=16)")]
    BadHlen(u8),
    #[error("magic cookie missing")]
    BadCookie,
    #[error("option {code} at offset {offset} runs past the end of the packet")]
    OptionOverrun { code: u8, offset: usize },
    #[error("no DHCP message type (option 53)")]
    NoMessageType,
    #[error("dhcproto could not decode the header: {0}")]
    Decode(String),
}

/// Options exactly as sent: code → bytes (split options concatenated).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawOptions(BTreeMap<u8, Vec<u8>>);

impl RawOptions {
    pub fn get(&self, code: u8) -> Option<&[u8]> {
        self.0.get(&code).map(Vec::as_slice)
    }

    pub fn contains(&self, code: u8) -> bool {
        self.0.contains_key(&code)
    }

    pub fn iter(&self) -> impl Iterator<Item = (u8, &[u8])> {
        self.0.iter().map(|(c, v)| (*c, v.as_slice()))
    }

    fn append(&mut self, code: u8, data: &[u8]) {
        self.0.entry(code).or_default().extend_from_slice(data);
    }

    /// Walks a TLV region. Pads are skipped; `END` or the region's end stops.
    fn walk(&mut self, region: &[u8], base: usize) -> Result<(), ParseError> {
        let mut i = 0;
        while i < region.len() {
            let code = region[i];
            match code {
                0 => i += 1,
                255 => break,
                _ => {
                    let len = *region.get(i + 1).ok_or(ParseError::OptionOverrun {
                        code,
                        offset: base + i,
                    })? as usize;
                    let data = region
                        .get(i + 2..i + 2 + len)
                        .ok_or(ParseError::OptionOverrun {
                            code,
                            offset: base + i,
                        })?;
                    self.append(code, data);
                    i += 2 + len;
                }
            }
        }
        Ok(())
    }
}

/// A parsed BOOTREQUEST.
#[derive(Debug, Clone)]
pub struct Request {
    /// dhcproto's view of the fixed header (its option map is empty: read
    /// options from [`Self::options`]).
    pub msg: Message,
    /// Every option, read by this module.
    pub options: RawOptions,
    pub mac: MacAddr,
    pub msg_type: MessageType,
}

/// Checks and decodes one datagram. Never panics, whatever the bytes.
pub fn parse(bytes: &[u8]) -> Result<Request, ParseError> {
    if bytes.len() < HEADER_LEN {
        return Err(ParseError::TooShort(bytes.len()));
    }
    if bytes[0] != 1 {
        return Err(ParseError::NotRequest(bytes[0]));
    }
    let hlen = bytes[2];
    if !(6..=16).contains(&hlen) {
        return Err(ParseError::BadHlen(hlen));
    }
    if bytes[236..240] != MAGIC_COOKIE {
        return Err(ParseError::BadCookie);
    }
    let mut options = RawOptions::default();
    options.walk(&bytes[HEADER_LEN..], HEADER_LEN)?;
    // Option overload (52): more options in `file` (1), `sname` (2) or both (3).
    if let Some(&[overload]) = options.get(52) {
        if overload & 1 != 0 {
            options.walk(&bytes[FILE], FILE.start)?;
        }
        if overload & 2 != 0 {
            options.walk(&bytes[SNAME], SNAME.start)?;
        }
    }
    let msg_type = match options.get(53) {
        Some(&[t]) => MessageType::from(t),
        _ => return Err(ParseError::NoMessageType),
    };
    let mut header = [0u8; HEADER_LEN + 1];
    header[..HEADER_LEN].copy_from_slice(&bytes[..HEADER_LEN]);
    header[HEADER_LEN] = 255;
    let msg = Message::decode(&mut Decoder::new(&header))
        .map_err(|e| ParseError::Decode(e.to_string()))?;
    let mac = MacAddr::from_slice(&bytes[28..28 + 6]).expect("hlen checked >= 6");
    Ok(Request {
        msg,
        options,
        mac,
        msg_type,
    })
}

impl Request {
    pub fn xid(&self) -> u32 {
        self.msg.xid()
    }

    pub fn ciaddr(&self) -> Ipv4Addr {
        self.msg.ciaddr()
    }

    pub fn giaddr(&self) -> Ipv4Addr {
        self.msg.giaddr()
    }

    pub fn requested_ip(&self) -> Option<Ipv4Addr> {
        ipv4(self.options.get(50)?)
    }

    pub fn server_id(&self) -> Option<Ipv4Addr> {
        ipv4(self.options.get(54)?)
    }

    /// Option 60, lossily decoded (firmware strings are ASCII in practice).
    pub fn vendor_class(&self) -> Option<String> {
        self.options
            .get(60)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// Option 77 as text. iPXE sends the raw bytes `iPXE`; RFC 3004 clients
    /// send length-prefixed instances. Both forms are accepted: each instance
    /// becomes one element.
    pub fn user_classes(&self) -> Vec<String> {
        let Some(raw) = self.options.get(77) else {
            return Vec::new();
        };
        if let Some(parsed) = rfc3004_instances(raw) {
            return parsed;
        }
        vec![String::from_utf8_lossy(raw).into_owned()]
    }

    /// Option 93: the first architecture listed.
    pub fn arch(&self) -> Option<Arch> {
        match self.options.get(93)? {
            [hi, lo, ..] => Some(Arch::from_code(u16::from_be_bytes([*hi, *lo]))),
            _ => None,
        }
    }

    /// Option 97 (client machine identifier): type 0 followed by a 16-byte
    /// UUID, shown in the usual 8-4-4-4-12 form (byte order as sent).
    pub fn uuid(&self) -> Option<String> {
        match self.options.get(97)? {
            // All zeros or all ones means "no UUID" (QEMU's SeaBIOS sends zeros).
            [0, rest @ ..]
                if rest.len() == 16
                    && rest.iter().any(|b| *b != 0)
                    && rest.iter().any(|b| *b != 0xff) =>
            {
                let h: Vec<String> = rest.iter().map(|b| format!("{b:02x}")).collect();
                Some(format!(
                    "{}-{}-{}-{}-{}",
                    h[0..4].concat(),
                    h[4..6].concat(),
                    h[6..8].concat(),
                    h[8..10].concat(),
                    h[10..16].concat()
                ))
            }
            _ => None,
        }
    }

    /// Option 12, with anything that is not a host-name character replaced.
    pub fn hostname(&self) -> Option<String> {
        let raw = self.options.get(12)?;
        let name: String = raw
            .iter()
            .map(|&b| {
                if b.is_ascii_alphanumeric() || b == b'-' || b == b'.' {
                    b as char
                } else {
                    '_'
                }
            })
            .collect();
        (!name.is_empty()).then_some(name)
    }

    /// Option 55: the codes the client asked for.
    pub fn requested_options(&self) -> &[u8] {
        self.options.get(55).unwrap_or(&[])
    }

    /// Option 82 sub-options: (circuit-id, remote-id, link-selection).
    pub fn relay_info(&self) -> RelayInfo {
        let mut info = RelayInfo::default();
        let Some(raw) = self.options.get(82) else {
            return info;
        };
        info.raw = Some(raw.to_vec());
        let mut i = 0;
        while i + 2 <= raw.len() {
            let (code, len) = (raw[i], raw[i + 1] as usize);
            let Some(data) = raw.get(i + 2..i + 2 + len) else {
                break;
            };
            match code {
                1 => info.circuit_id = Some(printable(data)),
                2 => info.remote_id = Some(printable(data)),
                5 => info.link_selection = ipv4(data),
                _ => {}
            }
            i += 2 + len;
        }
        info
    }
}

/// What a relay agent (option 82) told us.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayInfo {
    /// The whole option, echoed back verbatim in replies (RFC 3046).
    pub raw: Option<Vec<u8>>,
    pub circuit_id: Option<String>,
    pub remote_id: Option<String>,
    /// RFC 3527 link selection: the subnet to allocate from.
    pub link_selection: Option<Ipv4Addr>,
}

fn ipv4(bytes: &[u8]) -> Option<Ipv4Addr> {
    let four: [u8; 4] = bytes.try_into().ok()?;
    Some(Ipv4Addr::from(four))
}

/// Text when printable ASCII, else hex (circuit ids are often binary).
fn printable(bytes: &[u8]) -> String {
    if !bytes.is_empty() && bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        String::from_utf8_lossy(bytes).into_owned()
    } else {
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// RFC 3004 instances (`len, data, len, data…`), if the bytes parse exactly
/// that way and every instance is printable. `iPXE` raw does not: `i` (0x69)
/// would claim 105 bytes.
fn rfc3004_instances(raw: &[u8]) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        let len = raw[i] as usize;
        let data = raw.get(i + 1..i + 1 + len).filter(|d| !d.is_empty())?;
        if !data.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
            return None;
        }
        out.push(String::from_utf8_lossy(data).into_owned());
        i += 1 + len;
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal DISCOVER with the given options (already TLV-encoded).
    pub(crate) fn discover_with(opts: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; HEADER_LEN];
        p[0] = 1;
        p[1] = 1;
        p[2] = 6;
        p[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        p[28..34].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        p[236..240].copy_from_slice(&MAGIC_COOKIE);
        p.extend_from_slice(&[53, 1, 1]);
        p.extend_from_slice(opts);
        p.push(255);
        p
    }

    #[test]
    fn rejects_what_dhcproto_would_panic_on_or_misread() {
        let good = discover_with(&[]);
        assert!(parse(&good).is_ok());
        let mut hlen = good.clone();
        hlen[2] = 17;
        assert_eq!(parse(&hlen).unwrap_err(), ParseError::BadHlen(17));
        let mut hlen = good.clone();
        hlen[2] = 255;
        assert_eq!(parse(&hlen).unwrap_err(), ParseError::BadHlen(255));
        let mut cookie = good.clone();
        cookie[236] = 0;
        assert_eq!(parse(&cookie).unwrap_err(), ParseError::BadCookie);
        assert_eq!(parse(&good[..200]).unwrap_err(), ParseError::TooShort(200));
        let mut reply = good.clone();
        reply[0] = 2;
        assert_eq!(parse(&reply).unwrap_err(), ParseError::NotRequest(2));
    }

    #[test]
    fn option_overrun_is_an_error_not_a_panic() {
        let mut p = discover_with(&[]);
        p.pop();
        p.extend_from_slice(&[60, 40, b'P', b'X']);
        assert!(matches!(
            parse(&p),
            Err(ParseError::OptionOverrun { code: 60, .. })
        ));
    }

    #[test]
    fn a_bad_hostname_does_not_hide_later_options() {
        // Hostname with invalid UTF-8, then arch 7 and vendor class.
        let mut opts = vec![12, 3, 0xff, 0xfe, 0x80, 93, 2, 0, 7];
        opts.extend_from_slice(&[60, 9]);
        opts.extend_from_slice(b"PXEClient");
        let req = parse(&discover_with(&opts)).unwrap();
        assert_eq!(req.arch(), Some(Arch::EfiX64));
        assert_eq!(req.vendor_class().as_deref(), Some("PXEClient"));
        assert_eq!(req.hostname().as_deref(), Some("___"));
    }

    #[test]
    fn split_options_are_concatenated_and_overload_is_read() {
        let mut opts = vec![60, 3, b'P', b'X', b'E', 60, 6];
        opts.extend_from_slice(b"Client");
        let req = parse(&discover_with(&opts)).unwrap();
        assert_eq!(req.vendor_class().as_deref(), Some("PXEClient"));

        let mut p = discover_with(&[52, 1, 1]);
        p[FILE.start..FILE.start + 4].copy_from_slice(&[93, 2, 0, 11]);
        p[FILE.start + 4] = 255;
        assert_eq!(parse(&p).unwrap().arch(), Some(Arch::EfiArm64));
    }

    #[test]
    fn user_class_raw_and_rfc3004() {
        let raw = parse(&discover_with(&[77, 4, b'i', b'P', b'X', b'E'])).unwrap();
        assert_eq!(raw.user_classes(), vec!["iPXE"]);
        let framed = parse(&discover_with(&[77, 5, 4, b'i', b'P', b'X', b'E'])).unwrap();
        assert_eq!(framed.user_classes(), vec!["iPXE"]);
    }

    #[test]
    fn uuid_and_relay_info() {
        let mut opts = vec![97, 17, 0];
        opts.extend(1..=16u8);
        opts.extend_from_slice(&[82, 12, 1, 4, b'p', b'o', b'r', b't', 2, 2, 0xab, 0xcd, 5, 0]);
        let p = discover_with(&opts);
        let req = parse(&p).unwrap();
        assert_eq!(
            req.uuid().as_deref(),
            Some("01020304-0506-0708-090a-0b0c0d0e0f10")
        );
        let info = req.relay_info();
        assert_eq!(info.circuit_id.as_deref(), Some("port"));
        assert_eq!(info.remote_id.as_deref(), Some("ab:cd"));
    }

    #[test]
    fn options_that_panic_dhcproto_are_only_carried_raw() {
        // Option 94 with length 2 (dhcproto asserts 3), option 121 with a /40
        // route (dhcproto unwraps Ipv4Net::new).
        let opts = [94, 2, 1, 2, 121, 5, 40, 10, 0, 0, 1];
        let req = parse(&discover_with(&opts)).unwrap();
        assert_eq!(req.options.get(94), Some(&[1u8, 2][..]));
        assert_eq!(req.options.get(121).map(<[u8]>::len), Some(5));
    }

    #[test]
    fn placeholder_uuids_are_no_uuid() {
        let mut zeros = vec![97, 17, 0];
        zeros.extend([0u8; 16]);
        assert_eq!(parse(&discover_with(&zeros)).unwrap().uuid(), None);
        let mut ones = vec![97, 17, 0];
        ones.extend([0xffu8; 16]);
        assert_eq!(parse(&discover_with(&ones)).unwrap().uuid(), None);
    }

    #[test]
    fn no_message_type_is_rejected() {
        let mut p = discover_with(&[]);
        p[HEADER_LEN..HEADER_LEN + 3].copy_from_slice(&[0, 0, 0]);
        assert_eq!(parse(&p).unwrap_err(), ParseError::NoMessageType);
    }
}
