//! The document provider's API for callers: the generated gRPC code ([`proto`]), identifiers
//! ([`ticker`]), kinds ([`kind`]) and source keys ([`source_key`]) from the domain crate, the `DocumentProvider` trait with its options and results
//! ([`provider`]), a tonic client implementing it ([`client`]), and W3C trace context
//! ([`trace_context`]) the client carries. No database, server or command-line stack: a caller's
//! build pulls in tonic's client and little else.
//!
//! ```no_run
//! use documents_api::{DocumentOptions, DocumentProvider, ProviderClient};
//!
//! # async fn run() -> anyhow::Result<()> {
//! let client = ProviderClient::connect("http://127.0.0.1:50051")?;
//! let doc = client
//!     .get_document("ASX:GNP", &DocumentOptions::new().cache_hours(24))
//!     .await?;
//! println!("{} v{} fresh={}", doc.document_id, doc.version, doc.fresh);
//! # Ok(())
//! # }
//! ```

pub mod client;
pub mod proto;
pub mod provider;
pub mod trace_context;

/// Tickers, kinds and source keys: the domain crate's, under the names callers know.
pub use documents_domain::{kind, source_key, ticker};

pub use client::{ClientConfig, ProviderClient};
pub use documents_domain::{SourceKey, Ticker, TickerError};
pub use kind::Kind;
pub use provider::{
    DocumentOptions, DocumentProvider, DocumentProvisioner, DocumentResult, ItemError, Outcome,
    Provisioned,
};
