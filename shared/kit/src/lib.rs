//! The service kit both services build on (beside the API crate, `documents_api`, and the store,
//! `documents_store`): the service host ([`host`]: start-up and shutdown order), one server
//! builder ([`grpc_server`]) with its accept loop ([`listener`]) and layers ([`observe`],
//! [`request_budget`], [`layers`]), health ([`health`]), serving and draining
//! ([`lifecycle`]), storage errors as gRPC statuses ([`status`]), the background loops'
//! shutdown ([`shutdown`]), who may call which method ([`access`]), access settings and TLS
//! ([`security`]), the secrets kept in ([`secrets`]), metrics ([`metrics`]), logging
//! ([`telemetry`]), span export ([`trace`]) and the database settings ([`config`]).

pub mod access;
pub mod build_info;
pub mod config;
pub mod grpc_server;
pub mod health;
pub mod host;
pub mod layers;
pub mod lifecycle;
pub mod listener;
pub mod metrics;
pub mod observe;
pub mod request_budget;
pub mod secrets;
pub mod security;
pub mod shutdown;
pub mod status;
pub mod switches;
pub mod telemetry;
pub mod trace;
