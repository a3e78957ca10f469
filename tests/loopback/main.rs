//! The real server on loopback: DHCP, TFTP, HTTP, the API and the CLI, one
//! module per area. Every test owns its server (in process, or `ironboot`
//! as a child), its ports (all `:0`), its data directory and, for the one
//! test that needs it, its network namespace (`cli`), so libtest runs them
//! in parallel threads like any unit tests.
//!
//! One binary rather than one per file: each integration-test binary links
//! the whole library and its dependencies, which is most of CI's test build.
//! Tests that must have the machine to themselves are not here: the
//! throughput runs (perfdhcp, the storm) and the real VMs.

#[path = "../common/mod.rs"]
mod common;

mod api;
mod apply;
mod artifact_cache;
mod bmc;
mod bmc_ipmi;
mod boot;
mod cli;
mod cli_groups;
mod dashboard;
mod dhcp;
mod dhcp6;
mod nbd;
mod relay_identity;
mod rollout;
mod selectors_boot;
mod servers;
mod store;
mod tftp;
