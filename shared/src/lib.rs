//! What the two services share beyond the API crate ([`documents_api`]) and the store
//! ([`documents_store`], as [`storage`]), both re-exported here under the same names: the service
//! kit, one server builder
//! ([`grpc_server`]) with its accept loop ([`listener`]), layers ([`observe`],
//! [`request_budget`], [`server`]), health ([`server`]), storage errors as gRPC statuses ([`status`]), the background loops' shutdown ([`shutdown`]), security ([`security`]),
//! metrics ([`metrics`]), logging ([`telemetry`]), span export ([`trace`]) and the database
//! settings ([`config`]).

pub use documents_api::{client, kind, proto, provider, ticker, trace_context};
pub use documents_store as storage;

pub mod config;
pub mod grpc_server;
pub mod listener;
pub mod metrics;
pub mod observe;
pub mod request_budget;
pub mod security;
pub mod server;
pub mod shutdown;
pub mod status;
pub mod telemetry;
pub mod trace;

pub use documents_api::{
    ClientConfig, DocumentOptions, DocumentProvider, DocumentProvisioner, DocumentResult,
    ItemError, Kind, Outcome, ProviderClient, Provisioned, Ticker, TickerError,
};
