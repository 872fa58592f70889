//! The Prometheus endpoints count a scripted round exactly.

use e2e::harness::{
    age_document, forced_status, free_addr, metric_value, scrape_metrics, ConsumerProc, Db,
    Exchange, Provider, LISTING_PATH, MARKIT_PATH,
};
use shared::{
    proto::consumer::v1::ProcessTickersRequest, DocumentOptions, DocumentProvider, Outcome,
};

#[tokio::test]
async fn provider_metrics_count_a_scripted_round() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    let metrics = free_addr();
    let p = Provider::start(
        db.url(),
        &ex.url,
        &[
            ("PROVIDER_METRICS_ADDR", &metrics),
            ("PROVIDER_NEGATIVE_CACHE_MS", "0"),
        ],
    )
    .await;
    let c = p.client();
    let created = c
        .get_document("ASX:GNP", &DocumentOptions::new())
        .await
        .unwrap();
    assert_eq!(created.outcome, Outcome::Created);
    for _ in 0..3 {
        assert_eq!(
            c.get_document("ASX:GNP", &DocumentOptions::new())
                .await
                .unwrap()
                .outcome,
            Outcome::Hit
        );
    }
    // Upstream down and the document stale: one stale answer, counted apart from the hits.
    let mut down = forced_status(LISTING_PATH, 503);
    down.status.insert(MARKIT_PATH.into(), 503);
    ex.control(&down).await;
    age_document(&db, "ASX:GNP:announcement", 30).await;
    let stale = c
        .get_document("ASX:GNP", &DocumentOptions::new().stale_if_error_hours(48))
        .await
        .unwrap();
    assert_eq!(stale.outcome, Outcome::Stale);

    let text = scrape_metrics(&metrics).await;
    let answers = |outcome: &str| {
        metric_value(
            &text,
            &format!("documents_answers_total{{rpc=\"GetDocument\",outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(answers("created"), Some(1.0), "{text}");
    assert_eq!(answers("hit"), Some(3.0), "{text}");
    assert_eq!(answers("stale"), Some(1.0), "{text}");
    assert_eq!(answers("refreshed"), None, "{text}");
    let host = ex.url.trim_start_matches("http://");
    assert_eq!(
        metric_value(
            &text,
            &format!("documents_source_requests_total{{host=\"{host}\",status=\"200\"}}")
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            &format!("documents_source_requests_total{{host=\"{host}\",status=\"503\"}}")
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            "documents_fill_seconds_count{kind=\"announcement\",result=\"ok\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            "documents_fill_seconds_count{kind=\"announcement\",result=\"error\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        metric_value(&text, "documents_db_connections{state=\"idle\"}").is_some(),
        "{text}"
    );
}

#[tokio::test]
async fn consumer_metrics_count_downloads() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    let p = Provider::start(db.url(), &ex.url, &[]).await;
    let metrics = free_addr();
    let consumer =
        ConsumerProc::start(db.url(), &p.url(), &[("CONSUMER_METRICS_ADDR", &metrics)]).await;
    let mut client = consumer.client().await;
    for _ in 0..2 {
        client
            .process_tickers(ProcessTickersRequest {
                tickers: vec!["ASX:GNP".into(), "bad!".into()],
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let text = scrape_metrics(&metrics).await;
    assert_eq!(
        metric_value(&text, "consumer_tickers_total{result=\"ok\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "consumer_tickers_total{result=\"error\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "consumer_downloads_total{result=\"downloaded\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "consumer_downloads_total{result=\"skipped\"}"),
        Some(2.0),
        "{text}"
    );
}
