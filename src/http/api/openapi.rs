//! The OpenAPI 3.1 document, assembled from the handlers' own
//! `#[utoipa::path]` annotations and types (never written by hand), served
//! at `/api/v1/openapi.json`.
//!
//! What every operation shares is added here once, after the resource
//! routers are merged: the bearer security scheme, and the error responses
//! (`4XX`: the JSON [`ErrorBody`]), so no handler can forget to document
//! them and the fuzz test (`tests/api_fuzz.rs`) holds every error to that
//! schema.

use utoipa::openapi::path::Operation;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref};
use utoipa::OpenApi as _;

use super::ErrorBody;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "ironboot inventory API",
        description = "Machines, groups, images, boots and events of an ironboot server, \
            and the servers that share its database. \
            Every request carries `Authorization: Bearer <token>`: a `read` token may look, \
            an `admin` token may also change. Errors are `{\"error\": {\"code\", \"message\", \"field\"}}`. \
            Updates accept `If-Match` with the `ETag` of the resource as last read; a mismatch is 412.",
        license(name = "Apache-2.0")
    ),
    components(schemas(ErrorBody)),
    security(("bearer" = []))
)]
struct Base;

/// The document's skeleton (info, shared components); the resource routers
/// add their paths to it.
pub(super) fn base() -> OpenApi {
    Base::openapi()
}

/// Adds what every operation shares: the bearer scheme and the JSON error
/// responses.
pub(super) fn finish(mut doc: OpenApi) -> OpenApi {
    let components = doc.components.get_or_insert_with(Default::default);
    components.security_schemes.insert(
        "bearer".into(),
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "An API token (`admin` or `read`); see `ironboot tokens`.",
                ))
                .build(),
        ),
    );
    for item in doc.paths.paths.values_mut() {
        // HEAD answers carry no body, so no JSON error either.
        if let Some(head) = &mut item.head {
            let refused = ResponseBuilder::new()
                .description("Refused: no or bad token (401), not found (404), invalid (400)")
                .build();
            head.responses
                .responses
                .entry("4XX".into())
                .or_insert(refused.into());
        }
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            add_error_responses(op);
        }
    }
    doc
}

fn add_error_responses(op: &mut Operation) {
    let error = ResponseBuilder::new()
        .description(
            "The request was refused: 400 invalid, 401 no or bad token, 403 read-only token, \
             404 not found, 409 conflict, 412 If-Match does not match the ETag, 415/422 bad body.",
        )
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build();
    op.responses
        .responses
        .entry("4XX".into())
        .or_insert(error.into());
}
