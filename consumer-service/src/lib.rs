//! The consumer: configuration ([`config`]), start-up and shutdown ([`app`]), the gRPC service
//! ([`grpc`]), the job it does per ticker ([`job`]), PDF downloads ([`download`]) and CLI
//! report printing ([`report`]).

pub mod app;
pub mod config;
pub mod download;
pub mod grpc;
pub mod job;
pub mod metrics;
pub mod report;
