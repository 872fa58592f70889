//! The negative cache: a failed fill's error is remembered briefly, so a failing upstream is
//! not asked again for the same document until it expires.

use super::*;

impl FillContext {
    pub(super) fn cached_failure(&self, key: &FillKey) -> Option<ItemError> {
        let mut map = self.negative.lock().ok()?;
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

    pub(super) fn remember_failure(&self, key: &FillKey, e: &ItemError) {
        let ttl = self.settings.negative_cache_ttl;
        if ttl.is_zero() {
            return;
        }
        if let Ok(mut map) = self.negative.lock() {
            let now = Instant::now();
            map.retain(|_, (until, _)| *until > now);
            map.insert(key.clone(), (now + ttl, e.clone()));
        }
    }
}
