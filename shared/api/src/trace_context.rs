//! W3C Trace Context: a call's `traceparent` and `tracestate` are taken from the caller (or a
//! new trace is started), held for the call's work in a task-local, and carried on to what the
//! work calls (the client adds them to every provider call). Exporting spans is the services'
//! business (`documents_kit::trace`).

use std::future::Future;

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

    /// The trace id as a number (for exporters).
    pub fn trace_id_u128(&self) -> u128 {
        self.trace_id
    }

    /// This span's id.
    pub fn span_id(&self) -> u64 {
        self.span_id
    }

    /// The parent span's id; 0 when this process started the trace.
    pub fn parent_id(&self) -> u64 {
        self.parent_id
    }

    /// The caller's sampling decision.
    pub fn sampled(&self) -> bool {
        self.sampled
    }

    /// The caller's `tracestate`, if any.
    pub fn state(&self) -> Option<&HeaderValue> {
        self.state.as_ref()
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
