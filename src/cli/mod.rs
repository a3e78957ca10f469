//! The command-line client: every subcommand other than `serve` calls the
//! REST API, like kubectl. Human tables by default, `-o json` for scripts.
//!
//! Exit codes: 0 success; 1 the server refused (a 4xx or 5xx not below,
//! message printed) or answered with what this CLI does not read (a server
//! of another version, a proxy's page: the field missing or what came is
//! printed); 2 bad usage or local input (a file that cannot be read); 3 the
//! server could not be reached; 4 authentication failed (no token, a bad
//! one, or a read-only one for a change); 5 not found; 6 conflict (in use,
//! exists, or the `If-Match` ETag no longer matches).
//!
//! Answers are read into the API's own response types
//! ([`crate::http::api::views`], the ones the handlers serialize) and
//! printed from their fields; `-o json` writes the view back out with its
//! keys sorted ([`print_json`]), as it always has.

pub mod apply;
mod client;
pub mod commands;
pub mod explain;
pub mod groups;
pub mod inventory;
pub mod power;
mod progress;
pub mod rollout;
pub mod status;
pub mod uki;

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt;

use crate::http::api::views::{ArtifactInfo, GenerationView};
pub use client::{CliError, Client};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// How to reach the server (shared by every client subcommand).
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// The server's base URL.
    #[arg(
        long,
        global = true,
        env = "IRONBOOT_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    pub server: String,
    /// API token; else IRONBOOT_TOKEN, else DATA_DIR/admin.token.
    #[arg(long, global = true, env = "IRONBOOT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Where a local server keeps admin.token.
    #[arg(long = "data-dir", global = true, default_value = "./ironboot-data")]
    pub data_dir: PathBuf,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value = "table")]
    pub output: Output,
}

impl Connection {
    pub fn client(&self) -> Result<Client, CliError> {
        let token = match &self.token {
            Some(t) => Some(t.trim().to_string()),
            None => std::fs::read_to_string(crate::auth::admin_token_path(&self.data_dir))
                .ok()
                .map(|t| t.trim().to_string()),
        };
        Client::new(&self.server, token)
    }
}

/// Arguments of `ironboot image import`.
#[derive(Debug, Clone, clap::Args)]
pub struct ImportArgs {
    /// The stream the new generation joins (e.g. `worker`).
    #[arg(long)]
    pub stream: String,
    /// Kernel file (or, with --from-url, `URL#sha256=HEX`).
    #[arg(long, required_unless_present_any = ["installer", "uki"])]
    pub kernel: Option<String>,
    /// Initrd file(s), in order (repeatable).
    #[arg(long, required_unless_present_any = ["installer", "uki"])]
    pub initrd: Vec<String>,
    /// An ONIE installer instead of a live OS: the generation is what a
    /// switch's ONIE installs (no kernel, initrd or rootfs with it).
    #[arg(long, conflicts_with_all = ["kernel", "initrd", "rootfs"])]
    pub installer: Option<String>,
    /// A unified kernel image (`image build-uki`, or your own) instead of a
    /// kernel and initrds: machines with loader `uki` boot it straight from
    /// the firmware, which verifies its signature.
    #[arg(long, conflicts_with_all = ["kernel", "initrd", "rootfs", "installer"])]
    pub uki: Option<String>,
    /// With --uki: refuse the file unless `sbverify` finds it signed by this
    /// certificate, its hash intact.
    #[arg(long, requires = "uki")]
    pub verify_cert: Option<PathBuf>,
    /// Optional root filesystem (squashfs, …) fetched by the booted OS.
    #[arg(long)]
    pub rootfs: Option<String>,
    /// Kernel command line template (minijinja; sees the machine's facts).
    #[arg(long, default_value = "console=tty0 console=ttyS0,115200n8")]
    pub cmdline: String,
    /// Architecture of the image.
    #[arg(long, default_value = "x86_64", value_parser = ["x86_64", "arm64"])]
    pub arch: String,
    /// The artifacts are remote: the server downloads each `URL#sha256=HEX`
    /// and verifies it.
    #[arg(long)]
    pub from_url: bool,
}

/// Imports an image: uploads (or has the server fetch) each artifact, then
/// creates the generation. Prints `generation N <digest>`.
pub async fn import(conn: &Connection, args: &ImportArgs) -> Result<(), CliError> {
    let client = conn.client()?;
    if let Some(installer) = &args.installer {
        let installer = artifact(&client, installer, args.from_url).await?;
        let manifest = json!({ "arch": args.arch, "installer": installer });
        return create_generation(conn, &client, &args.stream, &manifest).await;
    }
    if let Some(uki) = &args.uki {
        if !args.from_url {
            uki::check_before_import(Path::new(uki), args.verify_cert.as_deref())?;
        } else if args.verify_cert.is_some() {
            return Err(CliError::Usage(
                "--verify-cert checks a local file: not with --from-url".into(),
            ));
        }
        let uki = artifact(&client, uki, args.from_url).await?;
        let manifest = json!({ "arch": args.arch, "uki": uki, "cmdline": "" });
        return create_generation(conn, &client, &args.stream, &manifest).await;
    }
    let kernel = match &args.kernel {
        Some(k) => artifact(&client, k, args.from_url).await?,
        None => return Err(CliError::Usage("--kernel or --installer is needed".into())),
    };
    let mut initrds = Vec::new();
    for i in &args.initrd {
        initrds.push(artifact(&client, i, args.from_url).await?);
    }
    let rootfs = match &args.rootfs {
        Some(r) => Some(artifact(&client, r, args.from_url).await?),
        None => None,
    };
    let verity = match (&args.rootfs, args.from_url) {
        (Some(r), false) => rootfs_verity(&client, Path::new(r)).await?,
        _ => None,
    };
    let mut manifest = json!({ "arch": args.arch, "kernel": kernel, "initrds": initrds, "rootfs": rootfs, "cmdline": args.cmdline });
    if let Some(v) = verity {
        manifest["rootfs_verity"] = v;
    }
    create_generation(conn, &client, &args.stream, &manifest).await
}

/// The dm-verity hash tree of a local root image, uploaded like any
/// artifact: the manifest's `rootfs_verity` (a fresh random salt and UUID).
/// `None`, said on stderr, for an image that is not a whole number of
/// 4096-byte blocks (dm-verity covers whole blocks only).
async fn rootfs_verity(client: &Client, path: &Path) -> Result<Option<Value>, CliError> {
    use crate::images::verity;
    use rand::RngCore;
    let unreadable = |e: std::io::Error| CliError::Usage(format!("{}: {e}", path.display()));
    let size = std::fs::metadata(path).map_err(unreadable)?.len();
    let padding = verity::padding_for(size);
    if padding != 0 || size == 0 {
        eprintln!(
            "{}: not a whole number of 4096-byte blocks: imported without a dm-verity tree (append {padding} zero bytes, e.g. truncate -s +{padding}, to have one)",
            path.display()
        );
        return Ok(None);
    }
    let mut params = verity::VerityParams {
        salt: vec![0u8; 32],
        uuid: [0u8; 16],
    };
    rand::thread_rng().fill_bytes(&mut params.salt);
    rand::thread_rng().fill_bytes(&mut params.uuid);
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let salt = hex::encode(&params.salt);
    let reading = progress::Reading {
        inner: file,
        progress: progress::Progress::new(format!("{}: dm-verity tree", path.display()), size),
    };
    let tree = tokio::task::spawn_blocking(move || {
        verity::build(
            std::io::BufReader::with_capacity(1 << 20, reading),
            size,
            &params,
        )
    })
    .await
    .map_err(|e| CliError::Usage(e.to_string()))?
    .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
    let dir = tempfile::TempDir::new()
        .map_err(|e| CliError::Usage(format!("temporary directory: {e}")))?;
    let name = format!(
        "{}.verity",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    );
    let tree_path = dir.path().join(&name);
    std::fs::write(&tree_path, &tree.hash_file)
        .map_err(|e| CliError::Usage(format!("{name}: {e}")))?;
    let hash_tree = artifact(client, tree_path.to_str().unwrap_or_default(), false).await?;
    eprintln!(
        "{}: dm-verity root hash {}",
        path.display(),
        tree.root_hex()
    );
    Ok(Some(
        json!({ "hash_tree": hash_tree, "root_hash": tree.root_hex(), "salt": salt }),
    ))
}

async fn create_generation(
    conn: &Connection,
    client: &Client,
    stream: &str,
    manifest: &Value,
) -> Result<(), CliError> {
    let path = format!("/api/v1/streams/{stream}/generations");
    let created: GenerationView = client.post_as(&path, manifest).await?;
    match conn.output {
        Output::Json => print_json(&created),
        Output::Table => println!("generation {} {}", created.generation, created.digest),
    }
    Ok(())
}

/// One artifact reference for the manifest, after making sure the server
/// has its bytes.
async fn artifact(client: &Client, spec: &str, remote: bool) -> Result<Value, CliError> {
    if remote {
        let (url, hex) = spec.split_once("#sha256=").ok_or_else(|| {
            CliError::Usage(format!("{spec}: with --from-url, write URL#sha256=HEX"))
        })?;
        let name = url
            .rsplit('/')
            .next()
            .filter(|n| !n.is_empty())
            .unwrap_or("artifact");
        let fetch = "/api/v1/artifacts/fetch";
        let body = json!({ "url": url, "sha256": hex });
        let got: ArtifactInfo = client.post_as(fetch, &body).await?;
        return Ok(json!({ "name": name, "digest": got.sha256, "size": got.size }));
    }
    let path = Path::new(spec);
    let (hex, size) = sha256_file(path).await?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "artifact".into());
    if !client.has_artifact(&hex).await? {
        client.upload_artifact(&hex, path).await?;
    }
    Ok(json!({ "name": name, "digest": hex, "size": size }))
}

async fn sha256_file(path: &Path) -> Result<(String, u64), CliError> {
    let unreadable = |e: std::io::Error| CliError::Usage(format!("{}: {e}", path.display()));
    let mut file = tokio::fs::File::open(path).await.map_err(unreadable)?;
    let total = file.metadata().await.map_err(unreadable)?.len();
    let mut progress = progress::Progress::new(format!("{}: sha256", path.display()), total);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).await.map_err(unreadable)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
        if let Some(p) = progress.as_mut() {
            p.add(n as u64);
        }
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// Prints an answer of the API as `-o json` always has: pretty, with the
/// keys of every object sorted (through [`Value`], whose maps sort them),
/// whatever the order of the view's fields.
pub fn print_json<T: Serialize + ?Sized>(answer: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(&value_of(answer)).expect("JSON")
    );
}

/// An API view as the JSON it came as (for [`print`]'s tables).
pub fn value_of<T: Serialize + ?Sized>(view: &T) -> Value {
    serde_json::to_value(view).expect("API views serialize")
}

/// Prints JSON, or a table of `columns` from each row of `rows`.
pub fn print(output: Output, whole: &Value, rows: &[Value], columns: &[(&str, &str)]) {
    if output == Output::Json {
        print_json(whole);
        return;
    }
    let cell = |row: &Value, path: &str| -> String {
        let v = path
            .split('.')
            .try_fold(row, |v, k| v.get(k))
            .unwrap_or(&Value::Null);
        match v {
            Value::Null => "-".into(),
            Value::String(s) => s.clone(),
            // A generation reference: {stream, generation} in API bodies,
            // {stream, number} where the server serialises a GenerationId.
            Value::Object(o) if o.contains_key("stream") => format!(
                "{} gen {}",
                o.get("stream").and_then(Value::as_str).unwrap_or("?"),
                o.get("generation")
                    .or(o.get("number"))
                    .unwrap_or(&Value::Null)
            ),
            other => other.to_string(),
        }
    };
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| columns.iter().map(|(_, p)| cell(r, p)).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (h, _))| {
            table
                .iter()
                .map(|r| r[i].len())
                .chain([h.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(columns.iter().map(|(h, _)| h.to_string()).collect());
    for row in table {
        line(row);
    }
}
