//! The REST API as the integration tests use it: one client with the
//! admin token the server wrote at first start, the calls every test file
//! needs (any call, a call that must succeed, uploads, an image import, a
//! group pointer), and nothing specific to one test.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::TestServer;

pub struct Api {
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(server: &TestServer) -> Self {
        Self::at(&format!("http://{}", server.bound.http), server.dir.path())
    }

    /// A server at `base` whose data directory is `dir`.
    pub fn at(base: &str, dir: &std::path::Path) -> Self {
        let token = std::fs::read_to_string(dir.join("data/admin.token"))
            .expect("admin token written at first start");
        Self {
            base: base.to_string(),
            token: token.trim().into(),
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Any call with the admin token: its status and JSON body (`Null` when
    /// the body is not JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut rb = self
            .http
            .request(method, self.url(path))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// A call that must succeed: its body.
    pub async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, path, body).await;
        assert!(status.is_success(), "{path}: {status} {v}");
        v
    }

    /// Uploads an artifact; its sha256 in hex.
    pub async fn upload(&self, bytes: &[u8]) -> String {
        let hex = hex::encode(Sha256::digest(bytes));
        let resp = self
            .http
            .put(self.url(&format!("/api/v1/artifacts/sha256/{hex}")))
            .bearer_auth(&self.token)
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "upload: {}", resp.status());
        hex
    }

    /// Imports an x86_64 image (a kernel and one initrd) as the next
    /// generation of `stream`; its number.
    pub async fn import(&self, stream: &str, kernel: &[u8], initrd: &[u8], cmdline: &str) -> i64 {
        let (k, i) = (self.upload(kernel).await, self.upload(initrd).await);
        let manifest = json!({
            "arch": "x86_64",
            "kernel": { "name": "vmlinuz", "digest": k, "size": kernel.len() },
            "initrds": [{ "name": "initrd.img", "digest": i, "size": initrd.len() }],
            "rootfs": null,
            "cmdline": cmdline,
        });
        let path = format!("/api/v1/streams/{stream}/generations");
        let (status, body) = self.call(Method::POST, &path, Some(manifest)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["generation"].as_i64().unwrap()
    }

    /// Points `group` at `stream`'s `generation`.
    pub async fn point(&self, group: &str, stream: &str, generation: i64) {
        self.ok(
            Method::PUT,
            &format!("/api/v1/groups/{group}/generation"),
            Some(json!({ "stream": stream, "generation": generation })),
        )
        .await;
    }

    /// A GET without a token (the boot path): status and text.
    pub async fn text(&self, path: &str) -> (StatusCode, String) {
        let resp = self.http.get(self.url(path)).send().await.unwrap();
        (resp.status(), resp.text().await.unwrap())
    }
}
