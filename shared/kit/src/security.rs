//! Access settings both binaries share: secrets given directly or in a file, and TLS
//! configuration (server identity, client CA for mutual TLS, client trust and identity) read
//! from PEM files.

use anyhow::Context;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// A secret from its value or from a file (trimmed); both set is an error. Empty counts as unset.
pub fn secret(
    value: Option<&str>,
    file: Option<&str>,
    name: &str,
) -> anyhow::Result<Option<String>> {
    let value = value.filter(|v| !v.trim().is_empty());
    let file = file.filter(|f| !f.trim().is_empty());
    match (value, file) {
        (Some(_), Some(_)) => anyhow::bail!("{name} and {name}_FILE are both set: set one"),
        (Some(v), None) => Ok(Some(v.trim().to_string())),
        (None, Some(f)) => {
            let v =
                std::fs::read_to_string(f).with_context(|| format!("reading {name}_FILE {f:?}"))?;
            let v = v.trim().to_string();
            anyhow::ensure!(!v.is_empty(), "{name}_FILE {f:?} is empty");
            Ok(Some(v))
        }
        (None, None) => Ok(None),
    }
}

fn read(path: &str, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {what} {path:?}"))
}

fn set(v: Option<&str>) -> Option<&str> {
    v.filter(|s| !s.trim().is_empty())
}

/// Server TLS from a certificate chain and key (PEM); with `client_ca`, clients must present a
/// certificate signed by it (mutual TLS). `None` when no certificate is configured.
pub fn server_tls(
    cert: Option<&str>,
    key: Option<&str>,
    client_ca: Option<&str>,
) -> anyhow::Result<Option<ServerTlsConfig>> {
    match (set(cert), set(key)) {
        (None, None) => {
            anyhow::ensure!(
                set(client_ca).is_none(),
                "a TLS client CA needs a TLS certificate and key"
            );
            Ok(None)
        }
        (Some(c), Some(k)) => {
            let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(
                read(c, "TLS certificate")?,
                read(k, "TLS key")?,
            ));
            if let Some(ca) = set(client_ca) {
                tls = tls.client_ca_root(Certificate::from_pem(read(ca, "TLS client CA")?));
            }
            Ok(Some(tls))
        }
        _ => anyhow::bail!("TLS needs both a certificate and a key"),
    }
}

/// Client TLS trusting `ca` (PEM; the system roots when unset) and presenting `cert`/`key` when
/// set (mutual TLS).
pub fn client_tls(
    ca: Option<&str>,
    cert: Option<&str>,
    key: Option<&str>,
) -> anyhow::Result<ClientTlsConfig> {
    let mut tls = ClientTlsConfig::new();
    match set(ca) {
        Some(ca) => tls = tls.ca_certificate(Certificate::from_pem(read(ca, "TLS CA")?)),
        None => tls = tls.with_enabled_roots(),
    }
    match (set(cert), set(key)) {
        (Some(c), Some(k)) => {
            tls = tls.identity(Identity::from_pem(
                read(c, "TLS client certificate")?,
                read(k, "TLS client key")?,
            ))
        }
        (None, None) => {}
        _ => anyhow::bail!("a TLS client identity needs both a certificate and a key"),
    }
    Ok(tls)
}
