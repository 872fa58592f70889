//! provider-service end to end: the real binary on a free port, a fresh database, the sample
//! exchange as its upstream, talked to through the API crate's client.

use std::time::Duration;

use documents_api::{
    proto::documents::v1::{document_provider_client::DocumentProviderClient, GetDocumentRequest},
    DocumentOptions, DocumentProvider, DocumentProvisioner, Kind, Outcome,
};
use e2e::{
    harness::{age_document, forced_status, Db, Exchange, Provider, LISTING_PATH, MARKIT_PATH},
    on_both_databases,
};
use tonic::Code;

async fn freshness_semantics(db: Db) {
    let ex = Exchange::start();
    let provider = Provider::start(db.url(), &ex.url, &[]).await;
    let client = provider.client();
    let opts = DocumentOptions::new();

    let first = client.get_document("ASX:GNP", &opts).await.unwrap();
    assert!(first.created && !first.fresh, "{first:?}");
    assert_eq!((first.version, first.outcome), (1, Outcome::Created));
    assert_eq!(first.source_id, "ASX:GNP:announcement");
    assert!(
        first.tags.contains(&"ticker:ASX:GNP".to_string()),
        "{:?}",
        first.tags
    );

    let second = client.get_document("ASX:GNP", &opts).await.unwrap();
    assert!(second.fresh && !second.created, "{second:?}");
    assert_eq!(
        (second.document_id.as_str(), second.version),
        (first.document_id.as_str(), 1)
    );
    assert_eq!(second.outcome, Outcome::Hit);
    assert_eq!(
        ex.count(LISTING_PATH).await,
        1,
        "a hit must not call the upstream"
    );

    let zero = client
        .get_document("ASX:GNP", &opts.clone().cache_hours(0))
        .await
        .unwrap();
    assert_eq!(
        (zero.document_id.as_str(), zero.version),
        (first.document_id.as_str(), 2)
    );
    assert_eq!(zero.outcome, Outcome::Refreshed);
    assert!(zero.created && !zero.fresh);

    let forced = client
        .get_document("asx:gnp", &opts.clone().force_refresh(true))
        .await
        .unwrap();
    assert_eq!(
        (forced.document_id.as_str(), forced.version),
        (first.document_id.as_str(), 3)
    );
    assert_eq!(ex.count(LISTING_PATH).await, 3);

    // Unset cache_hours means 24: 23 hours old is fresh, 25 hours old is refreshed.
    age_document(&db, "ASX:GNP:announcement", 23).await;
    let r = client.get_document("ASX:GNP", &opts).await.unwrap();
    assert_eq!((r.outcome, r.version), (Outcome::Hit, 3));
    let r = client
        .get_document("ASX:GNP", &opts.clone().cache_hours(22))
        .await
        .unwrap();
    assert_eq!(
        (r.outcome, r.version),
        (Outcome::Refreshed, 4),
        "22h window on a 23h-old document"
    );
    age_document(&db, "ASX:GNP:announcement", 25).await;
    let r = client.get_document("ASX:GNP", &opts).await.unwrap();
    assert_eq!((r.outcome, r.version), (Outcome::Refreshed, 5));

    // The stored row is the one document, with its content.
    let store = db.store().await;
    let doc = store
        .get(&first.document_id)
        .await
        .unwrap()
        .expect("document stored");
    assert_eq!(doc.version, 5);
    assert_eq!(doc.key.kind(), documents_api::Kind::Announcement);
    let items = doc.content_json["announcements"].as_array().unwrap();
    assert!(!items.is_empty());
    assert!(items
        .iter()
        .all(|a| a["headline"].as_str().unwrap().starts_with("[SAMPLE]")));
    assert!(
        doc.content_markdown.contains("ANNUAL_REPORT")
            || doc.content_markdown.contains("QUARTERLY")
    );
}

async fn batches_answer_in_order(db: Db) {
    let ex = Exchange::start();
    let provider = Provider::start(db.url(), &ex.url, &[("PROVIDER_MAX_BATCH_SIZE", "4")]).await;
    let client = provider.client();
    let ids: Vec<String> = ["ASX:GNP", "bad id!", "asx:gnp", "BHP"]
        .map(String::from)
        .to_vec();

    let results = client
        .get_documents(&ids, &DocumentOptions::new())
        .await
        .unwrap();
    assert_eq!(results.len(), 4);
    for (r, id) in results.iter().zip(&ids) {
        assert_eq!(&r.identifier, id);
    }
    let bad = results[1].error.as_ref().expect("bad id fails");
    assert_eq!(bad.code, Code::InvalidArgument);
    assert!(
        bad.message.contains("bad id!") && bad.message.contains("[A-Z0-9.]"),
        "{}",
        bad.message
    );
    assert!(
        results[0].is_ok() && results[2].is_ok() && results[3].is_ok(),
        "{results:?}"
    );
    assert_eq!(results[0].document_id, results[2].document_id);
    assert_ne!(results[0].document_id, results[3].document_id);
    assert_eq!(results[3].source_id, "ASX:BHP:announcement");
    // Duplicates share one fill: GNP and BHP fetched once each.
    assert_eq!(ex.count(LISTING_PATH).await, 2);

    let legacy = client
        .ensure_documents(&ids, &DocumentOptions::new())
        .await
        .unwrap();
    assert_eq!(legacy.document_ids.len(), 3);
    assert_eq!(legacy.document_ids["asx:gnp"], results[0].document_id);
    assert_eq!(legacy.document_ids["BHP"], results[3].document_id);
    assert_eq!(legacy.errors["bad id!"].code, Code::InvalidArgument);

    let five: Vec<String> = ["A", "B", "C", "D", "E"].map(String::from).to_vec();
    let err = client
        .get_documents(&five, &DocumentOptions::new())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("maximum batch size of 4"),
        "{}",
        err.message()
    );
    assert_eq!(
        ex.count(LISTING_PATH).await,
        2,
        "a refused batch fetches nothing"
    );

    let err = client
        .get_document("ASX:GNP", &DocumentOptions::new().cache_hours(100_000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("options.cache_hours"),
        "{}",
        err.message()
    );

    // Unknown kinds, and the consumer's own kind, are refused.
    let mut raw = DocumentProviderClient::connect(provider.url())
        .await
        .unwrap();
    for kind in ["prices", "announcement_download"] {
        let err = raw
            .get_document(GetDocumentRequest {
                identifier: "GNP".into(),
                kind: kind.into(),
                options: None,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{kind}");
        assert!(err.message().starts_with("kind:"), "{}", err.message());
    }

    let err = client
        .get_document("  ", &DocumentOptions::new())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("empty"), "{}", err.message());
}

async fn failing_source_keeps_the_old_document(db: Db) {
    let ex = Exchange::start();
    let provider = Provider::start(db.url(), &ex.url, &[]).await;
    let client = provider.client();
    let first = client
        .get_document("ASX:CBA", &DocumentOptions::new())
        .await
        .unwrap();
    let store = db.store().await;
    let before = store.get(&first.document_id).await.unwrap().unwrap();

    let mut control = forced_status(LISTING_PATH, 500);
    control.status.insert(MARKIT_PATH.into(), 503);
    ex.control(&control).await;
    let err = client
        .get_document("ASX:CBA", &DocumentOptions::new().force_refresh(true))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("500"), "{}", err.message());
    let after = store.get(&first.document_id).await.unwrap().unwrap();
    assert_eq!(
        after, before,
        "a failed fill must leave the document untouched"
    );

    // A new identifier in the same state: UNAVAILABLE, and nothing written.
    let err = client
        .get_document("ASX:BHP", &DocumentOptions::new())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(store
        .get_by_source(&e2e::harness::key("ASX:BHP:announcement"))
        .await
        .unwrap()
        .is_none());
}

async fn unknown_company_and_fallback(db: Db) {
    let ex = Exchange::start();
    let provider = Provider::start(db.url(), &ex.url, &[]).await;
    let client = provider.client();

    // An unknown company: the listing is empty, the JSON API says 404.
    let err = client
        .get_document("ASX:NOPE", &DocumentOptions::new())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // A known company with no announcements: a valid, empty document.
    let quiet = client
        .get_document("ASX:QUIET", &DocumentOptions::new())
        .await
        .unwrap();
    let store = db.store().await;
    let doc = store.get(&quiet.document_id).await.unwrap().unwrap();
    assert_eq!(
        doc.content_json["announcements"].as_array().unwrap().len(),
        0
    );

    // The HTML listing and the JSON fallback give the same announcements.
    let via_listing = client
        .get_document("ASX:GNP", &DocumentOptions::new())
        .await
        .unwrap();
    let listing_doc = store.get(&via_listing.document_id).await.unwrap().unwrap();
    assert_eq!(listing_doc.content_json["fetched_via"], "listing");
    ex.control(&forced_status(LISTING_PATH, 502)).await;
    let via_json = client
        .get_document("ASX:GNP", &DocumentOptions::new().cache_hours(0))
        .await
        .unwrap();
    let json_doc = store.get(&via_json.document_id).await.unwrap().unwrap();
    assert_eq!(json_doc.content_json["fetched_via"], "json_api");
    assert_eq!(
        json_doc.content_json["announcements"],
        listing_doc.content_json["announcements"]
    );
    assert_eq!(via_json.version, 2);
}

async fn market_data_kind(db: Db) {
    let ex = Exchange::start();
    let provider = Provider::start(db.url(), &ex.url, &[]).await;
    let client = provider.client();
    let r = client
        .get_document("ASX:BHP", &DocumentOptions::new().kind(Kind::MarketData))
        .await
        .unwrap();
    assert_eq!(r.source_id, "ASX:BHP:market_data");
    assert!(
        r.tags.iter().any(|t| t.starts_with("trend:")),
        "{:?}",
        r.tags
    );
    let doc = db.store().await.get(&r.document_id).await.unwrap().unwrap();
    assert_eq!(doc.key.kind(), documents_api::Kind::MarketData);
    let bars = doc.content_json["bars"].as_array().unwrap();
    assert!(bars.len() > 200, "{} bars", bars.len());
    let err = client
        .get_document("ASX:NOPE", &DocumentOptions::new().kind(Kind::MarketData))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

/// The third kind, end to end on each database: filled, stored under its own source key,
/// answered from the database on the next call, and kept apart from the other kinds.
async fn dividends_kind(db: Db) {
    let ex = Exchange::start();
    let provider = Provider::start(db.url(), &ex.url, &[]).await;
    let client = provider.client();
    let opts = DocumentOptions::new().kind(Kind::Dividends);
    let r = client.get_document("ASX:BHP", &opts).await.unwrap();
    assert_eq!(r.source_id, "ASX:BHP:dividends");
    assert_eq!(r.outcome, documents_api::Outcome::Created);
    let again = client.get_document("bhp", &opts).await.unwrap();
    assert_eq!(again.outcome, documents_api::Outcome::Hit);
    assert_eq!(again.document_id, r.document_id);
    let doc = db.store().await.get(&r.document_id).await.unwrap().unwrap();
    assert_eq!(doc.key.kind(), documents_api::Kind::Dividends);
    assert_eq!(doc.content_json["schema_version"], 1);
    assert!(!doc.content_json["dividends"].as_array().unwrap().is_empty());
    let announcements = client
        .get_document("ASX:BHP", &DocumentOptions::new())
        .await
        .unwrap();
    assert_ne!(announcements.document_id, r.document_id);
}

on_both_databases!(
    freshness_semantics,
    batches_answer_in_order,
    failing_source_keeps_the_old_document,
    unknown_company_and_fallback,
    market_data_kind,
    dividends_kind,
);

#[tokio::test]
async fn unreachable_source_is_unavailable() {
    let db = Db::sqlite();
    // Port 1 on loopback: nothing listens there.
    let provider = Provider::start(db.url(), "http://127.0.0.1:1", &[]).await;
    let err = provider
        .client()
        .get_document("ASX:GNP", &DocumentOptions::new())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("connection failed"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn health_is_not_serving_until_the_database_is_ready() {
    let name = format!("e2e_late_{}", uuid::Uuid::now_v7().simple());
    let admin = e2e::harness::postgres_admin_url();
    let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
    let ex = Exchange::start();
    let provider = Provider::spawn(&url, &ex.url, &[]);
    // The port answers health while the database does not exist yet.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match documents_kit::health::healthcheck(
            &provider.addr,
            documents_api::proto::PROVIDER_SERVICE_NAME,
        )
        .await
        {
            Ok(serving) => {
                assert!(!serving, "must not be SERVING without a database");
                break;
            }
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("health never answered: {e}\n{}", provider.proc.logs()),
        }
    }
    let err = provider
        .client()
        .get_document("GNP", &DocumentOptions::new())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("not ready"), "{}", err.message());
    // Not ready, but alive: the liveness probe (what an orchestrator restarts on) passes, the
    // readiness probe (what takes the replica out of the balancing) fails.
    let probe = |liveness: bool| {
        let mut cmd = std::process::Command::new(e2e::harness::bin("provider-service"));
        cmd.arg("healthcheck")
            .env("PROVIDER_LISTEN_ADDR", &provider.addr);
        if liveness {
            cmd.arg("--liveness");
        }
        cmd.output().unwrap().status.success()
    };
    assert!(
        probe(true),
        "liveness must pass while the database is missing"
    );
    assert!(
        !probe(false),
        "readiness must fail while the database is missing"
    );

    let pool = sqlx::PgPool::connect(&admin).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&pool)
        .await
        .unwrap();
    e2e::harness::wait_serving(
        &provider.addr,
        documents_api::proto::PROVIDER_SERVICE_NAME,
        &provider.proc,
    )
    .await;
    let ok = provider
        .client()
        .get_document("GNP", &DocumentOptions::new())
        .await
        .unwrap();
    assert_eq!(ok.version, 1);
    drop(provider);
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&pool)
    .await;
}

#[tokio::test]
async fn sigterm_drains_in_flight_calls() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    let mut provider = Provider::start(db.url(), &ex.url, &[]).await;
    ex.control(&sample_exchange::Control {
        latency_ms: 1500,
        ..Default::default()
    })
    .await;
    let client = provider.client();
    let call = tokio::spawn(async move {
        client
            .get_document("ASX:GNP", &DocumentOptions::new())
            .await
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    provider.proc.signal("TERM");
    let answer = call.await.unwrap();
    assert!(answer.is_ok(), "in-flight call must finish: {answer:?}");
    let status = provider
        .proc
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("provider exits after draining");
    assert!(status.success(), "{status:?}");
    // Then the background loops stopped (the database watch, the lease sweeper, the hit
    // summary at least) and the pool closed, in that order after the drain.
    let logs = provider.proc.logs();
    let stopped = logs
        .lines()
        .find(|l| l.contains("background tasks stopped, database pool closed"))
        .unwrap_or_else(|| panic!("no shutdown line: {logs}"));
    let tasks: usize = stopped
        .split("tasks=")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    assert!(tasks >= 3, "{stopped}");
    let drained = logs
        .find("draining in-flight calls")
        .expect("the drain is logged");
    assert!(
        drained < logs.find("background tasks stopped").unwrap(),
        "{logs}"
    );
    e2e::record::Record {
        class: "process".into(),
        case: "provider sent SIGTERM with a 1.5 s fill in flight".into(),
        observed: format!("the in-flight call completed OK, then {tasks} background loops stopped, the pool closed and the process exited 0"),
        sent: 1,
        outcomes: [("OK".to_string(), 1)].into(),
        test: "provider::sigterm_drains_in_flight_calls".into(),
        ..Default::default()
    }
    .save();
}

#[tokio::test]
async fn bearer_token_guards_every_rpc_but_health() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    let provider = Provider::start(db.url(), &ex.url, &[("PROVIDER_AUTH_TOKEN", "s3cret")]).await;
    let err = provider
        .client()
        .get_document("GNP", &DocumentOptions::new())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut config = e2e::harness::test_client_config();
    config.auth_token = Some("s3cret".into());
    let client = documents_api::ProviderClient::with_config(&provider.url(), config).unwrap();
    assert!(client
        .get_document("GNP", &DocumentOptions::new())
        .await
        .is_ok());
    // Health answers without a token (that is what wait_serving used).
    assert!(documents_kit::health::healthcheck(&provider.addr, "")
        .await
        .unwrap());
}

async fn services_starting_at_once_migrate_once(db: Db) {
    let ex = Exchange::start();
    // Two providers and a consumer race to migrate the same fresh database.
    let a = Provider::spawn(db.url(), &ex.url, &[]);
    let b = Provider::spawn(db.url(), &ex.url, &[]);
    let consumer = e2e::harness::ConsumerProc::start(db.url(), &a.url(), &[]).await;
    for p in [&a, &b] {
        e2e::harness::wait_serving(
            &p.addr,
            documents_api::proto::PROVIDER_SERVICE_NAME,
            &p.proc,
        )
        .await;
    }
    let ra = a
        .client()
        .get_document("GNP", &DocumentOptions::new())
        .await
        .unwrap();
    let rb = b
        .client()
        .get_document("GNP", &DocumentOptions::new())
        .await
        .unwrap();
    assert_eq!(ra.document_id, rb.document_id);
    drop(consumer);
}

on_both_databases!(services_starting_at_once_migrate_once);

/// Single-identifier hits are not logged one by one at INFO: the fill's answer has its line,
/// the hits are summed up in one `hits answered` line per kind, and each is a DEBUG line.
#[tokio::test]
async fn single_hits_are_summed_up_in_a_periodic_line() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    let provider = Provider::start(db.url(), &ex.url, &[("PROVIDER_HIT_LOG_SECS", "1")]).await;
    let client = provider.client();
    for _ in 0..5 {
        client
            .get_document("GNP", &DocumentOptions::new())
            .await
            .unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let summed: u64 = loop {
        let log = provider.proc.logs();
        let summed: u64 = log
            .lines()
            .filter(|l| l.contains("hits answered") && l.contains("kind=\"announcement\""))
            .filter_map(|l| {
                l.split("hits=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum();
        if summed >= 4 {
            let answers: Vec<&str> = log
                .lines()
                .filter(|l| l.contains(" INFO ") && l.contains("grpc: answer "))
                .collect();
            assert_eq!(
                answers.len(),
                1,
                "only the fill has an INFO answer line: {log}"
            );
            assert!(answers[0].contains("outcome=\"created\""), "{log}");
            break summed;
        }
        assert!(std::time::Instant::now() < deadline, "no hits line:\n{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(summed, 4, "the four hits, each counted once");
    // At DEBUG each hit has its line too.
    let db = Db::sqlite();
    let verbose = Provider::start(
        db.url(),
        &ex.url,
        &[("RUST_LOG", "info,provider_service::grpc=debug")],
    )
    .await;
    for _ in 0..2 {
        verbose
            .client()
            .get_document("GNP", &DocumentOptions::new())
            .await
            .unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !verbose.proc.logs().contains("outcome=\"hit\"") {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            verbose.proc.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn batches_log_a_summary_and_every_non_hit() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    let provider = Provider::start(db.url(), &ex.url, &[]).await;
    let client = provider.client();
    let ids: Vec<String> = ["GNP", "BHP", "NOPE"].map(String::from).to_vec();
    client
        .get_documents(&ids, &DocumentOptions::new())
        .await
        .unwrap();
    client
        .get_documents(&ids[..2], &DocumentOptions::new())
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let log = provider.proc.logs();
        let summaries: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("batch answered"))
            .collect();
        let created = log
            .lines()
            .filter(|l| l.contains("outcome=\"created\""))
            .count();
        let failed = log
            .lines()
            .filter(|l| l.contains("outcome=\"error\"") && l.contains("NOPE"))
            .count();
        let hit_lines = log
            .lines()
            .filter(|l| l.contains("outcome=\"hit\""))
            .count();
        if summaries.len() == 2 {
            assert!(
                summaries[0].contains("created=2") && summaries[0].contains("error=1"),
                "{}",
                summaries[0]
            );
            assert!(
                summaries[1].contains("hit=2") && summaries[1].contains("identifiers=2"),
                "{}",
                summaries[1]
            );
            assert_eq!((created, failed, hit_lines), (2, 1, 0), "{log}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no batch summaries:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `dns:///HOST:PORT` target reaches the provider (the name resolved, the balancer fed).
#[tokio::test]
async fn a_dns_target_reaches_the_provider() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    let provider = Provider::start(db.url(), &ex.url, &[]).await;
    let port = provider.addr.rsplit(':').next().unwrap();
    let client = documents_api::ProviderClient::with_config(
        &format!("dns:///localhost:{port}"),
        e2e::harness::test_client_config(),
    )
    .unwrap();
    let r = client
        .get_document("ASX:GNP", &DocumentOptions::new())
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", provider.proc.logs()));
    assert!(r.created);
}

/// The market-data API token read from a file (a mounted secret) reaches the upstream.
#[tokio::test]
async fn the_market_data_token_comes_from_a_file() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "tok-from-file\n").unwrap();
    let provider = Provider::start(
        db.url(),
        &ex.url,
        &[("MARKET_DATA_API_TOKEN_FILE", file.to_str().unwrap())],
    )
    .await;
    provider
        .client()
        .get_document("ASX:BHP", &DocumentOptions::new().kind(Kind::MarketData))
        .await
        .unwrap();
    let stats = ex.stats().await;
    assert!(
        stats
            .by_request
            .keys()
            .any(|p| p.contains("api_token=tok-from-file")),
        "{:?}",
        stats.by_request.keys().collect::<Vec<_>>()
    );
}

/// Lame duck: on SIGTERM health turns NOT_SERVING at once while the server still accepts and
/// serves new connections for PROVIDER_SHUTDOWN_GRACE_MS (a balancer that has not caught up
/// yet still gets answers), then drains. Callers behind a balancer that health-checks (as
/// Kubernetes endpoints and proxies do: here every 100 ms) see no failed call across it, with
/// no retries to hide one; with no grace, the calls sent before the balancer noticed fail.
#[tokio::test]
async fn a_sigterm_is_a_lame_duck_first_then_a_drain() {
    use std::sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    };
    let db = Db::sqlite();
    let ex = Exchange::start();
    let mut a = Provider::start(db.url(), &ex.url, &[("PROVIDER_SHUTDOWN_GRACE_MS", "3000")]).await;
    let b = Provider::start(db.url(), &ex.url, &[]).await;
    let no_retries = |url: String| {
        documents_api::ProviderClient::with_config(
            &url,
            documents_api::client::ClientConfig {
                timeout: Duration::from_secs(10),
                retries: 0,
                ..Default::default()
            },
        )
        .unwrap()
    };
    let (to_a, to_b) = (no_retries(a.url()), no_retries(b.url()));
    to_a.get_document("ASX:GNP", &DocumentOptions::new())
        .await
        .unwrap();
    // The balancer: a's health polled every 100 ms; calls go to a only while it is SERVING.
    let stop = Arc::new(AtomicBool::new(false));
    let a_serving = Arc::new(AtomicBool::new(true));
    let poller = {
        let (stop, a_serving, addr) = (stop.clone(), a_serving.clone(), a.addr.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let serving = documents_kit::health::healthcheck(
                    &addr,
                    documents_api::proto::PROVIDER_SERVICE_NAME,
                )
                .await
                .unwrap_or(false);
                a_serving.store(serving, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let sent_to_a = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..4)
        .map(|i| {
            let (to_a, to_b, stop) = (to_a.clone(), to_b.clone(), stop.clone());
            let (a_serving, sent_to_a) = (a_serving.clone(), sent_to_a.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0, Vec::new());
                let mut turn = i;
                while !stop.load(Ordering::Relaxed) {
                    turn += 1;
                    let client = if turn % 2 == 0 && a_serving.load(Ordering::Relaxed) {
                        sent_to_a.fetch_add(1, Ordering::Relaxed);
                        &to_a
                    } else {
                        &to_b
                    };
                    match client
                        .get_document("ASX:GNP", &DocumentOptions::new())
                        .await
                    {
                        Ok(_) => ok += 1,
                        Err(e) => failed.push(e),
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                (ok, failed)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.proc.signal("TERM");
    // NOT_SERVING (not unreachable: it still answers health), liveness still SERVING...
    let mut flipped = false;
    for _ in 0..200 {
        if let Ok(false) =
            documents_kit::health::healthcheck(&a.addr, documents_api::proto::PROVIDER_SERVICE_NAME)
                .await
        {
            flipped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        flipped,
        "health never turned NOT_SERVING:\n{}",
        a.proc.logs()
    );
    assert!(
        documents_kit::health::healthcheck(&a.addr, documents_kit::health::LIVENESS_SERVICE)
            .await
            .unwrap(),
        "liveness stays SERVING"
    );
    // ...and a caller that only now connects is still served.
    let late = a.client();
    let answer = late.get_document("ASX:GNP", &DocumentOptions::new()).await;
    assert!(
        answer.is_ok(),
        "a new connection in the grace period: {answer:?}"
    );
    let status = a
        .proc
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("exits after the grace and the drain");
    assert!(status.success(), "{status:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    poller.await.unwrap();
    let (mut ok, mut failed) = (0, Vec::new());
    for c in callers {
        let (o, f) = c.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    assert!(sent_to_a.load(Ordering::Relaxed) > 0 && ok > 0);
    assert!(
        failed.is_empty(),
        "{} of {} calls failed across the shutdown: {:?}",
        failed.len(),
        ok + failed.len(),
        failed.first()
    );
    assert!(a.proc.logs().contains("still serving for the grace period"));
}
