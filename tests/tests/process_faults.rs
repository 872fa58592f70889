//! Process faults: the provider killed with SIGKILL in the middle of a batch of fills and in
//! the middle of a consumer round, and the consumer killed in the middle of its downloads.
//! Nothing half-written is left; once restarted (same port, same database) the invariants hold
//! and the next call or round completes.

use std::time::{Duration, Instant};

use chrono::Datelike;

use documents_api::{
    proto::consumer::v1::ProcessTickersRequest, DocumentOptions, DocumentProvider, Outcome,
};
use e2e::{
    harness::{
        delayed, invariants_within, ConsumerProc, Db, Exchange, Provider, LISTING_PATH, PDF_PATH,
    },
    on_both_databases,
    record::Record,
};
use sample_exchange::Control;

/// A short fill lease, so the restarted provider takes over the killed one's fills quickly.
const LEASE: [(&str, &str); 1] = [("PROVIDER_FILL_LEASE_MS", "1000")];
const SETTLE: Duration = Duration::from_secs(10);

fn outcome_name(r: &Result<impl Sized, tonic::Status>) -> String {
    match r {
        Ok(_) => "OK".into(),
        Err(s) => format!("{:?}", s.code()),
    }
}

async fn provider_killed_during_a_batch_of_fills(db: Db) {
    let ex = Exchange::start();
    let p = Provider::start(db.url(), &ex.url, &LEASE).await;
    let ids: Vec<String> = (0..20).map(|i| format!("ASX:S{:04}", 500 + i)).collect();
    ex.control(&delayed(LISTING_PATH, 1_500)).await;
    let client = p.client();
    let batch = ids.clone();
    let call =
        tokio::spawn(async move { client.get_documents(&batch, &DocumentOptions::new()).await });
    ex.wait_for_requests(LISTING_PATH, 5).await;
    p.proc.signal("KILL");
    let cut = call.await.unwrap();
    // The API crate's client reports a connection that broke under the call as UNAVAILABLE.
    assert_eq!(
        cut.as_ref().map(|_| ()).map_err(|s| s.code()),
        Err(tonic::Code::Unavailable),
        "{cut:?}"
    );
    let store = db.store().await;
    let written = store
        .lookup(
            &ids.iter()
                .map(|i| format!("{i}:announcement"))
                .collect::<Vec<_>>()
                .iter()
                .map(e2e::harness::key)
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap()
        .heads
        .len();
    assert_eq!(written, 0, "nothing half-written by the killed fills");

    ex.control(&Control::default()).await;
    let restarted_at = Instant::now();
    let again = Provider::start_at(&p.addr, db.url(), &ex.url, &LEASE).await;
    let results = again
        .client()
        .get_documents(&ids, &DocumentOptions::new())
        .await
        .unwrap();
    let recovered = restarted_at.elapsed();
    for r in &results {
        assert_eq!((r.outcome, r.version), (Outcome::Created, 1), "{r:?}");
    }
    let rows = invariants_within(db.url(), SETTLE).await;
    Record {
        class: "process".into(),
        case: format!(
            "provider SIGKILLed during a batch of 20 fills ({})",
            db.engine()
        ),
        observed: "the batch call failed UNAVAILABLE (connection broke); nothing written; after a restart on the same port the same batch created all 20 at version 1".into(),
        sent: 2,
        outcomes: [(outcome_name(&cut), 1), ("OK".to_string(), 1)].into(),
        recovery_ms: Some(recovered.as_millis() as u64),
        rows_checked: Some(rows),
        figures: Default::default(),
        test: format!(
            "process_faults::provider_killed_during_a_batch_of_fills::{}",
            db.engine()
        ),
    }
    .save();
}

fn round(tickers: &[&str]) -> ProcessTickersRequest {
    ProcessTickersRequest {
        tickers: tickers.iter().map(|t| t.to_string()).collect(),
        ..Default::default()
    }
}

const TICKERS: [&str; 4] = ["ASX:GNP", "ASX:BHP", "ASX:CBA", "ASX:S0042"];

async fn provider_killed_during_a_consumer_round(db: Db) {
    let ex = Exchange::start();
    let p = Provider::start(db.url(), &ex.url, &LEASE).await;
    // The consumer gives up on the provider quickly, so the round ends while it is down.
    let consumer = ConsumerProc::start(db.url(), &p.url(), &[("PROVIDER_RETRIES", "1")]).await;
    let mut client = consumer.client().await;
    ex.control(&delayed(LISTING_PATH, 1_500)).await;
    let mut c = client.clone();
    let call = tokio::spawn(async move { c.process_tickers(round(&TICKERS)).await });
    ex.wait_for_requests(LISTING_PATH, 2).await;
    p.proc.signal("KILL");
    // The round itself answers (a per-ticker report each); only tickers can fail.
    let cut = call
        .await
        .unwrap()
        .expect("the consumer answers the round with per-ticker reports")
        .into_inner();
    let failed: Vec<_> = cut.reports.iter().filter(|t| t.status.is_some()).collect();
    let failed_tickers = failed.len();
    assert_eq!(cut.reports.len(), TICKERS.len());
    assert!(
        failed_tickers > 0,
        "the round cannot have fully succeeded: {cut:?}"
    );
    for t in &failed {
        let e = t.status.as_ref().unwrap();
        assert_eq!(e.code, tonic::Code::Unavailable as i32, "{t:?}");
    }
    invariants_within(db.url(), Duration::ZERO).await;

    ex.control(&Control::default()).await;
    let restarted_at = Instant::now();
    let _again = Provider::start_at(&p.addr, db.url(), &ex.url, &LEASE).await;
    let next = client
        .process_tickers(round(&TICKERS))
        .await
        .unwrap()
        .into_inner();
    let recovered = restarted_at.elapsed();
    for t in &next.reports {
        assert!(t.status.is_none(), "{t:?}");
        assert!(!t.document_id.is_empty() && t.version_read >= 1, "{t:?}");
    }
    let rows = invariants_within(db.url(), SETTLE).await;
    let engine = db.engine();
    Record {
        class: "process".into(),
        case: format!("provider SIGKILLed during a consumer round of 4 tickers ({engine})"),
        observed: format!(
            "{failed_tickers} of 4 tickers reported UNAVAILABLE in the cut round, the others completed; after a provider restart the next round completed for all 4"
        ),
        sent: 2,
        outcomes: [
            ("OK".to_string(), 1 + (TICKERS.len() - failed_tickers)),
            ("Unavailable (per ticker)".to_string(), failed_tickers),
        ]
        .into(),
        recovery_ms: Some(recovered.as_millis() as u64),
        rows_checked: Some(rows),
        figures: Default::default(),
        test: format!("process_faults::provider_killed_during_a_consumer_round::{engine}"),
    }
    .save();
}

/// A consumer SIGKILLed while one of a ticker's PDFs is still downloading keeps the ones that
/// finished (a checkpoint per finished PDF): the next round fetches only the unfinished one.
async fn consumer_killed_during_its_downloads(db: Db) {
    let ex = Exchange::start();
    let p = Provider::start(db.url(), &ex.url, &LEASE).await;
    let consumer = ConsumerProc::start(db.url(), &p.url(), &[]).await;
    let mut client = consumer.client().await;
    // GNP's two matched PDFs: the first answers at once, the second hangs.
    let yy = chrono::Utc::now().year().rem_euclid(100);
    let (fast, slow) = (format!("00000{yy:02}07"), format!("00000{yy:02}08"));
    let pdf = |key: &str| format!("{PDF_PATH}?display=pdf&idsId={key}");
    ex.control(&delayed(&pdf(&slow), 60_000)).await;
    let mut c = client.clone();
    let call = tokio::spawn(async move { c.process_tickers(round(&["ASX:GNP"])).await });
    // Wait for the checkpoint of the finished PDF, then kill the consumer.
    let store = db.store().await;
    let own = "ASX:GNP:announcement_download";
    let deadline = Instant::now() + SETTLE;
    loop {
        if let Some(d) = store.get_by_source(&e2e::harness::key(own)).await.unwrap() {
            if !store.attachments_of(&d.id).await.unwrap().is_empty() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "no checkpoint was written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    consumer.proc.signal("KILL");
    let cut = call.await.unwrap();
    assert!(cut.is_err(), "{cut:?}");
    invariants_within(db.url(), Duration::ZERO).await;

    ex.control(&Control::default()).await;
    drop(client);
    let restarted_at = Instant::now();
    let again = ConsumerProc::start(db.url(), &p.url(), &[]).await;
    client = again.client().await;
    let next = client
        .process_tickers(round(&["ASX:GNP"]))
        .await
        .unwrap()
        .into_inner();
    let recovered = restarted_at.elapsed();
    let r = &next.reports[0];
    assert!(r.status.is_none() && r.failed.is_empty(), "{r:?}");
    let keys = |items: &[documents_api::proto::consumer::v1::AnnouncementItem]| -> Vec<String> {
        items.iter().map(|i| i.document_key.clone()).collect()
    };
    assert_eq!(
        keys(&r.skipped),
        vec![fast.clone()],
        "kept from the killed round"
    );
    assert_eq!(keys(&r.downloaded), vec![slow.clone()]);
    let stats = ex.stats().await;
    let count = |key: &str| stats.by_request.get(&pdf(key)).copied().unwrap_or(0);
    assert_eq!(count(&fast), 1, "the finished PDF was fetched again");
    assert_eq!(count(&slow), 2, "the unfinished one is fetched again, once");
    let rows = invariants_within(db.url(), SETTLE).await;
    let engine = db.engine();
    Record {
        class: "process".into(),
        case: format!(
            "consumer SIGKILLed while one of a ticker's two PDFs was still downloading ({engine})"
        ),
        observed: "the cut round's call failed; the finished PDF was kept (checkpoint) and not fetched again; the next round fetched only the unfinished one; no attachment left unreferenced".into(),
        sent: 2,
        outcomes: [(outcome_name(&cut), 1), ("OK".to_string(), 1)].into(),
        recovery_ms: Some(recovered.as_millis() as u64),
        rows_checked: Some(rows),
        figures: [
            ("fetches of the finished PDF".to_string(), count(&fast).to_string()),
            ("fetches of the unfinished PDF".to_string(), count(&slow).to_string()),
        ]
        .into(),
        test: format!("process_faults::consumer_killed_during_its_downloads::{engine}"),
    }
    .save();
}

on_both_databases!(
    provider_killed_during_a_batch_of_fills,
    provider_killed_during_a_consumer_round,
    consumer_killed_during_its_downloads,
);

/// A lease left held by a provider killed mid-fill is released by the surviving provider's
/// sweep once it is a lease length past its expiry, even if nobody asks for that document again.
async fn a_killed_fillers_lease_is_swept(db: Db) {
    let ex = Exchange::start();
    let doomed = Provider::start(db.url(), &ex.url, &LEASE).await;
    let _survivor = Provider::start(db.url(), &ex.url, &LEASE).await;
    ex.control(&delayed(LISTING_PATH, 5_000)).await;
    let client = doomed.client();
    let call = tokio::spawn(async move {
        client
            .get_document("ASX:S0777", &DocumentOptions::new())
            .await
    });
    ex.wait_for_requests(LISTING_PATH, 1).await;
    doomed.proc.signal("KILL");
    let cut = call.await.unwrap();
    let store = db.store().await;
    let lease = store
        .lease(&e2e::harness::key("ASX:S0777:announcement"))
        .await
        .unwrap()
        .unwrap();
    assert!(lease.held, "the killed provider's lease is left held");
    // Once expired it is a leftover the checker names, until the survivor's sweep (every lease
    // length, a lease length after expiry) releases it.
    let deadline = Instant::now() + SETTLE;
    while !store
        .check_invariants()
        .await
        .unwrap()
        .iter()
        .any(|v| v.starts_with("lease held past its expiry"))
    {
        assert!(Instant::now() < deadline, "the lease never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let expired = Instant::now();
    let rows = invariants_within(db.url(), SETTLE).await;
    let engine = db.engine();
    Record {
        class: "process".into(),
        case: format!("provider SIGKILLed mid-fill, the document never asked for again ({engine})"),
        observed: "the killed provider's lease was left held; once expired the checker named it, and the surviving provider's sweep released it (lease 1 s)".into(),
        sent: 1,
        outcomes: [(outcome_name(&cut), 1)].into(),
        recovery_ms: Some(expired.elapsed().as_millis() as u64),
        rows_checked: Some(rows),
        test: format!("process_faults::a_killed_fillers_lease_is_swept::{engine}"),
        ..Default::default()
    }
    .save();
}

on_both_databases!(a_killed_fillers_lease_is_swept);
