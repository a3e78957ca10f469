//! DHCPv6 on loopback: the exchanges real firmware makes (OVMF PXEv6 and
//! HTTPv6, iPXE, relayed), what each is told, which MAC each is, leases
//! that survive a restart, and the IPv6 HTTP and TFTP listeners.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use dhcproto::v6::{MessageType, Status};

use crate::common::dhcp6_client::*;
use crate::common::TestServer;

fn in_range(ip: Ipv6Addr) -> bool {
    let n = u128::from(ip);
    (u128::from("fd00:77::1000".parse::<Ipv6Addr>().unwrap())
        ..=u128::from("fd00:77::10ff".parse::<Ipv6Addr>().unwrap()))
        .contains(&n)
}

/// Solicit → Advertise → Request → Reply for one firmware; returns the
/// Reply and the address bound.
async fn take_address(
    client: &Client6,
    firmware: Firmware,
    duid: &[u8],
    iaid: u32,
) -> (dhcproto::v6::Message, Ipv6Addr) {
    let adv = client
        .exchange(&message(
            MessageType::Solicit,
            firmware,
            duid,
            &[(iaid, None)],
        ))
        .await
        .expect("an Advertise");
    assert_eq!(adv.msg_type(), MessageType::Advertise);
    assert_eq!(
        preference(&adv),
        Some(255),
        "Preference 255 spares OVMF 5 s"
    );
    let [(id, ip)] = addresses(&adv)[..] else {
        panic!("one address advertised: {adv:?}")
    };
    assert_eq!(id, iaid);
    let mut req = message(MessageType::Request, firmware, duid, &[(iaid, Some(ip))]);
    req.opts_mut()
        .insert(dhcproto::v6::DhcpOption::ServerId(server_id(&adv)));
    let reply = client.exchange(&req).await.expect("a Reply");
    assert_eq!(reply.msg_type(), MessageType::Reply);
    assert_eq!(
        addresses(&reply),
        vec![(iaid, ip)],
        "the advertised address is bound"
    );
    (reply, ip)
}

#[tokio::test]
async fn pxev6_httpv6_and_ipxe_are_each_told_their_url() {
    let server = TestServer::full_v6().await;
    let client = Client6::new(server.dhcp6()).await;
    let http6 = server.bound.http6.expect("HTTP on IPv6").port();

    let (reply, ip) = take_address(&client, Firmware::OvmfPxe, &duid_llt(mac(1)), 1).await;
    assert!(in_range(ip), "{ip}");
    assert_eq!(
        bootfile_url(&reply).as_deref(),
        Some("tftp://[::1]/ipxe.efi")
    );
    assert_eq!(
        vendor_class(&reply),
        None,
        "no option 16 echo for PXEv6 (PXE-E16)"
    );

    let (reply, _) = take_address(&client, Firmware::OvmfHttp, &duid_llt(mac(2)), 1).await;
    assert_eq!(
        bootfile_url(&reply),
        Some(format!("http://[::1]:{http6}/ipxe/ipxe.efi")),
        "HTTPv6 gets the loader over HTTP"
    );
    assert_eq!(vendor_class(&reply).as_deref(), Some("HTTPClient"));

    // iPXE behind a relay: DUID-UUID all zeros, the MAC from the relay's
    // option 79.
    let inner = encode(&message(
        MessageType::Solicit,
        Firmware::Ipxe,
        &duid_uuid_zero(),
        &[(0, None)],
    ));
    let link: Ipv6Addr = "fd00:77::1".parse().unwrap();
    let relayed = relay_forw(&inner, link, link_local(mac(3)), Some(mac(3)));
    let answer = client
        .exchange_bytes(&relayed, Duration::from_secs(2))
        .await
        .expect("a RELAY-REPL");
    let opts = relay_options(&answer);
    assert_eq!(&answer[2..18], &link.octets(), "link address echoed");
    assert!(
        opts.iter().any(|(c, v)| *c == 18 && v == b"swp7"),
        "Interface-ID echoed: {opts:?}"
    );
    let inner = &opts.iter().find(|(c, _)| *c == 9).expect("relay message").1;
    let adv = decode(inner);
    assert_eq!(adv.msg_type(), MessageType::Advertise);
    assert_eq!(
        bootfile_url(&adv),
        Some(format!("http://[::1]:{http6}/boot.ipxe")),
        "iPXE gets its script, not another iPXE"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_client_with_no_mac_to_learn_gets_nothing() {
    let server = TestServer::full_v6().await;
    let client = Client6::new(server.dhcp6()).await;
    // iPXE straight from ::1: a zero DUID-UUID and no EUI-64 source.
    let m = message(
        MessageType::Solicit,
        Firmware::Ipxe,
        &duid_uuid_zero(),
        &[(0, None)],
    );
    assert!(client.exchange(&m).await.is_none());
    assert_eq!(server.counter("dhcp6_no_mac").await, 1);
    // Garbage, then a real client: the server is still answering.
    for junk in [&[][..], &[1, 2, 3][..], &[12; 40][..], &[7; 300][..]] {
        assert!(client
            .exchange_bytes(junk, Duration::from_millis(300))
            .await
            .is_none());
    }
    assert!(server.counter("dhcp6_malformed").await >= 3);
    take_address(&client, Firmware::OvmfPxe, &duid_llt(mac(4)), 1).await;
    // A client that says nothing of booting (OVMF's own IPv6 set-up, an
    // OS): an address, no boot file, and no machine made of it.
    let os = message(
        MessageType::Solicit,
        Firmware::Os,
        &duid_llt(mac(5)),
        &[(0, None)],
    );
    let adv = client
        .exchange(&os)
        .await
        .expect("dhcp6.serve_all is on by default");
    assert_eq!(addresses(&adv).len(), 1);
    assert_eq!(bootfile_url(&adv), None);
    server.stop().await;
}

#[tokio::test]
async fn leases_are_durable_reservations_hold_and_addresses_are_never_shared() {
    let server = TestServer::full_v6().await;
    let client = Client6::new(server.dhcp6()).await;
    let duid = duid_llt(mac(6));
    let (_, first) = take_address(&client, Firmware::OvmfPxe, &duid, 1).await;
    let (_, second) = take_address(&client, Firmware::OvmfPxe, &duid, 2).await;
    assert_ne!(first, second, "a second IA_NA gets a second address");
    let (_, reserved) = take_address(&client, Firmware::OvmfPxe, &duid_llt(mac(9)), 1).await;
    assert_eq!(reserved, "fd00:77::9".parse::<Ipv6Addr>().unwrap());

    // Another machine asking for mac(6)'s address by Rebind gets nothing.
    let steal = message(
        MessageType::Rebind,
        Firmware::OvmfPxe,
        &duid_llt(mac(7)),
        &[(1, Some(first))],
    );
    let reply = client.exchange(&steal).await.expect("a Reply");
    assert!(addresses(&reply).is_empty(), "{reply:?}");
    assert_eq!(ia_statuses(&reply), vec![(1, Status::NoBinding)]);

    // SIGKILL-like: the Reply was sent only once its lease was committed,
    // so a restart keeps it; a Renew keeps the address.
    let dir = server.stop().await;
    let db = TestServer::db(dir.path()).await;
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT ip, mac, iaid FROM leases WHERE ip LIKE '%:%' ORDER BY ip")
            .fetch_all(&db)
            .await
            .unwrap();
    assert!(
        rows.contains(&(first.to_string(), "52:54:00:66:00:06".into(), 1)),
        "{rows:?}"
    );
    db.close().await;
    let server = TestServer::restart_v6(dir).await;
    let client = Client6::new(server.dhcp6()).await;
    let steal = message(
        MessageType::Rebind,
        Firmware::OvmfPxe,
        &duid_llt(mac(7)),
        &[(1, Some(first))],
    );
    let reply = client.exchange(&steal).await.expect("a Reply");
    assert!(
        addresses(&reply).is_empty(),
        "still not mac(7)'s after a restart"
    );
    let renew = message(
        MessageType::Rebind,
        Firmware::OvmfPxe,
        &duid,
        &[(1, Some(first))],
    );
    let reply = client.exchange(&renew).await.expect("a Reply");
    assert_eq!(addresses(&reply), vec![(1, first)]);

    // Release: the address is free again, in memory and in the store.
    let adv_id = server_id(&reply);
    let mut release = message(
        MessageType::Release,
        Firmware::OvmfPxe,
        &duid,
        &[(1, Some(first))],
    );
    release
        .opts_mut()
        .insert(dhcproto::v6::DhcpOption::ServerId(adv_id));
    let reply = client.exchange(&release).await.expect("a Reply to Release");
    assert_eq!(reply.msg_type(), MessageType::Reply);
    let dir = server.stop().await;
    let db = TestServer::db(dir.path()).await;
    let left: Vec<(String,)> = sqlx::query_as("SELECT ip FROM leases WHERE ip = $1")
        .bind(first.to_string())
        .fetch_all(&db)
        .await
        .unwrap();
    assert!(left.is_empty(), "released lease deleted");
    db.close().await;
}

#[tokio::test]
async fn http_and_tftp_answer_ipv6_clients_with_ipv6_urls() {
    let server = TestServer::full_v6().await;
    let http6 = server.bound.http6.expect("HTTP on IPv6");
    let http = reqwest::Client::new();
    let script = http
        .get(format!("http://{http6}/boot.ipxe"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        script.contains(&format!(
            "chain --autofree http://[::1]:{}/boot/",
            http6.port()
        )),
        "{script}"
    );
    // The same server over IPv4 still says IPv4.
    let v4 = http
        .get(format!("http://{}/boot.ipxe", server.bound.http))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(v4.contains("http://127.0.0.1:"), "{v4}");

    let tftp6 = server.bound.tftp6.expect("TFTP on IPv6");
    // OVMF's options over IPv6.
    let opts = crate::common::tftp_client::GetOpts::default()
        .with("blksize", "1228")
        .with("tsize", "0")
        .with("windowsize", "4");
    let got = crate::common::tftp_client::get(tftp6, "ipxe.efi", opts)
        .await
        .expect("ipxe.efi over TFTP on IPv6");
    assert_eq!(got.data.len(), 300_000);
    let oack = got.oack.expect("an option acknowledgement");
    assert!(
        oack.contains(&("blksize".into(), "1228".into())),
        "{oack:?}"
    );
    server.stop().await;
}

/// One machine, two address families: a MAC leased over DHCPv4 and then
/// seen over DHCPv6 is one record, and its script says the same generation
/// whichever family asks (with IPv6 URLs for IPv6).
#[tokio::test]
async fn a_machine_is_one_record_over_ipv4_and_ipv6() {
    use crate::common::dhcp_client as v4;
    let server = TestServer::full_v6().await;
    let api = crate::common::api::Api::new(&server);
    let generation = api
        .import("dual", b"kernel", b"initrd", "console=ttyS0")
        .await;
    api.point("default", "dual", generation).await;

    let m = mac(0x44);
    let relay = v4::Relay::new(Ipv4Addr::new(127, 1, 0, 1), server.dhcp()).await;
    let offer = relay
        .exchange(&v4::message(
            v4::Client::BiosPxe,
            dhcproto::v4::MessageType::Discover,
            m,
            0x4400,
            relay.giaddr,
        ))
        .await
        .expect("an OFFER");
    let req = v4::with(
        v4::with(
            v4::message(
                v4::Client::BiosPxe,
                dhcproto::v4::MessageType::Request,
                m,
                0x4401,
                relay.giaddr,
            ),
            dhcproto::v4::DhcpOption::RequestedIpAddress(offer.yiaddr()),
        ),
        dhcproto::v4::DhcpOption::ServerIdentifier(Ipv4Addr::new(127, 0, 0, 1)),
    );
    assert_eq!(
        v4::msg_type(&relay.exchange(&req).await.expect("an ACK")),
        Some(dhcproto::v4::MessageType::Ack)
    );
    let client = Client6::new(server.dhcp6()).await;
    take_address(&client, Firmware::OvmfPxe, &duid_llt(m), 1).await;

    let text = m.map(|b| format!("{b:02x}")).join(":");
    let (status, list) = api
        .call(reqwest::Method::GET, "/api/v1/machines?limit=1000", None)
        .await;
    assert!(status.is_success());
    let records = list["machines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["mac"] == text)
        .count();
    assert_eq!(records, 1, "{list:#}");
    // explain says how DHCPv6 named the machine (a DUID-LLT here).
    let explained = api
        .ok(
            reqwest::Method::POST,
            "/api/v1/explain",
            Some(serde_json::json!({ "mac": text })),
        )
        .await;
    assert_eq!(explained["identity"]["mac_from"], "duid", "{explained:#}");

    let http = reqwest::Client::new();
    let v4_script =
        crate::common::fleet::script(&http, &format!("http://{}", server.bound.http), &text).await;
    let http6 = server.bound.http6.unwrap();
    let v6_script = crate::common::fleet::script(&http, &format!("http://{http6}"), &text).await;
    for (family, script) in [("IPv4", &v4_script), ("IPv6", &v6_script)] {
        assert!(
            script.contains(&format!("-> dual gen {generation}")),
            "{family}: {script}"
        );
    }
    assert!(
        v6_script.contains(&format!("http://[::1]:{}/", http6.port())),
        "{v6_script}"
    );
    assert!(!v4_script.contains("[::1]"), "{v4_script}");
    server.stop().await;
}

/// A relayed client draws from its link's pool, chosen by the relay's
/// link-address; a link with no pool gets NoAddrsAvail, not another
/// link's address.
#[tokio::test]
async fn relayed_clients_get_addresses_of_their_own_link() {
    let server = TestServer::full_v6().await;
    let client = Client6::new(server.dhcp6()).await;
    let solicit = |m: u8| {
        encode(&message(
            MessageType::Solicit,
            Firmware::OvmfPxe,
            &duid_llt(mac(m)),
            &[(1, None)],
        ))
    };
    let through = |link: &str, m: u8| {
        relay_forw(&solicit(m), link.parse().unwrap(), link_local(mac(m)), None)
    };
    let inner = |bytes: Vec<u8>| {
        let opts = relay_options(&bytes);
        decode(&opts.iter().find(|(c, _)| *c == 9).expect("relay message").1)
    };
    let adv = inner(
        client
            .exchange_bytes(&through("fd00:88::1", 0x21), Duration::from_secs(2))
            .await
            .expect("a RELAY-REPL"),
    );
    let [(_, ip)] = addresses(&adv)[..] else {
        panic!("{adv:?}")
    };
    assert!(
        ip.to_string().starts_with("fd00:88::1"),
        "{ip} from fd00:88::/64's range"
    );
    let adv = inner(
        client
            .exchange_bytes(&through("fd00:99::1", 0x22), Duration::from_secs(2))
            .await
            .expect("a RELAY-REPL"),
    );
    assert!(addresses(&adv).is_empty(), "{adv:?}");
    assert_eq!(ia_statuses(&adv), vec![(1, Status::NoAddrsAvail)]);
    server.stop().await;
}
