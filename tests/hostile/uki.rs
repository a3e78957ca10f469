//! Loader `uki` under the binding rule: an operator-signed unified kernel
//! image is served only to the address bound to its machine, its seed
//! (`/config/self/`) likewise, and the firmware's HEAD and GET share one
//! boot. A machine whose target is not such an image gets 404 with the
//! reason in the ledger; the attacker at 127.0.0.1 gets 403 and leaves no
//! trace on the victim.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::binding::{client, get, mac_text};
use crate::common::api::Api;
use crate::common::dhcp_client::Relay;
use crate::common::fleet::phone_home;
use crate::common::TestServer;

const RELAY: Ipv4Addr = Ipv4Addr::new(127, 1, 0, 1);
const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const VICTIM: [u8; 6] = [0x52, 0x54, 0x00, 0xcc, 0x00, 0x01];
const PLAIN: [u8; 6] = [0x52, 0x54, 0x00, 0xcc, 0x00, 0x02];

fn hyphenated(m: [u8; 6]) -> String {
    mac_text(m).replace(':', "-")
}

/// The machine as the API shows it.
async fn machine(api: &Api, m: [u8; 6]) -> Value {
    api.ok(
        Method::GET,
        &format!("/api/v1/machines/{}", mac_text(m)),
        None,
    )
    .await
}

/// A machine's ledger events (`step`: a step or family; empty: all),
/// newest first. The API flushes the ledger before it reads.
async fn events(api: &Api, m: [u8; 6], step: &str) -> Vec<Value> {
    let mut path = format!("/api/v1/events?mac={}&limit=1000", mac_text(m));
    if !step.is_empty() {
        path.push_str(&format!("&step={step}"));
    }
    let body = api.ok(Method::GET, &path, None).await;
    body["events"].as_array().unwrap().clone()
}

/// Sets label `loader=uki` on a machine the server knows.
async fn loader_uki(api: &Api, m: [u8; 6]) {
    api.ok(
        Method::PATCH,
        &format!("/api/v1/machines/{}", mac_text(m)),
        Some(json!({ "labels": { "loader": "uki" } })),
    )
    .await;
}

/// The test UKI: a sealed command line pointing the seed at
/// `/config/self/`, a kernel and an initrd, signed.
fn image() -> Vec<u8> {
    ironboot::images::uki::sample(
        &[
            (
                ".cmdline",
                0x1000,
                b"console=ttyS0 ds=nocloud-net;s=http://x/config/self/",
            ),
            (".linux", 0x2000, b"kernel"),
            (".initrd", 0x3000, b"initrd"),
        ],
        true,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unified_kernel_image_goes_only_to_its_machine() {
    let server = TestServer::full_bound("").await;
    let api = Api::new(&server);
    let base = format!("http://{}", server.bound.http);

    // Import: the signed image alone is a generation of stream `signed`,
    // and the default group boots it.
    let uki = image();
    let digest = api.upload(&uki).await;
    let manifest = json!({
        "arch": "x86_64",
        "uki": { "name": "signed.efi", "digest": digest, "size": uki.len() },
    });
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/streams/signed/generations",
            Some(manifest),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let generation = body["generation"].as_i64().unwrap();
    assert_eq!(generation, 1);
    api.point("default", "signed", generation).await;

    // Anything beside the image is refused, and so is an artifact that is
    // not a PE with `.linux` given as the image.
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/streams/signed/generations",
            Some(json!({
                "arch": "x86_64",
                "uki": { "name": "signed.efi", "digest": digest, "size": uki.len() },
                "cmdline": "x",
            })),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "uki", "{body}");
    let junk: Vec<u8> = (0..4096u32).map(|i| (i * 131 % 251) as u8).collect();
    let junk_digest = api.upload(&junk).await;
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/streams/signed/generations",
            Some(json!({
                "arch": "x86_64",
                "uki": { "name": "junk.efi", "digest": junk_digest, "size": junk.len() },
            })),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "uki", "{body}");

    // The victim leases an address and is set to loader uki.
    let relay = Relay::new(RELAY, server.dhcp()).await;
    let victim_ip = crate::binding::lease(&relay, VICTIM, 0x7600)
        .await
        .expect("victim leased");
    tokio::time::sleep(Duration::from_millis(200)).await;
    loader_uki(&api, VICTIM).await;
    let victim = client(IpAddr::V4(victim_ip));
    let attacker = client(ATTACKER);
    let image_url = format!("{base}/uki/{}.efi", hyphenated(VICTIM));

    // From its own address, the firmware's HEAD then GET: the image's size,
    // then its exact bytes, in one boot (one `uki.image` event).
    let head = victim.head(&image_url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    let length = head
        .headers()
        .get(reqwest::header::CONTENT_LENGTH)
        .expect("HEAD says the length")
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(length, uki.len().to_string());
    let got = victim.get(&image_url).send().await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap().as_ref(), uki.as_slice());
    let served = events(&api, VICTIM, "uki.image").await;
    assert_eq!(served.len(), 1, "HEAD and GET share one boot: {served:?}");
    assert_eq!(served[0]["detail"]["stream"], "signed", "{served:?}");

    // Its seed, from its own address, carries the boot's token; the
    // confirmation says Secure Boot was on, and the API shows it.
    let (status, user) = get(&victim, &format!("{base}/config/self/user-data")).await;
    assert_eq!(status, 200, "{user}");
    let token = phone_home_token(&user);
    assert!(!token.is_empty(), "{user}");
    let status = phone_home(&victim, &base, &token, "instance_id=x&secureboot=1").await;
    assert_eq!(status, 200);
    let m = machine(&api, VICTIM).await;
    assert_eq!(m["secure_boot"], true, "{m}");
    assert_eq!(m["current"]["stream"], "signed", "{m}");
    assert_eq!(m["current"]["generation"], 1, "{m}");

    // The attacker asks for the victim's image and for a seed: refused,
    // and nothing is recorded for the victim.
    let before = events(&api, VICTIM, "").await.len();
    let (status, body) = get(&attacker, &image_url).await;
    assert_eq!(status, 403, "{body}");
    let head = attacker.head(&image_url).send().await.unwrap();
    assert_eq!(head.status(), 403);
    let (status, body) = get(&attacker, &format!("{base}/config/self/meta-data")).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = get(&attacker, &format!("{base}/config/self/user-data")).await;
    assert_eq!(status, 403, "{body}");
    assert!(!body.contains(&token), "{body}");
    assert_eq!(
        events(&api, VICTIM, "").await.len(),
        before,
        "the attacker's requests leave nothing on the victim"
    );

    // Malformed names, even from the bound address: not found; a path out
    // of the seed directory is never served.
    for path in [
        "/uki/not-a-mac.efi".to_string(),
        format!("/uki/{}.bin", hyphenated(VICTIM)),
        format!("/uki/{}", hyphenated(VICTIM)),
    ] {
        let (status, body) = get(&victim, &format!("{base}{path}")).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    for path in [
        "/config/self/..%2f..%2fetc%2fpasswd",
        "/config/self/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/config/self/%2fetc%2fpasswd",
        "/config/self/../../etc/passwd",
    ] {
        let (status, body) = get(&victim, &format!("{base}{path}")).await;
        assert_ne!(status, 200, "{path}: {body}");
        assert!(!body.contains("root:"), "{path}: {body}");
    }

    // A second machine with loader uki whose target (its pin) is a plain
    // kernel and initrd: no image (404), the reason in the ledger, and no
    // seed either.
    let live = api
        .import("live", &[1u8; 4096], &[2u8; 4096], "console=ttyS0")
        .await;
    let plain_ip = crate::binding::lease(&relay, PLAIN, 0x7610)
        .await
        .expect("second machine leased");
    tokio::time::sleep(Duration::from_millis(200)).await;
    loader_uki(&api, PLAIN).await;
    api.ok(
        Method::PUT,
        &format!("/api/v1/machines/{}/pin", mac_text(PLAIN)),
        Some(json!({ "stream": "live", "generation": live })),
    )
    .await;
    let plain = client(IpAddr::V4(plain_ip));
    let (status, body) = get(&plain, &format!("{base}/uki/{}.efi", hyphenated(PLAIN))).await;
    assert_eq!(status, 404, "{body}");
    let nothing = events(&api, PLAIN, "uki.nothing").await;
    assert_eq!(nothing.len(), 1, "{nothing:?}");
    let reason = nothing[0]["detail"].to_string();
    assert!(reason.contains("not a unified kernel image"), "{reason}");
    assert!(events(&api, PLAIN, "uki.image").await.is_empty());
    let (status, body) = get(&plain, &format!("{base}/config/self/meta-data")).await;
    assert_eq!(status, 404, "{body}");

    // Explain: the victim as an x64 HTTP-boot client (option 93 is 16, and
    // option 60 says HTTPClient, as such firmware sends: without it DHCP
    // offers no bootfile) gets loader uki (its label), and the firmware
    // loads the image itself.
    let explained = api
        .ok(
            Method::POST,
            "/api/v1/explain",
            Some(json!({
                "mac": mac_text(VICTIM),
                "arch": 16,
                "vendor_class": "HTTPClient:Arch:00016:UNDI:003001",
            })),
        )
        .await;
    let steps: Vec<&str> = explained["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(
        steps.iter().any(|s| s.starts_with("loader: uki")),
        "{steps:#?}"
    );
    assert!(
        steps
            .iter()
            .any(|s| s.starts_with("image: the firmware loads")),
        "{steps:#?}"
    );
    server.stop().await;
}

/// A server killed (SIGKILL) after it served a unified kernel image, and
/// started again: the machine's seed fetch still finds its open boot, which
/// gets a new token (committed first; the old one was never sent), and the
/// confirmation with it counts. The address is bound by the test config's
/// reservation (52:54:00:00:00:01 at 127.1.0.50), which survives anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unified_kernel_images_boot_survives_kill_9_before_its_seed() {
    let dir = tempfile::TempDir::new().unwrap();
    let (config, base) = crate::process::bound_config(dir.path()).await;
    let base = &base;
    let mut server = crate::process::Server::start(&config).healthy(base).await;
    let api = Api::at(base, dir.path());
    let image = image();
    let digest = api.upload(&image).await;
    let created = api
        .ok(
            Method::POST,
            "/api/v1/streams/signed/generations",
            Some(json!({ "arch": "x86_64", "uki": { "name": "live.efi", "digest": digest, "size": image.len() } })),
        )
        .await;
    api.point("default", "signed", created["generation"].as_i64().unwrap())
        .await;
    let machine = client("127.1.0.50".parse().unwrap());
    let mac = "52-54-00-00-00-01";
    for round in 0..2 {
        let r = machine
            .get(format!("{base}/uki/{mac}.efi"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "round {round}");
        assert_eq!(r.bytes().await.unwrap().len(), image.len());
        drop(server); // SIGKILL, reaped
        server = crate::process::Server::start(&config).healthy(base).await;
        let (status, _) = get(&client(ATTACKER), &format!("{base}/config/self/user-data")).await;
        assert_eq!(
            status, 403,
            "round {round}: an unbound address after the restart"
        );
        let (status, user_data) = get(&machine, &format!("{base}/config/self/user-data")).await;
        assert_eq!(
            status, 200,
            "round {round}: the open boot was found after the restart: {user_data}"
        );
        let (_, again) = get(&machine, &format!("{base}/config/self/user-data")).await;
        assert_eq!(
            again, user_data,
            "round {round}: one new token, not one per fetch"
        );
        let token = phone_home_token(&user_data);
        let status = phone_home(&machine, base, &token, "instance_id=x&secureboot=1").await;
        assert_eq!(status, 200, "round {round}: the new token confirms");
    }
    drop(server);
}

/// The token in the phone-home URL of rendered user-data.
fn phone_home_token(user_data: &str) -> String {
    let at = user_data.find("/phone-home/").expect("a phone-home URL") + "/phone-home/".len();
    user_data[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}
