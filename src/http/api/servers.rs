//! The servers that use this database (`GET /api/v1/servers`, read role):
//! each one's role, peer, last heartbeat and whether it is up, as the rows
//! in `store::servers` say. Read only: a server writes its own row (`app`),
//! nothing here or on the boot path does.

use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::*;
use crate::store::servers::ServerRow;

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new().routes(routes!(list_servers))
}

/// One ironboot server that uses this database.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServerView {
    /// Stable id: `server_name`, else `HOST:HTTP_PORT`.
    pub id: String,
    /// `primary` (serves from the database alone), `standby` (waits to
    /// take over from the primary, `[store] standby = true`), or, with
    /// `[store] shared = true`, `leader` (leads the fleet) or `member`.
    pub role: String,
    /// A standby's primary, a primary's live standby, a member's leader,
    /// or the HA partner of a server with `dhcp.peer`; null without one.
    pub peer: Option<String>,
    /// `up` (heartbeat within 15 s), `stopped` (a clean stop) or `gone`
    /// (no heartbeat for 15 s and no clean stop: it died).
    pub state: String,
    /// Whether this is the server that answered.
    pub this: bool,
    pub version: String,
    pub started_ms: i64,
    pub heartbeat_ms: i64,
    /// How long ago the last heartbeat was, by the answering server's clock.
    pub heartbeat_age_ms: i64,
    pub stopped_ms: Option<i64>,
    /// The HTTP base URL machines are told.
    pub http: String,
    pub pid: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServerList {
    pub servers: Vec<ServerView>,
}

fn view(row: ServerRow, this: Option<&str>, now: i64) -> ServerView {
    ServerView {
        state: row.state(now).as_str().into(),
        this: this == Some(row.id.as_str()),
        heartbeat_age_ms: (now - row.heartbeat_ms).max(0),
        id: row.id,
        role: row.role,
        peer: row.peer,
        version: row.version,
        started_ms: row.started_ms,
        heartbeat_ms: row.heartbeat_ms,
        stopped_ms: row.stopped_ms,
        http: row.http,
        pid: row.pid,
    }
}

/// Every server that registered with this database, by id.
#[utoipa::path(get, path = "/api/v1/servers", tag = "servers",
    responses((status = 200, body = ServerList)))]
async fn list_servers(_: Reader, State(s): State<ApiState>) -> ApiResult<Json<ServerList>> {
    let now = crate::ledger::now_ms();
    let servers = s
        .store
        .servers()
        .await?
        .into_iter()
        .map(|row| view(row, s.server_id.as_deref(), now))
        .collect();
    Ok(Json(ServerList { servers }))
}

#[cfg(test)]
mod tests {
    use axum::http::{Method, StatusCode};

    use super::super::tests::{assert_error, Harness};
    use crate::store::servers::{ServerRole, ServerStart};

    #[tokio::test]
    async fn servers_list_their_state_and_need_a_token() {
        let h = Harness::new().await;
        let a = h
            .call(Method::GET, "/api/v1/servers", None, None, &[])
            .await;
        assert_error(&a, StatusCode::UNAUTHORIZED, "unauthenticated");
        let now = crate::ledger::now_ms();
        let start = ServerStart {
            id: "old:8080",
            role: ServerRole::Primary,
            peer: None,
            version: "0.1.0",
            http: "http://10.77.0.2:8080",
            pid: 7,
        };
        h.state
            .store
            .register_server(&start, now - 60_000)
            .await
            .unwrap();
        let a = h.get("/api/v1/servers").await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        let old = &a.body["servers"][0];
        assert_eq!(old["id"], "old:8080");
        assert_eq!(old["state"], "gone");
        assert_eq!(old["role"], "primary");
        assert!(old["peer"].is_null());
        assert_eq!(old["this"], false, "the harness has no server id");
        assert!(old["heartbeat_age_ms"].as_i64().unwrap() >= 60_000);
    }
}
