//! Configuration: one TOML file, `IRONBOOT_*` environment variables and
//! command-line flags, merged in that order (later wins) and validated into
//! typed settings.
//!
//! Only `main` and this module read files, flags or the environment. Every
//! error names the key it is about (`dhcp.subnet[0].range: …`), and figment
//! adds where the value came from (file, environment variable, flag).
//!
//! Environment variables map to keys with `__` as the separator:
//! `IRONBOOT_DHCP__MODE=full` sets `dhcp.mode`, `IRONBOOT_DATA_DIR` sets
//! `data_dir`. Values are parsed as TOML values when they parse (numbers,
//! booleans, arrays), else taken as strings. Only variables whose first key is
//! a config section are read, so `IRONBOOT_TOKEN` and friends never clash.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

pub use crate::domain::lease::{Reservation, Subnet};
use crate::domain::MacAddr;
use crate::tftp::TftpConfig;

/// Top-level keys; environment variables outside these are not config.
const SECTIONS: &[&str] = &[
    "data_dir",
    "server_ip",
    "server_name",
    "log_format",
    "http",
    "tftp",
    "dhcp",
    "dhcp6",
    "rollout",
    "bmc",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Load(#[from] Box<figment::Error>),
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    #[error("--set {0:?}: expected KEY=VALUE, e.g. --set dhcp.mode=full")]
    BadSet(String),
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------
// The file's shape (what serde reads). Defaults are the embedded defaults.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// SQLite database and (later) the image store live here.
    pub data_dir: PathBuf,
    /// The address clients are told (next-server, URLs). Defaults to the
    /// first boot interface's IPv4 address, else the host's first
    /// non-loopback IPv4 address.
    pub server_ip: Option<Ipv4Addr>,
    /// This server's id among the servers of a database (`ironboot
    /// status`); default `HOST:HTTP_PORT`. Keep it stable: a restart with
    /// the same id replaces its row, a new id adds one.
    pub server_name: Option<String>,
    pub log_format: LogFormat,
    /// A directory laid out like `boot-templates/` that replaces the
    /// templates embedded in the binary.
    pub templates_dir: Option<PathBuf>,
    pub http: RawHttp,
    pub tftp: RawTftp,
    pub dhcp: RawDhcp,
    /// DHCPv6 and router advertisements for IPv6-only boot networks.
    pub dhcp6: RawDhcp6,
    /// The watchdog and the reboot hook (`rollout::settings`).
    pub rollout: crate::rollout::settings::RawRollout,
    /// Power control through BMCs (`bmc::service`).
    pub bmc: crate::bmc::service::RawBmc,
    /// Root images as read-only block devices (`nbd`).
    pub nbd: crate::nbd::RawNbd,
    /// Server-side downloads (`images::fetch`).
    pub images: crate::images::fetch::RawImages,
    /// The boot path's binding rule and boot tokens (`binding`).
    pub boot: RawBoot,
    /// How long ledger events are kept (`store::retention`).
    pub events: crate::store::retention::RawEvents,
    /// Which database holds the inventory (`store`).
    pub store: RawStore,
}

/// `url` with its password, if any, replaced by `***` (for banners and
/// logs).
pub fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((user, host)) if user.contains(':') => {
            let name = user.split(':').next().unwrap_or("");
            format!("{scheme}://{name}:***@{host}{tail}")
        }
        _ => url.to_string(),
    }
}

/// `[store]`: SQLite in `data_dir` unless `url` names a PostgreSQL
/// database (`postgres://user:password@host:port/db` or with
/// `?host=/socket/dir`), which several servers can share.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStore {
    pub url: Option<String>,
    /// When another server serves from `url`: wait as its standby and take
    /// over when its claim is released (the `standby` module), instead of
    /// failing at start.
    pub standby: bool,
    /// Serve `url` together with the other servers that set it too: every
    /// one answers its own boot network from the same inventory, one of
    /// them leads the fleet (rollouts, deadlines, reboots, retention).
    pub shared: bool,
    /// With `shared`: keep a copy of every artifact the other servers
    /// imported (the default). Off for a satellite whose machines fetch
    /// artifacts from a rack cache (`dhcp.subnet[].artifacts`): its disk
    /// then holds what it imported itself, nothing more.
    pub copy_images: Option<bool>,
}

/// `[boot]`: who may act for a machine on the boot path, and for how long a
/// boot's token works.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBoot {
    /// `required` (default) or `off` (labs only: see `binding`).
    pub binding: crate::binding::Mode,
    /// How long after its script a boot's token fetches configs and
    /// confirms.
    pub token_ttl: String,
}

impl Default for RawBoot {
    fn default() -> Self {
        Self {
            binding: crate::binding::Mode::Required,
            token_ttl: "2h".into(),
        }
    }
}

/// Validated `[boot]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootSettings {
    pub binding: crate::binding::Mode,
    pub token_ttl: Duration,
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./ironboot-data"),
            server_ip: None,
            server_name: None,
            log_format: LogFormat::Human,
            templates_dir: None,
            http: RawHttp::default(),
            tftp: RawTftp::default(),
            dhcp: RawDhcp::default(),
            dhcp6: RawDhcp6::default(),
            rollout: Default::default(),
            bmc: Default::default(),
            nbd: Default::default(),
            images: Default::default(),
            boot: RawBoot::default(),
            events: Default::default(),
            store: RawStore::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHttp {
    pub listen: SocketAddr,
    /// A client must send a request's headers within this.
    pub header_read_timeout: String,
    /// Connections open at once, in all.
    pub max_connections: usize,
    /// Connections open at once from one address.
    pub max_connections_per_address: usize,
}

impl Default for RawHttp {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".parse().unwrap(),
            header_read_timeout: "10s".into(),
            max_connections: 8192,
            max_connections_per_address: 256,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTftp {
    /// `false` turns the TFTP server off (an external one serves the files).
    pub enabled: bool,
    pub listen: SocketAddr,
    pub ipxe_dir: PathBuf,
    pub max_blksize: u16,
    pub max_windowsize: u16,
    pub max_transfers: usize,
    pub timeout: String,
    pub retries: u32,
    /// The longest `timeout` option a client may negotiate (RFC 2349);
    /// longer ones are not acknowledged.
    pub max_timeout: String,
    /// A transfer that has not finished in this time is ended.
    pub max_transfer_time: String,
    /// Transfers running at once for one client address.
    pub max_transfers_per_client: usize,
}

impl Default for RawTftp {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "0.0.0.0:69".parse().unwrap(),
            ipxe_dir: PathBuf::from("/usr/lib/ipxe"),
            max_blksize: 1468,
            max_windowsize: 64,
            max_transfers: 512,
            timeout: "1s".into(),
            retries: 6,
            max_timeout: "10s".into(),
            max_transfer_time: "10m".into(),
            max_transfers_per_client: 8,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DhcpMode {
    /// Hand out addresses from subnets and reservations, plus boot options.
    Full,
    /// Boot options only; another server owns addresses (also UDP 4011).
    Proxy,
    Off,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDhcp {
    pub mode: DhcpMode,
    /// Interfaces to serve on (one socket each, bound to the device). Empty:
    /// one socket on `listen`, replies addressed from `server_ip`.
    pub interfaces: Vec<String>,
    pub listen: SocketAddr,
    pub proxy_listen: SocketAddr,
    /// Full mode: answer non-PXE clients that ironboot does not know yet.
    pub serve_all: bool,
    /// How long an OFFERed address stays held for the client it was offered to.
    pub offer_timeout: String,
    /// Send a minimal IPv6 router advertisement (lifetime 0, no prefix) on the
    /// boot interfaces so iPXE's IPv6 autoconfiguration ends at once.
    pub router_advertisement: Option<bool>,
    pub bootfile: RawBootfiles,
    pub subnet: Vec<RawSubnet>,
    pub reservation: Vec<RawReservation>,
    /// Relay agents whose option 82 (circuit-id, remote-id) is believed.
    pub trusted_relays: Vec<Ipv4Addr>,
    /// Never-seen clients answered per minute per relay or segment
    /// (`dhcp::newcomers`); 0 is no limit.
    pub new_clients_per_minute: u32,
    /// The same over every source together; 0 is no limit.
    pub new_clients_per_minute_total: u32,
    /// Machines never booted and never touched by an operator are removed
    /// after this long unseen (`inventory::forget`); "0s" keeps them.
    pub forget_unbooted_after: String,
    /// The `server_name` of this server's HA partner on the segment
    /// (`[store] shared`): both answer, each its half of the clients by
    /// MAC hash, and each takes the other's half while it is gone
    /// (`dhcp::pair`).
    pub peer: Option<String>,
}

impl Default for RawDhcp {
    fn default() -> Self {
        Self {
            mode: DhcpMode::Proxy,
            interfaces: Vec::new(),
            listen: "0.0.0.0:67".parse().unwrap(),
            proxy_listen: "0.0.0.0:4011".parse().unwrap(),
            serve_all: false,
            offer_timeout: "60s".into(),
            router_advertisement: None,
            bootfile: RawBootfiles::default(),
            subnet: Vec::new(),
            reservation: Vec::new(),
            trusted_relays: Vec::new(),
            new_clients_per_minute: 1200,
            new_clients_per_minute_total: 6000,
            forget_unbooted_after: "7d".into(),
            peer: None,
        }
    }
}

/// Which file each client kind is told to load (names under the TFTP root).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBootfiles {
    pub bios: String,
    pub efi_x64: String,
    pub efi_ia32: String,
    /// The arm64 loader: Debian's netboot GRUB (`grub-efi-arm64-bin`),
    /// read from `grub_dir` when that is set.
    pub efi_arm64: String,
    /// Path of the iPXE script on the HTTP server, for clients already in iPXE.
    pub ipxe_script: String,
    /// The x64 netboot GRUB (`grub-efi-amd64-bin`'s `grubnetx64.efi`), for
    /// x64 UEFI machines or groups whose loader is set to `grub`.
    pub grub_x64: String,
    /// Where the GRUB loaders (`efi_arm64`, `grub_x64`) are read from, e.g.
    /// `/usr/lib/grub/arm64-efi/monolithic`; unset: the TFTP root.
    pub grub_dir: Option<std::path::PathBuf>,
    /// Secure Boot (loader `shim`): Debian's Microsoft-signed shim
    /// (`shim-signed`), served as [`SHIM_X64`].
    pub shim_x64: std::path::PathBuf,
    /// Debian's signed netboot GRUB (`grub-efi-amd64-signed`), served as
    /// [`SIGNED_GRUB_X64`], the name shim loads from its own directory.
    pub signed_grub_x64: std::path::PathBuf,
}

/// The name the signed shim is served under (TFTP and `/ipxe/`).
pub const SHIM_X64: &str = "shimx64.efi";
/// The name shim loads its second stage by (fixed in shim).
pub const SIGNED_GRUB_X64: &str = "grubx64.efi";

impl Default for RawBootfiles {
    fn default() -> Self {
        Self {
            bios: "undionly.kpxe".into(),
            efi_x64: "ipxe.efi".into(),
            efi_ia32: "ipxe.efi".into(),
            efi_arm64: "grubnetaa64.efi".into(),
            ipxe_script: "/boot.ipxe".into(),
            grub_x64: "grubnetx64.efi".into(),
            grub_dir: None,
            shim_x64: "/usr/lib/shim/shimx64.efi.signed".into(),
            signed_grub_x64: "/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed".into(),
        }
    }
}

impl RawBootfiles {
    /// The loader file names (what TFTP and `/ipxe/` serve by name) that
    /// live in the TFTP root.
    pub fn names(&self) -> Vec<String> {
        let mut names = vec![
            self.bios.clone(),
            self.efi_x64.clone(),
            self.efi_ia32.clone(),
        ];
        if self.grub_dir.is_none() {
            names.extend(self.grub_names());
        }
        names
    }

    /// The GRUB loader names (read from `grub_dir` when it is set).
    pub fn grub_names(&self) -> Vec<String> {
        vec![self.efi_arm64.clone(), self.grub_x64.clone()]
    }

    /// The Secure Boot chain's files, each under the name it is served by.
    pub fn signed_files(&self) -> [(&'static str, &std::path::Path); 2] {
        [
            (SHIM_X64, &self.shim_x64),
            (SIGNED_GRUB_X64, &self.signed_grub_x64),
        ]
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSubnet {
    pub network: Ipv4Net,
    pub range: Vec<Ipv4Addr>,
    pub router: Option<Ipv4Addr>,
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    #[serde(default = "default_lease_time")]
    pub lease_time: String,
    /// The base URL of an artifact cache near this subnet's machines
    /// (`ironboot artifact-cache`): the scripts of machines at an address
    /// in `network` fetch kernels, initrds and root images from it.
    pub artifacts: Option<String>,
}

fn default_lease_time() -> String {
    "1h".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawReservation {
    pub mac: String,
    pub ip: Ipv4Addr,
    pub hostname: Option<String>,
}

// ---------------------------------------------------------------------------
// Validated settings (what the rest of the crate sees).
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub server_ip: Ipv4Addr,
    /// `server_name` as configured (see [`Config::server_id`]).
    pub server_name: Option<String>,
    /// The host's name (`/proc/sys/kernel/hostname`), for the default id.
    pub host_name: String,
    pub log_format: LogFormat,
    pub templates_dir: Option<PathBuf>,
    pub http_listen: SocketAddr,
    pub http_limits: HttpLimits,
    pub tftp: Option<TftpSettings>,
    pub dhcp: DhcpSettings,
    /// DHCPv6 (`None`: `[dhcp6] mode = "off"`, the default).
    pub dhcp6: Option<Dhcp6Settings>,
    pub rollout: crate::rollout::settings::RolloutSettings,
    pub bmc: crate::bmc::service::BmcSettings,
    /// NBD (off unless `[nbd] listen` is set).
    pub nbd: Option<crate::nbd::NbdSettings>,
    pub fetch: crate::images::fetch::FetchPolicy,
    pub boot: BootSettings,
    pub retention: crate::store::retention::Retention,
    /// A PostgreSQL database (`None`: SQLite in `data_dir`).
    pub store_url: Option<String>,
    /// `[store] standby`: wait for the server serving `store_url`.
    pub store_standby: bool,
    /// `[store] shared`: serve `store_url` together with other servers.
    pub store_shared: bool,
    /// `[store] copy_images`: with `shared`, copy the others' artifacts.
    pub store_copy_images: bool,
    /// Where the values came from, for the start-up banner.
    pub source: String,
}

#[derive(Debug, Clone)]
pub struct TftpSettings {
    pub listen: SocketAddr,
    pub server: TftpConfig,
}

#[derive(Debug, Clone)]
pub struct DhcpSettings {
    pub mode: DhcpMode,
    pub interfaces: Vec<String>,
    pub listen: SocketAddr,
    pub proxy_listen: SocketAddr,
    pub serve_all: bool,
    pub offer_timeout: Duration,
    pub router_advertisement: bool,
    pub bootfiles: RawBootfiles,
    pub subnets: Vec<Subnet>,
    pub reservations: Vec<Reservation>,
    /// Option 82 counts (identity, storage) only from these relays, and
    /// only when the datagram's source is its `giaddr`.
    pub trusted_relays: Vec<Ipv4Addr>,
    /// Never-seen clients admitted per minute, per source and in all
    /// (0: no limit).
    pub new_clients_per_minute: u32,
    pub new_clients_per_minute_total: u32,
    /// `None`: never-booted machines are kept for ever.
    pub forget_unbooted_after: Option<Duration>,
    /// Artifact caches by the machines' network (`dhcp.subnet[].artifacts`),
    /// each as a base URL without a trailing slash.
    pub artifact_caches: Vec<(Ipv4Net, String)>,
    /// `[dhcp] peer`: the HA partner's server name.
    pub peer: Option<String>,
}

/// What any client can hold of the HTTP server (`[http]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// A request's headers must arrive within this (slow or half-sent
    /// requests are closed); bodies and responses are not timed, so a long
    /// download at rack speed is never cut.
    pub header_read_timeout: std::time::Duration,
    pub max_connections: usize,
    pub max_connections_per_address: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: std::time::Duration::from_secs(10),
            max_connections: 8192,
            max_connections_per_address: 256,
        }
    }
}

/// What the command line contributes on top of file and environment.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub file: Option<PathBuf>,
    /// `(key path, value)` pairs from dedicated flags and `--set`.
    pub values: Vec<(String, figment::value::Value)>,
}

impl Overrides {
    /// Adds a `--set KEY=VALUE`; the value is read as TOML when it parses
    /// (`10`, `true`, `["a", "b"]`, `{ network = … }`), else as a string.
    pub fn set(&mut self, assignment: &str) -> Result<(), ConfigError> {
        let (key, value) = assignment
            .split_once('=')
            .filter(|(k, _)| !k.trim().is_empty())
            .ok_or_else(|| ConfigError::BadSet(assignment.to_string()))?;
        self.values
            .push((key.trim().to_string(), parse_value(value.trim())));
        Ok(())
    }

    pub fn push(&mut self, key: &str, value: impl Serialize) {
        let value = figment::value::Value::serialize(value).expect("plain values serialize");
        self.values.push((key.to_string(), value));
    }
}

fn parse_value(text: &str) -> figment::value::Value {
    Figment::from(Toml::string(&format!("v = {text}")))
        .extract_inner::<figment::value::Value>("v")
        .unwrap_or_else(|_| figment::value::Value::from(text.to_string()))
}

/// Loads file, environment and overrides (in that order) and validates.
pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
    let mut figment = Figment::from(Serialized::defaults(RawConfig::default()));
    let mut source = String::from("embedded defaults");
    if let Some(file) = &overrides.file {
        if !file.exists() {
            return Err(invalid(
                "--config",
                format!("{} does not exist", file.display()),
            ));
        }
        figment = figment.merge(Toml::file_exact(file));
        source = format!("{}", file.display());
    }
    figment = figment.merge(env_provider());
    for (key, value) in &overrides.values {
        figment = figment.merge(Serialized::default(key, value.clone()));
    }
    let raw: RawConfig = figment
        .extract()
        .map_err(|e| ConfigError::Load(Box::new(e)))?;
    validate(raw, source)
}

/// Loads a configuration from TOML text alone (no environment, no flags):
/// for tests and for tools that generate configs.
pub fn load_str(text: &str) -> Result<Config, ConfigError> {
    let raw: RawConfig = Figment::from(Serialized::defaults(RawConfig::default()))
        .merge(Toml::string(text))
        .extract()
        .map_err(|e| ConfigError::Load(Box::new(e)))?;
    validate(raw, "inline TOML".into())
}

/// The process's `IRONBOOT_*` variables, restricted to config sections.
fn env_provider() -> Env {
    Env::prefixed("IRONBOOT_").split("__").filter(|key| {
        let first = key
            .as_str()
            .split('.')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        SECTIONS.contains(&first.as_str())
    })
}

fn parse_duration(key: &str, text: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        invalid(
            key,
            format!("{text:?} is not a duration like \"90s\" or \"1h\": {e}"),
        )
    })
}

pub fn validate(raw: RawConfig, source: String) -> Result<Config, ConfigError> {
    let dhcp = validate_dhcp(&raw.dhcp)?;
    let dhcp6 = validate_dhcp6(&raw.dhcp6, raw.http.listen.port())?;
    let server_ip = match raw.server_ip {
        Some(ip) if ip.is_unspecified() => {
            return Err(invalid("server_ip", "0.0.0.0 cannot be told to clients"))
        }
        Some(ip) => ip,
        // An IPv6-only boot network: no IPv4 client is told anything.
        None if dhcp.mode == DhcpMode::Off && dhcp6.is_some() => {
            guess_server_ip(&[]).unwrap_or(Ipv4Addr::LOCALHOST)
        }
        None => guess_server_ip(&dhcp.interfaces).ok_or_else(|| {
            invalid(
                "server_ip",
                "not set and no IPv4 address found on this host; set it",
            )
        })?,
    };
    let tftp = if raw.tftp.enabled {
        Some(validate_tftp(&raw.tftp)?)
    } else {
        None
    };
    let rollout = crate::rollout::settings::validate(&raw.rollout)
        .map_err(|(key, message)| invalid(key, message))?;
    let bmc =
        crate::bmc::service::validate(&raw.bmc).map_err(|(key, message)| invalid(key, message))?;
    let nbd = crate::nbd::validate(&raw.nbd).map_err(|(key, message)| invalid(key, message))?;
    let fetch = crate::images::fetch::validate(&raw.images)
        .map_err(|(key, message)| invalid(key, message))?;
    let token_ttl = humantime::parse_duration(raw.boot.token_ttl.trim())
        .ok()
        .filter(|d| *d >= Duration::from_secs(60))
        .ok_or_else(|| {
            invalid(
                "boot.token_ttl",
                format!(
                    "{:?} is not a duration of at least 1m like \"2h\"",
                    raw.boot.token_ttl
                ),
            )
        })?;
    let header_read_timeout = humantime::parse_duration(raw.http.header_read_timeout.trim())
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            invalid(
                "http.header_read_timeout",
                format!(
                    "{:?} is not a duration like \"10s\"",
                    raw.http.header_read_timeout
                ),
            )
        })?;
    for (key, n) in [
        ("http.max_connections", raw.http.max_connections),
        (
            "http.max_connections_per_address",
            raw.http.max_connections_per_address,
        ),
    ] {
        if n == 0 {
            return Err(invalid(key, "must be at least 1"));
        }
    }
    let http_limits = HttpLimits {
        header_read_timeout,
        max_connections: raw.http.max_connections,
        max_connections_per_address: raw.http.max_connections_per_address,
    };
    let boot = BootSettings {
        binding: raw.boot.binding,
        token_ttl,
    };
    let retention = crate::store::retention::validate(&raw.events)
        .map_err(|(key, message)| invalid(key, message))?;
    if let Some(url) = &raw.store.url {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(invalid(
                "store.url",
                "must be a PostgreSQL URL (postgres://…); leave it out for SQLite in data_dir",
            ));
        }
    }
    if raw.store.standby && raw.store.url.is_none() {
        return Err(invalid(
            "store.standby",
            "needs store.url: a standby waits on a PostgreSQL database another server serves from",
        ));
    }
    if raw.store.shared && raw.store.url.is_none() {
        return Err(invalid(
            "store.shared",
            "needs store.url: servers share a PostgreSQL database (SQLite has one server)",
        ));
    }
    if raw.store.copy_images.is_some() && !raw.store.shared {
        return Err(invalid(
            "store.copy_images",
            "only means something with store.shared = true (a standby always copies; one server has nothing to copy)",
        ));
    }
    if raw.store.shared && raw.store.standby {
        return Err(invalid(
            "store.shared",
            "a shared server serves at once; leave out store.standby (a standby waits for one server)",
        ));
    }
    if let Some(name) = &raw.server_name {
        check_server_name(name).map_err(|m| invalid("server_name", m))?;
    }
    if let Some(peer) = &raw.dhcp.peer {
        check_server_name(peer).map_err(|m| invalid("dhcp.peer", m))?;
        let why = if !raw.store.shared {
            Some("needs store.shared = true: the pair shares one PostgreSQL database")
        } else if raw.dhcp.mode != DhcpMode::Full {
            Some("needs dhcp.mode = \"full\": the pair splits the addresses it gives out")
        } else if raw.server_name.is_none() {
            Some("needs server_name: each server of the pair knows the other by it")
        } else if raw.server_name.as_ref() == Some(peer) {
            Some("names this server itself")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(invalid("dhcp.peer", why));
        }
    }
    Ok(Config {
        server_name: raw.server_name.clone(),
        host_name: host_name(),
        store_url: raw.store.url.clone(),
        store_standby: raw.store.standby,
        store_shared: raw.store.shared,
        store_copy_images: raw.store.copy_images.unwrap_or(true),
        rollout,
        bmc,
        nbd,
        fetch,
        boot,
        retention,
        data_dir: raw.data_dir,
        server_ip,
        log_format: raw.log_format,
        templates_dir: raw.templates_dir,
        http_listen: raw.http.listen,
        http_limits,
        tftp,
        dhcp,
        dhcp6,
        source,
    })
}

/// A server id: 1 to 64 of letters, digits, `.`, `-`, `_` and `:`, so it
/// reads in a table and a URL alike.
fn check_server_name(name: &str) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':');
    if name.is_empty() || name.len() > 64 || !name.chars().all(ok) {
        return Err(format!(
            "{name:?}: 1 to 64 letters, digits, '.', '-', '_' or ':' (e.g. \"boot1\")"
        ));
    }
    Ok(())
}

/// The host's name, for the default server id; `localhost` where the
/// kernel does not say.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| check_server_name(h).is_ok())
        .unwrap_or_else(|| "localhost".into())
}

fn validate_tftp(raw: &RawTftp) -> Result<TftpSettings, ConfigError> {
    if !(512..=65464).contains(&raw.max_blksize) {
        return Err(invalid("tftp.max_blksize", "must be between 512 and 65464"));
    }
    if !(1..=64).contains(&raw.max_windowsize) {
        return Err(invalid(
            "tftp.max_windowsize",
            "must be between 1 and 64 (tftp-hpa clients fail above 64)",
        ));
    }
    if raw.max_transfers == 0 {
        return Err(invalid("tftp.max_transfers", "must be at least 1"));
    }
    let timeout = parse_duration("tftp.timeout", &raw.timeout)?;
    if timeout.is_zero() || timeout > Duration::from_secs(255) {
        return Err(invalid("tftp.timeout", "must be between 1ms and 255s"));
    }
    let max_timeout = parse_duration("tftp.max_timeout", &raw.max_timeout)?;
    if max_timeout < Duration::from_secs(1) || max_timeout > Duration::from_secs(255) {
        return Err(invalid("tftp.max_timeout", "must be between 1s and 255s"));
    }
    let max_transfer_time = parse_duration("tftp.max_transfer_time", &raw.max_transfer_time)?;
    if max_transfer_time < Duration::from_secs(1) {
        return Err(invalid("tftp.max_transfer_time", "must be at least 1s"));
    }
    if raw.max_transfers_per_client == 0 {
        return Err(invalid(
            "tftp.max_transfers_per_client",
            "must be at least 1",
        ));
    }
    Ok(TftpSettings {
        listen: raw.listen,
        server: TftpConfig {
            root: raw.ipxe_dir.clone(),
            max_blksize: raw.max_blksize,
            max_windowsize: raw.max_windowsize,
            max_transfers: raw.max_transfers,
            timeout,
            retries: raw.retries,
            max_timeout,
            max_transfer_time,
            max_transfers_per_client: raw.max_transfers_per_client,
        },
    })
}

fn validate_dhcp(raw: &RawDhcp) -> Result<DhcpSettings, ConfigError> {
    let offer_timeout = parse_duration("dhcp.offer_timeout", &raw.offer_timeout)?;
    let forget_unbooted_after =
        parse_duration("dhcp.forget_unbooted_after", &raw.forget_unbooted_after)?;
    let mut subnets = Vec::new();
    for (i, s) in raw.subnet.iter().enumerate() {
        subnets.push(validate_subnet(&format!("dhcp.subnet[{i}]"), s)?);
    }
    for (i, a) in subnets.iter().enumerate() {
        for (j, b) in subnets.iter().enumerate().skip(i + 1) {
            if a.network.contains(&b.network.network()) || b.network.contains(&a.network.network())
            {
                return Err(invalid(
                    format!("dhcp.subnet[{j}].network"),
                    format!("{} overlaps dhcp.subnet[{i}] ({})", b.network, a.network),
                ));
            }
        }
    }
    let mut artifact_caches = Vec::new();
    for (i, s) in raw.subnet.iter().enumerate() {
        if let Some(url) = &s.artifacts {
            let base = artifact_base(url)
                .map_err(|m| invalid(format!("dhcp.subnet[{i}].artifacts"), m))?;
            artifact_caches.push((s.network.trunc(), base));
        }
    }
    let reservations = validate_reservations(&raw.reservation, &subnets)?;
    if raw.mode == DhcpMode::Full && subnets.is_empty() {
        return Err(invalid(
            "dhcp.subnet",
            "full mode needs at least one [[dhcp.subnet]]",
        ));
    }
    let mut seen = HashSet::new();
    for (i, name) in raw.interfaces.iter().enumerate() {
        if name.is_empty() || name.len() > 15 || !seen.insert(name) {
            return Err(invalid(
                format!("dhcp.interfaces[{i}]"),
                format!("{name:?} is not a valid, distinct interface name"),
            ));
        }
    }
    for (key, value) in [
        ("dhcp.bootfile.bios", &raw.bootfile.bios),
        ("dhcp.bootfile.efi_x64", &raw.bootfile.efi_x64),
        ("dhcp.bootfile.efi_ia32", &raw.bootfile.efi_ia32),
        ("dhcp.bootfile.efi_arm64", &raw.bootfile.efi_arm64),
        ("dhcp.bootfile.ipxe_script", &raw.bootfile.ipxe_script),
        ("dhcp.bootfile.grub_x64", &raw.bootfile.grub_x64),
    ] {
        if value.is_empty()
            || value.len() > 200
            || value.chars().any(|c| c.is_control() || c == ' ')
        {
            return Err(invalid(
                key,
                "must be a non-empty file name without spaces or control characters",
            ));
        }
        if [SHIM_X64, SIGNED_GRUB_X64].contains(&value.trim_start_matches('/')) {
            return Err(invalid(
                key,
                format!("{value:?} is the name the Secure Boot chain is served by; name the file otherwise"),
            ));
        }
    }
    let router_advertisement = raw
        .router_advertisement
        .unwrap_or(raw.mode == DhcpMode::Full);
    Ok(DhcpSettings {
        mode: raw.mode,
        interfaces: raw.interfaces.clone(),
        listen: raw.listen,
        proxy_listen: raw.proxy_listen,
        serve_all: raw.serve_all,
        offer_timeout,
        router_advertisement,
        bootfiles: raw.bootfile.clone(),
        subnets,
        reservations,
        artifact_caches,
        trusted_relays: raw.trusted_relays.clone(),
        new_clients_per_minute: raw.new_clients_per_minute,
        new_clients_per_minute_total: raw.new_clients_per_minute_total,
        forget_unbooted_after: Some(forget_unbooted_after).filter(|d| !d.is_zero()),
        peer: raw.peer.clone(),
    })
}

/// `http://host[:port]` (a trailing slash allowed, nothing else after the
/// authority): an artifact cache's base URL, without the slash. Machines'
/// loaders fetch from it, so it is plain HTTP as the server's own URLs are.
fn artifact_base(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?}: must start with http:// (what iPXE and GRUB fetch)"))?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']');
    if authority.is_empty() || !authority.chars().all(ok) {
        return Err(format!(
            "{url:?}: must be http://host[:port], with no path (e.g. \"http://10.77.1.5:8080\")"
        ));
    }
    Ok(format!("http://{authority}"))
}

fn validate_subnet(key: &str, s: &RawSubnet) -> Result<Subnet, ConfigError> {
    let [start, end] = s.range[..] else {
        return Err(invalid(
            format!("{key}.range"),
            "must be [first, last], two addresses",
        ));
    };
    if u32::from(start) > u32::from(end) {
        return Err(invalid(
            format!("{key}.range"),
            format!("{start} comes after {end}"),
        ));
    }
    for ip in [start, end] {
        if !s.network.contains(&ip) || ip == s.network.network() || ip == s.network.broadcast() {
            return Err(invalid(
                format!("{key}.range"),
                format!("{ip} is not a host address of {}", s.network),
            ));
        }
    }
    if let Some(router) = s.router {
        if !s.network.contains(&router) {
            return Err(invalid(
                format!("{key}.router"),
                format!("{router} is outside {}", s.network),
            ));
        }
    }
    let lease_time = parse_duration(&format!("{key}.lease_time"), &s.lease_time)?;
    if lease_time < Duration::from_secs(60) {
        return Err(invalid(format!("{key}.lease_time"), "must be at least 60s"));
    }
    if let Some(domain) = &s.domain {
        if domain.is_empty()
            || domain.len() > 253
            || domain.chars().any(|c| c.is_control() || c == ' ')
        {
            return Err(invalid(format!("{key}.domain"), "is not a domain name"));
        }
    }
    Ok(Subnet {
        network: s.network.trunc(),
        range_start: start,
        range_end: end,
        router: s.router,
        dns: s.dns.clone(),
        domain: s.domain.clone(),
        lease_time,
    })
}

fn validate_reservations(
    raw: &[RawReservation],
    subnets: &[Subnet],
) -> Result<Vec<Reservation>, ConfigError> {
    let mut macs = HashSet::new();
    let mut ips = HashSet::new();
    let mut out = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let key = format!("dhcp.reservation[{i}]");
        let mac: MacAddr = r
            .mac
            .parse()
            .map_err(|e| invalid(format!("{key}.mac"), format!("{e}")))?;
        if !macs.insert(mac) {
            return Err(invalid(
                format!("{key}.mac"),
                format!("{mac} is reserved twice"),
            ));
        }
        if !ips.insert(r.ip) {
            return Err(invalid(
                format!("{key}.ip"),
                format!("{} is reserved twice", r.ip),
            ));
        }
        if !subnets.iter().any(|s| s.network.contains(&r.ip)) {
            return Err(invalid(
                format!("{key}.ip"),
                format!("{} is in no [[dhcp.subnet]]", r.ip),
            ));
        }
        if let Some(h) = &r.hostname {
            let ok = !h.is_empty()
                && h.len() <= 63
                && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
            if !ok {
                return Err(invalid(
                    format!("{key}.hostname"),
                    format!("{h:?} is not a host name (letters, digits, '-')"),
                ));
            }
        }
        out.push(Reservation {
            mac,
            ip: r.ip,
            hostname: r.hostname.clone(),
        });
    }
    Ok(out)
}

/// First IPv4 address of the first boot interface, else of any non-loopback
/// interface, else loopback.
fn guess_server_ip(interfaces: &[String]) -> Option<Ipv4Addr> {
    let addrs = crate::netif::ipv4_addresses().unwrap_or_default();
    if let Some(first) = interfaces.first() {
        return addrs
            .iter()
            .find(|(name, _)| name == first)
            .map(|(_, a)| a.addr());
    }
    addrs
        .iter()
        .map(|(_, a)| a.addr())
        .find(|ip| !ip.is_loopback())
        .or(Some(Ipv4Addr::LOCALHOST))
}

// ---------------------------------------------------------------------------
// [dhcp6]
// ---------------------------------------------------------------------------

/// Whether ironboot answers DHCPv6 (there is no proxy mode in DHCPv6: a
/// second server is told apart by its DUID and the client's Preference).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dhcp6Mode {
    /// Addresses from `range`, reservations, boot options.
    Full,
    #[default]
    Off,
}

/// What ironboot says in router advertisements on the DHCPv6 interfaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ra6Mode {
    /// ironboot is the segment's only RA source: M and O set (ask DHCPv6),
    /// the prefix on-link and autonomous (the live OS takes a SLAAC
    /// address), router lifetime 0 (not a default router).
    #[default]
    Managed,
    /// Another router advertises the segment (it must set M or O for
    /// firmware to ask DHCPv6); ironboot sends none.
    Off,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDhcp6 {
    pub mode: Dhcp6Mode,
    /// Interfaces to serve on (one socket joined to ff02::1:2 on each).
    /// Empty: one socket on `listen` (relayed or unicast traffic only).
    pub interfaces: Vec<String>,
    pub listen: SocketAddr,
    /// The address told to clients in URLs (`tftp://[…]/`, `http://[…]:port/`).
    /// Default: the first global IPv6 address of the first interface.
    pub server_ip: Option<std::net::Ipv6Addr>,
    /// The boot link's prefix (e.g. `fd00:77::/64`): the RA's prefix.
    pub prefix: Option<ipnet::Ipv6Net>,
    /// `[first, last]` addresses handed out, inside `prefix`.
    pub range: Vec<std::net::Ipv6Addr>,
    pub lease_time: String,
    /// DNS recursive name servers (option 23).
    pub dns: Vec<std::net::Ipv6Addr>,
    pub router_advertisement: Ra6Mode,
    /// Relayed links: one pool each, chosen by the relay's link-address.
    pub subnet: Vec<RawSubnet6>,
    /// Relays whose option 79 (the client's MAC) is believed, when the
    /// datagram comes from that address; from anyone else it is a claim
    /// and ignored (the MAC then comes from the DUID or the peer address).
    pub trusted_relays: Vec<std::net::Ipv6Addr>,
    pub reservation: Vec<RawReservation6>,
    /// Answer clients that are neither network-booting nor known (default
    /// true: OVMF's own IPv6 set-up asks for an address, with nothing that
    /// says it boots, before its PXEv6 or HTTPv6 client does; `false` only
    /// where another DHCPv6 server gives the link its addresses).
    pub serve_all: bool,
    /// `false`: PXEv6 clients get an address and no boot file, so OVMF
    /// (2022 builds, whose HTTPv6 fails as the first boot option) moves on
    /// to HTTPv6 with its IPv6 stack ready.
    pub pxe_bootfile: bool,
    /// Where HTTP listens for IPv6 clients; default `[::]:<http.listen's port>`.
    pub http_listen: Option<SocketAddr>,
    /// Where TFTP listens for IPv6 clients; default `[::]:<tftp.listen's port>`.
    pub tftp_listen: Option<SocketAddr>,
}

impl Default for RawDhcp6 {
    fn default() -> Self {
        Self {
            mode: Dhcp6Mode::Off,
            interfaces: Vec::new(),
            listen: "[::]:547".parse().unwrap(),
            server_ip: None,
            prefix: None,
            range: Vec::new(),
            lease_time: "1h".into(),
            dns: Vec::new(),
            router_advertisement: Ra6Mode::Managed,
            subnet: Vec::new(),
            trusted_relays: Vec::new(),
            reservation: Vec::new(),
            serve_all: true,
            pxe_bootfile: true,
            http_listen: None,
            tftp_listen: None,
        }
    }
}

/// `[[dhcp6.subnet]]`: a link behind a DHCPv6 relay.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSubnet6 {
    /// The relayed link's prefix: a relay whose link-address is in it
    /// draws from `range`.
    pub prefix: ipnet::Ipv6Net,
    pub range: Vec<std::net::Ipv6Addr>,
    pub lease_time: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawReservation6 {
    pub mac: String,
    pub ip: std::net::Ipv6Addr,
}

/// Validated `[dhcp6]`.
#[derive(Debug, Clone)]
pub struct Dhcp6Settings {
    pub interfaces: Vec<String>,
    pub listen: SocketAddr,
    pub server_ip: std::net::Ipv6Addr,
    /// The boot link's pool first (when `prefix`/`range` are set), then
    /// one per `[[dhcp6.subnet]]`.
    pub pools: Vec<crate::domain::lease::Pool6>,
    /// The boot link's pool (clients that are not relayed), if any.
    pub link_pool: Option<usize>,
    pub dns: Vec<std::net::Ipv6Addr>,
    pub router_advertisement: Ra6Mode,
    pub reservations: Vec<crate::domain::lease::Reservation6>,
    pub trusted_relays: Vec<std::net::Ipv6Addr>,
    pub serve_all: bool,
    pub pxe_bootfile: bool,
    pub http_listen: SocketAddr,
    pub tftp_listen: Option<SocketAddr>,
}

fn validate_dhcp6(raw: &RawDhcp6, http_port: u16) -> Result<Option<Dhcp6Settings>, ConfigError> {
    if raw.mode == Dhcp6Mode::Off {
        return Ok(None);
    }
    let mut seen = HashSet::new();
    for (i, name) in raw.interfaces.iter().enumerate() {
        if name.is_empty() || name.len() > 15 || !seen.insert(name) {
            return Err(invalid(
                format!("dhcp6.interfaces[{i}]"),
                format!("{name:?} is not an interface name, or is listed twice"),
            ));
        }
    }
    let server_ip = match raw.server_ip {
        Some(ip) if ip.is_unspecified() || ip.is_multicast() => {
            return Err(invalid(
                "dhcp6.server_ip",
                format!("{ip} cannot be told to clients"),
            ))
        }
        Some(ip) => ip,
        None => raw
            .interfaces
            .first()
            .and_then(|name| crate::netif::interface_ipv6_global(name).ok().flatten())
            .ok_or_else(|| {
                invalid(
                    "dhcp6.server_ip",
                    "not set and the first of dhcp6.interfaces has no global IPv6 address; set it",
                )
            })?,
    };
    let lease_time = parse_duration("dhcp6.lease_time", &raw.lease_time)?;
    if lease_time < Duration::from_secs(60) {
        return Err(invalid("dhcp6.lease_time", "must be at least 1m"));
    }
    let link = pool6("dhcp6", raw.prefix, &raw.range, lease_time)?;
    if link
        .as_ref()
        .is_some_and(|p| (p.range_start..=p.range_end).contains(&server_ip))
    {
        return Err(invalid(
            "dhcp6.range",
            format!("contains dhcp6.server_ip {server_ip}"),
        ));
    }
    let link_pool = link.is_some().then_some(0);
    let mut pools: Vec<crate::domain::lease::Pool6> = link.into_iter().collect();
    for (i, sub) in raw.subnet.iter().enumerate() {
        let key = format!("dhcp6.subnet[{i}]");
        let time = match &sub.lease_time {
            Some(t) => parse_duration(&format!("{key}.lease_time"), t)?,
            None => lease_time,
        };
        let pool = pool6(&key, Some(sub.prefix), &sub.range, time)?
            .ok_or_else(|| invalid(format!("{key}.range"), "needed"))?;
        if let Some(other) = pools.iter().find(|p| {
            p.prefix.contains(&pool.prefix.network()) || pool.prefix.contains(&p.prefix.network())
        }) {
            return Err(invalid(
                format!("{key}.prefix"),
                format!("{} overlaps {}", pool.prefix, other.prefix),
            ));
        }
        pools.push(pool);
    }
    let mut macs = HashSet::new();
    let mut ips = HashSet::new();
    let mut reservations = Vec::new();
    for (i, r) in raw.reservation.iter().enumerate() {
        let key = format!("dhcp6.reservation[{i}]");
        let mac: MacAddr = r
            .mac
            .parse()
            .map_err(|e| invalid(format!("{key}.mac"), format!("{e}")))?;
        if !macs.insert(mac) || !ips.insert(r.ip) {
            return Err(invalid(key, "a MAC or an address is reserved twice"));
        }
        if !pools.is_empty() && !pools.iter().any(|p| p.prefix.contains(&r.ip)) {
            return Err(invalid(
                format!("{key}.ip"),
                format!("{} is in no dhcp6 prefix", r.ip),
            ));
        }
        reservations.push(crate::domain::lease::Reservation6 { mac, ip: r.ip });
    }
    if pools.is_empty() && reservations.is_empty() {
        return Err(invalid(
            "dhcp6",
            "full mode needs prefix and range, or reservations",
        ));
    }
    if raw.router_advertisement == Ra6Mode::Managed && link_pool.is_none() {
        return Err(invalid(
            "dhcp6.router_advertisement",
            "\"managed\" advertises dhcp6.prefix: set it, or \"off\"",
        ));
    }
    let unspecified = std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);
    Ok(Some(Dhcp6Settings {
        interfaces: raw.interfaces.clone(),
        listen: raw.listen,
        server_ip,
        pools,
        link_pool,
        dns: raw.dns.clone(),
        router_advertisement: raw.router_advertisement,
        reservations,
        trusted_relays: raw.trusted_relays.clone(),
        serve_all: raw.serve_all,
        pxe_bootfile: raw.pxe_bootfile,
        http_listen: raw
            .http_listen
            .unwrap_or(SocketAddr::new(unspecified, http_port)),
        tftp_listen: raw.tftp_listen,
    }))
}

/// A prefix and its `[first, last]` range, checked (`None`: neither set).
fn pool6(
    key: &str,
    prefix: Option<ipnet::Ipv6Net>,
    range: &[std::net::Ipv6Addr],
    lease_time: Duration,
) -> Result<Option<crate::domain::lease::Pool6>, ConfigError> {
    match (prefix, range) {
        (None, []) => Ok(None),
        (Some(prefix), [start, end]) => {
            for (i, ip) in [start, end].into_iter().enumerate() {
                if !prefix.contains(ip) {
                    return Err(invalid(
                        format!("{key}.range[{i}]"),
                        format!("{ip} is outside {prefix}"),
                    ));
                }
            }
            if start > end {
                return Err(invalid(
                    format!("{key}.range"),
                    "the first address is after the last",
                ));
            }
            Ok(Some(crate::domain::lease::Pool6 {
                prefix: prefix.trunc(),
                range_start: *start,
                range_end: *end,
                lease_time,
            }))
        }
        (None, _) => Err(invalid(format!("{key}.prefix"), "needed with a range")),
        (Some(_), _) => Err(invalid(
            format!("{key}.range"),
            "give the first and last address: range = [\"fd00::1000\", \"fd00::1fff\"]",
        )),
    }
}

impl Config {
    /// Where the database lives.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("ironboot.db")
    }

    /// This server's id among the servers of its database: `server_name`,
    /// else `HOST:PORT` with the HTTP port it listens on.
    pub fn server_id(&self, http_port: u16) -> String {
        match &self.server_name {
            Some(name) => name.clone(),
            None => format!("{}:{http_port}", self.host_name),
        }
    }

    /// Base URL clients use for HTTP (`http://SERVER_IP:PORT`).
    pub fn http_base(&self) -> String {
        format!("http://{}:{}", self.server_ip, self.http_listen.port())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_toml(text: &str) -> Result<Config, ConfigError> {
        load_str(text)
    }

    const ISSUE_EXAMPLE: &str = include_str!("../tests/fixtures/ironboot.example.toml");

    #[test]
    fn the_documented_example_loads() {
        let c = from_toml(ISSUE_EXAMPLE).unwrap();
        assert_eq!(c.server_ip, Ipv4Addr::new(10, 77, 0, 1));
        assert_eq!(c.dhcp.mode, DhcpMode::Full);
        assert_eq!(c.dhcp.subnets[0].lease_time, Duration::from_secs(3600));
        assert_eq!(c.dhcp.reservations[0].mac.to_string(), "52:54:00:00:00:01");
        assert!(
            c.dhcp.router_advertisement,
            "RA is on by default in full mode"
        );
    }

    #[test]
    fn embedded_defaults_are_proxy_mode() {
        let c = from_toml("server_ip = \"192.0.2.1\"").unwrap();
        assert_eq!(c.dhcp.mode, DhcpMode::Proxy);
        assert_eq!(c.http_listen.port(), 8080);
        assert_eq!(c.tftp.as_ref().unwrap().listen.port(), 69);
        assert!(!c.dhcp.router_advertisement);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("[dhcp]\nmode = \"fancy\"", "dhcp.mode"),
            ("[dhcp]\nbogus = 1", "bogus"),
            ("[tftp]\nmax_blksize = 4", "tftp.max_blksize"),
            ("[dhcp]\nmode = \"full\"", "dhcp.subnet"),
            (
                "[[dhcp.subnet]]\nnetwork = \"10.0.0.0/24\"\nrange = [\"10.0.0.9\", \"10.0.0.2\"]",
                "dhcp.subnet[0].range",
            ),
            (
                "[[dhcp.subnet]]\nnetwork = \"10.0.0.0/24\"\nrange = [\"10.0.0.2\", \"10.0.1.9\"]",
                "dhcp.subnet[0].range",
            ),
            (
                "[[dhcp.subnet]]\nnetwork = \"10.0.0.0/24\"\nrange = [\"10.0.0.2\", \"10.0.0.9\"]\nlease_time = \"soon\"",
                "dhcp.subnet[0].lease_time",
            ),
            (
                "[[dhcp.subnet]]\nnetwork = \"10.0.0.0/24\"\nrange = [\"10.0.0.2\", \"10.0.0.9\"]\n[[dhcp.reservation]]\nmac = \"nope\"\nip = \"10.0.0.5\"",
                "dhcp.reservation[0].mac",
            ),
            (
                "[[dhcp.subnet]]\nnetwork = \"10.0.0.0/24\"\nrange = [\"10.0.0.2\", \"10.0.0.9\"]\n[[dhcp.reservation]]\nmac = \"52:54:00:00:00:01\"\nip = \"10.9.0.5\"",
                "dhcp.reservation[0].ip",
            ),
            ("[dhcp]\noffer_timeout = \"x\"", "dhcp.offer_timeout"),
            ("server_name = \"a b\"", "server_name"),
            ("server_name = \"\"", "server_name"),
            ("[store]\nstandby = true", "store.standby"),
            ("[store]\nshared = true", "store.shared"),
            ("[store]\ncopy_images = false", "store.copy_images"),
            (
                "[dhcp]\nmode = \"full\"\npeer = \"b\"\n[[dhcp.subnet]]\nnetwork = \"10.0.0.0/24\"\nrange = [\"10.0.0.2\", \"10.0.0.9\"]",
                "dhcp.peer",
            ),
            (
                "server_name = \"a\"\n[dhcp]\nmode = \"full\"\npeer = \"a\"\n[[dhcp.subnet]]\nnetwork = \"10.0.0.0/24\"\nrange = [\"10.0.0.2\", \"10.0.0.9\"]\n[store]\nurl = \"postgres://x/y\"\nshared = true",
                "dhcp.peer",
            ),
            (
                "[store]\nurl = \"postgres://x/y\"\nshared = true\nstandby = true",
                "store.shared",
            ),
            (
                "[[dhcp.subnet]]\nnetwork = \"10.0.0.0/24\"\nrange = [\"10.0.0.2\", \"10.0.0.9\"]\nartifacts = \"ftp://x\"",
                "dhcp.subnet[0].artifacts",
            ),
            (
                "[[dhcp.subnet]]\nnetwork = \"10.0.0.0/24\"\nrange = [\"10.0.0.2\", \"10.0.0.9\"]\nartifacts = \"http://x/images\"",
                "dhcp.subnet[0].artifacts",
            ),
            ("[store]\nurl = \"sqlite://x\"", "store.url"),
        ];
        for (text, key) in cases {
            let err = from_toml(&format!("server_ip = \"192.0.2.1\"\n{text}"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(key),
                "error for {text:?} should name {key}: {err}"
            );
        }
    }

    #[test]
    fn set_parses_toml_values_and_falls_back_to_strings() {
        let mut o = Overrides::default();
        o.set("dhcp.mode=full").unwrap();
        o.set("tftp.max_blksize=1432").unwrap();
        o.set("dhcp.interfaces=[\"br0\", \"br1\"]").unwrap();
        assert!(o.set("novalue").is_err());
        assert_eq!(o.values[0].1.as_str(), Some("full"));
        assert_eq!(o.values[1].1.to_num().and_then(|n| n.to_i128()), Some(1432));
        assert!(o.values[2].1.as_array().is_some());
    }
}
