//! Rollouts and machine health (migration 0007): one [`Persist`] is
//! written inside the caller's transaction, so a transition and its effects
//! (a failed boot row, a moved group pointer) commit together. Rows are
//! replaced only by a higher `rev` (the rollout engine numbers its changes).
//! Read back whole at start, as stored; `rollout::restore` makes the fleet.

use super::Conn;

use super::{Store, StoreError};
use crate::domain::fleet_rows::Persist;
use crate::domain::BootState;

/// Writes everything `p` holds on `conn` (inside a transaction the caller
/// opened with `BEGIN IMMEDIATE` and commits).
pub(crate) async fn write(conn: &mut Conn<'_>, p: &Persist) -> Result<(), sqlx::Error> {
    for r in &p.rollouts {
        on_conn!(conn, db => sqlx::query(
            "INSERT INTO rollouts (id, group_name, slot, state, holds, rollout, created_ms, created_by, updated_ms, rev)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (id) DO UPDATE SET state = $4, holds = $5, rollout = $6, updated_ms = $9, rev = $10
             WHERE excluded.rev > rollouts.rev",
        )
        .bind(r.id)
        .bind(&r.group)
        .bind(r.slot.to_string())
        .bind(r.state)
        .bind(r.holds)
        .bind(&r.json)
        .bind(r.created_ms)
        .bind(&r.created_by)
        .bind(r.updated_ms)
        .bind(r.rev)
        .execute(&mut *db)
        .await.map(|r| r.rows_affected()))?;
    }
    for h in &p.health {
        on_conn!(conn, db => sqlx::query(
            "INSERT INTO machine_health (mac, health, degraded, updated_ms, rev) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (mac) DO UPDATE SET health = $2, degraded = $3, updated_ms = $4, rev = $5
             WHERE excluded.rev > machine_health.rev",
        )
        .bind(h.mac.to_string())
        .bind(&h.json)
        .bind(h.degraded)
        .bind(h.updated_ms)
        .bind(h.rev)
        .execute(&mut *db)
        .await.map(|r| r.rows_affected()))?;
    }
    for (id, reason) in &p.failed_boots {
        on_conn!(conn, db => sqlx::query("UPDATE boots SET state = $1, reason = $2 WHERE id = $3 AND state = $4")
            .bind(BootState::Failed.as_str())
            .bind(reason)
            .bind(id)
            .bind(BootState::Served.as_str())
            .execute(&mut *db)
            .await.map(|r| r.rows_affected()))?;
    }
    for m in &p.pointers {
        super::groups::set_group_pointer(conn, &m.group, m.slot, &m.generation, p.at_ms).await?;
    }
    Ok(())
}

/// A row of `rollouts`, as stored (the rollout as JSON).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredRollout {
    pub id: i64,
    pub slot: String,
    pub rollout: String,
    pub created_ms: i64,
    pub created_by: Option<String>,
    pub updated_ms: i64,
}

/// Every rollout and every machine's health, and the highest `rev` either
/// holds.
#[derive(Debug, Clone, Default)]
pub struct StoredFleet {
    pub rollouts: Vec<StoredRollout>,
    /// `(mac, health as JSON)`.
    pub health: Vec<(String, String)>,
    pub rev: i64,
}

impl super::tx::Tx {
    /// Writes what a fleet change holds, in this transaction.
    pub async fn write_fleet_rows(&mut self, p: &Persist) -> Result<(), StoreError> {
        Ok(write(&mut self.conn(), p).await?)
    }
}

impl Store {
    /// Everything, to resume where the server stopped.
    pub async fn fleet_rows(&self) -> Result<StoredFleet, StoreError> {
        let rollouts = on_pool!(&self.pool, db => sqlx::query_as(
            "SELECT id, slot, rollout, created_ms, created_by, updated_ms FROM rollouts ORDER BY id",
        )
        .fetch_all(db)
        .await)?;
        let health = on_pool!(&self.pool, db => sqlx::query_as("SELECT mac, health FROM machine_health")
            .fetch_all(db)
            .await)?;
        let (rev,): (i64,) = on_pool!(&self.pool, db => sqlx::query_as(
            "SELECT CASE WHEN r > h THEN r ELSE h END FROM
                 (SELECT COALESCE((SELECT MAX(rev) FROM rollouts), 0) AS r,
                         COALESCE((SELECT MAX(rev) FROM machine_health), 0) AS h) AS revs",
        )
        .fetch_one(db)
        .await)?;
        Ok(StoredFleet {
            rollouts,
            health,
            rev,
        })
    }
}
