//! Signing in to the dashboard with an API token.
//!
//! The token is kept in a cookie the page's script cannot read (`HttpOnly`),
//! that no other site's page or form sends (`SameSite=Strict`) and that only
//! `/ui` sees (`Path=/ui`; the API itself takes bearer tokens only, so the
//! cookie alone opens nothing there). It is checked on every page (a
//! revoked token signs the operator out at the next click) and handed to
//! the API as the bearer of each call the page makes.
//!
//! Every form also carries a *form key*, a hash of the session's token: a
//! post without it, or with another session's key, is refused before the
//! API sees it. With `SameSite=Strict` that is a second lock on the same
//! door (a browser that ignores SameSite still cannot forge a post).

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{render_raw, UiState};
use crate::auth::{Principal, Role};

/// The cookie's name.
const COOKIE: &str = "ironboot_ui";

/// A signed-in operator: their token and what it may do.
pub struct Session {
    token: String,
    who: Principal,
}

impl Session {
    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn who(&self) -> &str {
        &self.who.name
    }

    pub fn is_admin(&self) -> bool {
        self.who.role == Role::Admin
    }

    /// The key every form of this session carries.
    pub fn form_key(&self) -> String {
        Self::key_for(&self.token)
    }

    /// The form key of the session of `token`.
    pub(super) fn key_for(token: &str) -> String {
        let mut h = Sha256::new();
        h.update(b"ironboot dashboard form key\0");
        h.update(token.as_bytes());
        hex::encode(&h.finalize()[..16])
    }

    /// Whether a posted form key is this session's.
    pub fn owns(&self, key: &str) -> bool {
        let mine = self.form_key();
        // Both are hex of one length; compare without an early exit.
        mine.len() == key.len()
            && mine
                .bytes()
                .zip(key.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// The token in the request's `Cookie` header, if any.
fn cookie_token(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE && !value.is_empty()).then(|| value.to_string())
        })
}

impl FromRequestParts<UiState> for Session {
    /// No session, or a dead token: to the sign-in page (a fragment or a
    /// stream gets a bare 401 rather than a page it would paste in).
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &UiState) -> Result<Self, Response> {
        let session = cookie_token(parts).and_then(|token| {
            let who = state.tokens.check(&token)?;
            Some(Session { token, who })
        });
        session.ok_or_else(|| {
            let page = parts
                .headers
                .get(header::ACCEPT)
                .is_some_and(|a| a.to_str().is_ok_and(|a| a.contains("text/html")));
            if page && parts.method == axum::http::Method::GET {
                Redirect::to("/ui/login").into_response()
            } else {
                (StatusCode::UNAUTHORIZED, "sign in at /ui/login\n").into_response()
            }
        })
    }
}

/// What the sign-in page sees: nobody signed in.
fn signed_out(error: Option<&str>) -> minijinja::Value {
    minijinja::context! { section => "login", me => (), admin => false, error }
}

pub async fn login_form(State(state): State<UiState>) -> Response {
    render_raw(&state, "login.html", signed_out(None))
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
}

/// A token is at most this long (the ones ironboot makes are 43).
const MAX_TOKEN: usize = 256;

pub async fn login(State(state): State<UiState>, Form(form): Form<LoginForm>) -> Response {
    let token = form.token.trim();
    // Only what a cookie can carry as is; ironboot's tokens are URL-safe
    // base64, so anything else is not one of them.
    let well_formed = !token.is_empty()
        && token.len() <= MAX_TOKEN
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !well_formed || state.tokens.check(token).is_none() {
        tracing::info!("dashboard sign-in refused: unknown token");
        let mut res = render_raw(
            &state,
            "login.html",
            signed_out(Some("That is not a live API token.")),
        );
        *res.status_mut() = StatusCode::UNAUTHORIZED;
        return res;
    }
    let cookie = format!("{COOKIE}={token}; Path=/ui; HttpOnly; SameSite=Strict");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/ui/")).into_response()
}

#[derive(Deserialize)]
pub struct KeyOnly {
    #[serde(default)]
    form_key: String,
}

pub async fn logout(session: Session, Form(form): Form<KeyOnly>) -> Response {
    if !session.owns(&form.form_key) {
        return super::actions::forged();
    }
    let cookie = format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/ui/login")).into_response()
}
