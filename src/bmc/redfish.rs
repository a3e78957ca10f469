//! Redfish (DMTF DSP0266) over HTTPS with basic authentication: the few
//! resources power and boot control need.
//!
//! - The system: `system_id` when set, else the endpoint's only system,
//!   else the one whose Ethernet interfaces carry the machine's MAC (one
//!   aggregator or emulator in front of a rack). Found once per machine
//!   and remembered.
//! - Power: `PowerState` of the system; changes through
//!   `#ComputerSystem.Reset` with a reset type chosen from the ones the BMC
//!   lists (`ResetType@Redfish.AllowableValues`, or its `ActionInfo`):
//!   vendors disagree on which they offer, so [`choose_reset`] takes the
//!   first of a preference list that the BMC allows, and powers on a
//!   machine that is off instead of resetting it.
//! - The next boot: a `PATCH` of `Boot` with `BootSourceOverrideTarget`
//!   (`Pxe` or `UefiHttp`) and `BootSourceOverrideEnabled: Once`, with the
//!   `If-Match` of the system's ETag when it sent one (some BMCs require it).
//!
//! Answers are read up to 1 MiB; error bodies give their message (Redfish's
//! `error.@Message.ExtendedInfo`) to the event, cut to 200 characters.

use std::collections::HashMap;
use std::sync::Mutex;

use reqwest::{Method, StatusCode, Url};
use serde_json::{json, Value};

use super::{BmcError, BootTarget, Endpoint, Op, Power};
use crate::domain::MacAddr;

/// Largest answer read from a BMC.
const MAX_BODY: usize = 1 << 20;
/// At most this many systems are looked through for a MAC.
const MAX_SYSTEMS: usize = 256;

/// What an operation did.
#[derive(Debug, Clone, PartialEq)]
pub struct Done {
    /// The power state after the operation (as read, or as asked).
    pub power: Option<Power>,
    /// What was sent, for the event (`reset_type`, `boot_override`).
    pub detail: Value,
}

/// Systems found per (BMC address, MAC).
pub type Systems = Mutex<HashMap<(String, MacAddr), String>>;

/// One operation on the machine `mac` behind `ep`.
pub async fn run(
    http: &reqwest::Client,
    ep: &Endpoint,
    mac: MacAddr,
    op: Op,
    systems: &Systems,
) -> Result<Done, BmcError> {
    let base = base_url(&ep.address)?;
    let client = Client { http, ep, base };
    let path = client.system_path(mac, systems).await?;
    let (system, etag) = client.get(&path).await?;
    let power = power_of(&system)?;
    let mut detail = json!({ "system": path, "power_before": power.as_str() });
    if op == Op::Status {
        return Ok(Done {
            power: Some(power),
            detail,
        });
    }
    if matches!(op, Op::Netboot | Op::NetbootNext) {
        let target = override_target(&system, ep.boot_target)?;
        let body = json!({ "Boot": {
            "BootSourceOverrideTarget": target,
            "BootSourceOverrideEnabled": "Once",
        }});
        client
            .send(Method::PATCH, &path, &body, etag.as_deref())
            .await?;
        detail["boot_override"] = json!(target);
        if op == Op::NetbootNext {
            return Ok(Done {
                power: Some(power),
                detail,
            });
        }
    }
    let (target, allowed) = client.reset_action(&system).await?;
    let Some(reset) = choose_reset(op, power, allowed.as_deref())? else {
        detail["reset_type"] = json!(null);
        return Ok(Done {
            power: Some(power),
            detail,
        });
    };
    client
        .send(Method::POST, &target, &json!({ "ResetType": reset }), None)
        .await?;
    detail["reset_type"] = json!(reset);
    let after = match op {
        Op::Off | Op::GracefulOff => Power::Off,
        _ => Power::On,
    };
    Ok(Done {
        power: Some(after),
        detail,
    })
}

/// The reset type for `op` on a machine whose power is `power`, from the
/// ones the BMC allows (`None`: it did not say, so the standard ones).
/// `Ok(None)`: nothing to do (turning on what is on, off what is off).
pub fn choose_reset(
    op: Op,
    power: Power,
    allowed: Option<&[String]>,
) -> Result<Option<String>, BmcError> {
    const ON: &[&str] = &["On", "ForceOn", "PushPowerButton"];
    let wanted: &[&str] = match (op, power) {
        (Op::Status | Op::NetbootNext, _) => return Ok(None),
        (Op::On, Power::On) | (Op::Off | Op::GracefulOff, Power::Off) => return Ok(None),
        // A machine that is off is started, not reset: BMCs refuse to
        // reset what is off.
        (Op::On | Op::Cycle | Op::Reset | Op::Netboot, Power::Off) => ON,
        (Op::Off, Power::On) => &["ForceOff"],
        (Op::GracefulOff, Power::On) => &["GracefulShutdown"],
        (Op::Cycle, Power::On) => &["PowerCycle", "ForceRestart", "GracefulRestart"],
        (Op::Reset | Op::Netboot, Power::On) => &["ForceRestart", "PowerCycle", "GracefulRestart"],
    };
    let offered = |t: &str| allowed.is_none_or(|a| a.iter().any(|x| x == t));
    match wanted.iter().find(|t| offered(t)) {
        Some(t) => Ok(Some(t.to_string())),
        None => Err(BmcError::Unsupported(format!(
            "none of {} among the reset types it allows ({})",
            wanted.join(", "),
            allowed.unwrap_or_default().join(", ")
        ))),
    }
}

/// `https://host` from what the operator wrote (a scheme is optional).
pub(super) fn base_url(address: &str) -> Result<Url, BmcError> {
    let text = if address.contains("://") {
        address.to_string()
    } else {
        format!("https://{address}")
    };
    Url::parse(&text)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| BmcError::Unsupported(format!("{address} is not a Redfish address")))
}

fn power_of(system: &Value) -> Result<Power, BmcError> {
    match system["PowerState"].as_str() {
        Some("On" | "PoweringOff" | "Paused") => Ok(Power::On),
        Some("Off" | "PoweringOn") => Ok(Power::Off),
        other => Err(BmcError::Garbled(format!("PowerState {other:?}"))),
    }
}

/// The override target's Redfish name, if the system allows it.
fn override_target(system: &Value, target: BootTarget) -> Result<&'static str, BmcError> {
    let name = match target {
        BootTarget::Pxe => "Pxe",
        BootTarget::Http => "UefiHttp",
    };
    let allowed = &system["Boot"]["BootSourceOverrideTarget@Redfish.AllowableValues"];
    match allowed.as_array() {
        Some(list) if !list.iter().any(|v| v == name) => Err(BmcError::Unsupported(format!(
            "boot override to {name} (it allows {})",
            list.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        _ => Ok(name),
    }
}

struct Client<'a> {
    http: &'a reqwest::Client,
    ep: &'a Endpoint,
    base: Url,
}

impl Client<'_> {
    fn url(&self, path: &str) -> Result<Url, BmcError> {
        self.base
            .join(path)
            .map_err(|_| BmcError::Garbled(format!("path {path}")))
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<(Value, Option<String>), BmcError> {
        let mut req = self
            .http
            .request(method, self.url(path)?)
            .basic_auth(&self.ep.username, Some(&self.ep.password))
            .header("Accept", "application/json");
        if let Some(body) = body {
            req = req.json(body);
        }
        if let Some(tag) = if_match {
            req = req.header("If-Match", tag);
        }
        let mut resp = req.send().await.map_err(|e| {
            if e.is_timeout() {
                BmcError::Unreachable("timed out".into())
            } else {
                BmcError::Unreachable(short(
                    &std::error::Error::source(&e).map_or(e.to_string(), |s| s.to_string()),
                ))
            }
        })?;
        let status = resp.status();
        let etag = resp
            .headers()
            .get("ETag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut bytes = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| BmcError::Unreachable(short(&e.to_string())))?
        {
            if bytes.len() + chunk.len() > MAX_BODY {
                return Err(BmcError::Garbled("an answer over 1 MiB".into()));
            }
            bytes.extend_from_slice(&chunk);
        }
        let json: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        match status {
            s if s.is_success() => Ok((json, etag)),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Err(BmcError::Credentials(status.as_u16().to_string()))
            }
            s => Err(BmcError::Refused {
                status: s.as_u16(),
                message: error_message(&json),
            }),
        }
    }

    async fn get(&self, path: &str) -> Result<(Value, Option<String>), BmcError> {
        let (v, etag) = self.request(Method::GET, path, None, None).await?;
        if !v.is_object() {
            return Err(BmcError::Garbled(format!("{path} is not a JSON object")));
        }
        Ok((v, etag))
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: &Value,
        if_match: Option<&str>,
    ) -> Result<(), BmcError> {
        self.request(method, path, Some(body), if_match)
            .await
            .map(drop)
    }

    /// The system's resource path for `mac` (see the module doc).
    async fn system_path(&self, mac: MacAddr, systems: &Systems) -> Result<String, BmcError> {
        if let Some(id) = &self.ep.system_id {
            return Ok(if id.starts_with('/') {
                id.clone()
            } else {
                format!("/redfish/v1/Systems/{id}")
            });
        }
        let key = (self.ep.address.clone(), mac);
        if let Some(path) = systems.lock().unwrap().get(&key) {
            return Ok(path.clone());
        }
        let (list, _) = self.get("/redfish/v1/Systems").await?;
        let members = members(&list);
        let path = match members.as_slice() {
            [] => return Err(BmcError::Unsupported("no system behind this BMC".into())),
            [one] => one.clone(),
            many => self.system_with_mac(many, mac, systems).await?,
        };
        systems.lock().unwrap().insert(key, path.clone());
        Ok(path)
    }

    /// Looks through the systems for the one with `mac`. Every MAC seen on
    /// the way is remembered, so a retry after a failed request goes on
    /// where this one stopped, and the next machine is found at once.
    async fn system_with_mac(
        &self,
        list: &[String],
        mac: MacAddr,
        systems: &Systems,
    ) -> Result<String, BmcError> {
        let wanted = mac.to_string();
        for path in list.iter().take(MAX_SYSTEMS) {
            if systems.lock().unwrap().values().any(|p| p == path) {
                continue;
            }
            let (system, _) = self.get(path).await?;
            let Some(nics) = system["EthernetInterfaces"]["@odata.id"].as_str() else {
                continue;
            };
            let (nic_list, _) = self.get(nics).await?;
            let mut macs = Vec::new();
            for nic in members(&nic_list) {
                let (nic, _) = self.get(&nic).await?;
                macs.extend(
                    ["MACAddress", "PermanentMACAddress"]
                        .iter()
                        .filter_map(|k| nic[*k].as_str()?.parse::<MacAddr>().ok()),
                );
            }
            // Only a system read whole is remembered (and skipped next time).
            let mut known = systems.lock().unwrap();
            for seen in macs {
                known.insert((self.ep.address.clone(), seen), path.clone());
            }
            drop(known);
            if let Some(found) = systems.lock().unwrap().get(&(self.ep.address.clone(), mac)) {
                return Ok(found.clone());
            }
        }
        Err(BmcError::Unsupported(format!(
            "{} systems, none with MAC {wanted}; set the machine's system id",
            list.len()
        )))
    }

    /// The reset action's target and the reset types the BMC allows (when
    /// it says).
    async fn reset_action(
        &self,
        system: &Value,
    ) -> Result<(String, Option<Vec<String>>), BmcError> {
        let action = &system["Actions"]["#ComputerSystem.Reset"];
        let target = action["target"]
            .as_str()
            .ok_or_else(|| BmcError::Unsupported("no #ComputerSystem.Reset action".into()))?
            .to_string();
        let strings = |v: &Value| {
            v.as_array().map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
        };
        if let Some(list) = strings(&action["ResetType@Redfish.AllowableValues"]) {
            return Ok((target, Some(list)));
        }
        if let Some(info) = action["@Redfish.ActionInfo"].as_str() {
            let (info, _) = self.get(info).await?;
            let allowed = info["Parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["Name"] == "ResetType")
                .and_then(|p| strings(&p["AllowableValues"]));
            return Ok((target, allowed));
        }
        Ok((target, None))
    }
}

/// The `@odata.id` of each member of a collection.
fn members(collection: &Value) -> Vec<String> {
    collection["Members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["@odata.id"].as_str().map(str::to_string))
        .collect()
}

/// The message of a Redfish error body.
fn error_message(body: &Value) -> String {
    let e = &body["error"];
    let text = e["@Message.ExtendedInfo"][0]["Message"]
        .as_str()
        .or(e["message"].as_str())
        .unwrap_or("no message");
    short(text)
}

fn short(text: &str) -> String {
    text.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_reset_type_comes_from_what_the_bmc_allows() {
        let dell = allow(&[
            "On",
            "ForceOff",
            "ForceRestart",
            "GracefulShutdown",
            "PushPowerButton",
            "Nmi",
            "PowerCycle",
        ]);
        let hpe = allow(&[
            "On",
            "ForceOff",
            "GracefulShutdown",
            "ForceRestart",
            "Nmi",
            "PushPowerButton",
            "GracefulRestart",
        ]);
        let minimal = allow(&["On", "ForceOff", "GracefulRestart"]);
        type Case<'a> = (Op, Power, Option<&'a [String]>, Option<&'a str>);
        let table: &[Case] = &[
            (Op::Reset, Power::On, Some(&dell), Some("ForceRestart")),
            (Op::Cycle, Power::On, Some(&dell), Some("PowerCycle")),
            // HPE lists no PowerCycle: a cycle is a forced restart there.
            (Op::Cycle, Power::On, Some(&hpe), Some("ForceRestart")),
            (
                Op::Reset,
                Power::On,
                Some(&minimal),
                Some("GracefulRestart"),
            ),
            (Op::Netboot, Power::On, Some(&hpe), Some("ForceRestart")),
            // Off: started, whatever was asked.
            (Op::Netboot, Power::Off, Some(&hpe), Some("On")),
            (Op::Cycle, Power::Off, None, Some("On")),
            (Op::On, Power::On, None, None),
            (Op::Off, Power::Off, Some(&dell), None),
            (Op::Off, Power::On, Some(&dell), Some("ForceOff")),
            (Op::GracefulOff, Power::On, None, Some("GracefulShutdown")),
            (Op::Status, Power::On, None, None),
        ];
        for (op, power, allowed, want) in table {
            let got = choose_reset(*op, *power, *allowed).unwrap();
            assert_eq!(got.as_deref(), *want, "{op:?} when {power:?}");
        }
        let err = choose_reset(Op::GracefulOff, Power::On, Some(&minimal)).unwrap_err();
        assert!(!err.passes());
        assert!(err.to_string().contains("GracefulShutdown"), "{err}");
    }

    #[test]
    fn addresses_power_states_and_error_bodies() {
        assert_eq!(base_url("10.0.0.5").unwrap().as_str(), "https://10.0.0.5/");
        assert_eq!(
            base_url("http://127.0.0.1:8000").unwrap().as_str(),
            "http://127.0.0.1:8000/"
        );
        assert!(base_url("ftp://x").is_err());
        assert!(base_url("").is_err());
        assert_eq!(
            power_of(&json!({"PowerState": "PoweringOff"})).unwrap(),
            Power::On
        );
        assert!(power_of(&json!({})).is_err());
        let body = json!({"error": {"code": "Base.1.0.GeneralError", "message": "general",
            "@Message.ExtendedInfo": [{"Message": "The requested resource is busy."}]}});
        assert_eq!(error_message(&body), "The requested resource is busy.");
        assert_eq!(error_message(&Value::Null), "no message");
        let system =
            json!({"Boot": {"BootSourceOverrideTarget@Redfish.AllowableValues": ["Pxe", "Hdd"]}});
        assert_eq!(override_target(&system, BootTarget::Pxe).unwrap(), "Pxe");
        assert!(override_target(&system, BootTarget::Http).is_err());
        assert_eq!(
            override_target(&json!({}), BootTarget::Http).unwrap(),
            "UefiHttp"
        );
    }
}
