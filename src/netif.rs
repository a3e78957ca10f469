//! The host's network interfaces: names, IPv4 addresses, indexes and MTUs.
//! Read once at start (and by the DHCP server to learn each boot interface's
//! own address, which becomes its server identifier).

use std::io;

use ipnet::Ipv4Net;
use nix::ifaddrs::getifaddrs;

/// `(interface name, address with prefix)` for every IPv4 address, in the
/// order the kernel lists them.
pub fn ipv4_addresses() -> io::Result<Vec<(String, Ipv4Net)>> {
    let mut out = Vec::new();
    for ifa in getifaddrs().map_err(io::Error::from)? {
        let Some(addr) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) else {
            continue;
        };
        let prefix = ifa
            .netmask
            .as_ref()
            .and_then(|m| m.as_sockaddr_in())
            .map(|m| u32::from(m.ip()).count_ones() as u8)
            .unwrap_or(32);
        if let Ok(net) = Ipv4Net::new(addr.ip(), prefix) {
            out.push((ifa.interface_name.clone(), net));
        }
    }
    Ok(out)
}

/// The IPv4 address (with prefix) of one interface, if it has one.
pub fn interface_ipv4(name: &str) -> io::Result<Option<Ipv4Net>> {
    Ok(ipv4_addresses()?
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, a)| a))
}

/// Kernel index of an interface (for IPv6 scope ids and multicast).
pub fn index(name: &str) -> io::Result<u32> {
    nix::net::if_::if_nametoindex(name).map_err(io::Error::from)
}

/// `(interface name, address)` for every IPv6 address, in the order the
/// kernel lists them.
pub fn ipv6_addresses() -> io::Result<Vec<(String, std::net::Ipv6Addr)>> {
    let mut out = Vec::new();
    for ifa in getifaddrs().map_err(io::Error::from)? {
        if let Some(addr) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in6()) {
            out.push((ifa.interface_name.clone(), addr.ip()));
        }
    }
    Ok(out)
}

/// The first global (not link-local, not loopback) IPv6 address of one
/// interface: what DHCPv6 tells clients when `dhcp6.server_ip` is unset.
pub fn interface_ipv6_global(name: &str) -> io::Result<Option<std::net::Ipv6Addr>> {
    Ok(ipv6_addresses()?
        .into_iter()
        .filter(|(n, _)| n == name)
        .map(|(_, a)| a)
        .find(|a| !a.is_loopback() && !a.is_unicast_link_local() && !a.is_multicast()))
}

/// The hardware address of an interface (`/sys/class/net/NAME/address`),
/// for the DHCPv6 server's DUID.
pub fn hardware_address(name: &str) -> Option<crate::domain::MacAddr> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{name}/address")).ok()?;
    text.trim().parse().ok()
}
