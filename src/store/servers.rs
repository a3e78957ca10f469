//! The servers that use this database (`servers`): one row per server id,
//! written only by that server — registered at start, its heartbeat every
//! [`HEARTBEAT_EVERY`], its clean stop — and read by `GET /api/v1/servers`
//! and `ironboot status`.
//!
//! Invariants: a row is written by the server it names and by nothing
//! else; no boot-path code (DHCP, TFTP, `/boot`, `/config`, phone home)
//! calls in here, so nothing a machine on the boot network sends can write
//! this table, and the heartbeat runs on its own clock task, never on a
//! packet or script path. One server serves from a database (the
//! PostgreSQL claim in [`super`]; SQLite is one process): its role is
//! [`ServerRole::Primary`]. Others on the same PostgreSQL database wait as
//! [`ServerRole::Standby`] (the server's `standby` module); a standby's `peer` is the
//! primary it waits on, and the primary's `peer` is the standby that names
//! it, both written with the heartbeat. Satellites (issue 16) will add a
//! role in the same row.

use super::{Store, StoreError};

/// How often a running server writes its heartbeat.
pub const HEARTBEAT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// A server whose heartbeat is older than this, without a clean stop, is
/// gone (three heartbeats missed).
pub const GONE_AFTER_MS: i64 = 15_000;

/// What a server does for the sites it serves. Stored as text (no CHECK in
/// the table), so the roles the HA pair and satellites add need no
/// migration; a row whose role this version does not know still lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerRole {
    /// Serves its boot networks from the database it alone serves from.
    Primary,
    /// Waits for the primary's claim on the database and takes over when
    /// it is released; serves nothing until then.
    Standby,
    /// One of several servers sharing the database (`[store] shared`)
    /// that leads the fleet: rollouts, deadlines, reboots, retention.
    Leader,
    /// One of several servers sharing the database that serves its boot
    /// networks and hands what it saw to the leader (its `peer`).
    Member,
}

impl ServerRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerRole::Primary => "primary",
            ServerRole::Standby => "standby",
            ServerRole::Leader => "leader",
            ServerRole::Member => "member",
        }
    }
}

/// Whether a server is running, as its row says at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// Not stopped, heartbeat within [`GONE_AFTER_MS`].
    Up,
    /// Stopped cleanly.
    Stopped,
    /// Not stopped, heartbeat older than [`GONE_AFTER_MS`]: it died.
    Gone,
}

impl ServerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Up => "up",
            ServerState::Stopped => "stopped",
            ServerState::Gone => "gone",
        }
    }
}

/// What a server registers at start.
#[derive(Debug, Clone)]
pub struct ServerStart<'a> {
    pub id: &'a str,
    pub role: ServerRole,
    /// Its HA partner's id (none until pairs exist).
    pub peer: Option<&'a str>,
    pub version: &'a str,
    /// The HTTP base URL machines are told.
    pub http: &'a str,
    pub pid: u32,
}

/// A row of `servers`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ServerRow {
    pub id: String,
    /// As stored (see [`ServerRole`]).
    pub role: String,
    pub peer: Option<String>,
    pub version: String,
    pub started_ms: i64,
    pub heartbeat_ms: i64,
    pub stopped_ms: Option<i64>,
    pub http: String,
    pub pid: i64,
}

impl ServerRow {
    /// Its state at `now_ms` (pure).
    pub fn state(&self, now_ms: i64) -> ServerState {
        if self.stopped_ms.is_some() {
            ServerState::Stopped
        } else if now_ms - self.heartbeat_ms > GONE_AFTER_MS {
            ServerState::Gone
        } else {
            ServerState::Up
        }
    }
}

const COLUMNS: &str = "id, role, peer, version, started_ms, heartbeat_ms, stopped_ms, http, pid";

impl Store {
    /// Registers this server at start: its row, replaced if the id is
    /// known (a restart), started and heartbeat now, not stopped.
    pub async fn register_server(
        &self,
        s: &ServerStart<'_>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO servers ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, NULL, $7, $8)
             ON CONFLICT (id) DO UPDATE SET role = excluded.role, peer = excluded.peer,
                 version = excluded.version, started_ms = excluded.started_ms,
                 heartbeat_ms = excluded.heartbeat_ms, stopped_ms = NULL,
                 http = excluded.http, pid = excluded.pid"
        );
        on_pool!(&self.pool, db => sqlx::query(&sql)
            .bind(s.id)
            .bind(s.role.as_str())
            .bind(s.peer)
            .bind(s.version)
            .bind(now_ms)
            .bind(now_ms)
            .bind(s.http)
            .bind(i64::from(s.pid))
            .execute(db)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    /// This server's heartbeat, with its peer: the primary it waits on for
    /// a standby, the live standby that names it for a primary, the leader
    /// for a member of a shared database; `partner`, when given (an HA
    /// pair, `dhcp.peer`), instead of any of those. A row that is gone
    /// (deleted by hand) is not brought back here: the next start
    /// registers it.
    pub async fn server_heartbeat(
        &self,
        id: &str,
        role: ServerRole,
        partner: Option<&str>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let live = format!("stopped_ms IS NULL AND heartbeat_ms >= $1 - {GONE_AFTER_MS}");
        let sql = match role {
            ServerRole::Standby => format!(
                "UPDATE servers SET heartbeat_ms = $1, peer = COALESCE($3, (
                     SELECT id FROM servers WHERE role = 'primary' AND id <> $2 AND {live}
                     ORDER BY heartbeat_ms DESC LIMIT 1))
                 WHERE id = $2 AND stopped_ms IS NULL"
            ),
            ServerRole::Member => format!(
                "UPDATE servers SET heartbeat_ms = $1, role = 'member', peer = COALESCE($3, (
                     SELECT id FROM servers WHERE role = 'leader' AND id <> $2 AND {live}
                     ORDER BY heartbeat_ms DESC LIMIT 1))
                 WHERE id = $2 AND stopped_ms IS NULL"
            ),
            ServerRole::Leader => "UPDATE servers SET heartbeat_ms = $1, role = 'leader', peer = $3
                 WHERE id = $2 AND stopped_ms IS NULL"
                .to_string(),
            ServerRole::Primary => format!(
                "UPDATE servers SET heartbeat_ms = $1, peer = COALESCE($3, (
                     SELECT id FROM servers WHERE role = 'standby' AND peer = $2 AND {live}
                     ORDER BY id LIMIT 1))
                 WHERE id = $2 AND stopped_ms IS NULL"
            ),
        };
        on_pool!(&self.pool, db => sqlx::query(&sql)
            .bind(now_ms)
            .bind(id)
            .bind(partner)
            .execute(db)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    /// The primary a standby waits on: the live primary row that is not
    /// `me` (its id and the HTTP base URL it tells machines).
    pub async fn live_primary(
        &self,
        me: &str,
        now_ms: i64,
    ) -> Result<Option<(String, String)>, StoreError> {
        Ok(on_pool!(&self.pool, db => sqlx::query_as(
            "SELECT id, http FROM servers WHERE role = 'primary' AND id <> $1
                 AND stopped_ms IS NULL AND heartbeat_ms >= $2 - $3
             ORDER BY heartbeat_ms DESC LIMIT 1",
        )
        .bind(me)
        .bind(now_ms)
        .bind(GONE_AFTER_MS)
        .fetch_optional(db)
        .await)?)
    }

    /// Every other live server of a shared database (`[store] shared`),
    /// the leader first: id and HTTP base URL.
    pub async fn live_peers(
        &self,
        me: &str,
        now_ms: i64,
    ) -> Result<Vec<(String, String)>, StoreError> {
        Ok(on_pool!(&self.pool, db => sqlx::query_as(
            "SELECT id, http FROM servers WHERE role IN ('leader', 'member') AND id <> $1
                 AND stopped_ms IS NULL AND heartbeat_ms >= $2 - $3
             ORDER BY CASE WHEN role = 'leader' THEN 0 ELSE 1 END, id",
        )
        .bind(me)
        .bind(now_ms)
        .bind(GONE_AFTER_MS)
        .fetch_all(db)
        .await)?)
    }

    /// The server leading the fleet of a shared database, if one beats:
    /// its id and HTTP base URL (where fleet commands go).
    pub async fn live_leader(&self, now_ms: i64) -> Result<Option<(String, String)>, StoreError> {
        Ok(on_pool!(&self.pool, db => sqlx::query_as(
            "SELECT id, http FROM servers WHERE role = 'leader'
                 AND stopped_ms IS NULL AND heartbeat_ms >= $1 - $2
             ORDER BY heartbeat_ms DESC LIMIT 1",
        )
        .bind(now_ms)
        .bind(GONE_AFTER_MS)
        .fetch_optional(db)
        .await)?)
    }

    /// This server stopped cleanly.
    pub async fn server_stopped(&self, id: &str, now_ms: i64) -> Result<(), StoreError> {
        on_pool!(&self.pool, db => sqlx::query(
            "UPDATE servers SET stopped_ms = $1, heartbeat_ms = $2 WHERE id = $3",
        )
        .bind(now_ms)
        .bind(now_ms)
        .bind(id)
        .execute(db)
        .await
        .map(|_| ()))?;
        Ok(())
    }

    /// Every server that ever registered here, by id.
    pub async fn servers(&self) -> Result<Vec<ServerRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM servers ORDER BY id");
        Ok(on_pool!(&self.pool, db => sqlx::query_as(&sql).fetch_all(db).await)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(heartbeat_ms: i64, stopped_ms: Option<i64>) -> ServerRow {
        ServerRow {
            id: "node1:8080".into(),
            role: "primary".into(),
            peer: None,
            version: "0".into(),
            started_ms: 0,
            heartbeat_ms,
            stopped_ms,
            http: "http://10.77.0.1:8080".into(),
            pid: 1,
        }
    }

    #[test]
    fn state_by_heartbeat_and_stop() {
        let now = 100_000;
        let cases = [
            (now, None, ServerState::Up),
            (now - GONE_AFTER_MS, None, ServerState::Up),
            (now - GONE_AFTER_MS - 1, None, ServerState::Gone),
            (now - 1, Some(now - 1), ServerState::Stopped),
            (0, Some(1), ServerState::Stopped),
        ];
        for (heartbeat, stopped, want) in cases {
            assert_eq!(
                row(heartbeat, stopped).state(now),
                want,
                "{heartbeat} {stopped:?}"
            );
        }
    }

    #[tokio::test]
    async fn register_beat_stop_and_register_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let start = ServerStart {
            id: "node1:8080",
            role: ServerRole::Primary,
            peer: None,
            version: "1.2.3",
            http: "http://10.77.0.1:8080",
            pid: 42,
        };
        store.register_server(&start, 1_000).await.unwrap();
        store
            .server_heartbeat("node1:8080", ServerRole::Primary, None, 6_000)
            .await
            .unwrap();
        let rows = store.servers().await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].started_ms, rows[0].heartbeat_ms), (1_000, 6_000));
        assert_eq!(rows[0].role, "primary");
        store.server_stopped("node1:8080", 7_000).await.unwrap();
        store
            .server_heartbeat("node1:8080", ServerRole::Primary, None, 8_000)
            .await
            .unwrap();
        let rows = store.servers().await.unwrap();
        assert_eq!(rows[0].stopped_ms, Some(7_000));
        assert_eq!(rows[0].heartbeat_ms, 7_000, "no heartbeat after the stop");
        store
            .register_server(&ServerStart { pid: 43, ..start }, 9_000)
            .await
            .unwrap();
        let rows = store.servers().await.unwrap();
        assert_eq!(rows.len(), 1, "a restart replaces its row");
        assert_eq!(rows[0].started_ms, 9_000);
        assert_eq!(rows[0].stopped_ms, None);
        assert_eq!(rows[0].pid, 43);
    }

    #[tokio::test]
    async fn a_standby_and_its_primary_name_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let start = |id, role| ServerStart {
            id,
            role,
            peer: None,
            version: "1",
            http: "http://10.77.0.1:8080",
            pid: 1,
        };
        let peers = |rows: Vec<ServerRow>| -> Vec<(String, Option<String>)> {
            rows.into_iter().map(|r| (r.id, r.peer)).collect()
        };
        store
            .register_server(&start("a", ServerRole::Primary), 1_000)
            .await
            .unwrap();
        store
            .register_server(&start("b", ServerRole::Standby), 1_000)
            .await
            .unwrap();
        assert_eq!(
            store.live_primary("b", 2_000).await.unwrap(),
            Some(("a".into(), "http://10.77.0.1:8080".into()))
        );
        assert_eq!(store.live_primary("a", 2_000).await.unwrap(), None);
        store
            .server_heartbeat("b", ServerRole::Standby, None, 2_000)
            .await
            .unwrap();
        store
            .server_heartbeat("a", ServerRole::Primary, None, 2_000)
            .await
            .unwrap();
        assert_eq!(
            peers(store.servers().await.unwrap()),
            [
                ("a".into(), Some("b".into())),
                ("b".into(), Some("a".into()))
            ]
        );
        // The standby falls silent: the primary names no peer at its next
        // beat; the primary dies: the standby waits on nobody.
        let later = 2_000 + GONE_AFTER_MS + 1;
        store
            .server_heartbeat("a", ServerRole::Primary, None, later)
            .await
            .unwrap();
        assert_eq!(store.servers().await.unwrap()[0].peer, None);
        let much_later = later + GONE_AFTER_MS + 1;
        store
            .server_heartbeat("b", ServerRole::Standby, None, much_later)
            .await
            .unwrap();
        assert_eq!(store.live_primary("b", much_later).await.unwrap(), None);
        assert_eq!(store.servers().await.unwrap()[1].peer, None);
    }
}
