//! The history checker (`e2e::history`) run against real processes:
//!
//! - **The full workload**, with every mechanism on and the services' default settings, on both
//!   databases: four callers over three provider replicas (both kinds, `cache_hours` 0/1/24,
//!   forced refreshes), two consumer replicas running rounds, deletes, agings and purges beside
//!   them, and faults: on PostgreSQL every change-feed backend frozen (SIGSTOP) and then every
//!   connection terminated; on both a replica SIGKILLed and restarted. It must find nothing.
//! - **Each mechanism switched off** (the `test-switches` feature, which only this crate
//!   enables), with a short workload aimed at what the mechanism prevents, on one database: the
//!   checker must find violations, and the same workload with the mechanism on must find none.
//!
//! `HISTORY_SECS` sets the full workload's length (default 30 s; `scripts/history` runs longer).

use std::{
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use documents_api::{
    proto::{
        consumer::v1::{consumer_client::ConsumerClient, ProcessTickersRequest},
        documents::v1::{
            document_provider_client::DocumentProviderClient, EventType,
            InvalidateDocumentsRequest, WatchDocumentsRequest, WatchPosition,
        },
    },
    DocumentOptions, DocumentProvider, Kind, ProviderClient,
};
use e2e::{
    harness::{ConsumerProc, Db, Exchange, Provider, LISTING_PATH, PDF_PATH},
    history::{self, Answer, CallRecord, Faults, Fetch, History, Outside, WatchRecord},
    on_both_databases,
};
use rand::{Rng, SeedableRng};
use sample_exchange::Control;

const CODES: [&str; 6] = ["GNP", "BHP", "CBA", "S0001", "S0002", "S0003"];

fn seconds() -> u64 {
    std::env::var("HISTORY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30)
}

/// A client per replica, no retries (the history is of what each call got).
fn clients(addrs: &[String]) -> Vec<ProviderClient> {
    addrs
        .iter()
        .map(|a| {
            ProviderClient::with_config(
                &format!("http://{a}"),
                documents_api::ClientConfig {
                    timeout: Duration::from_secs(15),
                    retries: 0,
                    ..e2e::harness::test_client_config()
                },
            )
            .unwrap()
        })
        .collect()
}

type Calls = Arc<Mutex<Vec<CallRecord>>>;

/// Watches the announcements of every code on the replica at `addr` until `until`, recording
/// every event, and watching again with `since` after every end (a killed replica, a frozen
/// feed, a dropped connection).
async fn watch_recorded(addr: String, until: Instant) -> WatchRecord {
    let identifiers: Vec<String> = CODES.iter().map(|c| format!("ASX:{c}")).collect();
    let mut record = WatchRecord {
        replica: addr.clone(),
        watched: identifiers
            .iter()
            .map(|i| format!("{i}:announcement"))
            .collect(),
        ..Default::default()
    };
    let mut since: std::collections::BTreeMap<String, WatchPosition> = Default::default();
    let deadline = tokio::time::Instant::from_std(until);
    'watch: while Instant::now() < until {
        let request = WatchDocumentsRequest {
            identifiers: identifiers.clone(),
            kind: "announcement".into(),
            send_initial: since.is_empty(),
            since: since.values().cloned().collect(),
            ..Default::default()
        };
        let opened = async {
            let mut c = DocumentProviderClient::connect(format!("http://{addr}"))
                .await
                .ok()?;
            c.watch_documents(request).await.ok()
        };
        if let Ok(Some(events)) = tokio::time::timeout_at(deadline, opened).await {
            let mut events = events.into_inner();
            loop {
                match tokio::time::timeout_at(deadline, events.message()).await {
                    Err(_) => break 'watch,
                    Ok(Ok(Some(e))) if e.r#type() == EventType::Heartbeat => {}
                    Ok(Ok(Some(e))) => {
                        let sid = format!("{}:announcement", e.identifier);
                        if e.r#type() == EventType::Deleted {
                            since.remove(&e.identifier);
                        } else {
                            since.insert(
                                e.identifier.clone(),
                                WatchPosition {
                                    identifier: e.identifier.clone(),
                                    document_id: e.document_id.clone(),
                                    version: e.version,
                                },
                            );
                        }
                        let kind = e.r#type().as_str_name().to_string();
                        record.events.push((sid, e.document_id, e.version, kind));
                    }
                    Ok(_) => break,
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    record.stopped = Utc::now();
    record
}

/// One call, recorded with its wall-clock start and end, options and answer or code.
async fn call(
    calls: &Calls,
    client: &ProviderClient,
    replica: usize,
    code: &str,
    kind: Kind,
    cache_hours: u32,
    force: bool,
) {
    let opts = DocumentOptions::new()
        .kind(kind)
        .cache_hours(cache_hours)
        .force_refresh(force);
    let start = Utc::now();
    let r = client.get_document(code, &opts).await;
    let end = Utc::now();
    let result = match r {
        Ok(r) if r.is_ok() => Ok(Answer {
            id: r.document_id,
            version: r.version,
            outcome: format!("{:?}", r.outcome),
        }),
        Ok(r) => Err(format!(
            "{:?}",
            r.error.map(|e| e.code).unwrap_or(tonic::Code::Unknown)
        )),
        Err(s) => Err(format!("{:?}", s.code())),
    };
    calls.lock().unwrap().push(CallRecord {
        replica,
        kind: kind.as_str().into(),
        source_id: format!("ASX:{code}:{}", kind.as_str()),
        cache_hours,
        force,
        start,
        end,
        result,
    });
}

/// What the exchange saw: every fetch of a document, and the PDF requests.
async fn upstream(ex: &Exchange, h: &mut History) {
    let stats = ex.stats().await;
    h.fetches = stats
        .log
        .iter()
        .filter_map(|l| {
            history::document_of(&l.path).map(|document| Fetch {
                document,
                at_ms: l.at_ms,
                end_ms: l.end_ms,
                // traceparent: version-traceid-spanid-flags.
                trace: l
                    .traceparent
                    .as_deref()
                    .and_then(|t| t.split('-').nth(1))
                    .map(str::to_string),
            })
        })
        .collect();
    h.pdfs = stats
        .by_request
        .into_iter()
        .filter(|(p, _)| p.starts_with(PDF_PATH))
        .collect();
}

/// A change made beside the services, recorded with the times around it.
async fn outside<F: std::future::Future<Output = ()>>(
    log: &Arc<Mutex<Vec<Outside>>>,
    what: &'static str,
    source_id: String,
    change: F,
) {
    let before = Utc::now();
    change.await;
    let after = Utc::now();
    log.lock().unwrap().push(Outside {
        what,
        source_id,
        before,
        after,
    });
}

/// Runs `sql` on the database (`?` is its one parameter, a time).
async fn exec(is_pg: bool, url: &str, sql: &str, when: DateTime<Utc>) {
    if is_pg {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let sql = sql.replace('?', "$1");
        let _ = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(when)
            .execute(&pool)
            .await;
    } else {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        let sql = sql.replace('?', "?1");
        let _ = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(when)
            .execute(&pool)
            .await;
    }
}

/// The PIDs of the database's LISTEN backends.
async fn listen_backends(url: &str) -> Vec<i32> {
    let admin = sqlx::PgPool::connect(url).await.unwrap();
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
         AND query LIKE 'LISTEN%'",
    )
    .fetch_all(&admin)
    .await
    .unwrap()
}

fn signal(pids: &[i32], sig: &str) {
    for pid in pids {
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status();
    }
}

/// Provider replicas on `db`, the first started (and so migrated) before the audit trigger is
/// installed, the others after.
async fn replicas(db: &Db, ex: &Exchange, envs: &[Vec<(&str, &str)>]) -> Vec<Provider> {
    let mut all = vec![Provider::start(db.url(), &ex.url, &envs[0]).await];
    history::install_audit(db.url()).await;
    for env in &envs[1..] {
        all.push(Provider::start(db.url(), &ex.url, env).await);
    }
    all
}

/// Checks the history, writes its record, and answers the violations.
async fn finish(
    db: &Db,
    ex: &Exchange,
    mut h: History,
    case: String,
    test: String,
    extra: Vec<(String, String)>,
) -> Vec<String> {
    upstream(ex, &mut h).await;
    h.audit = history::read_audit(db.url()).await;
    let violations = h.check();
    let answered = h.calls.iter().filter(|c| c.result.is_ok()).count();
    let mut outcomes = std::collections::BTreeMap::new();
    for c in &h.calls {
        let key = match &c.result {
            Ok(a) => a.outcome.clone(),
            Err(code) => code.clone(),
        };
        *outcomes.entry(key).or_default() += 1;
    }
    let mut figures: std::collections::BTreeMap<String, String> = [
        ("violations".to_string(), violations.len().to_string()),
        ("answered".to_string(), answered.to_string()),
        (
            "row versions audited".to_string(),
            h.audit.len().to_string(),
        ),
        ("upstream fetches".to_string(), h.fetches.len().to_string()),
        (
            "deletes / agings / purges".to_string(),
            ["delete", "age", "purge"]
                .map(|w| h.outside.iter().filter(|o| o.what == w).count().to_string())
                .join(" / "),
        ),
        (
            "faults: frozen / terminated / killed / consumers paused".to_string(),
            format!(
                "{} / {} / {} / {}",
                h.faults.frozen, h.faults.terminated, h.faults.killed, h.faults.consumers_paused
            ),
        ),
        (
            "consumer rounds (failed)".to_string(),
            format!("{} ({})", h.rounds.0, h.rounds.1),
        ),
        (
            "watchers (events told)".to_string(),
            format!(
                "{} ({})",
                h.watches.len(),
                h.watches.iter().map(|w| w.events.len()).sum::<usize>()
            ),
        ),
    ]
    .into();
    figures.extend(extra);
    if let Some(first) = violations.first() {
        figures.insert("first violation".into(), first.clone());
    }
    e2e::record::Record {
        class: "consistency".into(),
        case,
        observed: if violations.is_empty() {
            "every promise kept".into()
        } else {
            format!("{} violations found", violations.len())
        },
        sent: h.calls.len(),
        outcomes,
        test,
        figures,
        ..Default::default()
    }
    .save();
    violations
}

async fn consistent_under_faults(db: Db) {
    let ex = Exchange::start();
    let span = Duration::from_secs(seconds());
    let is_pg = db.is_postgres();
    let providers = replicas(&db, &ex, &[vec![], vec![], vec![]]).await;
    let addrs: Vec<String> = providers.iter().map(|p| p.addr.clone()).collect();
    let providers: Arc<Mutex<Vec<Option<Provider>>>> =
        Arc::new(Mutex::new(providers.into_iter().map(Some).collect()));
    let urls: Vec<String> = addrs.iter().map(|a| format!("http://{a}")).collect();
    let consumers = [
        ConsumerProc::start(db.url(), &urls.join(","), &[]).await,
        ConsumerProc::start(db.url(), &urls.join(","), &[]).await,
    ];
    let clients = clients(&addrs);
    let end = Instant::now() + span;
    // A watcher on each replica, until the writes have settled after the workload.
    let watchers: Vec<_> = addrs
        .iter()
        .map(|a| tokio::spawn(watch_recorded(a.clone(), end + Duration::from_secs(5))))
        .collect();
    let calls: Calls = Arc::default();
    let changes: Arc<Mutex<Vec<Outside>>> = Arc::default();
    let rounds: Arc<Mutex<(usize, usize)>> = Arc::default();
    let mut tasks = Vec::new();
    for seed in 0..4u64 {
        let (clients, calls) = (clients.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            while Instant::now() < end {
                let replica = rng.random_range(0..clients.len());
                let code = CODES[rng.random_range(0..CODES.len())];
                let kind = if rng.random_bool(0.7) {
                    Kind::Announcement
                } else {
                    Kind::MarketData
                };
                let cache_hours = [0, 1, 24, 24, 24][rng.random_range(0..5)];
                let force = rng.random_bool(0.1);
                call(
                    &calls,
                    &clients[replica],
                    replica,
                    code,
                    kind,
                    cache_hours,
                    force,
                )
                .await;
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..20))).await;
            }
        }));
    }
    // Two consumer replicas running rounds of three tickers.
    for (i, c) in consumers.iter().enumerate() {
        let mut client = c.client().await;
        let rounds = rounds.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(50 + i as u64);
            while Instant::now() < end {
                let ticker = ["ASX:GNP", "ASX:BHP", "ASX:CBA"][rng.random_range(0..3)];
                let r = client
                    .process_tickers(ProcessTickersRequest {
                        tickers: vec![ticker.into()],
                        ..Default::default()
                    })
                    .await;
                let failed = !r.is_ok_and(|r| r.into_inner().reports[0].status.is_none());
                {
                    let mut n = rounds.lock().unwrap();
                    n.0 += 1;
                    n.1 += usize::from(failed);
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(500..1500))).await;
            }
        }));
    }
    // Deletes, agings and purges beside the services.
    {
        let (url, changes, addrs) = (db.url().to_string(), changes.clone(), addrs.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(99);
            while Instant::now() + Duration::from_secs(2) < end {
                tokio::time::sleep(Duration::from_millis(1_000)).await;
                let code = CODES[rng.random_range(0..CODES.len())];
                let kind = if rng.random_bool(0.7) {
                    "announcement"
                } else {
                    "market_data"
                };
                let sid = format!("ASX:{code}:{kind}");
                match rng.random_range(0..10) {
                    0..=2 => {
                        let sql = format!(
                            "DELETE FROM documents WHERE source_id = '{sid}' AND last_synced > ?"
                        );
                        outside(
                            &changes,
                            "delete",
                            sid,
                            exec(is_pg, &url, &sql, Utc::now() - chrono::Duration::days(9)),
                        )
                        .await
                    }
                    3..=5 => {
                        let sql = format!(
                            "UPDATE documents SET last_synced = ? WHERE source_id = '{sid}'"
                        );
                        outside(
                            &changes,
                            "age",
                            sid,
                            exec(is_pg, &url, &sql, Utc::now() - chrono::Duration::hours(2)),
                        )
                        .await
                    }
                    _ => {
                        let replica = rng.random_range(0..addrs.len());
                        let mut c =
                            DocumentProviderClient::connect(format!("http://{}", addrs[replica]))
                                .await;
                        let purge = InvalidateDocumentsRequest {
                            identifiers: vec![format!("ASX:{code}")],
                            kind: kind.into(),
                            ..Default::default()
                        };
                        outside(&changes, "purge", sid, async {
                            if let Ok(c) = c.as_mut() {
                                let _ = c.invalidate_documents(purge).await;
                            }
                        })
                        .await
                    }
                }
            }
        }));
    }
    // Faults, counted as they happen.
    let faults = {
        let (providers, db_url, upstream) =
            (providers.clone(), db.url().to_string(), ex.url.clone());
        let addr = addrs[1].clone();
        tokio::spawn(async move {
            let mut f = Faults::default();
            tokio::time::sleep(span / 4).await;
            if is_pg {
                // Every LISTEN backend frozen for 3 s (a hung backend, a stalled network).
                let pids = listen_backends(&db_url).await;
                signal(&pids, "STOP");
                f.frozen = pids.len();
                tokio::time::sleep(Duration::from_secs(3)).await;
                signal(&pids, "CONT");
                // Then every connection of the database dropped once.
                let admin = sqlx::PgPool::connect(&db_url).await.unwrap();
                let dropped: Vec<bool> = sqlx::query_scalar(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = current_database() AND pid <> pg_backend_pid()",
                )
                .fetch_all(&admin)
                .await
                .unwrap_or_default();
                f.terminated = dropped.iter().filter(|d| **d).count();
            }
            tokio::time::sleep(span / 4).await;
            // A replica SIGKILLed mid-traffic, then started again on its address.
            let killed = providers.lock().unwrap()[1].take();
            if let Some(p) = &killed {
                p.proc.signal("KILL");
                f.killed += 1;
            }
            drop(killed);
            tokio::time::sleep(Duration::from_secs(1)).await;
            let p = Provider::start_at(&addr, &db_url, &upstream, &[]).await;
            providers.lock().unwrap()[1] = Some(p);
            f
        })
    };
    for t in tasks {
        t.await.unwrap();
    }
    let mut faults = faults.await.unwrap();
    faults.expected = if is_pg {
        vec!["frozen", "terminated", "killed", "rounds", "outside"]
    } else {
        vec!["killed", "rounds", "outside"]
    };
    let mut watches = Vec::new();
    for w in watchers {
        watches.push(w.await.unwrap());
    }
    let h = History {
        calls: calls.lock().unwrap().clone(),
        outside: changes.lock().unwrap().clone(),
        faults,
        rounds: *rounds.lock().unwrap(),
        watches,
        ..History::default()
    };
    assert!(
        h.calls.iter().filter(|c| c.result.is_ok()).count() > 100,
        "too few answers to judge: {}",
        h.calls.len()
    );
    let engine = db.engine();
    let violations = finish(
        &db,
        &ex,
        h,
        format!(
            "history, every mechanism on, default settings ({engine}): 4 callers over 3 provider \
             replicas for {} s, both kinds, cache_hours 0/1/24, forced refreshes; 2 consumer \
             replicas running rounds; deletes, agings and purges; {}a replica SIGKILLed and \
             restarted",
            span.as_secs(),
            if is_pg {
                "every LISTEN backend frozen 3 s, then every connection terminated; "
            } else {
                ""
            }
        ),
        format!("history::consistent_under_faults::{engine}"),
        Vec::new(),
    )
    .await;
    assert!(
        violations.is_empty(),
        "{} violations:\n{}",
        violations.len(),
        violations.join("\n")
    );
    e2e::harness::assert_invariants(&db).await;
}

on_both_databases!(consistent_under_faults);

/// One of the short workloads aimed at a mechanism, run with it switched off and then on. The
/// checker must find violations with it off (how many is recorded) and none with it on.
/// Runs each targeted workload on these databases: the test's own choice, or
/// `HISTORY_ENGINES` (`sqlite`, `postgres` or `both`; `scripts/history` runs both).
fn engines(default: &'static str) -> Vec<&'static str> {
    match std::env::var("HISTORY_ENGINES").as_deref() {
        Ok("both") => vec!["sqlite", "postgres"],
        Ok("sqlite") => vec!["sqlite"],
        Ok("postgres") => vec!["postgres"],
        _ => vec![default],
    }
}

async fn off_then_on<F, Fut>(
    test: &str,
    engine: &'static str,
    switch: &'static str,
    what: &str,
    workload: F,
) where
    F: Fn(Db, Vec<(&'static str, &'static str)>) -> Fut,
    Fut: std::future::Future<Output = (Db, Exchange, History)>,
{
    for engine in engines(engine) {
        off_then_on_at(test, engine, switch, what, &workload).await;
    }
}

async fn off_then_on_at<F, Fut>(
    test: &str,
    engine: &str,
    switch: &'static str,
    what: &str,
    workload: &F,
) where
    F: Fn(Db, Vec<(&'static str, &'static str)>) -> Fut,
    Fut: std::future::Future<Output = (Db, Exchange, History)>,
{
    // The binaries under test must have the switches (the test crate's feature): a build of
    // one package alone (`cargo build -p provider-service`) has none.
    for binary in ["provider-service", "consumer-service"] {
        let bytes = std::fs::read(e2e::harness::bin(binary)).unwrap();
        assert!(
            bytes
                .windows(27)
                .any(|w| w == b"DOCUMENTS_TEST_SWITCHES_OFF"),
            "{binary} was built without the test-switches feature: build the workspace \
             (`cargo nextest run --workspace`, as scripts/test does)"
        );
    }
    let mut found = Vec::new();
    for off in [true, false] {
        let db = if engine == "postgres" {
            Db::postgres()
        } else {
            Db::sqlite()
        };
        let env = if off {
            vec![("DOCUMENTS_TEST_SWITCHES_OFF", switch)]
        } else {
            vec![]
        };
        let (db, ex, h) = workload(db, env).await;
        let state = if off { "off" } else { "on" };
        let violations = finish(
            &db,
            &ex,
            h,
            format!("history, {what} ({engine}): {switch} switched {state}"),
            format!("history::{test}::{engine}::{state}"),
            Vec::new(),
        )
        .await;
        eprintln!(
            "{test}, {switch} {state}: {} violations{}",
            violations.len(),
            violations
                .first()
                .map(|v| format!(", the first: {v}"))
                .unwrap_or_default()
        );
        found.push(violations);
    }
    assert!(
        !found[0].is_empty(),
        "with {switch} off the checker found nothing: it cannot see what {switch} prevents"
    );
    assert!(
        found[1].is_empty(),
        "with {switch} on: {} violations:\n{}",
        found[1].len(),
        found[1].join("\n")
    );
}

/// Many callers asking for documents that keep disappearing (deleted every 400 ms), on
/// `replicas` replicas, for six seconds: misses that meet at the same document at once.
async fn misses_at_once(
    db: Db,
    env: Vec<(&'static str, &'static str)>,
    replicas_n: usize,
) -> (Db, Exchange, History) {
    let ex = Exchange::start();
    ex.control(&e2e::harness::delayed(LISTING_PATH, 300)).await;
    let envs = vec![env; replicas_n];
    let providers = replicas(&db, &ex, &envs).await;
    let addrs: Vec<String> = providers.iter().map(|p| p.addr.clone()).collect();
    let clients = clients(&addrs);
    let calls: Calls = Arc::default();
    let changes: Arc<Mutex<Vec<Outside>>> = Arc::default();
    let end = Instant::now() + Duration::from_secs(6);
    let mut tasks = Vec::new();
    for seed in 0..6u64 {
        let (clients, calls) = (clients.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            while Instant::now() < end {
                let replica = rng.random_range(0..clients.len());
                let code = ["GNP", "BHP"][rng.random_range(0..2)];
                call(
                    &calls,
                    &clients[replica],
                    replica,
                    code,
                    Kind::Announcement,
                    24,
                    false,
                )
                .await;
            }
        }));
    }
    {
        let (url, changes, is_pg) = (db.url().to_string(), changes.clone(), db.is_postgres());
        tasks.push(tokio::spawn(async move {
            while Instant::now() + Duration::from_millis(500) < end {
                tokio::time::sleep(Duration::from_millis(400)).await;
                for code in ["GNP", "BHP"] {
                    let sid = format!("ASX:{code}:announcement");
                    let sql = format!(
                        "DELETE FROM documents WHERE source_id = '{sid}' AND last_synced > ?"
                    );
                    outside(
                        &changes,
                        "delete",
                        sid,
                        exec(is_pg, &url, &sql, Utc::now() - chrono::Duration::days(9)),
                    )
                    .await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let h = History {
        calls: calls.lock().unwrap().clone(),
        outside: changes.lock().unwrap().clone(),
        faults: Faults {
            expected: vec!["outside"],
            ..Faults::default()
        },
        ..History::default()
    };
    drop(providers);
    (db, ex, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalescing_across_replicas_is_what_keeps_fills_single() {
    off_then_on(
        "coalescing_across_replicas_is_what_keeps_fills_single",
        "postgres",
        documents_kit::switches::COALESCE_ACROSS_REPLICAS,
        "misses on three replicas at once",
        |db, env| misses_at_once(db, env, 3),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalescing_in_the_process_is_what_keeps_fills_single() {
    off_then_on(
        "coalescing_in_the_process_is_what_keeps_fills_single",
        "sqlite",
        documents_kit::switches::COALESCE_IN_PROCESS,
        "misses on one replica at once",
        |db, env| misses_at_once(db, env, 1),
    )
    .await;
}

/// A replica whose view may hold entries for 10 s (a legitimate setting: then its heartbeat is
/// what bounds staleness) answers one document while another replica refreshes it every 300 ms
/// and the first replica's change feed is frozen three times for 1.8 s.
async fn frozen_feed(db: Db, env: Vec<(&'static str, &'static str)>) -> (Db, Exchange, History) {
    let ex = Exchange::start();
    let mut viewer_env = env.clone();
    viewer_env.push(("PROVIDER_HIT_CACHE_MAX_AGE_MS", "10000"));
    let providers = replicas(
        &db,
        &ex,
        &[viewer_env, vec![("PROVIDER_HIT_CACHE", "false")]],
    )
    .await;
    let addrs: Vec<String> = providers.iter().map(|p| p.addr.clone()).collect();
    let clients = clients(&addrs);
    let calls: Calls = Arc::default();
    let end = Instant::now() + Duration::from_secs(8);
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let (c, calls) = (clients[0].clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                call(&calls, &c, 0, "GNP", Kind::Announcement, 24, false).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    {
        let (c, calls) = (clients[1].clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                call(&calls, &c, 1, "GNP", Kind::Announcement, 24, true).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }));
    }
    let frozen = {
        let url = db.url().to_string();
        tokio::spawn(async move {
            let mut n = 0;
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(800)).await;
                let pids = listen_backends(&url).await;
                signal(&pids, "STOP");
                n += pids.len();
                tokio::time::sleep(Duration::from_millis(1_800)).await;
                signal(&pids, "CONT");
            }
            n
        })
    };
    for t in tasks {
        t.await.unwrap();
    }
    let frozen = frozen.await.unwrap();
    let h = History {
        calls: calls.lock().unwrap().clone(),
        faults: Faults {
            frozen,
            expected: vec!["frozen"],
            ..Faults::default()
        },
        ..History::default()
    };
    drop(providers);
    (db, ex, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feeds_heartbeat_is_what_bounds_staleness() {
    // PostgreSQL only: SQLite's feed is a poll of the file, nothing to freeze.
    off_then_on_at(
        "the_feeds_heartbeat_is_what_bounds_staleness",
        "postgres",
        documents_kit::switches::FEED_HEARTBEAT,
        "a frozen change feed while another replica refreshes",
        &frozen_feed,
    )
    .await;
}

/// A forced refresh on replica A at a slow upstream (2.5 s), a purge through replica B 300 ms
/// into its fetch, and callers on A 1.4 s after the purge, who join A's running fill; twice.
async fn purge_during_fetch(
    db: Db,
    env: Vec<(&'static str, &'static str)>,
) -> (Db, Exchange, History) {
    let ex = Exchange::start();
    let providers = replicas(&db, &ex, &[env.clone(), env]).await;
    let addrs: Vec<String> = providers.iter().map(|p| p.addr.clone()).collect();
    let clients = clients(&addrs);
    let calls: Calls = Arc::default();
    let changes: Arc<Mutex<Vec<Outside>>> = Arc::default();
    call(&calls, &clients[0], 0, "GNP", Kind::Announcement, 24, false).await;
    ex.control(&e2e::harness::delayed(LISTING_PATH, 2_500))
        .await;
    for _ in 0..2 {
        let refresh = {
            let (c, calls) = (clients[0].clone(), calls.clone());
            tokio::spawn(
                async move { call(&calls, &c, 0, "GNP", Kind::Announcement, 24, true).await },
            )
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut b = DocumentProviderClient::connect(format!("http://{}", addrs[1]))
            .await
            .unwrap();
        outside(&changes, "purge", "ASX:GNP:announcement".into(), async {
            b.invalidate_documents(InvalidateDocumentsRequest {
                identifiers: vec!["ASX:GNP".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        })
        .await;
        tokio::time::sleep(Duration::from_millis(1_400)).await;
        let joiners: Vec<_> = (0..3)
            .map(|_| {
                let (c, calls) = (clients[0].clone(), calls.clone());
                tokio::spawn(async move {
                    call(&calls, &c, 0, "GNP", Kind::Announcement, 24, false).await
                })
            })
            .collect();
        refresh.await.unwrap();
        for j in joiners {
            j.await.unwrap();
        }
    }
    let h = History {
        calls: calls.lock().unwrap().clone(),
        outside: changes.lock().unwrap().clone(),
        faults: Faults {
            expected: vec!["outside"],
            ..Faults::default()
        },
        ..History::default()
    };
    drop(providers);
    (db, ex, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetching_again_is_what_keeps_a_purge_purged() {
    off_then_on(
        "fetching_again_is_what_keeps_a_purge_purged",
        "postgres",
        documents_kit::switches::PURGE_REFETCH,
        "a purge while a fill is at a slow upstream, callers joining the fill after it",
        purge_during_fetch,
    )
    .await;
}

/// Two consumers, one PDF at a time each; the first is paused (SIGSTOP) in the middle of its
/// round, past its lease; the second runs the round; the first resumes.
async fn paused_round(db: Db, env: Vec<(&'static str, &'static str)>) -> (Db, Exchange, History) {
    let ex = Exchange::start();
    let providers = replicas(&db, &ex, &[vec![("ANNOUNCEMENT_YEARS", "2")]]).await;
    providers[0]
        .client()
        .get_document("ASX:GNP", &DocumentOptions::new())
        .await
        .unwrap();
    use chrono::Datelike;
    let yy = Utc::now().year().rem_euclid(100);
    let slow = format!("{PDF_PATH}?display=pdf&idsId=00000{yy:02}08");
    ex.control(&Control {
        delay_ms: [(slow.clone(), 2_000)].into(),
        ..Default::default()
    })
    .await;
    let mut consumer_env = env.clone();
    consumer_env.push(("CONSUMER_DOWNLOAD_CONCURRENCY", "1"));
    let a = ConsumerProc::start(db.url(), &providers[0].url(), &consumer_env).await;
    let b = ConsumerProc::start(db.url(), &providers[0].url(), &consumer_env).await;
    let round = |mut c: ConsumerClient<tonic::transport::Channel>| async move {
        c.process_tickers(ProcessTickersRequest {
            tickers: vec!["ASX:GNP".into()],
            ..Default::default()
        })
        .await
        .is_ok_and(|r| r.into_inner().reports[0].status.is_none())
    };
    let first = tokio::spawn(round(a.client().await));
    ex.wait_for_requests(&slow, 1).await;
    a.proc.signal("STOP");
    let second = round(b.client().await).await;
    a.proc.signal("CONT");
    let first = first.await.unwrap();
    let h = History {
        faults: Faults {
            consumers_paused: 1,
            expected: vec!["consumers_paused", "rounds"],
            ..Faults::default()
        },
        rounds: (2, usize::from(!first) + usize::from(!second)),
        ..History::default()
    };
    drop((a, b, providers));
    (db, ex, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_fencing_is_what_keeps_each_pdf_fetched_once() {
    off_then_on(
        "round_fencing_is_what_keeps_each_pdf_fetched_once",
        "postgres",
        documents_kit::switches::ROUND_FENCING,
        "a consumer paused mid-round past its lease while another takes the round over",
        paused_round,
    )
    .await;
}
