//! The process: bind every socket first (failing fast, naming the address),
//! then run each service under one shutdown signal and wait for all of them.
//!
//! Order matters and is deliberate: open the store and load what the packet
//! paths read; bind HTTP, TFTP, DHCP and RA sockets; only then start serving.
//! On shutdown, services stop, their ledger handles drop, and the writer
//! commits what is queued before the store closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::auth::Tokens;
use crate::bootfiles::Bootfiles;
use crate::clients::Clients;
use crate::config::{Config, DhcpMode};
use crate::dhcp::classify::BootTargets;
use crate::dhcp::server::Paths;
use crate::dhcp::{Dhcp, Port};
use crate::http::api::ApiState;
use crate::http::boot::BootState;
use crate::http::HttpState;
use crate::images::ImageStore;
use crate::inventory::Inventory;
use crate::ledger::{now_ms, Ledger};
use crate::metrics::Metrics;
use crate::render::Renderer;
use crate::store::{Store, StoreError};
use crate::tftp::TftpState;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Inventory(#[from] crate::inventory::InventoryError),
    #[error(transparent)]
    Images(#[from] crate::images::ImageError),
    #[error(transparent)]
    Render(#[from] crate::render::RenderError),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(std::io::Error),
    #[error(transparent)]
    Seal(#[from] crate::bmc::seal::SealError),
}

/// How often rollout gates and watchdog timeouts are checked.
const ROLLOUT_TICK: Duration = Duration::from_millis(500);

fn bind_err(what: &'static str, addr: impl ToString) -> impl FnOnce(std::io::Error) -> AppError {
    let addr = addr.to_string();
    move |source| AppError::Bind { what, addr, source }
}

/// Where each service ended up listening (ports may have been 0 in the
/// config); sent to the caller of [`run`] once everything is bound.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub http: SocketAddr,
    pub tftp: Option<SocketAddr>,
    pub dhcp: Option<SocketAddr>,
    pub proxy: Option<SocketAddr>,
    pub nbd: Option<SocketAddr>,
    /// DHCPv6 and the IPv6 listeners (`[dhcp6]` on).
    pub dhcp6: Option<SocketAddr>,
    pub http6: Option<SocketAddr>,
    pub tftp6: Option<SocketAddr>,
}

/// Every bound socket, before anything is served.
struct Sockets {
    http: TcpListener,
    /// HTTP for IPv6 clients (IPv6 only, beside the IPv4 listener).
    http6: Option<TcpListener>,
    nbd: Option<TcpListener>,
    packets: PacketSockets,
}

/// The UDP and raw sockets: DHCP's (per port), RA's (per interface), TFTP's.
struct PacketSockets {
    tftp: Option<tokio::net::UdpSocket>,
    tftp6: Option<tokio::net::UdpSocket>,
    dhcp: Vec<(Port, tokio::net::UdpSocket)>,
    /// DHCPv6's socket and the interface indexes it serves.
    dhcp6: Option<(tokio::net::UdpSocket, std::collections::HashSet<u32>)>,
    ra: Vec<(String, socket2::Socket, u32, crate::dhcp::ra::Advert)>,
}

async fn bind_all(config: &Config) -> Result<Sockets, AppError> {
    let http = TcpListener::bind(config.http_listen)
        .await
        .map_err(bind_err("HTTP", config.http_listen))?;
    let tftp = match &config.tftp {
        Some(t) => Some(
            tokio::net::UdpSocket::bind(t.listen)
                .await
                .map_err(bind_err("TFTP", t.listen))?,
        ),
        None => None,
    };
    let d = &config.dhcp;
    let mut dhcp = Vec::new();
    if d.mode != DhcpMode::Off {
        dhcp.push((
            Port::Dhcp,
            crate::dhcp::server::bind(d.listen).map_err(bind_err("DHCP", d.listen))?,
        ));
    }
    if d.mode == DhcpMode::Proxy {
        let s = crate::dhcp::server::bind(d.proxy_listen)
            .map_err(bind_err("proxyDHCP", d.proxy_listen))?;
        dhcp.push((Port::Proxy, s));
    }
    let mut ra = Vec::new();
    let mut dhcp6 = None;
    let (mut http6, mut tftp6) = (None, None);
    if let Some(d6) = &config.dhcp6 {
        dhcp6 = Some(
            crate::dhcp6::server::bind(d6.listen, &d6.interfaces)
                .map_err(bind_err("DHCPv6", d6.listen))?,
        );
        if d6.router_advertisement == crate::config::Ra6Mode::Managed {
            let advert = crate::dhcp::ra::Advert {
                managed: true,
                prefix: d6.link_pool.map(|i| d6.pools[i].prefix),
            };
            for name in &d6.interfaces {
                let (sock, index) =
                    crate::dhcp::ra::bind(name).map_err(bind_err("IPv6 RA", name))?;
                ra.push((name.clone(), sock, index, advert));
            }
        }
        http6 = Some(bind_tcp_v6(d6.http_listen).map_err(bind_err("HTTP (IPv6)", d6.http_listen))?);
        if let Some(t) = &config.tftp {
            let listen = d6.tftp_listen.unwrap_or(SocketAddr::new(
                std::net::Ipv6Addr::UNSPECIFIED.into(),
                t.listen.port(),
            ));
            tftp6 = Some(bind_udp_v6(listen).map_err(bind_err("TFTP (IPv6)", listen))?);
        }
    }
    if d.mode != DhcpMode::Off && d.router_advertisement {
        // An interface DHCPv6 advertises on already has its (managed) RA.
        for name in &d.interfaces {
            if ra.iter().any(|(n, ..)| n == name) {
                continue;
            }
            let (sock, index) = crate::dhcp::ra::bind(name).map_err(bind_err("IPv6 RA", name))?;
            ra.push((name.clone(), sock, index, crate::dhcp::ra::Advert::QUIET));
        }
    }
    let nbd = match &config.nbd {
        Some(n) => Some(
            TcpListener::bind(n.listen)
                .await
                .map_err(bind_err("NBD", n.listen))?,
        ),
        None => None,
    };
    Ok(Sockets {
        http,
        http6,
        nbd,
        packets: PacketSockets {
            tftp,
            tftp6,
            dhcp,
            dhcp6,
            ra,
        },
    })
}

/// A TCP listener for IPv6 clients only, so it sits beside the IPv4 one on
/// the same port.
fn bind_tcp_v6(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)?;
    sock.set_only_v6(true)?;
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    TcpListener::from_std(sock.into())
}

/// A UDP socket for IPv6 clients only (TFTP beside its IPv4 socket).
fn bind_udp_v6(addr: SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
    let sock = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::DGRAM, None)?;
    sock.set_only_v6(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(sock.into())
}

/// Runs every service until `shutdown` is cancelled. `ready` (if given) gets
/// the bound addresses once everything is bound and serving.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    ready: Option<tokio::sync::oneshot::Sender<Bound>>,
) -> Result<(), AppError> {
    let Some(store) = open_store(&config, &shutdown).await? else {
        return Ok(()); // stopped while standing by
    };
    let (tokens, new_token_file) = Tokens::load_or_bootstrap(&store, &config.data_dir).await?;
    let clients = Clients::new(
        &config.dhcp.reservations,
        store.load_leases().await?,
        store.known_macs().await?,
    );
    if let Some(d6) = &config.dhcp6 {
        let mut table = crate::clients::leases6::Lease6Table::new(
            d6.pools.clone(),
            d6.link_pool,
            &d6.reservations,
        );
        for entry in store.load_leases6().await? {
            table.restore(entry);
        }
        clients.set_pool6(table);
        for r in &d6.reservations {
            clients.admit(r.mac);
        }
    }
    let paths = Arc::new(Paths::resolve(&config.dhcp.interfaces).map_err(AppError::Setup)?);
    let sockets = bind_all(&config).await?;
    let bound = bound_addresses(&sockets)?;
    let (core, writer, reboots) = Core::start(&config, store, clients, &bound).await?;
    core.register().await?;

    let mut services = Vec::new();
    let mut tasks = JoinSet::new();
    let Sockets {
        http,
        http6,
        nbd,
        packets,
    } = sockets;
    if let (Some(listener), Some(settings)) = (nbd, config.nbd) {
        services.push(format!("nbd on {}", bound.nbd.expect("bound")));
        let readers = crate::root_reads::RootReaders {
            inventory: core.inventory.clone(),
            bindings: core.bindings.clone(),
            ledger: core.ledger.clone(),
        };
        let exports = Arc::new(crate::nbd::Exports {
            images: core.images.clone(),
            metrics: core.metrics.clone(),
            readers: Some(Arc::new(readers)),
        });
        tasks.spawn(crate::nbd::serve(
            listener,
            exports,
            settings,
            shutdown.clone(),
        ));
    }
    spawn_packet_services(
        &mut tasks,
        &mut services,
        &core,
        &config,
        paths,
        packets,
        &shutdown,
    )?;
    spawn_clock_tasks(
        &mut tasks,
        &mut services,
        &core,
        &config,
        reboots,
        &shutdown,
    );
    services.push(format!("http on {}", bound.http));
    if let Some(addr) = bound.http6 {
        services.push(format!("http on {addr}"));
    }
    let app = http_app(&core, &config, tokens, &services, bound.http, &shutdown)?;
    if let Some(listener) = http6 {
        tasks.spawn(crate::http::run(
            listener,
            app.clone(),
            config.http_limits,
            core.metrics.clone(),
            shutdown.clone(),
        ));
    }
    tasks.spawn(crate::http::run(
        http,
        app,
        config.http_limits,
        core.metrics.clone(),
        shutdown.clone(),
    ));

    banner(
        &config,
        &core.server_id,
        &services,
        new_token_file.as_deref(),
    );
    if let Some(ready) = ready {
        let _ = ready.send(bound);
    }
    let failure = wait_for_services(tasks, &shutdown).await;
    core.stop(writer).await;
    match failure {
        Some(e) => Err(AppError::Setup(e)),
        None => Ok(()),
    }
}

/// The store to serve from: the configured one, or, for a standby whose
/// database another server serves from, once this server takes it over
/// (`None`: shut down while waiting). A standby binds every socket once
/// before it waits, so a port it could not take fails now, not at the
/// takeover.
async fn open_store(
    config: &Config,
    shutdown: &CancellationToken,
) -> Result<Option<Store>, AppError> {
    if let (Some(url), true) = (&config.store_url, config.store_shared) {
        crate::store::private_dir(&config.data_dir).map_err(AppError::Setup)?;
        return Ok(Some(
            Store::open_shared(url, config.server_name.as_deref()).await?,
        ));
    }
    let url = match (&config.store_url, config.store_standby) {
        (Some(url), true) => url,
        (url, _) => {
            return Ok(Some(
                Store::connect(url.as_deref(), &config.data_dir).await?,
            ))
        }
    };
    crate::store::private_dir(&config.data_dir).map_err(AppError::Setup)?;
    let standby = crate::store::standby::Standby::connect(url).await?;
    if let Some(store) = standby.try_take().await? {
        return Ok(Some(store));
    }
    let probe = bind_all(config).await?;
    let bound = bound_addresses(&probe)?;
    drop(probe);
    let me = crate::standby::Me {
        id: config.server_id(bound.http.port()),
        http: format!("http://{}:{}", config.server_ip, bound.http.port()),
    };
    println!(
        "ironboot {} standing by as {} (store: {}): another server serves from this \
         database; this one takes over when its claim is released",
        env!("CARGO_PKG_VERSION"),
        me.id,
        crate::config::without_password(url)
    );
    let images = Arc::new(ImageStore::open(&config.data_dir.join("images"))?);
    Ok(crate::standby::wait(standby, me, images, shutdown).await?)
}

/// Where each bound socket ended up.
fn bound_addresses(sockets: &Sockets) -> Result<Bound, AppError> {
    let local = |s: &tokio::net::UdpSocket| s.local_addr().ok();
    let dhcp_on = |port: Port| {
        sockets
            .packets
            .dhcp
            .iter()
            .find(|(p, _)| *p == port)
            .and_then(|(_, s)| local(s))
    };
    Ok(Bound {
        http: sockets.http.local_addr().map_err(AppError::Setup)?,
        tftp: sockets.packets.tftp.as_ref().and_then(local),
        dhcp: dhcp_on(Port::Dhcp),
        proxy: dhcp_on(Port::Proxy),
        nbd: sockets.nbd.as_ref().and_then(|l| l.local_addr().ok()),
        dhcp6: sockets.packets.dhcp6.as_ref().and_then(|(s, _)| local(s)),
        http6: sockets.http6.as_ref().and_then(|l| l.local_addr().ok()),
        tftp6: sockets.packets.tftp6.as_ref().and_then(local),
    })
}

/// What the services share: the store and its ledger, the fleet, the
/// clients DHCP knows, and the boot path's pieces.
struct Core {
    store: Store,
    images: Arc<ImageStore>,
    renderer: Arc<Renderer>,
    metrics: Arc<Metrics>,
    ledger: Ledger,
    clients: Clients,
    inventory: Arc<Inventory>,
    bootfiles: Arc<Bootfiles>,
    targets: BootTargets,
    dhcp: Arc<Dhcp>,
    bindings: Arc<crate::binding::Bindings>,
    netboot: Arc<crate::netboot::Netboot>,
    /// Power and boot control through BMCs (rollouts and the API).
    bmcs: crate::bmc::service::Bmcs,
    /// `http://SERVER:PORT`, as machines reach it.
    server_url: String,
    /// `http://[SERVER]:PORT` for IPv6 clients, and DHCPv6 (`[dhcp6]` on).
    server_url6: Option<String>,
    dhcp6: Option<Arc<crate::dhcp6::handler::Dhcp6>>,
    /// This server's row in `servers` (`Config::server_id`).
    server_id: String,
    /// With `dhcp.peer`: this server's side of the HA pair.
    pair: Option<Arc<crate::dhcp::pair::Pair>>,
}

type Reboots = tokio::sync::mpsc::Receiver<crate::rollout::hook::Job>;

impl Core {
    /// Loads the fleet and starts the ledger writer (returned: it is the
    /// last task to stop), wiring DHCP, binding and the boot path to the
    /// same clients and inventory.
    async fn start(
        config: &Config,
        store: Store,
        clients: Clients,
        bound: &Bound,
    ) -> Result<(Self, tokio::task::JoinHandle<()>, Reboots), AppError> {
        let http_addr = bound.http;
        let images = Arc::new(ImageStore::open(&config.data_dir.join("images"))?);
        let renderer = Arc::new(
            match &config.templates_dir {
                Some(dir) => Renderer::from_dir(dir)?,
                None => Renderer::embedded()?,
            }
            .with_nbd(bound.nbd),
        );
        let metrics = Arc::new(Metrics::default());
        let (ledger, ledger_rx) = Ledger::new(65_536, metrics.clone());
        let writer = tokio::spawn(crate::store::writer::run(store.clone(), ledger_rx));
        let mut inventory = Inventory::load(store.clone(), ledger.clone())
            .await?
            .with_token_ttl(config.boot.token_ttl)
            .with_clients(clients.clone());
        if store.is_shared() {
            inventory.share(&config.server_id(http_addr.port())).await?;
        }
        inventory.apply_reservations(&config.dhcp.reservations);
        // Machines a rollout moves are handed to the reboot hook's task.
        let (reboot_tx, reboots) = tokio::sync::mpsc::channel(4096);
        inventory.configure_rollouts(config.rollout.watchdog, reboot_tx);
        let inventory = Arc::new(inventory);

        let mut bootfiles = Bootfiles::new(
            config
                .tftp
                .as_ref()
                .map(|t| t.server.root.clone())
                .unwrap_or_else(|| "/usr/lib/ipxe".into()),
            config.dhcp.bootfiles.names(),
        );
        if let Some(dir) = &config.dhcp.bootfiles.grub_dir {
            bootfiles.add(dir.clone(), config.dhcp.bootfiles.grub_names());
        }
        for (name, path) in config.dhcp.bootfiles.signed_files() {
            if !path.is_file() {
                info!(file = %path.display(), served_as = name, "Secure Boot loader absent: machines set to loader shim cannot boot (apt-get install shim-signed grub-efi-amd64-signed)");
            }
            bootfiles.add_as(name, path.to_path_buf());
        }
        let bootfiles = Arc::new(bootfiles);
        let targets = BootTargets {
            files: config.dhcp.bootfiles.clone(),
            server_ip: config.server_ip.into(),
            http_port: http_addr.port(),
        };
        let mut dhcp = Dhcp::new(
            config.dhcp.clone(),
            targets.clone(),
            clients.clone(),
            ledger.clone(),
            metrics.clone(),
        )
        .with_loader_settings(inventory.clone());
        let pair = match (&config.dhcp.peer, &config.server_name) {
            (Some(peer), Some(me)) => {
                clients.pool().split_in_halves();
                let pair = Arc::new(crate::dhcp::pair::Pair::new(me, peer));
                dhcp = dhcp.with_pair(pair.clone());
                Some(pair)
            }
            _ => None,
        };
        let dhcp = Arc::new(dhcp);
        let server_url = format!("http://{}:{}", config.server_ip, http_addr.port());
        // IPv6 clients are told the IPv6 listener's port (the same as
        // IPv4's unless `dhcp6.http_listen` says otherwise).
        let http6_port = bound.http6.map_or(http_addr.port(), |a| a.port());
        let server_url6 = config
            .dhcp6
            .as_ref()
            .map(|d6| format!("http://[{}]:{http6_port}", d6.server_ip));
        let dhcp6 = config.dhcp6.as_ref().map(|d6| {
            let newcomers = crate::dhcp::newcomers::Newcomers::new(
                config.dhcp.new_clients_per_minute,
                config.dhcp.new_clients_per_minute_total,
            );
            Arc::new(
                crate::dhcp6::handler::Dhcp6::new(
                    d6.clone(),
                    &BootTargets {
                        http_port: http6_port,
                        ..targets.clone()
                    },
                    clients.clone(),
                    newcomers,
                    ledger.clone(),
                    metrics.clone(),
                    server_duid(d6),
                )
                .with_loader_settings(inventory.clone()),
            )
        });
        if config.boot.binding == crate::binding::Mode::Off {
            tracing::warn!(
                "boot.binding = \"off\": any host on the boot network can fetch any machine's \
                 script, config and token, and confirm its boots; for labs only"
            );
        }
        let bindings = Arc::new(crate::binding::Bindings::new(
            config.boot.binding,
            Some(clients.clone()),
            config
                .dhcp
                .reservations
                .iter()
                .map(|r| (std::net::IpAddr::V4(r.ip), r.mac))
                .chain(
                    config
                        .dhcp6
                        .iter()
                        .flat_map(|d6| &d6.reservations)
                        .map(|r| (std::net::IpAddr::V6(r.ip), r.mac)),
                ),
            boot_interfaces(config),
            metrics.clone(),
        ));
        let netboot = Arc::new(crate::netboot::Netboot::new(
            bootfiles.clone(),
            inventory.clone(),
            renderer.clone(),
            images.clone(),
            ledger.clone(),
            server_url.clone(),
            bindings.clone(),
            clients.clone(),
        ));
        let sealer = crate::bmc::seal::Sealer::open_or_create(&config.data_dir)?;
        let bmcs = crate::bmc::service::Bmcs::new(
            store.clone(),
            sealer,
            ledger.clone(),
            config.bmc.clone(),
        )
        .map_err(|e| {
            AppError::Setup(std::io::Error::other(format!("HTTP client for BMCs: {e}")))
        })?;
        let core = Core {
            bmcs,
            store,
            images,
            renderer,
            metrics,
            ledger,
            clients,
            inventory,
            bootfiles,
            targets,
            dhcp,
            bindings,
            netboot,
            server_url,
            server_url6,
            dhcp6,
            server_id: config.server_id(http_addr.port()),
            pair,
        };
        Ok((core, writer, reboots))
    }

    /// Registers this server in `servers`: primary, no peer (one server
    /// per database until the HA pair exists), started now.
    async fn register(&self) -> Result<(), AppError> {
        let start = crate::store::servers::ServerStart {
            id: &self.server_id,
            role: role_of(&self.store),
            peer: None,
            version: env!("CARGO_PKG_VERSION"),
            http: &self.server_url,
            pid: std::process::id(),
        };
        self.store.register_server(&start, now_ms()).await?;
        info!(id = %self.server_id, "registered in servers");
        Ok(())
    }

    /// After every service stopped: this server's row says it stopped, the
    /// ledger handles drop, the writer commits what is queued, then the
    /// store closes.
    async fn stop(self, writer: tokio::task::JoinHandle<()>) {
        let store = self.store.clone();
        if let Err(e) = store.server_stopped(&self.server_id, now_ms()).await {
            tracing::warn!(error = %e, id = %self.server_id, "could not record the stop in servers");
        }
        drop(self);
        if tokio::time::timeout(Duration::from_secs(10), writer)
            .await
            .is_err()
        {
            error!("ledger writer did not finish within 10 s");
        }
        store.close().await;
        info!("stopped");
    }
}

type Tasks = JoinSet<std::io::Result<()>>;

/// DHCP on each of its sockets, router advertisements, TFTP.
fn spawn_packet_services(
    tasks: &mut Tasks,
    services: &mut Vec<String>,
    core: &Core,
    config: &Config,
    paths: Arc<Paths>,
    PacketSockets {
        tftp,
        tftp6,
        dhcp,
        dhcp6,
        ra,
    }: PacketSockets,
    shutdown: &CancellationToken,
) -> Result<(), AppError> {
    for (port, socket) in dhcp {
        let addr = socket.local_addr().map_err(AppError::Setup)?;
        services.push(format!("dhcp {:?} mode on {addr}", config.dhcp.mode).to_lowercase());
        tasks.spawn(crate::dhcp::server::run(
            socket,
            port,
            core.dhcp.clone(),
            paths.clone(),
            core.metrics.clone(),
            shutdown.clone(),
        ));
    }
    if let (Some((socket, served)), Some(dhcp6)) = (dhcp6, &core.dhcp6) {
        let addr = socket.local_addr().map_err(AppError::Setup)?;
        services.push(format!("dhcpv6 on {addr}"));
        tasks.spawn(crate::dhcp6::server::run(
            socket,
            served,
            dhcp6.clone(),
            core.metrics.clone(),
            shutdown.clone(),
        ));
    }
    for (name, sock, index, advert) in ra {
        let what = if advert.managed { " (managed)" } else { "" };
        services.push(format!("ipv6 router advertisement on {name}{what}"));
        tasks.spawn(crate::dhcp::ra::run(
            name,
            sock,
            index,
            advert,
            core.metrics.clone(),
            shutdown.clone(),
        ));
    }
    if let (Some(socket), Some(t)) = (tftp, &config.tftp) {
        let addr = socket.local_addr().map_err(AppError::Setup)?;
        services.push(format!("tftp on {addr} from {}", t.server.root.display()));
        let state = Arc::new(TftpState {
            config: t.server.clone(),
            generated: Some(core.netboot.clone()),
            ledger: core.ledger.clone(),
            metrics: core.metrics.clone(),
            clients: core.clients.clone(),
        });
        if let Some(socket6) = tftp6 {
            let addr = socket6.local_addr().map_err(AppError::Setup)?;
            services.push(format!("tftp on {addr}"));
            tasks.spawn(crate::tftp::run(socket6, state.clone(), shutdown.clone()));
        }
        tasks.spawn(crate::tftp::run(socket, state, shutdown.clone()));
    }
    Ok(())
}

/// Runs `work` every `every` until shutdown.
fn every(
    tasks: &mut Tasks,
    every: Duration,
    shutdown: &CancellationToken,
    mut work: impl FnMut() + Send + 'static,
) {
    let shutdown = shutdown.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tick.tick() => work(),
            }
        }
    });
}

/// This server's heartbeat in `servers`, every `HEARTBEAT_EVERY` until
/// shutdown. A failed write is logged and tried again at the next beat:
/// a database that cannot take it shows elsewhere first, and the boot path
/// does not depend on it.
async fn heartbeat(
    store: Store,
    id: String,
    partner: Option<String>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut tick = tokio::time::interval(crate::store::servers::HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        if let Err(e) = store
            .server_heartbeat(&id, role_of(&store), partner.as_deref(), now_ms())
            .await
        {
            tracing::warn!(error = %e, id = %id, "server heartbeat not written");
        }
    }
}

/// What this server is to the others on its database: the primary when it
/// serves it alone; with `[store] shared`, the leader or a member.
fn role_of(store: &Store) -> crate::store::servers::ServerRole {
    use crate::store::servers::ServerRole;
    match (store.is_shared(), store.leads()) {
        (false, _) => ServerRole::Primary,
        (true, true) => ServerRole::Leader,
        (true, false) => ServerRole::Member,
    }
}

/// How often a member of a shared database tries to take the lead.
const LEAD_TRY_EVERY: Duration = Duration::from_secs(1);

/// How long changes announced together are gathered before one reload:
/// a burst of commits (a boot storm's ledger batches) costs one read.
const RELOAD_GATHER: Duration = Duration::from_millis(100);

/// With `[store] shared`: tries the leader lock every [`LEAD_TRY_EVERY`]
/// until it holds it, then takes the fleet over (the lead lasts as long
/// as the server's claim: `watch_claim` stops a server that loses it).
async fn lead_when_free(
    store: Store,
    inventory: Arc<Inventory>,
    id: String,
    partner: Option<String>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut tick = tokio::time::interval(LEAD_TRY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        match store.try_lead(CLAIM_CHECK_WITHIN).await {
            Ok(false) => continue,
            Ok(true) => {}
            Err(e) => {
                warn!(error = %e, "could not ask for the lead");
                continue;
            }
        }
        // Held: no other server leads. Until the fleet is restored, this
        // server's engine still only decides.
        inventory
            .lead()
            .await
            .map_err(|e| std::io::Error::other(format!("taking the lead: {e}")))?;
        if let Err(e) = store
            .server_heartbeat(&id, role_of(&store), partner.as_deref(), now_ms())
            .await
        {
            warn!(error = %e, "heartbeat as leader not written");
        }
        info!(id = %id, "leading the fleet: rollouts, deadlines, reboots and retention run here");
        return Ok(());
    }
}

/// With `[store] shared`: reloads the inventory when another server
/// commits a change to what the boot path reads, and on the leader feeds
/// the inbox to the engine. Changes announced within [`RELOAD_GATHER`] of
/// each other make one reload; a lost notification connection, a full one.
async fn follow_changes(
    store: Store,
    inventory: Arc<Inventory>,
    generations: Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use crate::store::shared::Change;
    let Some(mut changes) = store.changes().await.map_err(std::io::Error::other)? else {
        return Ok(());
    };
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            c = changes.next() => c,
        };
        let mut seen = vec![first];
        let gather = tokio::time::sleep(RELOAD_GATHER);
        tokio::pin!(gather);
        loop {
            tokio::select! {
                _ = &mut gather => break,
                c = changes.next() => seen.push(c),
            }
        }
        let inbox = seen.iter().any(|c| match c {
            Change::Missed => true,
            Change::Table { table, .. } => table == "fleet_inbox",
        });
        // This server's own commits are in its memory already.
        let view = seen.iter().any(|c| match c {
            Change::Missed => true,
            Change::Table { table, mine } => !mine && table != "fleet_inbox",
        });
        if inbox {
            loop {
                match inventory.drain_inbox().await {
                    Ok(n) if n > 0 => continue,
                    Ok(_) => break,
                    Err(e) => {
                        warn!(error = %e, "inbox not taken; trying at the next change or tick");
                        break;
                    }
                }
            }
        }
        // Another server imported: copy its artifacts now.
        if seen.iter().any(|c| match c {
            Change::Missed => true,
            Change::Table { table, mine } => !mine && table == "generations",
        }) {
            generations.notify_one();
        }
        if view {
            if let Err(e) = inventory.reload().await {
                warn!(error = %e, "inventory not reloaded; trying at the next change");
            }
        }
    }
}

/// How often a server on PostgreSQL checks it still holds its claim on
/// the database, how long one check may take, and how many checks in a
/// row may go unanswered: a server that lost its claim (its connection
/// closed, or silent for [`CLAIM_CHECK_EVERY`] + [`CLAIM_MISSES`] ×
/// [`CLAIM_CHECK_WITHIN`], about 5 s) stops serving, before the database
/// notices the silence (about 9 s, see `store::CLAIM_KEEPALIVE`) and a
/// standby can take over.
const CLAIM_CHECK_EVERY: Duration = Duration::from_secs(1);
const CLAIM_CHECK_WITHIN: Duration = Duration::from_secs(2);
const CLAIM_MISSES: u32 = 2;

/// Stops the server (an error: the process exits non-zero, and a
/// supervisor restarts it, as a standby if so configured) when its claim
/// on the database is lost, since a standby may be serving already.
async fn watch_claim(store: Store, shutdown: CancellationToken) -> std::io::Result<()> {
    let mut tick = tokio::time::interval(CLAIM_CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut misses = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        match store.check_claim(CLAIM_CHECK_WITHIN).await {
            Ok(()) => misses = 0,
            Err(e) => {
                misses += 1;
                warn!(error = %e, misses, "claim on the database not confirmed");
                let lost = !matches!(e, StoreError::ClaimUnanswered(_));
                if lost || misses >= CLAIM_MISSES {
                    error!(error = %e, "lost the claim on the database: stopping, a standby may serve now");
                    return Err(std::io::Error::other(e.to_string()));
                }
            }
        }
    }
}

/// What runs on the clock: offers expiring, rollout gates and watchdog
/// timeouts, this server's heartbeat, forgetting never-booted machines,
/// WAL checkpoints, event retention, and the reboot hook's queue.
fn spawn_clock_tasks(
    tasks: &mut Tasks,
    services: &mut Vec<String>,
    core: &Core,
    config: &Config,
    reboots: Reboots,
    shutdown: &CancellationToken,
) {
    let dhcp = core.dhcp.clone();
    every(tasks, Duration::from_secs(5), shutdown, move || {
        dhcp.expire_offers(now_ms());
    });
    let inventory = core.inventory.clone();
    every(tasks, ROLLOUT_TICK, shutdown, move || {
        inventory.tick_rollouts(now_ms())
    });
    let partner = core.pair.as_ref().map(|p| p.peer().to_string());
    if let Some(pair) = &core.pair {
        services.push(format!("HA pair with {}", pair.peer()));
        tasks.spawn(crate::dhcp::pair::watch(
            pair.clone(),
            core.store.clone(),
            core.clients.clone(),
            shutdown.clone(),
        ));
    }
    if core.store.is_shared() {
        tasks.spawn(lead_when_free(
            core.store.clone(),
            core.inventory.clone(),
            core.server_id.clone(),
            partner.clone(),
            shutdown.clone(),
        ));
        let generations = Arc::new(tokio::sync::Notify::new());
        tasks.spawn(follow_changes(
            core.store.clone(),
            core.inventory.clone(),
            generations.clone(),
            shutdown.clone(),
        ));
        if config.store_copy_images {
            tasks.spawn(crate::standby::copy_from_peers(
                core.store.clone(),
                core.server_id.clone(),
                core.images.clone(),
                generations,
                shutdown.clone(),
            ));
        }
        // The inbox is also read on the clock: a notification lost while
        // the leader took over is not an event lost.
        let inventory = core.inventory.clone();
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(ROLLOUT_TICK);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tick.tick() => {}
                }
                if let Err(e) = inventory.drain_inbox().await {
                    warn!(error = %e, "inbox not taken");
                }
            }
        });
    }
    if let Some(after) = config.dhcp.forget_unbooted_after {
        tasks.spawn(forget_unbooted(
            core.inventory.clone(),
            config.dhcp.reservations.iter().map(|r| r.mac).collect(),
            after,
            shutdown.clone(),
        ));
    }
    tasks.spawn(heartbeat(
        core.store.clone(),
        core.server_id.clone(),
        partner,
        shutdown.clone(),
    ));
    if core.store.backend() == crate::store::Backend::Postgres {
        tasks.spawn(watch_claim(core.store.clone(), shutdown.clone()));
    }
    let (store, stop) = (core.store.clone(), shutdown.clone());
    tasks.spawn(async move {
        crate::store::checkpoint::run(store, stop).await;
        Ok(())
    });
    let (store, retention, stop) = (core.store.clone(), config.retention, shutdown.clone());
    tasks.spawn(async move {
        crate::store::retention::run(store, retention, stop).await;
        Ok(())
    });
    if config.rollout.hook.is_configured() {
        services.push("reboot hook for rollouts".into());
    }
    // Reboots a BMC could not do go back to their rollout.
    let (failed_tx, mut failed) = tokio::sync::mpsc::channel(1024);
    tasks.spawn(crate::rollout::hook::run(
        config.rollout.hook.clone(),
        core.bmcs.clone(),
        reboots,
        failed_tx,
        core.ledger.clone(),
        shutdown.clone(),
    ));
    let inventory = core.inventory.clone();
    tasks.spawn(async move {
        while let Some((reboot, error)) = failed.recv().await {
            inventory.reboot_failed(&reboot, &error, now_ms());
        }
        Ok(())
    });
}

/// Every HTTP route: health and metrics, the boot path, artifacts, the
/// API, and the switches' endpoints.
fn http_app(
    core: &Core,
    config: &Config,
    tokens: Tokens,
    services: &[String],
    http_addr: SocketAddr,
    shutdown: &CancellationToken,
) -> Result<axum::Router, AppError> {
    let mut boot_state = BootState::new(
        core.inventory.clone(),
        core.renderer.clone(),
        core.ledger.clone(),
        core.server_url.clone(),
        core.bindings.clone(),
        core.metrics.clone(),
    )?
    .with_artifact_caches(config.dhcp.artifact_caches.clone());
    if let Some(server6) = &core.server_url6 {
        boot_state = boot_state.with_ipv6(server6.clone())?;
    }
    let explainer = Arc::new(crate::explain::Explainer {
        inventory: core.inventory.clone(),
        renderer: core.renderer.clone(),
        server: format!("http://{}:{}", config.server_ip, http_addr.port()),
        targets: core.targets.clone(),
        mode: config.dhcp.mode,
        serve_all: config.dhcp.serve_all,
        clients: Some(core.clients.clone()),
    });
    let fetcher = crate::images::fetch::Fetcher::new(config.fetch.clone()).map_err(|e| {
        AppError::Setup(std::io::Error::other(format!(
            "HTTP client for server-side fetches: {e}"
        )))
    })?;
    let tokens = Arc::new(tokens);
    let api_state = ApiState {
        inventory: core.inventory.clone(),
        images: core.images.clone(),
        tokens: tokens.clone(),
        store: core.store.clone(),
        edits: Default::default(),
        live: core.ledger.live(),
        shutdown: shutdown.clone(),
        explainer,
        dhcp: Some(core.dhcp.clone()),
        fetcher: Arc::new(fetcher),
        bmcs: Some(core.bmcs.clone()),
        server_id: Some(core.server_id.clone()),
    };
    let services = Arc::new(services.to_vec());
    let api = crate::http::api::router(api_state);
    let ui = crate::http::ui::UiState::new(api.clone(), tokens, services.clone());
    let http_state = HttpState {
        metrics: core.metrics.clone(),
        services,
        dhcp: Some(core.dhcp.clone()),
        store: Some(core.store.clone()),
    };
    Ok(crate::http::router(http_state, core.bootfiles.clone())
        .merge(crate::http::uki::router(crate::http::uki::UkiState {
            boot: boot_state.clone(),
            netboot: core.netboot.clone(),
        }))
        .merge(crate::http::boot::router(boot_state))
        .merge(crate::http::artifacts::router(
            core.images.clone(),
            Some(artifact_hook(&core.inventory, &core.ledger, &core.metrics)),
        ))
        .merge(api)
        .merge(crate::http::ui::router(ui))
        .merge(crate::http::switch::router(core.netboot.clone())))
}

/// Waits for every service. A service that fails takes the process down
/// with it: an operator should see a dead server, not one that silently
/// stopped answering DHCP. Returns the first failure.
async fn wait_for_services(
    mut tasks: Tasks,
    shutdown: &CancellationToken,
) -> Option<std::io::Error> {
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        let result = joined.unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        if let Err(e) = result {
            error!(error = %e, "service failed; shutting down");
            failure.get_or_insert(e);
            shutdown.cancel();
        }
    }
    failure
}

/// How often never-booted machines are looked for (`inventory::forget`).
const FORGET_EVERY: Duration = Duration::from_secs(600);

/// Removes machines never booted and untouched by an operator once unseen
/// for `after` (see `inventory/forget.rs`).
async fn forget_unbooted(
    inventory: Arc<Inventory>,
    reserved: std::collections::HashSet<crate::domain::MacAddr>,
    after: Duration,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let after_ms = after.as_millis().min(i64::MAX as u128) as i64;
    let every = FORGET_EVERY.min(after / 2).max(Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        if !inventory.leads() {
            continue; // with `[store] shared`, the leader forgets
        }
        let now = now_ms();
        match inventory
            .forget_unbooted(now - after_ms, now, &reserved)
            .await
        {
            Ok(macs) if macs.is_empty() => {}
            Ok(macs) => {
                tracing::info!(
                    forgotten = macs.len(),
                    "machines never booted and unseen for dhcp.forget_unbooted_after removed"
                );
            }
            Err(e) => tracing::error!(error = %e, "forgetting never-booted machines"),
        }
    }
}

/// Records each artifact download as a step of the boot its client opened
/// last (artifact URLs carry no token).
fn artifact_hook(
    inventory: &Arc<Inventory>,
    ledger: &Ledger,
    metrics: &Arc<Metrics>,
) -> crate::http::artifacts::Hook {
    let (inventory, ledger, metrics) = (inventory.clone(), ledger.clone(), metrics.clone());
    Arc::new(move |served: crate::http::artifacts::ServedArtifact| {
        Metrics::inc(&metrics.http_artifacts);
        Metrics::add(&metrics.http_artifact_bytes, served.bytes);
        let Some(client) = served.client else { return };
        let detail = serde_json::json!({ "sha256": served.digest.to_string(), "completed": served.completed });
        match inventory.boot_by_ip(client.ip(), &served.digest) {
            Some((boot, mac, name)) => {
                let mut detail = detail;
                detail["name"] = serde_json::json!(name);
                ledger.boot_event(
                    boot,
                    mac,
                    Some(client.ip()),
                    "boot.artifact",
                    detail,
                    Some(served.bytes),
                );
            }
            None => ledger.event(
                None,
                Some(client.ip()),
                "boot.artifact",
                detail,
                Some(served.bytes),
            ),
        }
    })
}

/// Prints what is served and where. Written with errors ignored: a server
/// whose stdout was closed (a supervisor that stopped reading) keeps serving;
/// `println!` would panic on the broken pipe.
fn banner(
    config: &Config,
    server_id: &str,
    services: &[String],
    new_token_file: Option<&std::path::Path>,
) {
    use std::io::Write;
    let mut text = format!(
        "ironboot {} serving (config: {})\n",
        env!("CARGO_PKG_VERSION"),
        config.source
    );
    text += &format!("  server ip:  {} (told to clients)\n", config.server_ip);
    text += &format!("  server id:  {server_id} (ironboot status)\n");
    match &config.store_url {
        Some(url) => {
            text += &format!("  data:       {}\n", config.data_dir.display());
            text += &format!("  store:      {}\n", crate::config::without_password(url));
        }
        None => text += &format!("  data:       {}\n", config.database_path().display()),
    }
    for s in services {
        text += &format!("  {s}\n");
    }
    text += &format!(
        "  boot script for iPXE clients: {}{}\n",
        config.http_base(),
        config.dhcp.bootfiles.ipxe_script
    );
    text += &format!("  API:        {}/api/v1/\n", config.http_base());
    text += &format!(
        "  dashboard:  {}/ui/ (sign in with an API token)\n",
        config.http_base()
    );
    if let Some(path) = new_token_file {
        text += &format!(
            "  first start: admin API token written to {} (mode 0600)\n",
            path.display()
        );
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// This server's DHCPv6 identifier: DUID-LL of the first DHCPv6
/// interface's hardware address (stable while the NIC is), else DUID-EN
/// (RFC 8415 §11.3, the documentation enterprise number of RFC 5612) over
/// the server's IPv6 address.
fn server_duid(d6: &crate::config::Dhcp6Settings) -> Vec<u8> {
    match d6
        .interfaces
        .first()
        .and_then(|name| crate::netif::hardware_address(name))
    {
        Some(mac) => [&[0, 3, 0, 1][..], &mac.0].concat(),
        None => [&[0, 2][..], &32473u32.to_be_bytes(), &d6.server_ip.octets()].concat(),
    }
}

/// The interfaces whose neighbour entries are binding evidence: DHCP's and
/// DHCPv6's (empty: every interface, as DHCP then serves all).
fn boot_interfaces(config: &Config) -> Vec<String> {
    let v4 = &config.dhcp.interfaces;
    if config.dhcp.mode != DhcpMode::Off && v4.is_empty() {
        return Vec::new();
    }
    let mut all = if config.dhcp.mode == DhcpMode::Off {
        Vec::new()
    } else {
        v4.clone()
    };
    for name in config.dhcp6.iter().flat_map(|d6| &d6.interfaces) {
        if !all.contains(name) {
            all.push(name.clone());
        }
    }
    all
}
