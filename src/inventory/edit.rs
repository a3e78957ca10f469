//! Operator edits of one machine (hostname, labels, group, pin, kind) and
//! its deletion: all fields in one `BEGIN IMMEDIATE` transaction, then
//! memory, so an edit is applied whole or not at all and memory never shows
//! what SQLite does not hold.

use crate::domain::MacAddr;

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
    conn: &mut sqlx::SqliteConnection,
    mac: MacAddr,
    change: &MachineChange,
) -> Result<(), InventoryError> {
    let key = mac.to_string();
    let exists = sqlx::query("SELECT 1 FROM machines WHERE mac = ?")
        .bind(&key)
        .fetch_optional(&mut *conn)
        .await?
        .is_some();
    if !exists {
        return Err(InventoryError::NoSuchMachine(mac));
    }
    if let Some(Some(group)) = &change.group {
        let known = sqlx::query("SELECT 1 FROM groups WHERE name = ?")
            .bind(group)
            .fetch_optional(&mut *conn)
            .await?
            .is_some();
        if !known {
            return Err(InventoryError::NoSuchGroup(group.clone()));
        }
        sqlx::query("UPDATE machines SET group_name = ?, group_assigned = 1 WHERE mac = ?")
            .bind(group)
            .bind(&key)
            .execute(&mut *conn)
            .await?;
    }
    if let Some(None) = &change.group {
        sqlx::query("UPDATE machines SET group_assigned = 0 WHERE mac = ?")
            .bind(&key)
            .execute(&mut *conn)
            .await?;
    }
    if let Some(hostname) = &change.hostname {
        sqlx::query("UPDATE machines SET hostname = ? WHERE mac = ?")
            .bind(hostname)
            .bind(&key)
            .execute(&mut *conn)
            .await?;
    }
    if let Some(labels) = &change.labels {
        sqlx::query("UPDATE machines SET labels = ? WHERE mac = ?")
            .bind(serde_json::to_string(labels).expect("labels serialize"))
            .bind(&key)
            .execute(&mut *conn)
            .await?;
    }
    if let Some(pin) = &change.pin {
        sqlx::query("UPDATE machines SET pin_stream = ?, pin_generation = ? WHERE mac = ?")
            .bind(pin.as_ref().map(|p| p.stream.clone()))
            .bind(pin.as_ref().map(|p| p.number))
            .bind(&key)
            .execute(&mut *conn)
            .await?;
    }
    if let Some(kind) = change.kind {
        sqlx::query("UPDATE machines SET kind = ?, kind_by_operator = 1 WHERE mac = ?")
            .bind(kind.as_str())
            .bind(&key)
            .execute(&mut *conn)
            .await?;
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
        let mut tx = self.store.pool().begin_with("BEGIN IMMEDIATE").await?;
        write_machine(&mut tx, mac, &change).await?;
        tx.commit().await?;

        // A machine seen only by DHCP so far is not in memory yet.
        let loaded = if self.read().machines.contains_key(&mac) {
            None
        } else {
            load::machine(&self.store, mac).await?
        };
        let moved = {
            let mut state = self.write();
            if let Some(m) = loaded {
                state.machines.entry(mac).or_insert(m);
            }
            apply_machine(&mut state, mac, change);
            // Labels and assignment decide the group: compute it again.
            state.regroup()
        };
        load::save_groups(&self.store, &moved).await?;
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
        let key = mac.to_string();
        let mut tx = self.store.pool().begin_with("BEGIN IMMEDIATE").await?;
        let removed = sqlx::query("DELETE FROM machines WHERE mac = ?")
            .bind(&key)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if removed == 0 {
            return Err(InventoryError::NoSuchMachine(mac));
        }
        let mut deleted = Deleted::default();
        if purge {
            deleted.events = sqlx::query("DELETE FROM events WHERE mac = ?")
                .bind(&key)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            deleted.boots = sqlx::query("DELETE FROM boots WHERE mac = ?")
                .bind(&key)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        let mut state = self.write();
        state.machines.remove(&mac);
        state.boots.retain(|_, b| b.mac != mac);
        let open: std::collections::HashSet<String> = state.boots.keys().cloned().collect();
        state.by_ip.retain(|_, hash| open.contains(hash));
        Ok(deleted)
    }
}
