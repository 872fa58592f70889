//! The periodic line that sums up single-identifier cache hits: each hit is counted here (an
//! atomic add, no log line on the hot path) and every interval one INFO line per kind says how
//! many there were, `hits answered`. Misses, refreshes, stale answers and errors keep a line
//! each; batches keep their summary line.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use documents_api::Kind;

/// Hits since the last line, by kind (in the order of [`Kind::ALL`]).
pub struct HitTally([AtomicU64; Kind::COUNT]);

/// The process's tally.
pub static HITS: HitTally = HitTally([const { AtomicU64::new(0) }; Kind::COUNT]);

impl HitTally {
    /// Counts one hit of `kind` (a kind's name as answered).
    pub fn count(&self, kind: &str) {
        if let Some(i) = Kind::ALL.iter().position(|k| k.as_str() == kind) {
            self.0[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The hits since the last call, by kind, and starts counting again.
    pub fn take(&self) -> Vec<(Kind, u64)> {
        Kind::ALL
            .iter()
            .zip(&self.0)
            .map(|(k, n)| (*k, n.swap(0, Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// Writes the `hits answered` lines every `interval` (nothing when there was no hit), until the
/// process stops (`background`).
pub fn start(interval: Duration, background: &documents_kit::shutdown::Background) {
    background.spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            tick.tick().await;
            for (kind, hits) in HITS.take() {
                tracing::info!(
                    kind = kind.as_str(),
                    hits,
                    interval_secs = interval.as_secs(),
                    "hits answered"
                );
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_are_counted_by_kind_and_taken_once() {
        let tally = HitTally([const { AtomicU64::new(0) }; Kind::COUNT]);
        tally.count("announcement");
        tally.count("announcement");
        tally.count("market_data");
        tally.count("no such kind");
        assert_eq!(
            tally.take(),
            vec![(Kind::Announcement, 2), (Kind::MarketData, 1)]
        );
        assert_eq!(tally.take(), vec![]);
    }
}
