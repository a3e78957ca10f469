//! Templates: which ones the server has, and any of them rendered for a
//! machine without booting it ("what will node7 get?").

use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::*;
use crate::boot::Target;
use crate::explain::render_template;
use crate::render::{BOOT_IPXE, GRUB_CFG, ZTP_DIR};

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_templates))
        .routes(routes!(render_for_machine))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TemplateView {
    /// The name under `boot-templates/` (`ipxe/machine.ipxe`, `config/user-data`).
    pub name: String,
    /// `first` (the same for every machine), `loader` (a per-machine iPXE
    /// script or GRUB config), `config` (served to the booted OS at
    /// `/config/<token>/<file>`) or `ztp` (a switch's provisioning file).
    pub role: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TemplateList {
    pub templates: Vec<TemplateView>,
}

fn role(name: &str) -> &'static str {
    if name == BOOT_IPXE || name == GRUB_CFG {
        "first"
    } else if name.starts_with("config/") {
        "config"
    } else if name.starts_with(ZTP_DIR) {
        "ztp"
    } else {
        "loader"
    }
}

/// Every template the server renders.
#[utoipa::path(get, path = "/api/v1/templates", tag = "templates",
    responses((status = 200, body = TemplateList)))]
async fn list_templates(_: Reader, State(s): State<ApiState>) -> Json<TemplateList> {
    Json(TemplateList {
        templates: s
            .explainer
            .renderer
            .names()
            .into_iter()
            .map(|name| TemplateView {
                role: role(&name).into(),
                name,
            })
            .collect(),
    })
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RenderQuery {
    /// A template name from `GET /api/v1/templates`.
    pub template: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Rendered {
    pub mac: String,
    pub template: String,
    /// The group the machine is in now.
    pub group: String,
    /// `{"decision": "boot", …}` or `{"decision": "nothing", "reason"}`.
    #[schema(value_type = Object)]
    pub target: Target,
    /// The rendered text. URLs that carry a per-boot token carry
    /// `PREVIEW` instead: nothing was booted.
    pub text: String,
}

/// Renders a template for a machine as its next boot would (its facts,
/// group, variables and target generation now), without booting it.
#[utoipa::path(get, path = "/api/v1/machines/{mac}/render", tag = "templates",
    params(("mac" = String, Path, description = "The machine's MAC"), RenderQuery),
    responses((status = 200, body = Rendered)))]
async fn render_for_machine(
    _: Reader,
    State(s): State<ApiState>,
    ApiPath(mac): ApiPath<String>,
    ApiQuery(q): ApiQuery<RenderQuery>,
) -> ApiResult<Json<Rendered>> {
    let mac = parse_mac(&mac)?;
    let e = &s.explainer;
    if !e.renderer.has(&q.template) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_such_template",
            format!(
                "no template named {:?}; see GET /api/v1/templates",
                q.template
            ),
        )
        .with_field("template"));
    }
    s.inventory.settle().await;
    let text =
        render_template(&s.inventory, &e.renderer, &e.server, mac, &q.template).map_err(|err| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "render_failed",
                err.to_string(),
            )
            .with_field("template")
        })?;
    let decision = s.inventory.preview(
        mac,
        &crate::inventory::ScriptRequest {
            mac: Some(mac),
            ..Default::default()
        },
        None,
        None,
        crate::inventory::Stage::Netboot,
    );
    Ok(Json(Rendered {
        mac: mac.to_string(),
        template: q.template,
        group: decision.machine.group,
        target: decision.target,
        text,
    }))
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::super::tests::{assert_error, Harness};

    #[tokio::test]
    async fn templates_are_listed_and_rendered_for_a_machine_without_booting_it() {
        let h = Harness::new().await;
        let a = h.get("/api/v1/templates").await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        let names: Vec<(String, String)> = a.body["templates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["name"].as_str().unwrap().to_string(),
                    t["role"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        for want in [
            ("boot.ipxe", "first"),
            ("ipxe/machine.ipxe", "loader"),
            ("config/user-data", "config"),
            ("ztp/cumulus.sh", "ztp"),
        ] {
            assert!(
                names.contains(&(want.0.into(), want.1.into())),
                "{want:?} in {names:?}"
            );
        }

        let mac = h.machine("52:54:00:00:00:51").await;
        let boots = |h: &Harness| h.state.inventory.machine(mac).unwrap();
        let before = boots(&h);
        let a = h
            .get(&format!(
                "/api/v1/machines/{mac}/render?template=config/meta-data"
            ))
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert_eq!(a.body["group"], "default");
        assert!(
            a.body["text"]
                .as_str()
                .unwrap()
                .contains("node-525400000051"),
            "{}",
            a.body
        );
        let a = h
            .get(&format!(
                "/api/v1/machines/{mac}/render?template=ipxe/nothing.ipxe"
            ))
            .await;
        assert!(a.body["text"]
            .as_str()
            .unwrap()
            .contains("group default points at no generation"));
        assert_eq!(boots(&h).ip, before.ip, "nothing booted");

        let a = h
            .get(&format!("/api/v1/machines/{mac}/render?template=nope"))
            .await;
        assert_error(&a, StatusCode::NOT_FOUND, "no_such_template");
        assert_eq!(a.body["error"]["field"], "template");
        let a = h.get(&format!("/api/v1/machines/{mac}/render")).await;
        assert_error(&a, StatusCode::BAD_REQUEST, "invalid");
        // A machine that needs an image renders the failure, 422.
        let a = h
            .get(&format!(
                "/api/v1/machines/{mac}/render?template=ipxe/machine.ipxe"
            ))
            .await;
        assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "render_failed");
    }
}
