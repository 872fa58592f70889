//! What both gRPC servers observe of every call, in one tower layer outside their services:
//! Prometheus metrics by service, method and code (calls started and handled, latency, in
//! flight), refused calls included; one WARN line per failed call, with its code and message;
//! `x-request-id` echoed to the caller; and the call's trace context (W3C `traceparent`, see
//! [`crate::trace`]) with a span that puts its trace id on every log line of the call.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Instant,
};

use http_body::{Body, Frame};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
};
use prost::Message;
use tonic::{
    codegen::http::{HeaderMap, HeaderValue, Request, Response},
    Code,
};

use crate::{metrics::SharedRegistry, trace::TraceContext};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    grpc_service: &'static str,
    grpc_method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    grpc_service: &'static str,
    grpc_method: &'static str,
    grpc_code: &'static str,
}

/// The metric families, registered once per process.
struct Families {
    started: Family<MethodLabels, Counter>,
    handled: Family<CodeLabels, Counter>,
    seconds: Family<MethodLabels, Histogram>,
    in_flight: Family<MethodLabels, Gauge>,
}

fn latency_histogram() -> Histogram {
    // 100 µs to about 90 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.5, 16,
    ))
}

static FAMILIES: OnceLock<Families> = OnceLock::new();

fn families(registry: &SharedRegistry) -> &'static Families {
    FAMILIES.get_or_init(|| {
        let f = Families {
            started: Family::default(),
            handled: Family::default(),
            seconds: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            in_flight: Family::default(),
        };
        let mut r = registry.lock().expect("metrics registry lock");
        r.register(
            "grpc_server_started",
            "gRPC calls started, by service and method (unknown methods as \"unknown\")",
            f.started.clone(),
        );
        r.register(
            "grpc_server_handled",
            "gRPC calls finished, by service, method and status code (refused calls included)",
            f.handled.clone(),
        );
        r.register(
            "grpc_server_handling_seconds",
            "gRPC call latency, from the request to the last byte of the answer",
            f.seconds.clone(),
        );
        r.register(
            "grpc_server_in_flight",
            "gRPC calls in progress",
            f.in_flight.clone(),
        );
        f
    })
}

/// gRPC's code names, as Prometheus dashboards for gRPC expect them.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// One method's metrics, looked up once at start so a call costs a map lookup and atomics.
struct MethodMetrics {
    service: &'static str,
    method: &'static str,
    started: Counter,
    in_flight: Gauge,
    seconds: Histogram,
    handled: [Counter; 17],
}

impl MethodMetrics {
    fn new(f: &Families, service: &'static str, method: &'static str) -> Self {
        let labels = MethodLabels {
            grpc_service: service,
            grpc_method: method,
        };
        Self {
            service,
            method,
            started: f.started.get_or_create(&labels).clone(),
            in_flight: f.in_flight.get_or_create(&labels).clone(),
            seconds: f.seconds.get_or_create(&labels).clone(),
            handled: CODE_NAMES.map(|code| {
                f.handled
                    .get_or_create(&CodeLabels {
                        grpc_service: service,
                        grpc_method: method,
                        grpc_code: code,
                    })
                    .clone()
            }),
        }
    }
}

/// The layer both servers put outermost among their own layers.
#[derive(Clone)]
pub struct ObserveLayer {
    methods: Arc<HashMap<String, Arc<MethodMetrics>>>,
    unknown: Arc<MethodMetrics>,
}

impl ObserveLayer {
    /// Observes calls to `services` (fully qualified names from `proto/`), health and
    /// reflection. Paths of other methods share the label `unknown`, so a caller cannot grow
    /// the metrics without bound.
    pub fn new(registry: &SharedRegistry, services: &[&str]) -> Self {
        let f = families(registry);
        let mut known: Vec<(String, String)> = vec![
            ("grpc.health.v1.Health".into(), "Check".into()),
            ("grpc.health.v1.Health".into(), "Watch".into()),
            (
                "grpc.reflection.v1.ServerReflection".into(),
                "ServerReflectionInfo".into(),
            ),
            (
                "grpc.reflection.v1alpha.ServerReflection".into(),
                "ServerReflectionInfo".into(),
            ),
        ];
        let fds = prost_types::FileDescriptorSet::decode(documents_api::proto::FILE_DESCRIPTOR_SET)
            .expect("the compiled descriptor set decodes");
        for file in fds.file {
            for svc in &file.service {
                let full = format!("{}.{}", file.package(), svc.name());
                if services.contains(&full.as_str()) {
                    for m in &svc.method {
                        known.push((full.clone(), m.name().to_string()));
                    }
                }
            }
        }
        let methods = known
            .into_iter()
            .map(|(service, method)| {
                let path = format!("/{service}/{method}");
                // A bounded set, made once per process: the labels live as long as it does.
                let service: &'static str = Box::leak(service.into_boxed_str());
                let method: &'static str = Box::leak(method.into_boxed_str());
                (path, Arc::new(MethodMetrics::new(f, service, method)))
            })
            .collect();
        Self {
            methods: Arc::new(methods),
            unknown: Arc::new(MethodMetrics::new(f, "unknown", "unknown")),
        }
    }
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    layer: ObserveLayer,
}

/// The request ID a caller sent in `x-request-id` (1 to 64 visible ASCII characters), if any.
pub fn request_id(headers: &HeaderMap) -> Option<&HeaderValue> {
    headers.get("x-request-id").filter(|v| {
        !v.is_empty() && v.len() <= 64 && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
    })
}

/// [`request_id`] as text (empty when there is none).
pub fn request_id_text(headers: &HeaderMap) -> &str {
    request_id(headers)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for Observe<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>> + Send,
    S::Future: Send + 'static,
    ResBody: Body + Unpin + Send + 'static,
{
    type Response = Response<ObservedBody<ResBody>>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let metrics = self
            .layer
            .methods
            .get(req.uri().path())
            .unwrap_or(&self.layer.unknown)
            .clone();
        metrics.started.inc();
        metrics.in_flight.inc();
        let echo = request_id(req.headers()).cloned();
        let trace = TraceContext::for_call(req.headers());
        let span = tracing::info_span!(
            "rpc",
            rpc = metrics.method,
            trace_id = %trace.trace_id(),
            request_id = echo.as_ref().and_then(|v| v.to_str().ok()).unwrap_or_default(),
        );
        let exported = crate::trace::server_span(&trace, metrics.service, metrics.method);
        let call = Call {
            metrics,
            started: Instant::now(),
            span: span.clone(),
            exported,
            done: false,
        };
        let fut = {
            let _entered = span.enter();
            trace.scope_call(self.inner.call(req))
        };
        Box::pin(async move {
            let mut res = tracing::Instrument::instrument(fut, span.clone()).await?;
            if let Some(id) = echo {
                res.headers_mut().insert("x-request-id", id);
            }
            let mut call = Some(call);
            // A trailers-only answer (every refusal) has its status in the headers.
            if let Some(status) = tonic::Status::from_header_map(res.headers()) {
                if let Some(c) = call.take() {
                    c.finish(status.code(), status.message());
                }
            }
            Ok(res.map(|inner| ObservedBody {
                inner,
                call,
                trace,
                span,
            }))
        })
    }
}

/// A call being answered: its metrics are finished once, by the status in the answer's
/// headers or trailers, or as CANCELLED if the answer is dropped before it ends.
struct Call {
    metrics: Arc<MethodMetrics>,
    started: Instant,
    span: tracing::Span,
    exported: Option<crate::trace::ExportedSpan>,
    done: bool,
}

impl Call {
    fn finish(mut self, code: Code, message: &str) {
        self.record(code, message);
    }

    fn record(&mut self, code: Code, message: &str) {
        self.done = true;
        let m = &self.metrics;
        m.in_flight.dec();
        let elapsed = self.started.elapsed();
        m.seconds.observe(elapsed.as_secs_f64());
        let code_name = CODE_NAMES[(code as usize).min(16)];
        m.handled[(code as usize).min(16)].inc();
        if let Some(span) = self.exported.take() {
            span.end(code, message);
        }
        if code != Code::Ok {
            let _entered = self.span.enter();
            tracing::warn!(
                service = m.service,
                method = m.method,
                code = code_name,
                error = %message,
                latency_ms = elapsed.as_secs_f64() * 1000.0,
                "call failed"
            );
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.done {
            self.record(Code::Cancelled, "the answer was dropped before it ended");
        }
    }
}

/// The answer's body, watched for the status in its trailers.
pub struct ObservedBody<B> {
    inner: B,
    call: Option<Call>,
    trace: TraceContext,
    span: tracing::Span,
}

impl<B> Body for ObservedBody<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let _entered = this.span.enter();
        // A streaming answer is produced as its body is polled: in the call's trace context.
        let polled = this
            .trace
            .scope_poll(|| Pin::new(&mut this.inner).poll_frame(cx));
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    if let Some(call) = this.call.take() {
                        match tonic::Status::from_header_map(trailers) {
                            Some(s) => call.finish(s.code(), s.message()),
                            None => call.finish(Code::Unknown, "answer ended without a status"),
                        }
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(call) = this.call.take() {
                    call.finish(Code::Internal, "the answer's body failed");
                }
            }
            Poll::Ready(None) => {
                if let Some(call) = this.call.take() {
                    call.finish(Code::Unknown, "answer ended without a status");
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
