//! DHCPv6 for network boot on IPv6-only segments (RFC 8415, RFC 5970).
//!
//! - [`packet`]: safe decoding over dhcproto's v6 messages, relay
//!   unwrapping and re-wrapping (pure).
//! - [`identity`]: which MAC a DHCPv6 client is, and from what evidence
//!   (pure).
//! - [`classify`]: PXEv6, HTTPv6 or iPXE, by options 16, 61 and 15 (pure).
//! - [`handler`]: the per-datagram exchange against the address table, no
//!   sockets; [`server`]: the sockets.

pub mod classify;
pub mod handler;
pub mod identity;
pub mod packet;
pub mod server;

#[cfg(test)]
mod fixtures_tests;
