//! What the cache knows of its files, in memory: each artifact's size, when
//! it was last used, and what its file looked like when its bytes were last
//! hashed. Pure: no I/O, no clock. Callers stat and hash; the index says
//! whether a file must be hashed again and which files to evict.
//!
//! Invariants: `total` is the sum of the sizes of the entries; `by_use`
//! holds exactly one tick per entry, and ticks only grow, so its first
//! entry is the least recently used. "Last used" is a logical clock (a
//! counter), not wall time: the order is all LRU needs, and two uses in the
//! same clock tick still have an order.

use std::collections::{BTreeMap, HashMap};
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;

use crate::images::Digest;

/// What a file looked like when its bytes were hashed: if any of these
/// changed, the bytes may have, and the file is hashed again before it is
/// served. A change that alters none of them (bit rot under the filesystem,
/// a write that restores the times) goes unseen until the index is rebuilt
/// at the next start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub len: u64,
    /// Modification and status-change times, in nanoseconds.
    pub mtime: i128,
    pub ctime: i128,
    pub inode: u64,
}

impl Stamp {
    pub fn of(meta: &Metadata) -> Self {
        let nanos = |secs: i64, ns: i64| i128::from(secs) * 1_000_000_000 + i128::from(ns);
        Self {
            len: meta.len(),
            mtime: nanos(meta.mtime(), meta.mtime_nsec()),
            ctime: nanos(meta.ctime(), meta.ctime_nsec()),
            inode: meta.ino(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    len: u64,
    /// When it was last used (the key of `by_use`).
    tick: u64,
    /// The file as it was when last hashed and found right; `None` until
    /// then (a file found on disk at start).
    verified: Option<Stamp>,
}

/// The cache's artifacts, by digest and by last use.
#[derive(Debug)]
pub struct Index {
    entries: HashMap<Digest, Entry>,
    by_use: BTreeMap<u64, Digest>,
    /// Bytes of every entry.
    total: u64,
    /// The bound `total` is brought back under after every fill.
    max: u64,
    /// The logical clock: the tick of the latest use.
    clock: u64,
}

impl Index {
    pub fn new(max: u64) -> Self {
        Self {
            entries: HashMap::new(),
            by_use: BTreeMap::new(),
            total: 0,
            max,
            clock: 0,
        }
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    fn contains(&self, digest: &Digest) -> bool {
        self.entries.contains_key(digest)
    }

    /// A file found on disk at start, not yet verified, used now (seed in
    /// order of the files' modification times, oldest first).
    pub fn seed(&mut self, digest: Digest, len: u64) {
        self.put(digest, len, None);
    }

    /// A file whose bytes were just hashed (stored by a fill, or checked)
    /// and found right, as `stamp` says it was before hashing; used now.
    pub fn verified(&mut self, digest: Digest, stamp: Stamp) {
        self.put(digest, stamp.len, Some(stamp));
    }

    /// Whether the file, as it is now (`stamp`), is the one last verified.
    pub fn is_verified(&self, digest: &Digest, stamp: &Stamp) -> bool {
        self.entries
            .get(digest)
            .is_some_and(|e| e.verified.as_ref() == Some(stamp))
    }

    /// Marks a use: the entry becomes the most recently used.
    pub fn touch(&mut self, digest: &Digest) {
        let tick = self.tick();
        if let Some(entry) = self.entries.get_mut(digest) {
            self.by_use.remove(&entry.tick);
            entry.tick = tick;
            self.by_use.insert(tick, *digest);
        }
    }

    /// Forgets an entry (its file was deleted); its size, if it was known.
    pub fn remove(&mut self, digest: &Digest) -> Option<u64> {
        let entry = self.entries.remove(digest)?;
        self.by_use.remove(&entry.tick);
        self.total -= entry.len;
        Some(entry.len)
    }

    /// Takes out the least recently used entries, never `keep`, until the
    /// total is within the bound; the caller deletes their files.
    pub fn evict(&mut self, keep: Option<&Digest>) -> Vec<(Digest, u64)> {
        let mut victims = Vec::new();
        while self.total > self.max {
            let next = self.by_use.values().find(|d| Some(*d) != keep).copied();
            let Some(digest) = next else { break };
            if let Some(len) = self.remove(&digest) {
                victims.push((digest, len));
            }
        }
        victims
    }

    fn put(&mut self, digest: Digest, len: u64, verified: Option<Stamp>) {
        self.remove(&digest);
        let tick = self.tick();
        self.entries.insert(
            digest,
            Entry {
                len,
                tick,
                verified,
            },
        );
        self.by_use.insert(tick, digest);
        self.total += len;
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest([n; 32])
    }

    fn stamp(len: u64) -> Stamp {
        Stamp {
            len,
            mtime: 1_000,
            ctime: 2_000,
            inode: 7,
        }
    }

    fn digests(victims: &[(Digest, u64)]) -> Vec<Digest> {
        victims.iter().map(|(d, _)| *d).collect()
    }

    #[test]
    fn evicts_least_recently_used_first_down_to_the_bound() {
        let mut index = Index::new(250);
        for n in 1..=3 {
            index.verified(d(n), stamp(100));
        }
        assert_eq!(index.total(), 300);

        let victims = index.evict(Some(&d(3)));

        assert_eq!(victims, [(d(1), 100)]);
        assert_eq!((index.total(), index.len()), (200, 2));
        assert!(!index.contains(&d(1)));
    }

    #[test]
    fn a_use_moves_an_entry_to_the_back() {
        let mut index = Index::new(150);
        for n in 1..=3 {
            index.verified(d(n), stamp(100));
        }
        index.touch(&d(1));

        assert_eq!(digests(&index.evict(None)), [d(2), d(3)]);
        assert!(index.contains(&d(1)));
    }

    #[test]
    fn the_entry_kept_is_never_evicted_even_alone_over_the_bound() {
        let mut index = Index::new(50);
        index.verified(d(1), stamp(100));
        index.verified(d(2), stamp(100));

        assert_eq!(digests(&index.evict(Some(&d(1)))), [d(2)]);
        assert!(index.evict(Some(&d(1))).is_empty());
        assert_eq!(index.total(), 100);
    }

    #[test]
    fn seeded_entries_are_evicted_in_seed_order() {
        let mut index = Index::new(100);
        index.seed(d(9), 100);
        index.seed(d(4), 100);
        index.seed(d(6), 100);

        assert_eq!(digests(&index.evict(None)), [d(9), d(4)]);
    }

    #[test]
    fn a_file_is_verified_only_as_it_was_when_hashed() {
        let mut index = Index::new(1 << 20);
        let hashed = stamp(100);
        index.seed(d(1), 100);
        assert!(!index.is_verified(&d(1), &hashed), "seeded: not hashed yet");

        index.verified(d(1), hashed);
        assert!(index.is_verified(&d(1), &hashed));
        let changed = [
            Stamp { len: 99, ..hashed },
            Stamp {
                mtime: 1_001,
                ..hashed
            },
            Stamp {
                ctime: 2_001,
                ..hashed
            },
            Stamp { inode: 8, ..hashed },
        ];
        for now in changed {
            assert!(!index.is_verified(&d(1), &now), "{now:?}");
        }
        assert!(!index.is_verified(&d(2), &hashed), "unknown digest");
    }

    #[test]
    fn verifying_again_replaces_the_size_and_removing_frees_it() {
        let mut index = Index::new(1 << 20);
        index.seed(d(1), 100);
        index.verified(d(1), stamp(80));
        assert_eq!((index.total(), index.len()), (80, 1));

        assert_eq!(index.remove(&d(1)), Some(80));
        assert_eq!(index.remove(&d(1)), None);
        assert_eq!((index.total(), index.len()), (0, 0));
    }
}
