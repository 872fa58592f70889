//! The domain both services and their callers share, with no gRPC and no database: tickers
//! ([`ticker`]: identifiers parsed into `EXCH:CODE`), kinds of document ([`kind`]) and the source
//! key that names one document ([`source_key`]: a kind and a ticker, stored as the text
//! `EXCH:CODE:kind`). The API crate re-exports them; the store speaks them at its boundary.

pub mod kind;
pub mod source_key;
pub mod ticker;

pub use kind::{Kind, UnknownKind};
pub use source_key::{SourceKey, SourceKeyError};
pub use ticker::{Ticker, TickerError};
