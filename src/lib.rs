//! ironboot: a live-boot provisioning server for bare metal.
//!
//! Code map (protocols at the edges, a pure core in the middle):
//!
//! - [`config`]: the TOML file, `IRONBOOT_*` environment and flags, merged and
//!   validated into typed settings. The only place that reads configuration.
//! - [`app`]: binds every socket first (failing fast with the address), then
//!   runs each service under one shutdown signal and waits for all of them.
//! - [`dhcp`]: DHCPv4 (full, proxy, relayed) and the IPv6 router advertisement
//!   that ends iPXE's SLAAC wait. Parsing and classification are pure.
//! - [`tftp`]: read-only TFTP with RFC 2347/2348/2349/7440 options.
//! - [`http`]: axum routes (`/healthz`, `/metrics`, `/ipxe/`).
//! - [`store`]: SQLite through sqlx, embedded migrations, the batching writer.
//! - [`ledger`]: the non-blocking handle protocol servers record events with.
//! - [`domain`]: MAC addresses, architectures and other parsed newtypes.
//! - [`metrics`]: lock-free counters; [`netif`]: the host's interfaces.
//!
//! Architecture invariant: no packet path awaits a SQLite write. What DHCP and
//! TFTP read is in memory; what they record goes through [`ledger::Ledger`].
//! Deliberately absent: any conflict check (ping) before an offer, which
//! would serialise concurrent DISCOVERs.

pub mod app;
pub mod config;
pub mod dhcp;
pub mod domain;
pub mod http;
pub mod ledger;
pub mod metrics;
pub mod netif;
pub mod store;
pub mod tftp;
