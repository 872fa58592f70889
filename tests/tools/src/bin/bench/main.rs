//! The benchmark: starts the sample exchange and provider (and consumer) as separate processes
//! on a fresh PostgreSQL database, runs each scenario with its baseline in the same run, and
//! prints one table. Build in release first:
//!
//! ```sh
//! cargo build --release --workspace --bins && target/release/bench
//! ```

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use clap::Parser;

mod scale;
mod watch;
use documents_api::{
    proto::{
        consumer::v1::ProcessTickersRequest,
        documents::v1::{
            document_provider_client::DocumentProviderClient, DocumentOptions, GetDocumentRequest,
            GetDocumentsRequest, Outcome,
        },
    },
    DocumentProvider,
};
use e2e::{
    harness::{ConsumerProc, Db, Exchange, Provider, LISTING_PATH},
    procfs::measured,
};
use sample_exchange::Control;
use tonic::transport::Channel;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "bench",
    about = "Benchmarks the provider (and consumer) against baselines measured in the same run"
)]
struct Args {
    /// Seconds each timed scenario runs.
    #[arg(long, default_value_t = 5)]
    duration_secs: u64,
    /// Seconds of warm-up before each timed scenario.
    #[arg(long, default_value_t = 1)]
    warmup_secs: u64,
    /// Calls in flight for the hit path.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// gRPC connections the calls are spread over.
    #[arg(long, default_value_t = 4)]
    channels: usize,
    /// Connections of the raw sqlx baseline's pool.
    #[arg(long, default_value_t = 16)]
    db_pool: u32,
    /// Scenarios to run, comma-separated: hit, sqlite, startup, scale, swr, batch, fanout,
    /// coalesce, consumer, watch.
    #[arg(
        long,
        default_value = "hit,sqlite,startup,scale,swr,batch,fanout,coalesce,consumer,watch"
    )]
    scenarios: String,
    /// Alternating slices the hit path and its health-check baseline are measured in.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Extra environment for the provider, KEY=VALUE, repeatable (e.g. PROVIDER_HIT_CACHE=false).
    #[arg(long = "provider-env")]
    provider_env: Vec<String>,
}

/// One line of the table.
struct Row {
    scenario: String,
    rate: f64,
    unit: &'static str,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    cpu: Option<f64>,
    rss_mb: Option<f64>,
    baseline: String,
    baseline_rate: f64,
    note: String,
}

impl Row {
    fn ratio(&self) -> f64 {
        self.rate / self.baseline_rate
    }
}

/// Latencies and count of a load run.
struct Load {
    calls: usize,
    errors: usize,
    elapsed: Duration,
    latencies_us: Vec<u64>,
}

impl Load {
    fn empty() -> Self {
        Load {
            calls: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            latencies_us: Vec::new(),
        }
    }

    /// Adds another run of the same scenario.
    fn merge(&mut self, other: Load) {
        self.calls += other.calls;
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        self.latencies_us.extend(other.latencies_us);
        self.latencies_us.sort_unstable();
    }

    fn rate(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }
    fn pct(&self, p: f64) -> Option<f64> {
        if self.latencies_us.is_empty() {
            return None;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        Some(self.latencies_us[i] as f64 / 1000.0)
    }
}

/// Runs `call` from `concurrency` tasks for `duration`; the task number picks its channel.
async fn load<F, Fut>(concurrency: usize, duration: Duration, call: F) -> Load
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0;
                let mut i = t;
                while Instant::now() < deadline {
                    let s = Instant::now();
                    if !call(t, i).await {
                        errors += 1;
                    }
                    lat.push(s.elapsed().as_micros() as u64);
                    i += concurrency;
                }
                (lat, errors)
            })
        })
        .collect();
    let mut latencies_us = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("load task");
        latencies_us.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed();
    latencies_us.sort_unstable();
    Load {
        calls: latencies_us.len(),
        errors,
        elapsed,
        latencies_us,
    }
}

async fn channels(url: &str, n: usize) -> Vec<Channel> {
    // The same connection settings as the API crate's client.
    let endpoint = documents_api::client::parse_endpoints(url, Duration::from_secs(3))
        .expect("endpoint")
        .remove(0);
    let mut out = Vec::new();
    for _ in 0..n.max(1) {
        out.push(endpoint.connect().await.expect("connect"));
    }
    out
}

fn ids(prefix_from: usize, n: usize) -> Vec<String> {
    (prefix_from..prefix_from + n)
        .map(|i| format!("ASX:S{i:04}"))
        .collect()
}

fn options() -> Option<DocumentOptions> {
    Some(DocumentOptions {
        cache_hours: Some(24),
        force_refresh: false,
        ..Default::default()
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let wanted: Vec<&str> = args.scenarios.split(',').map(str::trim).collect();
    let duration = Duration::from_secs(args.duration_secs);
    let warmup = Duration::from_secs(args.warmup_secs);
    let db = Db::postgres();
    let ex = Exchange::start();
    let mut env: Vec<(String, String)> = vec![
        ("UPSTREAM_RATE_LIMIT".into(), "0".into()),
        ("RUST_LOG".into(), "info".into()),
        ("LOG_FORMAT".into(), "json".into()),
        ("PROVIDER_MAX_BATCH_SIZE".into(), "1000".into()),
    ];
    for kv in &args.provider_env {
        if let Some((k, v)) = kv.split_once('=') {
            env.push((k.into(), v.into()));
        }
    }
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let provider = Provider::start(db.url(), &ex.url, &env_ref).await;
    let pid = provider.proc.pid();
    let url = provider.url();
    let client = provider.client();
    let mut rows: Vec<Row> = Vec::new();
    eprintln!("bench: provider pid {pid} at {url}, database {}", db.url());

    // 1000 fresh documents for the hit and batch scenarios.
    let fresh = ids(0, 1000);
    let preload = client
        .get_documents(&fresh, &documents_api::DocumentOptions::new())
        .await?;
    anyhow::ensure!(
        preload.iter().all(|r| r.is_ok()),
        "preloading documents failed"
    );

    if wanted.contains(&"hit") {
        let hot: Arc<Vec<String>> = Arc::new(fresh[..100].to_vec());
        let run = hits_against_health(&url, pid, hot.clone(), &args).await;
        let HitRun {
            hits,
            checks,
            cpu,
            hcpu,
            rss,
            hrss,
        } = run;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(args.db_pool)
            .connect(db.url())
            .await?;
        let raw = {
            let pool = pool.clone();
            let hot = hot.clone();
            move |_, i: usize| {
                let pool = pool.clone();
                let sid = format!("{}:announcement", hot[i % hot.len()]);
                async move {
                    sqlx::query("SELECT id, tags, version, last_synced, now() FROM documents WHERE source_type = $1 AND source_id = $2")
                        .bind("announcement")
                        .bind(sid)
                        .fetch_optional(&pool)
                        .await
                        .is_ok_and(|r| r.is_some())
                }
            }
        };
        let raw = Arc::new(raw);
        let r = raw.clone();
        load(args.concurrency, warmup, move |t, i| r(t, i)).await;
        let r = raw.clone();
        let selects = load(args.concurrency, duration, move |t, i| r(t, i)).await;
        let note = format!(
            "{} errors; {} in flight over {} channels; p99 {:.2}x the baseline's",
            hits.errors,
            args.concurrency,
            args.channels,
            hits.pct(0.99).unwrap_or(0.0) / checks.pct(0.99).unwrap_or(1.0)
        );
        rows.push(Row {
            scenario: "1 hit GetDocument".into(),
            rate: hits.rate(),
            unit: "calls/s",
            p50_ms: hits.pct(0.5),
            p99_ms: hits.pct(0.99),
            cpu: Some(cpu),
            rss_mb: Some(rss),
            baseline: "Health/Check".into(),
            baseline_rate: checks.rate(),
            note,
        });
        rows.push(Row {
            scenario: "  baseline Health/Check".into(),
            rate: checks.rate(),
            unit: "calls/s",
            p50_ms: checks.pct(0.5),
            p99_ms: checks.pct(0.99),
            cpu: Some(hcpu),
            rss_mb: Some(hrss),
            baseline: "itself".into(),
            baseline_rate: checks.rate(),
            note: format!("{} errors", checks.errors),
        });
        rows.push(Row {
            scenario: "  baseline raw sqlx point select".into(),
            rate: selects.rate(),
            unit: "selects/s",
            p50_ms: selects.pct(0.5),
            p99_ms: selects.pct(0.99),
            cpu: None,
            rss_mb: None,
            baseline: "Health/Check".into(),
            baseline_rate: checks.rate(),
            note: format!("pool of {}", args.db_pool),
        });
        pool.close().await;
    }

    if wanted.contains(&"sqlite") {
        // The embedded default: the same hit path on SQLite, whose hit view is fed by
        // `PRAGMA data_version`.
        let lite_db = Db::sqlite();
        let lite = Provider::start(lite_db.url(), &ex.url, &env_ref).await;
        let hot: Arc<Vec<String>> = Arc::new(ids(0, 100));
        let preload = lite
            .client()
            .get_documents(&hot, &documents_api::DocumentOptions::new())
            .await?;
        anyhow::ensure!(preload.iter().all(|r| r.is_ok()), "preloading failed");
        let run = hits_against_health(&lite.url(), lite.proc.pid(), hot, &args).await;
        rows.push(Row {
            scenario: "7 hit GetDocument, SQLite".into(),
            rate: run.hits.rate(),
            unit: "calls/s",
            p50_ms: run.hits.pct(0.5),
            p99_ms: run.hits.pct(0.99),
            cpu: Some(run.cpu),
            rss_mb: Some(run.rss),
            baseline: "Health/Check".into(),
            baseline_rate: run.checks.rate(),
            note: format!(
                "{} errors; p99 {:.2}x the baseline's",
                run.hits.errors,
                run.hits.pct(0.99).unwrap_or(0.0) / run.checks.pct(0.99).unwrap_or(1.0)
            ),
        });
        rows.push(Row {
            scenario: "  baseline Health/Check, SQLite".into(),
            rate: run.checks.rate(),
            unit: "calls/s",
            p50_ms: run.checks.pct(0.5),
            p99_ms: run.checks.pct(0.99),
            cpu: Some(run.hcpu),
            rss_mb: Some(run.hrss),
            baseline: "itself".into(),
            baseline_rate: run.checks.rate(),
            note: format!("{} errors", run.checks.errors),
        });
    }

    if wanted.contains(&"startup") {
        // From spawn to SERVING on a fresh database (migrations included), median of 5.
        for (postgres, name) in [(false, "SQLite"), (true, "PostgreSQL")] {
            let ms = start_up_ms(postgres, &ex.url, 5).await;
            rows.push(Row {
                scenario: format!("8 start-up to SERVING, {name}"),
                rate: ms,
                unit: "ms",
                p50_ms: None,
                p99_ms: None,
                cpu: None,
                rss_mb: None,
                baseline: "itself".into(),
                baseline_rate: ms,
                note: "fresh database, migrations applied; median of 5".into(),
            });
        }
        let size = image_size_mb("documents:latest");
        rows.push(Row {
            scenario: "  image documents:latest".into(),
            rate: size.unwrap_or(f64::NAN),
            unit: "MB",
            p50_ms: None,
            p99_ms: None,
            cpu: None,
            rss_mb: None,
            baseline: "itself".into(),
            baseline_rate: size.unwrap_or(f64::NAN),
            note: match size {
                Some(_) => "docker image inspect".into(),
                None => "n/a: no Docker engine or no image built".into(),
            },
        });
    }

    if wanted.contains(&"scale") {
        scale::run(&args, &ex, &env_ref, &mut rows).await?;
    }

    if wanted.contains(&"watch") {
        watch::run(&ex, &env_ref, &mut rows).await?;
    }

    if wanted.contains(&"swr") {
        // Stale-while-revalidate: 100 documents 30 h old asked for with a 24 h window and 48 h
        // of grace, while the upstream takes ten minutes (so every answer is the stale one and
        // its refresh never lands during the run), against hits on 100 fresh documents,
        // alternated in slices.
        let chans = channels(&url, args.channels).await;
        let pool = sqlx::PgPool::connect(db.url()).await?;
        let aged: Arc<Vec<String>> = Arc::new(fresh[100..200].to_vec());
        let sids: Vec<String> = aged.iter().map(|i| format!("{i}:announcement")).collect();
        sqlx::query("UPDATE documents SET last_synced = now() - interval '30 hours' WHERE source_id = ANY($1)")
            .bind(&sids)
            .execute(&pool)
            .await?;
        let mut slow = Control::default();
        slow.delay_ms.insert(LISTING_PATH.into(), 600_000);
        ex.control(&slow).await;
        let hot: Arc<Vec<String>> = Arc::new(fresh[..100].to_vec());
        let call = |ids: Arc<Vec<String>>, swr: bool, want: i32| {
            let chans = chans.clone();
            Arc::new(move |t: usize, i: usize| {
                let mut c = DocumentProviderClient::new(chans[t % chans.len()].clone());
                let identifier = ids[i % ids.len()].clone();
                let mut options = options();
                if let (true, Some(o)) = (swr, options.as_mut()) {
                    o.stale_while_revalidate_hours = Some(48);
                }
                async move {
                    c.get_document(GetDocumentRequest {
                        identifier,
                        kind: String::new(),
                        options,
                    })
                    .await
                    .is_ok_and(|r| r.get_ref().outcome == want)
                }
            })
        };
        let stale = call(aged.clone(), true, Outcome::Stale as i32);
        let hits = call(hot, false, Outcome::Hit as i32);
        let (st, h) = (stale.clone(), hits.clone());
        load(args.concurrency, warmup, move |t, i| st(t, i)).await;
        load(args.concurrency, warmup, move |t, i| h(t, i)).await;
        let slice = duration / args.rounds.max(1) as u32;
        let (mut answered, mut hit) = (Load::empty(), Load::empty());
        for _ in 0..args.rounds.max(1) {
            let st = stale.clone();
            answered.merge(load(args.concurrency, slice, move |t, i| st(t, i)).await);
            let h = hits.clone();
            hit.merge(load(args.concurrency, slice, move |t, i| h(t, i)).await);
        }
        ex.control(&Control::default()).await;
        rows.push(Row {
            scenario: "6 stale-while-revalidate answer".into(),
            rate: answered.rate(),
            unit: "calls/s",
            p50_ms: answered.pct(0.5),
            p99_ms: answered.pct(0.99),
            cpu: None,
            rss_mb: None,
            baseline: "hit GetDocument".into(),
            baseline_rate: hit.rate(),
            note: format!(
                "{} errors (a non-stale answer counts as one); upstream held 10 min, so no refresh lands",
                answered.errors
            ),
        });
        rows.push(Row {
            scenario: "  baseline hit GetDocument".into(),
            rate: hit.rate(),
            unit: "calls/s",
            p50_ms: hit.pct(0.5),
            p99_ms: hit.pct(0.99),
            cpu: None,
            rss_mb: None,
            baseline: "itself".into(),
            baseline_rate: hit.rate(),
            note: format!("{} errors", hit.errors),
        });
    }

    if wanted.contains(&"batch") {
        let chans = channels(&url, args.channels).await;
        let batch_ids = Arc::new(fresh.clone());
        let call = {
            let chans = chans.clone();
            let batch_ids = batch_ids.clone();
            Arc::new(move |t: usize, _| {
                let mut c = DocumentProviderClient::new(chans[t % chans.len()].clone());
                let identifiers = (*batch_ids).clone();
                async move {
                    c.get_documents(GetDocumentsRequest {
                        identifiers,
                        kind: String::new(),
                        options: options(),
                    })
                    .await
                    .is_ok_and(|r| r.get_ref().results.iter().all(|d| d.fresh))
                }
            })
        };
        let in_flight = args.channels.max(1);
        let c = call.clone();
        load(in_flight, warmup, move |t, i| c(t, i)).await;
        let c = call.clone();
        let (batches, cpu, rss) =
            measured(pid, load(in_flight, duration, move |t, i| c(t, i))).await;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(args.db_pool)
            .connect(db.url())
            .await?;
        let sids: Arc<Vec<String>> =
            Arc::new(fresh.iter().map(|f| format!("{f}:announcement")).collect());
        let raw = {
            let pool = pool.clone();
            let sids = sids.clone();
            Arc::new(move |_, _| {
                let pool = pool.clone();
                let sids = sids.clone();
                async move {
                    sqlx::query("SELECT id, source_id, tags, version, last_synced, now() FROM documents WHERE source_type = $1 AND source_id = ANY($2)")
                        .bind("announcement")
                        .bind(&*sids)
                        .fetch_all(&pool)
                        .await
                        .is_ok_and(|r| r.len() == sids.len())
                }
            })
        };
        let r = raw.clone();
        load(in_flight, warmup, move |t, i| r(t, i)).await;
        let r = raw.clone();
        let selects = load(in_flight, duration, move |t, i| r(t, i)).await;
        // The naive client: one GetDocument per identifier, one after another.
        let mut one = DocumentProviderClient::new(chans[0].clone());
        let started = Instant::now();
        for id in fresh.iter() {
            one.get_document(GetDocumentRequest {
                identifier: id.clone(),
                kind: String::new(),
                options: options(),
            })
            .await?;
        }
        let sequential_rate = fresh.len() as f64 / started.elapsed().as_secs_f64();
        let n = fresh.len() as f64;
        rows.push(Row {
            scenario: "2 batch GetDocuments x1000".into(),
            rate: batches.rate() * n,
            unit: "ids/s",
            p50_ms: batches.pct(0.5),
            p99_ms: batches.pct(0.99),
            cpu: Some(cpu),
            rss_mb: Some(rss),
            baseline: "raw ANY($1) select".into(),
            baseline_rate: selects.rate() * n,
            note: format!(
                "{} in flight; vs sequential loop: {:.0}x",
                in_flight,
                batches.rate() * n / sequential_rate
            ),
        });
        rows.push(Row {
            scenario: "  baseline raw ANY($1) select".into(),
            rate: selects.rate() * n,
            unit: "ids/s",
            p50_ms: selects.pct(0.5),
            p99_ms: selects.pct(0.99),
            cpu: None,
            rss_mb: None,
            baseline: "itself".into(),
            baseline_rate: selects.rate() * n,
            note: String::new(),
        });
        rows.push(Row {
            scenario: "  baseline 1000 sequential GetDocument".into(),
            rate: sequential_rate,
            unit: "ids/s",
            p50_ms: None,
            p99_ms: None,
            cpu: None,
            rss_mb: None,
            baseline: "itself".into(),
            baseline_rate: sequential_rate,
            note: String::new(),
        });
        pool.close().await;
    }

    if wanted.contains(&"fanout") {
        ex.control(&Control {
            latency_ms: 50,
            ..Control::default()
        })
        .await;
        let mut times = Vec::new();
        let mut rss = 0.0f64;
        let mut cpu = 0.0f64;
        for run in 0..3 {
            let batch = ids(1000 + run * 200, 200);
            let (r, c, m) = measured(pid, async {
                let s = Instant::now();
                let r = client
                    .get_documents(&batch, &documents_api::DocumentOptions::new())
                    .await;
                (r, s.elapsed())
            })
            .await;
            let (results, took) = r;
            anyhow::ensure!(results?.iter().all(|d| d.created), "fan-out fills failed");
            times.push(took);
            rss = rss.max(m);
            cpu = cpu.max(c);
        }
        times.sort();
        let median = times[1];
        let ideal = Duration::from_millis(200usize.div_ceil(32) as u64 * 50);
        rows.push(Row {
            scenario: "3 miss fan-out 200 @50ms, bound 32".into(),
            rate: 1.0 / median.as_secs_f64(),
            unit: "batches/s",
            p50_ms: Some(median.as_secs_f64() * 1000.0),
            p99_ms: Some(times[2].as_secs_f64() * 1000.0),
            cpu: Some(cpu),
            rss_mb: Some(rss),
            baseline: format!("ideal {} ms", ideal.as_millis()),
            baseline_rate: 1.0 / ideal.as_secs_f64(),
            note: "median of 3 runs; ratio = actual / ideal".to_string(),
        });
        ex.control(&Control::default()).await;
    }

    if wanted.contains(&"coalesce") {
        let second = Provider::start(db.url(), &ex.url, &env_ref).await;
        let target = "ASX:S2000".to_string();
        client
            .get_document(&target, &documents_api::DocumentOptions::new())
            .await?;
        let pool = sqlx::PgPool::connect(db.url()).await?;
        sqlx::query(
            "UPDATE documents SET last_synced = now() - interval '48 hours' WHERE source_id = $1",
        )
        .bind(format!("{target}:announcement"))
        .execute(&pool)
        .await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        ex.control(&Control {
            latency_ms: 50,
            ..Control::default()
        })
        .await;
        ex.reset().await;
        let ca = channels(&url, 2).await;
        let cb = channels(&second.url(), 2).await;
        // All callers are spawned first and released together.
        let (go, ready) = tokio::sync::watch::channel(false);
        let start = Instant::now();
        let calls: Vec<_> = (0..500)
            .map(|i| {
                let ch = if i % 2 == 0 {
                    ca[i / 2 % 2].clone()
                } else {
                    cb[i / 2 % 2].clone()
                };
                let identifier = target.clone();
                let mut ready = ready.clone();
                tokio::spawn(async move {
                    let mut c = DocumentProviderClient::new(ch);
                    let _ = ready.wait_for(|go| *go).await;
                    let sent = start.elapsed();
                    let r = c
                        .get_document(GetDocumentRequest {
                            identifier,
                            kind: String::new(),
                            options: options(),
                        })
                        .await;
                    (r.map(|r| r.into_inner().version), sent, start.elapsed())
                })
            })
            .collect();
        go.send(true)?;
        let mut answers = Vec::new();
        let mut versions = std::collections::BTreeSet::new();
        for c in calls {
            let (v, sent, done) = c.await?;
            versions.insert(v.map_err(|s| s.code() as i32).unwrap_or(-1));
            answers.push((sent, done));
        }
        // The filler's caller finishes first; the waiters are the callers sent before that.
        let first_done = answers.iter().map(|a| a.1).min().unwrap_or_default();
        let mut extra: Vec<f64> = answers
            .iter()
            .filter(|(sent, _)| *sent < first_done)
            .map(|(_, done)| (*done - first_done).as_secs_f64() * 1000.0)
            .collect();
        extra.sort_by(f64::total_cmp);
        let sent_spread = answers.iter().map(|a| a.0).max().unwrap_or_default()
            - answers.iter().map(|a| a.0).min().unwrap_or_default();
        let replicas = format!(
            "{} waiters; calls sent within {:.1} ms; first answer at {:.1} ms",
            extra.len(),
            sent_spread.as_secs_f64() * 1000.0,
            first_done.as_secs_f64() * 1000.0
        );
        // The same spread as the servers saw it, from their answer log lines.
        let server_times: Vec<chrono::DateTime<chrono::Utc>> = [&provider.proc, &second.proc]
            .iter()
            .flat_map(|p| p.logs().lines().map(String::from).collect::<Vec<_>>())
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
            .filter(|v| {
                v["message"] == "answer" && v["identifier"] == target.as_str() && v["version"] == 2
            })
            .filter_map(|v| v["timestamp"].as_str().and_then(|t| t.parse().ok()))
            .collect();
        let server_spread = match (server_times.iter().min(), server_times.iter().max()) {
            (Some(a), Some(b)) => format!(
                "{:.1} ms over {} logged answers",
                (*b - *a).num_microseconds().unwrap_or(0) as f64 / 1000.0,
                server_times.len()
            ),
            _ => "n/a (answer lines not logged)".into(),
        };
        let upstream = ex.count(LISTING_PATH).await;
        rows.push(Row {
            scenario: "4 coalescing 500 callers, 2 replicas".into(),
            rate: upstream as f64,
            unit: "upstream req",
            p50_ms: Some(extra[extra.len() / 2]),
            p99_ms: Some(extra[extra.len() * 99 / 100]),
            cpu: None,
            rss_mb: None,
            baseline: "exactly 1 request".into(),
            baseline_rate: 1.0,
            note: format!(
                "client-side wait after the filler's answer: p50/p99 in the columns, max {:.1} ms; server-side spread of all answers: {server_spread}; versions {versions:?}; {replicas}",
                extra.last().copied().unwrap_or_default()
            ),
        });
        ex.control(&Control::default()).await;
        drop(second);
    }

    if wanted.contains(&"consumer") {
        let consumer =
            ConsumerProc::start(db.url(), &url, &[("CONSUMER_TICKER_CONCURRENCY", "16")]).await;
        let tickers = ids(3000, 100);
        let mut cc = consumer.client().await;
        let req = ProcessTickersRequest {
            tickers: tickers.clone(),
            ..Default::default()
        };
        let first = cc.process_tickers(req.clone()).await?.into_inner();
        anyhow::ensure!(
            first.reports.iter().all(|r| r.status.is_none()),
            "consumer warm-up round failed"
        );
        let cc2 = cc.clone();
        let rounds = load(1, duration, move |_, _| {
            let mut c = cc2.clone();
            let req = req.clone();
            async move {
                c.process_tickers(req)
                    .await
                    .is_ok_and(|r| r.get_ref().reports.iter().all(|x| x.status.is_none()))
            }
        })
        .await;
        let started = Instant::now();
        let mut n = 0;
        while started.elapsed() < duration {
            client
                .get_documents(&tickers, &documents_api::DocumentOptions::new())
                .await?;
            n += 1;
        }
        let provider_rate = n as f64 * 100.0 / started.elapsed().as_secs_f64();
        rows.push(Row {
            scenario: "5 consumer round 100 fresh tickers".into(),
            rate: rounds.rate() * 100.0,
            unit: "tickers/s",
            p50_ms: rounds.pct(0.5),
            p99_ms: rounds.pct(0.99),
            cpu: None,
            rss_mb: None,
            baseline: "provider GetDocuments of the 100".into(),
            baseline_rate: provider_rate,
            note: format!("{} errors; one round at a time", rounds.errors),
        });
        drop(consumer);
    }

    print_table(&rows, &args);
    Ok(())
}

/// Hits on `hot` and Health/Check on the same server, alternated in short slices so that drift
/// on a noisy machine hits both alike.
struct HitRun {
    hits: Load,
    checks: Load,
    cpu: f64,
    hcpu: f64,
    rss: f64,
    hrss: f64,
}

/// A hit `GetDocument` (generated stubs, 24-hour window) for load task `t`'s call `i`: the
/// task's channel, the call's document of `hot`; true when answered fresh.
fn hit_caller(
    chans: Arc<Vec<Channel>>,
    hot: Arc<Vec<String>>,
) -> impl Fn(usize, usize) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>
       + Send
       + Sync
       + 'static {
    move |t: usize, i: usize| {
        let mut c = DocumentProviderClient::new(chans[t % chans.len()].clone());
        let identifier = hot[i % hot.len()].clone();
        Box::pin(async move {
            c.get_document(GetDocumentRequest {
                identifier,
                kind: String::new(),
                options: options(),
            })
            .await
            .is_ok_and(|r| r.get_ref().fresh)
        })
    }
}

async fn hits_against_health(url: &str, pid: u32, hot: Arc<Vec<String>>, args: &Args) -> HitRun {
    let duration = Duration::from_secs(args.duration_secs);
    let warmup = Duration::from_secs(args.warmup_secs);
    let chans = channels(url, args.channels).await;
    let get = hit_caller(Arc::new(chans.clone()), hot);
    let health = move |t: usize, _| {
        let mut c = HealthClient::new(chans[t % chans.len()].clone());
        async move {
            c.check(HealthCheckRequest {
                service: "documents.v1.DocumentProvider".into(),
            })
            .await
            .is_ok()
        }
    };
    let get = Arc::new(get);
    let health = Arc::new(health);
    let g = get.clone();
    load(args.concurrency, warmup, move |t, i| g(t, i)).await;
    let h = health.clone();
    load(args.concurrency, warmup, move |t, i| h(t, i)).await;
    let slice = duration / args.rounds.max(1) as u32;
    let mut run = HitRun {
        hits: Load::empty(),
        checks: Load::empty(),
        cpu: 0.0,
        hcpu: 0.0,
        rss: 0.0,
        hrss: 0.0,
    };
    for _ in 0..args.rounds.max(1) {
        let g = get.clone();
        let (l, c, m) = measured(pid, load(args.concurrency, slice, move |t, i| g(t, i))).await;
        run.hits.merge(l);
        run.cpu = run.cpu.max(c);
        run.rss = run.rss.max(m);
        let h = health.clone();
        let (l, c, m) = measured(pid, load(args.concurrency, slice, move |t, i| h(t, i))).await;
        run.checks.merge(l);
        run.hcpu = run.hcpu.max(c);
        run.hrss = run.hrss.max(m);
    }
    run
}

/// Milliseconds from a provider's spawn until its health says SERVING, on a fresh database
/// (so migrations included), the median of `runs`.
async fn start_up_ms(postgres: bool, upstream: &str, runs: usize) -> f64 {
    let mut times = Vec::new();
    for _ in 0..runs {
        let db = if postgres {
            Db::postgres()
        } else {
            Db::sqlite()
        };
        let addr = e2e::harness::free_addr();
        let started = Instant::now();
        let provider = Provider::spawn_at(&addr, db.url(), upstream, &[]);
        loop {
            if documents_kit::health::healthcheck(&addr, "documents.v1.DocumentProvider")
                .await
                .unwrap_or(false)
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the provider was never SERVING"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        drop(provider);
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// The image's size in MB, if a Docker engine answers and holds `image`.
fn image_size_mb(image: &str) -> Option<f64> {
    let out = std::process::Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Size}}", image])
        .output()
        .ok()?;
    let bytes: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    Some(bytes / 1e6)
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

fn print_table(rows: &[Row], args: &Args) {
    println!(
        "\nprovider on PostgreSQL; {} s per scenario after {} s warm-up; client, server and database share this machine ({} cores)\n",
        args.duration_secs,
        args.warmup_secs,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!(
        "| {:<40} | {:>12} | {:<12} | {:>8} | {:>8} | {:>9} | {:>8} | {:<32} | {:>7} | notes",
        "scenario", "rate", "unit", "p50 ms", "p99 ms", "cpu cores", "peak MB", "baseline", "ratio"
    );
    println!(
        "|{}|{}|{}|{}|{}|{}|{}|{}|{}|---",
        "-".repeat(42),
        "-".repeat(14),
        "-".repeat(14),
        "-".repeat(10),
        "-".repeat(10),
        "-".repeat(11),
        "-".repeat(10),
        "-".repeat(34),
        "-".repeat(9)
    );
    for r in rows {
        println!(
            "| {:<40} | {:>12.1} | {:<12} | {:>8} | {:>8} | {:>9} | {:>8} | {:<32} | {:>7.2} | {}",
            r.scenario,
            r.rate,
            r.unit,
            fmt_opt(r.p50_ms, 2),
            fmt_opt(r.p99_ms, 2),
            fmt_opt(r.cpu, 2),
            fmt_opt(r.rss_mb, 1),
            r.baseline,
            if r.scenario.starts_with("3 ") {
                1.0 / r.ratio()
            } else {
                r.ratio()
            },
            r.note
        );
    }
}
