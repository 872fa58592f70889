//! The service kit both services build on (beside the API crate, `documents_api`, and the store,
//! `documents_store`): one server builder ([`grpc_server`]) with its accept loop ([`listener`]),
//! layers ([`observe`], [`request_budget`], [`server`]), health ([`server`]), storage errors as
//! gRPC statuses ([`status`]), the background loops' shutdown ([`shutdown`]), who may call which
//! method ([`access`]), access settings and TLS ([`security`]), the secrets kept in
//! ([`secrets`]), metrics ([`metrics`]), logging ([`telemetry`]), span export
//! ([`trace`]) and the database settings ([`config`]).

pub mod access;
pub mod config;
pub mod grpc_server;
pub mod listener;
pub mod metrics;
pub mod observe;
pub mod request_budget;
pub mod secrets;
pub mod security;
pub mod server;
pub mod shutdown;
pub mod status;
pub mod switches;
pub mod telemetry;
pub mod trace;
