//! WatchDocuments' core: one hub per process follows the database's change feed and tells each
//! watch what changed in the documents it covers.
//!
//! - The feed says which document changed (PostgreSQL) or only that something did (SQLite, a
//!   feed (re)connection, a lagging receiver). The hub reads the current heads of what changed
//!   (or of everything watched) in one query and offers each head to the watches that cover it.
//!   Everything the hub reads, it reads in order from one task, so a later read never shows an
//!   older state than an earlier one: per document, what a watch is offered only moves forward.
//! - A watch keeps, per document, the position its caller has seen and at most one pending
//!   event, the newest (conflation): its memory is bounded by the documents it covers, however
//!   many changes happen or however slowly its caller reads. A watch by tag covers at most
//!   `max_documents`; past that it ends with [`WatchEnd::Overflow`] and its caller resumes.
//! - Heartbeats are sent while the feed proves itself alive; a feed that is lost or silent ends
//!   every watch with [`WatchEnd::FeedLost`] (resume with positions): never a silent gap.
//! - Without a change feed (a transaction-mode pooler with no session URL) the hub reads every
//!   watched document each [`POLL_EVERY`] instead.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use chrono::{DateTime, Utc};
use documents_api::Kind;
use documents_store::{Change, DocumentHead, DocumentStore, SourceKey, StorageError};
use tokio::sync::{broadcast, mpsc, oneshot, Notify};

use crate::metrics::METRICS;

/// How often every watched document is read again when there is no change feed.
pub const POLL_EVERY: Duration = Duration::from_secs(1);
/// A feed that has not proved itself alive (a heartbeat) for this long is lost.
const FEED_SILENT_AFTER: Duration = Duration::from_secs(3);
/// Keys read in one query.
const LOOKUP_CHUNK: usize = 500;

/// The hub's tuning.
#[derive(Debug, Clone, Copy)]
pub struct WatchSettings {
    /// Documents a watch by tag may cover.
    pub max_documents: usize,
    /// How often a watch is sent a heartbeat.
    pub heartbeat_every: Duration,
}

/// What a caller asks to watch, parsed.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    pub kind: Kind,
    pub keys: Vec<SourceKey>,
    pub tags: Vec<String>,
    /// What the caller saw: (key, document id, version).
    pub since: Vec<(SourceKey, String, i64)>,
    pub send_initial: bool,
}

/// Why a watch ended (the edge maps it to a status).
#[derive(Debug, Clone)]
pub enum WatchEnd {
    /// The change feed was lost or went silent: changes may be missed; resume with positions.
    FeedLost,
    /// A watch by tag came to cover more than `limit` documents.
    Overflow { limit: usize },
    /// The documents could not be read.
    Storage(Arc<StorageError>),
}

/// What happened to a document, as told to a watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Current,
    Created,
    Refreshed,
    Invalidated,
    Deleted,
    Heartbeat,
}

/// One event for a watch's caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventKind,
    /// Absent in a heartbeat.
    pub key: Option<SourceKey>,
    pub document_id: String,
    pub version: i64,
    pub last_synced: Option<DateTime<Utc>>,
    pub tags: Vec<String>,
}

impl WatchEvent {
    fn heartbeat() -> Self {
        Self {
            kind: EventKind::Heartbeat,
            key: None,
            document_id: String::new(),
            version: 0,
            last_synced: None,
            tags: Vec::new(),
        }
    }
}

/// Where a document stands, as far as one watch knows.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Position {
    id: String,
    version: i64,
    invalidated: bool,
}

impl Position {
    fn of(head: &DocumentHead) -> Self {
        Self {
            id: head.id.clone(),
            version: head.version,
            invalidated: head.invalidated,
        }
    }

    /// Whether `self` is newer than `seen`: another document (deleted and recreated), a higher
    /// version, or the same version marked stale.
    fn newer_than(&self, seen: &Position) -> bool {
        self.id != seen.id || (self.version, self.invalidated) > (seen.version, seen.invalidated)
    }
}

/// A document's newest state, waiting to be sent.
#[derive(Debug, Clone)]
enum Pending {
    Present { head: DocumentHead, initial: bool },
    Deleted,
}

#[derive(Default)]
struct State {
    /// What the caller has been sent (or said it saw), per document.
    seen: HashMap<SourceKey, Position>,
    /// The newest unsent state per document, and the order they became pending in.
    pending: HashMap<SourceKey, Pending>,
    order: VecDeque<SourceKey>,
    heartbeat_due: bool,
    end: Option<WatchEnd>,
}

impl State {
    /// The newest state the watch knows of `key`: pending, else seen.
    fn latest(&self, key: &SourceKey) -> Option<Option<Position>> {
        match self.pending.get(key) {
            Some(Pending::Present { head, .. }) => Some(Some(Position::of(head))),
            Some(Pending::Deleted) => Some(None),
            None => self.seen.get(key).map(|p| Some(p.clone())),
        }
    }

    fn set_pending(&mut self, key: &SourceKey, pending: Pending) {
        if self.pending.insert(key.clone(), pending).is_none() {
            self.order.push_back(key.clone());
        }
    }

    /// The next event for the caller, moving what it is told into `seen`.
    fn next_event(&mut self) -> Option<WatchEvent> {
        while let Some(key) = self.order.pop_front() {
            let Some(pending) = self.pending.remove(&key) else {
                continue;
            };
            let seen = self.seen.get(&key);
            let event = match pending {
                Pending::Deleted => {
                    // A document the caller never saw need not be announced gone.
                    let Some(seen) = self.seen.remove(&key) else {
                        continue;
                    };
                    WatchEvent {
                        kind: EventKind::Deleted,
                        key: Some(key),
                        document_id: seen.id,
                        version: seen.version,
                        last_synced: None,
                        tags: Vec::new(),
                    }
                }
                Pending::Present { head, initial } => {
                    let kind = match seen {
                        _ if initial => EventKind::Current,
                        Some(s) if s.id == head.id && head.invalidated => EventKind::Invalidated,
                        Some(s) if s.id == head.id => EventKind::Refreshed,
                        _ => EventKind::Created,
                    };
                    self.seen.insert(key.clone(), Position::of(&head));
                    WatchEvent {
                        kind,
                        key: Some(key),
                        document_id: head.id,
                        version: head.version,
                        last_synced: Some(head.last_synced),
                        tags: head.tags,
                    }
                }
            };
            return Some(event);
        }
        if std::mem::take(&mut self.heartbeat_due) {
            return Some(WatchEvent::heartbeat());
        }
        None
    }
}

/// One watch: what it covers, and its caller's state. Dropped with the caller's stream.
struct Watcher {
    kind: Kind,
    keys: HashSet<SourceKey>,
    tags: Vec<String>,
    max_documents: usize,
    state: Mutex<State>,
    wake: Notify,
}

impl Watcher {
    fn covers(&self, head: &DocumentHead) -> bool {
        head.key.kind() == self.kind
            && (self.keys.contains(&head.key) || head.tags.iter().any(|t| self.tags.contains(t)))
    }

    fn knows(&self, key: &SourceKey) -> bool {
        self.keys.contains(key) || self.lock().latest(key).is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("watch state lock")
    }

    /// Offers the current state of `key` (`None`: it does not exist). Only what is newer than
    /// what the watch knows becomes pending; `quiet` records it as seen instead (a watch that
    /// starts without `send_initial`).
    fn offer(&self, key: &SourceKey, head: Option<&DocumentHead>, initial: bool, quiet: bool) {
        let mut state = self.lock();
        if state.end.is_some() {
            return;
        }
        let newer = match (state.latest(key), head) {
            (None | Some(None), None) => false,
            (None | Some(None), Some(_)) => true,
            (Some(Some(_)), None) => true,
            (Some(Some(known)), Some(h)) => Position::of(h).newer_than(&known),
        };
        if !newer {
            return;
        }
        match head {
            Some(h) if quiet => {
                state.seen.insert(key.clone(), Position::of(h));
            }
            Some(h) => {
                let initial = initial
                    && !state.seen.contains_key(key)
                    && matches!(
                        state.pending.get(key),
                        None | Some(Pending::Present { initial: true, .. })
                    );
                let head = h.clone();
                state.set_pending(key, Pending::Present { head, initial });
            }
            None => state.set_pending(key, Pending::Deleted),
        }
        // A watch by tag covers what it has been told of beyond its identifiers: bounded.
        if !self.tags.is_empty() {
            let covered = state
                .seen
                .keys()
                .chain(state.pending.keys())
                .filter(|k| !self.keys.contains(k))
                .collect::<HashSet<_>>()
                .len();
            if covered > self.max_documents {
                state.end = Some(WatchEnd::Overflow {
                    limit: self.max_documents,
                });
            }
        }
        let wake = !quiet || state.end.is_some();
        drop(state);
        if wake {
            self.wake.notify_one();
        }
    }

    fn end(&self, why: WatchEnd) {
        self.lock().end.get_or_insert(why);
        self.wake.notify_one();
    }

    fn heartbeat(&self) {
        self.lock().heartbeat_due = true;
        self.wake.notify_one();
    }
}

/// A caller's watch: yields its events until it ends. Dropping it ends the watch.
pub struct Watch {
    watcher: Arc<Watcher>,
    _count: WatchCount,
}

impl Watch {
    /// The next event, waiting for one; `Err` when the watch ended (then nothing more).
    pub async fn next(&mut self) -> Result<WatchEvent, WatchEnd> {
        loop {
            {
                // An ended watch's pending events are not sent: its caller resumes from the
                // positions it saw, and is told them then.
                let mut state = self.watcher.lock();
                if let Some(end) = state.end.clone() {
                    return Err(end);
                }
                if let Some(event) = state.next_event() {
                    return Ok(event);
                }
            }
            // A notification sent since the lock was released is kept as a permit.
            self.watcher.wake.notified().await;
        }
    }
}

/// Counts live watches (`documents_watchers`).
struct WatchCount;

impl WatchCount {
    fn new() -> Self {
        METRICS.watchers(1);
        Self
    }
}

impl Drop for WatchCount {
    fn drop(&mut self) {
        METRICS.watchers(-1);
    }
}

struct Subscribe {
    watcher: Arc<Watcher>,
    since: Vec<(SourceKey, String, i64)>,
    send_initial: bool,
    /// Told once the watch is registered: every change committed after it is covered.
    registered: oneshot::Sender<()>,
}

/// The process's watch hub (see the module's comment). Cheap to share; its task ends when the
/// hub is dropped.
pub struct WatchHub {
    subscribe: mpsc::UnboundedSender<Subscribe>,
    settings: WatchSettings,
}

impl WatchHub {
    /// Starts the hub on `feed` (None: poll the database).
    pub fn start(
        store: Arc<dyn DocumentStore>,
        feed: Option<broadcast::Receiver<Change>>,
        settings: WatchSettings,
    ) -> Self {
        let (subscribe, rx) = mpsc::unbounded_channel();
        let task = HubTask {
            store,
            watchers: Vec::new(),
            settings,
            polling: feed.is_none(),
            // The feed announces itself (a reset) as soon as it is followed: until then it is
            // given the benefit of the doubt.
            alive_at: Some(tokio::time::Instant::now()),
        };
        tokio::spawn(task.run(feed, rx));
        Self {
            subscribe,
            settings,
        }
    }

    /// Starts a watch, answering once the hub has read what it covers and follows it for it:
    /// every change committed from then on is told (so a caller that starts a watch, then
    /// writes, sees its write).
    pub async fn watch(&self, spec: WatchSpec) -> Watch {
        let watcher = Arc::new(Watcher {
            kind: spec.kind,
            keys: spec.keys.into_iter().collect(),
            tags: spec.tags,
            max_documents: self.settings.max_documents,
            state: Mutex::default(),
            wake: Notify::new(),
        });
        let (registered, done) = oneshot::channel();
        let sent = self.subscribe.send(Subscribe {
            watcher: watcher.clone(),
            since: spec.since,
            send_initial: spec.send_initial,
            registered,
        });
        if sent.is_err() || done.await.is_err() {
            watcher.end(WatchEnd::FeedLost);
        }
        Watch {
            watcher,
            _count: WatchCount::new(),
        }
    }
}

struct HubTask {
    store: Arc<dyn DocumentStore>,
    watchers: Vec<Weak<Watcher>>,
    settings: WatchSettings,
    polling: bool,
    /// When the feed last proved itself alive (a heartbeat or a reset).
    alive_at: Option<tokio::time::Instant>,
}

impl HubTask {
    async fn run(
        mut self,
        mut feed: Option<broadcast::Receiver<Change>>,
        mut subscribe: mpsc::UnboundedReceiver<Subscribe>,
    ) {
        let every = self.settings.heartbeat_every;
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut poll = tokio::time::interval(POLL_EVERY);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                sub = subscribe.recv() => {
                    let Some(sub) = sub else { return };
                    self.subscribe(sub).await;
                }
                change = recv(&mut feed) => {
                    let mut changed = Vec::new();
                    let mut everything = false;
                    let mut next = Some(change);
                    // Take everything already announced: one read serves the lot.
                    while let Some(change) = next {
                        match change {
                            Ok(Change::Document { key, .. }) => changed.push(key),
                            Ok(Change::Heartbeat { .. }) => {
                                self.alive_at = Some(tokio::time::Instant::now());
                            }
                            Ok(Change::Reset) | Err(broadcast::error::RecvError::Lagged(_)) => {
                                self.alive_at = Some(tokio::time::Instant::now());
                                everything = true;
                            }
                            Ok(Change::Lost) => {
                                self.alive_at = None;
                                self.end_all(WatchEnd::FeedLost);
                            }
                            Err(broadcast::error::RecvError::Closed) => {
                                self.end_all(WatchEnd::FeedLost);
                                feed = None;
                                self.polling = true;
                                break;
                            }
                        }
                        next = feed.as_mut().and_then(|f| match f.try_recv() {
                            Err(broadcast::error::TryRecvError::Empty) => None,
                            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                                Some(Err(broadcast::error::RecvError::Lagged(n)))
                            }
                            Err(broadcast::error::TryRecvError::Closed) => {
                                Some(Err(broadcast::error::RecvError::Closed))
                            }
                            Ok(c) => Some(Ok(c)),
                        });
                    }
                    if everything {
                        self.resync().await;
                    } else if !changed.is_empty() {
                        self.reread(changed).await;
                    }
                }
                _ = beat.tick() => self.heartbeats(),
                _ = poll.tick(), if self.polling => self.resync().await,
            }
        }
    }

    /// The live watchers (dropping the ones whose callers went away).
    fn live(&mut self) -> Vec<Arc<Watcher>> {
        let mut live = Vec::with_capacity(self.watchers.len());
        self.watchers.retain(|w| match w.upgrade() {
            Some(w) => {
                live.push(w);
                true
            }
            None => false,
        });
        live
    }

    fn end_all(&mut self, why: WatchEnd) {
        for w in self.live() {
            w.end(why.clone());
        }
    }

    /// A heartbeat for every watch while the feed is alive (always when polling); a feed that
    /// went silent ends them.
    fn heartbeats(&mut self) {
        let alive = self.polling
            || self
                .alive_at
                .is_some_and(|at| at.elapsed() < FEED_SILENT_AFTER);
        for w in self.live() {
            if alive {
                w.heartbeat();
            } else {
                w.end(WatchEnd::FeedLost);
            }
        }
    }

    /// Registers a watch after reading what it covers: the initial state, or what is newer than
    /// its caller's positions.
    async fn subscribe(&mut self, sub: Subscribe) {
        let w = sub.watcher;
        // A caller that names positions resumes: what it has no position for, it never saw.
        let resuming = !sub.since.is_empty();
        {
            let mut state = w.lock();
            for (key, id, version) in sub.since {
                let position = Position {
                    id,
                    version,
                    invalidated: false,
                };
                state.seen.insert(key, position);
            }
        }
        let keys: Vec<SourceKey> = w.keys.iter().cloned().collect();
        // (A failed read ends the watch; `registered` is dropped and the caller sees the end.)
        let mut heads = match self.read(&keys).await {
            Ok(h) => h,
            Err(e) => return w.end(WatchEnd::Storage(Arc::new(e))),
        };
        if !w.tags.is_empty() {
            match self
                .store
                .heads_tagged(w.kind, &w.tags, w.max_documents + 1)
                .await
            {
                Ok(tagged) => heads.extend(tagged.into_iter().map(|h| (h.key.clone(), Some(h)))),
                Err(e) => return w.end(WatchEnd::Storage(Arc::new(e))),
            }
        }
        // Documents the caller named a position for but no longer exist.
        let named: Vec<SourceKey> = w.lock().seen.keys().cloned().collect();
        let absent: Vec<SourceKey> = named
            .into_iter()
            .filter(|k| !heads.iter().any(|(h, _)| h == k))
            .collect();
        match self.read(&absent).await {
            Ok(more) => heads.extend(more),
            Err(e) => return w.end(WatchEnd::Storage(Arc::new(e))),
        }
        for (key, head) in &heads {
            let told = w.lock().seen.contains_key(key);
            let quiet = !told && !sub.send_initial && !resuming;
            w.offer(key, head.as_ref(), sub.send_initial, quiet);
        }
        self.watchers.push(Arc::downgrade(&w));
        let _ = sub.registered.send(());
    }

    /// The current state of `keys`: each with its head, or None when it does not exist.
    async fn read(
        &self,
        keys: &[SourceKey],
    ) -> Result<Vec<(SourceKey, Option<DocumentHead>)>, StorageError> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(LOOKUP_CHUNK) {
            let mut heads: HashMap<SourceKey, DocumentHead> = self
                .store
                .lookup(chunk)
                .await?
                .heads
                .into_iter()
                .map(|h| (h.key.clone(), h))
                .collect();
            out.extend(chunk.iter().map(|k| (k.clone(), heads.remove(k))));
        }
        Ok(out)
    }

    /// Reads the documents the feed announced and offers them to the watches that cover them.
    async fn reread(&mut self, mut changed: Vec<SourceKey>) {
        let live = self.live();
        if live.is_empty() {
            return;
        }
        changed.sort_unstable_by_key(SourceKey::source_id);
        changed.dedup();
        // Only kinds someone watches; a watch by tag may cover any document of its kind.
        changed.retain(|k| live.iter().any(|w| w.kind == k.kind()));
        match self.read(&changed).await {
            Ok(heads) => Self::dispatch(&live, &heads),
            // Changes this read would have told are unknown: the callers resume.
            Err(e) => fail(&live, e),
        }
    }

    /// Reads everything watched (after a reset, a lagging feed, or a poll) and offers it.
    async fn resync(&mut self) {
        let live = self.live();
        if live.is_empty() {
            return;
        }
        let mut keys: HashSet<SourceKey> = HashSet::new();
        let mut tag_sets: HashSet<(Kind, Vec<String>)> = HashSet::new();
        for w in &live {
            keys.extend(w.keys.iter().cloned());
            let state = w.lock();
            keys.extend(state.seen.keys().cloned());
            keys.extend(state.pending.keys().cloned());
            if !w.tags.is_empty() {
                let mut tags = w.tags.clone();
                tags.sort();
                tag_sets.insert((w.kind, tags));
            }
        }
        let keys: Vec<SourceKey> = keys.into_iter().collect();
        let mut heads = match self.read(&keys).await {
            Ok(h) => h,
            Err(e) => return fail(&live, e),
        };
        for (kind, tags) in tag_sets {
            match self
                .store
                .heads_tagged(kind, &tags, self.settings.max_documents + 1)
                .await
            {
                Ok(tagged) => heads.extend(tagged.into_iter().map(|h| (h.key.clone(), Some(h)))),
                Err(e) => return fail(&live, e),
            }
        }
        Self::dispatch(&live, &heads);
    }

    fn dispatch(live: &[Arc<Watcher>], heads: &[(SourceKey, Option<DocumentHead>)]) {
        for w in live {
            for (key, head) in heads {
                let covered = match head {
                    Some(h) => w.covers(h) || w.knows(key),
                    None => w.knows(key),
                };
                if covered {
                    w.offer(key, head.as_ref(), false, false);
                }
            }
        }
    }
}

/// A read failed: what it would have told is unknown, so every watch ends (its caller resumes).
fn fail(live: &[Arc<Watcher>], e: StorageError) {
    let e = Arc::new(e);
    for w in live {
        w.end(WatchEnd::Storage(e.clone()));
    }
}

/// The next change, or never without a feed.
async fn recv(
    feed: &mut Option<broadcast::Receiver<Change>>,
) -> Result<Change, broadcast::error::RecvError> {
    match feed {
        Some(f) => f.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use documents_api::Ticker;
    use documents_store::{memory::MemoryStore, NewContent};

    use super::*;

    const HEARTBEAT: Duration = Duration::from_secs(5);

    fn key(code: &str) -> SourceKey {
        SourceKey::new(
            Kind::Announcement,
            Ticker::parse(&format!("ASX:{code}")).unwrap(),
        )
    }

    fn content(tags: &[&str]) -> NewContent {
        NewContent {
            title: "t".into(),
            content_markdown: "# t".into(),
            content_json: serde_json::json!({}),
            tags: tags.iter().map(|t| t.to_string()).collect(),
        }
    }

    struct Fixture {
        store: Arc<MemoryStore>,
        feed: broadcast::Sender<Change>,
        hub: WatchHub,
        /// While set, the feed beats every 250 ms, as a live one does.
        beating: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Fixture {
        fn new(max_documents: usize) -> Self {
            let store = Arc::new(MemoryStore::new());
            let (feed, rx) = broadcast::channel(16);
            let settings = WatchSettings {
                max_documents,
                heartbeat_every: HEARTBEAT,
            };
            let hub = WatchHub::start(store.clone(), Some(rx), settings);
            let beating = Arc::new(std::sync::atomic::AtomicBool::new(true));
            let (tx, on) = (feed.clone(), beating.clone());
            tokio::spawn(async move {
                while on.load(std::sync::atomic::Ordering::SeqCst) {
                    let sent = tokio::time::Instant::now();
                    let _ = tx.send(Change::Heartbeat { sent });
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            });
            Self {
                store,
                feed,
                hub,
                beating,
            }
        }

        /// Writes `code` (tagged) and announces it; answers its version.
        async fn write(&self, code: &str, tags: &[&str]) -> DocumentHead {
            let w = self
                .store
                .upsert(&key(code), &content(tags), &[], None)
                .await;
            let head = w.unwrap().head;
            self.announce(code, head.version);
            head
        }

        fn announce(&self, code: &str, version: i64) {
            let key = key(code);
            let _ = self.feed.send(Change::Document { key, version });
        }

        async fn watch(&self, codes: &[&str], tags: &[&str], send_initial: bool) -> Watch {
            self.hub
                .watch(WatchSpec {
                    kind: Kind::Announcement,
                    keys: codes.iter().map(|c| key(c)).collect(),
                    tags: tags.iter().map(|t| t.to_string()).collect(),
                    since: Vec::new(),
                    send_initial,
                })
                .await
        }
    }

    /// The next event, which must come without waiting for a heartbeat.
    async fn next(w: &mut Watch) -> Result<WatchEvent, WatchEnd> {
        tokio::time::timeout(HEARTBEAT / 2, w.next())
            .await
            .expect("an event before the next heartbeat")
    }

    async fn nothing_but_a_heartbeat(w: &mut Watch) {
        let e = tokio::time::timeout(HEARTBEAT * 2, w.next()).await;
        assert_eq!(e.unwrap().unwrap().kind, EventKind::Heartbeat);
    }

    fn summary(e: &WatchEvent) -> (EventKind, String, i64) {
        let code = e.key.as_ref().map(|k| k.ticker().code().to_string());
        (e.kind, code.unwrap_or_default(), e.version)
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_is_told_the_initial_state_then_each_change_in_order() {
        let f = Fixture::new(10);
        let first = f.write("GNP", &[]).await;
        let mut w = f.watch(&["GNP", "BHP"], &[], true).await;
        let current = next(&mut w).await.unwrap();
        assert_eq!(summary(&current), (EventKind::Current, "GNP".into(), 1));
        assert_eq!(current.document_id, first.id);

        f.write("GNP", &["gnp"]).await;
        let e = next(&mut w).await.unwrap();
        assert_eq!(summary(&e), (EventKind::Refreshed, "GNP".into(), 2));
        assert_eq!(e.tags, ["gnp"]);

        f.store
            .invalidate(Some(Kind::Announcement), &[key("GNP")], &[])
            .await
            .unwrap();
        f.announce("GNP", 2);
        let e = next(&mut w).await.unwrap();
        assert_eq!(summary(&e), (EventKind::Invalidated, "GNP".into(), 2));

        f.write("BHP", &[]).await;
        let e = next(&mut w).await.unwrap();
        assert_eq!(summary(&e), (EventKind::Created, "BHP".into(), 1));

        f.store.delete(&key("GNP"));
        f.announce("GNP", 0);
        let e = next(&mut w).await.unwrap();
        assert_eq!(summary(&e), (EventKind::Deleted, "GNP".into(), 2));
        assert_eq!(e.document_id, first.id);

        // Recreated: a new document, versions start again.
        let again = f.write("GNP", &[]).await;
        let e = next(&mut w).await.unwrap();
        assert_eq!(summary(&e), (EventKind::Created, "GNP".into(), 1));
        assert_ne!(e.document_id, first.id);
        assert_eq!(e.document_id, again.id);

        // An announcement of nothing new (a repeat) tells nothing.
        f.announce("GNP", 1);
        nothing_but_a_heartbeat(&mut w).await;
    }

    #[tokio::test(start_paused = true)]
    async fn without_send_initial_only_changes_are_told() {
        let f = Fixture::new(10);
        f.write("GNP", &[]).await;
        let mut w = f.watch(&["GNP"], &[], false).await;
        tokio::task::yield_now().await;
        f.write("GNP", &[]).await;
        let e = next(&mut w).await.unwrap();
        assert_eq!(summary(&e), (EventKind::Refreshed, "GNP".into(), 2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_watch_holds_only_the_newest_state_of_each_document() {
        let f = Fixture::new(10);
        let mut w = f.watch(&["GNP", "BHP"], &[], false).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
        for _ in 0..200 {
            f.write("GNP", &[]).await;
            f.write("BHP", &[]).await;
            // The hub keeps up with the feed; the caller does not read.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        {
            let state = w.watcher.lock();
            assert_eq!(state.pending.len(), 2, "one pending event per document");
            assert_eq!(state.order.len(), 2);
        }
        let mut got: Vec<_> = [next(&mut w).await.unwrap(), next(&mut w).await.unwrap()]
            .iter()
            .map(summary)
            .collect();
        got.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(
            got,
            [
                (EventKind::Created, "BHP".into(), 200),
                (EventKind::Created, "GNP".into(), 200)
            ]
        );
        nothing_but_a_heartbeat(&mut w).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_resumed_watch_is_told_what_is_newer_than_its_positions_only() {
        let f = Fixture::new(10);
        let gnp = f.write("GNP", &[]).await;
        f.write("GNP", &[]).await;
        let bhp = f.write("BHP", &[]).await;
        let old = f.write("CBA", &[]).await;
        f.store.delete(&key("CBA"));
        let mut w = f
            .hub
            .watch(WatchSpec {
                kind: Kind::Announcement,
                keys: vec![key("GNP"), key("BHP"), key("CBA")],
                tags: Vec::new(),
                since: vec![
                    (key("GNP"), gnp.id.clone(), 1),
                    (key("BHP"), bhp.id.clone(), 1),
                    (key("CBA"), old.id.clone(), 1),
                ],
                send_initial: true,
            })
            .await;
        let mut got = vec![
            summary(&next(&mut w).await.unwrap()),
            summary(&next(&mut w).await.unwrap()),
        ];
        got.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(
            got,
            [
                (EventKind::Deleted, "CBA".into(), 1),
                (EventKind::Refreshed, "GNP".into(), 2),
            ]
        );
        nothing_but_a_heartbeat(&mut w).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_by_tag_covers_new_documents_up_to_its_limit() {
        let f = Fixture::new(2);
        f.write("GNP", &["asx"]).await;
        let mut w = f.watch(&[], &["asx"], true).await;
        assert_eq!(
            summary(&next(&mut w).await.unwrap()),
            (EventKind::Current, "GNP".into(), 1)
        );
        f.write("CBA", &["other"]).await;
        f.write("BHP", &["asx"]).await;
        assert_eq!(
            summary(&next(&mut w).await.unwrap()),
            (EventKind::Created, "BHP".into(), 1)
        );
        f.write("RIO", &["asx"]).await;
        match next(&mut w).await {
            Err(WatchEnd::Overflow { limit: 2 }) => {}
            other => panic!("expected an overflow, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_or_silent_feed_ends_every_watch_and_a_live_one_beats() {
        let f = Fixture::new(10);
        let mut w = f.watch(&["GNP"], &[], false).await;
        let _ = f.feed.send(Change::Reset);
        nothing_but_a_heartbeat(&mut w).await;
        // The feed says nothing for longer than it may: the watch ends.
        f.beating.store(false, std::sync::atomic::Ordering::SeqCst);
        match tokio::time::timeout(HEARTBEAT * 2, w.next()).await.unwrap() {
            Err(WatchEnd::FeedLost) => {}
            other => panic!("expected the feed lost, got {other:?}"),
        }
        let mut w = f.watch(&["GNP"], &[], false).await;
        let _ = f.feed.send(Change::Lost);
        assert!(matches!(next(&mut w).await, Err(WatchEnd::FeedLost)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_watch_is_forgotten() {
        let f = Fixture::new(10);
        let w = f.watch(&["GNP"], &[], false).await;
        let weak = Arc::downgrade(&w.watcher);
        tokio::task::yield_now().await;
        drop(w);
        assert!(
            weak.upgrade().is_none(),
            "nothing keeps a dropped watch's state"
        );
        f.write("GNP", &[]).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
