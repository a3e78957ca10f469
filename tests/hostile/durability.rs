//! An ACK is a promise: every lease the server ACKed is in SQLite before
//! the ACK left, so a SIGKILL right after it loses none, and after the
//! restart no ACKed address is offered to another client.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::binding::lease;
use crate::common::dhcp_client::Relay;
use crate::process::{free_port, Server};

const RELAY: Ipv4Addr = Ipv4Addr::new(127, 1, 0, 1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_leases_survive_sigkill() {
    let dir = tempfile::TempDir::new().unwrap();
    let port = free_port();
    let text = crate::common::full_config(dir.path(), "")
        .replacen(
            "[dhcp]\nmode = \"full\"\nlisten = \"127.0.0.1:0\"",
            &format!("[dhcp]\nmode = \"full\"\nlisten = \"127.0.0.1:{port}\""),
            1,
        )
        .replace(
            "range = [\"127.1.0.100\", \"127.1.0.103\"]",
            "range = [\"127.1.0.10\", \"127.1.0.250\"]",
        );
    assert!(text.contains(&format!(":{port}\"")), "{text}");
    let text = crate::common::on_test_store(&text, dir.path()).await;
    let config = dir.path().join("ironboot.toml");
    std::fs::write(&config, text).unwrap();
    let server_addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let mut acked: Vec<([u8; 6], Ipv4Addr)> = Vec::new();
    for round in 0..3u8 {
        let server = Server::start(&config);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let relay = Relay::new(RELAY, server_addr).await;
        // Up to 20 clients, as fast as the server answers; the kill comes
        // right after the last ACK.
        for i in 0..20u8 {
            let m = [0x52, 0x54, 0x00, 0xdd, round, i];
            let xid = 0xd000 + u32::from(round) * 256 + u32::from(i) * 2;
            let mut got = None;
            for _ in 0..20 {
                got = lease(&relay, m, xid).await;
                if got.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            acked.push((m, got.expect("served once the server is up")));
        }
        drop(server); // SIGKILL within microseconds of the last ACK
        let db = crate::common::TestServer::db(dir.path()).await;
        for (m, ip) in &acked {
            let mac = m.map(|b| format!("{b:02x}")).join(":");
            let row: Option<(String,)> =
                sqlx::query_as("SELECT mac FROM leases WHERE ip = $1 AND state = 'bound'")
                    .bind(ip.to_string())
                    .fetch_optional(&db)
                    .await
                    .unwrap();
            assert_eq!(
                row,
                Some((mac,)),
                "round {round}: the ACKed lease of {ip} was lost"
            );
        }
        db.close().await;
    }
    // After the last restart, a new client never gets an address already
    // ACKed to someone else.
    let _server = Server::start(&config);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let relay = Relay::new(RELAY, server_addr).await;
    let mut fresh = None;
    for _ in 0..20 {
        fresh = lease(&relay, [0x52, 0x54, 0x00, 0xdd, 9, 9], 0xe000).await;
        if fresh.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fresh = fresh.expect("a new client is served");
    assert!(
        !acked.iter().any(|(_, ip)| *ip == fresh),
        "{fresh} was already ACKed to another client"
    );
}
