//! gRPC client of the provider that implements [`DocumentProvider`] and [`DocumentProvisioner`].
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use shared::{DocumentOptions, DocumentProvider, ProviderClient};
//! let provider = ProviderClient::connect("http://127.0.0.1:50051")?;
//! let result = provider.get_document("ASX:GNP", &DocumentOptions::new().cache_hours(24)).await?;
//! println!("{} v{}", result.document_id, result.version);
//! # Ok(()) }
//! ```
//!
//! Every call carries a deadline; UNAVAILABLE is retried with exponential backoff and equal
//! jitter up to a bound; several comma-separated endpoints are balanced over one lazily
//! connected channel that is reused by every call.

use std::{future::Future, time::Duration};

use async_trait::async_trait;
use rand::Rng;
use tonic::{
    metadata::MetadataValue,
    service::{interceptor::InterceptedService, Interceptor},
    transport::{Channel, ClientTlsConfig, Endpoint},
    Code, Request, Status,
};

use crate::{
    proto::documents::v1::document_provider_client::DocumentProviderClient,
    provider::{
        ensure_documents_request, get_document_request, get_documents_request, DocumentOptions,
        DocumentProvider, DocumentProvisioner, DocumentResult, ItemError, Provisioned,
    },
};

/// HTTP/2 flow-control windows used by the client and the servers.
pub const HTTP2_STREAM_WINDOW: u32 = 2 * 1024 * 1024;
pub const HTTP2_CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;

/// How the client talks to the provider.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Deadline of each attempt, sent to the server as `grpc-timeout`.
    pub timeout: Duration,
    /// Retries after the first attempt when the answer is UNAVAILABLE or the connection broke.
    pub retries: u32,
    /// First backoff; doubles on every retry, capped by `max_backoff`, with equal jitter (half fixed, half random).
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Bearer token sent on every call, if the provider requires one.
    pub auth_token: Option<String>,
    pub connect_timeout: Duration,
    /// TLS for `https://` endpoints: the CA to trust and, for mutual TLS, the client identity.
    pub tls: Option<ClientTlsConfig>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            retries: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            auth_token: None,
            connect_timeout: Duration::from_secs(3),
            tls: None,
        }
    }
}

/// Adds the bearer token to every request.
#[derive(Clone)]
pub struct BearerToken(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for BearerToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

type Inner = DocumentProviderClient<InterceptedService<Channel, BearerToken>>;

/// A cheap-to-clone client of one or more provider endpoints.
#[derive(Clone)]
pub struct ProviderClient {
    inner: Inner,
    config: ClientConfig,
    request_id: Option<MetadataValue<tonic::metadata::Ascii>>,
}

/// Parses a comma-separated list of endpoint URLs.
pub fn parse_endpoints(
    urls: &str,
    connect_timeout: Duration,
) -> Result<Vec<Endpoint>, anyhow::Error> {
    parse_endpoints_with_tls(urls, connect_timeout, None)
}

/// Like [`parse_endpoints`], with TLS settings for the `https://` ones.
pub fn parse_endpoints_with_tls(
    urls: &str,
    connect_timeout: Duration,
    tls: Option<&ClientTlsConfig>,
) -> Result<Vec<Endpoint>, anyhow::Error> {
    let endpoints = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            Endpoint::from_shared(u.to_string())
                .map(|e| {
                    e.connect_timeout(connect_timeout)
                        .tcp_nodelay(true)
                        // Large batch answers (a thousand results is ~150 KB) arrive without
                        // waiting for HTTP/2 window updates.
                        .initial_stream_window_size(HTTP2_STREAM_WINDOW)
                        .initial_connection_window_size(HTTP2_CONNECTION_WINDOW)
                        .http2_keep_alive_interval(Duration::from_secs(30))
                        .keep_alive_timeout(Duration::from_secs(10))
                        .keep_alive_while_idle(true)
                })
                .and_then(|e| match tls {
                    Some(tls) if u.starts_with("https://") => e.tls_config(tls.clone()),
                    _ => Ok(e),
                })
                .map_err(|e| anyhow::anyhow!("provider URL {u:?} is invalid: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if endpoints.is_empty() {
        anyhow::bail!("provider URL list is empty: expected e.g. http://127.0.0.1:50051");
    }
    Ok(endpoints)
}

impl ProviderClient {
    /// A client of `urls` (comma-separated) with default settings. Connects lazily.
    pub fn connect(urls: &str) -> Result<Self, anyhow::Error> {
        Self::with_config(urls, ClientConfig::default())
    }

    /// A client of `urls` (comma-separated). Connects lazily, so a provider that is down at
    /// start-up only fails the calls made while it is down.
    pub fn with_config(urls: &str, config: ClientConfig) -> Result<Self, anyhow::Error> {
        let mut endpoints =
            parse_endpoints_with_tls(urls, config.connect_timeout, config.tls.as_ref())?;
        let channel = if endpoints.len() == 1 {
            endpoints.remove(0).connect_lazy()
        } else {
            Channel::balance_list(endpoints.into_iter())
        };
        let token = config
            .auth_token
            .as_deref()
            .map(|t| {
                format!("Bearer {t}").parse().map_err(|_| {
                    anyhow::anyhow!("auth token contains characters not allowed in a header")
                })
            })
            .transpose()?;
        let inner = DocumentProviderClient::with_interceptor(channel, BearerToken(token))
            .max_decoding_message_size(64 * 1024 * 1024);
        Ok(Self {
            inner,
            config,
            request_id: None,
        })
    }

    /// The same client (same connections) with another per-attempt deadline, e.g. the
    /// remainder of the caller's own deadline.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        let mut c = self.clone();
        c.config.timeout = timeout;
        c
    }

    /// The same client sending `x-request-id: id` on every call, so the provider's log lines
    /// can be matched with the caller's. An ID that is not a valid header value is not sent.
    pub fn with_request_id(&self, id: &str) -> Self {
        let mut c = self.clone();
        c.request_id = id.parse().ok();
        c
    }

    /// Runs `call` with a deadline per attempt, retrying UNAVAILABLE with backoff and jitter.
    async fn with_retries<T, F, Fut>(&self, mut call: F) -> Result<T, Status>
    where
        F: FnMut(Inner, Duration) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut attempt = 0;
        loop {
            let timeout = self.config.timeout;
            let result =
                match tokio::time::timeout(timeout, call(self.inner.clone(), timeout)).await {
                    Ok(Err(s)) if is_timeout(&s) => Err(deadline_exceeded(timeout)),
                    Ok(Err(s)) if is_broken_connection(&s) => Err(broken_connection(&s)),
                    Ok(r) => r,
                    Err(_) => Err(deadline_exceeded(timeout)),
                };
            match result {
                Err(s) if s.code() == Code::Unavailable && attempt < self.config.retries => {
                    let cap = self
                        .config
                        .initial_backoff
                        .saturating_mul(1 << attempt.min(16))
                        .min(self.config.max_backoff);
                    // Equal jitter: half the backoff is fixed, so retries always give a failed
                    // endpoint time to be noticed; the other half spreads the callers out.
                    let sleep = cap / 2 + rand::rng().random_range(Duration::ZERO..=cap / 2);
                    tracing::debug!(attempt, ?sleep, error = %s.message(), "provider unavailable, retrying");
                    tokio::time::sleep(sleep).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// A transport failure: a connection that broke under the call, which tonic reports as
/// UNKNOWN "transport error". It is reported (and retried) as UNAVAILABLE, as gRPC asks of
/// client-side connection failures; every provider RPC is idempotent (it ensures documents
/// exist), so repeating one is safe.
fn is_broken_connection(s: &Status) -> bool {
    s.code() == Code::Unknown
        && (s.message() == "transport error"
            || std::error::Error::source(s).is_some_and(|e| e.is::<tonic::transport::Error>()))
}

fn broken_connection(s: &Status) -> Status {
    let mut detail = s.message().to_string();
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        detail = format!("{detail}: {e}");
        source = e.source();
    }
    Status::unavailable(format!("the connection to the provider broke: {detail}"))
}

fn deadline_exceeded(timeout: Duration) -> Status {
    Status::deadline_exceeded(format!("provider did not answer within {timeout:?}"))
}

/// tonic reports its own client-side deadline as CANCELLED with a `TimeoutExpired` source;
/// callers should see DEADLINE_EXCEEDED.
fn is_timeout(s: &Status) -> bool {
    if s.code() != Code::Cancelled {
        return false;
    }
    if s.message() == "Timeout expired" {
        return true;
    }
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        if e.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = e.source();
    }
    false
}

fn with_deadline<T>(
    message: T,
    timeout: Duration,
    request_id: &Option<MetadataValue<tonic::metadata::Ascii>>,
) -> Request<T> {
    let mut req = Request::new(message);
    req.set_timeout(timeout);
    if let Some(id) = request_id {
        req.metadata_mut().insert("x-request-id", id.clone());
    }
    req
}

#[async_trait]
impl DocumentProvider for ProviderClient {
    async fn get_document(
        &self,
        identifier: &str,
        options: &DocumentOptions,
    ) -> Result<DocumentResult, Status> {
        let msg = get_document_request(identifier, options);
        let r = self
            .with_retries(|mut c, t| {
                let msg = msg.clone();
                let id = self.request_id.clone();
                async move { c.get_document(with_deadline(msg, t, &id)).await }
            })
            .await?;
        let result: DocumentResult = r.into_inner().into();
        match &result.error {
            // A server that reports the failure in the body rather than the status.
            Some(e) if !result.is_ok() => Err(e.to_status()),
            _ => Ok(result),
        }
    }

    async fn get_documents(
        &self,
        identifiers: &[String],
        options: &DocumentOptions,
    ) -> Result<Vec<DocumentResult>, Status> {
        let msg = get_documents_request(identifiers, options);
        let r = self
            .with_retries(|mut c, t| {
                let msg = msg.clone();
                let id = self.request_id.clone();
                async move { c.get_documents(with_deadline(msg, t, &id)).await }
            })
            .await?;
        Ok(r.into_inner().results.into_iter().map(Into::into).collect())
    }
}

#[async_trait]
impl DocumentProvisioner for ProviderClient {
    async fn ensure_documents(
        &self,
        identifiers: &[String],
        options: &DocumentOptions,
    ) -> Result<Provisioned, Status> {
        let msg = ensure_documents_request(identifiers, options);
        let r = self
            .with_retries(|mut c, t| {
                let msg = msg.clone();
                let id = self.request_id.clone();
                async move { c.ensure_documents(with_deadline(msg, t, &id)).await }
            })
            .await?
            .into_inner();
        Ok(Provisioned {
            document_ids: r.document_ids,
            errors: r
                .errors
                .into_iter()
                .map(|(k, v)| (k, ItemError::from(v)))
                .collect(),
        })
    }
}
