//! IPMI over LAN against a real BMC on loopback: OpenIPMI's `ipmi_sim`
//! (Debian `openipmi`) behind the real server, driven through the API with
//! the real `ipmitool` (`-I lanplus`, RMCP+). CI installs both (`.ci/run`);
//! elsewhere the test skips unless `IRONBOOT_E2E=require`.
//!
//! The simulated chassis is the one `ipmi_sim` offers without a VM: its
//! `chassis_control` program (`<program> get power|boot`, `<program> set
//! power 0|1`, `set reset 1`, `set boot pxe`, `set shutdown 1`), here a
//! script in the test's directory. A `startcmd` (with the `serial 15 …
//! codec VM` channel it needs) gives power on, off and cycle; a reset and
//! a boot device it refuses (`Invalid data field`) unless a VM is connected
//! to that channel or a chassis program is set (and ipmitool's `chassis
//! bootdev` still exits 0). The script's machine is a `sleep`:
//! power on starts one, off kills it, a reset replaces it, and the boot
//! device asked for is written down, so the test sees what the BMC did
//! rather than only what ironboot says it asked for.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::common;
use crate::common::api::Api;
use crate::common::fleet::Fleet;
use crate::common::TestServer;

const MAC: &str = "52:54:00:00:0c:01";
const PASSWORD: &str = "Ipmi-s3cret-Pa55";
const WRONG: &str = "Not-the-Pa55word";

/// The machine behind the BMC: `sleep` standing in for a running host.
const MACHINE: &str = r#"#!/bin/sh
# ipmi_sim's chassis_control: `get <parm>...` prints `<parm>:<value>` lines;
# `set <parm> <value>...` acts; a non-zero exit is an error to the BMC.
dir=$(dirname "$0")
pidf="$dir/machine.pid"
echo "$*" >> "$dir/calls"
alive() { [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; }
start() { sleep 300 </dev/null >/dev/null 2>&1 & echo $! > "$pidf"; }
stop() { if alive; then kill "$(cat "$pidf")"; fi; rm -f "$pidf"; }
op=$1; shift
while [ $# -gt 0 ]; do
  case "$op $1" in
    "get power") if alive; then echo power:1; else echo power:0; fi ;;
    "get boot") echo "boot:$(cat "$dir/boot" 2>/dev/null || echo default)" ;;
    "set power") if [ "$2" = 1 ]; then alive || start; else stop; fi; shift ;;
    "set reset") stop; start; shift ;;
    "set shutdown") stop; shift ;;
    "set boot") echo "$2" > "$dir/boot"; shift ;;
    *) echo "unknown: $op $1" >&2; exit 1 ;;
  esac
  shift
done
"#;

/// `ipmi_sim` on 127.0.0.1 and the machine it controls.
struct Sim {
    child: tokio::process::Child,
    dir: TempDir,
    port: u16,
}

impl Sim {
    async fn start() -> Sim {
        let dir = tempfile::tempdir().unwrap();
        let machine = dir.path().join("machine");
        std::fs::write(&machine, MACHINE).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&machine, std::fs::Permissions::from_mode(0o755)).unwrap();
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // One LAN channel on loopback, RMCP+ for one admin user, the
        // chassis through the script.
        let conf = dir.path().join("lan.conf");
        std::fs::write(
            &conf,
            format!(
                "name \"ironboot-test\"\n\
                 set_working_mc 0x20\n\
                 startlan 1\n\
                 \taddr 127.0.0.1 {port}\n\
                 \tpriv_limit admin\n\
                 \tallowed_auths_admin md5\n\
                 \tguid a123456789abcdefa123456789abcdef\n\
                 endlan\n\
                 chassis_control \"{}\"\n\
                 user 2 true \"admin\" \"{PASSWORD}\" admin 10 md5\n",
                machine.display()
            ),
        )
        .unwrap();
        // The BMC itself (the simulator starts with no controller at all).
        let emu = dir.path().join("bmc.emu");
        std::fs::write(
            &emu,
            "mc_setbmc 0x20\n\
             mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\n\
             sel_enable 0x20 1000 0x0a\n\
             mc_enable 0x20\n",
        )
        .unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let log = std::fs::File::create(dir.path().join("ipmi_sim.log")).unwrap();
        // -n: no console on stdin/stdout; -p: nothing persisted (and the
        // state directory is the test's own anyway).
        let child = tokio::process::Command::new("ipmi_sim")
            .arg("-c")
            .arg(&conf)
            .arg("-f")
            .arg(&emu)
            .arg("-s")
            .arg(&state)
            .args(["-n", "-p"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut sim = Sim { child, dir, port };
        sim.wait_ready().await;
        sim
    }

    /// Until the simulator answers a Get Channel Authentication
    /// Capabilities request (IPMI 1.5, outside any session): the first
    /// thing ipmitool asks.
    async fn wait_ready(&mut self) {
        const PROBE: [u8; 23] = [
            0x06, 0x00, 0xff, 0x07, // RMCP, class IPMI
            0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0x09, // no auth, no session, 9 bytes
            0x20, 0x18, 0xc8, 0x81, 0x00, 0x38, 0x8e, 0x04, 0xb5,
        ];
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.connect(("127.0.0.1", self.port)).await.unwrap();
        let mut buf = [0u8; 512];
        for _ in 0..50 {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("ipmi_sim exited ({status}): {}", self.log());
            }
            let _ = socket.send(&PROBE).await;
            let answer = tokio::time::timeout(Duration::from_millis(100), socket.recv(&mut buf));
            match answer.await {
                Ok(Ok(n)) if n > 4 && buf[..4] == PROBE[..4] => return,
                // Refused (nothing bound yet) comes back at once.
                Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(_) => {}
            }
        }
        panic!(
            "ipmi_sim never answered on port {}: {}",
            self.port,
            self.log()
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ipmi_sim.log")).unwrap_or_default()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The running machine's pid: `None` while it is off.
    fn machine(&self) -> Option<i32> {
        let pid = std::fs::read_to_string(self.path("machine.pid")).ok()?;
        let pid = pid.trim().parse().ok()?;
        running(pid).then_some(pid)
    }

    /// What the BMC asked of the chassis, in order.
    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The boot device the BMC was last told.
    fn boot(&self) -> Option<String> {
        std::fs::read_to_string(self.path("boot"))
            .ok()
            .map(|b| b.trim().to_string())
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        // The machine outlives the script that started it: end it by pid.
        if let Some(pid) = self.machine() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.child.start_kill();
    }
}

/// What `probe` finds once it finds something, within 5 s: the script's
/// `kill` returns before the old `sleep` has died, and a loaded machine
/// can take a moment to end it.
async fn settled<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    for _ in 0..50 {
        if let Some(found) = probe() {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not so after 5 s");
}

/// Whether `pid` is one of our machines and alive: a `sleep` that is not
/// a zombie (nothing here may reap it at once).
fn running(pid: i32) -> bool {
    let proc = Path::new("/proc").join(pid.to_string());
    let cmdline = std::fs::read(proc.join("cmdline")).unwrap_or_default();
    let stat = std::fs::read_to_string(proc.join("stat")).unwrap_or_default();
    let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
    cmdline.starts_with(b"sleep\0") && !matches!(state, None | Some(Some('Z' | 'X')))
}

async fn power(api: &Api, action: &str) -> Value {
    api.ok(
        Method::POST,
        &format!("/api/v1/machines/{MAC}/power"),
        Some(json!({ "action": action })),
    )
    .await
}

async fn status(api: &Api) -> Value {
    api.ok(Method::GET, &format!("/api/v1/machines/{MAC}/power"), None)
        .await
}

async fn set_bmc(api: &Api, port: u16, password: &str) {
    api.ok(
        Method::PUT,
        &format!("/api/v1/machines/{MAC}/bmc"),
        Some(json!({
            "protocol": "ipmi",
            "address": format!("127.0.0.1:{port}"),
            "username": "admin",
            "password": password,
        })),
    )
    .await;
}

#[tokio::test]
async fn openipmi_ipmi_sim_is_driven_through_the_api() {
    if !common::require_or_skip(&["ipmi_sim", "ipmitool"]) {
        return;
    }
    let started = Instant::now();
    let mut sim = Sim::start().await;
    // ipmi_sim leaves ipmitool's Get Channel Cipher Suites unanswered
    // (sessionless RMCP+), which costs each ipmitool run a second before
    // it falls back to suite 3: three runs for a network boot take about
    // 4 s, which a loaded CI machine can double: the default 15 s bound
    // (1 s per run for the cipher suites) leaves room for that.
    let server =
        TestServer::full("[bmc]\ntimeout = \"15s\"\nretries = 2\nbackoff = \"100ms\"\n").await;
    let api = Api::new(&server);
    let a = api.import_worker(1).await;
    api.point("default", "worker", a).await;
    api.boot_ok(MAC).await;
    set_bmc(&api, sim.port, PASSWORD).await;

    // Off as the simulator starts.
    let st = status(&api).await;
    assert_eq!(
        (st["ok"].clone(), st["power"].clone()),
        (json!(true), json!("off")),
        "{st}"
    );
    assert_eq!(sim.machine(), None);

    // On: the machine runs.
    let on = power(&api, "on").await;
    assert_eq!(
        (
            on["power"].clone(),
            on["detail"]["power_before"].clone(),
            on["detail"]["power_command"].clone()
        ),
        (json!("on"), json!("off"), json!("on")),
        "{on}"
    );
    let first = settled("powered on: the machine runs", || sim.machine()).await;
    let st = status(&api).await;
    assert_eq!(st["power"], "on", "{st}");
    // On again: nothing to do, nothing sent.
    let again = power(&api, "on").await;
    assert_eq!(again["detail"]["power_command"], Value::Null, "{again}");
    assert_eq!(sim.machine(), Some(first));

    // The one-time network boot with a reboot: PXE set, then a reset (the
    // machine was on): a new machine process, told to boot from PXE.
    let nb = api
        .ok(
            Method::POST,
            &format!("/api/v1/machines/{MAC}/netboot"),
            Some(json!({ "reboot": true })),
        )
        .await;
    assert_eq!(
        (
            nb["ok"].clone(),
            nb["detail"]["boot_override"].clone(),
            nb["detail"]["power_command"].clone(),
            nb["power"].clone()
        ),
        (json!(true), json!("pxe"), json!("reset"), json!("on")),
        "{nb}"
    );
    assert_eq!(sim.boot().as_deref(), Some("pxe"));
    let calls = sim.calls();
    let boot_at = calls.iter().position(|c| c == "set boot pxe");
    let reset_at = calls.iter().position(|c| c == "set reset 1");
    assert!(
        matches!((boot_at, reset_at), (Some(b), Some(r)) if b < r),
        "boot device set before the reset: {calls:?}"
    );
    let second = settled("reset: the machine runs again", || {
        sim.machine().filter(|&pid| pid != first)
    })
    .await;
    settled("reset: the old machine is gone", || {
        (!running(first)).then_some(())
    })
    .await;

    // Off: the machine is gone.
    let off = power(&api, "off").await;
    assert_eq!(
        (off["power"].clone(), off["detail"]["power_command"].clone()),
        (json!("off"), json!("off")),
        "{off}"
    );
    settled("off: the machine is gone", || {
        (sim.machine().is_none() && !running(second)).then_some(())
    })
    .await;
    let st = status(&api).await;
    assert_eq!(st["power"], "off", "{st}");

    // A wrong password: refused at once, never retried (lockouts).
    set_bmc(&api, sim.port, WRONG).await;
    let (code, err) = api
        .call(Method::GET, &format!("/api/v1/machines/{MAC}/power"), None)
        .await;
    assert_eq!(code, StatusCode::BAD_GATEWAY, "{err}");
    assert_eq!(err["error"]["code"], "bmc_failed", "{err}");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("after 1 attempt(s): the BMC refused the credentials"),
        "{err}"
    );

    // Every operation recorded; no event holds either password.
    let mut events = Vec::new();
    for _ in 0..50 {
        let v = api
            .ok(Method::GET, "/api/v1/events?step=bmc&limit=100", None)
            .await;
        events = v["events"].as_array().unwrap().clone();
        if events.iter().filter(|e| e["step"] == "bmc.op").count() >= 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ops: Vec<&Value> = events.iter().filter(|e| e["step"] == "bmc.op").collect();
    assert_eq!(ops.len(), 8, "{events:?}");
    assert!(
        !events.iter().any(|e| e["step"] == "bmc.retry"),
        "nothing retried: {events:?}"
    );
    let text = serde_json::to_string(&events).unwrap();
    assert!(!text.contains(PASSWORD) && !text.contains(WRONG), "{text}");

    server.stop().await;
    sim.child.kill().await.unwrap();
    drop(sim);
    eprintln!("ipmi_sim test took {:?}", started.elapsed());
}
