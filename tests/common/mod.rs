//! Shared test harness: the real server on loopback, and protocol clients
//! (API, DHCP as a relay, TFTP). The binaries that need it include it as
//! `mod common;` (from `tests/`) or `#[path = "../common/mod.rs"] mod
//! common;` (from `tests/<binary>/`); the VM tests have their own harness,
//! `tests/e2e/lab`.
#![allow(dead_code)]

pub mod api;
pub mod dhcp6_client;
pub mod dhcp_client;
pub mod fleet;
pub mod redfish;
pub mod tftp_client;

use std::path::PathBuf;
use std::time::Duration;

use ironboot::app::Bound;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

/// A running in-process server with its own data directory.
pub struct TestServer {
    pub bound: Bound,
    pub dir: TempDir,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), ironboot::app::AppError>>,
}

/// The test network: two "relayed" subnets on loopback addresses, so replies
/// to `giaddr` come back to the test's relay socket and nothing leaves lo.
pub fn full_config(dir: &std::path::Path, extra: &str) -> String {
    full_config_with(dir, extra, LOOPBACK_STANDS_IN)
}

/// `[boot]` for tests where one loopback address stands in for many
/// machines (scripts for many MACs from 127.0.0.1): the binding rule is off
/// there, deliberately. `tests/hostile` and the VM tests keep it on.
pub const LOOPBACK_STANDS_IN: &str = "[boot]\nbinding = \"off\"";
/// `[boot]` with the binding rule on, as in production.
pub const BINDING_REQUIRED: &str = "";

/// [`full_config`] with `binding` (one of the two constants above).
pub fn full_config_with(dir: &std::path::Path, extra: &str, binding: &str) -> String {
    format!(
        r#"
server_ip = "127.0.0.1"
data_dir = "{data}"
{binding}
[http]
listen = "127.0.0.1:0"
[tftp]
listen = "127.0.0.1:0"
ipxe_dir = "{ipxe}"
[dhcp]
mode = "full"
listen = "127.0.0.1:0"
proxy_listen = "127.0.0.1:0"
offer_timeout = "30s"
# The tests' own relays (loopback sockets on their giaddr).
trusted_relays = ["127.1.0.1", "127.2.0.1", "127.9.0.1"]
{extra}
[[dhcp.subnet]]
network = "127.1.0.0/24"
range = ["127.1.0.100", "127.1.0.103"]
router = "127.1.0.1"
dns = ["127.1.0.53"]
domain = "lab.example"
lease_time = "1h"

[[dhcp.subnet]]
network = "127.2.0.0/24"
range = ["127.2.0.10", "127.2.0.20"]
lease_time = "10m"

[[dhcp.reservation]]
mac = "52:54:00:00:00:01"
ip = "127.1.0.50"
hostname = "node1"
"#,
        data = dir.join("data").display(),
        ipxe = ipxe_dir(dir).display(),
    )
}

pub fn proxy_config(dir: &std::path::Path) -> String {
    format!(
        r#"
server_ip = "127.0.0.1"
data_dir = "{data}"
[http]
listen = "127.0.0.1:0"
[tftp]
listen = "127.0.0.1:0"
ipxe_dir = "{ipxe}"
[dhcp]
mode = "proxy"
listen = "127.0.0.1:0"
proxy_listen = "127.0.0.1:0"
"#,
        data = dir.join("data").display(),
        ipxe = ipxe_dir(dir).display(),
    )
}

fn ipxe_dir(dir: &std::path::Path) -> PathBuf {
    let d = dir.join("ipxe");
    std::fs::create_dir_all(&d).unwrap();
    for (name, size) in [
        ("undionly.kpxe", 70_000usize),
        ("ipxe.efi", 300_000),
        ("snponly.efi", 170_000),
    ] {
        let p = d.join(name);
        if !p.exists() {
            let bytes: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            std::fs::write(p, bytes).unwrap();
        }
    }
    d
}

/// `IRONBOOT_TEST_POSTGRES`: a PostgreSQL server (a URL without a database
/// name, e.g. `postgres://ironboot@localhost/?host=/run/pg&port=55432`) on
/// which every test server gets a database of its own, named after its data
/// directory (so a restart finds it again). Unset: SQLite in the data
/// directory, as by default.
pub fn postgres_base() -> Option<String> {
    std::env::var("IRONBOOT_TEST_POSTGRES")
        .ok()
        .filter(|v| !v.is_empty())
}

/// `base` with `database` as its database name.
fn with_database(base: &str, database: &str) -> String {
    let (head, query) = base.split_once('?').unwrap_or((base, ""));
    let head = head.trim_end_matches('/');
    match query {
        "" => format!("{head}/{database}"),
        q => format!("{head}/{database}?{q}"),
    }
}

/// Creates the PostgreSQL database of the test server whose data
/// directory is under `dir`, unless it exists; returns its URL.
async fn postgres_database(base: &str, dir: &std::path::Path) -> String {
    use sqlx::Connection;
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    dir.hash(&mut h);
    let name = format!("ironboot_test_{:016x}", h.finish());
    let mut conn = sqlx::PgConnection::connect(&with_database(base, "postgres"))
        .await
        .expect("IRONBOOT_TEST_POSTGRES reachable");
    let exists: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_optional(&mut conn)
        .await
        .unwrap();
    if exists.is_none() {
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    with_database(base, &name)
}

/// The PostgreSQL URL of the test server whose data directory is under
/// `dir` (`None` on SQLite).
pub async fn test_store_url(dir: &std::path::Path) -> Option<String> {
    match postgres_base() {
        Some(base) => Some(postgres_database(&base, dir).await),
        None => None,
    }
}

/// `text` (a server config for the data directory under `dir`) on the
/// tests' store: unchanged for SQLite, with `[store] url` for PostgreSQL.
pub async fn on_test_store(text: &str, dir: &std::path::Path) -> String {
    match postgres_base() {
        Some(base) => {
            let url = postgres_database(&base, dir).await;
            format!("{text}\n[store]\nurl = \"{url}\"\n")
        }
        None => text.to_string(),
    }
}

impl TestServer {
    pub async fn start(config_text: &str, dir: TempDir) -> Self {
        let text = on_test_store(config_text, dir.path()).await;
        let config = ironboot::config::load_str(&text).expect("test config is valid");
        let shutdown = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(ironboot::app::run(config, shutdown.clone(), Some(tx)));
        let bound = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .expect("server bound within 10 s")
            .expect("server started");
        Self {
            bound,
            dir,
            shutdown,
            task,
        }
    }

    pub async fn full(extra: &str) -> Self {
        let dir = TempDir::new().unwrap();
        let text = full_config(dir.path(), extra);
        Self::start(&text, dir).await
    }

    /// [`TestServer::full`] with the binding rule on: a boot-path request
    /// acts for a machine only from an address bound to it.
    pub async fn full_bound(extra: &str) -> Self {
        let dir = TempDir::new().unwrap();
        let text = full_config_with(dir.path(), extra, BINDING_REQUIRED);
        Self::start(&text, dir).await
    }

    /// Stops the server and waits until the ledger is flushed; returns the
    /// data directory so a restart can reuse it.
    pub async fn stop(self) -> TempDir {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("server stops within 15 s")
            .expect("server task joined")
            .expect("server exited cleanly");
        self.dir
    }

    pub fn dhcp(&self) -> std::net::SocketAddr {
        self.bound.dhcp.expect("DHCP bound")
    }

    pub async fn metrics(&self) -> String {
        http_get(self.bound.http, "/metrics").await
    }

    /// Reads one counter from `/metrics`.
    pub async fn counter(&self, name: &str) -> u64 {
        let text = self.metrics().await;
        let key = format!("ironboot_{name}_total ");
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("counter {name} not in /metrics"))
    }

    /// Opens the server's database (SQLite read-only, after `stop` or live;
    /// or its PostgreSQL database). Queries use `$1`, `$2`, … placeholders,
    /// which both read.
    pub async fn db(dir: &std::path::Path) -> sqlx::AnyPool {
        Self::open_db(dir, "?mode=ro").await
    }

    /// Bytes the server's database takes: SQLite's file and WAL, or the
    /// PostgreSQL database's size.
    pub async fn db_bytes(dir: &std::path::Path) -> u64 {
        if postgres_base().is_some() {
            let db = Self::db(dir).await;
            let (bytes,): (i64,) = sqlx::query_as("SELECT pg_database_size(current_database())")
                .fetch_one(&db)
                .await
                .unwrap();
            db.close().await;
            return bytes as u64;
        }
        ["", "-wal"]
            .iter()
            .map(|s| {
                std::fs::metadata(dir.join(format!("data/ironboot.db{s}")))
                    .map(|m| m.len())
                    .unwrap_or(0)
            })
            .sum()
    }

    /// [`TestServer::db`], writable: for tests that set up what the API
    /// cannot, or break the database on purpose.
    pub async fn db_rw(dir: &std::path::Path) -> sqlx::AnyPool {
        Self::open_db(dir, "").await
    }

    async fn open_db(dir: &std::path::Path, sqlite_mode: &str) -> sqlx::AnyPool {
        sqlx::any::install_default_drivers();
        let url = match postgres_base() {
            Some(base) => postgres_database(&base, dir).await,
            None => format!(
                "sqlite://{}{sqlite_mode}",
                dir.join("data/ironboot.db").display()
            ),
        };
        sqlx::AnyPool::connect(&url).await.unwrap()
    }

    /// Makes the database refuse, as a full disk would, every `event`
    /// (`INSERT`, `UPDATE`, `UPDATE OF column`) on `table` where `when`
    /// holds (an expression over `NEW`, written for both backends), until
    /// [`TestServer::allow`] drops trigger `name`.
    pub async fn refuse(dir: &std::path::Path, name: &str, event: &str, table: &str, when: &str) {
        let db = Self::db_rw(dir).await;
        let statements = if postgres_base().is_some() {
            vec![
                "CREATE OR REPLACE FUNCTION refuse_as_full_disk() RETURNS trigger AS $$
                 BEGIN RAISE EXCEPTION 'disk full'; END $$ LANGUAGE plpgsql"
                    .to_string(),
                format!(
                    "CREATE TRIGGER {name} BEFORE {event} ON {table} FOR EACH ROW
                     WHEN ({when}) EXECUTE FUNCTION refuse_as_full_disk()"
                ),
            ]
        } else {
            vec![format!(
                "CREATE TRIGGER {name} BEFORE {event} ON {table} WHEN {when}
                 BEGIN SELECT RAISE(ABORT, 'disk full'); END"
            )]
        };
        for sql in statements {
            sqlx::query(&sql).execute(&db).await.unwrap();
        }
        db.close().await;
    }

    /// Drops what [`TestServer::refuse`] made.
    pub async fn allow(dir: &std::path::Path, name: &str, table: &str) {
        let db = Self::db_rw(dir).await;
        let sql = if postgres_base().is_some() {
            format!("DROP TRIGGER {name} ON {table}")
        } else {
            format!("DROP TRIGGER {name}")
        };
        sqlx::query(&sql).execute(&db).await.unwrap();
        db.close().await;
    }
}

/// Minimal HTTP/1.0 GET over a TCP socket (keeps test dependencies small).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

/// Whether the external programs a test needs are here. Missing ones skip
/// the test with a printed reason, unless `IRONBOOT_E2E=require` (set by
/// CI, which installs them), where a skip would hide a gap: then it panics.
pub fn require_or_skip(programs: &[&str]) -> bool {
    let missing: Vec<&str> = programs.iter().copied().filter(|p| !on_path(p)).collect();
    if missing.is_empty() {
        return true;
    }
    let reason = format!("missing {}", missing.join(", "));
    if std::env::var("IRONBOOT_E2E").as_deref() == Ok("require") {
        panic!("IRONBOOT_E2E=require but {reason}");
    }
    eprintln!("SKIPPED: {reason}");
    false
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// `[dhcp6]` for loopback tests: DHCPv6, HTTP and TFTP on `[::1]`, the
/// lab's prefix, a relayed link (fd00:88::/64), one reservation, no router
/// advertisements (no interface).
pub const DHCP6_LOOPBACK: &str = r#"
[dhcp6]
mode = "full"
listen = "[::1]:0"
server_ip = "::1"
prefix = "fd00:77::/64"
range = ["fd00:77::1000", "fd00:77::10ff"]
router_advertisement = "off"
http_listen = "[::1]:0"
tftp_listen = "[::1]:0"

[[dhcp6.subnet]]
prefix = "fd00:88::/64"
range = ["fd00:88::100", "fd00:88::1ff"]

[[dhcp6.reservation]]
mac = "52:54:00:66:00:09"
ip = "fd00:77::9"
"#;

impl TestServer {
    /// [`TestServer::full`] plus DHCPv6 on loopback ([`DHCP6_LOOPBACK`]).
    pub async fn full_v6() -> Self {
        Self::full_v6_with("").await
    }

    /// [`TestServer::full_v6`] with `extra` in `[dhcp]` (whose
    /// new-client rates DHCPv6 shares).
    pub async fn full_v6_with(extra: &str) -> Self {
        let dir = TempDir::new().unwrap();
        let text = format!("{}\n{DHCP6_LOOPBACK}", full_config(dir.path(), extra));
        Self::start(&text, dir).await
    }

    /// Restarts a stopped server's data directory with DHCPv6 on.
    pub async fn restart_v6(dir: TempDir) -> Self {
        let text = format!("{}\n{DHCP6_LOOPBACK}", full_config(dir.path(), ""));
        Self::start(&text, dir).await
    }

    pub fn dhcp6(&self) -> std::net::SocketAddr {
        self.bound.dhcp6.expect("DHCPv6 bound")
    }
}
