//! The end-to-end lab shared by the tests of `tests/e2e`:
//! network namespaces this test creates, a bridge `br0` (10.77.0.1/24) with
//! taps for QEMU guests, a veth to a client namespace, `ironboot serve` in
//! full DHCP mode, and the processes, each started as
//! `ip netns exec NS timeout … cmd` and stopped by PID.
//!
//! Nothing touches the root namespace: two namespaces (`ibe2e-<pid>-<tag>`
//! for the server, bridge and taps; `…-c` for the command-line clients,
//! wired to the bridge by a veth pair). Every process is started as
//! `ip netns exec NS timeout … cmd` (so the PID held is the real `timeout`,
//! and a lost test cannot leave anything running for long), stopped by that
//! PID, and the namespaces are deleted by a drop guard, panic or not.
//!
//! Requirements missing, a test prints why and passes as skipped, unless
//! `IRONBOOT_E2E=require`, where it fails.
#![allow(dead_code)]

pub mod live;
pub use live::*;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::Row;

pub const SERVER_IP: &str = "10.77.0.1";
pub const BOOT_URL: &str = "http://10.77.0.1:8080/boot.ipxe";
pub const OVMF: &str = "/usr/share/ovmf/OVMF.fd";
pub const IPXE_DIR: &str = "/usr/lib/ipxe";
pub const RESERVED_MAC: &str = "52:54:00:00:00:01";
pub const RESERVED_IP: &str = "10.77.0.50";
/// QEMU's iPXE option ROM for virtio-net, legacy PXE and EFI in one image
/// (package `ipxe-qemu`); QEMU's default `romfile` for the NIC.
pub const EFI_VIRTIO_ROM: &str = "/usr/lib/ipxe/qemu/efi-virtio.rom";

/// How a VM network-boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS (`-machine pc`) with QEMU's iPXE ROM on the NIC.
    BiosIpxeRom,
    /// OVMF (`-machine q35`) with QEMU's iPXE EFI ROM on the NIC: iPXE's
    /// driver is what OVMF boots from the network.
    UefiIpxeRom,
    /// OVMF with no option ROM (`romfile=`): the firmware's own PXE, which
    /// loads `ipxe.efi` over TFTP.
    UefiPxe,
    /// OVMF with no option ROM and its PXE turned off (fw_cfg
    /// `opt/org.tianocore/IPv4PXESupport` and `IPv6PXESupport` = `n`): the
    /// firmware's own UEFI HTTP boot (DHCP opt 60 `HTTPClient`, arch 16),
    /// which loads `ipxe.efi` from the URL the DHCP reply gives.
    UefiHttp,
    /// OVMF with no option ROM and its IPv4 stack off (fw_cfg
    /// `opt/org.tianocore/IPv4Support` = `n`): PXEv6, which loads
    /// `ipxe.efi` from the `tftp://[…]/` URL of DHCPv6 option 59, then
    /// (when PXEv6 got no boot file) HTTPv6.
    UefiIpv6,
}

/// What QEMU does when the guest reboots (`reboot`, or a kernel panic with
/// `panic=N` on the command line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnReboot {
    /// `-no-reboot`: QEMU exits, as after a power-off.
    Exit,
    /// The machine resets and network-boots again, as a real server does;
    /// QEMU still exits when the guest powers off.
    Reset,
}

/// Links (or copies) the `ironboot` cargo built into `dir`.
fn snapshot_bin(dir: &Path) -> PathBuf {
    let built = Path::new(env!("CARGO_BIN_EXE_ironboot"));
    let bin = dir.join("ironboot");
    if fs::hard_link(built, &bin).is_err() {
        fs::copy(built, &bin).unwrap_or_else(|e| panic!("copy {}: {e}", built.display()));
    }
    bin
}

/// Removes every IRONBOOT_* variable from a command's environment.
fn scrub_env(command: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("IRONBOOT_") {
            command.env_remove(key);
        }
    }
}

// ---------------------------------------------------------------------------
// Requirements
// ---------------------------------------------------------------------------

/// Absolute paths of the programs the test runs.
#[derive(Clone)]
pub struct Tools {
    pub ip: PathBuf,
    pub qemu: PathBuf,
    pub busybox: PathBuf,
    pub atftp: PathBuf,
    pub tftp: PathBuf,
    pub timeout: PathBuf,
}

pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}

pub fn requirements() -> Result<Tools, String> {
    // The owner of /proc/self is the effective uid.
    let euid = fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1);
    if euid != 0 {
        return Err("needs root (network namespaces, bridges, taps)".into());
    }
    let find = |name: &str, package: &str| {
        which(name).ok_or_else(|| format!("{name} not found (package {package})"))
    };
    let tools = Tools {
        ip: find("ip", "iproute2")?,
        qemu: find("qemu-system-x86_64", "qemu-system-x86")?,
        busybox: find("busybox", "busybox-static")?,
        atftp: find("atftp", "atftp")?,
        tftp: find("tftp", "tftp-hpa")?,
        timeout: find("timeout", "coreutils")?,
    };
    for (file, package) in [
        (OVMF, "ovmf"),
        ("/usr/lib/ipxe/undionly.kpxe", "ipxe"),
        ("/usr/lib/ipxe/ipxe.efi", "ipxe"),
        ("/usr/lib/ipxe/snponly.efi", "ipxe"),
        (EFI_VIRTIO_ROM, "ipxe-qemu"),
        ("/dev/net/tun", "a kernel with tun"),
    ] {
        if !Path::new(file).exists() {
            return Err(format!("{file} missing (package {package})"));
        }
    }
    Ok(tools)
}

/// The tools, or `None` after printing why the test is skipped. With
/// `IRONBOOT_E2E=require`, a missing requirement fails the test instead.
pub fn tools_or_skip(test: &str) -> Option<Tools> {
    match requirements() {
        Ok(tools) => Some(tools),
        Err(reason) => {
            skip(test, &reason);
            None
        }
    }
}

/// Prints why `test` is skipped; with `IRONBOOT_E2E=require`, fails instead.
pub fn skip(test: &str, reason: &str) {
    if std::env::var("IRONBOOT_E2E").as_deref() == Ok("require") {
        panic!("{test}: IRONBOOT_E2E=require but {reason}");
    }
    eprintln!("SKIPPED {test}: {reason} (IRONBOOT_E2E=require makes this a failure)");
}

// ---------------------------------------------------------------------------
// Processes: started through `ip netns exec NS timeout`, stopped by PID
// ---------------------------------------------------------------------------

/// A background process; dropping it stops it (SIGTERM, then SIGKILL).
pub struct Proc {
    pub name: String,
    pub child: Child,
}

pub fn signal(pid: u32, sig: nix::libc::c_int) {
    // SAFETY: kill(2) on a PID this test started and has not reaped yet.
    unsafe {
        nix::libc::kill(pid as nix::libc::pid_t, sig);
    }
}

/// Direct children of `pid` (the real program under `timeout`).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(text) = fs::read_to_string(task.path().join("children")) {
                out.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
        }
    }
    out
}

impl Proc {
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM (which `timeout` passes on to its child), up to `grace` for
    /// it to exit, then SIGKILL to the child and to `timeout` itself.
    pub fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        if let Some(status) = self.exited() {
            return Some(status);
        }
        let pid = self.child.id();
        signal(pid, nix::libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{}: no exit {grace:?} after SIGTERM; SIGKILL", self.name);
        for child in children_of(pid) {
            signal(child, nix::libc::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

// ---------------------------------------------------------------------------
// Text helpers
// ---------------------------------------------------------------------------

/// Serial output without terminal escapes, backspaces and carriage returns.
pub fn clean(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for n in chars.by_ref() {
                        if n.is_ascii_alphabetic() {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\r' => {
                if chars.peek() != Some(&'\n') {
                    out.push('\n');
                }
            }
            '\x08' => {}
            c => out.push(c),
        }
    }
    out
}

pub fn read_clean(path: &Path) -> String {
    clean(&fs::read(path).unwrap_or_default())
}

/// The last `n` non-empty lines of a log, for failure messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = read_clean(path);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(n);
    format!(
        "--- last {} lines of {} ---\n{}\n---",
        lines.len() - start,
        path.display(),
        lines[start..].join("\n")
    )
}

/// The address iPXE printed for net0 (`net0: 10.77.0.50/255.255.255.0 …`).
pub fn ipxe_address(serial: &str) -> Option<String> {
    serial.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("net0: ")?;
        let (ip, _) = rest.split_once('/')?;
        ip.parse::<std::net::Ipv4Addr>().ok().map(|a| a.to_string())
    })
}

pub fn in_pool(ip: &str) -> bool {
    let ip: std::net::Ipv4Addr = ip.parse().unwrap();
    let [a, b, c, d] = ip.octets();
    (a, b, c) == (10, 77, 0) && (100..=199).contains(&d)
}

pub fn metric(text: &str, name: &str) -> u64 {
    let key = format!("ironboot_{name}_total ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{key} not in /metrics:\n{text}"))
}

pub fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

// ---------------------------------------------------------------------------
// One lab at a time
// ---------------------------------------------------------------------------

/// A test's turn at the machine. Each test takes one on its first line and
/// gives it to [`Lab::new`], which keeps it until the lab is torn down: no
/// two labs (nor a live OS build beside a lab) ever run at once. libtest
/// runs a binary's tests in parallel threads, but these boot QEMU guests
/// under TCG, where one BIOS boot takes ~12 s alone on two cores, and their
/// deadlines (iPXE's configuring step, `BOOT_LIMIT`, a canary's timeout)
/// hold only if no other test's VMs share the CPUs. Each test had its own
/// binary before, which cargo ran one after another.
pub struct Turn(std::sync::MutexGuard<'static, ()>);

static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Turn {
    /// Waits until the test before has torn its lab down. A test that
    /// failed during its turn leaves the lock poisoned, and nothing else:
    /// its lab was dropped (and its namespaces deleted) by then.
    pub fn wait(test: &str) -> Turn {
        let asked = Instant::now();
        let guard = TURN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if asked.elapsed() > Duration::from_secs(1) {
            eprintln!("{test}: waited {} for its turn", secs(asked.elapsed()));
        }
        Turn(guard)
    }
}

// ---------------------------------------------------------------------------
// The lab: namespaces, bridge, taps, veth, server
// ---------------------------------------------------------------------------

pub struct Lab {
    pub tools: Tools,
    /// Server namespace: br0 (10.77.0.1/24), tap0…, the bridge end of the veth.
    pub ns: String,
    /// Client namespace: `vcl`, the other end of the veth.
    pub cns: String,
    pub namespaces: Vec<String>,
    pub tmp: Option<tempfile::TempDir>,
    pub dir: PathBuf,
    pub server: Option<Proc>,
    /// This run's `ironboot`: a hard link to (else a copy of) the binary
    /// cargo built, taken when the lab is made, so the server and every CLI
    /// call of one run are the same build even if cargo re-links
    /// `target/debug/ironboot` meanwhile (worktrees sharing one
    /// CARGO_TARGET_DIR do).
    pub bin: PathBuf,
    pub rt: tokio::runtime::Runtime,
    pub db: Option<sqlx::AnyPool>,
    /// TOML appended to the server's configuration (whole tables, e.g.
    /// `[dhcp.bootfile]` with a `grub_dir`).
    pub extra_config: String,
    /// ironboot in proxy DHCP mode on br0 (another server owns addresses),
    /// instead of full mode with the lab's pool and reservation.
    pub proxy: bool,
    /// An IPv6-only lab ([`Lab::new_ipv6_only`]): DHCP off, DHCPv6 and
    /// managed router advertisements on br0.
    pub ipv6: bool,
    /// Keys added to the IPv6 lab's `[dhcp6]` table (`pxe_bootfile = false`),
    /// then its `[[dhcp6.subnet]]` tables.
    pub dhcp6_extra: String,
    /// The namespace VMs run in (their taps' bridge); default [`Lab::ns`].
    pub vm_ns: Option<String>,
    /// Keys added to the IPv4 lab's `[[dhcp.subnet]]` (an `artifacts`
    /// cache URL).
    pub subnet_extra: String,
    /// Released after `Drop for Lab` has stopped everything and deleted the
    /// namespaces (fields drop after it), so the next test starts clean.
    turn: Turn,
}

impl Lab {
    pub fn new(tools: Tools, tag: &str, taps: usize, turn: Turn) -> Lab {
        let mut lab = Lab::unwired(tools, tag, turn);
        lab.network(taps);
        lab
    }

    /// The lab's directory, binary and runtime, before any namespace.
    fn unwired(tools: Tools, tag: &str, turn: Turn) -> Lab {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("ironboot-e2e-{tag}-"))
            .tempdir()
            .expect("temp dir");
        let ns = format!("ibe2e-{}-{tag}", std::process::id());
        Lab {
            tools,
            cns: format!("{ns}-c"),
            ns,
            namespaces: Vec::new(),
            bin: snapshot_bin(tmp.path()),
            dir: tmp.path().to_path_buf(),
            tmp: Some(tmp),
            server: None,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            db: None,
            extra_config: String::new(),
            proxy: false,
            ipv6: false,
            dhcp6_extra: String::new(),
            vm_ns: None,
            subnet_extra: String::new(),
            turn,
        }
    }

    /// Runs a command to completion (bounded by `timeout` inside), returning
    /// (success, stdout + stderr).
    pub fn run(&self, args: &[&str]) -> (bool, String) {
        let out = self.output(args);
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// Runs a command to completion, stdout and stderr apart. No IRONBOOT_*
    /// variable reaches it: the CLI reads `IRONBOOT_SERVER` and
    /// `IRONBOOT_TOKEN`, the server its whole configuration.
    pub fn output(&self, args: &[&str]) -> std::process::Output {
        let mut command = Command::new(args[0]);
        scrub_env(&mut command);
        command
            .args(&args[1..])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
    }

    pub fn ip(&self, args: &[&str]) {
        let ip = self.tools.ip.to_str().unwrap();
        let mut all = vec![ip];
        all.extend_from_slice(args);
        let (ok, text) = self.run(&all);
        assert!(ok, "ip {}: {text}", args.join(" "));
    }

    /// `ip netns exec NS timeout SECS cmd…`, to completion.
    pub fn exec(&self, ns: &str, secs: u64, cmd: &[&str]) -> (bool, String) {
        let all = self.in_ns(ns, secs, cmd);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        self.run(&refs)
    }

    /// `ip netns exec NS timeout SECS cmd…`, to completion, stdout and
    /// stderr apart (for commands whose stdout is JSON).
    pub fn exec_output(&self, ns: &str, secs: u64, cmd: &[&str]) -> std::process::Output {
        let all = self.in_ns(ns, secs, cmd);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        self.output(&refs)
    }

    fn in_ns(&self, ns: &str, secs: u64, cmd: &[&str]) -> Vec<String> {
        let mut all = vec![
            self.tools.ip.to_str().unwrap().to_string(),
            "netns".into(),
            "exec".into(),
            ns.into(),
            self.tools.timeout.to_str().unwrap().into(),
            "-k".into(),
            "2".into(),
            secs.to_string(),
        ];
        all.extend(cmd.iter().map(|s| s.to_string()));
        all
    }

    /// `ip netns exec NS timeout SECS cmd…` in the background, output to `log`.
    pub fn spawn(&self, name: &str, ns: &str, secs: u64, cmd: &[&str], log: &Path) -> Proc {
        let out = fs::File::create(log).unwrap();
        let err = out.try_clone().unwrap();
        let mut command = Command::new(&self.tools.ip);
        // The server reads IRONBOOT_* variables as config (and the test's
        // own IRONBOOT_E2E must not reach it): only the config file counts.
        scrub_env(&mut command);
        let child = command
            .args(["netns", "exec", ns])
            .arg(&self.tools.timeout)
            .args(["-k", "5", &secs.to_string()])
            .args(cmd)
            .env("IRONBOOT_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.to_string(),
            child,
        }
    }

    /// The server and client namespaces, made, with loopback up.
    fn namespaces_up(&mut self) -> (String, String) {
        let (ns, cns) = (self.ns.clone(), self.cns.clone());
        for n in [&ns, &cns] {
            let ip = self.tools.ip.to_str().unwrap();
            let (ok, text) = self.run(&[ip, "netns", "add", n]);
            if !ok {
                panic!("ip netns add {n} failed (root without CAP_SYS_ADMIN?): {text}");
            }
            self.namespaces.push(n.clone());
        }
        self.ip(&["-n", &ns, "link", "set", "lo", "up"]);
        self.ip(&["-n", &cns, "link", "set", "lo", "up"]);
        (ns, cns)
    }

    /// `ironboot serve --config CONFIG` in namespace `ns` (a server of a
    /// test with more than one), its output in `log`.
    pub fn serve(&self, name: &str, ns: &str, config: &Path, log: &Path) -> Proc {
        let bin = self.bin.to_str().unwrap();
        let config = config.to_str().unwrap();
        self.spawn(name, ns, 600, &[bin, "serve", "--config", config], log)
    }

    /// Server A of a test with more than one: `config` served in the lab's
    /// namespace, its log the lab's server log; waits (20 s at most) for
    /// `/healthz`.
    pub fn start_server_with(&mut self, config: &Path) {
        let ns = self.ns.clone();
        self.server = Some(self.serve("ironboot-a", &ns, config, &self.server_log()));
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.http("/healthz").is_none() {
            assert!(
                Instant::now() < deadline,
                "A did not serve in 20 s\n{}",
                tail(&self.server_log(), 30)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits (20 s at most) until `url` answers from namespace `ns`; on
    /// failure, `log`'s tail says why.
    pub fn wait_http(&self, ns: &str, url: &str, what: &str, log: &Path) {
        let bb = self.tools.busybox.to_str().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.exec(ns, 5, &[bb, "wget", "-q", "-O", "-", url]).0 {
            assert!(
                Instant::now() < deadline,
                "{what} did not answer in 20 s\n{}",
                tail(log, 30)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Another namespace on the lab bridge (a second server, a rack): a
    /// veth whose bridge end is `veth` in the lab's namespace and whose far
    /// end is `eth0` with `address` (CIDR). Deleted with the lab.
    pub fn namespace_on_bridge(&mut self, suffix: &str, veth: &str, address: &str) -> String {
        let other = format!("{}-{suffix}", self.ns);
        let ip = self.tools.ip.to_str().unwrap().to_string();
        let (ok, text) = self.run(&[&ip, "netns", "add", &other]);
        assert!(ok, "ip netns add {other}: {text}");
        self.namespaces.push(other.clone());
        let ns = self.ns.clone();
        self.ip(&["-n", &other, "link", "set", "lo", "up"]);
        self.ip(&[
            "-n", &ns, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", &other,
        ]);
        self.ip(&["-n", &ns, "link", "set", veth, "master", "br0"]);
        self.ip(&["-n", &ns, "link", "set", veth, "up"]);
        self.ip(&["-n", &other, "addr", "add", address, "dev", "eth0"]);
        self.ip(&["-n", &other, "link", "set", "eth0", "up"]);
        other
    }

    pub fn network(&mut self, taps: usize) {
        let (ns, cns) = self.namespaces_up();
        self.ip(&[
            "-n",
            &ns,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ]);
        // No duplicate address detection on br0: its link-local address is
        // usable at once, so the server's RA socket can send from the start.
        let bb = self.tools.busybox.to_str().unwrap().to_string();
        let _ = self.exec(
            &ns,
            5,
            &[&bb, "sysctl", "-w", "net.ipv6.conf.br0.accept_dad=0"],
        );
        self.ip(&["-n", &ns, "addr", "add", "10.77.0.1/24", "dev", "br0"]);
        // The veth gives the bridge a carrier before any VM exists.
        self.ip(&[
            "-n", &ns, "link", "add", "vbr", "type", "veth", "peer", "name", "vcl", "netns", &cns,
        ]);
        self.ip(&["-n", &ns, "link", "set", "vbr", "master", "br0"]);
        self.ip(&["-n", &ns, "link", "set", "vbr", "up"]);
        self.ip(&[
            "-n",
            &cns,
            "link",
            "set",
            "vcl",
            "address",
            "02:00:00:e2:e0:01",
        ]);
        self.ip(&["-n", &cns, "link", "set", "vcl", "up"]);
        self.ip(&["-n", &ns, "link", "set", "br0", "up"]);
        for i in 0..taps {
            let tap = format!("tap{i}");
            self.ip(&["-n", &ns, "tuntap", "add", "dev", &tap, "mode", "tap"]);
            self.ip(&["-n", &ns, "link", "set", &tap, "master", "br0"]);
            self.ip(&["-n", &ns, "link", "set", &tap, "up"]);
        }
    }

    pub fn config(&self, ipxe_dir: &Path) -> PathBuf {
        let dhcp = if self.ipv6 {
            format!(
                r#"
[dhcp]
mode = "off"
[dhcp6]
mode = "full"
interfaces = ["br0"]
server_ip = "{SERVER_IP6}"
prefix = "{PREFIX6}"
range = ["{POOL6_START}", "{POOL6_END}"]
{extra}
"#,
                extra = self.dhcp6_extra
            )
        } else if self.proxy {
            // The RA ends iPXE's wait for IPv6 autoconfiguration here too.
            "[dhcp]\nmode = \"proxy\"\ninterfaces = [\"br0\"]\nrouter_advertisement = true\n"
                .to_string()
        } else {
            format!(
                r#"
[dhcp]
mode = "full"
interfaces = ["br0"]
[[dhcp.subnet]]
network = "10.77.0.0/24"
range = ["10.77.0.100", "10.77.0.199"]
router = "{SERVER_IP}"
dns = ["{SERVER_IP}"]
lease_time = "1h"
{subnet_extra}
[[dhcp.reservation]]
mac = "{RESERVED_MAC}"
ip = "{RESERVED_IP}"
hostname = "node1"
"#,
                subnet_extra = self.subnet_extra
            )
        };
        let text = format!(
            r#"
data_dir = "{data}"
server_ip = "{SERVER_IP}"
[http]
listen = "{SERVER_IP}:8080"
[tftp]
listen = "{SERVER_IP}:69"
ipxe_dir = "{ipxe}"
{dhcp}"#,
            data = self.dir.join("data").display(),
            ipxe = ipxe_dir.display(),
        ) + &self.extra_config;
        let text = self
            .rt
            .block_on(crate::common::on_test_store(&text, &self.dir));
        let path = self.dir.join("ironboot.toml");
        fs::write(&path, text).unwrap();
        path
    }

    pub fn server_log(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// Starts `ironboot serve` in the server namespace and waits for
    /// `/healthz`; opens the database read-only.
    pub fn start_server(&mut self, ipxe_dir: &Path) -> Duration {
        let started = Instant::now();
        let config = self.config(ipxe_dir);
        let proc = self.spawn(
            "ironboot",
            &self.ns.clone(),
            400,
            &[
                self.bin.to_str().unwrap(),
                "serve",
                "--config",
                config.to_str().unwrap(),
            ],
            &self.server_log(),
        );
        self.server = Some(proc);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.server.as_mut().unwrap().exited() {
                panic!(
                    "ironboot exited at start ({status})\n{}",
                    tail(&self.server_log(), 40)
                );
            }
            if let Some(body) = self.http("/healthz") {
                if body.contains("\"ok\"") {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "/healthz did not answer within 20 s\n{}",
                tail(&self.server_log(), 40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let pool = self.rt.block_on(crate::common::TestServer::db(&self.dir));
        self.db = Some(pool);
        started.elapsed()
    }

    /// Stops `ironboot serve` with SIGTERM (after closing the read-only
    /// database) and asserts it exited 0 within 15 s.
    pub fn stop_server_cleanly(&mut self) {
        if let Some(pool) = self.db.take() {
            self.rt.block_on(pool.close());
        }
        let server = self.server.as_mut().expect("server started");
        let status = server.stop(Duration::from_secs(15));
        assert!(
            matches!(status, Some(s) if s.success()),
            "ironboot did not stop cleanly on SIGTERM ({status:?})\n{}",
            tail(&self.server_log(), 30)
        );
        self.server = None;
    }

    /// GET from inside the server namespace with busybox wget (bounded by
    /// `timeout`: busybox 1.35's `wget -T` segfaults).
    pub fn http(&self, path: &str) -> Option<String> {
        let bb = self.tools.busybox.to_str().unwrap();
        let url = format!("http://{SERVER_IP}:8080{path}");
        let (ok, text) = self.exec(&self.ns, 5, &[bb, "wget", "-q", "-O", "-", &url]);
        ok.then_some(text)
    }

    pub fn metrics(&self) -> String {
        self.http("/metrics").expect("GET /metrics")
    }

    /// Rows of a query, each column as text (NULL as `None`).
    pub fn query(&self, sql: &str, args: &[&str]) -> Vec<Vec<Option<String>>> {
        let pool = self.db.as_ref().expect("server started");
        self.rt.block_on(async {
            let mut q = sqlx::query(sql);
            for a in args {
                q = q.bind(a.to_string());
            }
            let rows = q
                .fetch_all(pool)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            rows.iter()
                .map(|r| {
                    (0..r.len())
                        .map(|i| {
                            r.try_get::<Option<String>, _>(i)
                                .or_else(|_| {
                                    r.try_get::<Option<i64>, _>(i)
                                        .map(|v| v.map(|n| n.to_string()))
                                })
                                .unwrap_or(None)
                        })
                        .collect()
                })
                .collect()
        })
    }

    /// Polls a query until `ok` holds for its rows (the ledger writer
    /// commits in batches of a few tens of milliseconds).
    pub fn wait_rows(
        &self,
        what: &str,
        sql: &str,
        args: &[&str],
        ok: impl Fn(&[Vec<Option<String>>]) -> bool,
    ) -> Vec<Vec<Option<String>>> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let rows = self.query(sql, args);
            if ok(&rows) {
                return rows;
            }
            if Instant::now() > deadline {
                panic!("{what}: database never showed it; {sql} {args:?} gave {rows:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A VM that network-boots from `tap`: OVMF's own PXE when `uefi`
    /// (256 MiB), else SeaBIOS with QEMU's iPXE ROM (128 MiB).
    pub fn start_vm(&self, name: &str, tap: &str, mac: &str, uefi: bool) -> Vm {
        let (firmware, memory_mb) = match uefi {
            true => (Firmware::UefiPxe, 256),
            false => (Firmware::BiosIpxeRom, 128),
        };
        self.start_vm_with(name, tap, mac, firmware, memory_mb)
    }

    /// A VM with a virtio-net NIC on `tap` that network-boots through
    /// `firmware`, under TCG, its serial console in `DIR/NAME.serial.log`;
    /// QEMU exits when the guest powers off (`-no-reboot`) and is bounded by
    /// `timeout` (240 s).
    pub fn start_vm_with(
        &self,
        name: &str,
        tap: &str,
        mac: &str,
        firmware: Firmware,
        memory_mb: u32,
    ) -> Vm {
        self.start_vm_rebooting(name, tap, mac, firmware, memory_mb, OnReboot::Exit)
    }

    /// [`Lab::start_vm_with`], with the guest's reboots handled as `reboot`
    /// says.
    pub fn start_vm_rebooting(
        &self,
        name: &str,
        tap: &str,
        mac: &str,
        firmware: Firmware,
        memory_mb: u32,
        reboot: OnReboot,
    ) -> Vm {
        let memory = memory_mb.to_string();
        let serial = self.dir.join(format!("{name}.serial.log"));
        let _ = fs::write(&serial, b"");
        let netdev = format!("tap,id=n0,ifname={tap},script=no,downscript=no");
        let serial_arg = format!("file:{}", serial.display());
        let mut args: Vec<String> = vec![self.tools.qemu.to_str().unwrap().into()];
        let common = [
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            &serial_arg,
            "-boot",
            "order=n,reboot-timeout=1000",
            "-netdev",
            &netdev,
        ];
        let (machine, bios, nic) = match firmware {
            Firmware::BiosIpxeRom => ("pc", None, format!("virtio-net-pci,netdev=n0,mac={mac}")),
            Firmware::UefiIpxeRom => (
                "q35",
                Some(OVMF),
                format!("virtio-net-pci,netdev=n0,mac={mac},romfile={EFI_VIRTIO_ROM}"),
            ),
            Firmware::UefiPxe | Firmware::UefiHttp | Firmware::UefiIpv6 => (
                "q35",
                Some(OVMF),
                format!("virtio-net-pci,netdev=n0,mac={mac},romfile="),
            ),
        };
        args.extend([
            "-machine".into(),
            format!("{machine},accel=tcg,graphics=off"),
        ]);
        if let Some(bios) = bios {
            args.extend(["-bios".into(), bios.into()]);
        }
        args.extend(["-m".into(), memory, "-device".into(), nic]);
        if firmware == Firmware::UefiIpv6 {
            args.extend([
                "-fw_cfg".into(),
                "name=opt/org.tianocore/IPv4Support,string=n".into(),
            ]);
        }
        if firmware == Firmware::UefiHttp {
            for stack in ["IPv4PXESupport", "IPv6PXESupport"] {
                args.extend([
                    "-fw_cfg".into(),
                    format!("name=opt/org.tianocore/{stack},string=n"),
                ]);
            }
        }
        args.extend(common.map(String::from));
        if reboot == OnReboot::Exit {
            args.push("-no-reboot".into());
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.spawn_vm(name, &refs, serial)
    }

    /// Starts a QEMU command line (`args`, QEMU first) in the server
    /// namespace, bounded by `timeout` (240 s), its output in
    /// `DIR/NAME.qemu.log`; `serial` is where its console goes.
    pub fn spawn_vm(&self, name: &str, args: &[&str], serial: PathBuf) -> Vm {
        let proc = self.spawn(
            name,
            self.vm_ns.as_deref().unwrap_or(&self.ns),
            240,
            args,
            &self.dir.join(format!("{name}.qemu.log")),
        );
        Vm {
            name: name.to_string(),
            serial,
            started: Instant::now(),
            proc,
        }
    }

    /// busybox udhcpc from the client namespace with `mac` on the veth:
    /// the leased address, or `None` (with udhcpc's output) when none came.
    pub fn udhcpc(&self, mac: &str) -> Result<String, String> {
        self.udhcpc_with(mac, &[])
    }

    /// [`Lab::udhcpc`] with more of udhcpc's arguments (`-V CLASS`, …).
    pub fn udhcpc_with(&self, mac: &str, extra: &[&str]) -> Result<String, String> {
        self.ip(&["-n", &self.cns, "link", "set", "vcl", "down"]);
        self.ip(&["-n", &self.cns, "link", "set", "vcl", "address", mac]);
        self.ip(&["-n", &self.cns, "link", "set", "vcl", "up"]);
        let script = self.dir.join("udhcpc.sh");
        if !script.exists() {
            fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
            let mut perm = fs::metadata(&script).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
            fs::set_permissions(&script, perm).unwrap();
        }
        let bb = self.tools.busybox.to_str().unwrap();
        // -q: quit once bound (no RELEASE: -R is not given); -n: fail after
        // 3 DISCOVERs, one second apart.
        let mut args = vec![
            bb, "udhcpc", "-i", "vcl", "-f", "-q", "-n", "-t", "3", "-T", "1",
        ];
        args.extend_from_slice(extra);
        args.extend(["-s", script.to_str().unwrap()]);
        let (ok, text) = self.exec(&self.cns, 20, &args);
        let leased = text.lines().find_map(|l| {
            let rest = l.split("lease of ").nth(1)?;
            rest.split_whitespace().next().map(str::to_string)
        });
        match (ok, leased) {
            (true, Some(ip)) => Ok(ip),
            _ => Err(text),
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(pool) = self.db.take() {
            self.rt.block_on(pool.close());
        }
        if let Some(mut server) = self.server.take() {
            server.stop(Duration::from_secs(15));
        }
        let ip = self.tools.ip.clone();
        for ns in self.namespaces.drain(..).rev() {
            let ok = Command::new(&ip)
                .args(["netns", "del", &ns])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok {
                eprintln!("warning: ip netns del {ns} failed");
            }
        }
        // Kept on failure, or always with IRONBOOT_E2E_KEEP=1 (to read the
        // serial consoles of a passing run).
        if std::thread::panicking() || std::env::var_os("IRONBOOT_E2E_KEEP").is_some() {
            if let Some(tmp) = self.tmp.take() {
                let kept = tmp.keep();
                eprintln!("e2e: kept logs and database in {}", kept.display());
            }
        }
    }
}

/// A QEMU guest and its serial log.
pub struct Vm {
    pub name: String,
    pub serial: PathBuf,
    pub started: Instant,
    pub proc: Proc,
}

impl Vm {
    pub fn text(&self) -> String {
        read_clean(&self.serial)
    }

    /// Waits until every marker has appeared in the serial log; returns when
    /// each was first seen (since the VM started). Fails on the deadline or
    /// when QEMU exits first, with the log's tail.
    pub fn wait_markers(&mut self, markers: &[&str], limit: Duration) -> Vec<Duration> {
        let mut seen: Vec<Option<Duration>> = vec![None; markers.len()];
        let deadline = self.started + limit;
        loop {
            let text = self.text();
            let now = self.started.elapsed();
            for (m, s) in markers.iter().zip(seen.iter_mut()) {
                if s.is_none() && text.contains(m) {
                    *s = Some(now);
                }
            }
            if seen.iter().all(Option::is_some) {
                return seen.into_iter().map(Option::unwrap).collect();
            }
            let exited = self.proc.exited();
            if exited.is_some() || Instant::now() > deadline {
                // One last look: QEMU may have flushed the line as it exited.
                let text = self.text();
                if markers.iter().all(|m| text.contains(m)) {
                    let now = self.started.elapsed();
                    return seen.into_iter().map(|s| s.unwrap_or(now)).collect();
                }
                let missing: Vec<&&str> = markers
                    .iter()
                    .zip(&seen)
                    .filter(|(_, s)| s.is_none())
                    .map(|(m, _)| m)
                    .collect();
                panic!(
                    "{}: {} after {} without {missing:?}\n{}",
                    self.name,
                    match exited {
                        Some(status) => format!("QEMU exited ({status})"),
                        None => "deadline".to_string(),
                    },
                    secs(self.started.elapsed()),
                    tail(&self.serial, 30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits up to `limit` for QEMU to exit by itself (the guest powered
    /// off under `-no-reboot`); `None` if it is still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.proc.exited() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(mut self) {
        self.proc.stop(Duration::from_secs(10));
    }
}

/// The `ipxe_dir` the server gets: Debian's `/usr/lib/ipxe` as installed,
/// where `ipxe.efi` is a symlink to `/boot/ipxe.efi` (ironboot serves its
/// configured boot files by name; see `src/bootfiles.rs`).
pub fn ipxe_dir() -> PathBuf {
    PathBuf::from(IPXE_DIR)
}

// ---------------------------------------------------------------------------
// The IPv6-only lab: br0 with fd00:77::1/64 and no IPv4, IPv4/ARP dropped
// ---------------------------------------------------------------------------

/// The server's address on br0 in an IPv6-only lab ([`Lab::new_ipv6_only`]).
pub const SERVER_IP6: &str = "fd00:77::1";
/// The IPv6-only lab's on-link prefix.
pub const PREFIX6: &str = "fd00:77::/64";
/// First and last address of the IPv6-only lab's DHCPv6 pool.
pub const POOL6_START: &str = "fd00:77::1000";
pub const POOL6_END: &str = "fd00:77::1fff";

/// Whether `ip` is an address of the IPv6-only lab's pool
/// ([`POOL6_START`]..=[`POOL6_END`]).
pub fn in_pool6(ip: &str) -> bool {
    let Ok(ip) = ip.parse::<std::net::Ipv6Addr>() else {
        return false;
    };
    let n = u128::from(ip);
    let lo = u128::from(POOL6_START.parse::<std::net::Ipv6Addr>().unwrap());
    let hi = u128::from(POOL6_END.parse::<std::net::Ipv6Addr>().unwrap());
    (lo..=hi).contains(&n)
}

/// What an IPv6-only lab needs beyond [`requirements`]: `ebtables` (to drop
/// IPv4 and ARP in the bridge; the nf_tables one works inside a namespace)
/// and `tcpdump` (for [`Lab::capture`]). Returns their paths.
pub fn ipv6_requirements() -> Result<(PathBuf, PathBuf), String> {
    let ebtables = which("ebtables").ok_or("ebtables not found (package ebtables or iptables)")?;
    let tcpdump = which("tcpdump").ok_or("tcpdump not found (package tcpdump)")?;
    Ok((ebtables, tcpdump))
}

impl Lab {
    /// A lab like [`Lab::new`] (server namespace with br0, `taps` taps and
    /// the veth to the client namespace), but IPv6-only: br0 has
    /// [`SERVER_IP6`]/64 (no DAD) and no IPv4 address, and the server
    /// namespace's bridge filter drops every IPv4 and ARP frame (ebtables
    /// FORWARD, INPUT and OUTPUT), so a guest's DHCPv4 never reaches
    /// anything. Panics if ebtables is missing or refuses the rules: check
    /// [`ipv6_requirements`] first.
    pub fn new_ipv6_only(tools: Tools, tag: &str, taps: usize, turn: Turn) -> Lab {
        let mut lab = Lab::unwired(tools, tag, turn);
        lab.ipv6 = true;
        lab.network6(taps);
        lab
    }

    /// [`Lab::network`] for the IPv6-only lab (see [`Lab::new_ipv6_only`]).
    pub fn network6(&mut self, taps: usize) {
        let (ns, cns) = self.namespaces_up();
        // No multicast snooping: with it the bridge joins the all-snoopers
        // groups (RFC 4286), and br0 sends an IGMPv3 report for 224.0.0.106
        // from 0.0.0.0, the one IPv4 frame such a lab would otherwise emit.
        // Multicast (ff02::1:2, RAs) is flooded to every port instead.
        self.ip(&[
            "-n",
            &ns,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
            "mcast_snooping",
            "0",
        ]);
        // Rules first: not one IPv4 or ARP frame crosses br0, even while
        // the links come up.
        let (ebtables, _) = ipv6_requirements().unwrap_or_else(|e| panic!("{e}"));
        let eb = ebtables.to_str().unwrap();
        for chain in ["FORWARD", "INPUT", "OUTPUT"] {
            for proto in ["IPv4", "ARP"] {
                let (ok, text) = self.exec(&ns, 10, &[eb, "-A", chain, "-p", proto, "-j", "DROP"]);
                assert!(ok, "ebtables -A {chain} -p {proto} -j DROP in {ns}: {text}");
            }
        }
        let bb = self.tools.busybox.to_str().unwrap().to_string();
        let _ = self.exec(
            &ns,
            5,
            &[&bb, "sysctl", "-w", "net.ipv6.conf.br0.accept_dad=0"],
        );
        let addr = format!("{SERVER_IP6}/64");
        self.ip(&["-n", &ns, "addr", "add", &addr, "dev", "br0", "nodad"]);
        // The lab's own IPv4 (the CLI, the API, /healthz, from inside the
        // namespace) lives on lo: nothing IPv4 is on the bridge.
        self.ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{SERVER_IP}/32"),
            "dev",
            "lo",
        ]);
        self.ip(&[
            "-n", &ns, "link", "add", "vbr", "type", "veth", "peer", "name", "vcl", "netns", &cns,
        ]);
        self.ip(&["-n", &ns, "link", "set", "vbr", "master", "br0"]);
        self.ip(&["-n", &ns, "link", "set", "vbr", "up"]);
        self.ip(&[
            "-n",
            &cns,
            "link",
            "set",
            "vcl",
            "address",
            "02:00:00:e2:e0:01",
        ]);
        let _ = self.exec(
            &cns,
            5,
            &[&bb, "sysctl", "-w", "net.ipv6.conf.vcl.accept_dad=0"],
        );
        self.ip(&["-n", &cns, "link", "set", "vcl", "up"]);
        self.ip(&["-n", &ns, "link", "set", "br0", "up"]);
        for i in 0..taps {
            let tap = format!("tap{i}");
            self.ip(&["-n", &ns, "tuntap", "add", "dev", &tap, "mode", "tap"]);
            self.ip(&["-n", &ns, "link", "set", &tap, "master", "br0"]);
            self.ip(&["-n", &ns, "link", "set", &tap, "up"]);
        }
    }

    /// Starts tcpdump in the server namespace on `iface` (e.g. `br0`, or a
    /// tap to see a guest's frames before the bridge filter drops them),
    /// every frame unfiltered, written to `file` as it arrives (`-U`), and
    /// waits (up to 5 s) until it is listening. Dropping (or stopping) the
    /// returned process ends the capture; the file is a classic pcap for
    /// [`ipv4_frames`].
    ///
    /// Where the IPv6-only lab's ebtables rules act: on `br0` tcpdump sees
    /// what the server namespace sends (packet sockets see a frame before
    /// the bridge's OUTPUT chain drops it), but not a guest's IPv4/ARP
    /// frames (dropped in INPUT before they reach br0); on a tap it sees
    /// everything the guest sends.
    pub fn capture(&self, iface: &str, file: &Path) -> Proc {
        let (_, tcpdump) = ipv6_requirements().unwrap_or_else(|e| panic!("{e}"));
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "capture".into());
        let log = self.dir.join(format!("{name}.tcpdump.log"));
        let mut proc = self.spawn(
            &format!("tcpdump {iface}"),
            &self.ns,
            400,
            &[
                tcpdump.to_str().unwrap(),
                "-i",
                iface,
                "-U",
                "-n",
                // Stay root: the lab's temp dir is 0700.
                "-Z",
                "root",
                "-w",
                file.to_str().unwrap(),
            ],
            &log,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("listening on")
            {
                break;
            }
            if let Some(status) = proc.exited() {
                panic!(
                    "tcpdump on {iface} exited at start ({status}): {}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "tcpdump on {iface} not listening after 5 s: {}",
                fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        proc
    }
}

/// The frames of a classic pcap file (Ethernet link type), each as
/// captured. Panics on anything else (pcapng, another link type).
pub fn pcap_frames(pcap: &Path) -> Vec<Vec<u8>> {
    let data = fs::read(pcap).unwrap_or_else(|e| panic!("read {}: {e}", pcap.display()));
    if data.len() < 24 {
        // tcpdump stopped before writing its header: nothing captured.
        return Vec::new();
    }
    let u32_at = |b: &[u8], le: bool| {
        let a = [b[0], b[1], b[2], b[3]];
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let le = match data[..4] {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => panic!("{}: not a classic pcap file", pcap.display()),
    };
    let linktype = u32_at(&data[20..24], le);
    assert_eq!(
        linktype,
        1,
        "{}: link type {linktype}, not Ethernet",
        pcap.display()
    );
    let mut frames = Vec::new();
    let mut off = 24;
    while off + 16 <= data.len() {
        let incl = u32_at(&data[off + 8..off + 12], le) as usize;
        off += 16;
        // The last record may be cut short if tcpdump was killed mid-write.
        let end = (off + incl).min(data.len());
        frames.push(data[off..end].to_vec());
        off = end;
    }
    frames
}

/// A frame's ethertype, past any 802.1Q tags.
pub fn ethertype(frame: &[u8]) -> Option<u16> {
    let mut p = 12;
    loop {
        let t = u16::from_be_bytes([*frame.get(p)?, *frame.get(p + 1)?]);
        if t != 0x8100 && t != 0x88a8 {
            return Some(t);
        }
        p += 4;
    }
}

/// How many frames of a pcap carry IPv4 (ethertype 0x0800) or ARP (0x0806).
pub fn ipv4_frames(pcap: &Path) -> usize {
    pcap_frames(pcap)
        .iter()
        .filter(|f| matches!(ethertype(f), Some(0x0800 | 0x0806)))
        .count()
}

/// The pcap reader on the recorded fixtures (no root, no network): the
/// DHCPv4 captures are all IPv4, the DHCPv6 ones (IPv6-only bridge) none.
#[test]
fn pcap_reader_counts_ipv4_frames() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let v4 = fixtures.join("pcap/ovmf-pxe.pcap");
    let frames = pcap_frames(&v4).len();
    assert!(frames > 0, "{}: no frames", v4.display());
    assert_eq!(ipv4_frames(&v4), frames);
    let v6 = fixtures.join("dhcp6/pcap/ovmf-pxe6.pcap");
    let frames = pcap_frames(&v6);
    assert!(!frames.is_empty(), "{}: no frames", v6.display());
    assert!(frames.iter().all(|f| ethertype(f) == Some(0x86dd)));
    assert_eq!(ipv4_frames(&v6), 0);
    assert!(in_pool6("fd00:77::1000") && in_pool6("fd00:77::1fff"));
    assert!(!in_pool6(SERVER_IP6) && !in_pool6("fd00:77::2000") && !in_pool6("10.77.0.100"));
}

/// The IPv6-only lab really carries no IPv4: a BIOS iPXE guest's DHCPv4
/// DISCOVERs are on its tap but never reach br0. (No ironboot server: only
/// the lab itself is under test.)
#[test]
fn ipv6_only_lab_drops_ipv4() {
    let test = "ipv6_only_lab_drops_ipv4";
    let turn = Turn::wait(test);
    let Some(tools) = tools_or_skip(test) else {
        return;
    };
    if let Err(reason) = ipv6_requirements() {
        skip(test, &reason);
        return;
    }
    let lab = Lab::new_ipv6_only(tools, "v6lab", 1, turn);
    let (tap_pcap, br_pcap) = (lab.dir.join("tap0.pcap"), lab.dir.join("br0.pcap"));
    let mut on_tap = lab.capture("tap0", &tap_pcap);
    let mut on_br = lab.capture("br0", &br_pcap);
    let mut vm = lab.start_vm_with(
        "v6bios",
        "tap0",
        "52:54:00:77:01:01",
        Firmware::BiosIpxeRom,
        128,
    );
    // iPXE sends its first DISCOVER about 2 s after QEMU starts (TCG).
    let deadline = Instant::now() + Duration::from_secs(60);
    while ipv4_frames(&tap_pcap) < 2 && Instant::now() < deadline && vm.proc.exited().is_none() {
        std::thread::sleep(Duration::from_millis(250));
    }
    std::thread::sleep(Duration::from_secs(1));
    vm.proc.stop(Duration::from_secs(5));
    on_tap.stop(Duration::from_secs(5));
    on_br.stop(Duration::from_secs(5));
    let (tap4, br4) = (ipv4_frames(&tap_pcap), ipv4_frames(&br_pcap));
    let br_all = pcap_frames(&br_pcap).len();
    eprintln!("{test}: tap0 {tap4} IPv4/ARP frames; br0 {br4} of {br_all} frames");
    assert!(
        tap4 > 0,
        "the guest sent no IPv4 on tap0\n{}",
        tail(&vm.serial, 20)
    );
    assert_eq!(
        br4,
        0,
        "IPv4/ARP frames reached br0 ({})",
        br_pcap.display()
    );
    assert!(
        br_all > 0,
        "nothing at all on br0 (IPv6 from the guest expected)"
    );
}
