//! Fills across replicas: a fill claims its document's lease in the database; the holder fetches
//! (renewing the lease meanwhile, its fetch bounded by permits) and writes fenced by the lease's
//! token; the others follow the holder until a newer document appears, it reports an error, or
//! the lease expires and they take over.

use super::*;

/// Retries releasing a lease whose release failed (the database was down), so no expired
/// lease is left held: every 250 ms doubling to 2 s, for about three minutes. The token makes a
/// late release harmless if another filler has taken the lease over meanwhile.
pub(super) fn release_later(
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
    pub(super) async fn run_fill(
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
        let result = documents_kit::trace::in_span(
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
    pub(super) async fn coordinated_fill(
        &self,
        key: &FillKey,
        ticker: &Ticker,
        source: Arc<dyn Source>,
        per_source: Arc<Semaphore>,
        mut seen: Seen,
        forced: bool,
    ) -> FillResult {
        let (kind, sid) = (key.0.as_str(), key.1.as_str());
        if let Some(e) = self.cached_failure(key) {
            return Err(e);
        }
        let mut purged = 0;
        if documents_kit::switches::off(documents_kit::switches::COALESCE_ACROSS_REPLICAS) {
            return self
                .unleased_fill(ticker, source.as_ref(), kind, sid, per_source)
                .await;
        }
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
            let claim =
                self.store
                    .claim_fill(kind, sid, &self.settings.holder, self.settings.lease_ttl);
            let claimed =
                match documents_kit::trace::in_span("lease", SpanKind::Internal, Vec::new, claim)
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
                            per_source.clone(),
                        )
                        .await,
                    ),
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
                    METRICS.purge_raced(kind);
                    tracing::info!(%sid, version = written.head.version, "purged while fetching; fetching again");
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
                    let _ = tokio::time::timeout(backoff, changed(rx, kind, sid)).await;
                }
                None => tokio::time::sleep(backoff).await,
            }
            backoff = (backoff * 2).min(Duration::from_millis(100));
            if let Some(h) = self.newer_than(kind, sid, seen).await.map_err(storage)? {
                return Ok(Filled {
                    head: h,
                    outcome: seen.filled_by_another(),
                });
            }
            let held = match self.store.lease(kind, sid).await.map_err(storage)? {
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
                        format!("{ticker}: gave up waiting for another provider's fill of {sid}"),
                    )
                    .reason("FILL_WAIT_EXHAUSTED"));
                }
            }
        }
    }

    /// The fill proper, holding the lease with `token`. Its fetch waits for a permit of its
    /// source (`per_source`) and of the process: they bound fetches, and are given back once the
    /// fetch is over, so the next fill's fetch overlaps this one's parsing and writing (which the
    /// pool bounds). The lease is renewed from the start, the wait for permits included.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn fill_holding(
        &self,
        key: &FillKey,
        ticker: &Ticker,
        source: &dyn Source,
        (token, current): (i64, Option<DocumentHead>),
        seen: Seen,
        forced: bool,
        per_source: Arc<Semaphore>,
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
                outcome: seen.filled_by_another(),
            });
        }
        let started = Instant::now();
        // The lease is renewed while the fetch runs, so it can be short (a killed filler
        // blocks the others only briefly) without a slow fetch losing it.
        let global = self.global.clone();
        let fetch = async {
            // The source's own permit first: a slow source queues its fills without holding
            // global permits that other sources' fills need.
            let _source = per_source.acquire_owned().await.ok()?;
            let _global = global.acquire_owned().await.ok()?;
            Some(source.fetch(ticker).await)
        };
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
        let Some(fetched) = fetched else {
            release(None).await;
            return Err(FillError::Failed(shutting_down()));
        };
        let content = match fetched {
            Ok(c) => c,
            Err(e) => {
                // Sources never format a secret; an upstream's or a library's text might.
                let message = format!("{ticker}: {e}");
                let mut err = ItemError::new(e.code(), documents_kit::secrets::scrub(&message))
                    .reason(e.reason());
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
            .upsert(kind, sid, &content, &[], Some(Fence::last(token)));
        match documents_kit::trace::in_span("store", SpanKind::Internal, Vec::new, write).await {
            Ok(w) => {
                tracing::debug!(%sid, version = w.head.version, token, elapsed_ms = started.elapsed().as_millis() as u64, "filled");
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
                tracing::warn!(%sid, token = t, "fill lease lost to another provider; its result will be served");
                Err(FillError::LeaseLost)
            }
            Err(e) => {
                let err = e.item_error();
                if e.is_transient() {
                    // The database is unreachable: answer now, release when it is back.
                    release_later(self.store.clone(), kind, sid, token, Some(err.clone()));
                } else {
                    release(Some(err.clone())).await;
                }
                Err(FillError::Failed(err))
            }
        }
    }

    /// A fill that claims no lease (the history checker's switch that turns coalescing across
    /// replicas off): fetch under the permits, write unfenced.
    async fn unleased_fill(
        &self,
        ticker: &Ticker,
        source: &dyn Source,
        kind: &str,
        sid: &str,
        per_source: Arc<Semaphore>,
    ) -> FillResult {
        let fetched = {
            let _source = per_source
                .acquire_owned()
                .await
                .map_err(|_| shutting_down())?;
            let _global = self
                .global
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| shutting_down())?;
            source.fetch(ticker).await
        };
        let content = fetched
            .map_err(|e| ItemError::new(e.code(), format!("{ticker}: {e}")).reason(e.reason()))?;
        let w = self
            .store
            .upsert(kind, sid, &content, &[], None)
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

    pub(super) async fn newer_than(
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
}

/// Resolves when the change feed announces `sid` (or may have missed it).
pub(super) async fn changed(
    rx: &mut tokio::sync::broadcast::Receiver<documents_store::Change>,
    kind: &str,
    sid: &str,
) {
    use documents_store::Change;
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
pub(super) const FOLLOW_LIMIT: Duration = Duration::from_secs(300);

/// Fetches a fill makes again when purges keep landing while it fetches; past them it answers
/// what it wrote (stored still purged, so the next lookup refreshes it).
pub(super) const MAX_PURGED_REFETCHES: u32 = 2;

pub(super) enum FillError {
    Failed(ItemError),
    LeaseLost,
    /// Written, but a purge that landed after this fill's claim keeps it stale.
    Purged(Filled),
}
