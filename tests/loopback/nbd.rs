//! NBD on loopback: an artifact served as a read-only block device, by its
//! digest. A client of the protocol's own written here checks the bytes of
//! the handshake, reads anywhere in the export (and past its end), and what
//! a client that breaks the rules gets; libnbd's `nbdinfo` and `nbdcopy`
//! (package `libnbd-bin`) read it as any NBD user would.

use std::net::SocketAddr;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::api::Api;
use crate::common::TestServer;

const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY: u32 = 0x6744_6698;

/// A deterministic, incompressible-looking image whose size is not a
/// multiple of a page.
fn image() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..3 * 1024 * 1024 + 1234)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn server() -> (TestServer, SocketAddr, Vec<u8>, String) {
    let server = TestServer::full("[nbd]\nlisten = \"127.0.0.1:0\"\n").await;
    let nbd = server.bound.nbd.expect("NBD is on");
    let bytes = image();
    let hex = Api::new(&server).upload(&bytes).await;
    (server, nbd, bytes, hex)
}

/// A connection past the greeting, client flags sent (fixed newstyle, no
/// zeroes).
async fn connect(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).await.unwrap();
    assert_eq!(&greeting[..16], b"NBDMAGICIHAVEOPT");
    assert_eq!(
        u16::from_be_bytes([greeting[16], greeting[17]]),
        3,
        "fixed newstyle, no zeroes"
    );
    s.write_all(&3u32.to_be_bytes()).await.unwrap();
    s
}

async fn send_option(s: &mut TcpStream, option: u32, data: &[u8]) {
    let mut out = IHAVEOPT.to_be_bytes().to_vec();
    out.extend(option.to_be_bytes());
    out.extend((data.len() as u32).to_be_bytes());
    out.extend(data);
    s.write_all(&out).await.unwrap();
}

/// One option reply: (type, data).
async fn option_reply(s: &mut TcpStream, option: u32) -> (u32, Vec<u8>) {
    let mut head = [0u8; 20];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(
        u64::from_be_bytes(head[..8].try_into().unwrap()),
        REPLY_MAGIC
    );
    assert_eq!(u32::from_be_bytes(head[8..12].try_into().unwrap()), option);
    let kind = u32::from_be_bytes(head[12..16].try_into().unwrap());
    let len = u32::from_be_bytes(head[16..].try_into().unwrap());
    let mut data = vec![0u8; len as usize];
    s.read_exact(&mut data).await.unwrap();
    (kind, data)
}

fn go_payload(name: &str) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend(name.as_bytes());
    d.extend(0u16.to_be_bytes());
    d
}

/// `NBD_OPT_GO`: the export's size and flags from its info replies.
async fn go(s: &mut TcpStream, name: &str) -> Result<(u64, u16), (u32, String)> {
    send_option(s, 7, &go_payload(name)).await;
    let mut export = None;
    loop {
        match option_reply(s, 7).await {
            (1, _) => return Ok(export.expect("NBD_INFO_EXPORT before the ACK")),
            (3, info) if u16::from_be_bytes([info[0], info[1]]) == 0 => {
                let size = u64::from_be_bytes(info[2..10].try_into().unwrap());
                let flags = u16::from_be_bytes([info[10], info[11]]);
                export = Some((size, flags));
            }
            (3, _) => {}
            (kind, text) => return Err((kind, String::from_utf8_lossy(&text).into_owned())),
        }
    }
}

async fn request(s: &mut TcpStream, kind: u16, handle: u64, offset: u64, length: u32) {
    let mut out = REQUEST_MAGIC.to_be_bytes().to_vec();
    out.extend(0u16.to_be_bytes());
    out.extend(kind.to_be_bytes());
    out.extend(handle.to_be_bytes());
    out.extend(offset.to_be_bytes());
    out.extend(length.to_be_bytes());
    s.write_all(&out).await.unwrap();
}

/// A simple reply's (error, handle).
async fn simple_reply(s: &mut TcpStream) -> (u32, u64) {
    let mut head = [0u8; 16];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(
        u32::from_be_bytes(head[..4].try_into().unwrap()),
        SIMPLE_REPLY
    );
    (
        u32::from_be_bytes(head[4..8].try_into().unwrap()),
        u64::from_be_bytes(head[8..].try_into().unwrap()),
    )
}

/// Whether the server closed the connection (within 2 s).
async fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_is_a_read_only_block_device_named_by_its_digest() {
    let (server, addr, bytes, hex) = server().await;

    // GO by the bare digest and by sha256:<hex>: size and read-only flags.
    let mut s = connect(addr).await;
    let (size, flags) = go(&mut s, &hex).await.unwrap();
    assert_eq!(size, bytes.len() as u64);
    assert_eq!(flags & 0b11, 0b11, "has flags, read-only: {flags:#x}");
    // Reads anywhere, pipelined: the answers carry the handles, in order.
    let reads: [(u64, u32); 4] = [
        (0, 4096),
        (4096 * 300, 65536),
        (bytes.len() as u64 - 1234, 1234),
        (17, 1),
    ];
    for (i, (offset, len)) in reads.iter().enumerate() {
        request(&mut s, 0, i as u64 + 100, *offset, *len).await;
    }
    for (i, (offset, len)) in reads.iter().enumerate() {
        assert_eq!(simple_reply(&mut s).await, (0, i as u64 + 100));
        let mut data = vec![0u8; *len as usize];
        s.read_exact(&mut data).await.unwrap();
        assert!(
            data == bytes[*offset as usize..][..*len as usize],
            "read {i}"
        );
    }
    // Past the end, a write (its payload read past), a trim: refused, the
    // connection goes on; a flush is fine; then a clean disconnect.
    request(&mut s, 0, 7, bytes.len() as u64 - 10, 11).await;
    assert_eq!(simple_reply(&mut s).await, (22, 7), "EINVAL past the end");
    request(&mut s, 0, 8, u64::MAX - 5, 4096).await;
    assert_eq!(simple_reply(&mut s).await, (22, 8), "an offset that wraps");
    request(&mut s, 0, 9, 0, 64 << 20).await;
    assert_eq!(simple_reply(&mut s).await, (75, 9), "EOVERFLOW over 32 MiB");
    request(&mut s, 1, 10, 0, 512).await;
    s.write_all(&[0xee; 512]).await.unwrap();
    assert_eq!(simple_reply(&mut s).await, (1, 10), "EPERM: read-only");
    request(&mut s, 4, 11, 0, 4096).await;
    assert_eq!(simple_reply(&mut s).await, (1, 11), "EPERM: trim");
    request(&mut s, 3, 12, 0, 0).await;
    assert_eq!(simple_reply(&mut s).await, (0, 12), "flush");
    request(&mut s, 0, 13, 0, 8).await;
    assert_eq!(
        simple_reply(&mut s).await,
        (0, 13),
        "still serving after refusals"
    );
    let mut first = [0u8; 8];
    s.read_exact(&mut first).await.unwrap();
    assert_eq!(first, bytes[..8]);
    request(&mut s, 2, 14, 0, 0).await;
    assert!(closed(&mut s).await, "NBD_CMD_DISC ends it");

    let mut s = connect(addr).await;
    assert!(go(&mut s, &format!("sha256:{hex}")).await.is_ok());

    // Unknown names, listing, unknown options: refused with a reason, the
    // haggling goes on; then the old EXPORT_NAME option.
    let mut s = connect(addr).await;
    let (kind, why) = go(&mut s, &"0".repeat(64)).await.unwrap_err();
    assert_eq!(kind, (1 << 31) + 6, "unknown export: {why}");
    let (kind, _) = go(&mut s, "../../../etc/passwd").await.unwrap_err();
    assert_eq!(kind, (1 << 31) + 6);
    send_option(&mut s, 3, &[]).await;
    let (kind, why) = option_reply(&mut s, 3).await;
    assert_eq!(kind, (1 << 31) + 2, "listing refused by policy");
    assert!(String::from_utf8_lossy(&why).contains("digest"));
    send_option(&mut s, 8, &[]).await;
    assert_eq!(
        option_reply(&mut s, 8).await.0,
        (1 << 31) + 1,
        "structured replies: not offered"
    );
    send_option(&mut s, 7, &[0, 0, 0, 200, b'x']).await;
    assert_eq!(
        option_reply(&mut s, 7).await.0,
        (1 << 31) + 3,
        "malformed GO"
    );
    send_option(&mut s, 1, hex.as_bytes()).await;
    let mut export = [0u8; 10];
    s.read_exact(&mut export).await.unwrap();
    assert_eq!(
        u64::from_be_bytes(export[..8].try_into().unwrap()),
        bytes.len() as u64
    );
    request(&mut s, 0, 1, 4096, 4096).await;
    assert_eq!(simple_reply(&mut s).await, (0, 1));

    // Rule breakers are cut off: a bad option magic, an oversized option,
    // a bad request magic, an unknown name through EXPORT_NAME.
    let mut s = connect(addr).await;
    s.write_all(&[0u8; 16]).await.unwrap();
    assert!(closed(&mut s).await, "bad option magic");
    let mut s = connect(addr).await;
    let mut huge = IHAVEOPT.to_be_bytes().to_vec();
    huge.extend(7u32.to_be_bytes());
    huge.extend(u32::MAX.to_be_bytes());
    s.write_all(&huge).await.unwrap();
    assert!(closed(&mut s).await, "a 4 GiB option payload is not read");
    let mut s = connect(addr).await;
    go(&mut s, &hex).await.unwrap();
    s.write_all(&[0x55; 28]).await.unwrap();
    assert!(closed(&mut s).await, "bad request magic");
    let mut s = connect(addr).await;
    send_option(&mut s, 1, b"nope").await;
    assert!(closed(&mut s).await, "EXPORT_NAME has no error reply");
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).await.unwrap();
    s.write_all(&0xffff_ffffu32.to_be_bytes()).await.unwrap();
    assert!(closed(&mut s).await, "unknown client flags");

    let metrics = server.metrics().await;
    let bytes_read: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ironboot_nbd_bytes_total "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert_eq!(bytes_read, 4096 + 65536 + 1234 + 1 + 8 + 4096, "{metrics}");
    assert!(server.counter("nbd_refused").await >= 5);
    server.stop().await;
}

/// libnbd's tools, as an operator would point them at a root image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libnbd_reads_the_export_whole() {
    if !crate::common::require_or_skip(&["nbdinfo", "nbdcopy"]) {
        return;
    }
    let (server, addr, bytes, hex) = server().await;
    let uri = format!("nbd://{addr}/{hex}");
    let info = tokio::process::Command::new("nbdinfo")
        .args(["--json", &uri])
        .output()
        .await
        .unwrap();
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let export = &info["exports"][0];
    assert_eq!(export["export-size"], bytes.len() as u64, "{info:#}");
    assert_eq!(export["is_read_only"], true, "{info:#}");
    let dir = tempfile::TempDir::new().unwrap();
    let out = dir.path().join("copy.img");
    let copied = tokio::process::Command::new("nbdcopy")
        .args([&uri, out.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert!(
        copied.status.success(),
        "{}",
        String::from_utf8_lossy(&copied.stderr)
    );
    let copy = std::fs::read(&out).unwrap();
    assert_eq!(
        hex::encode(Sha256::digest(&copy)),
        hex,
        "the copy has the artifact's digest"
    );
    server.stop().await;
}

/// `ironboot image import --rootfs` computes the root image's dm-verity tree
/// and uploads it; the server checks it against the stored bytes. Read
/// back over NBD (both the image and its tree, by digest), `veritysetup
/// verify` accepts them with the manifest's root hash. A manifest whose
/// root hash or tree does not belong to the rootfs is refused.
/// Imports a small live OS whose root image is 2 MiB and three blocks of
/// [`image`] as generation 1 of stream `big`, with the CLI (which computes
/// the dm-verity tree); the generation's manifest and the CLI's stderr.
async fn import_root(server: &TestServer, dir: &std::path::Path) -> (serde_json::Value, String) {
    let mut root = image();
    root.truncate(2 * 1024 * 1024 + 4096 * 3);
    let files = [
        ("vmlinuz", vec![1u8; 4096]),
        ("initrd.img", vec![2u8; 4096]),
        ("root.img", root),
    ];
    for (name, bytes) in &files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let base = format!("http://{}", server.bound.http);
    let data = server.dir.path().join("data");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ironboot"))
        .current_dir(dir)
        .args([
            "image",
            "import",
            "--stream",
            "big",
            "--kernel",
            "vmlinuz",
            "--initrd",
            "initrd.img",
            "--rootfs",
            "root.img",
            "--cmdline",
            "console=ttyS0 ds=nocloud-net;s={{ urls.seed }}",
            "--server",
            &base,
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("dm-verity root hash "), "{stderr}");
    let g = Api::new(server)
        .ok(
            reqwest::Method::GET,
            "/api/v1/streams/big/generations/1",
            None,
        )
        .await;
    (g["manifest"].clone(), stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_image_is_imported_with_its_verity_tree_and_verifies_over_nbd() {
    if !crate::common::require_or_skip(&["nbdcopy", "veritysetup"]) {
        return;
    }
    let server = TestServer::full("[nbd]\nlisten = \"127.0.0.1:0\"\n").await;
    let nbd = server.bound.nbd.expect("NBD is on");
    let dir = tempfile::TempDir::new().unwrap();
    let (m, stderr) = import_root(&server, dir.path()).await;
    let api = Api::new(&server);
    let verity = m["rootfs_verity"].clone();
    let root_hash = verity["root_hash"].as_str().expect("root hash").to_string();
    assert!(stderr.contains(&root_hash), "{stderr}");

    // Both over NBD, then veritysetup on what came over the wire.
    let fetch = |digest: String, to: std::path::PathBuf| async move {
        let ok = tokio::process::Command::new("nbdcopy")
            .args([&format!("nbd://{nbd}/{digest}"), to.to_str().unwrap()])
            .status()
            .await
            .unwrap();
        assert!(ok.success());
    };
    fetch(
        m["rootfs"]["digest"].as_str().unwrap().into(),
        dir.path().join("data.img"),
    )
    .await;
    fetch(
        verity["hash_tree"]["digest"].as_str().unwrap().into(),
        dir.path().join("tree.img"),
    )
    .await;
    let verify = |root: &str| {
        std::process::Command::new("veritysetup")
            .arg("verify")
            .arg(dir.path().join("data.img"))
            .arg(dir.path().join("tree.img"))
            .arg(root)
            .output()
            .unwrap()
    };
    let ok = verify(&root_hash);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(!verify(&"0".repeat(64)).status.success());

    // The server recomputes: a wrong root hash, or the tree of other bytes.
    let mut wrong = m.clone();
    wrong["rootfs_verity"]["root_hash"] = serde_json::json!("ab".repeat(32));
    let (status, body) = api
        .call(
            reqwest::Method::POST,
            "/api/v1/streams/big/generations",
            Some(wrong),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "rootfs_verity", "{body}");
    let mut other = m.clone();
    other["rootfs_verity"]["salt"] = serde_json::json!("00".repeat(32));
    let (status, body) = api
        .call(
            reqwest::Method::POST,
            "/api/v1/streams/big/generations",
            Some(other),
        )
        .await;
    assert_eq!(status, 400, "another salt: {body}");
    let mut orphan = m.clone();
    orphan["rootfs"] = serde_json::Value::Null;
    let (status, _) = api
        .call(
            reqwest::Method::POST,
            "/api/v1/streams/big/generations",
            Some(orphan),
        )
        .await;
    assert_eq!(status, 400, "a tree without its rootfs");
    server.stop().await;
}

const MAC: &str = "52:54:00:20:00:01";

/// Reads `len` bytes at `offset` of the export the connection is on.
async fn read_at(s: &mut TcpStream, handle: u64, offset: u64, len: u32) -> Vec<u8> {
    request(s, 0, handle, offset, len).await;
    assert_eq!(simple_reply(s).await, (0, handle));
    let mut data = vec![0u8; len as usize];
    s.read_exact(&mut data).await.unwrap();
    data
}

/// The machine's latest boot, once `ready` says it is what the test waits
/// for (within 10 s).
async fn latest_boot(api: &Api, ready: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let path = format!("/api/v1/machines/{MAC}");
    for _ in 0..100 {
        let m = api.ok(reqwest::Method::GET, &path, None).await;
        let boot = m["recent_boots"][0].clone();
        if ready(&boot) {
            return boot;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{MAC}'s latest boot never got there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_boot_names_its_exports_counts_its_reads_and_reports_a_failed_verification() {
    use crate::common::fleet;
    let server = TestServer::full("[nbd]\nlisten = \"127.0.0.1:0\"\n").await;
    let nbd = server.bound.nbd.expect("NBD is on");
    let dir = tempfile::TempDir::new().unwrap();
    let (m, _) = import_root(&server, dir.path()).await;
    let api = Api::new(&server);
    api.point("default", "big", 1).await;
    let root = m["rootfs"]["digest"].as_str().unwrap().to_string();
    let tree = m["rootfs_verity"]["hash_tree"]["digest"].as_str().unwrap();
    let root_hash = m["rootfs_verity"]["root_hash"].as_str().unwrap();

    // The rendered command line names server, exports and root hash.
    let http = reqwest::Client::new();
    let base = format!("http://{}", server.bound.http);
    let script = fleet::script(&http, &base, MAC).await;
    let args =
        format!("ironboot.nbd={nbd} ironboot.root={root} ironboot.verity={tree}:{root_hash}");
    assert!(script.contains(&args), "{script}");
    let token = fleet::token_in(&script).expect("a token");

    // What the initrd reads over NBD is counted on the boot, root and tree.
    let mut s = connect(nbd).await;
    go(&mut s, &root).await.unwrap();
    let mut read = 0;
    for (i, offset) in [0u64, 1 << 20, 8192].into_iter().enumerate() {
        read += read_at(&mut s, i as u64, offset, 64 << 10).await.len();
    }
    let mut t = connect(nbd).await;
    go(&mut t, tree).await.unwrap();
    read += read_at(&mut t, 9, 0, 4096).await.len();
    request(&mut s, 2, 99, 0, 0).await; // NBD_CMD_DISC
    request(&mut t, 2, 99, 0, 0).await;
    drop((s, t));
    let boot = latest_boot(&api, |b| b["root"]["bytes"] == read as u64).await;
    assert_eq!(boot["root"]["export"], root.as_str(), "{boot}");
    assert_eq!(boot["root"]["verify_failures"], 0, "{boot}");
    let steps: Vec<&str> = boot["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    for step in ["nbd.open", "nbd.read", "nbd.close"] {
        assert!(steps.contains(&step), "{step} in {steps:?}");
    }

    // Failure reports: only with the boot's token, only a known reason.
    let report = |token: String, form: &'static str| {
        let http = http.clone();
        let url = format!("{base}/boot-failure/{token}");
        async move {
            let r = http
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, body) = report("f".repeat(43), "reason=verity").await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = report(token.clone(), "reason=cosmic-rays").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("verity, root"), "{body}");
    let (status, body) = report(token.clone(), "reason=verity&detail=block+7+corrupted").await;
    assert_eq!(status, 200, "{body}");

    // The boot failed at once (not at the watchdog's timeout), with the
    // machine's words; the verification failure is on the boot.
    let boot = latest_boot(&api, |b| b["state"] == "failed").await;
    assert_eq!(boot["root"]["verify_failures"], 1, "{boot}");
    assert!(
        boot["reason"]
            .as_str()
            .unwrap()
            .contains("verity failure: block 7 corrupted"),
        "{boot}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ironboot"))
        .args(["machines", "show", MAC, "--server", &base, "--data-dir"])
        .arg(server.dir.path().join("data"))
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains(&format!("nbd export {}…", &root[..12]))
            && shown.contains("1 verification failure"),
        "{shown}"
    );
    // A bad block found after a confirmation is recorded, nothing more.
    let token = fleet::token_in(&fleet::script(&http, &base, MAC).await).expect("a token");
    assert_eq!(
        fleet::phone_home(&http, &base, &token, "root=nbd").await,
        200
    );
    let (status, body) = report(token, "reason=verity&detail=later").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("recorded"), "{body}");
    let boot = latest_boot(&api, |b| b["root"]["verify_failures"] == 1).await;
    assert_eq!(boot["state"], "confirmed", "{boot}");
    server.stop().await;

    // Without NBD the generation cannot boot, and the script says why.
    let plain = TestServer::full("").await;
    let dir = tempfile::TempDir::new().unwrap();
    import_root(&plain, dir.path()).await;
    Api::new(&plain).point("default", "big", 1).await;
    let base = format!("http://{}", plain.bound.http);
    let script = fleet::script(&http, &base, MAC).await;
    assert!(script.contains("[nbd] listen is off"), "{script}");
    assert!(!script.contains("ironboot.root="), "{script}");
    plain.stop().await;
}
