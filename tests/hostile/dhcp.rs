//! DHCP on a hostile network: option 82 believed only from trusted relays,
//! DISCOVER floods from made-up MACs leave nothing permanent and starve no
//! real client, and option 12 never overwrites the operator's host name.

use std::net::Ipv4Addr;
use std::time::Duration;

use dhcproto::v4::{DhcpOption, MessageType};
use serde_json::json;

use crate::common::dhcp_client::{
    encode_with_raw, message, msg_type, opt_bytes, with, Client, Relay,
};
use crate::common::TestServer;

const RELAY: Ipv4Addr = Ipv4Addr::new(127, 1, 0, 1);
/// A relay address the test config does not trust.
const ROGUE: Ipv4Addr = Ipv4Addr::new(127, 1, 0, 9);

fn opt82(circuit: &str) -> Vec<u8> {
    let mut info = vec![1, circuit.len() as u8];
    info.extend_from_slice(circuit.as_bytes());
    info.extend_from_slice(&[2, 6]);
    info.extend_from_slice(b"leaf-3");
    let mut opt = vec![82, info.len() as u8];
    opt.extend_from_slice(&info);
    opt
}

/// `n` DISCOVERs through `relay` from made-up MACs `02:<tag>:…`, without
/// waiting for answers.
async fn flood(relay: &Relay, tag: u8, n: u32, xid: u32) {
    for i in 0..n {
        let m = [0x02, tag, 0x00, (i >> 16) as u8, (i >> 8) as u8, i as u8];
        let discover = message(
            Client::BiosPxe,
            MessageType::Discover,
            m,
            xid + i,
            relay.giaddr,
        );
        relay.send(&discover).await;
    }
}

/// DISCOVER and REQUEST with `raw` options appended; the ACKed address.
async fn dora(
    relay: &Relay,
    m: [u8; 6],
    xid: u32,
    raw: &[u8],
    extra: Option<DhcpOption>,
) -> Option<Ipv4Addr> {
    let mut d = message(Client::Ipxe, MessageType::Discover, m, xid, relay.giaddr);
    if let Some(o) = extra.clone() {
        d = with(d, o);
    }
    let offer = relay.exchange_bytes(&encode_with_raw(&d, raw)).await?;
    if opt_bytes(&offer, 53) != Some(vec![2]) {
        return None;
    }
    let ip = Ipv4Addr::new(offer[16], offer[17], offer[18], offer[19]);
    let mut r = with(
        with(
            message(Client::Ipxe, MessageType::Request, m, xid + 1, relay.giaddr),
            DhcpOption::RequestedIpAddress(ip),
        ),
        DhcpOption::ServerIdentifier(Ipv4Addr::LOCALHOST),
    );
    if let Some(o) = extra {
        r = with(r, o);
    }
    let ack = relay.exchange_bytes(&encode_with_raw(&r, raw)).await?;
    (opt_bytes(&ack, 53) == Some(vec![5])).then_some(ip)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn option_82_from_an_untrusted_relay_is_neither_believed_nor_stored() {
    let server = TestServer::full("").await;
    let rogue = Relay::new(ROGUE, server.dhcp()).await;
    let trusted = Relay::new(RELAY, server.dhcp()).await;
    let victim = [0x52, 0x54, 0x00, 0xcc, 0x00, 0x01];
    let newcomer = [0x52, 0x54, 0x00, 0xcc, 0x00, 0x02];
    dora(&trusted, victim, 0x8200, &opt82("Eth1/7"), None)
        .await
        .expect("victim bound");
    // Same port claimed through a relay nobody trusts (the rogue's giaddr
    // selects the same subnet, and the reply still echoes option 82).
    dora(&rogue, newcomer, 0x8210, &opt82("Eth1/7"), None)
        .await
        .expect("newcomer bound");
    let dir = server.stop().await;
    let db = TestServer::db(dir.path()).await;
    let rows: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT mac, circuit_id FROM machines ORDER BY mac")
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(
        rows,
        vec![
            ("52:54:00:cc:00:01".into(), Some("Eth1/7".into())),
            ("52:54:00:cc:00:02".into(), None),
        ],
        "only the trusted relay's option 82 is stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discover_flood_leaves_nothing_and_starves_no_one() {
    let server = TestServer::full("").await;
    let relay = Relay::new(RELAY, server.dhcp()).await;
    // 150 DISCOVERs from made-up MACs against a range of four addresses.
    flood(&relay, 0x66, 150, 0x9000).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A real client retries as PXE firmware does (4 s, 8 s …): once the
    // flood's offers are older than the minimum hold, it gets an address.
    let real = [0x52, 0x54, 0x00, 0xcc, 0x00, 0x10];
    // Its own relay socket: the flood's OFFERs wait in the first one.
    let relay = Relay::new(RELAY, server.dhcp()).await;
    let mut bound = None;
    for attempt in 0..4 {
        if let Some(ip) = dora(&relay, real, 0xa000 + attempt * 2, &[], None).await {
            bound = Some(ip);
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let ip = bound.expect("the real client is served within the flood");
    assert_eq!(ip.octets()[..3], [127, 1, 0]);
    let dir = server.stop().await;
    let db = TestServer::db(dir.path()).await;
    let (flood,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM machines WHERE mac LIKE '02:66:%'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(flood, 0, "DISCOVERs from made-up MACs made no machine");
}

/// New MACs are taken on at a bounded rate per relay and in all; machines
/// the server knows are answered whatever the flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_seen_clients_are_rate_limited_known_ones_are_not() {
    let server =
        TestServer::full("new_clients_per_minute = 5\nnew_clients_per_minute_total = 8").await;
    let relay = Relay::new(RELAY, server.dhcp()).await;
    flood(&relay, 0x67, 50, 0xb000).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let limited = server.counter("dhcp_new_clients_limited").await;
    assert!(
        (44..=45).contains(&limited),
        "5 of 50 new MACs from one relay answered, {limited} refused"
    );

    // Another relay has its own bucket, inside what is left of the total.
    let other = Relay::new(Ipv4Addr::new(127, 2, 0, 1), server.dhcp()).await;
    let offer = other
        .exchange(&message(
            Client::BiosPxe,
            MessageType::Discover,
            [0x02, 0x68, 0, 0, 0, 1],
            0xc000,
            other.giaddr,
        ))
        .await
        .expect("a new machine behind another relay is answered");
    assert_eq!(msg_type(&offer), Some(MessageType::Offer));

    // The reserved (known) machine boots through the exhausted relay.
    let fresh = Relay::new(RELAY, server.dhcp()).await;
    let ip = dora(
        &fresh,
        [0x52, 0x54, 0x00, 0x00, 0x00, 0x01],
        0xd000,
        &[],
        None,
    )
    .await
    .expect("a known machine is never rate-limited");
    assert_eq!(ip, Ipv4Addr::new(127, 1, 0, 50));
    server.stop().await;
}

/// Registrations expire: a MAC that leased and left without ever booting is
/// forgotten after `forget_unbooted_after`; one the operator labelled, one
/// that booted and one still holding its lease are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_booted_machines_are_forgotten_owned_ones_kept() {
    let server = TestServer::full("forget_unbooted_after = \"2s\"").await;
    let relay = Relay::new(RELAY, server.dhcp()).await;
    let base = format!("http://{}", server.bound.http);
    let token = std::fs::read_to_string(server.dir.path().join("data/admin.token")).unwrap();
    let http = reqwest::Client::new();
    let (gone, labelled, booted, holding) = (
        [0x02, 0x69, 0, 0, 0, 1],
        [0x02, 0x69, 0, 0, 0, 2],
        [0x02, 0x69, 0, 0, 0, 3],
        [0x02, 0x69, 0, 0, 0, 4],
    );
    let text = |m: [u8; 6]| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    for (i, m) in [gone, labelled, booted, holding].into_iter().enumerate() {
        let ip = dora(&relay, m, 0xe000 + 16 * i as u32, &[], None)
            .await
            .expect("leased");
        if m == holding {
            continue;
        }
        let mut release = message(
            Client::Ipxe,
            MessageType::Release,
            m,
            0xe100 + i as u32,
            RELAY,
        );
        release.set_ciaddr(ip);
        relay.send(&release).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = http
        .patch(format!("{base}/api/v1/machines/{}", text(labelled)))
        .bearer_auth(token.trim())
        .json(&json!({ "labels": { "rack": "r1" } }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    // The test config has no binding: the script request stands in for the
    // machine's boot.
    let r = http
        .get(format!("{base}/boot/{}.ipxe", text(booted)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let known = |m: [u8; 6]| {
        let (http, base, token) = (&http, &base, token.trim());
        async move {
            http.get(format!("{base}/api/v1/machines/{}", text(m)))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                == 200
        }
    };
    assert!(known(gone).await);
    let mut forgotten = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if !known(gone).await {
            forgotten = true;
            break;
        }
    }
    assert!(forgotten, "the never-booted machine is forgotten");
    for m in [labelled, booted, holding] {
        assert!(known(m).await, "{} is kept", text(m));
    }
    // It comes back as a new client if it returns.
    assert!(dora(&relay, gone, 0xe200, &[], None).await.is_some());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn option_12_never_overwrites_the_operators_host_name() {
    let server = TestServer::full("").await;
    let relay = Relay::new(RELAY, server.dhcp()).await;
    let m = [0x52, 0x54, 0x00, 0xcc, 0x00, 0x20];
    let mac = "52:54:00:cc:00:20";
    dora(&relay, m, 0xb000, &[], None).await.expect("bound");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let base = format!("http://{}", server.bound.http);
    let token = std::fs::read_to_string(server.dir.path().join("data/admin.token")).unwrap();
    let http = reqwest::Client::new();
    let r = http
        .patch(format!("{base}/api/v1/machines/{mac}"))
        .bearer_auth(token.trim())
        .json(&json!({ "hostname": "db-7" }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    // Anyone sends option 12 for that MAC.
    dora(
        &relay,
        m,
        0xb010,
        &[],
        Some(DhcpOption::Hostname("evil".into())),
    )
    .await
    .expect("renewed");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let dir = server.stop().await;
    let db = TestServer::db(dir.path()).await;
    let row: (Option<String>, Option<String>) =
        sqlx::query_as("SELECT hostname, reported_hostname FROM machines WHERE mac = $1")
            .bind(mac)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(row, (Some("db-7".into()), Some("evil".into())));
    let _ = msg_type;
}
