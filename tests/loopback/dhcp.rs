//! DHCP against the real server on loopback: every exchange goes through a
//! relay-style client (giaddr = the client's 127.x address), so replies are
//! unicast back and nothing leaves the loopback interface.

use std::net::Ipv4Addr;
use std::time::Duration;

use dhcproto::v4::{DhcpOption, MessageType, OptionCode};

use crate::common;
use crate::common::dhcp_client::{
    bootfile, encode, encode_with_raw, mac, message, msg_type, opt_bytes, with, Client, Relay,
};
use crate::common::TestServer;

const RELAY1: Ipv4Addr = Ipv4Addr::new(127, 1, 0, 1);
const RELAY2: Ipv4Addr = Ipv4Addr::new(127, 2, 0, 1);
const SERVER_ID: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

/// DISCOVER → OFFER → REQUEST → ACK; returns the bound address.
async fn dora(relay: &Relay, kind: Client, m: [u8; 6], xid: u32) -> Ipv4Addr {
    let offer = relay
        .exchange(&message(kind, MessageType::Discover, m, xid, relay.giaddr))
        .await
        .expect("OFFER");
    assert_eq!(msg_type(&offer), Some(MessageType::Offer));
    let ip = offer.yiaddr();
    let req = message(kind, MessageType::Request, m, xid + 1, relay.giaddr);
    let req = with(
        with(req, DhcpOption::RequestedIpAddress(ip)),
        DhcpOption::ServerIdentifier(SERVER_ID),
    );
    let ack = relay.exchange(&req).await.expect("ACK");
    assert_eq!(
        msg_type(&ack),
        Some(MessageType::Ack),
        "REQUEST for the offered address is ACKed"
    );
    assert_eq!(ack.yiaddr(), ip);
    ip
}

#[tokio::test]
async fn full_dora_gives_address_boot_options_and_lease_parameters() {
    let server = TestServer::full("").await;
    let relay = Relay::new(RELAY1, server.dhcp()).await;
    let offer = relay
        .exchange(&message(
            Client::BiosPxe,
            MessageType::Discover,
            mac(2),
            100,
            RELAY1,
        ))
        .await
        .expect("OFFER");
    let ip = offer.yiaddr();
    assert!(
        (100..=103).contains(&ip.octets()[3]) && ip.octets()[..3] == [127, 1, 0],
        "{ip} from the relay's subnet"
    );
    assert_eq!(offer.siaddr(), SERVER_ID, "next-server in siaddr");
    assert_eq!(offer.giaddr(), RELAY1);
    assert_eq!(bootfile(&offer).as_deref(), Some("undionly.kpxe"));
    assert_eq!(
        offer.opts().get(OptionCode::SubnetMask),
        Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
    );
    assert_eq!(
        offer.opts().get(OptionCode::Router),
        Some(&DhcpOption::Router(vec![Ipv4Addr::new(127, 1, 0, 1)]))
    );
    assert_eq!(
        offer.opts().get(OptionCode::AddressLeaseTime),
        Some(&DhcpOption::AddressLeaseTime(3600))
    );
    assert!(
        offer
            .opts()
            .get(OptionCode::ClientMachineIdentifier)
            .is_some(),
        "opt 97 echoed"
    );
    assert_eq!(
        dora(&relay, Client::BiosPxe, mac(2), 100).await,
        ip,
        "a repeated DISCOVER gets the same address"
    );

    // The machine and its steps are in the database.
    let dir = server.stop().await;
    let db = TestServer::db(dir.path()).await;
    let (firmware, arch): (String, String) =
        sqlx::query_as("SELECT firmware, arch FROM machines WHERE mac = '52:54:00:aa:00:02'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!((firmware.as_str(), arch.as_str()), ("pxe", "bios"));
    let steps: Vec<(String,)> =
        sqlx::query_as("SELECT step FROM events WHERE mac = '52:54:00:aa:00:02' ORDER BY id")
            .fetch_all(&db)
            .await
            .unwrap();
    let steps: Vec<&str> = steps.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(steps, ["dhcp.offer", "dhcp.offer", "dhcp.ack"]);
    let (state, lease_mac): (String, String) =
        sqlx::query_as("SELECT state, mac FROM leases WHERE ip = $1")
            .bind(ip.to_string())
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(
        (state.as_str(), lease_mac.as_str()),
        ("bound", "52:54:00:aa:00:02")
    );
}

#[tokio::test]
async fn each_client_kind_gets_its_bootfile() {
    let server = TestServer::full("").await;
    let relay = Relay::new(RELAY2, server.dhcp()).await;
    let http = server.bound.http.port();
    let cases = [
        (Client::BiosPxe, "undionly.kpxe".to_string(), None),
        (Client::UefiPxe, "ipxe.efi".to_string(), None),
        (
            Client::HttpBoot,
            format!("http://127.0.0.1:{http}/ipxe/ipxe.efi"),
            Some(b"HTTPClient".to_vec()),
        ),
        (
            Client::Ipxe,
            format!("http://127.0.0.1:{http}/boot.ipxe"),
            None,
        ),
    ];
    for (i, (kind, want, vendor)) in cases.into_iter().enumerate() {
        let raw = relay
            .exchange_raw(&message(
                kind,
                MessageType::Discover,
                mac(10 + i as u8),
                200 + i as u32,
                RELAY2,
            ))
            .await
            .unwrap_or_else(|| panic!("{kind:?} answered"));
        assert_eq!(
            opt_bytes(&raw, 67).map(|b| String::from_utf8(b).unwrap()),
            Some(want.clone()),
            "{kind:?}"
        );
        assert_eq!(opt_bytes(&raw, 60), vendor, "{kind:?} opt 60");
    }
}

#[tokio::test]
async fn concurrent_discovers_never_share_an_address() {
    let server = TestServer::full("").await;
    let relay = Relay::new(RELAY2, server.dhcp()).await;
    // Eight DISCOVERs back to back, before any REQUEST.
    for n in 0..8u8 {
        relay
            .send(&message(
                Client::BiosPxe,
                MessageType::Discover,
                mac(40 + n),
                400 + n as u32,
                RELAY2,
            ))
            .await;
    }
    let mut seen = std::collections::HashSet::new();
    for n in 0..8u8 {
        let offer = relay
            .recv(400 + n as u32, Duration::from_secs(2))
            .await
            .expect("every DISCOVER answered");
        assert!(
            seen.insert(offer.yiaddr()),
            "{} offered twice",
            offer.yiaddr()
        );
    }
    // And each REQUEST for its own offer is ACKed (no NAK for anyone).
    for n in 0..8u8 {
        let ip = dora(&relay, Client::BiosPxe, mac(40 + n), 500 + 2 * n as u32).await;
        assert!(seen.contains(&ip));
    }
}

#[tokio::test]
async fn init_reboot_renew_release_and_decline() {
    let server = TestServer::full("").await;
    let relay = Relay::new(RELAY2, server.dhcp()).await;
    let ip = dora(&relay, Client::BiosPxe, mac(60), 600).await;

    // INIT-REBOOT: REQUEST with opt 50, no server id.
    let reboot = with(
        message(Client::Plain, MessageType::Request, mac(60), 610, RELAY2),
        DhcpOption::RequestedIpAddress(ip),
    );
    let ack = relay.exchange(&reboot).await.expect("INIT-REBOOT answered");
    assert_eq!(msg_type(&ack), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), ip);

    // Someone else asking for that address is NAKed.
    let thief = with(
        message(Client::BiosPxe, MessageType::Request, mac(61), 620, RELAY2),
        DhcpOption::RequestedIpAddress(ip),
    );
    let nak = relay.exchange(&thief).await.expect("NAK");
    assert_eq!(msg_type(&nak), Some(MessageType::Nak));
    // An address from the wrong network is NAKed too.
    let wrong = with(
        message(Client::Plain, MessageType::Request, mac(60), 630, RELAY2),
        DhcpOption::RequestedIpAddress(Ipv4Addr::new(127, 1, 0, 100)),
    );
    assert_eq!(
        msg_type(&relay.exchange(&wrong).await.expect("NAK")),
        Some(MessageType::Nak)
    );

    // RENEWING: ciaddr set, no opt 50.
    let mut renew = message(Client::Plain, MessageType::Request, mac(60), 640, RELAY2);
    renew.set_ciaddr(ip);
    let ack = relay.exchange(&renew).await.expect("renew answered");
    assert_eq!(msg_type(&ack), Some(MessageType::Ack));

    // RELEASE frees it; the next client may get it.
    let mut release = message(Client::Plain, MessageType::Release, mac(60), 650, RELAY2);
    release.set_ciaddr(ip);
    relay.send(&release).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let req = with(
        message(Client::BiosPxe, MessageType::Request, mac(61), 660, RELAY2),
        DhcpOption::RequestedIpAddress(ip),
    );
    assert_eq!(
        msg_type(&relay.exchange(&req).await.unwrap()),
        Some(MessageType::Ack),
        "released address reusable"
    );

    // DECLINE quarantines: the decliner gets a different address next time.
    let decline = with(
        message(Client::BiosPxe, MessageType::Decline, mac(61), 670, RELAY2),
        DhcpOption::RequestedIpAddress(ip),
    );
    relay.send(&decline).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let again = dora(&relay, Client::BiosPxe, mac(61), 680).await;
    assert_ne!(again, ip, "declined address is quarantined");
    assert_eq!(server.counter("dhcp_declines").await, 1);
}

#[tokio::test]
async fn relay_selects_subnet_and_opt82_is_echoed_and_stored() {
    let server = TestServer::full("").await;
    let relay1 = Relay::new(RELAY1, server.dhcp()).await;
    let relay2 = Relay::new(RELAY2, server.dhcp()).await;
    let agent = vec![
        1, 6, b's', b'w', b'1', b'/', b'1', b'4', 2, 4, b't', b'o', b'r', b'7',
    ];
    let mut opt82 = vec![82, agent.len() as u8];
    opt82.extend_from_slice(&agent);
    let d = encode_with_raw(
        &message(Client::BiosPxe, MessageType::Discover, mac(70), 700, RELAY1),
        &opt82,
    );
    let raw = relay1.exchange_bytes(&d).await.expect("relayed OFFER");
    assert_eq!(
        &raw[16..19],
        &[127, 1, 0],
        "subnet picked by giaddr {RELAY1}"
    );
    assert_eq!(
        opt_bytes(&raw, 82),
        Some(agent.clone()),
        "opt 82 echoed verbatim"
    );
    // A new MAC is recorded once it is bound: REQUEST the offer.
    let offered = Ipv4Addr::new(raw[16], raw[17], raw[18], raw[19]);
    let r = encode_with_raw(
        &with(
            with(
                message(Client::BiosPxe, MessageType::Request, mac(70), 701, RELAY1),
                DhcpOption::RequestedIpAddress(offered),
            ),
            DhcpOption::ServerIdentifier(SERVER_ID),
        ),
        &opt82,
    );
    let raw = relay1.exchange_bytes(&r).await.expect("relayed ACK");
    assert_eq!(opt_bytes(&raw, 82), Some(agent), "opt 82 echoed in the ACK");
    let offer2 = relay2
        .exchange(&message(
            Client::BiosPxe,
            MessageType::Discover,
            mac(71),
            710,
            RELAY2,
        ))
        .await
        .unwrap();
    assert_eq!(offer2.yiaddr().octets()[..3], [127, 2, 0]);
    assert_eq!(
        offer2.opts().get(OptionCode::AddressLeaseTime),
        Some(&DhcpOption::AddressLeaseTime(600))
    );

    let dir = server.stop().await;
    let db = TestServer::db(dir.path()).await;
    let row: (String, String, String) = sqlx::query_as(
        "SELECT circuit_id, remote_id, relay FROM machines WHERE mac = '52:54:00:aa:00:46'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(row, ("sw1/14".into(), "tor7".into(), "127.1.0.1".into()));
}

#[tokio::test]
async fn reservations_and_pool_exhaustion() {
    let server = TestServer::full("").await;
    let relay = Relay::new(RELAY1, server.dhcp()).await;
    let reserved = [0x52, 0x54, 0x00, 0x00, 0x00, 0x01];
    let offer = relay
        .exchange(&message(
            Client::Plain,
            MessageType::Discover,
            reserved,
            800,
            RELAY1,
        ))
        .await
        .expect("reserved MAC answered even without PXE options");
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(127, 1, 0, 50));
    assert_eq!(
        offer.opts().get(OptionCode::Hostname),
        Some(&DhcpOption::Hostname("node1".into()))
    );

    // The 127.1 range holds four addresses.
    for n in 0..4u8 {
        dora(&relay, Client::BiosPxe, mac(80 + n), 810 + 2 * n as u32).await;
    }
    let none = relay
        .exchange(&message(
            Client::BiosPxe,
            MessageType::Discover,
            mac(90),
            900,
            RELAY1,
        ))
        .await;
    assert!(none.is_none(), "no address left: no OFFER");
    assert_eq!(server.counter("dhcp_pool_exhausted").await, 1);
    // Still serving others afterwards.
    let relay2 = Relay::new(RELAY2, server.dhcp()).await;
    dora(&relay2, Client::BiosPxe, mac(91), 910).await;
}

#[tokio::test]
async fn unknown_plain_clients_are_ignored_unless_serve_all() {
    let server = TestServer::full("").await;
    let relay = Relay::new(RELAY2, server.dhcp()).await;
    let plain = message(Client::Plain, MessageType::Discover, mac(100), 1000, RELAY2);
    assert!(
        relay.exchange(&plain).await.is_none(),
        "a stranger's DHCP is not ironboot's business"
    );
    // Once it has PXE-booted, the same MAC is known and served without PXE options.
    dora(&relay, Client::BiosPxe, mac(100), 1010).await;
    let offer = relay
        .exchange(&message(
            Client::Plain,
            MessageType::Discover,
            mac(100),
            1020,
            RELAY2,
        ))
        .await
        .expect("known machine served");
    assert!(bootfile(&offer).is_none(), "no bootfile for the booted OS");
    server.stop().await;

    let served = TestServer::full("serve_all = true").await;
    let relay = Relay::new(RELAY2, served.dhcp()).await;
    let plain = message(Client::Plain, MessageType::Discover, mac(101), 1030, RELAY2);
    assert!(
        relay.exchange(&plain).await.is_some(),
        "serve_all answers everyone"
    );
}

#[tokio::test]
async fn leases_survive_a_restart() {
    let server = TestServer::full("").await;
    let relay = Relay::new(RELAY2, server.dhcp()).await;
    let ip = dora(&relay, Client::BiosPxe, mac(110), 1100).await;
    let dir = server.stop().await;

    let text = common::full_config(dir.path(), "");
    let server = TestServer::start(&text, dir).await;
    let relay = Relay::new(RELAY2, server.dhcp()).await;
    // Another machine cannot take it…
    let thief = with(
        message(
            Client::BiosPxe,
            MessageType::Request,
            mac(111),
            1110,
            RELAY2,
        ),
        DhcpOption::RequestedIpAddress(ip),
    );
    assert_eq!(
        msg_type(&relay.exchange(&thief).await.unwrap()),
        Some(MessageType::Nak)
    );
    // …and the owner, known from the database, gets it back without PXE options.
    let offer = relay
        .exchange(&message(
            Client::Plain,
            MessageType::Discover,
            mac(110),
            1120,
            RELAY2,
        ))
        .await
        .expect("known after restart");
    assert_eq!(offer.yiaddr(), ip);
}

#[tokio::test]
async fn proxy_mode_answers_on_67_and_4011_without_addresses() {
    let dir = tempfile::TempDir::new().unwrap();
    let text = common::proxy_config(dir.path());
    let server = TestServer::start(&text, dir).await;
    let relay = Relay::new(RELAY1, server.dhcp()).await;

    // BIOS: proxy offer with opt 60 PXEClient and opt 43 discovery control 8.
    let raw = relay
        .exchange_raw(&message(
            Client::BiosPxe,
            MessageType::Discover,
            mac(120),
            1200,
            RELAY1,
        ))
        .await
        .expect("proxy offer");
    assert_eq!(&raw[16..20], &[0, 0, 0, 0], "no yiaddr from a proxy");
    assert_eq!(opt_bytes(&raw, 60).as_deref(), Some(&b"PXEClient"[..]));
    assert_eq!(opt_bytes(&raw, 43), Some(vec![6, 1, 8, 255]));
    assert_eq!(opt_bytes(&raw, 67).as_deref(), Some(&b"undionly.kpxe"[..]));
    assert_eq!(opt_bytes(&raw, 51), None, "no lease time");

    // UEFI: proxy offer without opt 43; then its REQUEST on 4011 is ACKed.
    let raw = relay
        .exchange_raw(&message(
            Client::UefiPxe,
            MessageType::Discover,
            mac(121),
            1210,
            RELAY1,
        ))
        .await
        .unwrap();
    assert_eq!(opt_bytes(&raw, 43), None);
    assert_eq!(opt_bytes(&raw, 67).as_deref(), Some(&b"ipxe.efi"[..]));

    // A REQUEST on 67 belongs to the real DHCP server.
    let req = with(
        message(
            Client::UefiPxe,
            MessageType::Request,
            mac(121),
            1220,
            RELAY1,
        ),
        DhcpOption::RequestedIpAddress(Ipv4Addr::new(127, 1, 0, 9)),
    );
    assert!(relay.exchange(&req).await.is_none());

    // Port 4011: unicast REQUEST from the client's new address, reply to it.
    let client = tokio::net::UdpSocket::bind((Ipv4Addr::new(127, 1, 0, 9), 0))
        .await
        .unwrap();
    let mut req = message(
        Client::UefiPxe,
        MessageType::Request,
        mac(121),
        1230,
        Ipv4Addr::UNSPECIFIED,
    );
    req.set_ciaddr(Ipv4Addr::new(127, 1, 0, 9));
    client
        .send_to(&encode(&req), server.bound.proxy.unwrap())
        .await
        .unwrap();
    let mut buf = [0u8; 1500];
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), client.recv_from(&mut buf))
        .await
        .expect("4011 answered")
        .unwrap();
    assert_eq!(buf[242], 5, "DHCPACK");
    assert_eq!(opt_bytes(&buf[..n], 67).as_deref(), Some(&b"ipxe.efi"[..]));
    assert_eq!(opt_bytes(&buf[..n], 60).as_deref(), Some(&b"PXEClient"[..]));

    // Non-PXE clients get nothing from a proxy.
    assert!(relay
        .exchange(&message(
            Client::Plain,
            MessageType::Discover,
            mac(122),
            1240,
            RELAY1
        ))
        .await
        .is_none());
}

/// Datagrams no client should send; each is dropped and counted.
fn hostile(i: u32, valid: &[u8]) -> Vec<u8> {
    let mut rng = i.wrapping_mul(2_654_435_761);
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        rng
    };
    let mut p = valid.to_vec();
    match i % 8 {
        0 => p[2] = 17 + (next() % 239) as u8, // hlen > 16: dhcproto would panic
        1 => p.truncate((next() % 240) as usize), // truncated header
        2 => p[236] ^= 0xff,                   // bad magic cookie
        3 => p.extend_from_slice(&[60, 200, b'P']), // option overruns the end
        4 => {
            let end = p.len() - 1; // non-UTF-8 hostname before the end
            p.splice(end..end, [12u8, 4, 0xff, 0xfe, 0xfd, 0xfc]);
        }
        5 => p[0] = 2, // a reply, not a request
        6 => p = (0..(next() % 600)).map(|_| next() as u8).collect(), // noise
        _ => {
            let at = 240 + (next() as usize % (p.len() - 240));
            p[at] = next() as u8; // a flipped option byte
        }
    }
    p
}

#[tokio::test]
async fn ten_thousand_hostile_datagrams_then_a_valid_client_is_served() {
    let server = TestServer::full("").await;
    let relay = Relay::new(RELAY2, server.dhcp()).await;
    let valid = encode(&message(
        Client::BiosPxe,
        MessageType::Discover,
        mac(130),
        1300,
        RELAY2,
    ));
    let proxy = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..10_000u32 {
        relay.send_raw(&hostile(i, &valid)).await;
        if i % 100 == 0 {
            // Paced so the kernel's socket buffer does not drop most of them.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    // The proxy port too (a second socket, same parser).
    if let Some(p) = server.bound.proxy {
        for i in 0..500u32 {
            proxy.send_to(&hostile(i, &valid), p).await.unwrap();
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Drain whatever the flipped-byte cases legitimately got answered.
    let mut buf = [0u8; 1500];
    while tokio::time::timeout(Duration::from_millis(50), relay.sock.recv_from(&mut buf))
        .await
        .is_ok()
    {}
    let ip = dora(&relay, Client::BiosPxe, mac(131), 1310).await;
    assert_eq!(ip.octets()[..3], [127, 2, 0]);
    let received = server.counter("dhcp_received").await;
    let malformed = server.counter("dhcp_malformed").await;
    let answered = server.counter("dhcp_replies").await;
    let ignored = server.counter("dhcp_ignored").await;
    assert!(
        received >= 9_000,
        "most of the flood reached the server: {received}"
    );
    assert!(
        malformed >= 6_000,
        "malformed datagrams counted: {malformed} of {received}"
    );
    assert_eq!(
        received,
        malformed + answered + ignored,
        "every datagram accounted for"
    );
}
