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
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FieldView {
    pub field: String,
    pub from: Value,
    pub to: Value,
}

/// One change of the plan.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ChangeView {
    /// `create`, `update` or `rollout`.
    pub op: String,
    /// `group` or `machine`.
    pub kind: String,
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
            op: c.op().into(),
            kind: kind.into(),
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
#[derive(Debug, Serialize, Deserialize, ToSchema)]
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
    let mut current = s.inventory.plan_state(&listed).await?;
    current.bmcs = super::bmc::current_bmcs(&s).await?;
    let changes = plan(&doc, &current)?;
    let views = changes.iter().map(ChangeView::from).collect();
    let rollouts = if dry_run || changes.is_empty() {
        Vec::new()
    } else {
        let bmcs = super::bmc::bmc_writes(&s, &changes).await?;
        s.inventory.apply(changes, &bmcs, Some(p.name)).await?
    };
    Ok(Json(ApplyResult {
        dry_run,
        changes: views,
        rollouts,
    }))
}

#[cfg(test)]
mod tests {
    use axum::http::{Method, StatusCode};
    use serde_json::json;

    use super::super::tests::{assert_error, Harness};

    #[tokio::test]
    async fn apply_checks_tokens_fields_and_answers_no_changes_the_second_time() {
        let h = Harness::new().await;
        let mac = h.machine("52:54:00:00:00:41").await;
        let call = |token: String, path: &'static str, body: serde_json::Value| {
            let h = &h;
            async move {
                h.call(Method::POST, path, Some(&token), Some(body), &[])
                    .await
            }
        };
        let doc = json!({
            "groups": { "web": { "selector": "role==web", "variables": { "ntp": "10.0.0.1" } } },
            "machines": { mac.to_string(): { "labels": { "role": "web" }, "hostname": "node1" } }
        });

        // A read token may plan, not apply.
        let a = call(h.reader.clone(), "/api/v1/apply?dry_run=true", doc.clone()).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert_eq!(a.body["dry_run"], true);
        assert_eq!(
            a.body["changes"][0]["text"],
            "+ group web: selector \"role=web\", variables {\"ntp\":\"10.0.0.1\"}"
        );
        assert_eq!(a.body["changes"][1]["kind"], "machine");
        assert!(
            h.state.inventory.group("web").is_none(),
            "a dry run changes nothing"
        );
        let a = call(h.reader.clone(), "/api/v1/apply", doc.clone()).await;
        assert_error(&a, StatusCode::FORBIDDEN, "forbidden");

        // Applied; the machine follows the new selector at once.
        let a = call(h.admin.clone(), "/api/v1/apply", doc.clone()).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert_eq!(a.body["changes"].as_array().unwrap().len(), 2);
        assert_eq!(h.state.inventory.machine(mac).unwrap().group, "web");
        h.state.inventory.settle().await;
        let (events,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM events WHERE step = 'apply'")
            .fetch_one(h.state.store.sqlite_pool())
            .await
            .unwrap();
        assert_eq!(
            events, 1,
            "one audit event per apply that changed something"
        );
        let a = call(h.admin.clone(), "/api/v1/apply", doc).await;
        assert_eq!(a.body["changes"], json!([]), "{}", a.body);

        // Errors name the path in the document.
        for (body, status, code, field) in [
            (
                json!({ "groups": { "web": { "stream": "nope", "generation": 1 } } }),
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_reference",
                "groups.web.stream",
            ),
            (
                json!({ "groups": { "web": { "selector": "a in (" } } }),
                StatusCode::BAD_REQUEST,
                "invalid",
                "groups.web.selector",
            ),
            (
                json!({ "machines": { "52:54:00:00:00:99": { "hostname": "x" } } }),
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_reference",
                "machines.52:54:00:00:00:99",
            ),
        ] {
            let a = call(h.admin.clone(), "/api/v1/apply", body.clone()).await;
            assert_error(&a, status, code);
            assert_eq!(a.body["error"]["field"], field, "{body}");
        }
        // One generation per architecture, in one apply: both slots set.
        let inv = &h.state.inventory;
        for (stream, arch, tag) in [("worker", "x86_64", b"x"), ("arm", "arm64", b"a")] {
            let a = crate::images::ArtifactRef {
                name: "vmlinuz".into(),
                digest: crate::images::Digest::of(tag),
                size: 1,
            };
            let m = crate::images::Manifest {
                arch: arch.parse().unwrap(),
                kernel: Some(a.clone()),
                initrds: vec![a],
                rootfs: None,
                cmdline: String::new(),
                installer: None,
                uki: None,
                rootfs_verity: None,
            };
            inv.add_generation(stream, m.digest(), m, None)
                .await
                .unwrap();
        }
        let doc = json!({ "groups": { "multi": { "generations": [
            { "stream": "worker", "generation": 1 }, { "stream": "arm", "generation": 1 }
        ] } } });
        let a = call(h.admin.clone(), "/api/v1/apply", doc.clone()).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        let g = inv.group("multi").unwrap();
        assert_eq!(
            g.by_arch.keys().map(|s| s.to_string()).collect::<Vec<_>>(),
            ["arm64", "x86_64"]
        );
        let a = call(h.admin.clone(), "/api/v1/apply", doc).await;
        assert_eq!(a.body["changes"], json!([]), "{}", a.body);

        let a = call(h.admin.clone(), "/api/v1/apply", json!({ "groupz": {} })).await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.body);
    }
}
