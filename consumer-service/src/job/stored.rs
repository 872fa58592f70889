//! What is stored for a ticker (the `GetStored` RPC): its announcements document, its download
//! document and the hashes of the PDFs attached to it.

use documents_api::{ItemError, Kind, Ticker};
use documents_kit::status::StorageStatus as _;
use documents_store::{SourceKey, StoredDocument};

use super::Processor;

/// A ticker's stored documents.
#[derive(Debug, Clone)]
pub struct Stored {
    pub ticker: Ticker,
    pub announcements: Option<StoredDocument>,
    pub downloads: Option<StoredDocument>,
    pub attachment_hashes: Vec<String>,
}

impl Processor {
    pub async fn stored(&self, ticker: Ticker) -> Result<Stored, ItemError> {
        let get = |kind: Kind| {
            let key = SourceKey::new(kind, ticker.clone());
            async move { self.store.get_by_source(&key).await }
        };
        let announcements = get(Kind::Announcement).await.map_err(|e| e.item_error())?;
        let downloads = get(Kind::AnnouncementDownload)
            .await
            .map_err(|e| e.item_error())?;
        let attachment_hashes = match &downloads {
            Some(d) => self
                .store
                .attachments_of(&d.id)
                .await
                .map_err(|e| e.item_error())?
                .into_iter()
                .map(|a| a.hash)
                .collect(),
            None => Vec::new(),
        };
        Ok(Stored {
            ticker,
            announcements,
            downloads,
            attachment_hashes,
        })
    }
}
