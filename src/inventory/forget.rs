//! Forgetting what a boot network made up: a MAC that was seen (a DHCP
//! exchange, a script request) but never booted from this server and that
//! no operator has touched is a registration anyone on the segment can
//! cause. Such machines are removed once they have not been seen for
//! `[dhcp] forget_unbooted_after` (7 days), so made-up MACs cannot pile up
//! over time even within the new-client rate (`dhcp::newcomers`).
//!
//! A machine is kept when any of these holds: it has a boot row, a lease
//! that has not expired, an operator-owned field (assigned group, labels,
//! host name, pin, kind), or it is reserved in the configuration. Removal
//! is committed first, then memory follows, and a machine that started a
//! boot meanwhile stays in memory (its next write re-creates its row).

use std::collections::HashSet;

use super::{Inventory, InventoryError};
use crate::domain::MacAddr;

/// Machines removed per transaction.
const CHUNK: i64 = 1000;

impl Inventory {
    /// Removes never-booted, operator-untouched machines last seen before
    /// `before_ms`, except `keep`; returns their MACs. DHCP forgets them
    /// too: they are new clients again if they come back.
    pub async fn forget_unbooted(
        &self,
        before_ms: i64,
        now_ms: i64,
        keep: &HashSet<MacAddr>,
    ) -> Result<Vec<MacAddr>, InventoryError> {
        self.settle().await;
        let mut tx = self.store.begin().await?;
        let macs: Vec<MacAddr> = tx
            .unheld_machines(before_ms, now_ms, CHUNK)
            .await?
            .into_iter()
            .filter(|m| !keep.contains(m))
            .collect();
        for mac in &macs {
            tx.delete_machine(*mac, false).await?;
        }
        tx.commit().await?;
        let mut state = self.write();
        let booting: HashSet<MacAddr> = state.boots.values().map(|b| b.mac).collect();
        for mac in &macs {
            if !booting.contains(mac) {
                state.machines.remove(mac);
            }
        }
        drop(state);
        self.clients.forget(&macs);
        Ok(macs)
    }
}
