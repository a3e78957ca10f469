//! The live OS side of the end-to-end lab, shared by the tests that boot it
//! (`boot`, `proxy`, `rollout`): building it, importing it
//! as a generation, the operator's CLI and REST API inside the server
//! namespace, and what a boot to phone-home looks like on a VM's serial
//! console.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;

/// The server's HTTP base inside the server namespace.
pub const BASE: &str = "http://10.77.0.1:8080";
/// From VM start to the live OS's `done`, with four TCG guests at once.
pub const BOOT_LIMIT: Duration = Duration::from_secs(150);

/// The live OS's console prefix.
pub fn live(line: &str) -> String {
    format!("IRONBOOT-LIVEOS: {line}")
}

// ---------------------------------------------------------------------------
// Requirements beyond the lab's: curl for the API, the live OS build
// ---------------------------------------------------------------------------

pub fn extra_requirements() -> Result<PathBuf, String> {
    for (name, package) in [
        ("apt-get", "apt"),
        ("dpkg-deb", "dpkg"),
        ("flock", "util-linux"),
    ] {
        which(name).ok_or_else(|| {
            format!("{name} not found (package {package}; the live OS build needs it)")
        })?;
    }
    which("curl").ok_or_else(|| "curl not found (package curl)".to_string())
}

pub struct LiveOs {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// `tests/liveos/build.sh` into `tests/.cache/liveos` (a no-op when cached),
/// bounded by `timeout`.
pub fn build_liveos(timeout: &Path) -> Result<LiveOs, String> {
    let out = build(timeout, &[], "liveos", 300, &["vmlinuz", "initrd.img"])?;
    Ok(LiveOs {
        kernel: out.join("vmlinuz"),
        initrd: out.join("initrd.img"),
    })
}

/// `tests/liveos/build.sh ARGS tests/.cache/CACHE` within `secs` (a no-op
/// when cached): the output folder, once each of `files` is in it.
pub fn build(
    timeout: &Path,
    args: &[&str],
    cache: &str,
    secs: u32,
    files: &[&str],
) -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = root.join("tests/.cache").join(cache);
    let result = Command::new(timeout)
        .args(["-k", "5", &secs.to_string()])
        .arg(root.join("tests/liveos/build.sh"))
        .args(args)
        .arg(&out)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run tests/liveos/build.sh: {e}"))?;
    let log = String::from_utf8_lossy(&result.stderr).into_owned();
    if !result.status.success() {
        return Err(format!(
            "tests/liveos/build.sh {} failed ({}):\n{log}",
            args.join(" "),
            result.status
        ));
    }
    eprintln!("liveos: {}", log.trim_end().replace('\n', "\nliveos: "));
    match files.iter().find(|f| !out.join(f).is_file()) {
        Some(f) => Err(format!("build.sh succeeded but {f} is missing")),
        None => Ok(out),
    }
}

// ---------------------------------------------------------------------------
// The operator's side: the CLI and the API, inside the server namespace
// ---------------------------------------------------------------------------

/// `ironboot ARGS --server BASE --data-dir DIR/data` in the server namespace
/// (10.77.0.1 exists only there); its stdout, or a panic with stderr.
pub fn cli(lab: &Lab, args: &[&str]) -> String {
    cli_within(lab, 60, args)
}

/// [`cli`], bounded by `secs` instead of a minute.
pub fn cli_within(lab: &Lab, secs: u64, args: &[&str]) -> String {
    let data = lab.dir.join("data");
    let mut all = vec![lab.bin.to_str().unwrap()];
    all.extend_from_slice(args);
    all.extend(["--server", BASE, "--data-dir", data.to_str().unwrap()]);
    let out = lab.exec_output(&lab.ns, secs, &all);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "ironboot {} failed ({}):\n{stdout}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `ironboot image import` of the live OS into `stream`, with `cmdline` and
/// any `extra` initrds after the live OS's own: (generation, digest) from its
/// `generation N sha256:…`.
pub fn import(
    lab: &Lab,
    os: &LiveOs,
    stream: &str,
    cmdline: &str,
    extra: &[&Path],
) -> (i64, String) {
    let mut args = vec![
        "image",
        "import",
        "--stream",
        stream,
        "--kernel",
        os.kernel.to_str().unwrap(),
        "--initrd",
        os.initrd.to_str().unwrap(),
    ];
    for initrd in extra {
        args.extend(["--initrd", initrd.to_str().unwrap()]);
    }
    args.extend(["--cmdline", cmdline]);
    imported(&cli(lab, &args))
}

/// The default group pointed at `stream`'s `generation`, through the CLI.
pub fn point_default(lab: &Lab, stream: &str, generation: i64) {
    cli(
        lab,
        &[
            "group",
            "set-generation",
            "default",
            stream,
            &generation.to_string(),
        ],
    );
}

/// (generation, digest) from what `ironboot image import` printed
/// (`generation N sha256:…`).
pub fn imported(out: &str) -> (i64, String) {
    let mut words = out.split_whitespace();
    let parsed = match (words.next(), words.next(), words.next()) {
        (Some("generation"), Some(n), Some(digest)) => n.parse().ok().map(|n| (n, digest.into())),
        _ => None,
    };
    parsed.unwrap_or_else(|| panic!("image import printed {out:?}"))
}

/// The REST API through curl in the server namespace, with the admin token.
pub struct Api<'a> {
    lab: &'a Lab,
    curl: PathBuf,
    token: String,
}

impl<'a> Api<'a> {
    pub fn new(lab: &'a Lab, curl: PathBuf) -> Self {
        let path = lab.dir.join("data/admin.token");
        let token = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (written at first start)", path.display()));
        Api {
            lab,
            curl,
            token: token.trim().to_string(),
        }
    }

    /// GET `path`: (status, body as JSON, or the text in a JSON string).
    pub fn get(&self, path: &str) -> (u16, Value) {
        let auth = format!("Authorization: Bearer {}", self.token);
        let url = format!("{BASE}{path}");
        let out = self.lab.exec_output(
            &self.lab.ns,
            15,
            &[
                self.curl.to_str().unwrap(),
                "-sS",
                "--max-time",
                "10",
                "-H",
                &auth,
                "-w",
                "\n%{http_code}",
                &url,
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
        let status = status.trim().parse().unwrap_or_else(|_| {
            panic!("curl {url}: {text}{}", String::from_utf8_lossy(&out.stderr))
        });
        let body = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.into()));
        (status, body)
    }

    pub fn ok(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// Polls `GET /api/v1/machines/{mac}` (up to 10 s) until `ready` holds.
    pub fn machine_when(&self, mac: &str, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, m) = self.get(&format!("/api/v1/machines/{mac}"));
            if status == 200 && ready(&m) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "{mac}: {what} never showed in the API (status {status}):\n{m:#}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// `{"stream", "generation"}` as the API writes a generation.
pub fn gen_ref(stream: &str, generation: i64) -> Value {
    json!({ "stream": stream, "generation": generation })
}

/// The steps of a boot as the API lists it.
pub fn steps(boot: &Value) -> Vec<&str> {
    boot["steps"]
        .as_array()
        .map(|s| s.iter().filter_map(|s| s["step"].as_str()).collect())
        .unwrap_or_default()
}

/// The API's view once `mac` confirmed `generation`: it is current and last
/// good, and the newest boot is that generation's, confirmed, with every step
/// from script to confirmation. Returns the machine.
pub fn assert_confirmed(api: &Api, mac: &str, stream: &str, generation: i64, arch: &str) -> Value {
    let m = api.machine_when(mac, &format!("current = {stream} gen {generation}"), |m| {
        m["current"] == gen_ref(stream, generation)
            && steps(&m["recent_boots"][0]).contains(&"boot.confirm")
    });
    assert_eq!(m["last_good"], gen_ref(stream, generation), "{m:#}");
    assert_eq!(m["arch"], arch, "{m:#}");
    let boot = &m["recent_boots"][0];
    assert_eq!(boot["state"], "confirmed", "{boot:#}");
    assert_eq!(boot["stream"], stream, "{boot:#}");
    assert_eq!(boot["generation"], generation, "{boot:#}");
    let steps = steps(boot);
    for step in [
        "boot.script",
        "boot.artifact",
        "boot.config",
        "boot.confirm",
    ] {
        assert!(steps.contains(&step), "{mac}: no {step} in {steps:?}");
    }
    m
}

// ---------------------------------------------------------------------------
// The guest's side: its serial console
// ---------------------------------------------------------------------------

/// The lines between `IRONBOOT-LIVEOS: BEGIN name` and `… END name`,
/// without the kernel's own lines (`[   10.119628] IPv6: …`), which the
/// console interleaves with what the live OS prints.
pub fn section(serial: &str, name: &str) -> Option<String> {
    let begin = live(&format!("BEGIN {name}\n"));
    let start = serial.find(&begin)? + begin.len();
    let len = serial[start..].find(&live(&format!("END {name}")))?;
    let lines = serial[start..start + len]
        .split_inclusive('\n')
        .filter(|l| !is_kernel_line(l));
    Some(lines.collect())
}

/// `[ seconds.micros] …`: a kernel log line on the console.
fn is_kernel_line(line: &str) -> bool {
    line.strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
        .is_some_and(|(stamp, _)| {
            let stamp = stamp.trim_start();
            !stamp.is_empty() && stamp.chars().all(|c| c.is_ascii_digit() || c == '.')
        })
}

/// The kernel's `Command line: …` line.
pub fn kernel_cmdline(serial: &str) -> Option<&str> {
    serial
        .lines()
        .find_map(|l| l.split_once("Command line: ").map(|(_, c)| c.trim()))
}

/// What one boot to phone-home took, from the VM's start.
pub struct Booted {
    pub script: Duration,
    pub init: Duration,
    pub phone_home: Duration,
    pub exited: Duration,
    pub serial: String,
}

/// Waits for `vm` to boot `generation` (iPXE echoes the per-machine script,
/// the kernel runs with the generation's command line and the NoCloud seed,
/// the live OS prints the seed and phones home), then for QEMU to exit as the
/// guest powers off.
pub fn wait_booted(vm: &mut Vm, mac: &str, stream: &str, generation: i64, cmdline: &str) -> Booted {
    wait_booted_at(vm, mac, stream, generation, cmdline, BASE)
}

/// [`wait_booted`] for a machine that reaches the server at `base` (the
/// IPv6 lab's `http://[fd00:77::1]:8080`).
pub fn wait_booted_at(
    vm: &mut Vm,
    mac: &str,
    stream: &str,
    generation: i64,
    cmdline: &str,
    base: &str,
) -> Booted {
    let echo = format!("ironboot: {mac} -> {stream} gen {generation} (boot ");
    let at = vm.wait_markers(
        &[
            &echo,
            "Command line: ",
            &live("init started"),
            &live("BEGIN meta-data"),
            &live("BEGIN user-data"),
            &live("phone_home ok"),
            &live("done"),
        ],
        BOOT_LIMIT,
    );
    let status = vm.wait_exit(Duration::from_secs(20));
    let exited = vm.started.elapsed();
    let serial = vm.text();
    let last = || tail(&vm.serial, 30);
    assert!(
        matches!(status, Some(s) if s.success()),
        "{}: QEMU did not exit cleanly after the guest's poweroff ({status:?})\n{}",
        vm.name,
        last()
    );
    let cmd = kernel_cmdline(&serial).unwrap_or_default();
    assert!(
        // UEFI's Linux stub sees iPXE's image name first (`vmlinuz …`).
        cmd.contains(&format!("{cmdline} ds=nocloud-net;s={base}/config/")),
        "{}: kernel command line {cmd:?}",
        vm.name
    );
    assert!(
        serial.contains(&live(&format!("eth0 mac {mac}"))),
        "{}\n{}",
        vm.name,
        last()
    );
    assert!(
        serial.contains(&live(&format!("seed {base}/config/"))),
        "{}: seed\n{}",
        vm.name,
        last()
    );
    let meta = section(&serial, "meta-data").unwrap_or_default();
    assert!(
        meta.contains("instance-id: "),
        "{}: meta-data {meta:?}",
        vm.name
    );
    let user = section(&serial, "user-data").unwrap_or_default();
    assert!(
        user.starts_with("#cloud-config")
            && user.contains(&format!(
                "Rendered by ironboot for {mac}: {stream} generation {generation}."
            ))
            // YAML quotes a URL with an IPv6 literal (`[` opens a list).
            && (user.contains(&format!("url: {base}/phone-home/"))
                || user.contains(&format!("url: \"{base}/phone-home/"))),
        "{}: user-data {user:?}",
        vm.name
    );
    assert!(
        serial.contains(&live(&format!("phone_home POST {base}/phone-home/"))),
        "{}\n{}",
        vm.name,
        last()
    );
    assert!(
        !serial.contains(&live("phone_home try")),
        "{}: phone_home needed retries\n{}",
        vm.name,
        last()
    );
    Booted {
        script: at[0],
        init: at[2],
        phone_home: at[5],
        exited,
        serial,
    }
}
