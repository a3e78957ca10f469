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
//! The same three twice: on the server's own link (the MAC learnt from the
//! link-local address or a DUID-LLT, the live OS's SLAAC address bound by
//! the kernel's neighbour entry), and behind a DHCPv6 relay (dnsmasq's, on
//! another link, fd00:88::/64, with radvd advertising it; the MAC from the
//! relay's option 79, addresses from that link's `[[dhcp6.subnet]]`, the
//! live OS's SLAAC address bound by its iPXE's lease on that link).
//! Each machine is one record; a capture on the server's bridge shows no
//! IPv4 frame from the server.
//!
//! Run with `IRONBOOT_E2E=require cargo test --test e2e ipv6:: -- --nocapture`.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::lab::*;

const STREAM: &str = "live";
const CMDLINE: &str = "console=ttyS0,115200n8";
const BASE6: &str = "http://[fd00:77::1]:8080";

/// Where the machines are and what the server should have learnt.
struct Link {
    /// Tag for VM names and logs.
    name: &'static str,
    /// The taps of the two VMs booted at once.
    taps: [&'static str; 2],
    /// MACs of (a), (b), (c).
    macs: [&'static str; 3],
    /// The prefix the machines' addresses are in.
    prefix: &'static str,
    /// The MAC sources every `dhcp6.*` event of the machines may name.
    mac_from: &'static [&'static str],
}

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

fn assert_ipv6_machine(lab: &Lab, api: &Api, link: &Link, mac: &str, arch: &str, vm: &Vm) {
    let m = assert_confirmed(api, mac, STREAM, 1, arch);
    let ip = m["ip"].as_str().unwrap_or_default();
    assert!(
        ip.starts_with(link.prefix),
        "{mac}: the machine is known at an address of {}: {m:#}",
        link.prefix
    );
    let steps = dhcp6_steps(lab, mac);
    assert!(
        steps.iter().any(|(s, _)| s == "dhcp6.reply")
            && steps
                .iter()
                .all(|(_, from)| link.mac_from.contains(&from.as_str())),
        "{mac}: DHCPv6 exchanges, each naming the MAC from {:?}: {steps:?}\n{}",
        link.mac_from,
        tail(&vm.serial, 20)
    );
    let list = api.ok("/api/v1/machines");
    let records = list["machines"]
        .as_array()
        .map(|a| a.iter().filter(|x| x["mac"] == mac).count())
        .unwrap_or(0);
    assert_eq!(records, 1, "one record for {mac}");
}

/// (a) and (b) at once, then (c) after a restart with `pxe_bootfile =
/// false` (leases kept); each confirmed over IPv6.
fn boot_three(lab: &mut Lab, curl: &Path, os: &LiveOs, link: &Link) {
    lab.start_server(&ipxe_dir());
    let api = Api::new(lab, curl.to_path_buf());
    import(lab, os, STREAM, CMDLINE, &[]);
    cli(lab, &["group", "set-generation", "default", STREAM, "1"]);
    let [pxe_mac, bios_mac, http_mac] = link.macs;
    let mut pxe6 = lab.start_vm_with(
        &format!("{}-pxe6", link.name),
        link.taps[0],
        pxe_mac,
        Firmware::UefiIpv6,
        512,
    );
    let mut bios = lab.start_vm_with(
        &format!("{}-bios", link.name),
        link.taps[1],
        bios_mac,
        Firmware::BiosIpxeRom,
        256,
    );
    let a = wait_booted_at(&mut pxe6, pxe_mac, STREAM, 1, CMDLINE, BASE6);
    let b = wait_booted_at(&mut bios, bios_mac, STREAM, 1, CMDLINE, BASE6);
    assert_ipv6_machine(lab, &api, link, pxe_mac, "efi-x64", &pxe6);
    assert_ipv6_machine(lab, &api, link, bios_mac, "bios", &bios);
    eprintln!(
        "e2e-ipv6 ({}): OVMF PXEv6 and SeaBIOS iPXE, booted at once, both confirmed within {}",
        link.name,
        secs(a.phone_home.max(b.phone_home))
    );

    drop(api);
    lab.stop_server_cleanly();
    lab.dhcp6_extra = format!("pxe_bootfile = false\n{}", lab.dhcp6_extra);
    lab.start_server(&ipxe_dir());
    let api = Api::new(lab, curl.to_path_buf());
    let mut http6 = lab.start_vm_with(
        &format!("{}-http6", link.name),
        link.taps[0],
        http_mac,
        Firmware::UefiIpv6,
        512,
    );
    let c = wait_booted_at(&mut http6, http_mac, STREAM, 1, CMDLINE, BASE6);
    assert!(
        c.serial.contains("HTTP Boot") || c.serial.contains("Start HTTP"),
        "OVMF took the HTTPv6 path\n{}",
        tail(&http6.serial, 40)
    );
    assert_ipv6_machine(lab, &api, link, http_mac, "efi-x64", &http6);
    eprintln!(
        "e2e-ipv6 ({}): OVMF HTTPv6 confirmed at {}",
        link.name,
        secs(c.phone_home)
    );
    drop(api);
    lab.stop_server_cleanly();
}

/// The lab and what the test needs, or `None` (skipped, with the reason).
fn setup(test: &str, tag: &str, taps: usize) -> Option<(Lab, std::path::PathBuf, LiveOs)> {
    let turn = Turn::wait(test);
    let tools = tools_or_skip(test)?;
    let curl = match extra_requirements() {
        Ok(curl) => curl,
        Err(reason) => {
            skip(test, &reason);
            return None;
        }
    };
    if let Err(reason) = ipv6_requirements() {
        skip(test, &reason);
        return None;
    }
    let os = match build_liveos(&tools.timeout) {
        Ok(os) => os,
        Err(reason) => {
            skip(test, &reason);
            return None;
        }
    };
    Some((Lab::new_ipv6_only(tools, tag, taps, turn), curl, os))
}

#[test]
fn ipv6_only_network_boots_pxev6_bios_ipxe_and_httpv6_to_confirmation() {
    let test = "ipv6_only_network_boots_pxev6_bios_ipxe_and_httpv6_to_confirmation";
    let Some((mut lab, curl, os)) = setup(test, "ipv6", 2) else {
        return;
    };
    let started = Instant::now();
    let pcap = lab.dir.join("br0.pcap");
    let mut capture = lab.capture("br0", &pcap);
    let link = Link {
        name: "link",
        taps: ["tap0", "tap1"],
        macs: [
            "52:54:00:00:e6:01",
            "52:54:00:00:e6:02",
            "52:54:00:00:e6:03",
        ],
        prefix: "fd00:77::",
        // OVMF without an SMBIOS UUID sends a DUID-LLT; iPXE's all-zero
        // DUID-UUID names nobody: the kernel's neighbour entry for its
        // link-local address does (once there is one), else its EUI-64.
        mac_from: &["link_local", "duid", "ethernet"],
    };
    boot_three(&mut lab, &curl, &os, &link);
    capture.stop(Duration::from_secs(5));
    assert_eq!(
        ipv4_frames(&pcap),
        0,
        "no IPv4 frame from the server on the boot bridge"
    );
    eprintln!("e2e-ipv6 (link): total {}", secs(started.elapsed()));
}

/// The relay's side: namespace `{ns}-r` with bridge br1 (fd00:88::1/64) and
/// the VMs' taps, wired to br0 by a veth (fd00:77::2), forwarding IPv6;
/// dnsmasq relays DHCPv6 to fd00:77::1 (adding option 79), radvd
/// advertises fd00:88::/64 with M and O and itself as the default router.
fn relay_link(lab: &mut Lab, dnsmasq: &Path, radvd: &Path) -> (Proc, Proc) {
    let r = format!("{}-r", lab.ns);
    lab.ip(&["netns", "add", &r]);
    lab.namespaces.push(r.clone());
    let bb = lab.tools.busybox.to_str().unwrap().to_string();
    let ns = lab.ns.clone();
    lab.ip(&["-n", &r, "link", "set", "lo", "up"]);
    lab.ip(&[
        "-n",
        &r,
        "link",
        "add",
        "br1",
        "type",
        "bridge",
        "stp_state",
        "0",
        "forward_delay",
        "0",
        "mcast_snooping",
        "0",
    ]);
    for sysctl in [
        "net.ipv6.conf.br1.accept_dad=0",
        "net.ipv6.conf.all.forwarding=1",
    ] {
        lab.exec(&r, 5, &[&bb, "sysctl", "-w", sysctl]);
    }
    lab.ip(&[
        "-n",
        &r,
        "addr",
        "add",
        "fd00:88::1/64",
        "dev",
        "br1",
        "nodad",
    ]);
    lab.ip(&["-n", &r, "link", "set", "br1", "up"]);
    for tap in ["tapr0", "tapr1"] {
        lab.ip(&["-n", &r, "tuntap", "add", "dev", tap, "mode", "tap"]);
        lab.ip(&["-n", &r, "link", "set", tap, "master", "br1"]);
        lab.ip(&["-n", &r, "link", "set", tap, "up"]);
    }
    lab.ip(&[
        "-n", &ns, "link", "add", "vrs", "type", "veth", "peer", "name", "vrl", "netns", &r,
    ]);
    lab.ip(&["-n", &ns, "link", "set", "vrs", "master", "br0"]);
    lab.ip(&["-n", &ns, "link", "set", "vrs", "up"]);
    lab.exec(
        &r,
        5,
        &[&bb, "sysctl", "-w", "net.ipv6.conf.vrl.accept_dad=0"],
    );
    lab.ip(&[
        "-n",
        &r,
        "addr",
        "add",
        "fd00:77::2/64",
        "dev",
        "vrl",
        "nodad",
    ]);
    lab.ip(&["-n", &r, "link", "set", "vrl", "up"]);
    lab.ip(&[
        "-n",
        &ns,
        "-6",
        "route",
        "add",
        "fd00:88::/64",
        "via",
        "fd00:77::2",
    ]);
    let relay = lab.spawn(
        "relay-dnsmasq",
        &r,
        600,
        &[
            dnsmasq.to_str().unwrap(),
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--port=0",
            "--user=root",
            "--pid-file=",
            "--interface=br1",
            "--bind-interfaces",
            "--log-dhcp",
            &format!("--dhcp-relay=fd00:88::1,{SERVER_IP6}"),
        ],
        &lab.dir.join("relay-dnsmasq.log"),
    );
    let conf = lab.dir.join("radvd.conf");
    std::fs::write(
        &conf,
        "interface br1 {\n  AdvSendAdvert on;\n  MinRtrAdvInterval 3;\n  MaxRtrAdvInterval 4;\n  \
         AdvManagedFlag on;\n  AdvOtherConfigFlag on;\n  AdvDefaultLifetime 600;\n  \
         prefix fd00:88::/64 { AdvOnLink on; AdvAutonomous on; };\n};\n",
    )
    .unwrap();
    let pid = lab.dir.join("radvd.pid");
    let advertiser = lab.spawn(
        "radvd",
        &r,
        600,
        &[
            radvd.to_str().unwrap(),
            "--nodaemon",
            "--config",
            conf.to_str().unwrap(),
            "--pidfile",
            pid.to_str().unwrap(),
            "--logmethod",
            "stderr",
        ],
        &lab.dir.join("radvd.log"),
    );
    lab.vm_ns = Some(r);
    (relay, advertiser)
}

#[test]
fn ipv6_only_boot_through_a_dhcpv6_relay() {
    let test = "ipv6_only_boot_through_a_dhcpv6_relay";
    let (Some(dnsmasq), Some(radvd)) = (which("dnsmasq"), which("radvd")) else {
        return skip(
            test,
            "dnsmasq or radvd not found (packages dnsmasq-base, radvd)",
        );
    };
    let Some((mut lab, curl, os)) = setup(test, "ipv6r", 0) else {
        return;
    };
    let started = Instant::now();
    // The relay's option 79 is believed only from the relay's own address.
    lab.dhcp6_extra =
        "trusted_relays = [\"fd00:77::2\"]\n[[dhcp6.subnet]]\nprefix = \"fd00:88::/64\"\n\
                       range = [\"fd00:88::1000\", \"fd00:88::1fff\"]\n"
            .into();
    let (mut relay, mut advertiser) = relay_link(&mut lab, &dnsmasq, &radvd);
    let link = Link {
        name: "relayed",
        taps: ["tapr0", "tapr1"],
        macs: [
            "52:54:00:00:e7:01",
            "52:54:00:00:e7:02",
            "52:54:00:00:e7:03",
        ],
        prefix: "fd00:88::",
        mac_from: &["relay_option79"],
    };
    boot_three(&mut lab, &curl, &os, &link);
    relay.stop(Duration::from_secs(5));
    advertiser.stop(Duration::from_secs(5));
    eprintln!("e2e-ipv6 (relayed): total {}", secs(started.elapsed()));
}
