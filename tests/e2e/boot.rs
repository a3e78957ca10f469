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
//! `tests/e2e/lab`, shared with the other VM tests. Missing requirements
//! skip the test with the reason, unless `IRONBOOT_E2E=require`, where they
//! (and a failed live OS build) fail it. Run with
//! `IRONBOOT_E2E=require cargo test --test e2e boot:: -- --nocapture`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::lab::*;

const TEST: &str = "live_boot_real_vms_to_phone_home_and_roll_forward";
const STREAM: &str = "live";
const GEN1_CMDLINE: &str = "console=ttyS0,115200n8";
/// Same kernel and initrd, another command line: a new image digest.
const GEN2_CMDLINE: &str = "console=ttyS0,115200n8 ironboot.test=gen2";
const UEFI_ROM_MAC: &str = "52:54:00:00:b0:02";
const UEFI_PXE_MAC: &str = "52:54:00:00:b0:03";
const UEFI_HTTP_MAC: &str = "52:54:00:00:b0:04";
/// What ironboot offers a UEFI HTTP boot client (README: `/ipxe/<binary>`).
const IPXE_EFI_URL: &str = "http://10.77.0.1:8080/ipxe/ipxe.efi";
const BIOS_MB: u32 = 256;
const UEFI_MB: u32 = 512;

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
        "SELECT detail FROM events WHERE mac = $1 AND step = 'dhcp.offer' ORDER BY id",
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
    assert_confirmed(api, UEFI_HTTP_MAC, STREAM, 1, "efi-x64");
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
    let turn = Turn::wait(TEST);
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
    let mut lab = Lab::new(tools, "boot", 4, turn);
    lab.start_server(&ipxe_dir());
    let api = Api::new(&lab, curl);
    let (gen1, digest1) = import(&lab, &os, STREAM, GEN1_CMDLINE, &[]);
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
            .map(|(vm, mac)| s.spawn(move || wait_booted(vm, mac, STREAM, 1, GEN1_CMDLINE)))
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
    assert_confirmed(&api, RESERVED_MAC, STREAM, 1, "bios");
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
    assert_confirmed(&api, UEFI_ROM_MAC, STREAM, 1, "efi-x64");
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
    assert_confirmed(&api, UEFI_PXE_MAC, STREAM, 1, "efi-x64");
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
        assert_eq!(m["current"], gen_ref(STREAM, 1), "{m:#}");
        assert_eq!(m["last_good"], gen_ref(STREAM, 1), "{m:#}");
    }
    for vm in vms {
        vm.stop();
    }
    timings.push(("(a)+(b)+(c)+(e) at once, wall".into(), parallel));

    // (d) generation 2, the group moves, (a)'s machine boots it ---------------
    let started = Instant::now();
    let (gen2, digest2) = import(&lab, &os, STREAM, GEN2_CMDLINE, &[]);
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
    let d = wait_booted(&mut vm, RESERVED_MAC, STREAM, 2, GEN2_CMDLINE);
    vm.stop();
    let m = assert_confirmed(&api, RESERVED_MAC, STREAM, 2, "bios");
    assert_eq!(m["last_good"], gen_ref(STREAM, 2), "{m:#}");
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
    lab.stop_server_cleanly();

    timings.push(("total".into(), total.elapsed()));
    eprintln!("e2e-boot timings:");
    for (case, d) in &timings {
        eprintln!("  {case:<45} {}", secs(*d));
    }
}
