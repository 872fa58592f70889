//! Test-only switches that turn one of the services' correctness mechanisms off, so the history
//! checker can show it finds what each mechanism prevents. Compiled in only with the
//! `test-switches` feature, which only the test crate enables: shipped builds (the image, `cargo
//! build -p provider-service`) have no switch, and [`off`] is a constant `false` there.
//!
//! With the feature, `DOCUMENTS_TEST_SWITCHES_OFF` names the mechanisms to turn off, comma-separated:
//! [`COALESCE_ACROSS_REPLICAS`], [`COALESCE_IN_PROCESS`], [`FEED_HEARTBEAT`], [`PURGE_REFETCH`],
//! [`ROUND_FENCING`].

/// Fills claim no lease: replicas fetch the same document at once.
pub const COALESCE_ACROSS_REPLICAS: &str = "coalesce-across-replicas";
/// Requests never join a fill running in their process.
pub const COALESCE_IN_PROCESS: &str = "coalesce-in-process";
/// The hit view answers without a recent heartbeat from its change feed.
pub const FEED_HEARTBEAT: &str = "feed-heartbeat";
/// A fill whose write a purge kept stale answers it instead of fetching again.
pub const PURGE_REFETCH: &str = "purge-refetch";
/// A consumer round writes without its lease's token and goes on after losing it.
pub const ROUND_FENCING: &str = "round-fencing";

/// Whether the mechanism `name` is switched off (always false without the feature).
#[cfg(feature = "test-switches")]
pub fn off(name: &str) -> bool {
    static OFF: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    OFF.get_or_init(|| {
        let off: Vec<String> = std::env::var("DOCUMENTS_TEST_SWITCHES_OFF")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if !off.is_empty() {
            tracing::warn!(?off, "TEST SWITCHES: correctness mechanisms are off");
        }
        off
    })
    .iter()
    .any(|s| s == name)
}

/// Whether the mechanism `name` is switched off (always false without the feature).
#[cfg(not(feature = "test-switches"))]
#[inline(always)]
pub const fn off(_name: &str) -> bool {
    false
}
