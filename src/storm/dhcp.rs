//! The DHCP side of a simulated machine: DISCOVER → OFFER → REQUEST → ACK,
//! sent as a relay agent (`giaddr` set to the simulator's own address), so a
//! storm runs over loopback without broadcasts, against any DHCP server that
//! serves relayed subnets (ironboot, dnsmasq, Kea).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode, UnknownOption};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use tokio::net::UdpSocket;
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

/// One full exchange with firmware-like retransmissions: each message is
/// sent again after each timeout in `timeouts` (PXE: 4, 8, 16, 32 s).
pub async fn exchange(
    machine: &Machine,
    firmware: Firmware,
    giaddr: Ipv4Addr,
    server: SocketAddr,
    timeouts: &[Duration],
) -> Result<(Lease, u32), DhcpError> {
    let sock = UdpSocket::bind((giaddr, 0)).await?;
    let xid = rand::random::<u32>();
    let mut retries = 0;
    let discover = message(machine, firmware, MessageType::Discover, xid, giaddr, None);
    let (offer, r) = send_until(&sock, server, &discover, xid, MessageType::Offer, timeouts)
        .await?
        .ok_or(DhcpError::NoReply("OFFER", timeouts.len()))?;
    retries += r;
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
    let (ack, r) = send_until(&sock, server, &request, xid, MessageType::Ack, timeouts)
        .await?
        .ok_or(DhcpError::NoReply("ACK", timeouts.len()))?;
    retries += r;
    let bootfile = match ack.opts().get(OptionCode::BootfileName) {
        Some(DhcpOption::BootfileName(b)) => String::from_utf8_lossy(b).into_owned(),
        _ => String::from_utf8_lossy(ack.fname().unwrap_or_default())
            .trim_end_matches('\0')
            .to_string(),
    };
    let next_server = match (ack.siaddr(), server_id, server) {
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
        retries,
    ))
}

/// Sends `msg` and waits for a reply of type `want` (a NAK ends it); resends
/// after each timeout. Returns the reply and the number of resends.
async fn send_until(
    sock: &UdpSocket,
    server: SocketAddr,
    msg: &Message,
    xid: u32,
    want: MessageType,
    timeouts: &[Duration],
) -> Result<Option<(Message, u32)>, DhcpError> {
    let mut bytes = Vec::with_capacity(400);
    msg.encode(&mut Encoder::new(&mut bytes))
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut buf = vec![0u8; 1500];
    for (attempt, wait) in timeouts.iter().enumerate() {
        sock.send_to(&bytes, server).await?;
        let deadline = Instant::now() + *wait;
        loop {
            let Ok(received) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await
            else {
                break;
            };
            let (n, _) = received?;
            let Ok(reply) = Message::decode(&mut Decoder::new(&buf[..n])) else {
                continue;
            };
            if reply.xid() != xid || reply.opcode() != Opcode::BootReply {
                continue;
            }
            match reply.opts().msg_type() {
                Some(t) if t == want => return Ok(Some((reply, attempt as u32))),
                Some(MessageType::Nak) => return Err(DhcpError::Nak),
                _ => continue,
            }
        }
    }
    Ok(None)
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
