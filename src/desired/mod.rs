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
