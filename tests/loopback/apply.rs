//! Desired state through the `ironboot` binary against a running server:
//! `apply --dry-run` plans and changes nothing; `apply` creates groups,
//! labels, assignments and pins; the same file again changes nothing (no
//! rows, no events, the same ETags); a bad key or reference names its line
//! and changes nothing; a changed generation starts a rollout that
//! `ironboot rollout list` shows, and moving away from it is a conflict.

use serde_json::Value;

use crate::common;
use crate::common::TestServer;

const BIN: &str = env!("CARGO_BIN_EXE_ironboot");
const A: &str = "52:54:00:00:0a:01";
const B: &str = "52:54:00:00:0a:02";
const C: &str = "52:54:00:00:0a:03";

/// The fleet file of this test; `{gen}` is web's generation.
fn fleet(generation: i64) -> String {
    format!(
        "\
groups:
  web:
    description: front-end servers
    selector: \"role=web,rack in (r1,r2)\"
    variables: {{ntp: 10.0.0.1}}
    stream: worker
    generation: {generation}
    rollout: {{canary: 1, steps: [50%, 100%], timeout: 10m}}
  db:
    selector: role=db
machines:
  {A}:
    hostname: node-a
    labels: {{role: web, rack: r1}}
  52-54-00-00-0A-02:
    labels: {{role: web, rack: r2}}
  {C}:
    labels: {{role: db}}
    group: db
    pin: {{stream: worker, generation: 1}}
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_plans_applies_once_names_lines_and_starts_rollouts() {
    let server = TestServer::full("").await;
    let dir = server.dir.path().to_path_buf();
    let base = format!("http://{}", server.bound.http);
    let data = dir.join("data");
    let cli = |args: &[&str], stdin: Option<&str>| {
        use std::io::Write as _;
        let mut child = std::process::Command::new(BIN)
            .args(args)
            .args(["--server", &base, "--data-dir"])
            .arg(&data)
            .env_remove("IRONBOOT_TOKEN")
            .env_remove("IRONBOOT_SERVER")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
        drop(input);
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let run = |args: &[&str]| tokio::task::block_in_place(|| cli(args, None));
    let ok = |args: &[&str]| {
        let (code, out, err) = run(args);
        assert_eq!(code, Some(0), "{args:?}: {out}{err}");
        out
    };
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };

    // Two generations of worker; three machines the server has seen.
    for n in 1..=2u8 {
        let kernel = dir.join(format!("vmlinuz{n}"));
        let initrd = dir.join(format!("initrd{n}.img"));
        std::fs::write(&kernel, vec![n; 4096]).unwrap();
        std::fs::write(&initrd, vec![n + 10; 4096]).unwrap();
        ok(&[
            "image",
            "import",
            "--stream",
            "worker",
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
        ]);
    }
    for mac in [A, B, C] {
        let path = format!("/boot/{}.ipxe?buildarch=x86_64", mac.replace(':', "-"));
        common::http_get(server.bound.http, &path).await;
    }
    let db = TestServer::db(&dir).await;
    let count = |sql: &'static str| {
        let db = db.clone();
        async move {
            let (n,): (i64,) = sqlx::query_as(sql).fetch_one(&db).await.unwrap();
            n
        }
    };
    let token = std::fs::read_to_string(data.join("admin.token")).unwrap();
    let http = reqwest::Client::new();
    let get = |path: String| {
        let req = http
            .get(format!("{base}{path}"))
            .bearer_auth(token.trim())
            .send();
        async move {
            let resp = req.await.unwrap();
            let tag = resp
                .headers()
                .get("etag")
                .map(|t| t.to_str().unwrap().to_string());
            let status = resp.status();
            (status, tag, resp.json::<Value>().await.unwrap())
        }
    };
    let v1 = write("fleet.yaml", &fleet(1));

    // Dry run: the plan, and nothing changed.
    let events_before = count("SELECT COUNT(*) FROM events").await;
    let out = ok(&["apply", "-f", &v1, "--dry-run"]);
    for want in [
        "+ group db: selector \"role=db\"",
        "+ group web: description \"front-end servers\", selector \"role=web,rack in (r1,r2)\", variables {\"ntp\":\"10.0.0.1\"}, generation worker gen 1",
        &format!("~ machine {A}: hostname - -> \"node-a\", labels +rack=r1 +role=web"),
        &format!("~ machine {C}: labels +role=db, group - -> \"db\", pin - -> worker gen 1"),
        "5 change(s) planned; dry run: nothing changed",
    ] {
        assert!(out.contains(want), "{want:?} in\n{out}");
    }
    let (status, _, _) = get("/api/v1/groups/web".into()).await;
    assert_eq!(status, 404, "a dry run creates nothing");
    assert_eq!(count("SELECT COUNT(*) FROM groups").await, 1);
    assert_eq!(
        count("SELECT COUNT(*) FROM machines WHERE labels != '{}' OR hostname IS NOT NULL OR pin_stream IS NOT NULL").await,
        0
    );

    // An apply whose commit fails changes nothing, in SQLite or in memory:
    // the disk refuses the rows of machines a selector moves (written last).
    TestServer::refuse(
        &dir,
        "refuse_moves",
        "UPDATE OF group_name",
        "machines",
        "NOT NEW.group_assigned",
    )
    .await;
    let (code, out, err) = run(&["apply", "-f", &v1]);
    assert_ne!(code, Some(0), "{out}{err}");
    let (status, _, _) = get("/api/v1/groups/web".into()).await;
    assert_eq!(status, 404, "a failed apply shows no group");
    let (_, _, a) = get(format!("/api/v1/machines/{A}")).await;
    assert!(
        a["hostname"].is_null() && a["labels"] == serde_json::json!({}),
        "{a}"
    );
    TestServer::allow(&dir, "refuse_moves", "machines").await;

    // Apply: groups, labels, assignment, pin; machines land by selector.
    let out = ok(&["apply", "-f", &v1]);
    assert!(out.contains("5 change(s) applied"), "{out}");
    let (_, web_tag, web) = get("/api/v1/groups/web".into()).await;
    assert_eq!(web["selector"], "role=web,rack in (r1,r2)");
    assert_eq!(web["variables"]["ntp"], "10.0.0.1");
    assert_eq!(web["by_arch"]["x86_64"]["generation"], 1);
    let (_, a_tag, a) = get(format!("/api/v1/machines/{A}")).await;
    assert_eq!(
        (a["hostname"].as_str(), a["group"].as_str()),
        (Some("node-a"), Some("web"))
    );
    let (_, c_tag, c) = get(format!("/api/v1/machines/{C}")).await;
    assert_eq!(c["group"], "db");
    assert_eq!(c["group_assigned"], true);
    assert_eq!(c["pin"]["generation"], 1);

    // The same file again: no changes, nothing written.
    let events = count("SELECT COUNT(*) FROM events").await;
    let updated = count("SELECT CAST(COALESCE(SUM(updated_ms), 0) AS BIGINT) FROM groups").await;
    let out = ok(&["apply", "-f", &v1]);
    assert_eq!(
        out.trim(),
        format!("no changes: the server already matches {v1}")
    );
    let json: Value =
        serde_json::from_str(&ok(&["apply", "-f", &v1, "--dry-run", "-o", "json"])).unwrap();
    assert_eq!(json["changes"], serde_json::json!([]));
    assert_eq!(count("SELECT COUNT(*) FROM events").await, events);
    assert_eq!(
        count("SELECT CAST(COALESCE(SUM(updated_ms), 0) AS BIGINT) FROM groups").await,
        updated
    );
    assert_eq!(get("/api/v1/groups/web".into()).await.1, web_tag);
    assert_eq!(get(format!("/api/v1/machines/{A}")).await.1, a_tag);
    assert_eq!(get(format!("/api/v1/machines/{C}")).await.1, c_tag);
    assert!(events >= events_before);

    // A key that does not exist: exit 2, its line and column.
    let bad = write("bad-key.yaml", "groups:\n  web:\n    selecter: role=web\n");
    let (code, _, err) = run(&["apply", "-f", &bad]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!("{bad}:3:5: unknown key \"selecter\"")),
        "{err}"
    );

    // An invalid reference: its line, exit 1, and the valid change beside
    // it is not applied either.
    let bad = write(
        "bad-ref.yaml",
        &format!("machines:\n  {A}:\n    hostname: renamed\n  {B}:\n    group: nosuch\n"),
    );
    let (code, _, err) = run(&["apply", "-f", &bad]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("{bad}:5:12: server refused (422 Unprocessable Entity): group nosuch is neither in the file nor on the server (machines.{B}.group)")),
        "{err}"
    );
    assert_eq!(
        get(format!("/api/v1/machines/{A}")).await.2["hostname"],
        "node-a"
    );
    let bad = write(
        "bad-gen.yaml",
        "groups:\n  web:\n    stream: worker\n    generation: 9\n",
    );
    let (code, _, err) = run(&["apply", "-f", &bad]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("{bad}:4:17:")) && err.contains("worker gen 9 does not exist"),
        "{err}"
    );

    // A changed generation: web's machines run 1, so a rollout to 2 with
    // the file's strategy (read from standard input this time).
    let v2 = fleet(2);
    let (code, out, err) = tokio::task::block_in_place(|| cli(&["apply", "-f", "-"], Some(&v2)));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("rollout group web: worker gen 1 -> worker gen 2 (canary 1, steps 50%,100%, timeout 10m; 2 machine(s)): started rollout 1"),
        "{out}"
    );
    let list = ok(&["rollout", "list"]);
    assert!(
        list.lines()
            .any(|l| l.contains("web") && l.contains("worker gen 2") && l.contains("running")),
        "{list}"
    );
    // Toward the same target: no change. Toward another: a conflict on the
    // generation's line, exit 6.
    let (code, out, _) = tokio::task::block_in_place(|| cli(&["apply", "-f", "-"], Some(&v2)));
    assert_eq!(code, Some(0));
    assert!(out.starts_with("no changes"), "{out}");
    let (code, _, err) = run(&["apply", "-f", &v1]);
    assert_eq!(code, Some(6), "{err}");
    assert!(
        err.contains(&format!("{v1}:7:17: conflict (409 Conflict): group web has rollout 1 toward worker gen 2 in progress")),
        "{err}"
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM rollouts").await,
        1,
        "one rollout, started once"
    );

    // Its machines boot and phone home, wave by wave, until it succeeds
    // and web's pointer is the file's: the same file is still no change.
    let mut state = String::new();
    for _ in 0..50 {
        for mac in [A, B] {
            let path = format!("/boot/{}.ipxe?buildarch=x86_64", mac.replace(':', "-"));
            let script = common::http_get(server.bound.http, &path).await;
            let token = script
                .split("/config/")
                .nth(1)
                .and_then(|t| t.split('/').next())
                .unwrap_or_else(|| panic!("a token in\n{script}"));
            let resp = http
                .post(format!("{base}/phone-home/{token}"))
                .send()
                .await
                .unwrap();
            assert!(resp.status().is_success(), "{mac}: {}", resp.status());
        }
        state = get("/api/v1/rollouts/1".into()).await.2["state"]
            .as_str()
            .unwrap()
            .to_string();
        if state == "succeeded" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(state, "succeeded");
    let web = get("/api/v1/groups/web".into()).await.2;
    assert_eq!(web["by_arch"]["x86_64"]["generation"], 2, "{web}");
    let (code, out, _) = tokio::task::block_in_place(|| cli(&["apply", "-f", "-"], Some(&v2)));
    assert_eq!(code, Some(0));
    assert!(out.starts_with("no changes"), "{out}");
    server.stop().await;
}
