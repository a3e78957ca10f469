//! DHCP leases (full mode): list, and release by an operator.

use std::net::Ipv4Addr;

use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::*;
use crate::domain::lease::Entry;

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_leases))
        .routes(routes!(release_lease))
}

/// One address the DHCP server handed out (or holds back).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LeaseView {
    pub ip: String,
    /// The holder (absent while quarantined after a DECLINE).
    pub mac: Option<String>,
    /// `offered`, `bound` or `declined` (quarantined).
    pub state: String,
    pub expires_at_ms: i64,
    /// Whether it has expired (an expired binding still says who had the
    /// address, and is given back to that client first).
    pub expired: bool,
    pub hostname: Option<String>,
    /// The configured subnet it belongs to.
    pub subnet: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LeaseList {
    pub leases: Vec<LeaseView>,
}

fn view(e: Entry, subnets: &[crate::config::Subnet], now: i64) -> LeaseView {
    LeaseView {
        ip: e.ip.to_string(),
        mac: e.mac.map(|m| m.to_string()),
        state: e.state.to_string(),
        expires_at_ms: e.expires_at,
        expired: e.expires_at <= now,
        hostname: e.hostname,
        subnet: subnets
            .iter()
            .find(|s| s.network.contains(&e.ip))
            .map(|s| s.network.to_string()),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct LeaseFilter {
    /// Held by this machine.
    mac: Option<String>,
    /// `offered`, `bound` or `declined`.
    state: Option<String>,
    /// In this subnet (as configured, e.g. `10.77.0.0/24`).
    subnet: Option<String>,
}

/// The DHCP server's leases, by address (empty in proxy mode: another
/// server owns addresses).
#[utoipa::path(get, path = "/api/v1/leases", tag = "leases",
    params(LeaseFilter),
    responses((status = 200, body = LeaseList)))]
async fn list_leases(
    _: Reader,
    State(s): State<ApiState>,
    ApiQuery(f): ApiQuery<LeaseFilter>,
) -> ApiResult<Json<LeaseList>> {
    let mac = f
        .mac
        .as_deref()
        .map(parse_mac)
        .transpose()?
        .map(|m| m.to_string());
    let Some(dhcp) = &s.dhcp else {
        return Ok(Json(LeaseList { leases: Vec::new() }));
    };
    let now = crate::ledger::now_ms();
    let subnets = &dhcp.settings().subnets;
    let leases = dhcp
        .clients()
        .leases()
        .into_iter()
        .map(|e| view(e, subnets, now))
        .filter(|l| mac.is_none() || l.mac == mac)
        .filter(|l| f.state.as_deref().is_none_or(|st| l.state == st))
        .filter(|l| f.subnet.is_none() || l.subnet == f.subnet)
        .collect();
    Ok(Json(LeaseList { leases }))
}

/// Frees an address now (a machine that is gone, a quarantine to lift). A
/// client still using it may be given it again when it asks.
#[utoipa::path(delete, path = "/api/v1/leases/{ip}", tag = "leases",
    params(("ip" = String, Path, description = "The leased IPv4 address")),
    responses((status = 200, body = LeaseView)))]
async fn release_lease(
    _: Admin,
    State(s): State<ApiState>,
    ApiPath(ip): ApiPath<String>,
) -> ApiResult<Json<LeaseView>> {
    let addr: Ipv4Addr = ip
        .parse()
        .map_err(|_| ApiError::bad("ip", format!("{ip:?} is not an IPv4 address")))?;
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_such_lease",
            format!("no lease holds {addr}"),
        )
    };
    let dhcp = s.dhcp.as_ref().ok_or_else(not_found)?;
    let entry = dhcp.release_by_operator(addr).ok_or_else(not_found)?;
    Ok(Json(view(
        entry,
        &dhcp.settings().subnets,
        crate::ledger::now_ms(),
    )))
}
