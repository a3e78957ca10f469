//! Throughput runs against the real server on loopback: Kea's perfdhcp and
//! the boot-storm simulator. Their assertions are about speed (no exchange
//! dropped at perfdhcp's rate; fifty machines through the whole flow within
//! the deadline), so each must have the machine to itself: not beside the
//! parallel tests of `tests/loopback` (another binary; cargo runs binaries
//! one after another), and not beside each other (see [`alone`]).

#[path = "../common/mod.rs"]
mod common;

mod dashboard;
mod pair;
mod perfdhcp;
mod storm;

/// Held for the whole of each test here. libtest runs a binary's tests in
/// parallel threads; before they shared this binary each was alone in its
/// own, and the storm samples this process's memory as the server's.
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits until no other test of this binary is running.
pub async fn alone() -> tokio::sync::MutexGuard<'static, ()> {
    ALONE.lock().await
}
