//! `ironboot machines`, `boots`, `leases` and `tokens`: clients of the
//! inventory API (`/api/v1/machines`, `/boots`, `/leases`, `/tokens`).

use clap::Subcommand;
use serde_json::{json, Map, Value};

use super::{print, print_json, value_of, CliError, Client, Connection, Output};
use crate::http::api::views::{
    BootList, BootView, CreatedToken, EventList, GenerationRef, LeaseList, LeaseView,
    MachineDeleted, MachineDetail, MachineList, MachineView, PinView, TokenList, TokenView,
};

#[derive(Debug, Subcommand)]
pub enum MachinesCommand {
    /// Machines, filtered; every page unless --limit.
    List(MachineFilter),
    /// One machine, with its recent boots and their steps.
    Show { mac: String },
    /// Set or remove labels: `KEY=VALUE` sets, `KEY-` removes.
    Label {
        mac: String,
        #[arg(required = true, value_name = "KEY=VALUE|KEY-")]
        labels: Vec<String>,
        /// Only if the machine's ETag is still this (see `show -o json`).
        #[arg(long)]
        if_match: Option<String>,
    },
    /// Change a machine's hostname, group or kind.
    Set {
        mac: String,
        #[arg(long)]
        hostname: Option<String>,
        /// Assign it to this group (beats every group's selector).
        #[arg(long, conflicts_with = "unassign")]
        group: Option<String>,
        /// Remove its group assignment: selectors decide again.
        #[arg(long)]
        unassign: bool,
        #[arg(long, value_parser = ["server", "switch"])]
        kind: Option<String>,
        #[arg(long)]
        if_match: Option<String>,
    },
    /// A machine's boot history.
    Boots { mac: String },
    /// Pin a machine to a generation (beats its group's pointer).
    Pin {
        mac: String,
        stream: String,
        generation: i64,
    },
    /// Remove a machine's pin.
    Unpin { mac: String },
    /// Forget a machine; its boot history stays unless --purge.
    Delete {
        mac: String,
        #[arg(long)]
        purge: bool,
    },
    /// Power through the machine's BMC: status, on, off, graceful-off,
    /// cycle, reset.
    Power {
        mac: String,
        #[arg(value_parser = ["status", "on", "off", "graceful-off", "cycle", "reset"])]
        action: String,
    },
    /// Set the machine's next boot (once) to the network through its BMC.
    Netboot {
        mac: String,
        /// And reset it (or power it on) now.
        #[arg(long)]
        reboot: bool,
    },
    /// The machine's BMC (address, protocol, credentials).
    Bmc {
        mac: String,
        #[command(subcommand)]
        command: super::power::BmcCommand,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct MachineFilter {
    /// Label selector, e.g. `role=db,rack in (r1,r2)`.
    #[arg(long, short = 'l')]
    selector: Option<String>,
    #[arg(long)]
    group: Option<String>,
    /// Running a generation of this stream.
    #[arg(long)]
    stream: Option<String>,
    #[arg(long)]
    generation: Option<i64>,
    #[arg(long, value_parser = ["new", "booting", "confirmed", "failed"])]
    state: Option<String>,
    #[arg(long, value_parser = ["server", "switch"])]
    kind: Option<String>,
    /// Firmware arch (`efi-x64`) or CPU (`x86_64`, `arm64`).
    #[arg(long)]
    arch: Option<String>,
    /// Seen within this long (`1h`, `30m`, `7d`).
    #[arg(long, value_parser = humantime::parse_duration)]
    seen_within: Option<std::time::Duration>,
    /// At most this many (one page); default: all of them.
    #[arg(long)]
    limit: Option<u32>,
    /// Add a POWER column: what each machine's BMC last reported.
    #[arg(long)]
    power: bool,
}

#[derive(Debug, Subcommand)]
pub enum BootsCommand {
    /// Boots, newest first.
    List {
        #[arg(long)]
        mac: Option<String>,
        #[arg(long)]
        stream: Option<String>,
        #[arg(long)]
        generation: Option<i64>,
        #[arg(long, value_parser = ["served", "confirmed", "failed", "nothing"])]
        result: Option<String>,
        /// Started within this long (`1h`, `2d`).
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum LeasesCommand {
    /// DHCP leases by address.
    List {
        #[arg(long)]
        mac: Option<String>,
        #[arg(long, value_parser = ["offered", "bound", "declined"])]
        state: Option<String>,
        /// e.g. 10.77.0.0/24
        #[arg(long)]
        subnet: Option<String>,
    },
    /// Free an address now.
    Release { ip: String },
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Every token (never its secret).
    List,
    /// Create a token; its secret is printed once.
    Create {
        name: String,
        #[arg(long, value_parser = ["admin", "read"], default_value = "read")]
        role: String,
    },
    /// Revoke a token by id.
    Revoke { id: i64 },
}

const MACHINE_COLUMNS: &[(&str, &str)] = &[
    ("MAC", "mac"),
    ("KIND", "kind"),
    ("ARCH", "arch"),
    ("CPU", "cpu"),
    ("GROUP", "group"),
    ("STATE", "state"),
    ("HOSTNAME", "hostname"),
    ("IP", "ip"),
    ("PIN", "pin"),
    ("CURRENT", "current"),
    ("LAST GOOD", "last_good"),
];

const BOOT_COLUMNS: &[(&str, &str)] = &[
    ("BOOT", "id"),
    ("MAC", "mac"),
    ("STREAM", "stream"),
    ("GEN", "generation"),
    ("RESULT", "state"),
    ("STARTED", "started"),
    ("REASON", "reason"),
];

/// `path?k=v&…` with the values percent-encoded.
fn with_query(path: &str, pairs: &[(&str, Option<String>)]) -> String {
    let pairs: Vec<(&str, &str)> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (*k, v)))
        .collect();
    if pairs.is_empty() {
        return path.to_string();
    }
    format!(
        "{path}?{}",
        serde_urlencoded::to_string(pairs).expect("strings encode")
    )
}

fn since_ms(d: std::time::Duration) -> String {
    (crate::ledger::now_ms() - d.as_millis() as i64).to_string()
}

/// A time in ms since the epoch as RFC 3339 (seconds), for tables.
fn when(ms: Option<i64>) -> Value {
    match ms {
        Some(ms) if ms > 0 => json!(humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64)
        )
        .to_string()),
        _ => Value::Null,
    }
}

pub async fn machines(conn: &Connection, cmd: &MachinesCommand) -> Result<(), CliError> {
    let client = conn.client()?;
    match cmd {
        MachinesCommand::List(f) => {
            let mut rows: Vec<Value> = list_machines(&client, f)
                .await?
                .iter()
                .map(value_of)
                .collect();
            let mut columns = MACHINE_COLUMNS.to_vec();
            if f.power {
                let power = super::power::power_states(&client).await?;
                for row in &mut rows {
                    let state = row["mac"].as_str().and_then(|m| power.get(m)).cloned();
                    row["power"] = json!(state);
                }
                columns.insert(6, ("POWER", "power"));
            }
            let all = json!({ "machines": rows });
            print(conn.output, &all, &rows, &columns);
        }
        MachinesCommand::Show { mac } => {
            let m: MachineDetail = client.get_as(&format!("/api/v1/machines/{mac}")).await?;
            show_machine(conn.output, &m);
        }
        MachinesCommand::Label {
            mac,
            labels,
            if_match,
        } => {
            let mut patch = Map::new();
            for l in labels {
                if let Some(key) = l.strip_suffix('-').filter(|_| !l.contains('=')) {
                    patch.insert(key.to_string(), Value::Null);
                } else if let Some((k, v)) = l.split_once('=') {
                    patch.insert(k.to_string(), json!(v));
                } else {
                    return Err(CliError::Usage(format!(
                        "{l:?}: write KEY=VALUE to set a label, KEY- to remove it"
                    )));
                }
            }
            let m: MachineView = client
                .patch_as(
                    &format!("/api/v1/machines/{mac}"),
                    &json!({ "labels": patch }),
                    if_match.as_deref(),
                )
                .await?;
            print_updated(conn.output, &m);
        }
        MachinesCommand::Set {
            mac,
            hostname,
            group,
            unassign,
            kind,
            if_match,
        } => {
            let mut patch = Map::new();
            if let Some(h) = hostname {
                patch.insert("hostname".into(), json!(h));
            }
            if let Some(g) = group {
                patch.insert("group".into(), json!(g));
            }
            if *unassign {
                patch.insert("group".into(), Value::Null);
            }
            if let Some(k) = kind {
                patch.insert("kind".into(), json!(k));
            }
            if patch.is_empty() {
                return Err(CliError::Usage(
                    "nothing to set: give --hostname, --group, --unassign or --kind".into(),
                ));
            }
            let m: MachineView = client
                .patch_as(
                    &format!("/api/v1/machines/{mac}"),
                    &Value::Object(patch),
                    if_match.as_deref(),
                )
                .await?;
            print_updated(conn.output, &m);
        }
        MachinesCommand::Boots { mac } => {
            let b: BootList = client
                .get_as(&format!("/api/v1/machines/{mac}/boots"))
                .await?;
            print_boots(conn.output, &b);
        }
        MachinesCommand::Pin {
            mac,
            stream,
            generation,
        } => {
            let r: PinView = client
                .put_as(
                    &format!("/api/v1/machines/{mac}/pin"),
                    &json!({ "stream": stream, "generation": generation }),
                )
                .await?;
            print_pin(conn.output, &r);
        }
        MachinesCommand::Unpin { mac } => {
            let r: PinView = client
                .delete_as(&format!("/api/v1/machines/{mac}/pin"))
                .await?;
            print_pin(conn.output, &r);
        }
        MachinesCommand::Delete { mac, purge } => {
            let path = with_query(
                &format!("/api/v1/machines/{mac}"),
                &[("purge", purge.then(|| "true".to_string()))],
            );
            let r: MachineDeleted = client.delete_as(&path).await?;
            match conn.output {
                Output::Json => print_json(&r),
                Output::Table if *purge => println!(
                    "deleted {mac} and its history ({} boots, {} events)",
                    r.boots_deleted, r.events_deleted
                ),
                Output::Table => println!("deleted {mac} (its boot history is kept)"),
            }
        }
        MachinesCommand::Power { mac, action } => super::power::power(conn, mac, action).await?,
        MachinesCommand::Netboot { mac, reboot } => {
            super::power::netboot(conn, mac, *reboot).await?
        }
        MachinesCommand::Bmc { mac, command } => {
            super::power::machine_bmc(conn, mac, command).await?
        }
    }
    Ok(())
}

/// Every page of the filtered list (or one page of `--limit`).
async fn list_machines(client: &Client, f: &MachineFilter) -> Result<Vec<MachineView>, CliError> {
    let mut rows = Vec::new();
    let mut cursor: Option<String> = None;
    // Pages of 1000: bounded by the fleet size; the loop stops at the last.
    loop {
        let path = with_query(
            "/api/v1/machines",
            &[
                ("selector", f.selector.clone()),
                ("group", f.group.clone()),
                ("stream", f.stream.clone()),
                ("generation", f.generation.map(|g| g.to_string())),
                ("state", f.state.clone()),
                ("kind", f.kind.clone()),
                ("arch", f.arch.clone()),
                ("seen_since", f.seen_within.map(since_ms)),
                ("limit", Some(f.limit.unwrap_or(1000).to_string())),
                ("cursor", cursor.clone()),
            ],
        );
        let page: MachineList = client.get_as(&path).await?;
        rows.extend(page.machines);
        match page.next {
            Some(next) if f.limit.is_none() => cursor = Some(next),
            _ => return Ok(rows),
        }
    }
}

fn show_machine(output: Output, d: &MachineDetail) {
    if output == Output::Json {
        print_json(d);
        return;
    }
    let m = &d.machine;
    let text = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let generation = |g: &Option<GenerationRef>| {
        g.as_ref()
            .map_or("-".into(), |g| format!("{} gen {}", g.stream, g.generation))
    };
    let labels: Vec<String> = m.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let assigned = if m.group_assigned { " (assigned)" } else { "" };
    let last_seen = when(Some(m.last_seen_ms));
    for (name, value) in [
        ("mac", m.mac.clone()),
        ("kind", m.kind.clone()),
        ("arch", text(&m.arch)),
        ("cpu", text(&m.cpu)),
        ("group", format!("{}{assigned}", m.group)),
        ("labels", labels.join(",")),
        (
            "state",
            value_of(&m.state).as_str().unwrap_or("?").to_string(),
        ),
        ("hostname", text(&m.hostname)),
        ("ip", text(&m.ip)),
        ("uuid", text(&m.uuid)),
        ("serial", text(&m.serial)),
        ("firmware", text(&m.firmware)),
        ("pin", generation(&m.pin)),
        ("current", generation(&m.current)),
        ("last good", generation(&m.last_good)),
        (
            "secureboot",
            match m.secure_boot {
                Some(true) => "on (said at its last confirmation)",
                Some(false) => "off (said at its last confirmation)",
                None => "-",
            }
            .to_string(),
        ),
        ("root", root_line(&d.recent_boots)),
        ("last seen", last_seen.as_str().unwrap_or("-").to_string()),
    ] {
        println!("{name:<10} {value}");
    }
    if !d.recent_boots.is_empty() {
        println!();
        print_boot_rows(
            output,
            &json!({ "boots": value_of(&d.recent_boots) }),
            &d.recent_boots,
        );
    }
}

/// The root image its latest boot with one read over NBD: export, bytes
/// and verification failures.
fn root_line(boots: &[BootView]) -> String {
    let Some((id, root)) = boots.iter().find_map(|b| Some((b.id, b.root.as_ref()?))) else {
        return "-".into();
    };
    let export = root.export.as_deref().unwrap_or("?");
    format!(
        "nbd export {}… (boot {id}): {:.1} MiB read, {} verification failure{}",
        &export[..export.len().min(12)],
        root.bytes as f64 / 1048576.0,
        root.verify_failures,
        if root.verify_failures == 1 { "" } else { "s" }
    )
}

fn print_updated(output: Output, m: &MachineView) {
    let m = value_of(m);
    match output {
        Output::Json => print(output, &m, &[], &[]),
        Output::Table => print(output, &m, std::slice::from_ref(&m), MACHINE_COLUMNS),
    }
}

fn print_pin(output: Output, p: &PinView) {
    let p = value_of(p);
    print(
        output,
        &p,
        std::slice::from_ref(&p),
        &[("MAC", "mac"), ("PIN", "pin")],
    );
}

fn print_boots(output: Output, b: &BootList) {
    print_boot_rows(output, &value_of(b), &b.boots);
}

fn print_boot_rows(output: Output, whole: &Value, boots: &[BootView]) {
    let rows: Vec<Value> = boots
        .iter()
        .map(|b| {
            let mut r = value_of(b);
            r["started"] = when(Some(b.started_ms));
            r
        })
        .collect();
    print(output, whole, &rows, BOOT_COLUMNS);
}

pub async fn boots(conn: &Connection, cmd: &BootsCommand) -> Result<(), CliError> {
    let client = conn.client()?;
    match cmd {
        BootsCommand::List {
            mac,
            stream,
            generation,
            result,
            since,
            limit,
        } => {
            let path = with_query(
                "/api/v1/boots",
                &[
                    ("mac", mac.clone()),
                    ("stream", stream.clone()),
                    ("generation", generation.map(|g| g.to_string())),
                    ("result", result.clone()),
                    ("since", since.map(since_ms)),
                    ("limit", Some(limit.to_string())),
                ],
            );
            let b: BootList = client.get_as(&path).await?;
            print_boots(conn.output, &b);
        }
    }
    Ok(())
}

/// `ironboot events`: the ledger, newest first.
#[derive(Debug, Clone, clap::Args)]
pub struct EventsArgs {
    #[arg(long)]
    mac: Option<String>,
    /// A step (`bmc.retry`) or a family of steps (`bmc`).
    #[arg(long)]
    step: Option<String>,
    /// Recorded within this long (`1h`, `30m`).
    #[arg(long, value_parser = humantime::parse_duration)]
    since: Option<std::time::Duration>,
    #[arg(long, default_value_t = 50)]
    limit: u32,
}

pub async fn events(conn: &Connection, args: &EventsArgs) -> Result<(), CliError> {
    let client = conn.client()?;
    let path = with_query(
        "/api/v1/events",
        &[
            ("mac", args.mac.clone()),
            ("step", args.step.clone()),
            ("since", args.since.map(since_ms)),
            ("limit", Some(args.limit.to_string())),
        ],
    );
    let list: EventList = client.get_as(&path).await?;
    let rows: Vec<Value> = list
        .events
        .iter()
        .map(|e| {
            let detail: String = e.detail.to_string().chars().take(120).collect();
            json!({ "at": e.at_ms, "mac": e.mac, "step": e.step, "detail": detail })
        })
        .collect();
    let whole = serde_json::to_value(&list).unwrap_or(Value::Null);
    print(
        conn.output,
        &whole,
        &rows,
        &[
            ("AT (ms)", "at"),
            ("MAC", "mac"),
            ("STEP", "step"),
            ("DETAIL", "detail"),
        ],
    );
    Ok(())
}

pub async fn leases(conn: &Connection, cmd: &LeasesCommand) -> Result<(), CliError> {
    let client = conn.client()?;
    match cmd {
        LeasesCommand::List { mac, state, subnet } => {
            let path = with_query(
                "/api/v1/leases",
                &[
                    ("mac", mac.clone()),
                    ("state", state.clone()),
                    ("subnet", subnet.clone()),
                ],
            );
            let l: LeaseList = client.get_as(&path).await?;
            let rows: Vec<Value> = l
                .leases
                .iter()
                .map(|lease| {
                    let mut r = value_of(lease);
                    r["expires"] = when(Some(lease.expires_at_ms));
                    r
                })
                .collect();
            print(
                conn.output,
                &value_of(&l),
                &rows,
                &[
                    ("IP", "ip"),
                    ("MAC", "mac"),
                    ("STATE", "state"),
                    ("SUBNET", "subnet"),
                    ("HOSTNAME", "hostname"),
                    ("EXPIRES", "expires"),
                ],
            );
        }
        LeasesCommand::Release { ip } => {
            let r: LeaseView = client.delete_as(&format!("/api/v1/leases/{ip}")).await?;
            match conn.output {
                Output::Json => print_json(&r),
                Output::Table => println!("released {ip}"),
            }
        }
    }
    Ok(())
}

pub async fn tokens(conn: &Connection, cmd: &TokensCommand) -> Result<(), CliError> {
    let client = conn.client()?;
    let columns = &[
        ("ID", "id"),
        ("NAME", "name"),
        ("ROLE", "role"),
        ("CREATED", "created"),
        ("REVOKED", "revoked"),
    ];
    let dated = |t: &TokenView| {
        let mut r = value_of(t);
        r["created"] = when(Some(t.created_ms));
        r["revoked"] = when(t.revoked_ms);
        r
    };
    match cmd {
        TokensCommand::List => {
            let t: TokenList = client.get_as("/api/v1/tokens").await?;
            let rows: Vec<Value> = t.tokens.iter().map(dated).collect();
            print(conn.output, &value_of(&t), &rows, columns);
        }
        TokensCommand::Create { name, role } => {
            let body = json!({ "name": name, "role": role });
            let t: CreatedToken = client.post_as("/api/v1/tokens", &body).await?;
            match conn.output {
                Output::Json => print_json(&t),
                Output::Table => {
                    println!("token {} ({role}, id {}):", name, t.token.id);
                    println!("{}", t.secret);
                    eprintln!("the secret is shown this once; the server keeps only its hash");
                }
            }
        }
        TokensCommand::Revoke { id } => {
            let path = format!("/api/v1/tokens/{id}");
            let t: TokenView = client.delete_as(&path).await?;
            let t = dated(&t);
            print(conn.output, &t, std::slice::from_ref(&t), columns);
        }
    }
    Ok(())
}
