//! The Vagrant lab for real, as `vagrant/README.md` walks a newcomer through
//! it: `vagrant/lab up` with three machines, node1 and node3 BIOS and node2
//! UEFI (libvirtd, virtlogd, the libvirt network, ironboot, the machines'
//! BMCs: Redfish through sushy-emulator's libvirt driver, and IPMI over LAN
//! through virtualbmc for node3, and the domains all in a network namespace
//! of the lab's own); all boot the live OS and confirm
//! generation 1. Then, with zero manual steps: a canary rollout to
//! generation 2 whose machines ironboot reboots through their BMCs (every
//! machine confirms 2), and a rollout to a broken generation 3 whose canary,
//! rebooted through its BMC, panics, netboots again, is rolled back and
//! confirms 2. Then `vagrant/lab down`, and nothing may be left: no
//! namespace, no libvirt domain, network or pool definition, no process.
//! Then the same with the optional server VM (`LAB_SERVER_VM=1`: ironboot
//! itself booted from RAM in a VM) serving one machine, rebooted by
//! `vagrant/lab reboot`.
//!
//! Needs root, `vagrant vagrant-libvirt libvirt-daemon-system`,
//! `sushy-emulator` and what the other end-to-end tests need; skips with a
//! reason without them, fails under `IRONBOOT_E2E=require`. About 5–6
//! minutes under TCG.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

struct Lab {
    dir: PathBuf,
    name: String,
    /// LAB_MACHINES, LAB_UEFI, LAB_SERVER_VM, …
    env: Vec<(&'static str, &'static str)>,
    machines: usize,
}

impl Lab {
    fn command(&self, args: &[&str], secs: u64) -> Command {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("vagrant/lab");
        let mut c = Command::new("timeout");
        c.args(["-k", "10", &secs.to_string()])
            .arg(script)
            .args(args)
            .env("LAB_NAME", &self.name)
            .env("LAB_DIR", &self.dir)
            .envs(self.env.iter().copied())
            .env("IRONBOOT", env!("CARGO_BIN_EXE_ironboot"));
        c
    }

    fn ok(&self, args: &[&str], secs: u64) {
        let status = self.command(args, secs).status().expect("run vagrant/lab");
        assert!(status.success(), "vagrant/lab {args:?} failed: {status}");
    }

    fn output(&self, args: &[&str]) -> Output {
        self.command(args, 60).output().expect("run vagrant/lab")
    }

    /// `ironboot ARGS… -o json` inside the lab: its answer.
    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["run", "ironboot"];
        all.extend_from_slice(args);
        all.extend(["-o", "json"]);
        let out = self.output(&all);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    /// Polls `ironboot rollout status ID` until its state is `state`.
    fn wait_rollout(&self, id: i64, state: &str, secs: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let r = self.json(&["rollout", "status", &id.to_string()]);
            if r["state"] == state {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "rollout {id} not {state} in {secs} s: {r}"
            );
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// Starts a canary rollout of group default to live generation `to`.
    fn rollout(&self, to: i64) -> Value {
        self.json(&[
            "rollout",
            "start",
            "--group",
            "default",
            "--stream",
            "live",
            "--to",
            &to.to_string(),
            "--canary",
            "1",
            "--steps",
            "100%",
            "--timeout",
            "10m",
            "--on-bmc-failure",
            "fail",
        ])
    }

    /// `ironboot machines list -o json` inside the lab: MAC → current
    /// generation number (None until confirmed).
    fn current(&self) -> Vec<(String, Option<i64>)> {
        let out = self.output(&["run", "ironboot", "machines", "list", "-o", "json"]);
        let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) else {
            return Vec::new();
        };
        v["machines"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                let mac = m["mac"].as_str().unwrap_or_default().to_string();
                (mac, m["current"]["generation"].as_i64())
            })
            .collect()
    }

    /// Waits until every machine has confirmed generation `gen`.
    fn wait_confirmed(&self, gen: i64, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let current = self.current();
            let confirmed = current.iter().filter(|(_, g)| *g == Some(gen)).count();
            if confirmed == self.machines {
                return;
            }
            if Instant::now() > deadline {
                let consoles: String = (1..=self.machines)
                    .map(|k| format!("node{k}"))
                    .map(|n| {
                        let log = std::fs::read(self.dir.join(format!("serial/{n}.log")))
                            .unwrap_or_default();
                        let text = String::from_utf8_lossy(&log).into_owned();
                        let tail: Vec<&str> = text.lines().rev().take(15).collect();
                        format!("--- {n} (last lines, newest first)\n{}\n", tail.join("\n"))
                    })
                    .collect();
                panic!(
                    "generation {gen} not confirmed by all in {secs} s: {current:?}\n{consoles}"
                );
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.command(&["down"], 400).status();
    }
}

#[test]
fn the_vagrant_lab_boots_bios_and_uefi_machines_through_two_generations_and_leaves_nothing() {
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    let have = [
        "/usr/bin/vagrant",
        "/usr/sbin/libvirtd",
        "/usr/sbin/virtlogd",
    ]
    .iter()
    .all(|p| Path::new(p).exists());
    if !root || !have {
        assert!(
            std::env::var("IRONBOOT_E2E").as_deref() != Ok("require"),
            "IRONBOOT_E2E=require but root, vagrant or libvirtd is missing"
        );
        eprintln!("SKIPPED: needs root, vagrant, vagrant-libvirt, libvirt-daemon-system");
        return;
    }
    let default_network = Path::new("/etc/libvirt/qemu/networks/default.xml");
    let had_default_network = default_network.exists();
    let tmp = tempfile::Builder::new()
        .prefix("ironboot-vlab-")
        .tempdir()
        .unwrap();
    let started = Instant::now();
    let elapsed = || started.elapsed().as_secs();

    // 1. The walkthrough: BIOS node1, UEFI node2, two generations.
    let name = format!("ibvlab{}", std::process::id());
    {
        let lab = Lab {
            dir: tmp.path().join("lab"),
            name: name.clone(),
            env: vec![
                ("LAB_MACHINES", "3"),
                ("LAB_UEFI", "2"),
                ("LAB_BMC", "1"),
                ("LAB_IPMI", "3"),
            ],
            machines: 3,
        };
        lab.ok(&["up"], 900);
        eprintln!("[{:3}s] lab up", elapsed());
        lab.wait_confirmed(1, 300);
        eprintln!(
            "[{:3}s] node1, node3 (BIOS) and node2 (UEFI) confirmed generation 1",
            elapsed()
        );
        rollouts_through_the_bmcs(&lab, &tmp, elapsed);
    }
    eprintln!("[{:3}s] lab down", elapsed());
    assert_nothing_left(&name, &tmp.path().join("lab"));

    // 2. The server VM serving one machine.
    let name = format!("ibvlabs{}", std::process::id());
    {
        let lab = Lab {
            dir: tmp.path().join("lab-vm"),
            name: name.clone(),
            env: vec![("LAB_MACHINES", "1"), ("LAB_SERVER_VM", "1")],
            machines: 1,
        };
        lab.ok(&["up"], 900);
        eprintln!("[{:3}s] lab up with the server VM", elapsed());
        lab.wait_confirmed(1, 300);
        eprintln!(
            "[{:3}s] node1 confirmed generation 1 from the server VM",
            elapsed()
        );
        // `vagrant/lab reboot`: a second confirmed boot.
        lab.ok(&["reboot"], 120);
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let boots = lab.json(&["boots", "list"]);
            let list = boots["boots"].as_array().cloned().unwrap_or_default();
            if list.iter().filter(|b| b["state"] == "confirmed").count() >= 2 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no second confirmed boot after the reboot: {boots}"
            );
            std::thread::sleep(Duration::from_secs(2));
        }
        eprintln!("[{:3}s] node1 rebooted and confirmed again", elapsed());
    }
    eprintln!("[{:3}s] lab down", elapsed());
    assert_nothing_left(&name, &tmp.path().join("lab-vm"));
    assert!(
        !Path::new(&format!("/etc/libvirt/qemu/{name}-server.xml")).exists(),
        "the server VM's definition left behind"
    );

    if !had_default_network {
        assert!(
            !default_network.exists(),
            "libvirt's default network, defined at the lab's first start, left behind"
        );
    }
}

/// Generation 2 by a canary rollout, every reboot done by ironboot through
/// the machines' BMCs; then a broken generation 3, rolled back.
fn rollouts_through_the_bmcs(lab: &Lab, tmp: &tempfile::TempDir, elapsed: impl Fn() -> u64) {
    let liveos = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/.cache/liveos");
    let (kernel, initrd) = (liveos.join("vmlinuz"), liveos.join("initrd.img"));
    let (kernel, initrd) = (kernel.to_str().unwrap(), initrd.to_str().unwrap());
    let import = |extra: &[&str], cmdline: &str| {
        let mut args = vec!["run", "ironboot", "image", "import", "--stream", "live"];
        args.extend(["--kernel", kernel, "--initrd", initrd]);
        for e in extra {
            args.extend(["--initrd", e]);
        }
        args.extend(["--cmdline", cmdline]);
        lab.ok(&args, 120);
    };
    import(
        &[],
        "console=ttyS0,115200n8 ironboot.after=stay lab.release=2",
    );
    let r = lab.rollout(2);
    let id = r["id"].as_i64().unwrap();
    lab.wait_rollout(id, "succeeded", 600);
    lab.wait_confirmed(2, 120);
    eprintln!(
        "[{:3}s] rollout {id}: all three rebooted through their BMCs and confirmed generation 2",
        elapsed()
    );

    let broken = tmp.path().join("broken.cpio");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/liveos/broken-initrd.sh");
    let status = Command::new(&script).arg(&broken).status().unwrap();
    assert!(status.success(), "{}", script.display());
    import(
        &[broken.to_str().unwrap()],
        "console=ttyS0,115200n8 panic=1",
    );
    let r = lab.rollout(3);
    let id = r["id"].as_i64().unwrap();
    let canary = r["waves"][0]["machines"][0]["mac"]
        .as_str()
        .unwrap()
        .to_string();
    let done = lab.wait_rollout(id, "rolled_back", 600);
    eprintln!(
        "[{:3}s] rollout {id} rolled back: {}",
        elapsed(),
        done["reason"]
    );
    // The canary's boots, newest first: it confirms 2 again after failing 3.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let boots = lab.json(&["boots", "list", "--mac", &canary]);
        let list = boots["boots"].as_array().cloned().unwrap_or_default();
        let newest = &list[0];
        let failed_3 = list
            .iter()
            .any(|b| b["generation"] == 3 && b["state"] == "failed");
        if failed_3 && newest["state"] == "confirmed" && newest["generation"] == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the canary never came back on 2: {boots}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    lab.wait_confirmed(2, 60);
    let events = lab.json(&["events", "--step", "rollout.reboot", "--limit", "100"]);
    let by_bmc = events["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["detail"]["via"] == "bmc" && e["detail"]["bmc"]["ok"] == true)
        .count();
    assert_eq!(
        by_bmc, 4,
        "three reboots for 2, the canary's for 3: {events}"
    );
    // node3's went over IPMI (virtualbmc), the others' over Redfish.
    let ops = lab.json(&["events", "--step", "bmc.op", "--limit", "100"]);
    let protocol_of = |mac: &str| -> Vec<String> {
        ops["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["mac"] == mac && e["detail"]["op"] == "netboot")
            .map(|e| {
                e["detail"]["protocol"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(protocol_of("52:54:00:1b:00:03"), ["ipmi"], "{ops}");
    assert!(
        protocol_of("52:54:00:1b:00:02")
            .iter()
            .all(|p| p == "redfish"),
        "{ops}"
    );
    eprintln!(
        "[{:3}s] canary {canary} back on generation 2; 4 reboots, all through the BMCs",
        elapsed()
    );
}

fn assert_nothing_left(name: &str, dir: &Path) {
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&netns.stdout).contains(name),
        "namespace {name} left behind"
    );
    for left in [
        format!("/etc/libvirt/qemu/{name}-node1.xml"),
        format!("/etc/libvirt/qemu/{name}-node2.xml"),
        format!("/etc/libvirt/qemu/networks/{name}.xml"),
        format!("/etc/libvirt/storage/{name}.xml"),
    ] {
        assert!(!Path::new(&left).exists(), "{left} left behind");
    }
    assert!(
        !dir.exists(),
        "the lab's state directory {} left behind",
        dir.display()
    );
}
