//! A small Redfish BMC for tests: several systems behind one address (as an
//! aggregator or sushy-tools shows them), basic authentication, power and a
//! one-time boot override, every request logged, and faults on demand: one
//! call in N answered 503 or stalled, a reset type list to allow.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct System {
    pub mac: String,
    pub power: String,
    /// (target, enabled) of the boot override.
    pub boot: (String, String),
    /// Reset types received, in order.
    pub resets: Vec<String>,
}

/// One request as the BMC saw it: method, path, body.
pub type Logged = (String, String, Value);

#[derive(Default)]
pub struct Faults {
    /// Every `n`th request (1-based) fails: 503 when `stall` is zero, else
    /// it stalls this long before answering.
    pub every: usize,
    pub stall: Duration,
    /// Reset types the systems allow (`None`: the action lists none).
    pub allowed: Option<Vec<String>>,
}

pub struct Bmc {
    pub systems: Mutex<BTreeMap<String, System>>,
    pub log: Mutex<Vec<Logged>>,
    pub faults: Mutex<Faults>,
    pub password: String,
    calls: AtomicUsize,
    running: AtomicUsize,
    pub most_at_once: AtomicUsize,
}

impl Bmc {
    pub fn resets_of(&self, mac: &str) -> Vec<String> {
        let systems = self.systems.lock().unwrap();
        systems
            .values()
            .find(|s| s.mac == mac)
            .map(|s| s.resets.clone())
            .unwrap_or_default()
    }

    pub fn system_of(&self, mac: &str) -> System {
        let systems = self.systems.lock().unwrap();
        systems
            .values()
            .find(|s| s.mac == mac)
            .cloned()
            .expect("a system with this MAC")
    }
}

/// Starts the BMC on loopback with one system per MAC (all off); returns
/// its state and its base URL.
pub async fn start(macs: &[&str], password: &str) -> (Arc<Bmc>, String) {
    let systems = macs
        .iter()
        .enumerate()
        .map(|(i, mac)| {
            (
                format!("node{i}"),
                System {
                    mac: mac.to_string(),
                    power: "Off".into(),
                    boot: ("None".into(), "Disabled".into()),
                    resets: Vec::new(),
                },
            )
        })
        .collect();
    let bmc = Arc::new(Bmc {
        systems: Mutex::new(systems),
        log: Default::default(),
        faults: Default::default(),
        password: password.into(),
        calls: AtomicUsize::new(0),
        running: AtomicUsize::new(0),
        most_at_once: AtomicUsize::new(0),
    });
    let app = Router::new()
        .route("/redfish/v1/Systems", get(collection))
        .route("/redfish/v1/Systems/{id}", get(system).patch(patch_system))
        .route("/redfish/v1/Systems/{id}/EthernetInterfaces", get(nics))
        .route("/redfish/v1/Systems/{id}/EthernetInterfaces/nic0", get(nic))
        .route(
            "/redfish/v1/Systems/{id}/Actions/ComputerSystem.Reset",
            post(reset),
        )
        .layer(axum::middleware::from_fn_with_state(bmc.clone(), gate))
        .with_state(bmc.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (bmc, url)
}

/// Authentication, the log, the concurrency count and the faults.
async fn gate(
    State(bmc): State<Arc<Bmc>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let at_once = bmc.running.fetch_add(1, Ordering::SeqCst) + 1;
    bmc.most_at_once.fetch_max(at_once, Ordering::SeqCst);
    let _done = Done(&bmc.running);
    let expected = format!(
        "Basic {}",
        base64_encode(format!("admin:{}", bmc.password).as_bytes())
    );
    if req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        != Some(&expected)
    {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": {"message": "bad credentials"}})),
        )
            .into_response();
    }
    let n = bmc.calls.fetch_add(1, Ordering::SeqCst) + 1;
    let (every, stall) = {
        let f = bmc.faults.lock().unwrap();
        (f.every, f.stall)
    };
    if every > 0 && n % every == 0 {
        if stall.is_zero() {
            let body = json!({"error": {"message": "busy", "@Message.ExtendedInfo": [{"Message": "The BMC is busy."}]}});
            return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
        }
        tokio::time::sleep(stall).await;
    }
    next.run(req).await
}

struct Done<'a>(&'a AtomicUsize);
impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn base64_encode(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

async fn collection(State(bmc): State<Arc<Bmc>>) -> Json<Value> {
    bmc.log
        .lock()
        .unwrap()
        .push(("GET".into(), "/redfish/v1/Systems".into(), Value::Null));
    let members: Vec<Value> = bmc
        .systems
        .lock()
        .unwrap()
        .keys()
        .map(|id| json!({ "@odata.id": format!("/redfish/v1/Systems/{id}") }))
        .collect();
    Json(json!({ "Members": members, "Members@odata.count": members.len() }))
}

async fn system(State(bmc): State<Arc<Bmc>>, Path(id): Path<String>) -> Response {
    let Some(s) = bmc.systems.lock().unwrap().get(&id).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let allowed = bmc.faults.lock().unwrap().allowed.clone();
    let mut action =
        json!({ "target": format!("/redfish/v1/Systems/{id}/Actions/ComputerSystem.Reset") });
    if let Some(a) = allowed {
        action["ResetType@Redfish.AllowableValues"] = json!(a);
    }
    let body = json!({
        "Id": id,
        "PowerState": s.power,
        "Boot": {
            "BootSourceOverrideTarget": s.boot.0,
            "BootSourceOverrideEnabled": s.boot.1,
            "BootSourceOverrideTarget@Redfish.AllowableValues": ["None", "Pxe", "Hdd", "UefiHttp"],
        },
        "EthernetInterfaces": { "@odata.id": format!("/redfish/v1/Systems/{id}/EthernetInterfaces") },
        "Actions": { "#ComputerSystem.Reset": action },
    });
    let mut headers = HeaderMap::new();
    headers.insert(
        "ETag",
        format!("\"{id}-{}\"", s.resets.len()).parse().unwrap(),
    );
    (headers, Json(body)).into_response()
}

async fn nics(Path(id): Path<String>) -> Json<Value> {
    Json(
        json!({ "Members": [{ "@odata.id": format!("/redfish/v1/Systems/{id}/EthernetInterfaces/nic0") }] }),
    )
}

async fn nic(State(bmc): State<Arc<Bmc>>, Path(id): Path<String>) -> Response {
    match bmc.systems.lock().unwrap().get(&id) {
        Some(s) => {
            Json(json!({ "Id": "nic0", "MACAddress": s.mac.to_uppercase() })).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn patch_system(
    State(bmc): State<Arc<Bmc>>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    bmc.log
        .lock()
        .unwrap()
        .push(("PATCH".into(), id.clone(), body.clone()));
    let mut systems = bmc.systems.lock().unwrap();
    let Some(s) = systems.get_mut(&id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let boot = &body["Boot"];
    if let (Some(t), Some(e)) = (
        boot["BootSourceOverrideTarget"].as_str(),
        boot["BootSourceOverrideEnabled"].as_str(),
    ) {
        s.boot = (t.into(), e.into());
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn reset(
    State(bmc): State<Arc<Bmc>>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    bmc.log
        .lock()
        .unwrap()
        .push(("POST".into(), id.clone(), body.clone()));
    let allowed = bmc.faults.lock().unwrap().allowed.clone();
    let mut systems = bmc.systems.lock().unwrap();
    let Some(s) = systems.get_mut(&id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let kind = body["ResetType"].as_str().unwrap_or_default().to_string();
    if allowed.is_some_and(|a| !a.contains(&kind)) {
        let msg = json!({"error": {"message": format!("ResetType {kind} not supported")}});
        return (StatusCode::BAD_REQUEST, Json(msg)).into_response();
    }
    s.power = match kind.as_str() {
        "ForceOff" | "GracefulShutdown" => "Off".into(),
        _ => "On".into(),
    };
    s.resets.push(kind);
    StatusCode::NO_CONTENT.into_response()
}
