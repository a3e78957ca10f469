//! The `ironboot` binary as an operator meets it: configuration errors that
//! name the key wherever the value came from (file, environment, flag), and
//! `ironboot serve` on embedded defaults, stopped by SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common;

const BIN: &str = env!("CARGO_BIN_EXE_ironboot");

const ISSUE_EXAMPLE: &str = include_str!("../fixtures/ironboot.example.toml");

/// Runs `ironboot check-config` with a config file, env and flags.
fn check(config: Option<&str>, env: &[(&str, &str)], flags: &[&str]) -> (bool, String) {
    let dir = tempfile::TempDir::new().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("check-config")
        .args(flags)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    if let Some(text) = config {
        let path = dir.path().join("ironboot.toml");
        std::fs::write(&path, text).unwrap();
        cmd.arg("--config").arg(path);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        assert_eq!(
            out.status.code(),
            Some(2),
            "configuration errors exit 2: {text}"
        );
    }
    (out.status.success(), text)
}

#[test]
fn the_documented_config_validates() {
    let (ok, text) = check(Some(ISSUE_EXAMPLE), &[], &[]);
    assert!(ok, "{text}");
    assert!(text.contains("configuration OK"), "{text}");
}

#[test]
fn errors_name_the_key_whatever_the_source() {
    /// (config file, environment, flags, the key the error must name)
    type Case<'a> = (
        Option<&'a str>,
        &'a [(&'a str, &'a str)],
        &'a [&'a str],
        &'a str,
    );
    let cases: &[Case] = &[
        (Some("[dhcp]\nmode = \"fancy\"\n"), &[], &[], "dhcp.mode"),
        (Some("[tftp]\nblksize = 1468\n"), &[], &[], "blksize"),
        (Some("[dhcp]\nmode = \"full\"\n"), &[], &[], "dhcp.subnet"),
        (
            Some("[[dhcp.subnet]]\nnetwork = \"10.0.0.0/24\"\nrange = [\"10.0.0.9\"]\n"),
            &[],
            &[],
            "dhcp.subnet[0].range",
        ),
        (
            None,
            &[("IRONBOOT_TFTP__MAX_BLKSIZE", "4")],
            &[],
            "tftp.max_blksize",
        ),
        (
            None,
            &[("IRONBOOT_DHCP__MODE", "sometimes")],
            &[],
            "dhcp.mode",
        ),
        (
            None,
            &[],
            &["--set", "tftp.max_windowsize=500"],
            "tftp.max_windowsize",
        ),
        (None, &[], &["--dhcp-mode", "full"], "dhcp.subnet"),
        (None, &[], &["--set", "nonsense"], "--set"),
        (Some("not toml at all ["), &[], &[], "ironboot.toml"),
    ];
    for (file, env, flags, key) in cases {
        let (ok, text) = check(*file, env, flags);
        assert!(!ok, "should fail: {file:?} {env:?} {flags:?}");
        // Values from the environment are named as figment prints them:
        // `DHCP.MODE` in `IRONBOOT_` environment variable(s).
        assert!(
            text.to_lowercase().contains(&key.to_lowercase()),
            "error should name {key}: {text}"
        );
    }
}

#[test]
fn environment_and_flags_override_the_file_in_that_order() {
    let env = [
        ("IRONBOOT_SERVER_IP", "10.77.0.9"),
        ("IRONBOOT_TOKEN", "not-a-config-key"),
    ];
    let (ok, text) = check(Some(ISSUE_EXAMPLE), &env, &[]);
    assert!(ok, "{text}");
    assert!(text.contains("10.77.0.9"), "env overrides file: {text}");
    let (ok, text) = check(Some(ISSUE_EXAMPLE), &env, &["--server-ip", "10.77.0.7"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("10.77.0.7") && !text.contains("10.77.0.9"),
        "flag overrides env: {text}"
    );
}

/// Runs a command inside a network namespace this test owns, removed on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("ibcli-{tag}-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip netns add {name}");
        let ns = Self(name);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn cmd(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]).args(argv);
        c
    }

    fn exec(&self, argv: &[&str]) -> String {
        let out = self.cmd(argv).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// `ironboot serve` with no configuration: proxy DHCP, TFTP 69, HTTP 8080,
/// `./ironboot-data`. Run in a fresh namespace so its DHCP socket sees only
/// that namespace's loopback.
#[test]
fn serve_on_embedded_defaults_prints_what_it_serves_and_stops_on_sigterm() {
    if !common::is_root() || !common::require_or_skip(&["ip", "curl"]) {
        if std::env::var("IRONBOOT_E2E").as_deref() == Ok("require") {
            panic!("IRONBOOT_E2E=require but not root");
        }
        eprintln!("SKIPPED: needs root for a network namespace");
        return;
    }
    let ns = Netns::new("defaults");
    let work = tempfile::TempDir::new().unwrap();
    let mut child = ns
        .cmd(&["timeout", "60", BIN, "serve", "--log-format", "json"])
        .current_dir(work.path())
        .env_remove("IRONBOOT_E2E")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // The test stops reading stdout after the banner line it needs and
    // closes the pipe: the server must shrug that off (it once panicked).
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let banner: Vec<String> = stdout
        .lines()
        .map_while(Result::ok)
        .take_while(|l| !l.contains("boot script"))
        .collect();
    let banner = banner.join("\n");
    assert!(banner.contains("embedded defaults"), "{banner}");
    for needle in [
        "dhcp proxy mode on 0.0.0.0:67",
        "dhcp proxy mode on 0.0.0.0:4011",
        "tftp on 0.0.0.0:69",
        "http on 0.0.0.0:8080",
        "ironboot-data",
    ] {
        assert!(
            banner.contains(needle),
            "banner should say {needle:?}:\n{banner}"
        );
    }

    let deadline = Instant::now() + Duration::from_secs(10);
    let health = loop {
        let body = ns.exec(&[
            "curl",
            "-sf",
            "--max-time",
            "2",
            "http://127.0.0.1:8080/healthz",
        ]);
        if body.contains("\"ok\"") || Instant::now() > deadline {
            break body;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(health.contains("\"status\":\"ok\""), "healthz: {health}");
    assert!(health.contains("tftp"), "healthz lists services: {health}");

    // SIGTERM to the server's own PID (ip netns exec and timeout exec/forward).
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "server did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut logs = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut logs).unwrap();
    assert!(
        status.success(),
        "clean exit after SIGTERM: {status:?}\n{logs}"
    );
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("--log-format json: {e}: {line}"));
    }
    assert!(logs.contains("SIGTERM"), "{logs}");
    assert!(
        work.path().join("ironboot-data/ironboot.db").exists(),
        "SQLite under ./ironboot-data"
    );
}

#[test]
fn a_port_in_use_fails_fast_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::TempDir::new().unwrap();
    let out = Command::new(BIN)
        .args([
            "serve",
            "--server-ip",
            "127.0.0.1",
            "--dhcp-mode",
            "off",
            "--set",
            "tftp.enabled=false",
        ])
        .args(["--http-listen", &addr])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&addr) && err.contains("HTTP"), "{err}");
}
