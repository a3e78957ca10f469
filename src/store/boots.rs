//! The `boots` table as the inventory uses it: open boots to reload at
//! start, and a confirmation (the ledger writer inserts boot rows).

use super::tx::Tx;
use super::{Store, StoreError};
use crate::domain::{BootState, GenerationId, MacAddr};

/// A boot whose token may still confirm.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OpenBootRow {
    pub id: i64,
    pub mac: String,
    pub token_hash: String,
    pub stream: Option<String>,
    pub generation: Option<i64>,
    pub started_ms: i64,
}

impl Store {
    /// Boots served (or failed) since `since_ms` and not confirmed, oldest
    /// first; and the highest boot id so far.
    pub async fn open_boots(&self, since_ms: i64) -> Result<(Vec<OpenBootRow>, i64), StoreError> {
        let open = on_pool!(&self.pool, db => sqlx::query_as(
            "SELECT id, mac, token_hash, stream, generation, started_ms FROM boots
             WHERE state IN ($1, $2) AND started_ms > $3 ORDER BY id",
        )
        .bind(BootState::Served.as_str())
        .bind(BootState::Failed.as_str())
        .bind(since_ms)
        .fetch_all(db)
        .await)?;
        let (max,): (i64,) = on_pool!(&self.pool, db => sqlx::query_as("SELECT COALESCE(MAX(id), 0) FROM boots")
            .fetch_one(db)
            .await)?;
        Ok((open, max))
    }
}

impl Store {
    /// `mac`'s newest boot that served a generation.
    pub async fn latest_boot_of(
        &self,
        mac: MacAddr,
    ) -> Result<Option<(i64, GenerationId)>, StoreError> {
        let row: Option<(i64, String, i64)> = on_pool!(&self.pool, db => sqlx::query_as(
            "SELECT id, stream, generation FROM boots
             WHERE mac = $1 AND stream IS NOT NULL AND generation IS NOT NULL
             ORDER BY id DESC LIMIT 1",
        )
        .bind(mac.to_string())
        .fetch_optional(db)
        .await)?;
        Ok(row.map(|(id, stream, number)| (id, GenerationId { stream, number })))
    }
}

impl Tx {
    /// Gives open boot `id` a new token (by its hash): `false` when the boot
    /// is not open any more (confirmed, or gone).
    pub async fn reissue_token(
        &mut self,
        id: i64,
        old_hash: &str,
        new_hash: &str,
    ) -> Result<bool, StoreError> {
        let updated = on_tx!(self, db => sqlx::query(
            "UPDATE boots SET token_hash = $1 WHERE id = $2 AND token_hash = $3 AND state IN ($4, $5)",
        )
        .bind(new_hash)
        .bind(id)
        .bind(old_hash)
        .bind(BootState::Served.as_str())
        .bind(BootState::Failed.as_str())
        .execute(&mut *db)
        .await.map(|r| r.rows_affected()))?;
        Ok(updated == 1)
    }

    /// Confirms boot `id` of `mac` (served, or failed by the watchdog and
    /// confirmed late): `generation` becomes its current and last good.
    /// `false`: the boot was confirmed already (nothing written).
    pub async fn confirm_boot(
        &mut self,
        id: i64,
        mac: MacAddr,
        generation: &GenerationId,
        now_ms: i64,
        secure_boot: Option<bool>,
    ) -> Result<bool, StoreError> {
        let updated = on_tx!(self, db => sqlx::query(
            "UPDATE boots SET state = $1, confirmed_ms = $2, secure_boot = $6
             WHERE id = $3 AND state IN ($4, $5)",
        )
        .bind(BootState::Confirmed.as_str())
        .bind(now_ms)
        .bind(id)
        .bind(BootState::Served.as_str())
        .bind(BootState::Failed.as_str())
        .bind(secure_boot)
        .execute(&mut *db)
        .await.map(|r| r.rows_affected()))?;
        if updated == 0 {
            return Ok(false);
        }
        on_tx!(self, db => sqlx::query(
            "UPDATE machines SET current_stream = $1, current_generation = $2,
                 last_good_stream = $1, last_good_generation = $2, last_seen_ms = CASE WHEN last_seen_ms > $3 THEN last_seen_ms ELSE $3 END,
                 secure_boot = $5
             WHERE mac = $4",
        )
        .bind(&generation.stream)
        .bind(generation.number)
        .bind(now_ms)
        .bind(mac.to_string())
        .bind(secure_boot)
        .execute(&mut *db)
        .await.map(|r| r.rows_affected()))?;
        Ok(true)
    }
}
