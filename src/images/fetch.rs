//! Server-side downloads (`POST /api/v1/artifacts/fetch`, the CLI's
//! `--from-url`): the server itself opens a connection to a URL an API
//! client named, so it must not become a way to reach what only the server
//! can reach (its loopback, the BMC network, a cloud metadata address).
//!
//! The `[images]` section of the config file:
//!
//! ```toml
//! [images]
//! fetch_timeout = "30m"             # the whole download, body included
//! fetch_allow = ["10.20.0.0/16"]    # private networks a fetch may reach
//! ```
//!
//! Invariants: every address a fetch connects to (the first URL's and every
//! redirect's, literal or resolved) is checked against [`FetchPolicy`]
//! before the connection is made; names are resolved by the policy's own
//! resolver, so a name that resolves to a refused address (DNS rebinding)
//! is refused too. Loopback, link-local, private, shared (CGNAT),
//! multicast and reserved addresses are refused unless a network in
//! `fetch_allow` contains them. At most [`MAX_REDIRECTS`] redirects, each
//! to `http` or `https`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Redirects a fetch follows before it gives up.
pub const MAX_REDIRECTS: usize = 5;
/// How long connecting to one address may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawImages {
    pub fetch_timeout: String,
    pub fetch_allow: Vec<String>,
}

impl Default for RawImages {
    fn default() -> Self {
        Self {
            fetch_timeout: "30m".into(),
            fetch_allow: Vec::new(),
        }
    }
}

/// Where a server-side fetch may connect, and for how long it may run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchPolicy {
    /// Networks allowed although they are not public.
    pub allow: Vec<IpNet>,
    /// The whole download, from connecting to the last byte.
    pub timeout: Duration,
}

impl Default for FetchPolicy {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            timeout: Duration::from_secs(30 * 60),
        }
    }
}

/// Validates `[images]`; errors are `(key, message)`.
pub fn validate(raw: &RawImages) -> Result<FetchPolicy, (String, String)> {
    let bad = |key: &str, message: String| (format!("images.{key}"), message);
    let timeout = humantime::parse_duration(raw.fetch_timeout.trim()).map_err(|e| {
        bad(
            "fetch_timeout",
            format!(
                "{:?} is not a duration like \"90s\" or \"30m\": {e}",
                raw.fetch_timeout
            ),
        )
    })?;
    if timeout < Duration::from_secs(1) {
        return Err(bad("fetch_timeout", "must be at least 1s".into()));
    }
    let allow = raw
        .fetch_allow
        .iter()
        .map(|n| {
            n.trim().parse::<IpNet>().map_err(|_| {
                bad(
                    "fetch_allow",
                    format!("{n:?} is not a network like \"10.20.0.0/16\" or \"fd00::/8\""),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(FetchPolicy { allow, timeout })
}

/// Why a fetch was refused before any byte was read.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("{0} is not a public address (allow its network in images.fetch_allow)")]
    Address(IpAddr),
    #[error("{0} resolves to no address a fetch may reach")]
    Name(String),
    #[error("only http:// and https:// URLs can be fetched")]
    Scheme,
    #[error("more than {MAX_REDIRECTS} redirects")]
    Redirects,
}

impl FetchPolicy {
    /// Whether a fetch may connect to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.allow.iter().any(|n| n.contains(&ip)) || is_public(ip)
    }

    /// Checks a URL before a request to it (the first one, or a redirect's
    /// target): its scheme, and its host when that is an address literal
    /// (names are checked when they are resolved).
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), Refused> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Refused::Scheme);
        }
        // The URL parser normalises IPv4 literals (`0x7f.1` is 127.0.0.1)
        // and brackets IPv6 ones.
        let literal = url
            .host_str()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .and_then(|h| h.parse::<IpAddr>().ok());
        match literal {
            Some(ip) if !self.permits(ip) => Err(Refused::Address(ip)),
            _ => Ok(()),
        }
    }

    /// An HTTP client that enforces this policy on every connection.
    fn client(&self) -> reqwest::Result<reqwest::Client> {
        let policy = Arc::new(self.clone());
        let redirects = policy.clone();
        reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(CONNECT_TIMEOUT)
            .dns_resolver(policy)
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= MAX_REDIRECTS {
                    return attempt.error(Refused::Redirects);
                }
                match redirects.check_url(attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(refused) => attempt.error(refused),
                }
            }))
            .build()
    }
}

/// The policy and the one client that follows it.
pub struct Fetcher {
    policy: FetchPolicy,
    client: reqwest::Client,
}

/// Why a fetch failed: refused by the policy, or the download failed.
/// Neither carries any of the fetched content.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("refused: {0}")]
    Refused(#[from] Refused),
    #[error("{0}")]
    Failed(String),
}

impl Fetcher {
    pub fn new(policy: FetchPolicy) -> reqwest::Result<Self> {
        Ok(Self {
            client: policy.client()?,
            policy,
        })
    }

    /// Starts a download: the response, once its status is a success.
    pub async fn get(&self, url: &str) -> Result<reqwest::Response, FetchError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| FetchError::Failed(e.to_string()))?;
        self.policy.check_url(&parsed)?;
        self.client
            .get(parsed)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| {
                // A refusal inside reqwest (a redirect, a resolved name)
                // comes back as the source of its error.
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    if let Some(refused) = s.downcast_ref::<Refused>() {
                        return FetchError::Refused(refused.clone());
                    }
                    source = s.source();
                }
                FetchError::Failed(e.without_url().to_string())
            })
    }
}

impl reqwest::dns::Resolve for FetchPolicy {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| policy.permits(a.ip()))
                .collect();
            if found.is_empty() {
                return Err(Box::new(Refused::Name(host)) as Box<_>);
            }
            Ok(Box::new(found.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// An IPv4-mapped IPv6 address is the IPv4 address it maps.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Globally reachable unicast, by the IANA special-purpose registries
/// (the parts that matter for where a server should not be sent).
fn is_public(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
                || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
                || (a == 198 && (18..20).contains(&b)) // benchmarking
                || a >= 240) // reserved
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64 (may map to anything)
                || s[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible, deprecated
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_addresses_a_fetch_may_reach() {
        let none = FetchPolicy::default();
        let lab = validate(&RawImages {
            fetch_allow: vec!["10.20.0.0/16".into(), "fd00::/8".into()],
            ..RawImages::default()
        })
        .unwrap();
        let table: &[(&str, bool, bool)] = &[
            // address, by default, with the lab's networks allowed
            ("93.184.216.34", true, true),
            ("2606:2800:220:1::1", true, true),
            ("127.0.0.1", false, false),
            ("127.8.9.10", false, false),
            ("::1", false, false),
            ("::ffff:127.0.0.1", false, false),
            ("0.0.0.0", false, false),
            ("10.0.0.1", false, false),
            ("10.20.3.4", false, true),
            ("172.16.0.1", false, false),
            ("192.168.1.1", false, false),
            ("169.254.169.254", false, false), // cloud metadata
            ("100.64.0.1", false, false),
            ("224.0.0.1", false, false),
            ("255.255.255.255", false, false),
            ("240.0.0.1", false, false),
            ("fe80::1", false, false),
            ("fd00::5", false, true),
            ("fc00::5", false, false),
            ("ff02::1", false, false),
            ("::ffff:10.20.3.4", false, true),
            ("64:ff9b::7f00:1", false, false),
        ];
        for (ip, default, allowed) in table {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(none.permits(ip), *default, "{ip} by default");
            assert_eq!(lab.permits(ip), *allowed, "{ip} with fetch_allow");
        }
    }

    #[test]
    fn urls_are_checked_by_scheme_and_literal_host() {
        let p = FetchPolicy::default();
        let check = |u: &str| p.check_url(&reqwest::Url::parse(u).unwrap());
        assert_eq!(check("https://example.org/k"), Ok(()));
        assert_eq!(check("ftp://example.org/k"), Err(Refused::Scheme));
        assert_eq!(check("file:///etc/shadow"), Err(Refused::Scheme));
        assert!(matches!(
            check("http://127.0.0.1:8080/ipxe/x"),
            Err(Refused::Address(_))
        ));
        assert!(matches!(check("http://[::1]/x"), Err(Refused::Address(_))));
        assert!(matches!(
            check("http://169.254.169.254/latest/meta-data/"),
            Err(Refused::Address(_))
        ));
        // 0x7f.1 and 2130706433 are 127.0.0.1 once the URL is parsed.
        assert!(check("http://2130706433/").is_err());
        assert!(check("http://0x7f.1/").is_err());
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = validate(&RawImages {
            fetch_allow: vec!["nonsense".into()],
            ..RawImages::default()
        })
        .unwrap_err();
        assert_eq!(e.0, "images.fetch_allow");
        let e = validate(&RawImages {
            fetch_timeout: "soon".into(),
            ..RawImages::default()
        })
        .unwrap_err();
        assert_eq!(e.0, "images.fetch_timeout");
    }

    /// A name that resolves only to loopback is refused by the resolver
    /// (the DNS-rebinding case: the URL passed the literal check).
    #[tokio::test]
    async fn names_resolving_to_refused_addresses_are_refused() {
        let fetcher = Fetcher::new(FetchPolicy::default()).unwrap();
        let err = fetcher
            .get("http://localhost:9/")
            .await
            .expect_err("refused");
        assert!(
            matches!(&err, FetchError::Refused(Refused::Name(n)) if n == "localhost"),
            "{err:?}"
        );
        let err = fetcher
            .get("http://127.0.0.1:9/")
            .await
            .expect_err("refused");
        assert!(
            matches!(err, FetchError::Refused(Refused::Address(_))),
            "{err:?}"
        );
    }
}
