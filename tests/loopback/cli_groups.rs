//! Groups, selectors and `explain` through the `ironboot` binary against a
//! running server, as the README walks an operator through them: make a
//! group with a selector, label a machine, see `explain` say why it lands
//! in the group, preview its config; refusals exit 1 with the reason.

use serde_json::{json, Value};

use crate::common;
use crate::common::TestServer;

const BIN: &str = env!("CARGO_BIN_EXE_ironboot");
const MAC: &str = "52:54:00:00:00:07";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_selectors_explain_and_templates_through_the_cli() {
    let server = TestServer::full("").await;
    let dir = server.dir.path();
    let kernel = dir.join("vmlinuz");
    let initrd = dir.join("initrd.img");
    std::fs::write(&kernel, vec![1u8; 4096]).unwrap();
    std::fs::write(&initrd, vec![2u8; 4096]).unwrap();
    let base = format!("http://{}", server.bound.http);
    let data = dir.join("data");
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .args(args)
            .args(["--server", &base, "--data-dir"])
            .arg(&data)
            .env_remove("IRONBOOT_TOKEN")
            .env_remove("IRONBOOT_SERVER")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let run = |args: &[&str]| tokio::task::block_in_place(|| cli(args));
    let ok = |args: &[&str]| {
        let (code, out, err) = run(args);
        assert_eq!(code, Some(0), "{args:?}: {out}{err}");
        out
    };
    let (k, i) = (kernel.to_str().unwrap(), initrd.to_str().unwrap());
    ok(&[
        "image", "import", "--stream", "worker", "--kernel", k, "--initrd", i,
    ]);

    // A group with a selector; a bad selector is refused with its column.
    let (code, _, err) = run(&["groups", "create", "db", "--selector", "role in (db"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("column 12"), "{err}");
    let out = ok(&[
        "groups",
        "create",
        "db",
        "--selector",
        "role==db",
        "--generation",
        "worker:1",
        "--description",
        "databases",
        "--var",
        "tier=2",
    ]);
    assert!(
        out.contains("role=db") && out.contains("worker gen 1"),
        "{out}"
    );

    // The machine boots once (so it is known), then is labelled.
    let script = common::http_get(
        server.bound.http,
        "/boot/52-54-00-00-00-07.ipxe?buildarch=x86_64",
    )
    .await;
    assert!(script.contains("nothing to boot"), "{script}");
    let token = std::fs::read_to_string(data.join("admin.token")).unwrap();
    let http = reqwest::Client::new();
    let patch = |body: Value| {
        http.patch(format!("{base}/api/v1/machines/{MAC}"))
            .bearer_auth(token.trim())
            .json(&body)
            .send()
    };
    let resp = patch(json!({ "labels": { "role": "db" } })).await.unwrap();
    assert!(resp.status().is_success(), "{:?}", resp.text().await);

    // explain says why, and shows what it would be served.
    let out = ok(&[
        "explain",
        MAC,
        "--arch",
        "7",
        "--vendor-class",
        "PXEClient:Arch:00007:UNDI:003016",
    ]);
    for want in [
        "group: group db's selector `role=db` matches its labels",
        "target: worker gen 1",
        "ipxe.efi",
        "--- ipxe/machine.ipxe ---",
        "#!ipxe",
    ] {
        assert!(out.contains(want), "{want:?} in\n{out}");
    }
    let out = ok(&["explain", MAC, "-o", "json"]);
    let json: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["group"]["membership"]["by"], "selector");
    assert_eq!(json["target"]["generation"]["number"], 1);
    // -o json writes every object's keys sorted, whatever the view's order.
    let sorted = serde_json::to_string_pretty(&json).unwrap();
    assert_eq!(out, format!("{sorted}\n"));

    // Members, show (alias `group`), set with If-Match.
    let out = ok(&["groups", "members", "db"]);
    assert!(out.contains(MAC) && out.contains("selector"), "{out}");
    let shown: Value = serde_json::from_str(&ok(&["group", "show", "db", "-o", "json"])).unwrap();
    assert_eq!(shown["members"][0]["mac"], MAC);
    assert_eq!(shown["variables"]["tier"], 2);
    ok(&[
        "groups",
        "set",
        "db",
        "--var",
        "loader=ipxe",
        "--unset-var",
        "tier",
    ]);
    let shown: Value = serde_json::from_str(&ok(&["groups", "show", "db", "-o", "json"])).unwrap();
    assert_eq!(shown["variables"], json!({ "loader": "ipxe" }));
    let (code, _, err) = run(&["groups", "set", "db"]);
    assert_eq!(code, Some(2), "nothing to change is a usage error: {err}");

    // Templates: list, render one, and the machine's own script.
    assert!(ok(&["templates", "list"]).contains("config/user-data"));
    let meta = ok(&["templates", "render", MAC, "-t", "config/meta-data"]);
    assert!(meta.contains("node-525400000007"), "{meta}");
    let script = ok(&["templates", "render", MAC]);
    assert!(script.starts_with("#!ipxe"), "{script}");
    let (code, _, err) = run(&["templates", "render", MAC, "-t", "nope"]);
    assert_eq!(code, Some(5), "not found: {err}");

    // Delete: refused while the machine is assigned, with the reason.
    let resp = patch(json!({ "group": "db" })).await.unwrap();
    assert!(resp.status().is_success());
    let (code, _, err) = run(&["groups", "delete", "db"]);
    assert_eq!(code, Some(6), "conflict: {err}");
    assert!(
        err.contains("explicitly assigned") && err.contains(MAC),
        "{err}"
    );
    let (code, _, err) = run(&["groups", "delete", "default"]);
    assert_eq!(code, Some(6), "conflict: {err}");
    patch(json!({ "group": null })).await.unwrap();
    ok(&["groups", "delete", "db"]);
    let json: Value = serde_json::from_str(&ok(&["explain", MAC, "-o", "json"])).unwrap();
    assert_eq!(json["group"]["name"], "default");
    assert!(!ok(&["groups", "list"]).contains("db"));
    ok(&["group", "set-generation", "default", "worker", "1"]);

    // No token: exit 4.
    let (code, _, _) = tokio::task::block_in_place(|| {
        let out = std::process::Command::new(BIN)
            .args([
                "groups",
                "list",
                "--server",
                &base,
                "--data-dir",
                "/nonexistent",
            ])
            .env_remove("IRONBOOT_TOKEN")
            .output()
            .unwrap();
        (out.status.code(), (), ())
    });
    assert_eq!(code, Some(4));
    server.stop().await;
}
