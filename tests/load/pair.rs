//! A boot storm through a primary and its standby (issue 16): 2,000
//! simulated machines boot at once through a relay that forwards to both
//! servers; the primary is killed with SIGKILL when a fifth of them have
//! confirmed. Machines caught on the dead server start over (a watchdog
//! power-cycling them) and boot through the standby. At least 99.9 % boot,
//! no address is ACKed to two machines (by the clients' answers and by
//! the leases in the database), and the standby serves within 5 s of the
//! kill. PostgreSQL only: it runs in CI's PostgreSQL pass.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ironboot::storm::{self, Plan};

use crate::common;
use crate::common::api::Api;

const MACHINES: usize = 2_000;

/// A server process, killed with SIGKILL and reaped when dropped.
struct Server(std::process::Child);

impl Server {
    fn start(config: &Path) -> Self {
        Self(
            std::process::Command::new(env!("CARGO_BIN_EXE_ironboot"))
                .args(["serve", "--config"])
                .arg(config)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One server of the pair on its own loopback address (`ip`), every
/// service on the same ports as its partner's, so the machines' TFTP port
/// is one; one relayed /16 whose leases the simulator sends from.
fn node(dir: &Path, ip: &str, name: &str, ports: (u16, u16, u16), store_url: &str) -> PathBuf {
    let (http, tftp, dhcp) = ports;
    let text = common::full_config_with(dir, "", common::BINDING_REQUIRED)
        .replace("server_ip = \"127.0.0.1\"", &format!("server_ip = \"{ip}\""))
        .replacen(
            "[http]\nlisten = \"127.0.0.1:0\"",
            &format!("[http]\nlisten = \"{ip}:{http}\""),
            1,
        )
        .replacen(
            "[tftp]\nlisten = \"127.0.0.1:0\"",
            &format!("[tftp]\nlisten = \"{ip}:{tftp}\""),
            1,
        )
        .replacen(
            "[dhcp]\nmode = \"full\"\nlisten = \"127.0.0.1:0\"\nproxy_listen = \"127.0.0.1:0\"",
            &format!("[dhcp]\nmode = \"full\"\nlisten = \"{ip}:{dhcp}\"\nproxy_listen = \"{ip}:0\""),
            1,
        )
        .replace(
            "[[dhcp.subnet]]\nnetwork = \"127.1.0.0/24\"",
            "[[dhcp.subnet]]\nnetwork = \"127.77.0.0/16\"\nrange = [\"127.77.1.1\", \"127.77.12.254\"]\nlease_time = \"1h\"\n\n[[dhcp.subnet]]\nnetwork = \"127.1.0.0/24\"",
        );
    assert!(text.contains(&format!("{ip}:{dhcp}")), "{text}");
    let text = format!(
        "server_name = \"{name}\"\n{text}\n[store]\nurl = \"{store_url}\"\nstandby = true\n"
    );
    let config = dir.join("ironboot.toml");
    std::fs::write(&config, text).unwrap();
    config
}

async fn healthy(base: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if reqwest::get(format!("{base}/healthz")).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_through_the_pair_loses_no_boot_and_no_address_when_the_primary_dies() {
    if common::postgres_base().is_none() {
        eprintln!("skipped: the pair needs PostgreSQL (IRONBOOT_TEST_POSTGRES); CI's PostgreSQL pass runs it");
        return;
    }
    let _alone = crate::alone().await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let url = common::test_store_url(dir_a.path()).await.unwrap();
    let ports = (free_port(), free_port(), free_port());
    let a = node(dir_a.path(), "127.0.0.1", "storm-a", ports, &url);
    let b = node(dir_b.path(), "127.0.0.2", "storm-b", ports, &url);
    let (base_a, base_b) = (
        format!("http://127.0.0.1:{}", ports.0),
        format!("http://127.0.0.2:{}", ports.0),
    );
    let server_a = Server::start(&a);
    assert!(healthy(&base_a, Duration::from_secs(10)).await, "A up");
    let _server_b = Server::start(&b);

    let api = Api::at(&base_a, dir_a.path());
    let kernel: Vec<u8> = (0..1_000_000u32).map(|i| (i * 31 % 253) as u8).collect();
    let initrd: Vec<u8> = (0..1_500_000u32).map(|i| (i * 17 % 241) as u8).collect();
    let generation = api.import("storm", &kernel, &initrd, "console=ttyS0").await;
    api.point("default", "storm", generation).await;
    // The standby holds the artifacts before the storm (it copies every 5 s).
    let copied = |d: &Path| {
        std::fs::read_dir(d.join("data/images/artifacts/sha256"))
            .map(|e| e.count())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while copied(dir_b.path()) < 2 {
        assert!(Instant::now() < deadline, "artifacts not copied in 15 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let dhcp = |ip: &str| -> SocketAddr { format!("{ip}:{}", ports.2).parse().unwrap() };
    let mut plan = Plan::new(MACHINES, dhcp("127.0.0.1"), Ipv4Addr::new(127, 77, 0, 1));
    plan.also_dhcp = vec![dhcp("127.0.0.2")];
    plan.tftp_port = ports.1;
    plan.dhcp_timeouts = [1, 2, 4, 8, 16].map(Duration::from_secs).to_vec();
    plan.http_attempts = 3;
    plan.http_retry_delay = Duration::from_secs(1);
    plan.restarts = 3;
    plan.deadline = Duration::from_secs(400);
    let storm = tokio::spawn(storm::run(plan));

    // Kill A once a fifth of the machines confirmed through it.
    let db = {
        use sqlx::Connection;
        sqlx::PgConnection::connect(&url).await.unwrap()
    };
    let mut db = db;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (confirmed,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM boots WHERE state = 'confirmed'")
                .fetch_one(&mut db)
                .await
                .unwrap();
        if confirmed >= MACHINES as i64 / 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{confirmed} confirmed after 300 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(server_a); // SIGKILL, reaped
    let killed = Instant::now();
    assert!(
        healthy(&base_b, Duration::from_secs(5)).await,
        "the standby did not serve within 5 s of the kill"
    );
    let failover = killed.elapsed();

    let report = storm.await.unwrap();
    eprintln!("failover: {failover:?}\n{report}");
    assert!(
        report.completed * 1000 >= MACHINES * 999,
        "at least 99.9 % boot: {report}"
    );
    assert_eq!(report.addresses_shared, 0, "{report}");
    assert!(
        report.restarted > 0,
        "the kill caught machines mid-boot: {report}"
    );

    // The database agrees: one bound lease per address, one per machine.
    let (leases, addresses, macs): (i64, i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(DISTINCT ip), COUNT(DISTINCT mac) FROM leases
         WHERE state = 'bound' AND ip LIKE '127.77.%'",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!((leases, addresses), (macs, macs), "one address per machine");
    assert!(macs >= report.completed as i64);
    let (confirmed,): (i64,) =
        sqlx::query_as("SELECT COUNT(DISTINCT mac) FROM boots WHERE state = 'confirmed'")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert!(
        confirmed >= report.completed as i64,
        "{confirmed} in the ledger"
    );
}
