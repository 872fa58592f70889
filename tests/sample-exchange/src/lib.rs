//! The sample exchange: a local HTTP server that serves the real upstreams' paths and shapes
//! from deterministic, clearly fictional data (every headline starts with "[SAMPLE]"), so the
//! default run, the tests and the benchmarks exercise the real source code offline.
//!
//! Paths:
//! - `GET /asx/v2/statistics/announcements.do?by=asxCode&asxCode=GNP&timeframe=Y&year=2025`:
//!   HTML listing (an unknown code gets the page with an empty table, as the real site does);
//! - `GET /asx-research/1.0/companies/gnp/announcements`: Markit-style JSON (404 when unknown);
//! - `GET /asx/v2/statistics/displayAnnouncement.do?display=pdf&idsId=KEY`: a small valid PDF;
//! - `GET /api/eod/GNP.AU?fmt=json&from=YYYY-MM-DD`: daily OHLCV bars (404 when unknown);
//! - `GET /api/div/GNP.AU?fmt=json&from=YYYY-MM-DD`: dividends, twice a year (an empty array
//!   for a company that pays none, 404 when unknown);
//! - `GET /_stats`: request counts; `POST /_stats/reset`; `POST /_control`: test knobs
//!   (`latency_ms`, and by path prefix: `delay_ms`, `status`, `malformed`, `not_pdf`,
//!   `oversize`, `half_answer`, `reset`, `redirect`, `busy` (503 with `Retry-After: 1`);
//!   `fail_rate`).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::Bytes,
    extract::{Request, State},
    http::{header, Method, StatusCode},
    response::{IntoResponse, Response},
    Router,
};
use chrono::{Datelike, Days, NaiveDate, Utc, Weekday};
use serde::{Deserialize, Serialize};

/// A fictional company of the sample exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct Company {
    /// Stable index (part of document keys).
    pub index: usize,
    pub code: String,
    pub name: String,
    pub base_price: f64,
    /// Whether it has announcements (a quiet company has none).
    pub announces: bool,
}

/// The named sample companies: (code, name, base price, announces).
pub const NAMED: &[(&str, &str, f64, bool)] = &[
    ("GNP", "GenusPlus Group (sample)", 2.4, true),
    ("BHP", "BHP Group (sample)", 44.0, true),
    ("CBA", "Commonwealth Bank (sample)", 130.0, true),
    ("QUIET", "Quiet Holdings (sample)", 1.0, false),
];

/// Synthetic companies `S0000` to `S9999` exist too, for benchmarks that need many documents.
const SYNTHETIC_BASE: usize = 100;
const SYNTHETIC_COUNT: usize = 10_000;

fn by_index(index: usize) -> Option<Company> {
    if let Some((code, name, base_price, announces)) = NAMED.get(index) {
        return Some(Company {
            index,
            code: code.to_string(),
            name: name.to_string(),
            base_price: *base_price,
            announces: *announces,
        });
    }
    let n = index
        .checked_sub(SYNTHETIC_BASE)
        .filter(|n| *n < SYNTHETIC_COUNT)?;
    Some(Company {
        index,
        code: format!("S{n:04}"),
        name: format!("Synthetic {n:04} (sample)"),
        base_price: 5.0 + (n % 97) as f64,
        announces: true,
    })
}

/// The company with `code` (case-insensitive), if the sample exchange knows it.
pub fn company(code: &str) -> Option<Company> {
    let upper = code.to_ascii_uppercase();
    if let Some(i) = NAMED.iter().position(|(c, ..)| *c == upper) {
        return by_index(i);
    }
    let n: usize = upper
        .strip_prefix('S')
        .filter(|d| d.len() == 4)?
        .parse()
        .ok()?;
    by_index(SYNTHETIC_BASE + n)
}

/// (month, day, headline, price sensitive) of each company's yearly announcements.
const CALENDAR: &[(u32, u32, &str, bool)] = &[
    (1, 29, "Quarterly Activities Report", false),
    (2, 20, "Half Year Report and Appendix 4D", true),
    (3, 10, "Change of Director's Interest Notice", false),
    (4, 28, "Quarterly Activities Report", false),
    (6, 3, "Trading Halt", true),
    (7, 30, "Quarterly Activities Report", false),
    (8, 27, "Appendix 4E and Annual Report", true),
    (8, 27, "Preliminary Final Report", true),
    (9, 5, "Dividend/Distribution", false),
    (10, 15, "Notice of Annual General Meeting", false),
    (11, 20, "Becoming a substantial holder", false),
];

/// How many years back the sample data reaches, counting the current one.
pub const YEARS: i32 = 4;

/// One sample announcement.
#[derive(Debug, Clone)]
pub struct SampleAnnouncement {
    pub date: NaiveDate,
    pub headline: String,
    pub key: String,
    pub price_sensitive: bool,
    pub size: String,
}

/// A company's announcements of `year` up to `today`, newest first.
pub fn announcements(code: &str, year: i32, today: NaiveDate) -> Vec<SampleAnnouncement> {
    let Some(c) = company(code) else {
        return Vec::new();
    };
    if !c.announces || year > today.year() || year <= today.year() - YEARS {
        return Vec::new();
    }
    let mut out: Vec<SampleAnnouncement> = CALENDAR
        .iter()
        .enumerate()
        .filter_map(|(seq, (m, d, headline, ps))| {
            let date = NaiveDate::from_ymd_opt(year, *m, *d)?;
            (date <= today).then(|| SampleAnnouncement {
                date,
                headline: format!("[SAMPLE] {headline}"),
                key: key(c.index, year, seq),
                price_sensitive: *ps,
                size: format!("{}KB", 100 + seq * 37),
            })
        })
        .collect();
    out.reverse();
    out
}

/// Nine-digit document key, unique per (company, year, calendar entry).
fn key(company_index: usize, year: i32, seq: usize) -> String {
    format!(
        "{company_index:05}{:02}{:02}",
        year.rem_euclid(100),
        seq + 1
    )
}

/// Finds the announcement behind a document key.
pub fn by_key(key: &str, today: NaiveDate) -> Option<SampleAnnouncement> {
    let c = by_index(key.get(..5)?.parse::<usize>().ok()?)?;
    (0..YEARS)
        .flat_map(|i| announcements(&c.code, today.year() - i, today))
        .find(|a| a.key == key)
}

/// A minimal valid one-page PDF showing `text`.
pub fn pdf(text: &str) -> Vec<u8> {
    let safe: String = text
        .chars()
        .filter(|c| c.is_ascii() && !matches!(c, '(' | ')' | '\\'))
        .collect();
    let stream = format!("BT /F1 14 Tf 72 720 Td ({safe}) Tj ET");
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_string(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R \
         /Resources << /Font << /F1 5 0 R >> >> >>"
            .to_string(),
        format!(
            "<< /Length {} >>\nstream\n{stream}\nendstream",
            stream.len()
        ),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_string(),
    ];
    let mut out = String::from("%PDF-1.4\n");
    let mut offsets = Vec::new();
    for (i, body) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.push_str(&format!("{} 0 obj\n{body}\nendobj\n", i + 1));
    }
    let xref = out.len();
    out.push_str(&format!(
        "xref\n0 {}\n0000000000 65535 f \n",
        objects.len() + 1
    ));
    for o in offsets {
        out.push_str(&format!("{o:010} 00000 n \n"));
    }
    out.push_str(&format!(
        "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
        objects.len() + 1
    ));
    out.into_bytes()
}

/// One daily bar, in the EOD API's JSON shape.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Bar {
    pub date: NaiveDate,
    pub open: f64,
    pub high: f64,
    pub low: f64,
    pub close: f64,
    pub adjusted_close: f64,
    pub volume: u64,
}

/// Weekday bars of a company from `from` to `today`, deterministic per (code, date).
pub fn bars(code: &str, from: NaiveDate, today: NaiveDate) -> Vec<Bar> {
    let Some(c) = company(code) else {
        return Vec::new();
    };
    let ci = c.index;
    let start = NaiveDate::from_ymd_opt(today.year() - YEARS + 1, 1, 1).unwrap_or(today);
    let mut out = Vec::new();
    let mut d = start.max(from);
    while d <= today {
        if !matches!(d.weekday(), Weekday::Sat | Weekday::Sun) {
            let t = (d - start).num_days() as f64;
            let phase = ci as f64 * 1.7;
            let drift = 1.0 + t / 3000.0;
            let wave = 1.0 + 0.08 * (t / 45.0 + phase).sin() + 0.03 * (t / 7.0 + phase).sin();
            let close = round2(c.base_price * drift * wave);
            let open = round2(close * (1.0 + 0.004 * (t / 3.0 + phase).cos()));
            let high = round2(close.max(open) * 1.01);
            let low = round2(close.min(open) * 0.99);
            let volume = (100_000.0 * (1.5 + (t / 11.0 + phase).sin())) as u64;
            out.push(Bar {
                date: d,
                open,
                high,
                low,
                close,
                adjusted_close: close,
                volume,
            });
        }
        d = d + Days::new(1);
    }
    out
}

/// One dividend, in the EOD API's JSON shape (`date` is the ex-dividend date).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Dividend {
    pub date: NaiveDate,
    pub declaration_date: Option<NaiveDate>,
    pub record_date: Option<NaiveDate>,
    pub payment_date: Option<NaiveDate>,
    pub period: String,
    pub value: f64,
    pub unadjusted_value: f64,
    pub currency: String,
}

/// A day of the year: (month, day).
type MonthDay = (u32, u32);

/// (period, declared, ex-date, record, paid) of each year's two dividends.
const DIVIDEND_CALENDAR: &[(&str, MonthDay, MonthDay, MonthDay, MonthDay)] = &[
    ("Interim", (2, 20), (3, 1), (3, 2), (3, 28)),
    ("Final", (8, 27), (9, 4), (9, 5), (9, 30)),
];

/// A company's dividends with an ex-date from `from`, declared by `today`, oldest first:
/// an interim and a final one each year, growing a little year on year. A company without
/// announcements (QUIET) pays none.
pub fn dividends(code: &str, from: NaiveDate, today: NaiveDate) -> Vec<Dividend> {
    let Some(c) = company(code).filter(|c| c.announces) else {
        return Vec::new();
    };
    let first = today.year() - YEARS + 1;
    let mut out = Vec::new();
    for year in first..=today.year() {
        for (i, (period, declared, ex, record, paid)) in DIVIDEND_CALENDAR.iter().enumerate() {
            let day = |(m, d): MonthDay| NaiveDate::from_ymd_opt(year, m, d);
            let (Some(declared), Some(ex), Some(record), Some(paid)) =
                (day(*declared), day(*ex), day(*record), day(*paid))
            else {
                continue;
            };
            if declared > today || ex < from {
                continue;
            }
            let growth = 1.0 + 0.05 * f64::from(year - first);
            let value = round2(c.base_price * 0.02 * growth * if i == 0 { 1.0 } else { 1.2 });
            out.push(Dividend {
                date: ex,
                declaration_date: Some(declared),
                record_date: Some(record),
                payment_date: Some(paid),
                period: period.to_string(),
                value,
                unadjusted_value: value,
                currency: "AUD".into(),
            });
        }
    }
    out
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Test knobs, set with `POST /_control`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Control {
    /// Added to every answer but `/_stats` and `/_control`.
    pub latency_ms: u64,
    /// Path prefix -> status answered instead of the real answer.
    pub status: BTreeMap<String, u16>,
    /// Path prefixes answered with a truncated, unparseable body.
    pub malformed: Vec<String>,
    /// Fraction (0..1) of answers replaced by 503.
    pub fail_rate: f64,
    /// Path-and-query prefix -> extra latency in milliseconds.
    pub delay_ms: BTreeMap<String, u64>,
    /// Path-and-query prefixes answered with an HTML page instead of the real body.
    pub not_pdf: Vec<String>,
    /// Path-and-query prefixes answered with a 4 MiB body (still starting with %PDF-).
    pub oversize: Vec<String>,
    /// Path-and-query prefixes answered with the full length announced but only half the body
    /// sent before the connection is cut.
    pub half_answer: Vec<String>,
    /// Path-and-query prefixes whose connection is dropped without any answer.
    pub reset: Vec<String>,
    /// Path-and-query prefix -> a URL answered as a redirect (302 Found) to it.
    pub redirect: BTreeMap<String, String>,
    /// Path-and-query prefix -> how many of the next requests are answered 503 with
    /// `Retry-After: 1` (an upstream shedding load and saying when to come back).
    pub busy: BTreeMap<String, u32>,
}

struct Shared {
    control: Control,
    by_path: BTreeMap<String, u64>,
    by_request: BTreeMap<String, u64>,
    total: u64,
    in_flight: u64,
    max_in_flight: u64,
    log: Vec<Logged>,
    started: std::time::Instant,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            control: Control::default(),
            by_path: BTreeMap::new(),
            by_request: BTreeMap::new(),
            total: 0,
            in_flight: 0,
            max_in_flight: 0,
            log: Vec::new(),
            started: std::time::Instant::now(),
        }
    }
}

/// One request in the log: when it arrived and when its answer was done (ms since the server
/// started; not done while it is still being answered), its path, and the W3C `traceparent` it
/// carried (the trace it belongs to).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Logged {
    pub at_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_ms: Option<f64>,
    /// The request's number, in arrival order.
    #[serde(default)]
    pub seq: u64,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// Requests kept in the log at most.
const LOG_LIMIT: usize = 20_000;

/// Counts a request as in flight until dropped, and then logs when it was done.
struct InFlightGuard(AppState, u64);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if let Ok(mut s) = self.0 .0.lock() {
            s.in_flight -= 1;
            let end = s.started.elapsed().as_secs_f64() * 1000.0;
            if let Some(entry) = s.log.iter_mut().rev().find(|l| l.seq == self.1) {
                entry.end_ms = Some(end);
            }
        }
    }
}

/// Request counts, as `GET /_stats` answers them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Path (without query) -> requests.
    pub by_path: BTreeMap<String, u64>,
    /// Path and query -> requests.
    pub by_request: BTreeMap<String, u64>,
    pub total: u64,
    /// Most requests being answered at once since the last reset.
    pub max_in_flight: u64,
    /// Arrival times of the requests (the latest 20,000).
    pub log: Vec<Logged>,
}

#[derive(Clone, Default)]
pub struct AppState(Arc<Mutex<Shared>>);

pub fn router(control: Control) -> Router {
    let state = AppState::default();
    state.0.lock().expect("state lock").control = control;
    Router::new().fallback(handle).with_state(state)
}

async fn handle(State(state): State<AppState>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let method = req.method().clone();
    let traceparent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_default();

    match (method.clone(), path.as_str()) {
        (Method::GET, "/_stats") => {
            let s = state.0.lock().expect("state lock");
            let stats = Stats {
                by_path: s.by_path.clone(),
                by_request: s.by_request.clone(),
                total: s.total,
                max_in_flight: s.max_in_flight,
                log: s.log.clone(),
            };
            return json(StatusCode::OK, &stats);
        }
        (Method::POST, "/_stats/reset") => {
            let mut s = state.0.lock().expect("state lock");
            s.by_path.clear();
            s.by_request.clear();
            s.total = 0;
            s.max_in_flight = s.in_flight;
            s.log.clear();
            return StatusCode::NO_CONTENT.into_response();
        }
        (Method::POST, "/_control") => return set_control(&state, &body),
        (Method::GET, "/_control") => {
            let s = state.0.lock().expect("state lock");
            return json(StatusCode::OK, &s.control);
        }
        _ => {}
    }

    let full = if query.is_empty() {
        path.clone()
    } else {
        format!("{path}?{query}")
    };
    let control = {
        let mut s = state.0.lock().expect("state lock");
        *s.by_path.entry(path.clone()).or_default() += 1;
        *s.by_request.entry(full.clone()).or_default() += 1;
        s.total += 1;
        s.in_flight += 1;
        s.max_in_flight = s.max_in_flight.max(s.in_flight);
        let at_ms = s.started.elapsed().as_secs_f64() * 1000.0;
        if s.log.len() >= LOG_LIMIT {
            s.log.remove(0);
        }
        let seq = s.total;
        let busy = match s
            .control
            .busy
            .iter_mut()
            .find(|(p, n)| full.starts_with(p.as_str()) && **n > 0)
        {
            Some((_, n)) => {
                *n -= 1;
                true
            }
            None => false,
        };
        s.log.push(Logged {
            at_ms,
            end_ms: None,
            seq,
            path: full.clone(),
            traceparent,
        });
        (s.control.clone(), seq, busy)
    };
    let (control, seq, busy) = control;
    let _in_flight = InFlightGuard(state.clone(), seq);
    let hit = |prefix: &String| full.starts_with(prefix.as_str());
    let extra: u64 = control
        .delay_ms
        .iter()
        .filter(|(p, _)| hit(p))
        .map(|(_, ms)| ms)
        .sum();
    if control.latency_ms + extra > 0 {
        tokio::time::sleep(Duration::from_millis(control.latency_ms + extra)).await;
    }
    if control.reset.iter().any(hit) {
        // Ends this connection's task: the socket closes with no answer written. Unwinding
        // without the panic hook keeps the log quiet; the server goes on serving others.
        std::panic::resume_unwind(Box::new(
            "connection dropped by the sample exchange's control",
        ));
    }
    if busy {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "busy: come back in a second",
        )
            .into_response();
    }
    if let Some((_, location)) = control.redirect.iter().find(|(p, _)| hit(p)) {
        return (StatusCode::FOUND, [(header::LOCATION, location.as_str())]).into_response();
    }
    if let Some((_, code)) = control.status.iter().find(|(p, _)| hit(p)) {
        let code = StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (code, "forced status from the sample exchange's control").into_response();
    }
    if control.not_pdf.iter().any(hit) {
        let page = "<html><body>Terms and conditions</body></html>";
        return (StatusCode::OK, [(header::CONTENT_TYPE, "text/html")], page).into_response();
    }
    if control.oversize.iter().any(hit) {
        let mut body = b"%PDF-1.4\n".to_vec();
        body.resize(4 << 20, b' ');
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/pdf")],
            body,
        )
            .into_response();
    }
    if control.fail_rate > 0.0 && rand::random::<f64>() < control.fail_rate {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "random failure from the sample exchange",
        )
            .into_response();
    }
    if method != Method::GET {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let params: HashMap<String, String> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut resp = route(&path, &params, Utc::now().date_naive());
    if control.malformed.iter().any(hit) {
        resp.1.truncate(resp.1.len() / 2);
    }
    let (status, body, content_type) = resp;
    if control.half_answer.iter().any(hit) {
        let full_length = body.len();
        let half = Bytes::from(body[..full_length / 2].to_vec());
        let cut = std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "cut");
        let chunks = futures::stream::iter([Ok(half), Err(cut)]);
        return Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CONTENT_LENGTH, full_length)
            .body(axum::body::Body::from_stream(chunks))
            .unwrap_or_default();
    }
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

fn set_control(state: &AppState, body: &Bytes) -> Response {
    match serde_json::from_slice::<Control>(body) {
        Ok(c) => {
            state.0.lock().expect("state lock").control = c.clone();
            json(StatusCode::OK, &c)
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("control body: {e}")).into_response(),
    }
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(value).unwrap_or_default(),
    )
        .into_response()
}

/// The real upstream routes: (status, body, content type).
pub fn route(
    path: &str,
    params: &HashMap<String, String>,
    today: NaiveDate,
) -> (StatusCode, Vec<u8>, &'static str) {
    const HTML: &str = "text/html; charset=utf-8";
    const JSON: &str = "application/json";
    let not_found = (
        StatusCode::NOT_FOUND,
        b"{\"errors\":[{\"message\":\"Not found\"}]}".to_vec(),
        JSON,
    );
    match path {
        "/asx/v2/statistics/announcements.do" => {
            let code = params.get("asxCode").cloned().unwrap_or_default();
            let year = params
                .get("year")
                .and_then(|y| y.parse().ok())
                .unwrap_or(today.year());
            (
                StatusCode::OK,
                listing_html(&code, year, today).into_bytes(),
                HTML,
            )
        }
        "/asx/v2/statistics/displayAnnouncement.do" => {
            match params.get("idsId").and_then(|k| by_key(k, today)) {
                Some(a) => (
                    StatusCode::OK,
                    pdf(&format!("{} {}", a.headline, a.date)),
                    "application/pdf",
                ),
                None => (
                    StatusCode::NOT_FOUND,
                    b"<html><body>Announcement not found</body></html>".to_vec(),
                    HTML,
                ),
            }
        }
        p if p.starts_with("/asx-research/1.0/companies/") && p.ends_with("/announcements") => {
            let code = p
                .trim_start_matches("/asx-research/1.0/companies/")
                .trim_end_matches("/announcements");
            match company(code) {
                None => not_found,
                Some(c) => {
                    let items: Vec<serde_json::Value> = (0..YEARS)
                        .flat_map(|i| announcements(&c.code, today.year() - i, today))
                        .map(|a| {
                            serde_json::json!({
                                "documentKey": format!("2924-{}-3A{}", a.key, &a.key[4..]),
                                "date": format!("{}T08:30:00.000Z", a.date),
                                "headline": a.headline,
                                "announcementType": "",
                                "isPriceSensitive": a.price_sensitive,
                                "fileSize": a.size,
                            })
                        })
                        .collect();
                    let body = serde_json::json!({
                        "data": { "displayName": c.name, "symbol": c.code, "items": items }
                    });
                    (StatusCode::OK, body.to_string().into_bytes(), JSON)
                }
            }
        }
        p if p.starts_with("/api/eod/") => {
            let symbol = p.trim_start_matches("/api/eod/");
            let code = symbol.split('.').next().unwrap_or_default();
            if company(code).is_none() {
                return not_found;
            }
            let from = params
                .get("from")
                .and_then(|f| NaiveDate::parse_from_str(f, "%Y-%m-%d").ok())
                .unwrap_or(NaiveDate::MIN);
            let body = serde_json::to_vec(&bars(code, from, today)).unwrap_or_default();
            (StatusCode::OK, body, JSON)
        }
        p if p.starts_with("/api/div/") => {
            let symbol = p.trim_start_matches("/api/div/");
            let code = symbol.split('.').next().unwrap_or_default();
            if company(code).is_none() {
                return not_found;
            }
            let from = params
                .get("from")
                .and_then(|f| NaiveDate::parse_from_str(f, "%Y-%m-%d").ok())
                .unwrap_or(NaiveDate::MIN);
            let body = serde_json::to_vec(&dividends(code, from, today)).unwrap_or_default();
            (StatusCode::OK, body, JSON)
        }
        _ => (StatusCode::NOT_FOUND, b"not found".to_vec(), "text/plain"),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The listing page for a code and year, in the real page's layout.
pub fn listing_html(code: &str, year: i32, today: NaiveDate) -> String {
    let mut rows = String::new();
    for a in announcements(code, year, today) {
        let ps = if a.price_sensitive {
            r#"<img src="/images/icon-price-sensitive.svg" class="pricesens" alt="asterix" title="price sensitive">"#
        } else {
            ""
        };
        rows.push_str(&format!(
            "<tr>\n<td>{}<br><span class=\"dates-time\">8:30 am</span></td>\n<td class=\"pricesens\">{ps}</td>\n\
             <td><a href=\"/asx/v2/statistics/displayAnnouncement.do?display=pdf&amp;idsId={}\" target=\"_blank\">\n\
             {}<br><span class=\"page\">12 pages</span><span class=\"filesize\">{}</span></a></td>\n</tr>\n",
            a.date.format("%d/%m/%Y"),
            a.key,
            escape(&a.headline),
            a.size
        ));
    }
    let name = company(code).map(|c| c.name).unwrap_or_default();
    format!(
        "<!DOCTYPE html>\n<html><head><title>ASX Announcements (sample exchange)</title></head><body>\n\
         <h2>{} {}</h2>\n<announcement_data>\n<table>\n<thead><tr><th>Date</th><th>Price sens.</th>\
         <th>Headline</th></tr></thead>\n<tbody>\n{rows}</tbody>\n</table>\n</announcement_data>\n</body></html>\n",
        escape(&code.to_uppercase()),
        escape(&name)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_resolve() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 28).unwrap();
        let mut seen = std::collections::HashSet::new();
        for c in NAMED.iter().map(|n| n.0).chain(["S0000", "S0042", "S9999"]) {
            for y in 2023..=2026 {
                for a in announcements(c, y, today) {
                    assert!(seen.insert(a.key.clone()), "duplicate key {}", a.key);
                    assert_eq!(by_key(&a.key, today).unwrap().headline, a.headline);
                    assert!(a.headline.starts_with("[SAMPLE]"));
                }
            }
        }
        assert!(announcements("QUIET", 2026, today).is_empty());
        assert!(announcements("NOPE", 2026, today).is_empty());
    }

    #[test]
    fn pdf_is_well_formed() {
        let p = pdf("hello (world)");
        assert!(p.starts_with(b"%PDF-1.4"));
        assert!(p.ends_with(b"%%EOF\n"));
        let text = String::from_utf8(p).unwrap();
        let xref: usize = text.lines().rev().nth(1).unwrap().parse().unwrap();
        assert!(text[xref..].starts_with("xref"));
    }
}
