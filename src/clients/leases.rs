//! The address pool: offers, bindings and quarantined addresses, in memory.
//!
//! Invariants:
//! - an address is held by at most one client at a time, and an OFFERed
//!   address stays held for its client until the offer expires, so three
//!   machines booting at once get three different addresses;
//! - a reserved address is only ever given to its MAC;
//! - a DECLINEd address is quarantined for a while and handed to nobody;
//! - nothing here does I/O or reads a clock: `now` is passed in, and each
//!   change that must outlive a restart is returned for the caller to persist.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::domain::lease::{half_of, Reservation, Subnet};
use crate::domain::MacAddr;

pub use crate::domain::lease::{Entry, Millis, State};

/// How long a declined address stays out of the pool.
pub const QUARANTINE: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseError {
    /// No address left in the subnet's range.
    Exhausted,
    /// The requested address is not this client's to take.
    NotYours,
    /// The requested address is not in the subnet the client is on.
    WrongSubnet,
}

/// How long an offer is kept for its client even when the range is
/// exhausted (see [`LeaseTable::offer`]).
pub const MIN_OFFER_HOLD: Duration = Duration::from_secs(5);

/// All leases of all subnets (subnets never overlap, so one map by address).
#[derive(Debug, Default)]
pub struct LeaseTable {
    by_ip: HashMap<Ipv4Addr, Entry>,
    by_mac: HashMap<MacAddr, Ipv4Addr>,
    reserved: HashMap<MacAddr, Reservation>,
    reserved_ips: HashMap<Ipv4Addr, MacAddr>,
    /// Where the next free-address scan starts, per subnet start address.
    cursor: HashMap<Ipv4Addr, u32>,
    /// Half of an HA pair (`dhcp.peer`): a client gets a new address only
    /// at an offset from its range's start whose parity is its half
    /// ([`half_of`]), so the two servers never give one address to two
    /// clients, whichever of them answers whom.
    halves: bool,
}

impl LeaseTable {
    pub fn new(reservations: &[Reservation]) -> Self {
        let mut table = Self::default();
        for r in reservations {
            table.reserved.insert(r.mac, r.clone());
            table.reserved_ips.insert(r.ip, r.mac);
        }
        table
    }

    /// Splits new addresses between the halves of an HA pair (see
    /// `halves`).
    pub fn split_in_halves(&mut self) {
        self.halves = true;
    }

    /// Whether `ip` may be given to `mac` as a new address: in a pair,
    /// only at an offset of its half's parity.
    fn in_half(&self, subnet: &Subnet, mac: MacAddr, ip: Ipv4Addr) -> bool {
        !self.halves
            || (u32::from(ip).wrapping_sub(u32::from(subnet.range_start)) & 1)
                == u32::from(half_of(mac))
    }

    /// The leases the database holds for clients of `half`, over what this
    /// table held for them: what an HA server reads when it takes over its
    /// partner's half (the partner's bindings are then this server's to
    /// renew). Entries of the other half are left as they are.
    pub fn adopt_half(&mut self, half: u8, entries: Vec<Entry>) -> usize {
        let mut adopted = 0;
        for e in entries {
            let Some(mac) = e.mac else { continue };
            if half_of(mac) != half {
                continue;
            }
            if let Some(old) = self.by_ip.get(&e.ip) {
                if old.mac != Some(mac) {
                    if let Some(other) = old.mac {
                        self.by_mac.remove(&other);
                    }
                }
            }
            self.restore(e);
            adopted += 1;
        }
        adopted
    }

    /// Restores a persisted lease (bound or declined) at start.
    pub fn restore(&mut self, entry: Entry) {
        if let Some(mac) = entry.mac {
            self.by_mac.insert(mac, entry.ip);
        }
        self.by_ip.insert(entry.ip, entry);
    }

    pub fn get(&self, ip: Ipv4Addr) -> Option<&Entry> {
        self.by_ip.get(&ip)
    }

    pub fn reservation(&self, mac: MacAddr) -> Option<&Reservation> {
        self.reserved.get(&mac)
    }

    /// The client's live bound address, if any (for TFTP → MAC lookups the
    /// other way round, see [`Self::mac_of`]).
    pub fn mac_of(&self, ip: Ipv4Addr) -> Option<MacAddr> {
        self.by_ip.get(&ip).and_then(|e| e.mac)
    }

    /// The MAC `ip` is leased to, bound and unexpired: evidence that a
    /// request from `ip` comes from that machine (an offer is not: the
    /// client has not taken the address yet).
    pub fn bound_mac(&self, ip: Ipv4Addr, now: Millis) -> Option<MacAddr> {
        self.by_ip
            .get(&ip)
            .filter(|e| e.state == State::Bound && e.live(now))
            .and_then(|e| e.mac)
    }

    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }

    /// Whether `mac` may hold `ip` now.
    fn available_to(&self, ip: Ipv4Addr, mac: MacAddr, now: Millis) -> bool {
        if self
            .reserved_ips
            .get(&ip)
            .is_some_and(|owner| *owner != mac)
        {
            return false;
        }
        match self.by_ip.get(&ip) {
            None => true,
            Some(e) if e.state == State::Declined => !e.live(now),
            Some(e) => e.mac == Some(mac) || !e.live(now),
        }
    }

    /// Picks and holds an address for a DISCOVER.
    pub fn offer(
        &mut self,
        subnet: &Subnet,
        mac: MacAddr,
        requested: Option<Ipv4Addr>,
        now: Millis,
        hold: Duration,
    ) -> Result<Ipv4Addr, LeaseError> {
        let ip = match self.choose(subnet, mac, requested, now) {
            Err(LeaseError::Exhausted) => self
                .oldest_offer(subnet, mac, now, hold)
                .ok_or(LeaseError::Exhausted)?,
            chosen => chosen?,
        };
        let until = now + hold.as_millis() as i64;
        let entry = self.by_ip.get(&ip);
        // An offer never shortens a binding the client already has.
        let (state, expires_at) = match entry {
            Some(e) if e.mac == Some(mac) && e.state == State::Bound && e.live(now) => {
                (State::Bound, e.expires_at)
            }
            _ => (State::Offered, until),
        };
        self.hold(ip, mac, state, expires_at, None);
        Ok(ip)
    }

    fn choose(
        &mut self,
        subnet: &Subnet,
        mac: MacAddr,
        requested: Option<Ipv4Addr>,
        now: Millis,
    ) -> Result<Ipv4Addr, LeaseError> {
        if let Some(r) = self.reserved.get(&mac) {
            if subnet.network.contains(&r.ip) {
                return Ok(r.ip);
            }
        }
        if let Some(&ip) = self.by_mac.get(&mac) {
            if in_range(subnet, ip) && self.available_to(ip, mac, now) {
                return Ok(ip);
            }
        }
        if let Some(ip) = requested.filter(|ip| in_range(subnet, *ip)) {
            if self.available_to(ip, mac, now) && self.in_half(subnet, mac, ip) {
                return Ok(ip);
            }
        }
        self.scan(subnet, mac, now).ok_or(LeaseError::Exhausted)
    }

    /// With the range exhausted, the address of the oldest offer made at
    /// least [`MIN_OFFER_HOLD`] ago that nobody has REQUESTed: an offer is a
    /// hold, not a lease, so a flood of DISCOVERs from made-up MACs cannot
    /// starve a real client for the whole offer timeout (a client that
    /// REQUESTs within a few seconds, as real ones do, keeps its offer).
    fn oldest_offer(
        &self,
        subnet: &Subnet,
        mac: MacAddr,
        now: Millis,
        hold: Duration,
    ) -> Option<Ipv4Addr> {
        let hold = hold.as_millis() as i64;
        self.by_ip
            .values()
            .filter(|e| e.state == State::Offered && e.live(now) && in_range(subnet, e.ip))
            .filter(|e| self.in_half(subnet, mac, e.ip))
            .filter(|e| e.expires_at - hold <= now - MIN_OFFER_HOLD.as_millis() as i64)
            .min_by_key(|e| e.expires_at)
            .map(|e| e.ip)
    }

    /// Next free address after the cursor, preferring never-used addresses
    /// over expired ones so a returning client is likely to find its old one.
    fn scan(&mut self, subnet: &Subnet, mac: MacAddr, now: Millis) -> Option<Ipv4Addr> {
        let (start, end) = (u32::from(subnet.range_start), u32::from(subnet.range_end));
        let size = end - start + 1;
        let first = self.cursor.get(&subnet.range_start).copied().unwrap_or(0);
        let mut expired = None;
        for step in 0..size {
            let offset = (first + step) % size;
            let ip = Ipv4Addr::from(start + offset);
            if self.reserved_ips.contains_key(&ip)
                || Some(ip) == subnet.router
                || !self.in_half(subnet, mac, ip)
            {
                continue;
            }
            match self.by_ip.get(&ip) {
                None => {
                    self.cursor.insert(subnet.range_start, (offset + 1) % size);
                    return Some(ip);
                }
                Some(_) if expired.is_none() && self.available_to(ip, mac, now) => {
                    expired = Some(ip)
                }
                Some(_) => {}
            }
        }
        expired
    }

    /// A REQUEST for `ip`: binds it when it is the client's to take.
    pub fn bind(
        &mut self,
        subnet: &Subnet,
        mac: MacAddr,
        ip: Ipv4Addr,
        now: Millis,
        hostname: Option<String>,
    ) -> Result<Entry, LeaseError> {
        let in_subnet = subnet.network.contains(&ip);
        let reserved_here = self.reserved.get(&mac).is_some_and(|r| r.ip == ip);
        if !in_subnet {
            return Err(LeaseError::WrongSubnet);
        }
        if self
            .reserved_ips
            .get(&ip)
            .is_some_and(|owner| *owner != mac)
        {
            return Err(LeaseError::NotYours);
        }
        if !reserved_here && !in_range(subnet, ip) {
            return Err(LeaseError::WrongSubnet);
        }
        if let Some(r) = self.reserved.get(&mac) {
            if r.ip != ip && subnet.network.contains(&r.ip) {
                return Err(LeaseError::NotYours);
            }
        }
        if !self.available_to(ip, mac, now) {
            return Err(LeaseError::NotYours);
        }
        // In a pair, an address of the other half is this client's only if
        // it already holds it here (a lease restored or adopted).
        if !reserved_here && self.by_mac.get(&mac) != Some(&ip) && !self.in_half(subnet, mac, ip) {
            return Err(LeaseError::NotYours);
        }
        let expires_at = now + subnet.lease_time.as_millis() as i64;
        let hostname =
            hostname.or_else(|| self.reserved.get(&mac).and_then(|r| r.hostname.clone()));
        self.hold(ip, mac, State::Bound, expires_at, hostname);
        Ok(self.by_ip[&ip].clone())
    }

    fn hold(
        &mut self,
        ip: Ipv4Addr,
        mac: MacAddr,
        state: State,
        expires_at: Millis,
        hostname: Option<String>,
    ) {
        if let Some(old_ip) = self.by_mac.insert(mac, ip) {
            if old_ip != ip
                && self
                    .by_ip
                    .get(&old_ip)
                    .is_some_and(|e| e.mac == Some(mac) && e.state != State::Declined)
            {
                self.by_ip.remove(&old_ip);
            }
        }
        if let Some(prev) = self.by_ip.get(&ip) {
            if let Some(prev_mac) = prev.mac.filter(|m| *m != mac) {
                self.by_mac.remove(&prev_mac);
            }
        }
        let hostname = hostname.or_else(|| self.by_ip.get(&ip).and_then(|e| e.hostname.clone()));
        self.by_ip.insert(
            ip,
            Entry {
                ip,
                mac: Some(mac),
                state,
                expires_at,
                hostname,
            },
        );
    }

    /// DECLINE: the client found the address in use. Quarantine it.
    pub fn decline(&mut self, mac: MacAddr, ip: Ipv4Addr, now: Millis) -> Option<Entry> {
        let owned = self.by_ip.get(&ip).is_some_and(|e| e.mac == Some(mac));
        if !owned {
            return None;
        }
        self.by_mac.remove(&mac);
        let entry = Entry {
            ip,
            mac: None,
            state: State::Declined,
            expires_at: now + QUARANTINE.as_millis() as i64,
            hostname: None,
        };
        self.by_ip.insert(ip, entry.clone());
        Some(entry)
    }

    /// Every entry (offered, bound, quarantined), by address.
    pub fn entries(&self) -> Vec<Entry> {
        let mut all: Vec<Entry> = self.by_ip.values().cloned().collect();
        all.sort_by_key(|e| e.ip);
        all
    }

    /// An operator frees an address, whatever its state (a machine that is
    /// gone, a quarantine to lift). Returns what was there.
    pub fn remove(&mut self, ip: Ipv4Addr) -> Option<Entry> {
        let entry = self.by_ip.remove(&ip)?;
        if let Some(mac) = entry.mac {
            if self.by_mac.get(&mac) == Some(&ip) {
                self.by_mac.remove(&mac);
            }
        }
        Some(entry)
    }

    /// RELEASE: the client is done with the address.
    pub fn release(&mut self, mac: MacAddr, ip: Ipv4Addr) -> bool {
        let owned = self
            .by_ip
            .get(&ip)
            .is_some_and(|e| e.mac == Some(mac) && e.state == State::Bound);
        if owned {
            self.by_ip.remove(&ip);
            self.by_mac.remove(&mac);
        }
        owned
    }

    /// Drops the outstanding offer made to `mac` (it chose another server).
    pub fn expire_offers_of(&mut self, mac: MacAddr) {
        if let Some(&ip) = self.by_mac.get(&mac) {
            if self
                .by_ip
                .get(&ip)
                .is_some_and(|e| e.state == State::Offered)
            {
                self.by_ip.remove(&ip);
                self.by_mac.remove(&mac);
            }
        }
    }

    /// Drops expired offers (bindings stay, so a returning client gets its
    /// address back). Returns how many were dropped.
    pub fn expire_offers(&mut self, now: Millis) -> usize {
        let stale: Vec<Ipv4Addr> = self
            .by_ip
            .values()
            .filter(|e| e.state == State::Offered && !e.live(now))
            .map(|e| e.ip)
            .collect();
        for ip in &stale {
            if let Some(e) = self.by_ip.remove(ip) {
                if let Some(mac) = e.mac {
                    if self.by_mac.get(&mac) == Some(ip) {
                        self.by_mac.remove(&mac);
                    }
                }
            }
        }
        stale.len()
    }
}

fn in_range(subnet: &Subnet, ip: Ipv4Addr) -> bool {
    (u32::from(subnet.range_start)..=u32::from(subnet.range_end)).contains(&u32::from(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(first: u8, last: u8) -> Subnet {
        Subnet {
            network: "10.77.0.0/24".parse().unwrap(),
            range_start: Ipv4Addr::new(10, 77, 0, first),
            range_end: Ipv4Addr::new(10, 77, 0, last),
            router: Some(Ipv4Addr::new(10, 77, 0, 1)),
            dns: vec![],
            domain: None,
            lease_time: Duration::from_secs(3600),
        }
    }

    fn mac(n: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0, 0, 0, n])
    }

    const HOLD: Duration = Duration::from_secs(60);

    /// Two servers of an HA pair, each with its own table, never give one
    /// address to two clients: new addresses follow the client's half,
    /// whichever server answers it; a partner's bindings adopted at a
    /// takeover are renewed, not reassigned.
    #[test]
    fn the_halves_of_a_pair_never_share_an_address() {
        use crate::domain::lease::half_of;
        let s = subnet(10, 250);
        let (mut a, mut b) = (LeaseTable::new(&[]), LeaseTable::new(&[]));
        a.split_in_halves();
        b.split_in_halves();
        let macs: Vec<MacAddr> = (0..=255)
            .map(|n| MacAddr([0x52, 0x54, 0, 0, 1, n]))
            .collect();
        let halves: Vec<u8> = macs.iter().map(|m| half_of(*m)).collect();
        let ones = halves.iter().filter(|h| **h == 1).count();
        assert!(
            (96..=160).contains(&ones),
            "a fair split: {ones} of 256 in half 1"
        );
        let mut given = std::collections::HashMap::new();
        // A answers half 0 and B half 1, then (a takeover) B answers both.
        for (i, m) in macs.iter().take(90).enumerate() {
            let table = if halves[i] == 0 { &mut a } else { &mut b };
            let ip = table.offer(&s, *m, None, 0, HOLD).unwrap();
            table.bind(&s, *m, ip, 1, None).unwrap();
            let offset = u32::from(ip) - u32::from(s.range_start);
            assert_eq!(
                offset & 1,
                u32::from(halves[i]),
                "{ip} for half {}",
                halves[i]
            );
            assert!(given.insert(ip, *m).is_none(), "{ip} given twice");
        }
        let adopted = b.adopt_half(0, a.entries());
        assert_eq!(adopted, halves[..90].iter().filter(|h| **h == 0).count());
        for (i, m) in macs.iter().enumerate().take(90) {
            if halves[i] == 0 {
                let ip = b.offer(&s, *m, None, 10, HOLD).unwrap();
                assert_eq!(given.get(&ip), Some(m), "B renews A's binding of {m}");
            }
        }
        for m in macs.iter().skip(90).take(10) {
            let ip = b.offer(&s, *m, None, 10, HOLD).unwrap();
            assert!(given.insert(ip, *m).is_none(), "{ip} given twice");
        }
        // A client may not ask for an address of the other half it does
        // not hold.
        let (m0, m1) = (
            macs[halves.iter().position(|h| *h == 0).unwrap()],
            macs[halves.iter().position(|h| *h == 1).unwrap()],
        );
        let mut c = LeaseTable::new(&[]);
        c.split_in_halves();
        let odd = Ipv4Addr::new(10, 77, 0, 11);
        assert_eq!(c.bind(&s, m0, odd, 0, None), Err(LeaseError::NotYours));
        assert!(c.bind(&s, m1, odd, 0, None).is_ok());
    }

    #[test]
    fn concurrent_discovers_get_distinct_addresses() {
        let s = subnet(100, 199);
        let mut t = LeaseTable::new(&[]);
        let a = t.offer(&s, mac(1), None, 0, HOLD).unwrap();
        let b = t.offer(&s, mac(2), None, 0, HOLD).unwrap();
        let c = t.offer(&s, mac(3), None, 0, HOLD).unwrap();
        assert!(a != b && b != c && a != c);
        // Each REQUEST for its own offer binds; a repeated DISCOVER keeps it.
        assert_eq!(t.offer(&s, mac(1), None, 10, HOLD).unwrap(), a);
        for (m, ip) in [(1, a), (2, b), (3, c)] {
            assert_eq!(
                t.bind(&s, mac(m), ip, 20, None).unwrap().state,
                State::Bound
            );
        }
        // Nobody may take another's held address.
        assert_eq!(t.bind(&s, mac(4), a, 30, None), Err(LeaseError::NotYours));
        assert_ne!(t.offer(&s, mac(4), Some(a), 30, HOLD).unwrap(), a);
    }

    #[test]
    fn a_flood_of_offers_does_not_starve_a_real_client() {
        let s = subnet(100, 101);
        let mut t = LeaseTable::new(&[]);
        let a = t.offer(&s, mac(1), None, 0, HOLD).unwrap();
        let b = t.offer(&s, mac(2), None, 1_000, HOLD).unwrap();
        // Within MIN_OFFER_HOLD, offers are kept for their clients.
        assert_eq!(
            t.offer(&s, mac(3), None, 2_000, HOLD),
            Err(LeaseError::Exhausted)
        );
        // Later, the oldest unrequested offer goes to the new client...
        assert_eq!(t.offer(&s, mac(3), None, 6_000, HOLD), Ok(a));
        // ...a bound lease never does.
        t.bind(&s, mac(2), b, 6_500, None).unwrap();
        assert_eq!(t.offer(&s, mac(4), None, 20_000, HOLD), Ok(a));
        assert_eq!(t.mac_of(b), Some(mac(2)));
        assert_eq!(t.bound_mac(b, 20_000), Some(mac(2)));
        assert_eq!(t.bound_mac(a, 20_000), None, "an offer is not a binding");
    }

    #[test]
    fn offers_expire_and_free_the_address() {
        let s = subnet(100, 100);
        let mut t = LeaseTable::new(&[]);
        let a = t.offer(&s, mac(1), None, 0, HOLD).unwrap();
        assert_eq!(
            t.offer(&s, mac(2), None, 1_000, HOLD),
            Err(LeaseError::Exhausted)
        );
        assert_eq!(t.offer(&s, mac(2), None, 61_000, HOLD), Ok(a));
        assert_eq!(t.expire_offers(200_000), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn reservations_belong_to_their_mac_only() {
        let s = subnet(100, 101);
        let r = Reservation {
            mac: mac(9),
            ip: Ipv4Addr::new(10, 77, 0, 50),
            hostname: Some("node1".into()),
        };
        let mut t = LeaseTable::new(std::slice::from_ref(&r));
        assert_eq!(t.offer(&s, mac(9), None, 0, HOLD), Ok(r.ip));
        assert_eq!(
            t.bind(&s, mac(9), r.ip, 0, None)
                .unwrap()
                .hostname
                .as_deref(),
            Some("node1")
        );
        assert_eq!(t.bind(&s, mac(1), r.ip, 0, None), Err(LeaseError::NotYours));
        assert_eq!(
            t.bind(&s, mac(9), Ipv4Addr::new(10, 77, 0, 100), 0, None),
            Err(LeaseError::NotYours)
        );
    }

    #[test]
    fn declined_address_is_quarantined_then_returns() {
        let s = subnet(100, 101);
        let mut t = LeaseTable::new(&[]);
        let a = t.offer(&s, mac(1), None, 0, HOLD).unwrap();
        t.bind(&s, mac(1), a, 0, None).unwrap();
        assert!(t.decline(mac(1), a, 0).is_some());
        let b = t.offer(&s, mac(1), None, 1, HOLD).unwrap();
        assert_ne!(a, b);
        assert_eq!(
            t.offer(&s, mac(2), None, 1, HOLD),
            Err(LeaseError::Exhausted)
        );
        let later = QUARANTINE.as_millis() as i64 + 10;
        assert_eq!(t.offer(&s, mac(2), None, later, HOLD), Ok(a));
        // A stranger cannot decline someone else's address.
        assert!(t.decline(mac(7), b, later).is_none());
    }

    #[test]
    fn release_frees_and_restore_remembers() {
        let s = subnet(100, 199);
        let mut t = LeaseTable::new(&[]);
        let a = t.offer(&s, mac(1), None, 0, HOLD).unwrap();
        let entry = t.bind(&s, mac(1), a, 0, Some("n1".into())).unwrap();
        let mut restarted = LeaseTable::new(&[]);
        restarted.restore(entry.clone());
        assert_eq!(restarted.offer(&s, mac(1), None, 5, HOLD), Ok(a));
        assert_eq!(
            restarted.bind(&s, mac(2), a, 5, None),
            Err(LeaseError::NotYours)
        );
        assert!(t.release(mac(1), a));
        assert!(t.get(a).is_none());
        assert!(!t.release(mac(1), a));
    }

    #[test]
    fn requested_address_outside_range_is_refused() {
        let s = subnet(100, 110);
        let mut t = LeaseTable::new(&[]);
        assert_eq!(
            t.bind(&s, mac(1), Ipv4Addr::new(10, 77, 0, 200), 0, None),
            Err(LeaseError::WrongSubnet)
        );
        assert_eq!(
            t.bind(&s, mac(1), Ipv4Addr::new(10, 9, 0, 105), 0, None),
            Err(LeaseError::WrongSubnet)
        );
        let offered = t
            .offer(&s, mac(1), Some(Ipv4Addr::new(10, 77, 0, 105)), 0, HOLD)
            .unwrap();
        assert_eq!(
            offered,
            Ipv4Addr::new(10, 77, 0, 105),
            "a free requested address is honoured"
        );
    }
}
