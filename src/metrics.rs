//! Process-wide counters, exported as Prometheus text on `/metrics`.
//!
//! Plain atomics: the packet paths bump them without locks or allocation.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident: $help:literal),* $(,)?) => {
        /// Every counter the server keeps. Each field is one Prometheus counter
        /// named `ironboot_<field>_total`.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $(#[doc = $help] pub $name: AtomicU64,)*
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
    dhcp_send_errors: "DHCP replies that failed to send",
    ra_sent: "IPv6 router advertisements sent",
    tftp_requests: "TFTP read requests received",
    tftp_malformed: "TFTP datagrams dropped because they could not be parsed",
    tftp_completed: "TFTP transfers completed",
    tftp_failed: "TFTP transfers that failed or timed out",
    tftp_refused: "TFTP requests refused (not found, access violation, busy)",
    tftp_bytes: "TFTP payload bytes sent in completed transfers",
    ledger_dropped: "Ledger events dropped because the writer queue was full",
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
