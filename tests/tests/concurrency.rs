//! Concurrency, proved with processes: one fill per document across provider replicas, leases
//! that survive a killed or paused filler, callers that give up alone, bounded fills,
//! stale-if-error, negative caching and streaming.

use std::time::{Duration, Instant};

use documents_api::{
    proto::documents::v1::{
        document_provider_client::DocumentProviderClient, DocumentOptions as PbOptions,
        GetDocumentsRequest,
    },
    DocumentOptions, DocumentProvider, Outcome,
};
use e2e::{
    harness::{
        age_document, assert_invariants, delayed, forced_status, Db, Exchange, Provider,
        LISTING_PATH, MARKIT_PATH,
    },
    on_both_databases,
    record::Record,
};
use futures::StreamExt;
use sample_exchange::Control;
use tonic::Code;

async fn one_fill_across_two_replicas(db: Db) {
    let ex = Exchange::start();
    let a = Provider::start(db.url(), &ex.url, &[]).await;
    let b = Provider::start(db.url(), &ex.url, &[]).await;
    let first = a
        .client()
        .get_document("ASX:GNP", &DocumentOptions::new())
        .await
        .unwrap();
    age_document(&db, "ASX:GNP:announcement", 48).await;
    ex.reset().await;
    // Slow the upstream a little so all callers arrive while the fill runs.
    ex.control(&delayed(LISTING_PATH, 300)).await;

    let (ca, cb) = (a.client(), b.client());
    let calls: Vec<_> = (0..200)
        .map(|i| {
            let c = if i % 2 == 0 { ca.clone() } else { cb.clone() };
            tokio::spawn(async move { c.get_document("ASX:GNP", &DocumentOptions::new()).await })
        })
        .collect();
    let results: Vec<_> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    assert_eq!(
        ex.count(LISTING_PATH).await,
        1,
        "one upstream request for 200 callers on two replicas"
    );
    for r in &results {
        assert_eq!(
            (r.document_id.as_str(), r.version),
            (first.document_id.as_str(), 2),
            "{r:?}"
        );
    }
    assert!(results.iter().any(|r| r.outcome == Outcome::Refreshed));
    assert_eq!(
        db.store()
            .await
            .lookup(&[e2e::harness::key("ASX:GNP:announcement")])
            .await
            .unwrap()
            .heads
            .len(),
        1
    );
    assert_invariants(&db).await;
}

/// Two replicas A and B with fill leases of `lease_ms`, and A fetching `ticker` from a listing
/// slowed by `delay_ms` (its call runs in the returned task).
async fn replica_a_fetching(
    db: &Db,
    lease_ms: &str,
    delay_ms: u64,
    ticker: &'static str,
) -> (
    Exchange,
    Provider,
    Provider,
    tokio::task::JoinHandle<Result<documents_api::DocumentResult, tonic::Status>>,
) {
    let ex = Exchange::start();
    let lease = [("PROVIDER_FILL_LEASE_MS", lease_ms)];
    let a = Provider::start(db.url(), &ex.url, &lease).await;
    let b = Provider::start(db.url(), &ex.url, &lease).await;
    ex.control(&delayed(LISTING_PATH, delay_ms)).await;
    let ca = a.client();
    let call = tokio::spawn(async move { ca.get_document(ticker, &DocumentOptions::new()).await });
    ex.wait_for_requests(LISTING_PATH, 1).await;
    (ex, a, b, call)
}

async fn killed_filler_is_taken_over(db: Db) {
    // A is fetching; kill it mid-fill.
    let (ex, a, b, doomed) = replica_a_fetching(&db, "1000", 5_000, "ASX:BHP").await;
    a.proc.signal("KILL");
    let cut_code = format!("{:?}", doomed.await.unwrap().unwrap_err().code());
    let store = db.store().await;
    assert!(
        store
            .get_by_source(&e2e::harness::key("ASX:BHP:announcement"))
            .await
            .unwrap()
            .is_none(),
        "no partial document"
    );

    ex.control(&Control::default()).await;
    let r = b
        .client()
        .get_document("ASX:BHP", &DocumentOptions::new())
        .await
        .unwrap();
    assert_eq!((r.version, r.outcome), (1, Outcome::Created));
    let lease = store
        .lease(&e2e::harness::key("ASX:BHP:announcement"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lease.token, 2, "B took the lease over");
    assert!(!lease.held, "B released it");
    let rows = assert_invariants(&db).await;
    let engine = db.engine();
    Record {
        class: "process".into(),
        case: format!("replica SIGKILLed while holding a fill lease ({engine})"),
        observed: "its caller got an error; nothing written; the other replica took the lease over (token 2) after its 1 s expiry and created version 1".into(),
        sent: 2,
        outcomes: [(cut_code, 1), ("OK".to_string(), 1)].into(),
        rows_checked: Some(rows),
        test: format!("concurrency::killed_filler_is_taken_over::{engine}"),
        ..Default::default()
    }
    .save();
}

async fn paused_filler_cannot_overwrite(db: Db) {
    let ex = Exchange::start();
    let lease = [("PROVIDER_FILL_LEASE_MS", "1000")];
    let a = Provider::start(db.url(), &ex.url, &lease).await;
    let b = Provider::start(db.url(), &ex.url, &lease).await;
    let v1 = b
        .client()
        .get_document("ASX:CBA", &DocumentOptions::new())
        .await
        .unwrap();
    ex.reset().await;
    ex.control(&delayed(LISTING_PATH, 800)).await;

    // A claims the lease and starts fetching; then it is frozen past its lease.
    let ca = a.client();
    let paused = tokio::spawn(async move {
        ca.get_document("ASX:CBA", &DocumentOptions::new().cache_hours(0))
            .await
    });
    ex.wait_for_requests(LISTING_PATH, 1).await;
    a.proc.signal("STOP");
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // B takes over after the lease expired and writes version 2.
    let v2 = b
        .client()
        .get_document("ASX:CBA", &DocumentOptions::new().cache_hours(0))
        .await
        .unwrap();
    assert_eq!(v2.version, 2);
    let store = db.store().await;
    let after_b = store.get(&v1.document_id).await.unwrap().unwrap();

    // A wakes up, finishes its fetch, and must not write over B's version.
    a.proc.signal("CONT");
    let late = paused.await.unwrap().expect("A answers with B's result");
    assert_eq!(late.version, 2, "{late:?}");
    let final_doc = store.get(&v1.document_id).await.unwrap().unwrap();
    assert_eq!(
        final_doc.version, 2,
        "versions only increase, and A's stale write was refused"
    );
    assert_eq!(final_doc, after_b, "the content is B's, the newest fill");
    // A learns of the takeover from its lease renewal or from its fenced write, whichever
    // comes first after it wakes; the fence alone is tested in `a_stale_token_cannot_write`.
    let logs = a.proc.logs();
    assert!(
        logs.contains("fill lease lost") || logs.contains("fill lease taken over"),
        "{logs}"
    );
    let rows = assert_invariants(&db).await;
    let engine = db.engine();
    Record {
        class: "process".into(),
        case: format!("replica paused (SIGSTOP) past its lease mid-fill, then resumed ({engine})"),
        observed: "the other replica took over and wrote version 2; the resumed one's write was fenced off and it answered version 2".into(),
        sent: 2,
        outcomes: [("OK".to_string(), 2)].into(),
        rows_checked: Some(rows),
        test: format!("concurrency::paused_filler_cannot_overwrite::{engine}"),
        ..Default::default()
    }
    .save();
}

on_both_databases!(
    one_fill_across_two_replicas,
    killed_filler_is_taken_over,
    paused_filler_cannot_overwrite,
    a_holder_reclaims_its_own_lease,
    a_slow_fill_keeps_its_lease,
    a_waiter_follows_a_renewed_lease,
    a_stale_token_cannot_write,
    an_abandoned_lease_is_released,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_gives_up_does_not_fail_the_others() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    let p = Provider::start(db.url(), &ex.url, &[]).await;
    ex.control(&delayed(LISTING_PATH, 1500)).await;
    let impatient = p.client().with_timeout(Duration::from_millis(300));
    let patient = p.client();
    let a = tokio::spawn(async move {
        impatient
            .get_document("ASX:GNP", &DocumentOptions::new())
            .await
    });
    // The impatient caller's fill is fetching before the patient one asks: the caller that
    // leaves is the one that started the fill.
    ex.wait_for_requests(LISTING_PATH, 1).await;
    let b = tokio::spawn(async move {
        patient
            .get_document("ASX:GNP", &DocumentOptions::new())
            .await
    });
    let err = a.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    let ok = b
        .await
        .unwrap()
        .expect("the patient caller gets the document");
    assert_eq!(ok.version, 1);
    assert_eq!(ex.count(LISTING_PATH).await, 1);
    // The fill was not cancelled by the caller that left: the document exists.
    assert!(db
        .store()
        .await
        .get(&ok.document_id)
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn fills_are_concurrent_and_bounded() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    ex.control(&delayed(LISTING_PATH, 200)).await;
    let ids: Vec<String> = ["GNP", "BHP", "CBA", "QUIET"].map(String::from).to_vec();

    let p = Provider::start(db.url(), &ex.url, &[("PROVIDER_FILL_CONCURRENCY", "2")]).await;
    let results = p
        .client()
        .get_documents(&ids, &DocumentOptions::new())
        .await
        .unwrap();
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    assert_eq!(
        ex.stats().await.max_in_flight,
        2,
        "the bound of 2 is used and never exceeded"
    );
    drop(p);

    ex.reset().await;
    let p = Provider::start(db.url(), &ex.url, &[("PROVIDER_FILL_CONCURRENCY", "8")]).await;
    let results = p
        .client()
        .get_documents(&ids, &DocumentOptions::new().cache_hours(0))
        .await
        .unwrap();
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    assert_eq!(
        ex.stats().await.max_in_flight,
        4,
        "all four fills run at once"
    );
}

/// A slow source queues its own fills without holding the global permits: a `market_data` miss
/// is filled at once while announcement fills wait for their source's permit.
#[tokio::test]
async fn a_slow_source_does_not_starve_another() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    ex.control(&delayed(LISTING_PATH, 2_000)).await;
    let p = Provider::start(
        db.url(),
        &ex.url,
        &[
            ("PROVIDER_FILL_CONCURRENCY", "3"),
            ("PROVIDER_FILL_CONCURRENCY_PER_SOURCE", "1"),
        ],
    )
    .await;
    let client = p.client();
    let ids: Vec<String> = ["GNP", "BHP", "CBA", "QUIET"].map(String::from).to_vec();
    let slow = {
        let client = client.clone();
        tokio::spawn(async move { client.get_documents(&ids, &DocumentOptions::new()).await })
    };
    ex.wait_for_requests(LISTING_PATH, 1).await;
    let md = client
        .get_document(
            "BHP",
            &DocumentOptions::new().kind(documents_api::Kind::MarketData),
        )
        .await
        .unwrap();
    assert_eq!(md.outcome, Outcome::Created);
    assert!(
        !slow.is_finished(),
        "the market data fill waited for the announcement fills"
    );
    let results = slow.await.unwrap().unwrap();
    assert_eq!(results.len(), 4);
}

/// A failure answers with `google.rpc.RetryInfo` (how long the negative cache will answer the
/// same), and the client waits that long: no retry is spent on the negative cache.
#[tokio::test]
async fn the_client_honours_the_servers_retry_hint() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    let p = Provider::start(
        db.url(),
        &ex.url,
        &[
            ("PROVIDER_NEGATIVE_CACHE_MS", "1500"),
            ("UPSTREAM_RETRIES", "0"),
        ],
    )
    .await;
    let mut down = Control::default();
    down.status.insert(LISTING_PATH.into(), 503);
    down.status.insert(MARKIT_PATH.into(), 503);
    ex.control(&down).await;
    // The hint itself, as any client sees it.
    let mut raw = DocumentProviderClient::connect(p.url()).await.unwrap();
    let e = raw
        .get_document(documents_api::proto::documents::v1::GetDocumentRequest {
            identifier: "BHP".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    let hint = documents_api::provider::retry_info(&e).expect("RetryInfo in the status details");
    assert!(
        hint > Duration::ZERO && hint <= Duration::from_millis(1500),
        "{hint:?}"
    );
    // The bundled client: quick backoff, many retries, a 5 s budget.
    let client = documents_api::ProviderClient::with_config(
        &p.url(),
        documents_api::ClientConfig {
            timeout: Duration::from_secs(5),
            retries: 20,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
            ..documents_api::ClientConfig::default()
        },
    )
    .unwrap();
    let e = client
        .get_document("GNP", &DocumentOptions::new())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let logs = p.proc.logs();
    let gnp_answers = logs
        .lines()
        .filter(|l| l.contains("ASX:GNP") && l.contains("error"))
        .count();
    let from_negative_cache = logs
        .lines()
        .filter(|l| l.contains("ASX:GNP") && l.contains("failed moments ago"))
        .count();
    assert!(gnp_answers >= 2, "the client retried: {logs}");
    assert_eq!(
        from_negative_cache, 0,
        "a retry was answered from the negative cache: {logs}"
    );
}

#[tokio::test]
async fn stale_if_error_serves_the_old_version_within_its_age() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    let p = Provider::start(db.url(), &ex.url, &[("PROVIDER_NEGATIVE_CACHE_MS", "0")]).await;
    let client = p.client();
    let v1 = client
        .get_document("ASX:GNP", &DocumentOptions::new())
        .await
        .unwrap();
    let mut down = forced_status(LISTING_PATH, 503);
    down.status.insert(MARKIT_PATH.into(), 503);
    ex.control(&down).await;
    age_document(&db, "ASX:GNP:announcement", 30).await;

    let stale = client
        .get_document("ASX:GNP", &DocumentOptions::new().stale_if_error_hours(48))
        .await
        .unwrap();
    assert_eq!(stale.outcome, Outcome::Stale);
    assert_eq!(
        (stale.document_id.as_str(), stale.version),
        (v1.document_id.as_str(), 1)
    );
    assert!(!stale.fresh && !stale.created);
    assert_eq!(stale.error.as_ref().unwrap().code, Code::Unavailable);

    let err = client
        .get_document("ASX:GNP", &DocumentOptions::new().stale_if_error_hours(24))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().contains("stale_if_error_hours"),
        "{}",
        err.message()
    );

    // Without the option, the failure is the answer.
    let err = client
        .get_document("ASX:GNP", &DocumentOptions::new())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
}

#[tokio::test]
async fn failures_are_cached_briefly() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    let p = Provider::start(
        db.url(),
        &ex.url,
        &[("PROVIDER_NEGATIVE_CACHE_MS", "60000")],
    )
    .await;
    let mut down = forced_status(LISTING_PATH, 500);
    down.status.insert(MARKIT_PATH.into(), 500);
    ex.control(&down).await;
    let client = p.client();
    let first = client
        .get_document("ASX:GNP", &DocumentOptions::new())
        .await
        .unwrap_err();
    let calls = ex.stats().await.total;
    for _ in 0..5 {
        let again = client
            .get_document("ASX:GNP", &DocumentOptions::new())
            .await
            .unwrap_err();
        assert_eq!(again.code(), first.code());
        assert!(
            again.message().contains("failed moments ago"),
            "{}",
            again.message()
        );
    }
    assert_eq!(
        ex.stats().await.total,
        calls,
        "no upstream request while the failure is cached"
    );
    // Other identifiers are not affected.
    ex.control(&Control::default()).await;
    assert!(client
        .get_document("ASX:BHP", &DocumentOptions::new())
        .await
        .is_ok());
}

#[tokio::test]
async fn stream_yields_each_result_when_ready() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    let p = Provider::start(db.url(), &ex.url, &[]).await;
    p.client()
        .get_document("ASX:CBA", &DocumentOptions::new())
        .await
        .unwrap();
    ex.control(&delayed(
        &format!("{LISTING_PATH}?by=asxCode&asxCode=BHP"),
        1500,
    ))
    .await;
    let mut raw = DocumentProviderClient::connect(p.url()).await.unwrap();
    let started = Instant::now();
    let mut stream = raw
        .stream_documents(GetDocumentsRequest {
            identifiers: ["BHP", "bad!", "CBA", "GNP"].map(String::from).to_vec(),
            kind: String::new(),
            options: Some(PbOptions::default()),
        })
        .await
        .unwrap()
        .into_inner();
    let mut arrived = Vec::new();
    while let Some(item) = stream.next().await {
        let r = item.unwrap();
        arrived.push((r.index, r.identifier.clone(), started.elapsed()));
    }
    let order: Vec<u32> = arrived.iter().map(|a| a.0).collect();
    assert_eq!(order.len(), 4);
    assert_eq!(
        *order.last().unwrap(),
        0,
        "the slow BHP comes last: {arrived:?}"
    );
    assert!(
        order[..2].contains(&1) && order[..2].contains(&2),
        "error and hit first: {arrived:?}"
    );
    assert_eq!(arrived[3].1, "BHP");
}

/// Hits are answered from memory on PostgreSQL; a refresh by another replica must still be
/// seen promptly (LISTEN/NOTIFY), and no process may go back to an older version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_replicas_refresh_is_seen_promptly() {
    let db = Db::postgres();
    let ex = Exchange::start();
    let a = Provider::start(db.url(), &ex.url, &[]).await;
    let b = Provider::start(db.url(), &ex.url, &[]).await;
    let (ca, cb) = (a.client(), b.client());
    let v1 = ca
        .get_document("ASX:GNP", &DocumentOptions::new())
        .await
        .unwrap();
    for _ in 0..20 {
        let r = ca
            .get_document("ASX:GNP", &DocumentOptions::new())
            .await
            .unwrap();
        assert_eq!((r.version, r.outcome), (1, Outcome::Hit));
    }
    let v2 = cb
        .get_document("ASX:GNP", &DocumentOptions::new().force_refresh(true))
        .await
        .unwrap();
    assert_eq!(
        (v2.document_id.as_str(), v2.version),
        (v1.document_id.as_str(), 2)
    );
    let refreshed_at = Instant::now();
    let mut seen_new = None;
    for _ in 0..400 {
        let r = ca
            .get_document("ASX:GNP", &DocumentOptions::new())
            .await
            .unwrap();
        match (seen_new, r.version) {
            (None, 2) => seen_new = Some(refreshed_at.elapsed()),
            (Some(_), v) => assert_eq!(v, 2, "went back to an older version"),
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let lag = seen_new.expect("A never saw B's refresh");
    // Documented bound: milliseconds (LISTEN/NOTIFY); generous here for a noisy machine.
    assert!(
        lag < Duration::from_secs(5),
        "A saw B's refresh after {lag:?}"
    );
}

/// Whatever happens to the table behind the providers' backs is announced: after a TRUNCATE a
/// provider must not answer a document that is gone.
#[tokio::test]
async fn truncate_is_seen_by_the_providers() {
    let db = Db::postgres();
    let ex = Exchange::start();
    let p = Provider::start(db.url(), &ex.url, &[]).await;
    let c = p.client();
    let v1 = c
        .get_document("ASX:GNP", &DocumentOptions::new())
        .await
        .unwrap();
    let hit = c
        .get_document("ASX:GNP", &DocumentOptions::new())
        .await
        .unwrap();
    assert_eq!(hit.outcome, Outcome::Hit);
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    sqlx::query("TRUNCATE documents CASCADE")
        .execute(&pool)
        .await
        .unwrap();
    // The announcement arrives within milliseconds; the bound here is generous.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = c
            .get_document("ASX:GNP", &DocumentOptions::new())
            .await
            .unwrap();
        if r.outcome == Outcome::Created {
            assert_ne!(r.document_id, v1.document_id);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still answering the truncated document: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A lease its holder could not release (the database was down when the fill ended) blocks
/// other holders until it expires, but not the holder itself, which claims it again at once
/// with a new token that fences off anything the old fill might still write.
async fn a_holder_reclaims_its_own_lease(db: Db) {
    let store = db.store().await;
    let sid = "ASX:GNP:announcement";
    let minute = Duration::from_secs(60);
    let first = store
        .claim_fill(&e2e::harness::key(sid), "a", minute)
        .await
        .unwrap();
    assert_eq!(first.token, Some(1));
    let other = store
        .claim_fill(&e2e::harness::key(sid), "b", minute)
        .await
        .unwrap();
    assert_eq!(other.token, None, "another holder must wait for the expiry");
    let again = store
        .claim_fill(&e2e::harness::key(sid), "a", minute)
        .await
        .unwrap();
    assert_eq!(again.token, Some(2));
    assert_invariants(&db).await;
}

/// Replica B asks, `ask_after` into replica A's fill of `fetch_ms` under leases of `lease_ms`:
/// B answers A's document and fetches nothing itself.
async fn b_answers_as_fill(db: &Db, lease_ms: &str, fetch_ms: u64, ask_after: Duration) {
    let (ex, _a, b, first) = replica_a_fetching(db, lease_ms, fetch_ms, "ASX:GNP").await;
    tokio::time::sleep(ask_after).await;
    let second = b
        .client()
        .get_document("ASX:GNP", &DocumentOptions::new())
        .await
        .unwrap();
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.outcome, Outcome::Created);
    assert_eq!(
        (second.document_id.as_str(), second.version),
        (first.document_id.as_str(), 1)
    );
    assert_eq!(ex.count(LISTING_PATH).await, 1, "B fetched again");
}

/// A fetch that outlasts the lease keeps it (its holder renews it): another replica asking
/// meanwhile waits for that fill instead of taking over and fetching again.
async fn a_slow_fill_keeps_its_lease(db: Db) {
    // Asked well past the lease's length: without renewal B would take the fill over.
    b_answers_as_fill(&db, "600", 2_500, Duration::from_millis(1_200)).await;
    assert_invariants(&db).await;
}

/// A waiting replica follows a live lease for as long as its holder renews it, past the old
/// fixed limit (twice the lease plus 5 s), and then answers the holder's document.
async fn a_waiter_follows_a_renewed_lease(db: Db) {
    // Lease 300 ms: the old limit was 5.6 s; the holder's fetch takes 7 s.
    b_answers_as_fill(&db, "300", 7_000, Duration::ZERO).await;
}

/// The fence: a write carrying a lease token that has since been superseded is refused whole,
/// and a renewal with it reports the lease lost.
async fn a_stale_token_cannot_write(db: Db) {
    let store = db.store().await;
    let sid = "ASX:GNP:announcement";
    let old = store
        .claim_fill(&e2e::harness::key(sid), "a", Duration::from_millis(1))
        .await
        .unwrap()
        .token
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let new = store
        .claim_fill(&e2e::harness::key(sid), "b", Duration::from_secs(60))
        .await
        .unwrap()
        .token
        .unwrap();
    assert!(new > old);
    let content = documents_store::NewContent {
        title: "t".into(),
        content_markdown: "m".into(),
        content_json: serde_json::json!({ "schema_version": 1 }),
        tags: vec![],
    };
    let fence = |token| Some(documents_store::Fence::last(token));
    let refused = store
        .upsert(&e2e::harness::key(sid), &content, &[], fence(old))
        .await;
    assert!(
        matches!(refused, Err(documents_store::StorageError::LeaseLost(_))),
        "{refused:?}"
    );
    assert!(store
        .get_by_source(&e2e::harness::key(sid))
        .await
        .unwrap()
        .is_none());
    assert!(!store
        .renew_fill(&e2e::harness::key(sid), old, Duration::from_secs(60))
        .await
        .unwrap());
    assert!(store
        .renew_fill(&e2e::harness::key(sid), new, Duration::from_secs(60))
        .await
        .unwrap());
    let written = store
        .upsert(&e2e::harness::key(sid), &content, &[], fence(new))
        .await
        .unwrap();
    assert_eq!(written.head.version, 1);
    assert_invariants(&db).await;
}

/// A lease whose holder went away (killed while filling) is released once it is `grace` past
/// its expiry; its token stays, so the next claim still gets a newer one.
async fn an_abandoned_lease_is_released(db: Db) {
    let store = db.store().await;
    let sid = "ASX:GNP:announcement";
    let token = store
        .claim_fill(&e2e::harness::key(sid), "gone", Duration::from_millis(1))
        .await
        .unwrap()
        .token
        .unwrap();
    assert_eq!(
        store
            .clear_abandoned_leases(Duration::from_secs(60))
            .await
            .unwrap(),
        0,
        "not yet past the grace"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let leftovers = store.check_invariants().await.unwrap();
    assert!(
        leftovers
            .iter()
            .any(|v| v.starts_with("lease held past its expiry")),
        "{leftovers:?}"
    );
    assert_eq!(
        store
            .clear_abandoned_leases(Duration::from_millis(10))
            .await
            .unwrap(),
        1
    );
    assert!(store.check_invariants().await.unwrap().is_empty());
    let lease = store.lease(&e2e::harness::key(sid)).await.unwrap().unwrap();
    assert_eq!(lease.token, token);
    let next = store
        .claim_fill(&e2e::harness::key(sid), "b", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(next.token, Some(token + 1));
    assert_invariants(&db).await;
}
