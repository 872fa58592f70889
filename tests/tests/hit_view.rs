//! The in-memory hit view's promise, held whatever its change feed does: an answer never
//! carries a version older, or an ID deleted, more than 1 s before the call began. On
//! PostgreSQL: The feed's LISTEN backend is frozen with SIGSTOP (a hung backend or a
//! stalled network: the connection stays open and silent) while another replica refreshes and
//! while the row is deleted; and a change made without firing the trigger
//! (`session_replication_role = replica`, as a restore or a repair does) is seen within the
//! view's maximum age. On SQLite (where the feed reads `PRAGMA data_version`): the view is used,
//! and another process's refresh and a delete are seen within the bound. Each call is recorded
//! with its start time and checked against the bound.

use std::time::{Duration, Instant};

use documents_api::{DocumentOptions, DocumentProvider, ProviderClient};
use e2e::harness::{listener_backend, Db, Exchange, Frozen, Provider};

/// The promise (README "Guarantees"): 750 ms heartbeat bound, 1 s maximum age.
const BOUND: Duration = Duration::from_secs(1);

/// Calls `client` for `ASX:GNP` (24-hour window) for `span`, recording (start, id, version).
async fn record(client: &ProviderClient, span: Duration) -> Vec<(Instant, String, i64)> {
    let mut calls = Vec::new();
    let end = Instant::now() + span;
    while Instant::now() < end {
        let start = Instant::now();
        if let Ok(r) = client
            .get_document("ASX:GNP", &DocumentOptions::new().cache_hours(24))
            .await
        {
            calls.push((start, r.document_id, r.version));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    calls
}

/// Calls that began more than BOUND after `changed` and still saw what `stale` says is old.
fn late_stale(
    calls: &[(Instant, String, i64)],
    changed: Instant,
    stale: impl Fn(&str, i64) -> bool,
) -> (usize, Vec<String>) {
    let late: Vec<_> = calls
        .iter()
        .filter(|(start, _, _)| *start >= changed + BOUND)
        .collect();
    let bad = late
        .iter()
        .filter(|(_, id, v)| stale(id, *v))
        .map(|(s, id, v)| format!("{id} v{v} at +{} ms", (*s - changed).as_millis()))
        .collect();
    (late.len(), bad)
}

const DELETE: &str = "DELETE FROM documents WHERE source_id = 'ASX:GNP:announcement'";

/// `writer` refreshes the document (`id`, at `v1`): no call to `viewer` begun more than BOUND
/// after answers an older version.
async fn refresh_is_seen_within_bound(
    viewer: &ProviderClient,
    writer: &ProviderClient,
    id: &str,
    v1: i64,
) {
    let refreshed = writer
        .get_document("ASX:GNP", &DocumentOptions::new().force_refresh(true))
        .await
        .unwrap();
    let changed = Instant::now();
    assert_eq!(
        (refreshed.document_id.as_str(), refreshed.version),
        (id, v1 + 1)
    );
    let calls = record(viewer, BOUND * 3).await;
    let (late, bad) = late_stale(&calls, changed, |_, v| v < v1 + 1);
    assert!(late > 5, "too few calls after the bound: {calls:?}");
    assert!(
        bad.is_empty(),
        "old version answered past the bound: {bad:?}"
    );
}

/// `delete` removes the document (`id`): no call to `viewer` begun more than BOUND after answers
/// its ID.
async fn delete_is_seen_within_bound(
    viewer: &ProviderClient,
    id: &str,
    delete: impl std::future::Future<Output = ()>,
) {
    delete.await;
    let changed = Instant::now();
    let calls = record(viewer, BOUND * 3).await;
    let (late, bad) = late_stale(&calls, changed, |i, _| i == id);
    assert!(late > 5, "too few calls after the bound: {calls:?}");
    assert!(
        bad.is_empty(),
        "deleted ID answered past the bound: {bad:?}"
    );
}

/// Warms the view: a few answers in a row, the last ones from memory.
async fn warm(client: &ProviderClient) -> (String, i64) {
    let mut last = (String::new(), 0);
    for _ in 0..5 {
        let r = client
            .get_document("ASX:GNP", &DocumentOptions::new().cache_hours(24))
            .await
            .unwrap();
        last = (r.document_id, r.version);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}

/// Hits the view answered from memory, from the viewer's metrics.
async fn memory_hits(metrics: &str) -> f64 {
    let text = e2e::harness::scrape_metrics(metrics).await;
    e2e::harness::metric_value(&text, "documents_memory_hits_total{kind=\"announcement\"}")
        .unwrap_or(0.0)
}

/// Warms the view and checks that it answered from memory meanwhile (a view that never
/// answers would pass every staleness check).
async fn warm_from_memory(client: &ProviderClient, metrics: &str) -> (String, i64) {
    let before = memory_hits(metrics).await;
    let warmed = warm(client).await;
    let after = memory_hits(metrics).await;
    assert!(
        after > before,
        "no hit was answered from memory ({before} -> {after})"
    );
    warmed
}

#[tokio::test]
async fn the_hit_view_is_never_staler_than_its_bound() {
    let db = Db::postgres();
    let ex = Exchange::start();
    // Only `viewer` keeps a hit view (and so the only LISTEN connection); `writer` refreshes.
    let viewer = Provider::start(
        db.url(),
        &ex.url,
        &[("PROVIDER_METRICS_ADDR", e2e::harness::ANY_PORT)],
    )
    .await;
    let metrics = viewer.proc.listening("metrics endpoint listening");
    let writer = Provider::start(db.url(), &ex.url, &[("PROVIDER_HIT_CACHE", "false")]).await;
    let (a, b) = (viewer.client(), writer.client());
    let created = a
        .get_document("ASX:GNP", &DocumentOptions::new())
        .await
        .unwrap();
    assert!(created.created);

    // 1. The feed goes silent, then another replica refreshes the document.
    let (id, v1) = warm_from_memory(&a, &metrics).await;
    let frozen = Frozen::new(listener_backend(db.url()).await);
    refresh_is_seen_within_bound(&a, &b, &id, v1).await;
    drop(frozen);

    // 2. The feed goes silent again, then the row is deleted.
    let (id, _) = warm_from_memory(&a, &metrics).await;
    let frozen = Frozen::new(listener_backend(db.url()).await);
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    delete_is_seen_within_bound(&a, &id, async {
        sqlx::query(DELETE).execute(&pool).await.unwrap();
    })
    .await;
    drop(frozen);

    // 3. A change that does not fire the trigger (the feed never hears of it).
    let (id, v) = warm_from_memory(&a, &metrics).await;
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE documents SET version = version + 1 WHERE source_id = 'ASX:GNP:announcement'",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    let changed = Instant::now();
    let calls = record(&a, BOUND * 3).await;
    let (late, bad) = late_stale(&calls, changed, |i, ver| i != id || ver <= v);
    assert!(late > 5, "too few calls after the bound: {calls:?}");
    assert!(
        bad.is_empty(),
        "a change that bypassed the trigger was not seen within the maximum age: {bad:?}"
    );
}

#[tokio::test]
async fn on_sqlite_the_view_is_used_and_sees_every_commit_within_its_bound() {
    use documents_api::proto::documents::admin::v1::{
        admin_client::AdminClient, DescribeDocumentRequest,
    };
    let db = Db::sqlite();
    let ex = Exchange::start();
    let viewer = Provider::start(
        db.url(),
        &ex.url,
        &[("PROVIDER_METRICS_ADDR", e2e::harness::ANY_PORT)],
    )
    .await;
    let metrics = viewer.proc.listening("metrics endpoint listening");
    let writer = Provider::start(db.url(), &ex.url, &[("PROVIDER_HIT_CACHE", "false")]).await;
    let (a, b) = (viewer.client(), writer.client());
    a.get_document("ASX:GNP", &DocumentOptions::new())
        .await
        .unwrap();

    // The view holds the document after a few hits: hits are answered from memory.
    let mut admin = AdminClient::connect(viewer.url()).await.unwrap();
    let describe = DescribeDocumentRequest {
        identifier: "ASX:GNP".into(),
        kind: String::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let (id, v1) = loop {
        let last = warm(&a).await;
        let state = admin
            .describe_document(describe.clone())
            .await
            .unwrap()
            .into_inner();
        if state.in_memory {
            break last;
        }
        assert!(Instant::now() < deadline, "never held in memory: {state:?}");
    };

    // 1. Another process refreshes the document.
    refresh_is_seen_within_bound(&a, &b, &id, v1).await;

    // 2. The row is deleted by hand.
    let (id, _) = warm_from_memory(&a, &metrics).await;
    let pool = sqlx::SqlitePool::connect(db.url()).await.unwrap();
    delete_is_seen_within_bound(&a, &id, async {
        sqlx::query(DELETE).execute(&pool).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_bounded_view_stays_within_its_bound_and_keeps_answering_its_hot_document() {
    let db = Db::postgres();
    let ex = Exchange::start();
    let p = Provider::start(
        db.url(),
        &ex.url,
        &[
            ("PROVIDER_METRICS_ADDR", e2e::harness::ANY_PORT),
            ("PROVIDER_HIT_CACHE_MAX_ENTRIES", "2"),
        ],
    )
    .await;
    let metrics = p.proc.listening("metrics endpoint listening");
    let client = p.client();
    // Three documents through a view that holds two.
    for ticker in ["ASX:GNP", "ASX:BHP", "ASX:CBA"] {
        client
            .get_document(ticker, &DocumentOptions::new())
            .await
            .unwrap();
    }
    // The hot one is still (or again) answered from memory.
    warm_from_memory(&client, &metrics).await;
    let text = e2e::harness::scrape_metrics(&metrics).await;
    let entries = e2e::harness::metric_value(&text, "documents_hit_view_entries").unwrap();
    let evicted =
        e2e::harness::metric_value(&text, "documents_hit_view_evictions_total").unwrap_or(0.0);
    assert!(entries <= 2.0, "{entries} entries held, bound 2");
    assert!(evicted >= 1.0, "nothing evicted: {text}");
}
