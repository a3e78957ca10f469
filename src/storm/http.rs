//! The HTTP side of a simulated machine: what iPXE and the booted OS fetch
//! (scripts, artifacts verified against the sha256 in their URL, the
//! NoCloud seed) and the confirmation they post back.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{url}: {source}")]
    Transport { url: String, source: reqwest::Error },
    #[error("{url}: status {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: sha256 {got} differs from the URL's digest")]
    Digest { url: String, got: String },
    #[error("{0}")]
    Script(String),
}

/// One machine's HTTP client: keep-alive like iPXE, from the machine's own
/// address when it is local (so the server sees distinct clients).
pub fn client(local: Option<IpAddr>, timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .local_address(local)
        .no_proxy()
        .timeout(timeout)
        .pool_max_idle_per_host(1)
        .build()
}

fn transport(url: &str) -> impl FnOnce(reqwest::Error) -> HttpError + '_ {
    move |source| HttpError::Transport {
        url: url.to_string(),
        source,
    }
}

/// GET a text document (a script, a config file).
pub async fn text(client: &reqwest::Client, url: &str) -> Result<String, HttpError> {
    let resp = client.get(url).send().await.map_err(transport(url))?;
    check(url, &resp)?;
    resp.text().await.map_err(transport(url))
}

/// GET an artifact, hashing it as it streams; fails when its sha256 is not
/// the digest that ends its content-addressed URL. Returns the byte count.
pub async fn artifact(client: &reqwest::Client, url: &str) -> Result<u64, HttpError> {
    let mut resp = client.get(url).send().await.map_err(transport(url))?;
    check(url, &resp)?;
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    while let Some(chunk) = resp.chunk().await.map_err(transport(url))? {
        bytes += chunk.len() as u64;
        hasher.update(&chunk);
    }
    if let Some(want) = url_digest(url) {
        let got = hex::encode(hasher.finalize());
        if got != want {
            return Err(HttpError::Digest {
                url: url.to_string(),
                got,
            });
        }
    }
    Ok(bytes)
}

/// POST the confirmation as cloud-init's `phone_home` does (a form).
pub async fn confirm(client: &reqwest::Client, url: &str, hostname: &str) -> Result<(), HttpError> {
    let body = format!("instance_id=storm&hostname={hostname}&fqdn={hostname}");
    let resp = client
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .map_err(transport(url))?;
    check(url, &resp)
}

fn check(url: &str, resp: &reqwest::Response) -> Result<(), HttpError> {
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(HttpError::Status {
            url: url.to_string(),
            status: resp.status().as_u16(),
        })
    }
}

/// The 64 hex digits that end a content-addressed URL, if they do.
pub fn url_digest(url: &str) -> Option<String> {
    let last = url.split(['?', '#']).next()?.rsplit('/').next()?;
    (last.len() == 64 && last.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| last.to_ascii_lowercase())
}

/// What a machine script asks iPXE to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loads {
    pub kernel: String,
    pub initrds: Vec<String>,
    /// The NoCloud seed URL from the kernel command line (`s=…`), if any.
    pub seed: Option<String>,
}

/// Reads an iPXE script: either it loads a kernel (returns [`Loads`]) or it
/// chains to another script (returns the expanded chain URL).
pub enum Script {
    Loads(Loads),
    Chain(String),
}

pub fn read_script(text: &str, vars: &HashMap<&str, String>) -> Result<Script, HttpError> {
    let mut kernel = None;
    let mut seed = None;
    let mut initrds = Vec::new();
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        let Some(command) = words.next() else {
            continue;
        };
        match command {
            "kernel" | "initrd" | "chain" | "imgfetch" | "module" => {}
            _ => continue,
        }
        // Options come first; `--name X` and `--timeout X` take a value.
        let mut args = words.peekable();
        while let Some(w) = args.next_if(|w| w.starts_with('-')) {
            if matches!(w, "--name" | "-n" | "--timeout" | "-t") {
                args.next();
            }
        }
        let Some(url) = args.next() else { continue };
        let url = expand(url, vars);
        match command {
            "kernel" if kernel.is_none() => {
                seed = args
                    .flat_map(|a| a.split(';'))
                    .find_map(|a| a.strip_prefix("s=").map(str::to_string));
                kernel = Some(url);
            }
            "initrd" | "imgfetch" | "module" => initrds.push(url),
            "chain" if kernel.is_none() => return Ok(Script::Chain(url)),
            _ => {}
        }
    }
    match kernel {
        Some(kernel) => Ok(Script::Loads(Loads {
            kernel,
            initrds,
            seed,
        })),
        None => Err(HttpError::Script(format!(
            "script loads no kernel: {}",
            text.lines()
                .find(|l| l.starts_with("echo"))
                .unwrap_or("(no message)")
        ))),
    }
}

/// Expands iPXE settings (`${mac:hexhyp}`, `${uuid}`, …) from `vars`;
/// unknown ones expand to nothing, as in iPXE.
pub fn expand(text: &str, vars: &HashMap<&str, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let name = &rest[start + 2..start + end];
        if let Some(v) = vars.get(name) {
            out.push_str(v);
        }
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    out
}

/// The phone-home URL from a cloud-config (`phone_home: url: …`).
pub fn phone_home_url(user_data: &str) -> Option<String> {
    let mut in_phone_home = false;
    for line in user_data.lines() {
        if line.starts_with("phone_home:") {
            in_phone_home = true;
        } else if in_phone_home {
            if !line.starts_with(' ') {
                in_phone_home = false;
            } else if let Some(url) = line.trim().strip_prefix("url:") {
                return Some(url.trim().trim_matches('"').to_string());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> HashMap<&'static str, String> {
        HashMap::from([
            ("mac:hexhyp", "02-57-00-00-00-07".to_string()),
            ("uuid", "u-7".to_string()),
        ])
    }

    #[test]
    fn a_chain_expands_settings_and_drops_unknown_ones() {
        let text = "#!ipxe\necho hi\nchain --autofree http://s:1/boot/${mac:hexhyp}.ipxe?uuid=${uuid}&chip=${net0/chip} || goto failed\n";
        match read_script(text, &vars()).unwrap() {
            Script::Chain(url) => {
                assert_eq!(url, "http://s:1/boot/02-57-00-00-00-07.ipxe?uuid=u-7&chip=")
            }
            Script::Loads(l) => panic!("{l:?}"),
        }
    }

    #[test]
    fn a_machine_script_yields_kernel_initrds_and_seed() {
        let k = "a".repeat(64);
        let text = format!(
            "#!ipxe\n:load\nkernel --name vmlinuz http://s/artifacts/sha256/{k} console=ttyS0 ds=nocloud-net;s=http://s/config/tok/ initrd=initrd0 || goto retry\ninitrd --name initrd0 http://s/artifacts/sha256/{k} || goto retry\nboot\n"
        );
        let Script::Loads(l) = read_script(&text, &vars()).unwrap() else {
            panic!()
        };
        assert_eq!(l.kernel, format!("http://s/artifacts/sha256/{k}"));
        assert_eq!(l.initrds.len(), 1);
        assert_eq!(l.seed.as_deref(), Some("http://s/config/tok/"));
        assert_eq!(url_digest(&l.kernel), Some(k));
        assert_eq!(url_digest("http://s/x"), None);
    }

    #[test]
    fn nothing_to_boot_is_an_error_with_the_scripts_message() {
        let err = read_script("#!ipxe\necho nothing to boot\nexit 1\n", &vars())
            .err()
            .unwrap();
        assert!(err.to_string().contains("nothing to boot"), "{err}");
    }

    #[test]
    fn the_phone_home_url_is_read_from_its_block() {
        let ud = "#cloud-config\nhostname: n\nphone_home:\n  url: http://s/phone-home/abc\n  post: all\nother:\n  url: http://x\n";
        assert_eq!(
            phone_home_url(ud).as_deref(),
            Some("http://s/phone-home/abc")
        );
        assert_eq!(phone_home_url("#cloud-config\n"), None);
    }
}
