//! The `ironboot` binary: parses flags, loads configuration, sets up logging
//! and runs the app until SIGINT or SIGTERM. The only place (with `config`)
//! that reads flags and the environment.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ironboot::cli::commands::ImageCommand;
use ironboot::cli::explain::{ExplainArgs, TemplatesCommand};
use ironboot::cli::groups::GroupsCommand;
use ironboot::cli::inventory::{BootsCommand, LeasesCommand, MachinesCommand, TokensCommand};
use ironboot::cli::Connection;
use ironboot::config::{self, DhcpMode, LogFormat, Overrides};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "ironboot",
    version,
    about = "Live-boot provisioning server for bare metal"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every service (DHCP, TFTP, HTTP) until SIGINT/SIGTERM.
    Serve(ServeArgs),
    /// Load and validate the configuration, print it, and exit.
    CheckConfig(ServeArgs),
    /// A satellite's read-through cache of a server's boot artifacts
    /// (`/artifacts/sha256/`), verified, bounded, until SIGINT/SIGTERM.
    ArtifactCache(CacheArgs),
    /// Image generations: import, list, garbage-collect (also `images`).
    #[command(alias = "images")]
    Image {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        cmd: ImageCommand,
    },
    /// Groups: selectors, variables, generation pointers, members.
    #[command(alias = "group")]
    Groups {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        cmd: GroupsCommand,
    },
    /// What a MAC (with the DHCP options or ONIE headers it would send)
    /// would be served, and why, step by step. Changes nothing.
    Explain {
        #[command(flatten)]
        conn: Connection,
        #[command(flatten)]
        args: ExplainArgs,
    },
    /// Templates: list, and render one for a machine without booting it.
    Templates {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        cmd: TemplatesCommand,
    },
    /// Machines: list, show, label, set, pin, delete, boots.
    Machines {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        cmd: MachinesCommand,
    },
    /// Rollouts: start (canary or blue/green), status, pause, resume, abort, list.
    Rollout {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        cmd: ironboot::cli::rollout::RolloutCommand,
    },
    /// Desired state: make groups and machines match a YAML file (a changed
    /// generation becomes a rollout); --dry-run prints the plan only.
    Apply {
        #[command(flatten)]
        conn: Connection,
        #[command(flatten)]
        args: ironboot::cli::apply::ApplyArgs,
    },
    /// The last-known-good watchdog: degraded machines, clear a mark.
    Watchdog {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        cmd: ironboot::cli::rollout::WatchdogCommand,
    },
    /// Boots of the whole fleet, newest first.
    Boots {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        cmd: BootsCommand,
    },
    /// Events of the ledger (boot steps, BMC operations, rollouts), newest first.
    Events {
        #[command(flatten)]
        conn: Connection,
        #[command(flatten)]
        args: ironboot::cli::inventory::EventsArgs,
    },
    /// DHCP leases: list, release.
    Leases {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        cmd: LeasesCommand,
    },
    /// API tokens: list, create, revoke (admin).
    Tokens {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        cmd: TokensCommand,
    },
    /// The servers that use this server's database: role, peer, state,
    /// last heartbeat.
    Status {
        #[command(flatten)]
        conn: Connection,
        #[command(flatten)]
        args: ironboot::cli::status::StatusArgs,
    },
}

/// Flags for the most used keys; `--set KEY=VALUE` reaches every key.
#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file (optional: embedded defaults otherwise).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Set any config key, e.g. `--set dhcp.mode=full` or
    /// `--set 'dhcp.subnet=[{network="10.77.0.0/24", range=["10.77.0.100","10.77.0.199"]}]'`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// data_dir
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// server_ip
    #[arg(long)]
    server_ip: Option<String>,
    /// http.listen
    #[arg(long)]
    http_listen: Option<String>,
    /// tftp.listen
    #[arg(long)]
    tftp_listen: Option<String>,
    /// tftp.ipxe_dir
    #[arg(long)]
    ipxe_dir: Option<PathBuf>,
    /// dhcp.mode
    #[arg(long, value_parser = ["full", "proxy", "off"])]
    dhcp_mode: Option<String>,
    /// dhcp.interfaces (repeat or comma-separate)
    #[arg(long, value_delimiter = ',')]
    interface: Vec<String>,
    /// dhcp.listen
    #[arg(long)]
    dhcp_listen: Option<String>,
    /// log_format: human or json
    #[arg(long, value_parser = ["human", "json"])]
    log_format: Option<String>,
}

impl ServeArgs {
    fn overrides(&self) -> Result<Overrides, config::ConfigError> {
        let mut o = Overrides {
            file: self.config.clone(),
            values: Vec::new(),
        };
        if let Some(v) = &self.data_dir {
            o.push("data_dir", v);
        }
        let strings = [
            ("server_ip", &self.server_ip),
            ("http.listen", &self.http_listen),
            ("tftp.listen", &self.tftp_listen),
            ("dhcp.mode", &self.dhcp_mode),
            ("dhcp.listen", &self.dhcp_listen),
            ("log_format", &self.log_format),
        ];
        for (key, value) in strings {
            if let Some(v) = value {
                o.push(key, v);
            }
        }
        if let Some(v) = &self.ipxe_dir {
            o.push("tftp.ipxe_dir", v);
        }
        if !self.interface.is_empty() {
            o.push("dhcp.interfaces", &self.interface);
        }
        for s in &self.set {
            o.set(s)?;
        }
        Ok(o)
    }
}

/// `ironboot artifact-cache --upstream http://10.0.0.1:8080 --listen
/// 0.0.0.0:8080 --dir /var/cache/ironboot --max-size 50G`
#[derive(clap::Args)]
struct CacheArgs {
    /// The server whose artifacts are cached: http(s)://host[:port].
    #[arg(long)]
    upstream: String,
    /// Address the cache serves on.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: std::net::SocketAddr,
    /// Directory of the cached artifacts (created if absent).
    #[arg(long)]
    dir: PathBuf,
    /// Most bytes held, e.g. 50G, 512M, 1T or a number of bytes; least
    /// recently used artifacts are evicted beyond it.
    #[arg(long, value_parser = ironboot::artifact_cache::parse_size)]
    max_size: u64,
    /// human or json
    #[arg(long, default_value = "human", value_parser = ["human", "json"])]
    log_format: String,
}

/// Runs the artifact cache until SIGINT or SIGTERM.
fn artifact_cache(args: &CacheArgs) -> ExitCode {
    init_logging(match args.log_format.as_str() {
        "json" => LogFormat::Json,
        _ => LogFormat::Human,
    });
    let settings = ironboot::artifact_cache::Settings {
        upstream: args.upstream.clone(),
        listen: args.listen,
        dir: args.dir.clone(),
        max_size: args.max_size,
    };
    until_signal("artifact cache: ", |shutdown| {
        ironboot::artifact_cache::run(settings, shutdown)
    })
}

/// Runs a long-lived service on a multi-threaded runtime until SIGINT or
/// SIGTERM cancels its token; its error, after `what`, ends the process.
fn until_signal<F, E>(what: &str, service: impl FnOnce(CancellationToken) -> F) -> ExitCode
where
    F: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ironboot: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        service(shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ironboot: {what}{e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("IRONBOOT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (args, check_only) = match &cli.command {
        Command::Serve(a) => (a, false),
        Command::CheckConfig(a) => (a, true),
        Command::ArtifactCache(a) => return artifact_cache(a),
        client => return run_client(client),
    };
    let config = match args.overrides().and_then(|o| config::load(&o)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ironboot: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    if check_only {
        println!("configuration OK ({})", config.source);
        println!("{config:#?}");
        return ExitCode::SUCCESS;
    }
    init_logging(config.log_format);
    raise_descriptor_limit();
    if config.dhcp.mode == DhcpMode::Full && config.dhcp.interfaces.is_empty() {
        tracing::warn!(
            "full DHCP mode on every interface: set dhcp.interfaces to the boot network"
        );
    }
    until_signal("", |shutdown| ironboot::app::run(config, shutdown, None))
}

/// Runs an API client subcommand; the exit code says what went wrong.
fn run_client(command: &Command) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ironboot: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match command {
            Command::Image { conn, cmd } => ironboot::cli::commands::image(conn, cmd).await,
            Command::Groups { conn, cmd } => ironboot::cli::groups::groups(conn, cmd).await,
            Command::Explain { conn, args } => ironboot::cli::explain::explain(conn, args).await,
            Command::Templates { conn, cmd } => ironboot::cli::explain::templates(conn, cmd).await,
            Command::Machines { conn, cmd } => ironboot::cli::inventory::machines(conn, cmd).await,
            Command::Boots { conn, cmd } => ironboot::cli::inventory::boots(conn, cmd).await,
            Command::Leases { conn, cmd } => ironboot::cli::inventory::leases(conn, cmd).await,
            Command::Events { conn, args } => ironboot::cli::inventory::events(conn, args).await,
            Command::Tokens { conn, cmd } => ironboot::cli::inventory::tokens(conn, cmd).await,
            Command::Rollout { conn, cmd } => ironboot::cli::rollout::rollout(conn, cmd).await,
            Command::Watchdog { conn, cmd } => ironboot::cli::rollout::watchdog(conn, cmd).await,
            Command::Apply { conn, args } => ironboot::cli::apply::apply(conn, args).await,
            Command::Status { conn, args } => ironboot::cli::status::status(conn, args).await,
            Command::Serve(_) | Command::CheckConfig(_) | Command::ArtifactCache(_) => {
                unreachable!("handled by main")
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ironboot: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    shutdown.cancel();
}

/// Every connection and transfer holds a descriptor: take the whole hard
/// limit, so the connection caps (`http.max_connections`) bound use before
/// the kernel does.
fn raise_descriptor_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "descriptor limit raised"),
            Err(e) => tracing::warn!(soft, hard, error = %e, "descriptor limit not raised"),
        },
        Ok((soft, _)) => tracing::info!(limit = soft, "descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "descriptor limit unknown"),
    }
}
