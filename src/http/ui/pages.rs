//! The dashboard's pages. Each handler reads what it shows through the API
//! (as the signed-in operator) and renders one template; the live parts
//! (a machine's timeline, a rollout) are fragments the page's script
//! fetches again when the event stream says something changed.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, Method};
use axum::response::{IntoResponse, Response};
use minijinja::{context, Environment, UndefinedBehavior};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{refused, render, segment, Page, Refused, Session, UiState};
use crate::http::api::views::{
    BootList, EventList, Explanation, GenerationList, GroupList, GroupView, HealthView,
    MachineDetail, MachineList, RolloutList, RolloutView, StreamList, WatchdogView,
};

/// The page templates, embedded; HTML-escaped unless a template says
/// otherwise (none does); a missing variable fails the render.
pub(super) fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
    for (name, text) in TEMPLATES {
        env.add_template(name, text)
            .unwrap_or_else(|e| panic!("dashboard template {name}: {e}"));
    }
    env.add_filter("time", time_of);
    env.add_filter("since", since);
    env.add_filter("seg", |s: &str| segment(s));
    env
}

pub(super) const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("login.html", include_str!("templates/login.html")),
    ("error.html", include_str!("templates/error.html")),
    ("fleet.html", include_str!("templates/fleet.html")),
    ("machine.html", include_str!("templates/machine.html")),
    ("timeline.html", include_str!("templates/timeline.html")),
    ("groups.html", include_str!("templates/groups.html")),
    ("group.html", include_str!("templates/group.html")),
    ("stream.html", include_str!("templates/stream.html")),
    ("rollouts.html", include_str!("templates/rollouts.html")),
    ("rollout.html", include_str!("templates/rollout.html")),
    (
        "rollout_body.html",
        include_str!("templates/rollout_body.html"),
    ),
    ("watchdog.html", include_str!("templates/watchdog.html")),
    ("events.html", include_str!("templates/events.html")),
    ("explain.html", include_str!("templates/explain.html")),
];

/// Milliseconds since the epoch as UTC wall time, to the second.
fn time_of(ms: Option<i64>) -> String {
    match ms.and_then(|ms| u64::try_from(ms).ok()) {
        Some(ms) => {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
            humantime::format_rfc3339_seconds(t)
                .to_string()
                .replace('T', " ")
                .trim_end_matches('Z')
                .to_string()
        }
        None => "—".into(),
    }
}

/// The time from `start` to `ms`, as `+1.234 s`.
fn since(ms: i64, start: i64) -> String {
    format!("{:+.3} s", (ms - start) as f64 / 1000.0)
}

/// The fleet's filters: the API's own query parameters, with empty form
/// fields meaning "any".
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct FleetFilter {
    #[serde(default)]
    group: String,
    #[serde(default)]
    stream: String,
    #[serde(default)]
    generation: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    arch: String,
    #[serde(default)]
    selector: String,
    #[serde(default)]
    cursor: String,
}

impl FleetFilter {
    /// The filled-in fields as a query string (without the cursor).
    fn query(&self) -> String {
        let pairs: Vec<(&str, &str)> = [
            ("group", &self.group),
            ("stream", &self.stream),
            ("generation", &self.generation),
            ("state", &self.state),
            ("kind", &self.kind),
            ("arch", &self.arch),
            ("selector", &self.selector),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.trim()))
        .filter(|(_, v)| !v.is_empty())
        .collect();
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    }
}

/// Machines per generation, per stream: what the fleet runs.
#[derive(Serialize)]
struct Census {
    stream: String,
    total: usize,
    generations: Vec<(i64, usize)>,
}

/// The fleet: filters, a page of machines, and the generation census.
pub async fn fleet(
    State(state): State<UiState>,
    session: Session,
    Query(filter): Query<FleetFilter>,
) -> Page {
    let query = filter.query();
    let mut uri = format!("/api/v1/machines?limit={PAGE}");
    if !query.is_empty() {
        uri += &format!("&{query}");
    }
    if !filter.cursor.is_empty() {
        uri += &format!("&cursor={}", segment(&filter.cursor));
    }
    let token = session.token();
    // A filter the API refuses is shown beside the form, not instead of it.
    let (machines, next, error) = match state.api.get::<MachineList>(token, &uri).await {
        Ok(l) => (l.machines, l.next, None),
        Err(Refused::Api { message, .. }) => (vec![], None, Some(message)),
        Err(r) => return Err(refused(&state, &session, r)),
    };
    let groups: GroupList = state.read(&session, "/api/v1/groups").await?;
    let census = census(&state, token)
        .await
        .map_err(|r| refused(&state, &session, r))?;
    let next = next.map(|c| {
        let sep = if query.is_empty() { "" } else { "&" };
        format!("/ui/?{query}{sep}cursor={}", segment(&c))
    });
    Ok(render(
        &state,
        &session,
        "fleet.html",
        context! {
            filter, error, census, next,
            machines,
            groups => groups.groups.iter().map(|g| &g.name).collect::<Vec<_>>(),
            first => (!filter.cursor.is_empty()).then(|| format!("/ui/?{query}")),
        },
    ))
}

/// Machines on one page of the fleet.
const PAGE: usize = 50;

/// Per stream, the generations machines run (and the latest, run or not),
/// with how many run each: one API call, `/streams` carries the counts.
async fn census(state: &UiState, token: &str) -> Result<Vec<Census>, Refused> {
    let streams: StreamList = state.api.get(token, "/api/v1/streams").await?;
    Ok(streams
        .streams
        .into_iter()
        .map(|s| {
            // The generations machines run, and the latest even if none does.
            let mut running = s.running.clone();
            if let Some(latest) = s.latest {
                running.entry(latest).or_default();
            }
            let generations: Vec<(i64, usize)> = running.into_iter().collect();
            Census {
                total: s.running.values().sum(),
                stream: s.stream,
                generations,
            }
        })
        .collect())
}

/// One machine: facts, generations, health, and its boots (live).
pub async fn machine(
    State(state): State<UiState>,
    session: Session,
    Path(mac): Path<String>,
) -> Page {
    let m = segment(&mac);
    let detail: MachineDetail = state
        .read(&session, &format!("/api/v1/machines/{m}"))
        .await?;
    let health: HealthView = state
        .read(&session, &format!("/api/v1/machines/{m}/health"))
        .await?;
    Ok(render(
        &state,
        &session,
        "machine.html",
        context! {
            health,
            boots => detail.recent_boots,
            m => detail.machine,
        },
    ))
}

/// A machine's latest boots and their steps: the live part of its page.
pub async fn timeline(
    State(state): State<UiState>,
    session: Session,
    Path(mac): Path<String>,
) -> Page {
    let uri = format!("/api/v1/machines/{}/boots?limit=10", segment(&mac));
    let list: BootList = state.read(&session, &uri).await?;
    Ok(render(
        &state,
        &session,
        "timeline.html",
        context! { boots => list.boots },
    ))
}

pub async fn groups(State(state): State<UiState>, session: Session) -> Page {
    let groups: GroupList = state.read(&session, "/api/v1/groups").await?;
    let streams: StreamList = state.read(&session, "/api/v1/streams").await?;
    Ok(render(
        &state,
        &session,
        "groups.html",
        context! { groups => groups.groups, ties => groups.ties, streams => streams.streams },
    ))
}

/// A group: its pointers per architecture, and a form to move one.
pub async fn group(
    State(state): State<UiState>,
    session: Session,
    Path(name): Path<String>,
) -> Page {
    let uri = format!("/api/v1/groups/{}", segment(&name));
    let group: GroupView = state.read(&session, &uri).await?;
    // Every generation, for the pointer form's choices.
    let streams: StreamList = state.read(&session, "/api/v1/streams").await?;
    let mut choices: Vec<serde_json::Value> = Vec::new();
    for s in &streams.streams {
        let uri = format!("/api/v1/streams/{}/generations", segment(&s.stream));
        let list: GenerationList = state.read(&session, &uri).await?;
        choices.extend(list.generations.iter().map(|g| {
            json!({"stream": g.stream, "generation": g.generation, "arch": g.manifest.arch.to_string()})
        }));
    }
    let variables = serde_json::to_string_pretty(&group.variables).unwrap_or_default();
    Ok(render(
        &state,
        &session,
        "group.html",
        context! { group, choices, variables },
    ))
}

/// A stream: its generations, their manifests and who runs them.
pub async fn stream(
    State(state): State<UiState>,
    session: Session,
    Path(name): Path<String>,
) -> Page {
    let uri = format!("/api/v1/streams/{}/generations", segment(&name));
    let list: GenerationList = state.read(&session, &uri).await?;
    let generations: Vec<serde_json::Value> = list
        .generations
        .iter()
        .rev()
        .map(|g| {
            let holders: Vec<&String> = g
                .in_use_by
                .iter()
                .filter(|u| !u.starts_with("current on ") && !u.starts_with("last good on "))
                .collect();
            json!({
                "generation": g.generation,
                "digest": g.digest,
                "manifest": g.manifest,
                "manifest_text": serde_json::to_string_pretty(&g.manifest).unwrap_or_default(),
                "imported_ms": g.imported_ms,
                "imported_by": g.imported_by,
                "running": g.running,
                "holders": holders,
            })
        })
        .collect();
    Ok(render(
        &state,
        &session,
        "stream.html",
        context! { stream => list.stream, generations },
    ))
}

pub async fn rollouts(State(state): State<UiState>, session: Session) -> Page {
    let list: RolloutList = state.read(&session, "/api/v1/rollouts").await?;
    let groups: GroupList = state.read(&session, "/api/v1/groups").await?;
    Ok(render(
        &state,
        &session,
        "rollouts.html",
        context! {
            rollouts => list.rollouts,
            groups => groups.groups.iter().map(|g| &g.name).collect::<Vec<_>>(),
        },
    ))
}

/// A rollout: its waves and every machine's state, live; pause, resume,
/// abort for an admin.
pub async fn rollout(State(state): State<UiState>, session: Session, Path(id): Path<i64>) -> Page {
    let uri = format!("/api/v1/rollouts/{id}");
    let r: RolloutView = state.read(&session, &uri).await?;
    Ok(render(&state, &session, "rollout.html", context! { r }))
}

/// The live part of a rollout's page.
pub async fn rollout_body(
    State(state): State<UiState>,
    session: Session,
    Path(id): Path<i64>,
) -> Page {
    let uri = format!("/api/v1/rollouts/{id}");
    let r: RolloutView = state.read(&session, &uri).await?;
    Ok(render(
        &state,
        &session,
        "rollout_body.html",
        context! { r },
    ))
}

/// The watchdog: its policy and the degraded machines.
pub async fn watchdog(State(state): State<UiState>, session: Session) -> Page {
    let w: WatchdogView = state.read(&session, "/api/v1/watchdog").await?;
    Ok(render(&state, &session, "watchdog.html", context! { w }))
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct EventsFilter {
    #[serde(default)]
    mac: String,
    #[serde(default)]
    step: String,
}

/// The latest events (and new ones as they happen), and the server's health.
pub async fn events(
    State(state): State<UiState>,
    session: Session,
    Query(filter): Query<EventsFilter>,
) -> Response {
    let pairs: Vec<(&str, &str)> = [("mac", filter.mac.trim()), ("step", filter.step.trim())]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .collect();
    let query = serde_urlencoded::to_string(&pairs).unwrap_or_default();
    let uri = format!("/api/v1/events?limit=100&{query}");
    let (events, error) = match state.api.get::<EventList>(session.token(), &uri).await {
        Ok(l) => (l.events, None),
        Err(Refused::Api { message, .. }) => (vec![], Some(message)),
        Err(r) => return refused(&state, &session, r),
    };
    let events: Vec<serde_json::Value> = events.into_iter().map(event_json).collect();
    render(
        &state,
        &session,
        "events.html",
        context! {
            filter, events, error,
            stream => format!("/ui/live?{query}"),
            health => state.health(),
        },
    )
}

fn event_json(e: crate::http::api::views::EventView) -> serde_json::Value {
    json!({
        "at_ms": e.at_ms, "mac": e.mac, "ip": e.ip, "step": e.step,
        "detail": if e.detail.is_null() { String::new() } else { e.detail.to_string() },
        "bytes": e.bytes, "boot_id": e.boot_id,
    })
}

#[derive(Debug, Default, Deserialize)]
pub struct ExplainQuery {
    #[serde(default)]
    mac: String,
}

/// What a machine would be served now, and why (`explain`).
pub async fn explain(
    State(state): State<UiState>,
    session: Session,
    Query(q): Query<ExplainQuery>,
) -> Response {
    let mac = q.mac.trim().to_string();
    if mac.is_empty() {
        return render(&state, &session, "explain.html", context! { mac });
    }
    let body = json!({ "mac": mac });
    match state
        .api
        .call::<Explanation>(
            session.token(),
            Method::POST,
            "/api/v1/explain",
            Some(&body),
        )
        .await
    {
        Ok(x) => {
            let dhcp = serde_json::to_string_pretty(&x.dhcp).unwrap_or_default();
            render(&state, &session, "explain.html", context! { mac, x, dhcp })
        }
        Err(Refused::Api { message, .. }) => render(
            &state,
            &session,
            "explain.html",
            context! { mac, error => message },
        ),
        Err(r) => refused(&state, &session, r),
    }
}

/// The API's live event stream, for the page's script: `EventSource`
/// cannot send a bearer token, so the dashboard opens the stream as the
/// signed-in operator and passes it through unchanged.
pub async fn live(
    State(state): State<UiState>,
    session: Session,
    Query(filter): Query<BTreeMap<String, String>>,
) -> Response {
    let pairs: Vec<(&str, &str)> = ["mac", "step"]
        .into_iter()
        .filter_map(|k| Some((k, filter.get(k)?.as_str())))
        .filter(|(_, v)| !v.is_empty())
        .collect();
    let query = serde_urlencoded::to_string(&pairs).unwrap_or_default();
    match state
        .api
        .send(
            session.token(),
            Method::GET,
            &format!("/api/v1/events/stream?{query}"),
            None,
        )
        .await
    {
        Ok(res) => {
            let (mut parts, body) = res.into_parts();
            parts
                .headers
                .insert(header::CACHE_CONTROL, "no-store".parse().expect("a header"));
            Response::from_parts(parts, body)
        }
        Err(r) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, r.message()).into_response(),
    }
}
