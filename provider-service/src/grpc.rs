//! The `documents.v1.DocumentProvider` gRPC service: translates wire messages to the
//! provisioning core, logs one line per answer (a failed call's line is written by the server's
//! call log, [`documents_kit::observe`]); who may call which method is checked in front of it by
//! the kit's [`documents_kit::access`].

use std::{
    sync::{Arc, OnceLock},
    time::Instant,
};

use documents_api::{
    proto::documents::v1::{
        self as pb, document_provider_server::DocumentProvider as DocumentProviderRpc,
    },
    DocumentResult, Outcome, Provisioned,
};
use documents_kit::health::DatabaseStatus;
use futures::{FutureExt, StreamExt};
use tonic::{Request, Response, Status};

use documents_kit::status::StorageStatus as _;

use crate::{
    metrics::METRICS,
    provisioner::{EventKind, Provisioner, WatchEnd, WatchEvent},
    validate,
};

/// The gRPC service. Until the database is ready every call answers UNAVAILABLE.
#[derive(Clone)]
pub struct ProviderService {
    provisioner: Arc<OnceLock<Arc<Provisioner>>>,
    database: DatabaseStatus,
    /// The server's time cap (also the longest deadline a caller gets).
    cap: std::time::Duration,
    /// The connections' maximum age: a watch ends before its connection is closed.
    connection_age: Option<documents_kit::grpc_server::ConnectionAge>,
}

impl ProviderService {
    pub fn new(
        provisioner: Arc<OnceLock<Arc<Provisioner>>>,
        database: DatabaseStatus,
        cap: std::time::Duration,
        connection_age: Option<documents_kit::grpc_server::ConnectionAge>,
    ) -> Self {
        Self {
            provisioner,
            database,
            cap,
            connection_age,
        }
    }

    /// The provisioner, once the database is ready and while it answers its health ping: a
    /// database outage is answered UNAVAILABLE at once rather than after the pool's timeout.
    fn ready(&self) -> Result<&Arc<Provisioner>, Status> {
        let p = self.provisioner.get().ok_or_else(|| {
            Status::unavailable("provider is starting: the database is not ready yet")
        })?;
        if !self.database.is_up() {
            // The health watcher pings every second: try again after that.
            return Err(documents_api::provider::status_with_retry(
                tonic::Code::Unavailable,
                format!(
                    "database unavailable: the provider's database does not answer or refuses writes ({}; health is NOT_SERVING); retry later or another replica",
                    self.database.cause()
                ),
                Some(std::time::Duration::from_secs(1)),
            ));
        }
        Ok(p)
    }

    async fn batch(
        &self,
        rpc: &'static str,
        request_id: &str,
        identifiers: Vec<String>,
        kind: &str,
        options: Option<pb::DocumentOptions>,
    ) -> Result<Vec<DocumentResult>, Status> {
        let started = Instant::now();
        let p = self.ready()?;
        let req = validate::request(p, kind, options.as_ref(), identifiers.len())?;
        let mut results = p.provide(validate::identifiers(p, identifiers), req).await;
        if rpc != "GetDocument" {
            results = results.into_iter().map(in_batch).collect();
        }
        let mut summary = Summary::new(rpc, request_id, started, results.len() > 1);
        for r in &results {
            summary.record(r);
        }
        Ok(results)
    }
}

/// A batch's result names the failing identifier's position: `identifiers[3]`, not
/// `identifier`, in `google.rpc.BadRequest`.
fn in_batch(mut r: DocumentResult) -> DocumentResult {
    if let Some(e) = r
        .error
        .as_mut()
        .filter(|e| e.field.as_deref() == Some("identifier"))
    {
        e.field = Some(format!("identifiers[{}]", r.index));
    }
    r
}

/// The request ID a caller sent (see [`documents_kit::observe::request_id`]), or empty.
fn request_id<T>(request: &Request<T>) -> String {
    documents_kit::observe::request_id_text(request.metadata().as_ref()).to_string()
}

/// Answer logging. Every answer that was not a plain hit (created, refreshed, stale, error) gets
/// its own line. A single-identifier hit gets a DEBUG line, and is counted for the periodic
/// `hits answered` line ([`crate::hit_log`]); a batch gets one summary line with the count of
/// each outcome when it is done. So hits stay visible (in that line, in the batch lines and in
/// `documents_answers_total`) without a line each on the hot path.
struct Summary {
    rpc: &'static str,
    request_id: String,
    started: Instant,
    batch: bool,
    counts: [usize; 5],
}

impl Summary {
    fn new(rpc: &'static str, request_id: &str, started: Instant, batch: bool) -> Self {
        Self {
            rpc,
            request_id: request_id.to_string(),
            started,
            batch,
            counts: [0; 5],
        }
    }

    fn record(&mut self, r: &DocumentResult) {
        METRICS.answer(self.rpc, r.outcome.as_str());
        self.counts[match r.outcome {
            Outcome::Hit => 0,
            Outcome::Created => 1,
            Outcome::Refreshed => 2,
            Outcome::Stale => 3,
            Outcome::Error => 4,
        }] += 1;
        if !self.batch && r.outcome == Outcome::Error {
            // The call itself fails with this error: the server's call log has its WARN line.
            tracing::debug!(identifier = %r.identifier, kind = %r.kind, "answer failed");
        } else if r.outcome != Outcome::Hit {
            log_answer(self.rpc, &self.request_id, r, self.started);
        } else if !self.batch {
            crate::hit_log::HITS.count(&r.kind);
            tracing::debug!(
                rpc = self.rpc,
                request_id = %self.request_id,
                identifier = %r.identifier,
                kind = %r.kind,
                outcome = "hit",
                document_id = %r.document_id,
                version = r.version,
                latency_ms = self.started.elapsed().as_secs_f64() * 1000.0,
                "answer"
            );
        }
    }
}

impl Drop for Summary {
    fn drop(&mut self) {
        if self.batch {
            let [hit, created, refreshed, stale, error] = self.counts;
            tracing::info!(
                rpc = self.rpc,
                request_id = %self.request_id,
                identifiers = self.counts.iter().sum::<usize>(),
                hit,
                created,
                refreshed,
                stale,
                error,
                latency_ms = self.started.elapsed().as_secs_f64() * 1000.0,
                "batch answered"
            );
        }
    }
}

fn log_answer(rpc: &'static str, request_id: &str, r: &DocumentResult, started: Instant) {
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    match &r.error {
        Some(e) if r.is_ok() => tracing::warn!(
            rpc,
            request_id = %request_id,
            identifier = %r.identifier,
            kind = %r.kind,
            outcome = r.outcome.as_str(),
            document_id = %r.document_id,
            version = r.version,
            code = ?e.code,
            error = %e.message,
            latency_ms,
            "answer"
        ),
        None => tracing::info!(
            rpc,
            request_id = %request_id,
            identifier = %r.identifier,
            kind = %r.kind,
            outcome = r.outcome.as_str(),
            document_id = %r.document_id,
            version = r.version,
            latency_ms,
            "answer"
        ),
        Some(e) => tracing::warn!(
            rpc,
            request_id = %request_id,
            identifier = %r.identifier,
            kind = %r.kind,
            outcome = r.outcome.as_str(),
            code = ?e.code,
            error = %e.message,
            latency_ms,
            "answer"
        ),
    }
}

/// The wire form of a watch's event (`kind` is the watch's).
fn event(e: WatchEvent) -> pb::DocumentEvent {
    pb::DocumentEvent {
        identifier: e.key.map(|k| k.ticker().to_string()).unwrap_or_default(),
        document_id: e.document_id,
        version: e.version,
        last_synced: e.last_synced.map(documents_api::provider::to_timestamp),
        tags: e.tags,
        r#type: match e.kind {
            EventKind::Current => pb::EventType::Current,
            EventKind::Created => pb::EventType::Created,
            EventKind::Refreshed => pb::EventType::Refreshed,
            EventKind::Invalidated => pb::EventType::Invalidated,
            EventKind::Deleted => pb::EventType::Deleted,
            EventKind::Heartbeat => pb::EventType::Heartbeat,
        } as i32,
    }
}

/// An instant no watch reaches (a watch without a deadline).
fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + std::time::Duration::from_secs(100 * 365 * 24 * 3600)
}

/// How a watch ends when the server drains: the caller watches again, with `since`, on a
/// replica that is not going away.
fn shutting_down() -> Status {
    documents_api::ItemError::new(
        tonic::Code::Unavailable,
        "the provider is shutting down: watch again, with `since`, on another replica",
    )
    .reason("SHUTTING_DOWN")
    .retry_after(std::time::Duration::ZERO)
    .to_status()
}

/// How a watch ends when its connection reaches its maximum age.
fn connection_aged() -> Status {
    documents_api::ItemError::new(
        tonic::Code::Unavailable,
        "this connection reached its maximum age (PROVIDER_MAX_CONNECTION_AGE_MS) and was told \
         to go: watch again, with `since`, on a new connection",
    )
    .reason("CONNECTION_AGED")
    .retry_after(std::time::Duration::ZERO)
    .to_status()
}

/// Why a watch ended, as the status its stream ends with.
fn watch_end(end: WatchEnd) -> Status {
    use documents_api::ItemError;
    use tonic::Code;
    match end {
        WatchEnd::FeedLost => ItemError::new(
            Code::Unavailable,
            "the database's change feed behind this watch was lost or went silent: changes may \
             have been missed; watch again with `since` (the positions last seen)",
        )
        .reason("WATCH_FEED_LOST")
        .retry_after(std::time::Duration::from_secs(1))
        .to_status(),
        WatchEnd::Overflow { limit } => ItemError::new(
            Code::ResourceExhausted,
            format!(
                "tags: the watched tags match more than {limit} documents, the most one watch \
                 covers (PROVIDER_WATCH_MAX_DOCUMENTS); watch narrower tags, or identifiers"
            ),
        )
        .reason("WATCH_OVERFLOW")
        .to_status(),
        WatchEnd::Storage(e) => e.status(),
    }
}

#[tonic::async_trait]
impl DocumentProviderRpc for ProviderService {
    type StreamDocumentsStream =
        futures::stream::BoxStream<'static, Result<pb::DocumentResult, Status>>;
    type WatchDocumentsStream =
        futures::stream::BoxStream<'static, Result<pb::DocumentEvent, Status>>;

    async fn watch_documents(
        &self,
        request: Request<pb::WatchDocumentsRequest>,
    ) -> Result<Response<Self::WatchDocumentsStream>, Status> {
        // A watch lasts as long as its caller wants: until the caller's deadline (if it set
        // one), not the server's call time cap.
        let deadline = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(documents_kit::layers::parse_grpc_timeout)
            .map(|limit| (tokio::time::Instant::now() + limit, limit));
        // A watch ends by itself on a connection past its maximum age, cleanly, before the
        // connection is closed: the caller watches again (with `since`) on a new connection.
        let aged_at = documents_kit::grpc_server::ConnectionAge::watch_ends_at(
            self.connection_age,
            request.extensions(),
        );
        let id = request_id(&request);
        let p = self.ready()?;
        let spec = validate::watch(p, request.into_inner())?;
        tracing::debug!(
            request_id = %id,
            identifiers = spec.keys.len(),
            tags = spec.tags.len(),
            kind = %spec.kind,
            "watch started"
        );
        let watch = p.watch(spec).await;
        let draining = self.database.draining().shared();
        let stream = futures::stream::unfold(Some(watch), move |watch| {
            let draining = draining.clone();
            async move {
                let mut watch = watch?;
                let until = deadline.map_or(far_future(), |(at, _)| at);
                let next = tokio::select! {
                    _ = tokio::time::sleep_until(aged_at.unwrap_or_else(far_future)) => {
                        return Some((Err(connection_aged()), None));
                    }
                    next = watch.next() => next,
                    _ = tokio::time::sleep_until(until) => {
                        let limit = deadline.map(|(_, l)| l.as_millis()).unwrap_or_default();
                        let message = format!("the watch's deadline of {limit} ms passed");
                        return Some((Err(Status::deadline_exceeded(message)), None));
                    }
                    _ = draining => return Some((Err(shutting_down()), None)),
                };
                Some(match next {
                    Ok(e) => (Ok(event(e)), Some(watch)),
                    Err(end) => (Err(watch_end(end)), None),
                })
            }
        });
        Ok(Response::new(stream.boxed()))
    }

    async fn stream_documents(
        &self,
        request: Request<pb::GetDocumentsRequest>,
    ) -> Result<Response<Self::StreamDocumentsStream>, Status> {
        let started = Instant::now();
        let id = request_id(&request);
        // The stream ends at the caller's deadline (capped by the server's) with
        // DEADLINE_EXCEEDED: the deadline layer only covers the answer's start.
        let limit = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(documents_kit::layers::parse_grpc_timeout)
            .map_or(self.cap, |asked| asked.min(self.cap));
        let deadline = tokio::time::Instant::now() + limit;
        let r = request.into_inner();
        let p = self.ready()?;
        let req = validate::request(p, &r.kind, r.options.as_ref(), r.identifiers.len())?;
        // The summary is logged when the stream is dropped: done, or the caller went away.
        let mut summary = Summary::new("StreamDocuments", &id, started, true);
        let results = p
            .provide_each(validate::identifiers(p, r.identifiers), req)
            .map(move |result| {
                summary.record(&result);
                Ok(in_batch(result).into())
            })
            .boxed();
        let stream = futures::stream::unfold(Some(results), move |results| async move {
            let mut results = results?;
            match tokio::time::timeout_at(deadline, results.next()).await {
                Ok(Some(item)) => Some((item, Some(results))),
                Ok(None) => None,
                Err(_) => Some((
                    Err(Status::deadline_exceeded(format!(
                        "deadline of {} ms exceeded before every result was ready",
                        limit.as_millis()
                    ))),
                    None,
                )),
            }
        });
        Ok(Response::new(stream.boxed()))
    }

    async fn get_document(
        &self,
        request: Request<pb::GetDocumentRequest>,
    ) -> Result<Response<pb::DocumentResult>, Status> {
        let id = request_id(&request);
        let r = request.into_inner();
        let mut results = self
            .batch("GetDocument", &id, vec![r.identifier], &r.kind, r.options)
            .await?;
        let result = results
            .pop()
            .ok_or_else(|| Status::internal("no result for the identifier"))?;
        match result.error_status() {
            Some(status) if !result.is_ok() => Err(status),
            _ => Ok(Response::new(result.into())),
        }
    }

    async fn get_documents(
        &self,
        request: Request<pb::GetDocumentsRequest>,
    ) -> Result<Response<pb::GetDocumentsResponse>, Status> {
        let id = request_id(&request);
        let r = request.into_inner();
        let results = self
            .batch("GetDocuments", &id, r.identifiers, &r.kind, r.options)
            .await?;
        Ok(Response::new(pb::GetDocumentsResponse {
            results: results.into_iter().map(Into::into).collect(),
        }))
    }

    async fn invalidate_documents(
        &self,
        request: Request<pb::InvalidateDocumentsRequest>,
    ) -> Result<Response<pb::InvalidateDocumentsResponse>, Status> {
        let r = request.into_inner();
        let p = self.ready()?;
        let (kind, tickers) = validate::invalidation(p, &r.identifiers, &r.tags, &r.kind)?;
        let invalidated = p
            .invalidate(kind, &tickers, &r.tags)
            .await
            .map_err(|e| e.status())?;
        Ok(Response::new(pb::InvalidateDocumentsResponse {
            invalidated,
        }))
    }

    async fn ensure_documents(
        &self,
        request: Request<pb::EnsureDocumentsRequest>,
    ) -> Result<Response<pb::EnsureDocumentsResponse>, Status> {
        let id = request_id(&request);
        let r = request.into_inner();
        let results = self
            .batch("EnsureDocuments", &id, r.identifiers, &r.kind, r.options)
            .await?;
        Ok(Response::new(Provisioned::from_results(results).into()))
    }
}
