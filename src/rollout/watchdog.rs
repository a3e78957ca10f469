//! The last-known-good watchdog, per machine and pure (time comes in as an
//! argument). A machine served a generation counts a failed boot when it
//! netboots again without having confirmed it, or stays silent past the
//! confirmation timeout. After `max_failures` failures of the same
//! generation the machine is *degraded*: while its target is still that
//! generation, its next boots get its last good generation instead, and the
//! reason says why. A different target (a new generation, a roll back) is
//! tried again; a confirmation or an operator clears the mark.

use serde::{Deserialize, Serialize};

use crate::domain::GenerationId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Failures of one generation before the machine falls back.
    pub max_failures: u32,
    /// How long a served boot may stay unconfirmed.
    pub confirm_timeout_ms: i64,
}

/// A boot served and not yet confirmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Open {
    pub generation: GenerationId,
    pub served_ms: i64,
    /// The boot row, when the server knows it (marked failed with the reason).
    #[serde(default)]
    pub boot_id: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Degraded {
    pub generation: GenerationId,
    pub since_ms: i64,
    pub reason: String,
}

/// One machine's health, as the watchdog keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub open: Option<Open>,
    /// The generation whose failures are being counted, and how many.
    pub failing: Option<(GenerationId, u32)>,
    pub degraded: Option<Degraded>,
}

/// A failed boot, for the ledger and for a rollout in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub generation: GenerationId,
    pub reason: String,
    /// This failure made the machine degraded.
    pub degraded: bool,
}

/// Where the generation to boot comes from, after the watchdog's say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Boot the target.
    Target,
    /// Boot the last good generation instead, for this reason.
    LastGood {
        generation: GenerationId,
        reason: String,
    },
    /// The target keeps failing and there is no last good generation: boot
    /// the target anyway (nothing better exists), saying so.
    NoFallback { reason: String },
}

impl Health {
    /// The boot path is about to serve `target`: what should it serve?
    pub fn verdict(&self, target: &GenerationId, last_good: Option<&GenerationId>) -> Verdict {
        let Some(d) = &self.degraded else {
            return Verdict::Target;
        };
        if d.generation != *target {
            return Verdict::Target;
        }
        match last_good {
            Some(good) if good != target => Verdict::LastGood {
                generation: good.clone(),
                reason: format!("degraded: {}; booting last good {good}", d.reason),
            },
            _ => Verdict::NoFallback {
                reason: format!("degraded: {}; no other generation ever confirmed", d.reason),
            },
        }
    }

    /// A boot of `generation` was served. If the previous one was never
    /// confirmed, that one failed.
    pub fn served(
        &mut self,
        policy: &Policy,
        generation: &GenerationId,
        now_ms: i64,
    ) -> Option<Failure> {
        let failure = self.netbooted(policy, now_ms).map(|(f, _)| f);
        self.open(generation, None, now_ms);
        failure
    }

    /// The machine netboots again: a boot still open was never confirmed,
    /// so it failed (with the boot row it was, if known). The server calls
    /// this before deciding what to serve, so the failure counts at once.
    pub fn netbooted(&mut self, policy: &Policy, now_ms: i64) -> Option<(Failure, Option<i64>)> {
        let prev = self.open.take()?;
        let reason = format!("netbooted again without confirming {}", prev.generation);
        Some((
            self.count(policy, prev.generation, reason, now_ms),
            prev.boot_id,
        ))
    }

    /// A boot of `generation` (boot row `boot_id`) was served: it is open
    /// until it confirms, the machine netboots again, or the timeout passes.
    pub fn open(&mut self, generation: &GenerationId, boot_id: Option<i64>, now_ms: i64) {
        self.open = Some(Open {
            generation: generation.clone(),
            served_ms: now_ms,
            boot_id,
        });
    }

    /// The served boot confirmed `generation`: healthy again.
    pub fn confirmed(&mut self, generation: &GenerationId) {
        if self
            .open
            .as_ref()
            .is_some_and(|o| o.generation == *generation)
        {
            self.open = None;
        }
        if self.failing.as_ref().is_some_and(|(g, _)| g == generation) {
            self.failing = None;
        }
        if self
            .degraded
            .as_ref()
            .is_some_and(|d| d.generation == *generation)
        {
            self.degraded = None;
        }
    }

    /// The clock: an open boot past the timeout failed (counted once).
    pub fn tick(&mut self, policy: &Policy, now_ms: i64) -> Option<Failure> {
        self.tick_boot(policy, now_ms).map(|(f, _)| f)
    }

    /// [`Health::tick`], with the boot row of the boot that failed.
    pub fn tick_boot(&mut self, policy: &Policy, now_ms: i64) -> Option<(Failure, Option<i64>)> {
        let open = self.open.as_ref()?;
        if now_ms - open.served_ms < policy.confirm_timeout_ms {
            return None;
        }
        let open = self.open.take()?;
        let reason = format!(
            "no confirmation of {} within {} s",
            open.generation,
            policy.confirm_timeout_ms / 1000
        );
        Some((
            self.count(policy, open.generation, reason, now_ms),
            open.boot_id,
        ))
    }

    /// The machine itself said its open boot `boot_id` failed (it could
    /// not verify its root image, …): counted now, once.
    pub fn reported(
        &mut self,
        policy: &Policy,
        boot_id: i64,
        reason: String,
        now_ms: i64,
    ) -> Option<Failure> {
        if self.open.as_ref()?.boot_id != Some(boot_id) {
            return None;
        }
        let open = self.open.take()?;
        Some(self.count(policy, open.generation, reason, now_ms))
    }

    /// Nothing to remember: no open boot, no failures, no mark.
    pub fn is_clear(&self) -> bool {
        *self == Health::default()
    }

    /// An operator clears the mark and the count.
    pub fn clear(&mut self) {
        self.failing = None;
        self.degraded = None;
    }

    fn count(
        &mut self,
        policy: &Policy,
        generation: GenerationId,
        reason: String,
        now_ms: i64,
    ) -> Failure {
        let n = match &self.failing {
            Some((g, n)) if *g == generation => n + 1,
            _ => 1,
        };
        self.failing = Some((generation.clone(), n));
        let degraded = n >= policy.max_failures
            && self
                .degraded
                .as_ref()
                .is_none_or(|d| d.generation != generation);
        if degraded {
            self.degraded = Some(Degraded {
                generation: generation.clone(),
                since_ms: now_ms,
                reason: format!("{n} failed boots of {generation}, the last: {reason}"),
            });
        }
        Failure {
            generation,
            reason,
            degraded,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        max_failures: 2,
        confirm_timeout_ms: 600_000,
    };

    fn g(n: i64) -> GenerationId {
        GenerationId::new("worker", n)
    }

    #[test]
    fn a_machine_that_reboots_without_confirming_falls_back_to_its_last_good_after_two_failures() {
        let mut h = Health::default();
        let good = g(41);
        assert_eq!(h.served(&POLICY, &g(42), 0), None);
        let f = h.served(&POLICY, &g(42), 60_000).expect("first failure");
        assert_eq!((f.generation.clone(), f.degraded), (g(42), false));
        assert_eq!(f.reason, "netbooted again without confirming worker gen 42");
        assert_eq!(h.verdict(&g(42), Some(&good)), Verdict::Target);
        let f = h.served(&POLICY, &g(42), 120_000).expect("second failure");
        assert!(f.degraded);
        match h.verdict(&g(42), Some(&good)) {
            Verdict::LastGood { generation, reason } => {
                assert_eq!(generation, good);
                assert!(
                    reason.contains("2 failed boots of worker gen 42"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        // A new target is tried; the last good one confirms and clears it.
        assert_eq!(h.verdict(&g(43), Some(&good)), Verdict::Target);
        h.served(&POLICY, &good, 180_000);
        h.confirmed(&good);
        assert!(
            h.degraded.is_some(),
            "confirming gen 41 does not clear gen 42's mark"
        );
        h.clear();
        assert_eq!(h.verdict(&g(42), Some(&good)), Verdict::Target);
    }

    #[test]
    fn silence_past_the_timeout_counts_once_and_a_confirmation_resets_the_count() {
        let mut h = Health::default();
        h.served(&POLICY, &g(42), 0);
        assert_eq!(h.tick(&POLICY, 599_999), None);
        let f = h.tick(&POLICY, 600_000).expect("timed out");
        assert_eq!(f.reason, "no confirmation of worker gen 42 within 600 s");
        assert_eq!(h.tick(&POLICY, 900_000), None, "counted once");
        h.served(&POLICY, &g(42), 1_000_000);
        h.confirmed(&g(42));
        assert_eq!(h, Health::default());
    }

    #[test]
    fn a_reported_failure_counts_its_own_open_boot_once_and_no_other() {
        let mut h = Health::default();
        h.open(&g(42), Some(7), 0);
        assert_eq!(
            h.reported(&POLICY, 6, "verity".into(), 10),
            None,
            "another boot"
        );
        let f = h
            .reported(&POLICY, 7, "verity".into(), 10)
            .expect("counted");
        assert_eq!((f.generation, f.reason.as_str()), (g(42), "verity"));
        assert_eq!(h.reported(&POLICY, 7, "verity".into(), 20), None, "once");
        assert_eq!(
            h.tick(&POLICY, 10_000_000),
            None,
            "not again at the timeout"
        );
        assert_eq!(h.netbooted(&POLICY, 30), None, "nor when it netboots");
    }

    #[test]
    fn with_no_other_confirmed_generation_the_target_is_booted_and_the_reason_said() {
        let mut h = Health::default();
        for t in 0..3 {
            h.served(&POLICY, &g(1), t);
        }
        assert!(matches!(h.verdict(&g(1), None), Verdict::NoFallback { .. }));
        assert!(matches!(
            h.verdict(&g(1), Some(&g(1))),
            Verdict::NoFallback { .. }
        ));
    }

    #[test]
    fn failures_of_different_generations_do_not_add_up() {
        let mut h = Health::default();
        h.served(&POLICY, &g(1), 0);
        h.served(&POLICY, &g(2), 1); // gen 1 failed once
        h.served(&POLICY, &g(1), 2); // gen 2 failed once
        assert!(h.degraded.is_none());
        assert_eq!(h.failing, Some((g(2), 1)));
    }
}
