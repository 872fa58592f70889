//! What a fill is and ends with: what the request saw at its lookup ([`Seen`]), the document a
//! fill answers with ([`Filled`]), and how it can fail.

use std::time::Duration;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use documents_api::{ItemError, Outcome};
use documents_store::DocumentHead;
use futures::future::{BoxFuture, Shared};
use tonic::Code;

/// What a finished fill hands to its waiters.
#[derive(Debug, Clone)]
pub struct Filled {
    pub head: DocumentHead,
    pub outcome: Outcome,
}

pub type FillResult = Result<Filled, ItemError>;
pub type FillFuture = Shared<BoxFuture<'static, FillResult>>;

/// What a request saw of a document at its lookup: when (database clock) and which version
/// (0: none). A fill by someone else counts as newer when it wrote a higher version synced
/// around or after the lookup ([`Seen::answers`]).
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    pub at: DateTime<Utc>,
    pub version: i64,
}

impl Seen {
    /// How an answer this request got from another filler's write is reported: as the fill it
    /// is (created, or refreshed since the lookup), the same as for a request that joined a
    /// fill in its own process; never as a hit of a document that was already fresh.
    pub fn filled_by_another(&self) -> Outcome {
        if self.version == 0 {
            Outcome::Created
        } else {
            Outcome::Refreshed
        }
    }

    /// Whether `h` is another filler's result this request may answer with: a higher version,
    /// not purged since it was fetched, synced no earlier than a lease length before the lookup
    /// (a fill's write commits within its lease; a row whose `last_synced` was moved back by hand
    /// is not a fresh fill).
    pub fn answers(&self, h: &DocumentHead, lease: Duration) -> bool {
        h.version > self.version
            && !h.invalidated
            && h.last_synced >= self.at - ChronoDuration::from_std(lease).unwrap_or_default()
    }
}

/// Why a fill under a lease did not end with a document.
pub enum FillError {
    Failed(ItemError),
    LeaseLost,
    /// Written, but a purge that landed after this fill's claim keeps it stale.
    Purged(Filled),
}

/// The error of a fill cut short by the process stopping.
pub fn shutting_down() -> ItemError {
    ItemError::new(Code::Unavailable, "provider is shutting down").reason("SHUTTING_DOWN")
}
