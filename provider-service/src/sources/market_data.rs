//! End-of-day market data: daily OHLCV bars from an EOD prices API and the figures derived
//! from them (last close and change, 52-week range, SMA 20/50/200, RSI 14, 20-day average
//! volume, trend).
//!
//! Upstream path: `GET {market_data}/api/eod/{CODE}.{SUFFIX}?fmt=json&from=YYYY-MM-DD`
//! (`&api_token=...` when configured), answering a JSON array of bars; 404 for an unknown
//! symbol.

use async_trait::async_trait;
use chrono::{Days, NaiveDate, Utc};
use documents_api::{Kind, Ticker};
use documents_store::NewContent;
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};

use super::{eod_symbol, http::UpstreamUrl, join, HttpClient, Source, SourceError};

pub const SCHEMA_VERSION: u32 = 1;

/// Calendar days of history a fill asks for (enough for SMA 200 and the 52-week range).
const HISTORY_DAYS: u64 = 400;

/// One daily bar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bar {
    pub date: NaiveDate,
    pub open: f64,
    pub high: f64,
    pub low: f64,
    pub close: f64,
    pub volume: f64,
}

/// Figures derived from the bars; `None` where there is not enough history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub last_date: NaiveDate,
    pub last_close: f64,
    pub change: Option<f64>,
    pub change_pct: Option<f64>,
    pub high_52w: f64,
    pub low_52w: f64,
    pub sma20: Option<f64>,
    pub sma50: Option<f64>,
    pub sma200: Option<f64>,
    pub rsi14: Option<f64>,
    pub avg_volume_20: Option<f64>,
    /// `up`, `down` or `sideways`.
    pub trend: String,
}

/// Parses the EOD JSON array. Bars are sorted by date; duplicates of a date keep the last.
pub fn parse_bars(body: &[u8]) -> Result<Vec<Bar>, SourceError> {
    let mut bars: Vec<Bar> = serde_json::from_slice(body)
        .map_err(|e| SourceError::Malformed(format!("end-of-day prices JSON is malformed: {e}")))?;
    if let Some(bad) = bars.iter().find(|b| {
        ![b.open, b.high, b.low, b.close, b.volume]
            .iter()
            .all(|v| v.is_finite() && *v >= 0.0)
    }) {
        return Err(SourceError::Malformed(format!(
            "end-of-day prices JSON has an invalid bar on {}",
            bad.date
        )));
    }
    bars.sort_by_key(|b| b.date);
    bars.dedup_by(|later, earlier| {
        if later.date == earlier.date {
            *earlier = later.clone();
            true
        } else {
            false
        }
    });
    Ok(bars)
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

fn sma(closes: &[f64], n: usize) -> Option<f64> {
    (closes.len() >= n).then(|| mean(&closes[closes.len() - n..]))
}

/// RSI with Wilder's smoothing over `n` periods.
fn rsi(closes: &[f64], n: usize) -> Option<f64> {
    if closes.len() <= n {
        return None;
    }
    let deltas: Vec<f64> = closes.windows(2).map(|w| w[1] - w[0]).collect();
    let mut gain = mean(&deltas[..n].iter().map(|d| d.max(0.0)).collect::<Vec<_>>());
    let mut loss = mean(
        &deltas[..n]
            .iter()
            .map(|d| (-d).max(0.0))
            .collect::<Vec<_>>(),
    );
    for d in &deltas[n..] {
        gain = (gain * (n as f64 - 1.0) + d.max(0.0)) / n as f64;
        loss = (loss * (n as f64 - 1.0) + (-d).max(0.0)) / n as f64;
    }
    Some(if loss == 0.0 {
        100.0
    } else {
        100.0 - 100.0 / (1.0 + gain / loss)
    })
}

/// Derives the figures; `None` when there are no bars.
pub fn derive(bars: &[Bar]) -> Option<Figures> {
    let last = bars.last()?;
    let closes: Vec<f64> = bars.iter().map(|b| b.close).collect();
    let prev = bars.len().checked_sub(2).map(|i| bars[i].close);
    let year_ago = last
        .date
        .checked_sub_days(Days::new(365))
        .unwrap_or(NaiveDate::MIN);
    let window: Vec<&Bar> = bars.iter().filter(|b| b.date > year_ago).collect();
    let sma20 = sma(&closes, 20);
    let sma50 = sma(&closes, 50);
    let sma200 = sma(&closes, 200);
    let volumes: Vec<f64> = bars.iter().map(|b| b.volume).collect();
    let (fast, slow) = match (sma50, sma200) {
        (Some(f), Some(s)) => (Some(f), Some(s)),
        _ => (sma20, sma50),
    };
    let trend = match (fast, slow) {
        (Some(f), Some(s)) if last.close > f && f > s => "up",
        (Some(f), Some(s)) if last.close < f && f < s => "down",
        _ => "sideways",
    };
    Some(Figures {
        last_date: last.date,
        last_close: last.close,
        change: prev.map(|p| last.close - p),
        change_pct: prev
            .filter(|p| *p != 0.0)
            .map(|p| (last.close - p) / p * 100.0),
        high_52w: window.iter().map(|b| b.high).fold(f64::MIN, f64::max),
        low_52w: window.iter().map(|b| b.low).fold(f64::MAX, f64::min),
        sma20,
        sma50,
        sma200,
        rsi14: rsi(&closes, 14),
        avg_volume_20: sma(&volumes, 20),
        trend: trend.to_string(),
    })
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "n/a".into())
}

pub fn build_document(ticker: &Ticker, bars: &[Bar], f: &Figures) -> NewContent {
    let md = format!(
        "# {ticker} market data\n\nLast close {:.2} on {} (change {}, {}%). Trend: {}.\n\n\
         | Figure | Value |\n|---|---|\n| 52-week high | {:.2} |\n| 52-week low | {:.2} |\n\
         | SMA 20 | {} |\n| SMA 50 | {} |\n| SMA 200 | {} |\n| RSI 14 | {} |\n| Avg volume 20d | {} |\n",
        f.last_close,
        f.last_date,
        fmt_opt(f.change),
        fmt_opt(f.change_pct),
        f.trend,
        f.high_52w,
        f.low_52w,
        fmt_opt(f.sma20),
        fmt_opt(f.sma50),
        fmt_opt(f.sma200),
        fmt_opt(f.rsi14),
        fmt_opt(f.avg_volume_20),
    );
    NewContent {
        title: format!("{ticker} market data"),
        content_markdown: md,
        content_json: serde_json::json!({
            "schema_version": SCHEMA_VERSION,
            "ticker": ticker.to_string(),
            "figures": f,
            "bars": bars,
        }),
        tags: {
            let mut tags = super::common_tags(Kind::MarketData, ticker);
            tags.push(format!("trend:{}", f.trend));
            tags
        },
    }
}

pub struct MarketDataSource {
    http: HttpClient,
    base: Url,
    api_token: Option<String>,
}

impl MarketDataSource {
    pub fn new(http: HttpClient, base: Url, api_token: Option<String>) -> Self {
        Self {
            http,
            base,
            api_token,
        }
    }
}

#[async_trait]
impl Source for MarketDataSource {
    fn kind(&self) -> Kind {
        Kind::MarketData
    }

    #[tracing::instrument(name = "fetch_market_data", skip(self), fields(ticker = %ticker))]
    async fn fetch(&self, ticker: &Ticker) -> Result<NewContent, SourceError> {
        let from = Utc::now().date_naive() - Days::new(HISTORY_DAYS);
        let path = format!("/api/eod/{}?fmt=json&from={from}", eod_symbol(ticker));
        // The upstream takes its token only in the query: the URL hides it when shown.
        let url = match &self.api_token {
            Some(t) => UpstreamUrl::with_secret_query(join(&self.base, &path), "api_token", t),
            None => join(&self.base, &path).into(),
        };
        let resp = self.http.get(&url).await?;
        if resp.status == StatusCode::NOT_FOUND {
            return Err(SourceError::NotFound(format!(
                "no market data for {ticker}"
            )));
        }
        let bars = parse_bars(&resp.body)?;
        let figures = derive(&bars)
            .ok_or_else(|| SourceError::NotFound(format!("no market data for {ticker}")))?;
        Ok(build_document(ticker, &bars, &figures))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bars(closes: &[f64]) -> Vec<Bar> {
        let start = NaiveDate::from_ymd_opt(2025, 1, 1).unwrap();
        closes
            .iter()
            .enumerate()
            .map(|(i, c)| Bar {
                date: start + Days::new(i as u64),
                open: *c,
                high: c + 1.0,
                low: c - 1.0,
                close: *c,
                volume: 1000.0 + i as f64,
            })
            .collect()
    }

    #[test]
    fn figures_on_a_rising_series() {
        let closes: Vec<f64> = (1..=250).map(f64::from).collect();
        let f = derive(&bars(&closes)).unwrap();
        assert_eq!(f.last_close, 250.0);
        assert_eq!(f.change, Some(1.0));
        assert_eq!(f.sma20, Some((231..=250).sum::<i32>() as f64 / 20.0));
        assert_eq!(f.sma200, Some((51..=250).sum::<i32>() as f64 / 200.0));
        assert_eq!(f.rsi14, Some(100.0));
        assert_eq!(f.high_52w, 251.0);
        assert_eq!(f.trend, "up");
    }

    #[test]
    fn short_history_leaves_figures_out() {
        let f = derive(&bars(&[10.0, 9.0, 8.0])).unwrap();
        assert_eq!(f.sma20, None);
        assert_eq!(f.rsi14, None);
        assert_eq!(f.trend, "sideways");
        assert!(derive(&[]).is_none());
    }

    proptest::proptest! {
        #[test]
        fn bar_parser_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            if let Ok(bars) = parse_bars(&bytes) {
                let _ = derive(&bars);
            }
        }

        #[test]
        fn figures_stay_within_the_range_of_the_bars(closes in proptest::collection::vec(0.01f64..1000.0, 1..300)) {
            let b = bars(&closes);
            let f = derive(&b).unwrap();
            let lo = closes.iter().cloned().fold(f64::MAX, f64::min);
            let hi = closes.iter().cloned().fold(f64::MIN, f64::max);
            for v in [f.sma20, f.sma50, f.sma200].into_iter().flatten() {
                proptest::prop_assert!(v >= lo - 1e-9 && v <= hi + 1e-9);
            }
            if let Some(r) = f.rsi14 {
                proptest::prop_assert!((0.0..=100.0).contains(&r));
            }
        }
    }

    #[test]
    fn malformed_bodies_are_errors() {
        assert!(matches!(parse_bars(b"{"), Err(SourceError::Malformed(_))));
        assert!(matches!(
            parse_bars(
                br#"[{"date":"2025-01-01","open":1,"high":1,"low":1,"close":-1,"volume":1}]"#
            ),
            Err(SourceError::Malformed(_))
        ));
    }
}
