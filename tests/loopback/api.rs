//! The inventory API through a real socket, against the whole server: DHCP
//! leases listed and released, tokens, If-Match conflicts, the live event
//! stream, and `/metrics` after real DHCP traffic.

use std::net::Ipv4Addr;
use std::time::Duration;

use dhcproto::v4::{DhcpOption, MessageType};
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::dhcp_client::{mac, message, msg_type, with, Client, Relay};
use crate::common::TestServer;

const RELAY1: Ipv4Addr = Ipv4Addr::new(127, 1, 0, 1);
const SERVER_ID: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    fn new(server: &TestServer) -> Self {
        let token = std::fs::read_to_string(server.dir.path().join("data/admin.token")).unwrap();
        Self {
            base: format!("http://{}", server.bound.http),
            token: token.trim().into(),
            http: reqwest::Client::new(),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut rb = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        (status, headers, resp.json().await.unwrap_or(Value::Null))
    }

    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let token = self.token.clone();
        let (s, _, v) = self.call(method, path, Some(&token), body, &[]).await;
        (s, v)
    }
}

/// DISCOVER → OFFER → REQUEST → ACK through a relay; the bound address.
async fn dora(relay: &Relay, m: [u8; 6], xid: u32) -> Ipv4Addr {
    let offer = relay
        .exchange(&message(
            Client::BiosPxe,
            MessageType::Discover,
            m,
            xid,
            relay.giaddr,
        ))
        .await
        .expect("OFFER");
    let ip = offer.yiaddr();
    let req = message(
        Client::BiosPxe,
        MessageType::Request,
        m,
        xid + 1,
        relay.giaddr,
    );
    let req = with(
        with(req, DhcpOption::RequestedIpAddress(ip)),
        DhcpOption::ServerIdentifier(SERVER_ID),
    );
    let ack = relay.exchange(&req).await.expect("ACK");
    assert_eq!(msg_type(&ack), Some(MessageType::Ack));
    ip
}

#[tokio::test]
async fn leases_tokens_and_errors_through_a_real_socket() {
    let server = TestServer::full("serve_all = true").await;
    let api = Api::new(&server);
    let relay = Relay::new(RELAY1, server.dhcp()).await;
    let ip = dora(&relay, mac(70), 7000).await;

    let (status, leases) = api.admin(Method::GET, "/api/v1/leases", None).await;
    assert_eq!(status, StatusCode::OK, "{leases}");
    let lease = leases["leases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["ip"] == ip.to_string())
        .unwrap_or_else(|| panic!("{ip} listed: {leases}"))
        .clone();
    assert_eq!(lease["state"], "bound");
    assert_eq!(lease["subnet"], "127.1.0.0/24");
    assert_eq!(lease["mac"], "52:54:00:aa:00:46");
    let (_, mine) = api
        .admin(
            Method::GET,
            "/api/v1/leases?mac=52:54:00:aa:00:46&state=bound",
            None,
        )
        .await;
    assert_eq!(mine["leases"].as_array().unwrap().len(), 1);

    // A read-only token may look, not release.
    let (status, created) = api
        .admin(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({ "name": "viewer", "role": "read" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let reader = created["secret"].as_str().unwrap().to_string();
    let path = format!("/api/v1/leases/{ip}");
    let (status, _, body) = api
        .call(Method::DELETE, &path, Some(&reader), None, &[])
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    let (status, _, body) = api.call(Method::DELETE, &path, None, None, &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "unauthenticated");

    let (status, released) = api.admin(Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::OK, "{released}");
    assert_eq!(released["ip"], ip.to_string());
    let (_, leases) = api.admin(Method::GET, "/api/v1/leases", None).await;
    assert!(
        !leases.to_string().contains(&format!("\"{ip}\"")),
        "{leases}"
    );
    let (status, body) = api.admin(Method::DELETE, &path, None).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::NOT_FOUND, &json!("no_such_lease"))
    );
    let (status, body) = api
        .admin(Method::DELETE, "/api/v1/leases/not-an-ip", None)
        .await;
    assert_eq!(
        (status, &body["error"]["field"]),
        (StatusCode::BAD_REQUEST, &json!("ip"))
    );

    // The release is in the ledger, and the lease row is gone from SQLite.
    let (_, events) = api
        .admin(
            Method::GET,
            "/api/v1/events?step=dhcp.operator_release",
            None,
        )
        .await;
    assert_eq!(events["events"].as_array().unwrap().len(), 1, "{events}");
    let dir = server.stop().await;
    let db = TestServer::db(dir.path()).await;
    let (rows,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM leases WHERE ip = $1")
        .bind(ip.to_string())
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn if_match_conflicts_and_the_live_stream_through_a_real_socket() {
    let server = TestServer::full("serve_all = true").await;
    let api = Api::new(&server);

    // Watch the stream before the machine shows up.
    let resp = api
        .http
        .get(format!("{}/api/v1/events/stream?step=dhcp", api.base))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut stream = resp.bytes_stream();
    let relay = Relay::new(RELAY1, server.dhcp()).await;
    dora(&relay, mac(71), 7100).await;
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !text.contains("dhcp.ack") {
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("events within 10 s")
            .expect("stream open")
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("\"step\":\"dhcp.offer\""), "{text}");

    // Two operators: the second one's stale ETag is refused.
    let m = "52:54:00:aa:00:47";
    let (status, headers, _) = api
        .call(
            Method::GET,
            &format!("/api/v1/machines/{m}"),
            Some(&api.token.clone()),
            None,
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let tag = headers["etag"].to_str().unwrap().to_string();
    let token = api.token.clone();
    let patch = |host: &str| Some(json!({ "hostname": host }));
    let (status, _, body) = api
        .call(
            Method::PATCH,
            &format!("/api/v1/machines/{m}"),
            Some(&token),
            patch("a"),
            &[("if-match", &tag)],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, body) = api
        .call(
            Method::PATCH,
            &format!("/api/v1/machines/{m}"),
            Some(&token),
            patch("b"),
            &[("if-match", &tag)],
        )
        .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{body}");
    assert_eq!(body["error"]["code"], "etag_mismatch");
    let (_, shown) = api
        .admin(Method::GET, &format!("/api/v1/machines/{m}"), None)
        .await;
    assert_eq!(shown["hostname"], "a");

    // Shutdown is not held up by the open stream.
    drop(stream);
    server.stop().await;
}

/// The value of one sample line of `/metrics` (`name{labels}` as written).
fn sample(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn metrics_count_dhcp_by_type_and_outcome_leases_boots_and_artifact_bytes() {
    use sha2::{Digest as _, Sha256};
    let server = TestServer::full("serve_all = true").await;
    let api = Api::new(&server);
    let relay = Relay::new(RELAY1, server.dhcp()).await;
    dora(&relay, mac(72), 7200).await;
    relay.send_raw(b"not dhcp at all").await;

    // A generation, pointed at by default, a script served, a kernel fetched.
    let kernel = vec![7u8; 3000];
    let mut hexes = Vec::new();
    for bytes in [&kernel[..], b"initrd"] {
        let hex = hex::encode(Sha256::digest(bytes));
        let resp = api
            .http
            .put(format!("{}/api/v1/artifacts/sha256/{hex}", api.base))
            .bearer_auth(&api.token)
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
        hexes.push(hex);
    }
    let manifest = json!({
        "arch": "x86_64",
        "kernel": { "name": "vmlinuz", "digest": hexes[0], "size": kernel.len() },
        "initrds": [{ "name": "initrd.img", "digest": hexes[1], "size": 6 }],
        "cmdline": "console=ttyS0",
    });
    let (status, body) = api
        .admin(
            Method::POST,
            "/api/v1/streams/worker/generations",
            Some(manifest),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = api
        .admin(
            Method::PUT,
            "/api/v1/groups/default/generation",
            Some(json!({ "stream": "worker", "generation": 1 })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let script = reqwest::get(format!(
        "{}/boot/52-54-00-aa-00-48.ipxe?buildarch=x86_64",
        api.base
    ))
    .await
    .unwrap();
    assert_eq!(script.status(), StatusCode::OK);
    let got = reqwest::get(format!("{}/artifacts/sha256/{}", api.base, hexes[0]))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.len(), kernel.len());

    // The artifact hook runs when the body ends, and boot rows are written
    // in batches: allow them a moment.
    let mut text = String::new();
    let started = r#"ironboot_boots_total{stream="worker",generation="1",result="started"}"#;
    for _ in 0..50 {
        text = server.metrics().await;
        if sample(&text, "ironboot_http_artifact_bytes_total") == Some(3000)
            && sample(&text, started) == Some(1)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (key, want) in [
        (
            r#"ironboot_dhcp_packets_total{type="discover",outcome="offer"}"#,
            1,
        ),
        (
            r#"ironboot_dhcp_packets_total{type="request",outcome="ack"}"#,
            1,
        ),
        (
            r#"ironboot_dhcp_packets_total{type="unknown",outcome="malformed"}"#,
            1,
        ),
        (r#"ironboot_dhcp_leases_in_use{subnet="127.1.0.0/24"}"#, 1),
        (r#"ironboot_dhcp_leases_in_use{subnet="127.2.0.0/24"}"#, 0),
        (
            r#"ironboot_boots_total{stream="worker",generation="1",result="started"}"#,
            1,
        ),
        (
            r#"ironboot_boots_total{stream="worker",generation="1",result="confirmed"}"#,
            0,
        ),
        ("ironboot_http_artifact_bytes_total", 3000),
        ("ironboot_http_artifacts_total", 1),
        ("ironboot_dhcp_malformed_total", 1),
    ] {
        assert_eq!(sample(&text, key), Some(want), "{key}\n{text}");
    }
    assert!(text.contains("# TYPE ironboot_dhcp_leases_in_use gauge"));
    assert!(text.contains("ironboot_tftp_bytes_total"));
    server.stop().await;
}

/// Runs the `ironboot` binary as a client of `server`.
fn cli(server: &TestServer, token: Option<&str>, args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ironboot"));
    cmd.args(args)
        .args(["--server", &format!("http://{}", server.bound.http)])
        .arg("--data-dir")
        .arg(server.dir.path().join("data"))
        .env_remove("IRONBOOT_TOKEN")
        .env_remove("IRONBOOT_SERVER");
    if let Some(t) = token {
        cmd.args(["--token", t]);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_end_to_end_with_its_exit_codes() {
    let server = TestServer::full("serve_all = true").await;
    let relay = Relay::new(RELAY1, server.dhcp()).await;
    let ip = dora(&relay, mac(73), 7300).await;
    dora(&relay, mac(74), 7400).await;
    let m = "52:54:00:aa:00:49";
    let run = |token: Option<&str>, args: &[&str]| {
        tokio::task::block_in_place(|| cli(&server, token, args))
    };

    let (code, out, err) = run(None, &["machines", "list"]);
    assert_eq!(code, Some(0), "{err}");
    let header = out.lines().next().unwrap();
    for col in ["MAC", "KIND", "ARCH", "GROUP", "STATE"] {
        assert!(header.contains(col), "{header}");
    }
    assert!(
        out.contains(m) && out.contains("server") && out.contains("bios"),
        "{out}"
    );

    let (code, out, err) = run(None, &["machines", "label", m, "role=db", "rack=r1"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, _) = run(None, &["machines", "label", m, "rack-"]);
    assert_eq!(code, Some(0));
    assert!(out.contains(m), "{out}");
    let (code, out, _) = run(None, &["machines", "list", "-l", "role=db", "-o", "json"]);
    assert_eq!(code, Some(0));
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed["machines"].as_array().unwrap().len(), 1, "{out}");
    assert_eq!(listed["machines"][0]["labels"], json!({ "role": "db" }));
    let (_, out, _) = run(None, &["machines", "list", "--limit", "1", "-o", "json"]);
    let page: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(page["machines"].as_array().unwrap().len(), 1);

    let (code, out, _) = run(None, &["machines", "show", m]);
    assert_eq!(code, Some(0));
    assert!(out.contains("role=db") && out.contains("kind"), "{out}");
    let (code, out, _) = run(None, &["machines", "show", m, "-o", "json"]);
    assert_eq!(code, Some(0));
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["mac"], m);

    // Exit codes: 5 not found, 6 conflict, 4 auth, 3 unreachable, 2 usage.
    let (code, _, err) = run(None, &["machines", "set", m, "--group", "nope"]);
    assert_eq!(code, Some(5), "{err}");
    assert!(err.contains("nope"), "{err}");
    let (code, _, err) = run(
        None,
        &["machines", "label", m, "a=b", "--if-match", "\"stale\""],
    );
    assert_eq!(code, Some(6), "{err}");
    let (code, out, _) = run(None, &["tokens", "create", "viewer", "--role", "read"]);
    assert_eq!(code, Some(0));
    let secret = out.lines().nth(1).unwrap().trim().to_string();
    let (code, _, err) = run(Some(&secret), &["machines", "label", m, "a=b"]);
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("admin token"), "{err}");
    let (code, _, _) = run(Some(&secret), &["machines", "list"]);
    assert_eq!(code, Some(0));
    let (code, _, err) = run(Some("wrong"), &["machines", "list"]);
    assert_eq!(code, Some(4), "{err}");
    let (code, _, err) = run(None, &["machines", "label", m, "novalue"]);
    assert_eq!(code, Some(2), "{err}");
    let (code, _, err) = run(None, &["machines", "bogus"]);
    assert_eq!(code, Some(2), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ironboot"))
        .args([
            "machines",
            "list",
            "--server",
            "http://127.0.0.1:1",
            "--token",
            "x",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the server"));

    let (code, out, _) = run(None, &["tokens", "list"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("viewer") && !out.contains(&secret), "{out}");
    let (code, _, err) = run(None, &["tokens", "revoke", "2"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, _) = run(Some(&secret), &["machines", "list"]);
    assert_eq!(code, Some(4), "revoked");
    let (code, _, err) = run(None, &["tokens", "revoke", "1"]);
    assert_eq!(code, Some(6), "the last admin token: {err}");

    let (code, out, _) = run(None, &["leases", "list"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains(&ip.to_string()) && out.contains("bound"),
        "{out}"
    );
    let (code, out, _) = run(None, &["leases", "release", &ip.to_string()]);
    assert_eq!(code, Some(0), "{out}");
    let (code, _, _) = run(None, &["leases", "release", &ip.to_string()]);
    assert_eq!(code, Some(5));

    let (code, out, _) = run(None, &["boots", "list", "-o", "json"]);
    assert_eq!(code, Some(0));
    assert!(serde_json::from_str::<Value>(&out).unwrap()["boots"].is_array());
    let (code, out, _) = run(None, &["images", "list"]);
    assert_eq!(code, Some(0), "{out}");

    let (code, out, _) = run(None, &["machines", "delete", m]);
    assert_eq!(code, Some(0));
    assert!(out.contains("kept"), "{out}");
    let (code, _, _) = run(None, &["machines", "show", m]);
    assert_eq!(code, Some(5));
    server.stop().await;
}
