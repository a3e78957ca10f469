//! The boot ledger as the API reads it: pages of boots (with their steps,
//! in one more query for the whole page, never one per boot), pages of
//! events, and the per-generation boot counts `/metrics` shows.
//!
//! Pages go newest first, keyed by row id: `before` is the last id of the
//! previous page. Each read returns at most `limit` rows and says whether
//! more exist.

use std::collections::HashMap;

use super::{Store, StoreError};
use crate::domain::{BootState, MacAddr};

/// Which boots, and how many.
#[derive(Debug, Clone, Default)]
pub struct BootQuery {
    pub mac: Option<MacAddr>,
    /// Only ids below this one (the previous page's last).
    pub before: Option<i64>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub stream: Option<String>,
    pub generation: Option<i64>,
    pub state: Option<BootState>,
    pub limit: i64,
}

/// A row of `boots`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BootRow {
    pub id: i64,
    pub mac: String,
    pub stream: Option<String>,
    pub generation: Option<i64>,
    pub image: Option<String>,
    pub state: String,
    pub reason: Option<String>,
    pub started_ms: i64,
    pub confirmed_ms: Option<i64>,
    /// The root image's NBD export, when the boot read one.
    pub root_export: Option<String>,
    /// Bytes read over NBD for the root image and its hash tree.
    pub root_bytes: i64,
    /// Verification failures the machine reported.
    pub verify_failures: i64,
}

/// A step of a boot: its event, as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StepRow {
    pub boot_id: i64,
    pub at_ms: i64,
    pub step: String,
    pub detail: String,
    pub bytes: Option<i64>,
}

/// Which events, and how many.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub mac: Option<MacAddr>,
    pub before: Option<i64>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// A step (`dhcp.ack`) or a family of steps (`dhcp`).
    pub step: Option<String>,
    pub boot: Option<i64>,
    /// Of boots that served this stream / generation number.
    pub stream: Option<String>,
    pub generation: Option<i64>,
    pub limit: i64,
}

/// A row of `events`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventRow {
    pub id: i64,
    pub at_ms: i64,
    pub mac: Option<String>,
    pub ip: Option<String>,
    pub step: String,
    pub detail: String,
    pub bytes: Option<i64>,
    pub boot_id: Option<i64>,
}

/// Boots a generation started, confirmed and failed (for `/metrics`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootCounts {
    pub started: u64,
    pub confirmed: u64,
    pub failed: u64,
}

/// At most `limit` rows, and whether a further page exists.
fn page<T>(mut rows: Vec<T>, limit: i64) -> (Vec<T>, bool) {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit.max(0) as usize);
    (rows, more)
}

impl Store {
    /// A page of boots, newest first.
    pub async fn boots(&self, q: &BootQuery) -> Result<(Vec<BootRow>, bool), StoreError> {
        let rows: Vec<BootRow> = on_pool!(&self.pool, db => sqlx::query_as(
            "SELECT id, mac, stream, generation, image, state, reason, started_ms, confirmed_ms,
                    root_export, root_bytes, CAST(verify_failures AS BIGINT) AS verify_failures
             FROM boots
             WHERE ($1 IS NULL OR mac = $1) AND ($2 IS NULL OR id < $2)
               AND ($3 IS NULL OR started_ms >= $3) AND ($4 IS NULL OR started_ms < $4)
               AND ($5 IS NULL OR stream = $5) AND ($6 IS NULL OR generation = $6)
               AND ($7 IS NULL OR state = $7)
             ORDER BY id DESC LIMIT $8",
        )
        .bind(q.mac.map(|m| m.to_string()))
        .bind(q.before)
        .bind(q.since_ms)
        .bind(q.until_ms)
        .bind(&q.stream)
        .bind(q.generation)
        .bind(q.state.map(BootState::as_str))
        .bind(q.limit + 1)
        .fetch_all(db)
        .await)?;
        Ok(page(rows, q.limit))
    }

    /// The steps of `boots`, oldest first per boot, in one query.
    pub async fn steps_of(&self, boots: &[i64]) -> Result<HashMap<i64, Vec<StepRow>>, StoreError> {
        let mut out: HashMap<i64, Vec<StepRow>> = HashMap::new();
        if boots.is_empty() {
            return Ok(out);
        }
        let rows: Vec<StepRow> = on_pool!(&self.pool, db => {
            let mut q = sqlx::QueryBuilder::new(
                "SELECT boot_id, at_ms, step, detail, bytes FROM events WHERE boot_id IN ",
            );
            q.push_tuples(boots, |mut b, id| {
                b.push_bind(*id);
            });
            q.push(" ORDER BY id");
            q.build_query_as().fetch_all(db).await?
        });
        for row in rows {
            out.entry(row.boot_id).or_default().push(row);
        }
        Ok(out)
    }

    /// A page of events, newest first.
    pub async fn events(&self, q: &EventQuery) -> Result<(Vec<EventRow>, bool), StoreError> {
        let family = q.step.as_ref().map(|s| format!("{s}.%"));
        // One machine's events through the index on `mac`: written as
        // `$1 IS NULL OR …` the planner cannot use it, and walks every event
        // newer than the machine's (seen: 100 ms at a million events).
        let of_machine = if q.mac.is_some() {
            "e.mac = $1"
        } else {
            "$1 IS NULL"
        };
        let sql = format!(
            "SELECT e.id, e.at_ms, e.mac, e.ip, e.step, e.detail, e.bytes, e.boot_id
             FROM events e LEFT JOIN boots b ON b.id = e.boot_id
             WHERE {of_machine} AND ($2 IS NULL OR e.id < $2)
               AND ($3 IS NULL OR e.at_ms >= $3) AND ($4 IS NULL OR e.at_ms < $4)
               AND ($5 IS NULL OR e.step = $5 OR e.step LIKE $6)
               AND ($7 IS NULL OR e.boot_id = $7)
               AND ($8 IS NULL OR b.stream = $8) AND ($9 IS NULL OR b.generation = $9)
             ORDER BY e.id DESC LIMIT $10"
        );
        let rows: Vec<EventRow> = on_pool!(&self.pool, db => sqlx::query_as(&sql)
        .bind(q.mac.map(|m| m.to_string()))
        .bind(q.before)
        .bind(q.since_ms)
        .bind(q.until_ms)
        .bind(&q.step)
        .bind(&family)
        .bind(q.boot)
        .bind(&q.stream)
        .bind(q.generation)
        .bind(q.limit + 1)
        .fetch_all(db)
        .await)?;
        Ok(page(rows, q.limit))
    }

    /// Boots per generation, by result, in stream and generation order.
    pub async fn boot_counts(&self) -> Result<Vec<((String, i64), BootCounts)>, StoreError> {
        let rows: Vec<(String, i64, String, i64)> = on_pool!(&self.pool, db => sqlx::query_as(
            "SELECT stream, generation, state, COUNT(*) FROM boots
             WHERE stream IS NOT NULL AND generation IS NOT NULL
             GROUP BY stream, generation, state ORDER BY stream, generation",
        )
        .fetch_all(db)
        .await)?;
        let mut counts: Vec<((String, i64), BootCounts)> = Vec::new();
        for (stream, generation, state, n) in rows {
            let key = (stream, generation);
            if counts.last().is_none_or(|(k, _)| *k != key) {
                counts.push((key, BootCounts::default()));
            }
            let c = &mut counts.last_mut().expect("pushed above").1;
            let n = n.max(0) as u64;
            c.started += n;
            match state.parse() {
                Ok(BootState::Confirmed) => c.confirmed += n,
                Ok(BootState::Failed) => c.failed += n,
                _ => {}
            }
        }
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn steps_come_in_one_query_per_page_grouped_by_boot() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        for (id, state) in [(1, "served"), (2, "confirmed"), (3, "failed")] {
            sqlx::query(
                "INSERT INTO boots (id, mac, token_hash, stream, generation, state, started_ms)
                 VALUES (?, '52:54:00:00:00:01', ?, 'worker', 41, ?, ?)",
            )
            .bind(id)
            .bind(format!("token-hash-{id}"))
            .bind(state)
            .bind(id * 10)
            .execute(store.sqlite_pool())
            .await
            .unwrap();
        }
        for (boot, step) in [(1, "boot.script"), (2, "boot.script"), (2, "boot.confirm")] {
            sqlx::query(
                "INSERT INTO events (at_ms, mac, step, detail, boot_id) VALUES (1, '52:54:00:00:00:01', ?, '{}', ?)",
            )
            .bind(step)
            .bind(boot)
            .execute(store.sqlite_pool())
            .await
            .unwrap();
        }
        let (rows, more) = store
            .boots(&BootQuery {
                limit: 2,
                ..BootQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(rows.iter().map(|b| b.id).collect::<Vec<_>>(), [3, 2]);
        assert!(more);
        let steps = store.steps_of(&[3, 2]).await.unwrap();
        let names = |id| -> Vec<String> {
            steps
                .get(&id)
                .map(|s| s.iter().map(|r| r.step.clone()).collect())
                .unwrap_or_default()
        };
        assert_eq!(names(2), ["boot.script", "boot.confirm"]);
        assert!(names(3).is_empty());
        assert!(store.steps_of(&[]).await.unwrap().is_empty());
        let counts = store.boot_counts().await.unwrap();
        assert_eq!(
            counts,
            [(
                ("worker".to_string(), 41),
                BootCounts {
                    started: 3,
                    confirmed: 1,
                    failed: 1
                }
            )]
        );
    }
}
