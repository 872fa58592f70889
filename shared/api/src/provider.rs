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
/// use documents_api::{DocumentOptions, Kind};
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
    /// Stale-while-revalidate: a stored document at most this many hours past the window is
    /// answered at once, marked stale and `refreshing`, while one background fill refreshes it.
    pub stale_while_revalidate_hours: Option<u32>,
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

    pub fn stale_while_revalidate_hours(mut self, hours: u32) -> Self {
        self.stale_while_revalidate_hours = Some(hours);
        self
    }

    /// The wire form of the options (the kind travels beside them in the request).
    pub fn to_proto(&self) -> pb::DocumentOptions {
        pb::DocumentOptions {
            cache_hours: self.cache_hours,
            force_refresh: self.force_refresh,
            stale_if_error_hours: self.stale_if_error_hours,
            stale_while_revalidate_hours: self.stale_while_revalidate_hours,
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

/// `google.rpc.ErrorInfo.domain` of the errors the services answer.
pub const ERROR_DOMAIN: &str = "documents.v1";

/// The error of one identifier: a gRPC code and a message naming what went wrong, plus what
/// programs need (sent as `google.rpc` details): a constant reason (`ErrorInfo`), the request
/// field at fault (`BadRequest`), and how long to wait before trying again (`RetryInfo`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ItemError {
    pub code: Code,
    pub message: String,
    pub retry_after: Option<std::time::Duration>,
    /// `UPPER_SNAKE_CASE` cause, such as `UPSTREAM_NOT_FOUND` or `INVALID_IDENTIFIER`.
    pub reason: Option<String>,
    /// The request field at fault, for INVALID_ARGUMENT (e.g. `identifier`).
    pub field: Option<String>,
}

impl ItemError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
            reason: None,
            field: None,
        }
    }

    /// The same error, telling the caller to wait `after` before trying again.
    pub fn retry_after(mut self, after: std::time::Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// The same error with its machine-readable reason.
    pub fn reason(mut self, reason: &str) -> Self {
        self.reason = Some(reason.to_string());
        self
    }

    /// The same error, blaming request field `field`.
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// The same error with a reason: its code's name when it has none better (every error
    /// about one document or ticker carries an `ErrorInfo`).
    pub fn described(mut self) -> Self {
        if self.reason.is_none() {
            self.reason = Some(code_reason(self.code).to_string());
        }
        self
    }

    /// The error as a call status, with its details.
    pub fn to_status(&self) -> Status {
        self.status_about(&[])
    }

    /// The error as a call status whose `ErrorInfo` names what it is about (`metadata`, such as
    /// the identifier and kind).
    pub fn status_about(&self, metadata: &[(&str, &str)]) -> Status {
        use tonic_types::{ErrorDetails, StatusExt};
        let mut details = ErrorDetails::new();
        if let Some(after) = self.retry_after {
            details.set_retry_info(Some(after));
        }
        if let Some(field) = &self.field {
            details.add_bad_request_violation(field, &self.message);
        }
        if let Some(reason) = &self.reason {
            let metadata: HashMap<String, String> = metadata
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            details.set_error_info(reason, ERROR_DOMAIN, metadata);
        }
        if self.retry_after.is_none() && self.field.is_none() && self.reason.is_none() {
            return Status::new(self.code, self.message.clone());
        }
        Status::with_error_details(self.code, self.message.clone(), details)
    }

    /// The error as a `google.rpc.Status` message, for the `status` fields of results.
    pub fn to_rpc_status(&self, metadata: &[(&str, &str)]) -> tonic_types::pb::Status {
        use prost::Message;
        let status = self.status_about(metadata);
        tonic_types::pb::Status::decode(status.details()).unwrap_or(tonic_types::pb::Status {
            code: self.code as i32,
            message: self.message.clone(),
            details: Vec::new(),
        })
    }
}

/// The code's name in `UPPER_SNAKE_CASE`, the reason of an error that has no better one.
fn code_reason(code: Code) -> &'static str {
    match code {
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::NotFound => "NOT_FOUND",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Unavailable => "UNAVAILABLE",
        Code::Cancelled => "CANCELLED",
        _ => "INTERNAL",
    }
}

/// The call status for a request field that breaks a rule: INVALID_ARGUMENT with the message
/// `"<field>: <rule>"` and a `google.rpc.BadRequest` naming the field.
pub fn invalid_argument(field: &str, rule: impl std::fmt::Display) -> Status {
    let rule = rule.to_string();
    ItemError::new(Code::InvalidArgument, format!("{field}: {rule}"))
        .field(field)
        .to_status()
}

/// A status carrying `google.rpc.RetryInfo` when `retry_after` is known.
pub fn status_with_retry(
    code: Code,
    message: impl Into<String>,
    retry_after: Option<std::time::Duration>,
) -> Status {
    ItemError {
        retry_after,
        ..ItemError::new(code, message)
    }
    .to_status()
}

/// The `google.rpc.RetryInfo` delay a status carries, if any.
pub fn retry_info(s: &Status) -> Option<std::time::Duration> {
    use tonic_types::StatusExt;
    s.get_details_retry_info()?.retry_delay
}

impl From<&Status> for ItemError {
    fn from(s: &Status) -> Self {
        use tonic_types::StatusExt;
        let details = s.get_error_details();
        ItemError {
            retry_after: details.retry_info().and_then(|r| r.retry_delay),
            reason: details.error_info().map(|i| i.reason.clone()),
            field: details
                .bad_request()
                .and_then(|b| b.field_violations.first())
                .map(|v| v.field.clone()),
            ..ItemError::new(s.code(), s.message())
        }
    }
}

impl From<tonic_types::pb::Status> for ItemError {
    fn from(s: tonic_types::pb::Status) -> Self {
        use prost::Message;
        let code = Code::from_i32(s.code);
        let message = s.message.clone();
        let status = Status::with_details(code, message, s.encode_to_vec().into());
        ItemError::from(&status)
    }
}

impl From<&ItemError> for pb::ItemError {
    fn from(e: &ItemError) -> Self {
        pb::ItemError {
            code: e.code as i32,
            message: e.message.clone(),
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
    /// With [`Outcome::Stale`] from stale-while-revalidate: a background refresh runs.
    pub refreshing: bool,
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
            refreshing: false,
        }
    }

    /// The identifier has a document to read (fresh, filled, or accepted stale).
    pub fn is_ok(&self) -> bool {
        self.outcome != Outcome::Error
    }
}

impl DocumentResult {
    /// The `google.rpc.Status` of this result's error, its `ErrorInfo` naming the identifier,
    /// kind and source.
    pub fn rpc_status(&self) -> Option<tonic_types::pb::Status> {
        self.described_error()
            .map(|e| e.to_rpc_status(&self.about()))
    }

    /// The error as a call status (GetDocument answers a failed identifier this way).
    pub fn error_status(&self) -> Option<Status> {
        self.described_error()
            .map(|e| e.status_about(&self.about()))
    }

    /// The error with a reason (see [`ItemError::described`]): e.g. an error recorded by
    /// another replica's fill carries none of its own.
    fn described_error(&self) -> Option<ItemError> {
        self.error.clone().map(ItemError::described)
    }

    fn about(&self) -> [(&str, &str); 3] {
        [
            ("identifier", &self.identifier),
            ("kind", &self.kind),
            ("source_id", &self.source_id),
        ]
    }
}

// The deprecated `error` field is still sent, beside `status`, for older clients.
#[allow(deprecated)]
impl From<DocumentResult> for pb::DocumentResult {
    fn from(r: DocumentResult) -> Self {
        let status = r.rpc_status();
        pb::DocumentResult {
            status,
            identifier: r.identifier,
            document_id: r.document_id,
            tags: r.tags,
            fresh: r.fresh,
            created: r.created,
            version: r.version,
            last_synced: r.last_synced.map(to_timestamp),
            error: r.error.as_ref().map(Into::into),
            outcome: r.outcome.to_proto() as i32,
            source_id: r.source_id,
            kind: r.kind,
            index: r.index,
            refreshing: r.refreshing,
        }
    }
}

#[allow(deprecated)]
impl From<pb::DocumentResult> for DocumentResult {
    fn from(r: pb::DocumentResult) -> Self {
        let has_error = r.error.is_some() || r.status.is_some();
        let outcome = Outcome::from_proto(r.outcome(), has_error, r.fresh, r.created);
        // `status` carries the details; an older server sends only `error`.
        let error = match r.status {
            Some(s) => Some(s.into()),
            None => r.error.map(Into::into),
        };
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
            error,
            index: r.index,
            refreshing: r.refreshing,
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

// The deprecated `errors` map is still sent, beside `error_statuses`, for older clients.
#[allow(deprecated)]
impl From<Provisioned> for pb::EnsureDocumentsResponse {
    fn from(p: Provisioned) -> Self {
        pb::EnsureDocumentsResponse {
            errors: p
                .errors
                .iter()
                .map(|(k, e)| (k.clone(), e.into()))
                .collect(),
            error_statuses: p
                .errors
                .iter()
                .map(|(k, e)| (k.clone(), e.to_rpc_status(&[("identifier", k)])))
                .collect(),
            document_ids: p.document_ids,
        }
    }
}

#[allow(deprecated)]
impl From<pb::EnsureDocumentsResponse> for Provisioned {
    fn from(r: pb::EnsureDocumentsResponse) -> Self {
        // `error_statuses` carries the details; an older server sends only `errors`.
        let errors = if r.error_statuses.is_empty() {
            r.errors.into_iter().map(|(k, e)| (k, e.into())).collect()
        } else {
            r.error_statuses
                .into_iter()
                .map(|(k, s)| (k, s.into()))
                .collect()
        };
        Provisioned {
            document_ids: r.document_ids,
            errors,
        }
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
            refreshing: false,
        };
        let back: DocumentResult = pb::DocumentResult::from(r.clone()).into();
        assert_eq!(back, r);
    }

    #[test]
    #[allow(deprecated)]
    fn errors_survive_the_wire_with_their_details() {
        let r = DocumentResult::failed(
            "asx:gnp",
            "announcement",
            "ASX:GNP:announcement".into(),
            ItemError::new(Code::Unavailable, "ASX:GNP: upstream answered 503")
                .reason("UPSTREAM_UNAVAILABLE")
                .retry_after(std::time::Duration::from_millis(1500)),
        );
        let wire = pb::DocumentResult::from(r.clone());
        // The deprecated field still carries code and message for older clients.
        let old = wire.error.clone().unwrap();
        assert_eq!(
            (old.code, old.message.as_str()),
            (14, "ASX:GNP: upstream answered 503")
        );
        let status = wire.status.clone().unwrap();
        assert_eq!(status.code, 14);
        assert_eq!(
            status.details.len(),
            2,
            "RetryInfo and ErrorInfo: {status:?}"
        );
        let back: DocumentResult = wire.into();
        assert_eq!(back.error, r.error);
        // ErrorInfo names the document.
        use tonic_types::StatusExt;
        let info = r.error_status().unwrap().get_details_error_info().unwrap();
        assert_eq!(info.reason, "UPSTREAM_UNAVAILABLE");
        assert_eq!(info.domain, ERROR_DOMAIN);
        assert_eq!(info.metadata["identifier"], "asx:gnp");
        assert_eq!(info.metadata["source_id"], "ASX:GNP:announcement");
        // A bad field is named in BadRequest.
        let s = invalid_argument("options.cache_hours", "99999999 is more than the maximum");
        let bad = s.get_details_bad_request().unwrap();
        assert_eq!(bad.field_violations[0].field, "options.cache_hours");
        assert!(s.message().starts_with("options.cache_hours: "));
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
            refreshing: false,
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
