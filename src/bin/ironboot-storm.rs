//! `ironboot-storm`: plays N PXE machines booting at once against a server
//! and reports what they lived through. See the README section
//! "Performance and the boot-storm simulator" and `ironboot::storm`.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ironboot::storm::{self, Plan};

#[derive(Parser)]
#[command(
    name = "ironboot-storm",
    version,
    about = "Boot-storm simulator: N machines doing DHCP → TFTP → iPXE DHCP → script → kernel → initrd → config → confirm"
)]
struct Args {
    /// Machines to boot.
    #[arg(long, short = 'n', default_value_t = 100)]
    machines: usize,
    /// Machines booting at once (default: all of them).
    #[arg(long, short = 'c')]
    concurrency: Option<usize>,
    /// Machines powered on per second (0: all at once).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// The server's DHCP address (as a relay reaches it).
    #[arg(long, default_value = "127.0.0.1:67")]
    dhcp: SocketAddr,
    /// More DHCP servers the relay forwards every message to (an HA pair's
    /// other server); repeat or separate with commas.
    #[arg(long, value_delimiter = ',')]
    also_dhcp: Vec<SocketAddr>,
    /// Times a machine whose boot failed starts over from DHCP (a watchdog
    /// power-cycling it).
    #[arg(long, default_value_t = 0)]
    restarts: u32,
    /// Relay address put in giaddr: picks the server's subnet, gets the replies.
    #[arg(long, default_value = "127.0.0.1")]
    giaddr: Ipv4Addr,
    /// Relay port: 0 (any; ironboot answers it) or 67 for servers that
    /// answer relays on 67 (dnsmasq, Kea; needs root or a namespace).
    #[arg(long, default_value_t = 0)]
    relay_port: u16,
    /// TFTP port on the next-server the DHCP ACK names.
    #[arg(long, default_value_t = 69)]
    tftp_port: u16,
    /// TFTP blksize asked for.
    #[arg(long, default_value_t = 1468)]
    blksize: u16,
    /// TFTP windowsize asked for (1: none, lock-step as old PXE ROMs).
    #[arg(long, default_value_t = 16)]
    windowsize: u16,
    /// DHCP resend timeouts in seconds (PXE ROM: 4,8,16,32).
    #[arg(long, value_delimiter = ',', default_value = "4,8,16,32")]
    dhcp_timeouts: Vec<f64>,
    /// Tries per HTTP step (the iPXE script's retry loop).
    #[arg(long, default_value_t = 5)]
    http_attempts: u32,
    /// Pause between HTTP tries, seconds.
    #[arg(long, default_value_t = 5.0)]
    http_retry_delay: f64,
    /// Run only DHCP, TFTP, iPXE DHCP, script, kernel and initrd: what a
    /// dnsmasq + nginx stack serves.
    #[arg(long)]
    subset: bool,
    /// Only TFTP: every machine reads this file (from --tftp-server), no DHCP.
    #[arg(long, requires = "tftp_server")]
    tftp_only: Option<String>,
    /// The TFTP server for --tftp-only.
    #[arg(long)]
    tftp_server: Option<SocketAddr>,
    /// First machine index (MACs are 02:57 + the index, unless --mac-prefix).
    #[arg(long, default_value_t = 0)]
    first: u32,
    /// First two MAC bytes, e.g. 02:58.
    #[arg(long, default_value = "02:57")]
    mac_prefix: String,
    /// Server process to report CPU time and peak RSS of (/proc/PID).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Bound on the whole run, seconds; unfinished machines fail.
    #[arg(long, default_value_t = 600.0)]
    deadline: f64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let prefix: Vec<u8> = args
        .mac_prefix
        .split(':')
        .filter_map(|b| u8::from_str_radix(b, 16).ok())
        .collect();
    let [a, b] = prefix[..] else {
        eprintln!("ironboot-storm: --mac-prefix takes two hex bytes, e.g. 02:57");
        return ExitCode::from(2);
    };
    let mut plan = Plan::new(args.machines, args.dhcp, args.giaddr);
    plan.concurrency = args.concurrency.unwrap_or(args.machines).max(1);
    plan.rate = args.rate;
    plan.relay_port = args.relay_port;
    plan.also_dhcp = args.also_dhcp;
    plan.restarts = args.restarts;
    plan.tftp_port = args.tftp_port;
    plan.tftp.blksize = args.blksize;
    plan.tftp.windowsize = args.windowsize;
    plan.dhcp_timeouts = args
        .dhcp_timeouts
        .iter()
        .map(|s| Duration::from_secs_f64(*s))
        .collect();
    plan.http_attempts = args.http_attempts;
    plan.http_retry_delay = Duration::from_secs_f64(args.http_retry_delay);
    plan.subset = args.subset;
    plan.tftp_only = args.tftp_server.zip(args.tftp_only);
    plan.first = args.first;
    plan.mac_prefix = [a, b];
    plan.server_pid = args.server_pid;
    plan.deadline = Duration::from_secs_f64(args.deadline);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ironboot-storm: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = runtime.block_on(storm::run(plan));
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("ironboot-storm: {e}"),
        }
    } else {
        print!("{report}");
    }
    // Exit status for scripts: 0 only when every machine booted and no
    // address went to two machines.
    if report.failed == 0 && report.machines > 0 && report.addresses_shared == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
