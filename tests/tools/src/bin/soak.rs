//! The soak: starts the sample exchange and a provider (the binaries built next to this one) on
//! a fresh database, measures the provider's capacity on a mix of hits and forced refreshes,
//! then holds a fixed fraction of it for a bounded time, printing one line per interval with
//! calls, errors by code, latency percentiles, the provider's resident memory, tasks and open
//! descriptors. Ends with the memory trend. Build in release first:
//!
//! ```sh
//! cargo build --release --workspace --bins && target/release/soak --minutes 5
//! ```

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use clap::Parser;
use documents_api::{DocumentOptions, DocumentProvider};
use e2e::{
    harness::{free_addr, metric_value, scrape_metrics, Db, Exchange, Provider},
    load::{Load, Mix},
    procfs,
    record::Record,
};
use tokio::sync::Semaphore;

#[derive(Parser, Debug)]
#[command(
    name = "soak",
    about = "Holds a fixed fraction of the provider's measured capacity for a while and reports errors, latency and memory over time"
)]
struct Args {
    /// How long to hold the load, in minutes (fractions allowed).
    #[arg(long, default_value_t = 5.0)]
    minutes: f64,
    /// Fraction of the measured capacity to offer.
    #[arg(long, default_value_t = 0.5)]
    fraction: f64,
    /// Seconds per reported interval.
    #[arg(long, default_value_t = 10)]
    interval_secs: u64,
    /// Documents the hits are spread over.
    #[arg(long, default_value_t = 200)]
    documents: usize,
    /// One call in this many forces a refresh (a fill through the upstream).
    #[arg(long, default_value_t = 50)]
    refresh_every: usize,
    /// Run on SQLite instead of PostgreSQL.
    #[arg(long)]
    sqlite: bool,
}

#[derive(Default)]
struct Interval {
    latencies_us: Vec<u64>,
    outcomes: BTreeMap<String, usize>,
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

async fn tasks_alive(metrics: &str) -> i64 {
    metric_value(&scrape_metrics(metrics).await, "runtime_tasks_alive").map_or(-1, |v| v as i64)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let db = if args.sqlite {
        Db::sqlite()
    } else {
        Db::postgres()
    };
    let ex = Exchange::start();
    let metrics = free_addr();
    // Quiet logs (a soak would write gigabytes of per-answer lines; the start-up line that
    // names the bound port stays) and no upstream rate limit
    // (the sample exchange is local).
    let p = Provider::start(
        db.url(),
        &ex.url,
        &[
            ("RUST_LOG", "warn,documents_kit::host=info"),
            ("UPSTREAM_RATE_LIMIT", "100000"),
            ("PROVIDER_METRICS_ADDR", &metrics),
        ],
    )
    .await;
    let pid = p.proc.pid();
    let client = p.client().with_timeout(Duration::from_secs(5));
    let ids: Vec<String> = (0..args.documents)
        .map(|i| format!("ASX:S{:04}", i % 10_000))
        .collect();
    for chunk in ids.chunks(100) {
        client.get_documents(chunk, &DocumentOptions::new()).await?;
    }
    let mix = Mix {
        warm: ids.clone(),
        refresh_every: args.refresh_every,
        fill_every: 0,
        fill_from: 0,
    };

    // Capacity: as many calls as 32 callers with no pause complete in 5 s.
    let probe = Load::start(client.clone(), mix.clone(), 32, Duration::ZERO);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let probe = probe.stop().await;
    let capacity = probe.calls.len() as f64 / 5.0;
    let rate = (capacity * args.fraction).max(1.0);
    println!(
        "soak: {} on {}, capacity {:.0} calls/s (mix: 1 in {} a forced refresh), offering {:.0}/s ({:.0}%) for {} min",
        if args.sqlite { "SQLite" } else { "PostgreSQL" },
        ex.url,
        capacity,
        args.refresh_every,
        rate,
        args.fraction * 100.0,
        args.minutes
    );
    println!(
        "{:>6} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7} {:>5}  errors",
        "t (s)",
        "calls",
        "calls/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "RSS MB",
        "tasks",
        "fds"
    );

    let current = Arc::new(Mutex::new(Interval::default()));
    let in_flight = Arc::new(Semaphore::new(1024));
    let total = Duration::from_secs_f64(args.minutes * 60.0);
    let interval = Duration::from_secs(args.interval_secs.max(1));
    let started = Instant::now();
    let mut next_report = started + interval;
    let gap = Duration::from_secs_f64(1.0 / rate);
    let mut tick = tokio::time::interval(gap);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut k = 0usize;
    let mut rss = Vec::new();
    let mut all = Interval::default();
    let mut shed = 0usize;
    while started.elapsed() < total {
        tick.tick().await;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            shed += 1;
            continue;
        };
        let (id, options) = mix.pick(k);
        k += 1;
        let (client, interval_stats) = (client.clone(), current.clone());
        tokio::spawn(async move {
            let at = Instant::now();
            let r = client.get_document(&id, &options).await;
            let us = at.elapsed().as_micros() as u64;
            let key = match r {
                Ok(_) => "OK".to_string(),
                Err(s) => format!("{:?}", s.code()),
            };
            let mut c = interval_stats.lock().expect("interval lock");
            c.latencies_us.push(us);
            *c.outcomes.entry(key).or_default() += 1;
            drop(permit);
        });
        if Instant::now() >= next_report {
            next_report += interval;
            let mut done = std::mem::take(&mut *current.lock().expect("interval lock"));
            done.latencies_us.sort_unstable();
            let mb = procfs::rss_mb(pid);
            rss.push(mb);
            let errors: Vec<String> = done
                .outcomes
                .iter()
                .filter(|(k, _)| k.as_str() != "OK")
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            println!(
                "{:>6.0} {:>8} {:>8.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>8.1} {:>7} {:>5}  {}",
                started.elapsed().as_secs_f64(),
                done.latencies_us.len(),
                done.latencies_us.len() as f64 / interval.as_secs_f64(),
                pct(&done.latencies_us, 0.50),
                pct(&done.latencies_us, 0.95),
                pct(&done.latencies_us, 0.99),
                pct(&done.latencies_us, 1.0),
                mb,
                tasks_alive(&metrics).await,
                procfs::open_fds(pid).0,
                if errors.is_empty() {
                    "-".into()
                } else {
                    errors.join(", ")
                }
            );
            all.latencies_us.extend(done.latencies_us);
            for (k, v) in done.outcomes {
                *all.outcomes.entry(k).or_default() += v;
            }
        }
    }
    // Let the last calls finish.
    let _ = in_flight.acquire_many(1024).await;
    let rest = std::mem::take(&mut *current.lock().expect("interval lock"));
    all.latencies_us.extend(rest.latencies_us);
    for (k, v) in rest.outcomes {
        *all.outcomes.entry(k).or_default() += v;
    }
    all.latencies_us.sort_unstable();

    let sent = all.latencies_us.len();
    let errors: usize = all
        .outcomes
        .iter()
        .filter(|(k, _)| k.as_str() != "OK")
        .map(|(_, v)| v)
        .sum();
    // Memory trend: the first interval is warm-up; compare the second with the last.
    let (first, last) = match rss.as_slice() {
        [_, second, .., last] => (*second, *last),
        [only] | [only, _] => (*only, *rss.last().unwrap_or(only)),
        [] => (0.0, 0.0),
    };
    let growth = if first > 0.0 {
        (last - first) / first * 100.0
    } else {
        0.0
    };
    let flat = growth.abs() < 10.0;
    println!();
    println!(
        "calls {sent}, errors {errors}, not sent (over 1024 in flight) {shed}; p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(&all.latencies_us, 0.5),
        pct(&all.latencies_us, 0.99),
        pct(&all.latencies_us, 1.0)
    );
    println!(
        "memory: {first:.1} MB after the first interval, {last:.1} MB at the end ({growth:+.1}%): {}",
        if flat { "flat" } else { "NOT flat" }
    );
    Record {
        class: "soak".into(),
        case: format!(
            "{} min at {:.0}% of measured capacity ({:.0} of {:.0} calls/s; 1 in {} a forced refresh), {}",
            args.minutes,
            args.fraction * 100.0,
            rate,
            capacity,
            args.refresh_every,
            if args.sqlite { "SQLite" } else { "PostgreSQL" }
        ),
        observed: format!(
            "{errors} errors; p50 {:.2} ms, p99 {:.2} ms; resident memory {first:.1} MB -> {last:.1} MB ({growth:+.1}%, {})",
            pct(&all.latencies_us, 0.5),
            pct(&all.latencies_us, 0.99),
            if flat { "flat" } else { "not flat" }
        ),
        sent,
        outcomes: all.outcomes.clone(),
        figures: [(
            "RSS MB per interval".to_string(),
            rss.iter().map(|m| format!("{m:.1}")).collect::<Vec<_>>().join(" "),
        )]
        .into(),
        test: "soak".into(),
        ..Default::default()
    }
    .save();
    anyhow::ensure!(errors == 0 && flat, "the soak saw errors or memory growth");
    Ok(())
}
