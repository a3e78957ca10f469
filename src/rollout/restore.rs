//! The fleet as the store kept it: rollouts and machine health, back in
//! memory at start. A row that cannot be read is skipped, loudly; the
//! others resume where the database says.

use super::engine::{Entry, Rollouts};
use super::watchdog::{Health, Policy};
use super::Rollout;
use crate::domain::{MacAddr, Slot};
use crate::store::rollouts::StoredFleet;

/// The fleet `rows` describe, under `policy`.
pub fn restore(rows: StoredFleet, policy: Policy) -> Rollouts {
    let mut rollouts = Vec::new();
    for r in rows.rollouts {
        let slot = r.slot.parse::<Slot>();
        match (serde_json::from_str::<Rollout>(&r.rollout), slot) {
            (Ok(rollout), Ok(slot)) => rollouts.push(Entry {
                id: r.id,
                slot,
                rollout,
                created_ms: r.created_ms,
                created_by: r.created_by,
                updated_ms: r.updated_ms,
            }),
            (Err(e), _) => {
                tracing::error!(rollout = r.id, error = %e, "unreadable rollout row; skipped")
            }
            (_, Err(e)) => {
                tracing::error!(rollout = r.id, error = %e, "rollout row with an unknown slot; skipped")
            }
        }
    }
    let health = rows
        .health
        .into_iter()
        .filter_map(|(mac, json)| {
            let mac: MacAddr = mac.parse().ok()?;
            let h: Health = serde_json::from_str(&json).ok()?;
            Some((mac, h))
        })
        .collect();
    Rollouts::restore(policy, rollouts, health, rows.rev)
}
