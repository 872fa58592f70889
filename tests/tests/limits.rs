//! Limits: a flood beyond the per-connection concurrency limit is refused with
//! RESOURCE_EXHAUSTED instead of queueing; oversize messages and batches are refused whole; the
//! service stays healthy throughout.

use std::time::Duration;

use documents_api::{
    proto::documents::v1::{
        document_provider_client::DocumentProviderClient, GetDocumentRequest, GetDocumentsRequest,
    },
    proto::PROVIDER_SERVICE_NAME,
};
use e2e::{
    harness::{Db, Exchange, Provider, LISTING_PATH},
    record::Record,
};
use sample_exchange::Control;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_beyond_the_limit_is_shed() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    let p = Provider::start(
        db.url(),
        &ex.url,
        &[("PROVIDER_MAX_CONCURRENT_PER_CONNECTION", "4")],
    )
    .await;
    let mut slow = Control::default();
    slow.delay_ms.insert(LISTING_PATH.into(), 1000);
    ex.control(&slow).await;
    // One connection, forty calls that each need a one-second fill.
    let client = DocumentProviderClient::connect(p.url()).await.unwrap();
    let calls: Vec<_> = (0..40)
        .map(|i| {
            let mut c = client.clone();
            tokio::spawn(async move {
                c.get_document(GetDocumentRequest {
                    identifier: format!("S{i:04}"),
                    kind: String::new(),
                    options: None,
                })
                .await
                .map(|_| ())
                .map_err(|s| {
                    // The refusal says when trying again can help.
                    if s.code() == Code::ResourceExhausted {
                        assert!(documents_api::provider::retry_info(&s).is_some(), "{s:?}");
                    }
                    s.code()
                })
            })
        })
        .collect();
    let mut ok = 0;
    let mut shed = 0;
    for c in calls {
        match c.await.unwrap() {
            Ok(()) => ok += 1,
            Err(Code::ResourceExhausted) => shed += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(shed > 0, "nothing was shed ({ok} ok)");
    assert!(
        ok >= 4,
        "the calls within the limit are served ({ok} ok, {shed} shed)"
    );
    // And never more than the limit at once: each admitted call makes one upstream request at a
    // time, so the upstream never saw more than four in flight.
    let most = ex.stats().await.max_in_flight;
    assert!(
        (1..=4).contains(&most),
        "{most} upstream requests in flight at once: more calls than the limit were let through"
    );
    Record {
        class: "bad input".into(),
        case: "flood: 40 one-second calls at once on one connection (limit 4 in flight)".into(),
        observed: "the calls over the limit refused at once with RESOURCE_EXHAUSTED, the others served; service SERVING".into(),
        sent: 40,
        outcomes: [("OK".to_string(), ok), ("ResourceExhausted".to_string(), shed)].into(),
        test: "limits::a_flood_beyond_the_limit_is_shed".into(),
        ..Default::default()
    }
    .save();
    assert!(
        documents_kit::health::healthcheck(&p.addr, PROVIDER_SERVICE_NAME)
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn oversize_messages_and_batches_are_refused_whole() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    let p = Provider::start(
        db.url(),
        &ex.url,
        &[("PROVIDER_MAX_MESSAGE_BYTES", "65536")],
    )
    .await;
    let mut c = DocumentProviderClient::connect(p.url()).await.unwrap();
    // 100,000 identifiers: over the message limit.
    let huge: Vec<String> = (0..100_000)
        .map(|i| format!("S{:04}", i % 10_000))
        .collect();
    let err = c
        .get_documents(GetDocumentsRequest {
            identifiers: huge,
            kind: String::new(),
            options: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("too large"), "{}", err.message());
    Record {
        class: "bad input".into(),
        case: "oversize message: 100,000 identifiers over a 64 KiB message limit".into(),
        observed: format!("{:?}: \"{}\"; nothing fetched", err.code(), err.message()),
        sent: 1,
        outcomes: [(format!("{:?}", err.code()), 1)].into(),
        test: "limits::oversize_messages_and_batches_are_refused_whole".into(),
        ..Default::default()
    }
    .save();
    // 2,000 identifiers fit in the message but exceed the batch maximum of 1,000.
    let over: Vec<String> = (0..2_000).map(|i| format!("S{:04}", i % 10_000)).collect();
    let err = c
        .get_documents(GetDocumentsRequest {
            identifiers: over,
            kind: String::new(),
            options: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("maximum batch size of 1000"),
        "{}",
        err.message()
    );
    assert_eq!(
        ex.stats().await.total,
        0,
        "nothing was fetched for a refused batch"
    );
    assert!(
        documents_kit::health::healthcheck(&p.addr, PROVIDER_SERVICE_NAME)
            .await
            .unwrap()
    );
}

/// A call ended by the server's time cap or by the caller's own deadline answers
/// DEADLINE_EXCEEDED (tonic's server would say CANCELLED "Timeout expired"), seen by a raw client
/// that does no mapping of its own.
#[tokio::test]
async fn deadlines_and_the_time_cap_answer_deadline_exceeded() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    let p = Provider::start(db.url(), &ex.url, &[("PROVIDER_REQUEST_TIMEOUT_MS", "300")]).await;
    let mut slow = Control::default();
    slow.delay_ms.insert(LISTING_PATH.into(), 3000);
    ex.control(&slow).await;
    let mut c = DocumentProviderClient::connect(p.url()).await.unwrap();
    let call = |id: &str, deadline: Option<Duration>| {
        let mut req = tonic::Request::new(GetDocumentRequest {
            identifier: id.into(),
            ..Default::default()
        });
        if let Some(d) = deadline {
            req.set_timeout(d);
        }
        req
    };
    // The server's cap (no deadline from the caller).
    let e = c.get_document(call("GNP", None)).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    // The caller's deadline, shorter than the cap.
    let e = c
        .get_document(call("BHP", Some(Duration::from_millis(150))))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    // A stream too: it ends with DEADLINE_EXCEEDED at the cap or the caller's deadline.
    for deadline in [None, Some(Duration::from_millis(150))] {
        let mut req = tonic::Request::new(GetDocumentsRequest {
            identifiers: vec!["CBA".into(), "QUIET".into()],
            ..Default::default()
        });
        if let Some(d) = deadline {
            req.set_timeout(d);
        }
        let outcome = match c.stream_documents(req).await {
            Ok(answer) => {
                let mut stream = answer.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(_)) => continue,
                        Ok(None) => break Ok(()),
                        Err(e) => break Err(e),
                    }
                }
            }
            Err(e) => Err(e),
        };
        let e = outcome.expect_err("the stream outlived its deadline");
        // Ended by the deadline: the 3 s upstream would have let it end with its results.
        assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    }
}
