//! What an unauthenticated client can hold is bounded: half-sent HTTP
//! requests are closed after the header-read timeout and capped per
//! address, so boot scripts, artifacts and the API keep answering.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use crate::common::TestServer;

async fn healthz_from(server: &TestServer, from: &str) -> Option<u16> {
    let client = reqwest::Client::builder()
        .local_address(from.parse::<std::net::IpAddr>().unwrap())
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let r = client
        .get(format!("http://{}/healthz", server.bound.http))
        .send()
        .await
        .ok()?;
    Some(r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_cannot_hold_the_server() {
    let dir = tempfile::TempDir::new().unwrap();
    let text = crate::common::full_config(dir.path(), "").replacen(
        "[http]\nlisten = \"127.0.0.1:0\"",
        "[http]\nlisten = \"127.0.0.1:0\"\nheader_read_timeout = \"3s\"\nmax_connections_per_address = 64",
        1,
    );
    let server = TestServer::start(&text, dir).await;
    // 620 connections from one address, each with half a request.
    let mut held = Vec::new();
    for _ in 0..620 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.3:0".parse().unwrap()).unwrap();
        if let Ok(mut s) = socket.connect(server.bound.http).await {
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
            held.push(s);
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Another machine is served at once, whatever the flood holds.
    let started = Instant::now();
    assert_eq!(healthz_from(&server, "127.0.0.4").await, Some(200));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(
        server.counter("http_connections_refused").await >= 620 - 64,
        "connections over the per-address cap are closed at once"
    );
    // After the header-read timeout the half-sent requests are gone and the
    // flooding address itself is served again. (3 s, not less: on a busy
    // machine the 620 connections take over a second, and the first ones
    // timing out would free slots for later ones mid-flood.)
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let mut again = None;
    for _ in 0..10 {
        again = healthz_from(&server, "127.0.0.3").await;
        if again == Some(200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        again,
        Some(200),
        "the flooding address is served once its requests time out"
    );
    drop(held);
    server.stop().await;
}

/// TFTP: a client-chosen `timeout=255` is not acknowledged (it held a
/// transfer slot for about 30 minutes), one address holds at most
/// `max_transfers_per_client` transfers, and a 65 kB file name is refused
/// without being stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tftp_clients_cannot_hold_slots_or_fill_the_ledger() {
    use crate::common::tftp_client::{recv, rrq, socket};
    use ironboot::tftp::codec::{Mode, Packet};
    let server = TestServer::full("").await;
    let tftp = server.bound.tftp.expect("TFTP bound");

    let sock = socket().await;
    let opts = [
        ("timeout".to_string(), "255".to_string()),
        ("blksize".to_string(), "512".to_string()),
    ];
    sock.send_to(&rrq("undionly.kpxe", Mode::Octet, &opts), tftp)
        .await
        .unwrap();
    let (bytes, _) = recv(&sock, Duration::from_secs(3))
        .await
        .expect("an answer");
    match Packet::decode(&bytes).unwrap() {
        Packet::Oack(acked) => assert!(
            !acked.iter().any(|(k, _)| k == "timeout"),
            "timeout=255 is not acknowledged: {acked:?}"
        ),
        other => panic!("{other:?}"),
    }

    // Nine more requests from the same address that never acknowledge:
    // with the one above still open, the ninth and tenth are busy (eight
    // per client by default).
    let mut socks = Vec::new();
    let mut busy = 0;
    for _ in 0..9 {
        let s = socket().await;
        s.send_to(&rrq("undionly.kpxe", Mode::Octet, &[]), tftp)
            .await
            .unwrap();
        if let Some((bytes, _)) = recv(&s, Duration::from_secs(2)).await {
            if let Ok(Packet::Error { message, .. }) = Packet::decode(&bytes) {
                assert!(message.contains("busy"), "{message}");
                busy += 1;
            }
        }
        socks.push(s);
    }
    assert_eq!(
        busy, 2,
        "transfers beyond eight from one address are refused"
    );

    let long = "a".repeat(65_000);
    for _ in 0..20 {
        let s = socket().await;
        s.send_to(&rrq(&long, Mode::Octet, &[]), tftp)
            .await
            .unwrap();
        let (bytes, _) = recv(&s, Duration::from_secs(2)).await.expect("refused");
        assert!(matches!(Packet::decode(&bytes), Ok(Packet::Error { .. })));
    }
    let dir = server.stop().await;
    let db = TestServer::db(dir.path()).await;
    let (longest,): (Option<i64>,) = sqlx::query_as("SELECT MAX(LENGTH(detail)) FROM events")
        .fetch_one(&db)
        .await
        .unwrap();
    assert!(
        longest.unwrap_or(0) < 1024,
        "no event holds the long name: {longest:?}"
    );
}

/// The memory floods of the issue against the real binary, with its RSS
/// and database size read before and after: 2,000 script requests for
/// random MACs with a 60 kB serial, 50 phone-homes of 2 MiB, and a live
/// event stream that never reads while 150 more phone-homes arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_leave_memory_and_disk_where_they_were() {
    let dir = tempfile::TempDir::new().unwrap();
    let port = crate::process::free_port();
    let text = crate::common::full_config_with(dir.path(), "", crate::common::BINDING_REQUIRED)
        .replacen(
            "[http]\nlisten = \"127.0.0.1:0\"",
            &format!("[http]\nlisten = \"127.0.0.1:{port}\""),
            1,
        );
    let config = dir.path().join("ironboot.toml");
    std::fs::write(&config, text).unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let server = crate::process::Server::start(&config).healthy(&base).await;
    let pid = server.pid();
    let rss = || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            .unwrap()
            / 1024
    };
    let db_size = || async { TestServer::db_bytes(dir.path()).await / (1024 * 1024) };
    let (rss0, db0) = (rss(), db_size().await);
    // A fresh connection per request, each bounded: the server answers an
    // oversized body with 413 and closes while the client may still be
    // writing it, and a pooled connection closed that way once left
    // reqwest waiting for it for over a minute.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let serial = "s".repeat(60_000);
    for i in 0..2000u32 {
        let mac = format!(
            "52:54:02:{:02x}:{:02x}:{:02x}",
            i >> 16,
            (i >> 8) & 0xff,
            i & 0xff
        );
        let _ = http
            .get(format!("{base}/boot/{mac}.ipxe?serial={serial}"))
            .send()
            .await;
    }
    let token = std::fs::read_to_string(dir.path().join("data/admin.token")).unwrap();
    // A live subscriber that never reads.
    let mut stalled = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    use tokio::io::AsyncWriteExt;
    stalled
        .write_all(
            format!(
                "GET /api/v1/events/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
                token.trim()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let body = vec![b'a'; 2 * 1024 * 1024];
    for _ in 0..200 {
        let _ = http
            .post(format!("{base}/phone-home/{}", "0".repeat(64)))
            .body(body.clone())
            .send()
            .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss1, db1) = (rss(), db_size().await);
    eprintln!("hostile floods: server RSS {rss0} -> {rss1} MiB, database {db0} -> {db1} MiB");
    assert!(rss1 < rss0 + 64, "RSS {rss0} -> {rss1} MiB");
    assert!(db1 <= db0 + 1, "database {db0} -> {db1} MiB");
    drop(stalled);
    drop(server);
}
