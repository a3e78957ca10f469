//! The dashboard at scale: 10,000 machines, 100,000 boots and 1,000,000
//! ledger events written straight into the server's database, then every
//! page timed over HTTP as a signed-in browser would fetch it. Pages must
//! answer in under 300 ms and filtered fleet pages in under 100 ms, at the
//! 95th percentile (this is the test build, unoptimised: a release build
//! is several times faster).

use std::time::{Duration, Instant};

use crate::common::api::Api;
use crate::common::{full_config, postgres_base, TestServer};

const MACHINES: i64 = 10_000;
const BOOTS_EACH: i64 = 10;
const STEPS_EACH: i64 = 10;
/// Timed fetches of each page (after two untimed ones).
const SAMPLES: usize = 20;

/// The seed, in the dialect of the server's database. Machine `i` has MAC
/// `02:aa:00:00:HH:LL`, rack `r(i % 20)`, and runs `worker` 2 if `i % 10 == 0`
/// (else 1); its boots are `i * 10 + 1 ..= i * 10 + 10`, the last one
/// failed for every 50th machine; each boot has ten steps.
fn seed_sql(postgres: bool) -> Vec<String> {
    let mac = |i: &str| {
        if postgres {
            format!("'02:aa:00:00:' || lpad(to_hex({i} >> 8), 2, '0') || ':' || lpad(to_hex({i} & 255), 2, '0')")
        } else {
            format!("printf('02:aa:00:00:%02x:%02x', {i} >> 8, {i} & 255)")
        }
    };
    let counter = |name: &str, n: i64| {
        format!("WITH RECURSIVE {name}(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM {name} WHERE i < {n} - 1)")
    };
    let gen = "CASE WHEN c.i % 10 = 0 THEN 2 ELSE 1 END";
    vec![
        format!(
            "{} INSERT INTO machines (mac, arch, firmware, labels, ip, current_stream, current_generation,
                 last_good_stream, last_good_generation, first_seen_ms, last_seen_ms)
             SELECT {}, CASE WHEN c.i % 3 = 0 THEN 'efi-x64' ELSE 'bios' END, 'ipxe',
                 '{{\"rack\":\"r' || (c.i % 20) || '\"}}', '10.0.' || (c.i / 250) || '.' || (c.i % 250 + 1),
                 'worker', {gen}, 'worker', {gen}, 1764800000000, 1764800000000 + c.i FROM c",
            counter("c", MACHINES),
            mac("c.i"),
        ),
        format!(
            "{} INSERT INTO boots (id, mac, token_hash, stream, generation, state, reason, started_ms, confirmed_ms)
             SELECT b.i + 1, {}, 'seed-' || b.i, 'worker', 1,
                 CASE WHEN b.i % 500 = 499 THEN 'failed' ELSE 'confirmed' END,
                 CASE WHEN b.i % 500 = 499 THEN 'no confirmation in 10m' END,
                 1764800000000 + b.i * 1000, 1764800000000 + b.i * 1000 + 15000 FROM b",
            counter("b", MACHINES * BOOTS_EACH),
            mac("(b.i / 10)"),
        ),
        format!(
            "{} INSERT INTO events (at_ms, mac, ip, step, detail, bytes, boot_id)
             SELECT 1764800000000 + (e.i / 10) * 1000 + (e.i % 10) * 1500, {}, '10.0.0.1',
                 CASE e.i % 10 WHEN 0 THEN 'dhcp.discover' WHEN 1 THEN 'dhcp.offer' WHEN 2 THEN 'dhcp.ack'
                   WHEN 3 THEN 'tftp.complete' WHEN 4 THEN 'boot.script' WHEN 5 THEN 'http.kernel'
                   WHEN 6 THEN 'http.initrd' WHEN 7 THEN 'boot.config' WHEN 8 THEN 'boot.config'
                   ELSE 'boot.confirm' END,
                 '{{}}', CASE WHEN e.i % 10 IN (5, 6) THEN 8000000 END, e.i / 10 + 1 FROM e",
            counter("e", MACHINES * BOOTS_EACH * STEPS_EACH),
            mac("(e.i / 100)"),
        ),
    ]
}

/// The 95th percentile of `samples`, in milliseconds.
fn p95(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    let at = (samples.len() * 95).div_ceil(100) - 1;
    samples[at].as_secs_f64() * 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_pages_stay_fast_with_10000_machines_and_a_million_events() {
    let _alone = crate::alone().await;
    let dir = tempfile::TempDir::new().unwrap();
    let text = full_config(dir.path(), "");
    let server = TestServer::start(&text, dir).await;
    let api = Api::new(&server);
    for n in 1..=2u8 {
        api.import("worker", &[n; 4096], &[n; 2048], "console=ttyS0")
            .await;
    }
    api.point("default", "worker", 1).await;
    let dir = server.stop().await;

    let seeding = Instant::now();
    let db = TestServer::db_rw(dir.path()).await;
    for sql in seed_sql(postgres_base().is_some()) {
        sqlx::query(&sql).execute(&db).await.unwrap();
    }
    db.close().await;
    eprintln!(
        "seeded 10,000 machines, 100,000 boots, 1,000,000 events in {:?}",
        seeding.elapsed()
    );

    let server = TestServer::start(&text, dir).await;
    let api = Api::new(&server);
    let http = reqwest::Client::new();
    let cookie = format!("ironboot_ui={}", api.token);
    let time = |path: String| {
        let (http, cookie, url) = (http.clone(), cookie.clone(), api.url(&path));
        async move {
            let mut samples = Vec::new();
            for i in 0..SAMPLES + 2 {
                let started = Instant::now();
                let res = http
                    .get(&url)
                    .header("cookie", &cookie)
                    .header("accept", "text/html")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 200, "{path}");
                let body = res.text().await.unwrap();
                if i >= 2 {
                    samples.push(started.elapsed());
                }
                assert!(
                    body.contains("</html>") || body.contains("<article"),
                    "{path}"
                );
            }
            p95(samples)
        }
    };
    let machine = "02:aa:00:00:13:88"; // 5000: ten boots of ten steps
    let pages = [
        "/ui/".to_string(),
        "/ui/?cursor=02%3Aaa%3A00%3A00%3A13%3A87".into(),
        format!("/ui/machines/{machine}"),
        format!("/ui/machines/{machine}/timeline"),
        "/ui/events".into(),
        format!("/ui/events?mac={machine}"),
        "/ui/groups".into(),
        "/ui/groups/default".into(),
        "/ui/streams/worker".into(),
        "/ui/rollouts".into(),
        "/ui/watchdog".into(),
        format!("/ui/explain?mac={machine}"),
    ];
    let filters = [
        "/ui/?state=failed",
        "/ui/?selector=rack%3Dr7",
        "/ui/?stream=worker&generation=2",
        "/ui/?arch=efi-x64&state=confirmed",
        "/ui/?group=default&kind=server",
        "/ui/?selector=rack%20in%20(r1%2Cr2)%2C!decommissioned",
    ];
    let mut report = Vec::new();
    for path in pages {
        let ms = time(path.clone()).await;
        report.push(format!("{path}: p95 {ms:.1} ms"));
        assert!(
            ms < 300.0,
            "{path}: p95 {ms:.1} ms (limit 300)\n{}",
            report.join("\n")
        );
    }
    for path in filters {
        let ms = time(path.to_string()).await;
        report.push(format!("{path}: p95 {ms:.1} ms"));
        assert!(
            ms < 100.0,
            "{path}: p95 {ms:.1} ms (limit 100)\n{}",
            report.join("\n")
        );
    }
    eprintln!(
        "dashboard page timings (10,000 machines, 1,000,000 events):\n{}",
        report.join("\n")
    );
    server.stop().await;
}
