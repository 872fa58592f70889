//! The provisioning core: judges freshness, fills misses from the sources, makes concurrent
//! fills of one document share a single fetch (within the process and across replicas), and
//! answers batches in request order or as a stream.
//!
//! - A call is planned ([`plan`]): parsed into keys, answered from memory where it can be
//!   ([`hit_view`]), joined to fills already running, looked up in one query, and classified:
//!   fresh documents answered, the others filled ([`answer`] makes each result).
//! - Fills ([`fills`]) run one task per document in the process ([`single_flight`]); a caller
//!   that gives up does not cancel it, and every waiter gets its result (or its error, a panic
//!   included). Fills are bounded globally and per source.
//! - Across replicas, a fill first claims the document's lease in the database ([`lease`]).
//!   Whoever holds it fetches; the others follow until a newer document appears, the holder
//!   reports an error, or the lease expires and they take over. The holder renews its lease while
//!   it fetches, and its write is fenced by the lease token, so a filler paused past its lease
//!   cannot overwrite what the replica that took over wrote. Leases of fillers that died are
//!   released by [`sweeper`].
//! - A failed fill writes nothing (the previous version stays); its error is cached briefly
//!   ([`negative_cache`]) so a failing upstream is not hammered; callers may accept the previous
//!   version (stale-if-error).
//! - Popular documents are refreshed before they go stale ([`refresh_ahead`]).
//! - Callers watching documents are told when they change ([`watch`]), from the same change
//!   feed, whether the hit view is on or not.
//!
//! A call arrives as the domain types of [`request`] (the gRPC edge makes them,
//! `crate::validate`); a fill's own types are in [`fill`]. This module holds the
//! [`Provisioner`], which owns the parts, and its public entry points.

mod answer;
mod fill;
mod fills;
mod hit_view;
mod lease;
mod negative_cache;
mod plan;
mod refresh_ahead;
mod request;
mod single_flight;
mod sweeper;
mod watch;

use std::sync::Arc;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use documents_api::{DocumentResult, ItemError, Kind, Ticker};
use documents_store::{DocumentHead, DocumentStore, SourceKey, StorageError};
use futures::{
    stream::{self, BoxStream},
    StreamExt,
};
use tokio::sync::Semaphore;

pub use hit_view::{
    HitView, DEFAULT_MAX_ENTRIES as DEFAULT_HIT_CACHE_MAX_ENTRIES, STALENESS_BOUND,
};
pub use request::{Asked, RefreshAhead, Request, Settings};
pub use single_flight::LocalFill;
pub use watch::{EventKind, Watch, WatchEnd, WatchEvent, WatchSettings, WatchSpec};

use crate::{metrics::METRICS, sources::Sources};
use fills::Fills;
use lease::Filler;
use negative_cache::NegativeCache;
use plan::Planner;
use refresh_ahead::Popularity;

/// One document as this replica sees it (`Provisioner::describe`).
#[derive(Debug, Clone)]
pub struct Described {
    pub key: SourceKey,
    pub head: Option<DocumentHead>,
    /// The live fill lease: its token and holder.
    pub lease: Option<(i64, documents_store::Holding)>,
    /// The failure the negative cache answers, and until when.
    pub negative: Option<(ItemError, DateTime<Utc>)>,
    pub in_memory: bool,
    pub filling_here: bool,
}

pub struct Provisioner {
    settings: Arc<Settings>,
    store: Arc<dyn DocumentStore>,
    fills: Arc<Fills>,
    hit_view: Option<Arc<HitView>>,
    /// What callers ask for, when refresh-ahead is on.
    popularity: Option<Arc<Popularity>>,
    /// WatchDocuments' hub, started by the first watch.
    watch_hub: std::sync::OnceLock<watch::WatchHub>,
}

impl Provisioner {
    pub fn new(store: Arc<dyn DocumentStore>, sources: Sources, settings: Settings) -> Self {
        let hit_view = if settings.hit_cache {
            let feed = store.changes();
            if feed.is_none() && store.backend() == documents_store::Backend::Postgres {
                tracing::warn!(
                    "no change feed (a transaction-mode pooler without DATABASE_LISTEN_URL): \
                     hits are read from the database"
                );
            }
            feed.map(|c| {
                HitView::new(
                    c,
                    settings.hit_cache_max_age,
                    settings.hit_cache_max_entries,
                )
            })
        } else {
            None
        };
        let settings = Arc::new(settings);
        let filler = Filler {
            store: store.clone(),
            global: Arc::new(Semaphore::new(settings.fill_concurrency.max(1))),
            negative: NegativeCache::new(settings.negative_cache_ttl),
            settings: settings.clone(),
            hit_view: hit_view.clone(),
        };
        let fills = Arc::new(Fills::new(
            filler,
            sources,
            settings.fill_concurrency_per_source,
        ));
        Self {
            popularity: settings.refresh_ahead.map(|_| Arc::default()),
            settings,
            store,
            fills,
            hit_view,
            watch_hub: std::sync::OnceLock::new(),
        }
    }

    /// Starts watching documents (WatchDocuments): the first watch starts the process's hub on
    /// the database's change feed (or on polling, without one).
    pub async fn watch(&self, spec: WatchSpec) -> Watch {
        self.watch_hub
            .get_or_init(|| {
                watch::WatchHub::start(
                    self.store.clone(),
                    self.store.changes(),
                    self.settings.watch,
                )
            })
            .watch(spec)
            .await
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn store(&self) -> &Arc<dyn DocumentStore> {
        &self.store
    }

    /// The kinds this service provides (one source each).
    pub fn provided_kinds(&self) -> impl Iterator<Item = Kind> + '_ {
        self.fills.kinds()
    }

    /// What this replica knows of a document (the admin view): its stored head, its lease, the
    /// negative-cache entry, whether memory holds it and whether a fill runs here.
    pub async fn describe(&self, kind: Kind, ticker: &Ticker) -> Result<Described, StorageError> {
        let key = SourceKey::new(kind, ticker.clone());
        let head = self
            .store
            .lookup(std::slice::from_ref(&key))
            .await?
            .heads
            .pop();
        let lease = self
            .store
            .lease(&key)
            .await?
            .and_then(|l| l.holding.map(|h| (l.token, h)));
        let negative = self.fills.filler().negative.peek(&key).map(|(e, left)| {
            (
                e,
                Utc::now() + ChronoDuration::from_std(left).unwrap_or_default(),
            )
        });
        Ok(Described {
            in_memory: self.hit_view.as_ref().is_some_and(|v| v.holds(&key)),
            filling_here: self.fills.filling(&key),
            key,
            head,
            lease,
            negative,
        })
    }

    /// The fills running in this replica, the longest-running first.
    pub fn local_fills(&self) -> Vec<LocalFill> {
        self.fills.list()
    }

    /// Starts the background loops the settings ask for: the sweep of leases abandoned by
    /// fillers that went away, and refresh-ahead. They stop with the process (`background`).
    pub fn start_background(&self, background: &documents_kit::shutdown::Background) {
        sweeper::spawn(self.store.clone(), self.settings.lease_ttl, background);
        if let (Some(popularity), Some(tuning)) = (&self.popularity, self.settings.refresh_ahead) {
            refresh_ahead::spawn(
                &self.fills,
                self.store.clone(),
                popularity.clone(),
                tuning,
                self.settings.fill_concurrency,
                background,
            );
        }
    }

    /// Whether a fill of the document runs in this process.
    pub fn filling(&self, key: &SourceKey) -> bool {
        self.fills.filling(key)
    }

    /// Marks documents stale on every replica (InvalidateDocuments): by identifier (of `kind`,
    /// or the default kind), by tag (of `kind`, or of every kind), or every document of `kind`
    /// alone. Answers how many were marked.
    pub async fn invalidate(
        &self,
        kind: Option<Kind>,
        tickers: &[Ticker],
        tags: &[String],
    ) -> Result<u64, StorageError> {
        let id_kind = kind.unwrap_or(self.settings.default_kind);
        let keys: Vec<SourceKey> = tickers
            .iter()
            .map(|t| SourceKey::new(id_kind, t.clone()))
            .collect();
        // Identifiers name documents of one kind; tags alone may span kinds.
        let scope = match (kind, tickers.is_empty()) {
            (Some(k), _) => Some(k),
            (None, false) => Some(id_kind),
            (None, true) => None,
        };
        let n = self.store.invalidate(scope, &keys, tags).await?;
        METRICS.invalidation(scope.map_or("any", Kind::as_str), n);
        tracing::info!(
            invalidated = n,
            identifiers = tickers.len(),
            tags = tags.len(),
            kind = scope.map_or("any", Kind::as_str),
            "documents invalidated"
        );
        Ok(n)
    }

    fn planner(&self) -> Planner<'_> {
        Planner {
            fills: &self.fills,
            store: &self.store,
            hit_view: self.hit_view.as_ref(),
            popularity: self.popularity.as_deref(),
        }
    }

    /// Ensures every identifier's document; one result per identifier, in request order. A
    /// call answered without waiting for a fill (hits, bad identifiers) returns with no stream
    /// or task between it and its answer: the same path serves one identifier and a batch.
    pub async fn provide(&self, asked: Vec<Asked>, req: Request) -> Vec<DocumentResult> {
        let planned = self.planner().plan(asked, req).await;
        let mut results = if planned.pending.is_empty() {
            planned.immediate
        } else {
            planned.into_stream().collect().await
        };
        results.sort_by_key(|r| r.index);
        results
    }

    /// Ensures every identifier's document, yielding each result as soon as it is ready:
    /// failures to parse and fresh documents first, then fills as they finish.
    pub fn provide_each(
        self: &Arc<Self>,
        asked: Vec<Asked>,
        req: Request,
    ) -> BoxStream<'static, DocumentResult> {
        let this = self.clone();
        stream::once(async move { this.planner().plan(asked, req).await.into_stream() })
            .flatten()
            .boxed()
    }
}
