//! The round's first steps: ask the provider for the ticker's announcements document, within
//! the caller's deadline, then read it by ID from the shared database and check it is the one
//! asked for, at the answered version or newer.

use std::time::Duration;

use documents_api::{
    provider::DEFAULT_CACHE_HOURS, DocumentOptions, DocumentProvider, DocumentResult, ItemError,
    Kind, Ticker,
};
use documents_kit::{status::StorageStatus as _, trace};
use documents_store::{SourceKey, StoredDocument};
use tokio::time::Instant;
use tonic::Code;

use super::{JobRequest, Processor};

impl Processor {
    /// Asks the provider for `asked`'s announcements; the answer, or the call's error, is
    /// recorded in `provider_result`.
    pub(super) async fn ask_provider(
        &self,
        asked: &str,
        req: &JobRequest,
        deadline: Option<Instant>,
        provider_result: &mut Option<DocumentResult>,
    ) -> Result<DocumentResult, ItemError> {
        let mut opts = DocumentOptions::new()
            .kind(Kind::Announcement)
            .cache_hours(req.cache_hours.unwrap_or(DEFAULT_CACHE_HOURS))
            .force_refresh(req.force_refresh);
        if opts.cache_hours == Some(0) {
            opts.force_refresh = true;
        }
        // Keep a tenth of the caller's remaining time (up to 200 ms) to write and answer the
        // report before the caller's own deadline.
        let budget = deadline
            .map(|d| {
                let left = d.saturating_duration_since(Instant::now());
                left.saturating_sub((left / 10).min(Duration::from_millis(200)))
            })
            .unwrap_or(self.settings.provider_timeout)
            .min(self.settings.provider_timeout);
        if budget.is_zero() {
            return Err(ItemError::new(
                Code::DeadlineExceeded,
                "deadline passed before calling the provider",
            ));
        }
        let provider = self
            .provider
            .with_timeout(budget)
            .with_request_id(&req.request_id);
        let call = trace::in_span(
            "documents.v1.DocumentProvider/GetDocument",
            trace::SpanKind::Client,
            || vec![trace::KeyValue::new("rpc.system", "grpc")],
            provider.get_document(asked, &opts),
        );
        match call.await {
            Ok(answer) => {
                *provider_result = Some(answer.clone());
                Ok(answer)
            }
            Err(s) => {
                let e = ItemError::from(&s);
                *provider_result = Some(DocumentResult::failed(
                    asked,
                    Kind::Announcement.as_str(),
                    String::new(),
                    e.clone(),
                ));
                Err(ItemError {
                    message: format!("provider: {}", e.message),
                    ..e
                })
            }
        }
    }

    /// Reads the answered document and checks it is `ticker`'s announcements, at the answered
    /// version or newer.
    pub(super) async fn read_answered(
        &self,
        answer: &DocumentResult,
        ticker: &Ticker,
    ) -> Result<StoredDocument, ItemError> {
        let doc = self
            .store
            .get(&answer.document_id)
            .await
            .map_err(|e| e.item_error())?
            .ok_or_else(|| {
                ItemError::new(
                    Code::NotFound,
                    format!(
                        "document {} answered by the provider is not in the database (do both services use the same DATABASE_URL?)",
                        answer.document_id
                    ),
                )
            })?;
        let expected = SourceKey::new(Kind::Announcement, ticker.clone());
        if doc.key != expected {
            return Err(ItemError::new(
                Code::FailedPrecondition,
                format!(
                    "document {} is {}, not the expected {expected}",
                    doc.id, doc.key
                ),
            ));
        }
        if doc.version < answer.version {
            return Err(ItemError::new(
                Code::FailedPrecondition,
                format!(
                    "document {} is at version {} in the database but the provider answered version {}: refusing older data",
                    doc.id, doc.version, answer.version
                ),
            ));
        }
        Ok(doc)
    }
}
