//! `ironboot machines power|netboot|bmc` and `ironboot groups bmc`: clients
//! of `/api/v1/machines/{mac}/power`, `/netboot`, `/bmc` and
//! `/api/v1/groups/{name}/bmc`.
//!
//! A BMC password is read from a file (`--password-file`, `-` for standard
//! input) or `IRONBOOT_BMC_PASSWORD`, never from an argument: arguments are
//! visible to every user of the machine in `ps`.

use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use super::{print_json, CliError, Client, Connection, Output};
use crate::http::api::views::{BmcFields, GroupBmc, MachineBmc, PowerOutcome};

/// What `bmc set` writes.
#[derive(Debug, Clone, Args)]
pub struct BmcFieldsArgs {
    #[arg(long, value_parser = ["redfish", "ipmi"])]
    protocol: Option<String>,
    /// Redfish: base URL (`https://10.0.0.5`); IPMI: `host[:port]`.
    #[arg(long)]
    address: Option<String>,
    /// Redfish system id (default: the only one, or the one with the MAC).
    #[arg(long)]
    system_id: Option<String>,
    #[arg(long)]
    username: Option<String>,
    /// Read the password from this file (`-`: standard input); or set
    /// IRONBOOT_BMC_PASSWORD. Left out, the stored one is kept.
    #[arg(long)]
    password_file: Option<String>,
    #[arg(long, value_parser = ["pxe", "http"])]
    boot_target: Option<String>,
    /// Check the BMC's TLS certificate.
    #[arg(long)]
    verify_tls: bool,
}

#[derive(Debug, Subcommand)]
pub enum BmcCommand {
    /// The BMC: own fields, the group's, what they come to (no password).
    Show,
    /// Set the BMC fields (replaces them; the password is kept unless given).
    Set(BmcFieldsArgs),
    /// Remove the BMC fields.
    Unset,
}

/// `machines power MAC ACTION`.
pub async fn power(conn: &Connection, mac: &str, action: &str) -> Result<(), CliError> {
    let client = conn.client()?;
    let path = format!("/api/v1/machines/{mac}/power");
    let outcome: PowerOutcome = if action == "status" {
        client.get_as(&path).await?
    } else {
        client.post_as(&path, &json!({ "action": action })).await?
    };
    print_outcome(conn.output, mac, &outcome);
    Ok(())
}

/// `machines netboot MAC [--reboot]`.
pub async fn netboot(conn: &Connection, mac: &str, reboot: bool) -> Result<(), CliError> {
    let client = conn.client()?;
    let outcome: PowerOutcome = client
        .post_as(
            &format!("/api/v1/machines/{mac}/netboot"),
            &json!({ "reboot": reboot }),
        )
        .await?;
    print_outcome(conn.output, mac, &outcome);
    Ok(())
}

fn print_outcome(output: Output, mac: &str, o: &PowerOutcome) {
    if output == Output::Json {
        return print_json(o);
    }
    let power = o.power.map_or("unknown", |p| p.as_str());
    let sent = ["boot_override", "reset_type", "power_command"]
        .iter()
        .filter_map(|k| {
            o.detail
                .get(*k)
                .and_then(Value::as_str)
                .map(|v| format!("{k} {v}"))
        })
        .collect::<Vec<_>>();
    let sent = if sent.is_empty() {
        String::new()
    } else {
        format!(" ({})", sent.join(", "))
    };
    let tries = if o.attempts > 1 {
        format!(" after {} attempts", o.attempts)
    } else {
        String::new()
    };
    println!("{mac}: {} done{sent}{tries}; power {power}", o.op.as_str());
}

/// Shows, sets or removes the BMC at `path` (a machine's or a group's).
async fn send<T: serde::de::DeserializeOwned>(
    conn: &Connection,
    path: &str,
    cmd: &BmcCommand,
) -> Result<T, CliError> {
    let client = conn.client()?;
    match cmd {
        BmcCommand::Show => client.get_as(path).await,
        BmcCommand::Set(args) => client.put_as(path, &body(args)?).await,
        BmcCommand::Unset => client.delete_as(path).await,
    }
}

/// `machines bmc MAC …`.
pub async fn machine_bmc(conn: &Connection, mac: &str, cmd: &BmcCommand) -> Result<(), CliError> {
    let view: MachineBmc = send(conn, &format!("/api/v1/machines/{mac}/bmc"), cmd).await?;
    if conn.output == Output::Json {
        print_json(&view);
        return Ok(());
    }
    println!("machine {} (group {})", view.mac, view.group);
    print_fields("own", view.own.as_ref());
    print_fields("from group", view.from_group.as_ref());
    print_fields("effective", view.effective.as_ref());
    if let Some(p) = &view.problem {
        println!("  problem: {p}");
    }
    if let Some(p) = &view.power {
        println!("  power (last known): {p}");
    }
    Ok(())
}

/// `groups bmc NAME …`.
pub async fn group_bmc(conn: &Connection, group: &str, cmd: &BmcCommand) -> Result<(), CliError> {
    let view: GroupBmc = send(conn, &format!("/api/v1/groups/{group}/bmc"), cmd).await?;
    if conn.output == Output::Json {
        print_json(&view);
        return Ok(());
    }
    println!("group {}", view.group);
    print_fields("bmc", view.bmc.as_ref());
    Ok(())
}

fn print_fields(what: &str, f: Option<&BmcFields>) {
    let Some(f) = f else {
        println!("  {what}: -");
        return;
    };
    let parts = [
        ("protocol", f.protocol.clone()),
        ("address", f.address.clone()),
        ("system", f.system_id.clone()),
        ("user", f.username.clone()),
        (
            "password",
            Some(if f.password_set { "set" } else { "not set" }.into()),
        ),
        ("boot", f.boot_target.clone()),
        ("verify_tls", f.verify_tls.map(|v| v.to_string())),
    ];
    let text: Vec<String> = parts
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k} {v}")))
        .collect();
    println!("  {what}: {}", text.join(", "));
}

fn body(a: &BmcFieldsArgs) -> Result<Value, CliError> {
    let mut m = Map::new();
    let mut put = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            m.insert(k.into(), json!(v));
        }
    };
    put("protocol", &a.protocol);
    put("address", &a.address);
    put("system_id", &a.system_id);
    put("username", &a.username);
    put("boot_target", &a.boot_target);
    if a.verify_tls {
        m.insert("verify_tls".into(), json!(true));
    }
    if let Some(p) = password(a.password_file.as_deref())? {
        m.insert("password".into(), json!(p));
    }
    Ok(Value::Object(m))
}

/// The password from `--password-file` or, without one,
/// `IRONBOOT_BMC_PASSWORD` when set.
fn password(file: Option<&str>) -> Result<Option<String>, CliError> {
    match file {
        Some(f) => read_password(Some(f), None).map(Some),
        None if std::env::var_os("IRONBOOT_BMC_PASSWORD").is_some() => {
            read_password(None, Some("IRONBOOT_BMC_PASSWORD")).map(Some)
        }
        None => Ok(None),
    }
}

/// A BMC password from a file (`-`: standard input) or else the named
/// environment variable, its last line ending trimmed; never empty.
pub(super) fn read_password(file: Option<&str>, env: Option<&str>) -> Result<String, CliError> {
    let text = match (file, env) {
        (Some("-"), _) => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map_err(|e| {
                CliError::Usage(format!("reading the password from standard input: {e}"))
            })?;
            s
        }
        (Some(path), _) => std::fs::read_to_string(path)
            .map_err(|e| CliError::Usage(format!("reading the password from {path}: {e}")))?,
        (None, Some(var)) => std::env::var(var).map_err(|_| {
            CliError::Usage(format!("the BMC password's variable {var} is not set"))
        })?,
        (None, None) => return Err(CliError::Usage("no BMC password given".into())),
    };
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    if text.is_empty() {
        return Err(CliError::Usage("the BMC password is empty".into()));
    }
    Ok(text.to_string())
}

/// The power state each machine last reported, by MAC.
pub async fn power_states(
    client: &Client,
) -> Result<std::collections::HashMap<String, String>, CliError> {
    let list: crate::http::api::views::PowerList = client.get_as("/api/v1/power").await?;
    Ok(list
        .machines
        .into_iter()
        .map(|p| (p.mac, p.power))
        .collect())
}
