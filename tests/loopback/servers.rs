//! `GET /api/v1/servers` and `ironboot status` against the real server: its
//! own row up with a heartbeat that advances, a clean stop and a restart
//! under the same id (the row is replaced, not added), a server that died
//! (an old heartbeat, no stop) shown as gone, the table the CLI prints, and
//! no answer without a token.

use reqwest::{Method, StatusCode};
use serde_json::Value;
use tempfile::TempDir;

use crate::common::api::Api;
use crate::common::{full_config, TestServer};

const BIN: &str = env!("CARGO_BIN_EXE_ironboot");

async fn servers(api: &Api) -> Vec<Value> {
    let v = api.ok(Method::GET, "/api/v1/servers", None).await;
    v["servers"].as_array().expect("a list").clone()
}

#[tokio::test]
async fn the_server_is_up_with_a_heartbeat_that_advances() {
    let server = TestServer::full("").await;
    let api = Api::new(&server);
    let port = server.bound.http.port();

    let resp = reqwest::get(api.url("/api/v1/servers")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "no token, no list");

    let rows = servers(&api).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let me = &rows[0];
    assert!(
        me["id"].as_str().unwrap().ends_with(&format!(":{port}")),
        "the default id is HOST:HTTP_PORT: {me}"
    );
    assert_eq!(me["this"], true);
    assert_eq!(me["state"], "up");
    assert_eq!(me["role"], "primary");
    assert!(me["peer"].is_null(), "no standby, no peer: {me}");
    assert_eq!(me["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(me["http"], format!("http://127.0.0.1:{port}"));
    assert_eq!(me["pid"], std::process::id());
    assert!(me["stopped_ms"].is_null());
    assert!(me["heartbeat_age_ms"].as_i64().unwrap() < 15_000);

    let first = me["heartbeat_ms"].as_i64().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(7);
    loop {
        let beat = servers(&api).await[0]["heartbeat_ms"].as_i64().unwrap();
        if beat > first {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "heartbeat still {first} after 7 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    server.stop().await;
}

/// A row for a server that died: registered long ago, heartbeat a minute
/// old, never stopped.
async fn insert_dead_server(dir: &std::path::Path) {
    let db = TestServer::db_rw(dir).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    sqlx::query(
        "INSERT INTO servers (id, role, peer, version, started_ms, heartbeat_ms, stopped_ms, http, pid)
         VALUES ($1, 'primary', NULL, '0.0.1', $2, $3, NULL, 'http://127.0.0.9:8080', 4242)",
    )
    .bind("dead:8080")
    .bind(now - 3_600_000)
    .bind(now - 60_000)
    .execute(&db)
    .await
    .unwrap();
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_replaces_its_row_and_a_dead_server_is_gone() {
    let dir = TempDir::new().unwrap();
    // A top-level key: before the sections of the test config.
    let text = format!("server_name = \"boot-a\"\n{}", full_config(dir.path(), ""));
    let server = TestServer::start(&text, dir).await;
    let api = Api::new(&server);
    let rows = servers(&api).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["id"], "boot-a", "server_name is the id");
    let started = rows[0]["started_ms"].as_i64().unwrap();

    let dir = server.stop().await;
    let db = TestServer::db(dir.path()).await;
    let (stopped,): (Option<i64>,) =
        sqlx::query_as("SELECT stopped_ms FROM servers WHERE id = 'boot-a'")
            .fetch_one(&db)
            .await
            .unwrap();
    db.close().await;
    assert!(stopped.is_some(), "a clean stop is recorded");
    insert_dead_server(dir.path()).await;

    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let server = TestServer::start(&text, dir).await;
    let api = Api::new(&server);
    let rows = servers(&api).await;
    assert_eq!(rows.len(), 2, "the restart replaced its row: {rows:?}");
    let a = rows.iter().find(|r| r["id"] == "boot-a").unwrap();
    assert_eq!(a["state"], "up");
    assert_eq!(a["this"], true);
    assert!(a["stopped_ms"].is_null(), "{a}");
    assert!(a["started_ms"].as_i64().unwrap() > started, "{a}");
    let dead = rows.iter().find(|r| r["id"] == "dead:8080").unwrap();
    assert_eq!(dead["state"], "gone");
    assert_eq!(dead["this"], false);
    assert!(dead["heartbeat_age_ms"].as_i64().unwrap() >= 60_000);

    // The CLI: a table, and JSON with --json.
    let base = format!("http://{}", server.bound.http);
    let data = server.dir.path().join("data");
    let cli = |extra: &[&str]| {
        tokio::task::block_in_place(|| {
            let out = std::process::Command::new(BIN)
                .arg("status")
                .args(extra)
                .args(["--server", &base, "--data-dir"])
                .arg(&data)
                .env_remove("IRONBOOT_TOKEN")
                .env_remove("IRONBOOT_SERVER")
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{stdout}{stderr}");
            stdout
        })
    };
    let table = cli(&[]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    for header in [
        "ID",
        "ROLE",
        "PEER",
        "STATE",
        "LAST HEARTBEAT",
        "STARTED",
        "VERSION",
        "HTTP",
    ] {
        assert!(lines[0].contains(header), "{table}");
    }
    let a_line = lines.iter().find(|l| l.starts_with("boot-a ")).unwrap();
    assert!(a_line.contains("primary"), "{table}");
    assert!(a_line.contains("up (this)"), "{table}");
    assert!(a_line.contains(&base), "{table}");
    let dead_line = lines.iter().find(|l| l.starts_with("dead:8080 ")).unwrap();
    assert!(dead_line.contains("gone"), "{table}");
    assert!(
        dead_line.contains("m") && dead_line.contains(" ago"),
        "{table}"
    );
    println!("{table}");
    let json: Value = serde_json::from_str(&cli(&["--json"])).unwrap();
    assert_eq!(json["servers"].as_array().unwrap().len(), 2, "{json}");

    server.stop().await;
}
