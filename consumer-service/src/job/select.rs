//! Selection: reads the announcements out of the provider's document and keeps those a filter
//! matches (whole words of the headline or type, ignoring case), up to the round's maximum;
//! then tells the ones already stored from the ones to download.

use std::collections::HashMap;

use documents_api::ItemError;
use documents_store::StoredDocument;
use serde::Deserialize;
use tonic::Code;

use super::outcome::Item;

/// The announcement JSON layout this consumer understands.
const ANNOUNCEMENT_SCHEMA_VERSION: u64 = 1;

/// The part of an announcement the consumer reads (the provider's JSON has more).
#[derive(Debug, Clone, Deserialize)]
struct Announcement {
    date: String,
    headline: String,
    #[serde(rename = "type", default)]
    kind: String,
    pdf_url: String,
    document_key: String,
}

/// The announcements of `doc` that match one of `filters`, at most `max`, in document order.
pub(super) fn matching(
    doc: &StoredDocument,
    filters: &[String],
    max: usize,
) -> Result<Vec<Item>, ItemError> {
    Ok(announcements(doc)?
        .into_iter()
        .filter(|a| {
            filters
                .iter()
                .any(|f| matches_filter(f, &a.headline, &a.kind))
        })
        .take(max)
        .map(|a| Item {
            document_key: a.document_key,
            headline: a.headline,
            date: a.date,
            pdf_url: a.pdf_url,
            ..Item::default()
        })
        .collect())
}

/// Splits `matched` into those already stored (`stored`: attachment name to hash), with their
/// hash, and those to download.
pub(super) fn split_stored(
    matched: &[Item],
    stored: &HashMap<String, String>,
) -> (Vec<Item>, Vec<Item>) {
    let mut skipped = Vec::new();
    let mut to_fetch = Vec::new();
    for item in matched {
        match stored.get(&item.document_key) {
            Some(hash) => skipped.push(Item {
                attachment_hash: hash.clone(),
                ..item.clone()
            }),
            None => to_fetch.push(item.clone()),
        }
    }
    (skipped, to_fetch)
}

/// Whether `filter` matches the headline or type, as whole words, ignoring case.
pub fn matches_filter(filter: &str, headline: &str, kind: &str) -> bool {
    fn words(s: &str) -> Vec<String> {
        s.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect()
    }
    let f = words(filter);
    if f.is_empty() {
        return false;
    }
    [words(headline), words(kind)]
        .iter()
        .any(|w| w.windows(f.len()).any(|win| win == f.as_slice()))
}

fn announcements(doc: &StoredDocument) -> Result<Vec<Announcement>, ItemError> {
    let version = doc.content_json["schema_version"].as_u64();
    if version != Some(ANNOUNCEMENT_SCHEMA_VERSION) {
        return Err(ItemError::new(
            Code::FailedPrecondition,
            format!(
                "document {} has schema_version {version:?}; this consumer reads version {ANNOUNCEMENT_SCHEMA_VERSION}",
                doc.id
            ),
        ));
    }
    serde_json::from_value(doc.content_json["announcements"].clone()).map_err(|e| {
        ItemError::new(
            Code::Internal,
            format!("document {} has unreadable announcements: {e}", doc.id),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_whole_words_in_headline_or_type() {
        assert!(matches_filter(
            "Annual Report",
            "[SAMPLE] Appendix 4E and Annual Report",
            ""
        ));
        assert!(matches_filter(
            "appendix 4e",
            "Appendix 4E and Annual Report",
            ""
        ));
        assert!(!matches_filter("FY", "FY25 results", ""));
        assert!(matches_filter("FY", "FY 2025 results", ""));
        assert!(!matches_filter("FY", "Notify of meeting", ""));
        assert!(matches_filter(
            "annual report",
            "Something",
            "ANNUAL_REPORT"
        ));
        assert!(!matches_filter("", "anything", "OTHER"));
        assert!(matches_filter(
            "Preliminary Final Report",
            "[SAMPLE] Preliminary Final Report",
            ""
        ));
    }

    #[test]
    fn stored_items_are_skipped_with_their_hash() {
        let item = |key: &str| Item {
            document_key: key.into(),
            ..Item::default()
        };
        let stored = HashMap::from([("b".to_string(), "hash-b".to_string())]);
        let (skipped, to_fetch) = split_stored(&[item("a"), item("b")], &stored);
        assert_eq!(to_fetch, vec![item("a")]);
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].attachment_hash, "hash-b");
    }
}
