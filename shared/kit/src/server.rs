//! Plumbing both gRPC servers share: the health and reflection services, serving with a bounded
//! drain on shutdown, the shutdown signal, and the `healthcheck` probe.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::Context;
use tonic_health::{
    pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest},
    server::HealthReporter,
};

use documents_api::proto::FILE_DESCRIPTOR_SET;

/// Health service name that answers SERVING as long as the process runs, whatever the database
/// does: the liveness probe (a database outage makes a replica not ready, not dead).
pub const LIVENESS_SERVICE: &str = "liveness";

/// Health service with `service_name` (and the overall "" entry) reported NOT_SERVING until the
/// caller marks it ready; [`LIVENESS_SERVICE`] SERVING from the start.
pub async fn health_service(
    service_name: &'static str,
) -> (
    HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    let (reporter, service) = tonic_health::server::health_reporter();
    set_serving(&reporter, service_name, false).await;
    reporter
        .set_service_status(LIVENESS_SERVICE, tonic_health::ServingStatus::Serving)
        .await;
    (reporter, service)
}

/// Marks `service_name` and the overall server SERVING or NOT_SERVING.
pub async fn set_serving(reporter: &HealthReporter, service_name: &str, serving: bool) {
    let status = if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    reporter.set_service_status(service_name, status).await;
    reporter.set_service_status("", status).await;
}

/// Whether the database answered the last health ping. The watcher sets it; a service refuses
/// work at once with UNAVAILABLE while it is down, instead of every call waiting on the pool.
#[derive(Clone, Debug)]
pub struct DatabaseStatus(Arc<AtomicBool>, Arc<std::sync::Mutex<String>>);

impl DatabaseStatus {
    /// A status that says "up" until the watcher finds otherwise.
    pub fn up() -> Self {
        Self(Arc::new(AtomicBool::new(true)), Arc::default())
    }

    pub fn is_up(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// Why the database is down, as the last ping found it.
    pub fn cause(&self) -> String {
        self.1.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

/// Keeps health in step with the database after start-up: pings it every second and reports
/// NOT_SERVING while it does not answer or refuses writes (calls then fail with UNAVAILABLE,
/// naming the cause), SERVING again once it takes writes; `status` follows. Runs until the
/// process stops (`background`).
pub fn watch_database(
    reporter: HealthReporter,
    service_name: &'static str,
    store: Arc<dyn documents_store::DocumentStore>,
    status: DatabaseStatus,
    background: &crate::shutdown::Background,
) {
    background.spawn(async move {
        let mut serving = true;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let cause = match tokio::time::timeout(Duration::from_secs(2), store.ping()).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("the database did not answer its ping within 2 s".to_string()),
            };
            let ok = cause.is_none();
            if let (Some(c), Ok(mut slot)) = (&cause, status.1.lock()) {
                if !serving && *slot != *c {
                    tracing::warn!(cause = %c, "database still unusable, for another reason");
                }
                slot.clone_from(c);
            }
            if ok != serving {
                serving = ok;
                status.0.store(ok, Ordering::Release);
                set_serving(&reporter, service_name, ok).await;
                match cause {
                    None => tracing::info!("database takes writes again: serving"),
                    Some(cause) => tracing::warn!(%cause, "database unusable: not serving"),
                }
            }
        }
    });
}

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

    fn call(&mut self, req: tonic::codegen::http::Request<ReqBody>) -> Self::Future {
        let place = match self.layer.counter(&req) {
            Some(counter) => {
                counter.touch();
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

/// Server reflection in both protocol versions: `grpc.reflection.v1` and `v1alpha` (which
/// grpcurl 1.8 speaks), listing exactly `services` (this server's own), health and reflection.
pub fn reflection_services(
    services: &[&str],
) -> anyhow::Result<(
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
)> {
    let builder = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc's error details (BadRequest, ErrorInfo, RetryInfo), so grpcurl and
            // other reflection clients can show the details of an error.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection");
        for s in services {
            b = b.with_service_name(*s);
        }
        b
    };
    let v1 = builder().build_v1().context("building reflection v1")?;
    let v1alpha = builder()
        .build_v1alpha()
        .context("building reflection v1alpha")?;
    Ok((v1, v1alpha))
}

/// A future that resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

pub type ShutdownFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs a server until `shutdown` resolves, then lets in-flight calls finish for at most `drain`.
/// `serve` receives the future that tells the server to stop accepting and drain.
pub async fn serve_with_drain<S, Fut>(
    serve: S,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) -> anyhow::Result<()>
where
    S: FnOnce(ShutdownFuture) -> Fut,
    Fut: Future<Output = Result<(), tonic::transport::Error>> + Send + 'static,
{
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(serve(Box::pin(async {
        let _ = stop_rx.await;
    })));
    tokio::select! {
        r = &mut server => return r.context("server task failed")?.context("server failed"),
        _ = shutdown => {},
    }
    tracing::info!(?drain, "shutting down: draining in-flight calls");
    let _ = stop_tx.send(());
    match tokio::time::timeout(drain, &mut server).await {
        Ok(r) => r.context("server task failed")?.context("server failed"),
        Err(_) => {
            tracing::warn!(?drain, "drain time exceeded, closing remaining calls");
            server.abort();
            Ok(())
        }
    }
}

/// The `healthcheck` subcommand of both binaries: prints SERVING and succeeds, or exits 1.
pub async fn healthcheck_command(
    listen_addr: &str,
    service_name: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> anyhow::Result<()> {
    if !healthcheck_with_tls(listen_addr, service_name, tls).await? {
        eprintln!("{service_name} is not SERVING on {listen_addr}");
        std::process::exit(1);
    }
    println!("SERVING");
    Ok(())
}

/// Calls `grpc.health.v1.Health/Check` for `service_name` on `listen_addr` and answers whether
/// it is SERVING. A wildcard listen address is probed on loopback.
pub async fn healthcheck(listen_addr: &str, service_name: &str) -> anyhow::Result<bool> {
    healthcheck_with_tls(listen_addr, service_name, None).await
}

/// [`healthcheck`] over TLS when `tls` is set; the server's certificate must be valid for
/// `localhost`, the name a service's own probe uses.
pub async fn healthcheck_with_tls(
    listen_addr: &str,
    service_name: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> anyhow::Result<bool> {
    let mut addr: SocketAddr = listen_addr
        .parse()
        .with_context(|| format!("listen address {listen_addr:?} is not host:port"))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let mut endpoint = tonic::transport::Endpoint::from_shared(match &tls {
        Some(_) => format!("https://{addr}"),
        None => format!("http://{addr}"),
    })?;
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls.domain_name("localhost"))?;
    }
    let channel = endpoint
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(3))
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let resp = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service_name.to_string(),
        })
        .await
        .with_context(|| format!("health check of {service_name:?} on {addr}"))?;
    Ok(resp.into_inner().status() == ServingStatus::Serving)
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
