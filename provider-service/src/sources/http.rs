//! The one HTTP client every source uses: connect and total timeouts, a response size cap, a
//! rate limit per upstream host shared by the whole process, and retries of idempotent GETs
//! on connection failures and 5xx answers.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use reqwest::{StatusCode, Url};

use super::SourceError;
use crate::metrics::METRICS;

/// Limits applied to every upstream request.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub connect_timeout: Duration,
    pub total_timeout: Duration,
    pub max_body_bytes: usize,
    /// Requests per second per host; 0 disables the limit.
    pub rate_per_host: f64,
    /// Retries after the first attempt, for connection failures and 5xx answers.
    pub retries: u32,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            total_timeout: Duration::from_secs(20),
            max_body_bytes: 16 * 1024 * 1024,
            rate_per_host: 20.0,
            retries: 2,
        }
    }
}

/// A successful upstream answer.
#[derive(Debug)]
pub struct Fetched {
    pub status: StatusCode,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

/// Spaces requests to each host at least `1/rate` apart, across every task of the process.
#[derive(Default)]
struct HostRateLimiter {
    next_slot: Mutex<HashMap<String, Instant>>,
}

impl HostRateLimiter {
    async fn wait(&self, host: &str, rate: f64) {
        if rate <= 0.0 {
            return;
        }
        let interval = Duration::from_secs_f64(1.0 / rate);
        let slot = {
            let mut slots = self.next_slot.lock().expect("rate limiter lock poisoned");
            let now = Instant::now();
            let next = slots.entry(host.to_string()).or_insert(now);
            let slot = (*next).max(now);
            *next = slot + interval;
            slot
        };
        tokio::time::sleep_until(slot.into()).await;
    }
}

/// HTTP client shared by all sources. Cheap to clone.
#[derive(Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    limits: HttpLimits,
    limiter: Arc<HostRateLimiter>,
}

impl HttpClient {
    pub fn new(limits: HttpLimits) -> anyhow::Result<Self> {
        documents_kit::security::install_crypto_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(limits.connect_timeout)
            .timeout(limits.total_timeout)
            .user_agent(concat!("provider-service/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        Ok(Self {
            client,
            limits,
            limiter: Arc::new(HostRateLimiter::default()),
        })
    }

    /// GETs `url`. 404 comes back as an answer (sources decide what it means); other 4xx are
    /// Malformed (the request is wrong for this upstream), 5xx and network failures are
    /// Unavailable after the retries.
    pub async fn get(&self, url: &Url) -> Result<Fetched, SourceError> {
        let host = url.host_str().unwrap_or_default().to_string();
        let mut attempt = 0;
        loop {
            self.limiter.wait(&host, self.limits.rate_per_host).await;
            let result = documents_kit::trace::in_span(
                "upstream GET",
                documents_kit::trace::SpanKind::Client,
                || {
                    vec![
                        documents_kit::trace::KeyValue::new("http.request.method", "GET"),
                        documents_kit::trace::KeyValue::new("server.address", host.clone()),
                        documents_kit::trace::KeyValue::new("url.path", url.path().to_string()),
                    ]
                },
                self.get_once(url),
            )
            .await;
            let retryable = matches!(&result, Err(SourceError::Unavailable(_)));
            if retryable && attempt < self.limits.retries {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100 * 2u64.pow(attempt))).await;
                continue;
            }
            return result;
        }
    }

    async fn get_once(&self, url: &Url) -> Result<Fetched, SourceError> {
        let shown = redact(url);
        let host = format!(
            "{}:{}",
            url.host_str().unwrap_or_default(),
            url.port_or_known_default().unwrap_or(0)
        );
        // The upstream joins the caller's trace (W3C traceparent), as its child.
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(trace) = documents_kit::trace::TraceContext::current() {
            trace.inject(&mut headers);
        }
        let resp = match self.client.get(url.clone()).headers(headers).send().await {
            Ok(r) => r,
            Err(e) => {
                METRICS.source_request(&host, if e.is_timeout() { "timeout" } else { "error" });
                return Err(SourceError::Unavailable(format!(
                    "GET {shown}: {}",
                    describe(&e)
                )));
            }
        };
        let status = resp.status();
        METRICS.source_request(&host, status.as_str());
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Err(SourceError::Unavailable(format!(
                "GET {shown}: upstream answered {status}"
            )));
        }
        if status.is_client_error() && status != StatusCode::NOT_FOUND {
            return Err(SourceError::Malformed(format!(
                "GET {shown}: upstream answered {status}"
            )));
        }
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let max = self.limits.max_body_bytes;
        if resp.content_length().is_some_and(|n| n > max as u64) {
            return Err(SourceError::Malformed(format!(
                "GET {shown}: body of {} bytes exceeds the {max}-byte limit",
                resp.content_length().unwrap_or_default()
            )));
        }
        let mut body = Vec::new();
        let mut resp = resp;
        while let Some(chunk) = resp.chunk().await.map_err(|e| {
            SourceError::Unavailable(format!("GET {shown}: reading body: {}", describe(&e)))
        })? {
            if body.len() + chunk.len() > max {
                return Err(SourceError::Malformed(format!(
                    "GET {shown}: body exceeds the {max}-byte limit"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Fetched {
            status,
            content_type,
            body,
        })
    }
}

/// The URL without its query string, which may carry an API token.
fn redact(url: &Url) -> String {
    let mut u = url.clone();
    if u.query().is_some_and(|q| q.contains("token")) {
        u.set_query(Some("…"));
    }
    u.to_string()
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "connection failed".to_string()
    } else {
        let mut s = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(inner) = src {
            s.push_str(": ");
            s.push_str(&inner.to_string());
            src = inner.source();
        }
        s
    }
}
