//! Groups and their generation pointers.

use axum::extract::{Path, State};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::*;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/groups", get(list_groups))
        .route(
            "/api/v1/groups/{group}/generation",
            put(set_group_generation),
        )
}

async fn list_groups(_: Reader, State(s): State<ApiState>) -> Json<Value> {
    Json(json!({ "groups": s.inventory.groups() }))
}

async fn set_group_generation(
    _: Admin,
    State(s): State<ApiState>,
    Path(group): Path<String>,
    ApiJson(body): ApiJson<GenerationRef>,
) -> ApiResult<Json<Value>> {
    valid_name("group", &group)?;
    let g = s
        .inventory
        .set_group_generation(&group, &GenerationId::new(body.stream, body.generation))
        .await?;
    Ok(Json(json!(g)))
}
