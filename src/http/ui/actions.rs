//! The dashboard's forms. Each checks the session's form key, turns the
//! form into the API's request and sends it as the signed-in operator:
//! the API decides (a read token gets the API's 403, an invalid value the
//! API's message), and the operator lands back on the page they came from.

use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{refused, segment, Refused, Session, UiState};
use crate::http::api::views::RolloutView;

/// A post without this session's form key (another site's form, an old
/// tab of another session, a hand-made request).
pub fn forged() -> Response {
    (
        StatusCode::FORBIDDEN,
        "refused: this form did not come from your dashboard session\n",
    )
        .into_response()
}

/// A form the dashboard cannot turn into an API request, refused as the
/// API refuses an invalid field (400).
fn invalid(message: String) -> Refused {
    Refused::Api {
        status: StatusCode::BAD_REQUEST,
        code: "invalid".into(),
        message,
    }
}

/// Sends one change; on success goes to `back`, else shows the API's refusal.
async fn change(
    state: &UiState,
    session: &Session,
    method: Method,
    uri: &str,
    body: Option<Value>,
    back: String,
) -> Response {
    match state
        .api
        .send(session.token(), method, uri, body.as_ref())
        .await
    {
        Ok(_) => Redirect::to(&back).into_response(),
        Err(r) => refused(state, session, r),
    }
}

#[derive(Deserialize)]
pub struct StartForm {
    #[serde(default)]
    form_key: String,
    group: String,
    stream: String,
    to: String,
    #[serde(default)]
    strategy: String,
    #[serde(default)]
    canary: String,
    #[serde(default)]
    steps: String,
    #[serde(default)]
    timeout: String,
    #[serde(default)]
    require: String,
    /// A checkbox: present when ticked.
    #[serde(default)]
    rollback: Option<String>,
}

impl StartForm {
    /// The API's start request; empty fields take the API's defaults.
    fn body(&self) -> Result<Value, String> {
        let to: i64 = self
            .to
            .trim()
            .parse()
            .map_err(|_| format!("generation {:?} is not a number", self.to))?;
        let mut body = json!({
            "group": self.group.trim(),
            "stream": self.stream.trim(),
            "to": to,
            "rollback": self.rollback.is_some(),
        });
        let mut set = |key: &str, value: Value| {
            body[key] = value;
        };
        let text = |s: &str| Some(s.trim()).filter(|s| !s.is_empty()).map(str::to_string);
        if let Some(s) = text(&self.strategy) {
            set("strategy", json!(s));
        }
        if let Some(c) = text(&self.canary) {
            // A count, a share, or MACs separated by commas or spaces.
            let v = match c.parse::<u64>() {
                Ok(n) => json!(n),
                Err(_) if c.ends_with('%') => json!(c),
                Err(_) => json!(c
                    .split([',', ' '])
                    .filter(|m| !m.is_empty())
                    .collect::<Vec<_>>()),
            };
            set("canary", v);
        }
        if let Some(s) = text(&self.steps) {
            set("steps", json!(s));
        }
        if let Some(t) = text(&self.timeout) {
            set("timeout", json!(t));
        }
        if let Some(r) = text(&self.require) {
            set("require", json!(r));
        }
        Ok(body)
    }
}

pub async fn start_rollout(
    State(state): State<UiState>,
    session: Session,
    Form(form): Form<StartForm>,
) -> Response {
    if !session.owns(&form.form_key) {
        return forged();
    }
    let body = match form.body() {
        Ok(b) => b,
        Err(message) => return refused(&state, &session, invalid(message)),
    };
    match state
        .api
        .call::<RolloutView>(
            session.token(),
            Method::POST,
            "/api/v1/rollouts",
            Some(&body),
        )
        .await
    {
        Ok(r) => Redirect::to(&format!("/ui/rollouts/{}", r.id)).into_response(),
        Err(r) => refused(&state, &session, r),
    }
}

#[derive(Deserialize)]
pub struct VerbForm {
    #[serde(default)]
    form_key: String,
    #[serde(default)]
    reason: String,
}

/// Pause, resume or abort a rollout.
pub async fn rollout_verb(
    State(state): State<UiState>,
    session: Session,
    Path((id, verb)): Path<(i64, String)>,
    Form(form): Form<VerbForm>,
) -> Response {
    if !session.owns(&form.form_key) {
        return forged();
    }
    let body = match verb.as_str() {
        "pause" | "resume" => None,
        "abort" => {
            let reason = form.reason.trim();
            (!reason.is_empty()).then(|| json!({ "reason": reason }))
        }
        _ => return (StatusCode::NOT_FOUND, "no such action\n").into_response(),
    };
    let uri = format!("/api/v1/rollouts/{id}/{verb}");
    change(
        &state,
        &session,
        Method::POST,
        &uri,
        body,
        format!("/ui/rollouts/{id}"),
    )
    .await
}

#[derive(Deserialize)]
pub struct PointerForm {
    #[serde(default)]
    form_key: String,
    /// `stream:number`, as the form's choices spell it.
    generation: String,
}

/// Moves a group's pointer (for the generation's architecture).
pub async fn move_pointer(
    State(state): State<UiState>,
    session: Session,
    Path(group): Path<String>,
    Form(form): Form<PointerForm>,
) -> Response {
    if !session.owns(&form.form_key) {
        return forged();
    }
    let Some((stream, number)) = form
        .generation
        .rsplit_once(':')
        .and_then(|(s, n)| Some((s, n.parse::<i64>().ok()?)))
    else {
        return refused(&state, &session, invalid("choose a generation".into()));
    };
    let g = segment(&group);
    let body = json!({ "stream": stream, "generation": number });
    let uri = format!("/api/v1/groups/{g}/generation");
    change(
        &state,
        &session,
        Method::PUT,
        &uri,
        Some(body),
        format!("/ui/groups/{g}"),
    )
    .await
}

#[derive(Deserialize)]
pub struct KeyForm {
    #[serde(default)]
    form_key: String,
}

/// Clears a machine's degraded mark (the watchdog's).
pub async fn clear_degraded(
    State(state): State<UiState>,
    session: Session,
    Path(mac): Path<String>,
    Form(form): Form<KeyForm>,
) -> Response {
    if !session.owns(&form.form_key) {
        return forged();
    }
    let m = segment(&mac);
    let uri = format!("/api/v1/machines/{m}/degraded");
    change(
        &state,
        &session,
        Method::DELETE,
        &uri,
        None,
        format!("/ui/machines/{m}"),
    )
    .await
}
