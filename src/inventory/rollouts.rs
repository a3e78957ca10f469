//! The inventory's side of rollouts and the watchdog: operator commands,
//! the clock, and what a transition's [`Outcome`] does (rows, ledger events,
//! reboot requests).
//!
//! Writes: the boot path and the clock queue a transition's rows through
//! the ledger (one record, so one transaction); operator commands write
//! theirs in their own `BEGIN IMMEDIATE` transaction after the ledger is
//! flushed and answer only once it is committed. Rows carry the engine's
//! `rev`, so either order leaves the newest state.

use super::{Boot, Inventory, InventoryError, StartRollout, State};
use crate::boot::{GenerationId, GroupFacts};
use crate::domain::{MacAddr, MachineKind};
use crate::ledger::{now_ms, Record};
use crate::rollout::engine::{Entry, FleetError, Outcome, Persist, PointerMove, Rollouts};
use crate::rollout::hook::Job;
use crate::rollout::watchdog::{Health, Policy};
use crate::rollout::{Member, Spec};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum RolloutCommandError {
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    #[error("group {0} does not exist")]
    NoSuchGroup(String),
    #[error("{0}")]
    NoStartingPoint(String),
    /// Several servers share the database and another one leads the fleet:
    /// rollout commands go to it (`leader`: its HTTP base URL, if it beats).
    #[error("this server does not lead the fleet; send rollout commands to {}", .leader.as_deref().unwrap_or("the leader (none beats right now; one takes over within seconds)"))]
    NotLeader { leader: Option<String> },
}

impl From<StoreError> for RolloutCommandError {
    fn from(e: StoreError) -> Self {
        Self::Inventory(InventoryError::Store(e))
    }
}

/// Whether a member of a group would move in a rollout to an image with
/// `manifest`: not pinned, of the right kind (a switch for an installer)
/// and architecture. Memory knows best; a machine only the database knows
/// (seen by DHCP since start) is judged by its row (`pinned`, `kind`).
pub(super) fn follows(
    state: &State,
    mac: MacAddr,
    pinned: bool,
    kind: &str,
    manifest: &crate::images::Manifest,
) -> bool {
    let member = match state.machines.get(&mac) {
        Some(m) => Member {
            pinned: m.pin.is_some(),
            switch: m.kind == MachineKind::Switch,
            arch: m.arch,
        },
        None => Member {
            pinned,
            switch: kind == "switch",
            arch: None,
        },
    };
    member.follows(manifest.slot())
}

/// A committed change applied again to the live fleet (see
/// [`Inventory::show_fleet`]); when the fleet now refuses it (the rollout
/// finished meanwhile), the rows of what `committed` touched as the fleet
/// holds them, so the store comes back to what memory shows.
pub(super) fn again_or_resave(
    rollouts: &mut Rollouts,
    committed: &Persist,
    now: i64,
    change: impl FnOnce(&mut Rollouts) -> Result<Outcome, FleetError>,
) -> Persist {
    match change(rollouts) {
        Ok(again) => again.persist,
        Err(e) => {
            tracing::warn!(error = %e, "a change committed while the fleet moved, and the fleet refuses it now; its rows are written back");
            rollouts.resave(committed, now).persist
        }
    }
}

/// Where a rollout of `group` to `to` starts: the group's generation for
/// `to`'s architecture slot.
pub(super) fn rollout_from(
    state: &State,
    group: &super::Group,
    to: &super::Generation,
) -> Result<GenerationId, RolloutCommandError> {
    let slot = to.manifest.slot();
    let facts = GroupFacts {
        name: group.name.clone(),
        pointer: group.pointer.clone(),
        by_arch: group.by_arch.clone().into_iter().collect(),
    };
    facts
        .pointer_for(Some(slot.cpu), slot.installer)
        .cloned()
        .filter(|g| {
            state
                .generations
                .get(g)
                .is_some_and(|g| g.manifest.slot() == slot)
        })
        .ok_or_else(|| {
            RolloutCommandError::NoStartingPoint(format!(
                "group {} has no {slot} generation to roll out from; point it at one first",
                group.name
            ))
        })
}

impl Inventory {
    /// The watchdog's policy and the reboot hook's queue (once, at start).
    pub fn configure_rollouts(&self, policy: Policy, reboots: tokio::sync::mpsc::Sender<Job>) {
        self.write().rollouts.policy = policy;
        let _ = self.reboots.set(reboots);
    }

    pub fn rollouts(&self) -> Vec<Entry> {
        self.read().rollouts.rollouts().cloned().collect()
    }

    pub fn rollout(&self, id: i64) -> Option<Entry> {
        self.read().rollouts.rollout(id).cloned()
    }

    pub fn watchdog_policy(&self) -> Policy {
        self.read().rollouts.policy
    }

    pub fn health(&self, mac: MacAddr) -> Health {
        self.read().rollouts.health(mac)
    }

    pub fn degraded(&self) -> Vec<(MacAddr, Health)> {
        self.read().rollouts.degraded()
    }

    /// A completed rollout moved a group pointer: memory follows (the rows
    /// are in the same transition's write).
    pub(super) fn apply_pointers(&self, state: &mut State, pointers: &[PointerMove]) {
        for m in pointers {
            if let Some(g) = state.groups.get_mut(&m.group) {
                g.pointer = Some(m.generation.clone());
                g.by_arch.insert(m.slot, m.generation.clone());
            }
        }
    }

    /// Shows a fleet change once it is committed. `next` is a copy of the
    /// fleet taken at revision `base` with the change applied, `committed`
    /// the rows now in SQLite. If nothing moved the fleet meanwhile, `next`
    /// takes its place; otherwise `again` applies the change to the fleet as
    /// it is now, and its rows are returned for [`Inventory::queue_rows`]
    /// (they follow the boot path's). Either way the group pointers the
    /// change moved are moved in memory.
    pub(super) fn show_fleet(
        &self,
        state: &mut State,
        base: i64,
        next: Rollouts,
        committed: &[&Persist],
        again: impl FnOnce(&mut Rollouts) -> Vec<Persist>,
    ) -> Vec<Persist> {
        if state.rollouts.rev() == base {
            state.rollouts = next;
            for rows in committed {
                self.apply_pointers(state, &rows.pointers);
            }
            return Vec::new();
        }
        let rows = again(&mut state.rollouts);
        for r in &rows {
            self.apply_pointers(state, &r.pointers);
        }
        rows
    }

    /// Queues rows [`Inventory::show_fleet`] returned.
    pub(super) fn queue_rows(&self, rows: Vec<Persist>) {
        for r in rows.into_iter().filter(|r| !r.is_empty()) {
            self.queue_persist(r);
        }
    }

    /// Queues one transition's rows; the pointer moves it carries are
    /// remembered until committed (a reload must not undo them).
    fn queue_persist(&self, rows: Persist) {
        let pointers = rows.pointers.clone();
        self.ledger.record(Record::Rollout(rows));
        if !pointers.is_empty() && self.store.is_shared() {
            // After the record: a reload that flushed the ledger before
            // this line may show the move twice, never lose it.
            self.unsaved_pointers
                .lock()
                .expect("unsaved pointers lock")
                .extend(pointers);
        }
    }

    /// Records a transition's events and asks for its reboots; queues its
    /// rows unless the caller already wrote them.
    pub(super) fn after_fleet(&self, out: Outcome, written: bool) {
        if !written && !out.persist.is_empty() {
            self.queue_persist(out.persist);
        }
        for n in out.notes {
            self.ledger.event(n.mac, None, n.step, n.detail, None);
        }
        if out.reboots.is_empty() {
            return;
        }
        let Some(queue) = self.reboots.get() else {
            return;
        };
        let state = self.read();
        for mut reboot in out.reboots {
            let m = state.machines.get(&reboot.mac);
            if reboot.group.is_empty() {
                reboot.group = m.map(|m| m.group.clone()).unwrap_or_default();
            }
            let job = Job {
                ip: m.and_then(|m| m.ip.clone()),
                hostname: m.and_then(|m| m.hostname.clone()),
                reboot,
            };
            if queue.try_send(job).is_err() {
                tracing::warn!("reboot hook queue full; a machine waits for its own reboot");
            }
        }
    }

    /// A machine's BMC could not reboot it for a rollout (see
    /// [`Rollouts::reboot_failed`]).
    pub fn reboot_failed(&self, reboot: &crate::rollout::engine::Reboot, error: &str, now_ms: i64) {
        let out = {
            let mut state = self.write();
            let out = state.rollouts.reboot_failed(reboot, error, now_ms);
            self.apply_pointers(&mut state, &out.persist.pointers);
            out
        };
        self.after_fleet(out, false);
    }

    /// The machine of the boot with `token` reports that boot failed
    /// (`reason`): counted at once (see [`Rollouts::reported_failure`]).
    /// The boot it names, or why it is refused.
    pub fn report_failure(&self, token: &str, reason: String) -> Result<Boot, InventoryError> {
        let boot = self
            .boot_for_token(token)
            .ok_or(InventoryError::UnknownToken)?;
        if boot.confirmed {
            return Err(InventoryError::AlreadyConfirmed(boot.id));
        }
        if !self.leads() {
            let seen = super::shared::Seen::Failed {
                mac: boot.mac,
                id: boot.id,
                reason,
            };
            self.hand_over(seen, now_ms());
            return Ok(boot);
        }
        let out = {
            let mut state = self.write();
            let out = state
                .rollouts
                .reported_failure(boot.mac, boot.id, reason, now_ms());
            self.apply_pointers(&mut state, &out.persist.pointers);
            out
        };
        self.after_fleet(out, false);
        Ok(boot)
    }

    /// The clock: watchdog timeouts and rollout gates.
    pub fn tick_rollouts(&self, now_ms: i64) {
        if !self.leads() {
            return;
        }
        let out = {
            let mut state = self.write();
            let out = state.rollouts.tick(now_ms);
            self.apply_pointers(&mut state, &out.persist.pointers);
            out
        };
        self.after_fleet(out, false);
    }

    /// Runs an operator command on a copy of the fleet, commits its rows, and
    /// only then shows it: a failed commit leaves memory, and so the boot
    /// path, as it was. Commands run one at a time. If the boot path moved
    /// the fleet during the commit (a boot, a confirmation), the command is
    /// applied again to the fleet as it is now and those rows are queued
    /// after the boot path's; if the fleet now refuses it (the rollout
    /// finished meanwhile), its rows as they are now are queued instead, so
    /// the store comes back to what memory shows.
    async fn fleet_command<T>(
        &self,
        f: impl Fn(&mut Rollouts, i64) -> Result<(T, Outcome), FleetError>,
    ) -> Result<T, RolloutCommandError> {
        self.must_lead().await?;
        // Rows the boot path queued are committed first (the one-rollout-
        // per-group index must see a finished rollout as finished).
        self.settle().await;
        let _one_at_a_time = self.fleet_commands.lock().await;
        let now = now_ms();
        let (mut next, base) = {
            let state = self.read();
            (state.rollouts.clone(), state.rollouts.rev())
        };
        let (value, out) = f(&mut next, now)?;
        let mut tx = self.store.begin().await?;
        tx.write_fleet_rows(&out.persist).await?;
        tx.commit().await?;
        let late = {
            let mut state = self.write();
            self.show_fleet(&mut state, base, next, &[&out.persist], |live| {
                let again = |fleet: &mut Rollouts| f(fleet, now).map(|(_, again)| again);
                vec![again_or_resave(live, &out.persist, now, again)]
            })
        };
        self.after_fleet(out, true);
        self.queue_rows(late);
        Ok(value)
    }

    /// Refuses a fleet command on a server that does not lead the fleet,
    /// naming the one that does.
    pub(super) async fn must_lead(&self) -> Result<(), RolloutCommandError> {
        if self.leads() {
            return Ok(());
        }
        let leader = self
            .store
            .live_leader(now_ms())
            .await?
            .map(|(_, http)| http);
        Err(RolloutCommandError::NotLeader { leader })
    }

    /// Starts a rollout of `req.group` to `req.to` from the generation the
    /// group points at for that image's architecture. Its machines are the
    /// group's members that follow that pointer (not pinned, of the right
    /// kind and architecture).
    pub async fn start_rollout(
        &self,
        req: StartRollout,
        by: Option<String>,
    ) -> Result<Entry, RolloutCommandError> {
        self.settle().await;
        let to = self
            .generation(&req.to)
            .ok_or_else(|| InventoryError::NoSuchGeneration(req.to.clone()))?;
        let slot = to.manifest.slot();
        let group = self
            .group(&req.group)
            .ok_or_else(|| RolloutCommandError::NoSuchGroup(req.group.clone()))?;
        let from = rollout_from(&self.read(), &group, &to)?;
        let rows = self.store.group_members(&req.group).await?;
        let members: Vec<MacAddr> = {
            let state = self.read();
            // Machines the database knows (seen at least once): one known
            // only from a DHCP reservation has never booted and would hold
            // its wave until the timeout.
            let members: Vec<MacAddr> = rows
                .into_iter()
                .filter_map(|(mac, pin, kind)| {
                    let mac: MacAddr = mac.parse().ok()?;
                    follows(&state, mac, pin.is_some(), &kind, &to.manifest).then_some(mac)
                })
                .collect();
            members
        };
        let spec = Spec {
            group: req.group.clone(),
            from,
            to: req.to.clone(),
            strategy: req.strategy,
            timeout_ms: req.timeout_ms,
            require: req.require,
            rollback: req.rollback,
            on_bmc_failure: req.on_bmc_failure,
        };
        let id = self
            .fleet_command(|fleet, now| fleet.start(spec.clone(), slot, &members, by.clone(), now))
            .await?;
        Ok(self.rollout(id).expect("just started"))
    }

    pub async fn pause_rollout(
        &self,
        id: i64,
        by: Option<&str>,
    ) -> Result<Entry, RolloutCommandError> {
        self.fleet_command(|f, now| f.pause(id, by, now).map(|o| ((), o)))
            .await?;
        Ok(self.rollout(id).expect("exists"))
    }

    pub async fn resume_rollout(
        &self,
        id: i64,
        by: Option<&str>,
    ) -> Result<Entry, RolloutCommandError> {
        self.fleet_command(|f, now| f.resume(id, by, now).map(|o| ((), o)))
            .await?;
        Ok(self.rollout(id).expect("exists"))
    }

    pub async fn abort_rollout(
        &self,
        id: i64,
        reason: &str,
        by: Option<&str>,
    ) -> Result<Entry, RolloutCommandError> {
        self.fleet_command(|f, now| f.abort(id, reason, by, now).map(|o| ((), o)))
            .await?;
        Ok(self.rollout(id).expect("exists"))
    }

    /// Clears a machine's degraded mark: its next boot tries its target again.
    pub async fn clear_degraded(
        &self,
        mac: MacAddr,
        by: Option<&str>,
    ) -> Result<Health, RolloutCommandError> {
        self.fleet_command(|f, now| f.clear(mac, by, now).map(|o| ((), o)))
            .await?;
        Ok(self.health(mac))
    }
}
