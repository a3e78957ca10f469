//! The `[rollout]` section of the config file: the watchdog's policy and
//! the optional reboot hook.
//!
//! ```toml
//! [rollout]
//! watchdog_failures = 3        # failed boots of one generation before falling back
//! confirm_timeout = "10m"      # a served boot silent this long has failed
//! reboot_command = "/usr/local/bin/ipmi-reboot"   # run with IRONBOOT_MAC, _IP, _HOSTNAME, …
//! reboot_webhook = "http://bmc-gateway:9000/reboot" # or/and: POST JSON
//! reboot_timeout = "30s"
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::watchdog::Policy;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRollout {
    pub watchdog_failures: u32,
    pub confirm_timeout: String,
    pub reboot_command: Option<String>,
    pub reboot_webhook: Option<String>,
    pub reboot_timeout: String,
}

impl Default for RawRollout {
    fn default() -> Self {
        Self {
            watchdog_failures: 3,
            confirm_timeout: "10m".into(),
            reboot_command: None,
            reboot_webhook: None,
            reboot_timeout: "30s".into(),
        }
    }
}

/// Validated `[rollout]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutSettings {
    pub watchdog: Policy,
    pub hook: HookSettings,
}

/// How to ask for a machine's reboot; neither set: no hook (machines move
/// when they next reboot on their own).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HookSettings {
    /// Run with `sh -c`, the machine in the environment.
    pub command: Option<String>,
    /// POSTed a JSON body per machine.
    pub webhook: Option<String>,
    pub timeout: Duration,
}

impl HookSettings {
    pub fn is_configured(&self) -> bool {
        self.command.is_some() || self.webhook.is_some()
    }
}

/// Validates the section; errors are `(key, message)`.
pub fn validate(raw: &RawRollout) -> Result<RolloutSettings, (String, String)> {
    let bad = |key: &str, message: String| (format!("rollout.{key}"), message);
    if raw.watchdog_failures == 0 {
        return Err(bad(
            "watchdog_failures",
            "must be at least 1 (failed boots before the last good generation is served)".into(),
        ));
    }
    let duration = |key: &str, text: &str| {
        humantime::parse_duration(text.trim()).map_err(|e| {
            bad(
                key,
                format!("{text:?} is not a duration like \"90s\" or \"10m\": {e}"),
            )
        })
    };
    let confirm = duration("confirm_timeout", &raw.confirm_timeout)?;
    if confirm < Duration::from_secs(1) {
        return Err(bad("confirm_timeout", "must be at least 1s".into()));
    }
    let timeout = duration("reboot_timeout", &raw.reboot_timeout)?;
    if timeout.is_zero() {
        return Err(bad("reboot_timeout", "must be more than 0s".into()));
    }
    if let Some(c) = &raw.reboot_command {
        if c.trim().is_empty() {
            return Err(bad(
                "reboot_command",
                "is empty; leave it out instead".into(),
            ));
        }
    }
    if let Some(url) = &raw.reboot_webhook {
        let ok = (url.starts_with("http://") || url.starts_with("https://"))
            && reqwest::Url::parse(url).is_ok();
        if !ok {
            return Err(bad(
                "reboot_webhook",
                format!("{url:?} is not an http:// or https:// URL"),
            ));
        }
    }
    Ok(RolloutSettings {
        watchdog: Policy {
            max_failures: raw.watchdog_failures,
            confirm_timeout_ms: confirm.as_millis() as i64,
        },
        hook: HookSettings {
            command: raw.reboot_command.clone(),
            webhook: raw.reboot_webhook.clone(),
            timeout,
        },
    })
}

impl Default for RolloutSettings {
    fn default() -> Self {
        validate(&RawRollout::default()).expect("defaults are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors_that_name_the_key() {
        let d = RolloutSettings::default();
        assert_eq!(d.watchdog.max_failures, 3);
        assert_eq!(d.watchdog.confirm_timeout_ms, 600_000);
        assert!(!d.hook.is_configured());
        type Change = fn(&mut RawRollout);
        let cases: [(Change, &str); 4] = [
            (|r| r.watchdog_failures = 0, "rollout.watchdog_failures"),
            (
                |r| r.confirm_timeout = "soon".into(),
                "rollout.confirm_timeout",
            ),
            (
                |r| r.reboot_webhook = Some("ftp://x".into()),
                "rollout.reboot_webhook",
            ),
            (
                |r| r.reboot_command = Some(" ".into()),
                "rollout.reboot_command",
            ),
        ];
        for (change, key) in cases {
            let mut raw = RawRollout::default();
            change(&mut raw);
            assert_eq!(validate(&raw).unwrap_err().0, key);
        }
    }
}
