//! Who reads a root image over NBD, and how much: each connection to a
//! root image (or its hash tree) is attributed to the boot it serves, found
//! the way HTTP and TFTP downloads are (the latest boot opened from the
//! client's address, else the machine bound to that address), and its
//! bytes are added to that boot's row and written to the ledger as
//! `nbd.open`, `nbd.read` (every few seconds while it reads) and
//! `nbd.close` steps. A connection no boot explains is counted in the
//! metrics only.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::binding::Bindings;
use crate::domain::MacAddr;
use crate::images::Digest;
use crate::inventory::Inventory;
use crate::ledger::{Ledger, Record, RootRead};
use crate::nbd::{BoxFuture, Readers, Tally};

/// Reads are passed on at most this often per connection (and at its end).
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// [`Readers`] over the inventory's boots.
pub struct RootReaders {
    pub inventory: Arc<Inventory>,
    pub bindings: Arc<Bindings>,
    pub ledger: Ledger,
}

impl Readers for RootReaders {
    fn opened(&self, peer: IpAddr, export: Digest) -> BoxFuture<Option<Box<dyn Tally>>> {
        let inventory = self.inventory.clone();
        let mac = self.bindings.who(peer).map(|(mac, _)| mac);
        let ledger = self.ledger.clone();
        Box::pin(async move {
            let (boot_id, mac, is_root) = inventory.root_reader(peer, mac, &export).await?;
            let tally = BootTally {
                ledger,
                boot_id,
                mac,
                peer,
                export: export.to_string(),
                is_root,
                pending: 0,
                reported: Instant::now(),
            };
            tally.step("nbd.open", None);
            if is_root {
                tally.add(0);
            }
            Some(Box::new(tally) as Box<dyn Tally>)
        })
    }
}

/// One connection's reads for one boot.
struct BootTally {
    ledger: Ledger,
    boot_id: i64,
    mac: MacAddr,
    peer: IpAddr,
    export: String,
    /// The root image itself (else its hash tree).
    is_root: bool,
    /// Read since the last report.
    pending: u64,
    reported: Instant,
}

impl BootTally {
    fn role(&self) -> &'static str {
        if self.is_root {
            "root"
        } else {
            "hash_tree"
        }
    }

    /// A ledger step of this connection (its detail names the export).
    fn step(&self, step: &'static str, bytes: Option<u64>) {
        let detail = json!({ "export": self.export, "role": self.role() });
        self.ledger
            .boot_event(self.boot_id, self.mac, Some(self.peer), step, detail, bytes);
    }

    /// Adds `bytes` to the boot's row (and names the root's export).
    fn add(&self, bytes: u64) {
        self.ledger.record(Record::RootRead(RootRead {
            boot_id: self.boot_id,
            export: self.is_root.then(|| self.export.clone()),
            bytes,
            verify_failures: 0,
        }));
    }

    fn report(&mut self) {
        if self.pending == 0 {
            return;
        }
        self.add(self.pending);
        self.step("nbd.read", Some(self.pending));
        self.pending = 0;
        self.reported = Instant::now();
    }
}

impl Tally for BootTally {
    fn read(&mut self, bytes: u64) {
        self.pending += bytes;
        if self.reported.elapsed() >= REPORT_EVERY {
            self.report();
        }
    }
}

impl Drop for BootTally {
    fn drop(&mut self) {
        self.report();
        self.step("nbd.close", None);
    }
}
