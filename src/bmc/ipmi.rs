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
//!
//! What ipmitool (1.8.19, as driven against OpenIPMI's `ipmi_sim`) makes
//! us do:
//! - `-N 1` and a few retransmits, not one long wait ([`tries`]): before
//!   each session ipmitool asks for the BMC's cipher suites, and a BMC
//!   that leaves that unanswered (ipmi_sim, older firmware) costs every
//!   run one whole per-try wait before ipmitool falls back to suite 3.
//!   With a wait as long as our bound, no operation ever finished.
//! - `-v`: only then does ipmitool say why a session was refused (`RAKP 2
//!   HMAC is invalid`, `unauthorized name`); without it a wrong password
//!   reads exactly like a BMC that does not answer, and would be retried.
//! - `chassis bootdev` exits 0 when the BMC refuses the boot flags; only
//!   its `Set Boot Device to pxe` says it took.

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
        bootdev_pxe(tool, ep, timeout).await?;
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

async fn bootdev_pxe(tool: &str, ep: &Endpoint, timeout: Duration) -> Result<(), BmcError> {
    let (ok, stdout, stderr) = run_tool(tool, ep, &["chassis", "bootdev", "pxe"], timeout).await?;
    bootdev_took(ok, &stdout, &stderr)
}

/// Whether `chassis bootdev pxe` took: ipmitool reports the BMC's refusal
/// on stderr but still exits 0, and says `Set Boot Device to pxe` only
/// when it took.
fn bootdev_took(ok: bool, stdout: &str, stderr: &str) -> Result<(), BmcError> {
    if ok && stdout.contains("Set Boot Device to pxe") {
        Ok(())
    } else {
        Err(classify(stderr))
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

/// One ipmitool run that must succeed: its stdout.
async fn ipmitool(
    tool: &str,
    ep: &Endpoint,
    args: &[&str],
    timeout: Duration,
) -> Result<String, BmcError> {
    match run_tool(tool, ep, args, timeout).await? {
        (true, stdout, _) => Ok(stdout),
        (false, _, stderr) => Err(classify(&stderr)),
    }
}

/// One ipmitool run: (exited 0, stdout, stderr).
async fn run_tool(
    tool: &str,
    ep: &Endpoint,
    args: &[&str],
    timeout: Duration,
) -> Result<(bool, String, String), BmcError> {
    let (host, port) = host_port(&ep.address)?;
    let tries = tries(timeout).to_string();
    let child = tokio::process::Command::new(tool)
        .args(["-I", "lanplus", "-H", &host, "-p", &port.to_string()])
        .args(["-U", &ep.username, "-E", "-N", "1", "-R", &tries, "-v"])
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
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// How many times ipmitool sends each request (`-R`). With `-N 1` try
/// `n` waits `n` seconds, so `k` tries wait 1 + 2 + … + k s for a request
/// nobody answers (the cipher suites, before every session, on some
/// BMCs). An attempt runs ipmitool up to three times (status, boot device,
/// power) within `timeout`, so each run has a third of it; that wait may
/// take at most half of the run's third, since the run's real work comes
/// after it (with the whole third, a BMC that never answers the cipher
/// suites timed out every attempt at 30 s). One try at least: a lost
/// packet then fails the run, and the attempt is retried.
fn tries(timeout: Duration) -> u32 {
    let budget = timeout.as_secs() / 6;
    (1..=4)
        .take_while(|k| k * (k + 1) / 2 <= budget)
        .last()
        .unwrap_or(1) as u32
}

/// What ipmitool's complaint means. Why a session was refused shows with
/// `-v` only; whether the BMC refuses a command for good shows in its
/// `<what> failed: <completion code>` line (not in `-v`'s own probing,
/// e.g. `Invalid completion code received: Invalid command`).
fn classify(stderr: &str) -> BmcError {
    let lower = stderr.to_ascii_lowercase();
    let credentials = [
        "unauthorized name",
        "hmac is invalid",
        "invalid user name",
        "insufficient privilege",
        // ipmitool's own refusal, before it sends anything.
        "password is longer than",
    ];
    let for_good = ["not supported", "invalid command", "invalid data field"];
    let refused = lower
        .lines()
        .filter_map(|line| line.split_once("failed:"))
        .any(|(_, why)| for_good.iter().any(|f| why.contains(f)));
    if credentials.iter().any(|c| lower.contains(c)) {
        BmcError::Credentials(gist(stderr))
    } else if refused {
        BmcError::Unsupported(gist(stderr))
    } else {
        BmcError::Unreachable(gist(stderr))
    }
}

fn short(text: &str) -> String {
    text.trim().chars().take(200).collect()
}

/// The last lines of ipmitool's stderr, up to 200 characters: where it
/// says what went wrong, after `-v`'s chatter (less the registry it loads).
fn gist(stderr: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut len = 0;
    for line in stderr
        .lines()
        .rev()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Loading IANA PEN Registry"))
    {
        len += line.chars().count() + 2;
        if len > 200 && !kept.is_empty() {
            break;
        }
        kept.push(line);
    }
    kept.reverse();
    short(&kept.join("; "))
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
        // Refused by ipmitool itself: never worth a retry.
        assert!(!classify("lanplus: password is longer than 20 bytes.").passes());
        // ipmitool 1.8.19 -v against ipmi_sim: a wrong password, an unknown
        // user, no BMC at all, a reset the chassis cannot do.
        let refused = "Loading IANA PEN Registry...\nUnable to Get Channel Cipher Suites\n\
                       > RAKP 2 HMAC is invalid\nError: Unable to establish IPMI v2 / RMCP+ session\n";
        let e = classify(refused);
        assert!(matches!(e, BmcError::Credentials(_)), "{e}");
        assert!(!e.to_string().contains("IANA"), "{e}");
        let unknown = "Unable to Get Channel Cipher Suites\n\
                       RAKP 2 message indicates an error : unauthorized name\n\
                       Error: Unable to establish IPMI v2 / RMCP+ session\n";
        assert!(matches!(classify(unknown), BmcError::Credentials(_)));
        let silent = "Loading IANA PEN Registry...\nGet Auth Capabilities error\n\
                      Error issuing Get Channel Authentication Capabilities request\n\
                      Error: Unable to establish IPMI v2 / RMCP+ session\n";
        assert!(matches!(classify(silent), BmcError::Unreachable(_)));
        let probing = "Loading IANA PEN Registry...\nUnable to Get Channel Cipher Suites\n\
                       Running Get VSO Capabilities my_addr 0x20, transit 0, target 0x20\n\
                       Invalid completion code received: Invalid command\n\
                       Discovered IPMB address 0x0\n";
        let cannot = format!(
            "{probing}Set Chassis Power Control to Reset failed: Invalid data field in request\n"
        );
        let e = classify(&cannot);
        assert!(matches!(e, BmcError::Unsupported(_)), "{e}");
        assert!(
            e.to_string()
                .ends_with("Reset failed: Invalid data field in request"),
            "{e}"
        );
        // -v's own probing is no refusal: a run that then lost the BMC passes.
        let lost = format!("{probing}Unable to set Chassis Power Control to Reset\n");
        assert!(classify(&lost).passes());
        // ipmi_sim without a chassis program: refused, yet exit status 0.
        assert!(bootdev_took(true, "Set Boot Device to pxe\n", "").is_ok());
        let e = bootdev_took(
            true,
            "",
            "Set Chassis Boot Parameter 4 failed: Invalid data field in request\n\
             Set Chassis Boot Parameter 5 failed: Invalid data field in request\n",
        )
        .unwrap_err();
        assert!(matches!(e, BmcError::Unsupported(_)), "{e}");
        assert_eq!(tries(Duration::from_secs(2)), 1);
        assert_eq!(tries(Duration::from_secs(8)), 1);
        assert_eq!(tries(Duration::from_secs(15)), 1);
        assert_eq!(tries(Duration::from_secs(30)), 2);
        assert_eq!(tries(Duration::from_secs(60)), 4);
        assert_eq!(power_word(Op::Netboot, Power::Off), Some("on"));
        assert_eq!(power_word(Op::Netboot, Power::On), Some("reset"));
        assert_eq!(power_word(Op::GracefulOff, Power::On), Some("soft"));
        assert_eq!(power_word(Op::Off, Power::Off), None);
    }
}
