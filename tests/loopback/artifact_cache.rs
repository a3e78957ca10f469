//! `ironboot artifact-cache` in process, in front of a real server: hits
//! and misses, verification of what is on disk, the size bound, what the
//! upstream fails to supply, and one fetch for concurrent misses.

use std::path::PathBuf;
use std::time::Duration;

use ironboot::artifact_cache::{serve, Settings};
use reqwest::{header, StatusCode};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

use crate::common::api::Api;
use crate::common::TestServer;

/// A cache serving on loopback, its directory, and a client.
struct Cache {
    base: String,
    dir: TempDir,
    http: reqwest::Client,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), ironboot::artifact_cache::CacheError>>,
}

impl Cache {
    async fn start(upstream: &str, max_size: u64) -> Self {
        Self::start_in(TempDir::new().unwrap(), upstream, max_size).await
    }

    /// A cache over `dir`, as a previous run may have left it.
    async fn start_in(dir: TempDir, upstream: &str, max_size: u64) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let settings = Settings {
            upstream: upstream.to_string(),
            listen: addr,
            dir: dir.path().join("cache"),
            max_size,
        };
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move { serve(listener, &settings, stop).await });
        Self {
            base: format!("http://{addr}"),
            dir,
            http: reqwest::Client::new(),
            shutdown,
            task,
        }
    }

    /// Stops the cache; its directory, for a restart.
    async fn stop(self) -> TempDir {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("cache stops within 15 s")
            .expect("cache task joined")
            .expect("cache exited cleanly");
        self.dir
    }

    fn file(&self, hex: &str) -> PathBuf {
        self.dir.path().join("cache/artifacts/sha256").join(hex)
    }

    /// Status and body of a GET of the artifact, with `range` if any.
    async fn get(&self, hex: &str, range: Option<&str>) -> (StatusCode, Vec<u8>) {
        let mut request = self.http.get(self.url(hex));
        if let Some(range) = range {
            request = request.header(header::RANGE, range);
        }
        let resp = request.send().await.unwrap();
        (resp.status(), resp.bytes().await.unwrap().to_vec())
    }

    fn url(&self, hex: &str) -> String {
        format!("{}/artifacts/sha256/{hex}", self.base)
    }

    /// `ironboot_cache_<name>_total` (or the gauge `ironboot_cache_bytes`).
    async fn metric(&self, name: &str) -> u64 {
        let text = self.text("/metrics").await;
        let key = match name {
            "bytes" => "ironboot_cache_bytes ".to_string(),
            _ => format!("ironboot_cache_{name}_total "),
        };
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
    }

    async fn text(&self, path: &str) -> String {
        let resp = self.http.get(format!("{}{path}", self.base));
        resp.send().await.unwrap().text().await.unwrap()
    }

    /// Files in the cache's store: published artifacts and uploads in
    /// progress.
    fn stored(&self) -> usize {
        ["artifacts/sha256", "tmp"]
            .iter()
            .map(|d| std::fs::read_dir(self.dir.path().join("cache").join(d)).unwrap())
            .map(|entries| entries.count())
            .sum()
    }
}

/// `len` bytes that differ with `seed`.
fn bytes(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64 * 2_654_435_761) >> 7) as u8 ^ seed)
        .collect()
}

/// Changes one byte of a file in place, as a stray write would.
fn flip_byte(path: &std::path::Path, at: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut perms = std::fs::metadata(path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    std::fs::set_permissions(path, perms).unwrap();
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    file.seek(SeekFrom::Start(at)).unwrap();
    file.read_exact(&mut byte).unwrap();
    file.seek(SeekFrom::Start(at)).unwrap();
    file.write_all(&[byte[0] ^ 0xff]).unwrap();
}

async fn upstream() -> (TestServer, Api) {
    let server = TestServer::full("").await;
    let api = Api::new(&server);
    (server, api)
}

#[tokio::test]
async fn a_miss_fetches_once_then_hits_serve_heads_and_ranges_from_the_cache() {
    let (_server, api) = upstream().await;
    let kernel = bytes(1, 100_000);
    let hex = api.upload(&kernel).await;
    let cache = Cache::start(&api.base, 1 << 20).await;

    let (status, body) = cache.get(&hex, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, kernel);
    assert_eq!(cache.metric("misses").await, 1);
    assert_eq!(cache.metric("bytes_from_upstream").await, 100_000);
    assert_eq!(cache.metric("bytes").await, 100_000);

    let (status, body) = cache.get(&hex, None).await;
    assert_eq!((status, body == kernel), (StatusCode::OK, true));
    let head = cache.http.head(cache.url(&hex)).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()[header::CONTENT_LENGTH], "100000");
    assert_eq!(head.headers()[header::ETAG], format!("\"{hex}\"").as_str());
    let (status, body) = cache.get(&hex, Some("bytes=10-19")).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, kernel[10..20]);

    assert_eq!(cache.metric("hits").await, 3);
    assert_eq!(cache.metric("misses").await, 1);
    assert_eq!(cache.metric("bytes_from_upstream").await, 100_000);
    assert_eq!(cache.metric("bytes_served").await, 200_010);
    assert_eq!(cache.text("/healthz").await, r#"{"status":"ok"}"#);
    let other = cache.http.get(format!("{}/api/v1/images", cache.base));
    assert_eq!(other.send().await.unwrap().status(), StatusCode::NOT_FOUND);
    cache.stop().await;
}

#[tokio::test]
async fn a_corrupted_file_is_never_served_but_deleted_and_fetched_again() {
    let (_server, api) = upstream().await;
    let initrd = bytes(2, 50_000);
    let hex = api.upload(&initrd).await;
    let cache = Cache::start(&api.base, 1 << 20).await;
    assert_eq!(cache.get(&hex, None).await.1, initrd);

    let path = cache.file(&hex);
    flip_byte(&path, 1234);

    let (status, body) = cache.get(&hex, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body == initrd, "the corrupted bytes were served");
    assert_eq!(cache.metric("corrupt").await, 1);
    assert_eq!(cache.metric("misses").await, 2);
    assert_eq!(cache.metric("bytes_from_upstream").await, 100_000);
    assert_eq!(std::fs::read(&path).unwrap(), initrd);
    cache.stop().await;
}

#[tokio::test]
async fn files_a_previous_run_left_are_verified_before_they_are_served() {
    let (_server, api) = upstream().await;
    let (good, bad) = (bytes(6, 30_000), bytes(7, 30_000));
    let (good_hex, bad_hex) = (api.upload(&good).await, api.upload(&bad).await);
    let cache = Cache::start(&api.base, 1 << 20).await;
    for hex in [&good_hex, &bad_hex] {
        assert_eq!(cache.get(hex, None).await.0, StatusCode::OK);
    }
    let dir = cache.stop().await;

    let cache = Cache::start_in(dir, &api.base, 1 << 20).await;
    assert_eq!(cache.metric("bytes").await, 60_000, "indexed at start");
    flip_byte(&cache.file(&bad_hex), 0);

    assert_eq!(cache.get(&good_hex, None).await.1, good);
    assert_eq!(cache.get(&bad_hex, None).await.1, bad);
    assert_eq!(cache.metric("hits").await, 1);
    assert_eq!(cache.metric("corrupt").await, 1);
    assert_eq!(cache.metric("bytes_from_upstream").await, 30_000);
    cache.stop().await;
}

#[tokio::test]
async fn the_least_recently_used_artifact_is_evicted_to_stay_within_the_bound() {
    let (_server, api) = upstream().await;
    let size = 40_000;
    let mut artifacts = Vec::new();
    for seed in [10, 11, 12] {
        let body = bytes(seed, size);
        artifacts.push((api.upload(&body).await, body));
    }
    let cache = Cache::start(&api.base, size as u64 * 5 / 2).await;
    let [a, b, c] = [&artifacts[0], &artifacts[1], &artifacts[2]];

    for (hex, body) in [a, b, c] {
        assert_eq!(cache.get(hex, None).await.1, *body);
    }
    assert_eq!(cache.metric("evictions").await, 1);
    assert!(
        !cache.file(&a.0).exists(),
        "A, least recently used, evicted"
    );
    assert_eq!(cache.metric("bytes").await, 2 * size as u64);

    for (hex, body) in [b, c] {
        assert_eq!(cache.get(hex, None).await.1, *body);
    }
    assert_eq!(cache.metric("hits").await, 2);
    assert_eq!(cache.metric("misses").await, 3);

    assert_eq!(cache.get(&a.0, None).await.1, a.1);
    assert_eq!(cache.metric("misses").await, 4);
    assert_eq!(cache.metric("evictions").await, 2);
    assert!(!cache.file(&b.0).exists(), "B, now least recently used");
    cache.stop().await;
}

#[tokio::test]
async fn what_the_upstream_lacks_is_404_an_unreachable_upstream_502_and_nothing_is_stored() {
    let (_server, api) = upstream().await;
    let absent = hex::encode(Sha256::digest(b"never uploaded"));
    let cache = Cache::start(&api.base, 1 << 20).await;

    assert_eq!(cache.get(&absent, None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(cache.stored(), 0);
    cache.stop().await;

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let hex = api.upload(&bytes(3, 1000)).await;
    let cache = Cache::start(&down, 1 << 20).await;

    let (status, body) = cache.get(&hex, None).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(String::from_utf8_lossy(&body).contains("upstream"));
    assert_eq!(cache.stored(), 0);
    assert_eq!(cache.metric("upstream_errors").await, 1);
    cache.stop().await;
}

#[tokio::test]
async fn an_artifact_larger_than_the_cache_is_refused_with_507() {
    let (_server, api) = upstream().await;
    let hex = api.upload(&bytes(4, 5000)).await;
    let cache = Cache::start(&api.base, 4096).await;

    let (status, body) = cache.get(&hex, None).await;

    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE);
    assert!(String::from_utf8_lossy(&body).contains("--max-size"));
    assert_eq!(cache.metric("too_large").await, 1);
    assert_eq!(cache.stored(), 0);
    cache.stop().await;
}

#[tokio::test]
async fn concurrent_misses_for_one_digest_make_one_upstream_fetch() {
    let (_server, api) = upstream().await;
    let rootfs = bytes(5, 4 << 20);
    let hex = api.upload(&rootfs).await;
    let cache = Cache::start(&api.base, 64 << 20).await;

    let gets = (0..10).map(|_| cache.get(&hex, None));
    let answers = futures_util::future::join_all(gets).await;

    for (status, body) in answers {
        assert_eq!(status, StatusCode::OK);
        assert!(body == rootfs, "wrong body");
    }
    assert_eq!(cache.metric("misses").await, 1);
    assert_eq!(cache.metric("hits").await, 9);
    assert_eq!(
        cache.metric("bytes_from_upstream").await,
        rootfs.len() as u64
    );
    cache.stop().await;
}

/// `dhcp.subnet[].artifacts`: a machine in that subnet gets a script whose
/// kernel and initrd URLs name the cache, and every other URL the server;
/// a machine elsewhere gets the server's URLs only. The cache then serves
/// what the script names.
#[tokio::test]
async fn scripts_name_the_cache_of_the_machines_subnet_only() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cache_base = format!("http://{}", listener.local_addr().unwrap());
    let dir = TempDir::new().unwrap();
    let text = crate::common::full_config_with(dir.path(), "", crate::common::LOOPBACK_STANDS_IN)
        .replacen(
            "network = \"127.1.0.0/24\"",
            &format!("network = \"127.1.0.0/24\"\nartifacts = \"{cache_base}/\""),
            1,
        );
    let server = TestServer::start(&text, dir).await;
    let api = Api::new(&server);
    let (kernel, initrd) = (bytes(7, 40_000), bytes(8, 50_000));
    let generation = api
        .import("worker", &kernel, &initrd, "console=ttyS0")
        .await;
    api.point("default", "worker", generation).await;
    let kernel_hex = hex::encode(Sha256::digest(&kernel));
    let server_base = format!("http://{}", server.bound.http);

    let script_from = |ip: &str| {
        let client = reqwest::Client::builder()
            .local_address(ip.parse::<std::net::IpAddr>().unwrap())
            .build()
            .unwrap();
        let base = server_base.clone();
        async move { crate::common::fleet::script(&client, &base, "52:54:00:00:00:01").await }
    };
    let in_rack = script_from("127.1.0.50").await;
    assert!(
        in_rack.contains(&format!("{cache_base}/artifacts/sha256/{kernel_hex}")),
        "{in_rack}"
    );
    assert!(
        in_rack.contains(&format!("s={server_base}/config/")),
        "the seed stays on the server: {in_rack}"
    );
    let elsewhere = script_from("127.2.0.15").await;
    assert!(
        elsewhere.contains(&format!("{server_base}/artifacts/sha256/{kernel_hex}"))
            && !elsewhere.contains(&cache_base),
        "{elsewhere}"
    );

    // The cache on that address serves the kernel the script names.
    let cache_dir = TempDir::new().unwrap();
    let settings = Settings {
        upstream: server_base.clone(),
        listen: listener.local_addr().unwrap(),
        dir: cache_dir.path().join("cache"),
        max_size: 1 << 30,
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { serve(listener, &settings, shutdown).await }
    });
    let got = reqwest::get(format!("{cache_base}/artifacts/sha256/{kernel_hex}"))
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.bytes().await.unwrap().as_ref(), &kernel[..]);
    shutdown.cancel();
    let _ = task.await;
    server.stop().await;
}
