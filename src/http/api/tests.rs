//! The API through `oneshot` (no socket): authentication, JSON errors, the
//! OpenAPI document, ETags. [`Harness`] is shared by the resource tests.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::*;
use crate::auth::Role;
use crate::inventory::ScriptRequest;
use crate::ledger::Ledger;
use crate::metrics::Metrics;

/// A store in a temporary directory, the ledger writer, an inventory, an
/// admin and a read-only token, and the API router over them.
pub(crate) struct Harness {
    pub app: Router,
    pub state: ApiState,
    pub admin: String,
    pub reader: String,
    /// Records events as the protocol servers would.
    pub ledger: Ledger,
    _dir: tempfile::TempDir,
}

/// An answer: status, headers, JSON body (`Null` when empty or not JSON).
pub(crate) struct Answer {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: Value,
}

impl Harness {
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let (ledger, rx) = Ledger::new(1024, Arc::new(Metrics::default()));
        tokio::spawn(crate::store::writer::run(store.clone(), rx));
        let live = ledger.live();
        let inventory = Arc::new(
            Inventory::load(store.clone(), ledger.clone())
                .await
                .unwrap(),
        );
        let images = Arc::new(ImageStore::open(&dir.path().join("images")).unwrap());
        let (tokens, written) = Tokens::load_or_bootstrap(&store, dir.path()).await.unwrap();
        let admin = std::fs::read_to_string(written.unwrap())
            .unwrap()
            .trim()
            .to_string();
        let (_, reader) = tokens.create(&store, "viewer", Role::Read).await.unwrap();
        let state = ApiState {
            inventory: inventory.clone(),
            images,
            tokens: Arc::new(tokens),
            store,
            edits: Default::default(),
            live,
            shutdown: Default::default(),
            explainer: Arc::new(crate::explain::Explainer {
                inventory: inventory.clone(),
                renderer: Arc::new(crate::render::Renderer::embedded().unwrap()),
                server: "http://10.77.0.1:8080".into(),
                targets: crate::dhcp::classify::BootTargets {
                    files: Default::default(),
                    server_ip: std::net::Ipv4Addr::new(10, 77, 0, 1).into(),
                    http_port: 8080,
                },
                mode: crate::config::DhcpMode::Full,
                serve_all: false,
                clients: None,
            }),
            dhcp: None,
            bmcs: None,
            server_id: None,
            fetcher: Arc::new(
                crate::images::fetch::Fetcher::new(Default::default()).expect("fetch client"),
            ),
        };
        Self {
            app: router(state.clone()),
            state,
            admin,
            reader,
            ledger,
            _dir: dir,
        }
    }

    /// A machine that asked for its script (as iPXE would), committed.
    pub async fn machine(&self, mac: &str) -> MacAddr {
        let mac: MacAddr = mac.parse().unwrap();
        self.state.inventory.begin_boot(
            mac,
            &ScriptRequest {
                mac: Some(mac),
                buildarch: Some(crate::domain::Cpu::X86_64),
                ..Default::default()
            },
        );
        self.state.inventory.settle().await;
        mac
    }

    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20)
            .await
            .unwrap();
        Answer {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    pub async fn get(&self, uri: &str) -> Answer {
        let token = self.reader.clone();
        self.call(Method::GET, uri, Some(&token), None, &[]).await
    }
}

/// The answer is the JSON error with this status and code.
pub(crate) fn assert_error(a: &Answer, status: StatusCode, code: &str) {
    assert_eq!(a.status, status, "{}", a.body);
    assert_eq!(a.body["error"]["code"], code, "{}", a.body);
    assert!(a.body["error"]["message"].is_string(), "{}", a.body);
    assert!(a.body["error"].get("field").is_some(), "{}", a.body);
    assert_eq!(
        a.headers[header::CONTENT_TYPE],
        "application/json",
        "errors are JSON"
    );
}

#[tokio::test]
async fn the_openapi_document_is_3_1_public_and_documents_errors_on_every_operation() {
    let h = Harness::new().await;
    let a = h
        .call(Method::GET, "/api/v1/openapi.json", None, None, &[])
        .await;
    assert_eq!(a.status, StatusCode::OK);
    let doc = a.body;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{doc}");
    assert_eq!(doc, serde_json::to_value(openapi_document()).unwrap());
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    assert!(
        doc["components"]["schemas"]["BootView"]["properties"]["root"].is_object()
            && doc["components"]["schemas"]["RootView"].is_object(),
        "a boot's root image reads are documented"
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/v1/machines",
        "/api/v1/machines/{mac}",
        "/api/v1/machines/{mac}/pin",
        "/api/v1/groups",
        "/api/v1/streams/{stream}/generations",
        "/api/v1/gc",
        "/api/v1/servers",
    ] {
        assert!(paths.contains_key(p), "{p} documented");
    }
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            if method == "head" || method == "parameters" {
                continue;
            }
            assert_eq!(
                op["responses"]["4XX"]["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/ErrorBody",
                "{method} {path}"
            );
        }
    }
}

#[tokio::test]
async fn no_token_is_401_a_read_token_writing_is_403_and_errors_are_json() {
    let h = Harness::new().await;
    let mac = h.machine("52:54:00:00:00:01").await;
    let uri = format!("/api/v1/machines/{mac}/pin");
    let pin = Some(json!({ "stream": "worker", "generation": 1 }));
    let a = h.call(Method::PUT, &uri, None, pin.clone(), &[]).await;
    assert_error(&a, StatusCode::UNAUTHORIZED, "unauthenticated");
    let a = h
        .call(Method::PUT, &uri, Some("not-a-token"), pin.clone(), &[])
        .await;
    assert_error(&a, StatusCode::UNAUTHORIZED, "bad_token");
    let reader = h.reader.clone();
    let a = h
        .call(Method::PUT, &uri, Some(&reader), pin.clone(), &[])
        .await;
    assert_error(&a, StatusCode::FORBIDDEN, "forbidden");
    let admin = h.admin.clone();
    let a = h.call(Method::PUT, &uri, Some(&admin), pin, &[]).await;
    assert_error(&a, StatusCode::NOT_FOUND, "no_such_generation");
    let a = h
        .call(
            Method::PUT,
            &uri,
            Some(&admin),
            Some(json!({ "stream": 1 })),
            &[],
        )
        .await;
    assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid_json");
    let a = h.get("/api/v1/machines/not-a-mac").await;
    assert_error(&a, StatusCode::BAD_REQUEST, "invalid");
    assert_eq!(a.body["error"]["field"], "mac");
    let a = h.get("/api/v1/machines/52:54:00:00:00:99").await;
    assert_error(&a, StatusCode::NOT_FOUND, "no_such_machine");
    let a = h.get("/api/v1/no/such/thing").await;
    assert_error(&a, StatusCode::NOT_FOUND, "not_found");
    let a = h
        .get("/api/v1/machines/52:54:00:00:00:01/boots?limit=many")
        .await;
    assert_error(&a, StatusCode::BAD_REQUEST, "invalid");
}

#[tokio::test]
async fn a_machine_is_served_with_the_etag_of_its_json() {
    let h = Harness::new().await;
    let mac = h.machine("52:54:00:00:00:02").await;
    let a = h.get(&format!("/api/v1/machines/{mac}")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["mac"], mac.to_string());
    assert_eq!(a.body["kind"], "server");
    assert_eq!(a.body["recent_boots"].as_array().unwrap().len(), 1);
    let tag = a.headers[header::ETAG].to_str().unwrap().to_string();
    assert!(tag.starts_with('"'), "{tag}");
    // Booting again changes the machine, not what an update can change.
    h.machine("52:54:00:00:00:02").await;
    let again = h.get(&format!("/api/v1/machines/{mac}")).await;
    assert_eq!(again.body["recent_boots"].as_array().unwrap().len(), 2);
    assert_eq!(again.headers[header::ETAG], tag.as_str());
}
