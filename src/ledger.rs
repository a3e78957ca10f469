//! The boot ledger: every step a machine takes (DHCP, TFTP, …) as an event.
//!
//! Architecture invariant: the packet paths never wait on SQLite. They hand
//! events to [`Ledger::record`], which only pushes onto a bounded queue; the
//! writer task in `store::writer` drains it and commits in batches. When the
//! queue is full the event is dropped and counted (`ledger_dropped`), because
//! answering a booting machine matters more than recording that it asked.

use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{broadcast, mpsc};

use crate::domain::{Arch, BootState, LeaseState, MacAddr, MachineKind};
use crate::metrics::Metrics;

/// One thing worth writing down.
#[derive(Debug)]
pub enum Record {
    /// A machine was seen sending a PXE (or otherwise answered) request:
    /// upsert its facts.
    MachineSeen(MachineFacts),
    /// A step of a boot.
    Event(Event),
    /// A lease changed: persist it.
    Lease(LeaseRecord),
    /// A per-machine script was served: a new boot row.
    BootStarted(BootRecord),
    /// A rollout or watchdog transition from the boot path or the clock:
    /// its rows and effects, written in one transaction.
    Rollout(crate::domain::fleet_rows::Persist),
    /// What a server that does not lead the fleet saw, for the leader
    /// (`[store] shared`): into the inbox with the boot it concerns.
    Inbox(crate::domain::fleet_rows::Inboxed),
    /// What a boot read of its root image over NBD, or a verification
    /// failure its machine reported: added to the boot's counts.
    RootRead(RootRead),
    /// Answered once every record queued before it is committed; lets a
    /// caller that must read its own writes (phone home) wait for them.
    Flush(tokio::sync::oneshot::Sender<()>),
    /// Answered `true` once the lease queued just before it is committed
    /// (`false`: the commit failed): see [`Ledger::record_durable`]. Only
    /// leases are promised (the writer commits them first, alone).
    Promise(tokio::sync::oneshot::Sender<bool>),
}

/// What [`Ledger::record_durable`] hands back: resolves `true` once the
/// record is in SQLite. Whoever holds it sends the reply that promises the
/// record (a DHCPACK) only then.
#[derive(Debug)]
pub struct Durable(tokio::sync::oneshot::Receiver<bool>);

impl Durable {
    /// Whether the record was committed (a writer that is gone: no).
    pub async fn committed(self) -> bool {
        self.0.await.unwrap_or(false)
    }
}

/// Counts added to one boot's root image columns.
#[derive(Debug, Clone)]
pub struct RootRead {
    pub boot_id: i64,
    /// The root image's export, once known (the hash tree's reads leave it).
    pub export: Option<String>,
    pub bytes: u64,
    pub verify_failures: u32,
}

/// A boot attempt, as written when its script is served.
#[derive(Debug, Clone)]
pub struct BootRecord {
    pub id: i64,
    pub mac: MacAddr,
    pub token_hash: String,
    pub stream: Option<String>,
    pub generation: Option<i64>,
    pub image: Option<String>,
    /// `Served` or `Nothing`.
    pub state: BootState,
    pub reason: Option<String>,
    pub started_ms: i64,
}

/// What a DHCP request tells us about the machine behind it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MachineFacts {
    pub mac: Option<MacAddr>,
    pub uuid: Option<String>,
    pub arch: Option<Arch>,
    /// The client class: `pxe`, `ipxe`, `http`, … (see `dhcp::classify`).
    pub firmware: Option<String>,
    pub vendor_class: Option<String>,
    pub user_class: Option<String>,
    pub hostname: Option<String>,
    pub circuit_id: Option<String>,
    pub remote_id: Option<String>,
    pub relay: Option<IpAddr>,
    /// From iPXE's `${serial}` (SMBIOS), when the script request carries it.
    pub serial: Option<String>,
    /// The address the machine was last seen at.
    pub ip: Option<IpAddr>,
    /// Set when the request shows what the machine is (ONIE or a network
    /// OS: a switch); `None` leaves the recorded kind alone.
    pub kind: Option<MachineKind>,
    /// What a replacement machine inherits from the one whose switch port
    /// it took (see `boot::identity`): its group, labels (JSON) and pin.
    /// `None`: left alone.
    /// Boxed: rare, and it would make every record as large as itself.
    pub inherited: Option<Box<Inherited>>,
    /// The group its labels and the selectors put it in, when a boot
    /// computed one other than `default` (written unless an operator
    /// assigned a group; `None`: left alone).
    pub computed_group: Option<String>,
    pub at_ms: i64,
}

/// A machine's role, copied to its replacement.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Inherited {
    pub group: String,
    /// `group` was assigned by an operator (else selectors computed it).
    pub assigned: bool,
    /// The labels as a JSON object.
    pub labels: String,
    pub hostname: Option<String>,
    pub pin: Option<(String, i64)>,
    /// The kind, when the operator set it on the machine replaced.
    pub operator_kind: Option<MachineKind>,
}

/// A ledger event: one step of one machine's boot.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub at_ms: i64,
    pub mac: Option<MacAddr>,
    pub ip: Option<IpAddr>,
    /// `dhcp.offer`, `dhcp.ack`, `dhcp.nak`, `dhcp.decline`, `dhcp.release`,
    /// `tftp.complete`, `tftp.failed`, …
    pub step: &'static str,
    /// Free-form, JSON-serialisable detail (file name, bootfile, reason).
    pub detail: serde_json::Value,
    pub bytes: Option<u64>,
    /// The boot this step belongs to, when known.
    pub boot_id: Option<i64>,
}

/// The persisted form of a lease change.
#[derive(Debug, Clone)]
pub struct LeaseRecord {
    /// IPv4 (DHCP) or IPv6 (DHCPv6).
    pub ip: std::net::IpAddr,
    /// The DHCPv6 identity association the address belongs to; `None` for
    /// DHCPv4.
    pub iaid: Option<u32>,
    pub mac: Option<MacAddr>,
    /// The lease's state (an offer is never stored); `None`: the address
    /// is free again (delete the row).
    pub state: Option<LeaseState>,
    pub expires_at_ms: i64,
    pub hostname: Option<String>,
}

/// Cheap, cloneable handle the protocol servers use to record.
#[derive(Clone)]
pub struct Ledger {
    tx: mpsc::Sender<Record>,
    metrics: Arc<Metrics>,
    /// Every event as it is recorded, for live watchers (the API's
    /// Server-Sent Events). Sending never blocks: a watcher that falls
    /// behind loses the oldest events and is told how many.
    live: broadcast::Sender<Event>,
}

/// Events a slow live watcher may fall behind by before it loses some.
const LIVE_BACKLOG: usize = 4096;

impl Ledger {
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> (Self, mpsc::Receiver<Record>) {
        let (tx, rx) = mpsc::channel(capacity);
        let (live, _) = broadcast::channel(LIVE_BACKLOG);
        (Self { tx, metrics, live }, rx)
    }

    /// A handle to subscribe to events as they are recorded. It does not
    /// keep the ledger's writer alive.
    pub fn live(&self) -> broadcast::Sender<Event> {
        self.live.clone()
    }

    /// Never blocks: a full queue drops the record and counts it.
    pub fn record(&self, record: Record) {
        if let Record::Event(e) = &record {
            // Cloned only while someone watches.
            if self.live.receiver_count() > 0 {
                let _ = self.live.send(e.clone());
            }
        }
        if self.tx.try_send(record).is_err() {
            Metrics::inc(&self.metrics.ledger_dropped);
        }
    }

    /// Queues a lease that a reply will promise (what an ACK gives), and
    /// a promise answered once it is committed; the writer commits at once
    /// when a promise waits (group commit: every record queued meanwhile
    /// rides in the same transaction). Never blocks: `None` when the queue
    /// has no room for both, and then nothing was queued and nothing may be
    /// promised.
    pub fn record_durable(&self, record: Record) -> Option<Durable> {
        debug_assert!(
            matches!(record, Record::Lease(_)),
            "only leases are promised"
        );
        let Ok(mut permits) = self.tx.try_reserve_many(2) else {
            Metrics::inc(&self.metrics.ledger_dropped);
            return None;
        };
        let (done, promise) = tokio::sync::oneshot::channel();
        permits.next()?.send(record);
        permits.next()?.send(Record::Promise(done));
        Some(Durable(promise))
    }

    pub fn event(
        &self,
        mac: Option<MacAddr>,
        ip: Option<IpAddr>,
        step: &'static str,
        detail: serde_json::Value,
        bytes: Option<u64>,
    ) {
        self.push(mac, ip, step, detail, bytes, None);
    }

    /// An event that belongs to a known boot.
    pub fn boot_event(
        &self,
        boot_id: i64,
        mac: MacAddr,
        ip: Option<IpAddr>,
        step: &'static str,
        detail: serde_json::Value,
        bytes: Option<u64>,
    ) {
        self.push(Some(mac), ip, step, detail, bytes, Some(boot_id));
    }

    fn push(
        &self,
        mac: Option<MacAddr>,
        ip: Option<IpAddr>,
        step: &'static str,
        detail: serde_json::Value,
        bytes: Option<u64>,
        boot_id: Option<i64>,
    ) {
        let at_ms = now_ms();
        self.record(Record::Event(Event {
            at_ms,
            mac,
            ip,
            step,
            detail,
            bytes,
            boot_id,
        }));
    }

    /// Waits until everything recorded before this call is committed (or the
    /// writer is gone). Not for packet paths: they never wait.
    pub async fn flush(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(Record::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Milliseconds since the Unix epoch, the time unit of every stored timestamp.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
