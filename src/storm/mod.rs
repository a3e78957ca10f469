//! The boot-storm simulator: N machines with distinct MACs booting at once
//! against a server, each doing the whole flow a PXE machine does, timed per
//! step. Behind the `ironboot-storm` binary and `tests/load/storm.rs`.
//!
//! One machine's flow ([`Step`] names each part):
//! 1. DHCP as the PXE ROM (DISCOVER/OFFER/REQUEST/ACK) through a relay: the
//!    simulator sets `giaddr` to its own address, so it runs on loopback.
//! 2. TFTP of the bootfile the ACK named (blksize, tsize, windowsize).
//! 3. DHCP again as iPXE (user class `iPXE`): the ACK names the script URL.
//! 4. The script: `boot.ipxe`, then the per-machine script it chains to.
//! 5. Kernel and initrds over HTTP, each verified against the sha256 in its
//!    content-addressed URL.
//! 6. The config (NoCloud `meta-data`, `user-data`) and 7. the confirmation
//!    posted to the per-boot phone-home URL found in `user-data`.
//!
//! [`Plan::subset`] stops after step 5: the work a dnsmasq + nginx stack can
//! serve, so the two are compared on the same steps.
//!
//! With [`Plan::restarts`], a machine whose boot failed starts over from
//! DHCP (its watchdog or an operator power-cycles it), so a storm through a
//! server that dies measures what its standby saves; every address ACKed
//! to a machine is kept, and the report counts addresses ACKed to more
//! than one machine.
//!
//! Retries follow the firmware: DHCP resends after each of
//! [`Plan::dhcp_timeouts`] (PXE: 4, 8, 16, 32 s), TFTP resends its last
//! packet after [`TftpOptions::timeout`] and restarts a failed transfer,
//! HTTP steps are tried again after a pause like the iPXE script's
//! `goto retry`. A machine that exhausts a step's retries fails at that step.
//!
//! Invariants: every wait is bounded (the run as a whole by
//! [`Plan::deadline`]); the simulator sends only to the addresses it is given.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

pub mod dhcp;
pub mod http;
pub mod proc;
pub mod report;
pub mod tftp;

pub use report::Report;
pub use tftp::TftpOptions;

use dhcp::Firmware;
use http::{Loads, Script};

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub machines: usize,
    /// Machines booting at once; the rest wait for a slot.
    pub concurrency: usize,
    /// Machines powered on per second; 0: all at once (bounded by
    /// `concurrency`).
    pub rate: f64,
    /// The server's DHCP socket (port 67 on a real server).
    pub dhcp_server: SocketAddr,
    /// More DHCP servers the relay forwards every message to (the other
    /// server of an HA pair).
    pub also_dhcp: Vec<SocketAddr>,
    /// Times a machine whose boot failed starts over from DHCP.
    pub restarts: u32,
    /// The relay address written into `giaddr`; replies come back to it,
    /// and it selects the server's subnet.
    pub giaddr: Ipv4Addr,
    /// The relay's port: 0 (any; ironboot answers the port a relay sent
    /// from) or 67 for servers that answer relays on 67 (dnsmasq, Kea).
    pub relay_port: u16,
    /// TFTP port on the next-server the DHCP ACK names (69 on a real one).
    pub tftp_port: u16,
    pub tftp: TftpOptions,
    /// TFTP transfers tried per machine before it fails (PXE ROMs restart).
    pub tftp_attempts: u32,
    pub dhcp_timeouts: Vec<Duration>,
    /// Tries per HTTP step, and the pause between them.
    pub http_attempts: u32,
    pub http_retry_delay: Duration,
    /// Bound on one HTTP request, body included.
    pub http_timeout: Duration,
    /// Stop after the kernel and initrds (the dnsmasq + nginx subset).
    pub subset: bool,
    /// Only TFTP: each machine reads this file from this server, no DHCP
    /// (the TFTP benchmark: N concurrent transfers of one file).
    pub tftp_only: Option<(SocketAddr, String)>,
    /// First two bytes of every MAC; the rest is the machine's index.
    pub mac_prefix: [u8; 2],
    /// Index of the first machine (to run several simulators side by side).
    pub first: u32,
    /// The server process whose CPU time and peak RSS are reported.
    pub server_pid: Option<u32>,
    /// Bound on the whole run; machines not done by then fail where they are.
    pub deadline: Duration,
}

impl Plan {
    /// Defaults for `machines` machines against `dhcp_server` via `giaddr`.
    pub fn new(machines: usize, dhcp_server: SocketAddr, giaddr: Ipv4Addr) -> Self {
        Self {
            machines,
            concurrency: machines.max(1),
            rate: 0.0,
            dhcp_server,
            also_dhcp: Vec::new(),
            restarts: 0,
            giaddr,
            relay_port: 0,
            tftp_port: 69,
            tftp: TftpOptions {
                blksize: 1468,
                windowsize: 16,
                timeout: Duration::from_secs(1),
                retries: 6,
            },
            tftp_attempts: 3,
            dhcp_timeouts: [4, 8, 16, 32].map(Duration::from_secs).to_vec(),
            http_attempts: 5,
            http_retry_delay: Duration::from_secs(5),
            http_timeout: Duration::from_secs(120),
            subset: false,
            tftp_only: None,
            mac_prefix: [0x02, 0x57],
            first: 0,
            server_pid: None,
            deadline: Duration::from_secs(600),
        }
    }
}

/// The parts of one boot, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Step {
    Dhcp,
    Tftp,
    DhcpIpxe,
    Script,
    Kernel,
    Initrd,
    Config,
    Confirm,
}

impl Step {
    pub const ALL: [Step; 8] = [
        Step::Dhcp,
        Step::Tftp,
        Step::DhcpIpxe,
        Step::Script,
        Step::Kernel,
        Step::Initrd,
        Step::Config,
        Step::Confirm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::Dhcp => "dhcp",
            Step::Tftp => "tftp",
            Step::DhcpIpxe => "dhcp-ipxe",
            Step::Script => "script",
            Step::Kernel => "kernel",
            Step::Initrd => "initrd",
            Step::Config => "config",
            Step::Confirm => "confirm",
        }
    }

    fn from_u8(v: u8) -> Step {
        Step::ALL[(v as usize).min(Step::ALL.len() - 1)]
    }
}

/// A simulated machine's identity.
#[derive(Debug, Clone)]
pub struct Machine {
    pub index: u32,
    pub mac: [u8; 6],
    pub uuid: [u8; 16],
    pub serial: String,
}

impl Machine {
    pub fn new(index: u32, prefix: [u8; 2]) -> Self {
        let i = index.to_be_bytes();
        let mac = [prefix[0], prefix[1], i[0], i[1], i[2], i[3]];
        let mut uuid = [0x5a; 16];
        uuid[10..].copy_from_slice(&mac);
        Self {
            index,
            mac,
            uuid,
            serial: format!("STORM{index:08}"),
        }
    }

    fn hex(&self, sep: &str) -> String {
        self.mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(sep)
    }

    fn uuid_text(&self) -> String {
        let h = hex::encode(self.uuid);
        format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    }

    /// The settings iPXE would expand in a script's URLs.
    fn ipxe_vars(&self) -> HashMap<&'static str, String> {
        HashMap::from([
            ("mac", self.hex(":")),
            ("mac:hexhyp", self.hex("-")),
            ("uuid", self.uuid_text()),
            ("serial", self.serial.clone()),
            ("serial:uristring", self.serial.clone()),
            ("buildarch", "i386".to_string()),
            ("platform", "pcbios".to_string()),
        ])
    }
}

/// One step as one machine lived it.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub step: Step,
    pub took: Duration,
    pub bytes: u64,
    pub retries: u32,
}

/// How one machine's boot ended.
#[derive(Debug)]
pub struct Outcome {
    pub samples: Vec<Sample>,
    /// `None`: booted (and confirmed, unless in subset mode).
    pub failed: Option<(Step, String)>,
    /// Since the start of the run.
    pub finished: Duration,
    /// Every address a server ACKed to this machine, in order.
    pub acked: Vec<Ipv4Addr>,
    /// Times it started over after a failed boot.
    pub restarts: u32,
}

/// Runs the storm and reports. Never panics on server misbehaviour: every
/// error becomes a failed machine in the report.
pub async fn run(plan: Plan) -> Report {
    let plan = Arc::new(plan);
    let before = plan.server_pid.and_then(proc::sample);
    let start = Instant::now();
    let deadline = start + plan.deadline;
    let slots = Arc::new(Semaphore::new(plan.concurrency.max(1)));
    let mut tasks = JoinSet::new();
    let sampler = plan.server_pid.map(proc::PeakSampler::start);
    let relay = match dhcp::Relay::bind(plan.giaddr, plan.relay_port, plan.dhcp_server) {
        Ok(r) => Arc::new(r.also_to(&plan.also_dhcp)),
        Err(e) => {
            let why = format!("relay socket on {}:{}: {e}", plan.giaddr, plan.relay_port);
            let outcomes: Vec<Outcome> = (0..plan.machines)
                .map(|_| Outcome {
                    samples: Vec::new(),
                    failed: Some((Step::Dhcp, why.clone())),
                    finished: Duration::ZERO,
                    acked: Vec::new(),
                    restarts: 0,
                })
                .collect();
            return Report::new(&plan, &outcomes, start.elapsed(), None, None, None);
        }
    };
    for i in 0..plan.machines {
        if plan.rate > 0.0 {
            let at = start + Duration::from_secs_f64(i as f64 / plan.rate);
            tokio::time::sleep_until(at.min(deadline)).await;
        }
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let (plan, relay) = (plan.clone(), relay.clone());
        let machine = Machine::new(plan.first + i as u32, plan.mac_prefix);
        tasks.spawn(async move {
            let at = Arc::new(AtomicU8::new(Step::Dhcp as u8));
            let mut samples = Vec::new();
            let mut acked = Vec::new();
            let mut restarts = 0;
            let result = tokio::time::timeout_at(deadline, async {
                loop {
                    // The samples of the boot that ended count, not those
                    // of one that failed before it.
                    samples.clear();
                    let mut steps = Steps {
                        at: &at,
                        samples: &mut samples,
                        acked: &mut acked,
                    };
                    match boot(&plan, &relay, &machine, &mut steps).await {
                        Err(_) if restarts < plan.restarts => restarts += 1,
                        ended => return ended,
                    }
                }
            })
            .await;
            drop(permit);
            let failed = match result {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some((
                    Step::from_u8(at.load(Ordering::Relaxed)),
                    "run deadline passed".to_string(),
                )),
            };
            Outcome {
                samples,
                failed,
                finished: start.elapsed(),
                acked,
                restarts,
            }
        });
    }
    let mut outcomes = Vec::with_capacity(plan.machines);
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(o) => outcomes.push(o),
            Err(e) => outcomes.push(Outcome {
                samples: Vec::new(),
                failed: Some((Step::Dhcp, format!("simulator task failed: {e}"))),
                finished: start.elapsed(),
                acked: Vec::new(),
                restarts: 0,
            }),
        }
    }
    let elapsed = start.elapsed();
    let after = plan.server_pid.and_then(proc::sample);
    let peak = match sampler {
        Some(s) => s.stop().await,
        None => None,
    };
    Report::new(&plan, &outcomes, elapsed, before, after, peak)
}

type StepResult<T> = Result<T, (Step, String)>;

/// One machine's steps as they complete: which step it is in (read when
/// the run's deadline cuts it short) and a sample per finished step.
struct Steps<'a> {
    at: &'a AtomicU8,
    samples: &'a mut Vec<Sample>,
    /// Every address ACKed to the machine, across restarts.
    acked: &'a mut Vec<Ipv4Addr>,
}

impl Steps<'_> {
    /// Runs `step`, whose work returns its value, bytes and retries, and
    /// records how long it took.
    async fn time<T>(
        &mut self,
        step: Step,
        work: impl std::future::Future<Output = StepResult<(T, u64, u32)>>,
    ) -> StepResult<T> {
        self.at.store(step as u8, Ordering::Relaxed);
        let since = Instant::now();
        let (value, bytes, retries) = work.await?;
        self.samples.push(Sample {
            step,
            took: since.elapsed(),
            bytes,
            retries,
        });
        Ok(value)
    }
}

/// One machine's whole boot. Records a sample per completed step.
async fn boot(
    plan: &Plan,
    relay: &dhcp::Relay,
    machine: &Machine,
    steps: &mut Steps<'_>,
) -> StepResult<()> {
    if let Some((server, file)) = &plan.tftp_only {
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        return steps
            .time(Step::Tftp, bootfile(plan, *server, any, file))
            .await;
    }
    let dhcp = |step, firmware| async move {
        let (lease, retries) = relay
            .exchange(machine, firmware, &plan.dhcp_timeouts)
            .await
            .map_err(|e| (step, e.to_string()))?;
        Ok((lease, 0, retries))
    };

    // 1. The PXE ROM's DHCP.
    let lease = steps
        .time(Step::Dhcp, dhcp(Step::Dhcp, Firmware::PxeRom))
        .await?;
    steps.acked.push(lease.address);
    // The machine's own address, when this host can send from it (loopback
    // storms lease 127.x addresses): servers tell machines apart by it.
    let local: Option<IpAddr> = (lease.address.is_loopback()).then_some(lease.address.into());
    let bind = local.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));

    // 2. The bootfile over TFTP.
    let tftp_server = SocketAddr::new(lease.next_server.into(), plan.tftp_port);
    steps
        .time(
            Step::Tftp,
            bootfile(plan, tftp_server, bind, &lease.bootfile),
        )
        .await?;

    // 3. iPXE's own DHCP.
    let ipxe_lease = steps
        .time(Step::DhcpIpxe, dhcp(Step::DhcpIpxe, Firmware::Ipxe))
        .await?;
    steps.acked.push(ipxe_lease.address);
    if !ipxe_lease.bootfile.starts_with("http://") {
        let offered = &ipxe_lease.bootfile;
        let why = format!("iPXE was offered {offered:?}, not an HTTP script");
        return Err((Step::DhcpIpxe, why));
    }

    let client = http::client(local, plan.http_timeout)
        .map_err(|e| (Step::Script, format!("HTTP client: {e}")))?;
    let retry = Retry {
        attempts: plan.http_attempts.max(1),
        delay: plan.http_retry_delay,
    };

    // 4. The script, following chains (boot.ipxe → per-machine script).
    let vars = machine.ipxe_vars();
    let loads = steps
        .time(
            Step::Script,
            script(&client, &retry, &ipxe_lease.bootfile, &vars),
        )
        .await?;

    // 5. Kernel and initrds, verified.
    let kernel = artifacts(
        &client,
        &retry,
        Step::Kernel,
        std::slice::from_ref(&loads.kernel),
    );
    steps.time(Step::Kernel, kernel).await?;
    let initrds = artifacts(&client, &retry, Step::Initrd, &loads.initrds);
    steps.time(Step::Initrd, initrds).await?;
    if plan.subset {
        return Ok(());
    }

    // 6. The config the booted OS fetches.
    let seed = loads.seed.ok_or((
        Step::Config,
        "kernel command line has no s= seed URL".into(),
    ))?;
    let user = steps
        .time(Step::Config, nocloud(&client, &retry, &seed))
        .await?;

    // 7. The confirmation with the per-boot token.
    let phone = http::phone_home_url(&user)
        .ok_or((Step::Confirm, "user-data has no phone_home url".into()))?;
    let hostname = format!("storm-{}", machine.hex(""));
    let confirm = async {
        let ((), retries) = retry
            .run(|| http::confirm(&client, &phone, &hostname))
            .await
            .map_err(|e| (Step::Confirm, e))?;
        Ok(((), 0, retries))
    };
    steps.time(Step::Confirm, confirm).await
}

/// Artifacts downloaded and verified one after the other: bytes and
/// retries in all.
async fn artifacts(
    client: &reqwest::Client,
    retry: &Retry,
    step: Step,
    urls: &[String],
) -> StepResult<((), u64, u32)> {
    let (mut bytes, mut retries) = (0, 0);
    for url in urls {
        let (b, r) = retry
            .run(|| http::artifact(client, url))
            .await
            .map_err(|e| (step, e))?;
        bytes += b;
        retries += r;
    }
    Ok(((), bytes, retries))
}

/// The bootfile over TFTP, started over (after a short pause, as a ROM
/// does) up to `plan.tftp_attempts` times: bytes and resends plus restarts.
async fn bootfile(
    plan: &Plan,
    server: SocketAddr,
    bind: IpAddr,
    file: &str,
) -> StepResult<((), u64, u32)> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match tftp::fetch(server, bind, file, &plan.tftp).await {
            Ok(f) => return Ok(((), f.bytes, f.resends + attempt - 1)),
            Err(e) if attempt >= plan.tftp_attempts => {
                return Err((Step::Tftp, format!("{file}: {e}")))
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// The boot script from `url`, following chains (`boot.ipxe` → the
/// machine's script) up to 1 MiB in all: what it loads, bytes, retries.
async fn script(
    client: &reqwest::Client,
    retry: &Retry,
    url: &str,
    vars: &HashMap<&str, String>,
) -> StepResult<(Loads, u64, u32)> {
    let mut url = url.to_string();
    let (mut bytes, mut retries) = (0, 0);
    loop {
        let (text, r) = retry
            .run(|| http::text(client, &url))
            .await
            .map_err(|e| (Step::Script, e))?;
        retries += r;
        bytes += text.len() as u64;
        match http::read_script(&text, vars).map_err(|e| (Step::Script, e.to_string()))? {
            Script::Chain(next) if bytes < 1 << 20 => url = next,
            Script::Chain(_) => return Err((Step::Script, "chain loop".into())),
            Script::Loads(loads) => return Ok((loads, bytes, retries)),
        }
    }
}

/// The NoCloud seed's meta-data and user-data: the user-data, bytes of
/// both, retries.
async fn nocloud(
    client: &reqwest::Client,
    retry: &Retry,
    seed: &str,
) -> StepResult<(String, u64, u32)> {
    let (meta_url, user_url) = (format!("{seed}meta-data"), format!("{seed}user-data"));
    let (meta, r1) = retry
        .run(|| http::text(client, &meta_url))
        .await
        .map_err(|e| (Step::Config, e))?;
    let (user, r2) = retry
        .run(|| http::text(client, &user_url))
        .await
        .map_err(|e| (Step::Config, e))?;
    let bytes = (meta.len() + user.len()) as u64;
    Ok((user, bytes, r1 + r2))
}

/// The iPXE script's `goto retry`: a bounded number of tries with a pause.
struct Retry {
    attempts: u32,
    delay: Duration,
}

impl Retry {
    async fn run<T, F, Fut>(&self, mut f: F) -> Result<(T, u32), String>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, http::HttpError>>,
    {
        let mut tries = 0;
        loop {
            tries += 1;
            match f().await {
                Ok(v) => return Ok((v, tries - 1)),
                Err(e) if tries >= self.attempts => {
                    return Err(format!("{e} (after {tries} tries)"))
                }
                Err(_) => tokio::time::sleep(self.delay).await,
            }
        }
    }
}

/// Failures per step, for the report.
pub(crate) fn failures_by_step(outcomes: &[Outcome]) -> BTreeMap<Step, (usize, String)> {
    let mut map: BTreeMap<Step, (usize, String)> = BTreeMap::new();
    for (step, why) in outcomes.iter().filter_map(|o| o.failed.as_ref()) {
        let entry = map.entry(*step).or_insert_with(|| (0, why.clone()));
        entry.0 += 1;
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machines_have_distinct_macs_and_ipxe_settings() {
        let a = Machine::new(1, [0x02, 0x57]);
        let b = Machine::new(256, [0x02, 0x57]);
        assert_ne!(a.mac, b.mac);
        assert_eq!(a.hex(":"), "02:57:00:00:00:01");
        let vars = b.ipxe_vars();
        assert_eq!(vars["mac:hexhyp"], "02-57-00-00-01-00");
        assert_eq!(vars["uuid"], "5a5a5a5a-5a5a-5a5a-5a5a-025700000100");
    }
}
