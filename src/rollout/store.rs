//! Rollouts and machine health in SQLite (migration 0007): one
//! [`Persist`] is written inside the caller's transaction, so a transition
//! and its effects (a failed boot row, a moved group pointer) commit
//! together. Rows are replaced only by a higher `rev` (see [`super::engine`]).

use sqlx::SqliteConnection;

use super::engine::{Entry, Fleet, Persist};
use super::watchdog::{Health, Policy};
use super::Rollout;
use crate::domain::MacAddr;

/// Writes everything `p` holds on `conn` (inside a transaction the caller
/// opened with `BEGIN IMMEDIATE` and commits).
pub async fn write(conn: &mut SqliteConnection, p: &Persist) -> Result<(), sqlx::Error> {
    for r in &p.rollouts {
        sqlx::query(
            "INSERT INTO rollouts (id, group_name, slot, state, holds, rollout, created_ms, created_by, updated_ms, rev)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (id) DO UPDATE SET state = ?4, holds = ?5, rollout = ?6, updated_ms = ?9, rev = ?10
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
        .execute(&mut *conn)
        .await?;
    }
    for h in &p.health {
        sqlx::query(
            "INSERT INTO machine_health (mac, health, degraded, updated_ms, rev) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (mac) DO UPDATE SET health = ?2, degraded = ?3, updated_ms = ?4, rev = ?5
             WHERE excluded.rev > machine_health.rev",
        )
        .bind(h.mac.to_string())
        .bind(&h.json)
        .bind(h.degraded)
        .bind(h.updated_ms)
        .bind(h.rev)
        .execute(&mut *conn)
        .await?;
    }
    for (id, reason) in &p.failed_boots {
        sqlx::query(
            "UPDATE boots SET state = 'failed', reason = ? WHERE id = ? AND state = 'served'",
        )
        .bind(reason)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    }
    for m in &p.pointers {
        let (stream, number) = (&m.generation.stream, m.generation.number);
        crate::store::set_group_pointer(conn, &m.group, m.slot, stream, number, p.at_ms).await?;
    }
    Ok(())
}

#[derive(sqlx::FromRow)]
struct RolloutRow {
    id: i64,
    slot: String,
    rollout: String,
    created_ms: i64,
    created_by: Option<String>,
    updated_ms: i64,
}

/// Everything, to resume where the server stopped.
pub async fn load(pool: &sqlx::SqlitePool, policy: Policy) -> Result<Fleet, sqlx::Error> {
    let rows: Vec<RolloutRow> = sqlx::query_as(
        "SELECT id, slot, rollout, created_ms, created_by, updated_ms FROM rollouts ORDER BY id",
    )
    .fetch_all(pool)
    .await?;
    let mut rollouts = Vec::new();
    for r in rows {
        let slot = r.slot.parse::<crate::domain::Slot>();
        match (serde_json::from_str::<Rollout>(&r.rollout), slot) {
            (Ok(rollout), Ok(slot)) => rollouts.push(Entry {
                id: r.id,
                slot,
                rollout,
                created_ms: r.created_ms,
                created_by: r.created_by,
                updated_ms: r.updated_ms,
            }),
            (Err(e), _) => {
                tracing::error!(rollout = r.id, error = %e, "unreadable rollout row; skipped")
            }
            (_, Err(e)) => {
                tracing::error!(rollout = r.id, error = %e, "rollout row with an unknown slot; skipped")
            }
        }
    }
    let health_rows: Vec<(String, String)> =
        sqlx::query_as("SELECT mac, health FROM machine_health")
            .fetch_all(pool)
            .await?;
    let health = health_rows
        .into_iter()
        .filter_map(|(mac, json)| {
            let mac: MacAddr = mac.parse().ok()?;
            let h: Health = serde_json::from_str(&json).ok()?;
            Some((mac, h))
        })
        .collect();
    let (rev,): (i64,) = sqlx::query_as(
        "SELECT MAX(COALESCE((SELECT MAX(rev) FROM rollouts), 0),
                    COALESCE((SELECT MAX(rev) FROM machine_health), 0))",
    )
    .fetch_one(pool)
    .await?;
    Ok(Fleet::restore(policy, rollouts, health, rev))
}
