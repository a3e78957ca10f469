//! The inventory as one of several servers sharing a PostgreSQL database
//! (`[store] shared`): boot ids from ranges the database hands out, the
//! view reloaded when another server commits a change, and the rollout
//! engine fed on the leader alone.
//!
//! Every server decides its own boots from its copy of the fleet (the
//! rollouts and health as the leader last wrote them, reloaded within a
//! second of each commit). Only the leader's engine changes them: a member
//! hands what it saw (a boot served, a confirmation, a reported failure) to
//! the leader through the store's inbox, in the transaction that records
//! the fact, and the leader feeds it to its engine and writes the result in
//! the transaction that takes it out. A member's engine runs only to decide
//! (a machine that failed too often gets its last good generation); what it
//! changes there is thrown away at the next reload.
//!
//! Invariants: a member writes no rollout or health row and runs no fleet
//! command (`InventoryError::NotLeader`); the leader takes the fleet over
//! only after its own queued records are committed and the rows restored
//! from the database, so every event reaches the engine exactly once.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{Inventory, InventoryError, State};
use crate::boot::{GenerationId, Target};
use crate::domain::fleet_rows::Inboxed;
use crate::domain::MacAddr;
use crate::ledger::{now_ms, Record};
use crate::rollout::engine::{Outcome, Persist, Rollouts};
use crate::store::inbox::InboxRow;
use crate::store::{Store, StoreError};

/// Boot ids a shared server takes at a time: enough that the next range
/// (asked for when half of one is used) is always in hand before the boot
/// path needs it.
const IDS_PER_RANGE: i64 = 65_536;

/// Inbox events the leader takes in one transaction.
const INBOX_BATCH: i64 = 512;

/// Where boot ids come from.
pub(super) enum BootIds {
    /// A server alone on its database numbers from its highest boot.
    Counter(AtomicI64),
    /// Shared: ranges taken from the database (`store::inbox`).
    Ranges(Arc<Mutex<Ranges>>),
}

pub(super) struct Ranges {
    now: Range<i64>,
    next: Option<Range<i64>>,
    asking: bool,
}

impl BootIds {
    /// The next boot id; asks the database for the next range (in the
    /// background) once half of this one is used.
    pub(super) fn take(&self, store: &Store) -> i64 {
        let ranges = match self {
            BootIds::Counter(next) => return next.fetch_add(1, Ordering::Relaxed),
            BootIds::Ranges(r) => r,
        };
        let mut r = ranges.lock().expect("boot id lock");
        if r.now.is_empty() {
            match r.next.take() {
                Some(next) => r.now = next,
                None => {
                    // Never seen: it would take a whole range of boots
                    // during one transaction. Numbering on risks an id
                    // another server holds; its boot row would then fail to
                    // insert (logged by the writer) rather than overwrite.
                    tracing::error!("boot id range used up before the next arrived");
                    r.now = r.now.start..r.now.start + IDS_PER_RANGE;
                }
            }
        }
        let id = r.now.start;
        r.now.start += 1;
        if r.next.is_none() && !r.asking && r.now.end - r.now.start < IDS_PER_RANGE / 2 {
            r.asking = true;
            let (ranges, store) = (ranges.clone(), store.clone());
            tokio::spawn(async move {
                let mut wait = std::time::Duration::from_millis(100);
                loop {
                    match take_range(&store).await {
                        Ok(next) => {
                            let mut r = ranges.lock().expect("boot id lock");
                            r.next = Some(next);
                            r.asking = false;
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "next boot id range not taken; trying again");
                            tokio::time::sleep(wait).await;
                            wait = (wait * 2).min(std::time::Duration::from_secs(5));
                        }
                    }
                }
            });
        }
        id
    }
}

async fn take_range(store: &Store) -> Result<Range<i64>, StoreError> {
    let mut tx = store.begin().await?;
    let range = tx.take_boot_ids(IDS_PER_RANGE).await?;
    tx.commit().await?;
    Ok(range)
}

/// What a member saw, for the leader's engine.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(super) enum Seen {
    /// A script was served: boot `id` of what `served` names (the
    /// member's decision, from its copy of the fleet).
    Boot {
        mac: MacAddr,
        served: Target,
        id: i64,
        /// The request carried the open boot on (a switch's NOS after
        /// ONIE): that boot has not failed.
        carries_on: bool,
    },
    /// The booted OS confirmed `generation` (committed with the event).
    Confirmed {
        mac: MacAddr,
        generation: GenerationId,
        fields: BTreeMap<String, String>,
    },
    /// The machine reported that boot `id` failed.
    Failed {
        mac: MacAddr,
        id: i64,
        reason: String,
    },
}

impl Seen {
    fn kind(&self) -> &'static str {
        match self {
            Seen::Boot { .. } => "boot",
            Seen::Confirmed { .. } => "confirmed",
            Seen::Failed { .. } => "failed",
        }
    }

    pub(super) fn inboxed(&self, server: &str, at_ms: i64) -> Inboxed {
        Inboxed {
            server: server.to_string(),
            kind: self.kind(),
            body: serde_json::to_string(self).expect("an event serialises"),
            at_ms,
        }
    }

    /// Feeds the event to `fleet` as if it had happened here at `at_ms`.
    fn feed(&self, fleet: &mut Rollouts, at_ms: i64) -> Outcome {
        match self {
            Seen::Boot {
                mac,
                served,
                id,
                carries_on,
            } => {
                if *carries_on {
                    fleet.carry_on(*mac);
                }
                fleet.served(*mac, served, *id, at_ms)
            }
            Seen::Confirmed {
                mac,
                generation,
                fields,
            } => fleet.confirmed(*mac, generation, fields, at_ms),
            Seen::Failed { mac, id, reason } => {
                fleet.reported_failure(*mac, *id, reason.clone(), at_ms)
            }
        }
    }
}

/// The events of `rows` that can be read, with their times; a row that
/// cannot is dropped, loudly (it was taken: it will not come back).
fn readable(rows: Vec<InboxRow>) -> Vec<(Seen, i64)> {
    rows.into_iter()
        .filter_map(|r| match serde_json::from_str::<Seen>(&r.body) {
            Ok(seen) => Some((seen, r.at_ms)),
            Err(e) => {
                tracing::error!(id = r.id, server = %r.server, kind = %r.kind, error = %e, "unreadable inbox event; dropped");
                None
            }
        })
        .collect()
}

impl Inventory {
    /// Joins the servers sharing the database as `server`, a member until
    /// [`Inventory::lead`]: boot ids from ranges from now on.
    pub async fn share(&mut self, server: &str) -> Result<(), InventoryError> {
        let now = take_range(&self.store).await?;
        let next = take_range(&self.store).await?;
        self.ids = BootIds::Ranges(Arc::new(Mutex::new(Ranges {
            now,
            next: Some(next),
            asking: false,
        })));
        self.server = server.to_string();
        Ok(())
    }

    /// Whether this server's engine decides the fleet (alone on its
    /// database, or the leader of a shared one).
    pub fn leads(&self) -> bool {
        self.store.leads()
    }

    /// What a member hands to the leader (through the ledger, so with the
    /// boot row it concerns).
    pub(super) fn hand_over(&self, seen: Seen, at_ms: i64) {
        self.ledger
            .record(Record::Inbox(seen.inboxed(&self.server, at_ms)));
    }

    /// Takes the fleet over once [`Store::try_lead`] won: what this server
    /// queued is committed, the rollouts and health are read back from the
    /// database (this server's engine only decided until now), and from
    /// then on it feeds its engine and the inbox's events.
    pub async fn lead(&self) -> Result<(), InventoryError> {
        self.ledger.flush().await;
        let rows = self.store.fleet_rows().await?;
        {
            let _one_at_a_time = self.fleet_commands.lock().await;
            let mut state = self.write();
            let policy = state.rollouts.policy;
            state.rollouts = crate::rollout::restore::restore(rows, policy);
            self.store.now_leading();
        }
        while self.drain_inbox().await? == INBOX_BATCH as usize {}
        Ok(())
    }

    /// On the leader: feeds the inbox's oldest events to the engine and
    /// writes what it made of them in the transaction that takes them out,
    /// then shows the result (as a fleet command does). How many were
    /// taken; `0` on a member.
    pub async fn drain_inbox(&self) -> Result<usize, InventoryError> {
        if !self.store.is_shared() || !self.leads() {
            return Ok(0);
        }
        let _one_at_a_time = self.fleet_commands.lock().await;
        let mut tx = self.store.begin().await?;
        let rows = tx.take_fleet_events(INBOX_BATCH).await?;
        let taken = rows.len();
        if taken == 0 {
            return Ok(0);
        }
        let events = readable(rows);
        let (mut next, base) = {
            let state = self.read();
            (state.rollouts.clone(), state.rollouts.rev())
        };
        let outs: Vec<Outcome> = events
            .iter()
            .map(|(e, at)| e.feed(&mut next, *at))
            .collect();
        for out in &outs {
            tx.write_fleet_rows(&out.persist).await?;
        }
        tx.commit().await?;
        let late = {
            let mut state = self.write();
            let committed: Vec<&Persist> = outs.iter().map(|o| &o.persist).collect();
            self.show_fleet(&mut state, base, next, &committed, |live| {
                events
                    .iter()
                    .map(|(e, at)| e.feed(live, *at).persist)
                    .collect()
            })
        };
        for out in outs {
            self.after_fleet(out, true);
        }
        self.queue_rows(late);
        Ok(taken)
    }

    /// Reads the view again from the database after another server
    /// committed a change: machines, groups and generations as stored
    /// (a machine or an open boot this server has not written yet is
    /// kept), and on a member the rollouts and health as the leader wrote
    /// them. Writes nothing (a write would announce itself and come back).
    pub async fn reload(&self) -> Result<(), InventoryError> {
        let flushed_from = now_ms();
        let queued = self
            .unsaved_pointers
            .lock()
            .expect("unsaved pointers lock")
            .len();
        self.ledger.flush().await;
        let unsaved: Vec<_> = {
            let mut pointers = self.unsaved_pointers.lock().expect("unsaved pointers lock");
            let committed = queued.min(pointers.len());
            pointers.drain(..committed);
            pointers.clone()
        };
        let (fresh, _) = super::load::state(&self.store).await?;
        let fleet = if self.leads() {
            None
        } else {
            Some(self.store.fleet_rows().await?)
        };
        let mut state = self.write();
        let gone = merge(&mut state, fresh, flushed_from);
        self.clients.forget(&gone);
        if let Some(rows) = fleet {
            // Checked again under the lock: a member that took the lead
            // meanwhile keeps the fleet it restored.
            if !self.leads() {
                let policy = state.rollouts.policy;
                state.rollouts = crate::rollout::restore::restore(rows, policy);
            }
        }
        // Moves queued after the flush are not in what was read yet.
        self.apply_pointers(&mut state, &unsaved);
        for (mac, name) in self.reserved_names() {
            if let Some(m) = state.machines.get_mut(&mac) {
                m.hostname = Some(name);
            }
        }
        state.regroup();
        for mac in state.machines.keys() {
            self.clients.admit(*mac);
        }
        Ok(())
    }
}

/// `fresh` (read from the database after this server's records queued
/// before `flushed_from` were committed) over `live`: the operator's and
/// the leader's writes win; what only memory holds stays when it is newer
/// than that (a machine whose first boot is still queued for the writer,
/// open boots). A machine the database no longer holds and that opened no
/// boot since was deleted through another server: returned, and gone here.
fn merge(live: &mut State, fresh: State, flushed_from: i64) -> Vec<MacAddr> {
    let State {
        machines,
        groups,
        generations,
        boots,
        ..
    } = fresh;
    let gone: Vec<MacAddr> = live
        .machines
        .keys()
        .filter(|mac| !machines.contains_key(mac))
        .filter(|mac| {
            !live.open_by_mac.get(mac).is_some_and(|open| {
                open.iter()
                    .filter_map(|h| live.boots.get(h))
                    .any(|b| b.started_ms >= flushed_from)
            })
        })
        .copied()
        .collect();
    for mac in &gone {
        live.machines.remove(mac);
    }
    for (mac, m) in machines {
        live.machines.insert(mac, m);
    }
    live.groups = groups;
    live.generations = generations;
    for (hash, boot) in boots {
        if !live.boots.contains_key(&hash) {
            live.open_boot(hash, boot, None, 0);
        }
    }
    gone
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_survive_the_inbox() {
        let mac: MacAddr = "52:54:00:00:00:01".parse().unwrap();
        let seen = [
            Seen::Boot {
                mac,
                served: Target::Nothing {
                    reason: "none".into(),
                },
                id: 7,
                carries_on: false,
            },
            Seen::Confirmed {
                mac,
                generation: GenerationId::new("live", 2),
                fields: [("checks".to_string(), "passed".to_string())].into(),
            },
            Seen::Failed {
                mac,
                id: 7,
                reason: "kernel panic".into(),
            },
        ];
        let rows = seen
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let e = s.inboxed("a", 10 + i as i64);
                InboxRow {
                    id: i as i64,
                    server: e.server,
                    kind: e.kind.into(),
                    body: e.body,
                    at_ms: e.at_ms,
                }
            })
            .chain([InboxRow {
                id: 9,
                server: "a".into(),
                kind: "boot".into(),
                body: "{not json".into(),
                at_ms: 1,
            }])
            .collect();
        let back = readable(rows);
        assert_eq!(back.len(), 3, "the unreadable row is dropped");
        for ((got, at), (want, i)) in back.iter().zip(seen.iter().zip(10..)) {
            assert_eq!(format!("{got:?}"), format!("{want:?}"));
            assert_eq!(*at, i);
        }
    }
}
