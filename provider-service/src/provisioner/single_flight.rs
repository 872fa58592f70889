//! In-process single flight: one fill task per document at a time, whoever asks. Callers join
//! the fill in flight (or start one); the fill runs detached, so a caller that gives up does not
//! cancel it, and every waiter gets its result.

use super::*;

pub(super) struct InFlight {
    pub(super) id: u64,
    pub(super) started: Instant,
    /// A forced refresh: it fetches even when a newer version appeared since its lookup.
    pub(super) forced: bool,
    /// Started by refresh-ahead.
    pub(super) ahead: bool,
    pub(super) fut: FillFuture,
}

impl Provisioner {
    /// The fill of `source_id` running in this process, if a request that arrived at `arrived`
    /// may share it.
    pub(super) fn in_flight_fill(
        &self,
        req: Request,
        source_id: &str,
        arrived: Instant,
    ) -> Option<FillFuture> {
        if documents_kit::switches::off(documents_kit::switches::COALESCE_IN_PROCESS) {
            return None;
        }
        let map = self.in_flight.lock().expect("in-flight map poisoned");
        map.get(&(req.kind, source_id.to_string()))
            .filter(|f| !req.force_refresh || (f.forced && f.started >= arrived))
            .inspect(|_| METRICS.coalesced(req.kind.as_str()))
            .map(|f| f.fut.clone())
    }

    /// Joins the fill in flight for the key, or starts one. A forced refresh only joins a fill
    /// that started after the request arrived; an older one is awaited and then a new one made.
    pub(super) fn fill(
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

    pub(super) async fn join_or_start(
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
                let running = map.get(&key).filter(|_| {
                    !documents_kit::switches::off(documents_kit::switches::COALESCE_IN_PROCESS)
                });
                match running {
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
    pub(super) fn start_fill(
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
        let trace =
            documents_kit::trace::TraceContext::current().unwrap_or_else(TraceContext::root);
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

pub(super) struct InFlightGuard {
    pub(super) map: Arc<Mutex<HashMap<FillKey, InFlight>>>,
    pub(super) key: FillKey,
    pub(super) id: u64,
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
