//! Answers: a document's result for each position that asked for it, freshness and
//! stale-while-revalidate judged against the caller's window.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use documents_api::{DocumentResult, ItemError, Outcome};
use documents_store::{DocumentHead, SourceKey};

use super::{fill::FillResult, request::Request};

/// The results for every position `indices` of the request that asked for document `key`.
pub(super) fn answer_all(
    identifiers: &[String],
    indices: Vec<usize>,
    key: &SourceKey,
    req: Request,
    filled: &FillResult,
    previous: Option<&DocumentHead>,
    now: DateTime<Utc>,
) -> Vec<DocumentResult> {
    indices
        .into_iter()
        .map(|i| answer(&identifiers[i], i, key, req, filled, previous, now))
        .collect()
}

/// The result for one identifier from its document's fill (or hit).
pub(super) fn answer(
    identifier: &str,
    index: usize,
    key: &SourceKey,
    req: Request,
    filled: &FillResult,
    previous: Option<&DocumentHead>,
    now: DateTime<Utc>,
) -> DocumentResult {
    let kind = req.kind.as_str();
    let sid = key.source_id();
    let ok = |head: &DocumentHead, outcome: Outcome, error: Option<ItemError>| DocumentResult {
        identifier: identifier.to_string(),
        source_id: sid.clone(),
        kind: kind.to_string(),
        document_id: head.id.clone(),
        tags: head.tags.clone(),
        fresh: outcome == Outcome::Hit,
        created: matches!(outcome, Outcome::Created | Outcome::Refreshed),
        version: head.version,
        last_synced: Some(head.last_synced),
        outcome,
        error,
        index: index as u32,
        refreshing: false,
    };
    match filled {
        Ok(f) => ok(&f.head, f.outcome, None),
        Err(e) => match (previous, req.stale_if_error_hours) {
            (Some(h), Some(max)) if now - h.last_synced <= ChronoDuration::hours(i64::from(max)) => {
                ok(h, Outcome::Stale, Some(e.clone()))
            }
            (Some(h), Some(max)) => DocumentResult {
                index: index as u32,
                ..DocumentResult::failed(
                    identifier,
                    kind,
                    sid.clone(),
                    ItemError {
                        message: format!(
                            "{}; the stored version is {} old, more than options.stale_if_error_hours ({max} h) accepts",
                            e.message,
                            age_text(now - h.last_synced)
                        ),
                        ..e.clone()
                    },
                )
            },
            _ => DocumentResult {
                index: index as u32,
                ..DocumentResult::failed(identifier, kind, sid.clone(), e.clone())
            },
        },
    }
}

/// An age for messages: minutes under two hours, hours above.
pub(super) fn age_text(age: ChronoDuration) -> String {
    match age.num_minutes() {
        m if m < 120 => format!("{m} min"),
        _ => format!("{} h", age.num_hours()),
    }
}

/// Stale-while-revalidate applies: not forced, and the document at most
/// `stale_while_revalidate_hours` past the caller's window.
pub(super) fn may_revalidate(head: &DocumentHead, now: DateTime<Utc>, req: Request) -> bool {
    let Some(extra) = req.stale_while_revalidate_hours else {
        return false;
    };
    !req.force_refresh
        && req.cache_hours > 0
        && now - head.last_synced
            <= ChronoDuration::hours(i64::from(req.cache_hours) + i64::from(extra))
}

pub(super) fn is_fresh(head: &DocumentHead, now: DateTime<Utc>, req: Request) -> bool {
    !req.force_refresh
        && !head.invalidated
        && req.cache_hours > 0
        && now - head.last_synced < ChronoDuration::hours(i64::from(req.cache_hours))
}
