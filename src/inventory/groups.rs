//! Operator changes to groups and to what decides a machine's group: group
//! create/update/delete, explicit assignment, labels.
//!
//! Same rule as the rest of the inventory: SQLite first, in one
//! `BEGIN IMMEDIATE` transaction that either applies everything or nothing,
//! then memory. Every change that can move a machine between groups ends in
//! [`State::regroup`](super::State), so the next boot, DHCP answer and
//! `explain` all see the new membership at once.

use std::collections::BTreeMap;

use crate::boot::membership::{Membership, DEFAULT_GROUP};
use crate::boot::select::Selector;
use crate::domain::GenerationId;
use crate::domain::{MacAddr, Slot};
use crate::ledger::now_ms;
use crate::store::groups::GroupFields;
use crate::store::tx::Tx;

use super::{
    empty_group, load, Group, GroupChange, Inventory, InventoryError, Machine, MachineChange, State,
};

/// How many machines a refusal names before "and N more".
const NAMED: usize = 5;

fn listed(what: &str, macs: &[String]) -> String {
    let mut text = format!("{} machine(s) {what}: ", macs.len());
    text.push_str(
        &macs
            .iter()
            .take(NAMED)
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
    );
    if macs.len() > NAMED {
        text.push_str(&format!(" and {} more", macs.len() - NAMED));
    }
    text
}

/// A group's rows for `change`, inside the caller's transaction (`slot`:
/// the architecture slot of `change.generation`).
pub(super) async fn write_group(
    tx: &mut Tx,
    name: &str,
    change: &GroupChange,
    slot: Option<Slot>,
    create: bool,
    now: i64,
) -> Result<(), InventoryError> {
    match (create, tx.group_exists(name).await?) {
        (true, true) => return Err(InventoryError::GroupExists(name.into())),
        (false, false) => return Err(InventoryError::NoSuchGroup(name.into())),
        (true, false) => tx.insert_group(name, now).await?,
        (false, true) => {}
    }
    let selector = change
        .selector
        .as_ref()
        .map(|sel| sel.as_ref().map(Selector::to_string));
    let variables = change.variables.as_ref().map(|v| v.to_string());
    let fields = GroupFields {
        description: change.description.as_deref(),
        selector: selector.as_ref().map(|s| s.as_deref()),
        variables: variables.as_deref(),
    };
    tx.update_group(name, fields, now).await?;
    if let (Some(id), Some(slot)) = (&change.generation, slot) {
        tx.set_group_pointer(name, slot, id, now).await?;
    }
    Ok(())
}

/// The memory side of [`write_group`], once it is committed (the caller
/// regroups).
pub(super) fn apply_group(
    state: &mut State,
    name: &str,
    change: GroupChange,
    slot: Option<Slot>,
) -> Group {
    let g = state
        .groups
        .entry(name.to_string())
        .or_insert_with(|| empty_group(name));
    if let Some(d) = change.description {
        g.description = d;
    }
    if let Some(sel) = change.selector {
        g.selector = sel;
    }
    if let Some(vars) = change.variables {
        g.variables = vars;
    }
    if let (Some(id), Some(slot)) = (change.generation, slot) {
        g.pointer = Some(id.clone());
        g.by_arch.insert(slot, id);
    }
    g.clone()
}

impl Inventory {
    /// The architecture slot a generation is held under in a group.
    pub(super) fn slot_of(
        &self,
        id: Option<&GenerationId>,
    ) -> Result<Option<Slot>, InventoryError> {
        let Some(id) = id else { return Ok(None) };
        let g = self
            .generation(id)
            .ok_or_else(|| InventoryError::NoSuchGeneration(id.clone()))?;
        Ok(Some(g.manifest.slot()))
    }

    /// A machine's membership (why it is in its group), if it is known.
    pub fn membership(&self, mac: MacAddr) -> Option<Membership> {
        self.read().machines.get(&mac).map(|m| m.membership.clone())
    }

    /// The machines in `group` (assigned, by selector, or by default),
    /// sorted by MAC.
    pub fn members(&self, group: &str) -> Vec<Machine> {
        let mut all: Vec<Machine> = self
            .read()
            .machines
            .values()
            .filter(|m| m.group == group)
            .cloned()
            .collect();
        all.sort_by_key(|m| m.mac);
        all
    }

    /// The machines whose labels match several groups' selectors equally
    /// (they stay in `default` until that is fixed), sorted by MAC.
    pub fn ties(&self) -> Vec<Machine> {
        let mut ties: Vec<Machine> = self
            .read()
            .machines
            .values()
            .filter(|m| m.membership.is_tie())
            .cloned()
            .collect();
        ties.sort_by_key(|m| m.mac);
        ties
    }

    /// Creates a group.
    pub async fn create_group(
        &self,
        name: &str,
        change: GroupChange,
    ) -> Result<Group, InventoryError> {
        self.save_group(name, change, true).await
    }

    /// Changes a group's description, selector, variables or generation.
    pub async fn update_group(
        &self,
        name: &str,
        change: GroupChange,
    ) -> Result<Group, InventoryError> {
        self.save_group(name, change, false).await
    }

    async fn save_group(
        &self,
        name: &str,
        change: GroupChange,
        create: bool,
    ) -> Result<Group, InventoryError> {
        let slot = self.slot_of(change.generation.as_ref())?;
        let now = now_ms();
        // A selector moves machines: where to is worked out first and
        // committed with the group.
        let moved = {
            let state = self.read();
            let mut groups = state.groups.clone();
            let mut preview = State {
                groups: std::mem::take(&mut groups),
                ..State::default()
            };
            apply_group(&mut preview, name, change.clone(), slot);
            state.moves_with(Some(&preview.groups), None)
        };
        let mut tx = self.store.begin().await?;
        write_group(&mut tx, name, &change, slot, create, now).await?;
        tx.save_computed_groups(&moved).await?;
        tx.commit().await?;

        let (group, late) = {
            let mut state = self.write();
            let group = apply_group(&mut state, name, change, slot);
            let mut late = state.regroup();
            late.retain(|m| !moved.contains(m));
            (group, late)
        };
        load::save_groups(&self.store, &late).await?;
        Ok(group)
    }

    /// Why `group` cannot be deleted now (empty: it can).
    pub fn group_dependents(&self, group: &str) -> Vec<String> {
        if group == DEFAULT_GROUP {
            return vec![format!(
                "{DEFAULT_GROUP} holds every machine no other group claims; it cannot be deleted"
            )];
        }
        let state = self.read();
        let mut assigned = Vec::new();
        let mut pinned = Vec::new();
        for m in state.machines.values() {
            if m.assigned.as_deref() == Some(group) {
                assigned.push(m.mac.to_string());
            } else if m.group == group && m.pin.is_some() {
                pinned.push(m.mac.to_string());
            }
        }
        assigned.sort();
        pinned.sort();
        let mut reasons = Vec::new();
        if !assigned.is_empty() {
            reasons.push(listed(
                "explicitly assigned to it (assign them elsewhere first)",
                &assigned,
            ));
        }
        if !pinned.is_empty() {
            reasons.push(listed(
                "in it are pinned to a generation (unpin them first)",
                &pinned,
            ));
        }
        reasons
    }

    /// Deletes a group, unless machines depend on it (see
    /// [`Inventory::group_dependents`]). Machines it claimed by selector
    /// move to the next group that claims them, or `default`.
    pub async fn delete_group(&self, group: &str) -> Result<(), InventoryError> {
        if self.group(group).is_none() {
            return Err(InventoryError::NoSuchGroup(group.into()));
        }
        let mut reasons = self.group_dependents(group);
        let mut tx = self.store.begin().await?;
        if reasons.is_empty() {
            // Assignments are written before memory changes: the database
            // is the last word on them.
            let macs = tx.assigned_to(group).await?;
            if !macs.is_empty() {
                reasons.push(listed(
                    "explicitly assigned to it (assign them elsewhere first)",
                    &macs,
                ));
            }
        }
        if !reasons.is_empty() {
            return Err(InventoryError::GroupInUse {
                group: group.into(),
                reasons,
            });
        }
        let moved = {
            let state = self.read();
            let mut groups = state.groups.clone();
            groups.remove(group);
            state.moves_with(Some(&groups), None)
        };
        tx.delete_group(group).await?;
        tx.save_computed_groups(&moved).await?;
        tx.commit().await?;
        let late = {
            let mut state = self.write();
            state.groups.remove(group);
            let mut late = state.regroup();
            late.retain(|m| !moved.contains(m));
            late
        };
        load::save_groups(&self.store, &late).await?;
        Ok(())
    }

    /// Assigns a machine to a group explicitly (`None`: removes the
    /// assignment; selectors decide again). Returns the machine as it is now.
    pub async fn assign_group(
        &self,
        mac: MacAddr,
        group: Option<&str>,
    ) -> Result<Machine, InventoryError> {
        let change = MachineChange {
            group: Some(group.map(str::to_string)),
            ..MachineChange::default()
        };
        self.update_machine(mac, change).await?;
        self.machine(mac).ok_or(InventoryError::NoSuchMachine(mac))
    }

    /// Replaces a machine's labels; its group is computed again.
    pub async fn set_labels(
        &self,
        mac: MacAddr,
        labels: BTreeMap<String, String>,
    ) -> Result<Machine, InventoryError> {
        let change = MachineChange {
            labels: Some(labels),
            ..MachineChange::default()
        };
        self.update_machine(mac, change).await?;
        self.machine(mac).ok_or(InventoryError::NoSuchMachine(mac))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::boot::loader::Loader;
    use crate::boot::Target;
    use crate::images::{ArtifactRef, Digest, Manifest};
    use crate::inventory::ScriptRequest;
    use crate::ledger::Ledger;
    use crate::metrics::Metrics;
    use crate::store::Store;

    async fn inventory(dir: &std::path::Path) -> Inventory {
        let store = Store::open(dir).await.unwrap();
        let (ledger, rx) = Ledger::new(1024, Arc::new(Metrics::default()));
        tokio::spawn(crate::store::writer::run(store.clone(), rx));
        Inventory::load(store, ledger).await.unwrap()
    }

    fn live(tag: &[u8]) -> Manifest {
        let a = ArtifactRef {
            name: "vmlinuz".into(),
            digest: Digest::of(tag),
            size: 1,
        };
        Manifest {
            arch: crate::domain::Cpu::X86_64,
            kernel: Some(a.clone()),
            initrds: vec![a],
            rootfs: None,
            cmdline: String::new(),
            installer: None,
            uki: None,
            rootfs_verity: None,
        }
    }

    fn booted(inv: &Inventory, mac: MacAddr) -> Option<GenerationId> {
        match inv.begin_boot(mac, &ScriptRequest::default()).target {
            Target::Boot { generation, .. } => Some(generation),
            Target::Nothing { .. } => None,
        }
    }

    fn sel(text: &str) -> Option<Option<Selector>> {
        Some(Some(text.parse().unwrap()))
    }

    /// Commit, then swap, for edits too: a group or machine edit whose
    /// commit fails changes neither memory nor what machines boot; one that
    /// commits records the groups its selector moves machines to in the same
    /// transaction (the rows say what memory says).
    #[tokio::test]
    async fn an_edit_whose_commit_fails_changes_nothing() {
        let dir = tempfile::TempDir::new().unwrap();
        let inv = inventory(dir.path()).await;
        let g1 = inv
            .add_generation("worker", live(b"1").digest(), live(b"1"), None)
            .await
            .unwrap()
            .id
            .clone();
        let g2 = inv
            .add_generation("worker", live(b"2").digest(), live(b"2"), None)
            .await
            .unwrap()
            .id
            .clone();
        inv.set_group_generation("default", &g1).await.unwrap();
        let db = inv.store.sqlite_pool().clone();
        let mac: MacAddr = "52:54:00:00:00:0f".parse().unwrap();
        assert_eq!(booted(&inv, mac), Some(g1.clone()));
        inv.settle().await;
        inv.set_labels(mac, [("role".to_string(), "db".to_string())].into())
            .await
            .unwrap();
        let stored_group = |db: sqlx::SqlitePool| async move {
            let (g,): (String,) = sqlx::query_as("SELECT group_name FROM machines WHERE mac = ?")
                .bind(mac.to_string())
                .fetch_one(&db)
                .await
                .unwrap();
            g
        };

        sqlx::query(
            "CREATE TRIGGER refuse_groups BEFORE INSERT ON groups
             BEGIN SELECT RAISE(ABORT, 'disk full'); END",
        )
        .execute(&db)
        .await
        .unwrap();
        let change = GroupChange {
            selector: sel("role=db"),
            generation: Some(g2.clone()),
            ..GroupChange::default()
        };
        assert!(inv.create_group("db", change.clone()).await.is_err());
        assert!(inv.group("db").is_none());
        assert_eq!(inv.machine(mac).unwrap().group, "default");
        assert_eq!(booted(&inv, mac), Some(g1.clone()), "memory unchanged");
        assert_eq!(stored_group(db.clone()).await, "default");

        sqlx::query("DROP TRIGGER refuse_groups")
            .execute(&db)
            .await
            .unwrap();
        inv.create_group("db", change).await.unwrap();
        assert_eq!(inv.machine(mac).unwrap().group, "db");
        assert_eq!(booted(&inv, mac), Some(g2));
        assert_eq!(
            stored_group(db.clone()).await,
            "db",
            "moved in the same commit"
        );

        // A machine edit that fails to commit leaves its labels and group.
        sqlx::query(
            "CREATE TRIGGER refuse_machines BEFORE UPDATE ON machines
             BEGIN SELECT RAISE(ABORT, 'disk full'); END",
        )
        .execute(&db)
        .await
        .unwrap();
        assert!(inv.set_labels(mac, BTreeMap::new()).await.is_err());
        let m = inv.machine(mac).unwrap();
        assert_eq!((m.labels.len(), m.group.as_str()), (1, "db"));
    }

    /// A script request without `buildarch` from a machine DHCP knows as
    /// BIOS boots the group's x86 generation, though arm64 was set last;
    /// a machine DHCP never saw gets the one set last, as before.
    #[tokio::test]
    async fn dhcp_architecture_counts_when_the_script_request_does_not_say() {
        use crate::clients::{Clients, SeenClient};
        use crate::domain::{Arch, Cpu};
        let dir = tempfile::TempDir::new().unwrap();
        let clients = Clients::empty();
        let inv = inventory(dir.path()).await.with_clients(clients.clone());
        let x86 = inv
            .add_generation("worker", live(b"x").digest(), live(b"x"), None)
            .await
            .unwrap()
            .id
            .clone();
        let arm_manifest = Manifest {
            arch: crate::domain::Cpu::Arm64,
            ..live(b"a")
        };
        let arm = inv
            .add_generation("arm", arm_manifest.digest(), arm_manifest, None)
            .await
            .unwrap()
            .id
            .clone();
        inv.set_group_generation("default", &x86).await.unwrap();
        inv.set_group_generation("default", &arm).await.unwrap();
        let bios: MacAddr = "52:54:00:00:00:b1".parse().unwrap();
        let stranger: MacAddr = "52:54:00:00:00:b2".parse().unwrap();
        clients.saw(
            bios,
            SeenClient {
                arch: Some(Arch::BiosX86),
                ..SeenClient::default()
            },
        );
        assert_eq!(booted(&inv, bios), Some(x86));
        assert_eq!(inv.machine(bios).unwrap().arch, Some(Cpu::I386));
        assert_eq!(booted(&inv, stranger), Some(arm), "never seen by DHCP");
    }

    #[tokio::test]
    async fn selectors_assignments_and_labels_change_what_machines_boot() {
        let dir = tempfile::TempDir::new().unwrap();
        let inv = inventory(dir.path()).await;
        let g1 = inv
            .add_generation("worker", live(b"1").digest(), live(b"1"), None)
            .await
            .unwrap()
            .id
            .clone();
        let g2 = inv
            .add_generation("worker", live(b"2").digest(), live(b"2"), None)
            .await
            .unwrap()
            .id
            .clone();
        inv.set_group_generation("default", &g1).await.unwrap();
        inv.create_group(
            "db",
            GroupChange {
                description: Some("databases".into()),
                selector: sel("role=db"),
                variables: Some(serde_json::json!({ "loader": "grub" })),
                generation: Some(g2.clone()),
            },
        )
        .await
        .unwrap();
        let mac: MacAddr = "52:54:00:00:00:07".parse().unwrap();

        // Unknown and unlabelled: default.
        assert_eq!(booted(&inv, mac), Some(g1.clone()));
        assert_eq!(inv.membership(mac), Some(Membership::Default));
        inv.settle().await;

        // Labelled: the selector claims it, and it boots db's generation
        // with db's loader setting.
        let m = inv
            .set_labels(mac, [("role".into(), "db".into())].into())
            .await
            .unwrap();
        assert_eq!(m.group, "db");
        assert_eq!(booted(&inv, mac), Some(g2.clone()));
        assert_eq!(inv.loader_settings(mac).group, Some(Loader::Grub));
        assert_eq!(inv.members("db").len(), 1);

        // A second group matching as specifically: a tie, reported, and the
        // machine falls back to default.
        inv.create_group(
            "db2",
            GroupChange {
                selector: sel("role in (db,sql)"),
                ..GroupChange::default()
            },
        )
        .await
        .unwrap();
        let tie = inv.membership(mac).unwrap();
        assert!(tie.is_tie(), "{tie:?}");
        assert_eq!(booted(&inv, mac), Some(g1.clone()));
        assert_eq!(inv.loader_settings(mac).group, None);

        // Explicit assignment resolves it.
        inv.assign_group(mac, Some("db")).await.unwrap();
        assert_eq!(booted(&inv, mac), Some(g2.clone()));
        assert!(matches!(
            inv.assign_group(mac, Some("nope")).await,
            Err(InventoryError::NoSuchGroup(_))
        ));

        // Delete refused while assigned, then while a member is pinned.
        let refused = inv.delete_group("db").await.unwrap_err();
        assert!(
            refused.to_string().contains("explicitly assigned")
                && refused.to_string().contains("52:54:00:00:00:07"),
            "{refused}"
        );
        inv.assign_group(mac, None).await.unwrap();
        inv.update_group(
            "db2",
            GroupChange {
                selector: Some(None),
                ..GroupChange::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(inv.membership(mac).unwrap().group(), "db");
        inv.set_pin(mac, Some(g1.clone())).await.unwrap();
        let refused = inv.delete_group("db").await.unwrap_err();
        assert!(refused.to_string().contains("pinned"), "{refused}");
        assert!(inv.delete_group("default").await.is_err());
        inv.set_pin(mac, None).await.unwrap();

        // Everything survives a restart; group_name in SQL tells the truth.
        inv.settle().await;
        drop(inv);
        let inv = inventory(dir.path()).await;
        let m = inv.machine(mac).unwrap();
        assert_eq!((m.group.as_str(), m.assigned.as_deref()), ("db", None));
        assert_eq!(inv.group("db").unwrap().description, "databases");
        let (group_name,): (String,) =
            sqlx::query_as("SELECT group_name FROM machines WHERE mac = ?")
                .bind(mac.to_string())
                .fetch_one(inv.store.sqlite_pool())
                .await
                .unwrap();
        assert_eq!(group_name, "db");

        // Deleting the group moves its members back to default.
        inv.delete_group("db").await.unwrap();
        assert_eq!(inv.machine(mac).unwrap().group, "default");
        assert_eq!(booted(&inv, mac), Some(g1));
        assert!(matches!(
            inv.update_group("db", GroupChange::default()).await,
            Err(InventoryError::NoSuchGroup(_))
        ));
        assert!(matches!(
            inv.create_group("db2", GroupChange::default()).await,
            Err(InventoryError::GroupExists(_))
        ));

        // A selector that claims unlabelled machines: a new machine is in
        // it from its first boot, in memory and in the database.
        inv.create_group(
            "unsorted",
            GroupChange {
                selector: sel("!role"),
                ..GroupChange::default()
            },
        )
        .await
        .unwrap();
        let new: MacAddr = "52:54:00:00:00:08".parse().unwrap();
        booted(&inv, new);
        inv.settle().await;
        assert_eq!(inv.machine(new).unwrap().group, "unsorted");
        let (group_name,): (String,) =
            sqlx::query_as("SELECT group_name FROM machines WHERE mac = ?")
                .bind(new.to_string())
                .fetch_one(inv.store.sqlite_pool())
                .await
                .unwrap();
        assert_eq!(group_name, "unsorted");
    }
}
