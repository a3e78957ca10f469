//! End-to-end: `ironboot serve` in full DHCP mode on a bridge inside a
//! network namespace this test creates, against real clients.
//!
//! - (a) a BIOS VM with QEMU's iPXE ROM gets its reserved address and the
//!   iPXE script URL;
//! - (b) an OVMF VM without an iPXE ROM (the firmware's own PXE, arch 7)
//!   loads `ipxe.efi` over TFTP, and that iPXE asks again and chains to the
//!   script URL;
//! - (c) three BIOS VMs at once get distinct addresses and no DHCPNAK;
//! - (d) busybox `udhcpc` (no PXE options) with the MAC of a machine that
//!   PXE-booted gets the same address again; an unknown MAC gets nothing;
//! - (e) atftp (blksize, windowsize, tsize) and tftp-hpa download
//!   `undionly.kpxe` byte for byte.
//!
//! No generation is imported here, so every iPXE ends with a "nothing to
//! boot" script: the serial-log line of iPXE fetching `/boot.ipxe` is the
//! proof the DHCP/TFTP chain worked (`boot` boots for real).
//!
//! The namespaces, bridge, taps, processes and VMs come from `tests/e2e/lab`
//! (shared with the other VM tests): nothing touches the root namespace,
//! every process is stopped by PID, the namespaces are deleted by a drop
//! guard, panic or not.
//!
//! Needs root, iproute2, qemu-system-x86_64, OVMF, Debian's `ipxe`,
//! busybox, atftp and tftp-hpa. Missing any, the test prints why and passes
//! as skipped, unless `IRONBOOT_E2E=require`, where it fails. Run with
//! `IRONBOOT_E2E=require cargo test --test e2e full:: -- --nocapture`.
//! Under TCG on two cores the whole run takes about a minute.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::lab::*;

/// iPXE without a router advertisement waits 10–13 s for one inside
/// `Configuring (net0 …)`; with ironboot's RA the whole DHCP + IPv6 step
/// takes a second or two even under TCG.
const MAX_CONFIGURING: Duration = Duration::from_secs(7);

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

#[test]
fn full_dhcp_mode_boots_real_clients() {
    let turn = Turn::wait("full_dhcp_mode_boots_real_clients");
    let Some(tools) = tools_or_skip("full_dhcp_mode_boots_real_clients") else {
        return;
    };
    let total = Instant::now();
    let mut timings: Vec<(&str, Duration)> = Vec::new();
    let mut lab = Lab::new(tools, "full", 5, turn);
    let ipxe = ipxe_dir();
    let t = lab.start_server(&ipxe);
    eprintln!(
        "e2e: namespaces {} / {}; server up in {}",
        lab.ns,
        lab.cns,
        secs(t)
    );
    timings.push(("setup + server start", total.elapsed()));

    let banner = read_clean(&lab.server_log());
    for line in [
        "dhcp full mode on",
        "ipv6 router advertisement on br0",
        "tftp on 10.77.0.1:69",
        "boot script for iPXE clients: http://10.77.0.1:8080/boot.ipxe",
    ] {
        assert!(banner.contains(line), "banner lacks {line:?}:\n{banner}");
    }

    // (a) BIOS, QEMU's iPXE ROM, reserved MAC -------------------------------
    let started = Instant::now();
    let mut vm = lab.start_vm("a-bios", "tap0", RESERVED_MAC, false);
    let fetch = format!("{BOOT_URL}...");
    let at = vm.wait_markers(
        &["Configuring (net0", "Filename: ", &fetch],
        Duration::from_secs(90),
    );
    let serial = vm.text();
    let configuring = at[1].saturating_sub(at[0]);
    eprintln!(
        "e2e (a) BIOS iPXE ROM: chained to {BOOT_URL} at {} (Configuring took {})",
        secs(at[2]),
        secs(configuring)
    );
    assert_eq!(
        ipxe_address(&serial).as_deref(),
        Some(RESERVED_IP),
        "reserved address\n{}",
        tail(&vm.serial, 20)
    );
    assert!(
        serial.contains(&format!("Filename: {BOOT_URL}")),
        "{}",
        tail(&vm.serial, 20)
    );
    assert!(
        configuring < MAX_CONFIGURING,
        "iPXE's DHCP + IPv6 step took {} (the router advertisement did not end its wait?)\n{}",
        secs(configuring),
        tail(&vm.serial, 20)
    );
    vm.stop();
    lab.wait_rows(
        "(a) lease bound for the reserved MAC",
        "SELECT mac, state FROM leases WHERE ip = $1",
        &[RESERVED_IP],
        |r| {
            r.len() == 1
                && r[0][0].as_deref() == Some(RESERVED_MAC)
                && r[0][1].as_deref() == Some("bound")
        },
    );
    lab.wait_rows(
        "(a) machine recorded as a BIOS iPXE client",
        "SELECT arch, firmware, user_class FROM machines WHERE mac = $1",
        &[RESERVED_MAC],
        |r| {
            r.len() == 1 && r[0][0].as_deref() == Some("bios") && r[0][1].as_deref() == Some("ipxe")
        },
    );
    lab.wait_rows(
        "(a) dhcp.ack for the reserved address",
        "SELECT ip FROM events WHERE mac = $1 AND step = 'dhcp.ack'",
        &[RESERVED_MAC],
        |r| !r.is_empty() && r.iter().all(|row| row[0].as_deref() == Some(RESERVED_IP)),
    );
    timings.push(("(a) BIOS iPXE ROM", started.elapsed()));

    // (b) UEFI, OVMF's own PXE → ipxe.efi over TFTP → iPXE → script URL -----
    let started = Instant::now();
    let uefi_mac = "52:54:00:00:00:11";
    let mut vm = lab.start_vm("b-uefi", "tap1", uefi_mac, true);
    let at = vm.wait_markers(
        &[
            "NBP filename is ipxe.efi",
            "Configuring (net0",
            "Filename: ",
            &fetch,
        ],
        Duration::from_secs(120),
    );
    let serial = vm.text();
    let configuring = at[2].saturating_sub(at[1]);
    eprintln!(
        "e2e (b) UEFI PXE: NBP offered at {}, iPXE configuring at {}, chained at {} (Configuring took {})",
        secs(at[0]),
        secs(at[1]),
        secs(at[3]),
        secs(configuring)
    );
    assert!(
        !serial.contains("Start HTTP Boot") && !serial.contains("PXE-E"),
        "OVMF's PXE failed and it fell through to another boot option\n{}",
        tail(&vm.serial, 30)
    );
    assert!(
        serial.contains(&format!("Filename: {BOOT_URL}")),
        "{}",
        tail(&vm.serial, 20)
    );
    let uefi_ip = ipxe_address(&serial).expect("iPXE printed its address");
    assert!(in_pool(&uefi_ip), "{uefi_ip} not from the pool");
    assert!(
        configuring < MAX_CONFIGURING,
        "iPXE's DHCP + IPv6 step took {}\n{}",
        secs(configuring),
        tail(&vm.serial, 20)
    );
    vm.stop();
    let efi_size = fs::metadata(Path::new(IPXE_DIR).join("ipxe.efi"))
        .unwrap()
        .len();
    let rows = lab.wait_rows(
        "(b) tftp.complete of ipxe.efi",
        "SELECT detail, bytes, ip FROM events WHERE mac = $1 AND step = 'tftp.complete'",
        &[uefi_mac],
        |r| !r.is_empty(),
    );
    let detail: serde_json::Value = serde_json::from_str(rows[0][0].as_deref().unwrap()).unwrap();
    assert_eq!(detail["file"], "ipxe.efi", "{detail}");
    assert_eq!(rows[0][1].as_deref(), Some(efi_size.to_string().as_str()));
    assert_eq!(rows[0][2].as_deref(), Some(uefi_ip.as_str()));
    // The two DHCP conversations: firmware PXE told to load ipxe.efi over
    // TFTP, then that iPXE told the script URL.
    let offers = lab.query(
        "SELECT detail FROM events WHERE mac = $1 AND step = 'dhcp.ack' ORDER BY id",
        &[uefi_mac],
    );
    let boots: Vec<String> = offers
        .iter()
        .map(|r| {
            let d: serde_json::Value = serde_json::from_str(r[0].as_deref().unwrap()).unwrap();
            format!(
                "{}:{}",
                d["bootfile"]["via"].as_str().unwrap_or("-"),
                d["bootfile"]["file"].as_str().unwrap_or("-")
            )
        })
        .collect();
    assert!(
        boots.first().map(String::as_str) == Some("tftp:ipxe.efi")
            && boots.last() == Some(&format!("http:{BOOT_URL}")),
        "DHCPACKs to the UEFI machine: {boots:?}"
    );
    lab.wait_rows(
        "(b) machine recorded (x64 UEFI, last seen as iPXE)",
        "SELECT arch, firmware FROM machines WHERE mac = $1",
        &[uefi_mac],
        |r| {
            r.len() == 1
                && r[0][0].as_deref() == Some("efi-x64")
                && r[0][1].as_deref() == Some("ipxe")
        },
    );
    lab.wait_rows(
        "(b) lease bound",
        "SELECT ip, state FROM leases WHERE mac = $1",
        &[uefi_mac],
        |r| {
            r.len() == 1
                && r[0][0].as_deref() == Some(uefi_ip.as_str())
                && r[0][1].as_deref() == Some("bound")
        },
    );
    timings.push((
        "(b) UEFI PXE -> ipxe.efi over TFTP -> iPXE",
        started.elapsed(),
    ));

    // (c) three BIOS VMs at once -------------------------------------------
    let started = Instant::now();
    let macs = [
        "52:54:00:00:0c:01",
        "52:54:00:00:0c:02",
        "52:54:00:00:0c:03",
    ];
    let mut vms: Vec<Vm> = macs
        .iter()
        .enumerate()
        .map(|(i, mac)| lab.start_vm(&format!("c-bios{i}"), &format!("tap{}", i + 2), mac, false))
        .collect();
    let mut storm_ips = Vec::new();
    for vm in vms.iter_mut() {
        let at = vm.wait_markers(&["Filename: ", &fetch], Duration::from_secs(150));
        let ip = ipxe_address(&vm.text()).expect("iPXE printed its address");
        eprintln!("e2e (c) {} got {ip}, chained at {}", vm.name, secs(at[1]));
        storm_ips.push(ip);
    }
    for vm in vms {
        vm.stop();
    }
    let mut distinct = storm_ips.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        3,
        "three VMs, three addresses: {storm_ips:?}"
    );
    for ip in &storm_ips {
        assert!(in_pool(ip), "{ip} not from the pool");
        assert_ne!(ip, &uefi_ip, "{ip} was already leased to the UEFI machine");
    }
    for (mac, ip) in macs.iter().zip(&storm_ips) {
        lab.wait_rows(
            "(c) lease bound",
            "SELECT ip, state FROM leases WHERE mac = $1",
            &[mac],
            |r| {
                r.len() == 1
                    && r[0][0].as_deref() == Some(ip.as_str())
                    && r[0][1].as_deref() == Some("bound")
            },
        );
    }
    let naks = lab.query(
        "SELECT mac, detail FROM events WHERE step = 'dhcp.nak'",
        &[],
    );
    assert!(naks.is_empty(), "DHCPNAKs sent: {naks:?}");
    timings.push(("(c) 3 BIOS VMs at once", started.elapsed()));

    // (d) a live OS's DHCP client, no PXE options ---------------------------
    let started = Instant::now();
    let again = lab
        .udhcpc(uefi_mac)
        .unwrap_or_else(|out| panic!("udhcpc as the UEFI machine got no lease:\n{out}"));
    assert_eq!(
        again, uefi_ip,
        "a machine that PXE-booted keeps its address"
    );
    let again = lab
        .udhcpc(RESERVED_MAC)
        .unwrap_or_else(|out| panic!("udhcpc as the reserved machine got no lease:\n{out}"));
    assert_eq!(again, RESERVED_IP);
    let ignored_before = metric(&lab.metrics(), "dhcp_ignored");
    let unknown = format!(
        "52:54:00:ee:{:02x}:{:02x}",
        std::process::id() & 0xff,
        (std::process::id() >> 8) & 0xff
    );
    match lab.udhcpc(&unknown) {
        Ok(ip) => panic!("unknown non-PXE client {unknown} was given {ip}"),
        Err(out) => assert!(out.contains("no lease"), "udhcpc output:\n{out}"),
    }
    let ignored = metric(&lab.metrics(), "dhcp_ignored") - ignored_before;
    assert!(
        ignored >= 3,
        "3 DISCOVERs from {unknown}, {ignored} counted as ignored"
    );
    let rows = lab.query("SELECT ip FROM leases WHERE mac = $1", &[&unknown]);
    assert!(rows.is_empty(), "unknown client has a lease: {rows:?}");
    eprintln!("e2e (d) udhcpc: {uefi_mac} -> {uefi_ip} again, {RESERVED_MAC} -> {RESERVED_IP}, {unknown} -> no answer");
    timings.push(("(d) udhcpc known / unknown", started.elapsed()));

    // (e) atftp and tftp-hpa from the client namespace ----------------------
    let started = Instant::now();
    lab.ip(&["-n", &lab.cns, "addr", "add", "10.77.0.9/24", "dev", "vcl"]);
    let want = fs::read(Path::new(IPXE_DIR).join("undionly.kpxe")).unwrap();
    let via_atftp = lab.dir.join("atftp.kpxe");
    let via_hpa = lab.dir.join("tftp-hpa.kpxe");
    let (ok, out) = lab.exec(
        &lab.cns,
        30,
        &[
            lab.tools.atftp.to_str().unwrap(),
            "--option",
            "blksize 1468",
            "--option",
            "windowsize 8",
            "--option",
            "tsize",
            "-g",
            "-r",
            "undionly.kpxe",
            "-l",
            via_atftp.to_str().unwrap(),
            SERVER_IP,
        ],
    );
    assert!(ok, "atftp failed:\n{out}");
    assert!(
        fs::read(&via_atftp).unwrap() == want,
        "atftp's copy differs"
    );
    let (ok, out) = lab.exec(
        &lab.cns,
        30,
        &[
            lab.tools.tftp.to_str().unwrap(),
            "-m",
            "binary",
            SERVER_IP,
            "-c",
            "get",
            "undionly.kpxe",
            via_hpa.to_str().unwrap(),
        ],
    );
    assert!(ok, "tftp-hpa failed:\n{out}");
    assert!(
        fs::read(&via_hpa).unwrap() == want,
        "tftp-hpa's copy differs"
    );
    let rows = lab.wait_rows(
        "(e) two tftp.complete events for the client",
        "SELECT detail, bytes FROM events WHERE ip = '10.77.0.9' AND step = 'tftp.complete' ORDER BY id",
        &[],
        |r| r.len() == 2,
    );
    let atftp_detail: serde_json::Value =
        serde_json::from_str(rows[0][0].as_deref().unwrap()).unwrap();
    assert_eq!(atftp_detail["blksize"], 1468, "{atftp_detail}");
    assert_eq!(atftp_detail["windowsize"], 8, "{atftp_detail}");
    for r in &rows {
        assert_eq!(r[1].as_deref(), Some(want.len().to_string().as_str()));
    }
    eprintln!(
        "e2e (e) atftp (blksize 1468, windowsize 8) and tftp-hpa: {} bytes each, identical",
        want.len()
    );
    timings.push(("(e) atftp + tftp-hpa", started.elapsed()));

    // Counters and a clean stop ---------------------------------------------
    let m = lab.metrics();
    let mut summary = String::new();
    for name in [
        "dhcp_received",
        "dhcp_replies",
        "dhcp_malformed",
        "dhcp_naks",
        "dhcp_ignored",
        "ra_sent",
        "tftp_completed",
        "tftp_failed",
    ] {
        let _ = write!(summary, "{name}={} ", metric(&m, name));
    }
    eprintln!("e2e metrics: {summary}");
    assert!(metric(&m, "dhcp_replies") > 0, "{summary}");
    assert_eq!(metric(&m, "dhcp_malformed"), 0, "{summary}");
    assert_eq!(metric(&m, "dhcp_naks"), 0, "{summary}");
    assert_eq!(metric(&m, "dhcp_send_errors"), 0, "{summary}");
    assert!(metric(&m, "ra_sent") > 0, "{summary}");
    assert!(metric(&m, "tftp_completed") >= 3, "{summary}");

    if let Some(pool) = lab.db.take() {
        lab.rt.block_on(pool.close());
    }
    let status = lab.server.as_mut().unwrap().stop(Duration::from_secs(15));
    let log = read_clean(&lab.server_log());
    assert!(
        matches!(status, Some(s) if s.success()),
        "ironboot did not stop cleanly on SIGTERM ({status:?})\n{}",
        tail(&lab.server_log(), 30)
    );
    assert!(!log.contains("panicked"), "{}", tail(&lab.server_log(), 40));
    lab.server = None;

    timings.push(("total", total.elapsed()));
    eprintln!("e2e timings:");
    for (case, d) in &timings {
        eprintln!("  {case:<45} {}", secs(*d));
    }
}

/// Debian installs `/usr/lib/ipxe/ipxe.efi` as a symlink to
/// `/boot/ipxe.efi`. With the default `tftp.ipxe_dir = "/usr/lib/ipxe"`,
/// ironboot once refused it over TFTP ("access violation", found by the
/// UEFI case), so every plain UEFI PXE client failed. The configured boot
/// files are now served by name; this keeps it that way.
#[test]
fn tftp_serves_debian_ipxe_dir_as_installed() {
    let turn = Turn::wait("tftp_serves_debian_ipxe_dir_as_installed");
    let Some(tools) = tools_or_skip("tftp_serves_debian_ipxe_dir_as_installed") else {
        return;
    };
    let mut lab = Lab::new(tools, "symlink", 0, turn);
    lab.start_server(Path::new(IPXE_DIR));
    lab.ip(&["-n", &lab.cns, "addr", "add", "10.77.0.9/24", "dev", "vcl"]);
    let got = lab.dir.join("ipxe.efi");
    let (ok, out) = lab.exec(
        &lab.cns,
        30,
        &[
            lab.tools.atftp.to_str().unwrap(),
            "--option",
            "blksize 1468",
            "-g",
            "-r",
            "ipxe.efi",
            "-l",
            got.to_str().unwrap(),
            SERVER_IP,
        ],
    );
    assert!(ok, "atftp ipxe.efi from {IPXE_DIR} failed:\n{out}");
    let want = fs::read(Path::new(IPXE_DIR).join("ipxe.efi")).unwrap();
    assert!(fs::read(&got).unwrap() == want, "copy differs");
}
