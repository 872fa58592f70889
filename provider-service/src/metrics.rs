//! The provider's Prometheus metrics: answers by rpc and outcome (stale apart from hits), fill
//! latency, coalesced waiters, upstream requests by host and status, database pool usage, and
//! the cache controls (revalidations, invalidations, refresh-ahead fills).

use std::sync::{Arc, LazyLock, Mutex};

use documents_api::Kind;
use documents_kit::metrics::SharedRegistry;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnswerLabels {
    pub rpc: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FillLabels {
    pub kind: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub host: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub state: String,
}

pub struct ProviderMetrics {
    pub registry: SharedRegistry,
    pub answers: Family<AnswerLabels, Counter>,
    pub fill_seconds: Family<FillLabels, Histogram>,
    pub coalesced_waiters: Family<KindLabels, Counter>,
    pub source_requests: Family<SourceLabels, Counter>,
    pub db_connections: Family<PoolLabels, Gauge>,
    pub revalidations: Family<KindLabels, Counter>,
    pub invalidated: Family<KindLabels, Counter>,
    pub refresh_ahead: Family<FillLabels, Counter>,
    pub purge_raced: Family<KindLabels, Counter>,
    /// Hits answered from the in-memory view, by kind in the order of `Kind::ALL` (resolved
    /// once: a hit costs an atomic add).
    memory_hits: [Counter; Kind::COUNT],
    /// Stale-while-revalidate answers from the in-memory view, by kind as `memory_hits`.
    memory_stale: [Counter; Kind::COUNT],
    /// Documents the hit view holds, and those it evicted to stay within its bound.
    hit_view_entries: Gauge,
    hit_view_evictions: Counter,
    /// WatchDocuments streams open.
    watchers: Gauge,
}

fn fill_histogram() -> Histogram {
    // 5 ms to about 80 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.005, 2.0, 15,
    ))
}

/// The process's metrics.
pub static METRICS: LazyLock<ProviderMetrics> = LazyLock::new(|| {
    let mut registry = Registry::default();
    let answers = Family::<AnswerLabels, Counter>::default();
    registry.register(
        "documents_answers",
        "Answered identifiers by rpc and outcome (hit, created, refreshed, stale, error)",
        answers.clone(),
    );
    let fill_seconds =
        Family::<FillLabels, Histogram>::new_with_constructor(fill_histogram as fn() -> Histogram);
    registry.register(
        "documents_fill_seconds",
        "Fill latency by kind and result",
        fill_seconds.clone(),
    );
    let coalesced_waiters = Family::<KindLabels, Counter>::default();
    registry.register(
        "documents_coalesced_waiters",
        "Requests that joined a fill already running in this process",
        coalesced_waiters.clone(),
    );
    let source_requests = Family::<SourceLabels, Counter>::default();
    registry.register(
        "documents_source_requests",
        "Upstream HTTP requests by host and status (or error)",
        source_requests.clone(),
    );
    let db_connections = Family::<PoolLabels, Gauge>::default();
    registry.register(
        "documents_db_connections",
        "Database pool connections by state (in_use, idle)",
        db_connections.clone(),
    );
    let revalidations = Family::<KindLabels, Counter>::default();
    registry.register(
        "documents_revalidations",
        "Stale documents answered at once (stale-while-revalidate) with a background refresh",
        revalidations.clone(),
    );
    let invalidated = Family::<KindLabels, Counter>::default();
    registry.register(
        "documents_invalidated",
        "Documents marked stale by InvalidateDocuments (kind \"any\" for tags across kinds)",
        invalidated.clone(),
    );
    let refresh_ahead = Family::<FillLabels, Counter>::default();
    registry.register(
        "documents_refresh_ahead",
        "Fills started by refresh-ahead (not by a caller), by kind and result",
        refresh_ahead.clone(),
    );
    let purge_raced = Family::<KindLabels, Counter>::default();
    registry.register(
        "documents_purge_raced_fills",
        "Fills whose write a purge made while they fetched kept stale, so they fetched again",
        purge_raced.clone(),
    );
    let memory_hits = Family::<KindLabels, Counter>::default();
    registry.register(
        "documents_memory_hits",
        "Hits answered from this replica's in-memory view, without a database round trip",
        memory_hits.clone(),
    );
    let memory_hits = Kind::ALL.map(|k| {
        memory_hits
            .get_or_create(&KindLabels {
                kind: k.as_str().into(),
            })
            .clone()
    });
    let memory_stale = Family::<KindLabels, Counter>::default();
    registry.register(
        "documents_memory_stale_answers",
        "Stale-while-revalidate answers from this replica's in-memory view, without a database round trip",
        memory_stale.clone(),
    );
    let memory_stale = Kind::ALL.map(|k| {
        memory_stale
            .get_or_create(&KindLabels {
                kind: k.as_str().into(),
            })
            .clone()
    });
    let hit_view_entries = Gauge::default();
    registry.register(
        "documents_hit_view_entries",
        "Documents held in this replica's in-memory view (at most PROVIDER_HIT_CACHE_MAX_ENTRIES)",
        hit_view_entries.clone(),
    );
    let hit_view_evictions = Counter::default();
    registry.register(
        "documents_hit_view_evictions",
        "Documents evicted from the in-memory view, least recently used first, to stay within its bound",
        hit_view_evictions.clone(),
    );
    let watchers = Gauge::default();
    registry.register(
        "documents_watchers",
        "WatchDocuments streams open on this replica",
        watchers.clone(),
    );
    ProviderMetrics {
        registry: Arc::new(Mutex::new(registry)),
        watchers,
        hit_view_entries,
        hit_view_evictions,
        purge_raced,
        memory_hits,
        memory_stale,
        revalidations,
        invalidated,
        refresh_ahead,
        answers,
        fill_seconds,
        coalesced_waiters,
        source_requests,
        db_connections,
    }
});

impl ProviderMetrics {
    pub fn answer(&self, rpc: &str, outcome: &str) {
        self.answers
            .get_or_create(&AnswerLabels {
                rpc: rpc.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    pub fn source_request(&self, host: &str, status: &str) {
        self.source_requests
            .get_or_create(&SourceLabels {
                host: host.into(),
                status: status.into(),
            })
            .inc();
    }

    pub fn revalidation(&self, kind: &str) {
        self.revalidations
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
    }

    pub fn memory_hit(&self, kind: documents_api::Kind) {
        if let Some(i) = Kind::ALL.iter().position(|k| *k == kind) {
            self.memory_hits[i].inc();
        }
    }

    /// A watch started (+1) or ended (-1).
    pub fn watchers(&self, delta: i64) {
        self.watchers.inc_by(delta);
    }

    /// The hit view now holds `entries`, after evicting `evicted`.
    pub fn hit_view(&self, entries: usize, evicted: usize) {
        self.hit_view_entries.set(entries as i64);
        if evicted > 0 {
            self.hit_view_evictions.inc_by(evicted as u64);
        }
    }

    pub fn memory_stale(&self, kind: documents_api::Kind) {
        if let Some(i) = Kind::ALL.iter().position(|k| *k == kind) {
            self.memory_stale[i].inc();
        }
    }

    pub fn purge_raced(&self, kind: &str) {
        self.purge_raced
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
    }

    pub fn invalidation(&self, kind: &str, n: u64) {
        self.invalidated
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc_by(n);
    }

    pub fn refreshed_ahead(&self, kind: &str, ok: bool) {
        self.refresh_ahead
            .get_or_create(&FillLabels {
                kind: kind.into(),
                result: if ok { "ok" } else { "error" }.into(),
            })
            .inc();
    }

    pub fn coalesced(&self, kind: &str) {
        self.coalesced_waiters
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
    }

    pub fn fill(&self, kind: &str, ok: bool, seconds: f64) {
        self.fill_seconds
            .get_or_create(&FillLabels {
                kind: kind.into(),
                result: if ok { "ok" } else { "error" }.into(),
            })
            .observe(seconds);
    }

    pub fn pool(&self, open: u32, idle: usize) {
        let idle = idle as i64;
        self.db_connections
            .get_or_create(&PoolLabels {
                state: "idle".into(),
            })
            .set(idle);
        self.db_connections
            .get_or_create(&PoolLabels {
                state: "in_use".into(),
            })
            .set(i64::from(open) - idle);
    }
}
