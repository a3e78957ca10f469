//! What to answer to one DHCP datagram: the decision chain, without sockets.
//!
//! `Dhcp::handle` takes the bytes and where they came from and returns the
//! reply and where it must go (or nothing). It parses, classifies, picks the
//! subnet, runs the RFC 2131 state machine against the in-memory lease table,
//! records the machine and the step in the ledger (never waiting on SQLite),
//! and encodes. Unknown or non-PXE clients are not errors: they get no answer
//! and a debug line.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use dhcproto::v4::MessageType;
use ipnet::Ipv4Net;
use serde_json::json;
use tracing::{debug, warn};

use crate::boot::loader::{self, LoaderSettings};
use crate::config::{DhcpMode, DhcpSettings, Subnet};
use crate::domain::{Arch, MacAddr, MachineKind};
use crate::ledger::{LeaseRecord, Ledger, MachineFacts, Record};
use crate::metrics::Metrics;

use super::classify::{bootfile_with, BootTargets, Bootfile, ClientFacts, ClientKind, ZtpFlavour};
use super::newcomers::Newcomers;
use super::packet::{parse, Request};
use super::reply::{encode, LeaseParams, ReplySpec};
use crate::clients::leases::{Entry, LeaseError, Millis, State};
use crate::clients::Clients;

/// Which port a datagram arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// UDP 67: DHCP proper (and the first proxyDHCP offer).
    Dhcp,
    /// UDP 4011: the PXE boot-server exchange after a proxy offer.
    Proxy,
}

/// One received datagram and the path it came in on.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    pub bytes: &'a [u8],
    pub src: SocketAddrV4,
    pub port: Port,
    /// This server's address on that path: the server identifier, and the
    /// source address of the reply.
    pub local: Ipv4Addr,
    /// The receiving interface's network, when known (selects the subnet for
    /// clients that are not relayed).
    pub interface_net: Option<Ipv4Net>,
}

/// A reply and where it goes.
#[derive(Debug)]
pub struct Outgoing {
    pub bytes: Vec<u8>,
    pub dest: SocketAddrV4,
    /// An ACK promises its lease: it may leave only once this resolves
    /// `true` (the lease is committed). `None`: send at once.
    pub durable: Option<crate::ledger::Durable>,
}

const CLIENT_PORT: u16 = 68;

/// Machines the DHCP service remembers (facts in memory, a row each) before
/// it stops admitting new ones in proxy mode, where no lease bounds them.
pub const MAX_REMEMBERED: usize = 1 << 20;

pub use crate::clients::SeenClient;

/// The DHCP service's state, shared by its sockets.
pub struct Dhcp {
    settings: DhcpSettings,
    targets: BootTargets,
    /// The pool, the known MACs and what each last said: DHCP writes
    /// them, other services read them through their own handle.
    clients: Clients,
    /// How fast MACs not in `known` are answered.
    newcomers: Newcomers,
    /// Where the operator's loader settings live (a machine's label and its
    /// group's variable `loader`); without it every architecture gets its
    /// default loader.
    loaders: Option<Arc<dyn loader::SettingsSource>>,
    /// With `dhcp.peer`: this server's side of the HA pair.
    pair: Option<Arc<super::pair::Pair>>,
    ledger: Ledger,
    metrics: Arc<Metrics>,
}

impl Dhcp {
    pub fn new(
        settings: DhcpSettings,
        targets: BootTargets,
        clients: Clients,
        ledger: Ledger,
        metrics: Arc<Metrics>,
    ) -> Self {
        let newcomers = Newcomers::new(
            settings.new_clients_per_minute,
            settings.new_clients_per_minute_total,
        );
        Self {
            newcomers,
            settings,
            targets,
            clients,
            loaders: None,
            pair: None,
            ledger,
            metrics,
        }
    }

    /// One side of an HA pair: answers its half of the clients (and the
    /// partner's while it is gone).
    pub fn with_pair(mut self, pair: Arc<super::pair::Pair>) -> Self {
        self.pair = Some(pair);
        self
    }

    /// Lets machine and group settings choose the loader (see
    /// [`crate::boot::loader`]).
    pub fn with_loader_settings(mut self, loaders: Arc<dyn loader::SettingsSource>) -> Self {
        self.loaders = Some(loaders);
        self
    }

    pub fn settings(&self) -> &DhcpSettings {
        &self.settings
    }

    /// The clients this service knows (shared with the services that ask).
    pub fn clients(&self) -> &Clients {
        &self.clients
    }

    fn knows(&self, mac: MacAddr) -> bool {
        self.clients.knows(mac)
    }

    /// An operator frees `ip`: forgotten in memory, deleted from SQLite
    /// through the ledger, and recorded as `dhcp.operator_release`.
    pub fn release_by_operator(&self, ip: Ipv4Addr) -> Option<Entry> {
        let entry = self.clients.pool().remove(ip)?;
        self.ledger.record(Record::Lease(LeaseRecord {
            ip: ip.into(),
            iaid: None,
            mac: entry.mac,
            state: None,
            expires_at_ms: 0,
            hostname: None,
        }));
        self.ledger.event(
            entry.mac,
            Some(ip.into()),
            "dhcp.operator_release",
            serde_json::json!({ "state": format!("{:?}", entry.state).to_lowercase() }),
            None,
        );
        Some(entry)
    }

    /// Forgets offers nobody took up. Called periodically.
    pub fn expire_offers(&self, now: Millis) -> usize {
        self.clients.pool().expire_offers(now)
    }

    /// Decides the reply to one datagram.
    pub fn handle(&self, inc: &Incoming<'_>, now: Millis) -> Option<Outgoing> {
        Metrics::inc(&self.metrics.dhcp_received);
        let req = match parse(inc.bytes) {
            Ok(req) => req,
            Err(e) => {
                Metrics::inc(&self.metrics.dhcp_malformed);
                self.metrics.dhcp_packets.malformed();
                debug!(src = %inc.src, error = %e, "dropping malformed DHCP datagram");
                return None;
            }
        };
        let facts = ClientFacts::from_request(&req);
        let kind = facts.kind();
        let span = tracing::debug_span!("dhcp", mac = %req.mac, xid = format_args!("{:#010x}", req.xid()), kind = kind.name());
        let _enter = span.enter();
        if self.pair.as_ref().is_some_and(|p| !p.answers(req.mac)) {
            Metrics::inc(&self.metrics.dhcp_partner_half);
            Metrics::inc(&self.metrics.dhcp_ignored);
            debug!("a client of the HA partner's half: left to it");
            return None;
        }
        if req.msg_type == MessageType::Discover && !self.admits(&req, inc, now) {
            Metrics::inc(&self.metrics.dhcp_new_clients_limited);
            Metrics::inc(&self.metrics.dhcp_ignored);
            debug!("never-seen client over dhcp.new_clients_per_minute: not answered");
            return None;
        }
        let out = match self.settings.mode {
            DhcpMode::Off => None,
            DhcpMode::Proxy => self.proxy(&req, &facts, inc),
            DhcpMode::Full => self.full(&req, &facts, inc, now),
        };
        if kind.is_boot_client() {
            let acked = out
                .as_ref()
                .and_then(|o| crate::metrics::dhcp_message_type(&o.bytes))
                == Some(u8::from(MessageType::Ack));
            self.remember(&req, &facts, kind, inc, acked, now);
        }
        match &out {
            Some(_) => Metrics::inc(&self.metrics.dhcp_replies),
            None => Metrics::inc(&self.metrics.dhcp_ignored),
        }
        self.metrics.dhcp_packets.answered(
            u8::from(req.msg_type),
            out.as_ref()
                .and_then(|o| crate::metrics::dhcp_message_type(&o.bytes)),
        );
        out
    }

    /// A known MAC is always answered; a never-seen one only while its
    /// relay (or segment) and the server are under their new-client rates.
    fn admits(&self, req: &Request, inc: &Incoming<'_>, now: Millis) -> bool {
        if self.settings.mode == DhcpMode::Off || self.knows(req.mac) {
            return true;
        }
        let giaddr = req.giaddr();
        let source = if giaddr.is_unspecified() {
            inc.local
        } else {
            giaddr
        };
        self.newcomers.admit(source, now)
    }

    /// Option 82 is believed only from a configured relay, sent from its
    /// own `giaddr`: anyone else's circuit-id and remote-id are a client
    /// claiming a switch port, and would let a new MAC take over the
    /// identity of the machine in that port.
    fn trusted_relay(&self, req: &Request, inc: &Incoming<'_>) -> bool {
        let giaddr = req.giaddr();
        !giaddr.is_unspecified()
            && *inc.src.ip() == giaddr
            && self.settings.trusted_relays.contains(&giaddr)
    }

    fn remember(
        &self,
        req: &Request,
        facts: &ClientFacts,
        kind: ClientKind,
        inc: &Incoming<'_>,
        acked: bool,
        now: Millis,
    ) {
        // A MAC never seen before becomes a machine (a row, a place in
        // memory) only when this server binds it an address (full mode), or
        // in proxy mode while fewer than MAX_REMEMBERED are known: DISCOVERs
        // from made-up MACs make nothing permanent.
        let known = self.knows(req.mac);
        if !known {
            let admit = match self.settings.mode {
                DhcpMode::Full => acked,
                _ => self.clients.known_count() < MAX_REMEMBERED,
            };
            if !admit {
                return;
            }
            self.clients.admit(req.mac);
            debug!("first boot request from this machine");
        }
        let mut relay = req.relay_info();
        if !self.trusted_relay(req, inc)
            && (relay.circuit_id.is_some() || relay.remote_id.is_some())
        {
            debug!(src = %inc.src, "option 82 from a relay not in dhcp.trusted_relays: ignored");
            relay.circuit_id = None;
            relay.remote_id = None;
        }
        let relay = relay;
        let giaddr = req.giaddr();
        let claim = |v: Option<String>| v.as_deref().and_then(crate::boot::claims::text);
        let seen = SeenClient {
            arch: facts.arch,
            circuit_id: relay.circuit_id.clone(),
            remote_id: relay.remote_id.clone(),
            mac_from: None,
        };
        self.clients.saw(req.mac, seen);
        self.ledger.record(Record::MachineSeen(MachineFacts {
            mac: Some(req.mac),
            uuid: req.uuid(),
            arch: facts.arch,
            firmware: Some(kind.name().to_string()),
            vendor_class: claim(facts.vendor_class.clone()),
            user_class: claim(facts.user_classes.first().cloned()),
            hostname: claim(req.hostname()),
            circuit_id: claim(relay.circuit_id),
            remote_id: claim(relay.remote_id),
            relay: (!giaddr.is_unspecified()).then_some(giaddr.into()),
            serial: None,
            ip: None,
            kind: kind.is_switch().then_some(MachineKind::Switch),
            inherited: None,
            computed_group: None,
            at_ms: now,
        }));
    }

    // -- proxy mode --------------------------------------------------------

    fn proxy(&self, req: &Request, facts: &ClientFacts, inc: &Incoming<'_>) -> Option<Outgoing> {
        if facts.kind().is_switch() {
            // ONIE and network OSes need an address with their URL.
            return self.ignore("switches are answered in full mode only");
        }
        let boot = self.boot_for(facts)?;
        let msg_type = match (inc.port, req.msg_type) {
            (Port::Dhcp, MessageType::Discover) => MessageType::Offer,
            (Port::Proxy, MessageType::Request | MessageType::Inform) => MessageType::Ack,
            // REQUESTs on 67 belong to the server that owns addresses.
            _ => return self.ignore("not for a proxy"),
        };
        let mut spec = ReplySpec::new(msg_type, inc.local);
        boot_reply(
            &mut spec,
            facts,
            Some(boot.clone()),
            self.targets.server_ipv4(),
            DhcpMode::Proxy,
        );
        let step = if msg_type == MessageType::Offer {
            "dhcp.proxy_offer"
        } else {
            "dhcp.proxy_ack"
        };
        self.event(req, step, None, Some(&boot));
        Some(Outgoing {
            bytes: encode(req, &spec),
            dest: destination(req, inc, msg_type),
            durable: None,
        })
    }

    // -- full mode ---------------------------------------------------------

    fn full(
        &self,
        req: &Request,
        facts: &ClientFacts,
        inc: &Incoming<'_>,
        now: Millis,
    ) -> Option<Outgoing> {
        let kind = facts.kind();
        let known = self.knows(req.mac);
        if !kind.is_boot_client() && !known && !self.settings.serve_all {
            return self.ignore("unknown client without PXE options");
        }
        let Some(subnet) = self.select_subnet(req, inc) else {
            return self.ignore("no subnet configured for this path");
        };
        let boot = self.boot_for(facts);
        match req.msg_type {
            MessageType::Discover => self.discover(req, facts, inc, subnet, boot, now),
            MessageType::Request => self.request(req, facts, inc, subnet, boot, now),
            MessageType::Decline => self.decline(req, now),
            MessageType::Release => self.release(req),
            MessageType::Inform => self.inform(req, facts, inc, subnet, boot),
            _ => self.ignore("not a client message"),
        }
    }

    fn discover(
        &self,
        req: &Request,
        facts: &ClientFacts,
        inc: &Incoming<'_>,
        subnet: &Subnet,
        boot: Option<Bootfile>,
        now: Millis,
    ) -> Option<Outgoing> {
        let offered = {
            let mut leases = self.clients.pool();
            leases
                .offer(
                    subnet,
                    req.mac,
                    req.requested_ip(),
                    now,
                    self.settings.offer_timeout,
                )
                .map(|ip| {
                    (
                        ip,
                        leases.reservation(req.mac).and_then(|r| r.hostname.clone()),
                    )
                })
        };
        let (ip, hostname) = match offered {
            Ok(found) => found,
            Err(_) => {
                Metrics::inc(&self.metrics.dhcp_pool_exhausted);
                warn!(subnet = %subnet.network, "address pool exhausted; DISCOVER not answered");
                return None;
            }
        };
        let mut spec = self.lease_spec(
            MessageType::Offer,
            inc,
            subnet,
            hostname,
            facts,
            boot.clone(),
        );
        spec.yiaddr = ip;
        self.event(req, "dhcp.offer", Some(ip), boot.as_ref());
        Some(Outgoing {
            bytes: encode(req, &spec),
            dest: destination(req, inc, MessageType::Offer),
            durable: None,
        })
    }

    fn request(
        &self,
        req: &Request,
        facts: &ClientFacts,
        inc: &Incoming<'_>,
        subnet: &Subnet,
        boot: Option<Bootfile>,
        now: Millis,
    ) -> Option<Outgoing> {
        if let Some(server_id) = req.server_id() {
            if server_id != inc.local {
                // SELECTING, and the client chose another server: let go.
                self.clients.pool().expire_offers_of(req.mac);
                return self.ignore("client selected another server");
            }
        }
        // SELECTING / INIT-REBOOT name the address in opt 50; RENEWING and
        // REBINDING put it in ciaddr.
        let Some(ip) = req
            .requested_ip()
            .or_else(|| Some(req.ciaddr()).filter(|a| !a.is_unspecified()))
        else {
            return self.nak(req, inc, "no address requested");
        };
        let bound = self
            .clients
            .pool()
            .bind(subnet, req.mac, ip, now, req.hostname());
        match bound {
            Ok(entry) => {
                // The ACK is a promise: it leaves once its lease is
                // committed. No room in the writer's queue: no promise, and
                // the client asks again.
                let Some(durable) = self.ledger.record_durable(lease_record(&entry)?) else {
                    return self.ignore("ledger queue full: the lease cannot be made durable now");
                };
                let mut spec = self.lease_spec(
                    MessageType::Ack,
                    inc,
                    subnet,
                    entry.hostname.clone(),
                    facts,
                    boot.clone(),
                );
                spec.yiaddr = ip;
                self.event(req, "dhcp.ack", Some(ip), boot.as_ref());
                Some(Outgoing {
                    bytes: encode(req, &spec),
                    dest: destination(req, inc, MessageType::Ack),
                    durable: Some(durable),
                })
            }
            Err(LeaseError::WrongSubnet) => self.nak(req, inc, "address not on this network"),
            Err(_) => self.nak(req, inc, "address not available"),
        }
    }

    fn nak(&self, req: &Request, inc: &Incoming<'_>, why: &str) -> Option<Outgoing> {
        Metrics::inc(&self.metrics.dhcp_naks);
        let mut spec = ReplySpec::new(MessageType::Nak, inc.local);
        spec.message = Some(why.to_string());
        self.ledger.event(
            Some(req.mac),
            None,
            "dhcp.nak",
            json!({ "xid": req.xid(), "reason": why }),
            None,
        );
        debug!(reason = why, "NAK");
        Some(Outgoing {
            bytes: encode(req, &spec),
            dest: destination(req, inc, MessageType::Nak),
            durable: None,
        })
    }

    fn decline(&self, req: &Request, now: Millis) -> Option<Outgoing> {
        Metrics::inc(&self.metrics.dhcp_declines);
        let ip = req.requested_ip()?;
        let entry = self.clients.pool().decline(req.mac, ip, now);
        if let Some(entry) = entry {
            warn!(%ip, "client declined address (in use on the wire?); quarantined");
            self.persist(&entry);
            self.ledger.event(
                Some(req.mac),
                Some(ip.into()),
                "dhcp.decline",
                json!({ "xid": req.xid() }),
                None,
            );
        }
        None
    }

    fn release(&self, req: &Request) -> Option<Outgoing> {
        let ip = req.ciaddr();
        if self.clients.pool().release(req.mac, ip) {
            self.ledger.record(Record::Lease(LeaseRecord {
                ip: ip.into(),
                iaid: None,
                mac: Some(req.mac),
                state: None,
                expires_at_ms: 0,
                hostname: None,
            }));
            self.ledger.event(
                Some(req.mac),
                Some(ip.into()),
                "dhcp.release",
                json!({ "xid": req.xid() }),
                None,
            );
        }
        None
    }

    fn inform(
        &self,
        req: &Request,
        facts: &ClientFacts,
        inc: &Incoming<'_>,
        subnet: &Subnet,
        boot: Option<Bootfile>,
    ) -> Option<Outgoing> {
        // INFORM: configuration only, so no lease time (RFC 2131 §4.3.5).
        let mut spec = self.lease_spec(MessageType::Ack, inc, subnet, None, facts, boot);
        if let Some(lease) = spec.lease.as_mut() {
            lease.lease_time = std::time::Duration::ZERO;
        }
        let bytes = encode(req, &spec);
        self.event(req, "dhcp.inform", Some(req.ciaddr()), None);
        Some(Outgoing {
            bytes,
            dest: destination(req, inc, MessageType::Ack),
            durable: None,
        })
    }

    // -- helpers -----------------------------------------------------------

    fn boot_for(&self, facts: &ClientFacts) -> Option<Bootfile> {
        let settings = match (&self.loaders, facts.mac) {
            (Some(loaders), Some(mac)) => loaders.loader_settings(mac),
            _ => LoaderSettings::default(),
        };
        match bootfile_with(facts, &self.targets, settings) {
            Ok(b) => Some(b),
            Err(why) => {
                if facts.kind().is_boot_client() {
                    debug!(?why, arch = ?facts.arch, "boot client gets no bootfile");
                }
                None
            }
        }
    }

    fn lease_spec(
        &self,
        msg_type: MessageType,
        inc: &Incoming<'_>,
        subnet: &Subnet,
        hostname: Option<String>,
        facts: &ClientFacts,
        boot: Option<Bootfile>,
    ) -> ReplySpec {
        let mut spec = ReplySpec::new(msg_type, inc.local);
        spec.next_server = self.targets.server_ipv4();
        spec.lease = Some(LeaseParams {
            lease_time: subnet.lease_time,
            subnet_mask: subnet.network.netmask(),
            broadcast: subnet.network.broadcast(),
            router: subnet.router,
            dns: subnet.dns.clone(),
            domain: subnet.domain.clone(),
            hostname,
        });
        boot_reply(
            &mut spec,
            facts,
            boot,
            self.targets.server_ipv4(),
            DhcpMode::Full,
        );
        spec
    }

    /// Subnet by relay link selection, then giaddr, then the receiving
    /// interface's network, then this server's own address on the path.
    fn select_subnet(&self, req: &Request, inc: &Incoming<'_>) -> Option<&Subnet> {
        let subnets = &self.settings.subnets;
        let find = |ip: Ipv4Addr| subnets.iter().find(|s| s.network.contains(&ip));
        let giaddr = req.giaddr();
        if !giaddr.is_unspecified() {
            return match req.relay_info().link_selection {
                Some(link) => find(link),
                None => find(giaddr),
            };
        }
        if let Some(net) = inc.interface_net {
            return find(net.addr());
        }
        find(inc.local)
    }

    fn persist(&self, entry: &Entry) {
        if let Some(record) = lease_record(entry) {
            self.ledger.record(record);
        }
    }

    fn event(
        &self,
        req: &Request,
        step: &'static str,
        ip: Option<Ipv4Addr>,
        boot: Option<&Bootfile>,
    ) {
        let giaddr = req.giaddr();
        let detail = json!({
            "xid": req.xid(),
            "bootfile": boot,
            "relay": (!giaddr.is_unspecified()).then(|| crate::domain::ipv4_text(giaddr)),
        });
        self.ledger
            .event(Some(req.mac), ip.map(Into::into), step, detail, None);
    }

    fn ignore(&self, why: &'static str) -> Option<Outgoing> {
        debug!(reason = why, "not answering");
        None
    }
}

/// The boot part of a reply (next server, bootfile, opt 60/43/239 as the
/// client kind needs) in `mode`: shared by proxy and full mode, and by
/// `explain`, so what it shows is what goes on the wire.
/// The row a lease change writes (`None` for an offer: a hold in memory).
fn lease_record(entry: &Entry) -> Option<Record> {
    Some(Record::Lease(LeaseRecord {
        ip: entry.ip.into(),
        iaid: None,
        mac: entry.mac,
        state: match entry.state {
            State::Offered => return None,
            held => Some(held),
        },
        expires_at_ms: entry.expires_at,
        hostname: entry.hostname.clone(),
    }))
}

pub fn boot_reply(
    spec: &mut ReplySpec,
    facts: &ClientFacts,
    boot: Option<Bootfile>,
    next_server: Ipv4Addr,
    mode: DhcpMode,
) {
    spec.next_server = next_server;
    if mode == DhcpMode::Proxy {
        spec.vendor_class = Some(if facts.kind() == ClientKind::HttpBoot {
            "HTTPClient"
        } else {
            "PXEClient"
        });
        spec.pxe_discovery_control = is_bios_pxe(facts);
    } else {
        if facts.kind() == ClientKind::HttpBoot && boot.is_some() {
            spec.vendor_class = Some("HTTPClient");
        }
        spec.wants_ztp_option =
            facts.kind() == ClientKind::Ztp && facts.ztp_flavour() == ZtpFlavour::Cumulus;
    }
    spec.boot = boot;
}

fn is_bios_pxe(facts: &ClientFacts) -> bool {
    facts.kind() == ClientKind::Pxe && matches!(facts.arch, None | Some(Arch::BiosX86))
}

/// RFC 2131 §4.1: relayed replies go to the relay; replies on 4011 and to
/// clients that have an address are unicast; the rest are broadcast.
fn destination(req: &Request, inc: &Incoming<'_>, msg_type: MessageType) -> SocketAddrV4 {
    let giaddr = req.giaddr();
    let ciaddr = req.ciaddr();
    if inc.port == Port::Proxy {
        return inc.src;
    }
    if !giaddr.is_unspecified() {
        // Relays send from 67; replying to the source port also serves
        // RFC 8357 relays on other ports.
        return SocketAddrV4::new(giaddr, inc.src.port());
    }
    if msg_type != MessageType::Nak && !ciaddr.is_unspecified() {
        let port = if *inc.src.ip() == ciaddr {
            inc.src.port()
        } else {
            CLIENT_PORT
        };
        return SocketAddrV4::new(ciaddr, port);
    }
    SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
}
