//! Live boot over HTTP on loopback, as a machine and an operator see it:
//! import through the API (and the CLI), point the group, fetch the script,
//! the config and the artifacts, confirm, and read the result back.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::common::api::Api;
use crate::common::TestServer;

const BIN: &str = env!("CARGO_BIN_EXE_ironboot");
const MAC: &str = "52:54:00:00:00:01";

async fn server() -> TestServer {
    TestServer::full("").await
}

/// Finds `prefix…` up to whitespace in a script.
fn find_url<'a>(text: &'a str, marker: &str) -> &'a str {
    let start = text
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} in\n{text}"));
    text[start..].split_whitespace().next().unwrap()
}

#[tokio::test]
async fn a_machine_boots_its_groups_generation_and_confirms() {
    let server = server().await;
    let api = Api::new(&server);
    let kernel = vec![7u8; 300_000];
    let initrd = vec![9u8; 120_000];
    let gen = api
        .import(
            "worker",
            &kernel,
            &initrd,
            "console=ttyS0 rack={{ machine.labels.rack | default('none') }}",
        )
        .await;
    assert_eq!(gen, 1);
    api.point("default", "worker", gen).await;

    // The static first script chains to the per-machine one.
    let (status, boot) = api.text("/boot.ipxe").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        boot.contains(&format!(
            "chain --autofree {}/boot/${{mac:hexhyp}}.ipxe?uuid=${{uuid}}&serial=${{serial:uristring}}",
            api.base
        )),
        "{boot}"
    );

    let (status, script) = api
        .text("/boot/52-54-00-00-00-01.ipxe?uuid=u-1&serial=SN77&buildarch=x86_64&platform=pcbios")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(script.starts_with("#!ipxe\n"), "{script}");
    let kernel_hex = hex::encode(Sha256::digest(&kernel));
    let initrd_hex = hex::encode(Sha256::digest(&initrd));
    assert!(script.contains(&format!("kernel --name vmlinuz {}/artifacts/sha256/{kernel_hex} console=ttyS0 rack=none ds=nocloud-net;s=", api.base)), "{script}");
    assert!(
        script.contains(&format!(
            "initrd --name initrd0 {}/artifacts/sha256/{initrd_hex}",
            api.base
        )),
        "{script}"
    );

    // The artifacts behind those URLs are the bytes, immutable and cacheable.
    let resp = reqwest::get(api.url(&format!("/artifacts/sha256/{kernel_hex}")))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("immutable"));
    assert_eq!(resp.bytes().await.unwrap().as_ref(), kernel.as_slice());

    // The NoCloud seed: meta-data, user-data with phone_home, vendor-data.
    let seed = find_url(&script, "s=http")
        .trim_start_matches("s=")
        .to_string();
    let seed_path = seed.trim_start_matches(&api.base).to_string();
    let (status, meta) = api.text(&format!("{seed_path}meta-data")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        meta.contains("instance-id: ironboot-525400000001-"),
        "{meta}"
    );
    assert!(
        meta.contains("local-hostname: node1"),
        "the reservation names the machine: {meta}"
    );
    let (_, user) = api.text(&format!("{seed_path}user-data")).await;
    assert!(user.starts_with("#cloud-config"), "{user}");
    let phone = find_url(&user, "http://").to_string();
    assert_eq!(
        api.text(&format!("{seed_path}vendor-data")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        api.text(&format!("{seed_path}network-config")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.text("/config/not-a-token/user-data").await.0,
        StatusCode::NOT_FOUND
    );

    // Not confirmed yet.
    let (_, m) = api
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/machines/{MAC}"),
            None,
        )
        .await;
    assert_eq!(m["current"], Value::Null, "{m}");

    // cloud-init's phone_home: a urlencoded POST.
    let form =
        "instance_id=iid&hostname=node1&fqdn=node1&pub_key_rsa=&pub_key_ecdsa=&pub_key_ed25519=";
    let post = |url: String| {
        reqwest::Client::new()
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
    };
    assert_eq!(post(phone.clone()).await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        post(phone.clone()).await.unwrap().status(),
        StatusCode::CONFLICT,
        "a replayed token is refused"
    );
    let wrong = post(api.url("/phone-home/0123456789abcdef")).await.unwrap();
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        wrong.json::<Value>().await.unwrap()["error"]["code"],
        "unknown_token"
    );

    let (_, m) = api
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/machines/{MAC}"),
            None,
        )
        .await;
    assert_eq!(
        m["current"],
        json!({ "stream": "worker", "generation": 1 }),
        "{m}"
    );
    assert_eq!(
        m["last_good"],
        json!({ "stream": "worker", "generation": 1 })
    );
    assert_eq!(m["serial"], "SN77");
    let boot = &m["recent_boots"][0];
    if std::env::var("DBG").is_ok() {
        let db = TestServer::db(server.dir.path()).await;
        let rows: Vec<(i64, String, Option<i64>)> =
            sqlx::query_as("SELECT id, step, boot_id FROM events")
                .fetch_all(&db)
                .await
                .unwrap();
        eprintln!("EVENTS {rows:?}\nBOOT {boot}");
    }
    assert_eq!(boot["state"], "confirmed");
    let steps: Vec<&str> = boot["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    for step in ["boot.script", "boot.config", "boot.confirm"] {
        assert!(steps.contains(&step), "{step} in {steps:?}");
    }
    let (_, history) = api
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/machines/{MAC}/boots"),
            None,
        )
        .await;
    assert_eq!(history["boots"].as_array().unwrap().len(), 1);

    // The refused config fetch and confirmations are counted, and leave no
    // row behind (a refused request stores a counter, not its body).
    assert_eq!(server.counter("boot_token_refused").await, 3);
    let dir = server.stop().await;
    let db = TestServer::db(dir.path()).await;
    let (refused,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM events WHERE step = 'boot.confirm_refused'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(refused, 0);
}

#[tokio::test]
async fn nothing_to_boot_says_why_and_a_new_generation_keeps_the_old_one() {
    let server = server().await;
    let api = Api::new(&server);
    let (_, script) = api
        .text("/boot/52-54-00-00-00-09.ipxe?buildarch=x86_64")
        .await;
    assert!(script.contains("echo ironboot: nothing to boot for 52:54:00:00:00:09: group default points at no generation"), "{script}");
    assert!(script.contains("exit 1"));

    let g1 = api
        .import("worker", b"kernel one", b"initrd one", "console=ttyS0")
        .await;
    let g2 = api
        .import("worker", b"kernel two", b"initrd one", "console=ttyS0")
        .await;
    assert_eq!((g1, g2), (1, 2));
    api.point("default", "worker", g1).await;
    let (_, s1) = api.text("/boot/52-54-00-00-00-09.ipxe").await;
    assert!(s1.contains("worker gen 1"), "{s1}");
    api.point("default", "worker", g2).await;
    let (_, s2) = api.text("/boot/52-54-00-00-00-09.ipxe").await;
    assert!(s2.contains("worker gen 2"), "{s2}");
    // Rollback is a pointer move: generation 1 is still there.
    let (status, g) = api
        .call(
            reqwest::Method::GET,
            "/api/v1/streams/worker/generations/1",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{g}");

    // A pin beats the group; a pin to nothing is refused with a JSON error.
    let (status, body) = api
        .call(
            reqwest::Method::PUT,
            "/api/v1/machines/52:54:00:00:00:09/pin",
            Some(json!({ "stream": "worker", "generation": 1 })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, s3) = api.text("/boot/52-54-00-00-00-09.ipxe").await;
    assert!(s3.contains("worker gen 1") && s3.contains("(pin)"), "{s3}");
    let (status, body) = api
        .call(
            reqwest::Method::PUT,
            "/api/v1/machines/52:54:00:00:00:09/pin",
            Some(json!({ "stream": "worker", "generation": 99 })),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "no_such_generation");

    // An architecture mismatch is refused on the console, not booted.
    let (_, s4) = api
        .text("/boot/52-54-00-00-00-08.ipxe?buildarch=arm64")
        .await;
    assert!(
        s4.contains("is an x86_64 image but this machine runs arm64"),
        "{s4}"
    );
}

#[tokio::test]
async fn imports_are_content_addressed_verified_and_numbered_under_concurrency() {
    let server = server().await;
    let api = Api::new(&server);
    let bytes = b"the same kernel".to_vec();
    let hex = api.upload(&bytes).await;
    api.upload(&bytes).await; // stored once: the second is a no-op
    let files: Vec<_> = walk(&server.dir.path().join("data/images"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(&hex))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let head = api
        .http
        .head(api.url(&format!("/api/v1/artifacts/sha256/{hex}")))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);

    // A body that does not hash to its URL is refused and leaves nothing.
    let bogus = "ab".repeat(32);
    let resp = api
        .http
        .put(api.url(&format!("/api/v1/artifacts/sha256/{bogus}")))
        .bearer_auth(&api.token)
        .body("corrupt")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["code"],
        "digest_mismatch"
    );
    assert!(walk(&server.dir.path().join("data/images"))
        .iter()
        .all(|p| !p.to_string_lossy().contains(&bogus)));

    // A manifest naming a missing artifact is refused.
    let missing = json!({ "arch": "x86_64", "kernel": { "name": "k", "digest": "cd".repeat(32), "size": 1 },
                          "initrds": [{ "name": "i", "digest": hex, "size": bytes.len() }], "rootfs": null, "cmdline": "" });
    let (status, body) = api
        .call(
            reqwest::Method::POST,
            "/api/v1/streams/worker/generations",
            Some(missing),
        )
        .await;
    assert!(status.is_client_error(), "{status} {body}");

    // Eight concurrent imports into one stream get eight distinct numbers.
    let mut tasks = Vec::new();
    for n in 0..8u8 {
        let api = Api {
            base: api.base.clone(),
            token: api.token.clone(),
            http: reqwest::Client::new(),
        };
        tasks.push(tokio::spawn(async move {
            api.import("race", &[n; 1000], &[n; 10], "x").await
        }));
    }
    let mut numbers = Vec::new();
    for t in tasks {
        numbers.push(t.await.unwrap());
    }
    numbers.sort();
    assert_eq!(numbers, (1..=8).collect::<Vec<_>>());
}

#[tokio::test]
async fn api_errors_are_json_with_the_right_status() {
    let server = server().await;
    let api = Api::new(&server);
    let anon = api
        .http
        .get(api.url("/api/v1/machines"))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        anon.json::<Value>().await.unwrap()["error"]["code"],
        "unauthenticated"
    );
    let bad = api
        .http
        .get(api.url("/api/v1/machines"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    let cases = [
        (
            reqwest::Method::GET,
            "/api/v1/machines/not-a-mac",
            None,
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            reqwest::Method::GET,
            "/api/v1/machines/52:54:00:99:99:99",
            None,
            StatusCode::NOT_FOUND,
            "no_such_machine",
        ),
        (
            reqwest::Method::PUT,
            "/api/v1/groups/web/generation",
            Some(json!({ "stream": "x", "generation": 1 })),
            StatusCode::NOT_FOUND,
            "no_such_generation",
        ),
        (
            reqwest::Method::PUT,
            "/api/v1/groups/web/generation",
            Some(json!({ "stream": "x" })),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_json",
        ),
        (
            reqwest::Method::PUT,
            "/api/v1/groups/b%20d/generation",
            Some(json!({ "stream": "x", "generation": 1 })),
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            reqwest::Method::GET,
            "/api/v1/streams/worker/generations/x",
            None,
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            reqwest::Method::POST,
            "/api/v1/gc",
            Some(json!({ "retain": 0 })),
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            reqwest::Method::GET,
            "/api/v1/nothing-here",
            None,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let (got, json) = api.call(method.clone(), path, body).await;
        assert_eq!(got, status, "{method} {path}: {json}");
        assert_eq!(json["error"]["code"], code, "{method} {path}: {json}");
    }
}

#[tokio::test]
async fn gc_keeps_what_is_in_use_and_the_newest() {
    let server = server().await;
    let api = Api::new(&server);
    for n in 1..=4u8 {
        api.import("worker", &[n; 100], &[n; 10], "x").await;
    }
    api.point("default", "worker", 1).await;
    let (status, report) = api
        .call(
            reqwest::Method::POST,
            "/api/v1/gc",
            Some(json!({ "retain": 2 })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        report["deleted"],
        json!([{ "stream": "worker", "generation": 2 }]),
        "{report}"
    );
    assert_eq!(report["kept_in_use"][0]["generation"], 1);
    let (status, body) = api
        .call(
            reqwest::Method::DELETE,
            "/api/v1/streams/worker/generations/1",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("group default"));
    let (status, _) = api
        .call(
            reqwest::Method::GET,
            "/api/v1/streams/worker/generations/2",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The artifacts only generation 2 used are gone from disk.
    let hex = hex::encode(Sha256::digest([2u8; 100]));
    assert!(walk(&server.dir.path().join("data/images"))
        .iter()
        .all(|p| !p.to_string_lossy().contains(&hex)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_imports_points_and_lists() {
    // --from-url below fetches from this server itself, on loopback: a
    // destination refused unless the operator allows it.
    let server = TestServer::full("[images]\nfetch_allow = [\"127.0.0.0/8\"]\n").await;
    let dir = server.dir.path();
    let kernel = dir.join("vmlinuz");
    let initrd = dir.join("initrd.img");
    std::fs::write(&kernel, vec![1u8; 2_000_000]).unwrap();
    std::fs::write(&initrd, vec![2u8; 500_000]).unwrap();
    let base = format!("http://{}", server.bound.http);
    let data = dir.join("data");
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .args(args)
            .args(["--server", &base, "--data-dir"])
            .arg(&data)
            .env_remove("IRONBOOT_TOKEN")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let k = kernel.to_str().unwrap();
    let i = initrd.to_str().unwrap();
    let (code, out, err) = tokio::task::block_in_place(|| {
        cli(&[
            "image", "import", "--stream", "worker", "--kernel", k, "--initrd", i,
        ])
    });
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with("generation 1 "), "{out}");
    let (code, out, _) = tokio::task::block_in_place(|| {
        cli(&[
            "image", "import", "--stream", "worker", "--kernel", k, "--initrd", i,
        ])
    });
    assert_eq!(code, Some(0));
    assert!(
        out.starts_with("generation 2 "),
        "identical artifacts make a new generation of the same image: {out}"
    );
    let (code, out, err) =
        tokio::task::block_in_place(|| cli(&["group", "set-generation", "default", "worker", "2"]));
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, _) = tokio::task::block_in_place(|| cli(&["image", "list", "-o", "json"]));
    assert_eq!(code, Some(0));
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["generations"].as_array().unwrap().len(), 2);

    // --from-url: the server fetches and verifies (here from its own /ipxe/).
    let ipxe = std::fs::read(dir.join("ipxe/undionly.kpxe")).unwrap();
    let url = format!(
        "{base}/ipxe/undionly.kpxe#sha256={}",
        hex::encode(Sha256::digest(&ipxe))
    );
    let (code, out, err) = tokio::task::block_in_place(|| {
        cli(&[
            "image",
            "import",
            "--stream",
            "remote",
            "--from-url",
            "--kernel",
            &url,
            "--initrd",
            &url,
        ])
    });
    assert_eq!(code, Some(0), "{out}{err}");
    let bad = format!("{base}/ipxe/undionly.kpxe#sha256={}", "00".repeat(32));
    let (code, _, err) = tokio::task::block_in_place(|| {
        cli(&[
            "image",
            "import",
            "--stream",
            "remote",
            "--from-url",
            "--kernel",
            &bad,
            "--initrd",
            &url,
        ])
    });
    assert_eq!(
        code,
        Some(1),
        "a digest mismatch is the server refusing: {err}"
    );
    assert!(
        err.contains(&format!("expected {}", "00".repeat(32))),
        "{err}"
    );

    // Exit codes scripts can rely on.
    let (code, _, err) =
        tokio::task::block_in_place(|| cli(&["machines", "show", "52:54:00:99:99:99"]));
    assert_eq!(code, Some(5), "not found: {err}");
    let out = std::process::Command::new(BIN)
        .args(["machines", "list", "--server", &base, "--token", "wrong"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "auth failure");
    let out = std::process::Command::new(BIN)
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
    assert_eq!(out.status.code(), Some(3), "connection failure");
    let (code, _, _) = tokio::task::block_in_place(|| {
        cli(&[
            "image",
            "import",
            "--stream",
            "w",
            "--kernel",
            "/nonexistent",
            "--initrd",
            i,
        ])
    });
    assert_eq!(code, Some(2), "unreadable local file");
    tokio::time::sleep(Duration::from_millis(10)).await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test]
async fn artifacts_are_immutable_with_ranges_and_conditional_requests() {
    let server = server().await;
    let api = Api::new(&server);
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let hex = api.upload(&body).await;
    let url = api.url(&format!("/artifacts/sha256/{hex}"));
    let http = reqwest::Client::new();
    let etag = format!("\"{hex}\"");

    let full = http.get(&url).send().await.unwrap();
    assert_eq!(full.status(), StatusCode::OK);
    let h = full.headers().clone();
    assert_eq!(h["etag"], etag.as_str());
    assert_eq!(h["cache-control"], "public, max-age=31536000, immutable");
    assert_eq!(h["accept-ranges"], "bytes");
    assert_eq!(h["content-length"], "100000");
    assert_eq!(full.bytes().await.unwrap().as_ref(), body.as_slice());

    let head = http.head(&url).send().await.unwrap();
    assert_eq!(
        (
            head.status(),
            head.headers()["content-length"].to_str().unwrap()
        ),
        (StatusCode::OK, "100000")
    );
    assert!(head.bytes().await.unwrap().is_empty());

    let not_modified = http
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);

    for (range, start, end) in [
        ("bytes=10-19", 10usize, 19usize),
        ("bytes=99990-", 99_990, 99_999),
        ("bytes=-5", 99_995, 99_999),
    ] {
        let r = http.get(&url).header("range", range).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            r.headers()["content-range"].to_str().unwrap(),
            format!("bytes {start}-{end}/100000"),
            "{range}"
        );
        assert_eq!(
            r.bytes().await.unwrap().as_ref(),
            &body[start..=end],
            "{range}"
        );
    }
    let r = http
        .get(&url)
        .header("range", "bytes=100000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.headers()["content-range"], "bytes */100000");
    // If-Range with another validator: the whole file, not the range.
    let r = http
        .get(&url)
        .header("range", "bytes=0-9")
        .header("if-range", "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = http
        .get(&url)
        .header("range", "bytes=0-9")
        .header("if-range", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);

    assert_eq!(
        http.get(api.url("/artifacts/sha256/xyz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::BAD_REQUEST
    );
    let missing = http
        .get(api.url(&format!("/artifacts/sha256/{}", "ab".repeat(32))))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        missing.json::<Value>().await.unwrap()["error"]["code"],
        "not_found"
    );
    assert_eq!(
        http.get(api.url("/artifacts/sha256/"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND,
        "no listing"
    );

    // A client that hangs up mid-body (UEFI HTTP boot may) is calm; the next one is served.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(server.bound.http)
            .await
            .unwrap();
        s.write_all(format!("GET /artifacts/sha256/{hex} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut few = [0u8; 64];
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut few)).await;
    }
    let again = http.get(&url).send().await.unwrap();
    assert_eq!(again.bytes().await.unwrap().len(), 100_000);
}

#[tokio::test]
async fn bios_ipxe_facts_as_real_firmware_sends_them() {
    let server = server().await;
    let api = Api::new(&server);
    let gen = api
        .import("worker", b"kernel", b"initrd", "console=ttyS0")
        .await;
    api.point("default", "worker", gen).await;
    // iPXE 2019's ${uuid:uristring} percent-encodes raw UUID bytes (not UTF-8),
    // and a BIOS iPXE build reports buildarch i386: still a bootable script.
    let (status, script) = api.text("/boot/52-54-00-00-00-07.ipxe?uuid=%18%5B%FF%C3%A1&serial=&buildarch=i386&platform=pcbios&chip=undionly").await;
    assert_eq!(status, StatusCode::OK);
    assert!(script.contains("-> worker gen 1"), "{script}");
}
