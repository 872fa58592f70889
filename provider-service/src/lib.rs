//! The document provider: configuration ([`config`]), start-up and shutdown ([`app`]), the gRPC
//! service ([`grpc`]), the provisioning core ([`provisioner`]) and the sources it fills
//! documents from ([`sources`]).

pub mod app;
pub mod config;
pub mod grpc;
pub mod provisioner;
pub mod sources;
