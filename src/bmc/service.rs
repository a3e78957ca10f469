//! Running BMC operations for the rest of the server: the `[bmc]` settings,
//! the cap on operations at once, the bound on each call, retries, and the
//! events that record them.
//!
//! ```toml
//! [bmc]
//! concurrency = 8     # operations at once, across all BMCs
//! timeout = "15s"     # one attempt (every request it makes) at most this long
//! retries = 3         # further attempts after a failure that can pass
//! backoff = "1s"      # before the first retry; doubled before each next one
//! ipmitool = "ipmitool"
//! ```
//!
//! Events (step, detail): `bmc.retry` for each failed attempt that is
//! retried, `bmc.op` once with the outcome. No event, log line or answer
//! holds a password.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use super::redfish::{Done, Systems};
use super::seal::Sealer;
use super::{owner_key, resolve, BmcError, Endpoint, Op, Power, Protocol, ResolveError};
use crate::domain::MacAddr;
use crate::ledger::{now_ms, Ledger};
use crate::store::bmcs::OwnerKind;
use crate::store::Store;

/// `[bmc]` as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBmc {
    pub concurrency: usize,
    pub timeout: String,
    pub retries: u32,
    pub backoff: String,
    pub ipmitool: String,
}

impl Default for RawBmc {
    fn default() -> Self {
        Self {
            concurrency: 8,
            timeout: "15s".into(),
            retries: 3,
            backoff: "1s".into(),
            ipmitool: "ipmitool".into(),
        }
    }
}

/// `[bmc]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BmcSettings {
    pub concurrency: usize,
    pub timeout: Duration,
    pub retries: u32,
    pub backoff: Duration,
    pub ipmitool: String,
}

impl Default for BmcSettings {
    fn default() -> Self {
        validate(&RawBmc::default()).expect("defaults are valid")
    }
}

/// Validates the section; errors are `(key, message)`.
pub fn validate(raw: &RawBmc) -> Result<BmcSettings, (String, String)> {
    let bad = |key: &str, message: String| (format!("bmc.{key}"), message);
    let duration = |key: &str, text: &str| {
        humantime::parse_duration(text.trim())
            .map_err(|e| bad(key, format!("{text:?} is not a duration like \"15s\": {e}")))
    };
    if !(1..=256).contains(&raw.concurrency) {
        return Err(bad("concurrency", "must be between 1 and 256".into()));
    }
    let timeout = duration("timeout", &raw.timeout)?;
    if timeout < Duration::from_millis(100) || timeout > Duration::from_secs(600) {
        return Err(bad("timeout", "must be between 100ms and 10m".into()));
    }
    if raw.retries > 10 {
        return Err(bad("retries", "must be at most 10".into()));
    }
    let backoff = duration("backoff", &raw.backoff)?;
    if backoff > Duration::from_secs(60) {
        return Err(bad("backoff", "must be at most 60s".into()));
    }
    if raw.ipmitool.trim().is_empty() {
        return Err(bad("ipmitool", "is empty".into()));
    }
    Ok(BmcSettings {
        concurrency: raw.concurrency,
        timeout,
        retries: raw.retries,
        backoff,
        ipmitool: raw.ipmitool.clone(),
    })
}

/// Why an operation could not start.
#[derive(Debug, thiserror::Error)]
pub enum Unusable {
    #[error("{0} has no BMC (set one on the machine or its group)")]
    NoBmc(MacAddr),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error("reading the BMC: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// What an operation came to, after its retries.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Outcome {
    pub op: Op,
    pub ok: bool,
    /// The power state after (as read, or as asked of the BMC).
    pub power: Option<Power>,
    /// Attempts made (1 when the first succeeded).
    pub attempts: u32,
    /// The last attempt's failure.
    pub error: Option<String>,
    /// Whether the failure can pass (a later try may work).
    pub passes: bool,
    /// What was sent (reset type, boot override, system).
    #[schema(value_type = Object)]
    pub detail: Value,
    /// From the request to the outcome, waiting for a slot included.
    pub ms: u64,
}

/// The server's BMC service (cheap to clone).
#[derive(Clone)]
pub struct Bmcs {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    sealer: Sealer,
    ledger: Ledger,
    settings: BmcSettings,
    slots: Semaphore,
    /// For BMCs whose certificate is checked, and for the rest.
    verified: reqwest::Client,
    unverified: reqwest::Client,
    systems: Systems,
}

impl Bmcs {
    pub fn new(
        store: Store,
        sealer: Sealer,
        ledger: Ledger,
        settings: BmcSettings,
    ) -> Result<Self, reqwest::Error> {
        let client = |verify: bool| {
            reqwest::Client::builder()
                .danger_accept_invalid_certs(!verify)
                .connect_timeout(settings.timeout)
                .redirect(reqwest::redirect::Policy::none())
                .build()
        };
        Ok(Self {
            inner: Arc::new(Inner {
                verified: client(true)?,
                unverified: client(false)?,
                slots: Semaphore::new(settings.concurrency),
                store,
                sealer,
                ledger,
                settings,
                systems: Default::default(),
            }),
        })
    }

    pub fn sealer(&self) -> &Sealer {
        &self.inner.sealer
    }

    pub fn settings(&self) -> &BmcSettings {
        &self.inner.settings
    }

    /// The BMC of `mac` (a member of `group`), if it has one.
    pub async fn endpoint(&self, mac: MacAddr, group: &str) -> Result<Option<Endpoint>, Unusable> {
        let store = &self.inner.store;
        let own = store.bmc(OwnerKind::Machine, &mac.to_string()).await?;
        let shared = store.bmc(OwnerKind::Group, group).await?;
        let sealer = &self.inner.sealer;
        let open = |row: &_, sealed: &str| {
            sealer
                .open(&owner_key(row), sealed)
                .map_err(|e| e.to_string())
        };
        Ok(resolve(
            own.as_ref(),
            shared.as_ref(),
            &mac.to_string(),
            open,
        )?)
    }

    /// Runs `op` on the BMC of `mac`; `why` goes into its events.
    pub async fn run(
        &self,
        mac: MacAddr,
        group: &str,
        op: Op,
        why: &str,
    ) -> Result<Outcome, Unusable> {
        let ep = self
            .endpoint(mac, group)
            .await?
            .ok_or(Unusable::NoBmc(mac))?;
        Ok(self.run_on(&ep, mac, op, why).await)
    }

    /// Runs `op` on `ep` for `mac`: at most `concurrency` at once, each
    /// attempt bounded, failures that can pass retried with backoff.
    pub async fn run_on(&self, ep: &Endpoint, mac: MacAddr, op: Op, why: &str) -> Outcome {
        let s = &self.inner.settings;
        let started = Instant::now();
        let mut attempt = 0;
        let mut backoff = s.backoff;
        loop {
            attempt += 1;
            let result = {
                // The slot is held for one attempt, not across a backoff.
                let _slot = self
                    .inner
                    .slots
                    .acquire()
                    .await
                    .expect("the semaphore is never closed");
                let tried = Instant::now();
                let r = tokio::time::timeout(s.timeout, self.call(ep, mac, op))
                    .await
                    .unwrap_or(Err(BmcError::Timeout(s.timeout)));
                (r, tried.elapsed())
            };
            let (err, took) = match result {
                (Ok(done), _) => {
                    let done = Ok(done);
                    return self
                        .finish(ep, mac, op, why, (attempt, started), done)
                        .await;
                }
                (Err(e), took) => (e, took),
            };
            if !err.passes() || attempt > s.retries {
                let failed = Err(err);
                return self
                    .finish(ep, mac, op, why, (attempt, started), failed)
                    .await;
            }
            self.inner.ledger.event(
                Some(mac),
                None,
                "bmc.retry",
                json!({
                    "op": op.as_str(), "protocol": ep.protocol.as_str(), "attempt": attempt,
                    "error": err.to_string(), "ms": took.as_millis() as u64,
                    "retry_in_ms": backoff.as_millis() as u64, "why": why,
                }),
                None,
            );
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2);
        }
    }

    async fn call(&self, ep: &Endpoint, mac: MacAddr, op: Op) -> Result<Done, BmcError> {
        let inner = &self.inner;
        match ep.protocol {
            Protocol::Redfish => {
                let http = if ep.verify_tls {
                    &inner.verified
                } else {
                    &inner.unverified
                };
                super::redfish::run(http, ep, mac, op, &inner.systems).await
            }
            Protocol::Ipmi => {
                super::ipmi::run(&inner.settings.ipmitool, ep, op, inner.settings.timeout).await
            }
        }
    }

    /// Records the outcome (`bmc.op`) and the power state it left.
    async fn finish(
        &self,
        ep: &Endpoint,
        mac: MacAddr,
        op: Op,
        why: &str,
        (attempts, started): (u32, Instant),
        result: Result<Done, BmcError>,
    ) -> Outcome {
        let ms = started.elapsed().as_millis() as u64;
        let outcome = match result {
            Ok(done) => Outcome {
                op,
                ok: true,
                power: done.power,
                attempts,
                error: None,
                passes: false,
                detail: done.detail,
                ms,
            },
            Err(e) => Outcome {
                op,
                ok: false,
                power: None,
                attempts,
                error: Some(e.to_string()),
                passes: e.passes(),
                detail: Value::Null,
                ms,
            },
        };
        if let Some(power) = outcome.power {
            if let Err(e) = self
                .inner
                .store
                .note_power(&mac.to_string(), power.as_str(), now_ms())
                .await
            {
                tracing::warn!(%mac, error = %e, "cannot record the power state");
            }
        }
        if !outcome.ok {
            tracing::warn!(%mac, op = op.as_str(), error = ?outcome.error, attempts, "BMC operation failed");
        }
        let mut detail = serde_json::to_value(&outcome).unwrap_or(Value::Null);
        detail["why"] = json!(why);
        detail["protocol"] = json!(ep.protocol.as_str());
        self.inner
            .ledger
            .event(Some(mac), None, "bmc.op", detail, None);
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_defaults_and_errors_that_name_the_key() {
        let d = BmcSettings::default();
        assert_eq!((d.concurrency, d.retries), (8, 3));
        assert_eq!(d.timeout, Duration::from_secs(15));
        type Change = fn(&mut RawBmc);
        let cases: [(Change, &str); 5] = [
            (|r| r.concurrency = 0, "bmc.concurrency"),
            (|r| r.timeout = "soon".into(), "bmc.timeout"),
            (|r| r.timeout = "1ms".into(), "bmc.timeout"),
            (|r| r.retries = 99, "bmc.retries"),
            (|r| r.ipmitool = " ".into(), "bmc.ipmitool"),
        ];
        for (change, key) in cases {
            let mut raw = RawBmc::default();
            change(&mut raw);
            assert_eq!(validate(&raw).unwrap_err().0, key);
        }
    }
}
