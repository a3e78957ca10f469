//! Reading the inventory's view from SQLite at start.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::boot::identity::SwitchPort;
use crate::boot::select::Selector;
use crate::domain::GenerationId;
use crate::domain::MacAddr;
use crate::images::{Digest, Manifest};
use crate::ledger::now_ms;
use crate::store::generations::GenerationRow;
use crate::store::machines::MachineRow;
use crate::store::Store;

use super::{Boot, Generation, Group, InventoryError, Machine, State};

/// Open boots older than this can no longer confirm (their machine has long
/// rebooted or given up).
const OPEN_BOOT_WINDOW_MS: i64 = 7 * 24 * 3600 * 1000;

fn pair(stream: Option<String>, number: Option<i64>) -> Option<GenerationId> {
    Some(GenerationId::new(stream?, number?))
}

/// A stored machine as the boot path holds it (its loader's CPU is known
/// only from requests, so not stored).
fn machine_of(row: MachineRow) -> Option<Machine> {
    let labels: BTreeMap<String, String> = serde_json::from_str(&row.labels).unwrap_or_default();
    Some(Machine {
        mac: row.mac.parse().ok()?,
        kind: row.kind.parse().unwrap_or_default(),
        kind_by_operator: row.kind_by_operator,
        assigned: row.group_assigned.then(|| row.group_name.clone()),
        group: row.group_name,
        membership: crate::boot::membership::Membership::Default,
        labels,
        hostname: row.hostname,
        uuid: row.uuid,
        serial: row.serial,
        arch: None,
        ip: row.ip,
        pin: pair(row.pin_stream, row.pin_generation),
        current: pair(row.current_stream, row.current_generation),
        last_good: pair(row.last_good_stream, row.last_good_generation),
        port: SwitchPort::new(row.circuit_id, row.remote_id),
    })
}

/// One machine's row, if the database has it.
pub(super) async fn machine(
    store: &Store,
    mac: MacAddr,
) -> Result<Option<Machine>, InventoryError> {
    Ok(store.machine_row(mac).await?.and_then(machine_of))
}

/// Everything, plus the highest boot id so far.
pub(super) async fn state(store: &Store) -> Result<(State, i64), InventoryError> {
    let mut state = State::default();

    for m in store
        .all_machines()
        .await?
        .into_iter()
        .filter_map(machine_of)
    {
        state.machines.insert(m.mac, m);
    }

    load_groups(store, &mut state).await?;
    load_generations(store, &mut state).await?;
    let max_boot = load_open_boots(store, &mut state).await?;
    Ok((state, max_boot))
}

/// Groups with their pointers per slot.
async fn load_groups(store: &Store, state: &mut State) -> Result<(), InventoryError> {
    let (groups, slots) = store.group_rows().await?;
    for g in groups {
        let variables =
            serde_json::from_str(&g.variables).unwrap_or_else(|_| serde_json::json!({}));
        // Stored selectors were validated when set; one edited into the
        // database by hand and broken claims nothing, loudly.
        let selector = g.selector.and_then(|text| match text.parse::<Selector>() {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(group = %g.name, selector = %text, error = %e, "unreadable group selector; ignored");
                None
            }
        });
        state.groups.insert(
            g.name.clone(),
            Group {
                name: g.name,
                description: g.description,
                selector,
                pointer: pair(g.stream, g.generation),
                by_arch: BTreeMap::new(),
                variables,
            },
        );
    }
    for row in slots {
        let Ok(slot) = row.slot.parse::<crate::domain::Slot>() else {
            tracing::warn!(
                group = row.group_name,
                slot = row.slot,
                "group pointer under an unknown slot: ignored"
            );
            continue;
        };
        if let Some(g) = state.groups.get_mut(&row.group_name) {
            g.by_arch
                .insert(slot, GenerationId::new(row.stream, row.generation));
        }
    }

    Ok(())
}

/// Generations with their manifests; one whose image row cannot be read is
/// skipped, loudly.
async fn load_generations(store: &Store, state: &mut State) -> Result<(), InventoryError> {
    for row in store.generation_rows().await? {
        let GenerationRow {
            stream,
            number,
            image,
            manifest,
            imported_ms,
            imported_by,
        } = row;
        let (Ok(digest), Ok(manifest)) = (
            image.parse::<Digest>(),
            serde_json::from_str::<Manifest>(&manifest),
        ) else {
            tracing::error!(
                stream,
                number,
                "generation with an unreadable image row; skipped"
            );
            continue;
        };
        let id = GenerationId::new(stream, number);
        state.generations.insert(
            id.clone(),
            Arc::new(Generation {
                id,
                digest,
                manifest,
                imported_ms,
                imported_by,
            }),
        );
    }

    Ok(())
}

/// Boots whose tokens may still confirm; returns the highest boot id so far.
async fn load_open_boots(store: &Store, state: &mut State) -> Result<i64, InventoryError> {
    let (boots, max_boot) = store.open_boots(now_ms() - OPEN_BOOT_WINDOW_MS).await?;
    for b in boots {
        if let Ok(mac) = b.mac.parse() {
            // Expired tokens stay refused by their start time; the
            // machine's newest open boots are kept, as at run time.
            state.open_boot(
                b.token_hash,
                Boot {
                    id: b.id,
                    mac,
                    generation: pair(b.stream, b.generation),
                    confirmed: false,
                    started_ms: b.started_ms,
                },
                None,
                0,
            );
        }
    }
    Ok(max_boot)
}

/// Writes the computed group of machines whose group moved (not assigned
/// ones: theirs is the operator's). Informational: what boots read is the
/// in-memory membership; this keeps `machines.group_name` telling the truth
/// to SQL readers.
pub(super) async fn save_groups(
    store: &Store,
    moved: &[(MacAddr, String)],
) -> Result<(), InventoryError> {
    if moved.is_empty() {
        return Ok(());
    }
    let mut tx = store.begin().await?;
    tx.save_computed_groups(moved).await?;
    tx.commit().await?;
    Ok(())
}
