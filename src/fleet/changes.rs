//! What an operator asks of the fleet: a change to a machine, a group, or a
//! rollout to start. Plain values: the API, the CLI's `apply` planner
//! (`desired`) and the inventory's transactions all speak them, and none of
//! them owns them.

use std::collections::BTreeMap;

use crate::boot::select::Selector;
use crate::domain::{GenerationId, MachineKind};
use crate::rollout::{Require, Strategy};

/// What an edit changes; `None` leaves a field as it is. The caller has
/// validated the values.
#[derive(Debug, Clone, Default)]
pub struct MachineChange {
    /// `Some(None)` removes the hostname.
    pub hostname: Option<Option<String>>,
    /// The whole new label set.
    pub labels: Option<BTreeMap<String, String>>,
    /// The group the operator assigns (it must exist); `Some(None)`
    /// removes the assignment, and selectors decide again.
    pub group: Option<Option<String>>,
    /// `Some(None)` removes the pin.
    pub pin: Option<Option<GenerationId>>,
    pub kind: Option<MachineKind>,
}

/// What an operator sets on a group. On create, `None` means the default
/// (no description, no selector, no variables, no generation); on update,
/// `None` leaves the field as it is. `selector: Some(None)` removes it.
#[derive(Debug, Clone, Default)]
pub struct GroupChange {
    pub description: Option<String>,
    pub selector: Option<Option<Selector>>,
    /// Template variables: a JSON object, replaced whole.
    pub variables: Option<serde_json::Value>,
    /// Moves the group's pointer (and its pointer for the generation's
    /// architecture), as `set_group_generation` does.
    pub generation: Option<GenerationId>,
}

/// What an operator asks for when starting a rollout.
#[derive(Debug, Clone)]
pub struct StartRollout {
    pub group: String,
    pub to: GenerationId,
    pub strategy: Strategy,
    pub timeout_ms: i64,
    pub require: Option<Require>,
    pub rollback: bool,
    pub on_bmc_failure: crate::rollout::OnBmcFailure,
}
