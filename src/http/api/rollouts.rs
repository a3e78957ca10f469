//! Rollouts (start, list, status, pause, resume, abort) and the watchdog
//! (degraded machines, a machine's health, clearing its mark).
//!
//! A command the rollout's state forbids (a second rollout on a group,
//! resuming a finished one) is a 409 with `code: "conflict"` and a message
//! that says why and what to do.

use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::*;
use crate::inventory::{RolloutCommandError, StartRollout};
use crate::rollout::engine::{Entry, FleetError};
use crate::rollout::watchdog::Health;
use crate::rollout::{Canary, Require, RolloutError, State as RState, Strategy};

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list, start))
        .routes(routes!(status))
        .routes(routes!(pause))
        .routes(routes!(resume))
        .routes(routes!(abort))
        .routes(routes!(watchdog))
        .routes(routes!(machine_health))
        .routes(routes!(clear_degraded))
}

/// A start request. `canary`: a count (`1`), a share (`"10%"`) or a list of
/// MACs; `steps`: cumulative shares (`["50%", "100%"]` or `[50, 100]`);
/// `timeout`: how long each wave has to confirm (`"10m"`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartBody {
    /// The group to move.
    group: String,
    /// The stream of the generation to move it to.
    stream: String,
    /// The generation number to move it to (B).
    to: i64,
    /// `canary` (the default) or `blue_green`.
    #[serde(default)]
    strategy: Option<String>,
    /// Canary only: a count (`1`, the default), a share (`"10%"`) or a list
    /// of MACs.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    canary: Option<Value>,
    /// Canary only: cumulative shares after the canary, `["50%", "100%"]`
    /// or `[50, 100]` or `"50%,100%"`; the rest follows in a last wave.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    steps: Option<Value>,
    /// How long each wave has to confirm (`"10m"`, the default).
    #[serde(default)]
    timeout: Option<String>,
    /// `key=value` a confirmation's phone-home payload must carry to count.
    #[serde(default)]
    require: Option<String>,
    /// Roll moved machines back to A when a gate fails (default true);
    /// `false` stops the rollout where it is.
    #[serde(default)]
    rollback: Option<bool>,
    /// A moved machine whose BMC cannot reboot it (after retries): `wait`
    /// (the default: the wave waits until its timeout) or `fail` (the gate
    /// fails at once).
    #[serde(default)]
    on_bmc_failure: Option<crate::rollout::OnBmcFailure>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AbortBody {
    /// Why (recorded as the rollout's reason).
    #[serde(default)]
    reason: Option<String>,
}

/// One machine of a wave.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MachineProgress {
    pub mac: String,
    /// `pending` (its wave has not moved), `waiting` (moved to B, waiting
    /// for its reboot and confirmation), `confirmed`, `failed`.
    pub status: String,
    pub moved_ms: Option<i64>,
    pub confirmed_ms: Option<i64>,
    /// Why its boot of B failed.
    pub failed: Option<String>,
    /// Sent back to A (the rollout rolled back or was aborted).
    pub rolled_back: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WaveView {
    pub wave: usize,
    /// `passed`, `open`, `paused`, `failed`, `aborted` or `pending`.
    pub gate: String,
    pub machines: Vec<MachineProgress>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Counts {
    pub machines: usize,
    pub pending: usize,
    pub waiting: usize,
    pub confirmed: usize,
    pub failed: usize,
}

/// A rollout: every wave, every machine, and why it stopped.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RolloutView {
    pub id: i64,
    pub group: String,
    /// The group pointer it moves (`x86_64`, `arm64`, `x86_64/installer`).
    pub slot: String,
    /// `running`, `paused`, `succeeded`, `rolled_back`, `stopped`, `aborted`.
    pub state: String,
    /// Why it rolled back, stopped or was aborted.
    pub reason: Option<String>,
    pub from: GenerationRef,
    pub to: GenerationRef,
    /// `{"kind": "canary", "canary": …, "steps": […]}` or `{"kind": "blue_green"}`.
    #[schema(value_type = Object)]
    pub strategy: Value,
    pub timeout_s: i64,
    pub require: Option<String>,
    pub rollback: bool,
    pub on_bmc_failure: crate::rollout::OnBmcFailure,
    /// The wave whose gate is open (or closed last).
    pub wave: usize,
    pub wave_started_ms: i64,
    pub waves: Vec<WaveView>,
    pub counts: Counts,
    pub created_ms: i64,
    pub created_by: Option<String>,
    pub updated_ms: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RolloutList {
    /// Newest first.
    pub rollouts: Vec<RolloutView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DegradedView {
    pub generation: GenerationRef,
    pub since_ms: i64,
    pub reason: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FailingView {
    pub generation: GenerationRef,
    pub failures: u32,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OpenBootView {
    pub generation: GenerationRef,
    pub served_ms: i64,
    pub boot: Option<i64>,
}

/// A machine as the watchdog sees it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HealthView {
    pub mac: String,
    /// Set while it boots its last good generation instead of its target.
    pub degraded: Option<DegradedView>,
    /// Failed boots of one generation counted so far.
    pub failing: Option<FailingView>,
    /// The boot served and not confirmed yet.
    pub open_boot: Option<OpenBootView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PolicyView {
    pub max_failures: u32,
    pub confirm_timeout_s: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WatchdogView {
    pub policy: PolicyView,
    pub degraded: Vec<HealthView>,
}

fn parse_canary(v: &Value) -> ApiResult<Canary> {
    crate::rollout::canary_from_json(v).map_err(|e| ApiError::bad("canary", e))
}

fn parse_steps(v: &Value) -> ApiResult<Vec<u8>> {
    crate::rollout::steps_from_json(v).map_err(|e| ApiError::bad("steps", e))
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
            on_bmc_failure: self.on_bmc_failure.unwrap_or_default(),
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
            RolloutCommandError::NotLeader { .. } => {
                ApiError::new(StatusCode::CONFLICT, "not_leader", e.to_string())
            }
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
fn machine_status(e: &Entry, mac: &MacAddr) -> MachineProgress {
    let r = &e.rollout;
    let sent_back = matches!(r.state, RState::RolledBack { .. } | RState::Aborted { .. });
    let m = r.moved.get(mac);
    let status = match m {
        None => "pending",
        Some(m) if m.failed.is_some() => "failed",
        Some(m) if m.confirmed_ms.is_some() => "confirmed",
        Some(_) => "waiting",
    };
    MachineProgress {
        mac: mac.to_string(),
        status: status.into(),
        moved_ms: m.map(|m| m.moved_ms),
        confirmed_ms: m.and_then(|m| m.confirmed_ms),
        failed: m.and_then(|m| m.failed.clone()),
        rolled_back: sent_back && m.is_some(),
    }
}

/// A rollout as the API shows it.
pub(crate) fn view(e: &Entry) -> RolloutView {
    let r = &e.rollout;
    let waves: Vec<WaveView> = r
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
            WaveView {
                wave: i,
                gate: gate.into(),
                machines: machines.iter().map(|m| machine_status(e, m)).collect(),
            }
        })
        .collect();
    let count = |s: &str| {
        waves
            .iter()
            .flat_map(|w| &w.machines)
            .filter(|m| m.status == s)
            .count()
    };
    let counts = Counts {
        machines: r.waves.iter().map(Vec::len).sum(),
        pending: count("pending"),
        waiting: count("waiting"),
        confirmed: count("confirmed"),
        failed: count("failed"),
    };
    let strategy = match &r.spec.strategy {
        Strategy::BlueGreen => serde_json::json!({ "kind": "blue_green" }),
        Strategy::Canary { canary, steps } => {
            serde_json::json!({ "kind": "canary", "canary": canary, "steps": steps })
        }
    };
    RolloutView {
        id: e.id,
        group: r.spec.group.clone(),
        slot: e.slot.to_string(),
        state: e.state_key().into(),
        reason: e.reason().map(String::from),
        from: GenerationRef::from(&r.spec.from),
        to: GenerationRef::from(&r.spec.to),
        strategy,
        timeout_s: r.spec.timeout_ms / 1000,
        require: r
            .spec
            .require
            .as_ref()
            .map(|q| format!("{}={}", q.key, q.value)),
        rollback: r.spec.rollback,
        on_bmc_failure: r.spec.on_bmc_failure,
        wave: r.wave,
        wave_started_ms: r.wave_started_ms,
        waves,
        counts,
        created_ms: e.created_ms,
        created_by: e.created_by.clone(),
        updated_ms: e.updated_ms,
    }
}

#[utoipa::path(get, path = "/api/v1/rollouts", tag = "rollouts",
    responses((status = 200, body = RolloutList)))]
async fn list(_: Reader, State(s): State<ApiState>) -> Json<RolloutList> {
    let mut all = s.inventory.rollouts();
    all.reverse();
    Json(RolloutList {
        rollouts: all.iter().map(view).collect(),
    })
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

#[utoipa::path(get, path = "/api/v1/rollouts/{id}", tag = "rollouts",
    params(("id" = i64, Path, description = "Rollout id")),
    responses((status = 200, body = RolloutView)))]
async fn status(
    _: Reader,
    State(s): State<ApiState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<RolloutView>> {
    Ok(Json(view(&found(&s, parse_id(&id)?)?)))
}

/// Starts a rollout; 409 when the group already has one (running, paused
/// or stopped), or when the group has no generation or machines to move.
#[utoipa::path(post, path = "/api/v1/rollouts", tag = "rollouts",
    request_body = StartBody,
    responses((status = 201, body = RolloutView)))]
async fn start(
    Admin(p): Admin,
    State(s): State<ApiState>,
    ApiJson(body): ApiJson<StartBody>,
) -> ApiResult<(StatusCode, Json<RolloutView>)> {
    let req = body.into_request()?;
    let e = s.inventory.start_rollout(req, Some(p.name)).await?;
    Ok((StatusCode::CREATED, Json(view(&e))))
}

/// 409 when the rollout's state does not allow it.
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/pause", tag = "rollouts",
    params(("id" = i64, Path, description = "Rollout id")),
    responses((status = 200, body = RolloutView)))]
async fn pause(
    Admin(p): Admin,
    State(s): State<ApiState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<RolloutView>> {
    let e = s
        .inventory
        .pause_rollout(parse_id(&id)?, Some(&p.name))
        .await?;
    Ok(Json(view(&e)))
}

/// 409 when the rollout's state does not allow it.
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/resume", tag = "rollouts",
    params(("id" = i64, Path, description = "Rollout id")),
    responses((status = 200, body = RolloutView)))]
async fn resume(
    Admin(p): Admin,
    State(s): State<ApiState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<RolloutView>> {
    let e = s
        .inventory
        .resume_rollout(parse_id(&id)?, Some(&p.name))
        .await?;
    Ok(Json(view(&e)))
}

/// Sends every moved machine back to A; 409 when already finished.
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/abort", tag = "rollouts",
    params(("id" = i64, Path, description = "Rollout id")),
    request_body(content = Option<AbortBody>, description = "optional"),
    responses((status = 200, body = RolloutView)))]
async fn abort(
    Admin(p): Admin,
    State(s): State<ApiState>,
    ApiPath(id): ApiPath<String>,
    body: bytes::Bytes,
) -> ApiResult<Json<RolloutView>> {
    // The body is optional: `{"reason": "…"}`. Bytes, not String: a body
    // that is not UTF-8 is a JSON error too.
    let body: AbortBody = if body.iter().all(u8::is_ascii_whitespace) {
        AbortBody::default()
    } else {
        serde_json::from_slice(&body)
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

fn health_view(mac: MacAddr, h: &Health) -> HealthView {
    HealthView {
        mac: mac.to_string(),
        degraded: h.degraded.as_ref().map(|d| DegradedView {
            generation: GenerationRef::from(&d.generation),
            since_ms: d.since_ms,
            reason: d.reason.clone(),
        }),
        failing: h.failing.as_ref().map(|(g, n)| FailingView {
            generation: GenerationRef::from(g),
            failures: *n,
        }),
        open_boot: h.open.as_ref().map(|o| OpenBootView {
            generation: GenerationRef::from(&o.generation),
            served_ms: o.served_ms,
            boot: o.boot_id,
        }),
    }
}

/// The watchdog's policy and every degraded machine.
#[utoipa::path(get, path = "/api/v1/watchdog", tag = "rollouts",
    responses((status = 200, body = WatchdogView)))]
async fn watchdog(_: Reader, State(s): State<ApiState>) -> Json<WatchdogView> {
    let policy = s.inventory.watchdog_policy();
    Json(WatchdogView {
        policy: PolicyView {
            max_failures: policy.max_failures,
            confirm_timeout_s: policy.confirm_timeout_ms / 1000,
        },
        degraded: s
            .inventory
            .degraded()
            .iter()
            .map(|(m, h)| health_view(*m, h))
            .collect(),
    })
}

#[utoipa::path(get, path = "/api/v1/machines/{mac}/health", tag = "rollouts",
    params(("mac" = String, Path, description = "MAC address")),
    responses((status = 200, body = HealthView)))]
async fn machine_health(
    _: Reader,
    State(s): State<ApiState>,
    ApiPath(mac): ApiPath<String>,
) -> ApiResult<Json<HealthView>> {
    let mac = parse_mac(&mac)?;
    Ok(Json(health_view(mac, &s.inventory.health(mac))))
}

/// Clears a degraded mark: the machine's next boot tries its target
/// again. 409 when it is not degraded.
#[utoipa::path(delete, path = "/api/v1/machines/{mac}/degraded", tag = "rollouts",
    params(("mac" = String, Path, description = "MAC address")),
    responses((status = 200, body = HealthView)))]
async fn clear_degraded(
    Admin(p): Admin,
    State(s): State<ApiState>,
    ApiPath(mac): ApiPath<String>,
) -> ApiResult<Json<HealthView>> {
    let mac = parse_mac(&mac)?;
    let h = s.inventory.clear_degraded(mac, Some(&p.name)).await?;
    Ok(Json(health_view(mac, &h)))
}
