//! What one change to the fleet's rollouts and health must write, as plain
//! rows: the rollout engine (`rollout::engine`) returns a [`Persist`] with
//! every transition, the store writes it in one transaction (so a
//! transition and its effects, a failed boot row or a moved group pointer,
//! commit together), and the ledger carries it between the two. Defined
//! here, below all three, so none of them depends on another for it.

use super::{GenerationId, MacAddr, Slot};

/// A rollout as written to its row.
#[derive(Debug, Clone)]
pub struct RolloutRow {
    pub id: i64,
    pub group: String,
    pub slot: Slot,
    pub state: &'static str,
    pub holds: bool,
    pub json: String,
    pub created_ms: i64,
    pub created_by: Option<String>,
    pub updated_ms: i64,
    pub rev: i64,
}

#[derive(Debug, Clone)]
pub struct HealthRow {
    pub mac: MacAddr,
    pub json: String,
    pub degraded: bool,
    pub updated_ms: i64,
    pub rev: i64,
}

/// A group pointer moved by a completed rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointerMove {
    pub group: String,
    pub slot: Slot,
    pub generation: GenerationId,
}

/// What one transaction must write.
#[derive(Debug, Clone, Default)]
pub struct Persist {
    pub rollouts: Vec<RolloutRow>,
    pub health: Vec<HealthRow>,
    /// Boot rows that failed, with the reason.
    pub failed_boots: Vec<(i64, String)>,
    pub pointers: Vec<PointerMove>,
    pub at_ms: i64,
}

impl Persist {
    pub fn is_empty(&self) -> bool {
        self.rollouts.is_empty()
            && self.health.is_empty()
            && self.failed_boots.is_empty()
            && self.pointers.is_empty()
    }
}

/// An event a server that does not lead the fleet saw (a boot served, a
/// confirmation, a reported failure), handed to the leader through the
/// store's inbox (`store::inbox`): `kind` names it, `body` is its JSON.
#[derive(Debug, Clone)]
pub struct Inboxed {
    pub server: String,
    pub kind: &'static str,
    pub body: String,
    pub at_ms: i64,
}
