//! The history checker: what a randomized workload recorded (every call with its start, end,
//! options and answer or code; every delete, aging and purge made beside the services, with the
//! times just before and after its statement; every row version the database stored, from an
//! audit trigger the test installs on its own database; every upstream request, from the sample
//! exchange's log; the faults injected; the consumers' PDF downloads), and the promises it is
//! checked against (README "Guarantees"):
//!
//! 1. one document ID per source key, unless that document was deleted;
//! 2. no version lower than one answered by a call that ended more than the bound before;
//! 3. no hit of a version whose stored row, at any moment from the bound before the call to its
//!    end, was older than the caller's window, purged, or another version;
//! 4. no deleted document answered after the delete plus the bound, and no content fetched before
//!    a purge answered after the purge plus the bound;
//! 5. one upstream fetch per fill: two fetches of one document at once are a duplicate fill;
//! 6. errors within a cap per code;
//! 7. the faults happened (a run where nothing was frozen or killed proves nothing);
//! 8. each PDF downloaded once per ticker, but one per consumer pause (the PDF in flight);
//! 9. no watcher (WatchDocuments) sees a document's version go backwards, and every watcher ends
//!    the run knowing each watched document as the database had it within the bound before.
//!
//! (The invariant checker runs at the end too; the workload's test calls it.)

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Duration as ChronoDuration, Utc};

/// One call to a provider.
#[derive(Debug, Clone)]
pub struct CallRecord {
    pub replica: usize,
    pub kind: String,
    pub source_id: String,
    pub cache_hours: u32,
    pub force: bool,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// The answer, or the gRPC code's name.
    pub result: Result<Answer, String>,
}

/// What a call was answered.
#[derive(Debug, Clone)]
pub struct Answer {
    pub id: String,
    pub version: i64,
    /// `Hit`, `Created`, `Refreshed`, `Stale`.
    pub outcome: String,
}

/// A change made beside the services, with the times just before and after its statement.
#[derive(Debug, Clone)]
pub struct Outside {
    pub what: &'static str,
    pub source_id: String,
    pub before: DateTime<Utc>,
    pub after: DateTime<Utc>,
}

/// One row version as the database stored it (the audit trigger's row).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditRow {
    pub seq: i64,
    /// `I`, `U` or `D`.
    pub op: String,
    pub id: String,
    pub source_type: String,
    pub source_id: String,
    pub version: i64,
    pub last_synced: DateTime<Utc>,
    pub invalidated_at: Option<DateTime<Utc>>,
    pub at: DateTime<Utc>,
}

/// One upstream request: the document it fetches, when it began and ended (the exchange's
/// clock, ms; no end while it was still being answered), and the trace it carried (the call
/// whose fill made it).
#[derive(Debug, Clone)]
pub struct Fetch {
    pub document: String,
    pub at_ms: f64,
    pub end_ms: Option<f64>,
    pub trace: Option<String>,
}

/// The faults a run injected, as they happened.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Change-feed backends frozen (SIGSTOP).
    pub frozen: usize,
    /// Database connections terminated.
    pub terminated: usize,
    /// Provider replicas SIGKILLed.
    pub killed: usize,
    /// Consumers paused (SIGSTOP) past their round lease.
    pub consumers_paused: usize,
    /// Which of these the run must have had.
    pub expected: Vec<&'static str>,
}

/// What one watcher was told, in order, resuming with `since` after every end.
#[derive(Debug, Clone, Default)]
pub struct WatchRecord {
    /// The replica it watched (its address).
    pub replica: String,
    /// The source IDs watched.
    pub watched: Vec<String>,
    /// (source ID, document ID, version, event type) as told.
    pub events: Vec<(String, String, i64, String)>,
    /// When it stopped watching.
    pub stopped: DateTime<Utc>,
}

/// Everything a run recorded.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub calls: Vec<CallRecord>,
    pub outside: Vec<Outside>,
    pub audit: Vec<AuditRow>,
    pub fetches: Vec<Fetch>,
    pub faults: Faults,
    /// PDF path and query -> requests, from the exchange.
    pub pdfs: BTreeMap<String, u64>,
    /// Consumer rounds run, and how many failed.
    pub rounds: (usize, usize),
    /// What the watchers were told.
    pub watches: Vec<WatchRecord>,
}

/// The bound on staleness across replicas (README "Guarantees").
pub const BOUND: ChronoDuration = ChronoDuration::seconds(1);

/// The codes a run may see, and the share of calls each may take at most; any other is a
/// violation.
pub const ERROR_CAPS: [(&str, f64); 3] = [
    // The faults: a database dropping connections, a replica killed mid-call.
    ("Unavailable", 0.15),
    ("DeadlineExceeded", 0.02),
    ("Cancelled", 0.01),
];

impl History {
    /// Every violation found, one line each (empty: the run kept every promise).
    pub fn check(&self) -> Vec<String> {
        let mut v = Vec::new();
        self.one_id_per_key(&mut v);
        self.no_version_backwards(&mut v);
        self.hits_by_the_rows_history(&mut v);
        self.nothing_deleted_or_purged_answered(&mut v);
        self.one_fetch_per_fill(&mut v);
        self.errors_within_caps(&mut v);
        self.faults_happened(&mut v);
        self.pdfs_once(&mut v);
        self.watchers_go_forward_and_end_current(&mut v);
        v
    }

    fn answered(&self) -> impl Iterator<Item = (&CallRecord, &Answer)> {
        self.calls
            .iter()
            .filter_map(|c| c.result.as_ref().ok().map(|a| (c, a)))
    }

    fn deleted_ids(&self) -> BTreeMap<&str, DateTime<Utc>> {
        self.audit
            .iter()
            .filter(|r| r.op == "D")
            .map(|r| (r.id.as_str(), r.at))
            .collect()
    }

    fn one_id_per_key(&self, v: &mut Vec<String>) {
        let deleted = self.deleted_ids();
        let mut ids: BTreeMap<(&str, &str), BTreeSet<&str>> = BTreeMap::new();
        for (c, a) in self.answered() {
            ids.entry((c.kind.as_str(), c.source_id.as_str()))
                .or_default()
                .insert(a.id.as_str());
        }
        for (key, set) in ids {
            let live: Vec<_> = set.iter().filter(|id| !deleted.contains_key(*id)).collect();
            if live.len() > 1 {
                v.push(format!("{key:?} answered with IDs {live:?}, none deleted"));
            }
        }
    }

    fn no_version_backwards(&self, v: &mut Vec<String>) {
        let mut by_id: HashMap<&str, Vec<(&CallRecord, &Answer)>> = HashMap::new();
        for (c, a) in self.answered() {
            by_id.entry(a.id.as_str()).or_default().push((c, a));
        }
        for (id, list) in by_id {
            // The highest version answered by a call that ended before each moment.
            let mut ended: Vec<(DateTime<Utc>, i64)> =
                list.iter().map(|(c, a)| (c.end, a.version)).collect();
            ended.sort();
            for (c, a) in &list {
                let seen = ended
                    .iter()
                    .take_while(|(end, _)| *end + BOUND <= c.start)
                    .map(|(_, version)| *version)
                    .max();
                if let Some(seen) = seen.filter(|s| a.version < *s) {
                    v.push(format!(
                        "{id}: v{} answered by replica {} at {} after v{seen} had been answered \
                         more than {} ms before",
                        a.version,
                        c.replica,
                        c.start,
                        BOUND.num_milliseconds()
                    ));
                }
            }
        }
    }

    /// The stored states of `id` in effect at any moment of [from, to]: the last one at or
    /// before `from`, and every one after it up to `to` (within one statement, only the last).
    fn states(&self, id: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<&AuditRow> {
        let rows: Vec<&AuditRow> = self.audit.iter().filter(|r| r.id == id).collect();
        let mut states: Vec<&AuditRow> = Vec::new();
        for (i, r) in rows.iter().enumerate() {
            // A later row of the same statement (SQLite's purge guard) replaces this one.
            if rows
                .get(i + 1)
                .is_some_and(|next| next.at == r.at && next.version == r.version)
            {
                continue;
            }
            states.push(r);
        }
        let before = states.iter().rposition(|r| r.at <= from);
        states
            .into_iter()
            .enumerate()
            .filter(|(i, r)| Some(*i) == before || (r.at > from && r.at <= to))
            .map(|(_, r)| r)
            .collect()
    }

    fn hits_by_the_rows_history(&self, v: &mut Vec<String>) {
        for (c, a) in self.answered().filter(|(_, a)| a.outcome == "Hit") {
            let window = ChronoDuration::hours(i64::from(c.cache_hours));
            let states = self.states(&a.id, c.start - BOUND, c.end);
            let of_version: Vec<&&AuditRow> = states
                .iter()
                .filter(|r| r.op != "D" && r.version == a.version)
                .collect();
            if of_version.is_empty() {
                v.push(format!(
                    "{} v{}: a hit at {} of a version the row did not have then ({:?})",
                    a.id,
                    a.version,
                    c.start,
                    states
                        .iter()
                        .map(|r| (r.op.as_str(), r.version))
                        .collect::<Vec<_>>()
                ));
                continue;
            }
            if of_version.iter().all(|r| r.invalidated_at.is_some()) {
                v.push(format!(
                    "{} v{}: a hit at {} of a purged document",
                    a.id, a.version, c.start
                ));
                continue;
            }
            if of_version.iter().all(|r| c.start - r.last_synced >= window) {
                v.push(format!(
                    "{} v{}: a hit at {} older than its {}-hour window (synced {:?})",
                    a.id,
                    a.version,
                    c.start,
                    c.cache_hours,
                    of_version.iter().map(|r| r.last_synced).collect::<Vec<_>>()
                ));
            }
        }
    }

    fn nothing_deleted_or_purged_answered(&self, v: &mut Vec<String>) {
        let deleted = self.deleted_ids();
        // The state each version was written in: the statement that first stored it (its last
        // row, where a trigger of the same statement corrected it), not later agings or purges.
        let mut written: HashMap<(&str, i64), &AuditRow> = HashMap::new();
        for r in self.audit.iter().filter(|r| r.op != "D") {
            match written.get(&(r.id.as_str(), r.version)) {
                Some(first) if first.at != r.at => {}
                _ => {
                    written.insert((r.id.as_str(), r.version), r);
                }
            }
        }
        for (c, a) in self.answered() {
            if let Some(at) = deleted.get(a.id.as_str()) {
                if c.start >= *at + BOUND {
                    v.push(format!("{} answered at {}, deleted at {at}", a.id, c.start));
                }
            }
            // Written already purged: its content was fetched before the purge.
            if let Some(purge) = written
                .get(&(a.id.as_str(), a.version))
                .and_then(|r| r.invalidated_at)
            {
                if c.start >= purge + BOUND {
                    v.push(format!(
                        "{} v{}: content fetched before the purge at {purge} answered ({}) at {}",
                        a.id, a.version, a.outcome, c.start
                    ));
                }
            }
        }
    }

    fn one_fetch_per_fill(&self, v: &mut Vec<String>) {
        let mut by_doc: BTreeMap<&str, Vec<&Fetch>> = BTreeMap::new();
        for f in &self.fetches {
            by_doc.entry(f.document.as_str()).or_default().push(f);
        }
        for (doc, mut list) in by_doc {
            list.sort_by(|a, b| a.at_ms.total_cmp(&b.at_ms));
            for pair in list.windows(2) {
                let (a, b) = (pair[0], pair[1]);
                if a.end_ms.is_none_or(|end| end > b.at_ms) {
                    v.push(format!(
                        "{doc}: two fetches at once (a duplicate fill), from {:.0} ms (trace {}) \
                         and {:.0} ms (trace {})",
                        a.at_ms,
                        a.trace.as_deref().unwrap_or("-"),
                        b.at_ms,
                        b.trace.as_deref().unwrap_or("-")
                    ));
                }
            }
        }
    }

    fn errors_within_caps(&self, v: &mut Vec<String>) {
        let total = self.calls.len().max(1) as f64;
        let mut codes: BTreeMap<&str, usize> = BTreeMap::new();
        for c in &self.calls {
            if let Err(code) = &c.result {
                *codes.entry(code.as_str()).or_default() += 1;
            }
        }
        for (code, n) in codes {
            let cap = ERROR_CAPS
                .iter()
                .find(|(c, _)| *c == code)
                .map_or(0.0, |(_, cap)| *cap);
            let share = n as f64 / total;
            if share > cap {
                v.push(format!(
                    "{n} calls answered {code} ({:.1} % of {}; the cap is {:.1} %)",
                    share * 100.0,
                    self.calls.len(),
                    cap * 100.0
                ));
            }
        }
    }

    fn faults_happened(&self, v: &mut Vec<String>) {
        let f = &self.faults;
        for expected in &f.expected {
            let n = match *expected {
                "frozen" => f.frozen,
                "terminated" => f.terminated,
                "killed" => f.killed,
                "consumers_paused" => f.consumers_paused,
                "rounds" => self.rounds.0,
                "outside" => self.outside.len(),
                _ => 0,
            };
            if n == 0 {
                v.push(format!(
                    "the run had no {expected}: it proves nothing about them"
                ));
            }
        }
    }

    fn watchers_go_forward_and_end_current(&self, v: &mut Vec<String>) {
        for w in &self.watches {
            // What the watcher knows of each document: (id, version), None once deleted.
            let mut known: BTreeMap<&str, Option<(&str, i64)>> = BTreeMap::new();
            for (sid, id, version, kind) in &w.events {
                let before = known.get(sid.as_str()).copied().flatten();
                if let Some((was_id, was)) = before {
                    if was_id == id && *version < was {
                        v.push(format!(
                            "watcher of {} saw {sid} go back from v{was} to v{version} ({kind})",
                            w.replica
                        ));
                    }
                }
                let now = (kind != "EVENT_TYPE_DELETED").then_some((id.as_str(), *version));
                known.insert(sid, now);
            }
            let bound_before = w.stopped - BOUND;
            for sid in &w.watched {
                let rows: Vec<&AuditRow> = self
                    .audit
                    .iter()
                    .filter(|r| r.source_type == "announcement" && &r.source_id == sid)
                    .collect();
                // The states the database had from the bound before the stop to the stop.
                let mut acceptable: Vec<Option<(&str, i64)>> = vec![rows
                    .iter()
                    .rev()
                    .find(|r| r.at <= bound_before)
                    .and_then(|r| state_of(r))];
                acceptable.extend(
                    rows.iter()
                        .filter(|r| r.at > bound_before && r.at <= w.stopped)
                        .map(|r| state_of(r)),
                );
                let told = known.get(sid.as_str()).copied().flatten();
                if !acceptable.contains(&told) {
                    v.push(format!(
                        "watcher of {} ended the run knowing {sid} as {told:?}; the database had \
                         {acceptable:?} in the bound before it stopped",
                        w.replica
                    ));
                }
            }
        }
    }

    fn pdfs_once(&self, v: &mut Vec<String>) {
        let extra = self.faults.consumers_paused as u64;
        let twice: Vec<(&String, &u64)> = self.pdfs.iter().filter(|(_, n)| **n > 1).collect();
        let spare: u64 = twice.iter().map(|(_, n)| *n - 1).sum();
        if spare > extra {
            v.push(format!(
                "PDFs fetched more than once ({spare} extra fetches, {extra} allowed for the \
                 consumers paused mid-download): {twice:?}"
            ));
        }
    }
}

/// A document as an audited row left it: (id, version), None when the row deleted it.
fn state_of(r: &AuditRow) -> Option<(&str, i64)> {
    (r.op != "D").then_some((r.id.as_str(), r.version))
}

/// The document an upstream request fetches (`announcement X` or `market_data X`), if any.
pub fn document_of(path: &str) -> Option<String> {
    let param = |name: &str| {
        path.split(['?', '&'])
            .find_map(|kv| kv.strip_prefix(name).map(str::to_string))
    };
    if path.starts_with(crate::harness::LISTING_PATH) {
        return param("asxCode=").map(|c| format!("announcement {}", c.to_uppercase()));
    }
    if let Some(rest) = path.strip_prefix(crate::harness::MARKIT_PATH) {
        let code = rest.split("/companies/").nth(1)?.split('/').next()?;
        return Some(format!("announcement {}", code.to_uppercase()));
    }
    if let Some(rest) = path.strip_prefix(crate::harness::EOD_PATH) {
        let code = rest.split(['.', '?']).next()?;
        return Some(format!("market_data {}", code.to_uppercase()));
    }
    None
}

/// The audit trigger, installed by a test on its own database (never by a migration): every
/// insert, update and delete of a document, with the database's time of the statement.
pub async fn install_audit(url: &str) {
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await.expect("connect");
        for sql in [
            "CREATE TABLE history_audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, op TEXT NOT NULL, \
             id TEXT NOT NULL, source_type TEXT NOT NULL, source_id TEXT NOT NULL, \
             version INTEGER NOT NULL, last_synced TEXT NOT NULL, invalidated_at TEXT, \
             at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))",
            "CREATE TRIGGER history_audit_insert AFTER INSERT ON documents BEGIN \
             INSERT INTO history_audit (op, id, source_type, source_id, version, last_synced, \
             invalidated_at) VALUES ('I', NEW.id, NEW.source_type, NEW.source_id, NEW.version, \
             NEW.last_synced, NEW.invalidated_at); END",
            "CREATE TRIGGER history_audit_update AFTER UPDATE ON documents BEGIN \
             INSERT INTO history_audit (op, id, source_type, source_id, version, last_synced, \
             invalidated_at) VALUES ('U', NEW.id, NEW.source_type, NEW.source_id, NEW.version, \
             NEW.last_synced, NEW.invalidated_at); END",
            "CREATE TRIGGER history_audit_delete AFTER DELETE ON documents BEGIN \
             INSERT INTO history_audit (op, id, source_type, source_id, version, last_synced, \
             invalidated_at) VALUES ('D', OLD.id, OLD.source_type, OLD.source_id, OLD.version, \
             OLD.last_synced, OLD.invalidated_at); END",
        ] {
            sqlx::query(sql)
                .execute(&pool)
                .await
                .expect("audit trigger");
        }
    } else {
        let pool = sqlx::PgPool::connect(url).await.expect("connect");
        for sql in [
            "CREATE TABLE history_audit (seq BIGSERIAL PRIMARY KEY, op TEXT NOT NULL, \
             id TEXT NOT NULL, source_type TEXT NOT NULL, source_id TEXT NOT NULL, \
             version BIGINT NOT NULL, last_synced TIMESTAMPTZ NOT NULL, \
             invalidated_at TIMESTAMPTZ, at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())",
            "CREATE FUNCTION history_audit_row() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN \
               IF TG_OP = 'DELETE' THEN \
                 INSERT INTO history_audit (op, id, source_type, source_id, version, \
                   last_synced, invalidated_at) VALUES ('D', OLD.id, OLD.source_type, \
                   OLD.source_id, OLD.version, OLD.last_synced, OLD.invalidated_at); \
               ELSE \
                 INSERT INTO history_audit (op, id, source_type, source_id, version, \
                   last_synced, invalidated_at) VALUES (left(TG_OP, 1), NEW.id, \
                   NEW.source_type, NEW.source_id, NEW.version, NEW.last_synced, \
                   NEW.invalidated_at); \
               END IF; \
               RETURN NULL; \
             END $$",
            "CREATE TRIGGER history_audit AFTER INSERT OR UPDATE OR DELETE ON documents \
             FOR EACH ROW EXECUTE FUNCTION history_audit_row()",
        ] {
            sqlx::query(sql)
                .execute(&pool)
                .await
                .expect("audit trigger");
        }
    }
}

/// Every audit row, in order.
pub async fn read_audit(url: &str) -> Vec<AuditRow> {
    let sql = "SELECT seq, op, id, source_type, source_id, version, last_synced, invalidated_at, \
               at FROM history_audit ORDER BY seq";
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await.expect("connect");
        sqlx::query_as(sql)
            .fetch_all(&pool)
            .await
            .expect("audit rows")
    } else {
        let pool = sqlx::PgPool::connect(url).await.expect("connect");
        sqlx::query_as(sql)
            .fetch_all(&pool)
            .await
            .expect("audit rows")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp_millis(1_800_000_000_000 + ms).unwrap()
    }

    fn call(start: i64, end: i64, id: &str, version: i64, outcome: &str) -> CallRecord {
        CallRecord {
            replica: 0,
            kind: "announcement".into(),
            source_id: "ASX:GNP:announcement".into(),
            cache_hours: 24,
            force: false,
            start: t(start),
            end: t(end),
            result: Ok(Answer {
                id: id.into(),
                version,
                outcome: outcome.into(),
            }),
        }
    }

    fn row(
        seq: i64,
        op: &str,
        version: i64,
        synced: i64,
        purged: Option<i64>,
        at: i64,
    ) -> AuditRow {
        AuditRow {
            seq,
            op: op.into(),
            id: "d1".into(),
            source_type: "announcement".into(),
            source_id: "ASX:GNP:announcement".into(),
            version,
            last_synced: t(synced),
            invalidated_at: purged.map(t),
            at: t(at),
        }
    }

    /// A history that keeps every promise: one write, hits of it.
    fn sound() -> History {
        History {
            calls: vec![
                call(0, 10, "d1", 1, "Created"),
                call(20, 21, "d1", 1, "Hit"),
            ],
            audit: vec![row(1, "I", 1, 5, None, 5)],
            faults: Faults::default(),
            ..History::default()
        }
    }

    fn watcher(events: &[(i64, &str)], stopped: i64) -> WatchRecord {
        WatchRecord {
            replica: "r".into(),
            watched: vec!["ASX:GNP:announcement".into()],
            events: events
                .iter()
                .map(|(v, kind)| {
                    (
                        "ASX:GNP:announcement".into(),
                        "d1".into(),
                        *v,
                        kind.to_string(),
                    )
                })
                .collect(),
            stopped: t(stopped),
        }
    }

    #[test]
    fn a_watcher_that_goes_back_or_ends_behind_is_found() {
        let mut h = sound();
        h.audit.push(row(2, "U", 2, 3_000, None, 3_000));
        h.watches = vec![watcher(
            &[(1, "EVENT_TYPE_CURRENT"), (2, "EVENT_TYPE_REFRESHED")],
            10_000,
        )];
        assert_eq!(h.check(), Vec::<String>::new(), "current and forward");
        h.watches = vec![watcher(
            &[(2, "EVENT_TYPE_REFRESHED"), (1, "EVENT_TYPE_REFRESHED")],
            10_000,
        )];
        let v = h.check();
        assert!(v.iter().any(|l| l.contains("go back")), "{v:?}");
        assert!(v.iter().any(|l| l.contains("ended the run")), "{v:?}");
        // Told v1 only, though v2 was written 7 s before it stopped.
        h.watches = vec![watcher(&[(1, "EVENT_TYPE_CURRENT")], 10_000)];
        let v = h.check();
        assert!(v.iter().any(|l| l.contains("ended the run")), "{v:?}");
        // Within the bound, the older state is still acceptable.
        h.watches = vec![watcher(&[(1, "EVENT_TYPE_CURRENT")], 3_500)];
        assert_eq!(h.check(), Vec::<String>::new());
    }

    #[test]
    fn a_sound_history_passes() {
        assert_eq!(sound().check(), Vec::<String>::new());
    }

    /// Each check finds what it is for: the checker can fail.
    #[test]
    fn each_promise_broken_is_found() {
        let mut h = sound();
        h.calls.push(call(30, 31, "d2", 1, "Created"));
        assert!(h.check().iter().any(|v| v.contains("answered with IDs")));

        let mut h = sound();
        h.audit.push(row(2, "U", 2, 3000, None, 3000));
        h.calls.push(call(3000, 3010, "d1", 2, "Refreshed"));
        h.calls.push(call(5000, 5001, "d1", 1, "Hit"));
        assert!(
            h.check()
                .iter()
                .any(|v| v.contains("v1 answered by replica")),
            "{:?}",
            h.check()
        );

        let mut h = sound();
        // Aged by hand two days back, then a hit with a one-day window well after.
        h.audit.push(row(2, "U", 1, -172_800_000, None, 100));
        h.calls.push(call(5000, 5001, "d1", 1, "Hit"));
        assert!(h
            .check()
            .iter()
            .any(|v| v.contains("older than its 24-hour window")));

        let mut h = sound();
        h.audit.push(row(2, "U", 1, 5, Some(100), 100));
        h.calls.push(call(5000, 5001, "d1", 1, "Hit"));
        assert!(h
            .check()
            .iter()
            .any(|v| v.contains("hit at") && v.contains("purged")));

        let mut h = sound();
        h.audit.push(row(2, "D", 1, 5, None, 100));
        h.calls.push(call(5000, 5001, "d1", 1, "Hit"));
        assert!(h.check().iter().any(|v| v.contains("deleted at")));

        let mut h = sound();
        // Version 2 written still purged (fetched before the purge at 100), answered after.
        h.audit.push(row(2, "U", 2, 200, Some(100), 200));
        h.calls.push(call(1500, 1600, "d1", 2, "Refreshed"));
        assert!(h
            .check()
            .iter()
            .any(|v| v.contains("fetched before the purge")));

        let mut h = sound();
        h.fetches = vec![
            Fetch {
                document: "announcement GNP".into(),
                at_ms: 0.0,
                end_ms: Some(300.0),
                trace: None,
            },
            Fetch {
                document: "announcement GNP".into(),
                at_ms: 100.0,
                end_ms: Some(400.0),
                trace: None,
            },
        ];
        assert!(h.check().iter().any(|v| v.contains("duplicate fill")));

        let mut h = sound();
        for i in 0..10 {
            let mut c = call(100 + i, 101 + i, "d1", 1, "Hit");
            c.result = Err("Internal".into());
            h.calls.push(c);
        }
        assert!(h.check().iter().any(|v| v.contains("answered Internal")));

        let mut h = sound();
        h.faults.expected = vec!["killed"];
        assert!(h.check().iter().any(|v| v.contains("no killed")));

        let mut h = sound();
        h.pdfs = [("/pdf?idsId=1".to_string(), 2)].into();
        assert!(h
            .check()
            .iter()
            .any(|v| v.contains("PDFs fetched more than once")));
        h.faults.consumers_paused = 1;
        assert!(!h.check().iter().any(|v| v.contains("PDFs")));
    }

    #[test]
    fn upstream_paths_name_their_document() {
        assert_eq!(
            document_of(
                "/asx/v2/statistics/announcements.do?by=asxCode&asxCode=GNP&timeframe=Y&year=2026"
            )
            .as_deref(),
            Some("announcement GNP")
        );
        assert_eq!(
            document_of("/asx-research/1.0/companies/gnp/announcements?count=500").as_deref(),
            Some("announcement GNP")
        );
        assert_eq!(
            document_of("/api/eod/BHP.AU?fmt=json&from=2025-01-01").as_deref(),
            Some("market_data BHP")
        );
        assert_eq!(
            document_of("/asx/v2/statistics/displayAnnouncement.do?idsId=1"),
            None
        );
    }
}
