//! Configuration: every option is a command-line flag with an environment variable behind it.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use documents_api::Kind;
use documents_kit::telemetry::LogFormat;

use crate::{
    provisioner::Settings,
    sources::{HttpLimits, SourceSettings, UpstreamUrls},
};

#[derive(Debug, Parser)]
#[command(
    name = "provider-service",
    version = documents_kit::build_info::LONG_VERSION,
    about = "gRPC document provider: makes sure fresh documents exist in the shared database and answers their IDs"
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
    /// Apply the database migrations and exit (run once before a deploy, e.g. as a Kubernetes
    /// Job, when the services run with DATABASE_MIGRATE=false).
    Migrate,
    /// Check the shared database against the invariants (one row per source key, no document
    /// without content, every attachment referenced, no expired lease held); exit 1 on any
    /// violation.
    CheckInvariants,
}

documents_kit::server_args!(ServerArgs, "PROVIDER", request_timeout_ms = 60_000);
documents_kit::server_security_args!(ProviderSecurity, "PROVIDER");

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address the gRPC server listens on.
    #[arg(long, env = "PROVIDER_LISTEN_ADDR", default_value = "127.0.0.1:50051")]
    pub listen_addr: String,

    /// The shared database.
    #[command(flatten)]
    pub database: documents_kit::config::DatabaseArgs,

    /// Who may call: PROVIDER_AUTH_TOKEN(_FILE), PROVIDER_TLS_CERT/_KEY/_CLIENT_CA/_CA.
    #[command(flatten)]
    pub security: ProviderSecurity,

    /// Bearer token that opens the read RPCs only (GetDocument, GetDocuments,
    /// EnsureDocuments, StreamDocuments, WatchDocuments; health and reflection need none):
    /// InvalidateDocuments and the Admin service answer it PERMISSION_DENIED. The token to give
    /// the consumer.
    #[arg(long, env = "PROVIDER_READ_TOKEN", hide_env_values = true)]
    pub read_token: Option<String>,

    /// File holding the read token, instead of PROVIDER_READ_TOKEN.
    #[arg(long, env = "PROVIDER_READ_TOKEN_FILE")]
    pub read_token_file: Option<String>,

    /// Kind served when a request leaves `kind` empty.
    #[arg(long, env = "PROVIDER_DEFAULT_KIND", default_value = "announcement", value_parser = parse_kind)]
    pub default_kind: Kind,

    /// Freshness window in hours when a request leaves `options.cache_hours` unset.
    #[arg(long, env = "PROVIDER_DEFAULT_CACHE_HOURS", default_value_t = 24)]
    pub default_cache_hours: u32,

    /// Exchange given to bare codes such as "GNP".
    #[arg(long, env = "PROVIDER_DEFAULT_EXCHANGE", default_value = "ASX")]
    pub default_exchange: String,

    /// Largest batch accepted by GetDocuments and EnsureDocuments.
    #[arg(long, env = "PROVIDER_MAX_BATCH_SIZE", default_value_t = 1000)]
    pub max_batch_size: usize,

    /// Upstream fetches of fills running at once in this process (a fill's writing, after its
    /// fetch, is bounded by the database pool).
    #[arg(long, env = "PROVIDER_FILL_CONCURRENCY", default_value_t = 32)]
    pub fill_concurrency: usize,

    /// Upstream fetches of fills running at once in this process, per source (kind).
    #[arg(
        long,
        env = "PROVIDER_FILL_CONCURRENCY_PER_SOURCE",
        default_value_t = 32
    )]
    pub fill_concurrency_per_source: usize,

    /// How long a fill lease lasts unless renewed (its holder renews it every third of this while
    /// fetching); a crashed filler's fill is taken over after this, in milliseconds.
    #[arg(long, env = "PROVIDER_FILL_LEASE_MS", default_value_t = 10_000)]
    pub fill_lease_ms: u64,

    /// How long a failed fill's error is answered without trying again, in milliseconds (0: off).
    #[arg(long, env = "PROVIDER_NEGATIVE_CACHE_MS", default_value_t = 5_000)]
    pub negative_cache_ms: u64,

    /// Answer hits from memory, kept in step by the database's change feed (PostgreSQL LISTEN/NOTIFY,
    /// SQLite PRAGMA data_version).
    #[arg(long, env = "PROVIDER_HIT_CACHE", default_value_t = true, action = clap::ArgAction::Set)]
    pub hit_cache: bool,

    /// Longest time a document is answered from memory without reading the database again, in
    /// milliseconds: bounds the staleness of writes that bypass the change feed's trigger.
    #[arg(long, env = "PROVIDER_HIT_CACHE_MAX_AGE_MS", default_value_t = 1_000)]
    pub hit_cache_max_age_ms: u64,

    /// Documents answered from memory at most; past it the least recently used eighth is
    /// evicted (about 500 bytes each).
    #[arg(long, env = "PROVIDER_HIT_CACHE_MAX_ENTRIES", default_value_t = crate::provisioner::DEFAULT_HIT_CACHE_MAX_ENTRIES as u64, value_parser = clap::value_parser!(u64).range(1..))]
    pub hit_cache_max_entries: u64,

    /// Refresh-ahead: documents asked for often are refreshed this many seconds before they go
    /// stale for the window they are asked with; 0: off.
    #[arg(long, env = "PROVIDER_REFRESH_AHEAD_SECS", default_value_t = 0)]
    pub refresh_ahead_secs: u64,

    /// Single-identifier cache hits are logged at DEBUG each, and summed up in one INFO line per
    /// kind (`hits answered`) every this many seconds.
    #[arg(long, env = "PROVIDER_HIT_LOG_SECS", default_value_t = 60)]
    pub hit_log_secs: u64,

    /// WatchDocuments: documents one watch by tag may cover; past it the stream ends
    /// RESOURCE_EXHAUSTED (reason WATCH_OVERFLOW).
    #[arg(long, env = "PROVIDER_WATCH_MAX_DOCUMENTS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub watch_max_documents: u64,

    /// WatchDocuments: a heartbeat event is sent on every watch this often, in milliseconds,
    /// while the change feed is alive.
    #[arg(long, env = "PROVIDER_WATCH_HEARTBEAT_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub watch_heartbeat_ms: u64,

    /// Refresh-ahead: calls since its last refresh-ahead that make a document popular.
    #[arg(long, env = "PROVIDER_REFRESH_AHEAD_MIN_CALLS", default_value_t = 2)]
    pub refresh_ahead_min_calls: u32,

    /// Replaces scheme and host of every upstream (listing, JSON API, PDFs, market data).
    #[arg(long, env = "UPSTREAM_BASE_URL")]
    pub upstream_base_url: Option<String>,

    /// Base URL of the ASX website (announcement listing and PDFs); overrides UPSTREAM_BASE_URL.
    #[arg(long, env = "ASX_BASE_URL")]
    pub asx_base_url: Option<String>,

    /// Base URL of the Markit Digital announcements API; overrides UPSTREAM_BASE_URL.
    #[arg(long, env = "MARKIT_BASE_URL")]
    pub markit_base_url: Option<String>,

    /// Base URL of the end-of-day prices API; overrides UPSTREAM_BASE_URL.
    #[arg(long, env = "MARKET_DATA_BASE_URL")]
    pub market_data_base_url: Option<String>,

    /// API token sent to the end-of-day prices API.
    #[arg(long, env = "MARKET_DATA_API_TOKEN", hide_env_values = true)]
    pub market_data_api_token: Option<String>,

    /// File holding the end-of-day prices API token (instead of MARKET_DATA_API_TOKEN).
    #[arg(long, env = "MARKET_DATA_API_TOKEN_FILE")]
    pub market_data_api_token_file: Option<String>,

    /// Calendar years of announcements a fill fetches (the current one and those before).
    #[arg(long, env = "ANNOUNCEMENT_YEARS", default_value_t = 2)]
    pub announcement_years: u32,

    /// Upstream connect timeout, in milliseconds.
    #[arg(long, env = "UPSTREAM_CONNECT_TIMEOUT_MS", default_value_t = 5_000)]
    pub upstream_connect_timeout_ms: u64,

    /// Upstream total request timeout, in milliseconds.
    #[arg(long, env = "UPSTREAM_TIMEOUT_MS", default_value_t = 20_000)]
    pub upstream_timeout_ms: u64,

    /// How long an idle upstream connection is kept for reuse, in milliseconds.
    #[arg(long, env = "UPSTREAM_POOL_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub upstream_pool_idle_timeout_ms: u64,

    /// Largest upstream response body accepted, in bytes.
    #[arg(long, env = "UPSTREAM_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub upstream_max_body_bytes: usize,

    /// Requests per second per upstream host, for the whole process (0: unlimited).
    #[arg(long, env = "UPSTREAM_RATE_LIMIT", default_value_t = 20.0)]
    pub upstream_rate_limit: f64,

    /// Retries of a failed upstream GET (connection failures and 5xx).
    #[arg(long, env = "UPSTREAM_RETRIES", default_value_t = 2)]
    pub upstream_retries: u32,

    /// Connections, calls and their limits.
    #[command(flatten)]
    pub server: ServerArgs,

    /// Address of the Prometheus metrics endpoint (`GET /metrics`); unset: no endpoint.
    #[arg(long, env = "PROVIDER_METRICS_ADDR")]
    pub metrics_addr: Option<String>,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

fn parse_kind(s: &str) -> Result<Kind, String> {
    s.parse::<Kind>()
        .map_err(|e| format!("{e}: expected announcement, market_data or dividends"))
}

impl Config {
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let exchange = self.default_exchange.trim().to_ascii_uppercase();
        if !documents_api::ticker::KNOWN_EXCHANGES.contains(&exchange.as_str()) {
            anyhow::bail!(
                "--default-exchange {exchange:?} is unknown: expected one of {}",
                documents_api::ticker::KNOWN_EXCHANGES.join(", ")
            );
        }
        Ok(Settings {
            default_kind: self.default_kind,
            default_cache_hours: self.default_cache_hours,
            default_exchange: exchange,
            max_batch_size: self.max_batch_size,
            fill_concurrency: self.fill_concurrency,
            fill_concurrency_per_source: self.fill_concurrency_per_source,
            lease_ttl: Duration::from_millis(self.fill_lease_ms.max(1)),
            negative_cache_ttl: Duration::from_millis(self.negative_cache_ms),
            hit_cache: self.hit_cache,
            hit_cache_max_age: Duration::from_millis(self.hit_cache_max_age_ms),
            hit_cache_max_entries: usize::try_from(self.hit_cache_max_entries)
                .unwrap_or(usize::MAX),
            refresh_ahead: (self.refresh_ahead_secs > 0).then(|| {
                crate::provisioner::RefreshAhead {
                    margin: Duration::from_secs(self.refresh_ahead_secs),
                    min_calls: self.refresh_ahead_min_calls.max(1),
                }
            }),
            watch: crate::provisioner::WatchSettings {
                max_documents: usize::try_from(self.watch_max_documents).unwrap_or(usize::MAX),
                heartbeat_every: Duration::from_millis(self.watch_heartbeat_ms),
            },
            ..Settings::default()
        })
    }

    pub fn source_settings(&self) -> anyhow::Result<SourceSettings> {
        Ok(SourceSettings {
            urls: UpstreamUrls::resolve(
                self.upstream_base_url.as_deref(),
                self.asx_base_url.as_deref(),
                self.markit_base_url.as_deref(),
                self.market_data_base_url.as_deref(),
            )?,
            http: HttpLimits {
                connect_timeout: Duration::from_millis(self.upstream_connect_timeout_ms),
                total_timeout: Duration::from_millis(self.upstream_timeout_ms),
                pool_idle_timeout: Duration::from_millis(self.upstream_pool_idle_timeout_ms),
                max_body_bytes: self.upstream_max_body_bytes,
                rate_per_host: self.upstream_rate_limit,
                retries: self.upstream_retries,
            },
            announcement_years: self.announcement_years,
            market_data_api_token: documents_kit::security::secret(
                self.market_data_api_token.as_deref(),
                self.market_data_api_token_file.as_deref(),
                "MARKET_DATA_API_TOKEN",
            )?,
        })
    }
}

impl Config {
    /// Who may call which method: PROVIDER_AUTH_TOKEN every one, PROVIDER_READ_TOKEN the reads.
    pub fn access(&self) -> anyhow::Result<documents_kit::access::Access> {
        let read = documents_kit::security::secret(
            self.read_token.as_deref(),
            self.read_token_file.as_deref(),
            "PROVIDER_READ_TOKEN",
        )?;
        Ok(documents_kit::access::Access::new(
            self.security.required_token()?.as_deref(),
            read.as_deref(),
            READ_METHODS,
        ))
    }
}

/// The methods a read token opens. Any other method needs PROVIDER_AUTH_TOKEN.
pub const READ_METHODS: &[&str] = &[
    "/documents.v1.DocumentProvider/GetDocument",
    "/documents.v1.DocumentProvider/GetDocuments",
    "/documents.v1.DocumentProvider/EnsureDocuments",
    "/documents.v1.DocumentProvider/StreamDocuments",
    "/documents.v1.DocumentProvider/WatchDocuments",
];

#[cfg(test)]
mod cli_tests {
    use clap::CommandFactory;

    /// Every flag and variable is declared once (clap's own consistency checks).
    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
