//! The BMC part of a plan: `bmc` of groups and machines in the document
//! against the rows the server holds. Pure like the rest of the plan: the
//! server opens stored passwords and hands over only their digests, so a
//! password in the document is compared without the plan holding a stored
//! one.
//!
//! A listed `bmc` replaces the stored fields whole, except the password,
//! which is kept when the document gives none; `null` removes the row.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{group_path, machine_path, BmcSpec, Document};
use crate::bmc::{BootTarget, Protocol};
use crate::domain::MacAddr;

/// Whose BMC.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum BmcOwner {
    Group(String),
    Machine(MacAddr),
}

impl BmcOwner {
    fn noun(&self) -> String {
        match self {
            BmcOwner::Group(g) => format!("group {g}"),
            BmcOwner::Machine(m) => format!("machine {m}"),
        }
    }
}

/// A stored BMC as the plan sees it (rows that only remember a power
/// state are not handed over).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CurrentBmc {
    pub protocol: Option<String>,
    pub address: Option<String>,
    pub system_id: Option<String>,
    pub username: Option<String>,
    pub boot_target: Option<String>,
    pub verify_tls: Option<bool>,
    /// sha256 (hex) of the stored password, opened by the server.
    pub password_sha: Option<String>,
}

/// One BMC to change, for the plan to show and apply.
#[derive(Debug, Clone)]
pub struct BmcChange {
    pub owner: BmcOwner,
    /// Where in the document (`machines.….bmc`).
    pub path: String,
    /// The change in one line.
    pub text: String,
    /// (field, before, after); a password only as `"set"` / `"new"`.
    pub fields: Vec<(&'static str, Value, Value)>,
    /// `None`: remove the row.
    pub to: Option<BmcSpec>,
}

/// A value refused: its path in the document, and why.
pub type Refused = (String, String);

fn invalid(path: String, message: impl Into<String>) -> Refused {
    (path, message.into())
}

/// The digest the plan compares passwords by.
pub fn password_sha(password: &str) -> String {
    hex::encode(Sha256::digest(password.as_bytes()))
}

/// The BMC changes of the document against the stored rows, groups
/// first, each checked.
pub fn changes(
    doc: &Document,
    stored: &BTreeMap<BmcOwner, CurrentBmc>,
) -> Result<Vec<BmcChange>, Refused> {
    let mut wanted: BTreeMap<BmcOwner, (String, Option<&BmcSpec>)> = BTreeMap::new();
    for (name, g) in &doc.groups {
        if let Some(b) = &g.bmc {
            wanted.insert(
                BmcOwner::Group(name.clone()),
                (group_path(name, Some("bmc")), b.as_ref()),
            );
        }
    }
    for (key, m) in &doc.machines {
        if let (Some(b), Ok(mac)) = (&m.bmc, key.parse::<MacAddr>()) {
            wanted.insert(
                BmcOwner::Machine(mac),
                (machine_path(key, Some("bmc")), b.as_ref()),
            );
        }
    }
    let mut out = Vec::new();
    for (owner, (path, spec)) in wanted {
        let stored = stored.get(&owner);
        if let Some(change) = change(owner, path, spec, stored)? {
            out.push(change);
        }
    }
    Ok(out)
}

fn change(
    owner: BmcOwner,
    path: String,
    spec: Option<&BmcSpec>,
    stored: Option<&CurrentBmc>,
) -> Result<Option<BmcChange>, Refused> {
    let Some(spec) = spec else {
        return Ok(stored.map(|_| BmcChange {
            text: format!("~ {}: bmc removed", owner.noun()),
            path,
            fields: vec![("bmc", json!("set"), Value::Null)],
            owner,
            to: None,
        }));
    };
    check(&path, spec)?;
    let empty = CurrentBmc::default();
    let now = stored.unwrap_or(&empty);
    let text = |v: &Option<String>| v.as_ref().map_or(Value::Null, |s| json!(s));
    let pairs: [(&'static str, Value, Value); 6] = [
        ("bmc.protocol", text(&now.protocol), text(&spec.protocol)),
        ("bmc.address", text(&now.address), text(&spec.address)),
        ("bmc.system_id", text(&now.system_id), text(&spec.system_id)),
        ("bmc.username", text(&now.username), text(&spec.username)),
        (
            "bmc.boot_target",
            text(&now.boot_target),
            text(&spec.boot_target),
        ),
        (
            "bmc.verify_tls",
            json!(now.verify_tls),
            json!(spec.verify_tls),
        ),
    ];
    let mut fields: Vec<(&'static str, Value, Value)> = pairs
        .into_iter()
        .filter(|(_, from, to)| from != to)
        .collect();
    let new_password = spec
        .password
        .as_deref()
        .is_some_and(|p| now.password_sha.as_deref() != Some(password_sha(p).as_str()));
    if new_password {
        // Never the password itself, in a plan or anywhere else.
        let from = if now.password_sha.is_some() {
            json!("set")
        } else {
            Value::Null
        };
        fields.push(("bmc.password", from, json!("new")));
    }
    if fields.is_empty() {
        return Ok(None);
    }
    let shown: Vec<String> = fields
        .iter()
        .map(|(field, from, to)| format!("{field} {} -> {}", brief(from), brief(to)))
        .collect();
    let sign = if stored.is_some() { "~" } else { "+" };
    Ok(Some(BmcChange {
        text: format!("{sign} {}: {}", owner.noun(), shown.join(", ")),
        path,
        fields,
        owner,
        to: Some(spec.clone()),
    }))
}

fn brief(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

/// What the API would refuse in a `PUT …/bmc`, refused here with the path.
fn check(path: &str, spec: &BmcSpec) -> Result<(), Refused> {
    if spec.password_file.is_some() || spec.password_env.is_some() {
        return Err(invalid(
            format!("{path}.password_file"),
            "read by `ironboot apply`, which sends the password itself",
        ));
    }
    let protocol = match spec.protocol.as_deref() {
        None => None,
        Some(p) => Some(Protocol::parse(p).ok_or_else(|| {
            invalid(
                format!("{path}.protocol"),
                format!("{p:?} is not redfish or ipmi"),
            )
        })?),
    };
    let boot_target = match spec.boot_target.as_deref() {
        None => None,
        Some(t) => Some(BootTarget::parse(t).ok_or_else(|| {
            invalid(
                format!("{path}.boot_target"),
                format!("{t:?} is not pxe or http"),
            )
        })?),
    };
    crate::bmc::check(&crate::bmc::Fields {
        protocol,
        address: spec.address.as_deref(),
        system_id: spec.system_id.as_deref(),
        username: spec.username.as_deref(),
        password: spec.password.as_deref(),
        boot_target,
    })
    .map_err(|(field, message)| invalid(format!("{path}.{field}"), message))
}
