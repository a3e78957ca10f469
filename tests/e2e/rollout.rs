//! End to end: rollouts on a fleet of three real VMs (BIOS, QEMU's iPXE ROM,
//! TCG) in the `default` group, driven through the CLI and watched through
//! the REST API and each VM's serial console.
//!
//! - Generation 1 (A): all three boot it and phone home.
//! - Generation 2 (B, good): `ironboot rollout start --to 2 --canary 1
//!   --steps 100%` moves one machine; the reboot hook (a command that
//!   appends the MAC to a file, standing in for a BMC) asks for its reboot
//!   and the test powers that VM on; it boots B and confirms, the gate
//!   passes, the hook asks for the other two, they boot B, and the rollout
//!   succeeds with the group's pointer on 2.
//! - Generation 3 (C, broken): the live OS plus an extra initrd whose `/init`
//!   gives up before the network, so it never phones home; `panic=1` makes
//!   the kernel reboot the VM a second later, as a real server would. The
//!   canary boots C, panics, network-boots again: ironboot counts the
//!   unconfirmed boot as failed, the gate fails, the rollout rolls back, and
//!   that same boot is served B again and confirms it, all in one serial
//!   log. The other two never leave B.
//!
//! The lab (namespaces, bridge, taps, processes stopped by PID) is
//! `tests/e2e/lab`; the live OS is `tests/liveos/build.sh` (cached in
//! `tests/.cache`). Missing requirements skip the test with the reason,
//! unless `IRONBOOT_E2E=require`. Run with
//! `IRONBOOT_E2E=require cargo test --test e2e rollout:: -- --nocapture`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::lab::*;

const TEST: &str = "rollouts_move_a_vm_fleet_and_roll_a_broken_generation_back";
const STREAM: &str = "live";
const GEN_A: &str = "console=ttyS0,115200n8 ironboot.test=gen-a";
const GEN_B: &str = "console=ttyS0,115200n8 ironboot.test=gen-b";
/// `panic=1`: when the broken `/init` exits, the kernel reboots the machine.
const GEN_C: &str = "console=ttyS0,115200n8 ironboot.test=gen-c panic=1";
const MACS: [&str; 3] = [
    "52:54:00:00:c0:01",
    "52:54:00:00:c0:02",
    "52:54:00:00:c0:03",
];
const TAPS: [&str; 3] = ["tap0", "tap1", "tap2"];
const MEMORY_MB: u32 = 256;
/// What the broken generation's `/init` prints before it exits.
const BROKEN: &str = "IRONBOOT-BROKEN: init gives up before the network";
/// The extra initrd of the broken generation (`tests/liveos/broken-initrd.sh`):
/// only an `/init` that gives up, unpacked over the live OS's own.
fn broken_initrd(lab: &Lab) -> PathBuf {
    let out = lab.dir.join("broken.cpio");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/liveos/broken-initrd.sh");
    let status = Command::new(&lab.tools.timeout)
        .arg("10")
        .arg(&script)
        .arg(&out)
        .arg(&lab.tools.busybox)
        .status()
        .expect("run broken-initrd.sh");
    assert!(status.success(), "{}: {status}", script.display());
    out
}

/// The three machines, powered on by the test when ironboot's reboot hook
/// asks (or at the start): each power-on is a new QEMU with its own serial
/// log, `-no-reboot` off so a kernel panic resets the machine.
struct Fleet<'l> {
    lab: &'l Lab,
    /// The reboot hook's file: one `MAC GENERATION REASON` line per request.
    requests: PathBuf,
    /// Requests already acted on.
    seen: usize,
    /// Power-ons so far, per machine (names the serial logs).
    power_ons: [usize; 3],
}

impl<'l> Fleet<'l> {
    fn power_on(&mut self, mac: &str) -> Vm {
        let i = MACS.iter().position(|m| *m == mac).expect("one of ours");
        self.power_ons[i] += 1;
        let name = format!("m{}-{}", i + 1, self.power_ons[i]);
        self.lab.start_vm_rebooting(
            &name,
            TAPS[i],
            mac,
            Firmware::BiosIpxeRom,
            MEMORY_MB,
            OnReboot::Reset,
        )
    }

    /// Waits (up to 20 s) for `n` new reboot requests from the hook; the
    /// lines, split into words.
    fn wait_requests(&mut self, n: usize) -> Vec<Vec<String>> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = fs::read_to_string(&self.requests).unwrap_or_default();
            let lines: Vec<Vec<String>> = text
                .lines()
                .skip(self.seen)
                .map(|l| l.split_whitespace().map(String::from).collect())
                .collect();
            if lines.len() >= n {
                self.seen += n;
                return lines.into_iter().take(n).collect();
            }
            assert!(
                Instant::now() < deadline,
                "the reboot hook was asked for {} of {n} reboots in 20 s:\n{text}\n{}",
                lines.len(),
                tail(&self.lab.server_log(), 30)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Boots every VM in `vms` (each `(mac, vm)`) to phone-home with `generation`
/// at once (each QEMU exits as its guest powers off).
fn boot_all(vms: Vec<(&str, Vm)>, generation: i64, cmdline: &str) {
    std::thread::scope(|s| {
        let waits: Vec<_> = vms
            .into_iter()
            .map(|(mac, mut vm)| {
                s.spawn(move || {
                    let b = wait_booted(&mut vm, mac, STREAM, generation, cmdline);
                    eprintln!(
                        "e2e-rollout: {} {mac} gen {generation}: phone_home ok at {}",
                        vm.name,
                        secs(b.phone_home)
                    );
                    vm.stop();
                })
            })
            .collect();
        for w in waits {
            w.join()
                .unwrap_or_else(|_| panic!("a VM did not boot (above)"));
        }
    });
}

/// Polls `GET /api/v1/rollouts/{id}` (up to `limit`) until its state is
/// `state`.
fn rollout_when(api: &Api, id: i64, state: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let r = api.ok(&format!("/api/v1/rollouts/{id}"));
        if r["state"] == state {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "rollout {id} is not {state} after {}:\n{r:#}",
            secs(limit)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `ironboot rollout start … -o json`: the rollout as the API returns it.
fn start_rollout(lab: &Lab, to: i64) -> Value {
    let to = to.to_string();
    let out = cli(
        lab,
        &[
            "rollout",
            "start",
            "--group",
            "default",
            "--stream",
            STREAM,
            "--to",
            &to,
            "--canary",
            "1",
            "--steps",
            "100%",
            "--timeout",
            "5m",
            "-o",
            "json",
        ],
    );
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("rollout start -o json: {e}\n{out}"))
}

/// The MACs of a wave of a rollout.
fn wave_macs(r: &Value, wave: usize) -> Vec<String> {
    r["waves"][wave]["machines"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["mac"].as_str().map(String::from))
        .collect()
}

/// (stream, generation, state) of a machine's boots, newest first.
fn history(api: &Api, mac: &str) -> Vec<(i64, String)> {
    let h = api.ok(&format!("/api/v1/machines/{mac}/boots"));
    h["boots"]
        .as_array()
        .expect("boots is a list")
        .iter()
        .map(|b| {
            assert_eq!(b["stream"], STREAM, "{b:#}");
            (
                b["generation"].as_i64().unwrap_or(-1),
                b["state"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect()
}

fn pointer(api: &Api) -> Value {
    api.ok("/api/v1/groups/default")["pointer"].clone()
}

#[test]
fn rollouts_move_a_vm_fleet_and_roll_a_broken_generation_back() {
    let turn = Turn::wait(TEST);
    let Some(tools) = tools_or_skip(TEST) else {
        return;
    };
    let curl = match extra_requirements() {
        Ok(curl) => curl,
        Err(reason) => return skip(TEST, &reason),
    };
    let total = Instant::now();
    let os = match build_liveos(&tools.timeout) {
        Ok(os) => os,
        Err(reason) => return skip(TEST, &reason),
    };

    // Server with a reboot hook; A, B and the broken C ------------------------
    let mut lab = Lab::new(tools, "roll", 3, turn);
    let requests = lab.dir.join("reboot-requests");
    lab.extra_config = format!(
        "[rollout]\nreboot_command = 'echo \"$IRONBOOT_MAC $IRONBOOT_GENERATION $IRONBOOT_REASON\" >> {}'\n",
        requests.display()
    );
    lab.start_server(&ipxe_dir());
    let api = Api::new(&lab, curl);
    let broken = broken_initrd(&lab);
    assert_eq!(import(&lab, &os, STREAM, GEN_A, &[]).0, 1);
    assert_eq!(import(&lab, &os, STREAM, GEN_B, &[]).0, 2);
    assert_eq!(import(&lab, &os, STREAM, GEN_C, &[&broken]).0, 3);
    cli(&lab, &["group", "set-generation", "default", STREAM, "1"]);
    let mut fleet = Fleet {
        lab: &lab,
        requests,
        seen: 0,
        power_ons: [0; 3],
    };
    eprintln!("e2e-rollout: setup {}", secs(total.elapsed()));

    // The fleet on A ----------------------------------------------------------
    let started = Instant::now();
    let vms: Vec<(&str, Vm)> = MACS.iter().map(|m| (*m, fleet.power_on(m))).collect();
    boot_all(vms, 1, GEN_A);
    for mac in MACS {
        assert_confirmed(&api, mac, STREAM, 1, "bios");
    }
    eprintln!(
        "e2e-rollout: three machines on A in {}",
        secs(started.elapsed())
    );

    // A -> B (good): canary 1, then the rest ----------------------------------
    let started = Instant::now();
    let r = start_rollout(&lab, 2);
    let id = r["id"].as_i64().expect("rollout id");
    assert_eq!(r["state"], "running", "{r:#}");
    let canary = wave_macs(&r, 0);
    assert_eq!(canary.len(), 1, "canary 1: {r:#}");
    let canary = canary[0].clone();
    let asked = fleet.wait_requests(1);
    assert_eq!(asked[0][..2], [canary.clone(), "2".into()], "{asked:?}");
    // Until the canary confirms, nobody else moves.
    let r = api.ok(&format!("/api/v1/rollouts/{id}"));
    assert_eq!(r["counts"]["waiting"], 1, "{r:#}");
    assert_eq!(r["counts"]["pending"], 2, "{r:#}");
    let vm = fleet.power_on(&canary);
    boot_all(vec![(canary.as_str(), vm)], 2, GEN_B);
    assert_confirmed(&api, &canary, STREAM, 2, "bios");
    // The gate passes; the hook is asked for the other two.
    let asked = fleet.wait_requests(2);
    let mut rest: Vec<String> = asked.iter().map(|l| l[0].clone()).collect();
    rest.sort();
    let mut others: Vec<String> = MACS
        .iter()
        .filter(|m| **m != canary)
        .map(|m| m.to_string())
        .collect();
    others.sort();
    assert_eq!(rest, others, "{asked:?}");
    let vms: Vec<(&str, Vm)> = others
        .iter()
        .map(|m| (m.as_str(), fleet.power_on(m)))
        .collect();
    boot_all(vms, 2, GEN_B);
    let r = rollout_when(&api, id, "succeeded", Duration::from_secs(20));
    assert_eq!(r["counts"]["confirmed"], 3, "{r:#}");
    assert_eq!(pointer(&api), gen_ref(STREAM, 2));
    for mac in MACS {
        assert_confirmed(&api, mac, STREAM, 2, "bios");
    }
    eprintln!(
        "e2e-rollout: A -> B succeeded in {}:\n{}",
        secs(started.elapsed()),
        cli(&lab, &["rollout", "status", &id.to_string()])
    );

    // B -> C (broken): the canary fails, the rollout rolls back ---------------
    let started = Instant::now();
    let r = start_rollout(&lab, 3);
    let id = r["id"].as_i64().expect("rollout id");
    let canary = wave_macs(&r, 0).pop().expect("a canary");
    let asked = fleet.wait_requests(1);
    assert_eq!(asked[0][..2], [canary.clone(), "3".into()], "{asked:?}");
    let mut vm = fleet.power_on(&canary);
    let echo = |generation: i64| format!("ironboot: {canary} -> {STREAM} gen {generation} (boot ");
    vm.wait_markers(
        &[
            &echo(3),
            BROKEN,
            "Kernel panic",
            &echo(2),
            &live("phone_home ok"),
            &live("done"),
        ],
        BOOT_LIMIT,
    );
    let status = vm.wait_exit(Duration::from_secs(20));
    assert!(
        matches!(status, Some(s) if s.success()),
        "{}: QEMU did not exit after the poweroff ({status:?})\n{}",
        vm.name,
        tail(&vm.serial, 30)
    );
    let serial = vm.text();
    let name = vm.name.clone();
    vm.stop();
    // One serial log, two boots: C gives up and panics, then B phones home.
    let second = serial.find(&echo(2)).unwrap();
    let (first, again) = serial.split_at(second);
    assert!(
        first.contains(&echo(3))
            && first.contains(BROKEN)
            && first.contains("Kernel panic")
            && kernel_cmdline(first).is_some_and(|c| c.contains(GEN_C))
            && !first.contains(&live("phone_home")),
        "{name}: the first boot should be C's, never phoning home\n{first}"
    );
    assert!(
        kernel_cmdline(again).is_some_and(|c| c.contains(GEN_B))
            && again.contains(&live("phone_home ok")),
        "{name}: the second boot should be B's, confirmed\n{again}"
    );
    let r = rollout_when(&api, id, "rolled_back", Duration::from_secs(10));
    let reason = r["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&canary) && reason.contains("gen 3"),
        "the reason names the canary and C: {r:#}"
    );
    assert_eq!(pointer(&api), gen_ref(STREAM, 2), "the pointer never moved");
    assert_confirmed(&api, &canary, STREAM, 2, "bios");
    assert_eq!(
        history(&api, &canary)[..3],
        [
            (2, "confirmed".to_string()),
            (3, "failed".to_string()),
            (2, "confirmed".to_string()),
        ],
        "the canary's boots, newest first"
    );
    for mac in MACS.iter().filter(|m| **m != canary) {
        assert!(
            history(&api, mac).iter().all(|(g, _)| *g != 3),
            "{mac} never moved to C"
        );
        let m = api.ok(&format!("/api/v1/machines/{mac}"));
        assert_eq!(m["current"], gen_ref(STREAM, 2), "{m:#}");
    }
    eprintln!(
        "e2e-rollout: B -> C rolled back in {}:\n{}",
        secs(started.elapsed()),
        cli(&lab, &["rollout", "status", &id.to_string()])
    );
    eprintln!(
        "e2e-rollout: reboot hook requests:\n{}",
        fs::read_to_string(&fleet.requests).unwrap_or_default()
    );

    // A clean stop --------------------------------------------------------------
    drop(api);
    lab.stop_server_cleanly();
    eprintln!("e2e-rollout: total {}", secs(total.elapsed()));
}
