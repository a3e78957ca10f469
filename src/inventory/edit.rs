//! Operator edits of one machine (hostname, labels, group, pin, kind) and
//! its deletion: all fields in one `BEGIN IMMEDIATE` transaction, then
//! memory, so an edit is applied whole or not at all and memory never shows
//! what SQLite does not hold.

use crate::domain::MacAddr;
use crate::store::tx::Tx;

use super::{load, Inventory, InventoryError, Machine, MachineChange, State};

/// What deleting a machine removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deleted {
    pub boots: u64,
    pub events: u64,
}

/// A machine's rows for `change`, inside the caller's transaction: refused
/// if the machine or an assigned group does not exist.
pub(super) async fn write_machine(
    tx: &mut Tx,
    mac: MacAddr,
    change: &MachineChange,
) -> Result<(), InventoryError> {
    if !tx.machine_exists(mac).await? {
        return Err(InventoryError::NoSuchMachine(mac));
    }
    match &change.group {
        Some(Some(group)) if !tx.group_exists(group).await? => {
            return Err(InventoryError::NoSuchGroup(group.clone()));
        }
        Some(group) => {
            tx.assign_machine(mac, group.as_deref()).await?;
        }
        None => {}
    }
    if let Some(hostname) = &change.hostname {
        tx.set_machine_hostname(mac, hostname.as_deref()).await?;
    }
    if let Some(labels) = &change.labels {
        tx.set_machine_labels(mac, labels).await?;
    }
    if let Some(pin) = &change.pin {
        tx.set_machine_pin(mac, pin.as_ref()).await?;
    }
    if let Some(kind) = change.kind {
        tx.set_machine_kind(mac, kind).await?;
    }
    Ok(())
}

/// The memory side of [`write_machine`], once it is committed (the caller
/// loads the machine first if needed, and regroups).
pub(super) fn apply_machine(state: &mut State, mac: MacAddr, change: MachineChange) {
    let m = state
        .machines
        .entry(mac)
        .or_insert_with(|| Machine::new(mac));
    apply_machine_fields(m, change);
}

/// `change` on the fields of `m`.
fn apply_machine_fields(m: &mut Machine, change: MachineChange) {
    if let Some(group) = change.group {
        m.assigned = group;
    }
    if let Some(hostname) = change.hostname {
        m.hostname = hostname;
    }
    if let Some(labels) = change.labels {
        m.labels = labels;
    }
    if let Some(pin) = change.pin {
        m.pin = pin;
    }
    if let Some(kind) = change.kind {
        m.kind = kind;
        m.kind_by_operator = true;
    }
}

impl Inventory {
    /// Applies an edit: SQLite first (one transaction), then memory.
    pub async fn update_machine(
        &self,
        mac: MacAddr,
        change: MachineChange,
    ) -> Result<(), InventoryError> {
        self.settle().await;
        if let Some(Some(id)) = &change.pin {
            if self.generation(id).is_none() {
                return Err(InventoryError::NoSuchGeneration(id.clone()));
            }
        }
        // A machine seen only by DHCP so far is not in memory yet.
        let loaded = if self.read().machines.contains_key(&mac) {
            None
        } else {
            load::machine(&self.store, mac).await?
        };
        // Labels and assignment decide its group: where it moves is worked
        // out first and committed with the edit.
        let moved = {
            let state = self.read();
            let mut edited = state.machines.get(&mac).cloned().or(loaded.clone());
            if let Some(m) = &mut edited {
                apply_machine_fields(m, change.clone());
            }
            state.moves_with(None, edited.as_ref())
        };
        let mut tx = self.store.begin().await?;
        write_machine(&mut tx, mac, &change).await?;
        tx.save_computed_groups(&moved).await?;
        tx.commit().await?;

        let late = {
            let mut state = self.write();
            if let Some(m) = loaded {
                state.machines.entry(mac).or_insert(m);
            }
            apply_machine(&mut state, mac, change);
            let mut late = state.regroup();
            late.retain(|m| !moved.contains(m));
            late
        };
        // Only when machines changed meanwhile (a boot registered one).
        load::save_groups(&self.store, &late).await?;
        Ok(())
    }

    /// Forgets a machine: its row, its open boots (their tokens stop
    /// working). Its boot history (boots, events) stays unless `purge`.
    /// It comes back as a new machine if it boots again.
    pub async fn delete_machine(
        &self,
        mac: MacAddr,
        purge: bool,
    ) -> Result<Deleted, InventoryError> {
        self.settle().await;
        let mut tx = self.store.begin().await?;
        let Some(removed) = tx.delete_machine(mac, purge).await? else {
            return Err(InventoryError::NoSuchMachine(mac));
        };
        tx.commit().await?;
        let deleted = Deleted {
            boots: removed.boots,
            events: removed.events,
        };
        let mut state = self.write();
        state.machines.remove(&mac);
        state.boots.retain(|_, b| b.mac != mac);
        let open: std::collections::HashSet<String> = state.boots.keys().cloned().collect();
        state.by_ip.retain(|_, hash| open.contains(hash));
        Ok(deleted)
    }
}
