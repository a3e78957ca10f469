//! End-to-end proxy DHCP on a hostile boot network: another server owns
//! the segment's addresses (dnsmasq, in a namespace of its own on the lab
//! bridge, with no boot options), ironboot answers in proxy mode only, and
//! a real VM (SeaBIOS with QEMU's iPXE ROM) boots the live OS to phone-home.
//!
//! ironboot holds no lease for that machine: what binds the machine's
//! address to its MAC is the kernel's neighbour entry on the boot interface.
//! So this is the legitimate flow the binding rule must never lock out, and
//! beside it the attacks it must stop: a host on the same segment, at an
//! address of its own, asks for the machine's script (no token, nothing
//! about the machine changes), replays the machine's own boot token for its
//! config and confirmation (refused), and the machine's record is unchanged.
//!
//! Run with `IRONBOOT_E2E=require cargo test --test e2e proxy:: -- --nocapture`
//! (root, qemu-system-x86, ipxe-qemu, busybox-static, dnsmasq-base, curl).

use std::time::{Duration, Instant};

use crate::lab::*;

const TEST: &str = "proxy_mode_vm_boots_and_a_neighbour_cannot_act_for_it";
const STREAM: &str = "live";
const CMDLINE: &str = "console=ttyS0,115200n8";
const MAC: &str = "52:54:00:00:d0:01";
/// The site DHCP server's address on the segment.
const SITE_IP: &str = "10.77.0.2";
/// The attacker's address on the same segment (outside dnsmasq's range).
const ATTACKER_IP: &str = "10.77.0.66";

/// The site's own DHCP server in a namespace of its own, wired to the lab
/// bridge by a veth: addresses only, no boot options (ironboot's proxy
/// offers carry those). Returns the namespace and the lease file.
fn site_dhcp(lab: &mut Lab, dnsmasq: &std::path::Path) -> (String, Proc, std::path::PathBuf) {
    let site = format!("{}-d", lab.ns);
    lab.ip(&["netns", "add", &site]);
    lab.namespaces.push(site.clone());
    lab.ip(&["-n", &site, "link", "set", "lo", "up"]);
    let ns = lab.ns.clone();
    lab.ip(&[
        "-n", &ns, "link", "add", "vsite", "type", "veth", "peer", "name", "vdh", "netns", &site,
    ]);
    lab.ip(&["-n", &ns, "link", "set", "vsite", "master", "br0"]);
    lab.ip(&["-n", &ns, "link", "set", "vsite", "up"]);
    lab.ip(&[
        "-n",
        &site,
        "addr",
        "add",
        &format!("{SITE_IP}/24"),
        "dev",
        "vdh",
    ]);
    lab.ip(&["-n", &site, "link", "set", "vdh", "up"]);
    let leases = lab.dir.join("site.leases");
    let leasefile = format!("--dhcp-leasefile={}", leases.display());
    let proc = lab.spawn(
        "site-dnsmasq",
        &site,
        300,
        &[
            dnsmasq.to_str().unwrap(),
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--port=0",
            "--interface=vdh",
            "--bind-interfaces",
            "--dhcp-range=10.77.0.100,10.77.0.199,255.255.255.0,1h",
            "--dhcp-authoritative",
            "--pid-file=",
            "--user=root",
            "--log-dhcp",
            &leasefile,
        ],
        &lab.dir.join("site-dnsmasq.log"),
    );
    (site, proc, leases)
}

/// The address dnsmasq leased to `mac` (its lease file: `expiry mac ip …`).
fn leased(leases: &std::path::Path, mac: &str) -> Option<String> {
    std::fs::read_to_string(leases).ok()?.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[1].eq_ignore_ascii_case(mac)).then(|| f[2].to_string())
    })
}

/// curl from the attacker's namespace: (status, body).
fn attacker(lab: &Lab, curl: &std::path::Path, args: &[&str]) -> (u16, String) {
    let mut cmd = vec![
        curl.to_str().unwrap(),
        "-sS",
        "--max-time",
        "10",
        "-w",
        "\n%{http_code}",
    ];
    cmd.extend_from_slice(args);
    let out = lab.exec_output(&lab.cns, 15, &cmd);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn proxy_mode_vm_boots_and_a_neighbour_cannot_act_for_it() {
    let turn = Turn::wait(TEST);
    let Some(tools) = tools_or_skip(TEST) else {
        return;
    };
    let curl = match extra_requirements() {
        Ok(curl) => curl,
        Err(reason) => return skip(TEST, &reason),
    };
    let Some(dnsmasq) = which("dnsmasq") else {
        return skip(TEST, "dnsmasq not found (package dnsmasq-base)");
    };
    let os = match build_liveos(&tools.timeout) {
        Ok(os) => os,
        Err(reason) => return skip(TEST, &reason),
    };
    let started = Instant::now();
    let mut lab = Lab::new(tools, "proxy", 1, turn);
    lab.proxy = true;
    let (_site, mut site_server, leases) = site_dhcp(&mut lab, &dnsmasq);
    lab.start_server(&ipxe_dir());
    let api = Api::new(&lab, curl.clone());
    import(&lab, &os, STREAM, CMDLINE, &[]);
    cli(&lab, &["group", "set-generation", "default", STREAM, "1"]);

    // The legitimate flow: proxy offer + the site's address, then the
    // script, artifacts, config and confirmation from that address.
    let mut vm = lab.start_vm_with("proxy-bios", "tap0", MAC, Firmware::BiosIpxeRom, 256);
    let booted = wait_booted(&mut vm, MAC, STREAM, 1, CMDLINE);
    let m = assert_confirmed(&api, MAC, STREAM, 1, "bios");
    let address = leased(&leases, MAC).expect("dnsmasq leased the VM an address");
    assert_eq!(
        m["ip"], address,
        "the machine is known at the address the site's server gave it: {m:#}"
    );
    assert!(
        booted
            .serial
            .contains(&live(&format!("eth0 address {address}/24"))),
        "the live OS took the site's address\n{}",
        tail(&vm.serial, 30)
    );
    eprintln!(
        "e2e-proxy: BIOS VM at {address} (site DHCP) confirmed at {} through ironboot's proxy offers",
        secs(booted.phone_home)
    );
    let boots_before = m["recent_boots"].as_array().map(Vec::len).unwrap_or(0);
    let token = kernel_cmdline(&booted.serial)
        .and_then(|c| c.split("/config/").nth(1))
        .and_then(|rest| rest.split('/').next())
        .expect("the boot's token in its seed URL")
        .to_string();

    // The attacks, from another host on the same segment.
    lab.ip(&[
        "-n",
        &lab.cns,
        "addr",
        "add",
        &format!("{ATTACKER_IP}/24"),
        "dev",
        "vcl",
    ]);
    let (status, script) = attacker(&lab, &curl, &[&format!("{BASE}/boot/{MAC}.ipxe?serial=x")]);
    assert!(
        !script.contains("/config/") && !script.contains("/phone-home/"),
        "an unbound address gets no token for the machine ({status}):\n{script}"
    );
    let (status, config) = attacker(&lab, &curl, &[&format!("{BASE}/config/{token}/user-data")]);
    assert!(
        status != 200 && !config.contains("#cloud-config"),
        "the machine's own token from another address shows nothing ({status}):\n{config}"
    );
    let (status, body) = attacker(
        &lab,
        &curl,
        &[
            "-X",
            "POST",
            "--data",
            "instance_id=x",
            &format!("{BASE}/phone-home/{token}"),
        ],
    );
    assert!(
        status != 200,
        "the machine's own token from another address confirms nothing ({status}): {body}"
    );
    let after = api.ok(&format!("/api/v1/machines/{MAC}"));
    assert_eq!(
        after["recent_boots"].as_array().map(Vec::len).unwrap_or(0),
        boots_before,
        "no boot was opened for the machine by the attacker: {after:#}"
    );
    assert_eq!(after["ip"], address, "the machine's address is unchanged");
    assert_eq!(after["recent_boots"][0]["state"], "confirmed");

    vm.stop();
    site_server.stop(Duration::from_secs(5));
    lab.stop_server_cleanly();
    eprintln!("e2e-proxy: total {}", secs(started.elapsed()));
}
