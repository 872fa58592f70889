//! Document kinds: the `kind` field of requests and the `source_type` of stored documents.

use std::{fmt, str::FromStr};

/// A kind of document. Each kind has exactly one owning service that writes it.
///
/// New kinds are added over time (a minor release), so code outside this crate matches with a
/// wildcard arm; [`Kind::ALL`] lists the kinds this version knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Kind {
    /// ASX company announcements; owned by the provider. The default kind.
    Announcement,
    /// End-of-day prices and derived figures; owned by the provider.
    MarketData,
    /// The consumer's record of the PDFs it downloaded; owned by the consumer.
    AnnouncementDownload,
    /// Dividends paid (ex-date, record and payment dates, amount) and their trailing sum;
    /// owned by the provider.
    Dividends,
}

/// The kind string is not one of the known kinds. The message does not list kinds: which ones
/// are accepted depends on the service, which says so itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a known kind")]
pub struct UnknownKind(pub String);

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::Announcement,
        Kind::MarketData,
        Kind::AnnouncementDownload,
        Kind::Dividends,
    ];

    /// How many kinds this version knows (the length of [`Kind::ALL`]).
    pub const COUNT: usize = Kind::ALL.len();

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Announcement => "announcement",
            Kind::MarketData => "market_data",
            Kind::AnnouncementDownload => "announcement_download",
            Kind::Dividends => "dividends",
        }
    }
}

impl FromStr for Kind {
    type Err = UnknownKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownKind(s.chars().take(64).collect()))
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_unknown_is_named() {
        for k in Kind::ALL {
            assert_eq!(k.as_str().parse::<Kind>().unwrap(), k);
            // Case-insensitive, like identifiers.
            assert_eq!(k.as_str().to_uppercase().parse::<Kind>().unwrap(), k);
        }
        let err = "prices".parse::<Kind>().unwrap_err().to_string();
        assert!(err.contains("\"prices\""), "{err}");
    }
}
