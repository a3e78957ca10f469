//! The fleet as one pure value: machines, groups, generations, open boots,
//! and the rollouts and watchdog ([`crate::rollout::engine::Rollouts`]),
//! with the one decision every path asks ([`decide`]: which machine a
//! request is, which group it is in, what it boots next).
//!
//! Architecture invariant: nothing here does I/O or reads a clock (times
//! are passed in), knows SQL or waits. The inventory holds one `Fleet`
//! behind its lock and changes it by copy, commit, swap; `explain` and
//! `apply --dry-run` call the same functions on a copy.

pub mod changes;

pub use changes::{GroupChange, MachineChange, StartRollout};

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;

use crate::boot::identity::{self, Candidate, IdentityMatch, SwitchPort};
use crate::boot::loader::Loader;
use crate::boot::membership::{self, Claim, Membership, DEFAULT_GROUP};
use crate::boot::select::Selector;
use crate::boot::{self, GenerationId, Target};
use crate::domain::{Cpu, MacAddr, MachineKind, Slot};
use crate::images::manifest::{Digest, Manifest};

/// A machine as the boot path sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub mac: MacAddr,
    pub kind: MachineKind,
    /// The operator set `kind`: from then on what the machine's requests
    /// suggest (an ONIE or ZTP request) no longer changes it.
    pub kind_by_operator: bool,
    /// The group it is in: `assigned` if set, else computed from the
    /// groups' selectors (see [`crate::boot::membership`]). Kept current
    /// whenever labels, assignments or selectors change.
    pub group: String,
    /// The group an operator assigned; it beats every selector.
    pub assigned: Option<String>,
    /// Why it is in `group` (explicit, a selector, default, a tie).
    pub membership: Membership,
    pub labels: BTreeMap<String, String>,
    pub hostname: Option<String>,
    pub uuid: Option<String>,
    pub serial: Option<String>,
    /// The CPU its loader runs (`${buildarch}`, else DHCP option 93).
    pub arch: Option<Cpu>,
    pub ip: Option<String>,
    pub pin: Option<GenerationId>,
    pub current: Option<GenerationId>,
    pub last_good: Option<GenerationId>,
    /// The switch port (relay option 82) it was last seen behind.
    pub port: Option<SwitchPort>,
}

impl Machine {
    pub fn new(mac: MacAddr) -> Self {
        Self {
            mac,
            kind: MachineKind::Server,
            kind_by_operator: false,
            group: DEFAULT_GROUP.into(),
            assigned: None,
            membership: Membership::Default,
            labels: BTreeMap::new(),
            hostname: None,
            uuid: None,
            serial: None,
            arch: None,
            ip: None,
            pin: None,
            current: None,
            last_good: None,
            port: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Group {
    pub name: String,
    /// What the group is for, for operators.
    pub description: String,
    /// Claims machines whose labels match (`None`: only assigned ones).
    pub selector: Option<Selector>,
    /// The pointer set last.
    pub pointer: Option<GenerationId>,
    /// One generation per slot (image CPU, live OS or installer): machines
    /// boot the one for their own CPU and kind.
    #[serde(default)]
    pub by_arch: BTreeMap<Slot, GenerationId>,
    pub variables: serde_json::Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    pub id: GenerationId,
    pub digest: Digest,
    pub manifest: Manifest,
    pub imported_ms: i64,
    pub imported_by: Option<String>,
}

/// A boot whose token may still be used (config fetches, confirmation)
/// for the token's lifetime after `started_ms`, and only from an address
/// bound to `mac` (the HTTP layer checks that with `binding`).
#[derive(Debug, Clone)]
pub struct Boot {
    pub id: i64,
    pub mac: MacAddr,
    pub generation: Option<GenerationId>,
    pub confirmed: bool,
    /// When its script was served.
    pub started_ms: i64,
}

/// Open boots kept per machine: a machine that asks for its script again
/// and again (a retry loop) keeps only its newest tokens.
pub const OPEN_BOOTS_PER_MACHINE: usize = 4;
/// Inserts between two sweeps of expired boots.
pub const SWEEP_EVERY: i64 = 1024;
/// How long a boot's token works by default (`[boot] token_ttl`).
pub const DEFAULT_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(2 * 3600);

/// What the script request told us about the machine (iPXE variables).
#[derive(Debug, Clone, Default)]
pub struct ScriptRequest {
    pub mac: Option<MacAddr>,
    pub uuid: Option<String>,
    pub serial: Option<String>,
    pub buildarch: Option<Cpu>,
    pub platform: Option<String>,
    pub ip: Option<IpAddr>,
}

/// Where a request stands in a machine's boot, for the watchdog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Firmware or a loader asks (an iPXE script, a GRUB config, an ONIE
    /// installer): the machine network-booted, so a boot served before and
    /// never confirmed has failed.
    Netboot,
    /// The OS a boot installed asks, carrying that boot on (a switch's
    /// network OS fetching its ZTP script after ONIE installed it): the open
    /// boot has not failed; this request's confirmation is the one it waits
    /// for.
    CarriesOn,
}

/// Everything needed to render one boot's script and configs.
#[derive(Debug, Clone)]
pub struct BootPlan {
    pub boot_id: i64,
    /// The per-boot token in clear (only ever sent to the machine).
    pub token: String,
    pub machine: Machine,
    pub group: Group,
    pub target: Target,
    pub generation: Option<Arc<Generation>>,
    pub platform: Option<String>,
    /// How the request was matched to the machine (its MAC, or the switch
    /// port of a machine it replaces).
    pub identity: IdentityMatch,
}

impl BootPlan {
    /// There is a live OS to boot: a target generation with a kernel (a
    /// switch installer has none).
    pub fn bootable(&self) -> bool {
        matches!(self.target, Target::Boot { .. })
            && self
                .generation
                .as_ref()
                .is_some_and(|g| g.manifest.kernel.is_some())
    }
}

/// The whole fleet as one value: what the boot path decides from and what
/// every change edits (on a copy, swapped in after its commit).
#[derive(Default, Clone)]
pub struct Fleet {
    pub machines: HashMap<MacAddr, Machine>,
    pub groups: HashMap<String, Group>,
    pub generations: HashMap<GenerationId, Arc<Generation>>,
    /// By sha256 of the token.
    pub boots: HashMap<String, Boot>,
    /// The latest boot opened from each client address: artifact downloads
    /// carry no token, so they are attributed by where they come from.
    pub by_ip: HashMap<IpAddr, String>,
    /// Each machine's open boots, oldest first (token hashes).
    pub open_by_mac: HashMap<MacAddr, std::collections::VecDeque<String>>,
    /// Rollouts and the watchdog's per-machine health: asked at every boot.
    pub rollouts: crate::rollout::engine::Rollouts,
}

impl Fleet {
    /// Opens a boot. A machine keeps at most [`OPEN_BOOTS_PER_MACHINE`]
    /// open boots (its newest), and boots started before `oldest_live` (their
    /// tokens expired) are swept now and then, so memory stays bounded by
    /// the fleet, not by how often machines ask.
    /// `from`: the client address it was opened from, to which artifact
    /// downloads are attributed.
    pub fn open_boot(&mut self, hash: String, boot: Boot, from: Option<IpAddr>, oldest_live: i64) {
        if boot.id % SWEEP_EVERY == 0 {
            self.boots.retain(|_, b| b.started_ms >= oldest_live);
            let boots = &self.boots;
            self.by_ip.retain(|_, h| boots.contains_key(h));
            for open in self.open_by_mac.values_mut() {
                open.retain(|h| boots.contains_key(h));
            }
            self.open_by_mac.retain(|_, open| !open.is_empty());
        }
        let open = self.open_by_mac.entry(boot.mac).or_default();
        open.push_back(hash.clone());
        while open.len() > OPEN_BOOTS_PER_MACHINE {
            if let Some(old) = open.pop_front() {
                self.boots.remove(&old);
            }
        }
        if let Some(ip) = from {
            self.by_ip.insert(ip, hash.clone());
        }
        self.boots.insert(hash, boot);
    }

    /// The boot with token `hash` of `mac` was confirmed (committed):
    /// `generation` is the machine's current and last good.
    pub fn confirmed(&mut self, hash: &str, mac: MacAddr, generation: &GenerationId) {
        if let Some(b) = self.boots.get_mut(hash) {
            b.confirmed = true;
        }
        if let Some(m) = self.machines.get_mut(&mac) {
            m.current = Some(generation.clone());
            m.last_good = Some(generation.clone());
        }
    }

    /// Moves an open boot to a new token hash, keeping its place among the
    /// machine's open boots and its client address.
    pub fn rekey_boot(&mut self, old: &str, new: String) {
        let Some(boot) = self.boots.remove(old) else {
            return;
        };
        for h in self.by_ip.values_mut().filter(|h| *h == old) {
            *h = new.clone();
        }
        if let Some(open) = self.open_by_mac.get_mut(&boot.mac) {
            for h in open.iter_mut().filter(|h| *h == old) {
                *h = new.clone();
            }
        }
        self.boots.insert(new, boot);
    }

    /// The generation a target boots, if it names one that exists.
    pub fn generation_for(&self, target: &Target) -> Option<Arc<Generation>> {
        match target {
            Target::Boot { generation, .. } => self.generations.get(generation).cloned(),
            Target::Nothing { .. } => None,
        }
    }

    /// Puts the machine a request was decided to be in place. A machine
    /// identified by the switch port of another takes that port over and
    /// is returned (what it inherited, for the ledger).
    pub fn admit(&mut self, identity: &IdentityMatch, machine: &Machine) -> Option<Machine> {
        let inherited = match identity {
            IdentityMatch::Port { replaces, .. } => {
                if let Some(old) = self.machines.get_mut(replaces) {
                    old.port = None;
                }
                Some(machine.clone())
            }
            IdentityMatch::Mac => None,
        };
        self.machines.insert(machine.mac, machine.clone());
        inherited
    }

    /// The groups that claim machines by selector.
    pub fn claims(&self) -> impl Iterator<Item = Claim<'_>> {
        self.groups.values().filter_map(|g| {
            g.selector.as_ref().map(|selector| Claim {
                group: &g.name,
                selector,
            })
        })
    }

    /// The membership of `m` as things stand.
    pub fn membership_of(&self, m: &Machine) -> Membership {
        membership::resolve(m.assigned.as_deref(), &m.labels, self.claims())
    }

    /// Recomputes every machine's group (after a selector, an assignment or
    /// labels changed); returns the unassigned machines whose group moved,
    /// with their new group, for the database.
    pub fn regroup(&mut self) -> Vec<(MacAddr, String)> {
        let computed: Vec<(MacAddr, Membership)> = self
            .machines
            .values()
            .map(|m| (m.mac, self.membership_of(m)))
            .collect();
        let mut moved = Vec::new();
        for (mac, membership) in computed {
            let Some(m) = self.machines.get_mut(&mac) else {
                continue;
            };
            let group = membership.group().to_string();
            if group != m.group && m.assigned.is_none() {
                moved.push((mac, group.clone()));
            }
            if membership.is_tie() && !m.membership.is_tie() {
                tracing::warn!(%mac, reason = %membership.reason(), "selector tie");
            }
            m.group = group;
            m.membership = membership;
        }
        moved
    }

    /// What [`Fleet::regroup`] will return once a change is applied, worked
    /// out beforehand (reading only) so the change's own transaction
    /// records where selectors move machines: the groups as `groups` (else
    /// as they are) and `changed` in place of its machine.
    pub fn moves_with(
        &self,
        groups: Option<&HashMap<String, Group>>,
        changed: Option<&Machine>,
    ) -> Vec<(MacAddr, String)> {
        let groups = groups.unwrap_or(&self.groups);
        let claims: Vec<Claim<'_>> = groups
            .values()
            .filter_map(|g| {
                g.selector.as_ref().map(|selector| Claim {
                    group: &g.name,
                    selector,
                })
            })
            .collect();
        let live = self
            .machines
            .values()
            .filter(|m| changed.is_none_or(|c| c.mac != m.mac));
        let mut moved = Vec::new();
        for m in live.chain(changed) {
            let was = self
                .machines
                .get(&m.mac)
                .map_or(&m.group, |live| &live.group);
            let now = membership::resolve(m.assigned.as_deref(), &m.labels, claims.iter().copied());
            if now.group() != was && m.assigned.is_none() {
                moved.push((m.mac, now.group().to_string()));
            }
        }
        moved
    }

    /// The machine's group, if it exists.
    pub fn group_of(&self, m: &Machine) -> Option<&Group> {
        self.groups.get(&m.group)
    }
}

/// What the boot path decides for one request, without changing anything:
/// `Inventory::begin_boot_as` applies it; `explain` shows it.
#[derive(Debug, Clone)]
pub struct Decision {
    /// How the request was matched to a machine.
    pub identity: IdentityMatch,
    /// The inventory did not know this MAC.
    pub fresh: bool,
    /// The machine as it is after this request (facts merged, a replaced
    /// machine's role inherited, membership computed).
    pub machine: Machine,
    /// Its group, when the group exists.
    pub group: Option<Group>,
    pub target: Target,
    pub generation: Option<Arc<Generation>>,
    /// What rollouts and the watchdog said about this boot (previews only:
    /// `rollout.serve`, `watchdog.last_good`, …).
    pub notes: Vec<crate::rollout::engine::Note>,
}

/// Decides a request from `mac`: identity, the machine, its group and its
/// target generation. Pure: reads `state`, changes nothing.
pub fn decide(
    state: &Fleet,
    mac: MacAddr,
    req: &ScriptRequest,
    port: Option<&SwitchPort>,
    kind: Option<MachineKind>,
) -> Decision {
    let existing = state.machines.get(&mac);
    let fresh = existing.is_none();
    let identity = identity::resolve(
        mac,
        !fresh,
        port,
        state.machines.values().map(|m| Candidate {
            mac: m.mac,
            port: m.port.as_ref(),
            by_port: by_port(m, &state.groups),
        }),
    );
    let mut machine = match (&identity, existing) {
        (IdentityMatch::Port { replaces, .. }, _) => match state.machines.get(replaces) {
            Some(old) => Machine {
                kind: old.kind,
                kind_by_operator: old.kind_by_operator,
                group: old.group.clone(),
                assigned: old.assigned.clone(),
                labels: old.labels.clone(),
                hostname: old.hostname.clone(),
                pin: old.pin.clone(),
                ..Machine::new(mac)
            },
            None => Machine::new(mac),
        },
        (IdentityMatch::Mac, Some(m)) => m.clone(),
        (IdentityMatch::Mac, None) => Machine::new(mac),
    };
    machine.uuid = req.uuid.clone().or(machine.uuid.take());
    machine.serial = req.serial.clone().or(machine.serial.take());
    machine.arch = req.buildarch.or(machine.arch);
    machine.ip = req.ip.map(|i| i.to_string()).or(machine.ip.take());
    if let Some(kind) = kind.filter(|_| !machine.kind_by_operator) {
        machine.kind = kind;
    }
    if let Some(port) = port {
        machine.port = Some(port.clone());
    }
    machine.membership = state.membership_of(&machine);
    machine.group = machine.membership.group().to_string();
    let group = state.group_of(&machine).cloned();
    let target = target_of(state, &machine, group.as_ref());
    let generation = state.generation_for(&target);
    Decision {
        identity,
        fresh,
        machine,
        group,
        target,
        generation,
        notes: Vec::new(),
    }
}

/// Boot id and token of a previewed plan: nothing is opened, so the URLs
/// that carry a token carry this placeholder instead.
pub const PREVIEW_TOKEN: &str = "PREVIEW";

impl Decision {
    /// The plan a boot would render with, for a preview (boot id 0,
    /// [`PREVIEW_TOKEN`]).
    pub fn preview_plan(&self, platform: Option<String>) -> BootPlan {
        BootPlan {
            boot_id: 0,
            token: PREVIEW_TOKEN.into(),
            machine: self.machine.clone(),
            group: self
                .group
                .clone()
                .unwrap_or_else(|| empty_group(&self.machine.group)),
            target: self.target.clone(),
            generation: self.generation.clone(),
            platform,
            identity: self.identity.clone(),
        }
    }
}

/// [`boot::target`] for a machine of the inventory.
pub fn target_of(state: &Fleet, machine: &Machine, group: Option<&Group>) -> Target {
    let facts = boot::MachineFacts {
        group: machine.group.clone(),
        pin: machine.pin.clone(),
        arch: machine.arch,
        switch: machine.kind == MachineKind::Switch,
    };
    let group_facts = group.map(|g| boot::GroupFacts {
        name: g.name.clone(),
        pointer: g.pointer.clone(),
        by_arch: g
            .by_arch
            .iter()
            .map(|(slot, id)| (*slot, id.clone()))
            .collect(),
    });
    boot::target(&facts, group_facts.as_ref(), |g| {
        state.generations.get(g).map(|r| r.manifest.arch)
    })
}

/// An empty group named `name` (what a machine of a group that does not
/// exist renders with).
pub fn empty_group(name: &str) -> Group {
    Group {
        name: name.to_string(),
        description: String::new(),
        selector: None,
        pointer: None,
        by_arch: BTreeMap::new(),
        variables: serde_json::json!({}),
    }
}

/// The machine (label `identity`) or its group (variable `identity`) says
/// `port`: identify it by its switch port.
pub fn by_port(m: &Machine, groups: &HashMap<String, Group>) -> bool {
    let says = |v: Option<&str>| v.is_some_and(|v| v.trim().eq_ignore_ascii_case("port"));
    says(m.labels.get("identity").map(String::as_str))
        || says(
            groups
                .get(&m.group)
                .and_then(|g| g.variables.get("identity"))
                .and_then(|v| v.as_str()),
        )
}

pub fn group_loader(g: &Group) -> Option<Loader> {
    g.variables.get("loader")?.as_str()?.parse().ok()
}

#[cfg(test)]
mod tests;
