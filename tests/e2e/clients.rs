//! End to end: the clients that do not boot through iPXE, each with its real
//! bytes on the wire, against one `ironboot serve` in full DHCP mode.
//!
//! - (a) arm64 UEFI: `qemu-system-aarch64` with AAVMF and a virtio NIC
//!   without option ROM sends arch 11; ironboot offers Debian's netboot GRUB
//!   (`grubnetaa64.efi`, from `dhcp.bootfile.grub_dir`) over TFTP, serves it
//!   the per-machine GRUB config and the arm64 kernel and initrd by digest
//!   over TFTP, and the arm64 live OS phones home: generation `arm` 1 is
//!   confirmed. The group `default` also holds an x86_64 live OS (its
//!   pointer set last) and an x86_64 installer: one generation per
//!   architecture, and one installer per architecture for switches.
//! - (b) ONIE: busybox `udhcpc` run as ONIE runs it (`-V onie_vendor:…`,
//!   asking for 114 and 125) from the client namespace gets opt 114 and opt
//!   125 (enterprise 42623, sub-option 1) with the installer URL; `wget`
//!   with ONIE's headers downloads the installer generation byte for byte;
//!   the waterfall names over HTTP and over TFTP (`<MAC>/onie-installer`)
//!   give the same bytes; the machine is recorded as a switch with its
//!   serial.
//! - (c) Cumulus ZTP: the same switch, now running its network OS, asks for
//!   opt 239 and gets its provisioning script URL; the script carries the
//!   `CUMULUS-AUTOPROVISIONING` marker and, run with busybox, confirms the
//!   boot: the installer generation is the switch's current one.
//! - (d) a rollout (`ironboot rollout start`, canary 1): installer
//!   generation 2 is imported, the switch is moved, ONIE's next install
//!   gets the new bytes, ZTP confirms it and the rollout succeeds with the
//!   group's installer pointer on 2.
//!
//! (b), (c) and (d) run while (a)'s VM boots. The arm64 live OS is
//! `tests/liveos/build.sh --arch arm64` (cached in `tests/.cache`).
//! Run with `IRONBOOT_E2E=require cargo test --test e2e clients:: -- --nocapture`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::lab::*;

const TEST: &str = "arm64_grub_onie_and_ztp_clients_boot_from_one_server";
const ARM_MAC: &str = "52:54:00:00:a6:41";
const SWITCH_MAC: &str = "52:54:00:0e:00:01";
const SWITCH_SERIAL: &str = "SN-E2E-0001";
const ONIE_VENDOR: &str = "onie_vendor:x86_64-acme_widget-r0";
const QEMU_ARM: &str = "qemu-system-aarch64";
const AAVMF_CODE: &str = "/usr/share/AAVMF/AAVMF_CODE.fd";
const AAVMF_VARS: &str = "/usr/share/AAVMF/AAVMF_VARS.fd";
const ARM_LIMIT: Duration = Duration::from_secs(180);

/// `tests/liveos/build.sh --arch arm64`: its output directory.
fn build_arm64(timeout: &Path) -> Result<PathBuf, String> {
    for (name, package) in [("apt-get", "apt"), ("dpkg-deb", "dpkg"), ("curl", "curl")] {
        which(name).ok_or_else(|| format!("{name} not found (package {package})"))?;
    }
    which(QEMU_ARM).ok_or("qemu-system-aarch64 not found (package qemu-system-arm)")?;
    for f in [AAVMF_CODE, AAVMF_VARS] {
        if !Path::new(f).exists() {
            return Err(format!("{f} missing (package qemu-efi-aarch64)"));
        }
    }
    build(
        timeout,
        &["--arch", "arm64"],
        "liveos-arm64",
        600,
        &["vmlinuz", "initrd.img", "grubnetaa64.efi"],
    )
}

/// `ironboot image import` of an x86_64 ONIE installer into stream `nos`.
fn import_installer(lab: &Lab, file: &Path) -> String {
    let file = file.to_str().unwrap();
    let args = ["image", "import", "--stream", "nos", "--arch", "x86_64"];
    cli(lab, &[&args[..], &["--installer", file]].concat())
}

/// The arm64 guest: AAVMF's own PXE (no option ROM on the NIC), TCG.
fn start_arm64(lab: &Lab, qemu: &Path) -> Vm {
    let vars = lab.dir.join("AAVMF_VARS.fd");
    std::fs::copy(AAVMF_VARS, &vars).unwrap();
    let serial = lab.dir.join("arm64.serial.log");
    std::fs::write(&serial, b"").unwrap();
    let code = format!("if=pflash,format=raw,readonly=on,file={AAVMF_CODE}");
    let vars = format!("if=pflash,format=raw,file={}", vars.display());
    let netdev = "tap,id=n0,ifname=tap0,script=no,downscript=no".to_string();
    let nic = format!("virtio-net-pci,netdev=n0,mac={ARM_MAC},romfile=");
    let serial_arg = format!("file:{}", serial.display());
    let args = [
        qemu.to_str().unwrap(),
        "-machine",
        "virt,accel=tcg",
        "-cpu",
        "cortex-a57",
        "-m",
        "1024",
        "-drive",
        &code,
        "-drive",
        &vars,
        "-netdev",
        &netdev,
        "-device",
        &nic,
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        &serial_arg,
        "-no-reboot",
    ];
    lab.spawn_vm("arm64", &args, serial)
}

/// busybox udhcpc from the client namespace as `mac`, with extra arguments;
/// the environment its hook script saw when bound (`opt114=…`, `ip=…`), and
/// the address configured on the veth so HTTP and TFTP can follow.
fn udhcpc_env(lab: &Lab, mac: &str, extra: &[&str]) -> Vec<(String, String)> {
    let cns = lab.cns.clone();
    lab.ip(&["-n", &cns, "addr", "flush", "dev", "vcl"]);
    lab.ip(&["-n", &cns, "link", "set", "vcl", "down"]);
    lab.ip(&["-n", &cns, "link", "set", "vcl", "address", mac]);
    lab.ip(&["-n", &cns, "link", "set", "vcl", "up"]);
    let bb = lab.tools.busybox.to_str().unwrap();
    let env_file = lab.dir.join("udhcpc.env");
    let _ = std::fs::remove_file(&env_file);
    let script = lab.dir.join("udhcpc-env.sh");
    std::fs::write(
        &script,
        format!(
            "#!{bb} sh\nif [ \"$1\" = bound ]; then\n  env > {env}\n  {bb} ip addr add \"$ip/24\" dev \"$interface\"\nfi\nexit 0\n",
            env = env_file.display()
        ),
    )
    .unwrap();
    let mut perm = std::fs::metadata(&script).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&script, perm).unwrap();
    let mut args = vec![
        bb, "udhcpc", "-i", "vcl", "-f", "-q", "-n", "-t", "3", "-T", "1", "-s",
    ];
    args.push(script.to_str().unwrap());
    args.extend_from_slice(extra);
    let (ok, text) = lab.exec(&cns, 20, &args);
    assert!(ok, "udhcpc {extra:?} got no lease:\n{text}");
    let env = std::fs::read_to_string(&env_file).unwrap_or_default();
    env.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn get<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
    env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// busybox wget in the client namespace: (ok, output).
fn wget(lab: &Lab, url: &str, out: &Path, headers: &[String]) -> (bool, String) {
    let bb = lab.tools.busybox.to_str().unwrap();
    let mut args = vec![bb.to_string(), "wget".into(), "-q".into()];
    for h in headers {
        args.extend(["--header".into(), h.clone()]);
    }
    args.extend(["-O".into(), out.to_str().unwrap().into(), url.into()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    lab.exec(&lab.cns, 20, &refs)
}

fn onie_headers() -> Vec<String> {
    [
        ("ONIE-SERIAL-NUMBER", SWITCH_SERIAL),
        ("ONIE-ETH-ADDR", SWITCH_MAC),
        ("ONIE-VENDOR-ID", "99999"),
        ("ONIE-MACHINE", "acme_widget"),
        ("ONIE-MACHINE-REV", "0"),
        ("ONIE-ARCH", "x86_64"),
        ("ONIE-SECURITY-KEY", "d3b07384d-113edec49e"),
        ("ONIE-OPERATION", "os-install"),
        ("ONIE-VERSION", "2023.05"),
    ]
    .iter()
    .map(|(k, v)| format!("{k}: {v}"))
    .collect()
}

#[test]
fn arm64_grub_onie_and_ztp_clients_boot_from_one_server() {
    let turn = Turn::wait(TEST);
    let Some(tools) = tools_or_skip(TEST) else {
        return;
    };
    let arm_os = match build_arm64(&tools.timeout) {
        Ok(dir) => dir,
        Err(reason) => return skip(TEST, &reason),
    };
    let qemu_arm = which(QEMU_ARM).unwrap();
    let t0 = Instant::now();
    let mut lab = Lab::new(tools, "cl", 1, turn);
    lab.extra_config = format!("[dhcp.bootfile]\ngrub_dir = \"{}\"\n", arm_os.display());
    lab.start_server(Path::new(IPXE_DIR));

    // The operator: an arm64 live OS and an x86_64 installer, both in the
    // group `default` (one generation per architecture).
    let (kernel, initrd) = (arm_os.join("vmlinuz"), arm_os.join("initrd.img"));
    let out = cli(
        &lab,
        &[
            "image",
            "import",
            "--stream",
            "arm",
            "--arch",
            "arm64",
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--cmdline",
            "console=ttyAMA0",
        ],
    );
    assert!(out.starts_with("generation 1 "), "{out}");
    let installer: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let installer_file = lab.dir.join("onie-installer-acme.bin");
    std::fs::write(&installer_file, &installer).unwrap();
    let out = import_installer(&lab, &installer_file);
    assert!(out.starts_with("generation 1 "), "{out}");
    // An x86_64 live OS for the group's x86 servers, set last: the switch
    // still gets the group's x86_64 installer, the arm64 guest its arm64 image.
    let x86 = lab.dir.join("x86-kernel");
    std::fs::write(&x86, b"an x86_64 kernel no machine here boots").unwrap();
    let out = cli(
        &lab,
        &[
            "image",
            "import",
            "--stream",
            "live",
            "--arch",
            "x86_64",
            "--kernel",
            x86.to_str().unwrap(),
            "--initrd",
            x86.to_str().unwrap(),
        ],
    );
    assert!(out.starts_with("generation 1 "), "{out}");
    cli(&lab, &["group", "set-generation", "default", "arm", "1"]);
    cli(&lab, &["group", "set-generation", "default", "nos", "1"]);
    cli(&lab, &["group", "set-generation", "default", "live", "1"]);

    let mut vm = start_arm64(&lab, &qemu_arm);

    // (b) ONIE's DHCP: opt 114 and 125 with the installer URL.
    let t_onie = Instant::now();
    let env = udhcpc_env(
        &lab,
        SWITCH_MAC,
        &["-V", ONIE_VENDOR, "-O", "114", "-O", "125"],
    );
    let url = format!("{BASE}/onie/52-54-00-0e-00-01/onie-installer");
    let opt114 = get(&env, "opt114").unwrap_or_else(|| panic!("no opt114 in {env:?}"));
    assert_eq!(String::from_utf8(unhex(opt114)).unwrap(), url);
    let opt125 = unhex(get(&env, "opt125").unwrap_or_else(|| panic!("no opt125 in {env:?}")));
    assert_eq!(&opt125[..4], &42623u32.to_be_bytes(), "enterprise 42623");
    assert_eq!(opt125[5], 1, "sub-option 1: installer URL");
    assert_eq!(&opt125[7..], url.as_bytes());

    // The installer, by the offered URL, by a waterfall name and over TFTP.
    let got = lab.dir.join("installer.got");
    let (ok, text) = wget(&lab, &url, &got, &onie_headers());
    assert!(ok, "wget {url}: {text}");
    assert!(
        std::fs::read(&got).unwrap() == installer,
        "installer bytes differ"
    );
    let _ = std::fs::remove_file(&got);
    let waterfall = format!("{BASE}/onie-installer-x86_64-acme_widget-r0");
    let (ok, text) = wget(&lab, &waterfall, &got, &onie_headers());
    assert!(ok, "wget {waterfall}: {text}");
    assert!(
        std::fs::read(&got).unwrap() == installer,
        "waterfall bytes differ"
    );
    let tftp_got = lab.dir.join("installer.tftp");
    let bb = lab.tools.busybox.to_str().unwrap().to_string();
    let (ok, text) = lab.exec(
        &lab.cns,
        60,
        &[
            &bb,
            "tftp",
            "-g",
            "-b",
            "1468",
            "-r",
            "52-54-00-0e-00-01/onie-installer",
            "-l",
            tftp_got.to_str().unwrap(),
            SERVER_IP,
        ],
    );
    assert!(ok, "tftp <MAC>/onie-installer: {text}");
    assert!(
        std::fs::read(&tftp_got).unwrap() == installer,
        "TFTP bytes differ"
    );
    let rows = lab.wait_rows(
        "(b) the switch recorded with its serial",
        "SELECT kind, serial, firmware FROM machines WHERE mac = $1",
        &[SWITCH_MAC],
        |rows| rows.first().is_some_and(|r| r[1].is_some()),
    );
    assert_eq!(rows[0][0].as_deref(), Some("switch"), "{rows:?}");
    assert_eq!(rows[0][1].as_deref(), Some(SWITCH_SERIAL), "{rows:?}");
    assert_eq!(rows[0][2].as_deref(), Some("onie"), "{rows:?}");
    let served = lab.wait_rows(
        "(b) onie.installer events",
        "SELECT detail FROM events WHERE mac = $1 AND step = 'onie.installer'",
        &[SWITCH_MAC],
        |rows| rows.len() >= 3,
    );
    assert!(
        served[0][0]
            .as_deref()
            .unwrap_or("")
            .contains("\"operation\":\"os-install\""),
        "{served:?}"
    );
    eprintln!(
        "e2e-clients: (b) ONIE DHCP + 3 installer downloads in {}",
        secs(t_onie.elapsed())
    );

    // (c) Cumulus ZTP: opt 239 asked for, the script, its confirmation.
    let t_ztp = Instant::now();
    let env = udhcpc_env(&lab, SWITCH_MAC, &["-O", "239"]);
    let opt239 = get(&env, "opt239").unwrap_or_else(|| panic!("no opt239 in {env:?}"));
    let script_url = String::from_utf8(unhex(opt239)).unwrap();
    assert_eq!(
        script_url,
        format!("{BASE}/ztp/52-54-00-0e-00-01/cumulus.sh")
    );
    let script = lab.dir.join("ztp.sh");
    let (ok, text) = wget(&lab, &script_url, &script, &[]);
    assert!(ok, "wget {script_url}: {text}");
    let body = std::fs::read_to_string(&script).unwrap();
    assert!(
        body.lines()
            .any(|l| l.trim() == "# CUMULUS-AUTOPROVISIONING"),
        "{body}"
    );
    // The switch runs it (busybox provides sh and wget here).
    let bin = lab.dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let _ = std::os::unix::fs::symlink(&bb, bin.join("wget"));
    let path = format!("PATH={}", bin.display());
    let run_ztp = || {
        let (ok, text) = lab.exec(
            &lab.cns,
            30,
            &["env", &path, &bb, "sh", script.to_str().unwrap()],
        );
        assert!(ok, "the ZTP script failed: {text}");
    };
    run_ztp();
    lab.wait_rows(
        "(c) the switch's current generation is the installer's",
        "SELECT current_stream, current_generation FROM machines WHERE mac = $1",
        &[SWITCH_MAC],
        |rows| {
            rows.first()
                .is_some_and(|r| r[0].as_deref() == Some("nos") && r[1].as_deref() == Some("1"))
        },
    );
    eprintln!(
        "e2e-clients: (c) ZTP DHCP + script + confirmation in {}",
        secs(t_ztp.elapsed())
    );

    // (d) A rollout moves the switch to installer generation 2, as it moves
    // servers: the switch is the canary (the only machine on the group's
    // x86_64 installer pointer), ONIE's next install gets generation 2's
    // bytes, the network OS's ZTP script confirms it, and the rollout
    // succeeds with the pointer moved.
    let t_rollout = Instant::now();
    let installer2: Vec<u8> = installer.iter().map(|b| b ^ 0x5a).collect();
    let installer2_file = lab.dir.join("onie-installer-acme-2.bin");
    std::fs::write(&installer2_file, &installer2).unwrap();
    let out = import_installer(&lab, &installer2_file);
    assert!(out.starts_with("generation 2 "), "{out}");
    let out = cli(
        &lab,
        &[
            "rollout", "start", "--group", "default", "--stream", "nos", "--to", "2", "--canary",
            "1", "-o", "json",
        ],
    );
    let r: serde_json::Value = serde_json::from_str(&out).expect("rollout start -o json");
    assert_eq!(r["slot"], "x86_64/installer", "{r:#}");
    assert_eq!(r["counts"]["machines"], 1, "only the switch: {r:#}");
    assert_eq!(r["waves"][0]["machines"][0]["mac"], SWITCH_MAC, "{r:#}");
    let id = r["id"].to_string();
    let _ = std::fs::remove_file(&got);
    let (ok, text) = wget(&lab, &url, &got, &onie_headers());
    assert!(ok, "wget {url}: {text}");
    assert!(
        std::fs::read(&got).unwrap() == installer2,
        "(d) ONIE's next install should get installer generation 2"
    );
    let _ = udhcpc_env(&lab, SWITCH_MAC, &["-O", "239"]);
    let (ok, text) = wget(&lab, &script_url, &script, &[]);
    assert!(ok, "wget {script_url}: {text}");
    run_ztp();
    lab.wait_rows(
        "(d) the rollout succeeded",
        "SELECT state FROM rollouts WHERE id = CAST($1 AS BIGINT)",
        &[&id],
        |rows| {
            rows.first()
                .is_some_and(|r| r[0].as_deref() == Some("succeeded"))
        },
    );
    let rows = lab.query(
        "SELECT current_stream, current_generation FROM machines WHERE mac = $1",
        &[SWITCH_MAC],
    );
    assert_eq!(
        rows[0],
        [Some("nos".to_string()), Some("2".to_string())],
        "(d) the switch runs installer generation 2"
    );
    let group = cli(&lab, &["group", "show", "default", "-o", "json"]);
    let group: serde_json::Value = serde_json::from_str(&group).expect("group show -o json");
    assert_eq!(
        group["by_arch"]["x86_64/installer"],
        serde_json::json!({"stream": "nos", "generation": 2}),
        "{group:#}"
    );
    eprintln!(
        "e2e-clients: (d) rollout of the switch to installer gen 2 in {}:\n{}",
        secs(t_rollout.elapsed()),
        cli(&lab, &["rollout", "status", &id])
    );

    // (a) the arm64 guest, through netboot GRUB, to phone-home.
    let at = vm.wait_markers(
        &[
            "ironboot: 52:54:00:00:a6:41 -> arm gen 1 (boot ",
            "Kernel command line: ",
            &live("init started"),
            &live("phone_home ok"),
            &live("done"),
        ],
        ARM_LIMIT,
    );
    let status = vm.wait_exit(Duration::from_secs(20));
    assert!(
        matches!(status, Some(s) if s.success()),
        "arm64 QEMU did not exit cleanly ({status:?})\n{}",
        tail(&vm.serial, 30)
    );
    let serial = vm.text();
    let cmdline = serial
        .lines()
        .find_map(|l| l.split_once("Kernel command line: ").map(|(_, c)| c.trim()))
        .unwrap_or_default();
    assert!(
        cmdline.contains(&format!(" console=ttyAMA0 ds=nocloud-net;s={BASE}/config/")),
        "(a) kernel command line, every argument unquoted: {cmdline:?}"
    );
    assert!(
        !cmdline.contains('"'),
        "(a) quotes reached the kernel: {cmdline:?}"
    );
    lab.wait_rows(
        "(a) arm gen 1 confirmed on the arm64 machine",
        "SELECT current_stream, current_generation, arch FROM machines WHERE mac = $1",
        &[ARM_MAC],
        |rows| {
            rows.first().is_some_and(|r| {
                r[0].as_deref() == Some("arm")
                    && r[1].as_deref() == Some("1")
                    && r[2].as_deref() == Some("efi-arm64")
            })
        },
    );
    let tftp = lab.query(
        "SELECT detail FROM events WHERE mac = $1 AND step = 'tftp.complete' ORDER BY id",
        &[ARM_MAC],
    );
    let files: Vec<String> = tftp.iter().filter_map(|r| r[0].clone()).collect();
    for want in ["grubnetaa64.efi", "grub.cfg", "artifacts/sha256/"] {
        assert!(
            files.iter().any(|f| f.contains(want)),
            "(a) no TFTP transfer of {want}: {files:?}"
        );
    }
    eprintln!(
        "e2e-clients: (a) arm64 GRUB: config at {}, kernel at {}, init at {}, phone-home at {}; whole test {}",
        secs(at[0]),
        secs(at[1]),
        secs(at[2]),
        secs(at[3]),
        secs(t0.elapsed())
    );
}
