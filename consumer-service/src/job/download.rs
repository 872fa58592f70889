//! The download step: fetches the selected PDFs not stored yet (up to 16 at once), checkpoints
//! each one but the last as it arrives, and stops at once (dropping the downloads still
//! running) if the round's lease is lost.

use documents_api::ItemError;
use documents_store::NewAttachment;
use futures::{stream, StreamExt};

use super::{
    outcome::Item,
    record::{Progress, Recorder},
};
use crate::download::Downloader;

/// PDFs downloaded at once per round.
const DOWNLOADS_AT_ONCE: usize = 16;

/// Downloads `to_fetch` into `progress`; answers the PDFs the round's last write must carry.
pub(super) async fn download_all(
    downloader: &Downloader,
    to_fetch: Vec<Item>,
    progress: &mut Progress,
    record: &Recorder<'_>,
) -> Result<Vec<NewAttachment>, ItemError> {
    let total = to_fetch.len();
    let mut downloads = stream::iter(to_fetch)
        .map(|i| async move {
            let r = downloader.pdf(&i.pdf_url).await.map_err(|e| e.0);
            (i, r)
        })
        .buffer_unordered(DOWNLOADS_AT_ONCE);
    let mut last = Vec::new();
    let mut finished = 0;
    loop {
        let next = tokio::select! {
            next = downloads.next() => next,
            () = record.lease.lost() => return Err(record.lease.lost_error()),
        };
        let Some((mut item, r)) = next else { break };
        finished += 1;
        match r {
            Ok(bytes) => {
                let pdf = NewAttachment {
                    name: item.document_key.clone(),
                    content_type: "application/pdf".into(),
                    data: bytes,
                };
                item.attachment_hash = pdf.hash();
                progress.downloaded.push(item);
                if finished < total {
                    // A checkpoint while others are still downloading: this PDF is kept (and
                    // not fetched again) even if the round dies before it ends.
                    record.checkpoint(progress, pdf).await?;
                } else {
                    last.push(pdf);
                }
            }
            Err(e) => {
                item.error = e;
                progress.failed.push(item);
            }
        }
    }
    Ok(last)
}
