//! The client subcommands and what each one asks the API.

use clap::Subcommand;
use serde_json::{json, Value};

use super::{import, print, CliError, Connection, ImportArgs};

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Import a kernel, initrd(s) and optional rootfs as a stream's next generation.
    Import(ImportArgs),
    /// List generations (of one stream, or all).
    List {
        #[arg(long)]
        stream: Option<String>,
    },
    /// Delete old generations beyond --retain per stream; never one in use.
    Gc {
        #[arg(long)]
        retain: usize,
        #[arg(long)]
        dry_run: bool,
    },
}

pub async fn image(conn: &Connection, cmd: &ImageCommand) -> Result<(), CliError> {
    let client = conn.client()?;
    match cmd {
        ImageCommand::Import(args) => import(conn, args).await,
        ImageCommand::List { stream } => {
            let streams = match stream {
                Some(s) => vec![s.clone()],
                None => {
                    let all = client.get("/api/v1/streams").await?;
                    all["streams"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|s| s["stream"].as_str().map(String::from))
                        .collect()
                }
            };
            let mut rows = Vec::new();
            for s in streams {
                let gens = client
                    .get(&format!("/api/v1/streams/{s}/generations"))
                    .await?;
                rows.extend(gens["generations"].as_array().cloned().unwrap_or_default());
            }
            let rows: Vec<Value> = rows
                .into_iter()
                .map(|mut g| {
                    g["in_use"] = json!(g["in_use_by"].as_array().map(|u| u.len()).unwrap_or(0));
                    g["digest"] = json!(g["digest"]
                        .as_str()
                        .map(|d| d[..12.min(d.len())].to_string()));
                    g
                })
                .collect();
            let cols = [
                ("STREAM", "stream"),
                ("GEN", "generation"),
                ("DIGEST", "digest"),
                ("ARCH", "manifest.arch"),
                ("IN USE", "in_use"),
                ("BY", "imported_by"),
            ];
            print(conn.output, &json!({ "generations": rows }), &rows, &cols);
            Ok(())
        }
        ImageCommand::Gc { retain, dry_run } => {
            let report = client
                .post(
                    "/api/v1/gc",
                    &json!({ "retain": retain, "dry_run": dry_run }),
                )
                .await?;
            let deleted = report["deleted"].as_array().cloned().unwrap_or_default();
            print(
                conn.output,
                &report,
                &deleted,
                &[("DELETED STREAM", "stream"), ("GEN", "generation")],
            );
            Ok(())
        }
    }
}
