//! What a round did for one ticker, in the job's own terms: [`TickerOutcome`] and the
//! [`Item`]s it lists. The wire's `TickerReport` is made from it only at the edges (the gRPC
//! service and the CLI's report printing).

use documents_api::{DocumentResult, ItemError};
use serde::{Deserialize, Serialize};

/// One handled announcement, as recorded in the download document and reported.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Item {
    pub document_key: String,
    pub headline: String,
    pub date: String,
    pub pdf_url: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub attachment_hash: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// The result of one ticker's round: what the provider answered, what was read, and what the
/// round matched, downloaded, found stored or failed; or the error that stopped it.
#[derive(Debug, Clone, Default)]
pub struct TickerOutcome {
    /// The ticker as the caller spelled it.
    pub ticker: String,
    pub provider_result: Option<DocumentResult>,
    /// The announcements document read, and its version (newer than answered when another
    /// writer moved it on in between).
    pub document_id: String,
    pub version_read: i64,
    pub newer_version_read: bool,
    /// The `announcement_download` document the round wrote.
    pub download_document_id: String,
    pub matched: Vec<Item>,
    pub downloaded: Vec<Item>,
    pub skipped: Vec<Item>,
    pub failed: Vec<Item>,
    pub error: Option<ItemError>,
}

impl TickerOutcome {
    pub fn new(ticker: &str) -> Self {
        TickerOutcome {
            ticker: ticker.to_string(),
            ..TickerOutcome::default()
        }
    }

    pub fn is_ok(&self) -> bool {
        self.error.is_none()
    }
}
