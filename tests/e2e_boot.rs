//! End-to-end live boot: real QEMU VMs network-boot an image generation from
//! `ironboot serve` (full DHCP mode on the lab bridge) into RAM, fetch their
//! NoCloud seed and phone home.
//!
//! - (a) BIOS, QEMU's iPXE ROM (`pc`, 256 MiB): boots generation 1 of stream
//!   `live` to phone-home, with its reserved address;
//! - (b) UEFI, OVMF with QEMU's iPXE EFI ROM (`q35`, 512 MiB): the same, and
//!   OVMF's own PXE is never used;
//! - (c) UEFI, OVMF's own PXE (`romfile=` empty): `ipxe.efi` over TFTP from
//!   `/usr/lib/ipxe` as installed, then HTTP, then the live OS;
//! - (e) UEFI HTTP boot, OVMF with its PXE turned off (`romfile=` empty,
//!   fw_cfg `IPv4PXESupport`/`IPv6PXESupport` = `n`, 512 MiB): DHCP with opt
//!   60 `HTTPClient`, `ipxe.efi` from the `/ipxe/` URL in the offer, then the
//!   script, then the live OS;
//! - (d) generation 2 (same kernel and initrd, another command line) is
//!   imported and the group pointed at it; (a)'s machine boots again and
//!   confirms generation 2, generation 1 is still there for a rollback, and
//!   the machine's history holds both confirmed boots.
//!
//! (a), (b), (c) and (e) boot at once (four TCG guests on two cores), (d)
//! after them. Each case asserts from the guest's serial console (iPXE's
//! echo of the per-machine script, the kernel's command line, the live OS's
//! `IRONBOOT-LIVEOS:` lines) and from the REST API, never from ironboot's
//! own log ((e) also reads the server's `dhcp.offer` events).
//!
//! The live OS is `tests/liveos/build.sh` (root and apt: it runs
//! `apt-get download` once, then its result is cached in `tests/.cache`).
//! The lab (namespaces, bridge, taps, processes stopped by PID) is
//! `tests/lab`, shared with `tests/e2e.rs`. Missing requirements skip the
//! test with the reason, unless `IRONBOOT_E2E=require`, where they (and a
//! failed live OS build) fail it. Run with
//! `IRONBOOT_E2E=require cargo test --test e2e_boot -- --nocapture`.

mod lab;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use lab::*;

const TEST: &str = "live_boot_real_vms_to_phone_home_and_roll_forward";
const BASE: &str = "http://10.77.0.1:8080";
const STREAM: &str = "live";
const GEN1_CMDLINE: &str = "console=ttyS0,115200n8";
/// Same kernel and initrd, another command line: a new image digest.
const GEN2_CMDLINE: &str = "console=ttyS0,115200n8 ironboot.test=gen2";
const UEFI_ROM_MAC: &str = "52:54:00:00:b0:02";
const UEFI_PXE_MAC: &str = "52:54:00:00:b0:03";
const UEFI_HTTP_MAC: &str = "52:54:00:00:b0:04";
/// What ironboot offers a UEFI HTTP boot client (README: `/ipxe/<binary>`).
const IPXE_EFI_URL: &str = "http://10.77.0.1:8080/ipxe/ipxe.efi";
/// From VM start to the live OS's `done`, with four TCG guests at once.
const BOOT_LIMIT: Duration = Duration::from_secs(150);
const BIOS_MB: u32 = 256;
const UEFI_MB: u32 = 512;

/// The live OS's console prefix.
fn live(line: &str) -> String {
    format!("IRONBOOT-LIVEOS: {line}")
}

// ---------------------------------------------------------------------------
// Requirements beyond the lab's: curl for the API, the live OS build
// ---------------------------------------------------------------------------

fn extra_requirements() -> Result<PathBuf, String> {
    for (name, package) in [
        ("apt-get", "apt"),
        ("dpkg-deb", "dpkg"),
        ("flock", "util-linux"),
    ] {
        which(name).ok_or_else(|| {
            format!("{name} not found (package {package}; the live OS build needs it)")
        })?;
    }
    which("curl").ok_or_else(|| "curl not found (package curl)".to_string())
}

struct LiveOs {
    kernel: PathBuf,
    initrd: PathBuf,
}

/// `tests/liveos/build.sh` into `tests/.cache/liveos` (a no-op when cached),
/// bounded by `timeout`.
fn build_liveos(timeout: &Path) -> Result<LiveOs, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = root.join("tests/.cache/liveos");
    let result = Command::new(timeout)
        .args(["-k", "5", "300"])
        .arg(root.join("tests/liveos/build.sh"))
        .arg(&out)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run tests/liveos/build.sh: {e}"))?;
    let log = String::from_utf8_lossy(&result.stderr).into_owned();
    if !result.status.success() {
        return Err(format!(
            "tests/liveos/build.sh failed ({}):\n{log}",
            result.status
        ));
    }
    eprintln!("e2e-boot: {}", log.trim_end().replace('\n', "\ne2e-boot: "));
    let os = LiveOs {
        kernel: out.join("vmlinuz"),
        initrd: out.join("initrd.img"),
    };
    for f in [&os.kernel, &os.initrd] {
        if !f.is_file() {
            return Err(format!("build.sh succeeded but {} is missing", f.display()));
        }
    }
    Ok(os)
}

// ---------------------------------------------------------------------------
// The operator's side: the CLI and the API, inside the server namespace
// ---------------------------------------------------------------------------

/// `ironboot ARGS --server BASE --data-dir DIR/data` in the server namespace
/// (10.77.0.1 exists only there); its stdout, or a panic with stderr.
fn cli(lab: &Lab, args: &[&str]) -> String {
    let data = lab.dir.join("data");
    let mut all = vec![lab.bin.to_str().unwrap()];
    all.extend_from_slice(args);
    all.extend(["--server", BASE, "--data-dir", data.to_str().unwrap()]);
    let out = lab.exec_output(&lab.ns, 60, &all);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "ironboot {} failed ({}):\n{stdout}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `generation N sha256:…` from `ironboot image import`: (N, digest).
fn import(lab: &Lab, os: &LiveOs, cmdline: &str) -> (i64, String) {
    let out = cli(
        lab,
        &[
            "image",
            "import",
            "--stream",
            STREAM,
            "--kernel",
            os.kernel.to_str().unwrap(),
            "--initrd",
            os.initrd.to_str().unwrap(),
            "--cmdline",
            cmdline,
        ],
    );
    let mut words = out.split_whitespace();
    let parsed = match (words.next(), words.next(), words.next()) {
        (Some("generation"), Some(n), Some(digest)) => n.parse().ok().map(|n| (n, digest.into())),
        _ => None,
    };
    parsed.unwrap_or_else(|| panic!("image import printed {out:?}"))
}

/// The REST API through curl in the server namespace, with the admin token.
struct Api<'a> {
    lab: &'a Lab,
    curl: PathBuf,
    token: String,
}

impl<'a> Api<'a> {
    fn new(lab: &'a Lab, curl: PathBuf) -> Self {
        let path = lab.dir.join("data/admin.token");
        let token = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (written at first start)", path.display()));
        Api {
            lab,
            curl,
            token: token.trim().to_string(),
        }
    }

    /// GET `path`: (status, body as JSON, or the text in a JSON string).
    fn get(&self, path: &str) -> (u16, Value) {
        let auth = format!("Authorization: Bearer {}", self.token);
        let url = format!("{BASE}{path}");
        let out = self.lab.exec_output(
            &self.lab.ns,
            15,
            &[
                self.curl.to_str().unwrap(),
                "-sS",
                "--max-time",
                "10",
                "-H",
                &auth,
                "-w",
                "\n%{http_code}",
                &url,
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
        let status = status.trim().parse().unwrap_or_else(|_| {
            panic!("curl {url}: {text}{}", String::from_utf8_lossy(&out.stderr))
        });
        let body = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.into()));
        (status, body)
    }

    fn ok(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// Polls `GET /api/v1/machines/{mac}` (up to 10 s) until `ready` holds.
    fn machine_when(&self, mac: &str, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, m) = self.get(&format!("/api/v1/machines/{mac}"));
            if status == 200 && ready(&m) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "{mac}: {what} never showed in the API (status {status}):\n{m:#}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn gen_ref(generation: i64) -> Value {
    json!({ "stream": STREAM, "generation": generation })
}

fn steps(boot: &Value) -> Vec<&str> {
    boot["steps"]
        .as_array()
        .map(|s| s.iter().filter_map(|s| s["step"].as_str()).collect())
        .unwrap_or_default()
}

/// The API's view once `mac` confirmed `generation`: it is current and last
/// good, and the newest boot is that generation's, confirmed, with every step
/// from script to confirmation. Returns the machine.
fn assert_confirmed(api: &Api, mac: &str, generation: i64, arch: &str) -> Value {
    let m = api.machine_when(mac, &format!("current = {STREAM} gen {generation}"), |m| {
        m["current"] == gen_ref(generation)
            && steps(&m["recent_boots"][0]).contains(&"boot.confirm")
    });
    assert_eq!(m["last_good"], gen_ref(generation), "{m:#}");
    assert_eq!(m["arch"], arch, "{m:#}");
    let boot = &m["recent_boots"][0];
    assert_eq!(boot["state"], "confirmed", "{boot:#}");
    assert_eq!(boot["stream"], STREAM, "{boot:#}");
    assert_eq!(boot["generation"], generation, "{boot:#}");
    let steps = steps(boot);
    for step in [
        "boot.script",
        "boot.artifact",
        "boot.config",
        "boot.confirm",
    ] {
        assert!(steps.contains(&step), "{mac}: no {step} in {steps:?}");
    }
    m
}

// ---------------------------------------------------------------------------
// The guest's side: its serial console
// ---------------------------------------------------------------------------

/// The lines between `IRONBOOT-LIVEOS: BEGIN name` and `… END name`.
fn section<'s>(serial: &'s str, name: &str) -> Option<&'s str> {
    let begin = live(&format!("BEGIN {name}\n"));
    let start = serial.find(&begin)? + begin.len();
    let len = serial[start..].find(&live(&format!("END {name}")))?;
    Some(&serial[start..start + len])
}

/// The kernel's `Command line: …` line.
fn kernel_cmdline(serial: &str) -> Option<&str> {
    serial
        .lines()
        .find_map(|l| l.split_once("Command line: ").map(|(_, c)| c.trim()))
}

/// What one boot to phone-home took, from the VM's start.
struct Booted {
    script: Duration,
    init: Duration,
    phone_home: Duration,
    exited: Duration,
    serial: String,
}

/// Waits for `vm` to boot `generation` (iPXE echoes the per-machine script,
/// the kernel runs with the generation's command line and the NoCloud seed,
/// the live OS prints the seed and phones home), then for QEMU to exit as the
/// guest powers off.
fn wait_booted(vm: &mut Vm, mac: &str, generation: i64, cmdline: &str) -> Booted {
    let echo = format!("ironboot: {mac} -> {STREAM} gen {generation} (boot ");
    let at = vm.wait_markers(
        &[
            &echo,
            "Command line: ",
            &live("init started"),
            &live("BEGIN meta-data"),
            &live("BEGIN user-data"),
            &live("phone_home ok"),
            &live("done"),
        ],
        BOOT_LIMIT,
    );
    let status = vm.wait_exit(Duration::from_secs(20));
    let exited = vm.started.elapsed();
    let serial = vm.text();
    let last = || tail(&vm.serial, 30);
    assert!(
        matches!(status, Some(s) if s.success()),
        "{}: QEMU did not exit cleanly after the guest's poweroff ({status:?})\n{}",
        vm.name,
        last()
    );
    let cmd = kernel_cmdline(&serial).unwrap_or_default();
    assert!(
        // UEFI's Linux stub sees iPXE's image name first (`vmlinuz …`).
        cmd.contains(&format!("{cmdline} ds=nocloud-net;s={BASE}/config/")),
        "{}: kernel command line {cmd:?}",
        vm.name
    );
    assert!(
        serial.contains(&live(&format!("eth0 mac {mac}"))),
        "{}\n{}",
        vm.name,
        last()
    );
    assert!(
        serial.contains(&live(&format!("seed {BASE}/config/"))),
        "{}: seed\n{}",
        vm.name,
        last()
    );
    let meta = section(&serial, "meta-data").unwrap_or_default();
    assert!(
        meta.contains("instance-id: "),
        "{}: meta-data {meta:?}",
        vm.name
    );
    let user = section(&serial, "user-data").unwrap_or_default();
    assert!(
        user.starts_with("#cloud-config")
            && user.contains(&format!(
                "Rendered by ironboot for {mac}: {STREAM} generation {generation}."
            ))
            && user.contains(&format!("url: {BASE}/phone-home/")),
        "{}: user-data {user:?}",
        vm.name
    );
    assert!(
        serial.contains(&live(&format!("phone_home POST {BASE}/phone-home/"))),
        "{}\n{}",
        vm.name,
        last()
    );
    assert!(
        !serial.contains(&live("phone_home try")),
        "{}: phone_home needed retries\n{}",
        vm.name,
        last()
    );
    Booted {
        script: at[0],
        init: at[2],
        phone_home: at[5],
        exited,
        serial,
    }
}

/// (e): OVMF's HTTP boot (not its PXE) fetched `ipxe.efi` from the URL
/// ironboot offered, and that iPXE (on the firmware's SNP) asked for the
/// script; the offer is in the server's events, the boot in the API.
fn assert_uefi_http(lab: &Lab, api: &Api, e: &Booted, vm: &Vm) {
    let at = |needle: &str| e.serial.find(needle);
    let order = [
        at("Start HTTP Boot"),
        at(IPXE_EFI_URL),
        at(&format!("net0: {UEFI_HTTP_MAC} using SNP")),
        at(&format!("Filename: {BOOT_URL}")),
    ];
    assert!(
        order.iter().all(Option::is_some) && order.windows(2).all(|w| w[0] < w[1]),
        "(e) OVMF's HTTP boot loads {IPXE_EFI_URL}, whose iPXE then asks for the script \
         ({order:?})\n{}",
        tail(&vm.serial, 40)
    );
    assert!(
        !e.serial.contains("NBP filename") && !e.serial.contains("Start PXE"),
        "(e) OVMF's PXE should be off\n{}",
        tail(&vm.serial, 40)
    );
    // The firmware's DISCOVER got the ipxe.efi URL; iPXE's own, the script.
    let offers = lab.wait_rows(
        "(e) dhcp.offer with the ipxe.efi URL",
        "SELECT detail FROM events WHERE mac = ? AND step = 'dhcp.offer' ORDER BY id",
        &[UEFI_HTTP_MAC],
        |rows| !rows.is_empty(),
    );
    let bootfiles: Vec<Value> = offers
        .iter()
        .map(|r| {
            let detail: Value =
                serde_json::from_str(r[0].as_deref().unwrap_or("null")).unwrap_or(Value::Null);
            detail["bootfile"].clone()
        })
        .collect();
    let http = |url: &str| json!({ "via": "http", "file": url });
    assert_eq!(
        bootfiles.first(),
        Some(&http(IPXE_EFI_URL)),
        "(e) the first offer: {bootfiles:#?}"
    );
    assert!(
        bootfiles.contains(&http(BOOT_URL)),
        "(e) iPXE's offer gives the script: {bootfiles:#?}"
    );
    // The firmware's DHCP (opt 93 = 16) records `http-x64`; iPXE's own DHCP
    // (opt 60 `PXEClient:Arch:00007…`, opt 93 = 7) then records `efi-x64`,
    // and the live OS's udhcpc sends no arch: `efi-x64` is what stays.
    assert_confirmed(api, UEFI_HTTP_MAC, 1, "efi-x64");
}

fn report(case: &str, b: &Booted) -> String {
    format!(
        "{case}: script at {}, live OS init at {}, phone_home ok at {}, powered off at {}",
        secs(b.script),
        secs(b.init),
        secs(b.phone_home),
        secs(b.exited)
    )
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

#[test]
fn live_boot_real_vms_to_phone_home_and_roll_forward() {
    let Some(tools) = tools_or_skip(TEST) else {
        return;
    };
    let curl = match extra_requirements() {
        Ok(curl) => curl,
        Err(reason) => return skip(TEST, &reason),
    };
    let total = Instant::now();
    let mut timings: Vec<(String, Duration)> = Vec::new();

    let os = match build_liveos(&tools.timeout) {
        Ok(os) => os,
        Err(reason) => return skip(TEST, &reason),
    };
    timings.push(("live OS build (cached: a check)".into(), total.elapsed()));

    // Server, generation 1, the default group pointed at it -----------------
    let started = Instant::now();
    let mut lab = Lab::new(tools, "boot", 4);
    lab.start_server(&ipxe_dir());
    let api = Api::new(&lab, curl);
    let (gen1, digest1) = import(&lab, &os, GEN1_CMDLINE);
    assert_eq!(gen1, 1, "a fresh server's first generation");
    cli(&lab, &["group", "set-generation", "default", STREAM, "1"]);
    let g = api.ok("/api/v1/streams/live/generations/1");
    assert_eq!(g["digest"], digest1.as_str(), "{g:#}");
    eprintln!(
        "e2e-boot: namespaces {} / {}; {STREAM} gen 1 = {digest1}",
        lab.ns, lab.cns
    );
    timings.push(("server + import gen 1 + point".into(), started.elapsed()));

    // (a), (b), (c), (e) at once ----------------------------------------------
    let started = Instant::now();
    let mut vms = [
        lab.start_vm_with(
            "a-bios-rom",
            "tap0",
            RESERVED_MAC,
            Firmware::BiosIpxeRom,
            BIOS_MB,
        ),
        lab.start_vm_with(
            "b-uefi-rom",
            "tap1",
            UEFI_ROM_MAC,
            Firmware::UefiIpxeRom,
            UEFI_MB,
        ),
        lab.start_vm_with(
            "c-uefi-pxe",
            "tap2",
            UEFI_PXE_MAC,
            Firmware::UefiPxe,
            UEFI_MB,
        ),
        lab.start_vm_with(
            "e-uefi-http",
            "tap3",
            UEFI_HTTP_MAC,
            Firmware::UefiHttp,
            UEFI_MB,
        ),
    ];
    let macs = [RESERVED_MAC, UEFI_ROM_MAC, UEFI_PXE_MAC, UEFI_HTTP_MAC];
    let booted: Vec<Booted> = std::thread::scope(|s| {
        let waits: Vec<_> = vms
            .iter_mut()
            .zip(macs)
            .map(|(vm, mac)| s.spawn(move || wait_booted(vm, mac, 1, GEN1_CMDLINE)))
            .collect();
        waits
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| panic!("a VM did not boot (above)"))
            })
            .collect()
    });
    let [a, b, c, e] = <[Booted; 4]>::try_from(booted).ok().unwrap();
    let parallel = started.elapsed();

    // (a) BIOS, QEMU's iPXE ROM
    assert!(
        a.serial.contains(&format!("Filename: {BOOT_URL}")),
        "(a) the ROM's DHCP gave the script URL\n{}",
        tail(&vms[0].serial, 30)
    );
    assert!(
        a.serial
            .contains(&live(&format!("eth0 address {RESERVED_IP}/24"))),
        "(a) the live OS's own DHCP got the reserved address\n{}",
        tail(&vms[0].serial, 30)
    );
    assert!(!kernel_cmdline(&a.serial).unwrap().contains("ironboot.test"));
    assert_confirmed(&api, RESERVED_MAC, 1, "bios");
    eprintln!("e2e-boot {}", report("(a) BIOS iPXE ROM", &a));
    timings.push(("(a) BIOS iPXE ROM -> phone_home ok".into(), a.phone_home));

    // (b) UEFI, OVMF + QEMU's iPXE EFI ROM: iPXE's driver boots, not OVMF's PXE
    assert!(
        b.serial
            .contains(&format!("net0: {UEFI_ROM_MAC} using virtio-net"))
            && b.serial.contains(&format!("Filename: {BOOT_URL}"))
            && !b.serial.contains("NBP filename"),
        "(b) the ROM's iPXE (its own virtio-net driver), not OVMF's PXE, should have booted\n{}",
        tail(&vms[1].serial, 30)
    );
    assert_confirmed(&api, UEFI_ROM_MAC, 1, "efi-x64");
    eprintln!("e2e-boot {}", report("(b) UEFI iPXE EFI ROM", &b));
    timings.push((
        "(b) UEFI iPXE EFI ROM -> phone_home ok".into(),
        b.phone_home,
    ));

    // (c) UEFI, OVMF's own PXE -> ipxe.efi over TFTP -> HTTP
    let nbp = c.serial.find("NBP filename is ipxe.efi");
    // ipxe.efi drives the NIC through the firmware's SNP.
    let chained = c
        .serial
        .find(&format!("net0: {UEFI_PXE_MAC} using SNP"))
        .and(c.serial.find(&format!("Filename: {BOOT_URL}")));
    assert!(
        matches!((nbp, chained), (Some(n), Some(h)) if n < h),
        "(c) OVMF's PXE loads ipxe.efi, which then asks for the script\n{}",
        tail(&vms[2].serial, 30)
    );
    assert_confirmed(&api, UEFI_PXE_MAC, 1, "efi-x64");
    eprintln!("e2e-boot {}", report("(c) UEFI PXE -> ipxe.efi (TFTP)", &c));
    timings.push((
        "(c) UEFI PXE -> ipxe.efi -> phone_home ok".into(),
        c.phone_home,
    ));

    // (e) UEFI HTTP boot -> ipxe.efi over HTTP -> the script
    assert_uefi_http(&lab, &api, &e, &vms[3]);
    eprintln!("e2e-boot {}", report("(e) UEFI HTTP boot -> ipxe.efi", &e));
    timings.push((
        "(e) UEFI HTTP -> ipxe.efi -> phone_home ok".into(),
        e.phone_home,
    ));

    // The operator's list agrees.
    let list: Value = serde_json::from_str(&cli(&lab, &["machines", "list", "-o", "json"]))
        .expect("machines list -o json is JSON");
    for mac in macs {
        let m = list["machines"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["mac"] == mac))
            .unwrap_or_else(|| panic!("{mac} not in machines list:\n{list:#}"));
        assert_eq!(m["current"], gen_ref(1), "{m:#}");
        assert_eq!(m["last_good"], gen_ref(1), "{m:#}");
    }
    for vm in vms {
        vm.stop();
    }
    timings.push(("(a)+(b)+(c)+(e) at once, wall".into(), parallel));

    // (d) generation 2, the group moves, (a)'s machine boots it ---------------
    let started = Instant::now();
    let (gen2, digest2) = import(&lab, &os, GEN2_CMDLINE);
    assert_eq!(gen2, 2);
    assert_ne!(digest2, digest1, "another command line is another image");
    cli(&lab, &["group", "set-generation", "default", STREAM, "2"]);
    let mut vm = lab.start_vm_with(
        "d-bios-gen2",
        "tap0",
        RESERVED_MAC,
        Firmware::BiosIpxeRom,
        BIOS_MB,
    );
    let d = wait_booted(&mut vm, RESERVED_MAC, 2, GEN2_CMDLINE);
    vm.stop();
    let m = assert_confirmed(&api, RESERVED_MAC, 2, "bios");
    assert_eq!(m["last_good"], gen_ref(2), "{m:#}");
    // Generation 1 stays for a rollback.
    let g1 = api.ok("/api/v1/streams/live/generations/1");
    assert_eq!(g1["digest"], digest1.as_str(), "{g1:#}");
    let g2 = api.ok("/api/v1/streams/live/generations/2");
    assert_eq!(g2["digest"], digest2.as_str(), "{g2:#}");
    // The machine's history: both boots, each confirmed with its generation.
    let history = api.ok(&format!("/api/v1/machines/{RESERVED_MAC}/boots"));
    let boots: Vec<(Value, Value, Value)> = history["boots"]
        .as_array()
        .expect("boots is a list")
        .iter()
        .map(|b| {
            (
                b["stream"].clone(),
                b["generation"].clone(),
                b["state"].clone(),
            )
        })
        .collect();
    assert_eq!(
        boots,
        [
            (json!(STREAM), json!(2), json!("confirmed")),
            (json!(STREAM), json!(1), json!("confirmed")),
        ],
        "newest first:\n{history:#}"
    );
    eprintln!("e2e-boot {}", report("(d) BIOS again, gen 2", &d));
    timings.push(("(d) gen 2: import + point + boot".into(), started.elapsed()));

    // A clean stop ------------------------------------------------------------
    drop(api);
    if let Some(pool) = lab.db.take() {
        lab.rt.block_on(pool.close());
    }
    let status = lab.server.as_mut().unwrap().stop(Duration::from_secs(15));
    assert!(
        matches!(status, Some(s) if s.success()),
        "ironboot did not stop cleanly on SIGTERM ({status:?})\n{}",
        tail(&lab.server_log(), 30)
    );
    lab.server = None;

    timings.push(("total".into(), total.elapsed()));
    eprintln!("e2e-boot timings:");
    for (case, d) in &timings {
        eprintln!("  {case:<45} {}", secs(*d));
    }
}
