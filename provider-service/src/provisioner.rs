//! The provisioning core: judges freshness, fills misses from the sources, coalesces concurrent
//! fills of the same document, and answers batches in request order.
//!
//! A batch is looked up in one query. Misses are filled concurrently, each fill bounded by a
//! process-wide semaphore. A fill runs in its own task, detached from the callers that wait for
//! it: a caller that gives up does not cancel it, and every waiter gets its result (or its
//! error, including a panic).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Instant,
};

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use futures::{
    future::{BoxFuture, Shared},
    FutureExt,
};
use shared::{
    provider::{DEFAULT_CACHE_HOURS, MAX_CACHE_HOURS},
    storage::{DocumentHead, DocumentStore},
    DocumentResult, ItemError, Kind, Outcome, Ticker,
};
use tokio::sync::Semaphore;
use tonic::{Code, Status};

use crate::sources::Sources;

/// Provisioning settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub default_kind: Kind,
    pub default_cache_hours: u32,
    pub default_exchange: String,
    pub max_batch_size: usize,
    /// Fills running at once in this process.
    pub fill_concurrency: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            default_kind: Kind::Announcement,
            default_cache_hours: DEFAULT_CACHE_HOURS,
            default_exchange: "ASX".into(),
            max_batch_size: 1000,
            fill_concurrency: 32,
        }
    }
}

/// A validated request: kind, freshness window, force flag.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    pub kind: Kind,
    pub cache_hours: u32,
    pub force_refresh: bool,
}

/// What a finished fill hands to its waiters.
#[derive(Debug, Clone)]
struct Filled {
    head: DocumentHead,
    outcome: Outcome,
}

type FillFuture = Shared<BoxFuture<'static, Result<Filled, ItemError>>>;

struct InFlight {
    id: u64,
    started: Instant,
    fut: FillFuture,
}

type FillKey = (Kind, String);

pub struct Provisioner {
    store: Arc<dyn DocumentStore>,
    sources: Sources,
    settings: Settings,
    fill_permits: Arc<Semaphore>,
    in_flight: Arc<Mutex<HashMap<FillKey, InFlight>>>,
    next_fill_id: AtomicU64,
}

impl Provisioner {
    pub fn new(store: Arc<dyn DocumentStore>, sources: Sources, settings: Settings) -> Self {
        let permits = settings.fill_concurrency.max(1);
        Self {
            store,
            sources,
            settings,
            fill_permits: Arc::new(Semaphore::new(permits)),
            in_flight: Arc::new(Mutex::new(HashMap::new())),
            next_fill_id: AtomicU64::new(0),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Validates the whole-request fields. Errors name the field and the rule.
    pub fn validate(
        &self,
        kind: &str,
        cache_hours: Option<u32>,
        force_refresh: bool,
        batch_len: usize,
    ) -> Result<Request, Status> {
        let kind = if kind.trim().is_empty() {
            self.settings.default_kind
        } else {
            kind.parse::<Kind>()
                .map_err(|e| Status::invalid_argument(format!("kind: {e}")))?
        };
        if !self.sources.contains_key(&kind) {
            return Err(Status::invalid_argument(format!(
                "kind: {kind:?} is not provided by this service: expected one of {}",
                self.provided_kinds().join(", ")
            )));
        }
        let cache_hours = cache_hours.unwrap_or(self.settings.default_cache_hours);
        if cache_hours > MAX_CACHE_HOURS {
            return Err(Status::invalid_argument(format!(
                "options.cache_hours: {cache_hours} is more than the maximum of {MAX_CACHE_HOURS}"
            )));
        }
        if batch_len > self.settings.max_batch_size {
            return Err(Status::invalid_argument(format!(
                "identifiers: {batch_len} identifiers is more than the maximum batch size of {}",
                self.settings.max_batch_size
            )));
        }
        Ok(Request {
            kind,
            cache_hours,
            force_refresh,
        })
    }

    fn provided_kinds(&self) -> Vec<&'static str> {
        let mut kinds: Vec<_> = self.sources.keys().map(|k| k.as_str()).collect();
        kinds.sort();
        kinds
    }

    /// Ensures every identifier's document; one result per identifier, in order.
    pub async fn provide(&self, identifiers: &[String], req: Request) -> Vec<DocumentResult> {
        let arrived = Instant::now();
        let kind = req.kind.as_str();
        let parsed: Vec<Result<Ticker, ItemError>> = identifiers
            .iter()
            .map(|id| {
                Ticker::parse_with_default(id, &self.settings.default_exchange)
                    .map_err(|e| ItemError::new(Code::InvalidArgument, format!("identifier: {e}")))
            })
            .collect();

        // Unique source keys, in first-seen order.
        let mut keys: Vec<(String, Ticker)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for t in parsed.iter().flatten() {
            let sid = t.source_id(kind);
            if !index.contains_key(&sid) {
                index.insert(sid.clone(), keys.len());
                keys.push((sid, t.clone()));
            }
        }

        let answers: Vec<Result<Filled, ItemError>> = if keys.is_empty() {
            Vec::new()
        } else {
            let ids: Vec<String> = keys.iter().map(|(s, _)| s.clone()).collect();
            match self.store.lookup(kind, &ids).await {
                Err(e) => {
                    let err = ItemError::new(e.code(), e.to_string());
                    vec![Err(err); keys.len()]
                }
                Ok(lookup) => {
                    let heads: HashMap<&str, &DocumentHead> = lookup
                        .heads
                        .iter()
                        .map(|h| (h.source_id.as_str(), h))
                        .collect();
                    let work = keys.iter().map(|(sid, ticker)| {
                        let head = heads.get(sid.as_str()).copied();
                        match head {
                            Some(h) if is_fresh(h, lookup.now, req) => {
                                futures::future::ready(Ok(Filled {
                                    head: h.clone(),
                                    outcome: Outcome::Hit,
                                }))
                                .boxed()
                            }
                            _ => self
                                .fill(
                                    req,
                                    ticker.clone(),
                                    sid.clone(),
                                    arrived,
                                    (!req.force_refresh).then_some(lookup.now),
                                )
                                .boxed(),
                        }
                    });
                    futures::future::join_all(work).await
                }
            }
        };

        identifiers
            .iter()
            .zip(parsed)
            .map(|(identifier, parsed)| {
                let ticker = match parsed {
                    Ok(t) => t,
                    Err(e) => return DocumentResult::failed(identifier, kind, String::new(), e),
                };
                let sid = ticker.source_id(kind);
                match &answers[index[&sid]] {
                    Ok(f) => DocumentResult {
                        identifier: identifier.clone(),
                        source_id: sid,
                        kind: kind.to_string(),
                        document_id: f.head.id.clone(),
                        tags: f.head.tags.clone(),
                        fresh: f.outcome == Outcome::Hit,
                        created: matches!(f.outcome, Outcome::Created | Outcome::Refreshed),
                        version: f.head.version,
                        last_synced: Some(f.head.last_synced),
                        outcome: f.outcome,
                        error: None,
                    },
                    Err(e) => DocumentResult::failed(identifier, kind, sid, e.clone()),
                }
            })
            .collect()
    }

    /// Joins the fill in flight for the key, or starts one. A forced refresh only joins a fill
    /// that started after the request arrived; an older one is awaited and then a new one made.
    async fn fill(
        &self,
        req: Request,
        ticker: Ticker,
        source_id: String,
        arrived: Instant,
        fresh_after: Option<DateTime<Utc>>,
    ) -> Result<Filled, ItemError> {
        let key: FillKey = (req.kind, source_id);
        loop {
            let (fut, join) = {
                let mut map = self.in_flight.lock().expect("in-flight map poisoned");
                match map.get(&key) {
                    Some(f) if !req.force_refresh || f.started >= arrived => (f.fut.clone(), true),
                    Some(f) => (f.fut.clone(), false),
                    None => {
                        let (id, fut) = self.start_fill(&key, ticker.clone(), fresh_after);
                        map.insert(
                            key.clone(),
                            InFlight {
                                id,
                                started: Instant::now(),
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
            // An older fill: let it finish, then look again.
            let _ = fut.await;
        }
    }

    /// Spawns the fill task. The task removes its own in-flight entry when it ends, however it
    /// ends (including a panic, through the guard's Drop).
    fn start_fill(
        &self,
        key: &FillKey,
        ticker: Ticker,
        fresh_after: Option<DateTime<Utc>>,
    ) -> (u64, FillFuture) {
        let id = self.next_fill_id.fetch_add(1, Ordering::Relaxed);
        let store = self.store.clone();
        let source = self.sources.get(&key.0).cloned();
        let permits = self.fill_permits.clone();
        let guard = InFlightGuard {
            map: self.in_flight.clone(),
            key: key.clone(),
            id,
        };
        let (kind, source_id) = key.clone();
        let handle = tokio::spawn(async move {
            let _guard = guard;
            let _permit = permits
                .acquire_owned()
                .await
                .map_err(|_| ItemError::new(Code::Unavailable, "provider is shutting down"))?;
            let source = source.ok_or_else(|| {
                ItemError::new(Code::InvalidArgument, format!("kind: {kind} has no source"))
            })?;
            // Another caller (or replica) may have filled it since our lookup.
            if let Some(after) = fresh_after {
                let lookup = store
                    .lookup(kind.as_str(), std::slice::from_ref(&source_id))
                    .await
                    .map_err(|e| ItemError::new(e.code(), e.to_string()))?;
                if let Some(h) = lookup.heads.into_iter().find(|h| h.last_synced > after) {
                    return Ok(Filled {
                        head: h,
                        outcome: Outcome::Hit,
                    });
                }
            }
            let started = Instant::now();
            let content = source
                .fetch(&ticker)
                .await
                .map_err(|e| ItemError::new(e.code(), format!("{ticker}: {e}")))?;
            let written = store
                .upsert(kind.as_str(), &source_id, &content, &[])
                .await
                .map_err(|e| ItemError::new(e.code(), e.to_string()))?;
            tracing::debug!(%source_id, version = written.head.version, elapsed_ms = started.elapsed().as_millis() as u64, "filled");
            Ok(Filled {
                outcome: if written.inserted {
                    Outcome::Created
                } else {
                    Outcome::Refreshed
                },
                head: written.head,
            })
        });
        let fut = async move {
            match handle.await {
                Ok(r) => r,
                Err(e) => Err(ItemError::new(
                    Code::Internal,
                    format!(
                        "fill failed unexpectedly: {}",
                        if e.is_panic() {
                            "panicked"
                        } else {
                            "cancelled"
                        }
                    ),
                )),
            }
        }
        .boxed()
        .shared();
        (id, fut)
    }
}

fn is_fresh(head: &DocumentHead, now: DateTime<Utc>, req: Request) -> bool {
    !req.force_refresh
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
