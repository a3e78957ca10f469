//! Boots and events: what machines did, per machine and fleet-wide, newest
//! first, filtered by time, generation, step and result, a page at a time;
//! and the live stream of events as Server-Sent Events.
//!
//! Paging is by row id (strictly decreasing), so a page never repeats or
//! skips a row while new boots arrive: `next` is the id to continue below.

use std::convert::Infallible;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::Json;
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use utoipa::{IntoParams, ToSchema};

use super::paging::{parse_time, MAX_PAGE};
use super::*;
use crate::domain::UnknownText;
use crate::store::history::{BootQuery, EventQuery};

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_boots))
        .routes(routes!(machine_boots))
        .routes(routes!(list_events))
        .routes(routes!(machine_events))
        .routes(routes!(event_stream))
}

/// One step of a boot (a ledger event).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StepView {
    pub at_ms: i64,
    pub step: String,
    pub bytes: Option<i64>,
    /// Free-form detail the step recorded (file name, bootfile, reason).
    pub detail: Value,
}

/// What a boot read of its root image over NBD.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RootView {
    /// The root image's export (its sha256).
    pub export: Option<String>,
    pub bytes: i64,
    pub verify_failures: i64,
}

/// One boot attempt and its steps.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BootView {
    pub id: i64,
    pub mac: String,
    pub stream: Option<String>,
    pub generation: Option<i64>,
    /// The image digest served.
    pub image: Option<String>,
    /// The result so far: `served` (not confirmed yet), `confirmed`,
    /// `failed`, or `nothing` (there was nothing to boot).
    pub state: String,
    pub reason: Option<String>,
    pub started_ms: i64,
    pub confirmed_ms: Option<i64>,
    /// With a root image streamed over NBD: its export, the bytes read for
    /// it (root and hash tree) and the verification failures reported.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub root: Option<RootView>,
    /// Its steps, oldest first (per machine always; fleet-wide with
    /// `steps=true`).
    pub steps: Vec<StepView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BootList {
    pub boots: Vec<BootView>,
    /// Pass as `cursor` for the next (older) page; absent on the last.
    pub next: Option<i64>,
}

/// Filters of boot lists.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct BootFilter {
    /// Of this machine only (fleet-wide list).
    mac: Option<String>,
    /// Started at or after: milliseconds since the epoch, or RFC 3339.
    since: Option<String>,
    /// Started before: milliseconds since the epoch, or RFC 3339.
    until: Option<String>,
    /// Served a generation of this stream.
    stream: Option<String>,
    /// Served this generation number.
    generation: Option<i64>,
    /// `served`, `confirmed`, `failed` or `nothing`.
    result: Option<String>,
    /// Fleet-wide: include each boot's steps.
    steps: Option<bool>,
    /// Page size, 1-1000 (default 100).
    limit: Option<i64>,
    /// The `next` of the previous page.
    cursor: Option<i64>,
}

impl BootFilter {
    /// The newest `n` boots.
    pub fn latest(n: i64) -> Self {
        Self {
            limit: Some(n),
            ..Self::default()
        }
    }
}

/// The machine of a per-machine list; a `mac` query parameter must agree.
fn same_mac(path: &str, query: Option<&str>) -> ApiResult<MacAddr> {
    let mac = parse_mac(path)?;
    match query.map(parse_mac).transpose()? {
        Some(other) if other != mac => Err(ApiError::bad(
            "mac",
            "the mac query parameter names another machine than the path",
        )),
        _ => Ok(mac),
    }
}

/// A page of boots (of one machine, or all), newest first.
pub async fn boots_of(
    store: &Store,
    mac: Option<MacAddr>,
    f: &BootFilter,
    steps: bool,
) -> ApiResult<Vec<BootView>> {
    Ok(boot_page(store, mac, f, steps).await?.boots)
}

async fn boot_page(
    store: &Store,
    mac: Option<MacAddr>,
    f: &BootFilter,
    steps: bool,
) -> ApiResult<BootList> {
    let since = f
        .since
        .as_deref()
        .map(|t| parse_time("since", t))
        .transpose()?;
    let until = f
        .until
        .as_deref()
        .map(|t| parse_time("until", t))
        .transpose()?;
    let state = f.result.as_deref().map(str::parse).transpose();
    let q = BootQuery {
        mac,
        before: f.cursor,
        since_ms: since,
        until_ms: until,
        stream: f.stream.clone(),
        generation: f.generation,
        state: state.map_err(|e: UnknownText| {
            ApiError::bad(
                "result",
                format!("{:?}: one of {}", e.got, e.expected.join(", ")),
            )
        })?,
        limit: f.limit.unwrap_or(100).clamp(1, MAX_PAGE),
    };
    let (rows, more) = store.boots(&q).await?;
    let next = more.then(|| rows.last().map(|b| b.id)).flatten();
    let mut steps_of = if steps {
        let ids: Vec<i64> = rows.iter().map(|b| b.id).collect();
        store.steps_of(&ids).await?
    } else {
        Default::default()
    };
    let boots = rows
        .into_iter()
        .map(|b| BootView {
            steps: steps_of
                .remove(&b.id)
                .unwrap_or_default()
                .into_iter()
                .map(|s| StepView {
                    at_ms: s.at_ms,
                    step: s.step,
                    bytes: s.bytes,
                    detail: serde_json::from_str(&s.detail).unwrap_or(Value::Null),
                })
                .collect(),
            id: b.id,
            mac: b.mac,
            stream: b.stream,
            generation: b.generation,
            image: b.image,
            state: b.state,
            reason: b.reason,
            started_ms: b.started_ms,
            confirmed_ms: b.confirmed_ms,
            root: (b.root_export.is_some() || b.verify_failures > 0).then_some(RootView {
                export: b.root_export,
                bytes: b.root_bytes,
                verify_failures: b.verify_failures,
            }),
        })
        .collect();
    Ok(BootList { boots, next })
}

/// Every machine's boots, newest first.
#[utoipa::path(get, path = "/api/v1/boots", tag = "history",
    params(BootFilter),
    responses((status = 200, body = BootList)))]
async fn list_boots(
    _: Reader,
    State(s): State<ApiState>,
    ApiQuery(f): ApiQuery<BootFilter>,
) -> ApiResult<Json<BootList>> {
    let mac = f.mac.as_deref().map(parse_mac).transpose()?;
    s.inventory.settle().await;
    let steps = f.steps.unwrap_or(false);
    Ok(Json(boot_page(&s.store, mac, &f, steps).await?))
}

/// A machine's boots, newest first, with their steps.
#[utoipa::path(get, path = "/api/v1/machines/{mac}/boots", tag = "history",
    params(("mac" = String, Path, description = "MAC address"), BootFilter),
    responses((status = 200, body = BootList)))]
async fn machine_boots(
    _: Reader,
    State(s): State<ApiState>,
    ApiPath(mac): ApiPath<String>,
    ApiQuery(f): ApiQuery<BootFilter>,
) -> ApiResult<Json<BootList>> {
    let mac = same_mac(&mac, f.mac.as_deref())?;
    s.inventory.settle().await;
    Ok(Json(boot_page(&s.store, Some(mac), &f, true).await?))
}

/// One ledger event.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventView {
    /// Row id (absent in the live stream: not yet written).
    pub id: Option<i64>,
    pub at_ms: i64,
    pub mac: Option<String>,
    pub ip: Option<String>,
    /// `dhcp.offer`, `dhcp.ack`, `tftp.complete`, `boot.script`, …
    pub step: String,
    pub detail: Value,
    pub bytes: Option<i64>,
    /// The boot it belongs to, when known.
    pub boot_id: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventList {
    pub events: Vec<EventView>,
    /// Pass as `cursor` for the next (older) page; absent on the last.
    pub next: Option<i64>,
}

/// Filters of event lists.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventFilter {
    /// Of this machine only (fleet-wide list).
    mac: Option<String>,
    /// At or after: milliseconds since the epoch, or RFC 3339.
    since: Option<String>,
    /// Before: milliseconds since the epoch, or RFC 3339.
    until: Option<String>,
    /// A step (`dhcp.ack`) or a family of steps (`dhcp`).
    step: Option<String>,
    /// Of this boot.
    boot: Option<i64>,
    /// Of boots that served a generation of this stream.
    stream: Option<String>,
    /// Of boots that served this generation number.
    generation: Option<i64>,
    /// Page size, 1-1000 (default 100).
    limit: Option<i64>,
    /// The `next` of the previous page.
    cursor: Option<i64>,
}

async fn event_page(store: &Store, mac: Option<MacAddr>, f: &EventFilter) -> ApiResult<EventList> {
    let since = f
        .since
        .as_deref()
        .map(|t| parse_time("since", t))
        .transpose()?;
    let until = f
        .until
        .as_deref()
        .map(|t| parse_time("until", t))
        .transpose()?;
    let q = EventQuery {
        mac,
        before: f.cursor,
        since_ms: since,
        until_ms: until,
        step: f.step.clone(),
        boot: f.boot,
        stream: f.stream.clone(),
        generation: f.generation,
        limit: f.limit.unwrap_or(100).clamp(1, MAX_PAGE),
    };
    let (rows, more) = store.events(&q).await?;
    let next = more.then(|| rows.last().map(|e| e.id)).flatten();
    let events = rows
        .into_iter()
        .map(|r| EventView {
            id: Some(r.id),
            at_ms: r.at_ms,
            mac: r.mac,
            ip: r.ip,
            step: r.step,
            detail: serde_json::from_str(&r.detail).unwrap_or(Value::Null),
            bytes: r.bytes,
            boot_id: r.boot_id,
        })
        .collect();
    Ok(EventList { events, next })
}

/// Every ledger event, newest first.
#[utoipa::path(get, path = "/api/v1/events", tag = "history",
    params(EventFilter),
    responses((status = 200, body = EventList)))]
async fn list_events(
    _: Reader,
    State(s): State<ApiState>,
    ApiQuery(f): ApiQuery<EventFilter>,
) -> ApiResult<Json<EventList>> {
    let mac = f.mac.as_deref().map(parse_mac).transpose()?;
    s.inventory.settle().await;
    Ok(Json(event_page(&s.store, mac, &f).await?))
}

/// A machine's ledger events, newest first.
#[utoipa::path(get, path = "/api/v1/machines/{mac}/events", tag = "history",
    params(("mac" = String, Path, description = "MAC address"), EventFilter),
    responses((status = 200, body = EventList)))]
async fn machine_events(
    _: Reader,
    State(s): State<ApiState>,
    ApiPath(mac): ApiPath<String>,
    ApiQuery(f): ApiQuery<EventFilter>,
) -> ApiResult<Json<EventList>> {
    let mac = same_mac(&mac, f.mac.as_deref())?;
    s.inventory.settle().await;
    Ok(Json(event_page(&s.store, Some(mac), &f).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct LiveFilter {
    /// Only this machine's events.
    mac: Option<String>,
    /// Only this step (`dhcp.ack`) or family (`dhcp`).
    step: Option<String>,
}

/// Events as they happen, as Server-Sent Events: each `data:` line is an
/// event's JSON (the `Event` schema, without `id`). A watcher that falls
/// behind gets an `event: lagged` message saying how many it missed. Ends
/// when the server shuts down.
#[utoipa::path(get, path = "/api/v1/events/stream", tag = "history",
    params(LiveFilter),
    responses((status = 200, description = "A stream of events", content_type = "text/event-stream", body = String)))]
async fn event_stream(
    _: Reader,
    State(s): State<ApiState>,
    ApiQuery(f): ApiQuery<LiveFilter>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let mac = f.mac.as_deref().map(parse_mac).transpose()?;
    let step = f.step;
    let Some(watching) = Watcher::take() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_watchers",
            format!("at most {MAX_WATCHERS} live event streams at once"),
        ));
    };
    let rx = s.live.subscribe();
    let stop = s.shutdown.clone();
    let wanted = move |e: &crate::ledger::Event| {
        mac.is_none_or(|m| e.mac == Some(m))
            && step.as_deref().is_none_or(|st| {
                e.step == st
                    || (e.step.starts_with(st) && e.step.as_bytes().get(st.len()) == Some(&b'.'))
            })
    };
    // The watcher's slot lives in the stream's state: given back when the
    // client goes. A client that stops reading holds no more than the
    // shared broadcast buffer (its socket's send buffer fills, and the
    // stream is no longer polled), and is told what it missed by `lagged`.
    let stream =
        futures_util::stream::unfold((rx, stop, watching), move |(mut rx, stop, watching)| {
            let wanted = wanted.clone();
            async move {
                loop {
                    let got = tokio::select! {
                        _ = stop.cancelled() => return None,
                        got = rx.recv() => got,
                    };
                    let msg = match got {
                        Ok(e) if wanted(&e) => SseEvent::default().json_data(EventView {
                            id: None,
                            at_ms: e.at_ms,
                            mac: e.mac.map(|m| m.to_string()),
                            ip: e.ip.map(|i| i.to_string()),
                            step: e.step.to_string(),
                            detail: e.detail,
                            bytes: e.bytes.map(|b| b as i64),
                            boot_id: e.boot_id,
                        }),
                        Ok(_) => continue,
                        Err(RecvError::Lagged(n)) => {
                            Ok(SseEvent::default().event("lagged").data(n.to_string()))
                        }
                        Err(RecvError::Closed) => return None,
                    };
                    match msg {
                        Ok(m) => return Some((Ok(m), (rx, stop, watching))),
                        Err(_) => continue,
                    }
                }
            }
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// Live event streams open at once.
pub const MAX_WATCHERS: usize = 64;

static WATCHERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One open live stream, counted against [`MAX_WATCHERS`].
struct Watcher;

impl Watcher {
    fn take() -> Option<Watcher> {
        use std::sync::atomic::Ordering;
        WATCHERS
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_WATCHERS).then_some(n + 1)
            })
            .ok()
            .map(|_| Watcher)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        WATCHERS.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

#[cfg(test)]
#[path = "history_tests.rs"]
mod tests;
