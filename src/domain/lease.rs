//! A lease as the address pool holds it and the store keeps it: one
//! address, who holds it, in which state, until when. Plain data shared by
//! `dhcp::leases` (which decides) and `store` (which keeps), so neither
//! depends on the other.

use std::net::Ipv4Addr;

use super::MacAddr;

/// Milliseconds since the epoch (the store's time unit).
pub type Millis = i64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Offered,
    Bound,
    Declined,
}

impl State {
    /// The stored spelling (offers are never stored).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Offered => "offered",
            State::Bound => "bound",
            State::Declined => "declined",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub ip: Ipv4Addr,
    pub mac: Option<MacAddr>,
    pub state: State,
    pub expires_at: Millis,
    pub hostname: Option<String>,
}

impl Entry {
    /// Not expired at `now`.
    pub fn live(&self, now: Millis) -> bool {
        self.expires_at > now
    }
}
