//! The plan: desired [`Document`] + [`Current`] state → the changes that
//! make the server match, or the first invalid reference with its path.
//! Pure (no I/O, no clock): `--dry-run` shows exactly what apply does.
//!
//! Rules:
//!
//! - A field absent from the document is left as it is; nothing is
//!   deleted. `labels` and `variables` replace the whole set.
//! - A group not on the server is created, with its generation pointer.
//! - A changed generation of an existing group becomes a rollout (with the
//!   file's strategy, default canary 1) when machines follow its old
//!   pointer for that architecture after the file's own label and group
//!   changes; with no such machines, or no old pointer, the pointer moves.
//! - A group held by a rollout toward the file's generation is no change;
//!   toward another, a conflict: finish or abort it first.
//! - Applying the plan's result again plans nothing.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{group_path, machine_path, Document, GroupSpec, MachineSpec, RolloutSpec};
use crate::boot::loader::Loader;
use crate::boot::membership::{self, Claim, DEFAULT_GROUP};
use crate::boot::select::Selector;
use crate::boot::{GenerationId, GroupFacts};
use crate::domain::{
    check_group_name, check_hostname, check_label_part, Cpu, MacAddr, MachineKind, Slot,
};
use crate::fleet::{GroupChange, MachineChange, StartRollout};
use crate::rollout::{Canary, Require, Strategy};

/// What the plan needs to know about the server.
#[derive(Debug, Clone, Default)]
pub struct Current {
    pub groups: BTreeMap<String, CurrentGroup>,
    pub machines: BTreeMap<MacAddr, CurrentMachine>,
    pub generations: BTreeMap<GenerationId, GenerationFacts>,
    /// Stored BMC rows (see [`super::bmc`]).
    pub bmcs: BTreeMap<super::bmc::BmcOwner, super::bmc::CurrentBmc>,
}

#[derive(Debug, Clone, Default)]
pub struct CurrentGroup {
    pub description: String,
    pub selector: Option<Selector>,
    pub variables: Value,
    /// The pointer set last.
    pub pointer: Option<GenerationId>,
    /// Its generation per architecture slot.
    pub by_arch: BTreeMap<Slot, GenerationId>,
    /// The rollout holding the group (running, paused or stopped): id, target.
    pub holding: Option<(i64, GenerationId)>,
}

#[derive(Debug, Clone)]
pub struct CurrentMachine {
    pub hostname: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub assigned: Option<String>,
    pub pin: Option<GenerationId>,
    pub kind: MachineKind,
    /// The CPU its loader runs, when known.
    pub arch: Option<Cpu>,
}

impl Default for CurrentMachine {
    fn default() -> Self {
        Self {
            hostname: None,
            labels: BTreeMap::new(),
            assigned: None,
            pin: None,
            kind: MachineKind::Server,
            arch: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationFacts {
    pub arch: Cpu,
    pub installer: bool,
}

impl GenerationFacts {
    pub fn slot(&self) -> Slot {
        Slot::new(self.arch, self.installer)
    }
}

/// Why a document cannot be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A value is malformed (400).
    Invalid,
    /// A value names something the server does not have (422).
    UnknownReference,
    /// The server's state forbids it now (409).
    Conflict,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct PlanError {
    pub kind: ErrorKind,
    /// The field path in the document (`groups.web.stream`).
    pub path: String,
    pub message: String,
}

fn invalid(path: impl Into<String>, message: impl Into<String>) -> PlanError {
    PlanError {
        kind: ErrorKind::Invalid,
        path: path.into(),
        message: message.into(),
    }
}

fn unknown(path: impl Into<String>, message: impl Into<String>) -> PlanError {
    PlanError {
        kind: ErrorKind::UnknownReference,
        path: path.into(),
        message: message.into(),
    }
}

/// One field of a resource, before and after.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldDiff {
    pub field: &'static str,
    pub from: Value,
    pub to: Value,
}

/// What a change does when applied.
#[derive(Debug, Clone)]
pub enum Action {
    /// `more`: pointers for further architecture slots, set after
    /// `change` (whose `generation` is the first).
    CreateGroup {
        name: String,
        change: GroupChange,
        more: Vec<GenerationId>,
    },
    UpdateGroup {
        name: String,
        change: GroupChange,
        more: Vec<GenerationId>,
    },
    UpdateMachine {
        mac: MacAddr,
        change: MachineChange,
    },
    StartRollout(StartRollout),
    /// A group's or a machine's BMC fields (`None`: removed).
    SetBmc {
        owner: super::bmc::BmcOwner,
        to: Option<super::BmcSpec>,
    },
}

/// One change, as shown and as applied.
#[derive(Debug, Clone)]
pub struct Change {
    /// The document path it comes from (`groups.web`).
    pub path: String,
    /// One line for people: `+ group web: …`, `~ machine …: …`,
    /// `rollout group web: …`.
    pub text: String,
    pub fields: Vec<FieldDiff>,
    /// For a rollout: how many machines it would move.
    pub members: Option<usize>,
    pub action: Action,
}

impl Change {
    /// `create`, `update` or `rollout`.
    pub fn op(&self) -> &'static str {
        match self.action {
            Action::CreateGroup { .. } => "create",
            Action::UpdateGroup { .. } | Action::UpdateMachine { .. } | Action::SetBmc { .. } => {
                "update"
            }
            Action::StartRollout(_) => "rollout",
        }
    }

    /// `group` or `machine`, and its name.
    pub fn resource(&self) -> (&'static str, String) {
        match &self.action {
            Action::CreateGroup { name, .. } | Action::UpdateGroup { name, .. } => {
                ("group", name.clone())
            }
            Action::StartRollout(r) => ("group", r.group.clone()),
            Action::UpdateMachine { mac, .. } => ("machine", mac.to_string()),
            Action::SetBmc { owner, .. } => match owner {
                super::bmc::BmcOwner::Group(g) => ("group", g.clone()),
                super::bmc::BmcOwner::Machine(m) => ("machine", m.to_string()),
            },
        }
    }
}

// ---------------------------------------------------------------------------
// Validation: every value and every reference, before anything is planned.
// ---------------------------------------------------------------------------

/// A group's fields, checked.
struct CheckedGroup<'a> {
    name: &'a str,
    spec: &'a GroupSpec,
    selector: Option<Option<Selector>>,
    /// The generations it should boot, one per architecture slot, each
    /// with its path in the document.
    targets: Vec<(String, GenerationId, GenerationFacts)>,
    rollout: Rollout,
}

/// A rollout strategy, checked.
#[derive(Debug, Clone)]
struct Rollout {
    strategy: Strategy,
    timeout_ms: i64,
    timeout_text: String,
    require: Option<Require>,
    rollback: bool,
    on_bmc_failure: crate::rollout::OnBmcFailure,
}

fn generation_ref(
    cur: &Current,
    path: &str,
    stream: &str,
    number: i64,
) -> Result<(GenerationId, GenerationFacts), PlanError> {
    check_group_name(stream)
        .map_err(|e| invalid(format!("{path}.stream"), format!("stream {e}")))?;
    let id = GenerationId::new(stream, number);
    if let Some(facts) = cur.generations.get(&id) {
        return Ok((id, facts.clone()));
    }
    let latest = cur
        .generations
        .keys()
        .filter(|g| g.stream == stream)
        .map(|g| g.number)
        .max();
    Err(match latest {
        None => unknown(
            format!("{path}.stream"),
            format!("stream {stream:?} does not exist (import an image into it first)"),
        ),
        Some(latest) => unknown(
            format!("{path}.generation"),
            format!("{id} does not exist (the latest of {stream} is {latest})"),
        ),
    })
}

fn check_rollout(path: &str, spec: Option<&RolloutSpec>) -> Result<Rollout, PlanError> {
    let default = RolloutSpec::default();
    let r = spec.unwrap_or(&default);
    let p = |f: &str| format!("{path}.rollout.{f}");
    let strategy = match r.strategy.as_deref().unwrap_or("canary") {
        "canary" => Strategy::Canary {
            canary: match &r.canary {
                None => Canary::Count(1),
                Some(v) => {
                    crate::rollout::canary_from_json(v).map_err(|e| invalid(p("canary"), e))?
                }
            },
            steps: match &r.steps {
                None => Vec::new(),
                Some(v) => {
                    crate::rollout::steps_from_json(v).map_err(|e| invalid(p("steps"), e))?
                }
            },
        },
        "blue_green" | "blue-green" => {
            if r.canary.is_some() || r.steps.is_some() {
                return Err(invalid(
                    p("strategy"),
                    "blue_green takes no canary or steps (the idle half goes first)",
                ));
            }
            Strategy::BlueGreen
        }
        other => {
            return Err(invalid(
                p("strategy"),
                format!("{other:?}: expected canary or blue_green"),
            ))
        }
    };
    let timeout_text = r.timeout.clone().unwrap_or_else(|| "10m".into());
    let timeout = humantime::parse_duration(timeout_text.trim()).map_err(|e| {
        invalid(
            p("timeout"),
            format!("{timeout_text:?} is not a duration like \"10m\": {e}"),
        )
    })?;
    let timeout_ms = i64::try_from(timeout.as_millis())
        .ok()
        .filter(|ms| *ms > 0)
        .ok_or_else(|| invalid(p("timeout"), format!("{timeout_text:?} is out of range")))?;
    let require = r
        .require
        .as_deref()
        .map(str::parse::<Require>)
        .transpose()
        .map_err(|e| invalid(p("require"), e))?;
    let on_bmc_failure = match r.on_bmc_failure.as_deref() {
        None | Some("wait") => crate::rollout::OnBmcFailure::Wait,
        Some("fail") => crate::rollout::OnBmcFailure::Fail,
        Some(other) => {
            return Err(invalid(
                p("on_bmc_failure"),
                format!("{other:?} is not wait or fail"),
            ))
        }
    };
    Ok(Rollout {
        strategy,
        timeout_ms,
        timeout_text,
        require,
        rollback: r.rollback.unwrap_or(true),
        on_bmc_failure,
    })
}

fn check_group<'a>(
    cur: &Current,
    name: &'a str,
    spec: &'a GroupSpec,
) -> Result<CheckedGroup<'a>, PlanError> {
    let path = group_path(name, None);
    check_group_name(name).map_err(|e| invalid(&path, format!("group {e}")))?;
    if let Some(d) = &spec.description {
        if d.chars().count() > 1024 || d.chars().any(|c| c.is_control() && c != '\n') {
            return Err(invalid(
                format!("{path}.description"),
                "at most 1024 characters, no control characters but newlines",
            ));
        }
    }
    let selector = match &spec.selector {
        Some(Some(text)) => Some(Some(check_selector(&path, name, text)?)),
        Some(None) => Some(None),
        None => None,
    };
    if let Some(vars) = &spec.variables {
        check_group_variables(&path, vars)?;
    }
    Ok(CheckedGroup {
        name,
        spec,
        selector,
        targets: group_targets(cur, &path, spec)?,
        rollout: check_rollout(&path, spec.rollout.as_ref())?,
    })
}

fn check_selector(path: &str, group: &str, text: &str) -> Result<Selector, PlanError> {
    if group == DEFAULT_GROUP {
        return Err(invalid(
            format!("{path}.selector"),
            "default holds the machines no group claims; it takes no selector",
        ));
    }
    text.parse()
        .map_err(|e: crate::boot::select::SelectorError| {
            invalid(format!("{path}.selector"), e.to_string())
        })
}

/// The variables the server itself reads (`loader`, `identity`) must say
/// something it understands; the rest are the templates' business.
fn check_group_variables(
    path: &str,
    vars: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), PlanError> {
    if let Some(loader) = vars.get("loader") {
        if loader
            .as_str()
            .and_then(|l| l.parse::<Loader>().ok())
            .is_none()
        {
            return Err(invalid(
                format!("{path}.variables.loader"),
                format!("{loader} is not a loader (\"ipxe\" or \"grub\")"),
            ));
        }
    }
    if let Some(identity) = vars.get("identity") {
        if !matches!(identity.as_str(), Some("port" | "mac")) {
            return Err(invalid(
                format!("{path}.variables.identity"),
                format!("{identity} is not an identity (\"port\" or \"mac\")"),
            ));
        }
    }
    Ok(())
}

/// The generations a group's spec names (`stream` and `generation`, or
/// `generations`), each existing, at most one per slot.
fn group_targets(
    cur: &Current,
    path: &str,
    spec: &GroupSpec,
) -> Result<Vec<(String, GenerationId, GenerationFacts)>, PlanError> {
    let mut targets: Vec<(String, GenerationId, GenerationFacts)> = Vec::new();
    match (&spec.stream, spec.generation, &spec.generations) {
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
            return Err(invalid(
                format!("{path}.generations"),
                "give stream and generation, or generations, not both",
            ))
        }
        (Some(stream), Some(n), None) => {
            let (id, facts) = generation_ref(cur, path, stream, n)?;
            targets.push((format!("{path}.generation"), id, facts));
        }
        (None, None, Some(list)) => {
            for (i, g) in list.iter().enumerate() {
                let p = format!("{path}.generations.{i}");
                let (id, facts) = generation_ref(cur, &p, &g.stream, g.generation)?;
                let slot = facts.slot();
                if let Some((_, other, _)) = targets.iter().find(|(_, _, f)| f.slot() == slot) {
                    return Err(invalid(
                        p,
                        format!("{id} and {other} are both {slot} images; a group boots one generation per architecture"),
                    ));
                }
                targets.push((p, id, facts));
            }
        }
        (None, None, None) => {}
        (Some(_), None, None) => {
            return Err(invalid(
                format!("{path}.stream"),
                "stream without generation",
            ))
        }
        (None, Some(_), None) => {
            return Err(invalid(
                format!("{path}.generation"),
                "generation without stream",
            ))
        }
    }
    Ok(targets)
}

fn check_machine(
    cur: &Current,
    doc: &Document,
    key: &str,
    spec: &MachineSpec,
) -> Result<(MacAddr, MachineChange), PlanError> {
    let path = machine_path(key, None);
    let mac: MacAddr = key
        .parse()
        .map_err(|e: crate::domain::MacParseError| invalid(&path, e.to_string()))?;
    if !cur.machines.contains_key(&mac) {
        return Err(unknown(
            &path,
            format!("machine {mac} is not known to the server (it is registered when it first DHCPs or boots)"),
        ));
    }
    if let Some(Some(h)) = &spec.hostname {
        check_hostname(h).map_err(|e| invalid(format!("{path}.hostname"), e))?;
    }
    if let Some(labels) = &spec.labels {
        for (k, v) in labels {
            let p = format!("{path}.labels.{k}");
            check_label_part(k).map_err(|e| invalid(&p, e))?;
            check_label_part(v).map_err(|e| invalid(&p, e))?;
        }
    }
    if let Some(Some(g)) = &spec.group {
        let p = format!("{path}.group");
        check_group_name(g).map_err(|e| invalid(&p, format!("group {e}")))?;
        if !doc.groups.contains_key(g) && !cur.groups.contains_key(g) {
            return Err(unknown(
                p,
                format!("group {g} is neither in the file nor on the server"),
            ));
        }
    }
    let pin = match &spec.pin {
        Some(Some(p)) => Some(Some(
            generation_ref(cur, &format!("{path}.pin"), &p.stream, p.generation)?.0,
        )),
        Some(None) => Some(None),
        None => None,
    };
    let kind = match &spec.kind {
        Some(k) => Some(
            k.parse::<MachineKind>()
                .map_err(|e| invalid(format!("{path}.kind"), e.to_string()))?,
        ),
        None => None,
    };
    Ok((
        mac,
        MachineChange {
            hostname: spec.hostname.clone(),
            labels: spec.labels.clone(),
            group: spec.group.clone(),
            pin,
            kind,
        },
    ))
}

// ---------------------------------------------------------------------------
// The plan
// ---------------------------------------------------------------------------

fn gen_json(g: Option<&GenerationId>) -> Value {
    match g {
        Some(g) => json!({ "stream": g.stream, "generation": g.number }),
        None => Value::Null,
    }
}

fn shown(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => format!("{s:?}"),
        Value::Object(o) if o.contains_key("stream") && o.contains_key("generation") => {
            format!(
                "{} gen {}",
                o["stream"].as_str().unwrap_or("?"),
                o["generation"]
            )
        }
        other => other.to_string(),
    }
}

/// `selector "a" -> "b"`, `description "x"` (on create).
fn describe(fields: &[FieldDiff], create: bool) -> String {
    fields
        .iter()
        .map(|f| {
            if f.field == "labels" {
                return format!("labels {}", label_diff(&f.from, &f.to));
            }
            if create {
                format!("{} {}", f.field, shown(&f.to))
            } else {
                format!("{} {} -> {}", f.field, shown(&f.from), shown(&f.to))
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `+rack=r1 -old=x ~role=a->b`.
fn label_diff(from: &Value, to: &Value) -> String {
    let empty = serde_json::Map::new();
    let from = from.as_object().unwrap_or(&empty);
    let to = to.as_object().unwrap_or(&empty);
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let mut parts = Vec::new();
    for (k, v) in to {
        match from.get(k) {
            None => parts.push(format!("+{k}={}", text(v))),
            Some(old) if old != v => parts.push(format!("~{k}={}->{}", text(old), text(v))),
            Some(_) => {}
        }
    }
    for (k, v) in from {
        if !to.contains_key(k) {
            parts.push(format!("-{k}={}", text(v)));
        }
    }
    parts.join(" ")
}

fn strategy_text(r: &Rollout) -> String {
    let mut parts = match &r.strategy {
        Strategy::BlueGreen => vec!["blue/green".to_string()],
        Strategy::Canary { canary, steps } => {
            let canary = match canary {
                Canary::Count(n) => n.to_string(),
                Canary::Percent(p) => format!("{p}%"),
                Canary::Machines(m) => m
                    .iter()
                    .map(MacAddr::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            };
            let mut v = vec![format!("canary {canary}")];
            if !steps.is_empty() {
                v.push(format!(
                    "steps {}",
                    steps
                        .iter()
                        .map(|s| format!("{s}%"))
                        .collect::<Vec<_>>()
                        .join(",")
                ));
            }
            v
        }
    };
    parts.push(format!("timeout {}", r.timeout_text.trim()));
    if let Some(q) = &r.require {
        parts.push(format!("require {}={}", q.key, q.value));
    }
    if !r.rollback {
        parts.push("no rollback".into());
    }
    if r.on_bmc_failure == crate::rollout::OnBmcFailure::Fail {
        parts.push("fail on BMC failure".into());
    }
    parts.join(", ")
}

/// The machines as they will be once the document's edits are applied.
fn machines_after(
    cur: &Current,
    edits: &BTreeMap<MacAddr, MachineChange>,
) -> BTreeMap<MacAddr, CurrentMachine> {
    let mut all = cur.machines.clone();
    for (mac, c) in edits {
        let Some(m) = all.get_mut(mac) else { continue };
        if let Some(l) = &c.labels {
            m.labels = l.clone();
        }
        if let Some(g) = &c.group {
            m.assigned = g.clone();
        }
        if let Some(p) = &c.pin {
            m.pin = p.clone();
        }
        if let Some(k) = c.kind {
            m.kind = k;
        }
    }
    all
}

/// Computes the changes that make `cur` match `doc`: group creations and
/// updates (pointers that move at once), machine edits, then the rollouts
/// for pointers whose groups have members to move.
pub fn plan(doc: &Document, cur: &Current) -> Result<Vec<Change>, PlanError> {
    let (groups, machine_edits) = check_document(doc, cur)?;
    let members = Members::after(cur, &groups, &machine_edits);
    let mut changes = Vec::new();
    let mut rollouts = Vec::new();
    for g in &groups {
        match cur.groups.get(g.name) {
            None => changes.push(create_group(g)),
            Some(current) => {
                let (update, rollout) = update_group(cur, current, g, &members)?;
                changes.extend(update);
                rollouts.extend(rollout);
            }
        }
    }
    for (mac, edit) in machine_edits {
        changes.extend(machine_change(mac, &cur.machines[&mac], &edit));
    }
    let bmcs = super::bmc::changes(doc, &cur.bmcs).map_err(|(path, m)| invalid(path, m))?;
    changes.extend(bmcs.into_iter().map(|b| {
        Change {
            path: b.path,
            text: b.text,
            fields: b
                .fields
                .into_iter()
                .map(|(field, from, to)| FieldDiff { field, from, to })
                .collect(),
            members: None,
            action: Action::SetBmc {
                owner: b.owner,
                to: b.to,
            },
        }
    }));
    changes.extend(rollouts);
    Ok(changes)
}

/// Every group and machine of the document, checked against `cur`; a
/// machine listed twice is refused.
fn check_document<'a>(
    doc: &'a Document,
    cur: &Current,
) -> Result<(Vec<CheckedGroup<'a>>, BTreeMap<MacAddr, MachineChange>), PlanError> {
    let groups = doc
        .groups
        .iter()
        .map(|(name, spec)| check_group(cur, name, spec))
        .collect::<Result<Vec<_>, _>>()?;
    let mut machine_edits = BTreeMap::new();
    for (key, spec) in &doc.machines {
        let (mac, change) = check_machine(cur, doc, key, spec)?;
        if machine_edits.insert(mac, change).is_some() {
            return Err(invalid(
                machine_path(key, None),
                format!("machine {mac} is listed twice"),
            ));
        }
    }
    Ok((groups, machine_edits))
}

/// Group memberships as they will be once the document is applied
/// (selectors and machine edits included): who a rollout would move.
struct Members<'a> {
    selectors: BTreeMap<&'a str, Option<Selector>>,
    after: BTreeMap<MacAddr, CurrentMachine>,
}

impl<'a> Members<'a> {
    fn after(
        cur: &'a Current,
        groups: &[CheckedGroup<'a>],
        edits: &BTreeMap<MacAddr, MachineChange>,
    ) -> Self {
        let mut selectors: BTreeMap<&str, Option<Selector>> = cur
            .groups
            .iter()
            .map(|(n, g)| (n.as_str(), g.selector.clone()))
            .collect();
        for g in groups {
            match &g.selector {
                Some(s) => {
                    selectors.insert(g.name, s.clone());
                }
                None => {
                    selectors.entry(g.name).or_insert(None);
                }
            }
        }
        Self {
            selectors,
            after: machines_after(cur, edits),
        }
    }

    /// Machines of `group` that would follow its pointer to `to`.
    fn count(&self, group: &str, to: &GenerationFacts) -> usize {
        let claims: Vec<Claim<'_>> = self
            .selectors
            .iter()
            .filter_map(|(g, s)| s.as_ref().map(|selector| Claim { group: g, selector }))
            .collect();
        self.after
            .values()
            .filter(|m| {
                membership::resolve(m.assigned.as_deref(), &m.labels, claims.iter().copied())
                    .group()
                    == group
                    && crate::rollout::Member {
                        pinned: m.pin.is_some(),
                        switch: m.kind == MachineKind::Switch,
                        arch: m.arch,
                    }
                    .follows(to.slot())
            })
            .count()
    }
}

/// A group the document adds.
fn create_group(g: &CheckedGroup<'_>) -> Change {
    let mut fields = Vec::new();
    if let Some(d) = &g.spec.description {
        fields.push(FieldDiff {
            field: "description",
            from: Value::Null,
            to: json!(d),
        });
    }
    if let Some(Some(s)) = &g.selector {
        fields.push(FieldDiff {
            field: "selector",
            from: Value::Null,
            to: json!(s.to_string()),
        });
    }
    if let Some(v) = &g.spec.variables {
        fields.push(FieldDiff {
            field: "variables",
            from: Value::Null,
            to: Value::Object(v.clone()),
        });
    }
    for (_, id, _) in &g.targets {
        fields.push(FieldDiff {
            field: "generation",
            from: Value::Null,
            to: gen_json(Some(id)),
        });
    }
    let text = if fields.is_empty() {
        format!("+ group {}", g.name)
    } else {
        format!("+ group {}: {}", g.name, describe(&fields, true))
    };
    Change {
        path: group_path(g.name, None),
        text,
        fields,
        members: None,
        action: Action::CreateGroup {
            name: g.name.to_string(),
            change: GroupChange {
                description: g.spec.description.clone(),
                selector: g.selector.clone().flatten().map(Some),
                variables: g.spec.variables.clone().map(Value::Object),
                generation: g.targets.first().map(|(_, id, _)| id.clone()),
            },
            more: g
                .targets
                .iter()
                .skip(1)
                .map(|(_, id, _)| id.clone())
                .collect(),
        },
    }
}

/// A group the server has: the fields that differ and the pointers that
/// move at once (one change, if any), and the rollout a pointer with
/// members to move needs (at most one: one rollout at a time holds a
/// group).
fn update_group(
    cur: &Current,
    current: &CurrentGroup,
    g: &CheckedGroup<'_>,
    members: &Members<'_>,
) -> Result<(Option<Change>, Option<Change>), PlanError> {
    let mut fields = Vec::new();
    let mut change = GroupChange::default();
    if let Some(d) = &g.spec.description {
        if *d != current.description {
            fields.push(FieldDiff {
                field: "description",
                from: json!(current.description),
                to: json!(d),
            });
            change.description = Some(d.clone());
        }
    }
    if let Some(s) = &g.selector {
        if *s != current.selector {
            let text =
                |s: &Option<Selector>| s.as_ref().map_or(Value::Null, |s| json!(s.to_string()));
            fields.push(FieldDiff {
                field: "selector",
                from: text(&current.selector),
                to: text(s),
            });
            change.selector = Some(s.clone());
        }
    }
    if let Some(v) = &g.spec.variables {
        let v = Value::Object(v.clone());
        let now = match &current.variables {
            Value::Null => json!({}),
            other => other.clone(),
        };
        if v != now {
            fields.push(FieldDiff {
                field: "variables",
                from: now,
                to: v.clone(),
            });
            change.variables = Some(v);
        }
    }
    let (moves, rollout) = plan_pointers(cur, current, g, members, &mut fields)?;
    let mut moves = moves.into_iter();
    change.generation = moves.next();
    let more: Vec<GenerationId> = moves.collect();
    let update = (!fields.is_empty()).then(|| Change {
        path: group_path(g.name, None),
        text: format!("~ group {}: {}", g.name, describe(&fields, false)),
        fields,
        members: None,
        action: Action::UpdateGroup {
            name: g.name.to_string(),
            change,
            more,
        },
    });
    Ok((update, rollout))
}

/// For each slot the document points `g` at: nothing (already there, or on
/// its way), a pointer that moves at once (no member would move; its field
/// diff goes to `fields`), or a rollout. Refuses what a rollout in progress
/// or a second rollout would hold up.
fn plan_pointers(
    cur: &Current,
    current: &CurrentGroup,
    g: &CheckedGroup<'_>,
    members: &Members<'_>,
    fields: &mut Vec<FieldDiff>,
) -> Result<(Vec<GenerationId>, Option<Change>), PlanError> {
    let mut moves: Vec<GenerationId> = Vec::new();
    let mut rollout = None;
    let slot_of = |id: &GenerationId| cur.generations.get(id).map(|f| f.slot());
    let gf = GroupFacts {
        name: g.name.to_string(),
        pointer: current.pointer.clone(),
        by_arch: current.by_arch.clone().into_iter().collect(),
    };
    for (tpath, to, facts) in &g.targets {
        let slot = facts.slot();
        let from = gf
            .pointer_for(Some(facts.arch), facts.installer)
            .filter(|id| slot_of(id) == Some(slot))
            .cloned();
        let busy = |why: String| PlanError {
            kind: ErrorKind::Conflict,
            path: tpath.clone(),
            message: why,
        };
        match &current.holding {
            // Already on its way there.
            Some((_, held)) if held == to => continue,
            Some((id, held)) if slot_of(held) == Some(slot) => {
                return Err(busy(format!(
                    "group {} has rollout {id} toward {held} in progress; finish or abort it before moving the group to {to}",
                    g.name
                )))
            }
            _ => {}
        }
        if from.as_ref() == Some(to) {
            continue;
        }
        let count = match &from {
            Some(_) => members.count(g.name, facts),
            None => 0,
        };
        let Some(from) = from.clone().filter(|_| count > 0) else {
            fields.push(FieldDiff {
                field: "generation",
                from: gen_json(from.as_ref()),
                to: gen_json(Some(to)),
            });
            moves.push(to.clone());
            continue;
        };
        if let Some((id, held)) = &current.holding {
            return Err(busy(format!(
                "group {} has rollout {id} toward {held} in progress, and one rollout at a time holds a group; finish or abort it before rolling out {to}",
                g.name
            )));
        }
        if rollout.is_some() {
            return Err(busy(format!(
                "this would start a second rollout on group {} (one at a time holds a group): roll out one architecture, then the other",
                g.name
            )));
        }
        rollout = Some(rollout_change(g, tpath, &from, to, count));
    }
    Ok((moves, rollout))
}

/// The rollout that moves `g`'s `count` members from `from` to `to`.
fn rollout_change(
    g: &CheckedGroup<'_>,
    path: &str,
    from: &GenerationId,
    to: &GenerationId,
    count: usize,
) -> Change {
    let r = &g.rollout;
    Change {
        path: path.to_string(),
        text: format!(
            "rollout group {}: {from} -> {to} ({}; {count} machine(s))",
            g.name,
            strategy_text(r)
        ),
        fields: vec![FieldDiff {
            field: "generation",
            from: gen_json(Some(from)),
            to: gen_json(Some(to)),
        }],
        members: Some(count),
        action: Action::StartRollout(StartRollout {
            group: g.name.to_string(),
            to: to.clone(),
            strategy: r.strategy.clone(),
            timeout_ms: r.timeout_ms,
            require: r.require.clone(),
            rollback: r.rollback,
            on_bmc_failure: r.on_bmc_failure,
        }),
    }
}

/// A machine's edit, reduced to the fields that differ (`None`: nothing).
fn machine_change(mac: MacAddr, m: &CurrentMachine, edit: &MachineChange) -> Option<Change> {
    let mut fields = Vec::new();
    let mut change = MachineChange::default();
    if let Some(h) = &edit.hostname {
        if *h != m.hostname {
            fields.push(FieldDiff {
                field: "hostname",
                from: json!(m.hostname),
                to: json!(h),
            });
            change.hostname = Some(h.clone());
        }
    }
    if let Some(l) = &edit.labels {
        if *l != m.labels {
            fields.push(FieldDiff {
                field: "labels",
                from: json!(m.labels),
                to: json!(l),
            });
            change.labels = Some(l.clone());
        }
    }
    if let Some(g) = &edit.group {
        if *g != m.assigned {
            fields.push(FieldDiff {
                field: "group",
                from: json!(m.assigned),
                to: json!(g),
            });
            change.group = Some(g.clone());
        }
    }
    if let Some(p) = &edit.pin {
        if *p != m.pin {
            fields.push(FieldDiff {
                field: "pin",
                from: gen_json(m.pin.as_ref()),
                to: gen_json(p.as_ref()),
            });
            change.pin = Some(p.clone());
        }
    }
    if let Some(k) = edit.kind {
        if k != m.kind {
            fields.push(FieldDiff {
                field: "kind",
                from: json!(m.kind.as_str()),
                to: json!(k.as_str()),
            });
            change.kind = Some(k);
        }
    }
    (!fields.is_empty()).then(|| Change {
        path: machine_path(&mac.to_string(), None),
        text: format!("~ machine {mac}: {}", describe(&fields, false)),
        fields,
        members: None,
        action: Action::UpdateMachine { mac, change },
    })
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
