//! The rollout service's memory: every rollout (active or finished) and
//! every machine's watchdog [`Health`], fed what the boot path and the clock
//! see, answering what a machine boots. Still no I/O: each transition returns
//! an [`Outcome`] saying what to write (one transaction), what to record in
//! the ledger and which machines to reboot, in that order.
//!
//! The inventory owns one [`Rollouts`] under its lock, so the boot decision
//! (group pointer → rollout → watchdog) is taken in one place without
//! waiting on SQLite. Every change carries a higher `rev`; the store only
//! ever replaces a row by a newer one, so writes queued by the boot path and
//! written directly by operator commands may commit in any order and still
//! leave the newest state.
//!
//! Order inside a boot (see [`Rollouts::boot`]): first the previous boot, if it
//! never confirmed, is counted as failed (a rollout may roll back because of
//! it); only then is the target decided, so the very boot that revealed the
//! failure already gets generation A or the last good one.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use serde_json::{json, Value};

use super::watchdog::{Health, Policy, Verdict};
use super::{Action, Observation, Rollout, RolloutError, Spec, State};
use crate::boot::{GenerationId, Source, Target};
use crate::domain::{MacAddr, Slot};

/// One rollout with what the service keeps beside the state machine.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub id: i64,
    /// The group pointer it moves when it completes (`x86_64`, …).
    pub slot: Slot,
    pub rollout: Rollout,
    pub created_ms: i64,
    pub created_by: Option<String>,
    pub updated_ms: i64,
}

impl Entry {
    /// Running, paused, or stopped on B: it decides what its moved machines
    /// boot, and no other rollout may start on its group.
    pub fn holds(&self) -> bool {
        let s = &self.rollout.state;
        s.is_active() || matches!(s, State::Stopped { .. })
    }

    /// The state's key as stored and shown (`rolled_back`, …).
    pub fn state_key(&self) -> &'static str {
        match self.rollout.state {
            State::Running => "running",
            State::Paused => "paused",
            State::Succeeded => "succeeded",
            State::RolledBack { .. } => "rolled_back",
            State::Stopped { .. } => "stopped",
            State::Aborted { .. } => "aborted",
        }
    }

    /// Why it stopped, when it did.
    pub fn reason(&self) -> Option<&str> {
        match &self.rollout.state {
            State::RolledBack { reason }
            | State::Stopped { reason }
            | State::Aborted { reason } => Some(reason),
            _ => None,
        }
    }
}

pub use crate::domain::fleet_rows::{HealthRow, Persist, PointerMove, RolloutRow};

/// A ledger event to record.
#[derive(Debug, Clone)]
pub struct Note {
    pub mac: Option<MacAddr>,
    pub step: &'static str,
    pub detail: Value,
}

/// A machine that must reboot to boot what it should now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reboot {
    pub mac: MacAddr,
    /// The rollout that moved it; `None`: the watchdog (a boot that went
    /// silent: the machine hangs, and only a reset brings it back).
    pub rollout: Option<i64>,
    /// Its group (empty from the watchdog: the inventory fills it in).
    pub group: String,
    /// What its next boot will be served.
    pub generation: GenerationId,
    pub reason: String,
}

/// What a transition asks of the world.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub persist: Persist,
    pub notes: Vec<Note>,
    pub reboots: Vec<Reboot>,
}

impl Outcome {
    fn note(&mut self, mac: Option<MacAddr>, step: &'static str, detail: Value) {
        self.notes.push(Note { mac, step, detail });
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FleetError {
    #[error("no rollout {0}")]
    NoSuchRollout(i64),
    #[error("group {group} already has rollout {id} ({state}); pause, finish or abort it first")]
    GroupBusy {
        group: String,
        id: i64,
        state: &'static str,
    },
    #[error("rollout {id}: {source}")]
    Refused { id: i64, source: RolloutError },
    #[error(transparent)]
    Invalid(RolloutError),
    #[error("machine {0} is not degraded")]
    NotDegraded(MacAddr),
}

/// Every rollout and every machine's health.
#[derive(Debug, Clone)]
pub struct Rollouts {
    pub policy: Policy,
    rollouts: BTreeMap<i64, Entry>,
    health: HashMap<MacAddr, Health>,
    next_id: i64,
    rev: i64,
}

impl Default for Rollouts {
    fn default() -> Self {
        Self {
            policy: Policy {
                max_failures: 3,
                confirm_timeout_ms: 10 * 60_000,
            },
            rollouts: BTreeMap::new(),
            health: HashMap::new(),
            next_id: 1,
            rev: 0,
        }
    }
}

impl Rollouts {
    /// What the store held at start.
    pub fn restore(
        policy: Policy,
        rollouts: Vec<Entry>,
        health: Vec<(MacAddr, Health)>,
        rev: i64,
    ) -> Self {
        let next_id = rollouts.iter().map(|e| e.id).max().unwrap_or(0) + 1;
        Self {
            policy,
            rollouts: rollouts.into_iter().map(|e| (e.id, e)).collect(),
            health: health.into_iter().collect(),
            next_id,
            rev,
        }
    }

    pub fn rollouts(&self) -> impl Iterator<Item = &Entry> {
        self.rollouts.values()
    }

    pub fn rollout(&self, id: i64) -> Option<&Entry> {
        self.rollouts.get(&id)
    }

    /// The rollout holding `group`, if one does.
    pub fn holding(&self, group: &str) -> Option<&Entry> {
        self.rollouts
            .values()
            .find(|e| e.holds() && e.rollout.spec.group == group)
    }

    pub fn health(&self, mac: MacAddr) -> Health {
        self.health.get(&mac).cloned().unwrap_or_default()
    }

    /// Degraded machines, by MAC.
    pub fn degraded(&self) -> Vec<(MacAddr, Health)> {
        let mut all: Vec<_> = self
            .health
            .iter()
            .filter(|(_, h)| h.degraded.is_some())
            .map(|(m, h)| (*m, h.clone()))
            .collect();
        all.sort_by_key(|(m, _)| *m);
        all
    }

    /// Generations a holding rollout still needs (garbage collection keeps them).
    pub fn held_generations(&self) -> Vec<(GenerationId, i64)> {
        self.rollouts
            .values()
            .filter(|e| e.holds())
            .flat_map(|e| {
                [
                    (e.rollout.spec.from.clone(), e.id),
                    (e.rollout.spec.to.clone(), e.id),
                ]
            })
            .collect()
    }

    /// Grows with every change: two copies with the same `rev` hold the
    /// same rollouts and health.
    pub fn rev(&self) -> i64 {
        self.rev
    }

    /// Rows for what this fleet holds of the rollouts and machines `rows`
    /// names, with fresh revisions: written after `rows`, they bring the
    /// store back to this fleet (a change committed on a copy that the
    /// fleet itself, moved meanwhile, then refused).
    pub fn resave(&mut self, rows: &Persist, now_ms: i64) -> Outcome {
        let mut out = Outcome::default();
        for r in &rows.rollouts {
            self.save_rollout(r.id, now_ms, &mut out);
        }
        for h in &rows.health {
            self.save_health(h.mac, now_ms, &mut out);
        }
        out.persist.at_ms = now_ms;
        out
    }

    fn next_rev(&mut self) -> i64 {
        self.rev += 1;
        self.rev
    }

    fn save_rollout(&mut self, id: i64, now_ms: i64, out: &mut Outcome) {
        let rev = self.next_rev();
        let Some(e) = self.rollouts.get_mut(&id) else {
            return;
        };
        e.updated_ms = now_ms;
        let row = RolloutRow {
            id,
            group: e.rollout.spec.group.clone(),
            slot: e.slot,
            state: e.state_key(),
            holds: e.holds(),
            json: serde_json::to_string(&e.rollout).expect("rollout serializes"),
            created_ms: e.created_ms,
            created_by: e.created_by.clone(),
            updated_ms: now_ms,
            rev,
        };
        out.persist.rollouts.retain(|r| r.id != id);
        out.persist.rollouts.push(row);
    }

    fn save_health(&mut self, mac: MacAddr, now_ms: i64, out: &mut Outcome) {
        let rev = self.next_rev();
        let h = self.health.entry(mac).or_default();
        let row = HealthRow {
            mac,
            json: serde_json::to_string(h).expect("health serializes"),
            degraded: h.degraded.is_some(),
            updated_ms: now_ms,
            rev,
        };
        out.persist.health.retain(|r| r.mac != mac);
        out.persist.health.push(row);
    }

    /// The OS a boot installed carries it on (a switch's network OS asks
    /// for its ZTP script after ONIE installed it): the open boot has not
    /// failed and is closed without counting; the request being served
    /// opens the boot whose confirmation counts. `true` if one was open.
    pub fn carry_on(&mut self, mac: MacAddr) -> bool {
        self.health
            .get_mut(&mac)
            .is_some_and(|h| h.open.take().is_some())
    }

    /// A machine asks for its boot script: counts the previous boot as
    /// failed if it never confirmed, then decides what it boots, starting
    /// from `base` (pin or group pointer): a rollout's B for a moved
    /// machine, the last good generation for a degraded one. Opens the boot.
    pub fn boot(
        &mut self,
        mac: MacAddr,
        group: &str,
        last_good: Option<&GenerationId>,
        base: Target,
        boot_id: i64,
        now_ms: i64,
    ) -> (Target, Outcome) {
        let mut out = Outcome::default();
        out.persist.at_ms = now_ms;
        self.netbooted(mac, now_ms, &mut out);
        let mut target = base;
        if let Target::Boot {
            generation,
            source: Source::Group,
        } = &target
        {
            let moved = self.rollouts.values().find_map(|e| {
                let r = &e.rollout;
                (r.spec.group == group && r.spec.from == *generation)
                    .then(|| r.target_for(mac).cloned())
                    .flatten()
                    .map(|to| (e.id, to))
            });
            if let Some((id, to)) = moved {
                out.note(
                    Some(mac),
                    "rollout.serve",
                    json!({ "rollout": id, "instead_of": generation, "generation": to }),
                );
                target = Target::Boot {
                    generation: to,
                    source: Source::Rollout,
                };
            }
        }
        if let Target::Boot { generation, .. } = &target {
            match self.health(mac).verdict(generation, last_good) {
                Verdict::Target => {}
                Verdict::LastGood {
                    generation: good,
                    reason,
                } => {
                    out.note(
                        Some(mac),
                        "watchdog.last_good",
                        json!({ "target": generation, "serving": good, "reason": reason }),
                    );
                    target = Target::Boot {
                        generation: good,
                        source: Source::LastGood,
                    };
                }
                Verdict::NoFallback { reason } => out.note(
                    Some(mac),
                    "watchdog.no_fallback",
                    json!({ "target": generation, "reason": reason }),
                ),
            }
        }
        self.open(mac, &target, boot_id, now_ms, &mut out);
        (target, out)
    }

    /// A boot another server decided and served (`[store] shared`: the
    /// leader hears of it from the inbox): the machine's previous boot
    /// counts as failed if it never confirmed, and this one is open with
    /// what was `served`. Decides nothing: the server that served it
    /// asked [`Rollouts::boot`] on its copy of the fleet.
    pub fn served(&mut self, mac: MacAddr, served: &Target, boot_id: i64, now_ms: i64) -> Outcome {
        let mut out = Outcome::default();
        out.persist.at_ms = now_ms;
        self.netbooted(mac, now_ms, &mut out);
        self.open(mac, served, boot_id, now_ms, &mut out);
        out
    }

    /// A machine network-booted: its previous boot, if it never confirmed
    /// (and was not carried on), failed.
    fn netbooted(&mut self, mac: MacAddr, now_ms: i64, out: &mut Outcome) {
        let policy = self.policy;
        let failure = self
            .health
            .entry(mac)
            .or_default()
            .netbooted(&policy, now_ms);
        if let Some((failure, failed_boot)) = failure {
            self.failed(mac, failure, failed_boot, Some(mac), now_ms, out);
        }
    }

    /// Opens boot `boot_id` of `target`'s generation, for the watchdog.
    fn open(
        &mut self,
        mac: MacAddr,
        target: &Target,
        boot_id: i64,
        now_ms: i64,
        out: &mut Outcome,
    ) {
        if let Target::Boot { generation, .. } = target {
            self.health
                .entry(mac)
                .or_default()
                .open(generation, Some(boot_id), now_ms);
        }
        self.save_health(mac, now_ms, out);
    }

    /// A failed boot: recorded, counted by the watchdog (already done by
    /// the caller), and seen by every rollout that moved the machine.
    fn failed(
        &mut self,
        mac: MacAddr,
        failure: super::watchdog::Failure,
        boot_id: Option<i64>,
        booting: Option<MacAddr>,
        now_ms: i64,
        out: &mut Outcome,
    ) {
        if let Some(id) = boot_id {
            out.persist.failed_boots.push((id, failure.reason.clone()));
        }
        out.note(
            Some(mac),
            "watchdog.failed_boot",
            json!({ "boot": boot_id, "generation": failure.generation, "reason": failure.reason }),
        );
        if failure.degraded {
            let why = self
                .health
                .get(&mac)
                .and_then(|h| h.degraded.as_ref())
                .map(|d| d.reason.clone())
                .unwrap_or_default();
            out.note(
                Some(mac),
                "watchdog.degraded",
                json!({ "generation": failure.generation, "reason": why, "max_failures": self.policy.max_failures }),
            );
        }
        self.save_health(mac, now_ms, out);
        let ids: Vec<i64> = self
            .rollouts
            .values()
            .filter(|e| e.rollout.state.is_active())
            .map(|e| e.id)
            .collect();
        for id in ids {
            let actions = self
                .rollouts
                .get_mut(&id)
                .map(|e| {
                    e.rollout.observe(Observation::Failed {
                        mac,
                        generation: &failure.generation,
                        reason: &failure.reason,
                        at_ms: now_ms,
                    })
                })
                .unwrap_or_default();
            if !actions.is_empty() {
                self.act(id, actions, booting, now_ms, out);
                self.save_rollout(id, now_ms, out);
            }
        }
    }

    /// The booted OS confirmed `generation` with the phone-home `fields`.
    pub fn confirmed(
        &mut self,
        mac: MacAddr,
        generation: &GenerationId,
        fields: &BTreeMap<String, String>,
        now_ms: i64,
    ) -> Outcome {
        let mut out = Outcome::default();
        out.persist.at_ms = now_ms;
        let h = self.health.entry(mac).or_default();
        let was_degraded = h.degraded.is_some();
        h.confirmed(generation);
        if was_degraded && h.degraded.is_none() {
            out.note(
                Some(mac),
                "watchdog.recovered",
                json!({ "generation": generation }),
            );
        }
        self.save_health(mac, now_ms, &mut out);
        let ids: Vec<i64> = self
            .rollouts
            .values()
            .filter(|e| e.rollout.state.is_active() && e.rollout.moved.contains_key(&mac))
            .map(|e| e.id)
            .collect();
        for id in ids {
            let Some(e) = self.rollouts.get_mut(&id) else {
                continue;
            };
            let before = e.rollout.moved.get(&mac).and_then(|m| m.confirmed_ms);
            let actions = e.rollout.observe(Observation::Confirmed {
                mac,
                generation,
                fields,
                at_ms: now_ms,
            });
            let after = e.rollout.moved.get(&mac).and_then(|m| m.confirmed_ms);
            if before != after {
                out.note(
                    Some(mac),
                    "rollout.confirmed",
                    json!({ "rollout": id, "generation": generation }),
                );
            } else if *generation == e.rollout.spec.to {
                if let Some(r) = &e.rollout.spec.require {
                    out.note(
                        Some(mac),
                        "rollout.not_counted",
                        json!({ "rollout": id, "reason": format!("the confirmation did not carry {}={}", r.key, r.value) }),
                    );
                }
            }
            self.act(id, actions, None, now_ms, &mut out);
            self.save_rollout(id, now_ms, &mut out);
        }
        out
    }

    /// The BMC of a machine a rollout moved could not reboot it, even after
    /// its retries. Under the rollout's `on_bmc_failure: fail` the wave's
    /// gate fails as if the machine had failed to boot B (and rolls back as
    /// the rollout says); under `wait` the wave waits for it until its
    /// timeout. Either way the failure is a note for the operator.
    pub fn reboot_failed(&mut self, reboot: &Reboot, error: &str, now_ms: i64) -> Outcome {
        let mut out = Outcome::default();
        out.persist.at_ms = now_ms;
        let Some(entry) = reboot.rollout.and_then(|id| self.rollouts.get_mut(&id)) else {
            return out;
        };
        let id = entry.id;
        let policy = entry.rollout.spec.on_bmc_failure;
        out.note(
            Some(reboot.mac),
            "rollout.reboot_failed",
            json!({ "rollout": id, "generation": reboot.generation, "error": error, "on_bmc_failure": policy }),
        );
        if policy != super::OnBmcFailure::Fail || !entry.rollout.state.is_active() {
            return out;
        }
        let reason = format!("its BMC could not reboot it: {error}");
        let actions = entry.rollout.observe(Observation::Failed {
            mac: reboot.mac,
            generation: &reboot.generation,
            reason: &reason,
            at_ms: now_ms,
        });
        if !actions.is_empty() {
            self.act(id, actions, None, now_ms, &mut out);
            self.save_rollout(id, now_ms, &mut out);
        }
        out
    }

    /// `mac` reported that its open boot `boot_id` failed: the watchdog
    /// counts it now instead of at its timeout, and every rollout that
    /// moved the machine sees it. The machine reboots itself.
    pub fn reported_failure(
        &mut self,
        mac: MacAddr,
        boot_id: i64,
        reason: String,
        now_ms: i64,
    ) -> Outcome {
        let mut out = Outcome::default();
        out.persist.at_ms = now_ms;
        let policy = self.policy;
        let failure = self
            .health
            .get_mut(&mac)
            .and_then(|h| h.reported(&policy, boot_id, reason, now_ms));
        if let Some(failure) = failure {
            self.failed(mac, failure, Some(boot_id), Some(mac), now_ms, &mut out);
        }
        out
    }

    /// The clock: silent boots past the watchdog timeout fail; open gates
    /// pass (next wave, or the pointer moves) or time out.
    pub fn tick(&mut self, now_ms: i64) -> Outcome {
        let mut out = Outcome::default();
        out.persist.at_ms = now_ms;
        let policy = self.policy;
        let mut silent: Vec<MacAddr> = self
            .health
            .iter()
            .filter(|(_, h)| {
                h.open
                    .as_ref()
                    .is_some_and(|o| now_ms - o.served_ms >= policy.confirm_timeout_ms)
            })
            .map(|(m, _)| *m)
            .collect();
        silent.sort();
        for mac in silent {
            let failure = self
                .health
                .get_mut(&mac)
                .and_then(|h| h.tick_boot(&policy, now_ms));
            if let Some((failure, boot)) = failure {
                let hung = Reboot {
                    mac,
                    rollout: None,
                    group: String::new(),
                    generation: failure.generation.clone(),
                    reason: format!(
                        "watchdog: boot of {} silent for {} s; reset",
                        failure.generation,
                        policy.confirm_timeout_ms / 1000
                    ),
                };
                self.failed(mac, failure, boot, None, now_ms, &mut out);
                // A rollback may already reboot it; else the watchdog does.
                if !out.reboots.iter().any(|r| r.mac == mac) {
                    out.reboots.push(hung);
                }
            }
        }
        let running: Vec<i64> = self
            .rollouts
            .values()
            .filter(|e| e.rollout.state == State::Running)
            .map(|e| e.id)
            .collect();
        for id in running {
            let actions = self
                .rollouts
                .get_mut(&id)
                .map(|e| e.rollout.tick(now_ms))
                .unwrap_or_default();
            if !actions.is_empty() {
                self.act(id, actions, None, now_ms, &mut out);
                self.save_rollout(id, now_ms, &mut out);
            }
        }
        out
    }

    /// Starts a rollout over `members` (the group's machines that follow
    /// its pointer for `slot`).
    pub fn start(
        &mut self,
        spec: Spec,
        slot: Slot,
        members: &[MacAddr],
        by: Option<String>,
        now_ms: i64,
    ) -> Result<(i64, Outcome), FleetError> {
        if let Some(e) = self.holding(&spec.group) {
            return Err(FleetError::GroupBusy {
                group: spec.group.clone(),
                id: e.id,
                state: e.state_key(),
            });
        }
        let (rollout, actions) =
            Rollout::start(spec, members, now_ms).map_err(FleetError::Invalid)?;
        let id = self.next_id;
        self.next_id += 1;
        let mut out = Outcome::default();
        out.persist.at_ms = now_ms;
        out.note(
            None,
            "rollout.started",
            json!({ "rollout": id, "group": rollout.spec.group, "from": rollout.spec.from, "to": rollout.spec.to, "waves": rollout.waves, "by": by }),
        );
        self.rollouts.insert(
            id,
            Entry {
                id,
                slot,
                rollout,
                created_ms: now_ms,
                created_by: by,
                updated_ms: now_ms,
            },
        );
        self.act(id, actions, None, now_ms, &mut out);
        // A canary that is already on B (confirmed before) passes at once.
        let more = self
            .rollouts
            .get_mut(&id)
            .map(|e| e.rollout.tick(now_ms))
            .unwrap_or_default();
        self.act(id, more, None, now_ms, &mut out);
        self.save_rollout(id, now_ms, &mut out);
        Ok((id, out))
    }

    fn command(
        &mut self,
        id: i64,
        now_ms: i64,
        step: &'static str,
        by: Option<&str>,
        f: impl FnOnce(&mut Rollout) -> Result<Vec<MacAddr>, RolloutError>,
    ) -> Result<Outcome, FleetError> {
        let e = self
            .rollouts
            .get_mut(&id)
            .ok_or(FleetError::NoSuchRollout(id))?;
        let sent_back = f(&mut e.rollout).map_err(|source| FleetError::Refused { id, source })?;
        let spec = e.rollout.spec.clone();
        let mut out = Outcome::default();
        out.persist.at_ms = now_ms;
        out.note(
            None,
            step,
            json!({ "rollout": id, "group": spec.group, "by": by }),
        );
        for mac in sent_back {
            out.reboots.push(Reboot {
                mac,
                rollout: Some(id),
                group: spec.group.clone(),
                generation: spec.from.clone(),
                reason: format!("rollout {id} aborted: back to {}", spec.from),
            });
        }
        self.save_rollout(id, now_ms, &mut out);
        Ok(out)
    }

    pub fn pause(&mut self, id: i64, by: Option<&str>, now_ms: i64) -> Result<Outcome, FleetError> {
        self.command(id, now_ms, "rollout.paused", by, |r| {
            r.pause().map(|()| Vec::new())
        })
    }

    pub fn resume(
        &mut self,
        id: i64,
        by: Option<&str>,
        now_ms: i64,
    ) -> Result<Outcome, FleetError> {
        let mut out = self.command(id, now_ms, "rollout.resumed", by, |r| {
            r.resume(now_ms).map(|()| Vec::new())
        })?;
        // Gates that passed while it was paused pass now.
        let actions = self
            .rollouts
            .get_mut(&id)
            .map(|e| e.rollout.tick(now_ms))
            .unwrap_or_default();
        if !actions.is_empty() {
            self.act(id, actions, None, now_ms, &mut out);
            self.save_rollout(id, now_ms, &mut out);
        }
        Ok(out)
    }

    pub fn abort(
        &mut self,
        id: i64,
        reason: &str,
        by: Option<&str>,
        now_ms: i64,
    ) -> Result<Outcome, FleetError> {
        self.command(id, now_ms, "rollout.aborted", by, |r| r.abort(reason))
    }

    /// An operator clears a machine's degraded mark and failure count.
    pub fn clear(
        &mut self,
        mac: MacAddr,
        by: Option<&str>,
        now_ms: i64,
    ) -> Result<Outcome, FleetError> {
        let h = self.health.get_mut(&mac).filter(|h| h.degraded.is_some());
        let Some(h) = h else {
            return Err(FleetError::NotDegraded(mac));
        };
        let was = h.degraded.clone();
        h.clear();
        let mut out = Outcome::default();
        out.persist.at_ms = now_ms;
        out.note(
            Some(mac),
            "watchdog.cleared",
            json!({ "was": was, "by": by }),
        );
        self.save_health(mac, now_ms, &mut out);
        Ok(out)
    }

    /// Turns a rollout's actions into notes, reboots and pointer moves.
    /// `booting` is the machine whose boot is being decided right now: it
    /// needs no reboot.
    fn act(
        &mut self,
        id: i64,
        actions: Vec<Action>,
        booting: Option<MacAddr>,
        now_ms: i64,
        out: &mut Outcome,
    ) {
        let Some(e) = self.rollouts.get(&id) else {
            return;
        };
        let spec = e.rollout.spec.clone();
        let slot = e.slot;
        let _ = now_ms;
        for action in actions {
            match action {
                Action::Moved { wave, machines } => {
                    out.note(
                        None,
                        "rollout.moved",
                        json!({ "rollout": id, "group": spec.group, "wave": wave, "machines": machines, "to": spec.to }),
                    );
                    for mac in machines {
                        out.reboots.push(Reboot {
                            mac,
                            rollout: Some(id),
                            group: spec.group.clone(),
                            generation: spec.to.clone(),
                            reason: format!("rollout {id} wave {wave}: moved to {}", spec.to),
                        });
                    }
                }
                Action::GatePassed { wave } => out.note(
                    None,
                    "rollout.gate_passed",
                    json!({ "rollout": id, "group": spec.group, "wave": wave }),
                ),
                Action::Complete => {
                    out.note(
                        None,
                        "rollout.succeeded",
                        json!({ "rollout": id, "group": spec.group, "generation": spec.to }),
                    );
                    out.persist.pointers.push(PointerMove {
                        group: spec.group.clone(),
                        slot,
                        generation: spec.to.clone(),
                    });
                }
                Action::GateFailed {
                    wave,
                    reason,
                    rolled_back,
                } => {
                    let step = if spec.rollback {
                        "rollout.rolled_back"
                    } else {
                        "rollout.stopped"
                    };
                    out.note(
                        None,
                        step,
                        json!({ "rollout": id, "group": spec.group, "wave": wave, "reason": reason, "rolled_back": rolled_back }),
                    );
                    for mac in rolled_back.into_iter().filter(|m| Some(*m) != booting) {
                        out.reboots.push(Reboot {
                            mac,
                            rollout: Some(id),
                            group: spec.group.clone(),
                            generation: spec.from.clone(),
                            reason: format!("rollout {id} rolled back to {}: {reason}", spec.from),
                        });
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
