//! PDF downloads, from where PDFs come from only. A PDF's URL comes from a stored document (the
//! upstream's listing, through the provider), so it is input an attacker may have shaped: it is
//! fetched only from an allowed origin (scheme, host and port; `CONSUMER_DOWNLOAD_ALLOWED_ORIGINS`),
//! redirects are followed only within the allowed origins, and a name that resolves to a private,
//! loopback or link-local address is refused unless the allowlist names it as an internal host
//! (an IP address, or a single-label name such as a compose service). Also: a per-download
//! timeout, a size cap, a content-type and magic-bytes check, and a process-wide bound on
//! downloads running at once.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use reqwest::Url;
use tokio::sync::Semaphore;

/// The announcement host the real listings link their PDFs to.
pub const DEFAULT_ALLOWED_ORIGINS: &str = "https://www.asx.com.au";

/// The setting that lists the allowed origins, as messages name it.
const SETTING: &str = "CONSUMER_DOWNLOAD_ALLOWED_ORIGINS";

/// Redirects followed at most, all within the allowed origins.
const MAX_REDIRECTS: usize = 5;

#[derive(Debug, Clone)]
pub struct DownloadLimits {
    pub timeout: Duration,
    pub max_bytes: usize,
    pub concurrency: usize,
    pub allowed: AllowedOrigins,
}

/// One origin: scheme, host (lower-case; an IP address without brackets) and port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    fn of(url: &Url) -> Option<Origin> {
        Some(Origin {
            scheme: url.scheme().to_string(),
            host: url
                .host_str()?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase(),
            port: url.port_or_known_default()?,
        })
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => write!(f, "{}://[{}]:{}", self.scheme, self.host, self.port),
            _ => write!(f, "{}://{}:{}", self.scheme, self.host, self.port),
        }
    }
}

/// The origins PDFs may be downloaded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedOrigins(Vec<Origin>);

impl AllowedOrigins {
    /// Parses a comma-separated list of origins (`https://host[:port]`; http or https, no path
    /// beyond `/`, no user or password). Errors name the setting and the entry.
    pub fn parse(list: &str) -> anyhow::Result<Self> {
        let mut origins = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let url = Url::parse(entry)
                .map_err(|e| anyhow::anyhow!("{SETTING}: {entry:?} is not an origin URL: {e}"))?;
            anyhow::ensure!(
                matches!(url.scheme(), "http" | "https"),
                "{SETTING}: {entry:?} must be an http or https origin"
            );
            anyhow::ensure!(
                url.username().is_empty()
                    && url.password().is_none()
                    && matches!(url.path(), "" | "/")
                    && url.query().is_none()
                    && url.fragment().is_none(),
                "{SETTING}: {entry:?} must be an origin only (scheme, host and port)"
            );
            let origin = Origin::of(&url)
                .ok_or_else(|| anyhow::anyhow!("{SETTING}: {entry:?} has no host"))?;
            origins.push(origin);
        }
        anyhow::ensure!(
            !origins.is_empty(),
            "{SETTING} is empty: name at least one origin"
        );
        Ok(Self(origins))
    }

    fn allows(&self, url: &Url) -> bool {
        Origin::of(url).is_some_and(|o| self.0.contains(&o))
    }

    /// Whether `address`, which `host` resolved to, may be connected to: a public address
    /// always; an internal one only when the allowlist names `host` as an internal host (the
    /// address itself, or a single-label name, which only local resolution answers).
    fn may_connect(&self, host: &str, address: IpAddr) -> bool {
        if is_public(address) {
            return true;
        }
        let host = host.to_ascii_lowercase();
        self.0.iter().any(|o| {
            o.host == host && (o.host.parse::<IpAddr>() == Ok(address) || !o.host.contains('.'))
        })
    }
}

impl std::fmt::Display for AllowedOrigins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let all: Vec<String> = self.0.iter().map(Origin::to_string).collect();
        f.write_str(&all.join(","))
    }
}

/// Whether an address is on the public internet: not loopback, private (RFC 1918, unique local),
/// link-local (cloud metadata lives there), shared (CGNAT), unspecified, multicast, broadcast,
/// documentation or reserved; IPv4-mapped IPv6 addresses are judged as their IPv4 address.
fn is_public(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0)
                || (a == 198 && (18..20).contains(&b))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8)
        }
    }
}

/// Resolves names as the system does, then keeps only the addresses the allowlist lets the
/// consumer connect to (IP-address hosts are not resolved: the allowlist named them).
struct CheckedResolver(AllowedOrigins);

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allowed = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let usable: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| allowed.may_connect(&host, a.ip()))
                .collect();
            if usable.is_empty() {
                let seen: Vec<String> = found.iter().map(|a| a.ip().to_string()).collect();
                return Err(format!(
                    "{host} resolves only to internal addresses ({}), which {SETTING} does not \
                     name",
                    seen.join(", ")
                )
                .into());
            }
            Ok(Box::new(usable.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Why a download was refused; the message is reported for the announcement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DownloadError(pub String);

impl DownloadError {
    /// A failed request, without reqwest's copy of the URL (the report names the announcement)
    /// and scrubbed of secrets.
    fn failed(what: &str, e: reqwest::Error) -> Self {
        let e = e.without_url();
        let mut text = format!("{what}: {e}");
        let mut source = std::error::Error::source(&e);
        while let Some(inner) = source {
            text.push_str(": ");
            text.push_str(&inner.to_string());
            source = inner.source();
        }
        DownloadError(documents_kit::secrets::scrub(&text).into_owned())
    }
}

#[derive(Clone)]
pub struct Downloader {
    client: reqwest::Client,
    limits: DownloadLimits,
    permits: Arc<Semaphore>,
}

impl Downloader {
    pub fn new(limits: DownloadLimits) -> anyhow::Result<Self> {
        documents_kit::security::install_crypto_provider();
        let allowed = limits.allowed.clone();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("consumer-service/", env!("CARGO_PKG_VERSION")))
            // A proxy would resolve names itself, past the address check.
            .no_proxy()
            .referer(false)
            .dns_resolver(Arc::new(CheckedResolver(limits.allowed.clone())))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() > MAX_REDIRECTS {
                    attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
                } else if allowed.allows(attempt.url()) {
                    attempt.follow()
                } else {
                    let to = Origin::of(attempt.url())
                        .map(|o| o.to_string())
                        .unwrap_or_default();
                    attempt.error(format!(
                        "a redirect to {to}, which {SETTING} does not allow"
                    ))
                }
            }))
            .build()?;
        Ok(Self {
            client,
            permits: Arc::new(Semaphore::new(limits.concurrency.max(1))),
            limits,
        })
    }

    /// Downloads a PDF; answers its bytes.
    pub async fn pdf(&self, url: &str) -> Result<Vec<u8>, DownloadError> {
        let url = Url::parse(url)
            .map_err(|e| DownloadError(format!("refused: the PDF URL is not a URL ({e})")))?;
        if !self.limits.allowed.allows(&url) {
            let origin = Origin::of(&url)
                .map(|o| o.to_string())
                .unwrap_or_else(|| "a URL without a host".into());
            return Err(DownloadError(format!(
                "refused: {origin} is not one of the allowed origins ({SETTING})"
            )));
        }
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| DownloadError("downloads are shutting down".into()))?;
        match tokio::time::timeout(self.limits.timeout, self.fetch(url)).await {
            Ok(r) => r,
            Err(_) => Err(DownloadError(format!(
                "download timed out after {} ms",
                self.limits.timeout.as_millis()
            ))),
        }
    }

    async fn fetch(&self, url: Url) -> Result<Vec<u8>, DownloadError> {
        // The PDF's host joins the caller's trace (W3C traceparent): it is an allowed origin,
        // and so is every host a redirect leads to.
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(trace) = documents_kit::trace::TraceContext::current() {
            trace.inject(&mut headers);
        }
        let mut resp = self
            .client
            .get(url)
            .headers(headers)
            .send()
            .await
            .map_err(|e| DownloadError::failed("download failed", e))?;
        if !resp.status().is_success() {
            return Err(DownloadError(format!(
                "download answered {}",
                resp.status()
            )));
        }
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        if !(content_type.starts_with("application/pdf")
            || content_type.starts_with("application/octet-stream"))
        {
            return Err(DownloadError(format!(
                "not a PDF: content type {content_type:?}"
            )));
        }
        let max = self.limits.max_bytes;
        if resp.content_length().is_some_and(|n| n > max as u64) {
            return Err(DownloadError(format!(
                "too large: more than the {max}-byte limit"
            )));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| DownloadError::failed("download failed while reading", e))?
        {
            if body.len() + chunk.len() > max {
                return Err(DownloadError(format!(
                    "too large: more than the {max}-byte limit"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        if !body.starts_with(b"%PDF-") {
            return Err(DownloadError(
                "not a PDF: the body does not start with %PDF-".into(),
            ));
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_parse_and_match_scheme_host_and_port() {
        let a = AllowedOrigins::parse("https://www.asx.com.au, http://127.0.0.1:8700").unwrap();
        let url = |s: &str| Url::parse(s).unwrap();
        assert!(a.allows(&url("https://www.asx.com.au/asx/x.pdf?idsId=1")));
        assert!(a.allows(&url("https://WWW.ASX.COM.AU:443/x")));
        assert!(a.allows(&url("http://127.0.0.1:8700/asx/v2/x")));
        assert!(!a.allows(&url("http://www.asx.com.au/x")), "scheme");
        assert!(!a.allows(&url("https://www.asx.com.au:8443/x")), "port");
        assert!(!a.allows(&url("http://127.0.0.1:8701/x")), "port");
        assert!(!a.allows(&url("https://asx.com.au.evil.example/x")), "host");
        assert!(!a.allows(&url("http://169.254.169.254/latest/meta-data")));
        assert_eq!(
            a.to_string(),
            "https://www.asx.com.au:443,http://127.0.0.1:8700"
        );
        for bad in [
            "",
            "ftp://x",
            "https://user:pw@x",
            "https://x/path",
            "not a url",
        ] {
            let e = AllowedOrigins::parse(bad).unwrap_err().to_string();
            assert!(e.contains(SETTING), "{bad}: {e}");
        }
    }

    #[test]
    fn internal_addresses_only_where_named() {
        let a = AllowedOrigins::parse(
            "https://www.asx.com.au,http://sample-exchange:8700,http://10.1.2.3:80",
        )
        .unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(a.may_connect("www.asx.com.au", ip("8.8.8.8")));
        // A public name that resolves inside: DNS rebinding, refused.
        for inside in [
            "127.0.0.1",
            "10.0.0.5",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!a.may_connect("www.asx.com.au", ip(inside)), "{inside}");
        }
        // Named as internal hosts: a single-label name, or the address itself.
        assert!(a.may_connect("sample-exchange", ip("172.18.0.4")));
        assert!(a.may_connect("10.1.2.3", ip("10.1.2.3")));
        assert!(!a.may_connect("10.1.2.3", ip("10.1.2.4")));
        // A name the list does not name at all gets nothing internal.
        assert!(!a.may_connect("metadata", ip("169.254.169.254")));
    }

    /// Real resolution: `localhost` is loopback, refused unless the list names it.
    #[tokio::test]
    async fn the_resolver_refuses_internal_addresses_of_unnamed_hosts() {
        use reqwest::dns::Resolve;
        let name = || "localhost".parse::<reqwest::dns::Name>().unwrap();
        let strict = CheckedResolver(AllowedOrigins::parse("https://www.asx.com.au").unwrap());
        let err = match strict.resolve(name()).await {
            Ok(_) => panic!("localhost must be refused"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("internal addresses") && err.contains(SETTING),
            "{err}"
        );
        let named = CheckedResolver(AllowedOrigins::parse("http://localhost:8700").unwrap());
        let addrs: Vec<SocketAddr> = named.resolve(name()).await.unwrap().collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()) && !addrs.is_empty());
    }
}
