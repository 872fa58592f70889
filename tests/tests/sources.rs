//! The real sources against the sample exchange: market data figures checked against an
//! independent computation from the exchange's own bars, dividends against the exchange's own
//! list, the per-host rate limit measured from the exchange's request log, and malformed
//! upstream bodies.

use chrono::{Days, NaiveDate};
use documents_api::{DocumentOptions, DocumentProvider, Kind};
use e2e::harness::{Db, Exchange, Provider, DIV_PATH, EOD_PATH, LISTING_PATH, MARKIT_PATH};
use sample_exchange::{Bar, Control, Dividend};
use tonic::Code;

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// RSI 14 the textbook way: seed with simple averages of the first 14 changes, then Wilder's
/// smoothing, written out step by step.
fn rsi14(closes: &[f64]) -> f64 {
    let mut gains = 0.0;
    let mut losses = 0.0;
    for i in 1..=14 {
        let d = closes[i] - closes[i - 1];
        if d > 0.0 {
            gains += d;
        } else {
            losses -= d;
        }
    }
    let (mut avg_gain, mut avg_loss) = (gains / 14.0, losses / 14.0);
    for i in 15..closes.len() {
        let d = closes[i] - closes[i - 1];
        let (g, l) = if d > 0.0 { (d, 0.0) } else { (0.0, -d) };
        avg_gain = (avg_gain * 13.0 + g) / 14.0;
        avg_loss = (avg_loss * 13.0 + l) / 14.0;
    }
    if avg_loss == 0.0 {
        100.0
    } else {
        100.0 - 100.0 / (1.0 + avg_gain / avg_loss)
    }
}

fn close_to(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6 * b.abs().max(1.0)
}

#[tokio::test]
async fn market_data_figures_match_an_independent_computation() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    let p = Provider::start(db.url(), &ex.url, &[]).await;
    let r = p
        .client()
        .get_document("ASX:CBA", &DocumentOptions::new().kind(Kind::MarketData))
        .await
        .unwrap();
    let doc = db.store().await.get(&r.document_id).await.unwrap().unwrap();
    let f = &doc.content_json["figures"];

    // The exchange's own answer for the same period, fetched independently.
    let first: NaiveDate = doc.content_json["bars"][0]["date"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let bars: Vec<Bar> = e2e::harness::http()
        .get(format!("{}{EOD_PATH}CBA.AU?fmt=json&from={first}", ex.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        doc.content_json["bars"].as_array().unwrap().len(),
        bars.len()
    );
    let closes: Vec<f64> = bars.iter().map(|b| b.close).collect();
    let n = closes.len();
    let last = bars.last().unwrap();
    let year_ago = last.date.checked_sub_days(Days::new(365)).unwrap();
    let window: Vec<&Bar> = bars.iter().filter(|b| b.date > year_ago).collect();
    let expect = [
        ("last_close", last.close),
        ("change", last.close - closes[n - 2]),
        (
            "change_pct",
            (last.close - closes[n - 2]) / closes[n - 2] * 100.0,
        ),
        (
            "high_52w",
            window.iter().map(|b| b.high).fold(f64::MIN, f64::max),
        ),
        (
            "low_52w",
            window.iter().map(|b| b.low).fold(f64::MAX, f64::min),
        ),
        ("sma20", mean(&closes[n - 20..])),
        ("sma50", mean(&closes[n - 50..])),
        ("sma200", mean(&closes[n - 200..])),
        ("rsi14", rsi14(&closes)),
        (
            "avg_volume_20",
            mean(
                &bars[n - 20..]
                    .iter()
                    .map(|b| b.volume as f64)
                    .collect::<Vec<_>>(),
            ),
        ),
    ];
    for (name, want) in expect {
        let got = f[name]
            .as_f64()
            .unwrap_or_else(|| panic!("{name} missing: {f}"));
        assert!(
            close_to(got, want),
            "{name}: provider {got}, independent {want}"
        );
    }
    let (sma50, sma200) = (mean(&closes[n - 50..]), mean(&closes[n - 200..]));
    let trend = if last.close > sma50 && sma50 > sma200 {
        "up"
    } else if last.close < sma50 && sma50 < sma200 {
        "down"
    } else {
        "sideways"
    };
    assert_eq!(f["trend"], trend);
    assert!(
        doc.tags.contains(&format!("trend:{trend}")),
        "{:?}",
        doc.tags
    );
}

#[tokio::test]
async fn dividends_match_the_exchanges_own_list() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    let p = Provider::start(db.url(), &ex.url, &[]).await;
    let client = p.client();
    let r = client
        .get_document("ASX:CBA", &DocumentOptions::new().kind(Kind::Dividends))
        .await
        .unwrap();
    assert_eq!(r.source_id, "ASX:CBA:dividends");
    let doc = db.store().await.get(&r.document_id).await.unwrap().unwrap();
    assert_eq!(doc.key.kind(), Kind::Dividends);

    // The exchange's own answer for the same period, fetched independently.
    let listed = doc.content_json["dividends"].as_array().unwrap().clone();
    let first = listed[0]["date"].as_str().unwrap();
    let own: Vec<Dividend> = e2e::harness::http()
        .get(format!("{}{DIV_PATH}CBA.AU?fmt=json&from={first}", ex.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(own.len() >= 2, "{own:?}");
    assert_eq!(listed.len(), own.len());
    for (stored, want) in listed.iter().zip(&own) {
        assert_eq!(stored["date"], want.date.to_string());
        assert_eq!(
            stored["paymentDate"],
            want.payment_date.unwrap().to_string()
        );
        assert_eq!(stored["period"], want.period);
        assert!(close_to(stored["value"].as_f64().unwrap(), want.value));
    }
    let f = &doc.content_json["figures"];
    let as_of: NaiveDate = f["as_of"].as_str().unwrap().parse().unwrap();
    let year_ago = as_of.checked_sub_days(Days::new(365)).unwrap();
    let trailing: f64 = own
        .iter()
        .filter(|d| d.date > year_ago && d.date <= as_of)
        .map(|d| d.value)
        .sum();
    assert!(
        close_to(f["trailing_12m"].as_f64().unwrap(), trailing),
        "provider {}, independent {trailing}",
        f["trailing_12m"]
    );
    assert_eq!(f["last_value"].as_f64().unwrap(), own.last().unwrap().value);
    assert!(
        doc.tags.contains(&"pays:dividends".to_string()),
        "{:?}",
        doc.tags
    );

    // A company that pays none has a document that says so; an unknown one has none.
    let quiet = client
        .get_document("ASX:QUIET", &DocumentOptions::new().kind(Kind::Dividends))
        .await
        .unwrap();
    assert!(
        quiet.tags.contains(&"pays:none".to_string()),
        "{:?}",
        quiet.tags
    );
    let err = client
        .get_document("ASX:NOPE", &DocumentOptions::new().kind(Kind::Dividends))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}

#[tokio::test]
async fn the_rate_limit_per_host_holds_under_concurrent_fills() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    let p = Provider::start(
        db.url(),
        &ex.url,
        &[
            ("UPSTREAM_RATE_LIMIT", "5"),
            ("PROVIDER_FILL_CONCURRENCY", "16"),
        ],
    )
    .await;
    let ids: Vec<String> = ["GNP", "BHP", "CBA", "QUIET", "NOPEA", "NOPEB"]
        .map(String::from)
        .to_vec();
    let results = p
        .client()
        .get_documents(&ids, &DocumentOptions::new())
        .await
        .unwrap();
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        4,
        "{results:?}"
    );
    let log = ex.stats().await.log;
    assert!(log.len() >= 8, "{log:?}");
    // 5 per second: any k+1 consecutive requests span at least k x 200 ms. Arrival times carry
    // some scheduling jitter, so one allowance of 30 ms covers the whole span, not each gap.
    let at: Vec<f64> = log.iter().map(|l| l.at_ms).collect();
    for i in 0..at.len() {
        for j in i + 1..at.len() {
            let span = at[j] - at[i];
            let floor = (j - i) as f64 * 200.0 - 30.0;
            assert!(
                span >= floor,
                "requests {i}..{j} within {span:.1} ms, faster than 5/s: {at:?}"
            );
        }
    }
}

#[tokio::test]
async fn malformed_upstream_bodies_are_internal_and_change_nothing() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    let p = Provider::start(db.url(), &ex.url, &[("PROVIDER_NEGATIVE_CACHE_MS", "0")]).await;
    let client = p.client();
    let before = client
        .get_document("ASX:GNP", &DocumentOptions::new())
        .await
        .unwrap();
    let stored = db.store().await.get(&before.document_id).await.unwrap();

    ex.control(&Control {
        malformed: vec![
            LISTING_PATH.into(),
            MARKIT_PATH.into(),
            EOD_PATH.into(),
            DIV_PATH.into(),
        ],
        ..Default::default()
    })
    .await;
    let err = client
        .get_document("ASX:GNP", &DocumentOptions::new().cache_hours(0))
        .await
        .unwrap_err();
    // The upstream's fault, retryable: UNAVAILABLE with ErrorInfo reason UPSTREAM_MALFORMED.
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("truncated"), "{}", err.message());
    assert_eq!(
        documents_api::ItemError::from(&err).reason.as_deref(),
        Some("UPSTREAM_MALFORMED")
    );
    assert_eq!(
        db.store().await.get(&before.document_id).await.unwrap(),
        stored,
        "untouched"
    );

    let err = client
        .get_document("ASX:BHP", &DocumentOptions::new().kind(Kind::MarketData))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("malformed"), "{}", err.message());

    let err = client
        .get_document("ASX:BHP", &DocumentOptions::new().kind(Kind::Dividends))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("malformed"), "{}", err.message());
}

#[tokio::test]
async fn an_upstream_that_says_retry_after_is_waited_for_then_answers() {
    let db = Db::sqlite();
    let ex = Exchange::start();
    let p = Provider::start(db.url(), &ex.url, &[("UPSTREAM_RETRIES", "2")]).await;
    // The market-data source's one request is refused twice with `503, Retry-After: 1`.
    ex.control(&Control {
        busy: [(EOD_PATH.to_string(), 2)].into(),
        ..Default::default()
    })
    .await;
    let answer = p
        .client()
        .get_document("ASX:BHP", &DocumentOptions::new().kind(Kind::MarketData))
        .await
        .expect("answered after the upstream's second Retry-After");
    assert!(!answer.document_id.is_empty());
    let at: Vec<f64> = ex
        .stats()
        .await
        .log
        .iter()
        .filter(|l| l.path.starts_with(EOD_PATH))
        .map(|l| l.at_ms)
        .collect();
    assert_eq!(at.len(), 3, "two refusals and the answer: {at:?}");
    // Each retry came after the second the upstream asked for, not on the backoff's 100 ms
    // (a lower bound only; the upper is the machine's business).
    for pair in at.windows(2) {
        assert!(pair[1] - pair[0] >= 990.0, "retried too soon: {at:?}");
    }

    // Told to come back later than is worth waiting for, or out of retries: UNAVAILABLE.
    ex.control(&Control {
        busy: [(DIV_PATH.to_string(), 3)].into(),
        ..Default::default()
    })
    .await;
    let err = p
        .client()
        .get_document("ASX:BHP", &DocumentOptions::new().kind(Kind::Dividends))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("503"), "{}", err.message());
}
