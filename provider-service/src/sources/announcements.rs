//! ASX company announcements: fetch the HTML listing per calendar year, fall back to the Markit
//! Digital JSON API when the listing fails or is empty, normalise, classify by headline, and
//! build the `announcement` document.
//!
//! Upstream paths (relative to the configured base URLs):
//! - listing: `GET {asx}/asx/v2/statistics/announcements.do?by=asxCode&asxCode=GNP&timeframe=Y&year=2025`
//! - JSON:    `GET {markit}/asx-research/1.0/companies/gnp/announcements?count=500`
//!   (404 for a company the exchange does not know)
//! - PDFs:    `GET {asx}/asx/v2/statistics/displayAnnouncement.do?display=pdf&idsId=02837312`

use std::collections::BTreeSet;

use async_trait::async_trait;
use chrono::{Datelike, NaiveDate, Utc};
use documents_api::{Kind, Ticker};
use documents_store::NewContent;
use reqwest::{StatusCode, Url};
use scraper::{ElementRef, Html, Selector};
use serde::{Deserialize, Serialize};

use super::{join, HttpClient, Source, SourceError, UpstreamUrls};

/// Version of the JSON content layout of announcement documents.
pub const SCHEMA_VERSION: u32 = 1;

/// How much an announcement matters to an investor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Relevance {
    High,
    Medium,
    Low,
    Noise,
}

/// One normalised announcement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// ISO date, `YYYY-MM-DD`.
    pub date: String,
    pub headline: String,
    /// Classified type, e.g. `ANNUAL_REPORT`.
    #[serde(rename = "type")]
    pub kind: String,
    pub pdf_url: String,
    /// The exchange's document key (the `idsId` of the PDF link).
    pub document_key: String,
    /// Size as the exchange shows it, e.g. `3.2MB`; empty when not shown.
    pub size: String,
    pub price_sensitive: bool,
    pub relevance: Relevance,
    pub signal: String,
}

/// Keyword rules, first match wins: (keywords, type, relevance, signal).
const RULES: &[(&[&str], &str, Relevance, &str)] = &[
    (
        &["trading halt", "suspension"],
        "TRADING_HALT",
        Relevance::High,
        "halt",
    ),
    (
        &[
            "annual report",
            "appendix 4e",
            "preliminary final",
            "full year",
            "full-year",
        ],
        "ANNUAL_REPORT",
        Relevance::High,
        "results",
    ),
    (
        &["half year", "half-year", "appendix 4d"],
        "HALF_YEAR",
        Relevance::High,
        "results",
    ),
    (
        &["quarterly", "appendix 4c", "appendix 5b"],
        "QUARTERLY",
        Relevance::Medium,
        "periodic_report",
    ),
    (
        &["dividend", "distribution"],
        "DIVIDEND",
        Relevance::Medium,
        "dividend",
    ),
    (
        &["substantial holder"],
        "SUBSTANTIAL_HOLDER",
        Relevance::Medium,
        "ownership",
    ),
    (&["director"], "DIRECTOR", Relevance::Low, "insider"),
    (&["meeting", "agm"], "MEETING", Relevance::Low, "governance"),
    (&["appendix"], "APPENDIX", Relevance::Low, "capital"),
];

/// Classifies a headline into (type, relevance, signal). Price-sensitive announcements are at
/// least MEDIUM.
pub fn classify(headline: &str, price_sensitive: bool) -> (&'static str, Relevance, &'static str) {
    let lower = headline.to_lowercase();
    let (kind, relevance, signal) = RULES
        .iter()
        .find(|(words, ..)| words.iter().any(|w| lower.contains(w)))
        .map(|(_, k, r, s)| (*k, *r, *s))
        .unwrap_or(("OTHER", Relevance::Noise, "none"));
    let relevance = if price_sensitive && relevance > Relevance::Medium {
        Relevance::Medium
    } else {
        relevance
    };
    (kind, relevance, signal)
}

fn normalise(
    date: NaiveDate,
    headline: &str,
    pdf_url: String,
    document_key: String,
    size: String,
    price_sensitive: bool,
) -> Announcement {
    let headline = collapse_ws(headline);
    let (kind, relevance, signal) = classify(&headline, price_sensitive);
    Announcement {
        date: date.format("%Y-%m-%d").to_string(),
        headline,
        kind: kind.to_string(),
        pdf_url,
        document_key,
        size,
        price_sensitive,
        relevance,
        signal: signal.to_string(),
    }
}

fn collapse_ws(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The PDF link of an announcement, from its document key.
pub fn pdf_url(asx: &Url, document_key: &str) -> String {
    join(
        asx,
        &format!("/asx/v2/statistics/displayAnnouncement.do?display=pdf&idsId={document_key}"),
    )
    .to_string()
}

fn selector(s: &str) -> Selector {
    Selector::parse(s).expect("static selector is valid")
}

/// Parses the HTML listing. Rows that lack a date or a link are skipped, not fatal; a page
/// without the announcements table is Malformed.
pub fn parse_listing(html: &str, asx: &Url) -> Result<Vec<Announcement>, SourceError> {
    // HTML parsers repair anything, so a cut-off page would silently lose rows: insist on the
    // end of the document.
    if !html.trim_end().to_ascii_lowercase().ends_with("</html>") {
        return Err(SourceError::Malformed(
            "announcements listing is truncated: no closing </html>".into(),
        ));
    }
    let doc = Html::parse_document(html);
    let table = doc
        .select(&selector("announcement_data table, table.announcements"))
        .next()
        .ok_or_else(|| {
            SourceError::Malformed("announcements listing has no announcements table".into())
        })?;
    let td = selector("td");
    let a = selector("a");
    let size_sel = selector("span.filesize");
    let pricesens = selector(".pricesens img, img.pricesens");
    let mut out = Vec::new();
    for row in table.select(&selector("tr")) {
        let cells: Vec<ElementRef> = row.select(&td).collect();
        if cells.len() < 3 {
            continue;
        }
        let date_text = cells[0]
            .text()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        let Ok(date) = NaiveDate::parse_from_str(&date_text, "%d/%m/%Y") else {
            continue;
        };
        let price_sensitive = cells[1].select(&pricesens).next().is_some();
        let Some(link) = cells[2].select(&a).next() else {
            continue;
        };
        let href = link.value().attr("href").unwrap_or_default();
        let Some(key) = ids_id(href) else {
            continue;
        };
        // The headline is the link's first text node; page count and size follow in spans.
        let headline = link.text().next().unwrap_or_default();
        if headline.trim().is_empty() {
            continue;
        }
        let size = link
            .select(&size_sel)
            .next()
            .map(|s| s.text().collect::<String>().trim().to_string())
            .unwrap_or_default();
        out.push(normalise(
            date,
            headline,
            pdf_url(asx, &key),
            key,
            size,
            price_sensitive,
        ));
    }
    Ok(out)
}

/// The `idsId` query parameter of a PDF link.
fn ids_id(href: &str) -> Option<String> {
    let query = href.split_once('?')?.1;
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| k.eq_ignore_ascii_case("idsId"))
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric()))
}

#[derive(Deserialize)]
struct MarkitResponse {
    data: MarkitData,
}

#[derive(Deserialize)]
struct MarkitData {
    #[serde(default)]
    items: Vec<MarkitItem>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MarkitItem {
    document_key: String,
    date: String,
    headline: String,
    #[serde(default)]
    is_price_sensitive: bool,
    #[serde(default)]
    file_size: String,
}

/// Parses the Markit JSON answer. Items are keyed `NNNN-IDSID-XXXX`; the middle part is the
/// same key as the listing's `idsId`, so both paths give identical announcements.
pub fn parse_markit(body: &[u8], asx: &Url) -> Result<Vec<Announcement>, SourceError> {
    let resp: MarkitResponse = serde_json::from_slice(body)
        .map_err(|e| SourceError::Malformed(format!("announcements JSON is malformed: {e}")))?;
    let mut out = Vec::with_capacity(resp.data.items.len());
    for item in resp.data.items {
        let key = item
            .document_key
            .split('-')
            .nth(1)
            .unwrap_or(&item.document_key)
            .to_string();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric()) {
            continue;
        }
        let Some(date) = item
            .date
            .get(..10)
            .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
        else {
            continue;
        };
        out.push(normalise(
            date,
            &item.headline,
            pdf_url(asx, &key),
            key,
            item.file_size,
            item.is_price_sensitive,
        ));
    }
    Ok(out)
}

/// Newest first, one entry per document key.
fn sort_dedup(mut items: Vec<Announcement>) -> Vec<Announcement> {
    let mut seen = BTreeSet::new();
    items.retain(|a| seen.insert(a.document_key.clone()));
    items.sort_by(|a, b| {
        b.date
            .cmp(&a.date)
            .then_with(|| a.document_key.cmp(&b.document_key))
    });
    items
}

/// Builds the document for `ticker` from its announcements.
pub fn build_document(
    ticker: &Ticker,
    via: &str,
    years: &[i32],
    items: &[Announcement],
) -> NewContent {
    let significant: Vec<&Announcement> = items
        .iter()
        .filter(|a| a.relevance <= Relevance::Medium)
        .collect();
    let mut md = format!(
        "# {ticker} announcements\n\n{} announcements in {}, {} significant.\n\n",
        items.len(),
        years
            .iter()
            .map(|y| y.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        significant.len()
    );
    if !significant.is_empty() {
        md.push_str(
            "| Date | Type | Relevance | Price sensitive | Headline |\n|---|---|---|---|---|\n",
        );
        for a in &significant {
            md.push_str(&format!(
                "| {} | {} | {:?} | {} | [{}]({}) |\n",
                a.date,
                a.kind,
                a.relevance,
                if a.price_sensitive { "yes" } else { "" },
                a.headline.replace('|', "\\|"),
                a.pdf_url
            ));
        }
    }
    let json = serde_json::json!({
        "schema_version": SCHEMA_VERSION,
        "ticker": ticker.to_string(),
        "exchange": ticker.exchange(),
        "code": ticker.code(),
        "years": years,
        "fetched_via": via,
        "announcements": items,
    });
    NewContent {
        title: format!("{ticker} announcements"),
        content_markdown: md,
        content_json: json,
        tags: super::common_tags(Kind::Announcement, ticker),
    }
}

/// The announcements source.
pub struct AnnouncementsSource {
    http: HttpClient,
    urls: UpstreamUrls,
    years: u32,
}

impl AnnouncementsSource {
    pub fn new(http: HttpClient, urls: UpstreamUrls, years: u32) -> Self {
        Self {
            http,
            urls,
            years: years.max(1),
        }
    }

    async fn fetch_listing(
        &self,
        ticker: &Ticker,
        years: &[i32],
    ) -> Result<Vec<Announcement>, SourceError> {
        let mut all = Vec::new();
        for year in years {
            let url = join(
                &self.urls.asx,
                &format!(
                    "/asx/v2/statistics/announcements.do?by=asxCode&asxCode={}&timeframe=Y&year={year}",
                    ticker.code()
                ),
            );
            let page = self.http.get(&url.clone().into()).await?;
            if page.status == StatusCode::NOT_FOUND {
                return Err(SourceError::Unavailable(format!(
                    "GET {url}: listing answered 404"
                )));
            }
            let html = String::from_utf8_lossy(&page.body);
            all.extend(parse_listing(&html, &self.urls.asx)?);
        }
        Ok(all)
    }

    async fn fetch_markit(
        &self,
        ticker: &Ticker,
        years: &[i32],
    ) -> Result<Vec<Announcement>, SourceError> {
        let url = join(
            &self.urls.markit,
            &format!(
                "/asx-research/1.0/companies/{}/announcements?count=500",
                ticker.code().to_lowercase()
            ),
        );
        let resp = self.http.get(&url.clone().into()).await?;
        if resp.status == StatusCode::NOT_FOUND {
            return Err(SourceError::NotFound(format!(
                "company {ticker} is not known to the exchange"
            )));
        }
        let first = years.iter().min().copied().unwrap_or_default();
        Ok(parse_markit(&resp.body, &self.urls.asx)?
            .into_iter()
            .filter(|a| a.date[..4].parse::<i32>().is_ok_and(|y| y >= first))
            .collect())
    }
}

#[async_trait]
impl Source for AnnouncementsSource {
    fn kind(&self) -> Kind {
        Kind::Announcement
    }

    #[tracing::instrument(name = "fetch_announcements", skip(self), fields(ticker = %ticker))]
    async fn fetch(&self, ticker: &Ticker) -> Result<NewContent, SourceError> {
        if ticker.exchange() != "ASX" {
            return Err(SourceError::Unsupported(format!(
                "announcements are only available for ASX tickers, not {ticker}"
            )));
        }
        let this_year = Utc::now().year();
        let years: Vec<i32> = (0..self.years as i32)
            .map(|i| this_year - i)
            .rev()
            .collect();
        // The listing is the primary path; the JSON API answers when the listing fails or is
        // empty, and is the one that can tell an unknown company from a quiet one.
        let (items, via) = match self.fetch_listing(ticker, &years).await {
            Ok(items) if !items.is_empty() => (items, "listing"),
            Ok(_) => (self.fetch_markit(ticker, &years).await?, "json_api"),
            Err(listing_err) => {
                tracing::warn!(error = %listing_err, "announcements listing failed, trying the JSON API");
                match self.fetch_markit(ticker, &years).await {
                    Ok(items) => (items, "json_api"),
                    Err(SourceError::NotFound(m)) => return Err(SourceError::NotFound(m)),
                    Err(_) => return Err(listing_err),
                }
            }
        };
        Ok(build_document(ticker, via, &years, &sort_dedup(items)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("http://127.0.0.1:1").unwrap()
    }

    const LISTING: &str = r#"<html><body><announcement_data><table>
      <tr><th>Date</th><th>Price sens.</th><th>Headline</th></tr>
      <tr><td>27/08/2025<br><span class="dates-time">8:30 am</span></td>
          <td class="pricesens"><img class="pricesens" src="/i.svg" alt="asterix"></td>
          <td><a href="/asx/v2/statistics/displayAnnouncement.do?display=pdf&amp;idsId=02900001">
            Appendix 4E and Annual Report<br><span class="page">84 pages</span><span class="filesize">3.2MB</span></a></td></tr>
      <tr><td>01/03/2025</td><td class="pricesens"></td>
          <td><a href="/asx/v2/statistics/displayAnnouncement.do?display=pdf&amp;idsId=02900002">Change of Director's Interest Notice</a></td></tr>
      <tr><td>not a date</td><td></td><td><a href="/x?idsId=1">Ignored</a></td></tr>
      <tr><td>02/03/2025</td><td></td><td>no link</td></tr>
    </table></announcement_data></body></html>"#;

    proptest::proptest! {
        #[test]
        fn listing_parser_never_panics(s in "\\PC*", cut in 0usize..2000) {
            let _ = parse_listing(&s, &base());
            let page = format!("{}</html>", &LISTING[..cut.min(LISTING.len())]);
            let _ = parse_listing(&page, &base());
        }

        #[test]
        fn markit_parser_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = parse_markit(&bytes, &base());
        }
    }

    #[test]
    fn hostile_listings_are_errors_or_skipped_rows() {
        // Truncated.
        assert!(matches!(
            parse_listing(&LISTING[..LISTING.len() / 2], &base()),
            Err(SourceError::Malformed(_))
        ));
        // Missing columns: rows with fewer than three cells are skipped.
        let two_cols = "<html><announcement_data><table><tr><td>01/01/2025</td><td>x</td></tr></table></announcement_data></html>";
        assert_eq!(parse_listing(two_cols, &base()).unwrap(), vec![]);
        // Wrong encoding: invalid UTF-8 is replaced, never a panic.
        let latin1 = String::from_utf8_lossy(b"<html><body>\xe9\xff</body></html>");
        assert!(parse_listing(&latin1, &base()).is_err());
        // A huge body of rows parses in bounded memory and keeps every valid row.
        let row =
            r#"<tr><td>01/03/2025</td><td></td><td><a href="/x?idsId=1">Quarterly</a></td></tr>"#;
        let huge = format!(
            "<html><announcement_data><table>{}</table></announcement_data></html>",
            row.repeat(20_000)
        );
        let items = parse_listing(&huge, &base()).unwrap();
        assert_eq!(items.len(), 20_000);
        // Script injection in a headline stays text.
        let evil = r#"<html><announcement_data><table><tr><td>01/03/2025</td><td></td><td><a href="/x?idsId=2">&lt;script&gt;alert(1)&lt;/script&gt; | Annual Report</a></td></tr></table></announcement_data></html>"#;
        let items = parse_listing(evil, &base()).unwrap();
        assert_eq!(
            items[0].headline,
            "<script>alert(1)</script> | Annual Report"
        );
        let doc = build_document(&Ticker::parse("GNP").unwrap(), "listing", &[2025], &items);
        assert!(
            doc.content_markdown.contains("\\|"),
            "pipes are escaped in the table"
        );
    }

    #[test]
    fn listing_rows_are_normalised_and_bad_rows_skipped() {
        let items = parse_listing(LISTING, &base()).unwrap();
        assert_eq!(items.len(), 2);
        let a = &items[0];
        assert_eq!(a.date, "2025-08-27");
        assert_eq!(a.headline, "Appendix 4E and Annual Report");
        assert_eq!(a.kind, "ANNUAL_REPORT");
        assert_eq!(a.relevance, Relevance::High);
        assert_eq!(a.document_key, "02900001");
        assert_eq!(a.size, "3.2MB");
        assert!(a.price_sensitive);
        assert!(a.pdf_url.ends_with("idsId=02900001"), "{}", a.pdf_url);
        assert_eq!(items[1].kind, "DIRECTOR");
        assert!(!items[1].price_sensitive);
    }

    #[test]
    fn a_page_without_the_table_is_malformed() {
        assert!(matches!(
            parse_listing("<html><body>maintenance</body></html>", &base()),
            Err(SourceError::Malformed(_))
        ));
        assert!(parse_listing("", &base()).is_err());
    }

    #[test]
    fn markit_items_match_the_listing_keys() {
        let body = br#"{"data":{"displayName":"X","items":[
            {"documentKey":"2924-02900001-3A1","date":"2025-08-27T08:30:00.000Z","headline":"Appendix 4E and  Annual Report","isPriceSensitive":true,"fileSize":"3.2MB"},
            {"documentKey":"bad key!","date":"2025-08-27","headline":"skipped"}]}}"#;
        let items = parse_markit(body, &base()).unwrap();
        let listing = parse_listing(LISTING, &base()).unwrap();
        assert_eq!(items, vec![listing[0].clone()]);
        assert!(matches!(
            parse_markit(b"{\"data\":", &base()),
            Err(SourceError::Malformed(_))
        ));
    }

    #[test]
    fn classification_follows_the_keyword_rules() {
        assert_eq!(classify("Trading Halt", false).0, "TRADING_HALT");
        assert_eq!(
            classify("Quarterly Activities Report", false).0,
            "QUARTERLY"
        );
        assert_eq!(classify("Half Year Accounts", false).0, "HALF_YEAR");
        assert_eq!(classify("Dividend/Distribution - GNP", false).0, "DIVIDEND");
        assert_eq!(
            classify("Notice of Annual General Meeting", false).0,
            "MEETING"
        );
        assert_eq!(
            classify("Application for quotation - Appendix 2A", false).0,
            "APPENDIX"
        );
        assert_eq!(
            classify("Becoming a substantial holder", false).0,
            "SUBSTANTIAL_HOLDER"
        );
        assert_eq!(
            classify("Investor presentation", false),
            ("OTHER", Relevance::Noise, "none")
        );
        assert_eq!(classify("Investor presentation", true).1, Relevance::Medium);
    }

    #[test]
    fn document_has_tags_and_schema_version() {
        let t = Ticker::parse("ASX:GNP").unwrap();
        let doc = build_document(
            &t,
            "listing",
            &[2025],
            &parse_listing(LISTING, &base()).unwrap(),
        );
        assert_eq!(
            doc.tags,
            vec![
                "announcement",
                "gnp",
                "ticker:ASX:GNP",
                "source_type:announcement"
            ]
        );
        assert_eq!(doc.content_json["schema_version"], 1);
        assert!(doc
            .content_markdown
            .contains("| 2025-08-27 | ANNUAL_REPORT |"));
    }
}
