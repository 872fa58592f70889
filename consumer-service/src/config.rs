//! Configuration: every option is a command-line flag with an environment variable behind it.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use documents_api::ClientConfig;
use documents_kit::telemetry::LogFormat;

use crate::{
    download::{AllowedOrigins, DownloadLimits},
    job::JobSettings,
};

/// Headline/type filters used when a request names none.
pub const DEFAULT_FILTERS: &str = "Annual Report,Full Year,FY,Preliminary Final Report,Appendix 4E";

#[derive(Debug, Parser)]
#[command(
    name = "consumer-service",
    version = documents_kit::build_info::LONG_VERSION,
    about = "gRPC consumer: asks the provider for announcements, reads them from the shared database and downloads the PDFs that matter"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve gRPC (the default).
    Serve,
    /// Call grpc.health.v1.Health/Check on the configured listen address; exit 0 only when SERVING.
    Healthcheck {
        /// Probe liveness (the process answers) instead of readiness (the service can work).
        #[arg(long)]
        liveness: bool,
    },
    /// Process tickers once, print one report per ticker, and exit (non-zero if any failed).
    Process {
        /// Tickers, e.g. ASX:GNP BHP.
        #[arg(required = true)]
        tickers: Vec<String>,
        /// Print the reports as JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Keep tickers current: process each once, then again whenever the provider says its
    /// announcements document changed (WatchDocuments; no polling). Prints one report per
    /// round until stopped (SIGTERM/Ctrl-C).
    Watch {
        /// Tickers, e.g. ASX:GNP BHP.
        #[arg(required = true)]
        tickers: Vec<String>,
        /// Print the reports as JSON lines.
        #[arg(long)]
        json: bool,
    },
}

documents_kit::server_args!(ServerArgs, "CONSUMER", request_timeout_ms = 600_000);
documents_kit::server_security_args!(ConsumerSecurity, "CONSUMER");

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address the gRPC server listens on.
    #[arg(long, env = "CONSUMER_LISTEN_ADDR", default_value = "127.0.0.1:50052")]
    pub listen_addr: String,

    /// The shared database.
    #[command(flatten)]
    pub database: documents_kit::config::DatabaseArgs,

    /// Who may call: CONSUMER_AUTH_TOKEN(_FILE), CONSUMER_TLS_CERT/_KEY/_CLIENT_CA/_CA.
    #[command(flatten)]
    pub security: ConsumerSecurity,

    /// Provider endpoints, comma-separated; calls are balanced over them.
    #[arg(long, env = "PROVIDER_URL", default_value = "http://127.0.0.1:50051")]
    pub provider_url: String,

    /// Bearer token sent to the provider.
    #[arg(long, env = "PROVIDER_AUTH_TOKEN", hide_env_values = true)]
    pub provider_auth_token: Option<String>,

    /// File holding the bearer token sent to the provider (instead of PROVIDER_AUTH_TOKEN).
    #[arg(long, env = "PROVIDER_AUTH_TOKEN_FILE")]
    pub provider_auth_token_file: Option<String>,

    /// CA (PEM) trusted for `https://` provider URLs (default: the system's roots).
    #[arg(long, env = "PROVIDER_TLS_CA")]
    pub provider_tls_ca: Option<String>,

    /// Client certificate (PEM) presented to the provider (mutual TLS).
    #[arg(long, env = "PROVIDER_TLS_CLIENT_CERT")]
    pub provider_tls_client_cert: Option<String>,

    /// Client key (PEM) for PROVIDER_TLS_CLIENT_CERT.
    #[arg(long, env = "PROVIDER_TLS_CLIENT_KEY")]
    pub provider_tls_client_key: Option<String>,

    /// Deadline of one provider call, in milliseconds (shortened to the caller's own deadline).
    #[arg(long, env = "PROVIDER_TIMEOUT_MS", default_value_t = 30_000)]
    pub provider_timeout_ms: u64,

    /// Retries of a provider call that answered UNAVAILABLE (exponential backoff, equal jitter).
    #[arg(long, env = "PROVIDER_RETRIES", default_value_t = documents_api::client::DEFAULT_RETRIES)]
    pub provider_retries: u32,

    /// First retry backoff, in milliseconds; doubles per retry up to 2 s.
    #[arg(long, env = "PROVIDER_BACKOFF_MS", default_value_t = 100)]
    pub provider_backoff_ms: u64,

    /// Headline or type filters (comma-separated, case-insensitive, whole words).
    #[arg(long, env = "CONSUMER_FILTERS", default_value = DEFAULT_FILTERS)]
    pub filters: String,

    /// PDFs downloaded per ticker at most.
    #[arg(long, env = "CONSUMER_MAX_DOWNLOADS", default_value_t = 5)]
    pub max_downloads: u32,

    /// Timeout of one PDF download, in milliseconds.
    #[arg(long, env = "CONSUMER_DOWNLOAD_TIMEOUT_MS", default_value_t = 20_000)]
    pub download_timeout_ms: u64,

    /// Largest PDF accepted, in bytes.
    #[arg(long, env = "CONSUMER_DOWNLOAD_MAX_BYTES", default_value_t = 20 * 1024 * 1024)]
    pub download_max_bytes: usize,

    /// Origins (scheme://host[:port], comma-separated) PDFs may be downloaded from; redirects
    /// are followed only within them. A name that resolves to a private, loopback or
    /// link-local address is refused unless listed as an IP address or a single-label name.
    #[arg(
        long,
        env = "CONSUMER_DOWNLOAD_ALLOWED_ORIGINS",
        default_value = crate::download::DEFAULT_ALLOWED_ORIGINS
    )]
    pub download_allowed_origins: String,

    /// PDF downloads running at once in this process.
    #[arg(long, env = "CONSUMER_DOWNLOAD_CONCURRENCY", default_value_t = 4)]
    pub download_concurrency: usize,

    /// Tickers processed at once within one request.
    #[arg(long, env = "CONSUMER_TICKER_CONCURRENCY", default_value_t = 8)]
    pub ticker_concurrency: usize,

    /// Most tickers accepted in one ProcessTickers request.
    #[arg(long, env = "CONSUMER_MAX_TICKERS", default_value_t = 1000)]
    pub max_tickers: usize,

    /// Connections, calls and their limits.
    #[command(flatten)]
    pub server: ServerArgs,

    /// Address of the Prometheus metrics endpoint (`GET /metrics`); unset: no endpoint.
    #[arg(long, env = "CONSUMER_METRICS_ADDR")]
    pub metrics_addr: Option<String>,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl Config {
    pub fn client_config(&self) -> anyhow::Result<ClientConfig> {
        let auth_token = documents_kit::security::secret(
            self.provider_auth_token.as_deref(),
            self.provider_auth_token_file.as_deref(),
            "PROVIDER_AUTH_TOKEN",
        )?;
        let tls = documents_kit::security::client_tls(
            self.provider_tls_ca.as_deref(),
            self.provider_tls_client_cert.as_deref(),
            self.provider_tls_client_key.as_deref(),
        )?;
        Ok(ClientConfig {
            timeout: Duration::from_millis(self.provider_timeout_ms),
            retries: self.provider_retries,
            initial_backoff: Duration::from_millis(self.provider_backoff_ms),
            max_backoff: Duration::from_secs(2),
            auth_token,
            tls: Some(tls),
            ..ClientConfig::default()
        })
    }

    pub fn job_settings(&self) -> JobSettings {
        JobSettings {
            default_filters: split_filters(&self.filters),
            max_downloads: self.max_downloads,
            ticker_concurrency: self.ticker_concurrency.max(1),
            max_tickers: self.max_tickers,
            provider_timeout: Duration::from_millis(self.provider_timeout_ms),
        }
    }

    pub fn download_limits(&self) -> anyhow::Result<DownloadLimits> {
        Ok(DownloadLimits {
            timeout: Duration::from_millis(self.download_timeout_ms),
            max_bytes: self.download_max_bytes,
            concurrency: self.download_concurrency.max(1),
            // Empty (a compose file's `VAR=`) counts as unset.
            allowed: AllowedOrigins::parse(
                Some(self.download_allowed_origins.as_str())
                    .filter(|v| !v.trim().is_empty())
                    .unwrap_or(crate::download::DEFAULT_ALLOWED_ORIGINS),
            )?,
        })
    }
}

pub fn split_filters(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod cli_tests {
    use clap::CommandFactory;

    /// Every flag and variable is declared once (clap's own consistency checks).
    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
