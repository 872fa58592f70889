//! The document provider: configuration ([`config`]), start-up and shutdown ([`app`]), the gRPC
//! services ([`grpc`], with [`hit_log`] summing up its hits, and [`admin`] for operators) and
//! their reading of a call into domain types ([`validate`]), the provisioning core
//! ([`provisioner`]: plans, fills, the in-memory view of fresh documents, refresh-ahead) and the
//! sources it fills documents from ([`sources`]).

pub mod admin;
pub mod app;
pub mod config;
pub mod grpc;
pub mod hit_log;
pub mod metrics;
pub mod provisioner;
pub mod sources;
pub mod validate;
