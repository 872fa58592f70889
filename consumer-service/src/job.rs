//! The consumer's job, per ticker: ask the provider for the announcements document, read it from
//! the shared database by ID (noticing a newer version), select the announcements that match the
//! filters, download the PDFs not stored yet, and write the `announcement_download` document
//! with its attachments in one transaction.
//!
//! A ticker is processed once per request however many spellings name it (`ASX:CBA`, `cba`,
//! `ASX.CBA`), and one round at a time per ticker: in this process (a lock) and across consumer
//! replicas (a lease on its `announcement_download` document in the shared database, the same
//! leases the providers fill under), so concurrent rounds find what the first one stored
//! instead of downloading it again.

use std::{collections::HashMap, sync::Arc, time::Duration};

use documents_api::{
    proto::consumer::v1 as pb, provider::invalid_argument, DocumentOptions, DocumentProvider,
    DocumentResult, ItemError, Kind, ProviderClient, Ticker,
};
use documents_kit::status::StorageStatus as _;
use documents_store::{DocumentStore, Fence, NewAttachment, NewContent, SourceKey, StoredDocument};
use futures::{stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tonic::{Code, Status};

use crate::{
    download::Downloader,
    metrics::{ConsumerMetrics, METRICS},
};

/// The announcement JSON layout this consumer understands.
const ANNOUNCEMENT_SCHEMA_VERSION: u64 = 1;
/// Version of the `announcement_download` JSON layout this consumer writes.
pub const DOWNLOAD_SCHEMA_VERSION: u32 = 1;

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

/// The part of an announcement the consumer reads (the provider's JSON has more).
#[derive(Debug, Clone, Deserialize)]
struct Announcement {
    date: String,
    headline: String,
    #[serde(rename = "type", default)]
    kind: String,
    pdf_url: String,
    document_key: String,
}

/// One handled announcement, as recorded in the download document.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Item {
    pub document_key: String,
    pub headline: String,
    pub date: String,
    pub pdf_url: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub attachment_hash: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
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

/// Whether `filter` matches the headline or type, as whole words, ignoring case.
pub fn matches_filter(filter: &str, headline: &str, kind: &str) -> bool {
    fn words(s: &str) -> Vec<String> {
        s.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect()
    }
    let f = words(filter);
    if f.is_empty() {
        return false;
    }
    [words(headline), words(kind)]
        .iter()
        .any(|w| w.windows(f.len()).any(|win| win == f.as_slice()))
}

/// Runs rounds of the job.
#[derive(Clone)]
pub struct Processor {
    provider: ProviderClient,
    store: Arc<dyn DocumentStore>,
    downloader: Downloader,
    settings: JobSettings,
    /// One round at a time per canonical ticker in this process.
    rounds: Arc<std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

/// How long a round's lease lasts unless renewed (every third of it while the round runs).
const ROUND_LEASE: Duration = Duration::from_secs(6);

/// This process's name in round leases.
fn holder() -> &'static str {
    static HOLDER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOLDER.get_or_init(|| format!("consumer-{}-{}", std::process::id(), new_request_id()))
}

/// A round's lease in the database; renewed while held, released when dropped. Every write of
/// the round is fenced by its token, and `lost` turns true the moment a renewal finds the lease
/// taken over (this process was paused past it), so the round stops at once.
struct RoundLease {
    token: i64,
    lost: tokio::sync::watch::Receiver<bool>,
    renew: tokio::task::JoinHandle<()>,
    release: Option<(Arc<dyn DocumentStore>, SourceKey, i64)>,
}

impl RoundLease {
    /// The round's error once its lease is lost: another consumer runs the round now.
    fn lost_error(&self) -> ItemError {
        ItemError::new(
            Code::Aborted,
            format!(
                "round lease lost (token {} is no longer current): another consumer took the                  round over, and this one stopped without writing",
                self.token
            ),
        )
        .reason("ROUND_LEASE_LOST")
    }
}

impl Drop for RoundLease {
    fn drop(&mut self) {
        self.renew.abort();
        if let Some((store, key, token)) = self.release.take() {
            tokio::spawn(async move {
                if let Err(e) = store.release_fill(&key, token, None).await {
                    tracing::warn!(%key, error = %e, "could not release the round lease; it expires");
                }
            });
        }
    }
}

/// A round's hold on its ticker; the ticker's entry goes when the last holder does.
struct RoundGuard {
    rounds: Arc<std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    key: String,
    lock: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for RoundGuard {
    fn drop(&mut self) {
        let mutex = self.lock.take().map(|g| {
            let m = tokio::sync::OwnedMutexGuard::mutex(&g).clone();
            drop(g);
            m
        });
        let mut rounds = self.rounds.lock().expect("rounds lock");
        // Ours and the map's: nobody else waits for this ticker.
        if mutex.is_some_and(|m| Arc::strong_count(&m) == 2) {
            rounds.remove(&self.key);
        }
    }
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
            rounds: Arc::default(),
        }
    }

    /// Waits until no other consumer process runs a round of the ticker whose download document
    /// is `own_source` (the lease on it), up to `deadline`.
    async fn lease_round(
        &self,
        own_source: &SourceKey,
        deadline: Option<Instant>,
    ) -> Result<RoundLease, ItemError> {
        let mut backoff = Duration::from_millis(20);
        loop {
            let claim = self
                .store
                .claim_fill(own_source, holder(), ROUND_LEASE)
                .await
                .map_err(storage_error)?;
            if let Some(token) = claim.token {
                let (store, sid) = (self.store.clone(), own_source.clone());
                let (lost_tx, lost) = tokio::sync::watch::channel(false);
                let renew = tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(ROUND_LEASE / 3).await;
                        match store.renew_fill(&sid, token, ROUND_LEASE).await {
                            Ok(true) => {}
                            Ok(false) => {
                                tracing::warn!(%sid, token, "round lease taken over; stopping the round");
                                let _ = lost_tx.send(true);
                                return;
                            }
                            Err(e) => {
                                tracing::warn!(%sid, error = %e, "could not renew the round lease")
                            }
                        }
                    }
                });
                return Ok(RoundLease {
                    token,
                    lost,
                    renew,
                    release: Some((self.store.clone(), own_source.clone(), token)),
                });
            }
            // Another consumer runs a round of this ticker: wait for it.
            if deadline.is_some_and(|d| Instant::now() + backoff >= d) {
                return Err(ItemError::new(
                    Code::DeadlineExceeded,
                    "deadline passed while another consumer ran a round of this ticker",
                ));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    /// Waits until no other round of `ticker` (canonical form) runs in this process.
    async fn hold(&self, ticker: &str) -> RoundGuard {
        let mutex = self
            .rounds
            .lock()
            .expect("rounds lock")
            .entry(ticker.to_string())
            .or_default()
            .clone();
        RoundGuard {
            rounds: self.rounds.clone(),
            key: ticker.to_string(),
            lock: Some(mutex.lock_owned().await),
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

    /// Processes every ticker (concurrently, bounded) and answers reports in request order.
    /// `deadline` is the caller's, and bounds every provider call.
    /// Spellings of one ticker are processed once and each answered with that report.
    pub async fn run(&self, req: &JobRequest, deadline: Option<Instant>) -> Vec<pb::TickerReport> {
        // Position -> index of the distinct ticker it names (unparsable ones stand alone).
        let mut distinct: Vec<String> = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        let positions: Vec<usize> = req
            .tickers
            .iter()
            .map(|t| match Ticker::parse(t) {
                Ok(parsed) => *seen.entry(parsed.to_string()).or_insert_with(|| {
                    distinct.push(t.clone());
                    distinct.len() - 1
                }),
                Err(_) => {
                    distinct.push(t.clone());
                    distinct.len() - 1
                }
            })
            .collect();
        let reports: Vec<pb::TickerReport> = stream::iter(distinct)
            .map(|t| async move { self.process_one(&t, req, deadline).await })
            .buffered(self.settings.ticker_concurrency)
            .collect()
            .await;
        positions
            .into_iter()
            .zip(&req.tickers)
            .map(|(i, asked)| pb::TickerReport {
                ticker: asked.clone(),
                ..reports[i].clone()
            })
            .collect()
    }

    #[tracing::instrument(
        name = "process_ticker",
        skip(self, req, deadline),
        fields(ticker = %ticker, request_id = %req.request_id)
    )]
    async fn process_one(
        &self,
        ticker: &str,
        req: &JobRequest,
        deadline: Option<Instant>,
    ) -> pb::TickerReport {
        let started = Instant::now();
        let mut report = pb::TickerReport {
            ticker: ticker.to_string(),
            ..Default::default()
        };
        let outcome = self.fill_report(ticker, req, deadline, &mut report).await;
        ConsumerMetrics::count(
            &METRICS.tickers,
            if outcome.is_ok() { "ok" } else { "error" },
            1,
        );
        for (result, n) in [
            ("downloaded", report.downloaded.len()),
            ("skipped", report.skipped.len()),
            ("failed", report.failed.len()),
        ] {
            ConsumerMetrics::count(&METRICS.downloads, result, n);
        }
        if let Err(e) = outcome {
            tracing::warn!(code = ?e.code, error = %e.message, "ticker failed");
            report.status = Some(e.clone().described().to_rpc_status(&[("ticker", ticker)]));
            #[allow(deprecated)] // still sent, beside `status`, for older clients
            {
                report.error = Some((&e).into());
            }
        } else {
            tracing::info!(
                matched = report.matched.len(),
                downloaded = report.downloaded.len(),
                skipped = report.skipped.len(),
                failed = report.failed.len(),
                version = report.version_read,
                latency_ms = started.elapsed().as_secs_f64() * 1000.0,
                "ticker processed"
            );
        }
        report
    }

    async fn fill_report(
        &self,
        ticker: &str,
        req: &JobRequest,
        deadline: Option<Instant>,
        report: &mut pb::TickerReport,
    ) -> Result<(), ItemError> {
        let parsed = Ticker::parse(ticker).map_err(|e| {
            ItemError::new(Code::InvalidArgument, format!("ticker: {e}"))
                .reason("INVALID_TICKER")
                .field("tickers")
        })?;
        let canonical = parsed.to_string();
        let hold = self.hold(&canonical);
        let _round = match deadline {
            Some(d) => tokio::time::timeout_at(d, hold).await.map_err(|_| {
                ItemError::new(
                    Code::DeadlineExceeded,
                    "deadline passed while another round of this ticker ran",
                )
            })?,
            None => hold.await,
        };

        // 1. Ask the provider, within the caller's deadline.
        let mut opts = DocumentOptions::new()
            .kind(Kind::Announcement)
            .cache_hours(
                req.cache_hours
                    .unwrap_or(documents_api::provider::DEFAULT_CACHE_HOURS),
            )
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
        let call = documents_kit::trace::in_span(
            "documents.v1.DocumentProvider/GetDocument",
            documents_kit::trace::SpanKind::Client,
            || vec![documents_kit::trace::KeyValue::new("rpc.system", "grpc")],
            provider.get_document(ticker, &opts),
        );
        let answer: DocumentResult = match call.await {
            Ok(r) => r,
            Err(s) => {
                let e = ItemError::from(&s);
                report.provider_result = Some(
                    DocumentResult::failed(
                        ticker,
                        Kind::Announcement.as_str(),
                        String::new(),
                        e.clone(),
                    )
                    .into(),
                );
                return Err(ItemError {
                    message: format!("provider: {}", e.message),
                    ..e
                });
            }
        };
        report.provider_result = Some(answer.clone().into());

        // 2. Read the document by ID from the shared database.
        let doc = self.read_checked(&answer, &parsed).await?;
        report.document_id = doc.id.clone();
        report.version_read = doc.version;
        report.newer_version_read = doc.version > answer.version;

        // 3. Select.
        let announcements = parse_announcements(&doc)?;
        let filters = if req.filters.is_empty() {
            &self.settings.default_filters
        } else {
            &req.filters
        };
        let max = req.max_downloads.unwrap_or(self.settings.max_downloads) as usize;
        let matched: Vec<&Announcement> = announcements
            .iter()
            .filter(|a| {
                filters
                    .iter()
                    .any(|f| matches_filter(f, &a.headline, &a.kind))
            })
            .take(max)
            .collect();

        // 4. Skip what is stored; download the rest. One round per ticker across consumer
        // processes from here on (the lease), so what another one downloads is seen stored.
        let own_source = SourceKey::new(Kind::AnnouncementDownload, parsed.clone());
        let lease = self.lease_round(&own_source, deadline).await?;
        // Fenced unless the history checker switched fencing off (then the round is never told
        // it lost its lease, and goes on as it did before fencing).
        let unfenced = documents_kit::switches::off(documents_kit::switches::ROUND_FENCING);
        let fence = |f: Fence| (!unfenced).then_some(f);
        let never_lost = tokio::sync::watch::channel(false);
        let mut lost = if unfenced {
            never_lost.1.clone()
        } else {
            lease.lost.clone()
        };
        // A write refused for the token, or a renewal that found the lease taken: stop.
        let fenced = |e: documents_store::StorageError, lease: &RoundLease| match e {
            documents_store::StorageError::LeaseLost(_) => lease.lost_error(),
            e => storage_error(e),
        };
        let previous = self
            .store
            .get_by_source(&own_source)
            .await
            .map_err(storage_error)?;
        let stored: HashMap<String, String> = match &previous {
            Some(p) => self
                .store
                .attachments_of(&p.id)
                .await
                .map_err(storage_error)?
                .into_iter()
                .map(|a| (a.name, a.hash))
                .collect(),
            None => HashMap::new(),
        };
        let item = |a: &Announcement| Item {
            document_key: a.document_key.clone(),
            headline: a.headline.clone(),
            date: a.date.clone(),
            pdf_url: a.pdf_url.clone(),
            ..Item::default()
        };
        let mut skipped = Vec::new();
        let mut to_fetch = Vec::new();
        for a in &matched {
            match stored.get(&a.document_key) {
                Some(hash) => skipped.push(Item {
                    attachment_hash: hash.clone(),
                    ..item(a)
                }),
                None => to_fetch.push(item(a)),
            }
        }
        let all_matched: Vec<Item> = matched.iter().map(|a| item(a)).collect();
        let total = to_fetch.len();
        let mut downloads = stream::iter(to_fetch)
            .map(|i| async move {
                let r = self.downloader.pdf(&i.pdf_url).await.map_err(|e| e.0);
                (i, r)
            })
            .buffer_unordered(16);
        let mut downloaded = Vec::new();
        let mut failed = Vec::new();
        let mut attachments = Vec::new();
        let mut finished = 0;
        loop {
            let next = tokio::select! {
                next = downloads.next() => next,
                // Lost: the downloads still running are dropped with the stream.
                _ = lost.wait_for(|lost| *lost) => return Err(lease.lost_error()),
            };
            let Some((mut i, r)) = next else { break };
            finished += 1;
            match r {
                Ok(bytes) => {
                    let a = NewAttachment {
                        name: i.document_key.clone(),
                        content_type: "application/pdf".into(),
                        data: bytes,
                    };
                    i.attachment_hash = a.hash();
                    downloaded.push(i);
                    if finished < total {
                        // A checkpoint while others are still downloading: this PDF is kept
                        // (and not fetched again) even if the round dies before it ends.
                        let progress = download_document(
                            &parsed,
                            &doc,
                            filters,
                            &all_matched,
                            (&downloaded, &skipped, &failed),
                            false,
                        );
                        self.store
                            .upsert(
                                &own_source,
                                &progress,
                                &[a],
                                fence(Fence::keep(lease.token)),
                            )
                            .await
                            .map_err(|e| fenced(e, &lease))?;
                    } else {
                        attachments.push(a);
                    }
                }
                Err(e) => {
                    i.error = e;
                    failed.push(i);
                }
            }
        }

        // 5. Record the round: document and its last attachment in one transaction.
        let content = download_document(
            &parsed,
            &doc,
            filters,
            &all_matched,
            (&downloaded, &skipped, &failed),
            true,
        );
        let written = self
            .store
            .upsert(
                &own_source,
                &content,
                &attachments,
                fence(Fence::last(lease.token)),
            )
            .await
            .map_err(|e| fenced(e, &lease))?;
        report.download_document_id = written.head.id;
        report.matched = all_matched.into_iter().map(Into::into).collect();
        report.downloaded = downloaded.into_iter().map(Into::into).collect();
        report.skipped = skipped.into_iter().map(Into::into).collect();
        report.failed = failed.into_iter().map(Into::into).collect();
        Ok(())
    }

    /// Reads the answered document and checks it is the one asked for, at the answered version
    /// or newer.
    async fn read_checked(
        &self,
        answer: &DocumentResult,
        ticker: &Ticker,
    ) -> Result<StoredDocument, ItemError> {
        let doc = self
            .store
            .get(&answer.document_id)
            .await
            .map_err(storage_error)?
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

    /// What is stored for a ticker.
    pub async fn stored(&self, ticker: &str) -> Result<pb::GetStoredResponse, Status> {
        let t = Ticker::parse(ticker).map_err(|e| invalid_argument("ticker", e))?;
        let get = |kind: Kind| {
            let key = SourceKey::new(kind, t.clone());
            async move { self.store.get_by_source(&key).await }
        };
        let announcements = get(Kind::Announcement)
            .await
            .map_err(|e| storage_error(e).to_status())?;
        let downloads = get(Kind::AnnouncementDownload)
            .await
            .map_err(|e| storage_error(e).to_status())?;
        let attachment_hashes = match &downloads {
            Some(d) => self
                .store
                .attachments_of(&d.id)
                .await
                .map_err(|e| storage_error(e).to_status())?
                .into_iter()
                .map(|a| a.hash)
                .collect(),
            None => Vec::new(),
        };
        Ok(pb::GetStoredResponse {
            ticker: t.to_string(),
            announcements: announcements.map(stored_document),
            downloads: downloads.map(stored_document),
            attachment_hashes,
        })
    }
}

fn stored_document(d: StoredDocument) -> pb::StoredDocument {
    pb::StoredDocument {
        document_id: d.id,
        source_type: d.key.kind().as_str().to_string(),
        source_id: d.key.source_id(),
        title: d.title,
        version: d.version,
        tags: d.tags,
        content_hash: d.content_hash,
    }
}

fn storage_error(e: documents_store::StorageError) -> ItemError {
    e.item_error()
}

fn parse_announcements(doc: &StoredDocument) -> Result<Vec<Announcement>, ItemError> {
    let version = doc.content_json["schema_version"].as_u64();
    if version != Some(ANNOUNCEMENT_SCHEMA_VERSION) {
        return Err(ItemError::new(
            Code::FailedPrecondition,
            format!(
                "document {} has schema_version {version:?}; this consumer reads version {ANNOUNCEMENT_SCHEMA_VERSION}",
                doc.id
            ),
        ));
    }
    serde_json::from_value(doc.content_json["announcements"].clone()).map_err(|e| {
        ItemError::new(
            Code::Internal,
            format!("document {} has unreadable announcements: {e}", doc.id),
        )
    })
}

/// The `announcement_download` document of a round: what matched, and what was downloaded,
/// already stored or failed; `complete` is false on a checkpoint written mid-round.
fn download_document(
    ticker: &Ticker,
    source: &StoredDocument,
    filters: &[String],
    matched: &[Item],
    (downloaded, skipped, failed): (&[Item], &[Item], &[Item]),
    complete: bool,
) -> NewContent {
    let mut md = format!(
        "# {ticker} announcement downloads\n\nFrom announcements document {} version {}: {} matched, {} downloaded, {} already stored, {} failed.\n\n",
        source.id,
        source.version,
        matched.len(),
        downloaded.len(),
        skipped.len(),
        failed.len()
    );
    if !matched.is_empty() {
        md.push_str("| Date | Headline | Result |\n|---|---|---|\n");
        for (items, label) in [
            (downloaded, "downloaded"),
            (skipped, "already stored"),
            (failed, "failed"),
        ] {
            for i in items {
                let result = if i.error.is_empty() {
                    label.to_string()
                } else {
                    format!("{label}: {}", i.error)
                };
                md.push_str(&format!(
                    "| {} | {} | {} |\n",
                    i.date,
                    i.headline.replace('|', "\\|"),
                    result
                ));
            }
        }
    }
    NewContent {
        title: format!("{ticker} announcement downloads"),
        content_markdown: md,
        content_json: serde_json::json!({
            "schema_version": DOWNLOAD_SCHEMA_VERSION,
            "ticker": ticker.to_string(),
            "source_document_id": source.id,
            "source_version": source.version,
            "filters": filters,
            "matched": matched,
            "downloaded": downloaded,
            "skipped": skipped,
            "failed": failed,
            "complete": complete,
        }),
        tags: vec![
            Kind::AnnouncementDownload.as_str().to_string(),
            ticker.code().to_lowercase(),
            format!("ticker:{ticker}"),
            format!("source_type:{}", Kind::AnnouncementDownload),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_whole_words_in_headline_or_type() {
        assert!(matches_filter(
            "Annual Report",
            "[SAMPLE] Appendix 4E and Annual Report",
            ""
        ));
        assert!(matches_filter(
            "appendix 4e",
            "Appendix 4E and Annual Report",
            ""
        ));
        assert!(!matches_filter("FY", "FY25 results", ""));
        assert!(matches_filter("FY", "FY 2025 results", ""));
        assert!(!matches_filter("FY", "Notify of meeting", ""));
        assert!(matches_filter(
            "annual report",
            "Something",
            "ANNUAL_REPORT"
        ));
        assert!(!matches_filter("", "anything", "OTHER"));
        assert!(matches_filter(
            "Preliminary Final Report",
            "[SAMPLE] Preliminary Final Report",
            ""
        ));
    }
}
