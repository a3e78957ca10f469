//! Golden answers: one file per client kind under `tests/fixtures/explain/`,
//! compared whole. After an intended change, re-bless them with
//! `IRONBOOT_BLESS=1 cargo test --lib explain` and review the diff.

use std::path::PathBuf;
use std::sync::Arc;

use super::*;
use crate::boot::select::Selector;
use crate::config::RawBootfiles;
use crate::images::{ArtifactRef, Digest, Manifest};
use crate::inventory::GroupChange;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::store::Store;

const NODE7: &str = "52:54:00:00:00:07";
const ARM: &str = "52:54:00:00:0a:64";
const SWITCH: &str = "52:54:00:0e:00:01";
const TIED: &str = "52:54:00:00:00:7e";
const STRANGER: &str = "52:54:00:99:99:99";

fn artifact(name: &str) -> ArtifactRef {
    ArtifactRef {
        name: name.into(),
        digest: Digest::of(name.as_bytes()),
        size: name.len() as u64 * 1000,
    }
}

fn live(arch: &str) -> Manifest {
    Manifest {
        arch: arch.parse().unwrap(),
        kernel: Some(artifact(&format!("vmlinuz-{arch}"))),
        initrds: vec![artifact(&format!("initrd-{arch}.img"))],
        rootfs: None,
        cmdline: "console=ttyS0 ironboot.group={{ group.name }}".into(),
        installer: None,
        uki: None,
        rootfs_verity: None,
    }
}

fn installer() -> Manifest {
    Manifest {
        arch: crate::domain::Cpu::X86_64,
        kernel: None,
        initrds: vec![],
        rootfs: None,
        cmdline: String::new(),
        installer: Some(artifact("onie-installer-x86_64.bin")),
        uki: None,
        rootfs_verity: None,
    }
}

fn mac(text: &str) -> MacAddr {
    text.parse().unwrap()
}

/// An inventory with x86_64, arm64 and switch-installer generations in
/// `default`, a `db` group claiming `role=db`, two groups that tie on one
/// machine, and the machines of the cases.
async fn setup(dir: &std::path::Path) -> Arc<Inventory> {
    let store = Store::open(dir).await.unwrap();
    let (ledger, rx) = Ledger::new(1024, Arc::new(Metrics::default()));
    tokio::spawn(crate::store::writer::run(store.clone(), rx));
    let inv = Arc::new(Inventory::load(store, ledger).await.unwrap());
    let mut ids = Vec::new();
    for (stream, m) in [
        ("nos", installer()),
        ("arm", live("arm64")),
        ("worker", live("x86_64")),
        ("worker", live("x86_64")),
    ] {
        let g = inv
            .add_generation(stream, m.digest(), m, None)
            .await
            .unwrap();
        ids.push(g.id.clone());
    }
    for id in &ids[..3] {
        inv.set_group_generation("default", id).await.unwrap();
    }
    let group = |selector: &str, generation: Option<GenerationId>| GroupChange {
        description: None,
        selector: Some(Some(selector.parse::<Selector>().unwrap())),
        variables: Some(serde_json::json!({ "role": "database" })),
        generation,
    };
    inv.create_group("db", group("role=db", Some(ids[3].clone())))
        .await
        .unwrap();
    inv.create_group("db-eu", group("role=db,zone=eu", None))
        .await
        .unwrap();
    inv.create_group("db-r1", group("role=db,rack=r1 || role=db,rack=r2", None))
        .await
        .unwrap();
    for (m, labels) in [
        (NODE7, vec![("role", "db")]),
        (ARM, vec![]),
        (SWITCH, vec![]),
        (TIED, vec![("role", "db"), ("zone", "eu"), ("rack", "r1")]),
    ] {
        // Booted and confirmed once: the watchdog has nothing to say.
        let plan = inv.begin_boot(mac(m), &ScriptRequest::default());
        inv.settle().await;
        inv.confirm(&plan.token).await.unwrap();
        let labels = labels
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        inv.set_labels(mac(m), labels).await.unwrap();
    }
    inv
}

fn explainer(inventory: Arc<Inventory>, mode: DhcpMode) -> Explainer {
    Explainer {
        inventory,
        renderer: Arc::new(Renderer::embedded().unwrap()),
        server: "http://10.77.0.1:8080".into(),
        targets: BootTargets {
            files: RawBootfiles::default(),
            server_ip: Ipv4Addr::new(10, 77, 0, 1).into(),
            http_port: 8080,
        },
        mode,
        serve_all: false,
        clients: None,
    }
}

fn query(m: &str, arch: Option<u16>, vendor_class: &str) -> Query {
    Query {
        arch,
        vendor_class: (!vendor_class.is_empty()).then(|| vendor_class.to_string()),
        ..Query::new(mac(m))
    }
}

fn golden(name: &str, got: &Explanation) {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "tests/fixtures/explain",
        &format!("{name}.json"),
    ]
    .iter()
    .collect();
    let text = serde_json::to_string_pretty(got).unwrap() + "\n";
    // The CLI reads the same type back: every golden shape must round-trip.
    let back: Explanation = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{name}: the CLI cannot read this explanation: {e}"));
    assert_eq!(
        serde_json::to_string_pretty(&back).unwrap() + "\n",
        text,
        "{name}: read back differently"
    );
    if std::env::var_os("IRONBOOT_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run IRONBOOT_BLESS=1 cargo test --lib explain",
            path.display()
        )
    });
    assert!(
        want == text,
        "{name}: the explanation differs from {}; if intended, re-bless \
         (IRONBOOT_BLESS=1 cargo test --lib explain) and review the diff.\n--- got:\n{text}",
        path.display()
    );
}

#[tokio::test]
async fn golden_explanations_for_every_client_kind() {
    let dir = tempfile::TempDir::new().unwrap();
    let inv = setup(dir.path()).await;
    let full = explainer(inv.clone(), DhcpMode::Full);
    let proxy = explainer(inv.clone(), DhcpMode::Proxy);
    let cases: Vec<(&str, &Explainer, Query)> = vec![
        (
            "bios-pxe",
            &proxy,
            query(NODE7, Some(0), "PXEClient:Arch:00000:UNDI:002001"),
        ),
        (
            "uefi-pxe",
            &full,
            query(NODE7, Some(7), "PXEClient:Arch:00007:UNDI:003016"),
        ),
        (
            "ipxe",
            &full,
            Query {
                ipxe: true,
                ..query(NODE7, Some(7), "PXEClient:Arch:00007:UNDI:003010")
            },
        ),
        (
            "uefi-http-boot",
            &full,
            query(NODE7, Some(16), "HTTPClient:Arch:00016:UNDI:003001"),
        ),
        (
            "arm64-grub",
            &full,
            query(ARM, Some(11), "PXEClient:Arch:00011:UNDI:003000"),
        ),
        (
            "onie-switch",
            &full,
            query(SWITCH, None, "onie_vendor:x86_64-acme_widget-r0"),
        ),
        (
            "unknown-client",
            &proxy,
            query(STRANGER, Some(0), "PXEClient:Arch:00000:UNDI:002001"),
        ),
        (
            "selector-tie",
            &full,
            query(TIED, Some(7), "PXEClient:Arch:00007:UNDI:003016"),
        ),
        ("script-request", &full, Query::new(mac(NODE7))),
    ];
    for (name, explainer, q) in cases {
        golden(name, &explainer.explain(&q));
    }
}

#[tokio::test]
async fn explain_changes_nothing_and_agrees_with_a_real_boot() {
    let dir = tempfile::TempDir::new().unwrap();
    let inv = setup(dir.path()).await;
    let full = explainer(inv.clone(), DhcpMode::Full);
    let e = full.explain(&query(STRANGER, Some(7), "PXEClient"));
    assert!(!e.identity.known);
    assert!(inv.machine(mac(STRANGER)).is_none(), "nothing registered");

    // What explain says node7 boots is what its next boot is served.
    let e = full.explain(&query(NODE7, Some(7), "PXEClient"));
    let plan = inv.begin_boot(
        mac(NODE7),
        &ScriptRequest {
            buildarch: Some(crate::domain::Cpu::X86_64),
            ..ScriptRequest::default()
        },
    );
    assert_eq!(e.target, plan.target);
    assert_eq!(e.group.name, plan.machine.group);

    // ONIE over HTTP, from its headers alone.
    let headers: BTreeMap<String, String> = [
        ("ONIE-ETH-ADDR", SWITCH),
        ("ONIE-ARCH", "x86_64"),
        ("ONIE-SERIAL-NUMBER", "SN-1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let e = full.explain(&Query {
        onie: Some(onie_headers(&headers)),
        ..Query::new(mac(SWITCH))
    });
    assert_eq!(e.client.via, "onie_http");
    let installer = e.installer.expect("an installer");
    assert_eq!(installer.name.as_deref(), Some("onie-installer-x86_64.bin"));

    // A template rendered for a machine without booting it.
    let text = render_template(
        &inv,
        &full.renderer,
        &full.server,
        mac(NODE7),
        "config/meta-data",
    )
    .unwrap();
    assert!(text.contains("node-525400000007"), "{text}");
}

#[tokio::test]
async fn any_request_gets_an_explanation_not_a_panic() {
    use rand::{Rng, SeedableRng};
    let dir = tempfile::TempDir::new().unwrap();
    let inv = setup(dir.path()).await;
    let full = explainer(inv.clone(), DhcpMode::Full);
    let proxy = explainer(inv, DhcpMode::Proxy);
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let pieces = [
        "PXEClient",
        "HTTPClient",
        "onie_vendor:",
        "x86_64-acme_widget-r0",
        "SONiC",
        "cumulus",
        "iPXE",
        ":Arch:",
        "é",
        "\u{1F600}",
        "-",
        "_",
        " ",
    ];
    let text = |rng: &mut rand::rngs::StdRng| -> Option<String> {
        if rng.gen_bool(0.3) {
            return None;
        }
        let n = rng.gen_range(1..120);
        Some(
            (0..n)
                .map(|_| pieces[rng.gen_range(0..pieces.len())])
                .collect::<String>(),
        )
    };
    for i in 0..300 {
        let macs = [NODE7, ARM, SWITCH, TIED, STRANGER];
        let q = Query {
            arch: rng.gen_bool(0.7).then(|| rng.gen_range(0..30)),
            vendor_class: text(&mut rng),
            user_class: text(&mut rng),
            ipxe: rng.gen_bool(0.2),
            ztp: rng.gen_bool(0.2),
            circuit_id: text(&mut rng),
            remote_id: text(&mut rng),
            onie: rng.gen_bool(0.1).then(|| {
                onie_headers(&BTreeMap::from([(
                    "ONIE-ARCH".to_string(),
                    "x86_64".to_string(),
                )]))
            }),
            ..Query::new(mac(macs[i % macs.len()]))
        };
        let e = if i % 2 == 0 { &full } else { &proxy }.explain(&q);
        assert!(!e.steps.is_empty());
    }
}

#[tokio::test]
async fn a_rollout_that_moved_the_machine_is_in_the_explanation() {
    use crate::inventory::StartRollout;
    use crate::rollout::{Canary, Strategy};
    let dir = tempfile::TempDir::new().unwrap();
    let inv = setup(dir.path()).await;
    let mut next = live("x86_64");
    next.cmdline.push_str(" next");
    let to = inv
        .add_generation("worker", next.digest(), next, None)
        .await
        .unwrap()
        .id
        .clone();
    inv.start_rollout(
        StartRollout {
            group: "db".into(),
            to: to.clone(),
            strategy: Strategy::Canary {
                canary: Canary::Count(1),
                steps: vec![100],
            },
            timeout_ms: 600_000,
            require: None,
            rollback: true,
            on_bmc_failure: Default::default(),
        },
        None,
    )
    .await
    .unwrap();
    let full = explainer(inv.clone(), DhcpMode::Full);
    let e = full.explain(&query(NODE7, Some(7), "PXEClient"));
    assert_eq!(
        e.target,
        Target::Boot {
            generation: to.clone(),
            source: Source::Rollout
        }
    );
    assert!(
        e.steps
            .iter()
            .any(|s| s.starts_with("rollout ")
                && s.contains(&format!("{to} instead of worker gen 2"))),
        "{:#?}",
        e.steps
    );
    // And a real boot agrees.
    let plan = inv.begin_boot(
        mac(NODE7),
        &ScriptRequest {
            buildarch: Some(crate::domain::Cpu::X86_64),
            ..ScriptRequest::default()
        },
    );
    assert_eq!(plan.target, e.target);
}
