use super::*;
use crate::rollout::{Canary, Strategy};

const MIN: i64 = 60_000;

fn mac(k: u8) -> MacAddr {
    MacAddr([0x52, 0x54, 0, 0, 0, k])
}

fn gen(n: i64) -> GenerationId {
    GenerationId::new("worker", n)
}

fn group_target(n: i64) -> Target {
    Target::Boot {
        generation: gen(n),
        source: Source::Group,
    }
}

fn served(t: &Target) -> (i64, Source) {
    match t {
        Target::Boot { generation, source } => (generation.number, *source),
        Target::Nothing { reason } => panic!("nothing: {reason}"),
    }
}

fn started(fleet: &mut Rollouts, rollback: bool) -> i64 {
    let spec = Spec {
        on_bmc_failure: Default::default(),
        group: "web".into(),
        from: gen(41),
        to: gen(42),
        strategy: Strategy::Canary {
            canary: Canary::Count(1),
            steps: vec![],
        },
        timeout_ms: 10 * MIN,
        require: None,
        rollback,
    };
    let (id, out) = fleet
        .start(
            spec,
            "x86_64".parse().unwrap(),
            &[mac(1), mac(2), mac(3)],
            None,
            0,
        )
        .unwrap();
    assert_eq!(out.reboots.len(), 1, "the canary is asked to reboot");
    assert_eq!(out.reboots[0].mac, mac(1));
    assert_eq!(out.persist.rollouts.len(), 1);
    id
}

#[test]
fn the_boot_decision_moves_the_canary_and_leaves_the_rest_on_the_group_pointer() {
    let mut fleet = Rollouts::default();
    let id = started(&mut fleet, true);
    let (t, out) = fleet.boot(mac(1), "web", Some(&gen(41)), group_target(41), 10, MIN);
    assert_eq!(served(&t), (42, Source::Rollout));
    assert!(out.notes.iter().any(|n| n.step == "rollout.serve"));
    let (t, _) = fleet.boot(mac(2), "web", Some(&gen(41)), group_target(41), 11, MIN);
    assert_eq!(served(&t), (41, Source::Group));
    // Another group, or a pin, is not the rollout's business.
    let (t, _) = fleet.boot(mac(7), "db", None, group_target(41), 12, MIN);
    assert_eq!(served(&t), (41, Source::Group));
    let pinned = Target::Boot {
        generation: gen(41),
        source: Source::Pin,
    };
    let (t, _) = fleet.boot(mac(8), "web", None, pinned, 13, MIN);
    assert_eq!(served(&t), (41, Source::Pin));
    assert_eq!(fleet.rollout(id).unwrap().state_key(), "running");
}

#[test]
fn a_canary_that_netboots_again_gets_a_in_that_same_boot_and_the_failed_boot_is_marked() {
    let mut fleet = Rollouts::default();
    let id = started(&mut fleet, true);
    let (t, _) = fleet.boot(mac(1), "web", Some(&gen(41)), group_target(41), 10, MIN);
    assert_eq!(served(&t).0, 42);
    let (t, out) = fleet.boot(mac(1), "web", Some(&gen(41)), group_target(41), 11, 2 * MIN);
    assert_eq!(served(&t), (41, Source::Group), "rolled back already");
    assert_eq!(out.persist.failed_boots.len(), 1);
    assert_eq!(out.persist.failed_boots[0].0, 10);
    assert!(out.reboots.is_empty(), "the booting canary needs no reboot");
    let steps: Vec<&str> = out.notes.iter().map(|n| n.step).collect();
    assert!(steps.contains(&"watchdog.failed_boot") && steps.contains(&"rollout.rolled_back"));
    let e = fleet.rollout(id).unwrap();
    assert_eq!(e.state_key(), "rolled_back");
    assert!(!e.holds());
    let row = out.persist.rollouts.iter().find(|r| r.id == id).unwrap();
    assert!(!row.holds);
    assert!(
        out.persist.health[0].rev < row.rev || out.persist.health.iter().any(|h| h.rev > row.rev),
        "every row carries its own rev"
    );
}

#[test]
fn a_switch_whose_network_os_asks_for_ztp_carries_on_the_installer_boot() {
    // ONIE fetches B's installer (a boot of B opens), installs, reboots into
    // the network OS, whose ZTP request carries that boot on: no failure,
    // still B, and the rollout keeps waiting for the confirmation.
    let mut fleet = Rollouts::default();
    let id = started(&mut fleet, true);
    let (t, _) = fleet.boot(mac(1), "web", Some(&gen(41)), group_target(41), 10, MIN);
    assert_eq!(served(&t).0, 42);
    assert!(fleet.carry_on(mac(1)), "the installer's boot was open");
    let (t, out) = fleet.boot(mac(1), "web", Some(&gen(41)), group_target(41), 11, 2 * MIN);
    assert_eq!(served(&t), (42, Source::Rollout));
    assert!(out.persist.failed_boots.is_empty(), "{:?}", out.notes);
    assert_eq!(fleet.rollout(id).unwrap().state_key(), "running");
    assert_eq!(
        fleet.health(mac(1)).open.map(|o| o.boot_id),
        Some(Some(11)),
        "the ZTP boot is the one whose confirmation counts"
    );
    // Nothing open: carrying on is a no-op.
    assert!(!fleet.carry_on(mac(9)));
}

#[test]
fn without_rollback_the_rollout_stops_on_b_and_keeps_holding_the_group() {
    let mut fleet = Rollouts::default();
    let id = started(&mut fleet, false);
    fleet.boot(mac(1), "web", Some(&gen(41)), group_target(41), 10, MIN);
    let (t, _) = fleet.boot(mac(1), "web", Some(&gen(41)), group_target(41), 11, 2 * MIN);
    assert_eq!(served(&t).0, 42, "stopped: the canary stays on B");
    let e = fleet.rollout(id).unwrap();
    assert_eq!(e.state_key(), "stopped");
    assert!(e.holds());
    let spec = e.rollout.spec.clone();
    assert!(matches!(
        fleet.start(spec, "x86_64".parse().unwrap(), &[mac(1)], None, 3 * MIN),
        Err(FleetError::GroupBusy { .. })
    ));
    let out = fleet.abort(id, "giving up", None, 3 * MIN).unwrap();
    assert_eq!(out.reboots.len(), 1, "the canary goes back to A");
    assert_eq!(out.reboots[0].generation, gen(41));
}

#[test]
fn gates_pass_on_the_clock_and_success_moves_the_group_pointer() {
    let mut fleet = Rollouts::default();
    let id = started(&mut fleet, true);
    let fields = BTreeMap::new();
    fleet.boot(mac(1), "web", Some(&gen(41)), group_target(41), 10, MIN);
    fleet.confirmed(mac(1), &gen(42), &fields, MIN + 1);
    let out = fleet.tick(MIN + 2);
    assert_eq!(out.reboots.len(), 2, "the second wave is asked to reboot");
    for (k, boot) in [(2, 11), (3, 12)] {
        let (t, _) = fleet.boot(mac(k), "web", None, group_target(41), boot, MIN + 3);
        assert_eq!(served(&t).0, 42);
        fleet.confirmed(mac(k), &gen(42), &fields, MIN + 4);
    }
    let out = fleet.tick(MIN + 5);
    assert_eq!(
        out.persist.pointers,
        vec![PointerMove {
            group: "web".into(),
            slot: "x86_64".parse().unwrap(),
            generation: gen(42)
        }]
    );
    assert_eq!(fleet.rollout(id).unwrap().state_key(), "succeeded");
    // Done: the group pointer (now 42) decides again.
    let (t, _) = fleet.boot(mac(1), "web", None, group_target(42), 13, MIN + 6);
    assert_eq!(served(&t), (42, Source::Group));
}

#[test]
fn a_degraded_machine_boots_its_last_good_and_an_operator_clears_the_mark() {
    let mut fleet = Rollouts::default();
    fleet.policy.max_failures = 2;
    for (boot, at) in [(1, 0), (2, MIN), (3, 2 * MIN)] {
        fleet.boot(mac(9), "web", Some(&gen(41)), group_target(43), boot, at);
    }
    // Two failures so far (boots 1 and 2); boot 3 was still served 43.
    let (t, out) = fleet.boot(mac(9), "web", Some(&gen(41)), group_target(43), 4, 3 * MIN);
    assert_eq!(served(&t), (41, Source::LastGood));
    assert!(out.notes.iter().any(|n| n.step == "watchdog.last_good"));
    assert_eq!(fleet.degraded().len(), 1);
    assert!(fleet.clear(mac(1), None, 4 * MIN).is_err(), "not degraded");
    let out = fleet.clear(mac(9), Some("ops"), 4 * MIN).unwrap();
    assert!(!out.persist.health[0].degraded);
    let (t, _) = fleet.boot(mac(9), "web", Some(&gen(41)), group_target(43), 5, 5 * MIN);
    assert_eq!(served(&t), (43, Source::Group));
}

#[test]
fn silence_past_the_watchdog_timeout_fails_the_canary_on_the_clock() {
    let mut fleet = Rollouts::default();
    fleet.policy.confirm_timeout_ms = 2 * MIN;
    let id = started(&mut fleet, true);
    fleet.boot(mac(1), "web", Some(&gen(41)), group_target(41), 10, MIN);
    assert!(fleet.tick(2 * MIN).notes.is_empty());
    let out = fleet.tick(3 * MIN);
    assert_eq!(fleet.rollout(id).unwrap().state_key(), "rolled_back");
    assert_eq!(out.reboots.len(), 1, "the silent canary is rebooted onto A");
    assert_eq!(out.reboots[0].generation, gen(41));
    assert_eq!(
        out.persist.failed_boots,
        vec![(
            10,
            "no confirmation of worker gen 42 within 120 s".to_string()
        )]
    );
}

#[test]
fn a_boot_silent_past_the_watchdog_timeout_asks_for_a_reset_once() {
    let mut fleet = Rollouts::default();
    fleet.policy.confirm_timeout_ms = 2 * MIN;
    fleet.boot(mac(5), "web", None, group_target(41), 20, MIN);
    assert!(fleet.tick(2 * MIN).reboots.is_empty(), "not yet");
    let out = fleet.tick(3 * MIN);
    assert_eq!(out.reboots.len(), 1, "the hung machine is reset");
    let r = &out.reboots[0];
    assert_eq!((r.mac, r.rollout, r.group.as_str()), (mac(5), None, ""));
    assert!(
        r.reason
            .starts_with("watchdog: boot of worker gen 41 silent"),
        "{}",
        r.reason
    );
    assert!(
        fleet.tick(4 * MIN).reboots.is_empty(),
        "asked once per silent boot"
    );
    // The rollout's reboot stands for the watchdog's (one reset, not two):
    // the test above.
}

#[test]
fn a_fleet_restored_from_its_rows_decides_the_same() {
    let mut fleet = Rollouts::default();
    let id = started(&mut fleet, true);
    let entries: Vec<Entry> = fleet
        .rollouts()
        .map(|e| {
            let json = serde_json::to_string(&e.rollout).unwrap();
            Entry {
                rollout: serde_json::from_str(&json).unwrap(),
                ..e.clone()
            }
        })
        .collect();
    let mut again = Rollouts::restore(fleet.policy, entries, Vec::new(), 7);
    let (t, out) = again.boot(mac(1), "web", None, group_target(41), 10, MIN);
    assert_eq!(served(&t).0, 42);
    assert!(
        out.persist.health[0].rev > 7,
        "revs continue past the stored ones"
    );
    let (next, _) = again
        .start(
            Spec {
                group: "db".into(),
                ..again.rollout(id).unwrap().rollout.spec.clone()
            },
            "x86_64".parse().unwrap(),
            &[mac(5)],
            None,
            MIN,
        )
        .unwrap();
    assert_eq!(next, id + 1);
}

/// A pause committed on a copy while the fleet itself rolled back: the
/// fleet refuses the pause, and its own rows (fresh revisions, above the
/// copy's) bring the store back to it.
#[test]
fn resave_writes_the_fleet_as_it_is_over_a_copys_rows() {
    let mut fleet = Rollouts::default();
    let id = started(&mut fleet, true);
    let mut copy = fleet.clone();
    let paused = copy.pause(id, None, 5).unwrap();
    assert_eq!(copy.rollout(id).unwrap().state_key(), "paused");
    // Meanwhile the canary netboots twice without confirming: rolled back.
    fleet.boot(mac(1), "web", Some(&gen(41)), group_target(41), 10, MIN);
    fleet.boot(mac(1), "web", Some(&gen(41)), group_target(41), 11, 2 * MIN);
    assert_eq!(fleet.rollout(id).unwrap().state_key(), "rolled_back");
    assert!(
        fleet.pause(id, None, 6).is_err(),
        "a finished rollout cannot pause"
    );
    let again = fleet.resave(&paused.persist, 7);
    let row = &again.persist.rollouts[0];
    assert_eq!((row.id, row.state), (id, "rolled_back"));
    let copys = paused.persist.rollouts[0].rev;
    assert!(row.rev > copys, "{} must win over {copys}", row.rev);
    assert_eq!(fleet.rev(), row.rev);
}
