//! Recording a round: the ticker's `announcement_download` document (what matched, and what was
//! downloaded, already stored or failed) with its PDFs as attachments. A checkpoint is written
//! after each PDF while others still download (so a round that dies keeps what it fetched), and
//! the last write carries the last PDF and ends the lease, document and attachment in one
//! transaction. Every write is fenced by the round's lease.

use std::sync::Arc;

use documents_api::{ItemError, Kind, Ticker};
use documents_store::{DocumentStore, NewAttachment, NewContent, SourceKey, StoredDocument};

use super::{outcome::Item, round::RoundLease};

/// Version of the `announcement_download` JSON layout this consumer writes.
pub const DOWNLOAD_SCHEMA_VERSION: u32 = 1;

/// Where a round stands: the matched items sorted into what happened to each.
#[derive(Debug, Default)]
pub(super) struct Progress {
    pub downloaded: Vec<Item>,
    pub skipped: Vec<Item>,
    pub failed: Vec<Item>,
}

/// Writes one round's download document, fenced by its lease.
pub(super) struct Recorder<'a> {
    pub store: &'a Arc<dyn DocumentStore>,
    pub key: &'a SourceKey,
    pub lease: &'a RoundLease,
    pub ticker: &'a Ticker,
    /// The announcements document the round read.
    pub source: &'a StoredDocument,
    pub filters: &'a [String],
    pub matched: &'a [Item],
}

impl Recorder<'_> {
    /// A checkpoint mid-round, with one more downloaded PDF.
    pub(super) async fn checkpoint(
        &self,
        progress: &Progress,
        pdf: NewAttachment,
    ) -> Result<(), ItemError> {
        self.store
            .upsert(
                self.key,
                &self.document(progress, false),
                &[pdf],
                self.lease.keep(),
            )
            .await
            .map_err(|e| self.lease.write_error(e))?;
        Ok(())
    }

    /// The round's last write, with the PDFs not written yet; answers the document's ID.
    pub(super) async fn finish(
        &self,
        progress: &Progress,
        pdfs: &[NewAttachment],
    ) -> Result<String, ItemError> {
        let written = self
            .store
            .upsert(
                self.key,
                &self.document(progress, true),
                pdfs,
                self.lease.last(),
            )
            .await
            .map_err(|e| self.lease.write_error(e))?;
        Ok(written.head.id)
    }

    /// The download document at `progress`; `complete` is false on a checkpoint.
    fn document(&self, progress: &Progress, complete: bool) -> NewContent {
        let (ticker, source, matched) = (self.ticker, self.source, self.matched);
        let Progress {
            downloaded,
            skipped,
            failed,
        } = progress;
        let mut md = format!(
            "# {ticker} announcement downloads\n\nFrom announcements document {} version {}: {} matched, {} downloaded, {} already stored, {} failed.\n\n",
            source.id,
            source.version,
            matched.len(),
            downloaded.len(),
            skipped.len(),
            failed.len()
        );
        if !matched.is_empty() {
            md.push_str("| Date | Headline | Result |\n|---|---|---|\n");
            for (items, label) in [
                (downloaded, "downloaded"),
                (skipped, "already stored"),
                (failed, "failed"),
            ] {
                for i in items {
                    let result = if i.error.is_empty() {
                        label.to_string()
                    } else {
                        format!("{label}: {}", i.error)
                    };
                    md.push_str(&format!(
                        "| {} | {} | {} |\n",
                        i.date,
                        i.headline.replace('|', "\\|"),
                        result
                    ));
                }
            }
        }
        NewContent {
            title: format!("{ticker} announcement downloads"),
            content_markdown: md,
            content_json: serde_json::json!({
                "schema_version": DOWNLOAD_SCHEMA_VERSION,
                "ticker": ticker.to_string(),
                "source_document_id": source.id,
                "source_version": source.version,
                "filters": self.filters,
                "matched": matched,
                "downloaded": downloaded,
                "skipped": skipped,
                "failed": failed,
                "complete": complete,
            }),
            tags: vec![
                Kind::AnnouncementDownload.as_str().to_string(),
                ticker.code().to_lowercase(),
                format!("ticker:{ticker}"),
                format!("source_type:{}", Kind::AnnouncementDownload),
            ],
        }
    }
}
