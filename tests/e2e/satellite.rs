//! An artifact cache behind a slow link (issue 16): the primary on the lab
//! bridge (10.77.0.1), a rack namespace joined to the bridge by a veth
//! whose bridge end is shaped with `tc` (token bucket, 40 Mbit/s toward the
//! rack), and `ironboot artifact-cache` in the rack (10.77.0.3:8081) named
//! by the subnet's `artifacts`. Simulated machines in the rack boot the
//! whole flow (relayed DHCP, TFTP, script, verified kernel and initrd,
//! config, confirmation) twice: the first storm crosses the link once per
//! artifact, the repeat takes at least 95 % of its bytes from the cache.
//! Then one byte of a cached artifact is changed on disk: the next boot
//! still gets the right bytes (the simulator checks every artifact's
//! sha256), the cache counts the corruption and fetched it again.
//! `IRONBOOT_E2E=require cargo test --test e2e satellite:: -- --nocapture`

use std::time::Instant;

use serde_json::Value;

use crate::lab::*;

const TEST: &str = "a_rack_behind_a_slow_link_boots_from_its_artifact_cache";
const STREAM: &str = "live";
const CACHE_IP: &str = "10.77.0.3";
const CACHE: &str = "http://10.77.0.3:8081";
const MACHINES: usize = 8;
const RATE: &str = "40mbit";

/// The rack: a namespace on the bridge through `vr` (bridge end, shaped)
/// and `eth0` (10.77.0.3/24).
fn rack(lab: &mut Lab) -> String {
    let rns = lab.namespace_on_bridge("r", "vr", &format!("{CACHE_IP}/24"));
    let ns = lab.ns.clone();
    let tc = which("tc").expect("tc (iproute2)");
    let (ok, text) = lab.run(&[
        tc.to_str().unwrap(),
        "-n",
        &ns,
        "qdisc",
        "add",
        "dev",
        "vr",
        "root",
        "tbf",
        "rate",
        RATE,
        "burst",
        "32kb",
        "latency",
        "400ms",
    ]);
    assert!(ok, "tc qdisc add … tbf: {text}");
    rns
}

/// Bytes the primary's side sent into the rack so far.
fn link_bytes(lab: &Lab) -> u64 {
    let bb = lab.tools.busybox.to_str().unwrap();
    let (ok, text) = lab.exec(
        &lab.ns,
        5,
        &[bb, "cat", "/sys/class/net/vr/statistics/tx_bytes"],
    );
    assert!(ok, "{text}");
    text.trim().parse().unwrap()
}

/// A storm of `n` machines in the rack, through the whole flow: its JSON
/// report.
/// `dhcp`: the DHCP server the rack's relay (at the rack's address) asks.
fn storm(lab: &Lab, rns: &str, dhcp: &str, n: usize, first: u32) -> Value {
    let bin = env!("CARGO_BIN_EXE_ironboot-storm");
    let n = n.to_string();
    let first = first.to_string();
    let out = lab.exec_output(
        rns,
        180,
        &[
            bin,
            "--dhcp",
            dhcp,
            "--giaddr",
            CACHE_IP,
            "-n",
            &n,
            "--first",
            &first,
            "--tftp-port",
            "69",
            "--dhcp-timeouts",
            "1,2,4,8",
            "--http-retry-delay",
            "1",
            "--deadline",
            "150",
            "--json",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "storm output ({e}): {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(report["failed"], 0, "{report:#}");
    report
}

fn step_bytes(report: &Value, steps: &[&str]) -> u64 {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| steps.contains(&s["step"].as_str().unwrap_or("")))
        .map(|s| s["bytes"].as_u64().unwrap())
        .sum()
}

fn cache_metric(lab: &Lab, rns: &str, name: &str) -> u64 {
    let bb = lab.tools.busybox.to_str().unwrap();
    let url = format!("{CACHE}/metrics");
    let (ok, text) = lab.exec(rns, 5, &[bb, "wget", "-q", "-O", "-", &url]);
    assert!(ok, "{text}");
    metric(&text, name)
}

#[test]
fn a_rack_behind_a_slow_link_boots_from_its_artifact_cache() {
    let turn = Turn::wait(TEST);
    let Some(tools) = tools_or_skip(TEST) else {
        return;
    };
    if which("tc").is_none() {
        return skip(TEST, "tc (iproute2) is missing");
    }
    let os = match build_liveos(&tools.timeout) {
        Ok(os) => os,
        Err(reason) => return skip(TEST, &reason),
    };
    let mut lab = Lab::new(tools, "sat", 0, turn);
    let rns = rack(&mut lab);
    // Every simulated machine sends from the rack's one address: a lab
    // without the binding rule (see the README's security model).
    lab.extra_config = "\n[boot]\nbinding = \"off\"\n".into();
    lab.subnet_extra = format!("artifacts = \"{CACHE}\"");
    lab.start_server(&ipxe_dir());
    let (generation, _) = import(&lab, &os, STREAM, "console=ttyS0", &[]);
    point_default(&lab, STREAM, generation);

    let cache_dir = lab.dir.join("cache");
    let cache_log = lab.dir.join("cache.log");
    let _cache = lab.spawn(
        "artifact-cache",
        &rns,
        600,
        &[
            lab.bin.to_str().unwrap(),
            "artifact-cache",
            "--upstream",
            &format!("http://{SERVER_IP}:8080"),
            "--listen",
            &format!("{CACHE_IP}:8081"),
            "--dir",
            cache_dir.to_str().unwrap(),
            "--max-size",
            "1G",
        ],
        &cache_log,
    );
    lab.wait_http(&rns, &format!("{CACHE}/healthz"), "the cache", &cache_log);

    // The first storm: the cache fills, each artifact crossing the link once.
    let before = link_bytes(&lab);
    let started = Instant::now();
    let first = storm(&lab, &rns, &format!("{SERVER_IP}:67"), MACHINES, 0);
    let first_took = started.elapsed();
    let first_link = link_bytes(&lab) - before;
    let artifacts = step_bytes(&first, &["kernel", "initrd"]);
    let per_machine = artifacts / MACHINES as u64;
    assert!(
        first_link < per_machine * 2,
        "the first storm crossed the link {first_link} bytes for {artifacts} bytes of \
         artifacts: more than one copy"
    );

    // The repeat: at least 95 % of what the machines received came from
    // the cache, not over the link.
    let before = link_bytes(&lab);
    let started = Instant::now();
    let repeat = storm(&lab, &rns, &format!("{SERVER_IP}:67"), MACHINES, 0);
    let repeat_took = started.elapsed();
    let repeat_link = link_bytes(&lab) - before;
    let received = step_bytes(
        &repeat,
        &["tftp", "script", "kernel", "initrd", "config", "confirm"],
    );
    let from_cache = 1.0 - repeat_link as f64 / received as f64;
    assert!(
        from_cache >= 0.95,
        "repeat boots took {:.1} % of their bytes from the cache ({repeat_link} of {received} \
         over the link)",
        from_cache * 100.0
    );

    // A cached artifact changed on disk: detected, fetched again, never
    // served (the simulator verifies every artifact against its sha256).
    let sha = cache_dir.join("artifacts/sha256");
    let victim = std::fs::read_dir(&sha)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a cached artifact");
    let mut bytes = std::fs::read(&victim).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    let mut perms = std::fs::metadata(&victim).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&victim, perms).unwrap();
    std::fs::write(&victim, &bytes).unwrap();
    let corrupt_before = cache_metric(&lab, &rns, "cache_corrupt");
    let one = storm(&lab, &rns, &format!("{SERVER_IP}:67"), 1, 100);
    assert_eq!(one["completed"], 1, "{one:#}");
    assert_eq!(
        cache_metric(&lab, &rns, "cache_corrupt"),
        corrupt_before + 1,
        "the changed file was detected"
    );
    eprintln!(
        "{TEST}: {MACHINES} machines at {RATE}: first storm {} ({first_link} bytes over the link \
         for {artifacts} bytes of artifacts), repeat {} ({:.1} % from the cache)",
        secs(first_took),
        secs(repeat_took),
        from_cache * 100.0
    );
}

/// The same rack with a satellite (PostgreSQL only): a shared member in the
/// rack's namespace answers its DHCP, TFTP and HTTP from the shared
/// inventory (`[store] shared`, `copy_images = false`), its subnet naming
/// the cache beside it; server A on the other side of the shaped link
/// holds the images. The first storm crosses the link once per artifact,
/// the repeat takes at least 95 % of its bytes from the rack (everything
/// but artifact misses is answered there); A is then killed with SIGKILL
/// and a third storm boots through the satellite, which takes the lead.
/// Every boot is recorded in the shared database.
#[test]
fn a_satellite_behind_a_slow_link_serves_its_rack() {
    const TEST: &str = "a_satellite_behind_a_slow_link_serves_its_rack";
    let turn = Turn::wait(TEST);
    let Some(tools) = tools_or_skip(TEST) else {
        return;
    };
    if which("tc").is_none() {
        return skip(TEST, "tc (iproute2) is missing");
    }
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
    let mut lab = Lab::new(tools, "sats", 0, turn);
    let rns = rack(&mut lab);
    lab.extra_config = "\n[boot]\nbinding = \"off\"\n".into();
    let base_text = std::fs::read_to_string(lab.config(&ipxe_dir())).unwrap();
    let shared = base_text.replace("[store]\n", "[store]\nshared = true\n");
    let a_text = format!("server_name = \"a\"\n{shared}");
    // The satellite: the rack's address, one DHCP socket on it (the storm's
    // relay is in the same namespace), artifacts from the cache.
    let sat_data = lab.dir.join("sat-data");
    let sat_text = format!("server_name = \"rack\"\n{shared}")
        .replace(
            "[store]\nshared = true\n",
            "[store]\nshared = true\ncopy_images = false\n",
        )
        .replace(&format!("\"{SERVER_IP}\""), &format!("\"{CACHE_IP}\""))
        .replace(&format!("\"{SERVER_IP}:"), &format!("\"{CACHE_IP}:"))
        .replace(
            "interfaces = [\"br0\"]",
            &format!("listen = \"{CACHE_IP}:67\""),
        )
        .replace(
            "lease_time = \"1h\"",
            &format!("lease_time = \"1h\"\nartifacts = \"{CACHE}\""),
        )
        .replace(
            lab.dir.join("data").to_str().unwrap(),
            sat_data.to_str().unwrap(),
        );
    assert!(
        sat_text.contains(&format!("listen = \"{CACHE_IP}:67\"")),
        "{sat_text}"
    );
    let (a_config, sat_config) = (lab.dir.join("a.toml"), lab.dir.join("sat.toml"));
    std::fs::write(&a_config, a_text).unwrap();
    std::fs::write(&sat_config, sat_text).unwrap();
    lab.start_server_with(&a_config);
    let (generation, _) = import(&lab, &os, STREAM, "console=ttyS0", &[]);
    point_default(&lab, STREAM, generation);
    lab.db = Some(lab.rt.block_on(crate::common::TestServer::db(&lab.dir)));

    let sat_log = lab.dir.join("satellite.log");
    let _sat = lab.serve("ironboot-rack", &rns, &sat_config, &sat_log);
    let cache_dir = lab.dir.join("cache");
    let cache_log = lab.dir.join("cache.log");
    let _cache = lab.spawn(
        "artifact-cache",
        &rns,
        600,
        &[
            lab.bin.to_str().unwrap(),
            "artifact-cache",
            "--upstream",
            &format!("http://{SERVER_IP}:8080"),
            "--listen",
            &format!("{CACHE_IP}:8081"),
            "--dir",
            cache_dir.to_str().unwrap(),
            "--max-size",
            "1G",
        ],
        &cache_log,
    );
    lab.wait_http(
        &rns,
        &format!("http://{CACHE_IP}:8080/healthz"),
        "the satellite",
        &sat_log,
    );
    lab.wait_http(&rns, &format!("{CACHE}/healthz"), "the cache", &cache_log);
    lab.wait_rows(
        "the satellite a member of the inventory",
        "SELECT id FROM servers WHERE id = 'rack' AND role = 'member'",
        &[],
        |rows| rows.len() == 1,
    );

    let dhcp = format!("{CACHE_IP}:67");
    let before = link_bytes(&lab);
    let first = storm(&lab, &rns, &dhcp, MACHINES, 0);
    let first_link = link_bytes(&lab) - before;
    let artifacts = step_bytes(&first, &["kernel", "initrd"]);
    assert!(
        first_link < artifacts / MACHINES as u64 * 2,
        "the first storm crossed the link {first_link} bytes for {artifacts} bytes of \
         artifacts: more than one copy"
    );
    let before = link_bytes(&lab);
    let repeat = storm(&lab, &rns, &dhcp, MACHINES, 0);
    let repeat_link = link_bytes(&lab) - before;
    let received = step_bytes(
        &repeat,
        &["tftp", "script", "kernel", "initrd", "config", "confirm"],
    );
    let from_rack = 1.0 - repeat_link as f64 / received as f64;
    assert!(
        from_rack >= 0.95,
        "repeat boots took {:.1} % of their bytes from the rack ({repeat_link} of {received} \
         over the link)",
        from_rack * 100.0
    );
    // Server A dies (SIGKILL): the rack boots on, its satellite leading.
    let a = lab.server.as_mut().unwrap();
    for pid in children_of(a.child.id()) {
        signal(pid, nix::libc::SIGKILL);
    }
    let third = storm(&lab, &rns, &dhcp, MACHINES, 0);
    assert_eq!(third["completed"], MACHINES, "{third:#}");
    lab.wait_rows(
        "the satellite leads once A is gone",
        "SELECT id FROM servers WHERE id = 'rack' AND role = 'leader'",
        &[],
        |rows| rows.len() == 1,
    );
    // (One generation exists: every confirmed boot is of it.)
    lab.wait_rows(
        "the satellite's boots confirmed in the shared database",
        "SELECT COUNT(*) FROM boots WHERE state = 'confirmed'",
        &[],
        |rows| rows[0][0].as_deref().and_then(|n| n.parse::<usize>().ok()) >= Some(3 * MACHINES),
    );
    assert_eq!(
        std::fs::read_dir(sat_data.join("images/artifacts/sha256"))
            .map(|e| e.count())
            .unwrap_or(0),
        0,
        "the satellite copied no image"
    );
    eprintln!(
        "{TEST}: {MACHINES} machines at {RATE} through the satellite: first storm {first_link} bytes \
         over the link for {artifacts} bytes of artifacts, repeat {:.1} % from the rack",
        from_rack * 100.0
    );
}
