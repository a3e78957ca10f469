//! IPMI over LAN through `ipmitool` (IPMI 2.0, `-I lanplus`): the tool
//! every operator already trusts with their BMCs, rather than an RMCP+
//! stack of our own. The password reaches it through its environment
//! (`-E` reads `IPMI_PASSWORD`), never its command line, which any user of
//! the machine can read in `ps`.
//!
//! Power: `chassis power status|on|off|soft|cycle|reset`; the next boot:
//! `chassis bootdev pxe` (valid for the next boot only). IPMI has no HTTP
//! boot device. A machine that is off is powered on instead of cycled or
//! reset, as with Redfish.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;

use super::redfish::Done;
use super::{BmcError, BootTarget, Endpoint, Op, Power};

/// One operation through the `ipmitool` at `tool`.
pub async fn run(tool: &str, ep: &Endpoint, op: Op, timeout: Duration) -> Result<Done, BmcError> {
    let power = status(tool, ep, timeout).await?;
    let mut detail = json!({ "power_before": power.as_str() });
    if op == Op::Status {
        return Ok(Done {
            power: Some(power),
            detail,
        });
    }
    if matches!(op, Op::Netboot | Op::NetbootNext) {
        if ep.boot_target == BootTarget::Http {
            return Err(BmcError::Unsupported(
                "IPMI has no HTTP boot device; use boot target pxe".into(),
            ));
        }
        ipmitool(tool, ep, &["chassis", "bootdev", "pxe"], timeout).await?;
        detail["boot_override"] = json!("pxe");
        if op == Op::NetbootNext {
            return Ok(Done {
                power: Some(power),
                detail,
            });
        }
    }
    let Some(word) = power_word(op, power) else {
        return Ok(Done {
            power: Some(power),
            detail,
        });
    };
    ipmitool(tool, ep, &["chassis", "power", word], timeout).await?;
    detail["power_command"] = json!(word);
    let after = if matches!(op, Op::Off | Op::GracefulOff) {
        Power::Off
    } else {
        Power::On
    };
    Ok(Done {
        power: Some(after),
        detail,
    })
}

/// The `chassis power` word for `op` when the machine's power is `power`;
/// `None`: nothing to do.
fn power_word(op: Op, power: Power) -> Option<&'static str> {
    match (op, power) {
        (Op::Status | Op::NetbootNext, _) => None,
        (Op::On, Power::On) | (Op::Off | Op::GracefulOff, Power::Off) => None,
        (Op::On | Op::Cycle | Op::Reset | Op::Netboot, Power::Off) => Some("on"),
        (Op::Off, Power::On) => Some("off"),
        (Op::GracefulOff, Power::On) => Some("soft"),
        (Op::Cycle, Power::On) => Some("cycle"),
        (Op::Reset | Op::Netboot, Power::On) => Some("reset"),
    }
}

async fn status(tool: &str, ep: &Endpoint, timeout: Duration) -> Result<Power, BmcError> {
    let out = ipmitool(tool, ep, &["chassis", "power", "status"], timeout).await?;
    parse_status(&out)
}

fn parse_status(out: &str) -> Result<Power, BmcError> {
    match out.trim().strip_prefix("Chassis Power is ") {
        Some("on") => Ok(Power::On),
        Some("off") => Ok(Power::Off),
        _ => Err(BmcError::Garbled(short(out))),
    }
}

/// `host`, `host:port`, `[v6]:port` or a bare IPv6 address → (host, port).
pub fn host_port(address: &str) -> Result<(String, u16), BmcError> {
    let bad = || {
        BmcError::Unsupported(format!(
            "{address} is not an IPMI address (host or host:port)"
        ))
    };
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let (host, tail) = rest.split_once(']').ok_or_else(bad)?;
        (host, tail.strip_prefix(':'))
    } else if address.matches(':').count() == 1 {
        let (h, p) = address.split_once(':').ok_or_else(bad)?;
        (h, Some(p))
    } else {
        (address, None)
    };
    let port = match port {
        Some(p) => p.parse().map_err(|_| bad())?,
        None => 623,
    };
    let host_ok = !host.is_empty()
        && !host.starts_with('-')
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:_".contains(c));
    if !host_ok {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

async fn ipmitool(
    tool: &str,
    ep: &Endpoint,
    args: &[&str],
    timeout: Duration,
) -> Result<String, BmcError> {
    let (host, port) = host_port(&ep.address)?;
    // ipmitool's own retransmit: a second per try, within our bound.
    let per_try = timeout.as_secs().clamp(1, 10).to_string();
    let child = tokio::process::Command::new(tool)
        .args(["-I", "lanplus", "-H", &host, "-p", &port.to_string()])
        .args(["-U", &ep.username, "-E", "-N", &per_try, "-R", "1"])
        .args(args)
        .env("IPMI_PASSWORD", &ep.password)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| BmcError::Unsupported(format!("cannot run {tool}: {e}")))?;
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| BmcError::Timeout(timeout))?
        .map_err(|e| BmcError::Unreachable(e.to_string()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        return Ok(stdout);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(classify(&stderr))
}

/// What ipmitool's complaint means.
fn classify(stderr: &str) -> BmcError {
    let lower = stderr.to_ascii_lowercase();
    let credentials = [
        "unauthorized name",
        "hmac is invalid",
        "invalid user name",
        "insufficient privilege",
    ];
    if credentials.iter().any(|c| lower.contains(c)) {
        BmcError::Credentials(short(stderr))
    } else if lower.contains("not supported") || lower.contains("invalid command") {
        BmcError::Unsupported(short(stderr))
    } else {
        BmcError::Unreachable(short(stderr))
    }
}

fn short(text: &str) -> String {
    text.trim().chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_answers() {
        assert_eq!(host_port("10.0.0.5").unwrap(), ("10.0.0.5".into(), 623));
        assert_eq!(host_port("bmc1:6230").unwrap(), ("bmc1".into(), 6230));
        assert_eq!(
            host_port("[fd00::5]:6230").unwrap(),
            ("fd00::5".into(), 6230)
        );
        assert_eq!(host_port("fd00::5").unwrap(), ("fd00::5".into(), 623));
        // Nothing that ipmitool would read as an option, nothing odd.
        assert!(host_port("-H").is_err());
        assert!(host_port("a b").is_err());
        assert!(host_port("x:notaport").is_err());
        assert_eq!(parse_status("Chassis Power is on\n").unwrap(), Power::On);
        assert_eq!(parse_status("Chassis Power is off").unwrap(), Power::Off);
        assert!(parse_status("").is_err());
        assert!(!classify(
            "Error: Unable to establish IPMI v2 / RMCP+ session\nRAKP 2 HMAC is invalid"
        )
        .passes());
        assert!(classify("Error: Unable to establish IPMI v2 / RMCP+ session").passes());
        assert_eq!(power_word(Op::Netboot, Power::Off), Some("on"));
        assert_eq!(power_word(Op::Netboot, Power::On), Some("reset"));
        assert_eq!(power_word(Op::GracefulOff, Power::On), Some("soft"));
        assert_eq!(power_word(Op::Off, Power::Off), None);
    }
}
