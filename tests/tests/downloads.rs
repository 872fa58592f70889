//! The consumer downloads PDFs only from where PDFs come from. A stored announcements document
//! is rewritten as an attacker who shaped the upstream's listing would: PDF URLs that point at
//! another local HTTP service (the canary), and URLs on the allowed origin that redirect there.
//! The canary must receive nothing; a redirect within the allowed origin is still followed.

use e2e::harness::{ConsumerProc, Db, Exchange, Provider, PDF_PATH};
use sample_exchange::Control;

#[tokio::test]
async fn planted_urls_and_redirects_never_reach_another_host() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    // Another HTTP service on this machine, which counts every request it gets.
    let canary = Exchange::start();
    let provider = Provider::start(db.url(), &ex.url, &[]).await;
    let gnp = documents_api::DocumentProvider::get_document(
        &provider.client(),
        "ASX:GNP",
        &documents_api::DocumentOptions::new(),
    )
    .await
    .unwrap();

    // The announcements as planted: every one an annual report, so the consumer selects each.
    let real_pdf = |key: &str| format!("{}{PDF_PATH}?display=pdf&idsId={key}", ex.url);
    let planted = [
        // Straight at the canary.
        (
            "90000001",
            format!("{}{PDF_PATH}?display=pdf&idsId=1", canary.url),
        ),
        // On the allowed origin, redirected to the canary.
        ("90000002", format!("{}/planted/redirect-out", ex.url)),
        // Redirected to the canary's name for the same machine.
        ("90000003", format!("{}/planted/redirect-localhost", ex.url)),
        // Cloud metadata.
        (
            "90000004",
            "http://169.254.169.254/latest/meta-data/".to_string(),
        ),
        // On the allowed origin, redirected within it: followed.
        ("90000005", format!("{}/planted/redirect-in", ex.url)),
    ];
    let canary_port = canary.url.rsplit(':').next().unwrap().to_string();
    ex.control(&Control {
        redirect: [
            (
                "/planted/redirect-out".to_string(),
                format!("{}{PDF_PATH}?display=pdf&idsId=2", canary.url),
            ),
            (
                "/planted/redirect-localhost".to_string(),
                format!("http://localhost:{canary_port}{PDF_PATH}?display=pdf&idsId=3"),
            ),
            ("/planted/redirect-in".to_string(), real_pdf("000002607")),
        ]
        .into(),
        ..Default::default()
    })
    .await;
    let announcements: Vec<serde_json::Value> = planted
        .iter()
        .map(|(key, url)| {
            serde_json::json!({
                "date": "2026-08-27", "size": "1KB", "type": "ANNUAL_REPORT", "signal": "results",
                "relevance": "HIGH", "price_sensitive": true, "document_key": key,
                "headline": format!("[SAMPLE] Annual Report {key}"), "pdf_url": url,
            })
        })
        .collect();
    let store = db.store().await;
    let mut doc = store.get(&gnp.document_id).await.unwrap().unwrap();
    doc.content_json["announcements"] = serde_json::Value::Array(announcements);
    let pool = sqlx::SqlitePool::connect(db.url()).await.unwrap();
    sqlx::query("UPDATE documents SET content_json = ?1 WHERE id = ?2")
        .bind(doc.content_json.to_string())
        .bind(&gnp.document_id)
        .execute(&pool)
        .await
        .unwrap();

    // The consumer may download from the exchange's origin only.
    let consumer = ConsumerProc::start(
        db.url(),
        &provider.url(),
        &[("CONSUMER_DOWNLOAD_ALLOWED_ORIGINS", ex.url.as_str())],
    )
    .await;
    let report = consumer
        .client()
        .await
        .process_tickers(documents_api::proto::consumer::v1::ProcessTickersRequest {
            tickers: vec!["ASX:GNP".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .reports
        .remove(0);

    assert_eq!(
        canary.stats().await.total,
        0,
        "the canary must receive nothing"
    );
    let failed = |key: &str| {
        report
            .failed
            .iter()
            .find(|i| i.document_key == key)
            .map(|i| i.error.clone())
            .unwrap_or_else(|| panic!("{key} must fail: {report:?}"))
    };
    assert!(
        failed("90000001").contains("is not one of the allowed origins"),
        "{}",
        failed("90000001")
    );
    for key in ["90000002", "90000003"] {
        assert!(
            failed(key).contains("CONSUMER_DOWNLOAD_ALLOWED_ORIGINS does not allow"),
            "{key}: {}",
            failed(key)
        );
    }
    assert!(failed("90000004").contains("169.254.169.254:80 is not one of the allowed origins"));
    assert_eq!(
        report
            .downloaded
            .iter()
            .map(|i| i.document_key.as_str())
            .collect::<Vec<_>>(),
        ["90000005"],
        "a redirect within the allowed origin is followed: {report:?}"
    );
    // The trace context went only where the consumer was allowed to go.
    let traced = ex
        .stats()
        .await
        .log
        .iter()
        .filter(|l| l.traceparent.is_some())
        .count();
    assert!(traced >= 2, "the allowed origin got the trace context");
}
