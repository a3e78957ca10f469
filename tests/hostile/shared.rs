//! Several servers serving one inventory from one PostgreSQL database
//! (issue 16, `[store] shared = true`): a change made through one server's
//! API reaches the other's boot path within a second (the database's
//! notifications), one of them leads the fleet, and when the leader dies
//! with SIGKILL in the middle of a rollout another takes the lead and
//! resumes it where the database says. PostgreSQL only: it runs in CI's
//! PostgreSQL pass (`IRONBOOT_TEST_POSTGRES`).

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::binding::client;
use crate::common::api::Api;
use crate::common::fleet;
use crate::process::Server;
use crate::standby::{boot_and_confirm, node_as, row, servers, MACHINES};

const SHARED: &str = "shared = true";

/// Waits (bounded) until `id`'s row in `api`'s server list has `role`.
async fn role_is(api: &Api, id: &str, role: &str, within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let rows = servers(api).await;
        if row(&rows, id).is_some_and(|r| r["role"] == role && r["state"] == "up") {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "{id} is not {role} after {within:?}: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The generation `mac`'s script from `base` boots (its token's boot),
/// read from the script's kernel line.
async fn served(base: &str, mac: &str, ip: &str) -> String {
    let machine = client(ip.parse().unwrap());
    fleet::script(&machine, base, mac).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_one_server_reaches_the_others_boot_path_within_a_second() {
    if crate::common::postgres_base().is_none() {
        eprintln!("skipped: shared servers need PostgreSQL (IRONBOOT_TEST_POSTGRES); CI's PostgreSQL pass runs it");
        return;
    }
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let url = crate::common::test_store_url(dir_a.path()).await.unwrap();
    let a = node_as(dir_a.path(), "one-a", &url, SHARED);
    let b = node_as(dir_b.path(), "one-b", &url, SHARED);
    let _server_a = Server::start(&a.config).healthy(&a.base).await;
    let api_a = Api::at(&a.base, dir_a.path());
    role_is(&api_a, "one-a", "leader", Duration::from_secs(10)).await;
    // Both serve at once.
    let _server_b = Server::start(&b.config).healthy(&b.base).await;
    let api_b = Api::at(&b.base, dir_a.path());
    let rows = role_is(&api_a, "one-b", "member", Duration::from_secs(10)).await;
    assert_eq!(row(&rows, "one-b").unwrap()["peer"], "one-a", "{rows:?}");

    let first = api_a
        .import("worker", &[1; 4096], &[2; 4096], "gen=one")
        .await;
    let second = api_a
        .import("worker", &[3; 4096], &[4; 4096], "gen=two")
        .await;
    api_a.point("default", "worker", first).await;
    let (mac, ip) = MACHINES[0];
    let deadline = Instant::now() + Duration::from_secs(5);
    while !served(&b.base, mac, ip).await.contains("gen=one") {
        assert!(Instant::now() < deadline, "B never served A's pointer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The pointer moved through A: B's next script boots the second
    // generation within a second.
    let mut seen = Vec::new();
    for round in 0..5 {
        let target = if round % 2 == 0 { second } else { first };
        let want = if round % 2 == 0 { "gen=two" } else { "gen=one" };
        let (api, base) = if round % 2 == 0 {
            (&api_a, &b.base)
        } else {
            (&api_b, &a.base)
        };
        api.point("default", "worker", target).await;
        let changed = Instant::now();
        loop {
            if served(base, mac, ip).await.contains(want) {
                seen.push(changed.elapsed());
                break;
            }
            assert!(
                changed.elapsed() < Duration::from_secs(1),
                "round {round}: the other server's boot path did not see the change within 1 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    eprintln!("change seen by the other server after {seen:?}");

    // B serves the bytes of the generations imported through A (copied by
    // digest, verified, within seconds).
    let script = served(&b.base, mac, ip).await;
    let kernel_url = script
        .split_whitespace()
        .find(|w| w.contains("/artifacts/sha256/"))
        .unwrap_or_else(|| panic!("no artifact URL in {script}"))
        .to_string();
    assert!(kernel_url.starts_with(&b.base), "{kernel_url}");
    let copied = Instant::now();
    loop {
        let r = reqwest::get(&kernel_url).await.unwrap();
        if r.status() == 200 {
            let body = r.bytes().await.unwrap();
            assert!(body.iter().all(|b| *b == 1 || *b == 3) && body.len() == 4096);
            break;
        }
        assert!(
            copied.elapsed() < Duration::from_secs(10),
            "B never served A's artifact: {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "artifacts served by B {:?} after the check began",
        copied.elapsed()
    );

    // A machine's labels set through B, seen by A; a machine deleted
    // through A is gone from B.
    let (mac2, ip2) = MACHINES[1];
    served(&a.base, mac2, ip2).await;
    api_b
        .ok(
            Method::PATCH,
            &format!("/api/v1/machines/{mac2}"),
            Some(json!({ "labels": { "rack": "r7" } })),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let m = api_a
            .ok(Method::GET, &format!("/api/v1/machines/{mac2}"), None)
            .await;
        if m["labels"]["rack"] == "r7" {
            break;
        }
        assert!(Instant::now() < deadline, "A did not see B's labels: {m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Boots numbered by both servers at once never share an id.
    let before = api_a.ok(Method::GET, "/api/v1/boots?limit=500", None).await["boots"]
        .as_array()
        .unwrap()
        .len();
    let scripts = (0..20).map(|i| {
        let base = if i % 2 == 0 {
            a.base.clone()
        } else {
            b.base.clone()
        };
        let (mac, ip) = MACHINES[i % MACHINES.len()];
        async move { fleet::token_in(&served(&base, mac, ip).await).is_some() }
    });
    let served_ok = futures_util::future::join_all(scripts).await;
    assert!(served_ok.iter().all(|ok| *ok), "every script has a token");
    let boots = api_a.ok(Method::GET, "/api/v1/boots?limit=500", None).await["boots"]
        .as_array()
        .unwrap()
        .clone();
    let ids: std::collections::HashSet<i64> =
        boots.iter().map(|b| b["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), boots.len(), "no id twice");
    assert_eq!(boots.len(), before + 20, "every boot recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_dies_mid_rollout_and_the_other_server_resumes_it() {
    if crate::common::postgres_base().is_none() {
        eprintln!("skipped: shared servers need PostgreSQL (IRONBOOT_TEST_POSTGRES); CI's PostgreSQL pass runs it");
        return;
    }
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let url = crate::common::test_store_url(dir_a.path()).await.unwrap();
    let a = node_as(dir_a.path(), "lead-a", &url, SHARED);
    let b = node_as(dir_b.path(), "lead-b", &url, SHARED);
    let server_a = Server::start(&a.config).healthy(&a.base).await;
    let api_a = Api::at(&a.base, dir_a.path());
    role_is(&api_a, "lead-a", "leader", Duration::from_secs(10)).await;
    let server_b = Server::start(&b.config).healthy(&b.base).await;
    let api_b = Api::at(&b.base, dir_a.path());
    role_is(&api_a, "lead-b", "member", Duration::from_secs(10)).await;

    let first = api_a
        .import("worker", &[1; 4096], &[2; 4096], "gen=one")
        .await;
    let second = api_a
        .import("worker", &[3; 4096], &[4; 4096], "gen=two")
        .await;
    api_a.point("default", "worker", first).await;
    // Every machine boots through B (the member) and confirms there.
    for (mac, ip) in MACHINES {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if boot_and_confirm(&b.base, mac, ip).await == Some(200) {
                break;
            }
            assert!(Instant::now() < deadline, "{mac} does not boot through B");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Rollout commands go to the leader: sent to B, B passes it to A.
    let start = json!({ "group": "default", "stream": "worker", "to": second, "canary": 1,
                        "steps": ["100%"], "timeout": "2m", "require": "checks=passed" });
    let r = api_b
        .ok(Method::POST, "/api/v1/rollouts", Some(start))
        .await;
    let on_a = api_a
        .ok(Method::GET, &format!("/api/v1/rollouts/{}", r["id"]), None)
        .await;
    assert_eq!(on_a["state"], "running", "the leader runs it: {on_a}");
    // A token that does not work is refused by the leader, through B.
    let stranger = Api {
        token: "not-a-token".into(),
        ..Api::at(&b.base, dir_a.path())
    };
    let (status, body) = stranger
        .call(Method::POST, "/api/v1/rollouts/1/pause", None)
        .await;
    assert_eq!(status, 401, "{body}");
    let id = r["id"].as_i64().unwrap();
    let canary = r["waves"][0]["machines"][0]["mac"]
        .as_str()
        .unwrap()
        .to_string();
    let canary_ip = MACHINES.iter().find(|(m, _)| *m == canary).unwrap().1;

    // B's boot path knows the rollout within a second (B's own view, not
    // a netboot: each script request is one): the canary boots the second
    // generation there, and its confirmation through B passes the gate on
    // A (through the inbox).
    let started = Instant::now();
    loop {
        let (status, seen) = api_b
            .call(Method::GET, &format!("/api/v1/rollouts/{id}"), None)
            .await;
        if status == 200 && seen["state"] == "running" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "B does not see A's rollout within 1 s: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("rollout seen by B after {:?}", started.elapsed());
    let machine = client(canary_ip.parse().unwrap());
    let script = fleet::script(&machine, &b.base, &canary).await;
    assert!(script.contains("gen=two"), "{script}");
    let token = fleet::token_in(&script).unwrap();
    let confirmed = fleet::phone_home(&machine, &b.base, &token, "checks=passed").await;
    assert_eq!(confirmed.as_u16(), 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = api_a
            .ok(Method::GET, &format!("/api/v1/rollouts/{id}"), None)
            .await;
        if r["waves"][0]["gate"] == "passed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A's gate never saw B's confirmation: {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The leader dies; B takes the lead within seconds and finishes it.
    drop(server_a);
    let killed = Instant::now();
    role_is(&api_b, "lead-b", "leader", Duration::from_secs(5)).await;
    eprintln!("new leader after {:?}", killed.elapsed());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = api_b
            .ok(Method::GET, &format!("/api/v1/rollouts/{id}"), None)
            .await;
        if r["state"] == "succeeded" {
            break;
        }
        assert!(Instant::now() < deadline, "rollout not resumed by B: {r}");
        for (mac, ip) in MACHINES.iter().filter(|(m, _)| *m != canary) {
            let _ = boot_and_confirm(&b.base, mac, ip).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let group = api_b.ok(Method::GET, "/api/v1/groups/default", None).await;
    assert_eq!(
        group["pointer"]["generation"], second,
        "the group points at the rollout's generation: {group}"
    );
    drop(server_b);
}
