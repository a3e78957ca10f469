//! A small typed wrapper over reqwest for the API: bearer token, JSON
//! errors turned into messages, and exit codes by kind of failure.

use futures_util::StreamExt as _;
use std::path::Path;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::http::api::views::ArtifactInfo;
use crate::http::api::{ErrorBody, ErrorDetail};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach the server at {server}: {source} (is it running? check --server or IRONBOOT_SERVER)")]
    Connect {
        server: String,
        source: reqwest::Error,
    },
    #[error("{0}")]
    Auth(String),
    #[error("server refused ({status}): {message}")]
    Refused { status: StatusCode, message: String },
    #[error("not found: {0}")]
    NotFound(String),
    #[error("conflict ({status}): {message}")]
    Conflict { status: StatusCode, message: String },
    /// The server answered, but not with what this CLI reads (a server of
    /// another version, or something else on that address).
    #[error("unexpected answer from the server: {0}")]
    Response(String),
    /// An error the server tied to a place in a local file
    /// (`fleet.yaml:7:13`); exits as the error it wraps.
    #[error("{at}: {inner}")]
    Located { at: String, inner: Box<CliError> },
}

impl CliError {
    /// The documented exit codes (README, "Inventory API and CLI"). 1-4
    /// predate 5 and 6 and keep their meaning.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Refused { .. } | CliError::Response(_) => 1,
            CliError::Usage(_) => 2,
            CliError::Connect { .. } => 3,
            CliError::Auth(_) => 4,
            CliError::NotFound(_) => 5,
            CliError::Conflict { .. } => 6,
            CliError::Located { inner, .. } => inner.exit_code(),
        }
    }
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    pub fn new(server: &str, token: Option<String>) -> Result<Self, CliError> {
        if !(server.starts_with("http://") || server.starts_with("https://")) {
            return Err(CliError::Usage(format!(
                "--server {server:?}: expected http://HOST:PORT"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| CliError::Usage(e.to_string()))?;
        Ok(Self {
            http,
            base: server.trim_end_matches('/').to_string(),
            token,
        })
    }

    fn request(&self, method: Method, path: &str) -> Result<reqwest::RequestBuilder, CliError> {
        let token = self.token.as_deref().ok_or_else(|| {
            CliError::Auth("no API token: pass --token, set IRONBOOT_TOKEN, or run where DATA_DIR/admin.token is".into())
        })?;
        Ok(self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token))
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> Result<reqwest::Response, CliError> {
        self.send_fielded(rb).await.map_err(|(e, _)| e)
    }

    /// [`Client::send`], keeping the server's `field` (the request field at
    /// fault) of a refusal.
    async fn send_fielded(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, (CliError, Option<String>)> {
        let resp = rb.send().await.map_err(|source| {
            let server = self.base.clone();
            (CliError::Connect { server, source }, None)
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let error = error_body(resp).await;
        let field = error.as_ref().ok().and_then(|e| e.field.clone());
        Err((refusal(status, error), field))
    }

    /// A JSON POST whose refusal keeps the server's `field`, for callers
    /// that can point at it in a file.
    pub async fn post_fielded(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<Value, (CliError, Option<String>)> {
        let rb = self
            .request(Method::POST, path)
            .map_err(|e| (e, None))?
            .json(body);
        let resp = self.send_fielded(rb).await?;
        self.body(resp).await.map_err(|e| (e, None))
    }

    /// An answer's body as JSON. A body that is not JSON (a proxy's or
    /// another server's HTML page) is an error that says what came instead;
    /// only a connection lost while reading it counts as unreachable.
    async fn body(&self, resp: reqwest::Response) -> Result<Value, CliError> {
        let path = resp.url().path().to_string();
        let kind = content_type(&resp);
        let bytes = resp.bytes().await.map_err(|source| CliError::Connect {
            server: self.base.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|_| {
            CliError::Response(format!("{path}: not JSON ({kind}): {}", glimpse(&bytes)))
        })
    }
}

fn content_type(resp: &reqwest::Response) -> String {
    resp.headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("no Content-Type")
        .to_string()
}

/// The start of a body, on one line, for an error message.
fn glimpse(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(120)]);
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.join(" ") {
        w if w.is_empty() => "an empty body".into(),
        w if bytes.len() > 120 => format!("{w:?}…"),
        w => format!("{w:?}"),
    }
}

/// A refusal's body as the API's own [`ErrorDetail`], or what came instead
/// (a proxy's error page) in words.
async fn error_body(resp: reqwest::Response) -> Result<ErrorDetail, String> {
    let kind = content_type(&resp);
    let bytes = resp.bytes().await.unwrap_or_default();
    match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(body) => Ok(body.error),
        Err(_) => Err(format!(
            "no API error in the answer ({kind}): {}",
            glimpse(&bytes)
        )),
    }
}

/// The error for a refused request, from its status and error body.
fn refusal(status: StatusCode, error: Result<ErrorDetail, String>) -> CliError {
    let message = match error {
        Ok(e) => e.message,
        Err(instead) => instead,
    };
    match status {
        StatusCode::UNAUTHORIZED => CliError::Auth(format!(
            "{status}: {message} (check --token, IRONBOOT_TOKEN or DATA_DIR/admin.token)"
        )),
        StatusCode::FORBIDDEN => {
            CliError::Auth(format!("{status}: {message} (this needs an admin token)"))
        }
        StatusCode::NOT_FOUND => CliError::NotFound(message),
        StatusCode::CONFLICT | StatusCode::PRECONDITION_FAILED => {
            CliError::Conflict { status, message }
        }
        _ => CliError::Refused { status, message },
    }
}

/// `v` as the API's own type `T` (the one the server serialized): a field
/// missing or of another type is an error that names it, never a table of
/// dashes.
pub fn typed<T: DeserializeOwned>(what: &str, v: Value) -> Result<T, CliError> {
    serde_json::from_value(v).map_err(|e| CliError::Response(format!("{what}: {e}")))
}

/// The same requests, their answers read as the API's type `T`.
impl Client {
    pub async fn get_as<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        typed(path, self.get(path).await?)
    }

    pub async fn post_as<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<T, CliError> {
        typed(path, self.post(path, body).await?)
    }

    pub async fn put_as<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<T, CliError> {
        typed(path, self.put(path, body).await?)
    }

    pub async fn patch_as<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
        if_match: Option<&str>,
    ) -> Result<T, CliError> {
        typed(path, self.patch(path, body, if_match).await?)
    }

    pub async fn delete_as<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        typed(path, self.delete(path).await?)
    }
}

impl Client {
    async fn json(&self, rb: reqwest::RequestBuilder) -> Result<Value, CliError> {
        let resp = self.send(rb).await?;
        self.body(resp).await
    }

    pub async fn get(&self, path: &str) -> Result<Value, CliError> {
        self.json(self.request(Method::GET, path)?).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        self.json(self.request(Method::POST, path)?.json(body))
            .await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        self.json(self.request(Method::PUT, path)?.json(body)).await
    }

    /// A PATCH, with `If-Match` when given.
    pub async fn patch(
        &self,
        path: &str,
        body: &Value,
        if_match: Option<&str>,
    ) -> Result<Value, CliError> {
        let mut rb = self.request(Method::PATCH, path)?.json(body);
        if let Some(tag) = if_match {
            rb = rb.header(reqwest::header::IF_MATCH, tag);
        }
        self.json(rb).await
    }

    pub async fn delete(&self, path: &str) -> Result<Value, CliError> {
        self.json(self.request(Method::DELETE, path)?).await
    }

    /// A JSON request that may carry `If-Match`; returns the body and the
    /// answer's `ETag`, for read-modify-write updates.
    pub async fn send_tagged(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<(Value, Option<String>), CliError> {
        let mut rb = self.request(method, path)?;
        if let Some(b) = body {
            rb = rb.json(b);
        }
        if let Some(tag) = if_match {
            rb = rb.header(reqwest::header::IF_MATCH, tag);
        }
        let resp = self.send(rb).await?;
        let tag = resp
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Ok((self.body(resp).await?, tag))
    }

    /// Whether the server already has the artifact (then it is not sent).
    pub async fn has_artifact(&self, hex: &str) -> Result<bool, CliError> {
        let rb = self.request(Method::HEAD, &format!("/api/v1/artifacts/sha256/{hex}"))?;
        let resp = rb.send().await.map_err(|source| CliError::Connect {
            server: self.base.clone(),
            source,
        })?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Err(CliError::Auth(format!("{}", resp.status())))
            }
            s => Err(CliError::Refused {
                status: s,
                message: "artifact check failed".into(),
            }),
        }
    }

    /// Streams a file to the server (never read whole into memory).
    pub async fn upload_artifact(&self, hex: &str, path: &Path) -> Result<ArtifactInfo, CliError> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
        let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
        let mut progress =
            super::progress::Progress::new(format!("{}: upload", path.display()), len);
        let chunks = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20).inspect(move |c| {
            if let (Ok(bytes), Some(p)) = (c, progress.as_mut()) {
                p.add(bytes.len() as u64);
            }
        });
        let body = reqwest::Body::wrap_stream(chunks);
        let rb = self
            .request(Method::PUT, &format!("/api/v1/artifacts/sha256/{hex}"))?
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(body);
        typed(
            &format!("/api/v1/artifacts/sha256/{hex}"),
            self.json(rb).await?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::api::views::{MachineList, RolloutView};

    /// A server of another version (or anything else on that address)
    /// answers with JSON this CLI does not read: the error names what is
    /// missing or wrong instead of printing a table of dashes.
    #[test]
    fn an_answer_of_another_shape_is_refused_naming_the_field() {
        let err = typed::<MachineList>(
            "/api/v1/machines",
            serde_json::json!({ "machines": [{ "mac": "52:54:00:00:00:01" }] }),
        )
        .unwrap_err();
        assert!(matches!(err, CliError::Response(_)));
        assert_eq!(err.exit_code(), 1);
        assert!(err.to_string().contains("missing field `kind`"), "{err}");
        let err =
            typed::<RolloutView>("rollout", serde_json::json!({ "id": "seven" })).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("unexpected answer from the server: rollout: invalid type"),
            "{err}"
        );
        let err = typed::<MachineList>("/api/v1/machines", Value::Null).unwrap_err();
        assert!(err.to_string().contains("invalid type: null"), "{err}");
    }
}
