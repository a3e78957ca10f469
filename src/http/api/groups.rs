//! Groups: create, show, update (description, selector, template
//! variables, generation pointer; `If-Match`), delete (refused while
//! machines depend on the group), members with why each is one.
//!
//! Handlers only validate and call the inventory, which decides membership
//! ([`crate::boot::membership`]) and writes SQLite before memory.

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::*;
use crate::boot::loader::Loader;
use crate::boot::membership::DEFAULT_GROUP;
use crate::boot::select::Selector;
use crate::inventory::{GroupChange, Machine};

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_groups, create_group))
        .routes(routes!(get_group, update_group, delete_group))
        .routes(routes!(group_members))
        .routes(routes!(set_group_generation))
}

/// A group as the API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GroupView {
    pub name: String,
    /// What the group is for.
    pub description: String,
    /// The label selector that claims machines (canonical form), or null:
    /// only machines assigned to the group are in it.
    pub selector: Option<String>,
    /// The generation pointer set last.
    pub pointer: Option<GenerationRef>,
    /// One generation per architecture slot (`x86_64`, `arm64`,
    /// `x86_64/installer`): machines boot the one for theirs.
    pub by_arch: BTreeMap<String, GenerationRef>,
    /// Template variables (`group.vars` in templates; `loader` and
    /// `identity` are also read by the boot path).
    pub variables: Value,
}

impl From<&crate::inventory::Group> for GroupView {
    fn from(g: &crate::inventory::Group) -> Self {
        Self {
            name: g.name.clone(),
            description: g.description.clone(),
            selector: g.selector.as_ref().map(Selector::to_string),
            pointer: g.pointer.as_ref().map(GenerationRef::from),
            by_arch: g
                .by_arch
                .iter()
                .map(|(slot, id)| (slot.to_string(), GenerationRef::from(id)))
                .collect(),
            variables: g.variables.clone(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GroupList {
    pub groups: Vec<GroupView>,
    /// Machines whose labels match several groups' selectors with the same
    /// specificity: an error to fix (make one selector more specific, or
    /// assign the machine). Until then they are in `default`.
    pub ties: Vec<MemberView>,
}

/// `None` when absent; `Some(None)` when explicitly null.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A new group.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewGroup {
    /// 1-63 letters, digits, `-`, `_`, `.`.
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// A label selector, e.g. `role=db,rack in (r1,r2) || gpu`.
    #[serde(default)]
    pub selector: Option<String>,
    /// Template variables: a JSON object.
    #[serde(default)]
    pub variables: Option<Value>,
    /// The generation the group's machines boot.
    #[serde(default)]
    pub generation: Option<GenerationRef>,
}

/// Changes to a group: absent fields stay as they are; `selector: null`
/// removes the selector.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupPatch {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub selector: Option<Option<String>>,
    /// Replaces the variables whole.
    #[serde(default)]
    pub variables: Option<Value>,
    #[serde(default)]
    pub generation: Option<GenerationRef>,
}

/// A member of a group, and why it is one.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MemberView {
    pub mac: String,
    pub hostname: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// The group an operator assigned, if any.
    pub assigned: Option<String>,
    /// `{"by": "explicit" | "selector" | "default" | "tie", …}`.
    #[schema(value_type = Object)]
    pub membership: crate::boot::membership::Membership,
    /// The membership in a sentence.
    pub reason: String,
    pub pin: Option<GenerationRef>,
}

impl From<&Machine> for MemberView {
    fn from(m: &Machine) -> Self {
        Self {
            mac: m.mac.to_string(),
            hostname: m.hostname.clone(),
            labels: m.labels.clone(),
            assigned: m.assigned.clone(),
            reason: m.membership.reason(),
            membership: m.membership.clone(),
            pin: m.pin.as_ref().map(GenerationRef::from),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MemberList {
    pub group: String,
    pub members: Vec<MemberView>,
}

/// Validates what an operator sends and turns it into a change.
fn change(
    group: &str,
    s: &ApiState,
    description: Option<String>,
    selector: Option<Option<String>>,
    variables: Option<Value>,
    generation: Option<GenerationRef>,
) -> ApiResult<GroupChange> {
    if let Some(d) = &description {
        if d.chars().count() > 1024 || d.chars().any(|c| c.is_control() && c != '\n') {
            return Err(ApiError::bad(
                "description",
                "at most 1024 characters, no control characters but newlines",
            ));
        }
    }
    let selector = match selector {
        Some(Some(text)) => {
            if group == DEFAULT_GROUP {
                return Err(ApiError::bad(
                    "selector",
                    "default holds the machines no group claims; it takes no selector",
                ));
            }
            let parsed: Selector =
                text.parse()
                    .map_err(|e: crate::boot::select::SelectorError| {
                        ApiError::bad("selector", e.to_string())
                    })?;
            Some(Some(parsed))
        }
        Some(None) => Some(None),
        None => None,
    };
    if let Some(vars) = &variables {
        let Some(obj) = vars.as_object() else {
            return Err(ApiError::bad("variables", "must be a JSON object"));
        };
        if let Some(loader) = obj.get("loader") {
            if loader
                .as_str()
                .and_then(|l| l.parse::<Loader>().ok())
                .is_none()
            {
                return Err(ApiError::bad(
                    "variables.loader",
                    format!("{loader} is not a loader (\"ipxe\" or \"grub\")"),
                ));
            }
        }
        if let Some(identity) = obj.get("identity") {
            if !matches!(identity.as_str(), Some("port" | "mac")) {
                return Err(ApiError::bad(
                    "variables.identity",
                    format!("{identity} is not an identity (\"port\" or \"mac\")"),
                ));
            }
        }
    }
    let generation = generation.map(|g| g.id());
    if let Some(id) = &generation {
        if s.inventory.generation(id).is_none() {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "no_such_generation",
                format!("{id} does not exist"),
            )
            .with_field("generation"));
        }
    }
    Ok(GroupChange {
        description,
        selector,
        variables,
        generation,
    })
}

fn no_such_group(group: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_such_group",
        format!("group {group} does not exist"),
    )
}

/// Every group with its selector and generation pointers, and the
/// machines caught in a selector tie.
#[utoipa::path(get, path = "/api/v1/groups", tag = "groups",
    responses((status = 200, body = GroupList)))]
async fn list_groups(_: Reader, State(s): State<ApiState>) -> Json<GroupList> {
    Json(GroupList {
        groups: s.inventory.groups().iter().map(GroupView::from).collect(),
        ties: s.inventory.ties().iter().map(MemberView::from).collect(),
    })
}

/// Creates a group. Its selector claims machines at once: their next boot
/// (and DHCP answer) follows it.
#[utoipa::path(post, path = "/api/v1/groups", tag = "groups",
    request_body = NewGroup,
    responses((status = 201, body = GroupView, description = "Created; ETag header")))]
async fn create_group(
    _: Admin,
    State(s): State<ApiState>,
    ApiJson(body): ApiJson<NewGroup>,
) -> ApiResult<axum::response::Response> {
    valid_name("name", &body.name)?;
    let change = change(
        &body.name,
        &s,
        body.description,
        body.selector.map(Some),
        body.variables,
        body.generation,
    )?;
    let _edit = s.edits.lock().await;
    let g = s.inventory.create_group(&body.name, change).await?;
    Ok((StatusCode::CREATED, Tagged::new(GroupView::from(&g))).into_response())
}

/// One group, with its `ETag`.
#[utoipa::path(get, path = "/api/v1/groups/{group}", tag = "groups",
    params(("group" = String, Path, description = "Group name")),
    responses((status = 200, body = GroupView, description = "The group; ETag header")))]
async fn get_group(
    _: Reader,
    State(s): State<ApiState>,
    ApiPath(group): ApiPath<String>,
) -> ApiResult<Tagged<GroupView>> {
    let g = s
        .inventory
        .group(&group)
        .ok_or_else(|| no_such_group(&group))?;
    Ok(Tagged::new(GroupView::from(&g)))
}

/// Changes a group's description, selector, variables or generation, all
/// or nothing. Send `If-Match` with the `ETag` last read to be sure no one
/// changed it in between (412 if someone did).
#[utoipa::path(patch, path = "/api/v1/groups/{group}", tag = "groups",
    params(("group" = String, Path, description = "Group name"),
           ("If-Match" = Option<String>, Header, description = "ETag of the group as last read")),
    request_body = GroupPatch,
    responses((status = 200, body = GroupView, description = "The group as it is now; ETag header")))]
async fn update_group(
    _: Admin,
    State(s): State<ApiState>,
    ApiPath(group): ApiPath<String>,
    if_match: IfMatch,
    ApiJson(body): ApiJson<GroupPatch>,
) -> ApiResult<Tagged<GroupView>> {
    let change = change(
        &group,
        &s,
        body.description,
        body.selector,
        body.variables,
        body.generation,
    )?;
    let _edit = s.edits.lock().await;
    let current = s
        .inventory
        .group(&group)
        .ok_or_else(|| no_such_group(&group))?;
    if_match.check(&etag_of(&GroupView::from(&current)))?;
    let g = s.inventory.update_group(&group, change).await?;
    Ok(Tagged::new(GroupView::from(&g)))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Deleted {
    pub deleted: String,
}

/// Deletes a group. Refused (409 `group_in_use`, the machines named) while
/// machines are assigned to it or pinned in it, and always for `default`.
/// Machines its selector claimed go to the next group that claims them.
#[utoipa::path(delete, path = "/api/v1/groups/{group}", tag = "groups",
    params(("group" = String, Path, description = "Group name"),
           ("If-Match" = Option<String>, Header, description = "ETag of the group as last read")),
    responses((status = 200, body = Deleted)))]
async fn delete_group(
    _: Admin,
    State(s): State<ApiState>,
    ApiPath(group): ApiPath<String>,
    if_match: IfMatch,
) -> ApiResult<Json<Deleted>> {
    let _edit = s.edits.lock().await;
    let current = s
        .inventory
        .group(&group)
        .ok_or_else(|| no_such_group(&group))?;
    if_match.check(&etag_of(&GroupView::from(&current)))?;
    s.inventory.delete_group(&group).await?;
    Ok(Json(Deleted { deleted: group }))
}

/// The machines in a group, each with why it is in it (assigned, the
/// selector that matched, default, or a selector tie).
#[utoipa::path(get, path = "/api/v1/groups/{group}/members", tag = "groups",
    params(("group" = String, Path, description = "Group name")),
    responses((status = 200, body = MemberList)))]
async fn group_members(
    _: Reader,
    State(s): State<ApiState>,
    ApiPath(group): ApiPath<String>,
) -> ApiResult<Json<MemberList>> {
    if s.inventory.group(&group).is_none() {
        return Err(no_such_group(&group));
    }
    s.inventory.settle().await;
    let members = s.inventory.members(&group);
    Ok(Json(MemberList {
        group,
        members: members.iter().map(MemberView::from).collect(),
    }))
}

/// Points a group at a generation (creating the group if needed); the
/// group's slot for the generation's architecture moves with it.
#[utoipa::path(put, path = "/api/v1/groups/{group}/generation", tag = "groups",
    params(("group" = String, Path, description = "Group name")),
    request_body = GenerationRef,
    responses((status = 200, body = GroupView)))]
async fn set_group_generation(
    _: Admin,
    State(s): State<ApiState>,
    ApiPath(group): ApiPath<String>,
    ApiJson(body): ApiJson<GenerationRef>,
) -> ApiResult<Json<GroupView>> {
    valid_name("group", &group)?;
    let g = s.inventory.set_group_generation(&group, &body.id()).await?;
    Ok(Json(GroupView::from(&g)))
}

#[cfg(test)]
mod tests {
    use axum::http::{header, Method, StatusCode};
    use serde_json::json;

    use super::super::tests::{assert_error, Harness};

    #[tokio::test]
    async fn groups_are_created_validated_updated_with_if_match_and_deleted_only_when_unused() {
        let h = Harness::new().await;
        let admin = h.admin.clone();
        let post = |body| {
            let admin = admin.clone();
            let h = &h;
            async move {
                h.call(
                    Method::POST,
                    "/api/v1/groups",
                    Some(&admin),
                    Some(body),
                    &[],
                )
                .await
            }
        };
        // Validation: 400 naming the field.
        for (body, field) in [
            (
                json!({ "name": "db", "selector": "role in (db" }),
                "selector",
            ),
            (json!({ "name": "bad name" }), "name"),
            (json!({ "name": "db", "variables": [1] }), "variables"),
            (
                json!({ "name": "db", "variables": { "loader": "lilo" } }),
                "variables.loader",
            ),
            (
                json!({ "name": "db", "description": "a\u{7}b" }),
                "description",
            ),
        ] {
            let a = post(body.clone()).await;
            assert_error(&a, StatusCode::BAD_REQUEST, "invalid");
            assert_eq!(a.body["error"]["field"], field, "{body}");
        }
        let a = post(json!({ "name": "db", "selector": "role in (db" })).await;
        assert!(
            a.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("column 12"),
            "{}",
            a.body
        );
        let a = post(json!({ "name": "db", "generation": { "stream": "none", "generation": 1 } }))
            .await;
        assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "no_such_generation");
        assert_eq!(a.body["error"]["field"], "generation");
        let reader = h.reader.clone();
        let a = h
            .call(
                Method::POST,
                "/api/v1/groups",
                Some(&reader),
                Some(json!({ "name": "db" })),
                &[],
            )
            .await;
        assert_error(&a, StatusCode::FORBIDDEN, "forbidden");

        // Created, with its ETag; a second time is a conflict.
        let a =
            post(json!({ "name": "db", "description": "databases", "selector": "role==db" })).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        assert_eq!(a.body["selector"], "role=db");
        let tag = a.headers[header::ETAG].to_str().unwrap().to_string();
        assert_error(
            &post(json!({ "name": "db" })).await,
            StatusCode::CONFLICT,
            "group_exists",
        );
        let a = h
            .call(
                Method::PATCH,
                "/api/v1/groups/default",
                Some(&admin),
                Some(json!({ "selector": "role=x" })),
                &[],
            )
            .await;
        assert_error(&a, StatusCode::BAD_REQUEST, "invalid");
        assert_eq!(a.body["error"]["field"], "selector");

        // A labelled machine is a member, and says why.
        let mac = h.machine("52:54:00:00:00:31").await;
        h.state
            .inventory
            .set_labels(mac, [("role".into(), "db".into())].into())
            .await
            .unwrap();
        let a = h.get("/api/v1/groups/db/members").await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert_eq!(a.body["members"][0]["mac"], mac.to_string());
        assert_eq!(a.body["members"][0]["membership"]["by"], "selector");
        assert_eq!(
            a.body["members"][0]["membership"]["chosen"]["selector"],
            "role=db"
        );
        assert_eq!(
            h.get("/api/v1/groups/default/members").await.body["members"],
            json!([])
        );
        assert_eq!(h.get("/api/v1/groups").await.body["ties"], json!([]));
        let a = post(json!({ "name": "db2", "selector": "role in (db,sql)" })).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        let ties = h.get("/api/v1/groups").await.body["ties"].clone();
        assert_eq!(ties[0]["mac"], mac.to_string(), "{ties}");
        assert_eq!(ties[0]["membership"]["by"], "tie");
        assert!(ties[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("selector tie"));
        let a = h
            .call(
                Method::DELETE,
                "/api/v1/groups/db2",
                Some(&admin),
                None,
                &[],
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);

        // If-Match: the current tag passes, a stale one is 412.
        let patch = |tag: String, body| {
            let admin = admin.clone();
            let h = &h;
            async move {
                h.call(
                    Method::PATCH,
                    "/api/v1/groups/db",
                    Some(&admin),
                    Some(body),
                    &[("if-match", tag.as_str())],
                )
                .await
            }
        };
        let a = patch(tag.clone(), json!({ "variables": { "loader": "grub" } })).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert_eq!(a.body["selector"], "role=db", "untouched");
        let new_tag = a.headers[header::ETAG].to_str().unwrap().to_string();
        assert_ne!(new_tag, tag);
        let a = patch(tag, json!({ "description": "x" })).await;
        assert_error(&a, StatusCode::PRECONDITION_FAILED, "etag_mismatch");
        assert_eq!(
            h.get("/api/v1/groups/db").await.body["description"],
            "databases"
        );

        // Delete: refused while a machine is assigned, with the reason.
        h.state
            .inventory
            .assign_group(mac, Some("db"))
            .await
            .unwrap();
        let a = h
            .call(Method::DELETE, "/api/v1/groups/db", Some(&admin), None, &[])
            .await;
        assert_error(&a, StatusCode::CONFLICT, "group_in_use");
        let message = a.body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("explicitly assigned") && message.contains(&mac.to_string()),
            "{message}"
        );
        let a = h
            .call(
                Method::DELETE,
                "/api/v1/groups/default",
                Some(&admin),
                None,
                &[],
            )
            .await;
        assert_error(&a, StatusCode::CONFLICT, "group_in_use");
        h.state.inventory.assign_group(mac, None).await.unwrap();
        let a = patch(new_tag, json!({ "selector": null })).await;
        assert_eq!(a.body["selector"], json!(null), "{}", a.body);
        assert_eq!(
            h.state.inventory.machine(mac).unwrap().group,
            "default",
            "no selector: back to default"
        );
        let a = h
            .call(Method::DELETE, "/api/v1/groups/db", Some(&admin), None, &[])
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert_error(
            &h.get("/api/v1/groups/db").await,
            StatusCode::NOT_FOUND,
            "no_such_group",
        );
        assert_error(
            &h.get("/api/v1/groups/db/members").await,
            StatusCode::NOT_FOUND,
            "no_such_group",
        );
    }
}
