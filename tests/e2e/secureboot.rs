//! Secure Boot end to end: OVMF's Secure Boot firmware (`q35` with SMM,
//! `OVMF_CODE_4M.secboot.fd`) under TCG, the files Debian signs, and an
//! image signed with the operator's key.
//!
//! - (a) the stock signed chain (loader `shim`), Microsoft keys enrolled
//!   (`OVMF_VARS_4M.ms.fd`): PXE → Debian's signed shim over TFTP → signed
//!   netboot GRUB (`grubx64.efi`) → the per-machine GRUB config → Debian's
//!   signed kernel → the live OS, which reports Secure Boot on in its
//!   confirmation; the machine shows it;
//! - (b) the same chain with one byte of the kernel changed: shim refuses it
//!   (`bad shim signature`) and no kernel starts;
//! - (c) an image built and signed by `ironboot image build-uki` with the
//!   test key (`OVMF_VARS_4M.snakeoil.fd` enrolls its certificate), loader
//!   `uki`, UEFI HTTP boot: the firmware verifies and starts it, its seed is
//!   `/config/self/`, it confirms with Secure Boot on;
//! - (d) ten images, each that image with one byte changed in its kernel,
//!   initrd or command line: the firmware refuses every one (`Access
//!   Denied`), no kernel line, no confirmation;
//! - (f) the same signed image by PXE (TFTP) instead of HTTP boot;
//! - (e) a rollout that requires `secureboot=1` from that image to one of
//!   the changed ones: the canary is refused, its silent boot fails at
//!   `confirm_timeout`, the rollout rolls back, and the machine boots the
//!   good image again.
//!
//! The signed loaders and the stub come from Debian's archive, extracted,
//! never installed (`tests/liveos/secureboot.sh`, cached). Needs `objcopy`,
//! `sbsign` (sbsigntool) and `openssl`. Run with
//! `IRONBOOT_E2E=require cargo test --test e2e secureboot:: -- --nocapture`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::lab::*;

const TEST: &str = "secure_boot_chains_boot_what_is_signed_and_refuse_the_rest";
const CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
const VARS_MS: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";
const VARS_TEST_KEY: &str = "/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd";
const TEST_KEY: &str = "/usr/share/ovmf/PkKek-1-snakeoil.key";
const TEST_CERT: &str = "/usr/share/ovmf/PkKek-1-snakeoil.pem";
const CHAIN_MAC: &str = "52:54:00:5b:00:01";
const UKI_MAC: &str = "52:54:00:5b:00:02";
const TRIAL_MAC: &str = "52:54:00:5b:00:03";
const CMDLINE: &str = "console=ttyS0,115200n8";
const UKI_CMDLINE: &str =
    "console=ttyS0,115200n8 ds=nocloud-net;s=http://10.77.0.1:8080/config/self/";
/// What the firmware prints when an image's signature does not verify.
const REFUSED: &str = "Access Denied";

/// `tests/liveos/secureboot.sh` (cached): shim, signed GRUB, the stub.
fn signed_files(timeout: &Path) -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = root.join("tests/.cache/secureboot");
    let result = Command::new(timeout)
        .args(["-k", "5", "300"])
        .arg(root.join("tests/liveos/secureboot.sh"))
        .arg(&out)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run tests/liveos/secureboot.sh: {e}"))?;
    if !result.status.success() {
        return Err(format!(
            "tests/liveos/secureboot.sh failed: {}",
            String::from_utf8_lossy(&result.stderr)
        ));
    }
    Ok(out)
}

fn requirements() -> Result<(), String> {
    for (tool, package) in [
        ("objcopy", "binutils"),
        ("sbsign", "sbsigntool"),
        ("openssl", "openssl"),
    ] {
        which(tool).ok_or_else(|| format!("{tool} not found (package {package})"))?;
    }
    for f in [CODE, VARS_MS, VARS_TEST_KEY, TEST_KEY, TEST_CERT] {
        if !Path::new(f).is_file() {
            return Err(format!("{f} not found (package ovmf)"));
        }
    }
    Ok(())
}

/// A Secure Boot VM: the firmware's own network stack (no option ROM),
/// PXE (`http: false`) or HTTP boot only, its VARS a copy of `vars`.
fn start_secure(lab: &Lab, name: &str, tap: &str, mac: &str, vars: &str, http: bool) -> Vm {
    let copy = lab.dir.join(format!("{name}.vars.fd"));
    std::fs::copy(vars, &copy).unwrap();
    let serial = lab.dir.join(format!("{name}.serial.log"));
    std::fs::write(&serial, b"").unwrap();
    let code = format!("if=pflash,format=raw,unit=0,readonly=on,file={CODE}");
    let vars = format!("if=pflash,format=raw,unit=1,file={}", copy.display());
    let netdev = format!("tap,id=n0,ifname={tap},script=no,downscript=no");
    let nic = format!("virtio-net-pci,netdev=n0,mac={mac},romfile=");
    let serial_arg = format!("file:{}", serial.display());
    let mut args: Vec<String> = [
        lab.tools.qemu.to_str().unwrap(),
        "-machine",
        "q35,smm=on,accel=tcg",
        "-global",
        "driver=cfi.pflash01,property=secure,value=on",
        "-nodefaults",
        "-m",
        "512",
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
    ]
    .map(String::from)
    .to_vec();
    let off: &[&str] = if http {
        &["IPv4PXESupport", "IPv6PXESupport"]
    } else {
        // IPv4 PXE only: no minute-long DHCPv6 wait after a refusal.
        &["IPv6PXESupport"]
    };
    for stack in off {
        args.extend([
            "-fw_cfg".into(),
            format!("name=opt/org.tianocore/{stack},string=n"),
        ]);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    lab.spawn_vm(name, &refs, serial)
}

/// Waits for a refusal (`marker`) on the console, then stops the VM (the
/// firmware would go on to other boot options): the serial text.
fn wait_refused(mut vm: Vm, marker: &str) -> String {
    let deadline = vm.started + Duration::from_secs(120);
    loop {
        let text = vm.text();
        if text.contains(marker) {
            // A moment for anything that would follow (it must not).
            std::thread::sleep(Duration::from_millis(1500));
            let text = vm.text();
            vm.stop();
            return text;
        }
        assert!(
            Instant::now() < deadline && vm.proc.exited().is_none(),
            "{}: no {marker:?} within 120 s\n{}",
            vm.name,
            tail(&vm.serial, 30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits for a good Secure Boot boot to confirmation and power-off.
fn wait_confirmed(vm: &mut Vm, markers: &[&str]) -> Duration {
    let mut all = markers.to_vec();
    let sb = live("secureboot 1");
    let ok = live("phone_home ok");
    let done = live("done");
    all.extend([sb.as_str(), ok.as_str(), done.as_str()]);
    let at = vm.wait_markers(&all, BOOT_LIMIT);
    let status = vm.wait_exit(Duration::from_secs(20));
    assert!(
        matches!(status, Some(s) if s.success()),
        "{}: QEMU did not exit after the guest's poweroff\n{}",
        vm.name,
        tail(&vm.serial, 30)
    );
    at[at.len() - 2]
}

/// The one-byte changes: (section, offset within it) for ten images.
fn tamper_plan(uki: &[u8]) -> Vec<(String, usize)> {
    let parsed = ironboot::images::uki::Uki::parse(uki).expect("the built image reads back");
    let mut plan = Vec::new();
    for i in 0..10 {
        let name = [".linux", ".initrd", ".cmdline"][i % 3];
        let s = parsed.section(name).expect("section");
        let len = (s.file.end - s.file.start) as usize;
        // Spread over the section: start, middle, end and between.
        let offset = (s.file.start as usize) + (len - 1) * (i / 3 + 1) / 5;
        plan.push((name.to_string(), offset));
    }
    plan
}

fn machine(api: &Api, mac: &str) -> Value {
    api.ok(&format!("/api/v1/machines/{mac}"))
}

#[test]
fn secure_boot_chains_boot_what_is_signed_and_refuse_the_rest() {
    let turn = Turn::wait(TEST);
    let Some(tools) = tools_or_skip(TEST) else {
        return;
    };
    let curl = match extra_requirements().and_then(|c| requirements().map(|_| c)) {
        Ok(curl) => curl,
        Err(reason) => return skip(TEST, &reason),
    };
    let total = Instant::now();
    let os = match build_liveos(&tools.timeout) {
        Ok(os) => os,
        Err(reason) => return skip(TEST, &reason),
    };
    let signed = match signed_files(&tools.timeout) {
        Ok(dir) => dir,
        Err(reason) => return skip(TEST, &reason),
    };

    let mut lab = Lab::new(tools, "sb", 2, turn);
    let hook = lab.dir.join("reboot-requests");
    lab.extra_config = format!(
        "[dhcp.bootfile]\nshim_x64 = \"{}\"\nsigned_grub_x64 = \"{}\"\n\
         [rollout]\nconfirm_timeout = \"45s\"\n\
         reboot_command = 'echo \"$IRONBOOT_MAC $IRONBOOT_GENERATION $IRONBOOT_REASON\" >> {}'\n",
        signed.join("shimx64.efi.signed").display(),
        signed.join("grubnetx64.efi.signed").display(),
        hook.display(),
    );
    lab.start_server(&ipxe_dir());
    let api = Api::new(&lab, curl);

    // The generations: Debian's signed kernel as is; the UKI built and
    // signed with the test key; ten copies of it with one byte changed.
    assert_eq!(import(&lab, &os, "live", CMDLINE, &[]).0, 1);
    let key = lab.dir.join("test-key.pem");
    let (ok, out) = lab.run(&[
        "openssl",
        "rsa",
        "-in",
        TEST_KEY,
        "-passin",
        "pass:snakeoil",
        "-out",
        key.to_str().unwrap(),
    ]);
    assert!(ok, "openssl: {out}");
    let uki = lab.dir.join("live.efi");
    let built = cli(
        &lab,
        &[
            "image",
            "build-uki",
            "--kernel",
            os.kernel.to_str().unwrap(),
            "--initrd",
            os.initrd.to_str().unwrap(),
            "--cmdline",
            UKI_CMDLINE,
            "--stub",
            signed.join("linuxx64.efi.stub").to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--cert",
            TEST_CERT,
            "--out",
            uki.to_str().unwrap(),
        ],
    );
    assert!(built.trim_end().ends_with(" signed"), "{built}");
    assert_eq!(import_uki(&lab, "uki", &uki, Some(TEST_CERT)), Ok(1));
    let bytes = std::fs::read(&uki).unwrap();
    let plan = tamper_plan(&bytes);
    let mut bad = Vec::new();
    for (i, (section, offset)) in plan.iter().enumerate() {
        let mut changed = bytes.clone();
        changed[*offset] ^= 0x01;
        let path = lab.dir.join(format!("bad-{i}.efi"));
        std::fs::write(&path, &changed).unwrap();
        // The operator's own check refuses it (and would keep it out).
        let refused = import_uki(&lab, "bad", &path, Some(TEST_CERT));
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.contains("does not verify")),
            "sbverify passed a changed image ({section}): {refused:?}"
        );
        let n = import_uki(&lab, "bad", &path, None).expect("imported unchecked");
        bad.push((n, section.clone()));
    }
    let fleet = lab.dir.join("fleet.yaml");
    std::fs::write(
        &fleet,
        format!(
            "groups:\n  chain:\n    selector: sb=chain\n    variables: {{loader: shim}}\n    stream: live\n    generation: 1\n\
             \x20 signed:\n    selector: sb=uki\n    variables: {{loader: uki}}\n    stream: uki\n    generation: 1\n\
             machines:\n  \"{CHAIN_MAC}\": {{labels: {{sb: chain}}}}\n  \"{UKI_MAC}\": {{labels: {{sb: uki}}}}\n  \"{TRIAL_MAC}\": {{labels: {{sb: uki}}}}\n"
        ),
    )
    .unwrap();
    for mac in [CHAIN_MAC, UKI_MAC, TRIAL_MAC] {
        register(&lab, mac);
    }
    cli(&lab, &["apply", "-f", fleet.to_str().unwrap()]);
    eprintln!("e2e-secureboot: setup {}", secs(total.elapsed()));

    // (a) and (c) at once --------------------------------------------------
    let started = Instant::now();
    let mut chain = start_secure(&lab, "a-shim", "tap0", CHAIN_MAC, VARS_MS, false);
    let mut own = start_secure(&lab, "c-uki", "tap1", UKI_MAC, VARS_TEST_KEY, true);
    let echo = format!("ironboot: {CHAIN_MAC} -> live gen 1 (boot ");
    let (a, c) = std::thread::scope(|s| {
        let a = s.spawn(|| wait_confirmed(&mut chain, &[&echo, "secureboot: Secure boot enabled"]));
        let c = s.spawn(|| wait_confirmed(&mut own, &["EFI stub: UEFI Secure Boot is enabled."]));
        (a.join().expect("(a) booted"), c.join().expect("(c) booted"))
    });
    let serial = chain.text();
    assert!(
        serial.contains("NBP filename is shimx64.efi"),
        "(a) the firmware loaded shim\n{}",
        tail(&chain.serial, 30)
    );
    let m = machine(&api, CHAIN_MAC);
    assert_eq!(m["secure_boot"], true, "{m:#}");
    assert_eq!(m["current"], gen_ref("live", 1), "{m:#}");
    let serial = own.text();
    assert!(
        serial.contains(&live("seed http://10.77.0.1:8080/config/self/")),
        "(c) seed"
    );
    assert!(
        serial.contains(&format!("Command line: {UKI_CMDLINE}")),
        "(c) the sealed command line\n{}",
        tail(&own.serial, 40)
    );
    let m = machine(&api, UKI_MAC);
    assert_eq!(m["secure_boot"], true, "{m:#}");
    assert_eq!(m["current"], gen_ref("uki", 1), "{m:#}");
    eprintln!(
        "e2e-secureboot: (a) shim chain confirmed at {}, (c) signed UKI at {} (both in {})",
        secs(a),
        secs(c),
        secs(started.elapsed())
    );

    // (b) the stock chain refuses a changed kernel --------------------------
    let mut kernel = std::fs::read(&os.kernel).unwrap();
    let mid = kernel.len() / 2;
    kernel[mid] ^= 0x01;
    let changed = lab.dir.join("vmlinuz-changed");
    std::fs::write(&changed, &kernel).unwrap();
    let changed_os = LiveOs {
        kernel: changed,
        initrd: os.initrd.clone(),
    };
    assert_eq!(import(&lab, &changed_os, "live", CMDLINE, &[]).0, 2);
    cli(&lab, &["machines", "pin", CHAIN_MAC, "live", "2"]);
    let vm = start_secure(&lab, "b-shim-changed", "tap0", CHAIN_MAC, VARS_MS, false);
    let text = wait_refused(vm, "bad shim signature");
    assert!(
        !text.contains("Linux version"),
        "(b) a changed kernel started\n{text}"
    );
    cli(&lab, &["machines", "unpin", CHAIN_MAC]);
    eprintln!("e2e-secureboot: (b) shim refused the changed kernel");

    // (d) ten changed images, two at a time ---------------------------------
    let started = Instant::now();
    let macs = [(UKI_MAC, "tap1"), (TRIAL_MAC, "tap0")];
    for (round, pair) in bad.chunks(2).enumerate() {
        let vms: Vec<Vm> = pair
            .iter()
            .zip(macs)
            .map(|((n, _), (mac, tap))| {
                cli(&lab, &["machines", "pin", mac, "bad", &n.to_string()]);
                start_secure(
                    &lab,
                    &format!("d-{round}-{n}"),
                    tap,
                    mac,
                    VARS_TEST_KEY,
                    true,
                )
            })
            .collect();
        let texts: Vec<String> = std::thread::scope(|s| {
            let waits: Vec<_> = vms
                .into_iter()
                .map(|vm| s.spawn(move || wait_refused(vm, REFUSED)))
                .collect();
            waits
                .into_iter()
                .map(|w| w.join().expect("refused"))
                .collect()
        });
        for (text, (n, section)) in texts.iter().zip(pair) {
            assert!(
                !text.contains("Linux version") && !text.contains("EFI stub"),
                "(d) bad {n} ({section} changed) started\n{text}"
            );
        }
    }
    for (mac, _) in macs {
        cli(&lab, &["machines", "unpin", mac]);
        let m = machine(&api, mac);
        assert_ne!(
            m["current"]["stream"], "bad",
            "(d) a changed image confirmed: {m:#}"
        );
    }
    let served = lab.query(
        "SELECT COUNT(*) FROM events WHERE step = 'uki.image' AND detail LIKE '%\"stream\":\"bad\"%'",
        &[],
    );
    assert_eq!(
        served[0][0].as_deref(),
        Some("10"),
        "each changed image was served once"
    );
    eprintln!(
        "e2e-secureboot: (d) 10 of 10 changed images refused in {}",
        secs(started.elapsed())
    );

    // (f) the signed image by PXE: the firmware loads it over TFTP ------------
    let started = Instant::now();
    let mut vm = start_secure(&lab, "f-uki-pxe", "tap0", TRIAL_MAC, VARS_TEST_KEY, false);
    wait_confirmed(&mut vm, &["EFI stub: UEFI Secure Boot is enabled."]);
    assert!(vm.text().contains(&format!(
        "NBP filename is uki/{}.efi",
        TRIAL_MAC.replace(':', "-")
    )));
    let m = machine(&api, TRIAL_MAC);
    assert_eq!(m["current"], gen_ref("uki", 1), "{m:#}");
    eprintln!(
        "e2e-secureboot: (f) the signed image by PXE confirmed in {}",
        secs(started.elapsed())
    );

    // (e) a rollout to a changed image rolls back ------------------------------
    let started = Instant::now();
    let bad_0 = lab.dir.join("bad-0.efi");
    assert_eq!(import_uki(&lab, "uki", &bad_0, None), Ok(2));
    let r: Value = serde_json::from_str(&cli(
        &lab,
        &[
            "rollout",
            "start",
            "--group",
            "signed",
            "--stream",
            "uki",
            "--to",
            "2",
            "--canary",
            "1",
            "--steps",
            "100%",
            "--timeout",
            "5m",
            "--require",
            "secureboot=1",
            "-o",
            "json",
        ],
    ))
    .unwrap();
    let id = r["id"].as_i64().expect("rollout id");
    let canary = r["waves"][0]["machines"][0]["mac"]
        .as_str()
        .expect("canary")
        .to_string();
    let tap = macs
        .iter()
        .find(|(m, _)| *m == canary)
        .expect("a lab machine")
        .1;
    wait_lines(&hook, 1);
    let vm = start_secure(&lab, "e-canary-changed", tap, &canary, VARS_TEST_KEY, true);
    wait_refused(vm, REFUSED);
    // Silent past confirm_timeout: a failed boot, the gate fails, back to 1.
    let deadline = Instant::now() + Duration::from_secs(120);
    let r = loop {
        let r = api.ok(&format!("/api/v1/rollouts/{id}"));
        if r["state"] != "running" || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(r["state"], "rolled_back", "{r:#}");
    let boots = api.ok(&format!("/api/v1/machines/{canary}/boots"));
    let failed = boots["boots"]
        .as_array()
        .unwrap()
        .iter()
        .any(|b| b["generation"] == 2 && b["state"] == "failed");
    assert!(failed, "the refused boot counts as failed: {boots:#}");
    let mut vm = start_secure(&lab, "e-canary-back", tap, &canary, VARS_TEST_KEY, true);
    wait_confirmed(&mut vm, &["EFI stub: UEFI Secure Boot is enabled."]);
    let m = machine(&api, &canary);
    assert_eq!(
        m["current"],
        gen_ref("uki", 1),
        "back on the good image: {m:#}"
    );
    eprintln!(
        "e2e-secureboot: (e) rollout to a changed image rolled back and the canary rebooted into gen 1 in {}",
        secs(started.elapsed())
    );
    eprintln!("e2e-secureboot: total {}", secs(total.elapsed()));
}

/// `image import --stream STREAM --uki FILE` (with `--verify-cert CERT`
/// when given): the generation number, or the CLI's failure.
fn import_uki(lab: &Lab, stream: &str, file: &Path, cert: Option<&str>) -> Result<i64, String> {
    let data = lab.dir.join("data");
    let mut args = vec![
        lab.bin.to_str().unwrap(),
        "image",
        "import",
        "--stream",
        stream,
        "--uki",
        file.to_str().unwrap(),
        "--server",
        BASE,
        "--data-dir",
        data.to_str().unwrap(),
    ];
    if let Some(cert) = cert {
        args.extend(["--verify-cert", cert]);
    }
    let out = lab.exec_output(&lab.ns, 60, &args);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    match (out.status.success(), text.split_whitespace().nth(1)) {
        (true, Some(n)) => n.parse().map_err(|_| text.clone()),
        _ => Err(text),
    }
}

/// Makes `mac` known to the server before its first boot (so the fleet
/// file can label it): one PXE-classed DHCP exchange from the client
/// namespace, whose veth then gets its own MAC back.
fn register(lab: &Lab, mac: &str) {
    let leased = lab.udhcpc_with(mac, &["-V", "PXEClient:Arch:00007:UNDI:003000"]);
    assert!(leased.is_ok(), "registering {mac} by DHCP: {leased:?}");
    let cns = lab.cns.clone();
    lab.ip(&["-n", &cns, "link", "set", "vcl", "down"]);
    lab.ip(&[
        "-n",
        &cns,
        "link",
        "set",
        "vcl",
        "address",
        "02:00:00:e2:e0:01",
    ]);
    lab.ip(&["-n", &cns, "link", "set", "vcl", "up"]);
}

/// Waits (20 s at most) for the reboot hook to have been run `n` times.
fn wait_lines(file: &Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if text.lines().count() >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the reboot hook ran {} of {n} times:\n{text}",
            text.lines().count()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
