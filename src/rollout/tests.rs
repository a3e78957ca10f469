use std::collections::BTreeMap;

use super::*;

const MIN: i64 = 60_000;

fn mac(k: u8) -> MacAddr {
    MacAddr([0x52, 0x54, 0, 0, 0, k])
}

fn macs(ks: &[u8]) -> Vec<MacAddr> {
    ks.iter().map(|&k| mac(k)).collect()
}

fn gen(n: i64) -> GenerationId {
    GenerationId::new("worker", n)
}

fn spec(strategy: Strategy) -> Spec {
    Spec {
        group: "web".into(),
        from: gen(41),
        to: gen(42),
        strategy,
        timeout_ms: 10 * MIN,
        require: None,
        rollback: true,
        on_bmc_failure: Default::default(),
    }
}

fn canary(canary: Canary, steps: &[u8]) -> Strategy {
    Strategy::Canary {
        canary,
        steps: steps.to_vec(),
    }
}

fn confirm(r: &mut Rollout, k: u8, n: i64, at_ms: i64) {
    let fields = BTreeMap::new();
    r.observe(Observation::Confirmed {
        mac: mac(k),
        generation: &gen(n),
        fields: &fields,
        at_ms,
    });
}

/// What a case is about, the strategy, the members, the waves expected.
type WaveCase = (&'static str, Strategy, &'static [u8], Vec<Vec<u8>>);

#[test]
fn waves_by_strategy() {
    const TEN: &[u8] = &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
    let cases: Vec<WaveCase> = vec![
        (
            "canary 1, then 50%, 100%",
            canary(Canary::Count(1), &[50, 100]),
            TEN,
            vec![vec![1], vec![2, 3, 4, 5], vec![6, 7, 8, 9, 10]],
        ),
        (
            "steps stop short of 100%: the rest follows",
            canary(Canary::Count(2), &[50]),
            TEN,
            vec![vec![1, 2], vec![3, 4, 5], vec![6, 7, 8, 9, 10]],
        ),
        (
            "canary 10% of 10 is one machine; no steps: all the rest",
            canary(Canary::Percent(10), &[]),
            TEN,
            vec![vec![1], (2..=10).collect()],
        ),
        (
            "percent rounds up, at least one",
            canary(Canary::Percent(1), &[34]),
            &[1, 2, 3],
            vec![vec![1], vec![2], vec![3]],
        ),
        (
            "named canaries go first whatever their MAC",
            canary(Canary::Machines(macs(&[7, 3])), &[50]),
            TEN,
            vec![vec![3, 7], vec![1, 2, 4], vec![5, 6, 8, 9, 10]],
        ),
        (
            "a canary as large as the group: one wave",
            canary(Canary::Count(5), &[50]),
            &[1, 2, 3],
            vec![vec![1, 2, 3]],
        ),
        (
            "a step already reached by the canary adds no empty wave",
            canary(Canary::Count(6), &[50, 100]),
            TEN,
            vec![(1..=6).collect(), vec![7, 8, 9, 10]],
        ),
        (
            "blue/green: the idle half, then the flip",
            Strategy::BlueGreen,
            &[1, 2, 3, 4, 5],
            vec![vec![1, 2, 3], vec![4, 5]],
        ),
        (
            "members are deduplicated and sorted",
            canary(Canary::Count(1), &[]),
            &[3, 1, 3, 2],
            vec![vec![1], vec![2, 3]],
        ),
    ];
    for (what, strategy, members, want) in cases {
        let got = plan(&strategy, &macs(members)).unwrap_or_else(|e| panic!("{what}: {e}"));
        let want: Vec<Vec<MacAddr>> = want.iter().map(|w| macs(w)).collect();
        assert_eq!(got, want, "{what}");
    }
}

#[test]
fn plans_that_cannot_work_are_refused() {
    let cases: Vec<(&str, Strategy, &[u8], &str)> = vec![
        (
            "empty group",
            canary(Canary::Count(1), &[]),
            &[],
            "no machines",
        ),
        ("zero canary", canary(Canary::Count(0), &[]), &[1], "canary"),
        ("0% canary", canary(Canary::Percent(0), &[]), &[1], "canary"),
        (
            "150% canary",
            canary(Canary::Percent(150), &[]),
            &[1],
            "canary",
        ),
        (
            "no named canary",
            canary(Canary::Machines(vec![]), &[]),
            &[1],
            "canary",
        ),
        (
            "stranger",
            canary(Canary::Machines(macs(&[9])), &[]),
            &[1],
            "52:54:00:00:00:09 is not a member",
        ),
        ("step 0", canary(Canary::Count(1), &[0]), &[1], "steps"),
        ("step 101", canary(Canary::Count(1), &[101]), &[1], "steps"),
        (
            "decreasing",
            canary(Canary::Count(1), &[50, 10]),
            &[1],
            "increase",
        ),
    ];
    for (what, strategy, members, needle) in cases {
        let err = plan(&strategy, &macs(members)).expect_err(what).to_string();
        assert!(err.contains(needle), "{what}: {err}");
    }
    let mut same = spec(canary(Canary::Count(1), &[]));
    same.to = gen(41);
    assert!(Rollout::start(same, &macs(&[1]), 0).is_err());
}

#[test]
fn a_good_generation_rolls_through_every_wave_and_completes() {
    let s = spec(canary(Canary::Count(1), &[]));
    let (mut r, actions) = Rollout::start(s, &macs(&[1, 2, 3]), 0).unwrap();
    assert_eq!(
        actions,
        vec![Action::Moved {
            wave: 0,
            machines: macs(&[1])
        }]
    );
    assert_eq!(r.target_for(mac(1)), Some(&gen(42)));
    assert_eq!(
        r.target_for(mac(2)),
        None,
        "not moved yet: the group pointer decides"
    );
    assert_eq!(r.waiting(), macs(&[1]));
    assert!(r.tick(MIN).is_empty(), "the canary has not confirmed yet");

    confirm(&mut r, 1, 41, 2 * MIN); // confirming A does not count
    assert!(r.tick(2 * MIN).is_empty());
    confirm(&mut r, 1, 42, 3 * MIN);
    assert_eq!(
        r.tick(3 * MIN),
        vec![
            Action::GatePassed { wave: 0 },
            Action::Moved {
                wave: 1,
                machines: macs(&[2, 3])
            }
        ]
    );
    assert_eq!(
        r.wave_started_ms,
        3 * MIN,
        "the next wave's timeout starts now"
    );
    confirm(&mut r, 2, 42, 4 * MIN);
    confirm(&mut r, 3, 42, 5 * MIN);
    assert_eq!(
        r.tick(5 * MIN),
        vec![Action::GatePassed { wave: 1 }, Action::Complete]
    );
    assert_eq!(r.state, State::Succeeded);
    assert_eq!(
        r.target_for(mac(1)),
        None,
        "after success the pointer (B) decides"
    );
    assert!(r.tick(6 * MIN).is_empty());
}

#[test]
fn a_canary_that_stays_silent_rolls_back_at_the_timeout() {
    let (mut r, _) =
        Rollout::start(spec(canary(Canary::Count(1), &[])), &macs(&[1, 2]), 0).unwrap();
    assert!(r.tick(10 * MIN - 1).is_empty());
    let actions = r.tick(10 * MIN);
    assert_eq!(
        actions,
        vec![Action::GateFailed {
            wave: 0,
            reason: "52:54:00:00:00:01 did not confirm worker gen 42 within 600 s".into(),
            rolled_back: macs(&[1]),
        }]
    );
    assert!(matches!(r.state, State::RolledBack { .. }));
    assert_eq!(r.target_for(mac(1)), None, "back on the group pointer: A");
    // Late confirmations change nothing.
    confirm(&mut r, 1, 42, 11 * MIN);
    assert!(r.tick(12 * MIN).is_empty());
}

#[test]
fn a_failed_boot_of_a_moved_machine_fails_the_gate_at_once() {
    let (mut r, _) =
        Rollout::start(spec(canary(Canary::Count(2), &[])), &macs(&[1, 2, 3]), 0).unwrap();
    confirm(&mut r, 1, 42, MIN);
    // A failure of an unmoved machine, or of another generation, is not ours.
    for (k, n) in [(3, 42), (2, 41)] {
        let actions = r.observe(Observation::Failed {
            mac: mac(k),
            generation: &gen(n),
            reason: "netbooted again",
            at_ms: MIN,
        });
        assert!(actions.is_empty());
    }
    let actions = r.observe(Observation::Failed {
        mac: mac(2),
        generation: &gen(42),
        reason: "netbooted again without confirming worker gen 42",
        at_ms: 2 * MIN,
    });
    assert_eq!(
        actions,
        vec![Action::GateFailed {
            wave: 0,
            reason: "52:54:00:00:00:02 failed to boot worker gen 42: \
                     netbooted again without confirming worker gen 42"
                .into(),
            rolled_back: macs(&[1, 2]),
        }]
    );
}

#[test]
fn without_rollback_a_failed_gate_stops_with_moved_machines_on_b() {
    let mut s = spec(canary(Canary::Count(1), &[]));
    s.rollback = false;
    let (mut r, _) = Rollout::start(s, &macs(&[1, 2]), 0).unwrap();
    let actions = r.tick(10 * MIN);
    assert!(
        matches!(&actions[..], [Action::GateFailed { rolled_back, .. }] if rolled_back.is_empty())
    );
    assert!(matches!(r.state, State::Stopped { .. }));
    assert_eq!(r.target_for(mac(1)), Some(&gen(42)));
    assert_eq!(r.abort("operator gave up").unwrap(), macs(&[1]));
    assert_eq!(r.target_for(mac(1)), None);
}

#[test]
fn a_required_check_must_be_in_the_confirmation() {
    let mut s = spec(canary(Canary::Count(1), &[]));
    s.require = Some(Require {
        key: "checks".into(),
        value: "passed".into(),
    });
    let (mut r, _) = Rollout::start(s, &macs(&[1]), 0).unwrap();
    let mut fields = BTreeMap::from([("checks".to_string(), "failed".to_string())]);
    let confirmed = |fields: &BTreeMap<String, String>, r: &mut Rollout| {
        r.observe(Observation::Confirmed {
            mac: mac(1),
            generation: &gen(42),
            fields,
            at_ms: MIN,
        });
        r.tick(MIN)
    };
    assert!(confirmed(&fields, &mut r).is_empty());
    fields.insert("checks".into(), "passed".into());
    assert_eq!(
        confirmed(&fields, &mut r),
        vec![Action::GatePassed { wave: 0 }, Action::Complete]
    );
}

#[test]
fn secure_boot_is_required_by_its_meaning_not_its_spelling() {
    let require: Require = "secureboot=1".parse().unwrap();
    let said = |v: &str| BTreeMap::from([("secureboot".to_string(), v.to_string())]);
    assert!(require.met_by(&said("1")));
    assert!(require.met_by(&said("SecureBoot enabled")));
    assert!(!require.met_by(&said("0")));
    assert!(
        !require.met_by(&said("yes please")),
        "not in the vocabulary"
    );
    assert!(!require.met_by(&BTreeMap::new()), "said nothing");
    let off: Require = "secureboot=0".parse().unwrap();
    assert!(off.met_by(&said("disabled")));
    assert!("secureboot=maybe".parse::<Require>().is_err());
    assert!("checks=anything".parse::<Require>().is_ok());
}

#[test]
fn pause_freezes_the_gate_and_resume_restarts_its_timeout() {
    let (mut r, _) =
        Rollout::start(spec(canary(Canary::Count(1), &[])), &macs(&[1, 2]), 0).unwrap();
    r.pause().unwrap();
    assert!(r.pause().is_err(), "already paused");
    confirm(&mut r, 1, 42, MIN);
    assert!(
        r.tick(20 * MIN).is_empty(),
        "paused: neither passes nor fails"
    );
    assert_eq!(
        r.target_for(mac(1)),
        Some(&gen(42)),
        "moved machines keep B while paused"
    );
    r.resume(20 * MIN).unwrap();
    assert_eq!(r.tick(20 * MIN).len(), 2, "gate passed, next wave moved");
    assert!(r.tick(29 * MIN).is_empty());
    assert!(matches!(&r.tick(30 * MIN)[..], [Action::GateFailed { .. }]));
    assert!(r.resume(31 * MIN).is_err());
    assert!(
        r.abort("late").is_err(),
        "a rolled back rollout cannot be aborted"
    );
}

#[test]
fn a_rollout_survives_a_round_trip_through_json() {
    // The service stores it in SQLite as JSON and resumes from it.
    let (mut r, _) = Rollout::start(
        spec(canary(Canary::Percent(50), &[])),
        &macs(&[1, 2, 3, 4]),
        0,
    )
    .unwrap();
    confirm(&mut r, 1, 42, MIN);
    let stored = serde_json::to_string(&r).unwrap();
    let mut back: Rollout = serde_json::from_str(&stored).unwrap();
    assert_eq!(back, r);
    confirm(&mut back, 2, 42, MIN);
    assert_eq!(back.tick(2 * MIN).len(), 2);
}

#[test]
fn who_follows_a_rollout() {
    let member = |pinned, switch, arch: Option<&str>| Member {
        pinned,
        switch,
        arch: arch.map(|a| a.parse().unwrap()),
    };
    #[rustfmt::skip]
    let cases = [
        ("server, live OS, same arch",     member(false, false, Some("x86_64")), "x86_64", false, true),
        ("BIOS iPXE says i386",            member(false, false, Some("i386")),   "x86_64", false, true),
        ("arch not known yet",             member(false, false, None),           "arm64",  false, true),
        ("pinned",                         member(true,  false, Some("x86_64")), "x86_64", false, false),
        ("other arch",                     member(false, false, Some("arm64")),  "x86_64", false, false),
        ("server, installer",              member(false, false, None),           "x86_64", true,  false),
        ("switch, installer",              member(false, true,  Some("x86_64")), "x86_64", true,  true),
        ("switch, live OS",                member(false, true,  None),           "x86_64", false, false),
    ];
    for (name, m, image_arch, installer, want) in cases {
        let slot = crate::domain::Slot::new(image_arch.parse().unwrap(), installer);
        assert_eq!(m.follows(slot), want, "{name}");
    }
}
