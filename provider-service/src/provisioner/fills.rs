//! The process's fills: each document filled by one task at a time ([`SingleFlight`]), coordinated
//! with other replicas through its lease ([`Filler`]), from the source of its kind, under that
//! source's bound on fetches.

use std::{collections::HashMap, sync::Arc};

use documents_api::{ItemError, Kind, Ticker};
use documents_store::SourceKey;
use futures::FutureExt;
use tokio::{sync::Semaphore, time::Instant};
use tonic::Code;

use super::{
    fill::{FillFuture, FillResult, Seen},
    lease::{FillJob, Filler},
    request::Request,
    single_flight::{LocalFill, SingleFlight},
};
use crate::sources::Sources;

pub struct Fills {
    flight: SingleFlight,
    filler: Arc<Filler>,
    sources: Sources,
    /// Fetches each source may run at once.
    per_source: HashMap<Kind, Arc<Semaphore>>,
}

impl Fills {
    pub fn new(filler: Filler, sources: Sources, per_source_limit: usize) -> Self {
        let per_source = sources
            .keys()
            .map(|k| (*k, Arc::new(Semaphore::new(per_source_limit.max(1)))))
            .collect();
        Self {
            flight: SingleFlight::default(),
            filler: Arc::new(filler),
            sources,
            per_source,
        }
    }

    pub fn filler(&self) -> &Filler {
        &self.filler
    }

    /// The kinds there is a source for.
    pub fn kinds(&self) -> impl Iterator<Item = Kind> + '_ {
        self.sources.keys().copied()
    }

    /// Joins the fill of `key` running here, or starts one (see [`SingleFlight::join_or_start`]).
    pub fn fill(
        self: &Arc<Self>,
        req: Request,
        key: SourceKey,
        ticker: Ticker,
        arrived: Instant,
        seen: Seen,
    ) -> impl std::future::Future<Output = FillResult> + Send + 'static {
        let this = self.clone();
        async move {
            let work = || this.work(&key, &ticker, seen, req.force_refresh);
            this.flight
                .join_or_start(key.clone(), req, arrived, work)
                .await
        }
    }

    /// The fill of `key` running here, if the request may share it.
    pub fn join(&self, key: &SourceKey, req: &Request, arrived: Instant) -> Option<FillFuture> {
        self.flight.join(key, req, arrived)
    }

    pub fn filling(&self, key: &SourceKey) -> bool {
        self.flight.filling(key)
    }

    pub fn list(&self) -> Vec<LocalFill> {
        self.flight.list()
    }

    /// A fill's work, ready to run as its task.
    fn work(
        &self,
        key: &SourceKey,
        ticker: &Ticker,
        seen: Seen,
        forced: bool,
    ) -> futures::future::BoxFuture<'static, FillResult> {
        let kind = key.kind();
        let (Some(source), Some(per_source)) = (
            self.sources.get(&kind).cloned(),
            self.per_source.get(&kind).cloned(),
        ) else {
            let e = ItemError::new(Code::InvalidArgument, format!("kind: {kind} has no source"))
                .reason("KIND_NOT_PROVIDED")
                .field("kind");
            return async move { Err(e) }.boxed();
        };
        let filler = self.filler.clone();
        let job = FillJob {
            key: key.clone(),
            ticker: ticker.clone(),
            source,
            per_source,
            seen,
            forced,
        };
        async move { filler.run(job).await }.boxed()
    }
}
