//! The `machines` table: one row type for every reader (the inventory at
//! start, the API's lists and details), a page read that streams in MAC
//! order so a page costs about its own size, not the fleet's, and the
//! operator's writes inside a [`Tx`]. What machines report of themselves
//! comes through the ledger writer ([`super::writer`]).

use std::collections::{BTreeMap, HashSet};

use super::tx::Tx;
use super::{Store, StoreError};
use crate::domain::{BootState, GenerationId, MacAddr, MachineKind};

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
    /// Whether its latest confirmed boot said Secure Boot was on (a claim).
    pub secure_boot: Option<bool>,
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
         m.first_seen_ms, m.last_seen_ms, m.secure_boot"
    };
}

/// `last_boot`: one indexed lookup per row read (`boots_by_mac`).
macro_rules! last_boot {
    () => {
        "(SELECT b.state FROM boots b WHERE b.mac = m.mac ORDER BY b.id DESC LIMIT 1) AS last_boot"
    };
}

/// The `WHERE` of a page of machines: `$1`…`$9` are [`MachineQuery`]'s
/// fields in order (bound by `bind_query!`).
macro_rules! machine_filter {
    () => {
        "($1 IS NULL OR m.mac > $1) AND ($2 IS NULL OR group_name = $2)
         AND ($3 IS NULL OR kind = $3) AND ($4 IS NULL OR current_stream = $4)
         AND ($5 IS NULL OR current_generation = $5)
         AND ($6 IS NULL OR last_seen_ms >= $6) AND ($7 IS NULL OR last_seen_ms < $7)
         AND ($8 IS NULL OR COALESCE((SELECT b.state FROM boots b WHERE b.mac = m.mac
                                      ORDER BY b.id DESC LIMIT 1), 'nothing') = $8)
         AND ($9 IS NULL OR m.arch = $9)"
    };
}

/// Binds a [`MachineQuery`] (`$1`…`$9`) and a row limit (`$10`).
macro_rules! bind_query {
    ($query:expr, $q:expr, $limit:expr) => {
        $query
            .bind($q.after.map(|m| m.to_string()))
            .bind(&$q.group)
            .bind($q.kind.map(MachineKind::as_str))
            .bind(&$q.stream)
            .bind($q.generation)
            .bind($q.seen_since_ms)
            .bind($q.seen_before_ms)
            .bind($q.last_boot.map(BootState::as_str))
            .bind(&$q.firmware_arch)
            .bind($limit)
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
    /// The state of its latest boot (`nothing` for none): filtered here,
    /// not as rows stream in, so a rare state does not cost a walk over
    /// the fleet's rows.
    pub last_boot: Option<BootState>,
    /// The architecture its firmware announced (`efi-x64`), as stored.
    pub firmware_arch: Option<String>,
}

impl Store {
    /// Every machine (the inventory's load at start).
    pub async fn all_machines(&self) -> Result<Vec<MachineRow>, StoreError> {
        Ok(
            on_pool!(&self.pool, db => sqlx::query_as(concat!("SELECT ", machine_columns!(), " FROM machines m"))
                .fetch_all(db)
                .await)?,
        )
    }

    /// One machine, with the state of its latest boot.
    pub async fn machine_row(&self, mac: MacAddr) -> Result<Option<MachineRow>, StoreError> {
        Ok(on_pool!(&self.pool, db => sqlx::query_as(concat!(
            "SELECT ",
            machine_columns!(),
            ", ",
            last_boot!(),
            " FROM machines m WHERE m.mac = $1"
        ))
        .bind(mac.to_string())
        .fetch_optional(db)
        .await)?)
    }

    /// At most `limit` machines matching `q`, in MAC order (the caller
    /// asks for the next chunk with `q.after` set to the last MAC).
    pub async fn machine_rows(
        &self,
        q: &MachineQuery,
        limit: i64,
    ) -> Result<Vec<MachineRow>, StoreError> {
        Ok(
            on_pool!(&self.pool, db => bind_query!(sqlx::query_as(concat!(
            "SELECT ",
            machine_columns!(),
            ", ",
            last_boot!(),
            " FROM machines m WHERE ",
            machine_filter!(),
            " ORDER BY m.mac LIMIT $10"
        )), q, limit)
        .fetch_all(db)
        .await)?,
        )
    }

    /// [`Store::machine_rows`], only each machine's MAC and labels (JSON):
    /// what a label selector needs, at a fraction of a whole row's cost.
    pub async fn machine_labels(
        &self,
        q: &MachineQuery,
        limit: i64,
    ) -> Result<Vec<(String, String)>, StoreError> {
        Ok(
            on_pool!(&self.pool, db => bind_query!(sqlx::query_as(concat!(
            "SELECT m.mac, m.labels FROM machines m WHERE ",
            machine_filter!(),
            " ORDER BY m.mac LIMIT $10"
        )), q, limit)
        .fetch_all(db)
        .await)?,
        )
    }

    /// These machines' rows, in MAC order (those that exist).
    pub async fn machine_rows_of(&self, macs: &[MacAddr]) -> Result<Vec<MachineRow>, StoreError> {
        if macs.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders: Vec<String> = (1..=macs.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            concat!(
                "SELECT ",
                machine_columns!(),
                ", ",
                last_boot!(),
                " FROM machines m WHERE m.mac IN ({}) ORDER BY m.mac"
            ),
            placeholders.join(", ")
        );
        Ok(on_pool!(&self.pool, db => {
            let mut query = sqlx::query_as(&sql);
            for mac in macs {
                query = query.bind(mac.to_string());
            }
            query.fetch_all(db).await
        })?)
    }
}

/// What deleting a machine removed of its history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    pub boots: u64,
    pub events: u64,
}

impl Store {
    /// The members of `group`: `(mac, pin stream, kind)`.
    pub async fn group_members(
        &self,
        group: &str,
    ) -> Result<Vec<(String, Option<String>, String)>, StoreError> {
        Ok(on_pool!(&self.pool, db => {
            sqlx::query_as("SELECT mac, pin_stream, kind FROM machines WHERE group_name = $1")
                .bind(group)
                .fetch_all(db)
                .await
        })?)
    }
}

impl Tx {
    pub async fn machine_exists(&mut self, mac: MacAddr) -> Result<bool, StoreError> {
        Ok(
            on_tx!(self, db => sqlx::query("SELECT 1 FROM machines WHERE mac = $1")
            .bind(mac.to_string())
            .fetch_optional(&mut *db)
            .await
            .map(|row| row.is_some()))?,
        )
    }

    /// The operator assigns `mac` to `group` (`None`: removes the
    /// assignment). `false`: no such machine.
    pub async fn assign_machine(
        &mut self,
        mac: MacAddr,
        group: Option<&str>,
    ) -> Result<bool, StoreError> {
        let mac = mac.to_string();
        let updated = match group {
            Some(g) => on_tx!(self, db => sqlx::query(
                "UPDATE machines SET group_name = $1, group_assigned = TRUE WHERE mac = $2",
            )
            .bind(g)
            .bind(&mac)
            .execute(&mut *db)
            .await
            .map(|r| r.rows_affected()))?,
            None => on_tx!(self, db => sqlx::query(
                "UPDATE machines SET group_assigned = FALSE WHERE mac = $1",
            )
            .bind(&mac)
            .execute(&mut *db)
            .await
            .map(|r| r.rows_affected()))?,
        };
        Ok(updated > 0)
    }

    pub async fn set_machine_hostname(
        &mut self,
        mac: MacAddr,
        hostname: Option<&str>,
    ) -> Result<(), StoreError> {
        on_tx!(self, db => sqlx::query("UPDATE machines SET hostname = $1 WHERE mac = $2")
            .bind(hostname)
            .bind(mac.to_string())
            .execute(&mut *db)
            .await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Replaces its labels. `false`: no such machine.
    pub async fn set_machine_labels(
        &mut self,
        mac: MacAddr,
        labels: &BTreeMap<String, String>,
    ) -> Result<bool, StoreError> {
        Ok(
            on_tx!(self, db => sqlx::query("UPDATE machines SET labels = $1 WHERE mac = $2")
            .bind(serde_json::to_string(labels).expect("labels serialize"))
            .bind(mac.to_string())
            .execute(&mut *db)
            .await.map(|r| r.rows_affected()))?
                > 0,
        )
    }

    /// Pins it to a generation (`None`: unpins). `false`: no such machine.
    pub async fn set_machine_pin(
        &mut self,
        mac: MacAddr,
        pin: Option<&GenerationId>,
    ) -> Result<bool, StoreError> {
        Ok(
            on_tx!(self, db => sqlx::query("UPDATE machines SET pin_stream = $1, pin_generation = $2 WHERE mac = $3")
                .bind(pin.map(|p| p.stream.as_str()))
                .bind(pin.map(|p| p.number))
                .bind(mac.to_string())
                .execute(&mut *db)
                .await.map(|r| r.rows_affected()))?
                > 0,
        )
    }

    /// The operator sets its kind; from now on requests no longer change it.
    pub async fn set_machine_kind(
        &mut self,
        mac: MacAddr,
        kind: MachineKind,
    ) -> Result<(), StoreError> {
        on_tx!(self, db => sqlx::query("UPDATE machines SET kind = $1, kind_by_operator = TRUE WHERE mac = $2")
            .bind(kind.as_str())
            .bind(mac.to_string())
            .execute(&mut *db)
            .await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Removes its row, and with `purge` its boots and events. `None`: no
    /// such machine.
    pub async fn delete_machine(
        &mut self,
        mac: MacAddr,
        purge: bool,
    ) -> Result<Option<Removed>, StoreError> {
        let key = mac.to_string();
        let removed = on_tx!(self, db => sqlx::query("DELETE FROM machines WHERE mac = $1")
            .bind(&key)
            .execute(&mut *db)
            .await.map(|r| r.rows_affected()))?;
        if removed == 0 {
            return Ok(None);
        }
        let mut out = Removed::default();
        if purge {
            out.events = on_tx!(self, db => sqlx::query("DELETE FROM events WHERE mac = $1")
                .bind(&key)
                .execute(&mut *db)
                .await.map(|r| r.rows_affected()))?;
            out.boots = on_tx!(self, db => sqlx::query("DELETE FROM boots WHERE mac = $1")
                .bind(&key)
                .execute(&mut *db)
                .await.map(|r| r.rows_affected()))?;
        }
        Ok(Some(out))
    }

    /// Records the group selectors computed for machines whose group moved
    /// (assigned machines keep the operator's).
    pub async fn save_computed_groups(
        &mut self,
        moved: &[(MacAddr, String)],
    ) -> Result<(), StoreError> {
        for (mac, group) in moved {
            on_tx!(self, db => sqlx::query("UPDATE machines SET group_name = $1 WHERE mac = $2 AND group_assigned = FALSE")
                .bind(group)
                .bind(mac.to_string())
                .execute(&mut *db)
                .await.map(|r| r.rows_affected()))?;
        }
        Ok(())
    }

    /// Every machine's MAC, as this transaction sees them.
    pub async fn known_macs(&mut self) -> Result<HashSet<MacAddr>, StoreError> {
        let rows: Vec<(String,)> = on_tx!(self, db => sqlx::query_as("SELECT mac FROM machines")
            .fetch_all(&mut *db)
            .await)?;
        Ok(rows.into_iter().filter_map(|(m,)| m.parse().ok()).collect())
    }

    /// MACs an operator assigned to `group`, in order.
    pub async fn assigned_to(&mut self, group: &str) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = on_tx!(self, db => sqlx::query_as(
            "SELECT mac FROM machines WHERE group_assigned = TRUE AND group_name = $1 ORDER BY mac",
        )
        .bind(group)
        .fetch_all(&mut *db)
        .await)?;
        Ok(rows.into_iter().map(|(m,)| m).collect())
    }

    /// Up to `limit` machines last seen before `before_ms` that nothing
    /// holds: never booted, no lease live at `now_ms`, nothing an operator
    /// set. Oldest first.
    pub async fn unheld_machines(
        &mut self,
        before_ms: i64,
        now_ms: i64,
        limit: i64,
    ) -> Result<Vec<MacAddr>, StoreError> {
        let rows: Vec<(String,)> = on_tx!(self, db => sqlx::query_as(
            "SELECT mac FROM machines m
             WHERE last_seen_ms < $1 AND group_assigned = FALSE AND labels = '{}'
               AND hostname IS NULL AND pin_stream IS NULL AND kind_by_operator = FALSE
               AND NOT EXISTS (SELECT 1 FROM boots b WHERE b.mac = m.mac)
               AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.mac = m.mac AND l.expires_at_ms > $2)
             ORDER BY last_seen_ms LIMIT $3",
        )
        .bind(before_ms)
        .bind(now_ms)
        .bind(limit)
        .fetch_all(&mut *db)
        .await)?;
        Ok(rows.into_iter().filter_map(|(m,)| m.parse().ok()).collect())
    }
}
