//! Power and boot control through baseboard management controllers:
//! Redfish ([`redfish`]) and IPMI over LAN ([`ipmi`], through `ipmitool`).
//!
//! A machine has a BMC when its own row or its group's (in `bmcs`, see
//! `store::bmcs`) gives a protocol, an address and credentials; the
//! machine's fields win over the group's one by one ([`resolve`]), so a
//! group can hold what a rack shares (a Redfish aggregator's address and
//! login) and each machine only what is its own.
//!
//! Every operation goes through [`service::Bmcs`]: at most
//! `[bmc] concurrency` at once, each call bounded by `[bmc] timeout`,
//! retried with doubling backoff when the failure can pass (a timeout, a
//! refused connection, a 5xx), never when it cannot (wrong credentials, an
//! operation the BMC does not offer), and every attempt and outcome
//! recorded as an event. Passwords are sealed at rest ([`seal`]), never
//! returned by the API, and never logged or put in an event.
//!
//! The reset type is chosen from what the BMC says it allows
//! ([`redfish::choose_reset`]), and a machine that is off is powered on
//! rather than reset (BMCs refuse to reset what is off).

pub mod ipmi;
pub mod redfish;
pub mod seal;
pub mod service;

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::store::bmcs::BmcRow;

/// How ironboot talks to a BMC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Redfish,
    Ipmi,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Redfish => "redfish",
            Protocol::Ipmi => "ipmi",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "redfish" => Some(Protocol::Redfish),
            "ipmi" => Some(Protocol::Ipmi),
            _ => None,
        }
    }
}

/// Which network boot a one-time override asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BootTarget {
    /// PXE (Redfish `Pxe`, IPMI `bootdev pxe`).
    Pxe,
    /// UEFI HTTP boot (Redfish `UefiHttp`; IPMI has none).
    Http,
}

impl BootTarget {
    pub fn as_str(self) -> &'static str {
        match self {
            BootTarget::Pxe => "pxe",
            BootTarget::Http => "http",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pxe" => Some(BootTarget::Pxe),
            "http" => Some(BootTarget::Http),
            _ => None,
        }
    }
}

/// What can be asked of a BMC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    /// Read the power state.
    Status,
    On,
    /// Off at once.
    Off,
    /// Ask the OS to shut down (ACPI).
    GracefulOff,
    /// Off, then on.
    Cycle,
    /// A hard reset (warm).
    Reset,
    /// Set the next boot (once) to the network, then reset (or power on
    /// when off): how a rollout reboots a machine into its new generation.
    Netboot,
    /// Set the next boot (once) to the network, nothing more.
    NetbootNext,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Status => "status",
            Op::On => "on",
            Op::Off => "off",
            Op::GracefulOff => "graceful-off",
            Op::Cycle => "cycle",
            Op::Reset => "reset",
            Op::Netboot => "netboot",
            Op::NetbootNext => "netboot-next",
        }
    }
}

/// The power state a BMC reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Power {
    On,
    Off,
}

impl Power {
    pub fn as_str(self) -> &'static str {
        match self {
            Power::On => "on",
            Power::Off => "off",
        }
    }
}

/// A BMC ready to be called: every field resolved, the password open.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub protocol: Protocol,
    /// Redfish: a base URL (`https://10.0.0.5`, `http://host:8000`; no
    /// scheme means https). IPMI: `host` or `host:port` (`[v6]:port`).
    pub address: String,
    /// Redfish: the system's id under `/redfish/v1/Systems/`; absent, the
    /// only system, or the one with the machine's MAC.
    pub system_id: Option<String>,
    pub username: String,
    pub password: String,
    pub boot_target: BootTarget,
    /// Check the BMC's TLS certificate (most carry a self-signed one).
    pub verify_tls: bool,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("protocol", &self.protocol)
            .field("address", &self.address)
            .field("system_id", &self.system_id)
            .field("username", &self.username)
            .field("password", &"<sealed>")
            .finish()
    }
}

/// What one call to a BMC can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BmcError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot reach the BMC: {0}")]
    Unreachable(String),
    #[error("the BMC refused the credentials ({0})")]
    Credentials(String),
    #[error("the BMC answered {status}: {message}")]
    Refused { status: u16, message: String },
    #[error("the BMC does not offer this: {0}")]
    Unsupported(String),
    #[error("unexpected answer from the BMC: {0}")]
    Garbled(String),
}

impl BmcError {
    /// Whether trying again can help: the network and the BMC's own
    /// troubles can pass; a wrong password or a missing feature cannot
    /// (and retrying a wrong password can lock the account).
    pub fn passes(&self) -> bool {
        match self {
            BmcError::Timeout(_) | BmcError::Unreachable(_) | BmcError::Garbled(_) => true,
            BmcError::Refused { status, .. } => *status >= 500 || *status == 429 || *status == 409,
            BmcError::Credentials(_) | BmcError::Unsupported(_) => false,
        }
    }
}

/// Why a machine's BMC cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("the BMC of {0} is incomplete: no {1} (set it on the machine or its group)")]
    Incomplete(String, &'static str),
    #[error("the stored BMC row of {0} is invalid: {1}")]
    Invalid(String, String),
    #[error("{0}")]
    Sealed(String),
}

/// The machine's BMC from its own row and its group's, field by field;
/// `None` when neither names a protocol or an address (no BMC: rollouts
/// fall back to the reboot hook). `open` unseals a password for the row
/// that holds it.
pub fn resolve(
    machine: Option<&BmcRow>,
    group: Option<&BmcRow>,
    who: &str,
    open: impl Fn(&BmcRow, &str) -> Result<String, String>,
) -> Result<Option<Endpoint>, ResolveError> {
    let rows: Vec<&BmcRow> = [machine, group].into_iter().flatten().collect();
    let pick = |f: fn(&BmcRow) -> Option<&String>| rows.iter().find_map(|r| f(r).map(|v| (*r, v)));
    let protocol = pick(|r| r.protocol.as_ref());
    let address = pick(|r| r.address.as_ref());
    if protocol.is_none() && address.is_none() {
        return Ok(None);
    }
    let missing = |what| ResolveError::Incomplete(who.to_string(), what);
    let invalid = |why: String| ResolveError::Invalid(who.to_string(), why);
    let protocol = Protocol::parse(protocol.ok_or_else(|| missing("protocol"))?.1)
        .ok_or_else(|| invalid("protocol".into()))?;
    let address = address.ok_or_else(|| missing("address"))?.1.clone();
    let username = pick(|r| r.username.as_ref())
        .ok_or_else(|| missing("username"))?
        .1
        .clone();
    let (holder, sealed) = pick(|r| r.sealed.as_ref()).ok_or_else(|| missing("password"))?;
    let password = open(holder, sealed).map_err(ResolveError::Sealed)?;
    let boot_target = match pick(|r| r.boot_target.as_ref()) {
        Some((_, t)) => BootTarget::parse(t).ok_or_else(|| invalid(format!("boot target {t}")))?,
        None => BootTarget::Pxe,
    };
    Ok(Some(Endpoint {
        protocol,
        address,
        system_id: pick(|r| r.system_id.as_ref()).map(|(_, s)| s.clone()),
        username,
        password,
        boot_target,
        verify_tls: rows.iter().find_map(|r| r.verify_tls).unwrap_or(false),
    }))
}

/// BMC fields as an operator writes them (API body, fleet file), before
/// they are a row: every one optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields<'a> {
    pub protocol: Option<Protocol>,
    pub address: Option<&'a str>,
    pub system_id: Option<&'a str>,
    pub username: Option<&'a str>,
    pub password: Option<&'a str>,
    pub boot_target: Option<BootTarget>,
}

/// Checks fields before they are stored: lengths, no control characters,
/// an address the protocol can use, no HTTP boot over IPMI. The error
/// names the field.
pub fn check(f: &Fields<'_>) -> Result<(), (&'static str, String)> {
    let text = |field: &'static str, v: Option<&str>, max: usize| match v {
        Some(t) if t.is_empty() || t.len() > max || t.chars().any(char::is_control) => Err((
            field,
            format!("must be 1 to {max} characters without control characters"),
        )),
        _ => Ok(()),
    };
    text("address", f.address, 255)?;
    text("system_id", f.system_id, 128)?;
    text("username", f.username, 64)?;
    text("password", f.password, 128)?;
    if let (Some(protocol), Some(address)) = (f.protocol, f.address) {
        let usable = match protocol {
            Protocol::Ipmi => ipmi::host_port(address).map(drop),
            Protocol::Redfish => redfish::base_url(address).map(drop),
        };
        usable.map_err(|e| ("address", e.to_string()))?;
    }
    if f.protocol == Some(Protocol::Ipmi) && f.boot_target == Some(BootTarget::Http) {
        return Err(("boot_target", "IPMI has no HTTP boot device".into()));
    }
    // IPMI 2.0 keys a session with at most 20 bytes (ipmitool refuses more).
    if f.protocol == Some(Protocol::Ipmi) && f.password.is_some_and(|p| p.len() > 20) {
        return Err(("password", "IPMI passwords are at most 20 bytes".into()));
    }
    Ok(())
}

/// The owner string a row's password is sealed for.
pub fn owner_key(row: &BmcRow) -> String {
    format!("{}:{}", row.owner_kind, row.owner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: &str, owner: &str) -> BmcRow {
        BmcRow {
            owner_kind: kind.into(),
            owner: owner.into(),
            ..Default::default()
        }
    }

    fn open(r: &BmcRow, s: &str) -> Result<String, String> {
        Ok(format!("{}={s}", owner_key(r)))
    }

    #[test]
    fn a_machine_overrides_its_group_field_by_field() {
        let mut group = row("group", "rack1");
        group.protocol = Some("redfish".into());
        group.address = Some("https://aggregator".into());
        group.username = Some("admin".into());
        group.sealed = Some("g".into());
        let mut machine = row("machine", "52:54:00:00:00:01");
        machine.system_id = Some("node1".into());
        machine.boot_target = Some("http".into());
        let ep = resolve(Some(&machine), Some(&group), "m", open)
            .unwrap()
            .unwrap();
        assert_eq!(ep.protocol, Protocol::Redfish);
        assert_eq!(ep.address, "https://aggregator");
        assert_eq!(ep.system_id.as_deref(), Some("node1"));
        assert_eq!(ep.boot_target, BootTarget::Http);
        // The group's password, opened as the group's.
        assert_eq!(ep.password, "group:rack1=g");
        machine.sealed = Some("m".into());
        let ep = resolve(Some(&machine), Some(&group), "m", open)
            .unwrap()
            .unwrap();
        assert_eq!(ep.password, "machine:52:54:00:00:00:01=m");
        assert!(
            !format!("{ep:?}").contains("=m"),
            "Debug hides the password"
        );
    }

    #[test]
    fn no_bmc_incomplete_and_invalid_rows_are_told_apart() {
        // Only a remembered power state: no BMC.
        let mut bare = row("machine", "m");
        bare.power_state = Some("on".into());
        assert_eq!(resolve(Some(&bare), None, "m", open), Ok(None));
        let mut half = row("machine", "m");
        half.address = Some("10.0.0.5".into());
        half.protocol = Some("ipmi".into());
        let err = resolve(Some(&half), None, "m", open).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the BMC of m is incomplete: no username (set it on the machine or its group)"
        );
        half.username = Some("u".into());
        half.sealed = Some("p".into());
        half.protocol = Some("telnet".into());
        assert!(matches!(
            resolve(Some(&half), None, "m", open),
            Err(ResolveError::Invalid(..))
        ));
        half.protocol = Some("ipmi".into());
        let sealed = |_: &BmcRow, _: &str| Err("does not open".to_string());
        assert_eq!(
            resolve(Some(&half), None, "m", sealed),
            Err(ResolveError::Sealed("does not open".into()))
        );
    }
}
