//! Ticker identifiers: parsing callers' strings into the canonical `EXCH:CODE` form.
//!
//! Accepted forms (after trimming and upper-casing):
//! - `EXCH:CODE`, split at the first colon; the exchange must be a known one;
//! - `EXCH.CODE`, only when the part before the first dot is a known exchange;
//! - a bare `CODE`, which gets the default exchange.
//!
//! Parsing never panics: every input either gives a [`Ticker`] or a [`TickerError`] that names
//! the identifier and the rule it broke.

use std::fmt;

/// Exchanges the parser knows. `EXCH:CODE` and `EXCH.CODE` must use one of these.
pub const KNOWN_EXCHANGES: &[&str] = &["ASX", "NYSE", "NASDAQ", "LSE", "TSX", "XETRA"];

/// The exchange a bare code belongs to unless configured otherwise.
pub const DEFAULT_EXCHANGE: &str = "ASX";

/// Longest identifier accepted, in characters, after trimming.
pub const MAX_IDENTIFIER_LEN: usize = 32;

/// Longest ticker code accepted. With the longest exchange name the canonical form stays within
/// [`MAX_IDENTIFIER_LEN`], so a canonical identifier always parses back to itself.
pub const MAX_CODE_LEN: usize = 20;

/// A parsed ticker in canonical form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticker {
    exchange: String,
    code: String,
}

/// Why an identifier is not a ticker. The message names the identifier and the rule; callers
/// put the request field in front (`identifier: ...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TickerError {
    #[error("is empty: a ticker such as \"ASX:GNP\" is required")]
    Empty,
    #[error("{identifier:?} is too long: {len} characters, at most {max} allowed")]
    TooLong {
        identifier: String,
        len: usize,
        max: usize,
    },
    #[error(
        "{identifier:?} has character {ch:?} at position {position}: \
         only characters in [A-Z0-9.] are allowed in a ticker code"
    )]
    InvalidCharacter {
        identifier: String,
        ch: char,
        position: usize,
    },
    #[error(
        "{identifier:?} names unknown exchange {exchange:?}: \
         expected one of ASX, NYSE, NASDAQ, LSE, TSX, XETRA"
    )]
    UnknownExchange {
        identifier: String,
        exchange: String,
    },
    #[error(
        "{identifier:?} has no exchange before the colon: expected EXCH:CODE with EXCH one of \
         ASX, NYSE, NASDAQ, LSE, TSX, XETRA, or a bare CODE"
    )]
    MissingExchange { identifier: String },
    #[error("{identifier:?} has an empty code: expected EXCH:CODE")]
    EmptyCode { identifier: String },
    #[error("{identifier:?} has a code of {len} characters: at most {max} allowed")]
    CodeTooLong {
        identifier: String,
        len: usize,
        max: usize,
    },
    #[error(
        "{identifier:?} has a misplaced dot in code {code:?}: a dot may only join two parts of \
         a code, as in \"BRK.B\" (not first, last, or twice in a row)"
    )]
    MisplacedDot { identifier: String, code: String },
}

impl Ticker {
    /// Parses an identifier with [`DEFAULT_EXCHANGE`] for bare codes.
    pub fn parse(identifier: &str) -> Result<Self, TickerError> {
        Self::parse_with_default(identifier, DEFAULT_EXCHANGE)
    }

    /// Parses an identifier, giving bare codes `default_exchange`.
    pub fn parse_with_default(
        identifier: &str,
        default_exchange: &str,
    ) -> Result<Self, TickerError> {
        let trimmed = identifier.trim();
        if trimmed.is_empty() {
            return Err(TickerError::Empty);
        }
        let len = trimmed.chars().count();
        if len > MAX_IDENTIFIER_LEN {
            return Err(TickerError::TooLong {
                identifier: truncate_for_message(trimmed),
                len,
                max: MAX_IDENTIFIER_LEN,
            });
        }
        let upper = trimmed.to_ascii_uppercase();
        let (exchange, code, code_offset) = match upper.split_once(':') {
            Some(("", _)) => {
                return Err(TickerError::MissingExchange {
                    identifier: trimmed.to_string(),
                })
            }
            Some((exchange, code)) => {
                if !is_known_exchange(exchange) {
                    return Err(TickerError::UnknownExchange {
                        identifier: trimmed.to_string(),
                        exchange: exchange.to_string(),
                    });
                }
                (exchange.to_string(), code, exchange.chars().count() + 1)
            }
            None => match upper.split_once('.') {
                Some((exchange, code)) if is_known_exchange(exchange) => {
                    (exchange.to_string(), code, exchange.chars().count() + 1)
                }
                _ => (
                    default_exchange.trim().to_ascii_uppercase(),
                    upper.as_str(),
                    0,
                ),
            },
        };
        if code.is_empty() {
            return Err(TickerError::EmptyCode {
                identifier: trimmed.to_string(),
            });
        }
        if let Some((i, ch)) = code
            .chars()
            .enumerate()
            .find(|(_, c)| !(c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '.'))
        {
            return Err(TickerError::InvalidCharacter {
                identifier: trimmed.to_string(),
                ch,
                position: code_offset + i,
            });
        }
        let code_len = code.chars().count();
        if code_len > MAX_CODE_LEN {
            return Err(TickerError::CodeTooLong {
                identifier: trimmed.to_string(),
                len: code_len,
                max: MAX_CODE_LEN,
            });
        }
        if code.starts_with('.') || code.ends_with('.') || code.contains("..") {
            return Err(TickerError::MisplacedDot {
                identifier: trimmed.to_string(),
                code: code.to_string(),
            });
        }
        Ok(Ticker {
            exchange,
            code: code.to_string(),
        })
    }

    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    pub fn code(&self) -> &str {
        &self.code
    }

    /// A ticker from its canonical text, as this crate wrote it (`EXCH:CODE`, from a stored
    /// source key): split at the first colon, both parts non-empty, nothing else checked (the
    /// exchange may be one a deployment configured as its default).
    pub fn from_canonical(text: &str) -> Option<Self> {
        let (exchange, code) = text.split_once(':')?;
        (!exchange.is_empty() && !code.is_empty() && !code.contains(':')).then(|| Ticker {
            exchange: exchange.to_string(),
            code: code.to_string(),
        })
    }
}

impl fmt::Display for Ticker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.exchange, self.code)
    }
}

fn is_known_exchange(exchange: &str) -> bool {
    KNOWN_EXCHANGES.contains(&exchange)
}

/// Keeps error messages bounded when a caller sends a huge identifier.
fn truncate_for_message(s: &str) -> String {
    const KEEP: usize = 40;
    if s.chars().count() <= KEEP {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(KEEP).collect();
        out.push('…');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn canon(s: &str) -> String {
        Ticker::parse(s).unwrap().to_string()
    }

    #[test]
    fn accepted_forms_give_the_canonical_form() {
        assert_eq!(canon("ASX:GNP"), "ASX:GNP");
        assert_eq!(canon("  asx:gnp "), "ASX:GNP");
        assert_eq!(canon("GNP"), "ASX:GNP");
        assert_eq!(canon("bhp"), "ASX:BHP");
        assert_eq!(canon("NYSE.BRK.B"), "NYSE:BRK.B");
        assert_eq!(canon("BRK.B"), "ASX:BRK.B");
        assert_eq!(canon("nasdaq:aapl"), "NASDAQ:AAPL");
        assert_eq!(
            Ticker::parse_with_default("shop", "tsx")
                .unwrap()
                .to_string(),
            "TSX:SHOP"
        );
        assert_eq!(
            Ticker::from_canonical("ASX:GNP"),
            Some(Ticker::parse("ASX:GNP").unwrap())
        );
        assert_eq!(Ticker::from_canonical("GNP"), None);
        assert_eq!(Ticker::from_canonical("ASX:GNP:announcement"), None);
    }

    #[test]
    fn each_rule_has_its_own_error() {
        assert_eq!(Ticker::parse("   "), Err(TickerError::Empty));
        assert!(matches!(
            Ticker::parse(&"A".repeat(33)),
            Err(TickerError::TooLong { len: 33, .. })
        ));
        let err = Ticker::parse("bad id!").unwrap_err();
        assert_eq!(
            err,
            TickerError::InvalidCharacter {
                identifier: "bad id!".into(),
                ch: ' ',
                position: 3
            }
        );
        assert!(err.to_string().contains("[A-Z0-9.]"), "{err}");
        assert!(matches!(
            Ticker::parse("FOO:BAR"),
            Err(TickerError::UnknownExchange { .. })
        ));
        assert!(matches!(
            Ticker::parse("ASX:"),
            Err(TickerError::EmptyCode { .. })
        ));
        assert!(matches!(
            Ticker::parse(":GNP"),
            Err(TickerError::MissingExchange { .. })
        ));
        assert!(Ticker::parse(":GNP")
            .unwrap_err()
            .to_string()
            .contains("no exchange"));
        // Dots only join parts of a code: these cost no upstream request.
        for dotted in ["ASX:...", "ASX..GNP", "GNP.", ".GNP", "ASX:BRK..B", "."] {
            assert!(
                matches!(Ticker::parse(dotted), Err(TickerError::MisplacedDot { .. })),
                "{dotted}: {:?}",
                Ticker::parse(dotted)
            );
        }
        assert!(matches!(
            Ticker::parse("ASX:A:B"),
            Err(TickerError::InvalidCharacter {
                ch: ':',
                position: 5,
                ..
            })
        ));
    }

    #[test]
    fn a_long_bare_code_cannot_outgrow_its_canonical_form() {
        // Found by the fuzzer: 30 characters bare, 34 with the exchange in front.
        let err = Ticker::parse("saggsaNNeeaggs.....aNeegaSXNp.").unwrap_err();
        assert!(
            matches!(
                err,
                TickerError::CodeTooLong {
                    len: 30,
                    max: 20,
                    ..
                }
            ),
            "{err}"
        );
        let t = Ticker::parse("ABCDEFGHIJKLMNOPQRST").unwrap();
        assert_eq!(Ticker::parse(&t.to_string()).unwrap(), t);
    }

    #[test]
    fn huge_identifiers_keep_the_message_short() {
        let err = Ticker::parse(&"x".repeat(10_000)).unwrap_err().to_string();
        assert!(err.len() < 200, "{err}");
        assert!(err.contains("at most 32"), "{err}");
    }

    proptest! {
        #[test]
        fn never_panics_and_output_is_canonical(s in "\\PC*") {
            if let Ok(t) = Ticker::parse(&s) {
                let text = t.to_string();
                prop_assert!(KNOWN_EXCHANGES.contains(&t.exchange()));
                prop_assert!(t.code().chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '.'));
                prop_assert!(!t.code().starts_with('.') && !t.code().ends_with('.') && !t.code().contains(".."));
                // Canonical form is a fixed point.
                prop_assert_eq!(Ticker::parse(&text).unwrap(), t);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let s = String::from_utf8_lossy(&bytes);
            let _ = Ticker::parse(&s);
        }

        #[test]
        fn long_codes_are_refused_or_round_trip(code in "[A-Za-z0-9.]{1,34}", prefix in proptest::sample::select(vec!["", "ASX:", "NASDAQ:", "lse."])) {
            if let Ok(t) = Ticker::parse(&format!("{prefix}{code}")) {
                prop_assert_eq!(Ticker::parse(&t.to_string()).unwrap(), t);
            }
        }

        #[test]
        fn valid_codes_round_trip(code in "[A-Z0-9]{1,10}", exch in proptest::sample::select(KNOWN_EXCHANGES)) {
            let t = Ticker::parse(&format!("{exch}:{code}")).unwrap();
            prop_assert_eq!(t.to_string(), format!("{exch}:{code}"));
        }
    }
}
