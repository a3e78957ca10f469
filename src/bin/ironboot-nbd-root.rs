//! `ironboot-nbd-root`: the initrd's NBD client. It attaches ironboot's NBD
//! exports (a root image and its dm-verity tree, named by digest) as
//! `/dev/nbdN` through the kernel's generic-netlink `nbd` family, prints
//! `ironboot-nbd-root: ready` on stdout (the one line an init waits for;
//! else `ironboot-nbd-root: error: …` and exit code 1; the log goes to
//! stderr), and stays in the foreground to keep them attached: when the
//! kernel reports a dead connection (`NBD_CMD_LINK_DEAD`) it dials the
//! server again, once a second, and hands the kernel the new socket
//! (`NBD_CMD_RECONFIGURE`). Meanwhile the kernel holds the device's I/O,
//! for at most the dead-connection timeout.
//!
//! ```text
//! ironboot-nbd-root --server IP:PORT [--dead-timeout SECS] [--io-timeout SECS]
//!                   [--check] EXPORT=/dev/nbdN...
//! ```
//!
//! Code map: `Args` (the command line); `handshake` (fixed newstyle NBD up
//! to `NBD_OPT_GO`'s answer, pure over any `Read + Write`) and `dial`;
//! `Attrs` and the netlink parsers (pure); `Genl` (one netlink socket);
//! `Kernel` (the `nbd` family: connect, reconfigure, link-dead events);
//! `watch` and `retry` (the reconnect loop).
//!
//! Invariants:
//! - Every export is opened (handshake done, size known) before the kernel
//!   is touched: an unknown export or a wrong server is an error naming it,
//!   exit code 1, and no device set up.
//! - After the start it opens no file: `switch_root` deletes the initramfs
//!   it came from while it runs. Addresses are IP literals (no resolver, no
//!   NSS modules loaded later).
//! - SIGTERM and SIGHUP are ignored: an init's "kill everything" must not
//!   take the root filesystem's connection with it.
//! - A socket goes to the kernel without read or write timeouts (the
//!   kernel's receive thread would take one for a dead server) and with TCP
//!   keepalive (a server that vanished without a word is found out).
//!
//! Deliberately absent: TLS, structured replies, more than one connection
//! per device, and the old `NBD_OPT_EXPORT_NAME` (ironboot answers
//! `NBD_OPT_GO`).

use std::fmt;
use std::io::{self, IsTerminal, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::sys::socket::{self as sock, sockopt, MsgFlags, NetlinkAddr};
use nix::sys::time::TimeVal;

const USAGE: &str = "usage: ironboot-nbd-root --server IP:PORT [--dead-timeout SECS] \
[--io-timeout SECS] [--check] EXPORT=/dev/nbdN...
  Attaches each NBD EXPORT of the server as /dev/nbdN (netlink), prints
  'ironboot-nbd-root: ready' (or '... error: WHY' and exits 1) on stdout and
  stays to reconnect dead connections, logging on stderr.
  --dead-timeout  how long the kernel holds I/O for a dead connection, and
                  how long reconnecting is tried (default 600)
  --io-timeout    a request unanswered this long marks its connection dead
                  (default 30)
  --check         open every export, print its size, touch nothing";

/// A line on stderr. Never panics (`eprintln!` would): the root filesystem
/// must not lose its client because a console went away.
macro_rules! log {
    ($($arg:tt)*) => {{
        let line = format!("ironboot-nbd-root: {}\n", format_args!($($arg)*));
        let _ = io::stderr().write_all(line.as_bytes());
    }};
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let args = match Args::parse(&argv) {
        Ok(args) => args,
        Err(why) => {
            log!("{why}");
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            log!("error: {why}");
            // The status line an init waits for, when it reads stdout apart.
            if !io::stdout().is_terminal() {
                println!("ironboot-nbd-root: error: {why}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let opened = open_all(args)?;
    if args.check {
        for (device, _, info) in &opened {
            println!(
                "ironboot-nbd-root: {}: {} bytes, transmission flags {:#06x}",
                device.export, info.size, info.flags
            );
        }
        return Ok(());
    }
    stay_alive();
    let mut kernel = Kernel::open().map_err(|e| format!("netlink nbd family: {e}"))?;
    let mut attached = Vec::new();
    for (device, stream, info) in opened {
        kernel
            .connect(&device, info, &stream, args)
            .map_err(|e| format!("NBD_CMD_CONNECT nbd{}: {e}", device.index))?;
        log!(
            "nbd{}: attached {} from {} ({} bytes)",
            device.index,
            device.export,
            args.server,
            info.size
        );
        attached.push((device, info));
    }
    println!("ironboot-nbd-root: ready");
    watch(&mut kernel, args, &attached)
}

// --- The command line ----------------------------------------------------

/// What to attach, from where, and how patiently.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Args {
    server: SocketAddr,
    /// Seconds the kernel holds I/O for a dead connection (and reconnecting
    /// is tried).
    dead_timeout: u64,
    /// Seconds before an unanswered request marks its connection dead.
    io_timeout: u64,
    /// Only open the exports and print what they are.
    check: bool,
    devices: Vec<Device>,
}

/// One `EXPORT=/dev/nbdN`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Device {
    export: String,
    /// The N of `/dev/nbdN` (`NBD_ATTR_INDEX`).
    index: u32,
}

/// The NBD protocol's limit on export names.
const MAX_NAME: usize = 4096;

impl Args {
    fn parse(argv: &[String]) -> Result<Self, String> {
        let mut server = None;
        let (mut dead_timeout, mut io_timeout, mut check) = (600, 30, false);
        let mut devices: Vec<Device> = Vec::new();
        let mut it = argv.iter();
        while let Some(arg) = it.next() {
            let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
            match arg.as_str() {
                "--server" => server = Some(parse_server(value()?)?),
                "--dead-timeout" => dead_timeout = parse_seconds(arg, value()?)?,
                "--io-timeout" => io_timeout = parse_seconds(arg, value()?)?,
                "--check" => check = true,
                _ if arg.starts_with('-') => return Err(format!("unknown option {arg}")),
                _ => devices.push(Device::parse(arg)?),
            }
        }
        let server = server.ok_or("--server IP:PORT is required")?;
        if devices.is_empty() {
            return Err("no EXPORT=/dev/nbdN given".into());
        }
        for (i, d) in devices.iter().enumerate() {
            if devices[..i].iter().any(|e| e.index == d.index) {
                return Err(format!("/dev/nbd{} given twice", d.index));
            }
        }
        Ok(Args {
            server,
            dead_timeout,
            io_timeout,
            check,
            devices,
        })
    }
}

fn parse_server(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("--server {text:?}: expected IP:PORT (an address, not a name)"))
}

fn parse_seconds(flag: &str, text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(n) if n > 0 && text.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(format!("{flag} {text:?}: expected a number of seconds > 0")),
    }
}

impl Device {
    fn parse(arg: &str) -> Result<Self, String> {
        let (export, path) = arg
            .rsplit_once('=')
            .ok_or_else(|| format!("{arg:?}: expected EXPORT=/dev/nbdN"))?;
        if export.is_empty() || export.len() > MAX_NAME {
            return Err(format!(
                "{arg:?}: the export name must be 1 to {MAX_NAME} bytes"
            ));
        }
        let index = path
            .strip_prefix("/dev/nbd")
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("{arg:?}: {path:?} is not /dev/nbdN"))?;
        Ok(Device {
            export: export.to_string(),
            index,
        })
    }
}

// --- The NBD handshake (fixed newstyle, NBD_OPT_GO) ----------------------

const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943; // "NBDMAGIC"
const OPTS_MAGIC: u64 = 0x4948_4156_454f_5054; // "IHAVEOPT"
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
const FLAG_NO_ZEROES: u16 = 1 << 1;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_FLAG_ERROR: u32 = 1 << 31;
const INFO_EXPORT: u16 = 0;
/// Replies read before giving up on a server that never acknowledges.
const MAX_REPLIES: usize = 32;
/// The largest reply payload read (an error message, an info).
const MAX_REPLY_DATA: u32 = 64 << 10;

/// What `NBD_INFO_EXPORT` says about an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ExportInfo {
    size: u64,
    /// Transmission flags, as the kernel takes them (`NBD_ATTR_SERVER_FLAGS`).
    flags: u16,
}

#[derive(Debug)]
enum HandshakeError {
    Io(io::Error),
    /// The first bytes are not `NBDMAGIC` `IHAVEOPT`.
    NotNbd,
    /// The server does not offer fixed newstyle negotiation.
    NotFixedNewstyle,
    /// An `NBD_REP_ERR_*` answer.
    Refused {
        code: u32,
        message: String,
    },
    /// Any other break of the protocol.
    Protocol(&'static str),
}

impl From<io::Error> for HandshakeError {
    fn from(e: io::Error) -> Self {
        HandshakeError::Io(e)
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                write!(f, "the server closed the connection during the handshake")
            }
            HandshakeError::Io(e) => write!(f, "{e}"),
            HandshakeError::NotNbd => write!(f, "not an NBD server (no NBDMAGIC greeting)"),
            HandshakeError::NotFixedNewstyle => {
                write!(f, "the server does not offer fixed newstyle negotiation")
            }
            HandshakeError::Refused { code, message } => {
                let (name, meaning) = refusal(*code);
                if message.is_empty() {
                    write!(f, "{name} ({meaning})")
                } else {
                    write!(f, "{name}: {message}")
                }
            }
            HandshakeError::Protocol(what) => write!(f, "protocol error: {what}"),
        }
    }
}

/// An `NBD_REP_ERR_*` code's name and meaning.
fn refusal(code: u32) -> (&'static str, &'static str) {
    match code & !REP_FLAG_ERROR {
        1 => ("NBD_REP_ERR_UNSUP", "NBD_OPT_GO not supported"),
        2 => ("NBD_REP_ERR_POLICY", "refused by policy"),
        3 => ("NBD_REP_ERR_INVALID", "invalid request"),
        5 => ("NBD_REP_ERR_TLS_REQD", "TLS required"),
        6 => ("NBD_REP_ERR_UNKNOWN", "no such export"),
        7 => ("NBD_REP_ERR_SHUTDOWN", "the server is shutting down"),
        8 => (
            "NBD_REP_ERR_BLOCK_SIZE_REQD",
            "block size negotiation required",
        ),
        9 => ("NBD_REP_ERR_TOO_BIG", "request too big"),
        _ => ("NBD_REP_ERR_*", "refused"),
    }
}

/// The handshake flags of the server's 18-byte greeting.
fn parse_greeting(greeting: &[u8; 18]) -> Result<u16, HandshakeError> {
    if be_u64(&greeting[..8]) != NBD_MAGIC || be_u64(&greeting[8..16]) != OPTS_MAGIC {
        return Err(HandshakeError::NotNbd);
    }
    let flags = u16::from_be_bytes([greeting[16], greeting[17]]);
    if flags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(HandshakeError::NotFixedNewstyle);
    }
    Ok(flags)
}

/// The client's flags: fixed newstyle, and no zeroes if the server allows.
fn client_flags(server_flags: u16) -> u32 {
    u32::from(FLAG_FIXED_NEWSTYLE | (server_flags & FLAG_NO_ZEROES))
}

/// `NBD_OPT_GO` for `export`, asking for no particular info (the server
/// sends `NBD_INFO_EXPORT` regardless).
fn go_option(export: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(22 + export.len());
    out.extend(OPTS_MAGIC.to_be_bytes());
    out.extend(OPT_GO.to_be_bytes());
    out.extend((4 + export.len() as u32 + 2).to_be_bytes());
    out.extend((export.len() as u32).to_be_bytes());
    out.extend(export.as_bytes());
    out.extend(0u16.to_be_bytes());
    out
}

/// An option reply's header: (reply type, payload length).
fn parse_reply_header(head: &[u8; 20]) -> Result<(u32, u32), HandshakeError> {
    if be_u64(&head[..8]) != REPLY_MAGIC {
        return Err(HandshakeError::Protocol("bad option reply magic"));
    }
    if be_u32(&head[8..12]) != OPT_GO {
        return Err(HandshakeError::Protocol("a reply to an option not sent"));
    }
    let len = be_u32(&head[16..20]);
    if len > MAX_REPLY_DATA {
        return Err(HandshakeError::Protocol("an option reply over 64 KiB"));
    }
    Ok((be_u32(&head[12..16]), len))
}

/// `NBD_INFO_EXPORT` from an `NBD_REP_INFO` payload (other infos: `None`).
fn parse_info_export(data: &[u8]) -> Option<ExportInfo> {
    (data.len() == 12 && u16::from_be_bytes([data[0], data[1]]) == INFO_EXPORT).then(|| {
        ExportInfo {
            size: be_u64(&data[2..10]),
            flags: u16::from_be_bytes([data[10], data[11]]),
        }
    })
}

/// The handshake up to the transmission phase: what follows on `stream`
/// belongs to the kernel (nothing past the final `NBD_REP_ACK` is read).
fn handshake<S: Read + Write>(stream: &mut S, export: &str) -> Result<ExportInfo, HandshakeError> {
    let mut greeting = [0u8; 18];
    stream.read_exact(&mut greeting)?;
    let server_flags = parse_greeting(&greeting)?;
    let mut hello = client_flags(server_flags).to_be_bytes().to_vec();
    hello.extend(go_option(export));
    stream.write_all(&hello)?;
    stream.flush()?;
    let mut info = None;
    for _ in 0..MAX_REPLIES {
        let mut head = [0u8; 20];
        stream.read_exact(&mut head)?;
        let (kind, len) = parse_reply_header(&head)?;
        let mut data = vec![0u8; len as usize];
        stream.read_exact(&mut data)?;
        match kind {
            REP_ACK => {
                return info.ok_or(HandshakeError::Protocol(
                    "NBD_OPT_GO acknowledged without NBD_INFO_EXPORT",
                ))
            }
            REP_INFO => info = parse_info_export(&data).or(info),
            code if code & REP_FLAG_ERROR != 0 => {
                let message = String::from_utf8_lossy(&data[..data.len().min(200)]);
                return Err(HandshakeError::Refused {
                    code,
                    message: message.into_owned(),
                });
            }
            _ => return Err(HandshakeError::Protocol("an unknown reply to NBD_OPT_GO")),
        }
    }
    Err(HandshakeError::Protocol("no NBD_REP_ACK after 32 replies"))
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
}

fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

// --- Dialing --------------------------------------------------------------

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connection attempts at the start, a second apart (the server may be
/// restarting as the machine boots); a refused export is not retried.
const START_TRIES: u32 = 10;
/// Keepalive: probes after 15 s idle, every 5 s, 4 unanswered is dead.
const KEEPALIVE: (u32, u32, u32) = (15, 5, 4);

#[derive(Debug)]
enum DialError {
    Connect(io::Error),
    Handshake(HandshakeError),
}

impl fmt::Display for DialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DialError::Connect(e) => write!(f, "connect: {e}"),
            DialError::Handshake(e) => write!(f, "{e}"),
        }
    }
}

/// A connection to `server` in the transmission phase of `export`, set up
/// to be handed to the kernel.
fn dial(server: SocketAddr, export: &str) -> Result<(TcpStream, ExportInfo), DialError> {
    let mut stream =
        TcpStream::connect_timeout(&server, CONNECT_TIMEOUT).map_err(DialError::Connect)?;
    let setup = |s: &TcpStream, t: Option<Duration>| {
        s.set_read_timeout(t)?;
        s.set_write_timeout(t)
    };
    setup(&stream, Some(HANDSHAKE_TIMEOUT)).map_err(DialError::Connect)?;
    let info = handshake(&mut stream, export).map_err(DialError::Handshake)?;
    // The kernel's receive thread waits as long as the server is quiet.
    setup(&stream, None).map_err(DialError::Connect)?;
    keepalive(&stream).map_err(|e| DialError::Connect(e.into()))?;
    Ok((stream, info))
}

fn keepalive(stream: &TcpStream) -> nix::Result<()> {
    let (idle, interval, count) = KEEPALIVE;
    sock::setsockopt(stream, sockopt::TcpNoDelay, &true)?;
    sock::setsockopt(stream, sockopt::KeepAlive, &true)?;
    sock::setsockopt(stream, sockopt::TcpKeepIdle, &idle)?;
    sock::setsockopt(stream, sockopt::TcpKeepInterval, &interval)?;
    sock::setsockopt(stream, sockopt::TcpKeepCount, &count)
}

/// Every export opened, in order, before anything else happens.
fn open_all(args: &Args) -> Result<Vec<(Device, TcpStream, ExportInfo)>, String> {
    let mut opened = Vec::new();
    for device in &args.devices {
        let (stream, info) = dial_at_start(args.server, &device.export)
            .map_err(|e| format!("export {} on {}: {e}", device.export, args.server))?;
        opened.push((device.clone(), stream, info));
    }
    Ok(opened)
}

fn dial_at_start(server: SocketAddr, export: &str) -> Result<(TcpStream, ExportInfo), DialError> {
    let mut tries = 1;
    loop {
        match dial(server, export) {
            Err(DialError::Connect(e)) if tries < START_TRIES => {
                log!("{server}: {e}; trying again ({tries}/{START_TRIES})");
                std::thread::sleep(Duration::from_secs(1));
                tries += 1;
            }
            done => return done,
        }
    }
}

/// Ignores SIGTERM and SIGHUP, and asks the OOM killer to spare this
/// process: the root filesystem depends on it.
fn stay_alive() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    for s in [Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: SIG_IGN installs no handler code; nothing else in this
        // process sets signal dispositions.
        if let Err(e) = unsafe { signal(s, SigHandler::SigIgn) } {
            log!("cannot ignore {s}: {e}");
        }
    }
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "-1000") {
        log!("cannot set oom_score_adj: {e}");
    }
}

// --- Netlink messages (pure) ---------------------------------------------

const NLMSG_HDR: usize = 16;
const GENL_HDR: usize = 4;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLA_F_NESTED: u16 = 1 << 15;
const NLA_TYPE_MASK: u16 = !(3 << 14);

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_VERSION: u8 = 2;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const CTRL_ATTR_MCAST_GROUPS: u16 = 7;
const CTRL_ATTR_MCAST_GRP_NAME: u16 = 1;
const CTRL_ATTR_MCAST_GRP_ID: u16 = 2;

/// include/uapi/linux/nbd-netlink.h
const NBD_FAMILY: &str = "nbd";
const NBD_MCAST_GROUP: &str = "nbd_mc_group";
const NBD_GENL_VERSION: u8 = 1;
const NBD_CMD_CONNECT: u8 = 1;
const NBD_CMD_RECONFIGURE: u8 = 3;
const NBD_CMD_LINK_DEAD: u8 = 4;
const NBD_ATTR_INDEX: u16 = 1;
const NBD_ATTR_SIZE_BYTES: u16 = 2;
const NBD_ATTR_BLOCK_SIZE_BYTES: u16 = 3;
const NBD_ATTR_TIMEOUT: u16 = 4;
const NBD_ATTR_SERVER_FLAGS: u16 = 5;
const NBD_ATTR_SOCKETS: u16 = 7;
const NBD_ATTR_DEAD_CONN_TIMEOUT: u16 = 8;
const NBD_ATTR_BACKEND_IDENTIFIER: u16 = 10;
const NBD_SOCK_ITEM: u16 = 1;
const NBD_SOCK_FD: u16 = 1;
/// The device's logical block size: a page, what dm-verity reads.
const BLOCK_SIZE: u64 = 4096;

/// Netlink attributes, encoded as they are added (host byte order, each
/// padded to 4 bytes).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Attrs(Vec<u8>);

impl Attrs {
    fn put(mut self, kind: u16, payload: &[u8]) -> Self {
        let len = u16::try_from(4 + payload.len()).expect("attribute under 64 KiB");
        self.0.extend(len.to_ne_bytes());
        self.0.extend(kind.to_ne_bytes());
        self.0.extend(payload);
        self.0.resize(align4(self.0.len()), 0);
        self
    }

    fn u32(self, kind: u16, value: u32) -> Self {
        self.put(kind, &value.to_ne_bytes())
    }

    fn u64(self, kind: u16, value: u64) -> Self {
        self.put(kind, &value.to_ne_bytes())
    }

    /// A NUL-terminated string (`NLA_STRING`, `NLA_NUL_STRING`).
    fn string(self, kind: u16, value: &str) -> Self {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.put(kind, &bytes)
    }

    fn nested(self, kind: u16, inner: Attrs) -> Self {
        self.put(kind | NLA_F_NESTED, &inner.0)
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A generic netlink request that asks for an acknowledgement.
fn genl_request(family: u16, cmd: u8, version: u8, seq: u32, attrs: &Attrs) -> Vec<u8> {
    let len = (NLMSG_HDR + GENL_HDR + attrs.0.len()) as u32;
    let mut out = Vec::with_capacity(len as usize);
    out.extend(len.to_ne_bytes());
    out.extend(family.to_ne_bytes());
    out.extend((NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    out.extend(seq.to_ne_bytes());
    out.extend(0u32.to_ne_bytes()); // port id: the kernel fills it in
    out.extend([cmd, version, 0, 0]);
    out.extend(&attrs.0);
    out
}

/// One netlink message of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Message<'a> {
    kind: u16,
    seq: u32,
    /// What follows the netlink header.
    payload: &'a [u8],
}

/// The messages of a datagram; `None` if a length does not add up.
fn messages(mut buf: &[u8]) -> Option<Vec<Message<'_>>> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDR {
        let len = ne_u32(&buf[..4]) as usize;
        if len < NLMSG_HDR || len > buf.len() {
            return None;
        }
        out.push(Message {
            kind: u16::from_ne_bytes([buf[4], buf[5]]),
            seq: ne_u32(&buf[8..12]),
            payload: &buf[NLMSG_HDR..len],
        });
        buf = &buf[align4(len).min(buf.len())..];
    }
    Some(out)
}

/// The attributes in `buf`, as (type without flags, payload); a truncated
/// attribute ends the list.
fn attributes(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        if len < 4 || len > buf.len() {
            break;
        }
        out.push((
            u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK,
            &buf[4..len],
        ));
        buf = &buf[align4(len).min(buf.len())..];
    }
    out
}

fn attribute(buf: &[u8], kind: u16) -> Option<&[u8]> {
    attributes(buf)
        .into_iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, v)| v)
}

fn attr_u32(buf: &[u8], kind: u16) -> Option<u32> {
    attribute(buf, kind).filter(|v| v.len() == 4).map(ne_u32)
}

fn ne_u32(b: &[u8]) -> u32 {
    u32::from_ne_bytes(b[..4].try_into().expect("4 bytes"))
}

/// A generic netlink message's command and attributes.
fn genl_body(payload: &[u8]) -> Option<(u8, &[u8])> {
    (payload.len() >= GENL_HDR).then(|| (payload[0], &payload[GENL_HDR..]))
}

/// `NLMSG_ERROR`'s errno (0: an acknowledgement).
fn nlmsg_error(payload: &[u8]) -> Option<i32> {
    (payload.len() >= 4).then(|| ne_u32(payload) as i32)
}

/// A generic netlink family, as `CTRL_CMD_GETFAMILY` describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Family {
    id: u16,
    /// The id of the multicast group looked for.
    group: u32,
}

/// The family id and the id of multicast group `group` from the
/// attributes of a `CTRL_CMD_GETFAMILY` reply.
fn parse_family(attrs: &[u8], group: &str) -> Option<Family> {
    let id = attribute(attrs, CTRL_ATTR_FAMILY_ID).filter(|v| v.len() == 2)?;
    let groups = attribute(attrs, CTRL_ATTR_MCAST_GROUPS)?;
    let group = attributes(groups).into_iter().find_map(|(_, g)| {
        let name = attribute(g, CTRL_ATTR_MCAST_GRP_NAME)?;
        (name.strip_suffix(&[0]).unwrap_or(name) == group.as_bytes())
            .then(|| attr_u32(g, CTRL_ATTR_MCAST_GRP_ID))
            .flatten()
    })?;
    Some(Family {
        id: u16::from_ne_bytes([id[0], id[1]]),
        group,
    })
}

/// `NBD_CMD_CONNECT`'s attributes: the device, the export's size and
/// flags, the timeouts, and the socket.
fn connect_attrs(device: &Device, info: ExportInfo, fd: u32, args: &Args) -> Attrs {
    Attrs::default()
        .u32(NBD_ATTR_INDEX, device.index)
        .u64(NBD_ATTR_SIZE_BYTES, info.size)
        .u64(NBD_ATTR_BLOCK_SIZE_BYTES, BLOCK_SIZE)
        .u64(NBD_ATTR_SERVER_FLAGS, u64::from(info.flags))
        .u64(NBD_ATTR_TIMEOUT, args.io_timeout)
        .u64(NBD_ATTR_DEAD_CONN_TIMEOUT, args.dead_timeout)
        .string(NBD_ATTR_BACKEND_IDENTIFIER, &device.export)
        .nested(NBD_ATTR_SOCKETS, socket_item(fd))
}

/// `NBD_CMD_RECONFIGURE`'s: the device (the kernel checks the backend
/// names the same export) and the new socket for its dead one.
fn reconfigure_attrs(device: &Device, fd: u32) -> Attrs {
    Attrs::default()
        .u32(NBD_ATTR_INDEX, device.index)
        .string(NBD_ATTR_BACKEND_IDENTIFIER, &device.export)
        .nested(NBD_ATTR_SOCKETS, socket_item(fd))
}

fn socket_item(fd: u32) -> Attrs {
    Attrs::default().nested(NBD_SOCK_ITEM, Attrs::default().u32(NBD_SOCK_FD, fd))
}

/// The device index of an `NBD_CMD_LINK_DEAD` event (other messages: `None`).
fn link_dead_index(family: u16, message: &Message) -> Option<u32> {
    if message.kind != family {
        return None;
    }
    match genl_body(message.payload)? {
        (NBD_CMD_LINK_DEAD, attrs) => attr_u32(attrs, NBD_ATTR_INDEX),
        _ => None,
    }
}

// --- The kernel -----------------------------------------------------------

/// One `NETLINK_GENERIC` socket.
struct Genl {
    fd: OwnedFd,
    seq: u32,
}

impl Genl {
    fn open() -> io::Result<Self> {
        let fd = sock::socket(
            sock::AddressFamily::Netlink,
            sock::SockType::Raw,
            sock::SockFlag::SOCK_CLOEXEC,
            sock::SockProtocol::NetlinkGeneric,
        )?;
        sock::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
        Ok(Genl { fd, seq: 0 })
    }

    /// Sends a request and returns the payloads of the replies to it, up to
    /// the kernel's acknowledgement; a refusal is its errno.
    fn request(
        &mut self,
        family: u16,
        cmd: u8,
        version: u8,
        attrs: &Attrs,
    ) -> io::Result<Vec<Vec<u8>>> {
        self.seq += 1;
        let seq = self.seq;
        sock::send(
            self.fd.as_raw_fd(),
            &genl_request(family, cmd, version, seq, attrs),
            MsgFlags::empty(),
        )?;
        let mut replies = Vec::new();
        let mut buf = vec![0u8; 32 << 10];
        loop {
            let n = sock::recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
            let msgs = messages(&buf[..n]).ok_or_else(|| bad_data("a malformed netlink reply"))?;
            for m in msgs.iter().filter(|m| m.seq == seq) {
                match (m.kind, nlmsg_error(m.payload)) {
                    (NLMSG_ERROR, Some(0)) => return Ok(replies),
                    (NLMSG_ERROR, Some(errno)) => return Err(io::Error::from_raw_os_error(-errno)),
                    (NLMSG_ERROR, None) => return Err(bad_data("a short NLMSG_ERROR")),
                    _ => replies.push(m.payload.to_vec()),
                }
            }
        }
    }

    /// Subscribes to multicast group `group`.
    fn join(&self, group: u32) -> io::Result<()> {
        // SAFETY: setsockopt reads `size_of::<u32>()` bytes from a live u32.
        let rc = unsafe {
            nix::libc::setsockopt(
                self.fd.as_raw_fd(),
                nix::libc::SOL_NETLINK,
                nix::libc::NETLINK_ADD_MEMBERSHIP,
                (&group as *const u32).cast(),
                std::mem::size_of::<u32>() as nix::libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

fn bad_data(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// The kernel's `nbd` family: requests on one socket, link-dead events on
/// another (so neither waits behind the other).
struct Kernel {
    requests: Genl,
    events: Genl,
    family: Family,
    buf: Vec<u8>,
}

/// What the event socket said.
enum Events {
    /// These devices lost their connection.
    Dead(Vec<u32>),
    /// Events were dropped (the socket's buffer overflowed).
    Lost,
}

impl Kernel {
    /// Resolves the family and subscribes to its events, before any device
    /// is connected (so no event is missed).
    fn open() -> io::Result<Self> {
        let mut requests = Genl::open()?;
        let ask = Attrs::default().string(CTRL_ATTR_FAMILY_NAME, NBD_FAMILY);
        let replies = match requests.request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, CTRL_VERSION, &ask) {
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => {
                return Err(io::Error::new(
                    e.kind(),
                    "no \"nbd\" family: is the nbd module loaded?",
                ))
            }
            r => r?,
        };
        let family = replies
            .iter()
            .find_map(|p| parse_family(genl_body(p)?.1, NBD_MCAST_GROUP))
            .ok_or_else(|| bad_data("CTRL_CMD_GETFAMILY: no nbd family id or nbd_mc_group"))?;
        let events = Genl::open()?;
        events.join(family.group)?;
        Ok(Kernel {
            requests,
            events,
            family,
            buf: vec![0u8; 16 << 10],
        })
    }

    fn connect(
        &mut self,
        device: &Device,
        info: ExportInfo,
        stream: &TcpStream,
        args: &Args,
    ) -> io::Result<()> {
        let attrs = connect_attrs(device, info, stream.as_raw_fd() as u32, args);
        self.nbd(NBD_CMD_CONNECT, &attrs)
    }

    fn reconfigure(&mut self, device: &Device, stream: &TcpStream) -> io::Result<()> {
        let attrs = reconfigure_attrs(device, stream.as_raw_fd() as u32);
        self.nbd(NBD_CMD_RECONFIGURE, &attrs)
    }

    fn nbd(&mut self, cmd: u8, attrs: &Attrs) -> io::Result<()> {
        let family = self.family.id;
        self.requests
            .request(family, cmd, NBD_GENL_VERSION, attrs)
            .map(drop)
    }

    /// The next events, waiting at most `wait` (`None`: until there are).
    fn events(&mut self, wait: Option<Duration>) -> io::Result<Events> {
        // SO_RCVTIMEO: zero waits for ever.
        let (secs, micros) = wait.map_or((0, 0), |w| (w.as_secs(), w.subsec_micros()));
        let timeout = TimeVal::new(secs as _, micros as _);
        sock::setsockopt(&self.events.fd, sockopt::ReceiveTimeout, &timeout)?;
        let n = match sock::recv(self.events.fd.as_raw_fd(), &mut self.buf, MsgFlags::empty()) {
            Ok(n) => n,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {
                return Ok(Events::Dead(Vec::new()))
            }
            Err(nix::errno::Errno::ENOBUFS) => return Ok(Events::Lost),
            Err(e) => return Err(e.into()),
        };
        let msgs = messages(&self.buf[..n]).ok_or_else(|| bad_data("a malformed netlink event"))?;
        let family = self.family.id;
        Ok(Events::Dead(
            msgs.iter()
                .filter_map(|m| link_dead_index(family, m))
                .collect(),
        ))
    }
}

// --- Keeping the devices attached -----------------------------------------

/// A device whose connection died, being reconnected.
struct Dead {
    index: u32,
    since: Instant,
    attempts: u32,
    next: Instant,
}

const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Waits for link-dead events and reconnects the devices they name, for
/// ever (an `Err` is the event socket failing).
fn watch(
    kernel: &mut Kernel,
    args: &Args,
    attached: &[(Device, ExportInfo)],
) -> Result<(), String> {
    let mut dead: Vec<Dead> = Vec::new();
    loop {
        let wait = (!dead.is_empty()).then_some(RETRY_EVERY);
        let indices = match kernel
            .events(wait)
            .map_err(|e| format!("netlink events: {e}"))?
        {
            Events::Dead(indices) => indices,
            Events::Lost => {
                log!("netlink events were lost: offering every device a new connection");
                attached.iter().map(|(d, _)| d.index).collect()
            }
        };
        for index in indices {
            if !attached.iter().any(|(d, _)| d.index == index)
                || dead.iter().any(|d| d.index == index)
            {
                continue;
            }
            log!(
                "nbd{index}: connection dead; reconnecting to {}",
                args.server
            );
            let now = Instant::now();
            dead.push(Dead {
                index,
                since: now,
                attempts: 0,
                next: now,
            });
        }
        dead.retain_mut(|d| !retry(kernel, args, attached, d));
    }
}

/// One reconnection attempt if it is due; `true` when `dead` is done with
/// (reconnected, or given up after the dead-connection timeout).
fn retry(
    kernel: &mut Kernel,
    args: &Args,
    attached: &[(Device, ExportInfo)],
    dead: &mut Dead,
) -> bool {
    let now = Instant::now();
    if now < dead.next {
        return false;
    }
    dead.attempts += 1;
    dead.next = now + RETRY_EVERY;
    let (device, info) = attached
        .iter()
        .find(|(d, _)| d.index == dead.index)
        .expect("an attached device");
    let index = device.index;
    match reconnect(kernel, args.server, device, *info) {
        Ok(()) => {
            log!(
                "nbd{index}: reconnected (NBD_CMD_RECONFIGURE) after {:.1} s, {} attempt(s)",
                dead.since.elapsed().as_secs_f64(),
                dead.attempts
            );
            true
        }
        Err(why) if dead.since.elapsed() >= Duration::from_secs(args.dead_timeout) => {
            log!(
                "nbd{index}: giving up after {} s ({why}): the kernel fails its I/O now",
                args.dead_timeout
            );
            true
        }
        Err(why) => {
            if dead.attempts <= 5 || dead.attempts % 30 == 0 {
                log!("nbd{index}: attempt {} failed: {why}", dead.attempts);
            }
            false
        }
    }
}

fn reconnect(
    kernel: &mut Kernel,
    server: SocketAddr,
    device: &Device,
    info: ExportInfo,
) -> Result<(), String> {
    let (stream, now) = dial(server, &device.export).map_err(|e| e.to_string())?;
    if now.size != info.size {
        return Err(format!(
            "the export is now {} bytes, was {}",
            now.size, info.size
        ));
    }
    kernel
        .reconfigure(device, &stream)
        .map_err(|e| format!("NBD_CMD_RECONFIGURE: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &str) -> Vec<String> {
        words.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn the_command_line_names_server_devices_and_timeouts() {
        let root = "ab".repeat(32);
        let a = Args::parse(&argv(&format!(
            "--server 10.0.2.2:10809 --dead-timeout 60 {root}=/dev/nbd0 sha256:{root}=/dev/nbd12"
        )))
        .unwrap();
        assert_eq!(a.server, "10.0.2.2:10809".parse().unwrap());
        assert_eq!((a.dead_timeout, a.io_timeout, a.check), (60, 30, false));
        assert_eq!(
            a.devices[0],
            Device {
                export: root.clone(),
                index: 0
            }
        );
        assert_eq!(a.devices[1].export, format!("sha256:{root}"));
        assert_eq!(a.devices[1].index, 12);

        let refused = [
            ("x=/dev/nbd0", "--server"),
            ("--server 10.0.2.2:10809", "no EXPORT"),
            ("--server nbd.example:10809 x=/dev/nbd0", "not a name"),
            ("--server 10.0.2.2 x=/dev/nbd0", "IP:PORT"),
            ("--server 10.0.2.2:1 x=/dev/sda", "not /dev/nbdN"),
            ("--server 10.0.2.2:1 x=/dev/nbd+1", "not /dev/nbdN"),
            ("--server 10.0.2.2:1 x", "EXPORT=/dev/nbdN"),
            ("--server 10.0.2.2:1 =/dev/nbd0", "1 to 4096"),
            ("--server 10.0.2.2:1 a=/dev/nbd0 b=/dev/nbd0", "twice"),
            (
                "--server 10.0.2.2:1 --dead-timeout 0 a=/dev/nbd0",
                "seconds",
            ),
            ("--server 10.0.2.2:1 --dead-timeout", "needs a value"),
            ("--server 10.0.2.2:1 --fast a=/dev/nbd0", "unknown option"),
        ];
        for (line, why) in refused {
            let err = Args::parse(&argv(line)).unwrap_err();
            assert!(err.contains(why), "{line:?}: {err}");
        }
    }

    /// A peer that answers with `input` and keeps what it is sent.
    struct Peer {
        input: io::Cursor<Vec<u8>>,
        sent: Vec<u8>,
    }

    impl Peer {
        fn new(input: &[u8]) -> Self {
            Peer {
                input: io::Cursor::new(input.to_vec()),
                sent: Vec::new(),
            }
        }
    }

    impl Read for Peer {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Peer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.sent.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect()
    }

    /// What `ironboot serve` sent a client that asked for an export of
    /// 3 MiB + 1234 bytes (`EXPORT`) with `NBD_OPT_GO`, captured on
    /// loopback: the greeting, `NBD_INFO_EXPORT`, `NBD_INFO_BLOCK_SIZE`,
    /// `NBD_REP_ACK`.
    const EXPORT: &str = "b345f5c95e41d5c41902b90ecbcc93446d45a8edcbbc0cc56a62559348bf355f";
    const GO_ACCEPTED: &str = "
        4e42444d41474943 49484156454f5054 0003
        0003e889045565a9 00000007 00000003 0000000c 0000 00000000003004d2 0107
        0003e889045565a9 00000007 00000003 0000000e 0003 00000001 00001000 02000000
        0003e889045565a9 00000007 00000001 00000000";

    /// The same server asked for an export it does not have (64 zeros).
    const GO_UNKNOWN: &str = "
        4e42444d41474943 49484156454f5054 0003
        0003e889045565a9 00000007 80000006 00000035
        6e6f2073756368206578706f72743a206e616d6520616e206172746966616374
        206279206974732073686132353620646967657374";

    #[test]
    fn the_handshake_reads_the_servers_bytes() {
        let mut peer = Peer::new(&hex(GO_ACCEPTED));
        let info = handshake(&mut peer, EXPORT).unwrap();
        assert_eq!(
            info,
            ExportInfo {
                size: 3 * 1024 * 1024 + 1234,
                flags: 0x0107
            }
        );
        assert_eq!(
            peer.input.position() as usize,
            peer.input.get_ref().len(),
            "read up to the ACK, no further"
        );
        // Fixed newstyle and no zeroes, then GO: magic, option, length,
        // the name's length, the name, no info requests.
        let mut expected = hex("00000003 49484156454f5054 00000007 00000046 00000040");
        expected.extend(EXPORT.as_bytes());
        expected.extend([0, 0]);
        assert_eq!(peer.sent, expected);

        let err = handshake(&mut Peer::new(&hex(GO_UNKNOWN)), &"0".repeat(64)).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(
                err,
                HandshakeError::Refused {
                    code: 0x8000_0006,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            text.contains("NBD_REP_ERR_UNKNOWN") && text.contains("sha256 digest"),
            "{text}"
        );
    }

    #[test]
    fn a_handshake_that_breaks_the_rules_is_an_error() {
        let good = hex(GO_ACCEPTED);
        let mut not_nbd = good.clone();
        not_nbd[0] = b'X';
        let mut old_style = good.clone();
        old_style[17] = 0;
        let mut bad_reply = good.clone();
        bad_reply[18] ^= 0xff;
        let mut other_option = good.clone();
        other_option[18 + 11] = 1;
        let mut huge = good.clone();
        huge[18 + 16..18 + 20].copy_from_slice(&(1u32 << 30).to_be_bytes());
        let ack_only = [&good[..18], &good[good.len() - 20..]].concat();
        let cases: [(&[u8], &str); 7] = [
            (&not_nbd, "not an NBD server"),
            (&old_style, "fixed newstyle"),
            (&bad_reply, "magic"),
            (&other_option, "not sent"),
            (&huge, "over 64 KiB"),
            (&ack_only, "without NBD_INFO_EXPORT"),
            (&good[..40], "closed the connection"),
        ];
        for (bytes, why) in cases {
            let err = handshake(&mut Peer::new(bytes), "x")
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{why}: {err}");
        }
    }

    #[test]
    fn connect_attributes_have_the_kernels_layout() {
        let args = Args::parse(&argv("--server 10.0.2.2:10809 r=/dev/nbd1")).unwrap();
        let info = ExportInfo {
            size: 1 << 31,
            flags: 0x0107,
        };
        let attrs = connect_attrs(&args.devices[0], info, 7, &args);
        let le = |hex_le: &str| hex(hex_le);
        let expected = [
            le("0800 0100 01000000"),                     // INDEX 1
            le("0c00 0200 0000008000000000"),             // SIZE_BYTES 2 GiB
            le("0c00 0300 0010000000000000"),             // BLOCK_SIZE_BYTES 4096
            le("0c00 0500 0701000000000000"),             // SERVER_FLAGS
            le("0c00 0400 1e00000000000000"),             // TIMEOUT 30
            le("0c00 0800 5802000000000000"),             // DEAD_CONN_TIMEOUT 600
            le("0600 0a00 7200 0000"),                    // BACKEND "r\0", padded
            le("1000 0780 0c00 0180 0800 0100 07000000"), // SOCKETS{ITEM{FD 7}}
        ]
        .concat();
        assert_eq!(attrs.0, expected);

        let again = reconfigure_attrs(&args.devices[0], 9);
        let parsed = attributes(&again.0);
        assert_eq!(
            parsed.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            [1, 10, 7]
        );
        let item = attributes(parsed[2].1)[0];
        assert_eq!(item.0, NBD_SOCK_ITEM);
        assert_eq!(attr_u32(item.1, NBD_SOCK_FD), Some(9));

        let msg = genl_request(0x25, NBD_CMD_CONNECT, 1, 3, &attrs);
        let parsed = messages(&msg).unwrap();
        assert_eq!(parsed.len(), 1);
        assert_eq!((parsed[0].kind, parsed[0].seq), (0x25, 3));
        assert_eq!(&msg[6..8], &5u16.to_ne_bytes(), "REQUEST | ACK");
        assert_eq!(
            genl_body(parsed[0].payload),
            Some((NBD_CMD_CONNECT, &attrs.0[..]))
        );
    }

    /// The kernel's answer to CTRL_CMD_GETFAMILY "nlctrl" (captured on
    /// Linux 6.18 with Python's socket module; the id and the group
    /// "notify" are both 0x10): the parser that finds "nbd_mc_group" in
    /// the nbd family's answer reads it.
    const GETFAMILY_NLCTRL: &str = "
        88000000 10000000 01000000 1c1d0000 01020000 0b000200 6e6c6374 726c0000
        06000100 10000000 08000300 02000000 08000400 00000000 08000500 00000000
        2c000600 14000100 08000100 03000000 08000200 0e000000 14000200 08000100
        0a000000 08000200 0c000000 1c000700 18000100 08000200 10000000 0b000100
        6e6f7469 66790000";

    #[test]
    fn the_family_and_its_group_are_read_from_the_kernels_answer() {
        let datagram = hex(GETFAMILY_NLCTRL);
        let msgs = messages(&datagram).unwrap();
        let (cmd, attrs) = genl_body(msgs[0].payload).unwrap();
        assert_eq!(cmd, 1, "CTRL_CMD_NEWFAMILY");
        assert_eq!(
            parse_family(attrs, "notify"),
            Some(Family {
                id: 0x10,
                group: 0x10
            })
        );
        assert_eq!(parse_family(attrs, "nbd_mc_group"), None);
    }

    #[test]
    fn link_dead_events_name_their_device() {
        // genlmsg_put(skb, 0, 0, &nbd_genl_family, 0, NBD_CMD_LINK_DEAD)
        // and nla_put_u32(skb, NBD_ATTR_INDEX, 1), as nbd_mcast_index sends.
        let event = hex("1c000000 2500 0000 00000000 00000000 04010000 0800 0100 01000000");
        let ack = hex(
            "24000000 0200 0000 05000000 00000000 00000000 14000000 2500 0500 05000000 00000000",
        );
        let both = [event.clone(), ack].concat();
        let msgs = messages(&both).unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(link_dead_index(0x25, &msgs[0]), Some(1));
        assert_eq!(link_dead_index(0x26, &msgs[0]), None, "another family");
        assert_eq!(link_dead_index(0x25, &msgs[1]), None, "not an event");
        assert_eq!(nlmsg_error(msgs[1].payload), Some(0));
        assert_eq!(
            messages(&event[..27]).map(|m| m.len()),
            None,
            "a length that does not add up"
        );
    }
}
