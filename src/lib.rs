//! ironboot: a live-boot provisioning server for bare metal.
//!
//! Code map (protocols at the edges, a pure core in the middle):
//!
//! - [`config`]: the TOML file, `IRONBOOT_*` environment and flags, merged and
//!   validated into typed settings. The only place that reads configuration.
//! - [`app`]: binds every socket first (failing fast with the address), then
//!   runs each service under one shutdown signal and waits for all of them.
//! - [`artifact_cache`]: `ironboot artifact-cache`, a satellite's
//!   read-through cache of `/artifacts/sha256/` from a primary server:
//!   verified fills, bounded size, least recently used evicted.
//! - [`dhcp`]: DHCPv4 (full, proxy, relayed) and IPv6 router advertisements
//!   (quiet beside IPv4, managed on IPv6-only links). Parsing and
//!   classification are pure.
//! - [`dhcp6`]: DHCPv6 for IPv6-only boot networks: safe decoding and relay
//!   wrapping, the MAC of a client without one (option 79, DUID-LL/LLT,
//!   EUI-64), PXEv6/HTTPv6/iPXE answers.
//! - [`tftp`]: read-only TFTP with RFC 2347/2348/2349/7440 options;
//!   [`bootfiles`]: the loader binaries it (and `/ipxe/`) serves by name;
//!   [`netboot`]: per-machine GRUB configs, artifacts for GRUB and ONIE
//!   installers, the same over TFTP and HTTP.
//! - [`boot`]: pure decisions: which generation a machine boots, selectors,
//!   membership, identity by switch port, loader choice, claims.
//! - [`fleet`]: the fleet as one pure value (machines, groups, generations,
//!   open boots, rollouts) and [`fleet::decide`], the one decision every
//!   path asks; [`fleet::changes`]: the operator's change values.
//! - [`inventory`]: the fleet in memory for the boot path; every operator
//!   change works on a copy, commits, then shows.
//! - [`rollout`]: rollouts and the last-known-good watchdog as pure state
//!   machines ([`rollout::engine::Rollouts`] is what the boot path asks),
//!   restored from their rows, and the reboot hook.
//! - [`clients`]: the clients DHCP knows (leases, DHCPv6 leases, known MACs,
//!   what each last sent), one table the other services read.
//! - [`images`]: the content-addressed store of boot artifacts and manifests.
//! - [`render`]: minijinja templates from `boot-templates/`, strict; the one
//!   context they see ([`render::context`]) and the template a loader renders.
//! - [`http`]: axum routes: boot endpoints, artifacts, `/api/v1/`, health.
//! - [`binding`]: who is at a source address (lease, reservation, neighbour
//!   entry): the evidence a boot-path request needs to act for a machine;
//!   [`neigh6`]: the kernel's IPv6 neighbour table through rtnetlink.
//! - [`auth`]: API bearer tokens; [`secret`]: how tokens are made and
//!   hashed; [`cli`]: the client subcommands.
//! - [`desired`]: `ironboot apply`'s fleet file (YAML with positions) and
//!   the pure plan from desired state and current state to changes.
//! - [`store`]: the only module that runs SQL: typed reads, typed writes on
//!   a transaction ([`store::tx::Tx`]), embedded migrations, the batching
//!   writer (group commit for what a reply promises), WAL checkpoints,
//!   retention. Its interface is the seam for a second backend.
//! - [`standby`]: a server waiting on a PostgreSQL database another serves
//!   from, copying its artifacts, taking over when its claim is released.
//! - [`ledger`]: the non-blocking handle protocol servers record events with.
//! - [`domain`]: the types everything shares, each with one spelling: MAC,
//!   firmware architecture, CPU, slot, kind, boot and lease state, and what
//!   a fleet change writes ([`domain::fleet_rows`]).
//! - [`explain`]: what a request would be served and why, from the boot
//!   path's own decisions (selectors and membership are in [`boot`]).
//! - [`metrics`]: lock-free counters; [`netif`]: the host's interfaces;
//!   [`per_address`]: caps on what one client address holds at once.
//! - [`storm`]: the boot-storm simulator behind `ironboot-storm` (a client;
//!   nothing in the server uses it).
//!
//! Architecture invariants: the modules form a DAG, at every level
//! (`architecture_tests.rs`); no packet path awaits a SQLite write. What DHCP and
//! TFTP read is in memory; what they record goes through [`ledger::Ledger`].
//! Deliberately absent: any conflict check (ping) before an offer, which
//! would serialise concurrent DISCOVERs.

pub mod app;
pub mod artifact_cache;
pub mod auth;
pub mod binding;
pub mod bmc;
pub mod boot;
pub mod bootfiles;
pub mod cli;
pub mod clients;
pub mod config;
pub mod desired;
pub mod dhcp;
pub mod dhcp6;
pub mod domain;
pub mod explain;
pub mod fleet;
pub mod http;
pub mod images;
pub mod inventory;
pub mod ledger;
pub mod metrics;
pub mod nbd;
pub mod neigh6;
pub mod netboot;
pub mod netif;
pub mod per_address;
pub mod render;
pub mod rollout;
pub mod root_reads;
pub mod secret;
pub mod standby;
pub mod store;
pub mod storm;
pub mod tftp;

#[cfg(test)]
mod architecture_tests;
