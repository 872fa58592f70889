//! The key of one document: its kind and its ticker. The store keeps it as two columns,
//! `source_type` (the kind) and `source_id` (the text `EXCH:CODE:kind`), and converts at its
//! boundary with [`SourceKey::source_id`] and [`SourceKey::from_columns`]; everything above the
//! store holds the typed key.

use std::fmt;

use crate::{Kind, Ticker};

/// One document's key: a kind of document of one ticker.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceKey {
    kind: Kind,
    ticker: Ticker,
}

/// A stored key that does not read back (a row written by hand, or by a release that knows a
/// kind this one does not).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_type:?} / {source_id:?} is not a source key this release knows")]
pub struct SourceKeyError {
    pub source_type: String,
    pub source_id: String,
}

impl SourceKey {
    pub fn new(kind: Kind, ticker: Ticker) -> Self {
        Self { kind, ticker }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn ticker(&self) -> &Ticker {
        &self.ticker
    }

    /// The `source_id` column: `EXCH:CODE:kind`.
    pub fn source_id(&self) -> String {
        self.to_string()
    }

    /// The key of a stored row, from its `source_type` and `source_id` columns.
    pub fn from_columns(source_type: &str, source_id: &str) -> Result<Self, SourceKeyError> {
        let error = || SourceKeyError {
            source_type: source_type.chars().take(64).collect(),
            source_id: source_id.chars().take(64).collect(),
        };
        let kind: Kind = source_type.parse().map_err(|_| error())?;
        let ticker = source_id
            .rsplit_once(':')
            .filter(|(_, k)| *k == kind.as_str())
            .and_then(|(t, _)| Ticker::from_canonical(t))
            .ok_or_else(error)?;
        Ok(Self { kind, ticker })
    }
}

impl fmt::Display for SourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.ticker, self.kind)
    }
}

/// The text form, `EXCH:CODE:kind` (the kind is its last part).
impl std::str::FromStr for SourceKey {
    type Err = SourceKeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let kind = s.rsplit_once(':').map_or("", |(_, k)| k);
        Self::from_columns(kind, s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_round_trips_through_its_columns_and_its_text() {
        let key = SourceKey::new(Kind::Announcement, Ticker::parse("asx:gnp").unwrap());
        assert_eq!(key.source_id(), "ASX:GNP:announcement");
        assert_eq!(
            SourceKey::from_columns("announcement", "ASX:GNP:announcement"),
            Ok(key.clone())
        );
        assert_eq!("ASX:GNP:announcement".parse(), Ok(key));
        for (t, id) in [
            ("announcement", "ASX:GNP:market_data"),
            ("prices", "ASX:GNP:prices"),
            ("announcement", "GNP:announcement"),
            ("announcement", "ASX::announcement"),
            ("announcement", ""),
        ] {
            assert!(SourceKey::from_columns(t, id).is_err(), "{t} {id}");
        }
    }
}
