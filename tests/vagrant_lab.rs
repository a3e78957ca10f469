//! The Vagrant lab for real, as `vagrant/README.md` walks a newcomer through
//! it: `vagrant/lab up` with two machines, node1 BIOS and node2 UEFI
//! (libvirtd, virtlogd, the libvirt network, ironboot and the domains all in
//! a network namespace of the lab's own); both boot the live OS and confirm
//! generation 1; a second generation is imported, the group moved to it, the
//! machines rebooted (`vagrant/lab reboot`) and both confirm generation 2;
//! then `vagrant/lab down`, and nothing may be left: no namespace, no
//! libvirt domain, network or pool definition, no process. Then the same
//! with the optional server VM (`LAB_SERVER_VM=1`: ironboot itself booted
//! from RAM in a VM) serving one machine.
//!
//! Needs root, `vagrant vagrant-libvirt libvirt-daemon-system` and what the
//! other end-to-end tests need; skips with a reason without them, fails
//! under `IRONBOOT_E2E=require`. About 3–4 minutes under TCG.

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
            env: vec![("LAB_MACHINES", "2"), ("LAB_UEFI", "2")],
            machines: 2,
        };
        lab.ok(&["up"], 900);
        eprintln!("[{:3}s] lab up", elapsed());
        lab.wait_confirmed(1, 300);
        eprintln!(
            "[{:3}s] node1 (BIOS) and node2 (UEFI) confirmed generation 1",
            elapsed()
        );

        let liveos = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/.cache/liveos");
        let (kernel, initrd) = (liveos.join("vmlinuz"), liveos.join("initrd.img"));
        lab.ok(
            &[
                "run",
                "ironboot",
                "image",
                "import",
                "--stream",
                "live",
                "--kernel",
                kernel.to_str().unwrap(),
                "--initrd",
                initrd.to_str().unwrap(),
                "--cmdline",
                "console=ttyS0,115200n8 ironboot.after=stay lab.release=2",
            ],
            120,
        );
        lab.ok(
            &[
                "run",
                "ironboot",
                "group",
                "set-generation",
                "default",
                "live",
                "2",
            ],
            60,
        );
        lab.ok(&["reboot"], 120);
        lab.wait_confirmed(2, 300);
        eprintln!(
            "[{:3}s] both confirmed generation 2 after a reboot",
            elapsed()
        );
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
