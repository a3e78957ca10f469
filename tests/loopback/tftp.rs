//! The TFTP server on loopback, driven by an in-test client and, when
//! installed, by atftp and tftp-hpa. All traffic goes to 127.0.0.1; every
//! wait is bounded.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use ironboot::clients::Clients;
use ironboot::domain::lease::{Entry, State};
use ironboot::domain::MacAddr;
use ironboot::ledger::{Event, Ledger, Record};
use ironboot::metrics::Metrics;
use ironboot::tftp::codec::{ErrorCode, Mode, Packet};
use ironboot::tftp::{self, GeneratedFiles, TftpConfig, TftpState};
use tempfile::TempDir;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::common::tftp_client::{self, expect_error, get, recv, rrq, GetOpts};

const MAC: &str = "52:54:00:12:34:56";

/// A running server with its root, counters and ledger queue.
struct TestServer {
    addr: SocketAddr,
    root: TempDir,
    metrics: Arc<Metrics>,
    ledger_rx: mpsc::Receiver<Record>,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

fn config(root: &Path) -> TftpConfig {
    TftpConfig {
        root: root.to_path_buf(),
        max_blksize: 1468,
        max_windowsize: 64,
        max_transfers: 64,
        timeout: Duration::from_millis(500),
        retries: 4,
        ..TftpConfig::default()
    }
}

async fn start_with(
    tweak: impl FnOnce(&mut TftpConfig),
    generated: Option<Arc<dyn GeneratedFiles>>,
) -> TestServer {
    start_on("127.0.0.1:0", tweak, generated).await
}

/// `bind` may be the wildcard address; `addr` is then 127.0.0.1 and the port.
async fn start_on(
    bind: &str,
    tweak: impl FnOnce(&mut TftpConfig),
    generated: Option<Arc<dyn GeneratedFiles>>,
) -> TestServer {
    let root = tempfile::tempdir().unwrap();
    let mut config = config(root.path());
    tweak(&mut config);
    let metrics = Arc::new(Metrics::default());
    let (ledger, ledger_rx) = Ledger::new(1024, Arc::clone(&metrics));
    let mac: MacAddr = MAC.parse().unwrap();
    let state = Arc::new(TftpState {
        config,
        generated,
        ledger,
        metrics: Arc::clone(&metrics),
        // 127.0.0.1 holds a lease for MAC: events land on that machine.
        clients: Clients::new(
            &[],
            [Entry {
                ip: [127, 0, 0, 1].into(),
                mac: Some(mac),
                state: State::Bound,
                expires_at: i64::MAX,
                hostname: None,
            }],
            Default::default(),
        ),
    });
    let socket = UdpSocket::bind(bind).await.unwrap();
    let addr = SocketAddr::new([127, 0, 0, 1].into(), socket.local_addr().unwrap().port());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(tftp::run(socket, state, shutdown.clone()));
    TestServer {
        addr,
        root,
        metrics,
        ledger_rx,
        shutdown,
        task,
    }
}

async fn start() -> TestServer {
    start_with(|_| {}, None).await
}

impl TestServer {
    fn write(&self, name: &str, bytes: &[u8]) {
        let path = self.root.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    /// Cancels the server and checks it stops cleanly and promptly.
    async fn stop(self) {
        self.shutdown.cancel();
        let joined = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        joined
            .expect("server stops")
            .expect("no panic")
            .expect("run returns Ok");
    }

    /// Polls until `counter` reaches `at_least` (bounded), returns its value.
    async fn wait_counter(&self, counter: impl Fn(&Metrics) -> &AtomicU64, at_least: u64) -> u64 {
        for _ in 0..200 {
            let value = Metrics::get(counter(&self.metrics));
            if value >= at_least {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Metrics::get(counter(&self.metrics))
    }

    /// Ledger events received so far (waits briefly for stragglers).
    async fn events(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Ok(Some(record)) =
            tokio::time::timeout(Duration::from_millis(200), self.ledger_rx.recv()).await
        {
            if let Record::Event(event) = record {
                out.push(event);
            }
        }
        out
    }
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn opt(pairs: &[(&str, &str)]) -> GetOpts {
    pairs
        .iter()
        .fold(GetOpts::default(), |o, (n, v)| o.with(n, v))
}

fn oack_value(oack: &Option<Vec<(String, String)>>, name: &str) -> Option<String> {
    oack.as_ref()?
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
}

#[tokio::test]
async fn plain_512_byte_transfer_without_options() {
    let mut server = start().await;
    let odd = pattern(10_000, 1);
    let exact = pattern(1024, 2); // a multiple of 512: ends with an empty block
    server.write("odd.bin", &odd);
    server.write("exact.bin", &exact);

    let got = get(server.addr, "odd.bin", GetOpts::default())
        .await
        .unwrap();
    assert_eq!(got.data, odd);
    assert!(got.oack.is_none(), "no options asked, no OACK");
    assert_eq!(got.blocks_seen, (1..=20).collect::<Vec<u16>>());

    let got = get(server.addr, "/exact.bin", GetOpts::default())
        .await
        .unwrap();
    assert_eq!(got.data, exact);
    assert_eq!(got.blocks_seen, vec![1, 2, 3]);
    assert_ne!(
        got.server_tid.unwrap().port(),
        server.addr.port(),
        "fresh transfer port"
    );

    assert_eq!(server.wait_counter(|m| &m.tftp_completed, 2).await, 2);
    assert_eq!(Metrics::get(&server.metrics.tftp_bytes), 11_024);
    assert_eq!(Metrics::get(&server.metrics.tftp_requests), 2);
    let events = server.events().await;
    let complete: Vec<_> = events
        .iter()
        .filter(|e| e.step == "tftp.complete")
        .collect();
    assert_eq!(complete.len(), 2);
    assert_eq!(complete[0].mac, Some(MAC.parse().unwrap()));
    assert_eq!(complete[0].ip, Some("127.0.0.1".parse().unwrap()));
    assert_eq!(complete[0].detail["file"], "odd.bin");
    assert_eq!(complete[0].detail["blksize"], 512);
    assert_eq!(complete[0].detail["windowsize"], 1);
    assert_eq!(complete[0].bytes, Some(10_000));
    server.stop().await;
}

#[tokio::test]
async fn wildcard_listen_socket_answers_from_the_request_address() {
    // Exercises the IP_PKTINFO path: the transfer socket binds 127.0.0.1.
    let server = start_on("0.0.0.0:0", |_| {}, None).await;
    let file = pattern(5_000, 18);
    server.write("f", &file);
    let got = get(server.addr, "f", opt(&[("blksize", "1468")]))
        .await
        .unwrap();
    assert_eq!(got.data, file);
    assert_eq!(got.server_tid.unwrap().ip(), server.addr.ip());
    server.stop().await;
}

#[tokio::test]
async fn blksize_1468_and_tsize_are_negotiated() {
    let server = start().await;
    let file = pattern(100_000, 3);
    server.write("ipxe.efi", &file);
    let got = get(
        server.addr,
        "ipxe.efi",
        opt(&[("blksize", "1468"), ("tsize", "0")]),
    )
    .await
    .unwrap();
    assert_eq!(got.data, file);
    assert_eq!(
        got.oack,
        Some(vec![
            ("blksize".into(), "1468".into()),
            ("tsize".into(), "100000".into())
        ])
    );
    assert_eq!(got.blocks_seen.len(), 100_000 / 1468 + 1);

    // Above the configured cap: answered with the cap.
    let got = get(server.addr, "ipxe.efi", opt(&[("blksize", "9000")]))
        .await
        .unwrap();
    assert_eq!(oack_value(&got.oack, "blksize").as_deref(), Some("1468"));
    assert_eq!(got.data, file);
    server.stop().await;
}

#[tokio::test]
async fn windowsize_8_and_16_deliver_identical_bytes() {
    let server = start().await;
    let file = pattern(300_001, 4);
    server.write("big.img", &file);
    for window in ["8", "16"] {
        let opts = opt(&[("blksize", "1468"), ("windowsize", window), ("tsize", "0")]);
        let got = get(server.addr, "big.img", opts).await.unwrap();
        assert_eq!(oack_value(&got.oack, "windowsize").as_deref(), Some(window));
        assert_eq!(got.data, file, "windowsize {window}");
        assert_eq!(
            got.blocks_seen.len(),
            300_001 / 1468 + 1,
            "no retransmissions"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn windowsize_is_capped_by_config() {
    let server = start_with(|c| c.max_windowsize = 4, None).await;
    server.write("f", &pattern(50_000, 5));
    let got = get(server.addr, "f", opt(&[("windowsize", "16")]))
        .await
        .unwrap();
    assert_eq!(oack_value(&got.oack, "windowsize").as_deref(), Some("4"));
    assert_eq!(got.data, pattern(50_000, 5));
    server.stop().await;
}

#[tokio::test]
async fn block_numbers_roll_over_past_65535() {
    // blksize 8: 65536 blocks are 512 KiB, so this file needs block numbers
    // to wrap (to 0, RFC 1350 practice) once.
    let server = start().await;
    let file = pattern(540_000, 6);
    server.write("rollover.bin", &file);
    for window in ["1", "7"] {
        let opts = opt(&[("blksize", "8"), ("windowsize", window)]);
        let got = get(server.addr, "rollover.bin", opts).await.unwrap();
        assert_eq!(got.data.len(), file.len(), "windowsize {window}");
        assert!(got.data == file, "windowsize {window}: bytes differ");
        assert!(got.blocks_seen.contains(&0), "block 0 seen after wrapping");
    }
    server.stop().await;
}

#[tokio::test]
async fn lost_ack_is_recovered_by_timeout_retransmission() {
    let server = start_with(|c| c.timeout = Duration::from_millis(200), None).await;
    let file = pattern(5_000, 7);
    server.write("f", &file);
    let opts = GetOpts {
        drop_ack_once: Some(3),
        ..GetOpts::default()
    };
    let got = get(server.addr, "f", opts).await.unwrap();
    assert_eq!(got.data, file);
    assert_eq!(
        got.blocks_seen.iter().filter(|&&b| b == 3).count(),
        2,
        "block 3 resent once"
    );
    assert_eq!(got.blocks_seen.iter().filter(|&&b| b == 4).count(), 1);

    // With a window, a lost final ACK of a window resends that window.
    let opts = GetOpts {
        drop_ack_once: Some(4),
        ..opt(&[("windowsize", "4")])
    };
    let got = get(server.addr, "f", opts).await.unwrap();
    assert_eq!(got.data, file);
    assert_eq!(
        got.blocks_seen.iter().filter(|&&b| b == 1).count(),
        2,
        "window 1..4 resent"
    );
    server.stop().await;
}

#[tokio::test]
async fn duplicate_ack_causes_no_duplicate_data() {
    // A long timeout: any repeated block could only come from the duplicate ACK.
    let server = start_with(|c| c.timeout = Duration::from_secs(5), None).await;
    let file = pattern(20 * 512 + 10, 8);
    server.write("f", &file);
    for (window, dup) in [("1", 5u64), ("4", 8)] {
        let opts = GetOpts {
            duplicate_ack: Some(dup),
            ..opt(&[("windowsize", window)])
        };
        let got = get(server.addr, "f", opts).await.unwrap();
        assert_eq!(got.data, file);
        let mut sorted = got.blocks_seen.clone();
        sorted.dedup();
        assert_eq!(
            sorted, got.blocks_seen,
            "windowsize {window}: a block was sent twice"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn ack_inside_window_resends_from_there() {
    // Drive the server by hand: windowsize 4, acknowledge only block 2 of the
    // first window; the next window must start at block 3.
    let server = start_with(|c| c.timeout = Duration::from_secs(5), None).await;
    let file = pattern(512 * 10, 9);
    server.write("f", &file);
    let sock = tftp_client::socket().await;
    let options = vec![("windowsize".to_string(), "4".to_string())];
    sock.send_to(&rrq("f", Mode::Octet, &options), server.addr)
        .await
        .unwrap();
    let (oack, tid) = recv(&sock, Duration::from_secs(5)).await.unwrap();
    assert!(matches!(Packet::decode(&oack), Ok(Packet::Oack(_))));
    sock.send_to(&Packet::Ack(0).to_bytes(), tid).await.unwrap();
    let mut blocks = Vec::new();
    for _ in 0..4 {
        let (bytes, _) = recv(&sock, Duration::from_secs(5)).await.unwrap();
        let Ok(Packet::Data { block, .. }) = Packet::decode(&bytes) else {
            panic!("DATA")
        };
        blocks.push(block);
    }
    assert_eq!(blocks, [1, 2, 3, 4]);
    sock.send_to(&Packet::Ack(2).to_bytes(), tid).await.unwrap();
    let (bytes, _) = recv(&sock, Duration::from_secs(5)).await.unwrap();
    assert!(matches!(
        Packet::decode(&bytes),
        Ok(Packet::Data { block: 3, .. })
    ));
    server.stop().await;
}

#[tokio::test]
async fn packets_from_a_wrong_tid_get_error_5_and_the_transfer_goes_on() {
    let server = start().await;
    let file = pattern(2_000, 10);
    server.write("f", &file);
    let sock = tftp_client::socket().await;
    sock.send_to(&rrq("f", Mode::Octet, &[]), server.addr)
        .await
        .unwrap();
    let (first, tid) = recv(&sock, Duration::from_secs(5)).await.unwrap();
    let intruder = tftp_client::socket().await;
    intruder
        .send_to(&Packet::Ack(1).to_bytes(), tid)
        .await
        .unwrap();
    let (answer, _) = recv(&intruder, Duration::from_secs(5)).await.unwrap();
    assert!(matches!(
        Packet::decode(&answer),
        Ok(Packet::Error {
            code: ErrorCode::UnknownTid,
            ..
        })
    ));
    // The real client carries on.
    let mut data = match Packet::decode(&first) {
        Ok(Packet::Data { block: 1, payload }) => payload.to_vec(),
        other => panic!("{other:?}"),
    };
    for block in 1u16..=3 {
        sock.send_to(&Packet::Ack(block).to_bytes(), tid)
            .await
            .unwrap();
        let (bytes, _) = recv(&sock, Duration::from_secs(5)).await.unwrap();
        let Ok(Packet::Data { payload, .. }) = Packet::decode(&bytes) else {
            panic!("DATA")
        };
        data.extend_from_slice(payload);
    }
    sock.send_to(&Packet::Ack(4).to_bytes(), tid).await.unwrap();
    assert_eq!(data, file);
    assert_eq!(server.wait_counter(|m| &m.tftp_completed, 1).await, 1);
    server.stop().await;
}

#[tokio::test]
async fn silent_client_times_out_and_is_recorded() {
    let mut server = start_with(
        |c| {
            c.timeout = Duration::from_millis(100);
            c.retries = 2;
        },
        None,
    )
    .await;
    server.write("f", &pattern(4_000, 11));
    let sock = tftp_client::socket().await;
    sock.send_to(&rrq("f", Mode::Octet, &[]), server.addr)
        .await
        .unwrap();
    let mut data_seen = 0;
    let mut error = None;
    for _ in 0..10 {
        let Some((bytes, _)) = recv(&sock, Duration::from_secs(3)).await else {
            break;
        };
        match Packet::decode(&bytes) {
            Ok(Packet::Data { block: 1, .. }) => data_seen += 1,
            Ok(Packet::Error { message, .. }) => {
                error = Some(message);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    // A client that never answered gets the first send and one retry
    // (FIRST_FLIGHT_RETRIES), not the configured four: a forged request
    // makes the server send two packets to whoever it names.
    assert_eq!(data_seen, 2, "first send plus one retry");
    assert!(error.unwrap().contains("timed out"));
    assert_eq!(server.wait_counter(|m| &m.tftp_failed, 1).await, 1);
    let events = server.events().await;
    let failed = events
        .iter()
        .find(|e| e.step == "tftp.failed")
        .expect("failure recorded");
    assert_eq!(failed.detail["file"], "f");
    assert!(failed.detail["reason"]
        .as_str()
        .unwrap()
        .contains("timed out"));
    server.stop().await;
}

#[tokio::test]
async fn transfers_beyond_the_cap_get_server_busy() {
    let server = start_with(
        |c| {
            c.max_transfers = 1;
            c.timeout = Duration::from_millis(300);
            c.retries = 1;
        },
        None,
    )
    .await;
    server.write("f", &pattern(4_000, 12));
    // First client takes the only slot and never acknowledges.
    let holder = tftp_client::socket().await;
    holder
        .send_to(&rrq("f", Mode::Octet, &[]), server.addr)
        .await
        .unwrap();
    recv(&holder, Duration::from_secs(5)).await.expect("DATA 1");
    let (code, message) = expect_error(server.addr, "f", Mode::Octet).await;
    assert_eq!(
        (code, message.as_str()),
        (ErrorCode::NotDefined, "server busy")
    );
    assert_eq!(Metrics::get(&server.metrics.tftp_refused), 1);
    // Once the silent transfer times out, the slot is free again.
    assert_eq!(server.wait_counter(|m| &m.tftp_failed, 1).await, 1);
    let got = get(server.addr, "f", GetOpts::default()).await.unwrap();
    assert_eq!(got.data, pattern(4_000, 12));
    server.stop().await;
}

#[tokio::test]
async fn path_traversal_and_symlink_escape_are_refused_without_leaking_paths() {
    let server = start().await;
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"secret").unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secret"),
        server.root.path().join("link"),
    )
    .unwrap();
    std::os::unix::fs::symlink(outside.path(), server.root.path().join("dirlink")).unwrap();
    server.write("sub/ok", b"ok");
    let absolute_out = outside.path().join("secret");
    let absolute_out = absolute_out.to_str().unwrap();
    let root = server.root.path().to_str().unwrap().to_string();
    let cases = [
        ("../etc/passwd", ErrorCode::AccessViolation),
        ("/../../etc/passwd", ErrorCode::AccessViolation),
        ("sub/../../etc/passwd", ErrorCode::AccessViolation),
        ("..\\..\\etc\\passwd", ErrorCode::AccessViolation),
        ("link", ErrorCode::AccessViolation),
        ("dirlink/secret", ErrorCode::AccessViolation),
        ("sub", ErrorCode::AccessViolation),
        // An absolute path is taken relative to the root: it is not there.
        (absolute_out, ErrorCode::FileNotFound),
        ("/etc/passwd", ErrorCode::FileNotFound),
        ("missing.bin", ErrorCode::FileNotFound),
    ];
    for (name, code) in cases {
        let (got, message) = expect_error(server.addr, name, Mode::Octet).await;
        assert_eq!(got, code, "{name}");
        assert!(
            message == "access violation" || message == "file not found",
            "{message}"
        );
        assert!(
            !message.contains("/tmp") && !message.contains(&root),
            "{message}"
        );
    }
    assert_eq!(
        Metrics::get(&server.metrics.tftp_refused),
        cases.len() as u64
    );
    assert_eq!(Metrics::get(&server.metrics.tftp_completed), 0);
    // The legitimate file next door is still served.
    assert_eq!(
        get(server.addr, "sub/ok", GetOpts::default())
            .await
            .unwrap()
            .data,
        b"ok"
    );
    server.stop().await;
}

#[tokio::test]
async fn wrq_and_netascii_are_refused() {
    let server = start().await;
    server.write("f", b"text\n");
    let sock = tftp_client::socket().await;
    let wrq = Packet::Wrq(ironboot::tftp::codec::Request {
        filename: "upload".into(),
        mode: Mode::Octet,
        options: vec![],
    });
    sock.send_to(&wrq.to_bytes(), server.addr).await.unwrap();
    let (bytes, _) = recv(&sock, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        Packet::decode(&bytes),
        Ok(Packet::Error {
            code: ErrorCode::AccessViolation,
            message: "writes not supported".into()
        })
    );
    assert!(!server.root.path().join("upload").exists());

    let (code, message) = expect_error(server.addr, "f", Mode::Netascii).await;
    assert_eq!(code, ErrorCode::IllegalOperation);
    assert!(message.contains("octet"), "{message}");
    assert_eq!(Metrics::get(&server.metrics.tftp_refused), 2);
    server.stop().await;
}

#[tokio::test]
async fn malformed_flood_is_counted_and_the_server_still_serves() {
    let server = start().await;
    let file = pattern(3_000, 13);
    server.write("f", &file);
    let sock = tftp_client::socket().await;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let crafted: [&[u8]; 8] = [
        b"",
        b"\x00",
        b"\x00\x01",
        b"\x00\x01file",
        b"\x00\x01file\x00oct",
        b"\x00\x01\x00octet\x00",
        b"\x00\x09xx",
        b"\x00\x01f\x00octet\x00blksize\x00",
    ];
    for i in 0..10_000usize {
        let datagram: Vec<u8> = if i % 10 == 0 {
            crafted[(i / 10) % crafted.len()].to_vec()
        } else {
            let len = (next() % 600) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if len >= 2 && i % 3 == 0 {
                bytes[0] = 0;
                bytes[1] = (next() % 8) as u8; // plausible opcodes
            }
            bytes
        };
        let _ = sock.send_to(&datagram, server.addr).await;
        if i % 500 == 0 {
            tokio::task::yield_now().await;
        }
    }
    // Some may be dropped by a full socket buffer; many must have been counted.
    let malformed = server.wait_counter(|m| &m.tftp_malformed, 1000).await;
    assert!(malformed >= 1000, "malformed counter: {malformed}");
    let got = get(server.addr, "f", GetOpts::default()).await.unwrap();
    assert_eq!(got.data, file);
    server.stop().await;
}

struct Generated;

impl GeneratedFiles for Generated {
    fn get(&self, path: &str, client: SocketAddr) -> Option<Arc<[u8]>> {
        (path == "grub/grub.cfg")
            .then(|| Arc::from(format!("set default=0 # for {}\n", client.ip()).into_bytes()))
    }
}

#[tokio::test]
async fn generated_files_are_served_before_disk() {
    let server = start_with(|_| {}, Some(Arc::new(Generated))).await;
    server.write("grub/grub.cfg", b"from disk");
    server.write("other", b"disk file");
    let expected = b"set default=0 # for 127.0.0.1\n";
    for name in ["/grub/grub.cfg", "grub/grub.cfg", "\\grub\\grub.cfg"] {
        let got = get(server.addr, name, opt(&[("tsize", "0")]))
            .await
            .unwrap();
        assert_eq!(got.data, expected, "{name}");
        assert_eq!(
            oack_value(&got.oack, "tsize"),
            Some(expected.len().to_string())
        );
    }
    assert_eq!(
        get(server.addr, "other", GetOpts::default())
            .await
            .unwrap()
            .data,
        b"disk file"
    );
    server.stop().await;
}

#[tokio::test]
async fn client_error_after_oack_is_a_size_probe_not_a_failure() {
    // PXE ROMs ask for tsize, read the OACK, send ERROR, then ask again.
    let mut server = start().await;
    server.write("undionly.kpxe", &pattern(70_000, 14));
    let sock = tftp_client::socket().await;
    let options = vec![("tsize".to_string(), "0".to_string())];
    sock.send_to(&rrq("undionly.kpxe", Mode::Octet, &options), server.addr)
        .await
        .unwrap();
    let (bytes, tid) = recv(&sock, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        Packet::decode(&bytes),
        Ok(Packet::Oack(vec![("tsize".into(), "70000".into())]))
    );
    let abort = Packet::Error {
        code: ErrorCode::OptionRefused,
        message: "tsize only".into(),
    };
    sock.send_to(&abort.to_bytes(), tid).await.unwrap();
    let got = get(server.addr, "undionly.kpxe", opt(&[("blksize", "1432")]))
        .await
        .unwrap();
    assert_eq!(got.data.len(), 70_000);
    assert_eq!(server.wait_counter(|m| &m.tftp_completed, 1).await, 1);
    assert_eq!(Metrics::get(&server.metrics.tftp_failed), 0);
    let steps: Vec<_> = server.events().await.iter().map(|e| e.step).collect();
    assert_eq!(steps, ["tftp.aborted", "tftp.complete"]);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_ends_running_transfers() {
    let server = start_with(|c| c.timeout = Duration::from_secs(30), None).await;
    server.write("f", &pattern(10_000, 15));
    let sock = tftp_client::socket().await;
    sock.send_to(&rrq("f", Mode::Octet, &[]), server.addr)
        .await
        .unwrap();
    recv(&sock, Duration::from_secs(5)).await.expect("DATA 1");
    // A transfer is waiting on a 30 s timeout; stop() must still be prompt.
    server.stop().await;
    let (bytes, _) = recv(&sock, Duration::from_secs(5)).await.expect("an ERROR");
    assert!(matches!(Packet::decode(&bytes), Ok(Packet::Error { .. })));
}

// ---- external clients -------------------------------------------------

/// `Some(path)` when the client is installed; otherwise prints why the test
/// is skipped, or panics when `IRONBOOT_E2E=require`.
fn external(binary: &str) -> Option<&str> {
    if Path::new(binary).exists() {
        return Some(binary);
    }
    let reason = format!("{binary} not installed");
    if std::env::var("IRONBOOT_E2E").as_deref() == Ok("require") {
        panic!("IRONBOOT_E2E=require but {reason}");
    }
    eprintln!("skipping: {reason}");
    None
}

/// Runs a client under `timeout 20` on the blocking pool (the server keeps
/// running on the test's runtime meanwhile); `timeout` ends it by PID.
async fn run_client(args: &[&str]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let child = tokio::task::spawn_blocking(move || {
        std::process::Command::new("timeout")
            .arg("20")
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
    });
    tokio::time::timeout(Duration::from_secs(30), child)
        .await
        .expect("client finished within 30 s")
        .expect("no panic")
        .expect("client started")
}

#[tokio::test]
async fn atftp_downloads_with_blksize_windowsize_and_tsize() {
    let Some(atftp) = external("/usr/bin/atftp") else {
        return;
    };
    let mut server = start().await;
    let file = pattern(1_000_000, 16);
    server.write("boot/ipxe.efi", &file);
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("ipxe.efi");
    let port = server.addr.port().to_string();
    let output = run_client(&[
        atftp,
        "--option",
        "blksize 1468",
        "--option",
        "windowsize 8",
        "--option",
        "tsize",
        "-g",
        "-r",
        "boot/ipxe.efi",
        "-l",
        out.to_str().unwrap(),
        "127.0.0.1",
        &port,
    ])
    .await;
    assert!(output.status.success(), "atftp failed: {output:?}");
    assert!(std::fs::read(&out).unwrap() == file, "atftp output differs");
    assert_eq!(server.wait_counter(|m| &m.tftp_completed, 1).await, 1);
    let events = server.events().await;
    let done = events.iter().find(|e| e.step == "tftp.complete").unwrap();
    assert_eq!(
        (
            done.detail["blksize"].as_u64(),
            done.detail["windowsize"].as_u64()
        ),
        (Some(1468), Some(8))
    );
    server.stop().await;
}

#[tokio::test]
async fn tftp_hpa_downloads_in_binary_mode() {
    let Some(tftp) = external("/usr/bin/tftp") else {
        return;
    };
    let server = start().await;
    let file = pattern(200_000, 17);
    server.write("undionly.kpxe", &file);
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("undionly.kpxe");
    let port = server.addr.port().to_string();
    let output = run_client(&[
        tftp,
        "-m",
        "binary",
        "127.0.0.1",
        &port,
        "-c",
        "get",
        "undionly.kpxe",
        out.to_str().unwrap(),
    ])
    .await;
    assert!(output.status.success(), "tftp failed: {output:?}");
    assert!(
        std::fs::read(&out).unwrap() == file,
        "tftp-hpa output differs"
    );
    assert_eq!(server.wait_counter(|m| &m.tftp_completed, 1).await, 1);
    server.stop().await;
}
