//! Distributed tracing by the W3C Trace Context standard: each call's `traceparent` and
//! `tracestate` are taken from the caller (or a new trace is started), held for the call's
//! work in a task-local, carried to the provider and to upstream HTTP requests, and put on the
//! call's log lines. Spans (the call itself, fills, leases, stores, upstream requests) are sent
//! over OTLP/HTTP when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is
//! set, and cost nothing when it is not (the default).

use std::{future::Future, sync::OnceLock};

pub use opentelemetry::{trace::SpanKind, KeyValue};
use opentelemetry::{
    trace::{
        Span as _, SpanContext, Status, TraceContextExt as _, TraceState, Tracer as _,
        TracerProvider as _,
    },
    Context, SpanId, TraceFlags, TraceId,
};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tonic::codegen::http::{HeaderMap, HeaderValue};

/// The trace position of a piece of work: the trace, this work's own span id, the span it
/// belongs to, and the caller's sampling decision and vendor state.
#[derive(Clone, Debug)]
pub struct TraceContext {
    trace_id: u128,
    span_id: u64,
    /// The parent span's id; 0 when this process started the trace.
    parent_id: u64,
    sampled: bool,
    state: Option<HeaderValue>,
}

/// A trace id as W3C writes it.
#[derive(Debug, Clone, Copy)]
pub struct TraceId32(u128);

impl std::fmt::Display for TraceId32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

tokio::task_local! {
    static CURRENT: TraceContext;
}

impl TraceContext {
    /// The context of a call: a child of the caller's `traceparent` when it sent a valid one
    /// (its `tracestate` kept), else the root of a new trace.
    pub fn for_call(headers: &HeaderMap) -> Self {
        let parent = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent);
        match parent {
            Some((trace_id, parent_id, flags)) => Self {
                trace_id,
                span_id: nonzero_u64(),
                parent_id,
                sampled: flags & 1 == 1,
                state: headers
                    .get("tracestate")
                    .filter(|v| v.len() <= 512 && v.to_str().is_ok())
                    .cloned(),
            },
            None => Self::root(),
        }
    }

    /// The root of a new trace.
    pub fn root() -> Self {
        Self {
            trace_id: nonzero_u128(),
            span_id: nonzero_u64(),
            parent_id: 0,
            sampled: true,
            state: None,
        }
    }

    /// The context of the work being done now (a call's, or a fill's), if any.
    pub fn current() -> Option<Self> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// A child span of this one, in the same trace.
    pub fn child(&self) -> Self {
        Self {
            span_id: nonzero_u64(),
            parent_id: self.span_id,
            ..self.clone()
        }
    }

    /// The trace id, shown as 32 lower-case hex digits (no allocation: it is on every call's
    /// log span).
    pub fn trace_id(&self) -> TraceId32 {
        TraceId32(self.trace_id)
    }

    /// `traceparent` naming this span as the parent of what it calls.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }

    /// Adds `traceparent` (and `tracestate`) for a request this span makes.
    pub fn inject(&self, headers: &mut HeaderMap) {
        if let Ok(v) = HeaderValue::from_str(&self.traceparent()) {
            headers.insert("traceparent", v);
        }
        if let Some(state) = &self.state {
            headers.insert("tracestate", state.clone());
        }
    }

    /// Runs `f` with this context current.
    pub fn scope_call<F: Future>(&self, f: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self.clone(), f)
    }

    /// Runs `f` (one poll of something) with this context current.
    pub fn scope_poll<R>(&self, f: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(self.clone(), f)
    }
}

/// Runs `work` as a child span `name` of the current context (or of a new trace), exported when
/// export is on with `attributes`; its error, if any, is the span's status.
pub async fn in_span<T, E: std::fmt::Display, F>(
    name: &'static str,
    kind: SpanKind,
    attributes: impl FnOnce() -> Vec<KeyValue>,
    work: F,
) -> Result<T, E>
where
    F: Future<Output = Result<T, E>>,
{
    let ctx = TraceContext::current()
        .map(|c| c.child())
        .unwrap_or_else(TraceContext::root);
    let mut span = start(&ctx, name, kind);
    if let Some(s) = span.as_mut() {
        s.set_attributes(attributes());
    }
    let result = ctx.scope_call(work).await;
    if let Some(mut s) = span {
        if let Err(e) = &result {
            s.set_status(Status::error(e.to_string()));
        }
        s.end();
    }
    result
}

/// A server span being recorded for export (only when export is on).
pub struct ExportedSpan(opentelemetry_sdk::trace::Span);

impl ExportedSpan {
    /// Ends the span with the call's gRPC status.
    pub fn end(mut self, code: tonic::Code, message: &str) {
        self.0
            .set_attribute(KeyValue::new("rpc.grpc.status_code", code as i64));
        if code != tonic::Code::Ok {
            self.0.set_status(Status::error(message.to_string()));
        }
        self.0.end();
    }
}

/// The server span of a call, when export is on.
pub fn server_span(ctx: &TraceContext, service: &str, method: &str) -> Option<ExportedSpan> {
    let mut span = start(ctx, "rpc", SpanKind::Server)?;
    span.update_name(format!("{service}/{method}"));
    span.set_attributes([
        KeyValue::new("rpc.system", "grpc"),
        KeyValue::new("rpc.service", service.to_string()),
        KeyValue::new("rpc.method", method.to_string()),
    ]);
    Some(ExportedSpan(span))
}

fn start(
    ctx: &TraceContext,
    name: &'static str,
    kind: SpanKind,
) -> Option<opentelemetry_sdk::trace::Span> {
    let tracer = TRACER.get()?;
    let parent = if ctx.parent_id == 0 {
        Context::new()
    } else {
        let state = ctx
            .state
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from(ctx.trace_id),
            SpanId::from(ctx.parent_id),
            if ctx.sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            },
            true,
            state,
        ))
    };
    Some(
        tracer
            .span_builder(name)
            .with_kind(kind)
            .with_trace_id(TraceId::from(ctx.trace_id))
            .with_span_id(SpanId::from(ctx.span_id))
            .start_with_context(tracer, &parent),
    )
}

static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Whether the standard variables ask for OTLP export (and `OTEL_SDK_DISABLED` does not
/// forbid it).
pub fn export_configured() -> bool {
    let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    (set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") || set("OTEL_EXPORTER_OTLP_ENDPOINT"))
        && !std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
}

/// Exports spans over OTLP/HTTP (protobuf) when [`export_configured`]: endpoint, headers,
/// timeout and compression come from the standard `OTEL_EXPORTER_OTLP_*` variables, the
/// service name from `OTEL_SERVICE_NAME` (default `service`). Keep the guard for the life of
/// the process: dropping it sends what is still queued.
pub fn init_export(service: &'static str) -> anyhow::Result<Option<ExportGuard>> {
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    if !export_configured() {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build()?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service);
    }
    let provider = SdkTracerProvider::builder()
        .with_resource(resource.build())
        .with_batch_exporter(exporter)
        .build();
    let _ = TRACER.set(provider.tracer(service));
    tracing::info!("exporting traces over OTLP");
    Ok(Some(ExportGuard(provider)))
}

/// Sends the spans still queued when dropped.
pub struct ExportGuard(SdkTracerProvider);

impl Drop for ExportGuard {
    fn drop(&mut self) {
        let _ = self.0.shutdown();
    }
}

/// `version-traceid-parentid-flags` in lower-case hex. Version 00 is exactly 55 characters;
/// later versions may append `-...`. Invalid (or all-zero ids): `None`, and the call starts a
/// new trace.
fn parse_traceparent(s: &str) -> Option<(u128, u64, u8)> {
    let b = s.trim().as_bytes();
    if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let version = u8::from_str_radix(lower_hex(&b[0..2])?, 16).ok()?;
    if version == 0xff || (version == 0 && b.len() != 55) || (b.len() > 55 && b[55] != b'-') {
        return None;
    }
    let trace_id = u128::from_str_radix(lower_hex(&b[3..35])?, 16).ok()?;
    let parent_id = u64::from_str_radix(lower_hex(&b[36..52])?, 16).ok()?;
    let flags = u8::from_str_radix(lower_hex(&b[53..55])?, 16).ok()?;
    (trace_id != 0 && parent_id != 0).then_some((trace_id, parent_id, flags))
}

/// The bytes as text if they are lower-case hex digits only (the standard allows no others).
fn lower_hex(b: &[u8]) -> Option<&str> {
    b.iter()
        .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        .then(|| std::str::from_utf8(b).ok())
        .flatten()
}

fn nonzero_u64() -> u64 {
    rand::random::<u64>().max(1)
}

fn nonzero_u128() -> u128 {
    rand::random::<u128>().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_follows_the_standard_variables() {
        // The only test that touches these variables (nextest runs each test in its own process).
        std::env::remove_var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        std::env::remove_var("OTEL_SDK_DISABLED");
        std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", "");
        assert!(!export_configured(), "off by default");
        std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        assert!(export_configured());
        std::env::set_var("OTEL_SDK_DISABLED", "TRUE");
        assert!(!export_configured(), "OTEL_SDK_DISABLED wins");
        std::env::remove_var("OTEL_EXPORTER_OTLP_ENDPOINT");
        std::env::remove_var("OTEL_SDK_DISABLED");
    }

    #[test]
    fn traceparent_is_read_as_the_standard_writes_it() {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        h.insert("tracestate", HeaderValue::from_static("congo=t61rcWkgMzE"));
        let c = TraceContext::for_call(&h);
        assert_eq!(c.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(c.parent_id, 0x00f067aa0ba902b7);
        assert!(c.sampled);
        let mut out = HeaderMap::new();
        c.inject(&mut out);
        let sent = out["traceparent"].to_str().unwrap();
        assert!(
            sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{sent}"
        );
        assert!(
            sent.ends_with("-01") && !sent.contains("00f067aa0ba902b7"),
            "{sent}"
        );
        assert_eq!(out["tracestate"], "congo=t61rcWkgMzE");
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
        // A later version may carry more fields.
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz")
                .is_some()
        );
    }
}
