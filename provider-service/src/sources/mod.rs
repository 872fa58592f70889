//! Sources: what a fill fetches. One [`Source`] per document kind, all sharing one
//! [`HttpClient`] and one set of upstream base URLs.

pub mod announcements;
pub mod dividends;
pub mod http;
pub mod market_data;

use std::{collections::HashMap, sync::Arc};

use async_trait::async_trait;
use documents_api::{Kind, Ticker};
use documents_store::NewContent;
use reqwest::Url;

pub use http::{HttpClient, HttpLimits};

/// Why a fill could not fetch its document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The upstream does not know the company.
    #[error("{0}")]
    NotFound(String),
    /// The upstream is down, slow or overloaded (5xx, timeouts, connection failures).
    #[error("{0}")]
    Unavailable(String),
    /// The upstream answered something that cannot be parsed.
    #[error("{0}")]
    Malformed(String),
    /// The identifier is valid but this source cannot serve it (e.g. a non-ASX ticker).
    #[error("{0}")]
    Unsupported(String),
}

impl SourceError {
    pub fn code(&self) -> tonic::Code {
        match self {
            SourceError::NotFound(_) => tonic::Code::NotFound,
            SourceError::Unavailable(_) => tonic::Code::Unavailable,
            // The upstream's fault, not the provider's: a later try may get a good answer.
            SourceError::Malformed(_) => tonic::Code::Unavailable,
            SourceError::Unsupported(_) => tonic::Code::InvalidArgument,
        }
    }

    /// The `google.rpc.ErrorInfo` reason callers see.
    pub fn reason(&self) -> &'static str {
        match self {
            SourceError::NotFound(_) => "UPSTREAM_NOT_FOUND",
            SourceError::Unavailable(_) => "UPSTREAM_UNAVAILABLE",
            SourceError::Malformed(_) => "UPSTREAM_MALFORMED",
            SourceError::Unsupported(_) => "UNSUPPORTED_IDENTIFIER",
        }
    }
}

/// Fetches the content of one kind of document for a ticker.
#[async_trait]
pub trait Source: Send + Sync + 'static {
    fn kind(&self) -> Kind;
    async fn fetch(&self, ticker: &Ticker) -> Result<NewContent, SourceError>;
}

/// Base URLs of the real upstreams. `UPSTREAM_BASE_URL` replaces scheme and host of all of them.
#[derive(Debug, Clone)]
pub struct UpstreamUrls {
    /// ASX website: announcements HTML listing and announcement PDFs.
    pub asx: Url,
    /// Markit Digital JSON announcements API.
    pub markit: Url,
    /// End-of-day prices API.
    pub market_data: Url,
}

impl UpstreamUrls {
    pub const DEFAULT_ASX: &'static str = "https://www.asx.com.au";
    pub const DEFAULT_MARKIT: &'static str = "https://asx.api.markitdigital.com";
    pub const DEFAULT_MARKET_DATA: &'static str = "https://eodhd.com";

    /// Builds the URLs: per-upstream overrides first, then the common base, then the defaults.
    pub fn resolve(
        base: Option<&str>,
        asx: Option<&str>,
        markit: Option<&str>,
        market_data: Option<&str>,
    ) -> anyhow::Result<Self> {
        // Empty values (e.g. `UPSTREAM_BASE_URL=` from a compose file) count as unset.
        fn set(v: Option<&str>) -> Option<&str> {
            v.filter(|s| !s.trim().is_empty())
        }
        let base = set(base);
        let pick = |own: Option<&str>, default: &str, name: &str| -> anyhow::Result<Url> {
            let raw = set(own).or(base).unwrap_or(default);
            let url =
                Url::parse(raw).map_err(|e| anyhow::anyhow!("{name} {raw:?} is not a URL: {e}"))?;
            if !matches!(url.scheme(), "http" | "https") {
                anyhow::bail!("{name} {raw:?} must be an http or https URL");
            }
            Ok(url)
        };
        Ok(Self {
            asx: pick(asx, Self::DEFAULT_ASX, "ASX base URL")?,
            markit: pick(markit, Self::DEFAULT_MARKIT, "Markit base URL")?,
            market_data: pick(
                market_data,
                Self::DEFAULT_MARKET_DATA,
                "market data base URL",
            )?,
        })
    }
}

/// The tags every document has, whatever its kind: the kind, the company code in lower case,
/// `ticker:EXCHANGE:CODE` and `source_type:KIND`; each source adds its own after them.
pub fn common_tags(kind: Kind, ticker: &Ticker) -> Vec<String> {
    vec![
        kind.as_str().to_string(),
        ticker.code().to_lowercase(),
        format!("ticker:{ticker}"),
        format!("source_type:{kind}"),
    ]
}

/// A ticker's symbol on the EOD API (market data and dividends): `CODE.SUFFIX`, the suffix
/// naming the exchange.
pub fn eod_symbol(ticker: &Ticker) -> String {
    let suffix = match ticker.exchange() {
        "ASX" => "AU",
        "NYSE" | "NASDAQ" => "US",
        "LSE" => "LSE",
        "TSX" => "TO",
        "XETRA" => "XETRA",
        _ => "US",
    };
    format!("{}.{suffix}", ticker.code())
}

/// Joins a path (and query) onto a base URL, keeping any path prefix of the base.
pub fn join(base: &Url, path_and_query: &str) -> Url {
    let mut s = base.as_str().trim_end_matches('/').to_string();
    s.push_str(path_and_query);
    Url::parse(&s).unwrap_or_else(|_| base.clone())
}

/// The sources of the kinds this provider owns.
pub type Sources = HashMap<Kind, Arc<dyn Source>>;

/// Settings of the built-in sources.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    pub urls: UpstreamUrls,
    pub http: HttpLimits,
    /// How many calendar years of announcements (the current one and before) a fill fetches.
    pub announcement_years: u32,
    pub market_data_api_token: Option<String>,
}

/// The built-in sources: announcements, market data and dividends.
pub fn build(settings: &SourceSettings) -> anyhow::Result<Sources> {
    let http = HttpClient::new(settings.http.clone())?;
    let mut sources: Sources = HashMap::new();
    sources.insert(
        Kind::Announcement,
        Arc::new(announcements::AnnouncementsSource::new(
            http.clone(),
            settings.urls.clone(),
            settings.announcement_years,
        )),
    );
    sources.insert(
        Kind::MarketData,
        Arc::new(market_data::MarketDataSource::new(
            http.clone(),
            settings.urls.market_data.clone(),
            settings.market_data_api_token.clone(),
        )),
    );
    sources.insert(
        Kind::Dividends,
        Arc::new(dividends::DividendsSource::new(
            http,
            settings.urls.market_data.clone(),
            settings.market_data_api_token.clone(),
        )),
    );
    Ok(sources)
}
