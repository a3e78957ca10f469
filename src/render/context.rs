//! Turning a boot plan into the one context every template sees. Pure: the
//! server's base URL and the plan in, a `BootContext` out.

use super::{
    ArtifactCtx, BootContext, BootCtx, GenerationCtx, GroupCtx, ImageCtx, MachineCtx, RenderError,
    Renderer, UrlsCtx,
};
use crate::boot::{Source, Target};
use crate::fleet::BootPlan;
use crate::images::ArtifactRef;

/// The permanent, content-addressed URL of an artifact.
pub fn artifact_url(server: &str, digest: &impl std::fmt::Display) -> String {
    format!("{server}/artifacts/sha256/{digest}")
}

/// GRUB's name for this server's TFTP: `(tftp,10.77.0.1)`, from the host of
/// the HTTP base URL (the same address machines are told).
pub fn tftp_device(server: &str) -> String {
    let host = server
        .split_once("://")
        .map_or(server, |(_, rest)| rest)
        .split(['/', ':'])
        .next()
        .unwrap_or_default();
    format!("(tftp,{host})")
}

/// Builds the context; the image's cmdline template is rendered here, with
/// the context as it stands, so it can use every machine fact.
pub fn build(
    plan: &BootPlan,
    server: &str,
    renderer: &Renderer,
) -> Result<BootContext, RenderError> {
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
                url: artifact_url(server, &a.digest),
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
            ctx.image = Some(ImageCtx {
                arch: g.manifest.arch.to_string(),
                kernel: artifact(g.manifest.kernel.as_ref().expect("checked above")),
                initrds: g.manifest.initrds.iter().map(artifact).collect(),
                rootfs: g.manifest.rootfs.as_ref().map(artifact),
                cmdline: String::new(),
            });
            let cmdline = renderer.render_cmdline(&g.manifest.cmdline, &ctx)?;
            if let Some(image) = ctx.image.as_mut() {
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
