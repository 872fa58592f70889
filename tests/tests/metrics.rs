//! The Prometheus endpoints count a scripted round exactly.

use documents_api::{
    proto::consumer::v1::ProcessTickersRequest, DocumentOptions, DocumentProvider, Outcome,
};
use e2e::harness::{
    age_document, forced_status, metric_value, scrape_metrics, ConsumerProc, Db, Exchange,
    Provider, LISTING_PATH, MARKIT_PATH,
};

#[tokio::test]
async fn provider_metrics_count_a_scripted_round() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    let p = Provider::start(
        db.url(),
        &ex.url,
        &[
            ("PROVIDER_METRICS_ADDR", e2e::harness::ANY_PORT),
            ("PROVIDER_NEGATIVE_CACHE_MS", "0"),
        ],
    )
    .await;
    let metrics = p.proc.listening("metrics endpoint listening");
    let c = p.client();
    let created = c
        .get_document("ASX:GNP", &DocumentOptions::new())
        .await
        .unwrap();
    assert_eq!(created.outcome, Outcome::Created);
    for _ in 0..3 {
        assert_eq!(
            c.get_document("ASX:GNP", &DocumentOptions::new())
                .await
                .unwrap()
                .outcome,
            Outcome::Hit
        );
    }
    // Upstream down and the document stale: one stale answer, counted apart from the hits.
    let mut down = forced_status(LISTING_PATH, 503);
    down.status.insert(MARKIT_PATH.into(), 503);
    ex.control(&down).await;
    age_document(&db, "ASX:GNP:announcement", 30).await;
    let stale = c
        .get_document("ASX:GNP", &DocumentOptions::new().stale_if_error_hours(48))
        .await
        .unwrap();
    assert_eq!(stale.outcome, Outcome::Stale);

    let text = scrape_metrics(&metrics).await;
    let answers = |outcome: &str| {
        metric_value(
            &text,
            &format!("documents_answers_total{{rpc=\"GetDocument\",outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(answers("created"), Some(1.0), "{text}");
    assert_eq!(answers("hit"), Some(3.0), "{text}");
    assert_eq!(answers("stale"), Some(1.0), "{text}");
    assert_eq!(answers("refreshed"), None, "{text}");
    let host = ex.url.trim_start_matches("http://");
    assert_eq!(
        metric_value(
            &text,
            &format!("documents_source_requests_total{{host=\"{host}\",status=\"200\"}}")
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            &format!("documents_source_requests_total{{host=\"{host}\",status=\"503\"}}")
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            "documents_fill_seconds_count{kind=\"announcement\",result=\"ok\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            "documents_fill_seconds_count{kind=\"announcement\",result=\"error\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        metric_value(&text, "documents_db_connections{state=\"idle\"}").is_some(),
        "{text}"
    );
}

#[tokio::test]
async fn consumer_metrics_count_downloads() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    let p = Provider::start(db.url(), &ex.url, &[]).await;
    let consumer = ConsumerProc::start(
        db.url(),
        &p.url(),
        &[("CONSUMER_METRICS_ADDR", e2e::harness::ANY_PORT)],
    )
    .await;
    let metrics = consumer.proc.listening("metrics endpoint listening");
    let mut client = consumer.client().await;
    for _ in 0..2 {
        client
            .process_tickers(ProcessTickersRequest {
                tickers: vec!["ASX:GNP".into(), "bad!".into()],
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let text = scrape_metrics(&metrics).await;
    assert_eq!(
        metric_value(
            &text,
            "grpc_server_handled_total{grpc_service=\"consumer.v1.Consumer\",grpc_method=\"ProcessTickers\",grpc_code=\"OK\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "consumer_tickers_total{result=\"ok\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "consumer_tickers_total{result=\"error\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "consumer_downloads_total{result=\"downloaded\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "consumer_downloads_total{result=\"skipped\"}"),
        Some(2.0),
        "{text}"
    );
}

/// Per-RPC metrics on the provider, refusals included, in the classic text format that
/// `promtool check metrics` accepts; OpenMetrics when the scraper asks for it; process metrics;
/// one WARN line per failed call; `x-request-id` echoed.
#[tokio::test]
async fn per_rpc_metrics_count_refused_calls_and_pass_promtool() {
    use documents_api::proto::documents::v1::{
        document_provider_client::DocumentProviderClient, GetDocumentRequest, GetDocumentsRequest,
    };
    let db = Db::sqlite();
    let ex = Exchange::start();
    let p = Provider::start(
        db.url(),
        &ex.url,
        &[
            ("PROVIDER_METRICS_ADDR", e2e::harness::ANY_PORT),
            ("PROVIDER_AUTH_TOKEN", "s3cret"),
            ("PROVIDER_MAX_BATCH_SIZE", "2"),
        ],
    )
    .await;
    let metrics = p.proc.listening("metrics endpoint listening");
    let mut c = DocumentProviderClient::connect(p.url()).await.unwrap();
    let call = |identifier: &str, kind: &str, token: bool| {
        let mut r = tonic::Request::new(GetDocumentRequest {
            identifier: identifier.into(),
            kind: kind.into(),
            options: None,
        });
        if token {
            r.metadata_mut()
                .insert("authorization", "Bearer s3cret".parse().unwrap());
        }
        r.metadata_mut()
            .insert("x-request-id", "req-42".parse().unwrap());
        r
    };
    // Refused: no token; an unknown kind; a batch over the limit.
    let e = c.get_document(call("GNP", "", false)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert_eq!(e.metadata().get("x-request-id").unwrap(), "req-42");
    let e = c
        .get_document(call("GNP", "weird", true))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let mut big = tonic::Request::new(GetDocumentsRequest {
        identifiers: vec!["A".into(), "B".into(), "C".into()],
        ..Default::default()
    });
    big.metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    let e = c.get_documents(big).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    // Answered twice; the request ID comes back in the answer's metadata.
    for _ in 0..2 {
        let ok = c.get_document(call("GNP", "", true)).await.unwrap();
        assert_eq!(ok.metadata().get("x-request-id").unwrap(), "req-42");
    }
    // A method the server does not have: counted under "unknown", not under its name.
    let channel = tonic::transport::Endpoint::from_shared(p.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = tonic::client::Grpc::new(channel);
    raw.ready().await.unwrap();
    // Without a token the caller learns nothing, not even that the method is missing.
    let made_up = |token: bool| {
        let mut r = tonic::Request::new(());
        if token {
            r.metadata_mut()
                .insert("authorization", "Bearer s3cret".parse().unwrap());
        }
        r
    };
    let e = raw
        .unary::<(), (), _>(
            made_up(false),
            tonic::codegen::http::uri::PathAndQuery::from_static("/made.Up/Method"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    raw.ready().await.unwrap();
    let e = raw
        .unary::<(), (), _>(
            made_up(true),
            tonic::codegen::http::uri::PathAndQuery::from_static("/made.Up/Method"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented);

    let text = scrape_metrics(&metrics).await;
    let handled = |method: &str, code: &str| {
        metric_value(
            &text,
            &format!("grpc_server_handled_total{{grpc_service=\"documents.v1.DocumentProvider\",grpc_method=\"{method}\",grpc_code=\"{code}\"}}"),
        )
    };
    assert_eq!(
        handled("GetDocument", "Unauthenticated"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        handled("GetDocument", "InvalidArgument"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        handled("GetDocuments", "InvalidArgument"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(handled("GetDocument", "OK"), Some(2.0), "{text}");
    let labels = "grpc_service=\"documents.v1.DocumentProvider\",grpc_method=\"GetDocument\"";
    assert_eq!(
        metric_value(&text, &format!("grpc_server_started_total{{{labels}}}")),
        Some(4.0)
    );
    assert_eq!(
        metric_value(
            &text,
            &format!("grpc_server_handling_seconds_count{{{labels}}}")
        ),
        Some(4.0)
    );
    assert_eq!(
        metric_value(&text, &format!("grpc_server_in_flight{{{labels}}}")),
        Some(0.0)
    );
    for code in ["Unimplemented", "Unauthenticated"] {
        assert_eq!(
            metric_value(
                &text,
                &format!("grpc_server_handled_total{{grpc_service=\"unknown\",grpc_method=\"unknown\",grpc_code=\"{code}\"}}")
            ),
            Some(1.0),
            "{text}"
        );
    }
    assert!(!text.contains("made.Up"), "{text}");
    // The running build, as an info series with the version the binary was built as.
    let build = text
        .lines()
        .find(|l| l.starts_with("build_info{"))
        .unwrap_or_else(|| panic!("no build_info: {text}"));
    assert!(
        build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
            && build.contains("revision=\"")
            && build.ends_with(" 1"),
        "{build}"
    );
    for (series, at_least) in [
        ("process_resident_memory_bytes", 1e6),
        ("process_open_fds", 3.0),
        ("process_threads", 1.0),
        ("process_cpu_seconds_total", 0.0),
    ] {
        let v = metric_value(&text, series).unwrap_or_else(|| panic!("{series}: {text}"));
        assert!(v >= at_least, "{series} = {v}");
    }

    // The classic format passes Prometheus' own checker.
    let promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is not on PATH: install Debian's prometheus package (scripts/test does)");
    use std::io::Write;
    promtool
        .stdin
        .as_ref()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // OpenMetrics when the scraper asks for it (as Prometheus does).
    let om = e2e::harness::http()
        .get(format!("http://{metrics}/metrics"))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .send()
        .await
        .unwrap();
    assert!(om.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    assert!(om.text().await.unwrap().ends_with("# EOF\n"));

    // Each refused call is logged once, at WARN, with its code.
    let logs = p.proc.logs();
    let failed: Vec<&str> = logs.lines().filter(|l| l.contains("call failed")).collect();
    assert_eq!(
        failed
            .iter()
            .filter(|l| l.contains("Unauthenticated"))
            .count(),
        2,
        "{logs}"
    );
    assert_eq!(
        failed.len(),
        5,
        "five failed calls, five lines: {failed:#?}"
    );
    assert!(failed.iter().all(|l| l.contains("WARN")), "{failed:#?}");
}
