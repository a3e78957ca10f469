//! Rollouts: moving a group from generation A to generation B in waves, each
//! gated on the machines it moved confirming B, and rolled back when a gate
//! fails. This module is the pure state machine (no clock, no I/O): time and
//! what machines did come in as arguments, and what the server must do comes
//! out as [`Action`]s. The service around it persists every transition in
//! SQLite before acting on it, so a restart resumes exactly where it was.
//!
//! Waves are fixed when the rollout starts, from the group's members sorted
//! by MAC (predictable: an operator can tell which machines go first):
//!
//! - canary: the named machines, or the first N, or N % of the members; then
//!   each step's cumulative share of the members (`10%,50%,100%`), a final
//!   100 % added when the steps stop short of it;
//! - blue/green: the first half (the idle one) boots B and must confirm
//!   before the other half is flipped, all at once.
//!
//! Machines that join the group during a rollout follow the group pointer
//! (A) until the rollout succeeds and the pointer moves to B.
//!
//! A gate passes when every machine of the wave has confirmed B (and, when
//! the gate says so, its confirmation carried the required check); it fails
//! at the first boot failure of a moved machine, or when the wave's timeout
//! passes first. A failed gate rolls every moved machine back to A unless the
//! rollout was started with `rollback: false`, in which case it stops where
//! it is (moved machines keep B) for an operator to decide.
//!
//! [`watchdog`] is the other half of issue 5's safety net: per machine,
//! failed boots counted and the last good generation served after too many.
//!
//! Around the two pure machines: [`engine`] (every rollout and machine
//! health, fed boots, confirmations and the clock, still pure), [`restore`]
//! (the fleet back from its stored rows, `store::rollouts`), [`hook`] (the optional reboot command or
//! webhook) and [`settings`] (the `[rollout]` config section). The
//! inventory holds the engine under its lock and asks it at every boot.

pub mod engine;
pub mod hook;
pub mod restore;
pub mod settings;
pub mod watchdog;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::domain::GenerationId;
use crate::domain::{Cpu, MacAddr, Slot};

/// What decides whether a member of a group moves in a rollout: the one
/// rule for starting a rollout (`inventory`) and for planning one
/// (`desired`).
#[derive(Debug, Clone, Copy)]
pub struct Member {
    pub pinned: bool,
    pub switch: bool,
    /// Its loader's CPU, when a request has said it.
    pub arch: Option<Cpu>,
}

impl Member {
    /// It follows its group's pointer to an image of `slot` (a switch
    /// installer or a live OS for a CPU): not pinned, of the kind the image
    /// is for, and of its CPU family (or of one not known yet).
    pub fn follows(&self, slot: Slot) -> bool {
        !self.pinned && self.switch == slot.installer && self.arch.is_none_or(|a| a.runs(slot.cpu))
    }
}

/// Which machines go first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Canary {
    /// The first N members (by MAC).
    Count(usize),
    /// This share of the members, rounded up, at least one.
    Percent(u8),
    /// Exactly these machines (each must be a member).
    Machines(Vec<MacAddr>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Strategy {
    /// Canary first, then cumulative steps in percent of the members.
    Canary { canary: Canary, steps: Vec<u8> },
    /// The idle half boots B and confirms, then the rest flips at once.
    BlueGreen,
}

/// What a confirmation must carry for a gate to count it, e.g. the booted
/// OS's own health checks: `checks=passed` in the phone-home payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Require {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    pub group: String,
    pub from: GenerationId,
    pub to: GenerationId,
    pub strategy: Strategy,
    /// How long a wave's machines have to confirm B.
    pub timeout_ms: i64,
    pub require: Option<Require>,
    /// Roll moved machines back to A when a gate fails (the default).
    pub rollback: bool,
    /// What a moved machine's BMC failing to reboot it (after its retries)
    /// does to the wave.
    #[serde(default)]
    pub on_bmc_failure: OnBmcFailure,
}

/// What a BMC that cannot reboot a moved machine does to its wave.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnBmcFailure {
    /// The wave waits: the machine may still reboot by other means before
    /// the gate's timeout (the default).
    #[default]
    Wait,
    /// The gate fails at once, as if the machine had failed to boot B.
    Fail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    Running,
    Paused,
    Succeeded,
    /// A gate failed and the moved machines were sent back to A.
    RolledBack {
        reason: String,
    },
    /// A gate failed and the rollout stopped with moved machines on B.
    Stopped {
        reason: String,
    },
    /// An operator aborted it; moved machines were sent back to A.
    Aborted {
        reason: String,
    },
}

impl State {
    /// Running or paused: it still decides what its moved machines boot.
    pub fn is_active(&self) -> bool {
        matches!(self, State::Running | State::Paused)
    }
}

/// One moved machine's progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moved {
    pub wave: usize,
    pub moved_ms: i64,
    pub confirmed_ms: Option<i64>,
    pub failed: Option<String>,
}

/// What the service must do after a transition (record, reboot, move the
/// group pointer). Recorded in the ledger in this order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// These machines now boot B; they need a reboot to do so.
    Moved { wave: usize, machines: Vec<MacAddr> },
    /// The wave's gate passed.
    GatePassed { wave: usize },
    /// The group's pointer moves to B: the rollout is complete.
    Complete,
    /// The gate failed; `rolled_back` machines boot A again (and need a
    /// reboot to do so).
    GateFailed {
        wave: usize,
        reason: String,
        rolled_back: Vec<MacAddr>,
    },
}

/// Something a machine did, as the boot path saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation<'a> {
    /// It confirmed `generation`, with the phone-home payload's fields.
    Confirmed {
        mac: MacAddr,
        generation: &'a GenerationId,
        fields: &'a BTreeMap<String, String>,
        at_ms: i64,
    },
    /// A boot of `generation` failed (see [`watchdog`]).
    Failed {
        mac: MacAddr,
        generation: &'a GenerationId,
        reason: &'a str,
        at_ms: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RolloutError {
    #[error("the group has no machines to roll out to")]
    NoMembers,
    #[error("{0} is not a member of the group")]
    NotAMember(MacAddr),
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("the rollout is {0}; it cannot be {1}")]
    State(&'static str, &'static str),
}

/// A rollout in progress, or finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub spec: Spec,
    pub state: State,
    /// The machines of each wave, fixed at start.
    pub waves: Vec<Vec<MacAddr>>,
    /// The wave whose gate is open (the last one moved).
    pub wave: usize,
    /// When the open wave started (or was resumed): its timeout counts from here.
    pub wave_started_ms: i64,
    pub moved: BTreeMap<MacAddr, Moved>,
}

impl Rollout {
    /// Plans the waves over `members` and moves the first one.
    pub fn start(
        spec: Spec,
        members: &[MacAddr],
        now_ms: i64,
    ) -> Result<(Self, Vec<Action>), RolloutError> {
        if spec.timeout_ms <= 0 {
            return Err(RolloutError::Invalid {
                field: "timeout",
                message: "must be positive".into(),
            });
        }
        if spec.from == spec.to {
            return Err(RolloutError::Invalid {
                field: "to",
                message: format!("the group already boots {}", spec.to),
            });
        }
        let waves = plan(&spec.strategy, members)?;
        let mut rollout = Self {
            spec,
            state: State::Running,
            waves,
            wave: 0,
            wave_started_ms: now_ms,
            moved: BTreeMap::new(),
        };
        let first = rollout.move_wave(0, now_ms);
        Ok((rollout, vec![first]))
    }

    /// The generation a machine boots because of this rollout, if any: B for
    /// a moved machine while the rollout is active or stopped on B. After a
    /// roll back or success the group pointer decides again.
    pub fn target_for(&self, mac: MacAddr) -> Option<&GenerationId> {
        let holds = self.state.is_active() || matches!(self.state, State::Stopped { .. });
        (holds && self.moved.contains_key(&mac)).then_some(&self.spec.to)
    }

    /// Moved machines that have not confirmed B yet: waiting for a reboot
    /// (or booting right now).
    pub fn waiting(&self) -> Vec<MacAddr> {
        self.moved
            .iter()
            .filter(|(_, m)| m.confirmed_ms.is_none() && m.failed.is_none())
            .map(|(mac, _)| *mac)
            .collect()
    }

    /// Takes in what a machine did; may close the gate (pass or fail).
    pub fn observe(&mut self, event: Observation<'_>) -> Vec<Action> {
        if !self.state.is_active() {
            return Vec::new();
        }
        match event {
            Observation::Confirmed {
                mac,
                generation,
                fields,
                at_ms,
            } => {
                let counts = *generation == self.spec.to
                    && self.spec.require.as_ref().is_none_or(|r| r.met_by(fields));
                if let Some(m) = self.moved.get_mut(&mac) {
                    if counts && m.confirmed_ms.is_none() {
                        m.confirmed_ms = Some(at_ms);
                    }
                }
                Vec::new()
            }
            Observation::Failed {
                mac,
                generation,
                reason,
                at_ms,
            } => {
                let Some(m) = self.moved.get_mut(&mac) else {
                    return Vec::new();
                };
                if *generation != self.spec.to || m.confirmed_ms.is_some() {
                    return Vec::new();
                }
                m.failed = Some(reason.to_string());
                let why = format!("{mac} failed to boot {}: {reason}", self.spec.to);
                vec![self.fail(why, at_ms)]
            }
        }
    }

    /// Advances on the clock: passes the open gate when every machine of the
    /// wave confirmed (and moves the next wave, or completes), fails it when
    /// its timeout has passed first.
    pub fn tick(&mut self, now_ms: i64) -> Vec<Action> {
        let mut actions = Vec::new();
        // A bounded loop: each turn moves one wave or stops.
        for _ in 0..=self.waves.len() {
            if self.state != State::Running {
                break;
            }
            let wave = self.wave;
            let pending: Vec<MacAddr> = self.waves[wave]
                .iter()
                .copied()
                .filter(|mac| {
                    self.moved
                        .get(mac)
                        .is_some_and(|m| m.confirmed_ms.is_none())
                })
                .collect();
            if pending.is_empty() {
                actions.push(Action::GatePassed { wave });
                if wave + 1 == self.waves.len() {
                    self.state = State::Succeeded;
                    actions.push(Action::Complete);
                } else {
                    self.wave = wave + 1;
                    self.wave_started_ms = now_ms;
                    actions.push(self.move_wave(wave + 1, now_ms));
                }
                continue;
            }
            if now_ms - self.wave_started_ms >= self.spec.timeout_ms {
                let names: Vec<String> = pending.iter().map(MacAddr::to_string).collect();
                let why = format!(
                    "{} did not confirm {} within {} s",
                    names.join(", "),
                    self.spec.to,
                    self.spec.timeout_ms / 1000
                );
                actions.push(self.fail(why, now_ms));
            }
            break;
        }
        actions
    }

    pub fn pause(&mut self) -> Result<(), RolloutError> {
        match self.state {
            State::Running => {
                self.state = State::Paused;
                Ok(())
            }
            _ => Err(RolloutError::State(self.state_name(), "paused")),
        }
    }

    /// Resumes a paused rollout; the open wave's timeout starts again.
    pub fn resume(&mut self, now_ms: i64) -> Result<(), RolloutError> {
        match self.state {
            State::Paused => {
                self.state = State::Running;
                self.wave_started_ms = now_ms;
                Ok(())
            }
            _ => Err(RolloutError::State(self.state_name(), "resumed")),
        }
    }

    /// Stops an active (or stopped) rollout and sends moved machines back to A.
    pub fn abort(&mut self, reason: &str) -> Result<Vec<MacAddr>, RolloutError> {
        match self.state {
            State::Running | State::Paused | State::Stopped { .. } => {
                self.state = State::Aborted {
                    reason: reason.to_string(),
                };
                Ok(self.moved.keys().copied().collect())
            }
            _ => Err(RolloutError::State(self.state_name(), "aborted")),
        }
    }

    pub fn state_name(&self) -> &'static str {
        match self.state {
            State::Running => "running",
            State::Paused => "paused",
            State::Succeeded => "succeeded",
            State::RolledBack { .. } => "rolled back",
            State::Stopped { .. } => "stopped",
            State::Aborted { .. } => "aborted",
        }
    }

    fn move_wave(&mut self, wave: usize, now_ms: i64) -> Action {
        for mac in &self.waves[wave] {
            self.moved.insert(
                *mac,
                Moved {
                    wave,
                    moved_ms: now_ms,
                    confirmed_ms: None,
                    failed: None,
                },
            );
        }
        Action::Moved {
            wave,
            machines: self.waves[wave].clone(),
        }
    }

    fn fail(&mut self, reason: String, _now_ms: i64) -> Action {
        let rolled_back = if self.spec.rollback {
            self.state = State::RolledBack {
                reason: reason.clone(),
            };
            self.moved.keys().copied().collect()
        } else {
            self.state = State::Stopped {
                reason: reason.clone(),
            };
            Vec::new()
        };
        Action::GateFailed {
            wave: self.wave,
            reason,
            rolled_back,
        }
    }
}

/// `1` (a count), `10%` (a share), or MACs separated by commas: how
/// operators write a canary on the command line and in the API.
impl std::str::FromStr for Canary {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Some(p) = text.strip_suffix('%') {
            return p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| (1..=100).contains(p))
                .map(Canary::Percent)
                .ok_or_else(|| format!("{text:?} is not a share of the group (1%-100%)"));
        }
        if let Ok(n) = text.parse::<usize>() {
            return Ok(Canary::Count(n));
        }
        text.split(',')
            .map(|m| {
                m.trim()
                    .parse::<MacAddr>()
                    .map_err(|_| format!("{text:?}: expected a count (1), a share (10%) or MACs"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Canary::Machines)
    }
}

/// A canary as JSON carries it (the API's body, a fleet file's `canary`):
/// a count (`1`), a share (`"10%"`) or a list of MACs.
pub fn canary_from_json(v: &serde_json::Value) -> Result<Canary, String> {
    use serde_json::Value;
    match v {
        Value::Number(n) => n
            .as_u64()
            .map(|n| Canary::Count(n as usize))
            .ok_or_else(|| "a count must be a whole number".to_string()),
        Value::String(s) => s.parse(),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .and_then(|m| m.parse::<MacAddr>().ok())
                    .ok_or_else(|| format!("{i} is not a MAC address"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Canary::Machines),
        other => Err(format!("{other}: expected 1, \"10%\" or a list of MACs")),
    }
}

/// Steps as JSON carries them: `"50%,100%"` or `["50%", 100]`.
pub fn steps_from_json(v: &serde_json::Value) -> Result<Vec<u8>, String> {
    use serde_json::Value;
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    };
    parse_steps(&text)
}

/// `10%,50%,100%` (the `%` optional) → `[10, 50, 100]`.
pub fn parse_steps(text: &str) -> Result<Vec<u8>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim_end_matches('%')
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| (1..=100).contains(p))
                .ok_or_else(|| format!("step {s:?} is not a share of the group (1%-100%)"))
        })
        .collect()
}

/// `key=value`: what a confirmation must carry.
/// The confirmation field whose value is Secure Boot's state (a claim read
/// by [`crate::boot::claims::secure_boot`], so `1`, `true` and `enabled`
/// are one value).
pub const SECURE_BOOT_FIELD: &str = "secureboot";

impl Require {
    /// Whether a confirmation's fields carry the required value.
    pub fn met_by(&self, fields: &BTreeMap<String, String>) -> bool {
        let Some(got) = fields.get(&self.key) else {
            return false;
        };
        if self.key == SECURE_BOOT_FIELD {
            let state = crate::boot::claims::secure_boot;
            return state(got).is_some() && state(got) == state(&self.value);
        }
        *got == self.value
    }
}

impl std::str::FromStr for Require {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                let (key, value) = (k.trim().to_string(), v.trim().to_string());
                if key == SECURE_BOOT_FIELD && crate::boot::claims::secure_boot(&value).is_none() {
                    return Err(format!("{text:?}: secureboot is 1 or 0"));
                }
                Ok(Require { key, value })
            }
            _ => Err(format!("{text:?}: expected key=value, e.g. checks=passed")),
        }
    }
}

/// The waves: disjoint, non-empty, together every member exactly once.
fn plan(strategy: &Strategy, members: &[MacAddr]) -> Result<Vec<Vec<MacAddr>>, RolloutError> {
    let sorted: Vec<MacAddr> = members
        .iter()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let n = sorted.len();
    if n == 0 {
        return Err(RolloutError::NoMembers);
    }
    let share = |percent: u8| (n * percent as usize).div_ceil(100).clamp(1, n);
    // Each wave as the cumulative count of the sorted members it reaches,
    // except a canary of named machines, which goes first as named.
    let (first, cumulative): (Vec<MacAddr>, Vec<usize>) = match strategy {
        Strategy::BlueGreen => (sorted[..n.div_ceil(2)].to_vec(), vec![n]),
        Strategy::Canary { canary, steps } => {
            for &p in steps {
                if p == 0 || p > 100 {
                    return Err(RolloutError::Invalid {
                        field: "steps",
                        message: format!("{p}% is not a share of the group (1-100)"),
                    });
                }
            }
            if steps.windows(2).any(|w| w[0] >= w[1]) {
                return Err(RolloutError::Invalid {
                    field: "steps",
                    message: "steps must increase (e.g. 10%,50%,100%)".into(),
                });
            }
            let first = match canary {
                Canary::Count(0) | Canary::Percent(0) => {
                    return Err(RolloutError::Invalid {
                        field: "canary",
                        message: "the canary needs at least one machine".into(),
                    })
                }
                Canary::Percent(p) if *p > 100 => {
                    return Err(RolloutError::Invalid {
                        field: "canary",
                        message: format!("{p}% is not a share of the group"),
                    })
                }
                Canary::Count(c) => sorted[..(*c).min(n)].to_vec(),
                Canary::Percent(p) => sorted[..share(*p)].to_vec(),
                Canary::Machines(named) => {
                    if named.is_empty() {
                        return Err(RolloutError::Invalid {
                            field: "canary",
                            message: "the canary needs at least one machine".into(),
                        });
                    }
                    if let Some(stranger) = named.iter().find(|m| !sorted.contains(m)) {
                        return Err(RolloutError::NotAMember(*stranger));
                    }
                    named
                        .iter()
                        .copied()
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect()
                }
            };
            let mut cumulative: Vec<usize> = steps.iter().map(|&p| share(p)).collect();
            cumulative.push(n);
            (first, cumulative)
        }
    };
    let mut waves = vec![first.clone()];
    let mut taken: BTreeSet<MacAddr> = first.into_iter().collect();
    for reach in cumulative {
        let wave: Vec<MacAddr> = sorted
            .iter()
            .copied()
            .filter(|m| !taken.contains(m))
            .take(reach.saturating_sub(taken.len()))
            .collect();
        if !wave.is_empty() {
            taken.extend(wave.iter().copied());
            waves.push(wave);
        }
    }
    Ok(waves)
}

#[cfg(test)]
mod tests;
