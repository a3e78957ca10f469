//! A primary and its standby on one PostgreSQL database (issue 16), both
//! started from the same settings (`[store] standby = true`): whichever
//! comes first serves, the other waits, copies the primary's artifacts by
//! digest and shows as its peer. The primary is killed with SIGKILL in the
//! middle of a rollout; the standby takes over within 5 s, keeps every
//! ACKed lease (no address handed out twice), serves the artifacts it
//! copied, and resumes the rollout where the database says. PostgreSQL
//! only: it runs in CI's PostgreSQL pass (`IRONBOOT_TEST_POSTGRES`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::binding::{client, lease};
use crate::common::api::Api;
use crate::common::dhcp_client::Relay;
use crate::common::fleet;
use crate::process::{free_port, Server};

const RELAY: Ipv4Addr = Ipv4Addr::new(127, 1, 0, 1);

/// Machines with declared addresses, so their requests are bound to them.
pub(crate) const MACHINES: [(&str, &str); 3] = [
    ("52:54:00:00:16:01", "127.1.0.71"),
    ("52:54:00:00:16:02", "127.1.0.72"),
    ("52:54:00:00:16:03", "127.1.0.73"),
];

/// One server of the pair: its settings file, HTTP base and DHCP address.
pub(crate) struct Node {
    pub(crate) config: PathBuf,
    pub(crate) base: String,
    pub(crate) dhcp: SocketAddr,
}

fn node(dir: &Path, name: &str, store_url: &str) -> Node {
    node_as(dir, name, store_url, "standby = true")
}

/// A server on `store_url` with `mode` in its `[store]` section.
pub(crate) fn node_as(dir: &Path, name: &str, store_url: &str, mode: &str) -> Node {
    let (http, dhcp) = (free_port(), free_port());
    let reservations: String = MACHINES
        .iter()
        .map(|(mac, ip)| format!("[[dhcp.reservation]]\nmac = \"{mac}\"\nip = \"{ip}\"\n"))
        .collect();
    let text = crate::common::full_config_with(dir, "", crate::common::BINDING_REQUIRED)
        .replacen(
            "[http]\nlisten = \"127.0.0.1:0\"",
            &format!("[http]\nlisten = \"127.0.0.1:{http}\""),
            1,
        )
        .replacen(
            "[dhcp]\nmode = \"full\"\nlisten = \"127.0.0.1:0\"",
            &format!("[dhcp]\nmode = \"full\"\nlisten = \"127.0.0.1:{dhcp}\""),
            1,
        )
        .replace(
            "range = [\"127.1.0.100\", \"127.1.0.103\"]",
            "range = [\"127.1.0.100\", \"127.1.0.250\"]",
        );
    assert!(text.contains(&format!(":{dhcp}\"")), "{text}");
    let text = format!(
        "server_name = \"{name}\"\n{text}\n{reservations}\n[store]\nurl = \"{store_url}\"\n{mode}\n"
    );
    let config = dir.join("ironboot.toml");
    std::fs::write(&config, text).unwrap();
    Node {
        config,
        base: format!("http://127.0.0.1:{http}"),
        dhcp: format!("127.0.0.1:{dhcp}").parse().unwrap(),
    }
}

pub(crate) async fn servers(api: &Api) -> Vec<Value> {
    api.ok(Method::GET, "/api/v1/servers", None).await["servers"]
        .as_array()
        .unwrap()
        .clone()
}

pub(crate) fn row<'a>(rows: &'a [Value], id: &str) -> Option<&'a Value> {
    rows.iter().find(|r| r["id"] == id)
}

/// One network boot of `mac` from its own address through `base`, and
/// its confirmation with the checks passed: the confirmation's status.
pub(crate) async fn boot_and_confirm(base: &str, mac: &str, ip: &str) -> Option<u16> {
    let machine = client(ip.parse().unwrap());
    let token = fleet::token_in(&fleet::script(&machine, base, mac).await)?;
    Some(
        fleet::phone_home(&machine, base, &token, "checks=passed")
            .await
            .as_u16(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_mid_rollout_and_keeps_every_lease() {
    if crate::common::postgres_base().is_none() {
        eprintln!("skipped: a standby needs PostgreSQL (IRONBOOT_TEST_POSTGRES); CI's PostgreSQL pass runs it");
        return;
    }
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let url = crate::common::test_store_url(dir_a.path()).await.unwrap();
    let a = node(dir_a.path(), "boot-a", &url);
    let b = node(dir_b.path(), "boot-b", &url);

    // A comes first and serves; the admin token it wrote works on both.
    let server_a = Server::start(&a.config).healthy(&a.base).await;
    let api_a = Api::at(&a.base, dir_a.path());
    let (kernel, initrd) = (vec![1u8; 64 * 1024], vec![2u8; 64 * 1024]);
    let first = api_a
        .import("worker", &kernel, &initrd, "console=ttyS0")
        .await;
    let (kernel2, initrd2) = (vec![3u8; 64 * 1024], vec![4u8; 64 * 1024]);
    let second = api_a
        .import("worker", &kernel2, &initrd2, "console=ttyS0")
        .await;
    api_a.point("default", "worker", first).await;
    for (mac, ip) in MACHINES {
        assert_eq!(boot_and_confirm(&a.base, mac, ip).await, Some(200));
    }

    // B waits as A's standby, names A as its peer and is named by it.
    let mut server_b = Some(Server::start(&b.config));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let rows = servers(&api_a).await;
        let (ra, rb) = (row(&rows, "boot-a"), row(&rows, "boot-b"));
        if let (Some(ra), Some(rb)) = (ra, rb) {
            if rb["role"] == "standby" && rb["peer"] == "boot-a" && ra["peer"] == "boot-b" {
                assert_eq!(
                    (&ra["role"], &rb["state"]),
                    (&json!("primary"), &json!("up"))
                );
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no standby pair after 15 s: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        reqwest::get(format!("{}/healthz", b.base)).await.is_err(),
        "a standby serves nothing"
    );

    // A rollout to the second generation: the canary passes its gate
    // through A; then A dies with SIGKILL.
    let r = api_a
        .ok(
            Method::POST,
            "/api/v1/rollouts",
            Some(
                json!({ "group": "default", "stream": "worker", "to": second, "canary": 1,
                         "steps": ["100%"], "timeout": "2m", "require": "checks=passed" }),
            ),
        )
        .await;
    let id = r["id"].as_i64().unwrap();
    let canary = r["waves"][0]["machines"][0]["mac"]
        .as_str()
        .unwrap()
        .to_string();
    let canary_ip = MACHINES.iter().find(|(m, _)| *m == canary).unwrap().1;
    assert_eq!(
        boot_and_confirm(&a.base, &canary, canary_ip).await,
        Some(200)
    );
    // Ten clients ACKed by A (after the rollout chose its machines, so
    // they are not in it).
    let relay_a = Relay::new(RELAY, a.dhcp).await;
    let mut acked = Vec::new();
    for i in 0..10u8 {
        let m = [0x52, 0x54, 0x00, 0x16, 0xaa, i];
        let ip = lease(&relay_a, m, 0x1600 + u32::from(i) * 2)
            .await
            .expect("A leases");
        acked.push((m, ip));
    }
    let before = api_a
        .ok(Method::GET, &format!("/api/v1/rollouts/{id}"), None)
        .await;
    // The artifacts of both generations copied before the kill (the
    // standby copies every 5 s).
    let copied = |d: &Path| {
        std::fs::read_dir(d.join("data/images/artifacts/sha256"))
            .map(|entries| entries.count())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while copied(dir_b.path()) < copied(dir_a.path()) {
        assert!(
            Instant::now() < deadline,
            "artifacts not copied to the standby in 15 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(server_a); // SIGKILL, reaped
    let killed = Instant::now();

    // B serves within 5 s.
    let takeover = loop {
        if reqwest::get(format!("{}/healthz", b.base)).await.is_ok() {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "the standby did not serve within 5 s of the kill"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("takeover: {takeover:?}");
    let api_b = Api::at(&b.base, dir_a.path());

    // The rollout resumes where the database says: the canary's passed gate
    // is kept; the others boot through B and it succeeds.
    let after = api_b
        .ok(Method::GET, &format!("/api/v1/rollouts/{id}"), None)
        .await;
    assert_eq!(after["state"], "running", "{after}");
    // (Its gate may have passed since: a rollout tick on either side.)
    assert_eq!(
        after["waves"][0]["machines"], before["waves"][0]["machines"],
        "the canary's confirmation as A recorded it"
    );
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

    // The artifacts B copied are served, byte for byte.
    let machine = client(MACHINES[0].1.parse().unwrap());
    let script = fleet::script(&machine, &b.base, MACHINES[0].0).await;
    let kernel_url = script
        .split_whitespace()
        .find(|w| w.contains("/artifacts/sha256/"))
        .unwrap_or_else(|| panic!("no artifact URL in {script}"))
        .to_string();
    let served = reqwest::get(&kernel_url).await.unwrap();
    assert_eq!(served.status(), 200, "{kernel_url}");
    let body = served.bytes().await.unwrap();
    assert!(
        body[..] == kernel2[..] || body[..] == initrd2[..],
        "the second generation's bytes"
    );

    // Every lease A ACKed is B's too: the same client gets the same
    // address, a new client none of them.
    let relay_b = Relay::new(RELAY, b.dhcp).await;
    for (i, (m, ip)) in acked.iter().enumerate() {
        let again = lease(&relay_b, *m, 0x1700 + i as u32 * 2).await;
        assert_eq!(again, Some(*ip), "{m:02x?} keeps its address");
    }
    let fresh = lease(&relay_b, [0x52, 0x54, 0x00, 0x16, 0xbb, 1], 0x1800)
        .await
        .expect("a new client is served");
    assert!(
        !acked.iter().any(|(_, ip)| *ip == fresh),
        "{fresh} was ACKed to another client by A"
    );

    // B's row says primary now.
    let rows = servers(&api_b).await;
    assert_eq!(row(&rows, "boot-b").unwrap()["role"], "primary", "{rows:?}");
    server_b.take();
}

/// The primary's claim cut under it (its connection to the database
/// terminated, as a failover of the database or a network cut would):
/// it stops serving before its standby starts, so they never both answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_that_loses_its_claim_stops_before_the_standby_serves() {
    if crate::common::postgres_base().is_none() {
        eprintln!("skipped: a standby needs PostgreSQL (IRONBOOT_TEST_POSTGRES); CI's PostgreSQL pass runs it");
        return;
    }
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let url = crate::common::test_store_url(dir_a.path()).await.unwrap();
    let a = node(dir_a.path(), "fence-a", &url);
    let b = node(dir_b.path(), "fence-b", &url);
    let mut server_a = Server::start(&a.config).healthy(&a.base).await;
    let _server_b = Server::start(&b.config);
    let api_a = Api::at(&a.base, dir_a.path());
    let deadline = Instant::now() + Duration::from_secs(15);
    while row(&servers(&api_a).await, "fence-b").is_none() {
        assert!(Instant::now() < deadline, "no standby row after 15 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let mut db = {
        use sqlx::Connection;
        sqlx::PgConnection::connect(&url).await.unwrap()
    };
    let (terminated,): (bool,) = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_locks
         WHERE locktype = 'advisory' AND objid::bigint = 72700420 AND granted
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert!(terminated);
    let cut = Instant::now();

    // A exits (non-zero: a supervisor restarts it) within its claim check.
    let exited = loop {
        if let Some(status) = server_a.0.try_wait().unwrap() {
            break (cut.elapsed(), status);
        }
        assert!(
            cut.elapsed() < Duration::from_secs(5),
            "A still runs 5 s after losing its claim"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!exited.1.success(), "{:?}", exited.1);
    // B serves only after A stopped, within 5 s of the cut.
    let serving = loop {
        if reqwest::get(format!("{}/healthz", b.base)).await.is_ok() {
            break cut.elapsed();
        }
        assert!(
            cut.elapsed() < Duration::from_secs(5),
            "B not serving 5 s after the cut"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("A stopped after {:?}, B served after {serving:?}", exited.0);
    assert!(
        exited.0 < serving,
        "A {:?} must stop before B serves ({serving:?})",
        exited.0
    );
}
