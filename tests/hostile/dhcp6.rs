//! DHCPv6 under attack and under SIGKILL: a Reply is a promise (its leases
//! are committed before it leaves, so a kill right after it loses none and
//! a restart never hands the address to another machine); garbage and
//! made-up clients get nothing lasting.

use std::net::{Ipv6Addr, SocketAddr};
use std::time::Duration;

use dhcproto::v6::{DhcpOption, MessageType};

use crate::common::dhcp6_client::*;
use crate::process::{free_port, Server};

/// Solicit + Request for `mac` (DUID-LLT): the bound address.
async fn bind(client: &Client6, mac: [u8; 6]) -> Option<Ipv6Addr> {
    let duid = duid_llt(mac);
    let adv = client
        .exchange(&message(
            MessageType::Solicit,
            Firmware::OvmfPxe,
            &duid,
            &[(1, None)],
        ))
        .await?;
    let (_, ip) = *addresses(&adv).first()?;
    let mut req = message(
        MessageType::Request,
        Firmware::OvmfPxe,
        &duid,
        &[(1, Some(ip))],
    );
    req.opts_mut().insert(DhcpOption::ServerId(server_id(&adv)));
    let reply = client.exchange(&req).await?;
    addresses(&reply).first().map(|(_, ip)| *ip)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dhcp6_replies_survive_sigkill() {
    let dir = tempfile::TempDir::new().unwrap();
    let port = free_port();
    let text = format!(
        "{}\n{}",
        crate::common::full_config(dir.path(), ""),
        // The first `listen` is DHCPv6's (HTTP's and TFTP's stay on 0).
        crate::common::DHCP6_LOOPBACK.replacen(
            "\nlisten = \"[::1]:0\"",
            &format!("\nlisten = \"[::1]:{port}\""),
            1
        )
    );
    assert!(text.contains(&format!("[::1]:{port}")));
    let text = crate::common::on_test_store(&text, dir.path()).await;
    let config = dir.path().join("ironboot.toml");
    std::fs::write(&config, text).unwrap();
    let server_addr: SocketAddr = format!("[::1]:{port}").parse().unwrap();

    let mut bound: Vec<([u8; 6], Ipv6Addr)> = Vec::new();
    for round in 0..3u8 {
        let server = Server::start(&config);
        let client = Client6::new(server_addr).await;
        for i in 0..15u8 {
            let mac = [0x52, 0x54, 0x00, 0x6d, round, i];
            let mut got = None;
            for _ in 0..30 {
                got = bind(&client, mac).await;
                if got.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            bound.push((mac, got.expect("served once the server is up")));
        }
        drop(server); // SIGKILL right after the last Reply
        let db = crate::common::TestServer::db(dir.path()).await;
        for (mac, ip) in &bound {
            let text = mac.map(|b| format!("{b:02x}")).join(":");
            let row: Option<(String,)> =
                sqlx::query_as("SELECT mac FROM leases WHERE ip = $1 AND state = 'bound'")
                    .bind(ip.to_string())
                    .fetch_optional(&db)
                    .await
                    .unwrap();
            assert_eq!(
                row,
                Some((text,)),
                "round {round}: the lease of {ip} was lost"
            );
        }
        db.close().await;
    }
    // After the last restart, another machine never gets a bound address.
    let _server = Server::start(&config);
    let client = Client6::new(server_addr).await;
    let mut fresh = None;
    for _ in 0..30 {
        fresh = bind(&client, [0x52, 0x54, 0x00, 0x6d, 9, 9]).await;
        if fresh.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fresh = fresh.expect("a new machine is served");
    assert!(
        bound.iter().all(|(_, ip)| *ip != fresh),
        "{fresh} was already bound to another machine"
    );
}

/// A tiny xorshift: fixed seed, no dependency.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[tokio::test]
async fn dhcp6_garbage_and_made_up_clients_get_nothing_lasting() {
    let server = crate::common::TestServer::full_v6_with("new_clients_per_minute = 60").await;
    let client = Client6::new(server.dhcp6()).await;
    // Random datagrams, and real ones with bytes flipped: no answer to
    // what does not parse, and the server keeps answering.
    let real = encode(&message(
        MessageType::Solicit,
        Firmware::OvmfPxe,
        &duid_llt(mac(1)),
        &[(1, None)],
    ));
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..2000 {
        let bytes: Vec<u8> = if i % 2 == 0 {
            let len = (next(&mut seed) % 600) as usize;
            (0..len).map(|_| next(&mut seed) as u8).collect()
        } else {
            let mut b = real.clone();
            let at = (next(&mut seed) as usize) % b.len();
            b[at] ^= 1 << (next(&mut seed) % 8);
            b.truncate(b.len() - (next(&mut seed) as usize % 8));
            b
        };
        let _ = client
            .exchange_bytes(&bytes, Duration::from_millis(1))
            .await;
    }
    assert!(server.counter("dhcp6_malformed").await > 500);
    // (A reserved machine: flipped bits in the DUIDs above made new clients
    // that used up the new-client rate.)
    assert!(bind(&client, mac(9)).await.is_some(), "still serving");

    // 300 made-up machines from one source: past the new-client rate (60 a
    // minute per source here) they are not answered, and none of them
    // became a machine (a Solicit holds an address, it makes nothing).
    let mut answered = 0;
    for i in 0..300u32 {
        let b = i.to_be_bytes();
        let m = message(
            MessageType::Solicit,
            Firmware::OvmfPxe,
            &duid_llt([0x02, 0xbd, b[0], b[1], b[2], b[3]]),
            &[(1, None)],
        );
        if client
            .exchange_bytes(&encode(&m), Duration::from_millis(50))
            .await
            .is_some()
        {
            answered += 1;
        }
    }
    // The bucket refills at one a second while the test runs.
    assert!(answered <= 90, "{answered} made-up clients answered");
    assert!(server.counter("dhcp6_ignored").await >= 200);
    let api = crate::common::api::Api::new(&server);
    let list = api
        .ok(reqwest::Method::GET, "/api/v1/machines?limit=5000", None)
        .await;
    let made_up = list["machines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["mac"].as_str().unwrap_or("").starts_with("02:bd:"))
        .count();
    assert_eq!(made_up, 0, "a Solicit makes no machine");
    server.stop().await;
}

/// A host posing as a relay (or a relay not in `dhcp6.trusted_relays`)
/// cannot name another machine through option 79: the claim is ignored
/// and the MAC comes from the peer address it relays for.
#[tokio::test]
async fn option_79_from_an_untrusted_relay_names_nobody() {
    let server = crate::common::TestServer::full_v6().await;
    let client = Client6::new(server.dhcp6()).await;
    let (victim, attacker) = (mac(0x31), mac(0x32));
    let duid = duid_uuid_zero();
    let solicit = encode(&message(
        MessageType::Solicit,
        Firmware::Ipxe,
        &duid,
        &[(1, None)],
    ));
    let link: Ipv6Addr = "fd00:77::1".parse().unwrap();
    let forged = relay_forw(&solicit, link, link_local(attacker), Some(victim));
    let answer = client
        .exchange_bytes(&forged, Duration::from_secs(2))
        .await
        .expect("answered, as the peer's machine");
    let inner = relay_options(&answer)
        .into_iter()
        .find(|(c, _)| *c == 9)
        .expect("relay message")
        .1;
    let adv = decode(&inner);
    let (_, ip) = addresses(&adv)[0];
    let mut req = message(
        MessageType::Request,
        Firmware::Ipxe,
        &duid,
        &[(1, Some(ip))],
    );
    req.opts_mut().insert(DhcpOption::ServerId(server_id(&adv)));
    let forged = relay_forw(&encode(&req), link, link_local(attacker), Some(victim));
    client
        .exchange_bytes(&forged, Duration::from_secs(2))
        .await
        .expect("a Reply");
    let api = crate::common::api::Api::new(&server);
    let explain = |m: [u8; 6]| {
        let api = &api;
        async move {
            let text = m.map(|b| format!("{b:02x}")).join(":");
            api.ok(
                reqwest::Method::POST,
                "/api/v1/explain",
                Some(serde_json::json!({ "mac": text })),
            )
            .await
        }
    };
    assert_eq!(
        explain(attacker).await["identity"]["mac_from"],
        "relay_peer",
        "the lease went to the machine the relay spoke for"
    );
    assert!(
        explain(victim).await["identity"]["mac_from"].is_null(),
        "the victim was never heard from"
    );
    server.stop().await;
}
