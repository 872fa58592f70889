//! The provisioner's own logic, with no process, network or database: an in-memory store
//! (`documents_store::memory`) and scripted sources, in paused Tokio time (sleeps, lease expiry
//! and the negative cache advance only when every task waits, so the tests are exact and fast).
//! Freshness, batches, coalescing, a filler's caller leaving first, lease takeover and
//! following, negative caching, stale-if-error, stale-while-revalidate, invalidation, bounds,
//! and a database outage.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use async_trait::async_trait;
use documents_api::{DocumentResult, Kind, Outcome, Ticker};
use documents_store::{memory::MemoryStore, DocumentStore, Fence, NewContent, SourceKey};
use provider_service::{
    provisioner::{Asked, Provisioner, Request, Settings},
    sources::{Source, SourceError, Sources},
    validate,
};
use tokio::time::{advance, Instant};
use tonic::Code;

/// A source whose answers the test scripts: a delay, an optional failure, a count of calls and
/// of fetches running at once.
struct Scripted {
    kind: Kind,
    delay: Duration,
    calls: AtomicUsize,
    running: AtomicUsize,
    most_running: AtomicUsize,
    failure: Mutex<Option<SourceError>>,
}

impl Scripted {
    fn new(kind: Kind, delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            kind,
            delay,
            calls: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            most_running: AtomicUsize::new(0),
            failure: Mutex::new(None),
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn fail_with(&self, e: Option<SourceError>) {
        *self.failure.lock().unwrap() = e;
    }
}

/// Counts a fetch as running until dropped (also when its task is cancelled).
struct Running<'a>(&'a Scripted);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Source for Scripted {
    fn kind(&self) -> Kind {
        self.kind
    }

    async fn fetch(&self, ticker: &Ticker) -> Result<NewContent, SourceError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        let _running = Running(self);
        self.most_running.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        if let Some(e) = self.failure.lock().unwrap().clone() {
            return Err(e);
        }
        if ticker.to_string().ends_with(":NOPE") {
            return Err(SourceError::NotFound(format!("{ticker}: unknown company")));
        }
        Ok(NewContent {
            title: format!("{ticker} (fetch {n})"),
            content_markdown: String::new(),
            content_json: serde_json::json!({ "schema_version": 1, "fetch": n }),
            tags: vec![ticker.to_string()],
        })
    }
}

fn provisioner(
    store: &Arc<MemoryStore>,
    sources: Vec<Arc<Scripted>>,
    tweak: impl FnOnce(&mut Settings),
) -> Arc<Provisioner> {
    let mut settings = Settings {
        lease_ttl: Duration::from_secs(2),
        ..Settings::default()
    };
    tweak(&mut settings);
    let sources: Sources = sources
        .into_iter()
        .map(|s| (s.kind, s as Arc<dyn Source>))
        .collect();
    let store: Arc<dyn DocumentStore> = store.clone();
    Arc::new(Provisioner::new(store, sources, settings))
}

fn req() -> Request {
    Request {
        kind: Kind::Announcement,
        cache_hours: 24,
        force_refresh: false,
        stale_if_error_hours: None,
        stale_while_revalidate_hours: None,
        refresh_ahead: false,
    }
}

async fn one(p: &Arc<Provisioner>, id: &str, r: Request) -> DocumentResult {
    p.provide(asked(&[id]), r).await.remove(0)
}

/// Identifiers as the edge hands them to the provisioner.
fn asked(list: &[&str]) -> Vec<Asked> {
    list.iter()
        .map(|s| Asked::parse(s.to_string(), "ASX"))
        .collect()
}

fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn tickers(list: &[&str]) -> Vec<Ticker> {
    list.iter().map(|s| Ticker::parse(s).unwrap()).collect()
}

static GNP: std::sync::LazyLock<SourceKey> =
    std::sync::LazyLock::new(|| key("ASX:GNP:announcement"));

/// A source key from its text.
fn key(text: &str) -> SourceKey {
    text.parse().expect("a source key")
}

/// Content another replica writes.
fn theirs(title: &str) -> NewContent {
    NewContent {
        title: title.into(),
        content_markdown: String::new(),
        content_json: serde_json::json!({"schema_version": 1}),
        tags: vec![],
    }
}

#[tokio::test(start_paused = true)]
async fn missing_then_fresh_then_stale_refreshes_in_place() {
    let store = Arc::new(MemoryStore::new());
    let src = Scripted::new(Kind::Announcement, Duration::from_millis(50));
    let p = provisioner(&store, vec![src.clone()], |_| {});
    let created = one(&p, "gnp", req()).await;
    assert_eq!((created.outcome, created.version), (Outcome::Created, 1));
    assert!(created.created && !created.fresh);
    let hit = one(&p, "ASX:GNP", req()).await;
    assert_eq!((hit.outcome, hit.version), (Outcome::Hit, 1));
    assert!(hit.fresh && !hit.created);
    assert_eq!(src.calls(), 1);
    // Older than the window: refreshed in place, same ID, version + 1.
    store.age(&GNP, Duration::from_secs(25 * 3600));
    let refreshed = one(&p, "ASX.GNP", req()).await;
    assert_eq!(
        (refreshed.outcome, refreshed.version),
        (Outcome::Refreshed, 2)
    );
    assert_eq!(refreshed.document_id, created.document_id);
    assert_eq!(src.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn cache_hours_zero_and_force_refresh_always_fetch() {
    let store = Arc::new(MemoryStore::new());
    let src = Scripted::new(Kind::Announcement, Duration::ZERO);
    let p = provisioner(&store, vec![src.clone()], |_| {});
    let first = one(&p, "GNP", req()).await;
    let zero = one(
        &p,
        "GNP",
        Request {
            cache_hours: 0,
            ..req()
        },
    )
    .await;
    let forced = one(
        &p,
        "GNP",
        Request {
            force_refresh: true,
            ..req()
        },
    )
    .await;
    assert_eq!((zero.outcome, zero.version), (Outcome::Refreshed, 2));
    assert_eq!((forced.outcome, forced.version), (Outcome::Refreshed, 3));
    assert_eq!(forced.document_id, first.document_id);
    assert_eq!(src.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_batch_answers_every_identifier_in_order_and_one_bad_one_fails_alone() {
    let store = Arc::new(MemoryStore::new());
    let src = Scripted::new(Kind::Announcement, Duration::from_millis(10));
    let p = provisioner(&store, vec![src.clone()], |_| {});
    let results = p
        .provide(asked(&["GNP", "bad id!", "asx:gnp", "BHP", "NOPE"]), req())
        .await;
    let got: Vec<_> = results
        .iter()
        .map(|r| {
            (
                r.identifier.as_str(),
                r.outcome,
                r.error.as_ref().map(|e| e.code),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("GNP", Outcome::Created, None),
            ("bad id!", Outcome::Error, Some(Code::InvalidArgument)),
            ("asx:gnp", Outcome::Created, None),
            ("BHP", Outcome::Created, None),
            ("NOPE", Outcome::Error, Some(Code::NotFound)),
        ]
    );
    assert_eq!(
        results[0].document_id, results[2].document_id,
        "duplicates share"
    );
    assert_eq!(src.calls(), 3, "GNP once, BHP, NOPE");
    assert_eq!(store.writes(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_large_batch_with_duplicates_fills_each_document_once() {
    // Twenty documents, each asked for twice under different spellings.
    let store = Arc::new(MemoryStore::new());
    let src = Scripted::new(Kind::Announcement, Duration::from_millis(10));
    let p = provisioner(&store, vec![src.clone()], |_| {});
    let codes: Vec<String> = (0..40).map(|i| format!("S{:04}", i % 20)).collect();
    let spelled: Vec<String> = codes
        .iter()
        .enumerate()
        .map(|(i, c)| match i % 3 {
            0 => c.clone(),
            1 => format!("asx:{}", c.to_lowercase()),
            _ => format!("ASX.{c}"),
        })
        .collect();
    let spelled: Vec<&str> = spelled.iter().map(String::as_str).collect();
    let results = p.provide(asked(&spelled), req()).await;
    assert_eq!(results.len(), 40);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.identifier, spelled[i], "request order");
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(
            r.document_id,
            results[i % 20].document_id,
            "duplicates share"
        );
    }
    assert_eq!(src.calls(), 20, "one fill per distinct document");
    assert_eq!(store.writes(), 20);
}

#[tokio::test(start_paused = true)]
async fn concurrent_callers_share_one_fill() {
    let store = Arc::new(MemoryStore::new());
    let src = Scripted::new(Kind::Announcement, Duration::from_secs(1));
    let p = provisioner(&store, vec![src.clone()], |_| {});
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let p = p.clone();
            tokio::spawn(async move { one(&p, "GNP", req()).await })
        })
        .collect();
    let mut doc_ids = Vec::new();
    for c in calls {
        let r = c.await.unwrap();
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(r.version, 1);
        doc_ids.push(r.document_id);
    }
    doc_ids.dedup();
    assert_eq!(doc_ids.len(), 1);
    assert_eq!((src.calls(), store.writes()), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn the_filler_leaving_first_does_not_fail_the_others() {
    let store = Arc::new(MemoryStore::new());
    let src = Scripted::new(Kind::Announcement, Duration::from_secs(3));
    let p = provisioner(&store, vec![src.clone()], |_| {});
    let filler = {
        let p = p.clone();
        tokio::spawn(async move { one(&p, "GNP", req()).await })
    };
    while src.calls() == 0 {
        tokio::task::yield_now().await;
    }
    let joiner = {
        let p = p.clone();
        tokio::spawn(async move { one(&p, "GNP", req()).await })
    };
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    filler.abort();
    let r = joiner.await.unwrap();
    assert_eq!((r.outcome, r.version), (Outcome::Created, 1), "{r:?}");
    assert_eq!(src.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_lease_is_taken_over_after_it_expires() {
    let store = Arc::new(MemoryStore::new());
    let src = Scripted::new(Kind::Announcement, Duration::from_millis(10));
    let p = provisioner(&store, vec![src.clone()], |_| {});
    // A replica that claimed the fill and died: its lease is never renewed nor released.
    let dead = store
        .claim_fill(&GNP, "dead-replica", Duration::from_secs(2))
        .await
        .unwrap();
    let started = Instant::now();
    let r = one(&p, "GNP", req()).await;
    assert_eq!(r.outcome, Outcome::Created, "{r:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "waited for the expiry"
    );
    assert_eq!(src.calls(), 1);
    // The dead replica's late write is fenced off.
    let late = store
        .upsert(
            &GNP,
            &theirs("late"),
            &[],
            Some(Fence::last(dead.token.unwrap())),
        )
        .await;
    assert!(late.is_err(), "{late:?}");
    let stored = store.get_by_source(&GNP).await.unwrap().unwrap();
    assert_eq!((stored.version, stored.title.contains("late")), (1, false));
}

#[tokio::test(start_paused = true)]
async fn a_live_lease_is_followed_until_its_holder_writes() {
    let store = Arc::new(MemoryStore::new());
    let src = Scripted::new(Kind::Announcement, Duration::from_millis(10));
    let p = provisioner(&store, vec![src.clone()], |_| {});
    let ttl = Duration::from_secs(2);
    let token = store
        .claim_fill(&GNP, "other-replica", ttl)
        .await
        .unwrap()
        .token
        .unwrap();
    // The other replica renews for 30 s (far past twice the lease plus 5 s), then writes.
    let holder = {
        let store = store.clone();
        tokio::spawn(async move {
            for _ in 0..60 {
                tokio::time::sleep(Duration::from_millis(500)).await;
                assert!(store.renew_fill(&GNP, token, ttl).await.unwrap());
            }
            store
                .upsert(&GNP, &theirs("theirs"), &[], Some(Fence::last(token)))
                .await
                .unwrap()
        })
    };
    let r = one(&p, "GNP", req()).await;
    let theirs = holder.await.unwrap();
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(r.document_id, theirs.head.id);
    assert_eq!(src.calls(), 0, "the follower never fetched");
}

/// Another replica's result is taken only if it is a fresh fill: a row it wrote whose
/// `last_synced` was then moved back (an operator, a restore) is fetched again, never answered
/// as a hit. (Found by the history checker.)
#[tokio::test(start_paused = true)]
async fn another_fill_whose_sync_time_was_moved_back_is_not_taken() {
    let store = Arc::new(MemoryStore::new());
    let src = Scripted::new(Kind::Announcement, Duration::from_millis(10));
    let p = provisioner(&store, vec![src.clone()], |_| {});
    let token = store
        .claim_fill(&GNP, "other-replica", Duration::from_secs(2))
        .await
        .unwrap()
        .token
        .unwrap();
    let other = {
        let store = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            store
                .upsert(&GNP, &theirs("theirs"), &[], Some(Fence::last(token)))
                .await
                .unwrap();
            // In the same instant, before anyone looks: the row is aged by hand.
            store.age(&GNP, Duration::from_secs(2 * 3600));
        })
    };
    let r = one(
        &p,
        "GNP",
        Request {
            cache_hours: 1,
            ..req()
        },
    )
    .await;
    other.await.unwrap();
    assert_eq!((r.outcome, r.version), (Outcome::Refreshed, 2), "{r:?}");
    assert_eq!(src.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn failures_are_remembered_briefly_and_keep_the_old_version() {
    let store = Arc::new(MemoryStore::new());
    let src = Scripted::new(Kind::Announcement, Duration::ZERO);
    let p = provisioner(&store, vec![src.clone()], |s| {
        s.negative_cache_ttl = Duration::from_secs(5)
    });
    let created = one(&p, "GNP", req()).await;
    src.fail_with(Some(SourceError::Unavailable("upstream 503".into())));
    let forced = Request {
        force_refresh: true,
        ..req()
    };
    let e1 = one(&p, "GNP", forced).await;
    assert_eq!(e1.error.as_ref().map(|e| e.code), Some(Code::Unavailable));
    let e2 = one(&p, "GNP", forced).await;
    assert_eq!(e2.error.as_ref().map(|e| e.code), Some(Code::Unavailable));
    assert_eq!(
        src.calls(),
        2,
        "the second failure came from the negative cache"
    );
    advance(Duration::from_secs(6)).await;
    one(&p, "GNP", forced).await;
    assert_eq!(
        src.calls(),
        3,
        "tried again after the negative cache expired"
    );
    let stored = store.get_by_source(&GNP).await.unwrap().unwrap();
    assert_eq!(
        (stored.id.as_str(), stored.version),
        (created.document_id.as_str(), 1),
        "a failed fill destroys nothing"
    );
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_serves_the_stored_version_within_its_age_only() {
    let store = Arc::new(MemoryStore::new());
    let src = Scripted::new(Kind::Announcement, Duration::ZERO);
    let p = provisioner(&store, vec![src.clone()], |s| {
        s.negative_cache_ttl = Duration::ZERO
    });
    one(&p, "GNP", req()).await;
    store.age(&GNP, Duration::from_secs(30 * 3600));
    src.fail_with(Some(SourceError::Unavailable("upstream down".into())));
    let accepted = one(
        &p,
        "GNP",
        Request {
            stale_if_error_hours: Some(48),
            ..req()
        },
    )
    .await;
    assert_eq!((accepted.outcome, accepted.version), (Outcome::Stale, 1));
    assert!(accepted.is_ok());
    let too_old = one(
        &p,
        "GNP",
        Request {
            stale_if_error_hours: Some(1),
            ..req()
        },
    )
    .await;
    assert_eq!(too_old.outcome, Outcome::Error);
    let error = too_old.error.unwrap();
    assert!(
        error.message.contains("stale_if_error_hours"),
        "the message names the option"
    );
    assert_eq!(error.reason.as_deref(), Some("UPSTREAM_UNAVAILABLE"));

    // A young document and a window of 0: the age is said in minutes, not "0 hours old".
    src.fail_with(None);
    let refreshed = one(
        &p,
        "GNP",
        Request {
            cache_hours: 0,
            ..req()
        },
    )
    .await;
    assert_eq!(refreshed.version, 2);
    store.age(&GNP, Duration::from_secs(1800));
    src.fail_with(Some(SourceError::Unavailable("upstream down".into())));
    let zero = one(
        &p,
        "GNP",
        Request {
            stale_if_error_hours: Some(0),
            cache_hours: 0,
            ..req()
        },
    )
    .await;
    let message = zero.error.unwrap().message;
    assert!(
        message.contains("the stored version is 30 min old")
            && message.contains("options.stale_if_error_hours (0 h)"),
        "{message}"
    );
}

#[tokio::test(start_paused = true)]
async fn fills_are_bounded_by_the_global_limit() {
    let store = Arc::new(MemoryStore::new());
    let src = Scripted::new(Kind::Announcement, Duration::from_secs(1));
    let p = provisioner(&store, vec![src.clone()], |s| s.fill_concurrency = 3);
    let codes: Vec<String> = (0..10).map(|i| format!("S{i:04}")).collect();
    let codes: Vec<&str> = codes.iter().map(String::as_str).collect();
    let results = p.provide(asked(&codes), req()).await;
    assert!(results.iter().all(|r| r.is_ok()));
    assert_eq!(src.most_running.load(Ordering::SeqCst), 3);
    assert_eq!(src.calls(), 10);
}

#[tokio::test(start_paused = true)]
async fn a_slow_source_does_not_hold_the_permits_another_source_needs() {
    let store = Arc::new(MemoryStore::new());
    let slow = Scripted::new(Kind::Announcement, Duration::from_secs(10));
    let quick = Scripted::new(Kind::MarketData, Duration::ZERO);
    let p = provisioner(&store, vec![slow.clone(), quick.clone()], |s| {
        s.fill_concurrency = 2;
        s.fill_concurrency_per_source = 1;
    });
    let batch = {
        let p = p.clone();
        tokio::spawn(async move { p.provide(asked(&["GNP", "BHP", "CBA"]), req()).await })
    };
    while slow.calls() == 0 {
        tokio::task::yield_now().await;
    }
    let started = Instant::now();
    let md = one(
        &p,
        "BHP",
        Request {
            kind: Kind::MarketData,
            ..req()
        },
    )
    .await;
    assert_eq!(md.outcome, Outcome::Created);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "market data waited {:?} (paused time) behind the announcements",
        started.elapsed()
    );
    assert!(batch.await.unwrap().iter().all(|r| r.is_ok()));
}

#[tokio::test(start_paused = true)]
async fn a_database_outage_is_unavailable_and_passes() {
    let store = Arc::new(MemoryStore::new());
    let src = Scripted::new(Kind::Announcement, Duration::ZERO);
    let p = provisioner(&store, vec![src.clone()], |_| {});
    store.set_down(true);
    let r = one(&p, "GNP", req()).await;
    assert_eq!(r.error.as_ref().map(|e| e.code), Some(Code::Unavailable));
    assert_eq!(
        src.calls(),
        0,
        "nothing fetched for a document that cannot be stored"
    );
    store.set_down(false);
    let r = one(&p, "GNP", req()).await;
    assert_eq!(r.outcome, Outcome::Created);
}

#[tokio::test(start_paused = true)]
async fn versions_only_go_up_and_the_id_stays() {
    let store = Arc::new(MemoryStore::new());
    let src = Scripted::new(Kind::Announcement, Duration::from_millis(5));
    let p = provisioner(&store, vec![src.clone()], |_| {});
    let mut last = one(&p, "GNP", req()).await;
    for _ in 0..5 {
        let r = one(
            &p,
            "GNP",
            Request {
                force_refresh: true,
                ..req()
            },
        )
        .await;
        assert_eq!(r.document_id, last.document_id);
        assert_eq!(r.version, last.version + 1);
        last = r;
    }
}

#[tokio::test(start_paused = true)]
async fn an_unknown_kind_or_a_bad_option_is_refused_naming_the_field() {
    let store = Arc::new(MemoryStore::new());
    let src = Scripted::new(Kind::Announcement, Duration::ZERO);
    let p = provisioner(&store, vec![src], |s| s.max_batch_size = 2);
    let e = validate::request(&p, "market_data", None, 1).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("kind:"), "{e:?}");
    let e = validate::request(&p, "", None, 3).unwrap_err();
    assert!(e.message().starts_with("identifiers:"), "{e:?}");
    let opts = documents_api::proto::documents::v1::DocumentOptions {
        cache_hours: Some(1_000_000),
        ..Default::default()
    };
    let e = validate::request(&p, "", Some(&opts), 1).unwrap_err();
    assert!(e.message().starts_with("options.cache_hours:"), "{e:?}");
}

#[tokio::test(start_paused = true)]
async fn stale_while_revalidate_answers_at_once_and_one_fill_follows() {
    let store = Arc::new(MemoryStore::new());
    let src = Scripted::new(Kind::Announcement, Duration::from_secs(10));
    let p = provisioner(&store, vec![src.clone()], |_| {});
    one(&p, "GNP", req()).await;
    assert_eq!(src.calls(), 1);
    store.age(&GNP, Duration::from_secs(30 * 3600));
    let swr = Request {
        stale_while_revalidate_hours: Some(12),
        ..req()
    };
    // Five callers at once, none waits for the ten-second upstream.
    let started = Instant::now();
    let answers = futures::future::join_all((0..5).map(|_| one(&p, "GNP", swr))).await;
    assert_eq!(started.elapsed(), Duration::ZERO, "nobody waited");
    for a in &answers {
        assert_eq!(
            (a.outcome, a.version, a.refreshing),
            (Outcome::Stale, 1, true)
        );
        assert!(a.error.is_none() && a.is_ok(), "{a:?}");
    }
    // One fill behind them.
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(src.calls(), 2, "exactly one background fill");
    let after = one(&p, "GNP", swr).await;
    assert_eq!((after.outcome, after.version), (Outcome::Hit, 2));
    // Beyond the window plus its grace: an ordinary fill the caller waits for.
    store.age(&GNP, Duration::from_secs(40 * 3600));
    let started = Instant::now();
    let late = one(&p, "GNP", swr).await;
    assert_eq!((late.outcome, late.refreshing), (Outcome::Refreshed, false));
    assert!(started.elapsed() >= Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn invalidated_documents_refresh_on_the_next_call_and_keep_their_id() {
    let store = Arc::new(MemoryStore::new());
    let src = Scripted::new(Kind::Announcement, Duration::ZERO);
    let p = provisioner(&store, vec![src.clone()], |_| {});
    let first = one(&p, "GNP", req()).await;
    one(&p, "BHP", req()).await;
    assert_eq!(one(&p, "GNP", req()).await.outcome, Outcome::Hit);
    // By identifier.
    assert_eq!(
        p.invalidate(None, &tickers(&["gnp"]), &[]).await.unwrap(),
        1
    );
    let again = one(&p, "GNP", req()).await;
    assert_eq!(
        (again.outcome, again.version, again.document_id.as_str()),
        (Outcome::Refreshed, 2, first.document_id.as_str())
    );
    assert_eq!(
        one(&p, "GNP", req()).await.outcome,
        Outcome::Hit,
        "the write clears it"
    );
    // By tag (the scripted source tags each document with its ticker).
    assert_eq!(
        p.invalidate(None, &[], &ids(&["ASX:BHP"])).await.unwrap(),
        1
    );
    assert_eq!(one(&p, "BHP", req()).await.outcome, Outcome::Refreshed);
    // A whole kind.
    assert_eq!(
        p.invalidate(Some(Kind::Announcement), &[], &[])
            .await
            .unwrap(),
        2
    );
    let batch = p.provide(asked(&["GNP", "BHP"]), req()).await;
    assert!(
        batch.iter().all(|r| r.outcome == Outcome::Refreshed),
        "{batch:?}"
    );
    // Nothing named: refused, nothing marked.
    let e = validate::invalidation(&p, &[], &[], "").unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = validate::invalidation(&p, &ids(&["ASX..X"]), &[], "").unwrap_err();
    assert!(e.message().starts_with("identifiers[0]: "), "{e:?}");
}

/// Ban semantics: a purge that lands while a fill fetches keeps what that fill fetched purged.
/// The fill fetches again under a new claim, so neither its callers nor one that joined it after
/// the purge get the pre-purge content, and the next call is a hit of the new fetch.
#[tokio::test(start_paused = true)]
async fn a_purge_during_a_fetch_keeps_that_fetch_purged() {
    let store = Arc::new(MemoryStore::new());
    let src = Scripted::new(Kind::Announcement, Duration::from_secs(2));
    let p = provisioner(&store, vec![src.clone()], |_| {});
    let first = one(&p, "GNP", req()).await;
    assert_eq!((first.version, src.calls()), (1, 1));
    let forced = Request {
        force_refresh: true,
        ..req()
    };
    let refresh = tokio::spawn({
        let p = p.clone();
        async move { one(&p, "GNP", forced).await }
    });
    advance(Duration::from_millis(500)).await;
    assert_eq!(src.calls(), 2, "the forced fill is fetching");
    p.invalidate(None, &tickers(&["GNP"]), &[]).await.unwrap();
    // A caller after the purge joins the running fill.
    let joiner = tokio::spawn({
        let p = p.clone();
        async move { one(&p, "GNP", req()).await }
    });
    let (refreshed, joined) = (refresh.await.unwrap(), joiner.await.unwrap());
    assert_eq!(src.calls(), 3, "fetched again after the purge");
    // Version 2 (fetched before the purge) is stored still purged and answered to nobody.
    for r in [&refreshed, &joined] {
        assert_eq!((r.version, r.outcome), (3, Outcome::Refreshed), "{r:?}");
    }
    let stored = store
        .lookup(&[key("ASX:GNP:announcement")])
        .await
        .unwrap()
        .heads
        .remove(0);
    assert_eq!((stored.version, stored.invalidated), (3, false));
    let next = one(&p, "GNP", req()).await;
    assert_eq!((next.outcome, next.version), (Outcome::Hit, 3));
    assert_eq!(src.calls(), 3);

    // A writer that knows nothing of the rule (an older release) cannot clear a later mark:
    // its lease claim predates the purge.
    let claim = store
        .claim_fill(&GNP, "old-release", Duration::from_secs(2))
        .await
        .unwrap();
    p.invalidate(None, &tickers(&["GNP"]), &[]).await.unwrap();
    let content = NewContent {
        title: "fetched before the purge".into(),
        content_markdown: String::new(),
        content_json: serde_json::json!({ "schema_version": 1 }),
        tags: vec![],
    };
    let written = store
        .upsert(&GNP, &content, &[], Some(Fence::last(claim.token.unwrap())))
        .await
        .unwrap();
    assert!(written.head.invalidated, "the mark stays");
    let after = one(&p, "GNP", req()).await;
    assert_eq!((after.outcome, after.version), (Outcome::Refreshed, 5));
}

#[tokio::test(start_paused = true)]
async fn refresh_ahead_refreshes_popular_documents_before_they_go_stale() {
    let store = Arc::new(MemoryStore::new());
    let src = Scripted::new(Kind::Announcement, Duration::from_secs(1));
    let p = provisioner(&store, vec![src.clone()], |s| {
        s.refresh_ahead = Some(provider_service::provisioner::RefreshAhead {
            margin: Duration::from_secs(60),
            min_calls: 2,
        })
    });
    p.start_background(&documents_kit::shutdown::Background::new());
    one(&p, "GNP", req()).await; // created: asked once
    one(&p, "GNP", req()).await; // a hit: asked twice, popular
    one(&p, "BHP", req()).await; // asked once: not popular
    assert_eq!(src.calls(), 2);
    // Both are 30 s from going stale for the 24 h window.
    let almost = Duration::from_secs(24 * 3600 - 30);
    store.age(&GNP, almost);
    store.age(&key("ASX:BHP:announcement"), almost);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(src.calls(), 3, "only the popular one was refreshed ahead");
    let gnp = one(&p, "GNP", req()).await;
    assert_eq!((gnp.outcome, gnp.version), (Outcome::Hit, 2));
    // Past the window the unpopular one is a miss, as without refresh-ahead.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(one(&p, "BHP", req()).await.outcome, Outcome::Refreshed);
}
