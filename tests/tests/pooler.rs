//! The pair through a real PgBouncer in transaction mode (Debian's pgbouncer 1.18, no
//! prepared-statement support), as `DATABASE_POOLER=transaction` runs it: every call path, the
//! consumer's round, the change feed on its direct session URL (`DATABASE_LISTEN_URL`), and
//! without that URL the hit view off (hits read from the database, never stale). The store's
//! own paths through the pooler are in the store's contract suite (`pgbouncer` engine).

use std::time::Duration;

use documents_api::{
    proto::consumer::v1::ProcessTickersRequest, DocumentOptions, DocumentProvider,
};
use e2e::{
    harness::{
        assert_invariants, metric_value, scrape_metrics, ConsumerProc, Db, Exchange, Provider,
        ANY_PORT,
    },
    pgbouncer::PgBouncer,
};

/// PgBouncer in transaction mode in front of the test server, with fewer server connections
/// than the services' pools.
fn pooler() -> PgBouncer {
    let admin = e2e::harness::postgres_admin_url();
    let after_at = admin.rsplit_once('@').map_or(admin.as_str(), |(_, r)| r);
    PgBouncer::start(after_at.split('/').next().unwrap(), "transaction", 3)
}

async fn memory_hits(metrics: &str) -> f64 {
    metric_value(
        &scrape_metrics(metrics).await,
        "documents_memory_hits_total{kind=\"announcement\"}",
    )
    .unwrap_or(0.0)
}

/// Answers for ASX:GNP until `version` is answered (or 10 s pass); the versions seen.
async fn until_version(client: &impl DocumentProvider, version: i64) -> Vec<i64> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        let r = client
            .get_document("ASX:GNP", &DocumentOptions::new())
            .await
            .unwrap();
        seen.push(r.version);
        if r.version >= version {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    seen
}

#[tokio::test]
async fn the_pair_runs_through_pgbouncer_in_transaction_mode() {
    let db = Db::postgres();
    let bouncer = pooler();
    let ex = Exchange::start();
    let through = bouncer.url(db.url());
    let pooled = [
        ("DATABASE_POOLER", "transaction"),
        ("DATABASE_LISTEN_URL", db.url()),
    ];
    let mut viewer_env = pooled.to_vec();
    viewer_env.push(("PROVIDER_METRICS_ADDR", ANY_PORT));
    let viewer = Provider::start(&through, &ex.url, &viewer_env).await;
    let metrics = viewer.proc.listening("metrics endpoint listening");
    let mut writer_env = pooled.to_vec();
    writer_env.push(("PROVIDER_HIT_CACHE", "false"));
    let writer = Provider::start(&through, &ex.url, &writer_env).await;
    let (a, b) = (viewer.client(), writer.client());

    // Every path of a call: a miss filled under a lease, hits (from memory: the change feed
    // listens on the session URL), a forced refresh by the other replica seen at once.
    let created = a
        .get_document("ASX:GNP", &DocumentOptions::new())
        .await
        .unwrap();
    let before = memory_hits(&metrics).await;
    let mut last = 0;
    for _ in 0..5 {
        last = a
            .get_document("ASX:GNP", &DocumentOptions::new())
            .await
            .unwrap()
            .version;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last, created.version);
    assert!(
        memory_hits(&metrics).await > before,
        "no hit answered from memory: the change feed does not run"
    );
    let refreshed = b
        .get_document("ASX:GNP", &DocumentOptions::new().force_refresh(true))
        .await
        .unwrap();
    assert_eq!(refreshed.document_id, created.document_id);
    let seen = until_version(&a, refreshed.version).await;
    assert_eq!(seen.last(), Some(&refreshed.version), "{seen:?}");
    let batch = a
        .get_documents(
            &[
                "ASX:BHP".to_string(),
                "ASX:CBA".to_string(),
                "ASX:NOPE".to_string(),
            ],
            &DocumentOptions::new(),
        )
        .await
        .unwrap();
    assert!(
        batch[0].is_ok() && batch[1].is_ok() && !batch[2].is_ok(),
        "{batch:?}"
    );

    // The consumer's round: a lease, checkpoints and the final write, all through the pooler.
    let consumer = ConsumerProc::start(
        &through,
        &format!("{},{}", viewer.url(), writer.url()),
        &[
            ("DATABASE_POOLER", "transaction"),
            ("DATABASE_MIGRATE", "false"),
        ],
    )
    .await;
    let report = consumer
        .client()
        .await
        .process_tickers(ProcessTickersRequest {
            tickers: vec!["ASX:GNP".into(), "ASX:CBA".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for r in &report.reports {
        assert!(r.status.is_none(), "{r:?}");
        assert!(!r.downloaded.is_empty(), "{r:?}");
    }
    assert_invariants(&db).await;
    assert!(
        !bouncer.log().contains("ERROR"),
        "PgBouncer logged errors:\n{}",
        bouncer.log()
    );
}

#[tokio::test]
async fn without_a_session_url_hits_are_read_from_the_database() {
    let db = Db::postgres();
    db.store().await; // migrated directly, as an operator would
    let bouncer = pooler();
    let ex = Exchange::start();
    let through = bouncer.url(db.url());
    let viewer = Provider::start(
        &through,
        &ex.url,
        &[
            ("DATABASE_POOLER", "transaction"),
            ("DATABASE_MIGRATE", "false"),
            ("PROVIDER_METRICS_ADDR", ANY_PORT),
        ],
    )
    .await;
    let metrics = viewer.proc.listening("metrics endpoint listening");
    let writer = Provider::start(db.url(), &ex.url, &[("PROVIDER_HIT_CACHE", "false")]).await;
    let (a, b) = (viewer.client(), writer.client());
    let created = a
        .get_document("ASX:GNP", &DocumentOptions::new())
        .await
        .unwrap();
    for _ in 0..5 {
        a.get_document("ASX:GNP", &DocumentOptions::new())
            .await
            .unwrap();
    }
    assert_eq!(
        memory_hits(&metrics).await,
        0.0,
        "no feed, so no hit from memory"
    );
    assert!(
        viewer.proc.logs().contains("no change feed"),
        "{}",
        viewer.proc.logs()
    );
    // Another replica's refresh is answered by the very next call.
    let refreshed = b
        .get_document("ASX:GNP", &DocumentOptions::new().force_refresh(true))
        .await
        .unwrap();
    let next = a
        .get_document("ASX:GNP", &DocumentOptions::new())
        .await
        .unwrap();
    assert_eq!(
        (next.document_id, next.version),
        (created.document_id, refreshed.version)
    );
}
