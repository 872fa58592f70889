//! Database faults under a steady load of mixed hits and fills: a PostgreSQL cluster of the
//! test's own stopped and killed, the provider's connections dropped with
//! `pg_terminate_backend`, and SQLite's write lock held by another process, briefly and past the
//! busy timeout. During a fault calls answer UNAVAILABLE (never a wrong answer, never a hang past
//! the deadline) and health turns NOT_SERVING; afterwards calls succeed again with no restart of
//! the services, every answer agrees with the database, and the invariants hold.

use std::time::{Duration, Instant};

use documents_api::{
    proto::{consumer::v1::ProcessTickersRequest, CONSUMER_SERVICE_NAME, PROVIDER_SERVICE_NAME},
    DocumentOptions, DocumentProvider, Outcome, ProviderClient,
};
use documents_store as storage;
use e2e::{
    harness::{
        age_document, invariants_within, ConsumerProc, Db, Exchange, PrivateCluster, Provider,
    },
    load::{Call, Calls, Load, Mix},
    record::Record,
};
use tonic::Code;

/// The deadline of the load's calls.
const DEADLINE: Duration = Duration::from_secs(5);

/// A short fill lease, so a lease left held by a fault is swept within seconds.
const LEASE: [(&str, &str); 1] = [("PROVIDER_FILL_LEASE_MS", "2000")];

/// How long after a fault the invariants may take to hold (lease sweep included).
const SETTLE: Duration = Duration::from_secs(10);

async fn wait_health(addr: &str, want: bool, within: Duration) -> Duration {
    wait_health_within(addr, PROVIDER_SERVICE_NAME, want, within).await
}

async fn wait_health_of(addr: &str, service: &str, want: bool) -> Duration {
    wait_health_within(addr, service, want, Duration::from_secs(30)).await
}

async fn wait_health_within(addr: &str, service: &str, want: bool, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let now = documents_kit::health::healthcheck(addr, service)
            .await
            .unwrap_or(false);
        if now == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "health never became {}",
            if want { "SERVING" } else { "NOT_SERVING" }
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const WARM: [&str; 6] = [
    "ASX:GNP",
    "ASX:BHP",
    "ASX:CBA",
    "ASX:S0001",
    "ASX:S0002",
    "ASX:S0003",
];

/// Creates the warm documents and starts the load on `client`.
async fn warm_and_load(client: &ProviderClient, fill_from: usize) -> Load {
    for id in WARM {
        client
            .get_document(id, &DocumentOptions::new())
            .await
            .unwrap_or_else(|e| panic!("warming {id}: {e:?}"));
    }
    let warm = WARM.iter().map(|s| s.to_string()).collect();
    Load::start(
        client.clone(),
        Mix::steady(warm, fill_from),
        6,
        Duration::from_millis(20),
    )
}

/// The checks every fault ends with: only `allowed` error codes, no call past the deadline, no
/// contradicting answer, every answer agrees with the database.
async fn assert_answers_sound(calls: &Calls, url: &str, allowed: &[Code]) {
    let unexpected = calls.unexpected(allowed);
    assert!(
        unexpected.is_empty(),
        "{}: {unexpected:#?}",
        calls.describe()
    );
    assert!(
        calls.max_latency() < DEADLINE + Duration::from_secs(1),
        "a call hung: {}",
        calls.describe()
    );
    // One replica: versions never go backwards.
    let wrong = calls.wrong_answers(Duration::ZERO);
    assert!(wrong.is_empty(), "{wrong:#?}");
    let store = storage::connect(url, 2).await.unwrap();
    let disagree = calls.disagreements_with(&*store).await;
    assert!(disagree.is_empty(), "{disagree:#?}");
}

#[derive(Clone, Copy, Debug)]
enum ClusterFault {
    Stop,
    Kill,
}

async fn cluster_fault_under_load(fault: ClusterFault) {
    let cluster = PrivateCluster::start();
    let ex = Exchange::start();
    let p = Provider::start(&cluster.url(), &ex.url, &LEASE).await;
    let consumer = ConsumerProc::start(&cluster.url(), &p.url(), &[]).await;
    let client = p.client().with_timeout(DEADLINE);
    let load = warm_and_load(&client, 100).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let down_at = load.now();
    match fault {
        ClusterFault::Stop => cluster.stop(),
        ClusterFault::Kill => cluster.kill(),
    }
    let noticed = wait_health(&p.addr, false, Duration::from_secs(15)).await;
    let not_serving_at = load.now();
    // The consumer refuses work at once too, saying why.
    wait_health_of(&consumer.addr, CONSUMER_SERVICE_NAME, false).await;
    let refused = consumer
        .client()
        .await
        .process_tickers(ProcessTickersRequest {
            tickers: vec!["ASX:GNP".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("database does not answer"),
        "{refused:?}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restart_at = load.now();
    cluster.restart();
    let up_at = load.now();
    let serving = wait_health(&p.addr, true, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let calls = load.stop().await;

    let during = calls.codes_between(down_at + noticed, up_at);
    assert!(
        during.get("Unavailable").copied().unwrap_or(0) > 0,
        "the outage was not seen: {during:?} {:#?}",
        calls
            .calls
            .iter()
            .filter(|c| c.started >= down_at)
            .take(40)
            .collect::<Vec<_>>()
    );
    // While health says NOT_SERVING, calls are refused at once by the database gate, not left
    // to wait on the pool.
    let gated: Vec<&Call> = calls
        .calls
        .iter()
        .filter(|c| c.started >= not_serving_at && c.started < restart_at)
        .collect();
    assert!(!gated.is_empty());
    for c in &gated {
        assert!(
            matches!(&c.answer, Err((Code::Unavailable, m)) if m.contains("database does not answer")),
            "{c:?}"
        );
    }
    assert_answers_sound(&calls, &cluster.url(), &[Code::Unavailable]).await;
    wait_health_of(&consumer.addr, CONSUMER_SERVICE_NAME, true).await;
    let settled = calls.settled_after(up_at).felt(&calls);
    assert!(
        settled < Duration::from_secs(10),
        "settled after {settled:?}"
    );
    let rows = invariants_within(&cluster.url(), SETTLE).await;

    let (case, test) = match fault {
        ClusterFault::Stop => (
            "PostgreSQL stopped for 3 s (pg_ctl stop -m fast), then started",
            "db_faults::stopped_database_under_load",
        ),
        ClusterFault::Kill => (
            "PostgreSQL killed (SIGKILL to the postmaster), then started after crash recovery",
            "db_faults::killed_database_under_load",
        ),
    };
    Record {
        class: "database".into(),
        case: case.into(),
        observed: format!(
            "health NOT_SERVING {} ms after the fault, SERVING {} ms after the start; calls during the outage UNAVAILABLE, none past the {} s deadline; no wrong ID or version",
            noticed.as_millis(),
            serving.as_millis(),
            DEADLINE.as_secs()
        ),
        sent: calls.calls.len(),
        outcomes: calls.by_code(),
        recovery_ms: Some(settled.as_millis() as u64),
        rows_checked: Some(rows),
        figures: [("slowest call ms".to_string(), calls.max_latency().as_millis().to_string())].into(),
        test: test.into(),
    }
    .save();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_database_under_load() {
    cluster_fault_under_load(ClusterFault::Stop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_database_under_load() {
    cluster_fault_under_load(ClusterFault::Kill).await;
}

/// Terminates every connection to the test's database but the caller's; answers how many.
async fn terminate_backends(admin: &sqlx::PgPool, database: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()) t",
    )
    .bind(database)
    .fetch_one(admin)
    .await
    .expect("pg_terminate_backend")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_under_load() {
    let db = Db::postgres();
    let ex = Exchange::start();
    let p = Provider::start(db.url(), &ex.url, &LEASE).await;
    let client = p.client().with_timeout(DEADLINE);
    let load = warm_and_load(&client, 200).await;
    let admin = sqlx::PgPool::connect(&e2e::harness::postgres_admin_url())
        .await
        .unwrap();
    let database = db.url().rsplit('/').next().unwrap().to_string();

    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut terminated = 0;
    let mut last_drop = chrono::Utc::now();
    for _ in 0..3 {
        terminated += terminate_backends(&admin, &database).await;
        // The database's clock, as pg_stat_activity's backend_start is.
        last_drop = sqlx::query_scalar("SELECT now()")
            .fetch_one(&admin)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let last_at = load.now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let calls = load.stop().await;
    assert!(
        terminated >= 3,
        "only {terminated} connections were dropped"
    );
    assert_answers_sound(&calls, db.url(), &[Code::Unavailable]).await;
    // Dropped connections may go unnoticed (idle ones are replaced); those that fail must
    // settle.
    let settled = match calls.settled_after(last_at) {
        e2e::load::Settled::NothingFailed => Duration::ZERO,
        e2e::load::Settled::After(d) => d,
        e2e::load::Settled::Never => panic!("calls never settled: {}", calls.describe()),
    };
    assert!(
        settled < Duration::from_secs(10),
        "settled after {settled:?}"
    );

    // The change feed reconnected: a LISTEN connection opened after the last drop exists (the
    // in-memory view would otherwise stay unused; reads from the database alone would still
    // see the outside change below).
    let listening_again = async {
        loop {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
                 AND query LIKE 'LISTEN%' AND backend_start > $2",
            )
            .bind(&database)
            .bind(last_drop)
            .fetch_one(&admin)
            .await
            .unwrap();
            if n > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(SETTLE, listening_again)
        .await
        .expect("the change feed never listened again after its connection was dropped");
    // And a change made elsewhere after the drops is seen.
    let before = client
        .get_document("ASX:GNP", &DocumentOptions::new())
        .await
        .unwrap();
    age_document(&db, "ASX:GNP:announcement", 30).await;
    let after = client
        .get_document("ASX:GNP", &DocumentOptions::new())
        .await
        .unwrap();
    assert_eq!(
        (after.outcome, after.version),
        (Outcome::Refreshed, before.version + 1),
        "the provider missed a change made after its connections were dropped"
    );
    let rows = invariants_within(db.url(), SETTLE).await;
    Record {
        class: "database".into(),
        case: "PostgreSQL connections dropped (pg_terminate_backend of all the provider's connections, 3 times, 1 s apart)".into(),
        observed: format!(
            "{terminated} connections dropped; failed calls UNAVAILABLE, none past the deadline; the change feed listened again (a new LISTEN connection) and an outside change was seen; no wrong ID or version"
        ),
        sent: calls.calls.len(),
        outcomes: calls.by_code(),
        recovery_ms: Some(settled.as_millis() as u64),
        rows_checked: Some(rows),
        figures: [("slowest call ms".to_string(), calls.max_latency().as_millis().to_string())].into(),
        test: "db_faults::dropped_connections_under_load".into(),
    }
    .save();
}

/// Holds SQLite's write lock from this process (another process than the providers) for `hold`.
async fn hold_write_lock(url: &str, hold: Duration) {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("UPDATE fill_leases SET token = token WHERE 0")
        .execute(&mut conn)
        .await
        .unwrap();
    tokio::time::sleep(hold).await;
    sqlx::query("COMMIT").execute(&mut conn).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_locked_by_another_process() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    // Two provider processes on one SQLite file, the load spread over both.
    let a = Provider::start(db.url(), &ex.url, &LEASE).await;
    let b = Provider::start(db.url(), &ex.url, &LEASE).await;
    let timeout = Duration::from_secs(15);
    let client = ProviderClient::with_config(
        &format!("{},{}", a.url(), b.url()),
        documents_api::ClientConfig {
            timeout,
            ..e2e::harness::test_client_config()
        },
    )
    .unwrap();
    let load = warm_and_load(&client, 300).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A lock shorter than the busy timeout is waited out: every call succeeds.
    let brief_from = load.now();
    hold_write_lock(db.url(), Duration::from_secs(2)).await;
    let brief_to = load.now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A lock past the busy timeout (10 s): writes fail UNAVAILABLE, then all succeed again.
    let long_from = load.now();
    hold_write_lock(db.url(), Duration::from_secs(12)).await;
    let released = load.now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let calls = load.stop().await;

    let brief = calls.codes_between(brief_from, brief_to);
    assert_eq!(brief.keys().collect::<Vec<_>>(), ["OK"], "{brief:?}");
    let long = calls.codes_between(long_from, released);
    assert!(
        long.get("Unavailable").copied().unwrap_or(0) > 0,
        "{long:?}"
    );
    let unexpected = calls.unexpected(&[Code::Unavailable]);
    assert!(unexpected.is_empty(), "{unexpected:#?}");
    assert!(
        calls.calls.iter().any(|c| c
            .answer
            .as_ref()
            .is_err_and(|(_, m)| m.contains("database is locked"))),
        "an error should say the database is locked: {:?}",
        calls.unexpected(&[])
    );
    assert!(calls.max_latency() < timeout, "{}", calls.describe());
    // Two replicas: no version older than one answered more than the cross-replica bound
    // (1 s) before.
    let wrong = calls.wrong_answers(Duration::from_secs(1));
    assert!(wrong.is_empty(), "{wrong:#?}");
    let store = storage::connect(db.url(), 2).await.unwrap();
    let disagree = calls.disagreements_with(&*store).await;
    assert!(disagree.is_empty(), "{disagree:#?}");
    let settled = calls.settled_after(released).felt(&calls);
    assert!(
        settled < Duration::from_secs(4),
        "settled after {settled:?}"
    );
    let rows = invariants_within(db.url(), SETTLE).await;
    Record {
        class: "database".into(),
        case: "SQLite write lock held by another process: 2 s, then 12 s (busy timeout 10 s); two provider processes on the file".into(),
        observed: format!(
            "2 s lock waited out ({:?}); 12 s lock: writes UNAVAILABLE \"database is locked\" after the busy timeout ({:?}); all OK again after release; no wrong ID or version",
            brief, long
        ),
        sent: calls.calls.len(),
        outcomes: calls.by_code(),
        recovery_ms: Some(settled.as_millis() as u64),
        rows_checked: Some(rows),
        figures: [("slowest call ms".to_string(), calls.max_latency().as_millis().to_string())].into(),
        test: "db_faults::sqlite_locked_by_another_process".into(),
    }
    .save();
}

/// Every pooled PostgreSQL connection carries a `statement_timeout`, so no statement (a lock
/// wait, a hung query) runs unbounded while a fill holds its permits.
#[tokio::test]
async fn pooled_connections_have_a_statement_timeout() {
    let db = Db::postgres();
    let store = documents_store::PostgresStore::connect(db.url(), 2)
        .await
        .unwrap();
    let timeout: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(timeout, documents_store::STATEMENT_TIMEOUT);
}

/// The provider's process runs as this user when the tests run as root (root writes any file,
/// whatever its mode).
const NOBODY: u32 = 65534;

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A read-only database: health NOT_SERVING naming the cause and calls UNAVAILABLE (retryable),
/// on both databases; on PostgreSQL, once writes are possible again, SERVING and every write
/// succeeding within seconds, without a restart (connections opened during the fault are
/// renewed).
async fn read_only_storage_recovers_without_restart(engine: &str) {
    let ex = Exchange::start();
    // SQLite: a file in a folder the provider's user can write, made read-only by its mode.
    let dir = tempfile::tempdir().unwrap();
    let db = if engine == "sqlite" {
        None
    } else {
        Some(Db::postgres())
    };
    let file = dir.path().join("documents.db");
    let url = match &db {
        Some(db) => db.url().to_string(),
        None => {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
            format!("sqlite://{}", file.display())
        }
    };
    let p = Provider::spawn_with(e2e::harness::ANY_PORT, &url, &ex.url, &LEASE, |cmd| {
        use std::os::unix::process::CommandExt;
        if db.is_none() && running_as_root() {
            cmd.uid(NOBODY).gid(NOBODY);
        }
    });
    wait_health(&p.addr, true, Duration::from_secs(30)).await;
    let c = p.client();
    // Every identifier answered, by code, as the record reports them.
    let mut tally: std::collections::BTreeMap<String, usize> = Default::default();
    let mut count = |code: Code| *tally.entry(format!("{code:?}")).or_default() += 1;
    c.get_document("ASX:GNP", &DocumentOptions::new())
        .await
        .unwrap();
    count(Code::Ok);

    // The fault.
    let set_mode = |mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    match &db {
        None => set_mode(0o444),
        Some(db) => {
            let name = db.url().rsplit('/').next().unwrap().to_string();
            db.execute(&format!(
                "ALTER DATABASE {name} SET default_transaction_read_only = on"
            ))
            .await
            .unwrap();
            // The provider's sessions start again, read-only.
            db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .await
            .unwrap();
        }
    }
    // SQLite: connections opened before the fault still write (their descriptors were opened
    // for writing); the health ping's probe, on a connection opened each time, sees the fault.
    let fault = Instant::now();
    let mut n = 0;
    while db.is_none()
        && documents_kit::health::healthcheck(&p.addr, PROVIDER_SERVICE_NAME)
            .await
            .unwrap_or(false)
    {
        assert!(
            fault.elapsed() < Duration::from_secs(30),
            "the read-only file was never noticed"
        );
        let batches = (0..8).map(|b| {
            let c = c.clone();
            let ids: Vec<String> = (0..4).map(|i| format!("ASX:R{n}{b}{i}")).collect();
            async move { c.get_documents(&ids, &DocumentOptions::new()).await }
        });
        for batch in futures::future::join_all(batches).await {
            match batch {
                Ok(results) => {
                    for r in results {
                        count(r.error.as_ref().map_or(Code::Ok, |e| e.code));
                    }
                }
                Err(e) => count(e.code()),
            }
        }
        n += 1;
    }
    wait_health(&p.addr, false, Duration::from_secs(15)).await;
    let noticed = fault.elapsed();
    let refused = c
        .get_document("ASX:BHP", &DocumentOptions::new())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    count(refused.code());
    count(refused.code());
    assert!(
        refused.message().contains("read-only") || refused.message().contains("cannot be written"),
        "the message names the cause: {}",
        refused.message()
    );
    assert!(
        p.proc.logs().contains("database unusable: not serving"),
        "{}",
        p.proc.logs()
    );

    // The fault ends; the provider mends itself.
    let ended = Instant::now();
    match &db {
        None => set_mode(0o644),
        Some(db) => {
            let name = db.url().rsplit('/').next().unwrap().to_string();
            // From the server's maintenance database: sessions on this one are read-only.
            let admin = sqlx::PgPool::connect(&e2e::harness::postgres_admin_url())
                .await
                .unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "ALTER DATABASE {name} RESET default_transaction_read_only"
            )))
            .execute(&admin)
            .await
            .unwrap();
        }
    }
    wait_health(&p.addr, true, Duration::from_secs(15)).await;
    let ids: Vec<String> = (1..=12).map(|i| format!("ASX:S{i:04}")).collect();
    let results = c
        .get_documents(&ids, &DocumentOptions::new())
        .await
        .unwrap();
    let written = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(written, 12, "every write after the fault: {results:#?}");
    for r in &results {
        count(r.error.as_ref().map_or(Code::Ok, |e| e.code));
    }
    let recovery = ended.elapsed();
    let rows = e2e::harness::invariants_within(&url, SETTLE).await;
    Record {
        class: "database".into(),
        case: format!("{engine}: the database turns read-only, then writable again"),
        observed: format!(
            "NOT_SERVING {} ms after the fault, calls UNAVAILABLE naming it; SERVING and 12 of 12 new documents written {} ms after it ended, no restart",
            noticed.as_millis(),
            recovery.as_millis()
        ),
        sent: tally.values().sum(),
        outcomes: tally,
        recovery_ms: Some(recovery.as_millis() as u64),
        rows_checked: Some(rows),
        test: format!("db_faults::read_only_{engine}_storage_recovers_without_restart"),
        ..Default::default()
    }
    .save();
}

#[tokio::test]
async fn read_only_sqlite_storage_recovers_without_restart() {
    read_only_storage_recovers_without_restart("sqlite").await
}

#[tokio::test]
async fn read_only_postgres_storage_recovers_without_restart() {
    read_only_storage_recovers_without_restart("postgres").await
}
