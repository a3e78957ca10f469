//! End to end: `ironboot serve` inside network namespaces each test creates,
//! against real clients (QEMU guests under BIOS, OVMF and AAVMF, iPXE,
//! busybox, atftp, tftp-hpa, dnsmasq as the site's DHCP server), one module
//! per scenario. Needs root and the packages `.ci/run` installs; without
//! them each test says why and passes as skipped, unless
//! `IRONBOOT_E2E=require`, where that is a failure.
//!
//! The tests take turns ([`lab::Turn`]): one lab at a time, because the
//! guests' deadlines assume the CPUs are theirs. One binary rather than one
//! per scenario: each links the whole library, and the turns keep the runs
//! as apart as separate binaries did.

#[path = "../common/mod.rs"]
mod common;
mod lab;

mod boot;
mod clients;
mod full;
mod ipv6;
mod nbdroot;
mod pair;
mod proxy;
mod rollout;
mod satellite;
mod secureboot;
mod shared;
