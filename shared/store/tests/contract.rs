//! The store's contract, one set of behavioural tests run against every engine alike: the
//! in-memory store, SQLite and PostgreSQL. It is the checklist for a new engine (ARCHITECTURE
//! "How to add a storage engine"): add it to `engines!` and make these pass.
//!
//! PostgreSQL is the server at `TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/
//! postgres`); each test gets a database of its own, dropped at the end. The `pgbouncer` engine
//! is the same server through a real PgBouncer in transaction mode (two server connections per
//! database), as `DATABASE_POOLER=transaction` with `DATABASE_LISTEN_URL` runs it.

use std::{sync::Arc, time::Duration};

use documents_store::{
    memory::MemoryStore, DocumentStore, Fence, Kind, NewAttachment, NewContent, PostgresStore,
    SourceKey, StorageError, Topology,
};

#[path = "../../../tests/src/pgbouncer.rs"]
#[allow(dead_code)]
mod pgbouncer;

const KIND: Kind = Kind::Announcement;

/// The announcement document of `code`.
fn sid(code: &str) -> SourceKey {
    key(KIND, code)
}

fn key(kind: Kind, code: &str) -> SourceKey {
    SourceKey::new(
        kind,
        documents_domain::Ticker::parse(&format!("ASX:{code}")).unwrap(),
    )
}

fn content(title: &str, tags: &[&str]) -> NewContent {
    NewContent {
        title: title.into(),
        content_markdown: format!("# {title}"),
        content_json: serde_json::json!({ "schema_version": 1, "title": title }),
        tags: tags.iter().map(|t| t.to_string()).collect(),
    }
}

fn pdf(name: &str, body: &[u8]) -> NewAttachment {
    NewAttachment {
        name: name.into(),
        content_type: "application/pdf".into(),
        data: body.to_vec(),
    }
}

/// A store of one engine, and what to drop with it.
struct Engine {
    store: Arc<dyn DocumentStore>,
    _cleanup: Option<Cleanup>,
}

enum Cleanup {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Database(String),
    /// The pooler, then the database (fields drop in order).
    Pooled(
        #[allow(dead_code)] pgbouncer::PgBouncer,
        #[allow(dead_code)] Box<Cleanup>,
    ),
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Cleanup::Database(name) = self {
            let _ = std::process::Command::new("psql")
                .arg(admin_url())
                .args([
                    "-q",
                    "-c",
                    &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                ])
                .output();
        }
    }
}

fn admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

async fn engine(name: &str) -> Engine {
    match name {
        "memory" => Engine {
            store: Arc::new(MemoryStore::new()),
            _cleanup: None,
        },
        "sqlite" => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("documents.db").display());
            let store = documents_store::connect(&url, 4).await.unwrap();
            store.migrate().await.unwrap();
            Engine {
                store,
                _cleanup: Some(Cleanup::Dir(dir)),
            }
        }
        "postgres" => {
            let (url, cleanup) = fresh_database();
            let store = documents_store::connect(&url, 4).await.unwrap();
            store.migrate().await.unwrap();
            Engine {
                store,
                _cleanup: Some(cleanup),
            }
        }
        "pgbouncer" => {
            let (direct, cleanup) = fresh_database();
            let pooler = pooler();
            let topology = Topology {
                transaction_pooler: true,
                listen_url: Some(direct.clone()),
            };
            let store = documents_store::connect_with(&pooler.url(&direct), 4, &topology)
                .await
                .unwrap();
            // Migrations take the session URL.
            store.migrate().await.unwrap();
            Engine {
                store,
                _cleanup: Some(Cleanup::Pooled(pooler, Box::new(cleanup))),
            }
        }
        other => panic!("unknown engine {other}"),
    }
}

/// A new database on the test server: its URL, and what drops it.
fn fresh_database() -> (String, Cleanup) {
    let db = format!("store_{}", uuid::Uuid::now_v7().simple());
    let out = std::process::Command::new("psql")
        .arg(admin_url())
        .args(["-q", "-c", &format!("CREATE DATABASE {db}")])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let admin = admin_url();
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    (format!("{base}/{db}"), Cleanup::Database(db))
}

/// A PgBouncer in transaction mode in front of the test server, two server connections per
/// database: fewer than the store's pool, so operations share server connections.
fn pooler() -> pgbouncer::PgBouncer {
    let admin = admin_url();
    let after_at = admin.rsplit_once('@').map_or(admin.as_str(), |(_, r)| r);
    let server = after_at.split('/').next().unwrap_or("127.0.0.1:5432");
    pgbouncer::PgBouncer::start(server, "transaction", 2)
}

/// Each contract case as a test per engine.
macro_rules! engines {
    ($($case:ident),* $(,)?) => {
        $(
            mod $case {
                #[tokio::test]
                async fn memory() {
                    super::$case(super::engine("memory").await.store).await
                }
                #[tokio::test]
                async fn sqlite() {
                    super::$case(super::engine("sqlite").await.store).await
                }
                #[tokio::test]
                async fn postgres() {
                    super::$case(super::engine("postgres").await.store).await
                }
                #[tokio::test]
                async fn pgbouncer() {
                    super::$case(super::engine("pgbouncer").await.store).await
                }
            }
        )*
    };
}

engines!(
    a_lookup_answers_what_is_stored_with_the_database_clock,
    a_refresh_keeps_the_id_and_raises_the_version,
    a_lease_has_one_holder_until_it_expires_or_is_released,
    a_fenced_write_lands_only_under_the_current_token,
    renewals_and_failures_are_recorded_on_the_lease,
    invalidation_marks_what_it_names_and_a_later_fill_clears_it,
    a_write_under_a_claim_older_than_a_purge_stays_purged,
    attachments_are_content_addressed_and_linked_by_name,
    the_invariants_hold_on_what_the_contract_writes,
    heads_by_tag_are_of_one_kind_any_tag_and_bounded,
);

async fn heads_by_tag_are_of_one_kind_any_tag_and_bounded(s: Arc<dyn DocumentStore>) {
    for (code, tags) in [
        ("GNP", &["gnp", "asx"][..]),
        ("BHP", &["bhp", "asx"][..]),
        ("CBA", &["cba"][..]),
    ] {
        s.upsert(&sid(code), &content(code, tags), &[], None)
            .await
            .unwrap();
    }
    s.upsert(
        &key(Kind::MarketData, "RIO"),
        &content("prices", &["asx"]),
        &[],
        None,
    )
    .await
    .unwrap();
    let codes = |heads: Vec<documents_store::DocumentHead>| {
        heads
            .iter()
            .map(|h| h.key.ticker().code().to_string())
            .collect::<Vec<_>>()
    };
    let tags = |t: &[&str]| t.iter().map(|t| t.to_string()).collect::<Vec<_>>();
    let tagged = s.heads_tagged(KIND, &tags(&["asx"]), 10).await.unwrap();
    assert_eq!(codes(tagged.clone()), ["BHP", "GNP"]);
    assert!(tagged.iter().all(|h| h.version == 1 && !h.invalidated));
    assert_eq!(
        codes(
            s.heads_tagged(KIND, &tags(&["cba", "gnp"]), 10)
                .await
                .unwrap()
        ),
        ["CBA", "GNP"]
    );
    assert_eq!(
        codes(
            s.heads_tagged(KIND, &tags(&["asx", "cba"]), 2)
                .await
                .unwrap()
        ),
        ["BHP", "CBA"]
    );
    assert!(s
        .heads_tagged(KIND, &tags(&["none"]), 10)
        .await
        .unwrap()
        .is_empty());
}

async fn a_lookup_answers_what_is_stored_with_the_database_clock(s: Arc<dyn DocumentStore>) {
    let before = chrono::Utc::now() - chrono::Duration::seconds(5);
    let empty = s.lookup(&[sid("GNP")]).await.unwrap();
    assert!(empty.heads.is_empty());
    assert!(
        empty.now > before,
        "the database's clock comes back on a miss too"
    );
    let gnp = s
        .upsert(&sid("GNP"), &content("GNP", &["a"]), &[], None)
        .await
        .unwrap();
    s.upsert(&sid("BHP"), &content("BHP", &[]), &[], None)
        .await
        .unwrap();
    let found = s
        .lookup(&[sid("GNP"), sid("BHP"), sid("CBA")])
        .await
        .unwrap();
    let mut keys: Vec<&SourceKey> = found.heads.iter().map(|h| &h.key).collect();
    keys.sort();
    assert_eq!(keys, [&sid("BHP"), &sid("GNP")]);
    let head = found.heads.iter().find(|h| h.key == sid("GNP")).unwrap();
    assert_eq!(head, &gnp.head);
    assert_eq!(head.tags, ["a"]);
    // Another kind with the same code is another document.
    assert!(s
        .lookup(&[key(Kind::MarketData, "GNP")])
        .await
        .unwrap()
        .heads
        .is_empty());
    let doc = s.get(&gnp.head.id).await.unwrap().unwrap();
    assert_eq!((doc.title.as_str(), doc.version), ("GNP", 1));
    assert_eq!(doc, s.get_by_source(&sid("GNP")).await.unwrap().unwrap());
    assert!(s.get("no-such-id").await.unwrap().is_none());
}

async fn a_refresh_keeps_the_id_and_raises_the_version(s: Arc<dyn DocumentStore>) {
    let first = s
        .upsert(&sid("GNP"), &content("one", &[]), &[], None)
        .await
        .unwrap();
    assert!(first.inserted);
    assert_eq!(first.head.version, 1);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = s
        .upsert(&sid("GNP"), &content("two", &["t"]), &[], None)
        .await
        .unwrap();
    assert!(!second.inserted);
    assert_eq!(
        (second.head.id.as_str(), second.head.version),
        (first.head.id.as_str(), 2)
    );
    assert!(second.head.last_synced > first.head.last_synced);
    let doc = s.get(&first.head.id).await.unwrap().unwrap();
    assert_eq!(
        (doc.title.as_str(), doc.tags.as_slice()),
        ("two", &["t".to_string()][..])
    );
    assert_eq!(doc.content_hash, content("two", &["t"]).content_hash());
    assert!(doc.created_at <= doc.updated_at);
}

async fn a_lease_has_one_holder_until_it_expires_or_is_released(s: Arc<dyn DocumentStore>) {
    let ttl = Duration::from_millis(300);
    let a = s.claim_fill(&sid("GNP"), "a", ttl).await.unwrap();
    assert_eq!(a.token, Some(1));
    assert!(a.head.is_none(), "no document yet");
    // Held: another holder is refused, the same one may claim again (a new token).
    assert_eq!(
        s.claim_fill(&sid("GNP"), "b", ttl).await.unwrap().token,
        None
    );
    let again = s.claim_fill(&sid("GNP"), "a", ttl).await.unwrap();
    assert_eq!(again.token, Some(2));
    let lease = s.lease(&sid("GNP")).await.unwrap().unwrap();
    assert!(lease.held);
    assert_eq!(lease.holding.as_ref().unwrap().holder, "a");
    assert_eq!(s.held_leases().await.unwrap().len(), 1);
    // Expired: another holder takes it over, with the next token.
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    let b = s.claim_fill(&sid("GNP"), "b", ttl).await.unwrap();
    assert_eq!(b.token, Some(3));
    // Released: free for anyone at once; the token stays.
    s.release_fill(&sid("GNP"), 3, None).await.unwrap();
    let lease = s.lease(&sid("GNP")).await.unwrap().unwrap();
    assert!(!lease.held && lease.holding.is_none());
    assert_eq!(lease.token, 3);
    assert!(s.held_leases().await.unwrap().is_empty());
    assert_eq!(
        s.claim_fill(&sid("GNP"), "c", ttl).await.unwrap().token,
        Some(4)
    );
    // A claim reads the document as it is after the claim.
    s.upsert(&sid("BHP"), &content("BHP", &[]), &[], None)
        .await
        .unwrap();
    let claim = s.claim_fill(&sid("BHP"), "c", ttl).await.unwrap();
    assert_eq!(claim.head.map(|h| h.version), Some(1));
    // A holder that went away: swept once expired past the grace, token kept.
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    assert_eq!(
        s.clear_abandoned_leases(Duration::from_millis(1))
            .await
            .unwrap(),
        2
    );
    let lease = s.lease(&sid("GNP")).await.unwrap().unwrap();
    assert!(!lease.held && lease.token == 4);
}

async fn a_fenced_write_lands_only_under_the_current_token(s: Arc<dyn DocumentStore>) {
    let ttl = Duration::from_secs(10);
    let old = s
        .claim_fill(&sid("GNP"), "a", ttl)
        .await
        .unwrap()
        .token
        .unwrap();
    let current = s
        .claim_fill(&sid("GNP"), "a", ttl)
        .await
        .unwrap()
        .token
        .unwrap();
    // A write under a token that was taken over: refused, nothing written.
    let e = s
        .upsert(
            &sid("GNP"),
            &content("late", &[]),
            &[],
            Some(Fence::last(old)),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, StorageError::LeaseLost(t) if t == old), "{e:?}");
    assert!(s.get_by_source(&sid("GNP")).await.unwrap().is_none());
    let e = s
        .upsert(
            &sid("GNP"),
            &content("late", &[]),
            &[pdf("x", b"%PDF-late")],
            Some(Fence::keep(old)),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, StorageError::LeaseLost(_)), "{e:?}");
    assert!(s
        .attachment_data(&pdf("x", b"%PDF-late").hash())
        .await
        .unwrap()
        .is_none());
    // A checkpoint under the current token lands and keeps the lease.
    s.upsert(
        &sid("GNP"),
        &content("checkpoint", &[]),
        &[pdf("x", b"%PDF-1")],
        Some(Fence::keep(current)),
    )
    .await
    .unwrap();
    assert!(s.lease(&sid("GNP")).await.unwrap().unwrap().held);
    // The last write lands and releases it.
    let last = s
        .upsert(
            &sid("GNP"),
            &content("final", &[]),
            &[],
            Some(Fence::last(current)),
        )
        .await
        .unwrap();
    assert_eq!(last.head.version, 2);
    let lease = s.lease(&sid("GNP")).await.unwrap().unwrap();
    assert!(!lease.held && lease.last_error.is_none());
    // No lease at all: a fenced write is refused.
    let e = s
        .upsert(&sid("BHP"), &content("x", &[]), &[], Some(Fence::last(1)))
        .await
        .unwrap_err();
    assert!(matches!(e, StorageError::LeaseLost(1)), "{e:?}");
}

async fn renewals_and_failures_are_recorded_on_the_lease(s: Arc<dyn DocumentStore>) {
    let ttl = Duration::from_millis(300);
    let t = s
        .claim_fill(&sid("GNP"), "a", ttl)
        .await
        .unwrap()
        .token
        .unwrap();
    // Renewed past its first expiry: still held.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(s.renew_fill(&sid("GNP"), t, ttl).await.unwrap());
    }
    assert!(s.lease(&sid("GNP")).await.unwrap().unwrap().held);
    assert_eq!(
        s.claim_fill(&sid("GNP"), "b", ttl).await.unwrap().token,
        None
    );
    // Released with a failure: its code and message stay for followers to answer.
    s.release_fill(&sid("GNP"), t, Some((14, "upstream down")))
        .await
        .unwrap();
    let lease = s.lease(&sid("GNP")).await.unwrap().unwrap();
    assert_eq!(lease.last_error, Some((14, "upstream down".to_string())));
    assert!(lease.finished_at.is_some());
    // A renewal or release under a stale token changes nothing.
    let t2 = s
        .claim_fill(&sid("GNP"), "b", ttl)
        .await
        .unwrap()
        .token
        .unwrap();
    assert!(!s.renew_fill(&sid("GNP"), t, ttl).await.unwrap());
    s.release_fill(&sid("GNP"), t, None).await.unwrap();
    let lease = s.lease(&sid("GNP")).await.unwrap().unwrap();
    assert!(lease.held && lease.token == t2);
}

async fn invalidation_marks_what_it_names_and_a_later_fill_clears_it(s: Arc<dyn DocumentStore>) {
    for (code, tags) in [("GNP", ["gnp", "asx"]), ("BHP", ["bhp", "asx"])] {
        s.upsert(&sid(code), &content(code, &tags), &[], None)
            .await
            .unwrap();
    }
    s.upsert(
        &key(Kind::MarketData, "GNP"),
        &content("prices", &["gnp"]),
        &[],
        None,
    )
    .await
    .unwrap();
    let marked = |s: Arc<dyn DocumentStore>| async move {
        let mut m = Vec::new();
        for (kind, code) in [(KIND, "GNP"), (KIND, "BHP"), (Kind::MarketData, "GNP")] {
            if s.lookup(&[key(kind, code)]).await.unwrap().heads[0].invalidated {
                m.push(format!("{kind} {code}"));
            }
        }
        m
    };
    assert_eq!(
        s.invalidate(Some(KIND), &[sid("GNP")], &[]).await.unwrap(),
        1
    );
    assert_eq!(marked(s.clone()).await, [format!("{KIND} GNP")]);
    // By tag, across kinds.
    assert_eq!(s.invalidate(None, &[], &["gnp".into()]).await.unwrap(), 2);
    assert_eq!(marked(s.clone()).await.len(), 2);
    // A whole kind.
    assert_eq!(s.invalidate(Some(KIND), &[], &[]).await.unwrap(), 2);
    assert_eq!(marked(s.clone()).await.len(), 3);
    // A fill that claims after the purge clears the mark with its write.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let t = s
        .claim_fill(&sid("GNP"), "a", Duration::from_secs(10))
        .await
        .unwrap()
        .token
        .unwrap();
    let w = s
        .upsert(
            &sid("GNP"),
            &content("fresh", &[]),
            &[],
            Some(Fence::last(t)),
        )
        .await
        .unwrap();
    assert!(!w.head.invalidated);
    assert!(!marked(s.clone()).await.contains(&format!("{KIND} GNP")));
}

async fn a_write_under_a_claim_older_than_a_purge_stays_purged(s: Arc<dyn DocumentStore>) {
    s.upsert(&sid("GNP"), &content("v1", &[]), &[], None)
        .await
        .unwrap();
    let t = s
        .claim_fill(&sid("GNP"), "a", Duration::from_secs(10))
        .await
        .unwrap()
        .token
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    s.invalidate(Some(KIND), &[sid("GNP")], &[]).await.unwrap();
    // Fetched before the purge (its claim is older): stored, still purged.
    let w = s
        .upsert(&sid("GNP"), &content("v2", &[]), &[], Some(Fence::last(t)))
        .await
        .unwrap();
    assert_eq!(w.head.version, 2);
    assert!(w.head.invalidated, "the mark stays");
    assert!(s.lookup(&[sid("GNP")]).await.unwrap().heads[0].invalidated);
}

async fn attachments_are_content_addressed_and_linked_by_name(s: Arc<dyn DocumentStore>) {
    let a = pdf("first", b"%PDF-one");
    let b = pdf("second", b"%PDF-two");
    let w = s
        .upsert(
            &sid("GNP"),
            &content("v1", &[]),
            &[a.clone(), b.clone()],
            None,
        )
        .await
        .unwrap();
    let refs = s.attachments_of(&w.head.id).await.unwrap();
    assert_eq!(
        refs.iter()
            .map(|r| (r.name.as_str(), r.hash.as_str()))
            .collect::<Vec<_>>(),
        [("first", a.hash().as_str()), ("second", b.hash().as_str())]
    );
    assert_eq!(refs[0].size_bytes, 8);
    // The same bytes under another document: stored once.
    let other = s
        .upsert(
            &sid("BHP"),
            &content("x", &[]),
            &[pdf("copy", b"%PDF-one")],
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        s.attachments_of(&other.head.id).await.unwrap()[0].hash,
        a.hash()
    );
    // A later write keeps earlier links and replaces one under the same name.
    let c = pdf("second", b"%PDF-three");
    s.upsert(
        &sid("GNP"),
        &content("v2", &[]),
        std::slice::from_ref(&c),
        None,
    )
    .await
    .unwrap();
    let refs = s.attachments_of(&w.head.id).await.unwrap();
    assert_eq!(
        refs.iter().map(|r| r.hash.as_str()).collect::<Vec<_>>(),
        [a.hash().as_str(), c.hash().as_str()]
    );
    assert_eq!(
        s.attachment_data(&c.hash()).await.unwrap().unwrap(),
        b"%PDF-three"
    );
    assert!(s.attachment_data("0000").await.unwrap().is_none());
}

async fn the_invariants_hold_on_what_the_contract_writes(s: Arc<dyn DocumentStore>) {
    assert_eq!(s.check_invariants().await.unwrap(), Vec::<String>::new());
    s.upsert(
        &sid("GNP"),
        &content("v1", &[]),
        &[pdf("a", b"%PDF-a")],
        None,
    )
    .await
    .unwrap();
    let t = s
        .claim_fill(&sid("BHP"), "a", Duration::from_secs(10))
        .await
        .unwrap()
        .token
        .unwrap();
    s.upsert(&sid("BHP"), &content("v1", &[]), &[], Some(Fence::last(t)))
        .await
        .unwrap();
    assert_eq!(s.check_invariants().await.unwrap(), Vec::<String>::new());
    s.ping().await.unwrap();
}

// Through a transaction-mode pooler: what the engine needs beyond the contract.

/// Many operations at once through PgBouncer with two server connections: each operation's
/// statements stay on one server connection (its own transaction), so none runs another's
/// unnamed statement or loses its parameters.
#[tokio::test]
async fn through_a_transaction_pooler_concurrent_operations_keep_to_themselves() {
    let engine = engine("pgbouncer").await;
    let s = engine.store.clone();
    let codes: Vec<String> = (0..40).map(|i| format!("P{i:03}")).collect();
    let tasks: Vec<_> = codes
        .iter()
        .cloned()
        .map(|code| {
            let s = s.clone();
            tokio::spawn(async move {
                let key = sid(&code);
                let claim = s.claim_fill(&key, &code, Duration::from_secs(30)).await?;
                let token = claim.token.expect("a first claim");
                let written = s
                    .upsert(
                        &key,
                        &content(&code, &[&code]),
                        &[],
                        Some(Fence::last(token)),
                    )
                    .await?;
                let found = s.lookup(std::slice::from_ref(&key)).await?;
                let doc = s.get(&written.head.id).await?.expect("written");
                Ok::<_, StorageError>((code, found.heads, doc.title))
            })
        })
        .collect();
    for task in tasks {
        let (code, heads, title) = task.await.unwrap().unwrap();
        assert_eq!(heads.len(), 1, "{code}");
        assert_eq!(heads[0].key, sid(&code));
        assert_eq!(title, code);
    }
    assert!(s.check_invariants().await.unwrap().is_empty());
}

/// The statement timeout reaches every operation through the pooler (set inside its
/// transaction), where the startup parameter the direct connection uses is refused.
#[tokio::test]
async fn the_statement_timeout_survives_a_transaction_pooler() {
    let (direct, _db) = fresh_database();
    let pooler = pooler();
    let through = pooler.url(&direct);
    let refused = PostgresStore::connect(&through, 2)
        .await
        .err()
        .map(|e| e.to_string());
    assert!(
        refused.as_deref().is_some_and(|e| e.contains("options")),
        "a startup option through PgBouncer: {refused:?}"
    );
    let topology = Topology {
        transaction_pooler: true,
        listen_url: None,
    };
    let pooled = PostgresStore::connect_with(&through, 2, &topology)
        .await
        .unwrap();
    assert_eq!(pooled.setting("statement_timeout").await.unwrap(), "15s");
    let direct = PostgresStore::connect(&direct, 2).await.unwrap();
    assert_eq!(direct.setting("statement_timeout").await.unwrap(), "15s");
}

/// Behind a transaction pooler without a session URL: migrating is refused with a message
/// that says what to set, and there is no change feed (nothing listens and goes stale).
#[tokio::test]
async fn without_a_session_url_migrations_are_refused_and_there_is_no_feed() {
    let (direct, _db) = fresh_database();
    let pooler = pooler();
    let topology = Topology {
        transaction_pooler: true,
        listen_url: None,
    };
    let s = documents_store::connect_with(&pooler.url(&direct), 2, &topology)
        .await
        .unwrap();
    let err = s.migrate().await.unwrap_err();
    assert!(matches!(err, StorageError::NeedsSession(_)), "{err}");
    assert!(err.to_string().contains("DATABASE_LISTEN_URL"), "{err}");
    assert!(s.changes().is_none());
}
