//! The tower layers of our own that every call passes through (their order is in
//! [`crate::grpc_server`]): conventional status codes, the caller's deadline, and the calls
//! allowed per connection; and reading `grpc-timeout`.

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

/// gRPC answers a message larger than the server accepts with RESOURCE_EXHAUSTED; tonic says
/// OUT_OF_RANGE. Both servers map their responses through this, which rewrites that one status
/// and leaves the rest alone. tonic refuses an over-size request before the handler runs, with a
/// trailers-only answer, so the status is in the response headers. (Deadlines: [`DeadlineLayer`].)
pub fn conventional_status<B>(
    mut response: tonic::codegen::http::Response<B>,
) -> tonic::codegen::http::Response<B> {
    rewrite_status(response.headers_mut());
    response
}

fn rewrite_status(headers: &mut tonic::codegen::http::HeaderMap) {
    let message = || {
        headers
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            // Percent-encoded on the wire (spaces as %20).
            .map(|m| m.replace("%20", " "))
            .unwrap_or_default()
    };
    let code = match headers.get("grpc-status").map(|v| v.as_bytes()) {
        Some(b"11") if message().contains("message length too large") => "8",
        _ => return,
    };
    headers.insert(
        "grpc-status",
        tonic::codegen::http::HeaderValue::from_static(code),
    );
}

/// Ends a call at its deadline (the caller's `grpc-timeout`, capped by the server's time cap)
/// with DEADLINE_EXCEEDED, as gRPC's conventions ask. tonic's own deadline (the backstop, set to
/// the same cap) would answer CANCELLED "Timeout expired" from outside every layer, so this one
/// fires [`DEADLINE_MARGIN`] earlier; the margin also lets the answer reach the caller before
/// the caller's own timer fires (tonic's client reports its own timeout as CANCELLED too).
#[derive(Clone, Copy, Debug)]
pub struct DeadlineLayer {
    cap: Duration,
}

/// How much earlier than the deadline [`DeadlineLayer`] answers: the answer's way back to the
/// caller (5 ms lost that race on a loaded machine).
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(20);

impl DeadlineLayer {
    pub fn new(cap: Duration) -> Self {
        Self { cap }
    }
}

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline {
            inner,
            cap: self.cap,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
    cap: Duration,
}

impl<S, ReqBody, ResBody> tower::Service<tonic::codegen::http::Request<ReqBody>> for Deadline<S>
where
    S: tower::Service<
            tonic::codegen::http::Request<ReqBody>,
            Response = tonic::codegen::http::Response<ResBody>,
        > + Send,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: tonic::codegen::http::Request<ReqBody>) -> Self::Future {
        let asked = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let deadline = asked.map_or(self.cap, |a| a.min(self.cap));
        let call = self.inner.call(req);
        Box::pin(async move {
            match tokio::time::timeout(deadline.saturating_sub(DEADLINE_MARGIN), call).await {
                Ok(result) => result,
                Err(_) => Ok(tonic::Status::deadline_exceeded(format!(
                    "deadline of {} ms exceeded ({})",
                    deadline.as_millis(),
                    if asked.is_some_and(|a| a <= deadline) {
                        "the caller's grpc-timeout"
                    } else {
                        "the server's time cap"
                    }
                ))
                .into_http()),
            }
        })
    }
}

/// Calls in flight on one connection: more are refused at once with RESOURCE_EXHAUSTED and a
/// `google.rpc.RetryInfo` (a call ending soon frees a place), rather than queued without bound.
/// It sits inside the observing layer, so refusals are counted and logged like any answer.
#[derive(Clone, Debug)]
pub struct ConnectionLimitLayer {
    limit: usize,
    setting: &'static str,
    connections: crate::listener::ConnTable,
}

/// How long a refused caller is told to wait.
pub const CONNECTION_LIMIT_RETRY: Duration = Duration::from_millis(50);

impl ConnectionLimitLayer {
    /// At most `limit` calls in flight per connection of `connections`; `setting` names the
    /// option in messages. The calls' start and end also tell the accept loop which
    /// connections are idle.
    pub fn new(
        limit: usize,
        setting: &'static str,
        connections: crate::listener::ConnTable,
    ) -> Self {
        Self {
            limit: limit.max(1),
            setting,
            connections,
        }
    }

    /// The state of the connection a request came on, if the server knows it.
    fn counter<B>(
        &self,
        req: &tonic::codegen::http::Request<B>,
    ) -> Option<Arc<crate::listener::ConnState>> {
        use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
        let ext = req.extensions();
        let remote = ext
            .get::<TcpConnectInfo>()
            .and_then(|i| i.remote_addr())
            .or_else(|| {
                ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                    .and_then(|i| i.get_ref().remote_addr())
            })?;
        Some(self.connections.state(remote))
    }
}

impl<S> tower::Layer<S> for ConnectionLimitLayer {
    type Service = ConnectionLimit<S>;
    fn layer(&self, inner: S) -> ConnectionLimit<S> {
        ConnectionLimit {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ConnectionLimit<S> {
    inner: S,
    layer: ConnectionLimitLayer,
}

/// When the connection a call came on was accepted (a request extension): a call that outlives
/// its connection's maximum age (a watch) ends itself before the connection is closed.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionOpened(pub tokio::time::Instant);

/// Gives back a connection's place when its call is answered.
struct InFlight(Arc<crate::listener::ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.touch();
    }
}

impl<S, ReqBody, ResBody> tower::Service<tonic::codegen::http::Request<ReqBody>>
    for ConnectionLimit<S>
where
    S: tower::Service<
            tonic::codegen::http::Request<ReqBody>,
            Response = tonic::codegen::http::Response<ResBody>,
        > + Send,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: tonic::codegen::http::Request<ReqBody>) -> Self::Future {
        let place = match self.layer.counter(&req) {
            Some(counter) => {
                counter.touch();
                req.extensions_mut()
                    .insert(ConnectionOpened(counter.opened.into()));
                if counter.in_flight.fetch_add(1, Ordering::AcqRel) >= self.layer.limit {
                    counter.in_flight.fetch_sub(1, Ordering::AcqRel);
                    let refused = documents_api::provider::status_with_retry(
                        tonic::Code::ResourceExhausted,
                        format!(
                            "too many calls in flight on this connection: at most {} ({}); retry shortly or use another connection",
                            self.layer.limit, self.layer.setting
                        ),
                        Some(CONNECTION_LIMIT_RETRY),
                    );
                    return Box::pin(async move { Ok(refused.into_http()) });
                }
                Some(InFlight(counter))
            }
            None => None,
        };
        let call = self.inner.call(req);
        Box::pin(async move {
            let answer = call.await;
            drop(place);
            answer
        })
    }
}

/// `grpc-timeout` as the gRPC spec writes it: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The caller's deadline from the `grpc-timeout` request header, as an instant.
pub fn deadline_of(metadata: &tonic::metadata::MetadataMap) -> Option<tokio::time::Instant> {
    let timeout = parse_grpc_timeout(metadata.get("grpc-timeout")?.to_str().ok()?)?;
    tokio::time::Instant::now().checked_add(timeout)
}

#[cfg(test)]
mod deadline_tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_as_the_spec_writes_them() {
        assert_eq!(parse_grpc_timeout("150m"), Some(Duration::from_millis(150)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "m", "10", "123456789S", "-1S", "1x", "1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_header_is_read() {
        let mut m = tonic::metadata::MetadataMap::new();
        assert!(deadline_of(&m).is_none());
        m.insert("grpc-timeout", "1500m".parse().unwrap());
        let left = deadline_of(&m).unwrap() - tokio::time::Instant::now();
        assert!(left <= Duration::from_millis(1500) && left > Duration::from_millis(1000));
        m.insert("grpc-timeout", "garbage".parse().unwrap());
        assert!(deadline_of(&m).is_none());
    }
}
