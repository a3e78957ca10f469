//! Event retention: the boot ledger's `events` rows are kept for
//! `[events] retention` (30 days) and at most `[events] max_rows` (one
//! million) of the newest, so nothing a client can cause grows the
//! database without bound. Boots, machines, leases and rollouts are not
//! touched: they are the fleet's history, one row per boot, not per packet.
//!
//! Runs on a timer, deleting in chunks of [`CHUNK`] rows, each its own short
//! transaction, so the ledger writer never waits long behind it.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::Store;

/// Rows deleted per statement.
pub const CHUNK: i64 = 10_000;
/// Chunks per pass at most (a pass then resumes at the next tick).
const CHUNKS_PER_PASS: usize = 100;
/// How often a pass runs.
const EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawEvents {
    pub retention: String,
    pub max_rows: u64,
}

impl Default for RawEvents {
    fn default() -> Self {
        Self {
            retention: "30d".into(),
            max_rows: 1_000_000,
        }
    }
}

/// Validated `[events]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_age: Duration,
    pub max_rows: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(30 * 24 * 3600),
            max_rows: 1_000_000,
        }
    }
}

/// Validates `[events]`; errors are `(key, message)`.
pub fn validate(raw: &RawEvents) -> Result<Retention, (String, String)> {
    let max_age = humantime::parse_duration(raw.retention.trim())
        .ok()
        .filter(|d| *d >= Duration::from_secs(60))
        .ok_or_else(|| {
            (
                "events.retention".to_string(),
                format!(
                    "{:?} is not a duration of at least 1m like \"30d\"",
                    raw.retention
                ),
            )
        })?;
    if raw.max_rows < 1000 {
        return Err(("events.max_rows".into(), "must be at least 1000".into()));
    }
    Ok(Retention {
        max_age,
        max_rows: raw.max_rows,
    })
}

/// Prunes now and then until `shutdown`.
pub async fn run(store: Store, retention: Retention, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !store.leads() {
            continue; // with `[store] shared`, the leader prunes
        }
        match prune(&store, retention, crate::ledger::now_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "old events pruned"),
            Err(e) => tracing::error!(error = %e, "event retention"),
        }
    }
}

/// Deletes events older than the retention, then all but the newest
/// `max_rows`; returns how many went.
pub async fn prune(store: &Store, r: Retention, now_ms: i64) -> Result<u64, sqlx::Error> {
    let oldest_kept = now_ms - r.max_age.as_millis().min(i64::MAX as u128) as i64;
    let (newest,): (Option<i64>,) = on_pool!(store.pool(), db => sqlx::query_as("SELECT MAX(id) FROM events")
        .fetch_one(db)
        .await)?;
    let first_kept_id = newest.unwrap_or(0) - r.max_rows.min(i64::MAX as u64) as i64;
    let mut deleted = 0;
    for _ in 0..CHUNKS_PER_PASS {
        let n = on_pool!(store.pool(), db => sqlx::query(
            "DELETE FROM events WHERE id IN
                 (SELECT id FROM events WHERE at_ms < $1 OR id <= $2 ORDER BY id LIMIT $3)",
        )
        .bind(oldest_kept)
        .bind(first_kept_id)
        .bind(CHUNK)
        .execute(db)
        .await.map(|r| r.rows_affected()))?;
        deleted += n;
        if (n as i64) < CHUNK {
            break;
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn old_and_surplus_events_go_and_the_rest_stays() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let day = 24 * 3600 * 1000;
        let now = 100 * day;
        for i in 0..3000i64 {
            // The first 500 are 40 days old.
            let at = if i < 500 {
                now - 40 * day
            } else {
                now - 1000 + i
            };
            on_pool!(store.pool(), db => sqlx::query("INSERT INTO events (at_ms, step, detail) VALUES ($1, 'x', '{}')")
                .bind(at)
                .execute(db)
                .await.map(|r| r.rows_affected()))
                .unwrap();
        }
        let r = Retention {
            max_age: Duration::from_secs(30 * 24 * 3600),
            max_rows: 2000,
        };
        assert_eq!(prune(&store, r, now).await.unwrap(), 1000);
        let (left, min_id): (i64, i64) =
            on_pool!(store.pool(), db => sqlx::query_as("SELECT COUNT(*), MIN(id) FROM events")
            .fetch_one(db)
            .await)
            .unwrap();
        assert_eq!((left, min_id), (2000, 1001), "the newest 2,000 stay");
        assert_eq!(prune(&store, r, now).await.unwrap(), 0);
        assert!(validate(&RawEvents {
            retention: "soon".into(),
            ..RawEvents::default()
        })
        .is_err());
    }
}
