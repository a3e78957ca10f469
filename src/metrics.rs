//! Process-wide counters, exported as Prometheus text on `/metrics`.
//!
//! Plain atomics: the packet paths bump them without locks or allocation.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident: $help:literal),* $(,)?) => {
        /// Every counter the server keeps. Each plain field is one Prometheus
        /// counter named `ironboot_<field>_total`.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $(#[doc = $help] pub $name: AtomicU64,)*
            /// DHCP datagrams by message type and outcome.
            pub dhcp_packets: DhcpPackets,
        }

        impl Metrics {
            /// Prometheus text exposition format, version 0.0.4.
            pub fn render(&self) -> String {
                let mut out = String::new();
                $(
                    let name = concat!("ironboot_", stringify!($name), "_total");
                    let _ = writeln!(out, "# HELP {name} {}", $help);
                    let _ = writeln!(out, "# TYPE {name} counter");
                    let _ = writeln!(out, "{name} {}", self.$name.load(Ordering::Relaxed));
                )*
                self.dhcp_packets.render(&mut out);
                out
            }
        }
    };
}

counters! {
    dhcp_received: "DHCP datagrams received",
    dhcp_malformed: "DHCP datagrams dropped because they could not be parsed",
    dhcp_ignored: "DHCP requests deliberately not answered (not PXE, not ours, unknown client)",
    dhcp_replies: "DHCP replies sent",
    dhcp_naks: "DHCPNAK replies sent",
    dhcp_declines: "DHCPDECLINE messages received (address quarantined)",
    dhcp_pool_exhausted: "DISCOVERs left unanswered because the subnet had no free address",
    dhcp_new_clients_limited: "DISCOVERs from never-seen MACs left unanswered over dhcp.new_clients_per_minute (per relay or segment) or dhcp.new_clients_per_minute_total",
    dhcp_send_errors: "DHCP replies that failed to send",
    dhcp_partner_half: "DHCP requests left to the HA partner (clients of its half, while it is there)",
    ra_sent: "IPv6 router advertisements sent",
    dhcp6_received: "DHCPv6 datagrams received",
    dhcp6_malformed: "DHCPv6 datagrams dropped because they could not be parsed",
    dhcp6_no_mac: "DHCPv6 requests left unanswered because no MAC could be learnt (a DUID alone is never an identity)",
    dhcp6_ignored: "DHCPv6 requests deliberately not answered (not booting, not known, another server's, over the new-client rate)",
    dhcp6_replies: "DHCPv6 Advertise and Reply messages sent",
    dhcp6_no_addrs: "IA_NAs answered NoAddrsAvail (the range had no free address)",
    dhcp6_send_errors: "DHCPv6 replies that failed to send (or whose lease was not committed)",
    tftp_requests: "TFTP read requests received",
    tftp_malformed: "TFTP datagrams dropped because they could not be parsed",
    tftp_completed: "TFTP transfers completed",
    tftp_failed: "TFTP transfers that failed or timed out",
    tftp_refused: "TFTP requests refused (not found, access violation, busy)",
    tftp_bytes: "TFTP payload bytes sent in completed transfers",
    ledger_dropped: "Ledger events dropped because the writer queue was full",
    http_artifact_bytes: "Boot artifact bytes sent over HTTP (kernels, initrds, root filesystems, installers)",
    http_artifacts: "Boot artifact downloads over HTTP (whole or ranges)",
    http_connections_refused: "HTTP connections closed at once: over http.max_connections or http.max_connections_per_address",
    boot_unbound: "Boot-path requests refused because their source address is not bound to the machine they name (scripts, GRUB configs, configs, confirmations, ONIE, ZTP)",
    boot_token_refused: "Configs and confirmations refused for an unknown, expired, replayed or unbound boot token",
    nbd_connections: "NBD connections accepted",
    nbd_refused: "NBD connections closed at once (over nbd.max_connections) or ended for a protocol violation",
    nbd_exports_unknown: "NBD export names asked for that name no artifact in the store",
    nbd_bytes: "Bytes of root images read over NBD",
    nbd_reads: "NBD read requests answered with data",
}

/// DHCP message type names by their option 53 code (0: not known).
const DHCP_TYPES: [&str; 9] = [
    "unknown", "discover", "offer", "request", "decline", "ack", "nak", "release", "inform",
];
/// Outcomes: 0 ignored (no reply), 1-8 the reply's type, 9 malformed.
const OUTCOMES: usize = 10;

/// DHCP datagrams received, by their message type and what came of them:
/// the type of the reply (`offer`, `ack`, `nak`), `ignored`, or
/// `malformed` (dropped before its type was known).
#[derive(Debug, Default)]
pub struct DhcpPackets {
    counts: [[AtomicU64; OUTCOMES]; DHCP_TYPES.len()],
}

impl DhcpPackets {
    /// One datagram of type `request` (option 53 code) answered with a
    /// reply of type `reply` (`None`: not answered).
    pub fn answered(&self, request: u8, reply: Option<u8>) {
        let t = if (request as usize) < DHCP_TYPES.len() {
            request as usize
        } else {
            0
        };
        let o = match reply {
            Some(r) if (1..=8).contains(&r) => r as usize,
            Some(_) | None => 0,
        };
        self.counts[t][o].fetch_add(1, Ordering::Relaxed);
    }

    /// A datagram that could not be parsed.
    pub fn malformed(&self) {
        self.counts[0][OUTCOMES - 1].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, request: &str, outcome: &str) -> u64 {
        let t = DHCP_TYPES.iter().position(|n| *n == request);
        let o = match outcome {
            "ignored" => Some(0),
            "malformed" => Some(OUTCOMES - 1),
            other => DHCP_TYPES.iter().position(|n| *n == other),
        };
        match (t, o) {
            (Some(t), Some(o)) => self.counts[t][o].load(Ordering::Relaxed),
            _ => 0,
        }
    }

    fn render(&self, out: &mut String) {
        let name = "ironboot_dhcp_packets_total";
        let _ = writeln!(
            out,
            "# HELP {name} DHCP datagrams received, by message type and outcome (the reply's type, ignored, malformed)"
        );
        let _ = writeln!(out, "# TYPE {name} counter");
        for (t, row) in self.counts.iter().enumerate() {
            for (o, count) in row.iter().enumerate() {
                let n = count.load(Ordering::Relaxed);
                if n == 0 {
                    continue;
                }
                let outcome = match o {
                    0 => "ignored",
                    o if o == OUTCOMES - 1 => "malformed",
                    o => DHCP_TYPES[o],
                };
                let _ = writeln!(
                    out,
                    "{name}{{type=\"{}\",outcome=\"{outcome}\"}} {n}",
                    DHCP_TYPES[t]
                );
            }
        }
    }
}

/// The message type (option 53) of an encoded DHCP message, if it has one.
pub fn dhcp_message_type(bytes: &[u8]) -> Option<u8> {
    let mut i = 240; // fixed header (236) and the magic cookie
    while i < bytes.len() {
        match bytes[i] {
            0 => i += 1,
            255 => return None,
            code => {
                let len = *bytes.get(i + 1)? as usize;
                if code == 53 && len == 1 {
                    return bytes.get(i + 2).copied();
                }
                i += 2 + len;
            }
        }
    }
    None
}

/// Writes a gauge family: `# HELP`, `# TYPE`, one line per label set.
pub fn write_gauge(
    out: &mut String,
    name: &str,
    help: &str,
    samples: &[(Vec<(&str, String)>, u64)],
) {
    write_family(out, name, help, "gauge", samples);
}

/// Writes a counter family (values computed elsewhere, e.g. from SQLite).
pub fn write_counter(
    out: &mut String,
    name: &str,
    help: &str,
    samples: &[(Vec<(&str, String)>, u64)],
) {
    write_family(out, name, help, "counter", samples);
}

fn write_family(
    out: &mut String,
    name: &str,
    help: &str,
    kind: &str,
    samples: &[(Vec<(&str, String)>, u64)],
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        let _ = writeln!(out, "{name}{{{}}} {value}", labels.join(","));
    }
}

/// A label value as the text format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
