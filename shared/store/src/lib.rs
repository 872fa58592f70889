//! Storage of documents and attachments: one [`DocumentStore`] trait with a PostgreSQL and an
//! SQLite implementation, chosen at start-up from the database URL, each with its own embedded
//! migrations, the invariants a database must keep, and an in-memory store for unit tests. No
//! gRPC type here: services map a [`StorageError`] to their wire errors at their edge.

pub mod memory;
mod postgres;
mod reads;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

pub use documents_domain::{Kind, SourceKey};
pub use postgres::{PostgresStore, STATEMENT_TIMEOUT};
pub use sqlite::SqliteStore;

/// A storage failure. Services map it to UNAVAILABLE when [`StorageError::is_transient`], else
/// INTERNAL.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database URL {0:?} is not supported: expected sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// The database refuses writes (a read-only file or file system, a read-only PostgreSQL
    /// session or replica): retryable, and health says NOT_SERVING until it takes writes again.
    #[error("database is read-only: {0}")]
    ReadOnly(String),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("migrating the database failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("fill lease lost: another filler took over (token {0} is no longer current)")]
    LeaseLost(i64),
    /// Something that needs a session of its own was asked of a transaction-mode pooler.
    #[error("{0} need a session of their own, which a transaction-mode pooler does not keep: set DATABASE_LISTEN_URL to a direct connection to PostgreSQL")]
    NeedsSession(&'static str),
    #[error("database schema is at migration {have}, this binary needs {need}: run the migrations (a service with DATABASE_MIGRATE=true does)")]
    SchemaBehind { have: i64, need: i64 },
    #[error("database schema is at migration {schema} and needs binaries that know migration {oldest_compatible} or later; this binary knows migrations up to {binary}: deploy a newer binary")]
    SchemaIncompatible {
        schema: i64,
        oldest_compatible: i64,
        binary: i64,
    },
}

/// The invariant checks both stores run: what each finds is named by its label. The three that
/// need dialect-specific SQL (reading JSON, comparing a lease's expiry with now, finding a
/// trigger) are passed in.
fn invariant_checks(
    without_schema_version: &'static str,
    lease_held_past_expiry: &'static str,
    history_guard_missing: &'static str,
) -> [(&'static str, &'static str); 7] {
    [
        ("duplicate source keys", "SELECT source_type || ' ' || source_id FROM documents GROUP BY source_type, source_id HAVING COUNT(*) > 1"),
        ("version below 1", "SELECT id FROM documents WHERE version < 1"),
        ("document without a title or content hash", "SELECT id FROM documents WHERE title = '' OR content_hash = ''"),
        ("attachment referenced by no document", "SELECT hash FROM attachments a WHERE NOT EXISTS (SELECT 1 FROM document_attachments l WHERE l.attachment_hash = a.hash)"),
        ("document without a schema_version in its JSON content", without_schema_version),
        ("lease held past its expiry", lease_held_past_expiry),
        (
            "trigger missing (versions only increase, IDs stay)",
            history_guard_missing,
        ),
    ]
}

impl From<sqlx::Error> for StorageError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_) => StorageError::Unavailable(e),
            // SQLITE_READONLY and its extended codes; PostgreSQL read_only_sql_transaction.
            sqlx::Error::Database(ref db)
                if db.code().is_some_and(|c| {
                    matches!(
                        &*c,
                        "8" | "264" | "520" | "776" | "1032" | "1288" | "1544" | "25006"
                    )
                }) =>
            {
                // Every pooled connection may be read-only now: renew them all.
                READ_ONLY_SEEN.store(true, std::sync::atomic::Ordering::Release);
                StorageError::ReadOnly(db.message().to_string())
            }
            sqlx::Error::Database(ref db)
                if db.code().is_some_and(|c| {
                    // SQLITE_BUSY / SQLITE_LOCKED, PostgreSQL admin shutdown / cannot connect now.
                    matches!(&*c, "5" | "6" | "517" | "57P01" | "57P02" | "57P03")
                }) =>
            {
                StorageError::Unavailable(e)
            }
            other => StorageError::Database(other),
        }
    }
}

impl StorageError {
    /// Whether the failure is the database's state, not the request's: it is down, busy or
    /// refusing writes, and the same work may succeed later (callers retry it).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StorageError::Unavailable(_) | StorageError::ReadOnly(_)
        )
    }

    /// The failure as a reason code for callers: `DATABASE_UNAVAILABLE`,
    /// `DATABASE_READ_ONLY` or `DATABASE_ERROR`.
    pub fn reason(&self) -> &'static str {
        match self {
            StorageError::Unavailable(_) => "DATABASE_UNAVAILABLE",
            StorageError::ReadOnly(_) => "DATABASE_READ_ONLY",
            _ => "DATABASE_ERROR",
        }
    }
}

/// What the provider needs to judge freshness of a stored document.
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentHead {
    pub id: String,
    pub key: SourceKey,
    pub tags: Vec<String>,
    pub version: i64,
    pub last_synced: DateTime<Utc>,
    /// Marked stale by an invalidation since it was last written: stale whatever its age.
    pub invalidated: bool,
}

/// The heads found by one lookup, and the database's clock at the time of the lookup.
#[derive(Debug, Clone)]
pub struct Lookup {
    pub now: DateTime<Utc>,
    pub heads: Vec<DocumentHead>,
}

/// A whole stored document.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDocument {
    pub id: String,
    pub key: SourceKey,
    pub title: String,
    pub content_markdown: String,
    pub content_json: serde_json::Value,
    pub tags: Vec<String>,
    pub content_hash: String,
    pub version: i64,
    pub last_synced: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl StoredDocument {
    pub fn head(&self) -> DocumentHead {
        DocumentHead {
            id: self.id.clone(),
            key: self.key.clone(),
            tags: self.tags.clone(),
            version: self.version,
            last_synced: self.last_synced,
            invalidated: false,
        }
    }
}

/// New content for a document, as a source or the consumer produces it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewContent {
    pub title: String,
    pub content_markdown: String,
    pub content_json: serde_json::Value,
    pub tags: Vec<String>,
}

impl NewContent {
    /// sha256 (hex) over title, markdown and JSON content.
    pub fn content_hash(&self) -> String {
        let mut h = Sha256::new();
        for part in [
            self.title.as_bytes(),
            self.content_markdown.as_bytes(),
            self.content_json.to_string().as_bytes(),
        ] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        hex::encode(h.finalize())
    }
}

/// A binary attachment to store with a document, under a name unique within the document.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAttachment {
    pub name: String,
    pub content_type: String,
    pub data: Vec<u8>,
}

impl NewAttachment {
    /// The content address: sha256 (hex) of the bytes.
    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(&self.data))
    }
}

/// A document's reference to an attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentRef {
    pub name: String,
    pub hash: String,
    pub content_type: String,
    pub size_bytes: i64,
}

/// The result of writing a document.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    pub head: DocumentHead,
    /// True when the row was inserted, false when an existing row was refreshed.
    pub inserted: bool,
}

/// The state of a document's fill lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub token: i64,
    /// Some filler holds it and it has not expired (by the database's clock).
    pub held: bool,
    /// The outcome of the last fill that released it with an error, and when (database clock).
    pub last_error: Option<(i32, String)>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Who holds it and until when, while it is held.
    pub holding: Option<Holding>,
}

/// The holder of a live fill lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    pub holder: String,
    pub claimed_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// A fill lease held now, by any process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldLease {
    pub key: SourceKey,
    pub token: i64,
    pub holding: Holding,
}

/// The outcome of a lease claim.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    /// The new fencing token, or `None` when another filler holds the lease.
    pub token: Option<i64>,
    /// When claimed: the document as it is now, read after the claim (so it shows any write of
    /// the previous holder), if it exists.
    pub head: Option<DocumentHead>,
}

/// A write made under a fill lease: it only lands while `token` is still the lease's token
/// (otherwise [`StorageError::LeaseLost`], nothing written), in the same transaction as the
/// check. The last write of a fill or round also releases the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    pub token: i64,
    /// Release the lease with this write.
    pub release: bool,
}

impl Fence {
    /// The last write under the lease: it releases it.
    pub fn last(token: i64) -> Self {
        Self {
            token,
            release: true,
        }
    }

    /// A write that keeps the lease (a checkpoint of a round still running).
    pub fn keep(token: i64) -> Self {
        Self {
            token,
            release: false,
        }
    }
}

/// A change to a stored document, as announced by the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The document of `key` now has `version` (0: deleted).
    Document { key: SourceKey, version: i64 },
    /// The feed (re)connected: changes before this may have been missed, forget what you know.
    Reset,
    /// The feed is down: changes are not being announced until the next `Reset`.
    Lost,
    /// This process's own heartbeat, sent at `sent`, came back through the feed: every change
    /// committed before `sent` has been announced (notifications arrive in commit order).
    Heartbeat { sent: tokio::time::Instant },
}

/// Which database a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
    /// [`memory::MemoryStore`], for unit tests.
    Memory,
}

/// The one storage interface both services use.
#[async_trait]
pub trait DocumentStore: Send + Sync + 'static {
    fn backend(&self) -> Backend;

    /// Applies the embedded migrations; safe when several processes start at once.
    async fn migrate(&self) -> Result<(), StorageError>;

    /// Checks, without changing anything, that the schema has every migration this binary
    /// needs (for a service whose database role may not run migrations).
    async fn schema_ready(&self) -> Result<(), StorageError>;

    /// Checks the stored data against the invariants the services keep, and answers every
    /// violation found (empty: all hold): one row per source key, versions of at least 1, every
    /// document with a title, JSON content with a schema version and a content hash, every
    /// attachment referenced by a document, no lease still held past its expiry.
    async fn check_invariants(&self) -> Result<Vec<String>, StorageError>;

    /// Checks the database answers.
    async fn ping(&self) -> Result<(), StorageError>;

    /// Heads of the documents of `keys` that exist, in one query per kind (one, in practice),
    /// with the database's clock.
    async fn lookup(&self, keys: &[SourceKey]) -> Result<Lookup, StorageError>;

    /// Heads of the documents of `kind` carrying any of `tags`, at most `limit` of them (by
    /// source ID): what a watch by tag covers.
    async fn heads_tagged(
        &self,
        kind: Kind,
        tags: &[String],
        limit: usize,
    ) -> Result<Vec<DocumentHead>, StorageError>;

    /// Inserts the document of `key`, or refreshes it in place: same ID,
    /// version + 1, `last_synced` = the database's now. Attachments are stored (deduplicated by
    /// hash) and linked to the document in the same transaction; the document's previous links
    /// are kept unless replaced under the same name. With a `fence`, the write only lands if the
    /// fill lease still has that token ([`StorageError::LeaseLost`] otherwise), and releases it
    /// if the fence says so.
    async fn upsert(
        &self,
        key: &SourceKey,
        content: &NewContent,
        attachments: &[NewAttachment],
        fence: Option<Fence>,
    ) -> Result<Written, StorageError>;

    /// Claims the fill lease of a document for `ttl` unless another holder's lease is still
    /// running, and reads the document's current head (as of after the claim). The same holder
    /// may claim again at once: its earlier fill is over (one fill per document per process),
    /// or if not, that fill's write is fenced off by the new token; so a lease a fill could not
    /// release (the database was down) does not stall the process that took it.
    async fn claim_fill(
        &self,
        key: &SourceKey,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<Claim, StorageError>;

    /// Extends a lease this filler holds (same token) to `ttl` from now. `false` when the token
    /// is no longer current: another filler took the lease over.
    async fn renew_fill(
        &self,
        key: &SourceKey,
        token: i64,
        ttl: std::time::Duration,
    ) -> Result<bool, StorageError>;

    /// Releases leases whose holder is gone (a killed filler): still held, and expired more
    /// than `grace` ago. Their tokens stay, so fencing is unchanged. Answers how many.
    async fn clear_abandoned_leases(&self, grace: std::time::Duration)
        -> Result<u64, StorageError>;

    /// Releases a lease this filler holds (same token), recording the fill's error if it failed.
    async fn release_fill(
        &self,
        key: &SourceKey,
        token: i64,
        error: Option<(i32, &str)>,
    ) -> Result<(), StorageError>;

    /// A feed of document changes made by any process: PostgreSQL announces each document
    /// (LISTEN/NOTIFY), SQLite only that something changed (`Reset`, from `PRAGMA data_version`);
    /// `None` where there is no feed (the in-memory store).
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Change>> {
        None
    }

    /// Connections in the pool: (open, idle).
    fn pool_usage(&self) -> (u32, usize);

    /// Stops the store's own task (the change feed) and closes its pool: the last thing a
    /// process does with its database on shutdown.
    async fn close(&self) {}

    /// The lease of a document, if one was ever claimed.
    async fn lease(&self, key: &SourceKey) -> Result<Option<Lease>, StorageError>;

    /// Marks documents stale without touching them otherwise: those of `kind` (every kind when
    /// `None`) whose key is in `keys` or that carry one of `tags`; with neither, every document
    /// of `kind`. Answers how many were marked. A write whose fill claimed its lease after the
    /// mark clears it (the purge guard).
    async fn invalidate(
        &self,
        kind: Option<Kind>,
        keys: &[SourceKey],
        tags: &[String],
    ) -> Result<u64, StorageError>;

    /// The fill leases held now (unexpired), by any process.
    async fn held_leases(&self) -> Result<Vec<HeldLease>, StorageError>;

    /// A whole document by ID.
    async fn get(&self, id: &str) -> Result<Option<StoredDocument>, StorageError>;

    /// A whole document by source key.
    async fn get_by_source(&self, key: &SourceKey) -> Result<Option<StoredDocument>, StorageError>;

    /// The attachments a document references.
    async fn attachments_of(&self, document_id: &str) -> Result<Vec<AttachmentRef>, StorageError>;

    /// The bytes of an attachment.
    async fn attachment_data(&self, hash: &str) -> Result<Option<Vec<u8>>, StorageError>;
}

/// Connects to `url` (`sqlite://PATH` or `postgres://...`) without migrating.
pub async fn connect(
    url: &str,
    max_connections: u32,
) -> Result<Arc<dyn DocumentStore>, StorageError> {
    connect_with(url, max_connections, &Topology::default()).await
}

/// How a service reaches PostgreSQL beyond its URL (SQLite has no such choices).
#[derive(Clone, Debug, Default)]
pub struct Topology {
    /// `DATABASE_URL` goes through a transaction-mode pooler (PgBouncer `pool_mode =
    /// transaction`): no named statements, each operation in a transaction of its own.
    pub transaction_pooler: bool,
    /// A direct session connection (`DATABASE_LISTEN_URL`) for what needs one: the change
    /// feed and the migrations' advisory lock.
    pub listen_url: Option<String>,
}

/// [`connect`], as `topology` says.
pub async fn connect_with(
    url: &str,
    max_connections: u32,
    topology: &Topology,
) -> Result<Arc<dyn DocumentStore>, StorageError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(
            PostgresStore::connect_with(url, max_connections, topology).await?,
        ))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(url, max_connections).await?))
    } else {
        Err(StorageError::UnsupportedUrl(redact_url(url)))
    }
}

/// Connects to `url` and migrates, retrying with backoff (200 ms doubling to 5 s) until both
/// succeed: how a service waits for its database while already answering health checks.
/// With `migrate` false the schema is only checked (see [`DocumentStore::schema_ready`]).
pub async fn connect_until_ready(
    url: &str,
    max_connections: u32,
    migrate: bool,
    topology: &Topology,
) -> Arc<dyn DocumentStore> {
    let mut delay = std::time::Duration::from_millis(200);
    loop {
        let attempt = async {
            let store = connect_with(url, max_connections, topology).await?;
            if migrate {
                store.migrate().await?;
            } else {
                store.schema_ready().await?;
            }
            Ok::<_, StorageError>(store)
        };
        match attempt.await {
            Ok(store) => return store,
            Err(e @ StorageError::SchemaIncompatible { .. }) => {
                // Not transient, but a rollback of the deploy (or a newer binary) mends it:
                // stay up, NOT_SERVING, and say so loudly.
                tracing::error!(error = %e, retry_in = ?delay, "database schema is too new for this binary");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "database not ready");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
            }
        }
    }
}

/// A migrator that accepts a database migrated further than it knows (a newer release's
/// expand migrations): whether this binary may run on it is [`check_compatible`]'s question.
/// A write was refused as read-only somewhere in this process since the pools last looked.
static READ_ONLY_SEEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Connections opened while the database refused writes are read-only for life (SQLite opens a
/// file it cannot write read-only; a PostgreSQL session keeps its `transaction_read_only`). A
/// write refused as read-only, or the health ping finding the database read-only, marks the
/// moment, and the ping marks it again when the fault ends; a pool connection opened before the
/// latest mark is closed when it is next taken from the pool or released, so the pool renews
/// itself (and finds the fault, or its end) without a restart.
#[derive(Debug, Clone)]
pub(crate) struct Recycler {
    started: std::time::Instant,
    /// Milliseconds after `started` of the latest mark (0: none).
    mark_ms: Arc<std::sync::atomic::AtomicU64>,
    /// Whether the last ping found the database read-only.
    read_only: Arc<std::sync::atomic::AtomicBool>,
}

impl Recycler {
    pub(crate) fn new() -> Self {
        Self {
            started: std::time::Instant::now(),
            mark_ms: Arc::default(),
            read_only: Arc::default(),
        }
    }

    fn mark(&self) {
        let now = self.started.elapsed().as_millis() as u64 + 1;
        self.mark_ms
            .fetch_max(now, std::sync::atomic::Ordering::AcqRel);
    }

    /// Whether a connection of `age` may go back to the pool.
    pub(crate) fn keep(&self, age: std::time::Duration) -> bool {
        if READ_ONLY_SEEN.swap(false, std::sync::atomic::Ordering::AcqRel) {
            self.mark();
        }
        let mark = self.mark_ms.load(std::sync::atomic::Ordering::Acquire);
        if mark == 0 {
            return true;
        }
        let opened = self.started.elapsed().saturating_sub(age).as_millis() as u64;
        opened > mark
    }

    /// Records what the ping found: `Err` with the cause while writes are refused.
    pub(crate) fn observe(&self, writable: Result<(), String>) -> Result<(), StorageError> {
        use std::sync::atomic::Ordering;
        match writable {
            Ok(()) => {
                if self.read_only.swap(false, Ordering::AcqRel) {
                    // The fault ended: renew every connection opened during it.
                    self.mark();
                }
                Ok(())
            }
            Err(cause) => {
                self.read_only.store(true, Ordering::Release);
                self.mark();
                Err(StorageError::ReadOnly(cause))
            }
        }
    }
}

pub(crate) fn tolerant(mut migrator: sqlx::migrate::Migrator) -> sqlx::migrate::Migrator {
    migrator.set_ignore_missing(true);
    migrator
}

/// The newest migration `migrator` knows.
fn newest(migrator: &sqlx::migrate::Migrator) -> i64 {
    migrator.iter().map(|m| m.version).max().unwrap_or(0)
}

/// The schema has every migration this binary knows (`applied` is the newest applied one).
pub(crate) fn check_schema(
    migrator: &sqlx::migrate::Migrator,
    applied: Option<i64>,
) -> Result<(), StorageError> {
    let need = newest(migrator);
    let have = applied.unwrap_or(0);
    if have < need {
        return Err(StorageError::SchemaBehind { have, need });
    }
    Ok(())
}

/// This binary may run against the schema: it knows the migration the schema's compatibility
/// marker names (`oldest_compatible`; None before the marker's migration ran).
pub(crate) fn check_compatible(
    migrator: &sqlx::migrate::Migrator,
    applied: Option<i64>,
    oldest_compatible: Option<i64>,
) -> Result<(), StorageError> {
    let binary = newest(migrator);
    match oldest_compatible {
        Some(oldest) if oldest > binary => Err(StorageError::SchemaIncompatible {
            schema: applied.unwrap_or(0),
            oldest_compatible: oldest,
            binary,
        }),
        _ => Ok(()),
    }
}

/// The typed key of a stored row, from its two columns; a row this release cannot read back is
/// corrupt to it.
pub(crate) fn key_of(source_type: &str, source_id: &str) -> Result<SourceKey, StorageError> {
    SourceKey::from_columns(source_type, source_id)
        .map_err(|e| StorageError::Corrupt(e.to_string()))
}

/// The key of a row in a listing of every kind (the held leases): a row this release cannot
/// read back (a kind a newer release added) is left out of the listing, with a warning.
pub(crate) fn known_key(
    source_type: Result<String, sqlx::Error>,
    source_id: Result<String, sqlx::Error>,
) -> Option<SourceKey> {
    let (source_type, source_id) = (source_type.ok()?, source_id.ok()?);
    match SourceKey::from_columns(&source_type, &source_id) {
        Ok(key) => Some(key),
        Err(e) => {
            tracing::warn!(error = %e, "left out of the listing");
            None
        }
    }
}

/// `keys` grouped by kind, each with its `source_id` texts, in the order kinds first appear.
pub(crate) fn by_kind(keys: &[SourceKey]) -> Vec<(Kind, Vec<String>)> {
    let mut groups: Vec<(Kind, Vec<String>)> = Vec::new();
    for k in keys {
        match groups.iter_mut().find(|(kind, _)| *kind == k.kind()) {
            Some((_, ids)) => ids.push(k.source_id()),
            None => groups.push((k.kind(), vec![k.source_id()])),
        }
    }
    groups
}

/// A fresh, unused document ID.
pub(crate) fn new_document_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// `url` with the password (if any) replaced by `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}
