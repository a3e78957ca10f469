//! Rebooting the machines a rollout moves (to B) or rolls back (to A), and
//! those the watchdog finds hung (a boot silent past `confirm_timeout`).
//!
//! A machine with a BMC (its own or its group's, see [`crate::bmc`]) is
//! rebooted through it: the next boot set to the network once, then a
//! reset (or power on when it is off), bounded and retried by the BMC
//! service. When that fails after its retries, the failure goes back to the
//! rollout (`failures`), whose `on_bmc_failure` says whether the wave waits
//! or fails. A machine without a BMC gets the reboot hook, the fallback;
//! without either it boots its new generation whenever it next reboots, and
//! the wave waits for that (up to its timeout).
//!
//! The hook has two forms, either or both (`[rollout]` in the config):
//! - a command, run with `sh -c` and the machine in its environment:
//!   `IRONBOOT_MAC`, `IRONBOOT_IP`, `IRONBOOT_HOSTNAME`, `IRONBOOT_GROUP`,
//!   `IRONBOOT_STREAM`, `IRONBOOT_GENERATION`, `IRONBOOT_ROLLOUT` (empty
//!   when the watchdog asks: a boot went silent past `confirm_timeout`),
//!   `IRONBOOT_REASON` (empty when unknown);
//! - a webhook, POSTed the same facts as a JSON object.
//!
//! A hook runs only after the transition that asked for it is committed
//! (the ledger is flushed first), so a machine never reboots into a move
//! the database does not hold. Each attempt, its exit status or HTTP status,
//! lands in the ledger as `rollout.reboot`. Hooks run concurrently (a wave of
//! fifty machines does not wait fifty timeouts), each bounded by
//! `reboot_timeout`; a command still running then is killed.

use std::process::Stdio;

use serde::Serialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::engine::Reboot;
use super::settings::HookSettings;
use crate::bmc::service::Bmcs;
use crate::bmc::Op;
use crate::ledger::Ledger;

/// At most this many hooks at once.
const CONCURRENT: usize = 16;

/// One machine to reboot, with what the inventory knows of it.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    #[serde(flatten)]
    pub reboot: Reboot,
    pub ip: Option<String>,
    pub hostname: Option<String>,
}

/// Runs jobs until `shutdown`: each machine through its BMC when it has
/// one, else through the hook when one is configured. A BMC that fails
/// after its retries is reported on `failures`.
pub async fn run(
    settings: HookSettings,
    bmcs: Bmcs,
    mut rx: mpsc::Receiver<Job>,
    failures: mpsc::Sender<(Reboot, String)>,
    ledger: Ledger,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(settings.timeout)
        .build()
        .map_err(std::io::Error::other)?;
    let mut running = JoinSet::new();
    loop {
        let job = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = running.join_next(), if !running.is_empty() => continue,
            job = rx.recv() => match job {
                Some(job) => job,
                None => break,
            },
        };
        // The move (or roll back) is committed before the machine reboots.
        ledger.flush().await;
        while running.len() >= CONCURRENT {
            tokio::select! {
                _ = shutdown.cancelled() => { running.abort_all(); return Ok(()); }
                _ = running.join_next() => {}
            }
        }
        let (settings, http, ledger) = (settings.clone(), http.clone(), ledger.clone());
        let (bmcs, failures) = (bmcs.clone(), failures.clone());
        running.spawn(async move {
            let detail = match reboot_by_bmc(&bmcs, &job).await {
                Some(Ok(detail)) => detail,
                Some(Err((detail, error))) => {
                    let _ = failures.send((job.reboot.clone(), error)).await;
                    detail
                }
                None if settings.is_configured() => fire(&settings, &http, &job).await,
                None => return,
            };
            ledger.event(
                Some(job.reboot.mac),
                job.ip.as_deref().and_then(|i| i.parse().ok()),
                "rollout.reboot",
                detail,
                None,
            );
        });
    }
    running.abort_all();
    Ok(())
}

type Failed = (serde_json::Value, String);

/// Reboots the machine into the network through its BMC; `None` when it
/// has none. A BMC configured but unusable (incomplete, a password that
/// does not open) is a failure, not a reason to fall back to the hook.
async fn reboot_by_bmc(bmcs: &Bmcs, job: &Job) -> Option<Result<serde_json::Value, Failed>> {
    let r = &job.reboot;
    let base = json!({ "rollout": r.rollout, "generation": r.generation, "reason": r.reason, "via": "bmc" });
    let ep = match bmcs.endpoint(r.mac, &r.group).await {
        Ok(Some(ep)) => ep,
        Ok(None) => return None,
        Err(e) => {
            let mut detail = base;
            detail["bmc"] = json!({ "ok": false, "error": e.to_string() });
            return Some(Err((detail, e.to_string())));
        }
    };
    let outcome = bmcs.run_on(&ep, r.mac, Op::Netboot, &r.reason).await;
    let mut detail = base;
    detail["bmc"] = json!({ "ok": outcome.ok, "attempts": outcome.attempts, "error": outcome.error, "ms": outcome.ms });
    Some(match outcome.error {
        Some(error) if !outcome.ok => Err((detail, error)),
        _ => Ok(detail),
    })
}

/// Runs the command and/or calls the webhook; returns what happened.
pub async fn fire(settings: &HookSettings, http: &reqwest::Client, job: &Job) -> serde_json::Value {
    let mut detail = json!({ "rollout": job.reboot.rollout, "generation": job.reboot.generation, "reason": job.reboot.reason });
    if let Some(command) = &settings.command {
        detail["command"] = run_command(command, settings.timeout, job).await;
    }
    if let Some(url) = &settings.webhook {
        detail["webhook"] = match http.post(url).json(job).send().await {
            Ok(resp) if resp.status().is_success() => {
                json!({ "ok": true, "status": resp.status().as_u16() })
            }
            Ok(resp) => json!({ "ok": false, "status": resp.status().as_u16() }),
            Err(e) => json!({ "ok": false, "error": e.to_string() }),
        };
    }
    let ok = ["command", "webhook"]
        .iter()
        .filter_map(|k| detail.get(*k))
        .all(|v| v["ok"] == json!(true));
    if !ok {
        tracing::warn!(mac = %job.reboot.mac, detail = %detail, "reboot hook failed");
    }
    detail
}

async fn run_command(command: &str, timeout: std::time::Duration, job: &Job) -> serde_json::Value {
    let r = &job.reboot;
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("IRONBOOT_MAC", r.mac.to_string())
        .env("IRONBOOT_IP", job.ip.clone().unwrap_or_default())
        .env(
            "IRONBOOT_HOSTNAME",
            job.hostname.clone().unwrap_or_default(),
        )
        .env("IRONBOOT_GROUP", &r.group)
        .env("IRONBOOT_STREAM", &r.generation.stream)
        .env("IRONBOOT_GENERATION", r.generation.number.to_string())
        .env(
            "IRONBOOT_ROLLOUT",
            r.rollout.map(|id| id.to_string()).unwrap_or_default(),
        )
        .env("IRONBOOT_REASON", &r.reason)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => return json!({ "ok": false, "error": format!("cannot start sh: {e}") }),
    };
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: String = stderr
                .chars()
                .rev()
                .take(500)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            json!({ "ok": out.status.success(), "exit": out.status.code(), "stderr": tail.trim() })
        }
        Ok(Err(e)) => json!({ "ok": false, "error": e.to_string() }),
        Err(_) => {
            json!({ "ok": false, "error": format!("still running after {} s; killed", timeout.as_secs()) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::GenerationId;
    use crate::domain::MacAddr;

    fn job() -> Job {
        Job {
            reboot: Reboot {
                mac: MacAddr([0x52, 0x54, 0, 0, 0, 7]),
                rollout: Some(4),
                group: "web".into(),
                generation: GenerationId::new("worker", 42),
                reason: "rollout 4 wave 0: moved to worker gen 42".into(),
            },
            ip: Some("10.0.0.7".into()),
            hostname: Some("web7".into()),
        }
    }

    #[tokio::test]
    async fn the_command_sees_the_machine_in_its_environment() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("seen");
        let settings = HookSettings {
            command: Some(format!(
                "echo \"$IRONBOOT_MAC $IRONBOOT_IP $IRONBOOT_HOSTNAME $IRONBOOT_GROUP $IRONBOOT_STREAM $IRONBOOT_GENERATION $IRONBOOT_ROLLOUT\" > {}",
                out.display()
            )),
            webhook: None,
            timeout: std::time::Duration::from_secs(5),
        };
        let detail = fire(&settings, &reqwest::Client::new(), &job()).await;
        assert_eq!(detail["command"]["ok"], json!(true), "{detail}");
        assert_eq!(
            std::fs::read_to_string(&out).unwrap().trim(),
            "52:54:00:00:00:07 10.0.0.7 web7 web worker 42 4"
        );
    }

    #[tokio::test]
    async fn a_failing_or_hanging_command_is_reported_and_killed() {
        let mut settings = HookSettings {
            command: Some("echo no BMC >&2; exit 3".into()),
            webhook: None,
            timeout: std::time::Duration::from_millis(500),
        };
        let d = fire(&settings, &reqwest::Client::new(), &job()).await;
        assert_eq!(d["command"]["exit"], json!(3));
        assert_eq!(d["command"]["stderr"], json!("no BMC"));
        settings.command = Some("sleep 30".into());
        let started = std::time::Instant::now();
        let d = fire(&settings, &reqwest::Client::new(), &job()).await;
        assert_eq!(d["command"]["ok"], json!(false));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[tokio::test]
    async fn the_webhook_is_posted_the_machine_as_json() {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<serde_json::Value>(1);
        let app = axum::Router::new().route(
            "/reboot",
            axum::routing::post(move |axum::Json(v): axum::Json<serde_json::Value>| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(v).await;
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let settings = HookSettings {
            command: None,
            webhook: Some(format!("http://{addr}/reboot")),
            timeout: std::time::Duration::from_secs(5),
        };
        let http = reqwest::Client::new();
        let d = fire(&settings, &http, &job()).await;
        assert_eq!(d["webhook"], json!({ "ok": true, "status": 200 }), "{d}");
        let got = rx.recv().await.unwrap();
        assert_eq!(got["mac"], "52:54:00:00:00:07");
        assert_eq!(got["ip"], "10.0.0.7");
        assert_eq!(got["hostname"], "web7");
        assert_eq!(got["generation"]["number"], 42);
        assert_eq!(got["rollout"], 4);
        server.abort();
        settings_unreachable(&http).await;
    }

    async fn settings_unreachable(http: &reqwest::Client) {
        let settings = HookSettings {
            command: None,
            webhook: Some("http://127.0.0.1:9/reboot".into()),
            timeout: std::time::Duration::from_secs(2),
        };
        let d = fire(&settings, http, &job()).await;
        assert_eq!(d["webhook"]["ok"], json!(false), "{d}");
    }
}
