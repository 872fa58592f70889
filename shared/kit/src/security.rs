//! The servers' access settings ([`server_security_args!`]: bearer token, TLS, mutual TLS; the
//! check itself is [`crate::access`]), secrets given directly or in a file, TLS configuration
//! (server identity, client CA for mutual TLS, client trust and identity) read from PEM files,
//! and the process's TLS provider.

use anyhow::Context;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Makes rustls's ring provider the process's default, once: tonic, sqlx and reqwest all speak
/// TLS through rustls, and reqwest (built without a provider of its own, so that only ring is
/// compiled in) takes the process default. Call before building an HTTP client; idempotent.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Another part of the process may have installed one first: that one serves.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Declares a server's access settings (`$prefix` is `PROVIDER` or `CONSUMER`): a bearer token
/// (or a file holding it) every RPC but health and reflection requires, and TLS with optional mutual TLS, with
/// how the `healthcheck` subcommand reaches a server so configured. The crate that expands it
/// depends on clap, anyhow and tonic (as both services do). Read the token with
/// `required_token()`, which also reads the `_FILE` setting, never from the field.
#[macro_export]
macro_rules! server_security_args {
    ($name:ident, $prefix:literal) => {
        /// Who may call the server, and over what.
        #[derive(Debug, Clone, Default, clap::Args)]
        pub struct $name {
            /// Bearer token required on every RPC but health. Unset: no authentication.
            #[arg(long, env = concat!($prefix, "_AUTH_TOKEN"), hide_env_values = true)]
            pub auth_token: Option<String>,

            /// File holding the bearer token (instead of the token itself).
            #[arg(long, env = concat!($prefix, "_AUTH_TOKEN_FILE"))]
            pub auth_token_file: Option<String>,

            /// TLS certificate chain (PEM); with the TLS key, the server speaks only TLS.
            #[arg(long, env = concat!($prefix, "_TLS_CERT"))]
            pub tls_cert: Option<String>,

            /// TLS private key (PEM).
            #[arg(long, env = concat!($prefix, "_TLS_KEY"))]
            pub tls_key: Option<String>,

            /// CA (PEM) whose client certificates are required (mutual TLS).
            #[arg(long, env = concat!($prefix, "_TLS_CLIENT_CA"))]
            pub tls_client_ca: Option<String>,

            /// CA (PEM) the `healthcheck` subcommand trusts; unset, it trusts the server's
            /// certificate itself, which only works for a self-signed one.
            #[arg(long, env = concat!($prefix, "_TLS_CA"))]
            pub tls_ca: Option<String>,
        }

        impl $name {
            /// The bearer token required on every RPC but health, if any.
            pub fn required_token(&self) -> anyhow::Result<Option<String>> {
                $crate::security::secret(
                    self.auth_token.as_deref(),
                    self.auth_token_file.as_deref(),
                    concat!($prefix, "_AUTH_TOKEN"),
                )
            }

            /// The server's TLS, if configured.
            pub fn server_tls(&self) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
                $crate::security::server_tls(
                    self.tls_cert.as_deref(),
                    self.tls_key.as_deref(),
                    self.tls_client_ca.as_deref(),
                    $prefix,
                )
            }

            /// How the `healthcheck` subcommand reaches this server: over TLS when it serves
            /// TLS, trusting the TLS CA setting or the server's own certificate, presenting
            /// the server's certificate when clients must present one.
            pub fn healthcheck_tls(
                &self,
            ) -> anyhow::Result<Option<tonic::transport::ClientTlsConfig>> {
                if self.server_tls()?.is_none() {
                    return Ok(None);
                }
                let ca = self.tls_ca.as_deref().or(self.tls_cert.as_deref());
                let (cert, key) = match self.tls_client_ca.as_deref() {
                    Some(_) => (self.tls_cert.as_deref(), self.tls_key.as_deref()),
                    None => (None, None),
                };
                Ok(Some($crate::security::client_tls(ca, cert, key)?))
            }
        }
    };
}

/// A secret from its value or from a file (trimmed); both set is an error. Empty counts as unset.
/// The value is registered with [`crate::secrets`], so it never leaves the process in a log
/// line or an error.
pub fn secret(
    value: Option<&str>,
    file: Option<&str>,
    name: &str,
) -> anyhow::Result<Option<String>> {
    let value = value.filter(|v| !v.trim().is_empty());
    let file = file.filter(|f| !f.trim().is_empty());
    match (value, file) {
        (Some(_), Some(_)) => anyhow::bail!("{name} and {name}_FILE are both set: set one"),
        (Some(v), None) => {
            crate::secrets::register(v);
            Ok(Some(v.trim().to_string()))
        }
        (None, Some(f)) => {
            let v =
                std::fs::read_to_string(f).with_context(|| format!("reading {name}_FILE {f:?}"))?;
            let v = v.trim().to_string();
            anyhow::ensure!(!v.is_empty(), "{name}_FILE {f:?} is empty");
            crate::secrets::register(&v);
            Ok(Some(v))
        }
        (None, None) => Ok(None),
    }
}

fn read(path: &str, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {what} {path:?}"))
}

/// A private key file, registered with [`crate::secrets`] as it is read.
fn read_key(path: &str, what: &str) -> anyhow::Result<Vec<u8>> {
    let key = read(path, what)?;
    crate::secrets::register_pem(&String::from_utf8_lossy(&key));
    Ok(key)
}

fn set(v: Option<&str>) -> Option<&str> {
    v.filter(|s| !s.trim().is_empty())
}

/// Server TLS from a certificate chain and key (PEM); with `client_ca`, clients must present a
/// certificate signed by it (mutual TLS). `None` when no certificate is configured. Errors name
/// the settings, `{prefix}_TLS_CERT`, `{prefix}_TLS_KEY` and `{prefix}_TLS_CLIENT_CA`.
pub fn server_tls(
    cert: Option<&str>,
    key: Option<&str>,
    client_ca: Option<&str>,
    prefix: &str,
) -> anyhow::Result<Option<ServerTlsConfig>> {
    let (cert_var, key_var, ca_var) = (
        format!("{prefix}_TLS_CERT"),
        format!("{prefix}_TLS_KEY"),
        format!("{prefix}_TLS_CLIENT_CA"),
    );
    match (set(cert), set(key)) {
        (None, None) => {
            anyhow::ensure!(
                set(client_ca).is_none(),
                "{ca_var} is set without {cert_var} and {key_var}: mutual TLS needs the server's \
                 own certificate and key"
            );
            Ok(None)
        }
        (Some(c), Some(k)) => {
            let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(
                read(c, &cert_var)?,
                read_key(k, &key_var)?,
            ));
            if let Some(ca) = set(client_ca) {
                tls = tls.client_ca_root(Certificate::from_pem(read(ca, &ca_var)?));
            }
            Ok(Some(tls))
        }
        _ => anyhow::bail!("{cert_var} and {key_var} must be set together (TLS needs both)"),
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
                read_key(k, "TLS client key")?,
            ))
        }
        (None, None) => {}
        _ => anyhow::bail!("a TLS client identity needs both a certificate and a key"),
    }
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_tls_errors_name_the_settings() {
        let e = server_tls(Some("cert.pem"), None, None, "CONSUMER").unwrap_err();
        assert_eq!(
            e.to_string(),
            "CONSUMER_TLS_CERT and CONSUMER_TLS_KEY must be set together (TLS needs both)"
        );
        let e = server_tls(None, None, Some("ca.pem"), "PROVIDER").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("PROVIDER_TLS_CLIENT_CA is set without PROVIDER_TLS_CERT"),
            "{e}"
        );
        let e = server_tls(Some("/nonexistent/cert.pem"), Some("k"), None, "PROVIDER").unwrap_err();
        assert!(e.to_string().contains("PROVIDER_TLS_CERT"), "{e}");
        assert!(server_tls(None, Some(" "), None, "PROVIDER")
            .unwrap()
            .is_none());
    }
}
