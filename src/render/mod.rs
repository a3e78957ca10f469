//! Templates: the minijinja environment and the one context templates see.
//!
//! Templates come from `boot-templates/` (embedded in the binary, or an
//! operator's directory set by `templates_dir`), are all parsed once at start,
//! and render with strict undefined: a missing variable fails the render
//! instead of producing a half-empty script. Every value is escaped for the
//! output language of the file it lands in (iPXE, kernel command line, GRUB,
//! shell, YAML, JSON: see [`escape`]), unless the template marks it `safe`,
//! so no machine fact or group variable can inject a command.
//!
//! Layout: `boot.ipxe` (the static first script), `ipxe/machine.ipxe` (the
//! per-machine script), `ipxe/nothing.ipxe` (nothing to boot, and why), and
//! `config/*` (served per machine at boot: cloud-init NoCloud `user-data`,
//! `meta-data`, `vendor-data`, an Ignition `ignition.json`, any other file).

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::path::Path;

use include_dir::{include_dir, Dir};
use minijinja::{AutoEscape, Environment, UndefinedBehavior};

pub use escape::Language;

pub mod context;
mod escape;
use serde::Serialize;

use crate::boot::loader::Loader;

static EMBEDDED: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/boot-templates");

/// Template names with a fixed role.
pub const BOOT_IPXE: &str = "boot.ipxe";
pub const MACHINE_IPXE: &str = "ipxe/machine.ipxe";
pub const NOTHING_IPXE: &str = "ipxe/nothing.ipxe";
/// The template a loader renders for a boot: the machine's own when there
/// is a live OS to boot, else the one that says why not. The boot path,
/// GRUB over TFTP and `explain` all choose through here.
/// Loader `uki` renders nothing (the firmware loads the image itself):
/// `None`.
pub fn boot_template(loader: Loader, bootable: bool) -> Option<&'static str> {
    match (loader, bootable) {
        (Loader::Ipxe, true) => Some(MACHINE_IPXE),
        (Loader::Ipxe, false) => Some(NOTHING_IPXE),
        (Loader::Grub | Loader::Shim, true) => Some(MACHINE_GRUB),
        (Loader::Grub | Loader::Shim, false) => Some(NOTHING_GRUB),
        (Loader::Uki, _) => None,
    }
}

/// GRUB's first config (`/grub/grub.cfg` over TFTP), the same for every
/// machine that is not known by its address yet.
pub const GRUB_CFG: &str = "grub/grub.cfg";
pub const MACHINE_GRUB: &str = "grub/machine.cfg";
pub const NOTHING_GRUB: &str = "grub/nothing.cfg";
/// A switch's provisioning script (`ztp/<file>`, see `dhcp::classify`).
pub const ZTP_DIR: &str = "ztp/";
/// The name under which an image's cmdline template is rendered (so its
/// values get the same control-character check as scripts).
const CMDLINE: &str = "cmdline.ipxe";
/// Distinct cmdline templates kept compiled before the cache starts over.
const MAX_CMDLINES: usize = 1024;

struct Cmdlines {
    env: Environment<'static>,
    names: HashMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("template {name}: {source}")]
    Template {
        name: String,
        source: minijinja::Error,
    },
    #[error("templates directory {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    #[error("no template named {0}")]
    Missing(String),
}

/// The parsed templates.
pub struct Renderer {
    env: Environment<'static>,
    config_files: Vec<String>,
    /// Image cmdline templates, compiled once per distinct text (a script
    /// request renders one; parsing it each time showed in the profile).
    /// A clone of `env`, so the same filters and escaping apply; names are
    /// `<index>.cmdline.ipxe`, indexed by the text in `cmdline_names`.
    cmdlines: std::sync::RwLock<Cmdlines>,
    /// Where this server's NBD listens (`None`: off): a generation with a
    /// root image boots only when it is on.
    nbd: Option<std::net::SocketAddr>,
}

impl Renderer {
    /// The templates embedded in the binary.
    pub fn embedded() -> Result<Self, RenderError> {
        let mut files = Vec::new();
        collect_embedded(&EMBEDDED, &mut files);
        Self::from_files(files)
    }

    /// An operator's template directory (same layout as `boot-templates/`).
    pub fn from_dir(dir: &Path) -> Result<Self, RenderError> {
        let mut files = Vec::new();
        collect_dir(dir, dir, &mut files).map_err(|source| RenderError::Dir {
            path: dir.display().to_string(),
            source,
        })?;
        // A directory written before GRUB and switch support keeps working:
        // what it lacks under `grub/` and `ztp/` comes from the embedded set.
        let mut embedded = Vec::new();
        collect_embedded(&EMBEDDED, &mut embedded);
        for (name, text) in embedded {
            let later = name.starts_with("grub/") || name.starts_with(ZTP_DIR);
            if later && !files.iter().any(|(n, _)| *n == name) {
                files.push((name, text));
            }
        }
        Self::from_files(files)
    }

    fn from_files(files: Vec<(String, String)>) -> Result<Self, RenderError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // Every template is escaped for its output language (`escape`).
        env.set_auto_escape_callback(|name| AutoEscape::Custom(Language::of(name).tag()));
        env.set_formatter(escape::formatter);
        let mut config_files = Vec::new();
        for (name, source) in files {
            if let Some(file) = name.strip_prefix("config/") {
                config_files.push(file.to_string());
            }
            env.add_template_owned(name.clone(), source)
                .map_err(|source| RenderError::Template { name, source })?;
        }
        for required in [
            BOOT_IPXE,
            MACHINE_IPXE,
            NOTHING_IPXE,
            GRUB_CFG,
            MACHINE_GRUB,
            NOTHING_GRUB,
        ] {
            env.get_template(required)
                .map_err(|_| RenderError::Missing(required.into()))?;
        }
        config_files.sort();
        let cmdlines = std::sync::RwLock::new(Cmdlines {
            env: env.clone(),
            names: HashMap::new(),
        });
        Ok(Self {
            env,
            config_files,
            cmdlines,
            nbd: None,
        })
    }

    /// The same templates, rendering root images as exports of the NBD
    /// server at `nbd` (its bound address).
    pub fn with_nbd(mut self, nbd: Option<std::net::SocketAddr>) -> Self {
        self.nbd = nbd;
        self
    }

    /// Where the NBD server listens, if it does.
    pub fn nbd(&self) -> Option<std::net::SocketAddr> {
        self.nbd
    }

    /// Renders a template by name.
    pub fn render(&self, name: &str, ctx: &impl Serialize) -> Result<String, RenderError> {
        let template = self
            .env
            .get_template(name)
            .map_err(|_| RenderError::Missing(name.into()))?;
        template
            .render(ctx)
            .map_err(|source| RenderError::Template {
                name: name.into(),
                source,
            })
    }

    /// Whether a template by this name exists.
    pub fn has(&self, name: &str) -> bool {
        self.env.get_template(name).is_ok()
    }

    /// Renders a config file (`config/<file>`), if there is one by that name.
    pub fn render_config(
        &self,
        file: &str,
        ctx: &BootContext,
    ) -> Option<Result<String, RenderError>> {
        self.config_files
            .iter()
            .any(|f| f == file)
            .then(|| self.render(&format!("config/{file}"), ctx))
    }

    /// Every template's name, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.env.templates().map(|(n, _)| n.to_string()).collect();
        names.sort();
        names
    }

    /// The files under `config/`, as served per machine.
    pub fn config_files(&self) -> &[String] {
        &self.config_files
    }

    /// Renders an image's kernel command line template with the boot context.
    pub fn render_cmdline(&self, template: &str, ctx: &BootContext) -> Result<String, RenderError> {
        let err = |source| RenderError::Template {
            name: "image cmdline".into(),
            source,
        };
        let text = {
            let cache = self.cmdlines.read().unwrap_or_else(|e| e.into_inner());
            match cache.names.get(template) {
                Some(name) => Some(cache.env.get_template(name).map_err(err)?.render(ctx)),
                None => None,
            }
        };
        let text = match text {
            Some(rendered) => rendered.map_err(err)?,
            None => {
                let mut cache = self.cmdlines.write().unwrap_or_else(|e| e.into_inner());
                // Images are few; a runaway number of distinct texts (a bug
                // or an attack through imports) starts the cache over.
                if cache.names.len() >= MAX_CMDLINES {
                    cache.env = self.env.clone();
                    cache.names.clear();
                }
                let name = format!("{}.{CMDLINE}", cache.names.len());
                cache
                    .env
                    .add_template_owned(name.clone(), template.to_string())
                    .map_err(err)?;
                cache.names.insert(template.to_string(), name.clone());
                cache
                    .env
                    .get_template(&name)
                    .map_err(err)?
                    .render(ctx)
                    .map_err(err)?
            }
        };
        Ok(text.split_whitespace().collect::<Vec<_>>().join(" "))
    }
}

fn collect_embedded(dir: &Dir<'_>, out: &mut Vec<(String, String)>) {
    for file in dir.files() {
        if let Some(text) = file.contents_utf8() {
            out.push((
                file.path().to_string_lossy().replace('\\', "/"),
                text.to_string(),
            ));
        }
    }
    for sub in dir.dirs() {
        collect_embedded(sub, out);
    }
}

fn collect_dir(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_dir(root, &path, out)?;
        } else if path.is_file() {
            let name = path
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .replace('\\', "/");
            out.push((name, std::fs::read_to_string(&path)?));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The context: the only thing templates see.
// ---------------------------------------------------------------------------

/// Everything a per-machine template can use.
#[derive(Debug, Clone, Serialize)]
pub struct BootContext {
    pub machine: MachineCtx,
    pub group: GroupCtx,
    /// Absent when the machine has nothing to boot.
    pub generation: Option<GenerationCtx>,
    pub image: Option<ImageCtx>,
    /// `pin` or `group`: where the generation came from.
    pub source: Option<String>,
    /// Why there is nothing to boot (for `ipxe/nothing.ipxe`).
    pub reason: Option<String>,
    pub urls: UrlsCtx,
    pub boot: BootCtx,
}

#[derive(Debug, Clone, Serialize)]
pub struct MachineCtx {
    pub mac: String,
    /// `52-54-00-12-34-56`.
    pub mac_hyphen: String,
    /// Lower-case hex without separators: `525400123456`.
    pub mac_hex: String,
    pub ip: Option<String>,
    /// The configured hostname, else `node-<mac_hex>`.
    pub hostname: String,
    pub uuid: Option<String>,
    pub serial: Option<String>,
    pub arch: Option<String>,
    pub platform: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub group: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupCtx {
    pub name: String,
    /// The group's template variables (a JSON object).
    pub vars: serde_json::Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct GenerationCtx {
    pub stream: String,
    pub number: i64,
    /// The image digest (sha256 of its manifest), hex.
    pub digest: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImageCtx {
    pub arch: String,
    pub kernel: ArtifactCtx,
    pub initrds: Vec<ArtifactCtx>,
    pub rootfs: Option<ArtifactCtx>,
    /// How the initrd reaches `rootfs` over NBD (with a root image only).
    pub root: Option<RootCtx>,
    /// The image's cmdline template, rendered; with a root image, followed
    /// by `root.args`.
    pub cmdline: String,
}

/// A root image as the initrd attaches it: NBD exports named by digest,
/// verified with dm-verity when the image has a hash tree.
#[derive(Debug, Clone, Serialize)]
pub struct RootCtx {
    /// `IP:PORT` of this server's NBD.
    pub nbd: String,
    /// The root image's export (its sha256, hex).
    pub export: String,
    /// The hash tree's export, when the image has one.
    pub hash_tree: Option<String>,
    /// The dm-verity root hash, when the image has a tree.
    pub root_hash: Option<String>,
    /// What the command line carries: `ironboot.nbd=IP:PORT
    /// ironboot.root=<export> [ironboot.verity=<hash_tree>:<root_hash>]`.
    pub args: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ArtifactCtx {
    pub name: String,
    pub url: String,
    /// The same bytes over TFTP, as GRUB names them:
    /// `(tftp,SERVER)/artifacts/sha256/<hex>`.
    pub tftp: String,
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct UrlsCtx {
    /// `http://SERVER:PORT`
    pub server: String,
    /// The per-boot NoCloud seed and config directory (ends in `/`).
    pub seed: String,
    /// Same as `seed`: `{{ urls.config }}ignition.json` reads better.
    pub config: String,
    /// Where the booted OS confirms (cloud-init `phone_home` posts here).
    pub phone_home: String,
    /// GRUB's device for this server's TFTP: `(tftp,SERVER)`.
    pub tftp: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct BootCtx {
    pub id: i64,
    /// The per-boot token (also inside the seed and phone-home URLs).
    pub token: String,
    /// A stable-per-boot instance id for cloud-init.
    pub instance_id: String,
}

/// The context of `boot.ipxe`, the same for every machine.
#[derive(Debug, Clone, Serialize)]
pub struct ServerContext {
    pub urls: ServerUrls,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerUrls {
    pub server: String,
}

#[cfg(test)]
mod tests;
