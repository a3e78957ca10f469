//! An HA pair on one segment (`[dhcp] peer`, with `[store] shared`): two
//! servers with the same subnets both answer, each the clients of its half
//! ([`half_of`], a hash of the MAC), and each answers the other's half too
//! while the other is gone.
//!
//! Invariants:
//! - No address goes to two clients: a new address is always of its
//!   client's half (an offset of that parity in the range, see
//!   `clients::leases`), whichever server gives it; a server that takes
//!   its partner's half first adopts the partner's bindings of that half
//!   from the database, so it renews them rather than giving them away.
//! - "Gone" is the database's word: the partner's connection (holding its
//!   per-server lock, `Store::server_alive`) is closed, so it stopped, died
//!   or was fenced (a server whose claim breaks exits). The takeover waits
//!   [`TAKEOVER_GRACE`] after that, longer than a fenced server takes to
//!   stop, so the two never answer one half at once; the partner's half is
//!   given back as soon as its connection is there again (a restarted
//!   partner loads every lease at start, these included, and answers its
//!   half only [`GIVE_BACK_WAIT`] after it started, when the other has
//!   stopped covering it).
//!
//! Deliberately absent: a partner that hangs with its connection open
//! (stopped process, dead disk) keeps its half until it is killed; the
//! heartbeat in `servers` shows it (`ironboot status`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::clients::Clients;
use crate::domain::lease::half_of;
use crate::domain::MacAddr;
use crate::store::Store;

/// How often a server asks whether its partner holds its connection.
pub const PEER_CHECK_EVERY: Duration = Duration::from_millis(250);

/// How long after the partner's connection closed its half is taken: more
/// than a server whose claim was cut takes to notice and stop (its check
/// runs every second and fails at once on a closed connection, see `app`).
pub const TAKEOVER_GRACE: Duration = Duration::from_millis(1200);

/// One server's side of the pair.
#[derive(Debug)]
pub struct Pair {
    /// This server's half: 0 when its name sorts before the partner's.
    mine: u8,
    peer: String,
    /// The partner is gone: its half is answered here too.
    covering: AtomicBool,
    /// This server answers its own half: from [`GIVE_BACK_WAIT`] after it
    /// started, once a partner that covered for it has seen it back.
    ready: AtomicBool,
}

/// How long a server that starts leaves its own half to a partner that may
/// still cover it: longer than the partner takes to see it back.
pub const GIVE_BACK_WAIT: Duration = Duration::from_millis(1200);

impl Pair {
    pub fn new(me: &str, peer: &str) -> Self {
        Self {
            mine: u8::from(me > peer),
            peer: peer.to_string(),
            covering: AtomicBool::new(false),
            ready: AtomicBool::new(false),
        }
    }

    /// Whether this server answers `mac` now.
    pub fn answers(&self, mac: MacAddr) -> bool {
        if half_of(mac) == self.mine {
            self.ready.load(Ordering::Acquire)
        } else {
            self.covering.load(Ordering::Acquire)
        }
    }

    /// The partner's `server_name`.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Whether this server answers the partner's half too.
    pub fn covering(&self) -> bool {
        self.covering.load(Ordering::Acquire)
    }

    fn partner_half(&self) -> u8 {
        1 - self.mine
    }
}

/// Watches the partner every [`PEER_CHECK_EVERY`]: takes its half (after
/// [`TAKEOVER_GRACE`], adopting its bindings) when it is gone, gives it
/// back when it returns.
pub async fn watch(
    pair: Arc<Pair>,
    store: Store,
    clients: Clients,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        _ = tokio::time::sleep(GIVE_BACK_WAIT) => {}
    }
    pair.ready.store(true, Ordering::Release);
    let mut tick = tokio::time::interval(PEER_CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let alive = match store.server_alive(&pair.peer).await {
            Ok(alive) => alive,
            Err(e) => {
                warn!(error = %e, peer = %pair.peer, "could not ask whether the HA partner is there");
                continue;
            }
        };
        match (alive, pair.covering()) {
            (true, true) => {
                pair.covering.store(false, Ordering::Release);
                info!(peer = %pair.peer, "HA partner back: its half of the clients is its own again");
            }
            (false, false) => {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(TAKEOVER_GRACE) => {}
                }
                if store.server_alive(&pair.peer).await.unwrap_or(true) {
                    continue;
                }
                let leases = match store.load_leases().await {
                    Ok(l) => l,
                    Err(e) => {
                        warn!(error = %e, "the partner's leases not read; taking its half later");
                        continue;
                    }
                };
                let adopted = clients.pool().adopt_half(pair.partner_half(), leases);
                pair.covering.store(true, Ordering::Release);
                warn!(peer = %pair.peer, adopted, "HA partner gone: answering its half of the clients too");
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_sides_split_every_client_and_cover_each_other() {
        let (a, b) = (Pair::new("boot-a", "boot-b"), Pair::new("boot-b", "boot-a"));
        let mac = MacAddr([0x52, 0x54, 0, 0, 2, 1]);
        assert!(
            !a.answers(mac) && !b.answers(mac),
            "nobody before the give-back wait"
        );
        a.ready.store(true, Ordering::Release);
        b.ready.store(true, Ordering::Release);
        let macs = (0..=255u8).map(|n| MacAddr([0x52, 0x54, 0, 0, 2, n]));
        for mac in macs.clone() {
            assert!(
                a.answers(mac) ^ b.answers(mac),
                "{mac}: exactly one answers"
            );
        }
        b.covering.store(true, Ordering::Release);
        assert!(macs.clone().all(|m| b.answers(m)), "B covers A's half");
        assert!(macs.filter(|m| a.answers(*m)).count() > 64);
    }
}
