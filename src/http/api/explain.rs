//! `POST /api/v1/explain`: what a MAC (with the DHCP options or ONIE
//! headers a client would send) would be served, and why, step by step.
//! The answer comes from [`crate::explain`], which runs the boot path's own
//! decisions without booting anything.

use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;

use super::*;
use crate::explain::{onie_headers, Explanation, Query};

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new().routes(routes!(explain))
}

/// What a client would send. Only `mac` is required; with no DHCP option
/// and no ONIE header the answer is what the machine's loader gets when it
/// asks for its script.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExplainBody {
    /// `52:54:00:12:34:56` (or with `-`).
    pub mac: String,
    /// DHCP option 93: 0 BIOS, 7 x64 UEFI, 11 arm64 UEFI, 16 x64 HTTP boot, 19 arm64 HTTP boot.
    #[serde(default)]
    pub arch: Option<u16>,
    /// DHCP option 60, e.g. `PXEClient:Arch:00007:UNDI:003016`,
    /// `HTTPClient:Arch:00016:UNDI:003001`, `onie_vendor:x86_64-acme_widget-r0`.
    #[serde(default)]
    pub vendor_class: Option<String>,
    /// DHCP option 77 (`iPXE` once iPXE runs).
    #[serde(default)]
    pub user_class: Option<String>,
    /// The client is iPXE (user class `iPXE` and option 175).
    #[serde(default)]
    pub ipxe: bool,
    /// The client asks for option 239 (network-OS zero-touch provisioning).
    #[serde(default)]
    pub ztp: bool,
    /// Option 82 circuit-id, as the relay sends it.
    #[serde(default)]
    pub circuit_id: Option<String>,
    /// Option 82 remote-id.
    #[serde(default)]
    pub remote_id: Option<String>,
    /// `ONIE-*` request headers of an installer download
    /// (`{"ONIE-ARCH": "x86_64", "ONIE-SERIAL-NUMBER": "…"}`).
    #[serde(default)]
    pub onie: Option<BTreeMap<String, String>>,
}

fn text_field(field: &'static str, value: &Option<String>) -> ApiResult<()> {
    match value {
        Some(v) if v.is_empty() || v.len() > 255 || v.chars().any(char::is_control) => Err(
            ApiError::bad(field, "1-255 characters, no control characters"),
        ),
        _ => Ok(()),
    }
}

impl ExplainBody {
    fn query(self) -> ApiResult<Query> {
        let mac = parse_mac(&self.mac)?;
        text_field("vendor_class", &self.vendor_class)?;
        text_field("user_class", &self.user_class)?;
        text_field("circuit_id", &self.circuit_id)?;
        text_field("remote_id", &self.remote_id)?;
        if let Some(headers) = &self.onie {
            if let Some(bad) = headers
                .keys()
                .find(|k| !k.to_ascii_uppercase().starts_with("ONIE-"))
            {
                return Err(ApiError::bad(
                    "onie",
                    format!("{bad:?} is not an ONIE-* header"),
                ));
            }
        }
        Ok(Query {
            arch: self.arch,
            vendor_class: self.vendor_class,
            user_class: self.user_class,
            ipxe: self.ipxe,
            ztp: self.ztp,
            circuit_id: self.circuit_id,
            remote_id: self.remote_id,
            onie: self.onie.as_ref().map(onie_headers),
            ..Query::new(mac)
        })
    }
}

/// Explains what a client would be served: which identity matched, its
/// group and why (explicit, a selector, default, or a selector tie), pin,
/// target generation, the DHCP answer and its options, the loader, and the
/// rendered script or installer. Changes nothing.
#[utoipa::path(post, path = "/api/v1/explain", tag = "explain",
    request_body = ExplainBody,
    responses((status = 200, body = Explanation)))]
async fn explain(
    _: Reader,
    State(s): State<ApiState>,
    ApiJson(body): ApiJson<ExplainBody>,
) -> ApiResult<Json<Explanation>> {
    let query = body.query()?;
    s.inventory.settle().await;
    Ok(Json(s.explainer.explain(&query)))
}

#[cfg(test)]
mod tests {
    use axum::http::{Method, StatusCode};
    use serde_json::json;

    use super::super::tests::{assert_error, Harness};

    #[tokio::test]
    async fn explain_answers_with_steps_validates_and_changes_nothing() {
        let h = Harness::new().await;
        let mac = h.machine("52:54:00:00:00:41").await;
        h.state
            .inventory
            .set_labels(mac, [("role".into(), "db".into())].into())
            .await
            .unwrap();
        let admin = h.admin.clone();
        let a = h
            .call(
                Method::POST,
                "/api/v1/groups",
                Some(&admin),
                Some(json!({ "name": "db", "selector": "role=db" })),
                &[],
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        let reader = h.reader.clone();
        let post = |body| {
            let reader = reader.clone();
            let h = &h;
            async move {
                h.call(
                    Method::POST,
                    "/api/v1/explain",
                    Some(&reader),
                    Some(body),
                    &[],
                )
                .await
            }
        };
        let a = post(json!({ "mac": mac.to_string(), "arch": 7, "vendor_class": "PXEClient:Arch:00007:UNDI:003016" })).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert_eq!(a.body["group"]["name"], "db");
        assert_eq!(a.body["group"]["membership"]["by"], "selector");
        assert_eq!(a.body["dhcp"]["bootfile"]["file"], "ipxe.efi");
        assert_eq!(a.body["target"]["decision"], "nothing");
        assert!(a.body["steps"].as_array().unwrap().len() >= 6, "{}", a.body);
        assert_eq!(a.body["script"]["template"], "ipxe/nothing.ipxe");

        let stranger = post(json!({ "mac": "52:54:00:00:99:01", "ipxe": true })).await;
        assert_eq!(stranger.body["identity"]["known"], false);
        assert_eq!(stranger.body["client"]["kind"], "ipxe");
        assert!(h
            .state
            .inventory
            .machine("52:54:00:00:99:01".parse().unwrap())
            .is_none());

        for (body, field) in [
            (json!({ "mac": "nope" }), "mac"),
            (
                json!({ "mac": mac.to_string(), "vendor_class": "" }),
                "vendor_class",
            ),
            (
                json!({ "mac": mac.to_string(), "onie": { "Host": "x" } }),
                "onie",
            ),
        ] {
            let a = post(body.clone()).await;
            assert_error(&a, StatusCode::BAD_REQUEST, "invalid");
            assert_eq!(a.body["error"]["field"], field, "{body}");
        }
        let a = post(json!({ "mac": mac.to_string(), "arch": "bios" })).await;
        assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid_json");
        let a = h
            .call(
                Method::POST,
                "/api/v1/explain",
                None,
                Some(json!({ "mac": mac.to_string() })),
                &[],
            )
            .await;
        assert_error(&a, StatusCode::UNAUTHORIZED, "unauthenticated");
    }
}

#[cfg(test)]
mod openapi_refs {
    /// Every `$ref` in the document names a schema it defines.
    #[test]
    fn every_reference_resolves() {
        let doc = serde_json::to_value(super::super::openapi_document()).unwrap();
        let schemas = doc["components"]["schemas"].as_object().unwrap().clone();
        fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(o) => {
                    if let Some(r) = o.get("$ref").and_then(|r| r.as_str()) {
                        out.push(r.to_string());
                    }
                    o.values().for_each(|v| walk(v, out));
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        let mut refs = Vec::new();
        walk(&doc, &mut refs);
        for r in refs {
            let name = r.trim_start_matches("#/components/schemas/");
            assert!(schemas.contains_key(name), "{r} does not resolve");
        }
        assert!(schemas.contains_key("explain.Explanation"));
    }
}
