//! Desired state: what `ironboot apply -f fleet.yaml` declares, and the
//! changes that make the server match it.
//!
//! Three pieces, each usable alone:
//!
//! - [`yaml`]: the fleet file, read with every key's and value's line and
//!   column, into a [`Document`] and the [`yaml::Spans`] that map a field
//!   path (`groups.web.stream`) back to where it is written. Unknown keys,
//!   wrong types, bad MACs and bad selector syntax fail here, naming the line.
//! - [`plan`]: a pure function, desired [`Document`] + [`plan::Current`]
//!   state → the list of changes (or the first invalid reference, with its
//!   path). No I/O: the tables in its tests are the specification.
//! - The server's `POST /api/v1/apply` validates against its own state,
//!   plans with [`plan::plan`], and applies everything in one SQLite
//!   transaction (`Inventory::apply`, in `inventory/apply.rs`).
//!
//! Semantics, kept predictable: a key absent from the file leaves that
//! field as it is; nothing is ever deleted (no pruning). A listed `labels`
//! map or `variables` map replaces the whole set. `null` removes
//! (`selector`, `hostname`, `group` assignment, `pin`). A group's changed
//! generation becomes a rollout when machines follow the old one;
//! otherwise the pointer just moves.

pub mod bmc;
pub mod plan;
pub mod yaml;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// The document `ironboot apply` sends to `POST /api/v1/apply`: the fleet
/// file, normalised to JSON (MACs in canonical form).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// Groups by name; a group not listed is left alone.
    #[serde(default)]
    pub groups: BTreeMap<String, GroupSpec>,
    /// Machines by MAC; a machine not listed is left alone. Each must be
    /// known to the server (it registers when it first DHCPs or boots).
    #[serde(default)]
    pub machines: BTreeMap<String, MachineSpec>,
}

/// `Some(None)` for a key present as `null`, `None` when absent.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A group as the file wants it. Absent fields are left as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A label selector; `null` removes it.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub selector: Option<Option<String>>,
    /// Template variables, replaced whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub variables: Option<Map<String, Value>>,
    /// The stream of the generation the group should boot (with
    /// `generation`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// The generation number the group should boot (with `stream`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// Instead of `stream` and `generation`: one generation per
    /// architecture slot (`x86_64`, `arm64`, switch installers), for a group
    /// that boots several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generations: Option<Vec<PinSpec>>,
    /// How to roll out a changed generation to machines running the old one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSpec>,
    /// The BMC fields its machines share; `null` removes them.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<BmcSpec>)]
    pub bmc: Option<Option<BmcSpec>>,
}

/// A BMC as the file wants it: replaces the stored fields whole, except
/// the password, kept when left out. The file names where the password is
/// (`password_file`, relative to the file, or `password_env`); `ironboot
/// apply` reads it and sends it as `password`, so it is never written in
/// a fleet file kept in version control.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BmcSpec {
    /// `redfish` or `ipmi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Sent by the CLI (read from `password_file` or `password_env`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// In the file only: where the CLI reads the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// `pxe` or `http`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_tls: Option<bool>,
}

/// A rollout strategy, as `POST /api/v1/rollouts` takes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    /// `canary` (the default) or `blue_green`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// A count (`1`, the default), a share (`"10%"`) or a list of MACs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub canary: Option<Value>,
    /// Cumulative shares after the canary: `["50%", "100%"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub steps: Option<Value>,
    /// How long each wave has to confirm (`"10m"`, the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// `key=value` a phone-home payload must carry to count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require: Option<String>,
    /// Roll back when a gate fails (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<bool>,
    /// A moved machine whose BMC cannot reboot it: `wait` (the default)
    /// or `fail` (its gate fails at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_bmc_failure: Option<String>,
}

/// A generation of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PinSpec {
    pub stream: String,
    pub generation: i64,
}

/// A machine as the file wants it. Absent fields are left as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MachineSpec {
    /// `null` removes it.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub hostname: Option<Option<String>>,
    /// The machine's whole label set (labels not listed are removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// An explicit group assignment; `null` hands it back to selectors.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub group: Option<Option<String>>,
    /// A pinned generation; `null` removes the pin.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<PinSpec>)]
    pub pin: Option<Option<PinSpec>>,
    /// `server` or `switch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Its own BMC fields (over its group's); `null` removes them.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<BmcSpec>)]
    pub bmc: Option<Option<BmcSpec>>,
}

impl std::fmt::Debug for BmcSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BmcSpec")
            .field("protocol", &self.protocol)
            .field("address", &self.address)
            .field("system_id", &self.system_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<given>"))
            .field("password_file", &self.password_file)
            .field("password_env", &self.password_env)
            .field("boot_target", &self.boot_target)
            .field("verify_tls", &self.verify_tls)
            .finish()
    }
}

/// The path of a group's field in the document (`groups.web.stream`), as
/// errors name it and [`yaml::Spans`] finds it.
pub fn group_path(group: &str, field: Option<&str>) -> String {
    match field {
        Some(f) => format!("groups.{group}.{f}"),
        None => format!("groups.{group}"),
    }
}

/// The path of a machine's field (`machines.52:54:00:12:34:56.labels`).
pub fn machine_path(mac: &str, field: Option<&str>) -> String {
    match field {
        Some(f) => format!("machines.{mac}.{f}"),
        None => format!("machines.{mac}"),
    }
}
