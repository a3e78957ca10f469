//! The client subcommands and what each one asks the API.

use clap::Subcommand;
use serde_json::{json, Value};

use super::{import, print, value_of, CliError, Connection, ImportArgs};
use crate::http::api::views::{GcResult, GenerationList, StreamList};

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Import a kernel, initrd(s) and optional rootfs (or a unified kernel
    /// image, or an ONIE installer) as a stream's next generation.
    Import(ImportArgs),
    /// Build a unified kernel image (kernel, initrd and command line in one
    /// EFI binary) and sign it with your key, for Secure Boot (loader
    /// `uki`). Runs locally: the key never reaches the server.
    BuildUki(super::uki::BuildUkiArgs),
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
    if let ImageCommand::BuildUki(args) = cmd {
        return super::uki::build_uki(args);
    }
    let client = conn.client()?;
    match cmd {
        ImageCommand::Import(args) => import(conn, args).await,
        ImageCommand::BuildUki(_) => unreachable!("built above, without a server"),
        ImageCommand::List { stream } => {
            let streams = match stream {
                Some(s) => vec![s.clone()],
                None => {
                    let all: StreamList = client.get_as("/api/v1/streams").await?;
                    all.streams.into_iter().map(|s| s.stream).collect()
                }
            };
            let mut rows = Vec::new();
            for s in streams {
                let gens: GenerationList = client
                    .get_as(&format!("/api/v1/streams/{s}/generations"))
                    .await?;
                rows.extend(gens.generations);
            }
            let rows: Vec<Value> = rows
                .iter()
                .map(|g| {
                    let mut row = value_of(g);
                    row["in_use"] = json!(g.in_use_by.len());
                    row["digest"] = json!(g.digest.get(..12).unwrap_or(&g.digest));
                    row
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
            let body = json!({ "retain": retain, "dry_run": dry_run });
            let report: GcResult = client.post_as("/api/v1/gc", &body).await?;
            let deleted: Vec<Value> = report.deleted.iter().map(value_of).collect();
            print(
                conn.output,
                &value_of(&report),
                &deleted,
                &[("DELETED STREAM", "stream"), ("GEN", "generation")],
            );
            Ok(())
        }
    }
}
