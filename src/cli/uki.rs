//! `ironboot image build-uki`: a unified kernel image from a kernel, its
//! initrds and a command line, signed with the operator's key, on the
//! operator's machine (the key never goes to the server). The layout is
//! computed here ([`crate::images::uki::Layout`]); binutils' `objcopy` adds
//! the sections to systemd's stub and `sbsign` (sbsigntool) signs the
//! result, as those tools are made for exactly that. `image import --uki`
//! then imports the file, after `sbverify` when given a certificate.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};

use super::CliError;
use crate::images::uki::{Layout, Uki};

/// Debian's `systemd-boot-efi` stub for x86_64.
pub const DEFAULT_STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

/// Arguments of `ironboot image build-uki`.
#[derive(Debug, Clone, clap::Args)]
pub struct BuildUkiArgs {
    /// The kernel (an EFI-stub kernel, as distributions ship).
    #[arg(long)]
    pub kernel: PathBuf,
    /// Initrd file(s), in order (repeatable; concatenated into one).
    #[arg(long, required = true)]
    pub initrd: Vec<PathBuf>,
    /// The command line, sealed into the image. Per-boot data cannot be in
    /// it: point the NoCloud seed at `http://SERVER:PORT/config/self/`,
    /// which ironboot answers for the machine at the requesting address.
    #[arg(long)]
    pub cmdline: String,
    /// The signing key (PEM, unencrypted; `openssl rsa -in KEY -out PLAIN`).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// The certificate matching --key, the one enrolled in the firmware's db.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// systemd's EFI stub.
    #[arg(long, default_value = DEFAULT_STUB)]
    pub stub: PathBuf,
    /// os-release text for the `.osrel` section (default: one naming the
    /// output file).
    #[arg(long)]
    pub os_release: Option<PathBuf>,
    /// Where to write the image (`--out`: `-o` is the output format).
    #[arg(long)]
    pub out: PathBuf,
}

fn usage(what: impl std::fmt::Display) -> CliError {
    CliError::Usage(what.to_string())
}

fn read(path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|e| usage(format!("{}: {e}", path.display())))
}

/// Runs a tool to completion; its stderr in the error.
fn run(tool: &str, args: &[&std::ffi::OsStr]) -> Result<String, CliError> {
    let out = Command::new(tool).args(args).output().map_err(|e| {
        let package = match tool {
            "objcopy" => "binutils",
            _ => "sbsigntool",
        };
        usage(format!(
            "cannot run {tool}: {e} (apt-get install {package})"
        ))
    })?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(usage(format!(
            "{tool} failed ({}): {}",
            out.status,
            text.trim()
        )));
    }
    Ok(text)
}

/// Builds (and signs, given a key) the image; prints its size, digest and
/// whether it is signed.
pub fn build_uki(args: &BuildUkiArgs) -> Result<(), CliError> {
    if args.cmdline.chars().any(char::is_control) {
        return Err(usage(
            "--cmdline must be one line without control characters",
        ));
    }
    let stub = read(&args.stub)?;
    let kernel = read(&args.kernel)?;
    let mut initrd = Vec::new();
    for i in &args.initrd {
        initrd.extend(read(i)?);
    }
    let name = args
        .out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let osrel = match &args.os_release {
        Some(p) => read(p)?,
        None => {
            format!("NAME=\"{name}\"\nID=ironboot-uki\nPRETTY_NAME=\"{name} (ironboot UKI)\"\n")
                .into_bytes()
        }
    };
    let cmdline = args.cmdline.as_bytes().to_vec();
    let sizes = [osrel.len(), cmdline.len(), kernel.len(), initrd.len()].map(|n| n as u64);
    let layout =
        Layout::after(&stub, sizes).map_err(|e| usage(format!("{}: {e}", args.stub.display())))?;

    let work = tempfile::TempDir::new().map_err(|e| usage(format!("temporary directory: {e}")))?;
    let parts = [
        ("osrel", &osrel),
        ("cmdline", &cmdline),
        ("initrd", &initrd),
    ];
    for (file, bytes) in parts {
        std::fs::write(work.path().join(file), bytes).map_err(|e| usage(format!("{file}: {e}")))?;
    }
    let source = |section: &str| match section {
        ".linux" => args.kernel.clone(),
        other => work.path().join(other.trim_start_matches('.')),
    };
    let unsigned = work.path().join("unsigned.efi");
    let mut objcopy: Vec<std::ffi::OsString> = Vec::new();
    for (section, address) in &layout.addresses {
        let mut add = std::ffi::OsString::from(format!("{section}="));
        add.push(source(section));
        objcopy.extend([
            "--add-section".into(),
            add,
            "--change-section-vma".into(),
            format!("{section}={address:#x}").into(),
        ]);
    }
    objcopy.extend([args.stub.clone().into(), unsigned.clone().into()]);
    let refs: Vec<&std::ffi::OsStr> = objcopy.iter().map(|s| s.as_os_str()).collect();
    run("objcopy", &refs)?;

    let built = match (&args.key, &args.cert) {
        (Some(key), Some(cert)) => {
            let signed = work.path().join("signed.efi");
            run(
                "sbsign",
                &[
                    "--key".as_ref(),
                    key.as_os_str(),
                    "--cert".as_ref(),
                    cert.as_os_str(),
                    "--output".as_ref(),
                    signed.as_os_str(),
                    unsigned.as_os_str(),
                ],
            )?;
            signed
        }
        _ => unsigned,
    };
    let bytes = read(&built)?;
    let uki = Uki::parse(&bytes)
        .map_err(|e| usage(format!("the built image does not read back: {e}")))?;
    std::fs::write(&args.out, &bytes).map_err(|e| usage(format!("{}: {e}", args.out.display())))?;
    println!(
        "{} {} bytes sha256:{} {}",
        args.out.display(),
        bytes.len(),
        hex::encode(Sha256::digest(&bytes)),
        if uki.signed { "signed" } else { "unsigned" }
    );
    Ok(())
}

/// Before an import: the file is a unified kernel image, and with `cert`,
/// `sbverify` says its signature is that certificate's and its hash holds.
pub fn check_before_import(path: &Path, cert: Option<&Path>) -> Result<(), CliError> {
    let bytes = read(path)?;
    let uki = Uki::parse(&bytes).map_err(|e| usage(format!("{}: {e}", path.display())))?;
    if let Some(cert) = cert {
        if !uki.signed {
            return Err(usage(format!("{}: not signed", path.display())));
        }
        run(
            "sbverify",
            &["--cert".as_ref(), cert.as_os_str(), path.as_os_str()],
        )
        .map_err(|e| {
            usage(format!(
                "{}: the signature does not verify: {e}",
                path.display()
            ))
        })?;
    }
    Ok(())
}
