//! The `ironboot` binary as an operator meets it: configuration errors that
//! name the key wherever the value came from (file, environment, flag),
//! `ironboot serve` on embedded defaults, stopped by SIGTERM, and client
//! commands facing an answer that is not the API's.

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

/// A stand-in for what may answer on the server's address instead of this
/// version's API: each request path gets its canned status, content type
/// and body; every connection is closed after one answer.
fn impostor(answers: Vec<(&'static str, u16, &'static str, &'static str)>) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                head.push_str(&line);
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
            let (status, kind, text) = answers
                .iter()
                .find(|(p, ..)| *p == path)
                .map(|(_, s, k, t)| (*s, *k, *t))
                .unwrap_or((404, "text/plain", "no such page"));
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            );
        }
    });
    format!("http://{addr}")
}

/// A server of another version, a proxy's error page or a captive portal
/// answers in place of the API: every client command stops with exit 1 and
/// says what it got (the field missing, the page that is not JSON) instead
/// of printing a table of dashes, panicking or claiming it cannot connect.
#[test]
fn an_answer_that_is_not_the_apis_is_refused_saying_what_came() {
    const PORTAL: &str = "<!DOCTYPE html>\n<html><head><title>Sign in to the guest network</title></head><body>Please sign in.</body></html>";
    const BAD_GATEWAY: &str =
        "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>";
    let server = impostor(vec![
        // Another version: no `kind`, no `group`, …
        (
            "/api/v1/machines/52:54:00:00:00:01",
            200,
            "application/json",
            r#"{"mac": "52:54:00:00:00:01", "recent_boots": []}"#,
        ),
        (
            "/api/v1/explain",
            200,
            "application/json",
            r#"{"mac": "52:54:00:00:00:01", "dhcp": null, "script": null}"#,
        ),
        ("/api/v1/templates", 200, "text/html; charset=utf-8", PORTAL),
        ("/api/v1/rollouts", 502, "text/html", BAD_GATEWAY),
        ("/api/v1/tokens", 200, "application/json", ""),
    ]);
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .args(["--server", &server, "--token", "t"])
            .env_remove("IRONBOOT_TOKEN")
            .env_remove("IRONBOOT_SERVER")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stdout}{stderr}");
        assert_eq!(stdout, "", "{args:?} printed something: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("cannot reach"), "{args:?}: {stderr}");
        stderr
    };
    for args in [
        &["machines", "show", "52:54:00:00:00:01"][..],
        &["machines", "show", "52:54:00:00:00:01", "-o", "json"],
    ] {
        let err = run(args);
        assert!(
            err.contains("unexpected answer from the server: /api/v1/machines/52:54:00:00:00:01: missing field `kind`"),
            "{err}"
        );
    }
    let err = run(&["explain", "52:54:00:00:00:01"]);
    assert!(
        err.contains("/api/v1/explain: missing field `client`"),
        "{err}"
    );
    let err = run(&["templates", "list"]);
    assert!(
        err.contains("/api/v1/templates: not JSON (text/html; charset=utf-8): \"<!DOCTYPE html> <html><head><title>Sign in"),
        "{err}"
    );
    let err = run(&["rollout", "list"]);
    assert!(
        err.contains("server refused (502 Bad Gateway): no API error in the answer (text/html): \"<html> <head><title>502 Bad Gateway"),
        "{err}"
    );
    let err = run(&["tokens", "list"]);
    assert!(
        err.contains("/api/v1/tokens: not JSON (application/json): an empty body"),
        "{err}"
    );
}
