//! Safe decoding of DHCPv6 datagrams (RFC 8415) into dhcproto's `v6` types,
//! and re-wrapping replies for the relays a request came through.
//!
//! dhcproto 0.15 is not safe on hostile bytes: its option decoders subtract
//! before they check (`len - 4` for options 16 and 17, `len - 11` for 11,
//! `len - 2` for 13: a panic), read fixed widths whatever the length says
//! (options 7, 8, 12, 14, 19, 20), stop silently at the first option they
//! cannot read (a bad option hides every later one), and always decode the
//! Relay Message option as a relay header, so the client's message inside a
//! Relay-Forw comes out as garbage. Its encoder also writes the item count,
//! not the byte length, as the length of options 15 and 16. So:
//!
//! - relay layers are read here, by hand (a 34-byte header, then options);
//! - every option of the client's message, nested ones included, is walked
//!   here and checked for framing and shape before dhcproto decodes it, one
//!   option at a time; a decoded option holding fewer sub-options than its
//!   bytes do is refused, so nothing is dropped silently;
//! - [`encode`] writes options 15 and 16 itself.
//!
//! Invariants: [`parse`] never panics, whatever the bytes. A [`Request6`]
//! holds a message a client may send (never Advertise, Reply, Reconfigure,
//! Relay-Repl or another server-to-client type), came in at most 4096
//! bytes through at most 8 relays, carries at most 8 IA_NAs of at most 8
//! addresses each, and has a Client Identifier (3 to 130 bytes) wherever
//! RFC 8415 requires one. Pure: bytes in, values out.

use std::net::Ipv6Addr;

use dhcproto::v6::{DhcpOption, Message, MessageType};
use dhcproto::{Decodable, Decoder, Encodable};

use crate::domain::MacAddr;

pub const SERVER_PORT: u16 = 547;
pub const CLIENT_PORT: u16 = 546;
/// All_DHCP_Relay_Agents_and_Servers (RFC 8415 §7.1).
pub const ALL_SERVERS_AND_RELAYS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);

/// Larger datagrams are refused: a boot client's Solicit is a few hundred
/// bytes at most.
pub const MAX_LEN: usize = 4096;
/// RFC 8415's HOP_COUNT_LIMIT: no more relay layers than this.
pub const MAX_HOPS: usize = 8;
pub const MAX_IA_NAS: usize = 8;
pub const MAX_ADDRESSES_PER_IA: usize = 8;
/// A DUID is its 2-byte type and at most 128 bytes (RFC 8415 §11.1).
pub const MAX_DUID: usize = 130;
/// A DUID shorter than its type and one byte identifies nothing.
const MIN_DUID: usize = 3;
/// msg-type, hop-count, link-address, peer-address.
const RELAY_HEADER: usize = 34;
/// IA_NA > IA Address > Status Code is three deep; deeper is refused.
const MAX_DEPTH: usize = 3;

const MSG_RELAY_FORW: u8 = 12;
const MSG_RELAY_REPL: u8 = 13;
const OPT_RELAY_MSG: u16 = 9;
const OPT_INTERFACE_ID: u16 = 18;
const OPT_CLIENT_LINK_LAYER: u16 = 79;
const OPT_USER_CLASS: u16 = 15;
const OPT_VENDOR_CLASS: u16 = 16;
/// Longest vendor or user class text kept (they are logged and recorded).
const MAX_CLASS_CHARS: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("datagram of {0} bytes is larger than {MAX_LEN}")]
    TooLarge(usize),
    #[error("message of {0} bytes is shorter than its header")]
    TooShort(usize),
    #[error("option {code} at offset {offset} runs past the end of its message")]
    TruncatedOption { code: u16, offset: usize },
    #[error("{0:?} is sent by servers only")]
    ServerOnly(MessageType),
    #[error("more than {MAX_HOPS} relay agents")]
    TooManyHops,
    #[error("Relay-Forw {hop} (0 is outermost) has no Relay Message option")]
    NoRelayMessage { hop: usize },
    /// A length dhcproto would misread or panic on, option 9 in a client's
    /// message, or containers nested too deep.
    #[error("option {code} of {len} bytes is malformed")]
    BadOption { code: u16, len: usize },
    #[error("dhcproto could not decode option {code}: {reason}")]
    Undecodable { code: u16, reason: String },
    #[error("{0} IA_NA options (at most {MAX_IA_NAS})")]
    TooManyIaNas(usize),
    #[error("IA_NA {iaid} holds {count} addresses (at most {MAX_ADDRESSES_PER_IA})")]
    TooManyAddresses { iaid: u32, count: usize },
    #[error("{0:?} without a Client Identifier")]
    NoClientId(MessageType),
    #[error("Client Identifier of {0} bytes (a DUID is {MIN_DUID} to {MAX_DUID})")]
    ClientIdLength(usize),
}

/// One relay agent the request came through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub hop_count: u8,
    /// An address on the client's link (zero when the relay uses
    /// Interface-ID instead).
    pub link_addr: Ipv6Addr,
    /// Where the relay got the message from: the client, or the next relay.
    pub peer_addr: Ipv6Addr,
    /// Option 18, echoed in the reply (RFC 8415 §19.3).
    pub interface_id: Option<Vec<u8>>,
    /// Option 79 (RFC 6939) when it names an Ethernet address.
    pub client_link_layer: Option<MacAddr>,
}

/// A client's message and the relays it came through.
#[derive(Debug, Clone)]
pub struct Request6 {
    /// The client's own message (innermost).
    pub msg: Message,
    /// Outermost (the relay that sent it to us) first.
    pub hops: Vec<Hop>,
}

/// One IA_NA: the identity association and the addresses the client names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IaNaRequest {
    pub iaid: u32,
    pub addresses: Vec<Ipv6Addr>,
}

/// Checks and decodes one datagram. Never panics, whatever the bytes.
pub fn parse(bytes: &[u8]) -> Result<Request6, ParseError> {
    if bytes.len() > MAX_LEN {
        return Err(ParseError::TooLarge(bytes.len()));
    }
    let (mut inner, mut base, mut hops) = (bytes, 0, Vec::new());
    while inner.first() == Some(&MSG_RELAY_FORW) {
        if hops.len() == MAX_HOPS {
            return Err(ParseError::TooManyHops);
        }
        let (hop, carried, at) = relay(inner, base, hops.len())?;
        hops.push(hop);
        (inner, base) = (carried, at);
    }
    let msg = client_message(inner, base)?;
    Ok(Request6 { msg, hops })
}

/// One Relay-Forw layer: its hop, the message it carries and that
/// message's offset in the datagram.
fn relay(bytes: &[u8], base: usize, depth: usize) -> Result<(Hop, &[u8], usize), ParseError> {
    if bytes.len() < RELAY_HEADER {
        return Err(ParseError::TooShort(bytes.len()));
    }
    let mut hop = Hop {
        hop_count: bytes[1],
        link_addr: ipv6(&bytes[2..18]),
        peer_addr: ipv6(&bytes[18..34]),
        interface_id: None,
        client_link_layer: None,
    };
    let mut carried = None;
    for opt in walk(&bytes[RELAY_HEADER..], base + RELAY_HEADER)? {
        match opt.code {
            OPT_RELAY_MSG if carried.is_none() => carried = Some((opt.data, opt.offset + 4)),
            OPT_INTERFACE_ID if hop.interface_id.is_none() => {
                hop.interface_id = Some(opt.data.to_vec())
            }
            OPT_CLIENT_LINK_LAYER => hop.client_link_layer = ethernet(opt.data),
            _ => {}
        }
    }
    let (msg, at) = carried.ok_or(ParseError::NoRelayMessage { hop: depth })?;
    Ok((hop, msg, at))
}

/// RFC 6939: link-layer type 1 (Ethernet) and a 6-byte address.
fn ethernet(data: &[u8]) -> Option<MacAddr> {
    match data {
        [0, 1, mac @ ..] if mac.len() == 6 => MacAddr::from_slice(mac),
        _ => None,
    }
}

fn ipv6(bytes: &[u8]) -> Ipv6Addr {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(bytes);
    Ipv6Addr::from(octets)
}

/// Server-to-client types: never accepted from the wire.
fn from_server(kind: u8) -> bool {
    // Advertise, Reply, Reconfigure, Relay-Repl, Leasequery replies, DHCPv4-response.
    matches!(kind, 2 | 7 | 10 | 13 | 15 | 16 | 17 | 21)
}

/// RFC 8415 §16: the messages a server discards without a Client Identifier.
fn needs_client_id(kind: MessageType) -> bool {
    use MessageType::*;
    matches!(
        kind,
        Solicit | Request | Renew | Rebind | Release | Decline | Confirm
    )
}

fn client_message(bytes: &[u8], base: usize) -> Result<Message, ParseError> {
    let [kind, x0, x1, x2, options @ ..] = bytes else {
        return Err(ParseError::TooShort(bytes.len()));
    };
    if from_server(*kind) {
        return Err(ParseError::ServerOnly(MessageType::from(*kind)));
    }
    let mut opts = Vec::new();
    for raw in walk(options, base + 4)? {
        let expected = check(&raw, 1)?;
        let undecodable = |reason: String| ParseError::Undecodable {
            code: raw.code,
            reason,
        };
        let opt = DhcpOption::decode(&mut Decoder::new(raw.whole))
            .map_err(|e| undecodable(e.to_string()))?;
        if count(&opt) != expected {
            return Err(undecodable("sub-options were dropped".into()));
        }
        opts.push(opt);
    }
    let mut msg = Message::new_with_id(MessageType::from(*kind), [*x0, *x1, *x2]);
    msg.set_opts(opts.into_iter().collect());
    check_message(&msg)?;
    Ok(msg)
}

/// The rules on the message as a whole: Client Identifier, IA counts.
fn check_message(msg: &Message) -> Result<(), ParseError> {
    let client_id = msg.opts().iter().find_map(|o| match o {
        DhcpOption::ClientId(id) => Some(id.len()),
        _ => None,
    });
    match client_id {
        Some(len) if !(MIN_DUID..=MAX_DUID).contains(&len) => {
            return Err(ParseError::ClientIdLength(len))
        }
        None if needs_client_id(msg.msg_type()) => {
            return Err(ParseError::NoClientId(msg.msg_type()))
        }
        _ => {}
    }
    let ias: Vec<_> = msg
        .opts()
        .iter()
        .filter_map(|o| match o {
            DhcpOption::IANA(ia) => Some(ia),
            _ => None,
        })
        .collect();
    if ias.len() > MAX_IA_NAS {
        return Err(ParseError::TooManyIaNas(ias.len()));
    }
    for ia in ias {
        let count = addresses(&ia.opts).len();
        if count > MAX_ADDRESSES_PER_IA {
            return Err(ParseError::TooManyAddresses { iaid: ia.id, count });
        }
    }
    Ok(())
}

/// One option as sent: code, value, and the whole TLV (for dhcproto).
#[derive(Debug, Clone, Copy)]
struct RawOption<'a> {
    code: u16,
    data: &'a [u8],
    whole: &'a [u8],
    /// Where it starts in the datagram.
    offset: usize,
}

/// Splits a region into options; any option running past it is an error.
fn walk(region: &[u8], base: usize) -> Result<Vec<RawOption<'_>>, ParseError> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < region.len() {
        let byte = |at: usize| region.get(i + at).copied().unwrap_or(0);
        let code = u16::from_be_bytes([byte(0), byte(1)]);
        let len = usize::from(u16::from_be_bytes([byte(2), byte(3)]));
        let end = i + 4 + len;
        let (Some(whole), Some(data)) = (region.get(i..end), region.get(i + 4..end)) else {
            return Err(ParseError::TruncatedOption {
                code,
                offset: base + i,
            });
        };
        out.push(RawOption {
            code,
            data,
            whole,
            offset: base + i,
        });
        i = end;
    }
    Ok(out)
}

/// Where a container option's sub-options start, after its fixed fields.
fn nested_from(code: u16) -> Option<usize> {
    match code {
        3 | 25 => Some(12), // IA_NA, IA_PD: IAID, T1, T2
        4 | 17 => Some(4),  // IA_TA: IAID; Vendor-specific: enterprise number
        5 => Some(24),      // IA Address: address, two lifetimes
        26 => Some(25),     // IA Prefix: two lifetimes, length, prefix
        _ => None,
    }
}

/// Whether dhcproto reads a leaf option of this length exactly: no panic,
/// no byte left over or missing.
fn leaf_ok(code: u16, data: &[u8]) -> bool {
    let len = data.len();
    match code {
        // Only relays send it, and relay layers are read by `relay`.
        OPT_RELAY_MSG => false,
        2 => (MIN_DUID..=MAX_DUID).contains(&len),
        6 | 61 => len % 2 == 0,
        7 | 19 => len == 1,
        8 => len == 2,
        11 => len >= 11,
        12 => len == 16,
        13 => len >= 2,
        14 | 20 => len == 0,
        OPT_USER_CLASS => items_tile(data),
        OPT_VENDOR_CLASS => len >= 4 && items_tile(&data[4..]),
        _ => true,
    }
}

/// Whether 2-byte-length-prefixed items fill `data` exactly (options 15, 16).
fn items_tile(mut data: &[u8]) -> bool {
    while let [hi, lo, rest @ ..] = data {
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        let Some(next) = rest.get(len..) else {
            return false;
        };
        data = next;
    }
    data.is_empty()
}

/// Checks one option and everything nested in it; returns how many options
/// that is (itself included), to compare with what dhcproto decodes.
fn check(opt: &RawOption<'_>, depth: usize) -> Result<usize, ParseError> {
    let bad = || ParseError::BadOption {
        code: opt.code,
        len: opt.data.len(),
    };
    let Some(fixed) = nested_from(opt.code) else {
        return if leaf_ok(opt.code, opt.data) {
            Ok(1)
        } else {
            Err(bad())
        };
    };
    if opt.data.len() < fixed || depth >= MAX_DEPTH {
        return Err(bad());
    }
    let mut n = 1;
    for inner in walk(&opt.data[fixed..], opt.offset + 4 + fixed)? {
        n += check(&inner, depth + 1)?;
    }
    Ok(n)
}

/// How many options dhcproto decoded: this one and all nested in it.
fn count(opt: &DhcpOption) -> usize {
    let nested = match opt {
        DhcpOption::IANA(o) => &o.opts,
        DhcpOption::IATA(o) => &o.opts,
        DhcpOption::IAAddr(o) => &o.opts,
        DhcpOption::IAPD(o) => &o.opts,
        DhcpOption::IAPrefix(o) => &o.opts,
        DhcpOption::VendorOpts(o) => &o.opts,
        _ => return 1,
    };
    1 + nested.iter().map(count).sum::<usize>()
}

fn addresses(opts: &dhcproto::v6::DhcpOptions) -> Vec<Ipv6Addr> {
    opts.iter()
        .filter_map(|o| match o {
            DhcpOption::IAAddr(a) => Some(a.addr),
            _ => None,
        })
        .collect()
}

/// Lossy text of a class item, at most [`MAX_CLASS_CHARS`] characters.
fn class_text(item: &[u8]) -> String {
    String::from_utf8_lossy(item)
        .chars()
        .take(MAX_CLASS_CHARS)
        .collect()
}

impl Request6 {
    fn find<'a, T>(&'a self, f: impl Fn(&'a DhcpOption) -> Option<T>) -> Option<T> {
        self.msg.opts().iter().find_map(f)
    }

    pub fn msg_type(&self) -> MessageType {
        self.msg.msg_type()
    }

    pub fn xid(&self) -> [u8; 3] {
        self.msg.xid()
    }

    /// Option 1: the client's DUID.
    pub fn client_id(&self) -> Option<&[u8]> {
        self.find(|o| match o {
            DhcpOption::ClientId(id) => Some(id.as_slice()),
            _ => None,
        })
    }

    /// Option 2: the server the client chose (Request, Renew, Release…).
    pub fn server_id(&self) -> Option<&[u8]> {
        self.find(|o| match o {
            DhcpOption::ServerId(id) => Some(id.as_slice()),
            _ => None,
        })
    }

    /// Every IA_NA (option 3), with the addresses (option 5) it names.
    pub fn ia_nas(&self) -> Vec<IaNaRequest> {
        self.msg
            .opts()
            .iter()
            .filter_map(|o| match o {
                DhcpOption::IANA(ia) => Some(IaNaRequest {
                    iaid: ia.id,
                    addresses: addresses(&ia.opts),
                }),
                _ => None,
            })
            .collect()
    }

    /// Option 16: the enterprise number and the first vendor-class-data
    /// item as text (empty when there is none).
    pub fn vendor_class(&self) -> Option<(u32, String)> {
        self.find(|o| match o {
            DhcpOption::VendorClass(v) => Some((
                v.num,
                v.data.first().map(|d| class_text(d)).unwrap_or_default(),
            )),
            _ => None,
        })
    }

    /// Option 15: each user-class item as text (iPXE sends `iPXE`).
    pub fn user_classes(&self) -> Vec<String> {
        self.find(|o| match o {
            DhcpOption::UserClass(u) => Some(u.data.iter().map(|d| class_text(d)).collect()),
            _ => None,
        })
        .unwrap_or_default()
    }

    /// Option 61: the client's architecture types, in its order.
    pub fn arch_types(&self) -> Vec<u16> {
        self.find(|o| match o {
            DhcpOption::ClientArchType(types) => Some(types.iter().map(|a| a.0).collect()),
            _ => None,
        })
        .unwrap_or_default()
    }

    /// Option 6 (Option Request): the codes the client asked for.
    pub fn requested(&self) -> Vec<u16> {
        self.find(|o| match o {
            DhcpOption::ORO(oro) => Some(oro.opts.iter().map(|c| u16::from(*c)).collect()),
            _ => None,
        })
        .unwrap_or_default()
    }

    /// Option 14: the client takes a Reply straight to its Solicit.
    pub fn rapid_commit(&self) -> bool {
        self.find(|o| matches!(o, DhcpOption::RapidCommit).then_some(()))
            .is_some()
    }

    /// Option 8 (sent in hundredths of a second), in milliseconds.
    pub fn elapsed_ms(&self) -> Option<u32> {
        self.find(|o| match o {
            DhcpOption::ElapsedTime(cs) => Some(u32::from(*cs) * 10),
            _ => None,
        })
    }

    pub fn relayed(&self) -> bool {
        !self.hops.is_empty()
    }

    /// The relay nearest the client.
    pub fn innermost_hop(&self) -> Option<&Hop> {
        self.hops.last()
    }
}

/// The reply's bytes, wrapped in one Relay-Repl per relay the request came
/// through (innermost first), each echoing its hop's addresses and
/// Interface-ID (RFC 8415 §19.3).
pub fn encode(req: &Request6, reply: &Message) -> Vec<u8> {
    let reply = message_bytes(reply);
    let layer = |inner: Vec<u8>, hop: &Hop| relay_layer(MSG_RELAY_REPL, hop, &inner);
    req.hops.iter().rev().fold(reply, layer)
}

/// One relay layer of `kind` around `inner`, with the hop's Interface-ID.
fn relay_layer(kind: u8, hop: &Hop, inner: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(inner.len() + 64);
    out.extend_from_slice(&[kind, hop.hop_count]);
    out.extend_from_slice(&hop.link_addr.octets());
    out.extend_from_slice(&hop.peer_addr.octets());
    if let Some(id) = &hop.interface_id {
        put_option(&mut out, OPT_INTERFACE_ID, id);
    }
    put_option(&mut out, OPT_RELAY_MSG, inner);
    out
}

/// A message's bytes. dhcproto 0.15 writes the item count as the length of
/// options 15 and 16; those two are written here.
fn message_bytes(msg: &Message) -> Vec<u8> {
    let mut out = vec![u8::from(msg.msg_type())];
    out.extend_from_slice(&msg.xid());
    for opt in msg.opts().iter() {
        match opt {
            DhcpOption::UserClass(u) => put_option(&mut out, OPT_USER_CLASS, &items(&u.data)),
            DhcpOption::VendorClass(v) => {
                let mut data = v.num.to_be_bytes().to_vec();
                data.extend(items(&v.data));
                put_option(&mut out, OPT_VENDOR_CLASS, &data);
            }
            // Only a list longer than 64 KiB fails to encode; none is.
            other => out.extend(other.to_vec().unwrap_or_default()),
        }
    }
    out
}

fn items(data: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for item in data {
        out.extend_from_slice(&(item.len() as u16).to_be_bytes());
        out.extend_from_slice(item);
    }
    out
}

/// Appends one TLV. Replies are this server's own and far below 64 KiB.
fn put_option(out: &mut Vec<u8>, code: u16, data: &[u8]) {
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(data);
}

#[cfg(test)]
#[path = "packet_tests.rs"]
pub(crate) mod tests;
