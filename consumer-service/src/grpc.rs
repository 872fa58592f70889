//! The `consumer.v1.Consumer` gRPC service: translates wire messages to the job and back (the
//! job's outcomes become `TickerReport`s here).

use std::sync::{Arc, OnceLock};

use documents_api::{proto::consumer::v1 as pb, provider::invalid_argument, Ticker};
use documents_kit::{health::DatabaseStatus, layers::deadline_of};
use documents_store::StoredDocument;
use futures::StreamExt;
use tonic::{Request, Response, Status};

use crate::job::{new_request_id, Item, JobRequest, Processor, Stored, TickerOutcome};

/// The gRPC service. Until the database is ready, and while it does not answer its health
/// ping, every call answers UNAVAILABLE at once.
#[derive(Clone)]
pub struct ConsumerService {
    processor: Arc<OnceLock<Processor>>,
    database: DatabaseStatus,
    /// The connections' maximum age: a watch ends before its connection is closed.
    connection_age: Option<documents_kit::grpc_server::ConnectionAge>,
}

impl ConsumerService {
    pub fn new(
        processor: Arc<OnceLock<Processor>>,
        database: DatabaseStatus,
        connection_age: Option<documents_kit::grpc_server::ConnectionAge>,
    ) -> Self {
        Self {
            processor,
            database,
            connection_age,
        }
    }

    fn ready(&self) -> Result<&Processor, Status> {
        let p = self.processor.get().ok_or_else(|| {
            Status::unavailable("consumer is starting: the database is not ready yet")
        })?;
        if !self.database.is_up() {
            // The health watcher pings every second: try again after that.
            return Err(documents_api::provider::status_with_retry(
                tonic::Code::Unavailable,
                "database unavailable: the consumer's database does not answer (health is NOT_SERVING); retry later",
                Some(std::time::Duration::from_secs(1)),
            ));
        }
        Ok(p)
    }
}

#[tonic::async_trait]
impl pb::consumer_server::Consumer for ConsumerService {
    type WatchTickersStream =
        futures::stream::BoxStream<'static, Result<pb::WatchTickersResponse, Status>>;

    async fn watch_tickers(
        &self,
        request: Request<pb::WatchTickersRequest>,
    ) -> Result<Response<Self::WatchTickersStream>, Status> {
        // The caller's deadline, if any, ends it; the server's time cap does not.
        let deadline = deadline_of(request.metadata());
        let aged_at = documents_kit::grpc_server::ConnectionAge::watch_ends_at(
            self.connection_age,
            request.extensions(),
        );
        let r = request.into_inner();
        let p = self.ready()?;
        let job = JobRequest {
            tickers: r.tickers,
            filters: filters(r.filters),
            max_downloads: r.max_downloads,
            ..JobRequest::default()
        };
        p.validate(&job)?;
        let reports = p.follow(job);
        let draining = self.database.draining();
        let stop: futures::future::BoxFuture<'static, Status> = Box::pin(async move {
            let until = async move {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let aged = async move {
                match aged_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = until => Status::deadline_exceeded("the watch's deadline passed"),
                _ = aged => Status::unavailable(
                    "this connection reached its maximum age (CONSUMER_MAX_CONNECTION_AGE_MS): \
                     watch again, on a new connection",
                ),
                _ = draining => Status::unavailable(
                    "the consumer is shutting down: watch again, on another replica",
                ),
            }
        });
        let stream = futures::stream::unfold(Some((reports, stop)), |state| async move {
            let (mut reports, mut stop) = state?;
            tokio::select! {
                report = reports.next() => report.map(|o| {
                    let report = Some(o.into());
                    (Ok(pb::WatchTickersResponse { report }), Some((reports, stop)))
                }),
                status = &mut stop => Some((Err(status), None)),
            }
        });
        Ok(Response::new(stream.boxed()))
    }

    async fn process_tickers(
        &self,
        request: Request<pb::ProcessTickersRequest>,
    ) -> Result<Response<pb::ProcessTickersResponse>, Status> {
        let deadline = deadline_of(request.metadata());
        // The caller's request ID travels on to the provider; a round without one gets one.
        let request_id = Some(documents_kit::observe::request_id_text(
            request.metadata().as_ref(),
        ))
        .filter(|id| !id.is_empty())
        .map_or_else(new_request_id, String::from);
        let r = request.into_inner();
        let p = self.ready()?;
        let job = JobRequest {
            tickers: r.tickers,
            cache_hours: r.cache_hours,
            force_refresh: r.force_refresh,
            filters: filters(r.filters),
            max_downloads: r.max_downloads,
            request_id,
        };
        p.validate(&job)?;
        let reports = p.run(&job, deadline).await;
        Ok(Response::new(pb::ProcessTickersResponse {
            reports: reports.into_iter().map(Into::into).collect(),
        }))
    }

    async fn get_stored(
        &self,
        request: Request<pb::GetStoredRequest>,
    ) -> Result<Response<pb::GetStoredResponse>, Status> {
        let p = self.ready()?;
        let ticker = request.into_inner().ticker;
        let ticker = Ticker::parse(&ticker).map_err(|e| invalid_argument("ticker", e))?;
        let stored = p.stored(ticker).await.map_err(|e| e.to_status())?;
        Ok(Response::new(stored.into()))
    }
}

/// The headline filters a caller sent, trimmed, the empty ones dropped.
fn filters(sent: Vec<String>) -> Vec<String> {
    sent.into_iter()
        .map(|f| f.trim().to_string())
        .filter(|f| !f.is_empty())
        .collect()
}

impl From<TickerOutcome> for pb::TickerReport {
    fn from(o: TickerOutcome) -> Self {
        let status = o.error.as_ref().map(|e| {
            e.clone()
                .described()
                .to_rpc_status(&[("ticker", &o.ticker)])
        });
        let items = |v: Vec<Item>| v.into_iter().map(Into::into).collect();
        #[allow(deprecated)] // `error` is still sent, beside `status`, for older clients
        pb::TickerReport {
            error: o.error.as_ref().map(Into::into),
            status,
            ticker: o.ticker,
            provider_result: o.provider_result.map(Into::into),
            document_id: o.document_id,
            version_read: o.version_read,
            newer_version_read: o.newer_version_read,
            download_document_id: o.download_document_id,
            matched: items(o.matched),
            downloaded: items(o.downloaded),
            skipped: items(o.skipped),
            failed: items(o.failed),
        }
    }
}

impl From<Item> for pb::AnnouncementItem {
    fn from(i: Item) -> Self {
        pb::AnnouncementItem {
            document_key: i.document_key,
            headline: i.headline,
            date: i.date,
            pdf_url: i.pdf_url,
            attachment_hash: i.attachment_hash,
            error: i.error,
        }
    }
}

impl From<Stored> for pb::GetStoredResponse {
    fn from(s: Stored) -> Self {
        let document = |d: StoredDocument| pb::StoredDocument {
            document_id: d.id,
            source_type: d.key.kind().as_str().to_string(),
            source_id: d.key.source_id(),
            title: d.title,
            version: d.version,
            tags: d.tags,
            content_hash: d.content_hash,
        };
        pb::GetStoredResponse {
            ticker: s.ticker.to_string(),
            announcements: s.announcements.map(document),
            downloads: s.downloads.map(document),
            attachment_hashes: s.attachment_hashes,
        }
    }
}
