//! Relay identity on loopback: a machine relayed with option 82 (circuit-id,
//! remote-id) whose group says `identity = port` is replaced by a new one
//! (new MAC, same switch port). The replacement inherits the old machine's
//! role, labels and pinned generation without registration, boots that
//! generation, and the ledger says which identity matched. A new MAC in
//! another port is an ordinary new machine.

use std::net::Ipv4Addr;
use std::time::Duration;

use dhcproto::v4::MessageType;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::common;
use crate::common::dhcp_client::{encode_with_raw, message, Client, Relay};
use crate::common::{full_config, http_get, TestServer};

const OLD: [u8; 6] = [0x52, 0x54, 0x00, 0x82, 0x00, 0x01];
const NEW: [u8; 6] = [0x52, 0x54, 0x00, 0x82, 0x00, 0x02];
const ELSEWHERE: [u8; 6] = [0x52, 0x54, 0x00, 0x82, 0x00, 0x03];
const GIADDR: Ipv4Addr = Ipv4Addr::new(127, 1, 0, 1);

fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// Option 82 as a relay appends it: circuit-id and remote-id.
fn relay_info(circuit: &str, remote: &str) -> Vec<u8> {
    let mut sub = vec![1, circuit.len() as u8];
    sub.extend_from_slice(circuit.as_bytes());
    sub.extend([2, remote.len() as u8]);
    sub.extend_from_slice(remote.as_bytes());
    let mut opt = vec![82, sub.len() as u8];
    opt.extend(sub);
    opt
}

/// An iPXE client's DISCOVER and REQUEST through the relay (a new MAC is
/// remembered once it is bound); the replies carry the relay information
/// back.
async fn discover(relay: &Relay, mac: [u8; 6], xid: u32, circuit: &str) {
    let m = message(Client::Ipxe, MessageType::Discover, mac, xid, GIADDR);
    let info = relay_info(circuit, "leaf-3");
    let reply = relay
        .exchange_bytes(&encode_with_raw(&m, &info))
        .await
        .expect("an offer");
    assert_eq!(
        common::dhcp_client::opt_bytes(&reply, 82).unwrap(),
        info[2..],
        "relay information echoed"
    );
    let offered = std::net::Ipv4Addr::new(reply[16], reply[17], reply[18], reply[19]);
    let r = common::dhcp_client::with(
        common::dhcp_client::with(
            message(Client::Ipxe, MessageType::Request, mac, xid + 1, GIADDR),
            dhcproto::v4::DhcpOption::RequestedIpAddress(offered),
        ),
        dhcproto::v4::DhcpOption::ServerIdentifier(std::net::Ipv4Addr::LOCALHOST),
    );
    let ack = relay
        .exchange_bytes(&encode_with_raw(&r, &info))
        .await
        .expect("an ACK");
    assert_eq!(
        common::dhcp_client::opt_bytes(&ack, 53),
        Some(vec![5]),
        "ACK"
    );
}

async fn upload(http: &reqwest::Client, base: &str, token: &str, bytes: &[u8]) -> String {
    let hex = hex::encode(Sha256::digest(bytes));
    let resp = http
        .put(format!("{base}/api/v1/artifacts/sha256/{hex}"))
        .bearer_auth(token)
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    hex
}

/// Imports two generations of `worker` and points `default` at the first.
async fn operator(server: &TestServer) {
    let base = format!("http://{}", server.bound.http);
    let token = std::fs::read_to_string(server.dir.path().join("data/admin.token")).unwrap();
    let token = token.trim();
    // No idle connections kept: the server's graceful stop waits for them.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for cmdline in ["gen=1", "gen=2"] {
        let k = upload(&http, &base, token, b"kernel").await;
        let i = upload(&http, &base, token, b"initrd").await;
        let manifest = json!({
            "arch": "x86_64",
            "kernel": { "name": "vmlinuz", "digest": k, "size": 6 },
            "initrds": [{ "name": "initrd.img", "digest": i, "size": 6 }],
            "rootfs": null,
            "cmdline": cmdline,
        });
        let resp = http
            .post(format!("{base}/api/v1/streams/worker/generations"))
            .bearer_auth(token)
            .json(&manifest)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
    }
    let resp = http
        .put(format!("{base}/api/v1/groups/default/generation"))
        .bearer_auth(token)
        .json(&json!({ "stream": "worker", "generation": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

async fn script(server: &TestServer, mac: [u8; 6]) -> String {
    let path = format!(
        "/boot/{}.ipxe?buildarch=x86_64",
        mac_text(mac).replace(':', "-")
    );
    http_get(server.bound.http, &path).await
}

/// Polls the database (the ledger commits in batches) until `sql` returns
/// a row; that row's columns as text.
async fn row(dir: &std::path::Path, sql: &str, mac: &str) -> Vec<Option<String>> {
    use sqlx::Row;
    let db = TestServer::db(dir).await;
    for _ in 0..50 {
        if let Some(r) = sqlx::query(sql)
            .bind(mac)
            .fetch_optional(&db)
            .await
            .unwrap()
        {
            return (0..r.len())
                .map(|i| {
                    r.try_get::<Option<String>, _>(i)
                        .or_else(|_| {
                            r.try_get::<Option<i64>, _>(i)
                                .map(|v| v.map(|n| n.to_string()))
                        })
                        .unwrap_or(None)
                })
                .collect();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{sql} ({mac}): no row");
}

#[tokio::test]
async fn a_replacement_in_the_same_switch_port_boots_the_same_generation() {
    let server = TestServer::full("").await;
    operator(&server).await;
    let relay = Relay::new(GIADDR, server.dhcp()).await;
    discover(&relay, OLD, 0x8201, "Eth1/7").await;
    assert!(script(&server, OLD)
        .await
        .contains("-> worker gen 1 (boot "));

    // The operator says: this group's machines are known by their port;
    // the old machine is a database server pinned to generation 2. (Set in
    // the database between runs: group variables and labels have no API
    // here.)
    let dir = server.stop().await;
    {
        let db = TestServer::db_rw(dir.path()).await;
        sqlx::query(
            "UPDATE groups SET variables = '{\"identity\": \"port\"}' WHERE name = 'default'",
        )
        .execute(&db)
        .await
        .unwrap();
        sqlx::query("UPDATE machines SET labels = '{\"role\": \"db\"}', pin_stream = 'worker', pin_generation = 2, hostname = 'db-7' WHERE mac = $1")
            .bind(mac_text(OLD))
            .execute(&db)
            .await
            .unwrap();
        db.close().await;
    }
    let text = full_config(dir.path(), "");
    let server = TestServer::start(&text, dir).await;
    let relay = Relay::new(GIADDR, server.dhcp()).await;

    // The replacement: a new MAC in port Eth1/7 of leaf-3.
    discover(&relay, NEW, 0x8202, "Eth1/7").await;
    let new_script = script(&server, NEW).await;
    assert!(
        new_script.contains(&format!("{} -> worker gen 2 (boot ", mac_text(NEW))),
        "the replacement boots the old machine's pinned generation:\n{new_script}"
    );
    // Another port: an ordinary new machine, the group's generation.
    discover(&relay, ELSEWHERE, 0x8203, "Eth1/8").await;
    assert!(script(&server, ELSEWHERE)
        .await
        .contains("-> worker gen 1 (boot "));

    let dir = server.dir.path().to_path_buf();
    let new = row(
        &dir,
        "SELECT group_name, labels, pin_stream, pin_generation, hostname, circuit_id, remote_id FROM machines WHERE mac = $1 AND pin_stream IS NOT NULL",
        &mac_text(NEW),
    )
    .await;
    assert_eq!(new[0].as_deref(), Some("default"));
    let labels: Value = serde_json::from_str(new[1].as_deref().unwrap()).unwrap();
    assert_eq!(labels, json!({ "role": "db" }));
    assert_eq!(
        (new[2].as_deref(), new[3].as_deref()),
        (Some("worker"), Some("2"))
    );
    assert_eq!(new[4].as_deref(), Some("db-7"));
    assert_eq!(
        (new[5].as_deref(), new[6].as_deref()),
        (Some("Eth1/7"), Some("leaf-3"))
    );

    let replaced = row(
        &dir,
        "SELECT detail FROM events WHERE mac = $1 AND step = 'machine.replaced'",
        &mac_text(NEW),
    )
    .await;
    let detail: Value = serde_json::from_str(replaced[0].as_deref().unwrap()).unwrap();
    assert_eq!(detail["replaces"], mac_text(OLD));
    assert_eq!(detail["port"]["circuit_id"], "Eth1/7");
    let served = row(
        &dir,
        "SELECT detail FROM events WHERE mac = $1 AND step = 'boot.script'",
        &mac_text(NEW),
    )
    .await;
    let detail: Value = serde_json::from_str(served[0].as_deref().unwrap()).unwrap();
    assert_eq!(detail["identity"]["by"], "port", "{detail}");
    assert_eq!(detail["identity"]["replaces"], mac_text(OLD), "{detail}");
    let other = row(
        &dir,
        "SELECT detail FROM events WHERE mac = $1 AND step = 'boot.script'",
        &mac_text(ELSEWHERE),
    )
    .await;
    let detail: Value = serde_json::from_str(other[0].as_deref().unwrap()).unwrap();
    assert_eq!(detail["identity"]["by"], "mac", "{detail}");
    server.stop().await;
}
