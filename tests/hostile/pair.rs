//! An HA pair on one segment (issue 16, `[dhcp] peer` with `[store]
//! shared`): two servers with the same subnet both answer, each the
//! clients of its half (a hash of the MAC); one is killed with SIGKILL and
//! the other answers its half within 5 s, renewing the same addresses;
//! restarted, it takes its half back. No address is ever ACKed to two
//! clients. PostgreSQL only (CI's PostgreSQL pass).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, MessageType};

use crate::common::api::Api;
use crate::common::dhcp_client::{message, msg_type, with, Client, Relay};
use crate::process::Server;
use crate::standby::{node_as, row, servers, Node};

const RELAY: Ipv4Addr = Ipv4Addr::new(127, 1, 0, 1);

fn pair_node(dir: &Path, name: &str, peer: &str, url: &str) -> Node {
    let node = node_as(dir, name, url, "shared = true");
    let text = std::fs::read_to_string(&node.config).unwrap();
    let text = text.replacen(
        "[dhcp]\nmode = \"full\"\n",
        &format!("[dhcp]\nmode = \"full\"\npeer = \"{peer}\"\n"),
        1,
    );
    assert!(text.contains("peer = "), "{text}");
    std::fs::write(&node.config, text).unwrap();
    node
}

/// Which server answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum By {
    A,
    B,
}

/// DISCOVER to both servers (a relay with two helper addresses), then
/// REQUEST to the one that offered: the address and who ACKed it. Panics
/// if both offer.
async fn lease_from_pair(a: &Relay, b: &Relay, m: [u8; 6], xid: u32) -> Option<(Ipv4Addr, By)> {
    let discover = message(Client::Ipxe, MessageType::Discover, m, xid, RELAY);
    a.send(&discover).await;
    b.send(&discover).await;
    let wait = Duration::from_millis(150);
    let (from_a, from_b) = tokio::join!(a.recv(xid, wait), b.recv(xid, wait));
    let (relay, offer, by) = match (from_a, from_b) {
        (Some(_), Some(_)) => panic!("both servers offered to {m:02x?}"),
        (Some(o), None) => (a, o, By::A),
        (None, Some(o)) => (b, o, By::B),
        (None, None) => return None,
    };
    let ip = offer.yiaddr();
    let req = with(
        with(
            message(Client::Ipxe, MessageType::Request, m, xid + 1, RELAY),
            DhcpOption::RequestedIpAddress(ip),
        ),
        DhcpOption::ServerIdentifier(Ipv4Addr::LOCALHOST),
    );
    let ack = relay.exchange(&req).await?;
    (msg_type(&ack) == Some(MessageType::Ack)).then_some((ip, by))
}

fn client(n: u16) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x17, (n >> 8) as u8, n as u8]
}

/// Every address ACKed so far, by client: none twice.
fn record(given: &mut HashMap<Ipv4Addr, [u8; 6]>, ip: Ipv4Addr, m: [u8; 6]) {
    if let Some(other) = given.insert(ip, m) {
        assert_eq!(other, m, "{ip} ACKed to {other:02x?} and {m:02x?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_answer_their_half_and_each_covers_for_the_other() {
    if crate::common::postgres_base().is_none() {
        eprintln!("skipped: an HA pair needs PostgreSQL (IRONBOOT_TEST_POSTGRES); CI's PostgreSQL pass runs it");
        return;
    }
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let url = crate::common::test_store_url(dir_a.path()).await.unwrap();
    let a = pair_node(dir_a.path(), "ha-a", "ha-b", &url);
    let b = pair_node(dir_b.path(), "ha-b", "ha-a", &url);
    let server_a = Server::start(&a.config).healthy(&a.base).await;
    let _server_b = Server::start(&b.config).healthy(&b.base).await;
    let api = Api::at(&a.base, dir_a.path());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = servers(&api).await;
        if row(&rows, "ha-a").is_some_and(|r| r["peer"] == "ha-b")
            && row(&rows, "ha-b").is_some_and(|r| r["peer"] == "ha-a")
        {
            break;
        }
        assert!(Instant::now() < deadline, "the pair's rows: {rows:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (relay_a, relay_b) = (
        Relay::new(RELAY, a.dhcp).await,
        Relay::new(RELAY, b.dhcp).await,
    );
    let mut given = HashMap::new();

    // Both answer, each its half (each answers its own half 1.2 s after it
    // started, and A may still cover B's half for a moment after B came
    // up: wait until every client is answered and B answers some).
    let mut owner = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut xid = 0x1700_0000;
    loop {
        owner.clear();
        for n in 0..40 {
            xid += 2;
            let Some((ip, by)) = lease_from_pair(&relay_a, &relay_b, client(n), xid).await else {
                break;
            };
            record(&mut given, ip, client(n));
            owner.insert(n, (by, ip));
        }
        let by_b = owner.values().filter(|(by, _)| *by == By::B).count();
        if owner.len() == 40 && by_b > 5 && by_b < 35 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no split after 10 s: {} of 40 answered, {by_b} through B",
            owner.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "split: {} through A, {} through B",
        owner.values().filter(|(by, _)| *by == By::A).count(),
        owner.values().filter(|(by, _)| *by == By::B).count()
    );

    // A dies; B answers A's half within 5 s, with the addresses A gave.
    drop(server_a);
    let killed = Instant::now();
    let (first_of_a, (_, ip_of_a)) = owner
        .iter()
        .find(|(_, (by, _))| *by == By::A)
        .map(|(n, v)| (*n, *v))
        .unwrap();
    loop {
        xid += 2;
        if let Some((ip, by)) = lease_from_pair(&relay_a, &relay_b, client(first_of_a), xid).await {
            assert_eq!((ip, by), (ip_of_a, By::B), "B renews A's binding");
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "B did not take A's half within 5 s"
        );
    }
    let takeover = killed.elapsed();
    eprintln!("takeover: {takeover:?}");
    for (n, (_, ip)) in &owner {
        xid += 2;
        let (again, by) = lease_from_pair(&relay_a, &relay_b, client(*n), xid)
            .await
            .unwrap_or_else(|| panic!("client {n} got no lease from B"));
        assert_eq!((again, by), (*ip, By::B), "client {n} keeps its address");
    }
    for n in 40..60 {
        xid += 2;
        let (ip, by) = lease_from_pair(&relay_a, &relay_b, client(n), xid)
            .await
            .unwrap_or_else(|| panic!("new client {n} got no lease from B"));
        assert_eq!(by, By::B);
        record(&mut given, ip, client(n));
        owner.insert(n, (By::B, ip));
    }

    // A comes back and takes its half back, the addresses B gave its
    // clients meanwhile included.
    let _server_a = Server::start(&a.config).healthy(&a.base).await;
    let back = Instant::now();
    let deadline = back + Duration::from_secs(10);
    loop {
        xid += 2;
        if let Some((ip, By::A)) =
            lease_from_pair(&relay_a, &relay_b, client(first_of_a), xid).await
        {
            assert_eq!(ip, ip_of_a);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A did not take its half back in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("given back after {:?}", back.elapsed());
    let mut through_a = 0;
    for (n, (_, ip)) in &owner {
        xid += 2;
        let (again, by) = lease_from_pair(&relay_a, &relay_b, client(*n), xid)
            .await
            .unwrap_or_else(|| panic!("client {n} got no lease after A came back"));
        assert_eq!(again, *ip, "client {n} keeps its address");
        through_a += usize::from(by == By::A);
    }
    assert!(
        through_a > 5,
        "A answers its half again ({through_a} of {})",
        owner.len()
    );
    for n in 60..80 {
        xid += 2;
        let (ip, _) = lease_from_pair(&relay_a, &relay_b, client(n), xid)
            .await
            .unwrap_or_else(|| panic!("new client {n} got no lease"));
        record(&mut given, ip, client(n));
    }
}
