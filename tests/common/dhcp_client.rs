//! A DHCP client for tests, built from dhcproto. It plays a relay agent
//! (sets `giaddr` to its own loopback address), so the server's replies come
//! back to it by unicast and no broadcast is ever needed.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode, UnknownOption};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use tokio::net::UdpSocket;

pub struct Relay {
    pub sock: UdpSocket,
    pub server: SocketAddr,
    pub giaddr: Ipv4Addr,
}

impl Relay {
    /// A relay on `giaddr` (a 127.x address) talking to `server`.
    pub async fn new(giaddr: Ipv4Addr, server: SocketAddr) -> Self {
        let sock = UdpSocket::bind((giaddr, 0)).await.unwrap();
        Self {
            sock,
            server,
            giaddr,
        }
    }

    pub async fn send(&self, msg: &Message) {
        self.send_raw(&encode(msg)).await;
    }

    pub async fn send_raw(&self, bytes: &[u8]) {
        self.sock.send_to(bytes, self.server).await.unwrap();
    }

    /// Sends and waits up to 2 s for the reply to this xid.
    pub async fn exchange(&self, msg: &Message) -> Option<Message> {
        self.send(msg).await;
        self.recv(msg.xid(), Duration::from_secs(2)).await
    }

    pub async fn recv(&self, xid: u32, wait: Duration) -> Option<Message> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut buf = vec![0u8; 1500];
        loop {
            let left = deadline.checked_duration_since(tokio::time::Instant::now())?;
            let (n, _) = tokio::time::timeout(left, self.sock.recv_from(&mut buf))
                .await
                .ok()?
                .ok()?;
            assert!(n >= 300, "replies are padded to 300 bytes, got {n}");
            let m = Message::decode(&mut Decoder::new(&buf[..n])).expect("server sends valid DHCP");
            if m.xid() == xid {
                return Some(m);
            }
        }
    }

    /// Returns the raw bytes of the next reply (for option-level checks).
    pub async fn exchange_raw(&self, msg: &Message) -> Option<Vec<u8>> {
        self.exchange_bytes(&encode(msg)).await
    }

    pub async fn exchange_bytes(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        self.send_raw(bytes).await;
        let mut buf = vec![0u8; 1500];
        let (n, _) = tokio::time::timeout(Duration::from_secs(2), self.sock.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        Some(buf[..n].to_vec())
    }
}

/// Encodes `msg` and appends raw option bytes before END (dhcproto encodes
/// an unknown option 82 twice, so relay info is added this way).
pub fn encode_with_raw(msg: &Message, raw_options: &[u8]) -> Vec<u8> {
    let mut bytes = encode(msg);
    let end = bytes.iter().rposition(|b| *b == 255).expect("END present");
    bytes.splice(end..end, raw_options.iter().copied());
    bytes
}

pub fn encode(msg: &Message) -> Vec<u8> {
    let mut buf = Vec::new();
    msg.encode(&mut Encoder::new(&mut buf)).unwrap();
    buf
}

pub fn mac(n: u8) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0xaa, 0x00, n]
}

/// What kind of client to impersonate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    BiosPxe,
    UefiPxe,
    HttpBoot,
    Ipxe,
    /// An OS's DHCP client: no PXE options at all.
    Plain,
}

pub fn message(
    kind: Client,
    msg_type: MessageType,
    mac: [u8; 6],
    xid: u32,
    giaddr: Ipv4Addr,
) -> Message {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootRequest)
        .set_xid(xid)
        .set_chaddr(&mac)
        .set_giaddr(giaddr)
        .set_flags(Flags::default().set_broadcast());
    let opts = m.opts_mut();
    opts.insert(DhcpOption::MessageType(msg_type));
    opts.insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
        OptionCode::TFTPServerName,
        OptionCode::BootfileName,
    ]));
    let (arch, vendor): (u16, &str) = match kind {
        Client::BiosPxe => (0, "PXEClient:Arch:00000:UNDI:002001"),
        Client::UefiPxe => (7, "PXEClient:Arch:00007:UNDI:003010"),
        Client::HttpBoot => (16, "HTTPClient:Arch:00016:UNDI:003000"),
        Client::Ipxe => (0, "PXEClient:Arch:00000:UNDI:002001"),
        Client::Plain => return m,
    };
    opts.insert(DhcpOption::ClassIdentifier(vendor.as_bytes().to_vec()));
    opts.insert(DhcpOption::Unknown(UnknownOption::new(
        OptionCode::from(93),
        arch.to_be_bytes().to_vec(),
    )));
    let mut uuid = vec![0u8];
    uuid.extend_from_slice(&[0x11; 10]);
    uuid.extend_from_slice(&mac);
    opts.insert(DhcpOption::ClientMachineIdentifier(uuid));
    if kind == Client::Ipxe {
        opts.insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        opts.insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::from(175),
            vec![0xb1, 0x05, 0x01, 0x80, 0x86, 0x10, 0x0e],
        )));
    }
    m
}

pub fn with(mut m: Message, opt: DhcpOption) -> Message {
    m.opts_mut().insert(opt);
    m
}

pub fn opt_bytes(raw: &[u8], code: u8) -> Option<Vec<u8>> {
    let mut i = 240;
    while i + 1 < raw.len() {
        match raw[i] {
            0 => i += 1,
            255 => return None,
            c => {
                let len = raw[i + 1] as usize;
                if c == code {
                    return Some(raw[i + 2..i + 2 + len].to_vec());
                }
                i += 2 + len;
            }
        }
    }
    None
}

pub fn msg_type(m: &Message) -> Option<MessageType> {
    m.opts().msg_type()
}

pub fn bootfile(m: &Message) -> Option<String> {
    match m.opts().get(OptionCode::BootfileName) {
        Some(DhcpOption::BootfileName(b)) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}
