//! DHCPv4 for network boot: full, proxy and relayed; plus the IPv6 router
//! advertisement that spares iPXE its SLAAC wait.
//!
//! - [`packet`]: safe decoding over dhcproto (pure).
//! - [`classify`]: client kind and bootfile, as a case table (pure).
//! - [`reply`]: reply encoding: padding, siaddr/file, echoes (pure).
//! - [`handler`]: the per-datagram decision chain, no sockets.
//! - [`server`]: sockets with `IP_PKTINFO`; [`ra`]: router advertisements.

pub mod classify;
pub mod handler;
pub mod newcomers;
pub mod packet;
pub mod pair;
pub mod ra;
pub mod reply;
pub mod server;

pub use handler::{Dhcp, Incoming, Outgoing, Port};

#[cfg(test)]
mod fixtures_tests;
