//! How fast never-seen clients are taken on: a DISCOVER from a MAC this
//! server does not know yet starts an offer, and (once ACKed, or at once in
//! proxy mode) a machine row. On a hostile segment anyone can send such
//! DISCOVERs from made-up MACs as fast as the wire allows, so new clients are
//! admitted through two token buckets: one per source (the relay's `giaddr`,
//! or the local address a broadcast came in on, i.e. one per segment) and one
//! for the whole server. Known machines never wait on either: a flood of new
//! MACs can slow the arrival of new hardware, never the boot of the fleet.
//!
//! Both buckets hold a minute's worth of tokens, so a cold rack of that many
//! machines is answered at once and the rest at the sustained rate; a client
//! left unanswered sends its DISCOVER again (PXE ROMs retry at 4, 8, 16 and
//! 32 s). The per-source table is capped; when it is full, idle (refilled)
//! buckets are dropped, and a new source beyond the cap shares the
//! overall bucket only.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::domain::lease::Millis;

/// Sources tracked at most (each one bucket, a few dozen bytes).
pub const MAX_SOURCES: usize = 4096;

/// Admission of never-seen clients; see the module docs.
pub struct Newcomers {
    per_source: Rate,
    total: Rate,
    buckets: Mutex<Buckets>,
}

/// Tokens per minute, and as many at most in the bucket; 0 is no limit.
#[derive(Debug, Clone, Copy)]
struct Rate(u32);

#[derive(Default)]
struct Buckets {
    by_source: HashMap<IpAddr, Bucket>,
    total: Option<Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Millis,
}

impl Rate {
    fn unlimited(self) -> bool {
        self.0 == 0
    }

    /// `b` refilled up to `now`.
    fn refill(self, b: Bucket, now: Millis) -> Bucket {
        let elapsed = (now - b.at).max(0) as f64;
        let per_ms = f64::from(self.0) / 60_000.0;
        Bucket {
            tokens: (b.tokens + elapsed * per_ms).min(f64::from(self.0)),
            at: now.max(b.at),
        }
    }

    fn full(self, now: Millis) -> Bucket {
        Bucket {
            tokens: f64::from(self.0),
            at: now,
        }
    }
}

impl Newcomers {
    /// `per_source` and `total` new clients per minute; 0 turns a limit off.
    pub fn new(per_source: u32, total: u32) -> Self {
        Self {
            per_source: Rate(per_source),
            total: Rate(total),
            buckets: Mutex::new(Buckets::default()),
        }
    }

    /// Whether one more never-seen client from `source` is answered now;
    /// takes a token from both buckets when it is.
    pub fn admit(&self, source: impl Into<IpAddr>, now: Millis) -> bool {
        let source = source.into();
        let (per_source, total) = (self.per_source, self.total);
        let mut b = self.buckets.lock().expect("newcomers lock");
        let overall = total.refill(b.total.unwrap_or_else(|| total.full(now)), now);
        if !total.unlimited() && overall.tokens < 1.0 {
            b.total = Some(overall);
            return false;
        }
        if !per_source.unlimited() {
            if b.by_source.len() >= MAX_SOURCES && !b.by_source.contains_key(&source) {
                b.by_source
                    .retain(|_, s| per_source.refill(*s, now).tokens < f64::from(per_source.0));
            }
            if b.by_source.len() < MAX_SOURCES || b.by_source.contains_key(&source) {
                let mine = b
                    .by_source
                    .get(&source)
                    .map(|s| per_source.refill(*s, now))
                    .unwrap_or_else(|| per_source.full(now));
                if mine.tokens < 1.0 {
                    b.by_source.insert(source, mine);
                    b.total = Some(overall);
                    return false;
                }
                b.by_source.insert(
                    source,
                    Bucket {
                        tokens: mine.tokens - 1.0,
                        ..mine
                    },
                );
            }
        }
        b.total = Some(Bucket {
            tokens: overall.tokens - 1.0,
            ..overall
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);

    fn admitted(n: &Newcomers, source: Ipv4Addr, tries: usize, now: Millis) -> usize {
        (0..tries).filter(|_| n.admit(source, now)).count()
    }

    #[test]
    fn a_minutes_worth_at_once_then_the_rate() {
        let n = Newcomers::new(60, 1000);
        assert_eq!(admitted(&n, A, 100, 0), 60, "the burst is a minute's worth");
        assert_eq!(admitted(&n, A, 10, 0), 0);
        assert_eq!(admitted(&n, A, 10, 10_000), 10, "one per second after");
        assert_eq!(
            admitted(&n, B, 100, 10_000),
            60,
            "another segment has its own bucket"
        );
    }

    #[test]
    fn the_total_caps_every_source_together() {
        let n = Newcomers::new(60, 100);
        let from_many: usize = (0..50u8)
            .map(|i| admitted(&n, Ipv4Addr::new(10, 9, i, 1), 10, 0))
            .sum();
        assert_eq!(from_many, 100);
        assert_eq!(admitted(&n, A, 1, 0), 0);
    }

    #[test]
    fn zero_is_no_limit() {
        let n = Newcomers::new(0, 0);
        assert_eq!(admitted(&n, A, 100_000, 0), 100_000);
    }

    #[test]
    fn the_source_table_stays_bounded() {
        let n = Newcomers::new(10, 0);
        for i in 0..(MAX_SOURCES as u32 * 3) {
            n.admit(Ipv4Addr::from(0x0a00_0000 + i), 0);
        }
        assert!(n.buckets.lock().unwrap().by_source.len() <= MAX_SOURCES);
        // Refilled buckets are dropped to make room for new sources.
        assert!(n.admit(Ipv4Addr::new(192, 0, 2, 1), 120_000));
    }
}
