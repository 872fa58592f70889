//! The invariant checker, as a function and as `provider-service check-invariants`, on both
//! databases: silent on data the services wrote, and naming what is wrong otherwise.

use std::process::Command;

use documents_api::{proto::consumer::v1::ProcessTickersRequest, DocumentProvider};
use e2e::{
    harness::{assert_invariants, bin, ConsumerProc, Db, Exchange, Provider},
    on_both_databases,
};

fn check_cli(db: &Db) -> (bool, String) {
    let out = Command::new(bin("provider-service"))
        .arg("check-invariants")
        .env_clear()
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

async fn checker_finds_what_is_wrong(db: Db) {
    let ex = Exchange::start();
    let provider = Provider::start(db.url(), &ex.url, &[]).await;
    let consumer = ConsumerProc::start(db.url(), &provider.url(), &[]).await;
    consumer
        .client()
        .await
        .process_tickers(ProcessTickersRequest {
            tickers: vec!["ASX:GNP".into(), "ASX:BHP".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_invariants(&db).await;
    let (ok, out) = tokio::task::spawn_blocking({
        let url = db.url().to_string();
        move || {
            let out = Command::new(bin("provider-service"))
                .arg("check-invariants")
                .env_clear()
                .env("DATABASE_URL", url)
                .output()
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        }
    })
    .await
    .unwrap();
    assert!(ok && out.contains("all invariants hold"), "{out}");

    // An orphan attachment and a lease held past its expiry.
    let store = db.store().await;
    store
        .upsert(
            &e2e::harness::key("ASX:ZZZ:announcement_download"),
            &documents_store::NewContent {
                title: "t".into(),
                content_markdown: String::new(),
                content_json: serde_json::json!({"schema_version": 1}),
                tags: vec![],
            },
            &[documents_store::NewAttachment {
                name: "k".into(),
                content_type: "application/pdf".into(),
                data: b"%PDF-orphan".to_vec(),
            }],
            None,
        )
        .await
        .unwrap();
    let orphaned = store
        .get_by_source(&e2e::harness::key("ASX:ZZZ:announcement_download"))
        .await
        .unwrap()
        .unwrap();
    let delete = if db.is_postgres() {
        "DELETE FROM document_attachments WHERE document_id = $1"
    } else {
        "DELETE FROM document_attachments WHERE document_id = ?1"
    };
    if db.is_postgres() {
        let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
        sqlx::query(delete)
            .bind(&orphaned.id)
            .execute(&pool)
            .await
            .unwrap();
    } else {
        let pool = sqlx::SqlitePool::connect(db.url()).await.unwrap();
        sqlx::query(delete)
            .bind(&orphaned.id)
            .execute(&pool)
            .await
            .unwrap();
    }
    let claim = store
        .claim_fill(
            &e2e::harness::key("ASX:QQQ:announcement"),
            "test",
            std::time::Duration::from_millis(1),
        )
        .await
        .unwrap();
    assert!(claim.token.is_some());
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let violations = store.check_invariants().await.unwrap();
    assert!(
        violations
            .iter()
            .any(|v| v.starts_with("attachment referenced by no document")),
        "{violations:?}"
    );
    assert!(
        violations
            .iter()
            .any(|v| v.starts_with("lease held past its expiry: announcement ASX:QQQ")),
        "{violations:?}"
    );
    let (ok, out) = tokio::task::spawn_blocking(move || check_cli(&db))
        .await
        .unwrap();
    assert!(!ok && out.contains("lease held past its expiry"), "{out}");
}

on_both_databases!(checker_finds_what_is_wrong);

/// The database itself refuses a version going backwards and an ID change for a source key,
/// whoever writes (here the schema's owner, with plain SQL), and the row stays as it was.
async fn the_database_refuses_history_rewrites(db: Db) {
    let ex = Exchange::start();
    let provider = Provider::start(db.url(), &ex.url, &[]).await;
    // Written twice: version 2.
    let forced = documents_api::DocumentOptions::new().force_refresh(true);
    let client = provider.client();
    let r = client.get_document("ASX:GNP", &forced).await.unwrap();
    client.get_document("ASX:GNP", &forced).await.unwrap();
    let before = db
        .store()
        .await
        .get_by_source(&e2e::harness::key("ASX:GNP:announcement"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(before.version, 2);
    let statements = [
        "UPDATE documents SET version = version - 1",
        "UPDATE documents SET version = 1",
        "UPDATE documents SET id = 'another-id'",
        "UPDATE documents SET source_id = 'ASX:BHP:announcement'",
    ];
    for sql in statements {
        let err = db.execute(sql).await.expect_err(sql).to_string();
        assert!(err.contains("documents:"), "{sql}: {err}");
    }
    let after = db
        .store()
        .await
        .get_by_source(&e2e::harness::key("ASX:GNP:announcement"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (after.id.as_str(), after.version),
        (r.document_id.as_str(), 2)
    );
    // Raising the version is what a refresh does: allowed.
    assert_eq!(
        db.execute("UPDATE documents SET version = version + 1")
            .await
            .unwrap(),
        1
    );
    // Without the trigger the checker says so.
    let drop_trigger = if db.is_postgres() {
        "DROP TRIGGER documents_history_guard ON documents"
    } else {
        "DROP TRIGGER documents_history_guard"
    };
    db.execute(drop_trigger).await.unwrap();
    let violations = db.store().await.check_invariants().await.unwrap();
    assert!(
        violations.iter().any(|v| v.starts_with("trigger missing")),
        "{violations:?}"
    );
}

on_both_databases!(the_database_refuses_history_rewrites);
