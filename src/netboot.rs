//! Boots that do not go through iPXE: GRUB netboot (arm64, or by setting),
//! ONIE installers and network-OS provisioning scripts for switches.
//!
//! [`Netboot`] answers both TFTP (as its [`GeneratedFiles`]) and the HTTP
//! switch routes, so every name a client may ask for resolves to the same
//! choice whichever protocol it uses:
//! - `grub/grub.cfg` (the machine known by its leased address, else a
//!   generic config that chains by `${net_default_mac}`) and
//!   `grub/grub.cfg-01-<mac>`: the per-machine GRUB config, rendered by the
//!   same templates and context as the iPXE script;
//! - `artifacts/sha256/<hex>`: an image artifact, for GRUB (which has no
//!   HTTP) to load kernel and initrds by digest;
//! - ONIE's waterfall (`onie-installer…`, with a `<MAC>/` or hex-IP prefix):
//!   the installer of the switch's target generation;
//! - the configured loaders (`undionly.kpxe`, `grubnetaa64.efi`, …).
//!
//! Every decision is [`crate::boot`]'s and the inventory's; this module only
//! renders, records and names files. A rendered GRUB config is reused for a
//! few seconds, so a loader that fetches it twice opens one boot, not two.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tracing::{error, info};

use crate::binding::Bindings;
use crate::boot::loader::{self, Loader};
use crate::boot::onie::{self, OnieHeaders};
use crate::boot::{GenerationId, Target};
use crate::bootfiles::Bootfiles;
use crate::clients::Clients;
use crate::domain::{Cpu, MacAddr, MachineKind};
use crate::images::{Digest, ImageStore};
use crate::inventory::{BootPlan, Inventory, ScriptRequest, Stage};
use crate::ledger::Ledger;
use crate::render::context::{self, Bases};
use crate::render::{RenderError, Renderer, GRUB_CFG, ZTP_DIR};
use crate::tftp::GeneratedFiles;

/// How long a rendered GRUB config (or a chosen unified kernel image) is
/// served again to the same machine.
const GRUB_REUSE: Duration = Duration::from_secs(10);
/// How long the token of a unified kernel image's boot is kept for its
/// seed: the inventory's own limit (`[boot] token_ttl`) still applies.
const UKI_TOKEN_KEPT: Duration = Duration::from_secs(24 * 3600);

pub struct Netboot {
    pub bootfiles: Arc<Bootfiles>,
    pub inventory: Arc<Inventory>,
    pub renderer: Arc<Renderer>,
    pub images: Arc<ImageStore>,
    pub ledger: Ledger,
    /// `http://SERVER:PORT`, as machines reach it.
    pub server: String,
    /// Who is behind an address: a request acts for a machine only from an
    /// address bound to it (see [`crate::binding`]).
    pub bindings: Arc<Bindings>,
    /// What DHCP last saw of each client (GRUB asks without saying its
    /// architecture).
    pub clients: Clients,
    grub_cache: Mutex<HashMap<MacAddr, Rendered>>,
    /// The unified kernel image each machine was last served, with its
    /// boot's token: the image's sealed command line cannot carry the
    /// token, so the machine's seed (`/config/self/`) finds it here.
    uki_boots: Mutex<HashMap<MacAddr, ServedUki>>,
}

/// What a machine was last served through loader `uki`, and when.
struct ServedUki {
    at: Instant,
    /// The image chosen (reused for the GET after the firmware's HEAD);
    /// `None` for a token reissued after a restart.
    chosen: Option<Result<UkiImage, String>>,
    token: String,
}

/// A GRUB config and when it was rendered.
type Rendered = (Instant, Arc<[u8]>);

/// A boot that is one file of the target generation, streamed whole: a
/// switch's ONIE installer, or a unified kernel image.
#[derive(Debug, Clone)]
pub struct ImageFile {
    pub path: PathBuf,
    pub size: u64,
    pub name: String,
    pub boot_id: i64,
    pub generation: GenerationId,
}

/// An installer chosen for a switch.
pub type Installer = ImageFile;
/// A unified kernel image chosen for a machine with loader `uki`.
pub type UkiImage = ImageFile;

/// Renders a boot plan for `loader`: the machine's script or config, or the
/// "nothing to boot" one with its reason.
pub fn render_boot(
    plan: &BootPlan,
    bases: Bases<'_>,
    renderer: &Renderer,
    loader: Loader,
) -> Result<String, RenderError> {
    named_boot_script(plan, bases, renderer, loader).1
}

/// [`render_boot`], with the template it renders (or would have): the
/// machine's script when there is an image to boot, else the one that says
/// why not.
pub fn named_boot_script(
    plan: &BootPlan,
    bases: Bases<'_>,
    renderer: &Renderer,
    loader: Loader,
) -> (&'static str, Result<String, RenderError>) {
    let ctx = context::build(plan, bases, renderer);
    let bootable = match &ctx {
        Ok(ctx) => ctx.image.is_some(),
        Err(_) => plan.bootable(),
    };
    let Some(template) = crate::render::boot_template(loader, bootable) else {
        return (
            "-",
            Err(RenderError::Missing(format!(
                "a script for loader {loader}"
            ))),
        );
    };
    (
        template,
        ctx.and_then(|ctx| renderer.render(template, &ctx)),
    )
}

impl Netboot {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        bootfiles: Arc<Bootfiles>,
        inventory: Arc<Inventory>,
        renderer: Arc<Renderer>,
        images: Arc<ImageStore>,
        ledger: Ledger,
        server: String,
        bindings: Arc<Bindings>,
        clients: Clients,
    ) -> Self {
        Self {
            bootfiles,
            inventory,
            renderer,
            images,
            ledger,
            server,
            bindings,
            clients,
            grub_cache: Mutex::new(HashMap::new()),
            uki_boots: Mutex::new(HashMap::new()),
        }
    }

    /// The generic `/grub/grub.cfg`, for a machine not known by address.
    fn generic_grub(&self) -> Option<Arc<[u8]>> {
        #[derive(serde::Serialize)]
        struct Ctx {
            urls: Urls,
        }
        #[derive(serde::Serialize)]
        struct Urls {
            server: String,
            tftp: String,
        }
        let full = Ctx {
            urls: Urls {
                tftp: context::tftp_device(&self.server),
                server: self.server.clone(),
            },
        };
        match self.renderer.render(GRUB_CFG, &full) {
            Ok(text) => Some(Arc::from(text.into_bytes())),
            Err(e) => {
                error!(error = %e, "grub/grub.cfg failed to render");
                None
            }
        }
    }

    /// Whether a request from `ip` may act for `mac` (the binding rule;
    /// a refusal is counted).
    pub fn acts_for(&self, ip: IpAddr, mac: MacAddr) -> bool {
        self.bindings.check(ip, mac).allows()
    }

    /// The per-machine GRUB config: opens a boot (or reuses the one just
    /// opened for this machine). From an address not bound to `mac`: a
    /// config that says so, and nothing opened.
    pub fn grub_config(&self, mac: MacAddr, ip: IpAddr) -> Arc<[u8]> {
        if !self.acts_for(ip, mac) {
            return Arc::from(
                format!("echo 'ironboot: {ip} is not bound to {mac}; nothing to boot'\nsleep 10\nexit\n")
                    .into_bytes(),
            );
        }
        if let Some((at, bytes)) = self.grub_cache.lock().expect("grub cache").get(&mac) {
            if at.elapsed() < GRUB_REUSE {
                return bytes.clone();
            }
        }
        let arch = self.clients.seen(mac).and_then(|s| s.arch);
        // GRUB or the Secure Boot chain ending in GRUB: which one the
        // machine was sent (the config is the same).
        let loader = Some(loader::choose(arch, self.inventory.loader_settings(mac)).loader)
            .filter(|l| l.renders_grub())
            .unwrap_or(Loader::Grub);
        let req = efi_request(mac, ip, arch);
        let plan = self
            .inventory
            .begin_boot_as(mac, &req, "grub", None, Stage::Netboot);
        let detail = json!({ "target": plan.target, "identity": plan.identity, "group": plan.machine.group, "membership": plan.machine.membership.reason(), "loader": loader, "buildarch": req.buildarch });
        let text = match render_boot(&plan, Bases::server(&self.server), &self.renderer, loader) {
            Ok(text) => {
                info!(%mac, boot = plan.boot_id, target = ?plan.target, "GRUB config served");
                self.ledger.boot_event(
                    plan.boot_id,
                    mac,
                    Some(ip),
                    "boot.script",
                    detail,
                    Some(text.len() as u64),
                );
                text
            }
            Err(e) => {
                error!(%mac, error = %e, "GRUB config failed to render");
                self.ledger.boot_event(
                    plan.boot_id,
                    mac,
                    Some(ip),
                    "boot.render_failed",
                    json!({ "error": e.to_string(), "loader": loader }),
                    None,
                );
                format!("echo 'ironboot: the config for {mac} failed to render; see the server log'\nsleep 10\nexit\n")
            }
        };
        let bytes: Arc<[u8]> = Arc::from(text.into_bytes());
        let mut cache = self.grub_cache.lock().expect("grub cache");
        cache.retain(|_, (at, _)| at.elapsed() < GRUB_REUSE);
        cache.insert(mac, (Instant::now(), bytes.clone()));
        bytes
    }

    /// The file `pick` takes from the boot's generation, or why there is
    /// none (`wrong_kind` when its generation has no such file).
    fn image_file(
        &self,
        plan: &BootPlan,
        pick: impl for<'m> Fn(&'m crate::images::Manifest) -> Option<&'m crate::images::ArtifactRef>,
        wrong_kind: &str,
    ) -> Result<ImageFile, String> {
        let (generation, a) = planned_file(plan, pick, wrong_kind)?;
        Ok(ImageFile {
            path: self.images.artifact_path(&a.digest),
            size: a.size,
            name: a.name.clone(),
            boot_id: plan.boot_id,
            generation: generation.clone(),
        })
    }

    /// The unified kernel image a machine with loader `uki` boots: opens a
    /// boot (or reuses the one just opened: firmware asks with HEAD, then
    /// GET). `Err` says why there is none (the machine's target is not a
    /// unified kernel image, or there is nothing to boot). The caller has
    /// checked that `ip` acts for `mac`.
    pub fn uki_image(&self, mac: MacAddr, ip: IpAddr) -> Result<UkiImage, String> {
        if let Some(served) = self.uki_boots.lock().expect("uki boots").get(&mac) {
            match &served.chosen {
                Some(chosen) if served.at.elapsed() < GRUB_REUSE => return chosen.clone(),
                _ => {}
            }
        }
        let req = efi_request(mac, ip, self.clients.seen(mac).and_then(|s| s.arch));
        let plan = self
            .inventory
            .begin_boot_as(mac, &req, "uki", None, Stage::Netboot);
        let chosen = self.image_file(&plan, |m| m.uki.as_ref(), UKI_WRONG_KIND);
        let (step, detail) = match &chosen {
            Ok(u) => (
                "uki.image",
                json!({ "target": plan.target, "identity": plan.identity, "group": plan.machine.group,
                        "loader": Loader::Uki, "stream": u.generation.stream, "generation": u.generation.number }),
            ),
            Err(reason) => (
                "uki.nothing",
                json!({ "loader": Loader::Uki, "reason": reason }),
            ),
        };
        info!(%mac, boot = plan.boot_id, outcome = ?chosen.as_ref().map(|u| &u.generation), "unified kernel image request");
        let size = chosen.as_ref().ok().map(|u| u.size);
        self.ledger
            .boot_event(plan.boot_id, mac, Some(ip), step, detail, size);
        let mut served = self.uki_boots.lock().expect("uki boots");
        served.retain(|_, s| s.at.elapsed() < UKI_TOKEN_KEPT);
        served.insert(
            mac,
            ServedUki {
                at: Instant::now(),
                chosen: Some(chosen.clone()),
                token: plan.token.clone(),
            },
        );
        chosen
    }

    /// The token of the boot whose unified kernel image `mac` was last
    /// served, for its seed (`/config/self/`). After a restart this server
    /// no longer holds it: the boot, if still open, gets a new one (the
    /// old was never sent). `None` when `mac` has no such open boot.
    pub async fn uki_token(&self, mac: MacAddr) -> Option<String> {
        let held = {
            let served = self.uki_boots.lock().expect("uki boots");
            served
                .get(&mac)
                .filter(|s| !matches!(s.chosen, Some(Err(_))) && s.at.elapsed() < UKI_TOKEN_KEPT)
                .map(|s| s.token.clone())
        };
        if held.is_some() {
            return held;
        }
        let token = match self.inventory.reissue_token(mac, |m| m.uki.is_some()).await {
            Ok(token) => token?,
            Err(e) => {
                error!(%mac, error = %e, "a new token for the open boot could not be stored");
                return None;
            }
        };
        info!(%mac, "open boot of a unified kernel image given a new token (this server restarted since it was served)");
        self.uki_boots.lock().expect("uki boots").insert(
            mac,
            ServedUki {
                at: Instant::now(),
                chosen: None,
                token: token.clone(),
            },
        );
        Some(token)
    }

    /// The installer for a switch's ONIE: records what ONIE said (kind
    /// switch, serial, arch) and opens a boot of its target generation.
    /// `Err` carries why there is none (ONIE then tries its next name).
    pub fn onie_installer(
        &self,
        mac: MacAddr,
        headers: &OnieHeaders,
        ip: IpAddr,
        asked: &str,
    ) -> Result<Installer, String> {
        let req = ScriptRequest {
            mac: Some(mac),
            serial: headers.serial.clone(),
            buildarch: headers.arch.as_deref().and_then(|a| a.parse().ok()),
            ip: Some(ip),
            ..ScriptRequest::default()
        };
        let plan = self.inventory.begin_boot_as(
            mac,
            &req,
            "onie",
            Some(MachineKind::Switch),
            Stage::Netboot,
        );
        let chosen = self.image_file(
            &plan,
            |m| m.installer.as_ref(),
            "is a live OS image, not an ONIE installer",
        );
        let (step, detail) = match &chosen {
            Ok(i) => (
                "onie.installer",
                json!({ "asked": asked, "onie": headers, "stream": i.generation.stream,
                        "generation": i.generation.number, "name": i.name }),
            ),
            Err(reason) => (
                "onie.nothing",
                json!({ "asked": asked, "onie": headers, "reason": reason }),
            ),
        };
        info!(%mac, asked, outcome = ?chosen.as_ref().map(|i| &i.generation), "ONIE installer request");
        self.ledger
            .boot_event(plan.boot_id, mac, Some(ip), step, detail, None);
        chosen
    }

    /// A switch's provisioning file (`cumulus.sh`, `ztp.json`) from
    /// `boot-templates/ztp/`: opens a boot whose confirmation the script
    /// posts. `None` for a file there is no template for.
    pub fn ztp_file(
        &self,
        mac: MacAddr,
        file: &str,
        ip: IpAddr,
    ) -> Option<Result<String, RenderError>> {
        let template = format!("{ZTP_DIR}{file}");
        if !self.renderer.has(&template) {
            return None;
        }
        let req = ScriptRequest {
            mac: Some(mac),
            ip: Some(ip),
            ..ScriptRequest::default()
        };
        let plan = self.inventory.begin_boot_as(
            mac,
            &req,
            "ztp",
            Some(MachineKind::Switch),
            Stage::CarriesOn,
        );
        let rendered = context::build(&plan, Bases::server(&self.server), &self.renderer)
            .and_then(|ctx| self.renderer.render(&template, &ctx));
        let detail = match &rendered {
            Ok(_) => json!({ "file": file, "target": plan.target }),
            Err(e) => json!({ "file": file, "error": e.to_string() }),
        };
        let step = if rendered.is_ok() {
            "ztp.script"
        } else {
            "boot.render_failed"
        };
        let size = rendered.as_ref().ok().map(|t| t.len() as u64);
        self.ledger
            .boot_event(plan.boot_id, mac, Some(ip), step, detail, size);
        Some(rendered)
    }
}

/// Why a machine with loader `uki` gets no image when its generation is
/// not one (after the generation's name).
pub const UKI_WRONG_KIND: &str = "is not a unified kernel image: loader uki boots only those";

/// The file `pick` takes from a boot plan's generation, with that
/// generation's name; or why there is none (`wrong_kind` after the
/// generation's name when it has no such file). The boot path and
/// `explain` both ask here.
pub fn planned_file<'a>(
    plan: &'a BootPlan,
    pick: impl Fn(&'a crate::images::Manifest) -> Option<&'a crate::images::ArtifactRef>,
    wrong_kind: &str,
) -> Result<(&'a GenerationId, &'a crate::images::ArtifactRef), String> {
    match (&plan.target, &plan.generation) {
        (Target::Boot { .. }, Some(g)) => match pick(&g.manifest) {
            Some(a) => Ok((&g.id, a)),
            None => Err(format!("{} {wrong_kind}", g.id)),
        },
        (Target::Nothing { reason }, _) => Err(reason.clone()),
        (Target::Boot { generation, .. }, None) => Err(format!("{generation} disappeared")),
    }
}

/// A boot asked for by an EFI loader that says nothing of itself (GRUB, or
/// the firmware loading a unified kernel image): the CPU DHCP last saw.
fn efi_request(mac: MacAddr, ip: IpAddr, arch: Option<crate::domain::Arch>) -> ScriptRequest {
    ScriptRequest {
        mac: Some(mac),
        buildarch: arch.and_then(Cpu::of_firmware),
        platform: Some("efi".into()),
        ip: Some(ip),
        ..ScriptRequest::default()
    }
}

/// The machine a unified kernel image's path names: `uki/<mac>.efi`
/// (the MAC with `-` or `:`).
pub fn uki_mac(path: &str) -> Option<MacAddr> {
    path.strip_prefix("uki/")?
        .strip_suffix(".efi")?
        .replace('-', ":")
        .parse()
        .ok()
}

impl GeneratedFiles for Netboot {
    fn get(&self, path: &str, client: SocketAddr) -> Option<Arc<[u8]>> {
        if let Some(bytes) = self.bootfiles.get(path) {
            return Some(bytes);
        }
        let name = path.strip_prefix("grub/").unwrap_or(path);
        if name == "grub.cfg" {
            return match self.bindings.who(client.ip()) {
                Some((mac, _)) => Some(self.grub_config(mac, client.ip())),
                None => self.generic_grub(),
            };
        }
        let mac = name.strip_prefix("grub.cfg-01-")?.parse().ok()?;
        Some(self.grub_config(mac, client.ip()))
    }

    fn file(&self, path: &str, client: SocketAddr) -> Option<PathBuf> {
        if let Some(hex) = path.strip_prefix("artifacts/sha256/") {
            let digest: Digest = hex.parse().ok()?;
            let file = self.images.artifact_path(&digest);
            return file.is_file().then_some(file);
        }
        if let Some(mac) = uki_mac(path) {
            if !self.acts_for(client.ip(), mac) {
                return None;
            }
            return self.uki_image(mac, client.ip()).ok().map(|u| u.path);
        }
        let wanted = onie::installer_path(path)?;
        let mac = wanted
            .mac
            .or_else(|| self.bindings.who(client.ip()).map(|(mac, _)| mac))?;
        if !self.acts_for(client.ip(), mac) {
            return None;
        }
        self.onie_installer(mac, &OnieHeaders::default(), client.ip(), path)
            .ok()
            .map(|i| i.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::SeenClient;
    use crate::domain::Arch;
    use crate::metrics::Metrics;
    use crate::store::Store;

    const MAC: &str = "52:54:00:00:a6:41";

    async fn netboot(
        dir: &std::path::Path,
    ) -> (Netboot, tokio::sync::mpsc::Receiver<crate::ledger::Record>) {
        let store = Store::open(dir).await.unwrap();
        let (ledger, rx) = Ledger::new(1024, Arc::new(Metrics::default()));
        let inventory = Arc::new(Inventory::load(store, ledger.clone()).await.unwrap());
        let images = Arc::new(ImageStore::open(&dir.join("images")).unwrap());
        let bootfiles = Arc::new(Bootfiles::new(
            dir.join("loaders"),
            ["grubnetaa64.efi".to_string()],
        ));
        let known: MacAddr = MAC.parse().unwrap();
        let nb = Netboot::new(
            bootfiles,
            inventory,
            Arc::new(Renderer::embedded().unwrap()),
            images,
            ledger,
            "http://10.77.0.1:8080".into(),
            // Only 10.77.0.101 is bound (the arm64 machine's address).
            Arc::new(crate::binding::Bindings::new(
                crate::binding::Mode::Required,
                None,
                [(IpAddr::from([10, 77, 0, 101]), known)],
                vec!["no-boot-interface".into()],
                Arc::default(),
            )),
            {
                let clients = Clients::empty();
                clients.saw(
                    known,
                    SeenClient {
                        arch: Some(Arch::EfiArm64),
                        ..SeenClient::default()
                    },
                );
                clients
            },
        );
        (nb, rx)
    }

    fn text(bytes: Option<Arc<[u8]>>) -> String {
        String::from_utf8(bytes.expect("served").to_vec()).unwrap()
    }

    #[tokio::test]
    async fn tftp_names_resolve_to_generated_files_and_nothing_else() {
        let dir = tempfile::TempDir::new().unwrap();
        let (nb, _rx) = netboot(dir.path()).await;
        let leased: SocketAddr = "10.77.0.101:2000".parse().unwrap();
        let stranger: SocketAddr = "10.77.0.200:2000".parse().unwrap();

        // Known by address: its own config (here: nothing to boot, and why).
        let own = text(nb.get("grub/grub.cfg", leased));
        assert!(
            own.starts_with("# ironboot: nothing to boot for 52:54:00:00:a6:41\n"),
            "{own}"
        );
        assert!(
            own.contains("group default points at no generation"),
            "{own}"
        );
        // Fetched again at once: the same boot, not a second one.
        assert_eq!(text(nb.get("grub/grub.cfg", leased)), own);
        // Unknown address (proxy mode): the generic chain by MAC.
        let generic = text(nb.get("grub/grub.cfg", stranger));
        assert!(
            generic.contains("configfile (tftp,10.77.0.1)/grub/grub.cfg-01-${net_default_mac}\n"),
            "{generic}"
        );
        // What that chain asks for, in GRUB's colon form and PXELINUX's hyphens.
        for name in [
            "grub/grub.cfg-01-52:54:00:00:a6:41",
            "grub.cfg-01-52-54-00-00-a6-41",
        ] {
            let by_name = text(nb.get(name, leased));
            assert!(
                by_name.contains("nothing to boot for 52:54:00:00:a6:41"),
                "{name}: {by_name}"
            );
            // The same name from an address not bound to that MAC: told so,
            // nothing opened for the machine.
            let refused = text(nb.get(name, stranger));
            assert!(
                refused.contains("10.77.0.200 is not bound to 52:54:00:00:a6:41"),
                "{name}: {refused}"
            );
        }
        for refused in ["grub/grub.cfg-01-nonsense", "grub/other.cfg", "boot.ipxe"] {
            assert!(nb.get(refused, stranger).is_none(), "{refused}");
        }
        // Artifacts by digest only, and only when present.
        let absent = format!("artifacts/sha256/{}", "ab".repeat(32));
        for name in [
            absent.as_str(),
            "artifacts/sha256/zz",
            "artifacts/sha256/../../etc/passwd",
        ] {
            assert_eq!(nb.file(name, stranger), None, "{name}");
        }
        // ONIE waterfall: a switch known by prefix or address; none has an
        // installer generation yet, so nothing is served.
        assert_eq!(nb.file("onie-installer", stranger), None);
        assert_eq!(
            nb.file("52-54-00-0e-00-01/onie-installer-x86_64", stranger),
            None
        );
        // Asked from an address not bound to that MAC: the machine is not
        // registered, let alone turned into a switch.
        assert!(nb
            .inventory
            .machine("52:54:00:0e:00:01".parse().unwrap())
            .is_none());
    }
}
