//! Dividends: the dividends a company declared (ex-date, record and payment dates, period,
//! amount per share, currency) from the EOD API's dividends endpoint, with the figures callers
//! ask for most (the last one, the trailing twelve months' sum, how many).
//!
//! Upstream path: `GET {market_data}/api/div/{CODE}.{SUFFIX}?fmt=json&from=YYYY-MM-DD`
//! (`&api_token=...` when configured), answering a JSON array of dividends (empty for a company
//! that pays none); 404 for an unknown symbol. Same API, base URL and token as market data.

use async_trait::async_trait;
use chrono::{Datelike, Days, NaiveDate, Utc};
use documents_api::{Kind, Ticker};
use documents_store::NewContent;
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};

use super::{eod_symbol, http::UpstreamUrl, join, HttpClient, Source, SourceError};

pub const SCHEMA_VERSION: u32 = 1;

/// Calendar years of dividends a fill asks for (the current one and before).
const YEARS: i32 = 5;

/// One dividend, in the upstream's JSON shape (`date` is the ex-dividend date).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Dividend {
    #[serde(rename = "date")]
    pub ex_date: NaiveDate,
    #[serde(default)]
    pub declaration_date: Option<NaiveDate>,
    #[serde(default)]
    pub record_date: Option<NaiveDate>,
    #[serde(default)]
    pub payment_date: Option<NaiveDate>,
    /// `Interim`, `Final`, `Special`...
    #[serde(default)]
    pub period: Option<String>,
    /// Amount per share.
    pub value: f64,
    #[serde(default)]
    pub currency: Option<String>,
}

/// Figures derived from the dividends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub count: usize,
    /// The latest ex-date and its amount; `None` for a company that paid none.
    pub last_ex_date: Option<NaiveDate>,
    pub last_value: Option<f64>,
    /// Sum of the amounts with an ex-date in the twelve months to `as_of`.
    pub trailing_12m: f64,
    pub as_of: NaiveDate,
    pub currency: Option<String>,
}

/// Parses the dividends JSON array. Dividends are sorted by ex-date; duplicates of an ex-date
/// and period keep the last.
pub fn parse_dividends(body: &[u8]) -> Result<Vec<Dividend>, SourceError> {
    let mut dividends: Vec<Dividend> = serde_json::from_slice(body)
        .map_err(|e| SourceError::Malformed(format!("dividends JSON is malformed: {e}")))?;
    if let Some(bad) = dividends
        .iter()
        .find(|d| !(d.value.is_finite() && d.value >= 0.0))
    {
        return Err(SourceError::Malformed(format!(
            "dividends JSON has an invalid amount on {}",
            bad.ex_date
        )));
    }
    dividends.sort_by(|a, b| (a.ex_date, &a.period).cmp(&(b.ex_date, &b.period)));
    dividends.dedup_by(|later, earlier| {
        if (later.ex_date, &later.period) == (earlier.ex_date, &earlier.period) {
            *earlier = later.clone();
            true
        } else {
            false
        }
    });
    Ok(dividends)
}

/// The figures of `dividends` (sorted by ex-date) as of `today`.
pub fn derive(dividends: &[Dividend], today: NaiveDate) -> Figures {
    let year_ago = today
        .checked_sub_days(Days::new(365))
        .unwrap_or(NaiveDate::MIN);
    let last = dividends.last();
    Figures {
        count: dividends.len(),
        last_ex_date: last.map(|d| d.ex_date),
        last_value: last.map(|d| d.value),
        trailing_12m: round4(
            dividends
                .iter()
                .filter(|d| d.ex_date > year_ago && d.ex_date <= today)
                .map(|d| d.value)
                .sum(),
        ),
        as_of: today,
        currency: last.and_then(|d| d.currency.clone()),
    }
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

fn date_or_dash(d: Option<NaiveDate>) -> String {
    d.map(|d| d.to_string()).unwrap_or_else(|| "-".into())
}

pub fn build_document(ticker: &Ticker, dividends: &[Dividend], f: &Figures) -> NewContent {
    let currency = f.currency.clone().unwrap_or_default();
    let mut md = match (f.last_ex_date, f.last_value) {
        (Some(date), Some(value)) => format!(
            "# {ticker} dividends\n\n{} dividends; the last went ex on {date} ({value} {currency}). \
             Trailing twelve months to {}: {} {currency}.\n\n",
            f.count, f.as_of, f.trailing_12m
        ),
        _ => format!("# {ticker} dividends\n\nNo dividends declared.\n\n"),
    };
    if !dividends.is_empty() {
        md.push_str("| Ex-date | Period | Amount | Record | Paid |\n|---|---|---|---|---|\n");
        for d in dividends.iter().rev() {
            md.push_str(&format!(
                "| {} | {} | {} {} | {} | {} |\n",
                d.ex_date,
                d.period.as_deref().unwrap_or("-").replace('|', "\\|"),
                d.value,
                d.currency.as_deref().unwrap_or("").replace('|', "\\|"),
                date_or_dash(d.record_date),
                date_or_dash(d.payment_date),
            ));
        }
    }
    NewContent {
        title: format!("{ticker} dividends"),
        content_markdown: md,
        content_json: serde_json::json!({
            "schema_version": SCHEMA_VERSION,
            "ticker": ticker.to_string(),
            "figures": f,
            "dividends": dividends,
        }),
        tags: {
            let mut tags = super::common_tags(Kind::Dividends, ticker);
            tags.push(
                if f.count == 0 {
                    "pays:none"
                } else {
                    "pays:dividends"
                }
                .to_string(),
            );
            tags
        },
    }
}

pub struct DividendsSource {
    http: HttpClient,
    base: Url,
    api_token: Option<String>,
}

impl DividendsSource {
    pub fn new(http: HttpClient, base: Url, api_token: Option<String>) -> Self {
        Self {
            http,
            base,
            api_token,
        }
    }
}

#[async_trait]
impl Source for DividendsSource {
    fn kind(&self) -> Kind {
        Kind::Dividends
    }

    #[tracing::instrument(name = "fetch_dividends", skip(self), fields(ticker = %ticker))]
    async fn fetch(&self, ticker: &Ticker) -> Result<NewContent, SourceError> {
        let today = Utc::now().date_naive();
        let from = NaiveDate::from_ymd_opt(today.year() - YEARS + 1, 1, 1).unwrap_or(today);
        let path = format!("/api/div/{}?fmt=json&from={from}", eod_symbol(ticker));
        // The upstream takes its token only in the query: the URL hides it when shown.
        let url = match &self.api_token {
            Some(t) => UpstreamUrl::with_secret_query(join(&self.base, &path), "api_token", t),
            None => join(&self.base, &path).into(),
        };
        let resp = self.http.get(&url).await?;
        if resp.status == StatusCode::NOT_FOUND {
            return Err(SourceError::NotFound(format!("no dividends for {ticker}")));
        }
        let dividends = parse_dividends(&resp.body)?;
        let figures = derive(&dividends, today);
        Ok(build_document(ticker, &dividends, &figures))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn the_upstream_shape_parses_sorted_with_missing_dates() {
        let body = br#"[
            {"date":"2025-09-04","declarationDate":"2025-08-27","recordDate":"2025-09-05",
             "paymentDate":"2025-09-30","period":"Final","value":0.06,"unadjustedValue":0.06,"currency":"AUD"},
            {"date":"2025-03-01","declarationDate":null,"recordDate":null,"paymentDate":null,
             "period":null,"value":0.05,"unadjustedValue":0.05,"currency":"AUD"}
        ]"#;
        let d = parse_dividends(body).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].ex_date, date("2025-03-01"));
        assert_eq!(d[0].payment_date, None);
        assert_eq!(d[1].period.as_deref(), Some("Final"));
        assert_eq!(d[1].payment_date, Some(date("2025-09-30")));
    }

    #[test]
    fn figures_sum_the_trailing_twelve_months_only() {
        let div = |ex: &str, value: f64| Dividend {
            ex_date: date(ex),
            declaration_date: None,
            record_date: None,
            payment_date: None,
            period: None,
            value,
            currency: Some("AUD".into()),
        };
        let all = [
            div("2024-03-01", 1.0),
            div("2025-03-01", 0.5),
            div("2025-09-04", 0.25),
        ];
        let f = derive(&all, date("2025-12-31"));
        assert_eq!(f.count, 3);
        assert_eq!(f.trailing_12m, 0.75);
        assert_eq!(f.last_ex_date, Some(date("2025-09-04")));
        assert_eq!(f.last_value, Some(0.25));
        let none = derive(&[], date("2025-12-31"));
        assert_eq!(
            (none.count, none.last_value, none.trailing_12m),
            (0, None, 0.0)
        );
        let doc = build_document(&Ticker::parse("ASX:QUIET").unwrap(), &[], &none);
        assert!(
            doc.tags.contains(&"pays:none".to_string()),
            "{:?}",
            doc.tags
        );
        assert!(doc.content_markdown.contains("No dividends declared"));
    }

    #[test]
    fn malformed_bodies_are_errors() {
        assert!(matches!(
            parse_dividends(b"{"),
            Err(SourceError::Malformed(_))
        ));
        assert!(matches!(
            parse_dividends(br#"[{"date":"2025-01-01","value":-1}]"#),
            Err(SourceError::Malformed(_))
        ));
        assert!(matches!(
            parse_dividends(br#"[{"date":"not a date","value":1}]"#),
            Err(SourceError::Malformed(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn the_parser_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            if let Ok(d) = parse_dividends(&bytes) {
                let _ = derive(&d, date("2025-06-30"));
            }
        }
    }
}
