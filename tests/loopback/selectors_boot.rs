//! Selectors change what machines boot, on the wire: a label puts a machine
//! in a group whose `loader = grub` changes its DHCP bootfile and whose
//! generation its script boots; removing the label takes both back.

use std::net::Ipv4Addr;

use dhcproto::v4::MessageType;
use serde_json::{json, Value};

use crate::common;
use crate::common::dhcp_client::{bootfile, message, Client, Relay};
use crate::common::TestServer;

const BIN: &str = env!("CARGO_BIN_EXE_ironboot");
const RELAY: Ipv4Addr = Ipv4Addr::new(127, 1, 0, 1);
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x5e, 0x1e, 0x01];
const MAC_TEXT: &str = "52:54:00:5e:1e:01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_moves_a_machine_into_a_group_and_its_dhcp_answer_and_script_follow() {
    let server = TestServer::full("").await;
    let dir = server.dir.path();
    let base = format!("http://{}", server.bound.http);
    let data = dir.join("data");
    for (name, byte) in [("vmlinuz", 1u8), ("initrd.img", 2)] {
        std::fs::write(dir.join(name), vec![byte; 4096]).unwrap();
    }
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new(BIN)
            .args(["image", "import", "--stream", "worker", "--kernel"])
            .arg(dir.join("vmlinuz"))
            .arg("--initrd")
            .arg(dir.join("initrd.img"))
            .args(["--server", &base, "--data-dir"])
            .arg(&data)
            .env_remove("IRONBOOT_TOKEN")
            .output()
            .unwrap()
    });
    assert!(out.status.success(), "{out:?}");
    let token = std::fs::read_to_string(data.join("admin.token")).unwrap();
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, body: Value| {
        http.request(method, format!("{base}{path}"))
            .bearer_auth(token.trim())
            .json(&body)
            .send()
    };
    let r = call(
        reqwest::Method::POST,
        "/api/v1/groups",
        json!({ "name": "grubbers", "selector": "boot=grub", "variables": { "loader": "grub" },
                "generation": { "stream": "worker", "generation": 1 } }),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);

    let relay = Relay::new(RELAY, server.dhcp()).await;
    let mut xid = 0x5e1e_0000;
    let mut offered = || {
        xid += 1;
        let m = message(Client::UefiPxe, MessageType::Discover, MAC, xid, RELAY);
        let relay = &relay;
        async move { bootfile(&relay.exchange(&m).await.expect("an offer")) }
    };
    assert_eq!(offered().await.as_deref(), Some("ipxe.efi"));
    let script = || {
        common::http_get(
            server.bound.http,
            "/boot/52-54-00-5e-1e-01.ipxe?buildarch=x86_64",
        )
    };
    assert!(script().await.contains("nothing to boot"));

    // Labelled: the group's loader and generation.
    let path = format!("/api/v1/machines/{MAC_TEXT}");
    let r = call(
        reqwest::Method::PATCH,
        &path,
        json!({ "labels": { "boot": "grub" } }),
    )
    .await
    .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
    assert_eq!(offered().await.as_deref(), Some("grubnetx64.efi"));
    let s = script().await;
    assert!(s.contains("boots worker generation 1 (group)"), "{s}");

    // The label removed: back to default on the wire too.
    let r = call(
        reqwest::Method::PATCH,
        &path,
        json!({ "labels": { "boot": null } }),
    )
    .await
    .unwrap();
    assert!(r.status().is_success());
    assert_eq!(offered().await.as_deref(), Some("ipxe.efi"));
    assert!(script().await.contains("nothing to boot"));
    server.stop().await;
}
