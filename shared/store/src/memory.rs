//! An in-process [`DocumentStore`] for unit tests of the code above the store (the provider's
//! provisioner): the same contract as the two databases (one row per source key, versions that
//! only go up, leases with fencing tokens and expiry), no database. Its clock is Tokio's, so a
//! test with paused time moves lease expiries and freshness windows at will. Not for serving.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Mutex,
    },
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    new_document_id, AttachmentRef, Backend, Claim, DocumentHead, DocumentStore, Fence, HeldLease,
    Holding, Kind, Lease, Lookup, NewAttachment, NewContent, SourceKey, StorageError,
    StoredDocument, Written,
};

type Key = SourceKey;

#[derive(Debug, Clone)]
struct LeaseRow {
    holder: Option<String>,
    token: i64,
    claimed_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    last_error: Option<(i32, String)>,
    finished_at: Option<DateTime<Utc>>,
}

#[derive(Default)]
struct State {
    documents: HashMap<Key, StoredDocument>,
    leases: HashMap<Key, LeaseRow>,
    attachments: HashMap<String, (String, Vec<u8>)>,
    links: HashMap<String, HashMap<String, String>>,
    /// Documents invalidated since their last write, and when.
    invalidated: HashMap<Key, DateTime<Utc>>,
}

impl State {
    fn head(&self, key: &Key) -> Option<super::DocumentHead> {
        self.documents.get(key).map(|d| super::DocumentHead {
            invalidated: self.invalidated.contains_key(key),
            ..d.head()
        })
    }
}

pub struct MemoryStore {
    state: Mutex<State>,
    /// Wall-clock time at `started`; now = that + Tokio time elapsed since.
    epoch: DateTime<Utc>,
    started: tokio::time::Instant,
    /// While set, every call fails as a database outage would (UNAVAILABLE).
    down: AtomicBool,
    /// Document writes made (for tests that count fills).
    writes: AtomicUsize,
    /// The clock's latest reading, in microseconds since `started`.
    last_micros: AtomicU64,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self {
            state: Mutex::default(),
            epoch: Utc::now(),
            started: tokio::time::Instant::now(),
            down: AtomicBool::new(false),
            writes: AtomicUsize::new(0),
            last_micros: AtomicU64::new(0),
        }
    }

    /// The store's clock (Tokio's: paused time moves it).
    /// The store's clock: Tokio's, moved on by at least a microsecond per reading, as two
    /// statements of a real database never share a moment (so with paused time, a purge and a
    /// claim made one after the other are still ordered).
    pub fn now(&self) -> DateTime<Utc> {
        let elapsed = self.started.elapsed().as_micros() as u64;
        let last = self.last_micros.fetch_max(elapsed, Ordering::SeqCst);
        let micros = if last >= elapsed {
            self.last_micros.fetch_add(1, Ordering::SeqCst) + 1
        } else {
            elapsed
        };
        self.epoch + chrono::Duration::microseconds(micros as i64)
    }

    /// Makes every call fail as a database outage would, or answer again.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Document writes so far.
    pub fn writes(&self) -> usize {
        self.writes.load(Ordering::SeqCst)
    }

    /// Moves a document's `last_synced` back by `by`, as if it had aged.
    pub fn age(&self, key: &SourceKey, by: std::time::Duration) {
        let mut state = self.state.lock().expect("memory store lock");
        if let Some(d) = state.documents.get_mut(key) {
            d.last_synced -= chrono::Duration::from_std(by).expect("duration");
        }
    }

    /// Deletes a document, as an operator's SQL `DELETE` would.
    pub fn delete(&self, key: &SourceKey) {
        let mut state = self.state.lock().expect("memory store lock");
        state.documents.remove(key);
        state.invalidated.remove(key);
    }

    fn up(&self) -> Result<(), StorageError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StorageError::Unavailable(sqlx::Error::PoolTimedOut));
        }
        Ok(())
    }
}

#[async_trait]
impl DocumentStore for MemoryStore {
    fn backend(&self) -> Backend {
        Backend::Memory
    }

    async fn migrate(&self) -> Result<(), StorageError> {
        self.up()
    }

    async fn schema_ready(&self) -> Result<(), StorageError> {
        self.up()
    }

    async fn check_invariants(&self) -> Result<Vec<String>, StorageError> {
        self.up()?;
        let state = self.state.lock().expect("memory store lock");
        Ok(state
            .documents
            .values()
            .filter(|d| d.version < 1)
            .map(|d| format!("version below 1: {}", d.id))
            .collect())
    }

    async fn ping(&self) -> Result<(), StorageError> {
        self.up()
    }

    async fn lookup(&self, keys: &[SourceKey]) -> Result<Lookup, StorageError> {
        self.up()?;
        let state = self.state.lock().expect("memory store lock");
        Ok(Lookup {
            now: self.now(),
            heads: keys.iter().filter_map(|k| state.head(k)).collect(),
        })
    }

    async fn heads_tagged(
        &self,
        kind: Kind,
        tags: &[String],
        limit: usize,
    ) -> Result<Vec<DocumentHead>, StorageError> {
        self.up()?;
        let state = self.state.lock().expect("memory store lock");
        let mut heads: Vec<_> = state
            .documents
            .keys()
            .filter(|k| k.kind() == kind)
            .filter_map(|k| state.head(k))
            .filter(|h| h.tags.iter().any(|t| tags.contains(t)))
            .collect();
        heads.sort_by_key(|h| h.key.source_id());
        heads.truncate(limit);
        Ok(heads)
    }

    async fn upsert(
        &self,
        key: &SourceKey,
        content: &NewContent,
        attachments: &[NewAttachment],
        fence: Option<Fence>,
    ) -> Result<Written, StorageError> {
        self.up()?;
        let now = self.now();
        let key = key.clone();
        let mut state = self.state.lock().expect("memory store lock");
        if let Some(fence) = fence {
            match state.leases.get_mut(&key) {
                Some(l) if l.token == fence.token => {
                    if fence.release {
                        l.holder = None;
                        l.expires_at = now;
                        l.finished_at = Some(now);
                        l.last_error = None;
                    }
                }
                _ => return Err(StorageError::LeaseLost(fence.token)),
            }
        }
        // What was fetched before a purge stays purged: the mark goes only for a fill that
        // claimed its lease after it (as the databases' purge guard does).
        if let Some(at) = state.invalidated.get(&key).copied() {
            if state.leases.get(&key).is_some_and(|l| l.claimed_at > at) {
                state.invalidated.remove(&key);
            }
        }
        let (head, inserted) = match state.documents.get_mut(&key) {
            Some(d) => {
                d.title = content.title.clone();
                d.content_markdown = content.content_markdown.clone();
                d.content_json = content.content_json.clone();
                d.tags = content.tags.clone();
                d.content_hash = content.content_hash();
                d.version += 1;
                d.last_synced = now;
                d.updated_at = now;
                (d.head(), false)
            }
            None => {
                let d = StoredDocument {
                    id: new_document_id(),
                    key: key.clone(),
                    title: content.title.clone(),
                    content_markdown: content.content_markdown.clone(),
                    content_json: content.content_json.clone(),
                    tags: content.tags.clone(),
                    content_hash: content.content_hash(),
                    version: 1,
                    last_synced: now,
                    created_at: now,
                    updated_at: now,
                };
                let head = d.head();
                state.documents.insert(key.clone(), d);
                (head, true)
            }
        };
        for a in attachments {
            let hash = a.hash();
            state
                .attachments
                .entry(hash.clone())
                .or_insert_with(|| (a.content_type.clone(), a.data.clone()));
            state
                .links
                .entry(head.id.clone())
                .or_default()
                .insert(a.name.clone(), hash);
        }
        self.writes.fetch_add(1, Ordering::SeqCst);
        let head = super::DocumentHead {
            invalidated: state.invalidated.contains_key(&key),
            ..head
        };
        Ok(Written { head, inserted })
    }

    async fn claim_fill(
        &self,
        key: &SourceKey,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<Claim, StorageError> {
        self.up()?;
        let now = self.now();
        let key = key.clone();
        let mut state = self.state.lock().expect("memory store lock");
        let lease = state.leases.entry(key.clone()).or_insert(LeaseRow {
            holder: None,
            token: 0,
            claimed_at: now,
            expires_at: now,
            last_error: None,
            finished_at: None,
        });
        let taken = lease.holder.as_deref().is_some_and(|h| h != holder) && lease.expires_at > now;
        if taken {
            return Ok(Claim {
                token: None,
                head: None,
            });
        }
        lease.token += 1;
        lease.holder = Some(holder.to_string());
        lease.claimed_at = now;
        lease.expires_at = now + chrono::Duration::from_std(ttl).expect("ttl");
        let token = lease.token;
        Ok(Claim {
            token: Some(token),
            head: state.head(&key),
        })
    }

    async fn renew_fill(
        &self,
        key: &SourceKey,
        token: i64,
        ttl: std::time::Duration,
    ) -> Result<bool, StorageError> {
        self.up()?;
        let now = self.now();
        let mut state = self.state.lock().expect("memory store lock");
        match state.leases.get_mut(key) {
            Some(l) if l.token == token && l.holder.is_some() => {
                l.expires_at = now + chrono::Duration::from_std(ttl).expect("ttl");
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn clear_abandoned_leases(
        &self,
        grace: std::time::Duration,
    ) -> Result<u64, StorageError> {
        self.up()?;
        let cutoff = self.now() - chrono::Duration::from_std(grace).expect("grace");
        let mut state = self.state.lock().expect("memory store lock");
        let mut n = 0;
        for l in state.leases.values_mut() {
            if l.holder.is_some() && l.expires_at < cutoff {
                l.holder = None;
                n += 1;
            }
        }
        Ok(n)
    }

    async fn release_fill(
        &self,
        key: &SourceKey,
        token: i64,
        error: Option<(i32, &str)>,
    ) -> Result<(), StorageError> {
        self.up()?;
        let now = self.now();
        let mut state = self.state.lock().expect("memory store lock");
        if let Some(l) = state.leases.get_mut(key) {
            if l.token == token {
                l.holder = None;
                l.expires_at = now;
                l.finished_at = Some(now);
                l.last_error = error.map(|(c, m)| (c, m.to_string()));
            }
        }
        Ok(())
    }

    fn pool_usage(&self) -> (u32, usize) {
        (0, 0)
    }

    async fn lease(&self, key: &SourceKey) -> Result<Option<Lease>, StorageError> {
        self.up()?;
        let now = self.now();
        let state = self.state.lock().expect("memory store lock");
        Ok(state.leases.get(key).map(|l| {
            let held = l.holder.is_some() && l.expires_at > now;
            Lease {
                token: l.token,
                held,
                last_error: l.last_error.clone(),
                finished_at: l.finished_at,
                holding: l.holder.clone().filter(|_| held).map(|holder| Holding {
                    holder,
                    claimed_at: l.claimed_at,
                    expires_at: l.expires_at,
                }),
            }
        }))
    }

    async fn invalidate(
        &self,
        kind: Option<Kind>,
        keys: &[SourceKey],
        tags: &[String],
    ) -> Result<u64, StorageError> {
        self.up()?;
        let mut state = self.state.lock().expect("memory store lock");
        let everything = keys.is_empty() && tags.is_empty();
        let matched: Vec<Key> = state
            .documents
            .iter()
            .filter(|(key, d)| {
                kind.is_none_or(|k| k == key.kind())
                    && (everything || keys.contains(key) || d.tags.iter().any(|t| tags.contains(t)))
            })
            .map(|(k, _)| k.clone())
            .collect();
        let n = matched.len() as u64;
        let now = self.now();
        state
            .invalidated
            .extend(matched.into_iter().map(|k| (k, now)));
        Ok(n)
    }

    async fn held_leases(&self) -> Result<Vec<HeldLease>, StorageError> {
        self.up()?;
        let now = self.now();
        let state = self.state.lock().expect("memory store lock");
        Ok(state
            .leases
            .iter()
            .filter(|(_, l)| l.holder.is_some() && l.expires_at > now)
            .map(|(key, l)| HeldLease {
                key: key.clone(),
                token: l.token,
                holding: Holding {
                    holder: l.holder.clone().unwrap_or_default(),
                    claimed_at: l.claimed_at,
                    expires_at: l.expires_at,
                },
            })
            .collect())
    }

    async fn get(&self, id: &str) -> Result<Option<StoredDocument>, StorageError> {
        self.up()?;
        let state = self.state.lock().expect("memory store lock");
        Ok(state.documents.values().find(|d| d.id == id).cloned())
    }

    async fn get_by_source(&self, key: &SourceKey) -> Result<Option<StoredDocument>, StorageError> {
        self.up()?;
        let state = self.state.lock().expect("memory store lock");
        Ok(state.documents.get(key).cloned())
    }

    async fn attachments_of(&self, document_id: &str) -> Result<Vec<AttachmentRef>, StorageError> {
        self.up()?;
        let state = self.state.lock().expect("memory store lock");
        let mut refs: Vec<AttachmentRef> = state
            .links
            .get(document_id)
            .into_iter()
            .flatten()
            .map(|(name, hash)| {
                let (content_type, data) = &state.attachments[hash];
                AttachmentRef {
                    name: name.clone(),
                    hash: hash.clone(),
                    content_type: content_type.clone(),
                    size_bytes: data.len() as i64,
                }
            })
            .collect();
        refs.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(refs)
    }

    async fn attachment_data(&self, hash: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.up()?;
        let state = self.state.lock().expect("memory store lock");
        Ok(state.attachments.get(hash).map(|(_, d)| d.clone()))
    }
}
