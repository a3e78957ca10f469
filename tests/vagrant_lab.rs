//! The Vagrant lab for real: `vagrant/lab up` with one machine (libvirtd,
//! virtlogd, the libvirt network, ironboot and the domain all inside a
//! network namespace of the lab's own), wait for the live OS's
//! `IRONBOOT-LIVEOS: phone_home ok` on the machine's serial log, then
//! `vagrant/lab down` and check that no namespace, libvirt definition or
//! process is left.
//!
//! IGNORED: the machine cannot boot yet. Measured 2026-11-28: `vagrant up`
//! takes ~150 s under TCG; the virtio NIC's iPXE ROM (Debian ipxe-qemu,
//! 1.0.0+git-20190125, `buildarch=i386`, `platform=pcbios`) gets
//! `/boot/{mac}.ipxe` → nothing: "live gen N is an x86_64 image but this
//! machine runs i386" (server bug, see vagrant/README.md). Run with
//! `IRONBOOT_E2E=require cargo test --test vagrant_lab -- --ignored --nocapture`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn lab(dir: &Path, name: &str, arg: &str, secs: u64) -> bool {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("vagrant/lab");
    Command::new("timeout")
        .args(["-k", "10", &secs.to_string()])
        .arg(&script)
        .arg(arg)
        .env("LAB_NAME", name)
        .env("LAB_DIR", dir)
        .env("LAB_MACHINES", "1")
        .env("IRONBOOT", env!("CARGO_BIN_EXE_ironboot"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

struct Down(PathBuf, String);

impl Drop for Down {
    fn drop(&mut self) {
        lab(&self.0, &self.1, "down", 400);
    }
}

#[test]
#[ignore = "not yet run since the i386/uuid server fixes; run with --ignored (issue 7)"]
fn the_vagrant_lab_boots_a_machine_to_confirmation_and_leaves_nothing() {
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    let have = Path::new("/usr/bin/vagrant").exists() && Path::new("/usr/sbin/libvirtd").exists();
    if !root || !have {
        assert!(
            std::env::var("IRONBOOT_E2E").as_deref() != Ok("require"),
            "IRONBOOT_E2E=require but root, vagrant or libvirtd missing"
        );
        eprintln!("SKIPPED: needs root, vagrant, vagrant-libvirt, libvirt-daemon-system");
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("ironboot-vlab-")
        .tempdir()
        .unwrap();
    let name = format!("ibvlab{}", std::process::id());
    let started = Instant::now();
    {
        let _down = Down(tmp.path().to_path_buf(), name.clone());
        assert!(lab(tmp.path(), &name, "up", 900), "vagrant/lab up failed");
        eprintln!("lab up: {:.0}s", started.elapsed().as_secs_f64());
        let serial = tmp.path().join("serial/node1.log");
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let text =
                String::from_utf8_lossy(&std::fs::read(&serial).unwrap_or_default()).into_owned();
            if text.contains("IRONBOOT-LIVEOS: phone_home ok") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no phone_home ok in 300 s:\n{text}"
            );
            std::thread::sleep(Duration::from_secs(1));
        }
        eprintln!("confirmed: {:.0}s", started.elapsed().as_secs_f64());
    }
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&netns.stdout).contains(&name),
        "namespace left"
    );
    for left in [
        format!("/etc/libvirt/qemu/{name}-node1.xml"),
        format!("/etc/libvirt/qemu/networks/{name}.xml"),
        format!("/etc/libvirt/storage/{name}.xml"),
    ] {
        assert!(!Path::new(&left).exists(), "{left} left behind");
    }
    eprintln!("total: {:.0}s", started.elapsed().as_secs_f64());
}
