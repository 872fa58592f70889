//! Rolling upgrades and rollbacks, on both databases: today's binaries keep serving a schema one
//! compatible (expand) migration ahead of them, as a replica of the previous release does during
//! a rolling deploy; they refuse a schema whose compatibility marker names a migration they do
//! not know (NOT_SERVING, a message naming both versions); and they serve again, without a
//! restart, once the marker is rolled back.

use std::time::{Duration, Instant};

use documents_api::proto::{
    consumer::v1::ProcessTickersRequest, CONSUMER_SERVICE_NAME, PROVIDER_SERVICE_NAME,
};
use documents_kit::health::healthcheck;
use e2e::{
    harness::{wait_serving, ConsumerProc, Db, Exchange, Provider},
    on_both_databases,
};

/// Runs `sql` (statements separated by `;`) on `db`.
async fn exec(db: &Db, sql: &str) {
    for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        db.execute(statement).await.unwrap();
    }
}

/// Records a migration this release does not know, as a newer release's binary would.
async fn apply_future_migration(db: &Db, version: i64, ddl: &str) {
    let checksum = if db.is_postgres() {
        "decode('00', 'hex')"
    } else {
        "X'00'"
    };
    exec(
        db,
        &format!(
            "{ddl}; INSERT INTO _sqlx_migrations \
             (version, description, success, checksum, execution_time) \
             VALUES ({version}, 'a newer release', TRUE, {checksum}, 0)"
        ),
    )
    .await;
}

/// Waits until `logs()` contains every piece of `want`.
async fn wait_for_log(logs: impl Fn() -> String, want: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = logs();
        if want.iter().all(|w| text.contains(w)) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "log never said {want:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn newer_schemas_compatible_or_refused(db: Db) {
    let ex = Exchange::start();
    // The current release migrates the database, then a newer release's expand migration runs.
    drop(Provider::start(db.url(), &ex.url, &[]).await);
    apply_future_migration(&db, 99_990, "CREATE TABLE future_feature (x INTEGER)").await;

    // Today's binaries serve it: the provider (which migrates) and the consumer (which checks).
    let provider = Provider::start(db.url(), &ex.url, &[]).await;
    let consumer =
        ConsumerProc::start(db.url(), &provider.url(), &[("DATABASE_MIGRATE", "false")]).await;
    let report = consumer
        .client()
        .await
        .process_tickers(ProcessTickersRequest {
            tickers: vec!["ASX:GNP".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .reports
        .remove(0);
    assert!(report.status.is_none(), "{report:?}");
    drop(consumer);
    drop(provider);

    // A contract migration: binaries that do not know 99991 must not run.
    apply_future_migration(&db, 99_991, "DROP TABLE future_feature").await;
    exec(
        &db,
        "UPDATE schema_compatibility SET oldest_compatible = 99991 WHERE id = 1",
    )
    .await;
    let provider = Provider::spawn(db.url(), &ex.url, &[]);
    let logs = wait_for_log(
        || provider.proc.logs(),
        &["migration 99991", "deploy a newer binary"],
    )
    .await;
    assert!(
        logs.contains("knows migrations up to"),
        "the message names this binary's version too: {logs}"
    );
    assert!(!healthcheck(&provider.addr, PROVIDER_SERVICE_NAME)
        .await
        .unwrap());

    // Rolled back (the marker restored): it serves again, no restart.
    exec(
        &db,
        "UPDATE schema_compatibility SET oldest_compatible = 1 WHERE id = 1",
    )
    .await;
    wait_serving(&provider.addr, PROVIDER_SERVICE_NAME, &provider.proc).await;
    let consumer =
        ConsumerProc::start(db.url(), &provider.url(), &[("DATABASE_MIGRATE", "false")]).await;
    assert!(healthcheck(&consumer.addr, CONSUMER_SERVICE_NAME)
        .await
        .unwrap());
}

on_both_databases!(newer_schemas_compatible_or_refused);
