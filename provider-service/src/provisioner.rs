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

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use futures::{
    future::{BoxFuture, Shared},
    stream::{self, BoxStream, FuturesUnordered},
    FutureExt, StreamExt,
};
use shared::trace::{KeyValue, SpanKind, TraceContext};
use shared::{
    provider::{invalid_argument, DEFAULT_CACHE_HOURS, MAX_CACHE_HOURS},
    storage::{Claim, DocumentHead, DocumentStore, Fence, StorageError},
    DocumentResult, ItemError, Kind, Outcome, Ticker,
};
use tokio::{sync::Semaphore, time::Instant};
use tonic::{Code, Status};

use crate::{
    hit_cache::{HitCache, Stamp},
    metrics::METRICS,
    refresh_ahead::{Popularity, RefreshAhead},
    sources::{Source, Sources},
};

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
    pub lease: Option<(i64, shared::storage::Holding)>,
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

struct InFlight {
    id: u64,
    started: Instant,
    /// A forced refresh: it fetches even when a newer version appeared since its lookup.
    forced: bool,
    /// Started by refresh-ahead.
    ahead: bool,
    fut: FillFuture,
}

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
    /// synced no earlier than a lease length before the lookup (a fill's write commits within
    /// its lease; a row whose `last_synced` was moved back by hand is not a fresh fill).
    fn answers(&self, h: &DocumentHead, lease: Duration) -> bool {
        h.version > self.version
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

    /// Releases, every lease length, the leases of fillers that went away (killed while
    /// holding one) once they are a lease length past their expiry, so none is left behind.
    /// Runs until the process ends.
    pub fn sweep_abandoned_leases(&self) {
        let store = self.ctx.store.clone();
        let every = self.ctx.settings.lease_ttl.max(Duration::from_secs(1));
        let grace = self.ctx.settings.lease_ttl;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match store.clear_abandoned_leases(grace).await {
                    Ok(0) | Err(_) => {}
                    Ok(n) => tracing::info!(
                        leases = n,
                        "released fill leases abandoned by fillers that went away"
                    ),
                }
            }
        });
    }

    pub fn store(&self) -> &Arc<dyn DocumentStore> {
        &self.ctx.store
    }

    /// Validates the whole-request fields. Errors name the field and the rule.
    pub fn validate(
        &self,
        kind: &str,
        options: Option<&shared::proto::documents::v1::DocumentOptions>,
        batch_len: usize,
    ) -> Result<Request, Status> {
        let settings = self.settings();
        let kind = self.requested_kind(kind)?.unwrap_or(settings.default_kind);
        let default = Default::default();
        let opts = options.unwrap_or(&default);
        let cache_hours = opts.cache_hours.unwrap_or(settings.default_cache_hours);
        for (field, value) in [
            ("options.cache_hours", Some(cache_hours)),
            ("options.stale_if_error_hours", opts.stale_if_error_hours),
            (
                "options.stale_while_revalidate_hours",
                opts.stale_while_revalidate_hours,
            ),
        ] {
            if let Some(v) = value.filter(|v| *v > MAX_CACHE_HOURS) {
                return Err(invalid_argument(
                    field,
                    format!("{v} is more than the maximum of {MAX_CACHE_HOURS}"),
                ));
            }
        }
        if batch_len > settings.max_batch_size {
            return Err(invalid_argument(
                "identifiers",
                format!(
                    "{batch_len} identifiers is more than the maximum batch size of {}",
                    settings.max_batch_size
                ),
            ));
        }
        Ok(Request {
            kind,
            cache_hours,
            force_refresh: opts.force_refresh,
            stale_if_error_hours: opts.stale_if_error_hours,
            stale_while_revalidate_hours: opts.stale_while_revalidate_hours,
            refresh_ahead: false,
        })
    }

    /// The `kind` field of a request: `None` when empty, else a kind this service provides
    /// (INVALID_ARGUMENT naming the ones it does otherwise).
    fn requested_kind(&self, kind: &str) -> Result<Option<Kind>, Status> {
        if kind.trim().is_empty() {
            return Ok(None);
        }
        let provided = || {
            let mut provided: Vec<_> = self.sources.keys().map(|k| k.as_str()).collect();
            provided.sort();
            provided.join(", ")
        };
        let kind = kind.parse::<Kind>().map_err(|e| {
            invalid_argument("kind", format!("{e}: expected one of {}", provided()))
        })?;
        if !self.sources.contains_key(&kind) {
            return Err(invalid_argument(
                "kind",
                format!(
                    "{:?} is not provided by this service: expected one of {}",
                    kind.as_str(),
                    provided()
                ),
            ));
        }
        Ok(Some(kind))
    }

    /// What this replica knows of a document (the admin view): its stored head, its lease, the
    /// negative-cache entry, whether memory holds it and whether a fill runs here.
    pub async fn describe(&self, identifier: &str, kind: &str) -> Result<Described, Status> {
        let settings = self.settings();
        let kind = self.requested_kind(kind)?.unwrap_or(settings.default_kind);
        let ticker = Ticker::parse_with_default(identifier, &settings.default_exchange)
            .map_err(|e| invalid_argument("identifier", e))?;
        let sid = ticker.source_id(kind.as_str());
        let storage = |e: StorageError| ItemError::from(&e).to_status();
        let head = self
            .store()
            .lookup(kind.as_str(), std::slice::from_ref(&sid))
            .await
            .map_err(storage)?
            .heads
            .pop();
        let lease = self
            .store()
            .lease(kind.as_str(), &sid)
            .await
            .map_err(storage)?
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
    pub fn start_refresh_ahead(self: &Arc<Self>) {
        if let (Some(popularity), Some(tuning)) = (&self.popularity, self.settings().refresh_ahead)
        {
            crate::refresh_ahead::spawn(self, popularity.clone(), tuning);
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
        identifiers: &[String],
        tags: &[String],
        kind: &str,
    ) -> Result<u64, Status> {
        let settings = self.settings();
        if identifiers.is_empty() && tags.is_empty() && kind.trim().is_empty() {
            return Err(invalid_argument(
                "identifiers",
                "nothing to invalidate: give identifiers, tags, or a kind (every document of it)",
            ));
        }
        if identifiers.len() + tags.len() > settings.max_batch_size {
            return Err(invalid_argument(
                "identifiers",
                format!(
                    "{} identifiers and tags is more than the maximum batch size of {}",
                    identifiers.len() + tags.len(),
                    settings.max_batch_size
                ),
            ));
        }
        let kind = self.requested_kind(kind)?;
        let id_kind = kind.unwrap_or(settings.default_kind);
        let mut source_ids = Vec::with_capacity(identifiers.len());
        for (i, id) in identifiers.iter().enumerate() {
            let t = Ticker::parse_with_default(id, &settings.default_exchange)
                .map_err(|e| invalid_argument(&format!("identifiers[{i}]"), e))?;
            source_ids.push(t.source_id(id_kind.as_str()));
        }
        // Identifiers name documents of one kind; tags alone may span kinds.
        let scope = match (kind, identifiers.is_empty()) {
            (Some(k), _) => Some(k),
            (None, false) => Some(id_kind),
            (None, true) => None,
        };
        let n = self
            .store()
            .invalidate(scope.map(Kind::as_str), &source_ids, tags)
            .await
            .map_err(|e| ItemError::from(&e).to_status())?;
        METRICS.invalidation(scope.map_or("any", Kind::as_str), n);
        tracing::info!(
            invalidated = n,
            identifiers = identifiers.len(),
            tags = tags.len(),
            kind = scope.map_or("any", Kind::as_str),
            "documents invalidated"
        );
        Ok(n)
    }

    /// The answer for one identifier when this process knows its document is fresh: the hot
    /// path of GetDocument, with no database round trip and no batch machinery.
    pub fn cached_hit(&self, identifier: &str, req: Request) -> Option<DocumentResult> {
        let cache = self.hit_cache.as_ref().filter(|_| !req.force_refresh)?;
        let ticker =
            Ticker::parse_with_default(identifier, &self.settings().default_exchange).ok()?;
        let sid = ticker.source_id(req.kind.as_str());
        let head = cache.fresh(req.kind, &sid, req.cache_hours)?;
        if let Some(p) = &self.popularity {
            p.asked(req.kind, &ticker, &sid, req.cache_hours);
        }
        let filled = Ok(Filled {
            head,
            outcome: Outcome::Hit,
        });
        Some(answer(identifier, 0, &sid, req, &filled, None, Utc::now()))
    }

    /// Ensures every identifier's document; one result per identifier, in request order.
    pub async fn provide(
        self: &Arc<Self>,
        identifiers: Vec<String>,
        req: Request,
    ) -> Vec<DocumentResult> {
        let mut results: Vec<DocumentResult> = self.provide_each(identifiers, req).collect().await;
        results.sort_by_key(|r| r.index);
        results
    }

    /// Ensures every identifier's document, yielding each result as soon as it is ready:
    /// failures to parse and fresh documents first, then fills as they finish.
    pub fn provide_each(
        self: &Arc<Self>,
        identifiers: Vec<String>,
        req: Request,
    ) -> BoxStream<'static, DocumentResult> {
        let this = self.clone();
        stream::once(async move { this.plan(identifiers, req).await })
            .flatten()
            .boxed()
    }

    async fn plan(
        self: Arc<Self>,
        identifiers: Vec<String>,
        req: Request,
    ) -> BoxStream<'static, DocumentResult> {
        let arrived = Instant::now();
        let kind = req.kind.as_str();
        let mut immediate = Vec::new();
        // source_id -> (ticker, indices asking for it), in first-seen order.
        let mut keys: Vec<(String, Ticker, Vec<usize>)> = Vec::new();
        let mut position: HashMap<String, usize> = HashMap::new();
        for (i, id) in identifiers.iter().enumerate() {
            match Ticker::parse_with_default(id, &self.settings().default_exchange) {
                Err(e) => immediate.push(DocumentResult {
                    index: i as u32,
                    ..DocumentResult::failed(
                        id,
                        kind,
                        String::new(),
                        ItemError::new(Code::InvalidArgument, format!("identifier: {e}"))
                            .reason("INVALID_IDENTIFIER")
                            .field("identifier"),
                    )
                }),
                Ok(t) => {
                    let sid = t.source_id(kind);
                    if let Some(p) = &self.popularity {
                        p.asked(req.kind, &t, &sid, req.cache_hours);
                    }
                    match position.get(&sid) {
                        Some(p) => keys[*p].2.push(i),
                        None => {
                            position.insert(sid.clone(), keys.len());
                            keys.push((sid, t, vec![i]));
                        }
                    }
                }
            }
        }
        let identifiers = Arc::new(identifiers);
        // Fresh documents this process already knows need no database round trip.
        if let (Some(cache), false) = (&self.hit_cache, req.force_refresh) {
            keys.retain(
                |(sid, _, indices)| match cache.fresh(req.kind, sid, req.cache_hours) {
                    Some(head) => {
                        let filled = Ok(Filled {
                            head,
                            outcome: Outcome::Hit,
                        });
                        for i in indices {
                            immediate.push(answer(
                                &identifiers[*i],
                                *i,
                                sid,
                                req,
                                &filled,
                                None,
                                Utc::now(),
                            ));
                        }
                        false
                    }
                    None => true,
                },
            );
        }
        // A document this process is filling right now: join that fill; the database has
        // nothing fresher to say. (Not with stale-if-error, which needs the stored version.)
        let pending = FuturesUnordered::new();
        if req.stale_if_error_hours.is_none() && req.stale_while_revalidate_hours.is_none() {
            keys.retain(
                |(sid, _, indices)| match self.in_flight_fill(req, sid, arrived) {
                    Some(fill) => {
                        let (identifiers, sid, indices) =
                            (identifiers.clone(), sid.clone(), indices.clone());
                        pending.push(
                            async move {
                                let filled = fill.await;
                                answer_all(
                                    &identifiers,
                                    indices,
                                    &sid,
                                    req,
                                    &filled,
                                    None,
                                    Utc::now(),
                                )
                            }
                            .boxed(),
                        );
                        false
                    }
                    None => true,
                },
            );
        }
        if keys.is_empty() {
            return stream::iter(immediate)
                .chain(pending.flat_map(stream::iter))
                .boxed();
        }
        let ids: Vec<String> = keys.iter().map(|(s, ..)| s.clone()).collect();
        let stamps: HashMap<String, Stamp> = match &self.hit_cache {
            Some(cache) => ids
                .iter()
                .map(|sid| (sid.clone(), cache.stamp(req.kind, sid)))
                .collect(),
            None => HashMap::new(),
        };
        let sent = Instant::now();
        let lookup = match self.store().lookup(kind, &ids).await {
            Ok(l) => {
                if let Some(cache) = &self.hit_cache {
                    cache.observe_clock(l.now, sent.into_std());
                    for h in &l.heads {
                        if let Some(stamp) = stamps.get(&h.source_id) {
                            cache.remember(req.kind, h, *stamp);
                        }
                    }
                }
                l
            }
            Err(e) => {
                let err = ItemError::from(&e);
                for (sid, _, indices) in keys {
                    for i in indices {
                        immediate.push(DocumentResult {
                            index: i as u32,
                            ..DocumentResult::failed(
                                &identifiers[i],
                                kind,
                                sid.clone(),
                                err.clone(),
                            )
                        });
                    }
                }
                return stream::iter(immediate)
                    .chain(pending.flat_map(stream::iter))
                    .boxed();
            }
        };
        let mut heads: HashMap<String, DocumentHead> = lookup
            .heads
            .into_iter()
            .map(|h| (h.source_id.clone(), h))
            .collect();
        let now = lookup.now;
        for (sid, ticker, indices) in keys {
            let previous = heads.remove(&sid);
            match previous {
                Some(h) if is_fresh(&h, now, req) => {
                    let filled = Ok(Filled {
                        head: h,
                        outcome: Outcome::Hit,
                    });
                    immediate.extend(answer_all(
                        &identifiers,
                        indices,
                        &sid,
                        req,
                        &filled,
                        None,
                        now,
                    ));
                }
                Some(h) if may_revalidate(&h, now, req) => {
                    // Stale-while-revalidate: the stored version now, one fill behind it.
                    let seen = Seen {
                        at: now,
                        version: h.version,
                    };
                    // One background task per document: a refresh already running here is
                    // left to finish (callers keep getting the stored version meanwhile).
                    if !self.filling(req.kind, &sid) {
                        METRICS.revalidation(req.kind.as_str());
                        let fill = self.fill(req, ticker, sid.clone(), arrived, seen);
                        let trace = TraceContext::current().unwrap_or_else(TraceContext::root);
                        tokio::spawn(trace.scope_call(fill));
                    }
                    for i in indices {
                        immediate.push(DocumentResult {
                            refreshing: true,
                            ..answer(
                                &identifiers[i],
                                i,
                                &sid,
                                req,
                                &Ok(Filled {
                                    head: h.clone(),
                                    outcome: Outcome::Stale,
                                }),
                                None,
                                now,
                            )
                        });
                    }
                }
                _ => {
                    let seen = Seen {
                        at: now,
                        version: previous.as_ref().map_or(0, |h| h.version),
                    };
                    let fill = self.fill(req, ticker, sid.clone(), arrived, seen);
                    let identifiers = identifiers.clone();
                    pending.push(
                        async move {
                            let filled = fill.await;
                            answer_all(
                                &identifiers,
                                indices,
                                &sid,
                                req,
                                &filled,
                                previous.as_ref(),
                                now,
                            )
                        }
                        .boxed(),
                    );
                }
            }
        }
        stream::iter(immediate)
            .chain(pending.flat_map(stream::iter))
            .boxed()
    }

    /// The fill of `source_id` running in this process, if a request that arrived at `arrived`
    /// may share it.
    fn in_flight_fill(
        &self,
        req: Request,
        source_id: &str,
        arrived: Instant,
    ) -> Option<FillFuture> {
        let map = self.in_flight.lock().expect("in-flight map poisoned");
        map.get(&(req.kind, source_id.to_string()))
            .filter(|f| !req.force_refresh || (f.forced && f.started >= arrived))
            .inspect(|_| METRICS.coalesced(req.kind.as_str()))
            .map(|f| f.fut.clone())
    }

    /// Joins the fill in flight for the key, or starts one. A forced refresh only joins a fill
    /// that started after the request arrived; an older one is awaited and then a new one made.
    fn fill(
        self: &Arc<Self>,
        req: Request,
        ticker: Ticker,
        source_id: String,
        arrived: Instant,
        seen: Seen,
    ) -> impl std::future::Future<Output = FillResult> + Send + 'static {
        let this = self.clone();
        async move {
            this.join_or_start(req, ticker, source_id, arrived, seen)
                .await
        }
    }

    async fn join_or_start(
        &self,
        req: Request,
        ticker: Ticker,
        source_id: String,
        arrived: Instant,
        seen: Seen,
    ) -> FillResult {
        let key: FillKey = (req.kind, source_id);
        loop {
            let (fut, join) = {
                let mut map = self.in_flight.lock().expect("in-flight map poisoned");
                match map.get(&key) {
                    Some(f) if !req.force_refresh || (f.forced && f.started >= arrived) => {
                        METRICS.coalesced(req.kind.as_str());
                        (f.fut.clone(), true)
                    }
                    Some(f) => (f.fut.clone(), false),
                    None => {
                        let (id, fut) =
                            self.start_fill(&key, ticker.clone(), seen, req.force_refresh);
                        map.insert(
                            key.clone(),
                            InFlight {
                                id,
                                started: Instant::now(),
                                forced: req.force_refresh,
                                ahead: req.refresh_ahead,
                                fut: fut.clone(),
                            },
                        );
                        (fut, true)
                    }
                }
            };
            if join {
                return fut.await;
            }
            let _ = fut.await;
        }
    }

    /// Spawns the fill task. The task removes its own in-flight entry when it ends, however it
    /// ends (including a panic, through the guard's Drop).
    fn start_fill(
        &self,
        key: &FillKey,
        ticker: Ticker,
        seen: Seen,
        forced: bool,
    ) -> (u64, FillFuture) {
        let id = self.next_fill_id.fetch_add(1, Ordering::Relaxed);
        let guard = InFlightGuard {
            map: self.in_flight.clone(),
            key: key.clone(),
            id,
        };
        let ctx = self.ctx.clone();
        let source = self.sources.get(&key.0).cloned();
        let per_source = self.per_source.get(&key.0).cloned();
        let key = key.clone();
        // The fill belongs to the trace (and log span) of the call that started it.
        let trace = shared::trace::TraceContext::current().unwrap_or_else(TraceContext::root);
        let span = tracing::Span::current();
        let handle = tokio::spawn(tracing::Instrument::instrument(
            trace.scope_call(async move {
                let _guard = guard;
                let (Some(source), Some(per_source)) = (source, per_source) else {
                    return Err(ItemError::new(
                        Code::InvalidArgument,
                        format!("kind: {} has no source", key.0),
                    )
                    .reason("KIND_NOT_PROVIDED")
                    .field("kind"));
                };
                ctx.run_fill(&key, &ticker, source, per_source, seen, forced)
                    .await
            }),
            span,
        ));
        let fut = async move {
            match handle.await {
                Ok(r) => r,
                Err(e) => Err(ItemError::new(
                    Code::Internal,
                    format!(
                        "fill failed unexpectedly: {}",
                        if e.is_panic() {
                            "it panicked"
                        } else {
                            "it was cancelled"
                        }
                    ),
                )
                .reason("FILL_FAILED")),
            }
        }
        .boxed()
        .shared();
        (id, fut)
    }
}

/// Retries releasing a lease whose release failed (the database was down), so no expired
/// lease is left held: every 250 ms doubling to 2 s, for about three minutes. The token makes a
/// late release harmless if another filler has taken the lease over meanwhile.
fn release_later(
    store: Arc<dyn DocumentStore>,
    kind: &str,
    sid: &str,
    token: i64,
    error: Option<ItemError>,
) {
    let (kind, sid) = (kind.to_string(), sid.to_string());
    tokio::spawn(async move {
        let e = error.as_ref().map(|e| (e.code as i32, e.message.as_str()));
        let mut delay = Duration::from_millis(250);
        let give_up = Instant::now() + Duration::from_secs(180);
        while Instant::now() < give_up {
            tokio::time::sleep(delay).await;
            if store.release_fill(&kind, &sid, token, e).await.is_ok() {
                tracing::info!(%sid, token, "fill lease released late");
                return;
            }
            delay = (delay * 2).min(Duration::from_secs(2));
        }
        tracing::warn!(%sid, token, "gave up releasing the fill lease; it expires on its own");
    });
}

impl FillContext {
    /// One document's fill; what it ends with is remembered as a fresh document, so this
    /// process never answers an older version afterwards, whoever waited for it.
    async fn run_fill(
        &self,
        key: &FillKey,
        ticker: &Ticker,
        source: Arc<dyn Source>,
        per_source: Arc<Semaphore>,
        seen: Seen,
        forced: bool,
    ) -> FillResult {
        let stamp = self.hit_cache.as_ref().map(|c| c.stamp(key.0, &key.1));
        let started = Instant::now();
        let result = shared::trace::in_span(
            "fill",
            SpanKind::Internal,
            || {
                vec![
                    KeyValue::new("documents.kind", key.0.as_str()),
                    KeyValue::new("documents.source_id", key.1.clone()),
                ]
            },
            self.coordinated_fill(key, ticker, source, per_source, seen, forced),
        )
        .await;
        METRICS.fill(
            key.0.as_str(),
            result.is_ok(),
            started.elapsed().as_secs_f64(),
        );
        if let (Some(cache), Some(stamp), Ok(f)) = (&self.hit_cache, stamp, &result) {
            match f.outcome {
                // This fill wrote it: its own announcement will not evict it.
                Outcome::Created | Outcome::Refreshed => {
                    cache.remember_written(key.0, &f.head, stamp)
                }
                _ => cache.remember(key.0, &f.head, stamp),
            }
        }
        result
    }

    /// One document's fill, coordinated with other replicas through the lease.
    async fn coordinated_fill(
        &self,
        key: &FillKey,
        ticker: &Ticker,
        source: Arc<dyn Source>,
        per_source: Arc<Semaphore>,
        seen: Seen,
        forced: bool,
    ) -> FillResult {
        let (kind, sid) = (key.0.as_str(), key.1.as_str());
        if let Some(e) = self.cached_failure(key) {
            return Err(e);
        }
        let storage = |e: StorageError| ItemError::from(&e);
        // A holder that renews its lease is followed (callers' deadlines bound their own wait),
        // up to FOLLOW_LIMIT; one that stops renewing is taken over by the next claim.
        let started = Instant::now();
        let mut give_up = started + self.settings.lease_ttl * 2 + Duration::from_secs(5);
        let mut backoff = Duration::from_millis(10);
        let mut feed = None;
        loop {
            let claimed = {
                // The source's own permit first: a slow source queues its fills without
                // holding global permits that other sources' fills need.
                let _source = per_source
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| shutting_down())?;
                let _global = self
                    .global
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| shutting_down())?;
                let claim = self.store.claim_fill(
                    kind,
                    sid,
                    &self.settings.holder,
                    self.settings.lease_ttl,
                );
                match shared::trace::in_span("lease", SpanKind::Internal, Vec::new, claim)
                    .await
                    .map_err(storage)?
                {
                    Claim { token: None, .. } => None,
                    Claim {
                        token: Some(token),
                        head,
                    } => Some(
                        self.fill_holding(
                            key,
                            ticker,
                            source.as_ref(),
                            (token, head),
                            seen,
                            forced,
                        )
                        .await,
                    ),
                }
            };
            match claimed {
                Some(Ok(filled)) => return Ok(filled),
                Some(Err(FillError::Failed(e))) => return Err(e),
                Some(Err(FillError::LeaseLost)) | None => {}
            }
            // Another replica holds the lease: wait for its result.
            // Wake on the database's change announcement where there is one, else poll.
            let feed = feed.get_or_insert_with(|| self.store.changes());
            match feed {
                Some(rx) => {
                    let _ = tokio::time::timeout(backoff, changed(rx, kind, sid)).await;
                }
                None => tokio::time::sleep(backoff).await,
            }
            backoff = (backoff * 2).min(Duration::from_millis(100));
            if let Some(h) = self.newer_than(kind, sid, seen).await.map_err(storage)? {
                return Ok(Filled {
                    head: h,
                    outcome: Outcome::Hit,
                });
            }
            let held = match self.store.lease(kind, sid).await.map_err(storage)? {
                Some(lease) => {
                    if let (false, Some((code, message)), Some(at)) =
                        (lease.held, lease.last_error, lease.finished_at)
                    {
                        if at > seen.at {
                            return Err(ItemError::new(Code::from_i32(code), message));
                        }
                    }
                    lease.held
                }
                None => false,
            };
            if Instant::now() > give_up {
                if held && started.elapsed() < FOLLOW_LIMIT {
                    give_up = Instant::now() + self.settings.lease_ttl;
                } else {
                    return Err(ItemError::new(
                        Code::Unavailable,
                        format!("{ticker}: gave up waiting for another provider's fill of {sid}"),
                    )
                    .reason("FILL_WAIT_EXHAUSTED"));
                }
            }
        }
    }

    /// The fill proper, holding the lease with `token`.
    async fn fill_holding(
        &self,
        key: &FillKey,
        ticker: &Ticker,
        source: &dyn Source,
        (token, current): (i64, Option<DocumentHead>),
        seen: Seen,
        forced: bool,
    ) -> Result<Filled, FillError> {
        let (kind, sid) = (key.0.as_str(), key.1.as_str());
        let release = |error: Option<ItemError>| async move {
            let e = error.as_ref().map(|e| (e.code as i32, e.message.as_str()));
            if let Err(err) = self.store.release_fill(kind, sid, token, e).await {
                tracing::warn!(%sid, error = %err, "could not release the fill lease; retrying in the background");
                release_later(self.store.clone(), kind, sid, token, error.clone());
            }
        };
        // Someone may have finished a fill between our lookup and the claim (the claim read
        // the document right after claiming).
        if let Some(h) = current.filter(|h| !forced && seen.answers(h, self.settings.lease_ttl)) {
            release(None).await;
            return Ok(Filled {
                head: h,
                outcome: Outcome::Hit,
            });
        }
        let started = Instant::now();
        // The lease is renewed while the fetch runs, so it can be short (a killed filler
        // blocks the others only briefly) without a slow fetch losing it.
        let fetch = source.fetch(ticker);
        tokio::pin!(fetch);
        let ttl = self.settings.lease_ttl;
        let every = (ttl / 3).max(Duration::from_millis(1));
        let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let fetched = loop {
            tokio::select! {
                fetched = &mut fetch => break fetched,
                _ = renew.tick() => match self.store.renew_fill(kind, sid, token, ttl).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(%sid, token, "fill lease taken over while fetching; dropping this fetch");
                        return Err(FillError::LeaseLost);
                    }
                    // The fenced write decides; a database blip alone does not stop the fetch.
                    Err(e) => tracing::warn!(%sid, error = %e, "could not renew the fill lease"),
                },
            }
        };
        let content = match fetched {
            Ok(c) => c,
            Err(e) => {
                let mut err = ItemError::new(e.code(), format!("{ticker}: {e}")).reason(e.reason());
                // Until the negative cache lets a new fetch through, trying again only gets
                // this error back: say when.
                let ttl = self.settings.negative_cache_ttl;
                if !ttl.is_zero() {
                    err = err.retry_after(ttl);
                }
                self.remember_failure(key, &err);
                release(Some(err.clone())).await;
                return Err(FillError::Failed(err));
            }
        };
        let write = self
            .store
            .upsert(kind, sid, &content, &[], Some(Fence { token }));
        match shared::trace::in_span("store", SpanKind::Internal, Vec::new, write).await {
            Ok(w) => {
                tracing::debug!(%sid, version = w.head.version, token, elapsed_ms = started.elapsed().as_millis() as u64, "filled");
                Ok(Filled {
                    outcome: if w.inserted {
                        Outcome::Created
                    } else {
                        Outcome::Refreshed
                    },
                    head: w.head,
                })
            }
            Err(StorageError::LeaseLost(t)) => {
                tracing::warn!(%sid, token = t, "fill lease lost to another provider; its result will be served");
                Err(FillError::LeaseLost)
            }
            Err(e) => {
                let err = ItemError::from(&e);
                if e.code() == Code::Unavailable {
                    // The database is unreachable: answer now, release when it is back.
                    release_later(self.store.clone(), kind, sid, token, Some(err.clone()));
                } else {
                    release(Some(err.clone())).await;
                }
                Err(FillError::Failed(err))
            }
        }
    }

    async fn newer_than(
        &self,
        kind: &str,
        sid: &str,
        seen: Seen,
    ) -> Result<Option<DocumentHead>, StorageError> {
        let lookup = self.store.lookup(kind, &[sid.to_string()]).await?;
        Ok(lookup
            .heads
            .into_iter()
            .find(|h| seen.answers(h, self.settings.lease_ttl)))
    }

    fn cached_failure(&self, key: &FillKey) -> Option<ItemError> {
        let mut map = self.negative.lock().ok()?;
        match map.get(key) {
            Some((until, e)) if *until > Instant::now() => {
                let wait = until.duration_since(Instant::now());
                Some(
                    ItemError {
                        message: format!(
                            "{} (failed moments ago; will retry in {} ms)",
                            e.message,
                            wait.as_millis()
                        ),
                        ..e.clone()
                    }
                    .retry_after(wait),
                )
            }
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }

    fn remember_failure(&self, key: &FillKey, e: &ItemError) {
        let ttl = self.settings.negative_cache_ttl;
        if ttl.is_zero() {
            return;
        }
        if let Ok(mut map) = self.negative.lock() {
            let now = Instant::now();
            map.retain(|_, (until, _)| *until > now);
            map.insert(key.clone(), (now + ttl, e.clone()));
        }
    }
}

/// Resolves when the change feed announces `sid` (or may have missed it).
async fn changed(
    rx: &mut tokio::sync::broadcast::Receiver<shared::storage::Change>,
    kind: &str,
    sid: &str,
) {
    use shared::storage::Change;
    loop {
        match rx.recv().await {
            Ok(Change::Document {
                source_type,
                source_id,
                ..
            }) if source_type == kind && source_id == sid => return,
            Ok(Change::Document { .. } | Change::Heartbeat { .. }) => {}
            Ok(Change::Reset | Change::Lost) | Err(_) => return,
        }
    }
}

/// Longest a fill follows another replica's live lease before giving up.
const FOLLOW_LIMIT: Duration = Duration::from_secs(300);

enum FillError {
    Failed(ItemError),
    LeaseLost,
}

fn shutting_down() -> ItemError {
    ItemError::new(Code::Unavailable, "provider is shutting down").reason("SHUTTING_DOWN")
}

/// The results for every position `indices` of the request that asked for document `sid`.
fn answer_all(
    identifiers: &[String],
    indices: Vec<usize>,
    sid: &str,
    req: Request,
    filled: &FillResult,
    previous: Option<&DocumentHead>,
    now: DateTime<Utc>,
) -> Vec<DocumentResult> {
    indices
        .into_iter()
        .map(|i| answer(&identifiers[i], i, sid, req, filled, previous, now))
        .collect()
}

/// The result for one identifier from its document's fill (or hit).
fn answer(
    identifier: &str,
    index: usize,
    sid: &str,
    req: Request,
    filled: &FillResult,
    previous: Option<&DocumentHead>,
    now: DateTime<Utc>,
) -> DocumentResult {
    let kind = req.kind.as_str();
    let ok = |head: &DocumentHead, outcome: Outcome, error: Option<ItemError>| DocumentResult {
        identifier: identifier.to_string(),
        source_id: sid.to_string(),
        kind: kind.to_string(),
        document_id: head.id.clone(),
        tags: head.tags.clone(),
        fresh: outcome == Outcome::Hit,
        created: matches!(outcome, Outcome::Created | Outcome::Refreshed),
        version: head.version,
        last_synced: Some(head.last_synced),
        outcome,
        error,
        index: index as u32,
        refreshing: false,
    };
    match filled {
        Ok(f) => ok(&f.head, f.outcome, None),
        Err(e) => match (previous, req.stale_if_error_hours) {
            (Some(h), Some(max)) if now - h.last_synced <= ChronoDuration::hours(i64::from(max)) => {
                ok(h, Outcome::Stale, Some(e.clone()))
            }
            (Some(h), Some(max)) => DocumentResult {
                index: index as u32,
                ..DocumentResult::failed(
                    identifier,
                    kind,
                    sid.to_string(),
                    ItemError {
                        message: format!(
                            "{}; the stored version is {} old, more than options.stale_if_error_hours ({max} h) accepts",
                            e.message,
                            age_text(now - h.last_synced)
                        ),
                        ..e.clone()
                    },
                )
            },
            _ => DocumentResult {
                index: index as u32,
                ..DocumentResult::failed(identifier, kind, sid.to_string(), e.clone())
            },
        },
    }
}

/// An age for messages: minutes under two hours, hours above.
fn age_text(age: ChronoDuration) -> String {
    match age.num_minutes() {
        m if m < 120 => format!("{m} min"),
        _ => format!("{} h", age.num_hours()),
    }
}

/// Stale-while-revalidate applies: not forced, and the document at most
/// `stale_while_revalidate_hours` past the caller's window.
fn may_revalidate(head: &DocumentHead, now: DateTime<Utc>, req: Request) -> bool {
    let Some(extra) = req.stale_while_revalidate_hours else {
        return false;
    };
    !req.force_refresh
        && req.cache_hours > 0
        && now - head.last_synced
            <= ChronoDuration::hours(i64::from(req.cache_hours) + i64::from(extra))
}

fn is_fresh(head: &DocumentHead, now: DateTime<Utc>, req: Request) -> bool {
    !req.force_refresh
        && !head.invalidated
        && req.cache_hours > 0
        && now - head.last_synced < ChronoDuration::hours(i64::from(req.cache_hours))
}

struct InFlightGuard {
    map: Arc<Mutex<HashMap<FillKey, InFlight>>>,
    key: FillKey,
    id: u64,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if let Ok(mut map) = self.map.lock() {
            if map.get(&self.key).is_some_and(|f| f.id == self.id) {
                map.remove(&self.key);
            }
        }
    }
}
