//! The kernel's IPv6 neighbour table (NDP), read through rtnetlink: the IPv6
//! counterpart of the `/proc/net/arp` read in the binding rule (`/proc` has
//! no IPv6 neighbour file).
//!
//! [`ipv6_neighbours`] sends one `RTM_GETNEIGH` dump request for `AF_INET6` on
//! a fresh `NETLINK_ROUTE` socket and reads the replies up to `NLMSG_DONE`.
//! `request` and `parse` are pure (bytes in, values out) and tested on a real
//! dump captured in a network namespace
//! (`tests/fixtures/netlink/neigh6-dump.bin`); the socket code only moves
//! bytes.
//!
//! Invariants: an entry is evidence only when the kernel holds a resolved
//! link-layer address for it (state REACHABLE, STALE, DELAY, PROBE or
//! PERMANENT; never INCOMPLETE, FAILED or NOARP), on a wanted interface, with
//! a 16-byte unicast IPv6 destination and a link-layer address of exactly six
//! bytes of unicast, non-zero Ethernet. An address is bound to at most one
//! MAC: one that two wanted interfaces name with different MACs (the same
//! link-local address on two links) is no evidence at all. A list of
//! interfaces none of which exists matches nothing, never everything. Only
//! the kernel's datagrams (sender port 0) are read; every length in a reply
//! is checked against the bytes received; a dump is bounded
//! ([`MAX_BYTES`], [`MAX_MESSAGES`], [`RECV_TIMEOUT`] per read).
//!
//! Deliberately absent: a cache (the caller decides how long a table lives,
//! as `binding`'s `Neighbours` does for IPv4) and a retry of a dump the
//! kernel marks interrupted (`NLM_F_DUMP_INTR`: each entry is still one the
//! kernel held; only completeness is in doubt, and a miss is a reread).

use std::collections::HashMap;
use std::io;
use std::net::Ipv6Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::libc;
use nix::sys::socket::{self as sock, sockopt, MsgFlags, NetlinkAddr};
use nix::sys::time::TimeVal;

use crate::domain::MacAddr;

/// The most a dump may read before it is abandoned.
pub const MAX_BYTES: usize = 64 << 20;
/// The most messages a dump may hold: well above the kernel's default
/// `gc_thresh3` (1,024) and the 16,384 large hosts raise it to.
pub const MAX_MESSAGES: usize = 65_536;
/// How long one read waits for the kernel (`SO_RCVTIMEO`).
pub const RECV_TIMEOUT: Duration = Duration::from_secs(1);

/// One read: the kernel fills dump datagrams up to 32 KiB; twice that, and a
/// truncated datagram is still an error rather than a silent loss.
const RECV_BUF: usize = 64 << 10;

const NLMSG_HDRLEN: usize = 16;
const NDMSG_LEN: usize = 12;
const RTA_HDRLEN: usize = 4;

const NLMSG_ERROR: u16 = libc::NLMSG_ERROR as u16;
const NLMSG_DONE: u16 = libc::NLMSG_DONE as u16;
const NLMSG_OVERRUN: u16 = libc::NLMSG_OVERRUN as u16;
const AF_INET6: u8 = libc::AF_INET6 as u8;
/// `NLA_F_NESTED` and `NLA_F_NET_BYTEORDER` are flags, not part of the type.
const NLA_TYPE_MASK: u16 = 0x3fff;
/// `ndm_flags`: a proxy entry names no neighbour.
const NTF_PROXY: u8 = 0x08;

/// States in which the kernel holds a confirmed link-layer address.
const RESOLVED: u16 =
    libc::NUD_REACHABLE | libc::NUD_STALE | libc::NUD_DELAY | libc::NUD_PROBE | libc::NUD_PERMANENT;
/// States that are never evidence, even combined with a resolved one.
const UNRESOLVED: u16 = libc::NUD_INCOMPLETE | libc::NUD_FAILED | libc::NUD_NOARP;

/// The neighbours the kernel has resolved on `interfaces` (every interface
/// when empty; names that do not exist are skipped), IPv6 address → MAC.
pub fn ipv6_neighbours(interfaces: &[String]) -> io::Result<HashMap<Ipv6Addr, MacAddr>> {
    let indices = resolve(interfaces);
    if indices.as_ref().is_some_and(Vec::is_empty) {
        return Ok(HashMap::new());
    }
    let wanted = |ifindex: u32| indices.as_ref().is_none_or(|v| v.contains(&ifindex));
    let mut seen = Seen::new();
    dump(&wanted, &mut seen)?;
    Ok(seen
        .into_iter()
        .filter_map(|(ip, mac)| Some((ip, mac?)))
        .collect())
}

/// The interface indices of `interfaces`; `None` (every one) when empty.
fn resolve(interfaces: &[String]) -> Option<Vec<u32>> {
    (!interfaces.is_empty()).then(|| {
        interfaces
            .iter()
            .filter_map(|name| nix::net::if_::if_nametoindex(name.as_str()).ok())
            .collect()
    })
}

/// What a dump has named so far: `None` when wanted interfaces disagree on
/// the MAC at an address.
type Seen = HashMap<Ipv6Addr, Option<MacAddr>>;

/// How far `parse` got through one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Progress {
    /// Netlink messages read, up to and including `NLMSG_DONE`.
    messages: usize,
    /// `NLMSG_DONE` (or an acknowledgement) ended the dump.
    done: bool,
}

/// Why a reply could not be read; offsets count from the datagram's start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum ParseError {
    #[error("netlink message at byte {at}: {left} bytes left, a header needs 16")]
    ShortHeader { at: usize, left: usize },
    #[error("netlink message at byte {at}: length {len} is outside 16..={left}")]
    BadLength { at: usize, len: usize, left: usize },
    #[error("NLMSG_ERROR at byte {at}: {len} bytes, an errno needs 4")]
    ShortError { at: usize, len: usize },
    #[error("RTM_NEWNEIGH at byte {at}: {len} bytes, an ndmsg needs 12")]
    ShortNdmsg { at: usize, len: usize },
    #[error("neighbour attribute at byte {at}: length {len} is outside 4..={left}")]
    BadAttribute { at: usize, len: usize, left: usize },
    #[error("the kernel reported an overrun")]
    Overrun,
    #[error("the kernel refused the neighbour dump: errno {0}")]
    Kernel(i32),
}

impl From<ParseError> for io::Error {
    fn from(e: ParseError) -> Self {
        match e {
            ParseError::Kernel(errno) => io::Error::from_raw_os_error(errno),
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// An `RTM_GETNEIGH` dump request for every IPv6 neighbour: `nlmsghdr` then
/// `ndmsg` (family `AF_INET6`, no interface, state or flags), host order.
fn request(seq: u32) -> Vec<u8> {
    let len = (NLMSG_HDRLEN + NDMSG_LEN) as u32;
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    let mut out = Vec::with_capacity(len as usize);
    out.extend(len.to_ne_bytes());
    out.extend(libc::RTM_GETNEIGH.to_ne_bytes());
    out.extend(flags.to_ne_bytes());
    out.extend(seq.to_ne_bytes());
    out.extend(0u32.to_ne_bytes()); // port id: the kernel fills it in
    out.extend([AF_INET6, 0, 0, 0]); // ndm_family, padding
    out.extend(0i32.to_ne_bytes()); // ndm_ifindex
    out.extend(0u16.to_ne_bytes()); // ndm_state
    out.extend([0, 0]); // ndm_flags, ndm_type
    out
}

/// Reads one datagram of a dump into `out`, keeping neighbours on interfaces
/// `wanted` says yes to. Stops at `NLMSG_DONE`; a kernel error or any length
/// that does not fit the buffer is an error.
fn parse(buf: &[u8], wanted: &dyn Fn(u32) -> bool, out: &mut Seen) -> Result<Progress, ParseError> {
    let mut progress = Progress {
        messages: 0,
        done: false,
    };
    let mut at = 0;
    while at < buf.len() {
        let message = message(buf, at)?;
        progress.messages += 1;
        match message.kind {
            NLMSG_DONE => progress.done = true,
            NLMSG_ERROR => progress.done = acknowledged(message.payload, at)?,
            NLMSG_OVERRUN => return Err(ParseError::Overrun),
            libc::RTM_NEWNEIGH => {
                if let Some(n) = neighbour(message.payload, at + NLMSG_HDRLEN)? {
                    if wanted(n.ifindex) {
                        record(out, n.ip, n.mac);
                    }
                }
            }
            _ => {} // NLMSG_NOOP, or a type this dump does not ask for
        }
        if progress.done {
            break;
        }
        at = message.next;
    }
    Ok(progress)
}

/// One netlink message inside a datagram.
struct Message<'a> {
    kind: u16,
    /// What follows the header, up to `nlmsg_len`.
    payload: &'a [u8],
    /// Where the next message starts (the end when the last one's padding
    /// is missing).
    next: usize,
}

fn message(buf: &[u8], at: usize) -> Result<Message<'_>, ParseError> {
    let rest = &buf[at..];
    let Some(header) = rest.first_chunk::<NLMSG_HDRLEN>() else {
        return Err(ParseError::ShortHeader {
            at,
            left: rest.len(),
        });
    };
    let len = u32::from_ne_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len < NLMSG_HDRLEN || len > rest.len() {
        return Err(ParseError::BadLength {
            at,
            len,
            left: rest.len(),
        });
    }
    Ok(Message {
        kind: u16::from_ne_bytes([header[4], header[5]]),
        payload: &rest[NLMSG_HDRLEN..len],
        next: (at + align4(len)).min(buf.len()),
    })
}

/// `NLMSG_ERROR`: errno 0 is an acknowledgement (the request is over); any
/// other is the kernel's refusal.
fn acknowledged(payload: &[u8], at: usize) -> Result<bool, ParseError> {
    let Some(errno) = payload.first_chunk::<4>() else {
        return Err(ParseError::ShortError {
            at,
            len: payload.len(),
        });
    };
    match i32::from_ne_bytes(*errno) {
        0 => Ok(true),
        negative => Err(ParseError::Kernel(negative.saturating_neg())),
    }
}

/// A neighbour entry that is evidence (see the module's invariants), before
/// the interface filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Neighbour {
    ifindex: u32,
    ip: Ipv6Addr,
    mac: MacAddr,
}

/// Reads an `RTM_NEWNEIGH` payload (`ndmsg`, then attributes) that starts at
/// byte `at`; `None` when the entry is not evidence.
fn neighbour(payload: &[u8], at: usize) -> Result<Option<Neighbour>, ParseError> {
    let Some(nd) = payload.first_chunk::<NDMSG_LEN>() else {
        return Err(ParseError::ShortNdmsg {
            at,
            len: payload.len(),
        });
    };
    let family = nd[0];
    let ifindex = u32::from_ne_bytes([nd[4], nd[5], nd[6], nd[7]]);
    let state = u16::from_ne_bytes([nd[8], nd[9]]);
    let flags = nd[10];
    let found = addresses(&payload[NDMSG_LEN..], at + NDMSG_LEN)?;
    let usable = family == AF_INET6 && resolved(state) && flags & NTF_PROXY == 0;
    Ok(usable
        .then(|| evidence(found.dst?, found.lladdr?))
        .flatten()
        .map(|(ip, mac)| Neighbour { ifindex, ip, mac }))
}

fn resolved(state: u16) -> bool {
    state & RESOLVED != 0 && state & UNRESOLVED == 0
}

/// The first `NDA_DST` and `NDA_LLADDR` of an entry, as sent.
#[derive(Debug, Default, Clone, Copy)]
struct Addresses<'a> {
    dst: Option<&'a [u8]>,
    lladdr: Option<&'a [u8]>,
}

/// Walks the attributes in `attrs` (which start at byte `at`), every length
/// checked.
fn addresses(mut attrs: &[u8], mut at: usize) -> Result<Addresses<'_>, ParseError> {
    let mut found = Addresses::default();
    while !attrs.is_empty() {
        let bad = |len| ParseError::BadAttribute {
            at,
            len,
            left: attrs.len(),
        };
        let Some(header) = attrs.first_chunk::<RTA_HDRLEN>() else {
            return Err(bad(attrs.len()));
        };
        let len = usize::from(u16::from_ne_bytes([header[0], header[1]]));
        if len < RTA_HDRLEN || len > attrs.len() {
            return Err(bad(len));
        }
        let value = &attrs[RTA_HDRLEN..len];
        match u16::from_ne_bytes([header[2], header[3]]) & NLA_TYPE_MASK {
            libc::NDA_DST => found.dst = found.dst.or(Some(value)),
            libc::NDA_LLADDR => found.lladdr = found.lladdr.or(Some(value)),
            _ => {}
        }
        let step = align4(len).min(attrs.len());
        attrs = &attrs[step..];
        at += step;
    }
    Ok(found)
}

/// A unicast IPv6 address at a unicast Ethernet address, or nothing.
fn evidence(dst: &[u8], lladdr: &[u8]) -> Option<(Ipv6Addr, MacAddr)> {
    let ip = Ipv6Addr::from(<[u8; 16]>::try_from(dst).ok()?);
    let mac = MacAddr(<[u8; 6]>::try_from(lladdr).ok()?);
    let unicast_ip = !(ip.is_multicast() || ip.is_unspecified() || ip.is_loopback());
    let unicast_mac = mac.0[0] & 0x01 == 0 && mac.0 != [0; 6];
    (unicast_ip && unicast_mac).then_some((ip, mac))
}

/// Adds one neighbour; a second, different MAC for the address voids it.
fn record(out: &mut Seen, ip: Ipv6Addr, mac: MacAddr) {
    out.entry(ip)
        .and_modify(|seen| {
            if *seen != Some(mac) {
                *seen = None;
            }
        })
        .or_insert(Some(mac));
}

// --- The kernel -------------------------------------------------------------

/// Runs one dump to its end, within the bounds.
fn dump(wanted: &dyn Fn(u32) -> bool, seen: &mut Seen) -> io::Result<()> {
    let fd = open()?;
    sock::send(fd.as_raw_fd(), &request(1), MsgFlags::empty())?;
    let mut buf = vec![0u8; RECV_BUF];
    let (mut bytes, mut messages) = (0usize, 0usize);
    loop {
        let (n, from_kernel) = receive(&fd, &mut buf)?;
        bytes += n;
        if from_kernel {
            let progress = parse(&buf[..n], wanted, seen)?;
            if progress.done {
                return Ok(());
            }
            messages += progress.messages;
        }
        if bytes > MAX_BYTES || messages > MAX_MESSAGES {
            return Err(io::Error::other(format!(
                "the IPv6 neighbour dump passed {messages} messages or {bytes} bytes without ending"
            )));
        }
    }
}

/// A `NETLINK_ROUTE` socket with a port of its own and [`RECV_TIMEOUT`].
fn open() -> io::Result<OwnedFd> {
    let fd = sock::socket(
        sock::AddressFamily::Netlink,
        sock::SockType::Raw,
        sock::SockFlag::SOCK_CLOEXEC,
        sock::SockProtocol::NetlinkRoute,
    )?;
    sock::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
    let timeout = TimeVal::new(RECV_TIMEOUT.as_secs() as libc::time_t, 0);
    sock::setsockopt(&fd, sockopt::ReceiveTimeout, &timeout)?;
    Ok(fd)
}

/// One datagram: its length and whether the kernel sent it. A timeout, a
/// truncated datagram or an empty one is an error.
fn receive(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<(usize, bool)> {
    loop {
        let mut iov = [io::IoSliceMut::new(buf)];
        match sock::recvmsg::<NetlinkAddr>(fd.as_raw_fd(), &mut iov, None, MsgFlags::empty()) {
            Ok(msg) if msg.flags.contains(MsgFlags::MSG_TRUNC) => {
                return Err(io::Error::other("a netlink datagram larger than 64 KiB"));
            }
            Ok(msg) if msg.bytes == 0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "an empty netlink datagram",
                ));
            }
            Ok(msg) => return Ok((msg.bytes, msg.address.is_some_and(|a| a.pid() == 0))),
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no netlink reply within 1 s",
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One `RTM_GETNEIGH` AF_INET6 dump, the kernel's datagrams as received
    /// (x86_64, Linux 6.18), from a namespace made for it: veths v1
    /// (ifindex 2) and v0 (3) in one namespace, v2 (5) with its peer in a
    /// second one; entries added with `ip -6 neigh add ... nud <state>`, plus
    /// the multicast NOARP entries the kernel made itself and
    /// 2001:db8:2::2, learned by NDP (a UDP datagram sent to it over v2).
    const DUMP: &[u8] = include_bytes!("../tests/fixtures/netlink/neigh6-dump.bin");

    fn mac(s: &str) -> MacAddr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn table(buf: &[u8], wanted: &dyn Fn(u32) -> bool) -> (Progress, HashMap<Ipv6Addr, MacAddr>) {
        let mut seen = Seen::new();
        let progress = parse(buf, wanted, &mut seen).expect("parses");
        let table = seen
            .into_iter()
            .filter_map(|(ip, mac)| Some((ip, mac?)))
            .collect();
        (progress, table)
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn the_request_is_an_ipv6_neighbour_dump() {
        let expected: [u8; 28] = [
            28, 0, 0, 0, // nlmsg_len
            30, 0, // RTM_GETNEIGH
            0x01, 0x03, // NLM_F_REQUEST | NLM_F_DUMP
            7, 0, 0, 0, // seq
            0, 0, 0, 0, // port id
            10, 0, 0, 0, // AF_INET6, padding
            0, 0, 0, 0, // ndm_ifindex
            0, 0, 0, 0, // ndm_state, ndm_flags, ndm_type
        ];
        assert_eq!(request(7), expected);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn a_real_dump_keeps_resolved_unicast_neighbours() {
        let (progress, got) = table(DUMP, &|_| true);
        assert_eq!(
            progress,
            Progress {
                messages: 30,
                done: true
            }
        );
        // Dropped: NOARP (2001:db8::6 and every ff02:: entry), FAILED (::5,
        // ::b, ::c), INCOMPLETE (::3), NONE (::e), a PERMANENT multicast
        // destination (ff02::1:2), a multicast MAC (::8), the zero MAC (::d),
        // and ::9, which v0 and v1 name with different MACs.
        let expected = HashMap::from([
            (ip("fe80::5054:ff:fe00:1"), mac("52:54:00:00:00:01")), // PERMANENT
            (ip("2001:db8::2"), mac("52:54:00:00:00:02")),          // STALE
            (ip("2001:db8::4"), mac("52:54:00:00:00:04")),          // REACHABLE
            (ip("2001:db8::7"), mac("52:54:00:00:00:07")),          // PERMANENT, v1
            (ip("2001:db8::a"), mac("52:54:00:00:00:0a")),          // PROBE
            (ip("2001:db8:2::2"), mac("52:54:00:dd:00:00")),        // REACHABLE, learned
        ]);
        assert_eq!(got, expected);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn a_real_dump_keeps_only_wanted_interfaces() {
        let (_, got) = table(DUMP, &|ifindex| ifindex == 3); // v0
        let expected = HashMap::from([
            (ip("fe80::5054:ff:fe00:1"), mac("52:54:00:00:00:01")),
            (ip("2001:db8::2"), mac("52:54:00:00:00:02")),
            (ip("2001:db8::4"), mac("52:54:00:00:00:04")),
            (ip("2001:db8::9"), mac("52:54:00:00:00:09")), // v1's ::9 not asked
            (ip("2001:db8::a"), mac("52:54:00:00:00:0a")),
        ]);
        assert_eq!(got, expected);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn a_dump_split_across_datagrams_ends_only_at_done() {
        let done_at = DUMP.len() - 20; // the NLMSG_DONE message
        let mut seen = Seen::new();
        let first = parse(&DUMP[..done_at], &|_| true, &mut seen).unwrap();
        assert_eq!((first.messages, first.done), (29, false));
        let last = parse(&DUMP[done_at..], &|_| true, &mut seen).unwrap();
        assert_eq!((last.messages, last.done), (1, true));
        assert_eq!(seen.values().filter(|m| m.is_some()).count(), 6);
    }

    /// A netlink message of `kind` around `payload`, padded.
    fn nlmsg(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
        out.extend(kind.to_ne_bytes());
        out.extend([0u8; 10]);
        out.extend(payload);
        out.resize(align4(out.len()), 0);
        out
    }

    fn rta(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(((RTA_HDRLEN + value.len()) as u16).to_ne_bytes());
        out.extend(kind.to_ne_bytes());
        out.extend(value);
        out.resize(align4(out.len()), 0);
        out
    }

    fn ndmsg(family: u8, ifindex: u32, state: u16, flags: u8, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut out = vec![family, 0, 0, 0];
        out.extend(ifindex.to_ne_bytes());
        out.extend(state.to_ne_bytes());
        out.extend([flags, 1]);
        out.extend(attrs.concat());
        out
    }

    const DST: [u8; 16] = [
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x42,
    ];
    const LLADDR: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x42];

    /// Name, `ndm_family`, `ndm_state`, `ndm_flags`, attributes, kept.
    type Case = (&'static str, u8, u16, u8, Vec<Vec<u8>>, bool);

    #[test]
    fn hand_built_entries_are_evidence_only_when_complete() {
        use libc::{
            NDA_DST, NDA_LLADDR, NUD_DELAY, NUD_FAILED, NUD_NONE, NUD_PERMANENT, NUD_STALE,
        };
        let dst = || rta(NDA_DST, &DST);
        let ll = || rta(NDA_LLADDR, &LLADDR);
        let v6 = AF_INET6;
        let v4 = libc::AF_INET as u8;
        #[rustfmt::skip]
        let cases: &[Case] = &[
            // name                   family state                   flags      attributes                                  kept
            ("delay",                 v6, NUD_DELAY,                 0,         vec![dst(), ll()],                          true),
            ("flag bits on a type",   v6, NUD_STALE,                 0,         vec![rta(NDA_DST | 0x8000, &DST), ll()],    true),
            ("lladdr first",          v6, NUD_STALE,                 0,         vec![ll(), dst()],                          true),
            ("no lladdr",             v6, NUD_STALE,                 0,         vec![dst()],                                false),
            ("no dst",                v6, NUD_STALE,                 0,         vec![ll()],                                 false),
            ("8-byte lladdr",         v6, NUD_STALE,                 0,         vec![dst(), rta(NDA_LLADDR, &[0x52; 8])],   false),
            ("4-byte dst",            v6, NUD_STALE,                 0,         vec![rta(NDA_DST, &[10, 0, 0, 1]), ll()],   false),
            ("AF_INET",               v4, NUD_STALE,                 0,         vec![dst(), ll()],                          false),
            ("proxy",                 v6, NUD_PERMANENT,             NTF_PROXY, vec![dst(), ll()],                          false),
            ("stale and failed",      v6, NUD_STALE | NUD_FAILED,    0,         vec![dst(), ll()],                          false),
            ("none",                  v6, NUD_NONE,                  0,         vec![dst(), ll()],                          false),
        ];
        for (name, family, state, flags, attrs, kept) in cases {
            let payload = ndmsg(*family, 3, *state, *flags, attrs);
            let (_, got) = table(&nlmsg(libc::RTM_NEWNEIGH, &payload), &|_| true);
            assert_eq!(got.len(), usize::from(*kept), "{name}");
        }
    }

    #[test]
    fn one_mac_on_two_interfaces_is_kept_and_two_macs_are_not() {
        let attrs = |mac: [u8; 6]| vec![rta(libc::NDA_DST, &DST), rta(libc::NDA_LLADDR, &mac)];
        let on = |ifindex, mac| {
            nlmsg(
                libc::RTM_NEWNEIGH,
                &ndmsg(AF_INET6, ifindex, libc::NUD_STALE, 0, &attrs(mac)),
            )
        };
        let same = [on(2, LLADDR), on(3, LLADDR)].concat();
        assert_eq!(table(&same, &|_| true).1.len(), 1);
        let other = [
            on(2, LLADDR),
            on(3, [0x52, 0x54, 0, 0, 0, 0x43]),
            on(4, LLADDR),
        ]
        .concat();
        assert!(table(&other, &|_| true).1.is_empty());
        assert_eq!(table(&other, &|i| i == 4).1.len(), 1);
    }

    #[test]
    fn malformed_replies_are_errors() {
        let entry = ndmsg(AF_INET6, 3, libc::NUD_STALE, 0, &[rta(libc::NDA_DST, &DST)]);
        let mut long = nlmsg(libc::RTM_NEWNEIGH, &entry);
        long[..4].copy_from_slice(&200u32.to_ne_bytes());
        let mut trailing = nlmsg(libc::RTM_NEWNEIGH, &entry);
        trailing.extend([1, 2, 3, 4, 5]);
        let mut short_attr = entry.clone();
        short_attr.extend([2, 0]);
        let mut tiny_attr = entry.clone();
        tiny_attr.extend([2, 0, 1, 0]);
        let mut huge_attr = entry.clone();
        huge_attr.extend([200, 0, 1, 0]);
        let eperm = (-libc::EPERM).to_ne_bytes();
        let mut below = nlmsg(0x1, &[]);
        below[..4].copy_from_slice(&8u32.to_ne_bytes());
        #[rustfmt::skip]
        let cases: &[(&str, Vec<u8>, ParseError)] = &[
            ("3 bytes", vec![1, 2, 3], ParseError::ShortHeader { at: 0, left: 3 }),
            ("length below the header", below, ParseError::BadLength { at: 0, len: 8, left: 16 }),
            ("length past the buffer", long, ParseError::BadLength { at: 0, len: 200, left: 48 }),
            ("trailing bytes", trailing, ParseError::ShortHeader { at: 48, left: 5 }),
            ("short ndmsg", nlmsg(libc::RTM_NEWNEIGH, &[10, 0, 0, 0]), ParseError::ShortNdmsg { at: 16, len: 4 }),
            ("attribute header cut", nlmsg(libc::RTM_NEWNEIGH, &short_attr), ParseError::BadAttribute { at: 48, len: 2, left: 2 }),
            ("attribute below its header", nlmsg(libc::RTM_NEWNEIGH, &tiny_attr), ParseError::BadAttribute { at: 48, len: 2, left: 4 }),
            ("attribute past the message", nlmsg(libc::RTM_NEWNEIGH, &huge_attr), ParseError::BadAttribute { at: 48, len: 200, left: 4 }),
            ("short NLMSG_ERROR", nlmsg(NLMSG_ERROR, &[0, 0]), ParseError::ShortError { at: 0, len: 2 }),
            ("kernel refusal", nlmsg(NLMSG_ERROR, &eperm), ParseError::Kernel(libc::EPERM)),
            ("overrun", nlmsg(NLMSG_OVERRUN, &[]), ParseError::Overrun),
        ];
        for (name, buf, expected) in cases {
            let got = parse(buf, &|_| true, &mut Seen::new());
            assert_eq!(got.as_ref(), Err(expected), "{name}");
        }
    }

    #[test]
    fn an_acknowledgement_ends_the_dump() {
        let (progress, _) = table(&nlmsg(NLMSG_ERROR, &[0; 20]), &|_| true);
        assert!(progress.done);
    }

    #[test]
    fn cut_or_corrupted_dumps_never_panic() {
        for end in 0..DUMP.len() {
            let _ = parse(&DUMP[..end], &|_| true, &mut Seen::new());
        }
        for i in 0..DUMP.len() {
            for byte in [0x00, 0x01, 0x7f, 0xff] {
                let mut bad = DUMP.to_vec();
                bad[i] = byte;
                let _ = parse(&bad, &|_| true, &mut Seen::new());
            }
        }
    }

    #[test]
    fn interfaces_that_do_not_exist_match_nothing() {
        let absent = vec!["ib-no-such-if0".to_string()];
        assert_eq!(resolve(&absent), Some(vec![]));
        assert_eq!(resolve(&[]), None);
        assert!(ipv6_neighbours(&absent).unwrap().is_empty());
    }

    /// The live table, where netlink is available: the request is one the
    /// kernel accepts and its reply parses.
    #[test]
    fn the_live_table_reads() {
        match ipv6_neighbours(&[]) {
            Ok(_) => {}
            Err(e) if netlink_unavailable(&e) => eprintln!("skipped: no rtnetlink here: {e}"),
            Err(e) => panic!("reading the IPv6 neighbour table: {e}"),
        }
    }

    fn netlink_unavailable(e: &io::Error) -> bool {
        matches!(
            e.raw_os_error(),
            Some(libc::EAFNOSUPPORT | libc::EPROTONOSUPPORT | libc::EPERM | libc::EACCES)
        )
    }
}
