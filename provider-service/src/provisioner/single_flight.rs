//! In-process single flight: one fill task per document at a time, whoever asks. Callers join
//! the fill in flight (or start one); the fill runs detached, so a caller that gives up does not
//! cancel it, and every waiter gets its result (a panic included, as an error).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use documents_api::ItemError;
use documents_kit::trace::TraceContext;
use documents_store::SourceKey;
use futures::{future::BoxFuture, FutureExt};
use tokio::time::Instant;
use tonic::Code;

use super::{
    fill::{FillFuture, FillResult},
    request::Request,
};
use crate::metrics::METRICS;

/// The fills running in this process, one per document.
#[derive(Default)]
pub struct SingleFlight {
    running: Arc<Mutex<HashMap<SourceKey, InFlight>>>,
    next_id: AtomicU64,
}

struct InFlight {
    id: u64,
    started: Instant,
    /// A forced refresh: it fetches even when a newer version appeared since its lookup.
    forced: bool,
    /// Started by refresh-ahead.
    ahead: bool,
    fut: FillFuture,
}

/// A fill running in this process, as the admin view lists it.
#[derive(Debug, Clone)]
pub struct LocalFill {
    pub key: SourceKey,
    pub running_for: Duration,
    pub forced: bool,
    pub refresh_ahead: bool,
}

impl InFlight {
    /// Whether a request that arrived at `arrived` may share this fill: any request, unless it
    /// is a forced refresh, which only shares a forced fill that started after it arrived.
    fn joinable(&self, req: &Request, arrived: Instant) -> bool {
        !documents_kit::switches::off(documents_kit::switches::COALESCE_IN_PROCESS)
            && (!req.force_refresh || (self.forced && self.started >= arrived))
    }
}

impl SingleFlight {
    /// The fill of `key` running here, if a request that arrived at `arrived` may share it.
    pub fn join(&self, key: &SourceKey, req: &Request, arrived: Instant) -> Option<FillFuture> {
        let running = self.running.lock().expect("in-flight map poisoned");
        running
            .get(key)
            .filter(|f| f.joinable(req, arrived))
            .inspect(|_| METRICS.coalesced(req.kind.as_str()))
            .map(|f| f.fut.clone())
    }

    /// Joins the fill of `key` running here, or starts one with `work`. A request that may not
    /// share the running fill (a forced refresh that arrived after it started) waits for it to
    /// end, then starts its own.
    pub async fn join_or_start(
        &self,
        key: SourceKey,
        req: Request,
        arrived: Instant,
        work: impl Fn() -> BoxFuture<'static, FillResult>,
    ) -> FillResult {
        loop {
            let (fut, join) = {
                let mut running = self.running.lock().expect("in-flight map poisoned");
                match running.get(&key) {
                    Some(f) if f.joinable(&req, arrived) => {
                        METRICS.coalesced(req.kind.as_str());
                        (f.fut.clone(), true)
                    }
                    Some(f)
                        if !documents_kit::switches::off(
                            documents_kit::switches::COALESCE_IN_PROCESS,
                        ) =>
                    {
                        (f.fut.clone(), false)
                    }
                    _ => {
                        let (id, fut) = self.spawn(&key, work());
                        running.insert(
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

    /// Whether a fill of `key` runs here.
    pub fn filling(&self, key: &SourceKey) -> bool {
        self.running
            .lock()
            .expect("in-flight map poisoned")
            .contains_key(key)
    }

    /// The fills running here, the longest-running first.
    pub fn list(&self) -> Vec<LocalFill> {
        let running = self.running.lock().expect("in-flight map poisoned");
        let mut fills: Vec<LocalFill> = running
            .iter()
            .map(|(key, f)| LocalFill {
                key: key.clone(),
                running_for: f.started.elapsed(),
                forced: f.forced,
                refresh_ahead: f.ahead,
            })
            .collect();
        fills.sort_by_key(|f| std::cmp::Reverse(f.running_for));
        fills
    }

    /// Spawns `work` as the fill task of `key`, in the trace (and log span) of the call that
    /// started it. The task removes its own entry when it ends, however it ends (a panic
    /// included, through the guard's Drop).
    fn spawn(&self, key: &SourceKey, work: BoxFuture<'static, FillResult>) -> (u64, FillFuture) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let guard = Remove {
            running: self.running.clone(),
            key: key.clone(),
            id,
        };
        let trace = TraceContext::current().unwrap_or_else(TraceContext::root);
        let span = tracing::Span::current();
        let handle = tokio::spawn(tracing::Instrument::instrument(
            trace.scope_call(async move {
                let _guard = guard;
                work.await
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

/// Removes a fill's entry when its task ends (unless a newer fill took the entry meanwhile).
struct Remove {
    running: Arc<Mutex<HashMap<SourceKey, InFlight>>>,
    key: SourceKey,
    id: u64,
}

impl Drop for Remove {
    fn drop(&mut self) {
        if let Ok(mut running) = self.running.lock() {
            if running.get(&self.key).is_some_and(|f| f.id == self.id) {
                running.remove(&self.key);
            }
        }
    }
}
