//! `ironboot explain MAC …` and `ironboot templates list|render`: what a
//! machine would be served, and why, without booting it.

use clap::Subcommand;
use serde_json::{json, Value};

use super::{print, print_json, value_of, CliError, Connection, Output};
use crate::http::api::views::{Explanation, Rendered, ScriptView, TemplateList};

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
    let e: Explanation = client.post_as("/api/v1/explain", &body(args)?).await?;
    if conn.output == Output::Json {
        print_json(&e);
        return Ok(());
    }
    println!("explain {}:", args.mac);
    for (i, step) in e.steps.iter().enumerate() {
        println!("  {}. {step}", i + 1);
    }
    if let Some(dhcp) = e.dhcp.as_ref().filter(|d| !d.options.is_empty()) {
        println!();
        let options: Vec<Value> = dhcp.options.iter().map(value_of).collect();
        print(
            Output::Table,
            &Value::Null,
            &options,
            &[("OPT", "code"), ("NAME", "name"), ("VALUE", "value")],
        );
    }
    if let Some(script) = &e.script {
        if let Some(error) = &script.error {
            println!("\n{:?} fails to render: {error}", script.template);
        }
        if let (Some(text), false) = (&script.text, args.no_script) {
            println!("\n--- {} ---\n{text}", script.template);
        }
    }
    Ok(())
}

pub async fn templates(conn: &Connection, cmd: &TemplatesCommand) -> Result<(), CliError> {
    let client = conn.client()?;
    match cmd {
        TemplatesCommand::List => {
            let all: TemplateList = client.get_as("/api/v1/templates").await?;
            let rows: Vec<Value> = all.templates.iter().map(value_of).collect();
            print(
                conn.output,
                &value_of(&all),
                &rows,
                &[("TEMPLATE", "name"), ("ROLE", "role")],
            );
        }
        TemplatesCommand::Render {
            mac,
            template: Some(t),
        } => {
            let r: Rendered = client
                .get_as(&format!("/api/v1/machines/{mac}/render?template={t}"))
                .await?;
            match conn.output {
                Output::Json => print_json(&r),
                Output::Table => {
                    println!("{}", r.text.strip_suffix('\n').unwrap_or(&r.text));
                }
            }
        }
        TemplatesCommand::Render {
            mac,
            template: None,
        } => {
            let body = json!({ "mac": mac });
            let e: Explanation = client.post_as("/api/v1/explain", &body).await?;
            match (conn.output, &e.script) {
                (Output::Json, script) => print_json(script),
                (
                    Output::Table,
                    Some(ScriptView {
                        text: Some(text), ..
                    }),
                ) => println!("{text}"),
                (Output::Table, script) => {
                    let (template, error) = match script {
                        Some(s) => (format!("{:?}", s.template), s.error.as_deref()),
                        None => ("null".to_string(), None),
                    };
                    return Err(CliError::Refused {
                        status: reqwest::StatusCode::UNPROCESSABLE_ENTITY,
                        message: format!(
                            "{template} fails to render: {}",
                            error.unwrap_or("no script")
                        ),
                    });
                }
            }
        }
    }
    Ok(())
}
