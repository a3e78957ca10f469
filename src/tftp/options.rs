//! Option negotiation (RFC 2347 framework; blksize RFC 2348, tsize and
//! timeout RFC 2349, windowsize RFC 7440) as a pure function.
//!
//! Invariants: only options the client asked for are answered, in the order
//! it asked; a value the server cannot accept as sent is either lowered to the
//! server's limit (blksize, windowsize: RFC 2348/7440 let the server answer a
//! smaller value) or left out of the OACK (invalid values, unknown options),
//! which tells the client to use the default. Nothing here refuses a transfer.

use std::time::Duration;

use super::codec::{DEFAULT_BLKSIZE, MAX_BLKSIZE};

/// What the server is willing to do for this transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload: the configured cap, already lowered to the path MTU
    /// minus 32 (IP 20 + UDP 8 + TFTP 4) when the MTU is known.
    pub max_blksize: usize,
    pub max_windowsize: u16,
    /// Used when the client does not negotiate `timeout`.
    pub default_timeout: Duration,
    /// The longest `timeout` acknowledged.
    pub max_timeout: Duration,
}

/// The outcome: the parameters of the transfer and the OACK to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub blksize: usize,
    pub windowsize: u16,
    pub timeout: Duration,
    /// Whether the client chose `timeout` (RFC 2349) rather than the default.
    pub timeout_negotiated: bool,
    /// Options acknowledged, in request order; empty means "send no OACK".
    pub oack: Vec<(String, String)>,
}

/// Lowest blksize RFC 2348 allows.
pub const MIN_BLKSIZE: usize = 8;

/// Answers the options `requested` (lower-cased names, as decoded) for a file
/// of `file_size` bytes.
pub fn negotiate(requested: &[(String, String)], limits: Limits, file_size: u64) -> Negotiated {
    let mut out = Negotiated {
        blksize: DEFAULT_BLKSIZE,
        windowsize: 1,
        timeout: limits.default_timeout,
        timeout_negotiated: false,
        oack: Vec::new(),
    };
    let max_blksize = limits.max_blksize.clamp(MIN_BLKSIZE, MAX_BLKSIZE);
    for (name, value) in requested {
        let number = value.trim().parse::<u64>().ok();
        let answer = match (name.as_str(), number) {
            ("blksize", Some(n)) if n >= MIN_BLKSIZE as u64 => {
                out.blksize = n.min(max_blksize as u64) as usize;
                out.blksize.to_string()
            }
            ("windowsize", Some(n)) if n >= 1 => {
                out.windowsize = n.min(u64::from(limits.max_windowsize.max(1))) as u16;
                out.windowsize.to_string()
            }
            ("timeout", Some(n))
                if (1..=255).contains(&n) && Duration::from_secs(n) <= limits.max_timeout =>
            {
                out.timeout = Duration::from_secs(n);
                out.timeout_negotiated = true;
                n.to_string()
            }
            // RFC 2349: in a read request the client sends 0 and the server
            // answers the size.
            ("tsize", Some(_)) => file_size.to_string(),
            _ => continue,
        };
        out.oack.push((name.clone(), answer));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_blksize: 1468,
        max_windowsize: 16,
        default_timeout: Duration::from_secs(2),
        max_timeout: Duration::from_secs(10),
    };

    fn req(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn no_options_means_no_oack_and_defaults() {
        let n = negotiate(&[], LIMITS, 1000);
        assert_eq!(
            n,
            Negotiated {
                blksize: 512,
                windowsize: 1,
                timeout: Duration::from_secs(2),
                timeout_negotiated: false,
                oack: vec![]
            }
        );
    }

    type Pairs = &'static [(&'static str, &'static str)];

    #[test]
    fn table_of_requests() {
        // (requested, blksize, windowsize, timeout s, oack)
        let table: &[(Pairs, usize, u16, u64, Pairs)] = &[
            (&[("blksize", "1468")], 1468, 1, 2, &[("blksize", "1468")]),
            (&[("blksize", "1432")], 1432, 1, 2, &[("blksize", "1432")]),
            // Capped to the limit, answered with the lower value.
            (&[("blksize", "65464")], 1468, 1, 2, &[("blksize", "1468")]),
            (&[("blksize", "99999")], 1468, 1, 2, &[("blksize", "1468")]),
            (&[("blksize", "8")], 8, 1, 2, &[("blksize", "8")]),
            // Invalid: ignored, not answered.
            (&[("blksize", "7")], 512, 1, 2, &[]),
            (&[("blksize", "abc")], 512, 1, 2, &[]),
            (&[("blksize", "")], 512, 1, 2, &[]),
            (&[("windowsize", "8")], 512, 8, 2, &[("windowsize", "8")]),
            (&[("windowsize", "64")], 512, 16, 2, &[("windowsize", "16")]),
            (&[("windowsize", "0")], 512, 1, 2, &[]),
            (&[("timeout", "5")], 512, 1, 5, &[("timeout", "5")]),
            (&[("timeout", "0")], 512, 1, 2, &[]),
            (&[("timeout", "256")], 512, 1, 2, &[]),
            // Longer than the server allows: not acknowledged.
            (&[("timeout", "255")], 512, 1, 2, &[]),
            (&[("tsize", "0")], 512, 1, 2, &[("tsize", "123456")]),
            (&[("multicast", "")], 512, 1, 2, &[]),
            (
                &[
                    ("tsize", "0"),
                    ("blksize", "1468"),
                    ("windowsize", "4"),
                    ("utimeout", "1"),
                ],
                1468,
                4,
                2,
                &[
                    ("tsize", "123456"),
                    ("blksize", "1468"),
                    ("windowsize", "4"),
                ],
            ),
        ];
        for (requested, blksize, windowsize, timeout, oack) in table {
            let n = negotiate(&req(requested), LIMITS, 123_456);
            assert_eq!(n.blksize, *blksize, "{requested:?}");
            assert_eq!(n.windowsize, *windowsize, "{requested:?}");
            assert_eq!(n.timeout, Duration::from_secs(*timeout), "{requested:?}");
            let asked_timeout = oack.iter().any(|(name, _)| *name == "timeout");
            assert_eq!(n.timeout_negotiated, asked_timeout, "{requested:?}");
            assert_eq!(n.oack, req(oack), "{requested:?}");
        }
    }

    #[test]
    fn absurd_limits_are_clamped_to_the_rfc_range() {
        let limits = Limits {
            max_blksize: 1,
            max_windowsize: 0,
            ..LIMITS
        };
        let n = negotiate(&req(&[("blksize", "1468"), ("windowsize", "4")]), limits, 0);
        assert_eq!((n.blksize, n.windowsize), (8, 1));
        let limits = Limits {
            max_blksize: usize::MAX,
            ..LIMITS
        };
        let n = negotiate(&req(&[("blksize", "70000")]), limits, 0);
        assert_eq!(n.blksize, MAX_BLKSIZE);
    }
}
