//! Refresh-ahead: documents callers ask for often are refreshed shortly before they go stale
//! for the window they are asked with, so a popular document is never a miss. Off unless
//! `PROVIDER_REFRESH_AHEAD_SECS` is set. A document qualifies once asked for
//! `PROVIDER_REFRESH_AHEAD_MIN_CALLS` times since it was last refreshed ahead; its refresh is an
//! ordinary fill (coalesced in the process and across replicas, under the fill limits and the
//! sources' rate limits), and at most half the global fill limit runs ahead at once, so
//! callers' own fills always have room.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use chrono::Duration as ChronoDuration;
use documents_api::{Kind, Ticker};
use documents_store::{DocumentStore, SourceKey};
use tokio::sync::Semaphore;

use super::{
    fill::Seen,
    fills::Fills,
    request::{RefreshAhead, Request},
};
use crate::metrics::METRICS;

/// Documents remembered at most (the most asked for first come first served; a full table
/// takes no new ones until entries are refreshed and forgotten).
const MAX_TRACKED: usize = 10_000;

/// How often the popular documents are checked.
const TICK: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
struct Demand {
    calls: u32,
    /// The shortest non-zero window the document was asked with.
    window_hours: u32,
}

/// What callers ask for, per document.
#[derive(Debug, Default)]
pub struct Popularity {
    asked: Mutex<HashMap<SourceKey, Demand>>,
}

impl Popularity {
    /// Counts a call for the document (`cache_hours` 0 asks for no window: not counted).
    pub fn asked(&self, key: &SourceKey, cache_hours: u32) {
        if cache_hours == 0 {
            return;
        }
        let mut asked = self.asked.lock().expect("popularity lock");
        let full = asked.len() >= MAX_TRACKED;
        match asked.get_mut(key) {
            Some(a) => {
                a.calls = a.calls.saturating_add(1);
                a.window_hours = a.window_hours.min(cache_hours);
            }
            None if !full => {
                asked.insert(
                    key.clone(),
                    Demand {
                        calls: 1,
                        window_hours: cache_hours,
                    },
                );
            }
            None => {}
        }
    }

    fn popular(&self, min_calls: u32) -> Vec<(SourceKey, Demand)> {
        let asked = self.asked.lock().expect("popularity lock");
        asked
            .iter()
            .filter(|(_, a)| a.calls >= min_calls)
            .map(|(k, a)| (k.clone(), a.clone()))
            .collect()
    }

    fn forget(&self, key: &SourceKey) {
        self.asked.lock().expect("popularity lock").remove(key);
    }
}

/// Runs refresh-ahead over `fills` until they are dropped or the process stops (`background`),
/// at most half of `fill_concurrency` ahead at once.
pub fn spawn(
    fills: &Arc<Fills>,
    store: Arc<dyn DocumentStore>,
    popularity: Arc<Popularity>,
    tuning: RefreshAhead,
    fill_concurrency: usize,
    background: &documents_kit::shutdown::Background,
) {
    let weak: Weak<Fills> = Arc::downgrade(fills);
    let ahead = Arc::new(Semaphore::new((fill_concurrency / 2).max(1)));
    background.spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(fills) = weak.upgrade() else { return };
            round(&fills, &*store, &popularity, tuning, &ahead).await;
        }
    });
}

/// Starts a refresh for every popular document within `margin` of going stale.
async fn round(
    fills: &Arc<Fills>,
    store: &dyn DocumentStore,
    popularity: &Arc<Popularity>,
    tuning: RefreshAhead,
    ahead: &Arc<Semaphore>,
) {
    let mut by_kind: HashMap<Kind, Vec<(SourceKey, Demand)>> = HashMap::new();
    for (key, a) in popularity.popular(tuning.min_calls) {
        by_kind.entry(key.kind()).or_default().push((key, a));
    }
    let margin = ChronoDuration::from_std(tuning.margin).unwrap_or_default();
    for (kind, docs) in by_kind {
        let keys: Vec<SourceKey> = docs.iter().map(|(k, _)| k.clone()).collect();
        let Ok(lookup) = store.lookup(&keys).await else {
            return; // The database is away: try again next tick.
        };
        let heads: HashMap<&SourceKey, _> = lookup.heads.iter().map(|h| (&h.key, h)).collect();
        for (key, a) in docs {
            let Some(head) = heads.get(&key) else {
                continue;
            };
            let window = ChronoDuration::hours(i64::from(a.window_hours));
            let due = head.invalidated || lookup.now - head.last_synced >= window - margin;
            if !due || fills.filling(&key) {
                continue;
            }
            let Ok(permit) = ahead.clone().try_acquire_owned() else {
                return; // As many ahead as allowed: the rest next tick.
            };
            popularity.forget(&key);
            tracing::info!(%key, version = head.version, window_hours = a.window_hours, "refreshing ahead");
            // An ordinary fill, as if a caller had seen the version at the lookup.
            let req = Request {
                kind,
                cache_hours: a.window_hours,
                force_refresh: false,
                stale_if_error_hours: None,
                stale_while_revalidate_hours: None,
                refresh_ahead: true,
            };
            let seen = Seen {
                at: lookup.now,
                version: head.version,
            };
            let ticker: Ticker = key.ticker().clone();
            let refresh = fills.fill(req, key, ticker, tokio::time::Instant::now(), seen);
            tokio::spawn(async move {
                let ok = refresh.await.is_ok();
                METRICS.refreshed_ahead(kind.as_str(), ok);
                drop(permit);
            });
        }
    }
}
