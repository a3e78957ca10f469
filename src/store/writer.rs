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
//! ([`Record::Promise`], [`Record::Flush`]): leases a promise waits for are
//! gathered for [`ACK_LINGER`] and committed together (group commit), a
//! flush makes the records before it due at once, and the waiter hears only
//! after the commit, so nothing acknowledged is lost on kill -9. WAL with `synchronous=NORMAL` makes a
//! commit survive the process dying; a power loss can still lose the last
//! transactions before the next WAL checkpoint sync.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{debug, error, warn};

use super::{Backend, Conn, Store};
use crate::domain::{ip_text, LeaseState};
use crate::ledger::{now_ms, BootRecord, Event, LeaseRecord, MachineFacts, Record, RootRead};

/// Most leases committed in one transaction.
const MAX_BATCH: usize = 2048;
/// Records taken from the queue but not yet written, at most: beyond it the
/// queue itself fills and its senders drop events (`ledger_dropped`).
const MAX_BACKLOG: usize = 4 * MAX_BATCH;
/// Records other than leases written per transaction: a lease a reply
/// promises waits for at most one such chunk before its own commit.
const CHUNK: usize = 512;
/// How long a record nobody waits for may sit before it is written (unless
/// a chunk fills first): events and machine facts go in few, large
/// transactions.
const LINGER: Duration = Duration::from_millis(20);
/// How long the writer keeps gathering leases after the first promise of a
/// round: ACKs wait this much longer, and a storm's leases go in a
/// transaction per couple of milliseconds instead of one per ACK (each
/// transaction writes its pages to the WAL again; thousands a second cost
/// the whole machine's CPU).
const ACK_LINGER: Duration = Duration::from_millis(2);

/// What one round took from the queue.
#[derive(Default)]
struct Round {
    leases: Vec<Record>,
    promises: Vec<tokio::sync::oneshot::Sender<bool>>,
}

/// Records other than leases, in arrival order, until written.
#[derive(Default)]
struct Backlog {
    records: VecDeque<Record>,
    /// When the oldest of them arrived.
    since: Option<Instant>,
    /// A flush waits among them.
    flush: bool,
}

impl Backlog {
    fn push(&mut self, record: Record) {
        self.flush |= matches!(record, Record::Flush(_));
        self.since.get_or_insert_with(Instant::now);
        self.records.push_back(record);
    }

    /// When the next chunk must be written: now if a flush waits or a chunk
    /// is full, else when the oldest record has lingered enough.
    fn due(&self) -> Option<Instant> {
        if self.flush || self.records.len() >= CHUNK {
            Some(Instant::now())
        } else {
            self.since.map(|t| t + LINGER)
        }
    }

    /// Takes one chunk and the flushes it completes.
    fn chunk(&mut self) -> (Vec<Record>, Vec<tokio::sync::oneshot::Sender<()>>) {
        let mut chunk = Vec::with_capacity(CHUNK.min(self.records.len()));
        let mut flushes = Vec::new();
        while let Some(record) = self.records.pop_front() {
            match record {
                Record::Flush(tx) => flushes.push(tx),
                other => chunk.push(other),
            }
            if chunk.len() >= CHUNK && !matches!(self.records.front(), Some(Record::Flush(_))) {
                break;
            }
        }
        self.flush = self.records.iter().any(|r| matches!(r, Record::Flush(_)));
        self.since = (!self.records.is_empty()).then(Instant::now);
        (chunk, flushes)
    }
}

/// Runs until every [`crate::ledger::Ledger`] handle is dropped, then commits
/// what is left and returns.
///
/// Each round gathers from the queue until something is due: a promise
/// that has waited [`ACK_LINGER`], or the backlog (a flush, a full chunk,
/// or [`LINGER`]). It then commits the round's leases and answers their
/// promises, and writes one chunk of everything else (events, machines,
/// boots), answering the flushes that chunk completes. Leases thus overtake
/// a backlog of events; nothing else is reordered.
pub async fn run(store: Store, mut rx: mpsc::Receiver<Record>) {
    let mut backlog = Backlog::default();
    let mut open = true;
    // Whether the last lease commit succeeded: what a promise is told.
    let mut leases_ok = true;
    while open || !backlog.records.is_empty() {
        let round = if open {
            gather(&mut rx, &mut backlog, &mut open).await
        } else {
            Round::default()
        };
        if !round.leases.is_empty() {
            leases_ok = write_batch(&store, &round.leases).await;
        }
        for tx in round.promises {
            let _ = tx.send(leases_ok);
        }
        let due = backlog.due().is_some_and(|t| t <= Instant::now());
        if due || !open {
            let (chunk, flushes) = backlog.chunk();
            if !chunk.is_empty() {
                write_batch(&store, &chunk).await;
            }
            for tx in flushes {
                let _ = tx.send(());
            }
        }
    }
}

/// Takes records from the queue until the round is due (see [`run`]);
/// sets `open` to false once every sender is gone.
async fn gather(rx: &mut mpsc::Receiver<Record>, backlog: &mut Backlog, open: &mut bool) -> Round {
    let mut round = Round::default();
    let mut promised: Option<Instant> = None;
    while round.leases.len() < MAX_BATCH && backlog.records.len() < MAX_BACKLOG {
        let until = match (promised.map(|t| t + ACK_LINGER), backlog.due()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let next = match until {
            Some(until) if until <= Instant::now() => match rx.try_recv() {
                Ok(r) => Some(r),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            },
            Some(until) => match tokio::time::timeout_at(until.into(), rx.recv()).await {
                Ok(r) => r,
                Err(_) => break,
            },
            None => rx.recv().await,
        };
        let Some(record) = next else {
            *open = false;
            break;
        };
        match record {
            Record::Lease(_) => round.leases.push(record),
            Record::Promise(tx) => {
                promised.get_or_insert_with(Instant::now);
                round.promises.push(tx);
            }
            other => backlog.push(other),
        }
    }
    round
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
    // On SQLite, BEGIN IMMEDIATE takes the write lock up front, so a
    // concurrent writer waits on the busy timeout instead of failing
    // mid-transaction.
    let begin = match store.backend() {
        Backend::Sqlite => "BEGIN IMMEDIATE",
        Backend::Postgres => "BEGIN",
    };
    on_pool!(store.pool(), pool => {
        use sqlx::Connection;
        let mut conn = pool.acquire().await?;
        if sqlx::query(begin).execute(&mut *conn).await.is_err() {
            // A connection another task left inside a transaction
            // (cancelled at shutdown): roll that back and try once more.
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            if let Err(e) = sqlx::query(begin).execute(&mut *conn).await {
                let _ = conn.detach().close().await;
                return Err(e);
            }
        }
        let mut result = match store.backend() {
            Backend::Sqlite => Ok(()),
            Backend::Postgres => sqlx::query(super::POSTGRES_WRITE_LOCK)
                .execute(&mut *conn)
                .await
                .map(|_| ()),
        };
        if result.is_ok() {
            result = write_all(&mut Conn::from(&mut *conn), batch).await;
        }
        if result.is_ok() {
            result = sqlx::query("COMMIT").execute(&mut *conn).await.map(|_| ());
        }
        if result.is_err() && sqlx::query("ROLLBACK").execute(&mut *conn).await.is_err() {
            let _ = conn.detach().close().await;
        }
        result
    })
}

fn kind(record: &Record) -> &'static str {
    match record {
        Record::MachineSeen(_) => "machine",
        Record::Event(_) => "event",
        Record::Lease(_) => "lease",
        Record::BootStarted(_) => "boot",
        Record::Rollout(_) => "rollout",
        Record::Inbox(_) => "inbox",
        Record::RootRead(_) => "root read",
        Record::Flush(_) => "flush",
        Record::Promise(_) => "promise",
    }
}

/// Writes `batch` inside the caller's transaction. Statements are what
/// costs here (each one a round trip to SQLite's thread), so the batch is
/// not written record by record: the facts of one machine seen several times
/// become one upsert (the same result as applying them in turn), every
/// event goes in multi-row inserts at the end, and the rest (leases, boots,
/// rollouts) keeps its order after the machines it may refer to.
async fn write_all(conn: &mut Conn<'_>, batch: &[Record]) -> Result<(), sqlx::Error> {
    for m in merged_machines(batch) {
        upsert_machine(conn, &m).await?;
    }
    let leases: Vec<&LeaseRecord> = batch
        .iter()
        .filter_map(|r| match r {
            Record::Lease(l) => Some(l),
            _ => None,
        })
        .collect();
    write_leases(conn, &leases).await?;
    let mut events = Vec::new();
    for record in batch {
        match record {
            Record::Event(e) => events.push(e),
            Record::BootStarted(b) => insert_boot(conn, b).await?,
            Record::Rollout(p) => crate::store::rollouts::write(conn, p).await?,
            Record::Inbox(e) => crate::store::inbox::push(conn, e).await?,
            Record::RootRead(r) => add_root_read(conn, r).await?,
            Record::MachineSeen(_) | Record::Lease(_) | Record::Flush(_) | Record::Promise(_) => {}
        }
    }
    for rows in events.chunks(EVENTS_PER_STATEMENT) {
        insert_events(conn, rows).await?;
    }
    Ok(())
}

/// Events per multi-row insert (7 parameters each, well under SQLite's
/// limit of 32,766).
const EVENTS_PER_STATEMENT: usize = 500;

/// The machine facts of `batch`, one per machine where they can be merged,
/// in the order each machine first appears. Facts that carry an
/// inheritance or a computed group stay as they are, and later facts of
/// that machine start a new entry after them.
fn merged_machines(batch: &[Record]) -> Vec<MachineFacts> {
    let mut out: Vec<MachineFacts> = Vec::new();
    let mut open: std::collections::HashMap<crate::domain::MacAddr, usize> =
        std::collections::HashMap::new();
    for record in batch {
        let Record::MachineSeen(m) = record else {
            continue;
        };
        let Some(mac) = m.mac else { continue };
        let plain = m.inherited.is_none() && m.computed_group.is_none();
        match open.get(&mac) {
            Some(&i) if plain => merge_facts(&mut out[i], m),
            _ => {
                if plain {
                    open.insert(mac, out.len());
                } else {
                    open.remove(&mac);
                }
                out.push(m.clone());
            }
        }
    }
    out
}

/// `into` followed by `later`, as the upsert would leave the row: what
/// `later` says replaces, what it leaves out stays.
fn merge_facts(into: &mut MachineFacts, later: &MachineFacts) {
    fn take<T: Clone>(into: &mut Option<T>, later: &Option<T>) {
        if later.is_some() {
            into.clone_from(later);
        }
    }
    take(&mut into.uuid, &later.uuid);
    take(&mut into.arch, &later.arch);
    take(&mut into.firmware, &later.firmware);
    take(&mut into.vendor_class, &later.vendor_class);
    take(&mut into.user_class, &later.user_class);
    take(&mut into.hostname, &later.hostname);
    take(&mut into.circuit_id, &later.circuit_id);
    take(&mut into.remote_id, &later.remote_id);
    take(&mut into.relay, &later.relay);
    take(&mut into.serial, &later.serial);
    take(&mut into.ip, &later.ip);
    take(&mut into.kind, &later.kind);
    into.at_ms = into.at_ms.max(later.at_ms);
}

async fn upsert_machine(conn: &mut Conn<'_>, m: &MachineFacts) -> Result<(), sqlx::Error> {
    let Some(mac) = m.mac else { return Ok(()) };
    on_conn!(conn, db => sqlx::query(
        "INSERT INTO machines (mac, uuid, arch, firmware, vendor_class, user_class, reported_hostname,
                               circuit_id, remote_id, relay, first_seen_ms, last_seen_ms,
                               serial, ip, kind)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, COALESCE($15, 'server'))
         ON CONFLICT (mac) DO UPDATE SET
             kind = CASE WHEN $16 IS NULL OR machines.kind_by_operator THEN machines.kind ELSE excluded.kind END,
             serial = COALESCE(excluded.serial, machines.serial),
             ip = COALESCE(excluded.ip, machines.ip),
             uuid = COALESCE(excluded.uuid, machines.uuid),
             arch = COALESCE(excluded.arch, machines.arch),
             firmware = COALESCE(excluded.firmware, machines.firmware),
             vendor_class = COALESCE(excluded.vendor_class, machines.vendor_class),
             user_class = COALESCE(excluded.user_class, machines.user_class),
             reported_hostname = COALESCE(excluded.reported_hostname, machines.reported_hostname),
             circuit_id = COALESCE(excluded.circuit_id, machines.circuit_id),
             remote_id = COALESCE(excluded.remote_id, machines.remote_id),
             relay = COALESCE(excluded.relay, machines.relay),
             last_seen_ms = CASE WHEN machines.last_seen_ms > excluded.last_seen_ms
                 THEN machines.last_seen_ms ELSE excluded.last_seen_ms END",
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
    .execute(&mut *db)
    .await.map(|r| r.rows_affected()))?;
    if let Some(group) = &m.computed_group {
        on_conn!(conn, db => sqlx::query("UPDATE machines SET group_name = $1 WHERE mac = $2 AND group_assigned = FALSE")
            .bind(group)
            .bind(mac.to_string())
            .execute(&mut *db)
            .await.map(|r| r.rows_affected()))?;
    }
    if let Some(i) = &m.inherited {
        on_conn!(conn, db => sqlx::query(
            "UPDATE machines SET group_name = $1, group_assigned = $2, labels = $3,
                 hostname = COALESCE($4, hostname), pin_stream = $5, pin_generation = $6,
                 kind = COALESCE($7, kind), kind_by_operator = kind_by_operator OR $8 WHERE mac = $9",
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
        .execute(&mut *db)
        .await.map(|r| r.rows_affected()))?;
    }
    Ok(())
}

async fn insert_events(conn: &mut Conn<'_>, rows: &[&Event]) -> Result<(), sqlx::Error> {
    on_conn!(conn, db => {
        let mut insert = sqlx::QueryBuilder::new(
            "INSERT INTO events (at_ms, mac, ip, step, detail, bytes, boot_id) ",
        );
        insert.push_values(rows, |mut row, e| {
            row.push_bind(e.at_ms)
                .push_bind(e.mac.map(|m| m.to_string()))
                .push_bind(e.ip.map(ip_text))
                .push_bind(e.step)
                .push_bind(e.detail.to_string())
                .push_bind(e.bytes.map(|b| b as i64))
                .push_bind(e.boot_id);
        });
        insert.build().execute(db).await?;
    });
    Ok(())
}

async fn insert_boot(conn: &mut Conn<'_>, b: &BootRecord) -> Result<(), sqlx::Error> {
    on_conn!(conn, db => sqlx::query(
        "INSERT INTO boots (id, mac, token_hash, stream, generation, image, state, reason, started_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(b.id)
    .bind(b.mac.to_string())
    .bind(&b.token_hash)
    .bind(&b.stream)
    .bind(b.generation)
    .bind(&b.image)
    .bind(b.state.as_str())
    .bind(&b.reason)
    .bind(b.started_ms)
    .execute(&mut *db)
    .await.map(|r| r.rows_affected()))?;
    Ok(())
}

async fn add_root_read(conn: &mut Conn<'_>, r: &RootRead) -> Result<(), sqlx::Error> {
    on_conn!(conn, db => sqlx::query(
        "UPDATE boots SET root_export = COALESCE($1, root_export),
             root_bytes = root_bytes + $2, verify_failures = verify_failures + $3
         WHERE id = $4",
    )
    .bind(&r.export)
    .bind(i64::try_from(r.bytes).unwrap_or(i64::MAX))
    .bind(i32::try_from(r.verify_failures).unwrap_or(i32::MAX))
    .bind(r.boot_id)
    .execute(&mut *db)
    .await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// Lease changes in order: bindings in multi-row upserts (a new statement
/// whenever an address repeats), releases as deletes.
async fn write_leases(conn: &mut Conn<'_>, leases: &[&LeaseRecord]) -> Result<(), sqlx::Error> {
    let mut pending: Vec<&LeaseRecord> = Vec::new();
    let mut ips = std::collections::HashSet::new();
    for l in leases {
        let free = l.state.is_none();
        if free || !ips.insert(l.ip) || pending.len() >= LEASES_PER_STATEMENT {
            upsert_leases(conn, &pending).await?;
            pending.clear();
            ips.clear();
            ips.insert(l.ip);
        }
        if free {
            on_conn!(conn, db => sqlx::query("DELETE FROM leases WHERE ip = $1")
                .bind(ip_text(l.ip))
                .execute(&mut *db)
                .await.map(|r| r.rows_affected()))?;
        } else {
            pending.push(l);
        }
    }
    upsert_leases(conn, &pending).await
}

/// Leases per multi-row upsert (7 parameters each).
const LEASES_PER_STATEMENT: usize = 500;

async fn upsert_leases(conn: &mut Conn<'_>, rows: &[&LeaseRecord]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let now = now_ms();
    on_conn!(conn, db => {
        let mut upsert = sqlx::QueryBuilder::new(
            "INSERT INTO leases (ip, mac, state, expires_at_ms, hostname, updated_ms, iaid) ",
        );
        upsert.push_values(rows, |mut row, l| {
            row.push_bind(ip_text(l.ip))
                .push_bind(l.mac.map(|m| m.to_string()))
                .push_bind(l.state.map(LeaseState::as_str))
                .push_bind(l.expires_at_ms)
                .push_bind(l.hostname.clone())
                .push_bind(now)
                .push_bind(l.iaid.map(i64::from));
        });
        upsert.push(
            " ON CONFLICT (ip) DO UPDATE SET mac = excluded.mac, state = excluded.state,
                 expires_at_ms = excluded.expires_at_ms, hostname = excluded.hostname, updated_ms = excluded.updated_ms,
                 iaid = excluded.iaid",
        );
        upsert.build().execute(db).await?;
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::MachineKind;

    fn seen(mac: u8, at_ms: i64) -> MachineFacts {
        MachineFacts {
            mac: Some(format!("52:54:00:00:00:{mac:02x}").parse().unwrap()),
            at_ms,
            ..MachineFacts::default()
        }
    }

    /// Merged facts leave the row as the upserts in turn would, and an
    /// inheritance is never merged across.
    #[test]
    fn facts_of_one_machine_merge_in_order() {
        let first = MachineFacts {
            uuid: Some("u1".into()),
            kind: Some(MachineKind::Switch),
            hostname: Some("a".into()),
            ..seen(1, 10)
        };
        let second = MachineFacts {
            uuid: Some("u2".into()),
            serial: Some("SN".into()),
            ..seen(1, 20)
        };
        let inherited = MachineFacts {
            inherited: Some(Box::default()),
            ..seen(1, 30)
        };
        let batch = [
            Record::MachineSeen(first),
            Record::MachineSeen(seen(2, 15)),
            Record::MachineSeen(second),
            Record::MachineSeen(inherited),
            Record::MachineSeen(MachineFacts {
                hostname: Some("b".into()),
                ..seen(1, 40)
            }),
        ];
        let merged = merged_machines(&batch);
        let summary: Vec<_> = merged
            .iter()
            .map(|m| {
                (
                    m.mac.unwrap().to_string(),
                    m.uuid.clone(),
                    m.serial.clone(),
                    m.kind,
                    m.hostname.clone(),
                    m.inherited.is_some(),
                    m.at_ms,
                )
            })
            .collect();
        let mac = |n: u8| format!("52:54:00:00:00:0{n}");
        assert_eq!(
            summary,
            vec![
                (
                    mac(1),
                    Some("u2".into()),
                    Some("SN".into()),
                    Some(MachineKind::Switch),
                    Some("a".into()),
                    false,
                    20
                ),
                (mac(2), None, None, None, None, false, 15),
                (mac(1), None, None, None, None, true, 30),
                (mac(1), None, None, None, Some("b".into()), false, 40),
            ]
        );
    }
}
