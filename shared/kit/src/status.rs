//! Where storage meets the wire: a [`StorageError`] as the per-item error (and so the gRPC
//! status) a caller gets: UNAVAILABLE when the database's state is to blame (down, busy,
//! read-only: retryable), INTERNAL otherwise, with the store's reason code.

use documents_api::ItemError;
use documents_store::StorageError;
use tonic::Code;

/// A storage error as callers see it.
pub trait StorageStatus {
    /// As one identifier's error.
    fn item_error(&self) -> ItemError;

    /// As a whole call's status (the same code, reason and retry advice).
    fn status(&self) -> tonic::Status {
        self.item_error().to_status()
    }
}

impl StorageStatus for StorageError {
    fn item_error(&self) -> ItemError {
        let code = if self.is_transient() {
            Code::Unavailable
        } else {
            Code::Internal
        };
        // A driver's error text may repeat what it was given: no secret goes out with it.
        ItemError::new(code, crate::secrets::scrub(&self.to_string())).reason(self.reason())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_databases_state_is_retryable_and_named() {
        let down = StorageError::ReadOnly("documents.db cannot be written".into()).item_error();
        assert_eq!(down.code, Code::Unavailable);
        assert_eq!(down.reason.as_deref(), Some("DATABASE_READ_ONLY"));
        let broken = StorageError::Corrupt("tags are not JSON".into()).item_error();
        assert_eq!(broken.code, Code::Internal);
        assert_eq!(broken.reason.as_deref(), Some("DATABASE_ERROR"));
    }
}
