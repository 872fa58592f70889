//! Distributed traces: a caller's W3C `traceparent` is carried consumer -> provider -> upstream
//! HTTP, the trace id is on the services' log lines, and with the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` set both services send their spans (the calls, the fill, its
//! lease and store, the upstream requests) to an OTLP/HTTP receiver this test runs itself.
//! Without the variable nothing is exported, and propagation works all the same.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{body::Bytes, routing::post, Router};
use documents_api::proto::{
    consumer::v1::ProcessTickersRequest,
    documents::v1::{document_provider_client::DocumentProviderClient, GetDocumentRequest},
};
use e2e::harness::{ConsumerProc, Db, Exchange, Provider};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

/// One exported span, as the receiver got it.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
}

/// An OTLP/HTTP receiver (protobuf bodies on `/v1/traces`) on a free port.
async fn receiver() -> (String, Arc<Mutex<Vec<Got>>>) {
    let spans: Arc<Mutex<Vec<Got>>> = Arc::default();
    let store = spans.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let store = store.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body).expect("an OTLP trace export");
                let mut got = store.lock().unwrap();
                for rs in req.resource_spans {
                    let service = rs
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|a| a.key == "service.name")
                        .and_then(|a| a.value.as_ref())
                        .map(|v| format!("{:?}", v.value))
                        .unwrap_or_default();
                    for ss in rs.scope_spans {
                        for s in ss.spans {
                            got.push(Got {
                                service: service.clone(),
                                name: s.name,
                                trace_id: hex(&s.trace_id),
                                span_id: hex(&s.span_id),
                                parent: hex(&s.parent_span_id),
                            });
                        }
                    }
                }
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), spans)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn a_callers_trace_crosses_both_services_and_reaches_the_receiver() {
    let (endpoint, spans) = receiver().await;
    let db = Db::sqlite();
    let ex = Exchange::start();
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        // Export each batch within 100 ms (the default waits 5 s).
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let p = Provider::start(db.url(), &ex.url, &otel).await;
    let consumer = ConsumerProc::start(db.url(), &p.url(), &otel).await;
    let mut request = tonic::Request::new(ProcessTickersRequest {
        tickers: vec!["ASX:GNP".into()],
        ..Default::default()
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE}-{CALLER_SPAN}-01").parse().unwrap(),
    );
    request
        .metadata_mut()
        .insert("tracestate", "vendor=opaque".parse().unwrap());
    let report = consumer
        .client()
        .await
        .process_tickers(request)
        .await
        .unwrap()
        .into_inner()
        .reports
        .remove(0);
    assert!(report.status.is_none(), "{report:?}");

    // Every span of the round, in the caller's trace.
    let wanted = [
        ("consumer-service", "consumer.v1.Consumer/ProcessTickers"),
        (
            "consumer-service",
            "documents.v1.DocumentProvider/GetDocument",
        ),
        (
            "provider-service",
            "documents.v1.DocumentProvider/GetDocument",
        ),
        ("provider-service", "fill"),
        ("provider-service", "lease"),
        ("provider-service", "store"),
        ("provider-service", "upstream GET"),
    ];
    let mut got = Vec::new();
    for _ in 0..200 {
        got = spans.lock().unwrap().clone();
        let all = wanted.iter().all(|(svc, name)| {
            got.iter()
                .any(|s| s.service.contains(svc) && s.name == *name && s.trace_id == TRACE)
        });
        if all {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let find = |svc: &str, name: &str| {
        got.iter()
            .find(|s| s.service.contains(svc) && s.name == name && s.trace_id == TRACE)
            .unwrap_or_else(|| panic!("no {svc} span {name:?} in trace {TRACE}: {got:#?}"))
            .clone()
    };
    // The tree: caller -> consumer call -> consumer's client call -> provider call -> fill ->
    // lease, store, upstream GET.
    let server = find("consumer-service", "consumer.v1.Consumer/ProcessTickers");
    assert_eq!(server.parent, CALLER_SPAN);
    let client = find(
        "consumer-service",
        "documents.v1.DocumentProvider/GetDocument",
    );
    assert_eq!(client.parent, server.span_id);
    let provider = find(
        "provider-service",
        "documents.v1.DocumentProvider/GetDocument",
    );
    assert_eq!(provider.parent, client.span_id);
    let fill = find("provider-service", "fill");
    assert_eq!(fill.parent, provider.span_id);
    for child in ["lease", "store"] {
        assert_eq!(
            find("provider-service", child).parent,
            fill.span_id,
            "{child}"
        );
    }
    let upstream = find("provider-service", "upstream GET");
    assert_eq!(upstream.parent, fill.span_id);

    // The upstream got the trace, naming the upstream span as its parent; the PDF downloads
    // carry it too.
    let log = ex.stats().await.log;
    let traced: Vec<_> = log
        .iter()
        .filter_map(|l| l.traceparent.as_deref())
        .collect();
    assert!(
        traced.contains(&format!("00-{TRACE}-{}-01", upstream.span_id).as_str()),
        "{traced:#?}"
    );
    assert!(
        log.iter()
            .all(|l| l.traceparent.as_deref().is_some_and(|t| t.contains(TRACE))),
        "every upstream request of the round is in the trace: {log:#?}"
    );
    // The trace id is on the services' log lines of the call.
    assert!(p.proc.logs().contains(TRACE), "{}", p.proc.logs());
    assert!(consumer.proc.logs().contains(TRACE));
}

#[tokio::test]
async fn without_the_variables_nothing_is_exported_and_the_trace_still_travels() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    let p = Provider::start(db.url(), &ex.url, &[]).await;
    let mut c = DocumentProviderClient::connect(p.url()).await.unwrap();
    let mut request = tonic::Request::new(GetDocumentRequest {
        identifier: "ASX:BHP".into(),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE}-{CALLER_SPAN}-01").parse().unwrap(),
    );
    c.get_document(request).await.unwrap();
    let log = ex.stats().await.log;
    assert!(!log.is_empty());
    for l in &log {
        let t = l.traceparent.as_deref().unwrap_or_default();
        assert!(
            t.starts_with(&format!("00-{TRACE}-")) && !t.contains(CALLER_SPAN),
            "the upstream request is a child in the caller's trace: {t:?}"
        );
    }
    let logs = p.proc.logs();
    assert!(logs.contains(TRACE), "{logs}");
    assert!(!logs.contains("exporting traces"), "{logs}");
}
