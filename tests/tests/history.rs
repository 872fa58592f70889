//! A history checker: a randomized, bounded workload against real provider replicas sharing one
//! database, with faults, every call recorded with its start and end, then the whole history
//! checked against the consistency model (README "Guarantees"):
//! - one document ID per (kind, source key), unless that document was deleted;
//! - for one ID, no answer carries a version lower than one answered by a call that ended more
//!   than the bound (1 s) before it began;
//! - no hit is older than the caller's window (`last_synced` within `cache_hours`);
//! - no deleted ID is answered by a call that began more than the bound after the delete;
//! - upstream fetches match the versions written (coalescing: no fetch without its write, but
//!   for fills cut by a killed replica).
//!
//! Workload: 4 callers over 3 replicas, both kinds, `cache_hours` 0/1/24, forced refreshes;
//! beside them SQL deletes and agings, and faults: on PostgreSQL a replica's change-feed backend
//! frozen (SIGSTOP) and its connections terminated; on both a replica SIGKILLed and restarted.
//! `HISTORY_SECS` sets the length (default 30 s per database here; `scripts/history` runs it
//! longer). A listing request per announcement fill is expected (at most two: a fill may ask
//! two years).

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use documents_api::{DocumentOptions, DocumentProvider, Kind, Outcome};
use e2e::{
    harness::{Db, Exchange, Provider, EOD_PATH, LISTING_PATH},
    on_both_databases,
};
use rand::{Rng, SeedableRng};

const BOUND: Duration = Duration::from_secs(1);
const CODES: [&str; 6] = ["GNP", "BHP", "CBA", "S0001", "S0002", "S0003"];

#[derive(Debug, Clone)]
struct Call {
    start: Instant,
    end: Instant,
    replica: usize,
    kind: Kind,
    source_id: String,
    cache_hours: u32,
    /// (document ID, version, outcome, last_synced) when answered.
    answer: Option<(String, i64, Outcome, chrono::DateTime<chrono::Utc>)>,
}

#[derive(Debug, Clone)]
struct Deleted {
    at: Instant,
    source_id: String,
    kind: String,
    id: String,
    version: i64,
}

fn seconds() -> u64 {
    std::env::var("HISTORY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30)
}

/// Runs `sql` on the database at `url` with `when` bound to its one parameter (if any) and
/// answers the (source_type, source_id, id, version) of the rows it returned.
async fn exec(
    is_pg: bool,
    url: &str,
    sql: &str,
    when: chrono::DateTime<chrono::Utc>,
) -> Vec<(String, String, String, i64)> {
    if is_pg {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let sql = sql.replace('?', "$1");
        sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .bind(when)
            .fetch_all(&pool)
            .await
            .unwrap_or_default()
    } else {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        let sql = sql.replace('?', "?1");
        sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .bind(when)
            .fetch_all(&pool)
            .await
            .unwrap_or_default()
    }
}

async fn consistent_under_faults(db: Db) {
    let ex = Exchange::start();
    let env = [
        ("PROVIDER_FILL_LEASE_MS", "1500"),
        ("PROVIDER_NEGATIVE_CACHE_MS", "0"),
    ];
    let replicas: Arc<Mutex<Vec<Option<Provider>>>> = Arc::new(Mutex::new(Vec::new()));
    let mut addrs = Vec::new();
    for _ in 0..3 {
        let p = Provider::start(db.url(), &ex.url, &env).await;
        addrs.push(p.addr.clone());
        replicas.lock().unwrap().push(Some(p));
    }
    let clients: Vec<_> = addrs
        .iter()
        .map(|a| {
            documents_api::ProviderClient::with_config(
                &format!("http://{a}"),
                documents_api::ClientConfig {
                    timeout: Duration::from_secs(10),
                    retries: 0,
                    ..e2e::harness::test_client_config()
                },
            )
            .unwrap()
        })
        .collect();
    let span = Duration::from_secs(seconds());
    let began = Instant::now();
    let end = began + span;
    let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
    let deleted: Arc<Mutex<Vec<Deleted>>> = Arc::default();

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
                let opts = DocumentOptions::new()
                    .kind(kind)
                    .cache_hours(cache_hours)
                    .force_refresh(force);
                let start = Instant::now();
                let r = clients[replica].get_document(code, &opts).await;
                let answer = r.ok().filter(|r| r.is_ok()).map(|r| {
                    (
                        r.document_id,
                        r.version,
                        r.outcome,
                        r.last_synced.expect("last_synced"),
                    )
                });
                calls.lock().unwrap().push(Call {
                    start,
                    end: Instant::now(),
                    replica,
                    kind,
                    source_id: format!("ASX:{code}:{}", kind.as_str()),
                    cache_hours,
                    answer,
                });
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..20))).await;
            }
        }));
    }
    // Deletes and agings from outside the services.
    {
        let (url, deleted) = (db.url().to_string(), deleted.clone());
        let is_pg = db.is_postgres();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(99);
            while Instant::now() + Duration::from_secs(2) < end {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let code = CODES[rng.random_range(0..CODES.len())];
                let two_hours_ago = chrono::Utc::now() - chrono::Duration::hours(2);
                if rng.random_bool(0.5) {
                    let sql = format!(
                        "DELETE FROM documents WHERE source_id = 'ASX:{code}:announcement' \
                         AND last_synced > ? RETURNING source_type, source_id, id, version"
                    );
                    let rows =
                        exec(is_pg, &url, &sql, two_hours_ago - chrono::Duration::days(1)).await;
                    let at = Instant::now();
                    for (kind, source_id, id, version) in rows {
                        deleted.lock().unwrap().push(Deleted {
                            at,
                            source_id,
                            kind,
                            id,
                            version,
                        });
                    }
                } else {
                    let sql = format!(
                        "UPDATE documents SET last_synced = ? \
                         WHERE source_id = 'ASX:{code}:announcement' \
                         RETURNING source_type, source_id, id, version"
                    );
                    exec(is_pg, &url, &sql, two_hours_ago).await;
                }
            }
        }));
    }
    // Faults.
    let kills = {
        let (replicas, db_url, upstream) = (replicas.clone(), db.url().to_string(), ex.url.clone());
        let addr = addrs[1].clone();
        let is_pg = db.is_postgres();
        tokio::spawn(async move {
            tokio::time::sleep(span / 4).await;
            if is_pg {
                // Freeze every LISTEN backend for 3 s (a hung backend, a stalled network).
                let admin = sqlx::PgPool::connect(&db_url).await.unwrap();
                let pids: Vec<i32> = sqlx::query_scalar(
                    "SELECT pid FROM pg_stat_activity \
                     WHERE datname = current_database() AND query LIKE 'LISTEN%'",
                )
                .fetch_all(&admin)
                .await
                .unwrap();
                for pid in &pids {
                    let _ = Command::new("kill")
                        .args(["-STOP", &pid.to_string()])
                        .status();
                }
                tokio::time::sleep(Duration::from_secs(3)).await;
                for pid in &pids {
                    let _ = Command::new("kill")
                        .args(["-CONT", &pid.to_string()])
                        .status();
                }
                // Then drop every connection of the database once.
                let _ = sqlx::query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = current_database() AND pid <> pg_backend_pid()",
                )
                .execute(&admin)
                .await;
            }
            tokio::time::sleep(span / 4).await;
            // SIGKILL a replica mid-traffic, then start it again on its address.
            let killed = replicas.lock().unwrap()[1].take();
            if let Some(p) = &killed {
                p.proc.signal("KILL");
            }
            drop(killed);
            tokio::time::sleep(Duration::from_secs(1)).await;
            let p = Provider::start_at(&addr, &db_url, &upstream, &env).await;
            replicas.lock().unwrap()[1] = Some(p);
            1usize
        })
    };
    for t in tasks {
        t.await.unwrap();
    }
    let killed_replicas = kills.await.unwrap();
    let calls = calls.lock().unwrap().clone();
    let deleted = deleted.lock().unwrap().clone();
    let answered: Vec<&Call> = calls.iter().filter(|c| c.answer.is_some()).collect();
    assert!(
        answered.len() > 100,
        "too few answers to judge: {} of {}",
        answered.len(),
        calls.len()
    );
    let mut violations = Vec::new();
    let deleted_ids: BTreeSet<&str> = deleted.iter().map(|d| d.id.as_str()).collect();

    // 1. One ID per key, unless deleted.
    let mut ids: BTreeMap<(String, Kind), BTreeSet<&str>> = BTreeMap::new();
    for c in &answered {
        let (id, ..) = c.answer.as_ref().unwrap();
        ids.entry((c.source_id.clone(), c.kind))
            .or_default()
            .insert(id.as_str());
    }
    for (key, set) in &ids {
        let live: Vec<_> = set
            .iter()
            .filter(|id| !deleted_ids.contains(**id))
            .collect();
        if live.len() > 1 {
            violations.push(format!("{key:?} answered with IDs {live:?}, none deleted"));
        }
    }
    // 2. No version backwards (per ID) beyond the bound.
    let mut by_id: BTreeMap<&str, Vec<&Call>> = BTreeMap::new();
    for c in &answered {
        by_id
            .entry(c.answer.as_ref().unwrap().0.as_str())
            .or_default()
            .push(c);
    }
    for (id, list) in &by_id {
        for a in list {
            for b in list {
                let (va, vb) = (a.answer.as_ref().unwrap().1, b.answer.as_ref().unwrap().1);
                if b.start >= a.end + BOUND && vb < va {
                    violations.push(format!(
                        "{id}: v{vb} answered by replica {} at +{} ms after v{va} was answered (ended +{} ms)",
                        b.replica,
                        (b.start - began).as_millis(),
                        (a.end - began).as_millis()
                    ));
                }
            }
        }
    }
    // 3. No hit older than the caller's window.
    for c in &answered {
        let (id, v, outcome, synced) = c.answer.as_ref().unwrap();
        if *outcome == Outcome::Hit {
            let age = chrono::Utc::now()
                - *synced
                - chrono::Duration::from_std(Instant::now() - c.end).unwrap();
            if age
                > chrono::Duration::hours(i64::from(c.cache_hours)) + chrono::Duration::seconds(2)
            {
                violations.push(format!(
                    "{id} v{v}: hit {} old for a {}-hour window",
                    age, c.cache_hours
                ));
            }
        }
    }
    // 4. No deleted ID after the delete plus the bound.
    for d in &deleted {
        for c in &answered {
            let (id, ..) = c.answer.as_ref().unwrap();
            if *id == d.id && c.start >= d.at + BOUND {
                violations.push(format!(
                    "deleted {} ({} {}) answered at +{} ms, deleted at +{} ms",
                    d.id,
                    d.kind,
                    d.source_id,
                    (c.start - began).as_millis(),
                    (d.at - began).as_millis()
                ));
            }
        }
    }
    // 5. Upstream fetches against versions written: each announcement fill asks the listing
    // for 2 years, each market-data fill the EOD API once; fills cut by the killed replica may
    // have fetched without writing (at most one per caller in flight).
    let store = db.store().await;
    let mut written = BTreeMap::<&str, i64>::new();
    for code in CODES {
        for kind in [Kind::Announcement, Kind::MarketData] {
            let sid = format!("ASX:{code}:{}", kind.as_str());
            let now = store
                .get_by_source(kind.as_str(), &sid)
                .await
                .unwrap()
                .map_or(0, |d| d.version);
            let gone: i64 = deleted
                .iter()
                .filter(|d| d.source_id == sid)
                .map(|d| d.version)
                .sum();
            *written.entry(kind.as_str()).or_default() += now + gone;
        }
    }
    let stats = ex.stats().await;
    let fetched = |prefix: &str| -> i64 {
        stats
            .by_path
            .iter()
            .filter(|(p, _)| p.starts_with(prefix))
            .map(|(_, n)| *n as i64)
            .sum()
    };
    let slack = 4 * killed_replicas as i64;
    let (listing, eod) = (fetched(LISTING_PATH), fetched(EOD_PATH));
    if listing > 2 * (written["announcement"] + slack) {
        violations.push(format!(
            "{listing} listing requests for {} announcement versions written",
            written["announcement"]
        ));
    }
    if eod > written["market_data"] + slack {
        violations.push(format!(
            "{eod} market-data requests for {} versions written",
            written["market_data"]
        ));
    }
    assert!(
        violations.is_empty(),
        "{} violations in {} calls ({} answered), {} deletes:\n{}",
        violations.len(),
        calls.len(),
        answered.len(),
        deleted.len(),
        violations.join("\n")
    );
    let engine = db.engine();
    e2e::record::Record {
        class: "consistency".into(),
        case: format!(
            "history: 4 callers over 3 replicas for {} s, both kinds, cache_hours 0/1/24 and forced refreshes; SQL deletes and agings; {}a replica SIGKILLed and restarted ({engine})",
            span.as_secs(),
            if db.is_postgres() {
                "every LISTEN backend frozen 3 s, then all connections terminated; "
            } else {
                ""
            }
        ),
        observed: "no second ID for a key but after a delete; no version lower than one answered more than 1 s before; no hit older than its window; no deleted ID answered more than 1 s after the delete; upstream fetches within the versions written".into(),
        sent: calls.len(),
        outcomes: [
            ("answered".to_string(), answered.len()),
            ("failed".to_string(), calls.len() - answered.len()),
        ]
        .into(),
        recovery_ms: None,
        rows_checked: None,
        figures: [
            ("deletes".to_string(), deleted.len().to_string()),
            (
                "versions written (announcement / market data)".to_string(),
                format!("{} / {}", written["announcement"], written["market_data"]),
            ),
            (
                "upstream requests (listing / EOD)".to_string(),
                format!("{listing} / {eod}"),
            ),
        ]
        .into(),
        test: format!("history::consistent_under_faults::{engine}"),
    }
    .save();
}

on_both_databases!(consistent_under_faults);
