//! The boot-storm simulator against the real server on loopback: 50
//! machines boot at once through the whole flow (PXE DHCP, TFTP, iPXE DHCP,
//! script, verified kernel and initrd, config, confirmation) with zero
//! failures, in bounded time, and the server's ledger agrees.

use std::net::Ipv4Addr;
use std::time::Duration;

use ironboot::storm::{self, Plan};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::common;
use crate::common::TestServer;

const MACHINES: usize = 50;

fn config(dir: &std::path::Path) -> String {
    // One relayed /16 on loopback: leases are 127.77.x.y, which the
    // simulator's machines send from, so the server tells them apart.
    common::full_config_with(dir, "", common::BINDING_REQUIRED).replace(
        "[[dhcp.subnet]]\nnetwork = \"127.1.0.0/24\"",
        "[[dhcp.subnet]]\nnetwork = \"127.77.0.0/16\"\nrange = [\"127.77.1.1\", \"127.77.9.254\"]\nlease_time = \"1h\"\n\n[[dhcp.subnet]]\nnetwork = \"127.1.0.0/24\"",
    )
}

/// Uploads kernel and initrd, imports them as `storm` generation 1 and
/// points the default group at it.
async fn import(server: &TestServer, kernel: &[u8], initrd: &[u8]) {
    let token = std::fs::read_to_string(server.dir.path().join("data/admin.token")).unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://{}", server.bound.http);
    let mut digests = Vec::new();
    for bytes in [kernel, initrd] {
        let hex = hex::encode(Sha256::digest(bytes));
        let resp = http
            .put(format!("{base}/api/v1/artifacts/sha256/{hex}"))
            .bearer_auth(token.trim())
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "upload: {}", resp.status());
        digests.push(hex);
    }
    let manifest = json!({
        "arch": "x86_64",
        "kernel": { "name": "vmlinuz", "digest": digests[0], "size": kernel.len() },
        "initrds": [{ "name": "initrd.img", "digest": digests[1], "size": initrd.len() }],
        "rootfs": null,
        "cmdline": "console=ttyS0",
    });
    let resp = http
        .post(format!("{base}/api/v1/streams/storm/generations"))
        .bearer_auth(token.trim())
        .json(&manifest)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    let resp = http
        .put(format!("{base}/api/v1/groups/default/generation"))
        .bearer_auth(token.trim())
        .json(&json!({ "stream": "storm", "generation": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_machines_boot_at_once_with_zero_failures() {
    let _alone = crate::alone().await;
    let dir = tempfile::TempDir::new().unwrap();
    let text = config(dir.path());
    let server = TestServer::start(&text, dir).await;
    let kernel: Vec<u8> = (0..2_000_000u32).map(|i| (i * 31 % 253) as u8).collect();
    let initrd: Vec<u8> = (0..3_000_000u32).map(|i| (i * 17 % 241) as u8).collect();
    import(&server, &kernel, &initrd).await;

    let mut plan = Plan::new(MACHINES, server.dhcp(), Ipv4Addr::new(127, 77, 0, 1));
    plan.tftp_port = server.bound.tftp.unwrap().port();
    // Loopback answers in microseconds: firmware-like retries, shorter.
    plan.dhcp_timeouts = [1, 2, 4, 8].map(Duration::from_secs).to_vec();
    plan.http_retry_delay = Duration::from_secs(1);
    plan.server_pid = Some(std::process::id());
    plan.deadline = Duration::from_secs(120);
    let report = storm::run(plan).await;
    eprintln!("{report}");

    assert_eq!(report.machines, MACHINES);
    assert_eq!(report.failed, 0, "{report}");
    assert_eq!(report.completed, MACHINES);
    assert!(
        report.time_to_last_boot_s.unwrap() < 120.0,
        "bounded: {report}"
    );
    for step in &report.steps {
        assert_eq!(step.count, MACHINES, "{}", step.step);
    }
    let bytes = |name: &str| report.steps.iter().find(|s| s.step == name).unwrap().bytes;
    assert_eq!(
        bytes("tftp"),
        70_000 * MACHINES as u64,
        "undionly.kpxe each"
    );
    assert_eq!(bytes("kernel"), kernel.len() as u64 * MACHINES as u64);
    assert_eq!(bytes("initrd"), initrd.len() as u64 * MACHINES as u64);
    let usage = report.server.as_ref().expect("this process sampled");
    assert!(usage.peak_rss_mb > 0.0);

    // The server saw the same: every machine's boot confirmed, its lease
    // persisted, its TFTP transfer and artifacts in the ledger.
    let dir = server.stop().await;
    let db = TestServer::db(dir.path()).await;
    let (confirmed,): (i64,) = sqlx::query_as(
        "SELECT COUNT(DISTINCT mac) FROM boots WHERE state = 'confirmed' AND stream = 'storm'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(confirmed, MACHINES as i64);
    let (leases,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM leases WHERE state = 'bound' AND ip LIKE '127.77.%'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(leases, MACHINES as i64);
}
