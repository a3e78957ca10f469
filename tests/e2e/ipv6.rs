//! End-to-end IPv6-only network boot: a bridge whose namespace has no IPv4
//! address and drops every IPv4 and ARP frame (ebtables), ironboot with
//! DHCP off and DHCPv6 + managed router advertisements on, and real
//! firmware under TCG:
//!
//! - (a) OVMF PXEv6 (its IPv4 stack off, no option ROM): DHCPv6 with
//!   option 59 `tftp://[fd00:77::1]/ipxe.efi`, TFTP over IPv6, iPXE's own
//!   DHCPv6, `boot.ipxe` and the per-machine script over
//!   `http://[fd00:77::1]:8080`, the live OS (SLAAC) fetches its seed and
//!   confirms over IPv6;
//! - (b) SeaBIOS with QEMU's iPXE ROM: DHCPv6 (the RA's M flag), the script
//!   URL, the live OS, confirmation;
//! - (c) OVMF HTTPv6, the 2022 workaround: with `dhcp6.pxe_bootfile =
//!   false` PXEv6 gets an address and no boot file, OVMF moves on to HTTPv6
//!   (option 16 `HTTPClient` back, `ipxe.efi` over HTTP), then as (a).
//!
//! Each machine is one record keyed by its MAC (learnt from its link-local
//! address: OVMF's and iPXE's DUIDs say nothing of it); its address is an
//! IPv6 one; a capture on the bridge shows no IPv4 frame from the server.
//!
//! Run with `IRONBOOT_E2E=require cargo test --test e2e ipv6:: -- --nocapture`.

use std::time::{Duration, Instant};

use crate::lab::*;

const TEST: &str = "ipv6_only_network_boots_pxev6_bios_ipxe_and_httpv6_to_confirmation";
const STREAM: &str = "live";
const CMDLINE: &str = "console=ttyS0,115200n8";
const BASE6: &str = "http://[fd00:77::1]:8080";
const PXE6_MAC: &str = "52:54:00:00:e6:01";
const BIOS_MAC: &str = "52:54:00:00:e6:02";
const HTTP6_MAC: &str = "52:54:00:00:e6:03";

/// The DHCPv6 steps the server recorded for `mac`, in order, with the MAC
/// source of each.
fn dhcp6_steps(lab: &Lab, mac: &str) -> Vec<(String, String)> {
    lab.query(
        "SELECT step, detail FROM events WHERE mac = $1 AND step LIKE 'dhcp6.%' ORDER BY id",
        &[mac],
    )
    .into_iter()
    .map(|r| {
        let detail: serde_json::Value =
            serde_json::from_str(r[1].as_deref().unwrap_or("{}")).unwrap_or_default();
        (
            r[0].clone().unwrap_or_default(),
            detail["mac_from"].as_str().unwrap_or("").to_string(),
        )
    })
    .collect()
}

fn assert_ipv6_machine(lab: &Lab, api: &Api, mac: &str, arch: &str, booted: &Booted, vm: &Vm) {
    let m = assert_confirmed(api, mac, STREAM, 1, arch);
    let ip = m["ip"].as_str().unwrap_or_default();
    assert!(
        ip.starts_with("fd00:77::"),
        "{mac}: the machine is known at an IPv6 address of the boot prefix: {m:#}"
    );
    assert!(
        booted
            .serial
            .contains(&format!("ds=nocloud-net;s={BASE6}/config/")),
        "{mac}: the seed URL is IPv6\n{}",
        tail(&vm.serial, 30)
    );
    let steps = dhcp6_steps(lab, mac);
    assert!(
        steps.iter().any(|(s, _)| s == "dhcp6.reply")
            && steps.iter().all(|(_, from)| from == "link_local" || from == "duid"),
        "{mac}: DHCPv6 exchanges, each with the MAC from the link-local address or a DUID-LL/LLT: {steps:?}"
    );
    let list = api.ok("/api/v1/machines");
    let records = list["machines"]
        .as_array()
        .map(|a| a.iter().filter(|x| x["mac"] == mac).count())
        .unwrap_or(0);
    assert_eq!(records, 1, "one record for {mac}");
}

#[test]
fn ipv6_only_network_boots_pxev6_bios_ipxe_and_httpv6_to_confirmation() {
    let turn = Turn::wait(TEST);
    let Some(tools) = tools_or_skip(TEST) else {
        return;
    };
    let curl = match extra_requirements() {
        Ok(curl) => curl,
        Err(reason) => return skip(TEST, &reason),
    };
    if let Err(reason) = ipv6_requirements() {
        return skip(TEST, &reason);
    }
    let os = match build_liveos(&tools.timeout) {
        Ok(os) => os,
        Err(reason) => return skip(TEST, &reason),
    };
    let started = Instant::now();
    let mut lab = Lab::new_ipv6_only(tools, "ipv6", 2, turn);
    let pcap = lab.dir.join("br0.pcap");
    let mut capture = lab.capture("br0", &pcap);
    lab.start_server(&ipxe_dir());
    let api = Api::new(&lab, curl.clone());
    import(&lab, &os, STREAM, CMDLINE, &[]);
    cli(&lab, &["group", "set-generation", "default", STREAM, "1"]);

    // (a) and (b) at once.
    let mut pxe6 = lab.start_vm_with("pxe6", "tap0", PXE6_MAC, Firmware::UefiIpv6, 512);
    let mut bios = lab.start_vm_with("bios6", "tap1", BIOS_MAC, Firmware::BiosIpxeRom, 256);
    let a = wait_booted_at(&mut pxe6, PXE6_MAC, STREAM, 1, CMDLINE, BASE6);
    let b = wait_booted_at(&mut bios, BIOS_MAC, STREAM, 1, CMDLINE, BASE6);
    assert_ipv6_machine(&lab, &api, PXE6_MAC, "efi-x64", &a, &pxe6);
    assert_ipv6_machine(&lab, &api, BIOS_MAC, "bios", &b, &bios);
    eprintln!(
        "e2e-ipv6: OVMF PXEv6 and SeaBIOS iPXE, booted at once, both confirmed within {}",
        secs(a.phone_home.max(b.phone_home))
    );

    // (c) the HTTPv6 workaround, after a restart that keeps every lease.
    drop(api);
    lab.stop_server_cleanly();
    lab.dhcp6_extra = "pxe_bootfile = false".into();
    lab.start_server(&ipxe_dir());
    let api = Api::new(&lab, curl);
    let mut http6 = lab.start_vm_with("http6", "tap0", HTTP6_MAC, Firmware::UefiIpv6, 512);
    let c = wait_booted_at(&mut http6, HTTP6_MAC, STREAM, 1, CMDLINE, BASE6);
    assert!(
        c.serial.contains("HTTP Boot") || c.serial.contains("Start HTTP"),
        "OVMF took the HTTPv6 path\n{}",
        tail(&http6.serial, 40)
    );
    let steps = dhcp6_steps(&lab, HTTP6_MAC);
    assert!(!steps.is_empty());
    assert_ipv6_machine(&lab, &api, HTTP6_MAC, "efi-x64", &c, &http6);
    eprintln!("e2e-ipv6: OVMF HTTPv6 confirmed at {}", secs(c.phone_home));

    drop(api);
    lab.stop_server_cleanly();
    capture.stop(Duration::from_secs(5));
    let v4 = ipv4_frames(&pcap);
    assert_eq!(v4, 0, "no IPv4 frame from the server on the boot bridge");
    eprintln!("e2e-ipv6: total {}", secs(started.elapsed()));
}
