//! The negative cache: a failed fill's error is remembered briefly, so a failing upstream is
//! not asked again for the same document until it expires.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use documents_api::ItemError;
use documents_store::SourceKey;
use tokio::time::Instant;

/// Failures of fills, per document, each until its expiry.
pub struct NegativeCache {
    ttl: Duration,
    failures: Mutex<HashMap<SourceKey, (Instant, ItemError)>>,
}

impl NegativeCache {
    /// Remembers failures for `ttl` (zero: not at all).
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            failures: Mutex::default(),
        }
    }

    /// The failure to answer for `key` instead of trying again, saying when it will be retried.
    pub fn get(&self, key: &SourceKey) -> Option<ItemError> {
        let mut map = self.failures.lock().ok()?;
        match map.get(key) {
            Some((until, e)) if *until > Instant::now() => {
                let wait = until.duration_since(Instant::now());
                Some(
                    ItemError {
                        message: format!(
                            "{} (failed moments ago; will retry in {} ms)",
                            e.message,
                            wait.as_millis()
                        ),
                        ..e.clone()
                    }
                    .retry_after(wait),
                )
            }
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }

    /// The failure remembered for `key`, as it was, and how long it is still answered.
    pub fn peek(&self, key: &SourceKey) -> Option<(ItemError, Duration)> {
        let map = self.failures.lock().ok()?;
        map.get(key)
            .filter(|(until, _)| *until > Instant::now())
            .map(|(until, e)| (e.clone(), until.duration_since(Instant::now())))
    }

    /// Remembers `e` as `key`'s failure (and forgets expired ones).
    pub fn remember(&self, key: &SourceKey, e: &ItemError) {
        if self.ttl.is_zero() {
            return;
        }
        if let Ok(mut map) = self.failures.lock() {
            let now = Instant::now();
            map.retain(|_, (until, _)| *until > now);
            map.insert(key.clone(), (now + self.ttl, e.clone()));
        }
    }

    /// How long a failure is remembered.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}
