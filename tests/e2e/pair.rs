//! A real VM through a primary and its standby (issue 16): server A on
//! the lab bridge (10.77.0.1, the lab's namespace) and server B in a
//! namespace of its own on the same bridge (10.77.0.2, through a veth),
//! one PostgreSQL database, both with `[store] standby = true`. The VM (BIOS,
//! QEMU's iPXE ROM) boots the live OS through A and confirms; A is killed
//! with SIGKILL; B takes over; the same VM boots again, now through B (its
//! DHCP, TFTP, script, the artifacts B copied from A by digest), with the
//! same address and generation, and confirms: one machine, two confirmed
//! boots. The same VM through an HA pair that splits the segment
//! (`a_vm_boots_through_the_other_half_of_a_split_pair`). PostgreSQL
//! only: it runs in CI's PostgreSQL pass.
//! `IRONBOOT_E2E=require IRONBOOT_TEST_POSTGRES=… cargo test --test e2e pair:: -- --nocapture`

use std::path::Path;
use std::time::{Duration, Instant};

use crate::lab::*;

const TEST: &str = "a_vm_boots_through_the_standby_after_the_primary_dies";
const STREAM: &str = "live";
const CMDLINE: &str = "console=ttyS0,115200n8";
const B_IP: &str = "10.77.0.2";
const B_BASE: &str = "http://10.77.0.2:8080";

fn artifacts(data: &Path) -> usize {
    std::fs::read_dir(data.join("images/artifacts/sha256"))
        .map(|e| e.count())
        .unwrap_or(0)
}

#[test]
fn a_vm_boots_through_the_standby_after_the_primary_dies() {
    let turn = Turn::wait(TEST);
    let Some(tools) = tools_or_skip(TEST) else {
        return;
    };
    if crate::common::postgres_base().is_none() {
        eprintln!(
            "{TEST}: runs on PostgreSQL only (CI's PostgreSQL pass sets IRONBOOT_TEST_POSTGRES)"
        );
        return;
    }
    let os = match build_liveos(&tools.timeout) {
        Ok(os) => os,
        Err(reason) => return skip(TEST, &reason),
    };
    let total = Instant::now();
    let mut lab = Lab::new(tools, "pair", 1, turn);
    // B's namespace on the lab bridge.
    let nsb = lab.namespace_on_bridge("b", "vb", &format!("{B_IP}/24"));

    // One settings text for both, as an operator would write it; B's is A's
    // with its own address, interface, data directory and name.
    let base_text = std::fs::read_to_string(lab.config(&ipxe_dir())).unwrap();
    assert!(base_text.contains("[store]\n"), "{base_text}");
    let a_text = format!(
        "server_name = \"a\"\n{}",
        base_text.replace("[store]\n", "[store]\nstandby = true\n")
    );
    let b_data = lab.dir.join("b-data");
    let b_text = a_text
        .replace("server_name = \"a\"", "server_name = \"b\"")
        .replace(&format!("\"{SERVER_IP}\""), &format!("\"{B_IP}\""))
        .replace(&format!("\"{SERVER_IP}:"), &format!("\"{B_IP}:"))
        .replace("interfaces = [\"br0\"]", "interfaces = [\"eth0\"]")
        .replace(
            lab.dir.join("data").to_str().unwrap(),
            b_data.to_str().unwrap(),
        );
    let (a_config, b_config) = (lab.dir.join("a.toml"), lab.dir.join("b.toml"));
    std::fs::write(&a_config, a_text).unwrap();
    std::fs::write(&b_config, b_text).unwrap();

    lab.start_server_with(&a_config);
    let (generation, _) = import(&lab, &os, STREAM, CMDLINE, &[]);
    point_default(&lab, STREAM, generation);
    lab.db = Some(lab.rt.block_on(crate::common::TestServer::db(&lab.dir)));

    let b_log = lab.dir.join("server-b.log");
    let mut b = lab.serve("ironboot-b", &nsb, &b_config, &b_log);
    let deadline = Instant::now() + Duration::from_secs(30);
    while artifacts(&b_data) < artifacts(&lab.dir.join("data")) {
        if let Some(status) = b.exited() {
            panic!("B exited ({status})\n{}", tail(&b_log, 30));
        }
        assert!(
            Instant::now() < deadline,
            "B did not copy A's artifacts in 30 s\n{}",
            tail(&b_log, 30)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    lab.wait_rows(
        "B standing by as A's peer",
        "SELECT id FROM servers WHERE id = 'b' AND role = 'standby' AND peer = 'a'",
        &[],
        |rows| rows.len() == 1,
    );

    // The first boot, through A.
    let mut vm = lab.start_vm("through-a", "tap0", RESERVED_MAC, false);
    let first = wait_booted(&mut vm, RESERVED_MAC, STREAM, generation, CMDLINE);
    assert!(
        first.serial.contains(&format!("Filename: {BOOT_URL}")),
        "the first boot's script came from A\n{}",
        tail(&vm.serial, 30)
    );
    drop(vm);

    // A dies; B serves.
    let a = lab.server.as_mut().unwrap();
    for pid in children_of(a.child.id()) {
        signal(pid, nix::libc::SIGKILL);
    }
    let killed = Instant::now();
    let bb = lab.tools.busybox.to_str().unwrap().to_string();
    let healthz = format!("{B_BASE}/healthz");
    loop {
        let (ok, _) = lab.exec(&lab.ns, 5, &[&bb, "wget", "-q", "-O", "-", &healthz]);
        if ok {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "B did not serve within 5 s of A's SIGKILL\n{}",
            tail(&b_log, 30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let takeover = killed.elapsed();

    // The second boot of the same machine, through B.
    let mut vm = lab.start_vm("through-b", "tap0", RESERVED_MAC, false);
    let second = wait_booted_at(&mut vm, RESERVED_MAC, STREAM, generation, CMDLINE, B_BASE);
    assert!(
        second
            .serial
            .contains(&format!("Filename: {B_BASE}/boot.ipxe")),
        "the second boot's script came from B\n{}",
        tail(&vm.serial, 30)
    );
    for (which, b) in [("first", &first), ("second", &second)] {
        assert!(
            b.serial
                .contains(&live(&format!("eth0 address {RESERVED_IP}/24"))),
            "the {which} boot had the reserved address"
        );
    }
    let machines = lab.query(
        "SELECT COUNT(*) FROM machines WHERE mac = $1",
        &[RESERVED_MAC],
    );
    assert_eq!(machines[0][0].as_deref(), Some("1"), "one machine record");
    let want = generation.to_string();
    lab.wait_rows(
        "two confirmed boots of the generation",
        "SELECT generation FROM boots WHERE mac = $1 AND state = 'confirmed'",
        &[RESERVED_MAC],
        |rows| rows.len() == 2 && rows.iter().all(|r| r[0].as_deref() == Some(want.as_str())),
    );
    eprintln!(
        "{TEST}: through A in {}, takeover {}, through B in {}, total {}",
        secs(first.phone_home),
        secs(takeover),
        secs(second.phone_home),
        secs(total.elapsed())
    );
}

/// A real VM through an HA pair that splits the segment (`[dhcp] peer`,
/// `[store] shared`): A on the bridge, B in its own namespace on it, both
/// answering DHCP there, each its half of the clients. The VM boots
/// through the server of its half; that server is killed with SIGKILL; the
/// VM boots again through the other, with the same address.
#[test]
fn a_vm_boots_through_the_other_half_of_a_split_pair() {
    const TEST: &str = "a_vm_boots_through_the_other_half_of_a_split_pair";
    let turn = Turn::wait(TEST);
    let Some(tools) = tools_or_skip(TEST) else {
        return;
    };
    if crate::common::postgres_base().is_none() {
        eprintln!(
            "{TEST}: runs on PostgreSQL only (CI's PostgreSQL pass sets IRONBOOT_TEST_POSTGRES)"
        );
        return;
    }
    let os = match build_liveos(&tools.timeout) {
        Ok(os) => os,
        Err(reason) => return skip(TEST, &reason),
    };
    let total = Instant::now();
    let mut lab = Lab::new(tools, "split", 1, turn);
    let nsb = lab.namespace_on_bridge("b", "vb", &format!("{B_IP}/24"));

    let base_text = std::fs::read_to_string(lab.config(&ipxe_dir())).unwrap();
    let shared = base_text.replace("[store]\n", "[store]\nshared = true\n");
    let with_peer = |text: &str, me: &str, peer: &str| {
        format!("server_name = \"{me}\"\n{text}").replacen(
            "[dhcp]\nmode = \"full\"\n",
            &format!("[dhcp]\nmode = \"full\"\npeer = \"{peer}\"\n"),
            1,
        )
    };
    let a_text = with_peer(&shared, "a", "b");
    let b_data = lab.dir.join("b-data");
    let b_text = with_peer(&shared, "b", "a")
        .replace(&format!("\"{SERVER_IP}\""), &format!("\"{B_IP}\""))
        .replace(&format!("\"{SERVER_IP}:"), &format!("\"{B_IP}:"))
        .replace("interfaces = [\"br0\"]", "interfaces = [\"eth0\"]")
        .replace(
            lab.dir.join("data").to_str().unwrap(),
            b_data.to_str().unwrap(),
        );
    assert!(a_text.contains("peer = \"b\"") && b_text.contains("peer = \"a\""));
    let (a_config, b_config) = (lab.dir.join("a.toml"), lab.dir.join("b.toml"));
    std::fs::write(&a_config, a_text).unwrap();
    std::fs::write(&b_config, b_text).unwrap();
    lab.start_server_with(&a_config);
    let (generation, _) = import(&lab, &os, STREAM, CMDLINE, &[]);
    point_default(&lab, STREAM, generation);
    lab.db = Some(lab.rt.block_on(crate::common::TestServer::db(&lab.dir)));
    let b_log = lab.dir.join("server-b.log");
    let mut b = Some(lab.serve("ironboot-b", &nsb, &b_config, &b_log));
    let deadline = Instant::now() + Duration::from_secs(30);
    while artifacts(&b_data) < artifacts(&lab.dir.join("data")) {
        assert!(
            Instant::now() < deadline,
            "B did not copy A's artifacts in 30 s\n{}",
            tail(&b_log, 30)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    lab.wait_rows(
        "A and B each other's peers",
        "SELECT id FROM servers WHERE (id = 'a' AND peer = 'b') OR (id = 'b' AND peer = 'a')",
        &[],
        |rows| rows.len() == 2,
    );
    // Each answers its own half once the other has seen it (1.2 s).
    std::thread::sleep(Duration::from_secs(2));

    let mac: ironboot::domain::MacAddr = RESERVED_MAC.parse().unwrap();
    let a_first = ironboot::domain::lease::half_of(mac) == 0; // "a" sorts first
    let (owner_base, other_base) = if a_first {
        (BASE.to_string(), B_BASE.to_string())
    } else {
        (B_BASE.to_string(), BASE.to_string())
    };
    let mut vm = lab.start_vm("owner", "tap0", RESERVED_MAC, false);
    let first = wait_booted_at(
        &mut vm,
        RESERVED_MAC,
        STREAM,
        generation,
        CMDLINE,
        &owner_base,
    );
    assert!(
        first
            .serial
            .contains(&format!("Filename: {owner_base}/boot.ipxe")),
        "the first boot came from the server of its half ({owner_base})\n{}",
        tail(&vm.serial, 30)
    );
    drop(vm);

    // The server of its half dies; the other takes that half.
    let killed = Instant::now();
    if a_first {
        let a = lab.server.as_mut().unwrap();
        for pid in children_of(a.child.id()) {
            signal(pid, nix::libc::SIGKILL);
        }
    } else {
        let b = b.as_mut().unwrap();
        for pid in children_of(b.child.id()) {
            signal(pid, nix::libc::SIGKILL);
        }
    }
    let mut vm = lab.start_vm("other", "tap0", RESERVED_MAC, false);
    let second = wait_booted_at(
        &mut vm,
        RESERVED_MAC,
        STREAM,
        generation,
        CMDLINE,
        &other_base,
    );
    assert!(
        second
            .serial
            .contains(&format!("Filename: {other_base}/boot.ipxe")),
        "the second boot came from the other server ({other_base})\n{}",
        tail(&vm.serial, 30)
    );
    for (which, boot) in [("first", &first), ("second", &second)] {
        assert!(
            boot.serial
                .contains(&live(&format!("eth0 address {RESERVED_IP}/24"))),
            "the {which} boot had the reserved address"
        );
    }
    let want = generation.to_string();
    lab.wait_rows(
        "two confirmed boots of the generation",
        "SELECT generation FROM boots WHERE mac = $1 AND state = 'confirmed'",
        &[RESERVED_MAC],
        |rows| rows.len() == 2 && rows.iter().all(|r| r[0].as_deref() == Some(want.as_str())),
    );
    eprintln!(
        "{TEST}: through {} in {}, that server killed, through {} in {} from the kill, total {}",
        owner_base,
        secs(first.phone_home),
        other_base,
        secs(killed.elapsed()),
        secs(total.elapsed())
    );
    drop(b.take());
}
