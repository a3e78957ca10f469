//! The DHCPv6 address table: which IA_NA of which machine holds which
//! address, from the configured ranges (the boot link's, and one per
//! relayed link).
//!
//! An address is picked by hashing the machine's MAC and the IA's
//! identifier into the range and probing from there, so a machine asking
//! again (after a restart of either side, or with a second IA) lands on the
//! same address without a cursor to persist; a reservation goes to the
//! machine's first IA_NA. Offers (Advertise) hold an address in memory
//! only; bindings and quarantines are what the store keeps.
//!
//! Invariants: an address is held by at most one (MAC, IAID); no I/O and
//! no clock (`now` is passed in); the table never holds more than
//! [`MAX_ENTRIES`] entries, so made-up DUIDs cannot grow it without bound.

use std::collections::HashMap;
use std::net::Ipv6Addr;
use std::time::Duration;

use crate::domain::lease::{Entry6, Millis, Pool6, Reservation6, State};
use crate::domain::MacAddr;

/// Most entries (offers, bindings, quarantines) held at once.
pub const MAX_ENTRIES: usize = 1 << 20;
/// Which range an exchange draws from: an index into the table's pools
/// (the caller picks it from the link the client is on).
pub type PoolIndex = usize;

/// Addresses probed from a hash's starting point before giving up.
const PROBES: u128 = 4096;
/// How long a declined address stays out of use.
pub const QUARANTINE: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Lease6Error {
    #[error("no address left in the range")]
    Exhausted,
    #[error("the address is not this client's")]
    NotYours,
    #[error("the address is outside the configured range")]
    NotOnLink,
}

#[derive(Debug, Default)]
pub struct Lease6Table {
    pools: Vec<Pool6>,
    /// The boot link's pool (the rest are links behind relays).
    link_pool: Option<PoolIndex>,
    by_ip: HashMap<Ipv6Addr, Entry6>,
    by_ia: HashMap<(MacAddr, u32), Ipv6Addr>,
    reserved: HashMap<MacAddr, Ipv6Addr>,
    reserved_ips: HashMap<Ipv6Addr, MacAddr>,
}

impl Lease6Table {
    pub fn new(
        pools: Vec<Pool6>,
        link_pool: Option<PoolIndex>,
        reservations: &[Reservation6],
    ) -> Self {
        Self {
            pools,
            link_pool,
            reserved: reservations.iter().map(|r| (r.mac, r.ip)).collect(),
            reserved_ips: reservations.iter().map(|r| (r.ip, r.mac)).collect(),
            ..Self::default()
        }
    }

    pub fn pools(&self) -> &[Pool6] {
        &self.pools
    }

    /// The machine whose SLAAC address `ip` is on a relayed link: its
    /// interface identifier is the EUI-64 of a MAC that holds a bound,
    /// unexpired lease in the same prefix. (The server sees no neighbour
    /// entry for an address behind a router; on the boot link the kernel's
    /// entry is the evidence instead, so this never applies there.)
    pub fn relayed_slaac(&self, ip: Ipv6Addr, now: Millis) -> Option<MacAddr> {
        let (i, pool) = self
            .pools
            .iter()
            .enumerate()
            .find(|(_, p)| p.prefix.contains(&ip))?;
        if Some(i) == self.link_pool {
            return None;
        }
        let mac = MacAddr::from_eui64(ip)?;
        self.by_ia
            .iter()
            .filter(|((m, _), _)| *m == mac)
            .filter_map(|(_, leased)| self.by_ip.get(leased))
            .any(|e| e.state == State::Bound && e.live(now) && pool.prefix.contains(&e.ip))
            .then_some(mac)
    }

    /// The pool whose prefix holds `link` (a relay's link-address).
    pub fn pool_on(&self, link: Ipv6Addr) -> Option<PoolIndex> {
        self.pools.iter().position(|p| p.prefix.contains(&link))
    }

    /// Puts back a lease the store kept.
    pub fn restore(&mut self, entry: Entry6) {
        self.insert(entry);
    }

    pub fn get(&self, ip: Ipv6Addr) -> Option<&Entry6> {
        self.by_ip.get(&ip)
    }

    /// The MAC holding `ip` (offered or bound, expired or not).
    pub fn mac_of(&self, ip: Ipv6Addr) -> Option<MacAddr> {
        self.by_ip.get(&ip).and_then(|e| e.mac)
    }

    /// The MAC holding a bound, unexpired lease on `ip`.
    pub fn bound_mac(&self, ip: Ipv6Addr, now: Millis) -> Option<MacAddr> {
        self.by_ip
            .get(&ip)
            .filter(|e| e.state == State::Bound && e.live(now))
            .and_then(|e| e.mac)
    }

    /// Every lease, by address.
    pub fn entries(&self) -> Vec<Entry6> {
        let mut all: Vec<Entry6> = self.by_ip.values().cloned().collect();
        all.sort_by_key(|e| e.ip);
        all
    }

    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }

    /// Whether `ip` is in one of the configured ranges or reserved (a
    /// Renew's "ours").
    pub fn serves(&self, ip: Ipv6Addr) -> bool {
        self.reserved_ips.contains_key(&ip) || self.pools.iter().any(|p| in_range(p, ip))
    }

    fn available_to(&self, ip: Ipv6Addr, mac: MacAddr, iaid: u32, now: Millis) -> bool {
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
            Some(e) => (e.mac == Some(mac) && e.iaid == iaid) || !e.live(now),
        }
    }

    /// The address for (mac, iaid) on `pool`'s link: the one it holds
    /// there, its reservation (for an IA that holds nothing else), else a
    /// hashed pick from the range.
    fn choose(
        &self,
        mac: MacAddr,
        iaid: u32,
        pool: Option<PoolIndex>,
        now: Millis,
    ) -> Result<Ipv6Addr, Lease6Error> {
        let pool = pool.and_then(|i| self.pools.get(i));
        let on_link = |ip: Ipv6Addr| pool.is_some_and(|p| p.prefix.contains(&ip));
        if let Some(&ip) = self.by_ia.get(&(mac, iaid)) {
            if self.available_to(ip, mac, iaid, now) && self.serves(ip) && on_link(ip) {
                return Ok(ip);
            }
        }
        if let Some(&ip) = self.reserved.get(&mac) {
            if self.available_to(ip, mac, iaid, now) && (pool.is_none() || on_link(ip)) {
                return Ok(ip);
            }
        }
        let pool = pool.ok_or(Lease6Error::Exhausted)?;
        let (start, end) = (u128::from(pool.range_start), u128::from(pool.range_end));
        let size = end - start + 1;
        let first = hash(mac, iaid) % size;
        (0..size.min(PROBES))
            .map(|step| Ipv6Addr::from(start + (first + step) % size))
            .find(|ip| self.available_to(*ip, mac, iaid, now))
            .ok_or(Lease6Error::Exhausted)
    }

    /// An address for a Solicit, held until `now + hold` (a binding the IA
    /// already has is kept as it is).
    pub fn offer(
        &mut self,
        mac: MacAddr,
        iaid: u32,
        pool: Option<PoolIndex>,
        now: Millis,
        hold: Duration,
    ) -> Result<Ipv6Addr, Lease6Error> {
        let ip = self.choose(mac, iaid, pool, now)?;
        let bound = self
            .by_ip
            .get(&ip)
            .is_some_and(|e| e.state == State::Bound && e.mac == Some(mac) && e.live(now));
        if !bound {
            if self.by_ip.len() >= MAX_ENTRIES && !self.by_ip.contains_key(&ip) {
                return Err(Lease6Error::Exhausted);
            }
            self.insert(Entry6 {
                ip,
                mac: Some(mac),
                iaid,
                state: State::Offered,
                expires_at: now + hold.as_millis() as i64,
            });
        }
        Ok(ip)
    }

    /// Binds an address to (mac, iaid) for the pool's lease time: `asked`
    /// when the client names one (Request, Renew, Rebind) and it is its to
    /// take on `pool`'s link, else the address [`Self::offer`] would pick.
    pub fn bind(
        &mut self,
        mac: MacAddr,
        iaid: u32,
        asked: Option<Ipv6Addr>,
        pool: Option<PoolIndex>,
        now: Millis,
    ) -> Result<Entry6, Lease6Error> {
        let link = pool.and_then(|i| self.pools.get(i));
        // Another link's address (unless it is this machine's reservation).
        let elsewhere = |ip: Ipv6Addr| {
            link.is_some_and(|p| !p.prefix.contains(&ip)) && self.reserved.get(&mac) != Some(&ip)
        };
        let ip = match asked {
            Some(ip) if !self.serves(ip) || elsewhere(ip) => return Err(Lease6Error::NotOnLink),
            Some(ip) if !self.available_to(ip, mac, iaid, now) => {
                return Err(Lease6Error::NotYours)
            }
            Some(ip) => ip,
            None => self.choose(mac, iaid, pool, now)?,
        };
        if self.by_ip.len() >= MAX_ENTRIES && !self.by_ip.contains_key(&ip) {
            return Err(Lease6Error::Exhausted);
        }
        let entry = Entry6 {
            ip,
            mac: Some(mac),
            iaid,
            state: State::Bound,
            expires_at: now + self.lease_time(pool).as_millis() as i64,
        };
        self.insert(entry.clone());
        Ok(entry)
    }

    /// The lease time of bindings on `pool`'s link (an hour without a
    /// pool, for reservations alone).
    pub fn lease_time(&self, pool: Option<PoolIndex>) -> Duration {
        pool.and_then(|i| self.pools.get(i))
            .map_or(Duration::from_secs(3600), |p| p.lease_time)
    }

    /// A Release: frees `ip` when `mac` holds it. Returns whether it did.
    pub fn release(&mut self, mac: MacAddr, ip: Ipv6Addr) -> bool {
        match self.by_ip.get(&ip) {
            Some(e) if e.mac == Some(mac) => {
                self.remove(ip);
                true
            }
            _ => false,
        }
    }

    /// A Decline: `mac` found `ip` in use; it is quarantined for
    /// [`QUARANTINE`]. Returns the quarantine entry.
    pub fn decline(&mut self, mac: MacAddr, ip: Ipv6Addr, now: Millis) -> Option<Entry6> {
        let e = self.by_ip.get(&ip).filter(|e| e.mac == Some(mac))?.clone();
        self.remove(ip);
        let quarantined = Entry6 {
            ip,
            mac: None,
            iaid: e.iaid,
            state: State::Declined,
            expires_at: now + QUARANTINE.as_millis() as i64,
        };
        self.insert(quarantined.clone());
        Some(quarantined)
    }

    /// Forgets offers nobody took up and expired quarantines; returns how
    /// many went.
    pub fn expire(&mut self, now: Millis) -> usize {
        let gone: Vec<Ipv6Addr> = self
            .by_ip
            .values()
            .filter(|e| e.state != State::Bound && !e.live(now))
            .map(|e| e.ip)
            .collect();
        for ip in &gone {
            self.remove(*ip);
        }
        gone.len()
    }

    fn insert(&mut self, entry: Entry6) {
        if let Some(old) = self.by_ip.get(&entry.ip).cloned() {
            if let Some(mac) = old.mac {
                self.by_ia.remove(&(mac, old.iaid));
            }
        }
        if let Some(mac) = entry.mac {
            if let Some(previous) = self.by_ia.insert((mac, entry.iaid), entry.ip) {
                if previous != entry.ip {
                    // The IA moved (a reservation appeared): its old offer
                    // goes; an old binding stays until it expires.
                    if self
                        .by_ip
                        .get(&previous)
                        .is_some_and(|e| e.state == State::Offered)
                    {
                        self.by_ip.remove(&previous);
                    }
                }
            }
        }
        self.by_ip.insert(entry.ip, entry);
    }

    fn remove(&mut self, ip: Ipv6Addr) -> Option<Entry6> {
        let e = self.by_ip.remove(&ip)?;
        if let Some(mac) = e.mac {
            if self.by_ia.get(&(mac, e.iaid)) == Some(&ip) {
                self.by_ia.remove(&(mac, e.iaid));
            }
        }
        Some(e)
    }
}

fn in_range(p: &Pool6, ip: Ipv6Addr) -> bool {
    (p.range_start..=p.range_end).contains(&ip)
}

/// FNV-1a over the MAC and the IAID: stable across restarts and builds
/// (std's hasher is randomly keyed).
fn hash(mac: MacAddr, iaid: u32) -> u128 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in mac.0.iter().chain(iaid.to_be_bytes().iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    u128::from(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);
    /// The boot link's pool.
    const P: Option<PoolIndex> = Some(0);

    fn mac(n: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0, 0, 0, n])
    }

    fn table(size: u128) -> Lease6Table {
        let start: Ipv6Addr = "fd00:77::1000".parse().unwrap();
        Lease6Table::new(
            vec![Pool6 {
                prefix: "fd00:77::/64".parse().unwrap(),
                range_start: start,
                range_end: Ipv6Addr::from(u128::from(start) + size - 1),
                lease_time: HOUR,
            }],
            P,
            &[],
        )
    }

    #[test]
    fn the_same_ia_gets_the_same_address_and_another_ia_another() {
        let mut t = table(4096);
        let a = t.offer(mac(1), 1, P, 0, HOUR).unwrap();
        assert_eq!(t.bind(mac(1), 1, Some(a), P, 0).unwrap().ip, a);
        assert_eq!(t.offer(mac(1), 1, P, 10, HOUR).unwrap(), a);
        let b = t.bind(mac(1), 2, None, P, 0).unwrap().ip;
        assert_ne!(a, b);
        // A fresh table (a restart without the offers) picks the same.
        let mut fresh = table(4096);
        assert_eq!(fresh.offer(mac(1), 1, P, 0, HOUR).unwrap(), a);
    }

    #[test]
    fn an_address_is_never_given_to_two_machines() {
        let mut t = table(8);
        let mut seen = std::collections::HashSet::new();
        for n in 0..8 {
            let ip = t.bind(mac(n), 0, None, P, 0).unwrap().ip;
            assert!(seen.insert(ip), "{ip} twice");
        }
        assert_eq!(t.bind(mac(9), 0, None, P, 0), Err(Lease6Error::Exhausted));
        let taken = *seen.iter().next().unwrap();
        let owner = t.mac_of(taken).unwrap();
        let other = if owner == mac(0) { mac(1) } else { mac(0) };
        assert_eq!(
            t.bind(other, 0, Some(taken), P, 0),
            Err(Lease6Error::NotYours)
        );
        assert_eq!(
            t.bind(other, 0, Some("2001:db8::1".parse().unwrap()), P, 0),
            Err(Lease6Error::NotOnLink)
        );
        // Expired bindings are free again.
        let later = HOUR.as_millis() as i64 + 1;
        assert!(t.bind(mac(9), 0, None, P, later).is_ok());
    }

    #[test]
    fn reservations_release_decline_and_expiry() {
        let reserved: Ipv6Addr = "fd00:77::10".parse().unwrap();
        let mut t = Lease6Table::new(
            table(16).pools.clone(),
            P,
            &[Reservation6 {
                mac: mac(1),
                ip: reserved,
            }],
        );
        assert_eq!(t.bind(mac(1), 7, None, P, 0).unwrap().ip, reserved);
        assert_ne!(t.bind(mac(1), 8, None, P, 0).unwrap().ip, reserved);
        assert_eq!(
            t.bind(mac(2), 0, Some(reserved), P, 0),
            Err(Lease6Error::NotYours)
        );
        assert_eq!(t.bound_mac(reserved, 1), Some(mac(1)));
        assert!(!t.release(mac(2), reserved));
        assert!(t.release(mac(1), reserved));
        assert_eq!(t.bound_mac(reserved, 1), None);

        let ip = t.bind(mac(3), 0, None, P, 0).unwrap().ip;
        let q = t.decline(mac(3), ip, 0).unwrap();
        assert_eq!((q.mac, q.state), (None, State::Declined));
        assert_ne!(t.bind(mac(3), 0, None, P, 1).unwrap().ip, ip);

        let offered = t.offer(mac(4), 0, P, 0, Duration::from_secs(60)).unwrap();
        assert_eq!(t.expire(61_000), 1, "the offer goes, bindings stay");
        assert_eq!(t.get(offered), None);
    }
}

#[cfg(test)]
mod relayed_tests {
    use super::*;

    #[test]
    fn a_slaac_address_behind_a_relay_is_its_leaseholders_only() {
        let pool = |prefix: &str, start: &str, end: &str| Pool6 {
            prefix: prefix.parse().unwrap(),
            range_start: start.parse().unwrap(),
            range_end: end.parse().unwrap(),
            lease_time: Duration::from_secs(3600),
        };
        let mut t = Lease6Table::new(
            vec![
                pool("fd00:77::/64", "fd00:77::1000", "fd00:77::1fff"),
                pool("fd00:88::/64", "fd00:88::100", "fd00:88::1ff"),
            ],
            Some(0),
            &[],
        );
        let m = MacAddr([0x52, 0x54, 0, 0, 0xe6, 0x11]);
        let slaac =
            |prefix: &str| -> Ipv6Addr { format!("{prefix}5054:ff:fe00:e611").parse().unwrap() };
        assert_eq!(t.relayed_slaac(slaac("fd00:88::"), 0), None, "no lease yet");
        t.bind(m, 1, None, Some(1), 0).unwrap();
        assert_eq!(t.relayed_slaac(slaac("fd00:88::"), 1), Some(m));
        assert_eq!(
            t.relayed_slaac(slaac("fd00:77::"), 1),
            None,
            "the boot link has neighbour entries instead"
        );
        assert_eq!(t.relayed_slaac(slaac("fd00:99::"), 1), None, "no such link");
        assert_eq!(
            t.relayed_slaac("fd00:88::5054:ff:fe00:e612".parse().unwrap(), 1),
            None,
            "another MAC's identifier"
        );
        assert_eq!(
            t.relayed_slaac(slaac("fd00:88::"), 3_600_001),
            None,
            "expired"
        );
    }
}
