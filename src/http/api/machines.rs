//! Machines: list, show (with recent boots and their steps), boot history, pins.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::*;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/machines", get(list_machines))
        .route("/api/v1/machines/{mac}", get(get_machine))
        .route("/api/v1/machines/{mac}/boots", get(machine_boots))
        .route(
            "/api/v1/machines/{mac}/pin",
            put(pin_machine).delete(unpin_machine),
        )
}

#[derive(Debug, Serialize, sqlx::FromRow)]
struct MachineRow {
    mac: String,
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

fn gen_json(stream: &Option<String>, number: Option<i64>) -> Value {
    match (stream, number) {
        (Some(s), Some(n)) => json!({ "stream": s, "generation": n }),
        _ => Value::Null,
    }
}

impl MachineRow {
    fn to_json(&self) -> Value {
        json!({
            "mac": self.mac,
            "group": self.group_name,
            "labels": serde_json::from_str::<Value>(&self.labels).unwrap_or(json!({})),
            "hostname": self.hostname,
            "uuid": self.uuid,
            "serial": self.serial,
            "arch": self.arch,
            "firmware": self.firmware,
            "vendor_class": self.vendor_class,
            "ip": self.ip,
            "relay": { "circuit_id": self.circuit_id, "remote_id": self.remote_id },
            "pin": gen_json(&self.pin_stream, self.pin_generation),
            "current": gen_json(&self.current_stream, self.current_generation),
            "last_good": gen_json(&self.last_good_stream, self.last_good_generation),
            "first_seen_ms": self.first_seen_ms,
            "last_seen_ms": self.last_seen_ms,
        })
    }
}

const MACHINE_COLUMNS: &str =
    "mac, group_name, labels, hostname, uuid, serial, arch, firmware, vendor_class, ip,
     circuit_id, remote_id, pin_stream, pin_generation, current_stream, current_generation,
     last_good_stream, last_good_generation, first_seen_ms, last_seen_ms";

#[derive(Debug, Serialize, sqlx::FromRow)]
struct BootRow {
    id: i64,
    stream: Option<String>,
    generation: Option<i64>,
    image: Option<String>,
    state: String,
    reason: Option<String>,
    started_ms: i64,
    confirmed_ms: Option<i64>,
}

async fn list_machines(_: Reader, State(s): State<ApiState>) -> ApiResult<Json<Value>> {
    s.inventory.settle().await;
    let rows: Vec<MachineRow> = sqlx::query_as(&format!(
        "SELECT {MACHINE_COLUMNS} FROM machines ORDER BY mac"
    ))
    .fetch_all(s.store.pool())
    .await?;
    Ok(Json(
        json!({ "machines": rows.iter().map(MachineRow::to_json).collect::<Vec<_>>() }),
    ))
}

async fn boots_of(store: &Store, mac: MacAddr, limit: i64) -> ApiResult<Vec<Value>> {
    let boots: Vec<BootRow> = sqlx::query_as(
        "SELECT id, stream, generation, image, state, reason, started_ms, confirmed_ms
         FROM boots WHERE mac = ? ORDER BY id DESC LIMIT ?",
    )
    .bind(mac.to_string())
    .bind(limit)
    .fetch_all(store.pool())
    .await?;
    let mut out = Vec::new();
    for b in boots {
        let steps: Vec<(i64, String, String, Option<i64>)> = sqlx::query_as(
            "SELECT at_ms, step, detail, bytes FROM events WHERE boot_id = ? ORDER BY id",
        )
        .bind(b.id)
        .fetch_all(store.pool())
        .await?;
        let steps: Vec<Value> = steps
            .into_iter()
            .map(|(at, step, detail, bytes)| {
                json!({ "at_ms": at, "step": step, "bytes": bytes, "detail": serde_json::from_str::<Value>(&detail).unwrap_or(Value::Null) })
            })
            .collect();
        let mut v = serde_json::to_value(&b).expect("plain struct");
        v["steps"] = Value::Array(steps);
        out.push(v);
    }
    Ok(out)
}

async fn get_machine(
    _: Reader,
    State(s): State<ApiState>,
    Path(mac): Path<String>,
) -> ApiResult<Json<Value>> {
    let mac = parse_mac(&mac)?;
    s.inventory.settle().await;
    let row: Option<MachineRow> = sqlx::query_as(&format!(
        "SELECT {MACHINE_COLUMNS} FROM machines WHERE mac = ?"
    ))
    .bind(mac.to_string())
    .fetch_optional(s.store.pool())
    .await?;
    let row = row.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_such_machine",
            format!("machine {mac} is not known"),
        )
    })?;
    let mut v = row.to_json();
    v["recent_boots"] = Value::Array(boots_of(&s.store, mac, 10).await?);
    Ok(Json(v))
}

#[derive(Deserialize)]
struct Paging {
    limit: Option<i64>,
}

async fn machine_boots(
    _: Reader,
    State(s): State<ApiState>,
    Path(mac): Path<String>,
    Query(p): Query<Paging>,
) -> ApiResult<Json<Value>> {
    let mac = parse_mac(&mac)?;
    s.inventory.settle().await;
    let limit = p.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(
        json!({ "mac": mac.to_string(), "boots": boots_of(&s.store, mac, limit).await? }),
    ))
}

async fn pin_machine(
    _: Admin,
    State(s): State<ApiState>,
    Path(mac): Path<String>,
    ApiJson(body): ApiJson<GenerationRef>,
) -> ApiResult<Json<Value>> {
    let mac = parse_mac(&mac)?;
    let id = GenerationId::new(body.stream, body.generation);
    s.inventory.set_pin(mac, Some(id.clone())).await?;
    Ok(Json(
        json!({ "mac": mac.to_string(), "pin": { "stream": id.stream, "generation": id.number } }),
    ))
}

async fn unpin_machine(
    _: Admin,
    State(s): State<ApiState>,
    Path(mac): Path<String>,
) -> ApiResult<Json<Value>> {
    let mac = parse_mac(&mac)?;
    s.inventory.set_pin(mac, None).await?;
    Ok(Json(json!({ "mac": mac.to_string(), "pin": null })))
}
