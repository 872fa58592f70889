//! Spans of the services' work, exported over OTLP/HTTP when the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set, at no cost when it is not (the
//! default): the call itself, fills, leases, stores, upstream requests. The trace context they
//! belong to is the API crate's [`TraceContext`].

use std::{future::Future, sync::OnceLock};

pub use documents_api::trace_context::TraceContext;
pub use opentelemetry::{trace::SpanKind, KeyValue};
use opentelemetry::{
    trace::{
        Span as _, SpanContext, Status, TraceContextExt as _, TraceState, Tracer as _,
        TracerProvider as _,
    },
    Context, SpanId, TraceFlags, TraceId,
};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

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
            s.set_status(Status::error(
                crate::secrets::scrub(&e.to_string()).into_owned(),
            ));
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
            self.0
                .set_status(Status::error(crate::secrets::scrub(message).into_owned()));
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
    let parent = if ctx.parent_id() == 0 {
        Context::new()
    } else {
        let state = ctx
            .state()
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from(ctx.trace_id_u128()),
            SpanId::from(ctx.parent_id()),
            if ctx.sampled() {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            },
            true,
            state,
        ))
    };
    // The span takes exactly the ids this call carries downstream: the SDK asks the ID
    // generator for them while it builds the span, on this thread.
    NEXT_IDS.set(Some((ctx.trace_id_u128(), ctx.span_id())));
    let span = tracer
        .span_builder(name)
        .with_kind(kind)
        .start_with_context(tracer, &parent);
    NEXT_IDS.set(None);
    Some(span)
}

thread_local! {
    /// The trace and span id of the span being started on this thread ([`CarriedIds`]).
    static NEXT_IDS: std::cell::Cell<Option<(u128, u64)>> = const { std::cell::Cell::new(None) };
}

/// Gives a span the ids of the [`TraceContext`] it records, so the exported spans carry exactly
/// the ids sent downstream (random ones for spans started by anything else).
#[derive(Debug, Default)]
struct CarriedIds(opentelemetry_sdk::trace::RandomIdGenerator);

impl opentelemetry_sdk::trace::IdGenerator for CarriedIds {
    fn new_trace_id(&self) -> TraceId {
        match NEXT_IDS.get() {
            Some((trace, _)) => TraceId::from(trace),
            None => self.0.new_trace_id(),
        }
    }

    fn new_span_id(&self) -> SpanId {
        match NEXT_IDS.get() {
            Some((_, span)) => SpanId::from(span),
            None => self.0.new_span_id(),
        }
    }
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
    crate::security::install_crypto_provider();
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
        .with_id_generator(CarriedIds::default())
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
}
