//! The one HTTP client every source uses: connect and total timeouts, a response size cap, a
//! rate limit per upstream host shared by the whole process, and retries of idempotent GETs
//! on connection failures, 5xx and 429 answers: after the upstream's `Retry-After` when it says
//! one (up to [`MAX_RETRY_AFTER`]), else a full-jitter exponential backoff.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use reqwest::{StatusCode, Url};

use super::SourceError;
use crate::metrics::METRICS;

/// The first retry's backoff ceiling; the n-th retry waits a random time up to 2ⁿ⁻¹ times this.
const RETRY_BASE: Duration = Duration::from_millis(100);
/// No backoff ceiling above this.
const RETRY_CAP: Duration = Duration::from_secs(2);
/// The longest `Retry-After` waited for; an upstream asking for more is not retried now (the
/// caller gets UNAVAILABLE, and the negative cache keeps the error briefly).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);

/// How long to wait before retry number `retry` (1 for the first): the upstream's
/// `retry_after` if it said one (None: not worth waiting, past [`MAX_RETRY_AFTER`]), else a
/// uniformly random time up to the exponential ceiling (full jitter, so retries of many callers
/// do not come back in step). `random(n)` is uniform in `0..=n`.
fn retry_delay(
    retry: u32,
    retry_after: Option<Duration>,
    random: impl FnOnce(u64) -> u64,
) -> Option<Duration> {
    match retry_after {
        Some(after) if after > MAX_RETRY_AFTER => None,
        Some(after) => Some(after),
        None => {
            let ceiling = RETRY_BASE
                .saturating_mul(1 << retry.saturating_sub(1).min(16))
                .min(RETRY_CAP);
            Some(Duration::from_millis(random(ceiling.as_millis() as u64)))
        }
    }
}

/// A `Retry-After` header: delta seconds, or an HTTP date (as a wait from now).
fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// One failed request: the error, and the upstream's `Retry-After` if it said one.
struct Failed {
    error: SourceError,
    retry_after: Option<Duration>,
}

impl Failed {
    fn now(error: SourceError) -> Self {
        Self {
            error,
            retry_after: None,
        }
    }
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

/// Limits applied to every upstream request.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub connect_timeout: Duration,
    pub total_timeout: Duration,
    /// How long an idle connection is kept for reuse.
    pub pool_idle_timeout: Duration,
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
            pool_idle_timeout: Duration::from_secs(60),
            max_body_bytes: 16 * 1024 * 1024,
            rate_per_host: 20.0,
            retries: 2,
        }
    }
}

/// An upstream request's URL, whose query may carry a secret (an API token the upstream takes
/// only as a query parameter). Displayed or debugged, the secret's value is replaced, so the URL
/// can be formatted anywhere; only the request itself carries it.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    url: Url,
    /// The name of the query parameter whose value is secret.
    secret_param: Option<&'static str>,
}

impl UpstreamUrl {
    /// `url` with `name=value` appended to its query, `value` secret.
    pub fn with_secret_query(mut url: Url, name: &'static str, value: &str) -> Self {
        url.query_pairs_mut().append_pair(name, value);
        Self {
            url,
            secret_param: Some(name),
        }
    }

    pub fn host_str(&self) -> Option<&str> {
        self.url.host_str()
    }

    pub fn path(&self) -> &str {
        self.url.path()
    }

    fn shown(&self) -> Url {
        let Some(secret) = self.secret_param else {
            return self.url.clone();
        };
        let mut shown = self.url.clone();
        let pairs: Vec<(String, String)> = self
            .url
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == secret {
                    documents_kit::secrets::REDACTED.to_string()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        shown.query_pairs_mut().clear().extend_pairs(pairs);
        shown
    }
}

impl From<Url> for UpstreamUrl {
    fn from(url: Url) -> Self {
        Self {
            url,
            secret_param: None,
        }
    }
}

impl std::fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.shown(), f)
    }
}

impl std::fmt::Debug for UpstreamUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UpstreamUrl({self})")
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
            .pool_idle_timeout(limits.pool_idle_timeout)
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
    pub async fn get(&self, url: &UpstreamUrl) -> Result<Fetched, SourceError> {
        let host = url.host_str().unwrap_or_default().to_string();
        let mut retries = 0;
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
            let Failed { error, retry_after } = match result {
                Ok(fetched) => return Ok(fetched),
                Err(failed) => failed,
            };
            let retryable = matches!(error, SourceError::Unavailable(_));
            if retryable && retries < self.limits.retries {
                retries += 1;
                let delay = retry_delay(retries, retry_after, |n| rand::random_range(0..=n));
                if let Some(delay) = delay {
                    tokio::time::sleep(delay).await;
                    continue;
                }
            }
            return Err(error);
        }
    }

    /// One request: the answer, or the error with the upstream's `Retry-After` if it gave one.
    async fn get_once(&self, url: &UpstreamUrl) -> Result<Fetched, Failed> {
        let shown = url.to_string();
        let host = format!(
            "{}:{}",
            url.url.host_str().unwrap_or_default(),
            url.url.port_or_known_default().unwrap_or(0)
        );
        // The upstream joins the caller's trace (W3C traceparent), as its child.
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(trace) = documents_kit::trace::TraceContext::current() {
            trace.inject(&mut headers);
        }
        let resp = match self
            .client
            .get(url.url.clone())
            .headers(headers)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                METRICS.source_request(&host, if e.is_timeout() { "timeout" } else { "error" });
                return Err(Failed::now(SourceError::Unavailable(format!(
                    "GET {shown}: {}",
                    describe(e)
                ))));
            }
        };
        let status = resp.status();
        METRICS.source_request(&host, status.as_str());
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
            return Err(Failed {
                error: SourceError::Unavailable(format!("GET {shown}: upstream answered {status}")),
                retry_after,
            });
        }
        if status.is_client_error() && status != StatusCode::NOT_FOUND {
            return Err(Failed::now(SourceError::Malformed(format!(
                "GET {shown}: upstream answered {status}"
            ))));
        }
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let max = self.limits.max_body_bytes;
        if resp.content_length().is_some_and(|n| n > max as u64) {
            return Err(Failed::now(SourceError::Malformed(format!(
                "GET {shown}: body of {} bytes exceeds the {max}-byte limit",
                resp.content_length().unwrap_or_default()
            ))));
        }
        let mut body = Vec::new();
        let mut resp = resp;
        while let Some(chunk) = resp.chunk().await.map_err(|e| {
            Failed::now(SourceError::Unavailable(format!(
                "GET {shown}: reading body: {}",
                describe(e)
            )))
        })? {
            if body.len() + chunk.len() > max {
                return Err(Failed::now(SourceError::Malformed(format!(
                    "GET {shown}: body exceeds the {max}-byte limit"
                ))));
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

/// What went wrong, without the URL (reqwest's text repeats the request's whole URL, query and
/// all; the caller prefixes the redacted one).
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "connection failed".to_string()
    } else {
        let mut s = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(inner) = src {
            s.push_str(": ");
            s.push_str(&inner.to_string());
            src = inner.source();
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_wait_a_full_jitter_backoff_or_what_the_upstream_says() {
        // Full jitter: anywhere from nothing to the ceiling, which doubles up to its cap.
        for (retry, ceiling) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (5, 1600),
            (6, 2000),
            (40, 2000),
        ] {
            assert_eq!(
                retry_delay(retry, None, |n| n),
                Some(Duration::from_millis(ceiling))
            );
            assert_eq!(retry_delay(retry, None, |_| 0), Some(Duration::ZERO));
        }
        let seen: std::collections::BTreeSet<_> = (0..50)
            .map(|_| retry_delay(3, None, |n| rand::random_range(0..=n)).unwrap())
            .collect();
        assert!(seen.len() > 10, "jittered: {seen:?}");
        assert!(seen.iter().all(|d| *d <= Duration::from_millis(400)));
        // Retry-After wins, up to the most worth waiting for.
        let after = Some(Duration::from_secs(3));
        assert_eq!(retry_delay(1, after, |n| n), after);
        assert_eq!(retry_delay(1, Some(Duration::from_secs(60)), |n| n), None);
    }

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn an_upstream_url_shows_its_secret_as_redacted() {
        let base = Url::parse("https://eodhd.example/api/eod/BHP.AU?fmt=json").unwrap();
        let url = UpstreamUrl::with_secret_query(base, "api_token", "s3cret&value");
        assert_eq!(
            url.to_string(),
            "https://eodhd.example/api/eod/BHP.AU?fmt=json&api_token=***"
        );
        assert_eq!(
            format!("{url:?}"),
            "UpstreamUrl(https://eodhd.example/api/eod/BHP.AU?fmt=json&api_token=***)"
        );
        // The request itself carries it.
        assert_eq!(url.url.query(), Some("fmt=json&api_token=s3cret%26value"));
    }
}
