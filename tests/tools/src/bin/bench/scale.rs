//! Scenario 9, the scaling model's inputs: on a PostgreSQL cluster of its own with
//! `pg_stat_statements`, the database statements of a hit (with and without the hit view), a
//! miss, a refresh and a coalesced wait, the NOTIFY traffic of a refresh, the connections of a
//! replica; then the hit and miss rates with 1, 2 and 4 provider replicas on that one database.

use std::{sync::Arc, time::Duration};

use documents_api::{DocumentOptions, DocumentProvider, ProviderClient};
use e2e::harness::{Exchange, PrivateCluster, Provider};
use sample_exchange::Control;
use sqlx::PgPool;

use super::{channels, hit_caller, ids, load, Args, Row};

/// Statements the database has run, but the counting queries themselves.
async fn statements(admin: &PgPool) -> f64 {
    sqlx::query_scalar::<_, f64>(
        "SELECT coalesce(sum(calls), 0)::float8 FROM pg_stat_statements \
         WHERE query NOT LIKE '%pg_stat_statements%' AND query NOT LIKE '%pg_stat_activity%'",
    )
    .fetch_one(admin)
    .await
    .expect("pg_stat_statements")
}

/// Statements per call of `calls` calls made by `run`, less the replicas' own background
/// statements (health pings, heartbeats, sweeps) at `background` per second.
async fn per_call<F: std::future::Future<Output = ()>>(
    admin: &PgPool,
    background: f64,
    calls: usize,
    run: F,
) -> f64 {
    let before = statements(admin).await;
    let started = std::time::Instant::now();
    run.await;
    let elapsed = started.elapsed().as_secs_f64();
    ((statements(admin).await - before - background * elapsed) / calls as f64).max(0.0)
}

/// Calls `f(i)` for i in 0..n, 16 at a time.
async fn calls<F, Fut>(n: usize, f: F)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use futures::StreamExt;
    futures::stream::iter((0..n).map(f))
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
}

fn row(scenario: String, rate: f64, unit: &'static str, note: String) -> Row {
    Row {
        scenario,
        rate,
        unit,
        p50_ms: None,
        p99_ms: None,
        cpu: None,
        rss_mb: None,
        baseline: "itself".into(),
        baseline_rate: rate,
        note,
    }
}

pub async fn run(
    args: &Args,
    ex: &Exchange,
    env: &[(&str, &str)],
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let cluster = PrivateCluster::start_with(
        "-c shared_preload_libraries=pg_stat_statements -c max_connections=200",
    );
    let url = cluster.url();
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await?;
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(&admin)
        .await?;
    let opts = DocumentOptions::new();
    let one = Provider::start(&url, &ex.url, env).await;
    let c = one.client();
    // Background: what an idle replica runs per second.
    let before = statements(&admin).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let background = (statements(&admin).await - before) / 3.0;

    // A miss: 200 new documents, one call each.
    let miss = ids(0, 200);
    let per_miss = per_call(
        &admin,
        background,
        200,
        calls(200, |i| {
            let (c, id, opts) = (c.clone(), miss[i].clone(), opts.clone());
            async move {
                c.get_document(&id, &opts).await.expect("miss");
            }
        }),
    )
    .await;
    // A hit from the view.
    let per_hit = per_call(
        &admin,
        background,
        5000,
        calls(5000, |i| {
            let (c, id, opts) = (c.clone(), miss[i % 200].clone(), opts.clone());
            async move {
                c.get_document(&id, &opts).await.expect("hit");
            }
        }),
    )
    .await;
    // A refresh, and the NOTIFY traffic it makes (counted by a listener of the bench's own).
    let mut listener = sqlx::postgres::PgListener::connect(&url).await?;
    listener.listen("documents_changed").await?;
    let notified = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counting = {
        let notified = notified.clone();
        tokio::spawn(async move {
            while let Ok(n) = listener.recv().await {
                if !n.payload().starts_with('~') {
                    notified.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        })
    };
    let refresh = DocumentOptions::new().force_refresh(true);
    let per_refresh = per_call(
        &admin,
        background,
        200,
        calls(200, |i| {
            let (c, id, refresh) = (c.clone(), miss[i].clone(), refresh.clone());
            async move {
                c.get_document(&id, &refresh).await.expect("refresh");
            }
        }),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    counting.abort();
    let notifies = notified.load(std::sync::atomic::Ordering::Relaxed) as f64 / 200.0;
    // A coalesced wait: 50 callers of one new document while its fill takes 200 ms, less the
    // one miss among them.
    ex.control(&Control {
        latency_ms: 200,
        ..Control::default()
    })
    .await;
    let waiters = per_call(&admin, background, 49, async {
        let target = "ASX:S0900".to_string();
        calls(50, |_| {
            let (c, id, opts) = (c.clone(), target.clone(), opts.clone());
            async move {
                c.get_document(&id, &opts).await.expect("coalesced");
            }
        })
        .await;
    })
    .await;
    let per_wait = (waiters * 49.0 - per_miss).max(0.0) / 49.0;
    ex.control(&Control::default()).await;
    // A hit without the view (PROVIDER_HIT_CACHE=false): the lookup every hit makes.
    let mut no_view_env = env.to_vec();
    no_view_env.push(("PROVIDER_HIT_CACHE", "false"));
    let no_view = Provider::start(&url, &ex.url, &no_view_env).await;
    let nv = no_view.client();
    let per_lookup = per_call(
        &admin,
        background * 2.0,
        2000,
        calls(2000, |i| {
            let (c, id, opts) = (nv.clone(), miss[i % 200].clone(), opts.clone());
            async move {
                c.get_document(&id, &opts).await.expect("hit without view");
            }
        }),
    )
    .await;
    drop(no_view);
    let connections: f64 = sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
    )
    .fetch_one(&admin)
    .await? as f64
        - 1.0;
    for (what, v, note) in [
        (
            "a hit from the view",
            per_hit,
            "5,000 hits on 200 documents",
        ),
        (
            "a hit without the view",
            per_lookup,
            "PROVIDER_HIT_CACHE=false, 2,000 hits",
        ),
        (
            "a miss (fill)",
            per_miss,
            "200 new documents, one call each",
        ),
        ("a refresh", per_refresh, "200 force_refresh calls"),
        ("a coalesced wait", per_wait, "49 callers joining one fill"),
    ] {
        rows.push(row(
            format!("9 statements per call: {what}"),
            v,
            "statements",
            format!("{note}; background {background:.1}/s subtracted"),
        ));
    }
    rows.push(row(
        "9 NOTIFY per refresh".into(),
        notifies,
        "notifies",
        "each delivered to every listening replica".into(),
    ));
    rows.push(row(
        "9 connections of one replica".into(),
        connections,
        "connections",
        "after the loads above: the pool's, and the change feed's LISTEN".into(),
    ));
    drop(c);
    drop(one);

    // Rates with 1, 2 and 4 replicas on the one database: hits spread over the replicas, and
    // misses (batches of 20 new documents) likewise.
    let duration = Duration::from_secs(args.duration_secs);
    let mut base = (0.0, 0.0);
    for (replicas, series) in [(1usize, 'M'), (2, 'N'), (4, 'P')] {
        let providers: Vec<Provider> =
            futures::future::join_all((0..replicas).map(|_| Provider::start(&url, &ex.url, env)))
                .await;
        let clients: Arc<Vec<ProviderClient>> =
            Arc::new(providers.iter().map(|p| p.client()).collect());
        // Hits as scenario 1 makes them: generated stubs over two connections per replica.
        let mut chans = Vec::new();
        for p in &providers {
            chans.extend(channels(&p.url(), 2).await);
        }
        let chans = Arc::new(chans);
        let hot: Arc<Vec<String>> = Arc::new(ids(0, 200));
        let hits = load(args.concurrency, duration, hit_caller(chans, hot)).await;
        let cs = clients.clone();
        let misses = load(8, duration, move |t, i| {
            let c = cs[t % cs.len()].clone();
            // New codes of this run's own series (each run its own documents).
            let batch: Vec<String> = (0..20)
                .map(|k| format!("ASX:{series}{:05}", (i * 20 + k) % 100_000))
                .collect();
            async move {
                c.get_documents(&batch, &DocumentOptions::new())
                    .await
                    .is_ok()
            }
        })
        .await;
        let (hit_rate, miss_rate) = (hits.rate(), misses.rate() * 20.0);
        if replicas == 1 {
            base = (hit_rate, miss_rate);
        }
        for (what, rate, unit, b) in [
            ("hits", hit_rate, "calls/s", base.0),
            ("misses", miss_rate, "fills/s", base.1),
        ] {
            rows.push(Row {
                scenario: format!("9 {what}, {replicas} replica(s)"),
                rate,
                unit,
                p50_ms: if what == "hits" {
                    hits.pct(0.5)
                } else {
                    misses.pct(0.5)
                },
                p99_ms: if what == "hits" {
                    hits.pct(0.99)
                } else {
                    misses.pct(0.99)
                },
                cpu: None,
                rss_mb: None,
                baseline: "1 replica".into(),
                baseline_rate: b,
                note: format!(
                    "{} errors; one database, all on this machine",
                    if what == "hits" {
                        hits.errors
                    } else {
                        misses.errors
                    }
                ),
            });
        }
    }
    admin.close().await;
    drop(cluster);
    Ok(())
}
