//! Everything the provider and the consumer share: the generated gRPC code ([`proto`]), the
//! domain types ([`ticker`], [`kind`], [`provider`]), the storage layer ([`storage`]), the
//! provider client ([`client`]) and server/telemetry plumbing ([`server`], [`telemetry`]).

pub mod client;
pub mod config;
pub mod grpc_server;
pub mod kind;
pub mod listener;
pub mod metrics;
pub mod observe;
pub mod proto;
pub mod provider;
pub mod request_budget;
pub mod security;
pub mod server;
pub mod storage;
pub mod telemetry;
pub mod ticker;
pub mod trace;

pub use client::{ClientConfig, ProviderClient};
pub use kind::Kind;
pub use provider::{
    DocumentOptions, DocumentProvider, DocumentProvisioner, DocumentResult, ItemError, Outcome,
    Provisioned,
};
pub use ticker::{Ticker, TickerError};
