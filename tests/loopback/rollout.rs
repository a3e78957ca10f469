//! Rollouts and the watchdog over loopback HTTP, with simulated machines:
//! each "boot" fetches the machine's iPXE script, reads which kernel it was
//! served and its per-boot token, and then confirms (phone home) or stays
//! silent, as a healthy or a broken image would.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common;
use crate::common::api::Api;
use crate::common::fleet::Fleet;
use crate::common::TestServer;

const M1: &str = "52:54:00:00:07:01";
const M2: &str = "52:54:00:00:07:02";
const M3: &str = "52:54:00:00:07:03";

fn statuses(r: &Value, wave: usize) -> Vec<(String, String)> {
    r["waves"][wave]["machines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["mac"].as_str().unwrap().to_string(),
                m["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Starts a blue/green rollout of the default group to generation `to`.
async fn blue_green(api: &Api, to: i64) -> Value {
    api.ok(
        Method::POST,
        "/api/v1/rollouts",
        Some(json!({ "group": "default", "stream": "worker", "to": to, "strategy": "blue_green", "timeout": "5m" })),
    )
    .await
}

/// Three machines on generation 1 (A), confirmed.
async fn fleet_on_a(api: &Api) -> (i64, i64) {
    let a = api.import_worker(1).await;
    let b = api.import_worker(2).await;
    api.point("default", "worker", a).await;
    for m in [M1, M2, M3] {
        assert_eq!(api.boot_ok(m).await, a);
    }
    (a, b)
}

#[tokio::test]
async fn a_canary_rollout_moves_the_group_wave_by_wave_gated_on_confirmations() {
    let server = TestServer::full("").await;
    let api = Api::new(&server);
    let (a, b) = fleet_on_a(&api).await;

    let (status, r) = api
        .call(
            Method::POST,
            "/api/v1/rollouts",
            Some(
                json!({ "group": "default", "stream": "worker", "to": b, "canary": 1,
                         "steps": ["100%"], "timeout": "1m", "require": "checks=passed" }),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{r}");
    let id = r["id"].as_i64().unwrap();
    assert_eq!(r["state"], "running");
    assert_eq!(statuses(&r, 0), vec![(M1.into(), "waiting".into())]);
    assert_eq!(
        statuses(&r, 1),
        vec![(M2.into(), "pending".into()), (M3.into(), "pending".into())]
    );

    // A second rollout on the same group is refused, clearly.
    let (status, refused) = api
        .call(
            Method::POST,
            "/api/v1/rollouts",
            Some(json!({ "group": "default", "stream": "worker", "to": b })),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert_eq!(refused["error"]["code"], "conflict");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("already has rollout {id} (running)")),
        "{refused}"
    );

    // Machines not moved yet still boot A; the canary boots B.
    assert_eq!(api.boot_ok(M2).await, a);
    let canary = api.boot(M1).await;
    assert_eq!(canary.generation, b);
    // A confirmation without the required check does not pass the gate.
    assert_eq!(api.confirm(&canary, "checks=failed").await, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = api.rollout(id).await;
    assert_eq!(r["wave"], 0, "{r}");
    let canary = api.boot(M1).await;
    assert_eq!(canary.generation, b);
    assert_eq!(
        api.confirm(&canary, "instance_id=x&checks=passed").await,
        StatusCode::OK
    );

    // The gate passes and the rest moves.
    let r = api.wait_for(id, "wave 1", |r| r["wave"] == 1).await;
    assert_eq!(r["waves"][0]["gate"], "passed");
    assert_eq!(statuses(&r, 0), vec![(M1.into(), "confirmed".into())]);
    assert_eq!(
        statuses(&r, 1),
        vec![(M2.into(), "waiting".into()), (M3.into(), "waiting".into())]
    );
    for m in [M2, M3] {
        let booted = api.boot(m).await;
        assert_eq!(booted.generation, b);
        assert_eq!(api.confirm(&booted, "checks=passed").await, StatusCode::OK);
    }
    let r = api
        .wait_for(id, "success", |r| r["state"] == "succeeded")
        .await;
    assert_eq!(r["counts"]["confirmed"], 3, "{r}");

    // The group now points at B: every machine boots it without the rollout.
    let groups = api.ok(Method::GET, "/api/v1/groups", None).await;
    let default = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "default")
        .unwrap();
    assert_eq!(default["pointer"]["generation"], b, "{default}");
    assert_eq!(api.boot(M3).await.generation, b);

    // A finished rollout cannot be resumed, paused or aborted.
    for verb in ["resume", "pause", "abort"] {
        let (status, v) = api
            .call(Method::POST, &format!("/api/v1/rollouts/{id}/{verb}"), None)
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{verb}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("succeeded"),
            "{v}"
        );
    }
    let list = api.ok(Method::GET, "/api/v1/rollouts", None).await;
    assert_eq!(list["rollouts"][0]["id"], id);
    server.stop().await;
}

#[tokio::test]
async fn a_canary_that_netboots_again_without_confirming_rolls_the_rollout_back_at_once() {
    let server = TestServer::full("").await;
    let api = Api::new(&server);
    let (a, b) = fleet_on_a(&api).await;
    let r = api
        .ok(
            Method::POST,
            "/api/v1/rollouts",
            Some(json!({ "group": "default", "stream": "worker", "to": b, "canary": 1, "timeout": "5m" })),
        )
        .await;
    let id = r["id"].as_i64().unwrap();
    let broken = api.boot(M1).await;
    assert_eq!(broken.generation, b);
    // The broken image never phones home; the machine netboots again and
    // that very boot brings A back.
    assert_eq!(api.boot_ok(M1).await, a);
    let r = api.rollout(id).await;
    assert_eq!(r["state"], "rolled_back", "{r}");
    let reason = r["reason"].as_str().unwrap();
    assert!(
        reason.contains(M1) && reason.contains("netbooted again without confirming worker gen 2"),
        "{reason}"
    );
    assert_eq!(r["waves"][0]["gate"], "failed");
    assert_eq!(r["waves"][0]["machines"][0]["status"], "failed");
    assert_eq!(r["waves"][0]["machines"][0]["rolled_back"], true);
    assert_eq!(r["waves"][1]["gate"], "pending");
    // The others never left A, and the failed boot says why.
    assert_eq!(api.boot_ok(M2).await, a);
    let boots = api
        .ok(Method::GET, &format!("/api/v1/machines/{M1}/boots"), None)
        .await;
    let failed = boots["boots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["state"] == "failed")
        .unwrap_or_else(|| panic!("a failed boot in {boots}"));
    assert_eq!(failed["generation"], b);
    // A new rollout may start once this one is finished.
    let (status, v) = api
        .call(
            Method::POST,
            "/api/v1/rollouts",
            Some(json!({ "group": "default", "stream": "worker", "to": b, "canary": "34%" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    server.stop().await;
}

#[tokio::test]
async fn the_watchdog_serves_the_last_good_generation_after_repeated_failures_until_cleared() {
    let server = TestServer::full("[rollout]\nwatchdog_failures = 2\n").await;
    let api = Api::new(&server);
    let a = api.import_worker(1).await;
    let broken = api.import_worker(2).await;
    api.point("default", "worker", a).await;
    assert_eq!(api.boot_ok(M1).await, a);
    api.point("default", "worker", broken).await;
    assert_eq!(api.boot(M1).await.generation, broken);
    assert_eq!(
        api.boot(M1).await.generation,
        broken,
        "one failure is not enough"
    );
    // The second failure marks it degraded; this boot already gets A.
    assert_eq!(api.boot_ok(M1).await, a);
    let h = api
        .ok(Method::GET, &format!("/api/v1/machines/{M1}/health"), None)
        .await;
    let reason = h["degraded"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("2 failed boots of worker gen 2") && reason.contains("netbooted again"),
        "{h}"
    );
    let w = api.ok(Method::GET, "/api/v1/watchdog", None).await;
    assert_eq!(w["policy"]["max_failures"], 2);
    assert_eq!(w["degraded"][0]["mac"], M1, "{w}");
    // It stays on A (confirming A does not clear B's mark) …
    assert_eq!(api.boot_ok(M1).await, a);
    // … until an operator clears the mark: the next boot tries B again.
    let cleared = api
        .ok(
            Method::DELETE,
            &format!("/api/v1/machines/{M1}/degraded"),
            None,
        )
        .await;
    assert_eq!(cleared["degraded"], Value::Null);
    let (status, v) = api
        .call(
            Method::DELETE,
            &format!("/api/v1/machines/{M1}/degraded"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert_eq!(api.boot(M1).await.generation, broken);

    // The ledger explains it.
    let dir = server.stop().await;
    let db = TestServer::db(dir.path()).await;
    let steps: Vec<(String,)> = sqlx::query_as(
        "SELECT step FROM events WHERE mac = $1 AND step LIKE 'watchdog.%' ORDER BY id",
    )
    .bind(M1)
    .fetch_all(&db)
    .await
    .unwrap();
    let steps: Vec<&str> = steps.iter().map(|(s,)| s.as_str()).collect();
    for step in [
        "watchdog.failed_boot",
        "watchdog.degraded",
        "watchdog.last_good",
        "watchdog.cleared",
    ] {
        assert!(steps.contains(&step), "{step} in {steps:?}");
    }
}

#[tokio::test]
async fn a_rollout_resumes_where_it_was_after_a_restart() {
    let server = TestServer::full("").await;
    let api = Api::new(&server);
    let (_a, b) = fleet_on_a(&api).await;
    let r = api
        .ok(
            Method::POST,
            "/api/v1/rollouts",
            Some(json!({ "group": "default", "stream": "worker", "to": b, "canary": [M2], "timeout": "5m" })),
        )
        .await;
    let id = r["id"].as_i64().unwrap();
    assert_eq!(api.boot_ok(M2).await, b);
    let before = api.wait_for(id, "wave 1", |r| r["wave"] == 1).await;
    assert_eq!(
        statuses(&before, 1),
        vec![(M1.into(), "waiting".into()), (M3.into(), "waiting".into())]
    );
    let dir = server.stop().await;

    let text = common::full_config(dir.path(), "");
    let server = TestServer::start(&text, dir).await;
    let api = Api::new(&server);
    let after = api.rollout(id).await;
    assert_eq!(
        after["waves"], before["waves"],
        "the same waves and progress"
    );
    assert_eq!(after["state"], "running");
    for m in [M1, M3] {
        assert_eq!(api.boot_ok(m).await, b);
    }
    api.wait_for(id, "success", |r| r["state"] == "succeeded")
        .await;
    server.stop().await;
}

#[tokio::test]
async fn a_silent_canary_times_out_and_the_reboot_hook_is_called_for_moves_and_roll_backs() {
    let dir = tempfile::TempDir::new().unwrap();
    let log = dir.path().join("reboots.log");
    let extra = format!(
        "[rollout]\nconfirm_timeout = \"2s\"\nreboot_command = \"echo $IRONBOOT_MAC $IRONBOOT_GENERATION >> {}\"\n",
        log.display()
    );
    let text = common::full_config(dir.path(), &extra);
    let server = TestServer::start(&text, dir).await;
    let api = Api::new(&server);
    let (a, b) = fleet_on_a(&api).await;
    let r = api
        .ok(
            Method::POST,
            "/api/v1/rollouts",
            Some(json!({ "group": "default", "stream": "worker", "to": b, "canary": 1, "timeout": "10m" })),
        )
        .await;
    let id = r["id"].as_i64().unwrap();
    assert_eq!(api.boot(M1).await.generation, b);
    // Silent past confirm_timeout: a failed boot, the gate fails.
    let r = api
        .wait_for(id, "roll back", |r| r["state"] == "rolled_back")
        .await;
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .contains("no confirmation of worker gen 2 within 2 s"),
        "{r}"
    );
    // The hook was asked to reboot the canary onto B, then back onto A.
    let mut lines = String::new();
    for _ in 0..50 {
        lines = std::fs::read_to_string(&log).unwrap_or_default();
        if lines.lines().count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(lines, format!("{M1} {b}\n{M1} {a}\n"));
    assert_eq!(api.boot_ok(M1).await, a);
    server.stop().await;
}

#[tokio::test]
async fn pause_resume_and_abort_and_their_refusals() {
    let server = TestServer::full("").await;
    let api = Api::new(&server);
    let (a, b) = fleet_on_a(&api).await;
    let r = blue_green(&api, b).await;
    let id = r["id"].as_i64().unwrap();
    assert_eq!(
        r["waves"][0]["machines"].as_array().unwrap().len(),
        2,
        "the first half"
    );
    let r = api
        .ok(Method::POST, &format!("/api/v1/rollouts/{id}/pause"), None)
        .await;
    assert_eq!(r["state"], "paused");
    let (status, _) = api
        .call(Method::POST, &format!("/api/v1/rollouts/{id}/pause"), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    for m in [M1, M2] {
        assert_eq!(
            api.boot_ok(m).await,
            b,
            "a paused rollout keeps its moved machines on B"
        );
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        api.rollout(id).await["wave"],
        0,
        "a paused gate does not pass"
    );
    api.ok(Method::POST, &format!("/api/v1/rollouts/{id}/resume"), None)
        .await;
    api.wait_for(id, "wave 1", |r| r["wave"] == 1).await;
    let r = api
        .ok(
            Method::POST,
            &format!("/api/v1/rollouts/{id}/abort"),
            Some(json!({ "reason": "change freeze" })),
        )
        .await;
    assert_eq!(r["state"], "aborted");
    assert_eq!(r["reason"], "change freeze");
    for m in [M1, M2, M3] {
        assert_eq!(api.boot_ok(m).await, a, "aborted: back to A");
    }
    let (status, v) = api
        .call(Method::POST, &format!("/api/v1/rollouts/{id}/resume"), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    let (status, v) = api.call(Method::GET, "/api/v1/rollouts/99", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    let (status, v) = api
        .call(
            Method::POST,
            "/api/v1/rollouts",
            Some(json!({ "group": "default", "stream": "worker", "to": 9 })),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    let (status, v) = api
        .call(
            Method::POST,
            "/api/v1/rollouts",
            Some(json!({ "group": "default", "stream": "worker", "to": b, "steps": "50%,20%" })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["field"], "steps");
    server.stop().await;
}

/// What the boot path would serve `mac` now, by `explain` (a script
/// request would itself count as a boot).
async fn would_serve(api: &Api, mac: &str) -> Value {
    api.ok(
        Method::POST,
        "/api/v1/explain",
        Some(json!({ "mac": mac, "ipxe": true })),
    )
    .await["target"]["generation"]["number"]
        .clone()
}

/// A rollout command whose commit fails changes nothing: the rollout,
/// its machines' generations and the boot path stay as SQLite has them.
#[tokio::test]
async fn a_command_whose_commit_fails_changes_nothing() {
    let server = TestServer::full("").await;
    let api = Api::new(&server);
    let (a, b) = fleet_on_a(&api).await;
    let r = blue_green(&api, b).await;
    let id = r["id"].as_i64().unwrap();
    assert_eq!(would_serve(&api, M1).await, b);

    // The disk refuses every change to the rollout's row from now on.
    let dir = server.dir.path();
    TestServer::refuse(dir, "refuse_rollouts", "UPDATE", "rollouts", "TRUE").await;
    for (command, body) in [("pause", None), ("abort", Some(json!({ "reason": "x" })))] {
        let (status, v) = api
            .call(
                Method::POST,
                &format!("/api/v1/rollouts/{id}/{command}"),
                body,
            )
            .await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{command}: {v}");
        let r = api.rollout(id).await;
        assert_eq!(r["state"], "running", "{command} failed to commit: {r}");
        assert_eq!(
            would_serve(&api, M1).await,
            b,
            "M1 still on B after {command}"
        );
    }

    // A confirmation whose commit fails moves nothing either: the canary
    // stays unconfirmed in the rollout.
    let booted = api.boot(M1).await;
    assert_eq!(booted.generation, b);
    TestServer::refuse(dir, "refuse_health", "INSERT", "machine_health", "TRUE").await;
    let status = api.confirm(&booted, "").await;
    assert!(status.is_server_error(), "{status}");
    let r = api.rollout(id).await;
    assert_eq!(r["counts"]["confirmed"], 0, "{r}");
    TestServer::allow(dir, "refuse_health", "machine_health").await;

    // The disk is back: the same command commits and shows.
    TestServer::allow(dir, "refuse_rollouts", "rollouts").await;
    let r = api
        .ok(
            Method::POST,
            &format!("/api/v1/rollouts/{id}/abort"),
            Some(json!({ "reason": "change freeze" })),
        )
        .await;
    assert_eq!(r["state"], "aborted");
    assert_eq!(would_serve(&api, M1).await, a);
    server.stop().await;
}

/// Runs the `ironboot` binary against the test server.
fn cli(api: &Api, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ironboot"))
        .args(args)
        .args(["--server", &api.base, "--token", &api.token])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

// The CLI runs as a blocking child process: the server needs threads of
// its own meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_starts_shows_and_refuses_rollouts() {
    let server = TestServer::full("").await;
    let api = Api::new(&server);
    let (_a, b) = fleet_on_a(&api).await;
    let to = b.to_string();
    let start = [
        "rollout",
        "start",
        "--group",
        "default",
        "--stream",
        "worker",
        "--to",
        &to,
        "--canary",
        "1",
        "--steps",
        "50%,100%",
        "--timeout",
        "10m",
    ];
    let (code, text) = cli(&api, &start);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("rollout 1  group default  worker gen 1 -> worker gen 2  running"),
        "{text}"
    );
    assert!(text.contains(&format!("  {M1}  waiting")), "{text}");
    assert!(text.contains(&format!("  {M3}  pending")), "{text}");
    let (code, text) = cli(&api, &start);
    assert_eq!(code, 6, "a conflict: {text}");
    assert!(
        text.contains("409") && text.contains("already has rollout 1"),
        "{text}"
    );
    let (code, text) = cli(&api, &["rollout", "pause", "1"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("paused"), "{text}");
    let (code, text) = cli(&api, &["rollout", "list"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.lines().nth(1).unwrap().starts_with("1 "), "{text}");
    let (code, text) = cli(&api, &["rollout", "abort", "1", "--reason", "testing"]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("aborted") && text.contains("reason: testing"),
        "{text}"
    );
    let (code, text) = cli(&api, &["rollout", "resume", "1"]);
    assert_eq!(code, 6, "{text}");
    assert!(text.contains("cannot be resumed"), "{text}");
    let (code, text) = cli(&api, &["rollout", "status", "1", "-o", "json"]);
    assert_eq!(code, 0, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["state"], "aborted");
    // -o json writes every object's keys sorted, whatever the view's order.
    let sorted = serde_json::to_string_pretty(&v).unwrap();
    assert_eq!(text, format!("{sorted}\n"));
    let (code, text) = cli(&api, &["watchdog", "list"]);
    assert_eq!(code, 0, "{text}");
    let (code, text) = cli(&api, &["watchdog", "clear", M1]);
    assert_eq!(code, 6, "{text}");
    assert!(text.contains("not degraded"), "{text}");
    server.stop().await;
}
