//! The dashboard in a real browser: Debian's Chromium, headless, driven by
//! Playwright for Python (`tests/dashboard/drive.py`) against a real server
//! on loopback with simulated machines. What the browser checks is listed in
//! that script; this side seeds the server and reads its verdict.
//!
//! Needs `chromium` and a Python with `playwright` (`IRONBOOT_PLAYWRIGHT_PYTHON`,
//! else `python3`); skipped with a reason when either is missing, except
//! under `IRONBOOT_BROWSER=require` (CI), where that is a failure.
//! `IRONBOOT_UI_SCREENSHOT=PATH` keeps the fleet view the browser saw (the
//! README's picture).

use std::process::Stdio;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::api::Api;
use crate::common::fleet;
use crate::common::TestServer;

const MACHINES: [&str; 3] = [
    "52:54:00:00:0d:01",
    "52:54:00:00:0d:02",
    "52:54:00:00:0d:03",
];

/// The Python that has Playwright, or why the test cannot run.
fn playwright_python() -> Result<String, String> {
    let python =
        std::env::var("IRONBOOT_PLAYWRIGHT_PYTHON").unwrap_or_else(|_| "python3".to_string());
    if !std::path::Path::new("/usr/bin/chromium").exists() {
        return Err("no /usr/bin/chromium (Debian package chromium)".into());
    }
    let has = std::process::Command::new(&python)
        .args(["-c", "import playwright.sync_api"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has {
        return Err(format!(
            "{python} has no playwright (pip install playwright)"
        ));
    }
    Ok(python)
}

/// One boot of a simulated machine, confirmed: its script, then phone home.
async fn boot_and_confirm(api: &Api, mac: &str) {
    let script = fleet::script(&api.http, &api.base, mac).await;
    let token = fleet::token_in(&script).unwrap_or_else(|| panic!("a token in\n{script}"));
    let status = fleet::phone_home(&api.http, &api.base, &token, "").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_real_browser_signs_in_filters_watches_a_boot_and_drives_a_rollout() {
    let python = match playwright_python() {
        Ok(p) => p,
        Err(why) if std::env::var("IRONBOOT_BROWSER").as_deref() == Ok("require") => {
            panic!("IRONBOOT_BROWSER=require but {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    let server = TestServer::full("").await;
    let api = Api::new(&server);
    let first = api
        .import("worker", &[1; 4096], &[101; 2048], "console=ttyS0")
        .await;
    let second = api
        .import("worker", &[2; 4096], &[102; 2048], "console=ttyS0")
        .await;
    api.point("default", "worker", first).await;
    for mac in MACHINES {
        boot_and_confirm(&api, mac).await;
    }
    let reader: Value = api
        .ok(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({ "name": "viewer", "role": "read" })),
        )
        .await;

    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/dashboard/drive.py"
    ))
    .env("IRONBOOT_URL", &api.base)
    .env("ADMIN_TOKEN", &api.token)
    .env("READ_TOKEN", reader["secret"].as_str().unwrap())
    .env("BOOT_MAC", MACHINES[0])
    .env("TO", second.to_string())
    .kill_on_drop(true)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    if let Ok(path) = std::env::var("IRONBOOT_UI_SCREENSHOT") {
        cmd.env("SCREENSHOT", path);
    }
    let child = cmd.spawn().expect("python starts");
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the browser run ends within 120 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser run failed:\n{stdout}\n{stderr}"
    );
    eprintln!("dashboard figures: {stdout}");

    // What the browser did went through the API: the rollout it started and
    // paused is the API's, by the admin token's name.
    let rollouts = api.ok(Method::GET, "/api/v1/rollouts", None).await;
    let r = &rollouts["rollouts"][0];
    assert_eq!(r["state"], "paused", "{r}");
    assert_eq!(r["to"]["generation"], second, "{r}");
    server.stop().await;
}
