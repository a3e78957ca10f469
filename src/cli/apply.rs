//! `ironboot apply -f fleet.yaml [--dry-run]`: desired state, like
//! `kubectl apply` / `terraform plan`. The file is read here (unknown keys,
//! wrong types, bad MACs and selectors fail with `FILE:LINE:COL`, exit 2),
//! sent whole to `POST /api/v1/apply`, which checks every reference against
//! the server and applies all changes or none; a refusal's `field` is
//! mapped back to the line it came from.
//!
//! ```text
//! ironboot apply -f fleet.yaml --dry-run      # the plan; changes nothing
//! ironboot apply -f fleet.yaml                # the same plan, applied
//! ironboot apply -f - -o json < fleet.yaml    # from stdin, the API's answer
//! ```

use std::io::Read as _;

use super::client::typed;
use super::{print_json, CliError, Connection, Output};
use crate::desired::yaml;
use crate::http::api::views::ApplyResult;

#[derive(Debug, Clone, clap::Args)]
pub struct ApplyArgs {
    /// The fleet file (`-` reads standard input).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: String,
    /// Print what would change and change nothing (a read token will do).
    #[arg(long)]
    pub dry_run: bool,
}

fn read(file: &str) -> Result<(String, String), CliError> {
    if file == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CliError::Usage(format!("standard input: {e}")))?;
        return Ok(("<stdin>".into(), text));
    }
    let text =
        std::fs::read_to_string(file).map_err(|e| CliError::Usage(format!("{file}: {e}")))?;
    Ok((file.to_string(), text))
}

pub async fn apply(conn: &Connection, args: &ApplyArgs) -> Result<(), CliError> {
    let (name, text) = read(&args.file)?;
    let (mut doc, spans) =
        yaml::parse(&text).map_err(|e| CliError::Usage(format!("{name}:{e}")))?;
    resolve_passwords(&mut doc, &args.file)?;
    let client = conn.client()?;
    let path = if args.dry_run {
        "/api/v1/apply?dry_run=true"
    } else {
        "/api/v1/apply"
    };
    let body = serde_json::to_value(&doc).expect("a document serializes");
    let answer = client
        .post_fielded(path, &body)
        .await
        .map_err(|(e, field)| {
            match field
                .as_deref()
                .and_then(|f| spans.find(f).map(|at| (f, at)))
            {
                Some((f, at)) => CliError::Located {
                    at: format!("{name}:{at}"),
                    inner: Box::new(with_field(e, f)),
                },
                None => e,
            }
        })?;
    show(conn.output, &name, &typed(path, answer)?);
    Ok(())
}

/// Reads each BMC's `password_file` (relative to the fleet file) or
/// `password_env`, and sends the password in their place.
fn resolve_passwords(doc: &mut crate::desired::Document, file: &str) -> Result<(), CliError> {
    let dir = std::path::Path::new(file)
        .parent()
        .filter(|_| file != "-")
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let specs = doc
        .groups
        .values_mut()
        .filter_map(|g| g.bmc.as_mut())
        .chain(doc.machines.values_mut().filter_map(|m| m.bmc.as_mut()))
        .flatten();
    for b in specs {
        let path = b
            .password_file
            .take()
            .map(|p| dir.join(p).to_string_lossy().into_owned());
        let env = b.password_env.take();
        if path.is_some() || env.is_some() {
            b.password = Some(super::power::read_password(
                path.as_deref(),
                env.as_deref(),
            )?);
        }
    }
    Ok(())
}

/// Adds the field path to a refusal's message (`… (groups.web.stream)`).
fn with_field(e: CliError, field: &str) -> CliError {
    match e {
        CliError::Refused { status, message } => CliError::Refused {
            status,
            message: format!("{message} ({field})"),
        },
        CliError::Conflict { status, message } => CliError::Conflict {
            status,
            message: format!("{message} ({field})"),
        },
        CliError::NotFound(message) => CliError::NotFound(format!("{message} ({field})")),
        other => other,
    }
}

fn show(output: Output, file: &str, answer: &ApplyResult) {
    if output == Output::Json {
        print_json(answer);
        return;
    }
    let changes = &answer.changes;
    let dry_run = answer.dry_run;
    if changes.is_empty() {
        println!("no changes: the server already matches {file}");
        return;
    }
    let mut started = answer.rollouts.iter();
    for c in changes {
        let text = &c.text;
        match (c.op.as_str(), dry_run, started.clone().next()) {
            ("rollout", false, Some(id)) => {
                started.next();
                println!("{text}: started rollout {id} (ironboot rollout status {id})");
            }
            _ => println!("{text}"),
        }
    }
    let n = changes.len();
    if dry_run {
        println!("{n} change(s) planned; dry run: nothing changed");
    } else {
        println!("{n} change(s) applied");
    }
}
