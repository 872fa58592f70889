//! Printing reports for the one-shot CLI: a human-readable summary, or JSON lines.

use documents_api::proto::consumer::v1 as pb;
use tonic::Code;

/// A report as one JSON line (the CLI's `--json`).
pub fn json(r: &pb::TickerReport) -> String {
    let items = |v: &[pb::AnnouncementItem]| -> Vec<serde_json::Value> {
        v.iter()
            .map(|i| {
                serde_json::json!({
                    "document_key": i.document_key, "headline": i.headline, "date": i.date,
                    "attachment_hash": i.attachment_hash, "error": i.error,
                })
            })
            .collect()
    };
    let provider = r.provider_result.as_ref();
    serde_json::json!({
        "ticker": r.ticker,
        "outcome": provider.map(|p| p.outcome().as_str_name()),
        "document_id": r.document_id,
        "version_read": r.version_read,
        "newer_version_read": r.newer_version_read,
        "matched": items(&r.matched),
        "downloaded": items(&r.downloaded),
        "skipped": items(&r.skipped),
        "failed": items(&r.failed),
        "download_document_id": r.download_document_id,
        "error": r.status.as_ref().map(|e| serde_json::json!({"code": e.code, "message": e.message})),
    })
    .to_string()
}

/// A report as a few human-readable lines (the CLI's default).
pub fn text(r: &pb::TickerReport) -> String {
    if let Some(e) = &r.status {
        return format!(
            "{}: FAILED ({:?}): {}",
            r.ticker,
            Code::from_i32(e.code),
            e.message
        );
    }
    let outcome = r
        .provider_result
        .as_ref()
        .map(|p| {
            p.outcome()
                .as_str_name()
                .trim_start_matches("OUTCOME_")
                .to_lowercase()
        })
        .unwrap_or_default();
    let mut s = format!(
        "{}: provider {outcome}, document {} v{}{}; {} matched, {} downloaded, {} already stored, {} failed",
        r.ticker,
        r.document_id,
        r.version_read,
        if r.newer_version_read { " (newer than answered)" } else { "" },
        r.matched.len(),
        r.downloaded.len(),
        r.skipped.len(),
        r.failed.len()
    );
    for i in &r.failed {
        s.push_str(&format!(
            "\n  failed {} {}: {}",
            i.date, i.headline, i.error
        ));
    }
    s
}
