//! Reads of the `machines` table: one row type for every reader (the
//! inventory at start, the API's lists and details), and a page read that
//! streams in MAC order so a page costs about its own size, not the
//! fleet's. Writes come from the ledger writer ([`super::writer`]) and the
//! inventory's transactions.

use futures_util::stream::BoxStream;
use futures_util::StreamExt;

use super::{Store, StoreError};
use crate::domain::{MacAddr, MachineKind};

/// A row of `machines`, every column a reader uses.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MachineRow {
    pub mac: String,
    pub kind: String,
    pub kind_by_operator: bool,
    pub group_name: String,
    pub group_assigned: bool,
    /// JSON object of labels.
    pub labels: String,
    pub hostname: Option<String>,
    pub uuid: Option<String>,
    pub serial: Option<String>,
    /// Firmware architecture (`bios`, `efi-x64`, …).
    pub arch: Option<String>,
    pub firmware: Option<String>,
    pub vendor_class: Option<String>,
    pub ip: Option<String>,
    pub circuit_id: Option<String>,
    pub remote_id: Option<String>,
    pub pin_stream: Option<String>,
    pub pin_generation: Option<i64>,
    pub current_stream: Option<String>,
    pub current_generation: Option<i64>,
    pub last_good_stream: Option<String>,
    pub last_good_generation: Option<i64>,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// The state of its latest boot (pages and details only).
    #[sqlx(default)]
    pub last_boot: Option<String>,
}

/// The columns of [`MachineRow`] without `last_boot`.
macro_rules! machine_columns {
    () => {
        "m.mac, m.kind, m.kind_by_operator, m.group_name, m.group_assigned, m.labels,
         m.hostname, m.uuid, m.serial, m.arch, m.firmware, m.vendor_class, m.ip,
         m.circuit_id, m.remote_id, m.pin_stream, m.pin_generation,
         m.current_stream, m.current_generation, m.last_good_stream, m.last_good_generation,
         m.first_seen_ms, m.last_seen_ms"
    };
}

/// `last_boot`: one indexed lookup per row read (`boots_by_mac`).
macro_rules! last_boot {
    () => {
        "(SELECT b.state FROM boots b WHERE b.mac = m.mac ORDER BY b.id DESC LIMIT 1) AS last_boot"
    };
}

/// What the database can filter a page of machines by; the caller filters
/// the rest (selectors, state, architecture) as rows stream in.
#[derive(Debug, Clone, Default)]
pub struct MachineQuery {
    /// MACs after this one (the previous page's last).
    pub after: Option<MacAddr>,
    pub group: Option<String>,
    pub kind: Option<MachineKind>,
    /// Running (confirmed) a generation of this stream / this number.
    pub stream: Option<String>,
    pub generation: Option<i64>,
    pub seen_since_ms: Option<i64>,
    pub seen_before_ms: Option<i64>,
}

impl Store {
    /// Every machine (the inventory's load at start).
    pub async fn all_machines(&self) -> Result<Vec<MachineRow>, StoreError> {
        Ok(
            sqlx::query_as(concat!("SELECT ", machine_columns!(), " FROM machines m"))
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// One machine, with the state of its latest boot.
    pub async fn machine_row(&self, mac: MacAddr) -> Result<Option<MachineRow>, StoreError> {
        Ok(sqlx::query_as(concat!(
            "SELECT ",
            machine_columns!(),
            ", ",
            last_boot!(),
            " FROM machines m WHERE m.mac = ?"
        ))
        .bind(mac.to_string())
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Machines matching `q` in MAC order, as a stream: the caller stops
    /// reading once its page is full.
    pub fn machine_rows<'a>(
        &'a self,
        q: &'a MachineQuery,
    ) -> BoxStream<'a, Result<MachineRow, StoreError>> {
        sqlx::query_as(concat!(
            "SELECT ",
            machine_columns!(),
            ", ",
            last_boot!(),
            " FROM machines m
             WHERE (?1 IS NULL OR m.mac > ?1) AND (?2 IS NULL OR group_name = ?2)
               AND (?3 IS NULL OR kind = ?3) AND (?4 IS NULL OR current_stream = ?4)
               AND (?5 IS NULL OR current_generation = ?5)
               AND (?6 IS NULL OR last_seen_ms >= ?6) AND (?7 IS NULL OR last_seen_ms < ?7)
             ORDER BY m.mac"
        ))
        .bind(q.after.map(|m| m.to_string()))
        .bind(&q.group)
        .bind(q.kind.map(MachineKind::as_str))
        .bind(&q.stream)
        .bind(q.generation)
        .bind(q.seen_since_ms)
        .bind(q.seen_before_ms)
        .fetch(&self.pool)
        .map(|r| r.map_err(StoreError::from))
        .boxed()
    }
}
