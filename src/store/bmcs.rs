//! BMCs (`bmcs`): one row per machine that has its own, one per group that
//! gives its members a default. Every field but the owner may be absent:
//! a machine's row overrides its group's field by field. The password is
//! stored only sealed (by the `bmc` module's `seal`); this module never sees it
//! in the clear.

use super::tx::Tx;
use super::{Store, StoreError};

/// Whose BMC a row describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerKind {
    Machine,
    Group,
}

impl OwnerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OwnerKind::Machine => "machine",
            OwnerKind::Group => "group",
        }
    }
}

/// A row of `bmcs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct BmcRow {
    pub owner_kind: String,
    pub owner: String,
    pub protocol: Option<String>,
    pub address: Option<String>,
    pub system_id: Option<String>,
    pub username: Option<String>,
    /// The password, sealed.
    pub sealed: Option<String>,
    pub boot_target: Option<String>,
    pub verify_tls: Option<bool>,
    pub power_state: Option<String>,
    pub power_ms: Option<i64>,
    pub updated_ms: i64,
}

impl BmcRow {
    /// Whether it holds any BMC field: a machine's row may only remember
    /// the last power state its group's BMC reported.
    pub fn holds_bmc(&self) -> bool {
        self.protocol.is_some()
            || self.address.is_some()
            || self.system_id.is_some()
            || self.username.is_some()
            || self.sealed.is_some()
            || self.boot_target.is_some()
            || self.verify_tls.is_some()
    }
}

const COLUMNS: &str = "owner_kind, owner, protocol, address, system_id, username, sealed, \
                       boot_target, verify_tls, power_state, power_ms, updated_ms";

impl Store {
    /// The BMC row of a machine (`owner` its MAC) or a group.
    pub async fn bmc(&self, kind: OwnerKind, owner: &str) -> Result<Option<BmcRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM bmcs WHERE owner_kind = $1 AND owner = $2");
        Ok(on_pool!(&self.pool, db => sqlx::query_as(&sql)
            .bind(kind.as_str())
            .bind(owner)
            .fetch_optional(db)
            .await)?)
    }

    /// Every BMC row (machines' and groups'): for `machines list`.
    pub async fn bmcs(&self) -> Result<Vec<BmcRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM bmcs ORDER BY owner_kind, owner");
        Ok(on_pool!(&self.pool, db => sqlx::query_as(&sql).fetch_all(db).await)?)
    }

    /// Writes a row whole, in a transaction of its own (see [`Tx::put_bmc`]).
    pub async fn put_bmc(&self, row: &BmcRow) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        tx.put_bmc(row).await?;
        tx.commit().await
    }

    /// Removes a row; whether there was one.
    pub async fn delete_bmc(&self, kind: OwnerKind, owner: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let done = tx.delete_bmc(kind, owner).await?;
        tx.commit().await?;
        Ok(done)
    }

    /// Remembers what a machine's BMC last said of its power. A machine
    /// whose BMC comes only from its group gets a row of its own holding
    /// nothing else, so the group's stays the group's.
    pub async fn note_power(&self, mac: &str, state: &str, now_ms: i64) -> Result<(), StoreError> {
        on_pool!(&self.pool, db => sqlx::query(
            "INSERT INTO bmcs (owner_kind, owner, power_state, power_ms, updated_ms) \
             VALUES ('machine', $1, $2, $3, $3) \
             ON CONFLICT (owner_kind, owner) DO UPDATE SET power_state = excluded.power_state, \
                 power_ms = excluded.power_ms",
        )
        .bind(mac)
        .bind(state)
        .bind(now_ms)
        .execute(db)
        .await
        .map(drop))?;
        Ok(())
    }
}

/// A BMC write in a larger transaction (`ironboot apply`).
#[derive(Debug, Clone)]
pub enum BmcWrite {
    Put(Box<BmcRow>),
    Delete(OwnerKind, String),
}

impl Tx {
    /// Writes a row whole (what the operator set; the last power state
    /// known is kept).
    pub async fn put_bmc(&mut self, row: &BmcRow) -> Result<(), StoreError> {
        on_tx!(self, db => sqlx::query(
            "INSERT INTO bmcs (owner_kind, owner, protocol, address, system_id, username, sealed, \
                               boot_target, verify_tls, updated_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (owner_kind, owner) DO UPDATE SET protocol = excluded.protocol, \
                 address = excluded.address, system_id = excluded.system_id, \
                 username = excluded.username, sealed = excluded.sealed, \
                 boot_target = excluded.boot_target, verify_tls = excluded.verify_tls, \
                 updated_ms = excluded.updated_ms",
        )
        .bind(&row.owner_kind)
        .bind(&row.owner)
        .bind(&row.protocol)
        .bind(&row.address)
        .bind(&row.system_id)
        .bind(&row.username)
        .bind(&row.sealed)
        .bind(&row.boot_target)
        .bind(row.verify_tls)
        .bind(row.updated_ms)
        .execute(&mut *db)
        .await
        .map(drop))?;
        Ok(())
    }

    /// Removes a row; whether there was one.
    pub async fn delete_bmc(&mut self, kind: OwnerKind, owner: &str) -> Result<bool, StoreError> {
        let done = on_tx!(self, db => sqlx::query(
            "DELETE FROM bmcs WHERE owner_kind = $1 AND owner = $2",
        )
        .bind(kind.as_str())
        .bind(owner)
        .execute(&mut *db)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(done > 0)
    }

    pub async fn write_bmc(&mut self, w: &BmcWrite) -> Result<(), StoreError> {
        match w {
            BmcWrite::Put(row) => self.put_bmc(row).await,
            BmcWrite::Delete(kind, owner) => self.delete_bmc(*kind, owner).await.map(drop),
        }
    }
}
