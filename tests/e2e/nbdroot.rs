//! Live boot beyond RAM, end to end: a generation whose root filesystem is
//! a 2 GiB squashfs (a random, incompressible 2 GiB file in it) boots a VM
//! with 512 MiB of RAM. iPXE loads the kernel and the small stage-1 initrd
//! (`tests/liveos/nbdroot.sh`); the initrd attaches the root and its
//! dm-verity hash tree from ironboot's NBD server with `ironboot-nbd-root`,
//! opens them with `veritysetup` and the root hash from the command line,
//! mounts the root read-only under a tmpfs overlay and switches to it; the
//! root's init phones home.
//!
//! - (a) it confirms, having moved at most 64 MiB over NBD (the server's
//!   count on the boot row, which `machines show` prints);
//! - (b) the server is killed with SIGKILL while the machine reads from its
//!   root every 2 s, and started again 3 s later: the machine's NBD client
//!   reconnects, no read fails, and the reads after the restart are counted
//!   on the same boot;
//! - (c) generation 2 (another root) has one byte of its root image changed
//!   in the store: dm-verity refuses the block, the initrd reports a
//!   verification failure and reboots; the boot is failed at once, and the
//!   machine's next netboot gets its last good generation, which confirms;
//! - (d) the server is killed as soon as another machine's initrd has
//!   attached its root (while it opens and mounts it), and started again
//!   3 s later: the initrd reconnects, switches root and the machine
//!   confirms.
//!
//! Run with `IRONBOOT_E2E=require cargo test --test e2e nbdroot:: -- --nocapture`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::lab::*;

const TEST: &str = "a_root_larger_than_ram_boots_verified_over_nbd_and_survives_a_server_restart";
const MAC: &str = "52:54:00:9b:00:01";
const MID_MAC: &str = "52:54:00:9b:00:02";
const NBD: &str = "10.77.0.1:10809";
/// The large root, and the small one whose copy in the store is changed.
const BIG_MIB: u32 = 2048;
const SMALL_MIB: u32 = 64;
const CMDLINE: &str = "console=ttyS0,115200n8 ironboot.after=stay";
/// What may cross the network before the machine runs from its root.
const BEFORE_SWITCH_LIMIT: u64 = 64 << 20;

struct Stage1 {
    kernel: PathBuf,
    initrd: PathBuf,
    root: PathBuf,
}

/// `tests/liveos/nbdroot.sh` (cached) for a root of `mib` MiB.
fn build_stage1(timeout: &Path, mib: u32) -> Result<Stage1, String> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = repo.join(format!("tests/.cache/liveos-nbd-{mib}"));
    let result = Command::new(timeout)
        .args(["-k", "5", "600"])
        .arg(repo.join("tests/liveos/nbdroot.sh"))
        .arg(&out)
        .env("SIZE_MIB", mib.to_string())
        .env("NBD_ROOT_BIN", env!("CARGO_BIN_EXE_ironboot-nbd-root"))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run tests/liveos/nbdroot.sh: {e}"))?;
    let log = String::from_utf8_lossy(&result.stderr).into_owned();
    if !result.status.success() {
        return Err(format!("tests/liveos/nbdroot.sh failed:\n{log}"));
    }
    eprintln!("nbdroot: {}", log.trim_end().replace('\n', "\nnbdroot: "));
    let os = build_liveos(timeout)?;
    Ok(Stage1 {
        kernel: os.kernel,
        initrd: out.join("initrd-nbd.img"),
        root: out.join("root.squashfs"),
    })
}

/// `ironboot image import` of a stage-1 generation into `stream` with
/// `cmdline` (the CLI hashes the root, computes its tree and uploads both:
/// allowed more than the CLI's usual minute): its generation number.
fn import_root(lab: &Lab, os: &Stage1, stream: &str, cmdline: &str) -> i64 {
    let out = cli_within(
        lab,
        400,
        &[
            "image",
            "import",
            "--stream",
            stream,
            "--kernel",
            os.kernel.to_str().unwrap(),
            "--initrd",
            os.initrd.to_str().unwrap(),
            "--rootfs",
            os.root.to_str().unwrap(),
            "--cmdline",
            cmdline,
        ],
    );
    imported(&out).0
}

/// The latest boot of `mac`: (id, state, root bytes, verification failures).
fn latest_boot(lab: &Lab, mac: &str) -> (String, String, u64, u64) {
    let rows = lab.query(
        "SELECT CAST(id AS TEXT), state, CAST(root_bytes AS TEXT), CAST(verify_failures AS TEXT)
         FROM boots WHERE mac = $1 ORDER BY id DESC LIMIT 1",
        &[mac],
    );
    let row = rows.first().unwrap_or_else(|| panic!("no boot of {mac}"));
    let text = |i: usize| row[i].clone().unwrap_or_default();
    (
        text(0),
        text(1),
        text(2).parse().unwrap(),
        text(3).parse().unwrap(),
    )
}

/// The `read N ok` lines of the reader loop so far: the highest N, and
/// whether any read failed.
fn reads(serial: &str) -> (u32, bool) {
    let last = serial
        .lines()
        .filter_map(|l| l.split(&live("read ")).nth(1))
        .filter_map(|rest| rest.strip_suffix(" ok").and_then(|n| n.trim().parse().ok()))
        .max()
        .unwrap_or(0);
    let failed = serial
        .lines()
        .any(|l| l.contains(&live("read ")) && l.contains(" failed"));
    (last, failed)
}

/// Kills `ironboot serve` itself (the child of its `timeout`) with SIGKILL.
fn kill_server(lab: &mut Lab) {
    let server = lab.server.take().expect("server running");
    for pid in children_of(server.child.id()) {
        signal(pid, nix::libc::SIGKILL);
    }
    let mut server = server;
    assert!(
        server.stop(Duration::from_secs(10)).is_some(),
        "the server's timeout wrapper did not end"
    );
}

#[test]
fn a_root_larger_than_ram_boots_verified_over_nbd_and_survives_a_server_restart() {
    let turn = Turn::wait(TEST);
    let Some(tools) = tools_or_skip(TEST) else {
        return;
    };
    if which("veritysetup").is_none() || which("mksquashfs").is_none() {
        return skip(
            TEST,
            "veritysetup or mksquashfs not found (cryptsetup-bin, squashfs-tools)",
        );
    }
    let total = Instant::now();
    let big = match build_stage1(&tools.timeout, BIG_MIB) {
        Ok(os) => os,
        Err(reason) => return skip(TEST, &reason),
    };
    let small = match build_stage1(&tools.timeout, SMALL_MIB) {
        Ok(os) => os,
        Err(reason) => return skip(TEST, &reason),
    };

    let mut lab = Lab::new(tools, "nbd", 2, turn);
    lab.extra_config = format!(
        "[nbd]\nlisten = \"{NBD}\"\n[rollout]\nwatchdog_failures = 1\nconfirm_timeout = \"120s\"\n"
    );
    lab.start_server(&ipxe_dir());
    let started = Instant::now();
    assert_eq!(import_root(&lab, &big, "big", CMDLINE), 1);
    eprintln!(
        "e2e-nbdroot: {BIG_MIB} MiB root imported in {}",
        secs(started.elapsed())
    );
    cli(&lab, &["groups", "set-generation", "default", "big", "1"]);

    // (a) 2 GiB of root on 512 MiB of RAM ------------------------------------
    let mut vm = lab.start_vm_with("a-big", "tap0", MAC, Firmware::BiosIpxeRom, 512);
    let at = vm.wait_markers(
        &[
            &live("nbd root "),
            &live("switching root (verified)"),
            &live("stage 2 on nbd root"),
            &live("phone_home ok"),
            &live("read 1 ok"),
        ],
        BOOT_LIMIT,
    );
    eprintln!(
        "e2e-nbdroot: (a) switched root at {}, confirmed at {}",
        secs(at[1]),
        secs(at[3])
    );
    // Reads are passed on every 5 s while a connection reads: the first
    // count comes a few seconds after the switch (with a few reads of the
    // loop below in it, 2 MiB each with readahead).
    let deadline = Instant::now() + Duration::from_secs(15);
    let (boot, state, bytes, failures) = loop {
        let latest = latest_boot(&lab, MAC);
        if latest.2 > 0 || Instant::now() > deadline {
            break latest;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!((state.as_str(), failures), ("confirmed", 0), "boot {boot}");
    assert!(
        bytes > 0 && bytes <= BEFORE_SWITCH_LIMIT,
        "(a) {bytes} bytes over NBD by the first count after the confirmation (limit {BEFORE_SWITCH_LIMIT})"
    );
    eprintln!(
        "e2e-nbdroot: (a) {} KiB read over NBD by the first count after the confirmation",
        bytes / 1024
    );
    let shown = cli(&lab, &["machines", "show", MAC]);
    assert!(shown.contains("0 verification failures"), "{shown}");

    // (b) the server dies and comes back while the machine reads ------------
    let (before, _) = reads(&vm.text());
    restart_server(&mut lab, "server-before-kill.log");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (last, failed) = reads(&vm.text());
        assert!(!failed, "(b) a read failed\n{}", tail(&vm.serial, 30));
        if last >= before + 10 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "(b) reads stopped at {last} (before the kill: {before})\n{}",
            tail(&vm.serial, 30)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let after = lab.wait_rows(
        "reads after the restart counted on the same boot",
        "SELECT CAST(root_bytes AS TEXT) FROM boots WHERE id = CAST($1 AS BIGINT)",
        &[&boot],
        |rows| {
            rows.first()
                .and_then(|r| r[0].as_deref())
                .and_then(|b| b.parse::<u64>().ok())
                .is_some_and(|b| b > bytes)
        },
    );
    eprintln!(
        "e2e-nbdroot: (b) reads went on; boot {boot} now {:?} bytes",
        after[0][0]
    );
    vm.stop();

    // (c) one byte changed in the served root: refused, last good boots ----
    assert_eq!(import_root(&lab, &small, "small", CMDLINE), 1);
    let digest = {
        let out = Command::new("sha256sum").arg(&small.root).output().unwrap();
        String::from_utf8_lossy(&out.stdout)[..64].to_string()
    };
    let stored = lab
        .dir
        .join(format!("data/images/artifacts/sha256/{digest}"));
    let mut bytes_on_disk = std::fs::read(&stored).unwrap();
    bytes_on_disk[1000] ^= 0x01;
    std::fs::write(&stored, &bytes_on_disk).unwrap();
    // The machine confirmed big 1 in (a): its last good generation.
    cli(&lab, &["groups", "set-generation", "default", "small", "1"]);
    let mut vm = lab.start_vm_rebooting(
        "c-tampered",
        "tap0",
        MAC,
        Firmware::BiosIpxeRom,
        512,
        OnReboot::Reset,
    );
    let last_good = format!("ironboot: {MAC} -> big gen 1 (boot ");
    let at = vm.wait_markers(
        &[
            &format!("ironboot: {MAC} -> small gen 1 (boot "),
            &live("root failed: verity"),
            &last_good,
            &live("phone_home ok"),
        ],
        BOOT_LIMIT,
    );
    eprintln!(
        "e2e-nbdroot: (c) refused at {}, last good confirmed at {}",
        secs(at[1]),
        secs(at[3])
    );
    let failed = lab.query(
        "SELECT state, CAST(verify_failures AS TEXT), reason FROM boots
         WHERE mac = $1 AND stream = 'small' ORDER BY id DESC LIMIT 1",
        &[MAC],
    );
    assert_eq!(failed[0][0].as_deref(), Some("failed"), "{failed:?}");
    assert_eq!(failed[0][1].as_deref(), Some("1"), "{failed:?}");
    let (_, state, _, _) = latest_boot(&lab, MAC);
    assert_eq!(state, "confirmed");
    vm.stop();

    // (d) the server dies in the middle of a boot, just after the initrd
    // attached its root: the boot goes on once it is back --------------
    cli(&lab, &["groups", "set-generation", "default", "big", "1"]);
    let mut vm = lab.start_vm_with("d-midboot", "tap1", MID_MAC, Firmware::BiosIpxeRom, 512);
    vm.wait_markers(&["ironboot-nbd-root: ready"], BOOT_LIMIT);
    restart_server(&mut lab, "server-before-midboot-kill.log");
    let at = vm.wait_markers(
        &[
            &live("switching root (verified)"),
            &live("phone_home ok"),
            &live("read 1 ok"),
        ],
        BOOT_LIMIT,
    );
    let text = vm.text();
    assert!(
        text.contains("ironboot-nbd-root: nbd0: reconnected")
            && !text.contains(&live("root failed")),
        "(d) the initrd reconnected and went on\n{}",
        tail(&vm.serial, 30)
    );
    let (_, state, _, _) = latest_boot(&lab, MID_MAC);
    assert_eq!(state, "confirmed");
    eprintln!(
        "e2e-nbdroot: (d) confirmed at {} across a restart mid-boot",
        secs(at[1])
    );
    vm.stop();
    lab.stop_server_cleanly();
    eprintln!("e2e-nbdroot: total {}", secs(total.elapsed()));
}

/// Kills the server with SIGKILL, keeps its log as `kept`, and starts it
/// again 3 s later on the same data.
fn restart_server(lab: &mut Lab, kept: &str) {
    kill_server(lab);
    let killed = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    std::fs::rename(lab.server_log(), lab.dir.join(kept)).unwrap();
    lab.start_server(&ipxe_dir());
    eprintln!(
        "e2e-nbdroot: server back {} after SIGKILL",
        secs(killed.elapsed())
    );
}

/// The benchmark of BENCHMARKS.md ("Two-stage boot"), not a test: the
/// same root (SIZE_MIB, default 256, of random data) booted two ways on
/// VMs with 1 GiB of RAM, RUNS times each, alternating: streamed over NBD
/// by the two-stage live OS, and unpacked from an initrd (the root's tree
/// without the stage-2 mark, as an uncompressed cpio after the one-stage
/// live OS's initrd, which iPXE loads whole). Prints each boot's seconds from power-on to the
/// confirmation and the medians. `benches/nbdroot-boot.sh` runs it.
#[test]
#[ignore = "a benchmark: benches/nbdroot-boot.sh"]
fn bench_two_stage_boot_against_the_root_as_an_initrd() {
    const BENCH: &str = "bench_two_stage_boot_against_the_root_as_an_initrd";
    let env = |k: &str, d: u32| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (mib, runs) = (env("SIZE_MIB", 256), env("RUNS", 3));
    let turn = Turn::wait(BENCH);
    let tools = tools_or_skip(BENCH).expect("the e2e tools");
    let two_stage = build_stage1(&tools.timeout, mib).expect("stage 1");
    let one_stage = build_liveos(&tools.timeout).expect("the live OS");
    let mut lab = Lab::new(tools, "nbdb", 1, turn);
    lab.extra_config = format!("[nbd]\nlisten = \"{NBD}\"\n");
    lab.start_server(&ipxe_dir());

    // The root's tree as an initrd: unsquashfs, then cpio (newc).
    let tree = lab.dir.join("tree");
    let (ok, out) = lab.run(&[
        "unsquashfs",
        "-q",
        "-d",
        tree.to_str().unwrap(),
        two_stage.root.to_str().unwrap(),
    ]);
    assert!(ok, "unsquashfs: {out}");
    // Unpacked by the kernel, it is the one-stage live OS plus the blob.
    std::fs::remove_file(tree.join("etc/ironboot-stage2")).unwrap();
    let cpio = lab.dir.join("root.cpio");
    let script = format!(
        "cd {} && find . | LC_ALL=C sort | {} cpio -o -H newc > {}",
        tree.display(),
        lab.tools.busybox.display(),
        cpio.display()
    );
    let (ok, out) = lab.run(&["sh", "-c", &script]);
    assert!(ok, "cpio: {out}");
    std::fs::remove_dir_all(&tree).unwrap();

    let cmdline = "console=ttyS0,115200n8";
    assert_eq!(import_root(&lab, &two_stage, "nbd", cmdline), 1);
    assert_eq!(import(&lab, &one_stage, "initrd", cmdline, &[&cpio]).0, 1);

    let mut times: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for run in 0..runs {
        for (i, stream) in ["nbd", "initrd"].into_iter().enumerate() {
            cli(&lab, &["groups", "set-generation", "default", stream, "1"]);
            let mac = format!("52:54:00:9c:{run:02x}:{i:02x}");
            let name = format!("{stream}-{run}");
            let mut vm = lab.start_vm_with(&name, "tap0", &mac, Firmware::BiosIpxeRom, 1024);
            let at = vm.wait_markers(&[&live("phone_home ok")], BOOT_LIMIT);
            vm.wait_exit(Duration::from_secs(20));
            eprintln!(
                "bench-nbdroot: {stream} run {run}: confirmed at {}",
                secs(at[0])
            );
            times[i].push(at[0].as_secs_f64());
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (nbd, initrd) = (median(&mut times[0]), median(&mut times[1]));
    eprintln!(
        "bench-nbdroot: {mib} MiB root, {runs} runs: two-stage over NBD {nbd:.1} s, as an initrd {initrd:.1} s (median to confirmation; {:.2}x)",
        initrd / nbd
    );
    lab.stop_server_cleanly();
}
