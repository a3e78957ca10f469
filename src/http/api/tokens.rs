//! API tokens (admin only): list, create (the secret is shown once, stored
//! as its sha256), revoke.

use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::*;
use crate::auth::{AuthError, TokenInfo};

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
}

/// A token as listed; never its secret.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    pub id: i64,
    pub name: String,
    /// `admin` or `read`.
    pub role: String,
    pub created_ms: i64,
    /// When it was revoked (it no longer works).
    pub revoked_ms: Option<i64>,
}

impl From<TokenInfo> for TokenView {
    fn from(t: TokenInfo) -> Self {
        Self {
            id: t.id,
            name: t.name,
            role: t.role.as_str().into(),
            created_ms: t.created_ms,
            revoked_ms: t.revoked_ms,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    pub tokens: Vec<TokenView>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// Who or what it is for (`ci`, `alice`).
    pub name: String,
    /// `admin` (may change things) or `read` (may only look).
    pub role: String,
}

/// A new token: `secret` is shown this once and cannot be read again.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub token: TokenView,
    pub secret: String,
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::LastAdmin => Self::new(StatusCode::CONFLICT, "last_admin", e.to_string()),
            other => Self::internal(other),
        }
    }
}

/// Every token, revoked ones too, oldest first.
#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens",
    responses((status = 200, body = TokenList)))]
async fn list_tokens(_: Admin, State(s): State<ApiState>) -> ApiResult<Json<TokenList>> {
    let tokens = Tokens::list(&s.store).await?;
    Ok(Json(TokenList {
        tokens: tokens.into_iter().map(TokenView::from).collect(),
    }))
}

/// Creates a token.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens",
    request_body = NewToken,
    responses((status = 201, body = CreatedToken)))]
async fn create_token(
    _: Admin,
    State(s): State<ApiState>,
    ApiJson(req): ApiJson<NewToken>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    valid_name("name", &req.name)?;
    let role: Role = req
        .role
        .parse()
        .map_err(|e: crate::domain::UnknownText| ApiError::bad("role", e.to_string()))?;
    let (info, secret) = s.tokens.create(&s.store, &req.name, role).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            token: info.into(),
            secret,
        }),
    ))
}

/// Revokes a token: requests with it are refused from now on. The last
/// admin token cannot be revoked (409).
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens",
    params(("id" = i64, Path, description = "The token's id (from the list)")),
    responses((status = 200, body = TokenView)))]
async fn revoke_token(
    _: Admin,
    State(s): State<ApiState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<TokenView>> {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::bad("id", format!("{id:?} is not a token id")))?;
    let revoked = s.tokens.revoke(&s.store, id).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_such_token",
            format!("no live token has id {id}"),
        )
    })?;
    Ok(Json(revoked.into()))
}

#[cfg(test)]
mod tests {
    use axum::http::{Method, StatusCode};
    use serde_json::json;

    use super::super::tests::{assert_error, Harness};

    #[tokio::test]
    async fn admins_create_list_and_revoke_tokens_whose_secret_is_shown_once() {
        let h = Harness::new().await;
        let (admin, reader) = (h.admin.clone(), h.reader.clone());
        let a = h
            .call(Method::GET, "/api/v1/tokens", Some(&reader), None, &[])
            .await;
        assert_error(&a, StatusCode::FORBIDDEN, "forbidden");
        let a = h
            .call(
                Method::POST,
                "/api/v1/tokens",
                Some(&admin),
                Some(json!({ "name": "ci", "role": "read" })),
                &[],
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        let secret = a.body["secret"].as_str().unwrap().to_string();
        let id = a.body["id"].as_i64().unwrap();
        assert_eq!(a.body["role"], "read");
        // It works, read-only; it is stored hashed.
        let a = h
            .call(Method::GET, "/api/v1/machines", Some(&secret), None, &[])
            .await;
        assert_eq!(a.status, StatusCode::OK);
        let (stored,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM api_tokens WHERE hash = ? OR name = ?")
                .bind(&secret)
                .bind(&secret)
                .fetch_one(h.state.store.sqlite_pool())
                .await
                .unwrap();
        assert_eq!(stored, 0, "the secret is not in the database");

        let list = h
            .call(Method::GET, "/api/v1/tokens", Some(&admin), None, &[])
            .await;
        let names: Vec<&str> = list.body["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["admin", "viewer", "ci"]);
        assert!(!list.body.to_string().contains(&secret));

        let a = h
            .call(
                Method::DELETE,
                &format!("/api/v1/tokens/{id}"),
                Some(&admin),
                None,
                &[],
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert!(a.body["revoked_ms"].is_i64());
        let a = h
            .call(Method::GET, "/api/v1/machines", Some(&secret), None, &[])
            .await;
        assert_error(&a, StatusCode::UNAUTHORIZED, "bad_token");
        let a = h
            .call(
                Method::DELETE,
                &format!("/api/v1/tokens/{id}"),
                Some(&admin),
                None,
                &[],
            )
            .await;
        assert_error(&a, StatusCode::NOT_FOUND, "no_such_token");
        // The only admin token cannot be revoked.
        let a = h
            .call(Method::DELETE, "/api/v1/tokens/1", Some(&admin), None, &[])
            .await;
        assert_error(&a, StatusCode::CONFLICT, "last_admin");
        for (body, field) in [
            (json!({ "name": "x", "role": "root" }), "role"),
            (json!({ "name": "", "role": "read" }), "name"),
        ] {
            let a = h
                .call(
                    Method::POST,
                    "/api/v1/tokens",
                    Some(&admin),
                    Some(body),
                    &[],
                )
                .await;
            assert_error(&a, StatusCode::BAD_REQUEST, "invalid");
            assert_eq!(a.body["error"]["field"], field);
        }
    }
}
