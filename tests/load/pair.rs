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
/// `mode`: the `[store]` line that makes the pair (`standby = true`, or
/// `shared = true` with `peer` naming the partner for DHCP).
fn node(
    dir: &Path,
    ip: &str,
    name: &str,
    ports: (u16, u16, u16),
    store_url: &str,
    mode: &str,
) -> PathBuf {
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
    let text =
        format!("server_name = \"{name}\"\n{text}\n[store]\nurl = \"{store_url}\"\n{mode}\n");
    let config = dir.join("ironboot.toml");
    std::fs::write(&config, text).unwrap();
    config
}

/// The storm's image imported through A (`base_a`, data in `dir_a`) and
/// pointed at, then waited for (15 s at most) in B's store (`dir_b`).
async fn image_on_both(base_a: &str, dir_a: &Path, dir_b: &Path) {
    let api = Api::at(base_a, dir_a);
    let kernel: Vec<u8> = (0..1_000_000u32).map(|i| (i * 31 % 253) as u8).collect();
    let initrd: Vec<u8> = (0..1_500_000u32).map(|i| (i * 17 % 241) as u8).collect();
    let generation = api.import("storm", &kernel, &initrd, "console=ttyS0").await;
    api.point("default", "storm", generation).await;
    let copied = || {
        std::fs::read_dir(dir_b.join("data/images/artifacts/sha256"))
            .map(|e| e.count())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while copied() < 2 {
        assert!(
            Instant::now() < deadline,
            "artifacts not copied to B in 15 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits (300 s at most) until a fifth of the machines confirmed a boot.
async fn a_fifth_confirmed(db: &mut sqlx::PgConnection) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (confirmed,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM boots WHERE state = 'confirmed'")
                .fetch_one(&mut *db)
                .await
                .unwrap();
        if confirmed >= MACHINES as i64 / 5 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{confirmed} confirmed after 300 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    let a = node(
        dir_a.path(),
        "127.0.0.1",
        "storm-a",
        ports,
        &url,
        "standby = true",
    );
    let b = node(
        dir_b.path(),
        "127.0.0.2",
        "storm-b",
        ports,
        &url,
        "standby = true",
    );
    let (base_a, base_b) = (
        format!("http://127.0.0.1:{}", ports.0),
        format!("http://127.0.0.2:{}", ports.0),
    );
    let server_a = Server::start(&a);
    assert!(healthy(&base_a, Duration::from_secs(10)).await, "A up");
    let _server_b = Server::start(&b);

    // B holds the artifacts before the storm (it copies A's).
    image_on_both(&base_a, dir_a.path(), dir_b.path()).await;

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
    a_fifth_confirmed(&mut db).await;
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

/// A counter from a server's `/metrics`.
async fn counter(base: &str, name: &str) -> u64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

/// The same storm through an HA pair that splits the clients (`[dhcp]
/// peer`, `[store] shared`): both servers answer, each its half; the one
/// that answered more is killed with SIGKILL when a fifth of the machines
/// confirmed, and the other answers its half within 5 s. At least 99.9 %
/// boot and no address is ACKed to two machines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_through_the_split_pair_loses_no_boot_and_no_address_when_one_dies() {
    if common::postgres_base().is_none() {
        eprintln!("skipped: the pair needs PostgreSQL (IRONBOOT_TEST_POSTGRES); CI's PostgreSQL pass runs it");
        return;
    }
    let _alone = crate::alone().await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let url = common::test_store_url(dir_a.path()).await.unwrap();
    let ports = (free_port(), free_port(), free_port());
    let with_peer = |config: PathBuf, peer: &str| {
        let text = std::fs::read_to_string(&config).unwrap().replacen(
            "[dhcp]\nmode = \"full\"\n",
            &format!("[dhcp]\nmode = \"full\"\npeer = \"{peer}\"\n"),
            1,
        );
        assert!(text.contains("peer = "), "{text}");
        std::fs::write(&config, text).unwrap();
        config
    };
    let a = with_peer(
        node(
            dir_a.path(),
            "127.0.0.1",
            "split-a",
            ports,
            &url,
            "shared = true",
        ),
        "split-b",
    );
    let b = with_peer(
        node(
            dir_b.path(),
            "127.0.0.2",
            "split-b",
            ports,
            &url,
            "shared = true",
        ),
        "split-a",
    );
    let bases = [
        format!("http://127.0.0.1:{}", ports.0),
        format!("http://127.0.0.2:{}", ports.0),
    ];
    let mut servers = [Some(Server::start(&a)), None];
    assert!(healthy(&bases[0], Duration::from_secs(10)).await, "A up");
    servers[1] = Some(Server::start(&b));
    assert!(healthy(&bases[1], Duration::from_secs(10)).await, "B up");

    image_on_both(&bases[0], dir_a.path(), dir_b.path()).await;
    // Each answers its own half only once the other gave it back.
    tokio::time::sleep(Duration::from_secs(3)).await;

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

    let mut db = {
        use sqlx::Connection;
        sqlx::PgConnection::connect(&url).await.unwrap()
    };
    a_fifth_confirmed(&mut db).await;
    // Kill the one that answered more.
    let replies = [
        counter(&bases[0], "ironboot_dhcp_replies_total").await,
        counter(&bases[1], "ironboot_dhcp_replies_total").await,
    ];
    assert!(
        replies[0] > 0 && replies[1] > 0,
        "both answered: {replies:?}"
    );
    let dead = usize::from(replies[1] > replies[0]);
    let survivor = 1 - dead;
    // A probe client of the dead server's half asks the survivor every
    // 100 ms: the failover is when it is answered.
    let dead_half = u8::from(dead == 1); // split-a sorts first: half 0
    let probe_mac = (0..=255u8)
        .map(|n| [0x52, 0x54, 0x00, 0x99, 0x00, n])
        .find(|m| ironboot::domain::lease::half_of(ironboot::domain::MacAddr(*m)) == dead_half)
        .unwrap();
    let probe = common::dhcp_client::Relay::new(
        Ipv4Addr::new(127, 1, 0, 9),
        dhcp(["127.0.0.1", "127.0.0.2"][survivor]),
    )
    .await;
    servers[dead].take(); // SIGKILL, reaped
    let killed = Instant::now();
    let mut failover = None;
    for round in 0..100u32 {
        let discover = common::dhcp_client::message(
            common::dhcp_client::Client::Ipxe,
            dhcproto::v4::MessageType::Discover,
            probe_mac,
            0x9900_0000 + round,
            Ipv4Addr::new(127, 1, 0, 9),
        );
        probe.send(&discover).await;
        if probe
            .recv(discover.xid(), Duration::from_millis(100))
            .await
            .is_some()
        {
            failover = Some(killed.elapsed());
            break;
        }
    }
    let failover = failover.expect("the survivor did not answer the dead server's half in 10 s");

    let report = storm.await.unwrap();
    eprintln!(
        "replies before the kill {replies:?}, killed {}, failover {failover:?}\n{report}",
        ["A", "B"][dead]
    );
    assert!(failover < Duration::from_secs(5), "failover {failover:?}");
    assert!(
        report.completed * 1000 >= MACHINES * 999,
        "at least 99.9 % boot: {report}"
    );
    assert_eq!(report.addresses_shared, 0, "{report}");
    let (leases, addresses, macs): (i64, i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(DISTINCT ip), COUNT(DISTINCT mac) FROM leases
         WHERE state = 'bound' AND ip LIKE '127.77.%'",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!((leases, addresses), (macs, macs), "one address per machine");
    assert!(macs >= report.completed as i64);
}
