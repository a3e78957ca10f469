//! Rollouts (start, list, status, pause, resume, abort) and the watchdog
//! (degraded machines, a machine's health, clearing its mark).
//!
//! A command the rollout's state forbids (a second rollout on a group,
//! resuming a finished one) is a 409 with `code: "conflict"` and a message
//! that says why and what to do.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::*;
use crate::inventory::{RolloutCommandError, StartRollout};
use crate::rollout::engine::{Entry, FleetError};
use crate::rollout::watchdog::Health;
use crate::rollout::{Canary, Require, RolloutError, State as RState, Strategy};

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/rollouts", get(list).post(start))
        .route("/api/v1/rollouts/{id}", get(status))
        .route("/api/v1/rollouts/{id}/pause", post(pause))
        .route("/api/v1/rollouts/{id}/resume", post(resume))
        .route("/api/v1/rollouts/{id}/abort", post(abort))
        .route("/api/v1/watchdog", get(watchdog))
        .route("/api/v1/machines/{mac}/health", get(machine_health))
        .route("/api/v1/machines/{mac}/degraded", delete(clear_degraded))
}

/// A start request. `canary`: a count (`1`), a share (`"10%"`) or a list of
/// MACs; `steps`: cumulative shares (`["50%", "100%"]` or `[50, 100]`);
/// `timeout`: how long each wave has to confirm (`"10m"`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    group: String,
    stream: String,
    to: i64,
    #[serde(default)]
    strategy: Option<String>,
    #[serde(default)]
    canary: Option<Value>,
    #[serde(default)]
    steps: Option<Value>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    require: Option<String>,
    #[serde(default)]
    rollback: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AbortBody {
    #[serde(default)]
    reason: Option<String>,
}

fn parse_canary(v: &Value) -> ApiResult<Canary> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .map(|n| Canary::Count(n as usize))
            .ok_or_else(|| ApiError::bad("canary", "a count must be a whole number")),
        Value::String(s) => s.parse().map_err(|e: String| ApiError::bad("canary", e)),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .and_then(|m| m.parse::<MacAddr>().ok())
                    .ok_or_else(|| ApiError::bad("canary", format!("{i} is not a MAC address")))
            })
            .collect::<ApiResult<Vec<_>>>()
            .map(Canary::Machines),
        other => Err(ApiError::bad(
            "canary",
            format!("{other}: expected 1, \"10%\" or a list of MACs"),
        )),
    }
}

fn parse_steps(v: &Value) -> ApiResult<Vec<u8>> {
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    };
    crate::rollout::parse_steps(&text).map_err(|e| ApiError::bad("steps", e))
}

impl StartBody {
    fn into_request(self) -> ApiResult<StartRollout> {
        valid_name("group", &self.group)?;
        valid_name("stream", &self.stream)?;
        let strategy = match self.strategy.as_deref().unwrap_or("canary") {
            "canary" => Strategy::Canary {
                canary: match &self.canary {
                    Some(v) => parse_canary(v)?,
                    None => Canary::Count(1),
                },
                steps: match &self.steps {
                    Some(v) => parse_steps(v)?,
                    None => Vec::new(),
                },
            },
            "blue_green" | "blue-green" => {
                if self.canary.is_some() || self.steps.is_some() {
                    return Err(ApiError::bad(
                        "strategy",
                        "blue_green takes no canary or steps (the idle half goes first)",
                    ));
                }
                Strategy::BlueGreen
            }
            other => {
                return Err(ApiError::bad(
                    "strategy",
                    format!("{other:?}: expected canary or blue_green"),
                ))
            }
        };
        let timeout = self.timeout.as_deref().unwrap_or("10m");
        let timeout = humantime::parse_duration(timeout.trim()).map_err(|e| {
            ApiError::bad(
                "timeout",
                format!("{timeout:?} is not a duration like \"10m\": {e}"),
            )
        })?;
        let require = self
            .require
            .as_deref()
            .map(|r| r.parse::<Require>())
            .transpose()
            .map_err(|e| ApiError::bad("require", e))?;
        Ok(StartRollout {
            group: self.group,
            to: GenerationId::new(self.stream, self.to),
            strategy,
            timeout_ms: timeout.as_millis() as i64,
            require,
            rollback: self.rollback.unwrap_or(true),
        })
    }
}

impl From<RolloutCommandError> for ApiError {
    fn from(e: RolloutCommandError) -> Self {
        let conflict = |m: String| ApiError::new(StatusCode::CONFLICT, "conflict", m);
        match e {
            RolloutCommandError::Inventory(i) => i.into(),
            RolloutCommandError::NoSuchGroup(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "no_such_group", e.to_string())
            }
            RolloutCommandError::NoStartingPoint(m) => conflict(m),
            RolloutCommandError::Fleet(f) => match &f {
                FleetError::NoSuchRollout(_) => {
                    ApiError::new(StatusCode::NOT_FOUND, "no_such_rollout", f.to_string())
                }
                FleetError::GroupBusy { .. }
                | FleetError::Refused { .. }
                | FleetError::NotDegraded(_)
                | FleetError::Invalid(RolloutError::NoMembers) => conflict(f.to_string()),
                FleetError::Invalid(RolloutError::NotAMember(_)) => {
                    ApiError::bad("canary", f.to_string())
                }
                FleetError::Invalid(RolloutError::Invalid { field, message }) => {
                    ApiError::bad(field, message.clone())
                }
                FleetError::Invalid(other) => conflict(other.to_string()),
            },
        }
    }
}

/// Where each machine of a wave is.
fn machine_status(e: &Entry, mac: &MacAddr) -> Value {
    let r = &e.rollout;
    let sent_back = matches!(r.state, RState::RolledBack { .. } | RState::Aborted { .. });
    match r.moved.get(mac) {
        None => json!({ "mac": mac, "status": "pending" }),
        Some(m) => {
            let status = if m.failed.is_some() {
                "failed"
            } else if m.confirmed_ms.is_some() {
                "confirmed"
            } else {
                "waiting"
            };
            json!({
                "mac": mac,
                "status": status,
                "moved_ms": m.moved_ms,
                "confirmed_ms": m.confirmed_ms,
                "failed": m.failed,
                "rolled_back": sent_back,
            })
        }
    }
}

/// A rollout as the API shows it: every wave, every machine, the reason.
pub(crate) fn view(e: &Entry) -> Value {
    let r = &e.rollout;
    let waves: Vec<Value> = r
        .waves
        .iter()
        .enumerate()
        .map(|(i, machines)| {
            let gate = match (i.cmp(&r.wave), &r.state) {
                (std::cmp::Ordering::Less, _) | (_, RState::Succeeded) => "passed",
                (std::cmp::Ordering::Greater, _) => "pending",
                (_, RState::Running) => "open",
                (_, RState::Paused) => "paused",
                (_, RState::Aborted { .. }) => "aborted",
                (_, RState::RolledBack { .. } | RState::Stopped { .. }) => "failed",
            };
            json!({
                "wave": i,
                "gate": gate,
                "machines": machines.iter().map(|m| machine_status(e, m)).collect::<Vec<_>>(),
            })
        })
        .collect();
    let count = |s: &str| {
        waves
            .iter()
            .flat_map(|w| w["machines"].as_array().cloned().unwrap_or_default())
            .filter(|m| m["status"] == s)
            .count()
    };
    let strategy = match &r.spec.strategy {
        Strategy::BlueGreen => json!({ "kind": "blue_green" }),
        Strategy::Canary { canary, steps } => {
            json!({ "kind": "canary", "canary": canary, "steps": steps })
        }
    };
    json!({
        "id": e.id,
        "group": r.spec.group,
        "slot": e.slot,
        "state": e.state_key(),
        "reason": e.reason(),
        "from": { "stream": r.spec.from.stream, "generation": r.spec.from.number },
        "to": { "stream": r.spec.to.stream, "generation": r.spec.to.number },
        "strategy": strategy,
        "timeout_s": r.spec.timeout_ms / 1000,
        "require": r.spec.require.as_ref().map(|q| format!("{}={}", q.key, q.value)),
        "rollback": r.spec.rollback,
        "wave": r.wave,
        "wave_started_ms": r.wave_started_ms,
        "waves": waves,
        "counts": {
            "machines": r.waves.iter().map(Vec::len).sum::<usize>(),
            "pending": count("pending"),
            "waiting": count("waiting"),
            "confirmed": count("confirmed"),
            "failed": count("failed"),
        },
        "created_ms": e.created_ms,
        "created_by": e.created_by,
        "updated_ms": e.updated_ms,
    })
}

async fn list(_: Reader, State(s): State<ApiState>) -> Json<Value> {
    let mut all = s.inventory.rollouts();
    all.reverse();
    Json(json!({ "rollouts": all.iter().map(view).collect::<Vec<_>>() }))
}

fn parse_id(text: &str) -> ApiResult<i64> {
    text.parse()
        .map_err(|_| ApiError::bad("id", format!("{text:?} is not a rollout id")))
}

fn found(s: &ApiState, id: i64) -> ApiResult<Entry> {
    s.inventory.rollout(id).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_such_rollout",
            format!("no rollout {id}"),
        )
    })
}

async fn status(
    _: Reader,
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(view(&found(&s, parse_id(&id)?)?)))
}

async fn start(
    Admin(p): Admin,
    State(s): State<ApiState>,
    ApiJson(body): ApiJson<StartBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let req = body.into_request()?;
    let e = s.inventory.start_rollout(req, Some(p.name)).await?;
    Ok((StatusCode::CREATED, Json(view(&e))))
}

async fn pause(
    Admin(p): Admin,
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let e = s
        .inventory
        .pause_rollout(parse_id(&id)?, Some(&p.name))
        .await?;
    Ok(Json(view(&e)))
}

async fn resume(
    Admin(p): Admin,
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let e = s
        .inventory
        .resume_rollout(parse_id(&id)?, Some(&p.name))
        .await?;
    Ok(Json(view(&e)))
}

async fn abort(
    Admin(p): Admin,
    State(s): State<ApiState>,
    Path(id): Path<String>,
    body: String,
) -> ApiResult<Json<Value>> {
    // The body is optional: `{"reason": "…"}`.
    let body: AbortBody = if body.trim().is_empty() {
        AbortBody::default()
    } else {
        serde_json::from_str(&body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", e.to_string()))?
    };
    let reason = body
        .reason
        .unwrap_or_else(|| format!("aborted by {}", p.name));
    let e = s
        .inventory
        .abort_rollout(parse_id(&id)?, &reason, Some(&p.name))
        .await?;
    Ok(Json(view(&e)))
}

fn health_view(mac: MacAddr, h: &Health) -> Value {
    json!({
        "mac": mac,
        "degraded": h.degraded.as_ref().map(|d| json!({
            "generation": { "stream": d.generation.stream, "generation": d.generation.number },
            "since_ms": d.since_ms,
            "reason": d.reason,
        })),
        "failing": h.failing.as_ref().map(|(g, n)| json!({
            "generation": { "stream": g.stream, "generation": g.number },
            "failures": n,
        })),
        "open_boot": h.open.as_ref().map(|o| json!({
            "generation": { "stream": o.generation.stream, "generation": o.generation.number },
            "served_ms": o.served_ms,
            "boot": o.boot_id,
        })),
    })
}

async fn watchdog(_: Reader, State(s): State<ApiState>) -> Json<Value> {
    let policy = s.inventory.watchdog_policy();
    let degraded: Vec<Value> = s
        .inventory
        .degraded()
        .iter()
        .map(|(m, h)| health_view(*m, h))
        .collect();
    Json(json!({
        "policy": { "max_failures": policy.max_failures, "confirm_timeout_s": policy.confirm_timeout_ms / 1000 },
        "degraded": degraded,
    }))
}

async fn machine_health(
    _: Reader,
    State(s): State<ApiState>,
    Path(mac): Path<String>,
) -> ApiResult<Json<Value>> {
    let mac = parse_mac(&mac)?;
    Ok(Json(health_view(mac, &s.inventory.health(mac))))
}

async fn clear_degraded(
    Admin(p): Admin,
    State(s): State<ApiState>,
    Path(mac): Path<String>,
) -> ApiResult<Json<Value>> {
    let mac = parse_mac(&mac)?;
    let h = s.inventory.clear_degraded(mac, Some(&p.name)).await?;
    Ok(Json(health_view(mac, &h)))
}
