//! Desired state: `POST /api/v1/apply` takes a whole [`Document`] (groups,
//! selectors, variables, generation pointers and rollout strategies;
//! machines' hostnames, labels, groups, pins, kinds), plans the changes
//! with [`crate::desired::plan::plan`] against the server's own state, and
//! applies all of them in one transaction, or none (`?dry_run=true`: only
//! the plan). Errors carry `field`, the path in the document at fault
//! (`groups.web.stream`), which the CLI maps back to the file's line.

use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::*;
use crate::desired::plan::{plan, Change, ErrorKind, PlanError};
use crate::desired::Document;

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new().routes(routes!(apply))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ApplyOptions {
    /// Plan only: answer what would change, change nothing (a `read` token
    /// may do this).
    dry_run: Option<bool>,
}

/// One field of a group or machine, before and after (`null`: unset).
#[derive(Debug, Serialize, ToSchema)]
pub struct FieldView {
    pub field: String,
    pub from: Value,
    pub to: Value,
}

/// One change of the plan.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChangeView {
    /// `create`, `update` or `rollout`.
    pub op: &'static str,
    /// `group` or `machine`.
    pub kind: &'static str,
    /// The group's name or the machine's MAC.
    pub name: String,
    /// Where in the document it comes from (`groups.web`).
    pub path: String,
    /// The change in one line (`~ group web: selector "a" -> "b"`).
    pub text: String,
    pub fields: Vec<FieldView>,
    /// A rollout: how many machines it moves.
    pub members: Option<usize>,
}

impl From<&Change> for ChangeView {
    fn from(c: &Change) -> Self {
        let (kind, name) = c.resource();
        Self {
            op: c.op(),
            kind,
            name,
            path: c.path.clone(),
            text: c.text.clone(),
            fields: c
                .fields
                .iter()
                .map(|f| FieldView {
                    field: f.field.to_string(),
                    from: f.from.clone(),
                    to: f.to.clone(),
                })
                .collect(),
            members: c.members,
        }
    }
}

/// What an apply did (or, on a dry run, would do).
#[derive(Debug, Serialize, ToSchema)]
pub struct ApplyResult {
    /// True: nothing was changed.
    pub dry_run: bool,
    /// Every change, in the order applied: groups, machines, rollouts.
    /// Empty: the server already matches the document.
    pub changes: Vec<ChangeView>,
    /// The rollouts started (none on a dry run).
    pub rollouts: Vec<i64>,
}

impl From<PlanError> for ApiError {
    fn from(e: PlanError) -> Self {
        let (status, code) = match e.kind {
            ErrorKind::Invalid => (StatusCode::BAD_REQUEST, "invalid"),
            ErrorKind::UnknownReference => (StatusCode::UNPROCESSABLE_ENTITY, "unknown_reference"),
            ErrorKind::Conflict => (StatusCode::CONFLICT, "conflict"),
        };
        ApiError::new(status, code, e.message).with_field(e.path)
    }
}

/// Makes the server match a desired-state document: creates and changes
/// groups and machines, and starts a rollout for each group whose changed
/// generation its machines run the old one of. Fields the document leaves
/// out are left alone; nothing is deleted. All or nothing: any invalid
/// value or reference (400/422, `field` = its path in the document, e.g.
/// `groups.web.stream`) or conflict (409: a rollout toward another
/// generation holds the group) changes nothing. Applying the same document
/// again changes nothing and answers no changes.
#[utoipa::path(post, path = "/api/v1/apply", tag = "apply",
    params(ApplyOptions),
    request_body = Document,
    responses((status = 200, body = ApplyResult)))]
async fn apply(
    Reader(p): Reader,
    State(s): State<ApiState>,
    ApiQuery(opts): ApiQuery<ApplyOptions>,
    ApiJson(doc): ApiJson<Document>,
) -> ApiResult<Json<ApplyResult>> {
    let dry_run = opts.dry_run.unwrap_or(false);
    if !dry_run && p.role != crate::auth::Role::Admin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "token {} is read-only (it may plan with ?dry_run=true)",
                p.name
            ),
        ));
    }
    let listed: Vec<MacAddr> = doc.machines.keys().filter_map(|k| k.parse().ok()).collect();
    let _edit = s.edits.lock().await;
    let current = s.inventory.plan_state(&listed).await?;
    let changes = plan(&doc, &current)?;
    let views = changes.iter().map(ChangeView::from).collect();
    let rollouts = if dry_run || changes.is_empty() {
        Vec::new()
    } else {
        s.inventory.apply(changes, Some(p.name)).await?
    };
    Ok(Json(ApplyResult {
        dry_run,
        changes: views,
        rollouts,
    }))
}
