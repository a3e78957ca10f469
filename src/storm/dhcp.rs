//! The DHCP side of a simulated machine: DISCOVER → OFFER → REQUEST → ACK,
//! sent as a relay agent (`giaddr` set to the simulator's own address), so a
//! storm runs over loopback without broadcasts, against any DHCP server that
//! serves relayed subnets (ironboot, dnsmasq, Kea).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode, UnknownOption};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Machine;

/// Which firmware is asking: the PXE ROM first, iPXE after the chainload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    PxeRom,
    Ipxe,
}

/// What the server granted.
#[derive(Debug, Clone)]
pub struct Lease {
    pub address: Ipv4Addr,
    /// `siaddr` (next-server), or option 54 when `siaddr` is empty.
    pub next_server: Ipv4Addr,
    pub bootfile: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("no {0} after {1} tries")]
    NoReply(&'static str, usize),
    #[error("server sent DHCPNAK")]
    Nak,
    #[error("network: {0}")]
    Io(#[from] std::io::Error),
}

/// The simulated relay agent: one socket on `giaddr` shared by every
/// machine, replies handed to the machine waiting on their `xid`. Servers
/// answer a relay on its address at the port it is bound to (ironboot) or
/// at port 67 (dnsmasq, Kea): bind port 67 for those.
pub struct Relay {
    sock: Arc<UdpSocket>,
    pub giaddr: Ipv4Addr,
    server: SocketAddr,
    /// Servers every message also goes to, as a relay configured with an
    /// HA pair forwards to both.
    also: Vec<SocketAddr>,
    waiting: Arc<Mutex<HashMap<u32, mpsc::UnboundedSender<Message>>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub fn bind(giaddr: Ipv4Addr, port: u16, server: SocketAddr) -> std::io::Result<Self> {
        use socket2::{Domain, Protocol, Socket, Type};
        let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        // Port 67 next to a server bound to the wildcard address (dnsmasq
        // with bind-interfaces sets SO_REUSEPORT; both sides must).
        sock.set_reuse_address(true)?;
        sock.set_reuse_port(true)?;
        // A storm's replies arrive in bursts; the default buffer drops them.
        if nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::RcvBufForce, &(8 << 20))
            .is_err()
        {
            let _ = sock.set_recv_buffer_size(8 << 20);
        }
        sock.set_nonblocking(true)?;
        sock.bind(&SocketAddr::from((giaddr, port)).into())?;
        let sock = Arc::new(UdpSocket::from_std(sock.into())?);
        let waiting: Arc<Mutex<HashMap<u32, mpsc::UnboundedSender<Message>>>> = Arc::default();
        let reader = tokio::spawn({
            let (sock, waiting) = (sock.clone(), waiting.clone());
            async move {
                let mut buf = vec![0u8; 1500];
                while let Ok((n, _)) = sock.recv_from(&mut buf).await {
                    let Ok(reply) = Message::decode(&mut Decoder::new(&buf[..n])) else {
                        continue;
                    };
                    if reply.opcode() != Opcode::BootReply {
                        continue;
                    }
                    let waiting = waiting.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(tx) = waiting.get(&reply.xid()) {
                        let _ = tx.send(reply);
                    }
                }
            }
        });
        Ok(Self {
            sock,
            giaddr,
            server,
            also: Vec::new(),
            waiting,
            reader,
        })
    }

    /// Every message goes to `more` servers too (an HA pair's other
    /// server); the first answer is taken.
    pub fn also_to(mut self, more: &[SocketAddr]) -> Self {
        self.also = more.to_vec();
        self
    }

    /// One full exchange with firmware-like retransmissions: each message
    /// is sent again after each timeout in `timeouts` (PXE: 4, 8, 16, 32 s).
    /// Returns the lease and the number of resends.
    pub async fn exchange(
        &self,
        machine: &Machine,
        firmware: Firmware,
        timeouts: &[Duration],
    ) -> Result<(Lease, u32), DhcpError> {
        let mut xid = rand::random::<u32>();
        let (tx, mut rx) = mpsc::unbounded_channel();
        {
            let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            while waiting.contains_key(&xid) {
                xid = xid.wrapping_add(1);
            }
            waiting.insert(xid, tx);
        }
        let result = self.dora(machine, firmware, xid, &mut rx, timeouts).await;
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&xid);
        result
    }

    async fn dora(
        &self,
        machine: &Machine,
        firmware: Firmware,
        xid: u32,
        rx: &mut mpsc::UnboundedReceiver<Message>,
        timeouts: &[Duration],
    ) -> Result<(Lease, u32), DhcpError> {
        let giaddr = self.giaddr;
        let discover = message(machine, firmware, MessageType::Discover, xid, giaddr, None);
        let (offer, r1) = self
            .send_until(&discover, rx, MessageType::Offer, timeouts)
            .await?
            .ok_or(DhcpError::NoReply("OFFER", timeouts.len()))?;
        let server_id = offer
            .opts()
            .get(OptionCode::ServerIdentifier)
            .and_then(|o| match o {
                DhcpOption::ServerIdentifier(ip) => Some(*ip),
                _ => None,
            });
        let request = message(
            machine,
            firmware,
            MessageType::Request,
            xid,
            giaddr,
            Some((offer.yiaddr(), server_id)),
        );
        let (ack, r2) = self
            .send_until(&request, rx, MessageType::Ack, timeouts)
            .await?
            .ok_or(DhcpError::NoReply("ACK", timeouts.len()))?;
        let bootfile = match ack.opts().get(OptionCode::BootfileName) {
            Some(DhcpOption::BootfileName(b)) => String::from_utf8_lossy(b).into_owned(),
            _ => String::from_utf8_lossy(ack.fname().unwrap_or_default()).into_owned(),
        };
        let next_server = match (ack.siaddr(), server_id, self.server) {
            (siaddr, _, _) if !siaddr.is_unspecified() => siaddr,
            (_, Some(id), _) => id,
            (_, None, SocketAddr::V4(a)) => *a.ip(),
            (_, None, SocketAddr::V6(_)) => Ipv4Addr::UNSPECIFIED,
        };
        Ok((
            Lease {
                address: ack.yiaddr(),
                next_server,
                bootfile: bootfile.trim_end_matches('\0').to_string(),
            },
            r1 + r2,
        ))
    }

    /// Sends `msg` and waits for a reply of type `want` (a NAK ends it);
    /// resends after each timeout. Returns the reply and the resends.
    async fn send_until(
        &self,
        msg: &Message,
        rx: &mut mpsc::UnboundedReceiver<Message>,
        want: MessageType,
        timeouts: &[Duration],
    ) -> Result<Option<(Message, u32)>, DhcpError> {
        let mut bytes = Vec::with_capacity(400);
        msg.encode(&mut Encoder::new(&mut bytes))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        for (attempt, wait) in timeouts.iter().enumerate() {
            for to in std::iter::once(&self.server).chain(&self.also) {
                self.sock.send_to(&bytes, to).await?;
            }
            let deadline = Instant::now() + *wait;
            while let Ok(Some(reply)) = tokio::time::timeout_at(deadline, rx.recv()).await {
                match reply.opts().msg_type() {
                    Some(t) if t == want => return Ok(Some((reply, attempt as u32))),
                    Some(MessageType::Nak) => return Err(DhcpError::Nak),
                    _ => continue,
                }
            }
        }
        Ok(None)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A request as the firmware sends it: PXE options (60, 93, 94, 97), and for
/// iPXE its user class (77) and feature list (175).
fn message(
    machine: &Machine,
    firmware: Firmware,
    msg_type: MessageType,
    xid: u32,
    giaddr: Ipv4Addr,
    requested: Option<(Ipv4Addr, Option<Ipv4Addr>)>,
) -> Message {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootRequest)
        .set_xid(xid)
        .set_chaddr(&machine.mac)
        .set_giaddr(giaddr)
        .set_hops(1);
    let opts = m.opts_mut();
    opts.insert(DhcpOption::MessageType(msg_type));
    opts.insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
        OptionCode::Hostname,
        OptionCode::TFTPServerName,
        OptionCode::BootfileName,
    ]));
    opts.insert(DhcpOption::ClassIdentifier(
        b"PXEClient:Arch:00000:UNDI:002001".to_vec(),
    ));
    opts.insert(DhcpOption::Unknown(UnknownOption::new(
        OptionCode::from(93),
        vec![0, 0],
    )));
    opts.insert(DhcpOption::Unknown(UnknownOption::new(
        OptionCode::from(94),
        vec![1, 2, 1],
    )));
    let mut uuid = vec![0u8];
    uuid.extend_from_slice(&machine.uuid);
    opts.insert(DhcpOption::ClientMachineIdentifier(uuid));
    if firmware == Firmware::Ipxe {
        opts.insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        opts.insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::from(175),
            vec![0xb1, 0x05, 0x01, 0x80, 0x86, 0x10, 0x0e, 0x13, 0x01, 0x01],
        )));
    }
    if let Some((address, server_id)) = requested {
        opts.insert(DhcpOption::RequestedIpAddress(address));
        if let Some(id) = server_id {
            opts.insert(DhcpOption::ServerIdentifier(id));
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipxe_request_carries_user_class_and_the_requested_address() {
        let machine = Machine::new(7, [0x02, 0x57]);
        let m = message(
            &machine,
            Firmware::Ipxe,
            MessageType::Request,
            9,
            Ipv4Addr::new(127, 9, 0, 1),
            Some((Ipv4Addr::new(127, 9, 0, 20), Some(Ipv4Addr::LOCALHOST))),
        );
        let mut bytes = Vec::new();
        m.encode(&mut Encoder::new(&mut bytes)).unwrap();
        let back = Message::decode(&mut Decoder::new(&bytes)).unwrap();
        assert_eq!(back.giaddr(), Ipv4Addr::new(127, 9, 0, 1));
        assert_eq!(&back.chaddr()[..6], &machine.mac);
        assert!(matches!(
            back.opts().get(OptionCode::UserClass),
            Some(DhcpOption::UserClass(u)) if u == b"iPXE"
        ));
        assert!(matches!(
            back.opts().get(OptionCode::RequestedIpAddress),
            Some(DhcpOption::RequestedIpAddress(a)) if *a == Ipv4Addr::new(127, 9, 0, 20)
        ));
    }
}
