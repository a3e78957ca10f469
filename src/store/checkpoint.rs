//! WAL checkpoints off the write path. SQLite by default checkpoints inside
//! the commit that crosses 1,000 WAL pages, and a checkpoint syncs the
//! database file: the ledger writer's commit (which DHCPACKs wait for) then
//! takes as long as the disk's fsync. Here the connections never checkpoint
//! on commit (`wal_autocheckpoint = 0`, set at open); this task runs a
//! PASSIVE checkpoint on its own connection every [`EVERY`], which neither
//! blocks nor waits for writers and readers, so the WAL stays small and no
//! commit pays for a sync. A TRUNCATE checkpoint at shutdown leaves an empty
//! WAL behind.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Store;

/// How often the WAL is checkpointed.
pub const EVERY: Duration = Duration::from_secs(1);

/// Checkpoints until `shutdown`, then once more, truncating the WAL.
pub async fn run(store: Store, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Err(e) = checkpoint(&store, PASSIVE).await {
            tracing::warn!(error = %e, "WAL checkpoint");
        }
    }
    if let Err(e) = checkpoint(&store, TRUNCATE).await {
        tracing::debug!(error = %e, "WAL checkpoint at shutdown");
    }
}

const PASSIVE: &str = "PRAGMA wal_checkpoint(PASSIVE)";
const TRUNCATE: &str = "PRAGMA wal_checkpoint(TRUNCATE)";

async fn checkpoint(store: &Store, pragma: &'static str) -> Result<(), sqlx::Error> {
    match store.pool() {
        super::Pool::Sqlite(db) => sqlx::query(pragma).execute(db).await.map(|_| ()),
        // PostgreSQL checkpoints on its own.
        super::Pool::Postgres(_) => Ok(()),
    }
}
