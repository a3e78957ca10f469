//! Kea's perfdhcp (a real, independent DHCP client implementation) against
//! ironboot on loopback, as a relay (giaddr 127.0.0.1): a bounded run must
//! complete with no lost exchange, and every client's lease is persisted.

use std::process::Command;
use std::time::Duration;

use crate::common::{require_or_skip, TestServer};

const CLIENTS: u32 = 500;
const EXCHANGES: u32 = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn perfdhcp_completes_a_bounded_run_without_drops() {
    let _alone = crate::alone().await;
    if !require_or_skip(&["perfdhcp"]) {
        return;
    }
    let dir = tempfile::TempDir::new().unwrap();
    let config = format!(
        r#"
server_ip = "127.0.0.1"
data_dir = "{}"
[http]
listen = "127.0.0.1:0"
[tftp]
enabled = false
[dhcp]
mode = "full"
serve_all = true            # perfdhcp sends no PXE options
listen = "127.0.0.1:0"
[[dhcp.subnet]]
network = "127.0.0.0/16"
range = ["127.0.1.1", "127.0.100.254"]
lease_time = "1h"
"#,
        dir.path().join("data").display()
    );
    let server = TestServer::start(&config, dir).await;
    let server_port = server.dhcp().port();
    // perfdhcp plays the relay: it needs a fixed local port for the replies.
    let local_port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .args(["120", "perfdhcp", "-4", "-l", "127.0.0.1"])
            .args([
                "-L",
                &local_port.to_string(),
                "-N",
                &server_port.to_string(),
            ])
            .args([
                "-r",
                "200",
                "-n",
                &EXCHANGES.to_string(),
                "-R",
                &CLIENTS.to_string(),
            ])
            .args(["-W", "2000000", "127.0.0.1"])
            .output()
            .expect("perfdhcp runs")
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    eprintln!("{text}");
    assert!(
        output.status.success(),
        "perfdhcp exited with {:?}",
        output.status
    );
    let field = |name: &str| -> Vec<u64> {
        text.lines()
            .filter_map(|l| l.strip_prefix(name))
            .filter_map(|v| v.trim().parse().ok())
            .collect()
    };
    assert_eq!(
        field("sent packets:"),
        [EXCHANGES as u64, EXCHANGES as u64],
        "DISCOVERs and REQUESTs sent"
    );
    assert_eq!(
        field("received packets:"),
        [EXCHANGES as u64, EXCHANGES as u64],
        "every OFFER and ACK received"
    );
    assert_eq!(field("drops:"), [0, 0], "no lost exchanges");

    let dir = server.stop().await;
    let db = TestServer::db(dir.path()).await;
    let (leases,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM leases WHERE state = 'bound'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(
        leases, CLIENTS as i64,
        "each distinct client's lease persisted once"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
}
