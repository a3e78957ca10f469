//! Encoding replies: what every boot client expects in the bytes.
//!
//! - `siaddr` and the `file` header field are set as well as options 66/67
//!   (some ROMs read only the header, some only the options);
//! - options 97 (UUID), 61 (client id) and 82 (relay info) are echoed;
//! - a reply is never shorter than the 300-byte BOOTP minimum;
//! - URLs longer than the `file` field go in option 67 only (dhcproto would
//!   panic on them in the header);
//! - options dhcproto does not know or would re-encode its own way are
//!   appended raw: 114 and 125 (ONIE's installer URL), 239 (a switch's
//!   provisioning script, only when the client asked for it), 82 last.
//!
//! Pure: a request and a [`ReplySpec`] in, bytes out.

use std::net::Ipv4Addr;
use std::time::Duration;

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode};
use dhcproto::{Encodable, Encoder};

use super::classify::{Bootfile, OPT_ZTP_SCRIPT};
use super::packet::Request;
use crate::boot::onie;

/// RFC 951: BOOTP messages are at least 300 bytes; some ROMs drop shorter.
pub const MIN_REPLY_LEN: usize = 300;
/// The `file` header field holds 128 bytes including its NUL terminator.
const FILE_FIELD_MAX: usize = 127;

/// Address parameters for a full-mode OFFER/ACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseParams {
    pub lease_time: Duration,
    pub subnet_mask: Ipv4Addr,
    pub broadcast: Ipv4Addr,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub hostname: Option<String>,
}

/// Everything that varies between replies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplySpec {
    pub msg_type: MessageType,
    pub yiaddr: Ipv4Addr,
    pub server_id: Ipv4Addr,
    /// Where the bootfile is fetched (siaddr, option 66): the configured
    /// `server_ip`, which may differ from the address on this path.
    pub next_server: Ipv4Addr,
    pub boot: Option<Bootfile>,
    pub lease: Option<LeaseParams>,
    /// Option 60 in the reply: `PXEClient` (proxy) or `HTTPClient`.
    pub vendor_class: Option<&'static str>,
    /// Option 43 with PXE discovery control 8: "boot the file in this reply"
    /// (proxy replies to BIOS clients).
    pub pxe_discovery_control: bool,
    /// Option 56, for NAKs.
    pub message: Option<String>,
    /// A [`Bootfile::Ztp`] URL may go in opt 239 (if the client asked for
    /// it) rather than opt 67: a script for Cumulus-style clients.
    pub wants_ztp_option: bool,
}

impl ReplySpec {
    pub fn new(msg_type: MessageType, server_id: Ipv4Addr) -> Self {
        Self {
            msg_type,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            server_id,
            next_server: server_id,
            boot: None,
            lease: None,
            vendor_class: None,
            pxe_discovery_control: false,
            message: None,
            wants_ztp_option: false,
        }
    }
}

/// Builds and encodes the reply to `req`.
pub fn encode(req: &Request, spec: &ReplySpec) -> Vec<u8> {
    let mut msg = Message::default();
    let chaddr = &req.msg.chaddr()[..req.msg.hlen().min(16) as usize];
    msg.set_opcode(Opcode::BootReply)
        .set_htype(req.msg.htype())
        .set_chaddr(chaddr)
        .set_xid(req.xid())
        .set_flags(req.msg.flags())
        .set_giaddr(req.giaddr())
        .set_yiaddr(spec.yiaddr);
    if spec.msg_type == MessageType::Ack && !req.ciaddr().is_unspecified() {
        msg.set_ciaddr(req.ciaddr());
    }
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::MessageType(spec.msg_type));
    opts.insert(DhcpOption::ServerIdentifier(spec.server_id));
    if let Some(text) = &spec.message {
        opts.insert(DhcpOption::Message(text.clone()));
    }
    if spec.msg_type != MessageType::Nak {
        add_lease(opts, spec.lease.as_ref());
        add_boot(&mut msg, spec, ztp_in_239(req, spec));
    }
    echo(&mut msg, req);
    let mut buf = Vec::with_capacity(MIN_REPLY_LEN + 64);
    msg.encode(&mut Encoder::new(&mut buf))
        .expect("encoding into a Vec cannot fail");
    if spec.msg_type != MessageType::Nak {
        for (code, value) in raw_boot_options(req, spec) {
            append_raw(&mut buf, code, &value);
        }
    }
    append_relay_info(&mut buf, req);
    if buf.len() < MIN_REPLY_LEN {
        buf.resize(MIN_REPLY_LEN, 0);
    }
    buf
}

fn add_lease(opts: &mut dhcproto::v4::DhcpOptions, lease: Option<&LeaseParams>) {
    let Some(l) = lease else { return };
    // A zero lease time means "no lease" (replies to DHCPINFORM).
    let secs = l.lease_time.as_secs().min(u32::MAX as u64) as u32;
    if secs > 0 {
        opts.insert(DhcpOption::AddressLeaseTime(secs));
        opts.insert(DhcpOption::Renewal(secs / 2));
        opts.insert(DhcpOption::Rebinding(secs / 8 * 7));
    }
    opts.insert(DhcpOption::SubnetMask(l.subnet_mask));
    opts.insert(DhcpOption::BroadcastAddr(l.broadcast));
    if let Some(router) = l.router {
        opts.insert(DhcpOption::Router(vec![router]));
    }
    if !l.dns.is_empty() {
        opts.insert(DhcpOption::DomainNameServer(l.dns.clone()));
    }
    if let Some(domain) = &l.domain {
        opts.insert(DhcpOption::DomainName(domain.clone()));
    }
    if let Some(host) = &l.hostname {
        opts.insert(DhcpOption::Hostname(host.clone()));
    }
}

/// A Cumulus-style script URL goes in opt 239 when the client asked for
/// 239; otherwise (and for SONiC's `ztp.json`) in opt 67.
fn ztp_in_239(req: &Request, spec: &ReplySpec) -> bool {
    spec.wants_ztp_option && req.requested_options().contains(&OPT_ZTP_SCRIPT)
}

fn add_boot(msg: &mut Message, spec: &ReplySpec, ztp_in_239: bool) {
    let Some(boot) = &spec.boot else { return };
    let name = boot.name();
    msg.set_siaddr(spec.next_server);
    if let Bootfile::OnieInstaller(_) | Bootfile::Ztp(_) = boot {
        // Raw options carry the URL (see `raw_boot_options`); option 66
        // still names the server for ONIE's TFTP waterfall.
        msg.opts_mut().insert(DhcpOption::TFTPServerName(
            spec.next_server.to_string().into_bytes(),
        ));
        if let Bootfile::Ztp(url) = boot {
            if !ztp_in_239 {
                msg.opts_mut()
                    .insert(DhcpOption::BootfileName(url.as_bytes().to_vec()));
            }
        }
        return;
    }
    if name.len() <= FILE_FIELD_MAX {
        msg.set_fname_str(name);
    }
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::TFTPServerName(
        spec.next_server.to_string().into_bytes(),
    ));
    opts.insert(DhcpOption::BootfileName(name.as_bytes().to_vec()));
    if let Some(class) = spec.vendor_class {
        opts.insert(DhcpOption::ClassIdentifier(class.as_bytes().to_vec()));
    }
    if spec.pxe_discovery_control {
        // Sub-option 6 (PXE_DISCOVERY_CONTROL) = 8: use the bootfile given.
        opts.insert(DhcpOption::VendorExtensions(vec![6, 1, 8, 255]));
    }
}

/// Boot options dhcproto cannot encode as they must be: ONIE's default URL
/// (114; dhcproto's `CaptivePortal` has the same bytes but is kept out of
/// its hands) and vendor-identifying options (125), the ZTP script (239).
fn raw_boot_options(req: &Request, spec: &ReplySpec) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    match &spec.boot {
        Some(Bootfile::OnieInstaller(url)) => {
            if url.len() <= 255 {
                out.push((114, url.as_bytes().to_vec()));
            }
            if let Some(vivso) = onie::option_125(url) {
                out.push((125, vivso));
            }
        }
        Some(Bootfile::Ztp(url)) if ztp_in_239(req, spec) && url.len() <= 255 => {
            out.push((OPT_ZTP_SCRIPT, url.as_bytes().to_vec()))
        }
        _ => {}
    }
    out
}

/// Appends one option before END.
fn append_raw(buf: &mut Vec<u8>, code: u8, value: &[u8]) {
    debug_assert_eq!(buf.last(), Some(&255), "dhcproto ends options with END");
    buf.pop();
    buf.push(code);
    buf.push(value.len() as u8);
    buf.extend_from_slice(value);
    buf.push(255);
}

/// Options a server must hand back as the client sent them.
fn echo(msg: &mut Message, req: &Request) {
    if let Some(uuid) = req.options.get(97) {
        msg.opts_mut()
            .insert(DhcpOption::ClientMachineIdentifier(uuid.to_vec()));
    }
    if let Some(id) = req.options.get(61) {
        msg.opts_mut()
            .insert(DhcpOption::ClientIdentifier(id.to_vec()));
    }
}

/// Option 82 goes back to the relay byte for byte, as the last option
/// (RFC 3046). Appended here rather than through dhcproto, which encodes an
/// unknown option 82 twice and would re-encode a decoded one its own way.
fn append_relay_info(buf: &mut Vec<u8>, req: &Request) {
    let Some(info) = req.options.get(82) else {
        return;
    };
    debug_assert_eq!(buf.last(), Some(&255), "dhcproto ends options with END");
    buf.pop();
    // Split across instances if the relay itself sent it split (RFC 3396).
    for chunk in info.chunks(255) {
        buf.push(82);
        buf.push(chunk.len() as u8);
        buf.extend_from_slice(chunk);
    }
    buf.push(255);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::packet::{parse, tests::discover_with};

    fn reply_of(bytes: &[u8]) -> Message {
        use dhcproto::{Decodable, Decoder};
        Message::decode(&mut Decoder::new(bytes)).unwrap()
    }

    fn raw_option(bytes: &[u8], code: u8) -> Option<Vec<u8>> {
        let mut i = 240;
        while i + 1 < bytes.len() {
            match bytes[i] {
                0 => i += 1,
                255 => return None,
                c => {
                    let len = bytes[i + 1] as usize;
                    if c == code {
                        return Some(bytes[i + 2..i + 2 + len].to_vec());
                    }
                    i += 2 + len;
                }
            }
        }
        None
    }

    #[test]
    fn proxy_bios_reply_has_everything_a_rom_reads() {
        let mut opts = vec![97, 17, 0];
        opts.extend([7u8; 16]);
        let req = parse(&discover_with(&opts)).unwrap();
        let server = Ipv4Addr::new(10, 77, 0, 1);
        let mut spec = ReplySpec::new(MessageType::Offer, server);
        spec.boot = Some(Bootfile::Tftp("undionly.kpxe".into()));
        spec.vendor_class = Some("PXEClient");
        spec.pxe_discovery_control = true;
        let bytes = encode(&req, &spec);
        assert!(bytes.len() >= MIN_REPLY_LEN);
        let msg = reply_of(&bytes);
        assert_eq!(msg.opcode(), Opcode::BootReply);
        assert_eq!(msg.xid(), 0x1234_5678);
        assert_eq!(msg.siaddr(), server);
        assert_eq!(
            &bytes[108..122],
            b"undionly.kpxe\0",
            "file header field, NUL-terminated"
        );
        assert_eq!(raw_option(&bytes, 67).unwrap(), b"undionly.kpxe");
        assert_eq!(raw_option(&bytes, 66).unwrap(), b"10.77.0.1");
        assert_eq!(raw_option(&bytes, 60).unwrap(), b"PXEClient");
        assert_eq!(raw_option(&bytes, 43).unwrap(), vec![6, 1, 8, 255]);
        assert_eq!(raw_option(&bytes, 97).unwrap()[1..], [7u8; 16]);
        assert_eq!(raw_option(&bytes, 54).unwrap(), server.octets());
    }

    #[test]
    fn long_urls_go_in_option_67_only() {
        let req = parse(&discover_with(&[])).unwrap();
        let url = format!("http://10.0.0.1:8080/{}", "x".repeat(200));
        let mut spec = ReplySpec::new(MessageType::Offer, Ipv4Addr::new(10, 0, 0, 1));
        spec.boot = Some(Bootfile::Http(url.clone()));
        spec.vendor_class = Some("HTTPClient");
        let bytes = encode(&req, &spec);
        assert_eq!(raw_option(&bytes, 67).unwrap(), url.as_bytes());
        assert!(reply_of(&bytes)
            .fname()
            .is_none_or(|f| f.iter().all(|b| *b == 0)));
    }

    #[test]
    fn onie_gets_114_and_125_and_no_loader() {
        let req = parse(&discover_with(&[55, 3, 66, 114, 125])).unwrap();
        let url = "http://10.77.0.1:8080/onie/52-54-00-12-34-56/onie-installer";
        let mut spec = ReplySpec::new(MessageType::Offer, Ipv4Addr::new(10, 77, 0, 1));
        spec.boot = Some(Bootfile::OnieInstaller(url.into()));
        let bytes = encode(&req, &spec);
        assert_eq!(raw_option(&bytes, 114).unwrap(), url.as_bytes());
        assert_eq!(raw_option(&bytes, 125), onie::option_125(url));
        assert_eq!(raw_option(&bytes, 66).unwrap(), b"10.77.0.1");
        assert_eq!(raw_option(&bytes, 67), None, "no loader file");
        assert_eq!(raw_option(&bytes, 255), None);
        assert_eq!(*bytes.iter().rev().find(|b| **b != 0).unwrap(), 255);
    }

    #[test]
    fn ztp_script_url_in_239_only_when_requested() {
        let url = "http://10.77.0.1:8080/ztp/52-54-00-12-34-56/cumulus.sh";
        type Row<'a> = (&'a str, Vec<u8>, bool, Option<&'a [u8]>, Option<&'a [u8]>);
        #[rustfmt::skip]
        let table: [Row; 4] = [
            ("asks 239, 239 chosen",   vec![55, 3, 1, 3, 239], true,  Some(url.as_bytes()), None),
            ("239 allowed, not asked", vec![55, 2, 1, 3],      true,  None,                 Some(url.as_bytes())),
            ("opt 67 by vendor class", vec![55, 2, 1, 67],     false, None,                 Some(url.as_bytes())),
            ("asks 239, 67 chosen",    vec![55, 2, 67, 239],   false, None,                 Some(url.as_bytes())),
        ];
        for (name, prl, wants_239, want_239, want_67) in table {
            let req = parse(&discover_with(&prl)).unwrap();
            let mut spec = ReplySpec::new(MessageType::Ack, Ipv4Addr::new(10, 77, 0, 1));
            spec.boot = Some(Bootfile::Ztp(url.into()));
            spec.wants_ztp_option = wants_239;
            let bytes = encode(&req, &spec);
            assert_eq!(raw_option(&bytes, 239).as_deref(), want_239, "{name}");
            assert_eq!(raw_option(&bytes, 67).as_deref(), want_67, "{name}");
        }
    }

    #[test]
    fn relay_info_is_echoed_verbatim_and_nak_carries_no_boot_options() {
        let relay = vec![82, 6, 1, 4, b'e', b't', b'h', b'7'];
        let mut req_bytes = discover_with(&relay);
        req_bytes[24..28].copy_from_slice(&[10, 1, 0, 1]); // giaddr
        let req = parse(&req_bytes).unwrap();
        let mut spec = ReplySpec::new(MessageType::Nak, Ipv4Addr::new(10, 0, 0, 1));
        spec.boot = Some(Bootfile::Tftp("undionly.kpxe".into()));
        spec.message = Some("address not available".into());
        let bytes = encode(&req, &spec);
        assert_eq!(raw_option(&bytes, 82).unwrap(), relay[2..]);
        assert_eq!(raw_option(&bytes, 67), None);
        assert_eq!(reply_of(&bytes).giaddr(), Ipv4Addr::new(10, 1, 0, 1));
    }
}
