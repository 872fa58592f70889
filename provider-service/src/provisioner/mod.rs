//! The provisioning core: judges freshness, fills misses from the sources, makes concurrent
//! fills of one document share a single fetch (within the process and across replicas), and
//! answers batches in request order or as a stream.
//!
//! - A batch is looked up in one query; fresh documents are answered at once.
//! - Misses are filled concurrently. A fill runs in its own task, detached from the callers that
//!   wait for it: a caller that gives up does not cancel it, and every waiter gets its result
//!   (or its error, including a panic). Fills are bounded globally and per source.
//! - Across replicas, a fill first claims the document's lease in the database. Whoever holds
//!   it fetches; the others poll until a newer document appears, the holder reports an error, or
//!   the lease expires and they take over. The holder renews its lease while it fetches, so
//!   the lease can be short. The write is fenced by the lease token, so a filler paused past
//!   its lease cannot overwrite what the replica that took over wrote.
//! - A failed fill writes nothing (the previous version stays); its error is cached briefly so a
//!   failing upstream is not hammered; callers may accept the previous version (stale-if-error).
//!
//! This module holds the settings, the domain types a call arrives as ([`Request`], [`Asked`];
//! the gRPC edge makes them, `crate::validate`) and the public entry points. Its parts: [`plan`]
//! (a batch from lookup to answers), [`single_flight`] (one fill per document in the process),
//! [`lease`] (fills across replicas), [`negative_cache`], [`sweeper`] (leases of dead fillers)
//! and [`answer`] (a result from a document and the caller's window).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use documents_api::{
    provider::DEFAULT_CACHE_HOURS, DocumentResult, ItemError, Kind, Outcome, Ticker, TickerError,
};
use documents_kit::status::StorageStatus as _;
use documents_kit::trace::{KeyValue, SpanKind, TraceContext};
use documents_store::{Claim, DocumentHead, DocumentStore, Fence, StorageError};
use futures::{
    future::{BoxFuture, Shared},
    stream::{self, BoxStream, FuturesUnordered},
    FutureExt, StreamExt,
};
use tokio::{sync::Semaphore, time::Instant};
use tonic::Code;

use crate::{
    hit_cache::{HitCache, Stamp},
    metrics::METRICS,
    refresh_ahead::{Popularity, RefreshAhead},
    sources::{Source, Sources},
};

mod answer;
mod lease;
mod negative_cache;
mod plan;
mod single_flight;
mod sweeper;

use answer::*;
use single_flight::*;

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
    /// Refresh popular documents before they go stale; `None`: off.
    pub refresh_ahead: Option<RefreshAhead>,
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
            refresh_ahead: None,
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

/// One document as this replica sees it (`Provisioner::describe`).
#[derive(Debug, Clone)]
pub struct Described {
    pub kind: Kind,
    pub source_id: String,
    pub head: Option<DocumentHead>,
    /// The live fill lease: its token and holder.
    pub lease: Option<(i64, documents_store::Holding)>,
    /// The failure the negative cache answers, and until when.
    pub negative: Option<(ItemError, DateTime<Utc>)>,
    pub in_memory: bool,
    pub filling_here: bool,
}

/// What a finished fill hands to its waiters.
#[derive(Debug, Clone)]
struct Filled {
    head: DocumentHead,
    outcome: Outcome,
}

type FillResult = Result<Filled, ItemError>;
type FillFuture = Shared<BoxFuture<'static, FillResult>>;
type FillKey = (Kind, String);

/// What a request saw of a document at its lookup: when (database clock) and which version
/// (0: none). A fill by someone else counts as newer when it wrote a higher version synced
/// around or after the lookup ([`Seen::answers`]).
#[derive(Debug, Clone, Copy)]
struct Seen {
    at: DateTime<Utc>,
    version: i64,
}

impl Seen {
    /// Whether `h` is another filler's result this request may answer with: a higher version,
    /// not purged since it was fetched, synced no earlier than a lease length before the lookup
    /// (a fill's write commits within its lease; a row whose `last_synced` was moved back by hand
    /// is not a fresh fill).
    /// How an answer this request got from another filler's write is reported: as the fill it
    /// is (created, or refreshed since the lookup), the same as for a request that joined a
    /// fill in its own process; never as a hit of a document that was already fresh.
    fn filled_by_another(&self) -> Outcome {
        if self.version == 0 {
            Outcome::Created
        } else {
            Outcome::Refreshed
        }
    }

    fn answers(&self, h: &DocumentHead, lease: Duration) -> bool {
        h.version > self.version
            && !h.invalidated
            && h.last_synced >= self.at - ChronoDuration::from_std(lease).unwrap_or_default()
    }
}

/// Everything a detached fill task needs.
#[derive(Clone)]
struct FillContext {
    store: Arc<dyn DocumentStore>,
    global: Arc<Semaphore>,
    negative: Arc<Mutex<HashMap<FillKey, (Instant, ItemError)>>>,
    settings: Arc<Settings>,
    hit_cache: Option<Arc<HitCache>>,
}

pub struct Provisioner {
    sources: Sources,
    hit_cache: Option<Arc<HitCache>>,
    per_source: HashMap<Kind, Arc<Semaphore>>,
    ctx: FillContext,
    in_flight: Arc<Mutex<HashMap<FillKey, InFlight>>>,
    next_fill_id: AtomicU64,
    /// What callers ask for, when refresh-ahead is on.
    popularity: Option<Arc<Popularity>>,
}

impl Provisioner {
    pub fn new(store: Arc<dyn DocumentStore>, sources: Sources, settings: Settings) -> Self {
        let settings_refresh_ahead = settings.refresh_ahead;
        let per_source = sources
            .keys()
            .map(|k| {
                (
                    *k,
                    Arc::new(Semaphore::new(settings.fill_concurrency_per_source.max(1))),
                )
            })
            .collect();
        let hit_cache = if settings.hit_cache {
            store
                .changes()
                .map(|c| HitCache::new(c, settings.hit_cache_max_age))
        } else {
            None
        };
        Self {
            per_source,
            hit_cache: hit_cache.clone(),
            sources,
            ctx: FillContext {
                store,
                global: Arc::new(Semaphore::new(settings.fill_concurrency.max(1))),
                negative: Arc::new(Mutex::new(HashMap::new())),
                settings: Arc::new(settings),
                hit_cache,
            },
            in_flight: Arc::new(Mutex::new(HashMap::new())),
            next_fill_id: AtomicU64::new(0),
            popularity: settings_refresh_ahead.map(|_| Arc::new(Popularity::default())),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.ctx.settings
    }

    pub fn store(&self) -> &Arc<dyn DocumentStore> {
        &self.ctx.store
    }

    /// The kinds this service provides (one source each).
    pub fn provided_kinds(&self) -> impl Iterator<Item = Kind> + '_ {
        self.sources.keys().copied()
    }

    /// What this replica knows of a document (the admin view): its stored head, its lease, the
    /// negative-cache entry, whether memory holds it and whether a fill runs here.
    pub async fn describe(&self, kind: Kind, ticker: &Ticker) -> Result<Described, StorageError> {
        let sid = ticker.source_id(kind.as_str());
        let head = self
            .store()
            .lookup(kind.as_str(), std::slice::from_ref(&sid))
            .await?
            .heads
            .pop();
        let lease = self
            .store()
            .lease(kind.as_str(), &sid)
            .await?
            .and_then(|l| l.holding.map(|h| (l.token, h)));
        let key: FillKey = (kind, sid.clone());
        let negative = self
            .ctx
            .negative
            .lock()
            .expect("negative cache lock")
            .get(&key)
            .filter(|(until, _)| *until > Instant::now())
            .map(|(until, e)| {
                let left = until.duration_since(Instant::now());
                (
                    e.clone(),
                    Utc::now() + ChronoDuration::from_std(left).unwrap_or_default(),
                )
            });
        let in_memory = self.hit_cache.as_ref().is_some_and(|c| c.holds(kind, &sid));
        let filling_here = self.filling(kind, &sid);
        Ok(Described {
            kind,
            source_id: sid,
            head,
            lease,
            negative,
            in_memory,
            filling_here,
        })
    }

    /// The fills running in this replica: kind, source key, for how long, forced or not, and
    /// whether refresh-ahead started it.
    pub fn local_fills(&self) -> Vec<(Kind, String, Duration, bool, bool)> {
        let map = self.in_flight.lock().expect("in-flight map poisoned");
        let mut fills: Vec<_> = map
            .iter()
            .map(|((kind, sid), f)| (*kind, sid.clone(), f.started.elapsed(), f.forced, f.ahead))
            .collect();
        fills.sort_by_key(|f| std::cmp::Reverse(f.2));
        fills
    }

    /// Starts refresh-ahead when the settings ask for it (it stops when the provisioner is
    /// dropped).
    pub fn start_refresh_ahead(self: &Arc<Self>, background: &documents_kit::shutdown::Background) {
        if let (Some(popularity), Some(tuning)) = (&self.popularity, self.settings().refresh_ahead)
        {
            crate::refresh_ahead::spawn(self, popularity.clone(), tuning, background);
        }
    }

    /// Whether a fill of the document runs in this process.
    pub fn filling(&self, kind: Kind, source_id: &str) -> bool {
        self.in_flight
            .lock()
            .expect("in-flight map poisoned")
            .contains_key(&(kind, source_id.to_string()))
    }

    /// A refresh of a document that is still fresh (refresh-ahead): an ordinary fill, as if a
    /// caller had seen `version` at `at`. Resolves to whether it succeeded.
    pub fn refresh_ahead(
        self: &Arc<Self>,
        kind: Kind,
        ticker: Ticker,
        source_id: String,
        window_hours: u32,
        at: DateTime<Utc>,
        version: i64,
    ) -> impl std::future::Future<Output = bool> + Send + 'static {
        let req = Request {
            kind,
            cache_hours: window_hours,
            force_refresh: false,
            stale_if_error_hours: None,
            stale_while_revalidate_hours: None,
            refresh_ahead: true,
        };
        let fill = self.fill(req, ticker, source_id, Instant::now(), Seen { at, version });
        async move { fill.await.is_ok() }
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
        let id_kind = kind.unwrap_or(self.settings().default_kind);
        let source_ids: Vec<String> = tickers
            .iter()
            .map(|t| t.source_id(id_kind.as_str()))
            .collect();
        // Identifiers name documents of one kind; tags alone may span kinds.
        let scope = match (kind, tickers.is_empty()) {
            (Some(k), _) => Some(k),
            (None, false) => Some(id_kind),
            (None, true) => None,
        };
        let n = self
            .store()
            .invalidate(scope.map(Kind::as_str), &source_ids, tags)
            .await?;
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

    /// Ensures every identifier's document; one result per identifier, in request order. A
    /// call answered without waiting for a fill (hits, bad identifiers) returns with no stream
    /// or task between it and its answer: the same path serves one identifier and a batch.
    pub async fn provide(self: &Arc<Self>, asked: Vec<Asked>, req: Request) -> Vec<DocumentResult> {
        let planned = self.clone().plan(asked, req).await;
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
        stream::once(async move { this.plan(asked, req).await.into_stream() })
            .flatten()
            .boxed()
    }
}
