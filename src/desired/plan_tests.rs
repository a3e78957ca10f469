//! The plan as a table: a document and a server state, the lines it plans
//! (or the error it names).

use super::*;
use crate::desired::yaml;
use crate::domain::Cpu;

const A: &str = "52:54:00:00:00:01";
const B: &str = "52:54:00:00:00:02";

fn mac(s: &str) -> MacAddr {
    s.parse().unwrap()
}

fn gen(stream: &str, n: i64) -> GenerationId {
    GenerationId::new(stream, n)
}

/// Two machines in `web` (by selector role=web) following worker gen 41;
/// worker has generations 40-42 (x86_64), arm gen 1 (arm64).
fn server() -> Current {
    let mut cur = Current::default();
    for n in 40..=42 {
        cur.generations.insert(
            gen("worker", n),
            GenerationFacts {
                arch: Cpu::X86_64,
                installer: false,
            },
        );
    }
    cur.generations.insert(
        gen("arm", 1),
        GenerationFacts {
            arch: Cpu::Arm64,
            installer: false,
        },
    );
    cur.groups.insert("default".into(), CurrentGroup::default());
    cur.groups.insert(
        "web".into(),
        CurrentGroup {
            description: "front".into(),
            selector: Some("role=web".parse().unwrap()),
            variables: json!({ "ntp": "10.0.0.1" }),
            pointer: Some(gen("worker", 41)),
            by_arch: [("x86_64".parse().unwrap(), gen("worker", 41))].into(),
            holding: None,
        },
    );
    for m in [A, B] {
        cur.machines.insert(
            mac(m),
            CurrentMachine {
                labels: [("role".to_string(), "web".to_string())].into(),
                arch: Some(Cpu::X86_64),
                ..CurrentMachine::default()
            },
        );
    }
    cur
}

fn doc(text: &str) -> Document {
    yaml::parse(text).unwrap().0
}

fn lines(text: &str, cur: &Current) -> Vec<String> {
    plan(&doc(text), cur)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .into_iter()
        .map(|c| c.text)
        .collect()
}

#[test]
fn plans_are_the_diff_and_nothing_else() {
    let cur = server();
    let cases: &[(&str, &[&str])] = &[
        // Already so: nothing.
        (
            "groups:\n  web: {description: front, selector: 'role==web', variables: {ntp: 10.0.0.1}, stream: worker, generation: 41}\n",
            &[],
        ),
        ("", &[]),
        (
            "machines:\n  52-54-00-00-00-01: {labels: {role: web}, pin: null, group: null, hostname: null, kind: server}\n",
            &[],
        ),
        // A new group with everything; a new group with nothing.
        (
            "groups:\n  db: {description: databases, selector: 'role=db', variables: {loader: grub}, stream: worker, generation: 40}\n",
            &["+ group db: description \"databases\", selector \"role=db\", variables {\"loader\":\"grub\"}, generation worker gen 40"],
        ),
        ("groups:\n  db:\n", &["+ group db"]),
        // Field changes on an existing group.
        (
            "groups:\n  web: {selector: 'role=web,rack in (r1,r2)', description: web}\n",
            &["~ group web: description \"front\" -> \"web\", selector \"role=web\" -> \"role=web,rack in (r1,r2)\""],
        ),
        (
            "groups:\n  web: {selector: null, variables: {}}\n",
            &["~ group web: selector \"role=web\" -> -, variables {\"ntp\":\"10.0.0.1\"} -> {}"],
        ),
        // Labels replace the set; the rest of a machine.
        (
            "machines:\n  52:54:00:00:00:01: {labels: {role: web, rack: r1}, hostname: node1, group: web, pin: {stream: worker, generation: 40}, kind: switch}\n",
            &["~ machine 52:54:00:00:00:01: hostname - -> \"node1\", labels +rack=r1, group - -> \"web\", pin - -> worker gen 40, kind \"server\" -> \"switch\""],
        ),
        (
            "machines:\n  52:54:00:00:00:01: {labels: {role: db}}\n",
            &["~ machine 52:54:00:00:00:01: labels ~role=web->db"],
        ),
        (
            "machines:\n  52:54:00:00:00:01: {labels: {}}\n",
            &["~ machine 52:54:00:00:00:01: labels -role=web"],
        ),
        // A changed generation with members: a rollout, with the strategy.
        (
            "groups:\n  web: {stream: worker, generation: 42, rollout: {canary: 1, steps: [50%, 100%], timeout: 5m, require: checks=passed}}\n",
            &["rollout group web: worker gen 41 -> worker gen 42 (canary 1, steps 50%,100%, timeout 5m, require checks=passed; 2 machine(s))"],
        ),
        (
            "groups:\n  web: {stream: worker, generation: 40, rollout: {strategy: blue_green, rollback: false}}\n",
            &["rollout group web: worker gen 41 -> worker gen 40 (blue/green, timeout 10m, no rollback; 2 machine(s))"],
        ),
        (
            "groups:\n  web: {stream: worker, generation: 42, rollout: {on_bmc_failure: fail}}\n",
            &["rollout group web: worker gen 41 -> worker gen 42 (canary 1, timeout 10m, fail on BMC failure; 2 machine(s))"],
        ),
        // ... members after the file's own edits: both leave web, so the
        // pointer just moves; one pinned, one stays: a rollout of one.
        (
            "groups:\n  web: {stream: worker, generation: 42}\nmachines:\n  52:54:00:00:00:01: {labels: {}}\n  52:54:00:00:00:02: {labels: {role: db}}\n",
            &[
                "~ group web: generation worker gen 41 -> worker gen 42",
                "~ machine 52:54:00:00:00:01: labels -role=web",
                "~ machine 52:54:00:00:00:02: labels ~role=web->db",
            ],
        ),
        (
            "groups:\n  web: {stream: worker, generation: 42}\nmachines:\n  52:54:00:00:00:01: {pin: {stream: worker, generation: 41}}\n",
            &[
                "~ machine 52:54:00:00:00:01: pin - -> worker gen 41",
                "rollout group web: worker gen 41 -> worker gen 42 (canary 1, timeout 10m; 1 machine(s))",
            ],
        ),
        // A group whose machines are elsewhere: the pointer moves.
        (
            "groups:\n  default: {stream: worker, generation: 42}\n",
            &["~ group default: generation - -> worker gen 42"],
        ),
        // Another architecture's slot: no x86 machine follows it.
        (
            "groups:\n  web: {stream: arm, generation: 1}\n",
            &["~ group web: generation - -> arm gen 1"],
        ),
        // One generation per architecture: each slot on its own.
        (
            "groups:\n  db:\n    generations: [{stream: worker, generation: 42}, {stream: arm, generation: 1}]\n",
            &["+ group db: generation worker gen 42, generation arm gen 1"],
        ),
        (
            "groups:\n  web:\n    generations: [{stream: worker, generation: 41}, {stream: arm, generation: 1}]\n",
            &["~ group web: generation - -> arm gen 1"],
        ),
        (
            "groups:\n  web:\n    generations: [{stream: arm, generation: 1}, {stream: worker, generation: 42}]\n",
            &[
                "~ group web: generation - -> arm gen 1",
                "rollout group web: worker gen 41 -> worker gen 42 (canary 1, timeout 10m; 2 machine(s))",
            ],
        ),
    ];
    for (text, want) in cases {
        assert_eq!(lines(text, &cur), *want, "{text}");
    }
}

#[test]
fn a_rollout_in_progress_is_no_change_or_a_conflict() {
    let mut cur = server();
    cur.groups.get_mut("web").unwrap().holding = Some((3, gen("worker", 42)));
    assert_eq!(
        lines("groups:\n  web: {stream: worker, generation: 42}\n", &cur),
        Vec::<String>::new()
    );
    // Another architecture's pointer may move meanwhile (no rollout).
    assert_eq!(
        lines(
            "groups:\n  web:\n    generations: [{stream: worker, generation: 42}, {stream: arm, generation: 1}]\n",
            &cur
        ),
        ["~ group web: generation - -> arm gen 1"]
    );
    let e = plan(
        &doc("groups:\n  web: {stream: worker, generation: 40}\n"),
        &cur,
    )
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict);
    assert_eq!(e.path, "groups.web.generation");
    assert!(e.message.contains("rollout 3 toward worker gen 42"), "{e}");
}

#[test]
fn invalid_references_name_their_path() {
    let cur = server();
    let cases: &[(&str, ErrorKind, &str, &str)] = &[
        (
            "groups:\n  web: {stream: nope, generation: 1}\n",
            ErrorKind::UnknownReference,
            "groups.web.stream",
            "stream \"nope\" does not exist",
        ),
        (
            "groups:\n  web: {stream: worker, generation: 43}\n",
            ErrorKind::UnknownReference,
            "groups.web.generation",
            "worker gen 43 does not exist (the latest of worker is 42)",
        ),
        (
            "machines:\n  52:54:00:00:00:09: {hostname: x}\n",
            ErrorKind::UnknownReference,
            "machines.52:54:00:00:00:09",
            "not known to the server",
        ),
        (
            "machines:\n  52:54:00:00:00:01: {group: db}\n",
            ErrorKind::UnknownReference,
            "machines.52:54:00:00:00:01.group",
            "group db is neither in the file nor on the server",
        ),
        (
            "machines:\n  52:54:00:00:00:01: {pin: {stream: worker, generation: 9}}\n",
            ErrorKind::UnknownReference,
            "machines.52:54:00:00:00:01.pin.generation",
            "worker gen 9 does not exist",
        ),
        (
            "groups:\n  web: {stream: worker, generation: 42, rollout: {on_bmc_failure: shrug}}\n",
            ErrorKind::Invalid,
            "groups.web.rollout.on_bmc_failure",
            "is not wait or fail",
        ),
        (
            "groups:\n  default: {selector: a}\n",
            ErrorKind::Invalid,
            "groups.default.selector",
            "takes no selector",
        ),
        (
            "groups:\n  web: {variables: {loader: lilo}}\n",
            ErrorKind::Invalid,
            "groups.web.variables.loader",
            "not a loader",
        ),
        (
            "groups:\n  web: {rollout: {steps: [150%]}}\n",
            ErrorKind::Invalid,
            "groups.web.rollout.steps",
            "",
        ),
        (
            "groups:\n  web: {rollout: {timeout: soon}}\n",
            ErrorKind::Invalid,
            "groups.web.rollout.timeout",
            "not a duration",
        ),
        (
            "groups:\n  web:\n    generations: [{stream: worker, generation: 41}, {stream: worker, generation: 42}]\n",
            ErrorKind::Invalid,
            "groups.web.generations.1",
            "worker gen 42 and worker gen 41 are both x86_64 images",
        ),
        (
            "groups:\n  web:\n    generations: [{stream: worker, generation: 41}, {stream: arm, generation: 7}]\n",
            ErrorKind::UnknownReference,
            "groups.web.generations.1.generation",
            "arm gen 7 does not exist (the latest of arm is 1)",
        ),
    ];
    for (text, kind, path, message) in cases {
        let e = plan(&doc(text), &cur).unwrap_err();
        assert_eq!((e.kind, e.path.as_str()), (*kind, *path), "{text}: {e}");
        assert!(e.message.contains(message), "{text}: {e}");
    }
    // A machine may name a group the same file creates.
    assert_eq!(
        lines(
            "groups:\n  db: {}\nmachines:\n  52:54:00:00:00:01: {group: db}\n",
            &cur
        ),
        [
            "+ group db",
            "~ machine 52:54:00:00:00:01: group - -> \"db\""
        ]
    );
}

#[test]
fn the_api_rejects_what_the_yaml_reader_would() {
    // The server gets JSON from anyone, not only from the YAML reader.
    let cur = server();
    let bad: Document = serde_json::from_value(json!({
        "machines": { "nope": { "hostname": "x" } }
    }))
    .unwrap();
    assert_eq!(plan(&bad, &cur).unwrap_err().path, "machines.nope");
    let bad: Document = serde_json::from_value(json!({
        "machines": { A: { "labels": { "a b": "c" } } }
    }))
    .unwrap();
    assert_eq!(
        plan(&bad, &cur).unwrap_err().path,
        format!("machines.{A}.labels.a b")
    );
    let bad: Document = serde_json::from_value(json!({
        "groups": { "web": { "stream": "worker" } }
    }))
    .unwrap();
    assert_eq!(plan(&bad, &cur).unwrap_err().path, "groups.web.stream");
}

#[test]
fn bmcs_replace_the_stored_fields_keep_passwords_unseen_and_plan_nothing_again() {
    use crate::desired::bmc::{password_sha, BmcOwner, CurrentBmc};
    let mut cur = server();
    let m1 = mac("52:54:00:00:00:01");
    // The CLI sends the password it read; the plan never shows it.
    let with_password = |doc_text: &str, password: &str| {
        let mut d = doc(doc_text);
        for m in d.machines.values_mut() {
            if let Some(Some(b)) = &mut m.bmc {
                b.password = Some(password.into());
            }
        }
        d
    };
    let text = "machines:\n  52:54:00:00:00:01:\n    bmc: {protocol: ipmi, address: '10.0.9.1:623', username: admin}\n";
    let changes = plan(&with_password(text, "pw1"), &cur).unwrap();
    assert_eq!(
        changes.iter().map(|c| c.text.as_str()).collect::<Vec<_>>(),
        ["+ machine 52:54:00:00:00:01: bmc.protocol - -> \"ipmi\", bmc.address - -> \"10.0.9.1:623\", bmc.username - -> \"admin\", bmc.password - -> \"new\""]
    );
    assert!(!format!("{changes:?}").contains("pw1"), "Debug hides it");
    // Stored as the document says: nothing, with or without the password.
    cur.bmcs.insert(
        BmcOwner::Machine(m1),
        CurrentBmc {
            protocol: Some("ipmi".into()),
            address: Some("10.0.9.1:623".into()),
            username: Some("admin".into()),
            password_sha: Some(password_sha("pw1")),
            ..Default::default()
        },
    );
    assert!(plan(&with_password(text, "pw1"), &cur).unwrap().is_empty());
    assert!(plan(&doc(text), &cur).unwrap().is_empty());
    assert_eq!(
        lines_of(plan(&with_password(text, "pw2"), &cur).unwrap()),
        ["~ machine 52:54:00:00:00:01: bmc.password \"set\" -> \"new\""]
    );
    assert_eq!(
        lines_of(plan(&doc("machines:\n  52:54:00:00:00:01: {bmc: null}\n"), &cur).unwrap()),
        ["~ machine 52:54:00:00:00:01: bmc removed"]
    );
    // Checked like the API: the path names the field.
    let bad = "machines:\n  52:54:00:00:00:01:\n    bmc: {protocol: ipmi, address: '10.0.9.1', boot_target: http}\n";
    let e = plan(&doc(bad), &cur).unwrap_err();
    assert_eq!(e.path, "machines.52:54:00:00:00:01.bmc.boot_target");
    let bad = "groups:\n  web:\n    bmc: {protocol: telnet}\n";
    assert_eq!(
        plan(&doc(bad), &cur).unwrap_err().path,
        "groups.web.bmc.protocol"
    );
}

fn lines_of(changes: Vec<crate::desired::plan::Change>) -> Vec<String> {
    changes.into_iter().map(|c| c.text).collect()
}

#[test]
fn a_fleet_file_names_where_a_bmc_password_is_never_the_password() {
    let d = doc("groups:\n  web:\n    bmc: {protocol: redfish, address: 'https://10.0.0.5', username: admin, password_file: bmc.pw}\n");
    let b = d.groups["web"].bmc.clone().unwrap().unwrap();
    assert_eq!(b.password_file.as_deref(), Some("bmc.pw"));
    let e = yaml::parse("groups:\n  web:\n    bmc: {password: hunter2}\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("3:11:") && e.contains("password_file or password_env"),
        "{e}"
    );
    assert!(!e.contains("hunter2"));
}
