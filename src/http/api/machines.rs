//! Machines: list, show (with recent boots and their steps), boot history, pins.

use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::*;

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_machines))
        .routes(routes!(get_machine))
        .routes(routes!(machine_boots))
        .routes(routes!(pin_machine, unpin_machine))
}

/// Where a relayed machine was seen (DHCP option 82).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Relay {
    pub circuit_id: Option<String>,
    pub remote_id: Option<String>,
}

/// A machine as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MachineView {
    pub mac: String,
    /// `server` or `switch`.
    pub kind: String,
    pub group: String,
    pub labels: BTreeMap<String, String>,
    pub hostname: Option<String>,
    pub uuid: Option<String>,
    pub serial: Option<String>,
    /// The client architecture its firmware announced (DHCP option 93):
    /// `bios`, `efi-x64`, `efi-arm64`, `http-x64`, …
    pub arch: Option<String>,
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
}

impl MachineView {
    /// The ETag of a machine covers what an update can change (kind, group,
    /// labels, hostname, pin), not what booting changes (last seen, current
    /// generation), so a reboot between a read and an update is no conflict.
    pub fn etag(&self) -> String {
        etag_of(&(
            &self.kind,
            &self.group,
            &self.labels,
            &self.hostname,
            &self.pin,
        ))
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MachineList {
    pub machines: Vec<MachineView>,
}

/// A machine with its latest boots.
#[derive(Debug, Serialize, ToSchema)]
pub struct MachineDetail {
    #[serde(flatten)]
    pub machine: MachineView,
    pub recent_boots: Vec<BootView>,
}

#[derive(Debug, sqlx::FromRow)]
struct MachineRow {
    mac: String,
    kind: String,
    group_name: String,
    labels: String,
    hostname: Option<String>,
    uuid: Option<String>,
    serial: Option<String>,
    arch: Option<String>,
    firmware: Option<String>,
    vendor_class: Option<String>,
    ip: Option<String>,
    circuit_id: Option<String>,
    remote_id: Option<String>,
    pin_stream: Option<String>,
    pin_generation: Option<i64>,
    current_stream: Option<String>,
    current_generation: Option<i64>,
    last_good_stream: Option<String>,
    last_good_generation: Option<i64>,
    first_seen_ms: i64,
    last_seen_ms: i64,
}

impl MachineRow {
    fn into_view(self) -> MachineView {
        MachineView {
            mac: self.mac,
            kind: self.kind,
            group: self.group_name,
            labels: serde_json::from_str(&self.labels).unwrap_or_default(),
            hostname: self.hostname,
            uuid: self.uuid,
            serial: self.serial,
            arch: self.arch,
            firmware: self.firmware,
            vendor_class: self.vendor_class,
            ip: self.ip,
            relay: Relay {
                circuit_id: self.circuit_id,
                remote_id: self.remote_id,
            },
            pin: GenerationRef::pair(self.pin_stream, self.pin_generation),
            current: GenerationRef::pair(self.current_stream, self.current_generation),
            last_good: GenerationRef::pair(self.last_good_stream, self.last_good_generation),
            first_seen_ms: self.first_seen_ms,
            last_seen_ms: self.last_seen_ms,
        }
    }
}

const MACHINE_COLUMNS: &str =
    "mac, kind, group_name, labels, hostname, uuid, serial, arch, firmware, vendor_class, ip,
     circuit_id, remote_id, pin_stream, pin_generation, current_stream, current_generation,
     last_good_stream, last_good_generation, first_seen_ms, last_seen_ms";

/// One step of a boot (a ledger event).
#[derive(Debug, Serialize, ToSchema)]
pub struct StepView {
    pub at_ms: i64,
    pub step: String,
    pub bytes: Option<i64>,
    /// Free-form detail the step recorded (file name, bootfile, reason).
    pub detail: Value,
}

/// One boot attempt and its steps.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct BootView {
    pub id: i64,
    pub stream: Option<String>,
    pub generation: Option<i64>,
    /// The image digest served.
    pub image: Option<String>,
    /// `served`, `confirmed`, `failed` or `nothing`.
    pub state: String,
    pub reason: Option<String>,
    pub started_ms: i64,
    pub confirmed_ms: Option<i64>,
    #[sqlx(skip)]
    pub steps: Vec<StepView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MachineBoots {
    pub mac: String,
    pub boots: Vec<BootView>,
}

/// Every known machine.
#[utoipa::path(get, path = "/api/v1/machines", tag = "machines",
    responses((status = 200, body = MachineList)))]
async fn list_machines(_: Reader, State(s): State<ApiState>) -> ApiResult<Json<MachineList>> {
    s.inventory.settle().await;
    let rows: Vec<MachineRow> = sqlx::query_as(&format!(
        "SELECT {MACHINE_COLUMNS} FROM machines ORDER BY mac"
    ))
    .fetch_all(s.store.pool())
    .await?;
    Ok(Json(MachineList {
        machines: rows.into_iter().map(MachineRow::into_view).collect(),
    }))
}

async fn boots_of(store: &Store, mac: MacAddr, limit: i64) -> ApiResult<Vec<BootView>> {
    let mut boots: Vec<BootView> = sqlx::query_as(
        "SELECT id, stream, generation, image, state, reason, started_ms, confirmed_ms
         FROM boots WHERE mac = ? ORDER BY id DESC LIMIT ?",
    )
    .bind(mac.to_string())
    .bind(limit)
    .fetch_all(store.pool())
    .await?;
    for b in &mut boots {
        let steps: Vec<(i64, String, String, Option<i64>)> = sqlx::query_as(
            "SELECT at_ms, step, detail, bytes FROM events WHERE boot_id = ? ORDER BY id",
        )
        .bind(b.id)
        .fetch_all(store.pool())
        .await?;
        b.steps = steps
            .into_iter()
            .map(|(at_ms, step, detail, bytes)| StepView {
                at_ms,
                step,
                bytes,
                detail: serde_json::from_str(&detail).unwrap_or(Value::Null),
            })
            .collect();
    }
    Ok(boots)
}

/// Loads one machine's row (after the ledger has settled).
async fn machine_row(s: &ApiState, mac: MacAddr) -> ApiResult<MachineView> {
    s.inventory.settle().await;
    let row: Option<MachineRow> = sqlx::query_as(&format!(
        "SELECT {MACHINE_COLUMNS} FROM machines WHERE mac = ?"
    ))
    .bind(mac.to_string())
    .fetch_optional(s.store.pool())
    .await?;
    row.map(MachineRow::into_view)
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
            recent_boots: boots_of(&s.store, mac, 10).await?,
        },
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct Paging {
    /// At most this many (1-1000, default 100).
    limit: Option<i64>,
}

/// A machine's boots, newest first, with their steps.
#[utoipa::path(get, path = "/api/v1/machines/{mac}/boots", tag = "machines",
    params(("mac" = String, Path, description = "MAC address"), Paging),
    responses((status = 200, body = MachineBoots)))]
async fn machine_boots(
    _: Reader,
    State(s): State<ApiState>,
    ApiPath(mac): ApiPath<String>,
    ApiQuery(p): ApiQuery<Paging>,
) -> ApiResult<Json<MachineBoots>> {
    let mac = parse_mac(&mac)?;
    s.inventory.settle().await;
    let limit = p.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(MachineBoots {
        mac: mac.to_string(),
        boots: boots_of(&s.store, mac, limit).await?,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
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
