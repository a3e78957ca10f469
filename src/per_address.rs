//! Per-address caps: how many of something (HTTP connections, TFTP
//! transfers) one client address holds at once. A slot gives its place back
//! when dropped, so a cap can never leak on an early return or a panic.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Open things per client address (addresses with none are not kept).
#[derive(Clone, Default)]
pub struct PerAddress(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One open thing counted against its address.
pub struct AddressSlot {
    counts: PerAddress,
    ip: IpAddr,
}

impl PerAddress {
    /// A slot for `ip`, unless it already holds `max`.
    pub fn take(&self, ip: IpAddr, max: usize) -> Option<AddressSlot> {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(ip).or_insert(0);
        if *n >= max {
            if *n == 0 {
                counts.remove(&ip);
            }
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            counts: self.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn slots_are_capped_per_address_and_given_back() {
        let per = super::PerAddress::default();
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = per.take(a, 2).unwrap();
        let _second = per.take(a, 2).unwrap();
        assert!(per.take(a, 2).is_none());
        assert!(
            per.take(b, 2).is_some(),
            "another address has its own count"
        );
        drop(first);
        assert!(per.take(a, 2).is_some());
    }
}
