//! PDF downloads: a per-download timeout, a size cap, a content-type and magic-bytes check,
//! and a process-wide bound on downloads running at once.

use std::{sync::Arc, time::Duration};

use tokio::sync::Semaphore;

#[derive(Debug, Clone)]
pub struct DownloadLimits {
    pub timeout: Duration,
    pub max_bytes: usize,
    pub concurrency: usize,
}

/// Why a download was refused; the message is reported for the announcement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DownloadError(pub String);

#[derive(Clone)]
pub struct Downloader {
    client: reqwest::Client,
    limits: DownloadLimits,
    permits: Arc<Semaphore>,
}

impl Downloader {
    pub fn new(limits: DownloadLimits) -> anyhow::Result<Self> {
        documents_kit::security::install_crypto_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("consumer-service/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            permits: Arc::new(Semaphore::new(limits.concurrency.max(1))),
            limits,
        })
    }

    /// Downloads a PDF; answers its bytes and content type.
    pub async fn pdf(&self, url: &str) -> Result<Vec<u8>, DownloadError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| DownloadError("downloads are shutting down".into()))?;
        match tokio::time::timeout(self.limits.timeout, self.fetch(url)).await {
            Ok(r) => r,
            Err(_) => Err(DownloadError(format!(
                "download timed out after {} ms",
                self.limits.timeout.as_millis()
            ))),
        }
    }

    async fn fetch(&self, url: &str) -> Result<Vec<u8>, DownloadError> {
        // The PDF's host joins the caller's trace (W3C traceparent).
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(trace) = documents_kit::trace::TraceContext::current() {
            trace.inject(&mut headers);
        }
        let mut resp = self
            .client
            .get(url)
            .headers(headers)
            .send()
            .await
            .map_err(|e| DownloadError(format!("download failed: {e}")))?;
        if !resp.status().is_success() {
            return Err(DownloadError(format!(
                "download answered {}",
                resp.status()
            )));
        }
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        if !(content_type.starts_with("application/pdf")
            || content_type.starts_with("application/octet-stream"))
        {
            return Err(DownloadError(format!(
                "not a PDF: content type {content_type:?}"
            )));
        }
        let max = self.limits.max_bytes;
        if resp.content_length().is_some_and(|n| n > max as u64) {
            return Err(DownloadError(format!(
                "too large: more than the {max}-byte limit"
            )));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| DownloadError(format!("download failed while reading: {e}")))?
        {
            if body.len() + chunk.len() > max {
                return Err(DownloadError(format!(
                    "too large: more than the {max}-byte limit"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        if !body.starts_with(b"%PDF-") {
            return Err(DownloadError(
                "not a PDF: the body does not start with %PDF-".into(),
            ));
        }
        Ok(body)
    }
}
