//! Which generation a machine boots next, and why: a pure function of the
//! machine, its group and the generations that exist.
//!
//! Order of precedence: a pin on the machine, then its group's pointer for
//! the machine's architecture (a group holds one generation per
//! architecture), then the group's pointer set last.
//! Rollouts and the last-known-good watchdog then have their say (see
//! `rollout::engine::Rollouts::boot`: a moved machine boots the rollout's
//! generation, a degraded one its last good). When
//! nothing can be booted the answer says why, because the machine's console
//! and the ledger must say it too.

pub mod claims;
pub mod identity;
pub mod loader;
pub mod membership;
pub mod onie;
pub mod select;

use serde::Serialize;

use crate::domain::{Cpu, Slot};

pub use crate::domain::GenerationId;

/// What the decision needs to know about a machine.
#[derive(Debug, Clone, Default)]
pub struct MachineFacts {
    pub group: String,
    pub pin: Option<GenerationId>,
    /// The CPU the machine's loader runs, when known from iPXE's
    /// `${buildarch}` or DHCP option 93.
    pub arch: Option<Cpu>,
    /// A switch: it boots ONIE installers, so its group's installer
    /// generation for its arch is the one it gets.
    pub switch: bool,
}

/// What the decision needs to know about the machine's group.
#[derive(Debug, Clone, Default)]
pub struct GroupFacts {
    pub name: String,
    /// The pointer set last, whatever its architecture.
    pub pointer: Option<GenerationId>,
    /// One generation per image CPU (`x86_64`, `arm64`), and one per
    /// installer CPU (`x86_64/installer`) for switches.
    pub by_arch: Vec<(Slot, GenerationId)>,
}

impl GroupFacts {
    /// The generation for a machine of `arch` (a switch or not), from the
    /// slots of its kind only: a server never gets an installer, a switch
    /// never a live OS. With `arch` known, the slot of its family; unknown
    /// (a script request that does not say), the slot set last if it is of
    /// this kind, else the x86 one (every iPXE that asks without saying is an
    /// x86 build), else the only one. A group from before per-architecture
    /// slots has only its pointer.
    pub fn pointer_for(&self, arch: Option<Cpu>, switch: bool) -> Option<&GenerationId> {
        if self.by_arch.is_empty() {
            return self.pointer.as_ref();
        }
        let candidates: Vec<(Cpu, &GenerationId)> = self
            .by_arch
            .iter()
            .filter(|(slot, _)| slot.installer == switch)
            .map(|(slot, g)| (slot.cpu, g))
            .collect();
        let set_last = || {
            candidates
                .iter()
                .find(|(_, g)| Some(*g) == self.pointer.as_ref())
        };
        match arch {
            // No slot for its family: the one set last (if of its kind),
            // which the caller then refuses for its architecture, saying so.
            Some(a) => candidates
                .iter()
                .find(|(image, _)| a.runs(*image))
                .or_else(set_last),
            None => set_last()
                .or_else(|| {
                    candidates
                        .iter()
                        .find(|(image, _)| Cpu::X86_64.runs(*image))
                })
                .or(candidates.first()),
        }
        .map(|(_, g)| *g)
    }
}

/// Where the chosen generation came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Pin,
    Group,
    /// A rollout moved the machine to its group's next generation.
    Rollout,
    /// The watchdog: the target kept failing, so the last good generation.
    LastGood,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Target {
    Boot {
        generation: GenerationId,
        source: Source,
    },
    Nothing {
        reason: String,
    },
}

/// Picks the generation for `machine`. `image_arch` says which architecture a
/// generation's image is for, or `None` when the generation does not exist.
pub fn target(
    machine: &MachineFacts,
    group: Option<&GroupFacts>,
    image_arch: impl Fn(&GenerationId) -> Option<Cpu>,
) -> Target {
    let pointer = group.and_then(|g| g.pointer_for(machine.arch, machine.switch));
    let (chosen, source) = match (&machine.pin, pointer) {
        (Some(pin), _) => (pin, Source::Pin),
        (None, Some(pointer)) => (pointer, Source::Group),
        (None, None) => {
            let kind = if machine.switch {
                "switches"
            } else {
                "servers"
            };
            let reason = match (group, &machine.arch) {
                (Some(g), _) if g.by_arch.is_empty() => {
                    format!("group {} points at no generation", g.name)
                }
                (Some(g), Some(arch)) => {
                    format!("group {} has no generation for {arch} {kind}", g.name)
                }
                (Some(g), None) => format!("group {} has no generation for {kind}", g.name),
                (None, _) => format!("group {} does not exist", machine.group),
            };
            return Target::Nothing { reason };
        }
    };
    let Some(arch) = image_arch(chosen) else {
        let what = if source == Source::Pin {
            "pinned"
        } else {
            "group's"
        };
        return Target::Nothing {
            reason: format!("the {what} generation {chosen} does not exist"),
        };
    };
    if let Some(machine_arch) = machine.arch {
        if !machine_arch.runs(arch) {
            return Target::Nothing {
                reason: format!("{chosen} is an {arch} image but this machine runs {machine_arch}"),
            };
        }
    }
    Target::Boot {
        generation: chosen.clone(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gen(stream: &str, n: i64) -> GenerationId {
        GenerationId::new(stream, n)
    }

    fn slot(text: &str) -> Slot {
        text.parse().unwrap()
    }

    #[test]
    fn decision_table() {
        let existing = |g: &GenerationId| match (g.stream.as_str(), g.number) {
            ("worker", 41 | 42) => Some(Cpu::X86_64),
            ("arm", 1) => Some(Cpu::Arm64),
            ("nos", 2) => Some(Cpu::X86_64),
            _ => None,
        };
        let group = |p: Option<GenerationId>| GroupFacts {
            name: "web".into(),
            pointer: p,
            by_arch: vec![],
        };
        let two_arch = |last: GenerationId| GroupFacts {
            name: "web".into(),
            pointer: Some(last),
            by_arch: vec![
                (slot("x86_64"), gen("worker", 41)),
                (slot("arm64"), gen("arm", 1)),
                (slot("x86_64/installer"), gen("nos", 2)),
            ],
        };
        let only = |slots: &[(&str, GenerationId)], last: GenerationId| GroupFacts {
            name: "web".into(),
            pointer: Some(last),
            by_arch: slots.iter().map(|(s, g)| (slot(s), g.clone())).collect(),
        };
        let machine = |pin: Option<GenerationId>, arch: Option<&str>| MachineFacts {
            group: "web".into(),
            pin,
            arch: arch.map(|a| a.parse().unwrap()),
            switch: false,
        };
        let switch = |arch: &str| MachineFacts {
            switch: true,
            ..machine(None, Some(arch))
        };
        let boot = |g: GenerationId, source| Target::Boot {
            generation: g,
            source,
        };
        let nothing = |r: &str| Target::Nothing { reason: r.into() };
        #[rustfmt::skip]
        let cases = [
            ("group pointer",              machine(None, None),                     Some(group(Some(gen("worker", 41)))), boot(gen("worker", 41), Source::Group)),
            ("pin beats group",            machine(Some(gen("worker", 42)), None),  Some(group(Some(gen("worker", 41)))), boot(gen("worker", 42), Source::Pin)),
            ("pin without group pointer",  machine(Some(gen("worker", 42)), None),  Some(group(None)),                    boot(gen("worker", 42), Source::Pin)),
            ("empty group",                machine(None, None),                     Some(group(None)),                    nothing("group web points at no generation")),
            ("missing group",              machine(None, None),                     None,                                 nothing("group web does not exist")),
            ("pinned generation deleted",  machine(Some(gen("worker", 7)), None),   Some(group(Some(gen("worker", 41)))), nothing("the pinned generation worker gen 7 does not exist")),
            ("group generation deleted",   machine(None, None),                     Some(group(Some(gen("worker", 9)))),  nothing("the group's generation worker gen 9 does not exist")),
            ("BIOS iPXE is i386",          machine(None, Some("i386")),             Some(group(Some(gen("worker", 41)))), boot(gen("worker", 41), Source::Group)),
            ("arch matches (iPXE name)",   machine(None, Some("x86_64")),           Some(group(Some(gen("worker", 41)))), boot(gen("worker", 41), Source::Group)),
            ("wrong arch is refused",      machine(None, Some("arm64")),            Some(group(Some(gen("worker", 41)))), nothing("worker gen 41 is an x86_64 image but this machine runs arm64")),
            ("arm64 machine, arm64 image", machine(None, Some("arm64")),            Some(group(Some(gen("arm", 1)))),     boot(gen("arm", 1), Source::Group)),
            ("per-arch: arm64 machine",    machine(None, Some("arm64")),            Some(two_arch(gen("worker", 41))),    boot(gen("arm", 1), Source::Group)),
            ("per-arch: BIOS i386 iPXE",   machine(None, Some("i386")),             Some(two_arch(gen("arm", 1))),        boot(gen("worker", 41), Source::Group)),
            ("per-arch: arch unknown",     machine(None, None),                     Some(two_arch(gen("arm", 1))),        boot(gen("arm", 1), Source::Group)),
            ("unknown arch, installer set last", machine(None, None),               Some(two_arch(gen("nos", 2))),        boot(gen("worker", 41), Source::Group)),
            ("unknown arch, only arm64",   machine(None, None),                     Some(only(&[("arm64", gen("arm", 1)), ("x86_64/installer", gen("nos", 2))], gen("nos", 2))), boot(gen("arm", 1), Source::Group)),
            ("server, only an installer",  machine(None, Some("x86_64")),           Some(only(&[("x86_64/installer", gen("nos", 2))], gen("nos", 2))), nothing("group web has no generation for x86_64 servers")),
            ("switch, only a live OS",     switch("x86_64"),                        Some(only(&[("x86_64", gen("worker", 41))], gen("worker", 41))), nothing("group web has no generation for x86_64 switches")),
            ("no slot for this arch",      machine(None, Some("arm64")),            Some(only(&[("x86_64", gen("worker", 41))], gen("worker", 41))), nothing("worker gen 41 is an x86_64 image but this machine runs arm64")),
            ("no slot, installer set last", machine(None, Some("arm64")),           Some(two_arch(gen("nos", 2))).map(|g| GroupFacts { by_arch: g.by_arch.into_iter().filter(|(s, _)| *s != slot("arm64")).collect(), ..g }), nothing("group web has no generation for arm64 servers")),
            ("per-arch: x86_64 switch",    switch("x86_64"),                        Some(two_arch(gen("worker", 41))),    boot(gen("nos", 2), Source::Group)),
            ("per-arch: x86_64 server",    machine(None, Some("x86_64")),           Some(two_arch(gen("nos", 2))),        boot(gen("worker", 41), Source::Group)),
            ("per-arch: pin still wins",   machine(Some(gen("worker", 42)), Some("x86_64")), Some(two_arch(gen("arm", 1))), boot(gen("worker", 42), Source::Pin)),
        ];
        for (name, m, g, want) in cases {
            assert_eq!(target(&m, g.as_ref(), existing), want, "{name}");
        }
    }
}
