//! A DHCPv6 client for the loopback tests: messages as real firmware sends
//! them (OVMF PXEv6 and HTTPv6, iPXE), built with dhcproto, sent over
//! `[::1]`, optionally wrapped in a RELAY-FORW as a relay agent would.

use std::net::{Ipv6Addr, SocketAddr};
use std::time::Duration;

use dhcproto::v6::{
    Architecture, DhcpOption, IAAddr, Message, MessageType, OptionCode, UserClass, VendorClass,
    IANA, ORO,
};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use tokio::net::UdpSocket;

pub struct Client6 {
    socket: UdpSocket,
    server: SocketAddr,
}

/// A DUID-LLT (type 1, Ethernet) holding `mac`, as OVMF sends.
pub fn duid_llt(mac: [u8; 6]) -> Vec<u8> {
    [&[0, 1, 0, 1, 0x2c, 0x5e, 0x10, 0x00][..], &mac].concat()
}

/// The all-zero DUID-UUID every iPXE under QEMU without `-uuid` sends.
pub fn duid_uuid_zero() -> Vec<u8> {
    [&[0, 4][..], &[0u8; 16]].concat()
}

/// The EUI-64 link-local address of `mac`.
pub fn link_local(mac: [u8; 6]) -> Ipv6Addr {
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        mac[0] ^ 0x02,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ])
}

pub fn mac(n: u8) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x66, 0x00, n]
}

/// What kind of firmware a message comes from.
#[derive(Debug, Clone, Copy)]
pub enum Firmware {
    /// OVMF's PXEv6: arch 7, `PXEClient:Arch:00007:UNDI:003000`.
    OvmfPxe,
    /// OVMF's HTTPv6: arch 16, `HTTPClient:Arch:00016:UNDI:003000`.
    OvmfHttp,
    /// iPXE (EFI): user class `iPXE`, `PXEClient:Arch:00007:UNDI:003010`.
    Ipxe,
    /// An operating system's DHCPv6 client: nothing about booting.
    Os,
}

/// A client message of `kind` from `firmware` with `duid` and one IA_NA per
/// `(iaid, address)` (address: the one it asks for).
pub fn message(
    kind: MessageType,
    firmware: Firmware,
    duid: &[u8],
    ias: &[(u32, Option<Ipv6Addr>)],
) -> Message {
    let mut m = Message::new_with_id(kind, [0x12, 0x34, 0x56]);
    let opts = m.opts_mut();
    opts.insert(DhcpOption::ClientId(duid.to_vec()));
    opts.insert(DhcpOption::ElapsedTime(0));
    for (iaid, addr) in ias {
        let mut ia = IANA {
            id: *iaid,
            t1: 0,
            t2: 0,
            opts: Default::default(),
        };
        if let Some(addr) = addr {
            ia.opts.insert(DhcpOption::IAAddr(IAAddr {
                addr: *addr,
                preferred_life: 0,
                valid_life: 0,
                opts: Default::default(),
            }));
        }
        opts.insert(DhcpOption::IANA(ia));
    }
    let vendor = |text: &str| {
        DhcpOption::VendorClass(VendorClass {
            num: 343,
            data: vec![text.as_bytes().to_vec()],
        })
    };
    match firmware {
        Firmware::OvmfPxe => {
            opts.insert(DhcpOption::ClientArchType(vec![Architecture(7)]));
            opts.insert(vendor("PXEClient:Arch:00007:UNDI:003000"));
        }
        Firmware::OvmfHttp => {
            opts.insert(DhcpOption::ClientArchType(vec![Architecture(16)]));
            opts.insert(vendor("HTTPClient:Arch:00016:UNDI:003000"));
        }
        Firmware::Ipxe => {
            opts.insert(DhcpOption::UserClass(UserClass {
                data: vec![b"iPXE".to_vec()],
            }));
            opts.insert(vendor("PXEClient:Arch:00007:UNDI:003010"));
        }
        Firmware::Os => {}
    }
    opts.insert(DhcpOption::ORO(ORO {
        opts: vec![
            OptionCode::from(59),
            OptionCode::from(60),
            OptionCode::DomainNameServers,
            OptionCode::VendorClass,
        ],
    }));
    m
}

/// The message's bytes. Options 15 and 16 are written here: dhcproto 0.15
/// writes their item count where the length of each item belongs.
pub fn encode(m: &Message) -> Vec<u8> {
    let mut plain = m.clone();
    let user = plain.opts_mut().remove(OptionCode::UserClass);
    let vendor = plain.opts_mut().remove(OptionCode::VendorClass);
    let mut out = Vec::new();
    plain.encode(&mut Encoder::new(&mut out)).unwrap();
    let items = |data: &[Vec<u8>]| -> Vec<u8> {
        data.iter()
            .flat_map(|d| [&(d.len() as u16).to_be_bytes()[..], d].concat())
            .collect()
    };
    let mut option = |code: u16, body: Vec<u8>| {
        out.extend_from_slice(&code.to_be_bytes());
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(&body);
    };
    if let Some(DhcpOption::UserClass(u)) = user {
        option(15, items(&u.data));
    }
    if let Some(DhcpOption::VendorClass(v)) = vendor {
        option(16, [&v.num.to_be_bytes()[..], &items(&v.data)].concat());
    }
    out
}

pub fn decode(bytes: &[u8]) -> Message {
    Message::decode(&mut Decoder::new(bytes)).expect("a DHCPv6 message")
}

/// `inner` wrapped in a RELAY-FORW from a relay on link `link`, for a client
/// at `peer`, with option 79 (the client's MAC) when given.
pub fn relay_forw(inner: &[u8], link: Ipv6Addr, peer: Ipv6Addr, opt79: Option<[u8; 6]>) -> Vec<u8> {
    let mut out = vec![12, 0];
    out.extend_from_slice(&link.octets());
    out.extend_from_slice(&peer.octets());
    out.extend_from_slice(&18u16.to_be_bytes()); // Interface-ID
    out.extend_from_slice(&4u16.to_be_bytes());
    out.extend_from_slice(b"swp7");
    if let Some(mac) = opt79 {
        out.extend_from_slice(&79u16.to_be_bytes());
        out.extend_from_slice(&8u16.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&mac);
    }
    out.extend_from_slice(&9u16.to_be_bytes());
    out.extend_from_slice(&(inner.len() as u16).to_be_bytes());
    out.extend_from_slice(inner);
    out
}

/// The options of a RELAY-REPL (after its 34-byte header), by code.
pub fn relay_options(bytes: &[u8]) -> Vec<(u16, Vec<u8>)> {
    assert_eq!(bytes[0], 13, "a RELAY-REPL");
    let mut rest = &bytes[34..];
    let mut out = Vec::new();
    while rest.len() >= 4 {
        let code = u16::from_be_bytes([rest[0], rest[1]]);
        let len = u16::from_be_bytes([rest[2], rest[3]]) as usize;
        out.push((code, rest[4..4 + len].to_vec()));
        rest = &rest[4 + len..];
    }
    out
}

impl Client6 {
    pub async fn new(server: SocketAddr) -> Self {
        let socket = UdpSocket::bind("[::1]:0").await.unwrap();
        Self { socket, server }
    }

    /// Sends `bytes`; returns the answer's bytes within `wait`, if any.
    pub async fn exchange_bytes(&self, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
        self.socket.send_to(bytes, self.server).await.unwrap();
        let mut buf = vec![0u8; 4096];
        match tokio::time::timeout(wait, self.socket.recv_from(&mut buf)).await {
            Ok(Ok((n, _))) => Some(buf[..n].to_vec()),
            _ => None,
        }
    }

    pub async fn exchange(&self, m: &Message) -> Option<Message> {
        self.exchange_bytes(&encode(m), Duration::from_secs(2))
            .await
            .map(|b| decode(&b))
    }
}

/// The addresses of every IA_NA in `m`, by IAID.
pub fn addresses(m: &Message) -> Vec<(u32, Ipv6Addr)> {
    let mut out = Vec::new();
    for opt in m.opts().iter() {
        if let DhcpOption::IANA(ia) = opt {
            for inner in ia.opts.iter() {
                if let DhcpOption::IAAddr(a) = inner {
                    if a.valid_life > 0 {
                        out.push((ia.id, a.addr));
                    }
                }
            }
        }
    }
    out
}

/// The status code inside each IA_NA, by IAID.
pub fn ia_statuses(m: &Message) -> Vec<(u32, dhcproto::v6::Status)> {
    let mut out = Vec::new();
    for opt in m.opts().iter() {
        if let DhcpOption::IANA(ia) = opt {
            for inner in ia.opts.iter() {
                if let DhcpOption::StatusCode(s) = inner {
                    out.push((ia.id, s.status));
                }
            }
        }
    }
    out
}

/// Option 59, the boot file URL.
pub fn bootfile_url(m: &Message) -> Option<String> {
    m.opts().iter().find_map(|o| match o {
        DhcpOption::Unknown(u) if u16::from(u.code()) == 59 => {
            Some(String::from_utf8_lossy(u.data()).into_owned())
        }
        _ => None,
    })
}

/// Option 16's first data item, if the reply has one.
pub fn vendor_class(m: &Message) -> Option<String> {
    m.opts().iter().find_map(|o| match o {
        DhcpOption::VendorClass(v) => v
            .data
            .first()
            .map(|d| String::from_utf8_lossy(d).into_owned()),
        _ => None,
    })
}

pub fn server_id(m: &Message) -> Vec<u8> {
    m.opts()
        .iter()
        .find_map(|o| match o {
            DhcpOption::ServerId(id) => Some(id.clone()),
            _ => None,
        })
        .expect("a server identifier")
}

pub fn preference(m: &Message) -> Option<u8> {
    m.opts().iter().find_map(|o| match o {
        DhcpOption::Preference(p) => Some(*p),
        _ => None,
    })
}
