//! WatchDocuments against the real binaries, on both databases: a change made through any
//! replica, or by SQL, reaches a watcher on another replica in order; a watcher that resumes
//! with `since` after its provider restarted is told the latest version it missed; watches by
//! tag are bounded; a frozen change feed, a deadline, a cancel and a shutdown each end the
//! stream with a status and leave no watch behind; a thousand watchers on one replica each see
//! a refresh, and a reader that does not read is conflated (its memory measured). Timeouts here
//! are liveness bounds (a missing event fails instead of hanging), not performance targets.

use std::time::Duration;

use documents_api::proto::documents::v1::{
    document_provider_client::DocumentProviderClient, DocumentEvent, EventType, GetDocumentRequest,
    InvalidateDocumentsRequest, WatchDocumentsRequest, WatchPosition,
};
use e2e::harness::{
    listener_backend, metric_value, scrape_metrics, Db, Exchange, Frozen, Provider, ANY_PORT,
};
use tonic::{transport::Channel, Code, Streaming};
use tonic_types::StatusExt;

/// Longest wait for an event that must come (a liveness bound: the feed announces a commit
/// within a second).
const WITHIN: Duration = Duration::from_secs(20);

const GNP_SOURCE_ID: &str = "ASX:GNP:announcement";

fn watch_of(identifiers: &[&str]) -> WatchDocumentsRequest {
    WatchDocumentsRequest {
        identifiers: identifiers.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

async fn client(p: &Provider) -> DocumentProviderClient<Channel> {
    DocumentProviderClient::connect(p.url()).await.unwrap()
}

async fn watch(p: &Provider, r: WatchDocumentsRequest) -> Streaming<DocumentEvent> {
    client(p)
        .await
        .watch_documents(r)
        .await
        .unwrap()
        .into_inner()
}

/// The next event about a document (heartbeats skipped).
async fn next_change(s: &mut Streaming<DocumentEvent>) -> DocumentEvent {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let e = tokio::time::timeout_at(deadline, s.message())
            .await
            .expect("an event within the liveness bound")
            .expect("the stream goes on")
            .expect("the stream is open");
        if e.r#type() != EventType::Heartbeat {
            return e;
        }
    }
}

/// The status the stream ends with (events before it skipped).
async fn end_of(s: &mut Streaming<DocumentEvent>) -> tonic::Status {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        match tokio::time::timeout_at(deadline, s.message())
            .await
            .expect("the stream ends within the liveness bound")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => return status,
        }
    }
}

fn summary(e: &DocumentEvent) -> (EventType, &str, i64) {
    (e.r#type(), e.identifier.as_str(), e.version)
}

async fn get(p: &Provider, identifier: &str, force: bool) -> (String, i64) {
    let r = client(p)
        .await
        .get_document(GetDocumentRequest {
            identifier: identifier.into(),
            options: Some(documents_api::proto::documents::v1::DocumentOptions {
                force_refresh: force,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    (r.document_id, r.version)
}

async fn changes_reach_a_watcher_on_another_replica(db: Db) {
    let ex = Exchange::start();
    let writer = Provider::start(db.url(), &ex.url, &[]).await;
    // The watcher's replica answers nothing from memory: watching needs no hit view.
    let watcher = Provider::start(db.url(), &ex.url, &[("PROVIDER_HIT_CACHE", "false")]).await;
    let mut s = watch(
        &watcher,
        WatchDocumentsRequest {
            send_initial: true,
            ..watch_of(&["gnp", "ASX:BHP"])
        },
    )
    .await;

    // Created and refreshed through the other replica.
    let (id, _) = get(&writer, "ASX:GNP", false).await;
    let e = next_change(&mut s).await;
    assert_eq!(summary(&e), (EventType::Created, "ASX:GNP", 1));
    assert_eq!(e.document_id, id);
    assert!(e.tags.contains(&"ticker:ASX:GNP".to_string()), "{e:?}");
    assert!(e.last_synced.is_some());
    get(&writer, "ASX:GNP", true).await;
    assert_eq!(
        summary(&next_change(&mut s).await),
        (EventType::Refreshed, "ASX:GNP", 2)
    );

    // Changed by SQL, outside the services.
    db.execute(&format!(
        "UPDATE documents SET version = version + 1, title = 'edited by hand' \
         WHERE source_id = '{GNP_SOURCE_ID}'"
    ))
    .await
    .unwrap();
    assert_eq!(
        summary(&next_change(&mut s).await),
        (EventType::Refreshed, "ASX:GNP", 3)
    );
    // Invalidated through the other replica.
    client(&writer)
        .await
        .invalidate_documents(InvalidateDocumentsRequest {
            identifiers: vec!["ASX:GNP".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        summary(&next_change(&mut s).await),
        (EventType::Invalidated, "ASX:GNP", 3)
    );

    // Deleted by SQL.
    db.execute(&format!(
        "DELETE FROM documents WHERE source_id = '{GNP_SOURCE_ID}'"
    ))
    .await
    .unwrap();
    let e = next_change(&mut s).await;
    assert_eq!(summary(&e), (EventType::Deleted, "ASX:GNP", 3));
    assert_eq!(e.document_id, id);

    // Recreated: another document, its versions from 1 again.
    let (again, _) = get(&writer, "ASX:GNP", false).await;
    let e = next_change(&mut s).await;
    assert_eq!(summary(&e), (EventType::Created, "ASX:GNP", 1));
    assert_eq!(e.document_id, again);
}

#[tokio::test]
async fn changes_through_any_replica_or_sql_reach_a_watcher_on_another_postgres() {
    changes_reach_a_watcher_on_another_replica(Db::postgres()).await;
}

#[tokio::test]
async fn changes_through_any_replica_or_sql_reach_a_watcher_on_another_sqlite() {
    changes_reach_a_watcher_on_another_replica(Db::sqlite()).await;
}

async fn resume_after_a_restart(db: Db) {
    let ex = Exchange::start();
    let writer = Provider::start(db.url(), &ex.url, &[]).await;
    let mut first = Provider::start(db.url(), &ex.url, &[]).await;
    let mut s = watch(&first, watch_of(&["ASX:GNP", "ASX:BHP", "ASX:CBA"])).await;
    get(&writer, "ASX:GNP", false).await;
    get(&writer, "ASX:CBA", false).await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        let e = next_change(&mut s).await;
        seen.push(WatchPosition {
            identifier: e.identifier.clone(),
            document_id: e.document_id.clone(),
            version: e.version,
        });
    }
    // The watcher's provider dies; meanwhile GNP is refreshed twice, BHP created, CBA deleted.
    first.proc.signal("KILL");
    first.proc.wait_exit(WITHIN).await;
    drop(s);
    get(&writer, "ASX:GNP", true).await;
    get(&writer, "ASX:GNP", true).await;
    get(&writer, "ASX:BHP", false).await;
    db.execute("DELETE FROM documents WHERE source_id = 'ASX:CBA:announcement'")
        .await
        .unwrap();

    let second = Provider::start(db.url(), &ex.url, &[]).await;
    let mut s = watch(
        &second,
        WatchDocumentsRequest {
            since: seen,
            ..watch_of(&["ASX:GNP", "ASX:BHP", "ASX:CBA"])
        },
    )
    .await;
    let mut got: Vec<(EventType, String, i64)> = Vec::new();
    for _ in 0..3 {
        let e = next_change(&mut s).await;
        got.push((e.r#type(), e.identifier, e.version));
    }
    got.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        got,
        [
            (EventType::Created, "ASX:BHP".to_string(), 1),
            (EventType::Deleted, "ASX:CBA".to_string(), 1),
            (EventType::Refreshed, "ASX:GNP".to_string(), 3),
        ],
        "the latest of each watched document, and nothing it had seen"
    );
}

#[tokio::test]
async fn a_watch_resumed_with_since_after_a_restart_misses_no_latest_version_postgres() {
    resume_after_a_restart(Db::postgres()).await;
}

#[tokio::test]
async fn a_watch_resumed_with_since_after_a_restart_misses_no_latest_version_sqlite() {
    resume_after_a_restart(Db::sqlite()).await;
}

#[tokio::test]
async fn a_watch_by_tag_sees_new_documents_and_ends_past_its_limit() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    let p = Provider::start(db.url(), &ex.url, &[("PROVIDER_WATCH_MAX_DOCUMENTS", "2")]).await;
    get(&p, "ASX:GNP", false).await;
    let mut s = watch(
        &p,
        WatchDocumentsRequest {
            tags: vec!["source_type:announcement".into()],
            send_initial: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        summary(&next_change(&mut s).await),
        (EventType::Current, "ASX:GNP", 1)
    );
    get(&p, "ASX:BHP", false).await;
    assert_eq!(
        summary(&next_change(&mut s).await),
        (EventType::Created, "ASX:BHP", 1)
    );
    get(&p, "ASX:CBA", false).await;
    let status = end_of(&mut s).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("PROVIDER_WATCH_MAX_DOCUMENTS"));
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "WATCH_OVERFLOW");
}

#[tokio::test]
async fn bad_watch_requests_are_refused_naming_the_field() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    let p = Provider::start(db.url(), &ex.url, &[]).await;
    let position = |identifier: &str, document_id: &str, version| WatchPosition {
        identifier: identifier.into(),
        document_id: document_id.into(),
        version,
    };
    let cases = [
        (
            "nothing to watch",
            WatchDocumentsRequest::default(),
            "identifiers",
        ),
        (
            "bad identifier",
            watch_of(&["GNP", "ASX:"]),
            "identifiers[1]",
        ),
        (
            "unknown kind",
            WatchDocumentsRequest {
                kind: "novels".into(),
                ..watch_of(&["GNP"])
            },
            "kind",
        ),
        (
            "empty tag",
            WatchDocumentsRequest {
                tags: vec![String::new()],
                ..Default::default()
            },
            "tags[0]",
        ),
        (
            "negative version",
            WatchDocumentsRequest {
                since: vec![position("GNP", "x", -1)],
                ..watch_of(&["GNP"])
            },
            "since[0].version",
        ),
        (
            "position without a document",
            WatchDocumentsRequest {
                since: vec![position("GNP", "", 1)],
                ..watch_of(&["GNP"])
            },
            "since[0].document_id",
        ),
        (
            "position of a bad identifier",
            WatchDocumentsRequest {
                since: vec![position("?", "x", 1)],
                ..watch_of(&["GNP"])
            },
            "since[0].identifier",
        ),
    ];
    for (case, request, field) in cases {
        let status = client(&p).await.watch_documents(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert!(status.message().starts_with(field), "{case}: {status:?}");
        let bad = status.get_details_bad_request().expect("BadRequest");
        assert_eq!(bad.field_violations[0].field, field, "{case}");
    }
}

#[tokio::test]
async fn a_frozen_change_feed_ends_the_watch_unavailable() {
    let db = Db::postgres();
    let ex = Exchange::start();
    let p = Provider::start(db.url(), &ex.url, &[("PROVIDER_WATCH_HEARTBEAT_MS", "200")]).await;
    let mut s = watch(&p, watch_of(&["ASX:GNP"])).await;
    // Alive: heartbeats come.
    let beat = tokio::time::timeout(WITHIN, s.message()).await.unwrap();
    assert_eq!(beat.unwrap().unwrap().r#type(), EventType::Heartbeat);
    // The feed's backend hangs (the connection open and silent): not silence, an error.
    let _frozen = Frozen::new(listener_backend(db.url()).await);
    let status = end_of(&mut s).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "WATCH_FEED_LOST");
    assert!(status.message().contains("since"));
}

async fn watchers(metrics: &str) -> f64 {
    metric_value(&scrape_metrics(metrics).await, "documents_watchers").unwrap_or(-1.0)
}

async fn watchers_become(metrics: &str, n: f64) {
    let deadline = tokio::time::Instant::now() + WITHIN;
    while watchers(metrics).await != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "documents_watchers stays {} (expected {n})",
            watchers(metrics).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn deadline_cancel_and_shutdown(db: Db) {
    let ex = Exchange::start();
    let mut p = Provider::start(
        db.url(),
        &ex.url,
        &[
            ("PROVIDER_METRICS_ADDR", ANY_PORT),
            // Short: a watch is exempt from it.
            ("PROVIDER_REQUEST_TIMEOUT_MS", "300"),
            ("PROVIDER_DRAIN_TIMEOUT_MS", "120000"),
        ],
    )
    .await;
    let metrics = p.proc.listening("metrics endpoint listening");
    watchers_become(&metrics, 0.0).await;

    // The caller's deadline ends it.
    let mut request = tonic::Request::new(watch_of(&["ASX:GNP"]));
    request.set_timeout(Duration::from_millis(1_500));
    let mut s = client(&p)
        .await
        .watch_documents(request)
        .await
        .unwrap()
        .into_inner();
    watchers_become(&metrics, 1.0).await;
    let status = end_of(&mut s).await;
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    watchers_become(&metrics, 0.0).await;

    // A caller that goes away: its watch goes too.
    let s = watch(&p, watch_of(&["ASX:GNP"])).await;
    watchers_become(&metrics, 1.0).await;
    drop(s);
    watchers_become(&metrics, 0.0).await;

    // A hundred callers that go away, connection and all: no task and no watch is left.
    let tasks = || async {
        metric_value(&scrape_metrics(&metrics).await, "runtime_tasks_alive").unwrap_or(-1.0)
    };
    let before = tasks().await;
    assert!(before > 0.0, "runtime_tasks_alive is exported");
    {
        let c = client(&p).await;
        let mut streams = Vec::new();
        for _ in 0..100 {
            streams.push(
                c.clone()
                    .watch_documents(watch_of(&["ASX:GNP"]))
                    .await
                    .unwrap(),
            );
        }
        watchers_become(&metrics, 100.0).await;
    }
    watchers_become(&metrics, 0.0).await;
    let deadline = tokio::time::Instant::now() + WITHIN;
    while tasks().await > before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "tasks alive stay at {} after the callers left (before: {before})",
            tasks().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Longer than the server's time cap: a watch is exempt from it.
    let mut s = watch(&p, watch_of(&["ASX:GNP"])).await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    get(&p, "ASX:GNP", false).await;
    assert_eq!(
        summary(&next_change(&mut s).await),
        (EventType::Created, "ASX:GNP", 1)
    );

    // Shutdown: the watch ends at the drain (which does not wait two minutes for it).
    p.proc.signal("TERM");
    let status = end_of(&mut s).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        status.get_details_error_info().expect("ErrorInfo").reason,
        "SHUTTING_DOWN"
    );
    let exit = p.proc.wait_exit(Duration::from_secs(60)).await;
    assert!(exit.is_some_and(|e| e.success()), "{exit:?}");
}

async fn a_thousand_watchers_and_a_reader_that_does_not_read(db: Db) {
    let ex = Exchange::start();
    let p = Provider::start(db.url(), &ex.url, &[]).await;
    let pid = p.proc.pid();
    get(&p, "ASX:GNP", false).await;
    let before = e2e::procfs::rss_mb(pid);

    // 1,000 watchers over 8 connections.
    const WATCHERS: usize = 1_000;
    let mut channels = Vec::new();
    for _ in 0..8 {
        channels.push(client(&p).await);
    }
    let mut streams = Vec::with_capacity(WATCHERS);
    for i in 0..WATCHERS {
        let mut c = channels[i % channels.len()].clone();
        let s = c
            .watch_documents(WatchDocumentsRequest {
                send_initial: true,
                ..watch_of(&["ASX:GNP"])
            })
            .await
            .unwrap()
            .into_inner();
        streams.push(s);
    }
    for s in &mut streams {
        assert_eq!(
            summary(&next_change(s).await),
            (EventType::Current, "ASX:GNP", 1)
        );
    }
    let with_watchers = e2e::procfs::rss_mb(pid);
    get(&p, "ASX:GNP", true).await;
    for s in &mut streams {
        assert_eq!(
            summary(&next_change(s).await),
            (EventType::Refreshed, "ASX:GNP", 2)
        );
    }
    println!(
        "{WATCHERS} watchers: RSS {before:.1} MB -> {with_watchers:.1} MB ({:.1} KB per watcher)",
        (with_watchers - before) * 1024.0 / WATCHERS as f64
    );
    drop(streams);

    // A reader that does not read, on a connection whose flow-control window holds a few
    // events: 300 changes later it is told the newest, not every one.
    let channel = tonic::transport::Endpoint::from_shared(p.url())
        .unwrap()
        .initial_stream_window_size(Some(1024))
        .initial_connection_window_size(Some(1024))
        .connect()
        .await
        .unwrap();
    let mut slow = DocumentProviderClient::new(channel)
        .watch_documents(watch_of(&["ASX:GNP"]))
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let quiet = e2e::procfs::rss_mb(pid);
    const CHANGES: i64 = 300;
    for _ in 0..CHANGES {
        db.execute(&format!(
            "UPDATE documents SET version = version + 1 WHERE source_id = '{GNP_SOURCE_ID}'"
        ))
        .await
        .unwrap();
    }
    let last = 2 + CHANGES;
    // Give the hub time to offer them all (the feed announces within a second).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after_changes = e2e::procfs::rss_mb(pid);
    let mut versions = Vec::new();
    while versions.last() != Some(&last) {
        let e = next_change(&mut slow).await;
        assert_eq!(e.r#type(), EventType::Refreshed, "{e:?}");
        versions.push(e.version);
    }
    println!(
        "slow reader: {} events for {CHANGES} changes; RSS {quiet:.1} MB -> {after_changes:.1} MB",
        versions.len()
    );
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "versions go forward: {versions:?}"
    );
    assert!(
        (versions.len() as i64) < CHANGES,
        "the reader that did not read was told every change ({}): nothing was conflated",
        versions.len()
    );
}

#[tokio::test]
async fn deadline_cancel_and_shutdown_end_watches_and_leave_none_behind_postgres() {
    deadline_cancel_and_shutdown(Db::postgres()).await;
}

#[tokio::test]
async fn deadline_cancel_and_shutdown_end_watches_and_leave_none_behind_sqlite() {
    deadline_cancel_and_shutdown(Db::sqlite()).await;
}

#[tokio::test]
async fn a_thousand_watchers_see_a_refresh_and_a_slow_reader_is_conflated_postgres() {
    a_thousand_watchers_and_a_reader_that_does_not_read(Db::postgres()).await;
}

#[tokio::test]
async fn a_thousand_watchers_see_a_refresh_and_a_slow_reader_is_conflated_sqlite() {
    a_thousand_watchers_and_a_reader_that_does_not_read(Db::sqlite()).await;
}

/// The JSON reports `consumer-service watch` printed so far.
fn reports(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits (within the liveness bound) for a report `wanted` accepts; answers every report.
async fn report_where(
    path: &std::path::Path,
    consumer: &e2e::harness::Proc,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let all = reports(path);
        if all.iter().any(&wanted) {
            return all;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no such report; reports: {all:?}\nlog:\n{}",
            consumer.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn listed(report: &serde_json::Value, field: &str) -> usize {
    report[field].as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn the_consumer_watch_runs_a_round_when_the_document_changes_and_downloads_once() {
    let db = Db::postgres();
    let ex = Exchange::start();
    let p = Provider::start(db.url(), &ex.url, &[]).await;
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = e2e::harness::consumer_command(db.url(), &p.url(), &[]);
    cmd.args(["watch", "ASX:GNP", "--json"])
        .stdout(out.reopen().unwrap());
    let consumer = e2e::harness::Proc::spawn("consumer-service", cmd);

    // The first round creates the document and downloads what matches.
    let first = report_where(out.path(), &consumer, |r| {
        r["version_read"] == 1 && listed(r, "downloaded") > 0
    })
    .await;
    let pdfs = first.iter().map(|r| listed(r, "downloaded")).sum::<usize>();

    // Nobody asks the consumer: the provider refreshes the document, and a round follows.
    get(&p, "ASX:GNP", true).await;
    let all = report_where(out.path(), &consumer, |r| r["version_read"] == 2).await;
    let after = all.iter().find(|r| r["version_read"] == 2).unwrap();
    assert!(after["error"].is_null(), "{after}");
    assert_eq!(listed(after, "downloaded"), 0, "each PDF once: {after}");
    assert_eq!(listed(after, "skipped"), pdfs, "found stored: {after}");
    assert_eq!(
        all.iter().map(|r| listed(r, "downloaded")).sum::<usize>(),
        pdfs,
        "each PDF downloaded once over every round: {all:?}"
    );
}

#[tokio::test]
async fn watch_tickers_streams_a_report_per_round_and_refuses_an_empty_list() {
    use documents_api::proto::consumer::v1::WatchTickersRequest;
    let db = Db::sqlite();
    let ex = Exchange::start();
    let p = Provider::start(db.url(), &ex.url, &[]).await;
    let consumer = e2e::harness::ConsumerProc::start(db.url(), &p.url(), &[]).await;
    let mut c = consumer.client().await;
    let status = c
        .watch_tickers(WatchTickersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("tickers"), "{status:?}");

    let mut s = c
        .watch_tickers(WatchTickersRequest {
            tickers: vec!["gnp".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut r = next_report(&mut s).await;
    while r.version_read != 1 {
        r = next_report(&mut s).await;
    }
    assert_eq!(r.ticker, "gnp");
    get(&p, "ASX:GNP", true).await;
    while r.version_read != 2 {
        r = next_report(&mut s).await;
    }
    assert!(r.status.is_none(), "{r:?}");
}

async fn next_report(
    s: &mut Streaming<documents_api::proto::consumer::v1::WatchTickersResponse>,
) -> documents_api::proto::consumer::v1::TickerReport {
    tokio::time::timeout(WITHIN, s.message())
        .await
        .expect("a report within the liveness bound")
        .unwrap()
        .unwrap()
        .report
        .unwrap()
}

#[tokio::test]
async fn an_aged_connection_is_replaced_and_a_watch_on_it_ends_cleanly_and_resumes() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    let p = Provider::start(
        db.url(),
        &ex.url,
        &[
            ("PROVIDER_METRICS_ADDR", ANY_PORT),
            ("PROVIDER_MAX_CONNECTION_AGE_MS", "1000"),
        ],
    )
    .await;
    let metrics = p.proc.listening("metrics endpoint listening");
    let accepted = || async {
        metric_value(
            &scrape_metrics(&metrics).await,
            "connections_accepted_total",
        )
        .unwrap_or(0.0)
    };
    // The bundled client over one URL: its calls keep succeeding while its connection is
    // replaced every second.
    let c = p.client();
    let before = accepted().await;
    for _ in 0..30 {
        documents_api::DocumentProvider::get_document(
            &c,
            "ASX:GNP",
            &documents_api::DocumentOptions::new(),
        )
        .await
        .expect("a call across a connection-age GOAWAY");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reconnected = accepted().await - before;
    assert!(reconnected >= 2.0, "{reconnected} new connections in 3 s");

    // A watch on an aged connection ends with a status, not a cut connection, and resumes.
    let mut s = watch(&p, watch_of(&["ASX:GNP"])).await;
    let status = end_of(&mut s).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        status.get_details_error_info().expect("ErrorInfo").reason,
        "CONNECTION_AGED"
    );
    let (id, version) = get(&p, "ASX:GNP", false).await;
    let mut s = watch(
        &p,
        WatchDocumentsRequest {
            since: vec![WatchPosition {
                identifier: "ASX:GNP".into(),
                document_id: id,
                version,
            }],
            ..watch_of(&["ASX:GNP"])
        },
    )
    .await;
    get(&p, "ASX:GNP", true).await;
    assert_eq!(
        summary(&next_change(&mut s).await),
        (EventType::Refreshed, "ASX:GNP", version + 1)
    );
}
