//! `explain`: what a machine would be served, and why, step by step,
//! without booting it.
//!
//! Architecture invariant: nothing here decides anything. The request is
//! encoded as the DHCP packet the client would send and parsed by the DHCP
//! path's own parser; classification, the bootfile and loader
//! ([`crate::dhcp::classify`], [`crate::boot::loader`]), identity,
//! membership and target ([`Inventory::preview`], which runs the very
//! `decide` a boot runs), the reply's boot options
//! ([`crate::dhcp::handler::boot_reply`] and the reply encoder) and the
//! rendering ([`crate::netboot::render_boot`]) are the boot path's. What
//! this module adds is the narrative. A preview opens no boot, registers no
//! machine and records nothing; URLs that carry a per-boot token carry
//! [`PREVIEW_TOKEN`] instead.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::boot::identity::{IdentityMatch, SwitchPort};
use crate::boot::loader::{self, Loader, LoaderChoice, LoaderSettings};
use crate::boot::membership::Membership;
use crate::boot::onie::{OnieHeaders, OnieVendor};
use crate::boot::{GenerationId, Source, Target};
use crate::clients::Clients;
use crate::config::DhcpMode;
use crate::dhcp::classify::{bootfile_with, BootTargets, Bootfile, ClientFacts, ClientKind};
use crate::dhcp::handler::boot_reply;
use crate::dhcp::reply::{encode, ReplySpec};
use crate::domain::{Arch, Cpu, MacAddr, MachineKind};
pub use crate::inventory::PREVIEW_TOKEN;
use crate::inventory::{Decision, Inventory, ScriptRequest, Stage};
use crate::netboot::named_boot_script;
use crate::render::context::{self, Bases};
use crate::render::{Renderer, ZTP_DIR};

/// What a client would send. Every field but `mac` is optional: with no
/// DHCP option and no ONIE header, the question is "what does this machine
/// get when its loader asks for its script", with the facts last seen.
#[derive(Debug, Clone)]
pub struct Query {
    pub mac: MacAddr,
    /// Option 93 (0 BIOS, 7 x64 UEFI, 11 arm64 UEFI, 16 x64 HTTP boot, …).
    pub arch: Option<u16>,
    /// Option 60 (`PXEClient:Arch:00007:UNDI:003016`, `HTTPClient…`,
    /// `onie_vendor:…`).
    pub vendor_class: Option<String>,
    /// Option 77 (`iPXE` once iPXE runs).
    pub user_class: Option<String>,
    /// Option 175 present: iPXE's feature flags (it sends `iPXE` in 77 too).
    pub ipxe: bool,
    /// Option 239 requested: a network OS's zero-touch provisioning client.
    pub ztp: bool,
    /// Option 82 from a relay: circuit-id and remote-id.
    pub circuit_id: Option<String>,
    pub remote_id: Option<String>,
    /// The `ONIE-*` headers of an installer request over HTTP.
    pub onie: Option<OnieHeaders>,
}

impl Query {
    /// Only the MAC: the script this machine's loader would get.
    pub fn new(mac: MacAddr) -> Self {
        Self {
            mac,
            arch: None,
            vendor_class: None,
            user_class: None,
            ipxe: false,
            ztp: false,
            circuit_id: None,
            remote_id: None,
            onie: None,
        }
    }

    fn has_dhcp(&self) -> bool {
        self.arch.is_some()
            || self.vendor_class.is_some()
            || self.user_class.is_some()
            || self.ipxe
            || self.ztp
            || self.circuit_id.is_some()
            || self.remote_id.is_some()
    }
}

/// What the server is configured with that answers depend on.
pub struct Explainer {
    pub inventory: Arc<Inventory>,
    pub renderer: Arc<Renderer>,
    /// `http://SERVER:PORT`, as machines reach it.
    pub server: String,
    pub targets: BootTargets,
    pub mode: DhcpMode,
    /// Full mode answers non-PXE clients it does not know.
    pub serve_all: bool,
    /// The clients DHCP knows (its "known MAC" set); without them, the
    /// inventory's machines count as known.
    pub clients: Option<Clients>,
}

/// The answer. Sections are `null` when the request never gets that far.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = explain::Explanation)]
pub struct Explanation {
    #[schema(value_type = String)]
    pub mac: MacAddr,
    pub client: ClientView,
    pub identity: IdentityView,
    pub group: GroupView,
    /// `{"stream", "number"}`.
    #[schema(value_type = Option<Object>)]
    pub pin: Option<GenerationId>,
    /// `{"decision": "boot", "generation", "source"}` or
    /// `{"decision": "nothing", "reason"}`.
    #[schema(value_type = Object)]
    pub target: Target,
    pub dhcp: Option<DhcpView>,
    pub loader: Option<LoaderView>,
    /// The script or config the loader is served (iPXE, GRUB, ZTP).
    pub script: Option<ScriptView>,
    /// The installer an ONIE switch is served.
    pub installer: Option<InstallerView>,
    /// The same, in order, in sentences.
    pub steps: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = explain::ClientView)]
pub struct ClientView {
    /// `pxe`, `http_boot`, `ipxe`, `onie`, `ztp`, `other`, or
    /// `script_request` (no DHCP options given).
    pub kind: String,
    /// How the request reaches the server: `dhcp`, `onie_http`, `script`.
    pub via: String,
    /// Option 93 as named in the inventory (`bios`, `efi_x64`, …);
    /// `other:N` for an architecture type ironboot does not know.
    #[schema(value_type = Option<String>)]
    #[serde(serialize_with = "arch_text", deserialize_with = "arch_from_text")]
    pub arch: Option<Arch>,
    pub vendor_class: Option<String>,
    pub user_classes: Vec<String>,
    /// The relay's switch port (option 82): `{"circuit_id", "remote_id"}`.
    #[schema(value_type = Option<Object>)]
    pub port: Option<SwitchPort>,
}

/// [`arch_text`] read back.
fn arch_from_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Arch>, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(code) = text.strip_prefix("other:") {
        let code = code.parse().map_err(serde::de::Error::custom)?;
        return Ok(Some(Arch::from_code(code)));
    }
    Arch::deserialize(serde::de::value::StrDeserializer::<D::Error>::new(&text)).map(Some)
}

/// An architecture as the document promises, a string: serde's own form
/// for the known ones, `other:N` for the rest (serde would write an object).
fn arch_text<S: serde::Serializer>(arch: &Option<Arch>, s: S) -> Result<S::Ok, S::Error> {
    match arch {
        Some(Arch::Other(n)) => s.serialize_some(&format!("other:{n}")),
        known => known.serialize(s),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = explain::IdentityView)]
pub struct IdentityView {
    /// The inventory knows this MAC.
    pub known: bool,
    /// `{"by": "mac"}` or `{"by": "port", "port", "replaces"}`.
    #[serde(rename = "match")]
    #[schema(value_type = Object)]
    pub matched: IdentityMatch,
    /// How DHCPv6 learnt this MAC the last time the machine spoke it since
    /// the server started (`relay_option79`, `duid`, `ethernet`,
    /// `link_local`, `relay_peer`); `null` if it has not.
    pub mac_from: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = explain::GroupView)]
pub struct GroupView {
    pub name: String,
    /// False when the group the machine is in does not exist (assigned to
    /// a group deleted under it by hand).
    pub exists: bool,
    /// `{"by": "explicit" | "selector" | "default" | "tie", …}`.
    #[schema(value_type = Object)]
    pub membership: Membership,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = explain::DhcpView)]
pub struct DhcpView {
    pub mode: String,
    pub answered: bool,
    /// Why there is no answer.
    pub reason: Option<String>,
    /// `{"via": "tftp" | "http" | "onie_installer" | "ztp", "file"}`.
    #[schema(value_type = Option<Object>)]
    pub bootfile: Option<Bootfile>,
    /// The reply's `siaddr` and `file` header fields.
    #[schema(value_type = Option<String>)]
    pub next_server: Option<Ipv4Addr>,
    pub file: Option<String>,
    /// The boot options of the reply, in wire order. Address options
    /// (lease, mask, router, DNS) depend on the subnet and are left out.
    pub options: Vec<DhcpOptionView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = explain::DhcpOptionView)]
pub struct DhcpOptionView {
    pub code: u8,
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = explain::LoaderView)]
pub struct LoaderView {
    /// `ipxe`, `grub`, `onie` or `ztp`.
    pub loader: String,
    /// Where an iPXE/GRUB choice came from: `machine` (label `loader`),
    /// `group` (variable `loader`), `arch` (the architecture's default),
    /// or `client` (the client already runs it).
    pub source: String,
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = explain::ScriptView)]
pub struct ScriptView {
    pub template: String,
    pub text: Option<String>,
    /// The render error, when the template fails.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = explain::InstallerView)]
pub struct InstallerView {
    pub url: String,
    pub name: Option<String>,
    pub sha256: Option<String>,
    pub size: Option<u64>,
    /// Why ONIE gets a 404 (and tries its next name).
    pub reason: Option<String>,
}

/// The DHCPDISCOVER a client with these options sends.
fn discover(q: &Query) -> Vec<u8> {
    let mut b = vec![0u8; 236];
    b[0] = 1; // BOOTREQUEST
    b[1] = 1; // Ethernet
    b[2] = 6;
    b[4..8].copy_from_slice(&0x1b0f_ace5u32.to_be_bytes());
    b[10] = 0x80; // broadcast
    b[28..34].copy_from_slice(&q.mac.0);
    b.extend_from_slice(&[99, 130, 83, 99]);
    let mut opt = |code: u8, value: &[u8]| {
        b.push(code);
        b.push(value.len().min(255) as u8);
        b.extend_from_slice(&value[..value.len().min(255)]);
    };
    opt(53, &[1]);
    let mut wanted = vec![1, 3, 6, 43, 60, 66, 67];
    if q.ztp {
        wanted.push(239);
    }
    opt(55, &wanted);
    if let Some(code) = q.arch {
        opt(93, &code.to_be_bytes());
    }
    if let Some(vc) = &q.vendor_class {
        opt(60, vc.as_bytes());
    }
    let user_class = q
        .user_class
        .clone()
        .or_else(|| q.ipxe.then(|| "iPXE".to_string()));
    if let Some(uc) = &user_class {
        opt(77, uc.as_bytes());
    }
    if q.ipxe {
        opt(175, &[0xb1, 1, 1]);
    }
    if q.circuit_id.is_some() || q.remote_id.is_some() {
        let mut sub = Vec::new();
        for (code, v) in [(1u8, &q.circuit_id), (2, &q.remote_id)] {
            if let Some(v) = v {
                let v = &v.as_bytes()[..v.len().min(120)];
                sub.push(code);
                sub.push(v.len() as u8);
                sub.extend_from_slice(v);
            }
        }
        opt(82, &sub);
    }
    b.push(255);
    b
}

fn option_name(code: u8) -> &'static str {
    match code {
        43 => "vendor-specific (PXE discovery control)",
        53 => "message type",
        54 => "server identifier",
        60 => "vendor class",
        66 => "TFTP server",
        67 => "bootfile",
        82 => "relay agent information (echoed)",
        97 => "client UUID (echoed)",
        114 => "URL (ONIE installer)",
        125 => "vendor-identifying vendor options (ONIE installer)",
        239 => "provisioning script URL (ZTP)",
        _ => "option",
    }
}

fn show_value(code: u8, v: &[u8]) -> String {
    match code {
        53 => match v.first() {
            Some(2) => "OFFER".into(),
            Some(5) => "ACK".into(),
            other => format!("{other:?}"),
        },
        54 if v.len() == 4 => Ipv4Addr::new(v[0], v[1], v[2], v[3]).to_string(),
        _ if !v.is_empty() && v.iter().all(|b| (0x20..0x7f).contains(b)) => {
            String::from_utf8_lossy(v).into_owned()
        }
        _ => hex::encode(v),
    }
}

/// The options of an encoded reply, and its `siaddr` and `file`.
fn reply_options(bytes: &[u8]) -> (Ipv4Addr, Option<String>, Vec<DhcpOptionView>) {
    let siaddr = Ipv4Addr::new(bytes[20], bytes[21], bytes[22], bytes[23]);
    let file: Vec<u8> = bytes[108..236]
        .iter()
        .take_while(|b| **b != 0)
        .copied()
        .collect();
    let file = (!file.is_empty()).then(|| String::from_utf8_lossy(&file).into_owned());
    let mut out = Vec::new();
    let mut i = 240;
    while i < bytes.len() {
        match bytes[i] {
            0 => i += 1,
            255 => break,
            code => {
                let Some(&len) = bytes.get(i + 1) else { break };
                let Some(v) = bytes.get(i + 2..i + 2 + len as usize) else {
                    break;
                };
                out.push(DhcpOptionView {
                    code,
                    name: option_name(code).into(),
                    value: show_value(code, v),
                });
                i += 2 + len as usize;
            }
        }
    }
    (siaddr, file, out)
}

fn loader_view(choice: &LoaderChoice) -> LoaderView {
    LoaderView {
        loader: choice.loader.as_str().into(),
        source: match choice.source {
            loader::LoaderSource::Machine => "machine",
            loader::LoaderSource::Group => "group",
            loader::LoaderSource::Arch => "arch",
        }
        .into(),
        note: choice.note.clone(),
    }
}

/// What the watchdog or a rollout would record at this boot, in a sentence.
fn describe_note(note: &crate::rollout::engine::Note) -> String {
    let d = &note.detail;
    let gen = |v: &serde_json::Value| match (v["stream"].as_str(), v["number"].as_i64()) {
        (Some(s), Some(n)) => format!("{s} gen {n}"),
        _ => v.to_string(),
    };
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
    match note.step {
        "watchdog.failed_boot" => format!(
            "watchdog: booting now counts its previous boot {} of {} as failed ({})",
            d["boot"],
            gen(&d["generation"]),
            text(&d["reason"])
        ),
        "watchdog.degraded" => format!(
            "watchdog: {} has failed too often here: {}",
            gen(&d["generation"]),
            text(&d["reason"])
        ),
        "watchdog.last_good" => format!(
            "watchdog: {} instead of {} ({})",
            gen(&d["serving"]),
            gen(&d["target"]),
            text(&d["reason"])
        ),
        "watchdog.no_fallback" => format!(
            "watchdog: {} keeps failing and there is no last good generation ({})",
            gen(&d["target"]),
            text(&d["reason"])
        ),
        "rollout.serve" => format!(
            "rollout {}: {} instead of {}",
            d["rollout"],
            gen(&d["generation"]),
            gen(&d["instead_of"])
        ),
        step => format!("{step}: {d}"),
    }
}

fn describe_target(d: &Decision) -> String {
    match &d.target {
        Target::Boot {
            generation,
            source: Source::Pin,
        } => format!("target: {generation}, because the machine is pinned to it"),
        Target::Boot {
            generation,
            source: Source::Rollout,
        } => format!(
            "target: {generation}, because a rollout of group {} has moved this machine",
            d.machine.group
        ),
        Target::Boot {
            generation,
            source: Source::LastGood,
        } => format!(
            "target: {generation}, its last good generation: the watchdog saw its target fail"
        ),
        Target::Boot { generation, .. } => {
            let arch = d
                .machine
                .arch
                .map_or("an unknown architecture", Cpu::as_str);
            let what = if d.machine.kind == MachineKind::Switch {
                "installer "
            } else {
                ""
            };
            format!(
                "target: {generation}, group {}'s {what}generation for {arch}",
                d.machine.group
            )
        }
        Target::Nothing { reason } => format!("target: nothing to boot: {reason}"),
    }
}

/// The request as the DHCP path classifies it (when it carries DHCP
/// options), or as a script or ONIE request.
struct Classified {
    request: Option<crate::dhcp::packet::Request>,
    facts: Option<ClientFacts>,
    kind: Option<ClientKind>,
    /// ONIE fetching its installer over HTTP (no DHCP options given).
    onie_http: bool,
    switch: bool,
    port: Option<SwitchPort>,
}

impl Classified {
    fn of(q: &Query) -> Self {
        let request = q
            .has_dhcp()
            .then(|| crate::dhcp::packet::parse(&discover(q)).expect("a well-formed DISCOVER"));
        let facts = request.as_ref().map(ClientFacts::from_request);
        let kind = facts.as_ref().map(ClientFacts::kind);
        let onie_http = q.onie.is_some() && kind.is_none();
        Self {
            switch: onie_http || kind.is_some_and(ClientKind::is_switch),
            port: SwitchPort::new(q.circuit_id.clone(), q.remote_id.clone()),
            request,
            facts,
            kind,
            onie_http,
        }
    }

    fn view(&self) -> ClientView {
        let f = self.facts.as_ref();
        ClientView {
            kind: match (self.kind, self.onie_http) {
                (Some(k), _) => k.name().into(),
                (None, true) => "onie".into(),
                (None, false) => "script_request".into(),
            },
            via: match (self.kind, self.onie_http) {
                (Some(_), _) => "dhcp",
                (None, true) => "onie_http",
                (None, false) => "script",
            }
            .into(),
            arch: f.and_then(|f| f.arch),
            vendor_class: f.and_then(|f| f.vendor_class.clone()),
            user_classes: f.map(|f| f.user_classes.clone()).unwrap_or_default(),
            port: self.port.clone(),
        }
    }

    fn step(&self) -> String {
        match (&self.facts, self.onie_http) {
            (Some(f), _) => format!(
                "client: {} ({}; opt 60 {}; opt 77 {})",
                f.kind().name(),
                f.arch
                    .map_or("no opt 93".into(), |a| format!("opt 93 {}", a.name())),
                f.vendor_class.as_deref().unwrap_or("absent"),
                if f.user_classes.is_empty() {
                    "absent".into()
                } else {
                    f.user_classes.join(",")
                },
            ),
            (None, true) => "client: ONIE asking for its installer over HTTP".into(),
            (None, false) => {
                "client: a loader asking for this machine's script (no DHCP options given)".into()
            }
        }
    }

    /// The script request the boot path would see: the CPU from option 93,
    /// else ONIE's own (its header, else its vendor class).
    fn script_request(&self, q: &Query) -> ScriptRequest {
        let facts = self.facts.as_ref();
        let buildarch = facts
            .and_then(|f| f.arch)
            .and_then(Cpu::of_firmware)
            .or_else(|| {
                q.onie
                    .as_ref()
                    .and_then(|h| h.arch.as_deref()?.parse().ok())
            })
            .or_else(|| {
                facts
                    .and_then(|f| f.vendor_class.as_deref())
                    .and_then(OnieVendor::parse)
                    .and_then(|v| v.arch.parse().ok())
            });
        ScriptRequest {
            mac: Some(q.mac),
            serial: q.onie.as_ref().and_then(|h| h.serial.clone()),
            buildarch,
            ..ScriptRequest::default()
        }
    }
}

/// The steps that say who the machine is, where it belongs and what it
/// boots, from the decision.
fn decision_steps(decision: &Decision) -> Vec<String> {
    let m = &decision.machine;
    let mut steps = vec![match (&decision.identity, decision.fresh) {
        (IdentityMatch::Port { replaces, port }, _) => format!(
            "identity: a new MAC in switch port {} of {}: it replaces {replaces} and inherits its group, labels, pin and name",
            port.circuit_id.as_deref().unwrap_or("?"),
            port.remote_id.as_deref().unwrap_or("?")
        ),
        (IdentityMatch::Mac, false) => "identity: a known machine, by its MAC".into(),
        (IdentityMatch::Mac, true) => "identity: an unknown MAC; its first boot registers it".into(),
    }];
    steps.push(format!("group: {}", m.membership.reason()));
    steps.push(match &m.pin {
        Some(p) => format!("pin: {p} (beats the group's generation)"),
        None => "pin: none".into(),
    });
    steps.extend(decision.notes.iter().map(describe_note));
    steps.push(describe_target(decision));
    steps
}

impl Explainer {
    /// Explains `q`: the same calls the boot path makes, in its order
    /// (classify, decide, answer DHCP, choose the loader, serve it), each
    /// said in a step; nothing here decides on its own.
    pub fn explain(&self, q: &Query) -> Explanation {
        let client = Classified::of(q);
        // A network OS asking for its ZTP script carries on the boot ONIE
        // installed; everything else network-boots.
        let stage = match client.kind {
            Some(ClientKind::Ztp) => Stage::CarriesOn,
            _ => Stage::Netboot,
        };
        let decision = self.inventory.preview(
            q.mac,
            &client.script_request(q),
            client.switch.then_some(MachineKind::Switch),
            client.port.clone(),
            stage,
        );
        let m = &decision.machine;
        let mut steps = vec![client.step()];
        steps.extend(decision_steps(&decision));
        let mut out = Explanation {
            mac: q.mac,
            client: client.view(),
            identity: IdentityView {
                known: !decision.fresh,
                matched: decision.identity.clone(),
                mac_from: self
                    .clients
                    .as_ref()
                    .and_then(|c| c.seen(q.mac))
                    .and_then(|s| s.mac_from.map(str::to_string)),
            },
            group: GroupView {
                name: m.group.clone(),
                exists: decision.group.is_some(),
                membership: m.membership.clone(),
                reason: m.membership.reason(),
            },
            pin: m.pin.clone(),
            target: decision.target.clone(),
            dhcp: None,
            loader: None,
            script: None,
            installer: None,
            steps,
        };
        let Some(loader) = self.loader(&client, &decision, &mut out) else {
            return out;
        };
        out.steps
            .push(match (&loader.note, loader.source.as_str()) {
                (_, "client") => format!("loader: {} (the client runs it)", loader.loader),
                (Some(note), source) => format!("loader: {} ({source}; {note})", loader.loader),
                (None, source) => format!("loader: {} (chosen by {source})", loader.loader),
            });
        out.loader = Some(loader.clone());
        self.serve(&loader, &client, &decision, &mut out);
        out
    }

    /// The DHCP answer (recorded in `out`) and the loader it starts; for a
    /// script or ONIE request, the loader that asks. `None`: DHCP does not
    /// answer with a bootfile, so nothing follows.
    fn loader(
        &self,
        client: &Classified,
        decision: &Decision,
        out: &mut Explanation,
    ) -> Option<LoaderView> {
        let settings = self.inventory.loader_settings(decision.machine.mac);
        match (&client.facts, &client.request) {
            (Some(f), Some(req)) => {
                let (dhcp, loader) = self.dhcp(f, req, settings);
                out.steps.push(match (&dhcp.reason, &dhcp.bootfile) {
                    (Some(why), _) => format!("dhcp ({}): no answer: {why}", dhcp.mode),
                    (None, Some(b)) => format!(
                        "dhcp ({}): answered with bootfile {} ({})",
                        dhcp.mode,
                        b.name(),
                        serde_json::to_value(b).expect("serializes")["via"]
                            .as_str()
                            .unwrap_or("")
                    ),
                    (None, None) => format!("dhcp ({}): an address, no bootfile", dhcp.mode),
                });
                let answered = dhcp.answered && dhcp.bootfile.is_some();
                out.dhcp = Some(dhcp);
                loader.filter(|_| answered)
            }
            _ if client.onie_http => Some(LoaderView {
                loader: "onie".into(),
                source: "client".into(),
                note: None,
            }),
            // `/boot/<mac>.ipxe` is iPXE's; a GRUB machine asks over TFTP.
            _ => Some(loader_view(&loader::choose(
                decision.machine.arch.and_then(Cpu::firmware),
                settings,
            ))),
        }
    }

    /// What the loader is served: its script or config, a ZTP script, or
    /// an ONIE installer.
    fn serve(
        &self,
        loader: &LoaderView,
        client: &Classified,
        decision: &Decision,
        out: &mut Explanation,
    ) {
        let plan = decision.preview_plan(None);
        match (loader.loader.parse::<Loader>(), loader.loader.as_str()) {
            (Ok(Loader::Uki), _) => out.steps.push(uki_step(&plan)),
            (Ok(l), _) => {
                let (template, result) =
                    named_boot_script(&plan, Bases::server(&self.server), &self.renderer, l);
                out.steps.push(format!(
                    "script: {template}{}",
                    if result.is_ok() {
                        ", rendered below"
                    } else {
                        ": the render fails"
                    }
                ));
                out.script = Some(script_view(template, result));
            }
            (Err(_), "ztp") => {
                let file = client
                    .facts
                    .as_ref()
                    .map(|f| f.ztp_flavour().file())
                    .unwrap_or("cumulus.sh");
                let template = format!("{ZTP_DIR}{file}");
                let result = context::build(&plan, Bases::server(&self.server), &self.renderer)
                    .and_then(|ctx| self.renderer.render(&template, &ctx));
                out.steps
                    .push(format!("script: {template}, rendered below"));
                out.script = Some(script_view(&template, result));
            }
            (Err(_), _) => {
                let installer = self.installer(decision);
                out.steps.push(match &installer.reason {
                    None => format!(
                        "installer: {} ({} bytes) at {}",
                        installer.name.as_deref().unwrap_or("?"),
                        installer.size.unwrap_or(0),
                        installer.url
                    ),
                    Some(why) => format!("installer: none (ONIE gets a 404): {why}"),
                });
                out.installer = Some(installer);
            }
        }
    }

    /// The DHCP answer, as the handler's gates and encoder make it.
    fn dhcp(
        &self,
        facts: &ClientFacts,
        req: &crate::dhcp::packet::Request,
        settings: LoaderSettings,
    ) -> (DhcpView, Option<LoaderView>) {
        let kind = facts.kind();
        let boot = bootfile_with(facts, &self.targets, settings).ok();
        let known = match &self.clients {
            Some(clients) => clients.knows(req.mac),
            None => self.inventory.machine(req.mac).is_some(),
        };
        // The gates of `Dhcp::proxy` and `Dhcp::full`.
        let refused = match self.mode {
            DhcpMode::Off => Some("DHCP is off".to_string()),
            DhcpMode::Proxy if kind.is_switch() => {
                Some("switches are answered in full mode only".into())
            }
            DhcpMode::Proxy if boot.is_none() => Some(match kind {
                ClientKind::Other => "not a boot client: a proxy answers PXE clients only".into(),
                _ => "no loader for this client's architecture".into(),
            }),
            DhcpMode::Full if !kind.is_boot_client() && !known && !self.serve_all => {
                Some("unknown client without PXE options (serve_all is off)".into())
            }
            _ => None,
        };
        let mode = format!("{:?}", self.mode).to_lowercase();
        if let Some(reason) = refused {
            let view = DhcpView {
                mode,
                answered: false,
                reason: Some(reason),
                bootfile: None,
                next_server: None,
                file: None,
                options: Vec::new(),
            };
            return (view, None);
        }
        let mut spec = ReplySpec::new(dhcproto::v4::MessageType::Offer, self.targets.server_ipv4());
        boot_reply(
            &mut spec,
            facts,
            boot.clone(),
            self.targets.server_ipv4(),
            self.mode,
        );
        let (siaddr, file, options) = reply_options(&encode(req, &spec));
        let loader = match kind {
            ClientKind::Ipxe => Some(LoaderView {
                loader: "ipxe".into(),
                source: "client".into(),
                note: None,
            }),
            ClientKind::Pxe => Some(loader_view(&loader::choose(facts.arch, settings))),
            ClientKind::HttpBoot => Some(loader_view(&loader::choose(
                facts.arch.or(Some(Arch::HttpX64)),
                settings,
            ))),
            ClientKind::Onie => Some(LoaderView {
                loader: "onie".into(),
                source: "client".into(),
                note: None,
            }),
            ClientKind::Ztp => Some(LoaderView {
                loader: "ztp".into(),
                source: "client".into(),
                note: None,
            }),
            ClientKind::Other => None,
        };
        let view = DhcpView {
            mode,
            answered: true,
            reason: None,
            bootfile: boot,
            next_server: Some(siaddr),
            file,
            options,
        };
        (view, loader)
    }

    /// The installer ONIE would download (see `Netboot::onie_installer`).
    fn installer(&self, d: &Decision) -> InstallerView {
        let url = format!(
            "{}/onie/{}/onie-installer",
            self.server,
            d.machine.mac.hyphenated()
        );
        let none = |reason: String| InstallerView {
            url: url.clone(),
            name: None,
            sha256: None,
            size: None,
            reason: Some(reason),
        };
        match (&d.target, &d.generation) {
            (Target::Boot { .. }, Some(g)) => match &g.manifest.installer {
                Some(a) => InstallerView {
                    url: url.clone(),
                    name: Some(a.name.clone()),
                    sha256: Some(a.digest.to_string()),
                    size: Some(a.size),
                    reason: None,
                },
                None => none(format!(
                    "{} is a live OS image, not an ONIE installer",
                    g.id
                )),
            },
            (Target::Nothing { reason }, _) => none(reason.clone()),
            (Target::Boot { generation, .. }, None) => none(format!("{generation} disappeared")),
        }
    }
}

fn script_view(template: &str, result: Result<String, crate::render::RenderError>) -> ScriptView {
    match result {
        Ok(text) => ScriptView {
            template: template.into(),
            text: Some(text),
            error: None,
        },
        Err(e) => ScriptView {
            template: template.into(),
            text: None,
            error: Some(e.to_string()),
        },
    }
}

/// Renders any template for a machine without booting it: the context a
/// boot of the machine would see now (boot id 0, [`PREVIEW_TOKEN`]).
pub fn render_template(
    inventory: &Inventory,
    renderer: &Renderer,
    server: &str,
    mac: MacAddr,
    template: &str,
) -> Result<String, crate::render::RenderError> {
    let req = ScriptRequest {
        mac: Some(mac),
        ..ScriptRequest::default()
    };
    let plan = inventory
        .preview(mac, &req, None, None, Stage::Netboot)
        .preview_plan(None);
    let ctx = context::build(&plan, Bases::server(server), renderer)?;
    renderer.render(template, &ctx)
}

/// The `ONIE-*` headers from name/value pairs (for the API and CLI).
pub fn onie_headers(pairs: &BTreeMap<String, String>) -> OnieHeaders {
    OnieHeaders::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

/// What the firmware of a machine with loader `uki` loads: its target's
/// unified kernel image, or why it gets none.
fn uki_step(plan: &crate::inventory::BootPlan) -> String {
    use crate::netboot::{planned_file, UKI_WRONG_KIND};
    match planned_file(plan, |m| m.uki.as_ref(), UKI_WRONG_KIND) {
        Ok((generation, a)) => format!(
            "image: the firmware loads {generation}'s unified kernel image {} ({} bytes, sha256:{}) from uki/{}.efi and verifies its signature",
            a.name,
            a.size,
            a.digest,
            plan.machine.mac.hyphenated()
        ),
        Err(reason) => format!("image: none (404): {reason}"),
    }
}

#[cfg(test)]
mod tests;
