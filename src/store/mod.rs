//! The database through sqlx (SQLite embedded by default, PostgreSQL when
//! `[store] url` names one): the source of truth for machines, groups,
//! generations, leases, rollouts and the boot ledger, and the only module
//! that runs SQL.
//!
//! Its interface is the seam between the server and its backend: typed
//! reads on [`Store`] and typed writes on a transaction ([`tx::Tx`]), one
//! row type per table, per table in
//! `machines.rs`, `groups.rs`, `generations.rs`, `boots.rs`, `rollouts.rs`,
//! `tokens.rs`, `bmcs.rs`, `servers.rs` (the servers using the database)
//! and `history.rs` (the API's pages). Callers see neither a
//! connection nor SQL. The packet paths never call in here: they read what
//! [`Store::load_leases`] and [`Store::known_macs`] loaded at start and
//! write through the [`writer`] task (group commit).
//!
//! One text per statement serves both backends: placeholders are `$1`,
//! `$2`, … (SQLite reads them too), booleans are `TRUE`/`FALSE`, and the
//! few SQLite-only forms have portable spellings (`ON CONFLICT DO NOTHING`,
//! `CASE` for a two-argument `MAX`). [`on_pool!`] and [`on_tx!`] run a
//! statement on whichever backend is open; each arm is compiled for its own
//! database, so rows decode natively.
//!
//! SQLite is opened once at start with WAL, `synchronous=NORMAL` and a busy
//! timeout; PostgreSQL with a small pool. Migrations are embedded,
//! append-only (a test holds their checksums) and run at open: `migrations/`
//! for SQLite, `migrations/postgres/` for PostgreSQL, the same version
//! numbers meaning the same schema. Queries are checked at run time
//! (`query_as` + `FromRow`), so building needs no database.

/// Runs `$body` with `$db` bound to the open backend's pool.
macro_rules! on_pool {
    ($pool:expr, $db:ident => $body:expr) => {
        match $pool {
            $crate::store::Pool::Sqlite($db) => $body,
            $crate::store::Pool::Postgres($db) => $body,
        }
    };
}

/// Runs `$body` with `$db` bound to the connection a [`Conn`] holds.
macro_rules! on_conn {
    ($conn:expr, $db:ident => $body:expr) => {
        match &mut *$conn {
            $crate::store::Conn::Sqlite(c) => {
                let $db: &mut sqlx::SqliteConnection = &mut **c;
                $body
            }
            $crate::store::Conn::Postgres(c) => {
                let $db: &mut sqlx::PgConnection = &mut **c;
                $body
            }
        }
    };
}

/// Runs `$body` with `$db` bound to the transaction's connection.
macro_rules! on_tx {
    ($tx:expr, $db:ident => $body:expr) => {
        on_conn!(&mut $tx.conn(), $db => $body)
    };
}

pub mod bmcs;
pub mod boots;
pub mod checkpoint;
pub mod generations;
pub mod groups;
pub mod history;
pub mod inbox;
pub mod machines;
pub mod retention;
pub mod rollouts;
pub mod servers;
pub mod shared;
pub mod standby;
pub mod tokens;
pub mod tx;
pub mod writer;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

use crate::domain::lease::{Entry, State};
use crate::domain::MacAddr;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "another ironboot server serves from this PostgreSQL database; set `[store] standby = true` \
         to run this one as its standby (it takes over when that server stops), or `[store] shared = true` \
         on every server to serve it together"
    )]
    InUse,
    #[error(
        "a server that serves this PostgreSQL database alone holds it; stop it, or set \
         `[store] shared = true` on every server of the database"
    )]
    SoloServer,
    #[error("a server named {0} already serves from this database; give each server its own server_name")]
    NameInUse(String),
    #[error("lost this server's claim on the database: {0}")]
    ClaimLost(String),
    #[error("the database did not confirm this server's claim within {0:?}")]
    ClaimUnanswered(Duration),
}

/// Handle to the database (cheap to clone).
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// On PostgreSQL, the connection holding [`ONE_SERVER_LOCK`] for as
    /// long as this server runs.
    owner: Option<std::sync::Arc<tokio::sync::Mutex<sqlx::PgConnection>>>,
    /// With `[store] shared`, whether this server leads the fleet (see
    /// [`shared`]); `None`: it serves its database alone, and leads.
    leading: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// Held by the one server that serves from a PostgreSQL database: each
/// server keeps the fleet in memory and numbers boots itself, so a second
/// one serving the same database would serve what the first never sees.
/// Released when the server's connection closes (a crash included); a
/// standby ([`standby::Standby`]) waits for it.
const ONE_SERVER_LOCK: i64 = 72_700_420;

/// Session settings of the connection holding [`ONE_SERVER_LOCK`]: the
/// database notices a holder whose host vanished (no FIN, no RST) after
/// about 5 + 2 × 2 s of silence and releases the lock, instead of after
/// the kernel's two hours.
const CLAIM_KEEPALIVE: [&str; 3] = [
    "SET tcp_keepalives_idle = 5",
    "SET tcp_keepalives_interval = 2",
    "SET tcp_keepalives_count = 2",
];

/// The open backend.
#[derive(Clone)]
pub(crate) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A connection of either backend, for statements that a transaction and
/// the ledger writer share.
pub(crate) enum Conn<'a> {
    Sqlite(&'a mut sqlx::SqliteConnection),
    Postgres(&'a mut sqlx::PgConnection),
}

impl<'a> From<&'a mut sqlx::SqliteConnection> for Conn<'a> {
    fn from(c: &'a mut sqlx::SqliteConnection) -> Self {
        Conn::Sqlite(c)
    }
}

impl<'a> From<&'a mut sqlx::PgConnection> for Conn<'a> {
    fn from(c: &'a mut sqlx::PgConnection) -> Self {
        Conn::Postgres(c)
    }
}

/// Taken first in every PostgreSQL write transaction, released at its end:
/// writers go one at a time, as on SQLite, so the code that reads then
/// writes in one transaction (the next generation number, the last admin
/// token) behaves the same on both.
pub(crate) const POSTGRES_WRITE_LOCK: &str = "SELECT pg_advisory_xact_lock(72700421)";

/// Which backend a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Makes the data directory private to the server's user (0700, created so
/// or tightened if it exists) and the database file 0600 before SQLite
/// opens it: SQLite gives its `-wal` and `-shm` files the database file's
/// mode, so all three stay private. The directory holds the admin token,
/// leases and every machine's configuration variables.
fn private_files(dir: &Path, db: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    private_dir(dir)?;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(db)?;
    for suffix in ["", "-wal", "-shm"] {
        let file = db.with_file_name(format!("ironboot.db{suffix}"));
        if file.exists() {
            private_mode(&file, 0o600)?;
        }
    }
    Ok(())
}

/// Creates `dir` 0700, or tightens it to that.
pub(crate) fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    private_mode(dir, 0o700)
}

fn private_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)?;
    if meta.permissions().mode() & 0o777 != mode {
        tracing::info!(path = %path.display(), mode = format!("{mode:o}"), "tightening permissions");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// A small pool on the PostgreSQL database at `url`.
async fn postgres_pool(url: &str) -> Result<PgPool, StoreError> {
    postgres_pool_with(sqlx::postgres::PgConnectOptions::from_str(url)?).await
}

/// [`postgres_pool`] whose connections tell the database `name` (their
/// application_name).
async fn postgres_pool_as(url: &str, name: &str) -> Result<PgPool, StoreError> {
    postgres_pool_with(sqlx::postgres::PgConnectOptions::from_str(url)?.application_name(name))
        .await
}

async fn postgres_pool_with(
    options: sqlx::postgres::PgConnectOptions,
) -> Result<PgPool, StoreError> {
    Ok(PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await?)
}

/// A DHCPv6 lease row: address, MAC, state, expiry, IAID.
type Lease6Row = (String, Option<String>, String, i64, Option<i64>);

#[derive(Debug, sqlx::FromRow)]
struct LeaseRow {
    ip: String,
    mac: Option<String>,
    state: String,
    expires_at_ms: i64,
    hostname: Option<String>,
}

impl Store {
    /// Opens the configured backend: PostgreSQL at `url` when given, else
    /// SQLite in `dir`.
    pub async fn connect(url: Option<&str>, dir: &Path) -> Result<Self, StoreError> {
        match url {
            Some(url) => {
                // The data directory still holds the images and the admin
                // token: private, as with SQLite.
                private_dir(dir).map_err(|source| StoreError::DataDir {
                    path: dir.display().to_string(),
                    source,
                })?;
                Self::open_postgres(url).await
            }
            None => Self::open(dir).await,
        }
    }

    /// Connects to the PostgreSQL database at `url`, claims it and
    /// migrates it; [`StoreError::InUse`] if another server holds it.
    pub async fn open_postgres(url: &str) -> Result<Self, StoreError> {
        let pool = postgres_pool(url).await?;
        Self::claim(pool).await?.ok_or(StoreError::InUse)
    }

    /// Takes [`ONE_SERVER_LOCK`] on a connection of its own, unless another
    /// server holds it (`None`), then migrates: the store of the one server
    /// that serves from this database.
    async fn claim(pool: PgPool) -> Result<Option<Self>, StoreError> {
        let mut conn = pool.acquire().await?;
        let (got,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
            .bind(ONE_SERVER_LOCK)
            .fetch_one(&mut *conn)
            .await?;
        if !got {
            // The connection goes back to the pool: a standby trying every
            // 500 ms reuses it rather than opening a new one each time.
            return Ok(None);
        }
        // Held: this connection leaves the pool for as long as the server
        // runs (the lock is the session's).
        let mut owner = conn.detach();
        for setting in CLAIM_KEEPALIVE {
            sqlx::query(setting).execute(&mut owner).await?;
        }
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Some(Self {
            pool: Pool::Postgres(pool),
            owner: Some(std::sync::Arc::new(tokio::sync::Mutex::new(owner))),
            leading: None,
        }))
    }

    /// Whether this server still holds its claim on a PostgreSQL database
    /// (always on SQLite): one round trip on the claiming connection,
    /// within `within`. A server that lost it must stop serving at once,
    /// since its standby may already serve.
    pub async fn check_claim(&self, within: Duration) -> Result<(), StoreError> {
        let Some(owner) = &self.owner else {
            return Ok(());
        };
        let mut conn = owner.lock().await;
        let ping = sqlx::query_as::<_, (bool,)>(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
             AND objid::bigint = $1 AND objsubid = 1 AND pid = pg_backend_pid() AND granted)",
        )
        .bind(ONE_SERVER_LOCK)
        .fetch_one(&mut *conn);
        match tokio::time::timeout(within, ping).await {
            Ok(Ok((true,))) => Ok(()),
            Ok(Ok((false,))) => Err(StoreError::ClaimLost("the lock is no longer held".into())),
            Ok(Err(e)) => Err(StoreError::ClaimLost(e.to_string())),
            Err(_) => Err(StoreError::ClaimUnanswered(within)),
        }
    }

    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// Opens (creating if needed) `dir/ironboot.db` and migrates it.
    pub async fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("ironboot.db");
        private_files(dir, &path).map_err(|source| StoreError::DataDir {
            path: dir.display().to_string(),
            source,
        })?;
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            // Checkpoints run in `checkpoint`, never inside a commit.
            .pragma("wal_autocheckpoint", "0")
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            // A connection still inside a transaction when it comes back is
            // closed, not reused. sqlx leaves one so when a COMMIT fails (a
            // full disk) and the ROLLBACK on drop fails too; reused, every
            // later BEGIN on it fails ("non-zero transaction depth"), so one
            // moment without disk space broke writes until restart (seen
            // under the API fuzz test on a full disk).
            .after_release(|conn, _| {
                Box::pin(async move {
                    use sqlx::TransactionManager;
                    Ok(
                        <sqlx::Sqlite as sqlx::Database>::TransactionManager::get_transaction_depth(
                            conn,
                        ) == 0,
                    )
                })
            })
            .connect_with(options)
            .await?;
        repair_checksums(&pool).await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self {
            pool: Pool::Sqlite(pool),
            owner: None,
            leading: None,
        })
    }

    /// The pool itself, for the store's own tasks (writer, checkpoints,
    /// retention); nothing outside `store` runs SQL.
    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The SQLite pool of a store tests opened with [`Store::open`], for
    /// tests that read or break the database directly.
    #[cfg(test)]
    pub(crate) fn sqlite_pool(&self) -> &SqlitePool {
        match &self.pool {
            Pool::Sqlite(p) => p,
            Pool::Postgres(_) => panic!("a test store is SQLite"),
        }
    }

    /// Every persisted lease still worth remembering (bound or quarantined,
    /// expired or not: an expired binding still says who had the address).
    pub async fn load_leases(&self) -> Result<Vec<Entry>, StoreError> {
        let rows: Vec<LeaseRow> = on_pool!(&self.pool, db => {
            sqlx::query_as("SELECT ip, mac, state, expires_at_ms, hostname FROM leases")
                .fetch_all(db)
                .await?
        });
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                Some(Entry {
                    ip: r.ip.parse::<Ipv4Addr>().ok()?,
                    mac: r.mac.and_then(|m| m.parse().ok()),
                    // Only bindings and quarantines are stored.
                    state: match r.state.parse() {
                        Ok(State::Declined) => State::Declined,
                        _ => State::Bound,
                    },
                    expires_at: r.expires_at_ms,
                    hostname: r.hostname,
                })
            })
            .collect())
    }

    /// Every persisted DHCPv6 lease (bound or quarantined): the rows whose
    /// address is IPv6.
    pub async fn load_leases6(&self) -> Result<Vec<crate::domain::lease::Entry6>, StoreError> {
        let rows: Vec<Lease6Row> = on_pool!(&self.pool, db => {
            sqlx::query_as("SELECT ip, mac, state, expires_at_ms, iaid FROM leases WHERE ip LIKE '%:%'")
                .fetch_all(db)
                .await?
        });
        Ok(rows
            .into_iter()
            .filter_map(|(ip, mac, state, expires_at, iaid)| {
                Some(crate::domain::lease::Entry6 {
                    ip: ip.parse().ok()?,
                    mac: mac.and_then(|m| m.parse().ok()),
                    iaid: u32::try_from(iaid.unwrap_or(0)).ok()?,
                    state: match state.parse() {
                        Ok(State::Declined) => State::Declined,
                        _ => State::Bound,
                    },
                    expires_at,
                })
            })
            .collect())
    }

    /// MACs of every machine that has network-booted from this server.
    pub async fn known_macs(&self) -> Result<HashSet<MacAddr>, StoreError> {
        let rows: Vec<(String,)> = on_pool!(&self.pool, db => {
            sqlx::query_as("SELECT mac FROM machines").fetch_all(db).await?
        });
        Ok(rows.into_iter().filter_map(|(m,)| m.parse().ok()).collect())
    }

    pub async fn close(&self) {
        on_pool!(&self.pool, db => db.close().await);
    }
}

/// Migrations whose file was edited after it landed, and restored since:
/// `(version, SHA-384 of the edited file, SHA-384 of the file as landed)`.
/// sqlx checksums whole files, so a database migrated while the edited file
/// was embedded would refuse to start with the restored one; both texts
/// make the same schema (the edit changed comments only), so its recorded
/// checksum is set back to the landed file's. Never add to this list for a
/// change of schema: add a migration instead.
const EDITED_AFTER_LANDING: &[(i64, &str, &str)] = &[(
    6,
    "658bfad66b15baff34fa65dfb5f30f6869bde7af31d3ae0cd170e40d1d686b2c3a7ed3114616fc7fbdc069efe08135d7",
    "d470caa33f81cc8664d194e761f83c4b5902386295b8209d6453b99e198acd0ea2882f96363b48623d8352be41167ce4",
)];

/// See [`EDITED_AFTER_LANDING`].
async fn repair_checksums(pool: &SqlitePool) -> Result<(), sqlx::Error> {
    let (tracked,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
    )
    .fetch_one(pool)
    .await?;
    if tracked == 0 {
        return Ok(());
    }
    for (version, edited, landed) in EDITED_AFTER_LANDING {
        let (edited, landed) = (
            hex::decode(edited).expect("hex"),
            hex::decode(landed).expect("hex"),
        );
        let fixed = sqlx::query(
            "UPDATE _sqlx_migrations SET checksum = ? WHERE version = ? AND checksum = ?",
        )
        .bind(&landed)
        .bind(version)
        .bind(&edited)
        .execute(pool)
        .await?
        .rows_affected();
        if fixed > 0 {
            tracing::info!(
                version,
                "migration checksum restored to the file as it landed"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every migration file, with the SHA-256 of its bytes. A landed
    /// migration is never edited (sqlx refuses a database whose recorded
    /// checksum differs): change the schema with a new file, and add its
    /// line here.
    const MIGRATIONS: &[(&str, &str)] = &[
        (
            "0001_machines_leases_events.sql",
            "627022ce0ead55e2579586fd6cab2fd6324dbf3854b823ff1799612bec5b7808",
        ),
        (
            "0002_images_groups_boots_tokens.sql",
            "6820c6a57bcdb10d3ff3fac8d94f8a4d75581b95cbb14e24ef65f30a3ac4382b",
        ),
        (
            "0003_machine_kind.sql",
            "1d80e55da066945e7f055d73ec1d97db091405e6d25d3b6341fb0d5a9ff10901",
        ),
        (
            "0004_boots_by_generation.sql",
            "0fca98b7bd23806d1a8ec5d11008ef185f7f0553587cddbdeaa5c5e869453a1a",
        ),
        (
            "0005_group_selectors.sql",
            "f9df6e8c56ef6fea04a94643a8155aaf27cbdbd5fc1846a3722617f1db311963",
        ),
        (
            "0006_group_generations_per_arch.sql",
            "c5640c0a33aa60f475002df5f7d64ee077ba723e17c6f88e739acd8dd1d08224",
        ),
        (
            "0007_rollouts_and_health.sql",
            "a9eefd1f61cff03ad0649461dabec0e268162447f53720e8f9b098bb7b100e3b",
        ),
        (
            "0008_reported_hostname.sql",
            "f8c779ece7fe50eed351a977c9a28d237aa80571b4d8688deb0415b9bcb351fe",
        ),
        (
            "0009_kind_by_operator.sql",
            "f62c377d5ad7cb8cc645341fb98758d05022efc74cbbab4cb881d533ad9da334",
        ),
        (
            "0010_group_generations_slot.sql",
            "a3cdcb3b4102427a71d90751f3c3d678ccf42b5d26bcc65b6de2af20aa77db15",
        ),
        (
            "0011_events_by_boot.sql",
            "76df04d39c11af3b17c7541caa2b1187ae9ec1fea344a72ffa129b9b7a7e921c",
        ),
        (
            "0012_events_by_machine.sql",
            "8341b2c1e817970796c0891381df2785cbb647e4eadbbfb720fb3dbe2212c8ec",
        ),
        (
            "0013_bmcs.sql",
            "f17506795ee5964c359884f26a315c37be4ed3d62524d23d3e19efe1af29061c",
        ),
        (
            "0014_secure_boot.sql",
            "266e0af0105a45c7690b530d237962c1ba6feb50debe1d46b589553f4b5a0c32",
        ),
        (
            "0015_root_reads.sql",
            "521a4adff60040af005485eed07d325c493717de165326239beb0924793129ab",
        ),
        (
            "0016_leases6.sql",
            "4663e881bc703954444259ea455baf9a12f56e2cfbe6f6b0fae321d6dc526a64",
        ),
        (
            "0017_servers.sql",
            "a57fec211257fe29f0b65c8b25ab5657d84835f5ca77c89d8ffb1ecea5fc759d",
        ),
        (
            "0018_shared_fleet.sql",
            "2561bc0986e0939f1a58c2d7805e724232f54311bb2571965b69fff3b282dcb3",
        ),
    ];

    /// The PostgreSQL migrations, likewise.
    const POSTGRES_MIGRATIONS: &[(&str, &str)] = &[
        (
            "0011_baseline.sql",
            "ede9a223ea4a50576b8bc6c8e45f3ca68b1991812a9b89c7362d8220fc63c42d",
        ),
        (
            "0012_events_by_machine.sql",
            "8341b2c1e817970796c0891381df2785cbb647e4eadbbfb720fb3dbe2212c8ec",
        ),
        (
            "0013_bmcs.sql",
            "f17506795ee5964c359884f26a315c37be4ed3d62524d23d3e19efe1af29061c",
        ),
        (
            "0014_secure_boot.sql",
            "266e0af0105a45c7690b530d237962c1ba6feb50debe1d46b589553f4b5a0c32",
        ),
        (
            "0015_root_reads.sql",
            "521a4adff60040af005485eed07d325c493717de165326239beb0924793129ab",
        ),
        (
            "0016_leases6.sql",
            "4663e881bc703954444259ea455baf9a12f56e2cfbe6f6b0fae321d6dc526a64",
        ),
        (
            "0017_servers.sql",
            "a57fec211257fe29f0b65c8b25ab5657d84835f5ca77c89d8ffb1ecea5fc759d",
        ),
        (
            "0018_shared_fleet.sql",
            "03654c0eb61ccc2031920927dd5472532be479dae2187639f02d55f5fd8144df",
        ),
    ];

    fn check_landed(dir: &str, landed: &[(&str, &str)]) {
        use sha2::Digest as _;
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().unwrap().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let listed: Vec<&str> = landed.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            files, listed,
            "every migration file is listed here, in order"
        );
        for (name, sha) in landed {
            let bytes = std::fs::read(dir.join(name)).unwrap();
            assert_eq!(
                hex::encode(sha2::Sha256::digest(&bytes)),
                *sha,
                "{name} was edited after it landed: restore it and add a new migration"
            );
        }
    }

    #[test]
    fn landed_migrations_are_never_edited() {
        check_landed("migrations", MIGRATIONS);
        check_landed("migrations/postgres", POSTGRES_MIGRATIONS);
    }

    /// Both backends reach the same version: a schema change is a pair.
    #[test]
    fn both_backends_end_on_the_same_version() {
        let version = |list: &[(&str, &str)]| list.last().unwrap().0[..4].to_string();
        assert_eq!(version(MIGRATIONS), version(POSTGRES_MIGRATIONS));
    }

    /// A database migrated while 0006 was the edited file opens with the
    /// restored one, and its recorded checksum becomes the landed file's.
    #[tokio::test]
    async fn a_database_from_the_edited_0006_still_opens() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let (_, edited, landed) = EDITED_AFTER_LANDING[0];
        sqlx::query("UPDATE _sqlx_migrations SET checksum = ? WHERE version = 6")
            .bind(hex::decode(edited).unwrap())
            .execute(store.sqlite_pool())
            .await
            .unwrap();
        store.close().await;
        let store = Store::open(dir.path())
            .await
            .expect("opens after the repair");
        let (checksum,): (Vec<u8>,) =
            sqlx::query_as("SELECT checksum FROM _sqlx_migrations WHERE version = 6")
                .fetch_one(store.sqlite_pool())
                .await
                .unwrap();
        assert_eq!(hex::encode(checksum), landed);
    }

    /// A transaction whose ROLLBACK on drop fails (here: it was already
    /// rolled back behind sqlx's back, as SQLite does on a failed COMMIT
    /// with a full disk) must not poison the pool.
    #[tokio::test]
    async fn a_connection_left_in_a_transaction_is_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        for _ in 0..8 {
            let mut tx = store
                .sqlite_pool()
                .begin_with("BEGIN IMMEDIATE")
                .await
                .unwrap();
            sqlx::query("ROLLBACK").execute(&mut *tx).await.unwrap();
            drop(tx);
        }
        for _ in 0..8 {
            let mut tx = store
                .sqlite_pool()
                .begin_with("BEGIN IMMEDIATE")
                .await
                .expect("a fresh BEGIN works");
            sqlx::query("SELECT 1").execute(&mut *tx).await.unwrap();
            tx.commit().await.unwrap();
        }
    }

    /// The data directory and the database are the server user's alone,
    /// whether they are new or were created looser by an older version.
    #[tokio::test]
    async fn the_data_directory_and_database_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let root = tempfile::tempdir().unwrap();
        let fresh = root.path().join("data");
        let store = Store::open(&fresh).await.unwrap();
        sqlx::query("SELECT 1")
            .execute(store.sqlite_pool())
            .await
            .unwrap();
        assert_eq!(mode(&fresh), 0o700);
        for f in ["ironboot.db", "ironboot.db-wal", "ironboot.db-shm"] {
            assert_eq!(mode(&fresh.join(f)), 0o600, "{f}");
        }
        drop(store);

        let old = root.path().join("old");
        std::fs::create_dir(&old).unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(old.join("ironboot.db"), b"").unwrap();
        std::fs::set_permissions(
            old.join("ironboot.db"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let _store = Store::open(&old).await.unwrap();
        assert_eq!(mode(&old), 0o700);
        assert_eq!(mode(&old.join("ironboot.db")), 0o600);
    }
}
