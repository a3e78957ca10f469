//! Simulated machines over loopback HTTP: each "boot" fetches the
//! machine's iPXE script, reads which kernel it was served and its per-boot
//! token, and then confirms (phone home) or stays silent, as a healthy or a
//! broken image would; and rollouts watched until they reach a state.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::api::Api;

/// The iPXE script `mac` is served, fetched with `http` (whose source
/// address may matter: the binding rule).
pub async fn script(http: &reqwest::Client, base: &str, mac: &str) -> String {
    let url = format!(
        "{base}/boot/{}.ipxe?buildarch=x86_64&platform=pcbios",
        mac.replace(':', "-")
    );
    http.get(url).send().await.unwrap().text().await.unwrap()
}

/// The per-boot token in a script (none when it was refused one).
pub fn token_in(script: &str) -> Option<String> {
    script
        .split("/config/")
        .nth(1)
        .and_then(|t| t.split('/').next())
        .map(str::to_string)
}

/// The booted OS phones home with `token` and a form payload.
pub async fn phone_home(http: &reqwest::Client, base: &str, token: &str, form: &str) -> StatusCode {
    http.post(format!("{base}/phone-home/{token}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.to_string())
        .send()
        .await
        .unwrap()
        .status()
}

/// What one boot of a simulated machine was served.
pub struct Booted {
    /// The generation whose kernel the script loads.
    pub generation: i64,
    pub token: String,
}

/// What this file's tests do through the API beyond the shared client:
/// simulated machines booting and confirming, and rollouts watched.
pub trait Fleet {
    async fn import_worker(&self, n: u8) -> i64;
    async fn boot(&self, mac: &str) -> Booted;
    async fn confirm(&self, booted: &Booted, form: &str) -> StatusCode;
    async fn boot_ok(&self, mac: &str) -> i64;
    async fn rollout(&self, id: i64) -> Value;
    async fn wait_for(&self, id: i64, what: &str, pred: impl Fn(&Value) -> bool) -> Value;
}

impl Fleet for Api {
    /// Imports generation N of `worker`, whose kernel is recognisable.
    async fn import_worker(&self, n: u8) -> i64 {
        let kernel = vec![n; 4096];
        let initrd = vec![n.wrapping_add(100); 2048];
        self.import("worker", &kernel, &initrd, "console=ttyS0")
            .await
    }

    /// One network boot of `mac`: the script it is served.
    async fn boot(&self, mac: &str) -> Booted {
        let script = script(&self.http, &self.base, mac).await;
        let kernel = script
            .split("/artifacts/sha256/")
            .nth(1)
            .unwrap_or_else(|| panic!("a kernel in\n{script}"));
        let hex = &kernel[..64];
        let generation = (1..=9u8)
            .find(|n| hex::encode(Sha256::digest(vec![*n; 4096])) == hex)
            .expect("a kernel this test imported") as i64;
        let token = token_in(&script).unwrap_or_else(|| panic!("a token in\n{script}"));
        Booted { generation, token }
    }

    /// The booted OS phones home, with an optional form payload.
    async fn confirm(&self, booted: &Booted, form: &str) -> StatusCode {
        phone_home(&self.http, &self.base, &booted.token, form).await
    }

    /// Boots and confirms; returns the generation it runs.
    async fn boot_ok(&self, mac: &str) -> i64 {
        let b = self.boot(mac).await;
        assert_eq!(self.confirm(&b, "").await, StatusCode::OK);
        b.generation
    }

    async fn rollout(&self, id: i64) -> Value {
        self.ok(Method::GET, &format!("/api/v1/rollouts/{id}"), None)
            .await
    }

    /// Polls a rollout until `pred` holds (at most 15 s).
    async fn wait_for(&self, id: i64, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..150 {
            let r = self.rollout(id).await;
            if pred(&r) {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "rollout {id} never reached {what}: {}",
            self.rollout(id).await
        );
    }
}
