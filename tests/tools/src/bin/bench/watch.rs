//! Scenario 12, watching: the time from a commit to a watcher being told of it (WatchDocuments),
//! with 1 and 1,000 watchers of one document on one replica, on PostgreSQL and on SQLite, and
//! the memory each watcher costs. The baseline is the database's own announcement of the same
//! commits to a bare client (PostgreSQL: LISTEN on the changes channel; SQLite: `PRAGMA
//! data_version` read every 100 ms, the feed's own cadence). Targets (issue 30): p99 <= 50 ms on
//! PostgreSQL, <= 250 ms on SQLite.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use documents_api::proto::documents::v1::{
    document_provider_client::DocumentProviderClient, EventType, GetDocumentRequest,
    WatchDocumentsRequest,
};
use e2e::harness::{Db, Exchange, Provider};

use super::{channels, Load, Row};

/// Commits timed per run, and the pause between them (longer than SQLite's 100 ms feed tick,
/// so every commit is its own event and none is conflated).
const COMMITS: usize = 40;
const SPACING: Duration = Duration::from_millis(150);

const UPDATE: &str =
    "UPDATE documents SET version = version + 1 WHERE source_id = 'ASX:GNP:announcement'";

/// When each version was committed (the instant before its UPDATE was sent).
type Committed = Arc<Mutex<HashMap<i64, Instant>>>;

pub async fn run(ex: &Exchange, env: &[(&str, &str)], rows: &mut Vec<Row>) -> anyhow::Result<()> {
    for (db, target_ms) in [(Db::postgres(), 50.0), (Db::sqlite(), 250.0)] {
        let engine = db.engine();
        let provider = Provider::start(db.url(), &ex.url, env).await;
        let pid = provider.proc.pid();
        let mut c = DocumentProviderClient::connect(provider.url()).await?;
        c.get_document(GetDocumentRequest {
            identifier: "ASX:GNP".into(),
            ..Default::default()
        })
        .await?;
        // The document is at version 1; every commit below raises it by one.
        let mut version = 1;
        let baseline = bare_announcements(&db, &mut version).await?;
        for watchers in [1usize, 1_000] {
            let chans = channels(&provider.url(), 8).await;
            let before = e2e::procfs::rss_mb(pid);
            let committed: Committed = Arc::default();
            let received = Arc::new(Mutex::new(Vec::<u64>::new()));
            let mut readers = Vec::with_capacity(watchers);
            for i in 0..watchers {
                let mut c = DocumentProviderClient::new(chans[i % chans.len()].clone());
                let mut s = c
                    .watch_documents(WatchDocumentsRequest {
                        identifiers: vec!["ASX:GNP".into()],
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                let (committed, received) = (committed.clone(), received.clone());
                readers.push(tokio::spawn(async move {
                    while let Ok(Some(e)) = s.message().await {
                        let at = Instant::now();
                        if e.r#type() == EventType::Refreshed {
                            if let Some(t0) = committed.lock().unwrap().get(&e.version) {
                                let us = at.duration_since(*t0).as_micros() as u64;
                                received.lock().unwrap().push(us);
                            }
                        }
                    }
                }));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let per_watcher_kb = (e2e::procfs::rss_mb(pid) - before) * 1024.0 / watchers as f64;
            let started = Instant::now();
            commit_timed(&db, &committed, &mut version).await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let elapsed = started.elapsed();
            readers.iter().for_each(|r| r.abort());
            let mut latencies = std::mem::take(&mut *received.lock().unwrap());
            latencies.sort_unstable();
            let told = Load {
                calls: latencies.len(),
                errors: COMMITS * watchers - latencies.len(),
                elapsed,
                latencies_us: latencies,
            };
            let p99 = told.pct(0.99).unwrap_or(f64::NAN);
            rows.push(Row {
                scenario: format!("12 watch commit->watcher, {watchers} ({engine})"),
                rate: p99,
                unit: "ms p99",
                p50_ms: told.pct(0.5),
                p99_ms: told.pct(0.99),
                cpu: None,
                rss_mb: Some(e2e::procfs::rss_mb(pid)),
                baseline: format!("bare announcement ({engine})"),
                baseline_rate: baseline.pct(0.99).unwrap_or(f64::NAN),
                note: format!(
                    "{} of {} events told; {per_watcher_kb:.1} KB per watcher; target p99 <= {target_ms} ms: {}",
                    told.calls,
                    COMMITS * watchers,
                    if p99 <= target_ms { "met" } else { "NOT met" }
                ),
            });
        }
        rows.push(Row {
            scenario: format!("  baseline bare announcement ({engine})"),
            rate: baseline.pct(0.99).unwrap_or(f64::NAN),
            unit: "ms p99",
            p50_ms: baseline.pct(0.5),
            p99_ms: baseline.pct(0.99),
            cpu: None,
            rss_mb: None,
            baseline: "-".into(),
            baseline_rate: baseline.pct(0.99).unwrap_or(f64::NAN),
            note: if db.is_postgres() {
                "LISTEN documents_changed on a connection of its own".into()
            } else {
                "PRAGMA data_version every 100 ms on a connection of its own".into()
            },
        });
    }
    Ok(())
}

/// Commits `COMMITS` refreshes by SQL on a connection opened beforehand, `SPACING` apart,
/// noting the instant each UPDATE was sent (its commit follows at once: autocommit); `version`
/// is the document's version before, and after.
async fn commit_timed(db: &Db, committed: &Committed, version: &mut i64) -> anyhow::Result<()> {
    use sqlx::Connection;
    enum Conn {
        Pg(sqlx::PgConnection),
        Lite(sqlx::SqliteConnection),
    }
    let mut conn = if db.is_postgres() {
        Conn::Pg(sqlx::PgConnection::connect(db.url()).await?)
    } else {
        Conn::Lite(sqlx::SqliteConnection::connect(db.url()).await?)
    };
    for _ in 0..COMMITS {
        *version += 1;
        committed.lock().unwrap().insert(*version, Instant::now());
        match &mut conn {
            Conn::Pg(c) => {
                sqlx::query(UPDATE).execute(c).await?;
            }
            Conn::Lite(c) => {
                sqlx::query(UPDATE).execute(c).await?;
            }
        }
        tokio::time::sleep(SPACING).await;
    }
    Ok(())
}

/// The database's own announcements of `COMMITS` commits to a bare client.
async fn bare_announcements(db: &Db, version: &mut i64) -> anyhow::Result<Load> {
    let committed: Committed = Arc::default();
    let received = Arc::new(Mutex::new(Vec::<u64>::new()));
    let (c, r) = (committed.clone(), received.clone());
    let url = db.url().to_string();
    let postgres = db.is_postgres();
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let listener = tokio::spawn(async move {
        if postgres {
            let mut l = sqlx::postgres::PgListener::connect(&url).await?;
            l.listen("documents_changed").await?;
            let _ = ready_tx.send(());
            loop {
                let n = l.recv().await?;
                let at = Instant::now();
                let version = n.payload().rsplit(' ').next().and_then(|v| v.parse().ok());
                if let Some(t0) = version.and_then(|v: i64| c.lock().unwrap().get(&v).copied()) {
                    r.lock()
                        .unwrap()
                        .push(at.duration_since(t0).as_micros() as u64);
                }
            }
        } else {
            use sqlx::Connection;
            let mut conn = sqlx::SqliteConnection::connect(&url).await?;
            let mut seen: Option<i64> = None;
            let _ = ready_tx.send(());
            loop {
                let v: i64 = sqlx::query_scalar("PRAGMA data_version")
                    .fetch_one(&mut conn)
                    .await?;
                let at = Instant::now();
                if seen.is_some_and(|s| s != v) {
                    // The newest commit sent is the one announced.
                    if let Some(t0) = c.lock().unwrap().values().max().copied() {
                        r.lock()
                            .unwrap()
                            .push(at.duration_since(t0).as_micros() as u64);
                    }
                }
                seen = Some(v);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        #[allow(unreachable_code)]
        anyhow::Ok(())
    });
    let _ = ready.await;
    let started = Instant::now();
    commit_timed(db, &committed, version).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    listener.abort();
    let mut latencies = std::mem::take(&mut *received.lock().unwrap());
    latencies.sort_unstable();
    Ok(Load {
        calls: latencies.len(),
        errors: 0,
        elapsed: started.elapsed(),
        latencies_us: latencies,
    })
}
