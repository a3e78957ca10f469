//! Socket details the transfer logic should not see: learning which local
//! address a request arrived on (IP_PKTINFO / IPV6_PKTINFO when the listen
//! socket is bound to the wildcard address) and the path MTU to a client.
//!
//! Linux only, like the rest of the server's socket handling; elsewhere the
//! local address falls back to the listen socket's and the MTU is unknown.

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::net::UdpSocket;

/// One datagram received on the listen socket.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub len: usize,
    pub from: SocketAddr,
    /// The local address the datagram was sent to, when known.
    pub local: Option<IpAddr>,
}

/// Receives datagrams on the listen socket, with their destination address.
pub struct Listener<'a> {
    socket: &'a UdpSocket,
    /// The socket's own address when it is specific; `None` for a wildcard
    /// socket, whose datagrams carry their destination in a control message.
    fixed_local: Option<IpAddr>,
}

impl<'a> Listener<'a> {
    pub fn new(socket: &'a UdpSocket) -> io::Result<Self> {
        let ip = socket.local_addr()?.ip();
        if !ip.is_unspecified() {
            return Ok(Self {
                socket,
                fixed_local: Some(ip),
            });
        }
        enable_pktinfo(socket, ip)?;
        Ok(Self {
            socket,
            fixed_local: None,
        })
    }

    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        match self.fixed_local {
            Some(local) => {
                let (len, from) = self.socket.recv_from(buf).await?;
                Ok(Received {
                    len,
                    from,
                    local: Some(local),
                })
            }
            None => recv_with_pktinfo(self.socket, buf).await,
        }
    }
}

#[cfg(target_os = "linux")]
fn enable_pktinfo(socket: &UdpSocket, ip: IpAddr) -> io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    let result = match ip {
        IpAddr::V4(_) => setsockopt(socket, sockopt::Ipv4PacketInfo, &true),
        IpAddr::V6(_) => setsockopt(socket, sockopt::Ipv6RecvPacketInfo, &true),
    };
    result.map_err(io::Error::from)
}

#[cfg(not(target_os = "linux"))]
fn enable_pktinfo(_socket: &UdpSocket, _ip: IpAddr) -> io::Result<()> {
    Ok(())
}

#[cfg(target_os = "linux")]
async fn recv_with_pktinfo(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<Received> {
    use std::os::fd::AsRawFd;
    use tokio::io::Interest;

    let fd = socket.as_raw_fd();
    socket
        .async_io(Interest::READABLE, || recvmsg_once(fd, &mut *buf))
        .await
}

#[cfg(target_os = "linux")]
fn recvmsg_once(fd: std::os::fd::RawFd, buf: &mut [u8]) -> io::Result<Received> {
    use nix::libc;
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrStorage};

    let mut cmsg = nix::cmsg_space!(libc::in_pktinfo, libc::in6_pktinfo);
    let mut iov = [io::IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut cmsg), MsgFlags::empty())
        .map_err(io::Error::from)?;
    let from = msg
        .address
        .as_ref()
        .and_then(storage_to_socket_addr)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "datagram without source"))?;
    let mut local = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for cmsg in cmsgs {
            match cmsg {
                ControlMessageOwned::Ipv4PacketInfo(info) => {
                    // spec_dst is the interface address even when the
                    // datagram was sent to a broadcast address.
                    let spec = std::net::Ipv4Addr::from(u32::from_be(info.ipi_spec_dst.s_addr));
                    let dst = std::net::Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr));
                    local = Some(IpAddr::V4(if spec.is_unspecified() { dst } else { spec }));
                }
                ControlMessageOwned::Ipv6PacketInfo(info) => {
                    local = Some(IpAddr::V6(info.ipi6_addr.s6_addr.into()));
                }
                _ => {}
            }
        }
    }
    Ok(Received {
        len: msg.bytes,
        from,
        local,
    })
}

#[cfg(target_os = "linux")]
fn storage_to_socket_addr(addr: &nix::sys::socket::SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    addr.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6((*v6).into()))
}

#[cfg(not(target_os = "linux"))]
async fn recv_with_pktinfo(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<Received> {
    let (len, from) = socket.recv_from(buf).await?;
    Ok(Received {
        len,
        from,
        local: None,
    })
}

/// The kernel's path MTU estimate towards `peer` from `local` (IPv4), found
/// by connecting a throwaway socket: no packet is sent. `None` when unknown.
#[cfg(target_os = "linux")]
pub fn path_mtu(local: IpAddr, peer: SocketAddr) -> Option<usize> {
    use nix::sys::socket::{getsockopt, sockopt};
    if !peer.is_ipv4() {
        return None;
    }
    let probe = std::net::UdpSocket::bind(SocketAddr::new(local, 0)).ok()?;
    probe.connect(peer).ok()?;
    let mtu = getsockopt(&probe, sockopt::IpMtu).ok()?;
    usize::try_from(mtu).ok().filter(|&m| m > 0)
}

#[cfg(not(target_os = "linux"))]
pub fn path_mtu(_local: IpAddr, _peer: SocketAddr) -> Option<usize> {
    None
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wildcard_listener_learns_the_destination_address() {
        let socket = UdpSocket::bind("0.0.0.0:0").await.unwrap();
        let port = socket.local_addr().unwrap().port();
        let listener = Listener::new(&socket).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(b"hello", ("127.0.0.1", port)).await.unwrap();
        let mut buf = [0u8; 64];
        let rx = tokio::time::timeout(std::time::Duration::from_secs(5), listener.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..rx.len], b"hello");
        assert_eq!(rx.from, client.local_addr().unwrap());
        assert_eq!(rx.local, Some("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn loopback_path_mtu_is_known() {
        let mtu = path_mtu("127.0.0.1".parse().unwrap(), "127.0.0.1:9".parse().unwrap());
        assert!(mtu.is_some_and(|m| m >= 1500), "{mtu:?}");
    }
}
