//! `fleet_inbox` and `id_blocks` (migration 0018): what a server that does
//! not lead the fleet hands to the one that does, and the id ranges that
//! keep servers from numbering two boots alike.

use super::tx::Tx;
use super::{Conn, StoreError};

/// One event a server saw, as stored: `kind` names it, `body` is its JSON.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct InboxRow {
    pub id: i64,
    pub server: String,
    pub kind: String,
    pub body: String,
    pub at_ms: i64,
}

pub use crate::domain::fleet_rows::Inboxed;

/// Appends `e` on `conn` (inside the caller's transaction).
pub(crate) async fn push(conn: &mut Conn<'_>, e: &Inboxed) -> Result<(), sqlx::Error> {
    on_conn!(conn, db => sqlx::query(
        "INSERT INTO fleet_inbox (server, kind, body, at_ms) VALUES ($1, $2, $3, $4)",
    )
    .bind(&e.server)
    .bind(e.kind)
    .bind(&e.body)
    .bind(e.at_ms)
    .execute(&mut *db)
    .await
    .map(|_| ()))
}

impl Tx {
    /// Hands `e` to the leader when this transaction commits.
    pub async fn push_fleet_event(&mut self, e: &Inboxed) -> Result<(), StoreError> {
        Ok(push(&mut self.conn(), e).await?)
    }

    /// Takes the oldest `limit` events out of the inbox: gone when this
    /// transaction commits, back if it rolls back.
    pub async fn take_fleet_events(&mut self, limit: i64) -> Result<Vec<InboxRow>, StoreError> {
        let mut rows: Vec<InboxRow> = on_tx!(self, db => sqlx::query_as(
            "DELETE FROM fleet_inbox WHERE id IN (SELECT id FROM fleet_inbox ORDER BY id LIMIT $1)
             RETURNING id, server, kind, body, at_ms",
        )
        .bind(limit)
        .fetch_all(&mut *db)
        .await)?;
        rows.sort_by_key(|r| r.id);
        Ok(rows)
    }

    /// Takes the next `n` boot ids for this server alone: above every id
    /// already taken and every boot stored (a server that ran alone before
    /// numbered from those).
    pub async fn take_boot_ids(&mut self, n: i64) -> Result<std::ops::Range<i64>, StoreError> {
        let (next,): (i64,) = on_tx!(self, db => sqlx::query_as(
            "SELECT CASE WHEN b > t THEN b ELSE t END FROM
                 (SELECT COALESCE((SELECT MAX(id) FROM boots), 0) + 1 AS b,
                         COALESCE((SELECT next FROM id_blocks WHERE name = 'boot'), 1) AS t) AS starts",
        )
        .fetch_one(&mut *db)
        .await)?;
        on_tx!(self, db => sqlx::query(
            "INSERT INTO id_blocks (name, next) VALUES ('boot', $1)
             ON CONFLICT (name) DO UPDATE SET next = excluded.next",
        )
        .bind(next + n)
        .execute(&mut *db)
        .await
        .map(|_| ()))?;
        Ok(next..next + n)
    }
}
