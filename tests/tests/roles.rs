//! Least privilege on PostgreSQL: connected as the consumer role (deploy/postgres/roles.sql), the
//! database refuses writes to the provider's documents and to the lease and policy tables, and
//! the consumer service still does its job with that role and DATABASE_MIGRATE=false.

use std::process::Command;

use documents_api::{
    proto::consumer::v1::ProcessTickersRequest, DocumentOptions, DocumentProvider,
};
use e2e::harness::{ConsumerProc, Db, Exchange, Provider};

#[tokio::test]
async fn the_consumer_role_writes_only_its_own_kind() {
    let db = Db::postgres();
    let ex = Exchange::start();
    let provider = Provider::start(db.url(), &ex.url, &[]).await;
    let gnp = provider
        .client()
        .get_document("ASX:GNP", &DocumentOptions::new())
        .await
        .unwrap();
    let roles = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/postgres/roles.sql");
    let out = Command::new("psql")
        .arg(db.url())
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-f", roles])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "roles.sql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let consumer_url = db
        .url()
        .replacen("://postgres@", "://documents_consumer@", 1);
    let pool = sqlx::PgPool::connect(&consumer_url).await.unwrap();
    // Reading every document is allowed.
    let title: String = sqlx::query_scalar("SELECT title FROM documents WHERE id = $1")
        .bind(&gnp.document_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    // Updating the provider's document changes nothing: the row is not the consumer's to write.
    let updated =
        sqlx::query("UPDATE documents SET title = 'tampered' WHERE source_type = 'announcement'")
            .execute(&pool)
            .await
            .unwrap()
            .rows_affected();
    assert_eq!(updated, 0);
    // Creating one, or re-labelling its own documents as the provider's, is refused outright.
    let err = sqlx::query(
        "INSERT INTO documents (id, source_type, source_id, title, content_markdown, content_json, tags, \
         content_hash, version, last_synced) \
         VALUES ('forged', 'announcement', 'ASX:XYZ:announcement', 't', '', '{}', '{}', 'h', 1, now())",
    )
    .execute(&pool)
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("row-level security"), "{err}");
    // The provider's leases are not the consumer's to touch (its own kind's are).
    let touched = sqlx::query("UPDATE fill_leases SET holder = 'me'")
        .execute(&pool)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(touched, 0);
    let err = sqlx::query(
        "INSERT INTO fill_leases (source_type, source_id, holder, token, claimed_at, expires_at) \
         VALUES ('announcement', 'ASX:ZZZ:announcement', 'me', 1, now(), now())",
    )
    .execute(&pool)
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("row-level security"), "{err}");
    for sql in [
        "INSERT INTO kind_writers VALUES ('announcement', 'documents_consumer')",
        "CREATE TABLE sneaky (x int)",
        "UPDATE attachments SET data = 'x'",
        "DELETE FROM attachments",
    ] {
        let err = sqlx::query(sql)
            .execute(&pool)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("permission denied"), "{sql}: {err}");
    }

    // Attaching a file to the provider's document is refused.
    let err = sqlx::query(
        "INSERT INTO document_attachments (document_id, name, attachment_hash) VALUES ($1, 'x', 'h')",
    )
    .bind(&gnp.document_id)
    .execute(&pool)
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("row-level security"), "{err}");
    // The consumer service with that role: its own writes (document and attachments) succeed.
    let consumer = ConsumerProc::start(
        &consumer_url,
        &provider.url(),
        &[("DATABASE_MIGRATE", "false")],
    )
    .await;
    let report = consumer
        .client()
        .await
        .process_tickers(ProcessTickersRequest {
            tickers: vec!["ASX:GNP".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .reports
        .remove(0);
    assert!(report.status.is_none(), "{report:?}");
    assert!(!report.downloaded.is_empty());
    let after: String = sqlx::query_scalar("SELECT title FROM documents WHERE id = $1")
        .bind(&gnp.document_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(after, title, "the provider's document is untouched");
}
