//! The `consumer.v1.Consumer` gRPC service: translates wire messages to the job and back.

use std::sync::{Arc, OnceLock};

use documents_api::proto::consumer::v1 as pb;
use documents_kit::server::{deadline_of, DatabaseStatus};
use tonic::{Request, Response, Status};

use crate::job::{new_request_id, JobRequest, Processor};

/// The gRPC service. Until the database is ready, and while it does not answer its health
/// ping, every call answers UNAVAILABLE at once.
#[derive(Clone)]
pub struct ConsumerService {
    processor: Arc<OnceLock<Processor>>,
    database: DatabaseStatus,
}

impl ConsumerService {
    pub fn new(processor: Arc<OnceLock<Processor>>, database: DatabaseStatus) -> Self {
        Self {
            processor,
            database,
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
            filters: r
                .filters
                .into_iter()
                .map(|f| f.trim().to_string())
                .filter(|f| !f.is_empty())
                .collect(),
            max_downloads: r.max_downloads,
            request_id,
        };
        p.validate(&job)?;
        let reports = p.run(&job, deadline).await;
        Ok(Response::new(pb::ProcessTickersResponse { reports }))
    }

    async fn get_stored(
        &self,
        request: Request<pb::GetStoredRequest>,
    ) -> Result<Response<pb::GetStoredResponse>, Status> {
        let p = self.ready()?;
        Ok(Response::new(p.stored(&request.into_inner().ticker).await?))
    }
}
