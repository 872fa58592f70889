//! The document provider: configuration ([`config`]), start-up and shutdown ([`app`]), the gRPC
//! service ([`grpc`]), the provisioning core ([`provisioner`]) with its
//! in-memory view of fresh documents ([`hit_cache`]) and the sources it fills
//! documents from ([`sources`]).

pub mod app;
pub mod config;
pub mod grpc;
pub mod hit_cache;
pub mod metrics;
pub mod provisioner;
pub mod sources;
