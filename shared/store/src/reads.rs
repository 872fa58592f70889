//! The reads both engines run alike: a document by ID or by source key, a document's attachments
//! and an attachment's bytes, written once and expanded in each engine's module by
//! [`engine_reads!`] (each engine decodes rows its own way: JSON text on SQLite, arrays and
//! JSONB on PostgreSQL).
//!
//! One SQL text serves both databases: `$1`, `$2` are PostgreSQL's positional parameters, and
//! the SQLite driver binds `$N` to the N-th argument too. The macro expands where `Row`,
//! `StoredDocument`, `AttachmentRef`, `StorageError` and `document_from_row` are in scope.

/// The columns of a whole document (the engines' `document_from_row` read them by name).
macro_rules! document_columns {
    () => {
        "id, source_type, source_id, title, content_markdown, content_json, \
         tags, content_hash, version, last_synced, created_at, updated_at"
    };
}

pub(crate) const DOCUMENT_BY_ID: &str = concat!(
    "SELECT ",
    document_columns!(),
    " FROM documents WHERE id = $1"
);

pub(crate) const DOCUMENT_BY_SOURCE: &str = concat!(
    "SELECT ",
    document_columns!(),
    " FROM documents WHERE source_type = $1 AND source_id = $2"
);

pub(crate) const ATTACHMENTS_OF: &str = "SELECT l.name, l.attachment_hash, a.content_type, \
     a.size_bytes FROM document_attachments l JOIN attachments a ON a.hash = l.attachment_hash \
     WHERE l.document_id = $1 ORDER BY l.name";

pub(crate) const ATTACHMENT_DATA: &str = "SELECT data FROM attachments WHERE hash = $1";

/// Expands, in an engine's module, `read_document`, `read_document_by_source`,
/// `read_attachments_of` and `read_attachment_data` over that engine's executor type `$exec`
/// (a pool, or a connection), using the module's own `document_from_row`.
macro_rules! engine_reads {
    ($exec:ty) => {
        async fn read_document(
            pool: $exec,
            id: &str,
        ) -> Result<Option<StoredDocument>, StorageError> {
            let row = sqlx::query($crate::reads::DOCUMENT_BY_ID)
                .bind(id)
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(document_from_row).transpose()
        }

        async fn read_document_by_source(
            pool: $exec,
            source_type: &str,
            source_id: &str,
        ) -> Result<Option<StoredDocument>, StorageError> {
            let row = sqlx::query($crate::reads::DOCUMENT_BY_SOURCE)
                .bind(source_type)
                .bind(source_id)
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(document_from_row).transpose()
        }

        async fn read_attachments_of(
            pool: $exec,
            document_id: &str,
        ) -> Result<Vec<AttachmentRef>, StorageError> {
            let rows = sqlx::query($crate::reads::ATTACHMENTS_OF)
                .bind(document_id)
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(AttachmentRef {
                        name: r.try_get("name")?,
                        hash: r.try_get("attachment_hash")?,
                        content_type: r.try_get("content_type")?,
                        size_bytes: r.try_get("size_bytes")?,
                    })
                })
                .collect()
        }

        async fn read_attachment_data(
            pool: $exec,
            hash: &str,
        ) -> Result<Option<Vec<u8>>, StorageError> {
            let row = sqlx::query($crate::reads::ATTACHMENT_DATA)
                .bind(hash)
                .fetch_optional(pool)
                .await?;
            Ok(row.map(|r| r.try_get("data")).transpose()?)
        }
    };
}

pub(crate) use engine_reads;
