//! Turning a boot plan into the one context every template sees. Pure: the
//! server's base URL and the plan in, a `BootContext` out.

use super::{
    ArtifactCtx, BootContext, BootCtx, GenerationCtx, GroupCtx, ImageCtx, MachineCtx, RenderError,
    Renderer, RootCtx, UrlsCtx,
};
use crate::boot::{Source, Target};
use crate::fleet::BootPlan;
use crate::images::{ArtifactRef, VerityRef};

/// Where a machine reaches this server, and where it fetches artifacts:
/// the server itself, or an artifact cache near its rack
/// (`dhcp.subnet[].artifacts`).
#[derive(Debug, Clone, Copy)]
pub struct Bases<'a> {
    pub server: &'a str,
    pub artifacts: &'a str,
}

impl<'a> Bases<'a> {
    /// Everything from the server at `server`.
    pub fn server(server: &'a str) -> Self {
        Self {
            server,
            artifacts: server,
        }
    }
}

/// The permanent, content-addressed URL of an artifact.
pub fn artifact_url(server: &str, digest: &impl std::fmt::Display) -> String {
    format!("{server}/artifacts/sha256/{digest}")
}

/// GRUB's name for this server's TFTP: `(tftp,10.77.0.1)`, from the host of
/// the HTTP base URL (the same address machines are told).
pub fn tftp_device(server: &str) -> String {
    format!("(tftp,{})", host_of(server))
}

/// The root image's exports on the NBD server at `nbd`; an unspecified
/// listen address is reached at the host machines use for HTTP.
fn root_ctx(
    server: &str,
    nbd: std::net::SocketAddr,
    rootfs: &ArtifactRef,
    verity: Option<&VerityRef>,
) -> RootCtx {
    let host = if nbd.ip().is_unspecified() {
        host_of(server).to_string()
    } else {
        nbd.ip().to_string()
    };
    let nbd = format!("{host}:{}", nbd.port());
    let export = rootfs.digest.to_string();
    let mut args = format!("ironboot.nbd={nbd} ironboot.root={export}");
    if let Some(v) = verity {
        args.push_str(&format!(
            " ironboot.verity={}:{}",
            v.hash_tree.digest, v.root_hash
        ));
    }
    RootCtx {
        nbd,
        export,
        hash_tree: verity.map(|v| v.hash_tree.digest.to_string()),
        root_hash: verity.map(|v| v.root_hash.clone()),
        args,
    }
}

/// The host of an `http://HOST:PORT` base URL.
fn host_of(server: &str) -> &str {
    server
        .split_once("://")
        .map_or(server, |(_, rest)| rest)
        .split(['/', ':'])
        .next()
        .unwrap_or_default()
}

/// Builds the context; the image's cmdline template is rendered here, with
/// the context as it stands, so it can use every machine fact.
pub fn build(
    plan: &BootPlan,
    bases: Bases<'_>,
    renderer: &Renderer,
) -> Result<BootContext, RenderError> {
    let server = bases.server;
    let m = &plan.machine;
    let mac_hex = m.mac.to_string().replace(':', "");
    let seed = format!("{server}/config/{}/", plan.token);
    let tftp = tftp_device(server);
    let mut ctx = BootContext {
        machine: MachineCtx {
            mac: m.mac.to_string(),
            mac_hyphen: m.mac.hyphenated(),
            mac_hex: mac_hex.clone(),
            ip: m.ip.clone(),
            hostname: m
                .hostname
                .clone()
                .unwrap_or_else(|| format!("node-{mac_hex}")),
            uuid: m.uuid.clone(),
            serial: m.serial.clone(),
            arch: m.arch.map(|cpu| cpu.to_string()),
            platform: plan.platform.clone(),
            labels: m.labels.clone(),
            group: m.group.clone(),
        },
        group: GroupCtx {
            name: plan.group.name.clone(),
            vars: plan.group.variables.clone(),
        },
        generation: None,
        image: None,
        source: None,
        reason: None,
        urls: UrlsCtx {
            server: server.to_string(),
            seed: seed.clone(),
            config: seed,
            phone_home: format!("{server}/phone-home/{}", plan.token),
            tftp: tftp.clone(),
        },
        boot: BootCtx {
            id: plan.boot_id,
            token: plan.token.clone(),
            instance_id: format!("ironboot-{mac_hex}-{}", plan.boot_id),
        },
    };
    match (&plan.target, &plan.generation) {
        (Target::Boot { source, .. }, Some(g)) => {
            let artifact = |a: &ArtifactRef| ArtifactCtx {
                name: a.name.clone(),
                url: artifact_url(bases.artifacts, &a.digest),
                tftp: format!("{}/artifacts/sha256/{}", tftp, a.digest),
                sha256: a.digest.to_string(),
                size: a.size,
            };
            ctx.generation = Some(GenerationCtx {
                stream: g.id.stream.clone(),
                number: g.id.number,
                digest: g.digest.to_string(),
            });
            ctx.source = Some(match source {
                Source::Pin => "pin".into(),
                Source::Group => "group".into(),
                Source::Rollout => "rollout".into(),
                Source::LastGood => "last_good".into(),
            });
            if g.manifest.uki.is_some() {
                ctx.reason = Some(format!(
                    "{} is a unified kernel image: the firmware loads it itself (set loader uki)",
                    g.id
                ));
                return Ok(ctx);
            }
            if g.manifest.kernel.is_none() {
                ctx.reason = Some(format!(
                    "{} is a switch installer, not a live OS; it is served to ONIE only",
                    g.id
                ));
                return Ok(ctx);
            }
            let root = match (&g.manifest.rootfs, renderer.nbd()) {
                (None, _) => None,
                (Some(_), None) => {
                    ctx.reason = Some(format!(
                        "{} streams its root image over NBD, and this server's [nbd] listen is off",
                        g.id
                    ));
                    return Ok(ctx);
                }
                (Some(rootfs), Some(nbd)) => Some(root_ctx(
                    server,
                    nbd,
                    rootfs,
                    g.manifest.rootfs_verity.as_ref(),
                )),
            };
            ctx.image = Some(ImageCtx {
                arch: g.manifest.arch.to_string(),
                kernel: artifact(g.manifest.kernel.as_ref().expect("checked above")),
                initrds: g.manifest.initrds.iter().map(artifact).collect(),
                rootfs: g.manifest.rootfs.as_ref().map(artifact),
                root,
                cmdline: String::new(),
            });
            let mut cmdline = renderer.render_cmdline(&g.manifest.cmdline, &ctx)?;
            if let Some(image) = ctx.image.as_mut() {
                if let Some(root) = &image.root {
                    cmdline = format!("{} {}", cmdline.trim_end(), root.args);
                }
                image.cmdline = cmdline;
            }
        }
        (Target::Nothing { reason }, _) => ctx.reason = Some(reason.clone()),
        (Target::Boot { generation, .. }, None) => {
            ctx.reason = Some(format!(
                "{generation} disappeared while the script was being served"
            ))
        }
    }
    Ok(ctx)
}
