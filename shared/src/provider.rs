//! The Rust face of the provider: the `DocumentProvider` and legacy `DocumentProvisioner`
//! traits, their options builder and result types, and the conversions to and from the wire
//! messages. The gRPC client in [`crate::client`] implements both traits, and so can any
//! in-process provider.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tonic::{Code, Status};

use crate::{kind::Kind, proto::documents::v1 as pb};

/// Freshness window used when the caller does not set one.
pub const DEFAULT_CACHE_HOURS: u32 = 24;

/// Largest freshness window a caller may ask for (ten years).
pub const MAX_CACHE_HOURS: u32 = 87_600;

/// How a caller wants its documents provisioned. Built with chained setters:
///
/// ```
/// use shared::{DocumentOptions, Kind};
/// let opts = DocumentOptions::new().cache_hours(6).force_refresh(false).kind(Kind::MarketData);
/// assert_eq!(opts.cache_hours, Some(6));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DocumentOptions {
    /// Document kind; `None` means the provider's default kind.
    pub kind: Option<Kind>,
    /// Freshness window in hours; `None` means the provider's default (24); 0 means always fetch.
    pub cache_hours: Option<u32>,
    /// Fetch from the source even when the stored document is fresh.
    pub force_refresh: bool,
    /// Accept the stored document, marked stale, when a refresh fails and it is at most this
    /// many hours old.
    pub stale_if_error_hours: Option<u32>,
}

impl DocumentOptions {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn kind(mut self, kind: Kind) -> Self {
        self.kind = Some(kind);
        self
    }

    pub fn cache_hours(mut self, hours: u32) -> Self {
        self.cache_hours = Some(hours);
        self
    }

    pub fn force_refresh(mut self, force: bool) -> Self {
        self.force_refresh = force;
        self
    }

    pub fn stale_if_error_hours(mut self, hours: u32) -> Self {
        self.stale_if_error_hours = Some(hours);
        self
    }

    /// The wire form of the options (the kind travels beside them in the request).
    pub fn to_proto(&self) -> pb::DocumentOptions {
        pb::DocumentOptions {
            cache_hours: self.cache_hours,
            force_refresh: self.force_refresh,
            stale_if_error_hours: self.stale_if_error_hours,
        }
    }

    fn kind_string(&self) -> String {
        self.kind
            .map(|k| k.as_str().to_string())
            .unwrap_or_default()
    }
}

/// What happened for one identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Hit,
    Created,
    Refreshed,
    /// A refresh failed and the caller accepted the previous version.
    Stale,
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Created => "created",
            Outcome::Refreshed => "refreshed",
            Outcome::Stale => "stale",
            Outcome::Error => "error",
        }
    }

    fn to_proto(self) -> pb::Outcome {
        match self {
            Outcome::Hit => pb::Outcome::Hit,
            Outcome::Created => pb::Outcome::Created,
            Outcome::Refreshed => pb::Outcome::Refreshed,
            Outcome::Stale => pb::Outcome::Stale,
            Outcome::Error => pb::Outcome::Error,
        }
    }

    fn from_proto(o: pb::Outcome, has_error: bool, fresh: bool, created: bool) -> Self {
        match o {
            pb::Outcome::Hit => Outcome::Hit,
            pb::Outcome::Created => Outcome::Created,
            pb::Outcome::Refreshed => Outcome::Refreshed,
            pb::Outcome::Stale => Outcome::Stale,
            pb::Outcome::Error => Outcome::Error,
            // An older server that does not send the outcome: derive it from the booleans.
            pb::Outcome::Unspecified if has_error => Outcome::Error,
            pb::Outcome::Unspecified if fresh => Outcome::Hit,
            pb::Outcome::Unspecified if created => Outcome::Created,
            pb::Outcome::Unspecified => Outcome::Refreshed,
        }
    }
}

/// The error of one identifier: a gRPC code and a message naming what went wrong, and how long
/// to wait before trying again when the server knows (sent as `google.rpc.RetryInfo`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ItemError {
    pub code: Code,
    pub message: String,
    pub retry_after: Option<std::time::Duration>,
}

impl ItemError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same error, telling the caller to wait `after` before trying again.
    pub fn retry_after(mut self, after: std::time::Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    pub fn to_status(&self) -> Status {
        status_with_retry(self.code, self.message.clone(), self.retry_after)
    }
}

/// A status carrying `google.rpc.RetryInfo` when `retry_after` is known.
pub fn status_with_retry(
    code: Code,
    message: impl Into<String>,
    retry_after: Option<std::time::Duration>,
) -> Status {
    use tonic_types::{ErrorDetails, StatusExt};
    match retry_after {
        Some(after) => {
            Status::with_error_details(code, message, ErrorDetails::with_retry_info(Some(after)))
        }
        None => Status::new(code, message),
    }
}

/// The `google.rpc.RetryInfo` delay a status carries, if any.
pub fn retry_info(s: &Status) -> Option<std::time::Duration> {
    use tonic_types::StatusExt;
    s.get_details_retry_info()?.retry_delay
}

impl From<&Status> for ItemError {
    fn from(s: &Status) -> Self {
        ItemError {
            retry_after: retry_info(s),
            ..ItemError::new(s.code(), s.message())
        }
    }
}

impl From<ItemError> for pb::ItemError {
    fn from(e: ItemError) -> Self {
        pb::ItemError {
            code: e.code as i32,
            message: e.message,
        }
    }
}

impl From<pb::ItemError> for ItemError {
    fn from(e: pb::ItemError) -> Self {
        ItemError::new(Code::from_i32(e.code), e.message)
    }
}

/// The provider's answer for one identifier.
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentResult {
    /// The identifier exactly as the caller sent it.
    pub identifier: String,
    /// Canonical source key `EXCH:CODE:<kind>`; empty when the identifier did not parse.
    pub source_id: String,
    pub kind: String,
    pub document_id: String,
    pub tags: Vec<String>,
    /// Served from a document that was already fresh.
    pub fresh: bool,
    /// Created or recreated by this call.
    pub created: bool,
    pub version: i64,
    pub last_synced: Option<DateTime<Utc>>,
    pub outcome: Outcome,
    /// Set when the identifier failed, or with [`Outcome::Stale`] the refresh's error.
    pub error: Option<ItemError>,
    /// Position of the identifier in the request.
    pub index: u32,
}

impl DocumentResult {
    /// A failed result for `identifier`.
    pub fn failed(identifier: &str, kind: &str, source_id: String, error: ItemError) -> Self {
        DocumentResult {
            identifier: identifier.to_string(),
            source_id,
            kind: kind.to_string(),
            document_id: String::new(),
            tags: Vec::new(),
            fresh: false,
            created: false,
            version: 0,
            last_synced: None,
            outcome: Outcome::Error,
            error: Some(error),
            index: 0,
        }
    }

    /// The identifier has a document to read (fresh, filled, or accepted stale).
    pub fn is_ok(&self) -> bool {
        self.outcome != Outcome::Error
    }
}

impl From<DocumentResult> for pb::DocumentResult {
    fn from(r: DocumentResult) -> Self {
        pb::DocumentResult {
            identifier: r.identifier,
            document_id: r.document_id,
            tags: r.tags,
            fresh: r.fresh,
            created: r.created,
            version: r.version,
            last_synced: r.last_synced.map(to_timestamp),
            error: r.error.map(Into::into),
            outcome: r.outcome.to_proto() as i32,
            source_id: r.source_id,
            kind: r.kind,
            index: r.index,
        }
    }
}

impl From<pb::DocumentResult> for DocumentResult {
    fn from(r: pb::DocumentResult) -> Self {
        let outcome = Outcome::from_proto(r.outcome(), r.error.is_some(), r.fresh, r.created);
        DocumentResult {
            identifier: r.identifier,
            source_id: r.source_id,
            kind: r.kind,
            document_id: r.document_id,
            tags: r.tags,
            fresh: r.fresh,
            created: r.created,
            version: r.version,
            last_synced: r.last_synced.and_then(from_timestamp),
            outcome,
            error: r.error.map(Into::into),
            index: r.index,
        }
    }
}

/// What the legacy provisioner answers: IDs for the identifiers that succeeded, errors for the
/// rest, both keyed by the identifier as sent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Provisioned {
    pub document_ids: HashMap<String, String>,
    pub errors: HashMap<String, ItemError>,
}

impl Provisioned {
    /// Folds per-identifier results into the legacy map form.
    pub fn from_results(results: impl IntoIterator<Item = DocumentResult>) -> Self {
        let mut out = Provisioned::default();
        for r in results {
            match (r.is_ok(), r.error) {
                (false, Some(e)) => {
                    out.errors.insert(r.identifier, e);
                }
                _ => {
                    out.document_ids.insert(r.identifier, r.document_id);
                }
            }
        }
        out
    }
}

/// Something that makes sure fresh documents exist and answers their IDs.
#[async_trait]
pub trait DocumentProvider: Send + Sync {
    /// Ensures one document. A failure of the identifier is the `Err`.
    async fn get_document(
        &self,
        identifier: &str,
        options: &DocumentOptions,
    ) -> Result<DocumentResult, Status>;

    /// Ensures a batch: one result per identifier, in order; per-identifier failures are in the
    /// results. `Err` only when the whole batch was refused or could not be sent.
    async fn get_documents(
        &self,
        identifiers: &[String],
        options: &DocumentOptions,
    ) -> Result<Vec<DocumentResult>, Status>;
}

/// The legacy interface, kept for existing callers. New code should use [`DocumentProvider`].
#[async_trait]
pub trait DocumentProvisioner: Send + Sync {
    async fn ensure_documents(
        &self,
        identifiers: &[String],
        options: &DocumentOptions,
    ) -> Result<Provisioned, Status>;
}

/// Request builders shared by the client and tests.
pub fn get_document_request(identifier: &str, options: &DocumentOptions) -> pb::GetDocumentRequest {
    pb::GetDocumentRequest {
        identifier: identifier.to_string(),
        kind: options.kind_string(),
        options: Some(options.to_proto()),
    }
}

pub fn get_documents_request(
    identifiers: &[String],
    options: &DocumentOptions,
) -> pb::GetDocumentsRequest {
    pb::GetDocumentsRequest {
        identifiers: identifiers.to_vec(),
        kind: options.kind_string(),
        options: Some(options.to_proto()),
    }
}

pub fn ensure_documents_request(
    identifiers: &[String],
    options: &DocumentOptions,
) -> pb::EnsureDocumentsRequest {
    pb::EnsureDocumentsRequest {
        identifiers: identifiers.to_vec(),
        kind: options.kind_string(),
        options: Some(options.to_proto()),
    }
}

pub fn to_timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub fn from_timestamp(t: prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_survive_the_wire() {
        let r = DocumentResult {
            identifier: "asx:gnp".into(),
            source_id: "ASX:GNP:announcement".into(),
            kind: "announcement".into(),
            document_id: "abc".into(),
            tags: vec!["announcement".into()],
            fresh: false,
            created: true,
            version: 2,
            last_synced: DateTime::from_timestamp(1_700_000_000, 123_000),
            outcome: Outcome::Refreshed,
            error: None,
            index: 3,
        };
        let back: DocumentResult = pb::DocumentResult::from(r.clone()).into();
        assert_eq!(back, r);
    }

    #[test]
    fn legacy_map_splits_ids_and_errors() {
        let ok = DocumentResult {
            identifier: "GNP".into(),
            source_id: String::new(),
            kind: String::new(),
            document_id: "id1".into(),
            tags: vec![],
            fresh: true,
            created: false,
            version: 1,
            last_synced: None,
            outcome: Outcome::Hit,
            error: None,
            index: 0,
        };
        let bad = DocumentResult::failed(
            "x y",
            "announcement",
            String::new(),
            ItemError::new(Code::InvalidArgument, "bad"),
        );
        let p = Provisioned::from_results([ok, bad]);
        assert_eq!(p.document_ids.get("GNP").map(String::as_str), Some("id1"));
        assert_eq!(p.errors.get("x y").unwrap().code, Code::InvalidArgument);
    }
}
