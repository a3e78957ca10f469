//! The clients the DHCP service knows, as one table the other services
//! read: who holds an address (the lease pool), which MACs are answered
//! whatever they send (reservations and machines that network-booted here),
//! and what each MAC's last boot request said (its firmware architecture,
//! the switch port it came through).
//!
//! DHCP writes it; the binding rule (`binding.rs`), TFTP's ledger
//! events, the boot path (GRUB's architecture, a script request that does
//! not say its own, a machine's switch port) and `explain` read it.
//! [`Clients`] is a cheap handle: `app` makes one and passes it where it is
//! needed, so no service holds another service to ask it who is who.
//!
//! Invariants: nothing here does I/O or reads a clock (`now` is passed in);
//! a MAC is forgotten from every table at once ([`Clients::forget`]).

pub mod leases;
pub mod leases6;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use crate::domain::lease::{Entry, Millis, Reservation};
use crate::domain::{Arch, MacAddr};
use leases::LeaseTable;
use leases6::Lease6Table;

/// What the last boot request of a machine said, kept in memory for the
/// paths that follow DHCP: GRUB's config and script requests without
/// `buildarch` (which architecture asked), and relay identity (which switch
/// port it came from).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeenClient {
    pub arch: Option<Arch>,
    pub circuit_id: Option<String>,
    pub remote_id: Option<String>,
    /// How DHCPv6 last learnt this MAC (`relay_option79`, `duid`,
    /// `ethernet`, `link_local`, `relay_peer`): DHCPv6 carries no MAC, so
    /// `explain` says which evidence named the machine.
    pub mac_from: Option<&'static str>,
}

/// The table of clients; clones share it.
#[derive(Clone)]
pub struct Clients(Arc<Tables>);

struct Tables {
    leases: Mutex<LeaseTable>,
    /// DHCPv6's addresses (empty without `[dhcp6]`).
    leases6: Mutex<Lease6Table>,
    /// MACs answered in full mode whatever they send: reservations and
    /// machines that have network-booted from this server.
    known: RwLock<HashSet<MacAddr>>,
    /// Per MAC: the facts of its last boot request.
    seen: RwLock<HashMap<MacAddr, SeenClient>>,
}

impl Clients {
    /// `known`: the machines the store holds. Reserved MACs are known too.
    pub fn new(
        reservations: &[Reservation],
        leases: impl IntoIterator<Item = Entry>,
        known: HashSet<MacAddr>,
    ) -> Self {
        let mut pool = LeaseTable::new(reservations);
        for entry in leases {
            pool.restore(entry);
        }
        let mut known = known;
        known.extend(reservations.iter().map(|r| r.mac));
        Self(Arc::new(Tables {
            leases: Mutex::new(pool),
            leases6: Mutex::new(Lease6Table::default()),
            known: RwLock::new(known),
            seen: RwLock::new(HashMap::new()),
        }))
    }

    /// No pool, no known MAC (proxy mode's tests, tools).
    pub fn empty() -> Self {
        Self::new(&[], [], HashSet::new())
    }

    /// The address pool, for DHCP's offers, bindings and releases.
    pub fn pool(&self) -> MutexGuard<'_, LeaseTable> {
        self.0.leases.lock().expect("lease lock")
    }

    /// The DHCPv6 address table.
    pub fn pool6(&self) -> MutexGuard<'_, Lease6Table> {
        self.0.leases6.lock().expect("lease6 lock")
    }

    /// Replaces the DHCPv6 table (at start, with the configured range and
    /// the leases the store kept).
    pub fn set_pool6(&self, table: Lease6Table) {
        *self.pool6() = table;
    }

    /// The MAC holding `ip` (bound or offered), for TFTP's ledger events.
    pub fn mac_of(&self, ip: IpAddr) -> Option<MacAddr> {
        match ip.to_canonical() {
            IpAddr::V4(v4) => self.pool().mac_of(v4),
            IpAddr::V6(v6) => self.pool6().mac_of(v6),
        }
    }

    /// The MAC whose SLAAC address `ip` is, on a link behind a relay where
    /// it holds a DHCPv6 lease (see [`Lease6Table::relayed_slaac`]).
    pub fn relayed_slaac(&self, ip: std::net::Ipv6Addr, now: Millis) -> Option<MacAddr> {
        self.pool6().relayed_slaac(ip, now)
    }

    /// The MAC holding a bound, unexpired DHCPv6 lease on `ip`.
    pub fn bound_mac6(&self, ip: std::net::Ipv6Addr, now: Millis) -> Option<MacAddr> {
        self.pool6().bound_mac(ip, now)
    }

    /// The MAC holding a bound, unexpired lease on `ip` (the binding rule's
    /// strongest evidence).
    pub fn bound_mac(&self, ip: Ipv4Addr, now: Millis) -> Option<MacAddr> {
        self.pool().bound_mac(ip, now)
    }

    /// The lease table as it is now (for the API).
    pub fn leases(&self) -> Vec<Entry> {
        self.pool().entries()
    }

    /// Whether full mode answers `mac` whatever it sends.
    pub fn knows(&self, mac: MacAddr) -> bool {
        self.0.known.read().expect("known lock").contains(&mac)
    }

    /// How many MACs are known (proxy mode stops admitting new ones at a
    /// bound).
    pub fn known_count(&self) -> usize {
        self.0.known.read().expect("known lock").len()
    }

    /// `mac` is answered whatever it sends from now on.
    pub fn admit(&self, mac: MacAddr) {
        self.0.known.write().expect("known lock").insert(mac);
    }

    /// What `mac`'s last boot request said, if it sent one since start.
    pub fn seen(&self, mac: MacAddr) -> Option<SeenClient> {
        self.0.seen.read().expect("seen lock").get(&mac).cloned()
    }

    /// Records what `mac`'s boot request said.
    pub fn saw(&self, mac: MacAddr, seen: SeenClient) {
        self.0.seen.write().expect("seen lock").insert(mac, seen);
    }

    /// Forgets machines the inventory removed: they are new clients again
    /// if they come back. Their leases stay (an address given out is kept
    /// until it expires).
    pub fn forget(&self, macs: &[MacAddr]) {
        let mut known = self.0.known.write().expect("known lock");
        let mut seen = self.0.seen.write().expect("seen lock");
        for mac in macs {
            known.remove(mac);
            seen.remove(mac);
        }
    }
}

impl Default for Clients {
    fn default() -> Self {
        Self::empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0, 0, 0, n])
    }

    #[test]
    fn reservations_are_known_and_forgetting_clears_every_table() {
        let reserved = Reservation {
            mac: mac(1),
            ip: Ipv4Addr::new(10, 0, 0, 9),
            hostname: None,
        };
        let clients = Clients::new(&[reserved], [], HashSet::from([mac(2)]));
        assert!(clients.knows(mac(1)) && clients.knows(mac(2)));
        assert!(!clients.knows(mac(3)));
        clients.admit(mac(3));
        clients.saw(
            mac(3),
            SeenClient {
                arch: Some(Arch::BiosX86),
                ..SeenClient::default()
            },
        );
        assert_eq!(clients.known_count(), 3);
        let other = clients.clone();
        other.forget(&[mac(3)]);
        assert!(!clients.knows(mac(3)));
        assert_eq!(clients.seen(mac(3)), None);
        assert_eq!(clients.mac_of("fe80::1".parse().unwrap()), None);
    }
}
