//! consumer-service end to end: sample exchange, provider and consumer as three processes on
//! one database; the consumer driven over gRPC and through its one-shot CLI.

use std::time::Duration;

use chrono::Datelike;
use documents_api::proto::{
    consumer::v1::{GetStoredRequest, ProcessTickersRequest, TickerReport},
    documents::v1::{self as docs, document_provider_server},
};
use e2e::{
    harness::{consumer_command, free_addr, ConsumerProc, Db, Exchange, Provider, PDF_PATH},
    on_both_databases,
};
use sample_exchange::Control;
use tonic::Code;

fn request(tickers: &[&str]) -> ProcessTickersRequest {
    ProcessTickersRequest {
        tickers: tickers.iter().map(|t| t.to_string()).collect(),
        ..Default::default()
    }
}

fn keys(items: &[documents_api::proto::consumer::v1::AnnouncementItem]) -> Vec<String> {
    let mut k: Vec<String> = items.iter().map(|i| i.document_key.clone()).collect();
    k.sort();
    k
}

fn outcome(r: &TickerReport) -> docs::Outcome {
    r.provider_result
        .as_ref()
        .expect("provider result")
        .outcome()
}

/// The sample exchange's key of GNP's yearly annual report ("Appendix 4E and Annual Report")
/// and preliminary final report, for `year`.
fn gnp_annual_keys(year: i32) -> [String; 2] {
    let yy = year.rem_euclid(100);
    [format!("00000{yy:02}07"), format!("00000{yy:02}08")]
}

async fn round_trip_downloads_once(db: Db) {
    let ex = Exchange::start();
    let provider = Provider::start(db.url(), &ex.url, &[]).await;
    let consumer = ConsumerProc::start(db.url(), &provider.url(), &[]).await;
    let mut client = consumer.client().await;

    let first = client
        .process_tickers(request(&["ASX:GNP"]))
        .await
        .unwrap()
        .into_inner();
    let r = &first.reports[0];
    assert!(r.status.is_none(), "{r:?}");
    assert_eq!(outcome(r), docs::Outcome::Created);
    assert_eq!(r.version_read, 1);
    assert!(!r.newer_version_read);
    let year = chrono::Utc::now().year();
    let expected = gnp_annual_keys(year);
    assert_eq!(
        keys(&r.matched),
        expected.to_vec(),
        "annual report and preliminary final report match"
    );
    assert_eq!(keys(&r.downloaded), expected.to_vec());
    assert!(r.skipped.is_empty() && r.failed.is_empty());
    for k in &expected {
        let hits = ex
            .stats()
            .await
            .by_request
            .iter()
            .filter(|(p, _)| p.starts_with(PDF_PATH) && p.ends_with(k.as_str()))
            .map(|(_, n)| *n)
            .sum::<u64>();
        assert_eq!(hits, 1, "PDF {k} fetched once");
    }

    // What is stored: the provider's document, the consumer's own, and the PDFs.
    let store = db.store().await;
    let own = store.get(&r.download_document_id).await.unwrap().unwrap();
    assert_eq!(own.key, e2e::harness::key("ASX:GNP:announcement_download"));
    assert_eq!(own.content_json["source_document_id"], r.document_id);
    assert_eq!(own.content_json["downloaded"].as_array().unwrap().len(), 2);
    let attachments = store.attachments_of(&own.id).await.unwrap();
    assert_eq!(attachments.len(), 2);
    for a in &attachments {
        let bytes = store.attachment_data(&a.hash).await.unwrap().unwrap();
        assert!(bytes.starts_with(b"%PDF-"));
    }

    // A second round within the window: provider hit, nothing downloaded again.
    let second = client
        .process_tickers(request(&["ASX:GNP"]))
        .await
        .unwrap()
        .into_inner();
    let r2 = &second.reports[0];
    assert!(r2.status.is_none(), "{r2:?}");
    assert_eq!(outcome(r2), docs::Outcome::Hit);
    assert!(r2.downloaded.is_empty());
    assert_eq!(keys(&r2.skipped), expected.to_vec());
    assert_eq!(ex.count(PDF_PATH).await, 2, "no PDF fetched twice");
    assert_eq!(r2.download_document_id, r.download_document_id);

    let stored = client
        .get_stored(GetStoredRequest {
            ticker: "gnp".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.ticker, "ASX:GNP");
    assert_eq!(stored.announcements.unwrap().document_id, r.document_id);
    assert_eq!(
        stored.downloads.unwrap().version,
        own.version + 1,
        "the second round wrote its document once"
    );
    assert_eq!(stored.attachment_hashes.len(), 2);
}

async fn one_failure_never_stops_the_others(db: Db) {
    let ex = Exchange::start();
    let provider = Provider::start(db.url(), &ex.url, &[]).await;
    let consumer = ConsumerProc::start(db.url(), &provider.url(), &[]).await;
    let mut client = consumer.client().await;
    let resp = client
        .process_tickers(request(&["ASX:NOPE", "ASX:BHP", "bad!", "ASX:CBA"]))
        .await
        .unwrap()
        .into_inner();
    let codes: Vec<Option<i32>> = resp
        .reports
        .iter()
        .map(|r| r.status.as_ref().map(|e| e.code))
        .collect();
    assert_eq!(
        codes,
        vec![
            Some(Code::NotFound as i32),
            None,
            Some(Code::InvalidArgument as i32),
            None
        ],
        "{resp:?}"
    );
    assert_eq!(resp.reports[1].ticker, "ASX:BHP");
    assert!(!resp.reports[3].downloaded.is_empty());
}

/// Each PDF is fetched once per ticker however the request names it and however many rounds run
/// at once: spellings of one ticker share one processing, concurrent rounds one at a time. The
/// sample exchange's request counters are the judge, and the download document is written once
/// per round that ran.
async fn each_pdf_is_fetched_once(db: Db) {
    let ex = Exchange::start();
    let provider = Provider::start(db.url(), &ex.url, &[]).await;
    let consumer = ConsumerProc::start(db.url(), &provider.url(), &[]).await;
    let pdf_requests = |ex: &Exchange| {
        let ex = ex.url.clone();
        async move {
            let stats: serde_json::Value = e2e::harness::http()
                .get(format!("{ex}/_stats"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            stats["by_request"]
                .as_object()
                .unwrap()
                .iter()
                .filter(|(p, _)| p.starts_with(PDF_PATH))
                .map(|(p, n)| (p.clone(), n.as_u64().unwrap()))
                .collect::<Vec<_>>()
        }
    };

    // One request, three spellings of one ticker.
    let spellings = ["ASX:CBA", "cba", "ASX.CBA"];
    let answer = consumer
        .client()
        .await
        .process_tickers(request(&spellings))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.reports.len(), 3);
    for (r, asked) in answer.reports.iter().zip(spellings) {
        assert_eq!(r.ticker, asked, "each position answers as it was asked");
        assert!(r.status.is_none(), "{r:?}");
        assert_eq!(keys(&r.downloaded), keys(&answer.reports[0].downloaded));
    }
    let fetched = pdf_requests(&ex).await;
    assert!(!fetched.is_empty());
    assert!(fetched.iter().all(|(_, n)| *n == 1), "{fetched:?}");
    let store = db.store().await;
    let own = store
        .get_by_source(&e2e::harness::key("ASX:CBA:announcement_download"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(own.content_json["complete"], true);
    assert_eq!(
        own.content_json["downloaded"].as_array().unwrap().len(),
        fetched.len(),
        "each PDF listed once"
    );

    // Three concurrent rounds of another ticker.
    let rounds = (0..3).map(|_| {
        let consumer = &consumer;
        async move {
            consumer
                .client()
                .await
                .process_tickers(request(&["ASX:BHP"]))
                .await
                .unwrap()
                .into_inner()
                .reports
                .remove(0)
        }
    });
    let reports = futures::future::join_all(rounds).await;
    for r in &reports {
        assert!(r.status.is_none(), "{r:?}");
    }
    let downloaded: usize = reports.iter().map(|r| r.downloaded.len()).sum();
    let matched = reports[0].matched.len();
    assert!(matched > 0);
    assert_eq!(
        downloaded, matched,
        "one round downloads, the others find them stored"
    );
    let fetched = pdf_requests(&ex).await;
    assert!(fetched.iter().all(|(_, n)| *n == 1), "{fetched:?}");

    // Two consumer processes on one database, one ticker at once: the round lease in the
    // database makes the second find what the first stored.
    let other = ConsumerProc::start(db.url(), &provider.url(), &[]).await;
    let (a, b) = tokio::join!(
        async {
            consumer
                .client()
                .await
                .process_tickers(request(&["ASX:GNP"]))
                .await
                .unwrap()
                .into_inner()
                .reports
                .remove(0)
        },
        async {
            other
                .client()
                .await
                .process_tickers(request(&["ASX:GNP"]))
                .await
                .unwrap()
                .into_inner()
                .reports
                .remove(0)
        }
    );
    assert!(a.status.is_none() && b.status.is_none(), "{a:?} {b:?}");
    assert_eq!(a.downloaded.len() + b.downloaded.len(), a.matched.len());
    let fetched = pdf_requests(&ex).await;
    assert!(fetched.iter().all(|(_, n)| *n == 1), "{fetched:?}");
}

/// A round's lease fences its writes. Consumer A is paused (SIGSTOP) in the middle of its
/// round, past its lease; consumer B takes the round over and finishes it; A resumes. A's late
/// writes are refused and its report says it lost the round, the round's document is B's, and
/// each PDF was fetched once, but the one A was downloading when it was paused (twice at most).
async fn a_paused_round_loses_its_lease_and_writes_nothing(db: Db) {
    let ex = Exchange::start();
    let provider = Provider::start(db.url(), &ex.url, &[("ANNOUNCEMENT_YEARS", "2")]).await;
    // The announcements document exists before either round asks for it.
    documents_api::DocumentProvider::get_document(
        &provider.client(),
        "ASX:GNP",
        &documents_api::DocumentOptions::new(),
    )
    .await
    .unwrap();
    let year = chrono::Utc::now().year();
    let [first, second] = gnp_annual_keys(year);
    let [third, fourth] = gnp_annual_keys(year - 1);
    let pdf = |k: &str| format!("{PDF_PATH}?display=pdf&idsId={k}");
    // The second PDF is slow: A is paused while downloading it.
    ex.control(&Control {
        delay_ms: [(pdf(&second), 2_000)].into(),
        ..Default::default()
    })
    .await;
    let one_at_a_time = [("CONSUMER_DOWNLOAD_CONCURRENCY", "1")];
    let a = ConsumerProc::start(db.url(), &provider.url(), &one_at_a_time).await;
    let b = ConsumerProc::start(db.url(), &provider.url(), &one_at_a_time).await;
    let mut a_client = a.client().await;
    let a_round = tokio::spawn(async move {
        a_client
            .process_tickers(request(&["ASX:GNP"]))
            .await
            .unwrap()
            .into_inner()
            .reports
            .remove(0)
    });
    ex.wait_for_requests(&pdf(&second), 1).await;
    a.proc.signal("STOP");
    // B waits for A's lease to expire (A renews no more), then takes the round over.
    let b_report = b
        .client()
        .await
        .process_tickers(request(&["ASX:GNP"]))
        .await
        .unwrap()
        .into_inner()
        .reports
        .remove(0);
    assert!(b_report.status.is_none(), "{b_report:?}");
    assert_eq!(
        keys(&b_report.skipped),
        vec![first.clone()],
        "A's checkpoint is kept"
    );
    let mut rest = vec![second.clone(), third.clone(), fourth.clone()];
    rest.sort();
    assert_eq!(keys(&b_report.downloaded), rest);
    let store = db.store().await;
    let own_sid = "ASX:GNP:announcement_download";
    let finished = store
        .get_by_source(&e2e::harness::key(own_sid))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(finished.content_json["complete"], true);

    a.proc.signal("CONT");
    let a_report = a_round.await.unwrap();
    let status = a_report.status.clone().expect("A's round failed");
    assert_eq!(status.code, Code::Aborted as i32, "{a_report:?}");
    assert!(status.message.contains("round lease lost"), "{a_report:?}");
    // A wrote nothing after it resumed: the round's document is still B's.
    let after = store
        .get_by_source(&e2e::harness::key(own_sid))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (after.version, &after.content_json),
        (finished.version, &finished.content_json)
    );
    let attachments = store.attachments_of(&after.id).await.unwrap();
    let mut names: Vec<String> = attachments.into_iter().map(|a| a.name).collect();
    names.sort();
    let mut all = vec![first.clone(), second.clone(), third.clone(), fourth.clone()];
    all.sort();
    assert_eq!(names, all);
    let stats = ex.stats().await;
    for (key, most) in [(&first, 1), (&second, 2), (&third, 1), (&fourth, 1)] {
        let n = stats.by_request.get(&pdf(key)).copied().unwrap_or(0);
        assert!(
            (1..=most).contains(&n),
            "{key} fetched {n} times: {:?}",
            stats.by_request
        );
    }
    assert!(
        a.proc.logs().contains("round lease taken over")
            || a.proc.logs().contains("round lease lost"),
        "{}",
        a.proc.logs()
    );
    e2e::harness::assert_invariants(&db).await;
}

on_both_databases!(
    round_trip_downloads_once,
    one_failure_never_stops_the_others,
    each_pdf_is_fetched_once,
    a_paused_round_loses_its_lease_and_writes_nothing
);

#[tokio::test]
async fn bad_pdfs_fail_alone() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    let provider = Provider::start(db.url(), &ex.url, &[("ANNOUNCEMENT_YEARS", "2")]).await;
    let consumer = ConsumerProc::start(
        db.url(),
        &provider.url(),
        &[
            ("CONSUMER_DOWNLOAD_TIMEOUT_MS", "500"),
            ("CONSUMER_DOWNLOAD_MAX_BYTES", "1048576"),
        ],
    )
    .await;
    let year = chrono::Utc::now().year();
    let [slow, huge] = gnp_annual_keys(year);
    let [not_pdf, good] = gnp_annual_keys(year - 1);
    let pdf = |k: &str| format!("{PDF_PATH}?display=pdf&idsId={k}");
    let mut control = Control::default();
    control.delay_ms.insert(pdf(&slow), 3000);
    control.oversize.push(pdf(&huge));
    control.not_pdf.push(pdf(&not_pdf));
    ex.control(&control).await;

    let mut client = consumer.client().await;
    let r = client
        .process_tickers(request(&["ASX:GNP"]))
        .await
        .unwrap()
        .into_inner()
        .reports
        .remove(0);
    assert!(r.status.is_none(), "{r:?}");
    assert_eq!(r.matched.len(), 4);
    assert_eq!(keys(&r.downloaded), vec![good.clone()]);
    let reason = |k: &str| {
        r.failed
            .iter()
            .find(|i| i.document_key == k)
            .map(|i| i.error.clone())
            .unwrap_or_default()
    };
    assert!(reason(&slow).contains("timed out"), "{:?}", r.failed);
    assert!(reason(&huge).contains("too large"), "{:?}", r.failed);
    assert!(reason(&not_pdf).contains("not a PDF"), "{:?}", r.failed);
    let own = db
        .store()
        .await
        .get(&r.download_document_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(own.content_json["failed"].as_array().unwrap().len(), 3);

    // Once the PDFs are fixed, only the failed ones are fetched.
    ex.control(&Control::default()).await;
    let r = client
        .process_tickers(request(&["ASX:GNP"]))
        .await
        .unwrap()
        .into_inner()
        .reports
        .remove(0);
    assert_eq!(r.downloaded.len(), 3, "{r:?}");
    assert_eq!(keys(&r.skipped), vec![good]);
}

#[tokio::test]
async fn provider_down_then_back_and_failover() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    let addr = free_addr();
    let consumer = ConsumerProc::start(
        db.url(),
        &format!("http://{addr}"),
        &[("PROVIDER_RETRIES", "2"), ("PROVIDER_TIMEOUT_MS", "2000")],
    )
    .await;
    let mut client = consumer.client().await;
    let r = client
        .process_tickers(request(&["ASX:GNP"]))
        .await
        .unwrap()
        .into_inner()
        .reports
        .remove(0);
    let e = r.status.expect("provider is down");
    assert_eq!(e.code, Code::Unavailable as i32, "{}", e.message);
    // The message says where the consumer tried and why it failed.
    assert!(
        e.message
            .contains(&format!("cannot reach the provider at http://{addr}"))
            && e.message.contains("refused"),
        "{}",
        e.message
    );
    assert!(!e.details.is_empty(), "ErrorInfo rides along: {e:?}");

    let provider = Provider::start_at(&addr, db.url(), &ex.url, &[]).await;
    let r = client
        .process_tickers(request(&["ASX:GNP"]))
        .await
        .unwrap()
        .into_inner()
        .reports
        .remove(0);
    assert!(r.status.is_none(), "{r:?}");
    drop(provider);

    // Two providers, one stopped: every round still succeeds.
    let a = Provider::start(db.url(), &ex.url, &[]).await;
    let b = Provider::start(db.url(), &ex.url, &[]).await;
    let consumer2 = ConsumerProc::start(db.url(), &format!("{},{}", a.url(), b.url()), &[]).await;
    let mut client2 = consumer2.client().await;
    for _ in 0..3 {
        let r = client2
            .process_tickers(request(&["ASX:BHP"]))
            .await
            .unwrap()
            .into_inner()
            .reports
            .remove(0);
        assert!(r.status.is_none(), "{r:?}");
    }
    drop(a);
    for i in 0..6 {
        let req = ProcessTickersRequest {
            force_refresh: true,
            ..request(&["ASX:BHP"])
        };
        let r = client2
            .process_tickers(req)
            .await
            .unwrap()
            .into_inner()
            .reports
            .remove(0);
        assert!(
            r.status.is_none(),
            "round {i} with one provider down: {r:?}"
        );
    }
}

/// A provider in front of the real one that changes the database or the answer between the
/// answer and the consumer's read, as a concurrent refresh or a confused provider would.
#[derive(Clone)]
struct Meddler {
    real: docs::document_provider_client::DocumentProviderClient<tonic::transport::Channel>,
    mode: &'static str,
}

#[tonic::async_trait]
impl document_provider_server::DocumentProvider for Meddler {
    type StreamDocumentsStream =
        futures::stream::BoxStream<'static, Result<docs::DocumentResult, tonic::Status>>;

    async fn stream_documents(
        &self,
        _: tonic::Request<docs::GetDocumentsRequest>,
    ) -> Result<tonic::Response<Self::StreamDocumentsStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not used"))
    }

    type WatchDocumentsStream =
        futures::stream::BoxStream<'static, Result<docs::DocumentEvent, tonic::Status>>;

    async fn watch_documents(
        &self,
        _: tonic::Request<docs::WatchDocumentsRequest>,
    ) -> Result<tonic::Response<Self::WatchDocumentsStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not used"))
    }

    async fn get_document(
        &self,
        request: tonic::Request<docs::GetDocumentRequest>,
    ) -> Result<tonic::Response<docs::DocumentResult>, tonic::Status> {
        let mut real = self.real.clone();
        let req = request.into_inner();
        let mut answer = real.get_document(req.clone()).await?.into_inner();
        match self.mode {
            "refresh" => {
                // Someone forces a refresh after the answer left the provider.
                let forced = docs::GetDocumentRequest {
                    options: Some(docs::DocumentOptions {
                        cache_hours: Some(0),
                        force_refresh: true,
                        ..Default::default()
                    }),
                    ..req
                };
                real.get_document(forced).await?;
            }
            "ahead" => answer.version += 5,
            "gone" => answer.document_id = "no-such-document".into(),
            _ => {}
        }
        Ok(tonic::Response::new(answer))
    }

    async fn get_documents(
        &self,
        _: tonic::Request<docs::GetDocumentsRequest>,
    ) -> Result<tonic::Response<docs::GetDocumentsResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not used"))
    }

    async fn ensure_documents(
        &self,
        _: tonic::Request<docs::EnsureDocumentsRequest>,
    ) -> Result<tonic::Response<docs::EnsureDocumentsResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not used"))
    }

    async fn invalidate_documents(
        &self,
        _: tonic::Request<docs::InvalidateDocumentsRequest>,
    ) -> Result<tonic::Response<docs::InvalidateDocumentsResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not used"))
    }
}

async fn start_meddler(real_url: String, mode: &'static str) -> String {
    let real = docs::document_provider_client::DocumentProviderClient::connect(real_url)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(document_provider_server::DocumentProviderServer::new(
                Meddler { real, mode },
            ))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn document_moved_on_between_answer_and_read() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    let provider = Provider::start(db.url(), &ex.url, &[]).await;
    for (mode, expect) in [
        ("refresh", None),
        ("ahead", Some(Code::FailedPrecondition)),
        ("gone", Some(Code::NotFound)),
    ] {
        let url = start_meddler(provider.url(), mode).await;
        let consumer = ConsumerProc::start(db.url(), &url, &[]).await;
        let r = consumer
            .client()
            .await
            .process_tickers(request(&["ASX:GNP"]))
            .await
            .unwrap()
            .into_inner()
            .reports
            .remove(0);
        match expect {
            None => {
                assert!(r.status.is_none(), "{r:?}");
                let answered = r.provider_result.as_ref().unwrap().version;
                assert!(r.newer_version_read, "{r:?}");
                assert_eq!(r.version_read, answered + 1);
            }
            Some(code) => {
                let e = r
                    .status
                    .as_ref()
                    .unwrap_or_else(|| panic!("{mode}: must fail: {r:?}"));
                assert_eq!(e.code, code as i32, "{mode}: {}", e.message);
                assert!(r.download_document_id.is_empty(), "{mode}: nothing written");
            }
        }
    }
}

#[tokio::test]
async fn one_shot_cli_prints_reports() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    let provider = Provider::start(db.url(), &ex.url, &[]).await;
    let mut cmd = consumer_command(db.url(), &provider.url(), &[]);
    cmd.args(["process", "ASX:GNP", "BHP", "--json"]);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["ticker"], "ASX:GNP");
    assert_eq!(lines[1]["outcome"], "OUTCOME_CREATED");
    assert_eq!(lines[1]["downloaded"].as_array().unwrap().len(), 2);

    let mut cmd = consumer_command(db.url(), &provider.url(), &[]);
    cmd.args(["process", "ASX:NOPE"]);
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || cmd.output()),
    )
    .await
    .unwrap()
    .unwrap()
    .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("FAILED"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Provider and consumer (with `consumer_env`) on SQLite, the exchange's listing 5 s slow.
async fn stack_with_a_slow_listing(
    consumer_env: &[(&str, &str)],
) -> (Db, Exchange, Provider, ConsumerProc) {
    let db = Db::sqlite();
    let ex = Exchange::start();
    let provider = Provider::start(db.url(), &ex.url, &[]).await;
    let consumer = ConsumerProc::start(db.url(), &provider.url(), consumer_env).await;
    ex.control(&e2e::harness::delayed(e2e::harness::LISTING_PATH, 5000))
        .await;
    (db, ex, provider, consumer)
}

#[tokio::test]
async fn the_callers_deadline_bounds_the_provider_call() {
    let (_db, _ex, _provider, consumer) =
        stack_with_a_slow_listing(&[("PROVIDER_TIMEOUT_MS", "30000")]).await;
    let mut req = tonic::Request::new(request(&["ASX:GNP"]));
    req.set_timeout(Duration::from_millis(1000));
    let started = std::time::Instant::now();
    let resp = consumer
        .client()
        .await
        .process_tickers(req)
        .await
        .expect("the consumer answers in time");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    let e = resp.into_inner().reports[0]
        .status
        .clone()
        .expect("the provider call ran out of time");
    assert_eq!(e.code, Code::DeadlineExceeded as i32, "{}", e.message);
}

/// The consumer's server takes gzip-compressed requests and answers compressed when asked.
#[tokio::test]
async fn the_consumer_speaks_gzip() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    let provider = Provider::start(db.url(), &ex.url, &[]).await;
    let consumer = ConsumerProc::start(db.url(), &provider.url(), &[]).await;
    let gzip = tonic::codec::CompressionEncoding::Gzip;
    let mut client = consumer
        .client()
        .await
        .send_compressed(gzip)
        .accept_compressed(gzip);
    let r = client
        .process_tickers(request(&["ASX:GNP"]))
        .await
        .expect("a gzip request is accepted")
        .into_inner();
    assert!(r.reports[0].status.is_none(), "{r:?}");
}

/// The consumer's own time cap ends a call that set no deadline with DEADLINE_EXCEEDED (not
/// tonic's CANCELLED).
#[tokio::test]
async fn the_consumers_time_cap_answers_deadline_exceeded() {
    let (_db, _ex, _provider, consumer) =
        stack_with_a_slow_listing(&[("CONSUMER_REQUEST_TIMEOUT_MS", "400")]).await;
    let e = consumer
        .client()
        .await
        .process_tickers(request(&["ASX:GNP"]))
        .await
        .expect_err("the cap ends the call");
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
}

#[tokio::test]
async fn request_id_reaches_the_providers_log() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    let provider = Provider::start(db.url(), &ex.url, &[]).await;
    let consumer = ConsumerProc::start(db.url(), &provider.url(), &[]).await;
    let mut req = tonic::Request::new(request(&["ASX:GNP"]));
    req.metadata_mut()
        .insert("x-request-id", "round-7f3a".parse().unwrap());
    let r = consumer
        .client()
        .await
        .process_tickers(req)
        .await
        .unwrap()
        .into_inner();
    assert!(r.reports[0].status.is_none());
    // Logs are written by a background thread: give it a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (p, c) = (provider.proc.logs(), consumer.proc.logs());
        let in_provider = p
            .lines()
            .any(|l| l.contains("request_id=round-7f3a") && l.contains("ASX:GNP"));
        let in_consumer = c
            .lines()
            .any(|l| l.contains("request_id=round-7f3a") && l.contains("ticker processed"));
        if in_provider && in_consumer {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "request ID missing:\nprovider:\n{p}\nconsumer:\n{c}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM: the consumer drains, stops its background loops (the database watch), closes its
/// pool and exits 0.
#[tokio::test]
async fn sigterm_stops_the_consumers_loops_and_closes_its_pool() {
    let db = Db::sqlite();
    let mut consumer = e2e::harness::ConsumerProc::start(db.url(), "http://127.0.0.1:9", &[]).await;
    consumer.proc.signal("TERM");
    let status = consumer
        .proc
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("the consumer exits");
    assert!(status.success(), "{status:?}");
    let logs = consumer.proc.logs();
    assert!(
        logs.contains("background tasks stopped, database pool closed"),
        "{logs}"
    );
    assert!(
        !logs.contains("drain time exceeded"),
        "nothing to drain: {logs}"
    );
}
