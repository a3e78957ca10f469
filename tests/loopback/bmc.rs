//! Power control through BMCs over loopback: a Redfish BMC in the test
//! (`common::redfish`, faults on demand) behind the real server; BMCs set
//! through the API with write-only passwords; power operations, retries,
//! bounds and the concurrency cap; rollouts that reboot their machines
//! through the BMC, and a BMC failing a wave under `on_bmc_failure: fail`.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common;
use crate::common::api::Api;
use crate::common::fleet::Fleet;
use crate::common::TestServer;

const M1: &str = "52:54:00:00:0b:01";
const M2: &str = "52:54:00:00:0b:02";
const M3: &str = "52:54:00:00:0b:03";
const PASSWORD: &str = "s3cret-Pa55word";

const FAST_BMC: &str =
    "[bmc]\ntimeout = \"500ms\"\nretries = 4\nbackoff = \"20ms\"\nconcurrency = 2\n";

/// Events of one step family, oldest first.
async fn events(api: &Api, step: &str) -> Vec<Value> {
    let v = api
        .ok(
            Method::GET,
            &format!("/api/v1/events?step={step}&limit=500"),
            None,
        )
        .await;
    let mut list = v["events"].as_array().unwrap().clone();
    list.reverse();
    list
}

/// Three machines on generation A, the group's BMC pointing at `url`.
async fn fleet_with_bmc(api: &Api, url: &str, password: &str) -> (i64, i64) {
    let a = api.import_worker(1).await;
    let b = api.import_worker(2).await;
    api.point("default", "worker", a).await;
    for m in [M1, M2, M3] {
        assert_eq!(api.boot_ok(m).await, a);
    }
    api.ok(
        Method::PUT,
        "/api/v1/groups/default/bmc",
        Some(json!({ "protocol": "redfish", "address": url, "username": "admin", "password": password })),
    )
    .await;
    (a, b)
}

#[tokio::test]
async fn power_operations_go_through_the_bmc_retried_bounded_and_recorded() {
    let (bmc, url) = common::redfish::start(&[M1, M2, M3], PASSWORD).await;
    let server = TestServer::full(FAST_BMC).await;
    let api = Api::new(&server);
    fleet_with_bmc(&api, &url, PASSWORD).await;

    // The password is write-only: answers say it is set, nothing more.
    let shown = api
        .ok(Method::GET, &format!("/api/v1/machines/{M1}/bmc"), None)
        .await;
    assert_eq!(shown["effective"]["address"], json!(url));
    assert_eq!(shown["effective"]["password_set"], json!(true));
    assert_eq!(shown["problem"], Value::Null);
    assert!(!shown.to_string().contains(PASSWORD));

    // Off → status, on, cycle, the one-time network boot with a reset.
    let st = api
        .ok(Method::GET, &format!("/api/v1/machines/{M1}/power"), None)
        .await;
    assert_eq!(st["power"], "off", "{st}");
    let on = api
        .ok(
            Method::POST,
            &format!("/api/v1/machines/{M1}/power"),
            Some(json!({"action": "on"})),
        )
        .await;
    assert_eq!(
        (on["ok"].clone(), on["detail"]["reset_type"].clone()),
        (json!(true), json!("On")),
        "{on}"
    );
    let cycle = api
        .ok(
            Method::POST,
            &format!("/api/v1/machines/{M1}/power"),
            Some(json!({"action": "cycle"})),
        )
        .await;
    assert_eq!(cycle["detail"]["reset_type"], "PowerCycle");
    let nb = api
        .ok(
            Method::POST,
            &format!("/api/v1/machines/{M1}/netboot"),
            Some(json!({"reboot": true})),
        )
        .await;
    assert_eq!(nb["detail"]["boot_override"], "Pxe");
    assert_eq!(nb["detail"]["reset_type"], "ForceRestart");
    let s1 = bmc.system_of(M1);
    assert_eq!(s1.boot, ("Pxe".to_string(), "Once".to_string()));
    assert_eq!(s1.resets, ["On", "PowerCycle", "ForceRestart"]);
    // The system was found by the machine's MAC among three.
    assert!(bmc.resets_of(M2).is_empty());

    // A BMC that allows no PowerCycle: a cycle is a forced restart there.
    bmc.faults.lock().unwrap().allowed =
        Some(vec!["On".into(), "ForceOff".into(), "ForceRestart".into()]);
    let cycle = api
        .ok(
            Method::POST,
            &format!("/api/v1/machines/{M2}/power"),
            Some(json!({"action": "cycle"})),
        )
        .await;
    assert_eq!(cycle["detail"]["reset_type"], "On", "M2 was off: started");
    let cycle = api
        .ok(
            Method::POST,
            &format!("/api/v1/machines/{M2}/power"),
            Some(json!({"action": "cycle"})),
        )
        .await;
    assert_eq!(cycle["detail"]["reset_type"], "ForceRestart");
    let (status, err) = api
        .call(
            Method::POST,
            &format!("/api/v1/machines/{M2}/power"),
            Some(json!({"action": "graceful-off"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("after 1 attempt"),
        "not retried: {err}"
    );
    bmc.faults.lock().unwrap().allowed = None;

    // One call in five fails (503), then one in five stalls past the
    // timeout: every operation still succeeds, each retry is an event, and
    // no attempt outlives twice the timeout.
    bmc.faults.lock().unwrap().every = 5;
    for _ in 0..4 {
        for m in [M1, M2, M3] {
            api.ok(
                Method::POST,
                &format!("/api/v1/machines/{m}/power"),
                Some(json!({"action": "reset"})),
            )
            .await;
        }
    }
    bmc.faults.lock().unwrap().stall = Duration::from_secs(3);
    let started = std::time::Instant::now();
    let ops = [M1, M2, M3, M1, M2, M3].map(|m| {
        let api = &api;
        async move {
            api.call(
                Method::POST,
                &format!("/api/v1/machines/{m}/power"),
                Some(json!({"action": "reset"})),
            )
            .await
        }
    });
    for (status, body) in futures_util::future::join_all(ops).await {
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body["ms"].as_u64().unwrap() < 15_000, "{body}");
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    bmc.faults.lock().unwrap().every = 0;
    let retries = events(&api, "bmc.retry").await;
    assert!(retries.len() >= 4, "retries recorded: {}", retries.len());
    let stalled: Vec<&Value> = retries
        .iter()
        .filter(|e| e["detail"]["error"].as_str().unwrap().contains("no answer"))
        .collect();
    assert!(
        !stalled.is_empty(),
        "a stalled call timed out and was retried"
    );
    for e in &retries {
        assert!(
            e["detail"]["ms"].as_u64().unwrap() <= 1_000,
            "an attempt outlived twice its timeout: {e}"
        );
    }
    assert!(retries.iter().any(|e| e["detail"]["error"]
        .as_str()
        .unwrap()
        .contains("The BMC is busy.")));
    // The cap: never more than two operations at the BMC at once.
    let most = bmc.most_at_once.load(std::sync::atomic::Ordering::SeqCst);
    assert!(most <= 2, "{most} requests at once");
    // No event holds the password.
    let all = events(&api, "bmc").await;
    assert!(!all.is_empty());
    assert!(!serde_json::to_string(&all).unwrap().contains(PASSWORD));
    // The last power state is listed.
    let power = api.ok(Method::GET, "/api/v1/power", None).await;
    assert_eq!(power["machines"].as_array().unwrap().len(), 3, "{power}");

    // The database alone does not reveal the password.
    let db = TestServer::db(server.dir.path()).await;
    let sealed: Vec<(String,)> = sqlx::query_as("SELECT sealed FROM bmcs WHERE sealed IS NOT NULL")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(sealed.len(), 1);
    assert!(sealed[0].0.starts_with("v1:") && !sealed[0].0.contains(PASSWORD));
    server.stop().await;
}

#[tokio::test]
async fn bad_bmc_requests_get_clear_errors_and_change_nothing() {
    let server = TestServer::full("").await;
    let api = Api::new(&server);
    api.import_worker(1).await;
    let a = api.import_worker(1).await;
    api.point("default", "worker", a).await;
    api.boot_ok(M1).await;
    // No BMC: a 409 that says so.
    let (status, body) = api
        .call(
            Method::POST,
            &format!("/api/v1/machines/{M1}/power"),
            Some(json!({"action": "on"})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::CONFLICT, json!("no_bmc")),
        "{body}"
    );
    let cases = [
        (
            json!({ "protocol": "ipmi", "address": "-H evil" }),
            "address",
        ),
        (
            json!({ "protocol": "redfish", "address": "ftp://x" }),
            "address",
        ),
        (
            json!({ "protocol": "ipmi", "address": "10.0.0.5", "boot_target": "http" }),
            "boot_target",
        ),
        (json!({ "username": "a\u{0}b" }), "username"),
        (json!({ "password": "x".repeat(500) }), "password"),
        (
            json!({ "protocol": "ipmi", "address": "10.0.0.5", "password": "x".repeat(21) }),
            "password",
        ),
    ];
    for (body, field) in cases {
        let (status, err) = api
            .call(
                Method::PUT,
                &format!("/api/v1/machines/{M1}/bmc"),
                Some(body.clone()),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {err}");
        assert_eq!(err["error"]["field"], json!(field), "{err}");
    }
    let (status, _) = api
        .call(
            Method::PUT,
            &format!("/api/v1/machines/{M1}/bmc"),
            Some(json!({ "bogus": 1 })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = api
        .call(
            Method::PUT,
            "/api/v1/machines/52:54:00:99:99:99/bmc",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api
        .call(Method::PUT, "/api/v1/groups/nosuch/bmc", Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Incomplete: a problem shown, and operations refused with it.
    api.ok(
        Method::PUT,
        &format!("/api/v1/machines/{M1}/bmc"),
        Some(json!({ "protocol": "ipmi", "address": "127.0.0.1:9" })),
    )
    .await;
    let shown = api
        .ok(Method::GET, &format!("/api/v1/machines/{M1}/bmc"), None)
        .await;
    assert!(
        shown["problem"].as_str().unwrap().contains("no username"),
        "{shown}"
    );
    let (status, body) = api
        .call(
            Method::POST,
            &format!("/api/v1/machines/{M1}/power"),
            Some(json!({"action": "on"})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::CONFLICT, json!("bmc_unusable"))
    );
    // A password kept across a PUT that leaves it out.
    api.ok(Method::PUT, &format!("/api/v1/machines/{M1}/bmc"), Some(json!({ "protocol": "ipmi", "address": "127.0.0.1:9", "username": "u", "password": "p" }))).await;
    let shown = api
        .ok(
            Method::PUT,
            &format!("/api/v1/machines/{M1}/bmc"),
            Some(json!({ "protocol": "ipmi", "address": "127.0.0.2:9", "username": "u" })),
        )
        .await;
    assert_eq!(shown["own"]["password_set"], json!(true), "{shown}");
    // A read token sees, and changes nothing.
    let read = api
        .ok(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({ "name": "viewer", "role": "read" })),
        )
        .await;
    let reader = reqwest::Client::new();
    let secret = read["secret"].as_str().unwrap();
    let put = reader
        .put(api.url(&format!("/api/v1/machines/{M1}/bmc")))
        .bearer_auth(secret)
        .json(&json!({ "password": "x" }))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::FORBIDDEN);
    let power = reader
        .post(api.url(&format!("/api/v1/machines/{M1}/power")))
        .bearer_auth(secret)
        .json(&json!({"action": "off"}))
        .send()
        .await
        .unwrap();
    assert_eq!(power.status(), StatusCode::FORBIDDEN);
    let get = reader
        .get(api.url(&format!("/api/v1/machines/{M1}/bmc")))
        .bearer_auth(secret)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn a_rollout_reboots_its_machines_through_the_bmc_and_rolls_back_through_it() {
    let (bmc, url) = common::redfish::start(&[M1, M2, M3], PASSWORD).await;
    let server = TestServer::full(FAST_BMC).await;
    let api = Api::new(&server);
    let (a, b) = fleet_with_bmc(&api, &url, PASSWORD).await;
    let r = start_rollout(
        &api,
        b,
        json!({ "canary": 1, "steps": ["100%"], "timeout": "1m" }),
    )
    .await;
    let id = r["id"].as_i64().unwrap();
    let canary = canary_of(&r);
    // The canary is set to boot from the network once and started (it was off).
    wait(|| bmc.resets_of(&canary).len() == 1, "the canary's reset").await;
    assert_eq!(
        bmc.system_of(&canary).boot,
        ("Pxe".to_string(), "Once".to_string())
    );
    assert_eq!(bmc.resets_of(&canary), ["On"]);
    assert_eq!(api.boot_ok(&canary).await, b);
    api.wait_for(id, "wave 1", |r| r["wave"] == 1).await;
    let rest: Vec<&str> = [M1, M2, M3].into_iter().filter(|m| *m != canary).collect();
    wait(
        || rest.iter().all(|m| bmc.resets_of(m).len() == 1),
        "the second wave's resets",
    )
    .await;
    for m in &rest {
        assert_eq!(api.boot_ok(m).await, b);
    }
    api.wait_for(id, "succeeded", |r| r["state"] == "succeeded")
        .await;
    let reboots = events(&api, "rollout.reboot").await;
    assert_eq!(reboots.len(), 3);
    assert!(
        reboots
            .iter()
            .all(|e| e["detail"]["via"] == "bmc" && e["detail"]["bmc"]["ok"] == json!(true)),
        "{reboots:?}"
    );

    // A forced rollback: the canary of the next rollout boots C and never
    // confirms; the wave's gate times out, and the BMC reboots the canary
    // back to what it ran.
    let c = api.import_worker(3).await;
    let r = start_rollout(
        &api,
        c,
        json!({ "canary": 1, "steps": ["100%"], "timeout": "2s" }),
    )
    .await;
    let id = r["id"].as_i64().unwrap();
    let canary = canary_of(&r);
    wait(
        || bmc.resets_of(&canary).len() == 2,
        "the canary's second reset",
    )
    .await;
    assert_eq!(api.boot(&canary).await.generation, c);
    api.wait_for(id, "rolled back", |r| r["state"] == "rolled_back")
        .await;
    wait(|| bmc.resets_of(&canary).len() == 3, "the rollback's reset").await;
    assert_eq!(bmc.resets_of(&canary)[2], "ForceRestart");
    assert_eq!(
        bmc.system_of(&canary).boot,
        ("Pxe".to_string(), "Once".to_string())
    );
    assert_eq!(api.boot_ok(&canary).await, b, "rolled back to B");
    let _ = a;
    server.stop().await;
}

#[tokio::test]
async fn a_bmc_that_cannot_reboot_fails_the_wave_when_the_rollout_says_so() {
    let (bmc, url) = common::redfish::start(&[M1, M2, M3], PASSWORD).await;
    let server = TestServer::full(FAST_BMC).await;
    let api = Api::new(&server);
    // The wrong password: refused at once (never retried: lockouts).
    let (_, b) = fleet_with_bmc(&api, &url, "wrong").await;
    let r = start_rollout(
        &api,
        b,
        json!({ "canary": 1, "timeout": "10m", "on_bmc_failure": "fail" }),
    )
    .await;
    assert_eq!(r["on_bmc_failure"], "fail");
    let id = r["id"].as_i64().unwrap();
    let done = api
        .wait_for(id, "rolled back", |r| r["state"] == "rolled_back")
        .await;
    assert!(
        done["reason"]
            .as_str()
            .unwrap()
            .contains("BMC could not reboot it"),
        "{done}"
    );
    let failed = events(&api, "rollout.reboot_failed").await;
    assert!(!failed.is_empty());
    let ops = events(&api, "bmc.op").await;
    assert!(
        ops.iter().all(|e| e["detail"]["attempts"] == json!(1)),
        "{ops:?}"
    );
    assert!(
        bmc.log.lock().unwrap().iter().all(|(m, _, _)| m == "GET"),
        "nothing was changed"
    );

    // Under the default (`wait`) the wave waits: still running.
    let r = start_rollout(&api, b, json!({ "canary": 1, "timeout": "10m" })).await;
    let id = r["id"].as_i64().unwrap();
    wait_events(&api, "rollout.reboot_failed", 2).await;
    assert_eq!(api.rollout(id).await["state"], "running");
    server.stop().await;
}

/// Starts a rollout of group default to `to` of `worker`, with `more`
/// (canary, steps, timeout, policy).
async fn start_rollout(api: &Api, to: i64, more: Value) -> Value {
    let mut body = json!({ "group": "default", "stream": "worker", "to": to });
    body.as_object_mut()
        .unwrap()
        .extend(more.as_object().unwrap().clone());
    api.ok(Method::POST, "/api/v1/rollouts", Some(body)).await
}

/// The first machine of a rollout's first wave.
fn canary_of(r: &Value) -> String {
    r["waves"][0]["machines"][0]["mac"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn wait(pred: impl Fn() -> bool, what: &str) {
    for _ in 0..100 {
        if pred() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never saw {what}");
}

async fn wait_events(api: &Api, step: &str, n: usize) {
    for _ in 0..100 {
        if events(api, step).await.len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("fewer than {n} {step} events");
}

/// OpenStack's Redfish emulator (`sushy-emulator` from PyPI, its fake
/// driver: two systems told apart by MAC, power changes that take effect
/// 1–11 s later as on real hardware) behind basic authentication. CI
/// installs it (`.ci/run`); elsewhere the test skips unless
/// `IRONBOOT_E2E=require`.
#[tokio::test]
async fn sushy_tools_redfish_emulator_is_driven_through_the_api() {
    if !common::require_or_skip(&["sushy-emulator"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Its own Python (the venv it was installed in) makes the bcrypt hash.
    let sushy = std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|d| d.join("sushy-emulator"))
        .find(|p| p.is_file())
        .unwrap();
    let python = std::fs::canonicalize(&sushy)
        .unwrap()
        .with_file_name("python");
    let hash = std::process::Command::new(&python)
        .args([
            "-c",
            &format!(
                "import bcrypt; print(bcrypt.hashpw(b'{PASSWORD}', bcrypt.gensalt()).decode())"
            ),
        ])
        .output()
        .unwrap();
    assert!(
        hash.status.success(),
        "{}",
        String::from_utf8_lossy(&hash.stderr)
    );
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!("admin:{}", String::from_utf8(hash.stdout).unwrap()),
    )
    .unwrap();
    let conf = dir.path().join("sushy.conf");
    std::fs::write(
        &conf,
        format!(
            "SUSHY_EMULATOR_STATE_DIR = '{}'\nSUSHY_EMULATOR_AUTH_FILE = '{}'\nSUSHY_EMULATOR_FAKE_DRIVER = True\nSUSHY_EMULATOR_FAKE_SYSTEMS = [\n\
             {{'uuid': '11111111-0000-0000-0000-000000000001', 'name': 'n1', 'power_state': 'Off', 'nics': [{{'mac': '{M1}', 'ip': '10.0.0.1'}}]}},\n\
             {{'uuid': '11111111-0000-0000-0000-000000000002', 'name': 'n2', 'power_state': 'Off', 'nics': [{{'mac': '{M2}', 'ip': '10.0.0.2'}}]}}]\n",
            dir.path().display(),
            htpasswd.display()
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut emulator = tokio::process::Command::new(&sushy)
        .args([
            "--config",
            conf.to_str().unwrap(),
            "--interface",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_async(
        || async { http.get(format!("{url}/redfish/v1/")).send().await.is_ok() },
        "the emulator",
    )
    .await;

    let server =
        TestServer::full("[bmc]\ntimeout = \"5s\"\nretries = 2\nbackoff = \"100ms\"\n").await;
    let api = Api::new(&server);
    let a = api.import_worker(1).await;
    api.point("default", "worker", a).await;
    api.boot_ok(M2).await;
    api.ok(
        Method::PUT,
        &format!("/api/v1/machines/{M2}/bmc"),
        Some(json!({ "protocol": "redfish", "address": url, "username": "admin", "password": PASSWORD })),
    )
    .await;
    let st = api
        .ok(Method::GET, &format!("/api/v1/machines/{M2}/power"), None)
        .await;
    assert_eq!(st["power"], "off", "{st}");
    assert!(
        st["detail"]["system"]
            .as_str()
            .unwrap()
            .ends_with("-000000000002"),
        "found by MAC: {st}"
    );
    let nb = api
        .ok(
            Method::POST,
            &format!("/api/v1/machines/{M2}/netboot"),
            Some(json!({ "reboot": true })),
        )
        .await;
    assert_eq!(
        (
            nb["detail"]["boot_override"].clone(),
            nb["detail"]["reset_type"].clone()
        ),
        (json!("Pxe"), json!("On")),
        "{nb}"
    );
    let system: Value = http
        .get(format!("{url}{}", st["detail"]["system"].as_str().unwrap()))
        .basic_auth("admin", Some(PASSWORD))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // (The emulator keeps the target but reports every override as
    // `Continuous`; that ironboot sends `Once` is checked against the BMC
    // of `common::redfish` above.)
    assert_eq!(
        system["Boot"]["BootSourceOverrideTarget"], "Pxe",
        "{system}"
    );
    // The emulator applies power changes within 11 s, as hardware does.
    for _ in 0..30 {
        let st = api
            .ok(Method::GET, &format!("/api/v1/machines/{M2}/power"), None)
            .await;
        if st["power"] == "on" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // No PowerCycle among its reset types: a cycle is a forced restart.
    let cycle = api
        .ok(
            Method::POST,
            &format!("/api/v1/machines/{M2}/power"),
            Some(json!({ "action": "cycle" })),
        )
        .await;
    assert_eq!(cycle["detail"]["reset_type"], "ForceRestart", "{cycle}");
    // A wrong password: refused once, not retried.
    api.ok(Method::PUT, &format!("/api/v1/machines/{M2}/bmc"), Some(json!({ "protocol": "redfish", "address": url, "username": "admin", "password": "wrong" }))).await;
    let (status, err) = api
        .call(Method::GET, &format!("/api/v1/machines/{M2}/power"), None)
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("after 1 attempt(s): the BMC refused the credentials"),
        "{err}"
    );
    server.stop().await;
    emulator.kill().await.unwrap();
}

async fn wait_async<F: std::future::Future<Output = bool>>(pred: impl Fn() -> F, what: &str) {
    for _ in 0..100 {
        if pred().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never saw {what}");
}

/// `ironboot apply` with BMCs in the fleet file: the password read from
/// the file the fleet file names, never shown; the same file again plans
/// nothing; a new password is one change; `null` removes. The BMC then
/// works for the machine (found by MAC behind the group's address).
#[tokio::test(flavor = "multi_thread")]
async fn apply_sets_bmcs_from_a_fleet_file_and_plans_nothing_the_second_time() {
    let (bmc, url) = common::redfish::start(&[M1, M2], PASSWORD).await;
    let server = TestServer::full(FAST_BMC).await;
    let api = Api::new(&server);
    let a = api.import_worker(1).await;
    api.point("default", "worker", a).await;
    api.boot_ok(M1).await;
    let dir = server.dir.path().to_path_buf();
    std::fs::write(dir.join("bmc.pw"), format!("{PASSWORD}\n")).unwrap();
    let fleet = dir.join("fleet.yaml");
    let write_fleet = |machine_bmc: &str| {
        std::fs::write(
            &fleet,
            format!(
                "groups:\n  default:\n    bmc: {{protocol: redfish, address: '{url}', username: admin, password_file: bmc.pw}}\nmachines:\n  {M1}:\n    bmc: {machine_bmc}\n"
            ),
        )
        .unwrap();
    };
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ironboot"))
            .args(args)
            .args(["--server", &api.base, "--data-dir"])
            .arg(dir.join("data"))
            .env_remove("IRONBOOT_TOKEN")
            .env_remove("IRONBOOT_SERVER")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{args:?}: {text}");
        assert!(!text.contains(PASSWORD), "the password shown: {text}");
        text
    };
    let apply = |cli: &dyn Fn(&[&str]) -> String| {
        tokio::task::block_in_place(|| cli(&["apply", "-f", fleet.to_str().unwrap()]))
    };

    write_fleet("{boot_target: http}");
    let out = apply(&cli);
    assert!(
        out.contains("+ group default: bmc.protocol - -> \"redfish\""),
        "{out}"
    );
    assert!(out.contains("bmc.password - -> \"new\""), "{out}");
    assert!(
        out.contains(&format!("+ machine {M1}: bmc.boot_target - -> \"http\"")),
        "{out}"
    );
    let shown = api
        .ok(Method::GET, &format!("/api/v1/machines/{M1}/bmc"), None)
        .await;
    assert_eq!(shown["effective"]["boot_target"], "http", "{shown}");
    assert_eq!(shown["effective"]["address"], json!(url));
    let nb = api
        .ok(
            Method::POST,
            &format!("/api/v1/machines/{M1}/netboot"),
            Some(json!({})),
        )
        .await;
    assert_eq!(nb["detail"]["boot_override"], "UefiHttp");
    assert_eq!(
        bmc.system_of(M1).boot,
        ("UefiHttp".to_string(), "Once".to_string())
    );

    // Again: nothing to do (the password compared, not shown).
    let out = apply(&cli);
    assert!(!out.contains("bmc."), "planned again: {out}");
    // A new password: one change; null: the machine's own fields go.
    std::fs::write(dir.join("bmc.pw"), "another").unwrap();
    write_fleet("null");
    let out = apply(&cli);
    assert!(
        out.contains("~ group default: bmc.password \"set\" -> \"new\""),
        "{out}"
    );
    assert!(
        out.contains(&format!("~ machine {M1}: bmc removed")),
        "{out}"
    );
    let shown = api
        .ok(Method::GET, &format!("/api/v1/machines/{M1}/bmc"), None)
        .await;
    assert_eq!(shown["own"], Value::Null, "{shown}");
    // The new password is the one used: the test BMC refuses it.
    let (status, _) = api
        .call(Method::GET, &format!("/api/v1/machines/{M1}/power"), None)
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    server.stop().await;
}

/// The watchdog uses the BMC too: a machine whose boot goes silent past
/// `confirm_timeout` (it hangs; nothing else would ever reboot it) is set
/// to boot from the network and reset, once.
#[tokio::test]
async fn a_boot_that_goes_silent_is_reset_through_the_bmc_by_the_watchdog() {
    let (bmc, url) = common::redfish::start(&[M1, M2, M3], PASSWORD).await;
    let server =
        TestServer::full(&format!("{FAST_BMC}[rollout]\nconfirm_timeout = \"1s\"\n")).await;
    let api = Api::new(&server);
    fleet_with_bmc(&api, &url, PASSWORD).await;
    // M2 boots and never phones home.
    api.boot(M2).await;
    wait(|| bmc.resets_of(M2).len() == 1, "the watchdog's reset").await;
    assert_eq!(
        bmc.system_of(M2).boot,
        ("Pxe".to_string(), "Once".to_string())
    );
    assert!(bmc.resets_of(M1).is_empty() && bmc.resets_of(M3).is_empty());
    let reboots = events(&api, "rollout.reboot").await;
    assert_eq!(reboots.len(), 1, "{reboots:?}");
    assert_eq!(reboots[0]["detail"]["rollout"], Value::Null);
    assert!(
        reboots[0]["detail"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("watchdog:"),
        "{reboots:?}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(bmc.resets_of(M2).len(), 1, "once per silent boot");
    server.stop().await;
}

/// A rollout through a BMC that fails one call in five (503) and then
/// stalls one in five past the timeout: every wave's reboots still happen,
/// the rollout completes, each retry is an event, and no attempt outlives
/// twice the timeout.
#[tokio::test]
async fn a_rollout_completes_through_a_bmc_that_fails_or_stalls_one_call_in_five() {
    let (bmc, url) = common::redfish::start(&[M1, M2, M3], PASSWORD).await;
    let server = TestServer::full(FAST_BMC).await;
    let api = Api::new(&server);
    let (_, b) = fleet_with_bmc(&api, &url, PASSWORD).await;
    let c = api.import_worker(3).await;
    for (to, stall) in [(b, Duration::ZERO), (c, Duration::from_secs(3))] {
        {
            let mut f = bmc.faults.lock().unwrap();
            f.every = 5;
            f.stall = stall;
        }
        let before: Vec<usize> = [M1, M2, M3]
            .iter()
            .map(|m| bmc.resets_of(m).len())
            .collect();
        let r = start_rollout(
            &api,
            to,
            json!({ "canary": 1, "steps": ["100%"], "timeout": "1m", "on_bmc_failure": "fail" }),
        )
        .await;
        let id = r["id"].as_i64().unwrap();
        let canary = canary_of(&r);
        let i = [M1, M2, M3].iter().position(|m| *m == canary).unwrap();
        wait(
            || bmc.resets_of(&canary).len() > before[i],
            "the canary's reset",
        )
        .await;
        assert_eq!(api.boot_ok(&canary).await, to);
        api.wait_for(id, "wave 1", |r| r["wave"] == 1).await;
        for (k, m) in [M1, M2, M3]
            .iter()
            .enumerate()
            .filter(|(_, m)| **m != canary)
        {
            wait(
                || bmc.resets_of(m).len() > before[k],
                "the second wave's resets",
            )
            .await;
            assert_eq!(api.boot_ok(m).await, to);
        }
        api.wait_for(id, "succeeded", |r| r["state"] == "succeeded")
            .await;
    }
    bmc.faults.lock().unwrap().every = 0;
    let retries = events(&api, "bmc.retry").await;
    assert!(
        retries
            .iter()
            .any(|e| e["detail"]["error"].as_str().unwrap().contains("busy")),
        "503s retried"
    );
    assert!(
        retries
            .iter()
            .any(|e| e["detail"]["error"].as_str().unwrap().contains("no answer")),
        "stalls retried"
    );
    for e in &retries {
        assert!(
            e["detail"]["ms"].as_u64().unwrap() <= 1_000,
            "an attempt outlived twice its timeout: {e}"
        );
    }
    let ops = events(&api, "bmc.op").await;
    assert_eq!(ops.len(), 6, "six reboots");
    assert!(
        ops.iter().all(|e| e["detail"]["ok"] == json!(true)),
        "{ops:?}"
    );
    server.stop().await;
}
