//! PostgreSQL implementation of [`DocumentStore`]. Timestamps come from the database's clock
//! (`now()`), so provider replicas with skewed clocks agree on freshness.

use std::{
    str::FromStr,
    sync::{Arc, OnceLock},
    time::Duration,
};

use async_trait::async_trait;
use chrono::Utc;
use sqlx::{
    pool::PoolConnection,
    postgres::{PgArguments, PgListener, PgPoolOptions, PgRow},
    PgConnection, PgPool, Postgres, Row, Transaction,
};

use tokio::sync::broadcast;

use super::{
    new_document_id, AttachmentRef, Backend, Change, Claim, DocumentHead, DocumentStore, Fence,
    HeldLease, Holding, Kind, Lease, Lookup, NewAttachment, NewContent, SourceKey, StorageError,
    StoredDocument, Written,
};

static MIGRATOR: std::sync::LazyLock<sqlx::migrate::Migrator> =
    std::sync::LazyLock::new(|| super::tolerant(sqlx::migrate!("./migrations/postgres")));

/// How both document writes end: a conflict on the source key keeps the row (and its ID) and
/// bumps the version; the new head comes back, with the invalidation mark as the purge guard
/// left it (migration 0012: a purge after this fill's claim stays).
macro_rules! document_upsert_tail {
    () => {
        "ON CONFLICT (source_type, source_id) DO UPDATE SET \
             title = EXCLUDED.title, content_markdown = EXCLUDED.content_markdown, \
             content_json = EXCLUDED.content_json, tags = EXCLUDED.tags, \
             content_hash = EXCLUDED.content_hash, version = documents.version + 1, \
             last_synced = now(), updated_at = now(), invalidated_at = NULL \
         RETURNING id, source_type, source_id, tags, version, last_synced, \
             invalidated_at IS NOT NULL AS invalidated"
    };
}

/// PostgreSQL's `statement_timeout` on every pooled connection.
pub const STATEMENT_TIMEOUT: &str = "15s";

/// Channel the `documents_changed` trigger notifies on.
const CHANGES_CHANNEL: &str = "documents_changed";
/// Payload of a TRUNCATE (migration 0004): forget everything.
const RESET_PAYLOAD: &str = "~reset";
/// Prefix of a heartbeat's payload: `~hb <feed id> <microseconds since HEARTBEAT_BASE>`.
const HEARTBEAT_PREFIX: &str = "~hb ";
/// How often the feed sends itself a heartbeat through the database.
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(250);
/// A feed that has delivered nothing (not even its own heartbeats) for this long is dead.
const SILENT_AFTER: Duration = Duration::from_secs(2);

/// The instant heartbeat payloads count from (monotonic, this process only).
fn heartbeat_base() -> tokio::time::Instant {
    static BASE: OnceLock<tokio::time::Instant> = OnceLock::new();
    *BASE.get_or_init(tokio::time::Instant::now)
}

/// How an operation starts behind a transaction-mode pooler: in a transaction (so its statements
/// stay on one server connection), bounded by the statement timeout the pooler will not pass
/// as a startup parameter.
const POOLED_BEGIN: &str = "BEGIN; SET LOCAL statement_timeout = '15s'";

#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// `pool` goes through a transaction-mode pooler (PgBouncer `pool_mode = transaction`).
    pooled: bool,
    /// A direct session connection for what needs a session (the change feed, migrations'
    /// advisory lock): `DATABASE_LISTEN_URL`, or the pool itself when there is no pooler.
    session: Option<PgPool>,
    recycler: super::Recycler,
    changes: broadcast::Sender<Change>,
    /// The change feed's task, started once (by the first subscriber), stopped by `close`.
    feed: Arc<OnceLock<tokio::task::AbortHandle>>,
}

/// One operation's connection: a pooled connection, or behind a transaction-mode pooler a
/// transaction (see [`POOLED_BEGIN`]).
enum Op {
    Conn(PoolConnection<Postgres>),
    Tx(Transaction<'static, Postgres>),
}

impl std::ops::Deref for Op {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        match self {
            Op::Conn(c) => c,
            Op::Tx(t) => t,
        }
    }
}

impl std::ops::DerefMut for Op {
    fn deref_mut(&mut self) -> &mut PgConnection {
        match self {
            Op::Conn(c) => c,
            Op::Tx(t) => t,
        }
    }
}

impl Op {
    /// Ends the operation with its `result`: a transaction commits when it succeeded and rolls
    /// back when it failed.
    async fn end<T>(self, result: Result<T, StorageError>) -> Result<T, StorageError> {
        match (self, result) {
            (Op::Tx(tx), Ok(value)) => {
                tx.commit().await?;
                Ok(value)
            }
            (Op::Tx(tx), Err(e)) => {
                let _ = tx.rollback().await;
                Err(e)
            }
            (Op::Conn(_), result) => result,
        }
    }
}

impl PostgresStore {
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StorageError> {
        Self::connect_with(url, max_connections, &super::Topology::default()).await
    }

    /// Connects as `topology` says: through a transaction-mode pooler, every operation runs in
    /// a transaction of its own with unnamed statements and its statement timeout set inside
    /// it; the change feed and migrations use the direct session URL.
    pub async fn connect_with(
        url: &str,
        max_connections: u32,
        topology: &super::Topology,
    ) -> Result<Self, StorageError> {
        let pooled = topology.transaction_pooler;
        let options = sqlx::postgres::PgConnectOptions::from_str(url)?;
        // No statement runs unbounded while a fill holds its permits (a lock wait, a hung
        // query): the server cancels it. A pooler refuses (or drops) startup options: there it
        // is set per transaction instead.
        let options = if pooled {
            // Named statements live on one server connection, which a pooler does not keep.
            options.statement_cache_capacity(0)
        } else {
            options.options([("statement_timeout", STATEMENT_TIMEOUT)])
        };
        let recycler = super::Recycler::new();
        let keep = recycler.clone();
        let fresh = recycler.clone();
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            // Short, so a call never waits long on a database that is gone (connects are
            // retried until this timeout); the health watcher then refuses calls at once.
            .acquire_timeout(Duration::from_secs(2))
            .after_release(move |_, meta| {
                let keep = keep.keep(meta.age);
                Box::pin(async move { Ok(keep) })
            })
            .before_acquire(move |_, meta| {
                let keep = fresh.keep(meta.age);
                Box::pin(async move { Ok(keep) })
            })
            .connect_with(options)
            .await?;
        let session = match (&topology.listen_url, pooled) {
            (Some(direct), _) => Some(
                PgPoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(Duration::from_secs(2))
                    .connect_lazy_with(
                        sqlx::postgres::PgConnectOptions::from_str(direct)?
                            .options([("statement_timeout", STATEMENT_TIMEOUT)]),
                    ),
            ),
            (None, false) => Some(pool.clone()),
            // No session to listen on: no change feed (the hit view reads the database).
            (None, true) => None,
        };
        Ok(Self {
            pool,
            pooled,
            session,
            recycler,
            changes: broadcast::channel(4096).0,
            feed: Arc::default(),
        })
    }

    /// A connection for one operation (end it with [`Op::end`]).
    async fn op(&self) -> Result<Op, StorageError> {
        Ok(if self.pooled {
            Op::Tx(self.pool.begin_with(POOLED_BEGIN).await?)
        } else {
            Op::Conn(self.pool.acquire().await?)
        })
    }

    /// A transaction (behind a pooler, with its statement timeout).
    async fn begin(&self) -> Result<Transaction<'static, Postgres>, StorageError> {
        Ok(if self.pooled {
            self.pool.begin_with(POOLED_BEGIN).await?
        } else {
            self.pool.begin().await?
        })
    }

    /// A fenced write without attachments in one statement (one round trip, atomic): the lease
    /// row is updated (released, or only locked) if it still has our token, and the document
    /// written only if that update happened.
    async fn fenced_upsert(
        &self,
        key: &SourceKey,
        content: &NewContent,
        fence: Fence,
    ) -> Result<Written, StorageError> {
        let mut op = self.op().await?;
        let result = async {
            let (source_type, source_id) = (key.kind().as_str(), key.source_id());
            let query = if fence.release {
                concat!(
                    "WITH lease AS ( \
                         UPDATE fill_leases SET holder = NULL, expires_at = now(), finished_at = now(), \
                             last_error_code = NULL, last_error = NULL \
                         WHERE source_type = $2 AND source_id = $3 AND token = $9 \
                         RETURNING 1) \
                     INSERT INTO documents (id, source_type, source_id, title, content_markdown, \
                         content_json, tags, content_hash, version, last_synced, created_at, \
                         updated_at) \
                     SELECT $1, $2, $3, $4, $5, $6, $7, $8, 1, now(), now(), now() FROM lease ",
                    document_upsert_tail!()
                )
            } else {
                concat!(
                    "WITH lease AS ( \
                         UPDATE fill_leases SET token = token \
                         WHERE source_type = $2 AND source_id = $3 AND token = $9 \
                         RETURNING 1) \
                     INSERT INTO documents (id, source_type, source_id, title, content_markdown, \
                         content_json, tags, content_hash, version, last_synced, created_at, \
                         updated_at) \
                     SELECT $1, $2, $3, $4, $5, $6, $7, $8, 1, now(), now(), now() FROM lease ",
                    document_upsert_tail!()
                )
            };
            let row = bind_document(sqlx::query(query), source_type, &source_id, content)
                .bind(fence.token)
                .fetch_optional(&mut *op)
                .await?
                .ok_or(StorageError::LeaseLost(fence.token))?;
            let head = head_from_row(&row)?;
            Ok(Written {
                inserted: head.version == 1,
                head,
            })
        }
        .await;
        op.end(result).await
    }

    /// Listens on the changes channel for as long as anyone subscribes, reconnecting with
    /// backoff; every (re)connection is announced as [`Change::Reset`]. While connected it sends
    /// itself a heartbeat every [`HEARTBEAT_EVERY`] through the database and announces each one
    /// that comes back as [`Change::Heartbeat`]: proof that the feed is alive and caught up.
    fn start_listening(&self, session: &PgPool) {
        self.feed.get_or_init(|| self.spawn_feed(session.clone()));
    }

    /// The change feed's task, spawned on the session pool; see the module's comment.
    fn spawn_feed(&self, pool: PgPool) -> tokio::task::AbortHandle {
        let tx = self.changes.clone();
        let feed_id = uuid::Uuid::now_v7().simple().to_string();
        let task = tokio::spawn(async move {
            let mut delay = Duration::from_millis(100);
            loop {
                if tx.receiver_count() == 0 {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                let mut listener = match PgListener::connect_with(&pool).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen for document changes; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                        continue;
                    }
                };
                if let Err(e) = listener.listen(CHANGES_CHANNEL).await {
                    tracing::warn!(error = %e, "LISTEN failed; retrying");
                    tokio::time::sleep(delay).await;
                    continue;
                }
                delay = Duration::from_millis(100);
                let _ = tx.send(Change::Reset);
                let heartbeats =
                    AbortOnDrop(tokio::spawn(send_heartbeats(pool.clone(), feed_id.clone())));
                // Heartbeats arrive every HEARTBEAT_EVERY: silence means a dead or frozen
                // connection (a hung backend, a firewall that dropped it).
                loop {
                    match tokio::time::timeout(SILENT_AFTER, listener.try_recv()).await {
                        Ok(Ok(Some(n))) => {
                            let payload = n.payload();
                            if payload == RESET_PAYLOAD {
                                let _ = tx.send(Change::Reset);
                            } else if let Some(beat) = payload.strip_prefix(HEARTBEAT_PREFIX) {
                                if let Some(sent) = own_heartbeat(beat, &feed_id) {
                                    let _ = tx.send(Change::Heartbeat { sent });
                                }
                            } else if let Some(c) = parse_change(payload) {
                                let _ = tx.send(c);
                            }
                        }
                        // The connection was lost: anything may have been missed.
                        Ok(Ok(None)) => {
                            tracing::warn!(
                                "document change feed lost its connection; reconnecting"
                            );
                            let _ = tx.send(Change::Lost);
                            break;
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "document change feed failed; reconnecting");
                            let _ = tx.send(Change::Lost);
                            break;
                        }
                        Err(_) => {
                            tracing::warn!("document change feed is silent; reconnecting");
                            let _ = tx.send(Change::Lost);
                            break;
                        }
                    }
                }
                drop(heartbeats);
            }
        });
        task.abort_handle()
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A server setting (such as `statement_timeout`) as this store's operations run with it.
    pub async fn setting(&self, name: &str) -> Result<String, StorageError> {
        let mut op = self.op().await?;
        let result = sqlx::query_scalar("SELECT current_setting($1)")
            .bind(name)
            .fetch_one(&mut *op)
            .await
            .map_err(StorageError::from);
        op.end(result).await
    }

    /// The newest applied migration and the schema's compatibility marker (None where the
    /// tables do not exist yet).
    async fn compatibility(&self) -> Result<(Option<i64>, Option<i64>), StorageError> {
        let mut op = self.op().await?;
        let result = async {
            let (migrations, marker): (Option<String>, Option<String>) = sqlx::query_as(
                "SELECT to_regclass('_sqlx_migrations')::text, \
                        to_regclass('schema_compatibility')::text",
            )
            .fetch_one(&mut *op)
            .await?;
            let applied = match migrations {
                Some(_) => {
                    sqlx::query_scalar(
                        "SELECT MAX(version) FROM _sqlx_migrations WHERE success = TRUE",
                    )
                    .fetch_one(&mut *op)
                    .await?
                }
                None => None,
            };
            let oldest = match marker {
                Some(_) => {
                    sqlx::query_scalar(
                        "SELECT oldest_compatible FROM schema_compatibility WHERE id = 1",
                    )
                    .fetch_optional(&mut *op)
                    .await?
                }
                None => None,
            };
            Ok((applied, oldest))
        }
        .await;
        op.end(result).await
    }
}

/// Binds $1 to $8 of a document write: a new ID (used only if the row is new), the source key
/// and the content.
fn bind_document<'q>(
    query: sqlx::query::Query<'q, Postgres, PgArguments>,
    source_type: &'q str,
    source_id: &'q str,
    content: &'q NewContent,
) -> sqlx::query::Query<'q, Postgres, PgArguments> {
    query
        .bind(new_document_id())
        .bind(source_type)
        .bind(source_id)
        .bind(&content.title)
        .bind(&content.content_markdown)
        .bind(&content.content_json)
        .bind(&content.tags)
        .bind(content.content_hash())
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends `~hb <feed_id> <µs since the base>` on the changes channel every [`HEARTBEAT_EVERY`].
/// A send that fails or hangs is skipped: the missing heartbeat is the signal.
async fn send_heartbeats(pool: PgPool, feed_id: String) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let payload = format!(
            "{HEARTBEAT_PREFIX}{feed_id} {}",
            heartbeat_base().elapsed().as_micros()
        );
        let _ = tokio::time::timeout(
            HEARTBEAT_EVERY * 4,
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANGES_CHANNEL)
                .bind(payload)
                .execute(&pool),
        )
        .await;
    }
}

/// When this feed sent the heartbeat `beat` (`<feed id> <µs>`); None for another feed's.
fn own_heartbeat(beat: &str, feed_id: &str) -> Option<tokio::time::Instant> {
    let (id, micros) = beat.split_once(' ')?;
    (id == feed_id).then_some(())?;
    Some(heartbeat_base() + Duration::from_micros(micros.parse().ok()?))
}

/// A document's announcement, `<source_type> <source_id> <version>`; `None` for anything else,
/// a key of a kind this release does not know included (nothing here holds such a document).
fn parse_change(payload: &str) -> Option<Change> {
    let mut parts = payload.rsplitn(2, ' ');
    let version = parts.next()?.parse().ok()?;
    let (source_type, source_id) = parts.next()?.split_once(' ')?;
    Some(Change::Document {
        key: SourceKey::from_columns(source_type, source_id).ok()?,
        version,
    })
}

fn head_from_row(row: &PgRow) -> Result<DocumentHead, StorageError> {
    Ok(DocumentHead {
        id: row.try_get("id")?,
        key: super::key_of(row.try_get("source_type")?, row.try_get("source_id")?)?,
        tags: row.try_get("tags")?,
        version: row.try_get("version")?,
        last_synced: row.try_get("last_synced")?,
        invalidated: row
            .try_get::<Option<bool>, _>("invalidated")
            .ok()
            .flatten()
            .unwrap_or(false),
    })
}

crate::reads::engine_reads!(&mut PgConnection);

fn document_from_row(row: &PgRow) -> Result<StoredDocument, StorageError> {
    Ok(StoredDocument {
        id: row.try_get("id")?,
        key: super::key_of(row.try_get("source_type")?, row.try_get("source_id")?)?,
        title: row.try_get("title")?,
        content_markdown: row.try_get("content_markdown")?,
        content_json: row.try_get("content_json")?,
        tags: row.try_get("tags")?,
        content_hash: row.try_get("content_hash")?,
        version: row.try_get("version")?,
        last_synced: row.try_get("last_synced")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

#[async_trait]
impl DocumentStore for PostgresStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    async fn migrate(&self) -> Result<(), StorageError> {
        let (applied, oldest) = self.compatibility().await?;
        super::check_compatible(&MIGRATOR, applied, oldest)?;
        // sqlx takes a PostgreSQL advisory lock around the migrations, so replicas starting at
        // once apply them exactly once. The lock is the session's: never through a
        // transaction-mode pooler, which would hand the unlock to another session.
        let Some(session) = &self.session else {
            return Err(StorageError::NeedsSession("migrations"));
        };
        MIGRATOR.run(session).await?;
        Ok(())
    }

    async fn schema_ready(&self) -> Result<(), StorageError> {
        let (applied, oldest) = self.compatibility().await?;
        super::check_compatible(&MIGRATOR, applied, oldest)?;
        super::check_schema(&MIGRATOR, applied)
    }

    async fn check_invariants(&self) -> Result<Vec<String>, StorageError> {
        let mut op = self.op().await?;
        let result = async {
            let checks = super::invariant_checks(
                "SELECT id FROM documents WHERE NOT (content_json ? 'schema_version')",
                "SELECT source_type || ' ' || source_id FROM fill_leases \
                 WHERE holder IS NOT NULL AND expires_at < now()",
                "SELECT 'documents_history_guard' WHERE NOT EXISTS (SELECT 1 FROM pg_trigger \
                 WHERE tgname = 'documents_history_guard' AND tgenabled <> 'D')",
            );
            let mut violations = Vec::new();
            for (what, sql) in checks {
                let rows: Vec<String> = sqlx::query_scalar(sql).fetch_all(&mut *op).await?;
                violations.extend(rows.into_iter().map(|r| format!("{what}: {r}")));
            }
            Ok(violations)
        }
        .await;
        op.end(result).await
    }

    async fn ping(&self) -> Result<(), StorageError> {
        let mut op = self.op().await?;
        let result = async {
            // A read-only session (default_transaction_read_only) or a hot standby refuses writes.
            let read_only: bool = sqlx::query_scalar(
                "SELECT current_setting('transaction_read_only') = 'on' OR pg_is_in_recovery()",
            )
            .fetch_one(&mut *op)
            .await?;
            self.recycler.observe(if read_only {
                Err("the session is read-only (default_transaction_read_only, or a standby)".into())
            } else {
                Ok(())
            })
        }
        .await;
        op.end(result).await
    }

    async fn lookup(&self, keys: &[SourceKey]) -> Result<Lookup, StorageError> {
        let mut op = self.op().await?;
        let result = async {
            let mut now = Utc::now();
            let mut heads = Vec::with_capacity(keys.len());
            for (kind, source_ids) in super::by_kind(keys) {
                // The LEFT JOIN always yields one row, so the database clock comes back even on a
                // miss.
                let rows = sqlx::query(
                    "SELECT n.db_now, d.id, d.source_type, d.source_id, d.tags, d.version, \
                            d.last_synced, d.invalidated_at IS NOT NULL AS invalidated \
                     FROM (SELECT now() AS db_now) n \
                     LEFT JOIN documents d ON d.source_type = $1 AND d.source_id = ANY($2)",
                )
                .bind(kind.as_str())
                .bind(&source_ids)
                .fetch_all(&mut *op)
                .await?;
                for row in &rows {
                    now = row.try_get("db_now")?;
                    // The LEFT JOIN's empty side: no document, only the clock.
                    if row.try_get::<Option<String>, _>("id")?.is_some() {
                        heads.push(head_from_row(row)?);
                    }
                }
            }
            if keys.is_empty() {
                now = sqlx::query_scalar("SELECT now()")
                    .fetch_one(&mut *op)
                    .await?;
            }
            Ok(Lookup { now, heads })
        }
        .await;
        op.end(result).await
    }

    async fn heads_tagged(
        &self,
        kind: Kind,
        tags: &[String],
        limit: usize,
    ) -> Result<Vec<DocumentHead>, StorageError> {
        let mut op = self.op().await?;
        let result = async {
            let rows = sqlx::query(
                "SELECT id, source_type, source_id, tags, version, last_synced, \
                        invalidated_at IS NOT NULL AS invalidated \
                 FROM documents WHERE source_type = $1 AND tags && $2 \
                 ORDER BY source_id LIMIT $3",
            )
            .bind(kind.as_str())
            .bind(tags)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *op)
            .await?;
            rows.iter().map(head_from_row).collect()
        }
        .await;
        op.end(result).await
    }

    async fn upsert(
        &self,
        key: &SourceKey,
        content: &NewContent,
        attachments: &[NewAttachment],
        fence: Option<Fence>,
    ) -> Result<Written, StorageError> {
        let (source_type, source_id) = (key.kind().as_str(), key.source_id());
        let source_id = source_id.as_str();
        if let (Some(f), true) = (fence, attachments.is_empty()) {
            return self.fenced_upsert(key, content, f).await;
        }
        let mut tx = self.begin().await?;
        if let Some(f) = fence {
            // Lock the lease row: a takeover either happened before (we see its token and
            // give up) or waits until this write has committed.
            let current: Option<i64> = sqlx::query_scalar(
                "SELECT token FROM fill_leases WHERE source_type = $1 AND source_id = $2 FOR UPDATE",
            )
            .bind(source_type)
            .bind(source_id)
            .fetch_optional(&mut *tx)
            .await?;
            if current != Some(f.token) {
                return Err(StorageError::LeaseLost(f.token));
            }
            if f.release {
                sqlx::query(
                    "UPDATE fill_leases SET holder = NULL, expires_at = now(), finished_at = now(), \
                     last_error_code = NULL, last_error = NULL \
                     WHERE source_type = $1 AND source_id = $2",
                )
                .bind(source_type)
                .bind(source_id)
                .execute(&mut *tx)
                .await?;
            }
        }
        let row = bind_document(
            sqlx::query(concat!(
                "INSERT INTO documents (id, source_type, source_id, title, content_markdown, \
                     content_json, tags, content_hash, version, last_synced, created_at, \
                     updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, now(), now(), now()) ",
                document_upsert_tail!()
            )),
            source_type,
            source_id,
            content,
        )
        .fetch_one(&mut *tx)
        .await?;
        let head = head_from_row(&row)?;
        for a in attachments {
            let hash = a.hash();
            sqlx::query(
                "INSERT INTO attachments (hash, content_type, size_bytes, data) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (hash) DO NOTHING",
            )
            .bind(&hash)
            .bind(&a.content_type)
            .bind(a.data.len() as i64)
            .bind(&a.data)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO document_attachments (document_id, name, attachment_hash) \
                 VALUES ($1, $2, $3) \
                 ON CONFLICT (document_id, name) DO UPDATE SET attachment_hash = EXCLUDED.attachment_hash",
            )
            .bind(&head.id)
            .bind(&a.name)
            .bind(&hash)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Written {
            inserted: head.version == 1,
            head,
        })
    }

    async fn close(&self) {
        if let Some(feed) = self.feed.get() {
            feed.abort();
        }
        self.pool.close().await;
        if let Some(session) = &self.session {
            session.close().await;
        }
    }

    fn pool_usage(&self) -> (u32, usize) {
        (self.pool.size(), self.pool.num_idle())
    }

    fn changes(&self) -> Option<broadcast::Receiver<Change>> {
        // Behind a transaction pooler without a session URL there is no feed: LISTEN needs a
        // session of its own.
        let session = self.session.as_ref()?;
        let rx = self.changes.subscribe();
        self.start_listening(session);
        Some(rx)
    }

    async fn claim_fill(
        &self,
        key: &SourceKey,
        holder: &str,
        ttl: Duration,
    ) -> Result<Claim, StorageError> {
        let mut op = self.op().await?;
        let result = async {
            let (source_type, source_id) = (key.kind().as_str(), key.source_id());
            let source_id = source_id.as_str();
            let row = sqlx::query(
                "WITH claimed AS ( \
                     INSERT INTO fill_leases (source_type, source_id, holder, token, claimed_at, expires_at) \
                     VALUES ($1, $2, $3, 1, now(), now() + $4 * interval '1 millisecond') \
                     ON CONFLICT (source_type, source_id) DO UPDATE SET \
                         holder = EXCLUDED.holder, token = fill_leases.token + 1, \
                         claimed_at = EXCLUDED.claimed_at, expires_at = EXCLUDED.expires_at \
                     WHERE fill_leases.holder IS NULL OR fill_leases.expires_at <= now() \
                         OR fill_leases.holder = EXCLUDED.holder \
                     RETURNING token) \
                 SELECT (SELECT token FROM claimed) AS token, d.id, d.source_type, d.source_id, d.tags, \
                        d.version, d.last_synced, \
                        d.invalidated_at IS NOT NULL AS invalidated \
                 FROM (SELECT 1) one \
                 LEFT JOIN documents d ON d.source_type = $1 AND d.source_id = $2",
            )
            .bind(source_type)
            .bind(source_id)
            .bind(holder)
            .bind(ttl.as_millis() as f64)
            .fetch_one(&mut *op)
            .await?;
            let Some(token) = row.try_get::<Option<i64>, _>("token")? else {
                return Ok(Claim {
                    token: None,
                    head: None,
                });
            };
            let mut head = match row.try_get::<Option<String>, _>("id")? {
                Some(_) => Some(head_from_row(&row)?),
                None => None,
            };
            // A lease taken over from an earlier holder (token above 1) may have waited for that
            // holder's write to commit, which the statement's snapshot (taken before) does not
            // show: read the document again. A first claim (token 1) waited for nobody.
            if token > 1 {
                head = sqlx::query(
                    "SELECT id, source_type, source_id, tags, version, last_synced, \
                            invalidated_at IS NOT NULL AS invalidated FROM documents \
                     WHERE source_type = $1 AND source_id = $2",
                )
                .bind(source_type)
                .bind(source_id)
                .fetch_optional(&mut *op)
                .await?
                .as_ref()
                .map(head_from_row)
                .transpose()?;
            }
            Ok(Claim {
                token: Some(token),
                head,
            })
        }
        .await;
        op.end(result).await
    }

    async fn renew_fill(
        &self,
        key: &SourceKey,
        token: i64,
        ttl: Duration,
    ) -> Result<bool, StorageError> {
        let mut op = self.op().await?;
        let result = async {
            let (source_type, source_id) = (key.kind().as_str(), key.source_id());
            let source_id = source_id.as_str();
            let done = sqlx::query(
                "UPDATE fill_leases SET expires_at = now() + $4 * interval '1 millisecond' \
                 WHERE source_type = $1 AND source_id = $2 AND token = $3 AND holder IS NOT NULL",
            )
            .bind(source_type)
            .bind(source_id)
            .bind(token)
            .bind(ttl.as_millis() as f64)
            .execute(&mut *op)
            .await?;
            Ok(done.rows_affected() == 1)
        }
        .await;
        op.end(result).await
    }

    async fn clear_abandoned_leases(&self, grace: Duration) -> Result<u64, StorageError> {
        let mut op = self.op().await?;
        let result = async {
            let done = sqlx::query(
                "UPDATE fill_leases SET holder = NULL \
                 WHERE holder IS NOT NULL AND expires_at < now() - $1 * interval '1 millisecond'",
            )
            .bind(grace.as_millis() as f64)
            .execute(&mut *op)
            .await?;
            Ok(done.rows_affected())
        }
        .await;
        op.end(result).await
    }

    async fn release_fill(
        &self,
        key: &SourceKey,
        token: i64,
        error: Option<(i32, &str)>,
    ) -> Result<(), StorageError> {
        let mut op = self.op().await?;
        let result = async {
            let (source_type, source_id) = (key.kind().as_str(), key.source_id());
            let source_id = source_id.as_str();
            sqlx::query(
                "UPDATE fill_leases SET holder = NULL, expires_at = now(), finished_at = now(), \
                 last_error_code = $4, last_error = $5 \
                 WHERE source_type = $1 AND source_id = $2 AND token = $3",
            )
            .bind(source_type)
            .bind(source_id)
            .bind(token)
            .bind(error.map(|e| e.0))
            .bind(error.map(|e| e.1))
            .execute(&mut *op)
            .await?;
            Ok(())
        }
        .await;
        op.end(result).await
    }

    async fn lease(&self, key: &SourceKey) -> Result<Option<Lease>, StorageError> {
        let mut op = self.op().await?;
        let result = async {
            let (source_type, source_id) = (key.kind().as_str(), key.source_id());
            let source_id = source_id.as_str();
            let row = sqlx::query(
                "SELECT token, (holder IS NOT NULL AND expires_at > now()) AS held, holder, \
                        claimed_at, expires_at, last_error_code, last_error, finished_at \
                 FROM fill_leases WHERE source_type = $1 AND source_id = $2",
            )
            .bind(source_type)
            .bind(source_id)
            .fetch_optional(&mut *op)
            .await?;
            row.map(|r| {
                let code: Option<i32> = r.try_get("last_error_code")?;
                let message: Option<String> = r.try_get("last_error")?;
                let held: bool = r.try_get("held")?;
                Ok(Lease {
                    token: r.try_get("token")?,
                    held,
                    last_error: code.zip(message),
                    finished_at: r.try_get("finished_at")?,
                    holding: if held {
                        Some(Holding {
                            holder: r
                                .try_get::<Option<String>, _>("holder")?
                                .unwrap_or_default(),
                            claimed_at: r.try_get("claimed_at")?,
                            expires_at: r.try_get("expires_at")?,
                        })
                    } else {
                        None
                    },
                })
            })
            .transpose()
        }
        .await;
        op.end(result).await
    }

    async fn invalidate(
        &self,
        kind: Option<Kind>,
        keys: &[SourceKey],
        tags: &[String],
    ) -> Result<u64, StorageError> {
        let mut op = self.op().await?;
        let result = async {
            let source_type = kind.map(Kind::as_str);
            let source_ids: Vec<String> = keys.iter().map(SourceKey::source_id).collect();
            let done = sqlx::query(
                "UPDATE documents SET invalidated_at = now() \
                 WHERE ($1::text IS NULL OR source_type = $1) \
                   AND (source_id = ANY($2) OR tags && $3 \
                        OR (cardinality($2) = 0 AND cardinality($3) = 0))",
            )
            .bind(source_type)
            .bind(&source_ids)
            .bind(tags)
            .execute(&mut *op)
            .await?;
            Ok(done.rows_affected())
        }
        .await;
        op.end(result).await
    }

    async fn held_leases(&self) -> Result<Vec<HeldLease>, StorageError> {
        let mut op = self.op().await?;
        let result = async {
            let rows = sqlx::query(
                "SELECT source_type, source_id, token, holder, claimed_at, expires_at FROM fill_leases \
                 WHERE holder IS NOT NULL AND expires_at > now() ORDER BY claimed_at",
            )
            .fetch_all(&mut *op)
            .await?;
            rows.iter()
                .filter_map(|r| {
                    Some((
                        r,
                        super::known_key(r.try_get("source_type"), r.try_get("source_id"))?,
                    ))
                })
                .map(|(r, key)| {
                    Ok(HeldLease {
                        key,
                        token: r.try_get("token")?,
                        holding: Holding {
                            holder: r
                                .try_get::<Option<String>, _>("holder")?
                                .unwrap_or_default(),
                            claimed_at: r.try_get("claimed_at")?,
                            expires_at: r.try_get("expires_at")?,
                        },
                    })
                })
                .collect()
        }
        .await;
        op.end(result).await
    }

    async fn get(&self, id: &str) -> Result<Option<StoredDocument>, StorageError> {
        let mut op = self.op().await?;
        let result = async { read_document(&mut op, id).await }.await;
        op.end(result).await
    }

    async fn get_by_source(&self, key: &SourceKey) -> Result<Option<StoredDocument>, StorageError> {
        let mut op = self.op().await?;
        let result = async {
            let (source_type, source_id) = (key.kind().as_str(), key.source_id());
            let source_id = source_id.as_str();
            read_document_by_source(&mut op, source_type, source_id).await
        }
        .await;
        op.end(result).await
    }

    async fn attachments_of(&self, document_id: &str) -> Result<Vec<AttachmentRef>, StorageError> {
        let mut op = self.op().await?;
        let result = async { read_attachments_of(&mut op, document_id).await }.await;
        op.end(result).await
    }

    async fn attachment_data(&self, hash: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let mut op = self.op().await?;
        let result = async { read_attachment_data(&mut op, hash).await }.await;
        op.end(result).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_payloads_parse() {
        assert_eq!(
            parse_change("announcement ASX:GNP:announcement 7"),
            Some(Change::Document {
                key: "ASX:GNP:announcement".parse().unwrap(),
                version: 7
            })
        );
        assert_eq!(parse_change("garbage"), None);
        // A kind this release does not know: nothing here holds such a document.
        assert_eq!(parse_change("directors ASX:GNP:directors 3"), None);
    }
}
