//! The ledger writer: drains the queue the packet paths fill and commits it
//! in batches, one `BEGIN IMMEDIATE` transaction per batch: leases in one of
//! their own, everything else in chunks of [`CHUNK`] records.
//!
//! Batching is what keeps SQLite off the boot hot path: a storm of a thousand
//! DHCP exchanges becomes a few dozen transactions. Records come in two
//! kinds. Most (events, machine facts, offers' side effects) are
//! fire-and-forget: a kill -9 loses at most the batch being collected (tens
//! of milliseconds of events). Records a reply promises (a lease an ACK
//! gives, a boot whose token a script carries) are queued with a waiter
//! ([`Record::Promise`], [`Record::Flush`]): a batch with a waiter is
//! committed at once, with every record that arrived meanwhile (group
//! commit), and the waiter hears only after the commit, so nothing
//! acknowledged is lost on kill -9. WAL with `synchronous=NORMAL` makes a
//! commit survive the process dying; a power loss can still lose the last
//! transactions before the next WAL checkpoint sync.

use std::collections::VecDeque;
use std::time::Duration;

use sqlx::SqliteConnection;
use tokio::sync::mpsc;
use tracing::{debug, error, warn};

use super::Store;
use crate::domain::{ip_text, ipv4_text};
use crate::ledger::{now_ms, BootRecord, Event, LeaseRecord, MachineFacts, Record};

/// Most records taken from the queue at once.
const MAX_BATCH: usize = 2048;
/// Records taken from the queue but not yet written, at most: beyond it the
/// queue itself fills and its senders drop events (`ledger_dropped`).
const MAX_BACKLOG: usize = 4 * MAX_BATCH;
/// Records other than leases written per transaction: a lease a reply
/// promises waits for at most one such chunk before its own commit.
const CHUNK: usize = 256;
/// How long to keep collecting after the first record of a batch.
const LINGER: Duration = Duration::from_millis(20);

/// Runs until every [`crate::ledger::Ledger`] handle is dropped, then commits
/// what is left and returns.
///
/// Each round takes what is queued, commits its leases and answers the
/// promises on them, then writes one chunk of everything else (events,
/// machines, boots) and answers the flushes that chunk completes. Leases
/// thus overtake a backlog of events; nothing else is reordered.
pub async fn run(store: Store, mut rx: mpsc::Receiver<Record>) {
    let mut backlog: VecDeque<Record> = VecDeque::new();
    let mut open = true;
    // Whether the last lease commit succeeded: what a promise is told.
    let mut leases_ok = true;
    loop {
        let fresh = if backlog.is_empty() {
            if !open {
                return;
            }
            match collect(&mut rx).await {
                Some(fresh) => fresh,
                None => return,
            }
        } else {
            let mut fresh = Vec::new();
            while open && backlog.len() + fresh.len() < MAX_BACKLOG {
                match rx.try_recv() {
                    Ok(r) => fresh.push(r),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                }
            }
            fresh
        };
        let mut leases = Vec::new();
        let mut promises = Vec::new();
        for record in fresh {
            match record {
                Record::Lease(_) => leases.push(record),
                Record::Promise(tx) => promises.push(tx),
                other => backlog.push_back(other),
            }
        }
        if !leases.is_empty() {
            leases_ok = write_batch(&store, &leases).await;
        }
        for tx in promises {
            let _ = tx.send(leases_ok);
        }
        let mut chunk = Vec::with_capacity(CHUNK.min(backlog.len()));
        let mut flushes = Vec::new();
        while let Some(record) = backlog.pop_front() {
            match record {
                Record::Flush(tx) => flushes.push(tx),
                other => chunk.push(other),
            }
            if chunk.len() >= CHUNK && !matches!(backlog.front(), Some(Record::Flush(_))) {
                break;
            }
        }
        if !chunk.is_empty() {
            write_batch(&store, &chunk).await;
        }
        for tx in flushes {
            let _ = tx.send(());
        }
    }
}

/// Waits for a record, then keeps collecting for [`LINGER`], or only what is
/// queued already once someone waits on the batch (an ACK, a script's
/// token): that batch is committed at once, and what arrives during the
/// commit rides in the next (group commit). `None` once every sender is gone.
async fn collect(rx: &mut mpsc::Receiver<Record>) -> Option<Vec<Record>> {
    let first = rx.recv().await?;
    let mut waited_on = is_waited_on(&first);
    let mut batch = vec![first];
    let deadline = tokio::time::Instant::now() + LINGER;
    while batch.len() < MAX_BATCH {
        let next = if waited_on {
            match rx.try_recv() {
                Ok(r) => r,
                Err(_) => break,
            }
        } else {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(r)) => r,
                Ok(None) | Err(_) => break,
            }
        };
        waited_on |= is_waited_on(&next);
        batch.push(next);
    }
    Some(batch)
}

fn is_waited_on(record: &Record) -> bool {
    matches!(record, Record::Flush(_) | Record::Promise(_))
}

/// Commits `batch` in one transaction; if that fails, each record in its
/// own, so one bad record costs itself and not the 2,047 around it.
/// Returns whether every record was committed.
async fn write_batch(store: &Store, batch: &[Record]) -> bool {
    let Err(e) = commit(store, batch).await else {
        debug!(records = batch.len(), "ledger batch committed");
        return true;
    };
    warn!(error = %e, records = batch.len(), "ledger batch failed; writing its records one by one");
    let mut lost = 0;
    for record in batch {
        if let Err(e) = commit(store, std::slice::from_ref(record)).await {
            lost += 1;
            error!(error = %e, record = kind(record), "ledger record not written");
        }
    }
    if lost > 0 {
        error!(lost, records = batch.len(), "ledger records not written");
    }
    lost == 0
}

/// One `BEGIN IMMEDIATE` … `COMMIT` on a pooled connection, issued as
/// statements rather than through sqlx's `Transaction`: a connection handed
/// back to the pool still counting an open transaction (a task cancelled
/// inside one) made every later batch on it fail with "begin_with at
/// non-zero transaction depth" — seen in the HTTP benchmark, 2,048 records
/// lost per batch. Here a failure rolls back, and a connection that cannot
/// be brought back to a clean state is closed instead of returned.
async fn commit(store: &Store, batch: &[Record]) -> Result<(), sqlx::Error> {
    let mut conn = store.pool().acquire().await?;
    // BEGIN IMMEDIATE takes the write lock up front, so a concurrent writer
    // waits on the busy timeout instead of failing mid-transaction.
    let begin = || sqlx::query("BEGIN IMMEDIATE");
    if begin().execute(&mut *conn).await.is_err() {
        // A connection another task left inside a transaction (cancelled
        // at shutdown): roll that back and try once more.
        let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
        if let Err(e) = begin().execute(&mut *conn).await {
            use sqlx::Connection;
            let _ = conn.detach().close().await;
            return Err(e);
        }
    }
    let mut result = write_all(&mut conn, batch).await;
    if result.is_ok() {
        result = sqlx::query("COMMIT").execute(&mut *conn).await.map(|_| ());
    }
    if result.is_err() && sqlx::query("ROLLBACK").execute(&mut *conn).await.is_err() {
        use sqlx::Connection;
        let _ = conn.detach().close().await;
    }
    result
}

fn kind(record: &Record) -> &'static str {
    match record {
        Record::MachineSeen(_) => "machine",
        Record::Event(_) => "event",
        Record::Lease(_) => "lease",
        Record::BootStarted(_) => "boot",
        Record::Rollout(_) => "rollout",
        Record::Flush(_) => "flush",
        Record::Promise(_) => "promise",
    }
}

async fn write_all(conn: &mut SqliteConnection, batch: &[Record]) -> Result<(), sqlx::Error> {
    for record in batch {
        match record {
            Record::MachineSeen(m) => upsert_machine(conn, m).await?,
            Record::Event(e) => insert_event(conn, e).await?,
            Record::Lease(l) => write_lease(conn, l).await?,
            Record::BootStarted(b) => insert_boot(conn, b).await?,
            Record::Rollout(p) => crate::rollout::store::write(conn, p).await?,
            Record::Flush(_) | Record::Promise(_) => {}
        }
    }
    Ok(())
}

async fn upsert_machine(conn: &mut SqliteConnection, m: &MachineFacts) -> Result<(), sqlx::Error> {
    let Some(mac) = m.mac else { return Ok(()) };
    sqlx::query(
        "INSERT INTO machines (mac, uuid, arch, firmware, vendor_class, user_class, reported_hostname,
                               circuit_id, remote_id, relay, first_seen_ms, last_seen_ms,
                               serial, ip, kind)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, COALESCE(?, 'server'))
         ON CONFLICT (mac) DO UPDATE SET
             kind = CASE WHEN ? IS NULL OR kind_by_operator THEN kind ELSE excluded.kind END,
             serial = COALESCE(excluded.serial, serial),
             ip = COALESCE(excluded.ip, ip),
             uuid = COALESCE(excluded.uuid, uuid),
             arch = COALESCE(excluded.arch, arch),
             firmware = COALESCE(excluded.firmware, firmware),
             vendor_class = COALESCE(excluded.vendor_class, vendor_class),
             user_class = COALESCE(excluded.user_class, user_class),
             reported_hostname = COALESCE(excluded.reported_hostname, reported_hostname),
             circuit_id = COALESCE(excluded.circuit_id, circuit_id),
             remote_id = COALESCE(excluded.remote_id, remote_id),
             relay = COALESCE(excluded.relay, relay),
             last_seen_ms = MAX(last_seen_ms, excluded.last_seen_ms)",
    )
    .bind(mac.to_string())
    .bind(&m.uuid)
    .bind(m.arch.map(|a| a.name()))
    .bind(&m.firmware)
    .bind(&m.vendor_class)
    .bind(&m.user_class)
    .bind(&m.hostname)
    .bind(&m.circuit_id)
    .bind(&m.remote_id)
    .bind(m.relay.map(|r| r.to_string()))
    .bind(m.at_ms)
    .bind(m.at_ms)
    .bind(&m.serial)
    .bind(m.ip.map(|i| i.to_string()))
    .bind(m.kind.map(|k| k.as_str()))
    .bind(m.kind.map(|k| k.as_str()))
    .execute(&mut *conn)
    .await?;
    if let Some(group) = &m.computed_group {
        sqlx::query("UPDATE machines SET group_name = ? WHERE mac = ? AND group_assigned = 0")
            .bind(group)
            .bind(mac.to_string())
            .execute(&mut *conn)
            .await?;
    }
    if let Some(i) = &m.inherited {
        sqlx::query(
            "UPDATE machines SET group_name = ?, group_assigned = ?, labels = ?,
                 hostname = COALESCE(?, hostname), pin_stream = ?, pin_generation = ?,
                 kind = COALESCE(?, kind), kind_by_operator = kind_by_operator OR ? WHERE mac = ?",
        )
        .bind(&i.group)
        .bind(i.assigned)
        .bind(&i.labels)
        .bind(&i.hostname)
        .bind(i.pin.as_ref().map(|p| p.0.clone()))
        .bind(i.pin.as_ref().map(|p| p.1))
        .bind(i.operator_kind.map(|k| k.as_str()))
        .bind(i.operator_kind.is_some())
        .bind(mac.to_string())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

async fn insert_event(conn: &mut SqliteConnection, e: &Event) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO events (at_ms, mac, ip, step, detail, bytes, boot_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(e.at_ms)
    .bind(e.mac.map(|m| m.to_string()))
    .bind(e.ip.map(ip_text))
    .bind(e.step)
    .bind(e.detail.to_string())
    .bind(e.bytes.map(|b| b as i64))
    .bind(e.boot_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn insert_boot(conn: &mut SqliteConnection, b: &BootRecord) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO boots (id, mac, token_hash, stream, generation, image, state, reason, started_ms)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(b.id)
    .bind(b.mac.to_string())
    .bind(&b.token_hash)
    .bind(&b.stream)
    .bind(b.generation)
    .bind(&b.image)
    .bind(b.state)
    .bind(&b.reason)
    .bind(b.started_ms)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn write_lease(conn: &mut SqliteConnection, l: &LeaseRecord) -> Result<(), sqlx::Error> {
    if l.state == "free" {
        sqlx::query("DELETE FROM leases WHERE ip = ?")
            .bind(ipv4_text(l.ip))
            .execute(&mut *conn)
            .await?;
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO leases (ip, mac, state, expires_at_ms, hostname, updated_ms) VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT (ip) DO UPDATE SET mac = excluded.mac, state = excluded.state,
             expires_at_ms = excluded.expires_at_ms, hostname = excluded.hostname, updated_ms = excluded.updated_ms",
    )
    .bind(ipv4_text(l.ip))
    .bind(l.mac.map(|m| m.to_string()))
    .bind(l.state)
    .bind(l.expires_at_ms)
    .bind(&l.hostname)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}
