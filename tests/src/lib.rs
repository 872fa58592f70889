//! End-to-end test support: the harness that starts
//! the real binaries on free ports with a fresh database each ([`harness`]), a recorded mixed
//! load ([`load`]), the history checker ([`history`]), a real PgBouncer ([`pgbouncer`]) and
//! HAProxy ([`haproxy`]), process figures from /proc ([`procfs`]) and the reliability records
//! ([`record`]).

pub mod haproxy;
pub mod harness;
pub mod history;
pub mod load;
pub mod pgbouncer;
pub mod procfs;
pub mod record;
