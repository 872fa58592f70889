//! The consumer's job, per ticker, as steps: ask the provider for the announcements document
//! and read it from the shared database by ID, noticing a newer version ([`source`]); select
//! the announcements that match the filters ([`select`]); hold the ticker's round ([`round`]);
//! download the PDFs not stored yet ([`download`]); and write the `announcement_download`
//! document with its attachments ([`record`]). What happened is a [`TickerOutcome`]. Tickers
//! can also be kept current: a round whenever their document changes ([`follow`]).
//!
//! A ticker is processed once per request however many spellings name it (`ASX:CBA`, `cba`,
//! `ASX.CBA`), and one round at a time per ticker, in this process and across consumer
//! replicas, so concurrent rounds find what the first one stored instead of downloading it
//! again.

mod download;
mod follow;
mod outcome;
mod record;
mod round;
mod select;
mod source;
mod stored;

use std::{collections::HashMap, sync::Arc, time::Duration};

use documents_api::{provider::invalid_argument, ItemError, Kind, ProviderClient, Ticker};
use documents_kit::status::StorageStatus as _;
use documents_store::{DocumentStore, SourceKey};
use futures::{stream, StreamExt};
use tokio::time::Instant;
use tonic::{Code, Status};

pub use self::{
    outcome::{Item, TickerOutcome},
    record::DOWNLOAD_SCHEMA_VERSION,
    select::matches_filter,
    stored::Stored,
};
use self::{
    record::{Progress, Recorder},
    round::{LocalRounds, RoundLease},
};
use crate::{
    download::Downloader,
    metrics::{ConsumerMetrics, METRICS},
};

#[derive(Debug, Clone)]
pub struct JobSettings {
    pub default_filters: Vec<String>,
    pub max_downloads: u32,
    pub ticker_concurrency: usize,
    pub max_tickers: usize,
    pub provider_timeout: Duration,
}

/// What a caller asks of one round.
#[derive(Debug, Clone, Default)]
pub struct JobRequest {
    pub tickers: Vec<String>,
    pub cache_hours: Option<u32>,
    pub force_refresh: bool,
    pub filters: Vec<String>,
    pub max_downloads: Option<u32>,
    /// Sent to the provider as `x-request-id` and logged with every line of the round.
    pub request_id: String,
}

/// A new request ID for a round that came without one.
pub fn new_request_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// Runs rounds of the job.
#[derive(Clone)]
pub struct Processor {
    provider: ProviderClient,
    store: Arc<dyn DocumentStore>,
    downloader: Downloader,
    settings: JobSettings,
    rounds: LocalRounds,
    /// This processor's name in round leases.
    holder: String,
}

impl Processor {
    pub fn new(
        provider: ProviderClient,
        store: Arc<dyn DocumentStore>,
        downloader: Downloader,
        settings: JobSettings,
    ) -> Self {
        Self {
            provider,
            store,
            downloader,
            settings,
            rounds: LocalRounds::default(),
            holder: format!("consumer-{}-{}", std::process::id(), new_request_id()),
        }
    }

    pub fn store(&self) -> &Arc<dyn DocumentStore> {
        &self.store
    }

    /// Checks the request as a whole; errors name the field and the rule.
    pub fn validate(&self, req: &JobRequest) -> Result<(), Status> {
        if req.tickers.is_empty() {
            return Err(invalid_argument(
                "tickers",
                "at least one ticker is required",
            ));
        }
        if req.tickers.len() > self.settings.max_tickers {
            return Err(invalid_argument(
                "tickers",
                format!(
                    "{} tickers is more than the maximum of {}",
                    req.tickers.len(),
                    self.settings.max_tickers
                ),
            ));
        }
        if let Some(h) = req
            .cache_hours
            .filter(|h| *h > documents_api::provider::MAX_CACHE_HOURS)
        {
            return Err(invalid_argument(
                "cache_hours",
                format!(
                    "{h} is more than the maximum of {}",
                    documents_api::provider::MAX_CACHE_HOURS
                ),
            ));
        }
        Ok(())
    }

    /// Processes every ticker (concurrently, bounded) and answers outcomes in request order.
    /// `deadline` is the caller's, and bounds every provider call. Spellings of one ticker are
    /// processed once, and each is answered with that outcome.
    pub async fn run(&self, req: &JobRequest, deadline: Option<Instant>) -> Vec<TickerOutcome> {
        // Each ticker is parsed once; position -> index of the distinct ticker it names
        // (unparsable ones stand alone).
        let mut distinct: Vec<(String, Result<Ticker, ItemError>)> = Vec::new();
        let mut seen: HashMap<Ticker, usize> = HashMap::new();
        let positions: Vec<usize> = req
            .tickers
            .iter()
            .map(|asked| match Ticker::parse(asked) {
                Ok(ticker) => *seen.entry(ticker.clone()).or_insert_with(|| {
                    distinct.push((asked.clone(), Ok(ticker)));
                    distinct.len() - 1
                }),
                Err(e) => {
                    let e = ItemError::new(Code::InvalidArgument, format!("ticker: {e}"))
                        .reason("INVALID_TICKER")
                        .field("tickers");
                    distinct.push((asked.clone(), Err(e)));
                    distinct.len() - 1
                }
            })
            .collect();
        let outcomes: Vec<TickerOutcome> =
            stream::iter(distinct)
                .map(|(asked, ticker)| async move {
                    self.process_one(&asked, ticker, req, deadline).await
                })
                .buffered(self.settings.ticker_concurrency)
                .collect()
                .await;
        positions
            .into_iter()
            .zip(&req.tickers)
            .map(|(i, asked)| TickerOutcome {
                ticker: asked.clone(),
                ..outcomes[i].clone()
            })
            .collect()
    }

    #[tracing::instrument(
        name = "process_ticker",
        skip(self, ticker, req, deadline),
        fields(ticker = %asked, request_id = %req.request_id)
    )]
    async fn process_one(
        &self,
        asked: &str,
        ticker: Result<Ticker, ItemError>,
        req: &JobRequest,
        deadline: Option<Instant>,
    ) -> TickerOutcome {
        let started = Instant::now();
        let mut outcome = TickerOutcome::new(asked);
        let result = match ticker {
            Ok(ticker) => self.round(&ticker, req, deadline, &mut outcome).await,
            Err(e) => Err(e),
        };
        ConsumerMetrics::count(
            &METRICS.tickers,
            if result.is_ok() { "ok" } else { "error" },
            1,
        );
        for (result, n) in [
            ("downloaded", outcome.downloaded.len()),
            ("skipped", outcome.skipped.len()),
            ("failed", outcome.failed.len()),
        ] {
            ConsumerMetrics::count(&METRICS.downloads, result, n);
        }
        match result {
            Err(e) => {
                tracing::warn!(code = ?e.code, error = %e.message, "ticker failed");
                outcome.error = Some(e);
            }
            Ok(()) => tracing::info!(
                matched = outcome.matched.len(),
                downloaded = outcome.downloaded.len(),
                skipped = outcome.skipped.len(),
                failed = outcome.failed.len(),
                version = outcome.version_read,
                latency_ms = started.elapsed().as_secs_f64() * 1000.0,
                "ticker processed"
            ),
        }
        outcome
    }

    /// One round of `ticker`, step by step, filling in `out` as it goes.
    async fn round(
        &self,
        ticker: &Ticker,
        req: &JobRequest,
        deadline: Option<Instant>,
        out: &mut TickerOutcome,
    ) -> Result<(), ItemError> {
        let _local = self.rounds.hold(ticker, deadline).await?;

        // Ask the provider, within the caller's deadline, and read what it answered.
        let answer = self
            .ask_provider(&out.ticker, req, deadline, &mut out.provider_result)
            .await?;
        let doc = self.read_answered(&answer, ticker).await?;
        out.document_id = doc.id.clone();
        out.version_read = doc.version;
        out.newer_version_read = doc.version > answer.version;

        // Select.
        let filters = if req.filters.is_empty() {
            &self.settings.default_filters
        } else {
            &req.filters
        };
        let max = req.max_downloads.unwrap_or(self.settings.max_downloads) as usize;
        let matched = select::matching(&doc, filters, max)?;

        // One round per ticker across consumer processes from here on (the lease), so what
        // another one downloads is seen stored.
        let key = SourceKey::new(Kind::AnnouncementDownload, ticker.clone());
        let lease = RoundLease::acquire(&self.store, &key, &self.holder, deadline).await?;
        let stored = self.stored_attachments(&key).await?;
        let (skipped, to_fetch) = select::split_stored(&matched, &stored);

        // Download what is not stored, then record the round.
        let record = Recorder {
            store: &self.store,
            key: &key,
            lease: &lease,
            ticker,
            source: &doc,
            filters,
            matched: &matched,
        };
        let mut progress = Progress {
            skipped,
            ..Progress::default()
        };
        let last =
            download::download_all(&self.downloader, to_fetch, &mut progress, &record).await?;
        out.download_document_id = record.finish(&progress, &last).await?;
        out.matched = matched;
        out.downloaded = progress.downloaded;
        out.skipped = progress.skipped;
        out.failed = progress.failed;
        Ok(())
    }

    /// The PDFs stored with the download document `key` (name to hash).
    async fn stored_attachments(
        &self,
        key: &SourceKey,
    ) -> Result<HashMap<String, String>, ItemError> {
        let Some(previous) = self
            .store
            .get_by_source(key)
            .await
            .map_err(|e| e.item_error())?
        else {
            return Ok(HashMap::new());
        };
        Ok(self
            .store
            .attachments_of(&previous.id)
            .await
            .map_err(|e| e.item_error())?
            .into_iter()
            .map(|a| (a.name, a.hash))
            .collect())
    }
}
