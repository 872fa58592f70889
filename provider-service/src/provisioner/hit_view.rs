//! The in-memory view of fresh documents that lets a hit skip the database round trip.
//!
//! It is only used where the database announces changes: PostgreSQL each document's (LISTEN/NOTIFY
//! through a trigger on `documents`), so an entry is dropped within milliseconds of any write by
//! any process; SQLite only that something was committed (`PRAGMA data_version`, read every
//! 100 ms), which empties the view. While the change feed is down the cache is empty and unused.
//!
//! Its staleness is bounded whatever the feed does. The feed sends itself a heartbeat through
//! the database every 250 ms; notifications arrive in commit order, so a heartbeat sent at `s`
//! that came back proves every change committed before `s` has been applied here. The view
//! answers only while its latest returned heartbeat was sent less than [`STALENESS_BOUND`] ago
//! (otherwise the caller reads the database), and no entry is answered once it is older than
//! its maximum age, which bounds writes that bypass the trigger too. Freshness is judged
//! against an estimate of the database's clock (measured at every lookup) with a safety margin
//! on the side of "not fresh", so a cached answer never claims fresh for a document that is not.
//! Entries only ever move to higher versions, so this process never answers a version older
//! than one it has answered.
//!
//! Its size is bounded (`PROVIDER_HIT_CACHE_MAX_ENTRIES`): when full, the least recently used
//! eighth is evicted, so a working set larger than the bound keeps its hottest part in memory
//! instead of starting over. Eviction forgets what the view knew of a document (its version,
//! its last change); so a read that began before an evicted entry was last changed or
//! remembered is not remembered for a document the view no longer holds (the eviction floor).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, RwLock,
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use documents_store::{Change, DocumentHead, SourceKey};
use tokio::sync::broadcast;

use crate::metrics::METRICS;

/// Entries kept at most by default (`PROVIDER_HIT_CACHE_MAX_ENTRIES`).
pub const DEFAULT_MAX_ENTRIES: usize = 200_000;

/// Added to the clock estimate's uncertainty before judging freshness.
const SAFETY_MARGIN_MS: u64 = 1_000;

/// The view answers only while its latest returned heartbeat was sent less than this long ago:
/// a hit reflects every change committed more than this long before it was answered.
pub const STALENESS_BOUND: Duration = Duration::from_millis(750);

type Key = SourceKey;

/// What the cache knows of one document: the highest version announced or read, and the head
/// if it may be served (a change announced after the head was read leaves only the version).
#[derive(Default)]
struct Slot {
    version: i64,
    /// The view's sequence number at the document's latest announced change.
    changed: u64,
    /// The view's sequence number when the document's entry last changed (an announcement or a
    /// remembered head): an eviction raises the floor to it.
    touched: u64,
    /// The head and when it was stored.
    head: Option<(DocumentHead, tokio::time::Instant)>,
    /// The version this process wrote and remembered, whose own announcement is still to come:
    /// that announcement keeps the head (it announces what the head already is).
    own_write: Option<i64>,
    /// When a hit last used the entry (milliseconds since the view began), for eviction; an
    /// atomic so that hits, which share the read lock, can mark it.
    used: AtomicU64,
}

/// The entries, with the sequence numbers that judge whether a read may be remembered.
#[derive(Default)]
struct Entries {
    map: HashMap<Key, Slot>,
    /// Bumped by every announcement and every remembered head.
    seq: u64,
    /// The highest `touched` of any evicted entry: a read of a document the view does not hold
    /// is remembered only if it began at or after this.
    floor: u64,
}

impl Entries {
    /// The document's entry, made room for if it is new.
    fn slot(&mut self, key: &Key, max_entries: usize, now_ms: u64) -> &mut Slot {
        if !self.map.contains_key(key) {
            let evicted = if self.map.len() >= max_entries {
                self.evict(max_entries)
            } else {
                0
            };
            let slot = Slot {
                used: AtomicU64::new(now_ms),
                ..Slot::default()
            };
            self.map.insert(key.clone(), slot);
            METRICS.hit_view(self.map.len(), evicted);
        }
        self.map.get_mut(key).expect("just inserted")
    }

    /// Evicts the least recently used eighth of the bound (at least one entry); answers how
    /// many.
    fn evict(&mut self, max_entries: usize) -> usize {
        let count = (max_entries / 8).clamp(1, self.map.len());
        let mut by_use: Vec<(u64, &Key)> = self
            .map
            .iter()
            .map(|(k, s)| (s.used.load(Ordering::Relaxed), k))
            .collect();
        by_use.select_nth_unstable_by_key(count - 1, |(used, _)| *used);
        let victims: Vec<Key> = by_use[..count].iter().map(|(_, k)| (*k).clone()).collect();
        for key in &victims {
            if let Some(slot) = self.map.remove(key) {
                self.floor = self.floor.max(slot.touched);
            }
        }
        victims.len()
    }
}

/// What memory can answer for a call ([`HitView::answerable`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Held {
    /// Fresh within the caller's window: a hit.
    Fresh(DocumentHead),
    /// Past the caller's window but within its stale-while-revalidate window, with the
    /// database clock's estimate now.
    Stale(DocumentHead, DateTime<Utc>),
}

/// What a read must show to be remembered: nothing changed since it began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    epoch: u64,
    seq: u64,
}

pub struct HitView {
    entries: RwLock<Entries>,
    /// Entries kept at most.
    max_entries: usize,
    /// Bumped whenever the feed restarts; reads begun in an older epoch are not remembered.
    epoch: AtomicU64,
    /// The change feed is connected (entries are trustworthy).
    live: AtomicBool,
    /// The database clock as last measured, against the monotonic clock (which never steps).
    clock: Mutex<Option<ClockSample>>,
    /// Microseconds after `base` until which the feed is proven caught up (latest returned
    /// heartbeat's send time + [`STALENESS_BOUND`]); 0: not proven.
    caught_up_until: AtomicU64,
    base: tokio::time::Instant,
    /// No entry is answered past this age.
    max_age: Duration,
}

/// One reading of the database clock: `db_at` was the database's time at local instant `at`,
/// give or take `uncertainty`.
#[derive(Debug, Clone, Copy)]
struct ClockSample {
    db_at: DateTime<Utc>,
    at: Instant,
    uncertainty: Duration,
}

impl ClockSample {
    /// The uncertainty now: the reading's, plus 100 ppm of drift since it was taken.
    fn uncertainty_now(&self) -> Duration {
        self.uncertainty + self.at.elapsed() / 10_000
    }
}

impl HitView {
    /// A cache fed by `changes` whose entries are answered for at most `max_age`, holding at
    /// most `max_entries` (at least one); it starts unused until the feed connects and its
    /// first heartbeat comes back.
    pub fn new(
        changes: broadcast::Receiver<Change>,
        max_age: Duration,
        max_entries: usize,
    ) -> Arc<Self> {
        let cache = Arc::new(Self {
            entries: RwLock::new(Entries::default()),
            max_entries: max_entries.max(1),
            epoch: AtomicU64::new(0),
            live: AtomicBool::new(false),
            clock: Mutex::new(None),
            caught_up_until: AtomicU64::new(0),
            base: tokio::time::Instant::now(),
            max_age,
        });
        tokio::spawn(Self::follow(Arc::downgrade(&cache), changes));
        cache
    }

    async fn follow(cache: std::sync::Weak<Self>, mut changes: broadcast::Receiver<Change>) {
        loop {
            let change = changes.recv().await;
            let Some(cache) = cache.upgrade() else { return };
            match change {
                Ok(Change::Document { key, version }) => {
                    let now_ms = cache.now_ms();
                    let mut entries = cache.entries.write().expect("hit view lock");
                    entries.seq += 1;
                    let seq = entries.seq;
                    let slot = entries.slot(&key, cache.max_entries, now_ms);
                    // This process's own write coming back: the head is that write. The first
                    // announcement of that version is ours (announcements come in commit order,
                    // and another writer would have raised the version).
                    if slot.own_write.take().is_some_and(|v| v == version)
                        && slot
                            .head
                            .as_ref()
                            .is_some_and(|(h, _)| h.version == version)
                    {
                        continue;
                    }
                    // Any other change (even one that keeps the version, like a hand-made
                    // UPDATE) drops the head; a deletion pins the key out of memory until a
                    // reset.
                    let version = if version == 0 { i64::MAX } else { version };
                    slot.version = slot.version.max(version);
                    slot.changed = seq;
                    slot.touched = seq;
                    slot.head = None;
                }
                Ok(Change::Heartbeat { sent }) => {
                    let until = (sent + STALENESS_BOUND).saturating_duration_since(cache.base);
                    cache
                        .caught_up_until
                        .fetch_max(until.as_micros() as u64, Ordering::AcqRel);
                }
                Ok(Change::Reset) => {
                    cache.start_over();
                    cache.live.store(true, Ordering::Release);
                }
                Ok(Change::Lost) => {
                    cache.live.store(false, Ordering::Release);
                    cache.start_over();
                }
                Err(broadcast::error::RecvError::Lagged(_)) => cache.start_over(),
                Err(broadcast::error::RecvError::Closed) => {
                    cache.live.store(false, Ordering::Release);
                    cache.start_over();
                    return;
                }
            }
        }
    }

    fn start_over(&self) {
        let mut entries = self.entries.write().expect("hit view lock");
        // Only a heartbeat sent after this point proves the feed caught up again.
        self.caught_up_until.store(0, Ordering::Release);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        entries.map.clear();
        entries.floor = entries.seq;
        METRICS.hit_view(0, 0);
    }

    /// Milliseconds since the view began (the clock of `Slot::used`).
    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// Documents held in memory now (at most the bound).
    pub fn size(&self) -> usize {
        self.entries.read().expect("hit view lock").map.len()
    }

    /// The stamp to pass to [`HitView::remember`] for a read of the document that starts now.
    pub fn stamp(&self, _key: &SourceKey) -> Stamp {
        let entries = self.entries.read().expect("hit view lock");
        Stamp {
            epoch: self.epoch.load(Ordering::Acquire),
            seq: entries.seq,
        }
    }

    /// Records the database clock `db_now` read by a query sent at `sent` that returned now.
    pub fn observe_clock(&self, db_now: DateTime<Utc>, sent: Instant) {
        let rtt = sent.elapsed();
        let sample = ClockSample {
            db_at: db_now,
            at: sent + rtt / 2,
            uncertainty: rtt / 2 + Duration::from_micros(1),
        };
        let mut clock = self.clock.lock().expect("clock lock");
        // A reading replaces the kept one when it is at least as tight as the kept one is now.
        if clock.is_none_or(|c| sample.uncertainty <= c.uncertainty_now()) {
            *clock = Some(sample);
        }
    }

    /// The database's clock now: (the earliest it can be, the estimate, the latest it can be).
    fn db_now_bounds(&self) -> Option<(DateTime<Utc>, DateTime<Utc>, DateTime<Utc>)> {
        let c = (*self.clock.lock().expect("clock lock"))?;
        let estimate = c.db_at + ChronoDuration::from_std(c.at.elapsed()).ok()?;
        let spread =
            ChronoDuration::from_std(c.uncertainty_now() + Duration::from_millis(SAFETY_MARGIN_MS))
                .ok()?;
        Some((estimate - spread, estimate, estimate + spread))
    }

    /// A cached head that is fresh within `cache_hours`, if any.
    pub fn fresh(&self, key: &SourceKey, cache_hours: u32) -> Option<DocumentHead> {
        match self.answerable(key, cache_hours, None) {
            Some(Held::Fresh(head)) => Some(head),
            _ => None,
        }
    }

    /// What memory can answer for a call with window `cache_hours` and, if it asked for one, a
    /// stale-while-revalidate window of `stale_hours` more: a hit, a stale answer, or nothing
    /// (the call reads the database). Judged against the database clock's bounds, each on the
    /// side of reading the database: fresh only if fresh at the latest the clock can be; stale
    /// only if past the window at the earliest and within the stale window at the latest.
    pub fn answerable(
        &self,
        key: &SourceKey,
        cache_hours: u32,
        stale_hours: Option<u32>,
    ) -> Option<Held> {
        if cache_hours == 0 || !self.live.load(Ordering::Acquire) || !self.caught_up() {
            return None;
        }
        let (earliest, estimate, latest) = self.db_now_bounds()?;
        let entries = self.entries.read().expect("hit view lock");
        let slot = entries.map.get(key)?;
        let (head, stored) = slot.head.as_ref()?;
        if stored.elapsed() >= self.max_age {
            return None;
        }
        let window = ChronoDuration::hours(i64::from(cache_hours));
        let held = if latest - head.last_synced < window {
            Held::Fresh(head.clone())
        } else {
            let extra = ChronoDuration::hours(i64::from(stale_hours?));
            if earliest - head.last_synced < window || latest - head.last_synced > window + extra {
                return None;
            }
            Held::Stale(head.clone(), estimate)
        };
        slot.used.store(self.now_ms(), Ordering::Relaxed);
        Some(held)
    }

    /// Whether memory holds a head for the document (for the admin view; a held head is
    /// answered only while fresh and within the staleness bounds).
    pub fn holds(&self, key: &SourceKey) -> bool {
        self.live.load(Ordering::Acquire)
            && self
                .entries
                .read()
                .expect("hit view lock")
                .map
                .get(key)
                .is_some_and(|e| e.head.is_some())
    }

    /// Whether a heartbeat sent less than [`STALENESS_BOUND`] ago has come back.
    fn caught_up(&self) -> bool {
        documents_kit::switches::off(documents_kit::switches::FEED_HEARTBEAT)
            || (self.base.elapsed().as_micros() as u64)
                < self.caught_up_until.load(Ordering::Acquire)
    }

    /// Remembers the head this process just wrote (a fill's result), like [`HitView::remember`];
    /// the write's own announcement, when it comes, then keeps it instead of dropping it.
    pub fn remember_written(&self, head: &DocumentHead, stamp: Stamp) {
        self.remember(head, stamp);
        let mut entries = self.entries.write().expect("hit view lock");
        if let Some(slot) = entries.map.get_mut(&head.key) {
            if slot
                .head
                .as_ref()
                .is_some_and(|(h, _)| h.version == head.version)
            {
                slot.own_write = Some(head.version);
            }
        }
    }

    /// Remembers a head read from or written to the database, unless the document changed or
    /// the feed restarted since the read began (`stamp`), or a newer version is known.
    pub fn remember(&self, head: &DocumentHead, stamp: Stamp) {
        // An invalidated document is stale for everyone until rewritten: never a hit.
        if !self.live.load(Ordering::Acquire) || head.invalidated {
            return;
        }
        let now_ms = self.now_ms();
        let mut entries = self.entries.write().expect("hit view lock");
        let current_epoch = self.epoch.load(Ordering::Acquire) == stamp.epoch;
        // A document the view does not hold may have been evicted after the read began, with
        // what the view knew of it (a change, a newer version): trusted only if not.
        let held = entries.map.contains_key(&head.key);
        let not_evicted_since = held || entries.floor <= stamp.seq;
        entries.seq += 1;
        let seq = entries.seq;
        let slot = entries.slot(&head.key, self.max_entries, now_ms);
        slot.touched = seq;
        if current_epoch
            && not_evicted_since
            && slot.changed <= stamp.seq
            && head.version >= slot.version
            && slot
                .head
                .as_ref()
                .is_none_or(|(h, _)| h.version <= head.version)
        {
            slot.version = head.version;
            slot.head = Some((head.clone(), tokio::time::Instant::now()));
        } else if head.version > slot.version {
            // Not trusted as a head, but a newer version exists: never serve an older one.
            slot.version = head.version;
            slot.head = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::{advance, Instant as TokioInstant};

    use super::*;

    fn head(version: i64) -> DocumentHead {
        head_of(SID, version)
    }

    fn head_of(key: &str, version: i64) -> DocumentHead {
        DocumentHead {
            id: format!("doc-{key}"),
            key: key.parse().unwrap(),
            tags: vec![],
            version,
            last_synced: Utc::now(),
            invalidated: false,
        }
    }

    const SID: &str = "ASX:GNP:announcement";

    /// A view whose feed has connected and proved itself once, holding `head(1)`.
    async fn warmed(max_age: Duration) -> (Arc<HitView>, broadcast::Sender<Change>) {
        warmed_with(max_age, DEFAULT_MAX_ENTRIES).await
    }

    async fn warmed_with(
        max_age: Duration,
        max_entries: usize,
    ) -> (Arc<HitView>, broadcast::Sender<Change>) {
        let (tx, rx) = broadcast::channel(16);
        let cache = HitView::new(rx, max_age, max_entries);
        tx.send(Change::Reset).unwrap();
        tx.send(Change::Heartbeat {
            sent: TokioInstant::now(),
        })
        .unwrap();
        settle().await;
        cache.observe_clock(Utc::now(), Instant::now());
        let stamp = cache.stamp(&SID.parse().unwrap());
        cache.remember(&head(1), stamp);
        (cache, tx)
    }

    /// Lets the follower task apply what was sent.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    fn hit(cache: &HitView) -> Option<i64> {
        cache.fresh(&SID.parse().unwrap(), 24).map(|h| h.version)
    }

    #[tokio::test(start_paused = true)]
    async fn answers_only_while_its_heartbeat_is_recent() {
        let (cache, tx) = warmed(Duration::from_secs(60)).await;
        assert_eq!(hit(&cache), Some(1));
        // The feed goes silent: past the bound the view stops answering.
        advance(STALENESS_BOUND + Duration::from_millis(1)).await;
        assert_eq!(hit(&cache), None);
        // A heartbeat sent now comes back: the view answers again.
        tx.send(Change::Heartbeat {
            sent: TokioInstant::now(),
        })
        .unwrap();
        settle().await;
        assert_eq!(hit(&cache), Some(1));
        // A heartbeat that was sent long ago proves nothing about now.
        advance(STALENESS_BOUND * 2).await;
        tx.send(Change::Heartbeat {
            sent: TokioInstant::now() - STALENESS_BOUND * 2,
        })
        .unwrap();
        settle().await;
        assert_eq!(hit(&cache), None);
    }

    #[tokio::test(start_paused = true)]
    async fn no_entry_is_answered_past_its_maximum_age() {
        let (cache, tx) = warmed(Duration::from_millis(1000)).await;
        for _ in 0..3 {
            advance(Duration::from_millis(300)).await;
            tx.send(Change::Heartbeat {
                sent: TokioInstant::now(),
            })
            .unwrap();
            settle().await;
            assert_eq!(hit(&cache), Some(1));
        }
        advance(Duration::from_millis(200)).await;
        tx.send(Change::Heartbeat {
            sent: TokioInstant::now(),
        })
        .unwrap();
        settle().await;
        assert_eq!(hit(&cache), None, "1.1 s old: read the database again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_fills_own_announcement_keeps_the_entry_it_stored() {
        let (cache, tx) = warmed(Duration::from_secs(60)).await;
        let stamp = cache.stamp(&SID.parse().unwrap());
        cache.remember_written(&head(2), stamp);
        assert_eq!(hit(&cache), Some(2));
        let announce = |version| Change::Document {
            key: SID.parse().unwrap(),
            version,
        };
        tx.send(announce(2)).unwrap();
        settle().await;
        assert_eq!(hit(&cache), Some(2), "our own write's announcement");
        // A second announcement of the same version is someone else's (a hand-made UPDATE).
        tx.send(announce(2)).unwrap();
        settle().await;
        assert_eq!(hit(&cache), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_a_lost_feed_or_a_reset_drops_what_it_knew() {
        let (cache, tx) = warmed(Duration::from_secs(60)).await;
        tx.send(Change::Document {
            key: SID.parse().unwrap(),
            version: 2,
        })
        .unwrap();
        settle().await;
        assert_eq!(hit(&cache), None, "a newer version was announced");
        // An older head read before the change is not remembered; the new one is.
        let stamp = cache.stamp(&SID.parse().unwrap());
        cache.remember(&head(1), stamp);
        assert_eq!(hit(&cache), None);
        cache.remember(&head(2), stamp);
        assert_eq!(hit(&cache), Some(2));
        // The feed is lost: nothing is answered, even after it reconnects, until a heartbeat
        // sent after the reconnection comes back.
        tx.send(Change::Lost).unwrap();
        settle().await;
        assert_eq!(hit(&cache), None);
        tx.send(Change::Reset).unwrap();
        settle().await;
        let stamp = cache.stamp(&SID.parse().unwrap());
        cache.remember(&head(2), stamp);
        assert_eq!(hit(&cache), None, "no heartbeat since the reset");
        tx.send(Change::Heartbeat {
            sent: TokioInstant::now(),
        })
        .unwrap();
        settle().await;
        assert_eq!(hit(&cache), Some(2));
    }

    /// The i-th of some distinct documents.
    fn nth(i: usize) -> String {
        let letter = |n: usize| char::from(b'A' + (n % 26) as u8);
        format!("ASX:Q{}{}:announcement", letter(i / 26), letter(i))
    }

    fn remember_now(cache: &HitView, key: &str, version: i64) {
        let stamp = cache.stamp(&key.parse().unwrap());
        cache.remember(&head_of(key, version), stamp);
    }

    fn hit_of(cache: &HitView, key: &str) -> Option<i64> {
        cache.fresh(&key.parse().unwrap(), 24).map(|h| h.version)
    }

    /// Keeps the feed proven while paused time moves on.
    async fn beat(tx: &broadcast::Sender<Change>) {
        tx.send(Change::Heartbeat {
            sent: TokioInstant::now(),
        })
        .unwrap();
        settle().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_view_evicts_the_least_recently_used_not_everything() {
        let (cache, tx) = warmed_with(Duration::from_secs(60), 16).await;
        // SID and 15 more: full. Remembered a millisecond apart, oldest first.
        for i in 0..15 {
            advance(Duration::from_millis(1)).await;
            remember_now(&cache, &nth(i), 1);
        }
        assert_eq!(cache.size(), 16);
        // The first three are used again (SID too): the least recently used are now 3 and 4.
        advance(Duration::from_millis(5)).await;
        beat(&tx).await;
        for key in [SID.to_string(), nth(0), nth(1), nth(2)] {
            assert_eq!(hit_of(&cache, &key), Some(1), "{key}");
        }
        // One more document: an eighth of the bound (two entries) makes room for it.
        remember_now(&cache, &nth(100), 1);
        assert_eq!(cache.size(), 15);
        assert_eq!(hit_of(&cache, &nth(3)), None, "least recently used");
        assert_eq!(hit_of(&cache, &nth(4)), None, "next least recently used");
        for key in [
            SID.to_string(),
            nth(0),
            nth(1),
            nth(2),
            nth(5),
            nth(14),
            nth(100),
        ] {
            assert_eq!(hit_of(&cache, &key), Some(1), "{key} kept");
        }
        // A working set twice the bound never grows the view past it, and the view keeps
        // answering (it does not start over).
        for i in 200..232 {
            remember_now(&cache, &nth(i), 1);
            assert!(cache.size() <= 16);
        }
        assert_eq!(hit_of(&cache, &nth(231)), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn an_eviction_never_lets_an_older_read_back_in() {
        let (cache, tx) = warmed_with(Duration::from_secs(60), 8).await;
        let old = |key: &str| cache.stamp(&key.parse().unwrap());
        // A read of A begins; then A's version 2 is announced (the read may have seen 1).
        let a = nth(0);
        let read_a = old(&a);
        tx.send(Change::Document {
            key: a.parse().unwrap(),
            version: 2,
        })
        .unwrap();
        settle().await;
        // B is remembered at version 5 while an older read of B (which saw 4) is in flight.
        let b = nth(1);
        let read_b = old(&b);
        remember_now(&cache, &b, 5);
        assert_eq!(hit_of(&cache, &b), Some(5));
        // Both entries are evicted by newer documents, used more recently.
        for i in 10..20 {
            advance(Duration::from_millis(1)).await;
            remember_now(&cache, &nth(i), 1);
        }
        beat(&tx).await;
        assert!(!cache.holds(&a.parse().unwrap()) && !cache.holds(&b.parse().unwrap()));
        // The older reads finish: what they saw predates what the view forgot, so neither is
        // answered (A's version 1 after version 2 was announced; B's 4 after 5 was answered).
        cache.remember(&head_of(&a, 1), read_a);
        cache.remember(&head_of(&b, 4), read_b);
        assert_eq!(hit_of(&cache, &a), None);
        assert_eq!(hit_of(&cache, &b), None);
        // Reads that begin now are remembered again.
        remember_now(&cache, &a, 2);
        remember_now(&cache, &b, 5);
        assert_eq!(hit_of(&cache, &a), Some(2));
        assert_eq!(hit_of(&cache, &b), Some(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_head_is_answered_within_the_stale_window_only() {
        let (cache, _tx) = warmed(Duration::from_secs(60)).await;
        let key: SourceKey = SID.parse().unwrap();
        let synced_ago = |hours: i64, minutes: i64| {
            let mut h = head(2);
            h.last_synced =
                Utc::now() - ChronoDuration::hours(hours) - ChronoDuration::minutes(minutes);
            let stamp = cache.stamp(&key);
            cache.remember(&h, stamp);
        };
        let stale = |held: Option<Held>| matches!(held, Some(Held::Stale(h, _)) if h.version == 2);
        // Synced 1 h 30 min ago: stale for a 1 h window, within 1 h more.
        synced_ago(1, 30);
        assert!(stale(cache.answerable(&key, 1, Some(1))));
        assert_eq!(
            cache.answerable(&key, 1, None),
            None,
            "no stale window asked for"
        );
        assert!(matches!(
            cache.answerable(&key, 2, Some(1)),
            Some(Held::Fresh(_))
        ));
        // Past both windows: the database decides (a fill).
        assert_eq!(cache.answerable(&key, 1, Some(0)), None);
        // Within the clock's uncertainty of either edge: the database decides too.
        synced_ago(1, 0);
        assert_eq!(
            cache.answerable(&key, 1, Some(1)),
            None,
            "maybe still fresh"
        );
        synced_ago(2, 0);
        assert_eq!(
            cache.answerable(&key, 1, Some(1)),
            None,
            "maybe past the stale window"
        );
    }
}
