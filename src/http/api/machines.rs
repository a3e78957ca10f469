//! Machines: list (filters, cursor paging), show (with recent boots and
//! their steps), update (hostname, labels, group, pin, kind; `If-Match`),
//! delete (history kept unless purged), boot history, pins.

use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::history::{boots_of, BootFilter, BootView};
use super::paging::{parse_time, MAX_PAGE};
use super::*;
use crate::domain::{Arch, BootState, Cpu};
use crate::store::machines::{MachineQuery, MachineRow};

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_machines))
        .routes(routes!(get_machine, update_machine, delete_machine))
        .routes(routes!(pin_machine, unpin_machine))
}

/// Where a relayed machine was seen (DHCP option 82).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Relay {
    pub circuit_id: Option<String>,
    pub remote_id: Option<String>,
}

/// A machine as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MachineView {
    pub mac: String,
    /// `server` or `switch`.
    pub kind: String,
    /// The group it boots from.
    pub group: String,
    /// Whether an operator assigned that group (else the groups' label
    /// selectors, or `default`, decided it).
    pub group_assigned: bool,
    pub labels: BTreeMap<String, String>,
    pub hostname: Option<String>,
    pub uuid: Option<String>,
    pub serial: Option<String>,
    /// The client architecture its firmware announced (DHCP option 93):
    /// `bios`, `efi-x64`, `efi-arm64`, `http-x64`, …
    pub arch: Option<String>,
    /// Its CPU architecture, as images name it (`x86_64`, `arm64`, …):
    /// what iPXE or GRUB reported, else what `arch` implies.
    pub cpu: Option<String>,
    /// From its latest boot: `new` (never served an image), `booting`
    /// (served, not confirmed yet), `confirmed`, `failed`.
    pub state: MachineState,
    /// How it booted first: `pxe`, `ipxe`, `http`, `grub`, `onie`, `ztp`, …
    pub firmware: Option<String>,
    pub vendor_class: Option<String>,
    pub ip: Option<String>,
    pub relay: Relay,
    pub pin: Option<GenerationRef>,
    pub current: Option<GenerationRef>,
    pub last_good: Option<GenerationRef>,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// What its latest confirmed boot said of Secure Boot (the phone-home
    /// field `secureboot`): `null` when it said nothing.
    pub secure_boot: Option<bool>,
}

impl MachineView {
    /// The ETag of a machine covers what an update can change (kind, group,
    /// labels, hostname, pin), not what booting changes (last seen, current
    /// generation), so a reboot between a read and an update is no conflict.
    pub fn etag(&self) -> String {
        etag_of(&(
            &self.kind,
            &self.group,
            self.group_assigned,
            &self.labels,
            &self.hostname,
            &self.pin,
        ))
    }
}

/// Where a machine stands, from its latest boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MachineState {
    New,
    Booting,
    Confirmed,
    Failed,
}

impl MachineState {
    /// The state of the latest boot that makes a machine this (the inverse
    /// of [`MachineState::of_latest_boot`]; no boot at all reads as
    /// `nothing`).
    fn latest_boot(self) -> BootState {
        match self {
            Self::New => BootState::Nothing,
            Self::Booting => BootState::Served,
            Self::Confirmed => BootState::Confirmed,
            Self::Failed => BootState::Failed,
        }
    }

    /// From the state of the machine's latest boot row.
    fn of_latest_boot(state: Option<&str>) -> Self {
        match state.and_then(|s| s.parse().ok()) {
            Some(BootState::Served) => Self::Booting,
            Some(BootState::Confirmed) => Self::Confirmed,
            Some(BootState::Failed) => Self::Failed,
            Some(BootState::Nothing) | None => Self::New,
        }
    }
}

/// Rows read at a time when the handler filters them itself (selectors, a
/// CPU). Small under test, so pages cross chunk boundaries there.
const FILTER_CHUNK: usize = if cfg!(test) { 7 } else { 500 };

/// A page of machines, in MAC order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MachineList {
    pub machines: Vec<MachineView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next: Option<String>,
}

/// A machine with its latest boots.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MachineDetail {
    #[serde(flatten)]
    pub machine: MachineView,
    pub recent_boots: Vec<BootView>,
}

/// A stored machine as the API shows it; `loader_arch`: what iPXE or GRUB
/// said (memory only).
fn view_of(row: MachineRow, loader_arch: Option<Cpu>) -> MachineView {
    let firmware_cpu = || {
        let arch: Arch = row.arch.as_deref()?.parse().ok()?;
        Cpu::of_firmware(arch)
    };
    let cpu = loader_arch.or_else(firmware_cpu).map(|c| c.to_string());
    MachineView {
        cpu,
        state: MachineState::of_latest_boot(row.last_boot.as_deref()),
        mac: row.mac,
        kind: row.kind,
        group: row.group_name,
        group_assigned: row.group_assigned,
        labels: serde_json::from_str(&row.labels).unwrap_or_default(),
        hostname: row.hostname,
        uuid: row.uuid,
        serial: row.serial,
        arch: row.arch,
        firmware: row.firmware,
        vendor_class: row.vendor_class,
        ip: row.ip,
        relay: Relay {
            circuit_id: row.circuit_id,
            remote_id: row.remote_id,
        },
        pin: GenerationRef::pair(row.pin_stream, row.pin_generation),
        current: GenerationRef::pair(row.current_stream, row.current_generation),
        last_good: GenerationRef::pair(row.last_good_stream, row.last_good_generation),
        first_seen_ms: row.first_seen_ms,
        last_seen_ms: row.last_seen_ms,
        secure_boot: row.secure_boot,
    }
}

impl ApiState {
    fn view(&self, row: MachineRow) -> MachineView {
        let loader_arch = row
            .mac
            .parse()
            .ok()
            .and_then(|mac| self.inventory.machine(mac))
            .and_then(|m| m.arch);
        view_of(row, loader_arch)
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct MachineFilter {
    /// Label selector: `role=db,rack in (r1,r2)`, `!decommissioned`,
    /// `a=1 || b=2`.
    selector: Option<String>,
    /// In this group.
    group: Option<String>,
    /// Running (confirmed) a generation of this stream.
    stream: Option<String>,
    /// Running this generation number.
    generation: Option<i64>,
    state: Option<MachineState>,
    /// `server` or `switch`.
    kind: Option<String>,
    /// Firmware architecture (`efi-x64`, …) or CPU (`x86_64`, `arm64`).
    arch: Option<String>,
    /// Last seen at or after: milliseconds since the epoch, or RFC 3339.
    seen_since: Option<String>,
    /// Last seen before: milliseconds since the epoch, or RFC 3339.
    seen_before: Option<String>,
    /// Page size, 1-1000 (default 100).
    limit: Option<i64>,
    /// The `next` of the previous page.
    cursor: Option<String>,
}

/// Machines, in MAC order, filtered; a page at a time (`next` is the cursor
/// of the following page).
#[utoipa::path(get, path = "/api/v1/machines", tag = "machines",
    params(MachineFilter),
    responses((status = 200, body = MachineList)))]
async fn list_machines(
    _: Reader,
    State(s): State<ApiState>,
    ApiQuery(f): ApiQuery<MachineFilter>,
) -> ApiResult<Json<MachineList>> {
    let selector: Option<crate::boot::select::Selector> = match &f.selector {
        Some(text) => Some(
            text.parse()
                .map_err(|e: crate::boot::select::SelectorError| {
                    ApiError::bad("selector", e.to_string())
                })?,
        ),
        None => None,
    };
    let after = match &f.cursor {
        Some(c) => Some(
            c.parse::<MacAddr>()
                .map_err(|_| ApiError::bad("cursor", "not a cursor this API returned"))?,
        ),
        None => None,
    };
    let kind = match &f.kind {
        Some(kind) => Some(
            kind.parse::<crate::domain::MachineKind>()
                .map_err(|e| ApiError::bad("kind", e.to_string()))?,
        ),
        None => None,
    };
    let since = f
        .seen_since
        .as_deref()
        .map(|t| parse_time("seen_since", t))
        .transpose()?;
    let before = f
        .seen_before
        .as_deref()
        .map(|t| parse_time("seen_before", t))
        .transpose()?;
    let limit = f.limit.unwrap_or(100).clamp(1, MAX_PAGE) as usize;
    s.inventory.settle().await;
    // Rows come in MAC order, a chunk at a time, until a page (plus one, to
    // know there is a next) has matched: a page costs about its own size,
    // not the fleet's (fetching every row made one page take 1.2 s at p99
    // with 100,000 machines; see BENCHMARKS.md). Chunks, not one stream:
    // PostgreSQL computes and sends every row of a query whose reader
    // stops early.
    let mut q = MachineQuery {
        after,
        group: f.group.clone(),
        kind,
        stream: f.stream.clone(),
        generation: f.generation,
        seen_since_ms: since,
        seen_before_ms: before,
        last_boot: f.state.map(MachineState::latest_boot),
        // A firmware architecture is a column; a CPU (what iPXE or GRUB
        // said, in memory) is checked here, row by row.
        firmware_arch: f.arch.clone().filter(|a| a.parse::<Cpu>().is_err()),
    };
    let cpu_filter = f.arch.as_deref().is_some_and(|a| a.parse::<Cpu>().is_ok());
    let mut machines: Vec<MachineView> = Vec::with_capacity(limit + 1);
    'chunks: loop {
        let need = limit + 1 - machines.len();
        let (rows, more) =
            next_chunk(&s.store, &mut q, selector.as_ref(), need, cpu_filter).await?;
        for row in rows {
            let m = s.view(row);
            let arch_ok = f
                .arch
                .as_deref()
                .is_none_or(|a| m.arch.as_deref() == Some(a) || m.cpu.as_deref() == Some(a));
            if f.state.is_none_or(|st| m.state == st) && arch_ok {
                machines.push(m);
                if machines.len() > limit {
                    break 'chunks;
                }
            }
        }
        if !more || q.after.is_none() {
            break;
        }
    }
    let next = if machines.len() > limit {
        machines.truncate(limit);
        machines.last().map(|m| m.mac.clone())
    } else {
        None
    };
    Ok(Json(MachineList { machines, next }))
}

/// The next machines of a page after `q.after` (which it moves on), and
/// whether there may be more. `need`: how many more the page wants;
/// `more_filters`: the caller drops some rows itself (a CPU), so a
/// larger chunk is read.
///
/// With a label selector, only MACs and labels are read a chunk at a time
/// and whole rows only for the machines that match: a selective filter
/// costs its matches, not the rows it passes over.
async fn next_chunk(
    store: &crate::store::Store,
    q: &mut MachineQuery,
    selector: Option<&crate::boot::select::Selector>,
    need: usize,
    more_filters: bool,
) -> ApiResult<(Vec<crate::store::machines::MachineRow>, bool)> {
    let chunk = if selector.is_some() || more_filters {
        FILTER_CHUNK.max(need)
    } else {
        need
    };
    let Some(selector) = selector else {
        let rows = store.machine_rows(q, chunk as i64).await?;
        let more = rows.len() == chunk;
        q.after = rows.last().and_then(|r| r.mac.parse().ok());
        return Ok((rows, more && q.after.is_some()));
    };
    let labelled = store.machine_labels(q, chunk as i64).await?;
    let mut more = labelled.len() == chunk;
    q.after = labelled.last().and_then(|(mac, _)| mac.parse().ok());
    let mut wanted: Vec<MacAddr> = Vec::new();
    for (mac, labels) in &labelled {
        let labels: BTreeMap<String, String> = serde_json::from_str(labels).unwrap_or_default();
        if selector.matches(&labels).is_none() {
            continue;
        }
        let Ok(mac) = mac.parse::<MacAddr>() else {
            continue;
        };
        wanted.push(mac);
        // Enough for the page (unless the caller drops some): resume
        // right after this one next time.
        if wanted.len() == need && !more_filters {
            q.after = Some(mac);
            more = true;
            break;
        }
    }
    let rows = store.machine_rows_of(&wanted).await?;
    Ok((rows, more && q.after.is_some()))
}

/// Loads one machine's row (after the ledger has settled).
async fn machine_row(s: &ApiState, mac: MacAddr) -> ApiResult<MachineView> {
    s.inventory.settle().await;
    let row = s.store.machine_row(mac).await?;
    row.map(|r| s.view(r))
        .ok_or_else(|| InventoryError::NoSuchMachine(mac).into())
}

/// One machine, with its ten latest boots and their steps.
#[utoipa::path(get, path = "/api/v1/machines/{mac}", tag = "machines",
    params(("mac" = String, Path, description = "MAC address, `:` or `-` separated")),
    responses((status = 200, body = MachineDetail, headers(("ETag" = String)))))]
async fn get_machine(
    _: Reader,
    State(s): State<ApiState>,
    ApiPath(mac): ApiPath<String>,
) -> ApiResult<Tagged<MachineDetail>> {
    let mac = parse_mac(&mac)?;
    let machine = machine_row(&s, mac).await?;
    let tag = machine.etag();
    Ok(Tagged::with_tag(
        tag,
        MachineDetail {
            machine,
            recent_boots: boots_of(&s.store, Some(mac), &BootFilter::latest(10), true).await?,
        },
    ))
}

/// `Some(value)` for a field that is present, even as `null` (which is
/// `Some(None)`): lets an update tell "remove" from "leave alone".
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// An update of a machine; absent fields stay as they are.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MachinePatch {
    /// A DNS name (`null` removes it).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub hostname: Option<Option<String>>,
    /// Merged into the labels (JSON merge patch): a string sets a label,
    /// `null` removes it.
    #[schema(value_type = Option<BTreeMap<String, Option<String>>>)]
    pub labels: Option<BTreeMap<String, Option<String>>>,
    /// Assigns the machine to this group (which must exist); it beats
    /// every group's selector. `null` removes the assignment: the
    /// selectors decide again.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub group: Option<Option<String>>,
    /// Pins it to a generation (`null` removes the pin).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<GenerationRef>)]
    pub pin: Option<Option<GenerationRef>>,
    /// `server` or `switch`.
    pub kind: Option<String>,
}

/// Letters, digits and `-_./:`, 1-63 of them: what selectors can name
/// (the same check `ironboot apply` makes).
fn valid_label_part(field: &'static str, text: &str) -> ApiResult<()> {
    crate::domain::check_label_part(text).map_err(|e| ApiError::bad(field, e))
}

/// A DNS name: dot-separated labels of letters, digits and inner hyphens.
fn valid_hostname(name: &str) -> ApiResult<()> {
    crate::domain::check_hostname(name).map_err(|e| ApiError::bad("hostname", e))
}

impl MachinePatch {
    /// Checks the values and turns them into a change of `current`.
    fn change(self, current: &MachineView) -> ApiResult<crate::inventory::MachineChange> {
        if let Some(Some(h)) = &self.hostname {
            valid_hostname(h)?;
        }
        let labels = match self.labels {
            Some(patch) => {
                let mut labels = current.labels.clone();
                for (k, v) in patch {
                    valid_label_part("labels", &k)?;
                    match v {
                        Some(v) => {
                            valid_label_part("labels", &v)?;
                            labels.insert(k, v);
                        }
                        None => {
                            labels.remove(&k);
                        }
                    }
                }
                Some(labels)
            }
            None => None,
        };
        if let Some(Some(g)) = &self.group {
            valid_name("group", g)?;
        }
        let kind = match &self.kind {
            Some(k) => Some(
                k.parse::<crate::domain::MachineKind>()
                    .map_err(|e| ApiError::bad("kind", e.to_string()))?,
            ),
            None => None,
        };
        Ok(crate::inventory::MachineChange {
            hostname: self.hostname,
            labels,
            group: self.group,
            pin: self.pin.map(|p| p.map(|p| p.id())),
            kind,
        })
    }
}

/// Changes a machine's hostname, labels, group, pin or kind, all or nothing.
/// With `If-Match`, only if the machine is still as last read.
#[utoipa::path(patch, path = "/api/v1/machines/{mac}", tag = "machines",
    params(("mac" = String, Path, description = "MAC address"),
        ("If-Match" = Option<String>, Header, description = "The ETag as last read")),
    request_body = MachinePatch,
    responses((status = 200, body = MachineView, headers(("ETag" = String)))))]
async fn update_machine(
    _: Admin,
    State(s): State<ApiState>,
    ApiPath(mac): ApiPath<String>,
    if_match: IfMatch,
    ApiJson(patch): ApiJson<MachinePatch>,
) -> ApiResult<Tagged<MachineView>> {
    let mac = parse_mac(&mac)?;
    let _edit = s.edits.lock().await;
    let current = machine_row(&s, mac).await?;
    if_match.check(&current.etag())?;
    let change = patch.change(&current)?;
    s.inventory.update_machine(mac, change).await?;
    let now = machine_row(&s, mac).await?;
    Ok(Tagged::with_tag(now.etag(), now))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct DeleteOptions {
    /// Also delete its boots and events (default: keep its history).
    purge: Option<bool>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MachineDeleted {
    pub mac: String,
    pub purged: bool,
    /// Boot rows deleted (0 unless purged).
    pub boots_deleted: u64,
    /// Events deleted (0 unless purged).
    pub events_deleted: u64,
}

/// Forgets a machine; its boot history stays unless `purge=true`. If it
/// boots again it comes back as a new machine.
#[utoipa::path(delete, path = "/api/v1/machines/{mac}", tag = "machines",
    params(("mac" = String, Path, description = "MAC address"),
        ("If-Match" = Option<String>, Header, description = "The ETag as last read"),
        DeleteOptions),
    responses((status = 200, body = MachineDeleted)))]
async fn delete_machine(
    _: Admin,
    State(s): State<ApiState>,
    ApiPath(mac): ApiPath<String>,
    ApiQuery(opts): ApiQuery<DeleteOptions>,
    if_match: IfMatch,
) -> ApiResult<Json<MachineDeleted>> {
    let mac = parse_mac(&mac)?;
    let purge = opts.purge.unwrap_or(false);
    let _edit = s.edits.lock().await;
    let current = machine_row(&s, mac).await?;
    if_match.check(&current.etag())?;
    let deleted = s.inventory.delete_machine(mac, purge).await?;
    Ok(Json(MachineDeleted {
        mac: mac.to_string(),
        purged: purge,
        boots_deleted: deleted.boots,
        events_deleted: deleted.events,
    }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PinView {
    pub mac: String,
    pub pin: Option<GenerationRef>,
}

/// Pins a machine to a generation: it beats the group's pointer.
#[utoipa::path(put, path = "/api/v1/machines/{mac}/pin", tag = "machines",
    params(("mac" = String, Path, description = "MAC address")),
    request_body = GenerationRef,
    responses((status = 200, body = PinView)))]
async fn pin_machine(
    _: Admin,
    State(s): State<ApiState>,
    ApiPath(mac): ApiPath<String>,
    ApiJson(body): ApiJson<GenerationRef>,
) -> ApiResult<Json<PinView>> {
    let mac = parse_mac(&mac)?;
    s.inventory.set_pin(mac, Some(body.id())).await?;
    Ok(Json(PinView {
        mac: mac.to_string(),
        pin: Some(body),
    }))
}

/// Removes a machine's pin.
#[utoipa::path(delete, path = "/api/v1/machines/{mac}/pin", tag = "machines",
    params(("mac" = String, Path, description = "MAC address")),
    responses((status = 200, body = PinView)))]
async fn unpin_machine(
    _: Admin,
    State(s): State<ApiState>,
    ApiPath(mac): ApiPath<String>,
) -> ApiResult<Json<PinView>> {
    let mac = parse_mac(&mac)?;
    s.inventory.set_pin(mac, None).await?;
    Ok(Json(PinView {
        mac: mac.to_string(),
        pin: None,
    }))
}

#[cfg(test)]
#[path = "machines_tests.rs"]
mod tests;
