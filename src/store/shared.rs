//! A PostgreSQL database several servers serve from at once (`[store]
//! shared = true`): each holds the one-server lock in shared mode (so a
//! lone server and a shared one refuse each other), one of them also
//! holds the leader lock, and every server listens for the database's
//! change notifications (migration 0018's triggers) to reload its view.
//!
//! Invariants: the leader lock is taken on the connection that holds the
//! server's claim, so a leader that loses that connection has lost both at
//! once, and `watch_claim` stops it; ids are taken in ranges
//! ([`super::tx::Tx::take_ids`]) and never handed out twice, whichever
//! server dies when.

use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;

use super::{Pool, Store, StoreError, CLAIM_KEEPALIVE, ONE_SERVER_LOCK};

/// Held by the one server that leads the fleet: rollout waves, watchdog
/// deadlines, reboot calls, retention and the inbox of what the others
/// saw.
const LEADER_LOCK: i64 = 72_700_422;

/// The class of the per-server locks (two-key form: this, and the hash
/// of the server's name).
const SERVER_LOCKS: i32 = 72_700_423;

/// The channel migration 0018's triggers notify on (payload: the table).
pub const CHANGES: &str = "ironboot_changes";

impl Store {
    /// Connects to the PostgreSQL database at `url` as one of several
    /// servers sharing it, then migrates it. [`StoreError::SoloServer`] if
    /// a server that serves it alone holds it.
    ///
    /// `name` (`server_name`, when set) is held too, as a lock of its own
    /// on the same connection: a second server of that name is refused,
    /// and an HA partner learns this one is gone the moment its connection
    /// closes ([`Store::server_alive`]).
    pub async fn open_shared(url: &str, name: Option<&str>) -> Result<Self, StoreError> {
        let pool = super::postgres_pool_as(url, &connection_name()).await?;
        let mut conn = pool.acquire().await?;
        let (got,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock_shared($1)")
            .bind(ONE_SERVER_LOCK)
            .fetch_one(&mut *conn)
            .await?;
        if !got {
            return Err(StoreError::SoloServer);
        }
        if let Some(name) = name {
            let (got,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1, hashtext($2))")
                .bind(SERVER_LOCKS)
                .bind(name)
                .fetch_one(&mut *conn)
                .await?;
            if !got {
                return Err(StoreError::NameInUse(name.to_string()));
            }
        }
        let mut owner = conn.detach();
        for setting in CLAIM_KEEPALIVE {
            sqlx::query(setting).execute(&mut owner).await?;
        }
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Self {
            pool: Pool::Postgres(pool),
            owner: Some(std::sync::Arc::new(tokio::sync::Mutex::new(owner))),
            leading: Some(Default::default()),
        })
    }

    /// Whether this server leads the fleet: always when it serves its
    /// database alone; with `[store] shared`, once the inventory took the
    /// fleet over after [`Store::try_lead`] won (`Store::now_leading`).
    pub fn leads(&self) -> bool {
        self.leading
            .as_ref()
            .is_none_or(|l| l.load(std::sync::atomic::Ordering::Acquire))
    }

    /// Whether several servers share this database.
    pub fn is_shared(&self) -> bool {
        self.leading.is_some()
    }

    /// From now on this server leads (the inventory calls it once the
    /// fleet is restored from the database).
    pub(crate) fn now_leading(&self) {
        if let Some(l) = &self.leading {
            l.store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// Takes the leader lock if no server holds it: `true` once this
    /// server leads (and from then on for as long as its claim lives).
    /// Asked within `within`; a slow database answers `false`.
    pub async fn try_lead(&self, within: Duration) -> Result<bool, StoreError> {
        let Some(owner) = &self.owner else {
            return Ok(true);
        };
        let mut conn = owner.lock().await;
        let ask = sqlx::query_as::<_, (bool,)>("SELECT pg_try_advisory_lock($1)")
            .bind(LEADER_LOCK)
            .fetch_one(&mut *conn);
        match tokio::time::timeout(within, ask).await {
            Ok(Ok((got,))) => Ok(got),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Ok(false),
        }
    }

    /// Whether the server named `name` holds its connection to the
    /// database (see [`Store::open_shared`]): `false` the moment it closed
    /// (a stop, a crash, SIGKILL, a fenced server) or if it never started.
    pub async fn server_alive(&self, name: &str) -> Result<bool, StoreError> {
        let Pool::Postgres(pool) = &self.pool else {
            return Ok(false);
        };
        let mut conn = pool.acquire().await?;
        let (free,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1, hashtext($2))")
            .bind(SERVER_LOCKS)
            .bind(name)
            .fetch_one(&mut *conn)
            .await?;
        if free {
            sqlx::query("SELECT pg_advisory_unlock($1, hashtext($2))")
                .bind(SERVER_LOCKS)
                .bind(name)
                .execute(&mut *conn)
                .await?;
        }
        Ok(!free)
    }

    /// Listens for committed changes (PostgreSQL only; `None` on SQLite,
    /// where one server is the only writer).
    pub async fn changes(&self) -> Result<Option<Changes>, StoreError> {
        let Pool::Postgres(pool) = &self.pool else {
            return Ok(None);
        };
        Ok(Some(Changes::listen(pool).await?))
    }
}

/// The application_name of this process's connections: what the change
/// triggers put in their announcements, so a server knows its own.
fn connection_name() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| format!("ironboot-{:016x}", rand::random::<u64>()))
        .clone()
}

/// Committed changes, as the database announces them.
pub struct Changes {
    listener: PgListener,
}

/// What [`Changes::next`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A commit touched `table`; `mine`: this server's commit.
    Table { table: String, mine: bool },
    /// The listening connection broke and was opened again: whatever was
    /// announced meanwhile is lost, so everything may have changed.
    Missed,
}

impl Changes {
    async fn listen(pool: &PgPool) -> Result<Self, StoreError> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(CHANGES).await?;
        Ok(Self { listener })
    }

    /// The next change (waits for it).
    pub async fn next(&mut self) -> Change {
        match self.listener.try_recv().await {
            Ok(Some(n)) => {
                let (table, by) = n.payload().split_once(' ').unwrap_or((n.payload(), ""));
                Change::Table {
                    table: table.to_string(),
                    mine: by == connection_name(),
                }
            }
            // `None`: the connection was lost and is reopened by the next
            // call; `Err`: the same, seen from a failed reconnect.
            Ok(None) => Change::Missed,
            Err(e) => {
                tracing::warn!(error = %e, "change notifications interrupted; reloading");
                tokio::time::sleep(Duration::from_millis(500)).await;
                Change::Missed
            }
        }
    }
}
