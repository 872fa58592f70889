//! SQLite implementation of [`DocumentStore`]: the zero-setup default. WAL journal and a busy
//! timeout let a provider and a consumer share one file. All processes using a file are on one
//! machine, so the local clock is the database's clock.
//!
//! Its change feed has no per-document announcements: a connection of its own reads
//! `PRAGMA data_version` every [`WATCH_EVERY`], which changes when any other connection, of
//! this process or another, commits. An unchanged value is a heartbeat (nothing was committed
//! since the previous reading); a changed one resets the feed (forget everything), then beats.

use std::{
    str::FromStr,
    sync::{Arc, OnceLock},
    time::Duration,
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
    },
    types::Json,
    ConnectOptions, Connection, Row, SqlitePool,
};
use tokio::sync::broadcast;

use super::{
    new_document_id, AttachmentRef, Backend, Change, Claim, DocumentHead, DocumentStore, Fence,
    HeldLease, Holding, Kind, Lease, Lookup, NewAttachment, NewContent, SourceKey, StorageError,
    StoredDocument, Written,
};

static MIGRATOR: std::sync::LazyLock<sqlx::migrate::Migrator> =
    std::sync::LazyLock::new(|| super::tolerant(sqlx::migrate!("./migrations/sqlite")));

/// How often the change feed reads `PRAGMA data_version`: a commit is announced this long after
/// it at most (well inside the hit view's staleness bound).
pub const WATCH_EVERY: Duration = Duration::from_millis(100);

#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// The database file, which the health ping checks can be written.
    path: std::path::PathBuf,
    recycler: super::Recycler,
    /// How the pool connects, for the change feed's own connection.
    options: SqliteConnectOptions,
    changes: broadcast::Sender<Change>,
    /// The change feed's task, started once (by the first subscriber), stopped by `close`.
    feed: Arc<OnceLock<tokio::task::AbortHandle>>,
}

impl SqliteStore {
    /// The newest applied migration and the schema's compatibility marker (None where the
    /// tables do not exist yet).
    async fn compatibility(&self) -> Result<(Option<i64>, Option<i64>), StorageError> {
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND name IN ('_sqlx_migrations', 'schema_compatibility')",
        )
        .fetch_all(&self.pool)
        .await?;
        let has = |t: &str| tables.iter().any(|n| n == t);
        let applied = if has("_sqlx_migrations") {
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success = 1")
                .fetch_one(&self.pool)
                .await?
        } else {
            None
        };
        let oldest = if has("schema_compatibility") {
            sqlx::query_scalar("SELECT oldest_compatible FROM schema_compatibility WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?
        } else {
            None
        };
        Ok((applied, oldest))
    }

    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StorageError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        if let Some(dir) = options.get_filename().parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| StorageError::Unavailable(e.into()))?;
            }
        }
        let path = options.get_filename().to_path_buf();
        let recycler = super::Recycler::new();
        let keep = recycler.clone();
        let fresh = recycler.clone();
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            // One connection always open: the file's last close removes the WAL files, which
            // the next connection would make again with the file's mode of the moment.
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .after_release(move |_, meta| {
                let keep = keep.keep(meta.age);
                Box::pin(async move { Ok(keep) })
            })
            .before_acquire(move |_, meta| {
                let keep = fresh.keep(meta.age);
                Box::pin(async move { Ok(keep) })
            })
            .connect_with(options.clone())
            .await?;
        Ok(Self {
            pool,
            path,
            recycler,
            options,
            changes: broadcast::channel(4096).0,
            feed: Arc::default(),
        })
    }

    /// A write rolled back, on a connection of its own opened now.
    async fn probe_write(&self) -> Result<(), StorageError> {
        let mut conn = self
            .options
            .clone()
            .busy_timeout(Duration::ZERO)
            .connect()
            .await?;
        let wrote = match sqlx::query("BEGIN IMMEDIATE").execute(&mut conn).await {
            Ok(_) => {
                let wrote = sqlx::query(
                    "UPDATE schema_compatibility SET oldest_compatible = oldest_compatible WHERE id = 1",
                )
                .execute(&mut conn)
                .await;
                // SQLite may have ended the transaction itself after the error.
                let _ = sqlx::query("ROLLBACK").execute(&mut conn).await;
                wrote.map(|_| ())
            }
            Err(e) => Err(e),
        };
        let _ = conn.close().await;
        Ok(wrote?)
    }

    /// Starts the change feed's task, once: it reads `PRAGMA data_version` on a connection of its
    /// own (never used to write, so every commit is another connection's) while anyone listens.
    fn start_watching(&self) {
        self.feed.get_or_init(|| self.spawn_feed());
    }

    /// The change feed's task, spawned; see the module's comment.
    fn spawn_feed(&self) -> tokio::task::AbortHandle {
        let options = self.options.clone();
        let tx = self.changes.clone();
        let task = tokio::spawn(async move {
            let mut delay = Duration::from_millis(100);
            loop {
                if tx.receiver_count() == 0 {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                let mut conn = match options.connect().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot watch for document changes; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                        continue;
                    }
                };
                delay = Duration::from_millis(100);
                let mut seen = None;
                loop {
                    let sent = tokio::time::Instant::now();
                    match sqlx::query_scalar::<_, i64>("PRAGMA data_version")
                        .fetch_one(&mut conn)
                        .await
                    {
                        Ok(version) => {
                            if seen != Some(version) {
                                seen = Some(version);
                                let _ = tx.send(Change::Reset);
                            }
                            let _ = tx.send(Change::Heartbeat { sent });
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "document change watch failed; reconnecting");
                            let _ = tx.send(Change::Lost);
                            break;
                        }
                    }
                    tokio::time::sleep(WATCH_EVERY).await;
                }
            }
        });
        task.abort_handle()
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

crate::reads::engine_reads!(&SqlitePool);

fn document_from_row(row: &SqliteRow) -> Result<StoredDocument, StorageError> {
    let content_json: Json<serde_json::Value> = row.try_get("content_json")?;
    let tags: Json<Vec<String>> = row.try_get("tags")?;
    Ok(StoredDocument {
        id: row.try_get("id")?,
        key: super::key_of(row.try_get("source_type")?, row.try_get("source_id")?)?,
        title: row.try_get("title")?,
        content_markdown: row.try_get("content_markdown")?,
        content_json: content_json.0,
        tags: tags.0,
        content_hash: row.try_get("content_hash")?,
        version: row.try_get("version")?,
        last_synced: row.try_get("last_synced")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn head_from_row(row: &SqliteRow) -> Result<DocumentHead, StorageError> {
    let tags: Json<Vec<String>> = row.try_get("tags")?;
    Ok(DocumentHead {
        id: row.try_get("id")?,
        key: super::key_of(row.try_get("source_type")?, row.try_get("source_id")?)?,
        tags: tags.0,
        version: row.try_get("version")?,
        last_synced: row.try_get("last_synced")?,
        // Written heads (RETURNING) do not select it; the write reads it back.
        invalidated: row
            .try_get::<Option<String>, _>("invalidated_at")
            .ok()
            .flatten()
            .is_some(),
    })
}

#[async_trait]
impl DocumentStore for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    async fn migrate(&self) -> Result<(), StorageError> {
        let (applied, oldest) = self.compatibility().await?;
        super::check_compatible(&MIGRATOR, applied, oldest)?;
        // SQLite has no advisory lock: when two processes migrate a new file at once, the loser
        // fails on the winner's bookkeeping row. The migrations are idempotent, so run again and
        // let the second pass see them applied.
        let mut last = None;
        for attempt in 0..5u64 {
            match MIGRATOR.run(&self.pool).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::debug!(error = %e, attempt, "sqlite migration raced, retrying");
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(50 * (attempt + 1))).await;
                }
            }
        }
        Err(last.expect("at least one attempt").into())
    }

    async fn schema_ready(&self) -> Result<(), StorageError> {
        let (applied, oldest) = self.compatibility().await?;
        super::check_compatible(&MIGRATOR, applied, oldest)?;
        super::check_schema(&MIGRATOR, applied)
    }

    async fn check_invariants(&self) -> Result<Vec<String>, StorageError> {
        let checks = super::invariant_checks(
            "SELECT id FROM documents WHERE json_extract(content_json, '$.schema_version') IS NULL",
            "SELECT source_type || ' ' || source_id FROM fill_leases WHERE holder IS NOT NULL \
             AND expires_at_ms < CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
            "SELECT 'documents_history_guard' WHERE NOT EXISTS (SELECT 1 FROM sqlite_master \
             WHERE type = 'trigger' AND name = 'documents_history_guard')",
        );
        let mut violations = Vec::new();
        for (what, sql) in checks {
            let rows: Vec<String> = sqlx::query_scalar(sql).fetch_all(&self.pool).await?;
            violations.extend(rows.into_iter().map(|r| format!("{what}: {r}")));
        }
        Ok(violations)
    }

    async fn ping(&self) -> Result<(), StorageError> {
        // Answers at all? Through the pool.
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        // Writable? On a connection opened now (pooled ones keep the access their descriptor
        // was opened with, so they say nothing of the file as it is), with a write that is rolled
        // back: a file or file system it cannot write refuses it with SQLITE_READONLY. Not
        // waiting for the write lock: a busy database is being written, so it is writable. The
        // pool stays open meanwhile, so closing this connection never closes the file's last
        // one (which would remove the WAL files and have them made again, with the read-only
        // file's mode, by the next connection).
        let writable = match self.probe_write().await {
            Ok(()) => Ok(()),
            Err(StorageError::ReadOnly(cause)) => Err(format!(
                "{} cannot be written: {cause}",
                self.path.display()
            )),
            // Busy: another connection holds the write lock, so writes are possible.
            Err(StorageError::Unavailable(_)) => Ok(()),
            Err(other) => return Err(other),
        };
        self.recycler.observe(writable)
    }

    fn changes(&self) -> Option<broadcast::Receiver<Change>> {
        let rx = self.changes.subscribe();
        self.start_watching();
        Some(rx)
    }

    async fn lookup(&self, keys: &[SourceKey]) -> Result<Lookup, StorageError> {
        let now = Utc::now();
        let mut heads = Vec::with_capacity(keys.len());
        for (kind, source_ids) in super::by_kind(keys) {
            let ids = serde_json::to_string(&source_ids)
                .map_err(|e| StorageError::Corrupt(e.to_string()))?;
            let rows = sqlx::query(
                "SELECT id, source_type, source_id, tags, version, last_synced, invalidated_at \
                 FROM documents \
                 WHERE source_type = ?1 AND source_id IN (SELECT value FROM json_each(?2))",
            )
            .bind(kind.as_str())
            .bind(ids)
            .fetch_all(&self.pool)
            .await?;
            for row in &rows {
                heads.push(head_from_row(row)?);
            }
        }
        Ok(Lookup { now, heads })
    }

    async fn heads_tagged(
        &self,
        kind: Kind,
        tags: &[String],
        limit: usize,
    ) -> Result<Vec<DocumentHead>, StorageError> {
        let tags = serde_json::to_string(tags).map_err(|e| StorageError::Corrupt(e.to_string()))?;
        let rows = sqlx::query(
            "SELECT id, source_type, source_id, tags, version, last_synced, invalidated_at \
             FROM documents WHERE source_type = ?1 \
               AND EXISTS (SELECT 1 FROM json_each(documents.tags) t \
                           JOIN json_each(?2) q ON t.value = q.value) \
             ORDER BY source_id LIMIT ?3",
        )
        .bind(kind.as_str())
        .bind(tags)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(head_from_row).collect()
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
        let now = Utc::now();
        // BEGIN IMMEDIATE takes the write lock up front, so concurrent writers queue on the busy
        // timeout instead of failing on a lock upgrade.
        // A real sqlx transaction: if this future is dropped midway (a caller's deadline), the
        // transaction is rolled back rather than left holding the write lock.
        let mut conn = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let result = async {
            if let Some(f) = fence {
                let current: Option<i64> = sqlx::query_scalar(
                    "SELECT token FROM fill_leases WHERE source_type = ?1 AND source_id = ?2",
                )
                .bind(source_type)
                .bind(source_id)
                .fetch_optional(&mut *conn)
                .await?;
                if current != Some(f.token) {
                    return Err(StorageError::LeaseLost(f.token));
                }
            }
            if let Some(Fence { release: true, .. }) = fence {
                sqlx::query(
                    "UPDATE fill_leases SET holder = NULL, expires_at_ms = ?3, finished_at_ms = ?3, \
                     last_error_code = NULL, last_error = NULL \
                     WHERE source_type = ?1 AND source_id = ?2",
                )
                .bind(source_type)
                .bind(source_id)
                .bind(now.timestamp_millis())
                .execute(&mut *conn)
                .await?;
            }
            let row = sqlx::query(
                "INSERT INTO documents (id, source_type, source_id, title, content_markdown, \
                     content_json, tags, content_hash, version, last_synced, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 1, ?9, ?9, ?9) \
                 ON CONFLICT (source_type, source_id) DO UPDATE SET \
                     title = excluded.title, content_markdown = excluded.content_markdown, \
                     content_json = excluded.content_json, tags = excluded.tags, \
                     content_hash = excluded.content_hash, version = documents.version + 1, \
                     last_synced = excluded.last_synced, updated_at = excluded.updated_at, \
                     invalidated_at = NULL \
                 RETURNING id, source_type, source_id, tags, version, last_synced",
            )
            .bind(new_document_id())
            .bind(source_type)
            .bind(source_id)
            .bind(&content.title)
            .bind(&content.content_markdown)
            .bind(Json(&content.content_json))
            .bind(Json(&content.tags))
            .bind(content.content_hash())
            .bind(now)
            .fetch_one(&mut *conn)
            .await?;
            let mut head = head_from_row(&row)?;
            // The purge guard (migration 0006) may have kept the mark after the statement's
            // RETURNING was taken: read what it left.
            let mark: Option<String> =
                sqlx::query_scalar("SELECT invalidated_at FROM documents WHERE id = ?1")
                    .bind(&head.id)
                    .fetch_one(&mut *conn)
                    .await?;
            head.invalidated = mark.is_some();
            for a in attachments {
                let hash = a.hash();
                sqlx::query(
                    "INSERT INTO attachments (hash, content_type, size_bytes, data, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (hash) DO NOTHING",
                )
                .bind(&hash)
                .bind(&a.content_type)
                .bind(a.data.len() as i64)
                .bind(&a.data)
                .bind(now)
                .execute(&mut *conn)
                .await?;
                sqlx::query(
                    "INSERT INTO document_attachments (document_id, name, attachment_hash) \
                     VALUES (?1, ?2, ?3) \
                     ON CONFLICT (document_id, name) DO UPDATE SET attachment_hash = excluded.attachment_hash",
                )
                .bind(&head.id)
                .bind(&a.name)
                .bind(&hash)
                .execute(&mut *conn)
                .await?;
            }
            Ok::<_, StorageError>(head)
        }
        .await;
        let head = result?;
        conn.commit().await?;
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
    }

    fn pool_usage(&self) -> (u32, usize) {
        (self.pool.size(), self.pool.num_idle())
    }

    async fn claim_fill(
        &self,
        key: &SourceKey,
        holder: &str,
        ttl: Duration,
    ) -> Result<Claim, StorageError> {
        let (source_type, source_id) = (key.kind().as_str(), key.source_id());
        let source_id = source_id.as_str();
        let now = Utc::now().timestamp_millis();
        let token: Option<i64> = sqlx::query_scalar(
            "INSERT INTO fill_leases (source_type, source_id, holder, token, claimed_at_ms, expires_at_ms) \
             VALUES (?1, ?2, ?3, 1, ?4, ?5) \
             ON CONFLICT (source_type, source_id) DO UPDATE SET \
                 holder = excluded.holder, token = fill_leases.token + 1, \
                 claimed_at_ms = excluded.claimed_at_ms, expires_at_ms = excluded.expires_at_ms \
             WHERE fill_leases.holder IS NULL OR fill_leases.expires_at_ms <= ?4 \
                 OR fill_leases.holder = excluded.holder \
             RETURNING token",
        )
        .bind(source_type)
        .bind(source_id)
        .bind(holder)
        .bind(now)
        .bind(now + ttl.as_millis() as i64)
        .fetch_optional(&self.pool)
        .await?;
        let head = sqlx::query(
            "SELECT id, source_type, source_id, tags, version, last_synced, invalidated_at \
             FROM documents WHERE source_type = ?1 AND source_id = ?2",
        )
        .bind(source_type)
        .bind(source_id)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(head_from_row)
        .transpose()?;
        Ok(Claim { token, head })
    }

    async fn renew_fill(
        &self,
        key: &SourceKey,
        token: i64,
        ttl: Duration,
    ) -> Result<bool, StorageError> {
        let (source_type, source_id) = (key.kind().as_str(), key.source_id());
        let source_id = source_id.as_str();
        let done = sqlx::query(
            "UPDATE fill_leases SET expires_at_ms = ?4 \
             WHERE source_type = ?1 AND source_id = ?2 AND token = ?3 AND holder IS NOT NULL",
        )
        .bind(source_type)
        .bind(source_id)
        .bind(token)
        .bind(Utc::now().timestamp_millis() + ttl.as_millis() as i64)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn clear_abandoned_leases(&self, grace: Duration) -> Result<u64, StorageError> {
        let done = sqlx::query(
            "UPDATE fill_leases SET holder = NULL WHERE holder IS NOT NULL AND expires_at_ms < ?1",
        )
        .bind(Utc::now().timestamp_millis() - grace.as_millis() as i64)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn release_fill(
        &self,
        key: &SourceKey,
        token: i64,
        error: Option<(i32, &str)>,
    ) -> Result<(), StorageError> {
        let (source_type, source_id) = (key.kind().as_str(), key.source_id());
        let source_id = source_id.as_str();
        sqlx::query(
            "UPDATE fill_leases SET holder = NULL, expires_at_ms = ?4, finished_at_ms = ?4, \
             last_error_code = ?5, last_error = ?6 \
             WHERE source_type = ?1 AND source_id = ?2 AND token = ?3",
        )
        .bind(source_type)
        .bind(source_id)
        .bind(token)
        .bind(Utc::now().timestamp_millis())
        .bind(error.map(|e| e.0))
        .bind(error.map(|e| e.1))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn lease(&self, key: &SourceKey) -> Result<Option<Lease>, StorageError> {
        let (source_type, source_id) = (key.kind().as_str(), key.source_id());
        let source_id = source_id.as_str();
        let row = sqlx::query(
            "SELECT token, holder, claimed_at_ms, expires_at_ms, last_error_code, last_error, \
                    finished_at_ms \
             FROM fill_leases WHERE source_type = ?1 AND source_id = ?2",
        )
        .bind(source_type)
        .bind(source_id)
        .fetch_optional(&self.pool)
        .await?;
        let now = Utc::now().timestamp_millis();
        row.map(|r| {
            let holder: Option<String> = r.try_get("holder")?;
            let expires: i64 = r.try_get("expires_at_ms")?;
            let code: Option<i32> = r.try_get("last_error_code")?;
            let message: Option<String> = r.try_get("last_error")?;
            let finished: Option<i64> = r.try_get("finished_at_ms")?;
            let claimed: i64 = r.try_get("claimed_at_ms")?;
            let held = holder.is_some() && expires > now;
            Ok(Lease {
                token: r.try_get("token")?,
                held,
                last_error: code.zip(message),
                finished_at: finished.and_then(DateTime::from_timestamp_millis),
                holding: match (held, holder) {
                    (true, Some(holder)) => Some(Holding {
                        holder,
                        claimed_at: DateTime::from_timestamp_millis(claimed).unwrap_or_default(),
                        expires_at: DateTime::from_timestamp_millis(expires).unwrap_or_default(),
                    }),
                    _ => None,
                },
            })
        })
        .transpose()
    }

    async fn invalidate(
        &self,
        kind: Option<Kind>,
        keys: &[SourceKey],
        tags: &[String],
    ) -> Result<u64, StorageError> {
        let source_type = kind.map(Kind::as_str);
        let source_ids: Vec<String> = keys.iter().map(SourceKey::source_id).collect();
        let json = |v: &[String]| {
            serde_json::to_string(v).map_err(|e| StorageError::Corrupt(e.to_string()))
        };
        let done = sqlx::query(
            "UPDATE documents SET invalidated_at = ?4 \
             WHERE (?1 IS NULL OR source_type = ?1) \
               AND (source_id IN (SELECT value FROM json_each(?2)) \
                    OR EXISTS (SELECT 1 FROM json_each(documents.tags) t \
                               JOIN json_each(?3) q ON t.value = q.value) \
                    OR (json_array_length(?2) = 0 AND json_array_length(?3) = 0))",
        )
        .bind(source_type)
        .bind(json(&source_ids)?)
        .bind(json(tags)?)
        .bind(Utc::now())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn held_leases(&self) -> Result<Vec<HeldLease>, StorageError> {
        let rows = sqlx::query(
            "SELECT source_type, source_id, token, holder, claimed_at_ms, expires_at_ms \
             FROM fill_leases WHERE holder IS NOT NULL AND expires_at_ms > ?1 \
             ORDER BY claimed_at_ms",
        )
        .bind(Utc::now().timestamp_millis())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .filter_map(|r| {
                Some((
                    r,
                    super::known_key(r.try_get("source_type"), r.try_get("source_id"))?,
                ))
            })
            .map(|(r, key)| {
                let ms = |c: &str| -> Result<DateTime<Utc>, StorageError> {
                    Ok(DateTime::from_timestamp_millis(r.try_get(c)?).unwrap_or_default())
                };
                Ok(HeldLease {
                    key,
                    token: r.try_get("token")?,
                    holding: Holding {
                        holder: r
                            .try_get::<Option<String>, _>("holder")?
                            .unwrap_or_default(),
                        claimed_at: ms("claimed_at_ms")?,
                        expires_at: ms("expires_at_ms")?,
                    },
                })
            })
            .collect()
    }

    async fn get(&self, id: &str) -> Result<Option<StoredDocument>, StorageError> {
        read_document(&self.pool, id).await
    }

    async fn get_by_source(&self, key: &SourceKey) -> Result<Option<StoredDocument>, StorageError> {
        let (source_type, source_id) = (key.kind().as_str(), key.source_id());
        let source_id = source_id.as_str();
        read_document_by_source(&self.pool, source_type, source_id).await
    }

    async fn attachments_of(&self, document_id: &str) -> Result<Vec<AttachmentRef>, StorageError> {
        read_attachments_of(&self.pool, document_id).await
    }

    async fn attachment_data(&self, hash: &str) -> Result<Option<Vec<u8>>, StorageError> {
        read_attachment_data(&self.pool, hash).await
    }
}
