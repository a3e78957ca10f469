//! Fleet commands sent to a server that does not lead the fleet (`[store]
//! shared`): passed to the leader as they came, and its answer passed
//! back, so an operator's CLI may talk to any server of the site.
//!
//! Only the commands the leader alone runs travel: starting, pausing,
//! resuming and aborting rollouts, clearing a machine's degraded mark, and
//! `apply` (which may start rollouts). The leader checks the token as it
//! would its own callers'. A request already forwarded once is not
//! forwarded again (two servers that each think the other leads answer
//! 503 rather than bounce it).

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, ApiState};

/// Marks a request one server passed to another.
const FORWARDED: &str = "x-ironboot-forwarded-by";

/// The largest command body passed on (an `apply` of a large fleet).
const MAX_BODY: usize = 16 << 20;

/// How long the leader may take to answer.
const TIMEOUT: Duration = Duration::from_secs(120);

/// Whether `method path` is a command only the leader runs.
fn leader_only(method: &Method, path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/api/v1/") else {
        return false;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    matches!(
        (method, parts.as_slice()),
        (&Method::POST, ["rollouts" | "apply"])
            | (&Method::POST, ["rollouts", _, "pause" | "resume" | "abort"])
            | (&Method::DELETE, ["machines", _, "degraded"])
    )
}

/// The middleware: runs `next` here unless this server is a member of a
/// shared database and the request is a leader-only command.
pub async fn to_leader(State(s): State<ApiState>, req: Request, next: Next) -> Response {
    if !s.store.is_shared() || s.store.leads() || !leader_only(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    if req.headers().contains_key(FORWARDED) {
        return unavailable("the server this command was forwarded to does not lead the fleet either; try again in a few seconds");
    }
    let leader = match s.store.live_leader(crate::ledger::now_ms()).await {
        Ok(Some((_, http))) => http,
        Ok(None) => {
            return unavailable(
                "no server leads the fleet right now (one takes over within seconds); try again",
            )
        }
        Err(e) => return ApiError::internal(format!("the leader's address: {e}")).into_response(),
    };
    match pass_on(&leader, s.server_id.as_deref().unwrap_or(""), req).await {
        Ok(response) => response,
        Err(e) => {
            tracing::warn!(%leader, error = %e, "a fleet command not passed to the leader");
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "leader_unreachable",
                format!("this server does not lead the fleet, and the leader at {leader} did not answer"),
            )
            .into_response()
        }
    }
}

fn unavailable(message: &str) -> Response {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_leader", message).into_response()
}

/// Sends `req` to `leader` and returns its answer.
async fn pass_on(leader: &str, me: &str, req: Request) -> Result<Response, String> {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|e| format!("reading the command: {e}"))?;
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())?;
    let mut out = client
        .request(parts.method.clone(), format!("{leader}{path}"))
        .header(FORWARDED, me)
        .body(body);
    for name in ["authorization", "content-type", "if-match", "accept"] {
        if let Some(v) = parts.headers.get(name) {
            out = out.header(name, v);
        }
    }
    let answer = out.send().await.map_err(|e| e.to_string())?;
    let status = answer.status();
    let headers: Vec<(HeaderName, HeaderValue)> = ["content-type", "etag", "location"]
        .iter()
        .filter_map(|n| {
            let v = answer.headers().get(*n)?.clone();
            Some((HeaderName::from_static(n), v))
        })
        .collect();
    let bytes = answer.bytes().await.map_err(|e| e.to_string())?;
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    response.headers_mut().extend(headers);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_leaders_commands_travel() {
        let cases = [
            (Method::POST, "/api/v1/rollouts", true),
            (Method::POST, "/api/v1/rollouts/7/pause", true),
            (Method::POST, "/api/v1/rollouts/7/resume", true),
            (Method::POST, "/api/v1/rollouts/7/abort", true),
            (
                Method::DELETE,
                "/api/v1/machines/52:54:00:00:00:01/degraded",
                true,
            ),
            (Method::POST, "/api/v1/apply", true),
            (Method::GET, "/api/v1/rollouts", false),
            (Method::GET, "/api/v1/rollouts/7", false),
            (Method::PATCH, "/api/v1/machines/52:54:00:00:00:01", false),
            (Method::PUT, "/api/v1/groups/default", false),
            (Method::POST, "/api/v1/rollouts/7/pause/extra", false),
            (Method::POST, "/boot.ipxe", false),
        ];
        for (method, path, want) in cases {
            assert_eq!(leader_only(&method, path), want, "{method} {path}");
        }
    }
}
