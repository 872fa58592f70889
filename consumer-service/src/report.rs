//! Printing outcomes for the one-shot CLI: a human-readable summary, or JSON lines.

use crate::job::{Item, TickerOutcome};

/// An outcome as one JSON line (the CLI's `--json`).
pub fn json(o: &TickerOutcome) -> String {
    let items = |v: &[Item]| -> Vec<serde_json::Value> {
        v.iter()
            .map(|i| {
                serde_json::json!({
                    "document_key": i.document_key, "headline": i.headline, "date": i.date,
                    "attachment_hash": i.attachment_hash, "error": i.error,
                })
            })
            .collect()
    };
    serde_json::json!({
        "ticker": o.ticker,
        "outcome": o.provider_result.as_ref().map(|p| outcome_name(p.outcome)),
        "document_id": o.document_id,
        "version_read": o.version_read,
        "newer_version_read": o.newer_version_read,
        "matched": items(&o.matched),
        "downloaded": items(&o.downloaded),
        "skipped": items(&o.skipped),
        "failed": items(&o.failed),
        "download_document_id": o.download_document_id,
        "error": o.error.as_ref().map(|e| serde_json::json!({"code": e.code as i32, "message": e.message})),
    })
    .to_string()
}

/// The outcome's name on the wire (`OUTCOME_HIT`), as the JSON lines have always printed it.
fn outcome_name(o: documents_api::Outcome) -> String {
    format!("OUTCOME_{}", o.as_str().to_uppercase())
}

/// An outcome as a few human-readable lines (the CLI's default).
pub fn text(o: &TickerOutcome) -> String {
    if let Some(e) = &o.error {
        return format!("{}: FAILED ({:?}): {}", o.ticker, e.code, e.message);
    }
    let outcome = o
        .provider_result
        .as_ref()
        .map(|p| p.outcome.as_str())
        .unwrap_or_default();
    let mut s = format!(
        "{}: provider {outcome}, document {} v{}{}; {} matched, {} downloaded, {} already stored, {} failed",
        o.ticker,
        o.document_id,
        o.version_read,
        if o.newer_version_read { " (newer than answered)" } else { "" },
        o.matched.len(),
        o.downloaded.len(),
        o.skipped.len(),
        o.failed.len()
    );
    for i in &o.failed {
        s.push_str(&format!(
            "\n  failed {} {}: {}",
            i.date, i.headline, i.error
        ));
    }
    s
}
