//! Property-based fuzzing of the whole API from its own OpenAPI document:
//! schemathesis (from PyPI; `.ci/run` installs it into a venv) generates
//! valid and invalid requests for every operation against the real server
//! on loopback, with an admin token, and checks that no answer is a 5xx
//! and every answer conforms to what the document says (status code,
//! content type, headers, body schema).
//!
//! Skipped with a printed reason when schemathesis is not installed,
//! unless `IRONBOOT_SCHEMATHESIS=require` (CI), where that is a failure.
//! `IRONBOOT_SCHEMATHESIS_BIN` names the `st` program; else
//! `/opt/schemathesis/bin/st`, else `st` on PATH. `IRONBOOT_FUZZ_SEED`
//! replays a run.
//!
//! Not fuzzed: `/api/v1/events/stream` (an endless stream by design),
//! `/api/v1/artifacts/fetch` (it downloads from any URL it is given; test
//! traffic stays on loopback), and token revocation (it could revoke the
//! token the fuzzer itself uses; tested in `http::api::tokens`).

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::json;
use sha2::{Digest as _, Sha256};

/// The whole run's budget (schemathesis stops generating at `--max-time`;
/// this is the hard stop).
const HARD_LIMIT: Duration = Duration::from_secs(300);

fn schemathesis() -> Option<PathBuf> {
    if let Ok(bin) = std::env::var("IRONBOOT_SCHEMATHESIS_BIN") {
        return Some(bin.into());
    }
    let venv = PathBuf::from("/opt/schemathesis/bin/st");
    if venv.exists() {
        return Some(venv);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("st"))
            .find(|p| p.is_file())
    })
}

/// A machine (it asked for its script) and a generation, so that the
/// fuzzer's requests find something besides 404s.
async fn seed(server: &TestServer, token: &str) {
    let base = format!("http://{}", server.bound.http);
    let http = reqwest::Client::new();
    let mut refs = Vec::new();
    for bytes in [&b"kernel"[..], b"initrd"] {
        let hex = hex::encode(Sha256::digest(bytes));
        let resp = http
            .put(format!("{base}/api/v1/artifacts/sha256/{hex}"))
            .bearer_auth(token)
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
        refs.push(json!({ "name": "f", "digest": hex, "size": bytes.len() }));
    }
    let manifest =
        json!({ "arch": "x86_64", "kernel": refs[0], "initrds": [refs[1]], "cmdline": "" });
    let resp = http
        .post(format!("{base}/api/v1/streams/worker/generations"))
        .bearer_auth(token)
        .json(&manifest)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let resp = reqwest::get(format!(
        "{base}/boot/52-54-00-aa-00-01.ipxe?buildarch=x86_64"
    ))
    .await
    .unwrap();
    assert!(resp.status().is_success());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_survives_schemathesis_and_keeps_to_its_document() {
    let Some(st) = schemathesis() else {
        if std::env::var("IRONBOOT_SCHEMATHESIS").as_deref() == Ok("require") {
            panic!("IRONBOOT_SCHEMATHESIS=require but schemathesis (st) is not installed");
        }
        eprintln!("skipped: schemathesis (st) not installed; see .ci/run");
        return;
    };
    let server = TestServer::full("serve_all = true").await;
    let token = std::fs::read_to_string(server.dir.path().join("data/admin.token")).unwrap();
    let token = token.trim().to_string();
    seed(&server, &token).await;

    let base = format!("http://{}", server.bound.http);
    let seed_value = std::env::var("IRONBOOT_FUZZ_SEED").unwrap_or_else(|_| "20261128".into());
    let work = tempfile::TempDir::new().unwrap();
    let log = work.path().join("schemathesis.log");
    let mut cmd = Command::new(&st);
    cmd.current_dir(work.path())
        .args([
            "run",
            &format!("{base}/api/v1/openapi.json"),
            "--url",
            &base,
        ])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance",
        ])
        .args(["--exclude-path", "/api/v1/events/stream"])
        .args(["--exclude-path", "/api/v1/artifacts/fetch"])
        .args(["--exclude-name", "DELETE /api/v1/tokens/{id}"])
        .args(["--max-examples", "40", "--max-time", "150", "--no-shrink"])
        .args(["--request-timeout", "10", "--seed", &seed_value])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::from(
            std::fs::File::create(work.path().join("stderr.log")).unwrap(),
        ));
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().expect("schemathesis starts");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if started.elapsed() > HARD_LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await
    .unwrap();
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    let err = std::fs::read_to_string(work.path().join("stderr.log")).unwrap_or_default();
    let summary = out
        .rsplit_once("SUMMARY")
        .map(|(_, s)| s)
        .unwrap_or(&out)
        .to_string();
    eprintln!(
        "schemathesis ({:.0} s, seed {seed_value}):{summary}",
        started.elapsed().as_secs_f64()
    );
    let status = status.unwrap_or_else(|| panic!("schemathesis ran over {HARD_LIMIT:?}\n{out}"));
    assert!(
        status.success(),
        "schemathesis found failures (replay with IRONBOOT_FUZZ_SEED={seed_value}):\n{out}\n{err}"
    );
    assert!(
        out.contains("Tested:"),
        "schemathesis tested nothing:\n{out}\n{err}"
    );
    server.stop().await;
}
