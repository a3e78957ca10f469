//! A real VM through a satellite of a shared inventory (issue 16): server
//! A on the lab bridge (10.77.0.1, DHCP off: it serves other segments) and
//! server B in a namespace of its own on the bridge (10.77.0.2), both with
//! `[store] shared = true` on one PostgreSQL database. B is the rack's
//! satellite: it answers the segment's DHCP, TFTP and HTTP from the shared
//! inventory, copies no images (`copy_images = false`), and its subnet
//! names an `ironboot artifact-cache` beside it (10.77.0.2:8081, filled
//! from A by digest). The VM (BIOS, QEMU's iPXE ROM) boots the live OS
//! through B; a second generation imported and pointed at through A is
//! what the same VM boots next through B: one machine, two confirmed
//! boots, recorded in the shared database. PostgreSQL only.
//! `IRONBOOT_E2E=require IRONBOOT_TEST_POSTGRES=… cargo test --test e2e shared:: -- --nocapture`

use std::path::Path;
use std::time::Instant;

use crate::lab::*;

const TEST: &str = "a_vm_boots_through_a_satellite_of_a_shared_inventory";
const STREAM: &str = "live";
const CMDLINE: &str = "console=ttyS0,115200n8";
const B_IP: &str = "10.77.0.2";
const B_BASE: &str = "http://10.77.0.2:8080";
const CACHE: &str = "http://10.77.0.2:8081";

fn artifacts(data: &Path) -> usize {
    std::fs::read_dir(data.join("images/artifacts/sha256"))
        .map(|e| e.count())
        .unwrap_or(0)
}

#[test]
fn a_vm_boots_through_a_satellite_of_a_shared_inventory() {
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
    let mut lab = Lab::new(tools, "shr", 1, turn);
    let nsb = lab.namespace_on_bridge("b", "vb", &format!("{B_IP}/24"));

    // A: the lab's settings, shared, answering no DHCP on this segment.
    let base_text = std::fs::read_to_string(lab.config(&ipxe_dir())).unwrap();
    assert!(base_text.contains("[store]\n"), "{base_text}");
    let shared = base_text.replace("[store]\n", "[store]\nshared = true\n");
    let a_text = format!(
        "server_name = \"a\"\n{}",
        shared.replacen("[dhcp]\nmode = \"full\"", "[dhcp]\nmode = \"off\"", 1)
    );
    // B: the segment's satellite, its own address, interface and data,
    // artifacts from the cache beside it.
    let b_data = lab.dir.join("b-data");
    let b_text = format!("server_name = \"b\"\n{shared}")
        .replace(
            "[store]\nshared = true\n",
            "[store]\nshared = true\ncopy_images = false\n",
        )
        .replace(&format!("\"{SERVER_IP}\""), &format!("\"{B_IP}\""))
        .replace(&format!("\"{SERVER_IP}:"), &format!("\"{B_IP}:"))
        .replace("interfaces = [\"br0\"]", "interfaces = [\"eth0\"]")
        .replace(
            "lease_time = \"1h\"",
            &format!("lease_time = \"1h\"\nartifacts = \"{CACHE}\""),
        )
        .replace(
            lab.dir.join("data").to_str().unwrap(),
            b_data.to_str().unwrap(),
        );
    assert!(
        b_text.contains(&format!("artifacts = \"{CACHE}\"")),
        "{b_text}"
    );
    let (a_config, b_config) = (lab.dir.join("a.toml"), lab.dir.join("b.toml"));
    std::fs::write(&a_config, a_text).unwrap();
    std::fs::write(&b_config, b_text).unwrap();
    lab.start_server_with(&a_config);
    let (first_gen, _) = import(&lab, &os, STREAM, CMDLINE, &[]);
    point_default(&lab, STREAM, first_gen);
    lab.db = Some(lab.rt.block_on(crate::common::TestServer::db(&lab.dir)));

    let b_log = lab.dir.join("server-b.log");
    let _b = lab.serve("ironboot-b", &nsb, &b_config, &b_log);
    let cache_log = lab.dir.join("cache.log");
    let cache_dir = lab.dir.join("cache");
    let _cache = lab.spawn(
        "artifact-cache",
        &nsb,
        600,
        &[
            lab.bin.to_str().unwrap(),
            "artifact-cache",
            "--upstream",
            &format!("http://{SERVER_IP}:8080"),
            "--listen",
            &format!("{B_IP}:8081"),
            "--dir",
            cache_dir.to_str().unwrap(),
            "--max-size",
            "1G",
        ],
        &cache_log,
    );
    lab.wait_http(&nsb, &format!("{B_BASE}/healthz"), "B", &b_log);
    lab.wait_http(&nsb, &format!("{CACHE}/healthz"), "the cache", &cache_log);
    lab.wait_rows(
        "B a member of A's inventory",
        "SELECT id FROM servers WHERE id = 'b' AND role = 'member' AND peer = 'a'",
        &[],
        |rows| rows.len() == 1,
    );

    // The first boot, through the satellite: DHCP, TFTP and the script
    // from B, the artifacts from the cache.
    let mut vm = lab.start_vm("first", "tap0", RESERVED_MAC, false);
    let first = wait_booted_at(&mut vm, RESERVED_MAC, STREAM, first_gen, CMDLINE, B_BASE);
    assert!(
        first
            .serial
            .contains(&format!("Filename: {B_BASE}/boot.ipxe")),
        "the script came from B\n{}",
        tail(&vm.serial, 30)
    );
    assert!(
        first.serial.contains(&format!("{CACHE}/artifacts/sha256/")),
        "the kernel came from the cache\n{}",
        tail(&vm.serial, 30)
    );
    drop(vm);

    // A second generation, imported and pointed at through A: the same VM
    // boots it through B.
    let (second_gen, _) = import(&lab, &os, STREAM, &format!("{CMDLINE} gen=2"), &[]);
    point_default(&lab, STREAM, second_gen);
    let mut vm = lab.start_vm("second", "tap0", RESERVED_MAC, false);
    let second = wait_booted_at(
        &mut vm,
        RESERVED_MAC,
        STREAM,
        second_gen,
        &format!("{CMDLINE} gen=2"),
        B_BASE,
    );
    for (which, b) in [("first", &first), ("second", &second)] {
        assert!(
            b.serial
                .contains(&live(&format!("eth0 address {RESERVED_IP}/24"))),
            "the {which} boot had B's reserved address"
        );
    }
    assert_eq!(artifacts(&b_data), 0, "the satellite copied no image");
    let rows = lab.query(
        "SELECT generation FROM boots WHERE mac = $1 AND state = 'confirmed' ORDER BY id",
        &[RESERVED_MAC],
    );
    let got: Vec<Option<&str>> = rows.iter().map(|r| r[0].as_deref()).collect();
    let (one, two) = (first_gen.to_string(), second_gen.to_string());
    assert_eq!(
        got,
        vec![Some(one.as_str()), Some(two.as_str())],
        "two confirmed boots"
    );
    eprintln!(
        "{TEST}: first boot through B in {}, second (A's new pointer) in {}, total {}",
        secs(first.phone_home),
        secs(second.phone_home),
        secs(total.elapsed())
    );
}
