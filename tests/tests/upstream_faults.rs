//! Upstream faults: the sample exchange slow past the timeout, failing, half-answering,
//! sending malformed or over-size bodies, or dropping the connection. Each case answers a
//! clear error for that identifier alone (the others in the batch are served), the old
//! document stays byte-identical, and repeating the faults leaks neither tasks nor
//! connections (counted from the provider's metrics and /proc before and after).

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use documents_api::{DocumentOptions, DocumentProvider};
use e2e::{
    harness::{
        age_document, assert_invariants, metric_value, scrape_metrics, Db, Exchange, Provider,
        LISTING_PATH,
    },
    procfs,
    record::Record,
};
use sample_exchange::Control;
use tonic::Code;

/// One upstream fault, aimed at one company's listing and JSON paths.
struct Case {
    name: &'static str,
    ticker: &'static str,
    apply: fn(&mut Control, Vec<String>),
    code: Code,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "slow past the 1 s timeout (3 s delay)",
            ticker: "ASX:GNP",
            apply: |c, p| c.delay_ms.extend(p.into_iter().map(|p| (p, 3_000))),
            code: Code::Unavailable,
        },
        Case {
            name: "failing (HTTP 500)",
            ticker: "ASX:BHP",
            apply: |c, p| c.status.extend(p.into_iter().map(|p| (p, 500))),
            code: Code::Unavailable,
        },
        Case {
            name: "half-answering (full length announced, half sent, connection cut)",
            ticker: "ASX:CBA",
            apply: |c, p| c.half_answer.extend(p),
            code: Code::Unavailable,
        },
        Case {
            name: "malformed body (truncated HTML and JSON)",
            ticker: "ASX:S0001",
            apply: |c, p| c.malformed.extend(p),
            code: Code::Unavailable,
        },
        Case {
            name: "huge body (4 MiB against a 1 MiB limit)",
            ticker: "ASX:S0002",
            apply: |c, p| c.oversize.extend(p),
            code: Code::Unavailable,
        },
        Case {
            name: "connection dropped without an answer",
            ticker: "ASX:S0003",
            apply: |c, p| c.reset.extend(p),
            code: Code::Unavailable,
        },
    ]
}

/// The path prefixes of a company's listing and JSON answers.
fn prefixes(ticker: &str) -> Vec<String> {
    let code = ticker.trim_start_matches("ASX:");
    vec![
        format!("{LISTING_PATH}?by=asxCode&asxCode={code}&"),
        format!("/asx-research/1.0/companies/{}/", code.to_lowercase()),
    ]
}

/// What the provider holds: tasks alive (metrics), open descriptors and sockets, threads.
/// Neither the database pool's connections nor the test's own connections to the provider are
/// counted: the pool opens connections on demand up to its bound (DATABASE_MAX_CONNECTIONS),
/// and a client's connection comes and goes with the client (the test's gRPC and metrics
/// clients), both bounded and neither a leak of the provider's.
async fn resources(metrics: &str, pid: u32) -> (i64, usize, usize, usize) {
    let page = scrape_metrics(metrics).await;
    let tasks = metric_value(&page, "runtime_tasks_alive")
        .expect("runtime_tasks_alive in the metrics") as i64;
    let pool: f64 = ["idle", "in_use"]
        .iter()
        .map(|state| {
            metric_value(
                &page,
                &format!("documents_db_connections{{state=\"{state}\"}}"),
            )
            .expect("the pool gauge in the metrics")
        })
        .sum();
    let (fds, sockets) = procfs::open_fds(pid);
    let own = procfs::own_sockets(pid).len();
    let accepted = sockets.saturating_sub(own);
    (
        tasks,
        fds - accepted - pool as usize,
        own - pool as usize,
        procfs::threads(pid),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_faults_are_clear_per_identifier_errors_and_leak_nothing() {
    let db = Db::postgres();
    let ex = Exchange::start();
    let p = Provider::start(
        db.url(),
        &ex.url,
        &[
            ("UPSTREAM_TIMEOUT_MS", "1000"),
            ("UPSTREAM_MAX_BODY_BYTES", "1048576"),
            ("PROVIDER_NEGATIVE_CACHE_MS", "0"),
            ("PROVIDER_METRICS_ADDR", e2e::harness::ANY_PORT),
            // Idle upstream connections kept for reuse are no leak, but how many there are
            // depends on how many requests overlapped: let them close before each reading.
            ("UPSTREAM_POOL_IDLE_TIMEOUT_MS", "500"),
        ],
    )
    .await;
    let metrics = p.proc.listening("metrics endpoint listening");
    let client = p.client();
    let store = db.store().await;
    let cases = cases();
    let mut before = BTreeMap::new();
    for c in &cases {
        let r = client
            .get_document(c.ticker, &DocumentOptions::new())
            .await
            .unwrap();
        let sid = format!("{}:announcement", c.ticker);
        before.insert(
            c.ticker,
            store
                .get_by_source(&e2e::harness::key(&sid))
                .await
                .unwrap()
                .unwrap(),
        );
        assert_eq!(r.version, 1);
    }

    let mut messages = BTreeMap::new();
    // Each faulty identifier's answers, by outcome, as they came (alone and in a batch).
    let mut tally: BTreeMap<&str, BTreeMap<String, usize>> = BTreeMap::new();
    let mut counts = Vec::new();
    let mut sockets = Vec::new();
    let mut sent = 0;
    let cycles = 4;
    for cycle in 1..=cycles {
        for c in &cases {
            let mut control = Control::default();
            (c.apply)(&mut control, prefixes(c.ticker));
            ex.control(&control).await;
            age_document(&db, &format!("{}:announcement", c.ticker), 30).await;
            // Alone: the identifier's error, naming it.
            let started = Instant::now();
            let answer = client.get_document(c.ticker, &DocumentOptions::new()).await;
            let outcome = match &answer {
                Ok(_) => "OK".to_string(),
                Err(e) => format!("{:?}", e.code()),
            };
            *tally.entry(c.name).or_default().entry(outcome).or_default() += 1;
            let err = answer.unwrap_err();
            assert_eq!(err.code(), c.code, "{}: {err:?}", c.name);
            assert!(err.message().contains(c.ticker), "{}: {err:?}", c.name);
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{}: took {:?}",
                c.name,
                started.elapsed()
            );
            messages.insert(c.name, err.message().to_string());
            // In a batch: that identifier fails, the healthy one beside it is served.
            let results = client
                .get_documents(
                    &[c.ticker.to_string(), "ASX:S0400".to_string()],
                    &DocumentOptions::new(),
                )
                .await
                .unwrap();
            let outcome = match &results[0].error {
                Some(e) if !results[0].is_ok() => format!("{:?}", e.code),
                _ => "OK".to_string(),
            };
            *tally.entry(c.name).or_default().entry(outcome).or_default() += 1;
            assert_eq!(
                results[0].error.as_ref().map(|e| e.code),
                Some(c.code),
                "{}: {:?}",
                c.name,
                results[0]
            );
            assert!(results[1].is_ok(), "{}: {:?}", c.name, results[1]);
            sent += 2;
            ex.control(&Control::default()).await;
            // The old document is untouched (only its age was changed by the test).
            let sid = format!("{}:announcement", c.ticker);
            let now = store
                .get_by_source(&e2e::harness::key(&sid))
                .await
                .unwrap()
                .unwrap();
            let was = &before[c.ticker];
            assert_eq!(
                (now.version, &now.content_hash, &now.id),
                (was.version, &was.content_hash, &was.id),
                "{}",
                c.name
            );
        }
        if cycle == 1 || cycle == cycles {
            // Let finished tasks and closed connections go (idle upstream connections within
            // twice their idle timeout), then take the least of ten readings over two seconds:
            // a leak stays in every reading, while a connection the pool or the feed opens
            // between the gauge and the descriptors is in one at most.
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            let mut reading = resources(&metrics, p.proc.pid()).await;
            for _ in 0..9 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let next = resources(&metrics, p.proc.pid()).await;
                reading = (
                    reading.0.min(next.0),
                    reading.1.min(next.1),
                    reading.2.min(next.2),
                    reading.3.min(next.3),
                );
            }
            counts.push(reading);
            sockets.push(procfs::own_sockets(p.proc.pid()));
        }
    }
    // The same work again leaves the same footprint: not one task, socket or descriptor more.
    let (first, last) = (counts[0], counts[1]);
    assert!(
        last.0 <= first.0,
        "tasks grew from {} to {} over {} more fault cycles",
        first.0,
        last.0,
        cycles - 1
    );
    assert!(
        last.2 <= first.2,
        "sockets grew from {} to {} over {} more fault cycles: {:#?} then {:#?}",
        first.2,
        last.2,
        cycles - 1,
        sockets[0],
        sockets[1]
    );
    assert!(
        last.1 <= first.1,
        "descriptors grew from {} to {}",
        first.1,
        last.1
    );
    let rows = assert_invariants(&db).await;

    for c in &cases {
        Record {
            class: "upstream".into(),
            case: c.name.into(),
            observed: format!(
                "{:?} for that identifier only (the other in its batch served); old document unchanged: \"{}\"",
                c.code, messages[c.name]
            ),
            sent: tally[c.name].values().sum(),
            outcomes: tally[c.name].clone(),
            recovery_ms: None,
            rows_checked: Some(rows),
            figures: Default::default(),
            test: format!(
                "upstream_faults::upstream_faults_are_clear_per_identifier_errors_and_leak_nothing::{}",
                c.ticker
            ),
        }
        .save();
    }
    Record {
        class: "upstream".into(),
        case: format!("leak check: the six faults above repeated {cycles} times"),
        observed: "no growth in tasks, sockets or descriptors between the first and the last cycle"
            .into(),
        sent,
        outcomes: [
            ("per-identifier errors".to_string(), sent / 2),
            ("OK".to_string(), sent / 2),
        ]
        .into(),
        recovery_ms: None,
        rows_checked: Some(rows),
        figures: [
            (
                "tasks after the first / last cycle".to_string(),
                format!("{} / {}", first.0, last.0),
            ),
            (
                "sockets after the first / last cycle".to_string(),
                format!("{} / {}", first.2, last.2),
            ),
            (
                "descriptors after the first / last cycle".to_string(),
                format!("{} / {}", first.1, last.1),
            ),
            (
                "threads after the first / last cycle".to_string(),
                format!("{} / {}", first.3, last.3),
            ),
        ]
        .into(),
        test: "upstream_faults::upstream_faults_are_clear_per_identifier_errors_and_leak_nothing::leaks"
            .into(),
    }
    .save();
}
