//! The fleet's decisions, as tables: who a request is, which group holds
//! it, what it boots, and that a change's recorded moves are the moves the
//! swap then makes.

use super::*;
use crate::boot::Source;

fn mac(last: u8) -> MacAddr {
    format!("52:54:00:00:00:{last:02x}").parse().unwrap()
}

fn generation(stream: &str, number: i64, arch: &str) -> Arc<Generation> {
    let manifest: Manifest = serde_json::from_value(serde_json::json!({
        "arch": arch,
        "kernel": {"name": "vmlinuz", "digest": Digest::of(b"k").to_string(), "size": 1},
        "initrds": [{"name": "initrd", "digest": Digest::of(b"i").to_string(), "size": 1}],
    }))
    .unwrap();
    Arc::new(Generation {
        id: GenerationId::new(stream, number),
        digest: Digest::of(format!("{stream}{number}").as_bytes()),
        manifest,
        imported_ms: 0,
        imported_by: None,
    })
}

fn group(name: &str, selector: Option<&str>, pointer: Option<GenerationId>) -> Group {
    Group {
        selector: selector.map(|s| s.parse().unwrap()),
        pointer,
        ..empty_group(name)
    }
}

fn labelled(last: u8, labels: &[(&str, &str)]) -> Machine {
    Machine {
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Machine::new(mac(last))
    }
}

/// Two streams, a `db` group claiming `role=db`, a `web` group claiming
/// `role=web`, and three machines (one db, one web, one unlabelled).
fn fleet() -> Fleet {
    let mut f = Fleet::default();
    for g in [
        generation("db", 1, "x86_64"),
        generation("web", 2, "x86_64"),
    ] {
        f.generations.insert(g.id.clone(), g);
    }
    for g in [
        group("db", Some("role=db"), Some(GenerationId::new("db", 1))),
        group("web", Some("role=web"), Some(GenerationId::new("web", 2))),
        group("default", None, None),
    ] {
        f.groups.insert(g.name.clone(), g);
    }
    for m in [
        labelled(1, &[("role", "db")]),
        labelled(2, &[("role", "web")]),
        labelled(3, &[]),
    ] {
        f.machines.insert(m.mac, m);
    }
    f.regroup();
    f
}

fn target_generation(d: &Decision) -> Option<(String, Source)> {
    match &d.target {
        Target::Boot { generation, source } => Some((generation.to_string(), *source)),
        Target::Nothing { .. } => None,
    }
}

#[test]
fn decide_names_the_machine_its_group_and_what_it_boots() {
    let f = fleet();
    let x86 = ScriptRequest {
        buildarch: Some(Cpu::X86_64),
        ..ScriptRequest::default()
    };
    let table: [(u8, bool, &str, Option<&str>); 4] = [
        // mac, fresh, group, generation it boots
        (1, false, "db", Some("db gen 1")),
        (2, false, "web", Some("web gen 2")),
        (3, false, "default", None),
        (9, true, "default", None),
    ];
    for (last, fresh, group, boots) in table {
        let d = decide(&f, mac(last), &x86, None, None);
        assert_eq!(d.fresh, fresh, "machine {last}");
        assert_eq!(d.machine.group, group, "machine {last}");
        assert_eq!(
            target_generation(&d).map(|(g, _)| g).as_deref(),
            boots,
            "machine {last}"
        );
        assert_eq!(d.generation.is_some(), boots.is_some(), "machine {last}");
    }
}

#[test]
fn decide_merges_what_the_request_says_and_keeps_what_the_operator_set() {
    let mut f = fleet();
    let m = f.machines.get_mut(&mac(1)).unwrap();
    m.pin = Some(GenerationId::new("web", 2));
    m.uuid = Some("old-uuid".into());
    m.kind = MachineKind::Switch;
    m.kind_by_operator = true;
    let req = ScriptRequest {
        uuid: Some("new-uuid".into()),
        buildarch: Some(Cpu::X86_64),
        ..ScriptRequest::default()
    };
    let d = decide(&f, mac(1), &req, None, Some(MachineKind::Server));
    assert_eq!(d.machine.uuid.as_deref(), Some("new-uuid"));
    assert_eq!(d.machine.serial, None, "nothing said, nothing invented");
    assert_eq!(d.machine.arch, Some(Cpu::X86_64));
    assert_eq!(
        d.machine.kind,
        MachineKind::Switch,
        "the operator's kind beats the request's"
    );
    assert_eq!(
        target_generation(&d),
        Some((GenerationId::new("web", 2).to_string(), Source::Pin)),
        "a pin beats the group's pointer"
    );
    // Deciding changes nothing.
    assert_eq!(f.machines[&mac(1)].uuid.as_deref(), Some("old-uuid"));
    assert_eq!(f.machines[&mac(1)].arch, None);
}

#[test]
fn moves_with_predicts_what_regroup_then_does() {
    type Change = fn(&mut HashMap<String, Group>, &mut Machine);
    // what, the change, how many machines it moves
    let cases: [(&str, Change, usize); 5] = [
        ("nothing changes", |_, _| {}, 0),
        (
            "db's selector now claims web machines",
            |groups, _| {
                groups.get_mut("db").unwrap().selector = Some("role=web".parse().unwrap());
            },
            2,
        ),
        (
            "a group with no selector",
            |groups, _| {
                groups.get_mut("web").unwrap().selector = None;
            },
            1,
        ),
        (
            "the unlabelled machine is labelled",
            |_, m| {
                m.labels.insert("role".into(), "web".into());
            },
            1,
        ),
        (
            "an assigned machine stays put",
            |groups, m| {
                m.assigned = Some("default".into());
                m.labels.insert("role".into(), "db".into());
                groups.get_mut("db").unwrap().selector = Some("role!=web".parse().unwrap());
            },
            0,
        ),
    ];
    for (what, change, moves) in cases {
        let f = fleet();
        let mut groups = f.groups.clone();
        let mut edited = f.machines[&mac(3)].clone();
        change(&mut groups, &mut edited);

        let mut predicted = f.moves_with(Some(&groups), Some(&edited));
        let mut swapped = f.clone();
        swapped.groups = groups;
        swapped.machines.insert(edited.mac, edited);
        let mut moved = swapped.regroup();
        predicted.sort();
        moved.sort();
        assert_eq!(predicted, moved, "{what}");
        assert_eq!(moved.len(), moves, "{what}: {moved:?}");
    }
}

#[test]
fn a_machine_keeps_its_newest_boots_and_expired_ones_are_swept() {
    let mut f = Fleet::default();
    let boot = |id: i64, last: u8, started_ms: i64| Boot {
        id,
        mac: mac(last),
        generation: None,
        confirmed: false,
        started_ms,
    };
    let limit = OPEN_BOOTS_PER_MACHINE as i64;
    for id in 1..=limit + 2 {
        f.open_boot(format!("a{id}"), boot(id, 1, 100), None, 0);
    }
    let open: Vec<&String> = f.open_by_mac[&mac(1)].iter().collect();
    assert_eq!(open.len(), OPEN_BOOTS_PER_MACHINE);
    assert_eq!(open[0], "a3", "the oldest two were dropped");
    assert!(!f.boots.contains_key("a1") && !f.boots.contains_key("a2"));

    // The sweep at SWEEP_EVERY drops boots started before `oldest_live`.
    f.open_boot("b".into(), boot(SWEEP_EVERY, 2, 500), None, 200);
    assert!(f.boots.contains_key("b"));
    assert!(f.boots.keys().all(|h| !h.starts_with('a')), "all expired");
    assert!(!f.open_by_mac.contains_key(&mac(1)));
}

#[test]
fn identity_by_port_is_the_machine_s_label_or_its_group_s_variable() {
    let mut groups = HashMap::new();
    let mut racked = empty_group("racked");
    racked.variables = serde_json::json!({"identity": " Port "});
    groups.insert("racked".to_string(), racked);
    type Labels = &'static [(&'static str, &'static str)];
    // the machine's labels, its group, identified by port
    let table: [(Labels, &str, bool); 4] = [
        (&[], "default", false),
        (&[("identity", "port")], "default", true),
        (&[("identity", "mac")], "default", false),
        (&[], "racked", true),
    ];
    for (labels, group, expected) in table {
        let mut m = labelled(1, labels);
        m.group = group.into();
        assert_eq!(by_port(&m, &groups), expected, "{labels:?} in {group}");
    }
}
