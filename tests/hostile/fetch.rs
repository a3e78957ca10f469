//! Server-side fetches (`--from-url`, `POST /api/v1/artifacts/fetch`) are
//! not a way into what only the server can reach: loopback, private and
//! link-local destinations are refused (first URL, redirect or resolved
//! name), and a refusal or a mismatch shows nothing of what was fetched.

use std::net::SocketAddr;

use axum::response::Redirect;
use axum::routing::get;
use serde_json::{json, Value};

use crate::common::TestServer;

async fn admin_token(server: &TestServer) -> String {
    std::fs::read_to_string(server.dir.path().join("data/admin.token"))
        .unwrap()
        .trim()
        .to_string()
}

async fn fetch(server: &TestServer, url: &str, sha256: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!(
            "http://{}/api/v1/artifacts/fetch",
            server.bound.http
        ))
        .bearer_auth(admin_token(server).await)
        .json(&json!({ "url": url, "sha256": sha256 }))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A small web server on `ip` with a secret and a redirect to `to`.
async fn origin(ip: &str, to: String) -> SocketAddr {
    let app = axum::Router::new()
        .route("/secret", get(|| async { "internal secret\n" }))
        .route("/hop", get(move || async move { Redirect::temporary(&to) }));
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test]
async fn fetches_to_internal_addresses_are_refused_and_reveal_nothing() {
    let inner = origin("127.0.0.1", String::new()).await;
    let secret = format!("http://{inner}/secret");
    let any = "00".repeat(32);

    // Default policy: loopback refused, by literal and by name.
    let server = TestServer::full("").await;
    for url in [
        secret.clone(),
        format!("http://localhost:{}/secret", inner.port()),
        format!("http://[::1]:{}/secret", inner.port()),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "file:///etc/shadow".to_string(),
    ] {
        let (status, body) = fetch(&server, &url, &any).await;
        assert!(status == 403 || status == 400, "{url}: {status} {body}");
        assert!(!body.to_string().contains("internal secret"));
    }
    drop(server);

    // An allowed origin (127.0.0.2 only) that redirects to a refused one.
    let hop = origin("127.0.0.2", secret.clone()).await;
    let server = TestServer::full("[images]\nfetch_allow = [\"127.0.0.2/32\"]\n").await;
    let (status, body) = fetch(&server, &format!("http://{hop}/hop"), &any).await;
    assert_eq!(status, 403, "a redirect to loopback is refused: {body}");
    assert_eq!(body["error"]["code"], "fetch_refused", "{body}");

    // Content from an allowed origin that does not match: the expected
    // digest is named, the actual one is not.
    let allowed = origin("127.0.0.2", String::new()).await;
    let (status, body) = fetch(&server, &format!("http://{allowed}/secret"), &any).await;
    assert_eq!(status, 422, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(&any), "{message}");
    let actual = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(b"internal secret\n"))
    };
    assert!(
        !message.contains(&actual),
        "the fetched content's digest leaked: {message}"
    );
}
