//! The edge's reading of a call: wire fields (kind, options, identifiers) to the provisioner's
//! domain types ([`Request`], [`Asked`], [`Kind`], [`Ticker`]). A whole-call refusal is
//! INVALID_ARGUMENT naming the field and the rule; an identifier that does not parse is that
//! identifier's own error (one bad identifier never fails a batch), answered by the provisioner.

use documents_api::{
    proto::documents::v1::{DocumentOptions, WatchDocumentsRequest},
    provider::{invalid_argument, MAX_CACHE_HOURS},
    Kind, Ticker,
};
use tonic::Status;

use documents_store::SourceKey;

use crate::provisioner::{Asked, Provisioner, Request, WatchSpec};

/// The whole-call fields of GetDocument(s), StreamDocuments and EnsureDocuments.
pub fn request(
    p: &Provisioner,
    kind: &str,
    options: Option<&DocumentOptions>,
    batch_len: usize,
) -> Result<Request, Status> {
    let settings = p.settings();
    let kind = self::kind(p, kind)?.unwrap_or(settings.default_kind);
    let opts = options.cloned().unwrap_or_default();
    let cache_hours = opts.cache_hours.unwrap_or(settings.default_cache_hours);
    for (field, value) in [
        ("options.cache_hours", Some(cache_hours)),
        ("options.stale_if_error_hours", opts.stale_if_error_hours),
        (
            "options.stale_while_revalidate_hours",
            opts.stale_while_revalidate_hours,
        ),
    ] {
        if let Some(v) = value.filter(|v| *v > MAX_CACHE_HOURS) {
            return Err(invalid_argument(
                field,
                format!("{v} is more than the maximum of {MAX_CACHE_HOURS}"),
            ));
        }
    }
    batch_size(p, "identifiers", batch_len, "identifiers")?;
    Ok(Request {
        kind,
        cache_hours,
        force_refresh: opts.force_refresh,
        stale_if_error_hours: opts.stale_if_error_hours,
        stale_while_revalidate_hours: opts.stale_while_revalidate_hours,
        refresh_ahead: false,
    })
}

/// The identifiers of a call, each parsed on its own (the provisioner answers a bad one with
/// its own INVALID_ARGUMENT result).
pub fn identifiers(p: &Provisioner, identifiers: Vec<String>) -> Vec<Asked> {
    let exchange = &p.settings().default_exchange;
    identifiers
        .into_iter()
        .map(|id| Asked::parse(id, exchange))
        .collect()
}

/// One identifier that the whole call depends on (`field` names it in the refusal).
pub fn identifier(p: &Provisioner, field: &str, identifier: &str) -> Result<Ticker, Status> {
    Ticker::parse_with_default(identifier, &p.settings().default_exchange)
        .map_err(|e| invalid_argument(field, e))
}

/// The `kind` field: `None` when empty, else a kind this service provides (INVALID_ARGUMENT
/// naming the ones it does otherwise).
pub fn kind(p: &Provisioner, kind: &str) -> Result<Option<Kind>, Status> {
    if kind.trim().is_empty() {
        return Ok(None);
    }
    let provided = || {
        let mut provided: Vec<_> = p.provided_kinds().map(Kind::as_str).collect();
        provided.sort();
        provided.join(", ")
    };
    let kind = kind
        .parse::<Kind>()
        .map_err(|e| invalid_argument("kind", format!("{e}: expected one of {}", provided())))?;
    if !p.provided_kinds().any(|k| k == kind) {
        return Err(invalid_argument(
            "kind",
            format!(
                "{:?} is not provided by this service: expected one of {}",
                kind.as_str(),
                provided()
            ),
        ));
    }
    Ok(Some(kind))
}

/// At most the configured maximum batch size of `what` in one call.
pub fn batch_size(p: &Provisioner, field: &str, len: usize, what: &str) -> Result<(), Status> {
    let max = p.settings().max_batch_size;
    if len > max {
        return Err(invalid_argument(
            field,
            format!("{len} {what} is more than the maximum batch size of {max}"),
        ));
    }
    Ok(())
}

/// InvalidateDocuments' fields: its kind (if named) and its identifiers as tickers. Something
/// must be named, and identifiers and tags together stay within the batch size.
pub fn invalidation(
    p: &Provisioner,
    identifiers: &[String],
    tags: &[String],
    kind: &str,
) -> Result<(Option<Kind>, Vec<Ticker>), Status> {
    if identifiers.is_empty() && tags.is_empty() && kind.trim().is_empty() {
        return Err(invalid_argument(
            "identifiers",
            "nothing to invalidate: give identifiers, tags, or a kind (every document of it)",
        ));
    }
    batch_size(
        p,
        "identifiers",
        identifiers.len() + tags.len(),
        "identifiers and tags",
    )?;
    let kind = self::kind(p, kind)?;
    let tickers = identifiers
        .iter()
        .enumerate()
        .map(|(i, id)| identifier(p, &format!("identifiers[{i}]"), id))
        .collect::<Result<_, _>>()?;
    Ok((kind, tickers))
}

/// The longest tag a watch may name.
const MAX_TAG_LEN: usize = 256;

/// WatchDocuments' fields: something to watch (identifiers or tags), each identifier and each
/// position a ticker, positions' versions not negative, all within the batch size.
pub fn watch(p: &Provisioner, r: WatchDocumentsRequest) -> Result<WatchSpec, Status> {
    if r.identifiers.is_empty() && r.tags.is_empty() {
        return Err(invalid_argument(
            "identifiers",
            "nothing to watch: give identifiers, tags, or both",
        ));
    }
    batch_size(
        p,
        "identifiers",
        r.identifiers.len() + r.tags.len() + r.since.len(),
        "identifiers, tags and positions",
    )?;
    let kind = self::kind(p, &r.kind)?.unwrap_or(p.settings().default_kind);
    let key = |field: &str, id: &str| identifier(p, field, id).map(|t| SourceKey::new(kind, t));
    let keys = r
        .identifiers
        .iter()
        .enumerate()
        .map(|(i, id)| key(&format!("identifiers[{i}]"), id))
        .collect::<Result<_, _>>()?;
    for (i, tag) in r.tags.iter().enumerate() {
        if tag.is_empty() || tag.len() > MAX_TAG_LEN {
            return Err(invalid_argument(
                &format!("tags[{i}]"),
                format!("a tag is 1 to {MAX_TAG_LEN} bytes"),
            ));
        }
    }
    let since = r
        .since
        .into_iter()
        .enumerate()
        .map(|(i, pos)| {
            if pos.version < 0 {
                return Err(invalid_argument(
                    &format!("since[{i}].version"),
                    format!("{} is negative", pos.version),
                ));
            }
            if pos.document_id.is_empty() {
                return Err(invalid_argument(
                    &format!("since[{i}].document_id"),
                    "empty: a position names the document it saw",
                ));
            }
            let key = key(&format!("since[{i}].identifier"), &pos.identifier)?;
            Ok((key, pos.document_id, pos.version))
        })
        .collect::<Result<_, _>>()?;
    Ok(WatchSpec {
        kind,
        keys,
        tags: r.tags,
        since,
        send_initial: r.send_initial,
    })
}
