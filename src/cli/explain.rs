//! `ironboot explain MAC …` and `ironboot templates list|render`: what a
//! machine would be served, and why, without booting it.

use clap::Subcommand;
use serde_json::{json, Value};

use super::{print, CliError, Connection, Output};

/// What the client would send (all optional).
#[derive(Debug, Clone, clap::Args)]
pub struct ExplainArgs {
    /// The machine's MAC.
    pub mac: String,
    /// DHCP option 93: 0 BIOS, 7 x64 UEFI, 11 arm64 UEFI, 16 x64 HTTP boot.
    #[arg(long)]
    pub arch: Option<u16>,
    /// DHCP option 60 (PXEClient…, HTTPClient…, onie_vendor:…).
    #[arg(long)]
    pub vendor_class: Option<String>,
    /// DHCP option 77.
    #[arg(long)]
    pub user_class: Option<String>,
    /// The client is already iPXE (user class iPXE, option 175).
    #[arg(long)]
    pub ipxe: bool,
    /// The client asks for option 239 (network-OS ZTP).
    #[arg(long)]
    pub ztp: bool,
    /// Option 82 circuit-id from the relay.
    #[arg(long)]
    pub circuit_id: Option<String>,
    /// Option 82 remote-id from the relay.
    #[arg(long)]
    pub remote_id: Option<String>,
    /// An ONIE-* header of an installer request (repeatable), e.g.
    /// --onie-header ONIE-ARCH=x86_64.
    #[arg(long = "onie-header", value_name = "NAME=VALUE")]
    pub onie: Vec<String>,
    /// Leave the rendered script out of the human output.
    #[arg(long)]
    pub no_script: bool,
}

#[derive(Debug, Subcommand)]
pub enum TemplatesCommand {
    /// Every template the server renders, with its role.
    List,
    /// Render for a machine without booting it: the template given, or the
    /// script its loader would get.
    Render {
        mac: String,
        /// A template name (see `templates list`), e.g. config/user-data.
        #[arg(long, short)]
        template: Option<String>,
    },
}

fn body(args: &ExplainArgs) -> Result<Value, CliError> {
    let mut b = json!({ "mac": args.mac, "ipxe": args.ipxe, "ztp": args.ztp });
    for (key, v) in [
        ("vendor_class", &args.vendor_class),
        ("user_class", &args.user_class),
        ("circuit_id", &args.circuit_id),
        ("remote_id", &args.remote_id),
    ] {
        if let Some(v) = v {
            b[key] = json!(v);
        }
    }
    if let Some(a) = args.arch {
        b["arch"] = json!(a);
    }
    if !args.onie.is_empty() {
        let mut headers = serde_json::Map::new();
        for h in &args.onie {
            let (k, v) = h.split_once('=').ok_or_else(|| {
                CliError::Usage(format!("--onie-header {h:?}: expected NAME=VALUE"))
            })?;
            headers.insert(k.to_string(), json!(v));
        }
        b["onie"] = Value::Object(headers);
    }
    Ok(b)
}

pub async fn explain(conn: &Connection, args: &ExplainArgs) -> Result<(), CliError> {
    let client = conn.client()?;
    let e = client.post("/api/v1/explain", &body(args)?).await?;
    if conn.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&e).expect("JSON"));
        return Ok(());
    }
    println!("explain {}:", args.mac);
    for (i, step) in e["steps"].as_array().into_iter().flatten().enumerate() {
        println!("  {}. {}", i + 1, step.as_str().unwrap_or(""));
    }
    if let Some(options) = e["dhcp"]["options"].as_array().filter(|o| !o.is_empty()) {
        println!();
        print(
            Output::Table,
            &e,
            options,
            &[("OPT", "code"), ("NAME", "name"), ("VALUE", "value")],
        );
    }
    if let Some(error) = e["script"]["error"].as_str() {
        println!("\n{} fails to render: {error}", e["script"]["template"]);
    }
    if let (Some(text), false) = (e["script"]["text"].as_str(), args.no_script) {
        println!(
            "\n--- {} ---\n{text}",
            e["script"]["template"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

pub async fn templates(conn: &Connection, cmd: &TemplatesCommand) -> Result<(), CliError> {
    let client = conn.client()?;
    match cmd {
        TemplatesCommand::List => {
            let all = client.get("/api/v1/templates").await?;
            let rows = all["templates"].as_array().cloned().unwrap_or_default();
            print(
                conn.output,
                &all,
                &rows,
                &[("TEMPLATE", "name"), ("ROLE", "role")],
            );
        }
        TemplatesCommand::Render {
            mac,
            template: Some(t),
        } => {
            let r = client
                .get(&format!("/api/v1/machines/{mac}/render?template={t}"))
                .await?;
            match conn.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&r).expect("JSON")),
                Output::Table => {
                    let text = r["text"].as_str().unwrap_or("");
                    println!("{}", text.strip_suffix('\n').unwrap_or(text));
                }
            }
        }
        TemplatesCommand::Render {
            mac,
            template: None,
        } => {
            let e = client
                .post("/api/v1/explain", &json!({ "mac": mac }))
                .await?;
            let script = &e["script"];
            match (conn.output, script["text"].as_str()) {
                (Output::Json, _) => {
                    println!("{}", serde_json::to_string_pretty(script).expect("JSON"))
                }
                (Output::Table, Some(text)) => println!("{text}"),
                (Output::Table, None) => {
                    return Err(CliError::Refused {
                        status: reqwest::StatusCode::UNPROCESSABLE_ENTITY,
                        message: format!(
                            "{} fails to render: {}",
                            script["template"],
                            script["error"].as_str().unwrap_or("no script")
                        ),
                    })
                }
            }
        }
    }
    Ok(())
}
