//! Groups and their generation pointers.

use axum::Json;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::*;

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_groups))
        .routes(routes!(set_group_generation))
}

/// A group as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupView {
    pub name: String,
    /// The generation pointer set last.
    pub pointer: Option<GenerationRef>,
    /// One generation per architecture slot (`x86_64`, `arm64`,
    /// `x86_64/installer`): machines boot the one for theirs.
    pub by_arch: BTreeMap<String, GenerationRef>,
    /// Template variables.
    pub variables: Value,
}

impl From<&crate::inventory::Group> for GroupView {
    fn from(g: &crate::inventory::Group) -> Self {
        Self {
            name: g.name.clone(),
            pointer: g.pointer.as_ref().map(GenerationRef::from),
            by_arch: g
                .by_arch
                .iter()
                .map(|(slot, id)| (slot.clone(), GenerationRef::from(id)))
                .collect(),
            variables: g.variables.clone(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GroupList {
    pub groups: Vec<GroupView>,
}

/// Every group with its generation pointers.
#[utoipa::path(get, path = "/api/v1/groups", tag = "groups",
    responses((status = 200, body = GroupList)))]
async fn list_groups(_: Reader, State(s): State<ApiState>) -> Json<GroupList> {
    Json(GroupList {
        groups: s.inventory.groups().iter().map(GroupView::from).collect(),
    })
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
