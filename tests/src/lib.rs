//! End-to-end test support: the sample exchange ([`sample_exchange`]) and the harness that
//! starts the real binaries on free ports with a fresh database each ([`harness`]).

pub mod harness;
pub mod sample_exchange;
