//! Fills across replicas: a fill claims its document's lease in the database; the holder fetches
//! (renewing the lease meanwhile, its fetch bounded by permits) and writes fenced by the lease's
//! token; the others follow the holder until a newer document appears, it reports an error, or
//! the lease expires and they take over. What a fill ends with is remembered by the hit view.

use std::{sync::Arc, time::Duration};

use documents_api::{ItemError, Outcome, Ticker};
use documents_kit::{
    status::StorageStatus as _,
    trace::{KeyValue, SpanKind},
};
use documents_store::{Claim, DocumentHead, DocumentStore, Fence, SourceKey, StorageError};
use tokio::{sync::Semaphore, time::Instant};
use tonic::Code;

use super::{
    fill::{shutting_down, FillError, FillResult, Filled, Seen},
    hit_view::HitView,
    negative_cache::NegativeCache,
    request::Settings,
};
use crate::{metrics::METRICS, sources::Source};

/// Longest a fill follows another replica's live lease before giving up.
const FOLLOW_LIMIT: Duration = Duration::from_secs(300);

/// Fetches a fill makes again when purges keep landing while it fetches; past them it answers
/// what it wrote (stored still purged, so the next lookup refreshes it).
const MAX_PURGED_REFETCHES: u32 = 2;

/// One document's fill, as the process starts it.
pub struct FillJob {
    pub key: SourceKey,
    pub ticker: Ticker,
    pub source: Arc<dyn Source>,
    /// The fetches its source may run at once.
    pub per_source: Arc<Semaphore>,
    pub seen: Seen,
    /// A forced refresh: it fetches even if another filler wrote a newer version meanwhile.
    pub forced: bool,
}

/// What every fill of the process shares: the store, the bound on fetches of all sources, the
/// negative cache, the settings and the hit view its results go to.
pub struct Filler {
    pub store: Arc<dyn DocumentStore>,
    pub global: Arc<Semaphore>,
    pub negative: NegativeCache,
    pub settings: Arc<Settings>,
    pub hit_view: Option<Arc<HitView>>,
}

impl Filler {
    /// Runs a fill to its end; what it ends with is remembered as a fresh document, so this
    /// process never answers an older version afterwards, whoever waited for it.
    pub async fn run(&self, job: FillJob) -> FillResult {
        let stamp = self.hit_view.as_ref().map(|v| v.stamp(&job.key));
        let started = Instant::now();
        let kind = job.key.kind();
        let result = documents_kit::trace::in_span(
            "fill",
            SpanKind::Internal,
            || {
                vec![
                    KeyValue::new("documents.kind", kind.as_str()),
                    KeyValue::new("documents.source_id", job.key.source_id()),
                ]
            },
            self.coordinated(&job),
        )
        .await;
        METRICS.fill(
            kind.as_str(),
            result.is_ok(),
            started.elapsed().as_secs_f64(),
        );
        if let (Some(view), Some(stamp), Ok(f)) = (&self.hit_view, stamp, &result) {
            match f.outcome {
                // This fill wrote it: its own announcement will not evict it.
                Outcome::Created | Outcome::Refreshed => view.remember_written(&f.head, stamp),
                _ => view.remember(&f.head, stamp),
            }
        }
        result
    }

    /// One document's fill, coordinated with other replicas through the lease.
    async fn coordinated(&self, job: &FillJob) -> FillResult {
        if let Some(e) = self.negative.get(&job.key) {
            return Err(e);
        }
        if documents_kit::switches::off(documents_kit::switches::COALESCE_ACROSS_REPLICAS) {
            return self.unleased(job).await;
        }
        let key = &job.key;
        let mut seen = job.seen;
        let mut purged = 0;
        let storage = |e: StorageError| e.item_error();
        // A holder that renews its lease is followed (callers' deadlines bound their own wait),
        // up to FOLLOW_LIMIT; one that stops renewing is taken over by the next claim.
        let started = Instant::now();
        let mut give_up = started + self.settings.lease_ttl * 2 + Duration::from_secs(5);
        let mut backoff = Duration::from_millis(10);
        let mut feed = None;
        loop {
            // The lease first, without a permit: a fill waiting for its turn already holds its
            // document (other replicas wait for it rather than fetch it too), and its claim's
            // round trip overlaps the fetches running ahead of it.
            let claim = self
                .store
                .claim_fill(key, &self.settings.holder, self.settings.lease_ttl);
            let claimed =
                match documents_kit::trace::in_span("lease", SpanKind::Internal, Vec::new, claim)
                    .await
                    .map_err(storage)?
                {
                    Claim { token: None, .. } => None,
                    Claim {
                        token: Some(token),
                        head,
                    } => Some(self.holding(job, token, head, seen).await),
                };
            match claimed {
                Some(Ok(filled)) => return Ok(filled),
                Some(Err(FillError::Failed(e))) => return Err(e),
                // A purge landed while this fill fetched: what it wrote stays purged, and no
                // caller gets it. Fetch again at once, under a new claim (a fetch that starts
                // after the purge), unless purges keep coming.
                Some(Err(FillError::Purged(written))) => {
                    if documents_kit::switches::off(documents_kit::switches::PURGE_REFETCH) {
                        return Ok(written);
                    }
                    purged += 1;
                    METRICS.purge_raced(key.kind().as_str());
                    tracing::info!(%key, version = written.head.version, "purged while fetching; fetching again");
                    if purged > MAX_PURGED_REFETCHES {
                        return Ok(written);
                    }
                    seen.version = seen.version.max(written.head.version);
                    continue;
                }
                Some(Err(FillError::LeaseLost)) | None => {}
            }
            // Another replica holds the lease: wait for its result.
            // Wake on the database's change announcement where there is one, else poll.
            let feed = feed.get_or_insert_with(|| self.store.changes());
            match feed {
                Some(rx) => {
                    let _ = tokio::time::timeout(backoff, changed(rx, key)).await;
                }
                None => tokio::time::sleep(backoff).await,
            }
            backoff = (backoff * 2).min(Duration::from_millis(100));
            if let Some(h) = self.newer_than(key, seen).await.map_err(storage)? {
                return Ok(Filled {
                    head: h,
                    outcome: seen.filled_by_another(),
                });
            }
            let held = match self.store.lease(key).await.map_err(storage)? {
                Some(lease) => {
                    if let (false, Some((code, message)), Some(at)) =
                        (lease.held, lease.last_error, lease.finished_at)
                    {
                        if at > seen.at {
                            // Recorded by any replica, of any release: scrubbed again.
                            return Err(ItemError::new(
                                Code::from_i32(code),
                                documents_kit::secrets::scrub(&message),
                            ));
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
                        format!(
                            "{}: gave up waiting for another provider's fill of {key}",
                            job.ticker
                        ),
                    )
                    .reason("FILL_WAIT_EXHAUSTED"));
                }
            }
        }
    }

    /// The fill proper, holding the lease with `token` (`current`: the document as the claim
    /// read it). Its fetch waits for a permit of its source and of the process: they bound
    /// fetches, and are given back once the fetch is over, so the next fill's fetch overlaps
    /// this one's parsing and writing (which the pool bounds). The lease is renewed from the
    /// start, the wait for permits included.
    async fn holding(
        &self,
        job: &FillJob,
        token: i64,
        current: Option<DocumentHead>,
        seen: Seen,
    ) -> Result<Filled, FillError> {
        let key = &job.key;
        let release = |error: Option<ItemError>| async move {
            let e = error.as_ref().map(|e| (e.code as i32, e.message.as_str()));
            if let Err(err) = self.store.release_fill(key, token, e).await {
                tracing::warn!(%key, error = %err, "could not release the fill lease; retrying in the background");
                release_later(self.store.clone(), key.clone(), token, error.clone());
            }
        };
        // Someone may have finished a fill between our lookup and the claim (the claim read
        // the document right after claiming).
        if let Some(h) = current.filter(|h| !job.forced && seen.answers(h, self.settings.lease_ttl))
        {
            release(None).await;
            return Ok(Filled {
                head: h,
                outcome: seen.filled_by_another(),
            });
        }
        let started = Instant::now();
        // The lease is renewed while the fetch runs, so it can be short (a killed filler
        // blocks the others only briefly) without a slow fetch losing it.
        let fetch = async {
            // The source's own permit first: a slow source queues its fills without holding
            // global permits that other sources' fills need.
            let _source = job.per_source.clone().acquire_owned().await.ok()?;
            let _global = self.global.clone().acquire_owned().await.ok()?;
            Some(job.source.fetch(&job.ticker).await)
        };
        tokio::pin!(fetch);
        let ttl = self.settings.lease_ttl;
        let every = (ttl / 3).max(Duration::from_millis(1));
        let mut renew = tokio::time::interval_at(Instant::now() + every, every);
        let fetched = loop {
            tokio::select! {
                fetched = &mut fetch => break fetched,
                _ = renew.tick() => match self.store.renew_fill(key, token, ttl).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(%key, token, "fill lease taken over while fetching; dropping this fetch");
                        return Err(FillError::LeaseLost);
                    }
                    // The fenced write decides; a database blip alone does not stop the fetch.
                    Err(e) => tracing::warn!(%key, error = %e, "could not renew the fill lease"),
                },
            }
        };
        let Some(fetched) = fetched else {
            release(None).await;
            return Err(FillError::Failed(shutting_down()));
        };
        let content = match fetched {
            Ok(c) => c,
            Err(e) => {
                let err = self.failed(&job.ticker, &e);
                self.negative.remember(key, &err);
                release(Some(err.clone())).await;
                return Err(FillError::Failed(err));
            }
        };
        let write = self
            .store
            .upsert(key, &content, &[], Some(Fence::last(token)));
        match documents_kit::trace::in_span("store", SpanKind::Internal, Vec::new, write).await {
            Ok(w) => {
                tracing::debug!(%key, version = w.head.version, token, elapsed_ms = started.elapsed().as_millis() as u64, "filled");
                let filled = Filled {
                    outcome: if w.inserted {
                        Outcome::Created
                    } else {
                        Outcome::Refreshed
                    },
                    head: w.head,
                };
                // The database kept the mark: the document was purged after this fill claimed
                // its lease, so what it fetched may predate the purge.
                if filled.head.invalidated {
                    return Err(FillError::Purged(filled));
                }
                Ok(filled)
            }
            Err(StorageError::LeaseLost(t)) => {
                tracing::warn!(%key, token = t, "fill lease lost to another provider; its result will be served");
                Err(FillError::LeaseLost)
            }
            Err(e) => {
                let err = e.item_error();
                if e.is_transient() {
                    // The database is unreachable: answer now, release when it is back.
                    release_later(self.store.clone(), key.clone(), token, Some(err.clone()));
                } else {
                    release(Some(err.clone())).await;
                }
                Err(FillError::Failed(err))
            }
        }
    }

    /// A source's failure as the fill's error: the ticker named, secrets scrubbed (sources
    /// never format one; an upstream's or a library's text might), and, until the negative
    /// cache lets a new fetch through, when trying again can help.
    fn failed(&self, ticker: &Ticker, e: &crate::sources::SourceError) -> ItemError {
        let message = format!("{ticker}: {e}");
        let err =
            ItemError::new(e.code(), documents_kit::secrets::scrub(&message)).reason(e.reason());
        match self.negative.ttl() {
            ttl if ttl.is_zero() => err,
            ttl => err.retry_after(ttl),
        }
    }

    /// A fill that claims no lease (the history checker's switch that turns coalescing across
    /// replicas off): fetch under the permits, write unfenced.
    async fn unleased(&self, job: &FillJob) -> FillResult {
        let fetched = {
            let _source = job
                .per_source
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
            job.source.fetch(&job.ticker).await
        };
        let content = fetched.map_err(|e| self.failed(&job.ticker, &e))?;
        let w = self
            .store
            .upsert(&job.key, &content, &[], None)
            .await
            .map_err(|e| e.item_error())?;
        Ok(Filled {
            outcome: if w.inserted {
                Outcome::Created
            } else {
                Outcome::Refreshed
            },
            head: w.head,
        })
    }

    /// Another filler's result for `key` this request may answer with, if there is one.
    async fn newer_than(
        &self,
        key: &SourceKey,
        seen: Seen,
    ) -> Result<Option<DocumentHead>, StorageError> {
        let lookup = self.store.lookup(std::slice::from_ref(key)).await?;
        Ok(lookup
            .heads
            .into_iter()
            .find(|h| seen.answers(h, self.settings.lease_ttl)))
    }
}

/// Retries releasing a lease whose release failed (the database was down), so no expired
/// lease is left held: every 250 ms doubling to 2 s, for about three minutes. The token makes a
/// late release harmless if another filler has taken the lease over meanwhile.
fn release_later(
    store: Arc<dyn DocumentStore>,
    key: SourceKey,
    token: i64,
    error: Option<ItemError>,
) {
    tokio::spawn(async move {
        let e = error.as_ref().map(|e| (e.code as i32, e.message.as_str()));
        let mut delay = Duration::from_millis(250);
        let give_up = Instant::now() + Duration::from_secs(180);
        while Instant::now() < give_up {
            tokio::time::sleep(delay).await;
            if store.release_fill(&key, token, e).await.is_ok() {
                tracing::info!(%key, token, "fill lease released late");
                return;
            }
            delay = (delay * 2).min(Duration::from_secs(2));
        }
        tracing::warn!(%key, token, "gave up releasing the fill lease; it expires on its own");
    });
}

/// Resolves when the change feed announces `key` (or may have missed it).
async fn changed(
    rx: &mut tokio::sync::broadcast::Receiver<documents_store::Change>,
    key: &SourceKey,
) {
    use documents_store::Change;
    loop {
        match rx.recv().await {
            Ok(Change::Document { key: changed, .. }) if changed == *key => return,
            Ok(Change::Document { .. } | Change::Heartbeat { .. }) => {}
            Ok(Change::Reset | Change::Lost) | Err(_) => return,
        }
    }
}
