//! `ironboot apply` on the inventory: the state a plan is computed from
//! ([`Inventory::plan_state`]), and a plan's changes applied all at once
//! ([`Inventory::apply`]).
//!
//! All or nothing: group rows, machine rows, the groups machines moved to
//! and the rows of every rollout started are written in one
//! `BEGIN IMMEDIATE` transaction. The plan is worked out on a copy of the
//! machines, groups and fleet; only once the transaction commits are the
//! same changes made to memory as it is then (the boot path kept going
//! meanwhile), so a refused apply or a failed commit leaves neither SQLite
//! nor memory touched. Rollouts start through
//! the same [`crate::rollout::engine::Rollouts::start`] as
//! `POST /api/v1/rollouts`, with the same starting point and members.

use std::collections::HashSet;

use super::edit::{apply_machine, write_machine};
use super::groups::{apply_group, write_group};
use super::rollouts::{again_or_resave, follows, rollout_from};
use super::{
    load, GroupChange, Inventory, InventoryError, MachineChange, RolloutCommandError, StartRollout,
    State,
};
use crate::desired::plan::{
    Action, Change, Current, CurrentGroup, CurrentMachine, GenerationFacts,
};
use crate::domain::GenerationId;
use crate::domain::{MacAddr, Slot};
use crate::ledger::now_ms;
use crate::rollout::engine::Persist;
use crate::rollout::Spec;
use crate::store::StoreError;

/// How many lines of a plan its `apply` event keeps.
const AUDIT_LINES: usize = 50;

impl Inventory {
    /// The server as [`crate::desired::plan::plan`] sees it: groups (with
    /// the rollout holding each), generations, and the machines the
    /// database knows. `listed` machines known only to the database so far
    /// (seen by DHCP since start) are loaded into memory first.
    pub async fn plan_state(&self, listed: &[MacAddr]) -> Result<Current, InventoryError> {
        self.settle().await;
        let known = self.store.known_macs().await?;
        self.load_listed(listed, &known).await?;
        let state = self.read();
        let groups = state
            .groups
            .values()
            .map(|g| {
                let holding = state
                    .rollouts
                    .holding(&g.name)
                    .map(|e| (e.id, e.rollout.spec.to.clone()));
                (
                    g.name.clone(),
                    CurrentGroup {
                        description: g.description.clone(),
                        selector: g.selector.clone(),
                        variables: g.variables.clone(),
                        pointer: g.pointer.clone(),
                        by_arch: g.by_arch.clone(),
                        holding,
                    },
                )
            })
            .collect();
        let machines = state
            .machines
            .values()
            .filter(|m| known.contains(&m.mac))
            .map(|m| {
                (
                    m.mac,
                    CurrentMachine {
                        hostname: m.hostname.clone(),
                        labels: m.labels.clone(),
                        assigned: m.assigned.clone(),
                        pin: m.pin.clone(),
                        kind: m.kind,
                        arch: m.arch,
                    },
                )
            })
            .collect();
        let generations = state
            .generations
            .values()
            .map(|g| {
                (
                    g.id.clone(),
                    GenerationFacts {
                        arch: g.manifest.arch,
                        installer: g.manifest.is_installer(),
                    },
                )
            })
            .collect();
        // BMC rows are the caller's to add: their passwords open only
        // with the BMC key.
        Ok(Current {
            groups,
            machines,
            generations,
            bmcs: Default::default(),
        })
    }

    /// Loads `listed` machines the database has and memory has not.
    async fn load_listed(
        &self,
        listed: &[MacAddr],
        known: &HashSet<MacAddr>,
    ) -> Result<(), InventoryError> {
        let missing: Vec<MacAddr> = {
            let state = self.read();
            listed
                .iter()
                .filter(|m| known.contains(m) && !state.machines.contains_key(m))
                .copied()
                .collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let mut loaded = Vec::new();
        for mac in missing {
            loaded.extend(load::machine(&self.store, mac).await?);
        }
        let moved = {
            let mut state = self.write();
            for m in loaded {
                state.machines.entry(m.mac).or_insert(m);
            }
            state.regroup()
        };
        load::save_groups(&self.store, &moved).await
    }

    /// Applies a plan's changes: everything, or nothing. Returns the ids of
    /// the rollouts it started.
    pub async fn apply(
        &self,
        changes: Vec<Change>,
        bmcs: &[crate::store::bmcs::BmcWrite],
        by: Option<String>,
    ) -> Result<Vec<i64>, RolloutCommandError> {
        self.settle().await;
        // One fleet change at a time (the rollout commands too), taken before
        // the transaction so the two never wait on each other.
        let _one_at_a_time = self.fleet_commands.lock().await;
        // The audit record: who, and what (the first lines of the plan).
        let total = changes.len();
        let lines: Vec<String> = changes
            .iter()
            .take(AUDIT_LINES)
            .map(|c| c.text.clone())
            .collect();
        let writes = self.writes_of(changes)?;
        if !writes.rollouts.is_empty() {
            self.must_lead().await?;
        }
        let listed: Vec<MacAddr> = writes.machines.iter().map(|(m, _)| *m).collect();
        let known = self.store.known_macs().await?;
        self.load_listed(&listed, &known).await?;

        let now = now_ms();
        let mut tx = self.store.begin().await?;
        for (name, change, slot, create) in &writes.groups {
            write_group(&mut tx, name, change, *slot, *create, now).await?;
        }
        for (mac, change) in &writes.machines {
            write_machine(&mut tx, *mac, change).await?;
        }
        for w in bmcs {
            tx.write_bmc(w).await?;
        }
        let known = if writes.rollouts.is_empty() {
            known
        } else {
            tx.known_macs().await?
        };
        let worked = self.work_out(&writes, &known, &by, now)?;
        let written: Result<(), StoreError> = async {
            tx.save_computed_groups(&worked.moved).await?;
            for (.., out) in &worked.started {
                tx.write_fleet_rows(&out.persist).await?;
            }
            tx.commit().await
        }
        .await;
        written?;

        let ids = self.show_applied(writes, worked, &by, now);
        self.ledger.event(
            None,
            None,
            "apply",
            serde_json::json!({ "by": by, "changes": total, "plan": lines, "rollouts": ids }),
            None,
        );
        Ok(ids)
    }

    /// A plan's changes as rows to write: groups (with the slot of each
    /// pointer they move), machines, rollouts to start.
    fn writes_of(&self, changes: Vec<Change>) -> Result<Writes, RolloutCommandError> {
        let mut writes = Writes::default();
        let pointer = |groups: &mut Vec<GroupWrite>, name: &str, id: GenerationId| {
            let slot = self.slot_of(Some(&id))?;
            let change = GroupChange {
                generation: Some(id),
                ..GroupChange::default()
            };
            groups.push((name.to_string(), change, slot, false));
            Ok::<_, InventoryError>(())
        };
        for c in changes {
            let create = c.op() == "create";
            match c.action {
                Action::CreateGroup { name, change, more }
                | Action::UpdateGroup { name, change, more } => {
                    let slot = self.slot_of(change.generation.as_ref())?;
                    writes.groups.push((name.clone(), change, slot, create));
                    for id in more {
                        pointer(&mut writes.groups, &name, id)?;
                    }
                }
                Action::UpdateMachine { mac, change } => {
                    if let Some(Some(id)) = &change.pin {
                        if self.generation(id).is_none() {
                            return Err(InventoryError::NoSuchGeneration(id.clone()).into());
                        }
                    }
                    writes.machines.push((mac, change));
                }
                Action::StartRollout(r) => writes.rollouts.push(r),
                // Sealed rows, which the caller passes to `apply`.
                Action::SetBmc { .. } => {}
            }
        }
        Ok(writes)
    }

    /// Everything worked out on a copy of what the plan touches, shown only
    /// once committed: a refusal or a failed commit leaves memory as it was.
    fn work_out(
        &self,
        writes: &Writes,
        known: &HashSet<MacAddr>,
        by: &Option<String>,
        now: i64,
    ) -> Result<WorkedOut, RolloutCommandError> {
        let mut copy = {
            let state = self.read();
            State {
                machines: state.machines.clone(),
                groups: state.groups.clone(),
                generations: state.generations.clone(),
                rollouts: state.rollouts.clone(),
                ..State::default()
            }
        };
        let base = copy.rollouts.rev();
        for (name, change, slot, _) in &writes.groups {
            apply_group(&mut copy, name, change.clone(), *slot);
        }
        for (mac, change) in &writes.machines {
            apply_machine(&mut copy, *mac, change.clone());
        }
        let moved = copy.regroup();
        let mut started = Vec::new();
        for r in &writes.rollouts {
            let (spec, slot, members) = rollout_plan(&copy, r, known)?;
            let (id, out) = copy
                .rollouts
                .start(spec.clone(), slot, &members, by.clone(), now)?;
            self.apply_pointers(&mut copy, &out.persist.pointers);
            started.push((spec, slot, members, id, out));
        }
        Ok(WorkedOut {
            rollouts: copy.rollouts,
            base,
            moved,
            started,
        })
    }

    /// Committed: the same changes on memory as it is now (the boot path
    /// kept registering machines and moving the fleet meanwhile). Returns
    /// the ids of the rollouts started.
    fn show_applied(
        &self,
        writes: Writes,
        worked: WorkedOut,
        by: &Option<String>,
        now: i64,
    ) -> Vec<i64> {
        let WorkedOut {
            rollouts,
            base,
            started,
            ..
        } = worked;
        let late = {
            let mut state = self.write();
            for (name, change, slot, _) in writes.groups {
                apply_group(&mut state, &name, change, slot);
            }
            for (mac, change) in writes.machines {
                apply_machine(&mut state, mac, change);
            }
            state.regroup();
            let committed: Vec<&Persist> = started.iter().map(|(.., out)| &out.persist).collect();
            self.show_fleet(&mut state, base, rollouts, &committed, |live| {
                started
                    .iter()
                    .map(|(spec, slot, members, _, out)| {
                        again_or_resave(live, &out.persist, now, |fleet| {
                            let again = fleet.start(spec.clone(), *slot, members, by.clone(), now);
                            again.map(|(_, again)| again)
                        })
                    })
                    .collect()
            })
        };
        self.queue_rows(late);
        let mut ids = Vec::new();
        for (.., id, out) in started {
            ids.push(id);
            self.after_fleet(out, true);
        }
        ids
    }
}

/// A group row to write: name, change, the slot of the pointer it moves,
/// and whether it is created.
type GroupWrite = (String, GroupChange, Option<Slot>, bool);

/// A plan's changes, sorted by what they write.
#[derive(Default)]
struct Writes {
    groups: Vec<GroupWrite>,
    machines: Vec<(MacAddr, MachineChange)>,
    rollouts: Vec<StartRollout>,
}

/// What a plan does to the fleet, worked out on a copy before the commit.
struct WorkedOut {
    /// The copy's rollouts, with the started ones.
    rollouts: crate::rollout::engine::Rollouts,
    /// The revision the copy was taken at.
    base: i64,
    /// Machines whose computed group moves.
    moved: Vec<(MacAddr, String)>,
    started: Vec<(
        Spec,
        Slot,
        Vec<MacAddr>,
        i64,
        crate::rollout::engine::Outcome,
    )>,
}

/// What starting `r` means on `state`: its spec, its slot, and the members
/// that follow the group's pointer (known to the database, sorted).
fn rollout_plan(
    state: &State,
    r: &StartRollout,
    known: &HashSet<MacAddr>,
) -> Result<(Spec, Slot, Vec<MacAddr>), RolloutCommandError> {
    let to = state
        .generations
        .get(&r.to)
        .cloned()
        .ok_or_else(|| InventoryError::NoSuchGeneration(r.to.clone()))?;
    let group = state
        .groups
        .get(&r.group)
        .cloned()
        .ok_or_else(|| RolloutCommandError::NoSuchGroup(r.group.clone()))?;
    let from = rollout_from(state, &group, &to)?;
    let mut members: Vec<MacAddr> = state
        .machines
        .values()
        .filter(|m| m.group == r.group && known.contains(&m.mac))
        .map(|m| m.mac)
        .filter(|mac| follows(state, *mac, false, "", &to.manifest))
        .collect();
    members.sort();
    let spec = Spec {
        group: r.group.clone(),
        from,
        to: r.to.clone(),
        strategy: r.strategy.clone(),
        timeout_ms: r.timeout_ms,
        require: r.require.clone(),
        rollback: r.rollback,
        on_bmc_failure: r.on_bmc_failure,
    };
    let slot = to.manifest.slot();
    Ok((spec, slot, members))
}
