//! The dashboard under `/ui/`: server-rendered HTML pages over the REST
//! API, for operators who look before they type.
//!
//! **The dashboard is a client of the API, in the same process.** Every
//! page reads through `/api/v1/` and every button posts to it, dispatched
//! in memory through the API's own router ([`Api::call`]) with the
//! signed-in operator's token as the bearer. So a read token sees what the
//! API shows it and changes nothing, an admin's change passes the same
//! validation, If-Match and role checks as `curl` or the CLI, and the
//! dashboard cannot grow a second, laxer code path. What it adds is HTML.
//!
//! - [`session`]: sign-in with an API token, kept in an `HttpOnly`,
//!   `SameSite=Strict` cookie scoped to `/ui`; a per-token form key
//!   against forged posts.
//! - [`pages`]: the fleet, a machine (its boot timeline live), groups and
//!   streams, rollouts (live), the watchdog, events (live), `explain`.
//! - [`actions`]: the forms' POST handlers (admin).
//! - `templates/`: minijinja pages, HTML-escaped by default; `assets/`:
//!   one stylesheet and one small script, embedded in the binary.
//!
//! Why no front-end framework: the pages are tables and forms, which HTML
//! does well and a screen reader and a keyboard already understand; the
//! only script opens a Server-Sent Events stream and swaps in a fragment
//! the server rendered. Every asset together is a few kilobytes (the
//! budget is 300 KB), nothing is built at run time, and the
//! `Content-Security-Policy` lets a page load nothing from another origin.

mod actions;
mod pages;
mod session;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use minijinja::Environment;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;
use tower::ServiceExt;

use crate::auth::Tokens;

pub use session::Session;

/// What the dashboard's handlers share.
#[derive(Clone)]
pub struct UiState {
    /// The REST API's router: every read and change goes through it.
    api: Api,
    /// To check a token at sign-in (the API checks it again on each call).
    tokens: Arc<Tokens>,
    pages: Arc<Environment<'static>>,
    /// The services bound (as `/healthz` names them) and when it started.
    services: Arc<Vec<String>>,
    started: std::time::Instant,
}

impl UiState {
    /// `api`: the router [`crate::http::api::router`] returned, the one the
    /// server also serves.
    pub fn new(api: Router, tokens: Arc<Tokens>, services: Arc<Vec<String>>) -> Self {
        Self {
            api: Api(api),
            tokens,
            pages: Arc::new(pages::environment()),
            services,
            started: std::time::Instant::now(),
        }
    }

    /// What the events page says of the server itself.
    fn health(&self) -> serde_json::Value {
        let up = std::time::Duration::from_secs(self.started.elapsed().as_secs());
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "services": *self.services,
            "uptime": humantime::format_duration(up).to_string(),
        })
    }
}

/// A page handler's answer: the page, or what to show instead (the sign-in
/// page for a dead token, the API's refusal), so a handler reads with `?`.
type Page = Result<Response, Response>;

impl UiState {
    /// Reads `uri` through the API as the session's operator; a refusal
    /// becomes the page to show instead.
    async fn read<T: DeserializeOwned>(&self, session: &Session, uri: &str) -> Result<T, Response> {
        self.api
            .get(session.token(), uri)
            .await
            .map_err(|r| refused(self, session, r))
    }
}

/// `text` as one path segment or query value: every byte but the
/// unreserved ones percent-encoded, so a name cannot reach another path.
fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out += &format!("%{b:02X}");
        }
    }
    out
}

/// The dashboard's routes (everything under `/ui`).
pub fn router(state: UiState) -> Router {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(pages::fleet))
        .route("/ui/login", get(session::login_form).post(session::login))
        .route("/ui/logout", post(session::logout))
        .route("/ui/machines/{mac}", get(pages::machine))
        .route("/ui/machines/{mac}/timeline", get(pages::timeline))
        .route("/ui/groups", get(pages::groups))
        .route("/ui/groups/{group}", get(pages::group))
        .route("/ui/streams/{stream}", get(pages::stream))
        .route("/ui/rollouts", get(pages::rollouts))
        .route("/ui/rollouts/{id}", get(pages::rollout))
        .route("/ui/rollouts/{id}/body", get(pages::rollout_body))
        .route("/ui/watchdog", get(pages::watchdog))
        .route("/ui/events", get(pages::events))
        .route("/ui/explain", get(pages::explain))
        .route("/ui/live", get(pages::live))
        .route("/ui/assets/{name}", get(asset))
        .route("/ui/rollouts", post(actions::start_rollout))
        .route("/ui/rollouts/{id}/{verb}", post(actions::rollout_verb))
        .route("/ui/groups/{group}/generation", post(actions::move_pointer))
        .route("/ui/machines/{mac}/degraded", post(actions::clear_degraded))
        // Not a fallback: the server's router merges the API's, which has one.
        .route(
            "/ui/{*rest}",
            get(|| async { (StatusCode::NOT_FOUND, "no such page\n") }),
        )
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(state)
}

/// Every dashboard answer: no script, style, frame or form target from
/// another origin; no sniffing; pages are not cached (they hold fleet data).
async fn secure_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    res
}

/// The stylesheet and the script, embedded (cached for five minutes: an
/// upgraded server's assets reach a browser within that).
pub(crate) const ASSETS: &[(&str, &str, &str)] = &[
    ("ui.css", "text/css", include_str!("assets/ui.css")),
    ("ui.js", "text/javascript", include_str!("assets/ui.js")),
];

async fn asset(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, mime, text)) => (
            [
                (header::CONTENT_TYPE, *mime),
                (header::CACHE_CONTROL, "max-age=300"),
            ],
            *text,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    }
}

/// The REST API, called in memory.
#[derive(Clone)]
struct Api(Router);

/// What an API call answered when it was not a success.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The token is unknown or revoked: sign in again.
    SignIn,
    /// A 4xx with the API's own message (shown to the operator as is).
    Api {
        status: StatusCode,
        code: String,
        message: String,
    },
    /// The server failed (logged by the API); the page says so and no more.
    Failed,
}

impl Refused {
    pub(crate) fn message(&self) -> String {
        match self {
            Refused::SignIn => "sign in again".into(),
            Refused::Api { message, code, .. } => format!("{message} ({code})"),
            Refused::Failed => "the server failed to answer; see its log".into(),
        }
    }
}

impl Api {
    /// One API request with `token` as the bearer, dispatched through the
    /// API router without a socket.
    async fn send(
        &self,
        token: &str,
        method: Method,
        uri: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Response, Refused> {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
        let body = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(serde_json::to_vec(v).map_err(|_| Refused::Failed)?)
            }
            None => Body::empty(),
        };
        let req = req.body(body).map_err(|_| Refused::Failed)?;
        let res = match self.0.clone().oneshot(req).await {
            Ok(res) => res,
            Err(never) => match never {},
        };
        let status = res.status();
        if status.is_success() {
            return Ok(res);
        }
        if status == StatusCode::UNAUTHORIZED {
            return Err(Refused::SignIn);
        }
        if status.is_server_error() {
            return Err(Refused::Failed);
        }
        let bytes = axum::body::to_bytes(res.into_body(), 64 << 10)
            .await
            .map_err(|_| Refused::Failed)?;
        let (code, message) = match serde_json::from_slice::<super::api::ErrorBody>(&bytes) {
            Ok(e) => (e.error.code, e.error.message),
            Err(_) => (
                status.as_str().into(),
                String::from_utf8_lossy(&bytes).into(),
            ),
        };
        Err(Refused::Api {
            status,
            code,
            message,
        })
    }

    /// A call whose answer is JSON of type `T`.
    async fn call<T: DeserializeOwned>(
        &self,
        token: &str,
        method: Method,
        uri: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T, Refused> {
        let res = self.send(token, method, uri, body).await?;
        let bytes = axum::body::to_bytes(res.into_body(), 256 << 20)
            .await
            .map_err(|_| Refused::Failed)?;
        serde_json::from_slice(&bytes).map_err(|e| {
            tracing::error!(uri, error = %e, "dashboard could not read an API answer");
            Refused::Failed
        })
    }

    async fn get<T: DeserializeOwned>(&self, token: &str, uri: &str) -> Result<T, Refused> {
        self.call(token, Method::GET, uri, None).await
    }
}

/// Renders page `name` with `ctx`; the session adds who is signed in and
/// the form key.
fn render(state: &UiState, session: &Session, name: &str, ctx: impl Serialize) -> Response {
    let section = match name {
        "machine.html" | "timeline.html" | "fleet.html" => "fleet",
        "group.html" | "stream.html" => "groups",
        "rollout.html" | "rollout_body.html" => "rollouts",
        other => other.trim_end_matches(".html"),
    };
    let ctx = minijinja::context! {
        section,
        me => session.who(),
        admin => session.is_admin(),
        form_key => session.form_key(),
        ..minijinja::Value::from_serialize(&ctx)
    };
    render_raw(state, name, ctx)
}

/// Renders a page that needs no session (sign-in).
fn render_raw(state: &UiState, name: &str, ctx: minijinja::Value) -> Response {
    match state.pages.get_template(name).and_then(|t| t.render(ctx)) {
        Ok(html) => ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response(),
        Err(e) => {
            tracing::error!(page = name, error = %format!("{e:#}"), "dashboard page failed to render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page failed to render; see the server's log\n",
            )
                .into_response()
        }
    }
}

/// What a page shows when the API refused its read: sign-in for a dead
/// token, the API's message otherwise (with its status).
fn refused(state: &UiState, session: &Session, r: Refused) -> Response {
    let status = match &r {
        Refused::SignIn => return Redirect::to("/ui/login").into_response(),
        Refused::Api { status, .. } => *status,
        Refused::Failed => StatusCode::BAD_GATEWAY,
    };
    let mut res = render(
        state,
        session,
        "error.html",
        minijinja::context! { message => r.message() },
    );
    *res.status_mut() = status;
    res
}

#[cfg(test)]
mod tests;
