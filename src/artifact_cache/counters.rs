//! The cache's counters, exported as Prometheus text on its `/metrics`:
//! plain atomics, bumped without locks, as in the server's own counters.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Every counter the cache keeps; each is `ironboot_cache_<field>_total`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests for an artifact the cache held, verified.
    pub hits: AtomicU64,
    /// Requests that went to the upstream (one per fetch: requests that
    /// waited for another's fetch are hits).
    pub misses: AtomicU64,
    /// Bytes stored from the upstream, verified.
    pub bytes_from_upstream: AtomicU64,
    /// Bytes of artifact bodies sent to clients (GET, whole or ranges).
    pub bytes_served: AtomicU64,
    /// Cached files whose bytes no longer hashed to their name (deleted).
    pub corrupt: AtomicU64,
    /// Files deleted to bring the cache within its bound.
    pub evictions: AtomicU64,
    /// Misses refused because the artifact is larger than the whole cache.
    pub too_large: AtomicU64,
    /// Misses the upstream could not fill (not found, down, wrong bytes).
    pub upstream_errors: AtomicU64,
}

impl Counters {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Prometheus text exposition format, version 0.0.4, with the bytes
    /// the cache holds now as a gauge.
    pub fn render(&self, bytes: u64) -> String {
        let counters = [
            (
                &self.hits,
                "hits",
                "Artifact requests served from the cache",
            ),
            (
                &self.misses,
                "misses",
                "Artifact requests that fetched from the upstream",
            ),
            (
                &self.bytes_from_upstream,
                "bytes_from_upstream",
                "Artifact bytes fetched from the upstream and stored, verified",
            ),
            (
                &self.bytes_served,
                "bytes_served",
                "Artifact body bytes sent to clients (whole files and ranges)",
            ),
            (
                &self.corrupt,
                "corrupt",
                "Cached files whose bytes no longer matched their sha256 (deleted, fetched again)",
            ),
            (
                &self.evictions,
                "evictions",
                "Cached files deleted, least recently used first, to stay within --max-size",
            ),
            (
                &self.too_large,
                "too_large",
                "Misses refused (507) for an artifact larger than --max-size",
            ),
            (
                &self.upstream_errors,
                "upstream_errors",
                "Misses the upstream could not fill: not found, unreachable, wrong bytes",
            ),
        ];
        let mut out = String::new();
        for (counter, name, help) in counters {
            let name = format!("ironboot_cache_{name}_total");
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", counter.load(Ordering::Relaxed));
        }
        let name = "ironboot_cache_bytes";
        let _ = writeln!(out, "# HELP {name} Bytes of the artifacts the cache holds");
        let _ = writeln!(out, "# TYPE {name} gauge");
        let _ = writeln!(out, "{name} {bytes}");
        out
    }
}
