//! What to answer to one DHCPv6 datagram: the decision chain, without
//! sockets (RFC 8415 §18.3 for the server's side of each exchange).
//!
//! `Dhcp6::handle` parses, learns the client's MAC ([`super::identity`]),
//! classifies it ([`super::classify`]), runs the exchange against the
//! shared address table (`clients::leases6`), records the machine and the
//! step in the ledger, and encodes (re-wrapped for the relays it came
//! through). A Reply that binds addresses carries the promises of their
//! commits: the socket sends it only once they are durable.
//!
//! Invariants: a client whose MAC cannot be learnt gets nothing (a DUID
//! alone is never an identity: iPXE's are all zeros under QEMU); messages
//! for another server (a Server Identifier not ours) are dropped; PXEv6
//! clients never see option 16 (OVMF would then look for a boot server on
//! port 4011 and fail), HTTPv6 clients always get `HTTPClient` back.

use std::net::{IpAddr, Ipv6Addr, SocketAddrV6};
use std::sync::Arc;
use std::time::Duration;

use dhcproto::v6::{
    DhcpOption, IAAddr, Message, MessageType, OptionCode, Status, StatusCode, UnknownOption,
    VendorClass, IANA,
};
use serde_json::json;
use tracing::debug;

use crate::boot::loader;
use crate::clients::leases6::{Lease6Error, PoolIndex};
use crate::clients::{Clients, SeenClient};
use crate::config::Dhcp6Settings;
use crate::dhcp::classify::{bootfile_with, BootTargets, Bootfile, ClientKind};
use crate::dhcp::newcomers::Newcomers;
use crate::domain::lease::{Entry6, Millis};
use crate::domain::MacAddr;
use crate::ledger::{Durable, LeaseRecord, Ledger, MachineFacts, Record};
use crate::metrics::Metrics;

use super::classify::Facts6;
use super::identity::{identify, Identity};
use super::packet::{encode, parse, Request6};

/// How long an advertised address is held for the client it was offered to.
const OFFER_HOLD: Duration = Duration::from_secs(60);
/// Option 59: the boot file URL (RFC 5970).
const OPT_BOOTFILE_URL: u16 = 59;
/// IANA's enterprise number for the PXE/HTTP vendor classes (Intel).
const ENTERPRISE_PXE: u32 = 343;

/// One received datagram and where it came from.
#[derive(Debug, Clone, Copy)]
pub struct Incoming6<'a> {
    pub bytes: &'a [u8],
    /// The sender: the client's link-local address (scope id set), or the
    /// relay's address.
    pub src: SocketAddrV6,
    /// The Ethernet source, when the socket learnt it.
    pub ethernet: Option<MacAddr>,
}

/// A reply and where it goes.
#[derive(Debug)]
pub struct Outgoing6 {
    pub bytes: Vec<u8>,
    pub dest: SocketAddrV6,
    /// Every lease this reply promises: it may leave only once each
    /// resolves `true`.
    pub durable: Vec<Durable>,
}

/// The DHCPv6 service's state, shared by its sockets.
pub struct Dhcp6 {
    settings: Dhcp6Settings,
    /// Loader files and the HTTP port, told from `settings.server_ip`.
    targets: BootTargets,
    clients: Clients,
    newcomers: Newcomers,
    loaders: Option<Arc<dyn loader::SettingsSource>>,
    ledger: Ledger,
    metrics: Arc<Metrics>,
    /// This server's DUID (option 2).
    duid: Vec<u8>,
}

/// What one exchange decided, before it is encoded.
struct Answer {
    msg: Message,
    durable: Vec<Durable>,
    step: &'static str,
    addresses: Vec<Ipv6Addr>,
}

impl Dhcp6 {
    pub fn new(
        settings: Dhcp6Settings,
        targets: &BootTargets,
        clients: Clients,
        newcomers: Newcomers,
        ledger: Ledger,
        metrics: Arc<Metrics>,
        duid: Vec<u8>,
    ) -> Self {
        Self {
            targets: targets.at(IpAddr::V6(settings.server_ip)),
            settings,
            clients,
            newcomers,
            loaders: None,
            ledger,
            metrics,
            duid,
        }
    }

    /// Lets machine and group settings choose the loader.
    pub fn with_loader_settings(mut self, loaders: Arc<dyn loader::SettingsSource>) -> Self {
        self.loaders = Some(loaders);
        self
    }

    pub fn settings(&self) -> &Dhcp6Settings {
        &self.settings
    }

    /// Forgets advertised addresses nobody requested. Called periodically.
    pub fn expire(&self, now: Millis) -> usize {
        self.clients.pool6().expire(now)
    }

    /// Decides the reply to one datagram.
    pub fn handle(&self, inc: &Incoming6<'_>, now: Millis) -> Option<Outgoing6> {
        Metrics::inc(&self.metrics.dhcp6_received);
        let mut req = match parse(inc.bytes) {
            Ok(req) => req,
            Err(e) => {
                Metrics::inc(&self.metrics.dhcp6_malformed);
                debug!(src = %inc.src, error = %e, "dropping malformed DHCPv6 datagram");
                return None;
            }
        };
        if !req.hops.is_empty() && !self.settings.trusted_relays.contains(inc.src.ip()) {
            // Option 79 from a relay not in dhcp6.trusted_relays (or a host
            // posing as one) is a claim to be another machine: ignored.
            for hop in &mut req.hops {
                if hop.client_link_layer.take().is_some() {
                    debug!(src = %inc.src, "option 79 from a relay not in dhcp6.trusted_relays: ignored");
                }
            }
        }
        let Some(who) = identify(&req, *inc.src.ip(), inc.ethernet) else {
            Metrics::inc(&self.metrics.dhcp6_no_mac);
            debug!(src = %inc.src, "DHCPv6 client with no MAC to learn (a DUID alone is not one): not answered");
            return None;
        };
        let facts = Facts6::from_request(&req);
        let kind = facts.kind();
        let span = tracing::debug_span!("dhcp6", mac = %who.mac, kind = kind.name(), msg = ?req.msg_type());
        let _enter = span.enter();
        let answer = self.answer(&req, &who, &facts, now);
        let Some(answer) = answer else {
            Metrics::inc(&self.metrics.dhcp6_ignored);
            return None;
        };
        self.remember(&req, &who, &facts, !answer.addresses.is_empty(), now);
        self.event(&who, &facts, &answer);
        Metrics::inc(&self.metrics.dhcp6_replies);
        // Back to the port it came from: 546 for clients and 547 for relays
        // as RFC 8415 has them, and whatever a relay using RFC 8357's
        // source port (or a test) sent from.
        let dest = inc.src;
        Some(Outgoing6 {
            bytes: encode(&req, &answer.msg),
            dest,
            durable: answer.durable,
        })
    }

    fn answer(
        &self,
        req: &Request6,
        who: &Identity,
        facts: &Facts6,
        now: Millis,
    ) -> Option<Answer> {
        let known = self.clients.knows(who.mac);
        if !facts.kind().is_boot_client() && !known && !self.settings.serve_all {
            debug!("not network-booting and not known: not answered");
            return None;
        }
        let ours = req.server_id().map(|id| id == self.duid.as_slice());
        use MessageType::*;
        match (req.msg_type(), ours) {
            // Another server's exchange.
            (_, Some(false)) => None,
            (Solicit, None) => {
                // New clients are counted per link, as over IPv4 per relay
                // or segment: a relayed link by its link-address, the boot
                // link as one (a source address is the client's own choice,
                // so counting by it would not bound anything).
                let source = IpAddr::V6(
                    req.innermost_hop()
                        .map_or(self.settings.server_ip, |h| h.link_addr),
                );
                if !known && !self.newcomers.admit(source, now) {
                    debug!("never-seen client over the new-client rate: not answered");
                    return None;
                }
                Some(self.solicit(req, who, facts, now))
            }
            (Request | Renew, Some(true)) | (Rebind, None) => {
                Some(self.bind(req, who, facts, now, "dhcp6.reply"))
            }
            (Release, Some(true)) => Some(self.release(req, who)),
            (Decline, Some(true)) => Some(self.decline(req, who, now)),
            (Confirm, None) => Some(self.confirm(req)),
            (InformationRequest, _) => {
                let mut msg = self.reply_to(req, MessageType::Reply);
                self.boot_options(&mut msg, who, facts);
                Some(answer(msg, "dhcp6.information"))
            }
            _ => {
                debug!("not a message this server answers here");
                None
            }
        }
    }

    /// The pool of the client's link: the relay's link-address picks it
    /// for relayed clients, the boot link's for the rest.
    fn pool_for(&self, req: &Request6) -> Option<PoolIndex> {
        match req.innermost_hop() {
            Some(hop) => {
                let pool = self.clients.pool6().pool_on(hop.link_addr);
                if pool.is_none() {
                    debug!(link = %hop.link_addr, "relayed from a link with no [[dhcp6.subnet]]");
                }
                pool
            }
            None => self.settings.link_pool,
        }
    }

    /// Solicit: addresses held for the client (Advertise), or bound at once
    /// when it asked for Rapid Commit.
    fn solicit(&self, req: &Request6, who: &Identity, facts: &Facts6, now: Millis) -> Answer {
        if req.rapid_commit() {
            let mut a = self.bind(req, who, facts, now, "dhcp6.rapid_reply");
            a.msg.opts_mut().insert(DhcpOption::RapidCommit);
            return a;
        }
        let mut msg = self.reply_to(req, MessageType::Advertise);
        let mut addresses = Vec::new();
        let pool = self.pool_for(req);
        for ia in req.ia_nas() {
            let offered = self
                .clients
                .pool6()
                .offer(who.mac, ia.iaid, pool, now, OFFER_HOLD);
            match offered {
                Ok(ip) => {
                    addresses.push(ip);
                    msg.opts_mut().insert(self.ia(ia.iaid, ip, pool));
                }
                Err(e) => msg.opts_mut().insert(self.ia_status(ia.iaid, &e)),
            }
        }
        self.boot_options(&mut msg, who, facts);
        Answer {
            msg,
            durable: Vec::new(),
            step: "dhcp6.advertise",
            addresses,
        }
    }

    /// Request, Renew, Rebind (and Solicit with Rapid Commit): binds each
    /// IA_NA to the address it names (or a new one) and promises it.
    fn bind(
        &self,
        req: &Request6,
        who: &Identity,
        facts: &Facts6,
        now: Millis,
        step: &'static str,
    ) -> Answer {
        let mut msg = self.reply_to(req, MessageType::Reply);
        let mut durable = Vec::new();
        let mut addresses = Vec::new();
        let pool = self.pool_for(req);
        for ia in req.ia_nas() {
            let asked = ia.addresses.first().copied();
            let bound = self
                .clients
                .pool6()
                .bind(who.mac, ia.iaid, asked, pool, now);
            match bound {
                Ok(entry) => {
                    match self.ledger.record_durable(lease_record(&entry)) {
                        Some(d) => durable.push(d),
                        None => {
                            // No room to promise it: say so rather than
                            // hand out an address that may not survive.
                            msg.opts_mut()
                                .insert(self.ia_status(ia.iaid, &Lease6Error::Exhausted));
                            continue;
                        }
                    }
                    addresses.push(entry.ip);
                    msg.opts_mut().insert(self.ia(ia.iaid, entry.ip, pool));
                }
                Err(e) => {
                    // Renew/Rebind of an address that is not the client's:
                    // RFC 8415 §18.3.4/§18.3.5 give it lifetime 0.
                    let mut ia_opt = self.ia_status(ia.iaid, &e);
                    if let (Some(ip), DhcpOption::IANA(iana)) = (asked, &mut ia_opt) {
                        iana.opts.insert(DhcpOption::IAAddr(IAAddr {
                            addr: ip,
                            preferred_life: 0,
                            valid_life: 0,
                            opts: Default::default(),
                        }));
                    }
                    msg.opts_mut().insert(ia_opt);
                }
            }
        }
        self.boot_options(&mut msg, who, facts);
        Answer {
            msg,
            durable,
            step,
            addresses,
        }
    }

    fn release(&self, req: &Request6, who: &Identity) -> Answer {
        let mut released = Vec::new();
        for ia in req.ia_nas() {
            for ip in ia.addresses {
                if self.clients.pool6().release(who.mac, ip) {
                    self.ledger.record(Record::Lease(LeaseRecord {
                        ip: ip.into(),
                        iaid: Some(ia.iaid),
                        mac: Some(who.mac),
                        state: None,
                        expires_at_ms: 0,
                        hostname: None,
                    }));
                    released.push(ip);
                }
            }
        }
        let mut msg = self.reply_to(req, MessageType::Reply);
        msg.opts_mut().insert(status(Status::Success, "released"));
        let mut a = answer(msg, "dhcp6.release");
        a.addresses = released;
        a
    }

    fn decline(&self, req: &Request6, who: &Identity, now: Millis) -> Answer {
        let mut declined = Vec::new();
        for ia in req.ia_nas() {
            for ip in ia.addresses {
                if let Some(q) = self.clients.pool6().decline(who.mac, ip, now) {
                    self.ledger.record(lease_record(&q));
                    declined.push(ip);
                }
            }
        }
        let mut msg = self.reply_to(req, MessageType::Reply);
        msg.opts_mut().insert(status(Status::Success, "declined"));
        let mut a = answer(msg, "dhcp6.decline");
        a.addresses = declined;
        a
    }

    /// Confirm: are the client's addresses still on this link?
    fn confirm(&self, req: &Request6) -> Answer {
        let all: Vec<Ipv6Addr> = req
            .ia_nas()
            .into_iter()
            .flat_map(|ia| ia.addresses)
            .collect();
        // On link: inside the prefix of the link the client is on.
        let link = self.pool_for(req);
        let on_link = {
            let table = self.clients.pool6();
            let prefix = link.and_then(|i| table.pools().get(i)).map(|p| p.prefix);
            all.iter().all(|ip| prefix.is_some_and(|p| p.contains(ip)))
        };
        let mut msg = self.reply_to(req, MessageType::Reply);
        msg.opts_mut().insert(if on_link {
            status(Status::Success, "on link")
        } else {
            status(Status::NotOnLink, "not on this link")
        });
        answer(msg, "dhcp6.confirm")
    }

    /// A reply of `kind` with the transaction id, our DUID and the client's.
    fn reply_to(&self, req: &Request6, kind: MessageType) -> Message {
        let mut msg = Message::new_with_id(kind, req.xid());
        let opts = msg.opts_mut();
        opts.insert(DhcpOption::ServerId(self.duid.clone()));
        if let Some(id) = req.client_id() {
            opts.insert(DhcpOption::ClientId(id.to_vec()));
        }
        // Without it OVMF waits out its whole first retransmission (5 s)
        // for a better server (RFC 8415 §18.2.1).
        opts.insert(DhcpOption::Preference(255));
        msg
    }

    fn ia(&self, iaid: u32, addr: Ipv6Addr, pool: Option<PoolIndex>) -> DhcpOption {
        let life = self.clients.pool6().lease_time(pool).as_secs();
        let life = life.min(u64::from(u32::MAX)) as u32;
        let mut iana = IANA {
            id: iaid,
            t1: life / 2,
            t2: life / 5 * 4,
            opts: Default::default(),
        };
        iana.opts.insert(DhcpOption::IAAddr(IAAddr {
            addr,
            preferred_life: life,
            valid_life: life,
            opts: Default::default(),
        }));
        DhcpOption::IANA(iana)
    }

    fn ia_status(&self, iaid: u32, e: &Lease6Error) -> DhcpOption {
        let code = match e {
            Lease6Error::Exhausted => {
                Metrics::inc(&self.metrics.dhcp6_no_addrs);
                Status::NoAddrsAvail
            }
            Lease6Error::NotYours => Status::NoBinding,
            Lease6Error::NotOnLink => Status::NotOnLink,
        };
        let mut iana = IANA {
            id: iaid,
            t1: 0,
            t2: 0,
            opts: Default::default(),
        };
        iana.opts.insert(status(code, &e.to_string()));
        DhcpOption::IANA(iana)
    }

    /// The boot file URL (option 59) for boot clients, `HTTPClient` for
    /// HTTP boot, DNS servers when configured.
    fn boot_options(&self, msg: &mut Message, who: &Identity, facts: &Facts6) {
        if !self.settings.dns.is_empty() {
            msg.opts_mut()
                .insert(DhcpOption::DomainNameServers(self.settings.dns.clone()));
        }
        let kind = facts.kind();
        if !kind.is_boot_client() {
            return;
        }
        if let Some(text) = super::classify::echoes_vendor_class(kind) {
            msg.opts_mut().insert(DhcpOption::VendorClass(VendorClass {
                num: ENTERPRISE_PXE,
                data: vec![text.as_bytes().to_vec()],
            }));
        }
        if kind == ClientKind::Pxe && !self.settings.pxe_bootfile {
            debug!("dhcp6.pxe_bootfile = false: PXEv6 gets an address and no boot file");
            return;
        }
        if let Some(url) = self.boot_url(who, facts) {
            msg.opts_mut()
                .insert(DhcpOption::Unknown(UnknownOption::new(
                    OptionCode::from(OPT_BOOTFILE_URL),
                    url.into_bytes(),
                )));
        }
    }

    /// The loader (or iPXE's script) as a URL over this server's IPv6
    /// address: `tftp://[addr]/file` or `http://[addr]:port/…`.
    fn boot_url(&self, who: &Identity, facts: &Facts6) -> Option<String> {
        let settings = self
            .loaders
            .as_ref()
            .map(|l| l.loader_settings(who.mac))
            .unwrap_or_default();
        match bootfile_with(&facts.to_v4_facts(Some(who.mac)), &self.targets, settings) {
            Ok(Bootfile::Tftp(name)) => Some(format!(
                "tftp://[{}]/{}",
                self.settings.server_ip,
                name.trim_start_matches('/')
            )),
            Ok(Bootfile::Http(url)) => Some(url),
            Ok(Bootfile::OnieInstaller(_) | Bootfile::Ztp(_)) => None,
            Err(why) => {
                debug!(?why, "no boot file for this client");
                None
            }
        }
    }

    /// Records the machine, like DHCPv4 does: a never-seen MAC becomes a
    /// machine only once this server binds it an address.
    fn remember(&self, req: &Request6, who: &Identity, facts: &Facts6, bound: bool, now: Millis) {
        let kind = facts.kind();
        if !kind.is_boot_client() {
            return;
        }
        if !self.clients.knows(who.mac) {
            let binds = matches!(
                req.msg_type(),
                MessageType::Request | MessageType::Renew | MessageType::Rebind
            ) || req.rapid_commit();
            if !(bound && binds) {
                return;
            }
            self.clients.admit(who.mac);
        }
        self.clients.saw(
            who.mac,
            SeenClient {
                arch: facts.arch,
                circuit_id: None,
                remote_id: None,
                mac_from: Some(who.source.name()),
            },
        );
        let claim = |v: Option<String>| v.as_deref().and_then(crate::boot::claims::text);
        self.ledger.record(Record::MachineSeen(MachineFacts {
            mac: Some(who.mac),
            arch: facts.arch,
            firmware: Some(kind.name().to_string()),
            vendor_class: claim(facts.vendor_class.clone()),
            user_class: claim(facts.user_classes.first().cloned()),
            relay: req.hops.first().map(|h| IpAddr::V6(h.link_addr)),
            at_ms: now,
            ..MachineFacts::default()
        }));
    }

    fn event(&self, who: &Identity, facts: &Facts6, a: &Answer) {
        let mut detail = json!({
            "kind": facts.kind().name(),
            "mac_from": who.source.name(),
            "addresses": a.addresses.iter().map(|ip| ip.to_string()).collect::<Vec<_>>(),
        });
        if let Some((source, mac)) = who.disagrees {
            detail["disagrees"] = json!({ "from": source.name(), "mac": mac.to_string() });
        }
        let ip = a.addresses.first().map(|ip| IpAddr::V6(*ip));
        self.ledger.event(Some(who.mac), ip, a.step, detail, None);
    }
}

fn answer(msg: Message, step: &'static str) -> Answer {
    Answer {
        msg,
        durable: Vec::new(),
        step,
        addresses: Vec::new(),
    }
}

fn status(code: Status, text: &str) -> DhcpOption {
    DhcpOption::StatusCode(StatusCode {
        status: code,
        msg: text.to_string(),
    })
}

fn lease_record(e: &Entry6) -> Record {
    Record::Lease(LeaseRecord {
        ip: e.ip.into(),
        iaid: Some(e.iaid),
        mac: e.mac,
        // Offers are never stored; what reaches here is bound or declined.
        state: Some(e.state),
        expires_at_ms: e.expires_at,
        hostname: None,
    })
}
