//! What a call asks of the provisioner, as the gRPC edge made it (`crate::validate`), and the
//! provisioner's settings.

use std::time::Duration;

use documents_api::{provider::DEFAULT_CACHE_HOURS, Kind, Ticker, TickerError};

/// How refresh-ahead is tuned.
#[derive(Debug, Clone, Copy)]
pub struct RefreshAhead {
    /// How long before a document goes stale it is refreshed.
    pub margin: Duration,
    /// Calls since its last refresh-ahead that make a document popular.
    pub min_calls: u32,
}

/// Provisioning settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub default_kind: Kind,
    pub default_cache_hours: u32,
    pub default_exchange: String,
    pub max_batch_size: usize,
    /// Fills fetching at once in this process, all sources together.
    pub fill_concurrency: usize,
    /// Fills fetching at once in this process, per source.
    pub fill_concurrency_per_source: usize,
    /// How long a fill lease lasts before another replica may take the fill over.
    pub lease_ttl: Duration,
    /// How long a failed fill's error is answered without trying again (0: not at all).
    pub negative_cache_ttl: Duration,
    /// This process's name in fill leases.
    pub holder: String,
    /// Serve hits from memory where the database announces changes (PostgreSQL).
    pub hit_cache: bool,
    /// Longest time a document is answered from memory without reading the database again.
    pub hit_cache_max_age: Duration,
    /// Documents the hit view holds at most (the least recently used are evicted past it).
    pub hit_cache_max_entries: usize,
    /// Refresh popular documents before they go stale; `None`: off.
    pub refresh_ahead: Option<RefreshAhead>,
    /// WatchDocuments: documents a watch by tag may cover, and its heartbeat.
    pub watch: super::WatchSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            default_kind: Kind::Announcement,
            default_cache_hours: DEFAULT_CACHE_HOURS,
            default_exchange: "ASX".into(),
            max_batch_size: 1000,
            fill_concurrency: 32,
            fill_concurrency_per_source: 32,
            lease_ttl: Duration::from_secs(60),
            negative_cache_ttl: Duration::from_secs(5),
            holder: format!("provider-{}-{:08x}", std::process::id(), rand_u32()),
            hit_cache: true,
            hit_cache_max_age: Duration::from_secs(1),
            hit_cache_max_entries: super::DEFAULT_HIT_CACHE_MAX_ENTRIES,
            refresh_ahead: None,
            watch: super::WatchSettings {
                max_documents: 1000,
                heartbeat_every: Duration::from_secs(5),
            },
        }
    }
}

fn rand_u32() -> u32 {
    // Good enough to tell processes apart; not a secret.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    t ^ std::process::id().rotate_left(16)
}

/// One identifier of a call: as the caller sent it (answered back unchanged) and parsed.
#[derive(Debug, Clone)]
pub struct Asked {
    pub identifier: String,
    pub ticker: Result<Ticker, TickerError>,
}

impl Asked {
    /// `identifier` parsed as a ticker, a bare code taking `default_exchange`.
    pub fn parse(identifier: String, default_exchange: &str) -> Self {
        let ticker = Ticker::parse_with_default(&identifier, default_exchange);
        Self { identifier, ticker }
    }
}

/// A validated request.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    pub kind: Kind,
    pub cache_hours: u32,
    pub force_refresh: bool,
    pub stale_if_error_hours: Option<u32>,
    /// Stale-while-revalidate window past `cache_hours`.
    pub stale_while_revalidate_hours: Option<u32>,
    /// Made by refresh-ahead, not by a caller.
    pub refresh_ahead: bool,
}
