//! Hostile requests against the running provider and consumer: each gets the expected status
//! and a message that names the field and the rule, nothing is written, and the services stay
//! healthy (garbage bytes on the gRPC port included).

use std::io::Write;

use documents_api::proto::{
    consumer::v1::{GetStoredRequest, ProcessTickersRequest},
    documents::v1::{
        document_provider_client::DocumentProviderClient, DocumentOptions, GetDocumentRequest,
        GetDocumentsRequest,
    },
    CONSUMER_SERVICE_NAME, PROVIDER_SERVICE_NAME,
};
use e2e::{
    harness::{assert_invariants, ConsumerProc, Db, Exchange, Provider},
    record::Record,
};
use tonic::Code;
use tonic_types::StatusExt;

#[tokio::test]
async fn hostile_requests_get_clear_errors_and_change_nothing() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    let p = Provider::start(db.url(), &ex.url, &[]).await;
    let mut c = DocumentProviderClient::connect(p.url()).await.unwrap();
    let long = "X".repeat(10_000);
    // (case, request, code, words the message must have, field google.rpc.BadRequest names)
    let cases: Vec<(&str, GetDocumentRequest, Code, &str, &str)> = vec![
        (
            "empty",
            req(""),
            Code::InvalidArgument,
            "empty",
            "identifier",
        ),
        (
            "10,000 characters",
            req(&long),
            Code::InvalidArgument,
            "too long",
            "identifier",
        ),
        (
            "21-character code",
            req("ASX:ABCDEFGHIJKLMNOPQRSTU"),
            Code::InvalidArgument,
            "at most 20",
            "identifier",
        ),
        (
            "unicode",
            req("ÄÖÜ"),
            Code::InvalidArgument,
            "[A-Z0-9.]",
            "identifier",
        ),
        (
            "control character",
            req("GN\u{0}P"),
            Code::InvalidArgument,
            "[A-Z0-9.]",
            "identifier",
        ),
        (
            "SQL-looking",
            req("'; DROP TABLE documents; --"),
            Code::InvalidArgument,
            "[A-Z0-9.]",
            "identifier",
        ),
        (
            "unknown exchange",
            req("MOON:GNP"),
            Code::InvalidArgument,
            "unknown exchange",
            "identifier",
        ),
        (
            "missing fields",
            GetDocumentRequest::default(),
            Code::InvalidArgument,
            "empty",
            "identifier",
        ),
        (
            "unknown kind",
            GetDocumentRequest {
                kind: "weird".into(),
                ..req("GNP")
            },
            Code::InvalidArgument,
            "kind: \"weird\" is not a known kind: expected one of announcement, dividends, market_data",
            "kind",
        ),
        (
            "a kind this service does not provide",
            GetDocumentRequest {
                kind: "announcement_download".into(),
                ..req("GNP")
            },
            Code::InvalidArgument,
            "is not provided by this service: expected one of announcement, dividends, market_data",
            "kind",
        ),
        (
            "only dots",
            req("ASX:..."),
            Code::InvalidArgument,
            "misplaced dot",
            "identifier",
        ),
        (
            "two dots in a row",
            req("ASX..GNP"),
            Code::InvalidArgument,
            "misplaced dot",
            "identifier",
        ),
        (
            "trailing dot",
            req("GNP."),
            Code::InvalidArgument,
            "misplaced dot",
            "identifier",
        ),
        (
            "missing exchange",
            req(":GNP"),
            Code::InvalidArgument,
            "no exchange before the colon",
            "identifier",
        ),
        (
            "absurd cache hours",
            GetDocumentRequest {
                options: Some(DocumentOptions {
                    cache_hours: Some(4_000_000_000),
                    ..Default::default()
                }),
                ..req("GNP")
            },
            Code::InvalidArgument,
            "options.cache_hours",
            "options.cache_hours",
        ),
        (
            "absurd stale hours",
            GetDocumentRequest {
                options: Some(DocumentOptions {
                    stale_if_error_hours: Some(u32::MAX),
                    ..Default::default()
                }),
                ..req("GNP")
            },
            Code::InvalidArgument,
            "options.stale_if_error_hours",
            "options.stale_if_error_hours",
        ),
    ];
    let mut answered: Vec<(String, Code, String)> = Vec::new();
    for (name, request, code, needle, field) in cases {
        let err = c.get_document(request).await.expect_err(name);
        // google.rpc.BadRequest names the field; the message starts with it, said once.
        let bad = err
            .get_details_bad_request()
            .unwrap_or_else(|| panic!("{name}: no BadRequest in {err:?}"));
        assert_eq!(bad.field_violations[0].field, field, "{name}");
        assert!(
            err.message().starts_with(&format!("{field}: ")),
            "{name}: {:?}",
            err.message()
        );
        assert!(
            !err.message().contains("identifier: identifier"),
            "{name}: {:?}",
            err.message()
        );
        if field == "identifier" {
            let info = err.get_details_error_info().expect("ErrorInfo");
            assert_eq!(
                (info.reason.as_str(), info.domain.as_str()),
                ("INVALID_IDENTIFIER", "documents.v1")
            );
        }
        answered.push((
            format!("provider: {name} identifier or field"),
            err.code(),
            err.message().into(),
        ));
        assert_eq!(err.code(), code, "{name}: {err:?}");
        assert!(
            err.message().contains(needle),
            "{name}: {:?} lacks {needle:?}",
            err.message()
        );
        assert!(err.message().len() < 400, "{name}: message is bounded");
    }
    let batch: Vec<String> = (0..100_000)
        .map(|i| format!("S{:04}", i % 10_000))
        .collect();
    let err = c
        .get_documents(GetDocumentsRequest {
            identifiers: batch,
            kind: String::new(),
            options: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.get_details_bad_request().unwrap().field_violations[0].field,
        "identifiers"
    );
    assert!(
        err.message().contains("identifiers: 100000 identifiers"),
        "{}",
        err.message()
    );
    answered.push((
        "provider: 100,000-identifier batch".into(),
        err.code(),
        err.message().into(),
    ));

    // Garbage on the gRPC port: the connection is dropped, the service carries on.
    let addr = p.addr.clone();
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let _ = s.write_all(b"\x00\xffGET / HTTP/1.1\r\n\r\n\x16\x03\x01 garbage garbage");
    })
    .await
    .unwrap();

    let consumer = ConsumerProc::start(db.url(), &p.url(), &[("CONSUMER_MAX_TICKERS", "10")]).await;
    let mut cc = consumer.client().await;
    let err = cc
        .process_tickers(ProcessTickersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("tickers:"), "{}", err.message());
    assert_eq!(
        err.get_details_bad_request().unwrap().field_violations[0].field,
        "tickers"
    );
    answered.push((
        "consumer: no tickers".into(),
        err.code(),
        err.message().into(),
    ));
    let many = ProcessTickersRequest {
        tickers: vec!["GNP".into(); 11],
        ..Default::default()
    };
    let err = cc.process_tickers(many).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("maximum of 10"), "{}", err.message());
    answered.push((
        "consumer: more tickers than allowed".into(),
        err.code(),
        err.message().into(),
    ));
    let err = cc
        .get_stored(GetStoredRequest {
            ticker: "bad!".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("ticker:"), "{}", err.message());
    assert_eq!(
        err.get_details_bad_request().unwrap().field_violations[0].field,
        "ticker"
    );
    answered.push((
        "consumer: malformed ticker".into(),
        err.code(),
        err.message().into(),
    ));

    assert_eq!(
        ex.stats().await.total,
        0,
        "no bad request reached the upstream"
    );
    let store = db.store().await;
    assert!(store
        .lookup(&[e2e::harness::key("ASX:GNP:announcement")])
        .await
        .unwrap()
        .heads
        .is_empty());
    let rows = assert_invariants(&db).await;

    // In a batch, the bad identifier's google.rpc.Status names its position.
    let batch = c
        .get_documents(GetDocumentsRequest {
            identifiers: vec!["GNP".into(), "ASX..GNP".into()],
            kind: "Announcement".into(),
            options: None,
        })
        .await
        .expect("kinds are case-insensitive, like identifiers")
        .into_inner();
    let status = batch.results[1]
        .status
        .clone()
        .expect("status of the bad one");
    let item = documents_api::ItemError::from(status);
    assert_eq!(item.code, Code::InvalidArgument);
    assert_eq!(item.field.as_deref(), Some("identifiers[1]"));
    assert_eq!(item.reason.as_deref(), Some("INVALID_IDENTIFIER"));
    assert!(batch.results[0].status.is_none(), "{batch:?}");
    assert_eq!(batch.results[0].kind, "announcement");
    assert!(
        documents_kit::health::healthcheck(&p.addr, PROVIDER_SERVICE_NAME)
            .await
            .unwrap()
    );
    assert!(
        documents_kit::health::healthcheck(&consumer.addr, CONSUMER_SERVICE_NAME)
            .await
            .unwrap()
    );

    answered.push((
        "provider: garbage bytes on the gRPC port".into(),
        Code::Ok,
        "connection dropped by the server".into(),
    ));
    for (i, (case, code, message)) in answered.into_iter().enumerate() {
        let outcome = if code == Code::Ok {
            "connection dropped".to_string()
        } else {
            format!("{code:?}")
        };
        Record {
            class: "bad input".into(),
            observed: format!(
                "{outcome}: \"{message}\"; nothing written, no upstream request, both services SERVING after"
            ),
            case,
            sent: 1,
            outcomes: [(outcome, 1)].into(),
            recovery_ms: None,
            rows_checked: Some(rows),
            figures: Default::default(),
            test: format!("bad_input::hostile_requests_get_clear_errors_and_change_nothing::{i:02}"),
        }
        .save();
    }
}

fn req(identifier: &str) -> GetDocumentRequest {
    GetDocumentRequest {
        identifier: identifier.into(),
        kind: String::new(),
        options: None,
    }
}
