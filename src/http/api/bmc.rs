//! BMCs and power: a machine's or a group's BMC (write-only password),
//! power status and operations, and the one-time network boot.
//!
//! A `PUT` replaces the row whole except the password, which is kept when
//! left out (change an address without sending the password again) and
//! never returned: answers say only whether one is set.

use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::*;
use crate::bmc::service::{Bmcs, Outcome, Unusable};
use crate::bmc::{BootTarget, Op, Protocol};
use crate::desired::bmc::{password_sha, BmcOwner, CurrentBmc};
use crate::desired::plan::{Action, Change};
use crate::ledger::now_ms;
use crate::store::bmcs::{BmcRow, BmcWrite, OwnerKind};

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(
            get_machine_bmc,
            put_machine_bmc,
            delete_machine_bmc
        ))
        .routes(routes!(get_group_bmc, put_group_bmc, delete_group_bmc))
        .routes(routes!(power_status, power))
        .routes(routes!(netboot))
        .routes(routes!(power_states))
}

/// What each machine's BMC last said of its power.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PowerList {
    pub machines: Vec<PowerState>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PowerState {
    pub mac: String,
    pub power: String,
    pub power_ms: i64,
}

/// The power state each machine's BMC last reported (by an operation or a
/// status call); machines never asked are absent. Asks no BMC.
#[utoipa::path(get, path = "/api/v1/power", tag = "bmc",
    responses((status = 200, body = PowerList)))]
async fn power_states(_: Reader, State(s): State<ApiState>) -> ApiResult<Json<PowerList>> {
    let machines = s
        .store
        .bmcs()
        .await?
        .into_iter()
        .filter(|r| r.owner_kind == OwnerKind::Machine.as_str())
        .filter_map(|r| {
            Some(PowerState {
                power: r.power_state?,
                power_ms: r.power_ms?,
                mac: r.owner,
            })
        })
        .collect();
    Ok(Json(PowerList { machines }))
}

/// A BMC as written (every field optional: a machine's fill in or
/// override its group's).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BmcBody {
    pub protocol: Option<Protocol>,
    /// Redfish: a base URL (`https://10.0.0.5`); IPMI: `host[:port]`.
    pub address: Option<String>,
    /// Redfish: the system's id; absent, the only system or the one with
    /// the machine's MAC.
    pub system_id: Option<String>,
    pub username: Option<String>,
    /// Write-only; left out, the stored one is kept.
    pub password: Option<String>,
    /// `pxe` (the default) or `http` (UEFI HTTP boot; Redfish only).
    pub boot_target: Option<BootTarget>,
    /// Check the BMC's TLS certificate (default false: most are self-signed).
    pub verify_tls: Option<bool>,
}

/// A BMC row as read: never the password.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BmcFields {
    pub protocol: Option<String>,
    pub address: Option<String>,
    pub system_id: Option<String>,
    pub username: Option<String>,
    pub password_set: bool,
    pub boot_target: Option<String>,
    pub verify_tls: Option<bool>,
}

impl From<&BmcRow> for BmcFields {
    fn from(r: &BmcRow) -> Self {
        Self {
            protocol: r.protocol.clone(),
            address: r.address.clone(),
            system_id: r.system_id.clone(),
            username: r.username.clone(),
            password_set: r.sealed.is_some(),
            boot_target: r.boot_target.clone(),
            verify_tls: r.verify_tls,
        }
    }
}

/// A machine's BMC: its own fields, its group's, and what they come to.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MachineBmc {
    pub mac: String,
    pub group: String,
    pub own: Option<BmcFields>,
    pub from_group: Option<BmcFields>,
    /// The BMC operations use (no password); `null` without one.
    pub effective: Option<BmcFields>,
    /// Why the BMC cannot be used, when it cannot.
    pub problem: Option<String>,
    /// What the BMC last said of the power, and when.
    pub power: Option<String>,
    pub power_ms: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GroupBmc {
    pub group: String,
    pub bmc: Option<BmcFields>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PowerBody {
    /// `on`, `off`, `graceful-off`, `cycle`, `reset` or `status`.
    pub action: String,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetbootBody {
    /// Also reset the machine (or power it on) now; default false.
    #[serde(default)]
    pub reboot: bool,
}

fn bmcs(s: &ApiState) -> ApiResult<&Bmcs> {
    s.bmcs.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_bmc_service",
            "this server runs no BMC service",
        )
    })
}

impl From<Unusable> for ApiError {
    fn from(e: Unusable) -> Self {
        match e {
            Unusable::NoBmc(_) => ApiError::new(StatusCode::CONFLICT, "no_bmc", e.to_string()),
            Unusable::Resolve(_) => {
                ApiError::new(StatusCode::CONFLICT, "bmc_unusable", e.to_string())
            }
            Unusable::Store(e) => ApiError::internal(e),
        }
    }
}

/// The machine's group (it must be known).
fn group_of(s: &ApiState, mac: MacAddr) -> ApiResult<String> {
    s.inventory
        .machine(mac)
        .map(|m| m.group)
        .ok_or_else(|| InventoryError::NoSuchMachine(mac).into())
}

/// Checks a body and makes the row it describes (the password sealed for
/// `owner`, or the old one kept).
fn row_of(
    bmcs: &Bmcs,
    kind: OwnerKind,
    owner: &str,
    body: BmcBody,
    old: Option<BmcRow>,
) -> ApiResult<BmcRow> {
    crate::bmc::check(&crate::bmc::Fields {
        protocol: body.protocol,
        address: body.address.as_deref(),
        system_id: body.system_id.as_deref(),
        username: body.username.as_deref(),
        password: body.password.as_deref(),
        boot_target: body.boot_target,
    })
    .map_err(|(field, message)| ApiError::bad(field, message))?;
    let mut row = BmcRow {
        owner_kind: kind.as_str().into(),
        owner: owner.into(),
        protocol: body.protocol.map(|p| p.as_str().into()),
        address: body.address,
        system_id: body.system_id,
        username: body.username,
        sealed: None,
        boot_target: body.boot_target.map(|t| t.as_str().into()),
        verify_tls: body.verify_tls,
        power_state: None,
        power_ms: None,
        updated_ms: now_ms(),
    };
    row.sealed = match body.password {
        Some(p) => Some(bmcs.sealer().seal(&crate::bmc::owner_key(&row), &p)),
        None => old.and_then(|o| o.sealed),
    };
    Ok(row)
}

async fn machine_bmc(s: &ApiState, mac: MacAddr) -> ApiResult<MachineBmc> {
    let group = group_of(s, mac)?;
    let own = s.store.bmc(OwnerKind::Machine, &mac.to_string()).await?;
    let shared = s.store.bmc(OwnerKind::Group, &group).await?;
    let (effective, problem) = match bmcs(s)?.endpoint(mac, &group).await {
        Ok(Some(ep)) => (
            Some(BmcFields {
                protocol: Some(ep.protocol.as_str().into()),
                address: Some(ep.address),
                system_id: ep.system_id,
                username: Some(ep.username),
                password_set: true,
                boot_target: Some(ep.boot_target.as_str().into()),
                verify_tls: Some(ep.verify_tls),
            }),
            None,
        ),
        Ok(None) => (None, None),
        Err(Unusable::Store(e)) => return Err(ApiError::internal(e)),
        Err(e) => (None, Some(e.to_string())),
    };
    Ok(MachineBmc {
        mac: mac.to_string(),
        group,
        power: own.as_ref().and_then(|r| r.power_state.clone()),
        power_ms: own.as_ref().and_then(|r| r.power_ms),
        own: own.as_ref().filter(|r| r.holds_bmc()).map(BmcFields::from),
        from_group: shared.as_ref().map(BmcFields::from),
        effective,
        problem,
    })
}

/// A machine's BMC: its own fields, its group's, what they come to.
#[utoipa::path(get, path = "/api/v1/machines/{mac}/bmc", tag = "bmc",
    params(("mac" = String, Path, description = "MAC address")),
    responses((status = 200, body = MachineBmc)))]
async fn get_machine_bmc(
    _: Reader,
    State(s): State<ApiState>,
    ApiPath(mac): ApiPath<String>,
) -> ApiResult<Json<MachineBmc>> {
    let mac = parse_mac(&mac)?;
    Ok(Json(machine_bmc(&s, mac).await?))
}

/// Sets a machine's own BMC fields (the password write-only).
#[utoipa::path(put, path = "/api/v1/machines/{mac}/bmc", tag = "bmc",
    params(("mac" = String, Path, description = "MAC address")),
    request_body = BmcBody,
    responses((status = 200, body = MachineBmc)))]
async fn put_machine_bmc(
    _: Admin,
    State(s): State<ApiState>,
    ApiPath(mac): ApiPath<String>,
    ApiJson(body): ApiJson<BmcBody>,
) -> ApiResult<Json<MachineBmc>> {
    let mac = parse_mac(&mac)?;
    group_of(&s, mac)?;
    let _edit = s.edits.lock().await;
    let old = s.store.bmc(OwnerKind::Machine, &mac.to_string()).await?;
    let row = row_of(bmcs(&s)?, OwnerKind::Machine, &mac.to_string(), body, old)?;
    s.store.put_bmc(&row).await?;
    tracing::info!(%mac, "BMC set");
    Ok(Json(machine_bmc(&s, mac).await?))
}

/// Removes a machine's own BMC fields (its group's still apply).
#[utoipa::path(delete, path = "/api/v1/machines/{mac}/bmc", tag = "bmc",
    params(("mac" = String, Path, description = "MAC address")),
    responses((status = 200, body = MachineBmc)))]
async fn delete_machine_bmc(
    _: Admin,
    State(s): State<ApiState>,
    ApiPath(mac): ApiPath<String>,
) -> ApiResult<Json<MachineBmc>> {
    let mac = parse_mac(&mac)?;
    group_of(&s, mac)?;
    s.store
        .delete_bmc(OwnerKind::Machine, &mac.to_string())
        .await?;
    Ok(Json(machine_bmc(&s, mac).await?))
}

fn known_group(s: &ApiState, name: &str) -> ApiResult<()> {
    s.inventory
        .group(name)
        .map(drop)
        .ok_or_else(|| InventoryError::NoSuchGroup(name.to_string()).into())
}

/// A group's default BMC fields.
#[utoipa::path(get, path = "/api/v1/groups/{name}/bmc", tag = "bmc",
    params(("name" = String, Path, description = "Group name")),
    responses((status = 200, body = GroupBmc)))]
async fn get_group_bmc(
    _: Reader,
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<GroupBmc>> {
    known_group(&s, &name)?;
    let row = s.store.bmc(OwnerKind::Group, &name).await?;
    Ok(Json(GroupBmc {
        group: name,
        bmc: row.as_ref().map(BmcFields::from),
    }))
}

/// Sets a group's default BMC fields (what its members share).
#[utoipa::path(put, path = "/api/v1/groups/{name}/bmc", tag = "bmc",
    params(("name" = String, Path, description = "Group name")),
    request_body = BmcBody,
    responses((status = 200, body = GroupBmc)))]
async fn put_group_bmc(
    _: Admin,
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<BmcBody>,
) -> ApiResult<Json<GroupBmc>> {
    known_group(&s, &name)?;
    let _edit = s.edits.lock().await;
    let old = s.store.bmc(OwnerKind::Group, &name).await?;
    let row = row_of(bmcs(&s)?, OwnerKind::Group, &name, body, old)?;
    s.store.put_bmc(&row).await?;
    tracing::info!(group = %name, "group BMC set");
    Ok(Json(GroupBmc {
        group: name,
        bmc: Some(BmcFields::from(&row)),
    }))
}

/// Removes a group's default BMC fields.
#[utoipa::path(delete, path = "/api/v1/groups/{name}/bmc", tag = "bmc",
    params(("name" = String, Path, description = "Group name")),
    responses((status = 200, body = GroupBmc)))]
async fn delete_group_bmc(
    _: Admin,
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<GroupBmc>> {
    known_group(&s, &name)?;
    s.store.delete_bmc(OwnerKind::Group, &name).await?;
    Ok(Json(GroupBmc {
        group: name,
        bmc: None,
    }))
}

/// Runs `op` on the machine's BMC; a failure after the retries is a 502
/// naming the attempts and the last error.
async fn operate(s: &ApiState, mac: MacAddr, op: Op, who: &str) -> ApiResult<Json<Outcome>> {
    let group = group_of(s, mac)?;
    let why = format!("{} by {who} through the API", op.as_str());
    let outcome = bmcs(s)?.run(mac, &group, op, &why).await?;
    if !outcome.ok {
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "bmc_failed",
            format!(
                "{} failed after {} attempt(s): {}",
                op.as_str(),
                outcome.attempts,
                outcome.error.unwrap_or_default()
            ),
        ));
    }
    Ok(Json(outcome))
}

/// The machine's power state, asked of its BMC now.
#[utoipa::path(get, path = "/api/v1/machines/{mac}/power", tag = "bmc",
    params(("mac" = String, Path, description = "MAC address")),
    responses((status = 200, body = Outcome)))]
async fn power_status(
    who: Reader,
    State(s): State<ApiState>,
    ApiPath(mac): ApiPath<String>,
) -> ApiResult<Json<Outcome>> {
    let mac = parse_mac(&mac)?;
    operate(&s, mac, Op::Status, &who.0.name).await
}

/// Powers the machine on, off (at once or gracefully), cycles or resets it.
#[utoipa::path(post, path = "/api/v1/machines/{mac}/power", tag = "bmc",
    params(("mac" = String, Path, description = "MAC address")),
    request_body = PowerBody,
    responses((status = 200, body = Outcome)))]
async fn power(
    who: Admin,
    State(s): State<ApiState>,
    ApiPath(mac): ApiPath<String>,
    ApiJson(body): ApiJson<PowerBody>,
) -> ApiResult<Json<Outcome>> {
    let mac = parse_mac(&mac)?;
    let op = match body.action.as_str() {
        "on" => Op::On,
        "off" => Op::Off,
        "graceful-off" => Op::GracefulOff,
        "cycle" => Op::Cycle,
        "reset" => Op::Reset,
        "status" => Op::Status,
        other => {
            return Err(ApiError::bad(
                "action",
                format!("{other:?} is not one of on, off, graceful-off, cycle, reset, status"),
            ))
        }
    };
    operate(&s, mac, op, &who.0.name).await
}

/// Sets the machine's next boot (once) to the network, and with `reboot`
/// resets it (or powers it on) now.
#[utoipa::path(post, path = "/api/v1/machines/{mac}/netboot", tag = "bmc",
    params(("mac" = String, Path, description = "MAC address")),
    request_body = NetbootBody,
    responses((status = 200, body = Outcome)))]
async fn netboot(
    who: Admin,
    State(s): State<ApiState>,
    ApiPath(mac): ApiPath<String>,
    ApiJson(body): ApiJson<NetbootBody>,
) -> ApiResult<Json<Outcome>> {
    let mac = parse_mac(&mac)?;
    let op = if body.reboot {
        Op::Netboot
    } else {
        Op::NetbootNext
    };
    operate(&s, mac, op, &who.0.name).await
}

/// The stored BMC rows as `apply`'s plan sees them: fields, and the digest
/// of each password (opened here; a password that does not open counts as
/// none, so the document's replaces it).
pub(super) async fn current_bmcs(
    s: &ApiState,
) -> ApiResult<std::collections::BTreeMap<BmcOwner, CurrentBmc>> {
    let sealer = s.bmcs.as_ref().map(Bmcs::sealer);
    let mut out = std::collections::BTreeMap::new();
    for row in s.store.bmcs().await?.into_iter().filter(BmcRow::holds_bmc) {
        let owner = match row.owner_kind.as_str() {
            "group" => BmcOwner::Group(row.owner.clone()),
            _ => match row.owner.parse() {
                Ok(mac) => BmcOwner::Machine(mac),
                Err(_) => continue,
            },
        };
        let password_sha = match (&row.sealed, sealer) {
            (Some(sealed), Some(sealer)) => sealer
                .open(&crate::bmc::owner_key(&row), sealed)
                .ok()
                .map(|p| password_sha(&p)),
            _ => None,
        };
        out.insert(
            owner,
            CurrentBmc {
                protocol: row.protocol,
                address: row.address,
                system_id: row.system_id,
                username: row.username,
                boot_target: row.boot_target,
                verify_tls: row.verify_tls,
                password_sha,
            },
        );
    }
    Ok(out)
}

/// The rows `apply` writes for the plan's BMC changes, passwords sealed
/// (or the stored one kept when the document gives none).
pub(super) async fn bmc_writes(s: &ApiState, changes: &[Change]) -> ApiResult<Vec<BmcWrite>> {
    let mut out = Vec::new();
    for c in changes {
        let Action::SetBmc { owner, to } = &c.action else {
            continue;
        };
        let (kind, key) = match owner {
            BmcOwner::Group(g) => (OwnerKind::Group, g.clone()),
            BmcOwner::Machine(m) => (OwnerKind::Machine, m.to_string()),
        };
        let Some(spec) = to else {
            out.push(BmcWrite::Delete(kind, key));
            continue;
        };
        let body = BmcBody {
            protocol: spec.protocol.as_deref().and_then(Protocol::parse),
            address: spec.address.clone(),
            system_id: spec.system_id.clone(),
            username: spec.username.clone(),
            password: spec.password.clone(),
            boot_target: spec.boot_target.as_deref().and_then(BootTarget::parse),
            verify_tls: spec.verify_tls,
        };
        let old = s.store.bmc(kind, &key).await?;
        out.push(BmcWrite::Put(Box::new(row_of(
            bmcs(s)?,
            kind,
            &key,
            body,
            old,
        )?)));
    }
    Ok(out)
}
